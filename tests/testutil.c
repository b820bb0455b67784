/*
 * testutil.c - helpers that several unit-test files share: whole-file reads,
 * a deterministic random source, and running `ctglip phantom` in-process.
 * Each test runs in its own process, so the random state starts afresh in
 * every test.
 */
#include <stdarg.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tests.h"
#include "core/organs.h"
#include "core/model.h"
#include "core/text.h"
#include "tools/tools.h"

char *tu_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *b = NULL;
    long n;
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) goto done;
    if (!(b = malloc((size_t)n + 1))) goto done;
    if (fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
        goto done;
    }
    b[n] = 0;
    if (len) *len = (size_t)n;
done:
    fclose(f);
    return b;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

void tu_seed(uint64_t seed) { rng_state = seed; }

double tu_urand(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) / 9007199254740992.0;
}

float *tu_frand(size_t n, float lo, float hi)
{
    float *x = malloc((n ? n : 1) * sizeof *x);
    if (!x) abort();
    for (size_t i = 0; i < n; i++) x[i] = (float)(lo + (hi - lo) * tu_urand());
    return x;
}

int tu_phantom(const char *first, ...)
{
    char *argv[64];
    int argc = 0;
    argv[argc++] = (char *)"phantom";
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && argc < 62; a = va_arg(ap, const char *)) argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc++] = (char *)"--quiet";
    argv[argc] = NULL;
    return ctg_phantom_main(argc, argv);
}

const char *tu_root_path(const char *rel)
{
    static char path[2][4096];
    static int which;
    const char *root = getenv("CTG_ROOT");
    which ^= 1;
    snprintf(path[which], sizeof path[which], "%s/%s", root ? root : ".", rel);
    return path[which];
}

const char *const tu_tiny_organs[TU_TINY_K] = {"liver",    "spleen", "kidney_left", "kidney_right",
                                               "pancreas", "aorta",  "gallbladder", "stomach"};

mdl_model *tu_tiny_model(int embed_dim, int text_dim, const char *text_id)
{
    mdl_config c = mdl_config_default(TU_TINY_K);
    c.width = 4;
    c.depth = 2;
    c.max_width = 16;
    c.embed_dim = embed_dim;
    c.mlp_hidden = 32;
    c.text_dim = text_dim;
    c.patch[0] = c.patch[1] = c.patch[2] = 16;
    int ids[TU_TINY_K];
    for (int i = 0; i < TU_TINY_K; i++) ids[i] = ctg_organ_id(tu_tiny_organs[i]);
    mdl_model *m = NULL;
    char why[256] = "";
    if (mdl_new(&c, ids, text_id, 7, &m, why, sizeof why) != 0)
        fprintf(stderr, "mdl_new: %s\n", why);
    return m;
}

float *tu_fzero(size_t n)
{
    float *x = calloc(n ? n : 1, sizeof *x);
    if (!x) abort();
    return x;
}

float *tu_fcopy(const float *a, size_t n)
{
    float *x = tu_fzero(n);
    memcpy(x, a, n * sizeof *x);
    return x;
}

double tu_maxrel(const float *a, const float *b, size_t n)
{
    double d = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        if (e > d || e != e) d = e != e ? INFINITY : e;
        if (fabs(b[i]) > m) m = fabs(b[i]);
    }
    return m > 0 ? d / m : d;
}

uint16_t tu_f2bf(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float tu_bf2f(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

int tu_tiny_model_save(const char *path)
{
    char why[256] = "";
    txt_encoder *enc = NULL;
    if (txt_open("glove", tu_root_path(TXT_GLOVE_DEFAULT), &enc, why, sizeof why) < 0) {
        fprintf(stderr, "text encoder: %s\n", why);
        return -1;
    }
    mdl_model *m = tu_tiny_model(txt_dim(enc), 0, txt_identity(enc));
    txt_close(enc);
    if (!m) return -1;
    float sp[3] = {6, 6, 6};
    mdl_set_spacing(m, sp);
    int rc = mdl_save(m, path, why, sizeof why);
    mdl_free(m);
    if (rc < 0) {
        fprintf(stderr, "model: %s\n", why);
        return -1;
    }
    return 0;
}
