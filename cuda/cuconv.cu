/*
 * cuconv.cu - 3-D convolution and k2s2 transposed convolution on the GPU
 * through cuDNN's legacy descriptor API, channels-last (NDHWC) in the
 * context's activation type, fp32 accumulation; bias, its gradient, the
 * weight conversion and the weight-gradient accumulation are own kernels
 * (cu__each / cu__segs), so they run unchanged in the CU_EMULATE context,
 * where the convolutions themselves go through the CPU ops of core/ops.h.
 *
 * ---- the cuDNN problem of a plan --------------------------------------------------
 *
 * cuDNN is given one convolution C: x (N, Cx, spatial) -> y (N, Cy, spatial)
 * with a filter (K = Cy, C = Cx, k, k, k), cross-correlation, symmetric
 * padding, and three operations on it: F (forward x -> y), BD (backward
 * data y -> x) and BF (backward filter).  Tensors are described with
 * explicit channels-last strides: dims (n, c, d, h, w), strides
 * (c*d*h*w, 1, h*w*c, w*c, c).  The filter is CUDNN_TENSOR_NHWC, which for
 * 5-D filters is KTRSC: element (k, c, a, b, e) at ((k*kd + a)*kh + b)*kw
 * + e)*C + c.
 *
 * Ordinary conv (k3 or k1, stride 1 or 2): C is the layer itself, x = in
 * (cin channels), y = out (cout), K = cout, C = cin; our passes
 *   forward        = F (beta 0),
 *   backward data  = BD into din (beta 1: ADDS, the ops.h convention),
 *   backward wts   = BF (x = in, dy = dout) into the plan's dw buffer.
 * cuDNN's output size floor((i + 2p - k)/s) + 1 is ops.h's.
 *
 * Transposed k2s2 conv.  ops.h:  out[n][o][2z+a][2y+b][2x+c] =
 *   sum_i in[n][i][z][y][x] * w[o][i][a][b][c].
 * Let C be the ordinary k2 s2 p0 conv from the OUTPUT space (x' = out,
 * Cx = cout, spatial 2d x 2h x 2w) to the INPUT space (y' = in, Cy = cin,
 * spatial d x h x w; (2d - 2)/2 + 1 = d), filter W' (K = cin, C = cout):
 *   C(x')[n][i][z][y][x] = sum_{o,a,b,c} W'[i][o][a][b][c] x'[n][o][2z+a][2y+b][2x+c].
 * Its adjoint (cuDNN's BD with dy := in) is
 *   C^T(in)[n][o][2z+a][2y+b][2x+c] = sum_i W'[i][o][a][b][c] in[n][i][z][y][x],
 * which is our forward exactly when W'[i][o][a][b][c] = w[o][i][a][b][c].
 * Hence, with x' and y' as cuDNN's x and y:
 *   forward        = BD (dy = in, dx = out, beta 0),
 *   backward data  = F  (x = dout, y = din, beta 1): din = C(dout), as
 *                    out = C^T(in) is linear with adjoint C;
 *   backward wts   = BF with the roles swapped (x = dout, dy = in):
 *                    dW'[i][o][a][b][c] = sum in[n][i][z..] dout[n][o][2z+a..],
 *                    which is dL/dw[o][i][a][b][c] of ops.h.
 *
 * ---- weight layouts (the index algebra) ---------------------------------------------
 *
 * ops.h master weights, both kinds:  w[o][i][t], t = (a*k + b)*k + c,
 *   index j = (o*cin + i)*k3 + t.
 * Prepared weights wq (KTRSC of the filter above):
 *   ordinary   K = cout, C = cin:   wq[o][t][i],  index (o*k3 + t)*cin + i
 *   transposed K = cin,  C = cout:  wq[i][t][o],  index (i*k3 + t)*cout + o
 * (wq_index below).  cu_conv_prepare writes wq[wq_index(o,i,t)] = w[j]
 * rounded to dt; cuDNN's BF writes dL/dW' in the same layout into the
 * plan's dw buffer (dt: cuDNN wants the filter type equal to the data
 * type), and a kernel adds dw[j] += dwbuf[wq_index(o,i,t)] into the fp32
 * master gradient.
 *
 * ---- algorithms -----------------------------------------------------------------------
 *
 * Chosen by cudnnFind*AlgorithmEx (timed runs on scratch buffers) once per
 * (geometry, dtype, device) and cached for the process (mutex-protected);
 * when Find fails, by the _v7 heuristics.  From the results that succeed
 * within the workspace cap (CONV_WS_CAP) we take the fastest, or a
 * deterministic one if it is within 10% of the fastest.  An operation
 * without any algorithm (cuDNN's support of odd channel counts in bf16
 * NDHWC, say) does not fail the plan unless it is the forward pass's: the
 * pass that needs it fails when called (the first layer never runs its
 * backward-data pass), and cu_conv_impl names it "none".  fp32 plans use
 * CUDNN_FMA_MATH (no TF32, so fp32 results match the CPU to ~1e-5); bf16
 * plans search with CUDNN_TENSOR_OP_MATH and run with the math type cuDNN
 * reported for the chosen algorithm (one convolution descriptor per
 * operation, so the three may differ).  The plan reserves the context
 * workspace for the largest of its three, so the passes allocate nothing.
 *
 * ---- the emulation ------------------------------------------------------------------------
 *
 * A CU_EMULATE plan keeps an op_conv (its own op_ctx) and fp32 NCDHW host
 * buffers.  A pass converts its dt channels-last inputs to fp32 NCDHW (so
 * bf16 values are exactly those the GPU reads), converts the prepared
 * weights wq back to the ops.h layout (bf16 weights thus stay rounded as on
 * the GPU), runs op_conv3d_*_cpu, and stores the results as cuDNN would:
 * forward output rounded to dt, din = round(din + grad), the weight
 * gradient rounded to dt into the plan's dw buffer; bias, db and the dw
 * accumulation are the kernels the GPU runs.  Its algorithm names are
 * "cpu"; it goes through the algorithm cache like a device (device number
 * CU_EMULATE), which is how the tests check the cache's keying.
 */
#include "cuda/cu_int.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Largest workspace an algorithm may ask for; heavier ones are passed over. */
#define CONV_WS_CAP ((size_t)1 << 30)

/* cuDNN's three operations on the plan's convolution C. */
enum { OP_F = 0, OP_BD = 1, OP_BF = 2 };

/* ---- process-wide algorithm cache ------------------------------------------------------- */

typedef struct algo_key {
    op_conv_geom g; /* all ints: no padding, memcmp is safe */
    int dt;
    int device;
} algo_key;

typedef struct algo_rec {
    algo_key key;
    int algo[3]; /* per OP_*; -1: none (always so in the emulation) */
    int math[3]; /* cudnnMathType_t to run it with */
    int found;   /* 1: timed by Find*Ex, 0: heuristics */
} algo_rec;

static pthread_mutex_t cache_mu = PTHREAD_MUTEX_INITIALIZER;
static algo_rec *cache;
static size_t cache_n, cache_cap;
static long cache_searches, cache_hits;

static algo_key key_make(const op_conv_geom *g, cu_dtype dt, int device)
{
    algo_key k;
    memset(&k, 0, sizeof k);
    k.g = *g;
    k.dt = (int)dt;
    k.device = device;
    return k;
}

/* 1 and *out when key is cached (counting a hit). */
static int cache_get(const algo_key *key, algo_rec *out)
{
    int got = 0;
    pthread_mutex_lock(&cache_mu);
    for (size_t i = 0; i < cache_n; i++)
        if (!memcmp(&cache[i].key, key, sizeof *key)) {
            *out = cache[i];
            got = 1;
            cache_hits++;
            break;
        }
    pthread_mutex_unlock(&cache_mu);
    return got;
}

/* Stores r (a second search of the same key, by a thread that raced us,
 * keeps the first record); counts one search.  Out of memory only loses
 * the caching. */
static void cache_put(const algo_rec *r)
{
    pthread_mutex_lock(&cache_mu);
    cache_searches++;
    size_t i;
    for (i = 0; i < cache_n; i++)
        if (!memcmp(&cache[i].key, &r->key, sizeof r->key)) break;
    if (i == cache_n) {
        if (cache_n == cache_cap) {
            size_t nc = cache_cap ? 2 * cache_cap : 32;
            algo_rec *t = (algo_rec *)realloc(cache, nc * sizeof *t);
            if (t) {
                cache = t;
                cache_cap = nc;
            }
        }
        if (cache_n < cache_cap) cache[cache_n++] = *r;
    }
    pthread_mutex_unlock(&cache_mu);
}

/* Test hook (declared in tests/test_cuconv.c, not part of cuops.h): the
 * number of algorithm searches and of cache hits so far in this process. */
extern "C" void cu__conv_cache_stats(long *searches, long *hits)
{
    pthread_mutex_lock(&cache_mu);
    if (searches) *searches = cache_searches;
    if (hits) *hits = cache_hits;
    pthread_mutex_unlock(&cache_mu);
}

/* ---- the plan --------------------------------------------------------------------------- */

struct cu_conv {
    cu_ctx *c;
    op_conv_geom g;
    cu_dtype dt;
    int od, oh, ow;
    /* device */
    cudnnTensorDescriptor_t xd, yd; /* C's x and y (transposed: out, in) */
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd[3]; /* per OP_*, each with its math type */
    algo_rec algos;
    size_t ws[3];
    void *dwq; /* dt [wcount], C's filter gradient (cuDNN layout) */
    char impl[3][48];
    /* emulation */
    op_ctx *octx;
    op_conv *oconv;
    float *h_in, *h_out, *h_w, *h_din, *h_dw; /* fp32, ops.h layouts */
};

/* Index in wq (and the dw buffer) of ops.h weight (o, i, t); see the top. */
static CU_HD __forceinline__ size_t wq_index(int transposed, int cin, int cout, int k3, int o,
                                             int i, int t)
{
    return transposed ? ((size_t)i * k3 + t) * cout + o : ((size_t)o * k3 + t) * cin + i;
}

static int dnn_fail(cu_ctx *c, cudnnStatus_t s, const char *call)
{
    return cu__fail(c, s == CUDNN_STATUS_ALLOC_FAILED ? CTG_ENOMEM : CTG_EIO, "%s: %s", call,
                    c->lib->cudnnGetErrorString(s));
}

#define DNN_TRY(c, call)                                                       \
    do {                                                                       \
        cudnnStatus_t s_ = (call);                                             \
        if (s_ != CUDNN_STATUS_SUCCESS) return dnn_fail((c), s_, #call);       \
    } while (0)

static const char *op_name(int op)
{
    return op == OP_F ? "fwd" : op == OP_BD ? "bwd-data" : "bwd-filter";
}

static const char *algo_name(int op, int a)
{
    static const char *const f[] = {"IMPLICIT_GEMM", "IMPLICIT_PRECOMP_GEMM", "GEMM", "DIRECT",
                                    "FFT", "FFT_TILING", "WINOGRAD", "WINOGRAD_NONFUSED"};
    static const char *const bd[] = {"ALGO_0", "ALGO_1", "FFT", "FFT_TILING", "WINOGRAD",
                                     "WINOGRAD_NONFUSED"};
    static const char *const bf[] = {"ALGO_0", "ALGO_1", "FFT", "ALGO_3", "WINOGRAD",
                                     "WINOGRAD_NONFUSED", "FFT_TILING"};
    const char *const *t = op == OP_F ? f : op == OP_BD ? bd : bf;
    int n = op == OP_F ? 8 : op == OP_BD ? 6 : 7;
    return a >= 0 && a < n ? t[a] : "?";
}

/* "n2 c3->5 4x6x8 k3s1" (transposed: "k2s2T"), for messages. */
typedef struct geom_str {
    char s[96];
} geom_str;
static geom_str geom_text(const op_conv_geom *g)
{
    geom_str t;
    snprintf(t.s, sizeof t.s, "n%d c%d->%d %dx%dx%d k%ds%d%s", g->n, g->cin, g->cout, g->d, g->h,
             g->w, g->k, g->stride, g->transposed ? "T" : "");
    return t;
}

/* cuDNN operation of our pass (0 forward, 1 backward data, 2 weights). */
static int pass_op(const cu_conv *p, int pass)
{
    if (pass == 2) return OP_BF;
    return (pass == 0) != (p->g.transposed != 0) ? OP_F : OP_BD;
}

/* dims (n, c, d, h, w), channels-last strides. */
static int set_tensor(cu_ctx *c, cudnnTensorDescriptor_t t, cudnnDataType_t ty, int n, int ch,
                      int d, int h, int w)
{
    int dims[5] = {n, ch, d, h, w};
    int strides[5] = {ch * d * h * w, 1, h * w * ch, w * ch, ch};
    DNN_TRY(c, c->lib->cudnnSetTensorNdDescriptor(t, ty, 5, dims, strides));
    return 0;
}

/* ---- algorithm choice (device) ---------------------------------------------------------- */

template <typename P> static int usable(const P &r, int fp32, size_t cap)
{
    if (r.status != CUDNN_STATUS_SUCCESS || r.memory > cap) return 0;
    if (fp32 && (r.mathType == CUDNN_TENSOR_OP_MATH ||
                 r.mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION))
        return 0;
    return 1;
}

/* From results sorted fastest first: the fastest usable one, or the first
 * deterministic usable one within 10% of its time.  -1: none. */
template <typename P> static int pick(const P *r, int n, int fp32, size_t cap, int timed)
{
    int best = -1;
    for (int i = 0; i < n; i++) {
        if (!usable(r[i], fp32, cap)) continue;
        if (best < 0) {
            best = i;
            if (!timed || r[i].determinism == CUDNN_DETERMINISTIC) return i;
        } else if (r[i].determinism == CUDNN_DETERMINISTIC &&
                   r[i].time <= 1.10f * r[best].time) {
            return i;
        }
    }
    return best;
}

/* Scratch for the timed search: the two tensors, the filter and as much
 * workspace as fits (up to the cap). */
typedef struct search_bufs {
    void *x, *y, *w, *ws;
    size_t ws_bytes;
} search_bufs;

static void search_free(search_bufs *b)
{
    cudaFree(b->x);
    cudaFree(b->y);
    cudaFree(b->w);
    cudaFree(b->ws);
    memset(b, 0, sizeof *b);
}

/* 0, or -1 when the tensors do not fit (the caller falls back to the
 * heuristics). */
static int search_alloc(cu_conv *p, search_bufs *b)
{
    cu_ctx *c = p->c;
    const op_conv_geom *g = &p->g;
    size_t es = cu_dtype_size(p->dt);
    size_t nx = g->transposed ? op_conv_out_count(g) : op_conv_in_count(g);
    size_t ny = g->transposed ? op_conv_in_count(g) : op_conv_out_count(g);
    size_t nw = op_conv_weight_count(g);
    memset(b, 0, sizeof *b);
    if (cudaMalloc(&b->x, nx * es) != cudaSuccess || cudaMalloc(&b->y, ny * es) != cudaSuccess ||
        cudaMalloc(&b->w, nw * es) != cudaSuccess) {
        cudaGetLastError();
        search_free(b);
        return -1;
    }
    /* Zeros: timing on garbage could meet NaN or denormal slow paths. */
    if (cudaMemsetAsync(b->x, 0, nx * es, c->stream) != cudaSuccess ||
        cudaMemsetAsync(b->y, 0, ny * es, c->stream) != cudaSuccess ||
        cudaMemsetAsync(b->w, 0, nw * es, c->stream) != cudaSuccess ||
        cudaStreamSynchronize(c->stream) != cudaSuccess) {
        cudaGetLastError();
        search_free(b);
        return -1;
    }
    for (size_t want = CONV_WS_CAP; want >= ((size_t)8 << 20); want /= 2) {
        if (cudaMalloc(&b->ws, want) == cudaSuccess) {
            b->ws_bytes = want;
            break;
        }
        cudaGetLastError();
        b->ws = NULL;
    }
    return 0;
}

/* Fills r's algorithms and math types for the three operations of C: the
 * timed search where its scratch fits, else (or when it finds nothing) the
 * heuristics; -1 for an operation with no usable algorithm.  Returns 0 (no
 * failure is fatal here; plan_device decides). */
static int search(cu_conv *p, algo_rec *r)
{
    cu_ctx *c = p->c;
    const cu__lib *L = c->lib;
    cudnnHandle_t h = c->dnn;
    const int fp32 = p->dt == CU_F32;
    search_bufs b;
    int timed = search_alloc(p, &b) == 0;
    int got, i;

    /* forward */
    {
        cudnnConvolutionFwdAlgoPerf_t res[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
        i = -1;
        if (timed &&
            L->cudnnFindConvolutionForwardAlgorithmEx(h, p->xd, b.x, p->wd, b.w, p->cd[OP_F],
                                                      p->yd, b.y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
                                                      &got, res, b.ws, b.ws_bytes) ==
                CUDNN_STATUS_SUCCESS)
            i = pick(res, got, fp32, CONV_WS_CAP, 1);
        if (i >= 0) r->found++;
        if (i < 0 &&
            L->cudnnGetConvolutionForwardAlgorithm_v7(h, p->xd, p->wd, p->cd[OP_F], p->yd,
                                                      CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &got,
                                                      res) == CUDNN_STATUS_SUCCESS)
            i = pick(res, got, fp32, CONV_WS_CAP, 0);
        r->algo[OP_F] = i < 0 ? -1 : (int)res[i].algo;
        r->math[OP_F] = i < 0 ? (int)CUDNN_DEFAULT_MATH : (int)res[i].mathType;
    }
    /* backward data: dy = y, dx = x */
    {
        cudnnConvolutionBwdDataAlgoPerf_t res[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
        i = -1;
        if (timed && L->cudnnFindConvolutionBackwardDataAlgorithmEx(
                         h, p->wd, b.w, p->yd, b.y, p->cd[OP_BD], p->xd, b.x,
                         CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &got, res, b.ws,
                         b.ws_bytes) == CUDNN_STATUS_SUCCESS)
            i = pick(res, got, fp32, CONV_WS_CAP, 1);
        if (i >= 0) r->found++;
        if (i < 0 && L->cudnnGetConvolutionBackwardDataAlgorithm_v7(
                         h, p->wd, p->yd, p->cd[OP_BD], p->xd,
                         CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &got,
                         res) == CUDNN_STATUS_SUCCESS)
            i = pick(res, got, fp32, CONV_WS_CAP, 0);
        r->algo[OP_BD] = i < 0 ? -1 : (int)res[i].algo;
        r->math[OP_BD] = i < 0 ? (int)CUDNN_DEFAULT_MATH : (int)res[i].mathType;
    }
    /* backward filter: x, dy = y, dw */
    {
        cudnnConvolutionBwdFilterAlgoPerf_t res[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
        i = -1;
        if (timed && L->cudnnFindConvolutionBackwardFilterAlgorithmEx(
                         h, p->xd, b.x, p->yd, b.y, p->cd[OP_BF], p->wd, b.w,
                         CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &got, res, b.ws,
                         b.ws_bytes) == CUDNN_STATUS_SUCCESS)
            i = pick(res, got, fp32, CONV_WS_CAP, 1);
        if (i >= 0) r->found++;
        if (i < 0 && L->cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                         h, p->xd, p->yd, p->cd[OP_BF], p->wd,
                         CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &got,
                         res) == CUDNN_STATUS_SUCCESS)
            i = pick(res, got, fp32, CONV_WS_CAP, 0);
        r->algo[OP_BF] = i < 0 ? -1 : (int)res[i].algo;
        r->math[OP_BF] = i < 0 ? (int)CUDNN_DEFAULT_MATH : (int)res[i].mathType;
    }
    search_free(&b);
    r->found = r->found == 3;
    /* fp32 runs with FMA math whatever was reported, so no TF32 path can
     * be taken (the search ran with FMA math set). */
    if (fp32)
        for (int k = 0; k < 3; k++) r->math[k] = CUDNN_FMA_MATH;
    return 0;
}

/* The descriptors of C (no handle needed, so no GPU either). */
static int plan_descriptors(cu_conv *p)
{
    cu_ctx *c = p->c;
    const cu__lib *L = c->lib;
    const op_conv_geom *g = &p->g;
    cudnnDataType_t ty = p->dt == CU_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
    int rc;

    DNN_TRY(c, L->cudnnCreateTensorDescriptor(&p->xd));
    DNN_TRY(c, L->cudnnCreateTensorDescriptor(&p->yd));
    DNN_TRY(c, L->cudnnCreateFilterDescriptor(&p->wd));
    for (int k = 0; k < 3; k++) DNN_TRY(c, L->cudnnCreateConvolutionDescriptor(&p->cd[k]));

    /* C: x -> y (see the top: transposed runs C from its output space). */
    int xc, xs[3], yc, ys[3];
    if (!g->transposed) {
        xc = g->cin, xs[0] = g->d, xs[1] = g->h, xs[2] = g->w;
        yc = g->cout, ys[0] = p->od, ys[1] = p->oh, ys[2] = p->ow;
    } else {
        xc = g->cout, xs[0] = p->od, xs[1] = p->oh, xs[2] = p->ow;
        yc = g->cin, ys[0] = g->d, ys[1] = g->h, ys[2] = g->w;
    }
    if ((rc = set_tensor(c, p->xd, ty, g->n, xc, xs[0], xs[1], xs[2])) ||
        (rc = set_tensor(c, p->yd, ty, g->n, yc, ys[0], ys[1], ys[2])))
        return rc;
    int fdims[5] = {yc, xc, g->k, g->k, g->k};
    DNN_TRY(c, L->cudnnSetFilterNdDescriptor(p->wd, ty, CUDNN_TENSOR_NHWC, 5, fdims));
    int pad[3] = {g->pad, g->pad, g->pad};
    int stride[3] = {g->stride, g->stride, g->stride};
    int dil[3] = {1, 1, 1};
    for (int k = 0; k < 3; k++) {
        DNN_TRY(c, L->cudnnSetConvolutionNdDescriptor(p->cd[k], 3, pad, stride, dil,
                                                      CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
        DNN_TRY(c, L->cudnnSetConvolutionMathType(
                       p->cd[k], p->dt == CU_BF16 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH));
    }
    /* cuDNN's size of y must be ours. */
    int y[5];
    DNN_TRY(c, L->cudnnGetConvolutionNdForwardOutputDim(p->cd[OP_F], p->xd, p->wd, 5, y));
    if (y[0] != g->n || y[1] != yc || y[2] != ys[0] || y[3] != ys[1] || y[4] != ys[2])
        return cu__fail(c, CTG_EINVAL, "cuDNN output %dx%dx%dx%dx%d, expected %dx%dx%dx%dx%d",
                        y[0], y[1], y[2], y[3], y[4], g->n, yc, ys[0], ys[1], ys[2]);
    return 0;
}

static int plan_device(cu_conv *p)
{
    cu_ctx *c = p->c;
    const cu__lib *L = c->lib;
    const op_conv_geom *g = &p->g;
    int rc = plan_descriptors(p);
    if (rc) return rc;
    algo_rec r;
    memset(&r, 0, sizeof r);
    r.key = key_make(g, p->dt, c->device);
    if (!cache_get(&r.key, &r)) {
        if ((rc = search(p, &r))) return rc;
        cache_put(&r);
    }
    p->algos = r;
    /* A pass whose operation has no algorithm fails when called; a plan
     * that cannot even run forward is refused now. */
    if (r.algo[pass_op(p, 0)] < 0)
        return cu__fail(c, CTG_EIO, "cuDNN: no %s %s algorithm for conv %s", cu_dtype_name(p->dt),
                        op_name(pass_op(p, 0)), geom_text(g).s);
    for (int k = 0; k < 3; k++)
        DNN_TRY(c, L->cudnnSetConvolutionMathType(p->cd[k], (cudnnMathType_t)r.math[k]));
    if (r.algo[OP_F] >= 0)
        DNN_TRY(c, L->cudnnGetConvolutionForwardWorkspaceSize(
                       c->dnn, p->xd, p->wd, p->cd[OP_F], p->yd,
                       (cudnnConvolutionFwdAlgo_t)r.algo[OP_F], &p->ws[OP_F]));
    if (r.algo[OP_BD] >= 0)
        DNN_TRY(c, L->cudnnGetConvolutionBackwardDataWorkspaceSize(
                       c->dnn, p->wd, p->yd, p->cd[OP_BD], p->xd,
                       (cudnnConvolutionBwdDataAlgo_t)r.algo[OP_BD], &p->ws[OP_BD]));
    if (r.algo[OP_BF] >= 0)
        DNN_TRY(c, L->cudnnGetConvolutionBackwardFilterWorkspaceSize(
                       c->dnn, p->xd, p->yd, p->cd[OP_BF], p->wd,
                       (cudnnConvolutionBwdFilterAlgo_t)r.algo[OP_BF], &p->ws[OP_BF]));
    size_t need = p->ws[0];
    if (p->ws[1] > need) need = p->ws[1];
    if (p->ws[2] > need) need = p->ws[2];
    if ((rc = cu_ctx_reserve(c, need))) return rc;
    for (int pass = 0; pass < 3; pass++) {
        int op = pass_op(p, pass);
        snprintf(p->impl[pass], sizeof p->impl[pass], "%s %s%s", op_name(op),
                 r.algo[op] < 0 ? "none" : algo_name(op, r.algo[op]),
                 r.algo[op] >= 0 && (r.math[op] == CUDNN_TENSOR_OP_MATH ||
                                     r.math[op] == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION)
                     ? " tensor-op"
                     : "");
    }
    return 0;
}

/* CTG_EIO when cuDNN had no algorithm for operation op of p. */
static int need_algo(cu_conv *p, int op)
{
    if (p->algos.algo[op] >= 0) return 0;
    return cu__fail(p->c, CTG_EIO, "cuDNN: no %s %s algorithm for conv %s",
                    cu_dtype_name(p->dt), op_name(op), geom_text(&p->g).s);
}

static int plan_emulated(cu_conv *p)
{
    cu_ctx *c = p->c;
    const op_conv_geom *g = &p->g;
    int rc = op_ctx_new(&p->octx);
    if (!rc) rc = op_conv_new(p->octx, g, &p->oconv);
    if (rc) return cu__fail(c, rc, "emulated conv: op_conv_new failed (%d)", rc);
    size_t ni = op_conv_in_count(g), no = op_conv_out_count(g), nw = op_conv_weight_count(g);
    p->h_in = (float *)malloc(ni * sizeof(float));
    p->h_din = (float *)malloc(ni * sizeof(float));
    p->h_out = (float *)malloc(no * sizeof(float));
    p->h_w = (float *)malloc(nw * sizeof(float));
    p->h_dw = (float *)malloc(nw * sizeof(float));
    if (!p->h_in || !p->h_din || !p->h_out || !p->h_w || !p->h_dw)
        return cu__fail(c, CTG_ENOMEM, "emulated conv: out of memory");
    algo_rec r;
    memset(&r, 0, sizeof r);
    r.key = key_make(g, p->dt, CU_EMULATE);
    if (!cache_get(&r.key, &r)) {
        for (int k = 0; k < 3; k++) r.algo[k] = -1;
        cache_put(&r);
    }
    p->algos = r;
    for (int pass = 0; pass < 3; pass++) snprintf(p->impl[pass], sizeof p->impl[pass], "cpu");
    return 0;
}

extern "C" int cu_conv_new(cu_ctx *c, const op_conv_geom *g, cu_dtype dt, cu_conv **out)
{
    *out = NULL;
    int rc = cu__enter(c);
    if (rc) return rc;
    if (op_conv_geom_check(g)) return cu__fail(c, CTG_EINVAL, "unsupported conv geometry");
    if (dt != CU_F32 && dt != CU_BF16) return cu__fail(c, CTG_EINVAL, "bad conv dtype %d", (int)dt);
    /* cuDNN's legacy descriptors take int sizes and strides. */
    if (op_conv_in_count(g) > 0x7fffffff || op_conv_out_count(g) > 0x7fffffff)
        return cu__fail(c, CTG_EINVAL, "conv tensor over 2^31 elements");
    cu_conv *p = (cu_conv *)calloc(1, sizeof *p);
    if (!p) return cu__fail(c, CTG_ENOMEM, "out of memory");
    p->c = c;
    p->g = *g;
    p->dt = dt;
    op_conv_out_size(g, &p->od, &p->oh, &p->ow);
    rc = c->emu ? plan_emulated(p) : plan_device(p);
    if (!rc) rc = cu_malloc(c, &p->dwq, op_conv_weight_count(g) * cu_dtype_size(dt));
    if (rc) {
        char keep[sizeof c->err];
        memcpy(keep, c->err, sizeof keep);
        cu_conv_free(p);
        memcpy(c->err, keep, sizeof keep);
        return rc;
    }
    *out = p;
    return 0;
}

extern "C" void cu_conv_free(cu_conv *p)
{
    if (!p) return;
    cu_ctx *c = p->c;
    const cu__lib *L = c->lib;
    if (L) {
        for (int k = 0; k < 3; k++)
            if (p->cd[k]) L->cudnnDestroyConvolutionDescriptor(p->cd[k]);
        if (p->wd) L->cudnnDestroyFilterDescriptor(p->wd);
        if (p->yd) L->cudnnDestroyTensorDescriptor(p->yd);
        if (p->xd) L->cudnnDestroyTensorDescriptor(p->xd);
    }
    cu_free(c, p->dwq);
    op_conv_free(p->oconv);
    op_ctx_free(p->octx);
    free(p->h_in);
    free(p->h_out);
    free(p->h_w);
    free(p->h_din);
    free(p->h_dw);
    free(p);
}

extern "C" const op_conv_geom *cu_conv_geometry(const cu_conv *p) { return &p->g; }

extern "C" const char *cu_conv_impl(const cu_conv *p, int pass)
{
    return p && pass >= 0 && pass < 3 ? p->impl[pass] : "";
}

extern "C" size_t cu_conv_wcount(const cu_conv *p) { return op_conv_weight_count(&p->g); }

/* ---- kernels of both sides -------------------------------------------------------------- */

extern "C" int cu_conv_prepare_geom(cu_ctx *c, const op_conv_geom *g, cu_dtype dt, void *wq,
                                    const float *w)
{
    int rc = cu__enter(c);
    if (rc) return rc;
    if (op_conv_geom_check(g) || (dt != CU_F32 && dt != CU_BF16))
        return cu__fail(c, CTG_EINVAL, "conv prepare: bad geometry or dtype");
    const int tr = g->transposed, cin = g->cin, cout = g->cout;
    const int k3 = g->k * g->k * g->k;
    /* One thread per master weight j = (o*cin + i)*k3 + t. */
    return cu__each(c, "conv.prepare", op_conv_weight_count(g), [=] CU_HD(size_t j) {
        int t = (int)(j % k3);
        size_t oi = j / k3;
        int i = (int)(oi % cin), o = (int)(oi / cin);
        cu__st(wq, wq_index(tr, cin, cout, k3, o, i, t), dt, w[j]);
    });
}

extern "C" int cu_conv_prepare(cu_conv *p, void *wq, const float *w)
{
    return cu_conv_prepare_geom(p->c, &p->g, p->dt, wq, w);
}

/* dw[j] (fp32, ops.h) += dwq[wq_index(j)] (dt, cuDNN layout). */
static int dw_accumulate(cu_conv *p, float *dw)
{
    const int tr = p->g.transposed, cin = p->g.cin, cout = p->g.cout;
    const int k3 = p->g.k * p->g.k * p->g.k;
    const cu_dtype dt = p->dt;
    const void *src = p->dwq;
    return cu__each(p->c, "conv.dw", op_conv_weight_count(&p->g), [=] CU_HD(size_t j) {
        int t = (int)(j % k3);
        size_t oi = j / k3;
        int i = (int)(oi % cin), o = (int)(oi / cin);
        dw[j] += cu__ld(src, wq_index(tr, cin, cout, k3, o, i, t), dt);
    });
}

/* out [rows][cout] (dt) += b[o], rounded once. */
static int bias_add(cu_conv *p, void *out, const float *b)
{
    const int cout = p->g.cout;
    const cu_dtype dt = p->dt;
    return cu__each(p->c, "conv.bias", op_conv_out_count(&p->g), [=] CU_HD(size_t i) {
        cu__st(out, i, dt, cu__ld(out, i, dt) + b[i % (size_t)cout]);
    });
}

/* db[o] += sum over the rows of dout [rows][cout] (dt): one segment per
 * channel, fp32 partial sums per thread, one atomic per warp. */
static int bias_grad(cu_conv *p, float *db, const void *dout)
{
    const int cout = p->g.cout;
    const cu_dtype dt = p->dt;
    const size_t rows = op_conv_out_count(&p->g) / (size_t)cout;
    return cu__segs(p->c, "conv.db", (size_t)cout, rows,
                    [=] CU_HD(size_t o, size_t t, size_t nt) {
                        float acc = 0.0f;
                        for (size_t r = t; r < rows; r += nt) acc += cu__ld(dout, r * cout + o, dt);
                        cu__red_add(&db[o], acc);
                    });
}

/* ---- emulation helpers (host) ----------------------------------------------------------- */

/* dt [n][s][ch] -> fp32 [n][ch][s]. */
static void emu_unpack(float *dst, const void *src, cu_dtype dt, int n, int ch, size_t s)
{
    for (int b = 0; b < n; b++)
        for (size_t v = 0; v < s; v++)
            for (int k = 0; k < ch; k++)
                dst[((size_t)b * ch + k) * s + v] = cu__ld(src, ((size_t)b * s + v) * ch + k, dt);
}

/* fp32 [n][ch][s] -> dt [n][s][ch] (acc: dst = round(dst + src)). */
static void emu_pack(void *dst, const float *src, cu_dtype dt, int n, int ch, size_t s, int acc)
{
    for (int b = 0; b < n; b++)
        for (size_t v = 0; v < s; v++)
            for (int k = 0; k < ch; k++) {
                size_t di = ((size_t)b * s + v) * ch + k;
                float x = src[((size_t)b * ch + k) * s + v];
                cu__st(dst, di, dt, acc ? cu__ld(dst, di, dt) + x : x);
            }
}

/* wq (dt, cuDNN layout) -> fp32 ops.h layout, or back (to_wq, rounding). */
static void emu_weights(const cu_conv *p, float *w, void *wq, int to_wq)
{
    const op_conv_geom *g = &p->g;
    int k3 = g->k * g->k * g->k;
    size_t j = 0;
    for (int o = 0; o < g->cout; o++)
        for (int i = 0; i < g->cin; i++)
            for (int t = 0; t < k3; t++, j++) {
                size_t q = wq_index(g->transposed, g->cin, g->cout, k3, o, i, t);
                if (to_wq)
                    cu__st(wq, q, p->dt, w[j]);
                else
                    w[j] = cu__ld(wq, q, p->dt);
            }
}

static size_t in_vox(const op_conv_geom *g) { return (size_t)g->d * g->h * g->w; }
static size_t out_vox(const cu_conv *p) { return (size_t)p->od * p->oh * p->ow; }

/* ---- passes ----------------------------------------------------------------------------- */

extern "C" int cu_conv_forward(cu_conv *p, void *out, const void *in, const void *wq,
                               const float *b)
{
    cu_ctx *c = p->c;
    const op_conv_geom *g = &p->g;
    int rc = cu__enter(c);
    if (rc) return rc;
    if (c->emu) {
        emu_unpack(p->h_in, in, p->dt, g->n, g->cin, in_vox(g));
        emu_weights(p, p->h_w, (void *)wq, 0);
        if ((rc = op_conv3d_forward_cpu(p->oconv, p->h_out, p->h_in, p->h_w, NULL)))
            return cu__fail(c, rc, "emulated conv forward failed (%d)", rc);
        emu_pack(out, p->h_out, p->dt, g->n, g->cout, out_vox(p), 0);
    } else {
        const cu__lib *L = c->lib;
        const float one = 1.0f, zero = 0.0f;
        void *ws;
        int op = pass_op(p, 0);
        if ((rc = need_algo(p, op)) || (rc = cu__workspace(c, p->ws[op], &ws))) return rc;
        if (op == OP_F)
            DNN_TRY(c, L->cudnnConvolutionForward(c->dnn, &one, p->xd, in, p->wd, wq, p->cd[OP_F],
                                                  (cudnnConvolutionFwdAlgo_t)p->algos.algo[OP_F],
                                                  ws, p->ws[OP_F], &zero, p->yd, out));
        else /* transposed: C^T(in), in as C's dy, out as its dx */
            DNN_TRY(c, L->cudnnConvolutionBackwardData(
                           c->dnn, &one, p->wd, wq, p->yd, in, p->cd[OP_BD],
                           (cudnnConvolutionBwdDataAlgo_t)p->algos.algo[OP_BD], ws, p->ws[OP_BD],
                           &zero, p->xd, out));
    }
    return b ? bias_add(p, out, b) : 0;
}

extern "C" int cu_conv_backward(cu_conv *p, void *din, float *dw, float *db, const void *dout,
                                const void *in, const void *wq)
{
    cu_ctx *c = p->c;
    const op_conv_geom *g = &p->g;
    int rc = cu__enter(c);
    if (rc) return rc;
    if (db && (rc = bias_grad(p, db, dout))) return rc;
    if (!din && !dw) return 0;
    if (c->emu) {
        emu_unpack(p->h_out, dout, p->dt, g->n, g->cout, out_vox(p));
        emu_unpack(p->h_in, in, p->dt, g->n, g->cin, in_vox(g));
        emu_weights(p, p->h_w, (void *)wq, 0);
        if (din) memset(p->h_din, 0, op_conv_in_count(g) * sizeof(float));
        if (dw) memset(p->h_dw, 0, op_conv_weight_count(g) * sizeof(float));
        if ((rc = op_conv3d_backward_cpu(p->oconv, din ? p->h_din : NULL, dw ? p->h_dw : NULL,
                                         NULL, p->h_out, p->h_in, p->h_w)))
            return cu__fail(c, rc, "emulated conv backward failed (%d)", rc);
        if (din) emu_pack(din, p->h_din, p->dt, g->n, g->cin, in_vox(g), 1);
        if (dw) {
            emu_weights(p, p->h_dw, p->dwq, 1); /* as cuDNN's BF leaves it */
            return dw_accumulate(p, dw);
        }
        return 0;
    }
    const cu__lib *L = c->lib;
    const float one = 1.0f, zero = 0.0f;
    void *ws;
    if (dw) {
        if ((rc = need_algo(p, OP_BF)) || (rc = cu__workspace(c, p->ws[OP_BF], &ws))) return rc;
        /* ordinary: x = in, dy = dout; transposed: x = dout, dy = in. */
        const void *x = g->transposed ? dout : in, *dy = g->transposed ? in : dout;
        DNN_TRY(c, L->cudnnConvolutionBackwardFilter(
                       c->dnn, &one, p->xd, x, p->yd, dy, p->cd[OP_BF],
                       (cudnnConvolutionBwdFilterAlgo_t)p->algos.algo[OP_BF], ws, p->ws[OP_BF],
                       &zero, p->wd, p->dwq));
        if ((rc = dw_accumulate(p, dw))) return rc;
    }
    if (din) {
        int op = pass_op(p, 1);
        if ((rc = need_algo(p, op)) || (rc = cu__workspace(c, p->ws[op], &ws))) return rc;
        if (op == OP_BD) /* ordinary: din += C^T(dout) */
            DNN_TRY(c, L->cudnnConvolutionBackwardData(
                           c->dnn, &one, p->wd, wq, p->yd, dout, p->cd[OP_BD],
                           (cudnnConvolutionBwdDataAlgo_t)p->algos.algo[OP_BD], ws, p->ws[OP_BD],
                           &one, p->xd, din));
        else /* transposed: din += C(dout) */
            DNN_TRY(c, L->cudnnConvolutionForward(c->dnn, &one, p->xd, dout, p->wd, wq,
                                                  p->cd[OP_F],
                                                  (cudnnConvolutionFwdAlgo_t)p->algos.algo[OP_F],
                                                  ws, p->ws[OP_F], &one, p->yd, din));
    }
    return 0;
}
