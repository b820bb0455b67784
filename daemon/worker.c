/*
 * worker.c - the job workers of ctglipd.
 *
 * Each worker thread claims one queued job at a time with a lease, runs it,
 * and records done or a failed attempt (the store applies retry back-off and
 * the attempt limit).  While a job runs, a heartbeat renews its lease, so
 * only a worker that died loses its job to lease expiry.
 *
 * The job's work is ctg_job_process(): it verifies that every instance the
 * study's index rows name is on disk with the recorded size, builds the
 * study's CT volume (primary series, Hounsfield units, canonical
 * orientation), runs the model (core/analysis.h) and writes the SEG and
 * the TID 1500 SR into <reports>/<StudyUID>/<job id>/ (daemon/report.c),
 * naming the study's previous SR, if any, as predecessor.  A study that
 * cannot become a volume (no usable CT series, gantry tilt, missing
 * slices, JPEG 2000) or in which the model finds no organ fails at once
 * with the reason: retrying cannot help.  Without a configured model the
 * job stops after the volume.
 *
 * Devices ([model] device, gpus, precision): on the CPU there are
 * [queue] workers threads; on GPUs one worker per GPU, each creating its
 * own cu_ctx on its own thread, with the model's parameters uploaded once
 * per worker (an_ctx_new_gpu) and again after a model switch.  A job whose
 * inference fails in the device fails with the device's reason and is
 * retried like any other transient failure; the worker then drops its
 * device copy, resets (or re-creates) its cu_ctx and uploads again before
 * its next job.  A worker whose device cannot be opened claims no jobs and
 * tries again with back-off; the daemon itself never exits for a device.
 *
 * Test hooks, not for admins (environment, read at start):
 *   CTGLIP_CUDA_EMULATE=1   device = cuda (or auto) uses CU_EMULATE
 *                           contexts: the GPU code path run on the host,
 *                           so CI without a GPU covers the worker's
 *                           device plumbing;
 *   CTGLIP_CUDA_FAIL_AFTER=N  the Nth GPU job of the process fails as a
 *                           device error would (reason "injected GPU
 *                           fault"), with the context re-created after;
 *   CTGLIP_CUDA_BREAK_COPY=1  (emulated contexts only, core/analysis.c) the
 *                           device copy of the model is broken before its
 *                           self-test, which must then fail.
 *
 * Threading: one thread per worker, each with its own model context
 * (activations, and on a GPU its cu_ctx and the model's device copy); the
 * model, the text encoder and the prompt embeddings are shared read-only
 * through one an_engine, whose findings list a SIGHUP may swap while jobs
 * run.  The pool's mutex/condvar carry wake-ups and the stop flag.  The
 * store handle is thread-safe.
 */
#include "daemon.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/ops.h"
#include "cuda/cu.h"
#include "cuda/cuops.h"
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
    /* The model (NULL: none configured), shared by reference: a new model
     * file (published by ctglip-retrain or rolled back) is loaded beside
     * the old one and each worker moves to it before its next job; the old
     * one is closed when its last job ends.  Under mu. */
    struct eng_ref *cur;
    char model_path[PATH_MAX];   /* as resolved at start */
    struct stat model_st;        /* the file cur was loaded from */
    an_opts eopts;               /* how to open it again (strings below) */
    char findings_path[PATH_MAX], vocab_path[PATH_MAX];
    char model_name[256];
    char reports[PATH_MAX];
    int ops_threads;        /* ops threads per worker */
    /* Devices: dev[i] is worker i's GPU (CU_EMULATE in the test
     * emulation), or WK_CPU. */
    int *dev;
    int bf16;               /* activations on the GPU in bf16 */
    int fail_after;         /* CTGLIP_CUDA_FAIL_AFTER (0: off) */
    int gpu_auto;           /* device = auto: a GPU that fails its self-test gives way to the CPU */
    int gpu_jobs;           /* GPU jobs started, for the fault hook (atomic) */
    int switching;          /* a worker is loading a new model file (under mu) */
    /* Where finished reports go (reloadable, under mu) and whom to tell. */
    char outbox[PATH_MAX];
    char dests[CTG_MAX_DEST][64];
    int ndests;
    void (*on_export)(void *);
    void *on_export_ud;
};

#define WK_CPU (-100) /* dev[] of a CPU worker */

typedef struct eng_ref {
    an_engine *e;
    int refs;                    /* under the pool's mu */
} eng_ref;

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

static int low_confidence(const an_result *r)
{
    int k = 0;
    for (int i = 0; i < r->norgans; i++) k += r->organs[i].low_confidence;
    return k;
}

static void set_destinations(ctg_workers *w, const ctg_config *cfg)
{
    pthread_mutex_lock(&w->mu);
    snprintf(w->outbox, sizeof w->outbox, "%s", cfg->outbox);
    w->ndests = cfg->n_destinations;
    for (int i = 0; i < cfg->n_destinations; i++)
        snprintf(w->dests[i], sizeof w->dests[i], "%s", cfg->destinations[i].name);
    pthread_mutex_unlock(&w->mu);
}

void ctg_workers_set_export_hook(ctg_workers *w, void (*fn)(void *), void *ud)
{
    pthread_mutex_lock(&w->mu);
    w->on_export = fn;
    w->on_export_ud = ud;
    pthread_mutex_unlock(&w->mu);
}

/* Puts a report file into the outbox under a name of its own (a hard link
 * to the kept copy, or a copy on another file system), durably. */
static int outbox_put(const char *src, const char *dst, char *why, size_t n)
{
    unlink(dst); /* a leftover of an attempt that failed before the index knew it */
    if (link(src, dst) == 0) return 0;
    FILE *in = fopen(src, "rb");
    int fd = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int rc = in && fd >= 0 ? 0 : ctg_errno(errno);
    char buf[1 << 16];
    size_t got;
    while (rc == 0 && (got = fread(buf, 1, sizeof buf, in)) > 0) rc = ctg_write_all(fd, buf, got);
    if (rc == 0 && in && ferror(in)) rc = CTG_EIO;
    if (rc == 0 && fsync(fd) != 0) rc = ctg_errno(errno);
    if (in) fclose(in);
    if (fd >= 0 && close(fd) != 0 && rc == 0) rc = ctg_errno(errno);
    if (rc < 0) {
        unlink(dst);
        snprintf(why, n, "outbox %s: %s", dst, ctg_strerror(rc));
    }
    return rc;
}

/* Hands a job's SEG and SR (the SEG first: the SR refers to it) to every
 * configured destination through the outbox. */
static int ctg_export_report(ctg_workers *w, const st_job *job, const ctg_analysis *an, char *why,
                             size_t n)
{
    char outbox[PATH_MAX], dests[CTG_MAX_DEST][64];
    pthread_mutex_lock(&w->mu);
    int nd = w->ndests;
    snprintf(outbox, sizeof outbox, "%s", w->outbox);
    memcpy(dests, w->dests, sizeof dests);
    void (*hook)(void *) = w->on_export;
    void *ud = w->on_export_ud;
    pthread_mutex_unlock(&w->mu);
    if (nd == 0) {
        log_info("job %lld: no [destination] configured; the report stays in %s", (long long)job->id,
                 an->rep.sr_path);
        return 0;
    }
    int rc = ctg_mkdirs(outbox);
    if (rc < 0) {
        snprintf(why, n, "outbox %s: %s", outbox, ctg_strerror(rc));
        return rc;
    }
    char seg[PATH_MAX], sr[PATH_MAX];
    if (snprintf(seg, sizeof seg, "%s/%lld-seg.dcm", outbox, (long long)job->id) >= (int)sizeof seg ||
        snprintf(sr, sizeof sr, "%s/%lld-sr.dcm", outbox, (long long)job->id) >= (int)sizeof sr) {
        snprintf(why, n, "outbox path too long");
        return CTG_EINVAL;
    }
    if ((rc = outbox_put(an->rep.seg_path, seg, why, n)) < 0 ||
        (rc = outbox_put(an->rep.sr_path, sr, why, n)) < 0)
        return rc;
    if ((rc = ctg_fsync_dir(outbox)) < 0) {
        snprintf(why, n, "fsync %s: %s", outbox, ctg_strerror(rc));
        return rc;
    }
    st_export_file files[2] = {
        {seg, "1.2.840.10008.5.1.4.1.1.66.4", an->rep.seg_uid},
        {sr, "1.2.840.10008.5.1.4.1.1.88.34", an->rep.sr_uid},
    };
    const char *dp[CTG_MAX_DEST];
    for (int i = 0; i < nd; i++) dp[i] = dests[i];
    rc = st_export_add(w->st, job->id, job->study_uid, files, 2, dp, nd, ctg_now());
    if (rc < 0) {
        snprintf(why, n, "queueing the report for export: %s", ctg_strerror(rc));
        return rc;
    }
    log_info("job %lld: SEG and SR queued for %d destination(s)", (long long)job->id, nd);
    if (hook) hook(ud);
    return 0;
}

/* The SR of the newest earlier job of this study that wrote one, for the
 * Predecessor Documents of the new SR ("" when none). */
static void find_predecessor(const char *study_dir, int64_t job_id, char *out, size_t n)
{
    out[0] = 0;
    DIR *d = opendir(study_dir);
    if (!d) return;
    long long best = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        char *end;
        long long id = strtoll(e->d_name, &end, 10);
        if (end == e->d_name || *end || id <= best || id >= (long long)job_id) continue;
        char p[PATH_MAX];
        struct stat sb;
        if (snprintf(p, sizeof p, "%s/%s/sr.dcm", study_dir, e->d_name) >= (int)sizeof p ||
            stat(p, &sb) != 0)
            continue;
        best = id;
        snprintf(out, n, "%s", p);
    }
    closedir(d);
}

int ctg_job_process(ctg_workers *w, an_engine *eng, an_ctx *ctx, const st_job *job, char *why,
                    size_t n)
{
    st_store *st = w->st;
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
    double t0 = ctg_mono();
    if (!eng || !ctx) {
        /* No model configured: the volume is as far as a job goes. */
        dcm_vol_opts opts = {0};
        if ((r = dcm_series_volume((const char *const *)c.paths, (size_t)c.npaths, &opts, &vol,
                                   &info, why, n)) < 0)
            goto done;
        double sp[3];
        ctg_vol_spacing(vol, sp);
        log_info("job %lld: volume from series %s (%d slices%s): %dx%dx%d of %.3gx%.3gx%.3g mm "
                 "in %.2f s; no model configured", (long long)job->id, info.series_uid,
                 info.nslices, info.enhanced ? ", Enhanced CT" : "", vol->nx, vol->ny, vol->nz,
                 sp[0], sp[1], sp[2], ctg_mono() - t0);
        if (info.skipped[0]) log_info("job %lld: not used: %s", (long long)job->id, info.skipped);
        goto done;
    }

    char study_dir[PATH_MAX], dir[PATH_MAX], pred[PATH_MAX];
    if (snprintf(study_dir, sizeof study_dir, "%s/%s", w->reports, job->study_uid) >=
            (int)sizeof study_dir ||
        snprintf(dir, sizeof dir, "%s/%lld", study_dir, (long long)job->id) >= (int)sizeof dir) {
        snprintf(why, n, "report folder path too long");
        r = CTG_EINVAL;
        goto done;
    }
    find_predecessor(study_dir, job->id, pred, sizeof pred);
    ctg_analyze_opts ao = {.model_name = w->model_name, .dir = dir,
                           .predecessor_sr = pred[0] ? pred : NULL};
    ctg_analysis an;
    if ((r = ctg_analyze_study(eng, ctx, (const char *const *)c.paths, c.npaths, &ao, &an, why,
                               n)) < 0)
        goto done;
    double sp[3];
    ctg_vol_spacing(an.vol, sp);
    log_info("job %lld: series %s (%d slices%s, %dx%dx%d of %.3gx%.3gx%.3g mm): %d organ(s), "
             "%d finding(s) present, %d low-confidence organ(s)",
             (long long)job->id, an.info.series_uid, an.info.nslices,
             an.info.enhanced ? ", Enhanced CT" : "", an.vol->nx, an.vol->ny, an.vol->nz, sp[0],
             sp[1], sp[2], an.res.norgans, an_result_positives(&an.res), low_confidence(&an.res));
    if (an.info.skipped[0]) log_info("job %lld: not used: %s", (long long)job->id, an.info.skipped);
    log_info("job %lld: SR %s, SEG %s%s%s; load %.2f s, resample %.2f s, model %.2f s, "
             "measure %.2f s, score %.3f s, SEG %.2f s, SR %.2f s",
             (long long)job->id, an.rep.sr_path, an.rep.seg_path, pred[0] ? ", replaces " : "",
             pred[0] ? pred : "", an.t_load, an.res.t_resample, an.res.t_model,
             an.res.t_measure, an.res.t_score, an.rep.t_seg, an.rep.t_sr);
    r = ctg_export_report(w, job, &an, why, n);
    ctg_analysis_free(&an);
done:
    ctg_vol_free(vol);
    dcm_vol_info_free(&info);
    for (int i = 0; i < c.npaths; i++) free(c.paths[i]);
    free(c.paths);
    return r;
}

/* ---- the threads ------------------------------------------------------------- */

static void check_model(ctg_workers *w);
static void eng_release(ctg_workers *w, eng_ref *r);

/* One line on the device of a worker: "cuda:0 NVIDIA H100 ..., bf16". */
static void describe_device(const ctg_workers *w, int dev, char *out, size_t n)
{
    if (dev == WK_CPU) {
        snprintf(out, n, "cpu, %d thread(s)", w->ops_threads);
    } else if (dev == CU_EMULATE) {
        snprintf(out, n, "cuda emulated on the host (CTGLIP_CUDA_EMULATE, tests only), %s",
                 w->bf16 ? "bf16" : "fp32");
    } else {
        char name[200] = "";
        if (cu_device_name(dev, name, (int)sizeof name) < 0) snprintf(name, sizeof name, "?");
        snprintf(out, n, "cuda:%d %s, %s", dev, name, w->bf16 ? "bf16" : "fp32");
    }
}

/* "GPU 0", or "emulated GPU". */
static const char *gpu_name(int dev, char *buf, size_t n)
{
    if (dev == CU_EMULATE) snprintf(buf, n, "emulated GPU");
    else snprintf(buf, n, "GPU %d", dev);
    return buf;
}

/* A GPU worker's device context, made on the worker's own thread (a
 * cu_ctx belongs to the thread that uses it).  NULL with the reason
 * logged. */
static cu_ctx *open_device(const char *owner, int dev)
{
    char why[512] = "", gn[32];
    cu_ctx *gc = NULL;
    int rc = cu_ctx_new(dev, &gc, why, sizeof why);
    if (rc < 0) {
        log_error("worker %s: cannot open the %s: %s; it takes no jobs until it opens", owner,
                  gpu_name(dev, gn, sizeof gn), why[0] ? why : ctg_strerror(rc));
        return NULL;
    }
    return gc;
}

/* Test hook: 1 when this GPU job is the CTGLIP_CUDA_FAIL_AFTER'th. */
static int fault_due(ctg_workers *w)
{
    return w->fail_after > 0 &&
           __atomic_add_fetch(&w->gpu_jobs, 1, __ATOMIC_RELAXED) == w->fail_after;
}

static void *worker_main(void *arg)
{
    worker_arg *wa = arg;
    ctg_workers *w = wa->pool;
    char owner[128], desc[300];
    int me = wa->index;
    an_ctx *ctx = NULL;
    eng_ref *mine = NULL;
    int dev = w->dev[me];
    cu_ctx *gc = NULL;
    double dev_retry = 0, dev_backoff = 5;
    snprintf(owner, sizeof owner, "%s/%d/w%d", w->host, (int)getpid(), me);
    free(wa);
    pthread_mutex_lock(&w->mu);
    snprintf(w->owners[me], sizeof w->owners[me], "%s", owner);
    pthread_mutex_unlock(&w->mu);
    op_set_threads(w->ops_threads);
    describe_device(w, dev, desc, sizeof desc);
    if (dev != WK_CPU && w->cur) {
        gc = open_device(owner, dev);
        if (gc) log_info("worker %d: %s", me, desc);
        else dev_retry = ctg_mono() + dev_backoff;
    } else {
        log_info("worker %d: %s", me, desc);
    }

    pthread_mutex_lock(&w->mu);
    while (!w->stop) {
        pthread_mutex_unlock(&w->mu);
        st_job job;
        /* A GPU worker without its device claims nothing, and tries to
         * open it again with back-off (up to a minute). */
        int got = 0;
        if (dev != WK_CPU && w->cur && !gc && ctg_mono() >= dev_retry) {
            if ((gc = open_device(owner, dev))) {
                log_info("worker %d: %s (device open again)", me, desc);
                dev_backoff = 5;
            } else {
                dev_backoff = dev_backoff * 2 > 60 ? 60 : dev_backoff * 2;
                dev_retry = ctg_mono() + dev_backoff;
            }
        }
        if (dev == WK_CPU || !w->cur || gc) got = st_job_claim(w->st, owner, ctg_now(), w->lease, &job);
        if (got == 1) {
            char why[512] = "";
            pthread_mutex_lock(&w->mu);
            w->running[me] = job.id;
            pthread_mutex_unlock(&w->mu);
            double t0 = ctg_mono();
            log_info("worker %s: job %lld (study %s, generation %d) started", owner,
                     (long long)job.id, job.study_uid, job.generation);
            /* Between jobs: move to the current model if it changed. */
            if (w->cur) check_model(w);
            pthread_mutex_lock(&w->mu);
            if (mine != w->cur) {
                eng_ref *old = mine;
                mine = w->cur;
                if (mine) mine->refs++;
                pthread_mutex_unlock(&w->mu);
                an_ctx_free(ctx);
                ctx = NULL;
                eng_release(w, old);
            } else {
                pthread_mutex_unlock(&w->mu);
            }
            /* The model's context: activations on the CPU, or the
             * parameters uploaded to this worker's GPU (again after a
             * model switch or a device failure). */
            int dev_failed = 0, r = 0;
            if (mine && !ctx) {
                int cr;
                if (gc) {
                    double tu = ctg_mono();
                    cr = an_ctx_new_gpu(mine->e, gc, w->bf16, &ctx, why, sizeof why);
                    if (cr == 0) {
                        log_info("worker %d: model %.16s on the GPU in %.2f s (self-test "
                                 "passed)", me, an_model_identity(mine->e), ctg_mono() - tu);
                    } else if (w->gpu_auto && !strncmp(why, "self-test:", 10)) {
                        /* The device computes something other than the
                         * CPU reference: with device = auto this worker
                         * gives the GPU up for good and runs on the CPU. */
                        log_error("worker %d: %s; device = auto, so this worker runs the model "
                                  "on the CPU from now on", me, why);
                        cu_ctx_free(gc);
                        gc = NULL;
                        dev = WK_CPU;
                        pthread_mutex_lock(&w->mu);
                        w->dev[me] = WK_CPU;
                        pthread_mutex_unlock(&w->mu);
                        describe_device(w, dev, desc, sizeof desc);
                        log_info("worker %d: %s", me, desc);
                        why[0] = 0;
                        cr = an_ctx_new(mine->e, &ctx);
                        if (cr < 0)
                            snprintf(why, sizeof why, "no model context: %s", ctg_strerror(cr));
                    } else {
                        dev_failed = 1;
                    }
                } else {
                    cr = an_ctx_new(mine->e, &ctx);
                    if (cr < 0) snprintf(why, sizeof why, "no model context: %s", ctg_strerror(cr));
                }
                if (cr < 0) {
                    log_error("worker %s: no model context (%s): the job fails and is retried",
                              owner, why);
                    r = cr == CTG_EREJECT || cr == CTG_EFORMAT ? CTG_EIO : cr;
                }
            }
            if (r == 0 && gc && fault_due(w)) {
                snprintf(why, sizeof why, "GPU inference: injected GPU fault "
                         "(CTGLIP_CUDA_FAIL_AFTER=%d, a test hook)", w->fail_after);
                r = CTG_EIO;
                dev_failed = 1;
            }
            if (r == 0) {
                r = ctg_job_process(w, mine ? mine->e : NULL, ctx, &job, why, sizeof why);
                if (r < 0 && an_ctx_device_failed(ctx)) dev_failed = 1;
            }
            if (r == CTG_ENOMEM && !why[0]) snprintf(why, sizeof why, "out of memory");
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
                 * memory, the device) may pass and are retried with
                 * back-off. */
                st_retry_policy pol = w->pol;
                if (!dev_failed && (r == CTG_EREJECT || r == CTG_EFORMAT)) pol.max_attempts = 0;
                int d = st_job_fail(w->st, job.id, owner, why, now, &pol, &final);
                if (d < 0)
                    log_warn("worker %s: job %lld failed (%s) but %s", owner,
                             (long long)job.id, why, ctg_strerror(d));
                else
                    log_warn("worker %s: job %lld %s: %s", owner, (long long)job.id,
                             final ? "failed for good" : "failed, will retry", why);
            }
            if (dev_failed && gc) {
                /* The context may hold a sticky error: drop everything made
                 * on it and start the device afresh before the next job. */
                an_ctx_free(ctx);
                ctx = NULL;
                char gn[32];
                int rr = cu_ctx_reset(gc);
                if (rr < 0) {
                    log_error("worker %s: resetting the %s failed (%s); opening it again", owner,
                              gpu_name(dev, gn, sizeof gn), cu_ctx_error(gc));
                    cu_ctx_free(gc);
                    gc = open_device(owner, dev);
                    if (!gc) dev_retry = ctg_mono() + dev_backoff;
                } else {
                    log_info("worker %s: %s context reset after a device error", owner,
                             gpu_name(dev, gn, sizeof gn));
                }
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
    an_ctx_free(ctx);
    cu_ctx_free(gc);
    eng_release(w, mine);
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

/* A configured path as given when it exists, else under the installed data
 * folders (ctg_data_path). */
static const char *resolve(const char *p, char *buf, size_t n)
{
    if (p[0] == '/' || access(p, R_OK) == 0) return p;
    return ctg_data_path(p, buf, n);
}

static int text_of(const ctg_config *cfg)
{
    return cfg->model_text[0] ? zs_text_parse(cfg->model_text) : -1;
}

/* Opens the model file at w->eopts into a new reference (refs 0). */
static eng_ref *eng_open(ctg_workers *w, struct stat *st)
{
    char why[1024] = "";
    eng_ref *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    double t0 = ctg_mono();
    /* The file's identity before reading: a file replaced during the read
     * is then seen as changed again at the next check. */
    if (stat(w->eopts.model, st) != 0) memset(st, 0, sizeof *st);
    if (an_engine_open(&w->eopts, &r->e, why, sizeof why) < 0) {
        log_error("workers: cannot open the model: %s", why);
        free(r);
        return NULL;
    }
    const mdl_model *m = an_model(r->e);
    log_info("workers: model %s (%s), %d organ classes, run at %.3g mm, %d thread(s) per worker; "
             "findings %s; loaded in %.2f s",
             w->eopts.model, an_model_identity(r->e), m->cfg.n_classes,
             m->spacing[0] > 0 ? m->spacing[0] : 3.0, w->ops_threads, w->eopts.findings,
             ctg_mono() - t0);
    return r;
}

/* Drops one reference; the last one closes the engine. */
static void eng_release(ctg_workers *w, eng_ref *r)
{
    if (!r) return;
    pthread_mutex_lock(&w->mu);
    int last = --r->refs == 0 && r != w->cur;
    pthread_mutex_unlock(&w->mu);
    if (last) {
        log_info("workers: model %.16s closed (no job uses it any more)", an_model_identity(r->e));
        an_engine_close(r->e);
        free(r);
    }
}

static int same_file(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* A model file replaced on disk (publish, rollback) is loaded and becomes
 * current for the next jobs; a file that cannot be loaded leaves the
 * running model in place (logged once per change). */
static void check_model(ctg_workers *w)
{
    struct stat now;
    pthread_mutex_lock(&w->mu);
    if (w->switching || stat(w->eopts.model, &now) != 0 || same_file(&now, &w->model_st)) {
        pthread_mutex_unlock(&w->mu);
        return;
    }
    w->switching = 1;
    pthread_mutex_unlock(&w->mu);
    struct stat st;
    eng_ref *r = eng_open(w, &st);
    pthread_mutex_lock(&w->mu);
    w->switching = 0;
    w->model_st = st;
    eng_ref *old = NULL;
    if (r && strcmp(an_model_identity(r->e), an_model_identity(w->cur->e)) != 0) {
        old = w->cur;
        w->cur = r;
        r = NULL;
        log_info("workers: switched to model %.16s (was %.16s); running jobs finish on the old one",
                 an_model_identity(w->cur->e), an_model_identity(old->e));
        if (old->refs == 0) {
            an_engine_close(old->e);
            free(old);
        }
    } else if (!r) {
        log_error("workers: the new model file %s cannot be used; keeping %.16s",
                  w->eopts.model, an_model_identity(w->cur->e));
    }
    pthread_mutex_unlock(&w->mu);
    if (r) { /* the same model written again */
        an_engine_close(r->e);
        free(r);
    }
}

/* Which device each worker uses ([model] device, gpus, precision): one
 * worker per GPU when the model runs on GPUs, else [queue] workers CPU
 * workers.  device = cuda without a usable GPU (or naming a GPU that is
 * not there) stops the start: the admin asked for it.  device = auto runs
 * on the CPU then.  A GPU's usability is probed with a context made and
 * freed here; each worker makes its own on its thread. */
static int plan_devices(ctg_workers *w, const ctg_config *cfg)
{
    int ids[CTG_MAX_GPUS], k = 0;
    char why[512] = "";
    const char *emu = getenv("CTGLIP_CUDA_EMULATE"), *fa = getenv("CTGLIP_CUDA_FAIL_AFTER");
    int emulate = emu && !strcmp(emu, "1");
    int want_gpu = strcmp(cfg->device, "cpu") != 0 && cfg->model_path[0] && cfg->workers > 0;
    w->n = cfg->workers;
    w->bf16 = cfg->model_bf16;
    w->fail_after = fa ? atoi(fa) : 0;
    w->gpu_auto = !strcmp(cfg->device, "auto");
    if (want_gpu) {
        int count = emulate ? CTG_MAX_GPUS : cu_device_count();
        if (count <= 0) {
            snprintf(why, sizeof why, "no usable CUDA device%s",
                     cu_built_with_cuda() ? "" : " (built without CUDA)");
        } else if (cfg->n_gpus == 0) {
            for (int i = 0; i < count && k < (emulate ? 1 : CTG_MAX_GPUS); i++) ids[k++] = i;
        } else {
            for (int i = 0; i < cfg->n_gpus; i++) {
                if (cfg->gpus[i] >= count) {
                    log_error("workers: [model] gpus names GPU %d, but there are %d (0..%d)",
                              cfg->gpus[i], count, count - 1);
                    return CTG_ECONFIG;
                }
                ids[k++] = cfg->gpus[i];
            }
        }
        if (k > 0 && !emulate) {
            cu_ctx *probe = NULL;
            int rc = cu_ctx_new(ids[0], &probe, why, sizeof why);
            cu_ctx_free(probe);
            if (rc < 0) {
                if (!why[0]) snprintf(why, sizeof why, "%s", ctg_strerror(rc));
                k = 0;
            }
        }
        if (k == 0) {
            if (!strcmp(cfg->device, "cuda")) {
                log_error("workers: device = cuda, but %s", why);
                return CTG_ECONFIG;
            }
            log_info("workers: device = auto: %s; the model runs on the CPU", why);
        }
    }
    if (k > 0) w->n = k;
    w->dev = calloc((size_t)(w->n ? w->n : 1), sizeof *w->dev);
    if (!w->dev) return CTG_ENOMEM;
    for (int i = 0; i < w->n; i++) w->dev[i] = k > 0 ? (emulate ? CU_EMULATE : ids[i]) : WK_CPU;
    /* The machine's cores shared by the workers unless set (on GPUs they
     * only read, resample and write). */
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int nw = w->n > 0 ? w->n : 1;
    w->ops_threads = cfg->model_threads ? cfg->model_threads
                                        : (int)(cores / nw > 0 ? cores / nw : 1);
    if (w->n > 0)
        log_info("workers: %d %s worker(s)%s", w->n, k > 0 ? "GPU" : "CPU",
                 k > 0 ? (w->bf16 ? ", bf16" : ", fp32") : "");
    return 0;
}

static int open_model(ctg_workers *w, const ctg_config *cfg)
{
    if (!cfg->model_path[0] || cfg->workers == 0) {
        log_info("workers: no model configured; jobs build the CT volume only");
        return 0;
    }
    char fb[PATH_MAX], vb[PATH_MAX];
    snprintf(w->model_path, sizeof w->model_path, "%s", resolve(cfg->model_path, fb, sizeof fb));
    snprintf(w->findings_path, sizeof w->findings_path, "%s",
             resolve(cfg->findings_path, fb, sizeof fb));
    snprintf(w->vocab_path, sizeof w->vocab_path, "%s", resolve(cfg->vocab_path, vb, sizeof vb));
    w->eopts = (an_opts){
        .model = w->model_path,
        .findings = w->findings_path,
        .vocab = w->vocab_path,
        .text = text_of(cfg),
        .overlap = (float)cfg->model_overlap,
    };
    if (!(w->cur = eng_open(w, &w->model_st))) return CTG_EINVAL;
    ctg_model_name(w->model_path, w->model_name, sizeof w->model_name);
    return 0;
}

void ctg_workers_reload(ctg_workers *w, const ctg_config *cfg)
{
    if (!w) return;
    set_destinations(w, cfg);
    if (!w->cur) return;
    char fb[PATH_MAX], why[1024] = "";
    const char *f = resolve(cfg->findings_path, fb, sizeof fb);
    pthread_mutex_lock(&w->mu);
    snprintf(w->findings_path, sizeof w->findings_path, "%s", f);
    w->eopts.text = text_of(cfg);
    w->eopts.overlap = (float)cfg->model_overlap;
    eng_ref *r = w->cur;
    r->refs++;
    pthread_mutex_unlock(&w->mu);
    an_set_overlap(r->e, (float)cfg->model_overlap);
    if (an_reload_findings(r->e, f, text_of(cfg), why, sizeof why) < 0)
        log_error("reload: findings list %s: %s; the previous list stays", f, why);
    else
        log_info("reload: findings list %s loaded; later jobs score with it", f);
    eng_release(w, r);
    /* SIGHUP also looks for a new model file at once. */
    check_model(w);
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
    pthread_cond_init(&w->cv, NULL);
    snprintf(w->reports, sizeof w->reports, "%s", cfg->reports);
    pthread_mutex_init(&w->mu, NULL);
    set_destinations(w, cfg);
    int rc = plan_devices(w, cfg);
    if (rc == 0) rc = open_model(w, cfg);
    if (rc < 0) {
        free(w->dev);
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
        free(w);
        return rc;
    }
    size_t cnt = (size_t)(w->n ? w->n : 1);
    w->threads = calloc(cnt, sizeof *w->threads);
    w->running = calloc(cnt, sizeof *w->running);
    w->owners = calloc(cnt, sizeof *w->owners);
    if (!w->threads || !w->running || !w->owners) {
        free(w->threads);
        free(w->running);
        free(w->owners);
        free(w->dev);
        if (w->cur) an_engine_close(w->cur->e);
        free(w->cur);
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
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
    free(w->dev);
    if (w->cur) an_engine_close(w->cur->e);
    free(w->cur);
    free(w);
}
