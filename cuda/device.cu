/*
 * device.cu - device discovery through the CUDA runtime (linked statically,
 * so a machine without the CUDA toolkit still runs the binary; without a
 * driver cudaGetDeviceCount fails and we report no device).
 */
#include "cu.h"

#include <stdio.h>

#include <cuda_runtime.h>

extern "C" int cu_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky error */
        return 0;
    }
    return n;
}

extern "C" int cu_device_name(int i, char *buf, int n)
{
    cudaDeviceProp p;
    if (i < 0 || i >= cu_device_count() || cudaGetDeviceProperties(&p, i) != cudaSuccess)
        return -1;
    snprintf(buf, (size_t)n, "%s, %.0f GiB, sm_%d%d", p.name,
             (double)p.totalGlobalMem / (1024.0 * 1024.0 * 1024.0), p.major, p.minor);
    return 0;
}

extern "C" int cu_built_with_cuda(void) { return 1; }
