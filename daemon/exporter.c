/*
 * exporter.c - the export outbox of ctglipd: sends each job's SR and SEG
 * to every configured [destination NAME] by C-STORE.
 *
 * The job worker puts a job's files into the outbox folder and queues one
 * export row per (file, destination) in the index (st_export_add), then
 * wakes the exporter.  One thread per destination claims that
 * destination's due rows, sends them over one association with
 * dcm_send_files(), and records each outcome: a success status (0x0000, or
 * the warnings 0xB000, 0xB006, 0xB007) makes a row done, anything else -
 * a failure status, a file that could not be sent, an association that
 * could not be opened or broke - counts a failed attempt with exponential
 * back-off, and dead after [export] max_attempts.  A file leaves the
 * outbox only when every destination has confirmed it.
 *
 * Because each destination has its own thread and its own rows, one that
 * is down (or slow to time out) delays nobody else.  A thread sleeps until
 * it is woken (new exports) or its next row is due, and looks at the index
 * at least every EXPORT_POLL_SECONDS so that a `ctglip requeue` made by
 * another process is noticed.
 *
 * Reload: destinations may be added, changed or removed.  A removed
 * destination's thread finishes the association it is in and ends; its
 * rows stay in the index (queued or dead), are reported, and are sent if a
 * destination of that name comes back.  New exports go to the destinations
 * configured when they are added.
 *
 * Threading: ctg_exporter_start/reload/stop run on the loop thread;
 * ctg_exporter_wake may be called from any thread.
 * The exporter's mutex guards the destination list, each thread's copy of
 * its settings, the retry policy and the wake-up sequence; no lock is held
 * across a send or an index call.
 */
#include "daemon.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define EXPORT_BATCH 32         /* files per association at most */
#define EXPORT_POLL_SECONDS 5.0 /* longest sleep without looking at the index */

typedef struct dest_thread {
    struct dest_thread *next;
    ctg_exporter *ex;
    ctg_destination d; /* under ex->mu; the thread copies it per batch */
    pthread_t thread;
    int stop;          /* under ex->mu */
    int finished;      /* under ex->mu: the thread has returned */
} dest_thread;

struct ctg_exporter {
    st_store *st;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned wake_seq;
    st_retry_policy pol;
    dest_thread *threads; /* one per configured destination */
    dest_thread *retired; /* removed by a reload, maybe still sending */
    /* Restart-only settings, copied at start. */
    char tls_cert[PATH_MAX], tls_key[PATH_MAX], tls_ca[PATH_MAX], tls_profile[32];
    char host[64];
};

/* ---- one destination's thread --------------------------------------------- */

static int delivered(int status)
{
    return status == 0x0000 || status == 0xB000 || status == 0xB006 || status == 0xB007;
}

static void fmt_clock(double t, char *out, size_t n)
{
    time_t tt = (time_t)t;
    struct tm tm;
    localtime_r(&tt, &tm);
    strftime(out, n, "%H:%M:%S", &tm);
}

/* Sends one claimed batch and records what happened to each row. */
static void send_batch(ctg_exporter *ex, const ctg_destination *d, const char *owner,
                       st_export *rows, int n, const st_retry_policy *pol)
{
    const char *paths[EXPORT_BATCH];
    int status[EXPORT_BATCH];
    char why[512] = "", reasons[EXPORT_BATCH][48];
    st_export_outcome out[EXPORT_BATCH];
    dcm_tls_config tls = {.certificate = ex->tls_cert, .private_key = ex->tls_key,
                          .ca_file = ex->tls_ca, .verify_peer = 1,
                          .profile = ex->tls_profile};
    dcm_peer peer = {.host = d->host, .port = d->port, .called_ae = d->ae_title,
                     .calling_ae = d->calling_ae, .tls = d->tls ? &tls : NULL,
                     .timeout = d->timeout};
    for (int i = 0; i < n; i++) paths[i] = rows[i].path;

    double t0 = ctg_mono();
    int r = dcm_send_files(&peer, paths, n, status, why, sizeof why);
    double secs = ctg_mono() - t0;

    int ok = 0;
    const char *first_reason = NULL;
    for (int i = 0; i < n; i++) {
        memset(&out[i], 0, sizeof out[i]);
        out[i].id = rows[i].id;
        out[i].status = status[i];
        out[i].ok = status[i] >= 0 && delivered(status[i]);
        if (out[i].ok) {
            ok++;
            continue;
        }
        /* A file the association never got to carries the association's
         * reason; one the peer answered carries the peer's status. */
        if (status[i] >= 0) {
            snprintf(reasons[i], sizeof reasons[i], "refused with status 0x%04x",
                     (unsigned)status[i]);
            out[i].error = reasons[i];
        } else if (r < 0) {
            out[i].error = why[0] ? why : ctg_strerror(r);
        } else {
            out[i].error = "not sent: file unreadable or no accepted presentation context";
        }
        if (!first_reason) first_reason = out[i].error;
    }

    int rec = st_export_record(ex->st, owner, out, n, ctg_now(), pol);
    if (rec < 0) {
        /* The rows stay sending; the next start returns them to the queue. */
        log_error("export %s: recording the outcome of %d file(s) failed: %s", d->name, n,
                  ctg_strerror(rec));
        return;
    }

    /* One line per attempt: the destination, how many, why, and when next. */
    if (ok == n) {
        log_info("export %s: %d file(s) delivered to %s@%s:%d in %.2f s", d->name, n,
                 d->ae_title, d->host, d->port, secs);
    } else {
        double next = 0;
        int dead = 0, min_att = 0;
        for (int i = 0; i < n; i++) {
            if (out[i].ok || !out[i].recorded) continue;
            if (out[i].final) {
                dead++;
                continue;
            }
            if (next == 0 || out[i].next_try < next) next = out[i].next_try;
            if (min_att == 0 || out[i].attempts < min_att) min_att = out[i].attempts;
        }
        char when[32] = "";
        if (next > 0) fmt_clock(next, when, sizeof when);
        char tail[160];
        double in = next - ctg_now();
        if (next > 0)
            snprintf(tail, sizeof tail, "attempt %d of %d; next try at %s (in %.0f s)%s",
                     min_att, pol->max_attempts, when, in > 0 ? in : 0.0,
                     dead ? "; some are dead now" : "");
        else
            snprintf(tail, sizeof tail, "no retry: attempts used up");
        log_warn("export %s: %d of %d file(s) failed%s: %s; %s", d->name, n - ok, n,
                 ok ? " (the others were delivered)" : "", first_reason ? first_reason : "?",
                 tail);
        for (int i = 0; i < n; i++)
            if (!out[i].ok && out[i].recorded && out[i].final)
                log_warn("export %s: export %lld (%s) is dead after %d attempt(s): %s; "
                         "`ctglip requeue export %lld` sends it again",
                         d->name, (long long)rows[i].id, rows[i].path, out[i].attempts,
                         out[i].error, (long long)rows[i].id);
    }

    /* A delivered file leaves the outbox once every destination has it. */
    for (int i = 0; i < n; i++) {
        if (!out[i].ok || !out[i].recorded) continue;
        int rel = st_export_release_file(ex->st, rows[i].path);
        if (rel == 1)
            log_debug("export: %s removed from the outbox (every destination has it)",
                      rows[i].path);
        else if (rel < 0)
            log_warn("export: cannot remove %s from the outbox: %s", rows[i].path,
                     ctg_strerror(rel));
    }
}

static void *dest_main(void *arg)
{
    dest_thread *t = arg;
    ctg_exporter *ex = t->ex;
    char owner[160];
    st_export *rows = calloc(EXPORT_BATCH, sizeof *rows);

    pthread_mutex_lock(&ex->mu);
    snprintf(owner, sizeof owner, "%s/%d/x/%s", ex->host, (int)getpid(), t->d.name);
    if (!rows) log_error("export %s: out of memory; this destination is not served", t->d.name);
    while (rows && !t->stop) {
        ctg_destination d = t->d;
        st_retry_policy pol = ex->pol;
        pthread_mutex_unlock(&ex->mu);

        /* The lease only matters if the process dies while sending: the
         * next start returns every sending row.  Give it room for a whole
         * batch of timeouts anyway. */
        double lease = (double)d.timeout * (EXPORT_BATCH + 2);
        int got = st_export_claim(ex->st, d.name, owner, ctg_now(), lease, rows, EXPORT_BATCH);
        if (got > 0) {
            send_batch(ex, &d, owner, rows, got, &pol);
            pthread_mutex_lock(&ex->mu);
            continue;
        }
        if (got < 0) log_warn("export %s: claiming exports failed: %s", d.name, ctg_strerror(got));

        /* Nothing due: sleep until the next row is, a wake-up, or the poll. */
        double wait = EXPORT_POLL_SECONDS, when;
        if (got == 0 && st_export_next_try(ex->st, d.name, &when) == 1) {
            double w = when - ctg_now();
            if (w < wait) wait = w < 0.01 ? 0.01 : w;
        }
        pthread_mutex_lock(&ex->mu);
        if (t->stop) break;
        unsigned seq = ex->wake_seq;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        double end = ts.tv_sec + ts.tv_nsec * 1e-9 + wait;
        ts.tv_sec = (time_t)end;
        ts.tv_nsec = (long)((end - (double)ts.tv_sec) * 1e9);
        while (!t->stop && seq == ex->wake_seq)
            if (pthread_cond_timedwait(&ex->cv, &ex->mu, &ts) != 0) break;
    }
    t->finished = 1;
    pthread_mutex_unlock(&ex->mu);
    free(rows);
    return NULL;
}

/* Starts the thread of one destination; caller holds ex->mu. */
static int start_dest(ctg_exporter *ex, const ctg_destination *d)
{
    dest_thread *t = calloc(1, sizeof *t);
    if (!t) return CTG_ENOMEM;
    t->ex = ex;
    t->d = *d;
    if (pthread_create(&t->thread, NULL, dest_main, t) != 0) {
        free(t);
        return CTG_ENOMEM;
    }
    t->next = ex->threads;
    ex->threads = t;
    log_info("export: destination %s: %s@%s:%d%s, calling AE %s, timeout %d s", d->name,
             d->ae_title, d->host, d->port, d->tls ? " (TLS)" : "", d->calling_ae, d->timeout);
    return 0;
}

/* Joins the retired threads that have ended (all of them with wait_all);
 * caller holds ex->mu, which is dropped around each join. */
static void reap_retired(ctg_exporter *ex, int wait_all)
{
    dest_thread **pp = &ex->retired;
    while (*pp) {
        dest_thread *t = *pp;
        if (!wait_all && !t->finished) {
            pp = &t->next;
            continue;
        }
        *pp = t->next;
        pthread_mutex_unlock(&ex->mu);
        pthread_join(t->thread, NULL);
        free(t);
        pthread_mutex_lock(&ex->mu);
        pp = &ex->retired;
    }
}

typedef struct orphan_ctx {
    const ctg_config *cfg;
    int n;
} orphan_ctx;

static int orphan_row(void *ud, int ncol, const char **names, const char **v)
{
    orphan_ctx *o = ud;
    (void)names;
    if (ncol < 3 || !v[0] || ctg_destination_find(o->cfg, v[0])) return 0;
    o->n++;
    log_warn("export: destination %s is not configured, but %s export(s) for it are queued "
             "and %s dead; they stay in the index and are sent if it is configured again",
             v[0], v[1] ? v[1] : "0", v[2] ? v[2] : "0");
    return 0;
}

/* Reports exports that wait for a destination that is not configured. */
static void report_orphans(ctg_exporter *ex, const ctg_config *cfg)
{
    orphan_ctx o = {cfg, 0};
    st_query(ex->st,
             "SELECT destination, sum(state IN (0,1)), sum(state=3) FROM exports"
             " WHERE state<>2 GROUP BY destination",
             orphan_row, &o);
}

static void set_policy(ctg_exporter *ex, const ctg_config *cfg)
{
    ex->pol.max_attempts = cfg->export_max_attempts;
    ex->pol.base_seconds = cfg->export_retry_base_seconds;
    ex->pol.max_seconds = cfg->export_retry_max_seconds;
}

/* ---- public ------------------------------------------------------------------ */

int ctg_exporter_start(const ctg_config *cfg, st_store *st, ctg_exporter **out)
{
    int r;
    if ((r = ctg_mkdirs(cfg->outbox)) < 0) {
        log_syserr(r, "mkdir", "%s", cfg->outbox);
        return r;
    }
    ctg_exporter *ex = calloc(1, sizeof *ex);
    if (!ex) return CTG_ENOMEM;
    ex->st = st;
    pthread_mutex_init(&ex->mu, NULL);
    pthread_cond_init(&ex->cv, NULL);
    set_policy(ex, cfg);
    snprintf(ex->tls_cert, sizeof ex->tls_cert, "%s", cfg->tls_certificate);
    snprintf(ex->tls_key, sizeof ex->tls_key, "%s", cfg->tls_private_key);
    snprintf(ex->tls_ca, sizeof ex->tls_ca, "%s", cfg->tls_ca_file);
    snprintf(ex->tls_profile, sizeof ex->tls_profile, "%s", cfg->tls_profile);
    gethostname(ex->host, sizeof ex->host - 1);

    /* No exporter of this store runs yet: whatever was being sent when the
     * last process ended goes back to the queue. */
    st_exports_recover(st, ctg_now(), 1);
    report_orphans(ex, cfg);

    pthread_mutex_lock(&ex->mu);
    for (int i = 0; i < cfg->n_destinations; i++) {
        if ((r = start_dest(ex, &cfg->destinations[i])) < 0) {
            pthread_mutex_unlock(&ex->mu);
            log_error("export: cannot start the thread of destination %s",
                      cfg->destinations[i].name);
            ctg_exporter_stop(ex);
            return r;
        }
    }
    pthread_mutex_unlock(&ex->mu);
    if (cfg->n_destinations == 0)
        log_info("export: no [destination] configured; reports are not sent anywhere");
    *out = ex;
    return 0;
}

void ctg_exporter_reload(ctg_exporter *ex, const ctg_config *cfg)
{
    if (!ex) return;
    pthread_mutex_lock(&ex->mu);
    set_policy(ex, cfg);
    reap_retired(ex, 0);
    /* Retire the threads of destinations that are gone. */
    dest_thread **pp = &ex->threads;
    while (*pp) {
        dest_thread *t = *pp;
        const ctg_destination *d = ctg_destination_find(cfg, t->d.name);
        if (d) {
            if (memcmp(d, &t->d, sizeof *d) != 0)
                log_info("export: destination %s changed: %s@%s:%d%s, timeout %d s", d->name,
                         d->ae_title, d->host, d->port, d->tls ? " (TLS)" : "", d->timeout);
            t->d = *d; /* used from its next association on */
            pp = &t->next;
            continue;
        }
        log_info("export: destination %s removed; its thread ends after its current "
                 "association", t->d.name);
        t->stop = 1;
        *pp = t->next;
        t->next = ex->retired;
        ex->retired = t;
    }
    /* Start the new ones. */
    for (int i = 0; i < cfg->n_destinations; i++) {
        const ctg_destination *d = &cfg->destinations[i];
        dest_thread *t = ex->threads;
        while (t && strcmp(t->d.name, d->name) != 0) t = t->next;
        if (!t && start_dest(ex, d) < 0)
            log_error("export: cannot start the thread of destination %s", d->name);
    }
    ex->wake_seq++;
    pthread_cond_broadcast(&ex->cv);
    pthread_mutex_unlock(&ex->mu);
    report_orphans(ex, cfg);
}

void ctg_exporter_wake(ctg_exporter *ex)
{
    if (!ex) return;
    pthread_mutex_lock(&ex->mu);
    ex->wake_seq++;
    pthread_cond_broadcast(&ex->cv);
    pthread_mutex_unlock(&ex->mu);
}

void ctg_exporter_stop(ctg_exporter *ex)
{
    if (!ex) return;
    pthread_mutex_lock(&ex->mu);
    for (dest_thread *t = ex->threads; t; t = t->next) t->stop = 1;
    pthread_cond_broadcast(&ex->cv);
    /* Move every thread to the retired list and wait for all of them; a
     * thread in an association finishes it first (bounded by its timeout). */
    while (ex->threads) {
        dest_thread *t = ex->threads;
        ex->threads = t->next;
        t->next = ex->retired;
        ex->retired = t;
    }
    reap_retired(ex, 1);
    pthread_mutex_unlock(&ex->mu);
    pthread_mutex_destroy(&ex->mu);
    pthread_cond_destroy(&ex->cv);
    free(ex);
}
