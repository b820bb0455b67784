/*
 * model.c - the CT-GLIP network (model.h): parameter layout and
 * initialisation, activation layout and conv plans, forward, segmentation
 * loss, backward, the organ MLP, the text projection and sliding-window
 * inference.  The file format is in model_io.c.
 *
 * Layouts are computed by walking the network once to size and once to
 * point (llm.c's malloc_and_point): parameters are one float block with a
 * table of named tensors; activations are one byte block carved into
 * 64-byte aligned buffers.  Backward mirrors forward layer by layer; every
 * op's backward ADDS into its gradients (ops.h), so each activation
 * gradient buffer is zeroed before it collects.
 *
 * Threading: see model.h.  Nothing here keeps global state.
 */
#include "core/model.h"

#include "core/core.h"
#include "core/ops.h"
#include "core/organs.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- network description ----------------------------------------------------- */

/* A residual block; the ints are indices into the tensor table. */
typedef struct blk {
    int cin, cout, stride;
    int lvl; /* level of the output (the input's is lvl - 1 when stride 2) */
    int w1, g1, b1, w2, g2, b2;
    int ws, gs, bs; /* the 1x1 skip conv and its norm */
} blk;

#define MDL__MAX_TENSORS 192

struct mdl__net {
    int depth;
    int ch[MDL_MAX_DEPTH + 1];
    blk enc[MDL_MAX_DEPTH + 1];
    blk dec[MDL_MAX_DEPTH];
    int up_w[MDL_MAX_DEPTH], up_b[MDL_MAX_DEPTH];
    int head_w, head_b;
    int fc1_w, fc1_b, fc2_w, fc2_b;
    int txt_w, txt_b; /* -1 without a text projection */
};

mdl_config mdl_config_default(int k)
{
    mdl_config c = {
        .in_ch = 1,
        .n_classes = k,
        .width = 16,
        .depth = 4,
        .mult = 2,
        .max_width = 320,
        .embed_dim = 256,
        .mlp_hidden = 768,
        .text_dim = 0,
        .patch = {64, 64, 64},
        .hu_lo = -1000.0f,
        .hu_hi = 1000.0f,
        .slope = 0.01f,
        .pool = MDL_POOL_MEAN,
    };
    return c;
}

int mdl_pool_dim(const mdl_config *c)
{
    int c0 = mdl_level_width(c, 0);
    return c->pool == MDL_POOL_MEANMAX ? 2 * c0 : c0;
}

int mdl_level_width(const mdl_config *c, int l)
{
    long w = c->width;
    for (int i = 0; i < l; i++) {
        w *= c->mult;
        if (w > 1 << 20) break;
    }
    if (c->max_width > 0 && w > c->max_width) w = c->max_width;
    return (int)w;
}

#define WHY(...)                                                                                  \
    do {                                                                                          \
        if (why && n) snprintf(why, n, __VA_ARGS__);                                              \
    } while (0)

int mdl_config_check(const mdl_config *c, char *why, size_t n)
{
    if (c->in_ch < 1 || c->in_ch > 16) {
        WHY("in_ch %d outside 1..16", c->in_ch);
        return CTG_EINVAL;
    }
    if (c->n_classes < 1 || c->n_classes > MDL_MAX_CLASSES) {
        WHY("n_classes %d outside 1..%d", c->n_classes, MDL_MAX_CLASSES);
        return CTG_EINVAL;
    }
    if (c->width < 1 || c->width > 4096 || c->mult < 1 || c->mult > 4 || c->max_width < 0 ||
        c->max_width > 4096) {
        WHY("width %d / mult %d / max_width %d out of range", c->width, c->mult, c->max_width);
        return CTG_EINVAL;
    }
    if (c->depth < 0 || c->depth > MDL_MAX_DEPTH) {
        WHY("depth %d outside 0..%d", c->depth, MDL_MAX_DEPTH);
        return CTG_EINVAL;
    }
    if (c->embed_dim < 1 || c->embed_dim > 8192 || c->mlp_hidden < 1 || c->mlp_hidden > 65536 ||
        c->text_dim < 0 || c->text_dim > 8192) {
        WHY("embed_dim %d / mlp_hidden %d / text_dim %d out of range", c->embed_dim,
            c->mlp_hidden, c->text_dim);
        return CTG_EINVAL;
    }
    if (c->pool != MDL_POOL_MEAN && c->pool != MDL_POOL_MEANMAX) {
        WHY("pool %d is neither mean (0) nor mean+max (1)", c->pool);
        return CTG_EINVAL;
    }
    for (int i = 0; i < 3; i++) {
        int unit = 1 << c->depth;
        if (c->patch[i] < unit || c->patch[i] > 4096 || c->patch[i] % unit) {
            WHY("patch side %d is not a positive multiple of 2^depth = %d", c->patch[i], unit);
            return CTG_EINVAL;
        }
    }
    if (!(c->hu_lo < c->hu_hi) || !isfinite(c->hu_lo) || !isfinite(c->hu_hi)) {
        WHY("HU window [%g, %g] is empty", c->hu_lo, c->hu_hi);
        return CTG_EINVAL;
    }
    if (!(c->slope >= 0.0f && c->slope < 1.0f)) {
        WHY("LeakyReLU slope %g outside [0, 1)", c->slope);
        return CTG_EINVAL;
    }
    return 0;
}

/* Builds the tensor table; tensors may be NULL to count only.  The order
 * here is the order of the parameter block and of the model file. */
typedef struct layout {
    mdl_tensor *t;
    int nt;
    size_t off;
} layout;

static int add_t(layout *L, const char *name, int kind, size_t count, int fan_in, float std)
{
    int i = L->nt++;
    if (L->t) {
        mdl_tensor *t = &L->t[i];
        memset(t, 0, sizeof *t);
        snprintf(t->name, sizeof t->name, "%s", name);
        t->kind = kind;
        t->off = L->off;
        t->count = count;
        t->fan_in = fan_in;
        t->init_std = std;
    }
    L->off += count;
    return i;
}

static void add_block(layout *L, const mdl_config *c, blk *b, const char *pfx, int cin, int cout,
                      int stride, int lvl)
{
    char nm[32];
    /* He-normal with the LeakyReLU gain for convolutions that feed a norm
     * and an activation. */
    float gain = 2.0f / (1.0f + c->slope * c->slope);
    b->cin = cin;
    b->cout = cout;
    b->stride = stride;
    b->lvl = lvl;
    snprintf(nm, sizeof nm, "%s.conv1.w", pfx);
    b->w1 = add_t(L, nm, MDL_T_CONV, (size_t)cout * cin * 27, cin * 27, sqrtf(gain / (cin * 27)));
    snprintf(nm, sizeof nm, "%s.norm1.g", pfx);
    b->g1 = add_t(L, nm, MDL_T_NORM_G, cout, 0, 0);
    snprintf(nm, sizeof nm, "%s.norm1.b", pfx);
    b->b1 = add_t(L, nm, MDL_T_NORM_B, cout, 0, 0);
    snprintf(nm, sizeof nm, "%s.conv2.w", pfx);
    b->w2 = add_t(L, nm, MDL_T_CONV, (size_t)cout * cout * 27, cout * 27,
                  sqrtf(gain / (cout * 27)));
    snprintf(nm, sizeof nm, "%s.norm2.g", pfx);
    b->g2 = add_t(L, nm, MDL_T_NORM_G, cout, 0, 0);
    snprintf(nm, sizeof nm, "%s.norm2.b", pfx);
    b->b2 = add_t(L, nm, MDL_T_NORM_B, cout, 0, 0);
    /* Every block of this network changes its channel count (the first
     * takes the image, the encoder's stride-2 blocks widen, the decoder's
     * halve the concat), so every skip is a 1x1 conv with its own norm. */
    snprintf(nm, sizeof nm, "%s.convs.w", pfx);
    b->ws = add_t(L, nm, MDL_T_CONV, (size_t)cout * cin, cin, sqrtf(gain / cin));
    snprintf(nm, sizeof nm, "%s.norms.g", pfx);
    b->gs = add_t(L, nm, MDL_T_NORM_G, cout, 0, 0);
    snprintf(nm, sizeof nm, "%s.norms.b", pfx);
    b->bs = add_t(L, nm, MDL_T_NORM_B, cout, 0, 0);
}

static void build_net(const mdl_config *c, struct mdl__net *net, layout *L)
{
    char pfx[32];
    int k1 = c->n_classes + 1, D = c->depth;
    memset(net, 0, sizeof *net);
    net->depth = D;
    for (int l = 0; l <= D; l++) net->ch[l] = mdl_level_width(c, l);
    for (int l = 0; l <= D; l++) {
        snprintf(pfx, sizeof pfx, "enc%d", l);
        add_block(L, c, &net->enc[l], pfx, l ? net->ch[l - 1] : c->in_ch, net->ch[l], l ? 2 : 1,
                  l);
    }
    for (int l = D - 1; l >= 0; l--) {
        int ci = net->ch[l + 1], co = net->ch[l];
        char nm[32];
        snprintf(nm, sizeof nm, "up%d.w", l);
        /* Each output voxel of a k2s2 transposed conv sees cin inputs; no
         * norm follows before the concat, so plain He (ReLU gain). */
        net->up_w[l] = add_t(L, nm, MDL_T_DECONV, (size_t)co * ci * 8, ci, sqrtf(1.0f / ci));
        snprintf(nm, sizeof nm, "up%d.b", l);
        net->up_b[l] = add_t(L, nm, MDL_T_BIAS, co, 0, 0);
        snprintf(pfx, sizeof pfx, "dec%d", l);
        add_block(L, c, &net->dec[l], pfx, 2 * co, co, 1, l);
    }
    int c0 = net->ch[0], E = c->embed_dim, H = c->mlp_hidden;
    /* Layers that feed a softmax or a normalisation directly get unit-gain
     * (LeCun) init so the first logits are O(1); fc1 feeds a ReLU. */
    net->head_w = add_t(L, "head.w", MDL_T_CONV, (size_t)k1 * c0, c0, sqrtf(1.0f / c0));
    net->head_b = add_t(L, "head.b", MDL_T_BIAS, k1, 0, 0);
    int pd = mdl_pool_dim(c);
    net->fc1_w = add_t(L, "mlp.fc1.w", MDL_T_LINEAR, (size_t)H * pd, pd, sqrtf(2.0f / pd));
    net->fc1_b = add_t(L, "mlp.fc1.b", MDL_T_BIAS, H, 0, 0);
    net->fc2_w = add_t(L, "mlp.fc2.w", MDL_T_LINEAR, (size_t)E * H, H, sqrtf(1.0f / H));
    net->fc2_b = add_t(L, "mlp.fc2.b", MDL_T_BIAS, E, 0, 0);
    if (c->text_dim > 0) {
        int T = c->text_dim;
        net->txt_w = add_t(L, "text.proj.w", MDL_T_LINEAR, (size_t)E * T, T, sqrtf(1.0f / T));
        net->txt_b = add_t(L, "text.proj.b", MDL_T_BIAS, E, 0, 0);
    } else {
        net->txt_w = net->txt_b = -1;
    }
}

/* ---- model lifetime ------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A standard normal by Box-Muller in double, so the bits do not depend on
 * the libm's float variants. */
static double gauss(uint64_t *s)
{
    double u1 = ((splitmix64(s) >> 11) + 1.0) / 9007199254740993.0; /* (0, 1] */
    double u2 = (splitmix64(s) >> 11) / 9007199254740992.0;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

void mdl_init_params(mdl_model *m, uint64_t seed)
{
    for (int i = 0; i < m->n_tensors; i++) {
        const mdl_tensor *t = &m->tensors[i];
        float *p = m->params + t->off;
        /* One stream per tensor, so adding a tensor to the layout does not
         * change the initial values of the others. */
        uint64_t s = seed ^ (0xd1b54a32d192ed03ull * (uint64_t)(i + 1));
        splitmix64(&s);
        if (t->init_std > 0) {
            for (size_t j = 0; j < t->count; j++) p[j] = (float)(t->init_std * gauss(&s));
        } else {
            float v = t->kind == MDL_T_NORM_G ? 1.0f : 0.0f;
            for (size_t j = 0; j < t->count; j++) p[j] = v;
        }
    }
    m->identity[0] = 0;
}

/* Allocates a model with its layout (parameters uninitialised); shared with
 * model_io.c. */
int mdl__model_alloc(const mdl_config *cfg, const int *class_ids, const char *text_id,
                     mdl_model **out, char *why, size_t n)
{
    int err = mdl_config_check(cfg, why, n);
    mdl_model *m = NULL;
    *out = NULL;
    if (err) return err;
    for (int i = 0; i < cfg->n_classes; i++) {
        if (!ctg_organ_get(class_ids[i]) || class_ids[i] < 1) {
            WHY("class %d has v2 id %d, not in 1..%d", i + 1, class_ids[i], CTG_NUM_ORGANS);
            return CTG_EINVAL;
        }
        for (int j = 0; j < i; j++)
            if (class_ids[j] == class_ids[i]) {
                WHY("v2 id %d appears twice in the class list", class_ids[i]);
                return CTG_EINVAL;
            }
    }
    err = CTG_ENOMEM;
    m = calloc(1, sizeof *m);
    if (!m) goto fail;
    m->cfg = *cfg;
    memcpy(m->class_ids, class_ids, (size_t)cfg->n_classes * sizeof(int));
    mdl_set_text_id(m, text_id);
    m->net = calloc(1, sizeof *m->net);
    m->tensors = calloc(MDL__MAX_TENSORS, sizeof *m->tensors);
    if (!m->net || !m->tensors) goto fail;
    layout L = {m->tensors, 0, 0};
    build_net(cfg, m->net, &L);
    m->n_tensors = L.nt;
    m->n_params = L.off;
    m->params = malloc(m->n_params * sizeof(float));
    if (!m->params) goto fail;
    *out = m;
    return 0;
fail:
    mdl_free(m);
    return err;
}

int mdl_new(const mdl_config *cfg, const int *class_ids, const char *text_id, uint64_t seed,
            mdl_model **out, char *why, size_t n)
{
    int err = mdl__model_alloc(cfg, class_ids, text_id, out, why, n);
    if (err) return err;
    mdl_init_params(*out, seed);
    return 0;
}

void mdl_free(mdl_model *m)
{
    if (!m) return;
    free(m->params);
    free(m->grads);
    free(m->adam_m);
    free(m->adam_v);
    free(m->tensors);
    free(m->net);
    free(m->meta);
    free(m);
}

void mdl_set_spacing(mdl_model *m, const float sp[3])
{
    for (int a = 0; a < 3; a++) m->spacing[a] = sp[a] > 0 ? sp[a] : 0;
    m->identity[0] = 0;
}

const char *mdl_meta_get(const mdl_model *m, const char *key)
{
    for (int i = 0; i < m->n_meta; i++)
        if (strcmp(m->meta[i].key, key) == 0) return m->meta[i].val;
    return NULL;
}

static int meta_key_ok(const char *key)
{
    size_t len = strlen(key);
    if (len == 0 || len >= MDL_META_KEY) return 0;
    for (size_t i = 0; i < len; i++)
        if (key[i] <= ' ' || key[i] > '~' || key[i] == '=') return 0;
    return 1;
}

int mdl_meta_set(mdl_model *m, const char *key, const char *val)
{
    if (!key || !meta_key_ok(key) || (val && strlen(val) >= MDL_META_VAL)) return CTG_EINVAL;
    int i = 0;
    while (i < m->n_meta && strcmp(m->meta[i].key, key) < 0) i++;
    int found = i < m->n_meta && strcmp(m->meta[i].key, key) == 0;
    m->identity[0] = 0;
    if (!val) {
        if (found) {
            memmove(&m->meta[i], &m->meta[i + 1], sizeof *m->meta * (size_t)(m->n_meta - i - 1));
            m->n_meta--;
        }
        return 0;
    }
    if (!found) {
        if (m->n_meta == MDL_MAX_META) return CTG_EINVAL;
        if (!m->meta && !(m->meta = calloc(MDL_MAX_META, sizeof *m->meta))) return CTG_ENOMEM;
        memmove(&m->meta[i + 1], &m->meta[i], sizeof *m->meta * (size_t)(m->n_meta - i));
        m->n_meta++;
        snprintf(m->meta[i].key, sizeof m->meta[i].key, "%s", key);
    }
    snprintf(m->meta[i].val, sizeof m->meta[i].val, "%s", val);
    return 0;
}

int mdl_train_alloc(mdl_model *m)
{
    if (m->grads) return 0;
    float *g = calloc(m->n_params, sizeof(float));
    float *am = calloc(m->n_params, sizeof(float));
    float *av = calloc(m->n_params, sizeof(float));
    if (!g || !am || !av) {
        free(g);
        free(am);
        free(av);
        return CTG_ENOMEM;
    }
    m->grads = g;
    m->adam_m = am;
    m->adam_v = av;
    return 0;
}

void mdl_zero_grad(mdl_model *m)
{
    if (m->grads) memset(m->grads, 0, m->n_params * sizeof(float));
}

const mdl_tensor *mdl_find_tensor(const mdl_model *m, const char *name)
{
    for (int i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0) return &m->tensors[i];
    return NULL;
}

void mdl_set_text_id(mdl_model *m, const char *text_id)
{
    snprintf(m->text_id, sizeof m->text_id, "%s", text_id ? text_id : "");
    m->identity[0] = 0;
}

#define P(m, i) ((m)->params + (m)->tensors[i].off)
#define G(m, i) ((m)->grads + (m)->tensors[i].off)

/* ---- activations ------------------------------------------------------------------ */

typedef struct blk_acts {
    float *h1, *m1, *r1, *a1, *h2, *m2, *r2, *o, *hs, *ms, *rs;
    float *dout; /* gradient of o */
    op_conv *c1, *c2, *cs;
    size_t s_in, s_out;
} blk_acts;

struct mdl__acts {
    const mdl_model *m;
    op_ctx *ctx;
    void *block;
    size_t bytes;
    int dl[MDL_MAX_DEPTH + 1], hl[MDL_MAX_DEPTH + 1], wl[MDL_MAX_DEPTH + 1];
    size_t sl[MDL_MAX_DEPTH + 1];
    float *x0;
    blk_acts enc[MDL_MAX_DEPTH + 1], dec[MDL_MAX_DEPTH];
    float *up[MDL_MAX_DEPTH], *cat[MDL_MAX_DEPTH];
    op_conv *upc[MDL_MAX_DEPTH], *head;
    float *dfeat; /* gradient of a->feat (an enc/dec dout) */
    float *scr[5];
    float *pooled, *hpre, *hid, *z, *norm; /* pooled [rows][P], P = mdl_pool_dim */
    float *dem, *dz, *dhid, *dhpre, *dpooled;
    float *pmean;   /* [rows][C_0]: the mean half (MEANMAX), forward and backward */
    int64_t *parg;  /* [rows][C_0]: the max half's winning voxels (MEANMAX) */
    float *dprob;
};

typedef struct arena {
    char *base;
    size_t off;
} arena;

static void *carve(arena *A, size_t bytes)
{
    void *p = A->base ? A->base + A->off : NULL;
    A->off += (bytes + 63) & ~(size_t)63;
    return p;
}
#define CARVE_F(A, cnt) ((float *)carve((A), (size_t)(cnt) * sizeof(float)))

/* Points every buffer of a into the arena (or only sizes it when the arena
 * has no base). */
static void acts_layout(mdl_acts *a, arena *A)
{
    struct mdl__acts *p = a->p;
    const mdl_model *m = p->m;
    const struct mdl__net *net = m->net;
    const mdl_config *c = &m->cfg;
    int n = a->n, D = net->depth, k1 = a->k1, E = c->embed_dim, H = c->mlp_hidden;
    size_t rows = (size_t)n * k1, C0 = (size_t)net->ch[0];

    p->x0 = CARVE_F(A, (size_t)n * c->in_ch * a->s);
    for (int l = 0; l <= D; l++) {
        const blk *b = &net->enc[l];
        blk_acts *ba = &p->enc[l];
        size_t so = (size_t)n * b->cout * p->sl[l], nc = (size_t)n * b->cout;
        ba->h1 = CARVE_F(A, so);
        ba->a1 = CARVE_F(A, so);
        ba->h2 = CARVE_F(A, so);
        ba->o = CARVE_F(A, so);
        ba->dout = CARVE_F(A, so);
        ba->hs = CARVE_F(A, so);
        ba->m1 = CARVE_F(A, nc), ba->r1 = CARVE_F(A, nc);
        ba->m2 = CARVE_F(A, nc), ba->r2 = CARVE_F(A, nc);
        ba->ms = CARVE_F(A, nc), ba->rs = CARVE_F(A, nc);
    }
    for (int l = D - 1; l >= 0; l--) {
        const blk *b = &net->dec[l];
        blk_acts *ba = &p->dec[l];
        size_t so = (size_t)n * b->cout * p->sl[l], nc = (size_t)n * b->cout;
        p->up[l] = CARVE_F(A, so);
        p->cat[l] = CARVE_F(A, 2 * so);
        ba->h1 = CARVE_F(A, so);
        ba->a1 = CARVE_F(A, so);
        ba->h2 = CARVE_F(A, so);
        ba->o = CARVE_F(A, so);
        ba->dout = CARVE_F(A, so);
        ba->hs = CARVE_F(A, so);
        ba->m1 = CARVE_F(A, nc), ba->r1 = CARVE_F(A, nc);
        ba->m2 = CARVE_F(A, nc), ba->r2 = CARVE_F(A, nc);
        ba->ms = CARVE_F(A, nc), ba->rs = CARVE_F(A, nc);
    }
    /* Scratch: scr[0] takes a decoder block's input gradient (its concat,
     * 2*C_l channels); the others hold one block output's worth. */
    size_t big = 0, cat = 0;
    for (int l = 0; l <= D; l++) {
        size_t t = (size_t)n * net->ch[l] * p->sl[l];
        if (t > big) big = t;
        if (l < D && 2 * t > cat) cat = 2 * t;
    }
    p->scr[0] = CARVE_F(A, cat > big ? cat : big);
    for (int i = 1; i < 5; i++) p->scr[i] = CARVE_F(A, big);
    size_t ls = rows * a->s;
    a->logits = CARVE_F(A, ls);
    a->prob = CARVE_F(A, ls);
    a->dlogits = CARVE_F(A, ls);
    p->dprob = CARVE_F(A, ls);
    a->seg = carve(A, (size_t)n * a->s);
    a->count = carve(A, rows * sizeof(int64_t));
    a->embed = CARVE_F(A, rows * E);
    a->dembed = CARVE_F(A, rows * E);
    size_t P = (size_t)mdl_pool_dim(c);
    p->pooled = CARVE_F(A, rows * P);
    p->pmean = CARVE_F(A, rows * C0);
    p->parg = carve(A, rows * C0 * sizeof(int64_t));
    p->hpre = CARVE_F(A, rows * H);
    p->hid = CARVE_F(A, rows * H);
    p->z = CARVE_F(A, rows * E);
    p->norm = CARVE_F(A, rows);
    p->dem = CARVE_F(A, rows * E);
    p->dz = CARVE_F(A, rows * E);
    p->dhid = CARVE_F(A, rows * H);
    p->dhpre = CARVE_F(A, rows * H);
    p->dpooled = CARVE_F(A, rows * P);
    if (D > 0) {
        a->feat = p->dec[0].o;
        p->dfeat = p->dec[0].dout;
    } else {
        a->feat = p->enc[0].o;
        p->dfeat = p->enc[0].dout;
    }
}

static int plan(op_ctx *ctx, op_conv **out, int n, int cin, int cout, int d, int h, int w, int k,
                int stride)
{
    op_conv_geom g = op_conv_geom_make(n, cin, cout, d, h, w, k, stride);
    return op_conv_new(ctx, &g, out);
}

static int blk_plans(struct mdl__acts *p, const blk *b, blk_acts *ba, int n)
{
    int li = b->stride == 2 ? b->lvl - 1 : b->lvl, lo = b->lvl;
    int err = plan(p->ctx, &ba->c1, n, b->cin, b->cout, p->dl[li], p->hl[li], p->wl[li], 3,
                   b->stride);
    if (!err)
        err = plan(p->ctx, &ba->c2, n, b->cout, b->cout, p->dl[lo], p->hl[lo], p->wl[lo], 3, 1);
    if (!err)
        err = plan(p->ctx, &ba->cs, n, b->cin, b->cout, p->dl[li], p->hl[li], p->wl[li], 1,
                   b->stride);
    ba->s_in = p->sl[li];
    ba->s_out = p->sl[lo];
    return err;
}

int mdl_acts_new(const mdl_model *m, int n, int d, int h, int w, mdl_acts **out)
{
    const struct mdl__net *net = m->net;
    int D = net->depth, unit = 1 << D, err = CTG_EINVAL;
    mdl_acts *a = NULL;
    *out = NULL;
    if (n < 1 || d < unit || h < unit || w < unit || d % unit || h % unit || w % unit) goto fail;
    err = CTG_ENOMEM;
    a = calloc(1, sizeof *a);
    if (!a || !(a->p = calloc(1, sizeof *a->p))) goto fail;
    struct mdl__acts *p = a->p;
    p->m = m;
    a->n = n, a->d = d, a->h = h, a->w = w;
    a->s = (size_t)d * h * w;
    a->k1 = m->cfg.n_classes + 1;
    for (int l = 0; l <= D; l++) {
        p->dl[l] = d >> l, p->hl[l] = h >> l, p->wl[l] = w >> l;
        p->sl[l] = (size_t)p->dl[l] * p->hl[l] * p->wl[l];
    }
    arena A = {NULL, 0};
    acts_layout(a, &A);
    p->bytes = A.off;
    if (!(p->block = aligned_alloc(64, A.off))) goto fail;
    A.base = p->block;
    A.off = 0;
    acts_layout(a, &A);
    /* Untouched buffers (padding, counts before a forward) read as zero. */
    memset(p->block, 0, p->bytes);

    if ((err = op_ctx_new(&p->ctx))) goto fail;
    for (int l = 0; l <= D; l++)
        if ((err = blk_plans(p, &net->enc[l], &p->enc[l], n))) goto fail;
    for (int l = 0; l < D; l++) {
        op_conv_geom g = op_deconv_geom_make(n, net->ch[l + 1], net->ch[l], p->dl[l + 1],
                                             p->hl[l + 1], p->wl[l + 1]);
        if ((err = op_conv_new(p->ctx, &g, &p->upc[l]))) goto fail;
        if ((err = blk_plans(p, &net->dec[l], &p->dec[l], n))) goto fail;
    }
    if ((err = plan(p->ctx, &p->head, n, net->ch[0], a->k1, d, h, w, 1, 1))) goto fail;
    *out = a;
    return 0;
fail:
    mdl_acts_free(a);
    return err;
}

static void blk_acts_free(blk_acts *ba)
{
    op_conv_free(ba->c1);
    op_conv_free(ba->c2);
    op_conv_free(ba->cs);
}

void mdl_acts_free(mdl_acts *a)
{
    if (!a) return;
    struct mdl__acts *p = a->p;
    if (p) {
        for (int l = 0; l <= MDL_MAX_DEPTH; l++) blk_acts_free(&p->enc[l]);
        for (int l = 0; l < MDL_MAX_DEPTH; l++) {
            blk_acts_free(&p->dec[l]);
            op_conv_free(p->upc[l]);
        }
        op_conv_free(p->head);
        op_ctx_free(p->ctx);
        free(p->block);
        free(p);
    }
    free(a);
}

size_t mdl_acts_bytes(const mdl_acts *a) { return a ? a->p->bytes : 0; }

/* ---- forward ------------------------------------------------------------------------ */

static void normalise(const mdl_config *c, float *x, const float *hu, size_t cnt)
{
    float lo = c->hu_lo, hi = c->hu_hi, mid = 0.5f * (lo + hi), rs = 2.0f / (hi - lo);
    for (size_t i = 0; i < cnt; i++) {
        float v = hu[i];
        v = v < lo ? lo : v > hi ? hi : v; /* NaN stays NaN: garbage in, visible out */
        x[i] = (v - mid) * rs;
    }
}

/* out = lrelu(inorm(conv2(lrelu(inorm(conv1(x))))) + inorm(convs(x))). */
static int blk_forward(const mdl_model *m, const blk *b, blk_acts *ba, const float *x, int n,
                       float *tmp)
{
    float slope = m->cfg.slope;
    size_t so = ba->s_out, cnt = (size_t)n * b->cout * so;
    int err;
    if ((err = op_conv3d_forward_cpu(ba->c1, ba->h1, x, P(m, b->w1), NULL))) return err;
    op_inorm_forward_cpu(ba->a1, ba->m1, ba->r1, ba->h1, P(m, b->g1), P(m, b->b1), n, b->cout,
                         so);
    op_lrelu_forward_cpu(ba->a1, ba->a1, cnt, slope);
    if ((err = op_conv3d_forward_cpu(ba->c2, ba->h2, ba->a1, P(m, b->w2), NULL))) return err;
    op_inorm_forward_cpu(ba->o, ba->m2, ba->r2, ba->h2, P(m, b->g2), P(m, b->b2), n, b->cout,
                         so);
    if ((err = op_conv3d_forward_cpu(ba->cs, ba->hs, x, P(m, b->ws), NULL))) return err;
    op_inorm_forward_cpu(tmp, ba->ms, ba->rs, ba->hs, P(m, b->gs), P(m, b->bs), n, b->cout, so);
    op_add_forward_cpu(ba->o, ba->o, tmp, cnt);
    op_lrelu_forward_cpu(ba->o, ba->o, cnt, slope);
    return 0;
}

static void mlp_forward(const mdl_model *m, const float *pooled, int rows, float *hpre, float *hid,
                        float *z, float *norm, float *out)
{
    const struct mdl__net *net = m->net;
    int PD = mdl_pool_dim(&m->cfg), H = m->cfg.mlp_hidden, E = m->cfg.embed_dim;
    op_linear_forward_cpu(hpre, pooled, P(m, net->fc1_w), P(m, net->fc1_b), rows, PD, H);
    op_relu_forward_cpu(hid, hpre, (size_t)rows * H);
    op_linear_forward_cpu(z, hid, P(m, net->fc2_w), P(m, net->fc2_b), rows, H, E);
    op_l2norm_forward_cpu(out, norm, z, rows, E);
}

/* The organ descriptors of n samples: pooled [n*k1][P] from feat
 * [n][c0][s] inside seg [n][s].  MEANMAX computes the means into pmean
 * [n*k1][c0] and copies them into the first half of each row; the maxima
 * (winners in arg) go straight into the second half. */
static void pool_forward(const mdl_config *cfg, float *pooled, float *pmean, int64_t *arg,
                         int64_t *count, const float *feat, const uint8_t *seg, int n, int k1,
                         int c0, size_t s)
{
    int PD = mdl_pool_dim(cfg);
    for (int b = 0; b < n; b++) {
        const float *f = feat + (size_t)b * c0 * s;
        const uint8_t *l = seg + (size_t)b * s;
        float *pr = pooled + (size_t)b * k1 * PD;
        if (cfg->pool == MDL_POOL_MEAN) {
            op_mpool_forward_cpu(pr, count + (size_t)b * k1, f, l, k1, c0, s);
            continue;
        }
        float *pm = pmean + (size_t)b * k1 * c0;
        op_mpool_forward_cpu(pm, count + (size_t)b * k1, f, l, k1, c0, s);
        for (int j = 0; j < k1; j++)
            memcpy(pr + (size_t)j * PD, pm + (size_t)j * c0, (size_t)c0 * sizeof(float));
        op_xpool_forward_cpu(pr + c0, PD, arg + (size_t)b * k1 * c0, f, l, k1, c0, s);
    }
}

/* The convolutional part (through the head) and, when embed, the organ
 * pooling and MLP. */
static int fwd(const mdl_model *m, mdl_acts *a, const float *hu, const uint8_t *labels, int embed)
{
    struct mdl__acts *p = a->p;
    const struct mdl__net *net = m->net;
    int n = a->n, D = net->depth, k1 = a->k1, err;
    if (p->m != m) return CTG_EINVAL;
    normalise(&m->cfg, p->x0, hu, (size_t)n * m->cfg.in_ch * a->s);
    for (int l = 0; l <= D; l++)
        if ((err = blk_forward(m, &net->enc[l], &p->enc[l], l ? p->enc[l - 1].o : p->x0, n,
                               p->scr[0])))
            return err;
    for (int l = D - 1; l >= 0; l--) {
        const float *below = l == D - 1 ? p->enc[D].o : p->dec[l + 1].o;
        if ((err = op_conv3d_forward_cpu(p->upc[l], p->up[l], below, P(m, net->up_w[l]),
                                         P(m, net->up_b[l]))))
            return err;
        op_concat_forward_cpu(p->cat[l], p->up[l], p->enc[l].o, n, net->ch[l], net->ch[l],
                              p->sl[l]);
        if ((err = blk_forward(m, &net->dec[l], &p->dec[l], p->cat[l], n, p->scr[0])))
            return err;
    }
    if ((err = op_conv3d_forward_cpu(p->head, a->logits, a->feat, P(m, net->head_w),
                                     P(m, net->head_b))))
        return err;
    size_t rows = (size_t)n * k1;
    memset(a->dlogits, 0, rows * a->s * sizeof(float));
    memset(a->dembed, 0, rows * m->cfg.embed_dim * sizeof(float));
    if (!embed) return 0;

    if (labels)
        memcpy(a->seg, labels, (size_t)n * a->s);
    else
        op_argmax_cpu(a->seg, a->logits, n, k1, a->s);
    pool_forward(&m->cfg, p->pooled, p->pmean, p->parg, a->count, a->feat, a->seg, n, k1,
                 net->ch[0], a->s);
    mlp_forward(m, p->pooled, (int)rows, p->hpre, p->hid, p->z, p->norm, a->embed);
    return 0;
}

int mdl_forward(const mdl_model *m, mdl_acts *a, const float *hu, const uint8_t *labels)
{
    return fwd(m, a, hu, labels, 1);
}

int mdl_embed_pooled(const mdl_model *m, const float *pooled, int rows, float *out)
{
    size_t H = m->cfg.mlp_hidden, E = m->cfg.embed_dim, r = rows > 0 ? rows : 1;
    float *hpre = malloc(r * H * sizeof(float)), *hid = malloc(r * H * sizeof(float));
    float *z = malloc(r * E * sizeof(float)), *norm = malloc(r * sizeof(float));
    int err = CTG_ENOMEM;
    if (!hpre || !hid || !z || !norm) goto fail;
    mlp_forward(m, pooled, rows, hpre, hid, z, norm, out);
    err = 0;
fail:
    free(hpre);
    free(hid);
    free(z);
    free(norm);
    return err;
}

/* ---- losses ---------------------------------------------------------------------------- */

int mdl_seg_loss(const mdl_model *m, mdl_acts *a, const uint8_t *labels, float weight, float *ce,
                 float *dice)
{
    struct mdl__acts *p = a->p;
    int n = a->n, k1 = a->k1, err;
    float lce = 0, ldice = 0;
    if (p->m != m) return CTG_EINVAL;
    if ((err = op_softmax_ce_forward_cpu(&lce, a->prob, a->logits, labels, NULL, MDL_IGNORE, n,
                                         k1, a->s)))
        return err;
    /* Dice over the organs only: background dominates every patch and its
     * Dice is near 1 from the start, so it would only dilute the mean. */
    if ((err = op_dice_forward_cpu(&ldice, a->prob, labels, MDL_IGNORE, 1, n, k1, a->s)))
        return err;
    if (weight != 0.0f) {
        size_t cnt = (size_t)n * k1 * a->s;
        op_softmax_ce_backward_cpu(a->dlogits, weight, a->prob, labels, NULL, MDL_IGNORE, n, k1,
                                   a->s);
        memset(p->dprob, 0, cnt * sizeof(float));
        if ((err = op_dice_backward_cpu(p->dprob, weight, a->prob, labels, MDL_IGNORE, 1, n, k1,
                                        a->s)))
            return err;
        op_softmax_backward_cpu(a->dlogits, p->dprob, a->prob, n, k1, a->s);
    }
    if (ce) *ce = lce;
    if (dice) *dice = ldice;
    return 0;
}

/* ---- backward ---------------------------------------------------------------------------- */

static void zero(float *x, size_t cnt) { memset(x, 0, cnt * sizeof(float)); }

/* Given ba->dout, adds the block's parameter gradients and, when dx is not
 * NULL, dL/dx to dx.  s1..s3 are scratch of the block's output size. */
static int blk_backward(mdl_model *m, const blk *b, blk_acts *ba, const float *x, float *dx,
                        int n, float *s1, float *s2, float *s3)
{
    float slope = m->cfg.slope;
    size_t so = ba->s_out, cnt = (size_t)n * b->cout * so;
    int err;
    /* s1 = d(pre-activation sum), which flows to both branches. */
    zero(s1, cnt);
    op_lrelu_backward_cpu(s1, ba->dout, ba->o, cnt, slope);
    zero(s2, cnt);
    op_inorm_backward_cpu(s2, G(m, b->g2), G(m, b->b2), s1, ba->h2, ba->m2, ba->r2, P(m, b->g2),
                          n, b->cout, so);
    zero(s3, cnt);
    if ((err = op_conv3d_backward_cpu(ba->c2, s3, G(m, b->w2), NULL, s2, ba->a1, P(m, b->w2))))
        return err;
    zero(s2, cnt);
    op_lrelu_backward_cpu(s2, s3, ba->a1, cnt, slope);
    zero(s3, cnt);
    op_inorm_backward_cpu(s3, G(m, b->g1), G(m, b->b1), s2, ba->h1, ba->m1, ba->r1, P(m, b->g1),
                          n, b->cout, so);
    if ((err = op_conv3d_backward_cpu(ba->c1, dx, G(m, b->w1), NULL, s3, x, P(m, b->w1))))
        return err;
    zero(s2, cnt);
    op_inorm_backward_cpu(s2, G(m, b->gs), G(m, b->bs), s1, ba->hs, ba->ms, ba->rs, P(m, b->gs),
                          n, b->cout, so);
    return op_conv3d_backward_cpu(ba->cs, dx, G(m, b->ws), NULL, s2, x, P(m, b->ws));
}

int mdl_backward(mdl_model *m, mdl_acts *a, const float *dlogits, const float *dembed)
{
    struct mdl__acts *p = a->p;
    const struct mdl__net *net = m->net;
    int n = a->n, D = net->depth, k1 = a->k1, err;
    int C0 = net->ch[0], H = m->cfg.mlp_hidden, E = m->cfg.embed_dim;
    size_t rows = (size_t)n * k1;
    if (!m->grads) return CTG_ESTATE;
    if (p->m != m) return CTG_EINVAL;

    for (int l = 0; l <= D; l++)
        zero(p->enc[l].dout, (size_t)n * net->ch[l] * p->sl[l]);
    for (int l = 0; l < D; l++) zero(p->dec[l].dout, (size_t)n * net->ch[l] * p->sl[l]);

    if (dlogits &&
        (err = op_conv3d_backward_cpu(p->head, p->dfeat, G(m, net->head_w), G(m, net->head_b),
                                      dlogits, a->feat, P(m, net->head_w))))
        return err;
    if (dembed) {
        /* An absent organ's row is the MLP of a zero vector, not an
         * embedding of anything; whatever the caller put there must not
         * train the MLP. */
        memcpy(p->dem, dembed, rows * E * sizeof(float));
        for (size_t r = 0; r < rows; r++)
            if (a->count[r] == 0) zero(p->dem + r * E, E);
        zero(p->dz, rows * E);
        op_l2norm_backward_cpu(p->dz, p->dem, a->embed, p->norm, (int)rows, E);
        zero(p->dhid, rows * H);
        op_linear_backward_cpu(p->dhid, G(m, net->fc2_w), G(m, net->fc2_b), p->dz, p->hid,
                               P(m, net->fc2_w), (int)rows, H, E);
        zero(p->dhpre, rows * H);
        op_relu_backward_cpu(p->dhpre, p->dhid, p->hpre, rows * H);
        int PD = mdl_pool_dim(&m->cfg);
        zero(p->dpooled, rows * PD);
        op_linear_backward_cpu(p->dpooled, G(m, net->fc1_w), G(m, net->fc1_b), p->dhpre,
                               p->pooled, P(m, net->fc1_w), (int)rows, PD, H);
        for (int b = 0; b < n; b++) {
            float *df = p->dfeat + (size_t)b * C0 * a->s, *dp = p->dpooled + (size_t)b * k1 * PD;
            const uint8_t *l = a->seg + (size_t)b * a->s;
            if (m->cfg.pool == MDL_POOL_MEAN) {
                op_mpool_backward_cpu(df, dp, a->count + (size_t)b * k1, l, k1, C0, a->s);
                continue;
            }
            float *dm = p->pmean + (size_t)b * k1 * C0;
            for (int j = 0; j < k1; j++)
                memcpy(dm + (size_t)j * C0, dp + (size_t)j * PD, (size_t)C0 * sizeof(float));
            op_mpool_backward_cpu(df, dm, a->count + (size_t)b * k1, l, k1, C0, a->s);
            op_xpool_backward_cpu(df, dp + C0, PD, p->parg + (size_t)b * k1 * C0, k1, C0, a->s);
        }
    }

    for (int l = 0; l < D; l++) {
        const blk *b = &net->dec[l];
        size_t s = p->sl[l], c = (size_t)net->ch[l];
        float *dcat = p->scr[0], *dup = p->scr[4];
        zero(dcat, (size_t)n * 2 * c * s);
        if ((err = blk_backward(m, b, &p->dec[l], p->cat[l], dcat, n, p->scr[1], p->scr[2],
                                p->scr[3])))
            return err;
        zero(dup, (size_t)n * c * s);
        op_concat_backward_cpu(dup, p->enc[l].dout, dcat, n, (int)c, (int)c, s);
        float *dbelow = l == D - 1 ? p->enc[D].dout : p->dec[l + 1].dout;
        const float *below = l == D - 1 ? p->enc[D].o : p->dec[l + 1].o;
        if ((err = op_conv3d_backward_cpu(p->upc[l], dbelow, G(m, net->up_w[l]),
                                          G(m, net->up_b[l]), dup, below, P(m, net->up_w[l]))))
            return err;
    }
    for (int l = D; l >= 0; l--) {
        /* The image needs no gradient (ops.h: and oneDNN's backward-data
         * for one input channel is slow). */
        if ((err = blk_backward(m, &net->enc[l], &p->enc[l], l ? p->enc[l - 1].o : p->x0,
                                l ? p->enc[l - 1].dout : NULL, n, p->scr[1], p->scr[2],
                                p->scr[3])))
            return err;
    }
    return 0;
}

/* ---- text side -------------------------------------------------------------------------- */

int mdl_text_forward(const mdl_model *m, float *out, float *norm, const float *in, int rows)
{
    const struct mdl__net *net = m->net;
    int E = m->cfg.embed_dim;
    if (net->txt_w < 0) {
        op_l2norm_forward_cpu(out, norm, in, rows, E);
        return 0;
    }
    float *z = malloc((size_t)(rows > 0 ? rows : 1) * E * sizeof(float));
    if (!z) return CTG_ENOMEM;
    op_linear_forward_cpu(z, in, P(m, net->txt_w), P(m, net->txt_b), rows, m->cfg.text_dim, E);
    op_l2norm_forward_cpu(out, norm, z, rows, E);
    free(z);
    return 0;
}

int mdl_text_backward(mdl_model *m, const float *dout, const float *out, const float *norm,
                      const float *in, int rows)
{
    const struct mdl__net *net = m->net;
    int E = m->cfg.embed_dim;
    if (!m->grads) return CTG_ESTATE;
    if (net->txt_w < 0) return 0;
    float *dz = calloc((size_t)(rows > 0 ? rows : 1) * E, sizeof(float));
    if (!dz) return CTG_ENOMEM;
    op_l2norm_backward_cpu(dz, dout, out, norm, rows, E);
    op_linear_backward_cpu(NULL, G(m, net->txt_w), G(m, net->txt_b), dz, in, P(m, net->txt_w),
                           rows, m->cfg.text_dim, E);
    free(dz);
    return 0;
}

/* ---- sliding-window inference --------------------------------------------------------------- */

int mdl_window_starts(int len, int win, int step, int *st, int cap)
{
    int k = 0;
    for (int s = 0; k < cap; s += step) {
        if (s + win >= len) {
            st[k++] = len - win > 0 ? len - win : 0;
            break;
        }
        st[k++] = s;
    }
    return k;
}

int mdl_infer(const mdl_model *m, mdl_acts *a, const ctg_vol *hu, float overlap,
              ctg_vol **labels, float *embed, int64_t *count, float *logits)
{
    const mdl_config *c = &m->cfg;
    int pd = c->patch[0], ph = c->patch[1], pw = c->patch[2];
    int k1 = c->n_classes + 1, C0 = m->net->ch[0], err = CTG_EINVAL;
    mdl_acts *own = NULL;
    float *lsum = NULL, *fsum = NULL, *wsum = NULL, *in = NULL, *pooled = NULL, *pmean = NULL;
    int64_t *parg = NULL;
    uint8_t *lab = NULL;
    int64_t *cnt = NULL;
    int *sz = NULL, *sy = NULL, *sx = NULL;
    ctg_vol *lv = NULL;
    if (labels) *labels = NULL;
    if (!hu || hu->dtype != CTG_F32 || !(overlap >= 0.0f && overlap < 1.0f) || c->in_ch != 1)
        goto fail;
    if (!a) {
        if ((err = mdl_acts_new(m, 1, pd, ph, pw, &own))) goto fail;
        a = own;
    }
    err = CTG_EINVAL;
    if (a->n != 1 || a->d != pd || a->h != ph || a->w != pw) goto fail;
    int nx = hu->nx, ny = hu->ny, nz = hu->nz;
    size_t V = (size_t)nx * ny * nz, s = a->s;
    err = CTG_ENOMEM;
    lsum = logits ? logits : malloc((size_t)k1 * V * sizeof(float));
    fsum = calloc((size_t)C0 * V, sizeof(float));
    wsum = calloc(V, sizeof(float));
    in = malloc(s * sizeof(float));
    lab = malloc(V);
    cnt = calloc(k1, sizeof *cnt);
    pooled = calloc((size_t)k1 * mdl_pool_dim(c), sizeof(float));
    pmean = calloc((size_t)k1 * C0, sizeof(float));
    parg = calloc((size_t)k1 * C0, sizeof(int64_t));
    sz = malloc((nz + 1) * sizeof(int));
    sy = malloc((ny + 1) * sizeof(int));
    sx = malloc((nx + 1) * sizeof(int));
    if (!lsum || !fsum || !wsum || !in || !lab || !cnt || !pooled || !pmean || !parg || !sz ||
        !sy || !sx)
        goto fail;
    memset(lsum, 0, (size_t)k1 * V * sizeof(float));

    int stz = (int)lroundf(pd * (1.0f - overlap)), sty = (int)lroundf(ph * (1.0f - overlap)),
        stx = (int)lroundf(pw * (1.0f - overlap));
    int nwz = mdl_window_starts(nz, pd, stz > 0 ? stz : 1, sz, nz + 1);
    int nwy = mdl_window_starts(ny, ph, sty > 0 ? sty : 1, sy, ny + 1);
    int nwx = mdl_window_starts(nx, pw, stx > 0 ? stx : 1, sx, nx + 1);
    const float *src = hu->data;
    for (int iz = 0; iz < nwz; iz++)
        for (int iy = 0; iy < nwy; iy++)
            for (int ix = 0; ix < nwx; ix++) {
                int z0 = sz[iz], y0 = sy[iy], x0 = sx[ix];
                int ez = nz - z0 < pd ? nz - z0 : pd, ey = ny - y0 < ph ? ny - y0 : ph,
                    ex = nx - x0 < pw ? nx - x0 : pw;
                /* Outside the volume the window sees air at the window's
                 * low end, which is what a CT's surroundings are. */
                for (size_t i = 0; i < s; i++) in[i] = c->hu_lo;
                for (int z = 0; z < ez; z++)
                    for (int y = 0; y < ey; y++)
                        memcpy(in + ((size_t)z * ph + y) * pw,
                               src + ((size_t)(z0 + z) * ny + (y0 + y)) * nx + x0,
                               (size_t)ex * sizeof(float));
                if ((err = fwd(m, a, in, NULL, 0))) goto fail;
                for (int z = 0; z < ez; z++)
                    for (int y = 0; y < ey; y++) {
                        size_t vo = ((size_t)(z0 + z) * ny + (y0 + y)) * nx + x0;
                        size_t wo = ((size_t)z * ph + y) * pw;
                        for (int ch = 0; ch < k1; ch++)
                            op_acc_cpu(lsum + ch * V + vo, a->logits + ch * s + wo, ex);
                        for (int ch = 0; ch < C0; ch++)
                            op_acc_cpu(fsum + ch * V + vo, a->feat + ch * s + wo, ex);
                        for (int x = 0; x < ex; x++) wsum[vo + x] += 1.0f;
                    }
            }
    for (size_t v = 0; v < V; v++) wsum[v] = 1.0f / wsum[v];
    for (int ch = 0; ch < k1; ch++)
        for (size_t v = 0; v < V; v++) lsum[ch * V + v] *= wsum[v];
    for (int ch = 0; ch < C0; ch++)
        for (size_t v = 0; v < V; v++) fsum[ch * V + v] *= wsum[v];
    op_argmax_cpu(lab, lsum, 1, k1, V);
    pool_forward(c, pooled, pmean, parg, cnt, fsum, lab, 1, k1, C0, V);
    if (embed && (err = mdl_embed_pooled(m, pooled, k1, embed))) goto fail;
    if (count) memcpy(count, cnt, k1 * sizeof *cnt);
    if (labels) {
        err = CTG_ENOMEM;
        if (!(lv = ctg_vol_new(nx, ny, nz, CTG_U8))) goto fail;
        memcpy(lv->aff, hu->aff, sizeof lv->aff);
        uint8_t *o = lv->data;
        for (size_t v = 0; v < V; v++) o[v] = lab[v] ? (uint8_t)m->class_ids[lab[v] - 1] : 0;
        *labels = lv;
        lv = NULL;
    }
    err = 0;
fail:
    if (lsum != logits) free(lsum);
    free(fsum);
    free(wsum);
    free(in);
    free(lab);
    free(cnt);
    free(pooled);
    free(pmean);
    free(parg);
    free(sz);
    free(sy);
    free(sx);
    ctg_vol_free(lv);
    mdl_acts_free(own);
    return err;
}
