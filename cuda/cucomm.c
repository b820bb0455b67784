/*
 * cucomm.c - the communicators of cucomm.h: a ring of Unix-domain sockets
 * between the ranks, and NCCL on top of it for device arrays.
 *
 * The ring: rank r listens on DIR/rank<r>.sock, connects to rank r+1 (mod
 * world) and accepts rank r-1; both ends exchange a hello (magic, rank,
 * world) so that a stray process or a stale socket of another run is
 * refused.  Transfers send to the right and receive from the left at the
 * same time (non-blocking sockets and poll), so a ring step never waits
 * on a full socket buffer.  A transfer that makes no progress for the
 * timeout fails; a peer that closed its end (it exited) fails at once.
 *
 * NCCL: libnccl.so.2 is loaded with dlopen on first use, with the handful
 * of types and prototypes it needs declared here (the ABI of nccl.h, so no
 * build needs NCCL's headers).  Device reductions run on a stream of our
 * own after cu_sync of the caller's context, and are waited for, so the
 * caller's queue order is kept without access to its stream.
 *
 * Threading: a communicator belongs to one thread (cucomm.h).
 */
#include "cuda/cucomm.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/core.h"
#include "cuda/cu.h"

#if HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

/* ---- NCCL, as much of nccl.h as we use ------------------------------------------ */

typedef int nccl_result;
typedef struct nccl_id {
    char internal[128]; /* NCCL_UNIQUE_ID_BYTES */
} nccl_id;
typedef void *nccl_comm_t;
enum { NCCL_FLOAT32 = 7, NCCL_SUM = 0 };

typedef struct nccl_lib {
    nccl_result (*GetUniqueId)(nccl_id *);
    nccl_result (*CommInitRank)(nccl_comm_t *, int, nccl_id, int);
    nccl_result (*AllReduce)(const void *, void *, size_t, int, int, nccl_comm_t, void *);
    nccl_result (*CommDestroy)(nccl_comm_t);
    const char *(*GetErrorString)(nccl_result);
    nccl_result (*GetVersion)(int *);
} nccl_lib;

static nccl_lib g_nccl;
static int g_nccl_state; /* 0: not tried, 1: loaded, -1: failed */
static char g_nccl_why[256];
static pthread_mutex_t g_nccl_mu = PTHREAD_MUTEX_INITIALIZER;

/* Loads NCCL once per process; NULL with the reason in why. */
static const nccl_lib *nccl_load(char *why, size_t n)
{
    pthread_mutex_lock(&g_nccl_mu);
    if (g_nccl_state == 0) {
        const char *env = getenv("CTGLIP_NCCL"); /* a non-standard install */
        const char *names[] = {env, "libnccl.so.2", "/usr/local/cuda/lib/libnccl.so.2",
                               "/usr/local/cuda/lib64/libnccl.so.2"};
        void *h = NULL;
        for (size_t i = 0; i < sizeof names / sizeof *names && !h; i++)
            if (names[i] && names[i][0]) h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            snprintf(g_nccl_why, sizeof g_nccl_why, "cannot load libnccl.so.2: %s", dlerror());
            g_nccl_state = -1;
        } else {
#define NCCL_SYM(field, name)                                                                     \
    if (g_nccl_state == 0 && !(*(void **)&g_nccl.field = dlsym(h, name))) {                      \
        snprintf(g_nccl_why, sizeof g_nccl_why, "libnccl.so.2 has no %s", name);                 \
        g_nccl_state = -1;                                                                        \
    }
            NCCL_SYM(GetUniqueId, "ncclGetUniqueId")
            NCCL_SYM(CommInitRank, "ncclCommInitRank")
            NCCL_SYM(AllReduce, "ncclAllReduce")
            NCCL_SYM(CommDestroy, "ncclCommDestroy")
            NCCL_SYM(GetErrorString, "ncclGetErrorString")
            NCCL_SYM(GetVersion, "ncclGetVersion")
#undef NCCL_SYM
            if (g_nccl_state == 0) g_nccl_state = 1;
        }
    }
    int ok = g_nccl_state == 1;
    if (!ok && why && n) snprintf(why, n, "%s", g_nccl_why);
    pthread_mutex_unlock(&g_nccl_mu);
    return ok ? &g_nccl : NULL;
}

/* ---- the communicator ------------------------------------------------------------- */

#define HELLO_MAGIC "CTGCOMM1"

struct cu_comm {
    int rank, world;
    double timeout;
    int lfd, right, left;          /* listening socket, to rank+1, from rank-1 */
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    float *tmp;                    /* a received chunk */
    size_t tmp_n;
    float *stage;                  /* device arrays staged on the host */
    size_t stage_n;
    /* NCCL (nccl != NULL when enabled). */
    const nccl_lib *nccl;
    nccl_comm_t ncomm;
    void *stream;                  /* cudaStream_t */
    cu_ctx *nctx;
    char err[256];
};

static int failf(cu_comm *cm, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int failf(cu_comm *cm, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cm->err, sizeof cm->err, fmt, ap);
    va_end(ap);
    return code;
}

int cu_comm_rank(const cu_comm *cm) { return cm->rank; }
int cu_comm_world(const cu_comm *cm) { return cm->world; }
const char *cu_comm_backend(const cu_comm *cm) { return cm->nccl ? "nccl" : "host"; }
const char *cu_comm_error(const cu_comm *cm) { return cm->err; }

static int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ? ctg_errno(errno) : 0;
}

/* Sends sn bytes of s to the right while receiving rn bytes into r from
 * the left; either may be 0. */
static int xfer(cu_comm *cm, const void *s, size_t sn, void *r, size_t rn)
{
    size_t so = 0, ro = 0;
    double last = ctg_mono();
    int lrank = (cm->rank + cm->world - 1) % cm->world;
    int rrank = (cm->rank + 1) % cm->world;
    while (so < sn || ro < rn) {
        struct pollfd p[2];
        int np = 0, is = -1, ir = -1;
        if (so < sn) p[is = np++] = (struct pollfd){.fd = cm->right, .events = POLLOUT};
        if (ro < rn) p[ir = np++] = (struct pollfd){.fd = cm->left, .events = POLLIN};
        double left = last + cm->timeout - ctg_mono();
        if (left <= 0)
            return failf(cm, CTG_EIO, "rank %d: no progress for %.0f s talking to ranks %d and %d",
                         cm->rank, cm->timeout, lrank, rrank);
        int k = poll(p, (nfds_t)np, (int)(left * 1000) + 1);
        if (k < 0) {
            if (errno == EINTR) continue;
            return failf(cm, ctg_errno(errno), "rank %d: poll: %s", cm->rank, strerror(errno));
        }
        if (is >= 0 && p[is].revents) {
            ssize_t w = send(cm->right, (const char *)s + so, sn - so, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0) {
                so += (size_t)w;
                last = ctg_mono();
            } else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                return failf(cm, CTG_EIO, "rank %d: sending to rank %d: %s (did it exit?)",
                             cm->rank, rrank, strerror(errno));
            }
        }
        if (ir >= 0 && p[ir].revents) {
            ssize_t g = recv(cm->left, (char *)r + ro, rn - ro, MSG_DONTWAIT);
            if (g > 0) {
                ro += (size_t)g;
                last = ctg_mono();
            } else if (g == 0) {
                return failf(cm, CTG_EIO, "rank %d: rank %d closed the connection (did it exit?)",
                             cm->rank, lrank);
            } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                return failf(cm, CTG_EIO, "rank %d: receiving from rank %d: %s", cm->rank, lrank,
                             strerror(errno));
            }
        }
    }
    return 0;
}

typedef struct hello {
    char magic[8];
    int32_t rank, world;
} hello;

static void sock_path(char *out, size_t n, const char *dir, int rank)
{
    snprintf(out, n, "%s/rank%d.sock", dir, rank);
}

int cu_comm_open(const char *dir, int rank, int world, double timeout, cu_comm **out, char *why,
                 size_t n)
{
    *out = NULL;
    if (world < 1 || rank < 0 || rank >= world || (world > 1 && (!dir || !dir[0]))) {
        if (why && n) snprintf(why, n, "bad rank %d of %d or no rendezvous folder", rank, world);
        return CTG_EINVAL;
    }
    cu_comm *cm = calloc(1, sizeof *cm);
    if (!cm) return CTG_ENOMEM;
    cm->rank = rank;
    cm->world = world;
    cm->timeout = timeout > 0 ? timeout : 120;
    cm->lfd = cm->right = cm->left = -1;
    int rc = 0;
    if (world == 1) goto done;

    struct sockaddr_un me = {.sun_family = AF_UNIX}, peer = {.sun_family = AF_UNIX};
    char pp[sizeof peer.sun_path + 16];
    sock_path(cm->path, sizeof cm->path, dir, rank);
    sock_path(pp, sizeof pp, dir, (rank + 1) % world);
    if (strlen(pp) >= sizeof peer.sun_path || strlen(cm->path) + 1 >= sizeof cm->path) {
        rc = failf(cm, CTG_EINVAL, "rendezvous folder %s: path too long for a socket", dir);
        goto fail;
    }
    memcpy(me.sun_path, cm->path, strlen(cm->path) + 1);
    memcpy(peer.sun_path, pp, strlen(pp) + 1);
    unlink(cm->path);
    if ((cm->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
        bind(cm->lfd, (struct sockaddr *)&me, sizeof me) < 0 || listen(cm->lfd, 4) < 0) {
        rc = failf(cm, ctg_errno(errno), "rank %d: listening on %s: %s", rank, cm->path,
                   strerror(errno));
        goto fail;
    }
    /* To the right: the peer may not listen yet. */
    double end = ctg_mono() + cm->timeout;
    for (;;) {
        cm->right = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (cm->right < 0) {
            rc = failf(cm, ctg_errno(errno), "socket: %s", strerror(errno));
            goto fail;
        }
        if (connect(cm->right, (struct sockaddr *)&peer, sizeof peer) == 0) break;
        int e = errno;
        close(cm->right);
        cm->right = -1;
        if ((e != ENOENT && e != ECONNREFUSED && e != EAGAIN) || ctg_mono() > end) {
            rc = failf(cm, CTG_EIO, "rank %d: cannot reach rank %d at %s: %s", rank,
                       (rank + 1) % world, pp, strerror(e));
            goto fail;
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    /* From the left. */
    for (;;) {
        struct pollfd p = {.fd = cm->lfd, .events = POLLIN};
        double left = end - ctg_mono();
        int k = left > 0 ? poll(&p, 1, (int)(left * 1000) + 1) : 0;
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            rc = failf(cm, CTG_EIO, "rank %d: rank %d did not connect within %.0f s", rank,
                       (rank + world - 1) % world, cm->timeout);
            goto fail;
        }
        cm->left = accept4(cm->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (cm->left >= 0) break;
        if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED) {
            rc = failf(cm, ctg_errno(errno), "rank %d: accept: %s", rank, strerror(errno));
            goto fail;
        }
    }
    if ((rc = set_nonblock(cm->right)) < 0 || (rc = set_nonblock(cm->left)) < 0) {
        failf(cm, rc, "fcntl: %s", ctg_strerror(rc));
        goto fail;
    }
    hello hs = {.rank = rank, .world = world}, hr;
    memcpy(hs.magic, HELLO_MAGIC, 8);
    if ((rc = xfer(cm, &hs, sizeof hs, &hr, sizeof hr)) < 0) goto fail;
    if (memcmp(hr.magic, HELLO_MAGIC, 8) != 0 || hr.world != world ||
        hr.rank != (rank + world - 1) % world) {
        rc = failf(cm, CTG_EIO, "rank %d: the peer on the left is not rank %d of %d", rank,
                   (rank + world - 1) % world, world);
        goto fail;
    }
done:
    *out = cm;
    return 0;
fail:
    if (why && n) snprintf(why, n, "%s", cm->err);
    cu_comm_close(cm);
    return rc;
}

void cu_comm_close(cu_comm *cm)
{
    if (!cm) return;
    if (cm->nccl) {
        if (cm->ncomm) cm->nccl->CommDestroy(cm->ncomm);
#if HAVE_CUDA
        if (cm->stream) cudaStreamDestroy((cudaStream_t)cm->stream);
#endif
    }
    if (cm->right >= 0) close(cm->right);
    if (cm->left >= 0) close(cm->left);
    if (cm->lfd >= 0) close(cm->lfd);
    if (cm->path[0]) unlink(cm->path);
    free(cm->tmp);
    free(cm->stage);
    free(cm);
}

static int grow(float **p, size_t *have, size_t want)
{
    if (want <= *have) return 0;
    float *q = realloc(*p, sizeof(float) * want);
    if (!q) return CTG_ENOMEM;
    *p = q;
    *have = want;
    return 0;
}

int cu_comm_allreduce(cu_comm *cm, float *buf, size_t n, cu_comm_op op)
{
    int W = cm->world, r = cm->rank, rc;
    cm->err[0] = 0;
    if (W == 1 || n == 0) return 0;
    /* Chunk c: [off(c), off(c) + len(c)). */
    size_t base = n / (size_t)W, rem = n % (size_t)W;
#define OFF(c) ((size_t)(c) * base + ((size_t)(c) < rem ? (size_t)(c) : rem))
#define LEN(c) (base + ((size_t)(c) < rem))
    if ((rc = grow(&cm->tmp, &cm->tmp_n, base + 1)) < 0)
        return failf(cm, rc, "out of memory");
    /* Reduce-scatter: after W-1 steps rank r holds the sum of chunk r+1. */
    for (int s = 0; s < W - 1; s++) {
        int sc = (r - s + W) % W, rcv = (r - s - 1 + 2 * W) % W;
        if ((rc = xfer(cm, buf + OFF(sc), sizeof(float) * LEN(sc), cm->tmp,
                       sizeof(float) * LEN(rcv))) < 0)
            return rc;
        float *d = buf + OFF(rcv);
        for (size_t i = 0; i < LEN(rcv); i++) d[i] += cm->tmp[i];
    }
    /* All-gather: the finished chunks go round once more. */
    for (int s = 0; s < W - 1; s++) {
        int sc = (r + 1 - s + W) % W, rcv = (r - s + W) % W;
        if ((rc = xfer(cm, buf + OFF(sc), sizeof(float) * LEN(sc), buf + OFF(rcv),
                       sizeof(float) * LEN(rcv))) < 0)
            return rc;
    }
#undef OFF
#undef LEN
    if (op == CU_COMM_MEAN) {
        float inv = 1.0f / (float)W;
        for (size_t i = 0; i < n; i++) buf[i] *= inv;
    }
    return 0;
}

int cu_comm_broadcast(cu_comm *cm, void *buf, size_t n)
{
    cm->err[0] = 0;
    if (cm->world == 1 || n == 0) return 0;
    int rc = 0;
    if (cm->rank > 0) rc = xfer(cm, NULL, 0, buf, n);
    if (rc == 0 && (cm->rank + 1) % cm->world != 0) rc = xfer(cm, buf, n, NULL, 0);
    return rc;
}

int cu_comm_barrier(cu_comm *cm)
{
    float x = 1;
    return cu_comm_allreduce(cm, &x, 1, CU_COMM_SUM);
}

/* ---- device arrays ------------------------------------------------------------------ */

/* 1 when every rank says ok (over the host ring), else 0; < 0: the ring
 * failed. */
static int agree(cu_comm *cm, int ok)
{
    float v = ok ? 1.0f : 0.0f;
    int rc = cu_comm_allreduce(cm, &v, 1, CU_COMM_SUM);
    return rc < 0 ? rc : v >= (float)cm->world - 0.5f;
}

int cu_comm_use_nccl(cu_comm *cm, cu_ctx *c, char *why, size_t n)
{
    char mine[256] = "";
    const nccl_lib *L = NULL;
    cm->err[0] = 0;
    if (cm->nccl) return 0;
    if (!cu_built_with_cuda())
        snprintf(mine, sizeof mine, "built without CUDA");
    else if (!c || cu_ctx_emulated(c))
        snprintf(mine, sizeof mine, "NCCL needs a real GPU (this context is %s)",
                 c ? "the host emulation" : "missing");
    else
        L = nccl_load(mine, sizeof mine);
    int all = agree(cm, L != NULL);
    if (all < 0) goto ring_failed;
    if (!all) {
        failf(cm, CTG_ENOTFOUND, "NCCL: %s", mine[0] ? mine : "not usable on another rank");
        if (why && n) snprintf(why, n, "%s", cm->err);
        return CTG_ENOTFOUND;
    }
#if HAVE_CUDA
    {
        int rc;
        /* Rank 0's id (or its failure) to every rank. */
        struct {
            int32_t ok;
            nccl_id id;
        } msg;
        memset(&msg, 0, sizeof msg);
        if (cm->rank == 0) {
            nccl_result nr = L->GetUniqueId(&msg.id);
            msg.ok = nr == 0;
            if (nr) snprintf(mine, sizeof mine, "ncclGetUniqueId: %s", L->GetErrorString(nr));
        }
        if ((rc = cu_comm_broadcast(cm, &msg, sizeof msg)) < 0) goto ring_failed;
        if (!msg.ok) {
            failf(cm, CTG_EIO, "NCCL: %s", mine[0] ? mine : "rank 0 could not make an id");
            if (why && n) snprintf(why, n, "%s", cm->err);
            return CTG_EIO;
        }
        /* cu_sync makes the context's device current on this thread. */
        int ok = 1;
        cudaStream_t s = NULL;
        if ((rc = cu_sync(c)) < 0) {
            snprintf(mine, sizeof mine, "device: %s", cu_ctx_error(c));
            ok = 0;
        } else if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess) {
            snprintf(mine, sizeof mine, "cudaStreamCreate failed");
            ok = 0;
        } else {
            nccl_result nr = L->CommInitRank(&cm->ncomm, cm->world, msg.id, cm->rank);
            if (nr) {
                snprintf(mine, sizeof mine, "ncclCommInitRank: %s", L->GetErrorString(nr));
                cm->ncomm = NULL;
                ok = 0;
            }
        }
        all = agree(cm, ok);
        if (all != 1) {
            if (cm->ncomm) L->CommDestroy(cm->ncomm);
            cm->ncomm = NULL;
            if (s) cudaStreamDestroy(s);
            if (all < 0) goto ring_failed;
            failf(cm, CTG_EIO, "NCCL: %s", mine[0] ? mine : "failed on another rank");
            if (why && n) snprintf(why, n, "%s", cm->err);
            return CTG_EIO;
        }
        cm->stream = s;
        cm->nctx = c;
        cm->nccl = L;
        return 0;
    }
#endif
ring_failed:
    if (why && n) snprintf(why, n, "%s", cm->err);
    return CTG_EIO;
}

int cu_comm_allreduce_dev(cu_comm *cm, cu_ctx *c, float *dev, size_t n, cu_comm_op op)
{
    int rc;
    cm->err[0] = 0;
    if (cm->world == 1 || n == 0) return 0;
#if HAVE_CUDA
    if (cm->nccl && c == cm->nctx) {
        if ((rc = cu_sync(c)) < 0) return failf(cm, rc, "device: %s", cu_ctx_error(c));
        nccl_result nr = cm->nccl->AllReduce(dev, dev, n, NCCL_FLOAT32, NCCL_SUM, cm->ncomm,
                                             cm->stream);
        if (nr) return failf(cm, CTG_EIO, "ncclAllReduce: %s", cm->nccl->GetErrorString(nr));
        cudaError_t e = cudaStreamSynchronize((cudaStream_t)cm->stream);
        if (e != cudaSuccess)
            return failf(cm, CTG_EIO, "ncclAllReduce: %s", cudaGetErrorString(e));
        if (op == CU_COMM_MEAN && (rc = cu_scale(c, dev, n, 1.0f / (float)cm->world)) < 0)
            return failf(cm, rc, "device: %s", cu_ctx_error(c));
        return 0;
    }
#endif
    if ((rc = grow(&cm->stage, &cm->stage_n, n)) < 0) return failf(cm, rc, "out of memory");
    if ((rc = cu_download(c, cm->stage, dev, sizeof(float) * n)) < 0)
        return failf(cm, rc, "device: %s", cu_ctx_error(c));
    if ((rc = cu_comm_allreduce(cm, cm->stage, n, op)) < 0) return rc;
    if ((rc = cu_upload(c, dev, cm->stage, sizeof(float) * n)) < 0)
        return failf(cm, rc, "device: %s", cu_ctx_error(c));
    return 0;
}
