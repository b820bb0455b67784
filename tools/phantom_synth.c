/*
 * phantom_synth.c - from materials to Hounsfield units: attenuation per
 * material and contrast phase, a correlated tissue texture, the scanner's
 * blur (in-plane point spread and slice profile) and correlated quantum
 * noise, clamped to the range a 12-bit CT stores.
 *
 * Noise is drawn slice by slice from streams seeded by (case, slice), so
 * the image does not depend on the order of work.
 *
 * Threading: works on one case.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "tools/phantom.h"

/* HU without contrast, arterial, portal venous; texture amplitude. */
static const double mat_hu[PH_M_COUNT][4] = {
    [PH_M_AIR] = {-1000, -1000, -1000, 2},
    [PH_M_FAT] = {-104, -104, -100, 12},
    [PH_M_SKIN] = {25, 40, 50, 8},
    [PH_M_MUSCLE] = {48, 56, 62, 8},
    [PH_M_LUNG] = {-865, -860, -855, 30},
    [PH_M_LUNG_VESSEL] = {38, 220, 150, 12},
    [PH_M_AIRWAY_WALL] = {30, 45, 55, 15},
    [PH_M_LIVER] = {58, 72, 112, 6},
    [PH_M_LIVER_VESSEL] = {40, 95, 168, 6},
    [PH_M_BILE] = {8, 8, 8, 3},
    [PH_M_SPLEEN] = {48, 128, 120, 7},
    [PH_M_KID_CORTEX] = {33, 205, 168, 8},
    [PH_M_KID_MEDULLA] = {30, 85, 158, 8},
    [PH_M_URINE] = {6, 6, 8, 3},
    [PH_M_PANCREAS] = {42, 118, 96, 9},
    [PH_M_ADRENAL] = {32, 66, 62, 6},
    [PH_M_BOWEL_WALL] = {40, 88, 96, 8},
    [PH_M_BOWEL_FLUID] = {12, 12, 12, 5},
    [PH_M_STOOL] = {15, 15, 15, 60},
    [PH_M_GAS] = {-1000, -1000, -1000, 4},
    [PH_M_ARTERY] = {42, 330, 175, 5},
    [PH_M_VEIN] = {40, 75, 152, 5},
    [PH_M_PORTAL] = {40, 115, 178, 5},
    [PH_M_MYOCARDIUM] = {48, 112, 102, 6},
    [PH_M_BLOOD_LEFT] = {42, 335, 172, 5},
    [PH_M_BLOOD_RIGHT] = {42, 190, 162, 6},
    [PH_M_ESOPHAGUS] = {40, 72, 76, 6},
    [PH_M_BONE_CORT] = {0, 0, 0, 70},   /* from the case's bone density */
    [PH_M_BONE_CANC] = {0, 0, 0, 45},
    [PH_M_MARROW] = {-40, -40, -35, 20},
    [PH_M_CARTILAGE] = {110, 115, 120, 25},
    [PH_M_DISC] = {85, 90, 95, 8},
    [PH_M_CSF] = {8, 8, 8, 3},
    [PH_M_CORD] = {35, 36, 38, 4},
    [PH_M_PROSTATE] = {40, 72, 78, 8},
    [PH_M_THYROID] = {100, 165, 140, 10},
    [PH_M_TABLE] = {260, 260, 260, 25},
    [PH_M_TABLE_CORE] = {-720, -720, -720, 20},
    [PH_M_VESSEL_WALL] = {40, 62, 70, 5},
    [PH_M_SOFT] = {45, 82, 92, 8},
    [PH_M_ATELECTASIS] = {-260, -140, -150, 70},
    [PH_M_EMPHYSEMA] = {-975, -975, -975, 10},
};

static double base_hu(const ph_case *c, const double *jit, int m)
{
    const ph_anat *an = &c->an;
    if (m >= PH_M_LESION) {
        int k = m - PH_M_LESION;
        if (k > c->nlesions) return 0;
        double h = c->lesion_hu[k];
        if (c->lesion_rel[k] >= 0) h += base_hu(c, jit, c->lesion_rel[k]);
        return h;
    }
    if (m >= PH_M_COUNT) return 0;
    if (m == PH_M_BONE_CORT) return an->bone_hu;
    if (m == PH_M_BONE_CANC) return an->bone_canc_hu;
    double h = mat_hu[m][an->phase] + jit[m];
    if (m == PH_M_LIVER) h -= an->fatty_delta;
    return h;
}

int ph_synth_hu(ph_case *c)
{
    ph_scene *sc = &c->sc;
    const ph_anat *an = &c->an;
    size_t plane = (size_t)sc->nx * sc->ny, n = plane * sc->nz;
    float *hu = sc->scratch; /* the painters are done with it */
    sc->scratch = NULL;
    c->hu = hu;

    /* Per-case variation of each tissue's attenuation. */
    double jit[PH_M_COUNT] = {0};
    ph_rng r;
    ph_rng_init(&r, c->seed, "hu");
    for (int m = 0; m < PH_M_COUNT; m++) {
        double a = mat_hu[m][3];
        jit[m] = (m == PH_M_AIR || m == PH_M_GAS) ? 0 : ph_gauss(&r) * fmin(6, 0.5 * a + 2);
    }
    double base[256], amp[256];
    for (int m = 0; m < 256; m++) {
        base[m] = base_hu(c, jit, m);
        amp[m] = m < PH_M_COUNT ? mat_hu[m][3]
                 : (m >= PH_M_LESION && m - PH_M_LESION <= c->nlesions) ? c->lesion_tex[m - PH_M_LESION]
                                                                          : 0;
    }

    /* Tissue texture: white noise blurred to a few millimetres, scaled to
     * unit variance. */
    for (int k = 0; k < sc->nz; k++) {
        ph_rng s;
        ph_rng_init(&s, ph_hash2(c->seed, (uint64_t)k), "texture");
        float *t = hu + plane * k;
        for (size_t v = 0; v < plane; v++) t[v] = (float)(2 * ph_unif(&s) - 1);
    }
    double sig[3] = {2.2 / sc->sp[0], 2.2 / sc->sp[1], 1.5 / sc->sp[2]};
    ph_blur(hu, sc->nx, sc->ny, sc->nz, sig);
    double ss = 0;
    for (size_t v = 0; v < n; v++) ss += (double)hu[v] * hu[v];
    double norm = ss > 0 ? 1.0 / sqrt(ss / n) : 0;
    for (size_t v = 0; v < n; v++) {
        int m = sc->mat[v];
        hu[v] = (float)(base[m] + amp[m] * an->texture * norm * hu[v]);
    }
    /* Dependent lung is denser (less aerated, more blood). */
    for (int k = 0; k < sc->nz; k++) {
        double w, d, yc, p[3];
        ph_pos(sc, 0, 0, k, p);
        ph_outline(an, p[2], &w, &d, &yc);
        for (int j = 0; j < sc->ny; j++) {
            ph_pos(sc, 0, j, k, p);
            double add = 45 * ph_smoothstep(0, 110 * an->s, an->gravity * (p[1] - yc));
            size_t v0 = ph_idx(sc, 0, j, k);
            for (int i = 0; i < sc->nx; i++)
                if (sc->mat[v0 + i] == PH_M_LUNG) hu[v0 + i] += (float)add;
        }
    }

    /* Point spread in-plane and the slice profile along z. */
    double psf[3] = {an->psf, an->psf, 0.35};
    ph_blur(hu, sc->nx, sc->ny, sc->nz, psf);

    /* Quantum noise, correlated within a slice. */
    float *slice = malloc(plane * sizeof *slice);
    if (!slice) return CTG_ENOMEM;
    double nsig[3] = {0.75, 0.75, 0};
    /* Variance left after the blur: sum of squared kernel weights. */
    double keep = 1;
    for (int a = 0; a < 2; a++) {
        double s2 = 0, s1 = 0;
        for (int j = -3; j <= 3; j++) {
            double w = exp(-0.5 * j * j / (nsig[a] * nsig[a]));
            s1 += w, s2 += w * w;
        }
        keep *= s2 / (s1 * s1);
    }
    double scale = an->noise_sd / sqrt(keep);
    for (int k = 0; k < sc->nz; k++) {
        ph_rng s;
        ph_rng_init(&s, ph_hash2(c->seed, (uint64_t)k), "noise");
        /* Box-Muller, both values of each pair. */
        for (size_t v = 0; v < plane; v += 2) {
            double u1 = ph_unif(&s), u2 = ph_unif(&s);
            double rad = sqrt(-2.0 * log(u1 > 1e-300 ? u1 : 1e-300)), th = 2.0 * M_PI * u2;
            slice[v] = (float)(rad * cos(th));
            if (v + 1 < plane) slice[v + 1] = (float)(rad * sin(th));
        }
        ph_blur(slice, sc->nx, sc->ny, 1, nsig);
        float *h = hu + plane * k;
        for (size_t v = 0; v < plane; v++) {
            /* Stored values are integers: round here so that the DICOM
             * series and ct.nii.gz hold exactly the same numbers. */
            double x = floor(h[v] + scale * slice[v] + 0.5);
            h[v] = (float)ph_clamp(x, -1024, 3071);
        }
    }
    free(slice);
    return 0;
}
