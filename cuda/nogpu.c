/*
 * nogpu.c - cu.h and cuops.h for builds without nvcc: there is never a
 * device, cu_ctx_new fails with CTG_ENOTFOUND ("built without CUDA"), and
 * every other call answers CTG_ENOTFOUND (or the neutral value its return
 * type allows), so callers fall back to the CPU path and carry no #ifdef.
 * No context can exist here, so the calls that take one never run in
 * practice; they exist for the linker.  The dtype helpers work as usual.
 */
#include "cu.h"
#include "cuops.h"

#include "core/core.h"

#include <stdio.h>
#include <string.h>

#define NOGPU CTG_ENOTFOUND

int cu_device_count(void) { return 0; }

int cu_device_name(int i, char *buf, int n)
{
    (void)i;
    if (n > 0) buf[0] = 0;
    return -1;
}

int cu_built_with_cuda(void) { return 0; }

/* ---- context and memory ---------------------------------------------------------- */

size_t cu_dtype_size(cu_dtype dt) { return dt == CU_BF16 ? 2 : 4; }

const char *cu_dtype_name(cu_dtype dt) { return dt == CU_BF16 ? "bf16" : "fp32"; }

/* Type names parse as with CUDA, so a config naming one stays valid here. */
int cu_dtype_parse(const char *s, cu_dtype *dt)
{
    if (!s) return CTG_EINVAL;
    if (!strcmp(s, "fp32") || !strcmp(s, "f32") || !strcmp(s, "float32")) {
        *dt = CU_F32;
        return 0;
    }
    if (!strcmp(s, "bf16") || !strcmp(s, "bfloat16")) {
        *dt = CU_BF16;
        return 0;
    }
    return CTG_EINVAL;
}

int cu_ctx_new(int device, cu_ctx **out, char *why, size_t n)
{
    (void)device;
    *out = NULL;
    if (why && n) snprintf(why, n, "built without CUDA");
    return NOGPU;
}

void cu_ctx_free(cu_ctx *c) { (void)c; }
int cu_ctx_emulated(const cu_ctx *c) { (void)c; return 0; }
int cu_ctx_device(const cu_ctx *c) { (void)c; return CU_EMULATE; }
const char *cu_ctx_error(const cu_ctx *c) { (void)c; return "built without CUDA"; }
int cu_sync(cu_ctx *c) { (void)c; return NOGPU; }
int cu_ctx_reset(cu_ctx *c) { (void)c; return NOGPU; }
int cu_ctx_reserve(cu_ctx *c, size_t bytes) { (void)c; (void)bytes; return NOGPU; }
size_t cu_ctx_workspace_bytes(const cu_ctx *c) { (void)c; return 0; }

int cu_malloc(cu_ctx *c, void **p, size_t bytes)
{
    (void)c;
    (void)bytes;
    *p = NULL;
    return NOGPU;
}

void cu_free(cu_ctx *c, void *p) { (void)c; (void)p; }

int cu_upload(cu_ctx *c, void *dst_dev, const void *src_host, size_t bytes)
{
    (void)c, (void)dst_dev, (void)src_host, (void)bytes;
    return NOGPU;
}

int cu_download(cu_ctx *c, void *dst_host, const void *src_dev, size_t bytes)
{
    (void)c, (void)dst_host, (void)src_dev, (void)bytes;
    return NOGPU;
}

int cu_copy(cu_ctx *c, void *dst_dev, const void *src_dev, size_t bytes)
{
    (void)c, (void)dst_dev, (void)src_dev, (void)bytes;
    return NOGPU;
}

int cu_zero(cu_ctx *c, void *p, size_t bytes) { (void)c, (void)p, (void)bytes; return NOGPU; }

int cu_mem_info(cu_ctx *c, size_t *used, size_t *total)
{
    (void)c;
    *used = *total = 0;
    return NOGPU;
}

/* ---- layout and type conversion ------------------------------------------------------ */

int cu_pack(cu_ctx *c, cu_dtype dt, void *dst, const float *src, int n, int ch, size_t s)
{
    (void)c, (void)dt, (void)dst, (void)src, (void)n, (void)ch, (void)s;
    return NOGPU;
}

int cu_unpack(cu_ctx *c, cu_dtype dt, float *dst, const void *src, int n, int ch, size_t s)
{
    (void)c, (void)dt, (void)dst, (void)src, (void)n, (void)ch, (void)s;
    return NOGPU;
}

int cu_cast_to(cu_ctx *c, cu_dtype dt, void *dst, const float *src, size_t cnt)
{
    (void)c, (void)dt, (void)dst, (void)src, (void)cnt;
    return NOGPU;
}

int cu_cast_from(cu_ctx *c, cu_dtype dt, float *dst, const void *src, size_t cnt)
{
    (void)c, (void)dt, (void)dst, (void)src, (void)cnt;
    return NOGPU;
}

int cu_normalise(cu_ctx *c, cu_dtype dt, void *x, const float *hu, size_t cnt, float lo,
                 float hi)
{
    (void)c, (void)dt, (void)x, (void)hu, (void)cnt, (void)lo, (void)hi;
    return NOGPU;
}

/* ---- convolution --------------------------------------------------------------------- */

int cu_conv_new(cu_ctx *c, const op_conv_geom *g, cu_dtype dt, cu_conv **out)
{
    (void)c, (void)g, (void)dt;
    *out = NULL;
    return NOGPU;
}

void cu_conv_free(cu_conv *p) { (void)p; }
const op_conv_geom *cu_conv_geometry(const cu_conv *p) { (void)p; return NULL; }
const char *cu_conv_impl(const cu_conv *p, int pass) { (void)p, (void)pass; return ""; }
size_t cu_conv_wcount(const cu_conv *p) { (void)p; return 0; }
int cu_conv_prepare(cu_conv *p, void *wq, const float *w) { (void)p, (void)wq, (void)w; return NOGPU; }
int cu_conv_prepare_geom(cu_ctx *c, const op_conv_geom *g, cu_dtype dt, void *wq, const float *w)
{
    (void)c, (void)g, (void)dt, (void)wq, (void)w;
    return NOGPU;
}

int cu_conv_forward(cu_conv *p, void *out, const void *in, const void *wq, const float *b)
{
    (void)p, (void)out, (void)in, (void)wq, (void)b;
    return NOGPU;
}

int cu_conv_backward(cu_conv *p, void *din, float *dw, float *db, const void *dout,
                     const void *in, const void *wq)
{
    (void)p, (void)din, (void)dw, (void)db, (void)dout, (void)in, (void)wq;
    return NOGPU;
}

/* ---- dense layers ---------------------------------------------------------------------- */

int cu_linear_forward(cu_ctx *c, float *out, const float *in, const float *w, const float *b,
                      int rows, int cin, int cout)
{
    (void)c, (void)out, (void)in, (void)w, (void)b, (void)rows, (void)cin, (void)cout;
    return NOGPU;
}

int cu_linear_backward(cu_ctx *c, float *din, float *dw, float *db, const float *dout,
                       const float *in, const float *w, int rows, int cin, int cout)
{
    (void)c, (void)din, (void)dw, (void)db, (void)dout, (void)in, (void)w, (void)rows,
        (void)cin, (void)cout;
    return NOGPU;
}

int cu_gemm_nt(cu_ctx *c, float *C, const float *A, const float *B, int m, int n, int k,
               float alpha, float beta)
{
    (void)c, (void)C, (void)A, (void)B, (void)m, (void)n, (void)k, (void)alpha, (void)beta;
    return NOGPU;
}

/* ---- element-wise ------------------------------------------------------------------------ */

int cu_lrelu_forward(cu_ctx *c, cu_dtype dt, void *out, const void *in, size_t n, float slope)
{
    (void)c, (void)dt, (void)out, (void)in, (void)n, (void)slope;
    return NOGPU;
}

int cu_lrelu_backward(cu_ctx *c, cu_dtype dt, void *din, const void *dout, const void *x,
                      size_t n, float slope)
{
    (void)c, (void)dt, (void)din, (void)dout, (void)x, (void)n, (void)slope;
    return NOGPU;
}

int cu_add_forward(cu_ctx *c, cu_dtype dt, void *out, const void *a, const void *b, size_t n)
{
    (void)c, (void)dt, (void)out, (void)a, (void)b, (void)n;
    return NOGPU;
}

int cu_acc(cu_ctx *c, cu_dtype dt, void *dst, const void *src, size_t n)
{
    (void)c, (void)dt, (void)dst, (void)src, (void)n;
    return NOGPU;
}

int cu_concat_forward(cu_ctx *c, cu_dtype dt, void *out, const void *a, const void *b, int n,
                      int ca, int cb, size_t s)
{
    (void)c, (void)dt, (void)out, (void)a, (void)b, (void)n, (void)ca, (void)cb, (void)s;
    return NOGPU;
}

int cu_concat_backward(cu_ctx *c, cu_dtype dt, void *da, void *db, const void *dout, int n,
                       int ca, int cb, size_t s)
{
    (void)c, (void)dt, (void)da, (void)db, (void)dout, (void)n, (void)ca, (void)cb, (void)s;
    return NOGPU;
}

int cu_relu_forward(cu_ctx *c, float *out, const float *in, size_t n)
{
    (void)c, (void)out, (void)in, (void)n;
    return NOGPU;
}

int cu_relu_backward(cu_ctx *c, float *din, const float *dout, const float *x, size_t n)
{
    (void)c, (void)din, (void)dout, (void)x, (void)n;
    return NOGPU;
}

/* ---- instance norm ------------------------------------------------------------------------- */

int cu_inorm_forward(cu_ctx *c, cu_dtype dt, void *out, float *mean, float *rstd, const void *in,
                     const float *gamma, const float *beta, int n, int ch, size_t s, int act,
                     float slope)
{
    (void)c, (void)dt, (void)out, (void)mean, (void)rstd, (void)in, (void)gamma, (void)beta,
        (void)n, (void)ch, (void)s, (void)act, (void)slope;
    return NOGPU;
}

int cu_inorm_backward(cu_ctx *c, cu_dtype dt, void *din, float *dgamma, float *dbeta,
                      const void *dout, const void *in, const float *mean, const float *rstd,
                      const float *gamma, int n, int ch, size_t s)
{
    (void)c, (void)dt, (void)din, (void)dgamma, (void)dbeta, (void)dout, (void)in, (void)mean,
        (void)rstd, (void)gamma, (void)n, (void)ch, (void)s;
    return NOGPU;
}

int cu_inorm_add_lrelu_forward(cu_ctx *c, cu_dtype dt, void *out, float *m2, float *r2,
                               const void *h2, const float *g2, const float *b2, float *ms,
                               float *rs, const void *hs, const float *gs, const float *bs, int n,
                               int ch, size_t s, float slope)
{
    (void)c, (void)dt, (void)out, (void)m2, (void)r2, (void)h2, (void)g2, (void)b2, (void)ms,
        (void)rs, (void)hs, (void)gs, (void)bs, (void)n, (void)ch, (void)s, (void)slope;
    return NOGPU;
}

/* ---- segmentation head and losses ------------------------------------------------------------ */

int cu_softmax_forward(cu_ctx *c, cu_dtype dt, float *prob, const void *logits, int n, int k,
                       size_t s)
{
    (void)c, (void)dt, (void)prob, (void)logits, (void)n, (void)k, (void)s;
    return NOGPU;
}

int cu_softmax_backward(cu_ctx *c, cu_dtype dt, void *dlogits, const float *dprob,
                        const float *prob, int n, int k, size_t s)
{
    (void)c, (void)dt, (void)dlogits, (void)dprob, (void)prob, (void)n, (void)k, (void)s;
    return NOGPU;
}

int cu_softmax_ce_forward(cu_ctx *c, cu_dtype dt, float *loss, float *prob, const void *logits,
                          const uint8_t *label, int ignore, int n, int k, size_t s)
{
    (void)c, (void)dt, (void)loss, (void)prob, (void)logits, (void)label, (void)ignore, (void)n,
        (void)k, (void)s;
    return NOGPU;
}

int cu_softmax_ce_backward(cu_ctx *c, cu_dtype dt, void *dlogits, float dloss, const float *prob,
                           const uint8_t *label, int ignore, int n, int k, size_t s)
{
    (void)c, (void)dt, (void)dlogits, (void)dloss, (void)prob, (void)label, (void)ignore,
        (void)n, (void)k, (void)s;
    return NOGPU;
}

int cu_dice_forward(cu_ctx *c, float *loss, const float *prob, const uint8_t *label, int ignore,
                    int first_class, int n, int k, size_t s)
{
    (void)c, (void)loss, (void)prob, (void)label, (void)ignore, (void)first_class, (void)n,
        (void)k, (void)s;
    return NOGPU;
}

int cu_dice_backward(cu_ctx *c, float *dprob, float dloss, const float *prob,
                     const uint8_t *label, int ignore, int first_class, int n, int k, size_t s)
{
    (void)c, (void)dprob, (void)dloss, (void)prob, (void)label, (void)ignore, (void)first_class,
        (void)n, (void)k, (void)s;
    return NOGPU;
}

int cu_argmax(cu_ctx *c, cu_dtype dt, uint8_t *label, const void *x, int n, int k, size_t s)
{
    (void)c, (void)dt, (void)label, (void)x, (void)n, (void)k, (void)s;
    return NOGPU;
}

int cu_argmax_f32(cu_ctx *c, uint8_t *label, const float *x, int n, int k, size_t s)
{
    (void)c, (void)label, (void)x, (void)n, (void)k, (void)s;
    return NOGPU;
}

/* ---- organ pooling --------------------------------------------------------------------------- */

int cu_mpool_forward(cu_ctx *c, cu_dtype dt, float *out, int64_t *count, const void *feat,
                     const uint8_t *label, int n, int k, int ch, size_t s)
{
    (void)c, (void)dt, (void)out, (void)count, (void)feat, (void)label, (void)n, (void)k,
        (void)ch, (void)s;
    return NOGPU;
}

int cu_mpool_forward_f32(cu_ctx *c, float *out, int64_t *count, const float *feat,
                         const uint8_t *label, int n, int k, int ch, size_t s)
{
    (void)c, (void)out, (void)count, (void)feat, (void)label, (void)n, (void)k, (void)ch,
        (void)s;
    return NOGPU;
}

int cu_mpool_backward(cu_ctx *c, cu_dtype dt, void *dfeat, const float *dout,
                      const int64_t *count, const uint8_t *label, int n, int k, int ch, size_t s)
{
    (void)c, (void)dt, (void)dfeat, (void)dout, (void)count, (void)label, (void)n, (void)k,
        (void)ch, (void)s;
    return NOGPU;
}

int cu_xpool_forward(cu_ctx *c, cu_dtype dt, float *out, int ld, int64_t *arg, const void *feat,
                     const uint8_t *label, int n, int k, int ch, size_t s)
{
    (void)c, (void)dt, (void)out, (void)ld, (void)arg, (void)feat, (void)label, (void)n, (void)k,
        (void)ch, (void)s;
    return NOGPU;
}

int cu_xpool_forward_f32(cu_ctx *c, float *out, int ld, int64_t *arg, const float *feat,
                         const uint8_t *label, int n, int k, int ch, size_t s)
{
    (void)c, (void)out, (void)ld, (void)arg, (void)feat, (void)label, (void)n, (void)k, (void)ch,
        (void)s;
    return NOGPU;
}

int cu_xpool_backward(cu_ctx *c, cu_dtype dt, void *dfeat, const float *dout, int ld,
                      const int64_t *arg, int n, int k, int ch, size_t s)
{
    (void)c, (void)dt, (void)dfeat, (void)dout, (void)ld, (void)arg, (void)n, (void)k, (void)ch,
        (void)s;
    return NOGPU;
}

int cu_zero_absent_rows(cu_ctx *c, float *x, const int64_t *count, int rows, int dim)
{
    (void)c, (void)x, (void)count, (void)rows, (void)dim;
    return NOGPU;
}

/* ---- rows ---------------------------------------------------------------------------------- */

int cu_l2norm_forward(cu_ctx *c, float *out, float *norm, const float *in, int rows, int dim)
{
    (void)c, (void)out, (void)norm, (void)in, (void)rows, (void)dim;
    return NOGPU;
}

int cu_l2norm_backward(cu_ctx *c, float *din, const float *dout, const float *out,
                       const float *norm, int rows, int dim)
{
    (void)c, (void)din, (void)dout, (void)out, (void)norm, (void)rows, (void)dim;
    return NOGPU;
}

int cu_infonce_forward(cu_ctx *c, float *loss, float *prob, const float *a, const float *b,
                       const int *pos, const uint8_t *mask, int r, int m, int e, float tau)
{
    (void)c, (void)loss, (void)prob, (void)a, (void)b, (void)pos, (void)mask, (void)r, (void)m,
        (void)e, (void)tau;
    return NOGPU;
}

int cu_infonce_backward(cu_ctx *c, float *da, float *db, float dloss, const float *prob,
                        const float *a, const float *b, const int *pos, int r, int m, int e,
                        float tau)
{
    (void)c, (void)da, (void)db, (void)dloss, (void)prob, (void)a, (void)b, (void)pos, (void)r,
        (void)m, (void)e, (void)tau;
    return NOGPU;
}

/* ---- optimizer ------------------------------------------------------------------------------- */

int cu_adamw_step(cu_ctx *c, float *params, const float *grads, float *m, float *v, size_t n,
                  long t, const op_adamw_cfg *cfg)
{
    (void)c, (void)params, (void)grads, (void)m, (void)v, (void)n, (void)t, (void)cfg;
    return NOGPU;
}

int cu_sumsq(cu_ctx *c, float *out, const float *g, size_t n)
{
    (void)c, (void)out, (void)g, (void)n;
    return NOGPU;
}

int cu_scale(cu_ctx *c, float *g, size_t n, float scale)
{
    (void)c, (void)g, (void)n, (void)scale;
    return NOGPU;
}

/* ---- sliding windows ------------------------------------------------------------------------- */

int cu_window_load(cu_ctx *c, float *win, const float *vol, int nx, int ny, int nz, int x0,
                   int y0, int z0, int pw, int ph, int pd, float fill)
{
    (void)c, (void)win, (void)vol, (void)nx, (void)ny, (void)nz, (void)x0, (void)y0, (void)z0,
        (void)pw, (void)ph, (void)pd, (void)fill;
    return NOGPU;
}

int cu_window_acc(cu_ctx *c, cu_dtype dt, float *acc, float *wsum, const void *win, int ch,
                  int nx, int ny, int nz, int x0, int y0, int z0, int pw, int ph, int pd)
{
    (void)c, (void)dt, (void)acc, (void)wsum, (void)win, (void)ch, (void)nx, (void)ny, (void)nz,
        (void)x0, (void)y0, (void)z0, (void)pw, (void)ph, (void)pd;
    return NOGPU;
}

int cu_div_rows(cu_ctx *c, float *acc, const float *wsum, size_t V, int ch)
{
    (void)c, (void)acc, (void)wsum, (void)V, (void)ch;
    return NOGPU;
}
