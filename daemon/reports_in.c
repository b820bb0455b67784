/*
 * reports_in.c - radiologists' final reports coming in, for the nightly
 * retrain: from report SRs that arrive by C-STORE (called from the ingest
 * hook) and from plain-text files in a drop folder that a RIS export or an
 * admin fills ([reports] drop_folder).  Both end in the store's reports
 * table (store/reports.c), linked to their study by Study Instance UID.
 *
 * The drop folder:
 *
 *   <drop_folder>/<KEY>.txt        a report waiting to be read (KEY: a Study
 *                                  Instance UID or an accession number, or
 *                                  named by header lines; ctg_drop_parse)
 *   <drop_folder>/done/            stored, and its study is in the index
 *   <drop_folder>/failed/          unreadable, malformed, or its study never
 *                                  came; each with <name>.why saying why
 *
 * Writers should create a file under another name (a dot file or a name
 * not ending in .txt) and rename it into place; a file that changed in the
 * last second is left for the next pass anyway.
 *
 * Durability: a file's report row is committed before the file moves, and
 * the row's key is a SHA-256 of the file's name and content, so a crash
 * between the two makes the next pass find the row and only finish the
 * move.  A report whose study is not in the index stays in the folder
 * (its row stored, unlinked) and is linked, and the file moved, by the
 * first pass after the study arrives; after give_up_days it goes to
 * failed/ and its row is removed, so dropping it again starts afresh.
 *
 * Threading: ctg_sr_report_ingest runs on association threads;
 * ctg_drop_scan on libuv's thread pool, one pass at a time; the poller's
 * timer and its start, reload and stop on the loop thread.  The store is
 * thread-safe; nothing else is shared.
 */
#include "daemon.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <uv.h>

/* A report file larger than this is not a report. */
#define DROP_FILE_MAX (1u << 20)
/* Files handled in one pass; the rest wait for the next. */
#define DROP_PASS_MAX 2000
/* A file younger than this (by mtime) may still be being written. */
#define DROP_SETTLE_SECONDS 1.0

/* ---- report SRs ------------------------------------------------------------ */

/* The SR classes a radiologist's report comes in. */
static int report_class(const char *uid)
{
    static const char *const classes[] = {
        "1.2.840.10008.5.1.4.1.1.88.11", /* Basic Text SR */
        "1.2.840.10008.5.1.4.1.1.88.22", /* Enhanced SR */
        "1.2.840.10008.5.1.4.1.1.88.33", /* Comprehensive SR */
        "1.2.840.10008.5.1.4.1.1.88.34", /* Comprehensive 3D SR */
        "1.2.840.10008.5.1.4.1.1.88.35", /* Extensible SR */
    };
    for (size_t i = 0; i < sizeof classes / sizeof classes[0]; i++)
        if (!strcmp(uid, classes[i])) return 1;
    return 0;
}

int ctg_sr_report_ingest(st_store *st, const ctg_instance *inst, const char *path,
                         int64_t instance_id, double now, int *outcome, char *why, size_t n)
{
    *outcome = -1;
    why[0] = 0;
    if (!report_class(inst->sop_class)) {
        snprintf(why, n, "SOP class %s is not a report class", inst->sop_class);
        return 0;
    }
    char *text = NULL, err[256];
    dcm_sr_info info;
    int r = dcm_sr_text(path, &text, &info, err, sizeof err);
    if (r < 0) {
        /* The instance is stored; a report we cannot read is not worth a
         * retry by the sender, which would send the same bytes. */
        snprintf(why, n, "no text read: %s", err);
        return 0;
    }
    /* Our own findings SR, forwarded back by a PACS that sends us
     * everything: not a radiologist's report. */
    if (!strcasecmp(info.manufacturer, "ctglip")) {
        snprintf(why, n, "ctglip's own output (Manufacturer ctglip), not a radiologist's report");
        free(text);
        return 0;
    }
    if (!text[0]) {
        snprintf(why, n, "the SR holds no text, code or number to keep");
        free(text);
        return 0;
    }
    /* The indexed instance is the identity: a duplicate maps to the same
     * row, a different version of the SOP instance to a new one. */
    char key[48];
    snprintf(key, sizeof key, "sr:%lld", (long long)instance_id);
    st_report_in in = {
        .source = ST_REPORT_SR,
        .source_ref = inst->sop_uid,
        .source_key = key,
        .study_uid = inst->study_uid,
        .accession = inst->accession[0] ? inst->accession : info.accession,
        .text = text,
        .completion = info.completion,
        .verification = info.verification,
        .observed = info.observed,
        .author = info.author,
        .final = !strcmp(info.completion, "COMPLETE") && !strcmp(info.verification, "VERIFIED"),
        .now = now,
    };
    st_report_added added;
    r = st_report_add(st, &in, &added);
    free(text);
    if (r < 0) {
        snprintf(why, n, "cannot store the report: %s", ctg_strerror(r));
        return r;
    }
    *outcome = added.outcome;
    if (added.outcome == ST_NEW)
        log_info("reports: SR %s of study %s stored as report %lld (%s, %s%s%s)", inst->sop_uid,
                 inst->study_uid, (long long)added.id, in.final ? "final" : "not final",
                 info.completion[0] ? info.completion : "no completion flag",
                 info.verification[0] ? ", " : "", info.verification);
    return 0;
}

/* ---- drop-folder files ------------------------------------------------------ */

/* 1 when s[0..len) is well-formed UTF-8 (RFC 3629). */
static int utf8_valid(const unsigned char *s, size_t len)
{
    for (size_t i = 0; i < len;) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3
                 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
        if (!k || i + k > len) return 0;
        for (size_t j = 1; j < k; j++)
            if ((s[i + j] & 0xc0) != 0x80) return 0;
        if (c == 0xe0 && s[i + 1] < 0xa0) return 0;
        if (c == 0xed && s[i + 1] >= 0xa0) return 0;
        if (c == 0xf0 && s[i + 1] < 0x90) return 0;
        if (c == 0xf4 && s[i + 1] >= 0x90) return 0;
        i += k;
    }
    return 1;
}

static int valid_accession(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 16) return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e || s[i] == '\\') return 0;
    return 1;
}

static void trim(char *s)
{
    size_t n = strlen(s), b = 0;
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t')) s[--n] = 0;
    while (s[b] == ' ' || s[b] == '\t') b++;
    memmove(s, s + b, n - b + 1);
}

/* Recognises "Name: value" header lines; returns 1 (uid), 2 (accession)
 * or 0, with the value in val (trimmed). */
static int header_line(const char *line, size_t len, char *val, size_t cap)
{
    const char *colon = memchr(line, ':', len);
    if (!colon || colon == line || (size_t)(colon - line) > 40) return 0;
    char name[48];
    snprintf(name, sizeof name, "%.*s", (int)(colon - line), line);
    trim(name);
    int kind = !strcasecmp(name, "StudyInstanceUID") || !strcasecmp(name, "Study Instance UID")
                   ? 1
               : !strcasecmp(name, "Accession") || !strcasecmp(name, "AccessionNumber") ||
                       !strcasecmp(name, "Accession Number")
                   ? 2
                   : 0;
    if (!kind) return 0;
    size_t vlen = len - (size_t)(colon + 1 - line);
    if (vlen >= cap) vlen = cap - 1;
    memcpy(val, colon + 1, vlen);
    val[vlen] = 0;
    trim(val);
    return kind;
}

int ctg_drop_parse(const char *name, const char *buf, size_t len, ctg_drop_report *out,
                   char *why, size_t n)
{
    memset(out, 0, sizeof *out);
    size_t nl = strlen(name);
    if (nl < 5 || strcmp(name + nl - 4, ".txt") != 0) {
        snprintf(why, n, "the name does not end in .txt");
        return CTG_EFORMAT;
    }
    if (len > DROP_FILE_MAX) {
        snprintf(why, n, "larger than %u KiB: not a report", DROP_FILE_MAX >> 10);
        return CTG_EFORMAT;
    }
    if (memchr(buf, 0, len)) {
        snprintf(why, n, "holds NUL bytes: not a text file");
        return CTG_EFORMAT;
    }
    const unsigned char *p = (const unsigned char *)buf;
    if (len >= 3 && p[0] == 0xef && p[1] == 0xbb && p[2] == 0xbf) {
        p += 3;
        len -= 3;
    }
    /* Normalised copy: UTF-8 (Latin-1 read as such when the bytes are not
     * UTF-8), LF line ends, no other control characters. */
    int latin1 = !utf8_valid(p, len);
    char *t = malloc(2 * len + 1);
    if (!t) {
        snprintf(why, n, "out of memory");
        return CTG_ENOMEM;
    }
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = p[i];
        if (c == '\r') {
            t[o++] = '\n';
            if (i + 1 < len && p[i + 1] == '\n') i++;
        } else if (c == '\n' || c == '\t' || (c >= 0x20 && c != 0x7f && c < 0x80)) {
            t[o++] = (char)c;
        } else if (c >= 0x80 && latin1) {
            t[o++] = (char)(0xc0 | (c >> 6));
            t[o++] = (char)(0x80 | (c & 0x3f));
        } else if (c >= 0x80) {
            t[o++] = (char)c;
        }
    }
    t[o] = 0;

    /* Header lines at the top, up to the first line that is not one. */
    char *s = t;
    int headers = 0;
    for (;;) {
        char *eol = strchr(s, '\n');
        size_t ll = eol ? (size_t)(eol - s) : strlen(s);
        char val[128];
        int kind = header_line(s, ll, val, sizeof val);
        if (!kind) break;
        headers++;
        if (kind == 1) {
            if (!st_uid_valid(val)) {
                snprintf(why, n, "StudyInstanceUID '%.64s' is not a valid UID", val);
                goto bad;
            }
            memcpy(out->study_uid, val, strlen(val) + 1); /* valid: <= 64 characters */
        } else {
            if (!valid_accession(val)) {
                snprintf(why, n, "Accession '%.40s' is not 1..16 printable characters", val);
                goto bad;
            }
            memcpy(out->accession, val, strlen(val) + 1); /* valid: <= 16 characters */
        }
        if (!eol) {
            s += ll;
            break;
        }
        s = eol + 1;
    }
    if (!headers) {
        /* The name is the key. */
        char stem[256];
        snprintf(stem, sizeof stem, "%.*s", (int)(nl - 4), name);
        /* Both checks bound the length (64 and 16 characters). */
        if (st_uid_valid(stem) && strchr(stem, '.'))
            memcpy(out->study_uid, stem, strlen(stem) + 1);
        else if (valid_accession(stem))
            memcpy(out->accession, stem, strlen(stem) + 1);
        else {
            snprintf(why, n, "no StudyInstanceUID: or Accession: line, and the name is neither "
                     "a Study Instance UID nor an accession number (1..16 characters)");
            goto bad;
        }
    }
    /* The text, without the blank lines around it. */
    while (*s == '\n' || *s == ' ' || *s == '\t') {
        char *eol = strchr(s, '\n');
        /* Leading blanks of the first text line stay (indentation). */
        if (*s != '\n' && (!eol || strspn(s, " \t") != (size_t)(eol - s))) break;
        s = eol ? eol + 1 : s + strlen(s);
    }
    size_t tl = strlen(s);
    while (tl > 0 && (s[tl - 1] == '\n' || s[tl - 1] == ' ' || s[tl - 1] == '\t')) tl--;
    if (tl == 0) {
        snprintf(why, n, "no report text");
        goto bad;
    }
    memmove(t, s, tl);
    t[tl] = 0;
    out->text = t;
    out->latin1 = latin1;
    return 0;
bad:
    free(t);
    memset(out, 0, sizeof *out);
    return CTG_EFORMAT;
}

/* "file:" and the hex SHA-256 of name, a NUL and the content. */
static int file_key(const char *name, const char *buf, size_t len, char key[80])
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) &&
             EVP_DigestUpdate(ctx, name, strlen(name) + 1) && EVP_DigestUpdate(ctx, buf, len) &&
             EVP_DigestFinal_ex(ctx, md, &mdlen) && mdlen == 32;
    EVP_MD_CTX_free(ctx);
    if (!ok) return CTG_ENOMEM;
    int o = snprintf(key, 80, "file:");
    for (int i = 0; i < 32; i++) o += snprintf(key + o, (size_t)(80 - o), "%02x", md[i]);
    return 0;
}

/* Reads a whole file of at most DROP_FILE_MAX + 1 bytes (one more shows it
 * is too large). */
static int read_file(const char *path, char **buf, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return ctg_errno(errno);
    size_t cap = DROP_FILE_MAX + 2, n = 0;
    char *b = malloc(cap);
    if (!b) {
        close(fd);
        return CTG_ENOMEM;
    }
    for (;;) {
        ssize_t k = read(fd, b + n, cap - 1 - n);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) {
            int r = ctg_errno(errno);
            close(fd);
            free(b);
            return r;
        }
        if (k == 0 || (n += (size_t)k) >= cap - 1) break;
    }
    close(fd);
    b[n] = 0;
    *buf = b;
    *len = n;
    return 0;
}

/* Durable small file: temp name, fsync, rename. */
static int write_small(const char *dir, const char *name, const char *text)
{
    char tmp[PATH_MAX], dst[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, name) >= (int)sizeof tmp ||
        snprintf(dst, sizeof dst, "%s/%s", dir, name) >= (int)sizeof dst)
        return CTG_ETOOBIG;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0) return ctg_errno(errno);
    int r = ctg_write_all(fd, text, strlen(text));
    if (r == 0 && fsync(fd) != 0) r = ctg_errno(errno);
    close(fd);
    if (r == 0 && rename(tmp, dst) != 0) r = ctg_errno(errno);
    if (r < 0) unlink(tmp);
    return r;
}

/* Moves folder/name into folder/sub/, under the same name or, when that is
 * taken (a report dropped again under its old name), "<stem>.<k>.txt";
 * with why, a "<target>.why" is written first.  Both folders are fsynced
 * after the rename. */
static int move_to(const char *folder, const char *sub, const char *name, const char *why)
{
    char dir[PATH_MAX], src[PATH_MAX], dst[PATH_MAX], target[300];
    if (snprintf(dir, sizeof dir, "%s/%s", folder, sub) >= (int)sizeof dir ||
        snprintf(src, sizeof src, "%s/%s", folder, name) >= (int)sizeof src ||
        strlen(name) + 12 >= sizeof target)
        return CTG_ETOOBIG;
    int r = ctg_mkdirs(dir);
    if (r < 0) return r;
    snprintf(target, sizeof target, "%s", name);
    struct stat sb;
    size_t nl = strlen(name);
    for (int k = 1; k < 10000; k++) {
        if (snprintf(dst, sizeof dst, "%s/%s", dir, target) >= (int)sizeof dst) return CTG_ETOOBIG;
        if (lstat(dst, &sb) != 0 && errno == ENOENT) break;
        snprintf(target, sizeof target, "%.*s.%d.txt", (int)(nl - 4), name, k);
    }
    if (why) {
        char wname[320], line[1200];
        snprintf(wname, sizeof wname, "%s.why", target);
        snprintf(line, sizeof line, "%s\n", why);
        if ((r = write_small(dir, wname, line)) < 0) return r;
    }
    if (rename(src, dst) != 0) return ctg_errno(errno);
    if ((r = ctg_fsync_dir(dir)) < 0) return r;
    return ctg_fsync_dir(folder);
}

static void fail_file(const char *folder, const char *name, const char *why, ctg_drop_stats *st)
{
    int r = move_to(folder, "failed", name, why);
    if (r < 0) {
        log_syserr(r, "rename", "%s/%s -> failed/", folder, name);
        return;
    }
    st->failed++;
    log_warn("reports: %s/%s moved to failed/: %s", folder, name, why);
}

/* One file of a pass.  Returns <0 only for store errors, which end the
 * pass (the next one retries). */
static int handle_file(st_store *st, const char *folder, const char *name, int give_up_days,
                       double now, ctg_drop_stats *stats)
{
    char path[PATH_MAX], why[512];
    snprintf(path, sizeof path, "%s/%s", folder, name);
    struct stat sb;
    if (lstat(path, &sb) != 0) return 0; /* gone meanwhile */
    if (!S_ISREG(sb.st_mode)) {
        fail_file(folder, name, "not a regular file", stats);
        return 0;
    }
    double mtime = (double)sb.st_mtim.tv_sec + sb.st_mtim.tv_nsec * 1e-9;
    if (now - mtime >= 0 && now - mtime < DROP_SETTLE_SECONDS) return 0;

    char *buf = NULL;
    size_t len = 0;
    int r = read_file(path, &buf, &len);
    if (r < 0) {
        snprintf(why, sizeof why, "cannot read: %s", ctg_strerror(r));
        fail_file(folder, name, why, stats);
        return 0;
    }
    ctg_drop_report rep;
    if (ctg_drop_parse(name, buf, len, &rep, why, sizeof why) < 0) {
        free(buf);
        fail_file(folder, name, why, stats);
        return 0;
    }
    char key[80];
    r = file_key(name, buf, len, key);
    free(buf);
    if (r < 0) {
        free(rep.text);
        return r;
    }
    st_report_in in = {
        .source = ST_REPORT_FILE,
        .source_ref = name,
        .source_key = key,
        .study_uid = rep.study_uid,
        .accession = rep.accession,
        .text = rep.text,
        .final = 1, /* a report handed over as a file is the signed one */
        .now = now,
    };
    st_report_added added;
    r = st_report_add(st, &in, &added);
    free(rep.text);
    if (r < 0) {
        log_error("reports: %s: cannot store the report: %s", path, ctg_strerror(r));
        return r;
    }
    const char *what = rep.study_uid[0] ? "study" : "accession";
    const char *key_v = rep.study_uid[0] ? rep.study_uid : rep.accession;
    if (added.outcome == ST_NEW) {
        stats->stored++;
        log_info("reports: %s stored as report %lld for %s %s%s%s", path, (long long)added.id,
                 what, key_v, added.linked ? "" : " (its study is not in the index yet)",
                 rep.latin1 ? "; read as Latin-1, not UTF-8" : "");
    }
    if (added.linked) {
        r = move_to(folder, "done", name, NULL);
        if (r < 0)
            log_syserr(r, "rename", "%s -> done/", path);
        else
            stats->done++;
        return 0;
    }
    if (now - added.received >= give_up_days * 86400.0) {
        snprintf(why, sizeof why,
                 "no single study with %s %s arrived within %d day(s) ([reports] give_up_days); "
                 "the report was removed from the index, drop the file again to retry",
                 what, key_v, give_up_days);
        /* The row goes first: a crash before the move leaves the file in
         * the folder, where the next pass stores it afresh and waits again,
         * rather than a given-up row that a late study would still link. */
        if ((r = st_report_delete(st, added.id)) < 0 && r != CTG_ENOTFOUND) return r;
        int m = move_to(folder, "failed", name, why);
        if (m < 0) {
            log_syserr(m, "rename", "%s -> failed/", path);
            return 0;
        }
        stats->failed++;
        log_warn("reports: %s moved to failed/: %s", path, why);
        return 0;
    }
    stats->waiting++;
    return 0;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int ctg_drop_scan(st_store *st, const char *folder, int give_up_days, double now,
                  ctg_drop_stats *stats)
{
    ctg_drop_stats dummy;
    if (!stats) stats = &dummy;
    memset(stats, 0, sizeof *stats);
    int r = st_reports_link(st, now);
    if (r < 0) return r;
    stats->linked = r;
    if (r > 0) log_info("reports: %d report(s) linked to a study that arrived", r);

    DIR *d = opendir(folder);
    if (!d) return ctg_errno(errno);
    char **names = NULL;
    int nn = 0, cap = 0;
    struct dirent *e;
    r = 0;
    while ((e = readdir(d)) != NULL && nn < DROP_PASS_MAX) {
        size_t l = strlen(e->d_name);
        if (e->d_name[0] == '.' || l < 5 || strcmp(e->d_name + l - 4, ".txt") != 0) continue;
        if (nn == cap) {
            void *p = realloc(names, (size_t)(cap = cap ? 2 * cap : 32) * sizeof *names);
            if (!p) {
                r = CTG_ENOMEM;
                break;
            }
            names = p;
        }
        if (!(names[nn] = strdup(e->d_name))) {
            r = CTG_ENOMEM;
            break;
        }
        nn++;
    }
    closedir(d);
    /* Oldest name first is not knowable cheaply; sorted is at least the
     * same order every time. */
    if (r == 0 && nn > 0) qsort(names, (size_t)nn, sizeof *names, cmp_name);
    for (int i = 0; i < nn && r == 0; i++) r = handle_file(st, folder, names[i], give_up_days, now, stats);
    for (int i = 0; i < nn; i++) free(names[i]);
    free(names);
    return r;
}

/* ---- the poller (loop thread) ----------------------------------------------- */

struct ctg_reports_in {
    uv_loop_t *loop;
    uv_timer_t timer;
    uv_work_t work;
    st_store *st;
    char folder[PATH_MAX];
    int poll_seconds, give_up_days; /* loop thread's copy (reload) */
    int pass_give_up;               /* the running pass's copy */
    int busy, stopping, timer_open;
    int result, last_result;
    ctg_drop_stats stats;
};

static void maybe_free(ctg_reports_in *r)
{
    if (r->stopping && !r->busy && !r->timer_open) free(r);
}

static void on_timer(uv_timer_t *t);

static void arm(ctg_reports_in *r, double seconds)
{
    if (!r->stopping) uv_timer_start(&r->timer, on_timer, (uint64_t)(seconds * 1000), 0);
}

static void pass_work(uv_work_t *w)
{
    ctg_reports_in *r = w->data;
    r->result = ctg_drop_scan(r->st, r->folder, r->pass_give_up, ctg_now(), &r->stats);
}

static void pass_done(uv_work_t *w, int status)
{
    ctg_reports_in *r = w->data;
    r->busy = 0;
    if (status == 0) {
        /* The same failure every few seconds is said once. */
        if (r->result < 0 && r->result != r->last_result)
            log_error("reports: pass over %s failed: %s; retrying every %d s", r->folder,
                      ctg_strerror(r->result), r->poll_seconds);
        else if (r->result == 0 && r->last_result < 0)
            log_info("reports: %s readable again", r->folder);
        r->last_result = r->result;
    }
    arm(r, r->poll_seconds);
    maybe_free(r);
}

static void on_timer(uv_timer_t *t)
{
    ctg_reports_in *r = t->data;
    if (r->busy || r->stopping) return;
    r->busy = 1;
    r->pass_give_up = r->give_up_days;
    r->work.data = r;
    int e = uv_queue_work(r->loop, &r->work, pass_work, pass_done);
    if (e != 0) {
        r->busy = 0;
        log_error("reports: cannot start a pass: %s", uv_strerror(e));
        arm(r, r->poll_seconds);
    }
}

static void timer_closed(uv_handle_t *h)
{
    ctg_reports_in *r = h->data;
    r->timer_open = 0;
    maybe_free(r);
}

int ctg_reports_in_start(uv_loop_t *loop, const ctg_config *cfg, st_store *st,
                         ctg_reports_in **out)
{
    *out = NULL;
    if (!cfg->reports_drop[0]) {
        log_info("reports: no [reports] drop_folder; text reports are not read");
        return 0;
    }
    char sub[PATH_MAX + 16];
    int rc;
    const char *subs[] = {"", "/done", "/failed"};
    for (int i = 0; i < 3; i++) {
        snprintf(sub, sizeof sub, "%s%s", cfg->reports_drop, subs[i]);
        if ((rc = ctg_mkdirs(sub)) < 0) {
            log_syserr(rc, "mkdir", "%s", sub);
            return rc;
        }
    }
    ctg_reports_in *r = calloc(1, sizeof *r);
    if (!r) return CTG_ENOMEM;
    r->loop = loop;
    r->st = st;
    snprintf(r->folder, sizeof r->folder, "%s", cfg->reports_drop);
    r->poll_seconds = cfg->reports_poll_seconds;
    r->give_up_days = cfg->reports_give_up_days;
    uv_timer_init(loop, &r->timer);
    r->timer.data = r;
    r->timer_open = 1;
    /* The first pass right away: files that arrived while we were down. */
    arm(r, 0);
    log_info("reports: reading text reports from %s every %d s", r->folder, r->poll_seconds);
    *out = r;
    return 0;
}

void ctg_reports_in_reload(ctg_reports_in *r, const ctg_config *cfg)
{
    if (!r) return;
    int changed = r->poll_seconds != cfg->reports_poll_seconds;
    r->poll_seconds = cfg->reports_poll_seconds;
    r->give_up_days = cfg->reports_give_up_days;
    if (changed && !r->busy) arm(r, r->poll_seconds);
}

void ctg_reports_in_stop(ctg_reports_in *r)
{
    if (!r) return;
    r->stopping = 1;
    uv_timer_stop(&r->timer);
    /* A queued pass that has not started need not run. */
    if (r->busy) uv_cancel((uv_req_t *)&r->work);
    uv_close((uv_handle_t *)&r->timer, timer_closed);
}
