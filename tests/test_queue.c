/*
 * test_queue.c - unit tests of study completion and the job queue: exactly
 * one job per quiet study, supersession, leases, retries with back-off,
 * final failure, recovery of expired leases, admin requeue, persistence.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store/store.h"
#include "tests.h"

static st_store *open_store(void)
{
    st_config c = {.spool_dir = "spool", .db_path = "index.db", .owner = 1};
    st_store *st = NULL;
    return st_open(&c, &st) < 0 ? NULL : st;
}

/* Ingests one instance of `study` at time `now` with the given content. */
static int arrive(st_store *st, const char *study, const char *sop, double now, int stable)
{
    ctg_instance in;
    memset(&in, 0, sizeof in);
    snprintf(in.sop_class, sizeof in.sop_class, "1.2.840.10008.5.1.4.1.1.2");
    snprintf(in.study_uid, sizeof in.study_uid, "%s", study);
    snprintf(in.series_uid, sizeof in.series_uid, "%s.1", study);
    snprintf(in.sop_uid, sizeof in.sop_uid, "%s", sop);
    snprintf(in.transfer_syntax, sizeof in.transfer_syntax, "1.2.840.10008.1.2.1");
    char path[PATH_MAX];
    int fd;
    if (st_tmp_create(st, path, &fd) < 0) return -1;
    if (write(fd, sop, strlen(sop)) < 0) return -1;
    st_ingest_req q = {.inst = &in, .tmp_path = path, .fd = fd, .data_offset = 0,
                       .size = strlen(sop), .calling_ae = "UNIT", .now = now,
                       .stable_seconds = stable};
    st_ingest_result res;
    return st_ingest(st, &q, &res);
}

static int state_row(void *ud, int n, const char **names, const char **vals)
{
    (void)names;
    if (n > 0 && vals[0]) *(int *)ud = atoi(vals[0]);
    return 0;
}

static int job_state(st_store *st, int64_t id)
{
    char sql[128];
    int state = -1;
    snprintf(sql, sizeof sql, "SELECT state FROM jobs WHERE id=%lld", (long long)id);
    return st_query(st, sql, state_row, &state) < 0 ? -2 : state;
}

static int test_complete_once(void)
{
    st_store *st = open_store();
    CHECK(st != NULL);
    CHECK_EQ_INT(arrive(st, "1.1", "1.1.1.1", 100.0, 30), 0);
    CHECK_EQ_INT(arrive(st, "1.1", "1.1.1.2", 110.0, 30), 0);
    double d;
    CHECK_EQ_INT(st_next_deadline(st, &d), 1);
    CHECK(d == 140.0); /* last arrival + stable seconds */
    CHECK_EQ_INT(st_complete_due(st, 139.9), 0);
    CHECK_EQ_INT(st_complete_due(st, 140.0), 1);
    /* Never twice for the same content. */
    CHECK_EQ_INT(st_complete_due(st, 200.0), 0);
    CHECK_EQ_INT(st_complete_due(st, 1e9), 0);
    CHECK_EQ_INT(st_next_deadline(st, &d), 0);
    st_counts c;
    CHECK_EQ_INT(st_counts_get(st, &c), 0);
    CHECK_EQ_INT(c.jobs[JOB_QUEUED], 1);
    st_close(st);
    return 0;
}

static int test_persists_across_reopen(void)
{
    st_store *st = open_store();
    CHECK(st != NULL);
    CHECK_EQ_INT(arrive(st, "2.1", "2.1.1.1", 500.0, 60), 0);
    st_close(st);
    /* A restart keeps the pending study and its deadline. */
    st = open_store();
    CHECK(st != NULL);
    double d;
    CHECK_EQ_INT(st_next_deadline(st, &d), 1);
    CHECK(d == 560.0);
    CHECK_EQ_INT(st_complete_due(st, 560.0), 1);
    st_close(st);
    st = open_store();
    CHECK(st != NULL);
    CHECK_EQ_INT(st_complete_due(st, 1e6), 0);
    st_counts c;
    CHECK_EQ_INT(st_counts_get(st, &c), 0);
    CHECK_EQ_INT(c.jobs[JOB_QUEUED], 1);
    st_close(st);
    return 0;
}

static int test_supersede(void)
{
    st_store *st = open_store();
    CHECK(st != NULL);
    st_job j1, j2, j3;
    CHECK_EQ_INT(arrive(st, "3.1", "3.1.1.1", 0.0, 10), 0);
    CHECK_EQ_INT(st_complete_due(st, 10.0), 1);
    /* More arrives while job 1 is still queued: job 2 replaces it. */
    CHECK_EQ_INT(arrive(st, "3.1", "3.1.1.2", 20.0, 10), 0);
    CHECK_EQ_INT(st_complete_due(st, 30.0), 1);
    CHECK_EQ_INT(job_state(st, 1), JOB_SUPERSEDED);
    CHECK_EQ_INT(st_job_claim(st, "w", 31.0, 60, &j2), 1);
    CHECK_EQ_INT(j2.id, 2);
    CHECK_EQ_INT(j2.supersedes, 1);
    CHECK_EQ_INT(j2.generation, 2);
    /* More arrives while job 2 runs: job 3 supersedes it but waits for it. */
    CHECK_EQ_INT(arrive(st, "3.1", "3.1.1.3", 40.0, 10), 0);
    CHECK_EQ_INT(st_complete_due(st, 50.0), 1);
    CHECK_EQ_INT(job_state(st, 2), JOB_RUNNING);
    CHECK_EQ_INT(st_job_claim(st, "w2", 51.0, 60, &j3), 0);
    CHECK_EQ_INT(st_job_done(st, j2.id, "w", 52.0), 0);
    CHECK_EQ_INT(st_job_claim(st, "w2", 53.0, 60, &j3), 1);
    CHECK_EQ_INT(j3.id, 3);
    CHECK_EQ_INT(j3.supersedes, 2);
    (void)j1;
    st_close(st);
    return 0;
}

static int test_lease_retry_fail(void)
{
    st_store *st = open_store();
    CHECK(st != NULL);
    st_retry_policy pol = {.max_attempts = 3, .base_seconds = 10, .max_seconds = 15};
    CHECK_EQ_INT(arrive(st, "4.1", "4.1.1.1", 0.0, 1), 0);
    CHECK_EQ_INT(st_complete_due(st, 1.0), 1);
    st_job j;
    CHECK_EQ_INT(st_job_claim(st, "a", 2.0, 60, &j), 1);
    CHECK_EQ_INT(st_job_claim(st, "b", 2.0, 60, &j), 0); /* one holder */
    /* Someone else cannot finish or renew our job. */
    CHECK_EQ_INT(st_job_done(st, j.id, "b", 3.0), CTG_ELEASE);
    CHECK_EQ_INT(st_job_renew(st, j.id, "b", 3.0, 60), CTG_ELEASE);
    CHECK_EQ_INT(st_job_renew(st, j.id, "a", 3.0, 60), 0);
    int final = -1;
    CHECK_EQ_INT(st_job_fail(st, j.id, "a", "first failure", 10.0, &pol, &final), 0);
    CHECK_EQ_INT(final, 0);
    /* Back-off: base * 2^0 = 10 s. */
    CHECK_EQ_INT(st_job_claim(st, "a", 19.9, 60, &j), 0);
    CHECK_EQ_INT(st_job_claim(st, "a", 20.0, 60, &j), 1);
    CHECK_EQ_INT(j.attempts, 1);
    CHECK_EQ_INT(st_job_fail(st, j.id, "a", "second failure", 20.0, &pol, &final), 0);
    CHECK_EQ_INT(final, 0);
    /* Back-off: base * 2^1 = 20, capped at 15 s. */
    CHECK_EQ_INT(st_job_claim(st, "a", 34.9, 60, &j), 0);
    CHECK_EQ_INT(st_job_claim(st, "a", 35.0, 60, &j), 1);
    CHECK_EQ_INT(st_job_fail(st, j.id, "a", "no CT series in study", 36.0, &pol, &final), 0);
    CHECK_EQ_INT(final, 1);
    CHECK_EQ_INT(job_state(st, j.id), JOB_FAILED);
    CHECK_EQ_INT(st_job_claim(st, "a", 1e6, 60, &j), 0);
    /* The reason is kept for the admin. */
    char reason[128] = "";
    FILE *p = popen("sqlite3 index.db 'SELECT reason FROM jobs WHERE id=1'", "r");
    if (p) {
        if (!fgets(reason, sizeof reason, p)) reason[0] = 0;
        pclose(p);
    }
    CHECK(strstr(reason, "no CT series in study") != NULL);
    /* Admin requeue gives it fresh attempts. */
    CHECK_EQ_INT(st_job_requeue(st, j.id, 100.0), 0);
    CHECK_EQ_INT(st_job_requeue(st, 999, 100.0), CTG_ENOTFOUND);
    CHECK_EQ_INT(st_job_claim(st, "a", 100.0, 60, &j), 1);
    CHECK_EQ_INT(j.attempts, 0);
    CHECK_EQ_INT(st_job_done(st, j.id, "a", 101.0), 0);
    CHECK_EQ_INT(job_state(st, j.id), JOB_DONE);
    st_close(st);
    return 0;
}

static int test_recover_expired(void)
{
    st_store *st = open_store();
    CHECK(st != NULL);
    st_retry_policy pol = {.max_attempts = 2, .base_seconds = 0, .max_seconds = 0};
    CHECK_EQ_INT(arrive(st, "5.1", "5.1.1.1", 0.0, 1), 0);
    CHECK_EQ_INT(st_complete_due(st, 1.0), 1);
    st_job j;
    CHECK_EQ_INT(st_job_claim(st, "dead-worker", 2.0, 30, &j), 1);
    CHECK_EQ_INT(st_jobs_recover(st, 31.0, &pol), 0); /* lease still valid */
    CHECK_EQ_INT(st_jobs_recover(st, 32.1, &pol), 1);
    CHECK_EQ_INT(job_state(st, j.id), JOB_QUEUED);
    /* The dead worker's late report is refused. */
    CHECK_EQ_INT(st_job_done(st, j.id, "dead-worker", 33.0), CTG_ELEASE);
    CHECK_EQ_INT(st_job_claim(st, "w2", 33.0, 30, &j), 1);
    CHECK_EQ_INT(j.attempts, 1);
    /* A worker that keeps dying uses up the attempts: failed, with reason. */
    CHECK_EQ_INT(st_job_expire(st, j.id), 0);
    CHECK_EQ_INT(st_jobs_recover(st, 34.0, &pol), 1);
    CHECK_EQ_INT(job_state(st, j.id), JOB_FAILED);
    st_close(st);
    return 0;
}

const test_case queue_tests[] = {
    {"queue_complete_exactly_once", test_complete_once},
    {"queue_persists_across_reopen", test_persists_across_reopen},
    {"queue_supersede", test_supersede},
    {"queue_lease_retry_fail", test_lease_retry_fail},
    {"queue_recover_expired_lease", test_recover_expired},
    {NULL, NULL},
};
