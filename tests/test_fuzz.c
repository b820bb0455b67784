/*
 * test_fuzz.c - runs the fuzz target of the received-data-set parser
 * (tests/fuzz/fuzz_instance.c) over a deterministic set of mutations of a
 * real CT slice: every truncation point class, random byte changes in the
 * header, corrupted length fields.  Nothing may crash; the intact slice must
 * parse and a slice cut short must not.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dicom/dicom.h"
#include "tests.h"

int ctg_fuzz_instance(const uint8_t *data, size_t size);

/* Loads the data set part (after the meta header) of one fixture slice. */
static uint8_t *load_slice(size_t *size)
{
    char cmd[2048];
    const char *root = getenv("CTG_ROOT");
    if (!root) return NULL;
    snprintf(cmd, sizeof cmd, "sh '%s/tests/fixture.sh' fx >/dev/null 2>&1 && ls fx/*.dcm | head -1",
             root);
    FILE *p = popen(cmd, "r");
    char path[1024] = "";
    if (!p) return NULL;
    if (!fgets(path, sizeof path, p)) path[0] = 0;
    pclose(p);
    path[strcspn(path, "\n")] = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        free(buf);
        return NULL;
    }
    fclose(f);
    uint32_t glen;
    memcpy(&glen, buf + 140, 4);
    size_t off = 132 + 12 + glen;
    *size = (size_t)n - off;
    memmove(buf, buf + off, *size);
    return buf;
}

static uint32_t rng = 2463534242u;
static uint32_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

static int test_parser_mutations(void)
{
    size_t n = 0;
    dcm_quiet();
    uint8_t *ds = load_slice(&n);
    CHECK(ds != NULL);
    CHECK(n > 500000);
    CHECK_EQ_INT(ctg_fuzz_instance(ds, n), 0);

    /* Truncations: inside the header, and at even offsets through the
     * pixel data; a data set cut short must be refused. */
    int refused = 0, cuts = 0;
    for (size_t cut = 2; cut < n; cut += (cut < 4096 ? 62 : 16382)) {
        cuts++;
        if (ctg_fuzz_instance(ds, cut & ~(size_t)1) != 0) refused++;
    }
    printf("truncations: %d of %d refused\n", refused, cuts);
    CHECK_EQ_INT(refused, cuts);

    /* Random changes to bytes of the header (first 2 KiB). */
    uint8_t *m = malloc(n);
    CHECK(m != NULL);
    int accepted = 0;
    for (int i = 0; i < 1500; i++) {
        memcpy(m, ds, n);
        int k = 1 + (int)(next() % 8);
        for (int j = 0; j < k; j++) m[next() % 2048] = (uint8_t)next();
        if (ctg_fuzz_instance(m, n) == 0) accepted++;
    }
    printf("random header mutations: %d of 1500 still parse\n", accepted);

    /* Huge and odd length fields at every element-header-like position. */
    for (size_t pos = 0; pos + 8 < 2048; pos += 2) {
        memcpy(m, ds, n);
        uint32_t huge = 0xfffffff0u - (uint32_t)pos;
        memcpy(m + pos + 4, &huge, 4);
        ctg_fuzz_instance(m, n);
    }
    free(m);
    free(ds);
    return 0;
}

const test_case fuzz_tests[] = {
    {"fuzz_parser_mutations", test_parser_mutations},
    {NULL, NULL},
};
