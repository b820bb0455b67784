/*
 * cukern.cuh - reduction helpers shared by the own kernels (cukern.cu,
 * culoss.cu); C++ for nvcc only, on top of cu_int.h.
 *
 * Reductions add per-thread partial sums into fp32 (or fp64) accumulators
 * with atomics: a warp shuffle first where lanes share the target, one
 * atomic per thread otherwise, and on large tensors each thread sums a few
 * hundred elements first so the atomics stay a small fraction of the
 * traffic.  The order of
 * the atomics varies, so results on the GPU vary in the last bits from run
 * to run; the emulation is sequential and repeatable.
 */
#ifndef CTGLIP_CUKERN_CUH
#define CTGLIP_CUKERN_CUH

#include "cuda/cu_int.h"

/* Every entry point: make the device current, clear the error. */
#define CU__ENTER(c)                                                           \
    do {                                                                       \
        int rc_ = cu__enter(c);                                                \
        if (rc_) return rc_;                                                   \
    } while (0)

/* Device memory for the temporaries of one op, bytes: the context's
 * scratch when they fit, else the shared workspace.  Valid until the op's
 * kernels have run (the next op may reuse it; stream order keeps that
 * safe), so no op may expect it to survive into another. */
static inline int cu__tmp(cu_ctx *c, size_t bytes, void **p)
{
    if (bytes <= CU__SCRATCH * sizeof(float)) {
        *p = c->scratch;
        return 0;
    }
    return cu__workspace(c, bytes, p);
}

/* Adds v of every thread into *p in double: warp reduction (all 32 lanes
 * must call it) and one fp64 atomic per warp on the device, += on the host. */
static __host__ __device__ __forceinline__ void cu__red_add_d(double *p, float v)
{
#ifdef __CUDA_ARCH__
    double d = v;
    for (int o = 16; o > 0; o >>= 1) d += __shfl_down_sync(0xffffffffu, d, o);
    if ((threadIdx.x & 31) == 0 && d != 0.0) atomicAdd(p, d);
#else
    *p += v;
#endif
}

/* The same for counts. */
static __host__ __device__ __forceinline__ void cu__red_add_ll(long long *p, long long v)
{
#ifdef __CUDA_ARCH__
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0 && v != 0)
        atomicAdd((unsigned long long *)p, (unsigned long long)v);
#else
    *p += v;
#endif
}

/* Adds v into p[k], where k = t % C is the channel of the calling thread in
 * the layout of cu__chan_sum.  When C divides 32 the lanes of a warp that
 * share a channel are reduced with shuffles first (all 32 lanes must call
 * it then, which cu__chan_sum guarantees); otherwise one atomic a thread. */
static __host__ __device__ __forceinline__ void cu__red_chan(float *p, size_t C, size_t k,
                                                             float v)
{
#ifdef __CUDA_ARCH__
    if (C < 32 && 32 % C == 0) {
        for (unsigned o = 16; o >= C; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if ((threadIdx.x & 31) < C && v != 0.0f) atomicAdd(p + k, v);
    } else if (v != 0.0f) {
        atomicAdd(p + k, v);
    }
#else
    (void)C;
    p[k] += v;
#endif
}

/* Up to three fp32 accumulator arrays [n*C] (NULL: not wanted). */
struct cu__outs {
    float *p[3];
};

/* Sums over the voxels of a channels-last [n][s][C] tensor, per (sample,
 * channel): for i < N, o.p[i][b*C + k] += the sum over v < s of what
 * f(b, v, k, acc) adds to acc[i].  The caller zeroes the accumulators.
 *
 * Layout: every sample's voxels are cut into parts (segments of cu__segs)
 * of a few million elements; inside a part thread t works on channel
 * t % C and voxels row, row + rows, ... with row = t / C and rows = nt / C,
 * so neighbouring threads read neighbouring channels of one voxel, and a
 * warp reads neighbouring voxels when C is small: the loads are coalesced.
 * When a part has fewer threads than channels each thread loops over
 * channels t, t + nt, ... instead.  The emulation uses tiny parts so the
 * tests cover the split. */
template <int N, class F>
static int cu__chan_sum(cu_ctx *c, const char *name, int n, int ch, size_t s, cu__outs o, F f)
{
    if (n <= 0 || ch <= 0 || !s) return 0;
    size_t C = (size_t)ch;
    size_t per = c->emu ? 64 : (size_t)16384 * 256; /* elements of one part */
    size_t parts = (s * C + per - 1) / per;
    if (parts > s) parts = s;
    size_t span = (s + parts - 1) / parts;
    /* Threads wanted: one per 16 elements, which cu__segs caps at 16384 a
     * part, so big parts give ~256 elements a thread (few atomics) and
     * small tensors still spread over many threads. */
    size_t len = (span * C + 15) / 16;
    return cu__segs(c, name, (size_t)n * parts, len,
                    [=] CU_HD(size_t seg, size_t t, size_t nt) {
                        size_t b = seg / parts, part = seg - b * parts;
                        size_t v0 = part * span, v1 = v0 + span < s ? v0 + span : s;
                        size_t rows, row, k0, kstep;
                        if (nt >= C) {
                            rows = nt / C;
                            row = t / C;
                            k0 = t % C;
                            kstep = C;
                        } else {
                            rows = 1;
                            row = 0;
                            k0 = t;
                            kstep = nt;
                        }
                        for (size_t k = k0; k < C; k += kstep) {
                            float acc[N];
                            for (int i = 0; i < N; i++) acc[i] = 0.0f;
                            if (row < rows)
                                for (size_t v = v0 + row; v < v1; v += rows) f(b, v, k, acc);
                            for (int i = 0; i < N; i++)
                                if (o.p[i]) cu__red_chan(o.p[i] + b * C, C, k, acc[i]);
                        }
                    });
}

/* Cuts [0, total) into parts of about 16384 * per_thread items (a few in
 * the emulation) and runs f(i0, i1, t, nt) on every thread t < nt of each
 * part [i0, i1): the body loops i = i0 + t, i0 + t + nt, ... and reduces
 * (all threads reach its cu__red_add* calls). */
template <class F>
static int cu__part_segs(cu_ctx *c, const char *name, size_t total, size_t per_thread, F f)
{
    if (!total) return 0;
    size_t part = c->emu ? 37 : (size_t)16384 * per_thread;
    size_t np = (total + part - 1) / part;
    size_t len = ((total < part ? total : part) + per_thread - 1) / per_thread;
    return cu__segs(c, name, np, len, [=] CU_HD(size_t seg, size_t t, size_t nt) {
        size_t i0 = seg * part, i1 = i0 + part < total ? i0 + part : total;
        f(i0, i1, t, nt);
    });
}

#endif
