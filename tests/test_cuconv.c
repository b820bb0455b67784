/*
 * test_cuconv.c - the convolutions (cuDNN) and dense layers (cuBLAS) of
 * cuda/cuops.h against the plain-loop references of core/ops.h.
 *
 * Every comparison runs twice: in the CU_EMULATE context (always; the
 * convolutions there are oneDNN through op_conv, so this checks the
 * layout conversions, the weight index algebra of cu_conv_prepare and of
 * the weight-gradient accumulation, the bias kernels and the bf16
 * rounding), and on device 0 when there is one (cuDNN and cuBLAS
 * themselves: descriptors, filter layout, the transposed conv's roles),
 * skipped with the reason otherwise.
 *
 * Geometries: every kind ops.h supports (k3s1, k3s2, k1s1, k1s2, the k2s2
 * transposed conv) with odd channel counts, n = 2, odd and uneven small
 * spatial sizes (stride 2 on odd sizes), and one input channel (the first
 * layer).  Inputs, weights and dout are rounded to bf16 on the host for the
 * bf16 runs, so the reference sees exactly the values the device sees.
 *
 * Error measure ("rel"): max_i |got_i - ref_i| / max_i |ref_i|.
 *   fp32: rel <= 1e-4 (fp32 accumulation in another order than the
 *         double reference; no TF32 anywhere);
 *   bf16: rel <= 1e-2 for out, din and dw: the results are stored in bf16
 *         (relative step 2^-8, the bias added after a first rounding, din
 *         and the dw buffer rounded once more), i.e. <= ~3 * 2^-9 of the
 *         largest entry, while a wrong index gives errors of order 1;
 *         db (fp32 sums of bf16 dout) 1e-4.
 * Gradients are checked as "adds into": din, dw, db start from non-zero
 * values and must end at start + gradient.
 */
#include "tests.h"

#include "core/core.h"
#include "core/ops.h"
#include "cuda/cuops.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Test hook of cuda/cuconv.cu (not in cuops.h): algorithm searches and
 * cache hits so far in this process.  Weak: absent in builds without CUDA. */
void cu__conv_cache_stats(long *searches, long *hits) __attribute__((weak));

/* ---- host helpers ----------------------------------------------------------------------- */

/* fp32 -> bf16 bits, round to nearest even (finite inputs). */
static float bfround(float f) { return tu_bf2f(tu_f2bf(f)); }

static void round_dt(float *x, size_t n, cu_dtype dt)
{
    if (dt == CU_BF16)
        for (size_t i = 0; i < n; i++) x[i] = bfround(x[i]);
}

/* fp32 NCDHW -> host image of a dt [n][s][ch] device array. */
static void *to_cl(const float *x, int n, int ch, size_t s, cu_dtype dt)
{
    size_t cnt = (size_t)n * ch * s;
    void *buf = malloc(cnt * cu_dtype_size(dt) + 1);
    if (!buf) abort();
    for (int b = 0; b < n; b++)
        for (size_t v = 0; v < s; v++)
            for (int k = 0; k < ch; k++) {
                float f = x[((size_t)b * ch + k) * s + v];
                size_t i = ((size_t)b * s + v) * ch + k;
                if (dt == CU_BF16)
                    ((uint16_t *)buf)[i] = tu_f2bf(f);
                else
                    ((float *)buf)[i] = f;
            }
    return buf;
}

/* Host image of dt [n][s][ch] -> fp32 NCDHW (new array). */
static float *from_cl(const void *buf, int n, int ch, size_t s, cu_dtype dt)
{
    float *x = tu_fzero((size_t)n * ch * s);
    for (int b = 0; b < n; b++)
        for (size_t v = 0; v < s; v++)
            for (int k = 0; k < ch; k++) {
                size_t i = ((size_t)b * s + v) * ch + k;
                x[((size_t)b * ch + k) * s + v] =
                    dt == CU_BF16 ? tu_bf2f(((const uint16_t *)buf)[i]) : ((const float *)buf)[i];
            }
    return x;
}

static double rel_err(const float *got, const float *ref, size_t n)
{
    double e = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (!(d <= e)) e = d; /* NaN propagates */
        if (fabs(ref[i]) > m) m = fabs(ref[i]);
    }
    return m > 0 ? e / m : e;
}

#define CHECK_REL(what, got, ref, n, tol)                                      \
    do {                                                                       \
        double r_ = rel_err((got), (ref), (n));                                \
        if (!(r_ <= (tol))) {                                                  \
            fprintf(stderr, "%s:%d: %s: rel %.3g > %.3g\n", __FILE__, __LINE__, \
                    (what), r_, (double)(tol));                                \
            return 1;                                                          \
        }                                                                      \
    } while (0)

/* Device buffer with a copy of host bytes. */
static void *dev_up(cu_ctx *c, const void *h, size_t bytes)
{
    void *d = NULL;
    if (cu_malloc(c, &d, bytes)) return NULL;
    if (h && cu_upload(c, d, h, bytes)) {
        cu_free(c, d);
        return NULL;
    }
    return d;
}

/* ---- the convolution cases -------------------------------------------------------------- */

typedef struct conv_case {
    const char *name;
    op_conv_geom g;
} conv_case;

static conv_case conv_cases(int i)
{
    switch (i) {
    case 0: return (conv_case){"k3s1", op_conv_geom_make(2, 3, 5, 4, 6, 8, 3, 1)};
    case 1: return (conv_case){"k3s2 odd", op_conv_geom_make(2, 3, 4, 5, 6, 7, 3, 2)};
    case 2: return (conv_case){"k1s1", op_conv_geom_make(2, 5, 3, 4, 6, 8, 1, 1)};
    case 3: return (conv_case){"k1s2 odd", op_conv_geom_make(2, 4, 7, 5, 3, 7, 1, 2)};
    case 4: return (conv_case){"deconv k2s2", op_deconv_geom_make(2, 5, 3, 3, 4, 5)};
    case 5: return (conv_case){"k3s1 cin=1", op_conv_geom_make(2, 1, 8, 6, 5, 4, 3, 1)};
    case 6: return (conv_case){"k3s1 16->8", op_conv_geom_make(1, 16, 8, 4, 4, 6, 3, 1)};
    case 7: return (conv_case){"deconv 16->8", op_deconv_geom_make(1, 16, 8, 2, 3, 4)};
    default: return (conv_case){NULL, {0}};
    }
}

/* One geometry in one context and type: forward with bias against
 * op_conv3d_forward_ref, backward (adding into non-zero din, dw, db)
 * against op_conv3d_backward_ref; split: the backward as two calls, one
 * with din only and one with dw and db only (NULL skipping). */
static int conv_case_run(cu_ctx *c, const conv_case *cc, cu_dtype dt, int split)
{
    const op_conv_geom *g = &cc->g;
    int od, oh, ow;
    op_conv_out_size(g, &od, &oh, &ow);
    size_t ni = op_conv_in_count(g), no = op_conv_out_count(g), nw = op_conv_weight_count(g);
    size_t si = (size_t)g->d * g->h * g->w, so = (size_t)od * oh * ow;
    size_t es = cu_dtype_size(dt);
    double tol = dt == CU_BF16 ? 1e-2 : 1e-4, tol_db = 1e-4;
    char what[96];

    float *in = tu_frand(ni, -1, 1), *w = tu_frand(nw, -0.5f, 0.5f), *b = tu_frand(g->cout, -1, 1);
    float *dout = tu_frand(no, -1, 1);
    float *din0 = tu_frand(ni, -1, 1), *dw0 = tu_frand(nw, -1, 1), *db0 = tu_frand(g->cout, -1, 1);
    round_dt(in, ni, dt);
    round_dt(w, nw, dt);
    round_dt(dout, no, dt);
    round_dt(din0, ni, dt);

    /* references */
    float *out_ref = tu_fzero(no), *din_ref = tu_fzero(ni), *dw_ref = tu_fzero(nw),
          *db_ref = tu_fzero(g->cout);
    op_conv3d_forward_ref(g, out_ref, in, w, b);
    memcpy(din_ref, din0, ni * sizeof(float));
    memcpy(dw_ref, dw0, nw * sizeof(float));
    memcpy(db_ref, db0, g->cout * sizeof(float));
    op_conv3d_backward_ref(g, din_ref, dw_ref, db_ref, dout, in, w);

    /* device */
    cu_conv *p = NULL;
    int rc = cu_conv_new(c, g, dt, &p);
    if (rc) fprintf(stderr, "%s %s: cu_conv_new: %d %s\n", cc->name, cu_dtype_name(dt), rc,
                    cu_ctx_error(c));
    CHECK_EQ_INT(rc, 0);
    CHECK(cu_conv_geometry(p)->cin == g->cin && cu_conv_geometry(p)->transposed == g->transposed);
    CHECK_EQ_INT(cu_conv_wcount(p), nw);
    for (int pass = 0; pass < 3; pass++) CHECK(cu_conv_impl(p, pass)[0] != 0);
    void *h_in = to_cl(in, g->n, g->cin, si, dt), *h_dout = to_cl(dout, g->n, g->cout, so, dt);
    void *h_din0 = to_cl(din0, g->n, g->cin, si, dt);
    void *d_in = dev_up(c, h_in, ni * es), *d_dout = dev_up(c, h_dout, no * es);
    void *d_din = dev_up(c, h_din0, ni * es);
    float *d_w = dev_up(c, w, nw * 4), *d_b = dev_up(c, b, g->cout * 4);
    float *d_dw = dev_up(c, dw0, nw * 4), *d_db = dev_up(c, db0, g->cout * 4);
    void *d_wq = dev_up(c, NULL, nw * es), *d_out = dev_up(c, NULL, no * es);
    CHECK(d_in && d_dout && d_din && d_w && d_b && d_dw && d_db && d_wq && d_out);

    CHECK_EQ_INT(cu_conv_prepare(p, d_wq, d_w), 0);
    rc = cu_conv_forward(p, d_out, d_in, d_wq, d_b);
    if (rc) fprintf(stderr, "forward: %s\n", cu_ctx_error(c));
    CHECK_EQ_INT(rc, 0);
    if (split) {
        rc = cu_conv_backward(p, d_din, NULL, NULL, d_dout, d_in, d_wq);
        if (!rc) rc = cu_conv_backward(p, NULL, d_dw, d_db, d_dout, d_in, d_wq);
    } else {
        rc = cu_conv_backward(p, d_din, d_dw, d_db, d_dout, d_in, d_wq);
    }
    if (rc) fprintf(stderr, "backward: %s\n", cu_ctx_error(c));
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(cu_sync(c), 0);

    void *h_out = malloc(no * es), *h_din = malloc(ni * es);
    float *got_dw = tu_fzero(nw), *got_db = tu_fzero(g->cout);
    CHECK(h_out && h_din);
    CHECK_EQ_INT(cu_download(c, h_out, d_out, no * es), 0);
    CHECK_EQ_INT(cu_download(c, h_din, d_din, ni * es), 0);
    CHECK_EQ_INT(cu_download(c, got_dw, d_dw, nw * 4), 0);
    CHECK_EQ_INT(cu_download(c, got_db, d_db, g->cout * 4), 0);
    float *got_out = from_cl(h_out, g->n, g->cout, so, dt);
    float *got_din = from_cl(h_din, g->n, g->cin, si, dt);

    double r_out = rel_err(got_out, out_ref, no), r_din = rel_err(got_din, din_ref, ni);
    double r_dw = rel_err(got_dw, dw_ref, nw), r_db = rel_err(got_db, db_ref, (size_t)g->cout);
    printf("%s %-13s %s  rel out %.2g din %.2g dw %.2g db %.2g  [%s | %s | %s]\n",
           cu_ctx_emulated(c) ? "emu" : "gpu", cc->name, cu_dtype_name(dt), r_out, r_din, r_dw,
           r_db, cu_conv_impl(p, 0), cu_conv_impl(p, 1), cu_conv_impl(p, 2));
    snprintf(what, sizeof what, "%s %s %s", cu_ctx_emulated(c) ? "emu" : "gpu", cc->name,
             cu_dtype_name(dt));
    if (!(r_out <= tol && r_din <= tol && r_dw <= tol && r_db <= tol_db)) {
        fprintf(stderr, "%s: rel errors over %.3g (db %.3g)\n", what, tol, tol_db);
        return 1;
    }

    void *dev[] = {d_in, d_dout, d_din, d_w, d_b, d_dw, d_db, d_wq, d_out};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) cu_free(c, dev[i]);
    cu_conv_free(p);
    void *host[] = {in,     w,      b,       dout,    din0,    dw0,    db0,     out_ref,
                    din_ref, dw_ref, db_ref, h_in,    h_dout,  h_din0, h_out,   h_din,
                    got_dw, got_db, got_out, got_din};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    return 0;
}

static int conv_all(cu_ctx *c, cu_dtype dt)
{
    tu_seed(dt == CU_BF16 ? 77 : 7);
    for (int i = 0; conv_cases(i).name; i++) {
        conv_case cc = conv_cases(i);
        if (conv_case_run(c, &cc, dt, i & 1)) return 1;
    }
    return 0;
}

/* cu_conv_prepare writes the layout cuDNN reads: KTRSC of the filter C of
 * cuconv.cu, i.e. wq[o][t][i] for an ordinary conv and wq[i][t][o] for
 * the transposed one (t = (a*k + b)*k + c), checked element by element
 * against an independent formula; bf16 rounds to nearest even. */
static int prepare_layout(cu_ctx *c)
{
    op_conv_geom gs[2] = {op_conv_geom_make(1, 3, 5, 4, 4, 4, 3, 2),
                          op_deconv_geom_make(1, 3, 5, 2, 2, 2)};
    for (int gi = 0; gi < 2; gi++)
        for (int dti = 0; dti < 2; dti++) {
            const op_conv_geom *g = &gs[gi];
            cu_dtype dt = dti ? CU_BF16 : CU_F32;
            size_t nw = op_conv_weight_count(g), es = cu_dtype_size(dt);
            int k3 = g->k * g->k * g->k;
            float *w = tu_fzero(nw);
            /* bf16-exact values... */
            for (size_t j = 0; j < nw; j++) w[j] = (float)((int)(j % 251) - 125);
            /* ...except two ties (bf16 steps by 1/128 at 1): to even, down and up. */
            w[0] = 1.0f + 1.0f / 256; /* -> 1 */
            w[1] = 1.0f + 3.0f / 256; /* -> 1 + 2/128 */
            cu_conv *p = NULL;
            CHECK_EQ_INT(cu_conv_new(c, g, dt, &p), 0);
            float *d_w = dev_up(c, w, nw * 4);
            void *d_wq = dev_up(c, NULL, nw * es);
            void *h = malloc(nw * es);
            CHECK(d_w && d_wq && h);
            CHECK_EQ_INT(cu_conv_prepare(p, d_wq, d_w), 0);
            CHECK_EQ_INT(cu_download(c, h, d_wq, nw * es), 0);
            for (int o = 0; o < g->cout; o++)
                for (int i = 0; i < g->cin; i++)
                    for (int t = 0; t < k3; t++) {
                        size_t j = ((size_t)o * g->cin + i) * k3 + t;
                        size_t q = g->transposed ? ((size_t)i * k3 + t) * g->cout + o
                                                 : ((size_t)o * k3 + t) * g->cin + i;
                        float v = dt == CU_BF16 ? tu_bf2f(((uint16_t *)h)[q]) : ((float *)h)[q];
                        float want = w[j];
                        if (dt == CU_BF16 && j == 0) want = 1.0f;
                        if (dt == CU_BF16 && j == 1) want = 1.0f + 1.0f / 64;
                        if (v != want) {
                            fprintf(stderr, "%s %s: wq[%zu] = %g, want w[%zu] = %g\n",
                                    g->transposed ? "deconv" : "conv", cu_dtype_name(dt), q,
                                    (double)v, j, (double)want);
                            return 1;
                        }
                    }
            cu_free(c, d_w);
            cu_free(c, d_wq);
            cu_conv_free(p);
            free(w);
            free(h);
        }
    return 0;
}

/* ---- dense layers ----------------------------------------------------------------------- */

static int linear_all(cu_ctx *c)
{
    tu_seed(11);
    const int rows = 7, cin = 13, cout = 5;
    size_t ni = (size_t)rows * cin, nw = (size_t)cin * cout, no = (size_t)rows * cout;
    float *in = tu_frand(ni, -1, 1), *w = tu_frand(nw, -1, 1), *b = tu_frand(cout, -1, 1);
    float *dout = tu_frand(no, -1, 1);
    float *din0 = tu_frand(ni, -1, 1), *dw0 = tu_frand(nw, -1, 1), *db0 = tu_frand(cout, -1, 1);
    float *out_ref = tu_fzero(no), *out_nb_ref = tu_fzero(no);
    float *din_ref = tu_fzero(ni), *dw_ref = tu_fzero(nw), *db_ref = tu_fzero(cout);
    op_linear_forward_ref(out_ref, in, w, b, rows, cin, cout);
    op_linear_forward_ref(out_nb_ref, in, w, NULL, rows, cin, cout);
    memcpy(din_ref, din0, ni * 4);
    memcpy(dw_ref, dw0, nw * 4);
    memcpy(db_ref, db0, cout * 4);
    op_linear_backward_ref(din_ref, dw_ref, db_ref, dout, in, w, rows, cin, cout);

    float *d_in = dev_up(c, in, ni * 4), *d_w = dev_up(c, w, nw * 4), *d_b = dev_up(c, b, cout * 4);
    float *d_dout = dev_up(c, dout, no * 4), *d_out = dev_up(c, NULL, no * 4);
    float *d_din = dev_up(c, din0, ni * 4), *d_dw = dev_up(c, dw0, nw * 4);
    float *d_db = dev_up(c, db0, cout * 4);
    CHECK(d_in && d_w && d_b && d_dout && d_out && d_din && d_dw && d_db);
    float *got = tu_fzero(ni > nw ? ni : nw);

    CHECK_EQ_INT(cu_linear_forward(c, d_out, d_in, d_w, d_b, rows, cin, cout), 0);
    CHECK_EQ_INT(cu_download(c, got, d_out, no * 4), 0);
    CHECK_REL("linear out", got, out_ref, no, 1e-5);
    CHECK_EQ_INT(cu_linear_forward(c, d_out, d_in, d_w, NULL, rows, cin, cout), 0);
    CHECK_EQ_INT(cu_download(c, got, d_out, no * 4), 0);
    CHECK_REL("linear out (no bias)", got, out_nb_ref, no, 1e-5);
    CHECK_EQ_INT(cu_linear_backward(c, d_din, d_dw, d_db, d_dout, d_in, d_w, rows, cin, cout), 0);
    CHECK_EQ_INT(cu_download(c, got, d_din, ni * 4), 0);
    CHECK_REL("linear din", got, din_ref, ni, 1e-5);
    CHECK_EQ_INT(cu_download(c, got, d_dw, nw * 4), 0);
    CHECK_REL("linear dw", got, dw_ref, nw, 1e-5);
    CHECK_EQ_INT(cu_download(c, got, d_db, cout * 4), 0);
    CHECK_REL("linear db", got, db_ref, (size_t)cout, 1e-5);
    /* NULL gradients are skipped: only din moves. */
    CHECK_EQ_INT(cu_linear_backward(c, d_din, NULL, NULL, d_dout, d_in, d_w, rows, cin, cout), 0);
    CHECK_EQ_INT(cu_download(c, got, d_dw, nw * 4), 0);
    CHECK_REL("linear dw untouched", got, dw_ref, nw, 1e-5);
    CHECK(cu_linear_forward(c, d_out, d_in, d_w, d_b, -1, cin, cout) == CTG_EINVAL);

    /* gemm_nt: C[m][n] = alpha A[m][k] B[n][k]^T + beta C */
    const int m = 6, n = 9, k = 11;
    float *A = tu_frand((size_t)m * k, -1, 1), *B = tu_frand((size_t)n * k, -1, 1);
    float *C0 = tu_frand((size_t)m * n, -1, 1), *Cref = tu_fzero((size_t)m * n);
    float *Cgot = tu_fzero((size_t)m * n);
    float *d_A = dev_up(c, A, (size_t)m * k * 4), *d_B = dev_up(c, B, (size_t)n * k * 4);
    float *d_C = dev_up(c, C0, (size_t)m * n * 4);
    CHECK(d_A && d_B && d_C);
    for (int pass = 0; pass < 2; pass++) {
        float alpha = pass ? -0.75f : 0.5f, beta = pass ? 0.25f : 0.0f;
        float *nan = tu_fzero((size_t)m * n);
        for (int i = 0; i < m * n; i++) nan[i] = NAN;
        /* beta 0: C is not read (NaN there must not leak through). */
        CHECK_EQ_INT(cu_upload(c, d_C, pass ? C0 : nan, (size_t)m * n * 4), 0);
        free(nan);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                double s = 0;
                for (int q = 0; q < k; q++)
                    s += (double)A[(size_t)i * k + q] * B[(size_t)j * k + q];
                Cref[(size_t)i * n + j] =
                    (float)(alpha * s + (pass ? beta * C0[(size_t)i * n + j] : 0.0));
            }
        CHECK_EQ_INT(cu_gemm_nt(c, d_C, d_A, d_B, m, n, k, alpha, beta), 0);
        CHECK_EQ_INT(cu_download(c, Cgot, d_C, (size_t)m * n * 4), 0);
        CHECK_REL(pass ? "gemm_nt beta" : "gemm_nt", Cgot, Cref, (size_t)m * n, 1e-5);
    }

    float *dev[] = {d_in, d_w, d_b, d_dout, d_out, d_din, d_dw, d_db, d_A, d_B, d_C};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) cu_free(c, dev[i]);
    float *host[] = {in,      w,      b,      dout,   din0, dw0, db0,  out_ref, out_nb_ref,
                     din_ref, dw_ref, db_ref, got,    A,    B,   C0,   Cref,    Cgot};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    return 0;
}

/* ---- the algorithm cache ---------------------------------------------------------------- */

/* A second plan of the same (geometry, dtype, device) searches nothing and
 * gets the same algorithms; another dtype or shape is a new search. */
static int cache_check(cu_ctx *c)
{
    long s0, h0, s1, h1;
    op_conv_geom g = op_conv_geom_make(1, 8, 8, 4, 4, 4, 3, 1);
    op_conv_geom g2 = op_conv_geom_make(2, 8, 8, 4, 4, 4, 3, 1);
    op_conv_geom gt = op_deconv_geom_make(1, 8, 4, 2, 2, 2);
    cu_conv *a = NULL, *b = NULL, *d = NULL, *e = NULL, *t = NULL;
    cu__conv_cache_stats(&s0, &h0);
    CHECK_EQ_INT(cu_conv_new(c, &g, CU_F32, &a), 0);
    cu__conv_cache_stats(&s1, &h1);
    /* A process may have searched this key before (not in the runner,
     * where every test has its own process): then it is a hit. */
    CHECK((s1 - s0) + (h1 - h0) == 1);
    CHECK_EQ_INT(cu_conv_new(c, &g, CU_F32, &b), 0);
    cu__conv_cache_stats(&s0, &h0);
    CHECK_EQ_INT(s0, s1);
    CHECK_EQ_INT(h0, h1 + 1);
    for (int pass = 0; pass < 3; pass++)
        CHECK(!strcmp(cu_conv_impl(a, pass), cu_conv_impl(b, pass)));
    CHECK_EQ_INT(cu_conv_new(c, &g, CU_BF16, &d), 0);
    CHECK_EQ_INT(cu_conv_new(c, &g2, CU_F32, &e), 0);
    CHECK_EQ_INT(cu_conv_new(c, &gt, CU_F32, &t), 0);
    cu__conv_cache_stats(&s1, &h1);
    CHECK(s1 - s0 + h1 - h0 == 3);
    if (cu_ctx_emulated(c)) {
        CHECK_EQ_INT(s1 - s0, 3);
        for (int pass = 0; pass < 3; pass++) CHECK(!strcmp(cu_conv_impl(a, pass), "cpu"));
    } else {
        /* which cuDNN operation runs which pass (cuconv.cu) */
        CHECK(!strncmp(cu_conv_impl(a, 0), "fwd ", 4));
        CHECK(!strncmp(cu_conv_impl(a, 1), "bwd-data ", 9));
        CHECK(!strncmp(cu_conv_impl(t, 0), "bwd-data ", 9));
        CHECK(!strncmp(cu_conv_impl(t, 1), "fwd ", 4));
        CHECK(!strncmp(cu_conv_impl(t, 2), "bwd-filter ", 11));
        printf("workspace reserved: %zu bytes\n", cu_ctx_workspace_bytes(c));
    }
    CHECK(!strcmp(cu_conv_impl(a, 3), "") && !strcmp(cu_conv_impl(a, -1), ""));
    cu_conv_free(a);
    cu_conv_free(b);
    cu_conv_free(d);
    cu_conv_free(e);
    cu_conv_free(t);
    return 0;
}

static int bad_geometry(cu_ctx *c)
{
    cu_conv *p = (cu_conv *)&p;
    op_conv_geom g = op_conv_geom_make(1, 2, 2, 4, 4, 4, 5, 1);
    CHECK_EQ_INT(cu_conv_new(c, &g, CU_F32, &p), CTG_EINVAL);
    CHECK(p == NULL);
    CHECK(cu_ctx_error(c)[0] != 0);
    g = op_deconv_geom_make(1, 2, 2, 4, 4, 4);
    g.pad = 1;
    CHECK_EQ_INT(cu_conv_new(c, &g, CU_F32, &p), CTG_EINVAL);
    g = op_conv_geom_make(1, 2, 2, 4, 4, 4, 3, 1);
    CHECK_EQ_INT(cu_conv_new(c, &g, (cu_dtype)7, &p), CTG_EINVAL);
    cu_conv_free(NULL);
    return 0;
}

/* ---- the tests -------------------------------------------------------------------------- */

/* Opens the emulation, or device 0 (gpu), or returns why not. */
static int open_ctx(int gpu, cu_ctx **c, char *why, size_t n)
{
    return cu_ctx_new(gpu ? 0 : CU_EMULATE, c, why, n);
}

#define WITH_CTX(gpu, body)                                                    \
    do {                                                                       \
        cu_ctx *c_ = NULL;                                                     \
        char why_[256] = "";                                                   \
        if (open_ctx((gpu), &c_, why_, sizeof why_)) {                         \
            if (gpu) SKIP("no GPU (%s)", why_);                                \
            SKIP("no emulation (%s)", why_);                                   \
        }                                                                      \
        int r_ = (body)(c_);                                                   \
        cu_ctx_free(c_);                                                       \
        return r_;                                                             \
    } while (0)

static int conv_f32(cu_ctx *c) { return conv_all(c, CU_F32); }
static int conv_bf16(cu_ctx *c) { return conv_all(c, CU_BF16); }
static int cache_or_skip(cu_ctx *c)
{
    if (!cu__conv_cache_stats) {
        printf("skipped: built without CUDA\n");
        return TEST_SKIP;
    }
    return cache_check(c);
}

static int test_emu_conv_f32(void) { WITH_CTX(0, conv_f32); }
static int test_emu_conv_bf16(void) { WITH_CTX(0, conv_bf16); }
static int test_emu_prepare(void) { WITH_CTX(0, prepare_layout); }
static int test_emu_linear(void) { WITH_CTX(0, linear_all); }
static int test_emu_cache(void) { WITH_CTX(0, cache_or_skip); }
static int test_emu_bad(void) { WITH_CTX(0, bad_geometry); }
static int test_gpu_conv_f32(void) { WITH_CTX(1, conv_f32); }
static int test_gpu_conv_bf16(void) { WITH_CTX(1, conv_bf16); }
static int test_gpu_prepare(void) { WITH_CTX(1, prepare_layout); }
static int test_gpu_linear(void) { WITH_CTX(1, linear_all); }
static int test_gpu_cache(void) { WITH_CTX(1, cache_or_skip); }

/* cu_ctx_new(0) on a machine without a GPU fails with a reason (and does
 * not crash); with one it works. */
static int test_ctx_device0(void)
{
    cu_ctx *c = NULL;
    char why[256] = "";
    int rc = cu_ctx_new(0, &c, why, sizeof why);
    if (rc) {
        CHECK(c == NULL);
        CHECK(why[0] != 0);
        CHECK(rc == CTG_ENOTFOUND || rc == CTG_EINVAL);
        SKIP("no GPU (%s)", why);
    }
    CHECK(!cu_ctx_emulated(c));
    CHECK_EQ_INT(cu_ctx_device(c), 0);
    cu_ctx_free(c);
    return 0;
}

const test_case cuconv_tests[] = {
    {"cuconv_emu_conv_f32", test_emu_conv_f32},
    {"cuconv_emu_conv_bf16", test_emu_conv_bf16},
    {"cuconv_emu_prepare_layout", test_emu_prepare},
    {"cuconv_emu_linear_gemm", test_emu_linear},
    {"cuconv_emu_algo_cache", test_emu_cache},
    {"cuconv_emu_bad_geometry", test_emu_bad},
    {"cuconv_gpu_device0", test_ctx_device0},
    {"cuconv_gpu_conv_f32", test_gpu_conv_f32},
    {"cuconv_gpu_conv_bf16", test_gpu_conv_bf16},
    {"cuconv_gpu_prepare_layout", test_gpu_prepare},
    {"cuconv_gpu_linear_gemm", test_gpu_linear},
    {"cuconv_gpu_algo_cache", test_gpu_cache},
    {NULL, NULL},
};
