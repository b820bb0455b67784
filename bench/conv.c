/*
 * conv.c - benchmark of the 3-D convolutions in core/ops.h against the
 * machine's measured fp32 FMA peak.
 *
 *   bench/conv [-t THREADS] [-r REPEATS]
 *
 * The peak is measured, not looked up: every thread runs a register-blocked
 * loop of independent fused multiply-adds (AVX2, and AVX-512 where the CPU
 * has it; the larger is the peak) and the flops of all threads are divided
 * by the wall time.  Then each U-Net-like layer runs forward, backward-data
 * and backward-weights through the public API, reorders included, and the
 * best of REPEATS runs is printed as GFLOP/s and as a fraction of the peak.
 *
 * Threading: the FMA loop runs on one pthread per thread asked for; the
 * convolutions on oneDNN's OpenMP threads of the main thread.
 */
#include "core/core.h"
#include "core/ops.h"

#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- FMA peak ------------------------------------------------------------------- */

#define FMA_ITERS 20000000L
#define NACC 12 /* independent chains: > latency (4) x FMA ports (2) */

/* Each iteration issues NACC FMAs of 8 floats = 2*8*NACC flops. */
__attribute__((target("avx2,fma"))) static float fma_avx2(long iters)
{
    __m256 acc[NACC];
    __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < NACC; i++) acc[i] = _mm256_set1_ps((float)i);
    for (long it = 0; it < iters; it++) {
        /* Unrolled by hand so every accumulator stays in a register. */
        acc[0] = _mm256_fmadd_ps(acc[0], a, b);
        acc[1] = _mm256_fmadd_ps(acc[1], a, b);
        acc[2] = _mm256_fmadd_ps(acc[2], a, b);
        acc[3] = _mm256_fmadd_ps(acc[3], a, b);
        acc[4] = _mm256_fmadd_ps(acc[4], a, b);
        acc[5] = _mm256_fmadd_ps(acc[5], a, b);
        acc[6] = _mm256_fmadd_ps(acc[6], a, b);
        acc[7] = _mm256_fmadd_ps(acc[7], a, b);
        acc[8] = _mm256_fmadd_ps(acc[8], a, b);
        acc[9] = _mm256_fmadd_ps(acc[9], a, b);
        acc[10] = _mm256_fmadd_ps(acc[10], a, b);
        acc[11] = _mm256_fmadd_ps(acc[11], a, b);
    }
    __m256 s = acc[0];
    for (int i = 1; i < NACC; i++) s = _mm256_add_ps(s, acc[i]);
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0] + out[7];
}

__attribute__((target("avx512f"))) static float fma_avx512(long iters)
{
    __m512 acc[NACC];
    __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < NACC; i++) acc[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < iters; it++) {
        acc[0] = _mm512_fmadd_ps(acc[0], a, b);
        acc[1] = _mm512_fmadd_ps(acc[1], a, b);
        acc[2] = _mm512_fmadd_ps(acc[2], a, b);
        acc[3] = _mm512_fmadd_ps(acc[3], a, b);
        acc[4] = _mm512_fmadd_ps(acc[4], a, b);
        acc[5] = _mm512_fmadd_ps(acc[5], a, b);
        acc[6] = _mm512_fmadd_ps(acc[6], a, b);
        acc[7] = _mm512_fmadd_ps(acc[7], a, b);
        acc[8] = _mm512_fmadd_ps(acc[8], a, b);
        acc[9] = _mm512_fmadd_ps(acc[9], a, b);
        acc[10] = _mm512_fmadd_ps(acc[10], a, b);
        acc[11] = _mm512_fmadd_ps(acc[11], a, b);
    }
    __m512 s = acc[0];
    for (int i = 1; i < NACC; i++) s = _mm512_add_ps(s, acc[i]);
    return _mm512_reduce_add_ps(s);
}

typedef struct fma_job {
    int wide; /* 1: AVX-512 */
    long iters;
    pthread_barrier_t *bar;
    volatile float sink;
} fma_job;

static void *fma_thread(void *arg)
{
    fma_job *j = arg;
    pthread_barrier_wait(j->bar);
    j->sink = j->wide ? fma_avx512(j->iters) : fma_avx2(j->iters);
    return NULL;
}

/* GFLOP/s of nthr threads running the loop at once (best of 3). */
static double fma_peak(int nthr, int wide)
{
    double best = 0;
    long iters = FMA_ITERS / (wide ? 2 : 1);
    for (int rep = 0; rep < 3; rep++) {
        pthread_t th[256];
        fma_job jobs[256];
        pthread_barrier_t bar;
        pthread_barrier_init(&bar, NULL, (unsigned)nthr + 1);
        for (int i = 0; i < nthr; i++) {
            jobs[i].wide = wide;
            jobs[i].iters = iters;
            jobs[i].bar = &bar;
            pthread_create(&th[i], NULL, fma_thread, &jobs[i]);
        }
        pthread_barrier_wait(&bar);
        double t0 = now();
        for (int i = 0; i < nthr; i++) pthread_join(th[i], NULL);
        double t = now() - t0;
        pthread_barrier_destroy(&bar);
        double flops = (double)nthr * iters * NACC * (wide ? 16 : 8) * 2;
        if (flops / t > best) best = flops / t;
    }
    return best * 1e-9;
}

/* ---- convolutions ----------------------------------------------------------------- */

typedef struct shape {
    const char *name;
    op_conv_geom g;
} shape;

static float *buf(size_t n)
{
    float *x = malloc(n * sizeof *x);
    if (!x) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++) x[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
    return x;
}

/* The memory-bound ops of one U-Net level, for scale next to its convs. */
static void other_ops(int reps)
{
    int c = 32, k = 16;
    size_t s = 64 * 64 * 64, n = (size_t)c * s;
    float *x = buf(n), *y = buf(n), *g = buf(n), *dx = buf(n), *ga = buf((size_t)c);
    float *be = buf((size_t)c), *dga = buf((size_t)c), *dbe = buf((size_t)c);
    float *logit = buf((size_t)k * s), *prob = buf((size_t)k * s), *dl = buf((size_t)k * s);
    float mean[32], rstd[32], loss, pooled[16 * 32];
    int64_t count[16];
    uint8_t *lab = malloc(s);
    for (size_t v = 0; v < s; v++) lab[v] = (uint8_t)((v / 4096) % (unsigned)k);
    printf("\nother ops on 32 channels x 64^3 (16 classes for the losses), best of %d:\n", reps);
    for (int op = 0; op < 8; op++) {
        double best = 1e30;
        for (int r = 0; r <= reps; r++) {
            double t0 = now();
            switch (op) {
            case 0: op_inorm_forward_cpu(y, mean, rstd, x, ga, be, 1, c, s); break;
            case 1: op_inorm_backward_cpu(dx, dga, dbe, g, x, mean, rstd, ga, 1, c, s); break;
            case 2: op_lrelu_forward_cpu(y, x, n, 0.01f); break;
            case 3: op_lrelu_backward_cpu(dx, g, x, n, 0.01f); break;
            case 4: op_softmax_ce_forward_cpu(&loss, prob, logit, lab, NULL, -1, 1, k, s); break;
            case 5: op_softmax_ce_backward_cpu(dl, 1.0f, prob, lab, NULL, -1, 1, k, s); break;
            case 6: op_dice_backward_cpu(dl, 1.0f, prob, lab, -1, 1, 1, k, s); break;
            default: op_mpool_forward_cpu(pooled, count, x, lab, k, c, s); break;
            }
            double t = now() - t0;
            if (r > 0 && t < best) best = t;
        }
        static const char *names[] = {"inorm fwd", "inorm bwd", "lrelu fwd", "lrelu bwd",
                                      "softmax+CE fwd", "softmax+CE bwd", "dice bwd",
                                      "organ pool fwd"};
        printf("  %-16s %8.2f ms\n", names[op], best * 1e3);
    }
    free(x), free(y), free(g), free(dx), free(ga), free(be), free(dga), free(dbe);
    free(logit), free(prob), free(dl), free(lab);
}

int main(int argc, char **argv)
{
    int threads = 0, reps = 3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-t") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-r") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [-t THREADS] [-r REPEATS]\n", argv[0]);
            return 2;
        }
    }
    if (reps < 1) reps = 1;
    op_set_threads(threads);
    int nthr = op_get_threads();
    if (nthr > 256) nthr = 256;

    double p2 = fma_peak(nthr, 0), p1 = fma_peak(1, 0), p512 = 0;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) p512 = fma_peak(nthr, 1);
    double peak = p2 > p512 ? p2 : p512;
    printf("fp32 FMA peak, measured: %.1f GFLOP/s on %d threads (AVX2 %.1f, 1 thread %.1f",
           peak, nthr, p2, p1);
    if (p512 > 0) printf(", AVX-512 %.1f", p512);
    printf(")\n\n");

    shape shapes[] = {
        {"32->32 64^3 k3s1", op_conv_geom_make(1, 32, 32, 64, 64, 64, 3, 1)},
        {"16->32 64^3 k3s2", op_conv_geom_make(1, 16, 32, 64, 64, 64, 3, 2)},
        {"64->64 32^3 k3s1", op_conv_geom_make(1, 64, 64, 32, 32, 32, 3, 1)},
        {"32->64 64^3 k1s2", op_conv_geom_make(1, 32, 64, 64, 64, 64, 1, 2)},
        {"64->32 32^3 deconv", op_deconv_geom_make(1, 64, 32, 32, 32, 32)},
        {"1->16 64^3 k3s1", op_conv_geom_make(1, 1, 16, 64, 64, 64, 3, 1)},
    };
    op_ctx *ctx = NULL;
    int rc = op_ctx_new(&ctx);
    if (rc) {
        fprintf(stderr, "op_ctx_new: %s\n", ctg_strerror(rc));
        return 1;
    }
    printf("%-20s %-8s %9s %9s %7s  %s\n", "layer", "pass", "ms", "GFLOP/s", "peak",
           "implementation");
    double tot_flops = 0, tot_time = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const op_conv_geom *g = &shapes[si].g;
        size_t ni = op_conv_in_count(g), no = op_conv_out_count(g), nw = op_conv_weight_count(g);
        float *in = buf(ni), *out = buf(no), *w = buf(nw), *b = buf((size_t)g->cout);
        float *din = buf(ni), *dw = buf(nw), *db = buf((size_t)g->cout);
        op_conv *p = NULL;
        double t0 = now();
        if ((rc = op_conv_new(ctx, g, &p))) {
            fprintf(stderr, "op_conv_new: %s\n", ctg_strerror(rc));
            return 1;
        }
        double tplan = now() - t0;
        double flops = op_conv_flops(g);
        for (int pass = 0; pass < 3; pass++) {
            double best = 1e30;
            for (int r = 0; r <= reps; r++) { /* the first run warms up */
                t0 = now();
                if (pass == 0)
                    rc = op_conv3d_forward_cpu(p, out, in, w, b);
                else if (pass == 1)
                    rc = op_conv3d_backward_cpu(p, din, NULL, NULL, out, in, w);
                else
                    rc = op_conv3d_backward_cpu(p, NULL, dw, db, out, in, w);
                double t = now() - t0;
                if (rc) {
                    fprintf(stderr, "conv pass %d: %s\n", pass, ctg_strerror(rc));
                    return 1;
                }
                if (r > 0 && t < best) best = t;
            }
            static const char *names[] = {"fwd", "bwd-data", "bwd-wei"};
            double gf = flops / best * 1e-9;
            printf("%-20s %-8s %9.2f %9.1f %6.0f%%  %s\n", pass ? "" : shapes[si].name,
                   names[pass], best * 1e3, gf, 100 * gf / peak, op_conv_impl(p, pass));
            tot_flops += flops;
            tot_time += best;
        }
        printf("%-20s (plan %.0f ms)\n", "", tplan * 1e3);
        op_conv_free(p);
        free(in), free(out), free(w), free(b), free(din), free(dw), free(db);
    }
    double gf = tot_flops / tot_time * 1e-9;
    other_ops(reps);
    printf("\nall layers and passes: %.1f GFLOP/s = %.0f%% of the measured peak (goal 40%%)\n", gf,
           100 * gf / peak);
    printf("scratch arena: %.1f MiB\n", op_ctx_scratch_bytes(ctx) / 1048576.0);
    op_ctx_free(ctx);
    return 0;
}
