/*
 * vol.c - 3-D volumes: allocation, element access, voxel <-> world geometry,
 * reorientation to the canonical (LPS) voxel order and resampling.
 *
 * Resampling maps every target voxel to a continuous source index through
 * M = inverse(source affine) * target affine.  When M only scales, shifts
 * and permutes axes (always so for ctg_vol_resample, and for resample_to
 * between grids that share directions) the work is separable: each target
 * axis gets a precomputed table of source offsets and weights and the inner
 * loop is a handful of loads.  Any other M takes the general path, which
 * evaluates the source index per voxel.
 *
 * A voxel is taken to fill the box of one spacing around its centre, so a
 * sample point is "inside" the source when it lies within half a voxel of
 * the outermost centres; there the nearest edge value is used, and only
 * beyond it the caller's fill value.
 *
 * Threading: none; a volume belongs to one thread at a time.  Functions
 * here keep no state of their own.
 */
#include "core/vol.h"
#include "core/core.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The largest volume accepted: 2^31 elements (8 GiB of float) is far above
 * any CT and keeps index arithmetic well inside size_t and double. */
#define VOL_MAX_ELEMS ((size_t)1 << 31)

/* How far (in source voxels) a sample may stray past the half-voxel border
 * and still count as inside; absorbs rounding in the affine arithmetic. */
#define EDGE_EPS 1e-6

size_t ctg_dtype_size(int dtype)
{
    switch (dtype) {
    case CTG_F32:
        return sizeof(float);
    case CTG_U8:
        return sizeof(uint8_t);
    case CTG_I16:
        return sizeof(int16_t);
    default:
        return 0;
    }
}

size_t ctg_vol_count(const ctg_vol *v)
{
    return (size_t)v->nx * (size_t)v->ny * (size_t)v->nz;
}

ctg_vol *ctg_vol_new(int nx, int ny, int nz, int dtype)
{
    size_t es = ctg_dtype_size(dtype);
    if (es == 0 || nx <= 0 || ny <= 0 || nz <= 0) return NULL;
    size_t n = (size_t)nx * (size_t)ny;
    if (n > VOL_MAX_ELEMS / (size_t)nz) return NULL;
    n *= (size_t)nz;

    ctg_vol *v = calloc(1, sizeof *v);
    if (!v) return NULL;
    v->data = calloc(n, es);
    if (!v->data) {
        free(v);
        return NULL;
    }
    v->nx = nx;
    v->ny = ny;
    v->nz = nz;
    v->dtype = dtype;
    for (int r = 0; r < 3; r++) v->aff[r][r] = 1.0;
    return v;
}

void ctg_vol_free(ctg_vol *v)
{
    if (!v) return;
    free(v->data);
    free(v);
}

ctg_vol *ctg_vol_clone(const ctg_vol *v)
{
    ctg_vol *c = ctg_vol_new(v->nx, v->ny, v->nz, v->dtype);
    if (!c) return NULL;
    memcpy(c->data, v->data, ctg_vol_count(v) * ctg_dtype_size(v->dtype));
    memcpy(c->aff, v->aff, sizeof c->aff);
    return c;
}

/* Rounds half away from zero and clamps into [lo, hi]; NaN becomes 0 so
 * that a broken float volume cannot produce an undefined conversion. */
static inline double round_clamp(double x, double lo, double hi)
{
    if (x != x) return 0;
    x = round(x);
    return x < lo ? lo : x > hi ? hi : x;
}

static inline uint8_t to_u8(double x) { return (uint8_t)round_clamp(x, 0, 255); }
static inline int16_t to_i16(double x) { return (int16_t)round_clamp(x, -32768, 32767); }

static inline double load(const void *data, int dtype, size_t idx)
{
    switch (dtype) {
    case CTG_F32:
        return ((const float *)data)[idx];
    case CTG_U8:
        return ((const uint8_t *)data)[idx];
    case CTG_I16:
        return ((const int16_t *)data)[idx];
    default:
        return 0;
    }
}

static inline void store(void *data, int dtype, size_t idx, double val)
{
    switch (dtype) {
    case CTG_F32:
        ((float *)data)[idx] = (float)val;
        break;
    case CTG_U8:
        ((uint8_t *)data)[idx] = to_u8(val);
        break;
    case CTG_I16:
        ((int16_t *)data)[idx] = to_i16(val);
        break;
    default:
        break;
    }
}

ctg_vol *ctg_vol_convert(const ctg_vol *v, int dtype)
{
    if (v->dtype == dtype) return ctg_vol_clone(v);
    ctg_vol *c = ctg_vol_new(v->nx, v->ny, v->nz, dtype);
    if (!c) return NULL;
    memcpy(c->aff, v->aff, sizeof c->aff);
    size_t n = ctg_vol_count(v);
    for (size_t i = 0; i < n; i++) store(c->data, dtype, i, load(v->data, v->dtype, i));
    return c;
}

/* ---- geometry ------------------------------------------------------------ */

void ctg_vol_spacing(const ctg_vol *v, double sp[3])
{
    for (int c = 0; c < 3; c++)
        sp[c] = sqrt(v->aff[0][c] * v->aff[0][c] + v->aff[1][c] * v->aff[1][c] +
                     v->aff[2][c] * v->aff[2][c]);
}

void ctg_vol_world(const ctg_vol *v, const double ijk[3], double xyz[3])
{
    for (int r = 0; r < 3; r++)
        xyz[r] = v->aff[r][0] * ijk[0] + v->aff[r][1] * ijk[1] + v->aff[r][2] * ijk[2] +
                 v->aff[r][3];
}

/* Inverts the 3x4 affine a (linear part and translation) into inv.
 * Returns CTG_EINVAL when the linear part is singular relative to its own
 * scale, so that a degenerate header cannot yield infinite indices. */
static int aff_inverse(const double a[3][4], double inv[3][4])
{
    double c[3][3];
    c[0][0] = a[1][1] * a[2][2] - a[1][2] * a[2][1];
    c[0][1] = a[0][2] * a[2][1] - a[0][1] * a[2][2];
    c[0][2] = a[0][1] * a[1][2] - a[0][2] * a[1][1];
    c[1][0] = a[1][2] * a[2][0] - a[1][0] * a[2][2];
    c[1][1] = a[0][0] * a[2][2] - a[0][2] * a[2][0];
    c[1][2] = a[0][2] * a[1][0] - a[0][0] * a[1][2];
    c[2][0] = a[1][0] * a[2][1] - a[1][1] * a[2][0];
    c[2][1] = a[0][1] * a[2][0] - a[0][0] * a[2][1];
    c[2][2] = a[0][0] * a[1][1] - a[0][1] * a[1][0];
    double det = a[0][0] * c[0][0] + a[0][1] * c[1][0] + a[0][2] * c[2][0];
    double scale = 0;
    for (int r = 0; r < 3; r++)
        for (int k = 0; k < 3; k++) scale = fmax(scale, fabs(a[r][k]));
    if (!(scale > 0) || !(fabs(det) > 1e-12 * scale * scale * scale) || !isfinite(det))
        return CTG_EINVAL;
    for (int r = 0; r < 3; r++)
        for (int k = 0; k < 3; k++) inv[r][k] = c[r][k] / det;
    for (int r = 0; r < 3; r++)
        inv[r][3] = -(inv[r][0] * a[0][3] + inv[r][1] * a[1][3] + inv[r][2] * a[2][3]);
    return 0;
}

int ctg_vol_index(const ctg_vol *v, const double xyz[3], double ijk[3])
{
    double inv[3][4];
    int rc = aff_inverse(v->aff, inv);
    if (rc < 0) return rc;
    for (int r = 0; r < 3; r++)
        ijk[r] = inv[r][0] * xyz[0] + inv[r][1] * xyz[1] + inv[r][2] * xyz[2] + inv[r][3];
    return 0;
}

static inline size_t offset_of(const ctg_vol *v, int i, int j, int k)
{
    return (size_t)i + (size_t)v->nx * ((size_t)j + (size_t)v->ny * (size_t)k);
}

double ctg_vol_get(const ctg_vol *v, int i, int j, int k)
{
    return load(v->data, v->dtype, offset_of(v, i, j, k));
}

void ctg_vol_set(ctg_vol *v, int i, int j, int k, double val)
{
    store(v->data, v->dtype, offset_of(v, i, j, k), val);
}

int ctg_vol_same_grid(const ctg_vol *a, const ctg_vol *b, double tol)
{
    if (a->nx != b->nx || a->ny != b->ny || a->nz != b->nz) return 0;
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++)
            if (!(fabs(a->aff[r][c] - b->aff[r][c]) <= tol)) return 0;
    return 1;
}

/* ---- canonical orientation ---------------------------------------------- */

/* Chooses, for each world axis w (LPS x, y, z), the voxel axis perm[w] whose
 * direction is closest to it and whether it runs against it (flip[w]).  The
 * pairing is greedy on the largest absolute direction cosine, as nibabel's
 * io_orientation does: the strongest alignment is fixed first, so an
 * oblique series goes to the axis it is nearest, and ties resolve in a
 * fixed order.  Axes of zero length (a broken affine) pair up in order. */
static void closest_axes(const double aff[3][4], int perm[3], int flip[3])
{
    double cosv[3][3]; /* [world][voxel] */
    for (int c = 0; c < 3; c++) {
        double len = sqrt(aff[0][c] * aff[0][c] + aff[1][c] * aff[1][c] + aff[2][c] * aff[2][c]);
        for (int r = 0; r < 3; r++) cosv[r][c] = len > 0 ? aff[r][c] / len : 0;
    }
    int used_w[3] = {0, 0, 0}, used_v[3] = {0, 0, 0};
    for (int step = 0; step < 3; step++) {
        int bw = -1, bv = -1;
        double best = -1;
        for (int w = 0; w < 3; w++) {
            if (used_w[w]) continue;
            for (int c = 0; c < 3; c++) {
                if (used_v[c]) continue;
                if (fabs(cosv[w][c]) > best) {
                    best = fabs(cosv[w][c]);
                    bw = w;
                    bv = c;
                }
            }
        }
        used_w[bw] = used_v[bv] = 1;
        perm[bw] = bv;
        flip[bw] = cosv[bw][bv] < 0;
    }
}

int ctg_vol_canonical(ctg_vol *v)
{
    int perm[3], flip[3];
    closest_axes(v->aff, perm, flip);
    if (perm[0] == 0 && perm[1] == 1 && perm[2] == 2 && !flip[0] && !flip[1] && !flip[2])
        return 0;

    const int n[3] = {v->nx, v->ny, v->nz};
    const size_t stride[3] = {1, (size_t)v->nx, (size_t)v->nx * (size_t)v->ny};
    int nn[3];
    ptrdiff_t step[3];
    size_t base = 0;
    double first[3] = {0, 0, 0}; /* source index of the new voxel (0,0,0) */
    for (int a = 0; a < 3; a++) {
        int p = perm[a];
        nn[a] = n[p];
        step[a] = flip[a] ? -(ptrdiff_t)stride[p] : (ptrdiff_t)stride[p];
        if (flip[a]) {
            base += (size_t)(n[p] - 1) * stride[p];
            first[p] = n[p] - 1;
        }
    }

    size_t es = ctg_dtype_size(v->dtype);
    unsigned char *dst = malloc(ctg_vol_count(v) * es);
    if (!dst) return CTG_ENOMEM;
    const unsigned char *src = v->data;
    size_t o = 0;
    for (int k = 0; k < nn[2]; k++) {
        for (int j = 0; j < nn[1]; j++) {
            ptrdiff_t s = (ptrdiff_t)base + k * step[2] + j * step[1];
            switch (es) {
            case 1:
                for (int i = 0; i < nn[0]; i++, s += step[0]) dst[o++] = src[s];
                break;
            case 2:
                for (int i = 0; i < nn[0]; i++, s += step[0], o++)
                    ((int16_t *)dst)[o] = ((const int16_t *)src)[s];
                break;
            default:
                for (int i = 0; i < nn[0]; i++, s += step[0], o++)
                    ((float *)dst)[o] = ((const float *)src)[s];
                break;
            }
        }
    }

    double aff[3][4];
    double origin[3];
    ctg_vol_world(v, first, origin);
    for (int r = 0; r < 3; r++) {
        for (int a = 0; a < 3; a++)
            aff[r][a] = flip[a] ? -v->aff[r][perm[a]] : v->aff[r][perm[a]];
        aff[r][3] = origin[r];
    }
    free(v->data);
    v->data = dst;
    v->nx = nn[0];
    v->ny = nn[1];
    v->nz = nn[2];
    memcpy(v->aff, aff, sizeof aff);
    return 0;
}

/* ---- resampling ---------------------------------------------------------- */

/* Per target axis: where each target index lands in the source, as element
 * offsets (already multiplied by the source stride) of the two neighbours
 * and the weight of the upper one, or ok = 0 outside the source. */
typedef struct axis_tab {
    size_t *lo, *hi;
    float *w;
    unsigned char *ok;
} axis_tab;

static void axis_tab_free(axis_tab *t)
{
    free(t->lo);
    free(t->hi);
    free(t->w);
    free(t->ok);
}

/* Fills t for n target indices whose source coordinate along a source axis
 * of length ns and stride st is x = scale * i + shift. */
static int axis_tab_fill(axis_tab *t, int n, double scale, double shift, int ns, size_t st,
                         int interp)
{
    t->lo = malloc((size_t)n * sizeof *t->lo);
    t->hi = malloc((size_t)n * sizeof *t->hi);
    t->w = malloc((size_t)n * sizeof *t->w);
    t->ok = malloc((size_t)n);
    if (!t->lo || !t->hi || !t->w || !t->ok) return CTG_ENOMEM;
    for (int i = 0; i < n; i++) {
        double x = scale * i + shift;
        t->ok[i] = x >= -0.5 - EDGE_EPS && x <= ns - 0.5 + EDGE_EPS;
        if (!t->ok[i]) {
            /* Never read, but keep the entries defined (and x, which may be
             * huge, out of any integer conversion). */
            t->lo[i] = t->hi[i] = 0;
            t->w[i] = 0;
            continue;
        }
        long i0, i1;
        double w = 0;
        if (interp == CTG_NEAREST) {
            i0 = (long)floor(x + 0.5);
            if (i0 < 0) i0 = 0;
            if (i0 > ns - 1) i0 = ns - 1;
            i1 = i0;
        } else {
            double xc = x < 0 ? 0 : x > ns - 1 ? ns - 1 : x;
            i0 = (long)floor(xc);
            if (i0 > ns - 2) i0 = ns > 1 ? ns - 2 : 0;
            i1 = ns > 1 ? i0 + 1 : 0;
            w = ns > 1 ? xc - (double)i0 : 0;
        }
        t->lo[i] = (size_t)i0 * st;
        t->hi[i] = (size_t)i1 * st;
        t->w[i] = (float)w;
    }
    return 0;
}

/* One kernel per element type, for the separable case.  Linear blends the
 * eight neighbours in float (ample for HU and for the U8/I16 results, which
 * are rounded); nearest copies. */
#define SEP_KERNEL(NAME, T, STORE)                                                  \
    static void NAME(const T *s, T *d, const axis_tab t[3], const int n[3],         \
                     int linear, T fillv)                                           \
    {                                                                               \
        size_t o = 0;                                                               \
        for (int k = 0; k < n[2]; k++) {                                            \
            for (int j = 0; j < n[1]; j++) {                                        \
                if (!t[2].ok[k] || !t[1].ok[j]) {                                   \
                    for (int i = 0; i < n[0]; i++) d[o++] = fillv;                  \
                    continue;                                                       \
                }                                                                   \
                size_t b00 = t[2].lo[k] + t[1].lo[j];                               \
                if (!linear) {                                                      \
                    for (int i = 0; i < n[0]; i++, o++)                             \
                        d[o] = t[0].ok[i] ? s[b00 + t[0].lo[i]] : fillv;            \
                    continue;                                                       \
                }                                                                   \
                size_t b01 = t[2].lo[k] + t[1].hi[j];                               \
                size_t b10 = t[2].hi[k] + t[1].lo[j];                               \
                size_t b11 = t[2].hi[k] + t[1].hi[j];                               \
                float wz = t[2].w[k], wy = t[1].w[j];                               \
                float c00 = (1 - wz) * (1 - wy), c01 = (1 - wz) * wy;               \
                float c10 = wz * (1 - wy), c11 = wz * wy;                           \
                for (int i = 0; i < n[0]; i++, o++) {                               \
                    if (!t[0].ok[i]) {                                              \
                        d[o] = fillv;                                               \
                        continue;                                                   \
                    }                                                               \
                    size_t x0 = t[0].lo[i], x1 = t[0].hi[i];                        \
                    float wx = t[0].w[i];                                           \
                    float v0 = c00 * (float)s[b00 + x0] + c01 * (float)s[b01 + x0] + \
                               c10 * (float)s[b10 + x0] + c11 * (float)s[b11 + x0]; \
                    float v1 = c00 * (float)s[b00 + x1] + c01 * (float)s[b01 + x1] + \
                               c10 * (float)s[b10 + x1] + c11 * (float)s[b11 + x1]; \
                    d[o] = STORE(v0 + wx * (v1 - v0));                              \
                }                                                                   \
            }                                                                       \
        }                                                                           \
    }

#define STORE_F32(x) (x)
#define STORE_U8(x) to_u8(x)
#define STORE_I16(x) to_i16(x)
SEP_KERNEL(sep_f32, float, STORE_F32)
SEP_KERNEL(sep_u8, uint8_t, STORE_U8)
SEP_KERNEL(sep_i16, int16_t, STORE_I16)

/* Separable resampling: target axis a reads source axis src_axis[a] at
 * x = scale[a] * index + shift[a]. */
static int resample_separable(const ctg_vol *src, ctg_vol *dst, const int src_axis[3],
                              const double scale[3], const double shift[3], int interp,
                              double fill)
{
    const int ns[3] = {src->nx, src->ny, src->nz};
    const size_t st[3] = {1, (size_t)src->nx, (size_t)src->nx * (size_t)src->ny};
    const int nd[3] = {dst->nx, dst->ny, dst->nz};
    axis_tab t[3];
    memset(t, 0, sizeof t);
    int rc = 0;
    for (int a = 0; a < 3; a++) {
        int p = src_axis[a];
        rc = axis_tab_fill(&t[a], nd[a], scale[a], shift[a], ns[p], st[p], interp);
        if (rc < 0) goto fail;
    }
    int linear = interp == CTG_LINEAR;
    switch (src->dtype) {
    case CTG_F32:
        sep_f32(src->data, dst->data, t, nd, linear, (float)fill);
        break;
    case CTG_U8:
        sep_u8(src->data, dst->data, t, nd, linear, to_u8(fill));
        break;
    case CTG_I16:
        sep_i16(src->data, dst->data, t, nd, linear, to_i16(fill));
        break;
    default:
        rc = CTG_EINVAL;
        break;
    }
fail:
    for (int a = 0; a < 3; a++) axis_tab_free(&t[a]);
    return rc;
}

/* General path: target index (i,j,k) reads the source at m * (i,j,k,1). */
static void resample_general(const ctg_vol *src, ctg_vol *dst, const double m[3][4], int interp,
                             double fill)
{
    const int ns[3] = {src->nx, src->ny, src->nz};
    const size_t st[3] = {1, (size_t)src->nx, (size_t)src->nx * (size_t)src->ny};
    size_t o = 0;
    for (int k = 0; k < dst->nz; k++) {
        for (int j = 0; j < dst->ny; j++) {
            for (int i = 0; i < dst->nx; i++, o++) {
                double x[3];
                int inside = 1;
                for (int r = 0; r < 3; r++) {
                    x[r] = m[r][0] * i + m[r][1] * j + m[r][2] * k + m[r][3];
                    if (!(x[r] >= -0.5 - EDGE_EPS && x[r] <= ns[r] - 0.5 + EDGE_EPS)) inside = 0;
                }
                if (!inside) {
                    store(dst->data, dst->dtype, o, fill);
                    continue;
                }
                if (interp == CTG_NEAREST) {
                    size_t off = 0;
                    for (int r = 0; r < 3; r++) {
                        long q = (long)floor(x[r] + 0.5);
                        if (q < 0) q = 0;
                        if (q > ns[r] - 1) q = ns[r] - 1;
                        off += (size_t)q * st[r];
                    }
                    store(dst->data, dst->dtype, o, load(src->data, src->dtype, off));
                    continue;
                }
                size_t lo[3], hi[3];
                double w[3];
                for (int r = 0; r < 3; r++) {
                    double xc = x[r] < 0 ? 0 : x[r] > ns[r] - 1 ? ns[r] - 1 : x[r];
                    long q = (long)floor(xc);
                    if (q > ns[r] - 2) q = ns[r] > 1 ? ns[r] - 2 : 0;
                    lo[r] = (size_t)q * st[r];
                    hi[r] = ns[r] > 1 ? (size_t)(q + 1) * st[r] : lo[r];
                    w[r] = ns[r] > 1 ? xc - (double)q : 0;
                }
                double acc = 0;
                for (int c = 0; c < 8; c++) {
                    double wt = ((c & 1) ? w[0] : 1 - w[0]) * ((c & 2) ? w[1] : 1 - w[1]) *
                                ((c & 4) ? w[2] : 1 - w[2]);
                    if (wt == 0) continue;
                    size_t off = ((c & 1) ? hi[0] : lo[0]) + ((c & 2) ? hi[1] : lo[1]) +
                                 ((c & 4) ? hi[2] : lo[2]);
                    acc += wt * load(src->data, src->dtype, off);
                }
                store(dst->data, dst->dtype, o, acc);
            }
        }
    }
}

/* Resamples src onto dst's grid through m (target index -> source index).
 * Picks the separable path when every column of m's linear part has one
 * entry that is not negligible, each in a different row. */
static int resample_with(const ctg_vol *src, ctg_vol *dst, const double m[3][4], int interp,
                         double fill)
{
    int src_axis[3];
    double scale[3], shift[3];
    int used[3] = {0, 0, 0}, separable = 1;
    for (int a = 0; a < 3 && separable; a++) {
        double big = 0;
        int p = 0;
        for (int r = 0; r < 3; r++)
            if (fabs(m[r][a]) > big) {
                big = fabs(m[r][a]);
                p = r;
            }
        /* Off-axis terms below 1e-9 source voxels per target voxel stay
         * below 1e-5 voxels of drift over any realistic grid. */
        for (int r = 0; r < 3; r++)
            if (r != p && fabs(m[r][a]) > 1e-9 * (big > 1 ? big : 1)) separable = 0;
        if (big == 0 || used[p]) separable = 0;
        used[p] = 1;
        src_axis[a] = p;
        scale[a] = m[p][a];
        shift[a] = m[p][3];
    }
    if (separable) return resample_separable(src, dst, src_axis, scale, shift, interp, fill);
    resample_general(src, dst, m, interp, fill);
    return 0;
}

static int check_interp(int interp)
{
    return interp == CTG_NEAREST || interp == CTG_LINEAR ? 0 : CTG_EINVAL;
}

int ctg_vol_resample(const ctg_vol *src, const double spacing[3], int interp, double fill,
                     ctg_vol **out)
{
    *out = NULL;
    if (check_interp(interp) < 0 || ctg_dtype_size(src->dtype) == 0) return CTG_EINVAL;
    double sp[3];
    ctg_vol_spacing(src, sp);
    const int n[3] = {src->nx, src->ny, src->nz};
    int nn[3];
    double r[3];
    for (int a = 0; a < 3; a++) {
        if (!(spacing[a] > 0) || !isfinite(spacing[a]) || !(sp[a] > 0)) return CTG_EINVAL;
        double want = round(n[a] * sp[a] / spacing[a]);
        if (!(want <= (double)(1 << 20))) return CTG_ETOOBIG;
        nn[a] = want < 1 ? 1 : (int)want;
        r[a] = spacing[a] / sp[a]; /* source voxels per target voxel */
    }
    if ((double)nn[0] * nn[1] * nn[2] > (double)VOL_MAX_ELEMS) return CTG_ETOOBIG;
    ctg_vol *dst = ctg_vol_new(nn[0], nn[1], nn[2], src->dtype);
    if (!dst) return CTG_ENOMEM;

    /* The first target corner is the first source corner: target index i
     * sits at source index (i + 0.5) * r - 0.5. */
    double m[3][4] = {{0}};
    double shift_idx[3];
    for (int a = 0; a < 3; a++) {
        m[a][a] = r[a];
        shift_idx[a] = 0.5 * r[a] - 0.5;
        m[a][3] = shift_idx[a];
    }
    double origin[3];
    ctg_vol_world(src, shift_idx, origin);
    for (int row = 0; row < 3; row++) {
        for (int a = 0; a < 3; a++) dst->aff[row][a] = src->aff[row][a] * r[a];
        dst->aff[row][3] = origin[row];
    }
    int rc = resample_with(src, dst, m, interp, fill);
    if (rc < 0) {
        ctg_vol_free(dst);
        return rc;
    }
    *out = dst;
    return 0;
}

int ctg_vol_resample_to(const ctg_vol *src, const ctg_vol *grid, int interp, double fill,
                        ctg_vol **out)
{
    *out = NULL;
    if (check_interp(interp) < 0 || ctg_dtype_size(src->dtype) == 0) return CTG_EINVAL;
    double inv[3][4], m[3][4];
    int rc = aff_inverse(src->aff, inv);
    if (rc < 0) return rc;
    for (int r = 0; r < 3; r++) {
        for (int c = 0; c < 4; c++) {
            m[r][c] = inv[r][0] * grid->aff[0][c] + inv[r][1] * grid->aff[1][c] +
                      inv[r][2] * grid->aff[2][c];
        }
        m[r][3] += inv[r][3];
    }
    ctg_vol *dst = ctg_vol_new(grid->nx, grid->ny, grid->nz, src->dtype);
    if (!dst) return CTG_ENOMEM;
    memcpy(dst->aff, grid->aff, sizeof dst->aff);
    rc = resample_with(src, dst, m, interp, fill);
    if (rc < 0) {
        ctg_vol_free(dst);
        return rc;
    }
    *out = dst;
    return 0;
}
