/*
 * db.c - opening the index, its versioned schema and migrations, and the
 * read side used by the CLI.
 *
 * The index runs in WAL mode with synchronous=FULL, so a committed
 * transaction survives a power loss.  The schema version lives in
 * PRAGMA user_version; migrations[i] takes an index from version i to i+1 and
 * runs inside one transaction, so an interrupted migration leaves the old
 * schema in place.
 */
#include "store_int.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const migrations[] = {
    /* 0 -> 1: the first schema. */
    "CREATE TABLE patients("
    "  id INTEGER PRIMARY KEY,"
    "  patient_id TEXT NOT NULL,"
    "  patient_name TEXT NOT NULL,"
    "  birth_date TEXT, sex TEXT,"
    "  UNIQUE(patient_id, patient_name));"
    "CREATE TABLE studies("
    "  id INTEGER PRIMARY KEY,"
    "  study_uid TEXT NOT NULL UNIQUE,"
    "  patient_ref INTEGER NOT NULL REFERENCES patients(id),"
    "  study_date TEXT, study_time TEXT, accession TEXT, description TEXT,"
    "  calling_ae TEXT,"
    "  first_received REAL NOT NULL,"
    "  last_received REAL NOT NULL,"
    "  stable_seconds INTEGER NOT NULL,"
    "  deadline REAL NOT NULL,"
    /* rx_gen counts arrivals of new content; queued_gen is the rx_gen that
     * the newest job covers.  rx_gen > queued_gen means 'pending'. */
    "  rx_gen INTEGER NOT NULL DEFAULT 0,"
    "  queued_gen INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX studies_pending ON studies(deadline) WHERE rx_gen > queued_gen;"
    "CREATE TABLE series("
    "  id INTEGER PRIMARY KEY,"
    "  series_uid TEXT NOT NULL UNIQUE,"
    "  study_ref INTEGER NOT NULL REFERENCES studies(id),"
    "  modality TEXT, series_number INTEGER, description TEXT,"
    "  body_part TEXT, frame_of_ref_uid TEXT);"
    "CREATE INDEX series_study ON series(study_ref);"
    "CREATE TABLE instances("
    "  id INTEGER PRIMARY KEY,"
    "  sop_uid TEXT NOT NULL,"
    "  version INTEGER NOT NULL,"
    "  current INTEGER NOT NULL DEFAULT 1,"
    "  series_ref INTEGER NOT NULL REFERENCES series(id),"
    "  sop_class TEXT NOT NULL,"
    "  instance_number INTEGER, image_type TEXT,"
    "  orientation TEXT, position TEXT, pixel_spacing TEXT,"
    "  slice_thickness REAL, rows INTEGER, cols INTEGER, frames INTEGER,"
    "  transfer_syntax TEXT NOT NULL,"
    "  path TEXT NOT NULL,"
    "  size INTEGER NOT NULL,"
    "  data_offset INTEGER NOT NULL,"
    "  received REAL NOT NULL,"
    "  calling_ae TEXT,"
    "  UNIQUE(sop_uid, version));"
    "CREATE INDEX instances_series ON instances(series_ref);"
    "CREATE TABLE jobs("
    "  id INTEGER PRIMARY KEY,"
    "  study_ref INTEGER NOT NULL REFERENCES studies(id),"
    "  study_uid TEXT NOT NULL,"
    "  generation INTEGER NOT NULL,"
    "  state INTEGER NOT NULL,"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  not_before REAL NOT NULL,"
    "  lease_owner TEXT, lease_expires REAL,"
    "  reason TEXT,"
    "  created REAL NOT NULL, updated REAL NOT NULL,"
    "  supersedes INTEGER, superseded_by INTEGER);"
    "CREATE INDEX jobs_state ON jobs(state, not_before);"
    "CREATE INDEX jobs_study ON jobs(study_ref);",

    /* 1 -> 2: the export outbox, one row per (file, destination).  state:
     * 0 queued, 1 sending, 2 done, 3 dead (EXP_*).  IF NOT EXISTS lets the
     * step run again on an index whose version number was set back by hand
     * (tests do that). */
    "CREATE TABLE IF NOT EXISTS exports("
    "  id INTEGER PRIMARY KEY,"
    "  job_id INTEGER NOT NULL DEFAULT 0,"
    "  study_uid TEXT NOT NULL,"
    "  path TEXT NOT NULL,"
    "  sop_class TEXT NOT NULL,"
    "  sop_uid TEXT NOT NULL,"
    "  destination TEXT NOT NULL,"
    "  state INTEGER NOT NULL DEFAULT 0,"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  next_try REAL NOT NULL,"
    "  lease_owner TEXT, lease_expires REAL,"
    "  last_status INTEGER, last_error TEXT,"
    "  created REAL NOT NULL, updated REAL NOT NULL, done_at REAL);"
    "CREATE INDEX IF NOT EXISTS exports_due ON exports(destination, state, next_try);"
    "CREATE INDEX IF NOT EXISTS exports_path ON exports(path);",

    /* 2 -> 3: radiology reports received (reports.c): from report SRs that
     * arrive by C-STORE and from text files in the drop folder.  study_uid
     * is NULL while a report known only by its accession number waits for
     * its study; source_key makes adding the same report twice a no-op.
     * final: SR verified and complete, or a file (final by convention).
     * linked_at: when an accession was resolved to a study. */
    "CREATE TABLE IF NOT EXISTS reports("
    "  id INTEGER PRIMARY KEY,"
    "  study_uid TEXT,"
    "  accession TEXT,"
    "  source TEXT NOT NULL CHECK(source IN ('sr','file')),"
    "  source_ref TEXT NOT NULL,"
    "  source_key TEXT NOT NULL UNIQUE,"
    "  text TEXT NOT NULL,"
    "  completion_flag TEXT, verification_flag TEXT,"
    "  observed TEXT, author TEXT,"
    "  final INTEGER NOT NULL,"
    "  received REAL NOT NULL,"
    "  linked_at REAL);"
    "CREATE INDEX IF NOT EXISTS reports_study ON reports(study_uid);"
    "CREATE INDEX IF NOT EXISTS reports_unlinked ON reports(accession) WHERE study_uid IS NULL;"
    "CREATE INDEX IF NOT EXISTS reports_unseen ON reports(study_uid) WHERE linked_at IS NULL;"
    "CREATE INDEX IF NOT EXISTS reports_received ON reports(received);"
    /* Accession lookups when linking reports (studies.accession had none). */
    "CREATE INDEX IF NOT EXISTS studies_accession ON studies(accession);",
};
#define N_MIGRATIONS ((int)(sizeof migrations / sizeof migrations[0]))

int st__dberr(st_store *st, const char *what)
{
    log_error("store: %s: %s", what, sqlite3_errmsg(st->db));
    return CTG_EDB;
}

int st__exec(st_store *st, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(st->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        log_error("store: %.60s...: %s", sql, msg ? msg : "?");
        sqlite3_free(msg);
        return CTG_EDB;
    }
    return 0;
}

int st__prepare(st_store *st, const char *sql, sqlite3_stmt **stmt)
{
    if (sqlite3_prepare_v2(st->db, sql, -1, stmt, NULL) != SQLITE_OK)
        return st__dberr(st, "prepare");
    return 0;
}

int st__cached(st_store *st, const char *sql, sqlite3_stmt **stmt)
{
    for (int i = 0; i < st->ncache; i++) {
        if (st->cache[i].sql == sql) {
            *stmt = st->cache[i].stmt;
            return 0;
        }
    }
    if (sqlite3_prepare_v3(st->db, sql, -1, SQLITE_PREPARE_PERSISTENT, stmt, NULL) != SQLITE_OK)
        return st__dberr(st, "prepare");
    if (st->ncache < (int)(sizeof st->cache / sizeof st->cache[0])) {
        st->cache[st->ncache].sql = sql;
        st->cache[st->ncache].stmt = *stmt;
        st->ncache++;
    }
    return 0;
}

void st__release(sqlite3_stmt *stmt)
{
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
}

int st__run(st_store *st, const char *sql)
{
    sqlite3_stmt *s;
    if (st__cached(st, sql, &s) < 0) return CTG_EDB;
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    if (rc == SQLITE_DONE || rc == SQLITE_ROW) return 0;
    log_error("store: %s: %s", sql, sqlite3_errmsg(st->db));
    return CTG_EDB;
}

static int get_user_version(st_store *st, int *v)
{
    sqlite3_stmt *s;
    if (st__prepare(st, "PRAGMA user_version", &s) < 0) return CTG_EDB;
    int r = CTG_EDB;
    if (sqlite3_step(s) == SQLITE_ROW) {
        *v = sqlite3_column_int(s, 0);
        r = 0;
    }
    sqlite3_finalize(s);
    return r;
}

static int migrate(st_store *st)
{
    int v;
    if (get_user_version(st, &v) < 0) return CTG_EDB;
    if (v > ST_SCHEMA_VERSION) {
        log_error("store: index schema version %d is newer than %d", v,
                  ST_SCHEMA_VERSION);
        return CTG_ESCHEMA;
    }
    for (; v < N_MIGRATIONS; v++) {
        char pragma[64];
        snprintf(pragma, sizeof pragma, "PRAGMA user_version=%d", v + 1);
        if (st__exec(st, "BEGIN IMMEDIATE") < 0) return CTG_EDB;
        if (st__exec(st, migrations[v]) < 0 || st__exec(st, pragma) < 0) {
            st__exec(st, "ROLLBACK");
            return CTG_EDB;
        }
        if (st__exec(st, "COMMIT") < 0) return CTG_EDB;
        log_info("store: index migrated to schema version %d", v + 1);
    }
    return 0;
}

/* Temp files of an interrupted receive were never acknowledged: remove. */
static void clean_tmp(st_store *st)
{
    DIR *d = opendir(st->tmpdir);
    if (!d) return;
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        if (unlinkat(dirfd(d), e->d_name, 0) == 0) n++;
    }
    closedir(d);
    if (n) {
        ctg_fsync_dir(st->tmpdir);
        log_info("store: removed %d unfinished temp file(s) from %s", n,
                 st->tmpdir);
    }
}

int st_open(const st_config *cfg, st_store **out)
{
    int r = CTG_ENOMEM;
    st_store *st = calloc(1, sizeof *st);
    if (!st) return CTG_ENOMEM;
    pthread_mutex_init(&st->lock, NULL);
    pthread_cond_init(&st->pending_cv, NULL);
    pthread_mutex_init(&st->gc_mu, NULL);
    pthread_cond_init(&st->gc_cv, NULL);
    st->gc_tail = &st->gc_head;
    st->readonly = cfg->readonly;
    st->reserve = cfg->reserve_bytes;
    if (snprintf(st->spool, sizeof st->spool, "%s", cfg->spool_dir) >=
            (int)sizeof st->spool ||
        snprintf(st->tmpdir, sizeof st->tmpdir, "%s/.tmp", cfg->spool_dir) >=
            (int)sizeof st->tmpdir) {
        r = CTG_EINVAL;
        goto fail;
    }

    if (!st->readonly) {
        if ((r = ctg_mkdirs(st->tmpdir)) < 0) {
            log_syserr(r, "mkdir", "%s", st->tmpdir);
            goto fail;
        }
        if (cfg->owner) clean_tmp(st);
    }

    int flags = st->readonly ? SQLITE_OPEN_READONLY
                             : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
    flags |= SQLITE_OPEN_NOMUTEX; /* our own lock serialises use */
    if (sqlite3_open_v2(cfg->db_path, &st->db, flags, NULL) != SQLITE_OK) {
        log_error("store: cannot open index %s: %s", cfg->db_path,
                  st->db ? sqlite3_errmsg(st->db) : "out of memory");
        r = st->readonly ? CTG_ENOENT : CTG_EDB;
        goto fail;
    }
    sqlite3_busy_timeout(st->db, 10000);
    sqlite3_extended_result_codes(st->db, 1);

    if (st->readonly) {
        int v = 0;
        if ((r = get_user_version(st, &v)) < 0) goto fail;
        if (v != ST_SCHEMA_VERSION) {
            log_error("store: index %s has schema %d, this program reads %d",
                      cfg->db_path, v, ST_SCHEMA_VERSION);
            r = CTG_ESCHEMA;
            goto fail;
        }
        st__exec(st, "PRAGMA query_only=1");
    } else {
        if ((r = st__exec(st, "PRAGMA journal_mode=WAL")) < 0 ||
            (r = st__exec(st, "PRAGMA synchronous=FULL")) < 0 ||
            (r = st__exec(st, "PRAGMA foreign_keys=ON")) < 0 ||
            (r = migrate(st)) < 0)
            goto fail;
    }
    *out = st;
    return 0;

fail:
    st_close(st);
    return r;
}

void st_close(st_store *st)
{
    if (!st) return;
    for (int i = 0; i < st->ncache; i++) sqlite3_finalize(st->cache[i].stmt);
    if (st->db) sqlite3_close(st->db);
    pthread_mutex_destroy(&st->lock);
    pthread_cond_destroy(&st->pending_cv);
    pthread_mutex_destroy(&st->gc_mu);
    pthread_cond_destroy(&st->gc_cv);
    free(st->pending);
    free(st);
}

int st_schema_version(st_store *st)
{
    int v = -1;
    pthread_mutex_lock(&st->lock);
    if (get_user_version(st, &v) < 0) v = CTG_EDB;
    pthread_mutex_unlock(&st->lock);
    return v;
}

static int count_into(st_store *st, const char *sql, int *dst)
{
    sqlite3_stmt *s;
    if (st__prepare(st, sql, &s) < 0) return CTG_EDB;
    int r = CTG_EDB;
    if (sqlite3_step(s) == SQLITE_ROW) {
        *dst = sqlite3_column_int(s, 0);
        r = 0;
    }
    sqlite3_finalize(s);
    return r;
}

int st_counts_get(st_store *st, st_counts *c)
{
    memset(c, 0, sizeof *c);
    pthread_mutex_lock(&st->lock);
    int r = 0;
    r |= count_into(st, "SELECT count(*) FROM patients", &c->patients);
    r |= count_into(st, "SELECT count(*) FROM studies", &c->studies);
    r |= count_into(st, "SELECT count(*) FROM series", &c->series);
    r |= count_into(st, "SELECT count(*) FROM instances WHERE current=1",
                    &c->instances);
    r |= count_into(st,
                    "SELECT count(*) FROM studies WHERE rx_gen > queued_gen",
                    &c->studies_pending);
    sqlite3_stmt *s;
    if (r == 0 &&
        st__prepare(st, "SELECT state, count(*) FROM jobs GROUP BY state", &s) == 0) {
        while (sqlite3_step(s) == SQLITE_ROW) {
            int state = sqlite3_column_int(s, 0);
            if (state >= 0 && state < 5) c->jobs[state] = sqlite3_column_int(s, 1);
        }
        sqlite3_finalize(s);
    }
    if (r == 0 &&
        st__prepare(st, "SELECT state, count(*) FROM exports GROUP BY state", &s) == 0) {
        while (sqlite3_step(s) == SQLITE_ROW) {
            int state = sqlite3_column_int(s, 0);
            if (state >= 0 && state < EXP_NSTATES) c->exports[state] = sqlite3_column_int(s, 1);
        }
        sqlite3_finalize(s);
    }
    if (r == 0 &&
        st__prepare(st,
                    "SELECT count(*), total(final), total(study_uid IS NULL OR NOT EXISTS"
                    " (SELECT 1 FROM studies t WHERE t.study_uid=r.study_uid)) FROM reports r",
                    &s) == 0) {
        if (sqlite3_step(s) == SQLITE_ROW) {
            c->reports = sqlite3_column_int(s, 0);
            c->reports_final = (int)sqlite3_column_double(s, 1);
            c->reports_unlinked = (int)sqlite3_column_double(s, 2);
        }
        sqlite3_finalize(s);
    }
    if (r == 0 && st__prepare(st, "SELECT total(size) FROM instances", &s) == 0) {
        if (sqlite3_step(s) == SQLITE_ROW)
            c->bytes = (uint64_t)sqlite3_column_double(s, 0);
        sqlite3_finalize(s);
    }
    pthread_mutex_unlock(&st->lock);
    return r ? CTG_EDB : 0;
}

const char *st_spool_dir(st_store *st) { return st->spool; }

static int query(st_store *st, const char *sql, const char *arg, st_row_fn row, void *ud)
{
    sqlite3_stmt *s;
    pthread_mutex_lock(&st->lock);
    int r = st__prepare(st, sql, &s);
    if (r < 0) goto out;
    if (arg) sqlite3_bind_text(s, 1, arg, -1, SQLITE_TRANSIENT);
    int n = sqlite3_column_count(s);
    const char *names[64], *vals[64];
    if (n > 64) n = 64;
    for (int i = 0; i < n; i++) names[i] = sqlite3_column_name(s, i);
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        for (int i = 0; i < n; i++)
            vals[i] = (const char *)sqlite3_column_text(s, i);
        if ((r = row(ud, n, names, vals)) != 0) break;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) r = st__dberr(st, "query");
    sqlite3_finalize(s);
out:
    pthread_mutex_unlock(&st->lock);
    return r;
}

int st_query(st_store *st, const char *sql, st_row_fn row, void *ud)
{
    return query(st, sql, NULL, row, ud);
}

int st_study_files(st_store *st, const char *study_uid, st_row_fn row, void *ud)
{
    return query(st,
                 "SELECT i.path, i.size, i.sop_uid, s.series_uid, i.sop_class"
                 " FROM instances i JOIN series s ON i.series_ref=s.id"
                 " JOIN studies t ON s.study_ref=t.id"
                 " WHERE t.study_uid=?1 AND i.current=1 ORDER BY s.id, i.instance_number",
                 study_uid, row, ud);
}
