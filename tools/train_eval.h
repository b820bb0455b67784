/*
 * train_eval.h - `ctglip-train eval`: zero-shot organ classification,
 * zero-shot abnormality detection and segmentation Dice of one or more
 * models on a manifest, written as a JSON report and, for several models,
 * a Markdown table laid out like Table 1 of the CT-GLIP paper.
 *
 * Threading: runs on the calling thread (and the OpenMP threads of the
 * ops); keeps no global state.
 */
#ifndef CTGLIP_TRAIN_EVAL_H
#define CTGLIP_TRAIN_EVAL_H

/* ctglip-train eval --model M --data MANIFEST --out REPORT.json
 *     [--findings etc/findings.conf] [--text train|heldout|all]
 *     [--threshold T] [--spacing MM[,MM,MM]] [--vocab FILE]
 *     [--overlap F] [--threads N]
 *     [--table REPORT.md --rows 'NAME=MODEL,NAME=MODEL,...']
 * argv[0] is "eval".  Returns the exit status: 0 success, 1 failure,
 * 2 usage. */
int trn_eval_main(int argc, char **argv);

/* ctglip-train calibrate --model M --data MANIFEST --out CALIBRATED
 *     [--findings F] [--text T] [--spacing MM] [--vocab FILE] [--overlap F]
 *     [--threads N] [--min-positives N]
 * Scores the data as eval does and writes the model again with, as
 * metadata, each finding's F1-optimal decision threshold (findings with
 * fewer than N positives get the threshold pooled over all findings) and
 * what it was calibrated on.  Same exit statuses. */
int trn_calibrate_main(int argc, char **argv);

#endif
