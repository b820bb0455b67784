/*
 * export.c - the export outbox: which file goes to which destination, and
 * how far each of those deliveries got.
 *
 * One row per (file, destination).  A destination's exporter claims its due
 * rows (queued -> sending, with a lease), sends them, and records each
 * outcome: done, or a failed attempt that puts the row back to queued with
 * exponential back-off, or dead once max_attempts is reached.  Rows never
 * wait on each other across destinations: every query here is by
 * destination, so a destination that is down only delays its own rows.
 *
 * The outbox file is shared by the rows of all destinations.  It is removed
 * by st_export_release_file() only when every row naming it is done; a
 * dead row keeps it (an admin may requeue it), and so does a row of a
 * destination that was removed from the config.
 *
 * Threading: any thread; each call is one transaction under the handle lock.
 */
#include "store_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const state_names[EXP_NSTATES] = {"queued", "sending", "done", "dead"};

const char *st_export_state_name(int state)
{
    return state >= 0 && state < EXP_NSTATES ? state_names[state] : "?";
}

int st_export_state_parse(const char *name)
{
    for (int i = 0; i < EXP_NSTATES; i++)
        if (!strcmp(name, state_names[i])) return i;
    return -1;
}

static void copy_col(sqlite3_stmt *s, int col, char *dst, size_t n)
{
    const unsigned char *t = sqlite3_column_text(s, col);
    snprintf(dst, n, "%s", t ? (const char *)t : "");
}

int st_export_add(st_store *st, int64_t job_id, const char *study_uid,
                  const st_export_file *files, int nfiles,
                  const char *const *dests, int ndests, double now)
{
    sqlite3_stmt *have = NULL, *ins = NULL;
    int r, added = 0;
    for (int f = 0; f < nfiles; f++)
        if (!files[f].path || !files[f].path[0] || !files[f].sop_class ||
            !files[f].sop_uid)
            return CTG_EINVAL;
    for (int d = 0; d < ndests; d++)
        if (!dests[d] || !dests[d][0]) return CTG_EINVAL;
    pthread_mutex_lock(&st->lock);
    if ((r = st__exec(st, "BEGIN IMMEDIATE")) < 0) goto out;
    if ((r = st__prepare(st,
                         "SELECT 1 FROM exports WHERE path=?1 AND destination=?2 AND state<>2",
                         &have)) < 0 ||
        (r = st__prepare(st,
                         "INSERT INTO exports(job_id, study_uid, path, sop_class, sop_uid,"
                         " destination, state, attempts, next_try, created, updated)"
                         " VALUES(?1,?2,?3,?4,?5,?6,0,0,?7,?7,?7)",
                         &ins)) < 0)
        goto rollback;
    for (int f = 0; f < nfiles; f++) {
        for (int d = 0; d < ndests; d++) {
            sqlite3_reset(have);
            sqlite3_bind_text(have, 1, files[f].path, -1, SQLITE_TRANSIENT);
            sqlite3_bind_text(have, 2, dests[d], -1, SQLITE_TRANSIENT);
            int rc = sqlite3_step(have);
            if (rc == SQLITE_ROW) continue; /* already on its way there */
            if (rc != SQLITE_DONE) {
                r = st__dberr(st, "export lookup");
                goto rollback;
            }
            sqlite3_reset(ins);
            sqlite3_bind_int64(ins, 1, job_id);
            sqlite3_bind_text(ins, 2, study_uid ? study_uid : "", -1, SQLITE_TRANSIENT);
            sqlite3_bind_text(ins, 3, files[f].path, -1, SQLITE_TRANSIENT);
            sqlite3_bind_text(ins, 4, files[f].sop_class, -1, SQLITE_TRANSIENT);
            sqlite3_bind_text(ins, 5, files[f].sop_uid, -1, SQLITE_TRANSIENT);
            sqlite3_bind_text(ins, 6, dests[d], -1, SQLITE_TRANSIENT);
            sqlite3_bind_double(ins, 7, now);
            if (sqlite3_step(ins) != SQLITE_DONE) {
                r = st__dberr(st, "export insert");
                goto rollback;
            }
            added++;
        }
    }
    sqlite3_finalize(have);
    sqlite3_finalize(ins);
    have = ins = NULL;
    if ((r = st__exec(st, "COMMIT")) < 0) goto rollback;
    r = added;
    goto out;
rollback:
    sqlite3_finalize(have);
    sqlite3_finalize(ins);
    st__exec(st, "ROLLBACK");
out:
    pthread_mutex_unlock(&st->lock);
    return r;
}

int st_export_claim(st_store *st, const char *dest, const char *owner,
                    double now, double lease, st_export *rows, int max)
{
    sqlite3_stmt *s = NULL, *u = NULL;
    int r, n = 0;
    if (max <= 0) return 0;
    pthread_mutex_lock(&st->lock);
    if ((r = st__exec(st, "BEGIN IMMEDIATE")) < 0) goto out;
    if ((r = st__prepare(st,
                         "SELECT id, job_id, study_uid, path, sop_class, sop_uid, attempts,"
                         " next_try, coalesce(last_status, -1), last_error, created"
                         " FROM exports WHERE destination=?1 AND state=0 AND next_try <= ?2"
                         " ORDER BY next_try, id LIMIT ?3",
                         &s)) < 0 ||
        (r = st__prepare(st,
                         "UPDATE exports SET state=1, lease_owner=?2, lease_expires=?3,"
                         " updated=?4 WHERE id=?1",
                         &u)) < 0)
        goto rollback;
    sqlite3_bind_text(s, 1, dest, -1, SQLITE_TRANSIENT);
    sqlite3_bind_double(s, 2, now);
    sqlite3_bind_int(s, 3, max);
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        st_export *e = &rows[n];
        memset(e, 0, sizeof *e);
        e->id = sqlite3_column_int64(s, 0);
        e->job_id = sqlite3_column_int64(s, 1);
        copy_col(s, 2, e->study_uid, sizeof e->study_uid);
        copy_col(s, 3, e->path, sizeof e->path);
        copy_col(s, 4, e->sop_class, sizeof e->sop_class);
        copy_col(s, 5, e->sop_uid, sizeof e->sop_uid);
        snprintf(e->destination, sizeof e->destination, "%s", dest);
        e->state = EXP_SENDING;
        e->attempts = sqlite3_column_int(s, 6);
        e->next_try = sqlite3_column_double(s, 7);
        e->last_status = sqlite3_column_int(s, 8);
        copy_col(s, 9, e->last_error, sizeof e->last_error);
        e->created = sqlite3_column_double(s, 10);
        n++;
    }
    if (rc != SQLITE_DONE) {
        r = st__dberr(st, "export claim");
        goto rollback;
    }
    for (int i = 0; i < n; i++) {
        sqlite3_reset(u);
        sqlite3_bind_int64(u, 1, rows[i].id);
        sqlite3_bind_text(u, 2, owner, -1, SQLITE_TRANSIENT);
        sqlite3_bind_double(u, 3, now + lease);
        sqlite3_bind_double(u, 4, now);
        if (sqlite3_step(u) != SQLITE_DONE) {
            r = st__dberr(st, "export claim update");
            goto rollback;
        }
    }
    sqlite3_finalize(s);
    sqlite3_finalize(u);
    s = u = NULL;
    if ((r = st__exec(st, n ? "COMMIT" : "ROLLBACK")) < 0) goto rollback;
    r = n;
    goto out;
rollback:
    sqlite3_finalize(s);
    sqlite3_finalize(u);
    st__exec(st, "ROLLBACK");
out:
    pthread_mutex_unlock(&st->lock);
    return r;
}

int st_export_record(st_store *st, const char *owner, st_export_outcome *o, int n,
                     double now, const st_retry_policy *pol)
{
    sqlite3_stmt *sel = NULL, *ok = NULL, *bad = NULL;
    int r, recorded = 0;
    for (int i = 0; i < n; i++) {
        o[i].final = 0;
        o[i].recorded = 0;
        o[i].attempts = 0;
        o[i].next_try = 0;
    }
    pthread_mutex_lock(&st->lock);
    if ((r = st__exec(st, "BEGIN IMMEDIATE")) < 0) goto out;
    if ((r = st__prepare(st,
                         "SELECT attempts FROM exports WHERE id=?1 AND state=1 AND lease_owner=?2",
                         &sel)) < 0 ||
        (r = st__prepare(st,
                         "UPDATE exports SET state=2, lease_owner=NULL, lease_expires=NULL,"
                         " last_status=?2, last_error=NULL, updated=?3, done_at=?3 WHERE id=?1",
                         &ok)) < 0 ||
        (r = st__prepare(st,
                         "UPDATE exports SET state=?2, attempts=?3, next_try=?4,"
                         " lease_owner=NULL, lease_expires=NULL, last_status=?5,"
                         " last_error=?6, updated=?7 WHERE id=?1",
                         &bad)) < 0)
        goto rollback;
    for (int i = 0; i < n; i++) {
        sqlite3_reset(sel);
        sqlite3_bind_int64(sel, 1, o[i].id);
        sqlite3_bind_text(sel, 2, owner, -1, SQLITE_TRANSIENT);
        int rc = sqlite3_step(sel);
        if (rc == SQLITE_DONE) continue; /* not ours any more */
        if (rc != SQLITE_ROW) {
            r = st__dberr(st, "export record");
            goto rollback;
        }
        int attempts = sqlite3_column_int(sel, 0);
        sqlite3_stmt *u;
        if (o[i].ok) {
            u = ok;
            sqlite3_reset(u);
            sqlite3_bind_int64(u, 1, o[i].id);
            sqlite3_bind_int(u, 2, o[i].status);
            sqlite3_bind_double(u, 3, now);
            o[i].attempts = attempts;
        } else {
            attempts++;
            o[i].attempts = attempts;
            o[i].final = attempts >= pol->max_attempts;
            o[i].next_try = o[i].final ? now : now + st_backoff(pol, attempts);
            u = bad;
            sqlite3_reset(u);
            sqlite3_bind_int64(u, 1, o[i].id);
            sqlite3_bind_int(u, 2, o[i].final ? EXP_DEAD : EXP_QUEUED);
            sqlite3_bind_int(u, 3, attempts);
            sqlite3_bind_double(u, 4, o[i].next_try);
            if (o[i].status >= 0)
                sqlite3_bind_int(u, 5, o[i].status);
            else
                sqlite3_bind_null(u, 5);
            sqlite3_bind_text(u, 6, o[i].error ? o[i].error : "failed", -1, SQLITE_TRANSIENT);
            sqlite3_bind_double(u, 7, now);
        }
        if (sqlite3_step(u) != SQLITE_DONE) {
            r = st__dberr(st, "export record update");
            goto rollback;
        }
        o[i].recorded = 1;
        recorded++;
    }
    sqlite3_finalize(sel);
    sqlite3_finalize(ok);
    sqlite3_finalize(bad);
    sel = ok = bad = NULL;
    if ((r = st__exec(st, "COMMIT")) < 0) goto rollback;
    r = recorded;
    goto out;
rollback:
    sqlite3_finalize(sel);
    sqlite3_finalize(ok);
    sqlite3_finalize(bad);
    st__exec(st, "ROLLBACK");
    for (int i = 0; i < n; i++) o[i].recorded = o[i].final = 0;
out:
    pthread_mutex_unlock(&st->lock);
    return r;
}

/* Runs an UPDATE with ?1 = now and ?2 = text (NULL when text is NULL);
 * returns the number of changed rows. */
static int update_count(st_store *st, const char *sql, double now, const char *text)
{
    sqlite3_stmt *s;
    int r;
    pthread_mutex_lock(&st->lock);
    if ((r = st__prepare(st, sql, &s)) < 0) goto out;
    sqlite3_bind_double(s, 1, now);
    if (text)
        sqlite3_bind_text(s, 2, text, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(s, 2);
    int rc = sqlite3_step(s);
    sqlite3_finalize(s);
    r = rc == SQLITE_DONE ? sqlite3_changes(st->db) : st__dberr(st, "export update");
out:
    pthread_mutex_unlock(&st->lock);
    return r;
}

int st_exports_recover(st_store *st, double now, int all)
{
    sqlite3_stmt *s;
    int r;
    pthread_mutex_lock(&st->lock);
    if ((r = st__prepare(st,
                         "UPDATE exports SET state=0, next_try=?1, updated=?1,"
                         " lease_owner=NULL, lease_expires=NULL"
                         " WHERE state=1 AND (?2 OR lease_expires < ?1)",
                         &s)) < 0)
        goto out;
    sqlite3_bind_double(s, 1, now);
    sqlite3_bind_int(s, 2, all != 0);
    int rc = sqlite3_step(s);
    sqlite3_finalize(s);
    r = rc == SQLITE_DONE ? sqlite3_changes(st->db) : st__dberr(st, "export recover");
out:
    pthread_mutex_unlock(&st->lock);
    if (r > 0)
        log_info("export: %d export(s) that were being sent went back to the queue", r);
    return r;
}

int st_export_next_try(st_store *st, const char *dest, double *when)
{
    sqlite3_stmt *s;
    int r;
    pthread_mutex_lock(&st->lock);
    if ((r = st__prepare(st,
                         "SELECT min(next_try) FROM exports WHERE state=0"
                         " AND (?1 IS NULL OR destination=?1)",
                         &s)) < 0)
        goto out;
    if (dest)
        sqlite3_bind_text(s, 1, dest, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(s, 1);
    r = 0;
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL) {
        *when = sqlite3_column_double(s, 0);
        r = 1;
    } else if (rc != SQLITE_ROW) {
        r = st__dberr(st, "export next try");
    }
    sqlite3_finalize(s);
out:
    pthread_mutex_unlock(&st->lock);
    return r;
}

int st_export_release_file(st_store *st, const char *path)
{
    sqlite3_stmt *s;
    int r;
    pthread_mutex_lock(&st->lock);
    if ((r = st__prepare(st, "SELECT count(*) FROM exports WHERE path=?1 AND state<>2", &s)) < 0)
        goto out;
    sqlite3_bind_text(s, 1, path, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(s);
    int open_rows = rc == SQLITE_ROW ? sqlite3_column_int(s, 0) : -1;
    sqlite3_finalize(s);
    if (open_rows < 0) {
        r = st__dberr(st, "export release");
        goto out;
    }
    if (open_rows > 0) {
        r = 0;
        goto out;
    }
    if (unlink(path) != 0 && errno != ENOENT) {
        r = ctg_errno(errno);
        log_syserr(r, "unlink", "%s", path);
        goto out;
    }
    /* Make the removal durable, so a crash cannot bring back a file whose
     * rows are all done (it would only linger, never be sent again). */
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        slash[1] = 0;
    else
        *slash = 0;
    ctg_fsync_dir(dir);
    r = 1;
out:
    pthread_mutex_unlock(&st->lock);
    return r;
}

int st_export_requeue(st_store *st, int64_t id, double now)
{
    sqlite3_stmt *s;
    int r;
    pthread_mutex_lock(&st->lock);
    if ((r = st__prepare(st, "SELECT state FROM exports WHERE id=?1", &s)) < 0) goto out;
    sqlite3_bind_int64(s, 1, id);
    int rc = sqlite3_step(s);
    int state = rc == SQLITE_ROW ? sqlite3_column_int(s, 0) : -1;
    sqlite3_finalize(s);
    if (rc != SQLITE_ROW) {
        r = rc == SQLITE_DONE ? CTG_ENOTFOUND : st__dberr(st, "export requeue");
        goto out;
    }
    if (state != EXP_DEAD && state != EXP_QUEUED) {
        r = CTG_ESTATE;
        goto out;
    }
    if ((r = st__prepare(st,
                         "UPDATE exports SET state=0, attempts=0, next_try=?2, updated=?2,"
                         " last_error=CASE WHEN last_error IS NULL THEN NULL"
                         " ELSE 'requeued by admin; before: ' || last_error END"
                         " WHERE id=?1 AND state IN (0,3)",
                         &s)) < 0)
        goto out;
    sqlite3_bind_int64(s, 1, id);
    sqlite3_bind_double(s, 2, now);
    rc = sqlite3_step(s);
    sqlite3_finalize(s);
    r = rc == SQLITE_DONE ? 0 : st__dberr(st, "export requeue");
out:
    pthread_mutex_unlock(&st->lock);
    return r;
}

int st_export_requeue_dead(st_store *st, const char *dest, double now)
{
    return update_count(st,
                        "UPDATE exports SET state=0, attempts=0, next_try=?1, updated=?1,"
                        " last_error='requeued by admin; before: ' || coalesce(last_error, '?')"
                        " WHERE state=3 AND (?2 IS NULL OR destination=?2)",
                        now, dest);
}

int st_export_counts(st_store *st, const char *dest, int *counts)
{
    sqlite3_stmt *s;
    int r;
    for (int i = 0; i < EXP_NSTATES; i++) counts[i] = 0;
    pthread_mutex_lock(&st->lock);
    if ((r = st__prepare(st,
                         "SELECT state, count(*) FROM exports WHERE ?1 IS NULL OR destination=?1"
                         " GROUP BY state",
                         &s)) < 0)
        goto out;
    if (dest)
        sqlite3_bind_text(s, 1, dest, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(s, 1);
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        int state = sqlite3_column_int(s, 0);
        if (state >= 0 && state < EXP_NSTATES) counts[state] = sqlite3_column_int(s, 1);
    }
    sqlite3_finalize(s);
    r = rc == SQLITE_DONE ? 0 : st__dberr(st, "export counts");
out:
    pthread_mutex_unlock(&st->lock);
    return r;
}

int st_export_list(st_store *st, int state, const char *dest, st_row_fn row, void *ud)
{
    sqlite3_stmt *s;
    int r;
    pthread_mutex_lock(&st->lock);
    if ((r = st__prepare(st,
                         "SELECT id, destination,"
                         " CASE state WHEN 0 THEN 'queued' WHEN 1 THEN 'sending'"
                         "  WHEN 2 THEN 'done' WHEN 3 THEN 'dead' ELSE '?' END AS state,"
                         " attempts, next_try, last_status, last_error, path, study_uid,"
                         " job_id, sop_class, sop_uid, created, done_at FROM exports"
                         " WHERE (?1 < 0 OR state=?1) AND (?2 IS NULL OR destination=?2)"
                         " ORDER BY id",
                         &s)) < 0)
        goto out;
    sqlite3_bind_int(s, 1, state);
    if (dest)
        sqlite3_bind_text(s, 2, dest, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(s, 2);
    int n = sqlite3_column_count(s);
    const char *names[16], *vals[16];
    if (n > 16) n = 16;
    for (int i = 0; i < n; i++) names[i] = sqlite3_column_name(s, i);
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        for (int i = 0; i < n; i++) vals[i] = (const char *)sqlite3_column_text(s, i);
        if ((r = row(ud, n, names, vals)) != 0) break;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) r = st__dberr(st, "export list");
    sqlite3_finalize(s);
out:
    pthread_mutex_unlock(&st->lock);
    return r;
}
