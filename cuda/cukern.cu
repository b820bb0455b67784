/*
 * cukern.cu - the own kernels of cuops.h: layout and type conversion,
 * element-wise ops, channel concat, instance norm (plain and fused with
 * the residual add and LeakyReLU), AdamW, gradient norm and scaling, and
 * the sliding-window helpers.  The losses, pooling and row ops are in
 * culoss.cu; the reduction helpers both files use are in cukern.cuh.
 *
 * Every body is a __host__ __device__ lambda run through cu__each or
 * cu__segs (cu_int.h), so the same code runs on the GPU and, in a
 * CU_EMULATE context, on the host, where the tests compare it with the CPU
 * ops of core/ops.h.  Activations are channels-last [n][s][c] in the
 * context's dtype and are loaded and stored with cu__ld / cu__st; all
 * arithmetic is fp32 (statistics finished in fp64 where the CPU op does).
 *
 * Threading: ops are queued on the context's stream; see cuops.h.
 */
#include "cuda/cukern.cuh"

#include <math.h>
#include <string.h>

/* ---- layout and type conversion ---------------------------------------------------- */

extern "C" int cu_pack(cu_ctx *c, cu_dtype dt, void *dst, const float *src, int n, int ch,
                       size_t s)
{
    CU__ENTER(c);
    if (n < 0 || ch < 0) return cu__fail(c, CTG_EINVAL, "cu_pack: bad size");
    size_t C = (size_t)ch, per = s * C;
    /* One thread per destination element: the stores are coalesced, the
     * loads stride s apart (a tiled transpose would do better; pack runs
     * once per batch on the 1-channel input and on outputs). */
    return cu__each(c, "pack", (size_t)n * per, [=] CU_HD(size_t i) {
        size_t b = i / per, r = i - b * per, v = r / C, k = r - v * C;
        cu__st(dst, i, dt, src[(b * C + k) * s + v]);
    });
}

extern "C" int cu_unpack(cu_ctx *c, cu_dtype dt, float *dst, const void *src, int n, int ch,
                         size_t s)
{
    CU__ENTER(c);
    if (n < 0 || ch < 0) return cu__fail(c, CTG_EINVAL, "cu_unpack: bad size");
    size_t C = (size_t)ch, per = s * C;
    return cu__each(c, "unpack", (size_t)n * per, [=] CU_HD(size_t i) {
        size_t b = i / per, r = i - b * per, k = r / s, v = r - k * s;
        dst[i] = cu__ld(src, (b * s + v) * C + k, dt);
    });
}

extern "C" int cu_cast_to(cu_ctx *c, cu_dtype dt, void *dst, const float *src, size_t cnt)
{
    CU__ENTER(c);
    return cu__each(c, "cast_to", cnt, [=] CU_HD(size_t i) { cu__st(dst, i, dt, src[i]); });
}

extern "C" int cu_cast_from(cu_ctx *c, cu_dtype dt, float *dst, const void *src, size_t cnt)
{
    CU__ENTER(c);
    return cu__each(c, "cast_from", cnt, [=] CU_HD(size_t i) { dst[i] = cu__ld(src, i, dt); });
}

extern "C" int cu_normalise(cu_ctx *c, cu_dtype dt, void *x, const float *hu, size_t cnt, float lo,
                            float hi)
{
    CU__ENTER(c);
    if (!(hi > lo)) return cu__fail(c, CTG_EINVAL, "cu_normalise: hi %g <= lo %g", hi, lo);
    /* The same float expressions as normalise() in core/model.c. */
    float mid = 0.5f * (lo + hi), rs = 2.0f / (hi - lo);
    return cu__each(c, "normalise", cnt, [=] CU_HD(size_t i) {
        float v = hu[i];
        v = v < lo ? lo : v > hi ? hi : v; /* NaN stays NaN */
        cu__st(x, i, dt, (v - mid) * rs);
    });
}

/* ---- element-wise ------------------------------------------------------------------ */

extern "C" int cu_lrelu_forward(cu_ctx *c, cu_dtype dt, void *out, const void *in, size_t n,
                                float slope)
{
    CU__ENTER(c);
    return cu__each(c, "lrelu.fwd", n, [=] CU_HD(size_t i) {
        float x = cu__ld(in, i, dt);
        cu__st(out, i, dt, x > 0 ? x : slope * x);
    });
}

extern "C" int cu_lrelu_backward(cu_ctx *c, cu_dtype dt, void *din, const void *dout,
                                 const void *x, size_t n, float slope)
{
    CU__ENTER(c);
    if (!din) return 0;
    return cu__each(c, "lrelu.bwd", n, [=] CU_HD(size_t i) {
        float g = cu__ld(dout, i, dt);
        cu__st(din, i, dt, cu__ld(din, i, dt) + (cu__ld(x, i, dt) > 0 ? g : slope * g));
    });
}

extern "C" int cu_add_forward(cu_ctx *c, cu_dtype dt, void *out, const void *a, const void *b,
                              size_t n)
{
    CU__ENTER(c);
    return cu__each(c, "add", n, [=] CU_HD(size_t i) {
        cu__st(out, i, dt, cu__ld(a, i, dt) + cu__ld(b, i, dt));
    });
}

extern "C" int cu_acc(cu_ctx *c, cu_dtype dt, void *dst, const void *src, size_t n)
{
    CU__ENTER(c);
    return cu__each(c, "acc", n, [=] CU_HD(size_t i) {
        cu__st(dst, i, dt, cu__ld(dst, i, dt) + cu__ld(src, i, dt));
    });
}

extern "C" int cu_concat_forward(cu_ctx *c, cu_dtype dt, void *out, const void *a, const void *b,
                                 int n, int ca, int cb, size_t s)
{
    CU__ENTER(c);
    if (n < 0 || ca < 0 || cb < 0) return cu__fail(c, CTG_EINVAL, "cu_concat: bad size");
    size_t A = (size_t)ca, B = (size_t)cb, C = A + B;
    return cu__each(c, "concat.fwd", (size_t)n * s * C, [=] CU_HD(size_t i) {
        size_t v = i / C, k = i - v * C;
        float x = k < A ? cu__ld(a, v * A + k, dt) : cu__ld(b, v * B + (k - A), dt);
        cu__st(out, i, dt, x);
    });
}

extern "C" int cu_concat_backward(cu_ctx *c, cu_dtype dt, void *da, void *db, const void *dout,
                                  int n, int ca, int cb, size_t s)
{
    CU__ENTER(c);
    if (n < 0 || ca < 0 || cb < 0) return cu__fail(c, CTG_EINVAL, "cu_concat: bad size");
    if (!da && !db) return 0;
    size_t A = (size_t)ca, B = (size_t)cb, C = A + B;
    return cu__each(c, "concat.bwd", (size_t)n * s * C, [=] CU_HD(size_t i) {
        size_t v = i / C, k = i - v * C;
        float g = cu__ld(dout, i, dt);
        if (k < A) {
            if (da) cu__st(da, v * A + k, dt, cu__ld(da, v * A + k, dt) + g);
        } else if (db) {
            size_t j = v * B + (k - A);
            cu__st(db, j, dt, cu__ld(db, j, dt) + g);
        }
    });
}

extern "C" int cu_relu_forward(cu_ctx *c, float *out, const float *in, size_t n)
{
    CU__ENTER(c);
    return cu__each(c, "relu.fwd", n, [=] CU_HD(size_t i) {
        float x = in[i];
        out[i] = x > 0 ? x : 0.0f * x; /* 0 * x: the CPU op's lrelu with slope 0 */
    });
}

extern "C" int cu_relu_backward(cu_ctx *c, float *din, const float *dout, const float *x,
                                size_t n)
{
    CU__ENTER(c);
    if (!din) return 0;
    return cu__each(c, "relu.bwd", n, [=] CU_HD(size_t i) {
        din[i] += x[i] > 0 ? dout[i] : 0.0f * dout[i];
    });
}

/* ---- instance norm ----------------------------------------------------------------- */

/* Mean and rstd of every (sample, channel) of x1 into m1, r1 and, when x2
 * is not NULL, of x2 into m2, r2, in two passes over the data (mean, then
 * squared deviations), as op_inorm_forward_cpu: one pass of sum and sum of
 * squares cancels badly when the mean is large. */
static int inorm_stats(cu_ctx *c, cu_dtype dt, int n, int ch, size_t s, const void *x1,
                       float *m1, float *r1, const void *x2, float *m2, float *r2)
{
    size_t C = (size_t)ch, nc = (size_t)n * C;
    int rc;
    if ((rc = cu_zero(c, m1, nc * sizeof(float))) || (rc = cu_zero(c, r1, nc * sizeof(float))))
        return rc;
    if (x2 && ((rc = cu_zero(c, m2, nc * sizeof(float))) ||
               (rc = cu_zero(c, r2, nc * sizeof(float)))))
        return rc;
    cu__outs o = {{m1, x2 ? m2 : NULL, NULL}};
    rc = cu__chan_sum<2>(c, "inorm.sum", n, ch, s, o,
                         [=] CU_HD(size_t b, size_t v, size_t k, float *acc) {
                             size_t i = (b * s + v) * C + k;
                             acc[0] += cu__ld(x1, i, dt);
                             if (x2) acc[1] += cu__ld(x2, i, dt);
                         });
    if (rc) return rc;
    double inv_s = 1.0 / (double)s;
    rc = cu__each(c, "inorm.mean", nc, [=] CU_HD(size_t p) {
        m1[p] = (float)((double)m1[p] * inv_s);
        if (x2) m2[p] = (float)((double)m2[p] * inv_s);
    });
    if (rc) return rc;
    cu__outs o2 = {{r1, x2 ? r2 : NULL, NULL}};
    rc = cu__chan_sum<2>(c, "inorm.var", n, ch, s, o2,
                         [=] CU_HD(size_t b, size_t v, size_t k, float *acc) {
                             size_t i = (b * s + v) * C + k;
                             float d = cu__ld(x1, i, dt) - m1[b * C + k];
                             acc[0] += d * d;
                             if (x2) {
                                 float e = cu__ld(x2, i, dt) - m2[b * C + k];
                                 acc[1] += e * e;
                             }
                         });
    if (rc) return rc;
    return cu__each(c, "inorm.rstd", nc, [=] CU_HD(size_t p) {
        r1[p] = (float)(1.0 / sqrt((double)r1[p] * inv_s + OP_INORM_EPS));
        if (x2) r2[p] = (float)(1.0 / sqrt((double)r2[p] * inv_s + OP_INORM_EPS));
    });
}

extern "C" int cu_inorm_forward(cu_ctx *c, cu_dtype dt, void *out, float *mean, float *rstd,
                                const void *in, const float *gamma, const float *beta, int n,
                                int ch, size_t s, int act, float slope)
{
    CU__ENTER(c);
    if (n < 0 || ch < 0) return cu__fail(c, CTG_EINVAL, "cu_inorm: bad size");
    if (!n || !ch || !s) return 0;
    int rc = inorm_stats(c, dt, n, ch, s, in, mean, rstd, NULL, NULL, NULL);
    if (rc) return rc;
    size_t C = (size_t)ch, per = s * C;
    return cu__each(c, "inorm.apply", (size_t)n * per, [=] CU_HD(size_t i) {
        size_t b = i / per, k = i % C, p = b * C + k;
        float r = rstd[p];
        float ga = gamma ? gamma[k] * r : r, be = beta ? beta[k] : 0.0f;
        float y = (cu__ld(in, i, dt) - mean[p]) * ga + be;
        if (act) y = y > 0 ? y : slope * y;
        cu__st(out, i, dt, y);
    });
}

extern "C" int cu_inorm_add_lrelu_forward(cu_ctx *c, cu_dtype dt, void *out, float *m2, float *r2,
                                          const void *h2, const float *g2, const float *b2,
                                          float *ms, float *rs, const void *hs, const float *gs,
                                          const float *bs, int n, int ch, size_t s, float slope)
{
    CU__ENTER(c);
    if (n < 0 || ch < 0) return cu__fail(c, CTG_EINVAL, "cu_inorm: bad size");
    if (!n || !ch || !s) return 0;
    int rc = inorm_stats(c, dt, n, ch, s, h2, m2, r2, hs, ms, rs);
    if (rc) return rc;
    size_t C = (size_t)ch, per = s * C;
    return cu__each(c, "inorm.add_lrelu", (size_t)n * per, [=] CU_HD(size_t i) {
        size_t b = i / per, k = i % C, p = b * C + k;
        float ra = r2[p], rb = rs[p];
        float ga = g2 ? g2[k] * ra : ra, be = b2 ? b2[k] : 0.0f;
        float gb = gs ? gs[k] * rb : rb, bb = bs ? bs[k] : 0.0f;
        float y = ((cu__ld(h2, i, dt) - m2[p]) * ga + be) + ((cu__ld(hs, i, dt) - ms[p]) * gb + bb);
        cu__st(out, i, dt, y > 0 ? y : slope * y);
    });
}

extern "C" int cu_inorm_backward(cu_ctx *c, cu_dtype dt, void *din, float *dgamma, float *dbeta,
                                 const void *dout, const void *in, const float *mean,
                                 const float *rstd, const float *gamma, int n, int ch, size_t s)
{
    CU__ENTER(c);
    if (n < 0 || ch < 0) return cu__fail(c, CTG_EINVAL, "cu_inorm: bad size");
    if (!n || !ch || !s) return 0;
    size_t C = (size_t)ch, nc = (size_t)n * C;
    /* sum g and sum g (x - mean) of every (sample, channel), then the
     * per-plane coefficients of dx in their place. */
    float *t;
    int rc = cu__tmp(c, 2 * nc * sizeof(float), (void **)&t);
    if (rc || (rc = cu_zero(c, t, 2 * nc * sizeof(float)))) return rc;
    float *sg = t, *sgx = t + nc;
    cu__outs o = {{sg, sgx, NULL}};
    rc = cu__chan_sum<2>(c, "inorm.bsum", n, ch, s, o,
                         [=] CU_HD(size_t b, size_t v, size_t k, float *acc) {
                             size_t i = (b * s + v) * C + k;
                             float g = cu__ld(dout, i, dt);
                             acc[0] += g;
                             acc[1] += g * (cu__ld(in, i, dt) - mean[b * C + k]);
                         });
    if (rc) return rc;
    if (dgamma || dbeta) {
        /* One thread per channel, samples in order: no atomics. */
        rc = cu__each(c, "inorm.dparam", C, [=] CU_HD(size_t k) {
            double dg = 0, dbt = 0;
            for (size_t b = 0; b < nc / C; b++) {
                size_t p = b * C + k;
                dg += (double)sgx[p] * rstd[p];
                dbt += sg[p];
            }
            if (dgamma) dgamma[k] += (float)dg;
            if (dbeta) dbeta[k] += (float)dbt;
        });
        if (rc) return rc;
    }
    if (!din) return 0;
    double inv_s = 1.0 / (double)s;
    /* dx = r (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), dxhat = g gamma:
     * the constants k0 and k1 of op_inorm_backward_cpu. */
    rc = cu__each(c, "inorm.coef", nc, [=] CU_HD(size_t p) {
        double ga = gamma ? gamma[p % C] : 1.0;
        double r = rstd[p];
        float k0 = (float)(ga * sg[p] * inv_s);
        float k1 = (float)(ga * (sgx[p] * r) * inv_s) * (float)r;
        sg[p] = k0;
        sgx[p] = k1;
    });
    if (rc) return rc;
    size_t per = s * C;
    return cu__each(c, "inorm.din", (size_t)n * per, [=] CU_HD(size_t i) {
        size_t b = i / per, k = i % C, p = b * C + k;
        float r = rstd[p], ga = gamma ? gamma[k] : 1.0f;
        float g = cu__ld(dout, i, dt), xm = cu__ld(in, i, dt) - mean[p];
        float d = ga * r * g - r * sg[p] - xm * r * sgx[p];
        cu__st(din, i, dt, cu__ld(din, i, dt) + d);
    });
}

/* ---- optimizer --------------------------------------------------------------------- */

extern "C" int cu_adamw_step(cu_ctx *c, float *params, const float *grads, float *m, float *v,
                             size_t n, long t, const op_adamw_cfg *cfg)
{
    CU__ENTER(c);
    if (t < 1) t = 1;
    /* The scalars exactly as op_adamw_step_cpu makes them. */
    double lr = op_lr_at(cfg, t);
    double bc1 = 1.0 - pow(cfg->beta1, (double)t), bc2 = 1.0 - pow(cfg->beta2, (double)t);
    float b1 = cfg->beta1, b2 = cfg->beta2, eps = cfg->eps;
    float decay = (float)(1.0 - lr * cfg->weight_decay);
    float step = (float)(lr / bc1), rbc2 = (float)(1.0 / bc2);
    return cu__each(c, "adamw", n, [=] CU_HD(size_t i) {
        float g = grads[i];
        float mi = b1 * m[i] + (1.0f - b1) * g;
        float vi = b2 * v[i] + (1.0f - b2) * g * g;
        m[i] = mi;
        v[i] = vi;
        params[i] = params[i] * decay - step * mi / (sqrtf(vi * rbc2) + eps);
    });
}

extern "C" int cu_sumsq(cu_ctx *c, float *out, const float *g, size_t n)
{
    CU__ENTER(c);
    double *tot = (double *)c->scratch;
    int rc = cu_zero(c, tot, sizeof *tot);
    if (rc) return rc;
    rc = cu__part_segs(c, "sumsq", n, 64, [=] CU_HD(size_t i0, size_t i1, size_t t, size_t nt) {
        float a = 0;
        for (size_t i = i0 + t; i < i1; i += nt) a += g[i] * g[i];
        cu__red_add_d(tot, a);
    });
    if (rc) return rc;
    return cu__each(c, "sumsq.fin", 1, [=] CU_HD(size_t) { *out = (float)*tot; });
}

extern "C" int cu_scale(cu_ctx *c, float *g, size_t n, float scale)
{
    CU__ENTER(c);
    return cu__each(c, "scale", n, [=] CU_HD(size_t i) { g[i] *= scale; });
}

/* ---- sliding-window inference ------------------------------------------------------- */

extern "C" int cu_window_load(cu_ctx *c, float *win, const float *vol, int nx, int ny, int nz,
                              int x0, int y0, int z0, int pw, int ph, int pd, float fill)
{
    CU__ENTER(c);
    if (nx < 0 || ny < 0 || nz < 0 || pw < 0 || ph < 0 || pd < 0)
        return cu__fail(c, CTG_EINVAL, "cu_window_load: bad size");
    size_t W = (size_t)pw, H = (size_t)ph;
    return cu__each(c, "window.load", W * H * (size_t)pd, [=] CU_HD(size_t i) {
        long x = (long)(i % W) + x0, y = (long)(i / W % H) + y0, z = (long)(i / (W * H)) + z0;
        int in = x >= 0 && x < nx && y >= 0 && y < ny && z >= 0 && z < nz;
        win[i] = in ? vol[((size_t)z * ny + (size_t)y) * nx + (size_t)x] : fill;
    });
}

extern "C" int cu_window_acc(cu_ctx *c, cu_dtype dt, float *acc, float *wsum, const void *win,
                             int ch, int nx, int ny, int nz, int x0, int y0, int z0, int pw,
                             int ph, int pd)
{
    CU__ENTER(c);
    if (ch < 0 || nx < 0 || ny < 0 || nz < 0 || pw < 0 || ph < 0 || pd < 0)
        return cu__fail(c, CTG_EINVAL, "cu_window_acc: bad size");
    size_t W = (size_t)pw, H = (size_t)ph, C = (size_t)ch;
    /* Each volume voxel is hit once per call, so plain adds suffice. */
    return cu__each(c, "window.acc", W * H * (size_t)pd * C, [=] CU_HD(size_t i) {
        size_t wv = i / C, k = i - wv * C;
        long x = (long)(wv % W) + x0, y = (long)(wv / W % H) + y0, z = (long)(wv / (W * H)) + z0;
        if (x < 0 || x >= nx || y < 0 || y >= ny || z < 0 || z >= nz) return;
        size_t gv = ((size_t)z * ny + (size_t)y) * nx + (size_t)x;
        acc[gv * C + k] += cu__ld(win, i, dt);
        if (wsum && k == 0) wsum[gv] += 1.0f;
    });
}

extern "C" int cu_div_rows(cu_ctx *c, float *acc, const float *wsum, size_t V, int ch)
{
    CU__ENTER(c);
    if (ch < 0) return cu__fail(c, CTG_EINVAL, "cu_div_rows: bad size");
    size_t C = (size_t)ch;
    /* Multiplies by the reciprocal, as mdl_infer does; voxels no window
     * covered (wsum 0) keep their (zero) sums. */
    return cu__each(c, "div_rows", V * C, [=] CU_HD(size_t i) {
        float w = wsum[i / C];
        if (w > 0) acc[i] *= 1.0f / w;
    });
}
