/*
 * queue.c - study completion and the job queue.
 *
 * A study is pending while rx_gen > queued_gen.  st_complete_due() turns each
 * pending study whose persisted deadline has passed into exactly one queued
 * job and sets queued_gen = rx_gen in the same transaction, so a study is
 * queued once per batch of new content, also across restarts.
 *
 * Job states: queued -> running (with a lease) -> done | failed, and
 * superseded for a queued job that a newer job of the same study replaced.
 * A failed attempt goes back to queued with exponential back-off until the
 * attempts are used up.  A running job whose lease expired (its worker died)
 * goes back to queued the same way.
 *
 * Threading: any thread; each call is one transaction under the handle lock.
 */
#include "store_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *st_job_state_name(int state)
{
    static const char *names[] = {"queued", "running", "done", "failed",
                                  "superseded"};
    return state >= 0 && state < 5 ? names[state] : "?";
}

/* Runs a one-value query; returns 1 and *out when the value is not NULL,
 * 0 when it is, or an error. */
static int min_value(st_store *st, const char *sql, double *out)
{
    sqlite3_stmt *s;
    int r;
    pthread_mutex_lock(&st->lock);
    if ((r = st__prepare(st, sql, &s)) < 0) goto out;
    r = 0;
    if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL) {
        *out = sqlite3_column_double(s, 0);
        r = 1;
    }
    sqlite3_finalize(s);
out:
    pthread_mutex_unlock(&st->lock);
    return r;
}

int st_next_deadline(st_store *st, double *deadline)
{
    return min_value(st, "SELECT min(deadline) FROM studies WHERE rx_gen > queued_gen",
                     deadline);
}

/* Queues one study; caller holds the lock inside a transaction. */
static int queue_study(st_store *st, int64_t study, const char *uid, int gen,
                       double now)
{
    sqlite3_stmt *s;
    int64_t prev = 0;
    int prev_state = -1;

    if (st__prepare(st,
                    "SELECT id, state FROM jobs WHERE study_ref=?1 ORDER BY id DESC LIMIT 1",
                    &s) < 0)
        return CTG_EDB;
    sqlite3_bind_int64(s, 1, study);
    if (sqlite3_step(s) == SQLITE_ROW) {
        prev = sqlite3_column_int64(s, 0);
        prev_state = sqlite3_column_int(s, 1);
    }
    sqlite3_finalize(s);

    if (st__prepare(st,
                    "INSERT INTO jobs(study_ref, study_uid, generation, state, attempts,"
                    " not_before, created, updated, supersedes)"
                    " VALUES(?1,?2,?3,0,0,?4,?4,?4,?5)",
                    &s) < 0)
        return CTG_EDB;
    sqlite3_bind_int64(s, 1, study);
    sqlite3_bind_text(s, 2, uid, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(s, 3, gen);
    sqlite3_bind_double(s, 4, now);
    if (prev)
        sqlite3_bind_int64(s, 5, prev);
    else
        sqlite3_bind_null(s, 5);
    int rc = sqlite3_step(s);
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE) return st__dberr(st, "insert job");
    int64_t id = sqlite3_last_insert_rowid(st->db);

    /* The study is covered up to the generation this job was made for. */
    if (st__prepare(st, "UPDATE studies SET queued_gen=?2 WHERE id=?1", &s) < 0)
        return CTG_EDB;
    sqlite3_bind_int64(s, 1, study);
    sqlite3_bind_int(s, 2, gen);
    rc = sqlite3_step(s);
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE) return st__dberr(st, "mark study queued");

    if (prev) {
        /* A queued predecessor will never run now; a running or finished one
         * only learns that its result has been superseded. */
        if (st__prepare(st,
                        "UPDATE jobs SET superseded_by=?2, updated=?3,"
                        " state=CASE WHEN state=0 THEN 4 ELSE state END,"
                        " reason=CASE WHEN state=0 THEN 'superseded by job ' || ?2"
                        " ELSE reason END WHERE id=?1",
                        &s) < 0)
            return CTG_EDB;
        sqlite3_bind_int64(s, 1, prev);
        sqlite3_bind_int64(s, 2, id);
        sqlite3_bind_double(s, 3, now);
        rc = sqlite3_step(s);
        sqlite3_finalize(s);
        if (rc != SQLITE_DONE) return st__dberr(st, "supersede job");
    }
    /* Name the superseded job and the state it was in, so an operator can
     * follow the chain from the log alone. */
    char sup[80] = "";
    if (prev)
        snprintf(sup, sizeof sup, " (supersedes job %lld, which was %s)", (long long)prev,
                 st_job_state_name(prev_state));
    log_info("queue: study %s complete, job %lld queued%s", uid, (long long)id, sup);
    return 0;
}

int st_complete_due(st_store *st, double now)
{
    struct due {
        int64_t id;
        char uid[65];
        int gen;
    } *due = NULL;
    sqlite3_stmt *s = NULL;
    int r, n = 0, cap = 0;
    pthread_mutex_lock(&st->lock);
    if ((r = st__exec(st, "BEGIN IMMEDIATE")) < 0) goto out;
    if ((r = st__prepare(st,
                         "SELECT id, study_uid, rx_gen FROM studies"
                         " WHERE rx_gen > queued_gen AND deadline <= ?1",
                         &s)) < 0)
        goto rollback;
    sqlite3_bind_double(s, 1, now);
    /* Collect first: queueing updates the rows this query reads. */
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (n == cap) {
            void *p = realloc(due, (size_t)(cap = cap ? 2 * cap : 16) * sizeof *due);
            if (!p) {
                r = CTG_ENOMEM;
                goto rollback;
            }
            due = p;
        }
        due[n].id = sqlite3_column_int64(s, 0);
        snprintf(due[n].uid, sizeof due[n].uid, "%s", sqlite3_column_text(s, 1));
        due[n].gen = sqlite3_column_int(s, 2);
        n++;
    }
    sqlite3_finalize(s);
    s = NULL;
    if (rc != SQLITE_DONE) {
        r = st__dberr(st, "due studies");
        goto rollback;
    }
    for (int i = 0; i < n; i++)
        if ((r = queue_study(st, due[i].id, due[i].uid, due[i].gen, now)) < 0) goto rollback;
    if ((r = st__exec(st, n ? "COMMIT" : "ROLLBACK")) < 0) goto rollback;
    goto out;
rollback:
    if (s) sqlite3_finalize(s);
    st__exec(st, "ROLLBACK");
    n = 0;
out:
    pthread_mutex_unlock(&st->lock);
    free(due);
    return r < 0 ? r : n;
}

int st_job_claim(st_store *st, const char *owner, double now, double lease,
                 st_job *job)
{
    sqlite3_stmt *s;
    int r;
    pthread_mutex_lock(&st->lock);
    if ((r = st__exec(st, "BEGIN IMMEDIATE")) < 0) goto out;
    /* One job per study at a time: a newer job waits for a running one. */
    if ((r = st__prepare(st,
                         "SELECT id, study_uid, generation, attempts, supersedes FROM jobs j"
                         " WHERE state=0 AND not_before <= ?1 AND NOT EXISTS"
                         " (SELECT 1 FROM jobs r WHERE r.study_ref=j.study_ref AND r.state=1)"
                         " ORDER BY not_before, id LIMIT 1",
                         &s)) < 0)
        goto rollback;
    sqlite3_bind_double(s, 1, now);
    int rc = sqlite3_step(s);
    if (rc != SQLITE_ROW) {
        sqlite3_finalize(s);
        r = rc == SQLITE_DONE ? 0 : st__dberr(st, "claim");
        goto rollback;
    }
    memset(job, 0, sizeof *job);
    job->id = sqlite3_column_int64(s, 0);
    snprintf(job->study_uid, sizeof job->study_uid, "%s", sqlite3_column_text(s, 1));
    job->generation = sqlite3_column_int(s, 2);
    job->attempts = sqlite3_column_int(s, 3);
    job->supersedes = sqlite3_column_int64(s, 4);
    sqlite3_finalize(s);

    if ((r = st__prepare(st,
                         "UPDATE jobs SET state=1, lease_owner=?2, lease_expires=?3,"
                         " updated=?4 WHERE id=?1",
                         &s)) < 0)
        goto rollback;
    sqlite3_bind_int64(s, 1, job->id);
    sqlite3_bind_text(s, 2, owner, -1, SQLITE_TRANSIENT);
    sqlite3_bind_double(s, 3, now + lease);
    sqlite3_bind_double(s, 4, now);
    rc = sqlite3_step(s);
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE) {
        r = st__dberr(st, "claim update");
        goto rollback;
    }
    if ((r = st__exec(st, "COMMIT")) < 0) goto rollback;
    r = 1;
    goto out;
rollback:
    st__exec(st, "ROLLBACK");
out:
    pthread_mutex_unlock(&st->lock);
    return r;
}

/* Runs an UPDATE on a job we hold; CTG_ELEASE when it is not ours any more.
 * Caller holds the lock. */
static int update_held(st_store *st, const char *sql, int64_t id,
                       const char *owner, double a, double b, const char *text)
{
    sqlite3_stmt *s;
    if (st__prepare(st, sql, &s) < 0) return CTG_EDB;
    sqlite3_bind_int64(s, 1, id);
    sqlite3_bind_text(s, 2, owner, -1, SQLITE_TRANSIENT);
    sqlite3_bind_double(s, 3, a);
    sqlite3_bind_double(s, 4, b);
    if (text) sqlite3_bind_text(s, 5, text, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(s);
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE) return st__dberr(st, "job update");
    return sqlite3_changes(st->db) == 1 ? 0 : CTG_ELEASE;
}

int st_job_renew(st_store *st, int64_t id, const char *owner, double now,
                 double lease)
{
    pthread_mutex_lock(&st->lock);
    int r = update_held(st,
                        "UPDATE jobs SET lease_expires=?4, updated=?3"
                        " WHERE id=?1 AND state=1 AND lease_owner=?2",
                        id, owner, now, now + lease, NULL);
    pthread_mutex_unlock(&st->lock);
    return r;
}

int st_job_done(st_store *st, int64_t id, const char *owner, double now)
{
    pthread_mutex_lock(&st->lock);
    int r = update_held(st,
                        "UPDATE jobs SET state=2, lease_owner=NULL, lease_expires=NULL,"
                        " updated=?3, reason=NULL WHERE id=?1 AND state=1 AND lease_owner=?2"
                        " AND ?4 = ?4",
                        id, owner, now, 0, NULL);
    pthread_mutex_unlock(&st->lock);
    return r;
}

double st_backoff(const st_retry_policy *pol, int attempts)
{
    double d = pol->base_seconds * pow(2.0, attempts > 0 ? attempts - 1 : 0);
    return d > pol->max_seconds ? pol->max_seconds : d;
}

int st_job_fail(st_store *st, int64_t id, const char *owner, const char *reason,
                double now, const st_retry_policy *pol, int *final)
{
    sqlite3_stmt *s;
    int r, attempts = 0;
    *final = 0;
    pthread_mutex_lock(&st->lock);
    if ((r = st__exec(st, "BEGIN IMMEDIATE")) < 0) goto out;
    if ((r = st__prepare(st,
                         "SELECT attempts FROM jobs WHERE id=?1 AND state=1 AND lease_owner=?2",
                         &s)) < 0)
        goto rollback;
    sqlite3_bind_int64(s, 1, id);
    sqlite3_bind_text(s, 2, owner, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) attempts = sqlite3_column_int(s, 0) + 1;
    sqlite3_finalize(s);
    if (rc != SQLITE_ROW) {
        r = rc == SQLITE_DONE ? CTG_ELEASE : st__dberr(st, "fail");
        goto rollback;
    }
    *final = attempts >= pol->max_attempts;
    r = update_held(st,
                    *final ? "UPDATE jobs SET state=3, attempts=attempts+1,"
                             " lease_owner=NULL, lease_expires=NULL, updated=?3,"
                             " reason=?5 WHERE id=?1 AND lease_owner=?2 AND ?4=?4"
                           : "UPDATE jobs SET state=0, attempts=attempts+1,"
                             " lease_owner=NULL, lease_expires=NULL, updated=?3,"
                             " not_before=?4, reason=?5 WHERE id=?1 AND lease_owner=?2",
                    id, owner, now, now + st_backoff(pol, attempts), reason);
    if (r < 0 || (r = st__exec(st, "COMMIT")) < 0) goto rollback;
    goto out;
rollback:
    st__exec(st, "ROLLBACK");
out:
    pthread_mutex_unlock(&st->lock);
    return r;
}

int st_jobs_recover(st_store *st, double now, const st_retry_policy *pol)
{
    sqlite3_stmt *s = NULL;
    int r, n = 0;
    pthread_mutex_lock(&st->lock);
    if ((r = st__exec(st, "BEGIN IMMEDIATE")) < 0) goto out;
    if ((r = st__prepare(st,
                         "SELECT id, attempts, lease_owner FROM jobs"
                         " WHERE state=1 AND lease_expires < ?1",
                         &s)) < 0)
        goto rollback;
    sqlite3_bind_double(s, 1, now);
    while (sqlite3_step(s) == SQLITE_ROW) {
        int64_t id = sqlite3_column_int64(s, 0);
        int attempts = sqlite3_column_int(s, 1) + 1;
        const char *owner = (const char *)sqlite3_column_text(s, 2);
        int final = attempts >= pol->max_attempts;
        char reason[160];
        snprintf(reason, sizeof reason,
                 "lease of worker %s expired (worker lost)%s", owner ? owner : "?",
                 final ? "; attempts used up" : "");
        sqlite3_stmt *u;
        if ((r = st__prepare(st,
                             "UPDATE jobs SET state=?2, attempts=?3, lease_owner=NULL,"
                             " lease_expires=NULL, not_before=?4, updated=?5, reason=?6"
                             " WHERE id=?1",
                             &u)) < 0)
            goto rollback;
        sqlite3_bind_int64(u, 1, id);
        sqlite3_bind_int(u, 2, final ? JOB_FAILED : JOB_QUEUED);
        sqlite3_bind_int(u, 3, attempts);
        sqlite3_bind_double(u, 4, now + (final ? 0 : st_backoff(pol, attempts)));
        sqlite3_bind_double(u, 5, now);
        sqlite3_bind_text(u, 6, reason, -1, SQLITE_TRANSIENT);
        int rc = sqlite3_step(u);
        sqlite3_finalize(u);
        if (rc != SQLITE_DONE) {
            r = st__dberr(st, "recover");
            goto rollback;
        }
        log_warn("queue: job %lld: %s", (long long)id, reason);
        n++;
    }
    sqlite3_finalize(s);
    s = NULL;
    if ((r = st__exec(st, "COMMIT")) < 0) goto rollback;
    goto out;
rollback:
    if (s) sqlite3_finalize(s);
    st__exec(st, "ROLLBACK");
    n = 0;
out:
    pthread_mutex_unlock(&st->lock);
    return r < 0 ? r : n;
}

int st_job_expire(st_store *st, int64_t id)
{
    sqlite3_stmt *s;
    int r;
    pthread_mutex_lock(&st->lock);
    if ((r = st__prepare(st, "UPDATE jobs SET lease_expires=0 WHERE id=?1 AND state=1", &s)) < 0)
        goto out;
    sqlite3_bind_int64(s, 1, id);
    r = sqlite3_step(s) == SQLITE_DONE ? 0 : st__dberr(st, "expire");
    sqlite3_finalize(s);
out:
    pthread_mutex_unlock(&st->lock);
    return r;
}

int st_job_requeue(st_store *st, int64_t id, double now)
{
    sqlite3_stmt *s;
    int r;
    pthread_mutex_lock(&st->lock);
    if ((r = st__prepare(st,
                         "UPDATE jobs SET state=0, attempts=0, not_before=?2, updated=?2,"
                         " reason='requeued by admin' WHERE id=?1 AND state IN (2,3)",
                         &s)) < 0)
        goto out;
    sqlite3_bind_int64(s, 1, id);
    sqlite3_bind_double(s, 2, now);
    int rc = sqlite3_step(s);
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE)
        r = st__dberr(st, "requeue");
    else
        r = sqlite3_changes(st->db) == 1 ? 0 : CTG_ENOTFOUND;
out:
    pthread_mutex_unlock(&st->lock);
    return r;
}

int st_next_job_time(st_store *st, double *when)
{
    return min_value(st, "SELECT min(not_before) FROM jobs WHERE state=0", when);
}
