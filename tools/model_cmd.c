/*
 * model_cmd.c - `ctglip model [status|rollback]`: which model the daemon
 * serves (the configured [model] path), what it was trained and calibrated
 * on, the previous one kept beside it, and the rollback to that one.  The
 * daemon notices the replaced file before its next job.
 *
 * Single-threaded command-line code.
 */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "core/core.h"
#include "core/model.h"
#include "tools/tools.h"

static void describe(const char *label, const char *path)
{
    mdl_model *m = NULL;
    char why[512] = "";
    struct stat st;
    if (stat(path, &st) != 0) {
        printf("%-9s %s: none\n", label, path);
        return;
    }
    if (mdl_load(path, &m, why, sizeof why) < 0) {
        printf("%-9s %s: cannot be used: %s\n", label, path, why);
        return;
    }
    char when[64];
    struct tm tm;
    localtime_r(&st.st_mtime, &tm);
    strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
    printf("%-9s %s\n          identity %s, %d organ classes, spacing %.3g mm, %s pooling, "
           "written %s\n",
           label, path, m->identity, m->cfg.n_classes, (double)m->spacing[0],
           m->cfg.pool == MDL_POOL_MEANMAX ? "mean+max" : "mean", when);
    for (int i = 0; i < m->n_meta; i++)
        if (strncmp(m->meta[i].key, "threshold.", 10) != 0)
            printf("          %s = %s\n", m->meta[i].key, m->meta[i].val);
    mdl_free(m);
}

int ctg_model_cmd(const char *path, int argc, char **argv)
{
    const char *what = argc > 0 ? argv[0] : "status";
    char prev[4200];
    snprintf(prev, sizeof prev, "%s.prev", path);
    if (!strcmp(what, "status") && argc <= 1) {
        describe("in use", path);
        describe("previous", prev);
        return 0;
    }
    if (!strcmp(what, "rollback") && argc == 1) {
        char id[65], why[512] = "";
        if (ctg_model_rollback(path, id, why, sizeof why) < 0) {
            fprintf(stderr, "ctglip model rollback: %s\n", why);
            return 1;
        }
        printf("ctglip: model %s now in service at %s (the one it replaced is %s); ctglipd "
               "switches before its next job\n", id, path, prev);
        return 0;
    }
    fprintf(stderr, "usage: ctglip [-c CONF] model [status|rollback]\n");
    return 2;
}
