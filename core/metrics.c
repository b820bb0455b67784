/*
 * metrics.c - evaluation metrics (conventions in core/metrics.h).
 *
 * Sums are kept in size_t counts or doubles, so the results do not depend
 * on the order of the cases beyond the last bit of a double.
 *
 * Threading: no shared state; every function may run on any thread.
 */
#include "core/metrics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

typedef struct scored {
    float s;
    uint8_t pos;
} scored;

static int cmp_scored(const void *a, const void *b)
{
    float x = ((const scored *)a)->s, y = ((const scored *)b)->s;
    return (x > y) - (x < y);
}

int met_auc(const float *score, const uint8_t *label, size_t n, double *auc)
{
    if (!auc) return CTG_EINVAL;
    *auc = NAN;
    if (n && (!score || !label)) return CTG_EINVAL;
    size_t npos = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(score[i])) return 0;
        npos += label[i] != 0;
    }
    size_t nneg = n - npos;
    if (!npos || !nneg) return 0;
    scored *v = malloc(n * sizeof *v);
    if (!v) return CTG_ENOMEM;
    for (size_t i = 0; i < n; i++) v[i] = (scored){score[i], label[i] != 0};
    qsort(v, n, sizeof *v, cmp_scored);
    /* Sum of the 1-based ranks of the positives, a tied group sharing the
     * average of the ranks it spans. */
    double rsum = 0;
    for (size_t i = 0; i < n;) {
        size_t j = i, p = 0;
        while (j < n && v[j].s == v[i].s) p += v[j++].pos;
        double avg = (double)(i + 1 + j) / 2; /* mean of ranks i+1 .. j */
        rsum += avg * (double)p;
        i = j;
    }
    free(v);
    double u = rsum - (double)npos * ((double)npos + 1) / 2;
    *auc = u / ((double)npos * (double)nneg);
    return 0;
}

int met_best_f1_threshold(const float *score, const uint8_t *label, size_t n, float *thr,
                          double *f1)
{
    if (!score || !label || !thr || !n) return CTG_EINVAL;
    size_t npos = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(score[i])) return CTG_EINVAL;
        npos += label[i] != 0;
    }
    if (!npos) return CTG_EINVAL;
    scored *v = malloc(n * sizeof *v);
    if (!v) return CTG_ENOMEM;
    for (size_t i = 0; i < n; i++) v[i] = (scored){score[i], label[i] != 0};
    qsort(v, n, sizeof *v, cmp_scored); /* ascending */
    /* Sweep the cut down from the top, one tied group at a time: after a
     * group, everything from it up is called positive. */
    size_t tp = 0, fp = 0;
    double best = -1;
    float best_thr = v[n - 1].s;
    for (size_t j = n; j > 0;) {
        size_t i = j;
        while (i > 0 && v[i - 1].s == v[j - 1].s) {
            i--;
            v[i].pos ? tp++ : fp++;
        }
        double f = 2.0 * (double)tp / (2.0 * (double)tp + (double)fp + (double)(npos - tp));
        if (f > best) {
            float hi = v[i].s, t;
            if (i > 0) {
                float lo = v[i - 1].s;
                t = (float)(((double)lo + (double)hi) / 2);
                if (!(t > lo)) t = nextafterf(lo, hi);
            } else {
                t = hi > 0 ? hi / 2 : hi;
            }
            best = f;
            best_thr = t;
        }
        j = i;
    }
    free(v);
    *thr = best_thr;
    if (f1) *f1 = best;
    return 0;
}

met_counts met_count(const float *score, const uint8_t *label, size_t n, float thr)
{
    met_counts c = {0, 0, 0, 0};
    for (size_t i = 0; score && label && i < n; i++) {
        int pred = score[i] >= thr; /* false for NaN */
        if (label[i]) pred ? c.tp++ : c.fn++;
        else pred ? c.fp++ : c.tn++;
    }
    return c;
}

static double ratio(size_t num, size_t den) { return den ? (double)num / (double)den : NAN; }

double met_ppv(const met_counts *c) { return ratio(c->tp, c->tp + c->fp); }
double met_sensitivity(const met_counts *c) { return ratio(c->tp, c->tp + c->fn); }
double met_specificity(const met_counts *c) { return ratio(c->tn, c->tn + c->fp); }
double met_f1(const met_counts *c) { return ratio(2 * c->tp, 2 * c->tp + c->fp + c->fn); }

double met_dice(const uint8_t *a, const uint8_t *b, size_t n, int label)
{
    if (!a || !b || label < 0 || label > 255) return NAN;
    size_t ca = 0, cb = 0, both = 0;
    for (size_t i = 0; i < n; i++) {
        int x = a[i] == label, y = b[i] == label;
        ca += x;
        cb += y;
        both += x & y;
    }
    return ratio(2 * both, ca + cb);
}

int met_dice_all(const uint8_t *pred, const uint8_t *truth, size_t n, int nlabels, double *dice)
{
    if (!dice || nlabels < 1 || nlabels > 256 || (n && (!pred || !truth))) return CTG_EINVAL;
    size_t cp[256] = {0}, ct[256] = {0}, both[256] = {0};
    for (size_t i = 0; i < n; i++) {
        cp[pred[i]]++;
        ct[truth[i]]++;
        if (pred[i] == truth[i]) both[pred[i]]++;
    }
    dice[0] = NAN;
    for (int l = 1; l < nlabels; l++) dice[l] = ratio(2 * both[l], cp[l] + ct[l]);
    return 0;
}

int met_argmax(const float *scores, int k)
{
    int best = -1;
    for (int i = 0; scores && i < k; i++)
        if (!isnan(scores[i]) && (best < 0 || scores[i] > scores[best])) best = i;
    return best;
}

double met_top1(const float *scores, int nclass, const int *truth, size_t n)
{
    if (!n || !scores || !truth || nclass < 1) return NAN;
    size_t hit = 0;
    for (size_t i = 0; i < n; i++) hit += met_argmax(scores + i * (size_t)nclass, nclass) == truth[i];
    return (double)hit / (double)n;
}

double met_macro(const double *v, size_t n, size_t *used)
{
    double sum = 0;
    size_t k = 0;
    for (size_t i = 0; v && i < n; i++)
        if (!isnan(v[i])) sum += v[i], k++;
    if (used) *used = k;
    return k ? sum / (double)k : NAN;
}
