/*
 * glip.h - the training losses of CT-GLIP (prefix glp_): organ-text
 * contrastive (OT, eq. 2 of the paper), abnormality-text contrastive (AT,
 * eq. 3) with the abnormality dictionary as extra negatives and masking of
 * false negatives, and the "vanilla CLIP" baseline (a whole volume against
 * its whole report).  The segmentation part is mdl_seg_loss (model.h).
 *
 * The losses work on rows of embeddings that the caller gathers: one row
 * per organ present in a patch of the batch, its embedding (from
 * mdl_acts.embed) and its text (projected by mdl_text_forward).  Each loss
 * returns its value and ADDS weight times its gradient with respect to the
 * image rows and the text rows into the caller's arrays; the caller then
 * scatters the image gradient into mdl_acts.dembed for mdl_backward and
 * hands the text gradient to mdl_text_backward.
 *
 * Threading: no global state; a glp_dict is read-only after it is built
 * and may be shared.
 */
#ifndef CTGLIP_GLIP_H
#define CTGLIP_GLIP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GLP_TAU 0.07f
#define GLP_ORGAN_TEMPLATE "this is a %s in the CT scan"
#define GLP_NORMAL_TEMPLATE "no evident abnormality in %s"
#define GLP_DICT_DEFAULT 512

/* What a text column stands for, to decide which columns are false
 * negatives of a row.  text is the exact sentence; organ the model class
 * it is about (0: none); akey an abnormality number (-1: the normal
 * template, i.e. no abnormality).  Strings are not owned. */
typedef struct glp_text {
    const char *text;
    int organ;
    int akey;
} glp_text;

/* The abnormality dictionary: n sentences of abnormalities with their raw
 * (unprojected) text embeddings emb [n][dim], drawn once from the training
 * findings.  Owned by the dict; free with glp_dict_free. */
typedef struct glp_dict {
    int n, dim;
    float *emb;
    glp_text *items; /* items[i].text is owned by the dict */
} glp_dict;

/* Builds a dictionary of at most max_n entries from the nsrc candidate
 * sentences src (duplicates by text are kept once), chosen without
 * replacement by a generator seeded with seed when there are more than
 * max_n, then kept in source order.  encode(ctx, text, out[dim]) embeds a
 * text (the trainer passes txt_cache_get).  *out is new.  Returns 0,
 * CTG_EINVAL, CTG_ENOMEM or the encoder's error. */
typedef int (*glp_encode_fn)(void *ctx, const char *text, float *out);
int glp_dict_build(const glp_text *src, int nsrc, int max_n, uint64_t seed, int dim,
                   glp_encode_fn encode, void *ctx, glp_dict **out);
void glp_dict_free(glp_dict *d); /* NULL: no-op */

/* The symmetric contrastive loss of n (img[i], txt[i]) pairs with m - n
 * extra negative texts txt[n..m-1] (op_clip_forward_cpu), both [.][e]
 * and L2-normalised:
 *   loss = 0.5 * (InfoNCE image->texts over m + InfoNCE text->images over n)
 * mask [n][m] (NULL: none) marks false negatives.  Adds weight * dloss/dimg
 * to dimg [n][e] and weight * dloss/dtxt to dtxt [m][e] (either NULL:
 * skipped).  n == 0 gives loss 0 and touches nothing.  Returns 0,
 * CTG_EINVAL or CTG_ENOMEM. */
int glp_pair_loss(float *loss, const float *img, const float *txt, const uint8_t *mask, int n,
                  int m, int e, float tau, float weight, float *dimg, float *dtxt);

/* OT mask for n rows of organ classes cls[n]: row i ignores the texts of
 * the other rows of its own class (the same prompt), mask [n][n]. */
void glp_ot_mask(const int *cls, int n, uint8_t *mask);

/* AT mask [n][m] for n rows whose positives are cols[0..n-1] and extra
 * columns cols[n..m-1] (the dictionary): column j != i is masked for row i
 * when its text is identical to row i's positive (e.g. the same organ's
 * normal template in two patches, or a repeated sentence), or when row i is
 * abnormal (akey >= 0) and column j describes the same abnormality of the
 * same organ in other words. */
void glp_at_mask(const glp_text *cols, int n, int m, uint8_t *mask);

#ifdef __cplusplus
}
#endif
#endif
