/*
 * glip.c - the CT-GLIP contrastive losses (see glip.h): the abnormality
 * dictionary, the false-negative masks of OT and AT, and the symmetric
 * InfoNCE that both losses (and the vanilla CLIP baseline) share, built on
 * op_clip_forward_cpu / op_clip_backward_cpu.
 *
 * Threading: no global state; every function works on its arguments only.
 */
#include "core/glip.h"

#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "core/ops.h"

/* splitmix64: the dictionary draw needs a few numbers from a seed, and a
 * private generator keeps core/ free of the trainer's td_rng. */
static uint64_t sm64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void glp_dict_free(glp_dict *d)
{
    if (!d) return;
    if (d->items)
        for (int i = 0; i < d->n; i++) free((char *)d->items[i].text);
    free(d->items);
    free(d->emb);
    free(d);
}

int glp_dict_build(const glp_text *src, int nsrc, int max_n, uint64_t seed, int dim,
                   glp_encode_fn encode, void *ctx, glp_dict **out)
{
    int rc = CTG_ENOMEM;
    int *uniq = NULL, nu = 0;
    glp_dict *d = NULL;
    if (!out || (nsrc > 0 && !src) || nsrc < 0 || max_n < 0 || dim <= 0 || !encode)
        return CTG_EINVAL;
    *out = NULL;
    d = calloc(1, sizeof *d);
    if (!d) goto fail;
    d->dim = dim;
    uniq = malloc(sizeof *uniq * (size_t)(nsrc > 0 ? nsrc : 1));
    if (!uniq) goto fail;
    /* Keep the first of each text: a sentence that many cases share would
     * otherwise crowd out the rarer ones.  Quadratic, but it runs once on a
     * few thousand sentences at most. */
    for (int i = 0; i < nsrc; i++) {
        if (!src[i].text || !src[i].text[0]) continue;
        int dup = 0;
        for (int j = 0; j < nu && !dup; j++) dup = strcmp(src[uniq[j]].text, src[i].text) == 0;
        if (!dup) uniq[nu++] = i;
    }
    /* Partial Fisher-Yates picks max_n of them; sorting the pick back into
     * source order makes the dictionary independent of the draw order. */
    uint64_t st = seed;
    int take = nu < max_n ? nu : max_n;
    for (int i = 0; i < take; i++) {
        int j = i + (int)(sm64(&st) % (uint64_t)(nu - i));
        int t = uniq[i];
        uniq[i] = uniq[j];
        uniq[j] = t;
    }
    for (int i = 1; i < take; i++)
        for (int j = i; j > 0 && uniq[j - 1] > uniq[j]; j--) {
            int t = uniq[j];
            uniq[j] = uniq[j - 1];
            uniq[j - 1] = t;
        }
    d->items = calloc((size_t)(take > 0 ? take : 1), sizeof *d->items);
    d->emb = malloc(sizeof(float) * (size_t)dim * (size_t)(take > 0 ? take : 1));
    if (!d->items || !d->emb) goto fail;
    for (int i = 0; i < take; i++) {
        const glp_text *s = &src[uniq[i]];
        char *t = strdup(s->text);
        if (!t) goto fail;
        d->items[i] = (glp_text){t, s->organ, s->akey};
        d->n = i + 1;
        rc = encode(ctx, t, d->emb + (size_t)i * (size_t)dim);
        if (rc != 0) goto fail;
    }
    free(uniq);
    *out = d;
    return 0;
fail:
    free(uniq);
    glp_dict_free(d);
    return rc;
}

int glp_pair_loss(float *loss, const float *img, const float *txt, const uint8_t *mask, int n,
                  int m, int e, float tau, float weight, float *dimg, float *dtxt)
{
    if (!loss || n < 0 || m < n || e <= 0 || !(tau > 0)) return CTG_EINVAL;
    *loss = 0;
    if (n == 0) return 0;
    if (!img || !txt) return CTG_EINVAL;
    float *pi = malloc(sizeof(float) * (size_t)n * (size_t)m);
    float *pt = malloc(sizeof(float) * (size_t)n * (size_t)n);
    int rc = CTG_ENOMEM;
    if (!pi || !pt) goto fail;
    rc = op_clip_forward_cpu(loss, pi, pt, img, txt, mask, n, m, e, tau);
    if (rc != 0) goto fail;
    if (dimg || dtxt) op_clip_backward_cpu(dimg, dtxt, weight, pi, pt, img, txt, n, m, e, tau);
fail:
    free(pi);
    free(pt);
    return rc;
}

void glp_ot_mask(const int *cls, int n, uint8_t *mask)
{
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) mask[(size_t)i * n + j] = i != j && cls[i] == cls[j];
}

void glp_at_mask(const glp_text *cols, int n, int m, uint8_t *mask)
{
    for (int i = 0; i < n; i++) {
        const glp_text *r = &cols[i];
        for (int j = 0; j < m; j++) {
            const glp_text *c = &cols[j];
            int same = 0;
            if (j != i) {
                same = r->text && c->text && strcmp(r->text, c->text) == 0;
                /* Another phrasing of the very finding is no negative; the
                 * same abnormality of another organ still is. */
                if (!same && r->akey >= 0 && c->akey == r->akey && c->organ == r->organ)
                    same = 1;
            }
            mask[(size_t)i * m + j] = (uint8_t)same;
        }
    }
}
