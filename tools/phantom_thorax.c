/*
 * phantom_thorax.c - lungs and vessels: the pleural cavities split into
 * lobes by oblique and horizontal fissures, the diaphragm, mediastinal fat,
 * the heart, the aorta with its branches, the caval, iliac, portal, renal
 * and pulmonary vessels, trachea, bronchi, oesophagus, thyroid and the
 * branching vessel and airway trees inside the lungs.
 *
 * Vessel routes are node lists (x, y, z, radius) placed against the spine,
 * the carina, the heart and the diaphragm, so that they follow the body's
 * size and shape.  ph_paint_lungs runs before the abdominal organs,
 * ph_paint_vessels after them (the caval vein runs through the liver).
 *
 * Threading: paints one scene; no shared state.
 */
#include <math.h>
#include <string.h>

#include "tools/phantom.h"

#define S (an->s)

static double ys_(const ph_anat *an, double z) { return ph_spine_y(an, z); }

/* ---- lungs ------------------------------------------------------------------------ */

typedef struct lobe_ids {
    int rul, rml, rll, lul, lll;
} lobe_ids;

/* Height of the lung apex cap at (x, y). */
static double apex_z(const ph_anat *an, double x, double y)
{
    double ya = ys_(an, an->z_apex) - 5 * S;
    double dx = fabs(x) - 40 * S, dy = y - ya;
    return an->z_apex - (dx * dx + dy * dy) / (75 * S);
}

/* Which lobe a lung point belongs to.  The oblique fissure runs from high
 * at the back (T4) to low in front (near the diaphragm); the right
 * horizontal fissure cuts the middle lobe off the upper lobe anteriorly. */
static int lobe_of(const ph_anat *an, const lobe_ids *ids, const double p[3], int left)
{
    double zP = left ? ph_vert_z(an, "T3") : ph_vert_z(an, "T4");
    double yP = ys_(an, zP) + 20 * S;
    double dome = left ? an->dome_l : an->dome_r;
    double yA = -75 * S, zA = dome - 20 * S;
    double dy = yP - yA, dz = zP - zA;
    double wob = 5 * S * ph_noise3(an->seed ^ (left ? 0x51u : 0x52u), p[0] / 60, p[1] / 60, p[2] / 60);
    /* The fissure also leans: lower laterally. */
    double lat = 0.12 * (fabs(p[0]) - 60 * S);
    double side = (p[1] - yA) * dz - (p[2] + lat + wob - zA) * dy;
    if (side > 0) return left ? ids->lll : ids->rll;
    if (left) return ids->lul;
    double zh = 0.5 * (ph_vert_z(an, "T6") + ph_vert_z(an, "T7")) - 0.06 * (fabs(p[0]) - 40 * S) +
                0.08 * p[1] + wob;
    return p[2] < zh ? ids->rml : ids->rul;
}

static double xmid(const ph_anat *an, double z)
{
    (void)z;
    return 4 * S;
}

/* Midline mediastinal slab between sternum and spine. */
static double slab_sdf(const void *ctx, const double p[3])
{
    const ph_anat *an = ctx;
    /* Only in the upper mediastinum: lower down the heart, aorta and
     * oesophagus carve their own fat. */
    if (p[2] < an->z_carina - 10 * S) return 1;
    double w = p[2] > an->z_arch ? 16 * S : 10 * S;
    return fabs(p[0] - xmid(an, p[2])) - w;
}

/* Fat around the thoracic vertebral bodies (and the pleura reflecting off
 * them). */
static double paraspinal_sdf(const void *ctx, const double p[3])
{
    const ph_anat *an = ctx;
    double ys = ys_(an, p[2]);
    double rx = 24 * S, ry = 19 * S;
    double u = p[0] / rx, v = (p[1] - ys) / ry;
    return (sqrt(u * u + v * v) - 1) * rx;
}

void ph_paint_lungs(ph_scene *sc)
{
    const ph_anat *an = sc->an;
    lobe_ids ids = {ph_label("lung_upper_lobe_right"), ph_label("lung_middle_lobe_right"),
                    ph_label("lung_lower_lobe_right"), ph_label("lung_upper_lobe_left"),
                    ph_label("lung_lower_lobe_left")};
    double zlo = fmin(an->dome_r, an->dome_l) - 150 * S;
    double lo[3] = {-200 * S, -160 * S, zlo}, hi[3] = {200 * S, 160 * S, an->z_apex + 2};
    int r0[3], r1[3];
    int n[3] = {sc->nx, sc->ny, sc->nz};
    for (int a = 0; a < 3; a++) {
        r0[a] = (int)ceil((lo[a] - sc->org[a]) / sc->sp[a]);
        r1[a] = (int)floor((hi[a] - sc->org[a]) / sc->sp[a]);
        if (r0[a] < 0) r0[a] = 0;
        if (r1[a] > n[a] - 1) r1[a] = n[a] - 1;
        if (r1[a] < r0[a]) return;
    }
    double p[3];
    for (int k = r0[2]; k <= r1[2]; k++)
        for (int j = r0[1]; j <= r1[1]; j++)
            for (int i = r0[0]; i <= r1[0]; i++) {
                size_t v = ph_idx(sc, i, j, k);
                if (sc->mat[v] != PH_M_FAT) continue;
                ph_pos(sc, i, j, k, p);
                if (ph_cavity_sdf(an, p) >= 0) continue;
                double zd = ph_diaphragm_z(an, p[0], p[1]);
                if (p[2] <= zd - 5 * S) continue;
                if (p[2] <= zd) {
                    sc->mat[v] = PH_M_MUSCLE; /* the diaphragm */
                    continue;
                }
                if (p[2] > apex_z(an, p[0], p[1])) continue;
                int left = p[0] > xmid(an, p[2]);
                sc->mat[v] = PH_M_LUNG;
                sc->lab[v] = (uint8_t)lobe_of(an, &ids, p, left);
            }

    /* The mediastinum: fat between the lungs and around the spine.  The
     * heart and vessels carve their own fat in ph_paint_vessels. */
    ph_paint fat = ph_paint_simple(0, PH_M_FAT);
    fat.over = PH_BIT(PH_M_LUNG);
    double slo[3] = {-30 * S, -140 * S, zlo}, shi[3] = {30 * S, 140 * S, an->z_apex + 2};
    ph_paint_sdf(sc, slo, shi, slab_sdf, an, &fat);
    double plo[3] = {-30 * S, -40 * S, zlo}, phi[3] = {30 * S, 120 * S, an->z_apex + 2};
    ph_paint_sdf(sc, plo, phi, paraspinal_sdf, an, &fat);
}

/* ---- vessel routes ------------------------------------------------------------------ */

void ph_heart_blob(const ph_anat *an, ph_blob *b)
{
    ph_blob_init(b, an->heart_c, an->heart_r, 2.2, an->heart_yaw, an->heart_pitch, 0.15);
    b->amp = 3 * S;
    b->freq = 1.0 / 45;
    b->seed = ph_hash_str(an->seed, "heart");
}

int ph_aorta_nodes(const ph_anat *an, double (*nd)[4])
{
    const double *hc = an->heart_c;
    double zc = an->z_carina, za = an->z_arch;
    double zL1 = ph_vert_z(an, "L1"), zL3 = ph_vert_z(an, "L3");
    double zh = fmin(an->dome_r, an->dome_l) - 45 * S; /* aortic hiatus */
    double src[][4] = {
        {hc[0] - 16 * S, hc[1] + 16 * S, hc[2] + 28 * S, 13},
        {-12 * S, ys_(an, zc) - 62 * S, zc - 10 * S, 15},
        {-6 * S, ys_(an, za) - 58 * S, za - 16 * S, 14},
        {6 * S, ys_(an, za) - 42 * S, za, 13},
        {20 * S, ys_(an, za) - 20 * S, za - 10 * S, 12.5},
        {24 * S, ys_(an, zc - 25 * S) - 21 * S, zc - 25 * S, 12},
        {22 * S, ys_(an, 0.5 * (zc + zh)) - 21 * S, 0.5 * (zc + zh), 11.5},
        {13 * S, ys_(an, zh) - 25 * S, zh, 11},
        {9 * S, ys_(an, zL1) - 27 * S, zL1, 10},
        {7 * S, ys_(an, zL3) - 27 * S, zL3, 9.5},
        {4 * S, ys_(an, an->aorta_bif_z) - 26 * S, an->aorta_bif_z, 9},
    };
    int n = (int)(sizeof src / sizeof src[0]);
    for (int i = 0; i < n; i++) {
        memcpy(nd[i], src[i], sizeof src[i]);
        nd[i][3] *= S;
    }
    return n;
}

static void scale_r(double (*nd)[4], int n, double s)
{
    for (int i = 0; i < n; i++) nd[i][3] *= s;
}

/* Paints a vessel along nodes with a thin wall. */
static void vessel(ph_scene *sc, const double (*nd)[4], int n, int label, int mat, double wall,
                   uint64_t over)
{
    ph_tubes t = {0};
    ph_tubes_spline(&t, nd, n, 3, NULL, NULL);
    ph_paint p = ph_paint_simple(label, mat);
    if (wall > 0) {
        p.shell_mat = PH_M_VESSEL_WALL;
        p.shell = wall;
    }
    p.over = over;
    ph_paint_tubes(sc, &t, &p);
    ph_tubes_free(&t);
}

/* Paints fat around a route (mediastinal fat over lung). */
static void fat_sleeve(ph_scene *sc, const double (*nd)[4], int n, double margin)
{
    double tmp[24][4];
    for (int i = 0; i < n && i < 24; i++) {
        memcpy(tmp[i], nd[i], sizeof tmp[i]);
        tmp[i][3] += margin;
    }
    ph_tubes t = {0};
    ph_tubes_spline(&t, (const double (*)[4])tmp, n, 3, NULL, NULL);
    ph_paint p = ph_paint_simple(0, PH_M_FAT);
    p.over = PH_BIT(PH_M_LUNG);
    ph_paint_tubes(sc, &t, &p);
    ph_tubes_free(&t);
}

typedef struct heart_ctx {
    ph_blob b;
    double n[3];
    const ph_anat *an;
} heart_ctx;

/* Chambers: left (posterior-left of the septum) and right, with a thick
 * left and thin right ventricular wall. */
static int heart_mat(const void *ctx, const double p[3], double d)
{
    const heart_ctx *h = ctx;
    double q[3] = {p[0] - h->b.c[0], p[1] - h->b.c[1], p[2] - h->b.c[2]};
    double s = h->an->s;
    /* The septum bows towards the right ventricle. */
    double along = ph_dot(h->n, q), r2 = ph_dot(q, q) - along * along;
    double sep = along + r2 / (160 * s);
    if (d > -(sep > 0 ? 10 : 5) * s) return PH_M_MYOCARDIUM;
    /* Thick between the ventricles, thin between the atria above. */
    double half = q[2] > 0.25 * h->b.r[2] ? 1.2 * s : 4.5 * s;
    if (fabs(sep) < half) return PH_M_MYOCARDIUM;
    return sep > 0 ? PH_M_BLOOD_LEFT : PH_M_BLOOD_RIGHT;
}

static double above_diaphragm(const void *ctx, const double p[3])
{
    const ph_anat *an = ctx;
    return ph_diaphragm_z(an, p[0], p[1]) - p[2];
}

typedef struct inflated {
    const ph_blob *b;
    double m;
} inflated;

static double inflated_sdf(const void *ctx, const double p[3])
{
    const inflated *f = ctx;
    return ph_blob_sdf(f->b, p) - f->m;
}

static void paint_heart(ph_scene *sc)
{
    const ph_anat *an = sc->an;
    heart_ctx h;
    h.an = an;
    ph_heart_blob(an, &h.b);
    /* Pericardial fat first. */
    inflated f = {&h.b, 4 * S};
    double lo[3], hi[3];
    ph_blob_bbox(&h.b, lo, hi);
    for (int a = 0; a < 3; a++) lo[a] -= 8 * S, hi[a] += 8 * S;
    ph_paint fat = ph_paint_simple(0, PH_M_FAT);
    fat.over = PH_BIT(PH_M_LUNG) | PH_BIT(PH_M_FAT);
    fat.clip = above_diaphragm;
    fat.clip_ctx = an;
    ph_paint_sdf(sc, lo, hi, inflated_sdf, &f, &fat);

    double nn[3] = {0.72, 0.55, -0.3};
    double l = sqrt(ph_dot(nn, nn));
    for (int a = 0; a < 3; a++) h.n[a] = nn[a] / l;
    ph_paint p = ph_paint_simple(ph_label("heart"), PH_M_MYOCARDIUM);
    p.fn = heart_mat;
    p.ctx = &h;
    p.clip = above_diaphragm;
    p.clip_ctx = an;
    ph_paint_sdf(sc, lo, hi, ph_blob_sdf, &h.b, &p);

    /* The right atrium bulges to the right, where the caval veins enter. */
    ph_blob ra;
    double rc[3] = {an->heart_c[0] - 0.62 * an->heart_r[0], an->heart_c[1] + 0.2 * an->heart_r[1],
                    an->heart_c[2] + 0.05 * an->heart_r[2]};
    double rr[3] = {24 * S * an->heart_scale, 24 * S, 30 * S};
    ph_blob_init(&ra, rc, rr, 2.1, 0, 0, 0);
    ra.amp = 2 * S;
    ra.freq = 1.0 / 30;
    ra.seed = ph_hash_str(an->seed, "right_atrium");
    ph_paint pra = ph_paint_simple(ph_label("heart"), PH_M_BLOOD_RIGHT);
    pra.shell_mat = PH_M_MYOCARDIUM;
    pra.shell = 2 * S;
    pra.over = PH_BIT(PH_M_LUNG) | PH_BIT(PH_M_FAT) | PH_BIT(PH_M_LUNG_VESSEL);
    pra.clip = above_diaphragm;
    pra.clip_ctx = an;
    ph_paint_blob(sc, &ra, &pra);

    /* Left atrial appendage, up and left on the heart's border. */
    ph_blob laa;
    double c[3] = {an->heart_c[0] + 0.62 * an->heart_r[0], an->heart_c[1] + 0.1 * an->heart_r[1],
                   an->heart_c[2] + 0.55 * an->heart_r[2]};
    double r[3] = {9 * S, 14 * S, 8 * S};
    ph_blob_init(&laa, c, r, 2, 0.6, 0, 0);
    ph_paint pl = ph_paint_simple(ph_label("atrial_appendage_left"), PH_M_BLOOD_LEFT);
    pl.shell_mat = PH_M_MYOCARDIUM;
    pl.shell = 2 * S;
    pl.over = PH_BIT(PH_M_LUNG) | PH_BIT(PH_M_FAT) | PH_BIT(PH_M_MYOCARDIUM);
    ph_paint_blob(sc, &laa, &pl);
}

/* ---- the pulmonary trees ------------------------------------------------------------- */

typedef struct tree {
    ph_tubes vessels, bronchi;
    ph_rng r;
    int maxgen;
    const ph_scene *sc;
} tree;

/* Whether p lies in aerated lung (branches stop at the lung's edge). */
static int in_lung(const ph_scene *sc, const double p[3])
{
    int n[3] = {sc->nx, sc->ny, sc->nz}, ijk[3];
    for (int a = 0; a < 3; a++) {
        ijk[a] = (int)lround((p[a] - sc->org[a]) / sc->sp[a]);
        if (ijk[a] < 0 || ijk[a] >= n[a]) return 0;
    }
    return sc->mat[ph_idx(sc, ijk[0], ijk[1], ijk[2])] == PH_M_LUNG;
}

static void norm3(double v[3])
{
    double l = sqrt(ph_dot(v, v));
    if (l > 0)
        for (int a = 0; a < 3; a++) v[a] /= l;
}

static void grow(tree *t, const double p[3], const double dir[3], double len, double r, int gen,
                 const double out[3])
{
    double q[3];
    for (int a = 0; a < 3; a++) q[a] = p[a] + dir[a] * len;
    if (gen >= 2 && !in_lung(t->sc, q)) return;
    ph_tubes_add(&t->vessels, p, q, r, r * 0.85);
    if (gen <= 2) {
        /* The bronchus runs beside its artery. */
        double up[3] = {0.3, 0.2, 1}, side[3] = {dir[1] * up[2] - dir[2] * up[1],
                                                  dir[2] * up[0] - dir[0] * up[2],
                                                  dir[0] * up[1] - dir[1] * up[0]};
        norm3(side);
        double rb = r * 0.95, off = r + rb + 0.8;
        double a0[3], b0[3];
        for (int a = 0; a < 3; a++) a0[a] = p[a] + side[a] * off, b0[a] = q[a] + side[a] * off;
        ph_tubes_add(&t->bronchi, a0, b0, rb, rb * 0.9);
    }
    if (gen >= t->maxgen || r < 0.6) return;
    for (int c = 0; c < 2; c++) {
        double nd[3];
        double ang = ph_range(&t->r, 0.3, 0.65) * (c ? 1 : -1);
        double rnd[3] = {ph_gauss(&t->r), ph_gauss(&t->r), ph_gauss(&t->r)};
        /* Perpendicular to dir: the plane of branching. */
        double k = ph_dot(rnd, dir);
        for (int a = 0; a < 3; a++) rnd[a] -= k * dir[a];
        norm3(rnd);
        for (int a = 0; a < 3; a++) nd[a] = dir[a] * cos(ang) + rnd[a] * sin(ang) + 0.25 * out[a];
        norm3(nd);
        grow(t, q, nd, len * ph_range(&t->r, 0.78, 0.9), r * ph_range(&t->r, 0.76, 0.84), gen + 1,
             out);
    }
}

static void paint_lung_trees(ph_scene *sc, const double hil[2][3])
{
    const ph_anat *an = sc->an;
    static const double dirs[][3] = {
        {0.25, -0.1, 1},  {0.9, 0.0, 0.45}, {0.45, -0.9, 0.1},  {0.8, 0.2, -0.5},
        {0.3, 0.8, -0.6}, {0.15, 0.35, -1}, {0.45, -0.55, -0.7}, {0.35, 0.8, 0.45},
        {0.6, -0.5, 0.6}, {0.7, 0.6, 0.1}, {0.2, 0.5, 0.9},    {0.6, -0.2, -0.9},
    };
    for (int side = 0; side < 2; side++) {
        tree t;
        memset(&t, 0, sizeof t);
        ph_rng_init(&t.r, an->seed, side ? "lungtree_l" : "lungtree_r");
        t.maxgen = 10;
        t.sc = sc;
        double sx = side ? 1 : -1;
        for (size_t d = 0; d < sizeof dirs / sizeof dirs[0]; d++) {
            double dir[3] = {dirs[d][0] * sx + 0.15 * ph_gauss(&t.r), dirs[d][1] + 0.15 * ph_gauss(&t.r),
                             dirs[d][2] + 0.15 * ph_gauss(&t.r)};
            norm3(dir);
            double out[3] = {dir[0], dir[1], dir[2]};
            grow(&t, hil[side], dir, ph_range(&t.r, 22, 30) * S, 5.5 * S, 0, out);
        }
        /* Vessels thinner than a voxel would vanish between voxel centres;
         * a scanner still shows them (partial volume), so give them at
         * least about half a voxel of radius. */
        double rmin = 0.5 * sqrt(sc->sp[0] * sc->sp[1]);
        for (int i = 0; i < t.vessels.n; i++) {
            t.vessels.s[i].ra = fmax(t.vessels.s[i].ra, rmin);
            t.vessels.s[i].rb = fmax(t.vessels.s[i].rb, rmin);
        }
        ph_paint pv = ph_paint_simple(-1, PH_M_LUNG_VESSEL);
        pv.over = PH_BIT(PH_M_LUNG);
        ph_paint_tubes(sc, &t.vessels, &pv);
        ph_paint pb = ph_paint_simple(-1, PH_M_GAS);
        pb.shell_mat = PH_M_AIRWAY_WALL;
        pb.shell = 1.1 * S;
        pb.over = PH_BIT(PH_M_LUNG) | PH_BIT(PH_M_LUNG_VESSEL);
        ph_paint_tubes(sc, &t.bronchi, &pb);
        ph_tubes_free(&t.vessels);
        ph_tubes_free(&t.bronchi);
    }
}

/* ---- the vessels ------------------------------------------------------------------------ */

void ph_paint_vessels(ph_scene *sc)
{
    const ph_anat *an = sc->an;
    const double *hc = an->heart_c;
    double zc = an->z_carina, za = an->z_arch;
    double ztop = fmax(an->z_hi, an->z_apex) + 40 * S;
    double yt_c = ys_(an, zc) - 33 * S; /* trachea at the carina */

    double ao[16][4];
    int nao = ph_aorta_nodes(an, ao);

    /* Routes. */
    double svc[][4] = {{-46 * S, ys_(an, za + 60 * S) - 45 * S, za + 62 * S, 7.5},
                       {-30 * S, ys_(an, za + 30 * S) - 52 * S, za + 30 * S, 9},
                       {-30 * S, ys_(an, zc) - 55 * S, zc, 10},
                       {hc[0] - 44 * S, hc[1] + 8 * S, hc[2] + 28 * S, 10}};
    double bcv_l[][4] = {{62 * S, ys_(an, za + 50 * S) - 40 * S, za + 50 * S, 6},
                         {24 * S, ys_(an, za + 36 * S) - 62 * S, za + 36 * S, 6.5},
                         {-26 * S, ys_(an, za + 30 * S) - 54 * S, za + 30 * S, 7.5}};
    double bct[][4] = {{ao[3][0] - 8 * S, ao[3][1] - 6 * S, za + 4 * S, 6.5},
                       {-14 * S, ys_(an, za + 40 * S) - 46 * S, za + 40 * S, 6}};
    double sub_r[][4] = {{-14 * S, ys_(an, za + 40 * S) - 46 * S, za + 40 * S, 4.5},
                         {-42 * S, ys_(an, za + 52 * S) - 35 * S, za + 52 * S, 4.5},
                         {-85 * S, ys_(an, za + 42 * S) - 25 * S, za + 42 * S, 4.5}};
    double car_r[][4] = {{-14 * S, ys_(an, za + 40 * S) - 46 * S, za + 40 * S, 4},
                         {-22 * S, ys_(an, za + 90 * S) - 42 * S, za + 90 * S, 4},
                         {-24 * S, ys_(an, ztop) - 40 * S, ztop, 4}};
    double car_l[][4] = {{ao[3][0] + 2 * S, ao[3][1] + 2 * S, za + 6 * S, 4},
                         {18 * S, ys_(an, za + 40 * S) - 44 * S, za + 40 * S, 4},
                         {24 * S, ys_(an, ztop) - 40 * S, ztop, 4}};
    double sub_l[][4] = {{ao[4][0] - 2 * S, ao[4][1] - 2 * S, za + 2 * S, 5},
                         {28 * S, ys_(an, za + 40 * S) - 26 * S, za + 40 * S, 5},
                         {58 * S, ys_(an, za + 55 * S) - 24 * S, za + 55 * S, 5},
                         {90 * S, ys_(an, za + 45 * S) - 18 * S, za + 45 * S, 4.5}};
    double hil[2][3] = {{-48 * S, yt_c + 12 * S, zc - 28 * S}, {50 * S, yt_c + 16 * S, zc - 20 * S}};
    double pa[][4] = {{hc[0] - 2 * S, hc[1] - 30 * S, hc[2] + 36 * S, 12},
                      {14 * S, yt_c - 30 * S, zc - 16 * S, 13}};
    double pa_r[][4] = {{14 * S, yt_c - 30 * S, zc - 16 * S, 10},
                        {-10 * S, yt_c - 14 * S, zc - 22 * S, 10},
                        {hil[0][0], hil[0][1], hil[0][2], 8}};
    double pa_l[][4] = {{14 * S, yt_c - 30 * S, zc - 16 * S, 10},
                        {36 * S, yt_c - 12 * S, zc - 10 * S, 10},
                        {hil[1][0], hil[1][1], hil[1][2], 8}};
    double la[3] = {hc[0] - 6 * S, hc[1] + 0.8 * an->heart_r[1], hc[2] + 14 * S};
    double pv[4][3][4] = {
        {{-46 * S, yt_c + 6 * S, zc - 45 * S, 6}, {-28 * S, la[1], la[2] + 6 * S, 6.5}, {la[0], la[1], la[2], 7}},
        {{-44 * S, yt_c + 26 * S, hc[2] - 8 * S, 6}, {-24 * S, la[1] + 4 * S, la[2] - 8 * S, 6.5}, {la[0], la[1], la[2], 7}},
        {{46 * S, yt_c + 10 * S, zc - 40 * S, 6}, {26 * S, la[1], la[2] + 8 * S, 6.5}, {la[0], la[1], la[2], 7}},
        {{46 * S, yt_c + 28 * S, hc[2] - 6 * S, 6}, {24 * S, la[1] + 4 * S, la[2] - 6 * S, 6.5}, {la[0], la[1], la[2], 7}},
    };
    double trach[][4] = {{2 * S, ys_(an, ztop) - 34 * S, ztop, 8.5},
                         {0, ys_(an, za) - 36 * S, za, 9},
                         {-1 * S, yt_c, zc, 8.5}};
    double br_r[][4] = {{-1 * S, yt_c, zc, 7}, {-22 * S, yt_c + 8 * S, zc - 16 * S, 7},
                        {hil[0][0] + 6 * S, hil[0][1] - 4 * S, hil[0][2] - 4 * S, 5.5}};
    double br_l[][4] = {{-1 * S, yt_c, zc, 6.5}, {24 * S, yt_c + 8 * S, zc - 12 * S, 6.5},
                        {hil[1][0] - 6 * S, hil[1][1] - 4 * S, hil[1][2] - 6 * S, 5.5}};
    double zge = an->dome_l - 22 * S;
    double eso[][4] = {{3 * S, ys_(an, ztop) - 19 * S, ztop, 7},
                       {5 * S, ys_(an, zc) - 19 * S, zc, 7.5},
                       {4 * S, ys_(an, hc[2]) - 24 * S, hc[2], 8},
                       {12 * S, ys_(an, an->dome_l) - 32 * S, an->dome_l, 8},
                       {30 * S, ys_(an, zge) - 45 * S, zge, 9}};

#define N(a) ((int)(sizeof(a) / sizeof((a)[0])))
    double (*all_s[])[4] = {svc, bcv_l, bct, sub_r, car_r, car_l, sub_l, pa, pa_r, pa_l, trach, eso};
    int all_n[] = {N(svc), N(bcv_l), N(bct), N(sub_r), N(car_r), N(car_l), N(sub_l), N(pa), N(pa_r),
                   N(pa_l), N(trach), N(eso)};
    for (size_t i = 0; i < sizeof all_n / sizeof all_n[0]; i++) scale_r(all_s[i], all_n[i], S);
    scale_r(br_r, N(br_r), S);
    scale_r(br_l, N(br_l), S);
    for (int i = 0; i < 4; i++) scale_r(pv[i], 3, S);

    /* Mediastinal fat around everything that runs between the lungs. */
    fat_sleeve(sc, (const double (*)[4])ao, nao, 5 * S);
    for (size_t i = 0; i < sizeof all_n / sizeof all_n[0]; i++)
        fat_sleeve(sc, (const double (*)[4])all_s[i], all_n[i], 4 * S);
    for (int i = 0; i < 4; i++) fat_sleeve(sc, (const double (*)[4])pv[i], 3, 3 * S);
    fat_sleeve(sc, (const double (*)[4])br_r, N(br_r), 2 * S);
    fat_sleeve(sc, (const double (*)[4])br_l, N(br_l), 2 * S);

    paint_heart(sc);

    /* Thyroid lobes beside the trachea below the larynx. */
    double zt1 = an->vert[2].z_hi;
    for (int k = 0; k < 2; k++) {
        ph_blob th;
        double c[3] = {(k ? 17 : -17) * S, ys_(an, zt1 + 22 * S) - 32 * S, zt1 + 24 * S};
        double r[3] = {9 * S, 10 * S, 22 * S};
        ph_blob_init(&th, c, r, 2, k ? -0.3 : 0.3, 0, 0);
        th.amp = 1.5 * S;
        th.freq = 1.0 / 20;
        th.seed = ph_hash_str(an->seed, k ? "thyroid_l" : "thyroid_r");
        ph_paint pt = ph_paint_simple(ph_label("thyroid_gland"), PH_M_THYROID);
        pt.over = PH_BIT(PH_M_FAT) | PH_BIT(PH_M_MUSCLE) | PH_BIT(PH_M_LUNG);
        ph_paint_blob(sc, &th, &pt);
    }

    int lab_ao = ph_label("aorta");
    vessel(sc, (const double (*)[4])ao, nao, lab_ao, PH_M_ARTERY, 1.5 * S, 0);
    vessel(sc, (const double (*)[4])bct, N(bct), ph_label("brachiocephalic_trunk"), PH_M_ARTERY, 1.2 * S, 0);
    vessel(sc, (const double (*)[4])sub_r, N(sub_r), ph_label("subclavian_artery_right"), PH_M_ARTERY, 1 * S, 0);
    vessel(sc, (const double (*)[4])car_r, N(car_r), ph_label("common_carotid_artery_right"), PH_M_ARTERY, 1 * S, 0);
    vessel(sc, (const double (*)[4])car_l, N(car_l), ph_label("common_carotid_artery_left"), PH_M_ARTERY, 1 * S, 0);
    vessel(sc, (const double (*)[4])sub_l, N(sub_l), ph_label("subclavian_artery_left"), PH_M_ARTERY, 1 * S, 0);
    vessel(sc, (const double (*)[4])svc, N(svc), ph_label("superior_vena_cava"), PH_M_VEIN, 0, 0);
    vessel(sc, (const double (*)[4])bcv_l, N(bcv_l), ph_label("brachiocephalic_vein_left"), PH_M_VEIN, 0, 0);
    double bcv_r[][4] = {{-62 * S, ys_(an, za + 58 * S) - 38 * S, za + 58 * S, 6.5 * S},
                         {svc[0][0], svc[0][1], svc[0][2], svc[0][3]}};
    vessel(sc, (const double (*)[4])bcv_r, 2, ph_label("brachiocephalic_vein_right"), PH_M_VEIN, 0, 0);
    /* The pulmonary arteries carry right-heart blood; TotalSegmentator's
     * "total" task has no label for them. */
    vessel(sc, (const double (*)[4])pa, N(pa), 0, PH_M_BLOOD_RIGHT, 1 * S, 0);
    vessel(sc, (const double (*)[4])pa_r, N(pa_r), 0, PH_M_BLOOD_RIGHT, 1 * S, 0);
    vessel(sc, (const double (*)[4])pa_l, N(pa_l), 0, PH_M_BLOOD_RIGHT, 1 * S, 0);
    for (int i = 0; i < 4; i++)
        vessel(sc, (const double (*)[4])pv[i], 3, ph_label("pulmonary_vein"), PH_M_BLOOD_LEFT, 0,
               ~PH_BIT(PH_M_MYOCARDIUM) & ~PH_BIT(PH_M_BLOOD_LEFT) & ~PH_BIT(PH_M_BLOOD_RIGHT));

    /* Airways: trachea, then the main bronchi (unlabelled outside the lungs,
     * part of their lobe inside). */
    ph_tubes t = {0};
    ph_tubes_spline(&t, (const double (*)[4])trach, N(trach), 3, NULL, NULL);
    ph_paint ptr = ph_paint_simple(ph_label("trachea"), PH_M_GAS);
    ptr.shell_mat = PH_M_AIRWAY_WALL;
    ptr.shell = 2 * S;
    ph_paint_tubes(sc, &t, &ptr);
    ph_tubes_free(&t);
    ph_paint pbr = ph_paint_simple(-1, PH_M_GAS);
    pbr.shell_mat = PH_M_AIRWAY_WALL;
    pbr.shell = 1.6 * S;
    pbr.over = ~PH_BIT(PH_M_BLOOD_RIGHT) & ~PH_BIT(PH_M_ARTERY) & ~PH_BIT(PH_M_VESSEL_WALL);
    ph_tubes_spline(&t, (const double (*)[4])br_r, N(br_r), 3, NULL, NULL);
    ph_tubes_spline(&t, (const double (*)[4])br_l, N(br_l), 3, NULL, NULL);
    ph_paint_tubes(sc, &t, &pbr);
    ph_tubes_free(&t);

    /* Oesophagus: collapsed muscle tube, sometimes a little air. */
    ph_tubes_spline(&t, (const double (*)[4])eso, N(eso), 3, NULL, NULL);
    ph_paint pe = ph_paint_simple(ph_label("esophagus"), PH_M_ESOPHAGUS);
    ph_paint_tubes(sc, &t, &pe);
    ph_tubes_free(&t);
    ph_rng r;
    ph_rng_init(&r, an->seed, "esophagus");
    if (ph_chance(&r, 0.5)) {
        double air[N(eso)][4];
        memcpy(air, eso, sizeof air);
        for (int i = 0; i < N(eso); i++) air[i][3] = 2.2 * S;
        ph_tubes_spline(&t, (const double (*)[4])air, N(eso), 3, NULL, NULL);
        ph_paint pa2 = ph_paint_simple(-1, PH_M_GAS);
        pa2.over = PH_BIT(PH_M_ESOPHAGUS);
        ph_paint_tubes(sc, &t, &pa2);
        ph_tubes_free(&t);
    }

    paint_lung_trees(sc, (const double (*)[3])hil);

    /* ---- abdomen and pelvis ---- */
    double zL1 = ph_vert_z(an, "L1"), zL3 = ph_vert_z(an, "L3"), zL5 = ph_vert_z(an, "L5");
    double zb = an->aorta_bif_z, zs = an->z_symphysis;
    double ivc[][4] = {
        {-14 * S, ys_(an, zb - 22 * S) - 24 * S, zb - 22 * S, 9},
        {-22 * S, ys_(an, zL3) - 27 * S, zL3, 11},
        {-26 * S, ys_(an, zL1 + 12 * S) - 32 * S, zL1 + 12 * S, 12},
        {-30 * S, ys_(an, an->dome_r - 55 * S) - 42 * S, an->dome_r - 55 * S, 13},
        {-28 * S, ys_(an, an->dome_r - 12 * S) - 50 * S, an->dome_r - 12 * S, 13},
        {hc[0] - 42 * S, hc[1] + 14 * S, hc[2] - 12 * S, 12},
    };
    scale_r(ivc, N(ivc), S);
    vessel(sc, (const double (*)[4])ivc, N(ivc), ph_label("inferior_vena_cava"), PH_M_VEIN, 0, 0);
    for (int k = 0; k < 2; k++) {
        double sx = k ? 1 : -1;
        double ia[][4] = {
            {ao[nao - 1][0], ao[nao - 1][1], ao[nao - 1][2], 7},
            {sx * 20 * S, ys_(an, zb - 25 * S) - 25 * S, zb - 25 * S, 6.5},
            {sx * 38 * S, 18 * S, 4 * S, 6},
            {sx * 56 * S, -2 * S, -40 * S, 5},
            {sx * 72 * S, -26 * S, zs + 10 * S, 5},
            {sx * 80 * S, -34 * S, zs - 40 * S, 4.5},
        };
        scale_r(ia, N(ia), S);
        vessel(sc, (const double (*)[4])ia, N(ia),
               ph_label(k ? "iliac_artery_left" : "iliac_artery_right"), PH_M_ARTERY, 1 * S, 0);
        double iv[][4] = {
            {ivc[0][0], ivc[0][1], ivc[0][2], 8},
            {sx * 30 * S, 32 * S, 0, 7.5},
            {sx * 50 * S, 14 * S, -40 * S, 7},
            {sx * 64 * S, -16 * S, zs + 10 * S, 7},
            {sx * 72 * S, -26 * S, zs - 40 * S, 6.5},
        };
        scale_r(iv, N(iv), S);
        iv[3][0] -= sx * 10 * S; /* medial to the artery near the groin */
        iv[4][0] -= sx * 12 * S;
        vessel(sc, (const double (*)[4])iv, N(iv),
               ph_label(k ? "iliac_vena_left" : "iliac_vena_right"), PH_M_VEIN, 0,
               ~PH_BIT(PH_M_ARTERY) & ~PH_BIT(PH_M_VESSEL_WALL));
    }
    (void)zL5;

    /* Renal vessels (unlabelled) from the aorta and to the caval vein. */
    for (int k = 0; k < 2; k++) {
        const double *kc = an->kid_c[k];
        double sx = k ? 1 : -1;
        double hilum[3] = {kc[0] - sx * 24 * S, kc[1] - 12 * S, kc[2]};
        double ra[][4] = {{ao[nao - 3][0], ys_(an, kc[2] + 8 * S) - 24 * S, kc[2] + 8 * S, 3.2 * S},
                          {hilum[0], hilum[1] + 4 * S, hilum[2] + 2 * S, 3 * S}};
        vessel(sc, (const double (*)[4])ra, 2, 0, PH_M_ARTERY, 0, PH_BIT(PH_M_FAT) | PH_BIT(PH_M_MUSCLE));
        /* The left renal vein crosses in front of the aorta. */
        double rv[][4] = {{hilum[0], hilum[1] - 2 * S, hilum[2], 4.5 * S},
                          {10 * S, ys_(an, kc[2]) - 42 * S, kc[2] + 4 * S, 4.5 * S},
                          {-22 * S, ys_(an, kc[2] + 6 * S) - 30 * S, kc[2] + 6 * S, 5 * S}};
        if (!k) memcpy(rv[1], rv[2], sizeof rv[1]);
        vessel(sc, (const double (*)[4])rv, k ? 3 : 2, 0, PH_M_VEIN, 0,
               PH_BIT(PH_M_FAT) | PH_BIT(PH_M_MUSCLE) | PH_BIT(PH_M_BOWEL_WALL));
    }
    /* Superior mesenteric artery and vein, celiac trunk (unlabelled). */
    double sma[][4] = {{8 * S, ys_(an, zL1) - 32 * S, zL1 - 4 * S, 4 * S},
                       {5 * S, -46 * S, zL1 - 30 * S, 3.8 * S},
                       {0, -56 * S, zL3, 3.2 * S},
                       {-12 * S, -52 * S, zL5, 2.4 * S}};
    vessel(sc, (const double (*)[4])sma, N(sma), 0, PH_M_ARTERY, 0, PH_BIT(PH_M_FAT));
    double smv[][4] = {{-26 * S, -50 * S, zL5, 3.4 * S},
                       {-14 * S, -56 * S, zL3, 4.5 * S},
                       {-8 * S, -44 * S, zL1 - 22 * S, 5.5 * S},
                       {-6 * S, -26 * S, zL1 - 10 * S, 6 * S}};
    vessel(sc, (const double (*)[4])smv, N(smv), 0, PH_M_PORTAL, 0, PH_BIT(PH_M_FAT));
    double cel[][4] = {{9 * S, ys_(an, zL1 + 20 * S) - 30 * S, zL1 + 20 * S, 3.5 * S},
                       {8 * S, ys_(an, zL1 + 24 * S) - 52 * S, zL1 + 24 * S, 3.2 * S}};
    vessel(sc, (const double (*)[4])cel, 2, 0, PH_M_ARTERY, 0, PH_BIT(PH_M_FAT));

    /* Portal and splenic vein. */
    const double *sp = an->spleen_c;
    double pv2[][4] = {
        {sp[0] - 22 * S, sp[1] - 16 * S, sp[2] - 14 * S, 4.5 * S},
        {55 * S, 0, zL1 + 2 * S, 5 * S},
        {20 * S, -20 * S, zL1 - 8 * S, 5.5 * S},
        {-6 * S, -24 * S, zL1 - 10 * S, 6.5 * S},
        {-24 * S, -18 * S, zL1 + 8 * S, 7 * S},
        {-42 * S, -12 * S, zL1 + 26 * S, 6.5 * S},
        {-58 * S, -8 * S, zL1 + 34 * S, 5.5 * S},
    };
    vessel(sc, (const double (*)[4])pv2, N(pv2), ph_label("portal_vein_and_splenic_vein"),
           PH_M_PORTAL, 0, ~PH_BIT(PH_M_ARTERY) & ~PH_BIT(PH_M_VESSEL_WALL));
#undef N
}
