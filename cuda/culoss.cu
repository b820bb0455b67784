/*
 * culoss.cu - the own kernels of cuops.h for the segmentation head and the
 * losses: per-voxel softmax, softmax cross-entropy, soft Dice, argmax,
 * organ pooling (masked averages per label), L2 normalisation of rows and
 * row-wise InfoNCE.
 *
 * Class scores are channels-last [n][s][k], so one voxel's k scores are
 * contiguous and per-voxel ops use one thread a voxel.  Loss values stay in
 * device memory: a loss is reduced into fp64 accumulators in the context's
 * scratch and a one-thread kernel writes the fp32 result, so a training
 * step never waits for the host.  Backward passes recompute what they need
 * (voxel counts, Dice statistics) instead of relying on scratch contents
 * from the forward, so other ops may run in between.
 *
 * Threading: ops are queued on the context's stream; see cuops.h.
 */
#include "cuda/cukern.cuh"

#include <float.h>
#include <math.h>
#include <string.h>

/* The counting rule of ops.h: labels >= k and the ignore label do not count. */
static __host__ __device__ __forceinline__ int counted(unsigned lab, int ignore, int k)
{
    return (int)lab < k && (int)lab != ignore;
}

/* ---- softmax ------------------------------------------------------------------------ */

/* Softmax of one voxel's k scores x (dt) into p; returns log(sum exp(x -
 * max)) + max.  The float expressions of softmax_chunk in ops_loss.c. */
static __host__ __device__ __forceinline__ float softmax1(float *p, const void *x, size_t base,
                                                          int k, cu_dtype dt)
{
    float mx = -FLT_MAX;
    for (int j = 0; j < k; j++) {
        float v = cu__ld(x, base + j, dt);
        mx = v > mx ? v : mx;
    }
    float sum = 0.0f;
    for (int j = 0; j < k; j++) {
        float e = expf(cu__ld(x, base + j, dt) - mx);
        p[base + j] = e;
        sum += e;
    }
    float lse = logf(sum) + mx, inv = 1.0f / sum;
    for (int j = 0; j < k; j++) p[base + j] *= inv;
    return lse;
}

/* Per-voxel kernels read a voxel's k scores with one thread, so a warp's
 * loads stride k elements apart; every line fetched is used (L1), but a
 * class-parallel layout would be faster for large k. */
extern "C" int cu_softmax_forward(cu_ctx *c, cu_dtype dt, float *prob, const void *logits, int n,
                                  int k, size_t s)
{
    CU__ENTER(c);
    if (n < 0 || k <= 0) return cu__fail(c, CTG_EINVAL, "cu_softmax: bad size");
    return cu__each(c, "softmax.fwd", (size_t)n * s, [=] CU_HD(size_t v) {
        softmax1(prob, logits, v * k, k, dt);
    });
}

extern "C" int cu_softmax_backward(cu_ctx *c, cu_dtype dt, void *dlogits, const float *dprob,
                                   const float *prob, int n, int k, size_t s)
{
    CU__ENTER(c);
    if (n < 0 || k <= 0) return cu__fail(c, CTG_EINVAL, "cu_softmax: bad size");
    if (!dlogits) return 0;
    return cu__each(c, "softmax.bwd", (size_t)n * s, [=] CU_HD(size_t v) {
        size_t base = v * k;
        float dot = 0.0f;
        for (int j = 0; j < k; j++) dot += prob[base + j] * dprob[base + j];
        for (int j = 0; j < k; j++) {
            float d = prob[base + j] * (dprob[base + j] - dot);
            cu__st(dlogits, base + j, dt, cu__ld(dlogits, base + j, dt) + d);
        }
    });
}

/* ---- cross-entropy ------------------------------------------------------------------ */

/* Layout of the scratch for the loss reductions. */
struct loss_acc {
    double sum;
    long long count;
};

extern "C" int cu_softmax_ce_forward(cu_ctx *c, cu_dtype dt, float *loss, float *prob,
                                     const void *logits, const uint8_t *label, int ignore, int n,
                                     int k, size_t s)
{
    CU__ENTER(c);
    if (k <= 0 || k > 256 || n <= 0) return cu__fail(c, CTG_EINVAL, "cu_softmax_ce: bad size");
    loss_acc *acc = (loss_acc *)c->scratch;
    int rc = cu_zero(c, acc, sizeof *acc);
    if (rc) return rc;
    rc = cu__part_segs(c, "ce.fwd", (size_t)n * s, 16,
                       [=] CU_HD(size_t v0, size_t v1, size_t t, size_t nt) {
                           float l = 0.0f;
                           long long cnt = 0;
                           for (size_t v = v0 + t; v < v1; v += nt) {
                               size_t base = v * k;
                               float lse = softmax1(prob, logits, base, k, dt);
                               unsigned y = label[v];
                               if (!counted(y, ignore, k)) continue;
                               /* -log softmax = lse - x_y, exact where prob underflows. */
                               l += lse - cu__ld(logits, base + y, dt);
                               cnt++;
                           }
                           cu__red_add_d(&acc->sum, l);
                           cu__red_add_ll(&acc->count, cnt);
                       });
    if (rc) return rc;
    return cu__each(c, "ce.fin", 1, [=] CU_HD(size_t) {
        *loss = acc->count ? (float)(acc->sum / (double)acc->count) : 0.0f;
    });
}

/* The number of counted voxels of label [nv] into *cnt (zeroed here). */
static int count_voxels(cu_ctx *c, long long *cnt, const uint8_t *label, int ignore, int k,
                        size_t nv)
{
    int rc = cu_zero(c, cnt, sizeof *cnt);
    if (rc) return rc;
    return cu__part_segs(c, "ce.count", nv, 64,
                         [=] CU_HD(size_t v0, size_t v1, size_t t, size_t nt) {
                             long long m = 0;
                             for (size_t v = v0 + t; v < v1; v += nt)
                                 m += counted(label[v], ignore, k);
                             cu__red_add_ll(cnt, m);
                         });
}

extern "C" int cu_softmax_ce_backward(cu_ctx *c, cu_dtype dt, void *dlogits, float dloss,
                                      const float *prob, const uint8_t *label, int ignore, int n,
                                      int k, size_t s)
{
    CU__ENTER(c);
    if (k <= 0 || k > 256 || n <= 0) return cu__fail(c, CTG_EINVAL, "cu_softmax_ce: bad size");
    if (!dlogits) return 0;
    long long *cnt = (long long *)c->scratch;
    int rc = count_voxels(c, cnt, label, ignore, k, (size_t)n * s);
    if (rc) return rc;
    size_t K = (size_t)k;
    return cu__each(c, "ce.bwd", (size_t)n * s * K, [=] CU_HD(size_t i) {
        size_t v = i / K, j = i - v * K;
        unsigned y = label[v];
        long long m = *cnt;
        if (!m || !counted(y, ignore, k)) return;
        float f = (float)((double)dloss / (double)m);
        /* Two adds, as op_softmax_ce_backward_cpu. */
        float d = cu__ld(dlogits, i, dt) + f * prob[i];
        if (j == y) d -= f;
        cu__st(dlogits, i, dt, d);
    });
}

/* ---- Dice --------------------------------------------------------------------------- */

/* I, P, G of every (sample, class) pair into st [3][n*k] (I, then P, then
 * G), as dice_stats in ops_loss.c.  G is summed in fp32: exact up to 2^24
 * voxels a sample. */
static int dice_stats(cu_ctx *c, float *st, const float *prob, const uint8_t *label, int ignore,
                      int n, int k, size_t s)
{
    size_t nk = (size_t)n * k, K = (size_t)k;
    int rc = cu_zero(c, st, 3 * nk * sizeof(float));
    if (rc) return rc;
    cu__outs o = {{st, st + nk, st + 2 * nk}};
    return cu__chan_sum<3>(c, "dice.stats", n, k, s, o,
                           [=] CU_HD(size_t b, size_t v, size_t j, float *acc) {
                               unsigned y = label[b * s + v];
                               if (!counted(y, ignore, k)) return;
                               float p = prob[(b * s + v) * K + j];
                               acc[1] += p;
                               if (y == j) {
                                   acc[0] += p;
                                   acc[2] += 1.0f;
                               }
                           });
}

extern "C" int cu_dice_forward(cu_ctx *c, float *loss, const float *prob, const uint8_t *label,
                               int ignore, int first_class, int n, int k, size_t s)
{
    CU__ENTER(c);
    if (k <= 0 || k > 256 || n <= 0) return cu__fail(c, CTG_EINVAL, "cu_dice: bad size");
    size_t nk = (size_t)n * k;
    float *st;
    int rc = cu__tmp(c, 3 * nk * sizeof(float), (void **)&st);
    if (rc || (rc = dice_stats(c, st, prob, label, ignore, n, k, s))) return rc;
    /* The mean over present pairs: n*k is small, one thread does it. */
    return cu__each(c, "dice.fin", 1, [=] CU_HD(size_t) {
        double sum = 0;
        int present = 0;
        for (int b = 0; b < n; b++)
            for (int j = first_class; j < k; j++) {
                size_t q = (size_t)b * k + j;
                double I = st[q], P = st[nk + q], G = st[2 * nk + q];
                if (G <= 0) continue;
                sum += (2 * I + OP_DICE_SMOOTH) / (P + G + OP_DICE_SMOOTH);
                present++;
            }
        *loss = present ? (float)(1.0 - sum / present) : 0.0f;
    });
}

extern "C" int cu_dice_backward(cu_ctx *c, float *dprob, float dloss, const float *prob,
                                const uint8_t *label, int ignore, int first_class, int n, int k,
                                size_t s)
{
    CU__ENTER(c);
    if (k <= 0 || k > 256 || n <= 0) return cu__fail(c, CTG_EINVAL, "cu_dice: bad size");
    if (!dprob) return 0;
    size_t nk = (size_t)n * k, K = (size_t)k;
    float *st;
    int rc = cu__tmp(c, 3 * nk * sizeof(float), (void **)&st);
    if (rc || (rc = dice_stats(c, st, prob, label, ignore, n, k, s))) return rc;
    /* Per pair: dprob += (g ? a1 : 0) + a0 over its counted voxels, the
     * coefficients of op_dice_backward_cpu (0 for pairs outside the mean).
     * a1 and a0 replace I and P of the pair. */
    rc = cu__each(c, "dice.coef", 1, [=] CU_HD(size_t) {
        int present = 0;
        for (int b = 0; b < n; b++)
            for (int j = first_class; j < k; j++) present += st[2 * nk + (size_t)b * k + j] > 0;
        for (size_t q = 0; q < nk; q++) {
            double I = st[q], P = st[nk + q], G = st[2 * nk + q];
            float a1 = 0.0f, a0 = 0.0f;
            if (present && (int)(q % K) >= first_class && G > 0) {
                double den = P + G + OP_DICE_SMOOTH;
                double f = -(double)dloss / present / (den * den);
                a1 = (float)(f * 2 * den);
                a0 = (float)(-f * (2 * I + OP_DICE_SMOOTH));
            }
            st[q] = a1;
            st[nk + q] = a0;
        }
    });
    if (rc) return rc;
    return cu__each(c, "dice.bwd", (size_t)n * s * K, [=] CU_HD(size_t i) {
        size_t v = i / K, j = i - v * K, b = v / s;
        unsigned y = label[v];
        if (!counted(y, ignore, k)) return;
        size_t q = b * K + j;
        dprob[i] += (y == j ? st[q] : 0.0f) + st[nk + q];
    });
}

/* ---- argmax ------------------------------------------------------------------------- */

template <class T>
static int argmax(cu_ctx *c, const char *name, uint8_t *label, const T *x, cu_dtype dt, int n,
                  int k, size_t s)
{
    CU__ENTER(c);
    if (n < 0 || k <= 0) return cu__fail(c, CTG_EINVAL, "cu_argmax: bad size");
    size_t K = (size_t)k;
    int kk = k > 256 ? 256 : k; /* a byte holds no more classes */
    return cu__each(c, name, (size_t)n * s, [=] CU_HD(size_t v) {
        size_t base = v * K;
        float best = cu__ld(x, base, dt);
        int arg = 0;
        for (int j = 1; j < kk; j++) {
            float t = cu__ld(x, base + j, dt);
            if (t > best) {
                best = t;
                arg = j;
            }
        }
        label[v] = (uint8_t)arg;
    });
}

extern "C" int cu_argmax(cu_ctx *c, cu_dtype dt, uint8_t *label, const void *x, int n, int k,
                         size_t s)
{
    return argmax(c, "argmax", label, x, dt, n, k, s);
}

extern "C" int cu_argmax_f32(cu_ctx *c, uint8_t *label, const float *x, int n, int k, size_t s)
{
    return argmax(c, "argmax.f32", label, x, CU_F32, n, k, s);
}

/* ---- organ pooling ------------------------------------------------------------------ */

/* How the label-run reductions (mpool, xpool) split the work: each
 * sample's s voxels into parts of span voxels (one cu__segs segment each),
 * each part into one contiguous run per thread row, the threads of a row
 * taking channels t % C.  lr_plan sizes it; lr_run gives thread t of
 * segment seg its sample b, voxels [r0, r1) and channels k0, k0 + kstep,
 * ... (0: nothing to do). */
typedef struct lr_plan {
    size_t parts, span, len;
} lr_plan;

static lr_plan lr_make(const cu_ctx *c, size_t s, size_t C)
{
    lr_plan p;
    size_t per = c->emu ? 64 : (size_t)16384 * 256;
    p.parts = (s * C + per - 1) / per;
    if (p.parts > s) p.parts = s;
    p.span = (s + p.parts - 1) / p.parts;
    p.len = (p.span * C + 15) / 16; /* as cu__chan_sum */
    return p;
}

static __host__ __device__ __forceinline__ int lr_run(lr_plan p, size_t s, size_t C, size_t seg,
                                                      size_t t, size_t nt, size_t *b, size_t *r0,
                                                      size_t *r1, size_t *k0, size_t *kstep)
{
    *b = seg / p.parts;
    size_t part = seg - *b * p.parts;
    size_t v0 = part * p.span, v1 = v0 + p.span < s ? v0 + p.span : s;
    if (v0 >= v1) return 0;
    size_t rows, row;
    if (nt >= C) {
        rows = nt / C;
        row = t / C;
        *k0 = t % C;
        *kstep = C;
    } else {
        rows = 1;
        row = 0;
        *k0 = t;
        *kstep = nt;
    }
    if (row >= rows) return 0;
    size_t run = (v1 - v0 + rows - 1) / rows;
    *r0 = v0 + row * run;
    *r1 = *r0 + run < v1 ? *r0 + run : v1;
    return *r0 < *r1;
}

/* Sums per (sample, label, channel), then divides by the counts.  Threads
 * are laid out as in cu__chan_sum (channel t % C), but each walks one
 * contiguous run of voxels and adds its partial sum to out only when the
 * label changes: labels are large blobs, so there are few atomics.  The
 * channel-0 thread of each run also counts. */
static int mpool(cu_ctx *c, cu_dtype dt, float *out, int64_t *count, const void *feat,
                 const uint8_t *label, int n, int k, int ch, size_t s)
{
    CU__ENTER(c);
    if (n < 0 || k < 0 || ch < 0) return cu__fail(c, CTG_EINVAL, "cu_mpool: bad size");
    size_t C = (size_t)ch, K = (size_t)k, nk = (size_t)n * K;
    int rc;
    if ((rc = cu_zero(c, out, nk * C * sizeof(float))) ||
        (rc = cu_zero(c, count, nk * sizeof(int64_t))))
        return rc;
    if (!n || !k || !ch || !s) return 0;
    unsigned kk = k > 256 ? 256 : (unsigned)k; /* labels are bytes */
    lr_plan pl = lr_make(c, s, C);
    long long *cnt = (long long *)count;
    rc = cu__segs(c, "mpool.sum", (size_t)n * pl.parts, pl.len,
                  [=] CU_HD(size_t seg, size_t t, size_t nt) {
                      size_t b, r0, r1, k0, kstep;
                      if (!lr_run(pl, s, C, seg, t, nt, &b, &r0, &r1, &k0, &kstep)) return;
                      const uint8_t *lab = label + b * s;
                      for (size_t j = k0; j < C; j += kstep) {
                          unsigned cur = 256;
                          float acc = 0.0f;
                          long long m = 0;
                          for (size_t v = r0; v < r1; v++) {
                              unsigned y = lab[v];
                              if (y != cur) {
                                  if (cur < kk) {
                                      cu__atomic_add(&out[(b * K + cur) * C + j], acc);
                                      if (j == 0) cu__atomic_add_ll(&cnt[b * K + cur], m);
                                  }
                                  cur = y;
                                  acc = 0.0f;
                                  m = 0;
                              }
                              if (y < kk) {
                                  acc += cu__ld(feat, (b * s + v) * C + j, dt);
                                  m++;
                              }
                          }
                          if (cur < kk) {
                              cu__atomic_add(&out[(b * K + cur) * C + j], acc);
                              if (j == 0) cu__atomic_add_ll(&cnt[b * K + cur], m);
                          }
                      }
                  });
    if (rc) return rc;
    return cu__each(c, "mpool.mean", nk * C, [=] CU_HD(size_t i) {
        long long m = cnt[i / C];
        out[i] = m ? out[i] / (float)m : 0.0f;
    });
}

extern "C" int cu_mpool_forward(cu_ctx *c, cu_dtype dt, float *out, int64_t *count,
                                const void *feat, const uint8_t *label, int n, int k, int ch,
                                size_t s)
{
    return mpool(c, dt, out, count, feat, label, n, k, ch, s);
}

extern "C" int cu_mpool_forward_f32(cu_ctx *c, float *out, int64_t *count, const float *feat,
                                    const uint8_t *label, int n, int k, int ch, size_t s)
{
    return mpool(c, CU_F32, out, count, feat, label, n, k, ch, s);
}

extern "C" int cu_mpool_backward(cu_ctx *c, cu_dtype dt, void *dfeat, const float *dout,
                                 const int64_t *count, const uint8_t *label, int n, int k, int ch,
                                 size_t s)
{
    CU__ENTER(c);
    if (n < 0 || k < 0 || ch < 0) return cu__fail(c, CTG_EINVAL, "cu_mpool: bad size");
    if (!dfeat) return 0;
    size_t C = (size_t)ch, K = (size_t)k, per = s * C;
    unsigned kk = k > 256 ? 256 : (unsigned)k;
    return cu__each(c, "mpool.bwd", (size_t)n * per, [=] CU_HD(size_t i) {
        size_t b = i / per, v = (i - b * per) / C, j = i % C;
        unsigned y = label[b * s + v];
        if (y >= kk) return;
        size_t q = b * K + y;
        float g = count[q] ? dout[q * C + j] / (float)count[q] : 0.0f;
        cu__st(dfeat, i, dt, cu__ld(dfeat, i, dt) + g);
    });
}

/* Max pooling.  Each (value, voxel) pair is one 64-bit key whose order is
 * the value's, then the lower voxel: the float's bits made monotonic in the
 * high word, ~voxel in the low word.  Runs of one label keep a local best
 * and publish it with one atomicMax when the label changes (as mpool); the
 * keys live in arg, and a last pass turns them into values and voxels.
 * Key 0 is "no voxel": every real key has a non-zero low word. */
static __host__ __device__ __forceinline__ unsigned long long xkey(float f, size_t v)
{
    unsigned u;
#ifdef __CUDA_ARCH__
    u = __float_as_uint(f);
#else
    memcpy(&u, &f, sizeof u);
#endif
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((unsigned long long)u << 32) | (unsigned long long)(0xffffffffu - (unsigned)v);
}

static __host__ __device__ __forceinline__ float xkey_value(unsigned long long key)
{
    unsigned u = (unsigned)(key >> 32);
    u = (u & 0x80000000u) ? (u & 0x7fffffffu) : ~u;
    float f;
#ifdef __CUDA_ARCH__
    f = __uint_as_float(u);
#else
    memcpy(&f, &u, sizeof f);
#endif
    return f;
}

static int xpool(cu_ctx *c, cu_dtype dt, float *out, int ld, int64_t *arg, const void *feat,
                 const uint8_t *label, int n, int k, int ch, size_t s)
{
    CU__ENTER(c);
    if (n < 0 || k < 0 || ch < 0 || ld < ch || s >= 0xffffffffu)
        return cu__fail(c, CTG_EINVAL, "cu_xpool: bad size");
    size_t C = (size_t)ch, K = (size_t)k, nk = (size_t)n * K, L = (size_t)ld;
    unsigned long long *key = (unsigned long long *)arg;
    int rc;
    if ((rc = cu_zero(c, arg, nk * C * sizeof(int64_t)))) return rc;
    if (!n || !k || !ch) return 0;
    unsigned kk = k > 256 ? 256 : (unsigned)k; /* labels are bytes */
    if (s) {
        lr_plan pl = lr_make(c, s, C);
        rc = cu__segs(c, "xpool.max", (size_t)n * pl.parts, pl.len,
                      [=] CU_HD(size_t seg, size_t t, size_t nt) {
                          size_t b, r0, r1, k0, kstep;
                          if (!lr_run(pl, s, C, seg, t, nt, &b, &r0, &r1, &k0, &kstep)) return;
                          const uint8_t *lab = label + b * s;
                          for (size_t j = k0; j < C; j += kstep) {
                              unsigned cur = 256;
                              unsigned long long best = 0;
                              for (size_t v = r0; v < r1; v++) {
                                  unsigned y = lab[v];
                                  if (y != cur) {
                                      if (cur < kk && best)
                                          cu__atomic_max_ull(&key[(b * K + cur) * C + j], best);
                                      cur = y;
                                      best = 0;
                                  }
                                  if (y < kk) {
                                      unsigned long long q =
                                          xkey(cu__ld(feat, (b * s + v) * C + j, dt), v);
                                      if (q > best) best = q;
                                  }
                              }
                              if (cur < kk && best)
                                  cu__atomic_max_ull(&key[(b * K + cur) * C + j], best);
                          }
                      });
        if (rc) return rc;
    }
    return cu__each(c, "xpool.out", nk * C, [=] CU_HD(size_t i) {
        size_t r = i / C, j = i - r * C;
        unsigned long long q = key[i];
        out[r * L + j] = q ? xkey_value(q) : 0.0f;
        arg[i] = q ? (int64_t)(0xffffffffu - (unsigned)(q & 0xffffffffu)) : -1;
    });
}

extern "C" int cu_xpool_forward(cu_ctx *c, cu_dtype dt, float *out, int ld, int64_t *arg,
                                const void *feat, const uint8_t *label, int n, int k, int ch,
                                size_t s)
{
    return xpool(c, dt, out, ld, arg, feat, label, n, k, ch, s);
}

extern "C" int cu_xpool_forward_f32(cu_ctx *c, float *out, int ld, int64_t *arg,
                                    const float *feat, const uint8_t *label, int n, int k, int ch,
                                    size_t s)
{
    return xpool(c, CU_F32, out, ld, arg, feat, label, n, k, ch, s);
}

extern "C" int cu_xpool_backward(cu_ctx *c, cu_dtype dt, void *dfeat, const float *dout, int ld,
                                 const int64_t *arg, int n, int k, int ch, size_t s)
{
    CU__ENTER(c);
    if (n < 0 || k < 0 || ch < 0 || ld < ch) return cu__fail(c, CTG_EINVAL, "cu_xpool: bad size");
    if (!dfeat) return 0;
    size_t C = (size_t)ch, K = (size_t)k, L = (size_t)ld;
    /* One label per voxel: for a channel, no two rows share a winner, so
     * the adds cannot collide. */
    return cu__each(c, "xpool.bwd", (size_t)n * K * C, [=] CU_HD(size_t i) {
        size_t r = i / C, j = i - r * C, b = r / K;
        int64_t v = arg[i];
        if (v < 0 || (size_t)v >= s) return;
        size_t o = (b * s + (size_t)v) * C + j;
        cu__st(dfeat, o, dt, cu__ld(dfeat, o, dt) + dout[r * L + j]);
    });
}

extern "C" int cu_zero_absent_rows(cu_ctx *c, float *x, const int64_t *count, int rows, int dim)
{
    CU__ENTER(c);
    if (rows < 0 || dim < 0) return cu__fail(c, CTG_EINVAL, "cu_zero_absent_rows: bad size");
    size_t D = (size_t)dim;
    return cu__each(c, "zero_absent", (size_t)rows * D, [=] CU_HD(size_t i) {
        if (!count[i / D]) x[i] = 0.0f;
    });
}

/* ---- L2 normalisation ----------------------------------------------------------------- */

extern "C" int cu_l2norm_forward(cu_ctx *c, float *out, float *norm, const float *in, int rows,
                                 int dim)
{
    CU__ENTER(c);
    if (rows < 0 || dim < 0) return cu__fail(c, CTG_EINVAL, "cu_l2norm: bad size");
    if (!rows) return 0;
    size_t D = (size_t)dim;
    int rc = cu_zero(c, norm, (size_t)rows * sizeof(float));
    if (rc) return rc;
    rc = cu__segs(c, "l2.sumsq", (size_t)rows, D, [=] CU_HD(size_t r, size_t t, size_t nt) {
        float a = 0.0f;
        for (size_t i = t; i < D; i += nt) a += in[r * D + i] * in[r * D + i];
        cu__red_add(&norm[r], a);
    });
    if (rc) return rc;
    rc = cu__each(c, "l2.sqrt", (size_t)rows,
                  [=] CU_HD(size_t r) { norm[r] = (float)sqrt((double)norm[r]); });
    if (rc) return rc;
    return cu__each(c, "l2.fwd", (size_t)rows * D, [=] CU_HD(size_t i) {
        float nn = norm[i / D];
        out[i] = in[i] * (1.0f / (nn > OP_L2_EPS ? nn : OP_L2_EPS));
    });
}

extern "C" int cu_l2norm_backward(cu_ctx *c, float *din, const float *dout, const float *out,
                                  const float *norm, int rows, int dim)
{
    CU__ENTER(c);
    if (rows < 0 || dim < 0) return cu__fail(c, CTG_EINVAL, "cu_l2norm: bad size");
    if (!rows || !din) return 0;
    size_t D = (size_t)dim;
    float *yg;
    int rc = cu__tmp(c, (size_t)rows * sizeof(float), (void **)&yg);
    if (rc || (rc = cu_zero(c, yg, (size_t)rows * sizeof(float)))) return rc;
    rc = cu__segs(c, "l2.dot", (size_t)rows, D, [=] CU_HD(size_t r, size_t t, size_t nt) {
        float a = 0.0f;
        for (size_t i = t; i < D; i += nt) a += out[r * D + i] * dout[r * D + i];
        cu__red_add(&yg[r], a);
    });
    if (rc) return rc;
    return cu__each(c, "l2.bwd", (size_t)rows * D, [=] CU_HD(size_t i) {
        size_t r = i / D;
        if (norm[r] > OP_L2_EPS) /* y = x/|x|:  dx = (g - y (y.g)) / |x| */
            din[i] += (dout[i] - out[i] * yg[r]) * (1.0f / norm[r]);
        else /* below eps the op is x / eps */
            din[i] += dout[i] / OP_L2_EPS;
    });
}

/* ---- InfoNCE ---------------------------------------------------------------------------- */

/* Plain kernels, one thread per output element with a loop over the
 * shared dimension: a b^T costs r*m*e multiply-adds without tiling, fine
 * for the batch sizes of training (r, m ~ hundreds, e <= 512) but ~10x
 * slower than cuBLAS at r = m = 4096.  The row softmax is one thread a
 * row. */

static __host__ __device__ __forceinline__ int pos_of(const int *pos, size_t i)
{
    return pos ? pos[i] : (int)i;
}

/* An invalid pos (>= m) or a masked positive makes the loss NaN: the CPU op
 * returns CTG_EINVAL, which the device cannot without a host round trip. */
extern "C" int cu_infonce_forward(cu_ctx *c, float *loss, float *prob, const float *a,
                                  const float *b, const int *pos, const uint8_t *mask, int r,
                                  int m, int e, float tau)
{
    CU__ENTER(c);
    if (r <= 0 || m <= 0 || e <= 0 || !(tau > 0))
        return cu__fail(c, CTG_EINVAL, "cu_infonce: bad size or tau");
    size_t R = (size_t)r, M = (size_t)m, E = (size_t)e;
    float inv_tau = 1.0f / tau;
    double *rowloss;
    int rc = cu__tmp(c, R * sizeof(double), (void **)&rowloss);
    if (rc) return rc;
    rc = cu__each(c, "infonce.logits", R * M, [=] CU_HD(size_t q) {
        size_t i = q / M, j = q - i * M;
        const float *ai = a + i * E, *bj = b + j * E;
        float t = 0.0f;
        for (size_t d = 0; d < E; d++) t += ai[d] * bj[d];
        prob[q] = t * inv_tau;
    });
    if (rc) return rc;
    rc = cu__each(c, "infonce.softmax", R, [=] CU_HD(size_t i) {
        float *pr = prob + i * M;
        const uint8_t *mi = mask ? mask + i * M : NULL;
        int p = pos_of(pos, i);
        rowloss[i] = 0;
        if (p < 0) {
            for (size_t j = 0; j < M; j++) pr[j] = 0.0f;
            return;
        }
        if (p >= m || (mi && mi[p])) {
            rowloss[i] = NAN;
            for (size_t j = 0; j < M; j++) pr[j] = 0.0f;
            return;
        }
        float mx = -FLT_MAX;
        for (size_t j = 0; j < M; j++)
            if (!(mi && mi[j])) mx = pr[j] > mx ? pr[j] : mx;
        double sum = 0;
        for (size_t j = 0; j < M; j++)
            if (!(mi && mi[j])) sum += exp((double)pr[j] - mx);
        double lse = log(sum) + mx;
        rowloss[i] = lse - pr[p];
        for (size_t j = 0; j < M; j++) pr[j] = (mi && mi[j]) ? 0.0f : (float)exp(pr[j] - lse);
    });
    if (rc) return rc;
    return cu__each(c, "infonce.fin", 1, [=] CU_HD(size_t) {
        double l = 0;
        int rows = 0;
        for (size_t i = 0; i < R; i++) {
            if (pos_of(pos, i) < 0) continue;
            l += rowloss[i];
            rows++;
        }
        *loss = rows ? (float)(l / rows) : 0.0f;
    });
}

extern "C" int cu_infonce_backward(cu_ctx *c, float *da, float *db, float dloss,
                                   const float *prob, const float *a, const float *b,
                                   const int *pos, int r, int m, int e, float tau)
{
    CU__ENTER(c);
    if (r <= 0 || m <= 0 || e <= 0 || !(tau > 0))
        return cu__fail(c, CTG_EINVAL, "cu_infonce: bad size or tau");
    size_t R = (size_t)r, M = (size_t)m, E = (size_t)e;
    /* dL/dlogit[i][j] = f (prob[i][j] - [j == pos[i]]), f = dloss / rows / tau. */
    float *f = c->scratch;
    int rc = cu__each(c, "infonce.rows", 1, [=] CU_HD(size_t) {
        int rows = 0;
        for (size_t i = 0; i < R; i++) rows += pos_of(pos, i) >= 0;
        *f = rows ? dloss / (float)rows / tau : 0.0f;
    });
    if (rc) return rc;
    if (da) {
        rc = cu__each(c, "infonce.da", R * E, [=] CU_HD(size_t q) {
            size_t i = q / E, d = q - i * E;
            int p = pos_of(pos, i);
            float fi = *f;
            if (p < 0 || fi == 0.0f) return;
            const float *pr = prob + i * M;
            float acc = 0.0f;
            for (size_t j = 0; j < M; j++)
                acc += fi * (pr[j] - ((int)j == p ? 1.0f : 0.0f)) * b[j * E + d];
            da[q] += acc;
        });
        if (rc) return rc;
    }
    if (db) {
        rc = cu__each(c, "infonce.db", M * E, [=] CU_HD(size_t q) {
            size_t j = q / E, d = q - j * E;
            float fi = *f;
            if (fi == 0.0f) return;
            float acc = 0.0f;
            for (size_t i = 0; i < R; i++) {
                int p = pos_of(pos, i);
                if (p < 0) continue;
                acc += fi * (prob[i * M + j] - ((int)j == p ? 1.0f : 0.0f)) * a[i * E + d];
            }
            db[q] += acc;
        });
    }
    return rc;
}
