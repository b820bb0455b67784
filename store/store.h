/*
 * store.h - the durable part of ctglip: the spool of received DICOM files,
 * the SQLite index of patients/studies/series/instances, study completion,
 * the job queue and the export outbox.
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

#define ST_SCHEMA_VERSION 3

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

/* 1 for the Structured Report SOP classes (1.2.840.10008.5.1.4.1.1.88.*).
 * Such instances are stored and indexed like any other, but they are not
 * new content for the job queue: they never make a study pending (see
 * st_ingest). */
int st_sop_class_is_sr(const char *sop_class);

/* Makes a received file durable and indexes it.  The temp file is renamed to
 * <spool>/<study>/<series>/<sop>.dcm (or <sop>.v<N>.dcm for a different
 * version of an existing instance) or removed when it is an identical
 * duplicate: its data set bytes equal those of a version already held.  On error the temp file is removed and nothing is indexed.
 * An image moves the study's deadline and marks it pending (rx_gen); a
 * Structured Report (st_sop_class_is_sr) only creates the study row when
 * it is the study's first instance and otherwise leaves the study as it
 * is, so a report never re-queues a study. */
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
    int exports[4];      /* export rows by state (EXP_*) */
    int reports;         /* radiology reports received (reports.c) */
    int reports_final;   /* of which final */
    int reports_unlinked; /* of which no study in the index yet */
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

/* ---- the export outbox (export.c) ---------------------------------------- */

/* One row per (file, destination).  States: queued -> sending (claimed by an
 * exporter thread with a lease) -> done, or back to queued with back-off
 * after a failed attempt, or dead once the attempts are used up.  An admin
 * requeues dead rows.  A file in the outbox is removed only when every row
 * that names it is done (st_export_release_file). */
enum { EXP_QUEUED = 0, EXP_SENDING, EXP_DONE, EXP_DEAD };
#define EXP_NSTATES 4
const char *st_export_state_name(int state);
/* The state for a name ("queued", "sending", "done", "dead"), or -1. */
int st_export_state_parse(const char *name);

/* A file to export.  The caller reads its SOP class and instance UID (the
 * store does not parse DICOM); path is where the file lies in the outbox
 * and is stored as given, so give it in the form the exporter will open. */
typedef struct st_export_file {
    const char *path;
    const char *sop_class;
    const char *sop_uid;
} st_export_file;

/* Queues every file for every destination (nfiles * ndests rows) in one
 * transaction, all due at `now`.  A (path, destination) pair that already
 * has a row that is not done is not added twice, so a repeated call is
 * harmless.  job_id may be 0 (no job).  Returns the number of rows added,
 * or an error (then none is).  Nothing is copied or taken over: the files
 * stay the caller's until the exporter releases them. */
int st_export_add(st_store *st, int64_t job_id, const char *study_uid,
                  const st_export_file *files, int nfiles,
                  const char *const *dests, int ndests, double now);

/* One export row, as claimed or listed. */
typedef struct st_export {
    int64_t id, job_id;
    char study_uid[65];
    char path[PATH_MAX];
    char sop_class[65], sop_uid[65];
    char destination[64];
    int state;
    int attempts;     /* failed attempts so far */
    double next_try;  /* when a queued row is due */
    int last_status;  /* DIMSE status of the last attempt, -1 none */
    char last_error[256];
    double created, done_at; /* done_at 0 until done */
} st_export;

/* Claims up to max due rows (queued, next_try <= now) of one destination,
 * oldest due first: they become sending, held by owner until now + lease.
 * Returns the number claimed (0: none due) and fills rows[0..n). */
int st_export_claim(st_store *st, const char *dest, const char *owner,
                    double now, double lease, st_export *rows, int max);

/* The result of one attempt at one claimed row. */
typedef struct st_export_outcome {
    int64_t id;
    int ok;            /* 1: the destination confirmed it */
    int status;        /* DIMSE status; -1 when there was none */
    const char *error; /* why it failed (ignored when ok) */
    /* Set by st_export_record: */
    int final;         /* 1: the row is now dead */
    int attempts;      /* failed attempts after this one */
    double next_try;   /* when a failed, not dead row is due again */
    int recorded;      /* 0: the row was not ours any more (lease lost) */
} st_export_outcome;

/* Records the outcomes of one attempt in one transaction: a success makes
 * the row done; a failure counts an attempt and requeues the row at
 * now + min(base * 2^(attempts-1), max), or, when attempts reach
 * pol->max_attempts, makes it dead with the reason.  Rows that owner no
 * longer holds are left alone (recorded = 0).  Returns how many rows were
 * recorded. */
int st_export_record(st_store *st, const char *owner, st_export_outcome *o, int n,
                     double now, const st_retry_policy *pol);

/* The back-off after the given number of failed attempts (>= 1):
 * min(base * 2^(attempts-1), max).  Shared with the job queue. */
double st_backoff(const st_retry_policy *pol, int attempts);

/* Returns sending rows to queued, due now, without counting an attempt (the
 * destination may or may not have received them; sending again is safe,
 * a C-STORE of the same SOP instance replaces it).  all = 1: every sending
 * row (start-up: no exporter of this store runs yet); all = 0: only rows
 * whose lease has expired.  Returns how many rows went back. */
int st_exports_recover(st_store *st, double now, int all);

/* Earliest next_try of a queued row of dest (NULL: of any destination);
 * 1 and *when when there is one, 0 when none. */
int st_export_next_try(st_store *st, const char *dest, double *when);

/* Removes an outbox file once no row names it in a state other than done,
 * i.e. once every destination confirmed it; the directory is fsynced.
 * Returns 1 when the file was removed (or was gone already), 0 when some
 * destination still needs it, or an error.  Holds the store lock across
 * the check and the unlink, so a concurrent st_export_add cannot slip in. */
int st_export_release_file(st_store *st, const char *path);

/* Admin: one dead (or queued) row back to queued, attempts 0, due now.
 * CTG_ENOTFOUND when there is no such row, CTG_ESTATE when it is done or
 * being sent. */
int st_export_requeue(st_store *st, int64_t id, double now);
/* Admin: every dead row (of dest; NULL: of every destination) back to
 * queued, attempts 0, due now.  Returns how many. */
int st_export_requeue_dead(st_store *st, const char *dest, double now);

/* Rows by state for one destination (NULL: all); counts[EXP_NSTATES]. */
int st_export_counts(st_store *st, const char *dest, int *counts);

/* Calls row() for each export row, newest last, with the columns id,
 * destination, state (name), attempts, next_try, last_status, last_error,
 * path, study_uid, job_id, sop_class, sop_uid, created, done_at.  state < 0
 * and dest NULL list everything. */
int st_export_list(st_store *st, int state, const char *dest, st_row_fn row, void *ud);

/* ---- radiology reports received (reports.c) --------------------------------- */

/* Final reports of radiologists, kept so that a nightly retrain can learn
 * from them.  They come from report SRs received by C-STORE (source "sr")
 * and from text files in the daemon's drop folder (source "file").
 *
 * Linking: a report names its study by Study Instance UID, or by accession
 * number only.  It is linked when that study is in the index: by UID, or,
 * for an accession, when exactly one study has it (st_reports_link then
 * records the study's UID in the report).  A report may arrive before its
 * study; it is kept, unlinked, and links once the study is indexed. */
enum { ST_REPORT_SR = 0, ST_REPORT_FILE = 1 };

typedef struct st_report_in {
    int source;               /* ST_REPORT_SR or ST_REPORT_FILE */
    const char *source_ref;   /* the SR's SOP Instance UID, or the file's name */
    /* The report's identity: a second st_report_add with the same key
     * changes nothing (so a retry after a crash cannot duplicate it). */
    const char *source_key;
    const char *study_uid;    /* NULL or "": known by accession only */
    const char *accession;    /* NULL or "" */
    const char *text;         /* UTF-8 */
    const char *completion;   /* SR Completion Flag; NULL for files */
    const char *verification; /* SR Verification Flag; NULL for files */
    const char *observed;     /* when it was reported (DICOM DT); may be NULL */
    const char *author;       /* may be NULL */
    int final;                /* 1: a final report (the retrain's input) */
    double now;               /* received */
} st_report_in;

typedef struct st_report_added {
    int64_t id;
    int outcome;              /* ST_NEW, or ST_DUPLICATE when the key was known */
    int linked;               /* its study is in the index */
    double received;          /* when the row was first stored */
    char study_uid[65];       /* "" while unknown */
} st_report_added;

/* Stores one report (or finds the one with the same source_key) in one
 * transaction; an accession is resolved to a study as st_reports_link
 * does.  The strings are copied.  Returns 0, CTG_EINVAL (no key, no text,
 * neither a valid study UID nor an accession), CTG_ESTATE (read-only) or
 * CTG_EDB. */
int st_report_add(st_store *st, const st_report_in *r, st_report_added *out);

/* Links reports known by accession only to the one study that has that
 * accession, and fills in the accession of reports whose study has one.
 * Returns the number of reports newly linked, or an error. */
int st_reports_link(st_store *st, double now);

/* Removes a report (a drop-folder file given up on).  CTG_ENOTFOUND when
 * there is none. */
int st_report_delete(st_store *st, int64_t id);

/* A stored report, as listed. */
typedef struct st_report {
    int64_t id;
    char study_uid[65];       /* "" while known by accession only */
    char accession[65];
    int source;               /* ST_REPORT_SR or ST_REPORT_FILE */
    char source_ref[256];
    char completion[16], verification[16];
    char observed[32];
    char author[128];
    int final;
    int linked;               /* the study is in the index */
    int images;               /* current non-SR instances of the study */
    double received;          /* when the report was stored */
    /* Latest of: received, linked to its study, the study's last image
     * arrival.  What st_report_query.since compares with. */
    double changed;
    const char *text;         /* valid during the callback only */
} st_report;

typedef struct st_report_query {
    const char *study;        /* a Study Instance UID or an accession; NULL: all */
    /* Only reports that changed (st_report.changed) at or after this time;
     * 0: any.  A nightly job passing its previous start time sees every
     * study whose report, link or images arrived in between. */
    double since;
    double until;             /* and changed before this time; 0: no limit */
    int final_only;           /* only final reports */
    int linked_only;          /* only reports whose study is in the index */
    int latest_per_study;     /* only the newest matching report of each study */
} st_report_query;

typedef int (*st_report_fn)(void *ud, const st_report *r);
/* Calls fn for each matching report, oldest first (q NULL: all); a
 * non-zero return stops the listing and is returned.  Rows are read in
 * small batches and fn runs without the store's lock, so it may call the
 * store; a report added meanwhile may or may not be listed. */
int st_reports_list(st_store *st, const st_report_query *q, st_report_fn fn, void *ud);

/* What the nightly retrain learns from: for each study in the index, its
 * newest final report, where report, link or images changed in
 * [since, until) (until 0: no limit).  st_reports_list with final_only,
 * linked_only and latest_per_study. */
int st_reports_final(st_store *st, double since, double until, st_report_fn fn, void *ud);

/* The spool root this store was opened with. */
const char *st_spool_dir(st_store *st);

#ifdef __cplusplus
}
#endif
#endif
