/*
 * ingest.c - the spool: UID checks, temp files, the free-space guard, and
 * making a received instance durable and indexed.
 *
 * Order of a successful ingest (each step only after the previous one is on
 * disk): fsync the temp file; under the lock decide new/duplicate/version;
 * rename into <spool>/<study>/<series>/; fsync that directory; commit the
 * index row with synchronous=FULL.  A crash before the commit leaves at most
 * an unindexed file that was never acknowledged; the peer re-sends it.
 *
 * Threading: any thread.  Only the decision and the index commit hold the
 * handle's lock; the fsyncs of file and directory run in parallel across
 * associations, and the commits of concurrent ingests are grouped into one
 * transaction (one WAL fsync) by a leader/follower queue.
 */
#include "store_int.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

int st_uid_valid(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 64) return 0;
    if (s[0] == '.' || s[n - 1] == '.') return 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '.') {
            if (s[i + 1] == '.') return 0;
        } else if (s[i] < '0' || s[i] > '9') {
            return 0;
        }
    }
    return 1;
}

int st_free_bytes(st_store *st, uint64_t *avail)
{
    struct statvfs v;
    if (statvfs(st->spool, &v) != 0) return ctg_errno(errno);
    *avail = (uint64_t)v.f_bavail * (uint64_t)v.f_frsize;
    return 0;
}

int st_space_ok(st_store *st, uint64_t need)
{
    uint64_t avail;
    if (st_free_bytes(st, &avail) < 0) return 0;
    return avail >= need && avail - need >= st->reserve;
}

int st_tmp_create(st_store *st, char *path, int *fd)
{
    for (int tries = 0; tries < 100; tries++) {
        unsigned seq = __atomic_add_fetch(&st->tmp_seq, 1, __ATOMIC_RELAXED);
        snprintf(path, PATH_MAX, "%s/rx-%d-%u.part", st->tmpdir, (int)getpid(),
                 seq);
        int f = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
        if (f >= 0) {
            *fd = f;
            return 0;
        }
        if (errno != EEXIST) {
            int r = ctg_errno(errno);
            log_syserr(r, "open", "%s", path);
            return r;
        }
    }
    return CTG_EEXIST;
}

void st_discard(const char *tmp_path, int fd)
{
    if (fd >= 0) close(fd);
    if (tmp_path && tmp_path[0]) unlink(tmp_path);
}

static void fmt_doubles(const double *v, int n, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = 0;
    for (int i = 0; i < n && o < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, "%s%.10g", i ? "\\" : "", v[i]);
}

static void bind_text(sqlite3_stmt *s, int i, const char *v)
{
    sqlite3_bind_text(s, i, v ? v : "", -1, SQLITE_TRANSIENT);
}

/* Returns 1 and *id for an existing row, 0 when none, <0 on error. */
static int lookup_id(st_store *st, const char *sql, const char *key, int64_t *id)
{
    sqlite3_stmt *s;
    if (st__cached(st, sql, &s) < 0) return CTG_EDB;
    bind_text(s, 1, key);
    int rc = sqlite3_step(s), r;
    if (rc == SQLITE_ROW) {
        *id = sqlite3_column_int64(s, 0);
        r = 1;
    } else {
        r = rc == SQLITE_DONE ? 0 : st__dberr(st, "lookup");
    }
    st__release(s);
    return r;
}

static int step_done(st_store *st, sqlite3_stmt *s, const char *what)
{
    int rc = sqlite3_step(s);
    st__release(s);
    return rc == SQLITE_DONE ? 0 : st__dberr(st, what);
}

static int upsert_patient(st_store *st, const ctg_instance *in, int64_t *id)
{
    sqlite3_stmt *s;
    if (st__cached(st,
                    "INSERT INTO patients(patient_id, patient_name, birth_date, sex)"
                    " VALUES(?1,?2,?3,?4) ON CONFLICT(patient_id, patient_name)"
                    " DO UPDATE SET birth_date=excluded.birth_date, sex=excluded.sex"
                    " RETURNING id",
                    &s) < 0)
        return CTG_EDB;
    bind_text(s, 1, in->patient_id);
    bind_text(s, 2, in->patient_name);
    bind_text(s, 3, in->patient_birth_date);
    bind_text(s, 4, in->patient_sex);
    int r = CTG_EDB;
    if (sqlite3_step(s) == SQLITE_ROW) {
        *id = sqlite3_column_int64(s, 0);
        r = 0;
    } else {
        st__dberr(st, "patient");
    }
    st__release(s);
    return r;
}

int st_sop_class_is_sr(const char *sop_class)
{
    static const char sr_root[] = "1.2.840.10008.5.1.4.1.1.88.";
    return sop_class && !strncmp(sop_class, sr_root, sizeof sr_root - 1);
}

/* Creates the study or records a new arrival in it: the persisted
 * last-arrival time and deadline move, and rx_gen marks new content.
 *
 * A Structured Report is not content the model reads: a radiologist's
 * report (or our own SR forwarded back by a PACS) must not make a study
 * pending again, or every report would re-run the model on unchanged
 * images.  Its study row is created when it is the first of the study to
 * arrive (with rx_gen 0: nothing to process yet), and otherwise left as it
 * is, deadline and generations included. */
static int touch_study(st_store *st, const st_ingest_req *q, int64_t patient,
                       int64_t *id)
{
    sqlite3_stmt *s;
    const ctg_instance *in = q->inst;
    int doc = st_sop_class_is_sr(in->sop_class);
    if (doc ? st__cached(st,
                         "INSERT INTO studies(study_uid, patient_ref, study_date, study_time,"
                         " accession, description, calling_ae, first_received, last_received,"
                         " stable_seconds, deadline, rx_gen, queued_gen)"
                         " VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?8,?9,?10,0,0)"
                         " ON CONFLICT(study_uid) DO UPDATE SET rx_gen=rx_gen RETURNING id",
                         &s) < 0
            : st__cached(st,
                         "INSERT INTO studies(study_uid, patient_ref, study_date, study_time,"
                         " accession, description, calling_ae, first_received, last_received,"
                         " stable_seconds, deadline, rx_gen, queued_gen)"
                         " VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?8,?9,?10,1,0)"
                         " ON CONFLICT(study_uid) DO UPDATE SET"
                         " last_received=excluded.last_received,"
                         " stable_seconds=excluded.stable_seconds,"
                         " deadline=max(deadline, excluded.deadline),"
                         " calling_ae=excluded.calling_ae,"
                         " rx_gen=rx_gen+1 RETURNING id",
                         &s) < 0)
        return CTG_EDB;
    bind_text(s, 1, in->study_uid);
    sqlite3_bind_int64(s, 2, patient);
    bind_text(s, 3, in->study_date);
    bind_text(s, 4, in->study_time);
    bind_text(s, 5, in->accession);
    bind_text(s, 6, in->study_desc);
    bind_text(s, 7, q->calling_ae);
    sqlite3_bind_double(s, 8, q->now);
    sqlite3_bind_int(s, 9, q->stable_seconds);
    sqlite3_bind_double(s, 10, q->now + q->stable_seconds);
    int r = CTG_EDB;
    if (sqlite3_step(s) == SQLITE_ROW) {
        *id = sqlite3_column_int64(s, 0);
        r = 0;
    } else {
        st__dberr(st, "study");
    }
    st__release(s);
    return r;
}

static int upsert_series(st_store *st, const ctg_instance *in, int64_t study,
                         int64_t *id)
{
    *id = 0;
    int r = lookup_id(st, "SELECT id FROM series WHERE series_uid=?1",
                      in->series_uid, id);
    if (r != 0) return r < 0 ? r : 0;
    sqlite3_stmt *s;
    if (st__cached(st,
                    "INSERT INTO series(series_uid, study_ref, modality, series_number,"
                    " description, body_part, frame_of_ref_uid) VALUES(?1,?2,?3,?4,?5,?6,?7)",
                    &s) < 0)
        return CTG_EDB;
    bind_text(s, 1, in->series_uid);
    sqlite3_bind_int64(s, 2, study);
    bind_text(s, 3, in->modality);
    sqlite3_bind_int(s, 4, in->series_number);
    bind_text(s, 5, in->series_desc);
    bind_text(s, 6, in->body_part);
    bind_text(s, 7, in->frame_of_ref_uid);
    if (step_done(st, s, "series") < 0) return CTG_EDB;
    *id = sqlite3_last_insert_rowid(st->db);
    return 0;
}

static int insert_instance(st_store *st, const st_ingest_req *q, int64_t series,
                           int version, const char *rel,
                           int64_t *id)
{
    const ctg_instance *in = q->inst;
    char ori[160], pos[96], px[64];
    sqlite3_stmt *s;
    if (st__cached(st,
                    "INSERT INTO instances(sop_uid, version, current, series_ref, sop_class,"
                    " instance_number, image_type, orientation, position, pixel_spacing,"
                    " slice_thickness, rows, cols, frames, transfer_syntax, path, size,"
                    " data_offset, received, calling_ae)"
                    " VALUES(?1,?2,1,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19)",
                    &s) < 0)
        return CTG_EDB;
    bind_text(s, 1, in->sop_uid);
    sqlite3_bind_int(s, 2, version);
    sqlite3_bind_int64(s, 3, series);
    bind_text(s, 4, in->sop_class);
    sqlite3_bind_int(s, 5, in->instance_number);
    bind_text(s, 6, in->image_type);
    if (in->has_orientation) {
        fmt_doubles(in->orientation, 6, ori, sizeof ori);
        bind_text(s, 7, ori);
    }
    if (in->has_position) {
        fmt_doubles(in->position, 3, pos, sizeof pos);
        bind_text(s, 8, pos);
    }
    if (in->has_spacing) {
        fmt_doubles(in->pixel_spacing, 2, px, sizeof px);
        bind_text(s, 9, px);
    }
    if (in->slice_thickness > 0) sqlite3_bind_double(s, 10, in->slice_thickness);
    sqlite3_bind_int(s, 11, in->rows);
    sqlite3_bind_int(s, 12, in->cols);
    sqlite3_bind_int(s, 13, in->frames);
    bind_text(s, 14, in->transfer_syntax);
    bind_text(s, 15, rel);
    sqlite3_bind_int64(s, 16, (sqlite3_int64)q->size);
    sqlite3_bind_int64(s, 17, (sqlite3_int64)q->data_offset);
    sqlite3_bind_double(s, 18, q->now);
    bind_text(s, 19, q->calling_ae);
    if (step_done(st, s, "instance") < 0) return CTG_EDB;
    *id = sqlite3_last_insert_rowid(st->db);
    if (version > 1) {
        if (st__cached(st,
                        "UPDATE instances SET current=0 WHERE sop_uid=?1 AND version<?2",
                        &s) < 0)
            return CTG_EDB;
        bind_text(s, 1, in->sop_uid);
        sqlite3_bind_int(s, 2, version);
        if (step_done(st, s, "supersede version") < 0) return CTG_EDB;
    }
    return 0;
}

/* 1 when file a from offset oa on holds the same bytes as file b from ob
 * on, 0 when not, <0 when a file cannot be read. */
static int same_bytes(const char *a, uint64_t oa, const char *b, uint64_t ob)
{
    int r = CTG_EIO;
    int fa = open(a, O_RDONLY | O_CLOEXEC), fb = open(b, O_RDONLY | O_CLOEXEC);
    struct stat sa, sb;
    if (fa < 0 || fb < 0 || fstat(fa, &sa) != 0 || fstat(fb, &sb) != 0) goto out;
    if ((uint64_t)sa.st_size < oa || (uint64_t)sb.st_size < ob ||
        (uint64_t)sa.st_size - oa != (uint64_t)sb.st_size - ob) {
        r = 0;
        goto out;
    }
    static __thread char ba[65536], bb[65536];
    uint64_t left = (uint64_t)sa.st_size - oa, pa = oa, pb = ob;
    while (left > 0) {
        size_t k = left < sizeof ba ? (size_t)left : sizeof ba;
        if (pread(fa, ba, k, (off_t)pa) != (ssize_t)k || pread(fb, bb, k, (off_t)pb) != (ssize_t)k)
            goto out;
        if (memcmp(ba, bb, k) != 0) {
            r = 0;
            goto out;
        }
        left -= k;
        pa += k;
        pb += k;
    }
    r = 1;
out:
    if (fa >= 0) close(fa);
    if (fb >= 0) close(fb);
    return r;
}

/* Looks for earlier copies of the SOP instance.  Sets *dup_id when one holds
 * the same data set bytes as the new file, and *max_version to the highest
 * version seen.  Reads files only when the UID is already known, which is
 * rare, so new instances pay no hashing or comparing. */
static int find_versions(st_store *st, const st_ingest_req *q, int64_t *dup_id,
                         int *max_version, char *dup_rel)
{
    sqlite3_stmt *s;
    if (st__cached(st,
                   "SELECT id, version, path, data_offset FROM instances WHERE sop_uid=?1",
                   &s) < 0)
        return CTG_EDB;
    bind_text(s, 1, q->inst->sop_uid);
    *dup_id = 0;
    *max_version = 0;
    int rc, r = 0;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        int v = sqlite3_column_int(s, 1);
        if (v > *max_version) *max_version = v;
        if (*dup_id) continue;
        char held[PATH_MAX];
        snprintf(held, sizeof held, "%s/%s", st->spool, sqlite3_column_text(s, 2));
        int same = same_bytes(q->tmp_path, q->data_offset, held,
                              (uint64_t)sqlite3_column_int64(s, 3));
        if (same < 0) log_warn("store: cannot compare with %s: %s", held, strerror(errno));
        if (same == 1) {
            *dup_id = sqlite3_column_int64(s, 0);
            snprintf(dup_rel, 256, "%s", sqlite3_column_text(s, 2));
        }
    }
    if (rc != SQLITE_DONE) r = st__dberr(st, "versions");
    st__release(s);
    return r;
}

/* ---- group commit ------------------------------------------------------------ */

typedef struct st__gc_req {
    struct st__gc_req *next;
    const st_ingest_req *q;
    int version;
    const char *rel;
    int64_t iid;
    int r, done;
} gc_req;

/* Writes one instance's rows; caller holds the lock inside a transaction. */
static int index_one(st_store *st, gc_req *g)
{
    int64_t pid, study, series;
    int r;
    if ((r = upsert_patient(st, g->q->inst, &pid)) < 0 ||
        (r = touch_study(st, g->q, pid, &study)) < 0 ||
        (r = upsert_series(st, g->q->inst, study, &series)) < 0 ||
        (r = insert_instance(st, g->q, series, g->version, g->rel, &g->iid)) < 0)
        return r;
    return 0;
}

/* One transaction for a batch; a savepoint per instance keeps one bad row
 * from failing the others (a batch of one needs none: its failure rolls
 * the transaction back).  The statements are prepared once. */
static void run_batch(st_store *st, gc_req *batch)
{
    pthread_mutex_lock(&st->lock);
    int r = st__run(st, "BEGIN IMMEDIATE"), failed = 0;
    int alone = batch && !batch->next;
    for (gc_req *g = batch; g; g = g->next) {
        if (r < 0) {
            g->r = r;
            continue;
        }
        if (alone) {
            if ((g->r = index_one(st, g)) < 0) failed = 1;
            continue;
        }
        if ((g->r = st__run(st, "SAVEPOINT one")) < 0) continue;
        if ((g->r = index_one(st, g)) < 0) st__run(st, "ROLLBACK TO one");
        st__run(st, "RELEASE one");
    }
    if (r == 0 && failed) {
        st__run(st, "ROLLBACK");
    } else if (r == 0 && (r = st__run(st, "COMMIT")) < 0) {
        st__run(st, "ROLLBACK");
        for (gc_req *g = batch; g; g = g->next) g->r = r;
    }
    pthread_mutex_unlock(&st->lock);
}

/* Queues g and returns once a leader (this thread or another) committed
 * it.  Requests that arrive during a commit form the next batch, so under
 * load many instances share one WAL fsync. */
static int commit_grouped(st_store *st, gc_req *g)
{
    pthread_mutex_lock(&st->gc_mu);
    g->next = NULL;
    *st->gc_tail = g;
    st->gc_tail = &g->next;
    while (!g->done) {
        if (st->gc_leader) {
            pthread_cond_wait(&st->gc_cv, &st->gc_mu);
            continue;
        }
        st->gc_leader = 1;
        gc_req *batch = st->gc_head;
        st->gc_head = NULL;
        st->gc_tail = &st->gc_head;
        pthread_mutex_unlock(&st->gc_mu);
        run_batch(st, batch);
        pthread_mutex_lock(&st->gc_mu);
        /* A follower may return (and its request vanish) once done is set:
         * read next first. */
        for (gc_req *b = batch, *nx; b; b = nx) {
            nx = b->next;
            b->done = 1;
        }
        st->gc_leader = 0;
        pthread_cond_broadcast(&st->gc_cv);
    }
    pthread_mutex_unlock(&st->gc_mu);
    return g->r;
}

/* ---- pending SOP Instance UIDs --------------------------------------------------- */

static int pending_find(st_store *st, const char *sop)
{
    for (int i = 0; i < st->npending; i++)
        if (strcmp(st->pending[i], sop) == 0) return i;
    return -1;
}

static int pending_add(st_store *st, const char *sop)
{
    if (st->npending == st->cap_pending) {
        int cap = st->cap_pending ? 2 * st->cap_pending : 16;
        void *p = realloc(st->pending, (size_t)cap * sizeof *st->pending);
        if (!p) return CTG_ENOMEM;
        st->pending = p;
        st->cap_pending = cap;
    }
    snprintf(st->pending[st->npending++], 65, "%s", sop);
    return 0;
}

static void pending_remove(st_store *st, const char *sop)
{
    pthread_mutex_lock(&st->lock);
    int i = pending_find(st, sop);
    if (i >= 0) memcpy(st->pending[i], st->pending[--st->npending], 65);
    pthread_cond_broadcast(&st->pending_cv);
    pthread_mutex_unlock(&st->lock);
}

/* ---- ingest ---------------------------------------------------------------------- */

int st_ingest(st_store *st, const st_ingest_req *q, st_ingest_result *res)
{
    const ctg_instance *in = q->inst;
    char rel[256], dir[PATH_MAX], dst[PATH_MAX];
    int fd = q->fd, r, renamed = 0;
    memset(res, 0, sizeof *res);

    if (st->readonly) {
        r = CTG_ESTATE;
        goto fail;
    }
    if (!st_uid_valid(in->study_uid) || !st_uid_valid(in->series_uid) ||
        !st_uid_valid(in->sop_uid)) {
        r = CTG_EBADUID;
        goto fail;
    }

    /* The data is made durable before any lock is taken, so parallel
     * associations overlap their fsyncs. */
    if (fsync(fd) != 0) {
        r = ctg_errno(errno);
        log_syserr(r, "fsync", "%s", q->tmp_path);
        goto fail;
    }
    close(fd);
    fd = -1;

    /* Decide under the lock: duplicate, first copy or new version.  While
     * the same SOP Instance UID is between decision and commit in another
     * thread, wait for it, so the two cannot pick the same version. */
    pthread_mutex_lock(&st->lock);
    while (pending_find(st, in->sop_uid) >= 0) pthread_cond_wait(&st->pending_cv, &st->lock);
    int64_t dup_id;
    int maxv;
    r = find_versions(st, q, &dup_id, &maxv, rel);
    if (r == 0 && !dup_id) r = pending_add(st, in->sop_uid);
    pthread_mutex_unlock(&st->lock);
    if (r < 0) goto fail;
    if (dup_id) {
        /* Identical bytes: acknowledge, keep the first copy only.  The study
         * is not touched, so a re-send does not trigger reprocessing. */
        unlink(q->tmp_path);
        res->outcome = ST_DUPLICATE;
        res->instance_id = dup_id;
        res->version = 0;
        snprintf(res->path, sizeof res->path, "%s/%s", st->spool, rel);
        return 0;
    }
    int version = maxv + 1;
    if (version == 1)
        snprintf(rel, sizeof rel, "%s/%s/%s.dcm", in->study_uid, in->series_uid,
                 in->sop_uid);
    else
        snprintf(rel, sizeof rel, "%s/%s/%s.v%d.dcm", in->study_uid,
                 in->series_uid, in->sop_uid, version);
    snprintf(dir, sizeof dir, "%s/%s/%s", st->spool, in->study_uid,
             in->series_uid);
    snprintf(dst, sizeof dst, "%s/%s", st->spool, rel);

    /* Place the file, outside the lock.  A file already at dst is the
     * unindexed leftover of a crash (no row names it, and no other thread
     * holds this UID), so replacing it is right. */
    if ((r = ctg_mkdirs(dir)) < 0) {
        log_syserr(r, "mkdir", "%s", dir);
        goto unpend;
    }
    if (rename(q->tmp_path, dst) != 0) {
        r = ctg_errno(errno);
        log_syserr(r, "rename", "%s -> %s", q->tmp_path, dst);
        goto unpend;
    }
    renamed = 1;
    if ((r = ctg_fsync_dir(dir)) < 0) {
        log_syserr(r, "fsync", "%s", dir);
        goto unpend;
    }

    gc_req g = {.q = q, .version = version, .rel = rel};
    r = commit_grouped(st, &g);
    pending_remove(st, in->sop_uid);
    if (r < 0) goto fail;

    res->outcome = version == 1 ? ST_NEW : ST_NEW_VERSION;
    res->version = version;
    res->instance_id = g.iid;
    snprintf(res->path, sizeof res->path, "%s", dst);
    return 0;

unpend:
    pending_remove(st, in->sop_uid);
fail:
    /* Nothing unacknowledged may stay behind, renamed or not. */
    if (renamed) {
        unlink(dst);
        ctg_fsync_dir(dir);
    }
    st_discard(renamed ? NULL : q->tmp_path, fd);
    return r;
}
