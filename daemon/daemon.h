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
#include <stdint.h>

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
 * AE rules, stable time, log level) from src to dst; returns 1 when src
 * differs from dst in a setting that needs a restart. */
int ctg_config_apply_reloadable(ctg_config *dst, const ctg_config *src);
/* Parses "a.b.c.d[/n]" or an IPv6 address with optional prefix. */
int ctg_cidr_parse(const char *s, ctg_cidr *out);
/* 1 when the textual address matches one of the entries. */
int ctg_addr_allowed(const ctg_config *cfg, const char *addr);
/* The [ae NAME] rule for a calling AE, or NULL. */
const ctg_ae_rule *ctg_ae_rule_find(const ctg_config *cfg, const char *ae);

/* ---- admission and ingest (ingest.c) ------------------------------------ */

typedef struct ctg_ingest ctg_ingest;

/* on_arrival is called (from association threads) after a new or changed
 * instance was committed, to re-arm the completion timer. */
int ctg_ingest_new(const ctg_config *cfg, st_store *st,
                   void (*on_arrival)(void *), void *ud, ctg_ingest **out);
void ctg_ingest_free(ctg_ingest *ing);
/* The hooks to hand to dcm_scp_start(). */
void ctg_ingest_hooks(ctg_ingest *ing, dcm_scp_hooks *hooks);
/* Replaces the reloadable settings (allowlists, limits, AE rules). */
void ctg_ingest_reconfigure(ctg_ingest *ing, const ctg_config *cfg);

/* ---- workers (worker.c) -------------------------------------------------- */

typedef struct ctg_workers ctg_workers;

int ctg_workers_start(const ctg_config *cfg, st_store *st, ctg_workers **out);
/* Wakes idle workers: new jobs may be waiting. */
void ctg_workers_wake(ctg_workers *w);
/* Lets running jobs finish, then joins and frees. */
void ctg_workers_stop(ctg_workers *w);
/* Processes one claimed job (the pipeline entry point). Returns 0, or a
 * negative error with a reason in why. */
int ctg_job_process(st_store *st, const st_job *job, char *why, size_t n);

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

#endif
