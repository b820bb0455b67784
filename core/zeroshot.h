/*
 * zeroshot.h - zero-shot scoring of organ embeddings against text prompts
 * (prefix zs_): the findings list (etc/findings.conf), the prompt
 * embeddings of one model, organ classification by the nearest organ
 * prompt, and the abnormality probability of a finding as the softmax over
 * {positive, negative} prompt of cosine / tau.  Part of core/'s public
 * interface; `ctglip-train eval` and the daemon's workers both score here,
 * so the numbers in the eval report are the numbers the SR carries.
 *
 * Prompts:
 *   organ     "this is a {organ words} in the CT scan" for every class of
 *             the model (txt_organ_words gives the words);
 *   finding   the positive and negative templates of the list with {organ}
 *             replaced by the organ's words, for every (finding, organ) pair
 *             whose organ is a class of the model.
 * Every text goes through the frozen encoder (via a txt_cache) and then the
 * model's optional text projection (mdl_text_forward).  A prompt with
 * several phrasings is the mean of their projected embeddings,
 * L2-normalised again (prompt ensembling).
 *
 * Threading: a zs_list and a built zs_prompts are read-only and may be
 * shared by any number of threads; building needs the model and the cache
 * only for reading (the cache locks itself).
 */
#ifndef CTGLIP_ZEROSHOT_H
#define CTGLIP_ZEROSHOT_H

#include <stddef.h>

#include "core/model.h"
#include "core/text.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ZS_MAX_FINDINGS 512      /* lines of a findings list */
#define ZS_MAX_ORGANS 16         /* organs one finding applies to */
#define ZS_MAX_PHRASINGS 8       /* phrasings of one prompt */
#define ZS_MAX_LINE 4096         /* bytes of one line */
#define ZS_MAX_FILE (1 << 20)    /* bytes of a findings list */
#define ZS_TAU 0.07f             /* the training temperature (DESIGN.md) */
#define ZS_ORGAN_TEMPLATE "this is a {organ} in the CT scan"
#define ZS_NORMAL_TEMPLATE "no evident abnormality in {organ}"
#define ZS_DEFAULT_THRESHOLD 0.5f

/* One finding of the list.  Strings are owned by the list. */
typedef struct zs_finding {
    char key[64];                    /* "hepatic_cyst" */
    int norgans;
    int organ_ids[ZS_MAX_ORGANS];    /* TotalSegmentator v2 ids */
    int npos, nneg;
    char *pos[ZS_MAX_PHRASINGS];     /* templates with {organ} */
    char *neg[ZS_MAX_PHRASINGS];
    char code[24];                   /* SNOMED CT concept id; "" when none */
    char meaning[128];               /* SNOMED CT meaning; "" when none */
    char display[128];               /* never empty (the key when not given) */
    float threshold;                 /* decision threshold on the probability */
    int threshold_set;               /* 1: given in the list; 0: the default */
    int line;                        /* 1-based line in the file */
} zs_finding;

typedef struct zs_list {
    int n;
    zs_finding *f;
} zs_list;

/* Parses a findings list (format in etc/findings.conf's header): TAB-
 * separated key, organs, positive, negative, SNOMED code, SNOMED meaning,
 * display name, optional threshold.  Any bad line rejects the whole list
 * with CTG_ECONFIG and "NAME:LINE: reason" in why (name is what errors
 * call the text, usually its path).  Other codes: CTG_EINVAL, CTG_ETOOBIG,
 * CTG_ENOMEM.  *out is new; free with zs_list_free. */
int zs_list_parse(const char *text, size_t len, const char *name, zs_list **out, char *why,
                  size_t n);
/* Reads and parses a file (CTG_ENOENT/CTG_EIO when it cannot be read). */
int zs_list_load(const char *path, zs_list **out, char *why, size_t n);
void zs_list_free(zs_list *l); /* NULL: no-op */
/* The index of the finding with this key, or -1. */
int zs_list_find(const zs_list *l, const char *key);

/* Which phrasings of each prompt to use: the first ("train"), the others
 * ("heldout"; a prompt with only one phrasing keeps it), or all. */
enum { ZS_TEXT_TRAIN = 0, ZS_TEXT_HELDOUT, ZS_TEXT_ALL };
/* "train", "heldout", "all" -> ZS_TEXT_*, or -1. */
int zs_text_parse(const char *s);

/* ---- prompt embeddings of one model ---------------------------------------- */

typedef struct zs_prompts zs_prompts;

/* Embeds every prompt of list l for model m (which need not outlive the
 * result; nor need l) with encoder enc, through cache (a txt_cache in
 * front of enc; NULL: encode directly).  The encoder's
 * dimension must be the model's text_dim (with a projection) or embed_dim
 * (without): CTG_EINVAL otherwise, with the reason in why.  tau <= 0 means
 * ZS_TAU.  *out is new; free with zs_prompts_free.  0, CTG_EINVAL,
 * CTG_ENOMEM or an encoder error. */
int zs_prompts_build(const zs_list *l, const mdl_model *m, txt_encoder *enc, txt_cache *cache,
                     int text, float tau, zs_prompts **out, char *why, size_t n);
void zs_prompts_free(zs_prompts *p); /* NULL: no-op */

int zs_prompts_dim(const zs_prompts *p);     /* E */
int zs_prompts_classes(const zs_prompts *p); /* K */
/* The organ prompt of model class cls (1..K), [E]; NULL when out of range. */
const float *zs_organ_vec(const zs_prompts *p, int cls);
/* The positive (positive != 0) or negative prompt of finding f (index in
 * the list) on class cls, [E]; NULL when the pair is not scored. */
const float *zs_finding_vec(const zs_prompts *p, int f, int cls, int positive);

/* Where a finding's decision threshold came from: the findings list's
 * threshold column (a site's choice wins), the model's calibration
 * (metadata "threshold.KEY", else the pooled "calibration.pooled_threshold",
 * both written by `ctglip-train calibrate`), or ZS_DEFAULT_THRESHOLD. */
#define ZS_META_POOLED "calibration.pooled_threshold"
enum { ZS_THR_DEFAULT = 0, ZS_THR_MODEL, ZS_THR_LIST };
/* The threshold finding f is decided with, and its source (may be NULL);
 * NaN when f is out of range. */
float zs_threshold(const zs_prompts *p, int f, int *source);

/* Zero-shot organ classification of an L2-normalised embedding emb [E]:
 * the class 1..K whose organ prompt has the largest cosine (the first on
 * ties).  cos [K+1] (may be NULL) gets every cosine, cos[0] = NaN.
 * Returns the class, or CTG_EINVAL. */
int zs_organ_top1(const zs_prompts *p, const float *emb, float *cos);

/* The abnormality probability of one prompt pair: softmax over {pos, neg}
 * of cosine / tau, i.e. 1 / (1 + exp((cos_neg - cos_pos) / tau)).  All
 * vectors of length dim; the embedding is expected L2-normalised. */
float zs_prob(const float *emb, const float *pos, const float *neg, int dim, float tau);

/* One scored finding of one organ. */
typedef struct zs_score {
    int finding;     /* index in the list */
    int cls;         /* model class 1..K */
    float cos_pos, cos_neg;
    float prob;      /* 0..1 */
    int present;     /* prob >= the finding's threshold */
} zs_score;

/* Scores every finding that applies to class cls on emb [E], in list
 * order (thresholds as they were when the prompts were built), into out[0..cap).  Returns how many apply (which may exceed cap;
 * only cap are written), or CTG_EINVAL. */
int zs_score_organ(const zs_prompts *p, int cls, const float *emb, zs_score *out, int cap);

#ifdef __cplusplus
}
#endif
#endif
