/*
 * model.h - the CT-GLIP network on the CPU: a residual 3-D U-Net with a
 * segmentation head, organ pooling of the highest-resolution decoder
 * features and a 2-layer MLP into the space shared with the (frozen) text
 * encoder, plus an optional trainable linear projection of the text side.
 * Forward and backward are explicit (llm.c style, no autograd graph) and
 * built from the ops of ops.h; the model file format and sliding-window
 * inference live here too (model.c, model_io.c).
 *
 * Memory, llm.c style: all parameters are ONE float allocation (params) with
 * a table of named tensors pointing into it by offset; gradients and the two
 * AdamW moment arrays are one allocation each, with the same layout, made
 * only for training (mdl_train_alloc).  Activations of one batch/patch shape
 * are one allocation too (mdl_acts), with every convolution plan of that
 * shape made once when the acts are created.
 *
 * Network (C_l = width * mult^l, capped at max_width; level l has the patch
 * size divided by 2^l, so each patch side must be a multiple of 2^depth):
 *   encoder level 0: residual block 1 -> C_0, stride 1
 *   encoder level l = 1..depth: residual block C_{l-1} -> C_l, stride 2
 *     (the block's first conv and its 1x1 skip conv do the downsampling)
 *   decoder level l = depth-1..0: k2s2 transposed conv C_{l+1} -> C_l,
 *     concat [up, encoder skip], residual block 2*C_l -> C_l
 *   head: 1x1 conv C_0 -> K+1 logits (class 0 = background)
 *   organ pooling: mean (and, with pool MEANMAX, the per-channel maximum)
 *     of the level-0 decoder output (C_0 channels) inside each class of a
 *     label map (training: ground truth / pseudo-masks; inference: the
 *     predicted argmax), then Linear P -> hidden (768) with P = C_0 or
 *     2*C_0 (mdl_pool_dim), ReLU, Linear hidden -> E, L2 normalisation.
 *   residual block: conv3x3 - inorm - lrelu - conv3x3 - inorm, plus
 *     conv1x1 - inorm of the input (every block here changes channels or
 *     stride), then lrelu.  Convolutions followed by a norm carry no bias.
 * The model normalises intensities itself (HU clipped to [hu_lo, hu_hi] and
 * scaled to [-1, 1]), so callers always pass Hounsfield units.
 *
 * Class indices inside the model are 0..K (0 = background, j = the organ
 * with TotalSegmentator v2 id class_ids[j-1]); label maps passed to
 * mdl_forward use these indices (values > K are ignored by the pooling and,
 * as 255, by the loss).
 *
 * Threading: a model is read-only during mdl_forward and mdl_infer, so
 * several threads may share one, each with its own mdl_acts (which own an
 * op_ctx and its plans, ops.h).  mdl_backward, the optimizer and
 * mdl_load/mdl_save need the model to themselves.  Work inside a call runs
 * on the calling thread's OpenMP threads (op_set_threads); set the thread
 * count before creating acts.
 */
#ifndef CTGLIP_MODEL_H
#define CTGLIP_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "core/vol.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MDL_MAGIC "CTGLIPMD" /* 8 bytes, the model file's first */
#define MDL_VERSION 3 /* written; 1 and 2 are still read (as mean pooling) */
#define MDL_MAX_DEPTH 6
#define MDL_MAX_CLASSES 117 /* organs (v2 classes); K+1 outputs fit a byte */
#define MDL_TEXT_ID_MAX 1024 /* bytes of the text encoder identity, NUL included */
#define MDL_IGNORE 255       /* label value the segmentation loss skips */
#define MDL_MAX_META 256     /* key/value entries of a model's metadata */
#define MDL_META_KEY 64      /* bytes of a metadata key, NUL included */
#define MDL_META_VAL 256     /* bytes of a metadata value, NUL included */

typedef struct mdl_config {
    int in_ch;       /* input channels: 1 (CT) */
    int n_classes;   /* K organs; the head has K+1 outputs */
    int width;       /* C_0, channels of the full-resolution level */
    int depth;       /* number of stride-2 levels (0..MDL_MAX_DEPTH) */
    int mult;        /* channel multiplier per level (2) */
    int max_width;   /* cap on C_l (0: none) */
    int embed_dim;   /* E, the shared space */
    int mlp_hidden;  /* hidden units of the organ MLP (768) */
    int text_dim;    /* E_text of the projection E_text -> E; 0: none */
    int patch[3];    /* training patch / inference window, z y x */
    float hu_lo, hu_hi; /* intensity window (-1000, 1000) */
    float slope;     /* LeakyReLU slope (0.01) */
    int pool;        /* organ descriptor: MDL_POOL_MEAN or MDL_POOL_MEANMAX */
} mdl_config;

/* The organ descriptor the MLP reads.  MEAN: the mean of the C_0 decoder
 * channels over the organ (the CT-GLIP paper's pooling).  MEANMAX: that
 * mean followed by the per-channel maximum over the organ, 2*C_0 values;
 * the maximum keeps a lesion of a few voxels visible in a large organ,
 * where the mean dilutes it.  Models of format versions 1 and 2 are MEAN. */
enum { MDL_POOL_MEAN = 0, MDL_POOL_MEANMAX = 1 };
/* Values per organ descriptor: C_0 or 2*C_0. */
int mdl_pool_dim(const mdl_config *c);

/* width 16, depth 4, mult 2, max_width 320, E 256, hidden 768, text_dim 0,
 * patch 64^3, HU [-1000, 1000], slope 0.01, in_ch 1, pool MEAN;
 * n_classes is set to `k`. */
mdl_config mdl_config_default(int k);
/* 0 or CTG_EINVAL with the reason in why (NULL allowed). */
int mdl_config_check(const mdl_config *c, char *why, size_t n);
/* Channels of level l. */
int mdl_level_width(const mdl_config *c, int l);

/* One named tensor of the parameter block. */
enum { MDL_T_CONV = 1, MDL_T_DECONV, MDL_T_NORM_G, MDL_T_NORM_B, MDL_T_BIAS, MDL_T_LINEAR };
typedef struct mdl_tensor {
    char name[32];  /* e.g. "enc2.conv1.w", "dec0.norms.g", "mlp.fc2.b" */
    int kind;       /* MDL_T_* */
    size_t off;     /* offset in floats into params (and grads, m, v) */
    size_t count;   /* elements */
    int fan_in;     /* inputs per output */
    float init_std; /* std of the normal init; 0: constant (0, gammas 1) */
} mdl_tensor;

struct mdl__net;

/* One metadata entry: what the model was trained and calibrated with
 * (e.g. "threshold.hepatic_cyst" = "0.42", "trained.data" = a manifest
 * path).  Keys are printable ASCII without '=' or spaces. */
typedef struct mdl_meta {
    char key[MDL_META_KEY];
    char val[MDL_META_VAL];
} mdl_meta;

/* The model.  Fields are read-only for callers except the contents of
 * params (the optimizer's), grads, adam_m and adam_v. */
typedef struct mdl_model {
    mdl_config cfg;
    int class_ids[MDL_MAX_CLASSES]; /* v2 id of model class j+1 */
    char text_id[MDL_TEXT_ID_MAX];  /* text encoder identity (opaque) */
    char identity[65];              /* SHA-256 hex of the model file; "" until known */
    float spacing[3];               /* training voxel spacing, mm along i, j, k; 0: unknown */
    int n_meta;
    mdl_meta *meta;                 /* n_meta entries (NULL when none), sorted by key */
    size_t n_params;
    float *params;           /* one allocation of n_params floats */
    float *grads;            /* NULL until mdl_train_alloc */
    float *adam_m, *adam_v;  /* NULL until mdl_train_alloc; zeroed there */
    int n_tensors;
    mdl_tensor *tensors;
    struct mdl__net *net;    /* layer table (model.c) */
} mdl_model;

/* A new model for cfg covering the K = cfg->n_classes organs class_ids
 * (distinct v2 ids 1..CTG_NUM_ORGANS), parameters initialised from seed
 * (He-normal convolutions, zero biases, unit norms; the same seed gives the
 * same bits).  text_id may be NULL (empty).  The caller owns *out (free
 * with mdl_free).  Returns 0, CTG_EINVAL (why says which field) or
 * CTG_ENOMEM. */
int mdl_new(const mdl_config *cfg, const int *class_ids, const char *text_id, uint64_t seed,
            mdl_model **out, char *why, size_t n);
void mdl_free(mdl_model *m); /* NULL: no-op */
/* Re-initialises the parameters from seed as mdl_new does. */
void mdl_init_params(mdl_model *m, uint64_t seed);
/* Allocates (once) grads, adam_m and adam_v, all zero.  0 or CTG_ENOMEM. */
int mdl_train_alloc(mdl_model *m);
/* grads = 0 (a no-op before mdl_train_alloc). */
void mdl_zero_grad(mdl_model *m);
/* The tensor called name, or NULL. */
const mdl_tensor *mdl_find_tensor(const mdl_model *m, const char *name);
/* Sets the text encoder identity string (truncated to MDL_TEXT_ID_MAX-1). */
void mdl_set_text_id(mdl_model *m, const char *text_id);

/* Sets the training spacing (mm along i, j, k; each > 0, or all 0 for
 * unknown) and clears the identity. */
void mdl_set_spacing(mdl_model *m, const float sp[3]);
/* The value of metadata key, or NULL. */
const char *mdl_meta_get(const mdl_model *m, const char *key);
/* Sets (val non-NULL) or removes (val NULL) metadata key and clears the
 * identity.  0, CTG_EINVAL (bad key, too long, or the table is full) or
 * CTG_ENOMEM. */
int mdl_meta_set(mdl_model *m, const char *key, const char *val);

/* ---- activations ---------------------------------------------------------- */

struct mdl__acts;

/* Working memory of one batch shape: n samples of d*h*w voxels (each side a
 * multiple of 2^depth).  The outputs below stay valid until the next
 * forward.  Read-only for callers, except dlogits and dembed, which are
 * zeroed by mdl_forward and are the caller's place to build the loss
 * gradients handed to mdl_backward. */
typedef struct mdl_acts {
    int n, d, h, w;
    size_t s;          /* d*h*w */
    int k1;            /* K+1 */
    float *logits;     /* [n][K+1][s] */
    float *prob;       /* [n][K+1][s], softmax; filled by mdl_seg_loss */
    float *feat;       /* [n][C_0][s], the pooled features (decoder level 0) */
    uint8_t *seg;      /* [n][s], the label map the pooling used */
    int64_t *count;    /* [n][K+1], voxels of each class in seg (0: absent) */
    float *embed;      /* [n][K+1][E], L2-normalised organ embeddings */
    float *dlogits;    /* [n][K+1][s] */
    float *dembed;     /* [n][K+1][E] */
    struct mdl__acts *p;
} mdl_acts;

/* Allocates the activations and makes the convolution plans of shape
 * (n, d, h, w) for model m (which must outlive them).  The caller owns
 * *out (mdl_acts_free).  0, CTG_EINVAL (shape) or CTG_ENOMEM / a conv
 * plan error. */
int mdl_acts_new(const mdl_model *m, int n, int d, int h, int w, mdl_acts **out);
void mdl_acts_free(mdl_acts *a); /* NULL: no-op */
/* Bytes held by the activation block (plans and oneDNN scratch excluded). */
size_t mdl_acts_bytes(const mdl_acts *a);

/* ---- forward, losses, backward -------------------------------------------- */

/* Runs the network on hu [n][in_ch][d][h][w] (Hounsfield units).  Pools the
 * organ features inside labels [n][d][h][w] (model class indices) or, when
 * labels is NULL, inside the argmax of the logits.  Fills logits, feat,
 * seg, count and embed of a, and zeroes dlogits and dembed.  Rows of embed
 * with count 0 are the MLP of a zero feature: callers must skip them.
 * Returns 0 or a CTG_E* code from the ops. */
int mdl_forward(const mdl_model *m, mdl_acts *a, const float *hu, const uint8_t *labels);

/* Segmentation loss of the last forward against labels [n][s] (model class
 * indices, MDL_IGNORE skipped): softmax cross-entropy (mean over voxels)
 * plus soft Dice over the organ classes 1..K present in each sample.
 * Writes a->prob, returns both parts through ce and dice (either may be
 * NULL) and ADDS weight * d(ce + dice)/dlogits to a->dlogits. */
int mdl_seg_loss(const mdl_model *m, mdl_acts *a, const uint8_t *labels, float weight, float *ce,
                 float *dice);

/* Backpropagates dlogits [n][K+1][s] and dembed [n][K+1][E] (either may be
 * NULL; usually a->dlogits, a->dembed) through the last forward of a,
 * ADDING the parameter gradients into m->grads (mdl_train_alloc first;
 * CTG_ESTATE otherwise).  Rows of dembed whose organ is absent (count 0)
 * are ignored.  The input image gets no gradient. */
int mdl_backward(mdl_model *m, mdl_acts *a, const float *dlogits, const float *dembed);

/* The organ MLP on pooled features: out [rows][E] = l2norm(fc2(relu(fc1(
 * pooled [rows][C_0])))).  0 or CTG_ENOMEM. */
int mdl_embed_pooled(const mdl_model *m, const float *pooled, int rows, float *out);

/* Text side.  out [rows][E] = l2norm(proj(in)) with in [rows][text_dim]
 * when the model has a projection, else l2norm(in) with in [rows][E].
 * norm [rows] keeps the norms for the backward.  0 or CTG_ENOMEM. */
int mdl_text_forward(const mdl_model *m, float *out, float *norm, const float *in, int rows);
/* Adds the projection's gradients (from dout [rows][E] on the forward's
 * out) into m->grads; a no-op without projection.  0, CTG_ESTATE (no
 * grads) or CTG_ENOMEM. */
int mdl_text_backward(mdl_model *m, const float *dout, const float *out, const float *norm,
                      const float *in, int rows);

/* ---- inference --------------------------------------------------------------- */

/* Sliding-window inference on a whole CT volume hu (CTG_F32, Hounsfield
 * units, already resampled by the caller to the model's spacing).  Windows
 * of the patch size step by patch * (1 - overlap) (overlap in [0, 1)), the
 * last one flush with the far edge; a volume smaller than the patch is
 * padded with hu_lo.  Logits and features are averaged where windows
 * overlap; the label map is the argmax of the averaged logits and each
 * organ's embedding is the MLP of its averaged features pooled over the
 * whole volume.  a must have n = 1 and the patch shape (NULL: made and
 * freed here).  Outputs: *labels, a new CTG_U8 volume on hu's grid holding
 * TotalSegmentator v2 ids (0 background); embed [K+1][E] and count [K+1]
 * indexed by model class (either may be NULL); logits [K+1][nx*ny*nz] the
 * averaged logits (NULL: not wanted).  Memory: (K+2+C_0) floats per voxel.
 * 0 or a CTG_E* code. */
int mdl_infer(const mdl_model *m, mdl_acts *a, const ctg_vol *hu, float overlap,
              ctg_vol **labels, float *embed, int64_t *count, float *logits);

/* Window starts along one axis of length len for windows of size win
 * stepping by step (>= 1): the last one is flush with the far edge (0 when
 * the axis is shorter than a window).  Writes at most cap starts into st
 * and returns their count.  mdl_infer's windows, shared with the GPU's. */
int mdl_window_starts(int len, int win, int step, int *st, int cap);

/* ---- model file (model_io.c) ------------------------------------------------ */

/* File layout, little-endian, version 2:
 *   "CTGLIPMD"  u32 version
 *   u32 ncfg (15), then the config: in_ch, n_classes, width, depth, mult,
 *       max_width, embed_dim, mlp_hidden, text_dim, patch[3] as i32,
 *       hu_lo, hu_hi, slope as f32
 *   u32 K, then K x { u32 v2 id, u32 len, name bytes }
 *   u32 len, text encoder identity bytes
 *   (version 2 only) f32 spacing[3], u32 n_meta, then n_meta x
 *       { u32 len, key bytes, u32 len, value bytes }, keys sorted
 *   u32 n_tensors, then n_tensors x { u32 len, name bytes, u64 count }
 *   u64 n_params, n_params f32
 *   32 bytes SHA-256 of everything before it: the model's identity. */

/* Writes m to path durably (temp file, fsync, rename, fsync of the
 * directory) and sets m->identity.  0 or a CTG_E* code with the reason in
 * why. */
int mdl_save(mdl_model *m, const char *path, char *why, size_t n);
/* Reads a model file (version 1 or 2; version 1 has no spacing and no
 * metadata) in one go.  Refuses (CTG_EFORMAT, reason in why) a
 * bad magic or version (checked first), a truncated or oversized file, a
 * checksum mismatch, or a header that does not describe a valid network.
 * The caller owns *out. */
int mdl_load(const char *path, mdl_model **out, char *why, size_t n);
/* SHA-256 hex of the model as a file: m->identity when set (mdl_load and
 * mdl_save set it; mdl_new, mdl_init_params and mdl_set_text_id clear it),
 * else computed now and cached.  Code that changes params in place (the
 * optimizer) must clear m->identity[0] before asking again.  Never NULL;
 * "" only when out of memory. */
const char *mdl_identity(mdl_model *m);

/* Internal to model.c / model_io.c: a model with its layout and
 * uninitialised parameters. */
int mdl__model_alloc(const mdl_config *cfg, const int *class_ids, const char *text_id,
                     mdl_model **out, char *why, size_t n);

#ifdef __cplusplus
}
#endif
#endif
