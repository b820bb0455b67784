/*
 * test_analysis.c - study analysis (core/analysis.h): the measures on the
 * source grid, the organ check and finding scores agree with what they
 * are computed from; the findings list reloads under running results; bad
 * input is refused with a reason.  A tiny untrained model is enough: these
 * tests check the plumbing, not the model's skill (test_train.c and
 * `make model` measure that).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/analysis.h"
#include "core/core.h"
#include "core/model.h"
#include "core/text.h"
#include "daemon/daemon.h"
#include "dicom/dicom.h"
#include "tests.h"
#include "tools/tools.h"

/* A phantom CT volume (NIfTI) and a saved tiny model trained at 6 mm. */
static int setup(ctg_vol **ct)
{
    if (tu_phantom("--seed", "11", "--count", "1", "--out", "p", "--matrix", "48", "--thickness",
                   "6", "--fov", "abdomen", "--no-dicom", "--nifti", "--abnormal-rate", "1",
                   NULL) != 0)
        return -1;
    char why[256] = "";
    if (tu_tiny_model_save("m.ctglip") < 0) return -1;
    if (ctg_nifti_read("p/case_0000/ct.nii.gz", CTG_F32, ct, why, sizeof why) < 0 ||
        ctg_vol_canonical(*ct) < 0) {
        fprintf(stderr, "phantom CT: %s\n", why);
        return -1;
    }
    return 0;
}

static an_opts opts(void)
{
    static char f[4096], v[4096];
    snprintf(f, sizeof f, "%s", tu_root_path("etc/findings.conf"));
    snprintf(v, sizeof v, "%s", tu_root_path(TXT_GLOVE_DEFAULT));
    an_opts o = {.model = "m.ctglip", .vocab = v, .findings = f, .text = -1, .overlap = 0.25f};
    return o;
}

static int test_measures(void)
{
    ctg_vol *ct = NULL;
    CHECK(setup(&ct) == 0);
    an_opts o = opts();
    an_engine *e = NULL;
    char why[512] = "";
    CHECK_EQ_INT(an_engine_open(&o, &e, why, sizeof why), 0);
    an_result r;
    CHECK_EQ_INT(an_run(e, NULL, ct, &r, why, sizeof why), 0);
    CHECK(r.labels && ctg_vol_same_grid(r.labels, ct, 1e-6));
    CHECK(r.spacing[0] == 6 && r.grid[0] > 0);
    CHECK(strcmp(r.identity, an_model_identity(e)) == 0 && strlen(r.identity) == 64);
    CHECK(r.norgans >= 1);
    double sp[3];
    ctg_vol_spacing(ct, sp);
    double vml = sp[0] * sp[1] * sp[2] / 1000;
    const uint8_t *lab = r.labels->data;
    const float *hu = ct->data;
    size_t nv = ctg_vol_count(ct);
    int seen[256] = {0};
    for (int i = 0; i < r.norgans; i++) {
        const an_organ *og = &r.organs[i];
        CHECK(og->organ && og->organ->id == og->id);
        CHECK(!seen[og->id]);
        seen[og->id] = 1;
        /* Volume and mean HU, recounted from the label map on the source grid. */
        int64_t cnt = 0;
        double sum = 0;
        for (size_t v = 0; v < nv; v++)
            if (lab[v] == og->id) cnt++, sum += hu[v];
        CHECK_EQ_INT(cnt, og->voxels);
        CHECK(fabs(og->volume_ml - cnt * vml) < 1e-6 * (1 + og->volume_ml));
        CHECK(og->volume_ml >= 1.0);
        CHECK(fabs(og->mean_hu - sum / cnt) < 1e-3);
        CHECK_EQ_INT(og->low_confidence, og->top1_id != og->id);
        CHECK(og->cos_top1 >= og->cos_own - 1e-6f);
        /* The findings that apply to this organ, each decided at its
         * threshold. */
        int want = 0;
        for (int f = 0; f < r.list->n; f++)
            for (int j = 0; j < r.list->f[f].norgans; j++) want += r.list->f[f].organ_ids[j] == og->id;
        CHECK_EQ_INT(og->nfindings, want);
        for (int j = 0; j < og->nfindings; j++) {
            const an_finding *a = &og->findings[j];
            CHECK(a->f == &r.list->f[a->index]);
            CHECK(a->prob >= 0 && a->prob <= 1);
            CHECK_EQ_INT(a->present, a->prob >= a->threshold);
            float p = 1.0f / (1.0f + expf((a->cos_neg - a->cos_pos) / ZS_TAU));
            CHECK(fabsf(p - a->prob) < 1e-4f);
            CHECK(a->threshold_source == ZS_THR_DEFAULT && a->threshold == 0.5f);
        }
    }
    /* Every labelled voxel belongs to a reported organ or to one below the
     * size floor. */
    for (size_t v = 0; v < nv; v++)
        if (lab[v] && !seen[lab[v]]) {
            int64_t cnt = 0;
            for (size_t u = 0; u < nv; u++) cnt += lab[u] == lab[v];
            CHECK(cnt * vml < 1.0);
            break;
        }
    printf("%d organs; %.2f s model, %.3f s scoring\n", r.norgans, r.t_model, r.t_score);
    /* A second run with an explicit context gives the same answer. */
    an_ctx *c = NULL;
    CHECK_EQ_INT(an_ctx_new(e, &c), 0);
    an_result r2;
    CHECK_EQ_INT(an_run(e, c, ct, &r2, why, sizeof why), 0);
    CHECK_EQ_INT(r2.norgans, r.norgans);
    CHECK(memcmp(r2.labels->data, r.labels->data, nv) == 0);
    for (int i = 0; i < r.norgans; i++) {
        CHECK_EQ_INT(r2.organs[i].nfindings, r.organs[i].nfindings);
        for (int j = 0; j < r.organs[i].nfindings; j++)
            CHECK(r2.organs[i].findings[j].prob == r.organs[i].findings[j].prob);
    }
    an_result_free(&r2);
    an_ctx_free(c);
    an_result_free(&r);
    an_engine_close(e);
    ctg_vol_free(ct);
    return 0;
}

/* Writes the findings list without its first finding. */
static int write_shorter_list(const char *src, const char *dst)
{
    char *t = tu_slurp(src, NULL);
    if (!t) return -1;
    FILE *f = fopen(dst, "w");
    if (!f) return -1;
    int dropped = 0;
    for (char *line = t, *nl; *line; line = nl + 1) {
        nl = strchr(line, '\n');
        if (!nl) break;
        *nl = 0;
        if (!dropped && line[0] && line[0] != '#') {
            dropped = 1;
            continue;
        }
        fprintf(f, "%s\n", line);
    }
    free(t);
    return fclose(f) == 0 && dropped ? 0 : -1;
}

static int test_reload(void)
{
    ctg_vol *ct = NULL;
    CHECK(setup(&ct) == 0);
    an_opts o = opts();
    an_engine *e = NULL;
    char why[512] = "";
    CHECK_EQ_INT(an_engine_open(&o, &e, why, sizeof why), 0);
    an_result r1;
    CHECK_EQ_INT(an_run(e, NULL, ct, &r1, why, sizeof why), 0);
    int n1 = r1.list->n;
    CHECK(write_shorter_list(o.findings, "short.conf") == 0);
    CHECK_EQ_INT(an_reload_findings(e, "short.conf", -1, why, sizeof why), 0);
    /* The earlier result still holds its own list. */
    CHECK_EQ_INT(r1.list->n, n1);
    CHECK(r1.organs[0].nfindings == 0 || r1.organs[0].findings[0].f->key[0]);
    an_result r2;
    CHECK_EQ_INT(an_run(e, NULL, ct, &r2, why, sizeof why), 0);
    CHECK_EQ_INT(r2.list->n, n1 - 1);
    /* A broken list is refused with its line, and the current one stays. */
    FILE *f = fopen("bad.conf", "w");
    CHECK(f);
    fputs("bad_key\tno_such_organ\ta {organ}\t\t\t\t\n", f);
    fclose(f);
    CHECK(an_reload_findings(e, "bad.conf", -1, why, sizeof why) < 0);
    CHECK(strstr(why, "bad.conf:1"));
    an_result r3;
    CHECK_EQ_INT(an_run(e, NULL, ct, &r3, why, sizeof why), 0);
    CHECK_EQ_INT(r3.list->n, n1 - 1);
    /* Results may outlive the engine. */
    an_engine_close(e);
    CHECK_EQ_INT(r1.list->n, n1);
    an_result_free(&r1);
    an_result_free(&r2);
    an_result_free(&r3);
    ctg_vol_free(ct);
    return 0;
}

static int test_bad_input(void)
{
    ctg_vol *ct = NULL;
    CHECK(setup(&ct) == 0);
    an_opts o = opts();
    an_engine *e = NULL;
    char why[512] = "";
    o.model = "missing.ctglip";
    CHECK(an_engine_open(&o, &e, why, sizeof why) < 0 && !e);
    CHECK(strstr(why, "missing.ctglip"));
    /* A model made for another text encoder. */
    mdl_model *m = tu_tiny_model(100, 0, "glove:somethingelse");
    CHECK(m);
    CHECK_EQ_INT(mdl_save(m, "other.ctglip", why, sizeof why), 0);
    mdl_free(m);
    o.model = "other.ctglip";
    CHECK(an_engine_open(&o, &e, why, sizeof why) == CTG_EINVAL);
    CHECK(strstr(why, "text encoder"));
    o.model = "m.ctglip";
    o.overlap = 1.0f;
    CHECK(an_engine_open(&o, &e, why, sizeof why) == CTG_EINVAL);
    o.overlap = 0.25f;
    CHECK_EQ_INT(an_engine_open(&o, &e, why, sizeof why), 0);
    ctg_vol *i16 = ctg_vol_convert(ct, CTG_I16);
    CHECK(i16);
    an_result r;
    CHECK_EQ_INT(an_run(e, NULL, i16, &r, why, sizeof why), CTG_EINVAL);
    CHECK(r.norgans == 0 && !r.labels);
    an_result_free(&r);
    ctg_vol_free(i16);
    an_engine_close(e);
    ctg_vol_free(ct);
    return 0;
}

/* The whole pipeline a job runs (ctg_analyze_study): a DICOM phantom gives
 * a SEG and an SR in the study; a second run names the first SR as its
 * predecessor; a volume of air and a study without CT fail with reasons
 * that say so (the worker turns these codes into a failed job at once). */
static int test_pipeline(void)
{
    ctg_vol *ct = NULL;
    CHECK(setup(&ct) == 0);
    ctg_vol_free(ct);
    CHECK(tu_phantom("--seed", "12", "--count", "1", "--out", "d", "--matrix", "48",
                     "--thickness", "6", "--fov", "abdomen", NULL) == 0);
    dcm_global_init();
    an_opts o = opts();
    an_engine *e = NULL;
    char why[512] = "";
    CHECK_EQ_INT(an_engine_open(&o, &e, why, sizeof why), 0);
    ctg_file_list fl = {0};
    CHECK_EQ_INT(ctg_collect_files(&fl, "d/case_0000/dicom", 0), 0);
    CHECK(fl.n > 5);
    ctg_analyze_opts ao = {.model_name = "ctglip CT-GLIP test", .dir = "r/1"};
    ctg_analysis a;
    CHECK_EQ_INT(ctg_analyze_study(e, NULL, (const char *const *)fl.v, (int)fl.n, &ao, &a, why,
                                   sizeof why),
                 0);
    CHECK_EQ_INT(a.nsrc, (int)fl.n);
    ctg_instance sr, seg, src;
    CHECK_EQ_INT(dcm_read_instance(a.rep.sr_path, &sr, why, sizeof why), 0);
    CHECK_EQ_INT(dcm_read_instance(a.rep.seg_path, &seg, why, sizeof why), 0);
    CHECK_EQ_INT(dcm_read_instance(fl.v[0], &src, why, sizeof why), 0);
    CHECK(strcmp(sr.sop_class, "1.2.840.10008.5.1.4.1.1.88.34") == 0);
    CHECK(strcmp(seg.sop_class, "1.2.840.10008.5.1.4.1.1.66.4") == 0);
    CHECK(strcmp(sr.study_uid, src.study_uid) == 0 && strcmp(seg.study_uid, src.study_uid) == 0);
    CHECK(strcmp(sr.sop_uid, a.rep.sr_uid) == 0 && strcmp(seg.sop_uid, a.rep.seg_uid) == 0);
    CHECK(strcmp(sr.series_uid, src.series_uid) != 0);
    char first_sr[65];
    snprintf(first_sr, sizeof first_sr, "%s", a.rep.sr_uid);
    ctg_analysis_free(&a);
    /* Processed again: the new SR names the first. */
    ao.dir = "r/2";
    ao.predecessor_sr = "r/1/sr.dcm";
    CHECK_EQ_INT(ctg_analyze_study(e, NULL, (const char *const *)fl.v, (int)fl.n, &ao, &a, why,
                                   sizeof why),
                 0);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "dcmdump +P PredecessorDocumentsSequence +P ReferencedSOPInstanceUID "
                              "r/2/sr.dcm | grep -c %s > pred.txt", first_sr);
    CHECK(system(cmd) == 0);
    char *cnt = tu_slurp("pred.txt", NULL);
    CHECK(cnt && atoi(cnt) >= 1);
    free(cnt);
    ctg_analysis_free(&a);

    /* Air: no organ. */
    ctg_vol *air = ctg_vol_new(40, 40, 12, CTG_F32);
    CHECK(air);
    for (size_t i = 0; i < ctg_vol_count(air); i++) ((float *)air->data)[i] = -1000;
    air->aff[0][0] = air->aff[1][1] = 8;
    air->aff[2][2] = 10;
    dcm_ct_meta m;
    memset(&m, 0, sizeof m);
    m.patient_name = "Air^Only";
    m.patient_id = "AIR1";
    m.patient_position = "HFS";
    m.series_number = 1;
    m.pixel_signed = 1;
    CHECK_EQ_INT(dcm_write_ct_series("air", air, &m, why, sizeof why), 0);
    ctg_vol_free(air);
    ctg_file_list al = {0};
    CHECK_EQ_INT(ctg_collect_files(&al, "air", 0), 0);
    ao.dir = "r/3";
    ao.predecessor_sr = NULL;
    /* The untrained test model paints organs into anything; the shipped
     * one knows air. */
    an_engine_close(e);
    char mp[4096];
    snprintf(mp, sizeof mp, "%s", tu_root_path("models/default.ctglip"));
    o.model = mp;
    CHECK_EQ_INT(an_engine_open(&o, &e, why, sizeof why), 0);
    int rc = ctg_analyze_study(e, NULL, (const char *const *)al.v, (int)al.n, &ao, &a, why,
                               sizeof why);
    printf("air: %d %s\n", rc, why);
    CHECK_EQ_INT(rc, CTG_EREJECT);
    CHECK(strstr(why, "no organ"));
    /* No CT at all: the SR alone. */
    const char *only_sr[] = {"r/1/sr.dcm"};
    rc = ctg_analyze_study(e, NULL, only_sr, 1, &ao, &a, why, sizeof why);
    printf("SR only: %d %s\n", rc, why);
    CHECK(rc == CTG_EREJECT || rc == CTG_EFORMAT);
    CHECK(strstr(why, "CT"));
    ctg_file_list_free(&al);
    ctg_file_list_free(&fl);
    an_engine_close(e);
    return 0;
}

const test_case analysis_tests[] = {
    {"analysis_pipeline", test_pipeline, 240},
    {"analysis_measures", test_measures, 180},
    {"analysis_reload", test_reload, 180},
    {"analysis_bad_input", test_bad_input},
    {NULL, NULL},
};
