/*
 * test_store.c - unit tests of the spool and index: UID rules, durable
 * ingest, duplicate policy, schema versioning, temp-file clean-up.
 */
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/store.h"
#include "tests.h"

static st_store *open_store(int owner)
{
    st_config c = {.spool_dir = "spool", .db_path = "index.db", .owner = owner};
    st_store *st = NULL;
    if (st_open(&c, &st) < 0) return NULL;
    return st;
}

static void make_inst(ctg_instance *in, const char *study, const char *series, const char *sop)
{
    memset(in, 0, sizeof *in);
    snprintf(in->sop_class, sizeof in->sop_class, "1.2.840.10008.5.1.4.1.1.2");
    snprintf(in->sop_uid, sizeof in->sop_uid, "%s", sop);
    snprintf(in->study_uid, sizeof in->study_uid, "%s", study);
    snprintf(in->series_uid, sizeof in->series_uid, "%s", series);
    snprintf(in->patient_id, sizeof in->patient_id, "P1");
    snprintf(in->patient_name, sizeof in->patient_name, "Doe^Jane");
    snprintf(in->modality, sizeof in->modality, "CT");
    snprintf(in->transfer_syntax, sizeof in->transfer_syntax, "1.2.840.10008.1.2.1");
    in->rows = in->cols = 512;
    in->frames = 1;
    in->has_orientation = 1;
    double o[6] = {1, 0, 0, 0, 1, 0};
    memcpy(in->orientation, o, sizeof o);
}

/* Writes `content` to a fresh temp file and ingests it. */
static int ingest(st_store *st, const ctg_instance *in, const char *content, double now,
                  st_ingest_result *res)
{
    char path[PATH_MAX];
    int fd;
    int r = st_tmp_create(st, path, &fd);
    if (r < 0) return r;
    size_t n = strlen(content);
    if (write(fd, content, n) != (ssize_t)n) return -1;
    st_ingest_req q = {.inst = in, .tmp_path = path, .fd = fd, .data_offset = 0, .size = n,
                       .calling_ae = "UNIT", .now = now, .stable_seconds = 30};
    return st_ingest(st, &q, res);
}

/* The integer a shell command prints, or -1. */
static int popen_int(const char *cmd)
{
    FILE *p = popen(cmd, "r");
    int n = -1;
    if (p) {
        if (fscanf(p, "%d", &n) != 1) n = -1;
        pclose(p);
    }
    return n;
}

static int count_files(const char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "find %s -type f | wc -l", dir);
    return popen_int(cmd);
}

static int test_uid_rules(void)
{
    CHECK(st_uid_valid("1.2.840.10008.5.1.4.1.1.2"));
    CHECK(st_uid_valid("2.25.231932228033936708469927392542703984207"));
    CHECK(st_uid_valid("1"));
    CHECK(!st_uid_valid(""));
    CHECK(!st_uid_valid(NULL));
    CHECK(!st_uid_valid("1.2/3"));
    CHECK(!st_uid_valid("../etc"));
    CHECK(!st_uid_valid("1..2"));
    CHECK(!st_uid_valid(".1.2"));
    CHECK(!st_uid_valid("1.2."));
    CHECK(!st_uid_valid("1.2.3a"));
    CHECK(!st_uid_valid("1.2 .3"));
    char long_uid[80];
    memset(long_uid, '1', 65);
    long_uid[65] = 0;
    CHECK(!st_uid_valid(long_uid));
    long_uid[64] = 0;
    CHECK(st_uid_valid(long_uid));
    return 0;
}

static int test_ingest_paths_and_index(void)
{
    st_store *st = open_store(1);
    CHECK(st != NULL);
    ctg_instance in;
    make_inst(&in, "1.2.3", "1.2.3.4", "1.2.3.4.5");
    st_ingest_result res;
    CHECK_EQ_INT(ingest(st, &in, "hello", 1000.0, &res), 0);
    CHECK_EQ_INT(res.outcome, ST_NEW);
    CHECK_EQ_INT(res.version, 1);
    CHECK(!strcmp(res.path, "spool/1.2.3/1.2.3.4/1.2.3.4.5.dcm"));
    struct stat sb;
    CHECK(stat(res.path, &sb) == 0 && sb.st_size == 5);
    CHECK_EQ_INT(count_files("spool/.tmp"), 0);
    st_counts c;
    CHECK_EQ_INT(st_counts_get(st, &c), 0);
    CHECK_EQ_INT(c.patients, 1);
    CHECK_EQ_INT(c.studies, 1);
    CHECK_EQ_INT(c.series, 1);
    CHECK_EQ_INT(c.instances, 1);
    CHECK_EQ_INT(c.studies_pending, 1);
    double d;
    CHECK_EQ_INT(st_next_deadline(st, &d), 1);
    CHECK(d == 1030.0);
    st_close(st);
    return 0;
}

static int test_bad_uids_leave_nothing(void)
{
    st_store *st = open_store(1);
    CHECK(st != NULL);
    const char *bad[][3] = {
        {"1.2/../..", "1.2", "1.2.3"},
        {"1.2", "..", "1.2.3"},
        {"1.2", "1.3", "1/2"},
        {"", "1.3", "1.2"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ctg_instance in;
        make_inst(&in, bad[i][0], bad[i][1], bad[i][2]);
        st_ingest_result res;
        CHECK_EQ_INT(ingest(st, &in, "x", 1.0, &res), CTG_EBADUID);
    }
    CHECK_EQ_INT(count_files("spool"), 0);
    st_counts c;
    CHECK_EQ_INT(st_counts_get(st, &c), 0);
    CHECK_EQ_INT(c.instances, 0);
    CHECK_EQ_INT(c.studies, 0);
    st_close(st);
    return 0;
}

static int test_duplicates(void)
{
    st_store *st = open_store(1);
    CHECK(st != NULL);
    ctg_instance in;
    make_inst(&in, "1.2.3", "1.2.3.4", "1.2.3.4.5");
    st_ingest_result res;
    CHECK_EQ_INT(ingest(st, &in, "same bytes", 1.0, &res), 0);
    CHECK_EQ_INT(res.outcome, ST_NEW);
    /* Identical: acknowledged, no second copy, the study is not touched. */
    CHECK_EQ_INT(st_complete_due(st, 100.0), 1);
    CHECK_EQ_INT(ingest(st, &in, "same bytes", 200.0, &res), 0);
    CHECK_EQ_INT(res.outcome, ST_DUPLICATE);
    CHECK_EQ_INT(count_files("spool/1.2.3"), 1);
    st_counts c;
    CHECK_EQ_INT(st_counts_get(st, &c), 0);
    CHECK_EQ_INT(c.studies_pending, 0);
    /* Different bytes: kept as version 2, the old one no longer current. */
    CHECK_EQ_INT(ingest(st, &in, "other bytes", 300.0, &res), 0);
    CHECK_EQ_INT(res.outcome, ST_NEW_VERSION);
    CHECK_EQ_INT(res.version, 2);
    CHECK(!strcmp(res.path, "spool/1.2.3/1.2.3.4/1.2.3.4.5.v2.dcm"));
    CHECK_EQ_INT(count_files("spool/1.2.3"), 2);
    CHECK_EQ_INT(st_counts_get(st, &c), 0);
    CHECK_EQ_INT(c.instances, 1);
    CHECK_EQ_INT(c.studies_pending, 1);
    /* Re-sending version 1's bytes again is a duplicate of version 1. */
    CHECK_EQ_INT(ingest(st, &in, "same bytes", 400.0, &res), 0);
    CHECK_EQ_INT(res.outcome, ST_DUPLICATE);
    st_close(st);
    return 0;
}

static int test_schema_version(void)
{
    st_store *st = open_store(1);
    CHECK(st != NULL);
    CHECK_EQ_INT(st_schema_version(st), ST_SCHEMA_VERSION);
    st_close(st);
    /* Re-opening an up-to-date index migrates nothing and keeps data. */
    st = open_store(1);
    CHECK(st != NULL);
    CHECK_EQ_INT(st_schema_version(st), ST_SCHEMA_VERSION);
    st_close(st);
    /* An index from a newer program is refused, not damaged. */
    sqlite3 *db;
    CHECK(sqlite3_open("index.db", &db) == SQLITE_OK);
    CHECK(sqlite3_exec(db, "PRAGMA user_version=99", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    st_config cfg = {.spool_dir = "spool", .db_path = "index.db", .owner = 1};
    CHECK_EQ_INT(st_open(&cfg, &st), CTG_ESCHEMA);
    /* WAL and synchronous=FULL are what durability rests on. */
    CHECK(sqlite3_open("index.db", &db) == SQLITE_OK);
    CHECK(sqlite3_exec(db, "PRAGMA user_version=1", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    st = open_store(1);
    CHECK(st != NULL);
    st_close(st);
    FILE *p = popen("sqlite3 index.db 'PRAGMA journal_mode'", "r");
    char mode[32] = "";
    if (p) {
        if (!fgets(mode, sizeof mode, p)) mode[0] = 0;
        pclose(p);
    }
    CHECK(!strncmp(mode, "wal", 3));
    return 0;
}

static int test_readonly_and_tmp_cleanup(void)
{
    st_store *st = open_store(1);
    CHECK(st != NULL);
    char path[PATH_MAX];
    int fd;
    CHECK_EQ_INT(st_tmp_create(st, path, &fd), 0);
    close(fd);
    st_close(st);
    CHECK_EQ_INT(count_files("spool/.tmp"), 1);
    /* A non-owner (the CLI) must not touch the daemon's temp files. */
    st = open_store(0);
    CHECK(st != NULL);
    st_close(st);
    CHECK_EQ_INT(count_files("spool/.tmp"), 1);
    st = open_store(1);
    CHECK(st != NULL);
    st_close(st);
    CHECK_EQ_INT(count_files("spool/.tmp"), 0);
    /* A read-only handle cannot ingest. */
    st_config c = {.spool_dir = "spool", .db_path = "index.db", .readonly = 1};
    CHECK_EQ_INT(st_open(&c, &st), 0);
    ctg_instance in;
    make_inst(&in, "1.2", "1.2.3", "1.2.3.4");
    st_ingest_result res;
    CHECK(ingest(st, &in, "x", 1.0, &res) < 0);
    st_close(st);
    st_close(NULL);
    return 0;
}

static int test_space_guard(void)
{
    st_config c = {.spool_dir = "spool", .db_path = "index.db", .owner = 1,
                   .reserve_bytes = 1ull << 60};
    st_store *st;
    CHECK_EQ_INT(st_open(&c, &st), 0);
    uint64_t avail = 0;
    CHECK_EQ_INT(st_free_bytes(st, &avail), 0);
    CHECK(avail > 0);
    CHECK(!st_space_ok(st, 0));
    st_close(st);
    c.reserve_bytes = 0;
    CHECK_EQ_INT(st_open(&c, &st), 0);
    CHECK(st_space_ok(st, 1000));
    CHECK(!st_space_ok(st, avail * 2 + 1));
    st_close(st);
    return 0;
}

/* Eight threads ingest at once: 8 x 40 distinct instances, plus all of
 * them sending their own content for one shared SOP Instance UID.  Group
 * commit and the pending-UID guard must give every distinct instance one
 * row and one file, and the shared UID eight distinct versions 1..8. */
typedef struct conc_arg {
    st_store *st;
    int t;
    int failures;
} conc_arg;

static void *conc_worker(void *p)
{
    conc_arg *a = p;
    char sop[64], content[64];
    st_ingest_result res;
    for (int i = 0; i < 40; i++) {
        ctg_instance in;
        snprintf(sop, sizeof sop, "1.2.9.%d.%d", a->t, i);
        make_inst(&in, "1.2.9", a->t % 2 ? "1.2.9.1" : "1.2.9.2", sop);
        snprintf(content, sizeof content, "thread %d instance %d", a->t, i);
        if (ingest(a->st, &in, content, 1000.0 + i, &res) != 0 || res.outcome != ST_NEW)
            a->failures++;
        if (i == 20) {
            make_inst(&in, "1.2.9", "1.2.9.1", "1.2.9.777");
            snprintf(content, sizeof content, "shared, version from thread %d", a->t);
            if (ingest(a->st, &in, content, 2000.0, &res) != 0 || res.version < 1)
                a->failures++;
        }
    }
    return NULL;
}

static int count_rows(const char *sql)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "sqlite3 index.db \"%s\"", sql);
    return popen_int(cmd);
}

static int test_concurrent_ingest(void)
{
    st_store *st = open_store(1);
    CHECK(st != NULL);
    pthread_t th[8];
    conc_arg args[8];
    for (int t = 0; t < 8; t++) {
        args[t] = (conc_arg){st, t, 0};
        CHECK(pthread_create(&th[t], NULL, conc_worker, &args[t]) == 0);
    }
    for (int t = 0; t < 8; t++) {
        pthread_join(th[t], NULL);
        CHECK_EQ_INT(args[t].failures, 0);
    }
    st_close(st);
    CHECK_EQ_INT(count_rows("SELECT count(*) FROM instances WHERE sop_uid != '1.2.9.777'"), 320);
    CHECK_EQ_INT(count_rows("SELECT count(DISTINCT version) FROM instances WHERE sop_uid = '1.2.9.777'"), 8);
    CHECK_EQ_INT(count_rows("SELECT max(version) FROM instances WHERE sop_uid = '1.2.9.777'"), 8);
    CHECK_EQ_INT(count_rows("SELECT count(*) FROM instances WHERE sop_uid = '1.2.9.777' AND current=1"), 1);
    CHECK_EQ_INT(count_rows("SELECT count(*) FROM studies"), 1);
    CHECK_EQ_INT(count_rows("SELECT rx_gen FROM studies"), 328);
    CHECK_EQ_INT(count_files("spool/1.2.9"), 328);
    CHECK_EQ_INT(count_files("spool/.tmp"), 0);
    return 0;
}

const test_case store_tests[] = {
    {"store_concurrent_ingest", test_concurrent_ingest},
    {"store_uid_rules", test_uid_rules},
    {"store_ingest_paths_and_index", test_ingest_paths_and_index},
    {"store_bad_uids_leave_nothing", test_bad_uids_leave_nothing},
    {"store_duplicate_policy", test_duplicates},
    {"store_schema_version", test_schema_version},
    {"store_readonly_and_tmp_cleanup", test_readonly_and_tmp_cleanup},
    {"store_space_guard", test_space_guard},
    {NULL, NULL},
};
