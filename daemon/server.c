/*
 * server.c - the ctglipd process: a libuv loop that owns the config, the
 * study-completion timer, the lease-recovery timer, signals and shutdown,
 * around the SCP (its own threads), the worker pool (its own threads), the
 * exporter (one thread per export destination) and the drop-folder poller
 * of incoming reports (a timer here, its passes on libuv's thread pool).
 *
 * Threading: everything in this file runs on the loop thread, except
 * on_arrival(), which association threads call; it compares under arm_mu
 * and at most does uv_async_send(), the one libuv call that is safe from
 * other threads.
 *
 * Start-up order: store, lease recovery, exporter, workers, SCP, HTTP,
 * the report poller, then READY=1.  Shutdown (SIGTERM/SIGINT): stop accepting, wait up to
 * shutdown_grace_seconds for associations, abort the rest, stop the workers
 * (a finishing job may still queue exports), stop the exporter (each
 * destination finishes the association it is in; what is not sent stays
 * queued for the next start), close every handle, uv_loop_close().
 */
#include "daemon.h"

#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "../cuda/cu.h"

typedef struct server {
    uv_loop_t loop;
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_async_t arrival;
    /* The deadline the completion timer is armed for (INFINITY: none), so
     * that an arrival only wakes the loop when it may bring an earlier
     * one.  arm_completion() reads the index and sets it under arm_mu; an
     * arrival, already committed, compares under arm_mu.  Either the read
     * saw the arrival, or the comparison sees the new value: a study is
     * never left without a timer. */
    pthread_mutex_t arm_mu;
    double armed;
    uv_timer_t complete_timer, recover_timer, drain_timer;
    ctg_config *cfg;
    st_store *st;
    ctg_ingest *ing;
    ctg_workers *workers;
    ctg_exporter *exporter;
    dcm_scp *scp;
    ctg_http *http;
    ctg_reports_in *reports_in;
    st_retry_policy pol;
    int stopping;
    double drain_deadline;
} server;

/* ---- study completion -------------------------------------------------------- */

static void arm_completion(server *s);

static void on_complete_timer(uv_timer_t *t)
{
    server *s = t->data;
    int n = st_complete_due(s->st, ctg_now());
    if (n < 0) log_error("server: completing studies failed: %s", ctg_strerror(n));
    if (n > 0) ctg_workers_wake(s->workers);
    arm_completion(s);
}

/* Points the one completion timer at the earliest persisted deadline. */
static void arm_completion(server *s)
{
    if (s->stopping) return;
    double deadline;
    pthread_mutex_lock(&s->arm_mu);
    int r = st_next_deadline(s->st, &deadline);
    s->armed = r < 0 ? ctg_now() + 5 : r == 0 ? INFINITY : deadline;
    pthread_mutex_unlock(&s->arm_mu);
    if (r < 0) {
        log_error("server: reading study deadlines failed; retrying in 5 s");
        uv_timer_start(&s->complete_timer, on_complete_timer, 5000, 0);
        return;
    }
    if (r == 0) {
        uv_timer_stop(&s->complete_timer);
        return;
    }
    double wait = deadline - ctg_now();
    uint64_t ms = wait > 0 ? (uint64_t)(wait * 1000.0) + 5 : 0;
    uv_timer_start(&s->complete_timer, on_complete_timer, ms, 0);
}

static void on_arrival_async(uv_async_t *a) { arm_completion(a->data); }

/* deadline: the earliest the arrival's study can now complete.  Most
 * arrivals extend a study already further away than the armed deadline
 * and cost the loop nothing. */
static void on_arrival(void *ud, double deadline)
{
    server *s = ud;
    pthread_mutex_lock(&s->arm_mu);
    int wake = deadline < s->armed;
    if (wake) s->armed = deadline; /* later ones wait for the re-arm */
    pthread_mutex_unlock(&s->arm_mu);
    if (wake) uv_async_send(&s->arrival);
}

/* ---- job leases ---------------------------------------------------------------- */

static void on_recover_timer(uv_timer_t *t)
{
    server *s = t->data;
    int n = st_jobs_recover(s->st, ctg_now(), &s->pol);
    if (n > 0) ctg_workers_wake(s->workers);
}

typedef struct dead_ctx {
    st_store *st;
    char host[64];
    int n;
} dead_ctx;

static int expire_if_dead(void *ud, int ncol, const char **names, const char **vals)
{
    dead_ctx *d = ud;
    (void)names;
    if (ncol < 2 || !vals[0] || !vals[1]) return 0;
    /* Owners are "host/pid/wN". */
    char host[64];
    int pid = 0;
    const char *slash = strchr(vals[1], '/');
    if (!slash || (size_t)(slash - vals[1]) >= sizeof host) return 0;
    memcpy(host, vals[1], (size_t)(slash - vals[1]));
    host[slash - vals[1]] = 0;
    pid = atoi(slash + 1);
    if (strcmp(host, d->host) != 0 || pid <= 0) return 0;
    if (pid != getpid() && (kill(pid, 0) == 0 || errno != ESRCH)) return 0;
    if (st_job_expire(d->st, atoll(vals[0])) == 0) d->n++;
    return 0;
}

/* Jobs that a previous ctglipd on this host held when it died go back to
 * the queue now instead of after their lease. */
static void recover_dead_workers(server *s)
{
    dead_ctx d = {.st = s->st, .n = 0};
    gethostname(d.host, sizeof d.host - 1);
    st_query(s->st, "SELECT id, lease_owner FROM jobs WHERE state=1", expire_if_dead, &d);
    int n = st_jobs_recover(s->st, ctg_now(), &s->pol);
    if (n > 0) log_info("server: %d job(s) of a previous run returned to the queue", n);
}

/* The workers' hook after a job queued its report for export. */
static void wake_exporter(void *ud) { ctg_exporter_wake(ud); }

/* ---- reload ------------------------------------------------------------------------ */

static void reload(server *s)
{
    ctg_config *fresh = malloc(sizeof *fresh);
    char err[1024];
    if (!fresh) return;
    ctg_config_defaults(fresh);
    if (ctg_config_load(s->cfg->path, fresh, err, sizeof err) < 0) {
        log_error("reload: %s; keeping the running configuration", err);
        free(fresh);
        return;
    }
    ctg_config *c = s->cfg;
    if (ctg_config_apply_reloadable(c, fresh))
        log_warn("reload: listener, TLS, HTTP, store, size or worker settings changed; "
                 "they take effect at the next restart");
    ctg_ingest_reconfigure(s->ing, c);
    ctg_exporter_reload(s->exporter, c);
    ctg_workers_reload(s->workers, c);
    ctg_reports_in_reload(s->reports_in, c);
    dcm_scp_set_timeouts(s->scp, c->acse_timeout, c->dimse_timeout, c->idle_timeout);
    ctg_log_set_level(c->log_level);
    free(fresh);
    log_info("reload: configuration %s applied", c->path);
}

/* ---- shutdown --------------------------------------------------------------------- */

static void close_cb(uv_handle_t *h) { (void)h; }

static void finish(server *s)
{
    uv_timer_stop(&s->drain_timer);
    ctg_http_close(s->http);
    s->http = NULL;
    ctg_reports_in_stop(s->reports_in);
    s->reports_in = NULL;
    ctg_workers_stop(s->workers);
    s->workers = NULL;
    ctg_exporter_stop(s->exporter);
    s->exporter = NULL;
    uv_handle_t *hs[] = {
        (uv_handle_t *)&s->sig_term,       (uv_handle_t *)&s->sig_int,
        (uv_handle_t *)&s->sig_hup,        (uv_handle_t *)&s->arrival,
        (uv_handle_t *)&s->complete_timer, (uv_handle_t *)&s->recover_timer,
        (uv_handle_t *)&s->drain_timer,
    };
    for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++)
        if (!uv_is_closing(hs[i])) uv_close(hs[i], close_cb);
}

static void on_drain_timer(uv_timer_t *t)
{
    server *s = t->data;
    int active = dcm_scp_active(s->scp);
    if (active == 0) {
        finish(s);
        return;
    }
    if (ctg_mono() >= s->drain_deadline) {
        log_warn("server: %d association(s) still open after %d s; aborting them", active,
                 s->cfg->shutdown_grace_seconds);
        dcm_scp_abort_all(s->scp);
        s->drain_deadline = 1e300;
    }
}

static void begin_shutdown(server *s, const char *why)
{
    if (s->stopping) return;
    s->stopping = 1;
    log_info("server: %s: stopping (no new associations, draining %d)", why,
             dcm_scp_active(s->scp));
    ctg_notify("STOPPING=1");
    uv_timer_stop(&s->complete_timer);
    uv_timer_stop(&s->recover_timer);
    /* The grace period counts from the signal, not from the listeners'
     * exit (they notice the stop within a second). */
    s->drain_deadline = ctg_mono() + s->cfg->shutdown_grace_seconds;
    dcm_scp_stop_accepting(s->scp);
    uv_timer_start(&s->drain_timer, on_drain_timer, 0, 100);
}

static void on_signal(uv_signal_t *h, int signum)
{
    server *s = h->data;
    if (signum == SIGHUP) {
        log_info("server: SIGHUP: reloading %s", s->cfg->path);
        reload(s);
        return;
    }
    begin_shutdown(s, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* ---- main -------------------------------------------------------------------------- */

static int scp_active(void *ud)
{
    server *s = ud;
    return dcm_scp_active(s->scp);
}

int ctg_server_run(ctg_config *cfg)
{
    server srv, *s = &srv;
    int r, status = 1;
    memset(s, 0, sizeof *s);
    s->cfg = cfg;
    pthread_mutex_init(&s->arm_mu, NULL);
    s->armed = INFINITY;
    s->pol.max_attempts = cfg->max_attempts;
    s->pol.base_seconds = cfg->retry_base_seconds;
    s->pol.max_seconds = cfg->retry_max_seconds;
    ctg_log_set_level(cfg->log_level);
    signal(SIGPIPE, SIG_IGN);

    st_config sc = {.spool_dir = cfg->spool, .db_path = cfg->index,
                    .reserve_bytes = cfg->reserve_bytes, .owner = 1};
    if ((r = st_open(&sc, &s->st)) < 0) {
        log_error("server: cannot open the store (spool %s, index %s): %s", cfg->spool,
                  cfg->index, ctg_strerror(r));
        return 1;
    }
    recover_dead_workers(s);

    if ((r = ctg_exporter_start(cfg, s->st, &s->exporter)) < 0) {
        log_error("server: cannot start the exporter (outbox %s): %s", cfg->outbox,
                  ctg_strerror(r));
        goto fail_store;
    }

    int gpus = cu_device_count();
    log_info("server: %d CUDA device(s)%s; [model] device = %s", gpus,
             cu_built_with_cuda() ? "" : " (built without CUDA)", cfg->device);
    if ((r = ctg_workers_start(cfg, s->st, &s->workers)) < 0) {
        log_error("server: cannot start workers: %s", ctg_strerror(r));
        goto fail_store;
    }
    /* A report queued before this line is found by the exporter's poll. */
    ctg_workers_set_export_hook(s->workers, wake_exporter, s->exporter);

    uv_loop_init(&s->loop);
    uv_signal_init(&s->loop, &s->sig_term);
    uv_signal_init(&s->loop, &s->sig_int);
    uv_signal_init(&s->loop, &s->sig_hup);
    uv_async_init(&s->loop, &s->arrival, on_arrival_async);
    uv_timer_init(&s->loop, &s->complete_timer);
    uv_timer_init(&s->loop, &s->recover_timer);
    uv_timer_init(&s->loop, &s->drain_timer);
    s->sig_term.data = s->sig_int.data = s->sig_hup.data = s;
    s->arrival.data = s->complete_timer.data = s->recover_timer.data = s;
    s->drain_timer.data = s;
    uv_signal_start(&s->sig_term, on_signal, SIGTERM);
    uv_signal_start(&s->sig_int, on_signal, SIGINT);
    uv_signal_start(&s->sig_hup, on_signal, SIGHUP);

    if ((r = ctg_ingest_new(cfg, s->st, on_arrival, s, &s->ing)) < 0) goto fail_loop;
    dcm_scp_hooks hooks;
    ctg_ingest_hooks(s->ing, &hooks);
    dcm_scp_config dc = {
        .ae_title = cfg->ae_title,
        .port = cfg->port,
        .tls_port = cfg->tls_port,
        .tls = {.certificate = cfg->tls_certificate,
                .private_key = cfg->tls_private_key,
                .ca_file = cfg->tls_ca_file,
                .verify_peer = cfg->tls_verify_peer,
                .profile = cfg->tls_profile},
        .max_pdu = cfg->max_pdu,
        .acse_timeout = cfg->acse_timeout,
        .dimse_timeout = cfg->dimse_timeout,
        .idle_timeout = cfg->idle_timeout,
        .max_instance_bytes = cfg->max_instance_bytes,
    };
    if ((r = dcm_scp_start(&dc, &hooks, &s->scp)) < 0) goto fail_loop;

    if (cfg->http_port &&
        ctg_http_start(&s->loop, cfg->http_bind, cfg->http_port, s->st, scp_active, s,
                       &s->http) < 0)
        goto fail_loop;

    /* Text reports in the drop folder; report SRs come in through the SCP. */
    if (ctg_reports_in_start(&s->loop, cfg, s->st, &s->reports_in) < 0) goto fail_loop;

    /* Studies that were pending when we last stopped keep their deadlines. */
    arm_completion(s);
    double every = cfg->lease_seconds / 4;
    if (every < 1) every = 1;
    if (every > 30) every = 30;
    uv_timer_start(&s->recover_timer, on_recover_timer, (uint64_t)(every * 1000),
                   (uint64_t)(every * 1000));

    if (cfg->port) log_info("server: AE %s listening on port %d", cfg->ae_title, cfg->port);
    if (cfg->tls_port)
        log_info("server: AE %s listening on port %d (TLS)", cfg->ae_title, cfg->tls_port);
    log_info("server: spool %s, index %s, outbox %s", cfg->spool, cfg->index, cfg->outbox);
    ctg_notify("READY=1\nSTATUS=accepting associations");

    uv_run(&s->loop, UV_RUN_DEFAULT);

    dcm_scp_free(s->scp);
    s->scp = NULL;
    r = uv_loop_close(&s->loop);
    if (r != 0) {
        log_error("server: uv_loop_close: %s", uv_strerror(r));
    } else {
        status = 0;
    }
    ctg_ingest_free(s->ing);
    st_close(s->st);
    log_info("server: stopped");
    return status;

fail_loop:
    log_error("server: start-up failed");
    s->stopping = 1;
    finish(s);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    uv_loop_close(&s->loop);
    dcm_scp_free(s->scp);
    ctg_ingest_free(s->ing);
    st_close(s->st);
    return 1;
fail_store:
    ctg_exporter_stop(s->exporter);
    st_close(s->st);
    return 1;
}
