/*
 * ops_ref.c - plain-loop reference versions of the ops in ops.h, the
 * oracle that tests/test_ops.c holds the fast versions to.  They follow the
 * textbook definitions literally, sum in double, and make no attempt at
 * speed; nothing outside the tests should call them.
 *
 * Threading: no state; single-threaded.
 */
#include "core/ops.h"

#include "core/core.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- convolution --------------------------------------------------------------- */

/* Input voxel (iz,iy,ix) meets output voxel (oz,oy,ox) through kernel tap
 * (a,b,c) when, per axis, i = o*stride - pad + a (ordinary convolution) or
 * o = i*stride - pad + a (transposed).  Both loops below enumerate exactly
 * these triples. */

void op_conv3d_forward_ref(const op_conv_geom *g, float *out, const float *in, const float *w,
                           const float *b)
{
    int od, oh, ow, k = g->k, s = g->stride, p = g->pad;
    op_conv_out_size(g, &od, &oh, &ow);
    size_t osp = (size_t)od * oh * ow, isp = (size_t)g->d * g->h * g->w;
    double *acc = calloc(osp, sizeof *acc);
    if (!acc) abort(); /* test oracle: no recovery wanted */
    for (int n = 0; n < g->n; n++)
        for (int o = 0; o < g->cout; o++) {
            for (size_t v = 0; v < osp; v++) acc[v] = b ? b[o] : 0.0;
            for (int i = 0; i < g->cin; i++) {
                const float *x = in + ((size_t)n * g->cin + i) * isp;
                const float *wk = w + ((size_t)o * g->cin + i) * k * k * k;
                for (int a = 0; a < k; a++)
                    for (int bb = 0; bb < k; bb++)
                        for (int c = 0; c < k; c++) {
                            double wv = wk[(a * k + bb) * k + c];
                            if (!g->transposed) {
                                for (int z = 0; z < od; z++)
                                    for (int y = 0; y < oh; y++)
                                        for (int xx = 0; xx < ow; xx++) {
                                            int iz = z * s - p + a, iy = y * s - p + bb,
                                                ix = xx * s - p + c;
                                            if (iz < 0 || iz >= g->d || iy < 0 || iy >= g->h ||
                                                ix < 0 || ix >= g->w)
                                                continue;
                                            acc[((size_t)z * oh + y) * ow + xx] +=
                                                wv * x[((size_t)iz * g->h + iy) * g->w + ix];
                                        }
                            } else {
                                for (int z = 0; z < g->d; z++)
                                    for (int y = 0; y < g->h; y++)
                                        for (int xx = 0; xx < g->w; xx++) {
                                            int oz = z * s - p + a, oy = y * s - p + bb,
                                                ox = xx * s - p + c;
                                            if (oz < 0 || oz >= od || oy < 0 || oy >= oh ||
                                                ox < 0 || ox >= ow)
                                                continue;
                                            acc[((size_t)oz * oh + oy) * ow + ox] +=
                                                wv * x[((size_t)z * g->h + y) * g->w + xx];
                                        }
                            }
                        }
            }
            float *dst = out + ((size_t)n * g->cout + o) * osp;
            for (size_t v = 0; v < osp; v++) dst[v] = (float)acc[v];
        }
    free(acc);
}

void op_conv3d_backward_ref(const op_conv_geom *g, float *din, float *dw, float *db,
                            const float *dout, const float *in, const float *w)
{
    int od, oh, ow, k = g->k, s = g->stride, p = g->pad;
    op_conv_out_size(g, &od, &oh, &ow);
    size_t osp = (size_t)od * oh * ow, isp = (size_t)g->d * g->h * g->w;
    size_t nin = op_conv_in_count(g), nw = op_conv_weight_count(g);
    double *gi = calloc(nin, sizeof *gi), *gw = calloc(nw, sizeof *gw);
    double *gb = calloc((size_t)g->cout, sizeof *gb);
    if (!gi || !gw || !gb) abort();
    for (int n = 0; n < g->n; n++)
        for (int o = 0; o < g->cout; o++) {
            const float *go = dout + ((size_t)n * g->cout + o) * osp;
            for (size_t v = 0; v < osp; v++) gb[o] += go[v];
            for (int i = 0; i < g->cin; i++) {
                const float *x = in + ((size_t)n * g->cin + i) * isp;
                double *gx = gi + ((size_t)n * g->cin + i) * isp;
                size_t wbase = ((size_t)o * g->cin + i) * k * k * k;
                for (int a = 0; a < k; a++)
                    for (int bb = 0; bb < k; bb++)
                        for (int c = 0; c < k; c++) {
                            size_t wi = wbase + (a * k + bb) * k + c;
                            double wv = w[wi], acc = 0;
                            /* Walk the output grid; find the input voxel. */
                            for (int z = 0; z < od; z++)
                                for (int y = 0; y < oh; y++)
                                    for (int xx = 0; xx < ow; xx++) {
                                        int iz, iy, ix;
                                        if (!g->transposed) {
                                            iz = z * s - p + a;
                                            iy = y * s - p + bb;
                                            ix = xx * s - p + c;
                                        } else {
                                            /* o = i*s - p + a  =>  i = (o + p - a) / s */
                                            int tz = z + p - a, ty = y + p - bb, tx = xx + p - c;
                                            if (tz % s || ty % s || tx % s) continue;
                                            iz = tz / s;
                                            iy = ty / s;
                                            ix = tx / s;
                                        }
                                        if (iz < 0 || iz >= g->d || iy < 0 || iy >= g->h ||
                                            ix < 0 || ix >= g->w)
                                            continue;
                                        size_t iv = ((size_t)iz * g->h + iy) * g->w + ix;
                                        double gv = go[((size_t)z * oh + y) * ow + xx];
                                        gx[iv] += gv * wv;
                                        acc += gv * x[iv];
                                    }
                            gw[wi] += acc;
                        }
            }
        }
    if (din)
        for (size_t i = 0; i < nin; i++) din[i] += (float)gi[i];
    if (dw)
        for (size_t i = 0; i < nw; i++) dw[i] += (float)gw[i];
    if (db)
        for (int o = 0; o < g->cout; o++) db[o] += (float)gb[o];
    free(gi);
    free(gw);
    free(gb);
}

/* ---- instance norm ---------------------------------------------------------------- */

void op_inorm_forward_ref(float *out, float *mean, float *rstd, const float *in,
                          const float *gamma, const float *beta, int n, int c, size_t s)
{
    for (size_t p = 0; p < (size_t)n * c; p++) {
        const float *x = in + p * s;
        double m = 0, var = 0;
        for (size_t i = 0; i < s; i++) m += x[i];
        m /= (double)s;
        for (size_t i = 0; i < s; i++) var += (x[i] - m) * (x[i] - m);
        var /= (double)s;
        double r = 1.0 / sqrt(var + OP_INORM_EPS);
        mean[p] = (float)m;
        rstd[p] = (float)r;
        int ch = (int)(p % (size_t)c);
        for (size_t i = 0; i < s; i++)
            out[p * s + i] = (float)((x[i] - m) * r * (gamma ? gamma[ch] : 1.0) +
                                     (beta ? beta[ch] : 0.0));
    }
}

void op_inorm_backward_ref(float *din, float *dgamma, float *dbeta, const float *dout,
                           const float *in, const float *mean, const float *rstd,
                           const float *gamma, int n, int c, size_t s)
{
    for (size_t p = 0; p < (size_t)n * c; p++) {
        int ch = (int)(p % (size_t)c);
        double ga = gamma ? gamma[ch] : 1.0, m = mean[p], r = rstd[p];
        const float *x = in + p * s, *g = dout + p * s;
        double sd = 0, sdx = 0, sg = 0, sgx = 0;
        for (size_t i = 0; i < s; i++) {
            double xh = (x[i] - m) * r, dxh = g[i] * ga;
            sd += dxh;
            sdx += dxh * xh;
            sg += g[i];
            sgx += g[i] * xh;
        }
        if (dgamma) dgamma[ch] += (float)sgx;
        if (dbeta) dbeta[ch] += (float)sg;
        if (din)
            for (size_t i = 0; i < s; i++) {
                double xh = (x[i] - m) * r, dxh = g[i] * ga;
                din[p * s + i] += (float)(r * (dxh - sd / (double)s - xh * sdx / (double)s));
            }
    }
}

/* ---- linear ---------------------------------------------------------------------------- */

void op_linear_forward_ref(float *out, const float *in, const float *w, const float *b, int rows,
                           int cin, int cout)
{
    for (int r = 0; r < rows; r++)
        for (int o = 0; o < cout; o++) {
            double t = b ? b[o] : 0.0;
            for (int i = 0; i < cin; i++)
                t += (double)in[(size_t)r * cin + i] * w[(size_t)o * cin + i];
            out[(size_t)r * cout + o] = (float)t;
        }
}

void op_linear_backward_ref(float *din, float *dw, float *db, const float *dout, const float *in,
                            const float *w, int rows, int cin, int cout)
{
    for (int r = 0; r < rows && din; r++)
        for (int i = 0; i < cin; i++) {
            double t = 0;
            for (int o = 0; o < cout; o++)
                t += (double)dout[(size_t)r * cout + o] * w[(size_t)o * cin + i];
            din[(size_t)r * cin + i] += (float)t;
        }
    for (int o = 0; o < cout; o++) {
        double tb = 0;
        for (int r = 0; r < rows; r++) tb += dout[(size_t)r * cout + o];
        if (db) db[o] += (float)tb;
        for (int i = 0; i < cin && dw; i++) {
            double t = 0;
            for (int r = 0; r < rows; r++)
                t += (double)dout[(size_t)r * cout + o] * in[(size_t)r * cin + i];
            dw[(size_t)o * cin + i] += (float)t;
        }
    }
}

/* ---- segmentation losses ------------------------------------------------------------- */

static int ref_counted(int lab, int ignore, int k) { return lab < k && lab != ignore; }

int op_softmax_ce_forward_ref(float *loss, float *prob, const float *logits, const uint8_t *label,
                              const float *class_w, int ignore, int n, int k, size_t s)
{
    double l = 0, wsum = 0;
    for (int b = 0; b < n; b++)
        for (size_t v = 0; v < s; v++) {
            const float *x = logits + (size_t)b * k * s + v;
            double mx = x[0], sum = 0;
            for (int c = 1; c < k; c++) mx = x[(size_t)c * s] > mx ? x[(size_t)c * s] : mx;
            for (int c = 0; c < k; c++) sum += exp(x[(size_t)c * s] - mx);
            for (int c = 0; c < k; c++)
                prob[(size_t)b * k * s + (size_t)c * s + v] =
                    (float)(exp(x[(size_t)c * s] - mx) / sum);
            int y = label[(size_t)b * s + v];
            if (!ref_counted(y, ignore, k)) continue;
            double wy = class_w ? class_w[y] : 1.0;
            l += wy * -(x[(size_t)y * s] - mx - log(sum));
            wsum += wy;
        }
    *loss = wsum > 0 ? (float)(l / wsum) : 0.0f;
    return 0;
}

int op_dice_forward_ref(float *loss, const float *prob, const uint8_t *label, int ignore,
                        int first_class, int n, int k, size_t s)
{
    double sum = 0;
    int present = 0;
    for (int b = 0; b < n; b++)
        for (int c = first_class; c < k; c++) {
            double I = 0, P = 0, G = 0;
            for (size_t v = 0; v < s; v++) {
                int y = label[(size_t)b * s + v];
                if (!ref_counted(y, ignore, k)) continue;
                double p = prob[((size_t)b * k + c) * s + v], g = y == c;
                I += p * g;
                P += p;
                G += g;
            }
            if (G == 0) continue;
            sum += (2 * I + OP_DICE_SMOOTH) / (P + G + OP_DICE_SMOOTH);
            present++;
        }
    *loss = present ? (float)(1.0 - sum / present) : 0.0f;
    return 0;
}

/* ---- organ pooling ---------------------------------------------------------------------- */

void op_mpool_forward_ref(float *out, int64_t *count, const float *feat, const uint8_t *label,
                          int k, int c, size_t s)
{
    for (int j = 0; j < k; j++) {
        count[j] = 0;
        for (size_t v = 0; v < s; v++) count[j] += label[v] == j;
        for (int ch = 0; ch < c; ch++) {
            double t = 0;
            for (size_t v = 0; v < s; v++)
                if (label[v] == j) t += feat[(size_t)ch * s + v];
            out[(size_t)j * c + ch] = count[j] ? (float)(t / (double)count[j]) : 0.0f;
        }
    }
}

void op_xpool_forward_ref(float *out, int ld, int64_t *arg, const float *feat,
                          const uint8_t *label, int k, int c, size_t s)
{
    for (int j = 0; j < k; j++)
        for (int ch = 0; ch < c; ch++) {
            int64_t at = -1;
            for (size_t v = 0; v < s; v++)
                if (label[v] == j && (at < 0 || feat[(size_t)ch * s + v] > feat[(size_t)ch * s + at]))
                    at = (int64_t)v;
            out[(size_t)j * ld + ch] = at < 0 ? 0.0f : feat[(size_t)ch * s + at];
            arg[(size_t)j * c + ch] = at;
        }
}

/* ---- InfoNCE ------------------------------------------------------------------------------ */

int op_infonce_forward_ref(float *loss, float *prob, const float *a, const float *b,
                           const int *pos, const uint8_t *mask, int r, int m, int e, float tau)
{
    double l = 0;
    int rows = 0;
    double *lg = malloc((size_t)m * sizeof *lg);
    if (!lg) return CTG_ENOMEM;
    for (int i = 0; i < r; i++) {
        int p = pos ? pos[i] : i;
        for (int j = 0; j < m; j++) prob[(size_t)i * m + j] = 0;
        if (p < 0) continue;
        if (p >= m || (mask && mask[(size_t)i * m + p])) {
            free(lg);
            return CTG_EINVAL;
        }
        double sum = 0;
        for (int j = 0; j < m; j++) {
            double t = 0;
            for (int q = 0; q < e; q++) t += (double)a[(size_t)i * e + q] * b[(size_t)j * e + q];
            lg[j] = t / tau;
            if (!(mask && mask[(size_t)i * m + j])) sum += exp(lg[j]);
        }
        for (int j = 0; j < m; j++)
            if (!(mask && mask[(size_t)i * m + j]))
                prob[(size_t)i * m + j] = (float)(exp(lg[j]) / sum);
        l += -(lg[p] - log(sum));
        rows++;
    }
    free(lg);
    *loss = rows ? (float)(l / rows) : 0.0f;
    return 0;
}
