/*
 * cuctx.cu - the device context of cuops.h and device memory: a stream,
 * the cuDNN and cuBLAS handles (functions from the dlopen table of
 * culib.cu), the shared workspace and the small reduction scratch; and the
 * error and launch helpers of cu_int.h.
 *
 * A CU_EMULATE context makes no CUDA call at all, so it works on machines
 * without a driver: its "device" memory is host memory from aligned_alloc,
 * copies are memcpy and there is nothing to wait for.  Fresh emulated
 * memory is filled with 0xff bytes (NaN in fp32 and bf16), so a kernel that
 * reads memory nobody wrote shows up in the tests instead of passing by
 * the luck of calloc's zeros.
 *
 * Threading: a context belongs to one thread at a time; every entry point
 * makes its device current first (cu__enter), so a context may move
 * between threads between calls.  Nothing here keeps global state apart
 * from the library table, which culib.cu loads once per process.
 */
#include "cuda/cu_int.h"
#include "cuda/cu.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Alignment of emulated allocations (cudaMalloc gives at least 256). */
#define EMU_ALIGN 256

/* ---- types ------------------------------------------------------------------------- */

extern "C" size_t cu_dtype_size(cu_dtype dt) { return dt == CU_BF16 ? 2 : 4; }

extern "C" const char *cu_dtype_name(cu_dtype dt) { return dt == CU_BF16 ? "bf16" : "fp32"; }

extern "C" int cu_dtype_parse(const char *s, cu_dtype *dt)
{
    if (!s) return CTG_EINVAL;
    if (!strcmp(s, "fp32") || !strcmp(s, "f32") || !strcmp(s, "float32")) {
        *dt = CU_F32;
        return 0;
    }
    if (!strcmp(s, "bf16") || !strcmp(s, "bfloat16")) {
        *dt = CU_BF16;
        return 0;
    }
    return CTG_EINVAL;
}

/* ---- errors and helpers of cu_int.h ------------------------------------------------ */

int cu__fail(cu_ctx *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    return code;
}

int cu__cuda_fail(cu_ctx *c, cudaError_t e, const char *call)
{
    int code = e == cudaErrorMemoryAllocation ? CTG_ENOMEM
               : e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver ? CTG_ENOTFOUND
               : e == cudaErrorInvalidDevice ? CTG_EINVAL
                                             : CTG_EIO;
    /* Clears a non-sticky error so that the next call starts clean; a
     * sticky one (an illegal address) stays until cu_ctx_reset. */
    cudaGetLastError();
    return cu__fail(c, code, "%s: %s", call, cudaGetErrorString(e));
}

int cu__enter(cu_ctx *c)
{
    c->err[0] = 0;
    if (c->emu) return 0;
    CU__TRY(c, cudaSetDevice(c->device));
    return 0;
}

int cu__launched(cu_ctx *c, const char *kernel)
{
    if (c->emu) return 0;
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? 0 : cu__cuda_fail(c, e, kernel);
}

/* Host memory standing in for device memory: EMU_ALIGN-aligned, poisoned
 * with 0xff.  NULL when out of memory. */
static void *emu_alloc(size_t bytes)
{
    size_t sz = (bytes + EMU_ALIGN - 1) / EMU_ALIGN * EMU_ALIGN;
    if (!sz) sz = EMU_ALIGN;
    void *p = aligned_alloc(EMU_ALIGN, sz);
    if (p) memset(p, 0xff, sz);
    return p;
}

int cu__workspace(cu_ctx *c, size_t bytes, void **p)
{
    if (bytes > c->ws_bytes) {
        if (c->emu) {
            free(c->ws);
            c->ws = NULL;
            c->ws_bytes = 0;
            if (!(c->ws = emu_alloc(bytes)))
                return cu__fail(c, CTG_ENOMEM, "workspace of %zu bytes: out of memory", bytes);
        } else {
            /* Queued work may still use the old workspace. */
            CU__TRY(c, cudaStreamSynchronize(c->stream));
            cudaFree(c->ws);
            c->ws = NULL;
            c->ws_bytes = 0;
            CU__TRY(c, cudaMalloc(&c->ws, bytes));
        }
        c->ws_bytes = bytes;
    }
    *p = c->ws;
    return 0;
}

static int blas_fail(cu_ctx *c, cublasStatus_t s, const char *call)
{
    return cu__fail(c, s == CUBLAS_STATUS_ALLOC_FAILED ? CTG_ENOMEM : CTG_EIO,
                    "%s: cuBLAS status %d", call, (int)s);
}

/* ---- context ---------------------------------------------------------------------- */

/* Creates the stream, handles and scratch of a real-device context whose
 * device, lib and (zeroed) other fields are set.  On failure the caller
 * releases what was made with release(). */
static int open_device(cu_ctx *c)
{
    int rc = cu__enter(c);
    if (rc) return rc;
    CU__TRY(c, cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    cudnnStatus_t ds = c->lib->cudnnCreate(&c->dnn);
    if (ds != CUDNN_STATUS_SUCCESS) {
        c->dnn = NULL;
        return cu__fail(c, ds == CUDNN_STATUS_ALLOC_FAILED ? CTG_ENOMEM : CTG_EIO,
                        "cudnnCreate: %s", c->lib->cudnnGetErrorString(ds));
    }
    if ((ds = c->lib->cudnnSetStream(c->dnn, c->stream)) != CUDNN_STATUS_SUCCESS)
        return cu__fail(c, CTG_EIO, "cudnnSetStream: %s", c->lib->cudnnGetErrorString(ds));
    cublasStatus_t bs = c->lib->cublasCreate_v2(&c->blas);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        c->blas = NULL;
        return blas_fail(c, bs, "cublasCreate");
    }
    if ((bs = c->lib->cublasSetStream_v2(c->blas, c->stream)) != CUBLAS_STATUS_SUCCESS)
        return blas_fail(c, bs, "cublasSetStream");
    /* Plain fp32 (no TF32 tensor cores), so the dense layers match the CPU
     * to fp32 rounding. */
    if ((bs = c->lib->cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH)) != CUBLAS_STATUS_SUCCESS)
        return blas_fail(c, bs, "cublasSetMathMode");
    CU__TRY(c, cudaMalloc((void **)&c->scratch, CU__SCRATCH * sizeof(float)));
    return 0;
}

/* Releases everything c holds (not c itself) and clears the fields.  On a
 * device whose context has a sticky error the calls fail; that is ignored. */
static void release(cu_ctx *c)
{
    if (c->emu) {
        free(c->ws);
        free(c->scratch);
    } else {
        cudaSetDevice(c->device);
        if (c->stream) cudaStreamSynchronize(c->stream);
        if (c->blas) c->lib->cublasDestroy_v2(c->blas);
        if (c->dnn) c->lib->cudnnDestroy(c->dnn);
        cudaFree(c->ws);
        cudaFree(c->scratch);
        if (c->stream) cudaStreamDestroy(c->stream);
        cudaGetLastError();
    }
    c->stream = NULL;
    c->dnn = NULL;
    c->blas = NULL;
    c->ws = NULL;
    c->ws_bytes = 0;
    c->scratch = NULL;
}

extern "C" int cu_ctx_new(int device, cu_ctx **out, char *why, size_t n)
{
    char tmp[256];
    if (!why || !n) {
        why = tmp;
        n = sizeof tmp;
    }
    why[0] = 0;
    *out = NULL;
    if (device == CU_EMULATE) {
        cu_ctx *c = (cu_ctx *)calloc(1, sizeof *c);
        if (c) c->scratch = (float *)emu_alloc(CU__SCRATCH * sizeof(float));
        if (!c || !c->scratch) {
            free(c);
            snprintf(why, n, "out of memory");
            return CTG_ENOMEM;
        }
        c->device = CU_EMULATE;
        c->emu = 1;
        *out = c;
        return 0;
    }
    if (device < 0) {
        snprintf(why, n, "bad device number %d", device);
        return CTG_EINVAL;
    }
    int count = cu_device_count();
    if (count == 0) {
        snprintf(why, n, "no CUDA device");
        return CTG_ENOTFOUND;
    }
    if (device >= count) {
        snprintf(why, n, "no CUDA device %d (%d present)", device, count);
        return CTG_EINVAL;
    }
    const cu__lib *lib = cu__lib_load(why, n);
    if (!lib) return CTG_ENOTFOUND;
    cu_ctx *c = (cu_ctx *)calloc(1, sizeof *c);
    if (!c) {
        snprintf(why, n, "out of memory");
        return CTG_ENOMEM;
    }
    c->device = device;
    c->lib = lib;
    int rc = open_device(c);
    if (rc) {
        snprintf(why, n, "%s", c->err);
        release(c);
        free(c);
        return rc;
    }
    *out = c;
    return 0;
}

extern "C" void cu_ctx_free(cu_ctx *c)
{
    if (!c) return;
    release(c);
    free(c);
}

extern "C" int cu_ctx_emulated(const cu_ctx *c) { return c && c->emu; }

extern "C" int cu_ctx_device(const cu_ctx *c) { return c ? c->device : CU_EMULATE; }

extern "C" const char *cu_ctx_error(const cu_ctx *c) { return c ? c->err : ""; }

extern "C" int cu_sync(cu_ctx *c)
{
    int rc = cu__enter(c);
    if (rc || c->emu) return rc;
    CU__TRY(c, cudaStreamSynchronize(c->stream));
    return 0;
}

/* A sticky error poisons the whole CUDA context of the process on that
 * device, so the primary context is reset: every allocation on the device
 * (also those of other cu_ctx on it) is gone afterwards. */
extern "C" int cu_ctx_reset(cu_ctx *c)
{
    if (c->emu) {
        c->err[0] = 0;
        return 0;
    }
    release(c);
    cudaSetDevice(c->device);
    cudaError_t e = cudaDeviceReset();
    if (e != cudaSuccess) return cu__cuda_fail(c, e, "cudaDeviceReset");
    int rc = open_device(c);
    if (rc) {
        char keep[sizeof c->err];
        memcpy(keep, c->err, sizeof keep);
        release(c);
        memcpy(c->err, keep, sizeof keep);
    }
    return rc;
}

extern "C" int cu_ctx_reserve(cu_ctx *c, size_t bytes)
{
    int rc = cu__enter(c);
    if (rc) return rc;
    void *p;
    return cu__workspace(c, bytes, &p);
}

extern "C" size_t cu_ctx_workspace_bytes(const cu_ctx *c) { return c ? c->ws_bytes : 0; }

/* ---- memory ----------------------------------------------------------------------- */

extern "C" int cu_malloc(cu_ctx *c, void **p, size_t bytes)
{
    *p = NULL;
    int rc = cu__enter(c);
    if (rc) return rc;
    if (c->emu) {
        if (!(*p = emu_alloc(bytes)))
            return cu__fail(c, CTG_ENOMEM, "cu_malloc of %zu bytes: out of memory", bytes);
        return 0;
    }
    cudaError_t e = cudaMalloc(p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        *p = NULL;
        return cu__cuda_fail(c, e, "cudaMalloc");
    }
    return 0;
}

extern "C" void cu_free(cu_ctx *c, void *p)
{
    if (!p) return;
    if (c->emu) {
        free(p);
        return;
    }
    cudaSetDevice(c->device);
    cudaFree(p);
}

extern "C" int cu_upload(cu_ctx *c, void *dst_dev, const void *src_host, size_t bytes)
{
    int rc = cu__enter(c);
    if (rc || !bytes) return rc;
    if (c->emu) {
        memcpy(dst_dev, src_host, bytes);
        return 0;
    }
    CU__TRY(c, cudaMemcpyAsync(dst_dev, src_host, bytes, cudaMemcpyHostToDevice, c->stream));
    CU__TRY(c, cudaStreamSynchronize(c->stream));
    return 0;
}

extern "C" int cu_download(cu_ctx *c, void *dst_host, const void *src_dev, size_t bytes)
{
    int rc = cu__enter(c);
    if (rc || !bytes) return rc;
    if (c->emu) {
        memcpy(dst_host, src_dev, bytes);
        return 0;
    }
    CU__TRY(c, cudaMemcpyAsync(dst_host, src_dev, bytes, cudaMemcpyDeviceToHost, c->stream));
    CU__TRY(c, cudaStreamSynchronize(c->stream));
    return 0;
}

extern "C" int cu_copy(cu_ctx *c, void *dst_dev, const void *src_dev, size_t bytes)
{
    int rc = cu__enter(c);
    if (rc || !bytes || dst_dev == src_dev) return rc;
    if (c->emu) {
        memmove(dst_dev, src_dev, bytes);
        return 0;
    }
    CU__TRY(c, cudaMemcpyAsync(dst_dev, src_dev, bytes, cudaMemcpyDeviceToDevice, c->stream));
    return 0;
}

extern "C" int cu_zero(cu_ctx *c, void *p, size_t bytes)
{
    int rc = cu__enter(c);
    if (rc || !bytes) return rc;
    if (c->emu) {
        memset(p, 0, bytes);
        return 0;
    }
    CU__TRY(c, cudaMemsetAsync(p, 0, bytes, c->stream));
    return 0;
}

extern "C" int cu_mem_info(cu_ctx *c, size_t *used, size_t *total)
{
    *used = *total = 0;
    int rc = cu__enter(c);
    if (rc || c->emu) return rc;
    size_t fr = 0, tot = 0;
    CU__TRY(c, cudaMemGetInfo(&fr, &tot));
    *used = tot - fr;
    *total = tot;
    return 0;
}
