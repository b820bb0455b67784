/*
 * volume.c - `ctglip volume`: turns the DICOM files of a study (files or
 * folders, searched recursively) into one CT volume in Hounsfield units with
 * the same series choice, sorting and checks the inference worker uses
 * (dcm_series_volume), optionally resamples it, and writes it as NIfTI.
 * It prints which series was chosen and why the others were not, so an
 * admin can see what the worker would see.
 *
 * Single-threaded command-line code.
 */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/core.h"
#include "core/vol.h"
#include "dicom/dicom.h"
#include "tools/tools.h"

/* Checks v against a reference NIfTI file (brought to canonical orientation
 * first): the same grid, and with `values` HU within tol.  Prints what it
 * found; returns 0 when it matches. */
static int compare(const ctg_vol *v, const char *path, int values, double tol)
{
    char why[512];
    ctg_vol *ref = NULL;
    if (ctg_nifti_read(path, CTG_F32, &ref, why, sizeof why) < 0 || ctg_vol_canonical(ref) < 0) {
        fprintf(stderr, "ctglip volume: %s: %s\n", path, why);
        ctg_vol_free(ref);
        return 1;
    }
    int rc = 0;
    if (!ctg_vol_same_grid(v, ref, 0.01)) {
        printf("%s: different grid (%dx%dx%d)\n", path, ref->nx, ref->ny, ref->nz);
        rc = 1;
    } else if (!values) {
        printf("%s: same grid\n", path);
    } else {
        const float *a = v->data, *b = ref->data;
        double worst = 0;
        size_t n = ctg_vol_count(v), bad = 0;
        for (size_t k = 0; k < n; k++) {
            double d = fabs((double)a[k] - (double)b[k]);
            if (d > worst) worst = d;
            if (d > tol) bad++;
        }
        printf("%s: same grid, max |HU difference| %g\n", path, worst);
        if (bad) {
            printf("%s: %zu voxels differ by more than %g HU\n", path, bad, tol);
            rc = 1;
        }
    }
    ctg_vol_free(ref);
    return rc;
}

static int usage(void)
{
    fprintf(stderr,
            "usage: ctglip volume [--series UID] [--fill N] [--spacing MM[,MM,MM]]\n"
            "                     --out FILE.nii[.gz] DICOM-FILE-OR-DIR...\n"
            "  Builds the CT volume (HU, canonical LPS orientation) a study's primary\n"
            "  series makes, as the inference worker does, and writes it as NIfTI.\n"
            "  --series UID   use this series instead of picking the primary one\n"
            "  --fill N       fill up to N consecutive missing slices by interpolation\n"
            "                 (default: a missing slice rejects the series)\n"
            "  --spacing MM   resample (trilinear) to this voxel size; one value for\n"
            "                 all axes or three for i,j,k\n"
            "  --compare REF.nii[.gz]       check the volume against a reference CT:\n"
            "                 same grid (within 0.01 mm) and HU within --tolerance\n"
            "  --compare-grid REF.nii[.gz]  check only the grid (e.g. a label map)\n"
            "  --tolerance HU  largest HU difference --compare accepts (default 0.5)\n"
            "  Exit status 1 when a check fails.\n");
    return 2;
}

int ctg_volume_main(int argc, char **argv)
{
    dcm_vol_opts opts = {0};
    const char *out = NULL;
    double spacing[3] = {0, 0, 0};
    const char *cmp[8];
    int cmp_values[8], ncmp = 0;
    double tolerance = 0.5;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "--series") && i + 1 < argc) {
            opts.series_uid = argv[++i];
        } else if (!strcmp(argv[i], "--fill") && i + 1 < argc) {
            opts.fill_missing = 1;
            opts.max_fill = atoi(argv[++i]);
            if (opts.max_fill < 1) return usage();
        } else if (!strcmp(argv[i], "--spacing") && i + 1 < argc) {
            int k = sscanf(argv[++i], "%lf,%lf,%lf", &spacing[0], &spacing[1], &spacing[2]);
            if (k == 1) spacing[1] = spacing[2] = spacing[0];
            else if (k != 3) return usage();
            if (!(spacing[0] > 0 && spacing[1] > 0 && spacing[2] > 0)) return usage();
        } else if ((!strcmp(argv[i], "--compare") || !strcmp(argv[i], "--compare-grid")) &&
                   i + 1 < argc && ncmp < 8) {
            cmp_values[ncmp] = !strcmp(argv[i], "--compare");
            cmp[ncmp++] = argv[++i];
        } else if (!strcmp(argv[i], "--tolerance") && i + 1 < argc) {
            tolerance = atof(argv[++i]);
        } else if (!strcmp(argv[i], "--out") && i + 1 < argc) {
            out = argv[++i];
        } else {
            return usage();
        }
    }
    if (!out || i >= argc) return usage();

    ctg_file_list files = {0};
    ctg_vol *vol = NULL, *res = NULL;
    dcm_vol_info info;
    memset(&info, 0, sizeof info);
    char why[1024] = "";
    int rc = 1;
    for (; i < argc; i++)
        if (ctg_collect_files(&files, argv[i], 0) < 0) {
            fprintf(stderr, "ctglip volume: %s: cannot read it\n", argv[i]);
            goto done;
        }
    if (files.n == 0) {
        fprintf(stderr, "ctglip volume: no files\n");
        goto done;
    }

    dcm_global_init();
    dcm_quiet();
    if (dcm_series_volume((const char *const *)files.v, files.n, &opts, &vol, &info, why,
                          sizeof why) < 0) {
        fprintf(stderr, "ctglip volume: %s\n", why);
        goto done;
    }
    double sp[3];
    ctg_vol_spacing(vol, sp);
    printf("series %s (#%d, %s): %d slices%s, %dx%dx%d voxels of %.4gx%.4gx%.4g mm\n",
           info.series_uid, info.series_number, info.series_desc[0] ? info.series_desc : "-",
           info.nslices, info.enhanced ? " (Enhanced CT)" : "", vol->nx, vol->ny, vol->nz,
           sp[0], sp[1], sp[2]);
    if (info.filled) printf("filled %d missing slice(s) by interpolation\n", info.filled);
    if (info.skipped[0]) printf("not used:\n%s%s", info.skipped,
                                info.skipped[strlen(info.skipped) - 1] == '\n' ? "" : "\n");
    if (spacing[0] > 0) {
        if (ctg_vol_resample(vol, spacing, CTG_LINEAR, -1024.0, &res) < 0) {
            fprintf(stderr, "ctglip volume: resampling failed (out of memory?)\n");
            goto done;
        }
        printf("resampled to %dx%dx%d voxels of %.4gx%.4gx%.4g mm\n", res->nx, res->ny,
               res->nz, spacing[0], spacing[1], spacing[2]);
    }
    if (ctg_nifti_write(out, res ? res : vol, why, sizeof why) < 0) {
        fprintf(stderr, "ctglip volume: %s\n", why);
        goto done;
    }
    printf("wrote %s\n", out);
    rc = 0;
    for (int c = 0; c < ncmp; c++)
        if (compare(res ? res : vol, cmp[c], cmp_values[c], tolerance) != 0) rc = 1;
done:
    ctg_vol_free(res);
    ctg_vol_free(vol);
    dcm_vol_info_free(&info);
    ctg_file_list_free(&files);
    return rc;
}
