/*
 * culib.cu - loads cuDNN 9 and cuBLAS 13 at run time with dlopen and
 * resolves the functions listed in cu_int.h (CU__DNN_FUNCS, CU__BLAS_FUNCS)
 * with dlsym, so neither library is a link-time dependency: a binary starts
 * on machines without them and only cu_ctx_new fails, naming what is
 * missing.  Loaded once per process under pthread_once; the handles are
 * never closed (the libraries keep process-wide state, and plans made by
 * one context may outlive another).
 *
 * Search order for each library: the versioned soname, then the plain name,
 * through the dynamic loader (LD_LIBRARY_PATH, ld.so.cache, RUNPATH); then
 * the same two under $CUDA_HOME/lib64, $CUDA_HOME/lib, /usr/local/cuda/lib64
 * and /usr/local/cuda/lib.  A plain libcudnn.so of another major version is
 * refused after loading (cudnnGetVersion), since the legacy descriptor API
 * and the _v7 heuristics we call are cuDNN 9's.  cuBLAS is asked for its
 * major version the same way (cublasGetProperty).
 */
#include "cuda/cu_int.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pthread_once_t lib_once = PTHREAD_ONCE_INIT;
static cu__lib lib;
static int lib_ok;
static char lib_why[512];

/* dlopen of the first name that loads.  Returns the handle or NULL with the
 * last dlerror in lib_why. */
static void *open_first(const char *versioned, const char *plain)
{
    const char *names[2] = {versioned, plain};
    const char *home = getenv("CUDA_HOME");
    const char *dirs[5] = {NULL, home, home, "/usr/local/cuda", "/usr/local/cuda"};
    const char *sub[5] = {"", "lib64", "lib", "lib64", "lib"};
    char path[1024];
    char last[400] = "not found";
    for (int d = 0; d < 5; d++) {
        if (d > 0 && (!dirs[d] || !*dirs[d])) continue;
        for (int i = 0; i < 2; i++) {
            if (d == 0)
                snprintf(path, sizeof path, "%s", names[i]);
            else
                snprintf(path, sizeof path, "%s/%s/%s", dirs[d], sub[d], names[i]);
            void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
            if (h) return h;
            const char *e = dlerror();
            /* The first error names the soname the loader looked for, the
             * most useful one to show. */
            if (e && d == 0 && i == 0) snprintf(last, sizeof last, "%s", e);
        }
    }
    snprintf(lib_why, sizeof lib_why, "cannot load %s: %s", versioned, last);
    return NULL;
}

static int resolve(void *h, const char *lib_name, const char *name, void **slot)
{
    dlerror();
    *slot = dlsym(h, name);
    if (!*slot) {
        snprintf(lib_why, sizeof lib_why, "%s has no symbol %s", lib_name, name);
        return -1;
    }
    return 0;
}

static void load_once(void)
{
    void *dnn = open_first("libcudnn.so.9", "libcudnn.so");
    if (!dnn) return;
    void *blas = open_first("libcublas.so.13", "libcublas.so");
    if (!blas) return;
#define CU__RESOLVE(name)                                                      \
    if (resolve(dnn, "cuDNN", #name, (void **)&lib.name)) return;
    CU__DNN_FUNCS(CU__RESOLVE)
#undef CU__RESOLVE
#define CU__RESOLVE(name)                                                      \
    if (resolve(blas, "cuBLAS", #name, (void **)&lib.name)) return;
    CU__BLAS_FUNCS(CU__RESOLVE)
#undef CU__RESOLVE
    /* cuDNN 9 encodes its version as major*10000 + minor*100 + patch. */
    size_t v = lib.cudnnGetVersion();
    if (v < 90000 || v >= 100000) {
        snprintf(lib_why, sizeof lib_why, "cuDNN version %zu loaded, 9.x needed", v);
        return;
    }
    int major = 0;
    if (lib.cublasGetProperty(MAJOR_VERSION, &major) != CUBLAS_STATUS_SUCCESS || major < 12) {
        snprintf(lib_why, sizeof lib_why, "cuBLAS major version %d loaded, 12 or later needed",
                 major);
        return;
    }
    lib_ok = 1;
}

const cu__lib *cu__lib_load(char *why, size_t n)
{
    pthread_once(&lib_once, load_once);
    if (lib_ok) return &lib;
    if (why && n) snprintf(why, n, "%s", lib_why);
    return NULL;
}
