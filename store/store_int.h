/*
 * store_int.h - internals shared by the store's source files; not a public
 * header.  The handle owns one SQLite connection guarded by one mutex.
 */
#ifndef CTGLIP_STORE_INT_H
#define CTGLIP_STORE_INT_H

#include <pthread.h>
#include <sqlite3.h>

#include "store.h"

struct st_store {
    sqlite3 *db;
    pthread_mutex_t lock;
    char spool[2048];
    char tmpdir[2064];
    uint64_t reserve;
    int readonly;
    unsigned tmp_seq;
    /* Prepared statements of the hot path, keyed by their SQL literal. */
    struct {
        const char *sql;
        sqlite3_stmt *stmt;
    } cache[24];
    int ncache;

    /* SOP Instance UIDs between their version decision and their commit;
     * a second copy of one waits on pending_cv (under lock). */
    char (*pending)[65];
    int npending, cap_pending;
    pthread_cond_t pending_cv;

    /* Group commit: ingests queue their index rows here; one of them (the
     * leader) writes the whole queue in one transaction, one WAL fsync. */
    pthread_mutex_t gc_mu;
    pthread_cond_t gc_cv;
    struct st__gc_req *gc_head, **gc_tail;
    int gc_leader;
};

/* Runs SQL without results; logs and returns CTG_EDB on failure.  Caller
 * holds the lock. */
int st__exec(st_store *st, const char *sql);
/* Prepares a statement; logs and returns CTG_EDB on failure. */
int st__prepare(st_store *st, const char *sql, sqlite3_stmt **stmt);
/* A cached prepared statement for a SQL string literal (compared by
 * address); reset and with cleared bindings.  Release it with
 * st__release(), never sqlite3_finalize().  Caller holds the lock. */
int st__cached(st_store *st, const char *sql, sqlite3_stmt **stmt);
void st__release(sqlite3_stmt *stmt);
/* Runs a cached statement without parameters or results (BEGIN, COMMIT,
 * SAVEPOINT ...): no SQL parsing per call as with st__exec().  Logs and
 * returns CTG_EDB on failure.  Caller holds the lock. */
int st__run(st_store *st, const char *sql);
/* Logs the connection's current error with the operation name. */
int st__dberr(st_store *st, const char *what);

#endif
