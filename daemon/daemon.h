/*
 * daemon.h - internals of ctglipd shared by its source files: the config,
 * the admission/ingest hooks the SCP calls, the worker pool and the server.
 *
 * Threading: the loop thread owns the server and the config; association
 * threads read the reloadable part of the config under cfg_lock (read), the
 * loop thread replaces it on SIGHUP under cfg_lock (write).
 */
#ifndef CTGLIP_DAEMON_H
#define CTGLIP_DAEMON_H

#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdint.h>

#include "../core/analysis.h"
#include "../core/core.h"
#include "../dicom/dicom.h"
#include "../store/store.h"

#if HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
static inline void ctg_notify(const char *state) { sd_notify(0, state); }
#else
static inline void ctg_notify(const char *state) { (void)state; }
#endif

#define CTG_MAX_LIST 64
#define CTG_MAX_GPUS 16

typedef struct ctg_cidr {
    int family; /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    int prefix;
} ctg_cidr;

/* Overrides for one calling AE title ([ae NAME] sections). */
typedef struct ctg_ae_rule {
    char ae[17];
    int study_stable_seconds; /* -1: the default */
    int max_associations;     /* -1: the default per-AE limit */
} ctg_ae_rule;

/* One export destination ([destination NAME] sections). */
#define CTG_MAX_DEST 16
typedef struct ctg_destination {
    char name[64];       /* the NAME of the section; rows in the index carry it */
    char ae_title[17];   /* called AE title */
    char host[256];
    int port;
    int tls;             /* 1: DICOM TLS with the node's [tls] files */
    char calling_ae[17]; /* our AE title towards it; [dicom] ae_title when unset */
    int timeout;         /* seconds for connect, association set-up and each response */
} ctg_destination;

typedef struct ctg_config {
    char path[PATH_MAX];
    /* [dicom] */
    char ae_title[17];
    int port, tls_port, max_pdu;
    int acse_timeout, dimse_timeout, idle_timeout;
    int max_associations, max_associations_per_ae;
    uint64_t max_instance_bytes;
    /* [tls] */
    char tls_certificate[PATH_MAX], tls_private_key[PATH_MAX], tls_ca_file[PATH_MAX];
    int tls_verify_peer;
    char tls_profile[32];
    /* [access] */
    int any_ae; /* allow_ae = * */
    char allow_ae[CTG_MAX_LIST][17];
    int n_allow_ae;
    ctg_cidr allow_hosts[CTG_MAX_LIST];
    int n_allow_hosts;
    /* [store] */
    char spool[PATH_MAX], index[PATH_MAX];
    uint64_t reserve_bytes;
    /* [queue] */
    int study_stable_seconds;
    int workers;
    double lease_seconds;
    int max_attempts;
    double retry_base_seconds, retry_max_seconds;
    /* [model] */
    char model_path[PATH_MAX];    /* "" : receive and queue only; jobs just build the volume */
    char findings_path[PATH_MAX];
    char vocab_path[PATH_MAX];
    char model_text[16];          /* prompt phrasings: train, heldout, all, or "" = calibration's */
    int model_threads;            /* ops threads per worker; 0 = cores / workers */
    double model_overlap;         /* sliding-window overlap, 0..0.9 */
    char device[16];              /* cpu, cuda or auto */
    int gpus[CTG_MAX_GPUS];       /* [model] gpus: the devices to use, in order */
    int n_gpus;                   /* 0: all ("gpus = all") */
    int model_bf16;               /* precision on a GPU: 1 bf16, 0 fp32 */
    char reports[PATH_MAX];       /* each job's SEG and SR: <reports>/<StudyUID>/<job>/ */
    /* [export] */
    char outbox[PATH_MAX];        /* SR and SEG waiting for their destinations */
    int export_max_attempts;      /* failed attempts before an export is dead */
    double export_retry_base_seconds, export_retry_max_seconds;
    /* [destination NAME] */
    ctg_destination destinations[CTG_MAX_DEST];
    int n_destinations;
    /* [reports] incoming radiology reports (reports_in.c) */
    char reports_drop[PATH_MAX];  /* drop folder of text reports; "" = off */
    int reports_poll_seconds;     /* how often the drop folder is read */
    int reports_give_up_days;     /* a file whose study never came goes to failed/ after this */
    /* [http] */
    char http_bind[64];
    int http_port;
    /* [daemon] */
    int log_level;
    int shutdown_grace_seconds;
    /* [ae NAME] */
    ctg_ae_rule ae_rules[CTG_MAX_LIST];
    int n_ae_rules;
} ctg_config;

/* Fills *cfg with the documented defaults. */
void ctg_config_defaults(ctg_config *cfg);
/* Parses an INI file over the defaults.  On error returns CTG_ECONFIG and
 * writes "FILE:LINE: reason" into err. */
int ctg_config_load(const char *path, ctg_config *cfg, char *err, size_t n);
/* Copies the settings that SIGHUP may change (allowlists, limits, timeouts,
 * AE rules, stable time, log level, export destinations and retry policy)
 * from src to dst; returns 1 when src differs from dst in a setting that
 * needs a restart. */
int ctg_config_apply_reloadable(ctg_config *dst, const ctg_config *src);
/* Parses "a.b.c.d[/n]" or an IPv6 address with optional prefix. */
int ctg_cidr_parse(const char *s, ctg_cidr *out);
/* 1 when the textual address matches one of the entries. */
int ctg_addr_allowed(const ctg_config *cfg, const char *addr);
/* The [ae NAME] rule for a calling AE, or NULL. */
const ctg_ae_rule *ctg_ae_rule_find(const ctg_config *cfg, const char *ae);
/* The [destination NAME] section of that name, or NULL. */
const ctg_destination *ctg_destination_find(const ctg_config *cfg, const char *name);
/* Fills names[0..max) with the configured destination names (pointers into
 * cfg, valid while cfg is) and returns how many there are. */
int ctg_config_destination_names(const ctg_config *cfg, const char **names, int max);

/* ---- admission and ingest (ingest.c) ------------------------------------ */

typedef struct ctg_ingest ctg_ingest;

/* on_arrival is called (from association threads) after a new or changed
 * instance was committed, with the earliest time its study can now be
 * complete, to re-arm the completion timer. */
int ctg_ingest_new(const ctg_config *cfg, st_store *st,
                   void (*on_arrival)(void *, double), void *ud, ctg_ingest **out);
void ctg_ingest_free(ctg_ingest *ing);
/* The hooks to hand to dcm_scp_start(). */
void ctg_ingest_hooks(ctg_ingest *ing, dcm_scp_hooks *hooks);
/* Replaces the reloadable settings (allowlists, limits, AE rules). */
void ctg_ingest_reconfigure(ctg_ingest *ing, const ctg_config *cfg);

/* ---- workers (worker.c) -------------------------------------------------- */

typedef struct ctg_workers ctg_workers;

/* Opens the model (when [model] path is set: a model that cannot be
 * loaded stops the start with the reason logged) and starts the worker
 * threads. */
int ctg_workers_start(const ctg_config *cfg, st_store *st, ctg_workers **out);
/* SIGHUP: re-reads the findings list and applies the reloadable [model]
 * settings for the next jobs; a bad list is logged and the old one stays. */
void ctg_workers_reload(ctg_workers *w, const ctg_config *cfg);
/* fn(ud) is called (from a worker thread) after a job queued its report
 * for export: the exporter's wake-up. */
void ctg_workers_set_export_hook(ctg_workers *w, void (*fn)(void *), void *ud);
/* Wakes idle workers: new jobs may be waiting. */
void ctg_workers_wake(ctg_workers *w);
/* Lets running jobs finish, then joins and frees. */
void ctg_workers_stop(ctg_workers *w);
/* Processes one claimed job (the pipeline entry point) with the model eng
 * and the calling worker's context c for it (both NULL when no model is
 * configured: the job then only builds the volume).  Returns 0, or a negative error with a reason
 * in why. */
int ctg_job_process(ctg_workers *w, an_engine *eng, an_ctx *c, const st_job *job, char *why,
                    size_t n);

/* ---- the export outbox (exporter.c) -------------------------------------- */

typedef struct ctg_exporter ctg_exporter;

/* Creates the outbox folder, returns exports that a previous process left
 * in `sending` to the queue, and starts one thread per [destination].
 * On success *out is released with ctg_exporter_stop(). */
int ctg_exporter_start(const ctg_config *cfg, st_store *st, ctg_exporter **out);
/* SIGHUP: applies changed destinations (new ones start, removed ones end
 * after their current association; their rows stay) and the [export]
 * retry policy.  Loop thread. */
void ctg_exporter_reload(ctg_exporter *ex, const ctg_config *cfg);
/* Wakes the destination threads: new exports may be due.  Any thread;
 * NULL is a no-op. */
void ctg_exporter_wake(ctg_exporter *ex);
/* Lets each destination finish its current association, then joins and
 * frees.  NULL is a no-op. */
void ctg_exporter_stop(ctg_exporter *ex);

/* ---- radiology reports coming in (reports_in.c) ----------------------------- */

/* From a report SR that st_ingest just stored (or found to be a duplicate):
 * extracts its text (dcm_sr_text) and stores it with st_report_add, keyed
 * by the indexed instance, so a re-sent SR adds nothing.  SRs that are not
 * a radiologist's report are left as instances only: SOP classes other than
 * the five report classes, our own output (Manufacturer "ctglip") that a
 * PACS forwarded back, and SRs without text.  Returns 0 (stored, known, or
 * skipped: *outcome is ST_NEW, ST_DUPLICATE or -1 for skipped, and why
 * says why it was skipped) or a store error (the caller then fails the
 * C-STORE so that the sender retries).  Any thread. */
int ctg_sr_report_ingest(st_store *st, const ctg_instance *inst, const char *path,
                         int64_t instance_id, double now, int *outcome, char *why, size_t n);

/* A report read from a drop-folder file. */
typedef struct ctg_drop_report {
    char study_uid[65];   /* "" unless named */
    char accession[17];   /* "" unless named */
    char *text;           /* UTF-8, LF line ends, trimmed; owned: free() */
    int latin1;           /* the file was not UTF-8 and was read as Latin-1 */
} ctg_drop_report;

/* Parses one drop-folder file: name is the file's name (no folder), buf
 * its len bytes.  The format (also in etc/ctglipd.conf):
 *   - optional header lines at the very top, "StudyInstanceUID: UID" and
 *     "Accession: NUMBER" ("AccessionNumber:" also; names case-insensitive),
 *     followed by a blank line or the text itself;
 *   - without a header the name says: "<UID>.txt" for a Study Instance UID
 *     (digits and dots, at least one dot), else "<ACCESSION>.txt" (1..16
 *     characters);
 *   - the rest is the report text, UTF-8 (a byte order mark is skipped;
 *     text that is not valid UTF-8 is read as Latin-1), any line ends.
 * Returns 0 with *out filled (free out->text), or CTG_EFORMAT with the
 * reason in why. */
int ctg_drop_parse(const char *name, const char *buf, size_t len, ctg_drop_report *out,
                   char *why, size_t n);

/* What one pass over the drop folder did. */
typedef struct ctg_drop_stats {
    int stored;     /* new report rows */
    int done;       /* files moved to done/ (their study is in the index) */
    int waiting;    /* files left for a study that has not arrived yet */
    int failed;     /* files moved to failed/ with a .why */
    int linked;     /* reports (of any source) newly linked to their study */
} ctg_drop_stats;

/* One pass over the drop folder (the daemon runs it every poll_seconds on
 * libuv's thread pool; tests call it directly): links waiting reports
 * (st_reports_link), then handles each "*.txt" file that has not changed
 * for a second: unreadable or malformed files go to failed/ with a
 * "<name>.why"; the others are stored (st_report_add, keyed by a SHA-256 of
 * name and content, before the file is touched) and moved to done/ once
 * their study is in the index; a file whose study has not arrived stays
 * where it is, and after give_up_days it goes to failed/ and its report row
 * is removed.  Moves are renames followed by an fsync of both folders, so a
 * crash at any point leaves either the file where it was (the next pass
 * finds its row by the key and finishes the move) or the move done.
 * stats may be NULL.  Returns 0 or an error of the folder or the store. */
int ctg_drop_scan(st_store *st, const char *folder, int give_up_days, double now,
                  ctg_drop_stats *stats);

typedef struct ctg_reports_in ctg_reports_in;
struct uv_loop_s;
/* Starts polling [reports] drop_folder on loop (a timer; each pass runs on
 * the libuv thread pool, one at a time).  Creates the folder and its done/
 * and failed/.  With no drop folder configured *out is NULL and nothing
 * runs.  Loop thread. */
int ctg_reports_in_start(struct uv_loop_s *loop, const ctg_config *cfg, st_store *st,
                         ctg_reports_in **out);
/* SIGHUP: the new poll interval and give-up time.  Loop thread; NULL: no-op. */
void ctg_reports_in_reload(ctg_reports_in *r, const ctg_config *cfg);
/* Stops polling; a pass in progress finishes first (the loop runs until
 * it has), then everything is freed.  Loop thread; NULL: no-op. */
void ctg_reports_in_stop(ctg_reports_in *r);

/* ---- HTTP status (http.c) ------------------------------------------------ */

typedef struct ctg_http ctg_http;
struct uv_loop_s;
/* Serves GET /status and /health on the loop.  active() reports the
 * associations in progress.  On success *out is closed by ctg_http_close(). */
int ctg_http_start(struct uv_loop_s *loop, const char *bind_addr, int port, st_store *st,
                   int (*active)(void *), void *ud, ctg_http **out);
void ctg_http_close(ctg_http *h);

/* ---- the server (server.c) ---------------------------------------------- */

/* Runs ctglipd until SIGTERM/SIGINT.  Returns the process exit status. */
int ctg_server_run(ctg_config *cfg);

/* ---- reports (report.c; also linked into `ctglip infer`) -------------------- */

/* "ctglip CT-GLIP NAME" from a model file path (NAME: the file's name
 * without its extension). */
void ctg_model_name(const char *model_path, char *out, size_t n);

typedef struct ctg_report_req {
    const an_result *res;
    const dcm_source *src;
    const char *model_name;
    const char *dir;            /* seg.dcm and sr.dcm go here (created) */
    const char *predecessor_sr; /* an earlier SR of the study; NULL: none */
    const char *creation_date, *creation_time; /* NULL: the clock */
} ctg_report_req;

typedef struct ctg_report_out {
    char seg_path[PATH_MAX], sr_path[PATH_MAX];
    char seg_uid[65], sr_uid[65];
    double t_seg, t_sr;
} ctg_report_out;

/* Writes the SEG and the SR of an analysed study.  A study in which the
 * model found no organ is refused (CTG_EREJECT).  0 or CTG_E* with the
 * reason. */
int ctg_report_write(const ctg_report_req *q, ctg_report_out *out, char *why, size_t n);
/* The findings table, one line per organ. */
void ctg_report_print(FILE *f, const an_result *r);

typedef struct ctg_analyze_opts {
    const char *model_name;
    const char *dir;            /* for the SEG and SR */
    const char *predecessor_sr; /* NULL: none */
} ctg_analyze_opts;

/* Everything one study's analysis made; ctg_analysis_free releases it. */
typedef struct ctg_analysis {
    ctg_vol *vol;
    dcm_vol_info info;
    const char **src_files;     /* the chosen series' files (pointers into the input) */
    int nsrc;
    an_result res;
    ctg_report_out rep;
    double t_load, t_analyze;   /* seconds: files to volume; an_run */
} ctg_analysis;

/* Files of a study -> primary CT volume -> model -> SEG and SR in o->dir.
 * 0 or CTG_E* with the reason (bad input: CTG_EREJECT / CTG_EFORMAT). */
int ctg_analyze_study(an_engine *e, an_ctx *c, const char *const *files, int nfiles,
                      const ctg_analyze_opts *o, ctg_analysis *out, char *why, size_t n);
void ctg_analysis_free(ctg_analysis *a);

#endif
