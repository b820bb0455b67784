/*
 * ctglip_train.c - main() of `ctglip-train`, the offline trainer: it only
 * dispatches to the subcommands, `pretrain` and `finetune` (tools/train.c)
 * and `eval` and `calibrate` (tools/train_eval.c).
 *
 * Threading: single-threaded apart from the OpenMP threads of the ops.
 */
#include <stdio.h>
#include <string.h>

#include "core/core.h"
#include "tools/train.h"
#include "tools/train_eval.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: ctglip-train pretrain|finetune|eval|calibrate [options]   (--help after the "
               "subcommand for its options)\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "pretrain") == 0) return trn_pretrain_main(argc - 1, argv + 1);
    if (strcmp(cmd, "finetune") == 0) return trn_finetune_main(argc - 1, argv + 1);
    if (strcmp(cmd, "eval") == 0) return trn_eval_main(argc - 1, argv + 1);
    if (strcmp(cmd, "calibrate") == 0) return trn_calibrate_main(argc - 1, argv + 1);
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "ctglip-train: unknown subcommand '%s'\n", cmd);
    usage(stderr);
    return 2;
}
