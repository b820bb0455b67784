/*
 * train.c - the training loop of ctglip-train (see train.h): data from the
 * td_ layer, the network from core/model.h, losses from core/glip.h and
 * mdl_seg_loss, AdamW from core/ops.h; the CSV log, checkpoints with exact
 * resume, and the pretrain/finetune command lines.
 *
 * Exactness of resume rests on two rules: all randomness of step t is drawn
 * from a generator seeded with (seed, t), and everything else that changes
 * during training (parameters, AdamW moments, the step) is in the
 * checkpoint.  Cases that fail to load fail the same way again, so a skip
 * replays identically after a resume.
 *
 * Threading: runs on the calling thread; the ops use its OpenMP threads.
 * Being the trainer, it may exit on out-of-memory (xmalloc).
 */
#include "tools/train.h"

#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/core.h"
#include "core/glip.h"
#include "core/model.h"
#include "core/ops.h"
#include "core/organs.h"
#include "core/text.h"
#include "cuda/cu.h"
#include "cuda/cucomm.h"
#include "cuda/cunet.h"
#include "tools/train_data.h"

static void *xmalloc(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    if (!p) {
        fprintf(stderr, "ctglip-train: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static const char *const default_organ_names[] = {
    "spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "pancreas",
    "adrenal_gland_right", "adrenal_gland_left", "lung_upper_lobe_left", "lung_lower_lobe_left",
    "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right", "esophagus",
    "trachea", "small_bowel", "duodenum", "colon", "urinary_bladder", "heart", "aorta",
    "inferior_vena_cava", "portal_vein_and_splenic_vein"};

int trn_default_organs(int *ids, int cap)
{
    int n = 0;
    for (size_t i = 0; i < sizeof default_organ_names / sizeof *default_organ_names; i++) {
        int id = ctg_organ_id(default_organ_names[i]);
        if (id > 0 && n < cap) ids[n++] = id;
    }
    return n;
}

void trn_opts_default(trn_opts *o)
{
    memset(o, 0, sizeof *o);
    static char vocab[4096];
    o->vocab = ctg_data_path(TXT_GLOVE_DEFAULT, vocab, sizeof vocab);
    o->steps = 1000;
    o->stage1_steps = 200;
    o->batch = 2;
    o->patch = 64;
    o->spacing = 0; /* the initial model's, else 3 mm */
    o->width = 16;
    o->depth = 3;
    o->embed = 256;
    o->text_proj = 1;
    o->pool = MDL_POOL_MEAN;
    o->at_balance = 1;
    o->lr = 3e-4f;
    o->min_lr = 3e-6f;
    o->wd = 1e-2f;
    o->clip_grad = 1.0f;
    o->warmup = 50;
    o->seed = 1;
    o->ckpt_every = 100;
    o->norgans = trn_default_organs(o->organs, TRN_MAX_ORGANS);
    o->losses = TRN_L_OT | TRN_L_AT;
    o->dict = GLP_DICT_DEFAULT;
    o->w_ot = 0.5f;
    o->w_at = 0.5f;
    o->w_seg = 1.0f;
    o->w_clip = 1.0f;
    o->tau = GLP_TAU;
    o->min_voxels = 8;
    o->cache_bytes = (size_t)2 << 30;
    o->log_every = 10;
    o->device = TRN_CPU;
    o->bf16 = 1;
    o->rank = 0;
    o->world = 1;
}

/* ---- checkpoint ------------------------------------------------------------------- */

/* Layout, version 1 (host byte order; a checkpoint is for resuming on the
 * machine that wrote it, the model file is the portable artefact):
 *   "CTGTRNCK" u32 version u32 sizeof(ck_head)
 *   ck_head, then K i32 class ids, text_id bytes (head.text_len),
 *   n_params f32 each of params, adam_m, adam_v,
 *   u64 FNV-1a of everything before it. */
typedef struct ck_head {
    int64_t step;
    uint64_t seed;
    int32_t batch, patch, losses, dict;
    int64_t stage1_steps;
    mdl_config cfg;
    uint64_t n_params;
    uint32_t text_len;
    uint32_t pad;
} ck_head;

static uint64_t fnv(const unsigned char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static int ck_save(const char *path, const mdl_model *m, const trn_opts *o, long step)
{
    ck_head h;
    memset(&h, 0, sizeof h);
    h.step = step;
    h.seed = o->seed;
    h.batch = o->batch;
    h.patch = o->patch;
    h.losses = o->losses;
    h.dict = o->dict;
    h.stage1_steps = o->stage1_steps;
    h.cfg = m->cfg;
    h.n_params = m->n_params;
    h.text_len = (uint32_t)strlen(m->text_id);
    int k = m->cfg.n_classes;
    size_t pb = sizeof(float) * m->n_params;
    size_t len = 16 + sizeof h + sizeof(int32_t) * (size_t)k + h.text_len + 3 * pb + 8;
    unsigned char *buf = xmalloc(len), *p = buf;
    uint32_t ver = TRN_CKPT_VERSION, hs = sizeof h;
    memcpy(p, TRN_CKPT_MAGIC, 8), p += 8;
    memcpy(p, &ver, 4), p += 4;
    memcpy(p, &hs, 4), p += 4;
    memcpy(p, &h, sizeof h), p += sizeof h;
    for (int i = 0; i < k; i++) {
        int32_t id = m->class_ids[i];
        memcpy(p, &id, 4), p += 4;
    }
    memcpy(p, m->text_id, h.text_len), p += h.text_len;
    memcpy(p, m->params, pb), p += pb;
    memcpy(p, m->adam_m, pb), p += pb;
    memcpy(p, m->adam_v, pb), p += pb;
    uint64_t sum = fnv(buf, (size_t)(p - buf));
    memcpy(p, &sum, 8);

    /* Durable replacement: a crash leaves the old checkpoint or the new
     * one, never a torn file. */
    char tmp[4200], dir[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    snprintf(dir, sizeof dir, "%s", path);
    char *sl = strrchr(dir, '/');
    if (sl) *sl = 0;
    else snprintf(dir, sizeof dir, ".");
    int rc = 0;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0) {
        rc = ctg_errno(errno);
        log_syserr(rc, "open", "%s", tmp);
        goto fail;
    }
    rc = ctg_write_all(fd, buf, len);
    if (rc == 0 && fsync(fd) != 0) rc = ctg_errno(errno);
    if (close(fd) != 0 && rc == 0) rc = ctg_errno(errno);
    if (rc == 0 && rename(tmp, path) != 0) rc = ctg_errno(errno);
    if (rc == 0) rc = ctg_fsync_dir(dir);
    if (rc != 0) {
        log_syserr(rc, "write", "%s", path);
        unlink(tmp);
    }
fail:
    free(buf);
    return rc;
}

/* Reads a checkpoint into a new model with training state; *step and the
 * head (for checking the options) come back.  The caller owns *out. */
static int ck_load(const char *path, mdl_model **out, ck_head *hout)
{
    int rc = CTG_EFORMAT;
    unsigned char *buf = NULL;
    mdl_model *m = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        rc = ctg_errno(errno);
        log_syserr(rc, "fopen", "%s", path);
        return rc;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || st.st_size < 24 + (off_t)sizeof(ck_head)) {
        log_error("%s: not a checkpoint (too short)", path);
        goto fail;
    }
    size_t len = (size_t)st.st_size;
    buf = xmalloc(len);
    if (fread(buf, 1, len, f) != len) {
        rc = CTG_EIO;
        log_error("%s: read error", path);
        goto fail;
    }
    uint32_t ver, hs;
    memcpy(&ver, buf + 8, 4);
    memcpy(&hs, buf + 12, 4);
    if (memcmp(buf, TRN_CKPT_MAGIC, 8) != 0 || ver != TRN_CKPT_VERSION ||
        hs != sizeof(ck_head)) {
        log_error("%s: not a version %d checkpoint of this build", path, TRN_CKPT_VERSION);
        goto fail;
    }
    uint64_t sum;
    memcpy(&sum, buf + len - 8, 8);
    if (fnv(buf, len - 8) != sum) {
        log_error("%s: checksum mismatch", path);
        goto fail;
    }
    ck_head h;
    memcpy(&h, buf + 16, sizeof h);
    int k = h.cfg.n_classes;
    if (k < 1 || k > MDL_MAX_CLASSES || h.text_len >= MDL_TEXT_ID_MAX) {
        log_error("%s: bad header", path);
        goto fail;
    }
    size_t pb = sizeof(float) * h.n_params;
    size_t need = 16 + sizeof h + 4 * (size_t)k + h.text_len + 3 * pb + 8;
    if (need != len) {
        log_error("%s: size %zu, expected %zu", path, len, need);
        goto fail;
    }
    const unsigned char *p = buf + 16 + sizeof h;
    int ids[MDL_MAX_CLASSES];
    for (int i = 0; i < k; i++) {
        int32_t id;
        memcpy(&id, p, 4), p += 4;
        ids[i] = id;
    }
    char text_id[MDL_TEXT_ID_MAX];
    memcpy(text_id, p, h.text_len), p += h.text_len;
    text_id[h.text_len] = 0;
    char why[256] = "";
    rc = mdl_new(&h.cfg, ids, text_id, 0, &m, why, sizeof why);
    if (rc != 0) {
        log_error("%s: %s", path, why);
        goto fail;
    }
    rc = CTG_EFORMAT;
    if (m->n_params != h.n_params) {
        log_error("%s: parameter count differs from the network it describes", path);
        goto fail;
    }
    rc = mdl_train_alloc(m);
    if (rc != 0) goto fail;
    memcpy(m->params, p, pb), p += pb;
    memcpy(m->adam_m, p, pb), p += pb;
    memcpy(m->adam_v, p, pb);
    *hout = h;
    *out = m;
    m = NULL;
    rc = 0;
fail:
    mdl_free(m);
    free(buf);
    fclose(f);
    return rc;
}

/* What the model file says about its training: the grid, and as metadata
 * the run's data, steps and losses.  A calibration from an initial model
 * no longer holds and goes. */
static int stamp_model(mdl_model *m, const trn_opts *o, const double sp[3])
{
    char v[64];
    float f[3] = {(float)sp[0], (float)sp[1], (float)sp[2]};
    mdl_set_spacing(m, f);
    for (int i = m->n_meta - 1; i >= 0; i--)
        if (!strncmp(m->meta[i].key, "threshold.", 10) ||
            !strncmp(m->meta[i].key, "calibration.", 12))
            mdl_meta_set(m, m->meta[i].key, NULL);
    const char *base = strrchr(o->data, '/');
    int rc = mdl_meta_set(m, "trained.data", base ? base + 1 : o->data);
    snprintf(v, sizeof v, "%ld", o->steps);
    if (!rc) rc = mdl_meta_set(m, "trained.steps", v);
    snprintf(v, sizeof v, "%ld", o->stage1_steps);
    if (!rc) rc = mdl_meta_set(m, "trained.stage1_steps", v);
    snprintf(v, sizeof v, "%s%s%s%s", (o->losses & TRN_L_CLIP) ? "clip " : "",
             (o->losses & TRN_L_OT) ? "ot " : "", (o->losses & TRN_L_AT) ? "at " : "",
             o->dict > 0 && (o->losses & TRN_L_AT) ? "dict" : "");
    size_t len = strlen(v);
    while (len && v[len - 1] == ' ') v[--len] = 0;
    if (!rc) rc = mdl_meta_set(m, "trained.losses", len ? v : "seg");
    snprintf(v, sizeof v, "%d", o->dict);
    if (!rc) rc = mdl_meta_set(m, "trained.dict", v);
    snprintf(v, sizeof v, "%llu", (unsigned long long)o->seed);
    if (!rc) rc = mdl_meta_set(m, "trained.seed", v);
    if (o->init && !rc) {
        base = strrchr(o->init, '/');
        rc = mdl_meta_set(m, "trained.init", base ? base + 1 : o->init);
    }
    if (rc < 0) log_error("model metadata: %s", ctg_strerror(rc));
    return rc;
}

/* ---- the run ----------------------------------------------------------------------- */

/* Everything one run holds, released in trn_run's fail path. */
typedef struct run {
    const trn_opts *o;
    td_manifest *man;
    td_opts topt;
    td_cache *cache;
    txt_encoder *enc;
    txt_cache *tc;
    mdl_model *m;
    mdl_acts *a;     /* CPU */
    cu_ctx *gc;      /* GPU: the context, the model's device copy, activations */
    cu_model *g;
    cu_acts *ga;
    cu_comm *comm;   /* data parallel (world > 1) */
    int nb, b0;      /* this rank's samples of each batch: [b0, b0 + nb) */
    int p;           /* patch side */
    size_t s;        /* voxels of a patch */
    glp_dict *dict;
    int tdim;        /* raw text dimension */
    int e;           /* embedding dimension */
    float *organ_raw;   /* [K+1][tdim] organ prompts */
    char (*normal_txt)[160]; /* [K+1] normal templates */
    char **akeys;    /* interned abnormality keys */
    int nakeys;
    uint8_t *bad;    /* [cases] reason already logged */
    FILE *csv;
} run;

static int intern_key(run *r, const char *key)
{
    for (int i = 0; i < r->nakeys; i++)
        if (strcmp(r->akeys[i], key) == 0) return i;
    char **nk = realloc(r->akeys, sizeof *nk * (size_t)(r->nakeys + 1));
    if (!nk) return -1;
    r->akeys = nk;
    r->akeys[r->nakeys] = strdup(key);
    if (!r->akeys[r->nakeys]) return -1;
    return r->nakeys++;
}

static int enc_cb(void *ctx, const char *text, float *out)
{
    return txt_cache_get((txt_cache *)ctx, text, out);
}

/* The model class of a v2 id, or 0. */
static int class_of(const mdl_model *m, int id)
{
    for (int i = 0; i < m->cfg.n_classes; i++)
        if (m->class_ids[i] == id) return i + 1;
    return 0;
}

/* Dictionary candidates: every finding sentence of the manifest on an organ
 * of the model. */
static int build_dict(run *r)
{
    const td_manifest *man = r->man;
    int cap = 0;
    for (int i = 0; i < man->n; i++) cap += man->cases[i].nfindings;
    glp_text *src = xmalloc(sizeof *src * (size_t)(cap ? cap : 1));
    int ns = 0;
    for (int i = 0; i < man->n; i++)
        for (int j = 0; j < man->cases[i].nfindings; j++) {
            const td_mfinding *f = &man->cases[i].findings[j];
            int id = ctg_organ_id(f->organ);
            int cls = id > 0 ? class_of(r->m, id) : 0;
            if (!cls || !f->sentence || !f->sentence[0]) continue;
            int k = intern_key(r, f->abnormality);
            if (k < 0) {
                free(src);
                return CTG_ENOMEM;
            }
            src[ns++] = (glp_text){f->sentence, cls, k};
        }
    int rc = glp_dict_build(src, ns, r->o->dict, r->o->seed ^ 0xd1c7ull, r->tdim, enc_cb, r->tc,
                            &r->dict);
    free(src);
    return rc;
}

/* Loss parts of one step. */
typedef struct parts {
    float total, ce, dice, ot, at, clip;
    int rows;
} parts;

/* ---- the network on its device ------------------------------------------------------ */

/* A device call's result, with the device's reason logged on failure. */
static int dev_rc(run *r, int rc, const char *what)
{
    if (rc < 0) log_error("GPU: %s: %s", what, r->gc && cu_ctx_error(r->gc)[0]
                                                   ? cu_ctx_error(r->gc) : ctg_strerror(rc));
    return rc;
}

static float *net_embed(run *r) { return r->g ? r->ga->embed : r->a->embed; }
static const int64_t *net_count(run *r) { return r->g ? r->ga->count : r->a->count; }
static float *net_dembed(run *r) { return r->g ? r->ga->dembed : r->a->dembed; }

static int net_forward(run *r, const float *img, const uint8_t *lab)
{
    if (!r->g) return mdl_forward(r->m, r->a, img, lab);
    return dev_rc(r, cu_forward(r->g, r->ga, img, lab), "forward");
}

static void net_zero_grad(run *r)
{
    if (r->g) dev_rc(r, cu_model_zero_grad(r->g), "zeroing the gradients");
    else mdl_zero_grad(r->m);
}

static int net_seg_loss(run *r, const uint8_t *lab, float w, float *ce, float *dice)
{
    if (!r->g) return mdl_seg_loss(r->m, r->a, lab, w, ce, dice);
    return dev_rc(r, cu_seg_loss(r->g, r->ga, lab, w, ce, dice), "segmentation loss");
}

static int net_text_forward(run *r, float *out, float *norm, const float *in, int rows)
{
    if (!r->g) return mdl_text_forward(r->m, out, norm, in, rows);
    return dev_rc(r, cu_text_forward(r->g, out, norm, in, rows), "text forward");
}

static int net_text_backward(run *r, const float *dout, const float *out, const float *norm,
                             const float *in, int rows)
{
    if (!r->g) return mdl_text_backward(r->m, dout, out, norm, in, rows);
    return dev_rc(r, cu_text_backward(r->g, dout, out, norm, in, rows), "text backward");
}

static int net_backward(run *r, int with_dlogits)
{
    if (!r->g) return mdl_backward(r->m, r->a, r->a->dlogits, r->a->dembed);
    return dev_rc(r, cu_backward(r->g, r->ga, with_dlogits, r->ga->dembed), "backward");
}

/* Averages the gradients over the ranks, clips their norm and takes the
 * AdamW step t. */
static int net_step(run *r, long t)
{
    const trn_opts *o = r->o;
    mdl_model *m = r->m;
    op_adamw_cfg ac = op_adamw_defaults();
    ac.lr = o->lr;
    ac.min_lr = o->min_lr;
    ac.weight_decay = o->wd;
    ac.warmup_steps = o->warmup;
    ac.total_steps = o->steps;
    int rc;
    if (r->g) {
        if (r->comm && (rc = cu_comm_allreduce_dev(r->comm, r->gc, cu_model_grads(r->g),
                                                   m->n_params, CU_COMM_MEAN)) < 0) {
            log_error("all-reduce of the gradients: %s", cu_comm_error(r->comm));
            return rc;
        }
        return dev_rc(r, cu_model_step(r->g, t, &ac, o->clip_grad > 0 ? o->clip_grad : 0, NULL),
                      "optimizer step");
    }
    if (r->comm && (rc = cu_comm_allreduce(r->comm, m->grads, m->n_params, CU_COMM_MEAN)) < 0) {
        log_error("all-reduce of the gradients: %s", cu_comm_error(r->comm));
        return rc;
    }
    /* Clip the gradient norm, then one AdamW step on the schedule. */
    if (o->clip_grad > 0) {
        double gn = op_grad_norm_cpu(m->grads, m->n_params);
        if (gn > o->clip_grad) op_scale_cpu(m->grads, m->n_params, (float)(o->clip_grad / gn));
    }
    op_adamw_step_cpu(m->params, m->grads, m->adam_m, m->adam_v, m->n_params, t, &ac);
    m->identity[0] = 0;
    return 0;
}

/* The host model up to date with the device's (before a checkpoint or
 * the model file): parameters and, with all, the moments. */
static int net_sync_host(run *r, int all)
{
    if (!r->g) return 0;
    return dev_rc(r, cu_model_download(r->g, all), "downloading the parameters");
}

/* The buffers of one contrastive loss: `rows` image rows (embeddings and
 * their gradients) against `ncols` text columns (raw and projected text
 * embeddings, gradients, norms, the column descriptions) and the rows x
 * columns mask.  The OT/CLIP step and AT each size their own. */
typedef struct text_bufs {
    float *img, *dimg, *raw, *txt, *dtxt, *nrm;
    uint8_t *mask;
    glp_text *cols;
} text_bufs;

static void text_bufs_alloc(text_bufs *b, int rows, int ncols, int E, int TD)
{
    b->img = xmalloc(sizeof(float) * (size_t)rows * E);
    b->dimg = xmalloc(sizeof(float) * (size_t)rows * E);
    b->raw = xmalloc(sizeof(float) * (size_t)ncols * TD);
    b->txt = xmalloc(sizeof(float) * (size_t)ncols * E);
    b->dtxt = xmalloc(sizeof(float) * (size_t)ncols * E);
    b->nrm = xmalloc(sizeof(float) * (size_t)ncols);
    b->mask = xmalloc((size_t)rows * (size_t)ncols);
    b->cols = xmalloc(sizeof *b->cols * (size_t)ncols);
}

static void text_bufs_free(text_bufs *b)
{
    free(b->img), free(b->dimg), free(b->raw), free(b->txt), free(b->dtxt), free(b->nrm);
    free(b->mask), free(b->cols);
}

/* AT (eq. 3) for the nr organ rows of a step (row i: sample rb[i], class
 * rc_[i], embedding rimg[i]); adds its gradient into dimg.  Row i's
 * positive is one of its organ's findings in the case (a seeded pick) or
 * the organ's normal template.  The texts are the rows' positives, then
 * the normal template of every class, then the dictionary: so an abnormal
 * organ always meets its own organ's normal statement as a negative, which
 * is the choice zero-shot detection makes (positive against negative
 * prompt).  Abnormal organs are a few rows among dozens of normal ones;
 * with o->at_balance > 1 each abnormal row is repeated (up to that many
 * times) so that the two kinds weigh about the same in the loss (the
 * repeats' identical texts are masked as false negatives of each other).  A focal finding whose lesion
 * is located (td_finding) counts only when the patch window win[b] of its
 * sample shows it; an organ whose findings all lie outside its patch sits
 * this loss out (it is neither abnormal nor normal in what it saw). */
static int at_loss(run *r, const td_case **cb, const double (*win)[6], td_rng *rng, const int *rb,
                   const int *rc_, int nr, const float *rimg, float *dimg, float *loss)
{
    const trn_opts *o = r->o;
    const int K = r->m->cfg.n_classes, E = r->e, TD = r->tdim;
    const int nd = r->dict ? r->dict->n : 0;
    int rc = 0;
    *loss = 0.0f;
    if (nr == 0) return 0;
    char (*sent)[200] = xmalloc(sizeof *sent * (size_t)nr);
    glp_text *pos = xmalloc(sizeof *pos * (size_t)nr);
    int nab = 0, *use = xmalloc(sizeof(int) * (size_t)nr), nuse = 0;
    for (int i = 0; i < nr; i++) {
        const td_case *c = cb[rb[i]];
        int nf = 0, nall = 0, pick[TD_MAX_FINDINGS];
        for (int j = 0; j < c->nfindings; j++)
            if (c->findings[j].cls == rc_[i]) {
                nall++;
                /* A lesion outside the patch is not in what the organ's
                 * row saw. */
                if (td_finding_in_window(&c->findings[j], win[rb[i]])) pick[nf++] = j;
            }
        if (nall > 0 && nf == 0) {
            /* Abnormal organ, but not in this patch: neither the finding's
             * positive nor a normal one, so the row sits this loss out. */
            pos[i] = (glp_text){NULL, rc_[i], -1};
            continue;
        }
        use[nuse++] = i;
        if (nf == 0) {
            pos[i] = (glp_text){r->normal_txt[rc_[i]], rc_[i], -1};
            continue;
        }
        const td_finding *f = &c->findings[pick[td_rng_int(rng, nf)]];
        if (f->sentence && f->sentence[0])
            snprintf(sent[i], sizeof sent[i], "%s", f->sentence);
        else {
            char w[128];
            if (txt_organ_words(f->organ, w, sizeof w) != 0) snprintf(w, sizeof w, "%s", f->organ);
            snprintf(sent[i], sizeof sent[i], "%s in the %s", f->abnormality, w);
        }
        int k = intern_key(r, f->abnormality);
        if (k < 0) {
            free(sent), free(pos);
            return CTG_ENOMEM;
        }
        pos[i] = (glp_text){sent[i], rc_[i], k};
        nab++;
    }
    int rep = 1;
    if (nab > 0 && nab < nuse) {
        rep = (nuse - nab + nab / 2) / nab;
        rep = rep < 1 ? 1 : rep > o->at_balance ? o->at_balance : rep;
    }
    int nt = nuse + nab * (rep - 1), m = nt + K + nd;
    if (nuse == 0) {
        free(sent), free(pos), free(use);
        return 0;
    }
    int *src = xmalloc(sizeof(int) * (size_t)nt);
    text_bufs tb;
    text_bufs_alloc(&tb, nt, m, E, TD);
    float *img = tb.img, *dim_ = tb.dimg, *raw = tb.raw, *txt = tb.txt, *dtxt = tb.dtxt;
    float *nrm = tb.nrm;
    uint8_t *mask = tb.mask;
    glp_text *cols = tb.cols;
    int t = 0;
    for (int u = 0; u < nuse; u++) {
        int i = use[u];
        for (int q = 0; q < (pos[i].akey >= 0 ? rep : 1); q++) src[t++] = i;
    }
    for (int i = 0; i < nt && rc == 0; i++) {
        cols[i] = pos[src[i]];
        memcpy(img + (size_t)i * E, rimg + (size_t)src[i] * E, sizeof(float) * E);
        rc = txt_cache_get(r->tc, cols[i].text, raw + (size_t)i * TD);
    }
    for (int c = 1; c <= K && rc == 0; c++) {
        cols[nt + c - 1] = (glp_text){r->normal_txt[c], c, -1};
        rc = txt_cache_get(r->tc, r->normal_txt[c], raw + (size_t)(nt + c - 1) * TD);
    }
    for (int j = 0; j < nd && rc == 0; j++) {
        cols[nt + K + j] = r->dict->items[j];
        memcpy(raw + (size_t)(nt + K + j) * TD, r->dict->emb + (size_t)j * TD,
               sizeof(float) * TD);
    }
    if (rc == 0) rc = net_text_forward(r, txt, nrm, raw, m);
    if (rc == 0) {
        glp_at_mask(cols, nt, m, mask);
        memset(dtxt, 0, sizeof(float) * (size_t)m * E);
        memset(dim_, 0, sizeof(float) * (size_t)nt * E);
        rc = glp_pair_loss(loss, img, txt, mask, nt, m, E, o->tau, o->w_at, dim_, dtxt);
    }
    if (rc == 0) rc = net_text_backward(r, dtxt, txt, nrm, raw, m);
    if (rc == 0)
        for (int i = 0; i < nt; i++)
            op_acc_cpu(dimg + (size_t)src[i] * E, dim_ + (size_t)i * E, (size_t)E);
    free(sent), free(pos), free(use), free(src);
    text_bufs_free(&tb);
    return rc;
}

/* One training step t: sample, forward, losses, backward, AdamW.  Every
 * rank draws the whole batch from the step's generator (so a data-parallel
 * run sees the samples a single process would) and trains on its share. */
static int step_once(run *r, long t, float *img, uint8_t *lab, uint8_t *pool, parts *pt)
{
    const trn_opts *o = r->o;
    mdl_model *m = r->m;
    const int B = o->batch, NB = r->nb, K1 = m->cfg.n_classes + 1, E = r->e, TD = r->tdim;
    const size_t S = r->s;
    const td_case *cs[64] = {0};
    double wins[64][6];
    int stage2 = t > o->stage1_steps;
    int rc = 0;
    td_rng rng;
    td_rng_seed(&rng, o->seed, (uint64_t)t);
    memset(pt, 0, sizeof *pt);

    /* Sampling: a case that fails to load is skipped (its reason logged
     * once) and another one drawn from the same generator. */
    for (int b = 0; b < B; b++) {
        int tries = 0;
        for (;;) {
            int i = td_rng_int(&rng, r->man->n);
            char why[256] = "";
            rc = td_cache_get(r->cache, i, &cs[b], why, sizeof why);
            if (rc == 0) break;
            if (!r->bad[i]) {
                r->bad[i] = 1;
                log_warn("skipping case %s (manifest line %d): %s", r->man->cases[i].id,
                         r->man->cases[i].line, why);
            }
            if (rc == CTG_ENOMEM || ++tries >= 64 + 4 * r->man->n) {
                log_error("no loadable case found");
                rc = rc == CTG_ENOMEM ? rc : CTG_EFORMAT;
                goto fail;
            }
        }
        rc = td_sample_patch_win(cs[b], &r->topt, &rng, img + (size_t)b * S,
                                 lab + (size_t)b * S, r->p, r->p, r->p, wins[b]);
        if (rc != 0) goto fail;
    }
    /* This rank's share. */
    const td_case **cb = cs + r->b0;
    float *ib = img + (size_t)r->b0 * S;
    uint8_t *lb = lab + (size_t)r->b0 * S;

    int clip = stage2 && (o->losses & TRN_L_CLIP);
    rc = net_forward(r, ib, clip ? pool : lb);
    if (rc != 0) goto fail;
    net_zero_grad(r);
    if (o->w_seg > 0) {
        rc = net_seg_loss(r, lb, o->w_seg, &pt->ce, &pt->dice);
        if (rc != 0) goto fail;
        pt->total += o->w_seg * (pt->ce + pt->dice);
    }
    const float *embed = net_embed(r);
    const int64_t *count = net_count(r);
    float *dembed = net_dembed(r);

    /* Text-side buffers live only for this step. */
    int nr = 0; /* OT and CLIP rows; AT has its own buffers (at_loss) */
    int cap = NB * K1;
    int *rb = xmalloc(sizeof(int) * (size_t)cap), *rc_ = xmalloc(sizeof(int) * (size_t)cap);
    text_bufs tb;
    text_bufs_alloc(&tb, cap, cap, E, TD);
    float *rimg = tb.img, *dimg = tb.dimg, *raw = tb.raw, *txt = tb.txt, *dtxt = tb.dtxt;
    float *nrm = tb.nrm;
    uint8_t *mask = tb.mask;
    glp_text *cols = tb.cols;

    if (clip) {
        /* Vanilla CLIP: the whole patch (pooled as class 1 everywhere)
         * against its case's whole report. */
        for (int b = 0; b < NB; b++) {
            const char *rep = cb[b]->report;
            if (!rep || !rep[0]) continue;
            rc = txt_encode(r->enc, rep, raw + (size_t)nr * TD);
            if (rc != 0) goto done;
            memcpy(rimg + (size_t)nr * E, embed + ((size_t)b * K1 + 1) * E, sizeof(float) * E);
            cols[nr] = (glp_text){rep, 0, -1};
            rb[nr] = b, rc_[nr] = 1;
            nr++;
        }
        rc = net_text_forward(r, txt, nrm, raw, nr);
        if (rc != 0) goto done;
        glp_at_mask(cols, nr, nr, mask);
        rc = glp_pair_loss(&pt->clip, rimg, txt, mask, nr, nr, E, o->tau, o->w_clip, dimg, dtxt);
        if (rc != 0) goto done;
        pt->total += o->w_clip * pt->clip;
        rc = net_text_backward(r, dtxt, txt, nrm, raw, nr);
        if (rc != 0) goto done;
    } else if (stage2 && (o->losses & (TRN_L_OT | TRN_L_AT))) {
        for (int b = 0; b < NB; b++)
            for (int c = 1; c < K1; c++)
                if (count[(size_t)b * K1 + c] >= o->min_voxels) {
                    rb[nr] = b, rc_[nr] = c;
                    memcpy(rimg + (size_t)nr * E, embed + ((size_t)b * K1 + c) * E,
                           sizeof(float) * E);
                    nr++;
                }
        if (o->losses & TRN_L_OT) {
            for (int i = 0; i < nr; i++)
                memcpy(raw + (size_t)i * TD, r->organ_raw + (size_t)rc_[i] * TD,
                       sizeof(float) * TD);
            rc = net_text_forward(r, txt, nrm, raw, nr);
            if (rc != 0) goto done;
            glp_ot_mask(rc_, nr, mask);
            memset(dtxt, 0, sizeof(float) * (size_t)nr * E);
            rc = glp_pair_loss(&pt->ot, rimg, txt, mask, nr, nr, E, o->tau, o->w_ot, dimg, dtxt);
            if (rc != 0) goto done;
            pt->total += o->w_ot * pt->ot;
            rc = net_text_backward(r, dtxt, txt, nrm, raw, nr);
            if (rc != 0) goto done;
        }
        if (o->losses & TRN_L_AT) {
            rc = at_loss(r, cb, (const double (*)[6])(wins + r->b0), &rng, rb, rc_, nr, rimg,
                         dimg, &pt->at);
            if (rc != 0) goto done;
            pt->total += o->w_at * pt->at;
        }
    }
    for (int i = 0; i < nr; i++)
        op_acc_cpu(dembed + ((size_t)rb[i] * K1 + rc_[i]) * E, dimg + (size_t)i * E, (size_t)E);
    pt->rows = nr;
    rc = net_backward(r, o->w_seg > 0);
    if (rc != 0) goto done;
    rc = net_step(r, t);
done:
    free(rb), free(rc_);
    text_bufs_free(&tb);
fail:
    for (int b = 0; b < B; b++)
        if (cs[b]) td_cache_put(r->cache, cs[b]);
    return rc;
}

/* Keeps the CSV rows of steps <= step (a resume drops what the interrupted
 * run logged after its checkpoint) and opens it for appending. */
static FILE *csv_open(const char *path, long keep_step)
{
    if (keep_step > 0) {
        FILE *in = fopen(path, "r");
        char *kept = NULL;
        size_t klen = 0;
        FILE *mem = open_memstream(&kept, &klen);
        if (in && mem) {
            char line[1024];
            int first = 1;
            while (fgets(line, sizeof line, in)) {
                if (first || atol(line) <= keep_step) fputs(line, mem);
                first = 0;
            }
        }
        if (in) fclose(in);
        if (mem) fclose(mem);
        FILE *f = fopen(path, "w");
        if (f && kept) fwrite(kept, 1, klen, f);
        free(kept);
        if (f && klen == 0)
            fprintf(f, "step,stage,lr,loss,seg_ce,seg_dice,ot,at,clip,organs,seconds\n");
        return f;
    }
    FILE *f = fopen(path, "w");
    if (f) fprintf(f, "step,stage,lr,loss,seg_ce,seg_dice,ot,at,clip,organs,seconds\n");
    return f;
}

int trn_run(const trn_opts *o)
{
    run R, *r = &R;
    memset(r, 0, sizeof R);
    r->o = o;
    char why[512] = "", path[4200];
    int rc = CTG_EINVAL;
    float *img = NULL;
    uint8_t *lab = NULL, *pool = NULL;
    long start = 0;
    if (!o->data || !o->out || o->batch < 1 || o->batch > 64 || o->steps < 1 || o->patch < 8) {
        log_error("bad options: --data, --out, --batch 1..64, --steps >= 1, --patch >= 8");
        return CTG_EINVAL;
    }
    if ((o->losses & TRN_L_CLIP) && (o->losses & (TRN_L_OT | TRN_L_AT))) {
        log_error("--loss clip cannot be combined with ot or at (they pool differently)");
        return CTG_EINVAL;
    }
    int world = o->world > 0 ? o->world : 1, rank = o->rank;
    if (rank < 0 || rank >= world || o->batch % world != 0) {
        log_error("bad options: rank %d of %d, and the batch (%d) must split evenly over the ranks",
                  rank, world, o->batch);
        return CTG_EINVAL;
    }
    r->nb = o->batch / world;
    r->b0 = rank * r->nb;
    int lead = rank == 0; /* writes the log, checkpoints and the model */
    if (o->threads > 0) {
        op_set_threads(o->threads);
    } else if (world > 1 && o->device == TRN_CPU) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        op_set_threads((int)(cores / world > 0 ? cores / world : 1));
    }
    if (world > 1) {
        rc = cu_comm_open(o->comm_dir, rank, world, 600, &r->comm, why, sizeof why);
        if (rc != 0) {
            log_error("rank %d of %d: %s", rank, world, why);
            return rc;
        }
    }
    rc = ctg_mkdirs(o->out);
    if (rc != 0) {
        log_syserr(rc, "mkdir", "%s", o->out);
        return rc;
    }
    rc = txt_open("glove", o->vocab, &r->enc, why, sizeof why);
    if (rc != 0) {
        log_error("text encoder %s: %s", o->vocab, why);
        goto fail;
    }
    r->tdim = txt_dim(r->enc);
    rc = txt_cache_open(r->enc, 65536, &r->tc);
    if (rc != 0) goto fail;

    /* The model: from a checkpoint, from a model file (finetune) or new. */
    if (o->resume) {
        ck_head h;
        rc = ck_load(o->resume, &r->m, &h);
        if (rc != 0) goto fail;
        if (h.seed != o->seed || h.batch != o->batch || h.patch != o->patch ||
            h.losses != o->losses || h.dict != o->dict || h.stage1_steps != o->stage1_steps) {
            log_error("%s: written with other --seed/--batch/--patch/--loss/--dict/--stage1-steps",
                      o->resume);
            rc = CTG_EINVAL;
            goto fail;
        }
        start = (long)h.step;
    } else if (o->init) {
        rc = mdl_load(o->init, &r->m, why, sizeof why);
        if (rc != 0) {
            log_error("%s: %s", o->init, why);
            goto fail;
        }
        rc = mdl_train_alloc(r->m);
        if (rc != 0) goto fail;
    } else {
        mdl_config cfg = mdl_config_default(o->norgans);
        cfg.width = o->width;
        cfg.depth = o->depth;
        cfg.pool = o->pool;
        cfg.embed_dim = o->text_proj ? o->embed : r->tdim;
        cfg.text_dim = o->text_proj ? r->tdim : 0;
        cfg.patch[0] = cfg.patch[1] = cfg.patch[2] = o->patch;
        rc = mdl_new(&cfg, o->organs, txt_identity(r->enc), o->seed, &r->m, why, sizeof why);
        if (rc != 0) {
            log_error("model: %s", why);
            goto fail;
        }
        rc = mdl_train_alloc(r->m);
        if (rc != 0) goto fail;
    }
    mdl_model *m = r->m;
    if (strcmp(m->text_id, txt_identity(r->enc)) != 0) {
        log_error("the model was trained with another text encoder (%s)", m->text_id);
        rc = CTG_EINVAL;
        goto fail;
    }
    int effp = m->cfg.patch[0];
    if (m->cfg.patch[1] != effp || m->cfg.patch[2] != effp) {
        log_error("the model's patch is not a cube");
        rc = CTG_EINVAL;
        goto fail;
    }
    r->e = m->cfg.embed_dim;
    int K = m->cfg.n_classes;

    /* Prompts of every class, encoded once. */
    r->organ_raw = xmalloc(sizeof(float) * (size_t)(K + 1) * r->tdim);
    r->normal_txt = xmalloc(sizeof *r->normal_txt * (size_t)(K + 1));
    for (int c = 1; c <= K; c++) {
        char w[128], p[200];
        const ctg_organ *og = ctg_organ_get(m->class_ids[c - 1]);
        if (!og || txt_organ_words(og->name, w, sizeof w) != 0) {
            rc = CTG_EINVAL;
            goto fail;
        }
        snprintf(p, sizeof p, GLP_ORGAN_TEMPLATE, w);
        rc = txt_cache_get(r->tc, p, r->organ_raw + (size_t)c * r->tdim);
        if (rc != 0) goto fail;
        snprintf(r->normal_txt[c], sizeof r->normal_txt[c], GLP_NORMAL_TEMPLATE, w);
    }

    rc = td_manifest_load(o->data, &r->man, why, sizeof why);
    if (rc != 0) {
        log_error("%s: %s", o->data, why);
        goto fail;
    }
    r->bad = xmalloc((size_t)r->man->n);
    td_opts_default(&r->topt);
    r->topt.classes = m->class_ids;
    r->topt.nclasses = K;
    for (int a = 0; a < 3; a++)
        r->topt.spacing[a] = o->spacing > 0 ? o->spacing : m->spacing[a] > 0 ? m->spacing[a] : 3.0;
    r->topt.load_report = (o->losses & TRN_L_CLIP) != 0;
    rc = td_cache_open(r->man, &r->topt, o->cache_bytes, &r->cache);
    if (rc != 0) goto fail;
    if ((o->losses & TRN_L_AT) && o->dict > 0) {
        rc = build_dict(r);
        if (rc != 0) goto fail;
    }
    r->p = effp;
    r->s = (size_t)effp * effp * effp;
    if (o->device == TRN_CUDA) {
        /* The GPU: the host model stays the owner of the parameters and
         * the checkpoint format; the device copy trains. */
        const char *emu = getenv("CTGLIP_CUDA_EMULATE"); /* test hook */
        int dev = emu && !strcmp(emu, "1") ? CU_EMULATE : o->gpu;
        rc = cu_ctx_new(dev, &r->gc, why, sizeof why);
        if (rc != 0) {
            log_error("GPU %d: %s", o->gpu, why);
            goto fail;
        }
        rc = cu_model_new(r->gc, m, o->bf16 ? CU_BF16 : CU_F32, 1, &r->g, why, sizeof why);
        if (rc != 0) {
            log_error("the model on GPU %d: %s", o->gpu, why);
            goto fail;
        }
        rc = cu_acts_new(r->g, r->nb, effp, effp, effp, &r->ga);
        if (rc != 0) {
            dev_rc(r, rc, "activations");
            log_error("activations for batch %d patch %d on the GPU: %s", r->nb, effp,
                      ctg_strerror(rc));
            goto fail;
        }
        if (r->comm && !cu_ctx_emulated(r->gc) &&
            cu_comm_use_nccl(r->comm, r->gc, why, sizeof why) != 0)
            log_warn("rank %d: %s; gradients go through host memory", rank, why);
        if (lead && !o->quiet) {
            char name[200] = "emulated on the host (CTGLIP_CUDA_EMULATE)";
            if (dev >= 0 && cu_device_name(dev, name, (int)sizeof name) < 0) name[0] = 0;
            fprintf(stderr, "ctglip-train: GPU %d %s, %s, %zu MiB of activations%s%s\n", o->gpu,
                    name, o->bf16 ? "bf16" : "fp32", cu_acts_bytes(r->ga) >> 20,
                    r->comm ? ", gradients over " : "", r->comm ? cu_comm_backend(r->comm) : "");
        }
    } else {
        rc = mdl_acts_new(m, r->nb, effp, effp, effp, &r->a);
        if (rc != 0) {
            log_error("activations for batch %d patch %d: %s", r->nb, effp, ctg_strerror(rc));
            goto fail;
        }
    }
    if (lead && !o->quiet && r->comm)
        fprintf(stderr, "ctglip-train: %d ranks, %d sample(s) each per step\n", world, r->nb);
    size_t S = r->s;
    img = xmalloc(sizeof(float) * S * (size_t)o->batch);
    lab = xmalloc(S * (size_t)o->batch);
    pool = xmalloc(S * (size_t)o->batch);
    memset(pool, 1, S * (size_t)o->batch);

    snprintf(path, sizeof path, "%s/train.csv", o->out);
    r->csv = lead ? csv_open(path, start) : NULL;
    if (lead && !r->csv) {
        rc = ctg_errno(errno);
        log_syserr(rc, "fopen", "%s", path);
        goto fail;
    }
    if (!o->quiet && lead)
        fprintf(stderr,
                "ctglip-train: %d cases, %d classes, %zu parameters, steps %ld..%ld "
                "(stage 1 to %ld), batch %d, patch %d^3, dictionary %d\n",
                r->man->n, K, m->n_params, start + 1, o->steps, o->stage1_steps, o->batch, effp,
                r->dict ? r->dict->n : 0);
    double t0 = ctg_mono();
    for (long t = start + 1; t <= o->steps; t++) {
        double ts = ctg_mono();
        parts pt;
        rc = step_once(r, t, img, lab, pool, &pt);
        if (rc != 0) {
            log_error("step %ld: %s", t, ctg_strerror(rc));
            goto fail;
        }
        /* Every rank stops at the same step: the deadline and a stop
         * request count when any rank sees them. */
        int stop_now = t < o->steps && ((o->deadline > 0 && ctg_now() >= o->deadline) ||
                                        (o->stop && *o->stop));
        if (r->comm) {
            /* The loss of the whole batch: the mean of the ranks' parts. */
            float v[8] = {pt.total, pt.ce, pt.dice, pt.ot, pt.at, pt.clip, (float)pt.rows,
                          (float)stop_now};
            if ((rc = cu_comm_allreduce(r->comm, v, 8, CU_COMM_SUM)) != 0) {
                log_error("step %ld: %s", t, cu_comm_error(r->comm));
                goto fail;
            }
            pt.total = v[0] / world, pt.ce = v[1] / world, pt.dice = v[2] / world;
            pt.ot = v[3] / world, pt.at = v[4] / world, pt.clip = v[5] / world;
            pt.rows = (int)lrintf(v[6]);
            stop_now = v[7] > 0.5f;
        }
        if (!isfinite(pt.total)) {
            log_error("step %ld: the loss is not finite", t);
            rc = CTG_ESTATE;
            goto fail;
        }
        op_adamw_cfg ac = op_adamw_defaults();
        ac.lr = o->lr, ac.min_lr = o->min_lr, ac.warmup_steps = o->warmup, ac.total_steps = o->steps;
        double lr = op_lr_at(&ac, t), dt = ctg_mono() - ts;
        if (!lead) {
            if (t == o->stop_at || stop_now) {
                rc = t == o->stop_at ? 0 : TRN_STOPPED;
                goto fail;
            }
            continue;
        }
        fprintf(r->csv, "%ld,%d,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%d,%.3f\n", t,
                t > o->stage1_steps ? 2 : 1, lr, pt.total, pt.ce, pt.dice, pt.ot, pt.at, pt.clip,
                pt.rows, dt);
        fflush(r->csv);
        if (!o->quiet && (t == start + 1 || t % (o->log_every > 0 ? o->log_every : 1) == 0 ||
                          t == o->steps)) {
            double el = ctg_mono() - t0, per = el / (double)(t - start);
            fprintf(stderr,
                    "step %ld/%ld s%d lr %.2e loss %.4f ce %.4f dice %.4f ot %.4f at %.4f "
                    "clip %.4f | %.2f Mvox/s, %.2f s/step, ETA %.0f s\n",
                    t, o->steps, t > o->stage1_steps ? 2 : 1, lr, pt.total, pt.ce, pt.dice, pt.ot,
                    pt.at, pt.clip, (double)S * o->batch / dt / 1e6, dt,
                    per * (double)(o->steps - t));
        }
        if ((o->ckpt_every > 0 && t % o->ckpt_every == 0 && t < o->steps) || t == o->stop_at) {
            snprintf(path, sizeof path, "%s/ckpt.bin", o->out);
            if ((rc = net_sync_host(r, 1)) != 0 || (rc = ck_save(path, m, o, t)) != 0) goto fail;
        }
        if (t == o->stop_at) {
            if (!o->quiet) fprintf(stderr, "ctglip-train: stopped after step %ld (--stop-at)\n", t);
            goto fail;
        }
        if (stop_now) {
            snprintf(path, sizeof path, "%s/ckpt.bin", o->out);
            if ((rc = net_sync_host(r, 1)) != 0 || (rc = ck_save(path, m, o, t)) != 0) goto fail;
            log_info("ctglip-train: %s after step %ld of %ld; resume from %s",
                     o->stop && *o->stop ? "asked to stop" : "deadline reached", t, o->steps, path);
            rc = TRN_STOPPED;
            goto fail;
        }
    }
    if (!lead) {
        rc = 0;
        goto fail;
    }
    snprintf(path, sizeof path, "%s/ckpt.bin", o->out);
    if ((rc = net_sync_host(r, 1)) != 0 || (rc = ck_save(path, m, o, o->steps)) != 0) goto fail;
    snprintf(path, sizeof path, "%s/model.ctglip", o->out);
    if ((rc = stamp_model(m, o, r->topt.spacing)) < 0) goto fail;
    rc = mdl_save(m, path, why, sizeof why);
    if (rc != 0) {
        log_error("%s: %s", path, why);
        goto fail;
    }
    if (!o->quiet) {
        td_cache_stats st;
        td_cache_stats_get(r->cache, &st);
        fprintf(stderr, "ctglip-train: wrote %s (%s); %ld cases skipped as bad\n", path,
                mdl_identity(m), st.failed);
    }
fail:
    if (r->csv) fclose(r->csv);
    free(img), free(lab), free(pool);
    mdl_acts_free(r->a);
    cu_acts_free(r->ga);
    cu_model_free(r->g);
    cu_ctx_free(r->gc);
    cu_comm_close(r->comm);
    glp_dict_free(r->dict);
    td_cache_close(r->cache);
    td_manifest_free(r->man);
    mdl_free(r->m);
    txt_cache_close(r->tc);
    txt_close(r->enc);
    free(r->organ_raw), free(r->normal_txt), free(r->bad);
    for (int i = 0; i < r->nakeys; i++) free(r->akeys[i]);
    free(r->akeys);
    return rc;
}

/* ---- command lines ------------------------------------------------------------------ */

static void usage(FILE *f, const char *cmd)
{
    fprintf(f,
            "usage: ctglip-train %s --data MANIFEST --out DIR%s [options]\n"
            "  --steps N          total steps (1000)\n"
            "  --stage1-steps N   segmentation-only steps first (200; finetune 0)\n"
            "  --batch B --patch P --spacing MM   (2, 64, the initial model's or 3)\n"
            "  --width W --depth D --embed E      (16, 3, 256)\n"
            "  --no-text-proj     no trainable text projection (embed = text dim)\n"
            "  --pool mean|meanmax  organ descriptor of a new model: the mean of the\n"
            "                     features over the organ (mean), or mean and maximum\n"
            "  --lr LR --min-lr LR --wd WD --clip-grad G --warmup N\n"
            "  --seed S --ckpt-every N --resume CKPT\n"
            "  --organs LIST|default   comma-separated TotalSegmentator names\n"
            "  --loss L           seg, ot, at, otat or clip, comma-separated (otat)\n"
            "  --dict N           abnormality dictionary size (512; 0: none)\n"
            "  --at-balance N     repeat each abnormal organ up to N times in AT so that\n"
            "                     abnormal and normal organs weigh alike (1: off)\n"
            "  --w-ot --w-at --w-seg --w-clip W --tau T\n"
            "  --vocab FILE --threads T --cache-mb MB --log-every N --quiet\n"
            "  --stop-at N        stop after step N with a checkpoint (to test resume)\n"
            "  --device cpu|cuda  where to train (cpu)\n"
            "  --gpus LIST        cuda: the GPUs, e.g. 0 or 0,1 (0); several GPUs train\n"
            "                     data-parallel, one process each (NCCL when it loads)\n"
            "  --precision bf16|fp32   cuda: activations' type (bf16)\n"
            "  --ranks N          cpu: N processes training data-parallel (1)\n"
            "                     (the batch must split evenly over the GPUs or ranks)\n",
            cmd, strcmp(cmd, "finetune") == 0 ? " --model M" : "");
}

static int parse_losses(const char *s, int *out)
{
    int l = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *sv = NULL, *tok = strtok_r(buf, ",+ ", &sv); tok; tok = strtok_r(NULL, ",+ ", &sv)) {
        if (strcmp(tok, "seg") == 0) continue;
        else if (strcmp(tok, "ot") == 0) l |= TRN_L_OT;
        else if (strcmp(tok, "at") == 0) l |= TRN_L_AT;
        else if (strcmp(tok, "otat") == 0) l |= TRN_L_OT | TRN_L_AT;
        else if (strcmp(tok, "clip") == 0) l |= TRN_L_CLIP;
        else return -1;
    }
    *out = l;
    return 0;
}

static int parse_organs(const char *s, trn_opts *o)
{
    if (strcmp(s, "default") == 0) {
        o->norgans = trn_default_organs(o->organs, TRN_MAX_ORGANS);
        return 0;
    }
    char *buf = strdup(s);
    if (!buf) return -1;
    o->norgans = 0;
    int bad = 0;
    for (char *sv = NULL, *tok = strtok_r(buf, ",", &sv); tok; tok = strtok_r(NULL, ",", &sv)) {
        int id = ctg_organ_id(tok);
        if (id <= 0 || o->norgans >= TRN_MAX_ORGANS) {
            fprintf(stderr, "ctglip-train: unknown organ '%s'\n", tok);
            bad = 1;
            break;
        }
        o->organs[o->norgans++] = id;
    }
    free(buf);
    return bad || o->norgans == 0 ? -1 : 0;
}

/* "0,1" -> ids; the count, or -1. */
static int parse_gpus(const char *s, int *ids)
{
    char buf[256];
    int n = 0;
    if (strlen(s) >= sizeof buf) return -1;
    snprintf(buf, sizeof buf, "%s", s);
    for (char *sv = NULL, *tok = strtok_r(buf, ",", &sv); tok; tok = strtok_r(NULL, ",", &sv)) {
        char *end;
        long v = strtol(tok, &end, 10);
        if (end == tok || *end || v < 0 || v > 63 || n == TRN_MAX_GPUS) return -1;
        for (int i = 0; i < n; i++)
            if (ids[i] == v) return -1;
        ids[n++] = (int)v;
    }
    return n > 0 ? n : -1;
}

static volatile sig_atomic_t g_nkids;
static pid_t g_kids[TRN_MAX_GPUS];

/* The launcher passes SIGTERM and SIGINT on to its ranks. */
static void on_launcher_signal(int sig)
{
    for (int i = 0; i < g_nkids; i++)
        if (g_kids[i] > 0) kill(g_kids[i], sig);
}

/* Data parallel: runs this program again once per rank, with the same
 * arguments plus --rank R --world W --comm-dir DIR (a fresh folder for
 * the ranks' sockets), and waits.  When a rank fails the others are
 * stopped (they would wait for it).  Returns the exit status. */
static int launch_ranks(int argc, char **argv, int world)
{
    char exe[4096], dir[256];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0) {
        fprintf(stderr, "ctglip-train: cannot find my own program to start the ranks\n");
        return 1;
    }
    exe[len] = 0;
    const char *base = strrchr(exe, '/');
    if (strncmp(base ? base + 1 : exe, "ctglip-train", 12) != 0) {
        fprintf(stderr, "ctglip-train: data-parallel runs are started by ctglip-train itself\n");
        return 1;
    }
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/ctglip-train.XXXXXX",
             tmp && tmp[0] && strlen(tmp) < 60 ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        fprintf(stderr, "ctglip-train: mkdtemp %s: %s\n", dir, strerror(errno));
        return 1;
    }
    char **av = xmalloc(sizeof(char *) * (size_t)(argc + 10));
    char rs[16], ws[16];
    snprintf(ws, sizeof ws, "%d", world);
    av[0] = "ctglip-train";
    for (int i = 0; i < argc; i++) av[i + 1] = argv[i];
    int k = argc + 1;
    av[k++] = "--rank";
    av[k++] = rs;
    av[k++] = "--world";
    av[k++] = ws;
    av[k++] = "--comm-dir";
    av[k++] = dir;
    av[k] = NULL;
    struct sigaction sa, old_term, old_int;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_launcher_signal;
    sigaction(SIGTERM, &sa, &old_term);
    sigaction(SIGINT, &sa, &old_int);
    fflush(NULL);
    int status = 0;
    for (int r = 0; r < world; r++) {
        snprintf(rs, sizeof rs, "%d", r);
        pid_t pid = fork();
        if (pid == 0) {
            execv(exe, av);
            fprintf(stderr, "ctglip-train: exec %s: %s\n", exe, strerror(errno));
            _exit(127);
        }
        if (pid < 0) {
            fprintf(stderr, "ctglip-train: fork: %s\n", strerror(errno));
            status = 1;
            break;
        }
        g_kids[r] = pid;
        g_nkids = r + 1;
    }
    if (status) on_launcher_signal(SIGTERM);
    for (int left = g_nkids; left > 0;) {
        int st;
        pid_t pid = waitpid(-1, &st, 0);
        if (pid < 0) {
            if (errno == EINTR) continue;
            break;
        }
        int r = -1;
        for (int i = 0; i < g_nkids; i++)
            if (g_kids[i] == pid) r = i;
        if (r < 0) continue;
        g_kids[r] = 0;
        left--;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            if (!status)
                fprintf(stderr, "ctglip-train: rank %d %s %d; stopping the others\n", r,
                        WIFEXITED(st) ? "exited with status" : "was killed by signal",
                        WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
            status = 1;
            on_launcher_signal(SIGTERM);
        }
    }
    g_nkids = 0;
    sigaction(SIGTERM, &old_term, NULL);
    sigaction(SIGINT, &old_int, NULL);
    for (int r = 0; r < world; r++) { /* sockets of ranks that were killed */
        char p[300];
        snprintf(p, sizeof p, "%s/rank%d.sock", dir, r);
        unlink(p);
    }
    rmdir(dir);
    free(av);
    return status;
}

static int train_main(int argc, char **argv, int finetune)
{
    trn_opts o;
    trn_opts_default(&o);
    if (finetune) o.stage1_steps = 0;
    enum {
        O_DATA = 256, O_OUT, O_STEPS, O_S1, O_BATCH, O_PATCH, O_SPACING, O_WIDTH, O_DEPTH,
        O_EMBED, O_NOPROJ, O_LR, O_MINLR, O_WD, O_CLIPG, O_WARMUP, O_SEED, O_CKPT, O_RESUME,
        O_ORGANS, O_LOSS, O_DICT, O_WOT, O_WAT, O_WSEG, O_WCLIP, O_TAU, O_VOCAB, O_THREADS,
        O_CACHE, O_LOGEV, O_QUIET, O_MODEL, O_STOP, O_HELP, O_DEVICE, O_GPUS, O_PREC, O_RANKS,
        O_RANK, O_WORLD, O_COMMDIR, O_POOL, O_ATBAL
    };
    static const struct option lo[] = {
        {"data", 1, 0, O_DATA}, {"out", 1, 0, O_OUT}, {"steps", 1, 0, O_STEPS},
        {"stage1-steps", 1, 0, O_S1}, {"batch", 1, 0, O_BATCH}, {"patch", 1, 0, O_PATCH},
        {"spacing", 1, 0, O_SPACING}, {"width", 1, 0, O_WIDTH}, {"depth", 1, 0, O_DEPTH},
        {"embed", 1, 0, O_EMBED}, {"no-text-proj", 0, 0, O_NOPROJ}, {"lr", 1, 0, O_LR},
        {"min-lr", 1, 0, O_MINLR}, {"wd", 1, 0, O_WD}, {"clip-grad", 1, 0, O_CLIPG},
        {"warmup", 1, 0, O_WARMUP}, {"seed", 1, 0, O_SEED}, {"ckpt-every", 1, 0, O_CKPT},
        {"resume", 1, 0, O_RESUME}, {"organs", 1, 0, O_ORGANS}, {"loss", 1, 0, O_LOSS},
        {"dict", 1, 0, O_DICT}, {"w-ot", 1, 0, O_WOT}, {"w-at", 1, 0, O_WAT},
        {"w-seg", 1, 0, O_WSEG}, {"w-clip", 1, 0, O_WCLIP}, {"tau", 1, 0, O_TAU},
        {"vocab", 1, 0, O_VOCAB}, {"threads", 1, 0, O_THREADS}, {"cache-mb", 1, 0, O_CACHE},
        {"log-every", 1, 0, O_LOGEV}, {"quiet", 0, 0, O_QUIET}, {"model", 1, 0, O_MODEL},
        {"stop-at", 1, 0, O_STOP}, {"help", 0, 0, O_HELP}, {"device", 1, 0, O_DEVICE},
        {"gpus", 1, 0, O_GPUS}, {"precision", 1, 0, O_PREC}, {"ranks", 1, 0, O_RANKS},
        {"pool", 1, 0, O_POOL}, {"at-balance", 1, 0, O_ATBAL},
        /* Set by the launcher for its children (launch_ranks). */
        {"rank", 1, 0, O_RANK}, {"world", 1, 0, O_WORLD}, {"comm-dir", 1, 0, O_COMMDIR},
        {0, 0, 0, 0}};
    int gpus[TRN_MAX_GPUS], ngpus = 0, ranks = 1, child = 0;
    int loss_given = 0;
    optind = 1;
    opterr = 1;
    for (int c; (c = getopt_long(argc, argv, "", lo, NULL)) != -1;) {
        switch (c) {
        case O_DATA: o.data = optarg; break;
        case O_OUT: o.out = optarg; break;
        case O_STEPS: o.steps = atol(optarg); break;
        case O_S1: o.stage1_steps = atol(optarg); break;
        case O_BATCH: o.batch = atoi(optarg); break;
        case O_PATCH: o.patch = atoi(optarg); break;
        case O_SPACING: o.spacing = atof(optarg); break;
        case O_WIDTH: o.width = atoi(optarg); break;
        case O_DEPTH: o.depth = atoi(optarg); break;
        case O_EMBED: o.embed = atoi(optarg); break;
        case O_NOPROJ: o.text_proj = 0; break;
        case O_ATBAL:
            o.at_balance = atoi(optarg);
            if (o.at_balance < 1 || o.at_balance > 64) {
                fprintf(stderr, "ctglip-train: --at-balance %s: want 1..64\n", optarg);
                return 2;
            }
            break;
        case O_POOL:
            if (strcmp(optarg, "mean") == 0) o.pool = MDL_POOL_MEAN;
            else if (strcmp(optarg, "meanmax") == 0) o.pool = MDL_POOL_MEANMAX;
            else {
                fprintf(stderr, "ctglip-train: --pool %s: want mean or meanmax\n", optarg);
                return 2;
            }
            break;
        case O_LR: o.lr = (float)atof(optarg); break;
        case O_MINLR: o.min_lr = (float)atof(optarg); break;
        case O_WD: o.wd = (float)atof(optarg); break;
        case O_CLIPG: o.clip_grad = (float)atof(optarg); break;
        case O_WARMUP: o.warmup = atol(optarg); break;
        case O_SEED: o.seed = strtoull(optarg, NULL, 10); break;
        case O_CKPT: o.ckpt_every = atol(optarg); break;
        case O_RESUME: o.resume = optarg; break;
        case O_ORGANS:
            if (parse_organs(optarg, &o) != 0) return 2;
            break;
        case O_LOSS:
            if (parse_losses(optarg, &o.losses) != 0) {
                fprintf(stderr, "ctglip-train: --loss takes seg, ot, at, otat, clip\n");
                return 2;
            }
            loss_given = 1;
            break;
        case O_DICT: o.dict = atoi(optarg); break;
        case O_WOT: o.w_ot = (float)atof(optarg); break;
        case O_WAT: o.w_at = (float)atof(optarg); break;
        case O_WSEG: o.w_seg = (float)atof(optarg); break;
        case O_WCLIP: o.w_clip = (float)atof(optarg); break;
        case O_TAU: o.tau = (float)atof(optarg); break;
        case O_VOCAB: o.vocab = optarg; break;
        case O_THREADS: o.threads = atoi(optarg); break;
        case O_CACHE: o.cache_bytes = (size_t)atol(optarg) << 20; break;
        case O_LOGEV: o.log_every = atoi(optarg); break;
        case O_QUIET: o.quiet = 1; break;
        case O_MODEL: o.init = optarg; break;
        case O_STOP: o.stop_at = atol(optarg); break;
        case O_DEVICE:
            if (!strcmp(optarg, "cpu")) o.device = TRN_CPU;
            else if (!strcmp(optarg, "cuda")) o.device = TRN_CUDA;
            else {
                fprintf(stderr, "ctglip-train: --device takes cpu or cuda\n");
                return 2;
            }
            break;
        case O_GPUS:
            if ((ngpus = parse_gpus(optarg, gpus)) < 0) {
                fprintf(stderr, "ctglip-train: --gpus takes device numbers such as 0,1\n");
                return 2;
            }
            break;
        case O_PREC:
            if (strcmp(optarg, "bf16") && strcmp(optarg, "fp32")) {
                fprintf(stderr, "ctglip-train: --precision takes bf16 or fp32\n");
                return 2;
            }
            o.bf16 = !strcmp(optarg, "bf16");
            break;
        case O_RANKS: ranks = atoi(optarg); break;
        case O_RANK: o.rank = atoi(optarg), child = 1; break;
        case O_WORLD: o.world = atoi(optarg); break;
        case O_COMMDIR: o.comm_dir = optarg; break;
        case O_HELP: usage(stdout, argv[0]); return 0;
        default: usage(stderr, argv[0]); return 2;
        }
    }
    (void)loss_given;
    if (optind != argc || !o.data || !o.out || (finetune && !o.init && !o.resume)) {
        usage(stderr, argv[0]);
        return 2;
    }
    if (o.stage1_steps > o.steps) o.stage1_steps = o.steps;
    if (o.device == TRN_CPU && ngpus > 0) {
        fprintf(stderr, "ctglip-train: --gpus needs --device cuda\n");
        return 2;
    }
    if (ranks < 1 || ranks > TRN_MAX_GPUS || (o.device == TRN_CUDA && ranks > 1)) {
        fprintf(stderr, "ctglip-train: --ranks takes 1..%d, with --device cpu (on GPUs: --gpus)\n",
                TRN_MAX_GPUS);
        return 2;
    }
    int world = o.device == TRN_CUDA ? (ngpus > 0 ? ngpus : 1) : ranks;
    if (o.batch % world != 0) {
        fprintf(stderr, "ctglip-train: the batch (%d) must split evenly over %d %s\n", o.batch,
                world, o.device == TRN_CUDA ? "GPUs" : "ranks");
        return 2;
    }
    if (child) {
        /* A rank started by launch_ranks: its GPU is its place in the list. */
        if (o.world != world || o.rank < 0 || o.rank >= world || !o.comm_dir) {
            fprintf(stderr, "ctglip-train: --rank/--world/--comm-dir do not match the run\n");
            return 2;
        }
        o.gpu = ngpus > 0 ? gpus[o.rank] : 0;
        if (o.rank > 0) o.quiet = 1;
        int rc = trn_run(&o);
        return rc == 0 || rc == TRN_STOPPED ? 0 : 1;
    }
    if (world > 1) return launch_ranks(argc, argv, world);
    o.gpu = ngpus > 0 ? gpus[0] : 0;
    return trn_run(&o) == 0 ? 0 : 1;
}

int trn_pretrain_main(int argc, char **argv) { return train_main(argc, argv, 0); }
int trn_finetune_main(int argc, char **argv) { return train_main(argc, argv, 1); }
