/*
 * test_data.c - the trainer's data layer (tools/train_data.c): manifest
 * parsing with bad lines skipped, loading cases from DICOM and NIfTI onto
 * the training grid, v1 label maps, label grids that differ from the CT's,
 * findings mapped to class indices, the case cache, and patch sampling
 * (determinism, padding, foreground bias, alignment under scaling, no
 * left-right flips).
 *
 * Volumes are tiny (phantoms at --matrix 48 --thickness 8, synthetic
 * volumes of a few thousand voxels) so that each test takes well under five
 * seconds.  Each test runs in its own empty folder (tests/runner.c).
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "core/organs.h"
#include "core/vol.h"
#include "tests.h"
#include "tools/tools.h"
#include "tools/train_data.h"

/* ---- helpers ------------------------------------------------------------------- */

/* Writes text to a file; 0 on success. */
static int write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    int ok = fputs(text, f) >= 0;
    return fclose(f) == 0 && ok ? 0 : -1;
}


/* A volume with spacing sp (mm) and its first voxel centre at origin, axes
 * along LPS; the canonical orientation, so loading keeps the voxel order. */
static ctg_vol *make_vol(int nx, int ny, int nz, int dtype, const double sp[3],
                         const double origin[3])
{
    ctg_vol *v = ctg_vol_new(nx, ny, nz, dtype);
    if (!v) return NULL;
    memset(v->aff, 0, sizeof v->aff);
    for (int a = 0; a < 3; a++) {
        v->aff[a][a] = sp[a];
        v->aff[a][3] = origin[a];
    }
    return v;
}

static int write_vol(const char *path, const ctg_vol *v)
{
    char why[256];
    int rc = ctg_nifti_write(path, v, why, sizeof why);
    if (rc < 0) fprintf(stderr, "%s\n", why);
    return rc;
}

/* Writes a synthetic case: CT = 100 * label + base HU, labels given by fn,
 * on a grid of nx*ny*nz voxels of 1.5 mm. */
static int write_case(const char *ct, const char *lab, int nx, int ny, int nz,
                      int (*fn)(int, int, int), float base)
{
    const double sp[3] = {1.5, 1.5, 1.5}, org[3] = {-20, 30, 100};
    ctg_vol *c = make_vol(nx, ny, nz, CTG_F32, sp, org);
    ctg_vol *l = make_vol(nx, ny, nz, CTG_U8, sp, org);
    int rc = -1;
    if (!c || !l) goto done;
    for (int k = 0; k < nz; k++)
        for (int j = 0; j < ny; j++)
            for (int i = 0; i < nx; i++) {
                int L = fn(i, j, k);
                ctg_vol_set(l, i, j, k, L);
                ctg_vol_set(c, i, j, k, base + 100.0 * L);
            }
    rc = write_vol(ct, c) < 0 || write_vol(lab, l) < 0 ? -1 : 0;
done:
    ctg_vol_free(c);
    ctg_vol_free(l);
    return rc;
}

/* Three balls of v2 labels 1, 2, 3 (spleen, kidney_right, kidney_left). */
static int balls(int i, int j, int k)
{
    const int c[3][3] = {{10, 10, 10}, {26, 12, 14}, {14, 28, 22}};
    const int r2[3] = {36, 49, 25};
    for (int b = 0; b < 3; b++) {
        int dx = i - c[b][0], dy = j - c[b][1], dz = k - c[b][2];
        if (dx * dx + dy * dy + dz * dz <= r2[b]) return b + 1;
    }
    return 0;
}

static const int classes3[] = {1, 2, 3};

static void opts3(td_opts *o)
{
    td_opts_default(o);
    o->classes = classes3;
    o->nclasses = 3;
}

/* Loads case id of manifest path with opts o into *c. */
static int load_one(const char *manifest, const td_opts *o, int idx, td_case *c)
{
    char why[512];
    td_manifest *m = NULL;
    int rc = td_manifest_load(manifest, &m, why, sizeof why);
    if (rc == 0) rc = td_case_load(m, idx, o, c, why, sizeof why);
    if (rc < 0) fprintf(stderr, "load: %s\n", why);
    td_manifest_free(m);
    return rc;
}

/* ---- manifest ------------------------------------------------------------------ */

static int test_manifest(void)
{
    CHECK(ctg_mkdirs("sub/deeper") == 0);
    char *big = malloc(TD_MAX_LINE + 64);
    CHECK(big);
    memset(big, ' ', TD_MAX_LINE + 10);
    memcpy(big, "{\"id\":\"long\"", 12);
    big[TD_MAX_LINE + 10] = 0;
    FILE *f = fopen("sub/m.jsonl", "w");
    CHECK(f);
    fprintf(f, "{\"id\":\"a\",\"ct\":\"a/dicom\",\"labels\":\"a/labels.nii.gz\",\"report\":\"a/r.txt\","
               "\"findings\":[{\"organ\":\"liver\",\"abnormality\":\"hepatic_cyst\","
               "\"sentence\":\"A cyst.\"},{\"organ\":\"spleen\",\"abnormality\":\"splenomegaly\"}]}\n");
    fprintf(f, "{\"id\":\"b\",\"ct\":\"b.nii\"\n");                        /* 2: broken JSON */
    fprintf(f, "\n");                                                       /* 3: blank */
    fprintf(f, "{\"id\":\"c\",\"ct\":\"/abs/ct.nii.gz\",\"labels\":\"deeper/l.nii\","
               "\"label_version\":1}\r\n");                                 /* 4: ok, CRLF */
    fprintf(f, "{\"id\":\"d\",\"ct\":\"x.nii\"}\n");                       /* 5: no labels */
    fprintf(f, "{\"id\":\"a\",\"ct\":\"x.nii\",\"labels\":\"y.nii\"}\n");  /* 6: duplicate */
    fprintf(f, "{\"id\":\"e\",\"ct\":\"x.nii\",\"labels\":\"y.nii\",\"label_version\":3}\n");
    fprintf(f, "%s}\n", big);                                               /* 8: too long */
    fprintf(f, "{\"id\":\"f\",\"ct\":\"x.nii\",\"labels\":\"y.nii\",\"findings\":[{\"organ\":1}]}\n");
    fprintf(f, "[1,2]\n");                                                  /* 10: not an object */
    fprintf(f, "{\"id\":\"g\",\"ct\":\"g.nii\",\"labels\":\"gl.nii\",\"findings\":[]}");
    CHECK(fclose(f) == 0);
    free(big);

    char why[512], cwd[2048], want[4096];
    CHECK(getcwd(cwd, sizeof cwd) != NULL);
    td_manifest *m = NULL;
    CHECK_EQ_INT(td_manifest_load("sub/m.jsonl", &m, why, sizeof why), 0);
    CHECK_EQ_INT(m->n, 3);
    CHECK_EQ_INT(m->lines, 10);
    CHECK_EQ_INT(m->skipped, 7);
    CHECK_EQ_INT(m->nskip_log, 7);
    const int lines[7] = {2, 5, 6, 7, 8, 9, 10};
    const char *words[7] = {"not JSON", "labels", "duplicate", "label_version", "longer",
                            "organ", "object"};
    for (int k = 0; k < 7; k++) {
        CHECK_EQ_INT(m->skip_log[k].line, lines[k]);
        if (!strstr(m->skip_log[k].why, words[k])) {
            fprintf(stderr, "line %d: \"%s\" lacks \"%s\"\n", lines[k], m->skip_log[k].why,
                    words[k]);
            return 1;
        }
    }
    const td_entry *a = &m->cases[0];
    CHECK(!strcmp(a->id, "a"));
    CHECK_EQ_INT(a->line, 1);
    snprintf(want, sizeof want, "%s/sub/a/dicom", cwd);
    CHECK(!strcmp(a->ct, want));
    snprintf(want, sizeof want, "%s/sub/a/r.txt", cwd);
    CHECK(a->report && !strcmp(a->report, want));
    CHECK(a->lesions == NULL);
    CHECK_EQ_INT(a->label_version, 0);
    CHECK_EQ_INT(a->nfindings, 2);
    CHECK(!strcmp(a->findings[0].organ, "liver"));
    CHECK(!strcmp(a->findings[0].abnormality, "hepatic_cyst"));
    CHECK(!strcmp(a->findings[0].sentence, "A cyst."));
    CHECK(!strcmp(a->findings[1].sentence, ""));
    const td_entry *c = &m->cases[1];
    CHECK(!strcmp(c->ct, "/abs/ct.nii.gz"));
    snprintf(want, sizeof want, "%s/sub/deeper/l.nii", cwd);
    CHECK(!strcmp(c->labels, want));
    CHECK_EQ_INT(c->label_version, 1);
    CHECK_EQ_INT(c->line, 4);
    CHECK_EQ_INT(td_manifest_find(m, "g"), 2);
    CHECK_EQ_INT(m->cases[2].line, 11);
    CHECK_EQ_INT(td_manifest_find(m, "b"), -1);
    td_manifest_free(m);

    /* Nothing usable, or no file at all: errors with a reason. */
    CHECK(write_text("bad.jsonl", "garbage\n{}\n") == 0);
    CHECK_EQ_INT(td_manifest_load("bad.jsonl", &m, why, sizeof why), CTG_EFORMAT);
    CHECK(m == NULL && strstr(why, "no usable case"));
    CHECK_EQ_INT(td_manifest_load("missing.jsonl", &m, why, sizeof why), CTG_ENOENT);
    CHECK(strstr(why, "missing.jsonl") != NULL);
    td_manifest_free(NULL);
    return 0;
}

/* ---- loading ------------------------------------------------------------------- */

/* The same phantom read from its DICOM series and from ct.nii.gz gives the
 * same volume on the training grid; labels and findings come along. */
static int test_dicom_nifti_same(void)
{
    CHECK_EQ_INT(tu_phantom("--seed", "5", "--count", "1", "--out", "p", "--matrix", "48",
                         "--thickness", "8", "--fov", "abdomen", "--nifti", "--abnormal",
                         "renal_cyst,hepatic_cyst", NULL),
                 0);
    CHECK(write_text("p/m.jsonl",
                     "{\"id\":\"dcm\",\"ct\":\"case_0000/dicom\",\"labels\":\"case_0000/labels.nii.gz\","
                     "\"findings\":[{\"organ\":\"liver\",\"abnormality\":\"hepatic_cyst\",\"sentence\":"
                     "\"A liver cyst.\"},{\"organ\":\"brain\",\"abnormality\":\"mass\"},"
                     "{\"organ\":\"unicorn_gland\",\"abnormality\":\"x\"},"
                     "{\"organ\":\"kidney_left\",\"abnormality\":\"renal_cyst\"}],"
                     "\"report\":\"case_0000/report.txt\"}\n"
                     "{\"id\":\"nii\",\"ct\":\"case_0000/ct.nii.gz\",\"labels\":\"case_0000/labels.nii.gz\"}\n") == 0);
    const int classes[] = {ctg_organ_id("liver"), ctg_organ_id("kidney_left"),
                           ctg_organ_id("kidney_right"), ctg_organ_id("spleen")};
    td_opts o;
    td_opts_default(&o);
    o.classes = classes;
    o.nclasses = 4;
    o.spacing[0] = o.spacing[1] = o.spacing[2] = 5.0;
    o.load_report = 1;
    td_case a, b;
    CHECK_EQ_INT(load_one("p/m.jsonl", &o, 0, &a), 0);
    CHECK_EQ_INT(load_one("p/m.jsonl", &o, 1, &b), 0);
    CHECK(ctg_vol_same_grid(a.ct, b.ct, 0.01));
    CHECK(ctg_vol_same_grid(a.ct, a.lab, 1e-9) && ctg_vol_same_grid(b.ct, b.lab, 1e-9));
    double sp[3];
    ctg_vol_spacing(a.ct, sp);
    for (int d = 0; d < 3; d++) CHECK(fabs(sp[d] - 5.0) < 1e-6);
    size_t nv = ctg_vol_count(a.ct);
    const float *x = a.ct->data, *y = b.ct->data;
    double worst = 0;
    for (size_t v = 0; v < nv; v++) worst = fmax(worst, fabs((double)x[v] - y[v]));
    CHECK(worst < 0.01);
    CHECK(memcmp(a.lab->data, b.lab->data, nv) == 0);
    /* Only the four classes, each present, liver the largest. */
    size_t count[256] = {0};
    const uint8_t *l = a.lab->data;
    for (size_t v = 0; v < nv; v++) count[l[v]]++;
    for (int k = 5; k < 256; k++) CHECK_EQ_INT(count[k], 0);
    for (int k = 1; k <= 4; k++) CHECK(count[k] > 0);
    CHECK(count[1] > count[2] && count[1] > count[4]);
    /* The foreground index lists every labelled voxel under its class. */
    CHECK_EQ_INT(a.fg_start[5] - a.fg_start[1], nv - count[0]);
    for (int k = 1; k <= 4; k++) {
        CHECK_EQ_INT(a.fg_start[k + 1] - a.fg_start[k], count[k]);
        for (size_t q = a.fg_start[k]; q < a.fg_start[k + 1]; q++) CHECK_EQ_INT(l[a.fg[q]], k);
    }
    /* Liver voxels are soft tissue in HU. */
    double mean = 0;
    for (size_t v = 0; v < nv; v++)
        if (l[v] == 1) mean += x[v];
    mean /= (double)count[1];
    CHECK(mean > 0 && mean < 200);
    /* Findings: brain (not a class) and unicorn_gland (unknown) dropped. */
    CHECK_EQ_INT(a.nfindings, 2);
    CHECK_EQ_INT(a.dropped, 2);
    CHECK(!strcmp(a.findings[0].organ, "liver") && a.findings[0].cls == 1);
    CHECK_EQ_INT(a.findings[0].organ_id, ctg_organ_id("liver"));
    CHECK(!strcmp(a.findings[0].sentence, "A liver cyst."));
    CHECK(!strcmp(a.findings[1].abnormality, "renal_cyst") && a.findings[1].cls == 2);
    CHECK(a.report && strstr(a.report, "FINDINGS"));
    CHECK(b.report == NULL && b.nfindings == 0 && b.dropped == 0);
    td_case_clear(&a);
    td_case_clear(&b);
    td_case_clear(&a); /* cleared twice: no-op */
    return 0;
}

/* v1 ids are mapped to v2 by name, then to classes: v1 7 is aorta (v2 52),
 * v1 10 pancreas (v2 7), v1 44 heart_myocardium (not in v2). */
static int test_v1_labels(void)
{
    const double sp[3] = {2, 2, 2}, org[3] = {0, 0, 0};
    ctg_vol *ct = make_vol(8, 6, 4, CTG_F32, sp, org), *lab = make_vol(8, 6, 4, CTG_U8, sp, org);
    CHECK(ct && lab);
    const int v1ids[4] = {7, 10, 5, 44};
    for (int k = 0; k < 4; k++)
        for (int j = 0; j < 6; j++)
            for (int i = 0; i < 8; i++) ctg_vol_set(lab, i, j, k, i < 4 ? v1ids[k] : 0);
    CHECK(write_vol("ct.nii.gz", ct) == 0 && write_vol("v1.nii.gz", lab) == 0);
    ctg_vol_free(ct);
    ctg_vol_free(lab);
    CHECK_EQ_INT(ctg_organ_id(ctg_organs_v1_names[7]), 52);
    CHECK_EQ_INT(ctg_organ_id(ctg_organs_v1_names[10]), 7);
    CHECK_EQ_INT(ctg_organ_id(ctg_organs_v1_names[44]), -1);
    CHECK(write_text("m.jsonl",
                     "{\"id\":\"one\",\"ct\":\"ct.nii.gz\",\"labels\":\"v1.nii.gz\",\"label_version\":1}\n"
                     "{\"id\":\"two\",\"ct\":\"ct.nii.gz\",\"labels\":\"v1.nii.gz\"}\n"
                     "{\"id\":\"three\",\"ct\":\"ct.nii.gz\",\"labels\":\"v1.nii.gz\",\"label_version\":2}\n") == 0);
    const int classes[] = {ctg_organ_id("aorta"), ctg_organ_id("pancreas"), ctg_organ_id("liver")};
    td_opts o;
    td_opts_default(&o);
    o.classes = classes;
    o.nclasses = 3;
    /* Expected class per slice k (voxels with i < 4). */
    const int want_v1[4] = {1, 2, 3, 0};
    const int want_v2[4] = {2, 0, 3, 0}; /* v2: 7 pancreas, 10 a lung lobe, 5 liver, 44 a rib */
    for (int pass = 0; pass < 4; pass++) {
        /* 0: the line says v1; 1: no version, default v2; 2: no version,
         * option says v1; 3: the line's v2 beats the option's v1. */
        int idx = pass == 0 ? 0 : pass == 3 ? 2 : 1;
        o.label_version = pass >= 2 ? 1 : 2;
        td_case c;
        CHECK_EQ_INT(load_one("m.jsonl", &o, idx, &c), 0);
        const int *want = pass == 0 || pass == 2 ? want_v1 : want_v2;
        for (int k = 0; k < 4; k++)
            for (int j = 0; j < 6; j++)
                for (int i = 0; i < 8; i++)
                    CHECK_EQ_INT(ctg_vol_get(c.lab, i, j, k), i < 4 ? want[k] : 0);
        td_case_clear(&c);
    }
    return 0;
}

/* A label map on another grid is resampled onto the CT's; one that lies
 * elsewhere is rejected with a reason. */
static int test_label_grid(void)
{
    CHECK(write_case("ct.nii.gz", "lab.nii.gz", 32, 32, 32, balls, 0.0f) == 0);
    /* The same labels at 3 mm (half the resolution, same extent). */
    td_opts o;
    opts3(&o);
    CHECK(write_text("m.jsonl", "{\"id\":\"x\",\"ct\":\"ct.nii.gz\",\"labels\":\"lab.nii.gz\"}\n") == 0);
    td_case ref;
    CHECK_EQ_INT(load_one("m.jsonl", &o, 0, &ref), 0);
    ctg_vol *coarse = NULL, *far = NULL;
    const double sp3[3] = {3, 3, 3};
    CHECK_EQ_INT(ctg_vol_resample(ref.lab, sp3, CTG_NEAREST, 0, &coarse), 0);
    CHECK(write_vol("coarse.nii.gz", coarse) == 0);
    far = ctg_vol_clone(coarse);
    CHECK(far);
    far->aff[2][3] += 500.0; /* half a metre further up */
    CHECK(write_vol("far.nii.gz", far) == 0);
    CHECK(write_text("m2.jsonl", "{\"id\":\"c\",\"ct\":\"ct.nii.gz\",\"labels\":\"coarse.nii.gz\"}\n"
                                 "{\"id\":\"f\",\"ct\":\"ct.nii.gz\",\"labels\":\"far.nii.gz\"}\n"
                                 "{\"id\":\"n\",\"ct\":\"nothere.nii.gz\",\"labels\":\"far.nii.gz\"}\n"
                                 "{\"id\":\"t\",\"ct\":\"m.jsonl\",\"labels\":\"far.nii.gz\"}\n") == 0);
    td_manifest *m = NULL;
    char why[512];
    CHECK_EQ_INT(td_manifest_load("m2.jsonl", &m, why, sizeof why), 0);
    td_case c;
    CHECK_EQ_INT(td_case_load(m, 0, &o, &c, why, sizeof why), 0);
    CHECK(ctg_vol_same_grid(c.lab, ref.lab, 1e-6));
    size_t nv = ctg_vol_count(c.lab), same = 0, fg = 0;
    const uint8_t *p = c.lab->data, *q = ref.lab->data;
    for (size_t v = 0; v < nv; v++) {
        same += p[v] == q[v];
        fg += q[v] != 0;
    }
    CHECK(fg > 1000);
    CHECK((double)same / nv > 0.97); /* only the balls' surfaces move */
    td_case_clear(&c);
    CHECK_EQ_INT(td_case_load(m, 1, &o, &c, why, sizeof why), CTG_EREJECT);
    CHECK(strstr(why, "do not overlap") != NULL);
    CHECK(c.ct == NULL && c.lab == NULL);
    CHECK_EQ_INT(td_case_load(m, 2, &o, &c, why, sizeof why), CTG_ENOENT);
    CHECK(strstr(why, "nothere.nii.gz") != NULL);
    CHECK_EQ_INT(td_case_load(m, 3, &o, &c, why, sizeof why), CTG_EFORMAT);
    CHECK(strstr(why, "neither") != NULL);
    CHECK_EQ_INT(td_case_load(m, 4, &o, &c, why, sizeof why), CTG_EINVAL);
    td_manifest_free(m);
    ctg_vol_free(coarse);
    ctg_vol_free(far);
    td_case_clear(&ref);
    return 0;
}

/* ---- cache ----------------------------------------------------------------------- */

static int test_cache(void)
{
    CHECK(write_case("ct.nii.gz", "lab.nii.gz", 32, 32, 32, balls, 0.0f) == 0);
    CHECK(write_text("m.jsonl", "{\"id\":\"a\",\"ct\":\"ct.nii.gz\",\"labels\":\"lab.nii.gz\"}\n"
                                "{\"id\":\"b\",\"ct\":\"ct.nii.gz\",\"labels\":\"lab.nii.gz\"}\n"
                                "{\"id\":\"c\",\"ct\":\"gone.nii.gz\",\"labels\":\"lab.nii.gz\"}\n"
                                "{\"id\":\"d\",\"ct\":\"ct.nii.gz\",\"labels\":\"lab.nii.gz\"}\n") == 0);
    td_opts o;
    opts3(&o);
    td_manifest *m = NULL;
    char why[512];
    CHECK_EQ_INT(td_manifest_load("m.jsonl", &m, why, sizeof why), 0);
    td_cache *c = NULL;
    td_cache_stats st;
    const td_case *x = NULL, *y = NULL;

    /* A roomy budget: the second get is a hit and the same case. */
    CHECK_EQ_INT(td_cache_open(m, &o, (size_t)64 << 20, &c), 0);
    CHECK_EQ_INT(td_cache_get(c, 0, &x, why, sizeof why), 0);
    CHECK(x && !strcmp(x->id, "a") && x->ct);
    td_cache_put(c, x);
    CHECK_EQ_INT(td_cache_get(c, 0, &y, why, sizeof why), 0);
    CHECK(y == x);
    td_cache_put(c, y);
    CHECK_EQ_INT(td_cache_get(c, 1, &y, why, sizeof why), 0);
    td_cache_put(c, y);
    td_cache_stats_get(c, &st);
    CHECK_EQ_INT(st.loads, 2);
    CHECK_EQ_INT(st.hits, 1);
    CHECK_EQ_INT(st.held, 2);
    CHECK_EQ_INT(st.bytes, x->bytes + y->bytes);
    CHECK(x->bytes >= 32 * 32 * 32 * 5);
    size_t one = x->bytes;
    /* A case that failed fails again at once, with the same reason. */
    CHECK_EQ_INT(td_cache_get(c, 2, &y, why, sizeof why), CTG_ENOENT);
    CHECK(strstr(why, "gone.nii.gz") && y == NULL);
    why[0] = 0;
    CHECK_EQ_INT(td_cache_get(c, 2, &y, why, sizeof why), CTG_ENOENT);
    CHECK(strstr(why, "gone.nii.gz"));
    td_cache_stats_get(c, &st);
    CHECK_EQ_INT(st.loads, 3);
    CHECK_EQ_INT(st.failed, 1);
    CHECK_EQ_INT(td_cache_get(c, 4, &y, why, sizeof why), CTG_EINVAL);
    td_cache_close(c);

    /* A budget below one case: cases in use stay, unpinned ones go. */
    CHECK_EQ_INT(td_cache_open(m, &o, 1000, &c), 0);
    CHECK_EQ_INT(td_cache_get(c, 0, &x, why, sizeof why), 0);
    CHECK_EQ_INT(td_cache_get(c, 1, &y, why, sizeof why), 0);
    td_cache_stats_get(c, &st);
    CHECK_EQ_INT(st.held, 2);
    CHECK_EQ_INT(st.evictions, 0);
    CHECK(x->ct && y->ct && ((const float *)x->ct->data)[0] == ((const float *)y->ct->data)[0]);
    td_cache_put(c, x);
    td_cache_stats_get(c, &st);
    CHECK_EQ_INT(st.held, 1);
    CHECK_EQ_INT(st.evictions, 1);
    td_cache_put(c, y);
    CHECK_EQ_INT(td_cache_get(c, 0, &x, why, sizeof why), 0);
    td_cache_stats_get(c, &st);
    CHECK_EQ_INT(st.loads, 3);
    CHECK_EQ_INT(st.hits, 0);
    CHECK_EQ_INT(st.held, 1);
    td_cache_put(c, x);
    td_cache_close(c);
    td_cache_close(NULL);

    /* Room for two cases: the least recently used one goes first. */
    CHECK_EQ_INT(td_cache_open(m, &o, 2 * one + one / 2, &c), 0);
    CHECK_EQ_INT(td_cache_get(c, 0, &x, why, sizeof why), 0);
    td_cache_put(c, x);
    CHECK_EQ_INT(td_cache_get(c, 1, &y, why, sizeof why), 0);
    td_cache_put(c, y);
    CHECK_EQ_INT(td_cache_get(c, 0, &x, why, sizeof why), 0); /* a is now the newest */
    td_cache_put(c, x);
    CHECK_EQ_INT(td_cache_get(c, 3, &y, why, sizeof why), 0); /* d pushes out b */
    td_cache_put(c, y);
    td_cache_stats_get(c, &st);
    CHECK_EQ_INT(st.loads, 3);
    CHECK_EQ_INT(st.evictions, 1);
    CHECK_EQ_INT(td_cache_get(c, 0, &x, why, sizeof why), 0);
    td_cache_put(c, x);
    td_cache_stats_get(c, &st);
    CHECK_EQ_INT(st.loads, 3); /* a stayed */
    CHECK_EQ_INT(td_cache_get(c, 1, &y, why, sizeof why), 0);
    td_cache_put(c, y);
    td_cache_stats_get(c, &st);
    CHECK_EQ_INT(st.loads, 4); /* b had gone */
    td_cache_close(c);
    td_manifest_free(m);
    return 0;
}

/* ---- patches --------------------------------------------------------------------- */

static int test_patch_determinism(void)
{
    CHECK(write_case("ct.nii.gz", "lab.nii.gz", 32, 32, 32, balls, -50.0f) == 0);
    CHECK(write_text("m.jsonl", "{\"id\":\"a\",\"ct\":\"ct.nii.gz\",\"labels\":\"lab.nii.gz\"}\n") == 0);
    td_opts o;
    opts3(&o);
    td_case c;
    CHECK_EQ_INT(load_one("m.jsonl", &o, 0, &c), 0);
    enum { P = 20 * 24 * 16 };
    float *img[3];
    uint8_t *lab[3];
    for (int r = 0; r < 3; r++) {
        img[r] = malloc(P * sizeof(float));
        lab[r] = malloc(P);
        CHECK(img[r] && lab[r]);
    }
    td_rng g[3];
    td_rng_seed(&g[0], 7, 1);
    td_rng_seed(&g[1], 7, 1);
    td_rng_seed(&g[2], 8, 1);
    int differ_img = 0, differ_lab = 0;
    for (int it = 0; it < 5; it++) {
        for (int r = 0; r < 3; r++)
            CHECK_EQ_INT(td_sample_patch(&c, &o, &g[r], img[r], lab[r], 16, 24, 20), 0);
        CHECK(memcmp(img[0], img[1], P * sizeof(float)) == 0);
        CHECK(memcmp(lab[0], lab[1], P) == 0);
        differ_img += memcmp(img[0], img[2], P * sizeof(float)) != 0;
        differ_lab += memcmp(lab[0], lab[2], P) != 0;
    }
    CHECK_EQ_INT(differ_img, 5);
    CHECK(differ_lab >= 4);
    /* The generator's state is all there is: a copy continues identically. */
    td_rng saved = g[0];
    CHECK_EQ_INT(td_sample_patch(&c, &o, &g[0], img[0], lab[0], 16, 24, 20), 0);
    CHECK_EQ_INT(td_sample_patch(&c, &o, &saved, img[1], lab[1], 16, 24, 20), 0);
    CHECK(memcmp(img[0], img[1], P * sizeof(float)) == 0);
    /* The Gaussian draws have mean 0 and variance 1. */
    double m1 = 0, m2 = 0;
    for (int k = 0; k < 100000; k++) {
        double z = td_rng_gauss(&g[2]);
        m1 += z;
        m2 += z * z;
    }
    CHECK(fabs(m1 / 1e5) < 0.02 && fabs(m2 / 1e5 - 1) < 0.03);
    /* Another stream of the same seed differs. */
    td_rng_seed(&g[2], 7, 2);
    td_rng_seed(&g[1], 7, 1);
    CHECK(td_rng_next(&g[1]) != td_rng_next(&g[2]));
    CHECK_EQ_INT(td_sample_patch(&c, &o, &g[0], img[0], lab[0], 0, 24, 20), CTG_EINVAL);
    for (int r = 0; r < 3; r++) {
        free(img[r]);
        free(lab[r]);
    }
    td_case_clear(&c);
    return 0;
}

static int small_fn(int i, int j, int k)
{
    return (i + j + k) % 3 == 0 ? 1 : 0;
}

/* A volume smaller than the patch: it appears whole, once, with -1024 HU and
 * label 0 around it. */
static int test_patch_padding(void)
{
    CHECK(write_case("ct.nii.gz", "lab.nii.gz", 10, 12, 7, small_fn, 5.0f) == 0);
    CHECK(write_text("m.jsonl", "{\"id\":\"a\",\"ct\":\"ct.nii.gz\",\"labels\":\"lab.nii.gz\"}\n") == 0);
    td_opts o;
    opts3(&o);
    o.augment = 0;
    td_case c;
    CHECK_EQ_INT(load_one("m.jsonl", &o, 0, &c), 0);
    double vsum = 0;
    size_t vlab = 0, nv = ctg_vol_count(c.ct);
    for (size_t v = 0; v < nv; v++) {
        vsum += ((const float *)c.ct->data)[v];
        vlab += ((const uint8_t *)c.lab->data)[v];
    }
    enum { D = 16, H = 16, W = 16, P = D * H * W };
    static float img[P];
    static uint8_t lab[P];
    td_rng g;
    td_rng_seed(&g, 1, 0);
    for (int it = 0; it < 20; it++) {
        o.fg_fraction = it % 2 ? 1.0 : 0.0;
        CHECK_EQ_INT(td_sample_patch(&c, &o, &g, img, lab, D, H, W), 0);
        size_t pad = 0, plab = 0;
        double psum = 0;
        for (int q = 0; q < P; q++) {
            if (img[q] == -1024.0f) {
                pad++;
                CHECK_EQ_INT(lab[q], 0);
            } else {
                psum += img[q];
                plab += lab[q];
                CHECK(fabs(img[q] - (5.0 + 100.0 * lab[q])) < 1e-3);
            }
        }
        CHECK_EQ_INT(pad, P - nv);
        CHECK(fabs(psum - vsum) < 1e-3);
        CHECK_EQ_INT(plab, vlab);
    }
    td_case_clear(&c);
    return 0;
}

/* A single small labelled cube far from the centre of a large volume. */
static int cube_fn(int i, int j, int k)
{
    if (i >= 40 && i < 44 && j >= 6 && j < 10 && k >= 30 && k < 34) return 1;
    if (i >= 8 && i < 30 && j >= 30 && j < 56 && k >= 4 && k < 26) return 2;
    return 0;
}

/* Crops centred on labelled voxels see the organs far more often than
 * uniform crops, and a tiny organ as often as a large one. */
static int test_patch_foreground(void)
{
    CHECK(write_case("ct.nii.gz", "lab.nii.gz", 60, 60, 44, cube_fn, 0.0f) == 0);
    CHECK(write_text("m.jsonl", "{\"id\":\"a\",\"ct\":\"ct.nii.gz\",\"labels\":\"lab.nii.gz\"}\n") == 0);
    td_opts o;
    opts3(&o);
    o.augment = 0;
    td_case c;
    CHECK_EQ_INT(load_one("m.jsonl", &o, 0, &c), 0);
    enum { S = 12, P = S * S * S, N = 600 };
    static float img[P];
    static uint8_t lab[P];
    const double frac[3] = {0.0, 2.0 / 3.0, 1.0};
    double seen[3][3];
    for (int f = 0; f < 3; f++) {
        o.fg_fraction = frac[f];
        td_rng g;
        td_rng_seed(&g, 11, (uint64_t)f);
        int hit[3] = {0, 0, 0};
        for (int it = 0; it < N; it++) {
            CHECK_EQ_INT(td_sample_patch(&c, &o, &g, img, lab, S, S, S), 0);
            int has[3] = {0, 0, 0};
            for (int q = 0; q < P; q++) has[lab[q]] = 1;
            hit[1] += has[1];
            hit[2] += has[2];
            hit[0] += has[1] || has[2];
        }
        for (int k = 0; k < 3; k++) seen[f][k] = (double)hit[k] / N;
        printf("fg_fraction %.2f: patches with a label %.3f, tiny cube %.3f, big box %.3f\n",
               frac[f], seen[f][0], seen[f][1], seen[f][2]);
    }
    CHECK(seen[0][1] < 0.05);                 /* the cube: (15/49)^2*(15/33) */
    CHECK(seen[1][0] > 0.75);                 /* 2/3 biased + uniform hits */
    CHECK(seen[2][0] == 1.0);
    CHECK(seen[2][1] > 0.4 && seen[2][1] < 0.6); /* half the time the cube */
    CHECK(seen[1][1] > 0.25);
    td_case_clear(&c);
    return 0;
}

/* Image = 100 * label exactly: after zooming, a voxel's HU still matches its
 * label except on boundaries, and the patch really was zoomed. */
static int test_patch_alignment(void)
{
    CHECK(write_case("ct.nii.gz", "lab.nii.gz", 40, 40, 36, balls, 0.0f) == 0);
    CHECK(write_text("m.jsonl", "{\"id\":\"a\",\"ct\":\"ct.nii.gz\",\"labels\":\"lab.nii.gz\"}\n") == 0);
    td_opts o;
    opts3(&o);
    o.hu_scale = o.hu_shift = o.noise_sd = 0;
    o.fg_fraction = 1.0;
    td_case c;
    CHECK_EQ_INT(load_one("m.jsonl", &o, 0, &c), 0);
    enum { S = 24, P = S * S * S };
    static float img[P];
    static uint8_t lab[P];
    td_rng g;
    td_rng_seed(&g, 3, 0);
    /* Voxels whose HU is a whole multiple of 100 were not interpolated
     * across a boundary, so their label must be exactly HU / 100.  The same
     * count against labels shifted by one voxel shows the check would see
     * a crop of the labels that is off by one. */
    size_t inside = 0, pure = 0, good = 0, shifted = 0, fgpure = 0, interp = 0;
    for (int it = 0; it < 30; it++) {
        CHECK_EQ_INT(td_sample_patch(&c, &o, &g, img, lab, S, S, S), 0);
        for (int q = 0; q < P; q++) {
            if (img[q] == -1024.0f) continue;
            inside++;
            double fr = img[q] / 100.0;
            interp += fabs(fr - round(fr)) > 0.01;
            /* Background is most of the scan and matches trivially. */
            if (fabs(fr - round(fr)) > 0.01 || round(fr) == 0) continue;
            pure++;
            fgpure += lab[q] != 0;
            good += (int)round(fr) == lab[q];
            if (q % S + 1 < S) shifted += (int)round(fr) == lab[q + 1];
            else shifted += (int)round(fr) == lab[q];
        }
    }
    double fgood = (double)good / pure, fshift = (double)shifted / pure;
    printf("%zu voxels in the scan, %zu interpolated, %zu in organs not interpolated "
           "(%zu labelled): %.4f match their label, %.4f when shifted by one voxel\n",
           inside, interp, pure, fgpure, fgood, fshift);
    CHECK(pure > 5000);
    CHECK(fgood > 0.995);
    CHECK(fshift < 0.985);
    CHECK(interp > 1000); /* the zoom did interpolate */

    /* With intensity jitter on, HU = a * 100 * L + b + noise per patch: the
     * spread within one label is the noise and stays modest. */
    td_opts_default(&o);
    o.classes = classes3;
    o.nclasses = 3;
    o.scale = 0;
    o.fg_fraction = 1.0;
    double maxsd = 0;
    for (int it = 0; it < 10; it++) {
        CHECK_EQ_INT(td_sample_patch(&c, &o, &g, img, lab, S, S, S), 0);
        double s0 = 0, s00 = 0;
        size_t n0 = 0;
        for (int q = 0; q < P; q++)
            if (lab[q] == 0 && img[q] != -1024.0f) {
                s0 += img[q];
                s00 += (double)img[q] * img[q];
                n0++;
            }
        CHECK(n0 > 100);
        double mean0 = s0 / n0, sd0 = sqrt(fmax(0, s00 / n0 - mean0 * mean0));
        CHECK(fabs(mean0) <= 20.5 && sd0 <= 10.5);
        maxsd = fmax(maxsd, sd0);
    }
    printf("background under jitter: largest noise sd %.2f HU\n", maxsd);
    CHECK(maxsd > 3.0);
    td_case_clear(&c);
    return 0;
}

/* Right (low i) and left (high i) organs keep their sides in every patch:
 * no augmentation flips left and right. */
static int sides_fn(int i, int j, int k)
{
    (void)j;
    (void)k;
    return i >= 4 && i < 12 ? 2 : i >= 20 && i < 28 ? 3 : 0; /* kidney_right, kidney_left */
}

static int test_patch_laterality(void)
{
    CHECK(write_case("ct.nii.gz", "lab.nii.gz", 32, 16, 16, sides_fn, 0.0f) == 0);
    CHECK(write_text("m.jsonl", "{\"id\":\"a\",\"ct\":\"ct.nii.gz\",\"labels\":\"lab.nii.gz\"}\n") == 0);
    td_opts o;
    opts3(&o);
    td_case c;
    CHECK_EQ_INT(load_one("m.jsonl", &o, 0, &c), 0);
    enum { S = 24, P = S * 12 * 12 };
    static float img[P];
    static uint8_t lab[P];
    td_rng g;
    td_rng_seed(&g, 9, 0);
    int both = 0;
    for (int it = 0; it < 100; it++) {
        CHECK_EQ_INT(td_sample_patch(&c, &o, &g, img, lab, 12, 12, S), 0);
        double sx[4] = {0}, n[4] = {0};
        for (int q = 0; q < P; q++) {
            sx[lab[q]] += q % S;
            n[lab[q]]++;
        }
        if (n[2] > 0 && n[3] > 0) {
            both++;
            CHECK(sx[2] / n[2] < sx[3] / n[3]);
        }
    }
    CHECK(both > 10);
    td_case_clear(&c);
    return 0;
}

/* Lesion maps: a focal finding gets the box of its lesion on the training
 * grid (also after resampling), a diffuse one or one whose lesion is not in
 * the map stays unlocated, and lesion_fraction centres patches on them. */
static int test_lesions(void)
{
    enum { NX = 40, NY = 40, NZ = 32 };
    CHECK(write_case("ct.nii.gz", "lab.nii.gz", NX, NY, NZ, balls, 0.0f) == 0);
    const double sp[3] = {1.5, 1.5, 1.5}, org[3] = {-20, 30, 100};
    ctg_vol *l = make_vol(NX, NY, NZ, CTG_U8, sp, org);
    CHECK(l);
    for (int k = 9; k <= 10; k++)
        for (int j = 9; j <= 11; j++)
            for (int i = 8; i <= 10; i++) ctg_vol_set(l, i, j, k, 1); /* in the spleen */
    ctg_vol_set(l, 14, 28, 22, 2);                                   /* kidney_left */
    CHECK(write_vol("les.nii.gz", l) == 0);
    ctg_vol_free(l);
    CHECK(write_text("m.jsonl",
                     "{\"id\":\"a\",\"ct\":\"ct.nii.gz\",\"labels\":\"lab.nii.gz\","
                     "\"lesions\":\"les.nii.gz\",\"findings\":["
                     "{\"organ\":\"spleen\",\"abnormality\":\"splenic_lesion\",\"lesion\":1},"
                     "{\"organ\":\"spleen\",\"abnormality\":\"splenomegaly\",\"lesion\":0},"
                     "{\"organ\":\"kidney_left\",\"abnormality\":\"renal_cyst\",\"lesion\":2},"
                     "{\"organ\":\"kidney_right\",\"abnormality\":\"renal_cyst\",\"lesion\":7}"
                     "]}\n") == 0);
    td_opts o;
    opts3(&o);
    o.augment = 0;
    td_case c;
    CHECK_EQ_INT(load_one("m.jsonl", &o, 0, &c), 0);
    CHECK_EQ_INT(c.nfindings, 4);
    const int want0[6] = {8, 10, 9, 11, 9, 10}, want2[6] = {14, 14, 28, 28, 22, 22};
    CHECK(memcmp(c.findings[0].box, want0, sizeof want0) == 0);
    CHECK(!td_finding_located(&c.findings[1])); /* diffuse */
    CHECK(memcmp(c.findings[2].box, want2, sizeof want2) == 0);
    CHECK(!td_finding_located(&c.findings[3])); /* lesion 7 is not in the map */
    double in[6] = {0, 12, 0, 12, 0, 12}, out[6] = {11.5, 30, 0, 40, 0, 32};
    CHECK(td_finding_in_window(&c.findings[0], in) == 1);
    CHECK(td_finding_in_window(&c.findings[0], out) == 0);
    CHECK(td_finding_in_window(&c.findings[1], out) == 1); /* unlocated: anywhere */
    CHECK(td_finding_in_window(&c.findings[2], in) == 0);

    /* Patches: with lesion_fraction 1 every window holds a located lesion
     * (and its label voxels); with 0 (fg_fraction 0) many miss both. */
    enum { S = 8, P = S * S * S, N = 200 };
    static float img[P];
    static uint8_t lab[P];
    for (int pass = 0; pass < 2; pass++) {
        o.lesion_fraction = pass == 0 ? 1.0 : 0.0;
        o.fg_fraction = pass == 0 ? 1.0 : 0.0;
        td_rng g;
        td_rng_seed(&g, 5, (uint64_t)pass);
        int hits = 0;
        for (int it = 0; it < N; it++) {
            double win[6];
            CHECK_EQ_INT(td_sample_patch_win(&c, &o, &g, img, lab, S, S, S, win), 0);
            CHECK(win[1] - win[0] == S - 1 && win[5] - win[4] == S - 1);
            hits += td_finding_in_window(&c.findings[0], win) ||
                    td_finding_in_window(&c.findings[2], win);
        }
        printf("lesion_fraction %.0f: %d of %d windows show a lesion\n", o.lesion_fraction, hits,
               N);
        if (pass == 0) CHECK_EQ_INT(hits, N);
        else CHECK(hits < N / 2);
    }
    td_case_clear(&c);

    /* Resampled to 3 mm the small lesion keeps a box on the new grid; with
     * lesions off nothing is located. */
    opts3(&o);
    o.spacing[0] = o.spacing[1] = o.spacing[2] = 3.0;
    CHECK_EQ_INT(load_one("m.jsonl", &o, 0, &c), 0);
    const int *b = c.findings[0].box;
    printf("lesion 1 at 3 mm: i %d..%d j %d..%d k %d..%d on %dx%dx%d\n", b[0], b[1], b[2], b[3],
           b[4], b[5], c.lab->nx, c.lab->ny, c.lab->nz);
    CHECK(td_finding_located(&c.findings[0]));
    CHECK(b[0] >= 3 && b[1] <= 6 && b[2] >= 3 && b[3] <= 6 && b[4] >= 3 && b[5] <= 6);
    td_case_clear(&c);
    o.lesions = 0;
    CHECK_EQ_INT(load_one("m.jsonl", &o, 0, &c), 0);
    for (int f = 0; f < c.nfindings; f++) CHECK(!td_finding_located(&c.findings[f]));
    td_case_clear(&c);
    return 0;
}

const test_case data_tests[] = {
    {"data_manifest", test_manifest},
    {"data_dicom_nifti_same", test_dicom_nifti_same},
    {"data_v1_labels", test_v1_labels},
    {"data_label_grid", test_label_grid},
    {"data_cache", test_cache},
    {"data_patch_determinism", test_patch_determinism},
    {"data_patch_padding", test_patch_padding},
    {"data_patch_foreground", test_patch_foreground},
    {"data_patch_alignment", test_patch_alignment},
    {"data_patch_laterality", test_patch_laterality},
    {"data_lesions", test_lesions},
    {NULL, NULL},
};
