/*
 * phantom_abdomen.c - the abdominal and pelvic organs: liver (three lobes
 * blended, with hepatic and portal vein branches), gallbladder, spleen,
 * kidneys with cortex, medulla, sinus and pelvis, ureters, adrenal glands,
 * pancreas, stomach with an air-fluid level, duodenum, small bowel loops,
 * colon with haustra and mottled stool, urinary bladder, prostate or uterus.
 *
 * Solid organs stay under the diaphragm and inside the trunk wall (the
 * clip functions), so an enlarged organ pushes against the wall as it
 * would, instead of leaving the body.  Gas in hollow organs rises against
 * gravity: anterior when supine, posterior when prone.
 *
 * Threading: paints one scene; no shared state.
 */
#include <math.h>
#include <string.h>

#include "tools/phantom.h"

#define S (an->s)

static double ys_(const ph_anat *an, double z) { return ph_spine_y(an, z); }

/* Inside the trunk wall and below the diaphragm. */
static double under_diaphragm(const void *ctx, const double p[3])
{
    const ph_anat *an = ctx;
    double d = ph_cavity_sdf(an, p);
    return fmax(d, p[2] - (ph_diaphragm_z(an, p[0], p[1]) - 5 * S));
}

/* ---- liver ---------------------------------------------------------------------- */

typedef struct liver_ctx {
    ph_blob b[3];
    double k, amp;
    uint64_t seed;
} liver_ctx;

static void liver_init(const ph_anat *an, liver_ctx *L)
{
    double ls = an->liver_scale;
    double ref[3] = {-45 * S, -5 * S, an->dome_r - 70 * S};
    double off[3][3] = {{-25, 10, 0}, {50, -50, 28}, {28, 28, 10}};
    double rad[3][3] = {{64, 82, 78}, {62, 32, 36}, {20, 20, 32}};
    double yaw[3] = {0.1, 0.25, 0};
    for (int i = 0; i < 3; i++) {
        double c[3], r[3];
        for (int a = 0; a < 3; a++) {
            c[a] = ref[a] + off[i][a] * S * ls;
            r[a] = rad[i][a] * S * ls;
        }
        ph_blob_init(&L->b[i], c, r, i == 0 ? 2.3 : 2.2, yaw[i], i == 1 ? -0.1 : 0, 0);
    }
    L->k = 18 * S;
    L->amp = 3.5 * S;
    L->seed = ph_hash_str(an->seed, "liver");
}

static double liver_sdf(const void *ctx, const double p[3])
{
    const liver_ctx *L = ctx;
    /* The three lobes share one surface noise, added once after the
     * blend. */
    double d = ph_blob_sdf(&L->b[0], p);
    d = ph_smin(d, ph_blob_sdf(&L->b[1], p), L->k);
    d = ph_smin(d, ph_blob_sdf(&L->b[2], p), L->k * 0.6);
    if (d < 1.3 * L->amp + 1 && d > -1.3 * L->amp - 25) d += L->amp * ph_fbm(L->seed, p, 1.0 / 45);
    return d;
}

static void paint_liver(ph_scene *sc)
{
    const ph_anat *an = sc->an;
    liver_ctx L;
    liver_init(an, &L);
    double lo[3] = {1e9, 1e9, 1e9}, hi[3] = {-1e9, -1e9, -1e9};
    for (int i = 0; i < 3; i++) {
        double l[3], h[3];
        ph_blob_bbox(&L.b[i], l, h);
        for (int a = 0; a < 3; a++) {
            lo[a] = fmin(lo[a], l[a] - L.k - 1.3 * L.amp);
            hi[a] = fmax(hi[a], h[a] + L.k + 1.3 * L.amp);
        }
    }
    int lab = ph_label("liver");
    ph_paint p = ph_paint_simple(lab, PH_M_LIVER);
    p.clip = under_diaphragm;
    p.clip_ctx = an;
    ph_paint_sdf(sc, lo, hi, liver_sdf, &L, &p);

    /* Hepatic veins converge on the caval vein under the dome; portal
     * branches spread from the hilum.  They stay inside the liver. */
    double dr = an->dome_r, zL1 = ph_vert_z(an, "L1");
    double ivc[3] = {-28 * S, ys_(an, dr - 12 * S) - 50 * S, dr - 15 * S};
    double hv_end[3][3] = {{-105 * S, 10 * S, dr - 62 * S},
                           {-50 * S, -58 * S, dr - 72 * S},
                           {8 * S, -62 * S, dr - 36 * S}};
    ph_tubes t = {0};
    for (int i = 0; i < 3; i++) {
        double nd[3][4] = {{ivc[0], ivc[1], ivc[2], 5.5 * S},
                           {0.5 * (ivc[0] + hv_end[i][0]), 0.5 * (ivc[1] + hv_end[i][1]),
                            0.5 * (ivc[2] + hv_end[i][2]) + 6 * S, 4 * S},
                           {hv_end[i][0], hv_end[i][1], hv_end[i][2], 1.8 * S}};
        ph_tubes_spline(&t, (const double (*)[4])nd, 3, 3, NULL, NULL);
    }
    double porta[3] = {-52 * S, -8 * S, zL1 + 34 * S};
    double pv_end[4][3] = {{-110 * S, 12 * S, zL1 + 40 * S},
                           {-85 * S, -30 * S, zL1 + 10 * S},
                           {-10 * S, -50 * S, zL1 + 60 * S},
                           {25 * S, -62 * S, dr - 45 * S}};
    for (int i = 0; i < 4; i++) {
        double nd[3][4] = {{porta[0], porta[1], porta[2], 5.5 * S},
                           {0.5 * (porta[0] + pv_end[i][0]), 0.5 * (porta[1] + pv_end[i][1]) - 4 * S,
                            0.5 * (porta[2] + pv_end[i][2]), 3.8 * S},
                           {pv_end[i][0], pv_end[i][1], pv_end[i][2], 1.6 * S}};
        ph_tubes_spline(&t, (const double (*)[4])nd, 3, 3, NULL, NULL);
    }
    ph_paint pv = ph_paint_simple(-1, PH_M_LIVER_VESSEL);
    pv.over_label = lab;
    pv.over = PH_BIT(PH_M_LIVER);
    ph_paint_tubes(sc, &t, &pv);
    ph_tubes_free(&t);
}

/* ---- gallbladder, spleen ------------------------------------------------------------ */

static void paint_gallbladder(ph_scene *sc)
{
    const ph_anat *an = sc->an;
    ph_blob b;
    double r[3] = {an->gb_r, an->gb_r * 0.9, an->gb_len};
    ph_blob_init(&b, an->gb_c, r, 2.1, 0.35, 0.55, 0.1);
    b.amp = 1.2 * S;
    b.freq = 1.0 / 25;
    b.seed = ph_hash_str(an->seed, "gallbladder");
    ph_paint p = ph_paint_simple(ph_label("gallbladder"), PH_M_BILE);
    p.shell_mat = PH_M_VESSEL_WALL;
    p.shell = 1.8 * S;
    p.clip = under_diaphragm;
    p.clip_ctx = an;
    ph_paint_blob(sc, &b, &p);
}

typedef struct notched {
    ph_blob b, notch;
} notched;

static double notched_sdf(const void *ctx, const double p[3])
{
    const notched *n = ctx;
    double d = ph_blob_sdf(&n->b, p);
    if (d > 2) return d;
    return fmax(d, -ph_blob_sdf(&n->notch, p));
}

static void paint_spleen(ph_scene *sc)
{
    const ph_anat *an = sc->an;
    notched n;
    double ss = an->spleen_scale * S;
    double r[3] = {21 * ss, 40 * ss, 52 * ss};
    double yaw = 0.35;
    ph_blob_init(&n.b, an->spleen_c, r, 2.2, yaw, -0.35, 0);
    n.b.amp = 3 * S;
    n.b.freq = 1.0 / 40;
    n.b.seed = ph_hash_str(an->seed, "spleen");
    double m[3] = {-cos(yaw), -sin(yaw), 0};
    double c[3], rn[3] = {13 * ss, 16 * ss, 24 * ss};
    for (int a = 0; a < 3; a++) c[a] = an->spleen_c[a] + m[a] * 24 * ss;
    ph_blob_init(&n.notch, c, rn, 2, yaw, 0, 0);
    double lo[3], hi[3];
    ph_blob_bbox(&n.b, lo, hi);
    ph_paint p = ph_paint_simple(ph_label("spleen"), PH_M_SPLEEN);
    p.clip = under_diaphragm;
    p.clip_ctx = an;
    ph_paint_sdf(sc, lo, hi, notched_sdf, &n, &p);
}

/* ---- kidneys, ureters, adrenal glands ---------------------------------------------- */

void ph_kidney_blob(const ph_anat *an, int left, ph_blob *b, double medial[3])
{
    double sx = left ? 1 : -1;
    double r[3] = {27 * S, 22 * S, an->kid_len};
    double th = 0.55 + an->kid_rot[left];
    /* The hilum faces medially and forward; the upper pole leans medially
     * and backwards. */
    ph_blob_init(b, an->kid_c[left], r, 2.1, sx * th, -0.25, sx * -0.18);
    b->amp = 1.5 * S;
    b->freq = 1.0 / 30;
    b->seed = ph_hash_str(an->seed, left ? "kidney_l" : "kidney_r");
    medial[0] = -sx * cos(th);
    medial[1] = -sin(th);
    medial[2] = 0;
}

static int kidney_mat(const void *ctx, const double p[3], double d)
{
    const ph_anat *an = ctx;
    (void)p;
    return d > -6.5 * an->s ? PH_M_KID_CORTEX : PH_M_KID_MEDULLA;
}

static void paint_kidneys(ph_scene *sc)
{
    const ph_anat *an = sc->an;
    for (int k = 0; k < 2; k++) {
        notched n;
        double m[3];
        ph_kidney_blob(an, k, &n.b, m);
        double c[3], rn[3] = {12 * S, 10 * S, an->kid_len * 0.45};
        for (int a = 0; a < 3; a++) c[a] = an->kid_c[k][a] + m[a] * 24 * S;
        ph_blob_init(&n.notch, c, rn, 2, 0, 0, 0);
        double lo[3], hi[3];
        ph_blob_bbox(&n.b, lo, hi);
        int lab = ph_label(k ? "kidney_left" : "kidney_right");
        ph_paint p = ph_paint_simple(lab, PH_M_KID_CORTEX);
        p.fn = kidney_mat;
        p.ctx = an;
        p.clip = under_diaphragm;
        p.clip_ctx = an;
        ph_paint_sdf(sc, lo, hi, notched_sdf, &n, &p);

        /* Renal pelvis at the hilum, and the ureter down to the bladder. */
        ph_blob pel;
        double pc[3], pr[3] = {9 * S, 6 * S, 11 * S};
        for (int a = 0; a < 3; a++) pc[a] = an->kid_c[k][a] + m[a] * 17 * S;
        ph_blob_init(&pel, pc, pr, 2, 0, 0, 0);
        ph_paint pp = ph_paint_simple(lab, PH_M_URINE);
        pp.over = PH_BIT(PH_M_FAT) | PH_BIT(PH_M_KID_MEDULLA) | PH_BIT(PH_M_KID_CORTEX);
        ph_paint_blob(sc, &pel, &pp);
        double sx = k ? 1 : -1;
        double ur[][4] = {
            {pc[0] + m[0] * 6 * S, pc[1] + m[1] * 6 * S, pc[2] - 6 * S, 2.6 * S},
            {sx * 42 * S, ys_(an, ph_vert_z(an, "L3")) - 8 * S, ph_vert_z(an, "L3"), 2.4 * S},
            {sx * 48 * S, ys_(an, ph_vert_z(an, "L5")) - 14 * S, ph_vert_z(an, "L5"), 2.4 * S},
            {sx * 55 * S, 30 * S, -40 * S, 2.4 * S},
            {sx * 24 * S, an->bladder_c[1] + 20 * S, an->bladder_c[2] - 0.6 * an->bladder_r[2], 2.4 * S},
        };
        ph_tubes t = {0};
        ph_tubes_spline(&t, (const double (*)[4])ur, 5, 3, NULL, NULL);
        ph_paint pu = ph_paint_simple(0, PH_M_SOFT);
        pu.over = PH_BIT(PH_M_FAT);
        ph_paint_tubes(sc, &t, &pu);
        ph_tubes_free(&t);
    }
}

static void paint_adrenals(ph_scene *sc)
{
    const ph_anat *an = sc->an;
    for (int k = 0; k < 2; k++) {
        const double *kc = an->kid_c[k];
        double ztop = kc[2] + an->kid_len * 0.92;
        double sx = k ? 1 : -1;
        double ax = sx * (k ? 34 : 36) * S;
        double ay = kc[1] - (k ? 26 : 16) * S;
        double az = ztop + (k ? -2 : 10) * S;
        double limbs[3][2][4] = {
            {{ax, ay - 4 * S, az + 12 * S, 2.6 * S}, {ax, ay, az, 3.2 * S}},
            {{ax, ay, az, 3.2 * S}, {ax - sx * 4 * S, ay + 22 * S, az - 10 * S, 2.2 * S}},
            {{ax, ay, az, 3.2 * S}, {ax + sx * 12 * S, ay + 18 * S, az - 12 * S, 2.2 * S}},
        };
        ph_tubes t = {0};
        for (int i = 0; i < 3; i++) ph_tubes_add(&t, limbs[i][0], limbs[i][1], limbs[i][0][3], limbs[i][1][3]);
        ph_paint p = ph_paint_simple(ph_label(k ? "adrenal_gland_left" : "adrenal_gland_right"),
                                     PH_M_ADRENAL);
        p.over = PH_BIT(PH_M_FAT) | PH_BIT(PH_M_MUSCLE) | PH_BIT(PH_M_LIVER);
        ph_paint_tubes(sc, &t, &p);
        ph_tubes_free(&t);
    }
}

/* ---- pancreas ----------------------------------------------------------------------- */

typedef struct lobul {
    uint64_t seed;
    double amp, per;
} lobul;

static double lobulate(const void *ctx, double t)
{
    const lobul *l = ctx;
    return 1.0 + l->amp * ph_noise3(l->seed, t / l->per, 0.5, 0.5);
}

static void paint_pancreas(ph_scene *sc)
{
    const ph_anat *an = sc->an;
    double zL1 = ph_vert_z(an, "L1"), zL2 = ph_vert_z(an, "L2");
    const double *sp = an->spleen_c;
    double nd[][4] = {
        {-24 * S, -2 * S, zL2 - 12 * S, 11 * S},
        {-36 * S, -16 * S, zL2 + 6 * S, 16 * S},
        {-12 * S, -42 * S, zL1 - 14 * S, 11 * S},
        {20 * S, -40 * S, zL1 - 8 * S, 12 * S},
        {52 * S, -14 * S, zL1 + 2 * S, 11 * S},
        {sp[0] - 20 * S, sp[1] - 22 * S, sp[2] - 26 * S, 9 * S},
    };
    lobul l = {ph_hash_str(an->seed, "pancreas"), 0.18, 9 * S};
    ph_tubes t = {0};
    ph_tubes_spline(&t, (const double (*)[4])nd, 6, 2.5, lobulate, &l);
    ph_paint p = ph_paint_simple(ph_label("pancreas"), PH_M_PANCREAS);
    p.clip = under_diaphragm;
    p.clip_ctx = an;
    ph_paint_tubes(sc, &t, &p);
    ph_tubes_free(&t);
}

/* ---- hollow organs ------------------------------------------------------------------- */

typedef struct gut_ctx {
    const ph_anat *an;
    uint64_t seed;
    double level;     /* gas above this gravity coordinate (g = gravity * y) */
    double wall;      /* wall thickness */
    int kind;         /* 0 stomach, 1 small bowel, 2 colon */
} gut_ctx;

/* Wall, then gas above the fluid level, then food, fluid or stool. */
static int gut_mat(const void *ctx, const double p[3], double d)
{
    const gut_ctx *g = ctx;
    if (d > -g->wall) return PH_M_BOWEL_WALL;
    double gy = g->an->gravity * p[1];
    if (gy < g->level) return PH_M_GAS;
    switch (g->kind) {
    case 0:
        return ph_noise3(g->seed, p[0] / 9, p[1] / 9, p[2] / 9) > 0.35 ? PH_M_STOOL : PH_M_BOWEL_FLUID;
    case 1:
        return ph_noise3(g->seed, p[0] / 5, p[1] / 5, p[2] / 5) > 0.75 ? PH_M_GAS : PH_M_BOWEL_FLUID;
    default: {
        /* Stool mottled with gas bubbles; some stretches mostly gas. */
        double big = ph_noise3(g->seed + 7, p[0] / 50, p[1] / 50, p[2] / 50);
        double fine = ph_noise3(g->seed, p[0] / 4.5, p[1] / 4.5, p[2] / 4.5);
        return fine > 0.25 - 0.6 * big ? PH_M_GAS : PH_M_STOOL;
    }
    }
}

/* Gravity level that leaves `frac` of the tube's extent as gas. */
static double gas_level(const ph_anat *an, const double (*nd)[4], int n, double frac)
{
    double lo = 1e9, hi = -1e9;
    for (int i = 0; i < n; i++) {
        double g = an->gravity * nd[i][1];
        lo = fmin(lo, g - nd[i][3]);
        hi = fmax(hi, g + nd[i][3]);
    }
    return lo + frac * (hi - lo);
}

static void paint_gut(ph_scene *sc, const double (*nd)[4], int n, int label, gut_ctx *g,
                      ph_rmod_fn rmod, const void *rctx, int clip_diaphragm)
{
    ph_tubes t = {0};
    ph_tubes_spline(&t, nd, n, 3, rmod, rctx);
    ph_paint p = ph_paint_simple(label, PH_M_BOWEL_FLUID);
    p.fn = gut_mat;
    p.ctx = g;
    p.clip = clip_diaphragm ? under_diaphragm : ph_cavity_sdf;
    p.clip_ctx = sc->an;
    ph_paint_tubes(sc, &t, &p);
    ph_tubes_free(&t);
}

static void paint_stomach(ph_scene *sc)
{
    const ph_anat *an = sc->an;
    ph_rng r;
    ph_rng_init(&r, an->seed, "stomach");
    double zL1 = ph_vert_z(an, "L1");
    double zge = an->dome_l - 22 * S;
    double dist = ph_range(&r, 0.8, 1.15);
    double nd[][4] = {
        {30 * S, ys_(an, zge) - 45 * S, zge, 12 * S},
        {52 * S, 8 * S, an->dome_l - 18 * S, 32 * dist * S},
        {62 * S, -12 * S, an->dome_l - 45 * S, 36 * dist * S},
        {54 * S, -40 * S, zL1 + 30 * S, 32 * dist * S},
        {38 * S, -62 * S, zL1 + 8 * S, 27 * dist * S},
        {8 * S, -66 * S, zL1 - 8 * S, 21 * S},
        {-14 * S, -56 * S, zL1 - 12 * S, 12 * S},
    };
    gut_ctx g = {an, ph_hash_str(an->seed, "stomach_c"), 0, 4 * S, 0};
    g.level = gas_level(an, (const double (*)[4])nd, 7, ph_range(&r, 0.1, 0.45));
    lobul l = {ph_hash_str(an->seed, "rugae"), 0.06, 12 * S};
    paint_gut(sc, (const double (*)[4])nd, 7, ph_label("stomach"), &g, lobulate, &l, 1);
}

static void paint_duodenum(ph_scene *sc)
{
    const ph_anat *an = sc->an;
    double zL1 = ph_vert_z(an, "L1"), zL3 = ph_vert_z(an, "L3");
    double nd[][4] = {
        {-14 * S, -56 * S, zL1 - 12 * S, 11 * S},
        {-38 * S, -40 * S, zL1 - 4 * S, 12 * S},
        {-58 * S, -18 * S, zL1 - 14 * S, 11 * S},
        {-62 * S, -8 * S, zL3 + 20 * S, 11 * S},
        {-50 * S, -14 * S, zL3 - 4 * S, 11 * S},
        {-10 * S, -40 * S, zL3 - 8 * S, 10 * S},
        {22 * S, -36 * S, zL3, 10 * S},
        {30 * S, -36 * S, zL3 + 26 * S, 10 * S},
        {24 * S, -42 * S, zL1 - 18 * S, 10 * S},
    };
    gut_ctx g = {an, ph_hash_str(an->seed, "duodenum_c"), 0, 2.5 * S, 1};
    g.level = gas_level(an, (const double (*)[4])nd, 9, 0.12);
    paint_gut(sc, (const double (*)[4])nd, 9, ph_label("duodenum"), &g, NULL, NULL, 1);
}

static void paint_small_bowel(ph_scene *sc)
{
    const ph_anat *an = sc->an;
    ph_rng r;
    ph_rng_init(&r, an->seed, "small_bowel");
    double zL1 = ph_vert_z(an, "L1"), zL3 = ph_vert_z(an, "L3");
    double box_lo[3] = {-70 * S, -90 * S, an->z_symphysis + 40 * S};
    double box_hi[3] = {70 * S, 15 * S, zL1 - 25 * S};
    double nd[80][4];
    int n = 0;
    double p[3] = {24 * S, -42 * S, zL1 - 18 * S};
    double dir[3] = {0.6, -0.3, -0.7};
    int steps = 68;
    for (int i = 0; i < steps; i++) {
        nd[n][0] = p[0], nd[n][1] = p[1], nd[n][2] = p[2];
        nd[n][3] = ph_range(&r, 11, 14) * S;
        n++;
        /* A smooth random walk that stays in the mesenteric space and
         * drifts from the left upper abdomen (jejunum) to the pelvis and
         * the right lower quadrant (ileum). */
        double drift[3] = {-0.15 * i / steps, 0, -0.2 * i / steps};
        for (int a = 0; a < 3; a++) {
            dir[a] += 0.9 * ph_gauss(&r) + drift[a];
            double c = 0.5 * (box_lo[a] + box_hi[a]), h = 0.5 * (box_hi[a] - box_lo[a]);
            double out = (p[a] - c) / h;
            if (fabs(out) > 0.8) dir[a] -= 2.5 * (out > 0 ? 1 : -1) * (fabs(out) - 0.8);
        }
        double l = sqrt(ph_dot(dir, dir));
        for (int a = 0; a < 3; a++) {
            dir[a] /= l;
            p[a] += dir[a] * 26 * S;
        }
    }
    /* Terminal ileum into the caecum. */
    double ti[2][4] = {{-30 * S, -30 * S, 10 * S, 11 * S}, {-58 * S, -12 * S, 22 * S, 10 * S}};
    memcpy(nd[n++], ti[0], sizeof ti[0]);
    memcpy(nd[n++], ti[1], sizeof ti[1]);
    gut_ctx g = {an, ph_hash_str(an->seed, "small_bowel_c"), -1e9, 2 * S, 1};
    (void)zL3;
    paint_gut(sc, (const double (*)[4])nd, n, ph_label("small_bowel"), &g, NULL, NULL, 0);
}

typedef struct haustra {
    double per, amp;
    uint64_t seed;
} haustra;

static double haustrate(const void *ctx, double t)
{
    const haustra *h = ctx;
    double ph = fmod(t / h->per, 1.0);
    return 1.0 - h->amp * pow(fabs(cos(M_PI * ph)), 8) + 0.08 * ph_noise3(h->seed, t / 40, 0, 0);
}

static void paint_colon(ph_scene *sc)
{
    const ph_anat *an = sc->an;
    ph_rng r;
    ph_rng_init(&r, an->seed, "colon");
    double zs = an->z_symphysis, zL1 = ph_vert_z(an, "L1");
    double w = ph_range(&r, 0.85, 1.2);
    const double *sp = an->spleen_c;
    double nd[][4] = {
        {0, 58 * S, zs - 20 * S, 15},
        {2 * S, 62 * S, zs + 20 * S, 18},
        {4 * S, 58 * S, -50 * S, 17},
        {30 * S, 30 * S, -38 * S, 16},
        {18 * S, -18 * S, -22 * S, 16},
        {48 * S, -24 * S, 6 * S, 16},
        {76 * S, 8 * S, 32 * S, 17},
        {86 * S, 34 * S, 80 * S, 18},
        {88 * S, 38 * S, 130 * S, 18},
        {sp[0] - 10 * S, sp[1] - 20 * S, sp[2] - 40 * S, 20},
        {58 * S, -30 * S, zL1 + 6 * S, 22},
        {20 * S, -72 * S, zL1 - 30 * S - 25 * S * ph_unif(&r), 24},
        {-25 * S, -70 * S, zL1 - 30 * S - 25 * S * ph_unif(&r), 24},
        {-66 * S, -36 * S, zL1 + 2 * S, 24},
        {-86 * S, 8 * S, zL1 - 4 * S, 24},
        {-86 * S, 22 * S, 110 * S, 25},
        {-80 * S, 12 * S, 55 * S, 27},
        {-68 * S, -6 * S, 20 * S, 31},
        {-62 * S, -14 * S, -4 * S, 27},
    };
    int n = (int)(sizeof nd / sizeof nd[0]);
    for (int i = 0; i < n; i++) nd[i][3] *= S * (i < 3 ? 1 : w);
    haustra h = {ph_range(&r, 22, 32) * S, 0.22, ph_hash_str(an->seed, "haustra")};
    gut_ctx g = {an, ph_hash_str(an->seed, "colon_c"), -1e9, 2 * S, 2};
    paint_gut(sc, (const double (*)[4])nd, n, ph_label("colon"), &g, haustrate, &h, 1);
}

/* ---- pelvis ------------------------------------------------------------------------- */

static void paint_pelvic_organs(ph_scene *sc)
{
    const ph_anat *an = sc->an;
    ph_blob b;
    ph_blob_init(&b, an->bladder_c, an->bladder_r, 2.4, 0, 0.15, 0);
    b.amp = 2 * S;
    b.freq = 1.0 / 30;
    b.seed = ph_hash_str(an->seed, "bladder");
    ph_paint p = ph_paint_simple(ph_label("urinary_bladder"), PH_M_URINE);
    p.shell_mat = PH_M_VESSEL_WALL;
    p.shell = 2.5 * S;
    p.clip = ph_cavity_sdf;
    p.clip_ctx = an;
    ph_paint_blob(sc, &b, &p);
    double zs = an->z_symphysis;
    if (an->male) {
        double c[3] = {0, -28 * S, zs - 2 * S}, r[3] = {20 * S, 15 * S, 17 * S};
        ph_blob_init(&b, c, r, 2, 0, 0, 0);
        b.amp = 1.5 * S;
        b.freq = 1.0 / 15;
        b.seed = ph_hash_str(an->seed, "prostate");
        ph_paint pp = ph_paint_simple(ph_label("prostate"), PH_M_PROSTATE);
        ph_paint_blob(sc, &b, &pp);
    } else {
        /* The uterus (no label in TotalSegmentator's total task) behind
         * and above the bladder. */
        double c[3] = {0, an->bladder_c[1] + an->bladder_r[1] + 14 * S,
                       an->bladder_c[2] + an->bladder_r[2] * 0.6};
        double r[3] = {28 * S, 20 * S, 36 * S};
        ph_blob_init(&b, c, r, 2, 0, -0.7, 0);
        b.amp = 2 * S;
        b.freq = 1.0 / 30;
        b.seed = ph_hash_str(an->seed, "uterus");
        ph_paint pu = ph_paint_simple(0, PH_M_SOFT);
        pu.over = PH_BIT(PH_M_FAT) | PH_BIT(PH_M_BOWEL_FLUID) | PH_BIT(PH_M_BOWEL_WALL) |
                  PH_BIT(PH_M_GAS);
        pu.clip = ph_cavity_sdf;
        pu.clip_ctx = an;
        ph_paint_blob(sc, &b, &pu);
    }
}

void ph_paint_abdomen(ph_scene *sc)
{
    paint_small_bowel(sc);
    paint_colon(sc);
    paint_stomach(sc);
    paint_duodenum(sc);
    paint_pancreas(sc);
    paint_liver(sc);
    paint_gallbladder(sc);
    paint_spleen(sc);
    paint_kidneys(sc);
    paint_adrenals(sc);
    paint_pelvic_organs(sc);
}
