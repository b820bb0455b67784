/*
 * test_cuops.c - the own kernels of cuda/cuops.h (cukern.cu, culoss.cu)
 * and the context and memory calls (cuctx.cu) against the CPU ops of
 * core/ops.h.  Every op group runs twice: on a CU_EMULATE context (the
 * same kernel bodies on the host; no GPU needed, this is what CI checks)
 * and, in the *_gpu tests, on device 0 when it opens (else skipped with the
 * reason).  Each group runs with fp32 and with bf16 activations.
 *
 * Layouts: the GPU ops take channels-last [n][s][c], the CPU ops NCDHW
 * [n][c][s]; the tests convert on the host.  bf16 tensors are converted on
 * the host too (round to nearest even), so these tests do not depend on
 * the kernels' own conversions, which are tested separately.
 *
 * Error measure ("rel"): max_i |got_i - ref_i| / max_i |ref_i| (see
 * test_ops.c).  Bounds:
 *   fp32: rel <= 1e-5 (emulation) - the same fp32 arithmetic as the CPU op
 *         up to the summation order of the reductions (a few hundred terms,
 *         strided partial sums instead of the CPU's blocks);
 *         on the GPU 5e-5: FMA contraction, device expf/logf (2 ulp) and
 *         atomics in varying order;
 *   bf16: rel <= 1e-2 - inputs are rounded to bf16 before the CPU reference
 *         runs, so the only difference is the rounding of the result to
 *         bf16's 8 significant bits (relative 2^-9 ~ 2e-3 per rounding; an
 *         accumulating backward rounds the sum once more), with margin.
 *         Outputs that stay fp32 (statistics, probabilities, losses,
 *         pooled features) keep the fp32 bound in bf16 runs.
 *   Integer outputs (labels, counts) must be equal.
 * Sizes are small and odd (s = 517 voxels, 3 or 5 channels, a 2-channel
 * case for the warp-shuffle path) so the strided loops are exercised and
 * the whole file takes a few seconds.
 */
#include "tests.h"

#include "core/core.h"
#include "core/ops.h"
#include "cuda/cu.h"
#include "cuda/cuops.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- host helpers ------------------------------------------------------------------ */

/* bf16 <-> fp32 on the host, round to nearest even (no NaNs here). */
/* Rounds x to what dt can hold. */
static void round_dt(cu_dtype dt, float *x, size_t n)
{
    if (dt == CU_BF16)
        for (size_t i = 0; i < n; i++) x[i] = tu_bf2f(tu_f2bf(x[i]));
}

/* Random values representable in dt. */
static float *rand_dt(cu_dtype dt, size_t n, float lo, float hi)
{
    float *x = tu_frand(n, lo, hi);
    round_dt(dt, x, n);
    return x;
}

/* [n][c][s] <-> [n][s][c] */
static float *to_cl(const float *x, int n, int c, size_t s)
{
    float *y = tu_fzero((size_t)n * c * s);
    for (int b = 0; b < n; b++)
        for (int k = 0; k < c; k++)
            for (size_t v = 0; v < s; v++)
                y[((size_t)b * s + v) * c + k] = x[((size_t)b * c + k) * s + v];
    return y;
}

static float *to_nchw(const float *x, int n, int c, size_t s)
{
    float *y = tu_fzero((size_t)n * c * s);
    for (int b = 0; b < n; b++)
        for (int k = 0; k < c; k++)
            for (size_t v = 0; v < s; v++)
                y[((size_t)b * c + k) * s + v] = x[((size_t)b * s + v) * c + k];
    return y;
}

/* ---- device helpers (abort on failure: a broken context fails loudly) -------------- */

static void *dnew(cu_ctx *c, size_t bytes)
{
    void *p = NULL;
    if (cu_malloc(c, &p, bytes)) {
        fprintf(stderr, "cu_malloc %zu: %s\n", bytes, cu_ctx_error(c));
        abort();
    }
    return p;
}

static void *dup_bytes(cu_ctx *c, const void *h, size_t bytes)
{
    void *d = dnew(c, bytes);
    if (cu_upload(c, d, h, bytes)) {
        fprintf(stderr, "cu_upload: %s\n", cu_ctx_error(c));
        abort();
    }
    return d;
}

static float *dup_f(cu_ctx *c, const float *h, size_t n)
{
    return dup_bytes(c, h, n * sizeof(float));
}

/* h (already representable) uploaded as dt. */
static void *dup_dt(cu_ctx *c, cu_dtype dt, const float *h, size_t n)
{
    if (dt == CU_F32) return dup_f(c, h, n);
    uint16_t *t = malloc((n ? n : 1) * 2);
    if (!t) abort();
    for (size_t i = 0; i < n; i++) t[i] = tu_f2bf(h[i]);
    void *d = dup_bytes(c, t, n * 2);
    free(t);
    return d;
}

static void down_bytes(cu_ctx *c, void *h, const void *d, size_t bytes)
{
    if (cu_download(c, h, d, bytes)) {
        fprintf(stderr, "cu_download: %s\n", cu_ctx_error(c));
        abort();
    }
}

static float *down_f(cu_ctx *c, const float *d, size_t n)
{
    float *h = tu_fzero(n);
    down_bytes(c, h, d, n * sizeof(float));
    return h;
}

static float *down_dt(cu_ctx *c, cu_dtype dt, const void *d, size_t n)
{
    if (dt == CU_F32) return down_f(c, d, n);
    uint16_t *t = malloc((n ? n : 1) * 2);
    if (!t) abort();
    down_bytes(c, t, d, n * 2);
    float *h = tu_fzero(n);
    for (size_t i = 0; i < n; i++) h[i] = tu_bf2f(t[i]);
    free(t);
    return h;
}

static float dscalar(cu_ctx *c, const float *d)
{
    float v = 0;
    down_bytes(c, &v, d, sizeof v);
    return v;
}

/* The bounds of the header comment. */
static double tol32(cu_ctx *c) { return cu_ctx_emulated(c) ? 1e-5 : 5e-5; }
static double tol_dt(cu_ctx *c, cu_dtype dt) { return dt == CU_BF16 ? 1e-2 : tol32(c); }

/* Compares n values, prints the error, fails the calling group. */
#define CMP(what, got, ref, n, tol)                                                      \
    do {                                                                                 \
        double r_ = tu_maxrel((got), (ref), (n));                                           \
        printf("  %-34s rel %.2e (bound %.0e)\n", (what), r_, (double)(tol));            \
        if (!(r_ <= (tol))) {                                                            \
            fprintf(stderr, "%s:%d: %s: rel %.3e > %.1e\n", __FILE__, __LINE__, (what),  \
                    r_, (double)(tol));                                                  \
            return 1;                                                                    \
        }                                                                                \
    } while (0)

#define OK(call)                                                                         \
    do {                                                                                 \
        int rc_ = (call);                                                                \
        if (rc_) {                                                                       \
            fprintf(stderr, "%s:%d: %s = %d: %s\n", __FILE__, __LINE__, #call, rc_,      \
                    cu_ctx_error(c));                                                    \
            return 1;                                                                    \
        }                                                                                \
    } while (0)

/* ---- running a group on both kinds of context ----------------------------------------- */

typedef int (*group_fn)(cu_ctx *c, cu_dtype dt);

static int run_group(cu_ctx *c, group_fn f)
{
    for (int d = 0; d < 2; d++) {
        cu_dtype dt = d ? CU_BF16 : CU_F32;
        printf("%s, %s:\n", cu_ctx_emulated(c) ? "emulation" : "device 0", cu_dtype_name(dt));
        tu_seed(1234 + d);
        if (f(c, dt)) return 1;
        if (cu_sync(c)) {
            fprintf(stderr, "cu_sync: %s\n", cu_ctx_error(c));
            return 1;
        }
    }
    return 0;
}

static int on_emu(group_fn f)
{
    char why[256];
    cu_ctx *c = NULL;
    int rc = cu_ctx_new(CU_EMULATE, &c, why, sizeof why);
    if (rc == CTG_ENOTFOUND) SKIP("%s", why); /* a build without nvcc */
    CHECK_EQ_INT(rc, 0);
    CHECK(cu_ctx_emulated(c));
    int r = run_group(c, f);
    cu_ctx_free(c);
    return r;
}

static int on_gpu(group_fn f)
{
    char why[256] = "";
    cu_ctx *c = NULL;
    if (cu_ctx_new(0, &c, why, sizeof why)) SKIP("no GPU (%s)", why);
    CHECK(!cu_ctx_emulated(c));
    CHECK_EQ_INT(cu_ctx_device(c), 0);
    int r = run_group(c, f);
    cu_ctx_free(c);
    return r;
}

/* ---- context and memory ------------------------------------------------------------------ */

static int g_memory(cu_ctx *c, cu_dtype dt)
{
    CHECK_EQ_INT(cu_dtype_size(dt), dt == CU_BF16 ? 2 : 4);
    cu_dtype back = (cu_dtype)-1;
    CHECK_EQ_INT(cu_dtype_parse(cu_dtype_name(dt), &back), 0);
    CHECK_EQ_INT(back, dt);
    size_t n = 1031, bytes = n * sizeof(float);
    float *h = tu_frand(n, -1, 1), *h2 = tu_fzero(n);
    float *d = dup_f(c, h, n), *e = dnew(c, bytes);
    OK(cu_copy(c, e, d, bytes));
    down_bytes(c, h2, e, bytes);
    CHECK(!memcmp(h, h2, bytes));
    OK(cu_zero(c, e + 1, (n - 2) * sizeof(float)));
    down_bytes(c, h2, e, bytes);
    CHECK(h2[0] == h[0] && h2[n - 1] == h[n - 1]);
    for (size_t i = 1; i + 1 < n; i++) CHECK(h2[i] == 0.0f);
    OK(cu_upload(c, d, h, 0)); /* zero bytes: nothing to do */
    cu_free(c, d);
    cu_free(c, e);
    cu_free(c, NULL);
    /* The workspace grows, never shrinks. */
    size_t w0 = cu_ctx_workspace_bytes(c);
    OK(cu_ctx_reserve(c, w0 + 4096));
    CHECK(cu_ctx_workspace_bytes(c) >= w0 + 4096);
    OK(cu_ctx_reserve(c, 16));
    CHECK(cu_ctx_workspace_bytes(c) >= w0 + 4096);
    size_t used = 1, total = 1;
    OK(cu_mem_info(c, &used, &total));
    if (cu_ctx_emulated(c))
        CHECK(used == 0 && total == 0);
    else
        CHECK(total > 0 && used <= total);
    /* A failing op leaves its reason; the next call clears it. */
    CHECK_EQ_INT(cu_pack(c, dt, NULL, NULL, -1, 1, 1), CTG_EINVAL);
    CHECK(cu_ctx_error(c)[0] != 0);
    OK(cu_sync(c));
    CHECK(cu_ctx_error(c)[0] == 0);
    free(h);
    free(h2);
    return 0;
}

static int test_ctx_emu(void)
{
    char why[256];
    cu_dtype dt;
    if (!cu_built_with_cuda()) {
        cu_ctx *none = NULL;
        CHECK_EQ_INT(cu_ctx_new(CU_EMULATE, &none, why, sizeof why), CTG_ENOTFOUND);
        CHECK(none == NULL);
        SKIP("%s", why);
    }
    CHECK_EQ_INT(cu_dtype_parse("bf16", &dt), 0);
    CHECK_EQ_INT(dt, CU_BF16);
    CHECK_EQ_INT(cu_dtype_parse("fp32", &dt), 0);
    CHECK_EQ_INT(dt, CU_F32);
    CHECK_EQ_INT(cu_dtype_parse("fp16", &dt), CTG_EINVAL);
    CHECK(!strcmp(cu_dtype_name(CU_BF16), "bf16"));
    cu_ctx *c = NULL;
    CHECK_EQ_INT(cu_ctx_new(-7, &c, why, sizeof why), CTG_EINVAL);
    CHECK(c == NULL && why[0]);
    /* Device 0 either opens or says why not (no driver, no device, no
     * cuDNN), without crashing. */
    int rc = cu_ctx_new(0, &c, why, sizeof why);
    printf("cu_ctx_new(0): %d %s\n", rc, rc ? why : "ok");
    if (rc)
        CHECK(c == NULL && why[0] && (rc == CTG_ENOTFOUND || rc == CTG_EINVAL || rc == CTG_EIO));
    cu_ctx_free(c);
    cu_ctx_free(NULL);
    CHECK_EQ_INT(cu_ctx_new(CU_EMULATE, &c, NULL, 0), 0);
    CHECK(cu_ctx_emulated(c));
    CHECK_EQ_INT(cu_ctx_device(c), CU_EMULATE);
    CHECK_EQ_INT(cu_ctx_reset(c), 0);
    cu_ctx_free(c);
    return on_emu(g_memory);
}

static int test_ctx_gpu(void) { return on_gpu(g_memory); }

/* ---- layout and type conversion ---------------------------------------------------------- */

static int g_convert(cu_ctx *c, cu_dtype dt)
{
    const int n = 2, ch = 3;
    const size_t s = 517, N = (size_t)n * ch * s;
    double tol = tol_dt(c, dt);
    float *x = tu_frand(N, -3, 3); /* fp32, rounded by the kernel in bf16 */
    float *xr = tu_fcopy(x, N);
    round_dt(dt, xr, N);
    float *dx = dup_f(c, x, N);
    void *dy = dnew(c, N * cu_dtype_size(dt));
    OK(cu_pack(c, dt, dy, dx, n, ch, s));
    float *got = down_dt(c, dt, dy, N), *ref = to_cl(xr, n, ch, s);
    /* The kernel's bf16 rounding is round-to-nearest-even like f2bf: equal. */
    CMP("pack", got, ref, N, 0.0);
    float *back = dnew(c, N * sizeof(float));
    OK(cu_unpack(c, dt, back, dy, n, ch, s));
    free(got);
    got = down_f(c, back, N);
    CMP("unpack", got, xr, N, 0.0);
    free(got);
    OK(cu_cast_to(c, dt, dy, dx, N));
    got = down_dt(c, dt, dy, N);
    CMP("cast_to", got, xr, N, 0.0);
    free(got);
    OK(cu_cast_from(c, dt, back, dy, N));
    got = down_f(c, back, N);
    CMP("cast_from", got, xr, N, 0.0);
    free(got);
    /* normalise: HU over and under the window; the expressions of model.c. */
    float lo = -160, hi = 240, mid = 0.5f * (lo + hi), rs = 2.0f / (hi - lo);
    float *hu = tu_frand(N, -1200, 1500);
    for (size_t i = 0; i < N; i++) {
        float v = hu[i] < lo ? lo : hu[i] > hi ? hi : hu[i];
        ref[i] = (v - mid) * rs;
    }
    round_dt(dt, ref, N);
    float *dhu = dup_f(c, hu, N);
    OK(cu_normalise(c, dt, dy, dhu, N, lo, hi));
    got = down_dt(c, dt, dy, N);
    CMP("normalise", got, ref, N, tol);
    CHECK_EQ_INT(cu_normalise(c, dt, dy, dhu, N, hi, lo), CTG_EINVAL);
    free(got);
    free(x);
    free(xr);
    free(ref);
    free(hu);
    cu_free(c, dx);
    cu_free(c, dy);
    cu_free(c, back);
    cu_free(c, dhu);
    return 0;
}

static int test_convert_emu(void) { return on_emu(g_convert); }
static int test_convert_gpu(void) { return on_gpu(g_convert); }

/* ---- element-wise ---------------------------------------------------------------------------- */

static int g_eltwise(cu_ctx *c, cu_dtype dt)
{
    const size_t N = 1031;
    const float slope = 0.01f;
    double tol = tol_dt(c, dt);
    size_t es = cu_dtype_size(dt);
    float *x = rand_dt(dt, N, -2, 2), *y = rand_dt(dt, N, -2, 2), *g = rand_dt(dt, N, -1, 1);
    float *d0 = rand_dt(dt, N, -1, 1), *ref = tu_fzero(N), *got;
    void *dx = dup_dt(c, dt, x, N), *dy = dup_dt(c, dt, y, N), *dg = dup_dt(c, dt, g, N);
    void *dout = dnew(c, N * es);

    op_lrelu_forward_cpu(ref, x, N, slope);
    OK(cu_lrelu_forward(c, dt, dout, dx, N, slope));
    got = down_dt(c, dt, dout, N);
    CMP("lrelu forward", got, ref, N, tol);
    free(got);
    void *dxx = dup_dt(c, dt, x, N); /* in place */
    OK(cu_lrelu_forward(c, dt, dxx, dxx, N, slope));
    got = down_dt(c, dt, dxx, N);
    CMP("lrelu forward in place", got, ref, N, tol);
    free(got);

    memcpy(ref, d0, N * sizeof *ref);
    op_lrelu_backward_cpu(ref, g, x, N, slope);
    void *dd = dup_dt(c, dt, d0, N);
    OK(cu_lrelu_backward(c, dt, dd, dg, dx, N, slope));
    OK(cu_lrelu_backward(c, dt, NULL, dg, dx, N, slope));
    got = down_dt(c, dt, dd, N);
    CMP("lrelu backward", got, ref, N, tol);
    free(got);

    op_add_forward_cpu(ref, x, y, N);
    OK(cu_add_forward(c, dt, dout, dx, dy, N));
    got = down_dt(c, dt, dout, N);
    CMP("add", got, ref, N, tol);
    free(got);

    memcpy(ref, d0, N * sizeof *ref);
    op_acc_cpu(ref, g, N);
    cu_free(c, dd);
    dd = dup_dt(c, dt, d0, N);
    OK(cu_acc(c, dt, dd, dg, N));
    got = down_dt(c, dt, dd, N);
    CMP("acc", got, ref, N, tol);
    free(got);

    /* fp32 ReLU rows */
    float *fx = dup_f(c, x, N), *fo = dnew(c, N * 4), *fd = dup_f(c, d0, N), *fg = dup_f(c, g, N);
    op_relu_forward_cpu(ref, x, N);
    OK(cu_relu_forward(c, fo, fx, N));
    got = down_f(c, fo, N);
    CMP("relu forward", got, ref, N, tol32(c));
    free(got);
    memcpy(ref, d0, N * sizeof *ref);
    op_relu_backward_cpu(ref, g, x, N);
    OK(cu_relu_backward(c, fd, fg, fx, N));
    got = down_f(c, fd, N);
    CMP("relu backward", got, ref, N, tol32(c));
    free(got);

    /* concat, channels-last, vs the NCDHW CPU op */
    const int n = 2, ca = 3, cb = 5;
    const size_t s = 211, NA = (size_t)n * ca * s, NB = (size_t)n * cb * s,
                 NO = (size_t)n * (ca + cb) * s;
    float *a = rand_dt(dt, NA, -1, 1), *b = rand_dt(dt, NB, -1, 1);
    float *an = to_nchw(a, n, ca, s), *bn = to_nchw(b, n, cb, s), *on = tu_fzero(NO);
    op_concat_forward_cpu(on, an, bn, n, ca, cb, s);
    float *oref = to_cl(on, n, ca + cb, s);
    void *da = dup_dt(c, dt, a, NA), *db = dup_dt(c, dt, b, NB), *dco = dnew(c, NO * es);
    OK(cu_concat_forward(c, dt, dco, da, db, n, ca, cb, s));
    got = down_dt(c, dt, dco, NO);
    CMP("concat forward", got, oref, NO, 0.0);
    free(got);
    /* backward: dout = random, da/db start random */
    float *go = rand_dt(dt, NO, -1, 1), *gon = to_nchw(go, n, ca + cb, s);
    float *ga0 = rand_dt(dt, NA, -1, 1), *gb0 = rand_dt(dt, NB, -1, 1);
    float *gan = to_nchw(ga0, n, ca, s), *gbn = to_nchw(gb0, n, cb, s);
    op_concat_backward_cpu(gan, gbn, gon, n, ca, cb, s);
    float *garef = to_cl(gan, n, ca, s), *gbref = to_cl(gbn, n, cb, s);
    void *dgo = dup_dt(c, dt, go, NO), *dga = dup_dt(c, dt, ga0, NA), *dgb = dup_dt(c, dt, gb0, NB);
    OK(cu_concat_backward(c, dt, dga, dgb, dgo, n, ca, cb, s));
    got = down_dt(c, dt, dga, NA);
    CMP("concat backward a", got, garef, NA, tol);
    free(got);
    got = down_dt(c, dt, dgb, NB);
    CMP("concat backward b", got, gbref, NB, tol);
    free(got);
    /* only b wanted */
    OK(cu_concat_backward(c, dt, NULL, dgb, dgo, n, ca, cb, s));
    op_concat_backward_cpu(NULL, gbn, gon, n, ca, cb, s);
    free(gbref);
    gbref = to_cl(gbn, n, cb, s);
    got = down_dt(c, dt, dgb, NB);
    CMP("concat backward b only", got, gbref, NB, 2 * tol);
    free(got);

    free(x), free(y), free(g), free(d0), free(ref);
    free(a), free(b), free(an), free(bn), free(on), free(oref), free(go), free(gon);
    free(ga0), free(gb0), free(gan), free(gbn), free(garef), free(gbref);
    return 0;
}

static int test_eltwise_emu(void) { return on_emu(g_eltwise); }
static int test_eltwise_gpu(void) { return on_gpu(g_eltwise); }

/* ---- instance norm ----------------------------------------------------------------------------- */

/* One shape: forward (act or not), backward, and the fused residual end. */
static int inorm_case(cu_ctx *c, cu_dtype dt, int n, int ch, size_t s, int affine, int act)
{
    const float slope = 0.01f;
    const size_t N = (size_t)n * ch * s, nc = (size_t)n * ch, es = cu_dtype_size(dt);
    double tol = tol_dt(c, dt), t32 = tol32(c);
    printf(" n %d c %d s %zu%s%s\n", n, ch, s, affine ? " affine" : "", act ? " act" : "");
    /* An offset mean (HU-like scale after the first conv) tests the two passes. */
    float *x = rand_dt(dt, N, 3, 5), *gam = tu_frand(ch, 0.5, 1.5), *bet = tu_frand(ch, -1, 1);
    const float *G = affine ? gam : NULL, *B = affine ? bet : NULL;
    float *xn = to_nchw(x, n, ch, s), *yn = tu_fzero(N), *mean = tu_fzero(nc), *rstd = tu_fzero(nc);
    op_inorm_forward_cpu(yn, mean, rstd, xn, G, B, n, ch, s);
    if (act) op_lrelu_forward_cpu(yn, yn, N, slope);
    float *yref = to_cl(yn, n, ch, s);
    void *dx = dup_dt(c, dt, x, N), *dy = dnew(c, N * es);
    float *dm = dnew(c, nc * 4), *dr = dnew(c, nc * 4);
    float *dgam = affine ? dup_f(c, gam, ch) : NULL, *dbet = affine ? dup_f(c, bet, ch) : NULL;
    OK(cu_inorm_forward(c, dt, dy, dm, dr, dx, dgam, dbet, n, ch, s, act, slope));
    float *got = down_dt(c, dt, dy, N);
    CMP("inorm forward", got, yref, N, tol);
    free(got);
    got = down_f(c, dm, nc);
    CMP("inorm mean", got, mean, nc, t32);
    free(got);
    got = down_f(c, dr, nc);
    CMP("inorm rstd", got, rstd, nc, t32);
    free(got);

    /* backward: din, dgamma, dbeta start random (backward adds) */
    float *g = rand_dt(dt, N, -1, 1), *d0 = rand_dt(dt, N, -1, 1);
    float *dg0 = tu_frand(ch, -1, 1), *db0 = tu_frand(ch, -1, 1);
    float *gn = to_nchw(g, n, ch, s), *dn = to_nchw(d0, n, ch, s);
    float *dgr = tu_fcopy(dg0, ch), *dbr = tu_fcopy(db0, ch);
    op_inorm_backward_cpu(dn, dgr, dbr, gn, xn, mean, rstd, G, n, ch, s);
    float *dref = to_cl(dn, n, ch, s);
    void *dgd = dup_dt(c, dt, g, N), *ddin = dup_dt(c, dt, d0, N);
    float *ddg = dup_f(c, dg0, ch), *ddb = dup_f(c, db0, ch);
    OK(cu_inorm_backward(c, dt, ddin, ddg, ddb, dgd, dx, dm, dr, dgam, n, ch, s));
    got = down_dt(c, dt, ddin, N);
    CMP("inorm backward din", got, dref, N, tol);
    free(got);
    got = down_f(c, ddg, ch);
    CMP("inorm backward dgamma", got, dgr, ch, t32);
    free(got);
    got = down_f(c, ddb, ch);
    CMP("inorm backward dbeta", got, dbr, ch, t32);
    free(got);
    /* parameter gradients only */
    memcpy(dgr, dg0, ch * 4);
    op_inorm_backward_cpu(NULL, dgr, NULL, gn, xn, mean, rstd, G, n, ch, s);
    OK(cu_upload(c, ddg, dg0, ch * 4));
    OK(cu_inorm_backward(c, dt, NULL, ddg, NULL, dgd, dx, dm, dr, dgam, n, ch, s));
    got = down_f(c, ddg, ch);
    CMP("inorm backward dgamma only", got, dgr, ch, t32);
    free(got);

    /* out = lrelu(inorm(h2) + inorm(hs)) */
    float *hs = rand_dt(dt, N, -2, 1), *hsn = to_nchw(hs, n, ch, s);
    float *ysn = tu_fzero(N), *ms = tu_fzero(nc), *rs = tu_fzero(nc), *y2n = tu_fzero(N);
    float *gs = tu_frand(ch, 0.5, 1.5);
    op_inorm_forward_cpu(y2n, mean, rstd, xn, G, B, n, ch, s);
    op_inorm_forward_cpu(ysn, ms, rs, hsn, gs, NULL, n, ch, s);
    op_add_forward_cpu(y2n, y2n, ysn, N);
    op_lrelu_forward_cpu(y2n, y2n, N, slope);
    free(yref);
    yref = to_cl(y2n, n, ch, s);
    void *dhs = dup_dt(c, dt, hs, N);
    float *dms = dnew(c, nc * 4), *drs = dnew(c, nc * 4), *dgs = dup_f(c, gs, ch);
    OK(cu_inorm_add_lrelu_forward(c, dt, dy, dm, dr, dx, dgam, dbet, dms, drs, dhs, dgs, NULL, n,
                                  ch, s, slope));
    got = down_dt(c, dt, dy, N);
    CMP("inorm+add+lrelu", got, yref, N, tol);
    free(got);
    got = down_f(c, dm, nc);
    CMP("inorm+add+lrelu mean 2", got, mean, nc, t32);
    free(got);
    got = down_f(c, drs, nc);
    CMP("inorm+add+lrelu rstd s", got, rs, nc, t32);
    free(got);
    got = down_f(c, dms, nc);
    CMP("inorm+add+lrelu mean s", got, ms, nc, t32);
    free(got);

    free(x), free(gam), free(bet), free(xn), free(yn), free(mean), free(rstd), free(yref);
    free(g), free(d0), free(dg0), free(db0), free(gn), free(dn), free(dgr), free(dbr), free(dref);
    free(hs), free(hsn), free(ysn), free(ms), free(rs), free(y2n), free(gs);
    cu_free(c, dx), cu_free(c, dy), cu_free(c, dm), cu_free(c, dr), cu_free(c, dgam);
    cu_free(c, dbet), cu_free(c, dgd), cu_free(c, ddin), cu_free(c, ddg), cu_free(c, ddb);
    cu_free(c, dhs), cu_free(c, dms), cu_free(c, drs), cu_free(c, dgs);
    return 0;
}

static int g_inorm(cu_ctx *c, cu_dtype dt)
{
    if (inorm_case(c, dt, 2, 3, 517, 1, 1)) return 1;
    if (inorm_case(c, dt, 2, 5, 517, 0, 0)) return 1;
    if (inorm_case(c, dt, 3, 2, 301, 1, 0)) return 1; /* C divides 32: warp shuffles on the GPU */
    if (inorm_case(c, dt, 1, 40, 97, 1, 1)) return 1; /* more channels than emulated threads */
    return 0;
}

static int test_inorm_emu(void) { return on_emu(g_inorm); }
static int test_inorm_gpu(void) { return on_gpu(g_inorm); }

/* ---- softmax, cross-entropy, Dice, argmax ------------------------------------------------------ */

/* Labels 0..k (k: not counted), in runs, some `ignore`. */
static uint8_t *rand_labels(size_t n, int k)
{
    uint8_t *l = malloc(n);
    if (!l) abort();
    for (size_t i = 0; i < n;) {
        uint8_t y = (uint8_t)(tu_urand() * (k + 1));
        size_t run = 1 + (size_t)(tu_urand() * 9);
        for (; run && i < n; run--, i++) l[i] = y;
    }
    return l;
}

static int loss_case(cu_ctx *c, cu_dtype dt, int n, int k, size_t s, int ignore, int first)
{
    const size_t N = (size_t)n * k * s, NV = (size_t)n * s, es = cu_dtype_size(dt);
    double tol = tol_dt(c, dt), t32 = tol32(c);
    printf(" n %d k %d s %zu ignore %d first %d\n", n, k, s, ignore, first);
    float *x = rand_dt(dt, N, -3, 3), *xn = to_nchw(x, n, k, s);
    uint8_t *lab = rand_labels(NV, k);
    float *pn = tu_fzero(N);
    void *dx = dup_dt(c, dt, x, N);
    uint8_t *dlab = dup_bytes(c, lab, NV);
    float *dp = dnew(c, N * 4), *dloss = dnew(c, 4);

    /* softmax forward and backward */
    op_softmax_forward_cpu(pn, xn, n, k, s);
    float *pref = to_cl(pn, n, k, s);
    OK(cu_softmax_forward(c, dt, dp, dx, n, k, s));
    float *got = down_f(c, dp, N);
    CMP("softmax forward", got, pref, N, t32);
    free(got);
    float *gp = tu_frand(N, -1, 1), *gpn = to_nchw(gp, n, k, s);
    float *d0 = rand_dt(dt, N, -1, 1), *dn = to_nchw(d0, n, k, s);
    op_softmax_backward_cpu(dn, gpn, pn, n, k, s);
    float *dref = to_cl(dn, n, k, s);
    float *dgp = dup_f(c, gp, N);
    void *ddl = dup_dt(c, dt, d0, N);
    OK(cu_softmax_backward(c, dt, ddl, dgp, dp, n, k, s));
    got = down_dt(c, dt, ddl, N);
    CMP("softmax backward", got, dref, N, tol);
    free(got);

    /* cross-entropy */
    float lref = -1;
    CHECK_EQ_INT(op_softmax_ce_forward_cpu(&lref, pn, xn, lab, NULL, ignore, n, k, s), 0);
    OK(cu_softmax_ce_forward(c, dt, dloss, dp, dx, dlab, ignore, n, k, s));
    float l = dscalar(c, dloss);
    printf("  ce loss %.7f ref %.7f\n", l, lref);
    CHECK(fabs(l - lref) <= t32 * fabs(lref));
    got = down_f(c, dp, N);
    CMP("ce prob", got, pref, N, t32);
    free(got);
    free(dn);
    dn = to_nchw(d0, n, k, s);
    op_softmax_ce_backward_cpu(dn, 0.7f, pn, lab, NULL, ignore, n, k, s);
    free(dref);
    dref = to_cl(dn, n, k, s);
    cu_free(c, ddl);
    ddl = dup_dt(c, dt, d0, N);
    OK(cu_softmax_ce_backward(c, dt, ddl, 0.7f, dp, dlab, ignore, n, k, s));
    got = down_dt(c, dt, ddl, N);
    CMP("ce backward", got, dref, N, tol);
    free(got);

    /* Dice on the CPU's probabilities (uploaded) */
    float *dpr = dup_f(c, pref, N);
    CHECK_EQ_INT(op_dice_forward_cpu(&lref, pn, lab, ignore, first, n, k, s), 0);
    OK(cu_dice_forward(c, dloss, dpr, dlab, ignore, first, n, k, s));
    l = dscalar(c, dloss);
    printf("  dice loss %.7f ref %.7f\n", l, lref);
    CHECK(fabs(l - lref) <= t32 * fabs(lref) + 1e-7);
    float *q0 = tu_frand(N, -1, 1), *qn = to_nchw(q0, n, k, s);
    CHECK_EQ_INT(op_dice_backward_cpu(qn, 1.3f, pn, lab, ignore, first, n, k, s), 0);
    float *qref = to_cl(qn, n, k, s), *dq = dup_f(c, q0, N);
    OK(cu_dice_backward(c, dq, 1.3f, dpr, dlab, ignore, first, n, k, s));
    got = down_f(c, dq, N);
    CMP("dice backward", got, qref, N, t32);
    free(got);

    /* argmax, with ties (integer scores) */
    float *t = tu_fzero(N);
    for (size_t i = 0; i < N; i++) t[i] = (float)(int)(tu_urand() * 4) - 2;
    float *tn = to_nchw(t, n, k, s);
    uint8_t *aref = malloc(NV), *agot = malloc(NV);
    op_argmax_cpu(aref, tn, n, k, s);
    void *dt_ = dup_dt(c, dt, t, N);
    float *df = dup_f(c, t, N);
    OK(cu_argmax(c, dt, dlab, dt_, n, k, s));
    down_bytes(c, agot, dlab, NV);
    CHECK(!memcmp(agot, aref, NV));
    memset(agot, 0xee, NV);
    OK(cu_argmax_f32(c, dlab, df, n, k, s));
    down_bytes(c, agot, dlab, NV);
    CHECK(!memcmp(agot, aref, NV));
    printf("  argmax equal\n");

    free(x), free(xn), free(lab), free(pn), free(pref), free(gp), free(gpn), free(d0), free(dn);
    free(dref), free(q0), free(qn), free(qref), free(t), free(tn), free(aref), free(agot);
    cu_free(c, dx), cu_free(c, dlab), cu_free(c, dp), cu_free(c, dloss), cu_free(c, dgp);
    cu_free(c, ddl), cu_free(c, dpr), cu_free(c, dq), cu_free(c, dt_), cu_free(c, df);
    (void)es;
    return 0;
}

static int g_loss(cu_ctx *c, cu_dtype dt)
{
    if (loss_case(c, dt, 2, 5, 517, 2, 1)) return 1;
    if (loss_case(c, dt, 1, 3, 301, -1, 0)) return 1;
    if (loss_case(c, dt, 2, 33, 67, 0, 1)) return 1;
    /* Nothing counted: both losses 0 and the backwards add nothing. */
    const int n = 1, k = 3;
    const size_t s = 50, N = (size_t)n * k * s;
    uint8_t lab[50];
    memset(lab, 7, sizeof lab);
    float *x = rand_dt(dt, N, -1, 1), *d0 = rand_dt(dt, N, -1, 1);
    void *dx = dup_dt(c, dt, x, N), *dd = dup_dt(c, dt, d0, N);
    uint8_t *dlab = dup_bytes(c, lab, s);
    float *dp = dnew(c, N * 4), *dl = dnew(c, 4);
    OK(cu_softmax_ce_forward(c, dt, dl, dp, dx, dlab, -1, n, k, s));
    CHECK(dscalar(c, dl) == 0.0f);
    OK(cu_dice_forward(c, dl, dp, dlab, -1, 0, n, k, s));
    CHECK(dscalar(c, dl) == 0.0f);
    OK(cu_softmax_ce_backward(c, dt, dd, 1.0f, dp, dlab, -1, n, k, s));
    float *got = down_dt(c, dt, dd, N);
    CHECK(!memcmp(got, d0, N * 4));
    CHECK_EQ_INT(cu_softmax_ce_forward(c, dt, dl, dp, dx, dlab, -1, n, 257, s), CTG_EINVAL);
    free(x), free(d0), free(got);
    cu_free(c, dx), cu_free(c, dd), cu_free(c, dlab), cu_free(c, dp), cu_free(c, dl);
    return 0;
}

static int test_loss_emu(void) { return on_emu(g_loss); }
static int test_loss_gpu(void) { return on_gpu(g_loss); }

/* ---- organ pooling ------------------------------------------------------------------------------- */

static int pool_case(cu_ctx *c, cu_dtype dt, int n, int k, int ch, size_t s, int runs)
{
    const size_t N = (size_t)n * ch * s, NO = (size_t)n * k * ch, NV = (size_t)n * s;
    double tol = tol_dt(c, dt), t32 = tol32(c);
    printf(" n %d k %d c %d s %zu%s\n", n, k, ch, s, runs ? " runs" : " scattered");
    float *f = rand_dt(dt, N, -2, 2), *fn = to_nchw(f, n, ch, s);
    uint8_t *lab;
    if (runs) {
        lab = rand_labels(NV, k < 255 ? k + 1 : 255);
    } else {
        lab = malloc(NV);
        for (size_t i = 0; i < NV; i++) lab[i] = (uint8_t)(tu_urand() * 256);
    }
    float *oref = tu_fzero(NO);
    int64_t *cref = calloc(n * k, 8), *cgot = calloc(n * k, 8);
    for (int b = 0; b < n; b++)
        op_mpool_forward_cpu(oref + (size_t)b * k * ch, cref + (size_t)b * k,
                             fn + (size_t)b * ch * s, lab + (size_t)b * s, k, ch, s);
    void *df = dup_dt(c, dt, f, N);
    uint8_t *dlab = dup_bytes(c, lab, NV);
    float *dout = dnew(c, NO * 4);
    int64_t *dcnt = dnew(c, n * k * 8);
    OK(cu_mpool_forward(c, dt, dout, dcnt, df, dlab, n, k, ch, s));
    float *got = down_f(c, dout, NO);
    CMP("mpool forward", got, oref, NO, t32);
    free(got);
    down_bytes(c, cgot, dcnt, n * k * 8);
    CHECK(!memcmp(cgot, cref, n * k * 8));
    float *ff = dup_f(c, f, N);
    OK(cu_mpool_forward_f32(c, dout, dcnt, ff, dlab, n, k, ch, s));
    got = down_f(c, dout, NO);
    CMP("mpool forward f32", got, oref, NO, t32);
    free(got);
    memset(cgot, 0, n * k * 8);
    down_bytes(c, cgot, dcnt, n * k * 8);
    CHECK(!memcmp(cgot, cref, n * k * 8));

    /* backward, dfeat starting random */
    float *g = tu_frand(NO, -1, 1), *d0 = rand_dt(dt, N, -1, 1), *dn = to_nchw(d0, n, ch, s);
    for (int b = 0; b < n; b++)
        op_mpool_backward_cpu(dn + (size_t)b * ch * s, g + (size_t)b * k * ch,
                              cref + (size_t)b * k, lab + (size_t)b * s, k, ch, s);
    float *dref = to_cl(dn, n, ch, s), *dg = dup_f(c, g, NO);
    void *dd = dup_dt(c, dt, d0, N);
    OK(cu_mpool_backward(c, dt, dd, dg, dcnt, dlab, n, k, ch, s));
    got = down_dt(c, dt, dd, N);
    CMP("mpool backward", got, dref, N, tol);
    free(got);

    /* max pooling into rows of stride ch + 2, exact: the values are the
     * same numbers on both sides and ties go to the first voxel */
    {
        int ld = ch + 2;
        size_t NL = (size_t)n * k * ld;
        float *xref = tu_fzero(NL), *xg;
        int64_t *aref = calloc(NO, 8), *agot = calloc(NO, 8);
        for (int b = 0; b < n; b++)
            op_xpool_forward_ref(xref + (size_t)b * k * ld, ld, aref + (size_t)b * k * ch,
                                 fn + (size_t)b * ch * s, lab + (size_t)b * s, k, ch, s);
        float *dx = dnew(c, NL * 4);
        int64_t *darg = dnew(c, NO * 8);
        OK(cu_zero(c, dx, NL * 4));
        OK(cu_xpool_forward(c, dt, dx, ld, darg, df, dlab, n, k, ch, s));
        xg = down_f(c, dx, NL);
        CMP("xpool forward", xg, xref, NL, 0.0);
        free(xg);
        down_bytes(c, agot, darg, NO * 8);
        CHECK(!memcmp(agot, aref, NO * 8));
        OK(cu_zero(c, dx, NL * 4));
        OK(cu_xpool_forward_f32(c, dx, ld, darg, ff, dlab, n, k, ch, s));
        xg = down_f(c, dx, NL);
        CMP("xpool forward f32", xg, xref, NL, 0.0);
        free(xg);
        memset(agot, 0, NO * 8);
        down_bytes(c, agot, darg, NO * 8);
        CHECK(!memcmp(agot, aref, NO * 8));
        /* backward onto a random dfeat */
        float *gx = tu_frand(NL, -1, 1), *e0 = rand_dt(dt, N, -1, 1), *en = to_nchw(e0, n, ch, s);
        for (int b = 0; b < n; b++)
            op_xpool_backward_cpu(en + (size_t)b * ch * s, gx + (size_t)b * k * ld, ld,
                                  aref + (size_t)b * k * ch, k, ch, s);
        float *eref = to_cl(en, n, ch, s), *dgx = dup_f(c, gx, NL);
        void *de = dup_dt(c, dt, e0, N);
        OK(cu_xpool_backward(c, dt, de, dgx, ld, darg, n, k, ch, s));
        xg = down_dt(c, dt, de, N);
        CMP("xpool backward", xg, eref, N, tol);
        free(xg), free(xref), free(aref), free(agot), free(gx), free(e0), free(en), free(eref);
        cu_free(c, dx), cu_free(c, darg), cu_free(c, dgx), cu_free(c, de);
    }

    /* absent rows: zero where count is 0 */
    float *x = tu_frand(NO, 1, 2), *xref = tu_fcopy(x, NO), *dxr = dup_f(c, x, NO);
    int absent = 0;
    for (size_t r = 0; r < (size_t)n * k; r++)
        if (!cref[r]) {
            absent++;
            memset(xref + r * ch, 0, ch * 4);
        }
    OK(cu_zero_absent_rows(c, dxr, dcnt, n * k, ch));
    got = down_f(c, dxr, NO);
    printf("  %d absent rows\n", absent);
    CMP("zero absent rows", got, xref, NO, 0.0);
    free(got);

    free(f), free(fn), free(lab), free(oref), free(cref), free(cgot), free(g), free(d0);
    free(dn), free(dref), free(x), free(xref);
    cu_free(c, df), cu_free(c, dlab), cu_free(c, dout), cu_free(c, dcnt), cu_free(c, ff);
    cu_free(c, dg), cu_free(c, dd), cu_free(c, dxr);
    return 0;
}

static int g_pool(cu_ctx *c, cu_dtype dt)
{
    if (pool_case(c, dt, 2, 7, 3, 517, 1)) return 1;
    if (pool_case(c, dt, 2, 9, 5, 301, 1)) return 1;
    if (pool_case(c, dt, 1, 4, 8, 211, 1)) return 1;
    if (pool_case(c, dt, 2, 260, 3, 400, 0)) return 1; /* rows from 256 on stay empty */
    return 0;
}

static int test_pool_emu(void) { return on_emu(g_pool); }
static int test_pool_gpu(void) { return on_gpu(g_pool); }

/* ---- rows: L2 norm, InfoNCE (fp32; run once) -------------------------------------------------- */

static int g_rows(cu_ctx *c, cu_dtype dt)
{
    if (dt != CU_F32) return 0;
    double t32 = tol32(c);
    /* L2 norm with a zero row (below eps) */
    const int rows = 7, dim = 37;
    const size_t N = (size_t)rows * dim;
    float *x = tu_frand(N, -1, 1);
    memset(x + 2 * dim, 0, dim * 4);
    float *y = tu_fzero(N), *nrm = tu_fzero(rows), *got;
    op_l2norm_forward_cpu(y, nrm, x, rows, dim);
    float *dx = dup_f(c, x, N), *dy = dnew(c, N * 4), *dn = dnew(c, rows * 4);
    OK(cu_l2norm_forward(c, dy, dn, dx, rows, dim));
    got = down_f(c, dy, N);
    CMP("l2norm forward", got, y, N, t32);
    free(got);
    got = down_f(c, dn, rows);
    CMP("l2norm norm", got, nrm, rows, t32);
    free(got);
    float *g = tu_frand(N, -1, 1), *d0 = tu_frand(N, -1, 1), *dref = tu_fcopy(d0, N);
    memset(g + 2 * dim, 0, dim * 4); /* the zero row's gradient would be 1e12 */
    op_l2norm_backward_cpu(dref, g, y, nrm, rows, dim);
    float *dg = dup_f(c, g, N), *dd = dup_f(c, d0, N);
    OK(cu_l2norm_backward(c, dd, dg, dy, dn, rows, dim));
    got = down_f(c, dd, N);
    CMP("l2norm backward", got, dref, N, t32);
    free(got);

    /* InfoNCE: pos with a skipped row, a mask */
    const int r = 6, m = 9, e = 13;
    const float tau = 0.07f;
    float *a = tu_frand((size_t)r * e, -1, 1), *b = tu_frand((size_t)m * e, -1, 1);
    int pos[6] = {3, 0, -1, 8, 5, 5};
    uint8_t mask[6 * 9] = {0};
    mask[0 * 9 + 1] = mask[0 * 9 + 7] = mask[4 * 9 + 0] = mask[5 * 9 + 4] = 1;
    float *pref = tu_fzero((size_t)r * m), lref = 0;
    CHECK_EQ_INT(op_infonce_forward_cpu(&lref, pref, a, b, pos, mask, r, m, e, tau), 0);
    float *da = dup_f(c, a, (size_t)r * e), *db = dup_f(c, b, (size_t)m * e);
    int *dpos = dup_bytes(c, pos, sizeof pos);
    uint8_t *dmask = dup_bytes(c, mask, sizeof mask);
    float *dp = dnew(c, (size_t)r * m * 4), *dl = dnew(c, 4);
    OK(cu_infonce_forward(c, dl, dp, da, db, dpos, dmask, r, m, e, tau));
    float l = dscalar(c, dl);
    printf("  infonce loss %.7f ref %.7f\n", l, lref);
    CHECK(fabs(l - lref) <= t32 * fabs(lref));
    got = down_f(c, dp, (size_t)r * m);
    CMP("infonce prob", got, pref, (size_t)r * m, t32);
    free(got);
    float *ga0 = tu_frand((size_t)r * e, -1, 1), *gb0 = tu_frand((size_t)m * e, -1, 1);
    float *garef = tu_fcopy(ga0, (size_t)r * e), *gbref = tu_fcopy(gb0, (size_t)m * e);
    op_infonce_backward_cpu(garef, gbref, 0.9f, pref, a, b, pos, r, m, e, tau);
    float *dga = dup_f(c, ga0, (size_t)r * e), *dgb = dup_f(c, gb0, (size_t)m * e);
    OK(cu_infonce_backward(c, dga, dgb, 0.9f, dp, da, db, dpos, r, m, e, tau));
    got = down_f(c, dga, (size_t)r * e);
    CMP("infonce backward a", got, garef, (size_t)r * e, t32);
    free(got);
    got = down_f(c, dgb, (size_t)m * e);
    CMP("infonce backward b", got, gbref, (size_t)m * e, t32);
    free(got);
    /* pos and mask NULL (row i's positive is column i) */
    CHECK_EQ_INT(op_infonce_forward_cpu(&lref, pref, a, b, NULL, NULL, r, m, e, tau), 0);
    OK(cu_infonce_forward(c, dl, dp, da, db, NULL, NULL, r, m, e, tau));
    l = dscalar(c, dl);
    CHECK(fabs(l - lref) <= t32 * fabs(lref));
    memcpy(garef, ga0, (size_t)r * e * 4);
    op_infonce_backward_cpu(garef, NULL, 0.5f, pref, a, b, NULL, r, m, e, tau);
    OK(cu_upload(c, dga, ga0, (size_t)r * e * 4));
    OK(cu_infonce_backward(c, dga, NULL, 0.5f, dp, da, db, NULL, r, m, e, tau));
    got = down_f(c, dga, (size_t)r * e);
    CMP("infonce backward a (no pos)", got, garef, (size_t)r * e, t32);
    free(got);
    /* A masked positive: the CPU refuses, the device gives a NaN loss. */
    mask[1 * 9 + 0] = 1;
    OK(cu_upload(c, dmask, mask, sizeof mask));
    OK(cu_infonce_forward(c, dl, dp, da, db, dpos, dmask, r, m, e, tau));
    l = dscalar(c, dl);
    CHECK(l != l);
    CHECK_EQ_INT(cu_infonce_forward(c, dl, dp, da, db, dpos, dmask, r, m, e, 0.0f), CTG_EINVAL);

    free(x), free(y), free(nrm), free(g), free(d0), free(dref), free(a), free(b), free(pref);
    free(ga0), free(gb0), free(garef), free(gbref);
    cu_free(c, dx), cu_free(c, dy), cu_free(c, dn), cu_free(c, dg), cu_free(c, dd);
    cu_free(c, da), cu_free(c, db), cu_free(c, dpos), cu_free(c, dmask), cu_free(c, dp);
    cu_free(c, dl), cu_free(c, dga), cu_free(c, dgb);
    return 0;
}

static int test_rows_emu(void) { return on_emu(g_rows); }
static int test_rows_gpu(void) { return on_gpu(g_rows); }

/* ---- optimizer (fp32; run once) --------------------------------------------------------------- */

static int g_optim(cu_ctx *c, cu_dtype dt)
{
    if (dt != CU_F32) return 0;
    double t32 = tol32(c);
    const size_t N = 100003; /* several parts of the reductions on the GPU too */
    float *p = tu_frand(N, -1, 1), *g = tu_frand(N, -0.1f, 0.1f);
    float *m = tu_frand(N, -0.01f, 0.01f), *v = tu_frand(N, 0, 1e-4f);
    op_adamw_cfg cfg = op_adamw_defaults();
    cfg.lr = 3e-3f;
    cfg.warmup_steps = 5;
    cfg.total_steps = 50;
    float *dp = dup_f(c, p, N), *dg = dup_f(c, g, N), *dm = dup_f(c, m, N), *dv = dup_f(c, v, N);
    for (long t = 1; t <= 7; t++) {
        op_adamw_step_cpu(p, g, m, v, N, t, &cfg);
        OK(cu_adamw_step(c, dp, dg, dm, dv, N, t, &cfg));
    }
    float *got = down_f(c, dp, N);
    CMP("adamw params", got, p, N, t32);
    free(got);
    got = down_f(c, dm, N);
    CMP("adamw m", got, m, N, t32);
    free(got);
    got = down_f(c, dv, N);
    CMP("adamw v", got, v, N, t32);
    free(got);

    float *dss = dnew(c, 4);
    OK(cu_sumsq(c, dss, dg, N));
    double ref = op_grad_norm_cpu(g, N), ss = dscalar(c, dss);
    printf("  sumsq %.9g ref %.9g\n", ss, ref * ref);
    CHECK(fabs(ss - ref * ref) <= 1e-6 * ref * ref);
    OK(cu_sumsq(c, dss, dg, 0));
    CHECK(dscalar(c, dss) == 0.0f);

    op_scale_cpu(g, N, 0.37f);
    OK(cu_scale(c, dg, N, 0.37f));
    got = down_f(c, dg, N);
    CMP("scale", got, g, N, 0.0);
    free(got);
    free(p), free(g), free(m), free(v);
    cu_free(c, dp), cu_free(c, dg), cu_free(c, dm), cu_free(c, dv), cu_free(c, dss);
    return 0;
}

static int test_optim_emu(void) { return on_emu(g_optim); }
static int test_optim_gpu(void) { return on_gpu(g_optim); }

/* ---- sliding windows ----------------------------------------------------------------------------- */

static int window_case(cu_ctx *c, cu_dtype dt, int x0, int y0, int z0)
{
    const int nx = 13, ny = 11, nz = 9, pw = 8, ph = 6, pd = 5, ch = 3;
    const size_t V = (size_t)nx * ny * nz, S = (size_t)pw * ph * pd;
    const float fill = -1000;
    double tol = tol_dt(c, dt), t32 = tol32(c);
    printf(" window at %d %d %d\n", x0, y0, z0);
    float *vol = tu_frand(V, -100, 100), *wref = tu_fzero(S);
    for (int z = 0; z < pd; z++)
        for (int y = 0; y < ph; y++)
            for (int x = 0; x < pw; x++) {
                int gx = x0 + x, gy = y0 + y, gz = z0 + z;
                int in = gx >= 0 && gx < nx && gy >= 0 && gy < ny && gz >= 0 && gz < nz;
                wref[((size_t)z * ph + y) * pw + x] =
                    in ? vol[((size_t)gz * ny + gy) * nx + gx] : fill;
            }
    float *dvol = dup_f(c, vol, V), *dwin = dnew(c, S * 4);
    OK(cu_window_load(c, dwin, dvol, nx, ny, nz, x0, y0, z0, pw, ph, pd, fill));
    float *got = down_f(c, dwin, S);
    CMP("window load", got, wref, S, 0.0);
    free(got);

    float *win = rand_dt(dt, S * ch, -1, 1), *acc = tu_frand(V * ch, -1, 1);
    float *ws = tu_frand(V, 0, 3), *aref = tu_fcopy(acc, V * ch), *wsref = tu_fcopy(ws, V);
    for (int z = 0; z < pd; z++)
        for (int y = 0; y < ph; y++)
            for (int x = 0; x < pw; x++) {
                int gx = x0 + x, gy = y0 + y, gz = z0 + z;
                if (gx < 0 || gx >= nx || gy < 0 || gy >= ny || gz < 0 || gz >= nz) continue;
                size_t gv = ((size_t)gz * ny + gy) * nx + gx, wv = ((size_t)z * ph + y) * pw + x;
                for (int k = 0; k < ch; k++) aref[gv * ch + k] += win[wv * ch + k];
                wsref[gv] += 1;
            }
    void *dw = dup_dt(c, dt, win, S * ch);
    float *dacc = dup_f(c, acc, V * ch), *dws = dup_f(c, ws, V);
    OK(cu_window_acc(c, dt, dacc, dws, dw, ch, nx, ny, nz, x0, y0, z0, pw, ph, pd));
    got = down_f(c, dacc, V * ch);
    CMP("window acc", got, aref, V * ch, t32);
    free(got);
    got = down_f(c, dws, V);
    CMP("window acc wsum", got, wsref, V, 0.0);
    free(got);
    OK(cu_window_acc(c, dt, dacc, NULL, dw, ch, nx, ny, nz, x0, y0, z0, pw, ph, pd));

    /* div_rows, with a voxel no window covered */
    wsref[5] = 0;
    OK(cu_upload(c, dws, wsref, V * 4));
    OK(cu_upload(c, dacc, aref, V * ch * 4));
    for (size_t v = 0; v < V; v++)
        if (wsref[v] > 0) {
            float inv = 1.0f / wsref[v];
            for (int k = 0; k < ch; k++) aref[v * ch + k] *= inv;
        }
    OK(cu_div_rows(c, dacc, dws, V, ch));
    got = down_f(c, dacc, V * ch);
    CMP("div rows", got, aref, V * ch, t32);
    free(got);
    (void)tol;
    free(vol), free(wref), free(win), free(acc), free(ws), free(aref), free(wsref);
    cu_free(c, dvol), cu_free(c, dwin), cu_free(c, dw), cu_free(c, dacc), cu_free(c, dws);
    return 0;
}

static int g_window(cu_ctx *c, cu_dtype dt)
{
    if (window_case(c, dt, 9, -2, 6)) return 1; /* clipped on three sides */
    if (window_case(c, dt, 0, 0, 0)) return 1;
    if (window_case(c, dt, 3, 4, 2)) return 1;  /* inside */
    return 0;
}

static int test_window_emu(void) { return on_emu(g_window); }
static int test_window_gpu(void) { return on_gpu(g_window); }

const test_case cuops_tests[] = {
    {"cuops_ctx_emu", test_ctx_emu, 0},
    {"cuops_ctx_gpu", test_ctx_gpu, 0},
    {"cuops_convert_emu", test_convert_emu, 0},
    {"cuops_convert_gpu", test_convert_gpu, 0},
    {"cuops_eltwise_emu", test_eltwise_emu, 0},
    {"cuops_eltwise_gpu", test_eltwise_gpu, 0},
    {"cuops_inorm_emu", test_inorm_emu, 0},
    {"cuops_inorm_gpu", test_inorm_gpu, 0},
    {"cuops_loss_emu", test_loss_emu, 0},
    {"cuops_loss_gpu", test_loss_gpu, 0},
    {"cuops_pool_emu", test_pool_emu, 0},
    {"cuops_pool_gpu", test_pool_gpu, 0},
    {"cuops_rows_emu", test_rows_emu, 0},
    {"cuops_rows_gpu", test_rows_gpu, 0},
    {"cuops_optim_emu", test_optim_emu, 0},
    {"cuops_optim_gpu", test_optim_gpu, 0},
    {"cuops_window_emu", test_window_emu, 0},
    {"cuops_window_gpu", test_window_gpu, 0},
    {NULL, NULL, 0},
};
