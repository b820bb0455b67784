/*
 * test_ctvol.c - CT volumes end to end: the real fixture slices become a
 * volume on the grid of TotalSegmentator's own label map for them, and
 * phantom studies survive DICOM write + read in every patient position and
 * transfer syntax with their label maps still aligned.
 *
 * Fixture data: TotalSegmentator example data (Wasserthal et al., CC BY 4.0;
 * repository Apache-2.0), ../shared/fixtures/totalseg.
 */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "core/organs.h"
#include "core/vol.h"
#include "dicom/dicom.h"
#include "tests.h"
#include "tools/tools.h"

static const char *fixtures(char *buf, size_t n)
{
    const char *fx = getenv("CTG_FIXTURES");
    if (fx) snprintf(buf, n, "%s/totalseg", fx);
    else snprintf(buf, n, "%s/../shared/fixtures/totalseg", getenv("CTG_ROOT"));
    return buf;
}

/* The regular files of a folder, sorted; returns the count (<= cap). */
static size_t list_dir(const char *dir, char **out, size_t cap)
{
    DIR *d = opendir(dir);
    size_t n = 0;
    if (!d) return 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < cap) {
        if (e->d_name[0] == '.') continue;
        char p[2048];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        out[n++] = strdup(p);
    }
    closedir(d);
    return n;
}

static int load_dicom_dir(const char *dir, ctg_vol **vol, dcm_vol_info *info)
{
    char *files[4096];
    size_t n = list_dir(dir, files, 4096);
    char why[1024] = "";
    dcm_vol_opts opts = {0};
    dcm_global_init();
    dcm_quiet();
    int rc = dcm_series_volume((const char *const *)files, n, &opts, vol, info, why, sizeof why);
    if (rc < 0) fprintf(stderr, "%s: %s\n", dir, why);
    for (size_t i = 0; i < n; i++) free(files[i]);
    return rc;
}

/* (a) The 20 real slices (JPEG 2000 in the fixture, decompressed by
 * tests/fixture.sh as a PACS would send them) become a volume whose grid
 * and affine match example_seg_dicom.nii.gz, and soft-tissue organ labels
 * land on soft-tissue HU. */
static int test_fixture_dicom_matches_label_map(void)
{
    char cmd[4096], fx[1024], path[2048], why[512];
    snprintf(cmd, sizeof cmd, "sh '%s/tests/fixture.sh' slices >/dev/null", getenv("CTG_ROOT"));
    CHECK(system(cmd) == 0);

    ctg_vol *ct = NULL, *seg = NULL;
    dcm_vol_info info;
    memset(&info, 0, sizeof info);
    CHECK_EQ_INT(load_dicom_dir("slices", &ct, &info), 0);
    CHECK_EQ_INT(info.nslices, 20);
    CHECK_EQ_INT(ct->nx, 512);
    CHECK_EQ_INT(ct->ny, 512);
    CHECK_EQ_INT(ct->nz, 20);

    snprintf(path, sizeof path, "%s/example_seg_dicom.nii.gz", fixtures(fx, sizeof fx));
    CHECK_EQ_INT(ctg_nifti_read(path, CTG_U8, &seg, why, sizeof why), 0);
    CHECK_EQ_INT(ctg_vol_canonical(seg), 0);
    printf("volume aff (LPS):\n");
    for (int r = 0; r < 3; r++)
        printf("  %10.5f %10.5f %10.5f %12.5f   label map %10.5f %10.5f %10.5f %12.5f\n",
               ct->aff[r][0], ct->aff[r][1], ct->aff[r][2], ct->aff[r][3], seg->aff[r][0],
               seg->aff[r][1], seg->aff[r][2], seg->aff[r][3]);
    /* The label map's header stores the affine as float32. */
    CHECK(ctg_vol_same_grid(ct, seg, 1e-3));
    /* Canonical LPS: i towards the left, j posterior, k head. */
    CHECK(ct->aff[0][0] > 0 && ct->aff[1][1] > 0 && ct->aff[2][2] > 0);
    double sp[3];
    ctg_vol_spacing(ct, sp);
    CHECK(fabs(sp[0] - 0.9765625) < 1e-6 && fabs(sp[2] - 2.0) < 1e-6);

    /* Soft-tissue organs (parenchyma and muscle) on soft-tissue HU. */
    static const char *const soft[] = {
        "liver", "spleen", "kidney_left", "kidney_right", "pancreas", "urinary_bladder",
        "prostate", "gluteus_maximus_left", "gluteus_maximus_right", "gluteus_medius_left",
        "gluteus_medius_right", "gluteus_minimus_left", "gluteus_minimus_right",
        "iliopsoas_left", "iliopsoas_right", "autochthon_left", "autochthon_right", "heart"};
    uint8_t is_soft[256] = {0};
    for (size_t s = 0; s < sizeof soft / sizeof soft[0]; s++) is_soft[ctg_organ_id(soft[s])] = 1;
    const float *hu = ct->data;
    const uint8_t *lab = seg->data;
    size_t nsoft = 0, inrange = 0, nbone = 0, bone_dense = 0, n = ctg_vol_count(ct);
    int present[256] = {0};
    for (size_t v = 0; v < n; v++) {
        present[lab[v]]++;
        if (is_soft[lab[v]]) {
            nsoft++;
            if (hu[v] >= -100 && hu[v] <= 300) inrange++;
        }
        const ctg_organ *o = ctg_organ_get(lab[v]);
        if (o && (strncmp(o->name, "hip_", 4) == 0 || strncmp(o->name, "femur_", 6) == 0 ||
                  strcmp(o->name, "sacrum") == 0 || strncmp(o->name, "vertebrae_", 10) == 0)) {
            nbone++;
            if (hu[v] > 150) bone_dense++;
        }
    }
    printf("labels present:");
    for (int l = 1; l < 256; l++)
        if (present[l]) printf(" %s(%d)", ctg_organ_get(l) ? ctg_organ_get(l)->name : "?", present[l]);
    printf("\nsoft-tissue organ voxels on -100..300 HU: %zu of %zu (%.3f)\n", inrange, nsoft,
           nsoft ? (double)inrange / (double)nsoft : 0.0);
    printf("bone voxels above 150 HU: %zu of %zu (%.3f)\n", bone_dense, nbone,
           nbone ? (double)bone_dense / (double)nbone : 0.0);
    CHECK(nsoft > 10000);
    CHECK((double)inrange / (double)nsoft > 0.9);
    /* A flipped axis would put labels on the wrong tissue: bone labels
     * must sit on dense voxels too. */
    if (nbone > 1000) CHECK((double)bone_dense / (double)nbone > 0.6);
    ctg_vol_free(ct);
    ctg_vol_free(seg);
    dcm_vol_info_free(&info);
    return 0;
}


/* One phantom study in the given position and syntax (the flags that do
 * not apply are replaced by a repeated --nifti, which is harmless). */
static int phantom(const char *out, const char *position, const char *ts, int enhanced,
                   int is_unsigned)
{
    return tu_phantom("--seed", "5", "--count", "1", "--matrix", "64", "--thickness", "6",
                      "--fov", "abdomen", "--abnormal-rate", "1", "--nifti", "--position",
                      position, "--ts", ts, enhanced ? "--enhanced" : "--nifti",
                      is_unsigned ? "--unsigned" : "--nifti", "--out", out, NULL);
}

/* (c) Phantom round trip: for every patient position and transfer syntax
 * (and Enhanced CT, and unsigned pixels) the DICOM series read back is the
 * phantom's own HU volume, voxel for voxel, on the grid of its label map;
 * supine head-first and feet-first (and the two prone ones) give the same
 * canonical volume although the files store the pixels mirrored. */
static int test_phantom_roundtrip(void)
{
    static const char *const pos[] = {"HFS", "FFS", "HFP", "FFP"};
    static const char *const tss[] = {"explicit", "implicit", "jpeg-lossless", "jpeg-ls", "rle"};
    static const char *const ts_uid[] = {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2",
                                         "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
                                         "1.2.840.10008.1.2.5"};
    ctg_vol *first[2] = {NULL, NULL}; /* supine, prone */
    int cases = 0;
    for (int p = 0; p < 4; p++) {
        for (int t = 0; t < 7; t++) {
            /* t 0..4: each syntax, single-frame; 5: Enhanced CT (JPEG
             * lossless); 6: unsigned pixels (RLE). */
            int enhanced = t == 5, is_unsigned = t == 6;
            const char *ts = t < 5 ? tss[t] : t == 5 ? "jpeg-lossless" : "rle";
            char out[256], dir[300], path[320], why[512];
            snprintf(out, sizeof out, "ph-%s-%d", pos[p], t);
            CHECK_EQ_INT(phantom(out, pos[p], ts, enhanced, is_unsigned), 0);

            ctg_vol *dv = NULL, *ct = NULL, *lab = NULL;
            dcm_vol_info info;
            memset(&info, 0, sizeof info);
            snprintf(dir, sizeof dir, "%s/case_0000/dicom", out);
            CHECK_EQ_INT(load_dicom_dir(dir, &dv, &info), 0);
            CHECK_EQ_INT(info.enhanced, enhanced);
            CHECK(strcmp(info.patient_position, pos[p]) == 0);

            /* The files really are in the syntax asked for. */
            char *files[4];
            size_t nf = list_dir(dir, files, 1);
            CHECK(nf == 1);
            ctg_instance inst;
            CHECK_EQ_INT(dcm_read_instance(files[0], &inst, why, sizeof why), 0);
            free(files[0]);
            const char *want_ts = t < 5 ? ts_uid[t] : t == 5 ? ts_uid[2] : ts_uid[4];
            if (strcmp(inst.transfer_syntax, want_ts) != 0) {
                fprintf(stderr, "%s: transfer syntax %s, wanted %s\n", out, inst.transfer_syntax,
                        want_ts);
                return 1;
            }

            snprintf(path, sizeof path, "%s/case_0000/ct.nii.gz", out);
            CHECK_EQ_INT(ctg_nifti_read(path, CTG_F32, &ct, why, sizeof why), 0);
            CHECK_EQ_INT(ctg_vol_canonical(ct), 0);
            snprintf(path, sizeof path, "%s/case_0000/labels.nii.gz", out);
            CHECK_EQ_INT(ctg_nifti_read(path, CTG_U8, &lab, why, sizeof why), 0);
            CHECK_EQ_INT(ctg_vol_canonical(lab), 0);
            CHECK(ctg_vol_same_grid(dv, ct, 1e-3));
            CHECK(ctg_vol_same_grid(dv, lab, 1e-3));

            /* Voxel for voxel; unsigned pixels cannot hold values below
             * -1024 HU (intercept -1024), so those read back as -1024. */
            const float *a = dv->data, *b = ct->data;
            size_t n = ctg_vol_count(dv), bad = 0;
            for (size_t v = 0; v < n; v++) {
                float want = is_unsigned && b[v] < -1024.0f ? -1024.0f : b[v];
                if (a[v] != want) bad++;
            }
            if (bad) {
                fprintf(stderr, "%s: %zu of %zu voxels differ from ct.nii.gz\n", out, bad, n);
                return 1;
            }
            /* Labels sit on the tissue they name: liver voxels are liver HU. */
            const uint8_t *l = lab->data;
            int liver = ctg_organ_id("liver");
            double sum = 0;
            size_t nl = 0;
            for (size_t v = 0; v < n; v++)
                if (l[v] == liver) {
                    sum += a[v];
                    nl++;
                }
            CHECK(nl > 100);
            CHECK(sum / (double)nl > -60 && sum / (double)nl < 150);

            int prone = pos[p][2] == 'P';
            if (!first[prone]) {
                first[prone] = dv;
                dv = NULL;
            } else if (!is_unsigned) {
                CHECK(ctg_vol_same_grid(first[prone], dv, 1e-6));
                CHECK(memcmp(first[prone]->data, dv->data, n * sizeof(float)) == 0);
            }
            cases++;
            ctg_vol_free(dv);
            ctg_vol_free(ct);
            ctg_vol_free(lab);
            dcm_vol_info_free(&info);
        }
    }
    printf("%d phantom studies written and read back identically\n", cases);
    ctg_vol_free(first[0]);
    ctg_vol_free(first[1]);
    return 0;
}

const test_case ctvol_tests[] = {
    {"ctvol_phantom_roundtrip", test_phantom_roundtrip},
    {"ctvol_fixture_dicom_matches_label_map", test_fixture_dicom_matches_label_map},
    {NULL, NULL},
};
