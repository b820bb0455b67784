/*
 * test_cunet.c - the network on the GPU (cuda/cunet.h) against the CPU
 * network (core/model.h), function by function, in the host emulation of
 * the GPU ops (CU_EMULATE: the same kernel bodies on the CPU, no GPU
 * needed) and, where device 0 opens, on the GPU itself (else skipped).
 *
 *   forward    logits, features, the label map, counts and embeddings of
 *              cu_forward vs mdl_forward, with given labels and with the
 *              argmax (voxels whose CPU top two logits are within a tie
 *              margin may differ);
 *   grads      cu_seg_loss's CE and Dice, and every parameter gradient of
 *              cu_backward (dlogits and a dembed with an absent organ's
 *              row set) vs mdl_seg_loss + mdl_backward, per tensor relative
 *              to the tensor's largest gradient (floored at 1% of the
 *              network's largest);
 *   train      20 steps (forward, seg loss, backward with a fixed dembed,
 *              clipping at a norm that triggers, AdamW) on both paths: the
 *              two loss curves and the final parameters;
 *   infer      cu_infer vs mdl_infer on a volume that needs overlapping,
 *              clipped windows: labels equal except near ties, counts and
 *              embeddings close;
 *   text       the text projection forward and its gradients.
 *
 * Bounds: fp32 relative errors <= 1e-4 (forward, loss), 1e-3 (gradients,
 * the loss curve); bf16 (activations rounded to 8 mantissa bits at every
 * layer) forward <= 5e-2 of the output's scale, gradients <= 0.5 per
 * tensor with cosine >= 0.85 (0.02 at the head and the MLP), loss curve
 * <= 5e-2 relative; the measured values are printed.
 * On a real device fp32 convolutions take cuDNN's algorithms (different
 * summation orders), so the fp32 bounds there are 10x looser.
 *
 * Sizes are tiny (K 3, width 4, depth 2, batch 2 of 4x8x12 voxels) so that
 * the emulation, one element at a time, stays well under a second a test.
 */
#include "tests.h"

#include "core/core.h"
#include "core/model.h"
#include "core/ops.h"
#include "cuda/cunet.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const int k_ids[3] = {5, 1, 2}; /* liver, spleen, kidney_right */

enum { ND = 4, NH = 8, NW = 12, NB = 2 };

static mdl_model *net_model_pool(uint64_t seed, int pool)
{
    mdl_config c = mdl_config_default(3);
    c.pool = pool;
    c.width = 4;
    c.depth = 2;
    c.embed_dim = 8;
    c.mlp_hidden = 16;
    c.text_dim = 5;
    c.patch[0] = 4;
    c.patch[1] = 8;
    c.patch[2] = 8;
    mdl_model *m = NULL;
    char why[200];
    if (mdl_new(&c, k_ids, "test-encoder:0", seed, &m, why, sizeof why)) {
        fprintf(stderr, "mdl_new: %s\n", why);
        return NULL;
    }
    return m;
}

/* The default organ descriptor (mean and maximum). */
static mdl_model *net_model(uint64_t seed) { return net_model_pool(seed, MDL_POOL_MEANMAX); }

/* Opens device dev (CU_EMULATE or 0); 0, or a reason in why. */
static int ctx_open(int dev, cu_ctx **c, char *why, size_t n)
{
    *c = NULL;
    return cu_ctx_new(dev, c, why, n);
}

#define OPEN_OR_SKIP(dev, c)                                                   \
    do {                                                                       \
        char why_[256] = "";                                                   \
        if (ctx_open((dev), &(c), why_, sizeof why_)) {                        \
            if ((dev) == CU_EMULATE) SKIP("no GPU emulation (%s)", why_);      \
            SKIP("no GPU (%s)", why_);                                         \
        }                                                                      \
    } while (0)

/* Labels [n][s]: every class 0..k1-1 in every sample, except class
 * `absent` in the last sample (-1: none absent); a few ignored voxels
 * (ign). */
static uint8_t *labels_make(int n, size_t s, int k1, int absent, int ign)
{
    uint8_t *l = malloc((size_t)n * s);
    if (!l) abort();
    for (int b = 0; b < n; b++)
        for (size_t i = 0; i < s; i++) {
            int v = i < (size_t)k1 ? (int)i : (int)(tu_urand() * k1);
            if (b == n - 1 && v == absent) v = 0;
            if (ign && i >= (size_t)k1 && tu_urand() < 0.05) v = MDL_IGNORE;
            l[(size_t)b * s + i] = (uint8_t)v;
        }
    return l;
}

/* Largest |a - b| and largest |b|. */
static double maxdiff(const float *a, const float *b, size_t n, double *scale)
{
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        if (!(e <= d)) d = e; /* NaN counts as the largest */
        if (fabs(b[i]) > s) s = fabs(b[i]);
    }
    if (scale) *scale = s;
    return d;
}

static double rel(double d, double scale) { return d / (scale > 1e-30 ? scale : 1e-30); }

static const char *tag(int dev, cu_dtype dt)
{
    static char b[32];
    snprintf(b, sizeof b, "%s %s", dev == CU_EMULATE ? "emu" : "gpu", cu_dtype_name(dt));
    return b;
}

/* Embedding rows of organs present on both sides (counts must match). */
static int embed_cmp(const int64_t *c1, const int64_t *c2, const float *e1, const float *e2,
                     int rows, int E, double *worst)
{
    *worst = 0;
    for (int r = 0; r < rows; r++) {
        if (c1[r] != c2[r]) return 1;
        if (!c1[r]) continue;
        double d = maxdiff(e1 + (size_t)r * E, e2 + (size_t)r * E, E, NULL);
        if (!(d <= *worst)) *worst = d;
    }
    return 0;
}

/* ---- (a) forward ------------------------------------------------------------------------ */

static int check_forward(int dev, cu_dtype dt)
{
    double tol = dt == CU_F32 ? (dev == CU_EMULATE ? 1e-4 : 1e-3) : 5e-2;
    cu_ctx *c;
    OPEN_OR_SKIP(dev, c);
    mdl_model *m = net_model(7);
    CHECK(m);
    mdl_acts *a = NULL;
    CHECK_EQ_INT(mdl_acts_new(m, NB, ND, NH, NW, &a), 0);
    cu_model *g = NULL;
    char why[256] = "";
    int rc = cu_model_new(c, m, dt, 0, &g, why, sizeof why);
    if (rc) fprintf(stderr, "cu_model_new: %s\n", why);
    CHECK_EQ_INT(rc, 0);
    cu_acts *ga = NULL;
    rc = cu_acts_new(g, NB, ND, NH, NW, &ga);
    if (rc) fprintf(stderr, "cu_acts_new: %s\n", cu_model_error(g));
    CHECK_EQ_INT(rc, 0);
    CHECK(cu_acts_bytes(ga) > 0);
    size_t s = a->s;
    int k1 = a->k1, C0 = 4, E = m->cfg.embed_dim, rows = NB * k1;
    float *x = tu_frand((size_t)NB * s, -1200, 1200);
    uint8_t *lab = labels_make(NB, s, k1, -1, 0);
    lab[s + 40] = MDL_IGNORE; /* > K: not pooled */
    float *lg = malloc((size_t)NB * k1 * s * sizeof(float));
    float *ft = malloc((size_t)NB * C0 * s * sizeof(float));
    uint8_t *sg = malloc((size_t)NB * s);
    CHECK(lg && ft && sg);

    /* Given labels. */
    CHECK_EQ_INT(mdl_forward(m, a, x, lab), 0);
    rc = cu_forward(g, ga, x, lab);
    if (rc) fprintf(stderr, "cu_forward: %s\n", cu_model_error(g));
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(cu_acts_fetch(ga, lg, ft, sg), 0);
    double sl, sf, de;
    double dl = maxdiff(lg, a->logits, (size_t)NB * k1 * s, &sl);
    double df = maxdiff(ft, a->feat, (size_t)NB * C0 * s, &sf);
    CHECK(memcmp(sg, lab, (size_t)NB * s) == 0);
    for (int r = 0; r < rows; r++) CHECK_EQ_INT(ga->count[r], a->count[r]);
    CHECK(a->count[k1 + 0] < (int64_t)s); /* the ignored voxel was not pooled */
    CHECK_EQ_INT(embed_cmp(a->count, ga->count, a->embed, ga->embed, rows, E, &de), 0);
    for (int i = 0; i < rows * E; i++) CHECK(ga->dembed[i] == 0);
    printf("forward %s, labels given: logits abs %.3g rel %.3g; feat abs %.3g rel %.3g; "
           "embed abs %.3g\n",
           tag(dev, dt), dl, rel(dl, sl), df, rel(df, sf), de);
    CHECK(rel(dl, sl) <= tol);
    CHECK(rel(df, sf) <= tol);
    CHECK(de <= tol); /* unit vectors */

    /* Argmax labels: equal except near ties of the CPU logits. */
    CHECK_EQ_INT(mdl_forward(m, a, x, NULL), 0);
    CHECK_EQ_INT(cu_forward(g, ga, x, NULL), 0);
    CHECK_EQ_INT(cu_acts_fetch(ga, lg, NULL, sg), 0);
    dl = maxdiff(lg, a->logits, (size_t)NB * k1 * s, &sl);
    size_t differ = 0;
    double tie = 2 * tol * sl;
    for (int b = 0; b < NB; b++)
        for (size_t v = 0; v < s; v++) {
            size_t i = (size_t)b * s + v;
            if (sg[i] == a->seg[i]) continue;
            differ++;
            const float *L = a->logits + (size_t)b * k1 * s + v;
            CHECK(sg[i] < k1);
            CHECK(fabs((double)L[a->seg[i] * s] - L[sg[i] * s]) <= tie);
        }
    printf("forward %s, argmax: %zu of %zu labels differ (near ties)\n", tag(dev, dt), differ,
           (size_t)NB * s);
    if (!differ) {
        for (int r = 0; r < rows; r++) CHECK_EQ_INT(ga->count[r], a->count[r]);
        CHECK_EQ_INT(embed_cmp(a->count, ga->count, a->embed, ga->embed, rows, E, &de), 0);
        printf("forward %s, argmax: embed abs %.3g\n", tag(dev, dt), de);
        CHECK(de <= tol);
    } else {
        CHECK(differ <= (size_t)NB * s / 50);
    }

    /* Wrong shapes are refused. */
    cu_acts *bad = NULL;
    CHECK_EQ_INT(cu_acts_new(g, 1, 6, 8, 8, &bad), CTG_EINVAL);
    CHECK(bad == NULL);
    CHECK(strstr(cu_model_error(g), "multiples"));
    /* An inference model has no gradients. */
    CHECK_EQ_INT(cu_backward(g, ga, 1, NULL), CTG_ESTATE);
    CHECK(cu_model_grads(g) == NULL);
    CHECK(cu_model_ctx(g) == c && cu_model_dtype(g) == dt);

    free(x), free(lab), free(lg), free(ft), free(sg);
    cu_acts_free(ga);
    cu_model_free(g);
    mdl_acts_free(a);
    mdl_free(m);
    cu_ctx_free(c);
    return 0;
}

/* Two input channels: the normalised input is packed to channels-last. */
static int check_forward_inch2(int dev)
{
    double tol = dev == CU_EMULATE ? 1e-4 : 1e-3;
    cu_ctx *c;
    OPEN_OR_SKIP(dev, c);
    mdl_config cf = mdl_config_default(3);
    cf.in_ch = 2;
    cf.width = 4;
    cf.depth = 1;
    cf.embed_dim = 8;
    cf.mlp_hidden = 16;
    cf.patch[0] = cf.patch[1] = cf.patch[2] = 4;
    mdl_model *m = NULL;
    char why[256] = "";
    CHECK_EQ_INT(mdl_new(&cf, k_ids, NULL, 13, &m, why, sizeof why), 0);
    CHECK_EQ_INT(mdl_train_alloc(m), 0);
    mdl_acts *a = NULL;
    CHECK_EQ_INT(mdl_acts_new(m, NB, 4, 6, 8, &a), 0);
    size_t s = a->s;
    int k1 = a->k1, E = cf.embed_dim, rows = NB * k1;
    float *x = tu_frand((size_t)NB * 2 * s, -1000, 1000);
    uint8_t *lab = labels_make(NB, s, k1, -1, 0);
    CHECK_EQ_INT(mdl_forward(m, a, x, lab), 0);
    cu_model *g = NULL;
    CHECK_EQ_INT(cu_model_new(c, m, CU_F32, 1, &g, why, sizeof why), 0);
    cu_acts *ga = NULL;
    CHECK_EQ_INT(cu_acts_new(g, NB, 4, 6, 8, &ga), 0);
    CHECK_EQ_INT(cu_forward(g, ga, x, lab), 0);
    float *lg = malloc((size_t)NB * k1 * s * sizeof(float));
    CHECK(lg);
    CHECK_EQ_INT(cu_acts_fetch(ga, lg, NULL, NULL), 0);
    double sl, de, dl = maxdiff(lg, a->logits, (size_t)NB * k1 * s, &sl);
    CHECK_EQ_INT(embed_cmp(a->count, ga->count, a->embed, ga->embed, rows, E, &de), 0);
    /* The backward of a first layer with two input channels (no input
     * gradient) and of depth 1. */
    mdl_zero_grad(m);
    CHECK_EQ_INT(mdl_seg_loss(m, a, lab, 1.0f, NULL, NULL), 0);
    CHECK_EQ_INT(mdl_backward(m, a, a->dlogits, NULL), 0);
    float *want = malloc(m->n_params * sizeof(float));
    memcpy(want, m->grads, m->n_params * sizeof(float));
    CHECK_EQ_INT(cu_model_zero_grad(g), 0);
    CHECK_EQ_INT(cu_seg_loss(g, ga, lab, 1.0f, NULL, NULL), 0);
    CHECK_EQ_INT(cu_backward(g, ga, 1, NULL), 0);
    CHECK_EQ_INT(cu_model_download(g, 1), 0);
    double sg, dg = maxdiff(m->grads, want, m->n_params, &sg);
    printf("forward %s, 2 input channels, depth 1: logits rel %.3g, embed abs %.3g, grads rel %.3g\n",
           tag(dev, CU_F32), rel(dl, sl), de, rel(dg, sg));
    CHECK(rel(dl, sl) <= tol && de <= tol && rel(dg, sg) <= 10 * tol);
    free(x), free(lab), free(lg), free(want);
    cu_acts_free(ga);
    cu_model_free(g);
    mdl_acts_free(a);
    mdl_free(m);
    cu_ctx_free(c);
    return 0;
}

/* ---- (b) loss and gradients ------------------------------------------------------------- */

static int check_grads(int dev, cu_dtype dt)
{
    double tol_l = dt == CU_F32 ? (dev == CU_EMULATE ? 1e-4 : 1e-3) : 5e-2;
    double tol_g = dt == CU_F32 ? (dev == CU_EMULATE ? 1e-3 : 1e-2) : 0.5;
    cu_ctx *c;
    OPEN_OR_SKIP(dev, c);
    /* bf16 rounds the features, which moves the maxima of random features
     * to other voxels than fp32's (near ties), and with them the max half's
     * whole gradient: bf16 checks the mean descriptor, fp32 the default
     * mean+max (whose winners agree exactly). */
    mdl_model *m = net_model_pool(11, dt == CU_BF16 ? MDL_POOL_MEAN : MDL_POOL_MEANMAX);
    CHECK(m);
    CHECK_EQ_INT(mdl_train_alloc(m), 0);
    mdl_acts *a = NULL;
    CHECK_EQ_INT(mdl_acts_new(m, NB, ND, NH, NW, &a), 0);
    size_t s = a->s;
    int k1 = a->k1, E = m->cfg.embed_dim, rows = NB * k1;
    float *x = tu_frand((size_t)NB * s, -1000, 1000);
    /* Pooling labels with organ 3 absent from the second sample; the loss
     * labels are others, with ignored voxels. */
    uint8_t *lab = labels_make(NB, s, k1, 3, 0);
    uint8_t *lbl = labels_make(NB, s, k1, -1, 1);
    float *dem = tu_frand((size_t)rows * E, -1, 1);
    for (int e = 0; e < E; e++) dem[(size_t)(k1 + 3) * E + e] = 100.0f; /* absent: ignored */

    float ce, dice;
    mdl_zero_grad(m);
    CHECK_EQ_INT(mdl_forward(m, a, x, lab), 0);
    CHECK_EQ_INT(a->count[k1 + 3], 0);
    CHECK_EQ_INT(mdl_seg_loss(m, a, lbl, 0.7f, &ce, &dice), 0);
    memcpy(a->dembed, dem, (size_t)rows * E * sizeof(float));
    CHECK_EQ_INT(mdl_backward(m, a, a->dlogits, a->dembed), 0);
    float *want = malloc(m->n_params * sizeof(float));
    CHECK(want);
    memcpy(want, m->grads, m->n_params * sizeof(float));

    cu_model *g = NULL;
    char why[256] = "";
    int rc = cu_model_new(c, m, dt, 1, &g, why, sizeof why);
    if (rc) fprintf(stderr, "cu_model_new: %s\n", why);
    CHECK_EQ_INT(rc, 0);
    CHECK(cu_model_grads(g) != NULL);
    cu_acts *ga = NULL;
    CHECK_EQ_INT(cu_acts_new(g, NB, ND, NH, NW, &ga), 0);
    float gce = 0, gdice = 0;
    CHECK_EQ_INT(cu_model_zero_grad(g), 0);
    CHECK_EQ_INT(cu_forward(g, ga, x, lab), 0);
    CHECK_EQ_INT(ga->count[k1 + 3], 0);
    rc = cu_seg_loss(g, ga, lbl, 0.7f, &gce, &gdice);
    if (rc) fprintf(stderr, "cu_seg_loss: %s\n", cu_model_error(g));
    CHECK_EQ_INT(rc, 0);
    memcpy(ga->dembed, dem, (size_t)rows * E * sizeof(float));
    rc = cu_backward(g, ga, 1, ga->dembed);
    if (rc) fprintf(stderr, "cu_backward: %s\n", cu_model_error(g));
    CHECK_EQ_INT(rc, 0);
    memset(m->grads, 0, m->n_params * sizeof(float));
    CHECK_EQ_INT(cu_model_download(g, 1), 0);

    double dce = fabs((double)gce - ce) / ce, ddice = fabs((double)gdice - dice) / dice;
    printf("seg loss %s: ce %.6f vs %.6f (rel %.3g), dice %.6f vs %.6f (rel %.3g)\n",
           tag(dev, dt), gce, ce, dce, gdice, dice, ddice);
    CHECK(dce <= tol_l && ddice <= tol_l);

    double gmax = 0;
    for (size_t i = 0; i < m->n_params; i++)
        if (fabs(want[i]) > gmax) gmax = fabs(want[i]);
    CHECK(gmax > 0);
    /* Per tensor: the largest error relative to the tensor's scale, and
     * the cosine of the two gradients.  bf16 noise grows with the depth of
     * the backward (every layer rounds its activations, its gradients and
     * the instance norms' cancellations; the deepest level has 6 voxels
     * per sample here), so bf16 is held to <= 0.5 and cosine >= 0.85 in
     * the encoder and decoder, and to 0.02 at the head and the MLP, where
     * a wrong dlogits or dembed path would show. */
    double worst = 0, worst_out = 0, mincos = 1;
    const char *wname = "", *cname = "";
    for (int t = 0; t < m->n_tensors; t++) {
        const mdl_tensor *T = &m->tensors[t];
        if (strncmp(T->name, "text.", 5) == 0) continue;
        double sc;
        double d = maxdiff(m->grads + T->off, want + T->off, T->count, &sc);
        if (sc < 1e-2 * gmax) sc = 1e-2 * gmax;
        double r = d / sc, dot = 0, na = 0, nb = 0;
        for (size_t i = 0; i < T->count; i++) {
            double u = m->grads[T->off + i], w = want[T->off + i];
            dot += u * w, na += u * u, nb += w * w;
        }
        double cs = nb > 0 ? dot / sqrt(na * nb + 1e-300) : 1;
        int out = strncmp(T->name, "head.", 5) == 0 || strncmp(T->name, "mlp.", 4) == 0;
        if (!(r <= worst)) worst = r, wname = T->name;
        if (out && !(r <= worst_out)) worst_out = r;
        if (!(cs >= mincos)) mincos = cs, cname = T->name;
        if (!(r <= tol_g) || !(cs >= 0.85) || (out && dt == CU_BF16 && !(r <= 0.02)))
            fprintf(stderr, "gradient of %s: rel %.3g cos %.5f\n", T->name, r, cs);
    }
    printf("grads %s: worst tensor %s rel %.3g; head and MLP rel %.3g; lowest cosine %.5f (%s); "
           "largest gradient %.3g\n",
           tag(dev, dt), wname, worst, worst_out, mincos, cname, gmax);
    CHECK(worst <= tol_g);
    CHECK(mincos >= 0.85);
    if (dt == CU_BF16) CHECK(worst_out <= 0.02);

    free(x), free(lab), free(lbl), free(dem), free(want);
    cu_acts_free(ga);
    cu_model_free(g);
    mdl_acts_free(a);
    mdl_free(m);
    cu_ctx_free(c);
    return 0;
}

/* ---- (c) a training run ------------------------------------------------------------------ */

#define STEPS 20

/* ce + dice + sum(w * embed) over present rows. */
static double step_loss(float ce, float dice, const float *w, const float *embed,
                        const int64_t *count, int rows, int E)
{
    double t = (double)ce + dice;
    for (int r = 0; r < rows; r++)
        if (count[r])
            for (int e = 0; e < E; e++) t += (double)w[(size_t)r * E + e] * embed[(size_t)r * E + e];
    return t;
}

static int check_train(int dev, cu_dtype dt)
{
    double tol = dt == CU_F32 ? (dev == CU_EMULATE ? 1e-3 : 3e-3) : 5e-2;
    cu_ctx *c;
    OPEN_OR_SKIP(dev, c);
    mdl_model *mc = net_model(21), *mg = net_model(21);
    CHECK(mc && mg);
    CHECK_EQ_INT(mdl_train_alloc(mc), 0);
    mdl_acts *a = NULL;
    CHECK_EQ_INT(mdl_acts_new(mc, NB, ND, NH, NW, &a), 0);
    size_t s = a->s;
    int k1 = a->k1, E = mc->cfg.embed_dim, rows = NB * k1;
    /* A learnable image: each class its own density plus noise. */
    uint8_t *lab = labels_make(NB, s, k1, 2, 0);
    float *x = malloc((size_t)NB * s * sizeof(float));
    CHECK(x);
    for (size_t i = 0; i < (size_t)NB * s; i++)
        x[i] = (float)(-300 + 200 * lab[i] + 150 * (tu_urand() - 0.5));
    float *w = tu_frand((size_t)rows * E, -0.1f, 0.1f);
    op_adamw_cfg opt = op_adamw_defaults();
    opt.lr = 3e-3f;
    opt.min_lr = 1e-3f;
    opt.weight_decay = 1e-2f;
    opt.warmup_steps = 3;
    opt.total_steps = STEPS;
    const double clip = 0.5;

    double lc[STEPS], lg[STEPS], nc[STEPS], ng[STEPS];
    float ce, dice;
    for (int t = 1; t <= STEPS; t++) {
        mdl_zero_grad(mc);
        CHECK_EQ_INT(mdl_forward(mc, a, x, lab), 0);
        CHECK_EQ_INT(mdl_seg_loss(mc, a, lab, 1.0f, &ce, &dice), 0);
        lc[t - 1] = step_loss(ce, dice, w, a->embed, a->count, rows, E);
        memcpy(a->dembed, w, (size_t)rows * E * sizeof(float));
        CHECK_EQ_INT(mdl_backward(mc, a, a->dlogits, a->dembed), 0);
        double gn = op_grad_norm_cpu(mc->grads, mc->n_params);
        nc[t - 1] = gn;
        if (gn > clip) op_scale_cpu(mc->grads, mc->n_params, (float)(clip / gn));
        op_adamw_step_cpu(mc->params, mc->grads, mc->adam_m, mc->adam_v, mc->n_params, t, &opt);
    }

    cu_model *g = NULL;
    char why[256] = "";
    int rc = cu_model_new(c, mg, dt, 1, &g, why, sizeof why);
    if (rc) fprintf(stderr, "cu_model_new: %s\n", why);
    CHECK_EQ_INT(rc, 0);
    cu_acts *ga = NULL;
    CHECK_EQ_INT(cu_acts_new(g, NB, ND, NH, NW, &ga), 0);
    size_t used1 = 0, used = 0, total = 0;
    for (int t = 1; t <= STEPS; t++) {
        /* After the first step (libraries set up lazily), a step allocates
         * no device memory (the emulation reports none at all). */
        if (t == 2) CHECK_EQ_INT(cu_mem_info(c, &used1, &total), 0);
        CHECK_EQ_INT(cu_model_zero_grad(g), 0);
        CHECK_EQ_INT(cu_forward(g, ga, x, lab), 0);
        CHECK_EQ_INT(cu_seg_loss(g, ga, lab, 1.0f, &ce, &dice), 0);
        lg[t - 1] = step_loss(ce, dice, w, ga->embed, ga->count, rows, E);
        memcpy(ga->dembed, w, (size_t)rows * E * sizeof(float));
        CHECK_EQ_INT(cu_backward(g, ga, 1, ga->dembed), 0);
        rc = cu_model_step(g, t, &opt, clip, &ng[t - 1]);
        if (rc) fprintf(stderr, "cu_model_step: %s\n", cu_model_error(g));
        CHECK_EQ_INT(rc, 0);
    }
    CHECK_EQ_INT(cu_mem_info(c, &used, &total), 0);
    printf("train %s: device memory in use after step 1 %zu, after step %d %zu bytes\n",
           tag(dev, dt), used1, STEPS, used);
    CHECK(used == used1);
    double worst = 0;
    printf("train %s: step, CPU loss, GPU loss, rel, CPU |g|, GPU |g|\n", tag(dev, dt));
    for (int i = 0; i < STEPS; i++) {
        double r = fabs(lg[i] - lc[i]) / fabs(lc[i]);
        if (!(r <= worst)) worst = r;
        printf("  %2d %.6f %.6f %.2g %.4f %.4f\n", i + 1, lc[i], lg[i], r, nc[i], ng[i]);
    }
    printf("train %s: worst relative loss difference %.3g\n", tag(dev, dt), worst);
    CHECK(lc[STEPS - 1] < lc[0]); /* it learns */
    CHECK(nc[0] > clip);          /* the clipping was exercised */
    CHECK(worst <= tol);
    /* The parameters after 20 steps. */
    CHECK_EQ_INT(cu_model_download(g, 1), 0);
    CHECK(mg->identity[0] == 0);
    double sc, dp = maxdiff(mg->params, mc->params, mc->n_params, &sc);
    double dm = maxdiff(mg->adam_v, mc->adam_v, mc->n_params, NULL);
    printf("train %s: params max abs diff %.3g (lr %.g, scale %.3g), adam_v %.3g\n", tag(dev, dt),
           dp, opt.lr, sc, dm);
    CHECK(dp <= STEPS * opt.lr);
    /* Upload round trip: the downloaded state goes back and gives the
     * same forward. */
    CHECK_EQ_INT(cu_forward(g, ga, x, lab), 0);
    float *e1 = malloc((size_t)rows * E * sizeof(float));
    memcpy(e1, ga->embed, (size_t)rows * E * sizeof(float));
    CHECK_EQ_INT(cu_model_upload(g), 0);
    CHECK_EQ_INT(cu_forward(g, ga, x, lab), 0);
    CHECK(memcmp(e1, ga->embed, (size_t)rows * E * sizeof(float)) == 0);
    free(e1);

    free(x), free(lab), free(w);
    cu_acts_free(ga);
    cu_model_free(g);
    mdl_acts_free(a);
    mdl_free(mc);
    mdl_free(mg);
    cu_ctx_free(c);
    return 0;
}

/* ---- (d) sliding-window inference ------------------------------------------------------------ */

static int check_infer(int dev, cu_dtype dt)
{
    double tol = dt == CU_F32 ? (dev == CU_EMULATE ? 1e-4 : 1e-3) : 5e-2;
    cu_ctx *c;
    OPEN_OR_SKIP(dev, c);
    mdl_model *m = net_model(5);
    CHECK(m);
    int k1 = 4, E = m->cfg.embed_dim, nx = 13, ny = 11, nz = 7;
    ctg_vol *v = ctg_vol_new(nx, ny, nz, CTG_F32);
    CHECK(v);
    float *p = v->data;
    size_t V = ctg_vol_count(v);
    for (size_t i = 0; i < V; i++) p[i] = (float)(-1000 + 2000 * tu_urand());
    v->aff[0][0] = 1.5;
    v->aff[2][3] = -40;
    ctg_vol *lv = NULL, *gv = NULL;
    float emb[4 * 8], gemb[4 * 8];
    int64_t cnt[4], gcnt[4];
    float *lg = malloc((size_t)k1 * V * sizeof(float));
    CHECK(lg);
    CHECK_EQ_INT(mdl_infer(m, NULL, v, 0.5f, &lv, emb, cnt, lg), 0);

    cu_model *g = NULL;
    char why[256] = "";
    int rc = cu_model_new(c, m, dt, 0, &g, why, sizeof why);
    if (rc) fprintf(stderr, "cu_model_new: %s\n", why);
    CHECK_EQ_INT(rc, 0);
    rc = cu_infer(g, NULL, v, 0.5f, &gv, gemb, gcnt);
    if (rc) fprintf(stderr, "cu_infer: %s\n", cu_model_error(g));
    CHECK_EQ_INT(rc, 0);
    CHECK(gv && gv->dtype == CTG_U8 && gv->nx == nx && gv->ny == ny && gv->nz == nz);
    CHECK(memcmp(gv->aff, v->aff, sizeof v->aff) == 0);

    int cls[256];
    for (int j = 0; j < 256; j++) cls[j] = -1;
    cls[0] = 0;
    for (int j = 1; j < k1; j++) cls[k_ids[j - 1]] = j;
    const uint8_t *a = lv->data, *b = gv->data;
    double sl;
    maxdiff(lg, lg, (size_t)k1 * V, &sl);
    size_t differ = 0;
    for (size_t i = 0; i < V; i++) {
        CHECK(cls[b[i]] >= 0);
        if (a[i] == b[i]) continue;
        differ++;
        double la = lg[(size_t)cls[a[i]] * V + i], lb = lg[(size_t)cls[b[i]] * V + i];
        CHECK(fabs(la - lb) <= 2 * tol * sl);
    }
    double de = 0;
    int64_t tot = 0;
    for (int j = 0; j < k1; j++) tot += gcnt[j];
    CHECK_EQ_INT(tot, (int64_t)V);
    printf("infer %s: %zu of %zu labels differ (near ties)\n", tag(dev, dt), differ, V);
    CHECK(differ <= V / 50);
    if (!differ) {
        CHECK_EQ_INT(embed_cmp(cnt, gcnt, emb, gemb, k1, E, &de), 0);
        printf("infer %s: embed abs %.3g\n", tag(dev, dt), de);
        CHECK(de <= tol);
    }

    /* With the caller's activations (training acts of the patch shape):
     * the same outputs. */
    cu_acts *ga = NULL;
    CHECK_EQ_INT(cu_acts_new(g, 1, 4, 8, 8, &ga), 0);
    ctg_vol *gv2 = NULL;
    float gemb2[4 * 8];
    int64_t gcnt2[4];
    CHECK_EQ_INT(cu_infer(g, ga, v, 0.5f, &gv2, gemb2, gcnt2), 0);
    CHECK(memcmp(gv2->data, gv->data, V) == 0);
    CHECK(memcmp(gcnt2, gcnt, sizeof gcnt) == 0);
    CHECK(memcmp(gemb2, gemb, sizeof gemb) == 0);
    ctg_vol_free(gv2);
    /* Wrong inputs. */
    CHECK_EQ_INT(cu_infer(g, ga, v, 1.0f, NULL, NULL, NULL), CTG_EINVAL);
    cu_acts *ga2 = NULL;
    CHECK_EQ_INT(cu_acts_new(g, 1, 8, 8, 8, &ga2), 0);
    CHECK_EQ_INT(cu_infer(g, ga2, v, 0.0f, NULL, NULL, NULL), CTG_EINVAL);
    cu_acts_free(ga2);
    ctg_vol *u8 = ctg_vol_new(8, 8, 8, CTG_U8);
    CHECK_EQ_INT(cu_infer(g, ga, u8, 0.0f, NULL, NULL, NULL), CTG_EINVAL);
    ctg_vol_free(u8);

    /* A volume smaller than the patch: padded with air, as on the CPU. */
    ctg_vol *sv = ctg_vol_new(5, 6, 3, CTG_F32);
    CHECK(sv);
    for (size_t i = 0; i < ctg_vol_count(sv); i++) ((float *)sv->data)[i] = (float)(tu_urand() * 400);
    ctg_vol *sl1 = NULL, *sl2 = NULL;
    CHECK_EQ_INT(mdl_infer(m, NULL, sv, 0.25f, &sl1, NULL, cnt, NULL), 0);
    CHECK_EQ_INT(cu_infer(g, ga, sv, 0.25f, &sl2, NULL, gcnt), 0);
    size_t sdiff = 0;
    for (size_t i = 0; i < ctg_vol_count(sv); i++)
        sdiff += ((uint8_t *)sl1->data)[i] != ((uint8_t *)sl2->data)[i];
    printf("infer %s, small volume: %zu of %zu labels differ\n", tag(dev, dt), sdiff,
           ctg_vol_count(sv));
    CHECK(sdiff <= ctg_vol_count(sv) / 20);
    ctg_vol_free(sl1), ctg_vol_free(sl2), ctg_vol_free(sv);

    free(lg);
    ctg_vol_free(v), ctg_vol_free(lv), ctg_vol_free(gv);
    cu_acts_free(ga);
    cu_model_free(g);
    mdl_free(m);
    cu_ctx_free(c);
    return 0;
}

/* ---- (e) text projection ---------------------------------------------------------------------- */

static int check_text(int dev)
{
    double tol = dev == CU_EMULATE ? 1e-5 : 1e-4;
    cu_ctx *c;
    OPEN_OR_SKIP(dev, c);
    mdl_model *m = net_model(3);
    CHECK(m);
    CHECK_EQ_INT(mdl_train_alloc(m), 0);
    int rows = 6, T = m->cfg.text_dim, E = m->cfg.embed_dim;
    float *in = tu_frand((size_t)rows * T, -1, 1), *dout = tu_frand((size_t)rows * E, -1, 1);
    float out[6 * 8], nrm[6], gout[6 * 8], gnrm[6];
    CHECK_EQ_INT(mdl_text_forward(m, out, nrm, in, rows), 0);
    mdl_zero_grad(m);
    CHECK_EQ_INT(mdl_text_backward(m, dout, out, nrm, in, rows), 0);
    const mdl_tensor *tw = mdl_find_tensor(m, "text.proj.w"), *tb = mdl_find_tensor(m, "text.proj.b");
    CHECK(tw && tb);
    float *want = malloc(m->n_params * sizeof(float));
    memcpy(want, m->grads, m->n_params * sizeof(float));

    cu_model *g = NULL;
    char why[256] = "";
    CHECK_EQ_INT(cu_model_new(c, m, CU_F32, 1, &g, why, sizeof why), 0);
    int rc = cu_text_forward(g, gout, gnrm, in, rows);
    if (rc) fprintf(stderr, "cu_text_forward: %s\n", cu_model_error(g));
    CHECK_EQ_INT(rc, 0);
    double s1, s2, s3, s4;
    double d1 = maxdiff(gout, out, (size_t)rows * E, &s1), d2 = maxdiff(gnrm, nrm, rows, &s2);
    CHECK_EQ_INT(cu_text_backward(g, dout, gout, gnrm, in, rows), 0);
    /* A second, larger batch grows the scratch. */
    float *in2 = tu_frand((size_t)40 * T, -1, 1), *o2 = malloc(40 * E * sizeof(float)),
          *n2 = malloc(40 * sizeof(float)), *go2 = malloc(40 * E * sizeof(float)),
          *gn2 = malloc(40 * sizeof(float));
    CHECK_EQ_INT(mdl_text_forward(m, o2, n2, in2, 40), 0);
    CHECK_EQ_INT(cu_text_forward(g, go2, gn2, in2, 40), 0);
    double s5, d5 = maxdiff(go2, o2, (size_t)40 * E, &s5);
    CHECK_EQ_INT(cu_model_download(g, 1), 0);
    double d3 = maxdiff(m->grads + tw->off, want + tw->off, tw->count, &s3);
    double d4 = maxdiff(m->grads + tb->off, want + tb->off, tb->count, &s4);
    printf("text %s: out %.3g norm rel %.3g dW rel %.3g db rel %.3g (40 rows: out %.3g)\n",
           tag(dev, CU_F32), d1, rel(d2, s2), rel(d3, s3), rel(d4, s4), d5);
    CHECK(d1 <= tol && rel(d2, s2) <= tol && rel(d3, s3) <= tol && rel(d4, s4) <= tol);
    CHECK(d5 <= tol);
    /* Nothing else got a gradient. */
    for (size_t i = 0; i < m->n_params; i++)
        if (i < tw->off || i >= tb->off + tb->count) CHECK(m->grads[i] == 0);
    free(in), free(dout), free(want), free(in2), free(o2), free(n2), free(go2), free(gn2);
    cu_model_free(g);
    mdl_free(m);
    cu_ctx_free(c);
    return 0;
}

/* ---- the table ---------------------------------------------------------------------------------- */


/* The start-up self-test: a correct device copy passes in fp32 and bf16; a
 * device copy whose head differs from the host model (what a wrong kernel
 * or library would look like) fails with the reason. */
static int check_selftest(int dev)
{
    cu_ctx *c;
    OPEN_OR_SKIP(dev, c);
    mdl_model *m = tu_tiny_model(16, 0, "test-encoder:0");
    CHECK(m != NULL);
    for (int bf = 0; bf < 2; bf++) {
        cu_model *g = NULL;
        char why[512] = "";
        double ag = -1, md = -1;
        CHECK(cu_model_new(c, m, bf ? CU_BF16 : CU_F32, 0, &g, why, sizeof why) == 0);
        int rc = cu_selftest(g, &ag, &md, why, sizeof why);
        printf("%s: self-test labels agree %.4f, logit diff %.2e of range (%s)\n", tag(dev, bf ? CU_BF16 : CU_F32), ag,
               md, why[0] ? why : "passed");
        CHECK_EQ_INT(rc, 0);
        CHECK(ag >= (bf ? 0.98 : 0.999) && ag <= 1.0);
        CHECK(md >= 0 && md <= (bf ? 5e-2 : 1e-3));
        if (!bf && dev == CU_EMULATE) CHECK(md < 1e-5);
        /* Break the device copy only: negate the head's weights there. */
        const mdl_tensor *t = mdl_find_tensor(m, "head.w");
        CHECK(t != NULL);
        for (size_t i = 0; i < t->count; i++) m->params[t->off + i] = -m->params[t->off + i];
        CHECK(cu_model_upload(g) == 0);
        for (size_t i = 0; i < t->count; i++) m->params[t->off + i] = -m->params[t->off + i];
        rc = cu_selftest(g, &ag, &md, why, sizeof why);
        printf("broken copy: rc %d, agree %.4f, diff %.3f: %s\n", rc, ag, md, why);
        CHECK_EQ_INT(rc, CTG_EIO);
        CHECK(!strncmp(why, "self-test:", 10));
        CHECK(ag < 0.98 || md > 5e-2);
        cu_model_free(g);
    }
    mdl_free(m);
    cu_ctx_free(c);
    return 0;
}
static int t_selftest_emu(void) { return check_selftest(CU_EMULATE); }
static int t_selftest_gpu(void) { return check_selftest(0); }

static int t_fwd_emu_f32(void) { return check_forward(CU_EMULATE, CU_F32); }
static int t_fwd2_emu(void) { return check_forward_inch2(CU_EMULATE); }
static int t_fwd2_gpu(void) { return check_forward_inch2(0); }
static int t_fwd_emu_bf16(void) { return check_forward(CU_EMULATE, CU_BF16); }
static int t_grad_emu_f32(void) { return check_grads(CU_EMULATE, CU_F32); }
static int t_grad_emu_bf16(void) { return check_grads(CU_EMULATE, CU_BF16); }
static int t_train_emu_f32(void) { return check_train(CU_EMULATE, CU_F32); }
static int t_train_emu_bf16(void) { return check_train(CU_EMULATE, CU_BF16); }
static int t_infer_emu_f32(void) { return check_infer(CU_EMULATE, CU_F32); }
static int t_infer_emu_bf16(void) { return check_infer(CU_EMULATE, CU_BF16); }
static int t_text_emu(void) { return check_text(CU_EMULATE); }
static int t_fwd_gpu_f32(void) { return check_forward(0, CU_F32); }
static int t_fwd_gpu_bf16(void) { return check_forward(0, CU_BF16); }
static int t_grad_gpu_f32(void) { return check_grads(0, CU_F32); }
static int t_grad_gpu_bf16(void) { return check_grads(0, CU_BF16); }
static int t_train_gpu_f32(void) { return check_train(0, CU_F32); }
static int t_train_gpu_bf16(void) { return check_train(0, CU_BF16); }
static int t_infer_gpu_f32(void) { return check_infer(0, CU_F32); }
static int t_infer_gpu_bf16(void) { return check_infer(0, CU_BF16); }
static int t_text_gpu(void) { return check_text(0); }

const test_case cunet_tests[] = {
    {"cunet_forward_emu_fp32", t_fwd_emu_f32},
    {"cunet_forward_emu_bf16", t_fwd_emu_bf16},
    {"cunet_forward_emu_inch2", t_fwd2_emu},
    {"cunet_grads_emu_fp32", t_grad_emu_f32},
    {"cunet_grads_emu_bf16", t_grad_emu_bf16},
    {"cunet_train_emu_fp32", t_train_emu_f32},
    {"cunet_train_emu_bf16", t_train_emu_bf16},
    {"cunet_infer_emu_fp32", t_infer_emu_f32},
    {"cunet_infer_emu_bf16", t_infer_emu_bf16},
    {"cunet_text_emu", t_text_emu},
    {"cunet_forward_gpu_fp32", t_fwd_gpu_f32},
    {"cunet_forward_gpu_bf16", t_fwd_gpu_bf16},
    {"cunet_forward_gpu_inch2", t_fwd2_gpu},
    {"cunet_grads_gpu_fp32", t_grad_gpu_f32},
    {"cunet_grads_gpu_bf16", t_grad_gpu_bf16},
    {"cunet_train_gpu_fp32", t_train_gpu_f32},
    {"cunet_train_gpu_bf16", t_train_gpu_bf16},
    {"cunet_infer_gpu_fp32", t_infer_gpu_f32},
    {"cunet_infer_gpu_bf16", t_infer_gpu_bf16},
    {"cunet_text_gpu", t_text_gpu},
    {"cunet_selftest_emu", t_selftest_emu},
    {"cunet_selftest_gpu", t_selftest_gpu},
    {NULL, NULL},
};
