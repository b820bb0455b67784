/*
 * phantom_paint.c - rasterising shapes into a phantom scene.
 *
 * Every structure is a signed distance function in the body frame (mm,
 * negative inside) with a bounding box; painting visits only the voxels of
 * the box, so the cost of a structure follows its size, not the volume's.
 * Later paint wins, which is how the painters layer organs over fat and
 * bones over everything.  Tubes (vessels, bowel, ribs) are unions of capsule
 * segments: their distances are gathered in the scene's scratch buffer first
 * so that walls are measured from the union's surface.
 *
 * Threading: a scene belongs to one thread.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/organs.h"
#include "tools/phantom.h"

int ph_label(const char *name)
{
    int id = ctg_organ_id(name);
    if (id <= 0) {
        fprintf(stderr, "phantom: unknown TotalSegmentator structure '%s'\n", name);
        abort();
    }
    return id;
}

ph_paint ph_paint_simple(int label, int mat)
{
    ph_paint p;
    memset(&p, 0, sizeof p);
    p.label = label;
    p.lesion = -1;
    p.mat = mat;
    p.shell_mat = -1;
    p.over_label = -1;
    return p;
}

void ph_voxel_of(const ph_scene *sc, const double p[3], int ijk[3])
{
    int n[3] = {sc->nx, sc->ny, sc->nz};
    for (int a = 0; a < 3; a++) {
        int v = (int)lround((p[a] - sc->org[a]) / sc->sp[a]);
        ijk[a] = v < 0 ? 0 : v >= n[a] ? n[a] - 1 : v;
    }
}

/* The voxel index range [r0, r1] covered by [lo, hi] along each axis;
 * returns 0 when empty. */
static int box_range(const ph_scene *sc, const double lo[3], const double hi[3], int r0[3],
                     int r1[3])
{
    int n[3] = {sc->nx, sc->ny, sc->nz};
    for (int a = 0; a < 3; a++) {
        double f0 = ceil((lo[a] - sc->org[a]) / sc->sp[a]);
        double f1 = floor((hi[a] - sc->org[a]) / sc->sp[a]);
        if (f0 < 0) f0 = 0;
        if (f1 > n[a] - 1) f1 = n[a] - 1;
        if (f1 < f0) return 0;
        r0[a] = (int)f0;
        r1[a] = (int)f1;
    }
    return 1;
}

/* Applies pp to voxel v at p, inside a shape at depth d < 0. */
static inline void paint_voxel(ph_scene *sc, size_t v, const double p[3], double d,
                               const ph_paint *pp)
{
    if (pp->clip && pp->clip(pp->clip_ctx, p) >= 0) return;
    int m;
    if (pp->fn)
        m = pp->fn(pp->ctx, p, d);
    else
        m = (pp->shell_mat >= 0 && d > -pp->shell) ? pp->shell_mat : pp->mat;
    if (m < 0) return;
    sc->mat[v] = (uint8_t)m;
    if (pp->label >= 0) sc->lab[v] = (uint8_t)pp->label;
    if (pp->lesion >= 0) sc->les[v] = (uint8_t)pp->lesion;
}

/* Whether pp may paint over voxel v at all (checked before the distance,
 * which is the expensive part). */
static inline int may_paint(const ph_scene *sc, size_t v, const ph_paint *pp)
{
    if (pp->over && (sc->mat[v] >= 64 || !(pp->over & PH_BIT(sc->mat[v])))) return 0;
    if (pp->over_label >= 0 && sc->lab[v] != pp->over_label) return 0;
    return 1;
}

void ph_paint_sdf(ph_scene *sc, const double lo[3], const double hi[3], ph_sdf_fn f,
                  const void *ctx, const ph_paint *pp)
{
    int r0[3], r1[3];
    if (!box_range(sc, lo, hi, r0, r1)) return;
    double p[3];
    for (int k = r0[2]; k <= r1[2]; k++)
        for (int j = r0[1]; j <= r1[1]; j++)
            for (int i = r0[0]; i <= r1[0]; i++) {
                size_t v = ph_idx(sc, i, j, k);
                if (!may_paint(sc, v, pp)) continue;
                ph_pos(sc, i, j, k, p);
                double d = f(ctx, p);
                if (d < 0) paint_voxel(sc, v, p, d, pp);
            }
}

/* ---- superellipsoids ------------------------------------------------------- */

void ph_blob_init(ph_blob *b, const double c[3], const double r[3], double e, double yaw,
                  double pitch, double roll)
{
    memset(b, 0, sizeof *b);
    memcpy(b->c, c, sizeof b->c);
    memcpy(b->r, r, sizeof b->r);
    b->e = e;
    double cz = cos(yaw), sz = sin(yaw), cx = cos(pitch), sx = sin(pitch), cy = cos(roll),
           sy = sin(roll);
    /* R = Rz * Rx * Ry maps local to body coordinates; rot holds its
     * columns (the local axes) as rows. */
    double Rz[3][3] = {{cz, -sz, 0}, {sz, cz, 0}, {0, 0, 1}};
    double Rx[3][3] = {{1, 0, 0}, {0, cx, -sx}, {0, sx, cx}};
    double Ry[3][3] = {{cy, 0, sy}, {0, 1, 0}, {-sy, 0, cy}};
    double T[3][3], R[3][3];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            T[i][j] = 0;
            for (int k = 0; k < 3; k++) T[i][j] += Rz[i][k] * Rx[k][j];
        }
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            R[i][j] = 0;
            for (int k = 0; k < 3; k++) R[i][j] += T[i][k] * Ry[k][j];
        }
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) b->rot[i][j] = R[j][i];
}

double ph_blob_sdf(const void *blob, const double p[3])
{
    const ph_blob *b = blob;
    double q[3] = {p[0] - b->c[0], p[1] - b->c[1], p[2] - b->c[2]};
    double l[3], u[3];
    for (int i = 0; i < 3; i++) {
        l[i] = ph_dot(b->rot[i], q);
        u[i] = fabs(l[i]) / b->r[i];
    }
    double rr;
    if (b->e == 2.0)
        rr = sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2]);
    else
        rr = pow(pow(u[0], b->e) + pow(u[1], b->e) + pow(u[2], b->e), 1.0 / b->e);
    double len = sqrt(ph_dot(l, l));
    double mr = fmin(b->r[0], fmin(b->r[1], b->r[2]));
    /* Distance along the ray from the centre: exact on the surface, a fair
     * estimate of depth inside, which is all the shells need. */
    double d = rr > 1e-9 ? len * (rr - 1.0) / rr : -mr;
    if (d < -mr) d = -mr;
    /* The noise moves the surface by at most 1.25 amp: far from it the
     * undeformed distance is as good and much cheaper. */
    if (b->amp > 0 && d < 1.3 * b->amp + 1 && d > -1.3 * b->amp - 25)
        d += b->amp * ph_fbm(b->seed, p, b->freq);
    return d;
}

void ph_blob_bbox(const ph_blob *b, double lo[3], double hi[3])
{
    for (int a = 0; a < 3; a++) {
        double ext = 0;
        for (int i = 0; i < 3; i++) ext += fabs(b->rot[i][a]) * b->r[i];
        ext += 1.5 * b->amp + 1.0;
        lo[a] = b->c[a] - ext;
        hi[a] = b->c[a] + ext;
    }
}

void ph_paint_blob(ph_scene *sc, const ph_blob *b, const ph_paint *pp)
{
    double lo[3], hi[3];
    ph_blob_bbox(b, lo, hi);
    ph_paint_sdf(sc, lo, hi, ph_blob_sdf, b, pp);
}

/* ---- tubes ------------------------------------------------------------------- */

void ph_tubes_add(ph_tubes *t, const double a[3], const double b[3], double ra, double rb)
{
    if (t->n == t->cap) {
        int cap = t->cap ? 2 * t->cap : 64;
        ph_seg *s = realloc(t->s, (size_t)cap * sizeof *s);
        if (!s) {
            fprintf(stderr, "phantom: out of memory\n");
            exit(1);
        }
        t->s = s;
        t->cap = cap;
    }
    ph_seg *s = &t->s[t->n++];
    memcpy(s->a, a, sizeof s->a);
    memcpy(s->b, b, sizeof s->b);
    s->ra = ra;
    s->rb = rb;
}

void ph_tubes_free(ph_tubes *t)
{
    free(t->s);
    memset(t, 0, sizeof *t);
}

/* Catmull-Rom point on span i of the node list at u in [0, 1]. */
static void cr_point(const double (*nd)[4], int n, int i, double u, double out[4])
{
    int i0 = i > 0 ? i - 1 : 0, i1 = i, i2 = i + 1 < n ? i + 1 : n - 1,
        i3 = i + 2 < n ? i + 2 : n - 1;
    double u2 = u * u, u3 = u2 * u;
    for (int a = 0; a < 4; a++) {
        double p0 = nd[i0][a], p1 = nd[i1][a], p2 = nd[i2][a], p3 = nd[i3][a];
        out[a] = 0.5 * (2 * p1 + (-p0 + p2) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u2 +
                        (-p0 + 3 * p1 - 3 * p2 + p3) * u3);
    }
}

static double span_len(const double (*nd)[4], int i)
{
    double d[3] = {nd[i + 1][0] - nd[i][0], nd[i + 1][1] - nd[i][1], nd[i + 1][2] - nd[i][2]};
    return sqrt(ph_dot(d, d));
}

void ph_tubes_spline(ph_tubes *t, const double (*nodes)[4], int n, double step,
                     ph_rmod_fn rmod, const void *ctx)
{
    if (n < 2) return;
    double prev[4], arc = 0;
    cr_point(nodes, n, 0, 0, prev);
    double rprev = prev[3] * (rmod ? rmod(ctx, 0) : 1.0);
    for (int i = 0; i + 1 < n; i++) {
        int m = (int)ceil(span_len(nodes, i) / step);
        if (m < 1) m = 1;
        for (int j = 1; j <= m; j++) {
            double cur[4];
            cr_point(nodes, n, i, (double)j / m, cur);
            double d[3] = {cur[0] - prev[0], cur[1] - prev[1], cur[2] - prev[2]};
            arc += sqrt(ph_dot(d, d));
            double r = cur[3] * (rmod ? rmod(ctx, arc) : 1.0);
            ph_tubes_add(t, prev, cur, rprev, r);
            memcpy(prev, cur, sizeof prev);
            rprev = r;
        }
    }
}

void ph_spline_point(const double (*nodes)[4], int n, double f, double p[4])
{
    if (n < 2) {
        memcpy(p, nodes[0], 4 * sizeof *p);
        return;
    }
    double total = 0;
    for (int i = 0; i + 1 < n; i++) total += span_len(nodes, i);
    double want = ph_clamp(f, 0, 1) * total;
    for (int i = 0; i + 1 < n; i++) {
        double l = span_len(nodes, i);
        if (want <= l || i + 2 == n) {
            cr_point(nodes, n, i, l > 0 ? ph_clamp(want / l, 0, 1) : 0, p);
            return;
        }
        want -= l;
    }
}

static inline double seg_sdf(const ph_seg *s, const double p[3])
{
    double ab[3] = {s->b[0] - s->a[0], s->b[1] - s->a[1], s->b[2] - s->a[2]};
    double ap[3] = {p[0] - s->a[0], p[1] - s->a[1], p[2] - s->a[2]};
    double l2 = ph_dot(ab, ab);
    double t = l2 > 0 ? ph_clamp(ph_dot(ap, ab) / l2, 0, 1) : 0;
    double q[3] = {ap[0] - t * ab[0], ap[1] - t * ab[1], ap[2] - t * ab[2]};
    return sqrt(ph_dot(q, q)) - (s->ra + t * (s->rb - s->ra));
}

void ph_paint_tubes(ph_scene *sc, const ph_tubes *t, const ph_paint *pp)
{
    if (t->n == 0) return;
    double lo[3] = {1e30, 1e30, 1e30}, hi[3] = {-1e30, -1e30, -1e30};
    for (int s = 0; s < t->n; s++) {
        const ph_seg *g = &t->s[s];
        double r = fmax(g->ra, g->rb) + 1;
        for (int a = 0; a < 3; a++) {
            lo[a] = fmin(lo[a], fmin(g->a[a], g->b[a]) - r);
            hi[a] = fmax(hi[a], fmax(g->a[a], g->b[a]) + r);
        }
    }
    int r0[3], r1[3];
    if (!box_range(sc, lo, hi, r0, r1)) return;
    for (int k = r0[2]; k <= r1[2]; k++)
        for (int j = r0[1]; j <= r1[1]; j++)
            for (int i = r0[0]; i <= r1[0]; i++) sc->scratch[ph_idx(sc, i, j, k)] = 1e9f;
    double p[3];
    for (int s = 0; s < t->n; s++) {
        const ph_seg *g = &t->s[s];
        double r = fmax(g->ra, g->rb) + 1, slo[3], shi[3];
        int q0[3], q1[3];
        for (int a = 0; a < 3; a++) {
            slo[a] = fmin(g->a[a], g->b[a]) - r;
            shi[a] = fmax(g->a[a], g->b[a]) + r;
        }
        if (!box_range(sc, slo, shi, q0, q1)) continue;
        for (int k = q0[2]; k <= q1[2]; k++)
            for (int j = q0[1]; j <= q1[1]; j++)
                for (int i = q0[0]; i <= q1[0]; i++) {
                    ph_pos(sc, i, j, k, p);
                    float d = (float)seg_sdf(g, p);
                    size_t v = ph_idx(sc, i, j, k);
                    if (d < sc->scratch[v]) sc->scratch[v] = d;
                }
    }
    for (int k = r0[2]; k <= r1[2]; k++)
        for (int j = r0[1]; j <= r1[1]; j++)
            for (int i = r0[0]; i <= r1[0]; i++) {
                size_t v = ph_idx(sc, i, j, k);
                float d = sc->scratch[v];
                if (d >= 0 || !may_paint(sc, v, pp)) continue;
                ph_pos(sc, i, j, k, p);
                paint_voxel(sc, v, p, d, pp);
            }
}
