/*
 * train_eval.c - `ctglip-train eval`.  For every case of a manifest: load it
 * onto the evaluation grid with the model's class list, run sliding-window
 * inference, and for every organ present in the ground truth
 *   - classify its embedding (pooled in the PREDICTED mask, as the daemon
 *     does) against the organ prompts of every class: correct when the
 *     argmax is the organ's own class; an organ the model did not segment
 *     at all has no embedding and counts as wrong;
 *   - score every finding of the findings list that applies to it (label:
 *     the case's findings name it for that organ), with the scorer the
 *     daemon uses (core/zeroshot.h);
 *   - measure Dice of the predicted against the true mask.
 * Then aggregate: organ top-1, per-finding PPV, sensitivity, F1 and AUC
 * with their macro averages, per-organ and mean Dice; NaN (undefined)
 * values are written as null and skipped by the averages, and the report
 * says how many entries each average used.
 *
 * With --rows several models are evaluated on the same data and a Markdown
 * table like Table 1 of the paper is written.
 *
 * Threading: one thread (plus the ops' OpenMP threads).  Exit-on-error is
 * not used; errors are printed and turned into the exit status.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/core.h"
#include "core/metrics.h"
#include "core/model.h"
#include "core/ops.h"
#include "core/organs.h"
#include "core/text.h"
#include "core/zeroshot.h"
#include "tools/train_data.h"
#include "tools/train_eval.h"

#define EV_MAX_ROWS 8

typedef struct ev_opts {
    const char *model, *data, *out, *findings, *vocab, *table, *rows;
    int text;
    float threshold;        /* < 0: each finding's own */
    double spacing[3];      /* 0: the model's training spacing (else 3 mm) */
    float overlap;
    int threads;
    int min_pos;            /* calibrate: positives a finding needs for its own threshold */
} ev_opts;

/* Scores and labels of one finding over all scored organs. */
typedef struct ev_fscores {
    float *score;
    uint8_t *label;
    size_t n, cap;
    long unscored;          /* applicable organs the model did not segment */
} ev_fscores;

/* What one model scored on the data. */
typedef struct ev_result {
    char identity[65];
    double spacing[3];      /* the grid the cases were evaluated on */
    int cases, skipped, k;
    long organs, segmented, correct, unlisted;
    long present[MDL_MAX_CLASSES + 1], hit[MDL_MAX_CLASSES + 1];
    double dice_sum[MDL_MAX_CLASSES + 1];
    long dice_n[MDL_MAX_CLASSES + 1];
    int class_ids[MDL_MAX_CLASSES];
    int nf;
    ev_fscores *fs;
    float *thr;             /* [nf] the thresholds the prompts decided with */
    int *thr_src;           /* [nf] ZS_THR_* */
    /* Aggregates. */
    double organ_top1, organ_top1_segmented;
    double *auc, *ppv, *sens, *f1;
    met_counts *cnt;
    double macro_auc, macro_f1, macro_ppv, macro_sens, mean_dice;
    size_t auc_used, f1_used, dice_used;
} ev_result;

static void ev_result_clear(ev_result *r)
{
    if (!r) return;
    for (int f = 0; r->fs && f < r->nf; f++) {
        free(r->fs[f].score);
        free(r->fs[f].label);
    }
    free(r->fs);
    free(r->thr);
    free(r->thr_src);
    free(r->auc);
    free(r->ppv);
    free(r->sens);
    free(r->f1);
    free(r->cnt);
    memset(r, 0, sizeof *r);
}

static int fs_push(ev_fscores *s, float score, int label)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 64;
        float *a = realloc(s->score, cap * sizeof *a);
        if (!a) return CTG_ENOMEM;
        s->score = a;
        uint8_t *b = realloc(s->label, cap);
        if (!b) return CTG_ENOMEM;
        s->label = b;
        s->cap = cap;
    }
    s->score[s->n] = score;
    s->label[s->n] = (uint8_t)(label != 0);
    s->n++;
    return 0;
}

/* 1 when case cs reports finding key on class cls. */
static int case_has(const td_case *cs, const char *key, int cls)
{
    for (int i = 0; i < cs->nfindings; i++)
        if (cs->findings[i].cls == cls && !strcmp(cs->findings[i].abnormality, key)) return 1;
    return 0;
}

/* Evaluates one case into r.  A case that cannot be loaded is skipped by
 * the caller; errors here are real failures (memory, model). */
static int eval_case(const mdl_model *m, mdl_acts *acts, const zs_prompts *zp, const zs_list *l,
                     const ev_opts *o, const td_case *cs, ev_result *r, float *embed,
                     int64_t *count, zs_score *sc)
{
    int k = m->cfg.n_classes, e = m->cfg.embed_dim;
    ctg_vol *pred = NULL;
    uint8_t *pc = NULL;
    int rc = mdl_infer(m, acts, cs->ct, o->overlap, &pred, embed, count, NULL);
    if (rc < 0) goto fail;
    size_t nv = ctg_vol_count(cs->ct);
    rc = CTG_ENOMEM;
    if (!(pc = malloc(nv))) goto fail;
    /* mdl_infer answers in v2 ids; the ground truth holds class indices. */
    uint8_t cls_of[256] = {0};
    for (int c = 1; c <= k; c++)
        if (m->class_ids[c - 1] < 256) cls_of[m->class_ids[c - 1]] = (uint8_t)c;
    const uint8_t *pv = pred->data, *truth = cs->lab->data;
    int64_t tcount[MDL_MAX_CLASSES + 1] = {0};
    for (size_t i = 0; i < nv; i++) {
        pc[i] = cls_of[pv[i]];
        if (truth[i] <= k) tcount[truth[i]]++;
    }
    double dice[MDL_MAX_CLASSES + 1];
    if ((rc = met_dice_all(pc, truth, nv, k + 1, dice)) < 0) goto fail;
    for (int c = 1; c <= k; c++)
        if (!isnan(dice[c])) r->dice_sum[c] += dice[c], r->dice_n[c]++;

    for (int c = 1; c <= k; c++) {
        if (!tcount[c]) continue;
        r->organs++;
        r->present[c]++;
        if (count[c] <= 0) {
            int napp = zs_score_organ(zp, c, embed + (size_t)c * e, NULL, 0);
            for (int j = 0; j < l->n && napp > 0; j++)
                if (zs_finding_vec(zp, j, c, 1)) r->fs[j].unscored++;
            continue;
        }
        r->segmented++;
        const float *emb = embed + (size_t)c * e;
        if (zs_organ_top1(zp, emb, NULL) == c) r->correct++, r->hit[c]++;
        int ns = zs_score_organ(zp, c, emb, sc, l->n);
        if (ns < 0) {
            rc = ns;
            goto fail;
        }
        for (int j = 0; j < ns && j < l->n; j++) {
            int f = sc[j].finding;
            if ((rc = fs_push(&r->fs[f], sc[j].prob, case_has(cs, l->f[f].key, c))) < 0) goto fail;
        }
    }
    for (int i = 0; i < cs->nfindings; i++)
        if (zs_list_find(l, cs->findings[i].abnormality) < 0) r->unlisted++;
    r->cases++;
    rc = 0;
fail:
    free(pc);
    ctg_vol_free(pred);
    return rc;
}

static void aggregate(ev_result *r, float thr_override)
{
    r->organ_top1 = r->organs ? (double)r->correct / (double)r->organs : NAN;
    r->organ_top1_segmented = r->segmented ? (double)r->correct / (double)r->segmented : NAN;
    for (int f = 0; f < r->nf; f++) {
        ev_fscores *s = &r->fs[f];
        float thr = thr_override >= 0 ? thr_override : r->thr[f];
        r->auc[f] = NAN;
        if (s->n && met_auc(s->score, s->label, s->n, &r->auc[f]) < 0) r->auc[f] = NAN;
        r->cnt[f] = met_count(s->score, s->label, s->n, thr);
        r->ppv[f] = met_ppv(&r->cnt[f]);
        r->sens[f] = met_sensitivity(&r->cnt[f]);
        r->f1[f] = met_f1(&r->cnt[f]);
    }
    r->macro_auc = met_macro(r->auc, (size_t)r->nf, &r->auc_used);
    r->macro_f1 = met_macro(r->f1, (size_t)r->nf, &r->f1_used);
    r->macro_ppv = met_macro(r->ppv, (size_t)r->nf, NULL);
    r->macro_sens = met_macro(r->sens, (size_t)r->nf, NULL);
    double dice[MDL_MAX_CLASSES];
    for (int c = 1; c <= r->k; c++)
        dice[c - 1] = r->dice_n[c] ? r->dice_sum[c] / (double)r->dice_n[c] : NAN;
    r->mean_dice = met_macro(dice, (size_t)r->k, &r->dice_used);
}

/* Evaluates the model at path on the manifest. */
static int eval_model(const ev_opts *o, const char *path, const td_manifest *man,
                      const zs_list *l, txt_encoder *enc, ev_result *r)
{
    char why[512] = "";
    mdl_model *m = NULL;
    mdl_acts *acts = NULL;
    txt_cache *cache = NULL;
    zs_prompts *zp = NULL;
    float *embed = NULL;
    int64_t *count = NULL;
    zs_score *sc = NULL;
    memset(r, 0, sizeof *r);
    int rc = mdl_load(path, &m, why, sizeof why);
    if (rc < 0) {
        fprintf(stderr, "eval: %s: %s\n", path, why[0] ? why : ctg_strerror(rc));
        goto fail;
    }
    if (m->text_id[0] && strcmp(m->text_id, txt_identity(enc))) {
        fprintf(stderr, "eval: %s was trained with text encoder %s, not %s\n", path, m->text_id,
                txt_identity(enc));
        rc = CTG_EINVAL;
        goto fail;
    }
    snprintf(r->identity, sizeof r->identity, "%s", mdl_identity(m));
    int k = m->cfg.n_classes, e = m->cfg.embed_dim;
    r->k = k;
    memcpy(r->class_ids, m->class_ids, sizeof r->class_ids);
    r->nf = l->n;
    rc = CTG_ENOMEM;
    if (!(r->fs = calloc((size_t)l->n, sizeof *r->fs)) ||
        !(r->auc = calloc((size_t)l->n, sizeof(double))) ||
        !(r->ppv = calloc((size_t)l->n, sizeof(double))) ||
        !(r->sens = calloc((size_t)l->n, sizeof(double))) ||
        !(r->f1 = calloc((size_t)l->n, sizeof(double))) ||
        !(r->cnt = calloc((size_t)l->n, sizeof(met_counts))) ||
        !(r->thr = calloc((size_t)l->n, sizeof(float))) ||
        !(r->thr_src = calloc((size_t)l->n, sizeof(int))) ||
        !(embed = malloc(sizeof(float) * (size_t)(k + 1) * e)) ||
        !(count = malloc(sizeof(int64_t) * (size_t)(k + 1))) ||
        !(sc = malloc(sizeof(zs_score) * (size_t)l->n)))
        goto fail;
    if ((rc = txt_cache_open(enc, 4096, &cache)) < 0) goto fail;
    if ((rc = zs_prompts_build(l, m, enc, cache, o->text, ZS_TAU, &zp, why, sizeof why)) < 0) {
        fprintf(stderr, "eval: %s: %s\n", path, why);
        goto fail;
    }
    for (int f = 0; f < l->n; f++) r->thr[f] = zs_threshold(zp, f, &r->thr_src[f]);
    if ((rc = mdl_acts_new(m, 1, m->cfg.patch[0], m->cfg.patch[1], m->cfg.patch[2], &acts)) < 0) {
        fprintf(stderr, "eval: %s: activations: %s\n", path, ctg_strerror(rc));
        goto fail;
    }

    td_opts to;
    td_opts_default(&to);
    to.classes = m->class_ids;
    to.nclasses = k;
    /* The grid: --spacing, else the model's training spacing, else 3 mm. */
    for (int a = 0; a < 3; a++)
        r->spacing[a] = o->spacing[0] > 0 ? o->spacing[a] : m->spacing[a] > 0 ? m->spacing[a] : 3.0;
    memcpy(to.spacing, r->spacing, sizeof to.spacing);
    to.augment = 0;
    double t0 = ctg_mono();
    for (int i = 0; i < man->n; i++) {
        td_case cs;
        if (td_case_load(man, i, &to, &cs, why, sizeof why) < 0) {
            fprintf(stderr, "eval: skipping case %s (line %d): %s\n", man->cases[i].id,
                    man->cases[i].line, why);
            r->skipped++;
            continue;
        }
        rc = eval_case(m, acts, zp, l, o, &cs, r, embed, count, sc);
        td_case_clear(&cs);
        if (rc < 0) {
            fprintf(stderr, "eval: case %s: %s\n", man->cases[i].id, ctg_strerror(rc));
            goto fail;
        }
    }
    aggregate(r, o->threshold);
    fprintf(stderr, "eval: %s: %d cases (%d skipped) in %.1f s: organ top-1 %.3f, macro AUC %.3f, "
                    "macro F1 %.3f, mean Dice %.3f\n",
            path, r->cases, r->skipped, ctg_mono() - t0, r->organ_top1, r->macro_auc,
            r->macro_f1, r->mean_dice);
    rc = 0;
fail:
    free(embed);
    free(count);
    free(sc);
    zs_prompts_free(zp);
    txt_cache_close(cache);
    mdl_acts_free(acts);
    mdl_free(m);
    if (rc < 0) ev_result_clear(r);
    return rc;
}

/* ---- output -------------------------------------------------------------------- */

/* Adds a number, or null when it is undefined. */
static void add_num(cJSON *o, const char *key, double v)
{
    if (isnan(v) || isinf(v)) cJSON_AddNullToObject(o, key);
    else cJSON_AddNumberToObject(o, key, v);
}

static cJSON *result_json(const ev_result *r, const zs_list *l, const ev_opts *o,
                          const char *model)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "model", model);
    cJSON_AddStringToObject(j, "model_identity", r->identity);
    cJSON_AddStringToObject(j, "data", o->data);
    cJSON_AddStringToObject(j, "findings", o->findings);
    cJSON_AddStringToObject(j, "text",
                            o->text == ZS_TEXT_TRAIN ? "train"
                            : o->text == ZS_TEXT_HELDOUT ? "heldout" : "all");
    if (o->threshold >= 0) cJSON_AddNumberToObject(j, "threshold", o->threshold);
    else cJSON_AddStringToObject(j, "threshold", "per finding");
    cJSON *sp = cJSON_AddArrayToObject(j, "spacing_mm");
    for (int a = 0; a < 3; a++) cJSON_AddItemToArray(sp, cJSON_CreateNumber(r->spacing[a]));
    cJSON_AddNumberToObject(j, "cases", r->cases);
    cJSON_AddNumberToObject(j, "cases_skipped", r->skipped);

    add_num(j, "organ_top1", r->organ_top1);
    add_num(j, "organ_top1_segmented", r->organ_top1_segmented);
    cJSON *cn = cJSON_AddObjectToObject(j, "counts");
    cJSON_AddNumberToObject(cn, "organs", (double)r->organs);
    cJSON_AddNumberToObject(cn, "organs_segmented", (double)r->segmented);
    cJSON_AddNumberToObject(cn, "organs_correct", (double)r->correct);
    cJSON_AddNumberToObject(cn, "findings_not_in_list", (double)r->unlisted);

    cJSON *ab = cJSON_AddObjectToObject(j, "abnormality");
    add_num(ab, "macro_auc", r->macro_auc);
    add_num(ab, "macro_f1", r->macro_f1);
    add_num(ab, "macro_ppv", r->macro_ppv);
    add_num(ab, "macro_sensitivity", r->macro_sens);
    cJSON_AddNumberToObject(ab, "auc_used", (double)r->auc_used);
    cJSON_AddNumberToObject(ab, "f1_used", (double)r->f1_used);
    size_t scored = 0, pos = 0;
    long unscored = 0;
    cJSON *pf = cJSON_AddObjectToObject(ab, "findings");
    for (int f = 0; f < r->nf; f++) {
        const ev_fscores *s = &r->fs[f];
        size_t np = 0;
        for (size_t i = 0; i < s->n; i++) np += s->label[i];
        scored += s->n;
        pos += np;
        unscored += s->unscored;
        cJSON *x = cJSON_AddObjectToObject(pf, l->f[f].key);
        cJSON_AddNumberToObject(x, "n", (double)s->n);
        cJSON_AddNumberToObject(x, "positives", (double)np);
        cJSON_AddNumberToObject(x, "unscored", (double)s->unscored);
        cJSON_AddNumberToObject(x, "tp", (double)r->cnt[f].tp);
        cJSON_AddNumberToObject(x, "fp", (double)r->cnt[f].fp);
        cJSON_AddNumberToObject(x, "fn", (double)r->cnt[f].fn);
        cJSON_AddNumberToObject(x, "tn", (double)r->cnt[f].tn);
        add_num(x, "ppv", r->ppv[f]);
        add_num(x, "sensitivity", r->sens[f]);
        add_num(x, "f1", r->f1[f]);
        add_num(x, "auc", r->auc[f]);
        add_num(x, "threshold", o->threshold >= 0 ? o->threshold : r->thr[f]);
        static const char *src[] = {"default", "model", "findings list"};
        cJSON_AddStringToObject(x, "threshold_source",
                                o->threshold >= 0 ? "--threshold" : src[r->thr_src[f]]);
    }
    cJSON_AddNumberToObject(ab, "scored", (double)scored);
    cJSON_AddNumberToObject(ab, "positives", (double)pos);
    cJSON_AddNumberToObject(ab, "unscored_unsegmented", (double)unscored);

    cJSON *sg = cJSON_AddObjectToObject(j, "seg");
    add_num(sg, "mean_dice", r->mean_dice);
    cJSON_AddNumberToObject(sg, "dice_used", (double)r->dice_used);
    cJSON *po = cJSON_AddObjectToObject(sg, "per_organ");
    for (int c = 1; c <= r->k; c++) {
        const ctg_organ *og = ctg_organ_get(r->class_ids[c - 1]);
        cJSON *x = cJSON_AddObjectToObject(po, og ? og->name : "?");
        add_num(x, "dice", r->dice_n[c] ? r->dice_sum[c] / (double)r->dice_n[c] : NAN);
        cJSON_AddNumberToObject(x, "cases", (double)r->dice_n[c]);
        cJSON_AddNumberToObject(x, "present", (double)r->present[c]);
        add_num(x, "top1", r->present[c] ? (double)r->hit[c] / (double)r->present[c] : NAN);
    }
    return j;
}

static int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "eval: cannot write %s\n", path);
        return CTG_EIO;
    }
    int ok = fputs(text, f) >= 0;
    if (fclose(f) != 0 || !ok) {
        fprintf(stderr, "eval: cannot write %s\n", path);
        return CTG_EIO;
    }
    return 0;
}

static void cell(FILE *f, double v)
{
    if (isnan(v)) fputs(" n/a |", f);
    else fprintf(f, " %.3f |", v);
}

/* The paper's Table 1: one row per model, organ top-1, macro AUC, macro F1,
 * mean Dice, then the AUC of every finding that any row scored. */
static int write_table(const char *path, const ev_opts *o, const zs_list *l, int nrows,
                       char names[][64], const ev_result *res)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "eval: cannot write %s\n", path);
        return CTG_EIO;
    }
    int show[ZS_MAX_FINDINGS] = {0};
    for (int r = 0; r < nrows; r++)
        for (int j = 0; j < l->n; j++)
            if (res[r].fs[j].n) show[j] = 1;
    fprintf(f, "Zero-shot evaluation on `%s` (%d cases; prompts: %s, %s phrasings). "
               "Fractions in 0..1; n/a: undefined (e.g. no positive case).\n\n",
            o->data, res[0].cases, o->findings,
            o->text == ZS_TEXT_TRAIN ? "train" : o->text == ZS_TEXT_HELDOUT ? "heldout" : "all");
    fputs("| Method | Organ top-1 | Macro AUC | Macro F1 | Mean Dice |", f);
    for (int j = 0; j < l->n; j++)
        if (show[j]) fprintf(f, " %s AUC |", l->f[j].display);
    fputs("\n|---|---:|---:|---:|---:|", f);
    for (int j = 0; j < l->n; j++)
        if (show[j]) fputs("---:|", f);
    fputc('\n', f);
    for (int r = 0; r < nrows; r++) {
        fprintf(f, "| %s |", names[r]);
        cell(f, res[r].organ_top1);
        cell(f, res[r].macro_auc);
        cell(f, res[r].macro_f1);
        cell(f, res[r].mean_dice);
        for (int j = 0; j < l->n; j++)
            if (show[j]) cell(f, res[r].auc[j]);
        fputc('\n', f);
    }
    fputc('\n', f);
    for (int r = 0; r < nrows; r++)
        fprintf(f, "- %s: model %.16s\n", names[r], res[r].identity);
    if (fclose(f) != 0) {
        fprintf(stderr, "eval: cannot write %s\n", path);
        return CTG_EIO;
    }
    return 0;
}

/* ---- command line --------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr,
            "usage: ctglip-train eval --model M --data MANIFEST --out REPORT.json\n"
            "         [--findings etc/findings.conf] [--text train|heldout|all]\n"
            "         [--threshold T] [--spacing MM[,MM,MM]] [--vocab FILE]\n"
            "         [--overlap F] [--threads N]\n"
            "         [--table REPORT.md --rows 'NAME=MODEL,NAME=MODEL,...']\n"
            "  --model may be left out with --rows: the report then covers the last row.\n"
            "  --spacing defaults to the model's training spacing.\n"
            "usage: ctglip-train calibrate --model M --data MANIFEST --out CALIBRATED_MODEL\n"
            "         [--findings F] [--text train|heldout|all] [--spacing MM] [--vocab FILE]\n"
            "         [--overlap F] [--threads N] [--min-positives N (3)]\n"
            "  Writes the model again with each finding's F1-optimal decision threshold on\n"
            "  the data (a finding with fewer positives gets the pooled one).\n");
}

static int parse_spacing(const char *s, double sp[3])
{
    char *end;
    for (int a = 0; a < 3; a++) {
        sp[a] = strtod(s, &end);
        if (end == s || !(sp[a] > 0 && sp[a] < 100)) return -1;
        if (!*end) {
            if (a == 0) sp[1] = sp[2] = sp[0];
            else if (a != 2) return -1;
            return 0;
        }
        if (*end != ',' || a == 2) return -1;
        s = end + 1;
    }
    return 0;
}

/* Splits "NAME=PATH,NAME=PATH" into rows; -1 on a malformed list. */
static int parse_rows(char *s, char names[][64], char **paths, int *nrows)
{
    *nrows = 0;
    char *save = NULL;
    for (char *t = strtok_r(s, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(t, '=');
        if (!eq || eq == t || !eq[1] || *nrows == EV_MAX_ROWS) return -1;
        *eq = 0;
        while (*t == ' ') t++;
        snprintf(names[*nrows], 64, "%s", t);
        paths[*nrows] = eq + 1;
        (*nrows)++;
    }
    return *nrows ? 0 : -1;
}

/* Per-finding F1-optimal thresholds from the scores in r, written into the
 * model at o->model as metadata and saved to o->out. */
static int calibrate(const ev_opts *o, const zs_list *l, const ev_result *r)
{
    char why[512] = "", val[64];
    mdl_model *m = NULL;
    int rc = mdl_load(o->model, &m, why, sizeof why);
    if (rc < 0) {
        fprintf(stderr, "calibrate: %s: %s\n", o->model, why);
        return rc;
    }
    /* A model from before spacing was recorded (format version 1) learns the
     * grid it was calibrated on. */
    if (!(m->spacing[0] > 0)) {
        float sp[3] = {(float)r->spacing[0], (float)r->spacing[1], (float)r->spacing[2]};
        mdl_set_spacing(m, sp);
    }
    /* Old calibration goes; this one replaces it whole. */
    for (int i = m->n_meta - 1; i >= 0; i--)
        if (!strncmp(m->meta[i].key, "threshold.", 10) ||
            !strncmp(m->meta[i].key, "calibration.", 12))
            mdl_meta_set(m, m->meta[i].key, NULL);
    /* The pooled threshold, for findings with too few positives of their
     * own. */
    size_t tot = 0;
    for (int f = 0; f < r->nf; f++) tot += r->fs[f].n;
    float *ps = malloc(sizeof(float) * (tot ? tot : 1));
    uint8_t *pl = malloc(tot ? tot : 1);
    rc = CTG_ENOMEM;
    if (!ps || !pl) goto out;
    size_t k = 0;
    for (int f = 0; f < r->nf; f++) {
        if (!r->fs[f].n) continue; /* never scored: no arrays */
        memcpy(ps + k, r->fs[f].score, sizeof(float) * r->fs[f].n);
        memcpy(pl + k, r->fs[f].label, r->fs[f].n);
        k += r->fs[f].n;
    }
    float pooled = NAN, thr;
    double f1;
    rc = met_best_f1_threshold(ps, pl, tot, &pooled, &f1);
    if (rc == CTG_ENOMEM) goto out;
    if (rc == 0) {
        pooled = fminf(fmaxf(pooled, 1e-6f), 1 - 1e-6f);
        snprintf(val, sizeof val, "%.6g", (double)pooled);
        if ((rc = mdl_meta_set(m, ZS_META_POOLED, val)) < 0) goto out;
        fprintf(stderr, "calibrate: pooled over %zu scores: threshold %.4f (F1 %.3f)\n", tot,
                (double)pooled, f1);
    } else {
        fprintf(stderr, "calibrate: no positive finding in the data: nothing to calibrate on\n");
        rc = CTG_EINVAL;
        goto out;
    }
    int own = 0;
    for (int f = 0; f < r->nf; f++) {
        const ev_fscores *s = &r->fs[f];
        size_t np = 0;
        for (size_t i = 0; i < s->n; i++) np += s->label[i];
        if ((int)np < o->min_pos || np == s->n) {
            if (s->n)
                fprintf(stderr, "calibrate: %-24s %4zu scored, %3zu positive: pooled threshold\n",
                        l->f[f].key, s->n, np);
            continue;
        }
        if ((rc = met_best_f1_threshold(s->score, s->label, s->n, &thr, &f1)) < 0) goto out;
        thr = fminf(fmaxf(thr, 1e-6f), 1 - 1e-6f);
        char key[MDL_META_KEY + 16];
        if (snprintf(key, sizeof key, "threshold.%s", l->f[f].key) >= MDL_META_KEY) {
            fprintf(stderr, "calibrate: %s: key too long for the model: pooled threshold\n",
                    l->f[f].key);
            continue;
        }
        snprintf(val, sizeof val, "%.6g", (double)thr);
        if ((rc = mdl_meta_set(m, key, val)) < 0) goto out;
        own++;
        fprintf(stderr, "calibrate: %-24s %4zu scored, %3zu positive: threshold %.4f (F1 %.3f)\n",
                l->f[f].key, s->n, np, (double)thr, f1);
    }
    snprintf(val, sizeof val, "%d", r->cases);
    rc = mdl_meta_set(m, "calibration.cases", val);
    if (!rc) rc = mdl_meta_set(m, "calibration.text", o->text == ZS_TEXT_TRAIN     ? "train"
                                                      : o->text == ZS_TEXT_HELDOUT ? "heldout"
                                                                                   : "all");
    if (!rc) rc = mdl_meta_set(m, "calibration.objective", "f1");
    const char *base = strrchr(o->data, '/');
    if (!rc) rc = mdl_meta_set(m, "calibration.data", base ? base + 1 : o->data);
    if (rc < 0) goto out;
    if ((rc = mdl_save(m, o->out, why, sizeof why)) < 0) {
        fprintf(stderr, "calibrate: %s: %s\n", o->out, why);
        goto out;
    }
    fprintf(stderr, "calibrate: %d findings with their own threshold, the rest pooled; wrote %s (%s)\n",
            own, o->out, mdl_identity(m));
    rc = 0;
out:
    free(ps);
    free(pl);
    mdl_free(m);
    return rc;
}

static int eval_cli(int argc, char **argv, int cal)
{
    static char findings[4096], vocab[4096];
    ev_opts o = {.findings = ctg_data_path("etc/findings.conf", findings, sizeof findings),
                 .vocab = ctg_data_path(TXT_GLOVE_DEFAULT, vocab, sizeof vocab),
                 .text = ZS_TEXT_TRAIN,
                 .threshold = -1,
                 .overlap = 0.25f,
                 .min_pos = 3};
    const char *cmd = cal ? "calibrate" : "eval";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage();
            return 0;
        }
        if (!v) {
            fprintf(stderr, "%s: %s needs a value\n", cmd, a);
            usage();
            return 2;
        }
        i++;
        char *end;
        if (!strcmp(a, "--model")) o.model = v;
        else if (!strcmp(a, "--data")) o.data = v;
        else if (!strcmp(a, "--out")) o.out = v;
        else if (!strcmp(a, "--findings")) o.findings = v;
        else if (!strcmp(a, "--vocab")) o.vocab = v;
        else if (!strcmp(a, "--table") && !cal) o.table = v;
        else if (!strcmp(a, "--rows") && !cal) o.rows = v;
        else if (!strcmp(a, "--min-positives") && cal) {
            o.min_pos = (int)strtol(v, &end, 10);
            if (end == v || *end || o.min_pos < 1 || o.min_pos > 1000000) {
                fprintf(stderr, "calibrate: --min-positives must be a positive count\n");
                return 2;
            }
        }
        else if (!strcmp(a, "--text")) {
            if ((o.text = zs_text_parse(v)) < 0) {
                fprintf(stderr, "eval: --text must be train, heldout or all\n");
                return 2;
            }
        } else if (!strcmp(a, "--threshold") && !cal) {
            o.threshold = strtof(v, &end);
            if (end == v || *end || !(o.threshold > 0 && o.threshold < 1)) {
                fprintf(stderr, "eval: --threshold must be in (0, 1)\n");
                return 2;
            }
        } else if (!strcmp(a, "--spacing")) {
            if (parse_spacing(v, o.spacing) < 0) {
                fprintf(stderr, "eval: --spacing takes MM or MM,MM,MM\n");
                return 2;
            }
        } else if (!strcmp(a, "--overlap")) {
            o.overlap = strtof(v, &end);
            if (end == v || *end || !(o.overlap >= 0 && o.overlap < 1)) {
                fprintf(stderr, "eval: --overlap must be in [0, 1)\n");
                return 2;
            }
        } else if (!strcmp(a, "--threads")) {
            o.threads = (int)strtol(v, &end, 10);
            if (end == v || *end || o.threads < 1 || o.threads > 1024) {
                fprintf(stderr, "eval: --threads must be 1..1024\n");
                return 2;
            }
        } else {
            fprintf(stderr, "%s: unknown option %s\n", cmd, a);
            usage();
            return 2;
        }
    }
    if (cal && (!o.model || !o.data || !o.out)) {
        fprintf(stderr, "calibrate: --model, --data and --out are required\n");
        usage();
        return 2;
    }
    if ((!o.model && !o.rows) || !o.data || !o.out || (!o.table != !o.rows)) {
        fprintf(stderr, "eval: --data, --out and --model (or --table with --rows) are required; "
                        "--table and --rows go together\n");
        usage();
        return 2;
    }

    char rowbuf[4096];
    char names[EV_MAX_ROWS + 1][64];
    char *paths[EV_MAX_ROWS + 1];
    int nrows = 0;
    if (o.rows) {
        snprintf(rowbuf, sizeof rowbuf, "%s", o.rows);
        if (strlen(o.rows) >= sizeof rowbuf || parse_rows(rowbuf, names, paths, &nrows) < 0) {
            fprintf(stderr, "eval: --rows takes 'NAME=MODEL,...' (1..%d rows)\n", EV_MAX_ROWS);
            return 2;
        }
    }
    if (o.threads) op_set_threads(o.threads);

    int status = 1;
    char why[512] = "";
    zs_list *l = NULL;
    txt_encoder *enc = NULL;
    td_manifest *man = NULL;
    ev_result res[EV_MAX_ROWS + 1];
    int nres = 0;
    char *json = NULL;
    cJSON *root = NULL;
    memset(res, 0, sizeof res);

    if (zs_list_load(o.findings, &l, why, sizeof why) < 0) {
        fprintf(stderr, "eval: findings list: %s\n", why);
        goto fail;
    }
    if (txt_open("glove", o.vocab, &enc, why, sizeof why) < 0) {
        fprintf(stderr, "eval: text encoder %s: %s\n", o.vocab, why);
        goto fail;
    }
    if (td_manifest_load(o.data, &man, why, sizeof why) < 0) {
        fprintf(stderr, "eval: manifest %s: %s\n", o.data, why);
        goto fail;
    }
    /* The rows first, then the --model run unless a row named the same
     * file. */
    for (int r = 0; r < nrows; r++, nres++)
        if (eval_model(&o, paths[r], man, l, enc, &res[r]) < 0) goto fail;
    const char *main_model = o.model;
    int main_idx = nrows - 1;
    for (int r = 0; o.model && r < nrows; r++)
        if (!strcmp(paths[r], o.model)) main_idx = r;
    if (o.model && (main_idx < 0 || strcmp(paths[main_idx], o.model))) {
        if (eval_model(&o, o.model, man, l, enc, &res[nres]) < 0) goto fail;
        main_idx = nres++;
    } else {
        main_model = paths[nrows - 1];
    }
    if (!res[main_idx].cases) {
        fprintf(stderr, "%s: no case could be evaluated\n", cmd);
        goto fail;
    }
    if (cal) {
        status = calibrate(&o, l, &res[main_idx]) < 0;
        goto fail;
    }

    root = result_json(&res[main_idx], l, &o, main_model);
    if (nrows) {
        cJSON *tb = cJSON_AddArrayToObject(root, "table");
        for (int r = 0; r < nrows; r++) {
            cJSON *x = cJSON_CreateObject();
            cJSON_AddStringToObject(x, "name", names[r]);
            cJSON_AddStringToObject(x, "model", paths[r]);
            cJSON_AddStringToObject(x, "model_identity", res[r].identity);
            add_num(x, "organ_top1", res[r].organ_top1);
            add_num(x, "macro_auc", res[r].macro_auc);
            add_num(x, "macro_f1", res[r].macro_f1);
            add_num(x, "mean_dice", res[r].mean_dice);
            cJSON *fa = cJSON_AddObjectToObject(x, "auc");
            for (int j = 0; j < l->n; j++) add_num(fa, l->f[j].key, res[r].auc[j]);
            cJSON_AddItemToArray(tb, x);
        }
    }
    if (!(json = cJSON_Print(root))) goto fail;
    size_t jl = strlen(json);
    char *withnl = realloc(json, jl + 2);
    if (!withnl) goto fail;
    json = withnl;
    memcpy(json + jl, "\n", 2);
    if (write_file(o.out, json) < 0) goto fail;
    if (nrows && write_table(o.table, &o, l, nrows, names, res) < 0) goto fail;
    status = 0;
fail:
    for (int r = 0; r < nres; r++) ev_result_clear(&res[r]);
    cJSON_Delete(root);
    free(json);
    td_manifest_free(man);
    txt_close(enc);
    zs_list_free(l);
    return status;
}

int trn_eval_main(int argc, char **argv) { return eval_cli(argc, argv, 0); }
int trn_calibrate_main(int argc, char **argv) { return eval_cli(argc, argv, 1); }
