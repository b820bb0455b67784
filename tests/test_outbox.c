/*
 * test_outbox.c - the export outbox.
 *
 * Store level (store/export.c): adding exports, claiming per destination,
 * success and failure, the back-off arithmetic, dead and requeue, crash
 * recovery of `sending` rows, a file removed only after every destination
 * confirmed it, two destinations that do not wait on each other, and the
 * schema migration from version 1 that keeps existing data.
 *
 * Config: [destination NAME] and [export] sections.
 *
 * Exporter (daemon/exporter.c) against real peers: DCMTK storescp started by
 * the test on free loopback ports and stopped by PID, a destination with
 * nothing listening, back-off until it comes up, exactly-once delivery, dead
 * exports requeued through `ctglip requeue dead`, and reload.  The DICOM
 * files come from the phantom generator.
 */
#include <dirent.h>
#include <netinet/in.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon/daemon.h"
#include "store/store.h"
#include "tests.h"

static st_store *open_store(void)
{
    st_config c = {.spool_dir = "spool", .db_path = "index.db", .owner = 1};
    st_store *st = NULL;
    return st_open(&c, &st) < 0 ? NULL : st;
}

static int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fputs(text, f);
    return fclose(f) == 0 ? 0 : -1;
}

static int exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* Regular files in dir, not counting hidden ones; -1 when unreadable. */
static int count_files(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

/* Three outbox files and their export descriptions. */
typedef struct fake_files {
    char path[3][64], cls[3][65], uid[3][65];
    st_export_file f[3];
} fake_files;

static int make_fake(fake_files *ff)
{
    mkdir("outbox", 0750);
    for (int i = 0; i < 3; i++) {
        snprintf(ff->path[i], sizeof ff->path[i], "outbox/1.2.3.%d.dcm", i + 1);
        snprintf(ff->cls[i], sizeof ff->cls[i], "1.2.840.10008.5.1.4.1.1.88.34");
        snprintf(ff->uid[i], sizeof ff->uid[i], "1.2.3.%d", i + 1);
        if (write_file(ff->path[i], "not really DICOM") < 0) return -1;
        ff->f[i].path = ff->path[i];
        ff->f[i].sop_class = ff->cls[i];
        ff->f[i].sop_uid = ff->uid[i];
    }
    return 0;
}

static const st_retry_policy POL = {.max_attempts = 4, .base_seconds = 10, .max_seconds = 35};

/* Marks every row of a claimed batch with the same outcome. */
static int record_all(st_store *st, const char *owner, st_export *rows, int n, int ok,
                      double now, const st_retry_policy *pol, st_export_outcome *out)
{
    for (int i = 0; i < n; i++) {
        memset(&out[i], 0, sizeof out[i]);
        out[i].id = rows[i].id;
        out[i].ok = ok;
        out[i].status = ok ? 0 : -1;
        out[i].error = ok ? NULL : "association failed: connection refused";
    }
    return st_export_record(st, owner, out, n, now, pol);
}

static int first_int(void *ud, int ncol, const char **names, const char **v)
{
    (void)names;
    if (ncol > 0 && v[0]) *(int *)ud = atoi(v[0]);
    return 0;
}

static int state_of(st_store *st, int64_t id)
{
    char sql[96];
    int state = -1;
    snprintf(sql, sizeof sql, "SELECT state FROM exports WHERE id=%lld", (long long)id);
    return st_query(st, sql, first_int, &state) < 0 ? -2 : state;
}

/* ---- store ------------------------------------------------------------------ */

static int test_add_claim_done(void)
{
    st_store *st = open_store();
    CHECK(st != NULL);
    CHECK_EQ_INT(st_schema_version(st), ST_SCHEMA_VERSION);
    fake_files ff;
    CHECK_EQ_INT(make_fake(&ff), 0);
    const char *dests[] = {"PACS", "ARCHIVE"};
    CHECK_EQ_INT(st_export_add(st, 7, "1.2.3", ff.f, 2, dests, 2, 100.0), 4);
    /* Adding the same files again while they are on their way adds nothing. */
    CHECK_EQ_INT(st_export_add(st, 7, "1.2.3", ff.f, 2, dests, 2, 101.0), 0);
    int c[EXP_NSTATES];
    CHECK_EQ_INT(st_export_counts(st, NULL, c), 0);
    CHECK_EQ_INT(c[EXP_QUEUED], 4);
    CHECK_EQ_INT(st_export_counts(st, "PACS", c), 0);
    CHECK_EQ_INT(c[EXP_QUEUED], 2);

    st_export rows[8];
    /* Not due before `now`. */
    CHECK_EQ_INT(st_export_claim(st, "PACS", "me", 99.0, 60, rows, 8), 0);
    CHECK_EQ_INT(st_export_claim(st, "PACS", "me", 100.0, 60, rows, 1), 1);
    CHECK_EQ_INT(st_export_claim(st, "PACS", "me", 100.0, 60, rows + 1, 8), 1);
    CHECK_EQ_INT(st_export_claim(st, "PACS", "me", 100.0, 60, rows + 2, 8), 0);
    CHECK(!strcmp(rows[0].path, ff.path[0]));
    CHECK(!strcmp(rows[0].sop_uid, "1.2.3.1"));
    CHECK(!strcmp(rows[0].sop_class, ff.cls[0]));
    CHECK(!strcmp(rows[0].destination, "PACS"));
    CHECK(!strcmp(rows[0].study_uid, "1.2.3"));
    CHECK_EQ_INT(rows[0].job_id, 7);
    CHECK_EQ_INT(rows[0].state, EXP_SENDING);
    CHECK_EQ_INT(st_export_counts(st, NULL, c), 0);
    CHECK_EQ_INT(c[EXP_SENDING], 2);
    CHECK_EQ_INT(c[EXP_QUEUED], 2);

    st_export_outcome out[8];
    CHECK_EQ_INT(record_all(st, "me", rows, 2, 1, 105.0, &POL, out), 2);
    CHECK(out[0].recorded && !out[0].final);
    CHECK_EQ_INT(st_export_counts(st, "PACS", c), 0);
    CHECK_EQ_INT(c[EXP_DONE], 2);
    /* ARCHIVE has not confirmed yet: the files stay. */
    CHECK_EQ_INT(st_export_release_file(st, ff.path[0]), 0);
    CHECK(exists(ff.path[0]));
    st_counts sc;
    CHECK_EQ_INT(st_counts_get(st, &sc), 0);
    CHECK_EQ_INT(sc.exports[EXP_DONE], 2);
    CHECK_EQ_INT(sc.exports[EXP_QUEUED], 2);

    CHECK_EQ_INT(st_export_claim(st, "ARCHIVE", "me", 106.0, 60, rows, 8), 2);
    CHECK_EQ_INT(record_all(st, "me", rows, 2, 1, 107.0, &POL, out), 2);
    CHECK_EQ_INT(st_export_release_file(st, ff.path[0]), 1);
    CHECK_EQ_INT(st_export_release_file(st, ff.path[1]), 1);
    CHECK(!exists(ff.path[0]) && !exists(ff.path[1]));
    /* A file that no row names is not ours to keep either way; one that is
     * gone already counts as released. */
    CHECK_EQ_INT(st_export_release_file(st, ff.path[0]), 1);
    CHECK(exists(ff.path[2]));
    /* Once done, the same path may be queued again (a deliberate resend). */
    CHECK_EQ_INT(write_file(ff.path[0], "again"), 0);
    CHECK_EQ_INT(st_export_add(st, 8, "1.2.3", ff.f, 1, dests, 1, 200.0), 1);
    /* Bad arguments add nothing. */
    const char *empty[] = {""};
    CHECK_EQ_INT(st_export_add(st, 8, "1.2.3", ff.f, 1, empty, 1, 200.0), CTG_EINVAL);
    st_close(st);
    return 0;
}

static int test_backoff_and_dead(void)
{
    st_store *st = open_store();
    CHECK(st != NULL);
    /* base * 2^(attempts-1), capped. */
    CHECK(st_backoff(&POL, 1) == 10.0);
    CHECK(st_backoff(&POL, 2) == 20.0);
    CHECK(st_backoff(&POL, 3) == 35.0);
    CHECK(st_backoff(&POL, 30) == 35.0);

    fake_files ff;
    CHECK_EQ_INT(make_fake(&ff), 0);
    const char *dests[] = {"PACS"};
    CHECK_EQ_INT(st_export_add(st, 1, "1.2.3", ff.f, 1, dests, 1, 100.0), 1);
    st_export row;
    st_export_outcome o;
    double t = 100.0, expect_wait[] = {10, 20, 35};
    for (int a = 1; a <= 3; a++) {
        CHECK_EQ_INT(st_export_claim(st, "PACS", "me", t, 60, &row, 1), 1);
        CHECK_EQ_INT(row.attempts, a - 1);
        CHECK_EQ_INT(record_all(st, "me", &row, 1, 0, t, &POL, &o), 1);
        CHECK(!o.final);
        CHECK_EQ_INT(o.attempts, a);
        CHECK(o.next_try == t + expect_wait[a - 1]);
        double when;
        CHECK_EQ_INT(st_export_next_try(st, "PACS", &when), 1);
        CHECK(when == o.next_try);
        /* Not a moment early. */
        CHECK_EQ_INT(st_export_claim(st, "PACS", "me", o.next_try - 0.5, 60, &row, 1), 0);
        t = o.next_try;
    }
    /* The fourth failure uses up max_attempts: dead, with the reason. */
    CHECK_EQ_INT(st_export_claim(st, "PACS", "me", t, 60, &row, 1), 1);
    CHECK_EQ_INT(record_all(st, "me", &row, 1, 0, t, &POL, &o), 1);
    CHECK(o.final);
    CHECK_EQ_INT(o.attempts, 4);
    CHECK_EQ_INT(state_of(st, row.id), EXP_DEAD);
    double when;
    CHECK_EQ_INT(st_export_next_try(st, "PACS", &when), 0);
    CHECK_EQ_INT(st_export_claim(st, "PACS", "me", 1e12, 60, &row, 1), 0);
    /* A dead export keeps its file. */
    CHECK_EQ_INT(st_export_release_file(st, ff.path[0]), 0);
    CHECK(exists(ff.path[0]));
    st_close(st);
    return 0;
}

typedef struct list_ctx {
    int n;
    char state[8][16], error[8][256], attempts[8][8];
} list_ctx;

static int list_row(void *ud, int ncol, const char **names, const char **v)
{
    list_ctx *l = ud;
    CHECK(ncol >= 8);
    CHECK(!strcmp(names[2], "state"));
    if (l->n < 8) {
        snprintf(l->state[l->n], sizeof l->state[0], "%s", v[2]);
        snprintf(l->attempts[l->n], sizeof l->attempts[0], "%s", v[3]);
        snprintf(l->error[l->n], sizeof l->error[0], "%s", v[6] ? v[6] : "");
    }
    l->n++;
    return 0;
}

static int test_requeue(void)
{
    st_store *st = open_store();
    CHECK(st != NULL);
    fake_files ff;
    CHECK_EQ_INT(make_fake(&ff), 0);
    const char *dests[] = {"PACS", "ARCHIVE"};
    CHECK_EQ_INT(st_export_add(st, 1, "1.2.3", ff.f, 2, dests, 2, 100.0), 4);
    st_retry_policy once = {.max_attempts = 1, .base_seconds = 10, .max_seconds = 10};
    st_export rows[4];
    st_export_outcome out[4];
    /* Every row fails once: dead at once. */
    for (int d = 0; d < 2; d++) {
        CHECK_EQ_INT(st_export_claim(st, dests[d], "me", 100.0, 60, rows, 4), 2);
        CHECK_EQ_INT(record_all(st, "me", rows, 2, 0, 101.0, &once, out), 2);
        CHECK(out[0].final && out[1].final);
    }
    int c[EXP_NSTATES];
    CHECK_EQ_INT(st_export_counts(st, NULL, c), 0);
    CHECK_EQ_INT(c[EXP_DEAD], 4);
    list_ctx l = {0};
    CHECK_EQ_INT(st_export_list(st, EXP_DEAD, "PACS", list_row, &l), 0);
    CHECK_EQ_INT(l.n, 2);
    CHECK(!strcmp(l.state[0], "dead"));
    CHECK(!strcmp(l.attempts[0], "1"));
    CHECK(strstr(l.error[0], "connection refused") != NULL);

    /* One by id: queued, attempts 0, due now. */
    CHECK_EQ_INT(st_export_requeue(st, rows[0].id, 500.0), 0); /* an ARCHIVE row */
    CHECK_EQ_INT(state_of(st, rows[0].id), EXP_QUEUED);
    st_export r1;
    CHECK_EQ_INT(st_export_claim(st, "ARCHIVE", "me", 500.0, 60, &r1, 4), 1);
    CHECK_EQ_INT(r1.id, rows[0].id);
    CHECK_EQ_INT(r1.attempts, 0);
    CHECK_EQ_INT(st_export_requeue(st, r1.id, 500.0), CTG_ESTATE); /* being sent */
    CHECK_EQ_INT(record_all(st, "me", &r1, 1, 1, 501.0, &once, out), 1);
    CHECK_EQ_INT(st_export_requeue(st, r1.id, 502.0), CTG_ESTATE); /* done */
    CHECK_EQ_INT(st_export_requeue(st, 999999, 502.0), CTG_ENOTFOUND);

    /* Every dead row of one destination, then of all. */
    CHECK_EQ_INT(st_export_requeue_dead(st, "PACS", 600.0), 2);
    CHECK_EQ_INT(st_export_counts(st, "PACS", c), 0);
    CHECK_EQ_INT(c[EXP_QUEUED], 2);
    CHECK_EQ_INT(st_export_counts(st, "ARCHIVE", c), 0);
    CHECK_EQ_INT(c[EXP_DEAD], 1);
    CHECK_EQ_INT(st_export_requeue_dead(st, "NOWHERE", 600.0), 0);
    CHECK_EQ_INT(st_export_requeue_dead(st, NULL, 600.0), 1);
    CHECK_EQ_INT(st_export_counts(st, NULL, c), 0);
    CHECK_EQ_INT(c[EXP_DEAD], 0);
    CHECK_EQ_INT(c[EXP_QUEUED], 3);
    CHECK_EQ_INT(c[EXP_DONE], 1);
    CHECK_EQ_INT(st_export_claim(st, "PACS", "me", 600.0, 60, rows, 4), 2);
    CHECK_EQ_INT(rows[0].attempts, 0);
    st_close(st);
    return 0;
}

static int test_crash_recovery(void)
{
    st_store *st = open_store();
    CHECK(st != NULL);
    fake_files ff;
    CHECK_EQ_INT(make_fake(&ff), 0);
    const char *dests[] = {"PACS"};
    CHECK_EQ_INT(st_export_add(st, 1, "1.2.3", ff.f, 3, dests, 1, 100.0), 3);
    st_export rows[4];
    CHECK_EQ_INT(st_export_claim(st, "PACS", "old-process", 100.0, 60, rows, 2), 2);
    /* The process dies while sending: nothing is recorded. */
    st_close(st);

    st = open_store();
    CHECK(st != NULL);
    int c[EXP_NSTATES];
    CHECK_EQ_INT(st_export_counts(st, NULL, c), 0);
    CHECK_EQ_INT(c[EXP_SENDING], 2);
    /* Leases that have not expired stay with their owner... */
    CHECK_EQ_INT(st_exports_recover(st, 120.0, 0), 0);
    /* ...an expired one goes back... */
    CHECK_EQ_INT(st_exports_recover(st, 161.0, 0), 2);
    CHECK_EQ_INT(st_export_claim(st, "PACS", "p2", 161.0, 60, rows, 4), 3);
    /* ...and at start-up every sending row does, due at once, without
     * counting an attempt. */
    CHECK_EQ_INT(st_exports_recover(st, 170.0, 1), 3);
    CHECK_EQ_INT(st_export_counts(st, NULL, c), 0);
    CHECK_EQ_INT(c[EXP_QUEUED], 3);
    CHECK_EQ_INT(st_export_claim(st, "PACS", "new-process", 170.0, 60, rows, 4), 3);
    for (int i = 0; i < 3; i++) CHECK_EQ_INT(rows[i].attempts, 0);
    /* The old owner's late report is ignored: it holds nothing any more. */
    st_export_outcome out[4];
    CHECK_EQ_INT(record_all(st, "p2", rows, 3, 1, 171.0, &POL, out), 0);
    CHECK(!out[0].recorded);
    CHECK_EQ_INT(st_export_counts(st, NULL, c), 0);
    CHECK_EQ_INT(c[EXP_SENDING], 3);
    CHECK_EQ_INT(record_all(st, "new-process", rows, 3, 1, 172.0, &POL, out), 3);
    CHECK_EQ_INT(st_export_counts(st, NULL, c), 0);
    CHECK_EQ_INT(c[EXP_DONE], 3);
    st_close(st);
    return 0;
}

static int test_file_kept_until_all_done(void)
{
    st_store *st = open_store();
    CHECK(st != NULL);
    fake_files ff;
    CHECK_EQ_INT(make_fake(&ff), 0);
    const char *dests[] = {"A", "B", "C"};
    CHECK_EQ_INT(st_export_add(st, 1, "1.2.3", ff.f, 1, dests, 3, 100.0), 3);
    st_retry_policy once = {.max_attempts = 1, .base_seconds = 1, .max_seconds = 1};
    st_export r;
    st_export_outcome o;
    /* A confirms, B fails for good, C has not tried yet. */
    CHECK_EQ_INT(st_export_claim(st, "A", "me", 100.0, 60, &r, 1), 1);
    CHECK_EQ_INT(record_all(st, "me", &r, 1, 1, 100.0, &once, &o), 1);
    CHECK_EQ_INT(st_export_release_file(st, ff.path[0]), 0);
    CHECK_EQ_INT(st_export_claim(st, "B", "me", 100.0, 60, &r, 1), 1);
    int64_t b_id = r.id;
    CHECK_EQ_INT(record_all(st, "me", &r, 1, 0, 100.0, &once, &o), 1);
    CHECK(o.final);
    CHECK_EQ_INT(st_export_release_file(st, ff.path[0]), 0);
    CHECK_EQ_INT(st_export_claim(st, "C", "me", 100.0, 60, &r, 1), 1);
    CHECK_EQ_INT(st_export_release_file(st, ff.path[0]), 0); /* sending */
    CHECK_EQ_INT(record_all(st, "me", &r, 1, 1, 101.0, &once, &o), 1);
    /* B is dead: the file still waits for it. */
    CHECK_EQ_INT(st_export_release_file(st, ff.path[0]), 0);
    CHECK(exists(ff.path[0]));
    CHECK_EQ_INT(st_export_requeue(st, b_id, 200.0), 0);
    CHECK_EQ_INT(st_export_claim(st, "B", "me", 200.0, 60, &r, 1), 1);
    CHECK_EQ_INT(record_all(st, "me", &r, 1, 1, 201.0, &once, &o), 1);
    CHECK_EQ_INT(st_export_release_file(st, ff.path[0]), 1);
    CHECK(!exists(ff.path[0]));
    CHECK(exists(ff.path[1]));
    st_close(st);
    return 0;
}

static int test_destinations_independent(void)
{
    st_store *st = open_store();
    CHECK(st != NULL);
    fake_files ff;
    CHECK_EQ_INT(make_fake(&ff), 0);
    const char *dests[] = {"DOWN", "UP"};
    CHECK_EQ_INT(st_export_add(st, 1, "1.2.3", ff.f, 3, dests, 2, 100.0), 6);
    st_export rows[8];
    st_export_outcome out[8];
    /* DOWN holds its rows (sending) and then fails them: UP's rows are due
     * and claimable all the while, and its successes do not touch DOWN's. */
    CHECK_EQ_INT(st_export_claim(st, "DOWN", "x/DOWN", 100.0, 60, rows, 8), 3);
    for (int i = 0; i < 3; i++) CHECK(!strcmp(rows[i].destination, "DOWN"));
    st_export up[8];
    CHECK_EQ_INT(st_export_claim(st, "UP", "x/UP", 100.0, 60, up, 8), 3);
    for (int i = 0; i < 3; i++) CHECK(!strcmp(up[i].destination, "UP"));
    CHECK_EQ_INT(record_all(st, "x/DOWN", rows, 3, 0, 101.0, &POL, out), 3);
    CHECK_EQ_INT(record_all(st, "x/UP", up, 3, 1, 101.0, &POL, out), 3);
    int c[EXP_NSTATES];
    CHECK_EQ_INT(st_export_counts(st, "UP", c), 0);
    CHECK_EQ_INT(c[EXP_DONE], 3);
    CHECK_EQ_INT(st_export_counts(st, "DOWN", c), 0);
    CHECK_EQ_INT(c[EXP_QUEUED], 3);
    /* The back-off is DOWN's alone. */
    double when;
    CHECK_EQ_INT(st_export_next_try(st, "DOWN", &when), 1);
    CHECK(when == 111.0);
    CHECK_EQ_INT(st_export_next_try(st, "UP", &when), 0);
    /* An owner cannot record another destination's rows. */
    CHECK_EQ_INT(st_export_claim(st, "DOWN", "x/DOWN", 111.0, 60, rows, 8), 3);
    CHECK_EQ_INT(record_all(st, "x/UP", rows, 3, 1, 112.0, &POL, out), 0);
    st_close(st);
    return 0;
}

/* Version 1 had no exports table.  An index made by this program, set back
 * to version 1 without the table, must come through the migration with
 * its studies, instances and jobs intact. */
static int test_migration_keeps_data(void)
{
    st_store *st = open_store();
    CHECK(st != NULL);
    ctg_instance in;
    memset(&in, 0, sizeof in);
    snprintf(in.sop_class, sizeof in.sop_class, "1.2.840.10008.5.1.4.1.1.2");
    snprintf(in.study_uid, sizeof in.study_uid, "1.2.9");
    snprintf(in.series_uid, sizeof in.series_uid, "1.2.9.1");
    snprintf(in.sop_uid, sizeof in.sop_uid, "1.2.9.1.1");
    snprintf(in.transfer_syntax, sizeof in.transfer_syntax, "1.2.840.10008.1.2.1");
    snprintf(in.patient_id, sizeof in.patient_id, "P1");
    char path[PATH_MAX];
    int fd;
    CHECK_EQ_INT(st_tmp_create(st, path, &fd), 0);
    CHECK(write(fd, "data", 4) == 4);
    st_ingest_req q = {.inst = &in, .tmp_path = path, .fd = fd, .size = 4,
                       .calling_ae = "UNIT", .now = 100.0, .stable_seconds = 1};
    st_ingest_result res;
    CHECK_EQ_INT(st_ingest(st, &q, &res), 0);
    CHECK_EQ_INT(st_complete_due(st, 200.0), 1);
    st_close(st);

    sqlite3 *db;
    CHECK(sqlite3_open("index.db", &db) == SQLITE_OK);
    CHECK(sqlite3_exec(db, "DROP TABLE exports; PRAGMA user_version=1", NULL, NULL, NULL) ==
          SQLITE_OK);
    sqlite3_close(db);

    st = open_store();
    CHECK(st != NULL);
    CHECK_EQ_INT(st_schema_version(st), ST_SCHEMA_VERSION); /* 1 -> 2 and on to the latest */
    st_counts c;
    CHECK_EQ_INT(st_counts_get(st, &c), 0);
    CHECK_EQ_INT(c.studies, 1);
    CHECK_EQ_INT(c.instances, 1);
    CHECK_EQ_INT(c.jobs[JOB_QUEUED], 1);
    CHECK_EQ_INT(c.exports[EXP_QUEUED], 0);
    st_job job;
    CHECK_EQ_INT(st_job_claim(st, "w", 300.0, 60, &job), 1);
    CHECK(!strcmp(job.study_uid, "1.2.9"));
    /* And the new table works. */
    fake_files ff;
    CHECK_EQ_INT(make_fake(&ff), 0);
    const char *dests[] = {"PACS"};
    CHECK_EQ_INT(st_export_add(st, job.id, job.study_uid, ff.f, 1, dests, 1, 300.0), 1);
    st_close(st);
    /* A read-only handle (the CLI) accepts the migrated index. */
    st_config ro = {.spool_dir = "spool", .db_path = "index.db", .readonly = 1};
    CHECK_EQ_INT(st_open(&ro, &st), 0);
    CHECK_EQ_INT(st_counts_get(st, &c), 0);
    CHECK_EQ_INT(c.exports[EXP_QUEUED], 1);
    st_close(st);
    return 0;
}

/* ---- config ------------------------------------------------------------------- */

static int load_text(const char *text, ctg_config *c, char *err, size_t n)
{
    if (write_file("t.conf", text) < 0) return -100;
    ctg_config_defaults(c);
    return ctg_config_load("t.conf", c, err, n);
}

static int test_config(void)
{
    ctg_config c;
    char err[512] = "";
    CHECK_EQ_INT(load_text("", &c, err, sizeof err), 0);
    CHECK(!strcmp(c.outbox, "var/outbox"));
    CHECK_EQ_INT(c.export_max_attempts, 20);
    CHECK(c.export_retry_base_seconds == 10 && c.export_retry_max_seconds == 900);
    CHECK_EQ_INT(c.n_destinations, 0);

    int r = load_text("[dicom]\nae_title = NODE\n"
                      "[export]\noutbox = /tmp/ob\nmax_attempts = 5\nretry_base_seconds = 2\n"
                      "retry_max_seconds = 60\n"
                      "[destination PACS]\nae_title = PACSAE\nhost = 10.1.2.3\nport = 104\n"
                      "[destination archive-2]\nae_title = ARCH\nhost = arch.example.org\n"
                      "port = 11112\ncalling_ae = CTG_OUT\ntimeout = 7\n",
                      &c, err, sizeof err);
    if (r) fprintf(stderr, "%s\n", err);
    CHECK_EQ_INT(r, 0);
    CHECK(!strcmp(c.outbox, "/tmp/ob"));
    CHECK_EQ_INT(c.export_max_attempts, 5);
    CHECK(c.export_retry_base_seconds == 2 && c.export_retry_max_seconds == 60);
    CHECK_EQ_INT(c.n_destinations, 2);
    const ctg_destination *d = ctg_destination_find(&c, "PACS");
    CHECK(d != NULL);
    CHECK(!strcmp(d->ae_title, "PACSAE") && !strcmp(d->host, "10.1.2.3") && d->port == 104);
    CHECK(!strcmp(d->calling_ae, "NODE")); /* [dicom] ae_title */
    CHECK_EQ_INT(d->timeout, 30);
    CHECK_EQ_INT(d->tls, 0);
    d = ctg_destination_find(&c, "archive-2");
    CHECK(d != NULL);
    CHECK(!strcmp(d->calling_ae, "CTG_OUT") && d->timeout == 7);
    const char *names[CTG_MAX_DEST];
    CHECK_EQ_INT(ctg_config_destination_names(&c, names, CTG_MAX_DEST), 2);
    CHECK(!strcmp(names[0], "PACS") && !strcmp(names[1], "archive-2"));

    static const struct {
        const char *text, *want;
    } bad[] = {
        {"[export]\nmax_attempts = 0\n", "t.conf:2: max_attempts"},
        {"[export]\nretry_base_seconds = soon\n", "t.conf:2: retry_base_seconds"},
        {"[export]\nkeep = 1\n", "t.conf:2: unknown key 'keep' in [export]"},
        {"[destination PACS]\nae_title = X\nhots = h\n", "t.conf:3: unknown key 'hots'"},
        {"[destination bad/name]\nhost = h\n", "t.conf:2: section [destination bad/name]"},
        {"[destination P]\nport = 0\n", "t.conf:2: port must be 1..65535"},
        {"[destination P]\ntls = perhaps\n", "t.conf:2: tls must be yes or no"},
        {"[destination P]\nae_title = A\\B\n", "t.conf:2: ae_title"},
        {"[destination P]\nhost = a b\n", "t.conf:2: host"},
        {"[destination P]\nae_title = A\nhost = h\n", "[destination P] needs ae_title, host and port"},
        {"[destination P]\nae_title = A\nhost = h\nport = 1\ntls = yes\n",
         "tls = yes needs [tls] ca_file"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        r = load_text(bad[i].text, &c, err, sizeof err);
        if (r != CTG_ECONFIG || !strstr(err, bad[i].want))
            fprintf(stderr, "case %zu: got %d '%s', want '%s'\n", i, r, err, bad[i].want);
        CHECK_EQ_INT(r, CTG_ECONFIG);
        CHECK(strstr(err, bad[i].want) != NULL);
    }

    /* Destinations and the retry policy reload; the outbox does not. */
    ctg_config run, fresh;
    CHECK_EQ_INT(load_text("[destination A]\nae_title = A\nhost = h\nport = 1\n", &run, err,
                           sizeof err), 0);
    CHECK_EQ_INT(load_text("[export]\nmax_attempts = 3\n"
                           "[destination B]\nae_title = B\nhost = h\nport = 2\n",
                           &fresh, err, sizeof err), 0);
    CHECK_EQ_INT(ctg_config_apply_reloadable(&run, &fresh), 0);
    CHECK_EQ_INT(run.n_destinations, 1);
    CHECK(!strcmp(run.destinations[0].name, "B"));
    CHECK_EQ_INT(run.export_max_attempts, 3);
    snprintf(fresh.outbox, sizeof fresh.outbox, "elsewhere");
    CHECK_EQ_INT(ctg_config_apply_reloadable(&run, &fresh), 1);
    return 0;
}

/* ---- the exporter against real peers ------------------------------------------- */

/* A TCP port on loopback that nothing listens on right now. */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

/* Starts storescp as AE `ae` on port, writing every received file under a
 * unique name into dir; waits until it answers C-ECHO.  Returns its PID. */
static pid_t start_storescp(const char *ae, int port, const char *dir)
{
    mkdir(dir, 0750);
    char portstr[16], log[128];
    snprintf(portstr, sizeof portstr, "%d", port);
    snprintf(log, sizeof log, "%s.log", dir);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        FILE *f = freopen(log, "a", stdout);
        if (f) dup2(fileno(stdout), 2);
        execlp("storescp", "storescp", "-v", "-aet", ae, "-od", dir, "+uf", portstr,
               (char *)NULL);
        _exit(127);
    }
    dcm_peer p = {.host = "127.0.0.1", .port = port, .called_ae = ae, .calling_ae = "PROBE",
                  .timeout = 2};
    char why[256];
    for (int i = 0; i < 100; i++) {
        if (dcm_echo(&p, why, sizeof why) == 0) return pid;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) return -1;
        usleep(100000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

static void stop_pid(pid_t pid)
{
    if (pid <= 0) return;
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
}

/* The first n phantom CT files (generated once per test), sorted. */
static int phantom_files(char paths[][PATH_MAX], int n)
{
    if (tu_phantom("--seed", "3", "--count", "1", "--matrix", "32", "--out", "ph", NULL) != 0)
        return -1;
    struct dirent **list;
    int k = scandir("ph/case_0000/dicom", &list, NULL, alphasort), got = 0;
    if (k < 0) return -1;
    for (int i = 0; i < k; i++) {
        if (got < n && list[i]->d_name[0] != '.')
            snprintf(paths[got++], PATH_MAX, "ph/case_0000/dicom/%s", list[i]->d_name);
        free(list[i]);
    }
    free(list);
    return got == n ? 0 : -1;
}

static void add_dest(ctg_config *c, const char *name, const char *ae, int port)
{
    ctg_destination *d = &c->destinations[c->n_destinations++];
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", name);
    snprintf(d->ae_title, sizeof d->ae_title, "%s", ae);
    snprintf(d->host, sizeof d->host, "127.0.0.1");
    d->port = port;
    snprintf(d->calling_ae, sizeof d->calling_ae, "CTGLIP");
    d->timeout = 5;
}

/* Waits up to secs for dest to have want rows in state. */
static int wait_state(st_store *st, const char *dest, int state, int want, double secs)
{
    double end = ctg_mono() + secs;
    int c[EXP_NSTATES];
    do {
        if (st_export_counts(st, dest, c) == 0 && c[state] == want) return 0;
        usleep(50000);
    } while (ctg_mono() < end);
    fprintf(stderr, "%s: %d %s, wanted %d (queued %d sending %d done %d dead %d)\n", dest,
            c[state], st_export_state_name(state), want, c[0], c[1], c[2], c[3]);
    return -1;
}

/* Waits up to secs for dir to hold want files.  A delivered file is
 * removed just after its rows are marked done, not in the same step. */
static int wait_files(const char *dir, int want, double secs)
{
    double end = ctg_mono() + secs;
    int n;
    while ((n = count_files(dir)) != want && ctg_mono() < end) usleep(20000);
    if (n != want) fprintf(stderr, "%s: %d file(s), wanted %d\n", dir, n, want);
    return n == want ? 0 : -1;
}

typedef struct max_ctx {
    int max_attempts;
    double max_wait; /* largest next_try - now of a queued row */
} max_ctx;

static int attempts_row(void *ud, int ncol, const char **names, const char **v)
{
    max_ctx *m = ud;
    (void)names;
    if (ncol < 5 || !v[3] || !v[4]) return 0;
    if (atoi(v[3]) > m->max_attempts) m->max_attempts = atoi(v[3]);
    double w = atof(v[4]) - ctg_now();
    if (w > m->max_wait) m->max_wait = w;
    return 0;
}

/* What the job worker does with a finished report: each file linked into
 * the outbox (here under its SOP Instance UID), one export per configured
 * destination, a wake-up.  Returns the number of rows added. */
static int queue_export(st_store *st, ctg_exporter *ex, const ctg_config *cfg, int64_t job,
                        char files[][PATH_MAX], int n)
{
    st_export_file ef[4];
    ctg_instance in[4];
    char paths[4][PATH_MAX], w[256];
    const char *names[CTG_MAX_DEST];
    int nd = ctg_config_destination_names(cfg, names, CTG_MAX_DEST);
    if (n > 4) return -1;
    mkdir(cfg->outbox, 0750);
    for (int i = 0; i < n; i++) {
        if (dcm_read_instance(files[i], &in[i], w, sizeof w) < 0) return -1;
        if (snprintf(paths[i], sizeof paths[i], "%s/%s.dcm", cfg->outbox, in[i].sop_uid) >=
            (int)sizeof paths[i])
            return -1;
        if (link(files[i], paths[i]) != 0) return -1;
        ef[i].path = paths[i];
        ef[i].sop_class = in[i].sop_class;
        ef[i].sop_uid = in[i].sop_uid;
    }
    int r = st_export_add(st, job, "1.2.3.4", ef, n, names, nd, ctg_now());
    ctg_exporter_wake(ex);
    return r;
}

/* Two destinations: UP receives at once; DOWN (nothing listening) retries
 * with back-off, and once a peer listens there it receives each file
 * exactly once.  The outbox files go only after both confirmed them. */
static int test_exporter_up_and_down(void)
{
    char files[3][PATH_MAX];
    CHECK_EQ_INT(phantom_files(files, 3), 0);
    st_store *st = open_store();
    CHECK(st != NULL);
    int port_up = free_port(), port_down = free_port();
    CHECK(port_up > 0 && port_down > 0 && port_up != port_down);
    pid_t up = start_storescp("UPAE", port_up, "rx_up");
    CHECK(up > 0);

    ctg_config cfg;
    ctg_config_defaults(&cfg);
    snprintf(cfg.outbox, sizeof cfg.outbox, "outbox");
    cfg.export_max_attempts = 20;
    cfg.export_retry_base_seconds = 1;
    cfg.export_retry_max_seconds = 2;
    add_dest(&cfg, "UP", "UPAE", port_up);
    add_dest(&cfg, "DOWN", "DOWNAE", port_down);
    ctg_exporter *ex = NULL;
    CHECK_EQ_INT(ctg_exporter_start(&cfg, st, &ex), 0);

    double t0 = ctg_mono();
    CHECK_EQ_INT(queue_export(st, ex, &cfg, 42, files, 3), 6);
    CHECK_EQ_INT(count_files("outbox"), 3);
    /* The caller's files stay where they were. */
    for (int i = 0; i < 3; i++) CHECK(exists(files[i]));
    /* UP gets everything at once, whatever DOWN does. */
    CHECK_EQ_INT(wait_state(st, "UP", EXP_DONE, 3, 10), 0);
    CHECK(ctg_mono() - t0 < 5);
    CHECK_EQ_INT(count_files("rx_up"), 3);
    /* DOWN has not confirmed: the outbox keeps the files. */
    CHECK_EQ_INT(count_files("outbox"), 3);

    /* Let DOWN fail a few times: attempts grow, waits stay within the cap. */
    usleep(3500000);
    max_ctx m = {0, 0};
    CHECK_EQ_INT(st_export_list(st, EXP_QUEUED, "DOWN", attempts_row, &m), 0);
    fprintf(stderr, "DOWN after 3.5 s: %d attempt(s), next try in %.2f s\n", m.max_attempts,
            m.max_wait);
    CHECK(m.max_attempts >= 2 && m.max_attempts <= 5);
    CHECK(m.max_wait <= 2.0 + 0.01);
    int c[EXP_NSTATES];
    CHECK_EQ_INT(st_export_counts(st, "DOWN", c), 0);
    CHECK_EQ_INT(c[EXP_DONE] + c[EXP_DEAD], 0);
    CHECK_EQ_INT(count_files("outbox"), 3);

    /* DOWN comes up: each file arrives once, then the outbox is empty. */
    pid_t down = start_storescp("DOWNAE", port_down, "rx_down");
    CHECK(down > 0);
    CHECK_EQ_INT(wait_state(st, "DOWN", EXP_DONE, 3, 15), 0);
    CHECK_EQ_INT(wait_files("outbox", 0, 5), 0);
    usleep(300000);
    CHECK_EQ_INT(count_files("rx_down"), 3);
    CHECK_EQ_INT(count_files("rx_up"), 3);
    ctg_exporter_stop(ex);
    stop_pid(up);
    stop_pid(down);
    st_close(st);
    return 0;
}

/* max_attempts reached -> dead; `ctglip requeue dead DEST` (another
 * process, as an admin would) -> delivered once the peer is back. */
static int test_exporter_dead_and_requeue(void)
{
    char files[2][PATH_MAX];
    CHECK_EQ_INT(phantom_files(files, 2), 0);
    st_store *st = open_store();
    CHECK(st != NULL);
    int port = free_port();
    CHECK(port > 0);

    ctg_config cfg;
    ctg_config_defaults(&cfg);
    snprintf(cfg.outbox, sizeof cfg.outbox, "outbox");
    snprintf(cfg.index, sizeof cfg.index, "index.db");
    cfg.export_max_attempts = 3;
    cfg.export_retry_base_seconds = 0;
    cfg.export_retry_max_seconds = 0;
    add_dest(&cfg, "LATE", "LATEAE", port);
    ctg_exporter *ex = NULL;
    CHECK_EQ_INT(ctg_exporter_start(&cfg, st, &ex), 0);
    CHECK_EQ_INT(queue_export(st, ex, &cfg, 1, files, 2), 2);
    CHECK_EQ_INT(wait_state(st, "LATE", EXP_DEAD, 2, 15), 0);
    CHECK_EQ_INT(count_files("outbox"), 2); /* dead exports keep their files */

    pid_t late = start_storescp("LATEAE", port, "rx_late");
    CHECK(late > 0);
    /* Still dead: nothing retries a dead export by itself. */
    usleep(1000000);
    CHECK_EQ_INT(count_files("rx_late"), 0);

    /* The admin CLI, on a config that names this index. */
    char conf[1024], cmd[PATH_MAX + 128];
    snprintf(conf, sizeof conf,
             "[store]\nspool = spool\nindex = index.db\n[export]\noutbox = outbox\n"
             "[destination LATE]\nae_title = LATEAE\nhost = 127.0.0.1\nport = %d\n",
             port);
    CHECK_EQ_INT(write_file("cli.conf", conf), 0);
    const char *b = getenv("CTG_BUILD");
    CHECK(b != NULL);
    snprintf(cmd, sizeof cmd, "%s/ctglip -c cli.conf exports dead > exports.out 2>&1", b);
    CHECK_EQ_INT(system(cmd), 0);
    char *out = tu_slurp("exports.out", NULL);
    CHECK(out != NULL);
    fputs(out, stderr);
    CHECK(strstr(out, "LATE") && strstr(out, "dead") && strstr(out, "outbox/"));
    free(out);
    snprintf(cmd, sizeof cmd, "%s/ctglip -c cli.conf requeue dead LATE > requeue.out 2>&1", b);
    CHECK_EQ_INT(system(cmd), 0);
    out = tu_slurp("requeue.out", NULL);
    CHECK(out != NULL);
    fputs(out, stderr);
    CHECK(strstr(out, "2 dead export(s) of LATE queued again") != NULL);
    free(out);
    /* The daemon notices within its poll interval. */
    CHECK_EQ_INT(wait_state(st, "LATE", EXP_DONE, 2, 15), 0);
    CHECK_EQ_INT(wait_files("outbox", 0, 5), 0);
    usleep(300000);
    CHECK_EQ_INT(count_files("rx_late"), 2);
    /* `requeue export ID` of a done export is refused. */
    snprintf(cmd, sizeof cmd, "%s/ctglip -c cli.conf requeue export 1 > one.out 2>&1", b);
    CHECK(system(cmd) != 0);
    ctg_exporter_stop(ex);
    stop_pid(late);
    st_close(st);
    return 0;
}

/* Reload: a removed destination's exports stay queued and its thread
 * ends; a new destination gets the exports added after the reload; the
 * removed one, configured again, gets its old exports. */
static int test_exporter_reload(void)
{
    char files[2][PATH_MAX];
    CHECK_EQ_INT(phantom_files(files, 2), 0);
    st_store *st = open_store();
    CHECK(st != NULL);
    int pa = free_port(), pb = free_port();
    CHECK(pa > 0 && pb > 0 && pa != pb);
    pid_t b = start_storescp("BAE", pb, "rx_b");
    CHECK(b > 0);

    ctg_config cfg;
    ctg_config_defaults(&cfg);
    snprintf(cfg.outbox, sizeof cfg.outbox, "outbox");
    cfg.export_retry_base_seconds = 30; /* A fails once and waits */
    cfg.export_retry_max_seconds = 30;
    add_dest(&cfg, "A", "AAE", pa); /* nothing listens yet */
    ctg_exporter *ex = NULL;
    CHECK_EQ_INT(ctg_exporter_start(&cfg, st, &ex), 0);
    CHECK_EQ_INT(queue_export(st, ex, &cfg, 1, files, 1), 1);
    double end = ctg_mono() + 10;
    max_ctx m = {0, 0};
    while (m.max_attempts < 1 && ctg_mono() < end) {
        usleep(50000);
        st_export_list(st, EXP_QUEUED, "A", attempts_row, &m);
    }
    CHECK_EQ_INT(m.max_attempts, 1);

    /* A goes, B comes. */
    ctg_config c2 = cfg;
    c2.n_destinations = 0;
    add_dest(&c2, "B", "BAE", pb);
    ctg_exporter_reload(ex, &c2);
    CHECK_EQ_INT(queue_export(st, ex, &c2, 2, files + 1, 1), 1);
    CHECK_EQ_INT(wait_state(st, "B", EXP_DONE, 1, 10), 0);
    CHECK_EQ_INT(count_files("rx_b"), 1);
    int c[EXP_NSTATES];
    CHECK_EQ_INT(st_export_counts(st, "A", c), 0);
    CHECK_EQ_INT(c[EXP_QUEUED], 1);
    CHECK_EQ_INT(count_files("outbox"), 1); /* A's file waits */

    /* A is back, now listening; its row is requeued to skip the back-off. */
    pid_t a = start_storescp("AAE", pa, "rx_a");
    CHECK(a > 0);
    ctg_config c3 = c2;
    add_dest(&c3, "A", "AAE", pa);
    ctg_exporter_reload(ex, &c3);
    CHECK_EQ_INT(st_export_requeue_dead(st, "A", ctg_now()), 0); /* it is queued, not dead */
    CHECK_EQ_INT(state_of(st, 1), EXP_QUEUED);                   /* the first row: A's */
    CHECK_EQ_INT(st_export_requeue(st, 1, ctg_now()), 0);
    ctg_exporter_wake(ex);
    CHECK_EQ_INT(wait_state(st, "A", EXP_DONE, 1, 10), 0);
    CHECK_EQ_INT(count_files("rx_a"), 1);
    CHECK_EQ_INT(wait_files("outbox", 0, 5), 0);
    ctg_exporter_stop(ex);
    stop_pid(a);
    stop_pid(b);
    st_close(st);
    return 0;
}

const test_case outbox_tests[] = {
    {"outbox_add_claim_done", test_add_claim_done},
    {"outbox_backoff_and_dead", test_backoff_and_dead},
    {"outbox_requeue", test_requeue},
    {"outbox_crash_recovery", test_crash_recovery},
    {"outbox_file_kept_until_all_done", test_file_kept_until_all_done},
    {"outbox_destinations_independent", test_destinations_independent},
    {"outbox_migration_keeps_data", test_migration_keeps_data},
    {"outbox_config", test_config},
    {"outbox_exporter_up_and_down", test_exporter_up_and_down},
    {"outbox_exporter_dead_and_requeue", test_exporter_dead_and_requeue},
    {"outbox_exporter_reload", test_exporter_reload},
    {NULL, NULL},
};
