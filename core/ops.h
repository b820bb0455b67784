/*
 * ops.h - tensors and operations of the CT-GLIP model on the CPU: every op
 * has an explicit forward and backward function (llm.c style, no autograd
 * graph), plus the AdamW optimizer and its learning-rate schedule.
 *
 * Conventions, the same for every op here:
 *   - fp32 throughout.  Activations are NCDHW: batch, channels, depth (z),
 *     height (y), width (x), x fastest, so one channel of one sample is laid
 *     out exactly like a ctg_vol (see vol.h).  Where an op does not care
 *     about the spatial shape it takes the voxel count s = D*H*W.
 *   - Forward functions overwrite their outputs.  Backward functions ADD
 *     into every gradient they are given (+=), so a tensor that feeds two
 *     ops collects both contributions; the caller zeroes gradients once per
 *     step.  A NULL gradient pointer means "not needed" and is skipped.
 *   - Names end in _cpu for the fast version the model uses and _ref for the
 *     plain-loop reference that the tests use as the oracle.  A CUDA version
 *     has the same signature with the suffix _cuda (cuda/).  Ops whose fast
 *     version is already the obvious loop (LeakyReLU, add, concat,
 *     upsampling, L2 norm, softmax) have no separate _ref, nor do the
 *     backwards of the losses; finite differences check all of them.
 *   - Functions that can fail return 0 or a negative CTG_E* code (core.h).
 *     Loss functions return the loss through a float pointer.
 *
 * Threading: the ops themselves keep no global state.  Work inside one call
 * is spread over OpenMP threads (the runtime oneDNN uses, so the two share
 * one pool); op_set_threads() sets how many for calls made from the calling
 * thread.  An op_ctx and the plans made from it belong to one thread at a
 * time; different threads use different contexts.  Results are the same
 * run to run for a given thread count (no atomics, fixed reduction order).
 */
#ifndef CTGLIP_OPS_H
#define CTGLIP_OPS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- threads and the convolution context --------------------------------- */

/* Number of threads that ops started from the calling thread use (OpenMP's
 * per-thread setting, which oneDNN follows).  n <= 0 restores the default
 * (OMP_NUM_THREADS, else all cores).  Set it before creating conv plans:
 * oneDNN sizes its work split when a plan is made. */
void op_set_threads(int n);
int op_get_threads(void);

/* A oneDNN engine and stream plus a scratch arena that the convolutions of
 * one thread share (internal blocked copies of activations; it grows to the
 * largest layer and is kept).  Free with op_ctx_free (NULL: no-op). */
typedef struct op_ctx op_ctx;
int op_ctx_new(op_ctx **out);
void op_ctx_free(op_ctx *c);
/* Bytes the arena holds now (for memory reports). */
size_t op_ctx_scratch_bytes(const op_ctx *c);

/* ---- 3-D convolution and transposed convolution -------------------------- */

/* Shape of one convolution layer.  Supported: k=3 pad=1 and k=1 pad=0, each
 * with stride 1 or 2; and transposed (k=2, stride=2, pad=0), the decoder's
 * upsampling.  Output size: conv  o = (i + 2*pad - k) / stride + 1
 * (so a stride-2 layer gives ceil(i/2)); transposed o = 2*i.
 * Weights are [cout][cin][k][k][k] (x fastest) for both kinds; the
 * transposed conv computes
 *   out[n][o][2z+a][2y+b][2x+c] = bias[o] + sum_i in[n][i][z][y][x] * w[o][i][a][b][c]. */
typedef struct op_conv_geom {
    int n;          /* batch */
    int cin, cout;  /* channels */
    int d, h, w;    /* input spatial size (z, y, x) */
    int k;          /* kernel size: 1, 2 (transposed) or 3 */
    int stride;     /* 1 or 2 */
    int pad;        /* 1 for k=3, else 0 */
    int transposed; /* 1: transposed convolution (k=2, stride=2) */
} op_conv_geom;

/* Fills the geometry of an ordinary convolution (pad = k/2) or a k2s2
 * transposed one. */
op_conv_geom op_conv_geom_make(int n, int cin, int cout, int d, int h, int w, int k,
                               int stride);
op_conv_geom op_deconv_geom_make(int n, int cin, int cout, int d, int h, int w);
/* CTG_EINVAL for unsupported combinations or sizes. */
int op_conv_geom_check(const op_conv_geom *g);
/* Output spatial size; element counts of input, output, weights. */
void op_conv_out_size(const op_conv_geom *g, int *od, int *oh, int *ow);
size_t op_conv_in_count(const op_conv_geom *g);
size_t op_conv_out_count(const op_conv_geom *g);
size_t op_conv_weight_count(const op_conv_geom *g);
/* Multiply-adds times two of one forward pass (the backward-data and the
 * backward-weights pass each cost the same). */
double op_conv_flops(const op_conv_geom *g);

/* A plan: the oneDNN primitives and reorders of one layer shape, made once
 * and reused every step (oneDNN compiles kernels for each shape, which takes
 * milliseconds).  The plan keeps a pointer to ctx, which must outlive it.
 * Backward primitives are made on the first backward call, so an inference
 * plan never builds them.  (The transposed conv needs none: it runs as one
 * sgemm and a shuffle, see ops_conv.c.)  Free with op_conv_free (NULL:
 * no-op). */
typedef struct op_conv op_conv;
int op_conv_new(op_ctx *ctx, const op_conv_geom *g, op_conv **out);
void op_conv_free(op_conv *p);
const op_conv_geom *op_conv_geometry(const op_conv *p);
/* oneDNN's name for the implementation it chose, e.g. "jit:avx512_core"
 * (pass 0 forward, 1 backward data, 2 backward weights; "" before made;
 * "sgemm+shuffle" for the transposed conv). */
const char *op_conv_impl(const op_conv *p, int pass);

/* out = conv(in, w) + b; b may be NULL (no bias).  in and out are NCDHW in
 * the plan's shapes.  Returns 0 or a CTG_E* code. */
int op_conv3d_forward_cpu(op_conv *p, float *out, const float *in, const float *w,
                          const float *b);
/* Adds dL/din to din, dL/dw to dw and dL/db to db (any of them NULL:
 * skipped; the weights pass is skipped when dw and db are both NULL), given
 * dout = dL/dout and the forward's in and w.  Pass din NULL for the first
 * layer: the image needs no gradient, and oneDNN's backward-data for one
 * input channel is slow (~10x the forward's time). */
int op_conv3d_backward_cpu(op_conv *p, float *din, float *dw, float *db, const float *dout,
                           const float *in, const float *w);

/* Plain-loop references of the two above (any geometry the plan accepts). */
void op_conv3d_forward_ref(const op_conv_geom *g, float *out, const float *in, const float *w,
                           const float *b);
void op_conv3d_backward_ref(const op_conv_geom *g, float *din, float *dw, float *db,
                            const float *dout, const float *in, const float *w);

/* ---- element-wise and layout ops -------------------------------------------- */

/* Nearest-neighbour x2 upsampling of nc = N*C volumes of d*h*w voxels into
 * 2d*2h*2w; backward sums each 2x2x2 block of dout into its source voxel. */
void op_upsample2_forward_cpu(float *out, const float *in, size_t nc, int d, int h, int w);
void op_upsample2_backward_cpu(float *din, const float *dout, size_t nc, int d, int h, int w);

/* LeakyReLU out = x > 0 ? x : slope*x (slope 0.01 in the U-Net; slope 0 is
 * ReLU).  out may equal in.  The backward reads x, which may be the
 * forward's input or its output (same sign when slope >= 0). */
void op_lrelu_forward_cpu(float *out, const float *in, size_t n, float slope);
void op_lrelu_backward_cpu(float *din, const float *dout, const float *x, size_t n, float slope);
void op_relu_forward_cpu(float *out, const float *in, size_t n);
void op_relu_backward_cpu(float *din, const float *dout, const float *x, size_t n);

/* Residual add: out = a + b (out may equal a or b); backward adds dout to
 * da and db. */
void op_add_forward_cpu(float *out, const float *a, const float *b, size_t n);
void op_add_backward_cpu(float *da, float *db, const float *dout, size_t n);
/* dst += src. */
void op_acc_cpu(float *dst, const float *src, size_t n);

/* Channel concat of a [n][ca][s] and b [n][cb][s] into out [n][ca+cb][s];
 * the backward splits dout back into da and db. */
void op_concat_forward_cpu(float *out, const float *a, const float *b, int n, int ca, int cb,
                           size_t s);
void op_concat_backward_cpu(float *da, float *db, const float *dout, int n, int ca, int cb,
                            size_t s);

/* ---- instance norm ------------------------------------------------------------ */

/* Per sample and channel over its s voxels: xhat = (x - mean) / sqrt(var +
 * eps) with the biased variance, out = gamma[c]*xhat + beta[c].  mean and
 * rstd ([n*c] each) are saved for the backward.  eps is OP_INORM_EPS.  out
 * may not alias in (the backward needs in).  gamma and beta may be NULL
 * (1 and 0). */
#define OP_INORM_EPS 1e-5f
void op_inorm_forward_cpu(float *out, float *mean, float *rstd, const float *in,
                          const float *gamma, const float *beta, int n, int c, size_t s);
void op_inorm_backward_cpu(float *din, float *dgamma, float *dbeta, const float *dout,
                           const float *in, const float *mean, const float *rstd,
                           const float *gamma, int n, int c, size_t s);
void op_inorm_forward_ref(float *out, float *mean, float *rstd, const float *in,
                          const float *gamma, const float *beta, int n, int c, size_t s);
void op_inorm_backward_ref(float *din, float *dgamma, float *dbeta, const float *dout,
                           const float *in, const float *mean, const float *rstd,
                           const float *gamma, int n, int c, size_t s);

/* ---- dense layers on rows -------------------------------------------------------- */

/* Linear: out[r][o] = sum_i in[r][i] * w[o][i] + b[o] (b may be NULL);
 * in [rows][cin], w [cout][cin], out [rows][cout]. */
void op_linear_forward_cpu(float *out, const float *in, const float *w, const float *b, int rows,
                           int cin, int cout);
void op_linear_backward_cpu(float *din, float *dw, float *db, const float *dout, const float *in,
                            const float *w, int rows, int cin, int cout);
void op_linear_forward_ref(float *out, const float *in, const float *w, const float *b, int rows,
                           int cin, int cout);
void op_linear_backward_ref(float *din, float *dw, float *db, const float *dout, const float *in,
                            const float *w, int rows, int cin, int cout);

/* L2 normalisation of each row: out = x / max(|x|, OP_L2_EPS); norm [rows]
 * keeps |x| for the backward, which reads the forward's out. */
#define OP_L2_EPS 1e-12f
void op_l2norm_forward_cpu(float *out, float *norm, const float *in, int rows, int dim);
void op_l2norm_backward_cpu(float *din, const float *dout, const float *out, const float *norm,
                            int rows, int dim);

/* ---- segmentation losses -------------------------------------------------------- */

/* Logits and probabilities are [n][k][s] (k classes as channels); labels
 * are [n][s] class indices.  A voxel whose label equals `ignore` (pass -1
 * for none) or is >= k counts in neither loss nor gradient. */

/* Softmax over the classes of each voxel. */
void op_softmax_forward_cpu(float *prob, const float *logits, int n, int k, size_t s);
/* dlogits += prob * (dprob - sum_j prob_j * dprob_j), per voxel. */
void op_softmax_backward_cpu(float *dlogits, const float *dprob, const float *prob, int n, int k,
                             size_t s);

/* Softmax cross-entropy per voxel, weighted mean (PyTorch's definition):
 *   loss = sum_v w[y_v] * -log softmax(logits_v)[y_v] / sum_v w[y_v]
 * over counted voxels v; class_w NULL means all 1.  Also writes prob (the
 * softmax) for the backward and for Dice.  loss is 0 when nothing counts.
 * The backward adds dloss * w[y_v] / sum_v w[y_v] * (prob_v - onehot(y_v))
 * to dlogits. */
int op_softmax_ce_forward_cpu(float *loss, float *prob, const float *logits, const uint8_t *label,
                              const float *class_w, int ignore, int n, int k, size_t s);
void op_softmax_ce_backward_cpu(float *dlogits, float dloss, const float *prob,
                                const uint8_t *label, const float *class_w, int ignore, int n,
                                int k, size_t s);
int op_softmax_ce_forward_ref(float *loss, float *prob, const float *logits, const uint8_t *label,
                              const float *class_w, int ignore, int n, int k, size_t s);

/* Soft Dice on probabilities, per sample b and class c >= first_class
 * (pass 1 to leave out background class 0), over counted voxels v:
 *   I = sum_v p[b][c][v] * g, P = sum_v p[b][c][v], G = sum_v g,
 *   with g = (label_v == c);  dice = (2*I + smooth) / (P + G + smooth);
 *   loss = 1 - mean of dice over the (b, c) pairs with G > 0 ("present"),
 * 0 when no class is present.  smooth is OP_DICE_SMOOTH.  Classes absent
 * from a sample do not enter the mean (CE still penalises predicting
 * them).  The backward adds dloss times the loss's gradient with respect
 * to prob to dprob; chain it through op_softmax_backward_cpu to reach the
 * logits. */
#define OP_DICE_SMOOTH 1e-5f
int op_dice_forward_cpu(float *loss, const float *prob, const uint8_t *label, int ignore,
                        int first_class, int n, int k, size_t s);
int op_dice_backward_cpu(float *dprob, float dloss, const float *prob, const uint8_t *label,
                         int ignore, int first_class, int n, int k, size_t s);
int op_dice_forward_ref(float *loss, const float *prob, const uint8_t *label, int ignore,
                        int first_class, int n, int k, size_t s);

/* Per-voxel argmax over the k classes of [n][k][s] into label [n][s]
 * (only the first 256 classes fit a byte; ties go to the lower class). */
void op_argmax_cpu(uint8_t *label, const float *x, int n, int k, size_t s);

/* ---- organ pooling --------------------------------------------------------------- */

/* Masked average pooling of one sample: feat [c][s], label [s].  Row j of
 * out [k][c] is the mean of feat over the voxels whose label is j
 * (0 <= j < k; other label values are skipped), count[j] their number.
 * A label with no voxel gives a zero row and count 0, the caller's flag
 * that the organ is absent (so does every row from 256 on: labels are
 * bytes).  The backward spreads dout[j] / count[j] back over label j's
 * voxels. */
void op_mpool_forward_cpu(float *out, int64_t *count, const float *feat, const uint8_t *label,
                          int k, int c, size_t s);
void op_mpool_backward_cpu(float *dfeat, const float *dout, const int64_t *count,
                           const uint8_t *label, int k, int c, size_t s);
void op_mpool_forward_ref(float *out, int64_t *count, const float *feat, const uint8_t *label,
                          int k, int c, size_t s);

/* Masked max pooling of one sample, the lesion-sensitive half of the
 * mean+max organ descriptor: row j of out (row stride ld >= c) is the
 * per-channel maximum of feat [c][s] over the voxels labelled j, and
 * arg [k][c] the voxel it came from (the first on ties); a label with no
 * voxel gives zeros and arg -1.  The backward adds dout (row stride ld)
 * to the winning voxel of each (label, channel). */
void op_xpool_forward_cpu(float *out, int ld, int64_t *arg, const float *feat,
                          const uint8_t *label, int k, int c, size_t s);
void op_xpool_backward_cpu(float *dfeat, const float *dout, int ld, const int64_t *arg, int k,
                           int c, size_t s);
void op_xpool_forward_ref(float *out, int ld, int64_t *arg, const float *feat,
                          const uint8_t *label, int k, int c, size_t s);

/* ---- contrastive (InfoNCE) losses ------------------------------------------------ */

/* Row-wise InfoNCE, the primitive of every contrastive loss here.
 * a [r][e] are the query rows, b [m][e] the candidate columns (positives
 * plus any extra negatives appended as more rows of b), both usually
 * L2-normalised.  logits = a b^T / tau.  Row i's positive is column pos[i]
 * (pos[i] < 0: the row is skipped; pos NULL: pos[i] = i).  mask [r][m]
 * (NULL: none) marks with 1 the columns row i must ignore, such as false
 * negatives identical to its positive; a masked column leaves the softmax
 * entirely.  The positive itself must not be masked (CTG_EINVAL).
 *   loss = mean over rows with pos >= 0 of -log softmax(masked logits_i)[pos[i]]
 * prob [r][m] receives the masked softmax (0 where masked, 0 in skipped
 * rows) for the backward, which adds dloss times the loss's gradient
 * with respect to a and b to da and db. */
int op_infonce_forward_cpu(float *loss, float *prob, const float *a, const float *b,
                           const int *pos, const uint8_t *mask, int r, int m, int e, float tau);
void op_infonce_backward_cpu(float *da, float *db, float dloss, const float *prob, const float *a,
                             const float *b, const int *pos, int r, int m, int e, float tau);
int op_infonce_forward_ref(float *loss, float *prob, const float *a, const float *b,
                           const int *pos, const uint8_t *mask, int r, int m, int e, float tau);

/* Symmetric CLIP-style loss over n pairs (img[i], txt[i]) with m - n >= 0
 * extra negative texts txt[n..m-1]:
 *   loss = 0.5 * (image->text InfoNCE over all m texts
 *                 + text->image InfoNCE of the n paired texts over n images).
 * mask [n][m] (NULL: none) marks text j as a false negative of image i; the
 * text->image direction uses its transpose (text j ignores image i when
 * mask[i][j], j < n), which is right for the symmetric relation "same
 * text".  prob_i2t [n][m] and prob_t2i [n][n] are kept for the backward.
 * Returns 0, CTG_EINVAL or CTG_ENOMEM. */
int op_clip_forward_cpu(float *loss, float *prob_i2t, float *prob_t2i, const float *img,
                        const float *txt, const uint8_t *mask, int n, int m, int e, float tau);
void op_clip_backward_cpu(float *dimg, float *dtxt, float dloss, const float *prob_i2t,
                          const float *prob_t2i, const float *img, const float *txt, int n, int m,
                          int e, float tau);

/* ---- optimizer --------------------------------------------------------------------- */

/* AdamW (Loshchilov & Hutter; PyTorch's update) with a linear warm-up to lr
 * over warmup_steps, then cosine decay to min_lr at total_steps (held after).
 * Steps count from 1:
 *   t <= warmup:  lr_t = lr * t / warmup
 *   t >  warmup:  q = min(1, (t - warmup) / (total - warmup)),
 *                 lr_t = min_lr + 0.5 * (lr - min_lr) * (1 + cos(pi * q)) */
typedef struct op_adamw_cfg {
    float lr;           /* peak learning rate */
    float min_lr;       /* learning rate at the end of the decay */
    float beta1, beta2; /* 0.9, 0.999 */
    float eps;          /* 1e-8 */
    float weight_decay; /* decoupled, scaled by lr_t: p -= lr_t * wd * p */
    long warmup_steps;
    long total_steps;
} op_adamw_cfg;

/* The defaults above with lr 1e-4, min_lr 0, wd 1e-2, no warm-up and one
 * step in all; callers set what they need. */
op_adamw_cfg op_adamw_defaults(void);
/* Learning rate at step t (t >= 1). */
double op_lr_at(const op_adamw_cfg *cfg, long t);
/* One AdamW step t (t >= 1) over n parameters in one flat array; m and v
 * (zero before the first step) are updated in place:
 *   p -= lr_t * wd * p
 *   m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2
 *   p -= lr_t * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) */
void op_adamw_step_cpu(float *params, const float *grads, float *m, float *v, size_t n, long t,
                       const op_adamw_cfg *cfg);
/* Euclidean norm of a flat gradient (accumulated in double), for clipping. */
double op_grad_norm_cpu(const float *g, size_t n);
/* g *= scale. */
void op_scale_cpu(float *g, size_t n, float scale);

#ifdef __cplusplus
}
#endif
#endif
