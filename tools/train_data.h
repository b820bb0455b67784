/*
 * train_data.h - the trainer's data layer (prefix td_): the JSONL training
 * manifest, loading one case (CT from a DICOM folder or NIfTI, label map in
 * TotalSegmentator v2 or v1 ids) onto the training grid with labels mapped
 * to the model's class indices, a memory-bounded cache of loaded cases, and
 * random training patches with augmentation.
 *
 * It lives in tools/ rather than core/ because loading a DICOM folder needs
 * dicom/ (dcm_series_volume), which core/ may not depend on.
 *
 * Randomness comes only from a td_rng the caller passes in, so a run is
 * deterministic for a seed.  Threading: a manifest is read-only after
 * td_manifest_load and may be shared; a td_cache and a td_rng belong to one
 * thread at a time; td_case_load and td_sample_patch keep no state of their
 * own and may run on several threads at once on different outputs.
 */
#ifndef CTGLIP_TRAIN_DATA_H
#define CTGLIP_TRAIN_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "core/vol.h"

/* Hard caps on what a manifest may make us hold. */
#define TD_MAX_LINE (256 * 1024) /* bytes in one manifest line */
#define TD_MAX_CASES 1000000     /* cases in one manifest */
#define TD_MAX_FINDINGS 256      /* findings of one case */
#define TD_MAX_REPORT (64 * 1024) /* bytes of report text kept */
#define TD_MAX_SKIP_LOG 16       /* skipped lines whose reason is kept */

/* ---- manifest -------------------------------------------------------------- */

typedef struct td_mfinding {
    char *organ;       /* TotalSegmentator name as written (may be unknown) */
    char *abnormality; /* key, e.g. "renal_cyst" */
    char *sentence;    /* "" when the line has none */
    int lesion;        /* its value in the case's lesion map; 0: none (diffuse) */
} td_mfinding;

typedef struct td_entry {
    char *id;
    int line;          /* 1-based line in the manifest */
    /* Paths, already joined with the manifest's folder when relative. */
    char *ct;          /* DICOM folder, or .nii / .nii.gz */
    char *labels;
    char *lesions;     /* NULL when absent (not loaded; kept for callers) */
    char *report;      /* NULL when absent */
    int label_version; /* 1 or 2 from the line; 0: not given (see td_opts) */
    int nfindings;
    td_mfinding *findings;
} td_entry;

typedef struct td_manifest {
    int n;             /* usable cases */
    td_entry *cases;
    int lines;         /* non-blank lines read */
    int skipped;       /* lines that were not usable */
    /* The first TD_MAX_SKIP_LOG skipped lines and why (also logged). */
    int nskip_log;
    struct {
        int line;
        char why[200];
    } skip_log[TD_MAX_SKIP_LOG];
} td_manifest;

/* Reads a JSONL manifest, one case per line:
 *   {"id", "ct", "labels", "lesions"?, "report"?, "label_version"?: 1|2,
 *    "findings": [{"organ", "abnormality", "sentence"?}]}
 * Other keys are ignored.  A line that does not parse or lacks a required
 * key is skipped with its line number and reason logged (and kept in
 * skip_log); that is not an error.  Duplicate ids are skipped too.  Errors:
 * the file cannot be read (CTG_EIO/CTG_ENOENT), more than TD_MAX_CASES
 * cases (CTG_ETOOBIG), CTG_ENOMEM; no usable case at all is CTG_EFORMAT.
 * The reason goes to why.  *out is new; free with td_manifest_free. */
int td_manifest_load(const char *path, td_manifest **out, char *why, size_t n);
void td_manifest_free(td_manifest *m); /* NULL: no-op */
/* The index of the case with this id, or -1. */
int td_manifest_find(const td_manifest *m, const char *id);

/* ---- options ----------------------------------------------------------------- */

typedef struct td_opts {
    /* The model's classes as v2 label ids: class index c is classes[c-1];
     * every other label becomes 0 (background).  Not owned. */
    const int *classes;
    int nclasses;            /* 1..255 */
    double spacing[3];       /* training grid, mm along i, j, k; 0: keep */
    int label_version;       /* for lines without one: 2 (default) or 1 */
    int load_report;         /* 1: read the report text into the case */
    /* Patch sampling. */
    double fg_fraction;      /* patches centred on a labelled voxel (2/3) */
    int lesions;             /* 1: locate focal findings in the lesion maps (1) */
    double lesion_fraction;  /* patches centred on a located finding (1/4; part
                              * of fg_fraction) */
    int augment;             /* 0: plain crops (evaluation) */
    double scale;            /* zoom factor drawn from [1-scale, 1+scale] (0.1) */
    double hu_scale;         /* intensity factor from [1-x, 1+x] (0.05) */
    double hu_shift;         /* intensity offset from [-x, x] HU (20) */
    double noise_sd;         /* Gaussian noise, sd drawn from [0, x] HU (10) */
} td_opts;

/* The defaults above; classes must still be set. */
void td_opts_default(td_opts *o);

/* ---- one case ---------------------------------------------------------------- */

typedef struct td_finding {
    char organ[64];          /* TotalSegmentator name */
    int organ_id;            /* v2 id */
    int cls;                 /* the model's class index, 1..nclasses */
    char abnormality[64];
    char *sentence;          /* owned by the case */
    /* Where a focal finding is, when the case's lesion map shows it: the
     * bounding box of its lesion on the training grid, voxels i0..i1,
     * j0..j1, k0..k1 inclusive ({0, -1, ...}: not located; diffuse
     * findings and lesions lost to the resampling are never located). */
    int box[6];
} td_finding;

/* 1 when finding f is located (f->box is a box). */
static inline int td_finding_located(const td_finding *f) { return f->box[0] <= f->box[1]; }

typedef struct td_case {
    int index;               /* in the manifest */
    char id[128];
    ctg_vol *ct;             /* CTG_F32 HU, canonical, training spacing */
    ctg_vol *lab;            /* CTG_U8 class indices on ct's grid */
    int nfindings;
    td_finding *findings;    /* only findings on classes of the model */
    int dropped;             /* findings on organs the model does not cover */
    char *report;            /* NULL unless opts->load_report and present */
    /* Labelled voxels grouped by class, for foreground-biased crops:
     * voxel indices of class c are fg[fg_start[c] .. fg_start[c+1]-1]
     * (c = 1..nclasses). */
    uint32_t *fg;
    size_t *fg_start;        /* nclasses + 2 entries */
    int nclasses;
    size_t bytes;            /* memory held, for the cache budget */
} td_case;

/* Loads case i of m onto the training grid:
 *   - CT from a DICOM folder (dcm_series_volume, primary series) or NIfTI
 *     (canonical orientation), non-finite values set to -1024;
 *   - label map (NIfTI, U8) in canonical orientation; when its grid differs
 *     from the CT's it is resampled (nearest) onto it, which is logged, and
 *     a map that does not overlap the CT at all is rejected;
 *   - labels v1 -> v2 by name when the case is v1, then v2 -> class index;
 *   - both resampled to opts->spacing (trilinear, fill -1024 HU; nearest,
 *     fill 0);
 *   - findings mapped organ name -> v2 id -> class index; others dropped
 *     and counted.
 * *out is filled (zeroed first); release with td_case_clear.  Returns 0,
 * or a CTG_E* code with a reason in why (the caller skips the case). */
int td_case_load(const td_manifest *m, int i, const td_opts *opts, td_case *out, char *why,
                 size_t n);
void td_case_clear(td_case *c); /* NULL or zeroed: no-op */

/* ---- cache ------------------------------------------------------------------ */

typedef struct td_cache td_cache;

typedef struct td_cache_stats {
    long loads;       /* td_case_load calls made (failures included) */
    long hits;        /* gets answered from memory */
    long evictions;
    long failed;      /* cases known bad (not retried) */
    size_t bytes;     /* held now */
    int held;         /* cases held now */
} td_cache_stats;

/* A cache of loaded cases of m (which, with opts and opts->classes, must
 * outlive it) holding at most budget bytes of cases that are not in use;
 * least recently used cases go first.  Returns 0, CTG_EINVAL, CTG_ENOMEM. */
int td_cache_open(const td_manifest *m, const td_opts *opts, size_t budget, td_cache **out);
void td_cache_close(td_cache *c); /* NULL: no-op; no case may be in use */
/* Case i, loaded on first use and pinned: it stays valid and in memory
 * until td_cache_put.  A case that failed to load fails again at once with
 * the same reason, without another attempt.  Returns 0 or the load error. */
int td_cache_get(td_cache *c, int i, const td_case **out, char *why, size_t n);
/* Unpins a case from td_cache_get; it may be evicted from now on. */
void td_cache_put(td_cache *c, const td_case *cs);
void td_cache_stats_get(const td_cache *c, td_cache_stats *st);

/* ---- random numbers and patches --------------------------------------------- */

/* xoshiro256** seeded through splitmix64.  Copy it to save and restore the
 * exact state (checkpoint resume). */
typedef struct td_rng {
    uint64_t s[4];
} td_rng;

/* The same (seed, stream) always gives the same sequence. */
void td_rng_seed(td_rng *r, uint64_t seed, uint64_t stream);
uint64_t td_rng_next(td_rng *r);
double td_rng_unif(td_rng *r);   /* [0, 1) */
double td_rng_gauss(td_rng *r);  /* N(0, 1) */
int td_rng_int(td_rng *r, int n); /* 0..n-1; n > 0 */

/* Fills a pd x ph x pw patch (along k, j, i; i fastest, like a volume) with
 * raw HU into img and class indices into lab from a random crop of c.
 * With probability opts->fg_fraction (when the case has labelled voxels)
 * the crop is placed around a voxel of a class drawn uniformly from the
 * classes present, so that small organs are seen as often as large ones.
 * Outside the volume the patch is -1024 HU and label 0.  With
 * opts->augment: zoom by a factor from [1-scale, 1+scale] about the crop
 * centre (trilinear for HU, nearest for labels), intensity factor and
 * offset, and Gaussian noise, all on voxels inside the volume.  There are
 * no flips: laterality (kidney_left/right) must survive augmentation.
 * Draws only from rng.  Returns 0 or CTG_EINVAL (bad sizes). */
int td_sample_patch(const td_case *c, const td_opts *opts, td_rng *rng, float *img,
                    uint8_t *lab, int pd, int ph, int pw);
/* The same, also centring a share opts->lesion_fraction of the patches on
 * a located finding (a random one, when the case has any), and reporting
 * in win (NULL: not wanted) the source voxels the patch covers: i from
 * win[0] to win[1], j win[2]..win[3], k win[4]..win[5] (inclusive, on the
 * training grid, possibly beyond it).  td_sample_patch is this with
 * lesion_fraction 0 and no win. */
int td_sample_patch_win(const td_case *c, const td_opts *opts, td_rng *rng, float *img,
                        uint8_t *lab, int pd, int ph, int pw, double win[6]);
/* 1 when the located finding f lies (in part) inside win; 1 as well for a
 * finding that is not located, which may be anywhere in its organ. */
int td_finding_in_window(const td_finding *f, const double win[6]);

#endif
