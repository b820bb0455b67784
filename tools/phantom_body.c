/*
 * phantom_body.c - the trunk: skin, subcutaneous fat, the muscle wall, the
 * fat of the body cavities, the scanner table, and the muscles that
 * TotalSegmentator names (autochthon, iliopsoas, gluteal muscles).  The
 * unnamed muscle and fat keep label 0, as in TotalSegmentator's "total".
 *
 * Threading: paints one scene; no shared state.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "tools/phantom.h"

/* The couch the patient lies on: a curved carbon-fibre plate under the back
 * (supine) or under the chest and belly (prone). */
typedef struct table_ctx {
    double t0, curve, g, thick;
} table_ctx;

static double table_sdf(const void *ctx, const double p[3])
{
    const table_ctx *t = ctx;
    double gy = t->g * p[1] - (t->t0 - t->curve * p[0] * p[0]);
    return fabs(gy - t->thick / 2) - t->thick / 2;
}

static void paint_table(ph_scene *sc)
{
    const ph_anat *an = sc->an;
    /* The body rests on the plate where it reaches furthest down. */
    double edge = -1e9;
    for (double z = an->z_lo; z <= an->z_hi; z += 4) {
        double w, d, yc;
        ph_outline(an, z, &w, &d, &yc);
        double y = an->gravity > 0 ? yc + d + ph_fat_at(an, z, 0, 1)
                                   : -(yc - d - ph_fat_at(an, z, 0, -1));
        if (y > edge) edge = y;
    }
    table_ctx t = {.t0 = edge + 1.5, .curve = 0.0007 / an->s, .g = an->gravity, .thick = 9};
    double lo[3] = {-260, -400, an->z_lo - 20}, hi[3] = {260, 400, an->z_hi + 20};
    ph_paint p = ph_paint_simple(0, PH_M_TABLE_CORE);
    p.shell_mat = PH_M_TABLE;
    p.shell = 1.6;
    p.over = PH_BIT(PH_M_AIR);
    ph_paint_sdf(sc, lo, hi, table_sdf, &t, &p);
}

/* ---- the paraspinal muscles ------------------------------------------------ */

typedef struct autoch_ctx {
    const ph_anat *an;
    double side;
    double z_lo;
} autoch_ctx;

static double autochthon_sdf(const void *ctx, const double p[3])
{
    const autoch_ctx *a = ctx;
    const ph_anat *an = a->an;
    double s = an->s;
    if (p[2] < a->z_lo) return 1;
    double lumbar = ph_smoothstep(240 * s, 150 * s, p[2]);
    double sacral = ph_smoothstep(20 * s, -40 * s, p[2]);
    double ys = ph_spine_y(an, p[2]);
    double cx = a->side * (24 + 8 * lumbar - 6 * sacral) * s;
    double cy = ys + (44 + 4 * lumbar + 22 * sacral) * s;
    double hw = (17 + 10 * lumbar - 5 * sacral) * s, hd = (17 + 7 * lumbar - 6 * sacral) * s;
    double u = fabs(p[0] - cx) / hw, v = fabs(p[1] - cy) / hd;
    double rho = cbrt(u * u * u + v * v * v);
    double d = (rho - 1) * fmin(hw, hd);
    /* It fills the groove beside the spinous processes up to the skin's
     * muscle surface but not across the midline. */
    d = fmax(d, -ph_muscle_depth(an, p, NULL, NULL) + 1.5);
    d = fmax(d, 4 * s - a->side * p[0]);
    return d;
}

/* ---- iliopsoas and gluteal muscles ------------------------------------------ */

static void paint_iliopsoas(ph_scene *sc, double side, int label)
{
    const ph_anat *an = sc->an;
    double s = an->s;
    double zL1 = ph_vert_z(an, "L1"), zL3 = ph_vert_z(an, "L3"), zL5 = ph_vert_z(an, "L5");
    double nd[8][4] = {
        {side * 26 * s, ph_spine_y(an, zL1 + 25 * s) + 4 * s, zL1 + 25 * s, 4 * s},
        {side * 31 * s, ph_spine_y(an, zL1) + 2 * s, zL1, 9 * s},
        {side * 40 * s, ph_spine_y(an, zL3) + 2 * s, zL3, 16 * s},
        {side * 50 * s, ph_spine_y(an, zL5) - 2 * s, zL5, 20 * s},
        {side * 60 * s, 6 * s, -10 * s, 20 * s},
        {side * 70 * s, -16 * s, -50 * s, 18 * s},
        {side * 80 * s, -38 * s, an->z_symphysis + 15 * s, 15 * s},
        {side * 92 * s, -24 * s, an->z_symphysis - 50 * s, 11 * s},
    };
    ph_tubes t = {0};
    ph_tubes_spline(&t, (const double (*)[4])nd, 8, 4, NULL, NULL);
    ph_paint p = ph_paint_simple(label, PH_M_MUSCLE);
    p.clip = ph_cavity_sdf;
    p.clip_ctx = an;
    ph_paint_tubes(sc, &t, &p);
    ph_tubes_free(&t);
    /* The iliacus fills the iliac fossa and joins the psoas. */
    ph_blob b;
    double c[3] = {side * 78 * s, 12 * s, 12 * s}, r[3] = {13 * s, 34 * s, 42 * s};
    ph_blob_init(&b, c, r, 2.2, side * 0.45, 0.25, side * -0.35);
    b.amp = 2 * s;
    b.freq = 1.0 / 30;
    b.seed = ph_hash_str(an->seed, side > 0 ? "iliacus_l" : "iliacus_r");
    ph_paint_blob(sc, &b, &p);
}

typedef struct clipped_blob {
    ph_blob b;
    const ph_anat *an;
} clipped_blob;

/* A blob kept inside the muscle surface of the trunk. */
static double inside_blob_sdf(const void *ctx, const double p[3])
{
    const clipped_blob *cb = ctx;
    double d = ph_blob_sdf(&cb->b, p);
    if (d >= 0) return d;
    return fmax(d, 1.0 - ph_muscle_depth(cb->an, p, NULL, NULL));
}

static void paint_inside_blob(ph_scene *sc, const char *name, int label, const double c[3],
                              const double r[3], double yaw, double pitch, double roll)
{
    clipped_blob cb;
    cb.an = sc->an;
    ph_blob_init(&cb.b, c, r, 2.3, yaw, pitch, roll);
    cb.b.amp = 3 * sc->an->s;
    cb.b.freq = 1.0 / 35;
    cb.b.seed = ph_hash_str(sc->an->seed, name);
    double lo[3], hi[3];
    ph_blob_bbox(&cb.b, lo, hi);
    ph_paint p = ph_paint_simple(label, PH_M_MUSCLE);
    ph_paint_sdf(sc, lo, hi, inside_blob_sdf, &cb, &p);
}

static void paint_gluteal(ph_scene *sc)
{
    const ph_anat *an = sc->an;
    double s = an->s, zs = an->z_symphysis;
    for (int k = 0; k < 2; k++) {
        double side = k ? 1 : -1;
        const char *sfx = k ? "left" : "right";
        char name[40];
        /* Thigh muscles round the femur and the obturator muscle on the
         * pelvic wall (unnamed in TotalSegmentator). */
        double ct[3] = {side * 100 * s, -8 * s, zs - 75 * s}, rt[3] = {62 * s, 70 * s, 95 * s};
        paint_inside_blob(sc, k ? "thigh_l" : "thigh_r", 0, ct, rt, 0, 0, 0);
        double co[3] = {side * 66 * s, 12 * s, zs + 18 * s}, ro[3] = {13 * s, 38 * s, 34 * s};
        paint_inside_blob(sc, k ? "obturator_l" : "obturator_r", 0, co, ro, side * 0.2, 0, 0);
        /* The gluteal muscles run from the iliac wing and sacrum down to the
         * greater trochanter and the femur. */
        snprintf(name, sizeof name, "gluteus_minimus_%s", sfx);
        double c1[3] = {side * 104 * s, 24 * s, zs + 58 * s}, r1[3] = {13 * s, 34 * s, 56 * s};
        paint_inside_blob(sc, name, ph_label(name), c1, r1, side * 0.3, 0, side * 0.15);
        snprintf(name, sizeof name, "gluteus_medius_%s", sfx);
        double c2[3] = {side * 118 * s, 36 * s, zs + 95 * s}, r2[3] = {21 * s, 46 * s, 80 * s};
        paint_inside_blob(sc, name, ph_label(name), c2, r2, side * 0.35, 0, side * -0.2);
        snprintf(name, sizeof name, "gluteus_maximus_%s", sfx);
        double c3[3] = {side * 74 * s, 86 * s, zs + 8 * s}, r3[3] = {58 * s, 28 * s, 88 * s};
        paint_inside_blob(sc, name, ph_label(name), c3, r3, side * -0.35, 0, side * 0.25);
    }
}

/* ---- the trunk ------------------------------------------------------------------ */

void ph_paint_body(ph_scene *sc)
{
    const ph_anat *an = sc->an;
    double p[3];
    for (int k = 0; k < sc->nz; k++) {
        ph_pos(sc, 0, 0, k, p);
        double w, d, yc;
        ph_outline(an, p[2], &w, &d, &yc);
        /* No subcutaneous fat is thicker than this: it bounds the rows and
         * columns worth visiting. */
        double fmax_ = 2.6 * an->fat_mm + 2;
        for (int j = 0; j < sc->ny; j++) {
            ph_pos(sc, 0, j, k, p);
            double dy = p[1] - yc;
            if (dy < -d - fmax_ || dy > d + fmax_) continue;
            for (int i = 0; i < sc->nx; i++) {
                ph_pos(sc, i, j, k, p);
                if (fabs(p[0]) > w + fmax_) continue;
                double ux, uy;
                double md = ph_muscle_depth(an, p, &ux, &uy);
                double skin = md + ph_fat_at(an, p[2], ux, uy);
                if (skin < 0) continue;
                int m;
                if (skin < 1.8)
                    m = PH_M_SKIN;
                else if (md < 0)
                    m = PH_M_FAT;
                else
                    m = ph_cavity_from(an, p, md, ux, uy) < 0 ? PH_M_FAT : PH_M_MUSCLE;
                sc->mat[ph_idx(sc, i, j, k)] = (uint8_t)m;
            }
        }
    }
    paint_table(sc);

    double s = an->s;
    for (int k = 0; k < 2; k++) {
        double side = k ? 1 : -1;
        autoch_ctx a = {an, side, -60 * s};
        double lo[3] = {k ? 0 : -80 * s, -50 * s, a.z_lo}, hi[3] = {k ? 80 * s : 0, 180 * s, 700 * s};
        ph_paint pa = ph_paint_simple(ph_label(k ? "autochthon_left" : "autochthon_right"),
                                      PH_M_MUSCLE);
        ph_paint_sdf(sc, lo, hi, autochthon_sdf, &a, &pa);
        paint_iliopsoas(sc, side, ph_label(k ? "iliopsoas_left" : "iliopsoas_right"));
    }
    paint_gluteal(sc);
}
