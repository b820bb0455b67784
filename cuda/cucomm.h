/*
 * cucomm.h - communicators for data-parallel training (prefix cu_comm_):
 * `world` processes ("ranks"), one per GPU or per share of the CPU, sum or
 * average fp32 arrays (the gradients, before every optimizer step) so that
 * every rank takes the same step.
 *
 * Two transports:
 *   - host: Unix-domain sockets in a rendezvous folder that every rank is
 *     given (the launcher makes it, empty; its path must fit a socket
 *     address, about 100 bytes).  Rank r listens on DIR/rank<r>.sock and
 *     connects to rank r+1, which makes a ring; an all-reduce is the
 *     classic ring reduce-scatter then all-gather, so each rank sends and
 *     receives 2 (world-1)/world of the array.  The sums of a chunk are
 *     made once, on one rank, in a fixed order, and copied to the others:
 *     every rank ends with the same bits, so replicas never drift apart.
 *     It serves CPU training, tests, and GPUs without NCCL (staged through
 *     host memory with cu_download / cu_upload).
 *   - nccl: cu_comm_use_nccl adds an NCCL communicator on the rank's GPU
 *     (libnccl.so.2 loaded with dlopen, never linked): rank 0 makes the
 *     unique id and sends it round the host ring; device arrays are then
 *     reduced by ncclAllReduce.  The host ring stays for small host arrays
 *     (loss values, the stop flag) and barriers.
 *
 * Every call is collective: all ranks make the same calls with the same
 * sizes in the same order.  A rank that dies closes its sockets, and the
 * others' next call fails with CTG_EIO instead of waiting for ever; a
 * silent peer fails the call after the timeout given at open.
 *
 * Threading: a communicator belongs to one thread.
 */
#ifndef CTGLIP_CUCOMM_H
#define CTGLIP_CUCOMM_H

#include <stddef.h>

#include "cuda/cuops.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cu_comm cu_comm;

typedef enum cu_comm_op { CU_COMM_SUM = 0, CU_COMM_MEAN = 1 } cu_comm_op;

/* Joins the ring of `world` ranks in folder dir as rank `rank` (0-based):
 * waits up to timeout seconds (0: 120) for the neighbours, and the same
 * for any later transfer.  world 1 needs no folder (dir may be NULL) and
 * every reduction is then the identity.  0 and *out (cu_comm_close), or
 * CTG_EINVAL (bad arguments, path too long), CTG_EIO (a peer did not come
 * or said something else) or an errno code; the reason goes to why. */
int cu_comm_open(const char *dir, int rank, int world, double timeout, cu_comm **out,
                 char *why, size_t n);
/* Closes the sockets (and the NCCL communicator) and removes this rank's
 * socket file.  NULL: no-op. */
void cu_comm_close(cu_comm *cm);

int cu_comm_rank(const cu_comm *cm);
int cu_comm_world(const cu_comm *cm);
/* "host" or "nccl". */
const char *cu_comm_backend(const cu_comm *cm);
/* Text of the last error ("" when none). */
const char *cu_comm_error(const cu_comm *cm);

/* Collective: adds an NCCL communicator on the GPU of c (a real device; the
 * emulation and builds without CUDA get CTG_ENOTFOUND), used from then on
 * by cu_comm_allreduce_dev.  Every rank must call it; when one fails all
 * fail (the outcome is agreed over the host ring), so the ranks never
 * disagree on the transport.  c must outlive cm. */
int cu_comm_use_nccl(cu_comm *cm, cu_ctx *c, char *why, size_t n);

/* In-place all-reduce of n floats in host memory. */
int cu_comm_allreduce(cu_comm *cm, float *buf, size_t n, cu_comm_op op);
/* In-place all-reduce of n floats in the device memory of c: NCCL on the
 * context's device when enabled, else staged through host memory over the
 * host ring.  Waits until the result is in place. */
int cu_comm_allreduce_dev(cu_comm *cm, cu_ctx *c, float *dev, size_t n, cu_comm_op op);
/* Rank 0's n bytes of buf to every rank. */
int cu_comm_broadcast(cu_comm *cm, void *buf, size_t n);
/* Returns when every rank has called it. */
int cu_comm_barrier(cu_comm *cm);

#ifdef __cplusplus
}
#endif
#endif
