/*
 * cunet.h - the CT-GLIP network of core/model.h on a GPU (prefix cu_),
 * built from the ops of cuops.h.  The host mdl_model stays the owner of the
 * architecture, the parameter layout and the model file; a cu_model is its
 * copy on one device:
 *   - fp32 master parameters, and for training their gradients and the two
 *     AdamW moments, each one device allocation with the host layout
 *     (mdl_tensor.off), so upload and download are single copies;
 *   - every convolution's weights prepared once per update in the
 *     activation type and cuDNN's layout (cu_conv_prepare_geom).
 * Activations are channels-last in the model's cu_dtype (bf16 for speed,
 * fp32 for the reference path).  A cu_acts holds every buffer and every
 * convolution plan of one batch shape in one device allocation made at
 * creation; forward, loss, backward and the optimizer step allocate
 * nothing.  (CUDA graphs for inference are not used yet: they need a
 * capture API in cuops.h and a GPU to show they pay off.)
 *
 * What crosses to the host per training step is small: the input patch and
 * labels go up; the organ embeddings and counts ([n][K+1][E], [n][K+1]) come
 * down so that the contrastive losses of core/glip.h run on the host as on
 * the CPU path; their gradient goes back up.  Semantics follow model.h
 * function by function (mdl_forward ~ cu_forward and so on); the parity
 * tests compare them.
 *
 * Threading: a cu_model and its acts belong to the thread that owns their
 * cu_ctx.
 */
#ifndef CTGLIP_CUNET_H
#define CTGLIP_CUNET_H

#include <stddef.h>
#include <stdint.h>

#include "core/model.h"
#include "cuda/cuops.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cu_model cu_model;

/* A device copy of m on context c (which must outlive it), activations in
 * dt; train: also gradients and AdamW moments (zero; the moments are
 * uploaded from m->adam_m / adam_v when m has them).  m must outlive the
 * cu_model; its params are uploaded now.  0, CTG_ENOMEM or a CTG_E* code
 * of the device (why: the reason, may be NULL). */
int cu_model_new(cu_ctx *c, mdl_model *m, cu_dtype dt, int train, cu_model **out, char *why,
                 size_t n);
void cu_model_free(cu_model *g); /* NULL: no-op */
cu_ctx *cu_model_ctx(const cu_model *g);
cu_dtype cu_model_dtype(const cu_model *g);
/* Text of the last error a cu_* call of this file returned for g: the
 * failing op with cu_ctx_error's text, or the reason of a check made here
 * (a shape, or device memory too small for cu_infer); "" when none. */
const char *cu_model_error(const cu_model *g);
/* Host -> device: m->params (after the host changed them, e.g. a resumed
 * checkpoint), and the moments when training. */
int cu_model_upload(cu_model *g);
/* Device -> host: m->params; all: also m->grads, m->adam_m, m->adam_v
 * (mdl_train_alloc first).  Clears m->identity. */
int cu_model_download(cu_model *g, int all);
/* Gradients = 0 (device). */
int cu_model_zero_grad(cu_model *g);
/* Device gradient array (fp32 [n_params]) for an all-reduce across GPUs;
 * NULL without training. */
float *cu_model_grads(cu_model *g);
/* Clips the gradient norm to clip (0: no clipping; *gnorm, may be NULL,
 * gets the norm before clipping) and takes one AdamW step t, then
 * re-prepares the convolution weights. */
int cu_model_step(cu_model *g, long t, const op_adamw_cfg *cfg, double clip, double *gnorm);

typedef struct cu_acts {
    int n, d, h, w;
    size_t s;         /* d*h*w */
    int k1;           /* K+1 */
    /* Host mirrors, filled by cu_forward when it pools. */
    float *embed;     /* [n][K+1][E], L2-normalised organ embeddings */
    int64_t *count;   /* [n][K+1] voxels of each class in the pooled label map */
    /* Host, zeroed by cu_forward: the caller's place for the contrastive
     * gradient handed to cu_backward. */
    float *dembed;    /* [n][K+1][E] */
    struct cu__acts *p;
} cu_acts;

/* Activations and plans of shape (n, d, h, w) (sides multiples of
 * 2^depth).  0, CTG_EINVAL (shape), CTG_ENOMEM or a device error. */
int cu_acts_new(cu_model *g, int n, int d, int h, int w, cu_acts **out);
void cu_acts_free(cu_acts *a); /* NULL: no-op */
/* Device bytes of the activation block (workspace excluded). */
size_t cu_acts_bytes(const cu_acts *a);

/* mdl_forward: hu host [n][1][d][h][w] Hounsfield units; labels host [n][s]
 * (model class indices) or NULL (argmax).  Fills embed and count (host),
 * zeroes dembed and the device's dlogits. */
int cu_forward(cu_model *g, cu_acts *a, const float *hu, const uint8_t *labels);
/* mdl_seg_loss against host labels [n][s]: CE + soft Dice over organs,
 * ADDING weight * gradient to the device's dlogits; ce, dice (host, may be
 * NULL) get the values (this waits for the GPU). */
int cu_seg_loss(cu_model *g, cu_acts *a, const uint8_t *labels, float weight, float *ce,
                float *dice);
/* mdl_backward: with_dlogits: backpropagate the device's dlogits (from
 * cu_seg_loss); dembed host [n][K+1][E] or NULL (usually a->dembed); ADDS
 * the parameter gradients into the device gradients. */
int cu_backward(cu_model *g, cu_acts *a, int with_dlogits, const float *dembed);

/* The last forward's logits and features, host, in the CPU layouts
 * (logits [n][K+1][s], feat [n][C_0][s], fp32), and its label map [n][s]:
 * for the parity tests.  Any may be NULL. */
int cu_acts_fetch(cu_acts *a, float *logits, float *feat, uint8_t *seg);

/* mdl_text_forward / mdl_text_backward on the device's parameters (the
 * projection trains on the GPU with the rest); arrays are host. */
int cu_text_forward(cu_model *g, float *out, float *norm, const float *in, int rows);
int cu_text_backward(cu_model *g, const float *dout, const float *out, const float *norm,
                     const float *in, int rows);

/* mdl_infer on the device: the same windows, averaging, argmax, pooling and
 * outputs (labels a new CTG_U8 volume of v2 ids; embed [K+1][E] and count
 * [K+1], either NULL) for hu (CTG_F32, host, at the model's spacing).  a:
 * n = 1 and the patch shape, or NULL (made and freed here).  0 or a
 * CTG_E* code. */
int cu_infer(cu_model *g, cu_acts *a, const ctg_vol *hu, float overlap, ctg_vol **labels,
             float *embed, int64_t *count);

/* Start-up self-test of a device copy: one window of a synthetic body
 * (air, fat, soft tissue, contrast, bone; the same bits every time) through
 * the CPU network (mdl_forward) and through g, labels from the argmax.
 * Passes when the labels agree on at least 99.9 % of the voxels in fp32
 * (98 % in bf16) and the largest logit difference is within 1e-3 (fp32) or
 * 5e-2 (bf16) of the CPU logits' range.  *agree and *maxdiff (either may be
 * NULL) get the measured values.  0 (passed), CTG_EIO (failed: why says
 * what differed), or the device's error.  Costs one window on each side. */
int cu_selftest(cu_model *g, double *agree, double *maxdiff, char *why, size_t n);
/* Test hook: negates the segmentation head's weights in the device copy
 * only (the host model is untouched), which is what a wrong kernel or
 * library looks like to cu_selftest.  Refused (CTG_EINVAL) on a real
 * device: only an emulated context may be broken on purpose. */
int cu_model_test_corrupt(cu_model *g);

#ifdef __cplusplus
}
#endif
#endif
