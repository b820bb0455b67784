/*
 * train.h - the training loop of `ctglip-train` (prefix trn_): stage 1
 * segmentation on the pseudo-masks, stage 2 segmentation plus the CT-GLIP
 * contrastive losses (core/glip.h), or the vanilla CLIP baseline; AdamW
 * with warm-up and cosine decay; a CSV log; checkpoints with exact resume.
 *
 * Determinism: every random draw of step t comes from a generator seeded
 * with (seed, t), so a run is a pure function of its options, and resuming
 * from a checkpoint of step N replays steps N+1.. bit for bit.
 *
 * Devices: the CPU (core/model.h) or one GPU (cuda/cunet.h; the
 * contrastive losses stay on the host); several GPUs or CPU shares train
 * data-parallel, one process per rank (`--gpus 0,1`, `--ranks N`: the
 * command line forks one child per rank and waits for them).
 *
 * Threading: one training run owns the calling thread (and the OpenMP
 * threads of the ops, or its GPU context); no global state.
 */
#ifndef CTGLIP_TRAIN_H
#define CTGLIP_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#define TRN_CKPT_MAGIC "CTGTRNCK"
#define TRN_CKPT_VERSION 1
#define TRN_MAX_ORGANS 117
#define TRN_MAX_GPUS 16 /* ranks of a data-parallel run */

/* Contrastive parts of stage 2 (segmentation is on whenever w_seg > 0). */
enum { TRN_L_OT = 1, TRN_L_AT = 2, TRN_L_CLIP = 4 };

typedef struct trn_opts {
    const char *data;     /* manifest (required) */
    const char *out;      /* output folder (required) */
    const char *resume;   /* checkpoint to resume from, or NULL */
    const char *init;     /* finetune: model file to start from, or NULL */
    const char *vocab;    /* CTGVOCAB file (models/glove100.vocab) */
    long steps;           /* total steps, stage 1 included */
    long stage1_steps;    /* segmentation-only steps first */
    int batch, patch;
    double spacing;       /* mm, isotropic training grid */
    int width, depth, embed;
    int text_proj;        /* 1: trainable projection of the text side */
    int pool;             /* MDL_POOL_MEAN or MDL_POOL_MEANMAX (new models) */
    int at_balance;       /* AT: abnormal organs repeated up to this many times (1) */
    float lr, min_lr, wd, clip_grad;
    long warmup;
    uint64_t seed;
    long ckpt_every;      /* 0: only at the end */
    int organs[TRN_MAX_ORGANS]; /* v2 ids */
    int norgans;
    int losses;           /* TRN_L_* */
    int dict;             /* dictionary size (0: none) */
    float w_ot, w_at, w_seg, w_clip, tau;
    int min_voxels;       /* an organ counts as present from this many voxels */
    int threads;
    size_t cache_bytes;
    int log_every;        /* terminal line every N steps */
    long stop_at;         /* stop after this step with a checkpoint, as if
                           * interrupted (0: run to the end); for tests */
    double deadline;      /* wall clock (epoch s): past it, checkpoint and stop
                           * (trn_run then returns TRN_STOPPED); 0: none */
    const volatile int *stop; /* non-zero (e.g. set by a SIGTERM handler): the
                           * same as the deadline passing; NULL: none */
    int quiet;
    /* Device: TRN_CPU or TRN_CUDA (cuda/cunet.h on GPU `gpu`; with the
     * environment's CTGLIP_CUDA_EMULATE=1, a test hook, the host emulation
     * instead).  bf16: activations in bf16 on the GPU (parameters,
     * gradients and moments stay fp32; the checkpoint is the same). */
    int device;
    int gpu;
    int bf16;
    /* Data parallel (cuda/cucomm.h): this process is rank `rank` of
     * `world` (1: alone), meeting the others in comm_dir.  Each rank runs
     * batch/world of every step's batch (the same samples a single
     * process would draw), the gradients are averaged before the step, so
     * every rank holds the same parameters; rank 0 writes the log, the
     * checkpoints and the model. */
    int rank, world;
    const char *comm_dir;
} trn_opts;

enum { TRN_CPU = 0, TRN_CUDA = 1 };

/* trn_run's answer when it stopped at the deadline with a checkpoint to
 * resume from (no model file written). */
#define TRN_STOPPED 1

/* Defaults: 1000 steps (200 of stage 1), batch 2, patch 64, spacing 3 mm,
 * width 16, depth 3, embed 256 with text projection, lr 3e-4 to 3e-6,
 * wd 1e-2, clip 1.0, warm-up 50, seed 1, checkpoint every 100, the default
 * organ list, OT+AT, dictionary 512, weights 0.5/0.5/1.0 (clip 1.0), tau
 * 0.07, min voxels 8, cache 2 GiB, a line every 10 steps. */
void trn_opts_default(trn_opts *o);

/* The default organ list (v2 ids of the structures the phantoms paint
 * reliably and the findings refer to); returns the count. */
int trn_default_organs(int *ids, int cap);

/* Runs a training as o says.  Writes DIR/train.csv, DIR/ckpt.bin and
 * DIR/model.ctglip.  Returns 0, TRN_STOPPED (deadline reached; resume
 * from DIR/ckpt.bin) or a CTG_E* code (logged). */
int trn_run(const trn_opts *o);

/* `ctglip-train pretrain ...` and `ctglip-train finetune --model M ...`
 * (argv[0] is the subcommand).  Return the exit status: 0, 1 failure,
 * 2 usage. */
int trn_pretrain_main(int argc, char **argv);
int trn_finetune_main(int argc, char **argv);

#endif
