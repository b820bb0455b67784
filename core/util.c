/*
 * util.c - error text, levelled logging to stderr, clocks and durable
 * file-system helpers.
 *
 * Threading: all functions may be called from any thread.  A log line is
 * written with one locked stdio call so lines from threads never interleave.
 */
#include "core.h"

#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int ctg_log_level = CTG_LOG_INFO;

void ctg_log_set_level(int level)
{
    __atomic_store_n(&ctg_log_level, level, __ATOMIC_RELAXED);
}

const char *ctg_strerror(int err)
{
    switch (err) {
    case 0:
        return "success";
#define CTG__CASE(name, val, msg)                                              \
    case (val):                                                                \
        return msg;
        CTG_ERRNO_MAP(CTG__CASE)
#undef CTG__CASE
    default:
        break;
    }
    if (err < 0 && err > -1000) {
        /* strerror() on glibc returns a static string for known values. */
        return strerror(-err);
    }
    return "unknown error";
}

int ctg_log_parse_level(const char *s)
{
    static const char *names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++)
        if (strcasecmp(s, names[i]) == 0) return i;
    if (strcasecmp(s, "warning") == 0) return CTG_LOG_WARN;
    return -1;
}

void ctg_log_write(int level, const char *fmt, ...)
{
    static const char *tags[] = {"error", "warn", "info", "debug"};
    /* journald reads a "<N>" syslog priority prefix when stderr is a journal
     * stream; a terminal gets a timestamp instead. */
    static const int prio[] = {3, 4, 6, 7};
    static int journal = -1;
    char line[2048];
    size_t n = 0;

    if (level < 0) level = 0;
    if (level > 3) level = 3;
    if (journal < 0) journal = getenv("JOURNAL_STREAM") != NULL;

    if (journal) {
        n = (size_t)snprintf(line, sizeof line, "<%d>", prio[level]);
    } else {
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
        n += (size_t)snprintf(line + n, sizeof line - n, ".%03ldZ [%s] ",
                              ts.tv_nsec / 1000000L, tags[level]);
    }
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - n, fmt, ap);
    va_end(ap);
    if (m < 0) m = 0;
    n += (size_t)m;
    if (n > sizeof line - 2) n = sizeof line - 2;
    line[n++] = '\n';
    line[n] = 0;
    fputs(line, stderr);
    fflush(stderr);
}

double ctg_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

double ctg_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int ctg_fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return ctg_errno(errno);
    int r = 0;
    if (fsync(fd) != 0) r = ctg_errno(errno);
    close(fd);
    return r;
}

int ctg_mkdirs(const char *path)
{
    char buf[PATH_MAX];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof buf) return CTG_EINVAL;
    memcpy(buf, path, len + 1);
    while (len > 1 && buf[len - 1] == '/') buf[--len] = 0;

    struct stat st;
    if (stat(buf, &st) == 0) return S_ISDIR(st.st_mode) ? 0 : CTG_EEXIST;

    /* Create the parent first, then this level. */
    char *slash = strrchr(buf, '/');
    if (slash && slash != buf) {
        *slash = 0;
        int r = ctg_mkdirs(buf);
        if (r < 0) return r;
        *slash = '/';
    }
    if (mkdir(buf, 0750) != 0 && errno != EEXIST) return ctg_errno(errno);
    if (slash) {
        if (slash == buf) return ctg_fsync_dir("/");
        *slash = 0;
        int r = ctg_fsync_dir(buf);
        *slash = '/';
        return r;
    }
    return ctg_fsync_dir(".");
}

int ctg_write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return ctg_errno(errno);
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* ---- ctg_fwriter ----------------------------------------------------------- */

static int fw_put(ctg_fwriter *w, const unsigned char *p, size_t n)
{
    int r = ctg_write_all(w->fd, p, n);
    if (r < 0) return w->err = r;
    w->off += n;
    if (w->off - w->kicked >= CTG_FW_KICK) {
        uint64_t end = w->off & ~(uint64_t)4095;
        if (end > w->kicked) {
            /* Only a hint: the fsync that follows writes and checks all. */
            sync_file_range(w->fd, (off_t)w->kicked, (off_t)(end - w->kicked),
                            SYNC_FILE_RANGE_WRITE);
            w->kicked = end;
        }
    }
    return 0;
}

void ctg_fw_init(ctg_fwriter *w, int fd, unsigned char *buf, size_t cap)
{
    memset(w, 0, sizeof *w);
    w->fd = fd;
    if (buf && cap > 0) {
        w->buf = buf;
        w->cap = cap;
    }
}

int ctg_fw_write(ctg_fwriter *w, const void *data, size_t len)
{
    const unsigned char *p = data;
    if (w->err) return w->err;
    if (!w->buf) return fw_put(w, p, len);
    while (len > 0) {
        size_t k = w->cap - w->fill < len ? w->cap - w->fill : len;
        memcpy(w->buf + w->fill, p, k);
        w->fill += k;
        p += k;
        len -= k;
        if (w->fill == w->cap) {
            w->fill = 0;
            w->last = w->cap;
            if (fw_put(w, w->buf, w->cap) < 0) return w->err;
        }
    }
    return 0;
}

int ctg_fw_finish(ctg_fwriter *w)
{
    if (w->err) return w->err;
    if (w->fill == 0) {
        /* Ended on a buffer boundary: the buffer holds the last full one. */
        w->tail_off = w->off - w->last;
        w->tail_len = w->last;
        return 0;
    }
    size_t n = w->fill;
    w->tail_off = w->off;
    w->tail_len = n;
    w->fill = 0;
    return fw_put(w, w->buf, n);
}

const char *ctg_data_path(const char *rel, char *out, size_t n)
{
    const char *home = getenv("CTGLIP_HOME");
    if (home && home[0]) {
        snprintf(out, n, "%s/%s", home, rel);
        return out;
    }
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len > 0) {
        exe[len] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = 0;
            static const char *const up[] = {"..", "../share/ctglip"};
            for (size_t i = 0; i < sizeof up / sizeof up[0]; i++) {
                if ((size_t)snprintf(out, n, "%s/%s/%s", exe, up[i], rel) < n &&
                    access(out, R_OK) == 0)
                    return out;
            }
        }
    }
    snprintf(out, n, "%s", rel);
    return out;
}

int ctg_uid_random(char out[65])
{
    unsigned __int128 v = 0;
    size_t got = 0;
    while (got < sizeof v) {
        ssize_t r = getrandom((char *)&v + got, sizeof v - got, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return CTG_EIO;
        got += (size_t)r;
    }
    char dig[48];
    int nd = 0;
    do {
        dig[nd++] = (char)('0' + (int)(v % 10));
        v /= 10;
    } while (v);
    memcpy(out, "2.25.", 5);
    for (int i = 0; i < nd; i++) out[5 + i] = dig[nd - 1 - i];
    out[5 + nd] = 0;
    return 0;
}
