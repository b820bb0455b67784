/*
 * tests.h - the unit-test interface of tests/runner.c.  Each test is a
 * function returning 0; CHECK() prints the failing expression with its
 * file and line and fails the test (each test runs in its own process, so
 * an early return leaks nothing that matters).
 */
#ifndef CTGLIP_TESTS_H
#define CTGLIP_TESTS_H

#include <stdio.h>

typedef struct test_case {
    const char *name;
    int (*fn)(void);
    int timeout; /* seconds; 0 (left out): the runner's default of 60 */
} test_case;

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__,   \
                    #cond);                                                    \
            return 1;                                                          \
        }                                                                      \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                     \
    do {                                                                       \
        long long a_ = (long long)(a), b_ = (long long)(b);                    \
        if (a_ != b_) {                                                        \
            fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%lld != %lld)\n",  \
                    __FILE__, __LINE__, #a, #b, a_, b_);                       \
            return 1;                                                          \
        }                                                                      \
    } while (0)

/* Shared helpers (testutil.c). */
#include <stddef.h>
#include <stdint.h>
/* The whole file, NUL-terminated; *len (may be NULL) gets its size.  NULL
 * when it cannot be read. */
char *tu_slurp(const char *path, size_t *len);
/* Deterministic uniform numbers in [0, 1) (splitmix64); tu_seed restarts. */
void tu_seed(uint64_t seed);
double tu_urand(void);
/* n floats uniform in [lo, hi); aborts when out of memory. */
float *tu_frand(size_t n, float lo, float hi);
/* Runs `ctglip phantom ARGS... --quiet` in-process; the arguments end with
 * NULL.  Returns its exit status. */
int tu_phantom(const char *first, ...);

/* Zeroed floats (aborts when out of memory); a copy of a; the largest
 * |a - b| over the largest |b| (NaN anywhere: infinity). */
float *tu_fzero(size_t n);
float *tu_fcopy(const float *a, size_t n);
double tu_maxrel(const float *a, const float *b, size_t n);
/* fp32 -> bf16 bits, rounded to nearest even; and back. */
uint16_t tu_f2bf(float f);
float tu_bf2f(uint16_t h);

/* $CTG_ROOT/rel (the source tree; "." when unset); two buffers in turn. */
const char *tu_root_path(const char *rel);
/* A tiny model of TU_TINY_K abdominal organs (width 4, depth 2, patch 16,
 * fixed seed) for scoring and pipeline tests; NULL on failure. */
#define TU_TINY_K 8
extern const char *const tu_tiny_organs[TU_TINY_K];
struct mdl_model;
struct mdl_model *tu_tiny_model(int embed_dim, int text_dim, const char *text_id);
/* tu_tiny_model with the GloVe text encoder's dimension and identity,
 * trained spacing 6 mm, saved to path.  0 or -1 (the reason on stderr). */
int tu_tiny_model_save(const char *path);

/* NULL-terminated tables, one per test file. */
extern const test_case store_tests[];
extern const test_case rx_tests[];     /* test_rx.c: file writer, received-file parse */
extern const test_case queue_tests[];
extern const test_case config_tests[];
extern const test_case fuzz_tests[];
extern const test_case vol_tests[];     /* test_vol.c: geometry, resampling, NIfTI, view */
extern const test_case volume_tests[];  /* test_volume.c: DICOM series <-> volume */
extern const test_case phantom_tests[]; /* test_phantom.c: phantom generator */
extern const test_case ctvol_tests[];   /* test_ctvol.c: fixtures and round trips end to end */
extern const test_case ops_tests[];     /* test_ops.c: tensor ops, gradients, optimizer */
extern const test_case text_tests[];    /* test_text.c: text encoders, metrics */
extern const test_case model_tests[];   /* test_model.c: network, gradients, model file, sliding window */
extern const test_case eval_tests[];    /* test_eval.c: findings list, zero-shot scoring, ctglip-train eval */
extern const test_case train_tests[];   /* test_train.c: CT-GLIP losses, training loop, resume */
extern const test_case data_tests[];    /* test_data.c: trainer data layer (manifest, cases, cache, patches) */
extern const test_case seg_tests[];     /* test_seg.c: DICOM SEG writer */
extern const test_case sr_tests[];      /* test_sr.c: TID 1500 SR writer */
extern const test_case outbox_tests[];  /* test_outbox.c: export outbox (store) */
extern const test_case analysis_tests[]; /* test_analysis.c: study analysis (core/analysis.h) */
extern const test_case reports_in_tests[]; /* test_reports_in.c: report SRs and the drop folder */
extern const test_case report_tests[];  /* test_report.c: radiology report parser (core/report.h) */
/* The GPU backend.  Weak, so a table is optional until its file exists. */
extern const test_case cuops_tests[] __attribute__((weak));  /* test_cuops.c: own CUDA kernels */
extern const test_case cuconv_tests[] __attribute__((weak)); /* test_cuconv.c: cuDNN conv, cuBLAS */
extern const test_case cunet_tests[] __attribute__((weak));  /* test_cunet.c: the network on the GPU */
extern const test_case gpu_tests[] __attribute__((weak));    /* test_gpu.c: trainer, workers, comm */

/* Exit status of a test that cannot run here; it prints "skipped: REASON"
 * first (the runner shows the reason). */
#define TEST_SKIP 77
#define SKIP(...)                                                              \
    do {                                                                       \
        printf("skipped: " __VA_ARGS__);                                       \
        printf("\n");                                                          \
        return TEST_SKIP;                                                      \
    } while (0)

#endif
