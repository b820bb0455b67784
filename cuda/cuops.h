/*
 * cuops.h - the GPU versions of the ops of core/ops.h, and the device
 * context they run in.  One header for builds with and without CUDA: with
 * nvcc (HAVE_CUDA) the cuda/ .cu files implement it; otherwise cuda/nogpu.c answers
 * every call with CTG_ENOTFOUND ("built without CUDA").
 *
 * cuDNN, cuBLAS(Lt) and NCCL are not link-time dependencies: cu_ctx_new
 * loads them with dlopen (culib.cu) and fails with the reason when they are
 * missing, so the binaries start on machines without them.
 *
 * Two kinds of context:
 *   - a real device (device >= 0): kernels on the GPU, cuDNN, cuBLAS;
 *   - CU_EMULATE: the same kernel bodies run on the host, one element at a
 *     time, convolutions and GEMMs through the CPU ops of core/ops.h, memory
 *     from malloc.  It needs no GPU and no driver.  It exists for the tests:
 *     CI has no GPU, and this is how the index arithmetic of every kernel,
 *     the layout conversions, bf16 rounding and the network code of
 *     cunet.c are checked there against the CPU reference.  It is slow and
 *     is never chosen by the daemon or the trainer.
 *
 * Tensors on the device:
 *   - activations are channels-last, [n][s][c] (s = d*h*w voxels, z slowest,
 *     x fastest; "NDHWC"), stored in the context's activation type cu_dtype
 *     (bf16 for speed, fp32 for the reference path); every kernel computes
 *     in fp32 and rounds once when it stores;
 *   - parameters, their gradients and the AdamW moments ("master weights"),
 *     instance-norm statistics, pooled organ features, MLP rows, losses are
 *     fp32, in the layouts of core/ops.h;
 *   - labels are uint8 [n][s]; voxel counts int64.
 * Every pointer argument of an op is device memory (cu_malloc), except
 * where a comment says host.  Semantics otherwise are those of the named CPU
 * op: forward overwrites its output, backward ADDS into every non-NULL
 * gradient.  Ops return 0 or a negative CTG_E* code (launch or library
 * error; the text is in cu_ctx_error).  Ops are queued on the context's
 * stream and return before the GPU has finished; cu_download and cu_sync
 * wait.
 *
 * Threading: a cu_ctx and the plans made from it belong to one thread at a
 * time (one stream, one cuDNN and one cuBLAS handle, one workspace); every
 * entry point makes the context's device current first.
 */
#ifndef CTGLIP_CUOPS_H
#define CTGLIP_CUOPS_H

#include <stddef.h>
#include <stdint.h>

#include "core/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- context and memory ------------------------------------------------------ */

#define CU_EMULATE (-1) /* device number of the host emulation */

typedef enum cu_dtype { CU_F32 = 0, CU_BF16 = 1 } cu_dtype;
/* Bytes per element (4 or 2). */
size_t cu_dtype_size(cu_dtype dt);
/* "fp32" / "bf16"; cu_dtype_parse returns 0 and *dt, or CTG_EINVAL. */
const char *cu_dtype_name(cu_dtype dt);
int cu_dtype_parse(const char *s, cu_dtype *dt);

typedef struct cu_ctx cu_ctx;

/* Opens device `device` (0-based) or the host emulation (CU_EMULATE): a
 * stream, cuDNN and cuBLAS handles and an empty workspace.  Returns 0 and
 * *out (free with cu_ctx_free), CTG_ENOTFOUND (no CUDA device, built
 * without CUDA, or a library could not be loaded), CTG_EINVAL (no such
 * device), CTG_ENOMEM or CTG_EIO; the reason goes to why (n bytes, may be
 * NULL). */
int cu_ctx_new(int device, cu_ctx **out, char *why, size_t n);
/* Waits for queued work and releases everything; NULL: no-op. */
void cu_ctx_free(cu_ctx *c);
/* 1 for a CU_EMULATE context. */
int cu_ctx_emulated(const cu_ctx *c);
/* The device number (CU_EMULATE for the emulation). */
int cu_ctx_device(const cu_ctx *c);
/* Text of the last error a call on c returned ("" when none). */
const char *cu_ctx_error(const cu_ctx *c);
/* Waits until all queued work of c is done; reports a failed kernel. */
int cu_sync(cu_ctx *c);
/* After a sticky device error (an illegal address, say) the context is
 * unusable; this releases and re-creates everything of c on the same device
 * (the owner must re-create plans and memory).  0 or a CTG_E* code. */
int cu_ctx_reset(cu_ctx *c);

/* The shared workspace of library calls: at least bytes, grown (never
 * shrunk) here, so callers reserve at plan time and no step allocates.
 * Bytes held now: cu_ctx_workspace_bytes. */
int cu_ctx_reserve(cu_ctx *c, size_t bytes);
size_t cu_ctx_workspace_bytes(const cu_ctx *c);

/* Device memory.  cu_malloc: 0 and *p, or CTG_ENOMEM.  cu_free(c, NULL) is
 * a no-op.  Upload and download copy bytes between host and device and
 * return when the copy is done (both wait for the work queued before).
 * cu_copy copies device to device (queued). */
int cu_malloc(cu_ctx *c, void **p, size_t bytes);
void cu_free(cu_ctx *c, void *p);
int cu_upload(cu_ctx *c, void *dst_dev, const void *src_host, size_t bytes);
int cu_download(cu_ctx *c, void *dst_host, const void *src_dev, size_t bytes);
int cu_copy(cu_ctx *c, void *dst_dev, const void *src_dev, size_t bytes);
/* Sets bytes of device memory to zero (queued). */
int cu_zero(cu_ctx *c, void *p, size_t bytes);
/* Device memory in use and in total, bytes (the emulation: 0, 0). */
int cu_mem_info(cu_ctx *c, size_t *used, size_t *total);

/* ---- layout and type conversion ------------------------------------------------- */

/* src fp32 [n][ch][s] (NCDHW, device) -> dst dt [n][s][ch]. */
int cu_pack(cu_ctx *c, cu_dtype dt, void *dst, const float *src, int n, int ch, size_t s);
/* src dt [n][s][ch] -> dst fp32 [n][ch][s]. */
int cu_unpack(cu_ctx *c, cu_dtype dt, float *dst, const void *src, int n, int ch, size_t s);
/* fp32 <-> dt, element for element (no layout change). */
int cu_cast_to(cu_ctx *c, cu_dtype dt, void *dst, const float *src, size_t cnt);
int cu_cast_from(cu_ctx *c, cu_dtype dt, float *dst, const void *src, size_t cnt);
/* The model's intensity normalisation (model.c): x = (clamp(hu, lo, hi) -
 * (lo+hi)/2) * 2/(hi-lo), hu fp32, x dt; one channel, so any layout. */
int cu_normalise(cu_ctx *c, cu_dtype dt, void *x, const float *hu, size_t cnt, float lo,
                 float hi);

/* ---- 3-D convolution (cuDNN) ------------------------------------------------------ */

/* A plan: the cuDNN descriptors of one layer shape (any geometry
 * op_conv_geom_check accepts, the k2s2 transposed one included) in
 * channels-last dt with fp32 accumulation (tensor cores for bf16), and the
 * algorithms chosen for it for the forward, backward-data and
 * backward-weights passes.  Algorithm choice is cached per (geometry,
 * dtype, device) for the whole process, so a second plan of the same shape
 * costs no search.  Making a plan reserves the context workspace its passes
 * need (cu_ctx_reserve) and the plan's own dw buffer; the passes allocate
 * nothing.  The plan keeps a pointer to c, which must outlive it.  Free with
 * cu_conv_free (NULL: no-op). */
typedef struct cu_conv cu_conv;
int cu_conv_new(cu_ctx *c, const op_conv_geom *g, cu_dtype dt, cu_conv **out);
void cu_conv_free(cu_conv *p);
const op_conv_geom *cu_conv_geometry(const cu_conv *p);
/* cuDNN's algorithm of pass 0 (forward), 1 (backward data) or 2 (backward
 * weights), as text such as "fwd IMPLICIT_PRECOMP_GEMM"; "cpu" in the
 * emulation. */
const char *cu_conv_impl(const cu_conv *p, int pass);

/* Weights as the plan uses them: dt, in cuDNN's channels-last filter layout.
 * cu_conv_wcount gives the element count (= op_conv_weight_count);
 * cu_conv_prepare converts the fp32 master weights w (device, core/ops.h
 * layout [cout][cin][k][k][k]) into wq (device, wcount elements of dt).
 * Call it after every change of w (the optimizer step). */
size_t cu_conv_wcount(const cu_conv *p);
int cu_conv_prepare(cu_conv *p, void *wq, const float *w);
/* The same without a plan: the prepared layout depends only on the kind,
 * channels and kernel of g (not on batch or size), so a model prepares its
 * weights once per update for all the shapes it runs. */
int cu_conv_prepare_geom(cu_ctx *c, const op_conv_geom *g, cu_dtype dt, void *wq,
                         const float *w);

/* out = conv(in, wq) + b, b fp32 [cout] or NULL; in and out channels-last
 * dt in the plan's shapes. */
int cu_conv_forward(cu_conv *p, void *out, const void *in, const void *wq, const float *b);
/* Adds dL/din to din (dt, channels-last; NULL: skipped), dL/dw to the fp32
 * master gradient dw (core/ops.h layout) and dL/db to db (fp32; either
 * NULL: skipped), given dout (dt) and the forward's in and wq. */
int cu_conv_backward(cu_conv *p, void *din, float *dw, float *db, const void *dout,
                     const void *in, const void *wq);

/* ---- dense layers (cuBLAS, fp32) ---------------------------------------------------- */

/* op_linear_forward_cpu / op_linear_backward_cpu on fp32 rows. */
int cu_linear_forward(cu_ctx *c, float *out, const float *in, const float *w, const float *b,
                      int rows, int cin, int cout);
int cu_linear_backward(cu_ctx *c, float *din, float *dw, float *db, const float *dout,
                       const float *in, const float *w, int rows, int cin, int cout);
/* C[m][n] = alpha * A[m][k] B[n][k]^T + beta * C (row-major fp32); the GEMM
 * of the contrastive losses. */
int cu_gemm_nt(cu_ctx *c, float *C, const float *A, const float *B, int m, int n, int k,
               float alpha, float beta);

/* ---- element-wise (activations in dt) ----------------------------------------------- */

int cu_lrelu_forward(cu_ctx *c, cu_dtype dt, void *out, const void *in, size_t n, float slope);
int cu_lrelu_backward(cu_ctx *c, cu_dtype dt, void *din, const void *dout, const void *x,
                      size_t n, float slope);
int cu_add_forward(cu_ctx *c, cu_dtype dt, void *out, const void *a, const void *b, size_t n);
/* dst += src. */
int cu_acc(cu_ctx *c, cu_dtype dt, void *dst, const void *src, size_t n);
/* Channel concat, channels-last: a [n][s][ca], b [n][s][cb] -> out
 * [n][s][ca+cb]; the backward adds the two parts of dout to da and db. */
int cu_concat_forward(cu_ctx *c, cu_dtype dt, void *out, const void *a, const void *b, int n,
                      int ca, int cb, size_t s);
int cu_concat_backward(cu_ctx *c, cu_dtype dt, void *da, void *db, const void *dout, int n,
                       int ca, int cb, size_t s);

/* fp32 rows (the MLP). */
int cu_relu_forward(cu_ctx *c, float *out, const float *in, size_t n);
int cu_relu_backward(cu_ctx *c, float *din, const float *dout, const float *x, size_t n);

/* ---- instance norm (channels-last dt; statistics, gamma, beta fp32) -------------------- */

/* op_inorm_forward_cpu on [n][s][c]; then, when act, out = lrelu(out,
 * slope) (the residual blocks' norm + activation, fused).  mean and rstd
 * [n*c].  out may not alias in. */
int cu_inorm_forward(cu_ctx *c, cu_dtype dt, void *out, float *mean, float *rstd, const void *in,
                     const float *gamma, const float *beta, int n, int ch, size_t s, int act,
                     float slope);
/* op_inorm_backward_cpu on [n][s][c] (no activation: chain
 * cu_lrelu_backward first).  dgamma, dbeta fp32 (NULL: skipped). */
int cu_inorm_backward(cu_ctx *c, cu_dtype dt, void *din, float *dgamma, float *dbeta,
                      const void *dout, const void *in, const float *mean, const float *rstd,
                      const float *gamma, int n, int ch, size_t s);
/* The end of a residual block, fused: out = lrelu(inorm(h2; g2, b2) +
 * inorm(hs; gs, bs)), keeping both norms' statistics.  Equal to two
 * cu_inorm_forward, a cu_add_forward and a cu_lrelu_forward. */
int cu_inorm_add_lrelu_forward(cu_ctx *c, cu_dtype dt, void *out, float *m2, float *r2,
                               const void *h2, const float *g2, const float *b2, float *ms,
                               float *rs, const void *hs, const float *gs, const float *bs, int n,
                               int ch, size_t s, float slope);

/* ---- segmentation head and losses ------------------------------------------------------ */

/* Logits are dt [n][s][k] (channels-last), probabilities fp32 [n][s][k],
 * labels uint8 [n][s]; ignore and the counting rules are those of ops.h.
 * Scalars (loss) are single fp32 values in DEVICE memory, so a training
 * step never waits for the host; read them with cu_download. */
int cu_softmax_forward(cu_ctx *c, cu_dtype dt, float *prob, const void *logits, int n, int k,
                       size_t s);
/* dlogits (dt) += prob * (dprob - sum_j prob_j dprob_j). */
int cu_softmax_backward(cu_ctx *c, cu_dtype dt, void *dlogits, const float *dprob,
                        const float *prob, int n, int k, size_t s);
/* op_softmax_ce_forward_cpu without class weights; also writes prob. */
int cu_softmax_ce_forward(cu_ctx *c, cu_dtype dt, float *loss, float *prob, const void *logits,
                          const uint8_t *label, int ignore, int n, int k, size_t s);
/* dlogits (dt) += dloss * (prob - onehot) / counted, dloss a host scalar. */
int cu_softmax_ce_backward(cu_ctx *c, cu_dtype dt, void *dlogits, float dloss, const float *prob,
                           const uint8_t *label, int ignore, int n, int k, size_t s);
/* op_dice_forward_cpu / op_dice_backward_cpu on fp32 prob [n][s][k]. */
int cu_dice_forward(cu_ctx *c, float *loss, const float *prob, const uint8_t *label, int ignore,
                    int first_class, int n, int k, size_t s);
int cu_dice_backward(cu_ctx *c, float *dprob, float dloss, const float *prob,
                     const uint8_t *label, int ignore, int first_class, int n, int k, size_t s);
/* Per-voxel argmax of dt [n][s][k] (ties to the lower class). */
int cu_argmax(cu_ctx *c, cu_dtype dt, uint8_t *label, const void *x, int n, int k, size_t s);
/* The same over fp32 [n][s][k] (the averaged logits of sliding windows). */
int cu_argmax_f32(cu_ctx *c, uint8_t *label, const float *x, int n, int k, size_t s);

/* ---- organ pooling ------------------------------------------------------------------ */

/* op_mpool_forward_cpu over a batch: feat [n][s][ch] (dt), label [n][s];
 * out fp32 [n][k][ch], count int64 [n][k]. */
int cu_mpool_forward(cu_ctx *c, cu_dtype dt, float *out, int64_t *count, const void *feat,
                     const uint8_t *label, int n, int k, int ch, size_t s);
/* The same on an fp32 feature map (sliding-window averages). */
int cu_mpool_forward_f32(cu_ctx *c, float *out, int64_t *count, const float *feat,
                         const uint8_t *label, int n, int k, int ch, size_t s);
/* dfeat (dt, [n][s][ch]) += dout[b][label] / count[b][label]. */
int cu_mpool_backward(cu_ctx *c, cu_dtype dt, void *dfeat, const float *dout,
                      const int64_t *count, const uint8_t *label, int n, int k, int ch, size_t s);
/* op_xpool_forward_cpu over a batch: feat [n][s][ch] (dt), label [n][s];
 * out fp32 rows [n*k] of stride ld >= ch, arg int64 [n][k][ch] (voxel
 * index within its sample, -1: no voxel). */
int cu_xpool_forward(cu_ctx *c, cu_dtype dt, float *out, int ld, int64_t *arg, const void *feat,
                     const uint8_t *label, int n, int k, int ch, size_t s);
/* The same on an fp32 feature map (sliding-window averages). */
int cu_xpool_forward_f32(cu_ctx *c, float *out, int ld, int64_t *arg, const float *feat,
                         const uint8_t *label, int n, int k, int ch, size_t s);
/* dfeat (dt, [n][s][ch]) at each winner += dout (rows of stride ld). */
int cu_xpool_backward(cu_ctx *c, cu_dtype dt, void *dfeat, const float *dout, int ld,
                      const int64_t *arg, int n, int k, int ch, size_t s);
/* Zeroes rows r of x [rows][dim] whose count[r] is 0 (absent organs). */
int cu_zero_absent_rows(cu_ctx *c, float *x, const int64_t *count, int rows, int dim);

/* ---- rows: L2 normalisation, contrastive losses --------------------------------------- */

int cu_l2norm_forward(cu_ctx *c, float *out, float *norm, const float *in, int rows, int dim);
int cu_l2norm_backward(cu_ctx *c, float *din, const float *dout, const float *out,
                       const float *norm, int rows, int dim);
/* op_infonce_forward_cpu / backward with every array on the device (pos
 * int32 [r] or NULL, mask uint8 [r][m] or NULL); loss is device fp32;
 * dloss a host scalar. */
int cu_infonce_forward(cu_ctx *c, float *loss, float *prob, const float *a, const float *b,
                       const int *pos, const uint8_t *mask, int r, int m, int e, float tau);
int cu_infonce_backward(cu_ctx *c, float *da, float *db, float dloss, const float *prob,
                        const float *a, const float *b, const int *pos, int r, int m, int e,
                        float tau);

/* ---- optimizer ------------------------------------------------------------------------ */

/* op_adamw_step_cpu on device arrays. */
int cu_adamw_step(cu_ctx *c, float *params, const float *grads, float *m, float *v, size_t n,
                  long t, const op_adamw_cfg *cfg);
/* *out (device fp32) = sum of g^2 (fp32 partials, fp64 total); the host
 * takes the square root after a download. */
int cu_sumsq(cu_ctx *c, float *out, const float *g, size_t n);
int cu_scale(cu_ctx *c, float *g, size_t n, float scale);

/* ---- sliding-window inference ----------------------------------------------------------- */

/* Copies the window of vol (fp32 [nz][ny][nx], device) at (z0, y0, x0)
 * into win (fp32 [pd][ph][pw]); window voxels outside the volume get fill. */
int cu_window_load(cu_ctx *c, float *win, const float *vol, int nx, int ny, int nz, int x0,
                   int y0, int z0, int pw, int ph, int pd, float fill);
/* acc (fp32 [V][ch], V = nx*ny*nz) += the in-volume part of win (dt
 * [pd*ph*pw][ch]) placed at (z0, y0, x0); wsum (fp32 [V], NULL: skipped)
 * += 1 there. */
int cu_window_acc(cu_ctx *c, cu_dtype dt, float *acc, float *wsum, const void *win, int ch,
                  int nx, int ny, int nz, int x0, int y0, int z0, int pw, int ph, int pd);
/* acc [V][ch] /= wsum [V]. */
int cu_div_rows(cu_ctx *c, float *acc, const float *wsum, size_t V, int ch);

#ifdef __cplusplus
}
#endif
#endif
