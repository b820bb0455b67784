/*
 * files.c - collecting the files of a study from paths given on the
 * command line (files or folder trees), for `ctglip volume` and `ctglip
 * infer`.  Single-threaded command-line code.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/core.h"
#include "tools/tools.h"

/* A folder tree holds at most this many files; a study of more is not a
 * CT study these tools should be reading in one go. */
#define MAX_FILES 200000

static int list_add(ctg_file_list *l, const char *path)
{
    if (l->n == MAX_FILES) return CTG_ETOOBIG;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 256;
        char **v = realloc(l->v, cap * sizeof *v);
        if (!v) return CTG_ENOMEM;
        l->v = v;
        l->cap = cap;
    }
    if (!(l->v[l->n] = strdup(path))) return CTG_ENOMEM;
    l->n++;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int walk(ctg_file_list *l, const char *path, int depth)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "ctglip: %s: %s\n", path, strerror(errno));
        return ctg_errno(errno);
    }
    if (!S_ISDIR(st.st_mode)) return S_ISREG(st.st_mode) ? list_add(l, path) : 0;
    if (depth > 16) return 0;
    DIR *d = opendir(path);
    if (!d) {
        fprintf(stderr, "ctglip: %s: %s\n", path, strerror(errno));
        return ctg_errno(errno);
    }
    struct dirent *e;
    int rc = 0;
    while (rc == 0 && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char sub[4096];
        if ((size_t)snprintf(sub, sizeof sub, "%s/%s", path, e->d_name) >= sizeof sub) continue;
        rc = walk(l, sub, depth + 1);
    }
    closedir(d);
    return rc;
}

int ctg_collect_files(ctg_file_list *l, const char *path, int depth)
{
    int rc = walk(l, path, depth);
    if (rc == 0 && l->n) qsort(l->v, l->n, sizeof *l->v, cmp_str);
    return rc;
}

void ctg_file_list_free(ctg_file_list *l)
{
    for (size_t i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}
