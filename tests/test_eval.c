/*
 * test_eval.c - the findings list (etc/findings.conf), zero-shot scoring
 * (core/zeroshot.c) and `ctglip-train eval` (tools/train_eval.c): the
 * shipped list covers every abnormality the phantom generator draws, on
 * the organs it draws them on; bad lines are refused naming file and line;
 * embeddings equal to a prompt score the way they must; and an evaluation
 * of a fresh tiny model on two tiny phantoms writes a report whose numbers
 * are in range and were computed over the right counts, and a table with
 * the paper's four rows.
 *
 * Each test runs in its own empty folder (tests/runner.c); CTG_ROOT names
 * the repository for the shipped files.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/core.h"
#include "core/model.h"
#include "core/organs.h"
#include "core/text.h"
#include "core/zeroshot.h"
#include "tests.h"
#include "tools/phantom.h"
#include "tools/train_data.h"
#include "tools/train_eval.h"

extern const test_case eval_tests[];

#define root_path tu_root_path

/* ---- findings list ---------------------------------------------------------------- */

/* Where tools/phantom_lesion.c puts each abnormality. */
static const struct {
    const char *key;
    const char *organs[5];
} where[] = {
    {"hepatic_cyst", {"liver"}},
    {"hepatic_mass", {"liver"}},
    {"fatty_liver", {"liver"}},
    {"hepatomegaly", {"liver"}},
    {"splenomegaly", {"spleen"}},
    {"splenic_lesion", {"spleen"}},
    {"renal_cyst", {"kidney_left", "kidney_right"}},
    {"kidney_stone", {"kidney_left", "kidney_right"}},
    {"hydronephrosis", {"kidney_left", "kidney_right"}},
    {"gallstone", {"gallbladder"}},
    {"lung_nodule", {"lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right",
                     "lung_upper_lobe_left", "lung_lower_lobe_left"}},
    {"pleural_effusion", {"lung_lower_lobe_left", "lung_lower_lobe_right"}},
    {"emphysema", {"lung_upper_lobe_right", "lung_lower_lobe_right", "lung_upper_lobe_left",
                   "lung_lower_lobe_left"}},
    {"aortic_aneurysm", {"aorta"}},
    {"aortic_calcification", {"aorta"}},
    {"pancreatic_mass", {"pancreas"}},
    {"adrenal_nodule", {"adrenal_gland_left", "adrenal_gland_right"}},
    {"cardiomegaly", {"heart"}},
};

static int applies(const zs_finding *f, const char *organ)
{
    int id = ctg_organ_id(organ);
    for (int i = 0; i < f->norgans; i++)
        if (f->organ_ids[i] == id) return 1;
    return 0;
}

/* The shipped list parses and covers every key of the generator (through
 * its public ph_abn_name) on every organ the generator uses for it. */
static int test_list_covers_phantom(void)
{
    char why[512] = "";
    zs_list *l = NULL;
    int rc = zs_list_load(root_path("etc/findings.conf"), &l, why, sizeof why);
    if (rc) fprintf(stderr, "%s\n", why);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(PH_A_COUNT, (int)(sizeof where / sizeof where[0]));
    for (int a = 0; a < PH_A_COUNT; a++) {
        const char *key = ph_abn_name(a);
        int f = zs_list_find(l, key);
        if (f < 0) fprintf(stderr, "findings.conf lacks %s\n", key);
        CHECK(f >= 0);
        int w = -1;
        for (int i = 0; i < PH_A_COUNT; i++)
            if (!strcmp(where[i].key, key)) w = i;
        CHECK(w >= 0);
        for (int o = 0; o < 5 && where[w].organs[o]; o++) {
            if (!applies(&l->f[f], where[w].organs[o]))
                fprintf(stderr, "%s does not apply to %s\n", key, where[w].organs[o]);
            CHECK(applies(&l->f[f], where[w].organs[o]));
        }
        CHECK(l->f[f].npos >= 1 && l->f[f].nneg >= 1);
        CHECK(l->f[f].threshold > 0 && l->f[f].threshold < 1);
        CHECK(l->f[f].display[0]);
    }
    /* Empty negative column -> the AT normal template. */
    int hc = zs_list_find(l, "hepatic_cyst");
    CHECK(!strcmp(l->f[hc].neg[0], ZS_NORMAL_TEMPLATE));
    CHECK(!strcmp(l->f[hc].code, "85057007"));
    CHECK(!strcmp(l->f[hc].meaning, "Cyst of liver"));
    zs_list_free(l);
    return 0;
}

/* Parses text and expects rc with "NAME:LINE:" at the start of why. */
static int expect_bad(const char *text, int rc_want, int line, const char *words)
{
    char why[512] = "", pre[64];
    zs_list *l = NULL;
    int rc = zs_list_parse(text, strlen(text), "x.tsv", &l, why, sizeof why);
    snprintf(pre, sizeof pre, "x.tsv:%d: ", line);
    if (rc != rc_want || l || strncmp(why, pre, strlen(pre)) || !strstr(why, words)) {
        fprintf(stderr, "got rc %d, why '%s'; wanted %d, '%s...%s'\n", rc, why, rc_want, pre,
                words);
        return 1;
    }
    return 0;
}

#define GOOD "hepatic_cyst\tliver\ta cyst in the {organ}\t\t85057007\tCyst of liver\tHepatic cyst\n"

static int test_list_bad_lines(void)
{
    char why[256];
    zs_list *l = NULL;
    /* A good list with a comment, a blank line, several phrasings, an
     * explicit negative and a threshold. */
    const char *ok = "# comment\n\n" GOOD
                     "renal_cyst\tkidney_left, kidney_right\ta cyst in the {organ} | a renal cyst"
                     "\tnormal {organ} | unremarkable {organ}\t\t\t\t0.3\n";
    CHECK_EQ_INT(zs_list_parse(ok, strlen(ok), "x.tsv", &l, why, sizeof why), 0);
    CHECK_EQ_INT(l->n, 2);
    CHECK_EQ_INT(l->f[1].norgans, 2);
    CHECK_EQ_INT(l->f[1].npos, 2);
    CHECK(!strcmp(l->f[1].pos[1], "a renal cyst"));
    CHECK_EQ_INT(l->f[1].nneg, 2);
    CHECK(!strcmp(l->f[1].display, "renal_cyst"));
    CHECK(fabsf(l->f[1].threshold - 0.3f) < 1e-6f);
    CHECK_EQ_INT(l->f[1].line, 4);
    zs_list_free(l);

    CHECK(!expect_bad(GOOD "x\tunicorn_gland\tp\t\t\t\tX\n", CTG_ECONFIG, 2, "unknown organ"));
    CHECK(!expect_bad("# c\nx\tliver\tp\n", CTG_ECONFIG, 2, "columns"));
    CHECK(!expect_bad(GOOD GOOD, CTG_ECONFIG, 2, "already defined on line 1"));
    CHECK(!expect_bad("a\tliver\tp\t\t12ab45\tm\tA\n", CTG_ECONFIG, 1, "SNOMED"));
    CHECK(!expect_bad("a\tliver\tp\t\t85057007\t\tA\n", CTG_ECONFIG, 1, "meaning"));
    CHECK(!expect_bad("a\tliver\ta {orgen}\t\t\t\tA\n", CTG_ECONFIG, 1, "placeholder"));
    CHECK(!expect_bad("a\tliver\ta || b\t\t\t\tA\n", CTG_ECONFIG, 1, "empty phrasing"));
    CHECK(!expect_bad("a\tliver\t\t\t\t\tA\n", CTG_ECONFIG, 1, "no phrasing"));
    CHECK(!expect_bad("Bad-Key\tliver\tp\t\t\t\tA\n", CTG_ECONFIG, 1, "key"));
    CHECK(!expect_bad("a\tliver\tp\t\t\t\tA\t1.5\n", CTG_ECONFIG, 1, "threshold"));
    CHECK(!expect_bad("a\tliver,liver\tp\t\t\t\tA\n", CTG_ECONFIG, 1, "twice"));
    CHECK(!expect_bad("# only a comment\n", CTG_ECONFIG, 1, "no findings"));
    /* The file reader names the path. */
    FILE *f = fopen("bad.tsv", "w");
    CHECK(f);
    fputs(GOOD "\n" "b\tliver\n", f);
    fclose(f);
    CHECK_EQ_INT(zs_list_load("bad.tsv", &l, why, sizeof why), CTG_ECONFIG);
    CHECK(!strncmp(why, "bad.tsv:3: ", 11));
    CHECK_EQ_INT(zs_list_load("missing.tsv", &l, why, sizeof why), CTG_ENOENT);
    return 0;
}

/* ---- scoring ------------------------------------------------------------------------ */

static txt_encoder *open_glove(void)
{
    char why[256] = "";
    txt_encoder *e = NULL;
    if (txt_open("glove", root_path(TXT_GLOVE_DEFAULT), &e, why, sizeof why) != 0)
        fprintf(stderr, "cannot open the shipped vocabulary: %s\n", why);
    return e;
}

#define tiny_organs tu_tiny_organs
#define TINY_K TU_TINY_K
#define tiny_model tu_tiny_model

static int check_scoring(const mdl_model *m, txt_encoder *enc, const zs_list *l)
{
    char why[256] = "";
    zs_prompts *p = NULL;
    txt_cache *cache = NULL;
    CHECK_EQ_INT(txt_cache_open(enc, 256, &cache), 0);
    int rc = zs_prompts_build(l, m, enc, cache, ZS_TEXT_ALL, 0, &p, why, sizeof why);
    if (rc) fprintf(stderr, "%s\n", why);
    CHECK_EQ_INT(rc, 0);
    int e = zs_prompts_dim(p);
    CHECK_EQ_INT(e, m->cfg.embed_dim);
    CHECK_EQ_INT(zs_prompts_classes(p), TINY_K);
    /* Each organ prompt is nearest to itself, and its norm is one. */
    for (int c = 1; c <= TINY_K; c++) {
        const float *v = zs_organ_vec(p, c);
        CHECK(v);
        double s = 0;
        for (int j = 0; j < e; j++) s += (double)v[j] * v[j];
        CHECK(fabs(s - 1) < 1e-4);
        float cos[TINY_K + 1];
        CHECK_EQ_INT(zs_organ_top1(p, v, cos), c);
        CHECK(isnan(cos[0]) && fabsf(cos[c] - 1) < 1e-4f);
    }
    CHECK(!zs_organ_vec(p, 0) && !zs_organ_vec(p, TINY_K + 1));

    int cyst = zs_list_find(l, "renal_cyst"), hc = zs_list_find(l, "hepatic_cyst");
    int kl = 3, liver = 1;
    CHECK(zs_finding_vec(p, cyst, kl, 1) && zs_finding_vec(p, cyst, kl, 0));
    CHECK(!zs_finding_vec(p, cyst, liver, 1)); /* a renal cyst is not scored on the liver */
    CHECK(!zs_finding_vec(p, zs_list_find(l, "cardiomegaly"), 1, 1)); /* no heart class */
    /* An embedding equal to the positive prompt scores above one half, the
     * negative below; the probability is the two-way softmax at tau. */
    zs_score sc[32];
    int n = zs_score_organ(p, kl, zs_finding_vec(p, cyst, kl, 1), sc, 32);
    CHECK_EQ_INT(n, 3); /* renal_cyst, kidney_stone, hydronephrosis */
    int seen = 0;
    for (int i = 0; i < n; i++) {
        CHECK_EQ_INT(sc[i].cls, kl);
        CHECK(sc[i].prob >= 0 && sc[i].prob <= 1);
        if (sc[i].finding != cyst) continue;
        seen = 1;
        CHECK(sc[i].prob > 0.5f && sc[i].present);
        CHECK(fabsf(sc[i].cos_pos - 1) < 1e-4f);
        float want = 1.0f / (1.0f + expf((sc[i].cos_neg - sc[i].cos_pos) / ZS_TAU));
        CHECK(fabsf(sc[i].prob - want) < 1e-5f);
    }
    CHECK(seen);
    n = zs_score_organ(p, liver, zs_finding_vec(p, hc, liver, 0), sc, 32);
    CHECK_EQ_INT(n, 4); /* the four liver findings */
    CHECK_EQ_INT(sc[0].finding, hc);
    CHECK(sc[0].prob < 0.5f && !sc[0].present);
    /* A count-only call writes nothing. */
    CHECK_EQ_INT(zs_score_organ(p, liver, zs_organ_vec(p, 1), NULL, 0), 4);
    CHECK_EQ_INT(zs_score_organ(p, 0, zs_organ_vec(p, 1), sc, 32), CTG_EINVAL);
    /* The plain formula. */
    float a[2] = {1, 0}, b[2] = {0, 1};
    CHECK(fabsf(zs_prob(a, a, b, 2, 0.5f) - 1.0f / (1.0f + expf(-2.0f))) < 1e-6f);
    CHECK(fabsf(zs_prob(a, a, a, 2, 0.1f) - 0.5f) < 1e-6f);
    zs_prompts_free(p);
    txt_cache_close(cache);
    return 0;
}

static int test_zeroshot_scoring(void)
{
    char why[512] = "";
    zs_list *l = NULL;
    CHECK_EQ_INT(zs_list_load(root_path("etc/findings.conf"), &l, why, sizeof why), 0);
    txt_encoder *enc = open_glove();
    CHECK(enc);
    int d = txt_dim(enc);
    /* Without a projection (E = the encoder's dimension) and with one. */
    mdl_model *m0 = tiny_model(d, 0, txt_identity(enc));
    mdl_model *m1 = tiny_model(16, d, txt_identity(enc));
    CHECK(m0 && m1);
    CHECK_EQ_INT(check_scoring(m0, enc, l), 0);
    CHECK_EQ_INT(check_scoring(m1, enc, l), 0);
    /* A model whose text side does not take the encoder's vectors. */
    mdl_model *m2 = tiny_model(16, 0, NULL);
    zs_prompts *p = NULL;
    CHECK_EQ_INT(zs_prompts_build(l, m2, enc, NULL, ZS_TEXT_TRAIN, 0, &p, why, sizeof why),
                 CTG_EINVAL);
    CHECK(strstr(why, "dimensions") && !p);
    /* train and heldout phrasings give different prompts. */
    zs_prompts *pt = NULL, *ph = NULL;
    CHECK_EQ_INT(zs_prompts_build(l, m0, enc, NULL, ZS_TEXT_TRAIN, 0, &pt, why, sizeof why), 0);
    CHECK_EQ_INT(zs_prompts_build(l, m0, enc, NULL, ZS_TEXT_HELDOUT, 0, &ph, why, sizeof why), 0);
    int hc = zs_list_find(l, "hepatic_cyst");
    CHECK(memcmp(zs_finding_vec(pt, hc, 1, 1), zs_finding_vec(ph, hc, 1, 1), sizeof(float) * d));
    CHECK(!memcmp(zs_organ_vec(pt, 2), zs_organ_vec(ph, 2), sizeof(float) * d));
    zs_prompts_free(pt);
    zs_prompts_free(ph);
    mdl_free(m0);
    mdl_free(m1);
    mdl_free(m2);
    txt_close(enc);
    zs_list_free(l);
    return 0;
}

/* ---- end to end ----------------------------------------------------------------------- */

static double num_at(const cJSON *j, const char *a, const char *b)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, a);
    if (b) x = cJSON_GetObjectItemCaseSensitive(x, b);
    return cJSON_IsNumber(x) ? x->valuedouble : NAN;
}

static int in01(double v) { return v >= 0 && v <= 1; }

static int test_eval_end_to_end(void)
{
    CHECK_EQ_INT(tu_phantom("--seed", "3", "--count", "2", "--out", "p", "--matrix", "48",
                            "--thickness", "8", "--fov", "abdomen", "--no-dicom", "--nifti",
                            "--abnormal-rate", "1", NULL),
                 0);
    txt_encoder *enc = open_glove();
    CHECK(enc);
    mdl_model *m = tiny_model(txt_dim(enc), 0, txt_identity(enc));
    CHECK(m);
    char why[256] = "";
    CHECK_EQ_INT(mdl_save(m, "m.ctglip", why, sizeof why), 0);
    mdl_init_params(m, 99); /* a second, different model for another row */
    CHECK_EQ_INT(mdl_save(m, "m2.ctglip", why, sizeof why), 0);
    mdl_free(m);
    txt_close(enc);

    char findings[4096], vocab[4096];
    snprintf(findings, sizeof findings, "%s", root_path("etc/findings.conf"));
    snprintf(vocab, sizeof vocab, "%s", root_path(TXT_GLOVE_DEFAULT));
    char *argv[] = {"eval", "--model", "m.ctglip", "--data", "p/manifest.jsonl", "--out",
                    "r.json", "--findings", findings, "--vocab", vocab, "--spacing", "6",
                    "--threads", "1", "--table", "t.md", "--rows",
                    "vanilla CLIP=m2.ctglip,+AT=m.ctglip,+AT+OT=m2.ctglip,"
                    "+AT+OT+dictionary=m.ctglip",
                    NULL};
    CHECK_EQ_INT(trn_eval_main((int)(sizeof argv / sizeof argv[0]) - 1, argv), 0);

    char *text = tu_slurp("r.json", NULL);
    CHECK(text);
    cJSON *j = cJSON_Parse(text);
    free(text);
    CHECK(j);
    CHECK_EQ_INT((int)num_at(j, "cases", NULL), 2);
    double top1 = num_at(j, "organ_top1", NULL);
    double auc = num_at(j, "abnormality", "macro_auc");
    double f1 = num_at(j, "abnormality", "macro_f1");
    double dice = num_at(j, "seg", "mean_dice");
    CHECK(in01(top1));
    /* AUC and F1 may be null only when no finding could be measured. */
    const cJSON *ab = cJSON_GetObjectItemCaseSensitive(j, "abnormality");
    CHECK(cJSON_GetObjectItemCaseSensitive(ab, "macro_auc"));
    CHECK(in01(auc) || cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(ab, "macro_auc")));
    CHECK(in01(f1) || cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(ab, "macro_f1")));
    CHECK(in01(dice));

    /* The counts: organs = classes present in each case's ground truth,
     * recounted here from the label maps on the same grid. */
    td_manifest *man = NULL;
    CHECK_EQ_INT(td_manifest_load("p/manifest.jsonl", &man, why, sizeof why), 0);
    int ids[TINY_K];
    for (int i = 0; i < TINY_K; i++) ids[i] = ctg_organ_id(tiny_organs[i]);
    td_opts o;
    td_opts_default(&o);
    o.classes = ids;
    o.nclasses = TINY_K;
    o.spacing[0] = o.spacing[1] = o.spacing[2] = 6;
    long organs = 0, present[TINY_K + 1] = {0};
    for (int i = 0; i < man->n; i++) {
        td_case cs;
        CHECK_EQ_INT(td_case_load(man, i, &o, &cs, why, sizeof why), 0);
        int seen[TINY_K + 1] = {0};
        const uint8_t *lab = cs.lab->data;
        for (size_t v = 0; v < ctg_vol_count(cs.lab); v++)
            if (lab[v] >= 1 && lab[v] <= TINY_K) seen[lab[v]] = 1;
        for (int c = 1; c <= TINY_K; c++) organs += seen[c], present[c] += seen[c];
        td_case_clear(&cs);
    }
    td_manifest_free(man);
    CHECK(organs >= 10);
    CHECK_EQ_INT((long)num_at(j, "counts", "organs"), organs);
    double seg = num_at(j, "counts", "organs_segmented"), ok = num_at(j, "counts", "organs_correct");
    CHECK(seg >= 0 && seg <= organs && ok >= 0 && ok <= seg);
    CHECK(fabs(top1 - ok / organs) < 1e-9);
    const cJSON *po = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "seg"),
                                                       "per_organ");
    CHECK_EQ_INT(cJSON_GetArraySize(po), TINY_K);
    for (int c = 1; c <= TINY_K; c++) {
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(po, tiny_organs[c - 1]);
        CHECK(x);
        CHECK_EQ_INT((long)num_at(x, "present", NULL), present[c]);
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(x, "dice");
        CHECK(cJSON_IsNull(d) || in01(d->valuedouble));
    }
    /* Every scored (organ, finding) pair is in exactly one finding's n; the
     * number scored plus the unscored is the number of applicable pairs. */
    const cJSON *fs = cJSON_GetObjectItemCaseSensitive(ab, "findings");
    CHECK_EQ_INT(cJSON_GetArraySize(fs), PH_A_COUNT);
    double sum_n = 0, sum_un = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, fs)
    {
        sum_n += num_at(x, "n", NULL);
        sum_un += num_at(x, "unscored", NULL);
        double tp = num_at(x, "tp", NULL), fp = num_at(x, "fp", NULL);
        double fn = num_at(x, "fn", NULL), tn = num_at(x, "tn", NULL);
        CHECK_EQ_INT((long)(tp + fp + fn + tn), (long)num_at(x, "n", NULL));
        CHECK_EQ_INT((long)(tp + fn), (long)num_at(x, "positives", NULL));
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(x, "auc");
        CHECK(cJSON_IsNull(a) || in01(a->valuedouble));
    }
    CHECK_EQ_INT((long)sum_n, (long)num_at(j, "abnormality", "scored"));
    /* Per class, the findings of the list that apply to the tiny model's
     * organs: liver 4, spleen 2, each kidney 3, pancreas 1, aorta 2,
     * gallbladder 1, stomach 0. */
    static const int napp[TINY_K + 1] = {0, 4, 2, 3, 3, 1, 2, 1, 0};
    long want = 0;
    for (int c = 1; c <= TINY_K; c++) want += present[c] * napp[c];
    CHECK_EQ_INT((long)(sum_n + sum_un), want);

    const cJSON *tb = cJSON_GetObjectItemCaseSensitive(j, "table");
    CHECK_EQ_INT(cJSON_GetArraySize(tb), 4);
    /* Rows 2 and 4 are the --model file, so they must agree with the top. */
    CHECK(fabs(num_at(cJSON_GetArrayItem(tb, 3), "organ_top1", NULL) - top1) < 1e-12);
    cJSON_Delete(j);

    char *md = tu_slurp("t.md", NULL);
    CHECK(md);
    CHECK(strstr(md, "| Method | Organ top-1 | Macro AUC | Macro F1 | Mean Dice |"));
    CHECK(strstr(md, "\n| vanilla CLIP |"));
    CHECK(strstr(md, "\n| +AT |"));
    CHECK(strstr(md, "\n| +AT+OT |"));
    CHECK(strstr(md, "\n| +AT+OT+dictionary |"));
    int rows = 0; /* the header line and the four rows */
    for (const char *p = md; (p = strstr(p, "\n| ")); p++) rows++;
    CHECK_EQ_INT(rows, 5);
    free(md);

    /* Usage errors. */
    char *bad[] = {"eval", "--model", "m.ctglip", NULL};
    CHECK_EQ_INT(trn_eval_main(3, bad), 2);
    char *bad2[] = {"eval", "--model", "m.ctglip", "--data", "p/manifest.jsonl", "--out", "x.json",
                    "--text", "nope", NULL};
    CHECK_EQ_INT(trn_eval_main(9, bad2), 2);
    return 0;
}

/* The JSON report's object for one finding. */
static const cJSON *finding_json(const cJSON *j, const char *key)
{
    const cJSON *ab = cJSON_GetObjectItemCaseSensitive(j, "abnormality");
    return cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(ab, "findings"), key);
}

static cJSON *load_json(const char *path)
{
    char *text = tu_slurp(path, NULL);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    free(text);
    return j;
}

/* ctglip-train calibrate: per-finding F1-optimal thresholds stored in the
 * model, used by eval (and so by the daemon's scorer), never worse in F1
 * than the default threshold on the data they were fitted on; a threshold
 * in the findings list still wins; the training spacing stored in the
 * model is the default grid. */
static int test_calibrate(void)
{
    CHECK_EQ_INT(tu_phantom("--seed", "5", "--count", "3", "--out", "p", "--matrix", "48",
                            "--thickness", "8", "--fov", "abdomen", "--no-dicom", "--nifti",
                            "--abnormal-rate", "1", NULL),
                 0);
    txt_encoder *enc = open_glove();
    CHECK(enc);
    mdl_model *m = tiny_model(txt_dim(enc), 0, txt_identity(enc));
    CHECK(m);
    txt_close(enc);
    float sp[3] = {6, 6, 6};
    mdl_set_spacing(m, sp);
    char why[256] = "";
    CHECK_EQ_INT(mdl_save(m, "m.ctglip", why, sizeof why), 0);
    mdl_free(m);

    char findings[4096], vocab[4096];
    snprintf(findings, sizeof findings, "%s", root_path("etc/findings.conf"));
    snprintf(vocab, sizeof vocab, "%s", root_path(TXT_GLOVE_DEFAULT));
    char *cal[] = {"calibrate", "--model", "m.ctglip", "--data", "p/manifest.jsonl", "--out",
                   "mc.ctglip", "--findings", findings, "--vocab", vocab, "--threads", "1",
                   "--min-positives", "1", NULL};
    CHECK_EQ_INT(trn_calibrate_main((int)(sizeof cal / sizeof cal[0]) - 1, cal), 0);
    mdl_model *mc = NULL;
    CHECK_EQ_INT(mdl_load("mc.ctglip", &mc, why, sizeof why), 0);
    CHECK(mdl_meta_get(mc, ZS_META_POOLED));
    CHECK(strcmp(mdl_meta_get(mc, "calibration.cases"), "3") == 0);
    CHECK(strcmp(mdl_meta_get(mc, "calibration.text"), "train") == 0);
    CHECK(mc->spacing[0] == 6 && mc->spacing[2] == 6);

    char *ev[] = {"eval", "--model", "m.ctglip", "--data", "p/manifest.jsonl", "--out", "r0.json",
                  "--findings", findings, "--vocab", vocab, "--threads", "1", NULL};
    CHECK_EQ_INT(trn_eval_main((int)(sizeof ev / sizeof ev[0]) - 1, ev), 0);
    ev[2] = "mc.ctglip";
    ev[6] = "r1.json";
    CHECK_EQ_INT(trn_eval_main((int)(sizeof ev / sizeof ev[0]) - 1, ev), 0);
    cJSON *j0 = load_json("r0.json"), *j1 = load_json("r1.json");
    CHECK(j0 && j1);
    /* The grid came from the model. */
    const cJSON *spj = cJSON_GetObjectItemCaseSensitive(j1, "spacing_mm");
    CHECK(cJSON_GetArraySize(spj) == 3 && cJSON_GetArrayItem(spj, 1)->valuedouble == 6);

    zs_list *l = NULL;
    CHECK_EQ_INT(zs_list_load(findings, &l, why, sizeof why), 0);
    int own = 0;
    for (int f = 0; f < l->n; f++) {
        const cJSON *a = finding_json(j0, l->f[f].key), *b = finding_json(j1, l->f[f].key);
        CHECK(a && b);
        char key[128];
        snprintf(key, sizeof key, "threshold.%s", l->f[f].key);
        const char *mv = mdl_meta_get(mc, key);
        double n = num_at(b, "n", NULL), pos = num_at(b, "positives", NULL);
        const char *src = cJSON_GetObjectItemCaseSensitive(b, "threshold_source")->valuestring;
        CHECK(strcmp(cJSON_GetObjectItemCaseSensitive(a, "threshold_source")->valuestring,
                     "default") == 0);
        CHECK(num_at(a, "threshold", NULL) == 0.5);
        if (pos >= 1 && pos < n) {
            /* Its own threshold, at least as good as 0.5 on this data. */
            CHECK(mv);
            CHECK(strcmp(src, "model") == 0);
            CHECK(fabs(num_at(b, "threshold", NULL) - strtod(mv, NULL)) < 1e-6);
            const cJSON *fa = cJSON_GetObjectItemCaseSensitive(a, "f1");
            double f1b = num_at(b, "f1", NULL);
            CHECK(in01(f1b));
            if (!cJSON_IsNull(fa)) CHECK(f1b >= fa->valuedouble - 1e-12);
            own++;
        } else {
            CHECK(!mv);
            if (n) CHECK(strcmp(src, "model") == 0); /* the pooled one */
        }
    }
    CHECK(own >= 2);
    cJSON_Delete(j0);
    cJSON_Delete(j1);

    /* A threshold in the findings list wins over the model's. */
    size_t len = 0;
    char *tsv = tu_slurp(findings, &len);
    CHECK(tsv);
    FILE *fo = fopen("f.tsv", "w");
    CHECK(fo);
    for (char *line = tsv, *nl; *line; line = nl + 1) {
        nl = strchr(line, '\n');
        CHECK(nl);
        *nl = 0;
        if (!strncmp(line, "hepatic_cyst\t", 13)) fprintf(fo, "%s\t0.3125\n", line);
        else fprintf(fo, "%s\n", line);
    }
    CHECK(fclose(fo) == 0);
    free(tsv);
    ev[8] = "f.tsv";
    ev[6] = "r2.json";
    CHECK_EQ_INT(trn_eval_main((int)(sizeof ev / sizeof ev[0]) - 1, ev), 0);
    cJSON *j2 = load_json("r2.json");
    CHECK(j2);
    const cJSON *hc = finding_json(j2, "hepatic_cyst");
    CHECK(strcmp(cJSON_GetObjectItemCaseSensitive(hc, "threshold_source")->valuestring,
                 "findings list") == 0);
    CHECK(num_at(hc, "threshold", NULL) == 0.3125);
    cJSON_Delete(j2);

    /* Usage and data errors. */
    char *bad[] = {"calibrate", "--model", "m.ctglip", "--data", "p/manifest.jsonl", NULL};
    CHECK_EQ_INT(trn_calibrate_main(5, bad), 2);
    char *bad2[] = {"calibrate", "--model", "m.ctglip", "--data", "p/manifest.jsonl", "--out",
                    "x.ctglip", "--threshold", "0.5", NULL};
    CHECK_EQ_INT(trn_calibrate_main(9, bad2), 2);
    zs_list_free(l);
    mdl_free(mc);
    return 0;
}

const test_case eval_tests[] = {
    {"eval_list_covers_phantom", test_list_covers_phantom},
    {"eval_list_bad_lines", test_list_bad_lines},
    {"eval_zeroshot_scoring", test_zeroshot_scoring},
    {"eval_end_to_end", test_eval_end_to_end},
    {"eval_calibrate", test_calibrate},
    {NULL, NULL},
};
