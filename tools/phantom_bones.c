/*
 * phantom_bones.c - the skeleton: vertebrae C6-L5 (bodies with end-plate
 * tilt following the spinal curves, pedicles, laminae, spinous and
 * transverse processes, facets), discs, the spinal canal and cord, the
 * sacrum, 24 ribs curving round the pleural cavities with their costal
 * cartilages, sternum, clavicles, scapulae, hip bones and femora.  Bones
 * have a cortical shell over cancellous bone (marrow in the femoral shaft).
 *
 * Ribs are placed by searching for the edge of the body cavity along rays
 * from the chest's centre, so they hug the lungs whatever the body's shape.
 *
 * Threading: paints one scene; no shared state.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "tools/phantom.h"

#define S (an->s)

static double ys_(const ph_anat *an, double z) { return ph_spine_y(an, z); }

static ph_paint bone_paint(const ph_anat *an, int label)
{
    ph_paint p = ph_paint_simple(label, PH_M_BONE_CANC);
    p.shell_mat = PH_M_BONE_CORT;
    p.shell = 1.4 * an->s;
    return p;
}

static void tube2(ph_tubes *t, double ax, double ay, double az, double bx, double by, double bz,
                  double ra, double rb)
{
    double a[3] = {ax, ay, az}, b[3] = {bx, by, bz};
    ph_tubes_add(t, a, b, ra, rb);
}

/* ---- the spine -------------------------------------------------------------------- */

/* A vertebral body: an elliptic cylinder with rounded rims, tilted with
 * the spinal curve. */
typedef struct vbody {
    ph_blob b; /* centre, radii and rotation only */
    double round;
} vbody;

static double vbody_sdf(const void *ctx, const double p[3])
{
    const vbody *v = ctx;
    double q[3] = {p[0] - v->b.c[0], p[1] - v->b.c[1], p[2] - v->b.c[2]};
    double l[3];
    for (int i = 0; i < 3; i++) l[i] = ph_dot(v->b.rot[i], q);
    double rx = v->b.r[0] - v->round, ry = v->b.r[1] - v->round, hz = v->b.r[2] - v->round;
    double u = l[0] / rx, w = l[1] / ry;
    double rr = sqrt(u * u + w * w);
    double len = sqrt(l[0] * l[0] + l[1] * l[1]);
    double dxy = rr > 1e-9 ? len * (rr - 1) / rr : -fmin(rx, ry);
    double dz = fabs(l[2]) - hz;
    double out = sqrt(fmax(dxy, 0) * fmax(dxy, 0) + fmax(dz, 0) * fmax(dz, 0));
    return out + fmin(fmax(dxy, dz), 0) - v->round;
}

static void paint_vbody(ph_scene *sc, const double c[3], const double r[3], double tilt,
                        const ph_paint *p)
{
    vbody v;
    ph_blob_init(&v.b, c, r, 2, 0, -tilt, 0);
    v.round = 2.5 * sc->an->s;
    double lo[3], hi[3];
    ph_blob_bbox(&v.b, lo, hi);
    ph_paint_sdf(sc, lo, hi, vbody_sdf, &v, p);
}

static void paint_spine(ph_scene *sc)
{
    const ph_anat *an = sc->an;
    /* Discs first, then bodies and arches over them. */
    for (int i = 0; i + 1 <= an->nvert; i++) {
        const struct ph_vert *v = &an->vert[i];
        double top = v->z_lo, bot = i + 1 < an->nvert ? an->vert[i + 1].z_hi : 0;
        double c[3] = {0, ys_(an, 0.5 * (top + bot)), 0.5 * (top + bot)};
        double r[3] = {v->rx * 0.97, v->ry * 0.97, 0.5 * (top - bot) + 1.5 * S};
        ph_paint p = ph_paint_simple(0, PH_M_DISC);
        paint_vbody(sc, c, r, v->tilt, &p);
    }
    for (int i = 0; i < an->nvert; i++) {
        const struct ph_vert *v = &an->vert[i];
        char name[32];
        snprintf(name, sizeof name, "vertebrae_%s", v->name);
        int lab = ph_label(name);
        ph_paint p = bone_paint(an, lab);
        double h = v->z_hi - v->z_lo, zc = 0.5 * (v->z_lo + v->z_hi);
        double c[3] = {0, v->y, zc}, r[3] = {v->rx, v->ry, 0.5 * h};
        paint_vbody(sc, c, r, v->tilt, &p);

        int lumbar = v->name[0] == 'L', cerv = v->name[0] == 'C';
        double yb = v->y + v->ry; /* back of the body */
        double px = 0.6 * v->rx;
        ph_tubes t = {0};
        double rp = (lumbar ? 4.8 : 3.8) * S;
        for (int sd = -1; sd <= 1; sd += 2) {
            /* Pedicle, lamina, transverse process, articular pillar. */
            /* Pedicles and laminae are taller than wide: two tubes each. */
            for (int q = -1; q <= 1; q += 2) {
                double dz = q * 0.16 * h;
                tube2(&t, sd * 0.55 * v->rx, yb - 3 * S, zc + 0.1 * h + dz, sd * px, yb + 9 * S,
                      zc + 0.1 * h + dz, rp, rp);
                tube2(&t, sd * px, yb + 9 * S, zc + dz, 0, yb + 19 * S, zc - 0.1 * h + dz, 4.2 * S, 4.2 * S);
            }
            double tx = v->rx + (lumbar ? 20 : cerv ? 12 : 17) * S;
            double ty = yb + (lumbar ? 4 : cerv ? 2 : 15) * S;
            tube2(&t, sd * px, yb + 9 * S, zc, sd * tx, ty, zc + (lumbar ? 0 : 3) * S,
                  (lumbar ? 3.6 : 4.2) * S, (lumbar ? 3.0 : 4.5) * S);
            tube2(&t, sd * (px + 1.5 * S), yb + 11 * S, v->z_lo - 2.5 * S, sd * (px + 1.5 * S),
                  yb + 11 * S, v->z_hi + 2.5 * S, 4.3 * S, 4.3 * S);
        }
        /* Spinous process: steep and long in the chest, square in the
         * lumbar spine. */
        tube2(&t, 0, yb + 19 * S, zc - 0.1 * h, 0, yb + (lumbar ? 38 : 40) * S,
              zc - (lumbar ? 6 : 20) * S, (lumbar ? 5.0 : 3.8) * S, (lumbar ? 5.5 : 3.0) * S);
        ph_paint_tubes(sc, &t, &p);
        ph_tubes_free(&t);
    }
    /* The canal (thecal sac) and the cord, which ends at L1-L2. */
    double canal[24][4], cord[24][4];
    int nc = 0, nk = 0;
    double ztop = an->vert[0].z_hi + 30 * S;
    canal[nc][0] = 0, canal[nc][1] = ys_(an, ztop) + an->vert[0].ry + 9 * S, canal[nc][2] = ztop,
    canal[nc][3] = 9 * S;
    memcpy(cord[nk], canal[nc], sizeof cord[nk]);
    cord[nk][3] = 6 * S;
    nc++, nk++;
    for (int i = 0; i < an->nvert; i++) {
        const struct ph_vert *v = &an->vert[i];
        double zc = 0.5 * (v->z_lo + v->z_hi);
        int lumbar = v->name[0] == 'L';
        canal[nc][0] = 0, canal[nc][1] = v->y + v->ry + 9 * S, canal[nc][2] = zc;
        canal[nc][3] = (lumbar ? 10 : v->name[0] == 'C' ? 9 : 7.5) * S;
        if (!lumbar || !strcmp(v->name, "L1")) {
            memcpy(cord[nk], canal[nc], sizeof cord[nk]);
            cord[nk][3] = (v->name[0] == 'C' ? 6 : !strcmp(v->name, "L1") ? 2.5 : 4.5) * S;
            nk++;
        }
        nc++;
    }
    canal[nc][0] = 0, canal[nc][1] = ys_(an, -10 * S) + 20 * S, canal[nc][2] = -10 * S,
    canal[nc][3] = 7 * S;
    nc++;
    ph_tubes t = {0};
    ph_tubes_spline(&t, (const double (*)[4])canal, nc, 3, NULL, NULL);
    ph_paint pc = ph_paint_simple(0, PH_M_CSF);
    ph_paint_tubes(sc, &t, &pc);
    ph_tubes_free(&t);
    ph_tubes_spline(&t, (const double (*)[4])cord, nk, 3, NULL, NULL);
    ph_paint pk = ph_paint_simple(ph_label("spinal_cord"), PH_M_CORD);
    ph_paint_tubes(sc, &t, &pk);
    ph_tubes_free(&t);
}

/* ---- sacrum ------------------------------------------------------------------------- */

typedef struct sacrum_ctx {
    const ph_anat *an;
    double len, y0;
} sacrum_ctx;

static void sacrum_at(const sacrum_ctx *c, double z, double *y, double *w, double *d)
{
    const ph_anat *an = c->an;
    double t = ph_clamp(-z / c->len, 0, 1);
    *y = c->y0 + (30 * t + 17 * t * t) * S;
    *w = (52 - 38 * t) * S;
    *d = (19 - 10 * t) * S;
}

static double sacrum_sdf(const void *ctx, const double p[3])
{
    const sacrum_ctx *c = ctx;
    if (p[2] > 0) return p[2];
    if (p[2] < -c->len) return -c->len - p[2];
    double y, w, d;
    sacrum_at(c, p[2], &y, &w, &d);
    double u = fabs(p[0]) / w;
    if (u >= 1) return (fabs(p[0]) - w);
    /* The alae are thinner than the body and sit further back. */
    double dd = d * (1 - 0.45 * u * u);
    double yy = y + 6 * c->an->s * u * u;
    double v = fabs(p[1] - yy) / dd;
    double rho = cbrt(u * u * u + v * v * v);
    return fmax((rho - 1) * fmin(w, dd), fmax(p[2], -c->len - p[2]));
}

static double sacral_canal_sdf(const void *ctx, const double p[3])
{
    const sacrum_ctx *c = ctx;
    const ph_anat *an = c->an;
    if (p[2] > 0 || p[2] < -c->len * 0.8) return 1;
    double y, w, d;
    sacrum_at(c, p[2], &y, &w, &d);
    double t = ph_clamp(-p[2] / c->len, 0, 1);
    double rx = (10 - 5 * t) * S, ry = (5.5 - 2.5 * t) * S;
    double u = p[0] / rx, v = (p[1] - (y + 0.5 * d)) / ry;
    return (sqrt(u * u + v * v) - 1) * ry;
}

static sacrum_ctx sacrum_geom(const ph_anat *an)
{
    sacrum_ctx c = {an, 115 * an->s, ys_(an, 0) + 4 * an->s};
    return c;
}

static void paint_sacrum(ph_scene *sc)
{
    const ph_anat *an = sc->an;
    sacrum_ctx c = sacrum_geom(an);
    double lo[3] = {-60 * S, c.y0 - 40 * S, -c.len - 2}, hi[3] = {60 * S, c.y0 + 80 * S, 2};
    ph_paint p = bone_paint(an, ph_label("sacrum"));
    ph_paint_sdf(sc, lo, hi, sacrum_sdf, &c, &p);
    ph_paint pc = ph_paint_simple(0, PH_M_CSF);
    pc.over_label = ph_label("sacrum");
    ph_paint_sdf(sc, lo, hi, sacral_canal_sdf, &c, &pc);
}

/* ---- hip bones and femora ------------------------------------------------------------ */

typedef struct hip_ctx {
    const ph_anat *an;
    sacrum_ctx sac;
    double side;
    double zA, zC;          /* wing from above the acetabulum to the crest */
    double F[3], rF;        /* femoral head centre and radius */
    double open[3];         /* where the acetabulum opens */
    ph_seg ram[6];
    int nram;
} hip_ctx;

static double seg_dist(const ph_seg *g, const double p[3])
{
    double ab[3] = {g->b[0] - g->a[0], g->b[1] - g->a[1], g->b[2] - g->a[2]};
    double ap[3] = {p[0] - g->a[0], p[1] - g->a[1], p[2] - g->a[2]};
    double l2 = ph_dot(ab, ab);
    double t = l2 > 0 ? ph_clamp(ph_dot(ap, ab) / l2, 0, 1) : 0;
    double q[3] = {ap[0] - t * ab[0], ap[1] - t * ab[1], ap[2] - t * ab[2]};
    return sqrt(ph_dot(q, q)) - (g->ra + t * (g->rb - g->ra));
}

/* The iliac wing: at each height a curved plate from the sacroiliac joint
 * (posterior, medial) bowing out laterally to the anterior iliac spines. */
static double wing_sdf(const hip_ctx *h, const double p[3])
{
    const ph_anat *an = h->an;
    double z = p[2];
    if (z < h->zA - 20 * S || z > h->zC + 4 * S) return 1e3;
    double t = ph_clamp((z - h->zA) / (h->zC - h->zA), 0, 1);
    /* Key sections at t = 0, 0.5, 1: P (joint), Q (bow), A (front). */
    static const double key[3][8] = {
        /* Px Py Qx Qy Ax Ay rim mid */
        {48, 42, 95, 42, 86, 6, 9, 8},
        {46, 56, 132, 62, 110, -28, 6.5, 3.2},
        {58, 72, 150, 52, 116, -44, 7, 5},
    };
    double k[8];
    int i = t < 0.5 ? 0 : 1;
    double u = t < 0.5 ? t / 0.5 : (t - 0.5) / 0.5;
    for (int a = 0; a < 8; a++) k[a] = ph_lerp(key[i][a], key[i + 1][a], u) * S;
    /* Where the sacrum is, the joint follows its edge. */
    if (z < 0 && z > -h->sac.len) {
        double sy, sw, sd;
        sacrum_at(&h->sac, z, &sy, &sw, &sd);
        k[0] = fmax(k[0], sw + 3.5 * S);
        k[1] = sy + 8 * S;
    }
    double x = h->side * p[0], y = p[1];
    double best = 1e9, bu = 0;
    double prev[2] = {k[0], k[1]};
    for (int j = 1; j <= 12; j++) {
        double s = j / 12.0, m = 1 - s;
        double cur[2] = {m * m * k[0] + 2 * m * s * k[2] + s * s * k[4],
                         m * m * k[1] + 2 * m * s * k[3] + s * s * k[5]};
        double ab[2] = {cur[0] - prev[0], cur[1] - prev[1]}, ap[2] = {x - prev[0], y - prev[1]};
        double l2 = ab[0] * ab[0] + ab[1] * ab[1];
        double f = l2 > 0 ? ph_clamp((ap[0] * ab[0] + ap[1] * ab[1]) / l2, 0, 1) : 0;
        double dx = ap[0] - f * ab[0], dy = ap[1] - f * ab[1];
        double d = sqrt(dx * dx + dy * dy);
        if (d < best) best = d, bu = (j - 1 + f) / 12.0;
        prev[0] = cur[0], prev[1] = cur[1];
    }
    double e = fabs(2 * bu - 1);
    double th = k[7] + (k[6] - k[7]) * e * e * e;
    double d = best - th;
    /* The crest arches: higher in its middle. */
    double crest = h->zC - 14 * S * (2 * bu - 1) * (2 * bu - 1);
    return fmax(d, z - crest);
}

static double hip_sdf(const void *ctx, const double p[3])
{
    const hip_ctx *h = ctx;
    const ph_anat *an = h->an;
    double d = wing_sdf(h, p);
    /* The sacroiliac joint: a thin gap between wing and sacrum. */
    if (d < 0) d = fmax(d, 2.2 * S - sacrum_sdf(&h->sac, p));
    /* Acetabulum: a cup round the femoral head, open laterally and down. */
    double q[3] = {p[0] - h->F[0], p[1] - h->F[1], p[2] - h->F[2]};
    double l = sqrt(ph_dot(q, q));
    if (l < h->rF + 16 * S) {
        double cup = fmax(h->rF + 2.5 * S - l, l - (h->rF + 13 * S));
        if (l > 0 && ph_dot(q, h->open) / l > 0.3) cup = fmax(cup, 2 * S);
        d = fmin(d, cup);
    }
    for (int i = 0; i < h->nram; i++) d = fmin(d, seg_dist(&h->ram[i], p));
    /* The symphysis keeps a gap at the midline. */
    return fmax(d, 1.5 * S - h->side * p[0]);
}

static void hip_geom(const ph_anat *an, int left, hip_ctx *h)
{
    memset(h, 0, sizeof *h);
    h->an = an;
    h->sac = sacrum_geom(an);
    double sx = h->side = left ? 1 : -1;
    double zs = an->z_symphysis;
    h->rF = 23 * S;
    h->F[0] = sx * 84 * S, h->F[1] = -6 * S, h->F[2] = zs + 26 * S;
    double o[3] = {sx * 0.75, -0.35, -0.55}, l = sqrt(ph_dot(o, o));
    for (int a = 0; a < 3; a++) h->open[a] = o[a] / l;
    h->zA = h->F[2] + 22 * S;
    h->zC = ph_vert_z(an, "L4") + 12 * S;
    double segs[6][8] = {
        /* superior pubic ramus */
        {72, -20, 2, 40, -46, -16, 8, 8},
        {40, -46, -16, 6, -56, -24, 8, 8},
        /* inferior pubic and ischial rami */
        {6, -54, -44, 30, -32, -58, 6.5, 6},
        {30, -32, -58, 54, 6, -60, 6, 7},
        /* ischium from the acetabulum down to the tuberosity */
        {76, 18, -8, 62, 22, -36, 11, 10},
        {62, 22, -36, 54, 10, -60, 10, 9},
    };
    for (int i = 0; i < 6; i++) {
        ph_seg *g = &h->ram[i];
        g->a[0] = sx * segs[i][0] * S, g->a[1] = segs[i][1] * S, g->a[2] = h->F[2] + segs[i][2] * S;
        g->b[0] = sx * segs[i][3] * S, g->b[1] = segs[i][4] * S, g->b[2] = h->F[2] + segs[i][5] * S;
        g->ra = segs[i][6] * S, g->rb = segs[i][7] * S;
    }
    h->nram = 6;
}

static void paint_pelvis(ph_scene *sc)
{
    const ph_anat *an = sc->an;
    for (int k = 0; k < 2; k++) {
        hip_ctx h;
        hip_geom(an, k, &h);
        double sx = h.side;
        double lo[3] = {sx > 0 ? 0 : -170 * S, -90 * S, h.F[2] - 75 * S};
        double hi[3] = {sx > 0 ? 170 * S : 0, 110 * S, h.zC + 5 * S};
        ph_paint p = bone_paint(an, ph_label(k ? "hip_left" : "hip_right"));
        ph_paint_sdf(sc, lo, hi, hip_sdf, &h, &p);

        /* Femur: head in the cup, neck, trochanters, shaft with marrow. */
        int lab = ph_label(k ? "femur_left" : "femur_right");
        ph_paint pf = bone_paint(an, lab);
        double *F = h.F;
        ph_blob head;
        double rh[3] = {h.rF, h.rF, h.rF};
        ph_blob_init(&head, F, rh, 2, 0, 0, 0);
        ph_paint_blob(sc, &head, &pf);
        ph_tubes t = {0};
        double G[3] = {sx * 114 * S, 2 * S, F[2] - 26 * S};
        ph_tubes_add(&t, F, G, 15 * S, 16 * S);
        ph_paint_tubes(sc, &t, &pf);
        ph_tubes_free(&t);
        ph_blob gt;
        double cg[3] = {sx * 122 * S, 8 * S, F[2] - 24 * S}, rg[3] = {13 * S, 18 * S, 24 * S};
        ph_blob_init(&gt, cg, rg, 2.2, 0, 0, 0);
        ph_paint_blob(sc, &gt, &pf);
        ph_blob lt;
        double cl[3] = {sx * 100 * S, 16 * S, F[2] - 56 * S}, rl[3] = {8 * S, 9 * S, 10 * S};
        ph_blob_init(&lt, cl, rl, 2, 0, 0, 0);
        ph_paint_blob(sc, &lt, &pf);
        double s0[3] = {sx * 116 * S, 2 * S, F[2] - 36 * S}, s1[3] = {sx * 106 * S, -12 * S, F[2] - 320 * S};
        ph_tubes_add(&t, s0, s1, 15 * S, 13 * S);
        ph_paint ps = ph_paint_simple(lab, PH_M_MARROW);
        ps.shell_mat = PH_M_BONE_CORT;
        ps.shell = 5 * S;
        ph_paint_tubes(sc, &t, &ps);
        ph_tubes_free(&t);
    }
}

/* ---- rib cage ---------------------------------------------------------------------------- */

/* Distance from (0, yc) along direction (ux, uy) at height z to the edge of
 * the body cavity. */
static double cavity_edge(const ph_anat *an, double z, double yc, double ux, double uy)
{
    double lo = 0, hi = 300 * an->s;
    for (int it = 0; it < 30; it++) {
        double m = 0.5 * (lo + hi);
        double p[3] = {ux * m, yc + uy * m, z};
        if (ph_cavity_sdf(an, p) < 0)
            lo = m;
        else
            hi = m;
    }
    return lo;
}

static const double rib_drop[13] = {0, 22, 34, 52, 60, 64, 66, 66, 66, 64, 60, 48, 34};
static const double rib_end_deg[13] = {0, 150, 152, 152, 150, 148, 146, 142, 132, 126, 120, 102, 82};

/* Anterior end of rib n (set by paint_ribs, used for the cartilages). */
typedef struct rib_ends {
    double end[2][13][3];
} rib_ends;

static void paint_ribs(ph_scene *sc, rib_ends *ends)
{
    const ph_anat *an = sc->an;
    for (int k = 0; k < 2; k++) {
        double sx = k ? 1 : -1;
        for (int n = 1; n <= 12; n++) {
            char vn[16], name[32];
            snprintf(vn, sizeof vn, "T%d", n);
            const struct ph_vert *v = NULL;
            for (int i = 0; i < an->nvert; i++)
                if (!strcmp(an->vert[i].name, vn)) v = &an->vert[i];
            if (!v) continue;
            double h = v->z_hi - v->z_lo;
            double z0 = v->z_hi - 0.2 * h;
            double nd[16][4];
            int m = 0;
            double r = (n == 1 ? 5.0 : n >= 11 ? 3.6 : 4.3) * S;
            nd[m][0] = sx * (v->rx + 3 * S), nd[m][1] = v->y + 2 * S, nd[m][2] = z0, nd[m][3] = r;
            m++;
            nd[m][0] = sx * (v->rx + 20 * S), nd[m][1] = v->y + v->ry + 13 * S, nd[m][2] = z0 - 2 * S;
            nd[m][3] = r;
            m++;
            double phi0 = 38 * M_PI / 180, phi1 = rib_end_deg[n] * M_PI / 180;
            int K = 9;
            for (int j = 0; j < K; j++) {
                double u = (double)j / (K - 1);
                double phi = phi0 + (phi1 - phi0) * u;
                double z = z0 - 5 * S - rib_drop[n] * S * pow(u, 1.25);
                double w, d, yc;
                ph_outline(an, z, &w, &d, &yc);
                double ux = sx * sin(phi), uy = cos(phi);
                double L = cavity_edge(an, z, yc, ux, uy) + r + 1.0 * S;
                nd[m][0] = ux * L, nd[m][1] = yc + uy * L, nd[m][2] = z, nd[m][3] = r;
                m++;
            }
            memcpy(ends->end[k][n], nd[m - 1], sizeof ends->end[k][n]);
            snprintf(name, sizeof name, "rib_%s_%d", k ? "left" : "right", n);
            ph_tubes t = {0};
            ph_tubes_spline(&t, (const double (*)[4])nd, m, 3, NULL, NULL);
            ph_paint p = bone_paint(an, ph_label(name));
            p.shell = 1.2 * S;
            ph_paint_tubes(sc, &t, &p);
            ph_tubes_free(&t);
        }
    }
}

typedef struct sternum_ctx {
    const ph_anat *an;
    double z_top, z_msj, z_xs, z_bot;
    double yfront[512];
    double z0, dz;
    int n;
} sternum_ctx;

static double sternum_y(const sternum_ctx *c, double z)
{
    double f = (z - c->z0) / c->dz;
    int i = (int)floor(f);
    if (i < 0) return c->yfront[0];
    if (i >= c->n - 1) return c->yfront[c->n - 1];
    double w = f - i;
    return c->yfront[i] * (1 - w) + c->yfront[i + 1] * w;
}

static double sternum_sdf(const void *ctx, const double p[3])
{
    const sternum_ctx *c = ctx;
    const ph_anat *an = c->an;
    double z = p[2];
    if (z > c->z_top + 2 || z < c->z_bot - 2) return 1e3;
    double hw, ht;
    if (z > c->z_msj) {
        double t = (z - c->z_msj) / (c->z_top - c->z_msj);
        hw = (19 + 9 * t) * S, ht = 7.5 * S;
    } else if (z > c->z_xs) {
        double t = (z - c->z_xs) / (c->z_msj - c->z_xs);
        hw = (15 - 2 * t) * S, ht = 6 * S;
    } else {
        hw = 7 * S, ht = 4 * S;
    }
    double u = fabs(p[0]) / hw, v = fabs(p[1] - (sternum_y(c, z) - ht)) / ht;
    double rho = sqrt(sqrt(u * u * u * u + v * v * v * v));
    return fmax((rho - 1) * fmin(hw, ht), fmax(z - c->z_top, c->z_bot - z));
}

static void sternum_geom(const ph_anat *an, sternum_ctx *c)
{
    memset(c, 0, sizeof *c);
    c->an = an;
    c->z_top = 0.5 * (ph_vert_z(an, "T2") + ph_vert_z(an, "T3"));
    c->z_msj = an->z_carina + 2 * an->s;
    c->z_xs = ph_vert_z(an, "T9") + 4 * an->s;
    c->z_bot = c->z_xs - 32 * an->s;
    c->dz = 2;
    c->z0 = c->z_bot - 4;
    c->n = (int)((c->z_top + 4 - c->z0) / c->dz) + 1;
    if (c->n > 512) c->n = 512;
    for (int i = 0; i < c->n; i++) {
        double z = c->z0 + i * c->dz;
        double w, d, yc;
        ph_outline(an, z, &w, &d, &yc);
        /* The sternum's back surface is the front of the cavity. */
        c->yfront[i] = yc - cavity_edge(an, z, yc, 0, -1);
    }
}

static void paint_sternum_cartilage(ph_scene *sc, const rib_ends *ends)
{
    const ph_anat *an = sc->an;
    sternum_ctx c;
    sternum_geom(an, &c);
    double lo[3] = {-40 * S, -200 * S, c.z_bot - 2}, hi[3] = {40 * S, 100 * S, c.z_top + 2};
    /* Costal cartilages: ribs 1-7 to the sternal edge, 8-10 up to the
     * cartilage above along the costal margin. */
    ph_tubes t = {0};
    for (int k = 0; k < 2; k++) {
        double sx = k ? 1 : -1;
        for (int n = 1; n <= 10; n++) {
            const double *e = ends->end[k][n];
            double tgt[3];
            if (n <= 7) {
                double za = n == 1 ? c.z_top - 12 * S
                            : n == 2 ? c.z_msj
                                     : c.z_msj - (c.z_msj - c.z_xs) * (n - 2) / 5.0;
                tgt[0] = sx * (n == 1 ? 20 : 13) * S;
                tgt[1] = sternum_y(&c, za) - 6 * S;
                tgt[2] = za;
            } else {
                const double *up = ends->end[k][n - 1];
                tgt[0] = 0.5 * (up[0] + sx * 20 * S);
                tgt[1] = up[1] - 4 * S;
                tgt[2] = up[2] - 10 * S;
            }
            double mid[4] = {0.5 * (e[0] + tgt[0]) + sx * 6 * S, 0.5 * (e[1] + tgt[1]) - 6 * S,
                             0.5 * (e[2] + tgt[2]), 4 * S};
            double nd[3][4] = {{e[0], e[1], e[2], 4 * S}, {mid[0], mid[1], mid[2], 4 * S},
                               {tgt[0], tgt[1], tgt[2], 4 * S}};
            ph_tubes_spline(&t, (const double (*)[4])nd, 3, 3, NULL, NULL);
        }
    }
    ph_paint pc = ph_paint_simple(ph_label("costal_cartilages"), PH_M_CARTILAGE);
    ph_paint_tubes(sc, &t, &pc);
    ph_tubes_free(&t);
    ph_paint p = bone_paint(an, ph_label("sternum"));
    ph_paint_sdf(sc, lo, hi, sternum_sdf, &c, &p);

    /* Clavicles from the manubrium out to the shoulders. */
    for (int k = 0; k < 2; k++) {
        double sx = k ? 1 : -1;
        double z = c.z_top + 4 * S;
        double w, d, yc;
        ph_outline(an, z + 15 * S, &w, &d, &yc);
        double yf = sternum_y(&c, c.z_top) - 8 * S;
        double nd[4][4] = {
            {sx * 22 * S, yf, z, 6.5 * S},
            {sx * 62 * S, yc - d + 14 * S, z + 12 * S, 6.5 * S},
            {sx * 100 * S, yc - d + 32 * S, z + 18 * S, 6 * S},
            {sx * 128 * S, yc - 0.2 * d, z + 22 * S, 6.5 * S},
        };
        ph_tubes_spline(&t, (const double (*)[4])nd, 4, 3, NULL, NULL);
        ph_paint pk = bone_paint(an, ph_label(k ? "clavicula_left" : "clavicula_right"));
        ph_paint_tubes(sc, &t, &pk);
        ph_tubes_free(&t);
    }
}

/* ---- scapulae ----------------------------------------------------------------------------- */

typedef struct scap_ctx {
    double c[3], rot[3][3];
    double hw, hh, th, bend;
} scap_ctx;

/* A thin triangular plate, widest at the top, bent round the chest. */
static double scap_sdf(const void *ctx, const double p[3])
{
    const scap_ctx *s = ctx;
    double q[3] = {p[0] - s->c[0], p[1] - s->c[1], p[2] - s->c[2]};
    double u = ph_dot(s->rot[0], q), v = ph_dot(s->rot[1], q), w = ph_dot(s->rot[2], q);
    v -= s->bend * u * u;
    double f = ph_clamp(0.5 + 0.5 * w / s->hh, 0, 1);
    double hw = s->hw * (0.08 + 0.92 * f);
    double uc = u - s->hw * 0.35 * f; /* the lateral border leans out */
    double d = fmax(fabs(v) - s->th, fmax(fabs(uc) - hw, fabs(w) - s->hh));
    return d;
}

static void paint_scapulae(ph_scene *sc)
{
    const ph_anat *an = sc->an;
    double z = 0.5 * (ph_vert_z(an, "T3") + ph_vert_z(an, "T6"));
    double w, d, yc;
    ph_outline(an, z, &w, &d, &yc);
    for (int k = 0; k < 2; k++) {
        double sx = k ? 1 : -1;
        double phi = 48 * M_PI / 180;
        double ux = sx * sin(phi), uy = cos(phi);
        double L = cavity_edge(an, z, yc, ux, uy) + 22 * S;
        scap_ctx s;
        memset(&s, 0, sizeof s);
        s.c[0] = ux * L, s.c[1] = yc + uy * L, s.c[2] = z;
        /* Local u along the plate (lateral), v its normal (outwards), w up. */
        double nu[3] = {uy * sx, -ux * sx, 0};
        if (nu[0] * sx < 0)
            for (int a = 0; a < 3; a++) nu[a] = -nu[a];
        double nv[3] = {ux, uy, 0}, nw[3] = {0, 0, 1};
        memcpy(s.rot[0], nu, sizeof nu);
        memcpy(s.rot[1], nv, sizeof nv);
        memcpy(s.rot[2], nw, sizeof nw);
        s.hw = 42 * S, s.hh = 72 * S, s.th = 3.2 * S, s.bend = -0.004 / S;
        double lo[3] = {s.c[0] - 110 * S, s.c[1] - 110 * S, z - 80 * S};
        double hi[3] = {s.c[0] + 110 * S, s.c[1] + 110 * S, z + 80 * S};
        ph_paint p = bone_paint(an, ph_label(k ? "scapula_left" : "scapula_right"));
        p.shell = 1.6 * S;
        p.over = ~PH_BIT(PH_M_LUNG) & ~PH_BIT(PH_M_LUNG_VESSEL);
        ph_paint_sdf(sc, lo, hi, scap_sdf, &s, &p);
    }
}

void ph_paint_bones(ph_scene *sc)
{
    rib_ends ends;
    memset(&ends, 0, sizeof ends);
    paint_spine(sc);
    paint_sacrum(sc);
    paint_pelvis(sc);
    paint_ribs(sc, &ends);
    paint_sternum_cartilage(sc, &ends);
    paint_scapulae(sc);
}
