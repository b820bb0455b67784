/*
 * analysis.c - one CT study through the model (analysis.h).
 *
 * The findings list and its prompt embeddings live in a reference-counted
 * an_findings; the engine points at the current one under its mutex, and
 * every result takes a reference, so a reload never pulls a list from
 * under a job that is still writing its report (and a result may outlive
 * the engine).
 *
 * Threading: see analysis.h.  The model, the encoder's cache (which locks
 * itself) and a built zs_prompts are read-only after opening.
 */
#include "core/analysis.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "core/ops.h"
#include "core/text.h"
#include "cuda/cunet.h"

struct an_findings {
    zs_list *list;
    zs_prompts *prompts;
    int refs; /* atomic */
};

struct an_engine {
    mdl_model *m;
    txt_encoder *enc;
    txt_cache *cache;
    char findings_path[4096];
    float overlap;
    double min_ml;
    pthread_mutex_t mu;
    an_findings *cur;
};

struct an_ctx {
    an_engine *e;
    mdl_acts *acts;       /* CPU; NULL on a GPU */
    cu_model *g;          /* GPU: the model's copy on the device, or NULL */
    cu_acts *ga;          /* GPU: one window's activations */
    int dev_failed;       /* the last an_run failed in the device */
};

#define WHY(...)                                                                                  \
    do {                                                                                          \
        if (why && n) snprintf(why, n, __VA_ARGS__);                                              \
    } while (0)

static void findings_free(an_findings *f)
{
    if (!f) return;
    zs_prompts_free(f->prompts);
    zs_list_free(f->list);
    free(f);
}

/* References are atomic: results drop theirs without the engine. */
static void findings_release(an_findings *f)
{
    if (f && __atomic_sub_fetch(&f->refs, 1, __ATOMIC_ACQ_REL) == 0) findings_free(f);
}

/* The phrasing set: the caller's, else the calibration's, else all. */
static int pick_text(const mdl_model *m, int text)
{
    if (text >= 0) return text;
    const char *t = mdl_meta_get(m, "calibration.text");
    int v = t ? zs_text_parse(t) : -1;
    return v >= 0 ? v : ZS_TEXT_ALL;
}

static int findings_load(an_engine *e, const char *path, int text, an_findings **out, char *why,
                         size_t n)
{
    an_findings *f = calloc(1, sizeof *f);
    if (!f) return CTG_ENOMEM;
    f->refs = 1;
    int rc = zs_list_load(path, &f->list, why, n);
    if (rc == 0)
        rc = zs_prompts_build(f->list, e->m, e->enc, e->cache, pick_text(e->m, text), ZS_TAU,
                              &f->prompts, why, n);
    if (rc < 0) {
        findings_free(f);
        return rc;
    }
    *out = f;
    return 0;
}

int an_engine_open(const an_opts *o, an_engine **out, char *why, size_t n)
{
    *out = NULL;
    if (!o || !o->model || !o->vocab || !o->findings) {
        WHY("model, vocabulary and findings list are all needed");
        return CTG_EINVAL;
    }
    if (!(o->overlap >= 0 && o->overlap < 1)) {
        WHY("overlap %g is not in [0, 1)", (double)o->overlap);
        return CTG_EINVAL;
    }
    an_engine *e = calloc(1, sizeof *e);
    if (!e) return CTG_ENOMEM;
    pthread_mutex_init(&e->mu, NULL);
    e->overlap = o->overlap;
    e->min_ml = o->min_ml > 0 ? o->min_ml : 1.0;
    snprintf(e->findings_path, sizeof e->findings_path, "%s", o->findings);
    char sub[512] = "";
    int rc = mdl_load(o->model, &e->m, sub, sizeof sub);
    if (rc < 0) {
        WHY("model: %s", sub);
        goto fail;
    }
    if ((rc = txt_open("glove", o->vocab, &e->enc, sub, sizeof sub)) < 0) {
        WHY("text encoder %s: %s", o->vocab, sub);
        goto fail;
    }
    if (e->m->text_id[0] && strcmp(e->m->text_id, txt_identity(e->enc)) != 0) {
        WHY("the model was trained with text encoder %s, %s is %s", e->m->text_id, o->vocab,
            txt_identity(e->enc));
        rc = CTG_EINVAL;
        goto fail;
    }
    if ((rc = txt_cache_open(e->enc, 4096, &e->cache)) < 0) {
        WHY("text cache: %s", ctg_strerror(rc));
        goto fail;
    }
    if ((rc = findings_load(e, o->findings, o->text, &e->cur, sub, sizeof sub)) < 0) {
        WHY("findings list: %s", sub);
        goto fail;
    }
    *out = e;
    return 0;
fail:
    an_engine_close(e);
    return rc;
}

void an_engine_close(an_engine *e)
{
    if (!e) return;
    findings_release(e->cur);
    txt_cache_close(e->cache);
    txt_close(e->enc);
    mdl_free(e->m);
    pthread_mutex_destroy(&e->mu);
    free(e);
}

int an_reload_findings(an_engine *e, const char *path, int text, char *why, size_t n)
{
    an_findings *f = NULL;
    char p[4096];
    snprintf(p, sizeof p, "%s", path ? path : e->findings_path);
    int rc = findings_load(e, p, text, &f, why, n);
    if (rc < 0) return rc;
    pthread_mutex_lock(&e->mu);
    an_findings *old = e->cur;
    e->cur = f;
    snprintf(e->findings_path, sizeof e->findings_path, "%s", p);
    pthread_mutex_unlock(&e->mu);
    findings_release(old);
    return 0;
}

const mdl_model *an_model(const an_engine *e) { return e->m; }

const char *an_model_identity(const an_engine *e) { return e->m->identity; }

void an_set_overlap(an_engine *e, float overlap)
{
    if (!(overlap >= 0 && overlap < 1)) return;
    pthread_mutex_lock(&e->mu);
    e->overlap = overlap;
    pthread_mutex_unlock(&e->mu);
}

int an_ctx_new(an_engine *e, an_ctx **out)
{
    an_ctx *c = calloc(1, sizeof *c);
    if (!c) return CTG_ENOMEM;
    c->e = e;
    const mdl_config *cf = &e->m->cfg;
    int rc = mdl_acts_new(e->m, 1, cf->patch[0], cf->patch[1], cf->patch[2], &c->acts);
    if (rc < 0) {
        free(c);
        return rc;
    }
    *out = c;
    return 0;
}

int an_ctx_new_gpu(an_engine *e, struct cu_ctx *gc, int bf16, an_ctx **out, char *why,
                   size_t n)
{
    *out = NULL;
    an_ctx *c = calloc(1, sizeof *c);
    if (!c) return CTG_ENOMEM;
    c->e = e;
    const mdl_config *cf = &e->m->cfg;
    /* The engine's model is shared read-only; the device copy only reads
     * it (parameters up, never down). */
    int rc = cu_model_new(gc, e->m, bf16 ? CU_BF16 : CU_F32, 0, &c->g, why, n);
    if (rc == 0 && (rc = cu_acts_new(c->g, 1, cf->patch[0], cf->patch[1], cf->patch[2],
                                     &c->ga)) < 0)
        WHY("activations of a %dx%dx%d window on the device: %s", cf->patch[2], cf->patch[1],
            cf->patch[0], cu_ctx_error(gc)[0] ? cu_ctx_error(gc) : ctg_strerror(rc));
    /* Before any study: one window on both sides, so a device that
     * computes wrong results is found here and not in a report. */
    /* Test hook (emulated contexts only): a broken device copy. */
    const char *brk = getenv("CTGLIP_CUDA_BREAK_COPY");
    if (rc == 0 && brk && !strcmp(brk, "1") && cu_ctx_emulated(gc)) rc = cu_model_test_corrupt(c->g);
    if (rc == 0) rc = cu_selftest(c->g, NULL, NULL, why, n);
    if (rc < 0) {
        an_ctx_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

struct cu_ctx *an_ctx_device(const an_ctx *c) { return c && c->g ? cu_model_ctx(c->g) : NULL; }

int an_ctx_device_failed(const an_ctx *c) { return c && c->dev_failed; }

void an_ctx_free(an_ctx *c)
{
    if (!c) return;
    mdl_acts_free(c->acts);
    cu_acts_free(c->ga);
    cu_model_free(c->g);
    free(c);
}

void an_result_free(an_result *r)
{
    if (!r) return;
    for (int i = 0; i < r->norgans; i++) free(r->organs[i].findings);
    free(r->organs);
    ctg_vol_free(r->labels);
    findings_release(r->held);
    memset(r, 0, sizeof *r);
}

int an_result_positives(const an_result *r)
{
    int k = 0;
    for (int i = 0; i < r->norgans; i++)
        for (int j = 0; j < r->organs[i].nfindings; j++) k += r->organs[i].findings[j].present;
    return k;
}

/* Outside the body: the air (HU < -500) connected to the volume's side
 * faces (x and y; not the z faces, where a cut trachea or bowel would let
 * the flood into the lungs and gut).  Predicted labels there are cleared:
 * the model never saw air outside a body labelled as an organ, and must
 * not report one there.  Returns the number of voxels cleared, or
 * CTG_ENOMEM. */
static int64_t clear_outside(const ctg_vol *hu, ctg_vol *lab)
{
    int nx = hu->nx, ny = hu->ny, nz = hu->nz;
    size_t nv = ctg_vol_count(hu), head = 0, tail = 0;
    const float *h = hu->data;
    uint8_t *l = lab->data;
    uint8_t *seen = calloc(nv, 1);
    size_t *q = malloc(sizeof(size_t) * nv);
    if (!seen || !q) {
        free(seen);
        free(q);
        return CTG_ENOMEM;
    }
#define AN_PUSH(i)                                                                                \
    do {                                                                                          \
        size_t i_ = (i);                                                                          \
        if (!seen[i_] && h[i_] < -500.0f) seen[i_] = 1, q[tail++] = i_;                          \
    } while (0)
    for (int z = 0; z < nz; z++) {
        size_t base = (size_t)z * ny * nx;
        for (int x = 0; x < nx; x++) {
            AN_PUSH(base + x);
            AN_PUSH(base + (size_t)(ny - 1) * nx + x);
        }
        for (int y = 0; y < ny; y++) {
            AN_PUSH(base + (size_t)y * nx);
            AN_PUSH(base + (size_t)y * nx + nx - 1);
        }
    }
    int64_t cleared = 0;
    while (head < tail) {
        size_t i = q[head++];
        if (l[i]) l[i] = 0, cleared++;
        int x = (int)(i % nx), y = (int)(i / nx % ny), z = (int)(i / ((size_t)nx * ny));
        if (x > 0) AN_PUSH(i - 1);
        if (x < nx - 1) AN_PUSH(i + 1);
        if (y > 0) AN_PUSH(i - nx);
        if (y < ny - 1) AN_PUSH(i + nx);
        if (z > 0) AN_PUSH(i - (size_t)nx * ny);
        if (z < nz - 1) AN_PUSH(i + (size_t)nx * ny);
    }
#undef AN_PUSH
    free(seen);
    free(q);
    return cleared;
}

int an_run(an_engine *e, an_ctx *c, const ctg_vol *hu, an_result *r, char *why, size_t n)
{
    memset(r, 0, sizeof *r);
    if (!hu || hu->dtype != CTG_F32) {
        WHY("the volume must be float Hounsfield units");
        return CTG_EINVAL;
    }
    const mdl_model *m = e->m;
    int k = m->cfg.n_classes, dim = m->cfg.embed_dim;
    an_ctx *own = NULL;
    ctg_vol *rs = NULL, *lab_model = NULL;
    float *embed = NULL, *cos = NULL;
    int64_t *count = NULL;
    zs_score *sc = NULL;
    int rc;
    if (!c) {
        if ((rc = an_ctx_new(e, &own)) < 0) {
            WHY("model activations: %s", ctg_strerror(rc));
            return rc;
        }
        c = own;
    }
    pthread_mutex_lock(&e->mu);
    an_findings *fl = e->cur;
    __atomic_add_fetch(&fl->refs, 1, __ATOMIC_ACQ_REL);
    float overlap = e->overlap;
    pthread_mutex_unlock(&e->mu);
    r->held = fl;
    r->list = fl->list;
    snprintf(r->identity, sizeof r->identity, "%s", m->identity);

    /* 1. The model's grid. */
    double t0 = ctg_mono(), src_sp[3];
    ctg_vol_spacing(hu, src_sp);
    for (int a = 0; a < 3; a++) r->spacing[a] = m->spacing[a] > 0 ? m->spacing[a] : 3.0;
    const ctg_vol *in = hu;
    if (fabs(src_sp[0] - r->spacing[0]) > 1e-3 || fabs(src_sp[1] - r->spacing[1]) > 1e-3 ||
        fabs(src_sp[2] - r->spacing[2]) > 1e-3) {
        if ((rc = ctg_vol_resample(hu, r->spacing, CTG_LINEAR, -1024.0, &rs)) < 0) {
            WHY("resampling to %.3g mm: %s", r->spacing[0], ctg_strerror(rc));
            goto fail;
        }
        in = rs;
    }
    r->grid[0] = in->nx, r->grid[1] = in->ny, r->grid[2] = in->nz;
    double t1 = ctg_mono();
    r->t_resample = t1 - t0;

    /* 2. The model. */
    rc = CTG_ENOMEM;
    embed = malloc(sizeof(float) * (size_t)(k + 1) * dim);
    count = malloc(sizeof(int64_t) * (size_t)(k + 1));
    cos = malloc(sizeof(float) * (size_t)(k + 1));
    sc = malloc(sizeof(zs_score) * (size_t)(fl->list->n ? fl->list->n : 1));
    if (!embed || !count || !cos || !sc) {
        WHY("out of memory");
        goto fail;
    }
    if (c->g) {
        /* On the GPU: any failure there is the device's (the volume was
         * checked above), so the caller re-creates the context. */
        c->dev_failed = 0;
        if ((rc = cu_infer(c->g, c->ga, in, overlap, &lab_model, embed, count)) < 0) {
            const char *dt = cu_ctx_error(cu_model_ctx(c->g));
            WHY("GPU inference on %dx%dx%d voxels: %s", in->nx, in->ny, in->nz,
                dt[0] ? dt : ctg_strerror(rc));
            c->dev_failed = 1;
            goto fail;
        }
    } else if ((rc = mdl_infer(m, c->acts, in, overlap, &lab_model, embed, count, NULL)) < 0) {
        WHY("inference on %dx%dx%d voxels: %s", in->nx, in->ny, in->nz, ctg_strerror(rc));
        goto fail;
    }
    double t2 = ctg_mono();
    r->t_model = t2 - t1;
    int64_t cl = clear_outside(in, lab_model);
    if (cl < 0) {
        rc = (int)cl;
        WHY("out of memory");
        goto fail;
    }
    r->cleared_outside = cl;

    /* 3. Back on the source grid: measures there. */
    if (in == hu) {
        r->labels = lab_model;
        lab_model = NULL;
    } else if ((rc = ctg_vol_resample_to(lab_model, hu, CTG_NEAREST, 0, &r->labels)) < 0) {
        WHY("label map to the source grid: %s", ctg_strerror(rc));
        goto fail;
    }
    int64_t vox[256] = {0};
    double husum[256] = {0};
    const uint8_t *lv = r->labels->data;
    const float *hv = hu->data;
    size_t nv = ctg_vol_count(hu);
    for (size_t i = 0; i < nv; i++) {
        vox[lv[i]]++;
        husum[lv[i]] += hv[i];
    }
    double voxel_ml = src_sp[0] * src_sp[1] * src_sp[2] / 1000.0;
    double t3 = ctg_mono();
    r->t_measure = t3 - t2;

    /* 4 and 5. The organ check and the findings. */
    rc = CTG_ENOMEM;
    if (!(r->organs = calloc((size_t)k, sizeof *r->organs))) {
        WHY("out of memory");
        goto fail;
    }
    for (int cls = 1; cls <= k; cls++) {
        int id = m->class_ids[cls - 1];
        if (count[cls] <= 0 || id > 255 || vox[id] <= 0) continue;
        double ml = (double)vox[id] * voxel_ml;
        if (ml < e->min_ml) continue;
        an_organ *o = &r->organs[r->norgans];
        const float *emb = embed + (size_t)cls * dim;
        o->cls = cls;
        o->id = id;
        o->organ = ctg_organ_get(id);
        o->voxels = vox[id];
        o->volume_ml = ml;
        o->mean_hu = husum[id] / (double)vox[id];
        int top = zs_organ_top1(fl->prompts, emb, cos);
        if (top < 1) {
            rc = CTG_EINVAL;
            WHY("organ check failed");
            goto fail;
        }
        o->top1_id = m->class_ids[top - 1];
        o->cos_own = cos[cls];
        o->cos_top1 = cos[top];
        o->low_confidence = top != cls;
        int ns = zs_score_organ(fl->prompts, cls, emb, sc, fl->list->n);
        if (ns < 0) {
            rc = ns;
            WHY("scoring failed");
            goto fail;
        }
        if (ns > 0 && !(o->findings = calloc((size_t)ns, sizeof *o->findings))) {
            rc = CTG_ENOMEM;
            WHY("out of memory");
            goto fail;
        }
        for (int j = 0; j < ns; j++) {
            an_finding *f = &o->findings[j];
            f->index = sc[j].finding;
            f->f = &fl->list->f[f->index];
            f->prob = sc[j].prob;
            f->threshold = zs_threshold(fl->prompts, f->index, &f->threshold_source);
            f->present = sc[j].present;
            f->cos_pos = sc[j].cos_pos;
            f->cos_neg = sc[j].cos_neg;
        }
        o->nfindings = ns;
        r->norgans++;
    }
    r->t_score = ctg_mono() - t3;
    rc = 0;
fail:
    free(embed);
    free(count);
    free(cos);
    free(sc);
    ctg_vol_free(rs);
    ctg_vol_free(lab_model);
    an_ctx_free(own);
    if (rc < 0) an_result_free(r);
    return rc;
}
