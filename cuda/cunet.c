/*
 * cunet.c - the CT-GLIP network of core/model.c on a device (cunet.h),
 * plain C over the ops of cuops.h.  It mirrors model.c function for
 * function: the same layer table (rebuilt here from the model's named
 * tensors, since struct mdl__net is private to model.c), the same arena of
 * activations (one cu_malloc, carved like acts_layout), the same forward,
 * segmentation loss, backward, optimizer step, text projection and
 * sliding-window inference.
 *
 * Differences from model.c, all of layout or fusion, not of arithmetic:
 *   - activations are channels-last [n][s][c] in the model's cu_dtype;
 *     statistics, parameters, gradients, pooled rows and probabilities fp32;
 *   - a block's norm + LeakyReLU and its final norm + skip norm + add +
 *     LeakyReLU are the fused ops (cu_inorm_forward with act,
 *     cu_inorm_add_lrelu_forward), so the CPU's tmp buffer is not needed;
 *   - convolutions use weights prepared in dt and cuDNN's filter layout,
 *     one copy per conv held by the cu_model and re-prepared after every
 *     change of the fp32 master weights (upload, step).  Preparing needs a
 *     plan of the layer's kind; the model keeps one small plan (batch 1,
 *     2^3 input) per conv for that, since the prepared layout depends on
 *     the channels and kernel only;
 *   - sliding-window averages are divided by the window count (cu_div_rows)
 *     where the CPU multiplies by its reciprocal (a last-bit difference);
 *   - activations that cu_infer makes for itself hold no backward buffers
 *     (gradients, scratch, probabilities), about half the memory;
 *   - no CUDA graph yet: cuops.h has no capture API, so inference replays
 *     its kernels one launch at a time.
 *
 * Errors: every function returns 0 or a CTG_E* code; the text of the last
 * one is cu_model_error (the failing op and cu_ctx_error, or the reason of
 * a check made here).
 */
#include "cuda/cunet.h"

#include "core/core.h"
#include "core/ops.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the layer table ------------------------------------------------------------------ */

#define NCONV_MAX (3 * (MDL_MAX_DEPTH + 1) + 4 * MDL_MAX_DEPTH + 1)
#define ALIGN_ELEMS 128 /* prepared weights start on 256-byte (bf16) boundaries */

typedef struct cconv {
    size_t w;      /* offset of the fp32 weights in params (floats) */
    size_t q;      /* offset of the prepared weights in wq (elements of dt) */
    size_t cnt;    /* prepared element count (cu_conv_wcount) */
    op_conv_geom geo; /* the layer's kind and channels (batch 1, 2^3), for preparing */
} cconv;

/* A residual block: conv indices and parameter offsets (floats). */
typedef struct cblk {
    int cin, cout, stride, lvl;
    int c1, c2, cs;
    size_t g1, b1, g2, b2, gs, bs;
} cblk;

struct cu_model {
    cu_ctx *c;
    mdl_model *m;
    cu_dtype dt;
    size_t esz;
    int train;
    int depth, ch[MDL_MAX_DEPTH + 1];
    cblk enc[MDL_MAX_DEPTH + 1], dec[MDL_MAX_DEPTH];
    int up[MDL_MAX_DEPTH];
    size_t up_b[MDL_MAX_DEPTH];
    int head;
    size_t head_b;
    size_t fc1_w, fc1_b, fc2_w, fc2_b;
    int has_txt;
    size_t txt_w, txt_b;
    int nconv;
    cconv conv[NCONV_MAX];
    float *params, *grads, *am, *av; /* device, n_params each (grads.. when training) */
    void *wq;                        /* prepared weights of every conv, one allocation */
    float *scal;                     /* device scalars: [0] sum of squares */
    float *tbuf;                     /* text scratch, grown on demand */
    size_t tcap;                     /* floats of tbuf */
    char err[256];
};

#define P(g, off) ((g)->params + (off))
#define G(g, off) ((g)->grads + (off))
#define WQ(g, i) ((void *)((char *)(g)->wq + (g)->conv[i].q * (g)->esz))
#define WP(g, i) ((g)->params + (g)->conv[i].w)
#define WG(g, i) ((g)->grads + (g)->conv[i].w)

static int fail(cu_model *g, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(cu_model *g, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->err, sizeof g->err, fmt, ap);
    va_end(ap);
    return code;
}

/* An op failed: its name (the call up to the parenthesis) and the
 * context's text. */
static int op_fail(cu_model *g, int code, const char *call)
{
    int len = (int)strcspn(call, "(");
    const char *why = g->c ? cu_ctx_error(g->c) : "";
    snprintf(g->err, sizeof g->err, "%.*s: %s", len, call,
             why && *why ? why : ctg_strerror(code));
    return code;
}

#define TRY(call)                                                              \
    do {                                                                       \
        int e_ = (call);                                                       \
        if (e_) return op_fail(g, e_, #call);                                  \
    } while (0)

const char *cu_model_error(const cu_model *g) { return g ? g->err : ""; }

/* Offset of the tensor called name, which must hold count floats. */
static int toff(cu_model *g, const char *name, size_t count, size_t *off)
{
    const mdl_tensor *t = mdl_find_tensor(g->m, name);
    if (!t || t->count != count)
        return fail(g, CTG_EINVAL, "model tensor %s %s", name, t ? "has the wrong size" : "missing");
    *off = t->off;
    return 0;
}

/* Registers a conv: its weights and the geometry to prepare them with. */
static int add_conv(cu_model *g, const char *name, int cin, int cout, int k, int stride,
                    int transposed, int *idx)
{
    if (g->nconv == NCONV_MAX) return fail(g, CTG_EINVAL, "too many convolutions");
    cconv *cv = &g->conv[g->nconv];
    int err = toff(g, name, (size_t)cout * cin * k * k * k, &cv->w);
    if (err) return err;
    op_conv_geom geo = transposed ? op_deconv_geom_make(1, cin, cout, 2, 2, 2)
                                  : op_conv_geom_make(1, cin, cout, 2, 2, 2, k, stride);
    cv->geo = geo;
    cv->cnt = op_conv_weight_count(&geo);
    *idx = g->nconv++;
    return 0;
}

static int add_block(cu_model *g, cblk *b, const char *pfx, int cin, int cout, int stride, int lvl)
{
    char nm[48];
    int err;
    b->cin = cin, b->cout = cout, b->stride = stride, b->lvl = lvl;
#define T_(suffix, cnt, dst)                                                   \
    do {                                                                       \
        snprintf(nm, sizeof nm, "%s.%s", pfx, suffix);                         \
        if ((err = toff(g, nm, (cnt), (dst)))) return err;                     \
    } while (0)
#define C_(suffix, ci, k, st, dst)                                             \
    do {                                                                       \
        snprintf(nm, sizeof nm, "%s.%s", pfx, suffix);                         \
        if ((err = add_conv(g, nm, (ci), cout, (k), (st), 0, (dst)))) return err; \
    } while (0)
    C_("conv1.w", cin, 3, stride, &b->c1);
    T_("norm1.g", cout, &b->g1);
    T_("norm1.b", cout, &b->b1);
    C_("conv2.w", cout, 3, 1, &b->c2);
    T_("norm2.g", cout, &b->g2);
    T_("norm2.b", cout, &b->b2);
    C_("convs.w", cin, 1, stride, &b->cs);
    T_("norms.g", cout, &b->gs);
    T_("norms.b", cout, &b->bs);
#undef T_
#undef C_
    return 0;
}

/* The layer table of model.c's build_net, found by name. */
static int build_table(cu_model *g)
{
    const mdl_config *c = &g->m->cfg;
    int D = c->depth, k1 = c->n_classes + 1, E = c->embed_dim, H = c->mlp_hidden, err;
    char nm[48];
    g->depth = D;
    for (int l = 0; l <= D; l++) g->ch[l] = mdl_level_width(c, l);
    for (int l = 0; l <= D; l++) {
        snprintf(nm, sizeof nm, "enc%d", l);
        if ((err = add_block(g, &g->enc[l], nm, l ? g->ch[l - 1] : c->in_ch, g->ch[l], l ? 2 : 1,
                             l)))
            return err;
    }
    for (int l = D - 1; l >= 0; l--) {
        int ci = g->ch[l + 1], co = g->ch[l];
        snprintf(nm, sizeof nm, "up%d.w", l);
        if ((err = add_conv(g, nm, ci, co, 2, 2, 1, &g->up[l]))) return err;
        snprintf(nm, sizeof nm, "up%d.b", l);
        if ((err = toff(g, nm, co, &g->up_b[l]))) return err;
        snprintf(nm, sizeof nm, "dec%d", l);
        if ((err = add_block(g, &g->dec[l], nm, 2 * co, co, 1, l))) return err;
    }
    int c0 = g->ch[0];
    if ((err = add_conv(g, "head.w", c0, k1, 1, 1, 0, &g->head))) return err;
    if ((err = toff(g, "head.b", k1, &g->head_b))) return err;
    if ((err = toff(g, "mlp.fc1.w", (size_t)H * mdl_pool_dim(c), &g->fc1_w))) return err;
    if ((err = toff(g, "mlp.fc1.b", H, &g->fc1_b))) return err;
    if ((err = toff(g, "mlp.fc2.w", (size_t)E * H, &g->fc2_w))) return err;
    if ((err = toff(g, "mlp.fc2.b", E, &g->fc2_b))) return err;
    g->has_txt = c->text_dim > 0;
    if (g->has_txt) {
        if ((err = toff(g, "text.proj.w", (size_t)E * c->text_dim, &g->txt_w))) return err;
        if ((err = toff(g, "text.proj.b", E, &g->txt_b))) return err;
    }
    size_t q = 0;
    for (int i = 0; i < g->nconv; i++) {
        g->conv[i].q = q;
        q += (g->conv[i].cnt + ALIGN_ELEMS - 1) / ALIGN_ELEMS * ALIGN_ELEMS;
    }
    return 0;
}

/* Every conv's weights from the fp32 masters into dt and cuDNN's layout. */
static int prepare_all(cu_model *g)
{
    for (int i = 0; i < g->nconv; i++)
        TRY(cu_conv_prepare_geom(g->c, &g->conv[i].geo, g->dt, WQ(g, i), WP(g, i)));
    return 0;
}

static size_t wq_elems(const cu_model *g)
{
    if (!g->nconv) return 0;
    const cconv *l = &g->conv[g->nconv - 1];
    return l->q + l->cnt;
}

/* ---- model ------------------------------------------------------------------------------ */

void cu_model_free(cu_model *g)
{
    if (!g) return;
    if (g->c) {
        cu_free(g->c, g->params);
        cu_free(g->c, g->grads);
        cu_free(g->c, g->am);
        cu_free(g->c, g->av);
        cu_free(g->c, g->wq);
        cu_free(g->c, g->scal);
        cu_free(g->c, g->tbuf);
    }
    free(g);
}

int cu_model_new(cu_ctx *c, mdl_model *m, cu_dtype dt, int train, cu_model **out, char *why,
                 size_t n)
{
    int err;
    *out = NULL;
    if (!c || !m || (dt != CU_F32 && dt != CU_BF16)) {
        if (why && n) snprintf(why, n, "no context, no model or an unknown activation type");
        return CTG_EINVAL;
    }
    cu_model *g = calloc(1, sizeof *g);
    if (!g) {
        if (why && n) snprintf(why, n, "out of host memory");
        return CTG_ENOMEM;
    }
    g->c = c;
    g->m = m;
    g->dt = dt;
    g->esz = cu_dtype_size(dt);
    g->train = !!train;
    if ((err = build_table(g))) goto fail;
    size_t pb = m->n_params * sizeof(float);
    if ((err = cu_malloc(c, (void **)&g->params, pb))) {
        fail(g, err, "device memory for %zu parameters: %s", m->n_params, cu_ctx_error(c));
        goto fail;
    }
    if (g->train) {
        if ((err = cu_malloc(c, (void **)&g->grads, pb)) ||
            (err = cu_malloc(c, (void **)&g->am, pb)) ||
            (err = cu_malloc(c, (void **)&g->av, pb))) {
            fail(g, err, "device memory for gradients and moments (3 x %zu bytes): %s", pb,
                 cu_ctx_error(c));
            goto fail;
        }
        if ((err = cu_zero(c, g->grads, pb)) || (err = cu_zero(c, g->am, pb)) ||
            (err = cu_zero(c, g->av, pb))) {
            op_fail(g, err, "cu_zero");
            goto fail;
        }
    }
    size_t qb = wq_elems(g) * g->esz;
    if ((err = cu_malloc(c, &g->wq, qb ? qb : 1)) ||
        (err = cu_malloc(c, (void **)&g->scal, 64 * sizeof(float)))) {
        fail(g, err, "device memory for prepared weights (%zu bytes): %s", qb, cu_ctx_error(c));
        goto fail;
    }
    if ((err = cu_model_upload(g))) goto fail;
    *out = g;
    return 0;
fail:
    if (why && n) snprintf(why, n, "%s", g->err);
    cu_model_free(g);
    return err;
}

cu_ctx *cu_model_ctx(const cu_model *g) { return g->c; }
cu_dtype cu_model_dtype(const cu_model *g) { return g->dt; }
float *cu_model_grads(cu_model *g) { return g->train ? g->grads : NULL; }

int cu_model_upload(cu_model *g)
{
    mdl_model *m = g->m;
    size_t pb = m->n_params * sizeof(float);
    TRY(cu_upload(g->c, g->params, m->params, pb));
    if (g->train && m->adam_m && m->adam_v) {
        TRY(cu_upload(g->c, g->am, m->adam_m, pb));
        TRY(cu_upload(g->c, g->av, m->adam_v, pb));
    }
    return prepare_all(g);
}

int cu_model_download(cu_model *g, int all)
{
    mdl_model *m = g->m;
    size_t pb = m->n_params * sizeof(float);
    if (all && !g->train) return fail(g, CTG_ESTATE, "no gradients: not a training model");
    TRY(cu_download(g->c, m->params, g->params, pb));
    m->identity[0] = 0;
    if (all) {
        if (mdl_train_alloc(m)) return fail(g, CTG_ENOMEM, "host memory for gradients");
        TRY(cu_download(g->c, m->grads, g->grads, pb));
        TRY(cu_download(g->c, m->adam_m, g->am, pb));
        TRY(cu_download(g->c, m->adam_v, g->av, pb));
    }
    return 0;
}

int cu_model_zero_grad(cu_model *g)
{
    if (!g->train) return 0;
    TRY(cu_zero(g->c, g->grads, g->m->n_params * sizeof(float)));
    return 0;
}

int cu_model_step(cu_model *g, long t, const op_adamw_cfg *cfg, double clip, double *gnorm)
{
    size_t np = g->m->n_params;
    if (!g->train) return fail(g, CTG_ESTATE, "optimizer step on a model without gradients");
    if (clip > 0 || gnorm) {
        float ss = 0;
        TRY(cu_sumsq(g->c, g->scal, g->grads, np));
        TRY(cu_download(g->c, &ss, g->scal, sizeof ss));
        double nrm = sqrt((double)ss);
        if (gnorm) *gnorm = nrm;
        if (clip > 0 && nrm > clip) TRY(cu_scale(g->c, g->grads, np, (float)(clip / nrm)));
    }
    TRY(cu_adamw_step(g->c, g->params, g->grads, g->am, g->av, np, t, cfg));
    return prepare_all(g);
}

/* ---- activations -------------------------------------------------------------------------- */

typedef struct cblk_acts {
    void *h1, *a1, *h2, *o, *hs, *dout; /* dt [n][s_out][cout] */
    float *m1, *r1, *m2, *r2, *ms, *rs; /* [n*cout] */
    cu_conv *c1, *c2, *cs;
    size_t s_in, s_out;
} cblk_acts;

struct cu__acts {
    cu_model *g;
    int bwd; /* 0: forward buffers only (inference) */
    void *block;
    size_t bytes;
    int dl[MDL_MAX_DEPTH + 1], hl[MDL_MAX_DEPTH + 1], wl[MDL_MAX_DEPTH + 1];
    size_t sl[MDL_MAX_DEPTH + 1];
    float *hu;  /* fp32 [n][in_ch][s]: the input as uploaded (or a window) */
    float *xn;  /* fp32 [n][in_ch][s] normalised; in_ch > 1 only */
    void *x0;   /* dt [n][s][in_ch] */
    cblk_acts enc[MDL_MAX_DEPTH + 1], dec[MDL_MAX_DEPTH];
    void *up[MDL_MAX_DEPTH], *cat[MDL_MAX_DEPTH];
    cu_conv *upc[MDL_MAX_DEPTH], *head;
    void *feat, *dfeat;     /* the level-0 output and its gradient (a block's o, dout) */
    void *scr[5];           /* dt scratch of backward */
    void *logits, *dlogits; /* dt [n][s][K+1] */
    float *prob, *dprob;    /* fp32 [n][s][K+1] */
    uint8_t *seg, *lab;     /* [n][s]: the pooling's label map, the loss's labels */
    int64_t *count;         /* [n][K+1] */
    float *pooled, *hpre, *hid, *z, *norm, *embed; /* pooled [rows][mdl_pool_dim] */
    float *dem, *dz, *dhid, *dhpre, *dpooled;
    float *pmean, *pmax, *dpmean, *dpmax; /* MEANMAX: the halves, [rows][C_0] */
    int64_t *parg;                        /* MEANMAX: the maxima's voxels */
    float *scal; /* [0] ce, [1] dice */
    void *host;  /* the host mirrors, one allocation */
};

typedef struct arena {
    char *base;
    size_t off;
} arena;

static void *carve(arena *A, size_t bytes)
{
    void *p = A->base ? A->base + A->off : NULL;
    A->off += (bytes + 255) & ~(size_t)255;
    return p;
}
#define CARVE_F(A, cnt) ((float *)carve((A), (size_t)(cnt) * sizeof(float)))
#define CARVE_A(A, cnt) carve((A), (size_t)(cnt) * esz)

static void blk_layout(arena *A, cblk_acts *ba, size_t so, size_t nc, size_t esz, int bwd)
{
    ba->h1 = CARVE_A(A, so);
    ba->a1 = CARVE_A(A, so);
    ba->h2 = CARVE_A(A, so);
    ba->o = CARVE_A(A, so);
    ba->dout = bwd ? CARVE_A(A, so) : NULL;
    ba->hs = CARVE_A(A, so);
    ba->m1 = CARVE_F(A, nc), ba->r1 = CARVE_F(A, nc);
    ba->m2 = CARVE_F(A, nc), ba->r2 = CARVE_F(A, nc);
    ba->ms = CARVE_F(A, nc), ba->rs = CARVE_F(A, nc);
}

/* model.c's acts_layout in device memory (sizes only when A has no base). */
static void acts_layout(cu_acts *a, arena *A)
{
    struct cu__acts *p = a->p;
    const cu_model *g = p->g;
    const mdl_config *c = &g->m->cfg;
    int n = a->n, D = g->depth, k1 = a->k1, E = c->embed_dim, H = c->mlp_hidden, bwd = p->bwd;
    size_t rows = (size_t)n * k1, C0 = (size_t)g->ch[0], esz = g->esz;

    p->hu = CARVE_F(A, (size_t)n * c->in_ch * a->s);
    p->xn = c->in_ch > 1 ? CARVE_F(A, (size_t)n * c->in_ch * a->s) : NULL;
    p->x0 = CARVE_A(A, (size_t)n * c->in_ch * a->s);
    for (int l = 0; l <= D; l++)
        blk_layout(A, &p->enc[l], (size_t)n * g->ch[l] * p->sl[l], (size_t)n * g->ch[l], esz,
                   bwd);
    for (int l = D - 1; l >= 0; l--) {
        size_t so = (size_t)n * g->ch[l] * p->sl[l];
        p->up[l] = CARVE_A(A, so);
        p->cat[l] = CARVE_A(A, 2 * so);
        blk_layout(A, &p->dec[l], so, (size_t)n * g->ch[l], esz, bwd);
    }
    size_t ls = rows * a->s;
    p->logits = CARVE_A(A, ls);
    p->seg = carve(A, (size_t)n * a->s);
    p->count = carve(A, rows * sizeof(int64_t));
    size_t PD = (size_t)mdl_pool_dim(c);
    p->pooled = CARVE_F(A, rows * PD);
    p->pmean = CARVE_F(A, rows * C0);
    p->pmax = CARVE_F(A, rows * C0);
    p->parg = carve(A, rows * C0 * sizeof(int64_t));
    p->hpre = CARVE_F(A, rows * H);
    p->hid = CARVE_F(A, rows * H);
    p->z = CARVE_F(A, rows * E);
    p->norm = CARVE_F(A, rows);
    p->embed = CARVE_F(A, rows * E);
    p->scal = CARVE_F(A, 64);
    if (bwd) {
        /* Scratch: scr[0] takes a decoder block's input gradient (its
         * concat, 2*C_l channels); the others one block output's worth. */
        size_t big = 0, cat = 0;
        for (int l = 0; l <= D; l++) {
            size_t t = (size_t)n * g->ch[l] * p->sl[l];
            if (t > big) big = t;
            if (l < D && 2 * t > cat) cat = 2 * t;
        }
        p->scr[0] = CARVE_A(A, cat > big ? cat : big);
        for (int i = 1; i < 5; i++) p->scr[i] = CARVE_A(A, big);
        p->dlogits = CARVE_A(A, ls);
        p->prob = CARVE_F(A, ls);
        p->dprob = CARVE_F(A, ls);
        p->lab = carve(A, (size_t)n * a->s);
        p->dem = CARVE_F(A, rows * E);
        p->dz = CARVE_F(A, rows * E);
        p->dhid = CARVE_F(A, rows * H);
        p->dhpre = CARVE_F(A, rows * H);
        p->dpooled = CARVE_F(A, rows * PD);
        p->dpmean = CARVE_F(A, rows * C0);
        p->dpmax = CARVE_F(A, rows * C0);
    }
    const cblk_acts *top = D > 0 ? &p->dec[0] : &p->enc[0];
    p->feat = top->o;
    p->dfeat = top->dout;
}

static int plan(cu_model *g, cu_conv **out, int n, int cin, int cout, int d, int h, int w, int k,
                int stride)
{
    op_conv_geom geo = op_conv_geom_make(n, cin, cout, d, h, w, k, stride);
    TRY(cu_conv_new(g->c, &geo, g->dt, out));
    return 0;
}

static int blk_plans(cu_model *g, struct cu__acts *p, const cblk *b, cblk_acts *ba, int n)
{
    int li = b->stride == 2 ? b->lvl - 1 : b->lvl, lo = b->lvl, err;
    if ((err = plan(g, &ba->c1, n, b->cin, b->cout, p->dl[li], p->hl[li], p->wl[li], 3,
                    b->stride)) ||
        (err = plan(g, &ba->c2, n, b->cout, b->cout, p->dl[lo], p->hl[lo], p->wl[lo], 3, 1)) ||
        (err = plan(g, &ba->cs, n, b->cin, b->cout, p->dl[li], p->hl[li], p->wl[li], 1,
                    b->stride)))
        return err;
    ba->s_in = p->sl[li];
    ba->s_out = p->sl[lo];
    return 0;
}

static int acts_new(cu_model *g, int n, int d, int h, int w, int bwd, cu_acts **out)
{
    int D = g->depth, unit = 1 << D, err = CTG_EINVAL;
    cu_acts *a = NULL;
    *out = NULL;
    if (n < 1 || d < unit || h < unit || w < unit || d % unit || h % unit || w % unit) {
        return fail(g, CTG_EINVAL, "acts shape %dx%dx%dx%d: sides must be multiples of %d", n, d,
                    h, w, unit);
    }
    err = CTG_ENOMEM;
    a = calloc(1, sizeof *a);
    if (!a || !(a->p = calloc(1, sizeof *a->p))) {
        free(a);
        return fail(g, CTG_ENOMEM, "out of host memory");
    }
    struct cu__acts *p = a->p;
    p->g = g;
    p->bwd = bwd;
    a->n = n, a->d = d, a->h = h, a->w = w;
    a->s = (size_t)d * h * w;
    a->k1 = g->m->cfg.n_classes + 1;
    for (int l = 0; l <= D; l++) {
        p->dl[l] = d >> l, p->hl[l] = h >> l, p->wl[l] = w >> l;
        p->sl[l] = (size_t)p->dl[l] * p->hl[l] * p->wl[l];
    }
    arena A = {NULL, 0};
    acts_layout(a, &A);
    p->bytes = A.off;
    if ((err = cu_malloc(g->c, &p->block, A.off))) {
        fail(g, err, "device memory for activations of %dx%dx%dx%d (%.1f MiB): %s", n, d, h, w,
             A.off / 1048576.0, cu_ctx_error(g->c));
        goto fail;
    }
    A.base = p->block;
    A.off = 0;
    acts_layout(a, &A);
    /* Untouched buffers (counts before a forward) read as zero. */
    if ((err = cu_zero(g->c, p->block, p->bytes))) {
        op_fail(g, err, "cu_zero");
        goto fail;
    }
    size_t rows = (size_t)n * a->k1, E = (size_t)g->m->cfg.embed_dim;
    if (!(p->host = calloc(1, rows * (2 * E * sizeof(float) + sizeof(int64_t))))) {
        err = fail(g, CTG_ENOMEM, "out of host memory");
        goto fail;
    }
    a->count = p->host;
    a->embed = (float *)(a->count + rows);
    a->dembed = a->embed + rows * E;

    for (int l = 0; l <= D; l++)
        if ((err = blk_plans(g, p, &g->enc[l], &p->enc[l], n))) goto fail;
    for (int l = 0; l < D; l++) {
        op_conv_geom geo = op_deconv_geom_make(n, g->ch[l + 1], g->ch[l], p->dl[l + 1],
                                               p->hl[l + 1], p->wl[l + 1]);
        if ((err = cu_conv_new(g->c, &geo, g->dt, &p->upc[l]))) {
            op_fail(g, err, "cu_conv_new");
            goto fail;
        }
        if ((err = blk_plans(g, p, &g->dec[l], &p->dec[l], n))) goto fail;
    }
    if ((err = plan(g, &p->head, n, g->ch[0], a->k1, d, h, w, 1, 1))) goto fail;
    *out = a;
    return 0;
fail:
    cu_acts_free(a);
    return err;
}

int cu_acts_new(cu_model *g, int n, int d, int h, int w, cu_acts **out)
{
    return acts_new(g, n, d, h, w, 1, out);
}

static void blk_acts_free(cblk_acts *ba)
{
    cu_conv_free(ba->c1);
    cu_conv_free(ba->c2);
    cu_conv_free(ba->cs);
}

void cu_acts_free(cu_acts *a)
{
    if (!a) return;
    struct cu__acts *p = a->p;
    if (p) {
        for (int l = 0; l <= MDL_MAX_DEPTH; l++) blk_acts_free(&p->enc[l]);
        for (int l = 0; l < MDL_MAX_DEPTH; l++) {
            blk_acts_free(&p->dec[l]);
            cu_conv_free(p->upc[l]);
        }
        cu_conv_free(p->head);
        if (p->block) cu_free(p->g->c, p->block);
        free(p->host);
        free(p);
    }
    free(a);
}

size_t cu_acts_bytes(const cu_acts *a) { return a ? a->p->bytes : 0; }

/* ---- forward ------------------------------------------------------------------------------ */

/* out = lrelu(inorm(conv2(lrelu(inorm(conv1(x))))) + inorm(convs(x))). */
static int blk_forward(cu_model *g, const cblk *b, cblk_acts *ba, const void *x, int n)
{
    cu_ctx *c = g->c;
    float slope = g->m->cfg.slope;
    size_t so = ba->s_out;
    TRY(cu_conv_forward(ba->c1, ba->h1, x, WQ(g, b->c1), NULL));
    TRY(cu_inorm_forward(c, g->dt, ba->a1, ba->m1, ba->r1, ba->h1, P(g, b->g1), P(g, b->b1), n,
                         b->cout, so, 1, slope));
    TRY(cu_conv_forward(ba->c2, ba->h2, ba->a1, WQ(g, b->c2), NULL));
    TRY(cu_conv_forward(ba->cs, ba->hs, x, WQ(g, b->cs), NULL));
    TRY(cu_inorm_add_lrelu_forward(c, g->dt, ba->o, ba->m2, ba->r2, ba->h2, P(g, b->g2),
                                   P(g, b->b2), ba->ms, ba->rs, ba->hs, P(g, b->gs), P(g, b->bs),
                                   n, b->cout, so, slope));
    return 0;
}

/* embed [rows][E] = l2norm(fc2(relu(fc1(pooled)))), keeping the
 * intermediates for the backward. */
static int mlp_forward(cu_model *g, struct cu__acts *p, int rows)
{
    cu_ctx *c = g->c;
    int PD = mdl_pool_dim(&g->m->cfg), H = g->m->cfg.mlp_hidden, E = g->m->cfg.embed_dim;
    TRY(cu_linear_forward(c, p->hpre, p->pooled, P(g, g->fc1_w), P(g, g->fc1_b), rows, PD, H));
    TRY(cu_relu_forward(c, p->hid, p->hpre, (size_t)rows * H));
    TRY(cu_linear_forward(c, p->z, p->hid, P(g, g->fc2_w), P(g, g->fc2_b), rows, H, E));
    TRY(cu_l2norm_forward(c, p->embed, p->norm, p->z, rows, E));
    return 0;
}

/* The organ descriptors p->pooled of n samples of feat [n][s][C_0] (dt, or
 * fp32 with f32) inside seg: model.c's pool_forward.  MEANMAX pools the
 * mean and the maximum into pmean, pmax and concatenates them per row. */
static int pool_forward(cu_model *g, struct cu__acts *p, const void *feat, int f32,
                        const uint8_t *seg, int n, int k1, size_t s)
{
    cu_ctx *c = g->c;
    int C0 = g->ch[0], mm = g->m->cfg.pool == MDL_POOL_MEANMAX;
    float *mean = mm ? p->pmean : p->pooled;
    if (f32)
        TRY(cu_mpool_forward_f32(c, mean, p->count, (const float *)feat, seg, n, k1, C0, s));
    else
        TRY(cu_mpool_forward(c, g->dt, mean, p->count, feat, seg, n, k1, C0, s));
    if (!mm) return 0;
    if (f32)
        TRY(cu_xpool_forward_f32(c, p->pmax, C0, p->parg, (const float *)feat, seg, n, k1, C0, s));
    else
        TRY(cu_xpool_forward(c, g->dt, p->pmax, C0, p->parg, feat, seg, n, k1, C0, s));
    TRY(cu_concat_forward(c, CU_F32, p->pooled, p->pmean, p->pmax, 1, C0, C0,
                          (size_t)n * k1));
    return 0;
}

/* The network on the input in p->hu through the head; with pool, also the
 * organ pooling (inside labels, host, or the argmax) and the MLP, and the
 * host mirrors.  model.c's fwd. */
static int fwd(cu_model *g, cu_acts *a, int pool, const uint8_t *labels)
{
    struct cu__acts *p = a->p;
    cu_ctx *c = g->c;
    const mdl_config *cfg = &g->m->cfg;
    int n = a->n, D = g->depth, k1 = a->k1, err;
    size_t s = a->s, cnt = (size_t)n * cfg->in_ch * s;
    if (cfg->in_ch == 1) {
        TRY(cu_normalise(c, g->dt, p->x0, p->hu, cnt, cfg->hu_lo, cfg->hu_hi));
    } else {
        TRY(cu_normalise(c, CU_F32, p->xn, p->hu, cnt, cfg->hu_lo, cfg->hu_hi));
        TRY(cu_pack(c, g->dt, p->x0, p->xn, n, cfg->in_ch, s));
    }
    for (int l = 0; l <= D; l++)
        if ((err = blk_forward(g, &g->enc[l], &p->enc[l], l ? p->enc[l - 1].o : p->x0, n)))
            return err;
    for (int l = D - 1; l >= 0; l--) {
        const void *below = l == D - 1 ? p->enc[D].o : p->dec[l + 1].o;
        TRY(cu_conv_forward(p->upc[l], p->up[l], below, WQ(g, g->up[l]), P(g, g->up_b[l])));
        TRY(cu_concat_forward(c, g->dt, p->cat[l], p->up[l], p->enc[l].o, n, g->ch[l], g->ch[l],
                              p->sl[l]));
        if ((err = blk_forward(g, &g->dec[l], &p->dec[l], p->cat[l], n))) return err;
    }
    TRY(cu_conv_forward(p->head, p->logits, p->feat, WQ(g, g->head), P(g, g->head_b)));
    size_t rows = (size_t)n * k1;
    if (!pool) return 0; /* a window of cu_infer */
    if (p->bwd) TRY(cu_zero(c, p->dlogits, rows * s * g->esz));
    memset(a->dembed, 0, rows * cfg->embed_dim * sizeof(float));

    if (labels)
        TRY(cu_upload(c, p->seg, labels, (size_t)n * s));
    else
        TRY(cu_argmax(c, g->dt, p->seg, p->logits, n, k1, s));
    if ((err = pool_forward(g, p, p->feat, 0, p->seg, n, k1, s))) return err;
    if ((err = mlp_forward(g, p, (int)rows))) return err;
    TRY(cu_download(c, a->embed, p->embed, rows * cfg->embed_dim * sizeof(float)));
    TRY(cu_download(c, a->count, p->count, rows * sizeof(int64_t)));
    return 0;
}

static int acts_check(cu_model *g, cu_acts *a)
{
    if (!a || !a->p || a->p->g != g)
        return fail(g, CTG_EINVAL, "activations of another model");
    return 0;
}

int cu_forward(cu_model *g, cu_acts *a, const float *hu, const uint8_t *labels)
{
    int err;
    if ((err = acts_check(g, a))) return err;
    TRY(cu_upload(g->c, a->p->hu, hu, (size_t)a->n * g->m->cfg.in_ch * a->s * sizeof(float)));
    return fwd(g, a, 1, labels);
}

/* ---- losses ------------------------------------------------------------------------------- */

int cu_seg_loss(cu_model *g, cu_acts *a, const uint8_t *labels, float weight, float *ce,
                float *dice)
{
    int err;
    if ((err = acts_check(g, a))) return err;
    struct cu__acts *p = a->p;
    cu_ctx *c = g->c;
    int n = a->n, k1 = a->k1;
    size_t s = a->s;
    if (!p->bwd) return fail(g, CTG_ESTATE, "inference activations have no loss buffers");
    TRY(cu_upload(c, p->lab, labels, (size_t)n * s));
    TRY(cu_softmax_ce_forward(c, g->dt, &p->scal[0], p->prob, p->logits, p->lab, MDL_IGNORE, n,
                              k1, s));
    /* Dice over the organs only (model.c says why). */
    TRY(cu_dice_forward(c, &p->scal[1], p->prob, p->lab, MDL_IGNORE, 1, n, k1, s));
    if (weight != 0.0f) {
        TRY(cu_softmax_ce_backward(c, g->dt, p->dlogits, weight, p->prob, p->lab, MDL_IGNORE, n,
                                   k1, s));
        TRY(cu_zero(c, p->dprob, (size_t)n * k1 * s * sizeof(float)));
        TRY(cu_dice_backward(c, p->dprob, weight, p->prob, p->lab, MDL_IGNORE, 1, n, k1, s));
        TRY(cu_softmax_backward(c, g->dt, p->dlogits, p->dprob, p->prob, n, k1, s));
    }
    if (ce || dice) {
        float v[2];
        TRY(cu_download(c, v, p->scal, sizeof v));
        if (ce) *ce = v[0];
        if (dice) *dice = v[1];
    }
    return 0;
}

/* ---- backward ----------------------------------------------------------------------------- */

/* Given ba->dout, adds the block's parameter gradients and, when dx is not
 * NULL, dL/dx to dx.  s1..s3: scratch of the block's output size. */
static int blk_backward(cu_model *g, const cblk *b, cblk_acts *ba, const void *x, void *dx, int n,
                        void *s1, void *s2, void *s3)
{
    cu_ctx *c = g->c;
    cu_dtype dt = g->dt;
    float slope = g->m->cfg.slope;
    size_t so = ba->s_out, cnt = (size_t)n * b->cout * so, bytes = cnt * g->esz;
    /* s1 = d(pre-activation sum), which flows to both branches. */
    TRY(cu_zero(c, s1, bytes));
    TRY(cu_lrelu_backward(c, dt, s1, ba->dout, ba->o, cnt, slope));
    TRY(cu_zero(c, s2, bytes));
    TRY(cu_inorm_backward(c, dt, s2, G(g, b->g2), G(g, b->b2), s1, ba->h2, ba->m2, ba->r2,
                          P(g, b->g2), n, b->cout, so));
    TRY(cu_zero(c, s3, bytes));
    TRY(cu_conv_backward(ba->c2, s3, WG(g, b->c2), NULL, s2, ba->a1, WQ(g, b->c2)));
    TRY(cu_zero(c, s2, bytes));
    TRY(cu_lrelu_backward(c, dt, s2, s3, ba->a1, cnt, slope));
    TRY(cu_zero(c, s3, bytes));
    TRY(cu_inorm_backward(c, dt, s3, G(g, b->g1), G(g, b->b1), s2, ba->h1, ba->m1, ba->r1,
                          P(g, b->g1), n, b->cout, so));
    TRY(cu_conv_backward(ba->c1, dx, WG(g, b->c1), NULL, s3, x, WQ(g, b->c1)));
    TRY(cu_zero(c, s2, bytes));
    TRY(cu_inorm_backward(c, dt, s2, G(g, b->gs), G(g, b->bs), s1, ba->hs, ba->ms, ba->rs,
                          P(g, b->gs), n, b->cout, so));
    TRY(cu_conv_backward(ba->cs, dx, WG(g, b->cs), NULL, s2, x, WQ(g, b->cs)));
    return 0;
}

int cu_backward(cu_model *g, cu_acts *a, int with_dlogits, const float *dembed)
{
    int err;
    if ((err = acts_check(g, a))) return err;
    struct cu__acts *p = a->p;
    cu_ctx *c = g->c;
    cu_dtype dt = g->dt;
    int n = a->n, D = g->depth, k1 = a->k1;
    int C0 = g->ch[0], H = g->m->cfg.mlp_hidden, E = g->m->cfg.embed_dim;
    size_t rows = (size_t)n * k1, esz = g->esz;
    if (!g->train) return fail(g, CTG_ESTATE, "backward on a model without gradients");
    if (!p->bwd) return fail(g, CTG_ESTATE, "inference activations have no gradient buffers");

    for (int l = 0; l <= D; l++)
        TRY(cu_zero(c, p->enc[l].dout, (size_t)n * g->ch[l] * p->sl[l] * esz));
    for (int l = 0; l < D; l++)
        TRY(cu_zero(c, p->dec[l].dout, (size_t)n * g->ch[l] * p->sl[l] * esz));

    if (with_dlogits)
        TRY(cu_conv_backward(p->head, p->dfeat, WG(g, g->head), G(g, g->head_b), p->dlogits,
                             p->feat, WQ(g, g->head)));
    if (dembed) {
        /* An absent organ's row is the MLP of a zero vector, not an
         * embedding of anything: it must not train the MLP. */
        TRY(cu_upload(c, p->dem, dembed, rows * E * sizeof(float)));
        TRY(cu_zero_absent_rows(c, p->dem, p->count, (int)rows, E));
        TRY(cu_zero(c, p->dz, rows * E * sizeof(float)));
        TRY(cu_l2norm_backward(c, p->dz, p->dem, p->embed, p->norm, (int)rows, E));
        TRY(cu_zero(c, p->dhid, rows * H * sizeof(float)));
        TRY(cu_linear_backward(c, p->dhid, G(g, g->fc2_w), G(g, g->fc2_b), p->dz, p->hid,
                               P(g, g->fc2_w), (int)rows, H, E));
        TRY(cu_zero(c, p->dhpre, rows * H * sizeof(float)));
        TRY(cu_relu_backward(c, p->dhpre, p->dhid, p->hpre, rows * H));
        int PD = mdl_pool_dim(&g->m->cfg);
        TRY(cu_zero(c, p->dpooled, rows * PD * sizeof(float)));
        TRY(cu_linear_backward(c, p->dpooled, G(g, g->fc1_w), G(g, g->fc1_b), p->dhpre,
                               p->pooled, P(g, g->fc1_w), (int)rows, PD, H));
        if (g->m->cfg.pool == MDL_POOL_MEANMAX) {
            TRY(cu_zero(c, p->dpmean, rows * C0 * sizeof(float)));
            TRY(cu_zero(c, p->dpmax, rows * C0 * sizeof(float)));
            TRY(cu_concat_backward(c, CU_F32, p->dpmean, p->dpmax, p->dpooled, 1, C0, C0, rows));
            TRY(cu_mpool_backward(c, dt, p->dfeat, p->dpmean, p->count, p->seg, n, k1, C0,
                                  a->s));
            TRY(cu_xpool_backward(c, dt, p->dfeat, p->dpmax, C0, p->parg, n, k1, C0, a->s));
        } else {
            TRY(cu_mpool_backward(c, dt, p->dfeat, p->dpooled, p->count, p->seg, n, k1, C0,
                                  a->s));
        }
    }

    for (int l = 0; l < D; l++) {
        const cblk *b = &g->dec[l];
        size_t s = p->sl[l], ch = (size_t)g->ch[l];
        void *dcat = p->scr[0], *dup = p->scr[4];
        TRY(cu_zero(c, dcat, (size_t)n * 2 * ch * s * esz));
        if ((err = blk_backward(g, b, &p->dec[l], p->cat[l], dcat, n, p->scr[1], p->scr[2],
                                p->scr[3])))
            return err;
        TRY(cu_zero(c, dup, (size_t)n * ch * s * esz));
        TRY(cu_concat_backward(c, dt, dup, p->enc[l].dout, dcat, n, (int)ch, (int)ch, s));
        void *dbelow = l == D - 1 ? p->enc[D].dout : p->dec[l + 1].dout;
        const void *below = l == D - 1 ? p->enc[D].o : p->dec[l + 1].o;
        TRY(cu_conv_backward(p->upc[l], dbelow, WG(g, g->up[l]), G(g, g->up_b[l]), dup, below,
                             WQ(g, g->up[l])));
    }
    for (int l = D; l >= 0; l--) {
        /* The image needs no gradient. */
        if ((err = blk_backward(g, &g->enc[l], &p->enc[l], l ? p->enc[l - 1].o : p->x0,
                                l ? p->enc[l - 1].dout : NULL, n, p->scr[1], p->scr[2],
                                p->scr[3])))
            return err;
    }
    return 0;
}

/* ---- outputs for the tests ------------------------------------------------------------------ */

/* dst fp32 [n][ch][s] from host src dt [n][s][ch]. */
static void unpack_host(cu_dtype dt, float *dst, const void *src, int n, int ch, size_t s)
{
    for (int b = 0; b < n; b++)
        for (size_t v = 0; v < s; v++)
            for (int k = 0; k < ch; k++) {
                size_t i = ((size_t)b * s + v) * ch + k;
                float f;
                if (dt == CU_BF16) {
                    uint32_t u = (uint32_t)((const uint16_t *)src)[i] << 16;
                    memcpy(&f, &u, sizeof f);
                } else {
                    f = ((const float *)src)[i];
                }
                dst[((size_t)b * ch + k) * s + v] = f;
            }
}

int cu_acts_fetch(cu_acts *a, float *logits, float *feat, uint8_t *seg)
{
    struct cu__acts *p = a->p;
    cu_model *g = p->g;
    size_t s = a->s;
    int n = a->n, C0 = g->ch[0];
    size_t need = (size_t)n * s * (size_t)(a->k1 > C0 ? a->k1 : C0) * g->esz;
    void *tmp = (logits || feat) ? malloc(need) : NULL;
    if ((logits || feat) && !tmp) return fail(g, CTG_ENOMEM, "out of host memory");
    int err = 0;
    if (logits) {
        if ((err = cu_download(g->c, tmp, p->logits, (size_t)n * s * a->k1 * g->esz))) goto done;
        unpack_host(g->dt, logits, tmp, n, a->k1, s);
    }
    if (feat) {
        if ((err = cu_download(g->c, tmp, p->feat, (size_t)n * s * C0 * g->esz))) goto done;
        unpack_host(g->dt, feat, tmp, n, C0, s);
    }
    if (seg && (err = cu_download(g->c, seg, p->seg, (size_t)n * s))) goto done;
done:
    free(tmp);
    if (err) op_fail(g, err, "cu_download");
    return err;
}

/* ---- text side ------------------------------------------------------------------------------ */

static int text_scratch(cu_model *g, size_t floats)
{
    if (floats <= g->tcap) return 0;
    cu_free(g->c, g->tbuf);
    g->tbuf = NULL;
    g->tcap = 0;
    int err = cu_malloc(g->c, (void **)&g->tbuf, floats * sizeof(float));
    if (err) return fail(g, err, "device memory for %zu text rows", floats);
    g->tcap = floats;
    return 0;
}

int cu_text_forward(cu_model *g, float *out, float *norm, const float *in, int rows)
{
    int E = g->m->cfg.embed_dim, T = g->m->cfg.text_dim, err;
    if (rows < 0) return fail(g, CTG_EINVAL, "negative row count");
    /* Without a projection there are no parameters: the host op is exact. */
    if (!g->has_txt) return mdl_text_forward(g->m, out, norm, in, rows);
    if (rows == 0) return 0;
    size_t r = (size_t)rows;
    if ((err = text_scratch(g, r * (T + 2 * E + 1)))) return err;
    float *din = g->tbuf, *z = din + r * T, *o = z + r * E, *nr = o + r * E;
    cu_ctx *c = g->c;
    TRY(cu_upload(c, din, in, r * T * sizeof(float)));
    TRY(cu_linear_forward(c, z, din, P(g, g->txt_w), P(g, g->txt_b), rows, T, E));
    TRY(cu_l2norm_forward(c, o, nr, z, rows, E));
    TRY(cu_download(c, out, o, r * E * sizeof(float)));
    TRY(cu_download(c, norm, nr, r * sizeof(float)));
    return 0;
}

int cu_text_backward(cu_model *g, const float *dout, const float *out, const float *norm,
                     const float *in, int rows)
{
    int E = g->m->cfg.embed_dim, T = g->m->cfg.text_dim, err;
    if (!g->train) return fail(g, CTG_ESTATE, "text backward on a model without gradients");
    if (!g->has_txt || rows <= 0) return 0;
    size_t r = (size_t)rows;
    if ((err = text_scratch(g, r * (T + 3 * E + 1)))) return err;
    float *din = g->tbuf, *dd = din + r * T, *o = dd + r * E, *dz = o + r * E, *nr = dz + r * E;
    cu_ctx *c = g->c;
    TRY(cu_upload(c, din, in, r * T * sizeof(float)));
    TRY(cu_upload(c, dd, dout, r * E * sizeof(float)));
    TRY(cu_upload(c, o, out, r * E * sizeof(float)));
    TRY(cu_upload(c, nr, norm, r * sizeof(float)));
    TRY(cu_zero(c, dz, r * E * sizeof(float)));
    TRY(cu_l2norm_backward(c, dz, dd, o, nr, rows, E));
    TRY(cu_linear_backward(c, NULL, G(g, g->txt_w), G(g, g->txt_b), dz, din, P(g, g->txt_w), rows,
                           T, E));
    return 0;
}

/* ---- sliding-window inference ----------------------------------------------------------------- */

static int infer_windows(cu_model *g, cu_acts *a, const ctg_vol *hu, float overlap, float *lsum,
                         float *fsum, float *wsum, const float *vol, int *sz, int *sy, int *sx)
{
    const mdl_config *c = &g->m->cfg;
    struct cu__acts *p = a->p;
    int pd = c->patch[0], ph = c->patch[1], pw = c->patch[2];
    int nx = hu->nx, ny = hu->ny, nz = hu->nz, k1 = a->k1, C0 = g->ch[0], err;
    int stz = (int)lroundf(pd * (1.0f - overlap)), sty = (int)lroundf(ph * (1.0f - overlap)),
        stx = (int)lroundf(pw * (1.0f - overlap));
    int nwz = mdl_window_starts(nz, pd, stz > 0 ? stz : 1, sz, nz + 1);
    int nwy = mdl_window_starts(ny, ph, sty > 0 ? sty : 1, sy, ny + 1);
    int nwx = mdl_window_starts(nx, pw, stx > 0 ? stx : 1, sx, nx + 1);
    for (int iz = 0; iz < nwz; iz++)
        for (int iy = 0; iy < nwy; iy++)
            for (int ix = 0; ix < nwx; ix++) {
                int z0 = sz[iz], y0 = sy[iy], x0 = sx[ix];
                /* Outside the volume the window sees air (hu_lo). */
                TRY(cu_window_load(g->c, p->hu, vol, nx, ny, nz, x0, y0, z0, pw, ph, pd,
                                   c->hu_lo));
                if ((err = fwd(g, a, 0, NULL))) return err;
                TRY(cu_window_acc(g->c, g->dt, lsum, wsum, p->logits, k1, nx, ny, nz, x0, y0, z0,
                                  pw, ph, pd));
                TRY(cu_window_acc(g->c, g->dt, fsum, NULL, p->feat, C0, nx, ny, nz, x0, y0, z0,
                                  pw, ph, pd));
            }
    return 0;
}

int cu_infer(cu_model *g, cu_acts *a, const ctg_vol *hu, float overlap, ctg_vol **labels,
             float *embed, int64_t *count)
{
    const mdl_config *c = &g->m->cfg;
    cu_ctx *ctx = g->c;
    int pd = c->patch[0], ph = c->patch[1], pw = c->patch[2];
    int k1 = c->n_classes + 1, C0 = g->ch[0], E = c->embed_dim, err;
    cu_acts *own = NULL;
    void *block = NULL;
    int *sz = NULL, *sy = NULL, *sx = NULL;
    ctg_vol *lv = NULL;
    if (labels) *labels = NULL;
    if (!hu || hu->dtype != CTG_F32 || !(overlap >= 0.0f && overlap < 1.0f) || c->in_ch != 1)
        return fail(g, CTG_EINVAL, "inference needs an fp32 volume, overlap in [0, 1) and one "
                                   "input channel");
    if (!a) {
        if ((err = acts_new(g, 1, pd, ph, pw, 0, &own))) return err;
        a = own;
    }
    err = CTG_EINVAL;
    if (a->n != 1 || a->d != pd || a->h != ph || a->w != pw || a->p->g != g) {
        fail(g, err, "inference activations must have n = 1 and the patch shape");
        goto done;
    }
    int nx = hu->nx, ny = hu->ny, nz = hu->nz;
    size_t V = (size_t)nx * ny * nz;
    /* Averaged logits and features, window counts, the volume, labels. */
    arena A = {NULL, 0};
    float *lsum = CARVE_F(&A, (size_t)k1 * V), *fsum = CARVE_F(&A, (size_t)C0 * V);
    float *wsum = CARVE_F(&A, V), *vol = CARVE_F(&A, V);
    uint8_t *dlab = carve(&A, V);
    size_t need = A.off, used = 0, total = 0;
    if (cu_mem_info(ctx, &used, &total) == 0 && total > 0 && need > total - used) {
        err = fail(g, CTG_ENOMEM,
                   "sliding-window inference of %dx%dx%d voxels needs %.2f GiB of device memory "
                   "((K+1 + C0 + 2) floats per voxel), %.2f GiB free",
                   nx, ny, nz, need / 1073741824.0, (total - used) / 1073741824.0);
        goto done;
    }
    if ((err = cu_malloc(ctx, &block, need))) {
        fail(g, err, "sliding-window inference of %dx%dx%d voxels: %.2f GiB of device memory: %s",
             nx, ny, nz, need / 1073741824.0, cu_ctx_error(ctx));
        goto done;
    }
    A.base = block;
    A.off = 0;
    lsum = CARVE_F(&A, (size_t)k1 * V), fsum = CARVE_F(&A, (size_t)C0 * V);
    wsum = CARVE_F(&A, V), vol = CARVE_F(&A, V);
    dlab = carve(&A, V);
    err = CTG_ENOMEM;
    sz = malloc((nz + 1) * sizeof(int));
    sy = malloc((ny + 1) * sizeof(int));
    sx = malloc((nx + 1) * sizeof(int));
    if (!sz || !sy || !sx) {
        fail(g, err, "out of host memory");
        goto done;
    }
#define TRYD(call)                                                             \
    do {                                                                       \
        if ((err = (call))) {                                                  \
            op_fail(g, err, #call);                                            \
            goto done;                                                         \
        }                                                                      \
    } while (0)
    /* lsum, fsum and wsum are consecutive: one zeroing. */
    TRYD(cu_zero(ctx, lsum, (size_t)((char *)vol - (char *)lsum)));
    TRYD(cu_upload(ctx, vol, hu->data, V * sizeof(float)));
    if ((err = infer_windows(g, a, hu, overlap, lsum, fsum, wsum, vol, sz, sy, sx))) goto done;
    TRYD(cu_div_rows(ctx, lsum, wsum, V, k1));
    TRYD(cu_div_rows(ctx, fsum, wsum, V, C0));
    TRYD(cu_argmax_f32(ctx, dlab, lsum, 1, k1, V));
    struct cu__acts *p = a->p;
    if ((err = pool_forward(g, p, fsum, 1, dlab, 1, k1, V))) goto done;
    if (embed) {
        if ((err = mlp_forward(g, p, k1))) goto done;
        TRYD(cu_download(ctx, embed, p->embed, (size_t)k1 * E * sizeof(float)));
    }
    if (count) TRYD(cu_download(ctx, count, p->count, (size_t)k1 * sizeof(int64_t)));
    if (labels) {
        err = CTG_ENOMEM;
        if (!(lv = ctg_vol_new(nx, ny, nz, CTG_U8))) {
            fail(g, err, "out of host memory");
            goto done;
        }
        memcpy(lv->aff, hu->aff, sizeof lv->aff);
        uint8_t *o = lv->data;
        TRYD(cu_download(ctx, o, dlab, V));
        /* Model classes to TotalSegmentator v2 ids. */
        int map[256] = {0};
        for (int j = 1; j < k1 && j < 256; j++) map[j] = g->m->class_ids[j - 1];
        for (size_t v = 0; v < V; v++) o[v] = (uint8_t)map[o[v]];
        *labels = lv;
        lv = NULL;
    }
#undef TRYD
    err = 0;
done:
    if (block) cu_free(ctx, block);
    free(sz);
    free(sy);
    free(sx);
    ctg_vol_free(lv);
    cu_acts_free(own);
    return err;
}

/* ---- start-up self-test ---------------------------------------------------------------------- */

int cu_model_test_corrupt(cu_model *g)
{
    if (!cu_ctx_emulated(g->c)) return fail(g, CTG_EINVAL, "only an emulated copy may be broken");
    const cconv *h = &g->conv[g->head];
    TRY(cu_scale(g->c, g->params + h->w, h->cnt, -1.0f));
    return prepare_all(g);
}

/* A synthetic body in one window: an ellipse of soft tissue in air with a
 * fat rim, a contrast-filled vessel, a bone disc and a smooth texture, in
 * HU.  Deterministic (no random numbers). */
static void selftest_body(float *hu, int d, int h, int w)
{
    for (int z = 0; z < d; z++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                double u = (x + 0.5) / w * 2 - 1, v = (y + 0.5) / h * 2 - 1;
                double r = u * u / 0.8 + v * v / 0.6;
                double val = -1000;
                if (r < 1.0) val = r > 0.8 ? -100 : 40 + 15 * sin(0.7 * x + 0.4 * y + 0.9 * z);
                double bu = u, bv = v - 0.45;
                if (bu * bu + bv * bv < 0.03) val = 700;
                double cu = u + 0.25, cv = v + 0.1;
                if (cu * cu + cv * cv < 0.02) val = 250;
                hu[((size_t)z * h + y) * w + x] = (float)val;
            }
}

int cu_selftest(cu_model *g, double *agree, double *maxdiff, char *why, size_t n)
{
    const mdl_config *cf = &g->m->cfg;
    int pd = cf->patch[0], ph = cf->patch[1], pw = cf->patch[2];
    size_t s = (size_t)pd * ph * pw;
    int k1 = cf->n_classes + 1, err = CTG_ENOMEM;
    mdl_acts *ca = NULL;
    cu_acts *ga = NULL;
    float *hu = malloc(s * cf->in_ch * sizeof(float)), *lg = malloc(s * k1 * sizeof(float));
    uint8_t *seg = malloc(s);
    char tmp[256];
    if (!why || !n) why = tmp, n = sizeof tmp;
    why[0] = 0;
    if (!hu || !lg || !seg) {
        snprintf(why, n, "self-test: out of host memory");
        goto done;
    }
    for (int c = 0; c < cf->in_ch; c++) selftest_body(hu + (size_t)c * s, pd, ph, pw);
    if ((err = mdl_acts_new(g->m, 1, pd, ph, pw, &ca)) || (err = mdl_forward(g->m, ca, hu, NULL))) {
        snprintf(why, n, "self-test: the CPU forward failed: %s", ctg_strerror(err));
        goto done;
    }
    if ((err = cu_acts_new(g, 1, pd, ph, pw, &ga)) || (err = cu_forward(g, ga, hu, NULL)) ||
        (err = cu_acts_fetch(ga, lg, NULL, seg))) {
        snprintf(why, n, "self-test: the device forward failed: %s", cu_model_error(g));
        goto done;
    }
    float lo = INFINITY, hi = -INFINITY;
    double md = 0;
    size_t same = 0;
    for (size_t i = 0; i < s * k1; i++) {
        float r = ca->logits[i];
        if (r < lo) lo = r;
        if (r > hi) hi = r;
        double dd = fabs((double)lg[i] - r);
        if (!(dd <= md)) md = dd; /* NaN wins */
    }
    for (size_t i = 0; i < s; i++) same += seg[i] == ca->seg[i];
    double range = hi > lo ? hi - lo : 1.0, rel = md / range, ag = (double)same / s;
    if (agree) *agree = ag;
    if (maxdiff) *maxdiff = rel;
    int bf = g->dt == CU_BF16;
    double need_ag = bf ? 0.98 : 0.999, need_rel = bf ? 5e-2 : 1e-3;
    if (!(ag >= need_ag) || !(rel <= need_rel)) {
        snprintf(why, n,
                 "self-test: the device disagrees with the CPU on a test window: labels agree "
                 "on %.2f %% of voxels (need %.1f %%), largest logit difference %.3g of the "
                 "range (limit %.0e), %s",
                 100 * ag, 100 * need_ag, rel, need_rel, cu_dtype_name(g->dt));
        err = CTG_EIO;
        goto done;
    }
    err = 0;
done:
    mdl_acts_free(ca);
    cu_acts_free(ga);
    free(hu);
    free(lg);
    free(seg);
    return err;
}
