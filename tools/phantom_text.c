/*
 * phantom_text.c - the words of a phantom case: the radiology report
 * (report.txt), the organ-level findings (findings.json) and the line of
 * the training manifest.
 *
 * Every finding and every organ group's normal statement has at least five
 * phrasings.  The first PH_TRAIN_PHRASES of each are the training set, the
 * rest are held out (--text heldout), so that a model trained on one set
 * can be tested on wording it never saw.  Sizes, sides, lobes and grades
 * come from the painted lesion, so the text says what the image shows.
 *
 * Threading: the tables are read-only; a case's text is built by the
 * thread that owns the case.
 */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/core.h"
#include "core/organs.h"
#include "tools/phantom.h"

/* ---- phrasings ---------------------------------------------------------------- */

typedef struct phrases {
    const char *key;
    const char *p[8];
} phrases;

static const phrases table[] = {
    /* Findings: {size} mm, {side}/{Side}, {lobe}, {where}, {grade}/{Grade}, {hu}. */
    {"hepatic_cyst",
     {"A {size} mm hypodense lesion in the {where}, consistent with a simple cyst.",
      "Simple hepatic cyst measuring {size} mm in the {where}.",
      "There is a {size} mm well-circumscribed fluid-attenuation lesion in the {where}, compatible with a hepatic cyst.",
      "Well-defined non-enhancing cystic lesion of the {where}, {size} mm.",
      "The liver contains a {size} mm water-density cyst in the {where}."}},
    {"hepatic_mass",
     {"A {size} mm lobulated {grade} mass in the {where}, indeterminate; further characterisation with MRI is recommended.",
      "{Grade} lobulated hepatic lesion in the {where} measuring {size} mm, suspicious for neoplasm.",
      "There is an ill-defined {grade} solid lesion of the liver in the {where}, {size} mm in diameter.",
      "Solid {grade} liver mass of {size} mm in the {where}; malignancy cannot be excluded.",
      "A {size} mm {grade} focal liver lesion with lobulated margins is seen in the {where}."}},
    {"fatty_liver",
     {"Diffuse hypoattenuation of the liver (mean {hu} HU), consistent with hepatic steatosis.",
      "The liver is diffusely low in attenuation, in keeping with {grade} fatty infiltration.",
      "Hepatic steatosis, with liver attenuation decreased relative to the spleen.",
      "{Grade} diffuse fatty infiltration of the liver.",
      "Low-density liver parenchyma ({hu} HU) compatible with steatosis."}},
    {"hepatomegaly",
     {"The liver is enlarged, measuring {size} mm in craniocaudal extent.",
      "Hepatomegaly without focal lesion.",
      "Enlarged liver with a craniocaudal span of {size} mm.",
      "The liver is increased in size ({size} mm craniocaudal).",
      "Hepatomegaly is present; the hepatic contour is smooth."}},
    {"splenomegaly",
     {"The spleen is enlarged, measuring {size} mm in craniocaudal length.",
      "Splenomegaly, {size} mm in length.",
      "Enlarged spleen without focal lesion.",
      "The spleen is increased in size at {size} mm.",
      "Splenic enlargement with a craniocaudal length of {size} mm."}},
    {"splenic_lesion",
     {"A {size} mm hypodense lesion in the spleen, likely a cyst or hemangioma.",
      "Focal hypoattenuating splenic lesion measuring {size} mm.",
      "There is a {size} mm low-density lesion of the spleen.",
      "Small hypodense splenic focus of {size} mm, probably benign.",
      "The spleen contains a {size} mm hypoattenuating lesion."}},
    {"renal_cyst",
     {"A {size} mm simple cyst in the {where} of the {side} kidney.",
      "{Side} renal cyst measuring {size} mm in the {where}.",
      "There is a {size} mm fluid-attenuation lesion arising from the {where} of the {side} kidney, consistent with a Bosniak I cyst.",
      "Simple cortical cyst of the {side} kidney, {size} mm, {where}.",
      "The {side} kidney contains a {size} mm well-defined water-density cyst."}},
    {"kidney_stone",
     {"A {size} mm non-obstructing calculus in the {where} of the {side} kidney.",
      "{Side} nephrolithiasis with a {size} mm stone in the {where}.",
      "There is a {size} mm dense calcification within the {side} renal collecting system, consistent with a renal stone.",
      "Non-obstructing {side} renal calculus measuring {size} mm.",
      "The {side} kidney contains a {size} mm calculus ({hu} HU)."}},
    {"hydronephrosis",
     {"{Grade} {side} hydronephrosis with dilatation of the renal pelvis and calyces.",
      "The {side} renal collecting system is dilated, in keeping with {grade} hydronephrosis.",
      "There is {grade} dilatation of the {side} pelvicalyceal system.",
      "{Side} pelvicalyceal dilatation, {grade} in degree.",
      "{Grade} hydronephrosis of the {side} kidney."}},
    {"gallstone",
     {"A {size} mm calcified gallstone lies in the dependent gallbladder.",
      "Cholelithiasis with a {size} mm radiodense stone and no gallbladder wall thickening.",
      "There is a {size} mm gallstone within the gallbladder; no pericholecystic fluid.",
      "Dense {size} mm calculus in the gallbladder lumen.",
      "The gallbladder contains a {size} mm stone, without signs of cholecystitis."}},
    {"lung_nodule",
     {"A {size} mm solid pulmonary nodule in the {lobe}.",
      "Solid nodule in the {lobe} measuring {size} mm; follow-up per Fleischner Society guidelines is suggested.",
      "There is a {size} mm noncalcified nodule in the {lobe}.",
      "Noncalcified {size} mm nodule in the {lobe}.",
      "The {lobe} contains a solid nodule of {size} mm."}},
    {"pleural_effusion",
     {"{Grade} {side} pleural effusion with adjacent compressive atelectasis.",
      "There is a {grade} {side} pleural effusion.",
      "{Side} pleural effusion, {grade} in size, layering dependently.",
      "{Grade} layering fluid in the {side} pleural space.",
      "{Side}-sided pleural effusion of {grade} volume."}},
    {"emphysema",
     {"{Grade} centrilobular emphysema, upper lobe predominant.",
      "Emphysematous changes are present in the upper lobes, {grade} in extent.",
      "There is {grade} emphysema with areas of low attenuation in the upper lobes.",
      "Upper-zone predominant {grade} emphysema.",
      "{Grade} centrilobular emphysematous change of both lungs."}},
    {"aortic_aneurysm",
     {"Infrarenal abdominal aortic aneurysm measuring {size} mm in maximal diameter, with mural thrombus.",
      "The infrarenal aorta is aneurysmal, measuring {size} mm.",
      "Abdominal aortic aneurysm with a maximal diameter of {size} mm and eccentric mural thrombus.",
      "Aneurysmal dilatation of the infrarenal abdominal aorta to {size} mm.",
      "An infrarenal aortic aneurysm of {size} mm is present."}},
    {"aortic_calcification",
     {"{Grade} atherosclerotic calcification of the aorta.",
      "Calcified atherosclerotic plaques along the aortic wall.",
      "There are scattered calcified plaques in the aorta, {grade} in extent.",
      "Aortic atherosclerosis with mural calcification.",
      "{Grade} calcific atheroma of the aorta."}},
    {"pancreatic_mass",
     {"A {size} mm hypodense mass in the pancreatic {where}, suspicious for neoplasm.",
      "Hypoattenuating lesion of the pancreatic {where} measuring {size} mm.",
      "There is an ill-defined {size} mm hypoenhancing mass in the {where} of the pancreas.",
      "Focal {size} mm low-density mass in the pancreatic {where}; malignancy is a concern.",
      "The pancreatic {where} contains a {size} mm hypodense solid lesion."}},
    {"adrenal_nodule",
     {"A {size} mm {side} adrenal nodule with low attenuation ({hu} HU), consistent with an adenoma.",
      "{Side} adrenal nodule measuring {size} mm, likely a lipid-rich adenoma.",
      "There is a {size} mm well-circumscribed nodule of the {side} adrenal gland.",
      "Low-density {size} mm {side} adrenal lesion, compatible with an adenoma.",
      "The {side} adrenal gland contains a {size} mm nodule ({hu} HU)."}},
    {"cardiomegaly",
     {"The heart is enlarged.", "Cardiomegaly without pericardial effusion.",
      "There is cardiomegaly.", "Increased heart size.", "The cardiac chambers are enlarged."}},

    /* Normal statements per organ group, and "rest" statements for the
     * normal members of a group that has findings. */
    {"normal:lungs",
     {"The lungs are clear.", "No pulmonary nodules, consolidation or pleural effusion.",
      "Lungs are clear bilaterally without focal opacity.", "Clear lung fields; no pleural fluid.",
      "The lung parenchyma is unremarkable and there is no effusion."}},
    {"rest:lungs",
     {"The remaining lung parenchyma is clear.", "No other pulmonary abnormality.",
      "The lungs are otherwise clear.", "Otherwise clear lungs.", "No additional pulmonary findings."}},
    {"normal:airways",
     {"The trachea is patent.", "The central airways are patent.",
      "The trachea and main bronchi are unremarkable.", "Patent trachea and central bronchi.",
      "Normal calibre of the trachea."}},
    {"normal:heart",
     {"The heart is normal in size.", "Normal heart size without pericardial effusion.",
      "Heart size is within normal limits.", "No cardiomegaly.", "The cardiac silhouette is normal."}},
    {"normal:vessels",
     {"The aorta and great vessels are normal in calibre.",
      "No aortic aneurysm; the major vessels are patent.", "Normal calibre of the aorta and its branches.",
      "The thoracoabdominal vasculature is unremarkable.",
      "The aorta is of normal diameter without atherosclerotic change."}},
    {"rest:vessels",
     {"The remaining vessels are unremarkable.", "The other major vessels are patent.",
      "Otherwise normal vasculature.", "No other vascular abnormality.",
      "The remaining vasculature is within normal limits."}},
    {"normal:esophagus",
     {"The esophagus is unremarkable.", "Normal appearance of the esophagus.",
      "No esophageal wall thickening.", "The oesophagus is within normal limits.",
      "Esophagus without abnormality."}},
    {"normal:thyroid",
     {"The visualized thyroid gland is unremarkable.", "Normal thyroid.", "No thyroid nodule.",
      "The thyroid gland appears normal.", "Unremarkable thyroid lobes."}},
    {"normal:liver",
     {"The liver is normal in size and attenuation.", "Normal liver without focal lesion.",
      "The liver is unremarkable.", "Homogeneous hepatic parenchyma; no focal liver lesion.",
      "Liver of normal size and density."}},
    {"normal:gallbladder",
     {"The gallbladder is unremarkable.", "No gallstones; normal gallbladder.",
      "The gallbladder is normally distended without stones.", "Normal gallbladder without calculi.",
      "Gallbladder wall and lumen are normal."}},
    {"normal:spleen",
     {"The spleen is normal in size.", "Normal spleen.", "The spleen is unremarkable.",
      "Spleen of normal size without focal lesion.", "No splenomegaly."}},
    {"normal:pancreas",
     {"The pancreas is unremarkable.", "Normal pancreas without mass or ductal dilatation.",
      "The pancreas appears normal.", "No pancreatic lesion.",
      "Pancreatic parenchyma is within normal limits."}},
    {"normal:adrenal_gland_right",
     {"The right adrenal gland is normal.", "Normal right adrenal gland.",
      "The right adrenal gland is unremarkable.", "No right adrenal nodule.", "Unremarkable right adrenal."}},
    {"normal:adrenal_gland_left",
     {"The left adrenal gland is normal.", "Normal left adrenal gland.",
      "The left adrenal gland is unremarkable.", "No left adrenal nodule.", "Unremarkable left adrenal."}},
    {"normal:kidney_right",
     {"The right kidney is normal without hydronephrosis or stones.", "Normal right kidney.",
      "The right kidney is unremarkable.", "No right renal calculus or hydronephrosis.",
      "Right kidney of normal size and appearance."}},
    {"normal:kidney_left",
     {"The left kidney is normal without hydronephrosis or stones.", "Normal left kidney.",
      "The left kidney is unremarkable.", "No left renal calculus or hydronephrosis.",
      "Left kidney of normal size and appearance."}},
    {"normal:stomach",
     {"The stomach is unremarkable.", "Normal stomach.", "No gastric wall thickening.",
      "The stomach appears normal.", "Stomach without abnormality."}},
    {"normal:bowel",
     {"The small and large bowel are unremarkable.", "No bowel obstruction or wall thickening.",
      "Normal bowel loops.", "Unremarkable small bowel and colon.", "Bowel is normal in calibre."}},
    {"normal:bladder",
     {"The urinary bladder is unremarkable.", "Normal bladder.", "The bladder is normally distended.",
      "No bladder wall thickening.", "Urinary bladder within normal limits."}},
    {"normal:prostate",
     {"The prostate is normal in size.", "Normal prostate.", "The prostate is unremarkable.",
      "No prostatic enlargement.", "Prostate gland within normal limits."}},
    {"normal:bones",
     {"No aggressive osseous lesion.", "The visualized bones are unremarkable.",
      "No acute fracture or destructive bone lesion.", "Osseous structures are intact.",
      "Normal bone density and alignment without focal lesion."}},
    {"normal:muscles",
     {"The visualized musculature is unremarkable.", "Normal muscles of the trunk.",
      "No soft tissue abnormality.", "The soft tissues are within normal limits.",
      "Unremarkable body wall musculature."}},
};
#define NTABLE ((int)(sizeof table / sizeof table[0]))

int ph_text_phrases(const char *key, const char *const **out)
{
    for (int i = 0; i < NTABLE; i++)
        if (!strcmp(table[i].key, key)) {
            int n = 0;
            while (n < 8 && table[i].p[n]) n++;
            *out = table[i].p;
            return n;
        }
    *out = NULL;
    return 0;
}

const char *ph_text_key(int i) { return i >= 0 && i < NTABLE ? table[i].key : NULL; }

/* Impression lines, one form per abnormality. */
static const char *impression_of(int abn)
{
    switch (abn) {
    case PH_A_HEPATIC_CYST: return "Simple hepatic cyst ({size} mm).";
    case PH_A_HEPATIC_MASS: return "{Grade} hepatic mass ({size} mm), indeterminate; MRI recommended.";
    case PH_A_FATTY_LIVER: return "Hepatic steatosis.";
    case PH_A_HEPATOMEGALY: return "Hepatomegaly.";
    case PH_A_SPLENOMEGALY: return "Splenomegaly.";
    case PH_A_SPLENIC_LESION: return "Small hypodense splenic lesion, likely benign.";
    case PH_A_RENAL_CYST: return "{Side} simple renal cyst.";
    case PH_A_KIDNEY_STONE: return "Non-obstructing {side} renal calculus ({size} mm).";
    case PH_A_HYDRONEPHROSIS: return "{Grade} {side} hydronephrosis.";
    case PH_A_GALLSTONE: return "Cholelithiasis.";
    case PH_A_LUNG_NODULE: return "Pulmonary nodule in the {lobe} ({size} mm).";
    case PH_A_PLEURAL_EFFUSION: return "{Grade} {side} pleural effusion.";
    case PH_A_EMPHYSEMA: return "{Grade} emphysema.";
    case PH_A_AORTIC_ANEURYSM: return "Infrarenal abdominal aortic aneurysm ({size} mm).";
    case PH_A_AORTIC_CALCIFICATION: return "Aortic atherosclerosis.";
    case PH_A_PANCREATIC_MASS: return "Pancreatic {where} mass ({size} mm), suspicious for neoplasm.";
    case PH_A_ADRENAL_NODULE: return "{Side} adrenal adenoma ({size} mm).";
    case PH_A_CARDIOMEGALY: return "Cardiomegaly.";
    default: return "";
    }
}

/* ---- organ groups ------------------------------------------------------------------ */

typedef struct group {
    const char *name, *heading;
    const char *prefix[14]; /* organ names, or prefixes ending in '*' */
    int has_rest;
} group;

static const group groups[] = {
    {"lungs", "Lungs", {"lung_*"}, 1},
    {"airways", "Airways", {"trachea"}, 0},
    {"heart", "Heart", {"heart"}, 0},
    {"vessels", "Vessels",
     {"aorta", "brachiocephalic_*", "subclavian_*", "common_carotid_*", "superior_vena_cava",
      "inferior_vena_cava", "portal_vein_and_splenic_vein", "iliac_*", "pulmonary_vein",
      "atrial_appendage_left"},
     1},
    {"esophagus", "Esophagus", {"esophagus"}, 0},
    {"thyroid", "Thyroid", {"thyroid_gland"}, 0},
    {"liver", "Liver", {"liver"}, 0},
    {"gallbladder", "Gallbladder", {"gallbladder"}, 0},
    {"spleen", "Spleen", {"spleen"}, 0},
    {"pancreas", "Pancreas", {"pancreas"}, 0},
    {"adrenal_gland_right", "Right adrenal", {"adrenal_gland_right"}, 0},
    {"adrenal_gland_left", "Left adrenal", {"adrenal_gland_left"}, 0},
    {"kidney_right", "Right kidney", {"kidney_right", "kidney_cyst_right"}, 0},
    {"kidney_left", "Left kidney", {"kidney_left", "kidney_cyst_left"}, 0},
    {"stomach", "Stomach", {"stomach"}, 0},
    {"bowel", "Bowel", {"duodenum", "small_bowel", "colon"}, 0},
    {"bladder", "Bladder", {"urinary_bladder"}, 0},
    {"prostate", "Prostate", {"prostate"}, 0},
    {"bones", "Bones",
     {"vertebrae_*", "sacrum", "rib_*", "sternum", "costal_cartilages", "clavicula_*", "scapula_*",
      "hip_*", "femur_*", "spinal_cord", "humerus_*", "skull"},
     0},
    {"muscles", "Soft tissues", {"autochthon_*", "iliopsoas_*", "gluteus_*"}, 0},
};
#define NGROUPS ((int)(sizeof groups / sizeof groups[0]))

static int group_of(const char *organ)
{
    for (int g = 0; g < NGROUPS; g++)
        for (int i = 0; i < 14 && groups[g].prefix[i]; i++) {
            const char *p = groups[g].prefix[i];
            size_t l = strlen(p);
            if (p[l - 1] == '*' ? !strncmp(organ, p, l - 1) : !strcmp(organ, p)) return g;
        }
    return NGROUPS - 1; /* anything unnamed counts as soft tissue */
}

/* ---- string building ---------------------------------------------------------------- */

typedef struct sbuf {
    char *s;
    size_t n, cap;
} sbuf;

static void sb_add(sbuf *b, const char *t)
{
    size_t l = strlen(t);
    if (b->n + l + 1 > b->cap) {
        size_t cap = (b->cap ? b->cap * 2 : 1024) + l;
        char *s = realloc(b->s, cap);
        if (!s) {
            fprintf(stderr, "phantom: out of memory\n");
            exit(1);
        }
        b->s = s;
        b->cap = cap;
    }
    memcpy(b->s + b->n, t, l + 1);
    b->n += l;
}

static const char *lobe_text(const char *organ)
{
    static const char *const map[][2] = {
        {"lung_upper_lobe_right", "right upper lobe"}, {"lung_middle_lobe_right", "right middle lobe"},
        {"lung_lower_lobe_right", "right lower lobe"}, {"lung_upper_lobe_left", "left upper lobe"},
        {"lung_lower_lobe_left", "left lower lobe"}};
    for (int i = 0; i < 5; i++)
        if (!strcmp(organ, map[i][0])) return map[i][1];
    return "lung";
}

/* Expands {key} placeholders of a template for a finding. */
static void expand(const char *tpl, const ph_finding *f, char *out, size_t n)
{
    size_t w = 0;
    char val[64];
    for (const char *p = tpl; *p && w + 1 < n;) {
        if (*p != '{') {
            out[w++] = *p++;
            continue;
        }
        const char *e = strchr(p, '}');
        if (!e) break;
        char key[16];
        size_t kl = (size_t)(e - p - 1);
        if (kl >= sizeof key) kl = sizeof key - 1;
        memcpy(key, p + 1, kl);
        key[kl] = 0;
        int cap = isupper((unsigned char)key[0]);
        key[0] = (char)tolower((unsigned char)key[0]);
        val[0] = 0;
        if (!strcmp(key, "size"))
            snprintf(val, sizeof val, "%d", (int)lround(f->size_mm));
        else if (!strcmp(key, "hu"))
            snprintf(val, sizeof val, "%d", (int)lround(f->hu));
        else if (!strcmp(key, "side"))
            snprintf(val, sizeof val, "%s", f->side > 0 ? "left" : "right");
        else if (!strcmp(key, "lobe"))
            snprintf(val, sizeof val, "%s", lobe_text(f->organ));
        else if (!strcmp(key, "where"))
            snprintf(val, sizeof val, "%s", f->where);
        else if (!strcmp(key, "grade"))
            snprintf(val, sizeof val, "%s", f->grade);
        if (cap) val[0] = (char)toupper((unsigned char)val[0]);
        for (const char *v = val; *v && w + 1 < n; v++) out[w++] = *v;
        p = e + 1;
    }
    out[w] = 0;
}

/* A phrasing from the pool the options allow. */
static const char *pick(ph_rng *r, const char *key, int text)
{
    const char *const *p;
    int n = ph_text_phrases(key, &p);
    if (n == 0) return "";
    int lo = 0, hi = n;
    if (text == PH_TEXT_TRAIN) hi = n < PH_TRAIN_PHRASES ? n : PH_TRAIN_PHRASES;
    if (text == PH_TEXT_HELDOUT && n > PH_TRAIN_PHRASES) lo = PH_TRAIN_PHRASES;
    return p[lo + ph_int(r, hi - lo)];
}

static const char *fov_name(int fov)
{
    return fov == PH_FOV_CHEST ? "chest" : fov == PH_FOV_ABDOMEN ? "abdomen" : "chest_abdomen_pelvis";
}

static const char *pos_name(int pos)
{
    static const char *const n[] = {"HFS", "FFS", "HFP", "FFP"};
    return pos >= 0 && pos < 4 ? n[pos] : "HFS";
}

static const char *phase_name(int ph)
{
    return ph == PH_PHASE_NONE ? "non_contrast" : ph == PH_PHASE_ARTERIAL ? "arterial" : "portal_venous";
}

/* Extent along z (mm) of a label. */
static double z_extent(const ph_case *c, int lab)
{
    const ph_scene *sc = &c->sc;
    int k0 = -1, k1 = -1;
    size_t plane = (size_t)sc->nx * sc->ny;
    for (int k = 0; k < sc->nz; k++) {
        const uint8_t *l = sc->lab + plane * k;
        for (size_t v = 0; v < plane; v++)
            if (l[v] == lab) {
                if (k0 < 0) k0 = k;
                k1 = k;
                break;
            }
    }
    return k0 < 0 ? 0 : (k1 - k0 + 1) * sc->sp[2];
}

/* Mean HU of the voxels with a label and material. */
static double mean_hu(const ph_case *c, int lab, int mat)
{
    const ph_scene *sc = &c->sc;
    size_t n = (size_t)sc->nx * sc->ny * sc->nz, cnt = 0;
    double sum = 0;
    for (size_t v = 0; v < n; v++)
        if (sc->lab[v] == lab && sc->mat[v] == mat) sum += c->hu[v], cnt++;
    return cnt ? sum / cnt : 0;
}

static cJSON *num_array3(const double v[3])
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < 3; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(round(v[i] * 10) / 10));
    return a;
}

int ph_text_build(const ph_opts *o, ph_case *c)
{
    const ph_anat *an = &c->an;
    ph_rng r;
    ph_rng_init(&r, c->seed, "text");
    double vox_ml = c->sc.sp[0] * c->sc.sp[1] * c->sc.sp[2] / 1000.0;

    /* Measurements the sentences quote. */
    for (int i = 0; i < c->nf; i++) {
        ph_finding *f = &c->f[i];
        if (f->abn == PH_A_HEPATOMEGALY) f->size_mm = z_extent(c, ph_label("liver"));
        if (f->abn == PH_A_SPLENOMEGALY) f->size_mm = z_extent(c, ph_label("spleen"));
        if (f->abn == PH_A_FATTY_LIVER) f->hu = mean_hu(c, ph_label("liver"), PH_M_LIVER);
    }
    /* One wording per finding group (emphysema of several lobes shares
     * one sentence). */
    for (int i = 0; i < c->nf; i++) {
        ph_finding *f = &c->f[i];
        int j;
        for (j = 0; j < i; j++)
            if (c->f[j].group_id == f->group_id) break;
        if (j < i) {
            memcpy(f->sentence, c->f[j].sentence, sizeof f->sentence);
            memcpy(f->impression, c->f[j].impression, sizeof f->impression);
            continue;
        }
        expand(pick(&r, ph_abn_name(f->abn), o->text), f, f->sentence, sizeof f->sentence);
        expand(impression_of(f->abn), f, f->impression, sizeof f->impression);
    }

    /* Organs present, by group. */
    int present[256] = {0}, gpresent[NGROUPS] = {0}, gabn[NGROUPS] = {0}, gnormal[NGROUPS] = {0};
    int organ_abn[256] = {0};
    for (int l = 1; l < 256; l++) {
        const ctg_organ *og = ctg_organ_get(l);
        if (!og || !c->count[l]) continue;
        present[l] = c->count[l] * vox_ml >= PH_PRESENT_ML;
        for (int i = 0; i < c->nf; i++)
            if (!strcmp(c->f[i].organ, og->name) || (c->f[i].lesion_label == l && c->f[i].lesion))
                organ_abn[l] = 1;
        if (!present[l]) continue;
        int g = group_of(og->name);
        gpresent[g] = 1;
        if (organ_abn[l])
            gabn[g] = 1;
        else
            gnormal[g] = 1;
    }
    const char *gsent[NGROUPS];
    for (int g = 0; g < NGROUPS; g++) {
        char key[64];
        snprintf(key, sizeof key, "%s:%s", gabn[g] ? "rest" : "normal", groups[g].name);
        gsent[g] = gpresent[g] && gnormal[g] && (!gabn[g] || groups[g].has_rest) ? pick(&r, key, o->text) : NULL;
    }

    /* report.txt */
    sbuf rep = {0};
    char line[1024];
    const char *fovtxt = an->fov == PH_FOV_CHEST     ? "chest"
                         : an->fov == PH_FOV_ABDOMEN ? "abdomen"
                                                     : "chest, abdomen and pelvis";
    const char *phtxt = an->phase == PH_PHASE_NONE       ? "without intravenous contrast"
                        : an->phase == PH_PHASE_ARTERIAL ? "with intravenous contrast (arterial phase)"
                                                         : "with intravenous contrast (portal venous phase)";
    snprintf(line, sizeof line, "EXAMINATION: CT %s %s.\n", fovtxt, phtxt);
    sb_add(&rep, line);
    static const char *const postxt[] = {"supine, head first", "supine, feet first", "prone, head first",
                                         "prone, feet first"};
    snprintf(line, sizeof line, "TECHNIQUE: Axial images at %.1f mm slice thickness, patient %s.\n",
             c->sc.sp[2], postxt[an->position]);
    sb_add(&rep, line);
    sb_add(&rep, "COMPARISON: None.\n\nFINDINGS:\n");
    for (int g = 0; g < NGROUPS; g++) {
        if (!gpresent[g]) continue;
        snprintf(line, sizeof line, "%s:", groups[g].heading);
        sb_add(&rep, line);
        int any = 0;
        for (int i = 0; i < c->nf; i++) {
            const ph_finding *f = &c->f[i];
            if (group_of(f->organ) != g) continue;
            int j;
            for (j = 0; j < i; j++)
                if (c->f[j].group_id == f->group_id) break;
            if (j < i) continue;
            sb_add(&rep, " ");
            sb_add(&rep, f->sentence);
            any = 1;
        }
        if (gsent[g]) {
            sb_add(&rep, " ");
            sb_add(&rep, gsent[g]);
            any = 1;
        }
        if (!any) sb_add(&rep, " Unremarkable.");
        sb_add(&rep, "\n");
    }
    sb_add(&rep, "\nIMPRESSION:\n");
    int nimp = 0;
    for (int i = 0; i < c->nf; i++) {
        int j;
        for (j = 0; j < i; j++)
            if (c->f[j].group_id == c->f[i].group_id) break;
        if (j < i) continue;
        snprintf(line, sizeof line, "%d. %s\n", ++nimp, c->f[i].impression);
        sb_add(&rep, line);
    }
    if (!nimp) sb_add(&rep, "No acute abnormality.\n");
    c->report = rep.s;

    /* findings.json */
    char name[32];
    snprintf(name, sizeof name, "case_%04d", c->index);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "case", name);
    cJSON_AddNumberToObject(root, "index", c->index);
    if (c->run_seed < (1ull << 53)) {
        cJSON_AddNumberToObject(root, "seed", (double)c->run_seed);
    } else {
        char sd[32];
        snprintf(sd, sizeof sd, "%llu", (unsigned long long)c->run_seed);
        cJSON_AddStringToObject(root, "seed", sd);
    }
    cJSON_AddStringToObject(root, "study_uid", c->study_uid);
    cJSON_AddStringToObject(root, "series_uid", c->series_uid);
    cJSON_AddStringToObject(root, "frame_of_reference_uid", c->frame_uid);
    cJSON_AddStringToObject(root, "fov", fov_name(an->fov));
    cJSON_AddStringToObject(root, "patient_position", pos_name(an->position));
    cJSON_AddStringToObject(root, "contrast_phase", phase_name(an->phase));
    cJSON_AddStringToObject(root, "sex", an->male ? "M" : "F");
    cJSON_AddNumberToObject(root, "age", an->age);
    cJSON *grid = cJSON_AddObjectToObject(root, "grid");
    cJSON *dims = cJSON_AddArrayToObject(grid, "dims");
    cJSON_AddItemToArray(dims, cJSON_CreateNumber(c->sc.nx));
    cJSON_AddItemToArray(dims, cJSON_CreateNumber(c->sc.ny));
    cJSON_AddItemToArray(dims, cJSON_CreateNumber(c->sc.nz));
    double spx[3] = {c->sc.sp[0], c->sc.sp[1], c->sc.sp[2]};
    cJSON *spa = cJSON_AddArrayToObject(grid, "spacing");
    for (int a = 0; a < 3; a++) cJSON_AddItemToArray(spa, cJSON_CreateNumber(round(spx[a] * 1e4) / 1e4));
    cJSON *organs = cJSON_AddArrayToObject(root, "organs");
    cJSON *normals = cJSON_AddObjectToObject(root, "normal_sentences");
    for (int l = 1; l < 256; l++) {
        const ctg_organ *og = ctg_organ_get(l);
        if (!og || !c->count[l]) continue;
        int g = group_of(og->name);
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "organ", og->name);
        cJSON_AddNumberToObject(e, "label", l);
        cJSON_AddStringToObject(e, "group", groups[g].name);
        cJSON_AddBoolToObject(e, "present", present[l]);
        cJSON_AddNumberToObject(e, "volume_ml", round(c->count[l] * vox_ml * 10) / 10);
        cJSON_AddBoolToObject(e, "abnormal", organ_abn[l]);
        cJSON *fa = cJSON_AddArrayToObject(e, "findings");
        for (int i = 0; i < c->nf; i++) {
            const ph_finding *f = &c->f[i];
            if (strcmp(f->organ, og->name) && !(f->lesion && f->lesion_label == l)) continue;
            cJSON *x = cJSON_CreateObject();
            cJSON_AddStringToObject(x, "abnormality", ph_abn_name(f->abn));
            cJSON_AddStringToObject(x, "organ", f->organ);
            cJSON_AddNumberToObject(x, "lesion", f->lesion);
            cJSON_AddNumberToObject(x, "lesion_label", f->lesion_label);
            cJSON_AddBoolToObject(x, "in_organ", f->in_organ);
            cJSON_AddStringToObject(x, "sentence", f->sentence);
            if (f->size_mm > 0) cJSON_AddNumberToObject(x, "size_mm", lround(f->size_mm));
            if (f->hu != 0) cJSON_AddNumberToObject(x, "hu", lround(f->hu));
            if (f->where[0]) cJSON_AddStringToObject(x, "location", f->where);
            if (f->grade[0]) cJSON_AddStringToObject(x, "grade", f->grade);
            if (f->lesion) {
                double w[3] = {f->center[0] + c->offset[0], f->center[1] + c->offset[1],
                               f->center[2] + c->offset[2]};
                if (f->center[0] || f->center[1] || f->center[2])
                    cJSON_AddItemToObject(x, "center_lps", num_array3(w));
            }
            cJSON_AddItemToArray(fa, x);
        }
        if (present[l] && !organ_abn[l] && gsent[g]) {
            cJSON_AddStringToObject(e, "sentence", gsent[g]);
            cJSON_AddStringToObject(normals, og->name, gsent[g]);
        }
        cJSON_AddItemToArray(organs, e);
    }
    cJSON *imp = cJSON_AddArrayToObject(root, "impression");
    for (int i = 0; i < c->nf; i++) {
        int j;
        for (j = 0; j < i; j++)
            if (c->f[j].group_id == c->f[i].group_id) break;
        if (j == i) cJSON_AddItemToArray(imp, cJSON_CreateString(c->f[i].impression));
    }
    c->findings_json = cJSON_Print(root);
    cJSON_Delete(root);

    /* The manifest line. */
    cJSON *m = cJSON_CreateObject();
    char path[96];
    cJSON_AddStringToObject(m, "id", name);
    snprintf(path, sizeof path, o->dicom ? "%s/dicom" : "%s/ct.nii.gz", name);
    cJSON_AddStringToObject(m, "ct", path);
    if (o->nifti) {
        snprintf(path, sizeof path, "%s/ct.nii.gz", name);
        cJSON_AddStringToObject(m, "ct_nifti", path);
    }
    snprintf(path, sizeof path, "%s/labels.nii.gz", name);
    cJSON_AddStringToObject(m, "labels", path);
    snprintf(path, sizeof path, "%s/lesions.nii.gz", name);
    cJSON_AddStringToObject(m, "lesions", path);
    cJSON *mf = cJSON_AddArrayToObject(m, "findings");
    for (int i = 0; i < c->nf; i++) {
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "organ", c->f[i].organ);
        cJSON_AddStringToObject(x, "abnormality", ph_abn_name(c->f[i].abn));
        cJSON_AddStringToObject(x, "sentence", c->f[i].sentence);
        cJSON_AddNumberToObject(x, "lesion", c->f[i].lesion);
        cJSON_AddItemToArray(mf, x);
    }
    snprintf(path, sizeof path, "%s/report.txt", name);
    cJSON_AddStringToObject(m, "report", path);
    snprintf(path, sizeof path, "%s/findings.json", name);
    cJSON_AddStringToObject(m, "findings_json", path);
    cJSON_AddStringToObject(m, "fov", fov_name(an->fov));
    c->manifest_line = cJSON_PrintUnformatted(m);
    cJSON_Delete(m);
    return c->report && c->findings_json && c->manifest_line ? 0 : CTG_ENOMEM;
}
