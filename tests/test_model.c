/*
 * test_model.c - tests of core/model.h: the whole network's parameter
 * gradients against central finite differences, save/load round trips and
 * refusals of damaged files, deterministic initialisation, sliding-window
 * inference against plain forwards, and a short overfitting run that must
 * drive the segmentation loss down.
 *
 * Gradient check of the whole network (model_gradcheck): loss =
 * sum(w1 * logits) + sum(w2 * embeddings) for random w1, w2, central
 * differences with step 1e-3 (loss summed in double), six random elements
 * of every tensor (330 in all).  Error = |analytic - numeric| / scale of
 * the tensor (its largest analytic gradient, at least 5% of the network's
 * largest); at most 10% of the elements above 2e-2 (LeakyReLU kinks
 * crossed by the step) and none above 1e-1.  Text projection and the
 * segmentation loss helper: every/40 elements, max error relative to the
 * largest numeric derivative <= 2e-2 (step 1e-2; both are smooth).
 * Configurations are tiny (width 4, depth 2, 8^3 patches) so each test
 * takes well under a second on two cores.
 */
#include "tests.h"

#include "core/core.h"
#include "core/model.h"
#include "core/ops.h"
#include "core/organs.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/evp.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------------ */



static const int k_ids[3] = {5, 1, 2}; /* liver, spleen, kidney_right */

static mdl_config tiny_cfg(void)
{
    mdl_config c = mdl_config_default(3);
    c.width = 4;
    c.depth = 2;
    c.embed_dim = 8;
    c.mlp_hidden = 16;
    c.text_dim = 5;
    c.patch[0] = c.patch[1] = c.patch[2] = 8;
    return c;
}

static mdl_model *tiny_model_pool(uint64_t seed, int pool)
{
    mdl_config c = tiny_cfg();
    c.pool = pool;
    mdl_model *m = NULL;
    char why[200];
    if (mdl_new(&c, k_ids, "test-encoder:0", seed, &m, why, sizeof why)) {
        fprintf(stderr, "mdl_new: %s\n", why);
        return NULL;
    }
    return m;
}

static mdl_model *tiny_model(uint64_t seed) { return tiny_model_pool(seed, MDL_POOL_MEANMAX); }

/* A random label map where every class 0..k appears in every sample. */
static uint8_t *labels_rand(int n, size_t s, int k1)
{
    uint8_t *l = malloc((size_t)n * s);
    if (!l) abort();
    for (size_t i = 0; i < (size_t)n * s; i++)
        l[i] = (i % s) < (size_t)k1 ? (uint8_t)(i % s) : (uint8_t)(tu_urand() * k1);
    return l;
}

/* sum(w1 * logits) + sum(w2 * embed) in double after a forward. */
static int probe_loss(const mdl_model *m, mdl_acts *a, const float *x, const uint8_t *lab,
                      const float *w1, const float *w2, double *loss)
{
    int err = mdl_forward(m, a, x, lab);
    if (err) return err;
    size_t nl = (size_t)a->n * a->k1 * a->s, ne = (size_t)a->n * a->k1 * m->cfg.embed_dim;
    double t = 0;
    for (size_t i = 0; i < nl; i++) t += (double)w1[i] * a->logits[i];
    for (size_t i = 0; i < ne; i++) t += (double)w2[i] * a->embed[i];
    *loss = t;
    return 0;
}

/* ---- gradients ------------------------------------------------------------------ */

static int test_gradcheck(void)
{
    mdl_model *m = tiny_model(7);
    CHECK(m);
    CHECK_EQ_INT(mdl_train_alloc(m), 0);
    int n = 2, d = 8;
    mdl_acts *a = NULL;
    CHECK_EQ_INT(mdl_acts_new(m, n, d, d, d, &a), 0);
    size_t s = a->s, nl = (size_t)n * a->k1 * s, ne = (size_t)n * a->k1 * m->cfg.embed_dim;
    float *x = tu_frand((size_t)n * s, -900, 900);
    uint8_t *lab = labels_rand(n, s, a->k1);
    float *w1 = tu_frand(nl, -1, 1), *w2 = tu_frand(ne, -1, 1);

    double l0;
    CHECK_EQ_INT(probe_loss(m, a, x, lab, w1, w2, &l0), 0);
    for (size_t i = 0; i < (size_t)n * a->k1; i++) CHECK(a->count[i] > 0);
    mdl_zero_grad(m);
    CHECK_EQ_INT(mdl_backward(m, a, w1, w2), 0);

    /* Every tensor of the network (the text projection is checked below),
     * six random elements each.  Each element's error is taken relative
     * to its tensor's scale: the largest analytic gradient in the tensor,
     * but at least 5% of the largest in the network (float rounding of the
     * loss puts a floor of about 0.05 under every numeric derivative, and
     * some tensors, such as a 1x1 conv from one channel into a norm, have
     * near-zero gradients by scale invariance).  A step that carries a
     * voxel's pre-activation across a LeakyReLU kink shifts the numeric
     * derivative by about one voxel's share (~2% here), so up to 10% of
     * the elements may exceed the tolerance, none by more than 5x; a wrong
     * backward breaks every element of a tensor kind, not a few. */
    const float h = 1e-3f;
    double gmax = 0;
    for (int t = 0; t < m->n_tensors; t++)
        if (strncmp(m->tensors[t].name, "text.", 5) != 0)
            for (size_t i = 0; i < m->tensors[t].count; i++) {
                double g = fabs(m->grads[m->tensors[t].off + i]);
                if (g > gmax) gmax = g;
            }
    CHECK(gmax > 0);
    int checked = 0, tensors = 0, outliers = 0;
    double worst = 0;
    for (int t = 0; t < m->n_tensors; t++) {
        const mdl_tensor *T = &m->tensors[t];
        if (strncmp(T->name, "text.", 5) == 0) continue;
        double scale = 0.05 * gmax;
        for (size_t i = 0; i < T->count; i++)
            if (fabs(m->grads[T->off + i]) > scale) scale = fabs(m->grads[T->off + i]);
        for (int j = 0; j < 6; j++) {
            size_t i = T->off + (size_t)(tu_urand() * T->count);
            float keep = m->params[i];
            double lp, lm;
            m->params[i] = keep + h;
            CHECK_EQ_INT(probe_loss(m, a, x, lab, w1, w2, &lp), 0);
            m->params[i] = keep - h;
            CHECK_EQ_INT(probe_loss(m, a, x, lab, w1, w2, &lm), 0);
            m->params[i] = keep;
            double num = (lp - lm) / (2.0 * h);
            double rel = fabs(num - m->grads[i]) / scale;
            if (rel > worst) worst = rel;
            if (rel > 2e-2) {
                outliers++;
                fprintf(stderr, "  %s[%zu]: analytic %.5g numeric %.5g (rel %.3g)\n", T->name,
                        i - T->off, m->grads[i], num, rel);
            }
            CHECK(rel <= 1e-1);
            checked++;
        }
        tensors++;
    }
    fprintf(stderr, "gradcheck: %d tensors, %d elements, %d above 2e-2, worst rel %.3g\n",
            tensors, checked, outliers, worst);
    CHECK(outliers * 10 <= checked);
    CHECK(checked >= 50);
    /* Every kind of tensor took part and has a non-zero gradient somewhere,
     * so a backward that drops a path cannot pass by producing zeros. */
    int kinds[8] = {0};
    for (int t = 0; t < m->n_tensors; t++) {
        const mdl_tensor *T = &m->tensors[t];
        double g = 0;
        for (size_t i = 0; i < T->count; i++) g += fabs(m->grads[T->off + i]);
        if (strncmp(T->name, "text.", 5) == 0) {
            CHECK(g == 0);
            continue;
        }
        CHECK(g > 0);
        kinds[T->kind] = 1;
    }
    for (int k = MDL_T_CONV; k <= MDL_T_LINEAR; k++) CHECK(kinds[k]);

    /* The text projection. */
    int rows = 3, T = m->cfg.text_dim, E = m->cfg.embed_dim;
    float *tin = tu_frand((size_t)rows * T, -1, 1), *tw = tu_frand((size_t)rows * E, -1, 1);
    float *tout = calloc((size_t)rows * E, sizeof(float)), norm[3];
    CHECK_EQ_INT(mdl_text_forward(m, tout, norm, tin, rows), 0);
    CHECK_EQ_INT(mdl_text_backward(m, tw, tout, norm, tin, rows), 0);
    const float ht = 1e-2f;
    for (const char *nm = "text.proj.w"; nm; nm = strcmp(nm, "text.proj.w") ? NULL : "text.proj.b") {
        const mdl_tensor *P = mdl_find_tensor(m, nm);
        CHECK(P);
        double maxerr = 0, maxnum = 0;
        for (size_t j = 0; j < P->count; j++) {
            size_t i = P->off + j;
            float keep = m->params[i];
            double lp = 0, lm = 0;
            m->params[i] = keep + ht;
            CHECK_EQ_INT(mdl_text_forward(m, tout, norm, tin, rows), 0);
            for (int q = 0; q < rows * E; q++) lp += (double)tw[q] * tout[q];
            m->params[i] = keep - ht;
            CHECK_EQ_INT(mdl_text_forward(m, tout, norm, tin, rows), 0);
            for (int q = 0; q < rows * E; q++) lm += (double)tw[q] * tout[q];
            m->params[i] = keep;
            double num = (lp - lm) / (2.0 * ht), e = fabs(num - m->grads[i]);
            if (e > maxerr) maxerr = e;
            if (fabs(num) > maxnum) maxnum = fabs(num);
        }
        CHECK(maxnum > 0);
        CHECK(maxerr / maxnum <= 2e-2);
    }

    /* An absent organ's dembed row must not train the MLP: the gradients
     * equal those of a dembed with the absent rows zeroed. */
    memset(lab, 0, (size_t)n * s); /* background only */
    CHECK_EQ_INT(mdl_forward(m, a, x, lab), 0);
    CHECK(a->count[0] > 0 && a->count[1] == 0);
    mdl_zero_grad(m);
    CHECK_EQ_INT(mdl_backward(m, a, NULL, w2), 0);
    float *g1 = malloc(m->n_params * sizeof(float));
    memcpy(g1, m->grads, m->n_params * sizeof(float));
    for (size_t r = 0; r < (size_t)n * a->k1; r++)
        if (a->count[r] == 0) memset(w2 + r * E, 0, E * sizeof(float));
    mdl_zero_grad(m);
    CHECK_EQ_INT(mdl_backward(m, a, NULL, w2), 0);
    CHECK(memcmp(g1, m->grads, m->n_params * sizeof(float)) == 0);
    const mdl_tensor *fc2 = mdl_find_tensor(m, "mlp.fc2.b");
    CHECK(fc2);
    double gb = 0;
    for (size_t i = 0; i < fc2->count; i++) gb += fabs(m->grads[fc2->off + i]);
    CHECK(gb > 0); /* row 0 (background) is present */
    free(g1);
    free(tin), free(tw), free(tout);
    free(x), free(lab), free(w1), free(w2);
    mdl_acts_free(a);
    mdl_free(m);
    return 0;
}

/* The segmentation loss helper's gradient, by finite differences on the
 * logits it reads. */
static int test_seg_loss_grad(void)
{
    mdl_model *m = tiny_model(3);
    CHECK(m);
    mdl_acts *a = NULL;
    CHECK_EQ_INT(mdl_acts_new(m, 1, 8, 8, 8, &a), 0);
    float *x = tu_frand(a->s, -900, 900);
    uint8_t *lab = labels_rand(1, a->s, a->k1);
    lab[17] = MDL_IGNORE;
    CHECK_EQ_INT(mdl_forward(m, a, x, lab), 0);
    float ce, dice;
    CHECK_EQ_INT(mdl_seg_loss(m, a, lab, 1.0f, &ce, &dice), 0);
    CHECK(ce > 0 && dice > 0 && dice < 1);
    size_t nl = (size_t)a->k1 * a->s;
    float *g = malloc(nl * sizeof *g);
    memcpy(g, a->dlogits, nl * sizeof *g);
    const float h = 1e-2f;
    double maxerr = 0, maxnum = 0;
    for (int j = 0; j < 40; j++) {
        size_t i = (size_t)(tu_urand() * nl);
        if (j == 0) i = 17; /* the ignored voxel: gradient 0 */
        float keep = a->logits[i];
        float cp, dp, cm, dm;
        a->logits[i] = keep + h;
        CHECK_EQ_INT(mdl_seg_loss(m, a, lab, 0.0f, &cp, &dp), 0);
        a->logits[i] = keep - h;
        CHECK_EQ_INT(mdl_seg_loss(m, a, lab, 0.0f, &cm, &dm), 0);
        a->logits[i] = keep;
        double num = ((double)cp + dp - cm - dm) / (2.0 * h);
        if (j == 0) CHECK(g[i] == 0 && fabs(num) < 1e-6);
        if (fabs(num - g[i]) > maxerr) maxerr = fabs(num - g[i]);
        if (fabs(num) > maxnum) maxnum = fabs(num);
    }
    CHECK(maxnum > 0);
    CHECK(maxerr / maxnum <= 2e-2);
    free(g), free(x), free(lab);
    mdl_acts_free(a);
    mdl_free(m);
    return 0;
}

/* ---- initialisation -------------------------------------------------------------- */

static int test_determinism(void)
{
    mdl_model *a = tiny_model(42), *b = tiny_model(42), *c = tiny_model(43);
    CHECK(a && b && c);
    CHECK(a->n_params == b->n_params && a->n_params == c->n_params);
    CHECK(memcmp(a->params, b->params, a->n_params * sizeof(float)) == 0);
    CHECK(memcmp(a->params, c->params, a->n_params * sizeof(float)) != 0);
    CHECK(strcmp(mdl_identity(a), mdl_identity(b)) == 0);
    CHECK(strcmp(mdl_identity(a), mdl_identity(c)) != 0);
    CHECK_EQ_INT(strlen(mdl_identity(a)), 64);
    /* Re-initialising restores the same bits. */
    for (size_t i = 0; i < c->n_params; i++) c->params[i] = 0.5f;
    mdl_init_params(c, 42);
    CHECK(memcmp(a->params, c->params, a->n_params * sizeof(float)) == 0);
    mdl_free(a), mdl_free(b), mdl_free(c);

    /* Parameter count and init statistics of the default configuration:
     * norms start at gamma 1, beta 0, biases 0, and the convolutions are
     * He-normal (std sqrt(2 / fan_in) within a few percent on a big
     * tensor). */
    int ids[24];
    for (int i = 0; i < 24; i++) ids[i] = i + 1;
    mdl_config cfg = mdl_config_default(24);
    mdl_model *m = NULL;
    char why[200];
    CHECK_EQ_INT(mdl_new(&cfg, ids, NULL, 1, &m, why, sizeof why), 0);
    size_t sum = 0;
    for (int t = 0; t < m->n_tensors; t++) {
        const mdl_tensor *T = &m->tensors[t];
        CHECK(T->off == sum);
        sum += T->count;
        const float *p = m->params + T->off;
        if (T->kind == MDL_T_NORM_G) CHECK(p[0] == 1.0f && p[T->count - 1] == 1.0f);
        if (T->kind == MDL_T_NORM_B || T->kind == MDL_T_BIAS) CHECK(p[0] == 0.0f);
    }
    CHECK(sum == m->n_params);
    const mdl_tensor *w = mdl_find_tensor(m, "enc4.conv2.w");
    CHECK(w && w->fan_in == 256 * 27);
    double ss = 0;
    for (size_t i = 0; i < w->count; i++) ss += (double)m->params[w->off + i] * m->params[w->off + i];
    double sd = sqrt(ss / w->count), want = sqrt(2.0 / (1.0 + 1e-4) / w->fan_in);
    CHECK(fabs(sd / want - 1) < 0.03);
    fprintf(stderr, "default config (width 16, depth 4, K 24, E 256): %zu parameters\n",
            m->n_params);
    mdl_free(m);

    /* Bad configurations are refused with a reason. */
    cfg.patch[1] = 40; /* not a multiple of 16 */
    CHECK_EQ_INT(mdl_new(&cfg, ids, NULL, 1, &m, why, sizeof why), CTG_EINVAL);
    CHECK(strstr(why, "patch"));
    cfg = mdl_config_default(24);
    ids[3] = ids[2];
    CHECK_EQ_INT(mdl_new(&cfg, ids, NULL, 1, &m, why, sizeof why), CTG_EINVAL);
    CHECK(strstr(why, "twice"));
    return 0;
}

/* ---- file format ------------------------------------------------------------------ */

static int write_bytes(const char *path, const uint8_t *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(p, 1, n, f);
    return fclose(f) == 0 && w == n ? 0 : -1;
}

static int expect_refused(const char *path, const char *word)
{
    mdl_model *m = NULL;
    char why[300] = "";
    int err = mdl_load(path, &m, why, sizeof why);
    if (err != CTG_EFORMAT || m || !strstr(why, word)) {
        fprintf(stderr, "load %s: err %d, why \"%s\", wanted \"%s\"\n", path, err, why, word);
        mdl_free(m);
        return 1;
    }
    return 0;
}

static int test_save_load(void)
{
    char path[256], bad[256], why[300];
    snprintf(path, sizeof path, "/tmp/ctglip-test-model-%ld.ctglip", (long)getpid());
    snprintf(bad, sizeof bad, "/tmp/ctglip-test-model-%ld.bad", (long)getpid());
    mdl_model *m = tiny_model(11), *l = NULL;
    CHECK(m);
    const char *id0 = mdl_identity(m);
    char id_before[65];
    snprintf(id_before, sizeof id_before, "%s", id0);
    CHECK_EQ_INT(mdl_save(m, path, why, sizeof why), 0);
    CHECK(strcmp(m->identity, id_before) == 0);
    CHECK_EQ_INT(mdl_load(path, &l, why, sizeof why), 0);
    CHECK(strcmp(l->identity, id_before) == 0);
    CHECK(strcmp(l->text_id, "test-encoder:0") == 0);
    CHECK(memcmp(&l->cfg, &m->cfg, sizeof m->cfg) == 0);
    CHECK(memcmp(l->class_ids, k_ids, sizeof k_ids) == 0);
    CHECK(l->n_params == m->n_params);
    CHECK(memcmp(l->params, m->params, m->n_params * sizeof(float)) == 0);
    /* Recomputing the identity of the loaded model gives the same. */
    l->identity[0] = 0;
    CHECK(strcmp(mdl_identity(l), id_before) == 0);

    /* Bit-identical outputs. */
    mdl_acts *am = NULL, *al = NULL;
    CHECK_EQ_INT(mdl_acts_new(m, 1, 8, 8, 8, &am), 0);
    CHECK_EQ_INT(mdl_acts_new(l, 1, 8, 8, 8, &al), 0);
    float *x = tu_frand(am->s, -1000, 1000);
    CHECK_EQ_INT(mdl_forward(m, am, x, NULL), 0);
    CHECK_EQ_INT(mdl_forward(l, al, x, NULL), 0);
    CHECK(memcmp(am->logits, al->logits, am->k1 * am->s * sizeof(float)) == 0);
    CHECK(memcmp(am->embed, al->embed, am->k1 * m->cfg.embed_dim * sizeof(float)) == 0);
    /* A model's acts belong to it. */
    CHECK_EQ_INT(mdl_forward(m, al, x, NULL), CTG_EINVAL);
    mdl_acts_free(am), mdl_acts_free(al);
    mdl_free(l);

    /* Damaged files. */
    FILE *f = fopen(path, "rb");
    CHECK(f);
    fseek(f, 0, SEEK_END);
    size_t size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(size + 1);
    CHECK(fread(buf, 1, size, f) == size);
    fclose(f);
    size_t cuts[] = {0, 5, 8, 11, 30, 200, size / 2, size - 33, size - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        CHECK_EQ_INT(write_bytes(bad, buf, cuts[i]), 0);
        CHECK(!expect_refused(bad, cuts[i] < 8 ? "magic" : "truncated"));
    }
    buf[size] = 0; /* one trailing byte */
    CHECK_EQ_INT(write_bytes(bad, buf, size + 1), 0);
    CHECK(!expect_refused(bad, "trailing"));
    buf[0] ^= 1;
    CHECK_EQ_INT(write_bytes(bad, buf, size), 0);
    CHECK(!expect_refused(bad, "magic"));
    buf[0] ^= 1;
    buf[8] = 9; /* version 9 */
    CHECK_EQ_INT(write_bytes(bad, buf, size), 0);
    CHECK(!expect_refused(bad, "version"));
    buf[8] = MDL_VERSION;
    buf[size - 100] ^= 0x10; /* a parameter bit */
    CHECK_EQ_INT(write_bytes(bad, buf, size), 0);
    CHECK(!expect_refused(bad, "checksum"));
    buf[size - 100] ^= 0x10;
    buf[size - 1] ^= 0x01; /* the checksum itself */
    CHECK_EQ_INT(write_bytes(bad, buf, size), 0);
    CHECK(!expect_refused(bad, "checksum"));
    buf[size - 1] ^= 0x01;
    CHECK_EQ_INT(write_bytes(bad, buf, size), 0);
    CHECK_EQ_INT(mdl_load(bad, &l, why, sizeof why), 0); /* intact again */
    mdl_free(l);
    CHECK_EQ_INT(mdl_load("/nonexistent/model.ctglip", &l, why, sizeof why), CTG_ENOENT);
    free(buf), free(x);
    unlink(path), unlink(bad);
    mdl_free(m);
    return 0;
}

/* Spacing and metadata: kept sorted, set, replaced, removed, refused when
 * malformed, part of the identity, and carried through the file; a
 * version-1 file (no pool field, no spacing, no metadata; mean pooling)
 * still loads. */
static int test_meta(void)
{
    char path[256], why[300];
    snprintf(path, sizeof path, "/tmp/ctglip-test-meta-%ld.ctglip", (long)getpid());
    mdl_model *m = tiny_model_pool(3, MDL_POOL_MEAN), *l = NULL;
    CHECK(m);
    char id0[65];
    snprintf(id0, sizeof id0, "%s", mdl_identity(m));
    CHECK_EQ_INT(mdl_save(m, path, why, sizeof why), 0);

    /* A version-1 file: the same bytes without the pool field (the u32
     * after the 12 integers and 3 floats of the config, with the field
     * count back at 15) and without spacing and metadata (16 zero bytes
     * right after the text encoder identity), re-hashed. */
    FILE *f = fopen(path, "rb");
    CHECK(f);
    fseek(f, 0, SEEK_END);
    size_t size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(size);
    CHECK(fread(buf, 1, size, f) == size);
    fclose(f);
    const char *tid = "test-encoder:0";
    uint8_t *at = memmem(buf, size, tid, strlen(tid));
    CHECK(at);
    size_t off = (size_t)(at - buf) + strlen(tid);
    static const uint8_t zero[16];
    CHECK(memcmp(buf + off, zero, 16) == 0);
    memmove(buf + off, buf + off + 16, size - off - 16);
    size_t v1 = size - 16;
    const size_t pool_at = 8 + 4 + 4 + 12 * 4 + 3 * 4;
    CHECK(buf[8] == 3 && buf[12] == 16 && buf[pool_at] == MDL_POOL_MEAN);
    memmove(buf + pool_at, buf + pool_at + 4, v1 - pool_at - 4);
    v1 -= 4;
    buf[12] = 15;
    buf[8] = 1;
    unsigned int hl = 0;
    CHECK(EVP_Digest(buf, v1 - 32, buf + v1 - 32, &hl, EVP_sha256(), NULL) == 1 && hl == 32);
    CHECK_EQ_INT(write_bytes(path, buf, v1), 0);
    free(buf);
    CHECK_EQ_INT(mdl_load(path, &l, why, sizeof why), 0);
    CHECK(l->n_meta == 0 && l->spacing[0] == 0 && l->spacing[2] == 0);
    CHECK(memcmp(l->params, m->params, m->n_params * sizeof(float)) == 0);
    /* Its identity is the hash of the version-1 file, not of a re-save. */
    CHECK(strcmp(l->identity, id0) != 0);
    mdl_free(l);

    /* Setting, sorting, replacing, removing. */
    CHECK_EQ_INT(mdl_meta_set(m, "threshold.renal_cyst", "0.41"), 0);
    CHECK(m->identity[0] == 0);
    CHECK_EQ_INT(mdl_meta_set(m, "threshold.gallstone", "0.6"), 0);
    CHECK_EQ_INT(mdl_meta_set(m, "trained.steps", "6000"), 0);
    CHECK_EQ_INT(mdl_meta_set(m, "threshold.renal_cyst", "0.43"), 0);
    CHECK_EQ_INT(m->n_meta, 3);
    CHECK(strcmp(m->meta[0].key, "threshold.gallstone") == 0);
    CHECK(strcmp(m->meta[1].key, "threshold.renal_cyst") == 0);
    CHECK(strcmp(mdl_meta_get(m, "threshold.renal_cyst"), "0.43") == 0);
    CHECK(!mdl_meta_get(m, "threshold.nothing"));
    CHECK_EQ_INT(mdl_meta_set(m, "gone", "x"), 0);
    CHECK_EQ_INT(mdl_meta_set(m, "gone", NULL), 0);
    CHECK_EQ_INT(mdl_meta_set(m, "never.there", NULL), 0);
    CHECK_EQ_INT(m->n_meta, 3);
    CHECK_EQ_INT(mdl_meta_set(m, "", "x"), CTG_EINVAL);
    CHECK_EQ_INT(mdl_meta_set(m, "a b", "x"), CTG_EINVAL);
    CHECK_EQ_INT(mdl_meta_set(m, "a=b", "x"), CTG_EINVAL);
    char longv[MDL_META_VAL + 1];
    memset(longv, 'v', MDL_META_VAL);
    longv[MDL_META_VAL] = 0;
    CHECK_EQ_INT(mdl_meta_set(m, "long", longv), CTG_EINVAL);
    float sp[3] = {1.5f, 1.5f, 2.0f};
    mdl_set_spacing(m, sp);

    /* Both are part of the identity and survive the file. */
    char id1[65];
    snprintf(id1, sizeof id1, "%s", mdl_identity(m));
    CHECK(strcmp(id1, id0) != 0);
    CHECK_EQ_INT(mdl_save(m, path, why, sizeof why), 0);
    CHECK(strcmp(m->identity, id1) == 0);
    CHECK_EQ_INT(mdl_load(path, &l, why, sizeof why), 0);
    CHECK(strcmp(l->identity, id1) == 0);
    CHECK_EQ_INT(l->n_meta, 3);
    CHECK(strcmp(mdl_meta_get(l, "threshold.gallstone"), "0.6") == 0);
    CHECK(strcmp(mdl_meta_get(l, "trained.steps"), "6000") == 0);
    CHECK(l->spacing[0] == 1.5f && l->spacing[1] == 1.5f && l->spacing[2] == 2.0f);
    mdl_free(l);

    /* The table has room for MDL_MAX_META entries, no more. */
    for (int i = 0; i < MDL_MAX_META - 3; i++) {
        char k[32];
        snprintf(k, sizeof k, "fill.%03d", i);
        CHECK_EQ_INT(mdl_meta_set(m, k, "1"), 0);
    }
    CHECK_EQ_INT(mdl_meta_set(m, "one.too.many", "1"), CTG_EINVAL);
    CHECK_EQ_INT(mdl_meta_set(m, "fill.000", "2"), 0); /* replacing still works */
    CHECK_EQ_INT(mdl_save(m, path, why, sizeof why), 0);
    CHECK_EQ_INT(mdl_load(path, &l, why, sizeof why), 0);
    CHECK_EQ_INT(l->n_meta, MDL_MAX_META);
    CHECK(strcmp(mdl_meta_get(l, "fill.000"), "2") == 0);
    mdl_free(l);
    unlink(path);
    mdl_free(m);
    return 0;
}

/* ---- sliding-window inference ------------------------------------------------------- */

static ctg_vol *vol_rand(int nx, int ny, int nz)
{
    ctg_vol *v = ctg_vol_new(nx, ny, nz, CTG_F32);
    if (!v) abort();
    float *p = v->data;
    for (size_t i = 0; i < ctg_vol_count(v); i++) p[i] = (float)(-1000 + 2000 * tu_urand());
    v->aff[0][0] = 1.5;
    v->aff[2][3] = -40;
    return v;
}

/* Copies the window at (x0, y0, z0) of v into w [8][8][8], padding with
 * -1000 (the model's hu_lo). */
static void window(const ctg_vol *v, int x0, int y0, int z0, float *w)
{
    const float *p = v->data;
    for (int z = 0; z < 8; z++)
        for (int y = 0; y < 8; y++)
            for (int x = 0; x < 8; x++) {
                int X = x0 + x, Y = y0 + y, Z = z0 + z;
                w[(z * 8 + y) * 8 + x] = X < v->nx && Y < v->ny && Z < v->nz
                                             ? p[((size_t)Z * v->ny + Y) * v->nx + X]
                                             : -1000.0f;
            }
}

static int test_sliding_window(void)
{
    mdl_model *m = tiny_model(5);
    CHECK(m);
    int k1 = 4, E = m->cfg.embed_dim, C0 = 4;
    mdl_acts *a = NULL;
    CHECK_EQ_INT(mdl_acts_new(m, 1, 8, 8, 8, &a), 0);
    float w[512], emb[4 * 8], emb2[4 * 8];
    int64_t cnt[4];

    /* (a) A volume of exactly one patch: the plain forward, whatever the
     * overlap. */
    ctg_vol *v = vol_rand(8, 8, 8), *lv = NULL;
    float *lg = malloc((size_t)k1 * 512 * sizeof(float));
    CHECK_EQ_INT(mdl_infer(m, a, v, 0.5f, &lv, emb, cnt, lg), 0);
    CHECK_EQ_INT(mdl_forward(m, a, v->data, NULL), 0);
    CHECK(memcmp(lg, a->logits, (size_t)k1 * 512 * sizeof(float)) == 0);
    CHECK(lv && lv->dtype == CTG_U8 && lv->nx == 8 && memcmp(lv->aff, v->aff, sizeof v->aff) == 0);
    const uint8_t *lp = lv->data;
    for (int i = 0; i < 512; i++)
        CHECK_EQ_INT(lp[i], a->seg[i] ? k_ids[a->seg[i] - 1] : 0);
    for (int j = 0; j < k1; j++) {
        CHECK_EQ_INT(cnt[j], a->count[j]);
        for (int e = 0; e < E && cnt[j]; e++) CHECK(fabsf(emb[j * E + e] - a->embed[j * E + e]) < 1e-5f);
    }
    ctg_vol_free(v), ctg_vol_free(lv);

    /* (b) Two patches side by side, no overlap: two separate forwards; the
     * embeddings pool the features of both halves. */
    v = vol_rand(16, 8, 8);
    float *lg2 = malloc((size_t)k1 * 1024 * sizeof(float));
    CHECK_EQ_INT(mdl_infer(m, NULL, v, 0.0f, &lv, emb, cnt, lg2), 0);
    double fs[4][4] = {{0}};
    float fx[4][4];
    int64_t cs[4] = {0};
    lp = lv->data;
    for (int half = 0; half < 2; half++) {
        window(v, 8 * half, 0, 0, w);
        CHECK_EQ_INT(mdl_forward(m, a, w, NULL), 0);
        for (int i = 0; i < 512; i++) {
            int z = i / 64, y = (i / 8) % 8, x = i % 8;
            size_t vi = ((size_t)z * 8 + y) * 16 + 8 * half + x;
            for (int j = 0; j < k1; j++) CHECK(lg2[j * 1024 + vi] == a->logits[j * 512 + i]);
            int c = a->seg[i];
            CHECK_EQ_INT(lp[vi], c ? k_ids[c - 1] : 0);
            for (int ch = 0; ch < C0; ch++) {
                float f = a->feat[ch * 512 + i];
                fs[c][ch] += f;
                if (!cs[c] || f > fx[c][ch]) fx[c][ch] = f;
            }
            cs[c]++;
        }
    }
    /* The descriptor is the mean and the maximum over both halves. */
    const int PD = mdl_pool_dim(&m->cfg);
    CHECK_EQ_INT(PD, 2 * C0);
    float pooled[4 * 8];
    for (int j = 0; j < k1; j++) {
        CHECK_EQ_INT(cnt[j], cs[j]);
        for (int ch = 0; ch < C0; ch++) {
            pooled[j * PD + ch] = cs[j] ? (float)(fs[j][ch] / cs[j]) : 0;
            pooled[j * PD + C0 + ch] = cs[j] ? fx[j][ch] : 0;
        }
    }
    CHECK_EQ_INT(mdl_embed_pooled(m, pooled, k1, emb2), 0);
    int present = 0;
    for (int j = 0; j < k1; j++) {
        if (!cnt[j]) continue;
        present++;
        for (int e = 0; e < E; e++) CHECK(fabsf(emb[j * E + e] - emb2[j * E + e]) < 1e-4f);
    }
    CHECK(present >= 2);
    ctg_vol_free(v), ctg_vol_free(lv);

    /* (c) 12^3 with overlap 0.5: windows start at 0 and 4 on each axis;
     * every voxel's logits are the mean over the windows that cover it. */
    v = vol_rand(12, 12, 12);
    size_t V = 1728;
    float *lg3 = malloc((size_t)k1 * V * sizeof(float));
    double *want = calloc((size_t)k1 * V, sizeof(double));
    int *cover = calloc(V, sizeof(int));
    CHECK_EQ_INT(mdl_infer(m, a, v, 0.5f, NULL, NULL, cnt, lg3), 0);
    for (int wz = 0; wz <= 4; wz += 4)
        for (int wy = 0; wy <= 4; wy += 4)
            for (int wx = 0; wx <= 4; wx += 4) {
                window(v, wx, wy, wz, w);
                CHECK_EQ_INT(mdl_forward(m, a, w, NULL), 0);
                for (int i = 0; i < 512; i++) {
                    int z = i / 64, y = (i / 8) % 8, x = i % 8;
                    size_t vi = ((size_t)(wz + z) * 12 + wy + y) * 12 + wx + x;
                    cover[vi]++;
                    for (int j = 0; j < k1; j++) want[j * V + vi] += a->logits[j * 512 + i];
                }
            }
    CHECK_EQ_INT(cover[0], 1);
    CHECK_EQ_INT(cover[(6 * 12 + 6) * 12 + 6], 8);
    double maxerr = 0;
    for (size_t vi = 0; vi < V; vi++)
        for (int j = 0; j < k1; j++) {
            double e = fabs(lg3[j * V + vi] - want[j * V + vi] / cover[vi]);
            if (e > maxerr) maxerr = e;
        }
    CHECK(maxerr < 1e-5);
    int64_t tot = 0;
    for (int j = 0; j < k1; j++) tot += cnt[j];
    CHECK_EQ_INT(tot, (int64_t)V);
    ctg_vol_free(v);

    /* (d) A volume smaller than the patch is padded with air. */
    v = vol_rand(5, 8, 3);
    CHECK_EQ_INT(mdl_infer(m, a, v, 0.25f, &lv, NULL, NULL, lg), 0);
    window(v, 0, 0, 0, w);
    CHECK_EQ_INT(mdl_forward(m, a, w, NULL), 0);
    for (int z = 0; z < 3; z++)
        for (int y = 0; y < 8; y++)
            for (int x = 0; x < 5; x++)
                CHECK(lg[(z * 8 + y) * 5 + x] == a->logits[(z * 8 + y) * 8 + x]);
    CHECK(lv->nx == 5 && lv->ny == 8 && lv->nz == 3);
    ctg_vol_free(lv);
    /* Wrong inputs. */
    CHECK_EQ_INT(mdl_infer(m, a, v, 1.0f, NULL, NULL, NULL, NULL), CTG_EINVAL);
    ctg_vol *u8 = ctg_vol_new(8, 8, 8, CTG_U8);
    CHECK_EQ_INT(mdl_infer(m, a, u8, 0.0f, NULL, NULL, NULL, NULL), CTG_EINVAL);
    ctg_vol_free(u8), ctg_vol_free(v);
    free(lg), free(lg2), free(lg3), free(want), free(cover);
    mdl_acts_free(a);
    mdl_free(m);
    return 0;
}

/* ---- training sanity --------------------------------------------------------------- */

/* One 16^3 volume with two spherical "organs" of different density in
 * noisy soft tissue; 40 AdamW steps on CE + Dice must at least halve the
 * segmentation loss. */
static int test_overfit(void)
{
    int ids[2] = {5, 1};
    mdl_config c = mdl_config_default(2);
    c.width = 8;
    c.depth = 2;
    c.embed_dim = 8;
    c.mlp_hidden = 32;
    c.patch[0] = c.patch[1] = c.patch[2] = 16;
    mdl_model *m = NULL;
    char why[200];
    CHECK_EQ_INT(mdl_new(&c, ids, NULL, 9, &m, why, sizeof why), 0);
    CHECK_EQ_INT(mdl_train_alloc(m), 0);
    mdl_acts *a = NULL;
    CHECK_EQ_INT(mdl_acts_new(m, 1, 16, 16, 16, &a), 0);
    float *x = malloc(4096 * sizeof(float));
    uint8_t *lab = malloc(4096);
    for (int z = 0; z < 16; z++)
        for (int y = 0; y < 16; y++)
            for (int xx = 0; xx < 16; xx++) {
                int i = (z * 16 + y) * 16 + xx;
                double d1 = (z - 5) * (z - 5) + (y - 5) * (y - 5) + (xx - 5) * (xx - 5);
                double d2 = (z - 10) * (z - 10) + (y - 11) * (y - 11) + (xx - 10) * (xx - 10);
                lab[i] = d1 < 12 ? 1 : d2 < 9 ? 2 : 0;
                x[i] = (float)((lab[i] == 1 ? 150 : lab[i] == 2 ? -200 : 30) + 40 * (tu_urand() - 0.5));
            }
    op_adamw_cfg opt = op_adamw_defaults();
    opt.lr = 3e-3f;
    opt.min_lr = 3e-3f;
    opt.weight_decay = 0;
    opt.total_steps = 40;
    float first = 0, last = 0, ce, dice;
    for (int t = 1; t <= 40; t++) {
        CHECK_EQ_INT(mdl_forward(m, a, x, lab), 0);
        CHECK_EQ_INT(mdl_seg_loss(m, a, lab, 1.0f, &ce, &dice), 0);
        if (t == 1) first = ce + dice;
        last = ce + dice;
        mdl_zero_grad(m);
        CHECK_EQ_INT(mdl_backward(m, a, a->dlogits, NULL), 0);
        op_adamw_step_cpu(m->params, m->grads, m->adam_m, m->adam_v, m->n_params, t, &opt);
    }
    fprintf(stderr, "overfit: seg loss %.4f -> %.4f\n", first, last);
    CHECK(isfinite(last));
    CHECK(last < 0.5f * first);
    /* The prediction now finds both organs. */
    CHECK_EQ_INT(mdl_forward(m, a, x, NULL), 0);
    CHECK(a->count[1] > 0 && a->count[2] > 0);
    free(x), free(lab);
    mdl_acts_free(a);
    mdl_free(m);
    return 0;
}

const test_case model_tests[] = {
    {"model_gradcheck", test_gradcheck},
    {"model_seg_loss_grad", test_seg_loss_grad},
    {"model_determinism", test_determinism},
    {"model_save_load", test_save_load},
    {"model_meta", test_meta},
    {"model_sliding_window", test_sliding_window},
    {"model_overfit", test_overfit},
    {NULL, NULL},
};
