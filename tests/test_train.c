/*
 * test_train.c - the CT-GLIP losses (core/glip.c) and the training loop
 * (tools/train.c): hand-computed contrastive losses, the false-negative
 * masks and their effect, finite-difference gradients of the composed
 * losses (text projection included), a short training run that must lower
 * the losses, exact resume from a checkpoint, and a bad case skipped.
 *
 * Training runs use phantoms at --matrix 48 --thickness 8 without DICOM,
 * a width-8 depth-2 network on 32^3 patches at 6 mm, so each test takes a
 * few seconds on two cores.  Each test runs in its own empty folder
 * (tests/runner.c); the vocabulary is read under $CTG_ROOT.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "core/glip.h"
#include "core/model.h"
#include "core/ops.h"
#include "core/text.h"
#include "tests.h"
#include "tools/train.h"
#include "tools/train_eval.h"

#include <cjson/cJSON.h>

static const char *vocab(void)
{
    static char path[4096];
    const char *root = getenv("CTG_ROOT");
    snprintf(path, sizeof path, "%s/%s", root ? root : ".", TXT_GLOVE_DEFAULT);
    return path;
}

/* ---- losses ---------------------------------------------------------------------- */

/* Two orthonormal pairs at tau 1: every row is -log(e / (e + 1)). */
static int t_pair_hand(void)
{
    const float v[4] = {1, 0, 0, 1};
    float loss, dimg[4] = {0}, dtxt[4] = {0};
    double l1 = log1p(exp(-1.0));
    CHECK(glp_pair_loss(&loss, v, v, NULL, 2, 2, 2, 1.0f, 1.0f, dimg, dtxt) == 0);
    CHECK(fabs(loss - l1) < 1e-6);
    /* Masking column 1 for row 0 (and, transposed, image 0 for text 1)
     * leaves those two rows with only their positive: loss 0 each. */
    const uint8_t mask[4] = {0, 1, 0, 0};
    CHECK(glp_pair_loss(&loss, v, v, mask, 2, 2, 2, 1.0f, 1.0f, NULL, NULL) == 0);
    CHECK(fabs(loss - l1 / 2) < 1e-6);
    /* An extra negative identical to text 0 adds a term e^1 to row 0's
     * image->text denominator: -log(e / (2e + 1)). */
    const float t3[6] = {1, 0, 0, 1, 1, 0};
    CHECK(glp_pair_loss(&loss, v, t3, NULL, 2, 3, 2, 1.0f, 1.0f, NULL, NULL) == 0);
    double i2t = 0.5 * (-log(exp(1.0) / (2 * exp(1.0) + 1)) + -log(exp(1.0) / (exp(1.0) + 2)));
    CHECK(fabs(loss - 0.5 * (i2t + l1)) < 1e-6);
    /* ... and masking it as a false negative of row 0 brings row 0 back. */
    const uint8_t m3[6] = {0, 0, 1, 0, 0, 0};
    CHECK(glp_pair_loss(&loss, v, t3, m3, 2, 3, 2, 1.0f, 1.0f, NULL, NULL) == 0);
    i2t = 0.5 * (l1 + -log(exp(1.0) / (exp(1.0) + 2)));
    CHECK(fabs(loss - 0.5 * (i2t + l1)) < 1e-6);
    /* No rows: zero loss, nothing touched. */
    CHECK(glp_pair_loss(&loss, NULL, NULL, NULL, 0, 0, 2, 0.07f, 1.0f, NULL, NULL) == 0);
    CHECK(loss == 0);
    CHECK(glp_pair_loss(&loss, v, v, NULL, 2, 1, 2, 0.07f, 1.0f, NULL, NULL) == CTG_EINVAL);
    return 0;
}

static int t_masks(void)
{
    const int cls[4] = {3, 5, 3, 3};
    uint8_t m[16];
    glp_ot_mask(cls, 4, m);
    const uint8_t want[16] = {0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 1, 1, 0, 1, 0};
    CHECK(memcmp(m, want, 16) == 0);

    /* Rows: liver normal in two patches, a left kidney stone, the spleen
     * normal; dictionary: the liver's normal text again, another phrasing of
     * the kidney stone, the same abnormality of the right kidney, another
     * abnormality of the left kidney. */
    const glp_text cols[8] = {
        {"no evident abnormality in liver", 5, -1},
        {"no evident abnormality in liver", 5, -1},
        {"left kidney stone of 7 mm", 3, 0},
        {"no evident abnormality in spleen", 1, -1},
        {"no evident abnormality in liver", 5, -1},
        {"nephrolithiasis on the left", 3, 0},
        {"nephrolithiasis on the right", 2, 0},
        {"simple cyst of the left kidney", 3, 1},
    };
    uint8_t a[4 * 8];
    glp_at_mask(cols, 4, 8, a);
    const uint8_t wa[32] = {
        0, 1, 0, 0, 1, 0, 0, 0, /* liver: the other liver normal, the dict copy */
        1, 0, 0, 0, 1, 0, 0, 0,
        0, 0, 0, 0, 0, 1, 0, 0, /* kidney stone: its other phrasing only */
        0, 0, 0, 0, 0, 0, 0, 0, /* spleen: nothing (dictionary entries are negatives) */
    };
    CHECK(memcmp(a, wa, sizeof wa) == 0);
    return 0;
}

/* A masked column leaves the softmax entirely: when every row masks it, the
 * loss does not depend on it and it gets no gradient; unmasked, it does. */
static int t_mask_effect(void)
{
    tu_seed(7);
    const int n = 3, m = 5, e = 4;
    float *img = tu_frand((size_t)n * e, -1, 1), *txt = tu_frand((size_t)m * e, -1, 1);
    uint8_t mask[15] = {0};
    mask[0 * m + 3] = 1;
    mask[2 * m + 4] = 1;
    mask[1 * m + 2] = 1;
    float l0, l1, d0[20] = {0};
    CHECK(glp_pair_loss(&l0, img, txt, mask, n, m, e, 0.07f, 1.0f, NULL, d0) == 0);
    uint8_t all[15] = {0};
    for (int i = 0; i < n; i++) all[i * m + 4] = 1;
    float d1[20] = {0};
    CHECK(glp_pair_loss(&l1, img, txt, all, n, m, e, 0.07f, 1.0f, NULL, d1) == 0);
    for (int k = 0; k < e; k++) CHECK(d1[4 * e + k] == 0);
    float save = txt[4 * e];
    txt[4 * e] += 0.5f;
    float l2;
    CHECK(glp_pair_loss(&l2, img, txt, all, n, m, e, 0.07f, 1.0f, NULL, NULL) == 0);
    CHECK(l2 == l1);
    txt[4 * e] = save;
    /* Without the mask the same change does move the loss. */
    float l3, l4;
    CHECK(glp_pair_loss(&l3, img, txt, NULL, n, m, e, 0.07f, 1.0f, NULL, NULL) == 0);
    txt[4 * e] += 0.5f;
    CHECK(glp_pair_loss(&l4, img, txt, NULL, n, m, e, 0.07f, 1.0f, NULL, NULL) == 0);
    CHECK(l3 != l4);
    free(img);
    free(txt);
    return 0;
}

/* Finite differences of the composed text side: raw texts -> trainable
 * projection -> L2 norm -> AT-style loss with extra negatives and a mask,
 * against the analytic gradient of the image rows, the projected texts
 * and the projection's parameters (mdl_text_backward). */
static int t_gradcheck(void)
{
    mdl_config c = mdl_config_default(3);
    c.width = 4;
    c.depth = 1;
    c.embed_dim = 6;
    c.mlp_hidden = 8;
    c.text_dim = 5;
    c.patch[0] = c.patch[1] = c.patch[2] = 8;
    const int ids[3] = {1, 2, 5};
    mdl_model *m = NULL;
    char why[256];
    CHECK(mdl_new(&c, ids, "test", 3, &m, why, sizeof why) == 0);
    CHECK(mdl_train_alloc(m) == 0);
    const int n = 3, mm = 6, E = 6, T = 5;
    tu_seed(11);
    float *raw = tu_frand((size_t)mm * T, -1, 1), *img0 = tu_frand((size_t)n * E, -1, 1);
    float img[18], txt[36], nrm[6], dimg[18], dtxt[36];
    for (int i = 0; i < n; i++) {
        double s = 0;
        for (int k = 0; k < E; k++) s += img0[i * E + k] * img0[i * E + k];
        for (int k = 0; k < E; k++) img[i * E + k] = (float)(img0[i * E + k] / sqrt(s));
    }
    uint8_t mask[18] = {0};
    mask[0 * mm + 1] = 1;
    mask[1 * mm + 0] = 1;
    mask[2 * mm + 5] = 1;
    const float tau = 0.2f, w = 0.5f;
    const mdl_tensor *pw = mdl_find_tensor(m, "text.proj.w");
    const mdl_tensor *pb = mdl_find_tensor(m, "text.proj.b");
    CHECK(pw && pb);

    /* Loss as a function of the parameters and the image rows. */
#define LOSS(out)                                                                          \
    do {                                                                                   \
        CHECK(mdl_text_forward(m, txt, nrm, raw, mm) == 0);                                \
        CHECK(glp_pair_loss(&(out), img, txt, mask, n, mm, E, tau, w, NULL, NULL) == 0);   \
        (out) *= w;                                                                        \
    } while (0)

    mdl_zero_grad(m);
    memset(dimg, 0, sizeof dimg);
    memset(dtxt, 0, sizeof dtxt);
    float l;
    CHECK(mdl_text_forward(m, txt, nrm, raw, mm) == 0);
    CHECK(glp_pair_loss(&l, img, txt, mask, n, mm, E, tau, w, dimg, dtxt) == 0);
    CHECK(mdl_text_backward(m, dtxt, txt, nrm, raw, mm) == 0);
    const double h = 1e-3;
    double worst = 0;
    /* Projection weights and biases. */
    size_t idx[8] = {pw->off, pw->off + 7, pw->off + 13, pw->off + pw->count - 1, pb->off,
                     pb->off + 3, pw->off + 21, pb->off + 5};
    for (int q = 0; q < 8; q++) {
        float save = m->params[idx[q]], lp, lm;
        m->params[idx[q]] = save + (float)h;
        LOSS(lp);
        m->params[idx[q]] = save - (float)h;
        LOSS(lm);
        m->params[idx[q]] = save;
        double num = (lp - lm) / (2 * h), ana = m->grads[idx[q]];
        double err = fabs(num - ana) / fmax(1e-2, fabs(num) + fabs(ana));
        if (err > worst) worst = err;
    }
    /* Image rows. */
    for (int q = 0; q < n * E; q += 2) {
        float save = img[q], lp, lm;
        img[q] = save + (float)h;
        LOSS(lp);
        img[q] = save - (float)h;
        LOSS(lm);
        img[q] = save;
        double num = (lp - lm) / (2 * h), ana = dimg[q];
        double err = fabs(num - ana) / fmax(1e-2, fabs(num) + fabs(ana));
        if (err > worst) worst = err;
    }
#undef LOSS
    fprintf(stderr, "worst relative gradient error %.2e\n", worst);
    CHECK(worst < 2e-2);
    free(raw);
    free(img0);
    mdl_free(m);
    return 0;
}

/* ---- the training loop --------------------------------------------------------------- */

static int make_phantoms(const char *dir, const char *seed, const char *count)
{
    return tu_phantom("--seed", seed, "--count", count, "--out", dir, "--matrix", "48",
                      "--thickness", "8", "--fov", "abdomen", "--abnormal-rate", "0.8",
                      "--no-dicom", NULL);
}

static void tiny_opts(trn_opts *o, const char *data, const char *out)
{
    trn_opts_default(o);
    o->data = data;
    o->out = out;
    o->vocab = vocab();
    o->steps = 30;
    o->stage1_steps = 10;
    o->batch = 2;
    o->patch = 32;
    o->spacing = 6;
    o->width = 8;
    o->depth = 2;
    o->embed = 32;
    o->lr = 1e-2f;
    o->min_lr = 1e-3f;
    o->warmup = 2;
    o->threads = 2;
    o->ckpt_every = 0;
    o->quiet = 1;
    o->dict = 64;
}

/* The CSV rows without the seconds column, for comparisons. */
typedef struct row {
    long step;
    int stage;
    double lr, loss, ce, dice, ot, at, clip;
    int organs;
    char text[1024];
} row;

static int read_csv(const char *path, row *rows, int cap)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[1024];
    int n = 0;
    if (!fgets(line, sizeof line, f)) {
        fclose(f);
        return -1;
    }
    while (n < cap && fgets(line, sizeof line, f)) {
        row *r = &rows[n];
        if (sscanf(line, "%ld,%d,%lf,%lf,%lf,%lf,%lf,%lf,%lf,%d", &r->step, &r->stage, &r->lr,
                   &r->loss, &r->ce, &r->dice, &r->ot, &r->at, &r->clip, &r->organs) != 10)
            break;
        char *last = strrchr(line, ',');
        if (last) *last = 0;
        snprintf(r->text, sizeof r->text, "%s", line);
        n++;
    }
    fclose(f);
    return n;
}

static int t_loss_down(void)
{
    CHECK(make_phantoms("ph", "5", "3") == 0);
    trn_opts o;
    tiny_opts(&o, "ph/manifest.jsonl", "run");
    o.steps = 40;
    o.stage1_steps = 10;
    double t0 = ctg_mono();
    CHECK(trn_run(&o) == 0);
    double dt = ctg_mono() - t0;
    row r[64];
    int n = read_csv("run/train.csv", r, 64);
    CHECK_EQ_INT(n, 40);
    /* Means over windows smooth out the batch-to-batch noise. */
    double seg0 = 0, seg1 = 0, ot0 = 0, ot1 = 0, at0 = 0, at1 = 0;
    for (int i = 0; i < 3; i++) seg0 += (r[i].ce + r[i].dice) / 3;
    for (int i = 37; i < 40; i++) seg1 += (r[i].ce + r[i].dice) / 3;
    for (int i = 10; i < 15; i++) ot0 += r[i].ot / 5, at0 += r[i].at / 5;
    for (int i = 35; i < 40; i++) ot1 += r[i].ot / 5, at1 += r[i].at / 5;
    fprintf(stderr, "%.1f s: seg %.3f -> %.3f, ot %.3f -> %.3f, at %.3f -> %.3f\n", dt, seg0,
            seg1, ot0, ot1, at0, at1);
    for (int i = 0; i < 10; i++) CHECK(r[i].stage == 1 && r[i].ot == 0 && r[i].at == 0);
    for (int i = 10; i < 40; i++) CHECK(r[i].stage == 2 && r[i].organs > 0 && r[i].ot > 0);
    CHECK(seg1 < 0.7 * seg0);
    CHECK(ot1 < ot0);
    CHECK(at1 < at0);
    /* The model file is there and loads, with the class list. */
    mdl_model *m = NULL;
    char why[256];
    CHECK(mdl_load("run/model.ctglip", &m, why, sizeof why) == 0);
    CHECK_EQ_INT(m->cfg.n_classes, o.norgans);
    CHECK_EQ_INT(m->class_ids[0], o.organs[0]);
    mdl_free(m);
    return 0;
}

static int t_resume_exact(void)
{
    CHECK(make_phantoms("ph", "6", "3") == 0);
    trn_opts o;
    tiny_opts(&o, "ph/manifest.jsonl", "a");
    o.steps = 12;
    o.stage1_steps = 4;
    CHECK(trn_run(&o) == 0);
    /* Interrupted after step 7 (inside stage 2), then resumed. */
    tiny_opts(&o, "ph/manifest.jsonl", "b");
    o.steps = 12;
    o.stage1_steps = 4;
    o.stop_at = 7;
    CHECK(trn_run(&o) == 0);
    row rb[32];
    CHECK_EQ_INT(read_csv("b/train.csv", rb, 32), 7);
    o.stop_at = 0;
    o.resume = "b/ckpt.bin";
    CHECK(trn_run(&o) == 0);
    row ra[32];
    CHECK_EQ_INT(read_csv("a/train.csv", ra, 32), 12);
    CHECK_EQ_INT(read_csv("b/train.csv", rb, 32), 12);
    for (int i = 0; i < 12; i++) {
        if (strcmp(ra[i].text, rb[i].text) != 0) {
            fprintf(stderr, "row %d differs:\n  %s\n  %s\n", i + 1, ra[i].text, rb[i].text);
            return 1;
        }
    }
    mdl_model *ma = NULL, *mb = NULL;
    char why[256];
    CHECK(mdl_load("a/model.ctglip", &ma, why, sizeof why) == 0);
    CHECK(mdl_load("b/model.ctglip", &mb, why, sizeof why) == 0);
    CHECK(ma->n_params == mb->n_params);
    CHECK(memcmp(ma->params, mb->params, sizeof(float) * ma->n_params) == 0);
    CHECK(strcmp(mdl_identity(ma), mdl_identity(mb)) == 0);
    /* A resume with another seed is refused rather than silently diverging. */
    o.seed = 2;
    CHECK(trn_run(&o) != 0);
    mdl_free(ma);
    mdl_free(mb);
    return 0;
}

static int t_skip_bad(void)
{
    CHECK(make_phantoms("ph", "7", "2") == 0);
    FILE *f = fopen("ph/manifest.jsonl", "a");
    CHECK(f);
    fprintf(f, "{\"id\":\"ghost\",\"ct\":\"nowhere/ct.nii.gz\",\"labels\":\"nowhere/labels.nii.gz\","
               "\"findings\":[]}\n");
    fclose(f);
    trn_opts o;
    tiny_opts(&o, "ph/manifest.jsonl", "run");
    o.steps = 6;
    o.stage1_steps = 2;
    CHECK(trn_run(&o) == 0);
    row r[16];
    CHECK_EQ_INT(read_csv("run/train.csv", r, 16), 6);
    FILE *g = fopen("run/model.ctglip", "rb");
    CHECK(g);
    fclose(g);
    /* A manifest of nothing but bad cases fails instead of spinning. */
    f = fopen("bad.jsonl", "w");
    CHECK(f);
    fprintf(f, "{\"id\":\"ghost\",\"ct\":\"nowhere/ct.nii.gz\",\"labels\":\"nowhere/l.nii.gz\"}\n");
    fclose(f);
    tiny_opts(&o, "bad.jsonl", "run2");
    o.steps = 2;
    CHECK(trn_run(&o) != 0);
    return 0;
}

/* A deadline (or a stop request) checkpoints and stops without a model
 * file; resuming finishes the run, and the losses of the stopped-and-resumed
 * run equal those of an uninterrupted one. */
static int t_deadline(void)
{
    CHECK(make_phantoms("ph", "8", "2") == 0);
    trn_opts o;
    tiny_opts(&o, "ph/manifest.jsonl", "straight");
    o.steps = 6;
    o.stage1_steps = 2;
    CHECK(trn_run(&o) == 0);
    tiny_opts(&o, "ph/manifest.jsonl", "run");
    o.steps = 6;
    o.stage1_steps = 2;
    o.deadline = ctg_now() - 1; /* already past: stop after the first step */
    CHECK_EQ_INT(trn_run(&o), TRN_STOPPED);
    FILE *g = fopen("run/model.ctglip", "rb");
    CHECK(!g);
    row r[16];
    CHECK_EQ_INT(read_csv("run/train.csv", r, 16), 1);
    o.deadline = 0;
    volatile int stop = 1;
    o.stop = &stop;
    o.resume = "run/ckpt.bin";
    CHECK_EQ_INT(trn_run(&o), TRN_STOPPED); /* stopped again after step 2 */
    CHECK_EQ_INT(read_csv("run/train.csv", r, 16), 2);
    stop = 0;
    CHECK_EQ_INT(trn_run(&o), 0);
    row a[16];
    CHECK_EQ_INT(read_csv("run/train.csv", r, 16), 6);
    CHECK_EQ_INT(read_csv("straight/train.csv", a, 16), 6);
    for (int i = 0; i < 6; i++) CHECK(strcmp(r[i].text, a[i].text) == 0);
    g = fopen("run/model.ctglip", "rb");
    CHECK(g);
    fclose(g);
    return 0;
}

/* A few hundred steps on a handful of tiny phantoms: zero-shot organ top-1
 * on other phantoms must beat chance (1 in 24 classes) by a wide margin:
 * five times it (this run reaches 0.31, 7.4 times). */
static int t_beats_chance(void)
{
    CHECK(make_phantoms("ph", "21", "6") == 0);
    CHECK(tu_phantom("--seed", "91", "--count", "2", "--out", "ho", "--matrix", "48",
                     "--thickness", "8", "--fov", "abdomen", "--abnormal-rate", "0.8",
                     "--no-dicom", NULL) == 0);
    trn_opts o;
    tiny_opts(&o, "ph/manifest.jsonl", "run");
    o.steps = 300;
    o.stage1_steps = 100;
    o.dict = 64;
    double t0 = ctg_mono();
    CHECK(trn_run(&o) == 0);
    double dt = ctg_mono() - t0;
    char findings[4096];
    snprintf(findings, sizeof findings, "%s", tu_root_path("etc/findings.conf"));
    char *ev[] = {"eval", "--model", "run/model.ctglip", "--data", "ho/manifest.jsonl", "--out",
                  "r.json", "--findings", findings, "--vocab", (char *)vocab(), "--threads", "2",
                  NULL};
    CHECK_EQ_INT(trn_eval_main((int)(sizeof ev / sizeof ev[0]) - 1, ev), 0);
    char *text = tu_slurp("r.json", NULL);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    free(text);
    CHECK(j);
    double top1 = cJSON_GetObjectItemCaseSensitive(j, "organ_top1")->valuedouble;
    double chance = 1.0 / o.norgans;
    fprintf(stderr, "%.1f s of training: organ top-1 %.3f on held-out phantoms (chance %.3f)\n",
            dt, top1, chance);
    CHECK(top1 >= 5 * chance);
    cJSON_Delete(j);
    return 0;
}

const test_case train_tests[] = {
    {"train_beats_chance", t_beats_chance, 240},
    {"train_deadline", t_deadline},
    {"train_pair_hand", t_pair_hand},
    {"train_masks", t_masks},
    {"train_mask_effect", t_mask_effect},
    {"train_gradcheck", t_gradcheck},
    {"train_loss_down", t_loss_down},
    {"train_resume_exact", t_resume_exact},
    {"train_skip_bad", t_skip_bad},
    {NULL, NULL},
};
