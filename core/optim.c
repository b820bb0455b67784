/*
 * optim.c - AdamW over one flat parameter array (the model's parameters are
 * one allocation, llm.c style), its learning-rate schedule (linear warm-up,
 * then cosine decay), and the gradient norm used for clipping.
 *
 * Threading: no state; the update loop is split over OpenMP threads and is
 * element-wise, so results do not depend on the thread count.  The norm is
 * summed in fixed blocks, so it does not either.
 */
#include "core/ops.h"

#include <math.h>

#include "core/ops_int.h"

op_adamw_cfg op_adamw_defaults(void)
{
    op_adamw_cfg c = {
        .lr = 1e-4f,
        .min_lr = 0.0f,
        .beta1 = 0.9f,
        .beta2 = 0.999f,
        .eps = 1e-8f,
        .weight_decay = 1e-2f,
        .warmup_steps = 0,
        .total_steps = 1,
    };
    return c;
}

double op_lr_at(const op_adamw_cfg *cfg, long t)
{
    if (t < 1) t = 1;
    if (cfg->warmup_steps > 0 && t <= cfg->warmup_steps)
        return (double)cfg->lr * (double)t / (double)cfg->warmup_steps;
    long span = cfg->total_steps - cfg->warmup_steps;
    double q = span > 0 ? (double)(t - cfg->warmup_steps) / (double)span : 1.0;
    if (q > 1) q = 1;
    return cfg->min_lr + 0.5 * ((double)cfg->lr - cfg->min_lr) * (1.0 + cos(M_PI * q));
}

void op_adamw_step_cpu(float *params, const float *grads, float *m, float *v, size_t n, long t,
                       const op_adamw_cfg *cfg)
{
    if (t < 1) t = 1;
    double lr = op_lr_at(cfg, t);
    /* Bias corrections in double: 1 - 0.999^t is tiny for small t. */
    double bc1 = 1.0 - pow(cfg->beta1, (double)t), bc2 = 1.0 - pow(cfg->beta2, (double)t);
    float b1 = cfg->beta1, b2 = cfg->beta2, eps = cfg->eps;
    float decay = (float)(1.0 - lr * cfg->weight_decay);
    float step = (float)(lr / bc1), rbc2 = (float)(1.0 / bc2);
    PAR_FOR(n > PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float g = grads[i];
        float mi = b1 * m[i] + (1.0f - b1) * g;
        float vi = b2 * v[i] + (1.0f - b2) * g * g;
        m[i] = mi;
        v[i] = vi;
        params[i] = params[i] * decay - step * mi / (sqrtf(vi * rbc2) + eps);
    }
}

double op_grad_norm_cpu(const float *g, size_t n)
{
    double t = 0;
    for (size_t i0 = 0; i0 < n; i0 += 1024) {
        size_t e = i0 + 1024 < n ? i0 + 1024 : n;
        float s = 0;
        OP__PRAGMA(omp simd reduction(+ : s))
        for (size_t i = i0; i < e; i++) s += g[i] * g[i];
        t += s;
    }
    return sqrt(t);
}

void op_scale_cpu(float *g, size_t n, float scale)
{
    PAR_FOR(n > PAR_MIN)
    for (size_t i = 0; i < n; i++) g[i] *= scale;
}
