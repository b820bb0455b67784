/*
 * test_volume.c - DICOM series to volume (dicom/volume.cc): series choice,
 * slice sorting, missing slices, gantry tilt, unsupported compression, the
 * decode of every transfer syntax and of Enhanced CT in every patient
 * position, and a deterministic run of the series fuzz target.
 *
 * Series are written with dcm_write_ct_series (dicom/write.cc) from small
 * volumes of integer HU, so a round trip must be exact.  Some tests change
 * written files with DCMTK's dcmodify, as a PACS or a broken modality would.
 * The JPEG 2000 test reads the raw TotalSegmentator example slices
 * (Wasserthal et al., CC BY 4.0; repository Apache-2.0) from
 * ../shared/fixtures/totalseg or $CTG_FIXTURES/totalseg.
 *
 * Each test runs in its own process in an empty folder (tests/runner.c).
 */
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "core/vol.h"
#include "dicom/dicom.h"
#include "tests.h"

int ctg_fuzz_series(const uint8_t *data, size_t size);

#define NX 40
#define NY 32
#define NZ 12
#define STUDY "2.25.99887766554433221100.1"
#define SERIES "2.25.99887766554433221100.2"

/* A small deterministic generator, so failures reproduce. */
static uint32_t rng = 2463534242u;
static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

/* The reference: NX x NY x NZ voxels of 0.8 x 0.9 x 2.5 mm in canonical
 * order (identity directions), integer HU in -1024..2000. */
static ctg_vol *reference(int nz)
{
    ctg_vol *v = ctg_vol_new(NX, NY, nz, CTG_F32);
    if (!v) return NULL;
    float *d = v->data;
    for (size_t i = 0; i < ctg_vol_count(v); i++) d[i] = (float)((int)(rnd() % 3025) - 1024);
    memset(v->aff, 0, sizeof v->aff);
    v->aff[0][0] = 0.8;
    v->aff[1][1] = 0.9;
    v->aff[2][2] = 2.5;
    v->aff[0][3] = -16.0;
    v->aff[1][3] = -14.4;
    v->aff[2][3] = 100.0;
    return v;
}

/* The same voxels on the acquisition grid of a patient position: rows run
 * along sr*x, columns along sc*y, slices along the normal (r x c), as the
 * scanner would write them.  Every voxel keeps its world position. */
static ctg_vol *acquisition(const ctg_vol *ref, int sr, int sc)
{
    int sn = sr * sc;
    ctg_vol *a = ctg_vol_new(ref->nx, ref->ny, ref->nz, CTG_F32);
    if (!a) return NULL;
    const float *src = ref->data;
    float *dst = a->data;
    for (int k = 0; k < ref->nz; k++)
        for (int j = 0; j < ref->ny; j++)
            for (int i = 0; i < ref->nx; i++) {
                int ri = sr > 0 ? i : ref->nx - 1 - i, rj = sc > 0 ? j : ref->ny - 1 - j;
                int rk = sn > 0 ? k : ref->nz - 1 - k;
                dst[i + (size_t)ref->nx * (j + (size_t)ref->ny * k)] =
                    src[ri + (size_t)ref->nx * (rj + (size_t)ref->ny * rk)];
            }
    memset(a->aff, 0, sizeof a->aff);
    a->aff[0][0] = sr * ref->aff[0][0];
    a->aff[1][1] = sc * ref->aff[1][1];
    a->aff[2][2] = sn * ref->aff[2][2];
    a->aff[0][3] = ref->aff[0][3] + (sr > 0 ? 0 : (ref->nx - 1) * ref->aff[0][0]);
    a->aff[1][3] = ref->aff[1][3] + (sc > 0 ? 0 : (ref->ny - 1) * ref->aff[1][1]);
    a->aff[2][3] = ref->aff[2][3] + (sn > 0 ? 0 : (ref->nz - 1) * ref->aff[2][2]);
    return a;
}

static dcm_ct_meta meta_for(const char *series, const char *ppos, int ts, int enhanced)
{
    dcm_ct_meta m;
    memset(&m, 0, sizeof m);
    m.patient_name = "Test^Volume";
    m.patient_id = "VOL1";
    m.study_uid = STUDY;
    m.series_uid = series;
    m.frame_of_ref_uid = STUDY ".9";
    m.patient_position = ppos;
    m.series_number = 2;
    m.series_desc = "volume test";
    m.transfer_syntax = ts;
    m.enhanced = enhanced;
    return m;
}

static int write_series(const char *dir, const ctg_vol *v, const dcm_ct_meta *m)
{
    char why[512] = "";
    int rc = dcm_write_ct_series(dir, v, m, why, sizeof why);
    if (rc < 0) fprintf(stderr, "dcm_write_ct_series %s: %s\n", dir, why);
    return rc;
}

/* The regular files of some folders, sorted by name; returns the count. */
static size_t list_files(const char *const *dirs, int ndirs, char **out, size_t cap)
{
    size_t n = 0;
    for (int d = 0; d < ndirs; d++) {
        DIR *dp = opendir(dirs[d]);
        if (!dp) continue;
        struct dirent *e;
        size_t start = n;
        while ((e = readdir(dp)) && n < cap) {
            if (e->d_name[0] == '.') continue;
            char p[1024];
            snprintf(p, sizeof p, "%s/%s", dirs[d], e->d_name);
            out[n++] = strdup(p);
        }
        closedir(dp);
        for (size_t i = start; i < n; i++)
            for (size_t j = i + 1; j < n; j++)
                if (strcmp(out[j], out[i]) < 0) {
                    char *t = out[i];
                    out[i] = out[j];
                    out[j] = t;
                }
    }
    return n;
}

static void free_files(char **f, size_t n)
{
    for (size_t i = 0; i < n; i++) free(f[i]);
}

/* Reads the files of some folders; prints the reason on failure. */
static int load(const char *const *dirs, int ndirs, const dcm_vol_opts *o, ctg_vol **v,
                dcm_vol_info *info, char *why, size_t n)
{
    char *files[256];
    size_t nf = list_files(dirs, ndirs, files, 256);
    memset(info, 0, sizeof *info);
    int rc = dcm_series_volume((const char *const *)files, nf, o, v, info, why, n);
    if (rc < 0) printf("dcm_series_volume: %s\n", why);
    free_files(files, nf);
    return rc;
}

static int load1(const char *dir, const dcm_vol_opts *o, ctg_vol **v, dcm_vol_info *info,
                 char *why, size_t n)
{
    return load(&dir, 1, o, v, info, why, n);
}

/* 1 when two volumes have the same size, affine (within tol) and values. */
static int same_volume(const ctg_vol *a, const ctg_vol *b, double tol)
{
    if (!ctg_vol_same_grid(a, b, tol) || a->dtype != CTG_F32 || b->dtype != CTG_F32) return 0;
    return memcmp(a->data, b->data, ctg_vol_count(a) * sizeof(float)) == 0;
}

static int run(const char *cmd)
{
    int rc = system(cmd);
    if (rc != 0) fprintf(stderr, "command failed (%d): %s\n", rc, cmd);
    return rc;
}

static int sop_suffix(const char *sop)
{
    const char *dot = strrchr(sop, '.');
    return dot ? atoi(dot + 1) : -1;
}

/* ---- sorting ---------------------------------------------------------------- */

/* (d) Any order of the files gives the same volume, built from the slice
 * positions, not the names or Instance Numbers. */
static int test_shuffled_order(void)
{
    dcm_quiet();
    ctg_vol *ref = reference(NZ), *acq = acquisition(ref, -1, 1); /* FFS */
    dcm_ct_meta m = meta_for(SERIES, "FFS", DCM_TS_EXPLICIT_LE, 0);
    CHECK_EQ_INT(write_series("s", acq, &m), 0);
    const char *dir = "s";
    char *files[64];
    size_t n = list_files(&dir, 1, files, 64);
    CHECK_EQ_INT(n, NZ);

    ctg_vol *v[3] = {NULL, NULL, NULL};
    dcm_vol_info info[3];
    char why[512];
    for (int t = 0; t < 3; t++) {
        if (t == 1) /* reversed */
            for (size_t i = 0; i < n / 2; i++) {
                char *x = files[i];
                files[i] = files[n - 1 - i];
                files[n - 1 - i] = x;
            }
        if (t == 2) /* shuffled */
            for (size_t i = n - 1; i > 0; i--) {
                size_t j = rnd() % (i + 1);
                char *x = files[i];
                files[i] = files[j];
                files[j] = x;
            }
        memset(&info[t], 0, sizeof info[t]);
        CHECK_EQ_INT(dcm_series_volume((const char *const *)files, n, NULL, &v[t], &info[t], why,
                                       sizeof why),
                     0);
    }
    for (int t = 0; t < 3; t++) {
        CHECK(same_volume(v[t], ref, 1e-4));
        CHECK_EQ_INT(info[t].nslices, NZ);
        CHECK_EQ_INT(info[t].filled, 0);
        CHECK(fabs(info[t].slice_spacing - 2.5) < 1e-6);
        CHECK(!strcmp(info[t].series_uid, SERIES));
        CHECK(!strcmp(info[t].study_uid, STUDY));
        CHECK(!strcmp(info[t].patient_position, "FFS"));
        for (int k = 0; k < NZ; k++) {
            /* FFS: the writer's slice 0 is the head end, canonical k = 0
             * the foot end. */
            CHECK_EQ_INT(sop_suffix(info[t].slice_sop[k]), NZ - k);
            CHECK(!strcmp(info[t].slice_sop[k], info[0].slice_sop[k]));
            CHECK_EQ_INT(info[t].slice_frame[k], 1);
        }
    }
    for (int t = 0; t < 3; t++) {
        ctg_vol_free(v[t]);
        dcm_vol_info_free(&info[t]);
    }
    free_files(files, n);
    ctg_vol_free(ref);
    ctg_vol_free(acq);
    return 0;
}

/* A missing slice is refused with its position, or filled on request with
 * the interpolation of its neighbours; irregular spacing and mixed
 * orientation are refused. */
static int test_missing_slice(void)
{
    dcm_quiet();
    ctg_vol *ref = reference(NZ), *v = NULL;
    dcm_ct_meta m = meta_for(SERIES, "HFS", DCM_TS_EXPLICIT_LE, 0);
    CHECK_EQ_INT(write_series("s", ref, &m), 0);
    /* Slice k = 5 is at z = 100 + 5 * 2.5. */
    CHECK(unlink("s/CT0006.dcm") == 0);
    dcm_vol_opts o;
    memset(&o, 0, sizeof o);
    dcm_vol_info info;
    char why[512];
    CHECK_EQ_INT(load1("s", &o, &v, &info, why, sizeof why), CTG_EREJECT);
    CHECK(v == NULL && info.slice_sop == NULL);
    CHECK(strstr(why, "missing") != NULL);
    CHECK(strstr(why, "z = 112.50 mm") != NULL);

    o.fill_missing = 1;
    CHECK_EQ_INT(load1("s", &o, &v, &info, why, sizeof why), 0);
    CHECK_EQ_INT(info.filled, 1);
    CHECK_EQ_INT(info.nslices, NZ);
    CHECK(ctg_vol_same_grid(v, ref, 1e-4));
    size_t plane = NX * NY;
    const float *a = ref->data, *b = v->data;
    for (int k = 0; k < NZ; k++) {
        for (size_t i = 0; i < plane; i++) {
            float want = k == 5 ? 0.5f * (a[4 * plane + i] + a[6 * plane + i]) : a[k * plane + i];
            if (fabsf(b[k * plane + i] - want) > 1e-3f) {
                fprintf(stderr, "slice %d voxel %zu: %g, want %g\n", k, i, b[k * plane + i], want);
                return 1;
            }
        }
        CHECK_EQ_INT(info.slice_frame[k], k == 5 ? 0 : 1);
        CHECK_EQ_INT(k == 5 ? info.slice_sop[k][0] : sop_suffix(info.slice_sop[k]),
                     k == 5 ? 0 : k + 1);
    }
    ctg_vol_free(v);
    v = NULL;
    dcm_vol_info_free(&info);

    /* Two in a row: filled when max_fill allows 2 (the default), at 1/3
     * and 2/3 of the way; refused when it allows 1. */
    CHECK(unlink("s/CT0007.dcm") == 0);
    CHECK_EQ_INT(load1("s", &o, &v, &info, why, sizeof why), 0);
    CHECK_EQ_INT(info.filled, 2);
    b = v->data;
    for (size_t i = 0; i < plane; i++) {
        float w5 = a[4 * plane + i] + (a[7 * plane + i] - a[4 * plane + i]) / 3.0f;
        float w6 = a[4 * plane + i] + 2.0f * (a[7 * plane + i] - a[4 * plane + i]) / 3.0f;
        CHECK(fabsf(b[5 * plane + i] - w5) < 1e-2f && fabsf(b[6 * plane + i] - w6) < 1e-2f);
    }
    ctg_vol_free(v);
    v = NULL;
    dcm_vol_info_free(&info);
    o.max_fill = 1;
    CHECK_EQ_INT(load1("s", &o, &v, &info, why, sizeof why), CTG_EREJECT);
    CHECK(strstr(why, "consecutive missing") != NULL);

    /* A slice 1 mm off its place is neither a gap nor regular. */
    CHECK_EQ_INT(run("dcmodify -q -nb -m '(0020,0032)=-16\\-14.4\\118.5' s/CT0008.dcm"), 0);
    o.max_fill = 0;
    CHECK_EQ_INT(load1("s", &o, &v, &info, why, sizeof why), CTG_EREJECT);
    CHECK(strstr(why, "irregular slice spacing") != NULL);

    /* One slice of another orientation. */
    CHECK_EQ_INT(write_series("t", ref, &m), 0);
    CHECK_EQ_INT(run("dcmodify -q -nb -m '(0020,0037)=1\\0\\0\\0\\0.8\\0.6' t/CT0003.dcm"), 0);
    CHECK_EQ_INT(load1("t", &o, &v, &info, why, sizeof why), CTG_EREJECT);
    CHECK(strstr(why, "more than one orientation") != NULL);
    ctg_vol_free(ref);
    return 0;
}

/* Positions stepping off the slice normal are a tilted gantry. */
static int test_tilt(void)
{
    dcm_quiet();
    ctg_vol *ref = reference(NZ), *v = NULL;
    ref->aff[1][2] = 0.3; /* 0.3 mm posterior per 2.5 mm slice: 6.8 degrees */
    dcm_ct_meta m = meta_for(SERIES, "HFS", DCM_TS_EXPLICIT_LE, 0);
    CHECK_EQ_INT(write_series("s", ref, &m), 0);
    dcm_vol_info info;
    char why[512];
    CHECK_EQ_INT(load1("s", NULL, &v, &info, why, sizeof why), CTG_EREJECT);
    CHECK(strstr(why, "tilt") != NULL);
    CHECK(strstr(why, "6.8 degrees") != NULL);
    CHECK(v == NULL);

    /* A tenth of that (0.7 degrees) is still a tilt; 0.2 degrees, which
     * rounding of positions can explain, is not. */
    ref->aff[1][2] = 0.03;
    CHECK_EQ_INT(write_series("t", ref, &m), 0);
    CHECK_EQ_INT(load1("t", NULL, &v, &info, why, sizeof why), CTG_EREJECT);
    CHECK(strstr(why, "tilt") != NULL);
    ref->aff[1][2] = 0.0087;
    CHECK_EQ_INT(write_series("u", ref, &m), 0);
    CHECK_EQ_INT(load1("u", NULL, &v, &info, why, sizeof why), 0);
    ctg_vol_free(v);
    dcm_vol_info_free(&info);
    ctg_vol_free(ref);
    return 0;
}

/* ---- choosing the series ------------------------------------------------------ */

static int test_two_series(void)
{
    dcm_quiet();
    ctg_vol *big = reference(NZ), *small = reference(8), *v = NULL;
    dcm_ct_meta ma = meta_for(SERIES ".1", "HFS", DCM_TS_EXPLICIT_LE, 0);
    dcm_ct_meta mb = meta_for(SERIES ".2", "HFS", DCM_TS_IMPLICIT_LE, 0);
    mb.series_number = 1; /* a lower number must not win over more slices */
    CHECK_EQ_INT(write_series("a", big, &ma), 0);
    CHECK_EQ_INT(write_series("b", small, &mb), 0);
    const char *dirs[2] = {"b", "a"};
    dcm_vol_info info;
    char why[512];
    CHECK_EQ_INT(load(dirs, 2, NULL, &v, &info, why, sizeof why), 0);
    printf("skipped:\n%s", info.skipped);
    CHECK(!strcmp(info.series_uid, SERIES ".1"));
    CHECK_EQ_INT(info.nseries, 2);
    CHECK(same_volume(v, big, 1e-4));
    CHECK(strstr(info.skipped, SERIES ".2: 8 images") != NULL);
    ctg_vol_free(v);
    dcm_vol_info_free(&info);

    /* The caller may ask for the other one, and for no absent one. */
    dcm_vol_opts o;
    memset(&o, 0, sizeof o);
    o.series_uid = SERIES ".2";
    CHECK_EQ_INT(load(dirs, 2, &o, &v, &info, why, sizeof why), 0);
    CHECK(!strcmp(info.series_uid, SERIES ".2"));
    CHECK(same_volume(v, small, 1e-4));
    CHECK(strstr(info.skipped, SERIES ".1: not the requested series") != NULL);
    ctg_vol_free(v);
    v = NULL;
    dcm_vol_info_free(&info);
    o.series_uid = SERIES ".3";
    CHECK_EQ_INT(load(dirs, 2, &o, &v, &info, why, sizeof why), CTG_EREJECT);
    CHECK(strstr(why, SERIES ".3") != NULL);
    ctg_vol_free(big);
    ctg_vol_free(small);
    return 0;
}

/* Localizers and dose reports are skipped with their reason; the axial
 * series is chosen even when another series has more images. */
static int test_localizer_and_dose(void)
{
    dcm_quiet();
    ctg_vol *ax = reference(NZ), *loc = reference(3), *cor = reference(NZ + 4), *v = NULL;
    dcm_ct_meta ma = meta_for(SERIES ".1", "HFS", DCM_TS_EXPLICIT_LE, 0);
    dcm_ct_meta ml = meta_for(SERIES ".2", "HFS", DCM_TS_EXPLICIT_LE, 0);
    ml.image_type = "ORIGINAL\\PRIMARY\\LOCALIZER";
    ml.series_number = 1;
    /* A coronal series with more slices: rows along x, columns down -z. */
    dcm_ct_meta mc = meta_for(SERIES ".3", "HFS", DCM_TS_EXPLICIT_LE, 0);
    mc.series_number = 3;
    memset(cor->aff, 0, sizeof cor->aff);
    cor->aff[0][0] = 0.8;
    cor->aff[2][1] = -0.9;
    cor->aff[1][2] = 2.0;
    cor->aff[2][3] = 120;
    CHECK_EQ_INT(write_series("a", ax, &ma), 0);
    CHECK_EQ_INT(write_series("l", loc, &ml), 0);
    CHECK_EQ_INT(write_series("c", cor, &mc), 0);
    /* A radiation dose SR and a dose screen (secondary capture), made
     * from copies of a slice as some scanners send them. */
    CHECK_EQ_INT(run("mkdir -p d && cp a/CT0001.dcm d/sr.dcm && cp a/CT0002.dcm d/sc.dcm && "
                     "dcmodify -q -nb -m '(0008,0016)=1.2.840.10008.5.1.4.1.1.88.67' "
                     "-m '(0020,000e)=" SERIES ".4' -m '(0008,0018)=" SERIES ".4.1' d/sr.dcm && "
                     "dcmodify -q -nb -m '(0008,0016)=1.2.840.10008.5.1.4.1.1.7' "
                     "-m '(0020,000e)=" SERIES ".5' -m '(0008,0018)=" SERIES ".5.1' "
                     "-m '(0008,103e)=Patient Dose Report' d/sc.dcm"),
                 0);
    const char *dirs[4] = {"l", "c", "d", "a"};
    dcm_vol_info info;
    char why[512];
    CHECK_EQ_INT(load(dirs, 4, NULL, &v, &info, why, sizeof why), 0);
    printf("skipped:\n%s", info.skipped);
    CHECK(!strcmp(info.series_uid, SERIES ".1"));
    CHECK(same_volume(v, ax, 1e-4));
    CHECK_EQ_INT(info.nseries, 5);
    CHECK(strstr(info.skipped, SERIES ".2: localizer") != NULL);
    CHECK(strstr(info.skipped, SERIES ".3: coronal") != NULL);
    CHECK(strstr(info.skipped, SERIES ".4: radiation dose report") != NULL);
    CHECK(strstr(info.skipped, SERIES ".5: dose report") != NULL);
    ctg_vol_free(v);
    v = NULL;
    dcm_vol_info_free(&info);

    /* Asked for by UID, a localizer is still refused. */
    dcm_vol_opts o;
    memset(&o, 0, sizeof o);
    o.series_uid = SERIES ".2";
    CHECK_EQ_INT(load(dirs, 4, &o, &v, &info, why, sizeof why), CTG_EREJECT);
    CHECK(strstr(why, "localizer") != NULL);

    /* Without the axial series the coronal one is used, in canonical
     * orientation; its per-slice records run along canonical j. */
    const char *dirs2[2] = {"c", "l"};
    CHECK_EQ_INT(load(dirs2, 2, NULL, &v, &info, why, sizeof why), 0);
    CHECK(!strcmp(info.series_uid, SERIES ".3"));
    CHECK_EQ_INT(v->nx, NX);
    CHECK_EQ_INT(v->ny, NZ + 4);
    CHECK_EQ_INT(v->nz, NY);
    CHECK(v->aff[0][0] > 0 && v->aff[1][1] > 0 && v->aff[2][2] > 0);
    CHECK_EQ_INT(info.nslices, NZ + 4);
    for (int k = 0; k < info.nslices; k++) CHECK_EQ_INT(sop_suffix(info.slice_sop[k]), k + 1);
    ctg_vol_free(v);
    dcm_vol_info_free(&info);
    ctg_vol_free(ax);
    ctg_vol_free(loc);
    ctg_vol_free(cor);
    return 0;
}

/* The published fixture slices are JPEG 2000 (and have lost their UIDs):
 * a clear refusal, not a crash. */
static int test_jpeg2000_refused(void)
{
    char dir[2048];
    const char *fx = getenv("CTG_FIXTURES");
    if (fx) snprintf(dir, sizeof dir, "%s/totalseg/example_ct_dicom", fx);
    else snprintf(dir, sizeof dir, "%s/../shared/fixtures/totalseg/example_ct_dicom",
                  getenv("CTG_ROOT"));
    dcm_quiet();
    ctg_vol *v = NULL;
    dcm_vol_info info;
    char why[512];
    const char *d = dir;
    char *files[64];
    size_t n = list_files(&d, 1, files, 64);
    free_files(files, n);
    CHECK_EQ_INT(n, 20);
    CHECK_EQ_INT(load1(dir, NULL, &v, &info, why, sizeof why), CTG_EFORMAT);
    CHECK(v == NULL);
    CHECK(strstr(why, "JPEG 2000") != NULL);
    CHECK(strstr(why, "20 images") != NULL);
    return 0;
}

/* ---- decoding ------------------------------------------------------------------- */

/* Every transfer syntax, single-frame and Enhanced CT, in all four patient
 * positions: the canonical volume is the reference, exactly. */
static int test_roundtrip(void)
{
    static const struct {
        const char *name;
        int sr, sc;
    } pos[] = {{"HFS", 1, 1}, {"FFS", -1, 1}, {"HFP", -1, -1}, {"FFP", 1, -1}};
    static const char *const ts_name[] = {"explicit LE", "implicit LE", "JPEG lossless",
                                          "JPEG-LS", "RLE"};
    dcm_quiet();
    ctg_vol *ref = reference(NZ);
    int runs = 0;
    for (int enh = 0; enh < 2; enh++)
        for (int ts = DCM_TS_EXPLICIT_LE; ts <= DCM_TS_RLE; ts++)
            for (int p = 0; p < 4; p++) {
                char dir[64], why[512];
                snprintf(dir, sizeof dir, "s%d_%d_%d", enh, ts, p);
                ctg_vol *acq = acquisition(ref, pos[p].sr, pos[p].sc), *v = NULL;
                dcm_ct_meta m = meta_for(SERIES, pos[p].name, ts, enh);
                m.pixel_signed = p & 1; /* both stored representations */
                CHECK_EQ_INT(write_series(dir, acq, &m), 0);
                dcm_vol_info info;
                int rc = load1(dir, NULL, &v, &info, why, sizeof why);
                if (rc != 0 || !same_volume(v, ref, 1e-4)) {
                    fprintf(stderr, "%s %s %s: not the reference\n", enh ? "Enhanced CT" : "CT",
                            ts_name[ts], pos[p].name);
                    return 1;
                }
                CHECK_EQ_INT(info.enhanced, enh);
                CHECK_EQ_INT(info.nslices, NZ);
                CHECK(!strcmp(info.patient_position, pos[p].name));
                CHECK(!strcmp(info.sop_class, enh ? "1.2.840.10008.5.1.4.1.1.2.1"
                                                  : "1.2.840.10008.5.1.4.1.1.2"));
                /* Where canonical slice k came from: the writer's slice
                 * k, or NZ-1-k for the feet-first positions. */
                int feet = pos[p].sr * pos[p].sc < 0;
                for (int k = 0; k < NZ; k++) {
                    int wk = feet ? NZ - 1 - k : k;
                    if (enh) {
                        CHECK_EQ_INT(sop_suffix(info.slice_sop[k]), 1);
                        CHECK_EQ_INT(info.slice_frame[k], wk + 1);
                    } else {
                        CHECK_EQ_INT(sop_suffix(info.slice_sop[k]), wk + 1);
                        CHECK_EQ_INT(info.slice_frame[k], 1);
                    }
                }
                ctg_vol_free(v);
                ctg_vol_free(acq);
                dcm_vol_info_free(&info);
                runs++;
            }
    printf("%d round trips exact\n", runs);
    ctg_vol_free(ref);
    return 0;
}

/* Bits above Bits Stored are not part of the value, and Pixel Padding
 * Value marks air outside the field of view. */
static int test_bits_stored_and_padding(void)
{
    dcm_quiet();
    ctg_vol *ref = reference(4), *v = NULL;
    float *d = ref->data;
    size_t n = ctg_vol_count(ref);
    for (size_t i = 0; i < n; i += 7) d[i] = -1023.0f; /* stored 1: padding */
    for (size_t i = 3; i < n; i += 11) d[i] = 3500.0f; /* stored 4524: bit 12 set */
    dcm_ct_meta m = meta_for(SERIES, "HFS", DCM_TS_EXPLICIT_LE, 0);
    CHECK_EQ_INT(write_series("s", ref, &m), 0);
    CHECK_EQ_INT(run("dcmodify -q -nb -m '(0028,0101)=12' -m '(0028,0102)=11' "
                     "-i '(0028,0120)=1' s/*.dcm"),
                 0);
    dcm_vol_info info;
    char why[512];
    CHECK_EQ_INT(load1("s", NULL, &v, &info, why, sizeof why), 0);
    const float *got = v->data;
    int pad = 0, masked = 0;
    for (size_t i = 0; i < n; i++) {
        float want = d[i];
        if (d[i] == -1023.0f) want = -1024.0f, pad++;
        if (d[i] >= 3072.0f) want = (float)(((int)d[i] + 1024) & 0xfff) - 1024.0f, masked++;
        if (got[i] != want) {
            fprintf(stderr, "voxel %zu: %g, want %g (written %g)\n", i, got[i], want, d[i]);
            return 1;
        }
    }
    printf("%d padding voxels, %d masked voxels\n", pad, masked);
    CHECK(pad > 100 && masked > 100);
    ctg_vol_free(v);
    dcm_vol_info_free(&info);
    ctg_vol_free(ref);
    return 0;
}

/* The same file twice is one slice; another image at the same place is a
 * conflict. */
static int test_duplicates(void)
{
    dcm_quiet();
    ctg_vol *ref = reference(NZ), *v = NULL;
    dcm_ct_meta m = meta_for(SERIES, "HFS", DCM_TS_EXPLICIT_LE, 0);
    CHECK_EQ_INT(write_series("s", ref, &m), 0);
    CHECK_EQ_INT(run("cp s/CT0004.dcm s/copy.dcm"), 0);
    dcm_vol_info info;
    char why[512];
    CHECK_EQ_INT(load1("s", NULL, &v, &info, why, sizeof why), 0);
    CHECK(same_volume(v, ref, 1e-4));
    ctg_vol_free(v);
    v = NULL;
    dcm_vol_info_free(&info);
    CHECK_EQ_INT(run("dcmodify -q -nb -m '(0008,0018)=" SERIES ".77' s/copy.dcm"), 0);
    CHECK_EQ_INT(load1("s", NULL, &v, &info, why, sizeof why), CTG_EREJECT);
    CHECK(strstr(why, "same position") != NULL);
    CHECK(strstr(why, "z = 107.50 mm") != NULL);
    ctg_vol_free(ref);
    return 0;
}

/* ---- fuzz smoke run ---------------------------------------------------------------- */

#define SEP "\xff\xfe" "CTGNX\x01"

/* The data set part (after the meta header) of a Part-10 file. */
static uint8_t *data_set(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n);
    if (!buf || n < 144 || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        free(buf);
        return NULL;
    }
    fclose(f);
    uint32_t glen;
    memcpy(&glen, buf + 140, 4);
    size_t off = 144 + glen;
    if (off > (size_t)n) {
        free(buf);
        return NULL;
    }
    *size = (size_t)n - off;
    memmove(buf, buf + off, *size);
    return buf;
}

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf;

static int put(buf *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = (b->n + n) * 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
    return 0;
}

/* One fuzz input: flags, then per file its transfer syntax and data set
 * (from folder dirs[f], file names[f]). */
static int make_input(buf *b, int nf, const char *const *dirs, const int *ts,
                      const char *const *names)
{
    uint8_t flags = 0;
    b->n = 0;
    if (put(b, &flags, 1) < 0) return -1;
    for (int f = 0; f < nf; f++) {
        char path[256];
        size_t n;
        snprintf(path, sizeof path, "%s/%s", dirs[f], names[f]);
        uint8_t *ds = data_set(path, &n);
        uint8_t sel = (uint8_t)ts[f];
        if (!ds) return -1;
        if ((f > 0 && put(b, SEP, 8) < 0) || put(b, &sel, 1) < 0 || put(b, ds, n) < 0) {
            free(ds);
            return -1;
        }
        free(ds);
    }
    return 0;
}

/* Offsets where each file's data set starts inside an input. */
static int chunk_starts(const buf *b, size_t *start, int cap)
{
    int n = 0;
    start[n++] = 2;
    for (size_t i = 1; i + 8 <= b->n && n < cap; i++)
        if (!memcmp(b->p + i, SEP, 8)) start[n++] = i + 9;
    return n;
}

static int test_fuzz_smoke(void)
{
    dcm_quiet();
    /* Hundreds of filled-slice notes would bury a failure in the log. */
    ctg_log_set_level(CTG_LOG_WARN);
    double t0 = ctg_mono();
    /* Four 16x12 slices in four encodings, and the same as one Enhanced CT
     * object in RLE: the decoders all get their share of broken input. */
    ctg_vol *ref = ctg_vol_new(16, 12, 4, CTG_F32);
    CHECK(ref != NULL);
    float *d = ref->data;
    for (size_t i = 0; i < ctg_vol_count(ref); i++) d[i] = (float)((int)(rnd() % 2000) - 1000);
    ref->aff[0][0] = ref->aff[1][1] = 0.7;
    ref->aff[2][2] = 3.0;
    static const char *const dirs[4] = {"f0", "f2", "f3", "f4"};
    static const int ts[4] = {DCM_TS_EXPLICIT_LE, DCM_TS_JPEG_LOSSLESS, DCM_TS_JPEGLS_LOSSLESS,
                              DCM_TS_RLE};
    for (int t = 0; t < 4; t++) {
        dcm_ct_meta m = meta_for(SERIES, "HFS", ts[t], 0);
        CHECK_EQ_INT(write_series(dirs[t], ref, &m), 0);
    }
    dcm_ct_meta me = meta_for(SERIES, "HFS", DCM_TS_RLE, 1);
    CHECK_EQ_INT(write_series("fe", ref, &me), 0);

    static const char *const names[4] = {"CT0001.dcm", "CT0002.dcm", "CT0003.dcm", "CT0004.dcm"};
    buf in = {0}, en = {0};
    CHECK_EQ_INT(make_input(&in, 4, dirs, ts, names), 0);
    static const char *const edir[1] = {"fe"};
    static const int ets[1] = {DCM_TS_RLE};
    static const char *const ename[1] = {"CT0001.dcm"};
    CHECK_EQ_INT(make_input(&en, 1, edir, ets, ename), 0);

    /* A seed corpus for the libFuzzer build, when asked for. */
    const char *corpus = getenv("CTG_FUZZ_CORPUS");
    if (corpus) {
        char path[1024];
        const buf *seeds[2] = {&in, &en};
        for (int i = 0; i < 2; i++) {
            snprintf(path, sizeof path, "%s/series-seed-%d", corpus, i);
            FILE *f = fopen(path, "wb");
            CHECK(f != NULL);
            CHECK(fwrite(seeds[i]->p, 1, seeds[i]->n, f) == seeds[i]->n);
            CHECK(fclose(f) == 0);
        }
    }

    /* The intact inputs build volumes; three of four slices with the
     * middle one gone do not (a gap), and do with filling on. */
    CHECK_EQ_INT(ctg_fuzz_series(in.p, in.n), 0);
    CHECK_EQ_INT(ctg_fuzz_series(en.p, en.n), 0);
    {
        static const char *const d3[3] = {"f0", "f2", "f4"};
        static const int t3[3] = {DCM_TS_EXPLICIT_LE, DCM_TS_JPEG_LOSSLESS, DCM_TS_RLE};
        static const char *const n3[3] = {"CT0001.dcm", "CT0003.dcm", "CT0004.dcm"};
        buf g = {0};
        CHECK_EQ_INT(make_input(&g, 3, d3, t3, n3), 0);
        CHECK(ctg_fuzz_series(g.p, g.n) != 0);
        g.p[0] = 1; /* fill missing */
        CHECK_EQ_INT(ctg_fuzz_series(g.p, g.n), 0);
        free(g.p);
    }

    uint8_t *m = malloc(in.n > en.n ? in.n : en.n);
    CHECK(m != NULL);
    int iters = 0, built = 0;
    for (int which = 0; which < 2; which++) {
        const buf *src = which ? &en : &in;
        size_t start[8];
        int nc = chunk_starts(src, start, 8);
        CHECK_EQ_INT(nc, which ? 1 : 4);
        /* Truncations of each file's data set. */
        for (int c = 0; c < nc; c++) {
            size_t endc = c + 1 < nc ? start[c + 1] - 9 : src->n;
            for (size_t cut = start[c] + 1; cut < endc; cut += (endc - start[c]) / 23 + 1) {
                memcpy(m, src->p, src->n);
                memmove(m + cut, m + endc, src->n - endc);
                if (ctg_fuzz_series(m, src->n - (endc - cut)) == 0) built++;
                iters++;
            }
        }
        /* Random byte changes in the headers of the data sets. */
        for (int i = 0; i < 500; i++) {
            memcpy(m, src->p, src->n);
            int c = (int)(rnd() % (uint32_t)nc);
            int k = 1 + (int)(rnd() % 6);
            for (int j = 0; j < k; j++) m[start[c] + rnd() % 1200] = (uint8_t)rnd();
            m[0] = (uint8_t)(rnd() & 7);
            if (ctg_fuzz_series(m, src->n) == 0) built++;
            iters++;
        }
        /* Huge and odd length fields at element-header-like positions. */
        for (size_t pos = start[0]; pos + 8 < start[0] + 1200; pos += 10) {
            memcpy(m, src->p, src->n);
            uint32_t len = (pos & 2) ? 0xfffffff0u : 0x7fff0001u + (uint32_t)pos;
            memcpy(m + pos + 4, &len, 4);
            if (ctg_fuzz_series(m, src->n) == 0) built++;
            iters++;
        }
        /* Changes deep inside the pixel data (compressed streams). */
        for (int i = 0; i < 150; i++) {
            memcpy(m, src->p, src->n);
            int c = (int)(rnd() % (uint32_t)nc);
            size_t endc = c + 1 < nc ? start[c + 1] - 9 : src->n;
            size_t span = endc - start[c];
            for (int j = 0; j < 4; j++) m[endc - 1 - rnd() % (span / 3)] = (uint8_t)rnd();
            if (ctg_fuzz_series(m, src->n) == 0) built++;
            iters++;
        }
    }
    printf("%d mutated inputs, %d still built a volume, %.1f s\n", iters, built,
           ctg_mono() - t0);
    CHECK(iters > 300);
    free(m);
    free(in.p);
    free(en.p);
    ctg_vol_free(ref);
    return 0;
}

const test_case volume_tests[] = {
    {"volume_shuffled_order", test_shuffled_order},
    {"volume_missing_slice", test_missing_slice},
    {"volume_tilt", test_tilt},
    {"volume_two_series", test_two_series},
    {"volume_localizer_and_dose", test_localizer_and_dose},
    {"volume_jpeg2000_refused", test_jpeg2000_refused},
    {"volume_roundtrip", test_roundtrip},
    {"volume_bits_stored_and_padding", test_bits_stored_and_padding},
    {"volume_duplicates", test_duplicates},
    {"volume_fuzz_smoke", test_fuzz_smoke},
    {NULL, NULL},
};
