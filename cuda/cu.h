/*
 * cu.h - the GPU side of ctglip.  The same header serves builds with and
 * without CUDA: where nvcc was found at build time (HAVE_CUDA), device.cu
 * implements it through the CUDA runtime; elsewhere nogpu.c reports that no
 * device exists, so callers never carry #ifdefs.
 */
#ifndef CTGLIP_CU_H
#define CTGLIP_CU_H

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices; 0 when none (no driver, no GPU, or a build
 * without CUDA). */
int cu_device_count(void);

/* Writes a one-line description of device i ("NVIDIA H100, 80 GiB, sm_90")
 * into buf; returns 0, or -1 when there is no such device. */
int cu_device_name(int i, char *buf, int n);

/* 1 when this binary was built with CUDA support. */
int cu_built_with_cuda(void);

#ifdef __cplusplus
}
#endif
#endif
