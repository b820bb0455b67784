/*
 * culinear.cu - the dense layers and the GEMM of the contrastive losses on
 * fp32 rows through cublasSgemm (no TF32: the context's cuBLAS handle runs
 * in CUBLAS_DEFAULT_MATH, which for SGEMM is plain fp32 FMA); the bias and
 * its gradient are own kernels.  In the CU_EMULATE context the GEMMs are
 * the CPU ops of core/ops.h (op_linear_*_cpu) and a host loop; the bias
 * kernels run on the host there.
 *
 * Row-major through column-major cuBLAS: a row-major [r][k] array is, read
 * column-major with leading dimension k, the k x r matrix M^T.  So every
 * product below is written for the transposes, e.g. for out = in w^T:
 *   out^T (cout x rows, ld cout) = w (cin x cout as stored, taken T)
 *                                 * in^T (cin x rows as stored, N).
 */
#include "cuda/cu_int.h"

#include <string.h>

static int blas_fail(cu_ctx *c, cublasStatus_t s, const char *what)
{
    return cu__fail(c, s == CUBLAS_STATUS_ALLOC_FAILED ? CTG_ENOMEM : CTG_EIO,
                    "cublasSgemm (%s): cuBLAS status %d", what, (int)s);
}

static int sgemm(cu_ctx *c, const char *what, cublasOperation_t ta, cublasOperation_t tb, int m,
                 int n, int k, float alpha, const float *A, int lda, const float *B, int ldb,
                 float beta, float *C, int ldc)
{
    cublasStatus_t s =
        c->lib->cublasSgemm_v2(c->blas, ta, tb, m, n, k, &alpha, A, lda, B, ldb, &beta, C, ldc);
    return s == CUBLAS_STATUS_SUCCESS ? 0 : blas_fail(c, s, what);
}

/* out[r][o] = b[o] (b non-NULL) or 0. */
static int rows_fill(cu_ctx *c, float *out, const float *b, int rows, int cout)
{
    const size_t co = (size_t)cout;
    return cu__each(c, "linear.bias", (size_t)rows * co,
                    [=] CU_HD(size_t i) { out[i] = b ? b[i % co] : 0.0f; });
}

/* db[o] += sum_r dout[r][o]. */
static int rows_bias_grad(cu_ctx *c, float *db, const float *dout, int rows, int cout)
{
    const size_t co = (size_t)cout, nr = (size_t)rows;
    return cu__segs(c, "linear.db", co, nr, [=] CU_HD(size_t o, size_t t, size_t nt) {
        float acc = 0.0f;
        for (size_t r = t; r < nr; r += nt) acc += dout[r * co + o];
        cu__red_add(&db[o], acc);
    });
}

extern "C" int cu_linear_forward(cu_ctx *c, float *out, const float *in, const float *w,
                                 const float *b, int rows, int cin, int cout)
{
    int rc = cu__enter(c);
    if (rc) return rc;
    if (rows < 0 || cin < 0 || cout < 0) return cu__fail(c, CTG_EINVAL, "linear: bad size");
    if (!rows || !cout) return 0;
    if (c->emu) {
        op_linear_forward_cpu(out, in, w, b, rows, cin, cout);
        return 0;
    }
    float beta = 0.0f;
    if (b || !cin) {
        /* the bias first, then the product added to it (beta 1) */
        if ((rc = rows_fill(c, out, b, rows, cout))) return rc;
        beta = 1.0f;
    }
    if (!cin) return 0;
    /* out^T (cout x rows) = w^T-as-stored^T ... : C(o,r) = sum_i w[o][i] in[r][i] */
    return sgemm(c, "linear forward", CUBLAS_OP_T, CUBLAS_OP_N, cout, rows, cin, 1.0f, w, cin, in,
                 cin, beta, out, cout);
}

extern "C" int cu_linear_backward(cu_ctx *c, float *din, float *dw, float *db, const float *dout,
                                  const float *in, const float *w, int rows, int cin, int cout)
{
    int rc = cu__enter(c);
    if (rc) return rc;
    if (rows < 0 || cin < 0 || cout < 0) return cu__fail(c, CTG_EINVAL, "linear: bad size");
    if (!rows || !cout) return 0;
    if (c->emu) {
        op_linear_backward_cpu(din, dw, db, dout, in, w, rows, cin, cout);
        return 0;
    }
    if (din && cin) {
        /* din [rows][cin] += dout [rows][cout] w [cout][cin]:
         * din^T (cin x rows) += w-as-stored (cin x cout, N) * dout^T (cout x rows, N). */
        if ((rc = sgemm(c, "linear din", CUBLAS_OP_N, CUBLAS_OP_N, cin, rows, cout, 1.0f, w, cin,
                        dout, cout, 1.0f, din, cin)))
            return rc;
    }
    if (dw && cin) {
        /* dw [cout][cin] += dout^T in:
         * dw^T (cin x cout) += in^T (cin x rows, N) * dout (rows x cout = dout^T-as-stored, T). */
        if ((rc = sgemm(c, "linear dw", CUBLAS_OP_N, CUBLAS_OP_T, cin, cout, rows, 1.0f, in, cin,
                        dout, cout, 1.0f, dw, cin)))
            return rc;
    }
    if (db) return rows_bias_grad(c, db, dout, rows, cout);
    return 0;
}

extern "C" int cu_gemm_nt(cu_ctx *c, float *C, const float *A, const float *B, int m, int n, int k,
                          float alpha, float beta)
{
    int rc = cu__enter(c);
    if (rc) return rc;
    if (m < 0 || n < 0 || k < 0) return cu__fail(c, CTG_EINVAL, "gemm_nt: bad size");
    if (!m || !n) return 0;
    if (c->emu) {
        /* beta 0 overwrites C without reading it, as cuBLAS does. */
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                const float *a = A + (size_t)i * k, *b = B + (size_t)j * k;
                double s = 0;
                for (int q = 0; q < k; q++) s += (double)a[q] * b[q];
                float *cij = C + (size_t)i * n + j;
                *cij = beta == 0.0f ? alpha * (float)s : alpha * (float)s + beta * *cij;
            }
        return 0;
    }
    /* C^T (n x m, ld n) = B (n x k: the stored k x n taken T) * A^T (k x m as stored, N).
     * k = 0 scales C by beta; the leading dimensions must still be >= 1. */
    int ld = k > 0 ? k : 1;
    return sgemm(c, "gemm_nt", CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, alpha, B, ld, A, ld, beta, C, n);
}
