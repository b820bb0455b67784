/*
 * nogpu.c - the cu.h interface for builds without nvcc: there is never a
 * device, and callers fall back to the CPU path.
 */
#include "cu.h"

int cu_device_count(void) { return 0; }

int cu_device_name(int i, char *buf, int n)
{
    (void)i;
    if (n > 0) buf[0] = 0;
    return -1;
}

int cu_built_with_cuda(void) { return 0; }
