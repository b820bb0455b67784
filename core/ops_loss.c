/*
 * ops_loss.c - fast CPU versions of the losses and poolings in ops.h:
 * per-voxel softmax, softmax cross-entropy, soft Dice, argmax, masked
 * average pooling per label (organ pooling), row-wise InfoNCE and the
 * symmetric CLIP loss.
 *
 * Class scores are [n][k][s], so one voxel's k scores lie s floats apart.
 * The voxel loops therefore work on chunks of CHUNK voxels with the class
 * loop outside, which keeps every inner loop contiguous.  Loss sums are
 * kept per chunk (or per row) and added in a fixed order afterwards, so the
 * result does not depend on the number of threads.
 *
 * Threading: no state; see ops.h.
 */
#include "core/ops.h"

#include "core/core.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/ops_int.h"

#define CHUNK 256

static int counted(const uint8_t *label, size_t v, int ignore, int k)
{
    return label[v] < k && (int)label[v] != ignore;
}

/* ---- softmax ---------------------------------------------------------------- */

/* Softmax of the voxels [v0, v1) of one sample; when lse is not NULL it also
 * receives log(sum exp(x - max)) + max per voxel. */
static void softmax_chunk(float *prob, const float *x, int k, size_t s, size_t v0, size_t v1,
                          float *lse)
{
    float mx[CHUNK], sum[CHUNK];
    size_t nv = v1 - v0;
    for (size_t j = 0; j < nv; j++) mx[j] = -FLT_MAX;
    for (int c = 0; c < k; c++) {
        const float *xc = x + (size_t)c * s + v0;
        for (size_t j = 0; j < nv; j++) mx[j] = xc[j] > mx[j] ? xc[j] : mx[j];
    }
    for (size_t j = 0; j < nv; j++) sum[j] = 0;
    for (int c = 0; c < k; c++) {
        const float *xc = x + (size_t)c * s + v0;
        float *pc = prob + (size_t)c * s + v0;
        for (size_t j = 0; j < nv; j++) {
            pc[j] = expf(xc[j] - mx[j]);
            sum[j] += pc[j];
        }
    }
    for (size_t j = 0; j < nv; j++) {
        if (lse) lse[j] = logf(sum[j]) + mx[j];
        sum[j] = 1.0f / sum[j];
    }
    for (int c = 0; c < k; c++) {
        float *pc = prob + (size_t)c * s + v0;
        for (size_t j = 0; j < nv; j++) pc[j] *= sum[j];
    }
}

void op_softmax_forward_cpu(float *prob, const float *logits, int n, int k, size_t s)
{
    size_t nch = (s + CHUNK - 1) / CHUNK;
    long jobs = (long)(n * nch);
    PAR_FOR(jobs > 1 && (size_t)n * k * s > PAR_MIN)
    for (long q = 0; q < jobs; q++) {
        size_t b = (size_t)q / nch, v0 = ((size_t)q % nch) * CHUNK;
        size_t v1 = v0 + CHUNK < s ? v0 + CHUNK : s;
        size_t off = b * (size_t)k * s;
        softmax_chunk(prob + off, logits + off, k, s, v0, v1, NULL);
    }
}

void op_softmax_backward_cpu(float *dlogits, const float *dprob, const float *prob, int n, int k,
                             size_t s)
{
    size_t nch = (s + CHUNK - 1) / CHUNK;
    long jobs = (long)(n * nch);
    PAR_FOR(jobs > 1 && (size_t)n * k * s > PAR_MIN)
    for (long q = 0; q < jobs; q++) {
        size_t b = (size_t)q / nch, v0 = ((size_t)q % nch) * CHUNK;
        size_t v1 = v0 + CHUNK < s ? v0 + CHUNK : s, nv = v1 - v0;
        size_t off = b * (size_t)k * s + v0;
        float dot[CHUNK];
        for (size_t j = 0; j < nv; j++) dot[j] = 0;
        for (int c = 0; c < k; c++) {
            const float *pc = prob + off + (size_t)c * s, *gc = dprob + off + (size_t)c * s;
            for (size_t j = 0; j < nv; j++) dot[j] += pc[j] * gc[j];
        }
        for (int c = 0; c < k; c++) {
            const float *pc = prob + off + (size_t)c * s, *gc = dprob + off + (size_t)c * s;
            float *dc = dlogits + off + (size_t)c * s;
            for (size_t j = 0; j < nv; j++) dc[j] += pc[j] * (gc[j] - dot[j]);
        }
    }
}

/* ---- cross-entropy ---------------------------------------------------------------- */

int op_softmax_ce_forward_cpu(float *loss, float *prob, const float *logits, const uint8_t *label,
                              const float *class_w, int ignore, int n, int k, size_t s)
{
    *loss = 0;
    if (k <= 0 || k > 256 || n <= 0) return CTG_EINVAL;
    size_t nch = (s + CHUNK - 1) / CHUNK;
    long jobs = (long)(n * nch);
    double *part = malloc(2 * (size_t)jobs * sizeof *part); /* loss, weight per chunk */
    if (!part) return CTG_ENOMEM;
    PAR_FOR(jobs > 1 && (size_t)n * k * s > PAR_MIN)
    for (long q = 0; q < jobs; q++) {
        size_t b = (size_t)q / nch, v0 = ((size_t)q % nch) * CHUNK;
        size_t v1 = v0 + CHUNK < s ? v0 + CHUNK : s;
        size_t off = b * (size_t)k * s;
        float lse[CHUNK];
        softmax_chunk(prob + off, logits + off, k, s, v0, v1, lse);
        const uint8_t *lab = label + b * s;
        double l = 0, wsum = 0;
        for (size_t v = v0; v < v1; v++) {
            if (!counted(lab, v, ignore, k)) continue;
            int y = lab[v];
            double wy = class_w ? class_w[y] : 1.0;
            /* -log softmax = lse - x_y, exact even where prob underflows. */
            l += wy * ((double)lse[v - v0] - logits[off + (size_t)y * s + v]);
            wsum += wy;
        }
        part[2 * q] = l;
        part[2 * q + 1] = wsum;
    }
    double l = 0, wsum = 0;
    for (long q = 0; q < jobs; q++) {
        l += part[2 * q];
        wsum += part[2 * q + 1];
    }
    free(part);
    *loss = wsum > 0 ? (float)(l / wsum) : 0.0f;
    return 0;
}

void op_softmax_ce_backward_cpu(float *dlogits, float dloss, const float *prob,
                                const uint8_t *label, const float *class_w, int ignore, int n,
                                int k, size_t s)
{
    /* The normaliser sum_v w[y_v] again; one pass over the labels. */
    double wsum = 0;
    for (size_t v = 0; v < (size_t)n * s; v++)
        if (counted(label, v, ignore, k)) wsum += class_w ? class_w[label[v]] : 1.0;
    if (wsum <= 0) return;
    float scale = (float)(dloss / wsum);
    size_t nch = (s + CHUNK - 1) / CHUNK;
    long jobs = (long)(n * nch);
    PAR_FOR(jobs > 1 && (size_t)n * k * s > PAR_MIN)
    for (long q = 0; q < jobs; q++) {
        size_t b = (size_t)q / nch, v0 = ((size_t)q % nch) * CHUNK;
        size_t v1 = v0 + CHUNK < s ? v0 + CHUNK : s;
        size_t off = b * (size_t)k * s;
        const uint8_t *lab = label + b * s;
        float f[CHUNK];
        for (size_t v = v0; v < v1; v++)
            f[v - v0] = counted(lab, v, ignore, k) ? scale * (class_w ? class_w[lab[v]] : 1.0f)
                                                   : 0.0f;
        for (int c = 0; c < k; c++) {
            const float *pc = prob + off + (size_t)c * s;
            float *dc = dlogits + off + (size_t)c * s;
            for (size_t v = v0; v < v1; v++) dc[v] += f[v - v0] * pc[v];
        }
        for (size_t v = v0; v < v1; v++)
            if (f[v - v0] != 0.0f) dlogits[off + (size_t)lab[v] * s + v] -= f[v - v0];
    }
}

/* ---- Dice ----------------------------------------------------------------------------- */

/* I, P, G of every (sample, class) pair into st[3*(b*k+c)]. */
static void dice_stats(double *st, const float *prob, const uint8_t *label, int ignore, int n,
                       int k, size_t s)
{
    long pairs = (long)n * k;
    PAR_FOR(pairs > 1 && (size_t)n * k * s > PAR_MIN)
    for (long q = 0; q < pairs; q++) {
        int b = (int)(q / k), c = (int)(q % k);
        const float *p = prob + (size_t)q * s;
        const uint8_t *lab = label + (size_t)b * s;
        double I = 0, P = 0, G = 0;
        for (size_t v0 = 0; v0 < s; v0 += CHUNK) {
            size_t v1 = v0 + CHUNK < s ? v0 + CHUNK : s;
            float i_ = 0, p_ = 0, g_ = 0;
            for (size_t v = v0; v < v1; v++) {
                if (!counted(lab, v, ignore, k)) continue;
                p_ += p[v];
                if (lab[v] == c) {
                    i_ += p[v];
                    g_ += 1;
                }
            }
            I += i_;
            P += p_;
            G += g_;
        }
        st[3 * q] = I;
        st[3 * q + 1] = P;
        st[3 * q + 2] = G;
    }
}

int op_dice_forward_cpu(float *loss, const float *prob, const uint8_t *label, int ignore,
                        int first_class, int n, int k, size_t s)
{
    *loss = 0;
    if (k <= 0 || k > 256 || n <= 0) return CTG_EINVAL;
    double *st = malloc(3 * (size_t)n * k * sizeof *st);
    if (!st) return CTG_ENOMEM;
    dice_stats(st, prob, label, ignore, n, k, s);
    double sum = 0;
    int present = 0;
    for (int b = 0; b < n; b++)
        for (int c = first_class; c < k; c++) {
            const double *t = st + 3 * ((size_t)b * k + c);
            if (t[2] <= 0) continue;
            sum += (2 * t[0] + OP_DICE_SMOOTH) / (t[1] + t[2] + OP_DICE_SMOOTH);
            present++;
        }
    free(st);
    *loss = present ? (float)(1.0 - sum / present) : 0.0f;
    return 0;
}

int op_dice_backward_cpu(float *dprob, float dloss, const float *prob, const uint8_t *label,
                         int ignore, int first_class, int n, int k, size_t s)
{
    if (k <= 0 || k > 256 || n <= 0) return CTG_EINVAL;
    double *st = malloc(3 * (size_t)n * k * sizeof *st);
    if (!st) return CTG_ENOMEM;
    dice_stats(st, prob, label, ignore, n, k, s);
    int present = 0;
    for (int b = 0; b < n; b++)
        for (int c = first_class; c < k; c++) present += st[3 * ((size_t)b * k + c) + 2] > 0;
    if (present) {
        long pairs = (long)n * k;
        PAR_FOR(pairs > 1 && (size_t)n * k * s > PAR_MIN)
        for (long q = 0; q < pairs; q++) {
            int b = (int)(q / k), c = (int)(q % k);
            const double *t = st + 3 * q;
            if (c < first_class || t[2] <= 0) continue;
            /* d dice / d p_v = (2 g_v (P+G+sm) - (2I+sm)) / (P+G+sm)^2 and
             * loss = 1 - mean dice. */
            double den = t[1] + t[2] + OP_DICE_SMOOTH;
            double f = -(double)dloss / present / (den * den);
            float a1 = (float)(f * 2 * den), a0 = (float)(-f * (2 * t[0] + OP_DICE_SMOOTH));
            float *dp = dprob + (size_t)q * s;
            const uint8_t *lab = label + (size_t)b * s;
            for (size_t v = 0; v < s; v++) {
                if (!counted(lab, v, ignore, k)) continue;
                dp[v] += (lab[v] == c ? a1 : 0.0f) + a0;
            }
        }
    }
    free(st);
    return 0;
}

void op_argmax_cpu(uint8_t *label, const float *x, int n, int k, size_t s)
{
    if (k > 256) k = 256; /* a byte holds no more classes */
    size_t nch = (s + CHUNK - 1) / CHUNK;
    long jobs = (long)(n * nch);
    PAR_FOR(jobs > 1 && (size_t)n * k * s > PAR_MIN)
    for (long q = 0; q < jobs; q++) {
        size_t b = (size_t)q / nch, v0 = ((size_t)q % nch) * CHUNK;
        size_t v1 = v0 + CHUNK < s ? v0 + CHUNK : s;
        const float *xb = x + b * (size_t)k * s;
        float best[CHUNK];
        uint8_t *lb = label + b * s;
        for (size_t v = v0; v < v1; v++) {
            best[v - v0] = xb[v];
            lb[v] = 0;
        }
        for (int c = 1; c < k; c++) {
            const float *xc = xb + (size_t)c * s;
            for (size_t v = v0; v < v1; v++)
                if (xc[v] > best[v - v0]) {
                    best[v - v0] = xc[v];
                    lb[v] = (uint8_t)c;
                }
        }
    }
}

/* ---- organ pooling ---------------------------------------------------------------------- */

void op_mpool_forward_cpu(float *out, int64_t *count, const float *feat, const uint8_t *label,
                          int k, int c, size_t s)
{
    /* Labels are bytes: rows from 256 on can never fill. */
    for (int j = 256; j < k; j++) {
        count[j] = 0;
        memset(out + (size_t)j * c, 0, (size_t)c * sizeof *out);
    }
    if (k > 256) k = 256;
    for (int j = 0; j < k; j++) count[j] = 0;
    for (size_t v = 0; v < s; v++)
        if (label[v] < k) count[label[v]]++;
    PAR_FOR(c > 1 && (size_t)c * s > PAR_MIN)
    for (int ch = 0; ch < c; ch++) {
        double acc[256];
        float part[256];
        for (int j = 0; j < k; j++) acc[j] = 0;
        const float *f = feat + (size_t)ch * s;
        /* Float partial sums over short runs, added into double: exact
         * enough for means over millions of voxels and cheap. */
        for (size_t v0 = 0; v0 < s; v0 += 4096) {
            size_t v1 = v0 + 4096 < s ? v0 + 4096 : s;
            for (int j = 0; j < k; j++) part[j] = 0;
            for (size_t v = v0; v < v1; v++)
                if (label[v] < k) part[label[v]] += f[v];
            for (int j = 0; j < k; j++) acc[j] += part[j];
        }
        for (int j = 0; j < k; j++)
            out[(size_t)j * c + ch] = count[j] ? (float)(acc[j] / (double)count[j]) : 0.0f;
    }
}

void op_mpool_backward_cpu(float *dfeat, const float *dout, const int64_t *count,
                           const uint8_t *label, int k, int c, size_t s)
{
    if (k > 256) k = 256;
    PAR_FOR(c > 1 && (size_t)c * s > PAR_MIN)
    for (int ch = 0; ch < c; ch++) {
        float g[256];
        for (int j = 0; j < k; j++)
            g[j] = count[j] ? dout[(size_t)j * c + ch] / (float)count[j] : 0.0f;
        float *df = dfeat + (size_t)ch * s;
        for (size_t v = 0; v < s; v++)
            if (label[v] < k) df[v] += g[label[v]];
    }
}

void op_xpool_forward_cpu(float *out, int ld, int64_t *arg, const float *feat,
                          const uint8_t *label, int k, int c, size_t s)
{
    for (int j = 256; j < k; j++)
        for (int ch = 0; ch < c; ch++) {
            out[(size_t)j * ld + ch] = 0.0f;
            arg[(size_t)j * c + ch] = -1;
        }
    if (k > 256) k = 256;
    PAR_FOR(c > 1 && (size_t)c * s > PAR_MIN)
    for (int ch = 0; ch < c; ch++) {
        float best[256];
        int64_t at[256];
        for (int j = 0; j < k; j++) best[j] = 0.0f, at[j] = -1;
        const float *f = feat + (size_t)ch * s;
        for (size_t v = 0; v < s; v++) {
            int j = label[v];
            if (j < k && (at[j] < 0 || f[v] > best[j])) best[j] = f[v], at[j] = (int64_t)v;
        }
        for (int j = 0; j < k; j++) {
            out[(size_t)j * ld + ch] = best[j];
            arg[(size_t)j * c + ch] = at[j];
        }
    }
}

void op_xpool_backward_cpu(float *dfeat, const float *dout, int ld, const int64_t *arg, int k,
                           int c, size_t s)
{
    for (int j = 0; j < k; j++)
        for (int ch = 0; ch < c; ch++) {
            int64_t v = arg[(size_t)j * c + ch];
            if (v >= 0 && (size_t)v < s) dfeat[(size_t)ch * s + (size_t)v] += dout[(size_t)j * ld + ch];
        }
}

/* ---- InfoNCE --------------------------------------------------------------------------- */

static int pos_of(const int *pos, int i) { return pos ? pos[i] : i; }

int op_infonce_forward_cpu(float *loss, float *prob, const float *a, const float *b,
                           const int *pos, const uint8_t *mask, int r, int m, int e, float tau)
{
    *loss = 0;
    if (r <= 0 || m <= 0 || e <= 0 || !(tau > 0)) return CTG_EINVAL;
    for (int i = 0; i < r; i++) {
        int p = pos_of(pos, i);
        if (p >= m || (p >= 0 && mask && mask[(size_t)i * m + p])) return CTG_EINVAL;
    }
    double *rowloss = malloc((size_t)r * sizeof *rowloss);
    if (!rowloss) return CTG_ENOMEM;
    float inv_tau = 1.0f / tau;
    PAR_FOR((long)r * m * e > PAR_MIN)
    for (int i = 0; i < r; i++) {
        float *pr = prob + (size_t)i * m;
        int p = pos_of(pos, i);
        rowloss[i] = 0;
        if (p < 0) {
            memset(pr, 0, (size_t)m * sizeof *pr);
            continue;
        }
        const float *ai = a + (size_t)i * e;
        const uint8_t *mi = mask ? mask + (size_t)i * m : NULL;
        /* Logits into prob, then a masked softmax in place. */
        float mx = -FLT_MAX;
        for (int j = 0; j < m; j++) {
            if (mi && mi[j]) continue;
            const float *bj = b + (size_t)j * e;
            float t = 0;
            SIMD_SUM(t)
            for (int q = 0; q < e; q++) t += ai[q] * bj[q];
            pr[j] = t * inv_tau;
            mx = pr[j] > mx ? pr[j] : mx;
        }
        double sum = 0;
        for (int j = 0; j < m; j++) {
            if (mi && mi[j]) continue;
            sum += exp((double)pr[j] - mx);
        }
        double lse = log(sum) + mx;
        rowloss[i] = lse - pr[p];
        for (int j = 0; j < m; j++) pr[j] = (mi && mi[j]) ? 0.0f : (float)exp(pr[j] - lse);
    }
    double l = 0;
    int rows = 0;
    for (int i = 0; i < r; i++) {
        if (pos_of(pos, i) < 0) continue;
        l += rowloss[i];
        rows++;
    }
    free(rowloss);
    *loss = rows ? (float)(l / rows) : 0.0f;
    return 0;
}

void op_infonce_backward_cpu(float *da, float *db, float dloss, const float *prob, const float *a,
                             const float *b, const int *pos, int r, int m, int e, float tau)
{
    int rows = 0;
    for (int i = 0; i < r; i++) rows += pos_of(pos, i) >= 0;
    if (!rows) return;
    /* dL/dlogit[i][j] = dloss/rows * (prob[i][j] - [j == pos[i]]); logits =
     * a b^T / tau. */
    float f = dloss / (float)rows / tau;
    if (da) {
        PAR_FOR((long)r * m * e > PAR_MIN)
        for (int i = 0; i < r; i++) {
            int p = pos_of(pos, i);
            if (p < 0) continue;
            float *dai = da + (size_t)i * e;
            const float *pr = prob + (size_t)i * m;
            for (int j = 0; j < m; j++) {
                float g = f * (pr[j] - (j == p ? 1.0f : 0.0f));
                if (g == 0.0f) continue;
                const float *bj = b + (size_t)j * e;
                for (int q = 0; q < e; q++) dai[q] += g * bj[q];
            }
        }
    }
    if (db) {
        PAR_FOR((long)r * m * e > PAR_MIN)
        for (int j = 0; j < m; j++) {
            float *dbj = db + (size_t)j * e;
            for (int i = 0; i < r; i++) {
                int p = pos_of(pos, i);
                if (p < 0) continue;
                float g = f * (prob[(size_t)i * m + j] - (j == p ? 1.0f : 0.0f));
                if (g == 0.0f) continue;
                const float *ai = a + (size_t)i * e;
                for (int q = 0; q < e; q++) dbj[q] += g * ai[q];
            }
        }
    }
}

int op_clip_forward_cpu(float *loss, float *prob_i2t, float *prob_t2i, const float *img,
                        const float *txt, const uint8_t *mask, int n, int m, int e, float tau)
{
    *loss = 0;
    if (n <= 0 || m < n) return CTG_EINVAL;
    uint8_t *mt = NULL;
    if (mask) {
        mt = malloc((size_t)n * n);
        if (!mt) return CTG_ENOMEM;
        for (int j = 0; j < n; j++)
            for (int i = 0; i < n; i++) mt[(size_t)j * n + i] = mask[(size_t)i * m + j];
    }
    float l1 = 0, l2 = 0;
    int rc = op_infonce_forward_cpu(&l1, prob_i2t, img, txt, NULL, mask, n, m, e, tau);
    if (!rc) rc = op_infonce_forward_cpu(&l2, prob_t2i, txt, img, NULL, mt, n, n, e, tau);
    free(mt);
    if (!rc) *loss = 0.5f * (l1 + l2);
    return rc;
}

void op_clip_backward_cpu(float *dimg, float *dtxt, float dloss, const float *prob_i2t,
                          const float *prob_t2i, const float *img, const float *txt, int n, int m,
                          int e, float tau)
{
    op_infonce_backward_cpu(dimg, dtxt, 0.5f * dloss, prob_i2t, img, txt, NULL, n, m, e, tau);
    /* The text->image rows are the first n texts; their gradient lands in
     * the first n rows of dtxt. */
    op_infonce_backward_cpu(dtxt, dimg, 0.5f * dloss, prob_t2i, txt, img, NULL, n, n, e, tau);
}
