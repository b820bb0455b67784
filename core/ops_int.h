/*
 * ops_int.h - what the files of the ops (ops.c, ops_conv.c, ops_loss.c,
 * optim.c) share and nobody else needs: OpenMP loop pragmas that compile
 * to nothing without -fopenmp.
 */
#ifndef CTGLIP_OPS_INT_H
#define CTGLIP_OPS_INT_H

#define OP__STR(x) #x
#ifdef _OPENMP
#define OP__PRAGMA(x) _Pragma(OP__STR(x))
#else
#define OP__PRAGMA(x)
#endif
/* Parallel loop when the work is worth waking the thread team. */
#define PAR_FOR(cond) OP__PRAGMA(omp parallel for schedule(static) if (cond))
#define SIMD_SUM(v) OP__PRAGMA(omp simd reduction(+ : v))

/* Below this many elements a loop stays on the calling thread. */
#define PAR_MIN 32768

#endif
