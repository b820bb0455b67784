/*
 * text.c - the text-encoder handle and what every kind shares: dispatch to
 * the kind's ops, the tokenizer, the hashed fallback vector, organ names as
 * plain words, and the prompt-embedding cache.
 *
 * The tokenizer is deliberately simple and byte-oriented, so that it gives
 * the same tokens on every platform and in every locale: ASCII letters are
 * lowercased, other UTF-8 letters pass through unchanged, common Unicode
 * punctuation (quotes, dashes, no-break space) is folded to its ASCII
 * meaning, and everything else that is not a letter or a digit separates
 * tokens.
 *
 * Threading: an open encoder is read-only, so txt_encode may run on many
 * threads at once.  A cache takes a read-write lock for lookups and
 * serialises the computation of misses with a mutex, so a text is encoded
 * once however many threads ask for it together.
 */
#include "core/text_int.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

/* ---- small shared helpers ------------------------------------------------- */

int txt__why(char *why, size_t n, int err, const char *fmt, ...)
{
    if (why && n) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, n, fmt, ap);
        va_end(ap);
    }
    return err;
}

uint64_t txt__fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* splitmix64: a small generator whose output depends only on the seed, so
 * the fallback vector is the same on every machine. */
static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void txt__hashed(uint64_t h, float *out, int dim)
{
    uint64_t s = h;
    double ss = 0;
    for (int i = 0; i < dim; i++) {
        double u = (double)(splitmix64(&s) >> 11) * (1.0 / 9007199254740992.0);
        out[i] = (float)(2 * u - 1);
        ss += (double)out[i] * out[i];
    }
    if (ss <= 0) {
        /* Cannot happen for dim > 1 in practice, but a unit vector is
         * promised. */
        for (int i = 0; i < dim; i++) out[i] = i == 0;
        return;
    }
    double inv = 1 / sqrt(ss);
    for (int i = 0; i < dim; i++) out[i] = (float)(out[i] * inv);
}

/* ---- the handle -------------------------------------------------------------- */

int txt_open(const char *kind, const char *path, txt_encoder **out, char *why, size_t n)
{
    if (out) *out = NULL;
    if (!kind || !path || !out) return txt__why(why, n, CTG_EINVAL, "text: missing argument");
    if (!strcmp(kind, "glove")) return txt__glove_open(path, out, why, n);
    if (!strcmp(kind, "bert"))
        return txt__why(why, n, CTG_EINVAL,
                        "text: the \"bert\" encoder kind (safetensors + vocab.txt) is not "
                        "implemented yet; use \"glove\"");
    return txt__why(why, n, CTG_EINVAL, "text: unknown encoder kind \"%s\" (known: glove, bert)",
                    kind);
}

void txt_close(txt_encoder *enc)
{
    if (!enc) return;
    if (enc->ops && enc->ops->close) enc->ops->close(enc->impl);
    free(enc);
}

int txt_dim(const txt_encoder *enc) { return enc ? enc->dim : 0; }
const char *txt_kind(const txt_encoder *enc) { return enc ? enc->ops->kind : ""; }
const char *txt_identity(const txt_encoder *enc) { return enc ? enc->identity : ""; }

/* Checks what every entry point needs: arguments present, text bounded. */
static int check_text(const txt_encoder *enc, const char *text, const void *out)
{
    if (!enc || !text || !out) return CTG_EINVAL;
    if (strnlen(text, TXT_MAX_TEXT + 1) > TXT_MAX_TEXT) return CTG_ETOOBIG;
    return 0;
}

int txt_encode_info(txt_encoder *enc, const char *text, float *out, txt_info *info)
{
    int rc = check_text(enc, text, out);
    if (rc) return rc;
    txt_info local;
    if (!info) info = &local;
    memset(info, 0, sizeof *info);
    return enc->ops->encode(enc, text, out, info);
}

int txt_encode(txt_encoder *enc, const char *text, float *out)
{
    return txt_encode_info(enc, text, out, NULL);
}

int txt_explain(txt_encoder *enc, const char *text, char *buf, size_t cap)
{
    int rc = check_text(enc, text, buf);
    if (rc) return rc;
    if (!cap) return CTG_EINVAL;
    if (!enc->ops->explain) return CTG_EINVAL;
    buf[0] = 0;
    return enc->ops->explain(enc, text, buf, cap);
}

/* ---- tokenizer ------------------------------------------------------------------ */

enum { C_SEP, C_LETTER, C_DIGIT, C_HYPHEN, C_APOS };

/* The class of the character at s[i] and its length in bytes.  Malformed
 * UTF-8 is one separator byte, so no input can make the walk stall. */
static int cls_at(const unsigned char *s, size_t i, size_t *len)
{
    unsigned c = s[i];
    *len = 1;
    if (c < 0x80) {
        unsigned lc = c | 0x20;
        if (lc >= 'a' && lc <= 'z') return C_LETTER;
        if (c >= '0' && c <= '9') return C_DIGIT;
        if (c == '-') return C_HYPHEN;
        if (c == '\'') return C_APOS;
        return C_SEP;
    }
    size_t need;
    uint32_t cp;
    if ((c & 0xe0) == 0xc0) need = 2, cp = c & 0x1f;
    else if ((c & 0xf0) == 0xe0) need = 3, cp = c & 0x0f;
    else if ((c & 0xf8) == 0xf0) need = 4, cp = c & 0x07;
    else return C_SEP;
    for (size_t k = 1; k < need; k++) {
        if ((s[i + k] & 0xc0) != 0x80) return C_SEP; /* also stops at the NUL */
        cp = cp << 6 | (s[i + k] & 0x3f);
    }
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[need] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return C_SEP;
    *len = need;
    if (cp == 0x2018 || cp == 0x2019 || cp == 0x02bc) return C_APOS;
    if (cp == 0x2010 || cp == 0x2011) return C_HYPHEN;
    /* Latin-1 punctuation and symbols (no-break space, degree, micro, plus-
     * minus, ...), the multiplication and division signs, the General
     * Punctuation block (dashes, quotes, bullets), CJK punctuation and the
     * byte-order mark separate words. */
    if ((cp >= 0x80 && cp <= 0xbf) || cp == 0xd7 || cp == 0xf7 ||
        (cp >= 0x2000 && cp <= 0x206f) || (cp >= 0x3000 && cp <= 0x303f) || cp == 0xfeff)
        return C_SEP;
    return C_LETTER;
}

static int is_ascii_letter(unsigned char c)
{
    c |= 0x20;
    return c >= 'a' && c <= 'z';
}

/* Skips a number starting at s[i]: digits with inner '.' or ',' groups
 * ("3.5", "1,200") and an ordinal suffix ("1st", "12th"). */
static size_t skip_number(const unsigned char *s, size_t i)
{
    while (s[i] >= '0' && s[i] <= '9') {
        i++;
        if ((s[i] == '.' || s[i] == ',') && s[i + 1] >= '0' && s[i + 1] <= '9') i++;
    }
    if (is_ascii_letter(s[i]) && is_ascii_letter(s[i + 1]) && !is_ascii_letter(s[i + 2])) {
        char a = (char)(s[i] | 0x20), b = (char)(s[i + 1] | 0x20);
        if ((a == 's' && b == 't') || (a == 'n' && b == 'd') || (a == 'r' && b == 'd') ||
            (a == 't' && b == 'h'))
            i += 2;
    }
    return i;
}

/* What follows an apostrophe inside a word: a clitic that ends the word and
 * may add one ("n't" -> "not", "'ll" -> "will"), or a plain separator. */
static const struct {
    const char *clitic, *adds;
} clitics[] = {{"s", NULL}, {"t", "not"}, {"ll", "will"}, {"re", "are"},
               {"ve", "have"}, {"d", "would"}, {"m", "am"}};

int txt__tokenize(const char *text, txt__tok_fn fn, void *ctx)
{
    const unsigned char *s = (const unsigned char *)text;
    char w[TXT_MAX_WORD + 1];
    size_t i = 0, l;
    int rc;
    while (s[i]) {
        int c = cls_at(s, i, &l);
        if (c == C_DIGIT) {
            i = skip_number(s, i);
            if ((rc = fn(ctx, "<num>", 5, TXT__NUM))) return rc;
            continue;
        }
        if (c != C_LETTER) {
            i += l;
            continue;
        }
        size_t wl = 0, full = 0;
        const char *adds = NULL;
        for (;;) {
            c = cls_at(s, i, &l);
            if (c == C_LETTER) {
                for (size_t k = 0; k < l; k++, full++) {
                    unsigned char b = s[i + k];
                    if (b < 0x80 && b >= 'A' && b <= 'Z') b |= 0x20;
                    if (wl < TXT_MAX_WORD) w[wl++] = (char)b;
                }
                i += l;
                continue;
            }
            size_t l2;
            if (c == C_HYPHEN && cls_at(s, i + l, &l2) == C_LETTER) {
                if (wl < TXT_MAX_WORD) w[wl++] = '-';
                full++;
                i += l;
                continue;
            }
            if (c == C_APOS) {
                /* A clitic is a short run of ASCII letters after the
                 * apostrophe, ending the word. */
                size_t j = i + l, k = 0;
                char cl[4];
                while (k < 3 && is_ascii_letter(s[j + k])) cl[k] = (char)(s[j + k] | 0x20), k++;
                cl[k] = 0;
                size_t after;
                int ends = k > 0 && cls_at(s, j + k, &after) != C_LETTER;
                for (size_t m = 0; ends && m < sizeof clitics / sizeof clitics[0]; m++) {
                    if (strcmp(cl, clitics[m].clitic)) continue;
                    if (clitics[m].adds && !strcmp(clitics[m].adds, "not")) {
                        /* "doesn't" -> "does not": only after an 'n'. */
                        if (full > wl || wl < 2 || w[wl - 1] != 'n') break;
                        wl--, full--;
                        if (wl == 2 && !memcmp(w, "ca", 2)) w[wl++] = 'n', full++; /* can't */
                        if (wl == 2 && !memcmp(w, "wo", 2)) memcpy(w, "will", 4), wl = full = 4;
                        if (wl == 3 && !memcmp(w, "sha", 3)) memcpy(w, "shall", 5), wl = full = 5;
                    }
                    adds = clitics[m].adds;
                    i = j + k;
                    break;
                }
            }
            break;
        }
        w[wl] = 0;
        if ((rc = fn(ctx, w, wl, full > TXT_MAX_WORD ? TXT__LONG : TXT__WORD))) return rc;
        if (adds && (rc = fn(ctx, adds, strlen(adds), TXT__WORD))) return rc;
    }
    return 0;
}

typedef struct joinbuf {
    char *buf;
    size_t cap, len;
    int count;
} joinbuf;

static int join_tok(void *ctx, const char *tok, size_t len, int kind)
{
    (void)kind;
    joinbuf *j = ctx;
    size_t need = len + (j->len ? 1 : 0);
    if (j->len + need + 1 > j->cap) return CTG_ENOSPC;
    if (j->len) j->buf[j->len++] = ' ';
    memcpy(j->buf + j->len, tok, len);
    j->len += len;
    j->buf[j->len] = 0;
    j->count++;
    return 0;
}

int txt_tokenize(const char *text, char *buf, size_t cap)
{
    if (!text || !buf || !cap) return CTG_EINVAL;
    if (strnlen(text, TXT_MAX_TEXT + 1) > TXT_MAX_TEXT) return CTG_ETOOBIG;
    buf[0] = 0;
    joinbuf j = {buf, cap, 0, 0};
    int rc = txt__tokenize(text, join_tok, &j);
    return rc ? rc : j.count;
}

/* ---- organ names as words ---------------------------------------------------------- */

static const char *const ordinals[] = {
    "zeroth",    "first",      "second",     "third",      "fourth",     "fifth",      "sixth",
    "seventh",   "eighth",     "ninth",      "tenth",      "eleventh",   "twelfth",    "thirteenth",
    "fourteenth", "fifteenth", "sixteenth",  "seventeenth", "eighteenth", "nineteenth", "twentieth"};

/* TotalSegmentator's Latin or abbreviated parts and their plain English
 * (the SNOMED CT meanings of the same structures). */
static const char *const part_words[][2] = {
    {"clavicula", "clavicle"},  {"vena", "vein"},        {"vertebrae", "vertebra"},
    {"autochthon", "deep back muscle"}, {"cartilages", "cartilage"},
};

static int add_word(char *buf, size_t cap, size_t *len, const char *w)
{
    size_t l = strlen(w), need = l + (*len ? 1 : 0);
    if (*len + need + 1 > cap) return CTG_ENOSPC;
    if (*len) buf[(*len)++] = ' ';
    memcpy(buf + *len, w, l + 1);
    *len += l;
    return 0;
}

/* 1 when parts[k] is a vertebra code such as "t12" after "vertebrae". */
static int vertebra_code(char parts[][32], int k)
{
    const char *p = parts[k];
    return k > 0 && !strcmp(parts[k - 1], "vertebrae") && p[0] && strchr("ctls", p[0]) &&
           p[1] >= '0' && p[1] <= '9';
}

int txt_organ_words(const char *name, char *buf, size_t cap)
{
    if (!name || !buf || !cap) return CTG_EINVAL;
    buf[0] = 0;
    char parts[8][32];
    int np = 0;
    for (const char *p = name; *p;) {
        while (*p == '_') p++;
        if (!*p) break;
        size_t l = strcspn(p, "_");
        if (np == 8 || l >= sizeof parts[0]) return CTG_EINVAL;
        for (size_t k = 0; k < l; k++) {
            char c = p[k];
            parts[np][k] = (char)(c >= 'A' && c <= 'Z' ? c | 0x20 : c);
        }
        parts[np++][l] = 0;
        p += l;
    }
    if (!np) return CTG_EINVAL;
    size_t len = 0;
    int rc;
    /* Side first, then an ordinal, then the rest in order: "rib_left_3" ->
     * "left third rib", as a radiologist would say it. */
    for (int k = 0; k < np; k++)
        if ((!strcmp(parts[k], "left") || !strcmp(parts[k], "right")) &&
            (rc = add_word(buf, cap, &len, parts[k])))
            return rc;
    for (int k = 0; k < np; k++) {
        const char *p = parts[k];
        const char *region = NULL;
        if (vertebra_code(parts, k)) {
            region = p[0] == 'c' ? "cervical" : p[0] == 't' ? "thoracic" : p[0] == 'l' ? "lumbar"
                                                                                      : "sacral";
            p++;
        }
        if (*p < '0' || *p > '9') continue;
        char *end;
        long v = strtol(p, &end, 10);
        if (*end) continue;
        if ((rc = add_word(buf, cap, &len, v >= 0 && v <= 20 ? ordinals[v] : p))) return rc;
        if (region && (rc = add_word(buf, cap, &len, region))) return rc;
    }
    for (int k = 0; k < np; k++) {
        const char *p = parts[k];
        if (!strcmp(p, "left") || !strcmp(p, "right")) continue;
        if ((p[0] >= '0' && p[0] <= '9') || vertebra_code(parts, k)) continue;
        for (size_t m = 0; m < sizeof part_words / sizeof part_words[0]; m++)
            if (!strcmp(p, part_words[m][0])) {
                p = part_words[m][1];
                break;
            }
        if ((rc = add_word(buf, cap, &len, p))) return rc;
    }
    return 0;
}

/* ---- prompt-embedding cache ------------------------------------------------------------ */

typedef struct centry {
    uint64_t h;
    char *text;
    float vec[]; /* dim floats, then the text */
} centry;

struct txt_cache {
    txt_encoder *enc;
    size_t max, n, cap; /* cap: slots, a power of two > 2 * max */
    centry **slots;
    pthread_rwlock_t lock;
    pthread_mutex_t compute;
    size_t misses, hits; /* atomics */
};

int txt_cache_open(txt_encoder *enc, size_t max_entries, txt_cache **out)
{
    if (out) *out = NULL;
    if (!enc || !out || !max_entries || max_entries > ((size_t)1 << 24)) return CTG_EINVAL;
    txt_cache *c = calloc(1, sizeof *c);
    if (!c) return CTG_ENOMEM;
    c->enc = enc;
    c->max = max_entries;
    c->cap = 16;
    while (c->cap <= 2 * max_entries) c->cap *= 2;
    c->slots = calloc(c->cap, sizeof *c->slots);
    if (!c->slots) {
        free(c);
        return CTG_ENOMEM;
    }
    pthread_rwlock_init(&c->lock, NULL);
    pthread_mutex_init(&c->compute, NULL);
    *out = c;
    return 0;
}

void txt_cache_close(txt_cache *c)
{
    if (!c) return;
    for (size_t i = 0; i < c->cap; i++) free(c->slots[i]);
    free(c->slots);
    pthread_rwlock_destroy(&c->lock);
    pthread_mutex_destroy(&c->compute);
    free(c);
}

/* The slot holding text, or the empty slot where it would go.  Callers hold
 * the lock (either side). */
static size_t cache_find(const txt_cache *c, uint64_t h, const char *text)
{
    size_t i = (size_t)h & (c->cap - 1);
    while (c->slots[i] && (c->slots[i]->h != h || strcmp(c->slots[i]->text, text)))
        i = (i + 1) & (c->cap - 1);
    return i;
}

/* Copies the cached vector of text into out; 1 when it was there. */
static int cache_lookup(txt_cache *c, uint64_t h, const char *text, float *out)
{
    pthread_rwlock_rdlock(&c->lock);
    const centry *e = c->slots[cache_find(c, h, text)];
    if (e) memcpy(out, e->vec, sizeof(float) * (size_t)c->enc->dim);
    pthread_rwlock_unlock(&c->lock);
    return e != NULL;
}

int txt_cache_get(txt_cache *c, const char *text, float *out)
{
    if (!c) return CTG_EINVAL;
    int rc = check_text(c->enc, text, out);
    if (rc) return rc;
    size_t len = strlen(text), dim = (size_t)c->enc->dim;
    uint64_t h = txt__fnv1a(TXT__FNV_SEED, text, len);
    if (cache_lookup(c, h, text, out)) {
        __atomic_add_fetch(&c->hits, 1, __ATOMIC_RELAXED);
        return 0;
    }
    /* Misses are computed one at a time, and the lookup is repeated under
     * the compute mutex, so concurrent first uses of a text encode it once
     * and every thread then sees the same bits. */
    pthread_mutex_lock(&c->compute);
    if (cache_lookup(c, h, text, out)) {
        pthread_mutex_unlock(&c->compute);
        __atomic_add_fetch(&c->hits, 1, __ATOMIC_RELAXED);
        return 0;
    }
    rc = txt_encode(c->enc, text, out);
    __atomic_add_fetch(&c->misses, 1, __ATOMIC_RELAXED);
    if (rc == 0 && __atomic_load_n(&c->n, __ATOMIC_RELAXED) < c->max) {
        centry *e = malloc(sizeof *e + sizeof(float) * dim + len + 1);
        if (e) {
            e->h = h;
            e->text = (char *)(e->vec + dim);
            memcpy(e->vec, out, sizeof(float) * dim);
            memcpy(e->text, text, len + 1);
            pthread_rwlock_wrlock(&c->lock);
            c->slots[cache_find(c, h, text)] = e;
            __atomic_add_fetch(&c->n, 1, __ATOMIC_RELAXED);
            pthread_rwlock_unlock(&c->lock);
        }
        /* Without memory for the entry the caller still has its vector;
         * only the caching is lost. */
    }
    pthread_mutex_unlock(&c->compute);
    return rc;
}

void txt_cache_stats(txt_cache *c, size_t *entries, size_t *misses, size_t *hits)
{
    if (entries) *entries = c ? __atomic_load_n(&c->n, __ATOMIC_RELAXED) : 0;
    if (misses) *misses = c ? __atomic_load_n(&c->misses, __ATOMIC_RELAXED) : 0;
    if (hits) *hits = c ? __atomic_load_n(&c->hits, __ATOMIC_RELAXED) : 0;
}

