/*
 * publish.c - putting a model file in service and taking it back out:
 * `ctglip-retrain` publishes, `ctglip model rollback` rolls back.
 *
 * The daemon's workers watch the configured model path and switch to a new
 * file between jobs (daemon/worker.c), so publishing is only an atomic
 * replacement of that path: the new file is written next to it (temp name,
 * fsync), the file in service is kept as PATH.prev (a hard link, so no copy
 * and no moment without a file), the temp file is renamed over PATH, and
 * the folder is fsynced.  A rollback swaps PATH and PATH.prev the same way,
 * so a second rollback restores the published model.
 *
 * Threading: plain functions; one publisher at a time per path (the
 * retrain tool takes a lock file).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/core.h"
#include "core/model.h"
#include "tools/tools.h"

#define WHY(...)                                                                                  \
    do {                                                                                          \
        if (why && n) snprintf(why, n, __VA_ARGS__);                                              \
    } while (0)

static void dir_of(const char *path, char *dir, size_t n)
{
    snprintf(dir, n, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash) snprintf(dir, n, ".");
    else if (slash == dir) dir[1] = 0;
    else *slash = 0;
}

/* A model file must load (checksum, format) before it goes into service. */
static int check_model(const char *path, char id[65], char *why, size_t n)
{
    mdl_model *m = NULL;
    char sub[512] = "";
    int rc = mdl_load(path, &m, sub, sizeof sub);
    if (rc < 0) {
        WHY("%s", sub);
        return rc;
    }
    snprintf(id, 65, "%s", m->identity);
    mdl_free(m);
    return 0;
}

static int copy_durable(const char *src, const char *dst, char *why, size_t n)
{
    FILE *in = fopen(src, "rb");
    if (!in) {
        int rc = ctg_errno(errno);
        WHY("open %s: %s", src, ctg_strerror(rc));
        return rc;
    }
    int fd = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int rc = ctg_errno(errno);
        fclose(in);
        WHY("create %s: %s", dst, ctg_strerror(rc));
        return rc;
    }
    char buf[1 << 16];
    size_t got;
    int rc = 0;
    while (rc == 0 && (got = fread(buf, 1, sizeof buf, in)) > 0) rc = ctg_write_all(fd, buf, got);
    if (rc == 0 && ferror(in)) rc = CTG_EIO;
    if (rc == 0 && fsync(fd) != 0) rc = ctg_errno(errno);
    if (close(fd) != 0 && rc == 0) rc = ctg_errno(errno);
    fclose(in);
    if (rc < 0) {
        unlink(dst);
        WHY("write %s: %s", dst, ctg_strerror(rc));
    }
    return rc;
}

/* Makes `keep` a hard link to `path` (replacing keep atomically). */
static int keep_link(const char *path, const char *keep, char *why, size_t n)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", keep, (long)getpid()) >= (int)sizeof tmp) {
        WHY("path too long");
        return CTG_EINVAL;
    }
    unlink(tmp);
    if (link(path, tmp) != 0 || rename(tmp, keep) != 0) {
        int rc = ctg_errno(errno);
        unlink(tmp);
        WHY("keep %s as %s: %s", path, keep, ctg_strerror(rc));
        return rc;
    }
    return 0;
}

int ctg_model_publish(const char *src, const char *path, char id[65], char *why, size_t n)
{
    char tmp[PATH_MAX], prev[PATH_MAX], dir[PATH_MAX];
    int rc = check_model(src, id, why, n);
    if (rc < 0) return rc;
    if (snprintf(tmp, sizeof tmp, "%s.new.%ld", path, (long)getpid()) >= (int)sizeof tmp ||
        snprintf(prev, sizeof prev, "%s.prev", path) >= (int)sizeof prev) {
        WHY("path too long");
        return CTG_EINVAL;
    }
    if ((rc = copy_durable(src, tmp, why, n)) < 0) return rc;
    struct stat st;
    if (stat(path, &st) == 0 && (rc = keep_link(path, prev, why, n)) < 0) {
        unlink(tmp);
        return rc;
    }
    if (rename(tmp, path) != 0) {
        rc = ctg_errno(errno);
        unlink(tmp);
        WHY("rename %s: %s", path, ctg_strerror(rc));
        return rc;
    }
    dir_of(path, dir, sizeof dir);
    if ((rc = ctg_fsync_dir(dir)) < 0) WHY("fsync %s: %s", dir, ctg_strerror(rc));
    return rc;
}

int ctg_model_rollback(const char *path, char id[65], char *why, size_t n)
{
    char prev[PATH_MAX], cur[PATH_MAX], dir[PATH_MAX];
    if (snprintf(prev, sizeof prev, "%s.prev", path) >= (int)sizeof prev ||
        snprintf(cur, sizeof cur, "%s.cur.%ld", path, (long)getpid()) >= (int)sizeof cur) {
        WHY("path too long");
        return CTG_EINVAL;
    }
    struct stat st;
    if (stat(prev, &st) != 0) {
        WHY("no previous model (%s) to roll back to", prev);
        return CTG_ENOENT;
    }
    int rc = check_model(prev, id, why, n);
    if (rc < 0) return rc;
    /* Swap: the model in service becomes .prev, .prev goes into service. */
    unlink(cur);
    if (link(path, cur) != 0) {
        rc = ctg_errno(errno);
        WHY("link %s: %s", path, ctg_strerror(rc));
        return rc;
    }
    if (rename(prev, path) != 0 || rename(cur, prev) != 0) {
        rc = ctg_errno(errno);
        unlink(cur);
        WHY("rename: %s", ctg_strerror(rc));
        return rc;
    }
    dir_of(path, dir, sizeof dir);
    if ((rc = ctg_fsync_dir(dir)) < 0) WHY("fsync %s: %s", dir, ctg_strerror(rc));
    return rc;
}
