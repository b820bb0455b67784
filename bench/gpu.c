/*
 * gpu.c - benchmark of the CT-GLIP network on a GPU through cuda/cunet.h:
 * the "ctglip" side of bench/gpu.sh, whose other side is the PyTorch eager
 * implementation of the same network in bench/torch_ctglip.py.  Both print
 * one JSON line per measurement with the same fields and count FLOPs the
 * same way, so the script can put them side by side.
 *
 *   build/bench/gpu [--device N|emulate] [--model FILE] [--arch file|default|tiny]
 *                   [--mode infer,train,e2e,e2e-cpu,plan,dump] [--spacing 3,1.5]
 *                   [--precision bf16,fp32] [--runs N] [--warmup N] [--batch B]
 *                   [--steps N] [--train-warmup N] [--overlap F] ...   (--help)
 *
 * Modes:
 *   infer    cu_infer (sliding windows of the patch size, the logic of
 *            mdl_infer) on a synthetic CT at each --spacing.  The volume is
 *            the analytic phantom below evaluated on the grid that
 *            resampling the --src CT (512x512x300) to that spacing gives;
 *            the host -> device copy of the volume and the label map's way
 *            back are inside the timing (cu_infer takes and returns host
 *            memory).  Median of --runs after --warmup.
 *   train    --steps training steps of --batch patches: cu_forward (pooled
 *            in the labels), cu_seg_loss (CE + Dice), the organ-text
 *            contrastive loss of core/glip.h on the host (glp_pair_loss over
 *            the present organs against a fixed text per class through the
 *            model's text projection, cu_text_forward/backward), cu_backward,
 *            cu_model_step (grad-norm clip 1, AdamW).  Median step time.
 *   e2e      one study end to end on the GPU path at --e2e-spacing (3 mm),
 *            from the --src CT: with --model, an_run (core/analysis.h, the
 *            daemon's path) on an an_ctx_new_gpu context: resampling (CPU),
 *            cu_infer, clearing labels outside the body, the label map back
 *            on the source grid and the measures there, zero-shot scoring
 *            (the engine opens a copy of the model with --e2e-spacing as
 *            its training spacing, and --vocab, --findings).  Without a
 *            model file: the same steps 1-3 written out here around
 *            cu_infer (no clearing, no scoring).  Median of --runs; the
 *            parts are in the JSON line.
 *   e2e-cpu  an_run (the daemon's whole CPU path, scoring included) on the
 *            same study, once: the CPU reference.  Needs a model file with its
 *            vocabulary and findings list.
 *   plan     no device: the grids, window counts and GFLOP of every
 *            measurement, for checking against torch_ctglip.py's `plan`.
 *   dump     no device: a reference forward of one synthetic batch on the
 *            CPU (mdl_forward, fp32) written to --dump FILE, which
 *            `torch_ctglip.py check` compares with its own forward.
 *
 * FLOPs (the same formula as torch_ctglip.py): 2 x multiply-adds of every
 * convolution (op_conv_flops: the 3x3x3 and 1x1x1 ones, the k2s2 transposed
 * ones and the head) and of the MLP's two linear layers on the K+1 pooled
 * rows of each sample.  Inference: windows x one patch forward + one MLP.
 * Training: forward + backward-weights + backward-data (each pass the cost
 * of the forward) of every layer, less the backward-data of the two
 * convolutions that read the image (enc0 conv1 and skip: the image needs no
 * gradient on either side).  Norms, activations, losses and the text
 * projection are not counted.  tflops = flops / median_s / 1e12.
 *
 * --device emulate runs everything on the host through the CU_EMULATE
 * context (cuops.h) with a tiny network and volume, to test this harness on
 * a machine without a GPU; its numbers mean nothing.
 *
 * Output: JSON lines on stdout; progress on stderr.
 */
#include "core/analysis.h"
#include "core/core.h"
#include "core/glip.h"
#include "core/model.h"
#include "core/ops.h"
#include "core/organs.h"
#include "core/vol.h"
#include "cuda/cu.h"
#include "cuda/cunet.h"
#include "cuda/cuops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_LIST 8

typedef struct opts {
    int device; /* CU_EMULATE or >= 0 */
    const char *model;
    const char *arch; /* "file", "default", "tiny" */
    int width, depth, patch, classes, embed, hidden, text_dim; /* overrides; 0: keep */
    const char *save_model;
    const char *tag;
    char modes[256];
    double spacing[MAX_LIST];
    int nspacing;
    double e2e_sp;
    cu_dtype prec[2];
    int nprec;
    int src[3];
    double src_sp[3];
    float overlap;
    int warmup, runs, batch, steps, train_warmup, threads;
    const char *vocab, *findings, *dump;
    int verbose;
} opts;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: gpu [options]\n"
            "  --device N|emulate     GPU number (0) or the host emulation (tiny sizes)\n"
            "  --model FILE           model file: its config, classes and weights\n"
            "  --arch file|default|tiny  network: the file's (default with --model),\n"
            "                         mdl_config_default's (default without) or a tiny one\n"
            "                         (width 4, depth 2, patch 16; default of the emulation\n"
            "                         without --model); classes and text size stay the\n"
            "                         file's; new weights from seed 1\n"
            "  --width/--depth/--patch/--classes/--embed/--hidden/--text-dim N  overrides\n"
            "  --save-model FILE      write the model benchmarked (for torch_ctglip.py)\n"
            "  --tag NAME             config label in the JSON (default from the arch)\n"
            "  --mode LIST            infer,train,e2e,e2e-cpu,plan,dump (infer,train,e2e);\n"
            "                         none: only --save-model\n"
            "  --spacing LIST         mm, inference grids (3,1.5)\n"
            "  --e2e-spacing MM       the model grid of e2e and e2e-cpu (3)\n"
            "  --precision LIST       bf16,fp32 (both)\n"
            "  --src NX,NY,NZ         synthetic source CT (512,512,300)\n"
            "  --src-spacing X,Y,Z    its spacing, mm (0.78125,0.78125,1.25)\n"
            "  --overlap F            sliding-window overlap (0.25, the daemon's)\n"
            "  --warmup N --runs N    inference / e2e repeats (1, 5)\n"
            "  --batch B --steps N --train-warmup N   training (2, 20, 3)\n"
            "  --threads N            CPU threads of the host parts (0: all)\n"
            "  --vocab F --findings F for e2e-cpu (models/glove100.vocab, etc/findings.conf)\n"
            "  --dump FILE            output of --mode dump\n");
}

static int parse_list_d(const char *s, double *out, int cap)
{
    int n = 0;
    char buf[256], *save = NULL;
    snprintf(buf, sizeof buf, "%s", s);
    for (char *t = strtok_r(buf, ",", &save); t && n < cap; t = strtok_r(NULL, ",", &save)) {
        char *end;
        out[n] = strtod(t, &end);
        if (*end || !(out[n] > 0)) return -1;
        n++;
    }
    return n;
}

static int has_mode(const opts *o, const char *m)
{
    char buf[256], *save = NULL;
    snprintf(buf, sizeof buf, "%s", o->modes);
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save))
        if (!strcmp(t, m)) return 1;
    return 0;
}

static int parse_args(int argc, char **argv, opts *o)
{
    memset(o, 0, sizeof *o);
    o->device = 0;
    snprintf(o->modes, sizeof o->modes, "infer,train,e2e");
    o->spacing[0] = 3.0, o->spacing[1] = 1.5, o->nspacing = 2;
    o->e2e_sp = 3.0;
    o->prec[0] = CU_BF16, o->prec[1] = CU_F32, o->nprec = 2;
    o->src[0] = o->src[1] = 512, o->src[2] = 300;
    o->src_sp[0] = o->src_sp[1] = 0.78125, o->src_sp[2] = 1.25;
    o->overlap = 0.25f;
    o->warmup = -1, o->runs = -1, o->batch = 2, o->steps = -1, o->train_warmup = -1;
    o->vocab = "models/glove100.vocab";
    o->findings = "etc/findings.conf";
    int src_set = 0, srcsp_set = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED()                                                                                    \
    do {                                                                                          \
        if (!v) {                                                                                 \
            fprintf(stderr, "gpu: %s needs a value\n", a);                                        \
            return -1;                                                                            \
        }                                                                                         \
        i++;                                                                                      \
    } while (0)
#define INT_OPT(name, field)                                                                      \
    if (!strcmp(a, name)) {                                                                       \
        NEED();                                                                                   \
        o->field = atoi(v);                                                                       \
        continue;                                                                                 \
    }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        }
        if (!strcmp(a, "--device")) {
            NEED();
            o->device = !strcmp(v, "emulate") ? CU_EMULATE : atoi(v);
            continue;
        }
        if (!strcmp(a, "--model")) {
            NEED();
            o->model = v;
            continue;
        }
        if (!strcmp(a, "--arch")) {
            NEED();
            o->arch = v;
            continue;
        }
        if (!strcmp(a, "--save-model")) {
            NEED();
            o->save_model = v;
            continue;
        }
        if (!strcmp(a, "--tag")) {
            NEED();
            o->tag = v;
            continue;
        }
        if (!strcmp(a, "--mode")) {
            NEED();
            snprintf(o->modes, sizeof o->modes, "%s", v);
            continue;
        }
        if (!strcmp(a, "--spacing")) {
            NEED();
            if ((o->nspacing = parse_list_d(v, o->spacing, MAX_LIST)) < 1) return -1;
            continue;
        }
        if (!strcmp(a, "--e2e-spacing")) {
            NEED();
            if (parse_list_d(v, &o->e2e_sp, 1) != 1) return -1;
            continue;
        }
        if (!strcmp(a, "--precision")) {
            NEED();
            char buf[64], *save = NULL;
            o->nprec = 0;
            snprintf(buf, sizeof buf, "%s", v);
            for (char *t = strtok_r(buf, ",", &save); t && o->nprec < 2;
                 t = strtok_r(NULL, ",", &save))
                if (cu_dtype_parse(t, &o->prec[o->nprec++]) != 0) {
                    fprintf(stderr, "gpu: precision %s: bf16 or fp32\n", t);
                    return -1;
                }
            continue;
        }
        if (!strcmp(a, "--src")) {
            NEED();
            if (sscanf(v, "%d,%d,%d", &o->src[0], &o->src[1], &o->src[2]) != 3) return -1;
            src_set = 1;
            continue;
        }
        if (!strcmp(a, "--src-spacing")) {
            NEED();
            if (parse_list_d(v, o->src_sp, 3) != 3) return -1;
            srcsp_set = 1;
            continue;
        }
        if (!strcmp(a, "--overlap")) {
            NEED();
            o->overlap = (float)atof(v);
            continue;
        }
        if (!strcmp(a, "--vocab")) {
            NEED();
            o->vocab = v;
            continue;
        }
        if (!strcmp(a, "--findings")) {
            NEED();
            o->findings = v;
            continue;
        }
        if (!strcmp(a, "--dump")) {
            NEED();
            o->dump = v;
            continue;
        }
        if (!strcmp(a, "-v")) {
            o->verbose = 1;
            continue;
        }
        INT_OPT("--width", width)
        INT_OPT("--depth", depth)
        INT_OPT("--patch", patch)
        INT_OPT("--classes", classes)
        INT_OPT("--embed", embed)
        INT_OPT("--hidden", hidden)
        INT_OPT("--text-dim", text_dim)
        INT_OPT("--warmup", warmup)
        INT_OPT("--runs", runs)
        INT_OPT("--batch", batch)
        INT_OPT("--steps", steps)
        INT_OPT("--train-warmup", train_warmup)
        INT_OPT("--threads", threads)
        fprintf(stderr, "gpu: unknown option %s\n", a);
        usage(stderr);
        return -1;
#undef INT_OPT
#undef NEED
    }
    int emu = o->device == CU_EMULATE;
    if (!o->arch) o->arch = o->model ? "file" : emu ? "tiny" : "default";
    if (!src_set && emu) o->src[0] = o->src[1] = 48, o->src[2] = 32;
    if (!srcsp_set && emu) o->src_sp[0] = o->src_sp[1] = o->src_sp[2] = 1.5;
    if (o->warmup < 0) o->warmup = emu ? 0 : 1;
    if (o->runs < 0) o->runs = emu ? 1 : 5;
    if (o->steps < 0) o->steps = emu ? 2 : 20;
    if (o->train_warmup < 0) o->train_warmup = emu ? 1 : 3;
    if (o->runs < 1 || o->steps < 1 || o->batch < 1 || !(o->overlap >= 0 && o->overlap < 1)) {
        fprintf(stderr, "gpu: runs, steps and batch must be >= 1, overlap in [0, 1)\n");
        return -1;
    }
    return 0;
}

/* ---- the model ------------------------------------------------------------------------- */

static int make_model(const opts *o, mdl_model **out, char *tag, size_t ntag)
{
    char why[512] = "";
    mdl_model *file = NULL;
    int rc;
    *out = NULL;
    if (o->model && (rc = mdl_load(o->model, &file, why, sizeof why)) < 0) {
        fprintf(stderr, "gpu: %s: %s\n", o->model, why);
        return rc;
    }
    if (file && !strcmp(o->arch, "file") && !o->width && !o->depth && !o->patch &&
        !o->classes && !o->embed && !o->hidden && !o->text_dim) {
        *out = file;
        snprintf(tag, ntag, "%s", o->tag ? o->tag : "file");
        return 0;
    }
    /* A new network: classes and text size from the file when there is
     * one, the architecture from --arch and the overrides. */
    int k = file ? file->cfg.n_classes : 24;
    mdl_config c = mdl_config_default(k);
    if (file) c.text_dim = file->cfg.text_dim;
    else c.text_dim = 100;
    if (!strcmp(o->arch, "file") && file) {
        c = file->cfg;
    } else if (!strcmp(o->arch, "tiny")) {
        c.width = 4, c.depth = 2, c.max_width = 64, c.embed_dim = 16, c.mlp_hidden = 32;
        if (!file) c.text_dim = 8;
        c.patch[0] = c.patch[1] = c.patch[2] = 16;
        if (!o->classes) c.n_classes = k < 4 ? k : 4;
    } else if (strcmp(o->arch, "default") != 0) {
        fprintf(stderr, "gpu: --arch %s: file, default or tiny\n", o->arch);
        mdl_free(file);
        return CTG_EINVAL;
    }
    if (o->width) c.width = o->width;
    if (o->depth) c.depth = o->depth;
    if (o->patch) c.patch[0] = c.patch[1] = c.patch[2] = o->patch;
    if (o->classes) c.n_classes = o->classes;
    if (o->embed) c.embed_dim = o->embed;
    if (o->hidden) c.mlp_hidden = o->hidden;
    if (o->text_dim) c.text_dim = o->text_dim < 0 ? 0 : o->text_dim;
    int ids[MDL_MAX_CLASSES];
    for (int i = 0; i < c.n_classes && i < MDL_MAX_CLASSES; i++)
        ids[i] = file && i < file->cfg.n_classes ? file->class_ids[i] : i + 1;
    /* Ids past the file's list: the lowest ones not used yet. */
    for (int i = file ? file->cfg.n_classes : c.n_classes; i < c.n_classes; i++) {
        int id = 1;
        for (;;) {
            int used = 0;
            for (int j = 0; j < i; j++) used |= ids[j] == id;
            if (!used) break;
            id++;
        }
        ids[i] = id;
    }
    rc = mdl_new(&c, ids, file ? file->text_id : NULL, 1, out, why, sizeof why);
    if (rc < 0) fprintf(stderr, "gpu: network: %s\n", why);
    if (*out && file) mdl_set_spacing(*out, file->spacing);
    mdl_free(file);
    if (!o->tag) {
        snprintf(tag, ntag, "%s-w%dd%dp%dk%d", o->arch, c.width, c.depth, c.patch[0],
                 c.n_classes);
    } else {
        snprintf(tag, ntag, "%s", o->tag);
    }
    return rc;
}

/* ---- FLOPs (torch_ctglip.py: net_flops, the same sum) ------------------------------------ */

/* Convolutions of one forward of n patches of d*h*w voxels; *first gets the
 * part of the two layers that read the image (enc0 conv1 and skip). */
static double conv_flops(const mdl_config *c, int n, int d, int h, int w, double *first)
{
    int D = c->depth;
    double f = 0;
    *first = 0;
    for (int l = 0; l <= D; l++) {
        int cin = l ? mdl_level_width(c, l - 1) : c->in_ch, co = mdl_level_width(c, l);
        int li = l ? l - 1 : 0, st = l ? 2 : 1;
        op_conv_geom g1 = op_conv_geom_make(n, cin, co, d >> li, h >> li, w >> li, 3, st);
        op_conv_geom g2 = op_conv_geom_make(n, co, co, d >> l, h >> l, w >> l, 3, 1);
        op_conv_geom gs = op_conv_geom_make(n, cin, co, d >> li, h >> li, w >> li, 1, st);
        f += op_conv_flops(&g1) + op_conv_flops(&g2) + op_conv_flops(&gs);
        if (l == 0) *first = op_conv_flops(&g1) + op_conv_flops(&gs);
    }
    for (int l = D - 1; l >= 0; l--) {
        int ci = mdl_level_width(c, l + 1), co = mdl_level_width(c, l);
        op_conv_geom gu = op_deconv_geom_make(n, ci, co, d >> (l + 1), h >> (l + 1), w >> (l + 1));
        op_conv_geom g1 = op_conv_geom_make(n, 2 * co, co, d >> l, h >> l, w >> l, 3, 1);
        op_conv_geom g2 = op_conv_geom_make(n, co, co, d >> l, h >> l, w >> l, 3, 1);
        op_conv_geom gs = op_conv_geom_make(n, 2 * co, co, d >> l, h >> l, w >> l, 1, 1);
        f += op_conv_flops(&gu) + op_conv_flops(&g1) + op_conv_flops(&g2) + op_conv_flops(&gs);
    }
    op_conv_geom gh = op_conv_geom_make(n, mdl_level_width(c, 0), c->n_classes + 1, d, h, w, 1, 1);
    return f + op_conv_flops(&gh);
}

/* The organ MLP on rows pooled rows. */
static double mlp_flops(const mdl_config *c, int rows)
{
    return 2.0 * rows * ((double)mdl_level_width(c, 0) * c->mlp_hidden +
                         (double)c->mlp_hidden * c->embed_dim);
}

static double infer_flops(const mdl_config *c, long windows)
{
    double first;
    return windows * conv_flops(c, 1, c->patch[0], c->patch[1], c->patch[2], &first) +
           mlp_flops(c, c->n_classes + 1);
}

static double train_flops(const mdl_config *c, int n)
{
    double first;
    double f = conv_flops(c, n, c->patch[0], c->patch[1], c->patch[2], &first);
    return 3.0 * f - first + 3.0 * mlp_flops(c, n * (c->n_classes + 1));
}

/* ---- windows (mdl_infer's rule) ------------------------------------------------------------ */

static int n_starts(int len, int win, int step)
{
    int k = 0;
    for (int s = 0;; s += step) {
        k++;
        if (s + win >= len) break;
    }
    return k;
}

static long n_windows(const mdl_config *c, const int grid[3], float overlap)
{
    long total = 1;
    for (int a = 0; a < 3; a++) {
        int win = c->patch[2 - a]; /* patch is z y x; grid is x y z */
        int st = (int)lroundf(win * (1.0f - overlap));
        total *= n_starts(grid[a], win, st > 0 ? st : 1);
    }
    return total;
}

/* The grid ctg_vol_resample makes: n' = round(n * sp / sp'). */
static void target_grid(const opts *o, double sp, int grid[3])
{
    for (int a = 0; a < 3; a++) {
        double want = round(o->src[a] * o->src_sp[a] / sp);
        grid[a] = want < 1 ? 1 : (int)want;
    }
}

/* ---- synthetic data (torch_ctglip.py: phantom, train_batch; the same values) ------------- */

static float noise(uint64_t idx)
{
    uint32_t h = (uint32_t)(idx * 2654435761u);
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    return (float)(h % 41u) - 20.0f;
}

static int inside(double x, double y, double z, double cx, double cy, double cz, double rx,
                  double ry, double rz)
{
    double a = (x - cx) / rx, b = (y - cy) / ry, e = (z - cz) / rz;
    return a * a + b * b + e * e <= 1.0;
}

/* A CT-like volume in HU: an elliptic body of soft tissue in air, two
 * lungs, a liver, a spine, noise.  Positions in mm from the centre. */
static float phantom_hu(int i, int j, int k, const int n[3], const double sp[3])
{
    double x = (i + 0.5) * sp[0] - 0.5 * n[0] * sp[0];
    double y = (j + 0.5) * sp[1] - 0.5 * n[1] * sp[1];
    double z = (k + 0.5) * sp[2] - 0.5 * n[2] * sp[2];
    if ((x / 170.0) * (x / 170.0) + (y / 120.0) * (y / 120.0) > 1.0) return -1000.0f;
    float v = 40.0f;
    if (inside(x, y, z, 80, -10, 80, 60, 70, 90) || inside(x, y, z, -80, -10, 80, 60, 70, 90))
        v = -850.0f;
    else if (inside(x, y, z, -60, 10, -40, 80, 60, 70))
        v = 60.0f;
    else if ((x / 20.0) * (x / 20.0) + ((y - 80.0) / 20.0) * ((y - 80.0) / 20.0) <= 1.0)
        v = 700.0f;
    return v + noise((uint64_t)i + (uint64_t)n[0] * ((uint64_t)j + (uint64_t)n[1] * k));
}

static ctg_vol *phantom(const int n[3], const double sp[3])
{
    ctg_vol *v = ctg_vol_new(n[0], n[1], n[2], CTG_F32);
    if (!v) return NULL;
    memset(v->aff, 0, sizeof v->aff);
    for (int a = 0; a < 3; a++) {
        v->aff[a][a] = sp[a];
        v->aff[a][3] = -0.5 * (n[a] - 1) * sp[a];
    }
    float *d = v->data;
#pragma omp parallel for schedule(static)
    for (int k = 0; k < n[2]; k++)
        for (int j = 0; j < n[1]; j++)
            for (int i = 0; i < n[0]; i++)
                d[(size_t)i + (size_t)n[0] * ((size_t)j + (size_t)n[1] * k)] =
                    phantom_hu(i, j, k, n, sp);
    return v;
}

/* A training batch: hu [b][d][h][w] (the phantom on a 3 mm patch grid,
 * sample b shifted by b*patch/4 voxels along x), labels [b][s]: blocks of
 * a 4x4x4 split, block q has class q % (K+1), so every class is present
 * when K+1 <= 64. */
static void train_batch(const mdl_config *c, int nb, float *hu, uint8_t *lab)
{
    int d = c->patch[0], h = c->patch[1], w = c->patch[2], k1 = c->n_classes + 1;
    int n[3] = {w, h, d};
    double sp[3] = {3.0, 3.0, 3.0};
    size_t s = (size_t)d * h * w;
    for (int b = 0; b < nb; b++)
        for (int z = 0; z < d; z++)
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++) {
                    size_t v = ((size_t)z * h + y) * w + x;
                    hu[b * s + v] = phantom_hu(x + b * w / 4, y, z, n, sp);
                    int q = (z * 4 / d) * 16 + (y * 4 / h) * 4 + x * 4 / w;
                    lab[b * s + v] = (uint8_t)(q % k1);
                }
}

/* The fixed "text" of class cls: [dim] values. */
static void class_text(int cls, int dim, float *out)
{
    for (int j = 0; j < dim; j++) out[j] = sinf(cls * 1.3f + j * 0.7f);
}

/* ---- timing and output ---------------------------------------------------------------------- */

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof *t, cmp_d);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

static char g_device[256] = "";

static void emit(const char *mode, const char *tag, double spacing, const char *prec, double med,
                 double samples_per_s, double flops, const char *extra)
{
    /* extra: more "key":value pairs, or NULL. */
    printf("{\"impl\":\"ctglip\",\"mode\":\"%s\",\"config\":\"%s\",", mode, tag);
    if (spacing > 0)
        printf("\"spacing\":%g,", spacing);
    else
        printf("\"spacing\":null,");
    printf("\"precision\":\"%s\",\"median_s\":%.6g,\"samples_per_s\":%.6g,\"tflops\":%.6g,"
           "\"gflop\":%.6g,\"device\":\"%s\"%s%s}\n",
           prec, med, samples_per_s, med > 0 ? flops / med / 1e12 : 0.0, flops / 1e9, g_device,
           extra && *extra ? "," : "", extra ? extra : "");
    fflush(stdout);
}

/* ---- modes ------------------------------------------------------------------------------------ */

static int mode_plan(const opts *o, const mdl_model *m, const char *tag)
{
    const mdl_config *c = &m->cfg;
    for (int i = 0; i < o->nspacing; i++) {
        int grid[3];
        target_grid(o, o->spacing[i], grid);
        long nw = n_windows(c, grid, o->overlap);
        printf("{\"impl\":\"ctglip\",\"mode\":\"plan-infer\",\"config\":\"%s\",\"spacing\":%g,"
               "\"grid\":[%d,%d,%d],\"windows\":%ld,\"gflop\":%.6f}\n",
               tag, o->spacing[i], grid[0], grid[1], grid[2], nw, infer_flops(c, nw) / 1e9);
    }
    printf("{\"impl\":\"ctglip\",\"mode\":\"plan-train\",\"config\":\"%s\",\"batch\":%d,"
           "\"patch\":[%d,%d,%d],\"gflop\":%.6f,\"n_params\":%zu}\n",
           tag, o->batch, c->patch[0], c->patch[1], c->patch[2], train_flops(c, o->batch) / 1e9,
           m->n_params);
    return 0;
}

static int mode_infer(const opts *o, cu_ctx *ctx, mdl_model *m, const char *tag, cu_dtype dt)
{
    const mdl_config *c = &m->cfg;
    char why[512] = "";
    cu_model *g = NULL;
    cu_acts *a = NULL;
    int rc = cu_model_new(ctx, m, dt, 0, &g, why, sizeof why);
    if (rc < 0) {
        fprintf(stderr, "gpu: cu_model_new: %s (%s)\n", why, ctg_strerror(rc));
        return rc;
    }
    if ((rc = cu_acts_new(g, 1, c->patch[0], c->patch[1], c->patch[2], &a)) < 0) {
        fprintf(stderr, "gpu: cu_acts_new: %s (%s)\n", cu_ctx_error(ctx), ctg_strerror(rc));
        goto done;
    }
    int k1 = c->n_classes + 1;
    float *embed = malloc(sizeof(float) * k1 * c->embed_dim);
    int64_t *count = malloc(sizeof(int64_t) * k1);
    double *t = calloc((size_t)o->runs, sizeof(double));
    if (!embed || !count || !t) {
        rc = CTG_ENOMEM;
        goto done2;
    }
    for (int si = 0; si < o->nspacing; si++) {
        double sp = o->spacing[si], spv[3] = {sp, sp, sp};
        int grid[3];
        target_grid(o, sp, grid);
        ctg_vol *hu = phantom(grid, spv);
        if (!hu) {
            rc = CTG_ENOMEM;
            goto done2;
        }
        long nw = n_windows(c, grid, o->overlap);
        fprintf(stderr, "gpu: infer %s %s %g mm: grid %dx%dx%d, %ld windows\n", tag,
                cu_dtype_name(dt), sp, grid[0], grid[1], grid[2], nw);
        int present = 0;
        for (int r = -o->warmup; r < o->runs; r++) {
            ctg_vol *lab = NULL;
            double t0 = ctg_mono();
            rc = cu_infer(g, a, hu, o->overlap, &lab, embed, count);
            if (!rc) rc = cu_sync(ctx);
            double t1 = ctg_mono();
            ctg_vol_free(lab);
            if (rc < 0) {
                fprintf(stderr, "gpu: cu_infer: %s (%s)\n", cu_ctx_error(ctx), ctg_strerror(rc));
                ctg_vol_free(hu);
                goto done2;
            }
            if (r >= 0) t[r] = t1 - t0;
            present = 0;
            for (int j = 1; j < k1; j++) present += count[j] > 0;
        }
        ctg_vol_free(hu);
        double med = median(t, o->runs), fl = infer_flops(c, nw);
        /* Voxels per model class of the last run: fp32 runs of both sides
         * should agree to a few voxels. */
        char extra[256 + 24 * MDL_MAX_CLASSES];
        int len = snprintf(extra, sizeof extra,
                           "\"grid\":[%d,%d,%d],\"windows\":%ld,\"runs\":%d,\"organs_found\":%d,"
                           "\"counts\":[",
                           grid[0], grid[1], grid[2], nw, o->runs, present);
        for (int j = 0; j < k1; j++)
            len += snprintf(extra + len, sizeof extra - (size_t)len, "%s%lld", j ? "," : "",
                            (long long)count[j]);
        snprintf(extra + len, sizeof extra - (size_t)len, "]");
        emit("infer", tag, sp, cu_dtype_name(dt), med, nw / med, fl, extra);
    }
done2:
    free(embed);
    free(count);
    free(t);
done:
    cu_acts_free(a);
    cu_model_free(g);
    return rc;
}

static int mode_train(const opts *o, cu_ctx *ctx, mdl_model *m, const char *tag, cu_dtype dt)
{
    const mdl_config *c = &m->cfg;
    char why[512] = "";
    cu_model *g = NULL;
    cu_acts *a = NULL;
    int B = o->batch, k1 = c->n_classes + 1, E = c->embed_dim;
    int T = c->text_dim > 0 ? c->text_dim : E;
    size_t s = (size_t)c->patch[0] * c->patch[1] * c->patch[2];
    size_t rows = (size_t)B * k1;
    float *hu = malloc(sizeof(float) * B * s), *img = malloc(sizeof(float) * rows * E);
    float *tin = malloc(sizeof(float) * rows * T), *txt = malloc(sizeof(float) * rows * E);
    float *tnorm = malloc(sizeof(float) * rows), *dimg = malloc(sizeof(float) * rows * E);
    float *dtxt = malloc(sizeof(float) * rows * E);
    uint8_t *lab = malloc((size_t)B * s), *mask = malloc(rows * rows);
    int *cls = malloc(sizeof(int) * rows), *rowof = malloc(sizeof(int) * rows);
    int nt = o->train_warmup + o->steps;
    double *t = calloc((size_t)nt, sizeof(double));
    int rc = CTG_ENOMEM;
    if (!hu || !img || !tin || !txt || !tnorm || !dimg || !dtxt || !lab || !mask || !cls ||
        !rowof || !t)
        goto done;
    train_batch(c, B, hu, lab);
    if ((rc = cu_model_new(ctx, m, dt, 1, &g, why, sizeof why)) < 0) {
        fprintf(stderr, "gpu: cu_model_new: %s (%s)\n", why, ctg_strerror(rc));
        goto done;
    }
    if ((rc = cu_acts_new(g, B, c->patch[0], c->patch[1], c->patch[2], &a)) < 0) {
        fprintf(stderr, "gpu: cu_acts_new: %s (%s)\n", cu_ctx_error(ctx), ctg_strerror(rc));
        goto done;
    }
    op_adamw_cfg ac = op_adamw_defaults();
    /* A constant learning rate, as torch_ctglip.py's AdamW. */
    ac.lr = ac.min_lr = 1e-4f;
    ac.weight_decay = 1e-2f;
    ac.total_steps = nt;
    fprintf(stderr, "gpu: train %s %s: batch %d of %dx%dx%d, %d+%d steps\n", tag,
            cu_dtype_name(dt), B, c->patch[0], c->patch[1], c->patch[2], o->train_warmup,
            o->steps);
    float ce = 0, dice = 0, ctr = 0;
    double gnorm = 0;
    for (int step = 0; step < nt; step++) {
        double t0 = ctg_mono();
        const char *what = "cu_forward";
        if ((rc = cu_forward(g, a, hu, lab)) < 0) goto fail;
        what = "cu_seg_loss";
        if ((rc = cu_seg_loss(g, a, lab, 1.0f, &ce, &dice)) < 0) goto fail;
        /* Organ-text contrast over the organs present (count > 0). */
        int r = 0;
        for (size_t q = 0; q < rows; q++) {
            int cl = (int)(q % k1);
            if (cl == 0 || a->count[q] <= 0) continue;
            memcpy(img + (size_t)r * E, a->embed + q * E, sizeof(float) * E);
            class_text(cl, T, tin + (size_t)r * T);
            cls[r] = cl;
            rowof[r] = (int)q;
            r++;
        }
        if (r > 0) {
            what = "cu_text_forward";
            if ((rc = cu_text_forward(g, txt, tnorm, tin, r)) < 0) goto fail;
            glp_ot_mask(cls, r, mask);
            memset(dimg, 0, sizeof(float) * (size_t)r * E);
            memset(dtxt, 0, sizeof(float) * (size_t)r * E);
            what = "glp_pair_loss";
            if ((rc = glp_pair_loss(&ctr, img, txt, mask, r, r, E, GLP_TAU, 1.0f, dimg, dtxt)) <
                0)
                goto fail;
            for (int i = 0; i < r; i++)
                memcpy(a->dembed + (size_t)rowof[i] * E, dimg + (size_t)i * E,
                       sizeof(float) * E);
            what = "cu_text_backward";
            if ((rc = cu_text_backward(g, dtxt, txt, tnorm, tin, r)) < 0) goto fail;
        }
        what = "cu_backward";
        if ((rc = cu_backward(g, a, 1, a->dembed)) < 0) goto fail;
        what = "cu_model_step";
        if ((rc = cu_model_step(g, step + 1, &ac, 1.0, &gnorm)) < 0) goto fail;
        what = "cu_model_zero_grad";
        if ((rc = cu_model_zero_grad(g)) < 0) goto fail;
        what = "cu_sync";
        if ((rc = cu_sync(ctx)) < 0) goto fail;
        t[step] = ctg_mono() - t0;
        if (o->verbose || step == nt - 1)
            fprintf(stderr, "gpu:   step %d: ce %.4f dice %.4f contrast %.4f |g| %.3g (%.1f ms)\n",
                    step + 1, ce, dice, ctr, gnorm, 1e3 * t[step]);
        continue;
    fail:
        fprintf(stderr, "gpu: %s: %s (%s)\n", what, cu_ctx_error(ctx), ctg_strerror(rc));
        goto done;
    }
    double med = median(t + o->train_warmup, o->steps);
    char extra[256];
    snprintf(extra, sizeof extra,
             "\"batch\":%d,\"steps\":%d,\"patch\":[%d,%d,%d],\"loss_ce\":%.5g,\"loss_dice\":%.5g,"
             "\"loss_contrast\":%.5g",
             B, o->steps, c->patch[0], c->patch[1], c->patch[2], ce, dice, ctr);
    emit("train", tag, 0, cu_dtype_name(dt), med, B / med, train_flops(c, B), extra);
    rc = 0;
done:
    cu_acts_free(a);
    cu_model_free(g);
    free(hu), free(img), free(tin), free(txt), free(tnorm), free(dimg), free(dtxt);
    free(lab), free(mask), free(cls), free(rowof), free(t);
    return rc;
}

/* an_run's steps 1-3 around cu_infer (see the top of the file). */
static int mode_e2e(const opts *o, cu_ctx *ctx, mdl_model *m, const char *tag, cu_dtype dt)
{
    const mdl_config *c = &m->cfg;
    char why[512] = "";
    cu_model *g = NULL;
    cu_acts *a = NULL;
    ctg_vol *src = phantom(o->src, o->src_sp);
    int k1 = c->n_classes + 1;
    float *embed = malloc(sizeof(float) * k1 * c->embed_dim);
    int64_t *count = malloc(sizeof(int64_t) * k1);
    double *t = calloc((size_t)o->runs * 4, sizeof(double));
    int rc = CTG_ENOMEM;
    if (!src || !embed || !count || !t) goto done;
    if ((rc = cu_model_new(ctx, m, dt, 0, &g, why, sizeof why)) < 0) {
        fprintf(stderr, "gpu: cu_model_new: %s (%s)\n", why, ctg_strerror(rc));
        goto done;
    }
    if ((rc = cu_acts_new(g, 1, c->patch[0], c->patch[1], c->patch[2], &a)) < 0) {
        fprintf(stderr, "gpu: cu_acts_new: %s (%s)\n", cu_ctx_error(ctx), ctg_strerror(rc));
        goto done;
    }
    {
        double sp = o->e2e_sp, spv[3] = {sp, sp, sp};
        int grid[3] = {0, 0, 0}, organs = 0;
        long nw = 0;
        fprintf(stderr, "gpu: e2e %s %s %g mm from %dx%dx%d\n", tag, cu_dtype_name(dt), sp,
                o->src[0], o->src[1], o->src[2]);
        for (int r = -o->warmup; r < o->runs; r++) {
            ctg_vol *rs = NULL, *lm = NULL, *lab = NULL;
            double t0 = ctg_mono();
            rc = ctg_vol_resample(src, spv, CTG_LINEAR, -1024.0, &rs);
            double t1 = ctg_mono();
            if (!rc) {
                rc = cu_infer(g, a, rs, o->overlap, &lm, embed, count);
                if (rc < 0) fprintf(stderr, "gpu: cu_infer: %s\n", cu_ctx_error(ctx));
            }
            double t2 = ctg_mono();
            if (!rc) rc = ctg_vol_resample_to(lm, src, CTG_NEAREST, 0, &lab);
            if (!rc) {
                int64_t vox[256] = {0};
                double husum[256] = {0};
                const uint8_t *lv = lab->data;
                const float *hv = src->data;
                size_t nv = ctg_vol_count(src);
                for (size_t i = 0; i < nv; i++) {
                    vox[lv[i]]++;
                    husum[lv[i]] += hv[i];
                }
                organs = 0;
                for (int j = 1; j < 256; j++) organs += vox[j] > 0;
                if (husum[0] != husum[0]) organs = -1; /* keeps the sum live */
            }
            double t3 = ctg_mono();
            if (rs) {
                grid[0] = rs->nx, grid[1] = rs->ny, grid[2] = rs->nz;
                nw = n_windows(c, grid, o->overlap);
            }
            ctg_vol_free(rs), ctg_vol_free(lm), ctg_vol_free(lab);
            if (rc < 0) {
                fprintf(stderr, "gpu: e2e: %s\n", ctg_strerror(rc));
                goto done;
            }
            if (r >= 0) {
                t[r] = t3 - t0;
                t[o->runs + r] = t1 - t0;
                t[2 * o->runs + r] = t2 - t1;
                t[3 * o->runs + r] = t3 - t2;
            }
        }
        double med = median(t, o->runs);
        double mr = median(t + o->runs, o->runs), mm = median(t + 2 * o->runs, o->runs),
               ms = median(t + 3 * o->runs, o->runs);
        char extra[384];
        snprintf(extra, sizeof extra,
                 "\"src\":[%d,%d,%d],\"grid\":[%d,%d,%d],\"windows\":%ld,\"runs\":%d,"
                 "\"t_resample\":%.4g,\"t_model\":%.4g,\"t_measure\":%.4g,\"organs_found\":%d",
                 o->src[0], o->src[1], o->src[2], grid[0], grid[1], grid[2], nw, o->runs, mr, mm,
                 ms, organs);
        emit("e2e", tag, sp, cu_dtype_name(dt), med, 1.0 / med, infer_flops(c, nw), extra);
    }
    rc = 0;
done:
    cu_acts_free(a);
    cu_model_free(g);
    ctg_vol_free(src);
    free(embed), free(count), free(t);
    return rc;
}

/* The daemon's engine (core/analysis.h) on model m.  an_run works on the
 * model's training spacing, so m is saved to a scratch file with
 * --e2e-spacing as that spacing and the engine opens the copy. */
static int open_engine(const opts *o, mdl_model *m, an_engine **e)
{
    char why[512] = "", path[256];
    float keep[3] = {m->spacing[0], m->spacing[1], m->spacing[2]};
    float sp[3] = {(float)o->e2e_sp, (float)o->e2e_sp, (float)o->e2e_sp};
    const char *tmp = getenv("TMPDIR");
    *e = NULL;
    snprintf(path, sizeof path, "%s/ctglip-bench-%ld.ctglip", tmp && *tmp ? tmp : "/tmp",
             (long)getpid());
    mdl_set_spacing(m, sp);
    int rc = mdl_save(m, path, why, sizeof why);
    mdl_set_spacing(m, keep);
    if (rc == 0) {
        an_opts ao = {.model = path, .vocab = o->vocab, .findings = o->findings, .text = -1,
                      .overlap = o->overlap};
        rc = an_engine_open(&ao, e, why, sizeof why);
        unlink(path);
    }
    if (rc < 0) fprintf(stderr, "gpu: engine: %s\n", why);
    return rc;
}

/* an_run with a GPU an_ctx (an_ctx_new_gpu: cu_infer inside the daemon's
 * own path, label clearing and scoring included): the real per-study time. */
static int mode_e2e_an(const opts *o, cu_ctx *ctx, mdl_model *m, const char *tag, cu_dtype dt)
{
    const mdl_config *c = &m->cfg;
    char why[512] = "";
    an_engine *e = NULL;
    an_ctx *ac = NULL;
    ctg_vol *src = phantom(o->src, o->src_sp);
    double *t = calloc((size_t)o->runs * 5, sizeof(double));
    int rc = src && t ? open_engine(o, m, &e) : CTG_ENOMEM;
    if (rc == 0 && (rc = an_ctx_new_gpu(e, ctx, dt == CU_BF16, &ac, why, sizeof why)) < 0)
        fprintf(stderr, "gpu: an_ctx_new_gpu: %s\n", why);
    fprintf(stderr, "gpu: e2e (an_run on the GPU) %s %s %g mm from %dx%dx%d\n", tag,
            cu_dtype_name(dt), o->e2e_sp, o->src[0], o->src[1], o->src[2]);
    int grid[3] = {0, 0, 0}, organs = 0;
    for (int r = -o->warmup; rc == 0 && r < o->runs; r++) {
        an_result res;
        memset(&res, 0, sizeof res);
        double t0 = ctg_mono();
        rc = an_run(e, ac, src, &res, why, sizeof why);
        double el = ctg_mono() - t0;
        if (rc < 0) {
            fprintf(stderr, "gpu: an_run: %s\n", why);
            break;
        }
        if (r >= 0) {
            t[r] = el;
            t[o->runs + r] = res.t_resample;
            t[2 * o->runs + r] = res.t_model;
            t[3 * o->runs + r] = res.t_measure;
            t[4 * o->runs + r] = res.t_score;
        }
        memcpy(grid, res.grid, sizeof grid);
        organs = res.norgans;
        an_result_free(&res);
    }
    if (rc == 0) {
        long nw = n_windows(c, grid, o->overlap);
        double med = median(t, o->runs);
        double part[4];
        for (int i = 0; i < 4; i++) part[i] = median(t + (i + 1) * o->runs, o->runs);
        char extra[384];
        snprintf(extra, sizeof extra,
                 "\"path\":\"an_run\",\"src\":[%d,%d,%d],\"grid\":[%d,%d,%d],\"windows\":%ld,"
                 "\"runs\":%d,\"t_resample\":%.4g,\"t_model\":%.4g,\"t_measure\":%.4g,"
                 "\"t_score\":%.4g,\"organs_reported\":%d",
                 o->src[0], o->src[1], o->src[2], grid[0], grid[1], grid[2], nw, o->runs, part[0],
                 part[1], part[2], part[3], organs);
        emit("e2e", tag, o->e2e_sp, cu_dtype_name(dt), med, 1.0 / med, infer_flops(c, nw), extra);
    }
    an_ctx_free(ac);
    an_engine_close(e);
    ctg_vol_free(src);
    free(t);
    return rc;
}

/* an_run, the CPU path of the daemon, on the same study. */
static int mode_e2e_cpu(const opts *o, mdl_model *m, const char *tag)
{
    if (!o->model) {
        fprintf(stderr, "gpu: e2e-cpu needs --model (with its vocabulary and findings)\n");
        return CTG_EINVAL;
    }
    char why[512] = "";
    an_engine *e = NULL;
    ctg_vol *src = phantom(o->src, o->src_sp);
    int rc = src ? open_engine(o, m, &e) : CTG_ENOMEM;
    if (rc < 0) {
        ctg_vol_free(src);
        return rc;
    }
    const mdl_config *c = &m->cfg;
    /* One run: each an_run makes its own activations and plans anyway, and
     * the CPU path takes seconds to minutes. */
    for (int r = 1; r < 2; r++) {
        an_result res;
        memset(&res, 0, sizeof res);
        double t0 = ctg_mono();
        rc = an_run(e, NULL, src, &res, why, sizeof why);
        double dt = ctg_mono() - t0;
        if (rc < 0) {
            fprintf(stderr, "gpu: an_run: %s\n", why);
            break;
        }
        if (r == 1) {
            long nw = n_windows(c, res.grid, o->overlap);
            char extra[384];
            snprintf(extra, sizeof extra,
                     "\"impl_detail\":\"an_run cpu threads %d\",\"src\":[%d,%d,%d],"
                     "\"grid\":[%d,%d,%d],\"windows\":%ld,\"runs\":1,\"t_resample\":%.4g,"
                     "\"t_model\":%.4g,\"t_measure\":%.4g,\"t_score\":%.4g,\"organs_reported\":%d",
                     op_get_threads(), o->src[0], o->src[1], o->src[2], res.grid[0], res.grid[1],
                     res.grid[2], nw, res.t_resample, res.t_model, res.t_measure, res.t_score,
                     res.norgans);
            printf("{\"impl\":\"ctglip-cpu\",\"mode\":\"e2e\",\"config\":\"%s\",\"spacing\":%g,"
                   "\"precision\":\"fp32\",\"median_s\":%.6g,\"samples_per_s\":%.6g,"
                   "\"tflops\":%.6g,\"gflop\":%.6g,%s}\n",
                   tag, res.spacing[0], dt, 1.0 / dt, infer_flops(c, nw) / dt / 1e12,
                   infer_flops(c, nw) / 1e9, extra);
            fflush(stdout);
        }
        an_result_free(&res);
    }
    an_engine_close(e);
    ctg_vol_free(src);
    return rc;
}

/* Reference forward on the CPU for torch_ctglip.py check.  File: "CTGBDUMP",
 * i32 n, d, h, w, k1, c0, E, then f32 hu [n*s], u8 labels [n*s], f32 logits
 * [n][k1][s], f32 feat [n][c0][s], f32 embed [n][k1][E], i64 count [n][k1]. */
static int mode_dump(const opts *o, const mdl_model *m)
{
    const mdl_config *c = &m->cfg;
    if (!o->dump) {
        fprintf(stderr, "gpu: --mode dump needs --dump FILE\n");
        return CTG_EINVAL;
    }
    int n = o->batch, d = c->patch[0], h = c->patch[1], w = c->patch[2], k1 = c->n_classes + 1;
    int c0 = mdl_level_width(c, 0), E = c->embed_dim;
    size_t s = (size_t)d * h * w;
    mdl_acts *a = NULL;
    float *hu = malloc(sizeof(float) * n * s);
    uint8_t *lab = malloc((size_t)n * s);
    int rc = CTG_ENOMEM;
    FILE *f = NULL;
    if (!hu || !lab) goto done;
    train_batch(c, n, hu, lab);
    if ((rc = mdl_acts_new(m, n, d, h, w, &a)) < 0 || (rc = mdl_forward(m, a, hu, lab)) < 0)
        goto done;
    if (!(f = fopen(o->dump, "wb"))) {
        rc = CTG_EIO;
        goto done;
    }
    int hdr[7] = {n, d, h, w, k1, c0, E};
    int ok = fwrite("CTGBDUMP", 1, 8, f) == 8 && fwrite(hdr, sizeof hdr, 1, f) == 1 &&
             fwrite(hu, sizeof(float), n * s, f) == n * s && fwrite(lab, 1, n * s, f) == n * s &&
             fwrite(a->logits, sizeof(float), n * k1 * s, f) == n * k1 * s &&
             fwrite(a->feat, sizeof(float), n * c0 * s, f) == n * c0 * s &&
             fwrite(a->embed, sizeof(float), (size_t)n * k1 * E, f) == (size_t)n * k1 * E &&
             fwrite(a->count, sizeof(int64_t), (size_t)n * k1, f) == (size_t)n * k1;
    if (fclose(f) != 0 || !ok) rc = CTG_EIO;
    if (!rc) fprintf(stderr, "gpu: reference forward of %d patch(es) written to %s\n", n, o->dump);
done:
    if (rc < 0) fprintf(stderr, "gpu: dump: %s\n", ctg_strerror(rc));
    mdl_acts_free(a);
    free(hu);
    free(lab);
    return rc;
}

int main(int argc, char **argv)
{
    opts o;
    if (parse_args(argc, argv, &o) < 0) return 2;
    if (o.threads > 0) op_set_threads(o.threads);
    mdl_model *m = NULL;
    char tag[128];
    int rc = make_model(&o, &m, tag, sizeof tag);
    if (rc < 0) return 1;
    const mdl_config *c = &m->cfg;
    fprintf(stderr,
            "gpu: network %s: width %d depth %d mult %d max_width %d classes %d embed %d "
            "hidden %d text %d patch %dx%dx%d, %zu parameters\n",
            tag, c->width, c->depth, c->mult, c->max_width, c->n_classes, c->embed_dim,
            c->mlp_hidden, c->text_dim, c->patch[0], c->patch[1], c->patch[2], m->n_params);
    if (o.save_model) {
        char why[512] = "";
        if ((rc = mdl_save(m, o.save_model, why, sizeof why)) < 0) {
            fprintf(stderr, "gpu: %s\n", why);
            mdl_free(m);
            return 1;
        }
    }
    int failed = 0;
    if (has_mode(&o, "plan")) failed |= mode_plan(&o, m, tag) < 0;
    if (has_mode(&o, "dump")) failed |= mode_dump(&o, m) < 0;
    int gpu_modes = has_mode(&o, "infer") || has_mode(&o, "train") || has_mode(&o, "e2e");
    cu_ctx *ctx = NULL;
    if (gpu_modes) {
        char why[512] = "";
        if ((rc = cu_ctx_new(o.device, &ctx, why, sizeof why)) < 0) {
            fprintf(stderr, "gpu: cu_ctx_new(%s): %s (%s)\n",
                    o.device == CU_EMULATE ? "emulate" : "device", why, ctg_strerror(rc));
            mdl_free(m);
            return 1;
        }
        if (cu_ctx_emulated(ctx))
            snprintf(g_device, sizeof g_device, "emulation (host)");
        else if (cu_device_name(o.device, g_device, sizeof g_device) < 0)
            snprintf(g_device, sizeof g_device, "cuda:%d", o.device);
        fprintf(stderr, "gpu: device %s\n", g_device);
    }
    for (int p = 0; gpu_modes && p < o.nprec; p++) {
        if (has_mode(&o, "infer")) failed |= mode_infer(&o, ctx, m, tag, o.prec[p]) < 0;
        if (has_mode(&o, "train")) failed |= mode_train(&o, ctx, m, tag, o.prec[p]) < 0;
        /* End to end once, in the faster type (the first listed). */
        if (has_mode(&o, "e2e") && p == 0)
            failed |= (o.model ? mode_e2e_an(&o, ctx, m, tag, o.prec[p])
                               : mode_e2e(&o, ctx, m, tag, o.prec[p])) < 0;
    }
    cu_ctx_free(ctx);
    if (has_mode(&o, "e2e-cpu")) failed |= mode_e2e_cpu(&o, m, tag) < 0;
    mdl_free(m);
    return failed ? 1 : 0;
}
