/*
 * ops.c - the fast CPU versions of the element-wise, layout, instance-norm
 * and dense-row ops declared in ops.h (convolutions are in ops_conv.c,
 * losses and pooling in ops_loss.c, references in ops_ref.c).
 *
 * Loops are split over OpenMP threads with static schedules over whole
 * channels or rows, so every sum has one owner and a fixed order: results
 * do not depend on timing.  Long sums are taken in float blocks that the
 * compiler may vectorise (omp simd) and the blocks are added in double,
 * which keeps instance-norm statistics accurate on 256^3 planes.
 * Built without OpenMP, the same code runs on one thread.
 *
 * Threading: no state; see ops.h.
 */
#include "core/ops.h"

#include <math.h>
#include <string.h>

#include "core/ops_int.h"

/* ---- blocked sums ------------------------------------------------------------ */

#define BLK 512

static double sum_f(const float *x, size_t n)
{
    double t = 0;
    for (size_t i0 = 0; i0 < n; i0 += BLK) {
        size_t e = i0 + BLK < n ? i0 + BLK : n;
        float s = 0;
        SIMD_SUM(s)
        for (size_t i = i0; i < e; i++) s += x[i];
        t += s;
    }
    return t;
}

/* sum (x - m)^2 */
static double sumsq_dev(const float *x, size_t n, float m)
{
    double t = 0;
    for (size_t i0 = 0; i0 < n; i0 += BLK) {
        size_t e = i0 + BLK < n ? i0 + BLK : n;
        float s = 0;
        SIMD_SUM(s)
        for (size_t i = i0; i < e; i++) s += (x[i] - m) * (x[i] - m);
        t += s;
    }
    return t;
}

static double dot_f(const float *a, const float *b, size_t n)
{
    double t = 0;
    for (size_t i0 = 0; i0 < n; i0 += BLK) {
        size_t e = i0 + BLK < n ? i0 + BLK : n;
        float s = 0;
        SIMD_SUM(s)
        for (size_t i = i0; i < e; i++) s += a[i] * b[i];
        t += s;
    }
    return t;
}

/* ---- upsampling ------------------------------------------------------------------ */

void op_upsample2_forward_cpu(float *out, const float *in, size_t nc, int d, int h, int w)
{
    long rows = (long)nc * d * h; /* one input row of w voxels each */
    int ow = 2 * w, oh = 2 * h;
    PAR_FOR((size_t)rows * w > PAR_MIN)
    for (long r = 0; r < rows; r++) {
        long q = r / h;
        int y = (int)(r % h);
        long plane = q / d; /* n*c index */
        int z = (int)(q % d);
        const float *src = in + (size_t)r * w;
        for (int a = 0; a < 2; a++)
            for (int b = 0; b < 2; b++) {
                float *dst = out + (((size_t)plane * 2 * d + 2 * z + a) * oh + 2 * y + b) * ow;
                for (int x = 0; x < w; x++) dst[2 * x] = dst[2 * x + 1] = src[x];
            }
    }
}

void op_upsample2_backward_cpu(float *din, const float *dout, size_t nc, int d, int h, int w)
{
    long rows = (long)nc * d * h;
    int ow = 2 * w, oh = 2 * h;
    PAR_FOR((size_t)rows * w > PAR_MIN)
    for (long r = 0; r < rows; r++) {
        long q = r / h;
        int y = (int)(r % h);
        long plane = q / d;
        int z = (int)(q % d);
        float *dst = din + (size_t)r * w;
        for (int x = 0; x < w; x++) {
            float s = 0;
            for (int a = 0; a < 2; a++)
                for (int b = 0; b < 2; b++) {
                    const float *src =
                        dout + (((size_t)plane * 2 * d + 2 * z + a) * oh + 2 * y + b) * ow;
                    s += src[2 * x] + src[2 * x + 1];
                }
            dst[x] += s;
        }
    }
}

/* ---- element-wise ------------------------------------------------------------------- */

void op_lrelu_forward_cpu(float *out, const float *in, size_t n, float slope)
{
    PAR_FOR(n > PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = in[i] > 0 ? in[i] : slope * in[i];
}

void op_lrelu_backward_cpu(float *din, const float *dout, const float *x, size_t n, float slope)
{
    PAR_FOR(n > PAR_MIN)
    for (size_t i = 0; i < n; i++) din[i] += x[i] > 0 ? dout[i] : slope * dout[i];
}

void op_relu_forward_cpu(float *out, const float *in, size_t n)
{
    op_lrelu_forward_cpu(out, in, n, 0.0f);
}

void op_relu_backward_cpu(float *din, const float *dout, const float *x, size_t n)
{
    op_lrelu_backward_cpu(din, dout, x, n, 0.0f);
}

void op_add_forward_cpu(float *out, const float *a, const float *b, size_t n)
{
    PAR_FOR(n > PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void op_acc_cpu(float *dst, const float *src, size_t n)
{
    PAR_FOR(n > PAR_MIN)
    for (size_t i = 0; i < n; i++) dst[i] += src[i];
}

void op_add_backward_cpu(float *da, float *db, const float *dout, size_t n)
{
    if (da) op_acc_cpu(da, dout, n);
    if (db) op_acc_cpu(db, dout, n);
}

void op_concat_forward_cpu(float *out, const float *a, const float *b, int n, int ca, int cb,
                           size_t s)
{
    for (int i = 0; i < n; i++) {
        float *o = out + (size_t)i * (ca + cb) * s;
        memcpy(o, a + (size_t)i * ca * s, (size_t)ca * s * sizeof(float));
        memcpy(o + (size_t)ca * s, b + (size_t)i * cb * s, (size_t)cb * s * sizeof(float));
    }
}

void op_concat_backward_cpu(float *da, float *db, const float *dout, int n, int ca, int cb,
                            size_t s)
{
    for (int i = 0; i < n; i++) {
        const float *g = dout + (size_t)i * (ca + cb) * s;
        if (da) op_acc_cpu(da + (size_t)i * ca * s, g, (size_t)ca * s);
        if (db) op_acc_cpu(db + (size_t)i * cb * s, g + (size_t)ca * s, (size_t)cb * s);
    }
}

/* ---- instance norm ------------------------------------------------------------------- */

void op_inorm_forward_cpu(float *out, float *mean, float *rstd, const float *in,
                          const float *gamma, const float *beta, int n, int c, size_t s)
{
    long planes = (long)n * c;
    PAR_FOR(planes > 1 && (size_t)planes * s > PAR_MIN)
    for (long p = 0; p < planes; p++) {
        const float *x = in + (size_t)p * s;
        float *y = out + (size_t)p * s;
        /* Two passes (mean, then squared deviations) rather than one pass of
         * sum and sum of squares, which cancels badly for HU-scale inputs. */
        float m = (float)(sum_f(x, s) / (double)s);
        double var = sumsq_dev(x, s, m) / (double)s;
        float r = (float)(1.0 / sqrt(var + OP_INORM_EPS));
        mean[p] = m;
        rstd[p] = r;
        int ch = (int)(p % c);
        float ga = gamma ? gamma[ch] * r : r;
        float be = beta ? beta[ch] : 0.0f;
        for (size_t i = 0; i < s; i++) y[i] = (x[i] - m) * ga + be;
    }
}

void op_inorm_backward_cpu(float *din, float *dgamma, float *dbeta, const float *dout,
                           const float *in, const float *mean, const float *rstd,
                           const float *gamma, int n, int c, size_t s)
{
    /* Each thread owns whole channels and loops over the samples inside, so
     * dgamma[c] and dbeta[c] have one writer and a fixed order. */
    PAR_FOR(c > 1 && (size_t)n * c * s > PAR_MIN)
    for (int ch = 0; ch < c; ch++) {
        double dg = 0, dbt = 0;
        float ga = gamma ? gamma[ch] : 1.0f;
        for (int b = 0; b < n; b++) {
            size_t p = (size_t)b * c + ch;
            const float *x = in + p * s, *g = dout + p * s;
            float m = mean[p], r = rstd[p];
            /* sum g and sum g*xhat, with xhat = (x - m) * r. */
            double sg = sum_f(g, s);
            double sgx = 0;
            for (size_t i0 = 0; i0 < s; i0 += BLK) {
                size_t e = i0 + BLK < s ? i0 + BLK : s;
                float t = 0;
                SIMD_SUM(t)
                for (size_t i = i0; i < e; i++) t += g[i] * (x[i] - m);
                sgx += t;
            }
            sgx *= r;
            dg += sgx;
            dbt += sg;
            if (din) {
                /* dx = r * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
                 * with dxhat = g * gamma. */
                float *dx = din + p * s;
                float k0 = (float)(ga * sg / (double)s);
                float k1 = (float)(ga * sgx / (double)s) * r;
                float gr = ga * r;
                for (size_t i = 0; i < s; i++)
                    dx[i] += gr * g[i] - r * k0 - (x[i] - m) * r * k1;
            }
        }
        if (dgamma) dgamma[ch] += (float)dg;
        if (dbeta) dbeta[ch] += (float)dbt;
    }
}

/* ---- dense rows ---------------------------------------------------------------------- */

void op_linear_forward_cpu(float *out, const float *in, const float *w, const float *b, int rows,
                           int cin, int cout)
{
    long cells = (long)rows * cout;
    PAR_FOR(cells * cin > PAR_MIN)
    for (long q = 0; q < cells; q++) {
        int r = (int)(q / cout), o = (int)(q % cout);
        double t = dot_f(in + (size_t)r * cin, w + (size_t)o * cin, (size_t)cin);
        out[q] = (float)t + (b ? b[o] : 0.0f);
    }
}

void op_linear_backward_cpu(float *din, float *dw, float *db, const float *dout, const float *in,
                            const float *w, int rows, int cin, int cout)
{
    long work = (long)rows * cin * cout;
    (void)work; /* read only by the OpenMP pragmas */
    if (din) {
        PAR_FOR(work > PAR_MIN)
        for (int r = 0; r < rows; r++) {
            float *dx = din + (size_t)r * cin;
            const float *g = dout + (size_t)r * cout;
            for (int o = 0; o < cout; o++) {
                float go = g[o];
                if (go == 0.0f) continue;
                const float *wo = w + (size_t)o * cin;
                for (int i = 0; i < cin; i++) dx[i] += go * wo[i];
            }
        }
    }
    if (dw || db) {
        PAR_FOR(work > PAR_MIN)
        for (int o = 0; o < cout; o++) {
            double sb = 0;
            for (int r = 0; r < rows; r++) {
                float go = dout[(size_t)r * cout + o];
                sb += go;
                if (!dw || go == 0.0f) continue;
                float *dwo = dw + (size_t)o * cin;
                const float *x = in + (size_t)r * cin;
                for (int i = 0; i < cin; i++) dwo[i] += go * x[i];
            }
            if (db) db[o] += (float)sb;
        }
    }
}

void op_l2norm_forward_cpu(float *out, float *norm, const float *in, int rows, int dim)
{
    PAR_FOR((long)rows * dim > PAR_MIN)
    for (int r = 0; r < rows; r++) {
        const float *x = in + (size_t)r * dim;
        double nn = sqrt(dot_f(x, x, (size_t)dim));
        norm[r] = (float)nn;
        float inv = (float)(1.0 / (nn > OP_L2_EPS ? nn : OP_L2_EPS));
        float *y = out + (size_t)r * dim;
        for (int i = 0; i < dim; i++) y[i] = x[i] * inv;
    }
}

void op_l2norm_backward_cpu(float *din, const float *dout, const float *out, const float *norm,
                            int rows, int dim)
{
    PAR_FOR((long)rows * dim > PAR_MIN)
    for (int r = 0; r < rows; r++) {
        const float *y = out + (size_t)r * dim, *g = dout + (size_t)r * dim;
        float *dx = din + (size_t)r * dim;
        if (norm[r] > OP_L2_EPS) {
            /* y = x/|x|:  dx = (g - y (y.g)) / |x| */
            float yg = (float)dot_f(y, g, (size_t)dim);
            float inv = 1.0f / norm[r];
            for (int i = 0; i < dim; i++) dx[i] += (g[i] - y[i] * yg) * inv;
        } else {
            /* Below eps the op is x / eps, a plain scaling. */
            for (int i = 0; i < dim; i++) dx[i] += g[i] / OP_L2_EPS;
        }
    }
}
