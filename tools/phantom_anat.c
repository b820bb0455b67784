/*
 * phantom_anat.c - drawing a body: size, spine, outline, diaphragm, organ
 * placement, contrast phase, field of view and the look of the image, all
 * from the case's own random streams, and the geometric functions of the
 * body frame (spine line, outline, depth below the skin, body cavity,
 * diaphragm) that the painters share.
 *
 * Lengths are those of an average adult (in mm) times the case's size scale
 * `s`; the vertebral column is the ruler every other structure is placed
 * against, as radiologists do ("the kidneys lie at L1-L3").
 *
 * Threading: functions read only the ph_anat they are given.
 */
#include <math.h>
#include <string.h>

#include "tools/phantom.h"

/* Vertebral body heights and the disc below each (mm, average adult). */
static const struct {
    const char *name;
    double h, disc, rx, ry;
} vert_tab[] = {
    {"C6", 14, 5, 17, 8},   {"C7", 15, 5, 17, 8},   {"T1", 17, 4, 15, 8},
    {"T2", 18, 4, 15, 9},   {"T3", 18, 4, 15, 10},  {"T4", 19, 5, 16, 11},
    {"T5", 19, 5, 16, 11},  {"T6", 20, 5, 17, 12},  {"T7", 20, 5, 17, 12},
    {"T8", 21, 5, 18, 13},  {"T9", 21, 6, 19, 13},  {"T10", 22, 6, 20, 14},
    {"T11", 23, 7, 21, 14}, {"T12", 24, 8, 22, 15}, {"L1", 26, 9, 23, 15},
    {"L2", 27, 10, 24, 16}, {"L3", 28, 10, 25, 16}, {"L4", 28, 11, 26, 17},
    {"L5", 27, 11, 26, 17},
};
#define NVERT ((int)(sizeof vert_tab / sizeof vert_tab[0]))

/* Spine body-centre y against z (s = 1): lumbar lordosis, thoracic
 * kyphosis, the neck coming forward again. */
static const double spine_base[][2] = {
    {-20, 42}, {0, 38}, {24, 28}, {63, 18}, {100, 14}, {138, 15}, {174, 20},
    {207, 27}, {266, 38}, {320, 46}, {370, 50}, {420, 48}, {463, 42}, {505, 30}, {540, 22},
};

/* Outline of the trunk's muscle surface (z, half width, half depth, centre
 * y), s = 1; subcutaneous fat comes on top. */
static const double outline_base[][4] = {
    {-200, 165, 95, 12}, {-110, 162, 100, 14}, {-40, 152, 100, 12}, {20, 142, 96, 8},
    {90, 138, 96, 4},    {170, 140, 100, 6},   {240, 144, 104, 10}, {320, 144, 104, 14},
    {420, 140, 96, 16},  {480, 130, 86, 18},   {520, 95, 68, 24},   {560, 58, 52, 24},
};

/* Linear lookup in a per-millimetre table. */
static inline double zt(const float *t, double z)
{
    double f = z - PH_ZT0;
    if (f <= 0) return t[0];
    if (f >= PH_ZTN - 1) return t[PH_ZTN - 1];
    int i = (int)f;
    double w = f - i;
    return t[i] * (1 - w) + t[i + 1] * w;
}

double ph_spine_y(const ph_anat *an, double z) { return zt(an->zt_spine, z); }

void ph_outline(const ph_anat *an, double z, double *w, double *d, double *yc)
{
    *w = zt(an->zt_w, z);
    *d = zt(an->zt_d, z);
    *yc = zt(an->zt_yc, z);
}

/* Fills the per-millimetre tables from the control points. */
static void tabulate(ph_anat *an)
{
    double tw[12][2], td[12][2], ty[12][2];
    for (int i = 0; i < an->noutline; i++) {
        tw[i][0] = td[i][0] = ty[i][0] = an->outline[i][0];
        tw[i][1] = an->outline[i][1];
        td[i][1] = an->outline[i][2];
        ty[i][1] = an->outline[i][3];
    }
    for (int i = 0; i < PH_ZTN; i++) {
        double z = PH_ZT0 + i;
        an->zt_w[i] = (float)ph_curve((const double (*)[2])tw, an->noutline, z);
        an->zt_d[i] = (float)ph_curve((const double (*)[2])td, an->noutline, z);
        an->zt_yc[i] = (float)ph_curve((const double (*)[2])ty, an->noutline, z);
        an->zt_spine[i] = (float)ph_curve((const double (*)[2])an->spine_tab, an->nspine, z);
    }
}

/* Depth below the muscle surface along the ray from the outline's centre
 * (negative outside), and the unit direction of that ray. */
double ph_muscle_depth(const ph_anat *an, const double p[3], double *ux, double *uy)
{
    double w, d, yc;
    ph_outline(an, p[2], &w, &d, &yc);
    double x = p[0], y = p[1] - yc;
    /* The back is flatter than the belly: a superellipse of exponent 3
     * behind the centre, an ellipse in front. */
    double u = fabs(x) / w, v = fabs(y) / d, rho;
    if (y > 0)
        rho = cbrt(u * u * u + v * v * v);
    else
        rho = sqrt(u * u + v * v);
    double len = sqrt(x * x + y * y);
    if (ux) *ux = len > 0 ? x / len : 0;
    if (uy) *uy = len > 0 ? y / len : 0;
    if (rho < 1e-9) return fmin(w, d);
    return len * (1.0 - rho) / rho;
}

/* Subcutaneous fat thickness in direction (ux, uy) at height z: thicker
 * over the belly and the flanks, thin over the spine and sternum. */
double ph_fat_at(const ph_anat *an, double z, double ux, double uy)
{
    double f = an->fat_mm;
    double belly = z < 260 && z > -120 ? 1.0 : 0.4;
    double ant = uy < 0 ? -uy : 0;
    f *= 1.0 + belly * (0.6 * ant + 0.35 * fabs(ux)) - 0.45 * (uy > 0.8 ? (uy - 0.8) * 5 : 0);
    if (!an->male && z < 40) f *= 1.25;
    return f;
}

double ph_body_depth(const ph_anat *an, const double p[3])
{
    double ux, uy;
    double md = ph_muscle_depth(an, p, &ux, &uy);
    return md + ph_fat_at(an, p[2], ux, uy);
}

/* Trunk wall thickness (muscle) at z in direction (ux, uy): the chest wall
 * holds the ribs and intercostal muscles, and round the upper chest the
 * shoulder girdle (scapulae, pectoral and back muscles) thickens it at the
 * sides and the back. */
double ph_wall_at(const ph_anat *an, double z, double ux, double uy)
{
    double s = an->s;
    double t = ph_smoothstep(an->dome_r - 120 * s, an->dome_r - 40 * s, z);
    double sh = ph_smoothstep(an->z_carina - 90 * s, an->z_carina + 40 * s, z);
    double pect = ph_smoothstep(an->dome_r, an->z_carina, z);
    double hip = ph_smoothstep(an->z_symphysis + 130 * s, an->z_symphysis + 50 * s, z);
    double post = uy > 0 ? uy : 0, ant = uy < 0 ? uy : 0;
    /* Thin at the flanks (obliques, intercostals), thicker in front
     * (rectus, pectoral muscles); round the hips the gluteal and thigh
     * muscles leave only the true pelvis as a cavity. */
    return an->muscle_mm * (0.6 + 0.4 * uy * uy) + t * 3 * s + pect * 10 * s * ant * ant +
           sh * s * (30 * ux * ux + 26 * post * post) + hip * s * (70 * ux * ux + 30 * post * post);
}

double ph_cavity_sdf(const void *anat, const double p[3])
{
    const ph_anat *an = anat;
    double ux, uy;
    double md = ph_muscle_depth(an, p, &ux, &uy);
    return ph_cavity_from(an, p, md, ux, uy);
}

double ph_cavity_from(const ph_anat *an, const double p[3], double md, double ux, double uy)
{
    double d = ph_wall_at(an, p[2], ux, uy) - md;
    /* Behind the body cavities lie the spine and the back muscles: the
     * cavity ends in front of them, further back beside the spine (the
     * paravertebral gutters) than at the midline. */
    double ys = ph_spine_y(an, p[2]);
    double ry = 15 * an->s;
    double ax = fabs(p[0]);
    double yb = ys + ry + 6 * an->s + 0.45 * fmax(0, ax - 14 * an->s) + 1.3 * fmax(0, ax - 45 * an->s);
    double dp = p[1] - yb;
    return fmax(d, dp);
}

double ph_diaphragm_z(const ph_anat *an, double x, double y)
{
    double s = an->s;
    double best = -1e9;
    for (int side = 0; side < 2; side++) {
        double dome = side ? an->dome_l : an->dome_r;
        double xc = (side ? 50 : -55) * s, yd = -5 * s;
        double dx = (x - xc) / (90 * s), dy = y - yd;
        double z = dome - 60 * s * dx * dx;
        z -= dy > 0 ? 65 * s * (dy / (110 * s)) * (dy / (110 * s)) : 40 * s * (dy / (95 * s)) * (dy / (95 * s));
        if (z > best) best = z;
    }
    return best;
}

double ph_vert_z(const ph_anat *an, const char *name)
{
    for (int i = 0; i < an->nvert; i++)
        if (!strcmp(an->vert[i].name, name)) return 0.5 * (an->vert[i].z_lo + an->vert[i].z_hi);
    return NAN;
}

/* ---- sampling ---------------------------------------------------------------- */

void ph_anat_sample(const ph_opts *o, ph_case *c)
{
    ph_anat *an = &c->an;
    memset(an, 0, sizeof *an);
    an->seed = c->seed;
    ph_rng r, rf, rp, rl;
    ph_rng_init(&r, c->seed, "anatomy");
    ph_rng_init(&rf, c->seed, "fov");
    ph_rng_init(&rp, c->seed, "position");
    ph_rng_init(&rl, c->seed, "look");

    if (o->fov == PH_FOV_RANDOM) {
        double u = ph_unif(&rf);
        an->fov = u < 0.3 ? PH_FOV_CHEST : u < 0.6 ? PH_FOV_ABDOMEN : PH_FOV_CAP;
    } else {
        an->fov = o->fov;
    }
    an->position = o->position == PH_POS_RANDOM ? ph_int(&rp, 4) : o->position;
    an->gravity = (an->position == PH_POS_HFP || an->position == PH_POS_FFP) ? -1 : 1;

    an->male = ph_chance(&r, 0.5);
    an->age = 25 + ph_int(&r, 61);
    double s = an->s = ph_clamp(1.0 + 0.055 * ph_gauss(&r), 0.88, 1.12) * (an->male ? 1.02 : 0.97);
    an->habitus = ph_range(&r, 0.0, 1.0);
    an->fat_mm = (5 + 34 * pow(an->habitus, 1.4)) * s;
    an->muscle_mm = ph_range(&r, 8, 14) * s * (an->male ? 1.1 : 0.95);
    double wscale = 1.0 + 0.12 * (an->habitus - 0.5) + 0.03 * ph_gauss(&r);

    /* Spine: vertebrae stacked upward from the S1 end plate at z = 0. */
    double z = 0;
    an->nvert = NVERT;
    for (int i = NVERT - 1; i >= 0; i--) {
        struct ph_vert *v = &an->vert[i];
        double f = s * (1 + 0.03 * ph_gauss(&r));
        z += vert_tab[i].disc * f;
        strcpy(v->name, vert_tab[i].name);
        v->z_lo = z;
        z += vert_tab[i].h * f;
        v->z_hi = z;
        v->rx = vert_tab[i].rx * s;
        v->ry = vert_tab[i].ry * s;
    }
    double kyph = ph_range(&r, 0.8, 1.25), lord = ph_range(&r, 0.8, 1.2);
    int ns = 0;
    for (size_t i = 0; i < sizeof spine_base / sizeof spine_base[0]; i++) {
        double zz = spine_base[i][0] * s, y = spine_base[i][1];
        /* Curvature about a straight line from S1 to T1: lordosis below
         * z = 200, kyphosis above. */
        double line = 38 + (zz / (480 * s)) * (40 - 38);
        double dev = y - line;
        y = line + dev * (zz < 200 * s ? lord : kyph);
        an->spine_tab[ns][0] = zz;
        an->spine_tab[ns][1] = y * s + ph_gauss(&r) * 1.5;
        ns++;
    }
    an->nspine = ns;
    an->noutline = (int)(sizeof outline_base / sizeof outline_base[0]);
    for (int i = 0; i < an->noutline; i++) {
        an->outline[i][0] = outline_base[i][0] * s;
        an->outline[i][1] = outline_base[i][1] * s * wscale * (an->male || outline_base[i][0] > 0 ? 1 : 1.06);
        an->outline[i][2] = outline_base[i][2] * s * (1 + 0.1 * (an->habitus - 0.5));
        an->outline[i][3] = outline_base[i][3] * s;
    }
    tabulate(an);
    for (int i = 0; i < NVERT; i++) {
        struct ph_vert *v = &an->vert[i];
        double zc = 0.5 * (v->z_lo + v->z_hi);
        v->y = ph_spine_y(an, zc);
        double dy = ph_spine_y(an, zc + 10) - ph_spine_y(an, zc - 10);
        v->tilt = atan2(dy, 20);
    }
    double zT9 = ph_vert_z(an, "T9"), zT10 = ph_vert_z(an, "T10");
    an->dome_r = 0.5 * (zT9 + zT10) + ph_range(&r, -14, 12) * s;
    an->dome_l = an->dome_r - ph_range(&r, 8, 22) * s;
    an->z_apex = an->vert[2].z_hi + ph_range(&r, 18, 30) * s; /* above T1 */
    an->z_carina = 0.5 * (ph_vert_z(an, "T4") + ph_vert_z(an, "T5")) + ph_range(&r, -8, 8) * s;
    an->z_symphysis = -105 * s + ph_range(&r, -8, 8) * s;
    an->aorta_bif_z = ph_vert_z(an, "L4") + ph_range(&r, -12, 10) * s;

    an->liver_scale = ph_clamp(1 + 0.07 * ph_gauss(&r), 0.85, 1.15);
    an->spleen_scale = ph_clamp(1 + 0.08 * ph_gauss(&r), 0.8, 1.18);
    an->heart_scale = ph_clamp(1 + 0.05 * ph_gauss(&r), 0.9, 1.1);

    /* Scanned range. */
    double top_chest = an->z_apex + ph_range(&rf, 15, 35) * s;
    double bot_chest = ph_vert_z(an, "L1") + ph_range(&rf, -15, 10) * s;
    double top_abd = an->dome_r + ph_range(&rf, 8, 25) * s;
    double bot_abd = ph_vert_z(an, "L5") + ph_range(&rf, -25, -5) * s;
    double bot_cap = an->z_symphysis - ph_range(&rf, 20, 45) * s;
    switch (an->fov) {
    case PH_FOV_CHEST: an->z_lo = bot_chest, an->z_hi = top_chest; break;
    case PH_FOV_ABDOMEN: an->z_lo = bot_abd, an->z_hi = top_abd; break;
    default: an->z_lo = bot_cap, an->z_hi = top_chest; break;
    }

    /* Abnormalities first: some change organ sizes. */
    ph_findings_draw(o, c);

    /* Organ placement that several painters refer to. */
    double zL1 = ph_vert_z(an, "L1"), zL2 = ph_vert_z(an, "L2");
    an->z_arch = an->z_carina + ph_range(&r, 26, 38) * s;
    double hs = an->heart_scale * s;
    an->heart_r[0] = 64 * hs, an->heart_r[1] = 50 * hs, an->heart_r[2] = 55 * hs;
    an->heart_c[0] = (16 + ph_range(&r, -5, 5)) * s;
    an->heart_c[1] = (-26 + ph_range(&r, -6, 6)) * s;
    an->heart_c[2] = an->dome_l - 11 * s + 0.85 * an->heart_r[2];
    an->heart_yaw = -0.55 + ph_range(&r, -0.15, 0.15);
    an->heart_pitch = 0.3 + ph_range(&r, -0.1, 0.1);
    an->spleen_c[0] = (88 + ph_range(&r, -6, 6)) * s;
    an->spleen_c[1] = (40 + ph_range(&r, -8, 8)) * s;
    an->spleen_c[2] = an->dome_l - (52 + ph_range(&r, -8, 8)) * s;
    double zk = 0.5 * (zL1 + zL2) + ph_range(&r, -10, 10) * s;
    for (int k = 0; k < 2; k++) {
        double zz = zk - (k ? 0 : ph_range(&r, 8, 22) * s);
        an->kid_c[k][0] = (k ? 1 : -1) * (62 + ph_range(&r, -5, 5)) * s;
        an->kid_c[k][1] = ph_spine_y(an, zz) + (28 + ph_range(&r, -4, 4)) * s;
        an->kid_c[k][2] = zz;
        an->kid_rot[k] = ph_range(&r, -0.12, 0.12);
    }
    an->kid_len = ph_range(&r, 48, 60) * s;
    an->gb_len = ph_range(&r, 26, 42) * s;
    an->gb_r = ph_range(&r, 11, 17) * s;
    an->gb_c[0] = (-40 + ph_range(&r, -6, 6)) * s;
    an->gb_c[1] = (-45 + ph_range(&r, -6, 6)) * s;
    an->gb_c[2] = an->dome_r - (100 + ph_range(&r, -10, 10)) * s;
    double fill = ph_range(&r, 0.55, 1.2);
    an->bladder_r[0] = 42 * s * fill, an->bladder_r[1] = 33 * s * fill, an->bladder_r[2] = 30 * s * fill;
    an->bladder_c[0] = ph_range(&r, -5, 5) * s;
    an->bladder_c[1] = -40 * s;
    an->bladder_c[2] = an->z_symphysis + 22 * s + an->bladder_r[2];

    /* Contrast phase. */
    double u = ph_unif(&r);
    an->phase = u < 0.3 ? PH_PHASE_NONE : u < 0.5 ? PH_PHASE_ARTERIAL : PH_PHASE_PORTAL;

    /* Image look: noise (dose), texture, sharpness, bone density. */
    an->noise_sd = ph_range(&rl, 7, 22);
    an->texture = ph_range(&rl, 0.7, 1.3);
    an->psf = ph_range(&rl, 0.45, 0.85);
    double old = ph_clamp((an->age - 40) / 45.0, 0, 1);
    an->bone_hu = ph_range(&rl, 900, 1250) - 200 * old;
    an->bone_canc_hu = ph_range(&rl, 190, 290) - 110 * old;

}
