/*
 * test_phantom.c - the phantom generator (tools/phantom*.c): determinism,
 * anatomy (structures, HU per organ, fields of view, gravity), lesions that
 * lie in the organs findings.json names, report and manifest text, the
 * train/held-out split of phrasings, DICOM orientation per patient position
 * and the command line.
 *
 * Cases are small (coarse matrices, thick slices) so that each test stays
 * well under ten seconds on two cores.  Each test runs in its own empty
 * folder (tests/runner.c).
 */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "core/organs.h"
#include "core/vol.h"
#include "dicom/dicom.h"
#include "tests.h"
#include "tools/phantom.h"
#include "tools/tools.h"

/* ---- helpers -------------------------------------------------------------------- */



static int same_file(const char *a, const char *b)
{
    size_t la, lb;
    char *x = tu_slurp(a, &la), *y = tu_slurp(b, &lb);
    int same = x && y && la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return same;
}

/* DICOM files byte for byte equal. */
static int same_dicom(const char *a, const char *b)
{
    size_t la, lb;
    char *x = tu_slurp(a, &la), *y = tu_slurp(b, &lb);
    int same = x && y && la == lb && la > 200 && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return same;
}

static cJSON *read_json(const char *path)
{
    char *s = tu_slurp(path, NULL);
    if (!s) return NULL;
    cJSON *j = cJSON_Parse(s);
    free(s);
    return j;
}

static ctg_vol *read_nii(const char *path, int dtype)
{
    ctg_vol *v = NULL;
    char why[256];
    if (ctg_nifti_read(path, dtype, &v, why, sizeof why) < 0) {
        fprintf(stderr, "%s: %s\n", path, why);
        return NULL;
    }
    return v;
}

static int id(const char *name)
{
    int i = ctg_organ_id(name);
    if (i <= 0) fprintf(stderr, "no TotalSegmentator structure %s\n", name);
    return i;
}

/* Builds case `index` in memory (no files). */
static ph_case *build(ph_opts *o, int index)
{
    ph_case *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    if (ph_case_build(o, index, c) < 0) {
        ph_case_free(c);
        free(c);
        return NULL;
    }
    return c;
}

static void drop(ph_case *c)
{
    ph_case_free(c);
    free(c);
}

static ph_opts small_opts(void)
{
    ph_opts o;
    ph_opts_default(&o);
    o.nx = o.ny = 64;
    o.thickness = 6;
    o.dicom = 0;
    return o;
}

/* ---- determinism ------------------------------------------------------------------ */

/* Same seed and options: the same bytes, with one thread or two, and case 1
 * is the same whether it is generated with case 0 or alone; another seed
 * changes everything. */
static int test_deterministic(void)
{
    const char *common[] = {"--matrix", "64", "--thickness", "6", "--fov", "cap", "--abnormal-rate", "1", "--nifti"};
#define COMMON common[0], common[1], common[2], common[3], common[4], common[5], common[6], common[7], common[8]
    CHECK_EQ_INT(tu_phantom("--seed", "11", "--count", "2", "--out", "a", COMMON, NULL), 0);
    CHECK_EQ_INT(tu_phantom("--seed", "11", "--count", "2", "--out", "b", "--threads", "2", COMMON, NULL), 0);
    CHECK_EQ_INT(tu_phantom("--seed", "11", "--count", "1", "--start", "1", "--out", "c", COMMON, NULL), 0);
    CHECK_EQ_INT(tu_phantom("--seed", "12", "--count", "2", "--out", "d", COMMON, NULL), 0);
    static const char *const files[] = {"findings.json", "report.txt", "labels.nii.gz",
                                        "lesions.nii.gz", "ct.nii.gz"};
    char p1[256], p2[256];
    for (int cs = 0; cs < 2; cs++)
        for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
            snprintf(p1, sizeof p1, "a/case_%04d/%s", cs, files[f]);
            snprintf(p2, sizeof p2, "b/case_%04d/%s", cs, files[f]);
            if (!same_file(p1, p2)) fprintf(stderr, "differs: %s\n", p2);
            CHECK(same_file(p1, p2));
            if (cs == 1) {
                snprintf(p2, sizeof p2, "c/case_0001/%s", files[f]);
                CHECK(same_file(p1, p2));
            }
            snprintf(p2, sizeof p2, "d/case_%04d/%s", cs, files[f]);
            CHECK(!same_file(p1, p2));
        }
    CHECK(same_file("a/manifest.jsonl", "b/manifest.jsonl"));
    CHECK(same_dicom("a/case_0000/dicom/CT0005.dcm", "b/case_0000/dicom/CT0005.dcm"));
    CHECK(same_dicom("a/case_0001/dicom/CT0002.dcm", "c/case_0001/dicom/CT0002.dcm"));
    CHECK(!same_dicom("a/case_0000/dicom/CT0005.dcm", "d/case_0000/dicom/CT0005.dcm"));
    /* The other words do not change the anatomy. */
    CHECK_EQ_INT(tu_phantom("--seed", "11", "--count", "1", "--out", "h", "--text", "heldout", COMMON, NULL), 0);
    CHECK(same_file("a/case_0000/labels.nii.gz", "h/case_0000/labels.nii.gz"));
    CHECK(same_file("a/case_0000/ct.nii.gz", "h/case_0000/ct.nii.gz"));
#undef COMMON
    return 0;
}

/* ---- anatomy ------------------------------------------------------------------------ */

/* A chest-abdomen-pelvis case holds the structures a CT-GLIP model learns,
 * each named by its TotalSegmentator id. */
static int test_structures(void)
{
    CHECK_EQ_INT(tu_phantom("--seed", "3", "--count", "1", "--out", "o", "--matrix", "128", "--thickness", "4",
                         "--fov", "cap", "--abnormal-rate", "0", "--no-dicom", NULL),
                 0);
    ctg_vol *lab = read_nii("o/case_0000/labels.nii.gz", CTG_U8);
    CHECK(lab != NULL);
    size_t cnt[256] = {0}, n = ctg_vol_count(lab);
    const uint8_t *l = lab->data;
    for (size_t v = 0; v < n; v++) cnt[l[v]]++;
    int distinct = 0;
    for (int i = 1; i < 256; i++) distinct += cnt[i] >= 10;
    printf("%d distinct structures with >= 10 voxels\n", distinct);
    CHECK(distinct >= 60);
    static const char *const must[] = {
        "liver", "spleen", "kidney_left", "kidney_right", "pancreas", "gallbladder", "stomach",
        "lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
        "lung_middle_lobe_right", "lung_lower_lobe_right", "heart", "aorta", "iliac_artery_left",
        "iliac_artery_right", "inferior_vena_cava", "esophagus", "trachea", "urinary_bladder",
        "sacrum", "colon", "small_bowel", "duodenum", "adrenal_gland_left", "adrenal_gland_right",
        "spinal_cord", "sternum", "hip_left", "hip_right", "femur_left", "femur_right",
        "autochthon_left", "iliopsoas_right", "portal_vein_and_splenic_vein", "costal_cartilages",
        "gluteus_maximus_left", "scapula_right", "clavicula_left"};
    for (size_t i = 0; i < sizeof must / sizeof must[0]; i++) {
        if (cnt[id(must[i])] < 10) fprintf(stderr, "missing: %s (%zu voxels)\n", must[i], cnt[id(must[i])]);
        CHECK(cnt[id(must[i])] >= 10);
    }
    char name[32];
    static const char *const verts[] = {"T1", "T2", "T3", "T4", "T5", "T6", "T7", "T8", "T9",
                                        "T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5"};
    for (size_t i = 0; i < sizeof verts / sizeof verts[0]; i++) {
        snprintf(name, sizeof name, "vertebrae_%s", verts[i]);
        CHECK(cnt[id(name)] >= 10);
    }
    for (int r = 1; r <= 12; r++)
        for (int s = 0; s < 2; s++) {
            snprintf(name, sizeof name, "rib_%s_%d", s ? "left" : "right", r);
            if (cnt[id(name)] < 5) fprintf(stderr, "missing: %s\n", name);
            CHECK(cnt[id(name)] >= 5);
        }
    /* Left is left: the liver's centre lies to the patient's right (-x in
     * LPS) of the spleen's, the heart above the liver, the bladder below
     * the kidneys. */
    double cen[256][3] = {{0}};
    for (int k = 0; k < lab->nz; k++)
        for (int j = 0; j < lab->ny; j++)
            for (int i = 0; i < lab->nx; i++) {
                int v = l[i + (size_t)lab->nx * (j + (size_t)lab->ny * k)];
                double ijk[3] = {i, j, k}, w[3];
                ctg_vol_world(lab, ijk, w);
                for (int a = 0; a < 3; a++) cen[v][a] += w[a] / (double)cnt[v];
            }
    CHECK(cen[id("liver")][0] < cen[id("spleen")][0]);
    CHECK(cen[id("kidney_right")][0] < cen[id("aorta")][0] - 30);
    CHECK(cen[id("kidney_left")][0] > cen[id("kidney_right")][0] + 80);
    CHECK(cen[id("heart")][2] > cen[id("liver")][2]);
    CHECK(cen[id("urinary_bladder")][2] < cen[id("kidney_left")][2] - 100);
    CHECK(cen[id("lung_upper_lobe_right")][2] > cen[id("lung_lower_lobe_right")][2]);
    /* Kidneys and spine behind (+y), sternum in front. */
    CHECK(cen[id("kidney_left")][1] > cen[id("pancreas")][1]);
    CHECK(cen[id("sternum")][1] < cen[id("vertebrae_T8")][1] - 80);
    ctg_vol_free(lab);
    return 0;
}

/* Mean HU inside each organ's mask lies in that organ's range, whatever
 * the contrast phase; bone labels sit on dense voxels (labels and image
 * aligned). */
static int test_hu_ranges(void)
{
    CHECK_EQ_INT(tu_phantom("--seed", "21", "--count", "3", "--out", "o", "--matrix", "144", "--thickness", "4",
                         "--fov", "cap", "--abnormal-rate", "0", "--no-dicom", NULL),
                 0);
    static const struct {
        const char *organ;
        double lo, hi;
    } want[] = {
        {"liver", 35, 150},           {"spleen", 30, 150},         {"kidney_left", 20, 220},
        {"kidney_right", 20, 220},    {"pancreas", 20, 140},       {"gallbladder", -15, 45},
        {"lung_upper_lobe_left", -930, -650}, {"lung_lower_lobe_right", -930, -600},
        {"heart", 25, 330},           {"aorta", 25, 360},          {"inferior_vena_cava", 20, 200},
        {"urinary_bladder", -15, 45}, {"trachea", -1000, -300},    {"autochthon_left", 25, 90},
        {"vertebrae_L3", 150, 800},   {"sacrum", 120, 800},        {"stomach", -1000, 120},
        {"esophagus", -400, 130},     {"iliopsoas_right", 25, 90},
    };
    for (int cs = 0; cs < 3; cs++) {
        char p[128];
        snprintf(p, sizeof p, "o/case_%04d/ct.nii.gz", cs);
        ctg_vol *ct = read_nii(p, CTG_F32);
        snprintf(p, sizeof p, "o/case_%04d/labels.nii.gz", cs);
        ctg_vol *lab = read_nii(p, CTG_U8);
        CHECK(ct && lab && ctg_vol_same_grid(ct, lab, 1e-3));
        snprintf(p, sizeof p, "o/case_%04d/findings.json", cs);
        cJSON *j = read_json(p);
        CHECK(j != NULL);
        const char *phase = cJSON_GetStringValue(cJSON_GetObjectItem(j, "contrast_phase"));
        CHECK(phase != NULL);
        double sum[256] = {0};
        size_t cnt[256] = {0}, n = ctg_vol_count(ct);
        const float *h = ct->data;
        const uint8_t *l = lab->data;
        for (size_t v = 0; v < n; v++) sum[l[v]] += h[v], cnt[l[v]]++;
        for (size_t w = 0; w < sizeof want / sizeof want[0]; w++) {
            int i = id(want[w].organ);
            CHECK(cnt[i] > 0);
            double m = sum[i] / cnt[i];
            printf("case %d (%s): %-24s %7.1f HU\n", cs, phase, want[w].organ, m);
            CHECK(m >= want[w].lo && m <= want[w].hi);
        }
        /* Outside the body: air. */
        CHECK(h[0] < -900);
        cJSON_Delete(j);
        ctg_vol_free(ct);
        ctg_vol_free(lab);
    }
    return 0;
}

/* The field of view decides which organs are in the study. */
static int test_fov_variants(void)
{
    ph_opts o = small_opts();
    static const struct {
        int fov;
        const char *yes[6], *no[6];
    } want[] = {
        {PH_FOV_CHEST,
         {"lung_upper_lobe_left", "lung_lower_lobe_right", "heart", "trachea", "aorta", NULL},
         {"urinary_bladder", "sacrum", "femur_left", "prostate", "iliac_artery_left", NULL}},
        {PH_FOV_ABDOMEN,
         {"liver", "kidney_left", "kidney_right", "spleen", "pancreas", NULL},
         {"trachea", "thyroid_gland", "urinary_bladder", "femur_right", "lung_upper_lobe_right", NULL}},
        {PH_FOV_CAP,
         {"lung_upper_lobe_left", "trachea", "liver", "kidney_left", "urinary_bladder", NULL},
         {NULL}},
    };
    for (size_t w = 0; w < sizeof want / sizeof want[0]; w++)
        for (int cs = 0; cs < 2; cs++) {
            o.fov = want[w].fov;
            ph_case *c = build(&o, cs);
            CHECK(c != NULL);
            CHECK_EQ_INT(c->an.fov, want[w].fov);
            for (int i = 0; want[w].yes[i]; i++) {
                if (!c->count[id(want[w].yes[i])]) fprintf(stderr, "fov %d: no %s\n", want[w].fov, want[w].yes[i]);
                CHECK(c->count[id(want[w].yes[i])] > 0);
            }
            for (int i = 0; want[w].no[i]; i++) {
                if (c->count[id(want[w].no[i])]) fprintf(stderr, "fov %d: has %s\n", want[w].fov, want[w].no[i]);
                CHECK(c->count[id(want[w].no[i])] == 0);
            }
            cJSON *j = cJSON_Parse(c->findings_json);
            const char *fov = cJSON_GetStringValue(cJSON_GetObjectItem(j, "fov"));
            CHECK(fov && !strcmp(fov, want[w].fov == PH_FOV_CHEST     ? "chest"
                                      : want[w].fov == PH_FOV_ABDOMEN ? "abdomen"
                                                                      : "chest_abdomen_pelvis"));
            cJSON_Delete(j);
            drop(c);
        }
    return 0;
}

/* Gravity: pleural fluid and gallstones collect posteriorly when supine
 * and anteriorly when prone, gas in the stomach the other way round. */
static int test_gravity(void)
{
    ph_opts o = small_opts();
    o.nx = o.ny = 96;
    o.fov = PH_FOV_CAP;
    o.force = 1u << PH_A_PLEURAL_EFFUSION | 1u << PH_A_GALLSTONE;
    double eff_dy[2] = {0}, stone_dy[2] = {0}, gas_dy[2] = {0};
    for (int prone = 0; prone < 2; prone++) {
        o.position = prone ? PH_POS_HFP : PH_POS_HFS;
        ph_case *c = build(&o, 4);
        CHECK(c != NULL);
        CHECK_EQ_INT(c->an.gravity, prone ? -1 : 1);
        const ph_scene *sc = &c->sc;
        int eff = 0, stone = 0;
        for (int i = 0; i < c->nf; i++) {
            if (c->f[i].abn == PH_A_PLEURAL_EFFUSION) eff = c->f[i].lesion;
            if (c->f[i].abn == PH_A_GALLSTONE) stone = c->f[i].lesion;
        }
        CHECK(eff > 0 && stone > 0);
        /* Centroids (y) of effusion vs the lungs, stone vs the gallbladder,
         * stomach gas vs the stomach. */
        double y[6] = {0}, n[6] = {0};
        int lungs[5] = {id("lung_upper_lobe_left"), id("lung_lower_lobe_left"), id("lung_upper_lobe_right"),
                        id("lung_middle_lobe_right"), id("lung_lower_lobe_right")};
        for (int k = 0; k < sc->nz; k++)
            for (int j = 0; j < sc->ny; j++)
                for (int i = 0; i < sc->nx; i++) {
                    size_t v = ph_idx(sc, i, j, k);
                    double p[3];
                    ph_pos(sc, i, j, k, p);
                    int lb = sc->lab[v];
                    int in_lung = 0;
                    for (int q = 0; q < 5; q++) in_lung |= lb == lungs[q];
                    if (sc->les[v] == eff) y[0] += p[1], n[0]++;
                    if (in_lung || sc->les[v] == eff) y[1] += p[1], n[1]++;
                    if (sc->les[v] == stone) y[2] += p[1], n[2]++;
                    if (lb == id("gallbladder")) y[3] += p[1], n[3]++;
                    if (lb == id("stomach") && sc->mat[v] == PH_M_GAS) y[4] += p[1], n[4]++;
                    if (lb == id("stomach")) y[5] += p[1], n[5]++;
                }
        for (int q = 0; q < 6; q++) CHECK(n[q] > 0);
        eff_dy[prone] = y[0] / n[0] - y[1] / n[1];
        stone_dy[prone] = y[2] / n[2] - y[3] / n[3];
        gas_dy[prone] = y[4] / n[4] - y[5] / n[5];
        printf("%s: effusion %+.1f mm, stone %+.1f mm, gastric gas %+.1f mm (y, + posterior)\n",
               prone ? "prone" : "supine", eff_dy[prone], stone_dy[prone], gas_dy[prone]);
        drop(c);
    }
    CHECK(eff_dy[0] > 10 && eff_dy[1] < -10);
    CHECK(stone_dy[0] > 0 && stone_dy[1] < 0);
    CHECK(gas_dy[0] < 0 && gas_dy[1] > 0);
    return 0;
}

/* ---- abnormalities ------------------------------------------------------------------ */

/* Over 30 small abnormal cases at least 12 kinds of findings on at least 7
 * organs occur, every focal lesion has voxels, and those voxels carry the
 * label findings.json says lies under them. */
static int test_abnormality_coverage(void)
{
    ph_opts o = small_opts();
    o.abnormal_rate = 1;
    o.fov = PH_FOV_RANDOM;
    int seen[PH_A_COUNT] = {0}, nf = 0, nles = 0;
    char organs[64][40];
    int norgans = 0;
    for (int cs = 0; cs < 30; cs++) {
        ph_case *c = build(&o, cs);
        CHECK(c != NULL);
        size_t n = (size_t)c->sc.nx * c->sc.ny * c->sc.nz;
        for (int i = 0; i < c->nf; i++) {
            const ph_finding *f = &c->f[i];
            seen[f->abn]++;
            nf++;
            int known = 0;
            for (int q = 0; q < norgans; q++) known |= !strcmp(organs[q], f->organ);
            if (!known && norgans < 64) snprintf(organs[norgans++], 40, "%s", f->organ);
            CHECK(ctg_organ_id(f->organ) > 0);
            CHECK(f->sentence[0] != 0);
            if (!f->lesion) continue;
            nles++;
            size_t in = 0, under = 0;
            for (size_t v = 0; v < n; v++)
                if (c->sc.les[v] == f->lesion) {
                    in++;
                    under += c->sc.lab[v] == f->lesion_label;
                }
            if (!in || (f->in_organ && under < 0.9 * in))
                fprintf(stderr, "case %d %s: %zu voxels, %zu on label %d\n", cs, ph_abn_name(f->abn), in,
                        under, f->lesion_label);
            CHECK(in > 0);
            if (f->in_organ) CHECK(under >= 0.9 * in);
        }
        drop(c);
    }
    int types = 0;
    for (int a = 0; a < PH_A_COUNT; a++) {
        printf("%-22s %d\n", ph_abn_name(a), seen[a]);
        types += seen[a] > 0;
    }
    printf("%d findings, %d focal, %d types, %d organs\n", nf, nles, types, norgans);
    CHECK(types >= 12);
    CHECK(norgans >= 7);
    return 0;
}

/* On disk: every lesion of findings.json is in lesions.nii.gz, inside the
 * organ it is reported in (a renal cyst carries TotalSegmentator's
 * kidney_cyst label); nothing in the lesion map is unreported. */
static int test_lesion_files(void)
{
    CHECK_EQ_INT(tu_phantom("--seed", "9", "--count", "3", "--out", "o", "--matrix", "96", "--thickness", "5",
                         "--fov", "cap", "--no-dicom", "--abnormal",
                         "hepatic_cyst,renal_cyst,kidney_stone,lung_nodule,pleural_effusion,aortic_aneurysm,"
                         "pancreatic_mass,splenic_lesion,gallstone",
                         NULL),
                 0);
    for (int cs = 0; cs < 3; cs++) {
        char p[128];
        snprintf(p, sizeof p, "o/case_%04d/lesions.nii.gz", cs);
        ctg_vol *les = read_nii(p, CTG_U8);
        snprintf(p, sizeof p, "o/case_%04d/labels.nii.gz", cs);
        ctg_vol *lab = read_nii(p, CTG_U8);
        snprintf(p, sizeof p, "o/case_%04d/findings.json", cs);
        cJSON *j = read_json(p);
        CHECK(les && lab && j && ctg_vol_same_grid(les, lab, 1e-6));
        size_t n = ctg_vol_count(les);
        const uint8_t *ls = les->data, *lb = lab->data;
        int reported[256] = {0}, nfocal = 0;
        cJSON *organ;
        cJSON_ArrayForEach(organ, cJSON_GetObjectItem(j, "organs"))
        {
            const char *oname = cJSON_GetStringValue(cJSON_GetObjectItem(organ, "organ"));
            cJSON *f;
            cJSON_ArrayForEach(f, cJSON_GetObjectItem(organ, "findings"))
            {
                int k = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(f, "lesion"));
                int under = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(f, "lesion_label"));
                const char *fo = cJSON_GetStringValue(cJSON_GetObjectItem(f, "organ"));
                const char *abn = cJSON_GetStringValue(cJSON_GetObjectItem(f, "abnormality"));
                CHECK(fo && abn && oname);
                if (!k || strcmp(fo, oname)) continue; /* listed under its organ once */
                nfocal++;
                reported[k] = 1;
                size_t in = 0, on = 0;
                for (size_t v = 0; v < n; v++)
                    if (ls[v] == k) in++, on += lb[v] == under;
                CHECK(in > 0);
                if (cJSON_IsTrue(cJSON_GetObjectItem(f, "in_organ"))) {
                    CHECK(on >= 0.9 * in);
                    const char *uname = ctg_organ_get(under)->name;
                    int ok = !strcmp(uname, fo) ||
                             (!strncmp(fo, "kidney_", 7) && !strncmp(uname, "kidney_cyst_", 12) &&
                              !strcmp(uname + 12, fo + 7));
                    if (!ok) fprintf(stderr, "%s in %s lies on %s\n", abn, fo, uname);
                    CHECK(ok);
                } else {
                    /* Pleural fluid lies beside the lung: not labelled lung. */
                    CHECK(!strcmp(abn, "pleural_effusion"));
                    CHECK(on >= 0.9 * in && under == 0);
                }
            }
        }
        CHECK(nfocal >= 5);
        for (size_t v = 0; v < n; v++) CHECK(ls[v] == 0 || reported[ls[v]]);
        cJSON_Delete(j);
        ctg_vol_free(les);
        ctg_vol_free(lab);
    }
    return 0;
}

/* ---- text ----------------------------------------------------------------------------- */

/* findings.json and manifest.jsonl parse; every present organ has its
 * finding or normal sentence in report.txt; the manifest agrees with
 * findings.json and its paths exist. */
static int test_text_and_manifest(void)
{
    CHECK_EQ_INT(tu_phantom("--seed", "5", "--count", "4", "--out", "o", "--matrix", "64", "--thickness", "6",
                         "--abnormal-rate", "0.6", "--nifti", NULL),
                 0);
    size_t len;
    char *man = tu_slurp("o/manifest.jsonl", &len);
    CHECK(man != NULL);
    int lines = 0, abnormal_cases = 0;
    for (char *line = strtok(man, "\n"); line; line = strtok(NULL, "\n"), lines++) {
        cJSON *m = cJSON_Parse(line);
        CHECK(m != NULL);
        const char *cid = cJSON_GetStringValue(cJSON_GetObjectItem(m, "id"));
        char expect[32], p[256];
        snprintf(expect, sizeof expect, "case_%04d", lines);
        CHECK(cid && !strcmp(cid, expect));
        static const char *const keys[] = {"ct", "labels", "lesions", "report", "findings_json"};
        for (size_t k = 0; k < 5; k++) {
            const char *rel = cJSON_GetStringValue(cJSON_GetObjectItem(m, keys[k]));
            CHECK(rel && rel[0] != '/');
            snprintf(p, sizeof p, "o/%s", rel);
            FILE *f = fopen(p, "r");
            CHECK(f != NULL);
            fclose(f);
        }
        snprintf(p, sizeof p, "o/%s/report.txt", cid);
        char *rep = tu_slurp(p, NULL);
        snprintf(p, sizeof p, "o/%s/findings.json", cid);
        cJSON *j = read_json(p);
        CHECK(rep && j);
        CHECK(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "case")), cid));
        CHECK(!strncmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "study_uid")), "2.25.", 5));
        CHECK(strlen(cJSON_GetStringValue(cJSON_GetObjectItem(j, "series_uid"))) <= 58);
        CHECK(strstr(rep, "FINDINGS:") && strstr(rep, "IMPRESSION:"));
        cJSON *normals = cJSON_GetObjectItem(j, "normal_sentences");
        int nfind = 0, npresent = 0;
        cJSON *organ;
        cJSON_ArrayForEach(organ, cJSON_GetObjectItem(j, "organs"))
        {
            const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(organ, "organ"));
            int label = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(organ, "label"));
            CHECK(label == ctg_organ_id(name));
            if (!cJSON_IsTrue(cJSON_GetObjectItem(organ, "present"))) continue;
            npresent++;
            int said = 0;
            cJSON *f;
            cJSON_ArrayForEach(f, cJSON_GetObjectItem(organ, "findings"))
            {
                const char *s = cJSON_GetStringValue(cJSON_GetObjectItem(f, "sentence"));
                CHECK(s && strstr(rep, s));
                said = 1;
                if (!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(f, "organ")), name)) nfind++;
            }
            CHECK_EQ_INT(cJSON_IsTrue(cJSON_GetObjectItem(organ, "abnormal")), said);
            if (!said) {
                const char *s = cJSON_GetStringValue(cJSON_GetObjectItem(normals, name));
                if (!s || !strstr(rep, s)) fprintf(stderr, "%s: %s has no sentence\n", cid, name);
                CHECK(s && strstr(rep, s));
            }
        }
        CHECK(npresent >= 20);
        /* The manifest lists the same findings. */
        CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(m, "findings")), nfind);
        CHECK_EQ_INT(nfind == 0, strstr(rep, "No acute abnormality.") != NULL);
        abnormal_cases += nfind > 0;
        cJSON_Delete(j);
        cJSON_Delete(m);
        free(rep);
    }
    CHECK_EQ_INT(lines, 4);
    CHECK(abnormal_cases >= 1);
    free(man);
    return 0;
}

/* Does sentence s fit template t ({...} stands for one or more
 * characters)? */
static int fits(const char *t, const char *s)
{
    if (!*t) return !*s;
    if (*t == '{') {
        const char *e = strchr(t, '}');
        if (!e) return 0;
        for (const char *q = s + 1; q <= s + strlen(s); q++)
            if (fits(e + 1, q)) return 1;
        return 0;
    }
    return *t == *s && fits(t + 1, s + 1);
}

/* Which pool a sentence comes from: 1 train, 2 held out, 3 both (never
 * wanted), 0 none. */
static int pool_of(const char *key, const char *s)
{
    const char *const *p;
    int n = ph_text_phrases(key, &p), r = 0;
    for (int i = 0; i < n; i++)
        if (fits(p[i], s)) r |= i < PH_TRAIN_PHRASES ? 1 : 2;
    return r;
}

/* Every finding and normal statement has at least four phrasings; the
 * training and held-out sets are disjoint, and --text heldout uses only
 * held-out wording (--text train only training wording). */
static int test_phrasing_split(void)
{
    int nkeys = 0;
    for (const char *k; (k = ph_text_key(nkeys)); nkeys++) {
        const char *const *p;
        int n = ph_text_phrases(k, &p);
        CHECK(n >= 4 && n > PH_TRAIN_PHRASES);
        for (int i = 0; i < n; i++)
            for (int j = i + 1; j < n; j++) CHECK(strcmp(p[i], p[j]) != 0);
        /* No held-out phrasing could be mistaken for a training one. */
        for (int i = PH_TRAIN_PHRASES; i < n; i++)
            for (int j = 0; j < PH_TRAIN_PHRASES; j++) CHECK(!fits(p[j], p[i]) && !fits(p[i], p[j]));
    }
    for (int a = 0; a < PH_A_COUNT; a++) {
        const char *const *p;
        CHECK(ph_text_phrases(ph_abn_name(a), &p) >= 4);
    }
    CHECK(nkeys >= PH_A_COUNT + 15);

    ph_opts o = small_opts();
    o.abnormal_rate = 1;
    for (int text = PH_TEXT_TRAIN; text <= PH_TEXT_HELDOUT; text++) {
        o.text = text;
        int want = text == PH_TEXT_TRAIN ? 1 : 2, checked = 0;
        for (int cs = 0; cs < 6; cs++) {
            ph_case *c = build(&o, cs);
            CHECK(c != NULL);
            for (int i = 0; i < c->nf; i++) {
                int got = pool_of(ph_abn_name(c->f[i].abn), c->f[i].sentence);
                if (got != want) fprintf(stderr, "'%s' from pool %d\n", c->f[i].sentence, got);
                CHECK_EQ_INT(got, want);
                checked++;
            }
            cJSON *j = cJSON_Parse(c->findings_json);
            cJSON *normals = cJSON_GetObjectItem(j, "normal_sentences"), *e;
            cJSON_ArrayForEach(e, normals)
            {
                const char *s = cJSON_GetStringValue(e);
                int got = 0;
                const char *k;
                for (int q = 0; (k = ph_text_key(q)); q++)
                    if (!strncmp(k, "normal:", 7) || !strncmp(k, "rest:", 5)) got |= pool_of(k, s);
                CHECK_EQ_INT(got, want);
                checked++;
            }
            cJSON_Delete(j);
            drop(c);
        }
        CHECK(checked > 50);
    }
    return 0;
}

/* ---- DICOM and the command line -------------------------------------------------- */

/* Each patient position is written in its acquisition orientation, with
 * the position in the header; the Enhanced CT option gives one file. */
static int test_dicom_positions(void)
{
    static const char *const pos[] = {"HFS", "FFS", "HFP", "FFP"};
    static const double iop[4][6] = {{1, 0, 0, 0, 1, 0}, {-1, 0, 0, 0, 1, 0}, {-1, 0, 0, 0, -1, 0},
                                     {1, 0, 0, 0, -1, 0}};
    dcm_global_init();
    dcm_quiet();
    for (int p = 0; p < 4; p++) {
        char dir[32], file[64], why[256];
        snprintf(dir, sizeof dir, "p%d", p);
        /* One of them with unsigned pixels. */
        CHECK_EQ_INT(tu_phantom("--seed", "2", "--count", "1", "--out", dir, "--matrix", "48", "--thickness",
                             "10", "--fov", "chest", "--position", pos[p], p == 3 ? "--unsigned" : NULL,
                             NULL),
                     0);
        snprintf(file, sizeof file, "%s/case_0000/dicom/CT0001.dcm", dir);
        ctg_instance in;
        CHECK_EQ_INT(dcm_read_instance(file, &in, why, sizeof why), 0);
        CHECK(in.has_orientation);
        for (int q = 0; q < 6; q++) CHECK(fabs(in.orientation[q] - iop[p][q]) < 1e-6);
        CHECK_EQ_INT(in.rows, 48);
        CHECK(!strcmp(in.modality, "CT"));
        CHECK(!strncmp(in.study_uid, "2.25.", 5));
        snprintf(file, sizeof file, "%s/case_0000/findings.json", dir);
        cJSON *j = read_json(file);
        CHECK(j && !strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "patient_position")), pos[p]));
        CHECK(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "study_uid")), in.study_uid));
        CHECK(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "series_uid")), in.series_uid));
        cJSON_Delete(j);
    }
    CHECK_EQ_INT(tu_phantom("--seed", "2", "--count", "1", "--out", "e", "--matrix", "48", "--thickness", "10",
                         "--fov", "chest", "--enhanced", NULL),
                 0);
    DIR *d = opendir("e/case_0000/dicom");
    CHECK(d != NULL);
    int files = 0;
    struct dirent *de;
    while ((de = readdir(d))) files += de->d_name[0] != '.';
    closedir(d);
    CHECK_EQ_INT(files, 1);
    return 0;
}

static int test_options(void)
{
    CHECK_EQ_INT(tu_phantom("--help", NULL), 0);
    CHECK_EQ_INT(tu_phantom("--count", "1", NULL), 2); /* no --out */
    CHECK_EQ_INT(tu_phantom("--out", "x", "--matrix", "7", NULL), 2);
    CHECK_EQ_INT(tu_phantom("--out", "x", "--position", "sideways", NULL), 2);
    CHECK_EQ_INT(tu_phantom("--out", "x", "--abnormal", "broken_heart", NULL), 2);
    CHECK_EQ_INT(tu_phantom("--out", "x", "--abnormal-rate", "1.5", NULL), 2);
    CHECK_EQ_INT(tu_phantom("--out", "x", "--ts", "jpeg2000", NULL), 2);
    CHECK_EQ_INT(tu_phantom("--out", "x", "--bogus", NULL), 2);
    /* --matrix NXxNY gives a non-square grid. */
    CHECK_EQ_INT(tu_phantom("--out", "r", "--matrix", "64x48", "--thickness", "8", "--fov", "abdomen",
                         "--no-dicom", NULL),
                 0);
    ctg_vol *v = read_nii("r/case_0000/labels.nii.gz", CTG_U8);
    CHECK(v && v->nx == 64 && v->ny == 48);
    ctg_vol_free(v);
    return 0;
}

const test_case phantom_tests[] = {
    {"phantom_deterministic", test_deterministic},
    {"phantom_structures", test_structures},
    {"phantom_hu_ranges", test_hu_ranges},
    {"phantom_fov_variants", test_fov_variants},
    {"phantom_gravity", test_gravity},
    {"phantom_abnormality_coverage", test_abnormality_coverage},
    {"phantom_lesion_files", test_lesion_files},
    {"phantom_text_and_manifest", test_text_and_manifest},
    {"phantom_phrasing_split", test_phrasing_split},
    {"phantom_dicom_positions", test_dicom_positions},
    {"phantom_options", test_options},
    {NULL, NULL},
};
