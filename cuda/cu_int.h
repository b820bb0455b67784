/*
 * cu_int.h - internals shared by the .cu files of cuda/ (C++ only, nvcc with
 * --extended-lambda): the table of library functions that culib.cu resolves
 * with dlsym, the context's layout, error helpers, and the launch helpers
 * that run one kernel body either on the GPU or, in a CU_EMULATE context,
 * on the host.
 *
 * Writing a kernel: the body is a __host__ __device__ lambda, so the same
 * code runs on both sides.
 *   element-wise:  cu__each(c, "lrelu", n, [=] CU_HD (size_t i) { ... });
 *   reductions:    cu__segs(c, "inorm.sum", nseg, len_hint,
 *                      [=] CU_HD (size_t seg, size_t t, size_t nt) {
 *                          float acc = 0;
 *                          for (size_t i = t; i < len; i += nt) acc += ...;
 *                          cu__red_add(&out[seg], acc);
 *                      });
 * cu__segs calls the body once for every (seg, t), t < nt, where nt is the
 * number of threads working on one segment; on the GPU every launched thread
 * calls it exactly once (no early return before cu__red_add, which does a
 * warp reduction and one atomic per warp); on the host nt is small and the
 * atomics are plain adds.
 */
#ifndef CTGLIP_CU_INT_H
#define CTGLIP_CU_INT_H

#include "core/core.h"
#include "cuda/cuops.h"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <stdint.h>

/* ---- library table ------------------------------------------------------------------ */

/* The functions we call, resolved at run time (names as exported: the
 * cublas_v2.h macros map cublasCreate to cublasCreate_v2 and so on).  Add a
 * function here and culib.cu resolves it. */
#define CU__DNN_FUNCS(X)                                                       \
    X(cudnnGetVersion)                                                         \
    X(cudnnGetErrorString)                                                     \
    X(cudnnCreate)                                                             \
    X(cudnnDestroy)                                                            \
    X(cudnnSetStream)                                                          \
    X(cudnnCreateTensorDescriptor)                                             \
    X(cudnnSetTensorNdDescriptor)                                              \
    X(cudnnSetTensorNdDescriptorEx)                                            \
    X(cudnnDestroyTensorDescriptor)                                            \
    X(cudnnCreateFilterDescriptor)                                             \
    X(cudnnSetFilterNdDescriptor)                                              \
    X(cudnnDestroyFilterDescriptor)                                            \
    X(cudnnCreateConvolutionDescriptor)                                        \
    X(cudnnSetConvolutionNdDescriptor)                                         \
    X(cudnnSetConvolutionMathType)                                             \
    X(cudnnDestroyConvolutionDescriptor)                                       \
    X(cudnnGetConvolutionNdForwardOutputDim)                                   \
    X(cudnnGetConvolutionForwardAlgorithm_v7)                                  \
    X(cudnnFindConvolutionForwardAlgorithmEx)                                  \
    X(cudnnGetConvolutionForwardWorkspaceSize)                                 \
    X(cudnnConvolutionForward)                                                 \
    X(cudnnGetConvolutionBackwardDataAlgorithm_v7)                             \
    X(cudnnFindConvolutionBackwardDataAlgorithmEx)                             \
    X(cudnnGetConvolutionBackwardDataWorkspaceSize)                            \
    X(cudnnConvolutionBackwardData)                                            \
    X(cudnnGetConvolutionBackwardFilterAlgorithm_v7)                           \
    X(cudnnFindConvolutionBackwardFilterAlgorithmEx)                           \
    X(cudnnGetConvolutionBackwardFilterWorkspaceSize)                          \
    X(cudnnConvolutionBackwardFilter)

#define CU__BLAS_FUNCS(X)                                                      \
    X(cublasGetProperty)                                                       \
    X(cublasCreate_v2)                                                         \
    X(cublasDestroy_v2)                                                        \
    X(cublasSetStream_v2)                                                      \
    X(cublasSetMathMode)                                                       \
    X(cublasSgemm_v2)

typedef struct cu__lib {
#define CU__FIELD(name) decltype(&::name) name;
    CU__DNN_FUNCS(CU__FIELD)
    CU__BLAS_FUNCS(CU__FIELD)
#undef CU__FIELD
} cu__lib;

/* Loads the libraries once per process (thread-safe).  Returns the table,
 * or NULL with the reason in why. */
const cu__lib *cu__lib_load(char *why, size_t n);

/* ---- the context ---------------------------------------------------------------------- */

struct cu_ctx {
    int device;           /* CU_EMULATE for the host emulation */
    int emu;              /* 1: host emulation */
    const cu__lib *lib;   /* NULL in the emulation */
    cudaStream_t stream;
    cudnnHandle_t dnn;
    cublasHandle_t blas;
    void *ws;             /* workspace of library calls */
    size_t ws_bytes;
    float *scratch;       /* small device scratch for reductions (CU__SCRATCH floats) */
    char err[256];        /* the last error's text */
};
#define CU__SCRATCH 4096

/* Records the error text in c->err and returns code. */
int cu__fail(cu_ctx *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Maps a CUDA runtime error to a CTG_E* code, recording call and text. */
int cu__cuda_fail(cu_ctx *c, cudaError_t e, const char *call);
/* Makes c's device current for the calling thread and clears c->err (a
 * no-op apart from that in the emulation). */
int cu__enter(cu_ctx *c);
/* Checks the launch of the kernel just queued. */
int cu__launched(cu_ctx *c, const char *kernel);
/* The workspace, at least bytes (cu_ctx_reserve at plan time makes this
 * free of allocation). */
int cu__workspace(cu_ctx *c, size_t bytes, void **p);

#define CU__TRY(c, call)                                                       \
    do {                                                                       \
        cudaError_t e_ = (call);                                               \
        if (e_ != cudaSuccess) return cu__cuda_fail((c), e_, #call);           \
    } while (0)

/* ---- element access ------------------------------------------------------------------- */

#define CU_HD __host__ __device__

/* Loads element i of a dt array as fp32; stores v rounded to dt. */
static __host__ __device__ __forceinline__ float cu__ld(const void *p, size_t i, cu_dtype dt)
{
    return dt == CU_BF16 ? __bfloat162float(((const __nv_bfloat16 *)p)[i])
                         : ((const float *)p)[i];
}
static __host__ __device__ __forceinline__ void cu__st(void *p, size_t i, cu_dtype dt, float v)
{
    if (dt == CU_BF16)
        ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v);
    else
        ((float *)p)[i] = v;
}

/* atomicAdd on the device, += on the host. */
static __host__ __device__ __forceinline__ void cu__atomic_add(float *p, float v)
{
#ifdef __CUDA_ARCH__
    atomicAdd(p, v);
#else
    *p += v;
#endif
}
static __host__ __device__ __forceinline__ void cu__atomic_add_ll(long long *p, long long v)
{
#ifdef __CUDA_ARCH__
    atomicAdd((unsigned long long *)p, (unsigned long long)v);
#else
    *p += v;
#endif
}

/* atomicMax on the device, a plain max on the host. */
static __host__ __device__ __forceinline__ void cu__atomic_max_ull(unsigned long long *p,
                                                                  unsigned long long v)
{
#ifdef __CUDA_ARCH__
    atomicMax(p, v);
#else
    if (v > *p) *p = v;
#endif
}

/* Adds v of every thread of the warp into *p: a shuffle reduction and one
 * atomic per warp on the device (all 32 lanes must call it), a plain add
 * on the host. */
static __host__ __device__ __forceinline__ void cu__red_add(float *p, float v)
{
#ifdef __CUDA_ARCH__
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0 && v != 0.0f) atomicAdd(p, v);
#else
    *p += v;
#endif
}

/* ---- launching -------------------------------------------------------------------------- */

/* Blocks of 256 threads covering n elements, capped (grid-stride loops
 * cover the rest). */
static inline unsigned cu__blocks(size_t n)
{
    size_t b = (n + 255) / 256;
    if (b < 1) b = 1;
    return b > 65535u * 8u ? 65535u * 8u : (unsigned)b;
}

template <class F> __global__ void cu__each_kernel(size_t n, F f)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        f(i);
}

/* f(i) for i in [0, n). */
template <class F> int cu__each(cu_ctx *c, const char *name, size_t n, F f)
{
    if (!n) return 0;
    if (c->emu) {
        for (size_t i = 0; i < n; i++) f(i);
        return 0;
    }
    cu__each_kernel<<<cu__blocks(n), 256, 0, c->stream>>>(n, f);
    return cu__launched(c, name);
}

template <class F> __global__ void cu__segs_kernel(F f)
{
    size_t nt = (size_t)gridDim.x * blockDim.x;
    f((size_t)blockIdx.y, (size_t)blockIdx.x * blockDim.x + threadIdx.x, nt);
}

/* f(seg, t, nt) for seg in [0, nseg) and t in [0, nt): nt threads per
 * segment, enough for len elements each (len: the segment length, to size
 * nt; at most 64 blocks of 256 per segment on the GPU, 4 threads on the
 * host, so the emulation also exercises the strided loops). */
template <class F> int cu__segs(cu_ctx *c, const char *name, size_t nseg, size_t len, F f)
{
    if (!nseg) return 0;
    if (c->emu) {
        for (size_t g = 0; g < nseg; g++)
            for (size_t t = 0; t < 4; t++) f(g, t, (size_t)4);
        return 0;
    }
    size_t bx = (len + 255) / 256;
    if (bx < 1) bx = 1;
    if (bx > 64) bx = 64;
    size_t done = 0;
    while (done < nseg) { /* gridDim.y is at most 65535 */
        size_t part = nseg - done > 65535 ? 65535 : nseg - done;
        size_t off = done;
        auto g = [=] CU_HD(size_t seg, size_t t, size_t nt) { f(seg + off, t, nt); };
        cu__segs_kernel<<<dim3((unsigned)bx, (unsigned)part), 256, 0, c->stream>>>(g);
        int rc = cu__launched(c, name);
        if (rc) return rc;
        done += part;
    }
    return 0;
}

#endif
