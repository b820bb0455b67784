/*
 * zeroshot.c - the findings list parser and the zero-shot scorer of
 * zeroshot.h.  Parsing is strict (a list with any bad line is refused,
 * naming file and line) because a typo in an organ name would otherwise
 * silently drop a finding from every report.  Prompt embeddings are made
 * once per (list, model) and are plain arrays afterwards.
 *
 * Threading: see zeroshot.h; nothing here keeps global state.
 */
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "core/organs.h"
#include "core/zeroshot.h"

/* ---- findings list ----------------------------------------------------------- */

void zs_list_free(zs_list *l)
{
    if (!l) return;
    for (int i = 0; i < l->n; i++) {
        for (int j = 0; j < l->f[i].npos; j++) free(l->f[i].pos[j]);
        for (int j = 0; j < l->f[i].nneg; j++) free(l->f[i].neg[j]);
    }
    free(l->f);
    free(l);
}

int zs_list_find(const zs_list *l, const char *key)
{
    if (!l || !key) return -1;
    for (int i = 0; i < l->n; i++)
        if (!strcmp(l->f[i].key, key)) return i;
    return -1;
}

int zs_text_parse(const char *s)
{
    if (!s) return -1;
    if (!strcmp(s, "train")) return ZS_TEXT_TRAIN;
    if (!strcmp(s, "heldout")) return ZS_TEXT_HELDOUT;
    if (!strcmp(s, "all")) return ZS_TEXT_ALL;
    return -1;
}

static void say(char *why, size_t n, const char *name, int line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void say(char *why, size_t n, const char *name, int line, const char *fmt, ...)
{
    if (!why || !n) return;
    int k = snprintf(why, n, "%s:%d: ", name, line);
    if (k < 0 || (size_t)k >= n) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why + k, n - (size_t)k, fmt, ap);
    va_end(ap);
}

/* Trims spaces at both ends in place. */
static char *trim(char *s)
{
    while (*s == ' ') s++;
    size_t k = strlen(s);
    while (k && (s[k - 1] == ' ' || s[k - 1] == '\r')) s[--k] = 0;
    return s;
}

/* Checks that every {placeholder} of a template is {organ}, so that a
 * misspelt one is found when the list is loaded, not in a report. */
static int template_ok(const char *t)
{
    for (const char *p = t; *p; p++) {
        if (*p == '}') return 0;
        if (*p != '{') continue;
        if (strncmp(p, "{organ}", 7)) return 0;
        p += 6;
    }
    return 1;
}

/* Splits a prompt column on '|' into up to ZS_MAX_PHRASINGS trimmed,
 * non-empty copies.  Returns the count, 0 for a bad column (reason in
 * *err), or CTG_ENOMEM. */
static int split_prompts(char *col, char **out, const char **err)
{
    int k = 0;
    /* Split by hand: strtok would silently skip an empty phrasing. */
    for (char *t = col, *next; t; t = next) {
        char *bar = strchr(t, '|');
        next = bar ? bar + 1 : NULL;
        if (bar) *bar = 0;
        t = trim(t);
        if (!*t) {
            *err = k || next ? "empty phrasing between '|'" : "no phrasing";
            goto bad;
        }
        if (k == ZS_MAX_PHRASINGS) {
            *err = "too many phrasings";
            goto bad;
        }
        if (!template_ok(t)) {
            *err = "unknown placeholder (only {organ} is allowed)";
            goto bad;
        }
        if (!(out[k] = strdup(t))) {
            while (k) free(out[--k]);
            return CTG_ENOMEM;
        }
        k++;
    }
    return k;
bad:
    while (k) free(out[--k]);
    return 0;
}

/* Parses one non-comment line (TABs intact, no newline) into f.  0, or
 * CTG_ECONFIG with the reason in why, or CTG_ENOMEM. */
static int parse_line(char *s, const char *name, int line, zs_finding *f, char *why, size_t n)
{
    char *col[9];
    int nc = 0;
    for (char *p = s;;) {
        if (nc == 9) break;
        col[nc++] = p;
        char *tab = strchr(p, '\t');
        if (!tab) break;
        *tab = 0;
        p = tab + 1;
    }
    if (nc < 7 || nc > 8) {
        say(why, n, name, line, "%d columns, expected 7 or 8 separated by TABs", nc);
        return CTG_ECONFIG;
    }
    for (int i = 0; i < nc; i++) col[i] = trim(col[i]);
    memset(f, 0, sizeof *f);
    f->line = line;

    const char *key = col[0];
    size_t kl = strlen(key);
    if (!kl || kl >= sizeof f->key) {
        say(why, n, name, line, "key must be 1..%zu characters", sizeof f->key - 1);
        return CTG_ECONFIG;
    }
    for (const char *p = key; *p; p++)
        if (!(islower((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '_')) {
            say(why, n, name, line, "key '%s' may hold only a-z, 0-9 and '_'", key);
            return CTG_ECONFIG;
        }
    memcpy(f->key, key, kl + 1);

    char *save = NULL;
    for (char *o = strtok_r(col[1], ",", &save); o; o = strtok_r(NULL, ",", &save)) {
        o = trim(o);
        int id = ctg_organ_id(o);
        if (id <= 0) {
            say(why, n, name, line, "unknown organ '%s' (TotalSegmentator v2 names)", o);
            return CTG_ECONFIG;
        }
        if (f->norgans == ZS_MAX_ORGANS) {
            say(why, n, name, line, "more than %d organs", ZS_MAX_ORGANS);
            return CTG_ECONFIG;
        }
        for (int i = 0; i < f->norgans; i++)
            if (f->organ_ids[i] == id) {
                say(why, n, name, line, "organ '%s' given twice", o);
                return CTG_ECONFIG;
            }
        f->organ_ids[f->norgans++] = id;
    }
    if (!f->norgans) {
        say(why, n, name, line, "no organ");
        return CTG_ECONFIG;
    }

    const char *err = "";
    int k = split_prompts(col[2], f->pos, &err);
    if (k < 0) return k;
    if (!k) {
        say(why, n, name, line, "positive prompt: %s", err);
        return CTG_ECONFIG;
    }
    f->npos = k;
    char normal[] = ZS_NORMAL_TEMPLATE;
    k = split_prompts(*col[3] ? col[3] : normal, f->neg, &err);
    if (k < 0) return k;
    if (!k) {
        say(why, n, name, line, "negative prompt: %s", err);
        return CTG_ECONFIG;
    }
    f->nneg = k;

    /* A SNOMED CT identifier is 6 to 18 digits; its meaning must come with
     * it, since the SR needs both. */
    const char *code = col[4], *meaning = col[5];
    if (*code || *meaning) {
        size_t cl = strlen(code);
        int digits = cl >= 6 && cl <= 18;
        for (const char *p = code; *p && digits; p++) digits = isdigit((unsigned char)*p);
        if (!digits || code[0] == '0') {
            say(why, n, name, line, "SNOMED CT code '%s' is not a concept id", code);
            return CTG_ECONFIG;
        }
        if (!*meaning || strlen(meaning) >= sizeof f->meaning) {
            say(why, n, name, line, "SNOMED CT code without a meaning (or one too long)");
            return CTG_ECONFIG;
        }
        memcpy(f->code, code, cl + 1);
        snprintf(f->meaning, sizeof f->meaning, "%s", meaning);
    }
    const char *disp = *col[6] ? col[6] : key;
    if (strlen(disp) >= sizeof f->display) {
        say(why, n, name, line, "display name too long");
        return CTG_ECONFIG;
    }
    snprintf(f->display, sizeof f->display, "%s", disp);

    f->threshold = ZS_DEFAULT_THRESHOLD;
    f->threshold_set = 0;
    if (nc == 8 && *col[7]) {
        char *end;
        double t = strtod(col[7], &end);
        if (end == col[7] || *end || !(t > 0 && t < 1)) {
            say(why, n, name, line, "threshold '%s' is not a number in (0, 1)", col[7]);
            return CTG_ECONFIG;
        }
        f->threshold = (float)t;
        f->threshold_set = 1;
    }
    return 0;
}

int zs_list_parse(const char *text, size_t len, const char *name, zs_list **out, char *why,
                  size_t n)
{
    if (why && n) why[0] = 0;
    if (!text || !out) return CTG_EINVAL;
    *out = NULL;
    if (!name) name = "findings";
    if (len > ZS_MAX_FILE) {
        say(why, n, name, 0, "larger than %d bytes", ZS_MAX_FILE);
        return CTG_ETOOBIG;
    }
    int rc = CTG_ENOMEM;
    char *buf = NULL;
    zs_list *l = calloc(1, sizeof *l);
    if (!l) goto fail;
    if (!(l->f = calloc(ZS_MAX_FINDINGS, sizeof *l->f))) goto fail;
    if (!(buf = malloc(ZS_MAX_LINE + 1))) goto fail;

    int line = 0;
    for (size_t pos = 0; pos < len;) {
        line++;
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - (text + pos)) : len - pos;
        if (ll > ZS_MAX_LINE) {
            say(why, n, name, line, "line longer than %d bytes", ZS_MAX_LINE);
            rc = CTG_ECONFIG;
            goto fail;
        }
        memcpy(buf, text + pos, ll);
        buf[ll] = 0;
        pos += ll + 1;
        if (memchr(buf, 0, ll)) {
            say(why, n, name, line, "NUL byte");
            rc = CTG_ECONFIG;
            goto fail;
        }
        const char *p = buf;
        while (*p == ' ' || *p == '\t' || *p == '\r') p++;
        if (!*p || *p == '#') continue;
        if (l->n == ZS_MAX_FINDINGS) {
            say(why, n, name, line, "more than %d findings", ZS_MAX_FINDINGS);
            rc = CTG_ETOOBIG;
            goto fail;
        }
        zs_finding *f = &l->f[l->n];
        if ((rc = parse_line(buf, name, line, f, why, n)) < 0) {
            for (int j = 0; j < f->npos; j++) free(f->pos[j]);
            for (int j = 0; j < f->nneg; j++) free(f->neg[j]);
            goto fail;
        }
        l->n++;
        if (zs_list_find(l, f->key) != l->n - 1) {
            int first = l->f[zs_list_find(l, f->key)].line;
            say(why, n, name, line, "key '%s' already defined on line %d", f->key, first);
            rc = CTG_ECONFIG;
            goto fail;
        }
    }
    if (!l->n) {
        say(why, n, name, line, "no findings");
        rc = CTG_ECONFIG;
        goto fail;
    }
    free(buf);
    *out = l;
    return 0;
fail:
    if (rc == CTG_ENOMEM && why && n && !why[0]) snprintf(why, n, "%s: out of memory", name);
    free(buf);
    zs_list_free(l);
    return rc;
}

int zs_list_load(const char *path, zs_list **out, char *why, size_t n)
{
    if (!path || !out) return CTG_EINVAL;
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        int rc = ctg_errno(errno);
        if (why && n) snprintf(why, n, "%s: %s", path, ctg_strerror(rc));
        return rc;
    }
    int rc = CTG_ENOMEM;
    char *text = malloc(ZS_MAX_FILE + 1);
    if (!text) goto fail;
    size_t len = fread(text, 1, ZS_MAX_FILE + 1, fp);
    if (ferror(fp)) {
        rc = CTG_EIO;
        if (why && n) snprintf(why, n, "%s: read error", path);
        goto fail;
    }
    rc = zs_list_parse(text, len, path, out, why, n);
fail:
    free(text);
    fclose(fp);
    return rc;
}

/* ---- prompt embeddings -------------------------------------------------------- */

struct zs_prompts {
    int k, e;
    float tau;
    int nfind;
    float *thr;       /* [nfind] */
    int *thr_src;     /* [nfind] ZS_THR_* */
    float *organ;     /* [K+1][E], row 0 zero */
    int *pair;        /* [nfind][K+1]: index into pos/neg, -1 when not scored */
    int npairs;
    float *pos, *neg; /* [npairs][E] */
};

void zs_prompts_free(zs_prompts *p)
{
    if (!p) return;
    free(p->thr);
    free(p->thr_src);
    free(p->organ);
    free(p->pair);
    free(p->pos);
    free(p->neg);
    free(p);
}

int zs_prompts_dim(const zs_prompts *p) { return p ? p->e : 0; }
int zs_prompts_classes(const zs_prompts *p) { return p ? p->k : 0; }

const float *zs_organ_vec(const zs_prompts *p, int cls)
{
    return p && cls >= 1 && cls <= p->k ? p->organ + (size_t)cls * p->e : NULL;
}

const float *zs_finding_vec(const zs_prompts *p, int f, int cls, int positive)
{
    if (!p || f < 0 || f >= p->nfind || cls < 1 || cls > p->k) return NULL;
    int i = p->pair[f * (p->k + 1) + cls];
    if (i < 0) return NULL;
    return (positive ? p->pos : p->neg) + (size_t)i * p->e;
}

/* Replaces every {organ} of tpl by words. */
static int expand(const char *tpl, const char *words, char *out, size_t cap)
{
    size_t w = 0, wl = strlen(words);
    for (const char *p = tpl; *p;) {
        if (!strncmp(p, "{organ}", 7)) {
            if (w + wl >= cap) return CTG_ENOSPC;
            memcpy(out + w, words, wl);
            w += wl;
            p += 7;
        } else {
            if (w + 1 >= cap) return CTG_ENOSPC;
            out[w++] = *p++;
        }
    }
    out[w] = 0;
    return 0;
}

/* The ensembled embedding of phrasings tpl[lo..hi) for organ words into
 * out [E]: each through the encoder and the model's text side, then the
 * mean, L2-normalised.  tin [text dim] and tout [E] are scratch. */
static int embed_prompt(const mdl_model *m, txt_encoder *enc, txt_cache *cache,
                        char *const *tpl, int lo, int hi, const char *words, float *tin,
                        float *tout, float *out, int e)
{
    char text[ZS_MAX_LINE + 256];
    float norm;
    memset(out, 0, sizeof(float) * (size_t)e);
    for (int i = lo; i < hi; i++) {
        int rc = expand(tpl[i], words, text, sizeof text);
        if (rc < 0) return rc;
        rc = cache ? txt_cache_get(cache, text, tin) : txt_encode(enc, text, tin);
        if (rc < 0) return rc;
        if ((rc = mdl_text_forward(m, tout, &norm, tin, 1)) < 0) return rc;
        for (int j = 0; j < e; j++) out[j] += tout[j];
    }
    double s = 0;
    for (int j = 0; j < e; j++) s += (double)out[j] * out[j];
    s = sqrt(s);
    if (s > 0)
        for (int j = 0; j < e; j++) out[j] = (float)(out[j] / s);
    return 0;
}

/* The phrasings of a prompt that the text mode selects. */
static void pick_range(int count, int text, int *lo, int *hi)
{
    *lo = 0;
    *hi = count;
    if (text == ZS_TEXT_TRAIN) *hi = 1;
    else if (text == ZS_TEXT_HELDOUT && count > 1) *lo = 1;
}

int zs_prompts_build(const zs_list *l, const mdl_model *m, txt_encoder *enc, txt_cache *cache,
                     int text, float tau, zs_prompts **out, char *why, size_t n)
{
    if (why && n) why[0] = 0;
    if (!l || !m || !enc || !out || text < ZS_TEXT_TRAIN || text > ZS_TEXT_ALL)
        return CTG_EINVAL;
    *out = NULL;
    int k = m->cfg.n_classes, e = m->cfg.embed_dim;
    int tdim = m->cfg.text_dim > 0 ? m->cfg.text_dim : e;
    if (txt_dim(enc) != tdim) {
        if (why && n)
            snprintf(why, n, "text encoder gives %d dimensions, the model's text side takes %d",
                     txt_dim(enc), tdim);
        return CTG_EINVAL;
    }
    int rc = CTG_ENOMEM;
    zs_prompts *p = NULL;
    float *tin = malloc(sizeof(float) * (size_t)tdim), *tout = malloc(sizeof(float) * (size_t)e);
    if (!tin || !tout) goto fail;
    rc = CTG_ENOMEM;
    if (!(p = calloc(1, sizeof *p))) goto fail;
    p->k = k;
    p->e = e;
    p->tau = tau > 0 ? tau : ZS_TAU;
    p->nfind = l->n;
    p->thr = malloc(sizeof(float) * (size_t)(l->n ? l->n : 1));
    p->thr_src = malloc(sizeof(int) * (size_t)(l->n ? l->n : 1));
    p->organ = calloc((size_t)(k + 1) * e, sizeof(float));
    p->pair = malloc(sizeof(int) * (size_t)(l->n ? l->n : 1) * (k + 1));
    if (!p->thr || !p->thr_src || !p->organ || !p->pair) goto fail;

    /* The class index of each v2 id the model covers. */
    int cls_of[CTG_NUM_ORGANS + 1] = {0};
    for (int c = 1; c <= k; c++)
        if (m->class_ids[c - 1] >= 1 && m->class_ids[c - 1] <= CTG_NUM_ORGANS)
            cls_of[m->class_ids[c - 1]] = c;
    for (int f = 0; f < l->n; f++) {
        /* The list's own threshold wins (a site's choice), then the one
         * the model was calibrated with, then the default. */
        char key[MDL_META_KEY];
        const char *mv = NULL;
        if (snprintf(key, sizeof key, "threshold.%s", l->f[f].key) < (int)sizeof key)
            mv = mdl_meta_get(m, key);
        if (!mv) mv = mdl_meta_get(m, ZS_META_POOLED);
        char *end = NULL;
        double t = mv ? strtod(mv, &end) : NAN;
        if (l->f[f].threshold_set) {
            p->thr[f] = l->f[f].threshold;
            p->thr_src[f] = ZS_THR_LIST;
        } else if (mv && end != mv && !*end && t > 0 && t < 1) {
            p->thr[f] = (float)t;
            p->thr_src[f] = ZS_THR_MODEL;
        } else {
            p->thr[f] = l->f[f].threshold;
            p->thr_src[f] = ZS_THR_DEFAULT;
        }
        for (int c = 0; c <= k; c++) p->pair[f * (k + 1) + c] = -1;
        for (int o = 0; o < l->f[f].norgans; o++) {
            int c = cls_of[l->f[f].organ_ids[o]];
            if (c) p->pair[f * (k + 1) + c] = p->npairs++;
        }
    }
    size_t pe = (size_t)(p->npairs ? p->npairs : 1) * e;
    if (!(p->pos = malloc(sizeof(float) * pe)) || !(p->neg = malloc(sizeof(float) * pe))) goto fail;

    char words[256];
    char *organ_tpl[1] = {(char *)ZS_ORGAN_TEMPLATE};
    for (int c = 1; c <= k; c++) {
        const ctg_organ *og = ctg_organ_get(m->class_ids[c - 1]);
        if (!og || (rc = txt_organ_words(og->name, words, sizeof words)) < 0) {
            if (!og) rc = CTG_EINVAL;
            if (why && n) snprintf(why, n, "no words for model class %d", c);
            goto fail;
        }
        if ((rc = embed_prompt(m, enc, cache, organ_tpl, 0, 1, words, tin, tout,
                               p->organ + (size_t)c * e, e)) < 0)
            goto fail;
    }
    for (int f = 0; f < l->n; f++) {
        const zs_finding *fd = &l->f[f];
        for (int c = 1; c <= k; c++) {
            int i = p->pair[f * (k + 1) + c];
            if (i < 0) continue;
            if ((rc = txt_organ_words(ctg_organ_get(m->class_ids[c - 1])->name, words,
                                      sizeof words)) < 0)
                goto fail;
            int lo, hi;
            pick_range(fd->npos, text, &lo, &hi);
            if ((rc = embed_prompt(m, enc, cache, fd->pos, lo, hi, words, tin, tout,
                                   p->pos + (size_t)i * e, e)) < 0)
                goto fail;
            pick_range(fd->nneg, text, &lo, &hi);
            if ((rc = embed_prompt(m, enc, cache, fd->neg, lo, hi, words, tin, tout,
                                   p->neg + (size_t)i * e, e)) < 0)
                goto fail;
        }
    }
    free(tin);
    free(tout);
    *out = p;
    return 0;
fail:
    if (why && n && !why[0]) snprintf(why, n, "building prompt embeddings: %s", ctg_strerror(rc));
    free(tin);
    free(tout);
    zs_prompts_free(p);
    return rc;
}

/* ---- scoring --------------------------------------------------------------------- */

static float dot(const float *a, const float *b, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)a[i] * b[i];
    return (float)s;
}

float zs_prob(const float *emb, const float *pos, const float *neg, int dim, float tau)
{
    if (!(tau > 0)) tau = ZS_TAU;
    double d = ((double)dot(emb, neg, dim) - dot(emb, pos, dim)) / tau;
    return (float)(1.0 / (1.0 + exp(d)));
}

float zs_threshold(const zs_prompts *p, int f, int *source)
{
    if (!p || f < 0 || f >= p->nfind) return NAN;
    if (source) *source = p->thr_src[f];
    return p->thr[f];
}

int zs_organ_top1(const zs_prompts *p, const float *emb, float *cos)
{
    if (!p || !emb || p->k < 1) return CTG_EINVAL;
    int best = -1;
    float bv = 0;
    if (cos) cos[0] = NAN;
    for (int c = 1; c <= p->k; c++) {
        float v = dot(emb, p->organ + (size_t)c * p->e, p->e);
        if (cos) cos[c] = v;
        if (best < 0 || v > bv) best = c, bv = v;
    }
    return best;
}

int zs_score_organ(const zs_prompts *p, int cls, const float *emb, zs_score *out, int cap)
{
    if (!p || !emb || cls < 1 || cls > p->k || (cap > 0 && !out)) return CTG_EINVAL;
    int cnt = 0;
    for (int f = 0; f < p->nfind; f++) {
        int i = p->pair[f * (p->k + 1) + cls];
        if (i < 0) continue;
        if (cnt < cap) {
            zs_score *s = &out[cnt];
            const float *pv = p->pos + (size_t)i * p->e, *nv = p->neg + (size_t)i * p->e;
            s->finding = f;
            s->cls = cls;
            s->cos_pos = dot(emb, pv, p->e);
            s->cos_neg = dot(emb, nv, p->e);
            s->prob = (float)(1.0 / (1.0 + exp(((double)s->cos_neg - s->cos_pos) / p->tau)));
            s->present = s->prob >= p->thr[f];
        }
        cnt++;
    }
    return cnt;
}
