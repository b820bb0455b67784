/*
 * ops_conv.c - 3-D convolution and k2s2 transposed convolution on the CPU
 * through oneDNN's C API, forward, backward-data and backward-weights.
 *
 * The caller's tensors stay plain NCDHW / OIDHW.  oneDNN is asked for its
 * preferred layouts (format_tag_any), which on x86 are channel-blocked
 * (nCdhw16c and friends): measured on AVX-512, that is 2-3x faster than
 * plain layouts for forward and backward-data and ~7x for backward-weights,
 * while the reorders into and out of them cost a few percent.  So every call
 * reorders its inputs into the ctx's scratch arena, runs the primitive there
 * and reorders the result back.  Gradients come back through a reorder with
 * a "sum" post-op, which is how the backward adds into the caller's buffers
 * (ops.h convention) within the reorder it needs anyway.
 *
 * The k2s2 transposed convolution does not go through oneDNN's
 * deconvolution (measured at ~20% of peak): its 2x2x2 output blocks do not
 * overlap, so it is one matrix product W'[cout*8][cin] x X[cin][voxels]
 * (dnnl_sgemm) followed by a "pixel shuffle" that spreads the 8 rows of
 * each output channel over the 2x2x2 blocks; the backward passes are the
 * transposed products after the inverse shuffle.  Measured 30-55% of peak,
 * 1.6x faster than the deconvolution primitive over the three passes.
 *
 * Threading: oneDNN runs each primitive on the OpenMP threads of the calling
 * thread (see op_set_threads).  A context and its plans are used by one
 * thread at a time; the arena is shared by all plans of a context, which is
 * safe because their calls never overlap.
 */
#include "core/ops.h"

#include "core/core.h"

#include <dnnl.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/ops_int.h"

/* ---- threads ------------------------------------------------------------- */

void op_set_threads(int n)
{
#ifdef _OPENMP
    /* omp_set_num_threads changes only the calling thread's setting, which is
     * what we want: each worker thread picks its own share of the cores. */
    if (n <= 0) {
        const char *env = getenv("OMP_NUM_THREADS");
        n = env && atoi(env) > 0 ? atoi(env) : omp_get_num_procs();
    }
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}

int op_get_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* ---- context ---------------------------------------------------------------- */

struct op_ctx {
    dnnl_engine_t eng;
    dnnl_stream_t str;
    void *slot[2]; /* scratch for blocked copies of activations */
    size_t cap[2];
};

static int dnnl_err(dnnl_status_t s)
{
    if (s == dnnl_success) return 0;
    if (s == dnnl_out_of_memory) return CTG_ENOMEM;
    if (s == dnnl_invalid_arguments || s == dnnl_unimplemented) return CTG_EINVAL;
    return CTG_EIO;
}

int op_ctx_new(op_ctx **out)
{
    *out = NULL;
    op_ctx *c = calloc(1, sizeof *c);
    if (!c) return CTG_ENOMEM;
    int rc = dnnl_err(dnnl_engine_create(&c->eng, dnnl_cpu, 0));
    if (rc) goto fail;
    rc = dnnl_err(dnnl_stream_create(&c->str, c->eng, dnnl_stream_default_flags));
    if (rc) goto fail;
    *out = c;
    return 0;
fail:
    op_ctx_free(c);
    return rc;
}

void op_ctx_free(op_ctx *c)
{
    if (!c) return;
    if (c->str) dnnl_stream_destroy(c->str);
    if (c->eng) dnnl_engine_destroy(c->eng);
    free(c->slot[0]);
    free(c->slot[1]);
    free(c);
}

size_t op_ctx_scratch_bytes(const op_ctx *c) { return c ? c->cap[0] + c->cap[1] : 0; }

/* Scratch slot i with at least `bytes`, 64-byte aligned for the JIT kernels.
 * The old contents are not kept. */
static void *slot_get(op_ctx *c, int i, size_t bytes)
{
    if (c->cap[i] >= bytes) return c->slot[i];
    free(c->slot[i]);
    c->cap[i] = 0;
    size_t sz = (bytes + 63) & ~(size_t)63;
    c->slot[i] = aligned_alloc(64, sz);
    if (c->slot[i]) c->cap[i] = sz;
    return c->slot[i];
}

/* ---- geometry ------------------------------------------------------------------ */

op_conv_geom op_conv_geom_make(int n, int cin, int cout, int d, int h, int w, int k, int stride)
{
    op_conv_geom g = {n, cin, cout, d, h, w, k, stride, k / 2, 0};
    return g;
}

op_conv_geom op_deconv_geom_make(int n, int cin, int cout, int d, int h, int w)
{
    op_conv_geom g = {n, cin, cout, d, h, w, 2, 2, 0, 1};
    return g;
}

int op_conv_geom_check(const op_conv_geom *g)
{
    if (g->n <= 0 || g->cin <= 0 || g->cout <= 0 || g->d <= 0 || g->h <= 0 || g->w <= 0)
        return CTG_EINVAL;
    if (g->transposed) {
        if (g->k != 2 || g->stride != 2 || g->pad != 0) return CTG_EINVAL;
    } else {
        if (!((g->k == 3 && g->pad == 1) || (g->k == 1 && g->pad == 0))) return CTG_EINVAL;
        if (g->stride != 1 && g->stride != 2) return CTG_EINVAL;
    }
    /* Keep every count well inside what int loops and oneDNN dims hold. */
    double big = (double)g->n * (g->cin > g->cout ? g->cin : g->cout) * g->d * g->h * g->w *
                 (g->transposed ? 8 : 1);
    if (big > 1e10) return CTG_EINVAL;
    return 0;
}

static int out_dim(const op_conv_geom *g, int i)
{
    if (g->transposed) return 2 * i;
    return (i + 2 * g->pad - g->k) / g->stride + 1;
}

void op_conv_out_size(const op_conv_geom *g, int *od, int *oh, int *ow)
{
    *od = out_dim(g, g->d);
    *oh = out_dim(g, g->h);
    *ow = out_dim(g, g->w);
}

size_t op_conv_in_count(const op_conv_geom *g)
{
    return (size_t)g->n * g->cin * g->d * g->h * g->w;
}

size_t op_conv_out_count(const op_conv_geom *g)
{
    int od, oh, ow;
    op_conv_out_size(g, &od, &oh, &ow);
    return (size_t)g->n * g->cout * od * oh * ow;
}

size_t op_conv_weight_count(const op_conv_geom *g)
{
    return (size_t)g->cout * g->cin * g->k * g->k * g->k;
}

double op_conv_flops(const op_conv_geom *g)
{
    /* 2 * cin * cout * k^3 per position the kernel visits: each output
     * voxel of an ordinary convolution, each input voxel of a transposed
     * one. */
    double k3 = (double)g->k * g->k * g->k;
    if (g->transposed) return 2.0 * g->n * g->cin * g->cout * k3 * g->d * g->h * g->w;
    int od, oh, ow;
    op_conv_out_size(g, &od, &oh, &ow);
    return 2.0 * g->n * g->cin * g->cout * k3 * (double)od * oh * ow;
}

/* ---- plans ------------------------------------------------------------------------ */

/* One memory object per tensor role: either the caller's plain layout or
 * the primitive's own, with the data pointer set on every call. */
typedef struct stage {
    dnnl_memory_t mem;      /* in the primitive's layout */
    dnnl_primitive_t in;    /* caller -> primitive layout; NULL when equal */
    dnnl_primitive_t out;   /* primitive -> caller layout (sum for gradients) */
    size_t bytes;           /* size in the primitive's layout */
} stage;

struct op_conv {
    op_ctx *ctx;
    op_conv_geom g;
    dnnl_memory_desc_t u_src, u_wei, u_bias, u_dst; /* the caller's layouts */
    dnnl_memory_t m_src, m_wei, m_bias, m_dst;      /* ... as memory objects */
    dnnl_primitive_desc_t fpd, dpd, wpd;            /* forward, bwd data, bwd weights */
    dnnl_primitive_t fwd, bwd_d, bwd_w;
    stage f_src, f_wei, f_dst;
    stage d_dsrc, d_wei, d_ddst;
    stage w_src, w_dwei, w_ddst;
    float *wei_buf, *dwei_buf, *dbias, *zero_bias; /* owned, small */
    size_t wei_cap;
    int bwd_made;
    int gemm; /* transposed k2s2 through sgemm + shuffle */
};

static void stage_free(stage *s)
{
    if (s->mem) dnnl_memory_destroy(s->mem);
    if (s->in) dnnl_primitive_destroy(s->in);
    if (s->out) dnnl_primitive_destroy(s->out);
    memset(s, 0, sizeof *s);
}

void op_conv_free(op_conv *p)
{
    if (!p) return;
    stage *st[] = {&p->f_src, &p->f_wei, &p->f_dst, &p->d_dsrc, &p->d_wei,
                   &p->d_ddst, &p->w_src, &p->w_dwei, &p->w_ddst};
    for (size_t i = 0; i < sizeof st / sizeof st[0]; i++) stage_free(st[i]);
    dnnl_memory_t mems[] = {p->m_src, p->m_wei, p->m_bias, p->m_dst};
    for (size_t i = 0; i < 4; i++)
        if (mems[i]) dnnl_memory_destroy(mems[i]);
    dnnl_primitive_t prims[] = {p->fwd, p->bwd_d, p->bwd_w};
    dnnl_primitive_desc_t pds[] = {p->fpd, p->dpd, p->wpd};
    for (size_t i = 0; i < 3; i++) {
        if (prims[i]) dnnl_primitive_destroy(prims[i]);
        if (pds[i]) dnnl_primitive_desc_destroy(pds[i]);
    }
    free(p->wei_buf);
    free(p->dwei_buf);
    free(p->dbias);
    free(p->zero_bias);
    free(p);
}

const op_conv_geom *op_conv_geometry(const op_conv *p) { return &p->g; }

const char *op_conv_impl(const op_conv *p, int pass)
{
    if (p->gemm) return "sgemm+shuffle";
    const_dnnl_primitive_desc_t pd = pass == 0 ? p->fpd : pass == 1 ? p->dpd : p->wpd;
    const char *s = NULL;
    if (!pd || dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &s) != dnnl_success ||
        !s)
        return "";
    return s;
}

static int reorder_new(op_ctx *c, const dnnl_memory_desc_t *from, const dnnl_memory_desc_t *to,
                       int sum, dnnl_primitive_t *out)
{
    dnnl_post_ops_t po = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    int rc = 0;
    *out = NULL;
    if (sum) {
        /* dst = reorder(src) + 1.0 * dst: the backward's "add into". */
        rc = dnnl_err(dnnl_post_ops_create(&po));
        if (!rc) rc = dnnl_err(dnnl_post_ops_append_sum(po, 1.0f));
        if (!rc) rc = dnnl_err(dnnl_primitive_attr_create(&attr));
        if (!rc) rc = dnnl_err(dnnl_primitive_attr_set_post_ops(attr, po));
        if (rc) goto fail;
    }
    rc = dnnl_err(dnnl_reorder_primitive_desc_create(&pd, from, c->eng, to, c->eng, attr));
    if (rc) goto fail;
    rc = dnnl_err(dnnl_primitive_create(out, pd));
fail:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (po) dnnl_post_ops_destroy(po);
    return rc;
}

/* Sets up a stage for a tensor the primitive reads (ST_IN) and/or writes
 * back to the caller (ST_OUT_SUM: adding; ST_OUT_COPY: overwriting, and
 * only when the layouts differ). */
enum { ST_IN = 1, ST_OUT_COPY = 2, ST_OUT_SUM = 4 };

static int stage_new(op_conv *p, stage *s, const dnnl_memory_desc_t *user,
                     const dnnl_memory_desc_t *prim, int how)
{
    int rc = dnnl_err(dnnl_memory_create(&s->mem, prim, p->ctx->eng, DNNL_MEMORY_NONE));
    if (rc) return rc;
    s->bytes = dnnl_memory_desc_get_size(prim);
    int same = dnnl_memory_desc_equal(user, prim);
    if ((how & ST_IN) && !same) {
        rc = reorder_new(p->ctx, user, prim, 0, &s->in);
        if (rc) return rc;
    }
    if ((how & ST_OUT_COPY) && !same) rc = reorder_new(p->ctx, prim, user, 0, &s->out);
    if (how & ST_OUT_SUM) rc = reorder_new(p->ctx, prim, user, 1, &s->out);
    return rc;
}

static int md_init(dnnl_memory_desc_t *md, int nd, const dnnl_dims_t dims, dnnl_format_tag_t tag)
{
    return dnnl_err(dnnl_memory_desc_init_by_tag(md, nd, dims, dnnl_f32, tag));
}

/* The operation descriptor of one pass; conv and deconv descriptors are the
 * same C type in oneDNN 2.x. */
static int desc_init(const op_conv *p, int pass, dnnl_convolution_desc_t *cd,
                     const dnnl_memory_desc_t *src, const dnnl_memory_desc_t *wei,
                     const dnnl_memory_desc_t *bias, const dnnl_memory_desc_t *dst)
{
    const op_conv_geom *g = &p->g;
    int od, oh, ow;
    op_conv_out_size(g, &od, &oh, &ow);
    dnnl_dims_t strides = {g->stride, g->stride, g->stride};
    dnnl_dims_t pl = {g->pad, g->pad, g->pad};
    /* The right padding that makes oneDNN's size rule give our output size
     * (stride-2 layers on odd sizes need one less on the far side). */
    dnnl_dims_t pr;
    int in[3] = {g->d, g->h, g->w}, o[3] = {od, oh, ow};
    for (int i = 0; i < 3; i++)
        pr[i] = g->transposed ? (in[i] - 1) * g->stride + g->k - o[i] - g->pad
                              : (o[i] - 1) * g->stride + g->k - in[i] - g->pad;
    dnnl_status_t s;
    if (!g->transposed) {
        if (pass == 0)
            s = dnnl_convolution_forward_desc_init(cd, dnnl_forward_training,
                                                   dnnl_convolution_direct, src, wei, bias, dst,
                                                   strides, pl, pr);
        else if (pass == 1)
            s = dnnl_convolution_backward_data_desc_init(cd, dnnl_convolution_direct, src, wei,
                                                         dst, strides, pl, pr);
        else
            s = dnnl_convolution_backward_weights_desc_init(cd, dnnl_convolution_direct, src, wei,
                                                            bias, dst, strides, pl, pr);
    } else {
        if (pass == 0)
            s = dnnl_deconvolution_forward_desc_init(cd, dnnl_forward_training,
                                                     dnnl_deconvolution_direct, src, wei, bias,
                                                     dst, strides, pl, pr);
        else if (pass == 1)
            s = dnnl_deconvolution_backward_data_desc_init(cd, dnnl_deconvolution_direct, src,
                                                           wei, dst, strides, pl, pr);
        else
            s = dnnl_deconvolution_backward_weights_desc_init(cd, dnnl_deconvolution_direct, src,
                                                              wei, bias, dst, strides, pl, pr);
    }
    return dnnl_err(s);
}

static const dnnl_memory_desc_t *qmd(const_dnnl_primitive_desc_t pd, dnnl_query_t q)
{
    return dnnl_primitive_desc_query_md(pd, q, 0);
}

static int wei_bufs(op_conv *p, size_t bytes)
{
    if (bytes <= p->wei_cap) return 0;
    free(p->wei_buf);
    p->wei_buf = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!p->wei_buf) {
        p->wei_cap = 0;
        return CTG_ENOMEM;
    }
    p->wei_cap = bytes;
    return 0;
}

int op_conv_new(op_ctx *ctx, const op_conv_geom *g, op_conv **out)
{
    *out = NULL;
    int rc = op_conv_geom_check(g);
    if (rc) return rc;
    op_conv *p = calloc(1, sizeof *p);
    if (!p) return CTG_ENOMEM;
    p->ctx = ctx;
    p->g = *g;
    if (g->transposed) {
        /* W' and dW' ([cout*8][cin]) and the bias gradient; no primitives. */
        size_t nw = op_conv_weight_count(g);
        p->gemm = 1;
        p->wei_buf = malloc(nw * sizeof(float));
        p->dwei_buf = malloc(nw * sizeof(float));
        p->dbias = malloc((size_t)g->cout * sizeof(float));
        if (!p->wei_buf || !p->dwei_buf || !p->dbias) {
            rc = CTG_ENOMEM;
            goto fail;
        }
        *out = p;
        return 0;
    }
    int od, oh, ow;
    op_conv_out_size(g, &od, &oh, &ow);
    dnnl_dims_t sd = {g->n, g->cin, g->d, g->h, g->w};
    dnnl_dims_t wd = {g->cout, g->cin, g->k, g->k, g->k};
    dnnl_dims_t bd = {g->cout};
    dnnl_dims_t dd = {g->n, g->cout, od, oh, ow};
    if ((rc = md_init(&p->u_src, 5, sd, dnnl_ncdhw)) ||
        (rc = md_init(&p->u_wei, 5, wd, dnnl_oidhw)) || (rc = md_init(&p->u_bias, 1, bd, dnnl_x)) ||
        (rc = md_init(&p->u_dst, 5, dd, dnnl_ncdhw)))
        goto fail;
    dnnl_memory_desc_t a_src, a_wei, a_dst;
    if ((rc = md_init(&a_src, 5, sd, dnnl_format_tag_any)) ||
        (rc = md_init(&a_wei, 5, wd, dnnl_format_tag_any)) ||
        (rc = md_init(&a_dst, 5, dd, dnnl_format_tag_any)))
        goto fail;
    dnnl_memory_t *um[] = {&p->m_src, &p->m_wei, &p->m_bias, &p->m_dst};
    const dnnl_memory_desc_t *umd[] = {&p->u_src, &p->u_wei, &p->u_bias, &p->u_dst};
    for (int i = 0; i < 4; i++)
        if ((rc = dnnl_err(dnnl_memory_create(um[i], umd[i], ctx->eng, DNNL_MEMORY_NONE))))
            goto fail;

    dnnl_convolution_desc_t cd;
    if ((rc = desc_init(p, 0, &cd, &a_src, &a_wei, &p->u_bias, &a_dst))) goto fail;
    if ((rc = dnnl_err(dnnl_primitive_desc_create(&p->fpd, &cd, NULL, ctx->eng, NULL)))) goto fail;
    if ((rc = dnnl_err(dnnl_primitive_create(&p->fwd, p->fpd)))) goto fail;
    if ((rc = stage_new(p, &p->f_src, &p->u_src, qmd(p->fpd, dnnl_query_src_md), ST_IN)) ||
        (rc = stage_new(p, &p->f_wei, &p->u_wei, qmd(p->fpd, dnnl_query_weights_md), ST_IN)) ||
        (rc = stage_new(p, &p->f_dst, &p->u_dst, qmd(p->fpd, dnnl_query_dst_md), ST_OUT_COPY)))
        goto fail;
    if ((rc = wei_bufs(p, p->f_wei.bytes))) goto fail;
    p->zero_bias = calloc((size_t)g->cout, sizeof(float));
    if (!p->zero_bias) {
        rc = CTG_ENOMEM;
        goto fail;
    }
    *out = p;
    return 0;
fail:
    op_conv_free(p);
    return rc;
}

/* Builds the two backward primitives, with the forward as their hint. */
static int bwd_make(op_conv *p)
{
    const op_conv_geom *g = &p->g;
    int od, oh, ow;
    op_conv_out_size(g, &od, &oh, &ow);
    dnnl_dims_t sd = {g->n, g->cin, g->d, g->h, g->w};
    dnnl_dims_t wd = {g->cout, g->cin, g->k, g->k, g->k};
    dnnl_dims_t dd = {g->n, g->cout, od, oh, ow};
    dnnl_memory_desc_t a_src, a_wei, a_dst;
    int rc;
    if ((rc = md_init(&a_src, 5, sd, dnnl_format_tag_any)) ||
        (rc = md_init(&a_wei, 5, wd, dnnl_format_tag_any)) ||
        (rc = md_init(&a_dst, 5, dd, dnnl_format_tag_any)))
        return rc;
    dnnl_convolution_desc_t cd;
    if ((rc = desc_init(p, 1, &cd, &a_src, &a_wei, NULL, &a_dst))) return rc;
    if ((rc = dnnl_err(dnnl_primitive_desc_create(&p->dpd, &cd, NULL, p->ctx->eng, p->fpd))))
        return rc;
    if ((rc = dnnl_err(dnnl_primitive_create(&p->bwd_d, p->dpd)))) return rc;
    if ((rc = stage_new(p, &p->d_dsrc, &p->u_src, qmd(p->dpd, dnnl_query_diff_src_md),
                        ST_OUT_SUM)) ||
        (rc = stage_new(p, &p->d_wei, &p->u_wei, qmd(p->dpd, dnnl_query_weights_md), ST_IN)) ||
        (rc = stage_new(p, &p->d_ddst, &p->u_dst, qmd(p->dpd, dnnl_query_diff_dst_md), ST_IN)))
        return rc;

    if ((rc = desc_init(p, 2, &cd, &a_src, &a_wei, &p->u_bias, &a_dst))) return rc;
    if ((rc = dnnl_err(dnnl_primitive_desc_create(&p->wpd, &cd, NULL, p->ctx->eng, p->fpd))))
        return rc;
    if ((rc = dnnl_err(dnnl_primitive_create(&p->bwd_w, p->wpd)))) return rc;
    if ((rc = stage_new(p, &p->w_src, &p->u_src, qmd(p->wpd, dnnl_query_src_md), ST_IN)) ||
        (rc = stage_new(p, &p->w_dwei, &p->u_wei, qmd(p->wpd, dnnl_query_diff_weights_md),
                        ST_OUT_SUM)) ||
        (rc = stage_new(p, &p->w_ddst, &p->u_dst, qmd(p->wpd, dnnl_query_diff_dst_md), ST_IN)))
        return rc;
    if ((rc = wei_bufs(p, p->d_wei.bytes))) return rc;
    p->dwei_buf = aligned_alloc(64, (p->w_dwei.bytes + 63) & ~(size_t)63);
    p->dbias = malloc((size_t)g->cout * sizeof(float));
    if (!p->dwei_buf || !p->dbias) return CTG_ENOMEM;
    p->bwd_made = 1;
    return 0;
}

static int run(op_conv *p, dnnl_primitive_t prim, int n, const dnnl_exec_arg_t *args)
{
    return dnnl_err(dnnl_primitive_execute(prim, p->ctx->str, n, args));
}

static int set(dnnl_memory_t m, const void *ptr)
{
    /* oneDNN takes a non-const handle for every argument; inputs are only
     * read. */
    return dnnl_err(dnnl_memory_set_data_handle(m, (void *)ptr));
}

/* Brings a caller tensor into stage s's layout: either points s's memory at
 * the caller's data (same layout) or reorders into buf.  Returns the memory
 * object to give the primitive through *m. */
static int stage_in(op_conv *p, stage *s, dnnl_memory_t user, const float *data, void *buf,
                    dnnl_memory_t *m)
{
    int rc;
    if (!s->in) {
        if ((rc = set(s->mem, data))) return rc;
        *m = s->mem;
        return 0;
    }
    if ((rc = set(user, data)) || (rc = set(s->mem, buf))) return rc;
    dnnl_exec_arg_t a[] = {{DNNL_ARG_FROM, user}, {DNNL_ARG_TO, s->mem}};
    if ((rc = run(p, s->in, 2, a))) return rc;
    *m = s->mem;
    return 0;
}

/* ---- transposed k2s2 as sgemm + shuffle ------------------------------------------ */

/* W [o][i][t] (t = 4a + 2b + c, the tap) -> W' [o*8 + t][i]. */
static void wt_pack(const op_conv_geom *g, float *wt, const float *w)
{
    for (int o = 0; o < g->cout; o++)
        for (int i = 0; i < g->cin; i++)
            for (int t = 0; t < 8; t++)
                wt[((size_t)o * 8 + t) * g->cin + i] = w[((size_t)o * g->cin + i) * 8 + t];
}

/* y [cout*8][d*h*w] of one sample -> out [cout][2d][2h][2w] plus bias
 * (shuffle), or back (unshuffle, dir 1).  One output row (o, Z, Y) per
 * iteration; its even and odd x come from taps c = 0 and 1. */
static void shuffle(const op_conv_geom *g, float *out, float *y, const float *bias, int dir)
{
    int d = g->d, h = g->h, w = g->w;
    long rows = (long)g->cout * 2 * d * 2 * h;
    size_t sp = (size_t)d * h * w;
    PAR_FOR((size_t)rows * w > 16384)
    for (long r = 0; r < rows; r++) {
        int Y = (int)(r % (2 * h));
        long q = r / (2 * h);
        int Z = (int)(q % (2 * d));
        int o = (int)(q / (2 * d));
        int z = Z >> 1, a = Z & 1, yy = Y >> 1, b = Y & 1;
        float *orow = out + (size_t)r * 2 * w;
        size_t off = ((size_t)z * h + yy) * w;
        float *y0 = y + ((size_t)o * 8 + 4 * a + 2 * b) * sp + off; /* c = 0 */
        float *y1 = y0 + sp;                                       /* c = 1 */
        if (dir == 0) {
            float bo = bias ? bias[o] : 0.0f;
            for (int x = 0; x < w; x++) {
                orow[2 * x] = y0[x] + bo;
                orow[2 * x + 1] = y1[x] + bo;
            }
        } else {
            for (int x = 0; x < w; x++) {
                y0[x] = orow[2 * x];
                y1[x] = orow[2 * x + 1];
            }
        }
    }
}

static int gemm_forward(op_conv *p, float *out, const float *in, const float *w, const float *b)
{
    const op_conv_geom *g = &p->g;
    size_t sp = (size_t)g->d * g->h * g->w, osz = (size_t)g->cout * 8 * sp;
    float *y = slot_get(p->ctx, 1, osz * sizeof(float));
    if (!y) return CTG_ENOMEM;
    wt_pack(g, p->wei_buf, w);
    for (int n = 0; n < g->n; n++) {
        int rc = dnnl_err(dnnl_sgemm('N', 'N', (dnnl_dim_t)g->cout * 8, (dnnl_dim_t)sp, g->cin,
                                     1.0f, p->wei_buf, g->cin, in + (size_t)n * g->cin * sp,
                                     (dnnl_dim_t)sp, 0.0f, y, (dnnl_dim_t)sp));
        if (rc) return rc;
        shuffle(g, out + (size_t)n * osz, y, b, 0);
    }
    return 0;
}

static int gemm_backward(op_conv *p, float *din, float *dw, float *db, const float *dout,
                         const float *in, const float *w)
{
    const op_conv_geom *g = &p->g;
    size_t sp = (size_t)g->d * g->h * g->w, osz = (size_t)g->cout * 8 * sp;
    float *dy = slot_get(p->ctx, 1, osz * sizeof(float));
    if (!dy) return CTG_ENOMEM;
    if (din) wt_pack(g, p->wei_buf, w);
    for (int n = 0; n < g->n; n++) {
        const float *go = dout + (size_t)n * osz;
        shuffle(g, (float *)go, dy, NULL, 1); /* reads go only */
        int rc;
        if (din) {
            /* din[i][v] += sum_(o,t) W'[(o,t)][i] dY'[(o,t)][v] */
            rc = dnnl_err(dnnl_sgemm('T', 'N', g->cin, (dnnl_dim_t)sp, (dnnl_dim_t)g->cout * 8,
                                     1.0f, p->wei_buf, g->cin, dy, (dnnl_dim_t)sp, 1.0f,
                                     din + (size_t)n * g->cin * sp, (dnnl_dim_t)sp));
            if (rc) return rc;
        }
        if (dw) {
            /* dW'[(o,t)][i] (+)= sum_v dY'[(o,t)][v] X[i][v] */
            rc = dnnl_err(dnnl_sgemm('N', 'T', (dnnl_dim_t)g->cout * 8, g->cin, (dnnl_dim_t)sp,
                                     1.0f, dy, (dnnl_dim_t)sp, in + (size_t)n * g->cin * sp,
                                     (dnnl_dim_t)sp, n ? 1.0f : 0.0f, p->dwei_buf, g->cin));
            if (rc) return rc;
        }
        if (db) {
            for (int o = 0; o < g->cout; o++) {
                const float *plane = go + (size_t)o * 8 * sp;
                double t = 0;
                for (size_t i0 = 0; i0 < 8 * sp; i0 += 1024) {
                    size_t e = i0 + 1024 < 8 * sp ? i0 + 1024 : 8 * sp;
                    float s = 0;
                    OP__PRAGMA(omp simd reduction(+ : s))
                    for (size_t i = i0; i < e; i++) s += plane[i];
                    t += s;
                }
                p->dbias[o] = (n ? p->dbias[o] : 0.0f) + (float)t;
            }
        }
    }
    if (dw)
        for (int o = 0; o < g->cout; o++)
            for (int i = 0; i < g->cin; i++)
                for (int t = 0; t < 8; t++)
                    dw[((size_t)o * g->cin + i) * 8 + t] +=
                        p->dwei_buf[((size_t)o * 8 + t) * g->cin + i];
    if (db)
        for (int o = 0; o < g->cout; o++) db[o] += p->dbias[o];
    return 0;
}

int op_conv3d_forward_cpu(op_conv *p, float *out, const float *in, const float *w, const float *b)
{
    if (p->gemm) return gemm_forward(p, out, in, w, b);
    op_ctx *c = p->ctx;
    void *s0 = p->f_src.in ? slot_get(c, 0, p->f_src.bytes) : NULL;
    void *s1 = p->f_dst.out ? slot_get(c, 1, p->f_dst.bytes) : NULL;
    if ((p->f_src.in && !s0) || (p->f_dst.out && !s1)) return CTG_ENOMEM;
    dnnl_memory_t msrc, mwei;
    int rc;
    if ((rc = stage_in(p, &p->f_src, p->m_src, in, s0, &msrc)) ||
        (rc = stage_in(p, &p->f_wei, p->m_wei, w, p->wei_buf, &mwei)) ||
        (rc = set(p->m_bias, b ? b : p->zero_bias)) ||
        (rc = set(p->f_dst.mem, p->f_dst.out ? s1 : (void *)out)))
        return rc;
    dnnl_exec_arg_t a[] = {{DNNL_ARG_SRC, msrc},
                           {DNNL_ARG_WEIGHTS, mwei},
                           {DNNL_ARG_BIAS, p->m_bias},
                           {DNNL_ARG_DST, p->f_dst.mem}};
    if ((rc = run(p, p->fwd, 4, a))) return rc;
    if (p->f_dst.out) {
        if ((rc = set(p->m_dst, out))) return rc;
        dnnl_exec_arg_t r[] = {{DNNL_ARG_FROM, p->f_dst.mem}, {DNNL_ARG_TO, p->m_dst}};
        if ((rc = run(p, p->f_dst.out, 2, r))) return rc;
    }
    return dnnl_err(dnnl_stream_wait(c->str));
}

int op_conv3d_backward_cpu(op_conv *p, float *din, float *dw, float *db, const float *dout,
                           const float *in, const float *w)
{
    if (p->gemm) return gemm_backward(p, din, dw, db, dout, in, w);
    op_ctx *c = p->ctx;
    int rc;
    if (!p->bwd_made && (rc = bwd_make(p))) return rc;
    dnnl_memory_t mddst = NULL, mwei, msrc;

    /* Backward data: dout (slot 0) and w -> diff_src (slot 1) -> += din. */
    if (din) {
        void *s0 = p->d_ddst.in ? slot_get(c, 0, p->d_ddst.bytes) : NULL;
        void *s1 = slot_get(c, 1, p->d_dsrc.bytes);
        if ((p->d_ddst.in && !s0) || !s1) return CTG_ENOMEM;
        if ((rc = stage_in(p, &p->d_ddst, p->m_dst, dout, s0, &mddst)) ||
            (rc = stage_in(p, &p->d_wei, p->m_wei, w, p->wei_buf, &mwei)) ||
            (rc = set(p->d_dsrc.mem, s1)))
            return rc;
        dnnl_exec_arg_t a[] = {{DNNL_ARG_DIFF_DST, mddst},
                               {DNNL_ARG_WEIGHTS, mwei},
                               {DNNL_ARG_DIFF_SRC, p->d_dsrc.mem}};
        if ((rc = run(p, p->bwd_d, 3, a))) return rc;
        if ((rc = set(p->m_src, din))) return rc;
        dnnl_exec_arg_t r[] = {{DNNL_ARG_FROM, p->d_dsrc.mem}, {DNNL_ARG_TO, p->m_src}};
        if ((rc = run(p, p->d_dsrc.out, 2, r))) return rc;
    }

    /* Backward weights: in (slot 1) and dout (slot 0, reused when the data
     * pass left it there in the same layout) -> diff weights and bias. */
    if (dw || db) {
        void *s1 = p->w_src.in ? slot_get(c, 1, p->w_src.bytes) : NULL;
        if (p->w_src.in && !s1) return CTG_ENOMEM;
        if ((rc = stage_in(p, &p->w_src, p->m_src, in, s1, &msrc))) return rc;
        const dnnl_memory_desc_t *wdd = qmd(p->wpd, dnnl_query_diff_dst_md);
        if (mddst && p->d_ddst.in &&
            dnnl_memory_desc_equal(wdd, qmd(p->dpd, dnnl_query_diff_dst_md))) {
            /* Already reordered into slot 0 by the data pass. */
        } else {
            void *s0 = p->w_ddst.in ? slot_get(c, 0, p->w_ddst.bytes) : NULL;
            if (p->w_ddst.in && !s0) return CTG_ENOMEM;
            if ((rc = stage_in(p, &p->w_ddst, p->m_dst, dout, s0, &mddst))) return rc;
        }
        if ((rc = set(p->w_dwei.mem, p->dwei_buf)) || (rc = set(p->m_bias, p->dbias))) return rc;
        dnnl_exec_arg_t a[] = {{DNNL_ARG_SRC, msrc},
                               {DNNL_ARG_DIFF_DST, mddst},
                               {DNNL_ARG_DIFF_WEIGHTS, p->w_dwei.mem},
                               {DNNL_ARG_DIFF_BIAS, p->m_bias}};
        if ((rc = run(p, p->bwd_w, 4, a))) return rc;
        if (dw) {
            if ((rc = set(p->m_wei, dw))) return rc;
            dnnl_exec_arg_t r[] = {{DNNL_ARG_FROM, p->w_dwei.mem}, {DNNL_ARG_TO, p->m_wei}};
            if ((rc = run(p, p->w_dwei.out, 2, r))) return rc;
        }
        if ((rc = dnnl_err(dnnl_stream_wait(c->str)))) return rc;
        if (db)
            for (int o = 0; o < p->g.cout; o++) db[o] += p->dbias[o];
    }
    return dnnl_err(dnnl_stream_wait(c->str));
}
