/*
 * testutil.c - helpers that several unit-test files share: whole-file reads,
 * a deterministic random source, and running `ctglip phantom` in-process.
 * Each test runs in its own process, so the random state starts afresh in
 * every test.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "tests.h"
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
