/*
 * report.c - the radiology report parser of report.h: sections, sentences
 * and clauses, organ mentions from a lexicon built for the caller's class
 * set, NegEx-style negation and uncertainty, a clause state, finding keys
 * from the findings list, and the per-organ merge.
 *
 * The work is rule based and deliberately small: every rule is a table or
 * a few lines below, so that a wrong label can be traced to one entry.
 * What the rules do is described in report.h; where the code is simpler
 * than a reader might expect, the comment at the rule says so.
 *
 * Threading: the tables are const; the lexicon, the key cues and every
 * buffer live in the call (struct parse), so rp_parse may run on any number
 * of threads at once.
 */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "core/organs.h"
#include "core/report.h"
#include "core/text.h"

/* ---- organ sets ---------------------------------------------------------------- */

/* A set of v2 ids (1..117) as a 128-bit mask. */
typedef struct oset {
    uint64_t b[2];
} oset;

static void os_add(oset *s, int id) { s->b[id >> 6] |= 1ull << (id & 63); }
static int os_has(const oset *s, int id) { return (int)((s->b[id >> 6] >> (id & 63)) & 1); }
static int os_empty(const oset *s) { return !s->b[0] && !s->b[1]; }
static oset os_and(oset a, oset b) { return (oset){{a.b[0] & b.b[0], a.b[1] & b.b[1]}}; }
static oset os_or(oset a, oset b) { return (oset){{a.b[0] | b.b[0], a.b[1] | b.b[1]}}; }
static int os_eq(oset a, oset b) { return a.b[0] == b.b[0] && a.b[1] == b.b[1]; }
static int os_count(oset a) { return __builtin_popcountll(a.b[0]) + __builtin_popcountll(a.b[1]); }
/* 1 when a is a strict subset of b. */
static int os_sub(oset a, oset b) { return os_eq(os_and(a, b), a) && !os_eq(a, b); }

/* The side of a class from its name: 1 left, 2 right, 0 none. */
static int organ_side(int id)
{
    const ctg_organ *o = ctg_organ_get(id);
    if (!o || !o->name) return 0;
    if (strstr(o->name, "_left")) return 1;
    if (strstr(o->name, "_right")) return 2;
    return 0;
}

/* ---- tables ---------------------------------------------------------------------- */

/* Radiology terms for organs.  Organs are v2 names separated by spaces; a
 * name ending in '*' is a prefix.  An empty organ list masks the phrase: it
 * contains an organ word but names something else. */
typedef struct lex_row {
    const char *phrase, *organs;
} lex_row;

#define KIDNEYS "kidney_left kidney_right"
#define LOBES "lung_*"
#define VESSELS                                                                                  \
    "aorta brachiocephalic_* subclavian_* common_carotid_* superior_vena_cava inferior_vena_cava " \
    "portal_vein_and_splenic_vein iliac_* pulmonary_vein atrial_appendage_left"
#define BONES "vertebrae_* sacrum rib_* sternum costal_cartilages clavicula_* scapula_* hip_* femur_* humerus_* skull"

static const lex_row lexicon[] = {
    {"hepatic", "liver"}, {"liver", "liver"}, {"hepatomegaly", "liver"}, {"steatosis", "liver"},
    {"spleen", "spleen"}, {"splenic", "spleen"}, {"splenomegaly", "spleen"},
    {"kidney", KIDNEYS}, {"renal", KIDNEYS}, {"nephrolithiasis", KIDNEYS},
    {"hydronephrosis", KIDNEYS}, {"pelvicalyceal", KIDNEYS}, {"pelvicaliceal", KIDNEYS},
    {"gallbladder", "gallbladder"}, {"gall bladder", "gallbladder"}, {"gallstone", "gallbladder"},
    {"cholelithiasis", "gallbladder"}, {"cholecystitis", "gallbladder"},
    {"pancreas", "pancreas"}, {"pancreatic", "pancreas"},
    {"adrenal", "adrenal_gland_*"}, {"adrenal gland", "adrenal_gland_*"},
    {"lung", LOBES}, {"lungs", LOBES}, {"pulmonary", LOBES}, {"pleural", LOBES}, {"pleura", LOBES},
    {"lung fields", LOBES}, {"lung parenchyma", LOBES},
    {"upper lobe", "lung_upper_lobe_*"}, {"lower lobe", "lung_lower_lobe_*"},
    {"middle lobe", "lung_middle_lobe_right"}, {"lingula", "lung_upper_lobe_left"},
    {"lingular", "lung_upper_lobe_left"}, {"bibasilar", "lung_lower_lobe_*"},
    {"bibasal", "lung_lower_lobe_*"}, {"upper zone", "lung_upper_lobe_*"},
    {"lower zone", "lung_lower_lobe_*"}, {"apices", "lung_upper_lobe_*"},
    {"apical", "lung_upper_lobe_*"}, {"lung bases", "lung_lower_lobe_*"}, {"rul", "lung_upper_lobe_right"},
    {"rml", "lung_middle_lobe_right"}, {"rll", "lung_lower_lobe_right"},
    {"lul", "lung_upper_lobe_left"}, {"lll", "lung_lower_lobe_left"},
    {"heart", "heart"}, {"cardiac", "heart"}, {"cardiomegaly", "heart"}, {"pericardial", "heart"},
    {"pericardium", "heart"},
    {"aorta", "aorta"}, {"aortic", "aorta"}, {"vessels", VESSELS}, {"great vessels", VESSELS},
    {"vasculature", VESSELS}, {"vascular", VESSELS}, {"ivc", "inferior_vena_cava"},
    {"svc", "superior_vena_cava"}, {"portal vein", "portal_vein_and_splenic_vein"},
    {"splenic vein", "portal_vein_and_splenic_vein"},
    {"trachea", "trachea"}, {"tracheal", "trachea"}, {"airways", "trachea"},
    {"central airways", "trachea"},
    {"esophagus", "esophagus"}, {"oesophagus", "esophagus"}, {"esophageal", "esophagus"},
    {"oesophageal", "esophagus"}, {"thyroid", "thyroid_gland"},
    {"stomach", "stomach"}, {"gastric", "stomach"}, {"duodenal", "duodenum"},
    {"small bowel", "small_bowel"}, {"small intestine", "small_bowel"}, {"colonic", "colon"},
    {"large bowel", "colon"}, {"bowel", "small_bowel duodenum colon"},
    {"bladder", "urinary_bladder"}, {"prostatic", "prostate"},
    {"osseous", BONES}, {"bones", BONES}, {"skeleton", BONES}, {"spine", "vertebrae_*"},
    {"ribs", "rib_*"},
    /* Masks: organ words naming something else. */
    {"renal artery", ""}, {"renal arteries", ""}, {"renal vein", ""}, {"renal veins", ""},
    {"pulmonary artery", ""}, {"pulmonary arteries", ""}, {"pulmonary arterial", ""},
    {"pulmonary trunk", ""}, {"pulmonary embolism", ""}, {"pulmonary embolus", ""},
    {"pulmonary emboli", ""}, {"pulmonary veins", "pulmonary_vein"},
    {"pulmonary vein", "pulmonary_vein"}, {"hepatic artery", ""}, {"hepatic vein", ""},
    {"hepatic veins", ""}, {"splenic artery", ""}, {"portal venous", ""}, {"adrenal vein", ""},
    {"coronary artery", ""}, {"coronary arteries", ""}, {"renal failure", ""},
};

/* Synonyms of finding keys (strong cues), on top of the words of the key. */
typedef struct hint_row {
    const char *key, *words;
} hint_row;

static const hint_row hints[] = {
    {"hepatic_cyst", "cyst cystic"},
    {"hepatic_mass", "mass tumor tumour neoplasm malignancy malignant solid lobulated metastasis "
                     "metastases hepatoma carcinoma"},
    {"fatty_liver", "fatty steatosis hypoattenuation infiltration"},
    {"hepatomegaly", "hepatomegaly enlarged enlargement increased"},
    {"splenomegaly", "splenomegaly enlarged enlargement increased"},
    {"splenic_lesion", "lesion focus cyst hemangioma haemangioma hypodense hypoattenuating nodule mass"},
    {"renal_cyst", "cyst cystic bosniak"},
    {"kidney_stone", "stone calculus calculi nephrolithiasis"},
    {"hydronephrosis", "hydronephrosis dilated dilatation dilation pelvicalyceal caliectasis pelviectasis"},
    {"gallstone", "gallstone stone calculus calculi cholelithiasis"},
    {"lung_nodule", "nodule nodular"},
    {"pleural_effusion", "effusion fluid hydrothorax"},
    {"emphysema", "emphysema emphysematous bullae bullous"},
    {"aortic_aneurysm", "aneurysm aneurysmal dilated dilatation ectasia ectatic"},
    {"aortic_calcification", "calcification calcified calcific plaque atherosclerosis atherosclerotic atheroma"},
    {"pancreatic_mass", "mass tumor tumour neoplasm malignancy lesion hypodense hypoattenuating"},
    {"adrenal_nodule", "nodule adenoma lesion mass"},
    {"cardiomegaly", "cardiomegaly enlarged enlargement increased"},
};

/* Abnormality vocabulary: words and phrases that assert a finding. */
static const char *const abn_words[] = {
    "cyst", "cystic", "stone", "calculus", "calculi", "calcification", "calcified", "calcific",
    "mass", "lesion", "nodule", "nodular", "tumor", "tumour", "neoplasm", "neoplastic",
    "malignancy", "malignant", "metastasis", "metastases", "metastatic", "enlarged",
    "enlargement", "enlarging", "effusion", "aneurysm", "aneurysmal", "dilated", "dilatation",
    "dilation", "thickening", "thickened", "fracture", "consolidation", "opacity", "opacities",
    "atelectasis", "emphysema", "emphysematous", "thrombus", "embolus", "obstruction",
    "obstructed", "fluid", "hypodense", "hypodensity", "hypoattenuating", "hypoattenuation",
    "hyperdense", "hyperattenuating", "hypoenhancing", "focus", "foci", "plaque", "atheroma",
    "atherosclerotic", "infiltration", "fatty", "hernia", "collection", "abscess", "pneumothorax",
    "stricture", "ascites", "edema", "oedema", "inflammation", "inflammatory", "ectatic",
    "atrophy", "atrophic", "scar", "scarring", "increased", "decreased", "abnormal", "gallstone",
    "low density", "low attenuation", "low in attenuation", "increased in size",
};

/* Words that name a finding only in general ("no other abnormality"): they
 * make a negated clause normal but never assert anything. */
static const char *const generic_words[] = {"abnormality", "abnormalities", "finding", "findings",
                                            "pathology", "disease"};

/* Key cues that describe a finding but do not assert one by themselves
 * ("solid organs"). */
static const char *const descriptive[] = {"solid", "lobulated"};

/* Suffixes that make a word an abnormality ("-megaly", "-itis", ...). */
static const char *const abn_suffixes[] = {"megaly", "itis", "osis", "iasis", "ectasis", "ectasia",
                                           "pathy", "oma"};
static const char *const abn_suffix_except[] = {"diagnosis", "prognosis", "stoma", "coma",
                                                "diploma", "aroma", "soma"};

static const char *const normal_cues[] = {
    "normal", "normally", "unremarkable", "within normal limits", "clear", "patent", "intact",
    "homogeneous", "homogenous", "preserved",
};

/* NegEx cue lists.  Pre cues govern the words after them, post cues the
 * words before them. */
static const char *const pre_neg[] = {
    "no", "not", "without", "negative for", "no evidence of", "no sign of", "no signs of",
    "free of", "absence of", "neither", "nor", "rather than", "resolution of",
};
static const char *const post_neg[] = {
    "not seen", "not identified", "not visualized", "not visualised", "not demonstrated",
    "absent", "has resolved", "have resolved", "resolved",
};
static const char *const pre_unc[] = {
    "possible", "possibly", "probable", "probably", "likely", "may represent", "may be",
    "might represent", "could represent", "could be", "suspicious for", "suspicious of",
    "suspected", "suspect", "questionable", "question of", "cannot exclude", "can not exclude",
    "concerning for", "suggestive of", "suggesting", "worrisome for", "equivocal", "presumed",
    "presumably", "differential includes",
};
static const char *const post_unc[] = {
    "cannot be excluded", "can not be excluded", "not excluded", "cannot be ruled out",
    "can not be ruled out", "not ruled out", "is a concern", "is possible", "is suspected",
    "is questioned",
};
/* Words after "no"/"not"/"without" that make it no negation ("no change",
 * "no interval increase"). */
static const char *const pseudo_next[] = {"change", "changes", "interval", "increase", "only",
                                          "significant change"};
/* Words that end a cue's scope. */
static const char *const terminators[] = {"but", "however", "except", "although", "though",
                                          "whereas", "apart", "aside"};
/* Words that end the look-back for a side word before an organ. */
static const char *const side_stop[] = {"the", "a", "an", "of", "in", "with", "at", "to", "from",
                                        "on", "is", "are", "and", "or", "no", "within"};

/* Words before an organ that make it a point of reference, not a mention. */
static const char *const reference_before[] = {
    "relative to", "adjacent to", "compared to", "compared with", "than", "next to", "near",
    "abutting", "posterior to", "anterior to", "medial to", "lateral to", "inferior to",
    "superior to",
};

/* Section headers that are read; and words that mark a skipped section. */
static const char *const read_sections[] = {
    "findings", "finding", "impression", "impressions", "conclusion", "conclusions", "opinion",
    "summary", "report", "result", "results", "assessment", "interpretation", "diagnosis",
};
static const char *const skip_sections[] = {
    "history", "indication", "indications", "technique", "comparison", "comparisons",
    "examination", "exam", "procedure", "protocol", "reason", "dose", "clinical", "request",
    "contrast",
};

/* Abbreviations after which '.' does not end a sentence. */
static const char *const abbreviations[] = {"dr", "mr", "mrs", "ms", "prof", "approx", "vs", "cf",
                                            "fig", "incl", "st", "eg", "ie", "max", "min",
                                            "resp", "etc"};

/* Words that never count as weak cues (phrasings are full of them). */
static const char *const stop_words[] = {"a", "an", "the", "of", "in", "at", "with", "to", "and",
                                         "or", "next", "is", "on", "for", "by", "from", "this"};

#define NELEM(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* ---- per-call state ----------------------------------------------------------------- */

#define WORD_MAX 32
#define LEX_MAX 640
#define PHRASE_WORDS 5
#define CUE_MAX 48

typedef struct lex_ent {
    char w[PHRASE_WORDS][WORD_MAX];
    int nw;
    oset organs; /* within the class set; empty = mask */
} lex_ent;

typedef struct key_cues {
    char strong[CUE_MAX][WORD_MAX];
    int nstrong;
    char weak[CUE_MAX][WORD_MAX];
    int nweak;
    oset organs; /* the key's organs within the class set */
} key_cues;

enum { T_WORD = 0, T_NUM };

typedef struct tok {
    char w[WORD_MAX];
    int kind;
    int clause;
    int comma_before, hy_before;
    int cue;          /* part of a negation/uncertainty cue */
    int neg, unc;     /* inside a negation / uncertainty scope */
    int abn, generic; /* abnormality word (first word of a phrase), generic word */
    int normal;       /* first word of a normal cue */
} tok;

typedef struct mention {
    int start, end; /* token range */
    oset organs;
    int alive;
} mention;

typedef struct res_priv {
    rp_result r;
    char **texts;
    int ntexts, captexts;
} res_priv;

typedef struct parse {
    const char *text; /* the caller's text (for nothing but offsets) */
    char *w;          /* working copy: NUL/CR -> space, continuation newlines -> space */
    size_t len;
    const rp_opts *o;
    oset classes;
    lex_ent *lex;
    int nlex;
    const zs_list *list;
    key_cues *kc; /* [list->n] */
    /* header context */
    oset ctx_line, ctx_block;
    int skip, skip_content;
    /* fallback organs */
    oset prev_sentence;
    int prev_sentence_line;
    int line_no;
    /* tokens of the current sentence */
    tok *t;
    int nt, capt;
    mention *m;
    int nm, capm;
    /* output */
    res_priv *res;
    int capitems;
    int cur_text; /* index of the current sentence's text, -1 when none yet */
    size_t s_start, s_end;
    char *why;
    size_t nwhy;
} parse;

/* ---- small helpers --------------------------------------------------------------- */

static int in_list(const char *w, const char *const *l, int n)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(w, l[i])) return 1;
    return 0;
}

/* A token equals a lexicon word, allowing a plural "s"/"es". */
static int word_eq(const char *tw, const char *w)
{
    size_t lw = strlen(w), lt = strlen(tw);
    if (strncmp(tw, w, lw)) return 0;
    if (lt == lw) return 1;
    if (lt == lw + 1 && tw[lw] == 's') return 1;
    if (lt == lw + 2 && tw[lw] == 'e' && tw[lw + 1] == 's') return 1;
    return 0;
}

/* word_eq, plus "-y" -> "-ies" ("hypodensities"). */
static int word_eq_ies(const char *tw, const char *w)
{
    if (word_eq(tw, w)) return 1;
    size_t lw = strlen(w), lt = strlen(tw);
    return lw > 2 && w[lw - 1] == 'y' && lt == lw + 2 && !strncmp(tw, w, lw - 1) &&
           !strcmp(tw + lw - 1, "ies");
}

/* Splits a phrase into words; returns the count (at most max). */
static int split_words(const char *s, char out[][WORD_MAX], int max)
{
    int n = 0;
    while (*s) {
        while (*s == ' ') s++;
        if (!*s) break;
        size_t l = strcspn(s, " ");
        if (n < max && l < WORD_MAX) {
            memcpy(out[n], s, l);
            out[n][l] = 0;
            n++;
        }
        s += l;
    }
    return n;
}

/* Length in tokens of phrase p matched at t[i] within clause, or 0. */
static int match_phrase(const parse *p, int i, const char *phrase)
{
    char w[PHRASE_WORDS][WORD_MAX];
    int n = split_words(phrase, w, PHRASE_WORDS);
    if (!n || i + n > p->nt) return 0;
    for (int k = 0; k < n; k++) {
        const tok *x = &p->t[i + k];
        if (x->clause != p->t[i].clause || x->kind != T_WORD) return 0;
        if (k == n - 1 ? !word_eq_ies(x->w, w[k]) : strcmp(x->w, w[k])) return 0;
    }
    return n;
}

/* Longest phrase of a list matched at t[i]; 0 when none. */
static int match_list(const parse *p, int i, const char *const *l, int n)
{
    int best = 0;
    for (int k = 0; k < n; k++) {
        int m = match_phrase(p, i, l[k]);
        if (m > best) best = m;
    }
    return best;
}

static oset organs_of_spec(const char *spec)
{
    oset s = {{0, 0}};
    char w[24][WORD_MAX];
    int n = split_words(spec, w, 24);
    for (int k = 0; k < n; k++) {
        size_t l = strlen(w[k]);
        if (l && w[k][l - 1] == '*') {
            for (int id = 1; id <= CTG_NUM_ORGANS; id++)
                if (!strncmp(ctg_organ_get(id)->name, w[k], l - 1)) os_add(&s, id);
        } else {
            int id = ctg_organ_id(w[k]);
            if (id > 0) os_add(&s, id);
        }
    }
    return s;
}

/* ---- lexicon and key cues ------------------------------------------------------------ */

static void lex_add(parse *p, const char *phrase, oset organs)
{
    char w[PHRASE_WORDS][WORD_MAX];
    int n = split_words(phrase, w, PHRASE_WORDS);
    if (!n) return;
    for (int i = 0; i < p->nlex; i++) {
        lex_ent *e = &p->lex[i];
        if (e->nw != n) continue;
        int same = 1;
        for (int k = 0; k < n && same; k++) same = !strcmp(e->w[k], w[k]);
        if (same) {
            e->organs = os_or(e->organs, organs);
            return;
        }
    }
    if (p->nlex >= LEX_MAX) return;
    lex_ent *e = &p->lex[p->nlex++];
    memcpy(e->w, w, sizeof w);
    e->nw = n;
    e->organs = organs;
}

/* The class names in words without their side ("left kidney" -> "kidney"),
 * vertebra codes ("t12"), then the table. */
static void lex_build(parse *p)
{
    for (int id = 1; id <= CTG_NUM_ORGANS; id++) {
        if (!os_has(&p->classes, id)) continue;
        const ctg_organ *og = ctg_organ_get(id);
        char words[128], base[128] = "";
        if (txt_organ_words(og->name, words, sizeof words) != 0) continue;
        char w[12][WORD_MAX];
        int n = split_words(words, w, 12);
        for (int k = 0; k < n; k++) {
            if (!strcmp(w[k], "left") || !strcmp(w[k], "right")) continue;
            if (base[0]) strcat(base, " ");
            strcat(base, w[k]);
        }
        oset s = {{0, 0}};
        os_add(&s, id);
        lex_add(p, base, s);
        if (!strncmp(og->name, "vertebrae_", 10)) {
            char code[8];
            snprintf(code, sizeof code, "%s", og->name + 10);
            for (char *c = code; *c; c++) *c = (char)tolower((unsigned char)*c);
            lex_add(p, code, s);
        }
    }
    for (int i = 0; i < NELEM(lexicon); i++) {
        oset s = organs_of_spec(lexicon[i].organs);
        lex_add(p, lexicon[i].phrase, os_and(s, p->classes));
    }
}

/* 1 when w is a word of the lexicon (so not a finding word). */
static int is_organ_word(const parse *p, const char *w)
{
    for (int i = 0; i < p->nlex; i++)
        for (int k = 0; k < p->lex[i].nw; k++)
            if (word_eq(w, p->lex[i].w[k])) return 1;
    return 0;
}

static void cue_add(char list[][WORD_MAX], int *n, const char *w)
{
    if (strlen(w) >= WORD_MAX || *n >= CUE_MAX) return;
    for (int i = 0; i < *n; i++)
        if (!strcmp(list[i], w)) return;
    snprintf(list[(*n)++], WORD_MAX, "%s", w);
}

static void keys_build(parse *p)
{
    for (int f = 0; f < p->list->n; f++) {
        const zs_finding *zf = &p->list->f[f];
        key_cues *k = &p->kc[f];
        for (int j = 0; j < zf->norgans; j++)
            if (zf->organ_ids[j] >= 1 && zf->organ_ids[j] <= CTG_NUM_ORGANS)
                os_add(&k->organs, zf->organ_ids[j]);
        k->organs = os_and(k->organs, p->classes);
        char buf[RP_KEY_MAX];
        snprintf(buf, sizeof buf, "%s", zf->key);
        for (char *c = buf; *c; c++) *c = *c == '_' ? ' ' : (char)tolower((unsigned char)*c);
        char w[8][WORD_MAX];
        int n = split_words(buf, w, 8);
        for (int i = 0; i < n; i++)
            if (strlen(w[i]) > 2 && !is_organ_word(p, w[i])) cue_add(k->strong, &k->nstrong, w[i]);
        for (int h = 0; h < NELEM(hints); h++)
            if (!strcmp(hints[h].key, zf->key)) {
                char hw[24][WORD_MAX];
                int nh = split_words(hints[h].words, hw, 24);
                for (int i = 0; i < nh; i++) cue_add(k->strong, &k->nstrong, hw[i]);
            }
        for (int ph = 0; ph < zf->npos; ph++) {
            char lw[ZS_MAX_LINE];
            size_t o = 0;
            for (const char *c = zf->pos[ph]; *c && o + 1 < sizeof lw; c++) {
                if (*c == '{') {
                    const char *e = strchr(c, '}');
                    if (e) c = e;
                    lw[o++] = ' ';
                    continue;
                }
                lw[o++] = isalpha((unsigned char)*c) ? (char)tolower((unsigned char)*c) : ' ';
            }
            lw[o] = 0;
            char pw[32][WORD_MAX];
            int np = split_words(lw, pw, 32);
            for (int i = 0; i < np; i++)
                if (!in_list(pw[i], stop_words, NELEM(stop_words)) && !is_organ_word(p, pw[i]))
                    cue_add(k->weak, &k->nweak, pw[i]);
        }
    }
}

/* ---- output ------------------------------------------------------------------------ */

/* The current sentence's text, white space collapsed; made once per sentence. */
static int sentence_text(parse *p)
{
    if (p->cur_text >= 0) return p->cur_text;
    res_priv *r = p->res;
    if (r->ntexts == r->captexts) {
        int cap = r->captexts ? r->captexts * 2 : 64;
        char **t = realloc(r->texts, (size_t)cap * sizeof *t);
        if (!t) return CTG_ENOMEM;
        r->texts = t;
        r->captexts = cap;
    }
    size_t n = p->s_end - p->s_start;
    char *s = malloc(n + 1);
    if (!s) return CTG_ENOMEM;
    size_t o = 0;
    int sp = 0;
    for (size_t i = p->s_start; i < p->s_end; i++) {
        char c = p->w[i];
        if (c == ' ' || c == '\t' || c == '\n') {
            sp = o > 0;
            continue;
        }
        if (sp) s[o++] = ' ';
        sp = 0;
        s[o++] = c;
    }
    s[o] = 0;
    r->texts[r->ntexts] = s;
    return p->cur_text = r->ntexts++;
}

static int item_add(parse *p, int organ, int state, const char *key, int implicit)
{
    rp_result *r = &p->res->r;
    if (r->nitems >= RP_MAX_ITEMS) return CTG_ETOOBIG;
    if (r->nitems == p->capitems) {
        int cap = p->capitems ? p->capitems * 2 : 64;
        rp_item *it = realloc(r->items, (size_t)cap * sizeof *it);
        if (!it) return CTG_ENOMEM;
        r->items = it;
        p->capitems = cap;
    }
    int ti = sentence_text(p);
    if (ti < 0) return ti;
    rp_item *it = &r->items[r->nitems++];
    memset(it, 0, sizeof *it);
    it->organ = organ;
    it->state = state;
    snprintf(it->key, sizeof it->key, "%s", state == RP_NORMAL || !key ? "" : key);
    it->implicit = implicit;
    it->start = p->s_start;
    it->end = p->s_end;
    it->text = p->res->texts[ti];
    return 0;
}

/* ---- tokens ------------------------------------------------------------------------ */

static int tok_push(parse *p, const char *w, size_t l, int kind, int clause, int comma, int hy)
{
    if (p->nt == p->capt) {
        int cap = p->capt ? p->capt * 2 : 128;
        tok *t = realloc(p->t, (size_t)cap * sizeof *t);
        if (!t) return CTG_ENOMEM;
        p->t = t;
        p->capt = cap;
    }
    tok *x = &p->t[p->nt++];
    memset(x, 0, sizeof *x);
    if (l >= WORD_MAX) l = WORD_MAX - 1;
    memcpy(x->w, w, l);
    x->w[l] = 0;
    x->kind = kind;
    x->clause = clause;
    x->comma_before = comma;
    x->hy_before = hy;
    return 0;
}

/* Words (lower case, letters then digits: "t12"), numbers ("#"), ';' as a
 * clause break, ',' and '-' as flags on the next token, "n't" as "not". */
static int tokenize(parse *p, size_t s, size_t e)
{
    p->nt = 0;
    int clause = 0, comma = 0, hy = 0;
    size_t i = s;
    while (i < e) {
        unsigned char c = (unsigned char)p->w[i];
        if (isalpha(c)) {
            char buf[WORD_MAX];
            size_t l = 0, j = i;
            while (j < e && (isalnum((unsigned char)p->w[j]) ||
                             (p->w[j] == '\'' && j + 1 < e && isalpha((unsigned char)p->w[j + 1])))) {
                if (p->w[j] == '\'') {
                    /* "isn't" -> "is" "not"; other apostrophes ("Crohn's") are dropped. */
                    if (l && buf[l - 1] == 'n' && j + 1 < e && tolower((unsigned char)p->w[j + 1]) == 't' &&
                        (j + 2 >= e || !isalpha((unsigned char)p->w[j + 2]))) {
                        l--;
                        if (l && tok_push(p, buf, l, T_WORD, clause, comma, hy)) return CTG_ENOMEM;
                        if (tok_push(p, "not", 3, T_WORD, clause, 0, 0)) return CTG_ENOMEM;
                        comma = hy = 0;
                        l = 0;
                        j += 2;
                        break;
                    }
                    j++;
                    continue;
                }
                if (l < WORD_MAX - 1) buf[l++] = (char)tolower((unsigned char)p->w[j]);
                j++;
            }
            if (l) {
                if (tok_push(p, buf, l, T_WORD, clause, comma, hy)) return CTG_ENOMEM;
                comma = hy = 0;
            }
            i = j;
        } else if (isdigit(c)) {
            size_t j = i;
            while (j < e && (isdigit((unsigned char)p->w[j]) ||
                             ((p->w[j] == '.' || p->w[j] == ',') && j + 1 < e &&
                              isdigit((unsigned char)p->w[j + 1]))))
                j++;
            if (tok_push(p, "#", 1, T_NUM, clause, comma, hy)) return CTG_ENOMEM;
            comma = hy = 0;
            i = j;
        } else {
            if (c == ';') clause++;
            else if (c == ',') comma = 1;
            else if (c == '-' && i > s && isalnum((unsigned char)p->w[i - 1])) hy = 1;
            i++;
        }
    }
    return 0;
}

/* ---- organ mentions ------------------------------------------------------------------ */

static int mention_push(parse *p, int start, int end, oset organs)
{
    if (p->nm == p->capm) {
        int cap = p->capm ? p->capm * 2 : 32;
        mention *m = realloc(p->m, (size_t)cap * sizeof *m);
        if (!m) return CTG_ENOMEM;
        p->m = m;
        p->capm = cap;
    }
    p->m[p->nm++] = (mention){start, end, organs, 1};
    return 0;
}

/* Longest lexicon entry at t[i]: its length, *e the entry. */
static int lex_match(const parse *p, int i, const lex_ent **e)
{
    int best = 0;
    for (int k = 0; k < p->nlex; k++) {
        const lex_ent *x = &p->lex[k];
        if (x->nw <= best || i + x->nw > p->nt) continue;
        int ok = 1;
        for (int j = 0; j < x->nw && ok; j++) {
            const tok *t = &p->t[i + j];
            ok = t->kind == T_WORD && t->clause == p->t[i].clause &&
                 (j == x->nw - 1 ? word_eq(t->w, x->w[j]) : !strcmp(t->w, x->w[j]));
        }
        if (ok) {
            best = x->nw;
            *e = x;
        }
    }
    return best;
}

/* 1 when the organ at t[i] is only a point of reference ("relative to the
 * spleen"). */
static int is_reference(const parse *p, int i)
{
    int j = i - 1;
    if (j >= 0 && !strcmp(p->t[j].w, "the")) j--;
    for (int k = 0; k < NELEM(reference_before); k++) {
        char w[PHRASE_WORDS][WORD_MAX];
        int n = split_words(reference_before[k], w, PHRASE_WORDS);
        int s = j - n + 1, ok = s >= 0;
        for (int q = 0; q < n && ok; q++)
            ok = p->t[s + q].clause == p->t[i].clause && !strcmp(p->t[s + q].w, w[q]);
        if (ok) return 1;
    }
    return 0;
}

/* Finds the organ mentions of clause c (tokens [a, b)), with side words and
 * the header context, and prunes general mentions that a more specific one
 * of the same clause refines.  Returns the union, *general = 1 when some
 * mention names several organs. */
static int clause_mentions(parse *p, int a, int b, oset header, oset *out, int *general)
{
    p->nm = 0;
    for (int i = a; i < b;) {
        const lex_ent *e = NULL;
        int n = p->t[i].kind == T_WORD ? lex_match(p, i, &e) : 0;
        if (!n) {
            i++;
            continue;
        }
        oset s = e->organs;
        if (os_empty(&s) || is_reference(p, i)) {
            i += n;
            continue;
        }
        /* Side words just before: "right and left kidneys", "left-sided". */
        int left = 0, right = 0, other = 0;
        for (int j = i - 1; j >= a; j--) {
            const char *w = p->t[j].w;
            if (!strcmp(w, "left")) left = 1;
            else if (!strcmp(w, "right")) right = 1;
            else if (!strcmp(w, "bilateral") || !strcmp(w, "both")) left = right = 1;
            else if (!strcmp(w, "and") || !strcmp(w, "or") || !strcmp(w, "sided")) continue;
            /* Up to two adjectives between side and organ ("left simple
             * renal cyst"), but no article, preposition or number. */
            else if (left || right || p->t[j].kind != T_WORD || p->t[j].cue || ++other > 2 ||
                     in_list(w, side_stop, NELEM(side_stop)))
                break;
        }
        int sided = 0;
        if (left != right) {
            oset f = {{0, 0}};
            for (int id = 1; id <= CTG_NUM_ORGANS; id++)
                if (os_has(&s, id) && organ_side(id) != (left ? 2 : 1)) os_add(&f, id);
            if (!os_empty(&f)) s = f, sided = 1;
        } else if (left && right) {
            sided = 1;
        }
        if (!sided) {
            oset h = os_and(s, header);
            if (!os_empty(&h)) s = h;
        }
        int rc = mention_push(p, i, i + n, s);
        if (rc) return rc;
        i += n;
    }
    /* A general mention gives way to a more specific one unless the two are
     * coordinated ("the aorta and great vessels"). */
    for (int x = 0; x < p->nm; x++)
        for (int y = 0; y < p->nm; y++) {
            if (x == y || !p->m[y].alive || !os_sub(p->m[y].organs, p->m[x].organs)) continue;
            const mention *f = x < y ? &p->m[x] : &p->m[y], *g = x < y ? &p->m[y] : &p->m[x];
            int coord = g->start - f->end <= 3;
            for (int k = f->end; k < g->start && coord; k++)
                coord = in_list(p->t[k].w, (const char *const[]){"and", "or", "the", "its"}, 4);
            if (!coord) {
                p->m[x].alive = 0;
                break;
            }
        }
    oset u = {{0, 0}};
    *general = 0;
    for (int x = 0; x < p->nm; x++)
        if (p->m[x].alive) {
            u = os_or(u, p->m[x].organs);
            if (os_count(p->m[x].organs) > 1) *general = 1;
        }
    *out = u;
    return 0;
}

/* ---- negation, uncertainty, vocabulary --------------------------------------------- */

static int is_terminator(const tok *t) { return in_list(t->w, terminators, NELEM(terminators)); }

/* Marks cue scopes, abnormality words and normal cues of clause [a, b). */
static void clause_mark(parse *p, int a, int b)
{
    for (int i = a; i < b; i++) {
        tok *t = &p->t[i];
        if (t->kind != T_WORD || t->cue) continue;
        /* "non-obstructing", "non-enhancing": negates that word only. */
        if (!strcmp(t->w, "non") && i + 1 < b && p->t[i + 1].hy_before) {
            t->cue = 1;
            p->t[i + 1].neg = 1;
            continue;
        }
        int n, kind = 0; /* 1 pre-neg, 2 post-neg, 3 pre-unc, 4 post-unc */
        int best = 0;
        if ((n = match_list(p, i, post_unc, NELEM(post_unc))) > best) best = n, kind = 4;
        if ((n = match_list(p, i, pre_unc, NELEM(pre_unc))) > best) best = n, kind = 3;
        if ((n = match_list(p, i, post_neg, NELEM(post_neg))) > best) best = n, kind = 2;
        if ((n = match_list(p, i, pre_neg, NELEM(pre_neg))) > best) best = n, kind = 1;
        if (!best) continue;
        if (kind == 1 && i + best < b && match_list(p, i + best, pseudo_next, NELEM(pseudo_next)))
            continue;
        for (int k = i; k < i + best; k++) p->t[k].cue = 1;
        if (kind == 1 || kind == 3) {
            for (int k = i + best, c = 0; k < b && c < RP_SCOPE; k++, c++) {
                if (is_terminator(&p->t[k])) break;
                if (kind == 1) p->t[k].neg = 1;
                else p->t[k].unc = 1;
            }
        } else {
            for (int k = i - 1, c = 0; k >= a && c < RP_SCOPE; k--, c++) {
                if (is_terminator(&p->t[k])) break;
                if (kind == 2) p->t[k].neg = 2; /* 2: governed by a post cue */
                else p->t[k].unc = 1;
            }
        }
        i += best - 1;
    }
    for (int i = a; i < b; i++) {
        tok *t = &p->t[i];
        if (t->kind != T_WORD || t->cue) continue;
        int n = match_list(p, i, abn_words, NELEM(abn_words));
        if (n) {
            t->abn = 1;
            continue;
        }
        for (int k = 0; k < p->list->n && !t->abn; k++)
            for (int j = 0; j < p->kc[k].nstrong && !t->abn; j++)
                if (word_eq(t->w, p->kc[k].strong[j]) &&
                    !in_list(p->kc[k].strong[j], descriptive, NELEM(descriptive)))
                    t->abn = 1;
        if (t->abn) continue;
        size_t l = strlen(t->w);
        for (int k = 0; k < NELEM(abn_suffixes); k++) {
            size_t sl = strlen(abn_suffixes[k]);
            if (l > sl + 2 && !strcmp(t->w + l - sl, abn_suffixes[k]) &&
                !in_list(t->w, abn_suffix_except, NELEM(abn_suffix_except)))
                t->abn = 1;
        }
        if (t->abn) continue;
        if (in_list(t->w, generic_words, NELEM(generic_words))) t->generic = 1;
        if (match_list(p, i, normal_cues, NELEM(normal_cues))) t->normal = 1;
    }
}

/* ---- keys ------------------------------------------------------------------------ */

/* Matches clause [a, b) to the keys that apply to organs `elig` (all keys
 * when elig is NULL).  Writes key indices to out; returns how many. */
static int clause_keys(const parse *p, int a, int b, const oset *elig, int *out, int cap)
{
    int n = 0;
    for (int k = 0; k < p->list->n && n < cap; k++) {
        const key_cues *kc = &p->kc[k];
        if (os_empty(&kc->organs)) continue;
        if (elig) {
            oset x = os_and(kc->organs, *elig);
            if (os_empty(&x)) continue;
        }
        int hit = 0;
        for (int i = a; i < b && !hit; i++) {
            const tok *t = &p->t[i];
            if (t->neg || t->cue || t->kind != T_WORD) continue;
            for (int j = 0; j < kc->nstrong && !hit; j++) hit = word_eq(t->w, kc->strong[j]);
        }
        if (hit) out[n++] = k;
    }
    if (n) return n;
    int best = -1, bestc = 1;
    for (int k = 0; k < p->list->n; k++) {
        const key_cues *kc = &p->kc[k];
        if (os_empty(&kc->organs)) continue;
        if (elig) {
            oset x = os_and(kc->organs, *elig);
            if (os_empty(&x)) continue;
        }
        int c = 0;
        for (int j = 0; j < kc->nweak; j++) {
            int hit = 0;
            for (int i = a; i < b && !hit; i++) {
                const tok *t = &p->t[i];
                hit = !t->neg && !t->cue && t->kind == T_WORD && word_eq(t->w, kc->weak[j]);
            }
            c += hit;
        }
        if (c > bestc) best = k, bestc = c;
    }
    if (best >= 0 && cap > 0) out[n++] = best;
    return n;
}

/* ---- sentences ---------------------------------------------------------------------- */

static int emit(parse *p, oset organs, int state, const int *keys, int nkeys, int implicit)
{
    for (int id = 1; id <= CTG_NUM_ORGANS; id++) {
        if (!os_has(&organs, id)) continue;
        int any = 0, rc;
        if (state != RP_NORMAL)
            for (int k = 0; k < nkeys; k++)
                if (os_has(&p->kc[keys[k]].organs, id)) {
                    if ((rc = item_add(p, id, state, p->list->f[keys[k]].key, implicit))) return rc;
                    any = 1;
                }
        if (!any && (rc = item_add(p, id, state, "", implicit))) return rc;
    }
    return 0;
}

static int sentence(parse *p, size_t s, size_t e, oset header)
{
    int rc = tokenize(p, s, e);
    if (rc) return rc;
    if (!p->nt) return 0;
    p->res->r.nsentences++;
    p->s_start = s;
    p->s_end = e;
    p->cur_text = -1;
    oset prev_clause = {{0, 0}};
    int have_prev_clause = 0;
    oset sent_organs = {{0, 0}};
    int a = 0;
    while (a < p->nt) {
        int b = a;
        while (b < p->nt && p->t[b].clause == p->t[a].clause) b++;
        clause_mark(p, a, b);
        int asserted = 0, hedged = 0, negated = 0, normal = 0;
        for (int i = a; i < b; i++) {
            const tok *t = &p->t[i];
            if (t->abn) {
                if (t->neg) negated = 1;
                else if (t->unc) hedged = 1;
                else asserted = 1;
            }
            if (t->generic && t->neg) negated = 1;
            if (t->normal && !t->neg) normal = 1;
        }
        int state = asserted ? RP_ABNORMAL : hedged ? RP_UNCERTAIN : (negated || normal) ? RP_NORMAL : 0;
        oset organs;
        int general = 0;
        if ((rc = clause_mentions(p, a, b, header, &organs, &general))) return rc;
        int explicit_ = !os_empty(&organs);
        /* An organ that a "not seen"/"absent" denies is itself abnormal. */
        if (!asserted && !hedged && explicit_) {
            for (int x = 0; x < p->nm; x++)
                if (p->m[x].alive && p->t[p->m[x].start].neg == 2) {
                    int abn_in_scope = 0;
                    for (int i = a; i < b; i++) abn_in_scope |= p->t[i].abn && p->t[i].neg == 2;
                    if (!abn_in_scope) state = RP_ABNORMAL;
                }
        }
        if (!explicit_) {
            if (!os_empty(&header)) organs = header;
            else if (have_prev_clause) organs = prev_clause;
            else if (p->prev_sentence_line == p->line_no) organs = p->prev_sentence;
            general = os_count(organs) > 1;
        }
        if (state) {
            int keys[RP_MAX_KEYS], nkeys = 0, implicit = 0;
            if (state != RP_NORMAL && p->list) {
                if (!os_empty(&organs)) nkeys = clause_keys(p, a, b, &organs, keys, RP_MAX_KEYS);
                if (!nkeys && !explicit_) {
                    /* No organ that the clause's keys fit: the organs of the keys. */
                    nkeys = clause_keys(p, a, b, NULL, keys, RP_MAX_KEYS);
                    if (nkeys) {
                        organs = (oset){{0, 0}};
                        for (int k = 0; k < nkeys; k++) organs = os_or(organs, p->kc[keys[k]].organs);
                        implicit = 1;
                        general = 0;
                    }
                }
                if (nkeys && general) {
                    oset f = {{0, 0}};
                    for (int k = 0; k < nkeys; k++) f = os_or(f, p->kc[keys[k]].organs);
                    f = os_and(f, organs);
                    if (!os_empty(&f)) organs = f;
                }
            }
            if (!os_empty(&organs) && (rc = emit(p, organs, state, keys, nkeys, implicit))) return rc;
        }
        if (!os_empty(&organs)) {
            prev_clause = organs;
            have_prev_clause = 1;
            sent_organs = os_or(sent_organs, organs);
        }
        a = b;
    }
    if (!os_empty(&sent_organs)) {
        p->prev_sentence = sent_organs;
        p->prev_sentence_line = p->line_no;
    }
    return 0;
}

/* ---- lines, headers, sentence ends ------------------------------------------------- */

static size_t skip_space(const char *w, size_t i, size_t e)
{
    while (i < e && (w[i] == ' ' || w[i] == '\t')) i++;
    return i;
}

/* Skips a list marker ("1.", "2)", "-", "*", "•") at i. */
static size_t skip_marker(const char *w, size_t i, size_t e)
{
    size_t j = i;
    while (j < e && j - i < 3 && isdigit((unsigned char)w[j])) j++;
    if (j > i && j < e && (w[j] == '.' || w[j] == ')') && (j + 1 == e || w[j + 1] == ' ' || w[j + 1] == '\t'))
        return skip_space(w, j + 1, e);
    if (i < e && (w[i] == '-' || w[i] == '*') && (i + 1 == e || w[i + 1] == ' ' || w[i + 1] == '\t'))
        return skip_space(w, i + 1, e);
    if (i + 2 < e && (unsigned char)w[i] == 0xe2 && (unsigned char)w[i + 1] == 0x80 &&
        (unsigned char)w[i + 2] == 0xa2)
        return skip_space(w, i + 3, e);
    return i;
}

/* A "WORDS:" header at i: returns the index after ':' (0 when none) and the
 * words, lower case, in name. */
static size_t header_at(const char *w, size_t i, size_t e, char *name, size_t cap)
{
    size_t j = i, o = 0;
    int words = 0, inword = 0;
    if (i >= e || !isalpha((unsigned char)w[i])) return 0;
    while (j < e && j - i < 48) {
        char c = w[j];
        if (c == ':') break;
        if (isalpha((unsigned char)c)) {
            if (!inword) words++;
            inword = 1;
        } else if (c == ' ' || c == '/' || c == '&' || c == '-' || c == '\'' || c == ',') {
            inword = 0;
        } else {
            return 0;
        }
        if (o + 1 < cap) name[o++] = (char)tolower((unsigned char)c);
        j++;
    }
    if (j >= e || w[j] != ':' || words > 5) return 0;
    if (j + 1 < e && w[j + 1] != ' ' && w[j + 1] != '\t') return 0;
    name[o] = 0;
    return j + 1;
}

/* The end of the sentence that starts at i (exclusive). */
static size_t sentence_end(const char *w, size_t i, size_t e)
{
    for (size_t j = i; j < e; j++) {
        char c = w[j];
        if (c != '.' && c != '!' && c != '?') continue;
        size_t k = j + 1;
        while (k < e && (w[k] == ')' || w[k] == '"' || w[k] == '\'')) k++;
        if (k >= e) return e;
        if (w[k] != ' ' && w[k] != '\t') continue;
        k = skip_space(w, k, e);
        if (k < e && !isupper((unsigned char)w[k]) && !isdigit((unsigned char)w[k])) continue;
        if (c == '.') {
            /* The word before the '.': an abbreviation or a single letter
             * ("e.g.", "J. Smith") does not end a sentence. */
            size_t b = j;
            while (b > i && isalpha((unsigned char)w[b - 1])) b--;
            char word[16];
            size_t l = j - b;
            if (l == 1) continue;
            if (l > 0 && l < sizeof word) {
                for (size_t q = 0; q < l; q++) word[q] = (char)tolower((unsigned char)w[b + q]);
                word[l] = 0;
                if (in_list(word, abbreviations, NELEM(abbreviations))) continue;
            }
        }
        return k;
    }
    return e;
}

static int word_in(const char *name, const char *const *l, int n)
{
    char buf[64];
    snprintf(buf, sizeof buf, "%s", name);
    for (char *c = buf; *c; c++)
        if (!isalpha((unsigned char)*c)) *c = ' ';
    char w[8][WORD_MAX];
    int nw = split_words(buf, w, 8);
    for (int k = 0; k < nw; k++)
        if (in_list(w[k], l, n)) return 1;
    return 0;
}

/* The organs a header names (its text run through the mention rules). */
static int header_organs(parse *p, size_t s, size_t e, oset *out)
{
    int rc = tokenize(p, s, e);
    if (rc) return rc;
    for (int i = 0; i < p->nt; i++) p->t[i].clause = 0;
    int general;
    oset none = {{0, 0}};
    return clause_mentions(p, 0, p->nt, none, out, &general);
}

static int line(parse *p, size_t s, size_t e)
{
    size_t i = skip_marker(p->w, skip_space(p->w, s, e), e);
    p->ctx_line = (oset){{0, 0}};
    int rc;
    while (i < e) {
        char name[64];
        size_t h;
        while ((h = header_at(p->w, i, e, name, sizeof name))) {
            size_t rest = skip_space(p->w, h, e);
            p->ctx_line = (oset){{0, 0}};
            if (word_in(name, read_sections, NELEM(read_sections))) {
                p->skip = 0;
                p->ctx_block = (oset){{0, 0}};
            } else if (word_in(name, skip_sections, NELEM(skip_sections))) {
                p->skip = !p->o->all_sections;
                p->skip_content = 0;
                p->ctx_block = (oset){{0, 0}};
            } else {
                oset og;
                if ((rc = header_organs(p, i, h - 1, &og))) return rc;
                p->ctx_block = (oset){{0, 0}};
                if (rest >= e) p->ctx_block = og;
                else p->ctx_line = og;
            }
            i = skip_marker(p->w, rest, e);
        }
        if (i >= e) break;
        size_t se = sentence_end(p->w, i, e);
        if (p->skip) {
            p->skip_content = 1;
        } else {
            oset hdr = os_empty(&p->ctx_line) ? p->ctx_block : p->ctx_line;
            if ((rc = sentence(p, i, se, hdr))) return rc;
        }
        i = skip_marker(p->w, skip_space(p->w, se, e), e);
    }
    return 0;
}

/* ---- merge ---------------------------------------------------------------------- */

static int merge(parse *p)
{
    rp_result *r = &p->res->r;
    /* Implicit statements whose key is already stated with an organ add
     * nothing. */
    int n = 0;
    for (int i = 0; i < r->nitems; i++) {
        const rp_item *it = &r->items[i];
        int drop = 0;
        if (it->implicit)
            for (int j = 0; j < r->nitems && !drop; j++)
                drop = !r->items[j].implicit && !strcmp(r->items[j].key, it->key);
        if (!drop) r->items[n++] = *it;
    }
    r->nitems = n;
    int norg = 0;
    for (int id = 1; id <= CTG_NUM_ORGANS; id++)
        for (int i = 0; i < r->nitems; i++)
            if (r->items[i].organ == id) {
                norg++;
                break;
            }
    r->organs = calloc(norg ? (size_t)norg : 1, sizeof *r->organs);
    if (!r->organs) return CTG_ENOMEM;
    for (int id = 1; id <= CTG_NUM_ORGANS && r->norgans < norg; id++) {
        rp_organ *o = &r->organs[r->norgans];
        for (int i = 0; i < r->nitems; i++) {
            const rp_item *it = &r->items[i];
            if (it->organ != id) continue;
            o->organ = id;
            if (it->state > o->state) o->state = it->state, o->item = i;
            if (!it->key[0] || it->state < RP_UNCERTAIN) continue;
            int k;
            for (k = 0; k < o->nkeys; k++)
                if (!strcmp(o->keys[k].key, it->key)) break;
            if (k == o->nkeys) {
                if (o->nkeys == RP_MAX_KEYS) continue;
                snprintf(o->keys[k].key, RP_KEY_MAX, "%s", it->key);
                o->keys[k].state = 0;
                o->nkeys++;
            }
            if (it->state > o->keys[k].state) o->keys[k].state = it->state;
        }
        if (o->organ) r->norgans++;
    }
    return 0;
}

/* ---- public ------------------------------------------------------------------------ */

static int fail_why(char *why, size_t n, int rc, const char *msg)
{
    if (why && n) snprintf(why, n, "%s", msg);
    return rc;
}

int rp_parse(const char *text, size_t len, const rp_opts *o, rp_result **out, char *why,
             size_t n)
{
    if (why && n) why[0] = 0;
    if (!text || !out) return fail_why(why, n, CTG_EINVAL, "NULL text or result");
    *out = NULL;
    if (len > RP_MAX_TEXT) return fail_why(why, n, CTG_ETOOBIG, "report text too long");
    rp_opts defaults = {0};
    if (!o) o = &defaults;
    zs_list empty = {0, NULL};
    parse p;
    memset(&p, 0, sizeof p);
    p.o = o;
    p.list = o->list ? o->list : &empty;
    p.why = why;
    p.nwhy = n;
    if (o->classes) {
        if (o->nclasses < 0) return fail_why(why, n, CTG_EINVAL, "negative class count");
        for (int i = 0; i < o->nclasses; i++) {
            if (o->classes[i] < 1 || o->classes[i] > CTG_NUM_ORGANS) {
                if (why && n) snprintf(why, n, "class id %d out of range 1..%d", o->classes[i], CTG_NUM_ORGANS);
                return CTG_EINVAL;
            }
            os_add(&p.classes, o->classes[i]);
        }
    } else {
        for (int id = 1; id <= CTG_NUM_ORGANS; id++) os_add(&p.classes, id);
    }
    int rc = CTG_ENOMEM;
    p.res = calloc(1, sizeof *p.res);
    p.w = malloc(len + 1);
    p.lex = calloc(LEX_MAX, sizeof *p.lex);
    p.kc = calloc(p.list->n ? (size_t)p.list->n : 1, sizeof *p.kc);
    if (!p.res || !p.w || !p.lex || !p.kc) goto fail;
    lex_build(&p);
    keys_build(&p);

    /* Working copy: NUL and CR are spaces; a line that starts in lower case
     * continues the one before. */
    for (size_t i = 0; i < len; i++) p.w[i] = text[i] == 0 || text[i] == '\r' ? ' ' : text[i];
    p.w[len] = 0;
    p.len = len;
    for (size_t i = 0; i < len; i++) {
        if (p.w[i] != '\n') continue;
        size_t k = skip_space(p.w, i + 1, len);
        size_t b = i;
        while (b > 0 && (p.w[b - 1] == ' ' || p.w[b - 1] == '\t')) b--;
        int prev_blank = b == 0 || p.w[b - 1] == '\n';
        if (k < len && islower((unsigned char)p.w[k]) && !prev_blank) p.w[i] = ' ';
    }
    p.prev_sentence_line = -1;
    for (size_t s = 0; s <= len;) {
        size_t e = s;
        while (e < len && p.w[e] != '\n') e++;
        p.line_no++;
        if (skip_space(p.w, s, e) == e) {
            p.ctx_block = (oset){{0, 0}};
            if (p.skip && p.skip_content) p.skip = 0;
        } else if ((rc = line(&p, s, e))) {
            if (rc == CTG_ETOOBIG && why && n) snprintf(why, n, "more than %d statements", RP_MAX_ITEMS);
            goto fail;
        }
        s = e + 1;
    }
    if ((rc = merge(&p))) goto fail;
    free(p.w);
    free(p.lex);
    free(p.kc);
    free(p.t);
    free(p.m);
    *out = &p.res->r;
    return 0;
fail:
    free(p.w);
    free(p.lex);
    free(p.kc);
    free(p.t);
    free(p.m);
    if (p.res) rp_result_free(&p.res->r);
    if (rc == CTG_ENOMEM && why && n && !why[0]) snprintf(why, n, "out of memory");
    return rc;
}

void rp_result_free(rp_result *r)
{
    if (!r) return;
    res_priv *x = (res_priv *)r;
    for (int i = 0; i < x->ntexts; i++) free(x->texts[i]);
    free(x->texts);
    free(r->items);
    free(r->organs);
    free(x);
}

const rp_organ *rp_organ_find(const rp_result *r, int organ)
{
    if (!r) return NULL;
    for (int i = 0; i < r->norgans; i++)
        if (r->organs[i].organ == organ) return &r->organs[i];
    return NULL;
}

int rp_state(const rp_result *r, int organ)
{
    const rp_organ *o = rp_organ_find(r, organ);
    return o ? o->state : RP_UNKNOWN;
}

int rp_has_key(const rp_result *r, int organ, const char *key)
{
    const rp_organ *o = rp_organ_find(r, organ);
    if (!o || !key) return 0;
    for (int k = 0; k < o->nkeys; k++)
        if (!strcmp(o->keys[k].key, key)) return 1;
    return 0;
}

const char *rp_state_name(int state)
{
    switch (state) {
    case RP_NORMAL: return "normal";
    case RP_UNCERTAIN: return "uncertain";
    case RP_ABNORMAL: return "abnormal";
    default: return "unknown";
    }
}
