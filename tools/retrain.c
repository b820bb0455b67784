/*
 * retrain.c - `ctglip-retrain`: the nightly adaptation of the model to this
 * hospital's scanners and wording, from the studies the node received and
 * the radiologists' final reports (issue: overnight retraining).
 *
 *   1. data: every study with a final report received since the last
 *      successful run (or --days N) becomes a training case: the CT is the
 *      study's spool folder (the trainer picks the primary series as the
 *      workers do), the label map is a TotalSegmentator map from --labels
 *      DIR/<StudyUID>.nii.gz when there is one, else the current model's own
 *      segmentation (pseudo-masks), and the organ-level findings come from
 *      the report (core/report.h: sentences, organ mentions, negation).  A
 *      fixed fifth of the studies (by a hash of the Study UID, so a study
 *      never moves between the parts) is held out for the gate;
 *   2. fine-tune from the model in service (`ctglip-train finetune` with a
 *      small learning rate), checkpointing; at the --deadline, or on
 *      SIGTERM, it stops with a checkpoint and the next run resumes there;
 *   3. calibrate the new model's thresholds on the training part;
 *   4. the gate: the new and the current model are evaluated side by side
 *      on the local held-out part and on the phantom benchmark (held-out
 *      seeds and phrasings, made once in the work folder); the new model is
 *      published only if no metric (organ top-1, macro AUC, mean Dice)
 *      drops by more than --margin on either;
 *   5. publish: atomic replacement of the configured model file, the
 *      previous one kept for `ctglip model rollback` (tools/publish.c);
 *      ctglipd switches before its next job.
 * Every run appends its decision with all numbers to WORK/decisions.jsonl.
 *
 * State (WORK/state.json): the time up to which reports were used by the
 * last published or rejected run, and whether a training is in progress.
 * One run at a time (WORK/lock, flock).
 *
 * Single-threaded apart from the ops' OpenMP threads.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/analysis.h"
#include "core/core.h"
#include "core/model.h"
#include "core/ops.h"
#include "core/report.h"
#include "core/text.h"
#include "core/zeroshot.h"
#include "daemon/daemon.h"
#include "dicom/dicom.h"
#include "store/store.h"
#include "tools/retrain.h"
#include "tools/tools.h"
#include "tools/train.h"
#include "tools/train_eval.h"
#include "cuda/cu.h"

typedef struct rt_opts {
    const char *conf, *work, *labels;
    double since;        /* < 0: from the state (else everything) */
    int days;            /* > 0: the last N days instead */
    long steps;
    float lr;
    double margin;
    int holdout_pct;     /* percent of studies held out */
    int phantoms;        /* phantom benchmark cases */
    int min_cases;       /* fewer training cases: nothing to do */
    int dry_run;
    int threads;
    double deadline;     /* epoch seconds; 0: none */
    const char *device;  /* cpu, cuda, auto; NULL: [model] device */
    int gpu;             /* < 0: the first of [model] gpus */
    int bf16;            /* < 0: [model] precision */
} rt_opts;

static volatile int g_stop;
static void on_term(int sig)
{
    (void)sig;
    g_stop = 1;
}

/* ---- small helpers ----------------------------------------------------------- */

/* dir + "/" + name into out (PATH_MAX bytes); the work folder's length is
 * checked at the start, so these always fit. */
static char *join(char *out, const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    if (a + 1 + b >= PATH_MAX) b = 0;
    memcpy(out, dir, a);
    out[a] = '/';
    memcpy(out + a + 1, name, b);
    out[a + 1 + b] = 0;
    return out;
}

static uint64_t fnv(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return h;
}

static int write_text(const char *path, const char *text)
{
    char tmp[PATH_MAX];
    if (strlen(path) + 5 > sizeof tmp) return CTG_EINVAL;
    memcpy(tmp, path, strlen(path));
    memcpy(tmp + strlen(path), ".tmp", 5);
    FILE *f = fopen(tmp, "w");
    if (!f) return ctg_errno(errno);
    int ok = fputs(text, f) >= 0 && fflush(f) == 0 && fsync(fileno(f)) == 0;
    if (fclose(f) != 0) ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return CTG_EIO;
    }
    return 0;
}

static cJSON *read_json(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    return cJSON_Parse(buf);
}

/* "HH:MM" -> the next such local time (today or tomorrow), epoch seconds. */
static double parse_deadline(const char *s)
{
    int hh, mm;
    char c;
    if (sscanf(s, "%d:%d%c", &hh, &mm, &c) != 2 || hh < 0 || hh > 23 || mm < 0 || mm > 59)
        return -1;
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    tm.tm_hour = hh;
    tm.tm_min = mm;
    tm.tm_sec = 0;
    time_t t = mktime(&tm);
    if (t <= now) t += 86400;
    return (double)t;
}

/* ---- state ---------------------------------------------------------------------- */

typedef struct rt_state {
    double used_until;   /* reports received up to here were used */
    int training;        /* a fine-tune is in progress (resume it) */
    double window_end;   /* the data window of the training in progress */
} rt_state;

static void state_load(const char *work, rt_state *s)
{
    char p[PATH_MAX];
    memset(s, 0, sizeof *s);
    snprintf(p, sizeof p, "%s/state.json", work);
    cJSON *j = read_json(p);
    if (!j) return;
    const cJSON *x;
    if ((x = cJSON_GetObjectItemCaseSensitive(j, "used_until")) && cJSON_IsNumber(x))
        s->used_until = x->valuedouble;
    if ((x = cJSON_GetObjectItemCaseSensitive(j, "training")) && cJSON_IsBool(x))
        s->training = cJSON_IsTrue(x);
    if ((x = cJSON_GetObjectItemCaseSensitive(j, "window_end")) && cJSON_IsNumber(x))
        s->window_end = x->valuedouble;
    cJSON_Delete(j);
}

static int state_save(const char *work, const rt_state *s)
{
    char p[PATH_MAX], text[256];
    snprintf(p, sizeof p, "%s/state.json", work);
    snprintf(text, sizeof text, "{\"used_until\": %.3f, \"training\": %s, \"window_end\": %.3f}\n",
             s->used_until, s->training ? "true" : "false", s->window_end);
    return write_text(p, text);
}

/* ---- step 1: the data ------------------------------------------------------------- */

typedef struct build_ctx {
    const rt_opts *o;
    const ctg_config *cfg;
    st_store *st;
    an_engine *eng;      /* the current model, for pseudo-masks */
    const zs_list *list;
    FILE *train, *hold;
    int ntrain, nhold, skipped;
    int normal, abnormal, uncertain;
    char dir[PATH_MAX];
} build_ctx;

typedef struct files_ctx {
    const char *spool;
    char **paths;
    int n, cap, bad;
} files_ctx;

static int file_row(void *ud, int ncol, const char **names, const char **vals)
{
    files_ctx *f = ud;
    (void)names;
    if (ncol < 1 || !vals[0]) return 0;
    if (f->n == f->cap) {
        int cap = f->cap ? 2 * f->cap : 256;
        char **p = realloc(f->paths, sizeof *p * (size_t)cap);
        if (!p) return f->bad = 1, 0;
        f->paths = p;
        f->cap = cap;
    }
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", f->spool, vals[0]);
    if (!(f->paths[f->n] = strdup(path))) return f->bad = 1, 0;
    f->n++;
    return 0;
}

/* The label map of one study: TotalSegmentator's when given, else the
 * current model's segmentation on the study's primary series. */
static int study_labels(build_ctx *b, const char *study, const char *out, char *why, size_t n)
{
    char p[PATH_MAX];
    struct stat sb;
    if (b->o->labels && snprintf(p, sizeof p, "%s/%s.nii.gz", b->o->labels, study) > 0 &&
        stat(p, &sb) == 0) {
        snprintf((char *)out, PATH_MAX, "%s", p);
        return 1;
    }
    files_ctx f = {.spool = st_spool_dir(b->st)};
    int rc = st_study_files(b->st, study, file_row, &f);
    ctg_vol *vol = NULL;
    an_result r;
    memset(&r, 0, sizeof r);
    if (rc < 0 || f.bad || !f.n) {
        snprintf(why, n, "the study's files cannot be listed");
        rc = rc < 0 ? rc : CTG_ENOTFOUND;
        goto done;
    }
    dcm_vol_opts vo = {0};
    if ((rc = dcm_series_volume((const char *const *)f.paths, (size_t)f.n, &vo, &vol, NULL, why,
                                n)) < 0)
        goto done;
    if ((rc = an_run(b->eng, NULL, vol, &r, why, n)) < 0) goto done;
    if ((rc = ctg_nifti_write(out, r.labels, why, n)) < 0) goto done;
    rc = 0;
done:
    an_result_free(&r);
    ctg_vol_free(vol);
    for (int i = 0; i < f.n; i++) free(f.paths[i]);
    free(f.paths);
    return rc;
}

/* One study with its report: a manifest line. */
static int add_case(void *ud, const st_report *rep)
{
    build_ctx *b = ud;
    char why[512] = "", lab[PATH_MAX];
    if (g_stop) return 1;
    if (rep->images <= 0) return 0; /* a report whose images are gone or not yet here */
    char labname[96];
    snprintf(labname, sizeof labname, "%s.labels.nii.gz", rep->study_uid);
    join(lab, b->dir, labname);
    int rc = study_labels(b, rep->study_uid, lab, why, sizeof why);
    if (rc < 0) {
        fprintf(stderr, "ctglip-retrain: study %s skipped: %s\n", rep->study_uid, why);
        b->skipped++;
        return 0;
    }
    /* The report's organ-level findings for the model's classes. */
    const mdl_model *m = an_model(b->eng);
    rp_opts po = {.classes = m->class_ids, .nclasses = m->cfg.n_classes, .list = b->list};
    rp_result *res = NULL;
    if (rp_parse(rep->text, strlen(rep->text), &po, &res, why, sizeof why) < 0) {
        fprintf(stderr, "ctglip-retrain: study %s skipped: report: %s\n", rep->study_uid, why);
        b->skipped++;
        return 0;
    }
    cJSON *line = cJSON_CreateObject();
    char ct[PATH_MAX];
    snprintf(ct, sizeof ct, "%s/%s", st_spool_dir(b->st), rep->study_uid);
    cJSON_AddStringToObject(line, "id", rep->study_uid);
    cJSON_AddStringToObject(line, "ct", ct);
    cJSON_AddStringToObject(line, "labels", lab);
    cJSON_AddNumberToObject(line, "label_version", 2);
    cJSON *fa = cJSON_AddArrayToObject(line, "findings");
    /* Firm abnormal statements are positives; normal organs get the
     * trainer's normal template; hedged ones are left out (neither a safe
     * positive nor a safe negative). */
    for (int i = 0; i < res->nitems; i++) {
        const rp_item *it = &res->items[i];
        const ctg_organ *og = ctg_organ_get(it->organ);
        if (!og || it->state != RP_ABNORMAL) continue;
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "organ", og->name);
        cJSON_AddStringToObject(x, "abnormality", it->key[0] ? it->key : "abnormal");
        cJSON_AddStringToObject(x, "sentence", it->text ? it->text : "");
        cJSON_AddItemToArray(fa, x);
    }
    for (int i = 0; i < res->norgans; i++) {
        int st_ = res->organs[i].state;
        if (st_ == RP_NORMAL) b->normal++;
        else if (st_ == RP_UNCERTAIN) b->uncertain++;
        else if (st_ == RP_ABNORMAL) b->abnormal++;
    }
    rp_result_free(res);
    char *s = cJSON_PrintUnformatted(line);
    cJSON_Delete(line);
    if (!s) return CTG_ENOMEM;
    int hold = (int)(fnv(rep->study_uid) % 100) < b->o->holdout_pct;
    fprintf(hold ? b->hold : b->train, "%s\n", s);
    free(s);
    hold ? b->nhold++ : b->ntrain++;
    return 0;
}

/* ---- step 4: the gate --------------------------------------------------------------- */

typedef struct rt_metrics {
    double v[3]; /* organ_top1, macro_auc, mean_dice; NaN when undefined */
} rt_metrics;

static const char *const metric_names[3] = {"organ_top1", "macro_auc", "mean_dice"};

static double num_or_nan(const cJSON *o, const char *k)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(x) ? x->valuedouble : NAN;
}

/* Evaluates current and new side by side on a manifest (ctglip-train eval
 * --rows); fills cur/new. */
static int eval_pair(const rt_opts *o, const ctg_config *cfg, const char *cur, const char *nw,
                     const char *data, const char *text, const char *tag, rt_metrics *mc,
                     rt_metrics *mn)
{
    char out[PATH_MAX], table[PATH_MAX], rows[2 * PATH_MAX + 32], thr[16];
    snprintf(out, sizeof out, "%s/eval-%s.json", o->work, tag);
    snprintf(table, sizeof table, "%s/eval-%s.md", o->work, tag);
    snprintf(rows, sizeof rows, "current=%s,new=%s", cur, nw);
    snprintf(thr, sizeof thr, "%d", o->threads > 0 ? o->threads : 1);
    char *argv[] = {"eval", "--data", (char *)data, "--out", out, "--table", table, "--rows", rows,
                    "--findings", (char *)cfg->findings_path, "--vocab", (char *)cfg->vocab_path,
                    "--text", (char *)text, "--threads", thr, NULL};
    if (trn_eval_main((int)(sizeof argv / sizeof argv[0]) - 1, argv) != 0) return CTG_EINVAL;
    cJSON *j = read_json(out);
    const cJSON *tb = j ? cJSON_GetObjectItemCaseSensitive(j, "table") : NULL;
    if (!tb || cJSON_GetArraySize(tb) != 2) {
        cJSON_Delete(j);
        return CTG_EFORMAT;
    }
    for (int k = 0; k < 3; k++) {
        mc->v[k] = num_or_nan(cJSON_GetArrayItem(tb, 0), metric_names[k]);
        mn->v[k] = num_or_nan(cJSON_GetArrayItem(tb, 1), metric_names[k]);
    }
    cJSON_Delete(j);
    return 0;
}

/* ---- the run ---------------------------------------------------------------------------- */

static int resolve_cfg_paths(ctg_config *cfg)
{
    char buf[PATH_MAX];
    char *fields[] = {cfg->model_path, cfg->findings_path, cfg->vocab_path};
    for (int i = 0; i < 3; i++) {
        if (fields[i][0] == '/' || access(fields[i], R_OK) == 0) continue;
        if (ctg_data_path(fields[i], buf, sizeof buf) && access(buf, R_OK) == 0)
            snprintf(fields[i], PATH_MAX, "%s", buf);
    }
    return cfg->model_path[0] ? 0 : CTG_ECONFIG;
}

static int decide(const rt_opts *o, const rt_metrics *c, const rt_metrics *nw, char *why,
                  size_t n)
{
    for (int k = 0; k < 3; k++) {
        if (isnan(c->v[k]) || isnan(nw->v[k])) continue;
        if (nw->v[k] < c->v[k] - o->margin) {
            snprintf(why, n, "%s drops from %.3f to %.3f (margin %.3f)", metric_names[k], c->v[k],
                     nw->v[k], o->margin);
            return 0;
        }
    }
    return 1;
}

static void add_metrics(cJSON *o, const char *key, const rt_metrics *m)
{
    cJSON *x = cJSON_AddObjectToObject(o, key);
    for (int k = 0; k < 3; k++) {
        if (isnan(m->v[k])) cJSON_AddNullToObject(x, metric_names[k]);
        else cJSON_AddNumberToObject(x, metric_names[k], m->v[k]);
    }
}

static int run(const rt_opts *o)
{
    ctg_config cfg;
    char err[1024], why[1024] = "", p[PATH_MAX];
    ctg_config_defaults(&cfg);
    if (ctg_config_load(o->conf, &cfg, err, sizeof err) < 0) {
        fprintf(stderr, "ctglip-retrain: %s\n", err);
        return 1;
    }
    if (resolve_cfg_paths(&cfg) < 0) {
        fprintf(stderr, "ctglip-retrain: [model] path is empty: nothing to retrain\n");
        return 1;
    }
    if (strlen(o->work) > PATH_MAX - 200) {
        fprintf(stderr, "ctglip-retrain: --work path too long\n");
        return 1;
    }
    if (ctg_mkdirs(o->work) < 0) {
        fprintf(stderr, "ctglip-retrain: cannot create %s\n", o->work);
        return 1;
    }
    snprintf(p, sizeof p, "%s/lock", o->work);
    int lock = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock < 0 || flock(lock, LOCK_EX | LOCK_NB) != 0) {
        fprintf(stderr, "ctglip-retrain: another run holds %s\n", p);
        if (lock >= 0) close(lock);
        return 1;
    }
    if (o->threads) op_set_threads(o->threads);
    dcm_global_init();

    int status = 1;
    rt_state stt;
    state_load(o->work, &stt);
    double started = ctg_now();
    char data[PATH_MAX], train_m[PATH_MAX], hold_m[PATH_MAX], runp[PATH_MAX];
    join(data, o->work, "data");
    join(train_m, data, "train.jsonl");
    join(hold_m, data, "holdout.jsonl");
    join(runp, o->work, "run");
    st_store *st = NULL;
    an_engine *eng = NULL;
    zs_list *list = NULL;
    build_ctx b;
    memset(&b, 0, sizeof b);
    char ckpt[PATH_MAX];
    join(ckpt, runp, "ckpt.bin");
    struct stat sb;
    int resume = stt.training && stat(ckpt, &sb) == 0 && stat(train_m, &sb) == 0;

    if (!resume) {
        /* Step 1: the data since the last run. */
        double since = o->days > 0 ? started - 86400.0 * o->days
                       : o->since >= 0 ? o->since
                                       : stt.used_until;
        st_config sc = {.spool_dir = cfg.spool, .db_path = cfg.index, .readonly = 1};
        int rc = st_open(&sc, &st);
        if (rc < 0) {
            fprintf(stderr, "ctglip-retrain: cannot open the index %s: %s\n", cfg.index,
                    ctg_strerror(rc));
            goto done;
        }
        an_opts ao = {.model = cfg.model_path, .vocab = cfg.vocab_path,
                      .findings = cfg.findings_path, .text = -1, .overlap = 0.25f};
        if (an_engine_open(&ao, &eng, why, sizeof why) < 0) {
            fprintf(stderr, "ctglip-retrain: %s\n", why);
            goto done;
        }
        if (zs_list_load(cfg.findings_path, &list, why, sizeof why) < 0) {
            fprintf(stderr, "ctglip-retrain: findings list: %s\n", why);
            goto done;
        }
        if (ctg_mkdirs(data) < 0) goto done;
        b.o = o;
        b.cfg = &cfg;
        b.st = st;
        b.eng = eng;
        b.list = list;
        snprintf(b.dir, sizeof b.dir, "%s", data);
        b.train = fopen(train_m, "w");
        b.hold = fopen(hold_m, "w");
        if (!b.train || !b.hold) {
            fprintf(stderr, "ctglip-retrain: cannot write the manifests in %s\n", data);
            goto done;
        }
        rc = st_reports_final(st, since, started, add_case, &b);
        fclose(b.train);
        fclose(b.hold);
        b.train = b.hold = NULL;
        if (rc < 0) {
            fprintf(stderr, "ctglip-retrain: listing reports: %s\n", ctg_strerror(rc));
            goto done;
        }
        printf("ctglip-retrain: %d training and %d held-out studies with final reports since %.0f "
               "(%d skipped); report findings: %d abnormal, %d normal, %d uncertain (not used)\n",
               b.ntrain, b.nhold, since, b.skipped, b.abnormal, b.normal, b.uncertain);
        if (g_stop) {
            printf("ctglip-retrain: stopped while preparing data; nothing changed\n");
            status = 0;
            goto done;
        }
        if (b.ntrain < o->min_cases) {
            printf("ctglip-retrain: fewer than %d training studies: nothing to do\n", o->min_cases);
            status = 0;
            goto done;
        }
        stt.training = 1;
        stt.window_end = started;
        state_save(o->work, &stt);
    } else {
        printf("ctglip-retrain: resuming the training in %s\n", runp);
    }

    /* Step 2: fine-tune from the model in service. */
    trn_opts to;
    trn_opts_default(&to);
    to.data = train_m;
    to.out = runp;
    to.init = cfg.model_path;
    to.vocab = cfg.vocab_path;
    to.resume = resume ? ckpt : NULL;
    to.steps = o->steps;
    to.stage1_steps = 0;
    to.lr = o->lr;
    to.min_lr = o->lr / 10;
    to.warmup = 10;
    to.threads = o->threads;
    to.ckpt_every = 100;
    to.deadline = o->deadline;
    to.stop = &g_stop;
    to.log_every = 50;
    {
        /* The device: the daemon's [model] settings unless given. */
        const char *dv = o->device ? o->device : cfg.device;
        const char *emu = getenv("CTGLIP_CUDA_EMULATE"); /* test hook */
        int have = cu_device_count() > 0 || (emu && !strcmp(emu, "1"));
        to.device = !strcmp(dv, "cuda") || (!strcmp(dv, "auto") && have) ? TRN_CUDA : TRN_CPU;
        to.gpu = o->gpu >= 0 ? o->gpu : cfg.n_gpus > 0 ? cfg.gpus[0] : 0;
        to.bf16 = o->bf16 >= 0 ? o->bf16 : cfg.model_bf16;
        if (to.device == TRN_CUDA)
            printf("ctglip-retrain: fine-tuning on GPU %d (%s)\n", to.gpu, to.bf16 ? "bf16" : "fp32");
    }
    {
        /* The network's own shape: the trainer takes it from the model. */
        mdl_model *m = NULL;
        if (mdl_load(cfg.model_path, &m, why, sizeof why) < 0) {
            fprintf(stderr, "ctglip-retrain: %s\n", why);
            goto done;
        }
        to.patch = m->cfg.patch[0];
        to.batch = 2;
        to.spacing = m->spacing[0] > 0 ? m->spacing[0] : 3.0;
        to.width = m->cfg.width;
        to.depth = m->cfg.depth;
        to.embed = m->cfg.embed_dim;
        to.text_proj = m->cfg.text_dim > 0;
        to.pool = m->cfg.pool;
        mdl_free(m);
    }
    int rc = trn_run(&to);
    if (rc == TRN_STOPPED) {
        printf("ctglip-retrain: paused with a checkpoint; the next run resumes\n");
        status = 0;
        goto done;
    }
    if (rc != 0) {
        fprintf(stderr, "ctglip-retrain: fine-tuning failed: %s\n", ctg_strerror(rc));
        goto done;
    }

    /* Step 3: thresholds on the training part. */
    char newm[PATH_MAX], calm[PATH_MAX], thr[16];
    join(newm, runp, "model.ctglip");
    join(calm, runp, "calibrated.ctglip");
    snprintf(thr, sizeof thr, "%d", o->threads > 0 ? o->threads : 1);
    char *cargv[] = {"calibrate", "--model", newm, "--data", train_m, "--out", calm,
                     "--findings", cfg.findings_path, "--vocab", cfg.vocab_path, "--text", "all",
                     "--threads", thr, NULL};
    const char *candidate = calm;
    if (trn_calibrate_main((int)(sizeof cargv / sizeof cargv[0]) - 1, cargv) != 0) {
        printf("ctglip-retrain: calibration not possible on this data; the new model keeps "
               "its thresholds\n");
        candidate = newm;
    }

    /* Step 4: the gate, on the local held-out part and the phantoms. */
    char ph[PATH_MAX], phm[PATH_MAX], cnt[16];
    join(ph, o->work, "phantom-benchmark");
    join(phm, ph, "manifest.jsonl");
    if (stat(phm, &sb) != 0) {
        snprintf(cnt, sizeof cnt, "%d", o->phantoms);
        char *pargv[] = {"phantom", "--seed", "900", "--count", cnt, "--matrix", "128",
                         "--fov", "random", "--abnormal-rate", "0.7", "--no-dicom", "--text",
                         "heldout", "--quiet", "--out", ph, NULL};
        if (ctg_phantom_main((int)(sizeof pargv / sizeof pargv[0]) - 1, pargv) != 0) {
            fprintf(stderr, "ctglip-retrain: cannot make the phantom benchmark\n");
            goto done;
        }
    }
    rt_metrics lc = {{NAN, NAN, NAN}}, ln = lc, pc = lc, pn = lc;
    int have_local = stat(hold_m, &sb) == 0 && sb.st_size > 0;
    if (have_local &&
        eval_pair(o, &cfg, cfg.model_path, candidate, hold_m, "all", "local", &lc, &ln) < 0) {
        fprintf(stderr, "ctglip-retrain: evaluation on the local held-out studies failed\n");
        goto done;
    }
    if (eval_pair(o, &cfg, cfg.model_path, candidate, phm, "heldout", "phantom", &pc, &pn) < 0) {
        fprintf(stderr, "ctglip-retrain: evaluation on the phantom benchmark failed\n");
        goto done;
    }
    char reason[512] = "no metric regresses beyond the margin";
    int pass = (!have_local || decide(o, &lc, &ln, reason, sizeof reason)) &&
               decide(o, &pc, &pn, reason, sizeof reason);
    printf("ctglip-retrain: local held-out (%s): current %.3f/%.3f/%.3f, new %.3f/%.3f/%.3f\n",
           have_local ? "used" : "none", lc.v[0], lc.v[1], lc.v[2], ln.v[0], ln.v[1], ln.v[2]);
    printf("ctglip-retrain: phantom benchmark: current %.3f/%.3f/%.3f, new %.3f/%.3f/%.3f "
           "(organ top-1 / macro AUC / mean Dice)\n",
           pc.v[0], pc.v[1], pc.v[2], pn.v[0], pn.v[1], pn.v[2]);

    /* Step 5: publish. */
    char id[65] = "";
    int published = 0;
    if (pass && !o->dry_run) {
        if (ctg_model_publish(candidate, cfg.model_path, id, why, sizeof why) < 0) {
            fprintf(stderr, "ctglip-retrain: publishing failed: %s\n", why);
            goto done;
        }
        published = 1;
        printf("ctglip-retrain: published model %s at %s (previous kept as %s.prev); ctglipd "
               "switches before its next job\n", id, cfg.model_path, cfg.model_path);
    } else {
        printf("ctglip-retrain: %s: %s\n", pass ? "dry run, not published" : "rejected", reason);
    }
    cJSON *d = cJSON_CreateObject();
    cJSON_AddNumberToObject(d, "time", started);
    cJSON_AddStringToObject(d, "decision", published ? "published" : pass ? "dry-run" : "rejected");
    cJSON_AddStringToObject(d, "reason", reason);
    cJSON_AddStringToObject(d, "model", published ? id : "");
    cJSON_AddNumberToObject(d, "margin", o->margin);
    if (have_local) {
        add_metrics(d, "local_current", &lc);
        add_metrics(d, "local_new", &ln);
    }
    add_metrics(d, "phantom_current", &pc);
    add_metrics(d, "phantom_new", &pn);
    char *line = cJSON_PrintUnformatted(d);
    cJSON_Delete(d);
    snprintf(p, sizeof p, "%s/decisions.jsonl", o->work);
    FILE *f = fopen(p, "a");
    if (f && line) {
        fprintf(f, "%s\n", line);
        fflush(f);
        fsync(fileno(f));
    }
    if (f) fclose(f);
    free(line);
    /* This window is done either way; the next run takes newer reports. */
    stt.used_until = stt.window_end > 0 ? stt.window_end : started;
    stt.training = 0;
    state_save(o->work, &stt);
    /* The next training starts from scratch. */
    unlink(ckpt);
    status = 0;
done:
    if (b.train) fclose(b.train);
    if (b.hold) fclose(b.hold);
    zs_list_free(list);
    an_engine_close(eng);
    st_close(st);
    close(lock);
    return status;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ctglip-retrain [-c CONF] [--work DIR] [--days N | --since EPOCH]\n"
            "                      [--labels DIR] [--steps N] [--lr F] [--margin F]\n"
            "                      [--holdout PCT] [--phantoms N] [--min-cases N]\n"
            "                      [--deadline HH:MM] [--threads N] [--dry-run]\n"
            "                      [--device cpu|cuda|auto] [--gpu N] [--precision bf16|fp32]\n"
            "  Fine-tunes the model in service on the studies with final reports received\n"
            "  since the last run and publishes it if the gate passes (README: Overnight\n"
            "  retraining).  Defaults: -c /etc/ctglip/ctglipd.conf, --work var/retrain,\n"
            "  --steps 400, --lr 1e-4, --margin 0.02, --holdout 20, --phantoms 8,\n"
            "  --min-cases 4; the device, GPU and precision of the config's [model]\n"
            "  (device, the first of gpus, precision).\n");
}

int ctg_retrain_main(int argc, char **argv)
{
    rt_opts o = {.conf = "/etc/ctglip/ctglipd.conf", .work = "var/retrain", .since = -1,
                 .steps = 400, .lr = 1e-4f, .margin = 0.02, .holdout_pct = 20, .phantoms = 8,
                 .min_cases = 4, .gpu = -1, .bf16 = -1};
    static const struct option lo[] = {
        {"work", 1, 0, 'w'},     {"days", 1, 0, 'D'},   {"since", 1, 0, 'S'},
        {"labels", 1, 0, 'L'},   {"steps", 1, 0, 's'},  {"lr", 1, 0, 'l'},
        {"margin", 1, 0, 'm'},   {"holdout", 1, 0, 'H'}, {"phantoms", 1, 0, 'P'},
        {"min-cases", 1, 0, 'M'}, {"deadline", 1, 0, 'd'}, {"threads", 1, 0, 't'},
        {"dry-run", 0, 0, 'n'},  {"help", 0, 0, 'h'},  {"device", 1, 0, 'G'},
        {"gpu", 1, 0, 'g'},      {"precision", 1, 0, 'p'}, {0, 0, 0, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", lo, NULL)) != -1) {
        switch (c) {
        case 'c': o.conf = optarg; break;
        case 'w': o.work = optarg; break;
        case 'D': o.days = atoi(optarg); break;
        case 'S': o.since = atof(optarg); break;
        case 'L': o.labels = optarg; break;
        case 's': o.steps = atol(optarg); break;
        case 'l': o.lr = (float)atof(optarg); break;
        case 'm': o.margin = atof(optarg); break;
        case 'H': o.holdout_pct = atoi(optarg); break;
        case 'P': o.phantoms = atoi(optarg); break;
        case 'M': o.min_cases = atoi(optarg); break;
        case 'd':
            if ((o.deadline = parse_deadline(optarg)) < 0) {
                fprintf(stderr, "ctglip-retrain: --deadline takes HH:MM\n");
                return 2;
            }
            break;
        case 't': o.threads = atoi(optarg); break;
        case 'n': o.dry_run = 1; break;
        case 'G':
            if (strcmp(optarg, "cpu") && strcmp(optarg, "cuda") && strcmp(optarg, "auto")) {
                usage(stderr);
                return 2;
            }
            o.device = optarg;
            break;
        case 'g': o.gpu = atoi(optarg); break;
        case 'p':
            if (strcmp(optarg, "bf16") && strcmp(optarg, "fp32")) {
                usage(stderr);
                return 2;
            }
            o.bf16 = !strcmp(optarg, "bf16");
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc || o.steps < 1 || !(o.lr > 0) || o.margin < 0 || o.holdout_pct < 0 ||
        o.holdout_pct > 90 || o.phantoms < 1 || o.min_cases < 1) {
        usage(stderr);
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    return run(&o);
}
