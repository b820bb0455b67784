/*
 * worker.c - the job workers of ctglipd.
 *
 * Each worker thread claims one queued job at a time with a lease, runs it,
 * and records done or a failed attempt (the store applies retry back-off and
 * the attempt limit).  While a job runs, a heartbeat renews its lease, so
 * only a worker that died loses its job to lease expiry.
 *
 * The job's work is ctg_job_process(): it verifies that every instance the
 * study's index rows name is on disk with the recorded size, then builds
 * the study's CT volume (primary series, Hounsfield units, canonical
 * orientation) as inference will use it.  A study that cannot become a
 * volume (no usable CT series, gantry tilt, missing slices, JPEG 2000)
 * fails at once with the reason: retrying cannot help.  The model runs
 * from here once it exists.
 *
 * Threading: one thread per worker; the pool's mutex/condvar carry wake-ups
 * and the stop flag.  The store handle is thread-safe.
 */
#include "daemon.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct ctg_workers {
    st_store *st;
    int n;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
    unsigned wake_seq;
    double lease;
    st_retry_policy pol;
    char host[64];
    /* The job each worker runs (0: idle) and its owner name, for the
     * heartbeat thread that renews their leases. */
    int64_t *running;
    char (*owners)[128];
    pthread_t heartbeat;
    int have_heartbeat;
};

typedef struct worker_arg {
    ctg_workers *pool;
    int index;
} worker_arg;

/* ---- the job's work ---------------------------------------------------------- */

typedef struct check_ctx {
    const char *spool;
    int files, missing;
    char first_missing[256];
    char **paths; /* absolute paths of present files, for the volume */
    int npaths, cap;
    int nomem;
} check_ctx;

static int check_row(void *ud, int ncol, const char **names, const char **vals)
{
    check_ctx *c = ud;
    (void)names;
    if (ncol < 2 || !vals[0] || !vals[1]) return 0;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", c->spool, vals[0]);
    struct stat sb;
    c->files++;
    if (stat(path, &sb) != 0 || (long long)sb.st_size != atoll(vals[1])) {
        if (!c->missing++) snprintf(c->first_missing, sizeof c->first_missing, "%s", vals[0]);
        return 0;
    }
    if (c->npaths == c->cap) {
        int cap = c->cap ? 2 * c->cap : 256;
        char **p = realloc(c->paths, (size_t)cap * sizeof *p);
        if (!p) {
            c->nomem = 1;
            return 0;
        }
        c->paths = p;
        c->cap = cap;
    }
    if (!(c->paths[c->npaths] = strdup(path))) {
        c->nomem = 1;
        return 0;
    }
    c->npaths++;
    return 0;
}

int ctg_job_process(st_store *st, const st_job *job, char *why, size_t n)
{
    check_ctx c;
    memset(&c, 0, sizeof c);
    c.spool = st_spool_dir(st);
    ctg_vol *vol = NULL;
    dcm_vol_info info;
    memset(&info, 0, sizeof info);
    int r = st_study_files(st, job->study_uid, check_row, &c);
    if (r < 0) {
        snprintf(why, n, "index query failed");
        goto done;
    }
    if (c.nomem) {
        snprintf(why, n, "out of memory listing the study's files");
        r = CTG_ENOMEM;
        goto done;
    }
    if (c.files == 0) {
        snprintf(why, n, "study has no instances");
        r = CTG_ENOTFOUND;
        goto done;
    }
    if (c.missing) {
        snprintf(why, n, "%d of %d spool file(s) missing or changed, e.g. %s", c.missing,
                 c.files, c.first_missing);
        r = CTG_EIO;
        goto done;
    }
    dcm_vol_opts opts = {0};
    double t0 = ctg_mono();
    if ((r = dcm_series_volume((const char *const *)c.paths, (size_t)c.npaths, &opts, &vol,
                               &info, why, n)) < 0)
        goto done;
    double sp[3];
    ctg_vol_spacing(vol, sp);
    log_info("job %lld: volume from series %s (%d slices%s): %dx%dx%d of %.3gx%.3gx%.3g mm "
             "in %.2f s", (long long)job->id, info.series_uid, info.nslices,
             info.enhanced ? ", Enhanced CT" : "", vol->nx, vol->ny, vol->nz, sp[0], sp[1],
             sp[2], ctg_mono() - t0);
    if (info.skipped[0]) log_info("job %lld: not used: %s", (long long)job->id, info.skipped);
done:
    ctg_vol_free(vol);
    dcm_vol_info_free(&info);
    for (int i = 0; i < c.npaths; i++) free(c.paths[i]);
    free(c.paths);
    return r;
}

/* ---- the threads ------------------------------------------------------------- */

static void *worker_main(void *arg)
{
    worker_arg *wa = arg;
    ctg_workers *w = wa->pool;
    char owner[128];
    int me = wa->index;
    snprintf(owner, sizeof owner, "%s/%d/w%d", w->host, (int)getpid(), me);
    free(wa);
    pthread_mutex_lock(&w->mu);
    snprintf(w->owners[me], sizeof w->owners[me], "%s", owner);
    pthread_mutex_unlock(&w->mu);

    pthread_mutex_lock(&w->mu);
    while (!w->stop) {
        pthread_mutex_unlock(&w->mu);
        st_job job;
        int got = st_job_claim(w->st, owner, ctg_now(), w->lease, &job);
        if (got == 1) {
            char why[512] = "";
            pthread_mutex_lock(&w->mu);
            w->running[me] = job.id;
            pthread_mutex_unlock(&w->mu);
            double t0 = ctg_mono();
            log_info("worker %s: job %lld (study %s, generation %d) started", owner,
                     (long long)job.id, job.study_uid, job.generation);
            int r = ctg_job_process(w->st, &job, why, sizeof why);
            pthread_mutex_lock(&w->mu);
            w->running[me] = 0;
            pthread_mutex_unlock(&w->mu);
            double now = ctg_now();
            if (r == 0) {
                int d = st_job_done(w->st, job.id, owner, now);
                if (d < 0)
                    log_warn("worker %s: job %lld finished but %s", owner,
                             (long long)job.id, ctg_strerror(d));
                else
                    log_info("worker %s: job %lld done in %.2f s", owner, (long long)job.id,
                             ctg_mono() - t0);
            } else {
                int final = 0;
                /* Bad input fails for good at once; other errors (disk,
                 * memory) may pass and are retried with back-off. */
                st_retry_policy pol = w->pol;
                if (r == CTG_EREJECT || r == CTG_EFORMAT) pol.max_attempts = 0;
                int d = st_job_fail(w->st, job.id, owner, why, now, &pol, &final);
                if (d < 0)
                    log_warn("worker %s: job %lld failed (%s) but %s", owner,
                             (long long)job.id, why, ctg_strerror(d));
                else
                    log_warn("worker %s: job %lld %s: %s", owner, (long long)job.id,
                             final ? "failed for good" : "failed, will retry", why);
            }
            pthread_mutex_lock(&w->mu);
            continue;
        }
        if (got < 0) log_warn("worker %s: claiming a job failed", owner);
        /* Nothing to do: sleep until woken, or a second (back-off expiry). */
        pthread_mutex_lock(&w->mu);
        if (w->stop) break;
        unsigned seq = w->wake_seq;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        while (!w->stop && seq == w->wake_seq) {
            if (pthread_cond_timedwait(&w->cv, &w->mu, &ts) != 0) break;
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* Renews the lease of every running job a third of the way into it, so a
 * long job keeps its lease while a dead worker's job expires. */
static void *heartbeat_main(void *arg)
{
    ctg_workers *w = arg;
    pthread_mutex_lock(&w->mu);
    while (!w->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        double step = w->lease / 3 < 1 ? 1 : w->lease / 3;
        ts.tv_sec += (time_t)step;
        pthread_cond_timedwait(&w->cv, &w->mu, &ts);
        for (int i = 0; i < w->n && !w->stop; i++) {
            int64_t id = w->running[i];
            if (!id) continue;
            char owner[128];
            snprintf(owner, sizeof owner, "%s", w->owners[i]);
            pthread_mutex_unlock(&w->mu);
            int r = st_job_renew(w->st, id, owner, ctg_now(), w->lease);
            if (r < 0)
                log_warn("worker %s: renewing the lease of job %lld: %s", owner,
                         (long long)id, ctg_strerror(r));
            pthread_mutex_lock(&w->mu);
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

int ctg_workers_start(const ctg_config *cfg, st_store *st, ctg_workers **out)
{
    ctg_workers *w = calloc(1, sizeof *w);
    if (!w) return CTG_ENOMEM;
    w->st = st;
    w->n = cfg->workers;
    w->lease = cfg->lease_seconds;
    w->pol.max_attempts = cfg->max_attempts;
    w->pol.base_seconds = cfg->retry_base_seconds;
    w->pol.max_seconds = cfg->retry_max_seconds;
    gethostname(w->host, sizeof w->host - 1);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    size_t cnt = (size_t)(w->n ? w->n : 1);
    w->threads = calloc(cnt, sizeof *w->threads);
    w->running = calloc(cnt, sizeof *w->running);
    w->owners = calloc(cnt, sizeof *w->owners);
    if (!w->threads || !w->running || !w->owners) {
        free(w->threads);
        free(w->running);
        free(w->owners);
        free(w);
        return CTG_ENOMEM;
    }
    for (int i = 0; i < w->n; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (!wa) {
            w->n = i;
            ctg_workers_stop(w);
            return CTG_ENOMEM;
        }
        wa->pool = w;
        wa->index = i;
        if (pthread_create(&w->threads[i], NULL, worker_main, wa) != 0) {
            free(wa);
            w->n = i;
            ctg_workers_stop(w);
            return CTG_ENOMEM;
        }
    }
    if (w->n > 0 && pthread_create(&w->heartbeat, NULL, heartbeat_main, w) == 0)
        w->have_heartbeat = 1;
    *out = w;
    return 0;
}

void ctg_workers_wake(ctg_workers *w)
{
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    w->wake_seq++;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

void ctg_workers_stop(ctg_workers *w)
{
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    for (int i = 0; i < w->n; i++) pthread_join(w->threads[i], NULL);
    if (w->have_heartbeat) pthread_join(w->heartbeat, NULL);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w->threads);
    free(w->running);
    free(w->owners);
    free(w);
}
