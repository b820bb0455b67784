/*
 * phantom_lesion.c - abnormalities: which a case has (drawn before the
 * anatomy is painted, because organomegaly and fatty liver change the
 * organs themselves), and the focal ones painted into the finished scene:
 * cysts, masses, nodules, stones, a dilated collecting system, pleural
 * fluid layering with gravity, emphysematous lung, an aneurysm with mural
 * thrombus and calcified aortic plaques.
 *
 * A focal lesion is placed where a ball of its size fits inside its organ's
 * label, found by sampling the painted label map; a finding whose organ is
 * not (or not enough) in the field of view is dropped, so findings.json
 * only claims what the image shows.  Lesions are numbered 1..K in the order
 * they were painted.
 *
 * Threading: works on one case.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "tools/phantom.h"

#define S (an->s)

static const char *const abn_names[PH_A_COUNT] = {
    "hepatic_cyst",      "hepatic_mass",         "fatty_liver",       "hepatomegaly",
    "splenomegaly",      "renal_cyst",           "kidney_stone",      "hydronephrosis",
    "gallstone",         "lung_nodule",          "pleural_effusion",  "emphysema",
    "aortic_aneurysm",   "aortic_calcification", "pancreatic_mass",   "adrenal_nodule",
    "cardiomegaly",      "splenic_lesion",
};

const char *ph_abn_name(int abn) { return abn >= 0 && abn < PH_A_COUNT ? abn_names[abn] : "?"; }

int ph_abn_parse(const char *name)
{
    for (int a = 0; a < PH_A_COUNT; a++)
        if (!strcmp(name, abn_names[a])) return a;
    return -1;
}

/* Relative frequency of each abnormality among abnormal cases. */
static const double abn_weight[PH_A_COUNT] = {
    1.2, 0.8, 1.0, 0.7, 0.7, 1.2, 1.0, 0.7, 0.9, 1.3, 1.0, 0.9, 0.6, 1.0, 0.6, 0.6, 0.7, 0.5,
};

/* Fraction of [lo, hi] inside the scanned range. */
static double covered(const ph_anat *an, double lo, double hi)
{
    double a = fmax(lo, an->z_lo), b = fmin(hi, an->z_hi);
    return b > a ? (b - a) / (hi - lo) : 0;
}

/* Whether an abnormality's organ is well enough in view to be drawn. */
static int in_view(const ph_anat *an, int abn)
{
    double dr = an->dome_r, dl = an->dome_l;
    double zL1 = ph_vert_z(an, "L1"), zL2 = ph_vert_z(an, "L2"), zL3 = ph_vert_z(an, "L3");
    double zT11 = ph_vert_z(an, "T11"), zT12 = ph_vert_z(an, "T12");
    switch (abn) {
    case PH_A_HEPATIC_CYST:
    case PH_A_HEPATIC_MASS:
    case PH_A_FATTY_LIVER:
    case PH_A_HEPATOMEGALY: return covered(an, dr - 150 * S, dr) > 0.6;
    case PH_A_SPLENOMEGALY:
    case PH_A_SPLENIC_LESION: return covered(an, dl - 110 * S, dl - 10 * S) > 0.7;
    case PH_A_RENAL_CYST:
    case PH_A_KIDNEY_STONE:
    case PH_A_HYDRONEPHROSIS: return covered(an, zL3, zT12) > 0.8;
    case PH_A_GALLSTONE: return covered(an, dr - 135 * S, dr - 65 * S) > 0.9;
    case PH_A_LUNG_NODULE:
    case PH_A_PLEURAL_EFFUSION: return covered(an, dr - 60 * S, an->z_apex) > 0.2;
    case PH_A_EMPHYSEMA: return covered(an, dr - 60 * S, an->z_apex) > 0.7;
    case PH_A_AORTIC_ANEURYSM: return covered(an, an->aorta_bif_z, zL1) > 0.9;
    case PH_A_AORTIC_CALCIFICATION: return 1;
    case PH_A_PANCREATIC_MASS: return covered(an, zL2 - 10 * S, zL1 + 20 * S) > 0.9;
    case PH_A_ADRENAL_NODULE: return covered(an, zL1, zT11) > 0.9;
    case PH_A_CARDIOMEGALY: return covered(an, dl - 10 * S, dl + 110 * S) > 0.8;
    default: return 0;
    }
}

static ph_finding *add_finding(ph_case *c, int abn, const char *organ)
{
    if (c->nf >= PH_MAX_FINDINGS) return NULL;
    ph_finding *f = &c->f[c->nf++];
    memset(f, 0, sizeof *f);
    f->abn = abn;
    snprintf(f->organ, sizeof f->organ, "%s", organ);
    f->group_id = c->nf;
    return f;
}

static const char *const lobes[5] = {"lung_upper_lobe_right", "lung_middle_lobe_right",
                                     "lung_lower_lobe_right", "lung_upper_lobe_left",
                                     "lung_lower_lobe_left"};

/* Adds abnormality abn to the case with its size, side and grade, and the
 * anatomy change it implies. */
static void draw_one(ph_case *c, ph_rng *r, int abn)
{
    ph_anat *an = &c->an;
    ph_finding *f;
    int side = ph_chance(r, 0.5); /* 1: left */
    /* A stone in a dilated kidney would be obstructing; the texts call
     * stones non-obstructing, so keep the two on different sides. */
    for (int i = 0; i < c->nf; i++)
        if ((abn == PH_A_HYDRONEPHROSIS && c->f[i].abn == PH_A_KIDNEY_STONE) ||
            (abn == PH_A_KIDNEY_STONE && c->f[i].abn == PH_A_HYDRONEPHROSIS))
            side = c->f[i].side < 0;
    const char *sname = side ? "left" : "right";
    char organ[40];
    switch (abn) {
    case PH_A_HEPATIC_CYST:
        if ((f = add_finding(c, abn, "liver"))) f->size_mm = ph_range(r, 8, 38);
        break;
    case PH_A_HEPATIC_MASS:
        if ((f = add_finding(c, abn, "liver"))) {
            f->size_mm = ph_range(r, 15, 55);
            snprintf(f->grade, sizeof f->grade, "%s", ph_chance(r, 0.65) ? "hypodense" : "hyperdense");
        }
        break;
    case PH_A_FATTY_LIVER:
        if ((f = add_finding(c, abn, "liver"))) {
            an->fatty_delta = ph_range(r, 28, 75);
            snprintf(f->grade, sizeof f->grade, "%s",
                     an->fatty_delta < 40 ? "mild" : an->fatty_delta < 58 ? "moderate" : "severe");
        }
        break;
    case PH_A_HEPATOMEGALY:
        if ((f = add_finding(c, abn, "liver"))) an->liver_scale = ph_range(r, 1.24, 1.38);
        break;
    case PH_A_SPLENOMEGALY:
        if ((f = add_finding(c, abn, "spleen"))) an->spleen_scale = ph_range(r, 1.45, 1.85);
        break;
    case PH_A_SPLENIC_LESION:
        if ((f = add_finding(c, abn, "spleen"))) f->size_mm = ph_range(r, 10, 30);
        break;
    case PH_A_RENAL_CYST:
        snprintf(organ, sizeof organ, "kidney_%s", sname);
        if ((f = add_finding(c, abn, organ))) f->size_mm = ph_range(r, 10, 40), f->side = side ? 1 : -1;
        break;
    case PH_A_KIDNEY_STONE:
        snprintf(organ, sizeof organ, "kidney_%s", sname);
        if ((f = add_finding(c, abn, organ))) {
            f->size_mm = ph_range(r, 3.5, 12);
            f->hu = ph_range(r, 450, 1300);
            f->side = side ? 1 : -1;
        }
        break;
    case PH_A_HYDRONEPHROSIS:
        snprintf(organ, sizeof organ, "kidney_%s", sname);
        if ((f = add_finding(c, abn, organ))) {
            int g = 1 + ph_int(r, 3);
            an->hydro[side] = g;
            f->side = side ? 1 : -1;
            snprintf(f->grade, sizeof f->grade, "%s", g == 1 ? "mild" : g == 2 ? "moderate" : "severe");
        }
        break;
    case PH_A_GALLSTONE:
        if ((f = add_finding(c, abn, "gallbladder"))) {
            f->size_mm = ph_range(r, 5, 20);
            f->hu = ph_range(r, 180, 900);
        }
        break;
    case PH_A_LUNG_NODULE: {
        /* Lobes in view: the lower lobes reach lowest. */
        int lobe = an->fov == PH_FOV_ABDOMEN ? (side ? 4 : 2) : ph_int(r, 5);
        if ((f = add_finding(c, abn, lobes[lobe]))) {
            f->size_mm = ph_range(r, 5, 26);
            f->side = lobe >= 3 ? 1 : -1;
        }
        break;
    }
    case PH_A_PLEURAL_EFFUSION: {
        int both = ph_chance(r, 0.3);
        for (int k = 0; k < 2; k++) {
            if (!both && k != side) continue;
            if ((f = add_finding(c, abn, k ? "lung_lower_lobe_left" : "lung_lower_lobe_right"))) {
                an->effusion[k] = (int)ph_range(r, 14, 55);
                f->side = k ? 1 : -1;
                snprintf(f->grade, sizeof f->grade, "%s",
                         an->effusion[k] < 25 ? "small" : an->effusion[k] < 40 ? "moderate" : "large");
            }
        }
        break;
    }
    case PH_A_EMPHYSEMA: {
        an->emphysema = 1 + ph_int(r, 3);
        int g = c->nf + 1;
        for (int k = 0; k < 5; k++) {
            /* Centrilobular emphysema is upper-lobe predominant; the
             * lower lobes join when it is severe. */
            if (k == 1 || ((k == 2 || k == 4) && an->emphysema < 3)) continue;
            if ((f = add_finding(c, abn, lobes[k]))) {
                f->group_id = g;
                snprintf(f->grade, sizeof f->grade, "%s",
                         an->emphysema == 1 ? "mild" : an->emphysema == 2 ? "moderate" : "severe");
            }
        }
        break;
    }
    case PH_A_AORTIC_ANEURYSM:
        if ((f = add_finding(c, abn, "aorta"))) {
            an->aneurysm_diam = ph_range(r, 32, 62) * S;
            an->aneurysm_z = ph_range(r, an->aorta_bif_z + 30 * S, ph_vert_z(an, "L2"));
            f->size_mm = an->aneurysm_diam;
        }
        break;
    case PH_A_AORTIC_CALCIFICATION:
        if ((f = add_finding(c, abn, "aorta"))) {
            an->aortic_calc = 8 + ph_int(r, 22);
            snprintf(f->grade, sizeof f->grade, "%s", an->aortic_calc < 15 ? "mild" : "moderate");
        }
        break;
    case PH_A_PANCREATIC_MASS:
        if ((f = add_finding(c, abn, "pancreas"))) f->size_mm = ph_range(r, 16, 38);
        break;
    case PH_A_ADRENAL_NODULE:
        snprintf(organ, sizeof organ, "adrenal_gland_%s", sname);
        if ((f = add_finding(c, abn, organ))) {
            f->size_mm = ph_range(r, 12, 32);
            f->hu = ph_range(r, -5, 18);
            f->side = side ? 1 : -1;
        }
        break;
    case PH_A_CARDIOMEGALY:
        if ((f = add_finding(c, abn, "heart"))) an->heart_scale = ph_range(r, 1.2, 1.36);
        break;
    }
}

void ph_findings_draw(const ph_opts *o, ph_case *c)
{
    ph_anat *an = &c->an;
    ph_rng r;
    ph_rng_init(&r, c->seed, "findings");
    c->nf = 0;
    an->fatty_delta = 0;
    if (o->force) {
        /* Exactly the abnormalities asked for, where the field of view
         * shows their organ. */
        for (int a = 0; a < PH_A_COUNT; a++)
            if ((o->force & (1u << a)) && in_view(an, a)) draw_one(c, &r, a);
        return;
    }
    if (!ph_chance(&r, o->abnormal_rate)) return;
    int want = 1 + ph_chance(&r, 0.45) + ph_chance(&r, 0.25);
    int chosen[PH_A_COUNT] = {0};
    for (int n = 0; n < want; n++) {
        double total = 0;
        for (int a = 0; a < PH_A_COUNT; a++)
            if (!chosen[a] && in_view(an, a)) total += abn_weight[a];
        if (total <= 0) break;
        double u = ph_unif(&r) * total;
        int abn = -1;
        for (int a = 0; a < PH_A_COUNT; a++) {
            if (chosen[a] || !in_view(an, a)) continue;
            abn = a;
            if ((u -= abn_weight[a]) < 0) break;
        }
        chosen[abn] = 1;
        draw_one(c, &r, abn);
    }
}

/* ---- placing and painting ------------------------------------------------------------ */

typedef struct lbox {
    int lo[3], hi[3];
    size_t n;
} lbox;

/* Bounding boxes of every label in the scene. */
static void label_boxes(const ph_scene *sc, lbox *b)
{
    for (int l = 0; l < 256; l++) {
        b[l].n = 0;
        for (int a = 0; a < 3; a++) b[l].lo[a] = 1 << 30, b[l].hi[a] = -1;
    }
    for (int k = 0; k < sc->nz; k++)
        for (int j = 0; j < sc->ny; j++)
            for (int i = 0; i < sc->nx; i++) {
                lbox *x = &b[sc->lab[ph_idx(sc, i, j, k)]];
                x->n++;
                int ijk[3] = {i, j, k};
                for (int a = 0; a < 3; a++) {
                    if (ijk[a] < x->lo[a]) x->lo[a] = ijk[a];
                    if (ijk[a] > x->hi[a]) x->hi[a] = ijk[a];
                }
            }
}

static int label_at(const ph_scene *sc, const double p[3])
{
    int n[3] = {sc->nx, sc->ny, sc->nz};
    int ijk[3];
    for (int a = 0; a < 3; a++) {
        ijk[a] = (int)lround((p[a] - sc->org[a]) / sc->sp[a]);
        if (ijk[a] < 0 || ijk[a] >= n[a]) return -1;
    }
    return sc->lab[ph_idx(sc, ijk[0], ijk[1], ijk[2])];
}

static int lesion_at(const ph_scene *sc, const double p[3])
{
    int ijk[3];
    ph_voxel_of(sc, p, ijk);
    return sc->les[ph_idx(sc, ijk[0], ijk[1], ijk[2])];
}

/* 26 directions on the unit sphere. */
static void sphere_dirs(double d[26][3])
{
    int n = 0;
    for (int a = -1; a <= 1; a++)
        for (int b = -1; b <= 1; b++)
            for (int e = -1; e <= 1; e++) {
                if (!a && !b && !e) continue;
                double l = sqrt((double)(a * a + b * b + e * e));
                d[n][0] = a / l, d[n][1] = b / l, d[n][2] = e / l;
                n++;
            }
}

/* Fraction of the ball's surface (at 0.9 R) inside label `lab` and free of
 * other lesions; -1 when the centre is not in the label. */
static double fit(const ph_scene *sc, double (*dirs)[3], const double c[3], double R, int lab,
                  int lab2)
{
    int lc = label_at(sc, c);
    if ((lc != lab && lc != lab2) || lesion_at(sc, c)) return -1;
    int in = 0;
    for (int i = 0; i < 26; i++) {
        double p[3] = {c[0] + dirs[i][0] * R * 0.9, c[1] + dirs[i][1] * R * 0.9, c[2] + dirs[i][2] * R * 0.9};
        int l = label_at(sc, p);
        if ((l == lab || l == lab2) && !lesion_at(sc, p)) in++;
    }
    return in / 26.0;
}

/* Finds a centre for a ball of radius *R inside label lab (shrinking R a
 * little when it does not fit).  `score` (may be NULL) prefers some places
 * (the dependent side for a stone).  Returns 1 when found. */
static int place(ph_case *c, ph_rng *r, const lbox *boxes, int lab, int lab2, double *R,
                 double need, double (*score)(const ph_case *, const double *), double out[3])
{
    ph_scene *sc = &c->sc;
    const lbox *b = &boxes[lab];
    if (b->n == 0) return 0;
    double dirs[26][3];
    sphere_dirs(dirs);
    for (int shrink = 0; shrink < 4; shrink++) {
        double best = -1e30;
        int found = 0;
        for (int tries = 0; tries < 1500; tries++) {
            int ijk[3];
            for (int a = 0; a < 3; a++) ijk[a] = b->lo[a] + ph_int(r, b->hi[a] - b->lo[a] + 1);
            if (sc->lab[ph_idx(sc, ijk[0], ijk[1], ijk[2])] != lab) continue;
            double p[3];
            ph_pos(sc, ijk[0], ijk[1], ijk[2], p);
            for (int a = 0; a < 3; a++) p[a] += (ph_unif(r) - 0.5) * sc->sp[a];
            double f = fit(sc, dirs, p, *R, lab, lab2);
            if (f < need) continue;
            double s = score ? score(c, p) : 0;
            if (!found || s > best) {
                best = s;
                memcpy(out, p, 3 * sizeof *out);
                found = 1;
                if (!score) return 1;
            }
        }
        if (found) return 1;
        *R *= 0.8;
    }
    return 0;
}

/* Gallstones sink. */
static double dependent(const ph_case *c, const double *p) { return c->an.gravity * p[1]; }

static int new_lesion(ph_case *c, double hu, int rel, double tex)
{
    if (c->nlesions >= PH_MAX_LESIONS) return 0;
    int k = ++c->nlesions;
    c->lesion_hu[k] = hu;
    c->lesion_rel[k] = rel;
    c->lesion_tex[k] = tex;
    return k;
}

static size_t count_lesion(const ph_scene *sc, int k)
{
    size_t n = 0, tot = (size_t)sc->nx * sc->ny * sc->nz;
    for (size_t v = 0; v < tot; v++) n += sc->les[v] == k;
    return n;
}

/* Paints a round lesion at c of radius R (lobulated by amp) over label
 * `over` with lesion k, setting the label to `label` (-1 keeps). */
static void paint_ball(ph_case *c, const double ctr[3], double R, double amp, int over, int label,
                       int k, const char *name)
{
    ph_blob b;
    double r[3] = {R, R * 0.95, R * 1.05};
    ph_blob_init(&b, ctr, r, 2, 0.3 * k, 0.2 * k, 0);
    b.amp = amp;
    b.freq = 1.0 / fmax(R, 3);
    b.seed = ph_hash_str(c->seed + (uint64_t)k, name);
    ph_paint p = ph_paint_simple(label, PH_M_LESION + k);
    p.lesion = k;
    p.over_label = over;
    p.over = ~(PH_BIT(PH_M_BONE_CORT) | PH_BIT(PH_M_BONE_CANC));
    ph_paint_blob(&c->sc, &b, &p);
}

static void describe_where(ph_case *c, ph_finding *f, const lbox *boxes, int lab)
{
    const ph_anat *an = &c->an;
    const double *p = f->center;
    switch (f->abn) {
    case PH_A_HEPATIC_CYST:
    case PH_A_HEPATIC_MASS:
        snprintf(f->where, sizeof f->where, "%s", p[0] < -15 * S ? "right hepatic lobe" : "left hepatic lobe");
        break;
    case PH_A_RENAL_CYST:
    case PH_A_KIDNEY_STONE: {
        const lbox *b = &boxes[lab];
        double z0 = c->sc.org[2] + b->lo[2] * c->sc.sp[2], z1 = c->sc.org[2] + b->hi[2] * c->sc.sp[2];
        double t = (p[2] - z0) / fmax(z1 - z0, 1);
        snprintf(f->where, sizeof f->where, "%s",
                 t > 0.64 ? "upper pole" : t < 0.36 ? "lower pole" : "interpolar region");
        break;
    }
    case PH_A_PANCREATIC_MASS:
        snprintf(f->where, sizeof f->where, "%s",
                 p[0] < -18 * S ? "head" : p[0] < 35 * S ? "body" : "tail");
        break;
    default: break;
    }
}

static void drop_finding(ph_case *c, int i)
{
    memmove(&c->f[i], &c->f[i + 1], (size_t)(c->nf - i - 1) * sizeof c->f[0]);
    c->nf--;
}

/* Paints the effusion on one side: fluid layering below a level that is
 * perpendicular to gravity, with the lung above it compressed. */
static int paint_effusion(ph_case *c, int left, int k)
{
    ph_scene *sc = &c->sc;
    const ph_anat *an = &c->an;
    int l1 = ph_label(left ? "lung_upper_lobe_left" : "lung_upper_lobe_right");
    int l2 = ph_label(left ? "lung_lower_lobe_left" : "lung_lower_lobe_right");
    int l3 = left ? l1 : ph_label("lung_middle_lobe_right");
    double gmax = -1e9, zmin = 1e9;
    double p[3];
    for (int kk = 0; kk < sc->nz; kk++)
        for (int j = 0; j < sc->ny; j++)
            for (int i = 0; i < sc->nx; i++) {
                int lab = sc->lab[ph_idx(sc, i, j, kk)];
                if (lab != l1 && lab != l2 && lab != l3) continue;
                ph_pos(sc, i, j, kk, p);
                gmax = fmax(gmax, an->gravity * p[1]);
                zmin = fmin(zmin, p[2]);
            }
    if (gmax < -1e8) return 0;
    double D = an->effusion[left];
    for (int kk = 0; kk < sc->nz; kk++)
        for (int j = 0; j < sc->ny; j++)
            for (int i = 0; i < sc->nx; i++) {
                size_t v = ph_idx(sc, i, j, kk);
                int lab = sc->lab[v];
                if (lab != l1 && lab != l2 && lab != l3) continue;
                ph_pos(sc, i, j, kk, p);
                double up = ph_clamp((p[2] - zmin) / (170 * S), 0, 1);
                double level = gmax - D * (1 - 0.7 * up);
                double g = an->gravity * p[1];
                if (g > level) {
                    sc->mat[v] = (uint8_t)(PH_M_LESION + k);
                    sc->lab[v] = 0;
                    sc->les[v] = (uint8_t)k;
                } else if (g > level - 7 * S && sc->mat[v] == PH_M_LUNG) {
                    sc->mat[v] = PH_M_ATELECTASIS;
                }
            }
    return 1;
}

static void paint_emphysema(ph_case *c)
{
    ph_scene *sc = &c->sc;
    const ph_anat *an = &c->an;
    int sev = an->emphysema;
    int upper[2] = {ph_label("lung_upper_lobe_right"), ph_label("lung_upper_lobe_left")};
    int lower[2] = {ph_label("lung_lower_lobe_right"), ph_label("lung_lower_lobe_left")};
    uint64_t seed = ph_hash_str(c->seed, "emphysema");
    double p[3];
    for (int kk = 0; kk < sc->nz; kk++)
        for (int j = 0; j < sc->ny; j++)
            for (int i = 0; i < sc->nx; i++) {
                size_t v = ph_idx(sc, i, j, kk);
                if (sc->mat[v] != PH_M_LUNG) continue;
                int lab = sc->lab[v];
                int up = lab == upper[0] || lab == upper[1];
                int lo = lab == lower[0] || lab == lower[1];
                if (!up && !(lo && sev >= 3)) continue;
                ph_pos(sc, i, j, kk, p);
                double thr = sev == 1 ? 0.42 : sev == 2 ? 0.28 : 0.16;
                if (lo) thr += 0.12;
                double n = ph_noise3(seed, p[0] / 7, p[1] / 7, p[2] / 7) +
                           0.35 * ph_noise3(seed + 1, p[0] / 30, p[1] / 30, p[2] / 30);
                if (n > thr) sc->mat[v] = PH_M_EMPHYSEMA;
            }
}

typedef struct aneurysm_ctx {
    ph_blob b;
    double axis[3], dir[3], rl;
    int k;
} aneurysm_ctx;

/* Lumen round the aorta's axis, mural thrombus around it. */
static int aneurysm_mat(const void *ctx, const double p[3], double d)
{
    const aneurysm_ctx *a = ctx;
    if (d > -1.5) return PH_M_VESSEL_WALL;
    double q[3] = {p[0] - a->axis[0], p[1] - a->axis[1], p[2] - a->axis[2]};
    double t = ph_dot(q, a->dir);
    for (int i = 0; i < 3; i++) q[i] -= t * a->dir[i];
    return ph_dot(q, q) < a->rl * a->rl ? PH_M_ARTERY : PH_M_LESION + a->k;
}

static int paint_aneurysm(ph_case *c, int k)
{
    const ph_anat *an = &c->an;
    double nd[16][4];
    int n = ph_aorta_nodes(an, nd);
    /* The aortic axis at the aneurysm's height. */
    double best[4] = {0}, z = an->aneurysm_z;
    for (int i = 0; i + 1 < n; i++)
        if ((nd[i][2] - z) * (nd[i + 1][2] - z) <= 0 && nd[i][2] != nd[i + 1][2]) {
            double t = (z - nd[i][2]) / (nd[i + 1][2] - nd[i][2]);
            for (int a = 0; a < 4; a++) best[a] = ph_lerp(nd[i][a], nd[i + 1][a], t);
        }
    if (best[3] <= 0) return 0;
    aneurysm_ctx a;
    double R = an->aneurysm_diam / 2;
    double ctr[3] = {best[0] - 2 * S, best[1] - 0.25 * (R - best[3]), z};
    double r[3] = {R, R, R * 0.8 + 12 * S};
    ph_blob_init(&a.b, ctr, r, 2.2, 0, 0, 0);
    a.b.amp = 1.5 * S;
    a.b.freq = 1.0 / 30;
    a.b.seed = ph_hash_str(c->seed, "aneurysm");
    memcpy(a.axis, best, 3 * sizeof(double));
    a.dir[0] = 0, a.dir[1] = 0, a.dir[2] = 1;
    a.rl = fmax(best[3], R * 0.6);
    a.k = k;
    ph_paint p = ph_paint_simple(ph_label("aorta"), PH_M_ARTERY);
    p.fn = aneurysm_mat;
    p.ctx = &a;
    p.lesion = k;
    p.over = ~(PH_BIT(PH_M_BONE_CORT) | PH_BIT(PH_M_BONE_CANC) | PH_BIT(PH_M_DISC) |
               PH_BIT(PH_M_CSF) | PH_BIT(PH_M_CORD));
    ph_paint_blob(&c->sc, &a.b, &p);
    return 1;
}

static int paint_calcification(ph_case *c, ph_rng *r, int k)
{
    const ph_anat *an = &c->an;
    double nd[16][4];
    int n = ph_aorta_nodes(an, nd);
    int lab = ph_label("aorta");
    /* Plaques favour the abdominal aorta and the arch. */
    int first = 3;
    for (int i = 0; i < an->aortic_calc; i++) {
        double f = ph_chance(r, 0.7) ? ph_range(r, 0.55, 1.0) : ph_range(r, 0.0, 0.55);
        double sub[16][4];
        int m = n - first;
        memcpy(sub, nd[first], (size_t)m * sizeof sub[0]);
        double q[4], q2[4];
        ph_spline_point((const double (*)[4])sub, m, f, q);
        ph_spline_point((const double (*)[4])sub, m, fmin(f + 0.01, 1), q2);
        double tan[3] = {q2[0] - q[0], q2[1] - q[1], q2[2] - q[2]};
        double l = sqrt(ph_dot(tan, tan));
        if (l <= 0) continue;
        for (int a = 0; a < 3; a++) tan[a] /= l;
        double rnd[3] = {ph_gauss(r), ph_gauss(r) + 0.8, ph_gauss(r)}; /* more posterior */
        double kk = ph_dot(rnd, tan);
        for (int a = 0; a < 3; a++) rnd[a] -= kk * tan[a];
        double rl = sqrt(ph_dot(rnd, rnd));
        if (rl <= 0) continue;
        double ctr[3];
        for (int a = 0; a < 3; a++) ctr[a] = q[a] + rnd[a] / rl * (q[3] - 0.6 * S);
        double rad[3] = {ph_range(r, 1.4, 2.6) * S, ph_range(r, 1.4, 2.6) * S, ph_range(r, 2.5, 5) * S};
        ph_blob b;
        ph_blob_init(&b, ctr, rad, 2, 0, atan2(tan[1], tan[2]), 0);
        ph_paint p = ph_paint_simple(-1, PH_M_LESION + k);
        p.lesion = k;
        p.over_label = lab;
        ph_paint_blob(&c->sc, &b, &p);
    }
    return 1;
}

static int paint_hydronephrosis(ph_case *c, int left, int k)
{
    const ph_anat *an = &c->an;
    int g = an->hydro[left];
    int lab = ph_label(left ? "kidney_left" : "kidney_right");
    ph_blob kb;
    double m[3];
    ph_kidney_blob(an, left, &kb, m);
    ph_tubes t = {0};
    double pel[3];
    for (int a = 0; a < 3; a++) pel[a] = kb.c[a] + m[a] * (14 - g) * S;
    /* The dilated pelvis and calyces reaching into the kidney. */
    double pr = (7 + 4 * g) * S;
    ph_tubes_add(&t, pel, pel, pr, pr);
    for (int i = 0; i < 4; i++) {
        double f = -0.62 + 0.41 * i;
        double cal[3];
        for (int a = 0; a < 3; a++) cal[a] = kb.c[a] + kb.rot[2][a] * f * an->kid_len - m[a] * 4 * S;
        ph_tubes_add(&t, pel, cal, (2 + 1.5 * g) * S, (3.5 + 2 * g) * S);
    }
    ph_paint p = ph_paint_simple(lab, PH_M_LESION + k);
    p.lesion = k;
    p.over = PH_BIT(PH_M_KID_CORTEX) | PH_BIT(PH_M_KID_MEDULLA) | PH_BIT(PH_M_URINE) |
             PH_BIT(PH_M_FAT);
    ph_paint_tubes(&c->sc, &t, &p);
    ph_tubes_free(&t);
    return 1;
}

void ph_lesions_paint(ph_case *c)
{
    ph_scene *sc = &c->sc;
    ph_anat *an = &c->an;
    lbox b[256];
    ph_rng r;
    ph_rng_init(&r, c->seed, "lesions");
    label_boxes(sc, b);

    if (an->emphysema) paint_emphysema(c);
    for (int i = 0; i < c->nf;) {
        ph_finding *f = &c->f[i];
        int lab = ph_label(f->organ), ok = 1, k = 0;
        double R = f->size_mm / 2;
        /* The organ must be in the image at all. */
        if (b[lab].n * sc->sp[0] * sc->sp[1] * sc->sp[2] < 1000.0 * PH_PRESENT_ML) {
            drop_finding(c, i);
            continue;
        }
        switch (f->abn) {
        case PH_A_HEPATIC_CYST:
        case PH_A_HEPATIC_MASS:
        case PH_A_SPLENIC_LESION:
        case PH_A_PANCREATIC_MASS:
        case PH_A_LUNG_NODULE:
        case PH_A_RENAL_CYST:
        case PH_A_ADRENAL_NODULE: {
            int organ_mat = f->abn == PH_A_PANCREATIC_MASS ? PH_M_PANCREAS
                            : f->abn == PH_A_SPLENIC_LESION ? PH_M_SPLEEN
                                                            : PH_M_LIVER;
            double need = f->abn == PH_A_ADRENAL_NODULE ? 0.0 : f->abn == PH_A_RENAL_CYST ? 0.75 : 1.0;
            if (f->abn == PH_A_PANCREATIC_MASS) need = 0.6;
            double ctr[3];
            if (!place(c, &r, b, lab, -1, &R, need, NULL, ctr)) {
                ok = 0;
                break;
            }
            double hu = 0, tex = 4;
            int rel = -1;
            const char *nm = ph_abn_name(f->abn);
            switch (f->abn) {
            case PH_A_HEPATIC_CYST: hu = ph_range(&r, 0, 14), tex = 3; break;
            case PH_A_RENAL_CYST: hu = ph_range(&r, 0, 15), tex = 3; break;
            case PH_A_SPLENIC_LESION: hu = -ph_range(&r, 25, 45), rel = organ_mat, tex = 6; break;
            case PH_A_HEPATIC_MASS:
                rel = organ_mat;
                hu = !strcmp(f->grade, "hyperdense") ? ph_range(&r, 35, 70) : -ph_range(&r, 30, 55);
                tex = 12;
                break;
            case PH_A_PANCREATIC_MASS: hu = -ph_range(&r, 25, 45), rel = organ_mat, tex = 8; break;
            case PH_A_LUNG_NODULE: hu = ph_range(&r, 15, 55), tex = 10; break;
            case PH_A_ADRENAL_NODULE: hu = f->hu, tex = 5; break;
            }
            if (!(k = new_lesion(c, hu, rel, tex))) {
                ok = 0;
                break;
            }
            double amp = f->abn == PH_A_HEPATIC_MASS || f->abn == PH_A_PANCREATIC_MASS ? 0.22 * R
                         : f->abn == PH_A_LUNG_NODULE ? 0.15 * R
                                                      : 0.04 * R;
            int over = f->abn == PH_A_ADRENAL_NODULE ? -1 : lab;
            int setlab = f->abn == PH_A_RENAL_CYST
                             ? ph_label(f->side > 0 ? "kidney_cyst_left" : "kidney_cyst_right")
                         : f->abn == PH_A_ADRENAL_NODULE ? lab
                                                         : -1;
            if (f->abn == PH_A_ADRENAL_NODULE) {
                /* The nodule replaces the limb and the fat around it. */
                ph_blob bb;
                double rr[3] = {R, R * 0.9, R};
                ph_blob_init(&bb, ctr, rr, 2, 0, 0, 0);
                ph_paint p = ph_paint_simple(lab, PH_M_LESION + k);
                p.lesion = k;
                p.over = PH_BIT(PH_M_FAT) | PH_BIT(PH_M_ADRENAL);
                ph_paint_blob(sc, &bb, &p);
            } else {
                paint_ball(c, ctr, R, amp, over, setlab, k, nm);
            }
            memcpy(f->center, ctr, sizeof f->center);
            f->size_mm = 2 * R;
            f->lesion_label = setlab >= 0 ? setlab : lab;
            f->in_organ = 1;
            break;
        }
        case PH_A_KIDNEY_STONE: {
            double ctr[3];
            /* In the collecting system: near the sinus, inside the kidney. */
            if (!place(c, &r, b, lab, -1, &R, 0.9, NULL, ctr) || !(k = new_lesion(c, f->hu, -1, 30))) {
                ok = 0;
                break;
            }
            paint_ball(c, ctr, R, 0.1 * R, lab, -1, k, "stone");
            memcpy(f->center, ctr, sizeof f->center);
            f->size_mm = 2 * R;
            f->lesion_label = lab;
            f->in_organ = 1;
            break;
        }
        case PH_A_GALLSTONE: {
            double ctr[3];
            if (!place(c, &r, b, lab, -1, &R, 0.85, dependent, ctr) || !(k = new_lesion(c, f->hu, -1, 25))) {
                ok = 0;
                break;
            }
            paint_ball(c, ctr, R, 0.08 * R, lab, -1, k, "gallstone");
            memcpy(f->center, ctr, sizeof f->center);
            f->size_mm = 2 * R;
            f->lesion_label = lab;
            f->in_organ = 1;
            break;
        }
        case PH_A_HYDRONEPHROSIS:
            if (!(k = new_lesion(c, ph_range(&r, 2, 12), -1, 3))) {
                ok = 0;
                break;
            }
            paint_hydronephrosis(c, f->side > 0, k);
            f->lesion_label = lab;
            f->in_organ = 1;
            break;
        case PH_A_PLEURAL_EFFUSION:
            if (!(k = new_lesion(c, ph_range(&r, 4, 20), -1, 4)) || !paint_effusion(c, f->side > 0, k)) {
                ok = 0;
                break;
            }
            f->size_mm = an->effusion[f->side > 0];
            f->lesion_label = 0;
            f->in_organ = 0;
            break;
        case PH_A_AORTIC_ANEURYSM:
            if (!(k = new_lesion(c, ph_range(&r, 35, 55), -1, 6)) || !paint_aneurysm(c, k)) {
                ok = 0;
                break;
            }
            f->lesion_label = lab;
            f->in_organ = 1;
            break;
        case PH_A_AORTIC_CALCIFICATION:
            if (!(k = new_lesion(c, ph_range(&r, 500, 1100), -1, 60)) || !paint_calcification(c, &r, k)) {
                ok = 0;
                break;
            }
            f->lesion_label = lab;
            f->in_organ = 1;
            break;
        default:
            /* Diffuse: fatty liver, organomegaly, emphysema. */
            break;
        }
        if (ok && k) {
            if (count_lesion(sc, k) == 0) ok = 0;
            f->lesion = k;
            if (!ok) c->nlesions--; /* nothing painted: reuse the number */
        }
        if (!ok) {
            drop_finding(c, i);
            continue;
        }
        describe_where(c, f, b, lab);
        i++;
    }
}
