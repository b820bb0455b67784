/*
 * analysis.h - one CT study through the model (prefix an_): what a job of
 * ctglipd and `ctglip infer` both do between "a CT volume in HU" and "the
 * findings of each organ".
 *
 *   1. resample the volume (canonical orientation, core/vol.h) to the
 *      model's training spacing (trilinear);
 *   2. sliding-window inference (mdl_infer, or cu_infer on a GPU): organ
 *      label map and one embedding per organ, pooled in the predicted mask;
 *   3. organ labels in the air outside the body (HU < -500 connected to
 *      the volume's sides) are cleared; the label map goes back onto the
 *      source grid (nearest neighbour), where each organ's volume (mL) and
 *      mean HU are measured;
 *   4. the zero-shot organ check: an organ whose embedding is not nearest
 *      to its own name's prompt is flagged low confidence;
 *   5. every configured finding that applies to the organ scored against
 *      its positive and negative prompts (core/zeroshot.h), with the
 *      decision threshold of the findings list or the model's calibration.
 *
 * An engine holds the model, the text encoder and the prompt embeddings of
 * the findings list.  The list can be reloaded (SIGHUP) while jobs run: a
 * result keeps the list it was scored with until it is freed.
 *
 * Threading: an engine is shared by all workers.  an_run may be called
 * from several threads at once, each with its own an_ctx (a GPU an_ctx
 * belongs to the thread that owns its cu_ctx); an_reload_findings
 * may run concurrently with them (the switch is under a mutex and results
 * hold a reference to the old list).
 */
#ifndef CTGLIP_ANALYSIS_H
#define CTGLIP_ANALYSIS_H

#include <stddef.h>
#include <stdint.h>

#include "core/model.h"
#include "core/organs.h"
#include "core/vol.h"
#include "core/zeroshot.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct an_engine an_engine;
typedef struct an_ctx an_ctx;
typedef struct an_findings an_findings; /* a findings list with its prompt embeddings */

typedef struct an_opts {
    const char *model;     /* model file */
    const char *vocab;     /* text encoder vocabulary (GloVe) */
    const char *findings;  /* findings list (etc/findings.conf) */
    /* Prompt phrasings: ZS_TEXT_*, or -1 for the set the model's thresholds
     * were calibrated with (metadata "calibration.text"), else all. */
    int text;
    float overlap;         /* sliding-window overlap, [0, 1) */
    double min_ml;         /* organs smaller than this (mL) are not reported; 0: 1 mL */
} an_opts;

/* Opens the model, the text encoder and the findings list, and embeds the
 * prompts.  Refuses a model trained with another text encoder.  *out is
 * new (an_engine_close).  0, or CTG_E* with the reason in why. */
int an_engine_open(const an_opts *o, an_engine **out, char *why, size_t n);
void an_engine_close(an_engine *e); /* NULL: no-op */
/* Reads the findings list again (path NULL: the same file; text as in
 * an_opts) and swaps it in for later runs.  On error the current list
 * stays.  0 or CTG_E* with the reason. */
int an_reload_findings(an_engine *e, const char *path, int text, char *why, size_t n);
const mdl_model *an_model(const an_engine *e);
/* The model's identity (SHA-256 hex). */
const char *an_model_identity(const an_engine *e);
/* Sets the sliding-window overlap of later runs. */
void an_set_overlap(an_engine *e, float overlap);

/* Per-thread working memory (the model's activations).  0 or CTG_E*. */
int an_ctx_new(an_engine *e, an_ctx **out);
void an_ctx_free(an_ctx *c); /* NULL: no-op */

/* The same on a GPU: the model's parameters uploaded to the device of gc
 * (a cuda/cuops.h context that the calling thread owns; it must outlive
 * the an_ctx) and the activations of one window there, in bf16 (bf16 = 1)
 * or fp32.  an_run with it runs the sliding windows through cu_infer
 * (cuda/cunet.h); resampling, measures and scoring stay on the host.  A
 * new model file means a new engine and so a new an_ctx: its parameters
 * are uploaded then.  Every new device copy passes cu_selftest (one window
 * compared with the CPU) first; a failed self-test gives CTG_EIO with a why
 * starting "self-test:".  0 or CTG_E* with the reason (the device's text)
 * in why. */
struct cu_ctx;
int an_ctx_new_gpu(an_engine *e, struct cu_ctx *gc, int bf16, an_ctx **out, char *why,
                   size_t n);
/* The device of c: its cu_ctx, or NULL for a CPU context. */
struct cu_ctx *an_ctx_device(const an_ctx *c);
/* 1 after an_run on c failed in the device: the GPU context may be
 * unusable (a sticky CUDA error), so the owner frees c, resets or
 * re-creates its cu_ctx and makes a new an_ctx before the next run. */
int an_ctx_device_failed(const an_ctx *c);

/* One finding scored on one organ. */
typedef struct an_finding {
    const zs_finding *f;   /* in the result's list */
    int index;             /* in the list */
    float prob;            /* 0..1 */
    float threshold;
    int threshold_source;  /* ZS_THR_* */
    int present;
    float cos_pos, cos_neg;
} an_finding;

/* One organ the model found. */
typedef struct an_organ {
    int cls;               /* model class 1..K */
    int id;                /* TotalSegmentator v2 id (the label value) */
    const ctg_organ *organ;
    int64_t voxels;        /* on the source grid */
    double volume_ml;
    double mean_hu;
    /* Zero-shot organ check. */
    int top1_id;           /* v2 id of the organ prompt nearest to the embedding */
    float cos_own, cos_top1;
    int low_confidence;    /* top1_id != id */
    int nfindings;
    an_finding *findings;
} an_organ;

typedef struct an_result {
    ctg_vol *labels;       /* CTG_U8, v2 ids, on the source volume's grid */
    int norgans;
    an_organ *organs;      /* in model class order */
    const zs_list *list;   /* the findings list the scores refer to */
    char identity[65];     /* the model's */
    double spacing[3];     /* the grid the model ran on, mm */
    int grid[3];           /* its size */
    /* Seconds spent: resampling, model, label map back and measures,
     * scoring. */
    double t_resample, t_model, t_measure, t_score;
    /* Voxels of the model grid predicted as an organ but lying in the air
     * outside the body (HU < -500 connected to the sides), cleared. */
    int64_t cleared_outside;
    an_findings *held;     /* reference to the list (internal) */
} an_result;

/* Runs the model on hu (CTG_F32 Hounsfield units, canonical orientation)
 * and fills *r (an_result_free).  c may be NULL (made and freed here).
 * 0, or CTG_E* with the reason in why. */
int an_run(an_engine *e, an_ctx *c, const ctg_vol *hu, an_result *r, char *why, size_t n);
void an_result_free(an_result *r);

/* How many findings of r are present, over all organs. */
int an_result_positives(const an_result *r);

#ifdef __cplusplus
}
#endif
#endif
