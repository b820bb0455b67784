/*
 * text_int.h - what core/text.c (the handle, tokenizer, cache) shares with
 * the encoder kinds (core/text_glove.c, later a BERT file).  Not part of the
 * public interface: callers use core/text.h.
 *
 * Threading: as text.h.  An encoder's ops must be safe to call from several
 * threads at once on one handle.
 */
#ifndef CTGLIP_TEXT_INT_H
#define CTGLIP_TEXT_INT_H

#include "core/text.h"

/* One encoder kind.  encode gets a non-NULL text no longer than
 * TXT_MAX_TEXT and a zeroed info; explain may be NULL. */
typedef struct txt__ops {
    const char *kind;
    int (*encode)(const txt_encoder *enc, const char *text, float *out,
                  txt_info *info);
    int (*explain)(const txt_encoder *enc, const char *text, char *buf,
                   size_t cap);
    void (*close)(void *impl);
} txt__ops;

struct txt_encoder {
    const txt__ops *ops;
    int dim;
    char identity[TXT_IDENTITY_MAX];
    void *impl; /* owned, freed by ops->close */
};

/* Token kinds given to a tokenizer callback. */
enum {
    TXT__WORD = 1, /* lowercase letters, maybe with inner hyphens */
    TXT__NUM = 2,  /* a number; tok is "<num>" */
    TXT__LONG = 3, /* a word longer than TXT_MAX_WORD: tok is its prefix */
};

/* Called once per token; tok is NUL-terminated and valid only during the
 * call.  A non-zero return stops the walk and is returned by
 * txt__tokenize. */
typedef int (*txt__tok_fn)(void *ctx, const char *tok, size_t len, int kind);

/* Walks the tokens of text (see txt_tokenize for the rules).  Returns 0 or
 * the callback's first non-zero value. */
int txt__tokenize(const char *text, txt__tok_fn fn, void *ctx);

/* FNV-1a 64 over n bytes, continuing from h (start with TXT__FNV_SEED). */
#define TXT__FNV_SEED 0xcbf29ce484222325ull
uint64_t txt__fnv1a(uint64_t h, const void *p, size_t n);

/* A deterministic unit vector out[dim] from a hash: the fallback embedding
 * of a text with no known word. */
void txt__hashed(uint64_t h, float *out, int dim);

/* Copies a message into why (when not NULL) and returns err. */
int txt__why(char *why, size_t n, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The "glove" kind (core/text_glove.c). */
int txt__glove_open(const char *path, txt_encoder **out, char *why, size_t n);

#endif
