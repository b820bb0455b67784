/*
 * retrain.h - `ctglip-retrain`, the nightly fine-tuning from the hospital's
 * own studies and final reports (tools/retrain.c).
 */
#ifndef CTGLIP_RETRAIN_H
#define CTGLIP_RETRAIN_H

/* The whole command line of ctglip-retrain (argv[0] is the program).
 * Returns the exit status: 0 (published, rejected, paused or nothing to
 * do: see its output and WORK/decisions.jsonl), 1 failure, 2 usage. */
int ctg_retrain_main(int argc, char **argv);

#endif
