/*
 * phantom.h - the phantom generator's internal interface, shared by
 * tools/phantom*.c and tests/test_phantom.c.
 *
 * A case is built in four steps: ph_anat_sample() draws the anatomy and the
 * abnormalities from the case's own random streams; the painters rasterise
 * every structure into a material map, a TotalSegmentator label map and a
 * lesion map on the canonical LPS grid (ph_scene); ph_synth_hu() turns
 * materials into Hounsfield units with texture, blur and correlated noise;
 * phantom_text.c writes findings.json, report.txt and the manifest line.
 *
 * Coordinates: the anatomy lives in a body frame in millimetres with LPS
 * axes (+x patient left, +y posterior, +z head), x = 0 on the midline and
 * z = 0 at the upper end plate of S1.  World (DICOM patient) coordinates are
 * the body frame plus the case's table offset (ph_case.offset).
 *
 * Threading: a case (ph_case and everything it points to) belongs to one
 * thread; the tables are read-only; different cases may be generated on
 * different threads at the same time.
 */
#ifndef CTGLIP_PHANTOM_H
#define CTGLIP_PHANTOM_H

#include <stddef.h>
#include <stdint.h>

#include "core/vol.h"

/* ---- random numbers and noise (phantom_util.c) ------------------------- */

/* xoshiro256** seeded through splitmix64. */
typedef struct ph_rng {
    uint64_t s[4];
} ph_rng;

uint64_t ph_mix(uint64_t x);                 /* splitmix64 finaliser */
uint64_t ph_hash2(uint64_t a, uint64_t b);   /* order-dependent mix */
uint64_t ph_hash_str(uint64_t h, const char *s);
/* A stream for one purpose of one case: the same (seed, purpose) always
 * gives the same sequence, whatever else the case draws. */
void ph_rng_init(ph_rng *r, uint64_t seed, const char *purpose);
uint64_t ph_next(ph_rng *r);
double ph_unif(ph_rng *r);                     /* [0, 1) */
double ph_range(ph_rng *r, double lo, double hi);
double ph_gauss(ph_rng *r);                    /* N(0, 1) */
int ph_int(ph_rng *r, int n);                  /* 0..n-1 */
int ph_chance(ph_rng *r, double p);            /* 1 with probability p */

/* Smooth value noise with unit lattice spacing, range about [-1, 1]. */
double ph_noise3(uint64_t seed, double x, double y, double z);
/* Two octaves of noise at frequency freq (1/mm) around p. */
double ph_fbm(uint64_t seed, const double p[3], double freq);

/* "2.25." followed by the decimal 128-bit number hashed from (seed, case,
 * purpose); at most 44 characters, so ".NNNNN" suffixes still fit 64. */
void ph_uid(char *out, size_t n, uint64_t seed, int index, const char *purpose);
/* A date (YYYYMMDD) `days` after 1 January 2010. */
void ph_date(char *out, size_t n, int days);

/* In-place separable Gaussian blur of a float volume (sigma in voxels per
 * axis; 0 skips an axis). */
void ph_blur(float *v, int nx, int ny, int nz, const double sigma[3]);

/* ---- small vector helpers ------------------------------------------------ */

static inline double ph_dot(const double a[3], const double b[3])
{
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
}
static inline double ph_clamp(double x, double lo, double hi)
{
    return x < lo ? lo : x > hi ? hi : x;
}
static inline double ph_lerp(double a, double b, double t) { return a + (b - a) * t; }
static inline double ph_smoothstep(double e0, double e1, double x)
{
    double t = ph_clamp((x - e0) / (e1 - e0), 0, 1);
    return t * t * (3 - 2 * t);
}
/* Polynomial smooth minimum of two signed distances (k mm of blending). */
double ph_smin(double a, double b, double k);
/* Interpolates a table of (x, y) pairs sorted by x (Catmull-Rom, clamped). */
double ph_curve(const double (*tab)[2], int n, double x);

/* ---- materials ------------------------------------------------------------ */

/* What a voxel is made of; ph_synth_hu() maps each to HU for the case's
 * contrast phase.  Lesions get their own materials from PH_M_LESION on so
 * that each can have its own attenuation. */
enum ph_mat {
    PH_M_AIR = 0,
    PH_M_FAT,
    PH_M_SKIN,
    PH_M_MUSCLE,
    PH_M_LUNG,
    PH_M_LUNG_VESSEL,
    PH_M_AIRWAY_WALL,
    PH_M_LIVER,
    PH_M_LIVER_VESSEL,
    PH_M_BILE,
    PH_M_SPLEEN,
    PH_M_KID_CORTEX,
    PH_M_KID_MEDULLA,
    PH_M_URINE,
    PH_M_PANCREAS,
    PH_M_ADRENAL,
    PH_M_BOWEL_WALL,
    PH_M_BOWEL_FLUID,
    PH_M_STOOL,
    PH_M_GAS,
    PH_M_ARTERY,
    PH_M_VEIN,
    PH_M_PORTAL,
    PH_M_MYOCARDIUM,
    PH_M_BLOOD_LEFT,
    PH_M_BLOOD_RIGHT,
    PH_M_ESOPHAGUS,
    PH_M_BONE_CORT,
    PH_M_BONE_CANC,
    PH_M_MARROW,
    PH_M_CARTILAGE,
    PH_M_DISC,
    PH_M_CSF,
    PH_M_CORD,
    PH_M_PROSTATE,
    PH_M_THYROID,
    PH_M_TABLE,
    PH_M_TABLE_CORE,
    PH_M_VESSEL_WALL,
    PH_M_SOFT,      /* fascia, lymphoid and other unnamed soft tissue */
    PH_M_ATELECTASIS,
    PH_M_EMPHYSEMA,
    PH_M_COUNT,
    PH_M_LESION = 64, /* lesion k (1-based) is PH_M_LESION + k */
};
#define PH_MAX_LESIONS 32
#define PH_BIT(m) (1ull << (m))

/* ---- abnormalities ------------------------------------------------------- */

enum ph_abn {
    PH_A_HEPATIC_CYST = 0,
    PH_A_HEPATIC_MASS,
    PH_A_FATTY_LIVER,
    PH_A_HEPATOMEGALY,
    PH_A_SPLENOMEGALY,
    PH_A_RENAL_CYST,
    PH_A_KIDNEY_STONE,
    PH_A_HYDRONEPHROSIS,
    PH_A_GALLSTONE,
    PH_A_LUNG_NODULE,
    PH_A_PLEURAL_EFFUSION,
    PH_A_EMPHYSEMA,
    PH_A_AORTIC_ANEURYSM,
    PH_A_AORTIC_CALCIFICATION,
    PH_A_PANCREATIC_MASS,
    PH_A_ADRENAL_NODULE,
    PH_A_CARDIOMEGALY,
    PH_A_SPLENIC_LESION,
    PH_A_COUNT
};

/* The name used in findings.json and the manifest ("hepatic_cyst"). */
const char *ph_abn_name(int abn);
/* The abnormality of a name, or -1. */
int ph_abn_parse(const char *name);

/* One finding of one organ.  A finding that covers several organs (emphysema
 * of both upper lobes) is one ph_finding per organ sharing `group_id`. */
typedef struct ph_finding {
    int abn;             /* enum ph_abn */
    char organ[40];      /* TotalSegmentator name of the organ it belongs to */
    int lesion;          /* 1..K in lesions.nii.gz, 0 for a diffuse finding */
    int lesion_label;    /* label under the lesion voxels (0: none) */
    int in_organ;        /* 1: the lesion lies inside the organ's label */
    double size_mm;      /* largest diameter; 0 when not applicable */
    double hu;           /* attenuation mentioned in the text (0: none) */
    double center[3];    /* body frame, mm */
    int side;            /* -1 right, +1 left, 0 none */
    char where[48];      /* "right hepatic lobe", "lower pole", ... */
    char grade[16];      /* "small", "moderate", "mild", ... */
    int group_id;
    char sentence[320];
    char impression[200];
} ph_finding;

#define PH_MAX_FINDINGS 24

/* ---- options and the anatomy of a case ----------------------------------- */

enum { PH_FOV_CHEST = 0, PH_FOV_ABDOMEN, PH_FOV_CAP, PH_FOV_RANDOM };
enum { PH_POS_HFS = 0, PH_POS_FFS, PH_POS_HFP, PH_POS_FFP, PH_POS_RANDOM };
enum { PH_TEXT_TRAIN = 0, PH_TEXT_HELDOUT, PH_TEXT_ALL };
enum { PH_PHASE_NONE = 0, PH_PHASE_ARTERIAL, PH_PHASE_PORTAL };

typedef struct ph_opts {
    uint64_t seed;
    int count;
    const char *out;
    int nx, ny;           /* matrix */
    double spacing;       /* in-plane mm; 0: FOV / matrix */
    double thickness;     /* slice spacing and thickness, mm */
    int position;         /* PH_POS_* */
    int ts;               /* enum dcm_ts */
    int enhanced;
    int fov;              /* PH_FOV_* */
    double abnormal_rate;
    uint32_t force;       /* bit per enum ph_abn: exactly these findings */
    int text;             /* PH_TEXT_* */
    int nifti;            /* also write ct.nii.gz */
    int dicom;            /* write the DICOM series (default 1) */
    int pixel_signed;
    int threads;
    int quiet;
} ph_opts;

void ph_opts_default(ph_opts *o);

#define PH_ZT0 (-450.0)
#define PH_ZTN 1301

/* Everything ph_anat_sample() decides about a body before it is painted. */
typedef struct ph_anat {
    uint64_t seed;        /* the case seed; organ streams derive from it */
    int fov, position, phase, male, age;
    double gravity;       /* +1: posterior is down (supine); -1: prone */
    double s;             /* overall size scale */
    double habitus;       /* body width scale (fat) */
    double fat_mm, muscle_mm;
    double z_lo, z_hi;    /* the scanned range, body frame */
    /* The spine: body centre y as a function of z and the vertebrae. */
    double spine_tab[16][2];
    int nspine;
    struct ph_vert {
        char name[16];
        double z_lo, z_hi;     /* body end plates */
        double y;              /* centre of the body (AP) */
        double rx, ry;         /* half width, half depth of the body */
        double tilt;           /* end-plate tilt (rad, about x) */
    } vert[24];
    int nvert;                 /* C6..L5, from the top */
    /* Body outline: half width, half depth and centre y against z. */
    double outline[12][4];
    int noutline;
    double dome_r, dome_l;     /* diaphragm dome heights */
    double z_apex, z_carina;
    /* Organ geometry other structures refer to. */
    double liver_scale, spleen_scale, heart_scale;
    double heart_c[3], heart_r[3], heart_yaw, heart_pitch;
    double kid_c[2][3];        /* [0] right, [1] left */
    double kid_len, kid_rot[2];
    double spleen_c[3];
    double gb_c[3], gb_len, gb_r;
    double bladder_c[3], bladder_r[3];
    double z_arch;
    double aorta_bif_z;
    double z_symphysis;
    /* Abnormalities that change the anatomy before painting. */
    double fatty_delta;        /* HU subtracted from liver */
    int hydro[2];              /* hydronephrosis grade per kidney (0 none) */
    int effusion[2];           /* pleural effusion depth in mm per side */
    int emphysema;             /* 0 none, 1 mild, 2 moderate, 3 severe */
    double aneurysm_diam, aneurysm_z; /* 0: none */
    int aortic_calc;           /* number of calcified plaques */
    /* Outline, spine line and wall thickness sampled every millimetre of z
     * from PH_ZT0 (the painters look these up per voxel). */
    float zt_w[PH_ZTN], zt_d[PH_ZTN], zt_yc[PH_ZTN], zt_spine[PH_ZTN];
    /* Noise and look. */
    double noise_sd, texture, psf;
    double bone_hu, bone_canc_hu;
} ph_anat;

/* ---- the painted scene (phantom_paint.c) --------------------------------- */

typedef struct ph_scene {
    int nx, ny, nz;
    double sp[3];        /* voxel spacing, mm */
    double org[3];       /* body-frame centre of voxel (0,0,0) */
    uint8_t *mat;        /* enum ph_mat per voxel */
    uint8_t *lab;        /* TotalSegmentator v2 id */
    uint8_t *les;        /* lesion index */
    float *scratch;      /* signed distances of the tube being painted */
    const ph_anat *an;
} ph_scene;

/* A signed distance in mm (negative inside) of a point in the body frame. */
typedef double (*ph_sdf_fn)(const void *ctx, const double p[3]);
/* The material of a voxel at depth d (mm, negative) inside a shape, or -1 to
 * leave it alone. */
typedef int (*ph_mat_fn)(const void *ctx, const double p[3], double d);

typedef struct ph_paint {
    int label;           /* label to set; -1 keeps the voxel's label */
    int lesion;          /* lesion index to set; -1 keeps it */
    int mat;             /* material inside */
    int shell_mat;       /* material of the outer shell; -1: none */
    double shell;        /* shell thickness (mm) */
    ph_mat_fn fn;        /* when set, decides the material instead */
    const void *ctx;
    uint64_t over;       /* bitmask of materials (< 64) that may be painted
                            over; 0: any */
    int over_label;      /* -1: any; else only voxels with this label */
    ph_sdf_fn clip;      /* when set, paint only where clip() < 0 */
    const void *clip_ctx;
} ph_paint;

/* A paint spec with a label and material and no restrictions. */
ph_paint ph_paint_simple(int label, int mat);

void ph_paint_sdf(ph_scene *sc, const double lo[3], const double hi[3], ph_sdf_fn f,
                  const void *ctx, const ph_paint *pp);

/* A deformed superellipsoid. */
typedef struct ph_blob {
    double c[3], r[3], e;    /* centre, radii, exponent (2: ellipsoid) */
    double rot[3][3];        /* rows: local axes in the body frame */
    double amp, freq;        /* surface noise (mm, 1/mm) */
    uint64_t seed;
} ph_blob;

/* yaw about z, then pitch about x, then roll about y (radians). */
void ph_blob_init(ph_blob *b, const double c[3], const double r[3], double e, double yaw,
                  double pitch, double roll);
double ph_blob_sdf(const void *blob, const double p[3]);
void ph_blob_bbox(const ph_blob *b, double lo[3], double hi[3]);
void ph_paint_blob(ph_scene *sc, const ph_blob *b, const ph_paint *pp);

/* Tubes: sets of capsule segments with radii varying along them. */
typedef struct ph_seg {
    double a[3], b[3], ra, rb;
} ph_seg;
typedef struct ph_tubes {
    ph_seg *s;
    int n, cap;
} ph_tubes;

/* Modulates the radius at arc length t (mm) of a spline. */
typedef double (*ph_rmod_fn)(const void *ctx, double t);
/* Appends a Catmull-Rom spline through n nodes (x, y, z, r) sampled every
 * step mm. */
void ph_tubes_spline(ph_tubes *t, const double (*nodes)[4], int n, double step,
                     ph_rmod_fn rmod, const void *ctx);
void ph_tubes_add(ph_tubes *t, const double a[3], const double b[3], double ra, double rb);
void ph_tubes_free(ph_tubes *t);
/* Paints the union of the segments (the shell measured from the union's
 * surface). */
void ph_paint_tubes(ph_scene *sc, const ph_tubes *t, const ph_paint *pp);
/* A point and tangent at arc fraction f (0..1) of a spline, for placing
 * things along it. */
void ph_spline_point(const double (*nodes)[4], int n, double f, double p[4]);

/* Body-frame position of voxel (i, j, k). */
static inline void ph_pos(const ph_scene *sc, int i, int j, int k, double p[3])
{
    p[0] = sc->org[0] + i * sc->sp[0];
    p[1] = sc->org[1] + j * sc->sp[1];
    p[2] = sc->org[2] + k * sc->sp[2];
}
static inline size_t ph_idx(const ph_scene *sc, int i, int j, int k)
{
    return (size_t)i + (size_t)sc->nx * ((size_t)j + (size_t)sc->ny * (size_t)k);
}
/* The voxel index nearest to p, clamped into the grid. */
void ph_voxel_of(const ph_scene *sc, const double p[3], int ijk[3]);

/* Looks up a TotalSegmentator id by name; aborts on an unknown name, which
 * is a bug in the tables of this tool. */
int ph_label(const char *name);

/* ---- anatomy (phantom_anat.c: sampling and body geometry; the painters
 *      in phantom_body.c, phantom_thorax.c, phantom_abdomen.c,
 *      phantom_bones.c) ------------------------------------------------------ */

/* Spine centre y at height z. */
double ph_spine_y(const ph_anat *an, double z);
/* Body outline at z: half width, half depth, centre y. */
void ph_outline(const ph_anat *an, double z, double *w, double *d, double *yc);
/* Depth below the trunk's muscle surface along the ray from the outline's
 * centre (negative outside); (ux, uy) receive that ray's direction. */
double ph_muscle_depth(const ph_anat *an, const double p[3], double *ux, double *uy);
/* Subcutaneous fat thickness at z in direction (ux, uy). */
double ph_fat_at(const ph_anat *an, double z, double ux, double uy);
/* Thickness of the trunk wall's muscle layer at z in direction (ux, uy). */
double ph_wall_at(const ph_anat *an, double z, double ux, double uy);
/* Depth below the skin (mm, negative outside the body). */
double ph_body_depth(const ph_anat *an, const double p[3]);
/* Signed distance to the inner surface of the trunk wall (negative in the
 * body cavities). */
double ph_cavity_sdf(const void *an, const double p[3]);
/* The same when the muscle depth and its ray (ph_muscle_depth) are known. */
double ph_cavity_from(const ph_anat *an, const double p[3], double md, double ux, double uy);
/* Height of the diaphragm (its upper surface) at (x, y). */
double ph_diaphragm_z(const ph_anat *an, double x, double y);
/* Height of a vertebra's centre by name ("T12"), or NAN. */
double ph_vert_z(const ph_anat *an, const char *name);

/* The painters, in the order they run (later paint wins). */
void ph_paint_body(ph_scene *sc);     /* skin, fat, muscle, table, named muscles */
void ph_paint_lungs(ph_scene *sc);    /* lung lobes, diaphragm, mediastinal fat */
void ph_paint_abdomen(ph_scene *sc);  /* solid organs, bowel, bladder */
void ph_paint_vessels(ph_scene *sc);  /* heart, great vessels, airways, lung vessels */
void ph_paint_bones(ph_scene *sc);    /* spine, ribs, pelvis, shoulders */

/* Nodes (x, y, z, r) of the aorta from the root to the bifurcation; returns
 * the count (at most 16). */
int ph_aorta_nodes(const ph_anat *an, double (*nd)[4]);
/* A kidney as painted (left = 1) and the direction its hilum faces. */
void ph_kidney_blob(const ph_anat *an, int left, ph_blob *b, double medial[3]);
/* The heart as painted. */
void ph_heart_blob(const ph_anat *an, ph_blob *b);

/* ---- the case (phantom.c, phantom_lesion.c, phantom_synth.c,
 *      phantom_text.c) -------------------------------------------------------- */

typedef struct ph_case {
    int index;
    uint64_t seed;           /* the case seed (from the run seed and index) */
    uint64_t run_seed;
    ph_anat an;
    ph_scene sc;
    double offset[3];        /* world = body frame + offset */
    ph_finding f[PH_MAX_FINDINGS];
    int nf;
    int nlesions;
    /* Attenuation of each lesion: HU, or an offset from the HU of
     * material lesion_rel[k] when that is >= 0. */
    double lesion_hu[PH_MAX_LESIONS + 1];
    int lesion_rel[PH_MAX_LESIONS + 1];
    double lesion_tex[PH_MAX_LESIONS + 1];
    char study_uid[64], series_uid[64], frame_uid[64];
    /* Voxel counts per label, after painting. */
    size_t count[256];
    float *hu;               /* nx*ny*nz HU, canonical grid */
    char *report;            /* report.txt */
    char *findings_json;     /* findings.json */
    char *manifest_line;     /* one line, no newline */
} ph_case;

/* Builds case `index` of a run in memory: anatomy, findings, label and
 * lesion maps, HU volume and texts.  The case is freed with ph_case_free
 * (also after a failure).  Returns 0 or a CTG_E* code. */
int ph_case_build(const ph_opts *o, int index, ph_case *c);
void ph_case_free(ph_case *c);
/* Writes the case's files under o->out/case_NNNN/.  Returns 0 or a CTG_E*
 * code with the reason in why. */
int ph_case_write(const ph_opts *o, ph_case *c, char *why, size_t n);

/* Draws the case's anatomy and abnormalities (before painting). */
void ph_anat_sample(const ph_opts *o, ph_case *c);
/* Draws the case's abnormalities and the anatomy changes they imply
 * (called by ph_anat_sample). */
void ph_findings_draw(const ph_opts *o, ph_case *c);
/* Places the focal lesions of the drawn findings into the painted scene;
 * findings whose organ is not in view are dropped. */
void ph_lesions_paint(ph_case *c);
/* Map each material to HU and add texture, blur and noise; fills c->hu. */
int ph_synth_hu(ph_case *c);

/* Chooses wording and builds report, findings.json and the manifest line. */
int ph_text_build(const ph_opts *o, ph_case *c);

/* Phrasing tables, exposed for tests: the phrasings of a finding or of an
 * organ group's normal statement (*out) and their number; the first
 * PH_TRAIN_PHRASES are the training set, the rest held out. */
#define PH_TRAIN_PHRASES 3
int ph_text_phrases(const char *key, const char *const **out);
/* The key of phrase table i ("hepatic_cyst", "normal:liver", "rest:lungs"),
 * or NULL past the last. */
const char *ph_text_key(int i);

/* Minimum volume (ml) for an organ to count as present in the study. */
#define PH_PRESENT_ML 0.5

#endif
