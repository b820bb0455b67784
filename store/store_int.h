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
};

/* Runs SQL without results; logs and returns CTG_EDB on failure.  Caller
 * holds the lock. */
int st__exec(st_store *st, const char *sql);
/* Prepares a statement; logs and returns CTG_EDB on failure. */
int st__prepare(st_store *st, const char *sql, sqlite3_stmt **stmt);
/* Logs the connection's current error with the operation name. */
int st__dberr(st_store *st, const char *what);

#endif
