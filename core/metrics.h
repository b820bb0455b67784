/*
 * metrics.h - evaluation metrics for `ctglip-train eval`: ROC AUC,
 * confusion counts with PPV, sensitivity and F1 at a threshold, Dice per
 * label between two label maps, top-1 accuracy, and macro averages.  Part of
 * core/'s public interface.
 *
 * Undefined values are NaN, never a made-up 0 or 1, and macro averages skip
 * them; the report says how many entries each average used.  Conventions:
 *   AUC          NaN when either class is absent (or a score is NaN);
 *                ties count one half (Mann-Whitney U with average ranks).
 *   PPV          TP / (TP + FP); NaN when nothing is predicted positive.
 *   sensitivity  TP / (TP + FN); NaN when there are no positives.
 *   specificity  TN / (TN + FP); NaN when there are no negatives.
 *   F1           2TP / (2TP + FP + FN); NaN only when TP + FP + FN = 0 (no
 *                positives and none predicted: nothing to get right or
 *                wrong).  With positives and none predicted it is 0; with
 *                no positives but false alarms it is 0.
 *   Dice         2|A and B| / (|A| + |B|) per label; NaN when the label is
 *                absent from both maps, 0 when it is in only one.
 *   top-1        NaN for zero cases.
 * A case is predicted positive when its score is >= the threshold.
 *
 * Threading: pure functions, safe everywhere.
 */
#ifndef CTGLIP_METRICS_H
#define CTGLIP_METRICS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ROC AUC of scores against labels (non-zero = positive) by the Mann-Whitney
 * statistic with average ranks for ties.  *auc is NaN when undefined (see
 * above).  Returns 0, CTG_EINVAL (NULL pointers) or CTG_ENOMEM. */
int met_auc(const float *score, const uint8_t *label, size_t n, double *auc);

typedef struct met_counts {
    size_t tp, fp, fn, tn;
} met_counts;

/* Confusion counts at a threshold (score >= thr is positive).  A NaN score
 * is never predicted positive. */
met_counts met_count(const float *score, const uint8_t *label, size_t n, float thr);
double met_ppv(const met_counts *c);
double met_sensitivity(const met_counts *c);
double met_specificity(const met_counts *c);
double met_f1(const met_counts *c);

/* Calibration: the threshold that maximises F1 of scores against labels.
 * Candidates lie between consecutive distinct scores (a float strictly
 * above the lower one and at most the higher one, so score >= thr splits
 * exactly there), plus one at or below the lowest score (everything called
 * positive: half of it, or the lowest score itself when that is not
 * positive).  On ties the highest threshold wins (fewer calls).  *f1 (may be NULL) gets the F1 at
 * *thr.  Returns 0, CTG_EINVAL (NULL pointers, n 0, a NaN score, or no
 * positive label: nothing to calibrate on) or CTG_ENOMEM. */
int met_best_f1_threshold(const float *score, const uint8_t *label, size_t n, float *thr,
                          double *f1);

/* Dice of one label between two maps of n voxels. */
double met_dice(const uint8_t *a, const uint8_t *b, size_t n, int label);
/* Dice of labels 1..nlabels-1 in one pass into dice[1..nlabels-1]; dice[0]
 * (background) is NaN.  nlabels 1..256.  Returns 0 or CTG_EINVAL. */
int met_dice_all(const uint8_t *pred, const uint8_t *truth, size_t n, int nlabels,
                 double *dice);

/* Index of the largest of k scores (the first one on ties, NaN skipped),
 * or -1 when k < 1 or all are NaN. */
int met_argmax(const float *scores, int k);
/* Fraction of n cases whose argmax over nclass scores (row i at
 * scores[i*nclass]) equals truth[i].  NaN when n is 0. */
double met_top1(const float *scores, int nclass, const int *truth, size_t n);

/* Mean of the non-NaN values of v; NaN when there are none.  *used (may be
 * NULL) gets how many were averaged. */
double met_macro(const double *v, size_t n, size_t *used);

#ifdef __cplusplus
}
#endif
#endif
