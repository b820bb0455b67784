/*
 * store.h - the durable part of ctglip: the spool of received DICOM files,
 * the SQLite index of patients/studies/series/instances, study completion
 * and the job queue.
 *
 * Threading: an st_store handle may be shared by any number of threads; every
 * call takes the handle's lock for its whole transaction.  A read-only handle
 * (st_open with readonly set) is what the CLI uses while the daemon runs.
 *
 * Durability: st_ingest() returns only after the file is fsynced, renamed into
 * place, its directory fsynced and the index transaction committed with
 * synchronous=FULL.  A caller may acknowledge the instance after that.
 */
#ifndef CTGLIP_STORE_H
#define CTGLIP_STORE_H

#include <limits.h>
#include <stdint.h>

#include "../core/core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ST_SCHEMA_VERSION 1

typedef struct st_store st_store;

typedef struct st_config {
    const char *spool_dir;  /* root of the spool; created when missing */
    const char *db_path;    /* the SQLite index; created when missing */
    uint64_t reserve_bytes; /* keep this much free space on the spool fs */
    int readonly;           /* open the index read-only (CLI) */
    int owner;              /* the daemon: removes stale temp files */
} st_config;

/* Opens (and when needed creates and migrates) the store.  On success *out
 * owns the handle; release it with st_close().  With owner set, leftover
 * temp files of an earlier run are removed. */
int st_open(const st_config *cfg, st_store **out);
void st_close(st_store *st);

/* Schema version of an open index. */
int st_schema_version(st_store *st);

/* 1 when s is a UID that may become a path part: 1..64 characters, digits
 * and dots only, no empty component, no leading or trailing dot. */
int st_uid_valid(const char *s);

/* Free bytes available to the daemon on the spool's file system, and whether
 * a file of `need` bytes still leaves the configured reserve. */
int st_free_bytes(st_store *st, uint64_t *avail);
int st_space_ok(st_store *st, uint64_t need);

/* Creates an empty temp file in the spool's temp folder.  path receives its
 * name (PATH_MAX bytes); *fd is open for writing and owned by the caller, who
 * hands it to st_ingest() or closes it and calls st_discard(). */
int st_tmp_create(st_store *st, char *path, int *fd);
void st_discard(const char *tmp_path, int fd);

enum { ST_NEW = 0, ST_DUPLICATE = 1, ST_NEW_VERSION = 2 };

typedef struct st_ingest_result {
    int outcome;         /* ST_NEW, ST_DUPLICATE or ST_NEW_VERSION */
    int version;         /* 1 for the first copy of a SOP instance */
    int64_t instance_id; /* row id in instances */
    char path[PATH_MAX]; /* where the file now lives */
} st_ingest_result;

typedef struct st_ingest_req {
    const ctg_instance *inst;
    const char *tmp_path;      /* from st_tmp_create */
    int fd;                    /* consumed: closed in every case */
    uint64_t data_offset;      /* where the data set starts in the file */
    uint64_t size;             /* file size in bytes */
    const char *calling_ae;
    double now;                /* receive time (epoch seconds) */
    int stable_seconds;        /* completion delay for this study */
} st_ingest_req;

/* Makes a received file durable and indexes it.  The temp file is renamed to
 * <spool>/<study>/<series>/<sop>.dcm (or <sop>.v<N>.dcm for a different
 * version of an existing instance) or removed when it is an identical
 * duplicate: its data set bytes equal those of a version already held.  On error the temp file is removed and nothing is indexed. */
int st_ingest(st_store *st, const st_ingest_req *req, st_ingest_result *res);

/* ---- study completion ---------------------------------------------------- */

/* Earliest deadline of a study that has unqueued instances; returns 1 and
 * sets *deadline when there is one, 0 when none. */
int st_next_deadline(st_store *st, double *deadline);

/* Queues one job for every study whose deadline is <= now and that received
 * instances since its last job; an older queued job of the same study is
 * superseded.  Returns the number of jobs created (>= 0) or an error. */
int st_complete_due(st_store *st, double now);

/* ---- jobs ---------------------------------------------------------------- */

enum { JOB_QUEUED = 0, JOB_RUNNING, JOB_DONE, JOB_FAILED, JOB_SUPERSEDED };
const char *st_job_state_name(int state);

typedef struct st_job {
    int64_t id;
    char study_uid[65];
    int generation;  /* the study's receive generation the job covers */
    int attempts;    /* finished (failed or expired) attempts so far */
    int64_t supersedes; /* earlier job of the same study, 0 if none */
} st_job;

typedef struct st_retry_policy {
    int max_attempts;    /* after this many failed attempts: failed */
    double base_seconds; /* back-off base: base * 2^(attempts-1) */
    double max_seconds;  /* back-off cap */
} st_retry_policy;

/* Claims the oldest queued job whose back-off has passed.  Returns 1 and
 * fills *job when one was claimed, 0 when there is none. */
int st_job_claim(st_store *st, const char *owner, double now, double lease,
                 st_job *job);
/* Extends the lease; CTG_ELEASE when the job is no longer ours. */
int st_job_renew(st_store *st, int64_t id, const char *owner, double now,
                 double lease);
int st_job_done(st_store *st, int64_t id, const char *owner, double now);
/* Records a failed attempt: back to queued with back-off, or failed for good
 * when attempts are used up.  *final is set to 1 in the latter case. */
int st_job_fail(st_store *st, int64_t id, const char *owner, const char *reason,
                double now, const st_retry_policy *pol, int *final);
/* Returns jobs whose lease expired to the queue (counting an attempt) or, if
 * their attempts are used up, fails them.  Returns how many were recovered. */
int st_jobs_recover(st_store *st, double now, const st_retry_policy *pol);
/* Ends the lease of a running job now (its worker is known to be dead);
 * st_jobs_recover() then requeues it. */
int st_job_expire(st_store *st, int64_t id);
/* Admin: a failed job back to queued with a fresh attempt count. */
int st_job_requeue(st_store *st, int64_t id, double now);
/* Earliest not_before of a queued job, for the worker's wake-up timer. */
int st_next_job_time(st_store *st, double *when);

/* ---- read side for the CLI and tests ------------------------------------ */

typedef struct st_counts {
    int patients, studies, series, instances;
    int studies_pending; /* received instances not yet covered by a job */
    int jobs[5];         /* by state */
    uint64_t bytes;      /* sum of instance file sizes */
} st_counts;
int st_counts_get(st_store *st, st_counts *c);

/* Runs a read-only query and calls row() for each row with its columns as
 * text (NULL for SQL NULL).  For the CLI's tables. */
typedef int (*st_row_fn)(void *ud, int ncol, const char **names,
                         const char **vals);
int st_query(st_store *st, const char *sql, st_row_fn row, void *ud);

/* Calls row() for each current instance of a study with the columns
 * path (relative to the spool), size, sop_uid, series_uid, sop_class. */
int st_study_files(st_store *st, const char *study_uid, st_row_fn row, void *ud);

/* The spool root this store was opened with. */
const char *st_spool_dir(st_store *st);

#ifdef __cplusplus
}
#endif
#endif
