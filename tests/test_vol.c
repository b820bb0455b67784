/*
 * test_vol.c - volumes: geometry, the canonical orientation, resampling,
 * NIfTI input/output and the `ctglip view` renderer.
 *
 * Fixture data: TotalSegmentator example data (Wasserthal et al.,
 * Radiology: AI 2023, images CC BY 4.0; repository Apache-2.0), read from
 * ../shared/fixtures/totalseg or $CTG_FIXTURES/totalseg.
 *
 * Each test runs in its own process in an empty folder (tests/runner.c).
 */
#include <math.h>
#include <png.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nifti1_io.h>

#include "core/core.h"
#include "core/organs.h"
#include "core/vol.h"
#include "tests.h"
#include "tools/tools.h"

static const char *fixture(const char *name, char *buf, size_t n)
{
    const char *fx = getenv("CTG_FIXTURES");
    if (fx)
        snprintf(buf, n, "%s/totalseg/%s", fx, name);
    else
        snprintf(buf, n, "%s/../shared/fixtures/totalseg/%s", getenv("CTG_ROOT"), name);
    return buf;
}

/* A small deterministic generator, so failures reproduce. */
static uint32_t rng_state = 12345;
static uint32_t rnd(void)
{
    rng_state = rng_state * 1664525u + 1013904223u;
    return rng_state >> 8;
}

/* Sets aff from three column vectors and an origin. */
static void set_aff(ctg_vol *v, const double c0[3], const double c1[3], const double c2[3],
                    const double o[3])
{
    for (int r = 0; r < 3; r++) {
        v->aff[r][0] = c0[r];
        v->aff[r][1] = c1[r];
        v->aff[r][2] = c2[r];
        v->aff[r][3] = o[r];
    }
}

/* ---- fixtures ------------------------------------------------------------- */

/* example_ct_sm and example_seg: one grid, the LPS form of the file's RAS
 * sform, and soft-tissue organs on soft-tissue HU. */
static int test_fixture_ct_and_labels(void)
{
    char p1[2048], p2[2048], why[1024] = "";
    ctg_vol *ct = NULL, *seg = NULL;
    CHECK_EQ_INT(ctg_nifti_read(fixture("example_ct_sm.nii.gz", p1, sizeof p1), CTG_F32, &ct, why,
                                sizeof why),
                 0);
    CHECK_EQ_INT(ctg_nifti_read(fixture("example_seg.nii.gz", p2, sizeof p2), CTG_U8, &seg, why,
                                sizeof why),
                 0);
    CHECK_EQ_INT(ct->nx, 122);
    CHECK_EQ_INT(ct->ny, 101);
    CHECK_EQ_INT(ct->nz, 30);
    CHECK(ctg_vol_same_grid(ct, seg, 1e-6));

    /* The published header: RAS sform diag(3,3,3), offset
     * (-177.956, 11.319, 94.302); LPS negates the first two rows. */
    const double want[3][4] = {{-3, 0, 0, 177.956}, {0, -3, 0, -11.319}, {0, 0, 3, 94.302}};
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++) CHECK(fabs(ct->aff[r][c] - want[r][c]) < 1e-3);
    /* And exactly the numbers libniftiio reads from the file. */
    nifti_image *nim = nifti_image_read(p1, 0);
    CHECK(nim != NULL);
    CHECK(nim->sform_code > 0);
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++) {
            double raw = nim->sto_xyz.m[r][c];
            CHECK(fabs(ct->aff[r][c] - (r < 2 ? -raw : raw)) < 1e-9);
        }
    nifti_image_free(nim);
    double sp[3];
    ctg_vol_spacing(ct, sp);
    for (int a = 0; a < 3; a++) CHECK(fabs(sp[a] - 3.0) < 1e-5);

    /* The fixture's README: 41 labels present. */
    int present[256] = {0}, npresent = 0;
    const uint8_t *lab = seg->data;
    const float *hu = ct->data;
    size_t n = ctg_vol_count(ct);
    for (size_t i = 0; i < n; i++) present[lab[i]] = 1;
    for (int l = 1; l < 256; l++) npresent += present[l];
    CHECK_EQ_INT(npresent, 41);

    const int organs[] = {1, 2, 3, 5}; /* spleen, kidneys, liver */
    for (size_t q = 0; q < sizeof organs / sizeof organs[0]; q++) {
        size_t tot = 0, soft = 0;
        for (size_t i = 0; i < n; i++) {
            if (lab[i] != organs[q]) continue;
            tot++;
            soft += hu[i] >= -100 && hu[i] <= 300;
        }
        double frac = tot ? (double)soft / tot : 0;
        printf("%-14s %6zu voxels, %.3f in -100..300 HU\n", ctg_organ_get(organs[q])->name, tot,
               frac);
        CHECK(tot > 1000);
        CHECK(frac > 0.9);
    }
    /* Bone labels, by contrast, are mostly denser than soft tissue (the
     * cancellous core of a vertebra sits near 150-250 HU at 3 mm). */
    size_t tot = 0, dense = 0;
    for (size_t i = 0; i < n; i++) {
        if (lab[i] < 30 || lab[i] > 33) continue; /* vertebrae L2..T11 */
        tot++;
        dense += hu[i] > 100;
    }
    printf("vertebrae      %6zu voxels, %.3f above 100 HU\n", tot, (double)dense / tot);
    CHECK(tot > 1000 && dense > tot * 7 / 10);
    ctg_vol_free(ct);
    ctg_vol_free(seg);
    return 0;
}

/* example_seg_dicom is stored LAS (j runs anterior); canonical() turns it
 * LPS and every voxel keeps its label and its world position. */
static int test_fixture_las_canonical(void)
{
    char p[2048], why[1024] = "";
    ctg_vol *seg = NULL;
    CHECK_EQ_INT(ctg_nifti_read(fixture("example_seg_dicom.nii.gz", p, sizeof p), CTG_U8, &seg,
                                why, sizeof why),
                 0);
    CHECK_EQ_INT(seg->nx, 512);
    CHECK_EQ_INT(seg->ny, 512);
    CHECK_EQ_INT(seg->nz, 20);
    /* RAS sform diag(-0.977, 0.977, 2) is LPS diag(0.977, -0.977, 2). */
    CHECK(fabs(seg->aff[0][0] - 0.9765625) < 1e-5);
    CHECK(fabs(seg->aff[1][1] + 0.9765625) < 1e-5);
    CHECK(fabs(seg->aff[2][2] - 2.0) < 1e-5);
    CHECK(fabs(seg->aff[0][1]) + fabs(seg->aff[1][0]) + fabs(seg->aff[2][0]) < 1e-6);

    ctg_vol *orig = ctg_vol_clone(seg);
    CHECK(orig != NULL);
    CHECK_EQ_INT(ctg_vol_canonical(seg), 0);
    CHECK(seg->aff[0][0] > 0.97 && seg->aff[1][1] > 0.97 && seg->aff[2][2] > 1.99);
    /* Every 7th voxel: the same world position holds the same label. */
    size_t checked = 0, labelled = 0;
    for (int k = 0; k < orig->nz; k += 3)
        for (int j = 0; j < orig->ny; j += 7)
            for (int i = 0; i < orig->nx; i += 7) {
                double ijk[3] = {i, j, k}, xyz[3], back[3];
                ctg_vol_world(orig, ijk, xyz);
                CHECK_EQ_INT(ctg_vol_index(seg, xyz, back), 0);
                int bi = (int)lround(back[0]), bj = (int)lround(back[1]), bk = (int)lround(back[2]);
                CHECK(fabs(back[0] - bi) < 1e-6 && fabs(back[1] - bj) < 1e-6 &&
                      fabs(back[2] - bk) < 1e-6);
                CHECK(bi >= 0 && bi < 512 && bj >= 0 && bj < 512 && bk >= 0 && bk < 20);
                CHECK_EQ_INT(bj, 511 - j); /* only j was reversed */
                int l = (int)ctg_vol_get(orig, i, j, k);
                CHECK_EQ_INT((int)ctg_vol_get(seg, bi, bj, bk), l);
                checked++;
                labelled += l != 0;
            }
    printf("%zu voxels checked, %zu labelled\n", checked, labelled);
    CHECK(labelled > 1000);
    /* In LPS order the liver (patient's right) has smaller i than the
     * spleen and the spine (posterior) larger j than the costal
     * cartilages. */
    double s[256][3] = {{0}};
    size_t cnt[256] = {0};
    const uint8_t *d = seg->data;
    size_t o = 0;
    for (int k = 0; k < seg->nz; k++)
        for (int j = 0; j < seg->ny; j++)
            for (int i = 0; i < seg->nx; i++, o++) {
                cnt[d[o]]++;
                s[d[o]][0] += i;
                s[d[o]][1] += j;
                s[d[o]][2] += k;
            }
    CHECK(cnt[5] && cnt[1] && cnt[79] && cnt[117]);
    CHECK(s[5][0] / cnt[5] < s[1][0] / cnt[1]);
    CHECK(s[79][1] / cnt[79] > s[117][1] / cnt[117]);
    ctg_vol_free(orig);
    ctg_vol_free(seg);
    return 0;
}

/* ---- canonical orientation --------------------------------------------------- */

/* A 3x4x5 volume with distinct values, already canonical (LPS, a small
 * oblique tilt), seen through each of the 48 axis permutations and flips:
 * canonical() must give back the original data and affine every time. */
static int test_canonical_48(void)
{
    const int n[3] = {3, 4, 5};
    ctg_vol *base = ctg_vol_new(n[0], n[1], n[2], CTG_I16);
    CHECK(base != NULL);
    double t = 0.2; /* radians about z: oblique but clearly closest to LPS */
    const double c0[3] = {0.7 * cos(t), 0.7 * sin(t), 0}, c1[3] = {-0.9 * sin(t), 0.9 * cos(t), 0},
                 c2[3] = {0, 0, 2.5}, org[3] = {-10.5, 20.25, -300};
    set_aff(base, c0, c1, c2, org);
    for (int k = 0; k < n[2]; k++)
        for (int j = 0; j < n[1]; j++)
            for (int i = 0; i < n[0]; i++) ctg_vol_set(base, i, j, k, 100 * k + 10 * j + i);
    ctg_vol *tmp = ctg_vol_clone(base);
    CHECK_EQ_INT(ctg_vol_canonical(tmp), 0);
    CHECK(ctg_vol_same_grid(tmp, base, 0));
    ctg_vol_free(tmp);

    const int perms[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
    int cases = 0;
    for (int p = 0; p < 6; p++) {
        for (int f = 0; f < 8; f++) {
            /* New voxel axis a is base axis perms[p][a], reversed when bit a
             * of f is set. */
            const int *pm = perms[p];
            int flip[3] = {f & 1, (f >> 1) & 1, (f >> 2) & 1};
            ctg_vol *v = ctg_vol_new(n[pm[0]], n[pm[1]], n[pm[2]], CTG_I16);
            CHECK(v != NULL);
            for (int k = 0; k < v->nz; k++)
                for (int j = 0; j < v->ny; j++)
                    for (int i = 0; i < v->nx; i++) {
                        int nidx[3] = {i, j, k}, bidx[3];
                        for (int a = 0; a < 3; a++)
                            bidx[pm[a]] = flip[a] ? n[pm[a]] - 1 - nidx[a] : nidx[a];
                        ctg_vol_set(v, i, j, k, ctg_vol_get(base, bidx[0], bidx[1], bidx[2]));
                    }
            /* Its affine: each voxel's world position is that of the base
             * voxel it holds. */
            double cols[3][3], o[3], b0[3];
            for (int a = 0; a < 3; a++) {
                b0[pm[a]] = flip[a] ? n[pm[a]] - 1 : 0;
                for (int r = 0; r < 3; r++)
                    cols[a][r] = (flip[a] ? -1 : 1) * base->aff[r][pm[a]];
            }
            ctg_vol_world(base, b0, o);
            set_aff(v, cols[0], cols[1], cols[2], o);

            CHECK_EQ_INT(ctg_vol_canonical(v), 0);
            CHECK_EQ_INT(v->nx, n[0]);
            CHECK_EQ_INT(v->ny, n[1]);
            CHECK_EQ_INT(v->nz, n[2]);
            CHECK(ctg_vol_same_grid(v, base, 1e-9));
            CHECK(memcmp(v->data, base->data, ctg_vol_count(base) * 2) == 0);
            ctg_vol_free(v);
            cases++;
        }
    }
    CHECK_EQ_INT(cases, 48);
    ctg_vol_free(base);
    return 0;
}

/* ---- resampling --------------------------------------------------------------- */

/* Test grids: anisotropic axis-aligned; flipped, permuted and shifted; and
 * oblique (rotated about two axes). */
static ctg_vol *make_grid(int which, int nx, int ny, int nz, int dtype)
{
    ctg_vol *v = ctg_vol_new(nx, ny, nz, dtype);
    if (!v) return NULL;
    if (which == 0) {
        const double c0[3] = {0.8, 0, 0}, c1[3] = {0, 0.8, 0}, c2[3] = {0, 0, 3},
                     o[3] = {-40, 25, 100};
        set_aff(v, c0, c1, c2, o);
    } else if (which == 1) {
        /* i runs towards the head, j towards the right, k anterior. */
        const double c0[3] = {0, 0, 1.25}, c1[3] = {-0.7, 0, 0}, c2[3] = {0, -2.5, 0},
                     o[3] = {33.3, -12.5, -250.75};
        set_aff(v, c0, c1, c2, o);
    } else {
        double a = 0.3, b = -0.25;
        const double c0[3] = {0.9 * cos(a), 0.9 * sin(a), 0},
                     c1[3] = {-1.1 * sin(a) * cos(b), 1.1 * cos(a) * cos(b), 1.1 * sin(b)},
                     c2[3] = {2.0 * sin(a) * sin(b), -2.0 * cos(a) * sin(b), 2.0 * cos(b)},
                     o[3] = {5, -7, 60};
        set_aff(v, c0, c1, c2, o);
    }
    return v;
}

/* Fills a float volume with a Gaussian blob (sigma mm) around world point c. */
static void fill_blob(ctg_vol *v, const double c[3], double sigma)
{
    for (int k = 0; k < v->nz; k++)
        for (int j = 0; j < v->ny; j++)
            for (int i = 0; i < v->nx; i++) {
                double ijk[3] = {i, j, k}, x[3];
                ctg_vol_world(v, ijk, x);
                double d2 = 0;
                for (int r = 0; r < 3; r++) d2 += (x[r] - c[r]) * (x[r] - c[r]);
                ctg_vol_set(v, i, j, k, 1000.0 * exp(-d2 / (2 * sigma * sigma)));
            }
}

/* The world position of the largest value. */
static void argmax_world(const ctg_vol *v, double xyz[3])
{
    double best = -INFINITY, ijk[3] = {0, 0, 0};
    for (int k = 0; k < v->nz; k++)
        for (int j = 0; j < v->ny; j++)
            for (int i = 0; i < v->nx; i++) {
                double x = ctg_vol_get(v, i, j, k);
                if (x > best) {
                    best = x;
                    ijk[0] = i;
                    ijk[1] = j;
                    ijk[2] = k;
                }
            }
    ctg_vol_world(v, ijk, xyz);
}

/* |d| along each voxel axis of v, in that axis's spacing units. */
static void along_axes(const ctg_vol *v, const double d[3], double out[3])
{
    double sp[3];
    ctg_vol_spacing(v, sp);
    for (int a = 0; a < 3; a++) {
        double dot = 0;
        for (int r = 0; r < 3; r++) dot += d[r] * v->aff[r][a] / sp[a];
        out[a] = fabs(dot) / sp[a];
    }
}

/* A marker keeps its world position through resampling: a Gaussian blob's
 * maximum (linear) and a single marked voxel's centre of mass (nearest)
 * land within half a target voxel of where they were, on three kinds of
 * grid.  The new grid keeps the first corner and the directions. */
static int test_resample_marker(void)
{
    const double targets[3][3] = {{1.5, 1.5, 1.5}, {2.0, 0.5, 1.0}, {0.6, 1.7, 1.1}};
    for (int g = 0; g < 3; g++) {
        ctg_vol *src = make_grid(g, 40, 36, 24, CTG_F32);
        CHECK(src != NULL);
        double sp[3];
        ctg_vol_spacing(src, sp);
        double mid[3] = {21, 13, 9}, c[3];
        ctg_vol_world(src, mid, c);
        c[0] += 0.3; /* not on a voxel centre */
        c[1] -= 0.2;
        fill_blob(src, c, 3.0);
        for (int t = 0; t < 3; t++) {
            ctg_vol *dst = NULL;
            CHECK_EQ_INT(ctg_vol_resample(src, targets[t], CTG_LINEAR, -1, &dst), 0);
            double dsp[3];
            ctg_vol_spacing(dst, dsp);
            const int n[3] = {src->nx, src->ny, src->nz}, dn[3] = {dst->nx, dst->ny, dst->nz};
            for (int a = 0; a < 3; a++) {
                CHECK(fabs(dsp[a] - targets[t][a]) < 1e-9);
                CHECK_EQ_INT(dn[a], (int)lround(n[a] * sp[a] / targets[t][a]));
            }
            /* Same first corner, same directions. */
            double h[3] = {-0.5, -0.5, -0.5}, ca[3], cb[3];
            ctg_vol_world(src, h, ca);
            ctg_vol_world(dst, h, cb);
            for (int r = 0; r < 3; r++) {
                CHECK(fabs(ca[r] - cb[r]) < 1e-9);
                for (int a = 0; a < 3; a++)
                    CHECK(fabs(src->aff[r][a] / sp[a] - dst->aff[r][a] / dsp[a]) < 1e-12);
            }
            double m[3], d[3], e[3];
            argmax_world(dst, m);
            for (int r = 0; r < 3; r++) d[r] = m[r] - c[r];
            along_axes(dst, d, e);
            printf("grid %d -> %.1f,%.1f,%.1f linear: max off by %.3f %.3f %.3f voxels\n", g,
                   targets[t][0], targets[t][1], targets[t][2], e[0], e[1], e[2]);
            for (int a = 0; a < 3; a++) CHECK(e[a] <= 0.5 + 1e-6);
            ctg_vol_free(dst);
        }

        /* Nearest, finer grid: one marked voxel becomes a block whose centre
         * of mass is the marked voxel's centre. */
        ctg_vol *lab = make_grid(g, 40, 36, 24, CTG_U8);
        CHECK(lab != NULL);
        ctg_vol_set(lab, 21, 13, 9, 7);
        double fine[3] = {sp[0] / 3.1, sp[1] / 2.2, sp[2] / 4.0};
        ctg_vol *dst = NULL;
        CHECK_EQ_INT(ctg_vol_resample(lab, fine, CTG_NEAREST, 0, &dst), 0);
        double sum[3] = {0, 0, 0};
        size_t cnt = 0;
        for (int k = 0; k < dst->nz; k++)
            for (int j = 0; j < dst->ny; j++)
                for (int i = 0; i < dst->nx; i++) {
                    int val = (int)ctg_vol_get(dst, i, j, k);
                    CHECK(val == 0 || val == 7);
                    if (!val) continue;
                    double ijk[3] = {i, j, k}, x[3];
                    ctg_vol_world(dst, ijk, x);
                    for (int r = 0; r < 3; r++) sum[r] += x[r];
                    cnt++;
                }
        CHECK(cnt >= 2 * 2 * 3);
        double want[3], d[3], e[3];
        ctg_vol_world(lab, mid, want);
        for (int r = 0; r < 3; r++) d[r] = sum[r] / cnt - want[r];
        along_axes(dst, d, e);
        printf("grid %d nearest: %zu voxels, centre off by %.3f %.3f %.3f voxels\n", g, cnt, e[0],
               e[1], e[2]);
        for (int a = 0; a < 3; a++) CHECK(e[a] <= 0.5 + 1e-6);
        ctg_vol_free(dst);
        ctg_vol_free(lab);
        ctg_vol_free(src);
    }
    return 0;
}

/* Trilinear interpolation reproduces a linear function of world position
 * exactly, so every target voxel inside the source must carry the value of
 * that function at its own centre: a check of the geometry of each path
 * (separable, separable with permuted axes, general oblique). */
static int test_resample_linear_exact(void)
{
    for (int g = 0; g < 3; g++) {
        ctg_vol *src = make_grid(g, 30, 26, 20, CTG_F32);
        CHECK(src != NULL);
        for (int k = 0; k < src->nz; k++)
            for (int j = 0; j < src->ny; j++)
                for (int i = 0; i < src->nx; i++) {
                    double ijk[3] = {i, j, k}, x[3];
                    ctg_vol_world(src, ijk, x);
                    ctg_vol_set(src, i, j, k, 2.0 * x[0] - 3.0 * x[1] + 0.5 * x[2] + 7);
                }
        size_t outside_all = 0;
        for (int h = 0; h < 4; h++) {
            ctg_vol *dst = NULL;
            if (h == 0) {
                const double s[3] = {1.3, 0.45, 1.9};
                CHECK_EQ_INT(ctg_vol_resample(src, s, CTG_LINEAR, -9999, &dst), 0);
            } else {
                /* Onto another kind of grid, centred on the source. */
                ctg_vol *grid = make_grid((g + h) % 3, 25, 22, 18, CTG_U8);
                CHECK(grid != NULL);
                double cs[3] = {14.5, 12.5, 9.5}, cg[3] = {12, 10.5, 8.5}, ws[3], wg[3];
                ctg_vol_world(src, cs, ws);
                ctg_vol_world(grid, cg, wg);
                for (int r = 0; r < 3; r++) grid->aff[r][3] += ws[r] - wg[r];
                CHECK_EQ_INT(ctg_vol_resample_to(src, grid, CTG_LINEAR, -9999, &dst), 0);
                CHECK(ctg_vol_same_grid(dst, grid, 0));
                CHECK_EQ_INT(dst->dtype, CTG_F32);
                ctg_vol_free(grid);
            }
            size_t inside = 0, outside = 0;
            double worst = 0;
            for (int k = 0; k < dst->nz; k++)
                for (int j = 0; j < dst->ny; j++)
                    for (int i = 0; i < dst->nx; i++) {
                        double ijk[3] = {i, j, k}, x[3], si[3];
                        ctg_vol_world(dst, ijk, x);
                        CHECK_EQ_INT(ctg_vol_index(src, x, si), 0);
                        int in = 1, out = 0;
                        const int n[3] = {src->nx, src->ny, src->nz};
                        for (int a = 0; a < 3; a++) {
                            if (si[a] < 1e-6 || si[a] > n[a] - 1 - 1e-6) in = 0;
                            if (si[a] < -0.5 - 1e-4 || si[a] > n[a] - 0.5 + 1e-4) out = 1;
                        }
                        double got = ctg_vol_get(dst, i, j, k);
                        if (out) {
                            CHECK(got == -9999);
                            outside++;
                        } else if (in) {
                            double want = 2.0 * x[0] - 3.0 * x[1] + 0.5 * x[2] + 7;
                            worst = fmax(worst, fabs(got - want));
                            inside++;
                        }
                    }
            printf("grid %d case %d: %zu inside, %zu outside, worst error %.2e\n", g, h, inside,
                   outside, worst);
            CHECK(inside > 1000);
            CHECK(worst < 2e-3); /* float arithmetic on values of a few hundred */
            outside_all += outside;
            ctg_vol_free(dst);
        }
        CHECK(outside_all > 0); /* the fill value was exercised */
        ctg_vol_free(src);
    }
    return 0;
}

/* resample_to round trips: onto a reordered copy of the same grid and back
 * is exact; to twice the resolution and back with nearest is exact; linear
 * to a finer grid and back stays close for a smooth image. */
static int test_resample_to_roundtrip(void)
{
    ctg_vol *lab = make_grid(1, 21, 17, 13, CTG_U8);
    CHECK(lab != NULL);
    uint8_t *d = lab->data;
    for (size_t i = 0; i < ctg_vol_count(lab); i++) d[i] = (uint8_t)(rnd() % 118);

    /* The same voxels in canonical order: resample_to must agree with
     * canonical() voxel for voxel, and back again. */
    ctg_vol *canon = ctg_vol_clone(lab), *a = NULL, *b = NULL;
    CHECK(canon != NULL);
    CHECK_EQ_INT(ctg_vol_canonical(canon), 0);
    CHECK(!ctg_vol_same_grid(canon, lab, 1e-3));
    CHECK_EQ_INT(ctg_vol_resample_to(lab, canon, CTG_NEAREST, 255, &a), 0);
    CHECK(memcmp(a->data, canon->data, ctg_vol_count(lab)) == 0);
    CHECK_EQ_INT(ctg_vol_resample_to(a, lab, CTG_LINEAR, 255, &b), 0);
    CHECK(memcmp(b->data, lab->data, ctg_vol_count(lab)) == 0);
    ctg_vol_free(a);
    ctg_vol_free(b);

    /* Twice as fine and back. */
    double sp[3], half[3];
    ctg_vol_spacing(lab, sp);
    for (int q = 0; q < 3; q++) half[q] = sp[q] / 2;
    CHECK_EQ_INT(ctg_vol_resample(lab, half, CTG_NEAREST, 0, &a), 0);
    CHECK_EQ_INT(a->nx, 42);
    CHECK_EQ_INT(a->ny, 34);
    CHECK_EQ_INT(a->nz, 26);
    CHECK_EQ_INT(ctg_vol_resample_to(a, lab, CTG_NEAREST, 255, &b), 0);
    CHECK(memcmp(b->data, lab->data, ctg_vol_count(lab)) == 0);
    ctg_vol_free(a);
    ctg_vol_free(b);

    /* A smooth image through an oblique finer grid and back. */
    ctg_vol *img = make_grid(0, 40, 40, 20, CTG_F32);
    CHECK(img != NULL);
    double cen[3] = {19.5, 19.5, 9.5}, c[3];
    ctg_vol_world(img, cen, c);
    fill_blob(img, c, 8.0);
    ctg_vol *grid = make_grid(2, 60, 60, 60, CTG_U8);
    CHECK(grid != NULL);
    double gc[3] = {29.5, 29.5, 29.5}, w[3];
    ctg_vol_world(grid, gc, w);
    for (int r = 0; r < 3; r++) grid->aff[r][3] += c[r] - w[r];
    CHECK_EQ_INT(ctg_vol_resample_to(img, grid, CTG_LINEAR, 0, &a), 0);
    CHECK_EQ_INT(ctg_vol_resample_to(a, img, CTG_LINEAR, 0, &b), 0);
    double worst = 0;
    for (int k = 6; k < 14; k++)
        for (int j = 10; j < 30; j++)
            for (int i = 10; i < 30; i++)
                worst = fmax(worst, fabs(ctg_vol_get(b, i, j, k) - ctg_vol_get(img, i, j, k)));
    printf("linear round trip through an oblique grid: worst %.2f of 1000\n", worst);
    /* Each linear pass flattens the peak by about curvature * h^2 / 8
     * (1000 / 8^2 * 3^2 / 8 = 18 along the 3 mm axis). */
    CHECK(worst < 40);
    ctg_vol_free(a);
    ctg_vol_free(b);
    ctg_vol_free(grid);
    ctg_vol_free(img);
    ctg_vol_free(canon);
    ctg_vol_free(lab);
    return 0;
}

/* A CT-sized volume (512 x 512 x 160 float, 0.78 x 0.78 x 1.25 mm) to
 * 1.5 mm: checks the fast path is taken (well under a second here). */
static int test_resample_speed(void)
{
    ctg_vol *v = ctg_vol_new(512, 512, 160, CTG_F32);
    CHECK(v != NULL);
    const double c0[3] = {0.78, 0, 0}, c1[3] = {0, 0.78, 0}, c2[3] = {0, 0, 1.25},
                 o[3] = {-200, -200, -100};
    set_aff(v, c0, c1, c2, o);
    float *d = v->data;
    for (size_t i = 0; i < ctg_vol_count(v); i++) d[i] = (float)(i % 1000);
    const double s[3] = {1.5, 1.5, 1.5};
    ctg_vol *out = NULL;
    double t0 = ctg_mono();
    CHECK_EQ_INT(ctg_vol_resample(v, s, CTG_LINEAR, -1024, &out), 0);
    double t1 = ctg_mono();
    ctg_vol *lab = NULL, *lab2 = NULL;
    CHECK((lab = ctg_vol_convert(v, CTG_U8)) != NULL);
    double t2 = ctg_mono();
    CHECK_EQ_INT(ctg_vol_resample(lab, s, CTG_NEAREST, 0, &lab2), 0);
    double t3 = ctg_mono();
    printf("512x512x160 -> %dx%dx%d: linear %.3f s, nearest (u8) %.3f s\n", out->nx, out->ny,
           out->nz, t1 - t0, t3 - t2);
    CHECK_EQ_INT(out->nx, 266);
    CHECK_EQ_INT(out->nz, 133);
    /* Generous: sanitizer builds and busy CI machines are slow. */
    CHECK(t1 - t0 < 8);
    ctg_vol_free(out);
    ctg_vol_free(lab);
    ctg_vol_free(lab2);
    ctg_vol_free(v);
    return 0;
}

/* ---- NIfTI ---------------------------------------------------------------------- */

/* F32, U8 and I16 through .nii and .nii.gz: data exact, affine within
 * 1e-4 mm, qform consistent with the sform. */
static int test_nifti_roundtrip(void)
{
    const int types[3] = {CTG_F32, CTG_U8, CTG_I16};
    const char *ext[2] = {".nii", ".nii.gz"};
    for (int t = 0; t < 3; t++) {
        for (int e = 0; e < 2; e++) {
            ctg_vol *v = make_grid(t == 1 ? 1 : 2, 17, 12, 9, types[t]);
            CHECK(v != NULL);
            for (size_t i = 0; i < ctg_vol_count(v); i++) {
                uint32_t r = rnd();
                if (types[t] == CTG_F32)
                    ((float *)v->data)[i] = (float)((double)r / 3000.0 - 1500.0);
                else if (types[t] == CTG_U8)
                    ((uint8_t *)v->data)[i] = (uint8_t)r;
                else
                    ((int16_t *)v->data)[i] = (int16_t)(r & 0xffff);
            }
            char path[64], why[1024] = "";
            /* x.nii and x.nii.gz side by side on purpose: libniftiio's
             * loader would take x.nii's voxels for x.nii.gz. */
            snprintf(path, sizeof path, "vol%d%s", t, ext[e]);
            CHECK_EQ_INT(ctg_nifti_write(path, v, why, sizeof why), 0);
            ctg_vol *back = NULL;
            int rc = ctg_nifti_read(path, types[t], &back, why, sizeof why);
            if (rc) fprintf(stderr, "%s\n", why);
            CHECK_EQ_INT(rc, 0);
            CHECK_EQ_INT(back->dtype, types[t]);
            CHECK_EQ_INT(back->nx, 17);
            CHECK_EQ_INT(back->ny, 12);
            CHECK_EQ_INT(back->nz, 9);
            CHECK(memcmp(back->data, v->data, ctg_vol_count(v) * ctg_dtype_size(types[t])) == 0);
            CHECK(ctg_vol_same_grid(back, v, 1e-4));

            /* What other readers see: a compressed file when asked, the
             * header's type, pixdim = spacing, and a qform giving the same
             * transform as the sform. */
            FILE *f = fopen(path, "rb");
            CHECK(f != NULL);
            int b0 = fgetc(f), b1 = fgetc(f);
            fclose(f);
            CHECK_EQ_INT(b0 == 0x1f && b1 == 0x8b, e == 1);
            nifti_image *nim = nifti_image_read(path, 0);
            CHECK(nim != NULL);
            CHECK_EQ_INT(nim->datatype, types[t] == CTG_F32 ? DT_FLOAT32
                                        : types[t] == CTG_U8 ? DT_UINT8
                                                             : DT_INT16);
            CHECK_EQ_INT(nim->sform_code, NIFTI_XFORM_SCANNER_ANAT);
            CHECK_EQ_INT(nim->qform_code, NIFTI_XFORM_SCANNER_ANAT);
            CHECK_EQ_INT(nim->xyz_units, NIFTI_UNITS_MM);
            double sp[3];
            ctg_vol_spacing(v, sp);
            CHECK(fabs(nim->dx - sp[0]) < 1e-5 && fabs(nim->dy - sp[1]) < 1e-5 &&
                  fabs(nim->dz - sp[2]) < 1e-5);
            for (int r = 0; r < 3; r++)
                for (int c = 0; c < 4; c++) {
                    CHECK(fabs(nim->qto_xyz.m[r][c] - nim->sto_xyz.m[r][c]) < 1e-4);
                    double lps = r < 2 ? -nim->sto_xyz.m[r][c] : nim->sto_xyz.m[r][c];
                    CHECK(fabs(lps - v->aff[r][c]) < 1e-4);
                }
            nifti_image_free(nim);
            ctg_vol_free(back);
            ctg_vol_free(v);
        }
    }
    /* A float volume of whole numbers reads as labels; scaling applies. */
    ctg_vol *f = ctg_vol_new(4, 3, 2, CTG_F32);
    CHECK(f != NULL);
    for (size_t i = 0; i < 24; i++) ((float *)f->data)[i] = (float)(i * 10);
    char why[1024];
    CHECK_EQ_INT(ctg_nifti_write("labels_f.nii", f, why, sizeof why), 0);
    ctg_vol *l = NULL;
    CHECK_EQ_INT(ctg_nifti_read("labels_f.nii", CTG_U8, &l, why, sizeof why), 0);
    CHECK_EQ_INT(((uint8_t *)l->data)[23], 230);
    ctg_vol_free(l);
    ctg_vol_free(f);
    return 0;
}

static int write_bytes(const char *path, const void *buf, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(buf, 1, n, f);
    return fclose(f) == 0 && w == n ? 0 : -1;
}

static int read_bytes(const char *path, unsigned char **buf, size_t *n)
{
    struct stat st;
    FILE *f = fopen(path, "rb");
    if (!f || fstat(fileno(f), &st) != 0) return -1;
    *n = (size_t)st.st_size;
    *buf = malloc(*n + 1);
    size_t r = fread(*buf, 1, *n, f);
    fclose(f);
    return r == *n ? 0 : -1;
}

/* Bad files give an error code and a reason, never a crash or a volume. */
static int test_nifti_bad_input(void)
{
    char why[1024];
    ctg_vol *v = NULL;

    why[0] = 0;
    CHECK_EQ_INT(ctg_nifti_read("missing.nii.gz", CTG_F32, &v, why, sizeof why), CTG_EIO);
    CHECK(v == NULL && why[0]);
    printf("missing: %s\n", why);

    unsigned char junk[4096];
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (unsigned char)rnd();
    CHECK_EQ_INT(write_bytes("junk.nii", junk, sizeof junk), 0);
    why[0] = 0;
    CHECK_EQ_INT(ctg_nifti_read("junk.nii", CTG_F32, &v, why, sizeof why), CTG_EFORMAT);
    CHECK(v == NULL && why[0]);
    printf("garbage: %s\n", why);
    CHECK_EQ_INT(write_bytes("junk.nii.gz", junk, sizeof junk), 0);
    CHECK(ctg_nifti_read("junk.nii.gz", CTG_F32, &v, why, sizeof why) < 0);
    CHECK(v == NULL);
    CHECK_EQ_INT(write_bytes("empty.nii", junk, 0), 0);
    CHECK(ctg_nifti_read("empty.nii", CTG_F32, &v, why, sizeof why) < 0);
    CHECK(v == NULL);

    /* Truncated: a good file cut in half, plain and compressed. */
    ctg_vol *good = make_grid(0, 32, 32, 16, CTG_I16);
    CHECK(good != NULL);
    for (size_t i = 0; i < ctg_vol_count(good); i++) ((int16_t *)good->data)[i] = (int16_t)rnd();
    CHECK_EQ_INT(ctg_nifti_write("good.nii", good, why, sizeof why), 0);
    CHECK_EQ_INT(ctg_nifti_write("good.nii.gz", good, why, sizeof why), 0);
    const char *names[2][2] = {{"good.nii", "cut.nii"}, {"good.nii.gz", "cut.nii.gz"}};
    for (int q = 0; q < 2; q++) {
        unsigned char *buf;
        size_t n;
        CHECK_EQ_INT(read_bytes(names[q][0], &buf, &n), 0);
        CHECK_EQ_INT(write_bytes(names[q][1], buf, n / 2), 0);
        why[0] = 0;
        CHECK_EQ_INT(ctg_nifti_read(names[q][1], CTG_I16, &v, why, sizeof why), CTG_EFORMAT);
        CHECK(v == NULL && why[0]);
        printf("truncated %s: %s\n", names[q][1], why);
        /* Only the header left, and half the header. */
        CHECK_EQ_INT(write_bytes(names[q][1], buf, q ? 200 : 352), 0);
        CHECK(ctg_nifti_read(names[q][1], CTG_I16, &v, why, sizeof why) < 0);
        CHECK(v == NULL);
        free(buf);
    }

    /* A 4-D series of two volumes is not a volume. */
    {
        unsigned char *buf;
        size_t n;
        CHECK_EQ_INT(read_bytes("good.nii", &buf, &n), 0);
        nifti_1_header h;
        memcpy(&h, buf, sizeof h);
        h.dim[0] = 4;
        h.dim[3] = 8;
        h.dim[4] = 2;
        memcpy(buf, &h, sizeof h);
        CHECK_EQ_INT(write_bytes("4d.nii", buf, n), 0);
        why[0] = 0;
        CHECK_EQ_INT(ctg_nifti_read("4d.nii", CTG_I16, &v, why, sizeof why), CTG_EFORMAT);
        CHECK(v == NULL && why[0]);
        printf("4-D: %s\n", why);
        /* A zero spacing cannot place voxels. */
        memcpy(&h, buf, sizeof h);
        h.dim[0] = 3;
        h.dim[3] = 16;
        h.dim[4] = 1;
        memset(h.srow_x, 0, sizeof h.srow_x);
        memcpy(buf, &h, sizeof h);
        CHECK_EQ_INT(write_bytes("flat.nii", buf, n), 0);
        CHECK_EQ_INT(ctg_nifti_read("flat.nii", CTG_I16, &v, why, sizeof why), CTG_EFORMAT);
        CHECK(v == NULL);
        printf("degenerate: %s\n", why);
        free(buf);
    }

    /* A label map holding 300 is not a U8 label map; nor is 2.5; nor is
     * an int16 read as labels when it has negatives. */
    ctg_vol *bad = ctg_vol_new(5, 5, 5, CTG_I16);
    CHECK(bad != NULL);
    ctg_vol_set(bad, 1, 2, 3, 300);
    CHECK_EQ_INT(ctg_nifti_write("lab300.nii.gz", bad, why, sizeof why), 0);
    why[0] = 0;
    CHECK_EQ_INT(ctg_nifti_read("lab300.nii.gz", CTG_U8, &v, why, sizeof why), CTG_EFORMAT);
    CHECK(v == NULL);
    CHECK(strstr(why, "300") != NULL);
    printf("label 300: %s\n", why);
    /* The same file is a fine I16 or F32 volume. */
    CHECK_EQ_INT(ctg_nifti_read("lab300.nii.gz", CTG_F32, &v, why, sizeof why), 0);
    CHECK(ctg_vol_get(v, 1, 2, 3) == 300);
    ctg_vol_free(v);
    v = NULL;
    ctg_vol *frac = ctg_vol_new(5, 5, 5, CTG_F32);
    CHECK(frac != NULL);
    ctg_vol_set(frac, 0, 0, 0, 2.5);
    CHECK_EQ_INT(ctg_nifti_write("frac.nii", frac, why, sizeof why), 0);
    CHECK_EQ_INT(ctg_nifti_read("frac.nii", CTG_U8, &v, why, sizeof why), CTG_EFORMAT);
    CHECK(v == NULL);
    ctg_vol_set(frac, 0, 0, 0, -1);
    CHECK_EQ_INT(ctg_nifti_write("neg.nii", frac, why, sizeof why), 0);
    CHECK_EQ_INT(ctg_nifti_read("neg.nii", CTG_U8, &v, why, sizeof why), CTG_EFORMAT);
    CHECK(v == NULL);

    /* Writing where it cannot be written reports, and leaves nothing. */
    why[0] = 0;
    CHECK_EQ_INT(ctg_nifti_write("no/such/dir/x.nii", bad, why, sizeof why), CTG_EIO);
    CHECK(why[0]);
    printf("unwritable: %s\n", why);
    ctg_vol_free(frac);
    ctg_vol_free(bad);
    ctg_vol_free(good);
    return 0;
}

/* ---- view ------------------------------------------------------------------------- */

typedef struct png_img {
    int w, h;
    uint8_t *rgb;
} png_img;

static int read_png(const char *path, png_img *img)
{
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    unsigned char sig[8];
    if (fread(sig, 1, 8, f) != 8 || png_sig_cmp(sig, 0, 8)) {
        fclose(f);
        return -1;
    }
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    img->rgb = NULL;
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        fclose(f);
        free(img->rgb);
        return -1;
    }
    png_init_io(png, f);
    png_set_sig_bytes(png, 8);
    png_read_info(png, info);
    if (png_get_bit_depth(png, info) != 8 || png_get_color_type(png, info) != PNG_COLOR_TYPE_RGB)
        png_error(png, "not 8-bit RGB");
    img->w = (int)png_get_image_width(png, info);
    img->h = (int)png_get_image_height(png, info);
    img->rgb = malloc((size_t)img->w * img->h * 3);
    for (int y = 0; y < img->h; y++) png_read_row(png, img->rgb + (size_t)y * img->w * 3, NULL);
    png_read_end(png, NULL);
    png_destroy_read_struct(&png, &info, NULL);
    fclose(f);
    return 0;
}

/* Mean column and row of the pixels of exactly colour rgb inside the
 * columns [x0, x1); returns the pixel count. */
static size_t colour_at(const png_img *im, const uint8_t rgb[3], int x0, int x1, double *mx,
                        double *my)
{
    size_t n = 0;
    double sx = 0, sy = 0;
    for (int y = 0; y < im->h; y++)
        for (int x = x0; x < x1; x++) {
            const uint8_t *p = im->rgb + 3 * ((size_t)y * im->w + x);
            if (p[0] == rgb[0] && p[1] == rgb[1] && p[2] == rgb[2]) {
                n++;
                sx += x - x0;
                sy += y;
            }
        }
    *mx = n ? sx / n : -1;
    *my = n ? sy / n : -1;
    return n;
}

/* The slice index along `axis` (of a canonical label map) holding the most
 * voxels of both labels a and b (the larger of the two smaller counts). */
static int best_slice(const ctg_vol *lab, int axis, int a, int b)
{
    const int n[3] = {lab->nx, lab->ny, lab->nz};
    int best = 0;
    long bestv = -1;
    for (int s = 0; s < n[axis]; s++) {
        long ca = 0, cb = 0;
        int idx[3];
        for (idx[2] = 0; idx[2] < n[2]; idx[2]++)
            for (idx[1] = 0; idx[1] < n[1]; idx[1]++)
                for (idx[0] = 0; idx[0] < n[0]; idx[0]++) {
                    if (idx[axis] != s) continue;
                    int l = (int)ctg_vol_get(lab, idx[0], idx[1], idx[2]);
                    ca += l == a;
                    cb += l == b;
                }
        long m = ca < cb ? ca : cb;
        if (m > bestv) {
            bestv = m;
            best = s;
        }
    }
    return best;
}

/* `ctglip view` on the fixture CT and labels: a valid 8-bit RGB PNG of the
 * expected size with coloured label pixels, and the anatomy the right way
 * round in each panel (radiological convention). */
static int test_view_png(void)
{
    char ct[2048], seg[2048], why[1024];
    fixture("example_ct_sm.nii.gz", ct, sizeof ct);
    fixture("example_seg.nii.gz", seg, sizeof seg);

    /* Default rendering: expected size from the 3 mm grid, 366 x 303 x 90 mm:
     * the tallest panel (303 mm) is --size pixels. */
    char *args1[] = {"view", "--size", "256", "--out", "a.png", ct, seg, NULL};
    CHECK_EQ_INT(ctg_view_main(7, args1), 0);
    png_img im;
    CHECK_EQ_INT(read_png("a.png", &im), 0);
    double mmpp = 303.0 / 256;
    int wa = (int)lround(366 / mmpp), hc = (int)lround(90 / mmpp), ws = (int)lround(303 / mmpp);
    printf("a.png: %d x %d (panels %d, %d, %d wide; coronal %d high)\n", im.w, im.h, wa, wa, ws,
           hc);
    CHECK_EQ_INT(im.h, 256);
    CHECK_EQ_INT(im.w, wa + 4 + wa + 4 + ws);
    size_t coloured = 0, total = (size_t)im.w * im.h;
    for (size_t i = 0; i < total; i++) {
        const uint8_t *p = im.rgb + 3 * i;
        coloured += p[0] != p[1] || p[1] != p[2];
    }
    printf("coloured pixels: %zu of %zu\n", coloured, total);
    CHECK(coloured > 2000);
    /* Below the coronal panel is background. */
    const uint8_t *below = im.rgb + 3 * ((size_t)(hc + 5) * im.w + wa + 4 + wa / 2);
    CHECK(below[0] == 0 && below[1] == 0 && below[2] == 0);
    free(im.rgb);

    /* Orientation: opaque labels (alpha 1) so organ colours are exact, and
     * slices through the organs compared. */
    ctg_vol *lab = NULL;
    CHECK_EQ_INT(ctg_nifti_read(seg, CTG_U8, &lab, why, sizeof why), 0);
    CHECK_EQ_INT(ctg_vol_canonical(lab), 0);
    int k = best_slice(lab, 2, 5, 1);   /* axial through liver and spleen */
    int j = best_slice(lab, 1, 5, 14);  /* coronal: liver, right lower lobe */
    int i = best_slice(lab, 0, 30, 32); /* sagittal: L2 and T12 */
    ctg_vol_free(lab);
    char slice[64];
    snprintf(slice, sizeof slice, "%d,%d,%d", i, j, k);
    char *args2[] = {"view", "--slice", slice, "--alpha", "1", "--size", "303", "--out", "b.png",
                     ct, seg, NULL};
    CHECK_EQ_INT(ctg_view_main(11, args2), 0);
    CHECK_EQ_INT(read_png("b.png", &im), 0);
    CHECK_EQ_INT(im.h, 303);
    /* With 1 mm pixels the panels are 366, 366 and 303 wide. */
    CHECK_EQ_INT(im.w, 366 + 4 + 366 + 4 + 303);
    const int ax0 = 0, ax1 = 366, co0 = 370, co1 = 736, sa0 = 740, sa1 = im.w;
    double lx, ly, sx, sy, ux, uy, tx, ty;
    const uint8_t *liver = ctg_organ_get(5)->rgb, *spleen = ctg_organ_get(1)->rgb;
    const uint8_t *lung = ctg_organ_get(14)->rgb, *l2 = ctg_organ_get(30)->rgb,
                  *t12 = ctg_organ_get(32)->rgb;
    /* Axial: the liver (patient's right) on the image's left, the spleen on
     * its right. */
    CHECK(colour_at(&im, liver, ax0, ax1, &lx, &ly) > 500);
    CHECK(colour_at(&im, spleen, ax0, ax1, &sx, &sy) > 100);
    printf("axial k=%d: liver x %.0f, spleen x %.0f\n", k, lx, sx);
    CHECK(lx < 183 && sx > 183);
    /* Coronal: the right lung above the liver, both on the image's left. */
    CHECK(colour_at(&im, liver, co0, co1, &lx, &ly) > 200);
    CHECK(colour_at(&im, lung, co0, co1, &ux, &uy) > 20);
    printf("coronal j=%d: liver y %.0f, lung y %.0f, x %.0f %.0f\n", j, ly, uy, lx, ux);
    CHECK(uy < ly);
    CHECK(lx < 183 && ux < 183);
    /* Sagittal: T12 above L2; the vertebrae in the back half (right). */
    CHECK(colour_at(&im, l2, sa0, sa1, &sx, &sy) > 20);
    CHECK(colour_at(&im, t12, sa0, sa1, &tx, &ty) > 20);
    printf("sagittal i=%d: T12 y %.0f, L2 y %.0f, x %.0f %.0f\n", i, ty, sy, tx, sx);
    CHECK(ty < sy);
    CHECK(tx > 151 && sx > 151);
    free(im.rgb);

    /* Errors: usage is 2, a missing file or a bad slice is 1. */
    char *bad1[] = {"view", ct, NULL};
    CHECK_EQ_INT(ctg_view_main(2, bad1), 2);
    char *bad2[] = {"view", "--out", "c.png", "nonexistent.nii.gz", NULL};
    CHECK_EQ_INT(ctg_view_main(4, bad2), 1);
    char *bad3[] = {"view", "--slice", "0,0,30", "--out", "c.png", ct, NULL};
    CHECK_EQ_INT(ctg_view_main(6, bad3), 1);
    char *bad4[] = {"view", "--window", "40,-5", "--out", "c.png", ct, NULL};
    CHECK_EQ_INT(ctg_view_main(6, bad4), 2);
    CHECK(access("c.png", F_OK) != 0);
    return 0;
}

/* The LAS label map with its 512x512x20 grid: labels resampled onto a
 * CT grid that differs (here the label map's own grid in another voxel
 * order and spacing), and the panels keep 0.98 x 0.98 x 2 mm proportions. */
static int test_view_anisotropic(void)
{
    char seg[2048], why[1024];
    fixture("example_seg_dicom.nii.gz", seg, sizeof seg);
    ctg_vol *lab = NULL, *ct = NULL;
    CHECK_EQ_INT(ctg_nifti_read(seg, CTG_U8, &lab, why, sizeof why), 0);
    /* A stand-in CT on a coarser grid: soft tissue where labelled, air
     * elsewhere. */
    const double s[3] = {1.953125, 1.953125, 2.0};
    CHECK_EQ_INT(ctg_vol_resample(lab, s, CTG_NEAREST, 0, &ct), 0);
    ctg_vol *ctf = ctg_vol_convert(ct, CTG_F32);
    CHECK(ctf != NULL);
    float *d = ctf->data;
    for (size_t q = 0; q < ctg_vol_count(ctf); q++) d[q] = d[q] > 0 ? 40.0f : -1000.0f;
    CHECK_EQ_INT(ctg_nifti_write("ct.nii.gz", ctf, why, sizeof why), 0);
    /* A wide window, so that air is grey rather than background black. */
    char *args[] = {"view", "--window", "0,4000", "--size", "500", "--out", "d.png",
                    "ct.nii.gz", seg, NULL};
    CHECK_EQ_INT(ctg_view_main(9, args), 0);
    png_img im;
    CHECK_EQ_INT(read_png("d.png", &im), 0);
    /* 500 x 500 x 40 mm: axial 500 x 500, coronal and sagittal 500 x 40. */
    printf("d.png: %d x %d\n", im.w, im.h);
    CHECK_EQ_INT(im.h, 500);
    CHECK_EQ_INT(im.w, 500 * 3 + 8);
    /* The coronal panel is 40 pixels high: row 39 drawn, row 41 empty. */
    const uint8_t *in = im.rgb + 3 * ((size_t)39 * im.w + 504 + 250);
    const uint8_t *out = im.rgb + 3 * ((size_t)41 * im.w + 504 + 250);
    CHECK(in[0] || in[1] || in[2]);
    CHECK(!out[0] && !out[1] && !out[2]);
    free(im.rgb);
    ctg_vol_free(ctf);
    ctg_vol_free(ct);
    ctg_vol_free(lab);
    return 0;
}

const test_case vol_tests[] = {
    {"vol_fixture_ct_and_labels", test_fixture_ct_and_labels},
    {"vol_fixture_las_canonical", test_fixture_las_canonical},
    {"vol_canonical_48", test_canonical_48},
    {"vol_resample_marker", test_resample_marker},
    {"vol_resample_linear_exact", test_resample_linear_exact},
    {"vol_resample_to_roundtrip", test_resample_to_roundtrip},
    {"vol_resample_speed", test_resample_speed},
    {"vol_nifti_roundtrip", test_nifti_roundtrip},
    {"vol_nifti_bad_input", test_nifti_bad_input},
    {"vol_view_png", test_view_png},
    {"vol_view_anisotropic", test_view_anisotropic},
    {NULL, NULL},
};
