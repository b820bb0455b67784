/*
 * text_glove.c - the "glove" text encoder: word vectors from a CTGVOCAB
 * file (format in core/text.h), read, checked and written here.
 *
 * An embedding is a frequency-weighted average of the vectors of the words
 * of a text, L2-normalised (the "smooth inverse frequency" weighting of
 * Arora et al., ICLR 2017, without its common-component removal, which
 * would need a corpus of sentences):
 *
 *   e = normalise( sum_w  a / (a + p(w)) * v(w) ),   a = 1e-3,
 *   p(w) = 1 / (rank(w) * H(V))   (Zipf's law; H(V) = 1 + 1/2 + ... + 1/V),
 *
 * so "the", "of" and "is" weigh about 0.01 while rare words weigh nearly 1.
 * The ranks are positions in the source's word list, which keeps GloVe's
 * corpus-frequency order (the npm package dropped one-letter words and most
 * tokens with digits from GloVe's 400,000); V is the length of that list.
 * Every number maps to the entry "<num>", which the converter builds from
 * the vectors of "one".."ten".
 *
 * A word missing from the vocabulary is looked up in this order:
 *   1. as a whole; a hyphenated compound ("well-defined") as a whole, then
 *      part by part;
 *   2. through a small table of medical word formation, because GloVe's
 *      general-English vocabulary lacks many radiology words: combining
 *      forms ("cardio" -> heart, "nephro" -> kidney), suffixes ("-megaly"
 *      -> enlarged, "-lithiasis" -> stones, "-itis" -> inflammation, and
 *      rewrites such as "-ematous" -> "-ema", "-al" -> "") and prefixes
 *      ("hypo" -> low, "peri" -> around, "non" -> non), up to three rules
 *      deep, each part having to resolve: "cardiomegaly" -> heart enlarged,
 *      "hypoattenuating" -> low attenuating, "pericholecystic" -> around
 *      gallbladder;
 *   3. otherwise it is skipped.
 * A text in which nothing is known gets a unit vector hashed from its tokens
 * (txt_info.hashed says so), so distinct unknown texts still differ.
 *
 * Vectors are stored as int8 with one fp32 scale per word: the cosine
 * between a vector and its stored form is above 0.9999, and it halves the
 * file against fp16, so twice as many words fit the same few megabytes.
 *
 * Threading: an open vocabulary is read-only; encoding is reentrant.
 */
#include "core/text_int.h"

#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "core/core.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "CTGVOCAB arrays are read in place: a little-endian host is assumed"
#endif

#define SIF_A 1e-3
#define VTYPE_I8 1
#define MAX_SOURCE_VOCAB 10000000u /* GloVe 840B has 2.2 million words */
#define MAX_GLOSS 8   /* vocabulary entries one word may resolve to */
#define MORPH_DEPTH 3 /* rules applied in a chain at most */
#define MIN_REST 4    /* letters a prefix must leave: "unter" is not "un-ter" */

typedef struct glove {
    unsigned char *file; /* the whole file; the arrays point into it */
    size_t size;
    int dim;
    uint32_t count, source_vocab;
    const uint32_t *rank, *off;
    const float *scale;
    const int8_t *q;
    const char *pool;
    size_t pool_len;
    char source[TXT_VOCAB_SOURCE_MAX];
    uint8_t sha[32];
    float *weight; /* SIF weight of each word */
    int num;       /* index of "<num>", or -1 */
} glove;

/* ---- little-endian fields ------------------------------------------------------ */

static uint32_t rd32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const unsigned char *p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }
static void wr32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void wr64(unsigned char *p, uint64_t v)
{
    wr32(p, (uint32_t)v);
    wr32(p + 4, (uint32_t)(v >> 32));
}

/* SHA-256 of a header (its checksum field taken as zero) and a payload. */
static int vocab_sha(const unsigned char *hdr, const unsigned char *payload, size_t plen,
                     uint8_t out[32])
{
    unsigned char h[TXT_VOCAB_HEADER];
    memcpy(h, hdr, sizeof h);
    memset(h + 40, 0, 32);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int len = 0;
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) &&
             EVP_DigestUpdate(ctx, h, sizeof h) && EVP_DigestUpdate(ctx, payload, plen) &&
             EVP_DigestFinal_ex(ctx, out, &len) && len == 32;
    EVP_MD_CTX_free(ctx);
    return ok ? 0 : CTG_ENOMEM;
}

/* Bytes of the fixed-size arrays of a payload. */
static uint64_t fixed_bytes(uint64_t count, uint64_t dim) { return count * 12 + count * dim; }

static int word_ok(const char *w, size_t len)
{
    if (len < 1 || len > TXT_MAX_WORD) return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)w[i];
        if (c <= 0x20 || c == 0x7f) return 0;
    }
    return 1;
}

/* ---- reading -------------------------------------------------------------------- */

static void glove_free(void *impl)
{
    glove *g = impl;
    if (!g) return;
    free(g->file);
    free(g->weight);
    free(g);
}

/* Reads and checks a whole CTGVOCAB file into g (file, arrays, source,
 * sha).  On failure g->file may be set; the caller frees it. */
static int vocab_load(const char *path, glove *g, char *why, size_t n)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = ctg_errno(errno);
        return txt__why(why, n, e, "%s: %s", path, ctg_strerror(e));
    }
    int rc = 0;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = txt__why(why, n, ctg_errno(errno), "%s: fstat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = txt__why(why, n, CTG_EINVAL, "%s: not a regular file", path);
        goto fail;
    }
    if ((uint64_t)st.st_size > TXT_VOCAB_MAX_BYTES) {
        rc = txt__why(why, n, CTG_ETOOBIG, "%s: %lld bytes, more than the %zu allowed", path,
                      (long long)st.st_size, TXT_VOCAB_MAX_BYTES);
        goto fail;
    }
    g->size = (size_t)st.st_size;
    g->file = malloc(g->size ? g->size : 1);
    if (!g->file) {
        rc = txt__why(why, n, CTG_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    for (size_t got = 0; got < g->size;) {
        ssize_t r = read(fd, g->file + got, g->size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            rc = txt__why(why, n, r < 0 ? ctg_errno(errno) : CTG_EIO, "%s: read failed", path);
            goto fail;
        }
        got += (size_t)r;
    }
    close(fd);
    fd = -1;

    const unsigned char *h = g->file;
    /* Magic and version come first, so a file of another kind or a newer
     * format is named as such rather than as "corrupt". */
    if (g->size < 8 || memcmp(h, TXT_VOCAB_MAGIC, 8))
        return txt__why(why, n, CTG_EFORMAT, "%s: not a CTGVOCAB file (bad magic)", path);
    if (g->size < 12)
        return txt__why(why, n, CTG_EFORMAT, "%s: truncated header (%zu bytes)", path, g->size);
    uint32_t version = rd32(h + 8);
    if (version != TXT_VOCAB_VERSION)
        return txt__why(why, n, CTG_EFORMAT, "%s: unsupported CTGVOCAB version %u (this program reads %d)",
                        path, version, TXT_VOCAB_VERSION);
    if (g->size < TXT_VOCAB_HEADER)
        return txt__why(why, n, CTG_EFORMAT, "%s: truncated header (%zu of %d bytes)", path, g->size,
                        TXT_VOCAB_HEADER);
    uint32_t hbytes = rd32(h + 12), dim = rd32(h + 16), count = rd32(h + 20), vtype = rd32(h + 24);
    uint64_t payload = rd64(h + 32);
    g->source_vocab = rd32(h + 28);
    if (hbytes != TXT_VOCAB_HEADER)
        return txt__why(why, n, CTG_EFORMAT, "%s: header size %u, expected %d", path, hbytes,
                        TXT_VOCAB_HEADER);
    if (dim < 1 || dim > TXT_MAX_DIM || count < 1 || count > TXT_VOCAB_MAX_WORDS)
        return txt__why(why, n, CTG_EFORMAT, "%s: bad sizes (dim %u, %u words)", path, dim, count);
    if (vtype != VTYPE_I8)
        return txt__why(why, n, CTG_EFORMAT, "%s: unknown vector type %u", path, vtype);
    if (payload != g->size - TXT_VOCAB_HEADER)
        return txt__why(why, n, CTG_EFORMAT,
                        "%s: truncated or extended: the header says %llu payload bytes, the "
                        "file has %zu",
                        path, (unsigned long long)payload, g->size - TXT_VOCAB_HEADER);
    uint64_t fixed = fixed_bytes(count, dim);
    if (payload <= fixed)
        return txt__why(why, n, CTG_EFORMAT, "%s: payload too small for %u words", path, count);
    if (g->source_vocab < 1 || g->source_vocab > MAX_SOURCE_VOCAB)
        return txt__why(why, n, CTG_EFORMAT, "%s: bad source vocabulary size %u", path,
                        g->source_vocab);

    const unsigned char *p = h + TXT_VOCAB_HEADER;
    if ((rc = vocab_sha(h, p, (size_t)payload, g->sha)))
        return txt__why(why, n, rc, "%s: cannot compute SHA-256", path);
    if (memcmp(g->sha, h + 40, 32))
        return txt__why(why, n, CTG_EFORMAT, "%s: checksum mismatch (the file is corrupted)", path);
    const char *src = (const char *)h + 72;
    size_t sl = strnlen(src, TXT_VOCAB_SOURCE_MAX);
    if (sl == TXT_VOCAB_SOURCE_MAX)
        return txt__why(why, n, CTG_EFORMAT, "%s: source name not terminated", path);
    for (size_t i = 0; i < sl; i++)
        if (src[i] <= 0x20 || src[i] >= 0x7f)
            return txt__why(why, n, CTG_EFORMAT, "%s: source name not printable", path);
    for (size_t i = sl; i < TXT_VOCAB_SOURCE_MAX; i++)
        if (src[i]) return txt__why(why, n, CTG_EFORMAT, "%s: source name not NUL-padded", path);
    for (int i = 120; i < TXT_VOCAB_HEADER; i++)
        if (h[i]) return txt__why(why, n, CTG_EFORMAT, "%s: reserved header bytes set", path);
    memcpy(g->source, src, sl + 1);

    g->dim = (int)dim;
    g->count = count;
    g->rank = (const uint32_t *)p;
    g->off = g->rank + count;
    g->scale = (const float *)(g->off + count);
    g->q = (const int8_t *)(g->scale + count);
    g->pool = (const char *)(g->q + (size_t)count * dim);
    g->pool_len = (size_t)(payload - fixed);
    /* The checksum proves the writer's intent, not its correctness: the
     * structure is checked too, so that no lookup can leave the buffer. */
    size_t expect = 0;
    for (uint32_t i = 0; i < count; i++) {
        if (g->off[i] != expect)
            return txt__why(why, n, CTG_EFORMAT, "%s: word %u not where expected", path, i);
        const char *w = g->pool + expect;
        const char *z = memchr(w, 0, g->pool_len - expect);
        if (!z) return txt__why(why, n, CTG_EFORMAT, "%s: word %u not terminated", path, i);
        size_t wl = (size_t)(z - w);
        if (!word_ok(w, wl))
            return txt__why(why, n, CTG_EFORMAT, "%s: word %u is empty, too long or has spaces", path, i);
        if (i && strcmp(g->pool + g->off[i - 1], w) >= 0)
            return txt__why(why, n, CTG_EFORMAT, "%s: words not sorted at %u (\"%s\")", path, i, w);
        if (g->rank[i] < 1 || g->rank[i] > g->source_vocab)
            return txt__why(why, n, CTG_EFORMAT, "%s: rank of \"%s\" out of range", path, w);
        if (!isfinite(g->scale[i]) || g->scale[i] < 0)
            return txt__why(why, n, CTG_EFORMAT, "%s: bad scale for \"%s\"", path, w);
        expect += wl + 1;
    }
    if (expect != g->pool_len)
        return txt__why(why, n, CTG_EFORMAT, "%s: %zu stray bytes after the last word", path,
                        g->pool_len - expect);
    return 0;

fail:
    if (fd >= 0) close(fd);
    return rc;
}

int txt_vocab_verify(const char *path, char *why, size_t n)
{
    if (!path) return txt__why(why, n, CTG_EINVAL, "no path");
    glove g;
    memset(&g, 0, sizeof g);
    int rc = vocab_load(path, &g, why, n);
    free(g.file);
    return rc;
}

/* ---- lookup ------------------------------------------------------------------------ */

static int lookup(const glove *g, const char *w)
{
    uint32_t lo = 0, hi = g->count;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int c = strcmp(g->pool + g->off[mid], w);
        if (!c) return (int)mid;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return -1;
}

/* ---- medical word formation ----------------------------------------------------------- */

/* Combining forms, without their connecting vowel: an OOV word that is a
 * form plus an adjective ending ("cholecystic") reads as the gloss; a form
 * with its connecting 'o' or 'i' before another word ("thoraco|abdominal")
 * reads as the gloss followed by that word. */
static const char *const forms[][2] = {
    {"cardi", "heart"},      {"hepat", "liver"},     {"nephr", "kidney"},    {"chole", "gallbladder"},
    {"cholecyst", "gallbladder"}, {"splen", "spleen"}, {"pneum", "air"},      {"pulmon", "lung"},
    {"gastr", "stomach"},    {"enter", "bowel"},     {"oste", "bone"},       {"angi", "vessel"},
    {"thorac", "chest"},     {"abdomin", "abdomen"}, {"pancreat", "pancreas"}, {"adren", "adrenal"},
    {"bronch", "airway"},    {"crani", "head"},      {"brachi", "arm"},      {"cephal", "head"},
    {"lip", "fat"},          {"hem", "blood"},       {"haem", "blood"},      {"hydr", "water"},
    {"neur", "nerve"},       {"vas", "vessel"},
};
static const char *const form_endings[] = {"", "o", "i", "ic", "al", "ar", "ary", "ous"};

/* Prefixes and their plain-English gloss. */
static const char *const prefixes[][2] = {
    {"non", "non"},     {"un", "not"},         {"hypo", "low"},      {"hyper", "high"},
    {"infra", "below"}, {"supra", "above"},    {"sub", "below"},     {"peri", "around"},
    {"para", "beside"}, {"intra", "within"},   {"inter", "between"}, {"retro", "behind"},
    {"trans", "across"}, {"pre", "before"},    {"post", "after"},    {"multi", "multiple"},
    {"poly", "multiple"}, {"micro", "small"},  {"macro", "large"},   {"centri", "central"},
};

/* Suffixes: with a gloss, the stem resolves and the gloss follows it; with
 * a rewrite, the rewritten word is resolved instead. */
static const struct {
    const char *suffix, *gloss, *rewrite;
    size_t min_stem; /* short stems make false matches: "sandal" is not "sand" */
} suffixes[] = {
    {"lithiasis", "stones", NULL, 3}, {"megaly", "enlarged", NULL, 3}, {"ectomy", "removal", NULL, 3},
    {"itis", "inflammation", NULL, 3}, {"ematous", NULL, "ema", 3},    {"ific", NULL, "ification", 3},
    {"ness", NULL, "", 4},             {"ly", NULL, "", 5},            {"al", NULL, "", 5},
};

static int has_prefix(const char *w, const char *p) { return !strncmp(w, p, strlen(p)); }

/* Resolves an out-of-vocabulary piece into at most room vocabulary
 * indices; returns how many, 0 when it cannot.  Every part must resolve:
 * a rule that leaves an unknown stem is not used. */
static int resolve(const glove *g, const char *w, int depth, int *idx, int room)
{
    size_t len = strlen(w);
    if (room < 1 || len < 3) return 0;
    int i = lookup(g, w);
    if (i >= 0) {
        idx[0] = i;
        return 1;
    }
    if (len < 5) return 0;
    for (size_t f = 0; f < sizeof forms / sizeof forms[0]; f++) {
        if (!has_prefix(w, forms[f][0])) continue;
        const char *rest = w + strlen(forms[f][0]);
        for (size_t e = 0; e < sizeof form_endings / sizeof form_endings[0]; e++)
            if (!strcmp(rest, form_endings[e]) && (i = lookup(g, forms[f][1])) >= 0) {
                idx[0] = i;
                return 1;
            }
    }
    if (depth <= 0) return 0;
    char buf[TXT_MAX_WORD + 16];
    for (size_t s = 0; s < sizeof suffixes / sizeof suffixes[0]; s++) {
        size_t sl = strlen(suffixes[s].suffix);
        if (len < sl + suffixes[s].min_stem || strcmp(w + len - sl, suffixes[s].suffix)) continue;
        int k;
        if (suffixes[s].rewrite) {
            snprintf(buf, sizeof buf, "%.*s%s", (int)(len - sl), w, suffixes[s].rewrite);
            if ((k = resolve(g, buf, depth - 1, idx, room)) > 0) return k;
            continue;
        }
        int gi = lookup(g, suffixes[s].gloss);
        if (gi < 0 || room < 2) continue;
        snprintf(buf, sizeof buf, "%.*s", (int)(len - sl), w);
        if ((k = resolve(g, buf, depth - 1, idx, room - 1)) > 0) {
            idx[k] = gi;
            return k + 1;
        }
    }
    if (room < 2) return 0;
    for (size_t p = 0; p < sizeof prefixes / sizeof prefixes[0]; p++) {
        const char *rest = w + strlen(prefixes[p][0]);
        int gi, k;
        if (!has_prefix(w, prefixes[p][0]) || strlen(rest) < MIN_REST) continue;
        if ((gi = lookup(g, prefixes[p][1])) < 0) continue;
        if ((k = resolve(g, rest, depth - 1, idx + 1, room - 1)) > 0) {
            idx[0] = gi;
            return k + 1;
        }
    }
    for (size_t f = 0; f < sizeof forms / sizeof forms[0]; f++) {
        if (!has_prefix(w, forms[f][0])) continue;
        const char *rest = w + strlen(forms[f][0]);
        /* As a prefix a form needs its connecting vowel (or to end in one,
         * like "chole"), which keeps ordinary words from being split. */
        char last = forms[f][0][strlen(forms[f][0]) - 1];
        if (*rest == 'o' || *rest == 'i') rest++;
        else if (last != 'e' && last != 'o' && last != 'i') continue;
        int gi, k;
        if (strlen(rest) < MIN_REST || (gi = lookup(g, forms[f][1])) < 0) continue;
        if ((k = resolve(g, rest, depth - 1, idx + 1, room - 1)) > 0) {
            idx[0] = gi;
            return k + 1;
        }
    }
    return 0;
}

/* ---- encoding -------------------------------------------------------------------------- */

typedef struct walk {
    const glove *g;
    double *sum;    /* dim sums, or NULL when only explaining */
    txt_info *info;
    uint64_t h;     /* hash of the token stream, for the fallback */
    char *buf;      /* explanation, or NULL */
    size_t cap, len;
} walk;

static void say(walk *w, const char *a, const char *b)
{
    if (!w->buf) return;
    char piece[6 * TXT_MAX_WORD];
    snprintf(piece, sizeof piece, "%s%s%s", w->len ? " " : "", a, b);
    size_t l = strlen(piece);
    if (w->len + l + 1 > w->cap) {
        /* Truncated output stays a prefix of the full explanation. */
        l = w->cap - 1 - w->len;
    }
    memcpy(w->buf + w->len, piece, l);
    w->len += l;
    w->buf[w->len] = 0;
}

static void use(walk *w, int idx)
{
    if (!w->sum) return;
    const glove *g = w->g;
    double f = (double)g->weight[idx] * g->scale[idx];
    const int8_t *q = g->q + (size_t)idx * (size_t)g->dim;
    for (int d = 0; d < g->dim; d++) w->sum[d] += f * q[d];
}

static void one_word(walk *w, const char *tok)
{
    const glove *g = w->g;
    w->info->tokens++;
    int idx[MAX_GLOSS];
    int i = lookup(g, tok);
    if (i >= 0) {
        w->info->known++;
        use(w, i);
        say(w, tok, "");
        return;
    }
    int k = resolve(g, tok, MORPH_DEPTH, idx, MAX_GLOSS);
    if (k <= 0) {
        w->info->oov++;
        say(w, "!", tok);
        return;
    }
    w->info->known++;
    w->info->morph++;
    char gl[4 * TXT_MAX_WORD];
    size_t gn = 0;
    gl[0] = 0;
    for (int j = 0; j < k; j++) {
        use(w, idx[j]);
        int r = snprintf(gl + gn, sizeof gl - gn, "%s%s", j ? "+" : ">", g->pool + g->off[idx[j]]);
        if (r > 0 && (size_t)r < sizeof gl - gn) gn += (size_t)r;
    }
    say(w, tok, gl);
}

static int on_token(void *ctx, const char *tok, size_t len, int kind)
{
    walk *w = ctx;
    w->h = txt__fnv1a(w->h, tok, len + 1); /* the NUL separates tokens */
    if (kind == TXT__NUM) {
        w->info->tokens++;
        if (w->g->num >= 0) {
            w->info->known++;
            use(w, w->g->num);
            say(w, tok, "");
        } else {
            w->info->oov++;
            say(w, "!", tok);
        }
        return 0;
    }
    if (kind == TXT__LONG) {
        w->info->tokens++;
        w->info->oov++;
        say(w, "!", tok);
        return 0;
    }
    if (!strchr(tok, '-') || lookup(w->g, tok) >= 0) {
        one_word(w, tok);
        return 0;
    }
    /* A compound the vocabulary lacks is read part by part. */
    char part[TXT_MAX_WORD + 1];
    for (const char *p = tok; *p;) {
        size_t l = strcspn(p, "-");
        memcpy(part, p, l);
        part[l] = 0;
        if (l) one_word(w, part);
        p += l;
        if (*p) p++;
    }
    return 0;
}

static int glove_encode(const txt_encoder *enc, const char *text, float *out, txt_info *info)
{
    const glove *g = enc->impl;
    double *sum = calloc((size_t)g->dim, sizeof *sum);
    if (!sum) return CTG_ENOMEM;
    walk w = {g, sum, info, TXT__FNV_SEED, NULL, 0, 0};
    int rc = txt__tokenize(text, on_token, &w);
    if (rc) goto fail;
    double ss = 0;
    for (int d = 0; d < g->dim; d++) ss += sum[d] * sum[d];
    if (info->known == 0 || !(ss > 0)) {
        info->hashed = 1;
        txt__hashed(w.h, out, g->dim);
    } else {
        double inv = 1 / sqrt(ss);
        for (int d = 0; d < g->dim; d++) out[d] = (float)(sum[d] * inv);
    }
fail:
    free(sum);
    return rc;
}

static int glove_explain(const txt_encoder *enc, const char *text, char *buf, size_t cap)
{
    txt_info info;
    memset(&info, 0, sizeof info);
    walk w = {enc->impl, NULL, &info, TXT__FNV_SEED, buf, cap, 0};
    return txt__tokenize(text, on_token, &w);
}

static const txt__ops glove_ops = {"glove", glove_encode, glove_explain, glove_free};

int txt__glove_open(const char *path, txt_encoder **out, char *why, size_t n)
{
    txt_encoder *enc = NULL;
    glove *g = calloc(1, sizeof *g);
    int rc;
    if (!g) return txt__why(why, n, CTG_ENOMEM, "out of memory");
    if ((rc = vocab_load(path, g, why, n))) goto fail;
    g->weight = malloc(sizeof *g->weight * g->count);
    enc = calloc(1, sizeof *enc);
    if (!g->weight || !enc) {
        rc = txt__why(why, n, CTG_ENOMEM, "out of memory");
        goto fail;
    }
    /* H(V) summed exactly, in a fixed order, so every machine gets the same
     * weights. */
    double hv = 0;
    for (uint32_t r = g->source_vocab; r >= 1; r--) hv += 1.0 / r;
    for (uint32_t i = 0; i < g->count; i++) {
        double p = 1.0 / ((double)g->rank[i] * hv);
        g->weight[i] = (float)(SIF_A / (SIF_A + p));
    }
    g->num = lookup(g, "<num>");
    char hex[65];
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", g->sha[i]);
    snprintf(enc->identity, sizeof enc->identity, "glove-sif.1:%s:%dx%u:sha256=%s",
             g->source[0] ? g->source : "unknown", g->dim, g->count, hex);
    enc->ops = &glove_ops;
    enc->dim = g->dim;
    enc->impl = g;
    *out = enc;
    return 0;
fail:
    free(enc);
    glove_free(g);
    return rc;
}

/* ---- writing -------------------------------------------------------------------------- */

static int cmp_word(const void *a, const void *b, void *ctx)
{
    const txt_vocab_src *src = ctx;
    return strcmp(src->words[*(const uint32_t *)a], src->words[*(const uint32_t *)b]);
}

/* Durable write of one buffer: temp file, fsync, rename, fsync of the
 * directory. */
static int write_durably(const char *path, const unsigned char *buf, size_t len, char *why,
                         size_t n)
{
    char tmp[PATH_MAX], dir[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return txt__why(why, n, CTG_EINVAL, "%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = ctg_errno(errno);
        return txt__why(why, n, e, "%s: %s", tmp, ctg_strerror(e));
    }
    int rc = ctg_write_all(fd, buf, len);
    if (!rc && fsync(fd) != 0) rc = ctg_errno(errno);
    if (close(fd) != 0 && !rc) rc = ctg_errno(errno);
    if (!rc && rename(tmp, path) != 0) rc = ctg_errno(errno);
    if (rc) {
        unlink(tmp);
        return txt__why(why, n, rc, "%s: %s", path, ctg_strerror(rc));
    }
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir) slash[1] = 0;
    else if (slash) *slash = 0;
    else snprintf(dir, sizeof dir, ".");
    if ((rc = ctg_fsync_dir(dir))) return txt__why(why, n, rc, "%s: fsync: %s", dir, ctg_strerror(rc));
    return 0;
}

int txt_vocab_write(const char *path, const txt_vocab_src *src, char *why, size_t n)
{
    if (!path || !src || !src->words || !src->vec || !src->rank)
        return txt__why(why, n, CTG_EINVAL, "missing argument");
    if (src->dim < 1 || src->dim > TXT_MAX_DIM || src->count < 1 ||
        src->count > TXT_VOCAB_MAX_WORDS)
        return txt__why(why, n, CTG_EINVAL, "bad sizes (dim %d, %zu words)", src->dim, src->count);
    if (src->source_vocab < 1 || src->source_vocab > MAX_SOURCE_VOCAB)
        return txt__why(why, n, CTG_EINVAL, "bad source vocabulary size %u", src->source_vocab);
    const char *source = src->source ? src->source : "";
    size_t sl = strlen(source);
    if (sl >= TXT_VOCAB_SOURCE_MAX) return txt__why(why, n, CTG_EINVAL, "source name too long");
    for (size_t i = 0; i < sl; i++)
        if (source[i] <= 0x20 || source[i] >= 0x7f)
            return txt__why(why, n, CTG_EINVAL, "source name not printable ASCII");
    size_t count = src->count, dim = (size_t)src->dim, pool = 0;
    for (size_t i = 0; i < count; i++) {
        const char *w = src->words[i];
        if (!w || !word_ok(w, strlen(w)))
            return txt__why(why, n, CTG_EINVAL, "word %zu is empty, too long or has spaces", i);
        if (src->rank[i] < 1 || src->rank[i] > src->source_vocab)
            return txt__why(why, n, CTG_EINVAL, "rank of \"%s\" out of range", w);
        for (size_t d = 0; d < dim; d++)
            if (!isfinite(src->vec[i * dim + d]))
                return txt__why(why, n, CTG_EINVAL, "vector of \"%s\" not finite", w);
        pool += strlen(w) + 1;
    }
    uint64_t payload = fixed_bytes(count, dim) + pool;
    if (payload + TXT_VOCAB_HEADER > TXT_VOCAB_MAX_BYTES)
        return txt__why(why, n, CTG_ETOOBIG, "vocabulary would exceed %zu bytes", TXT_VOCAB_MAX_BYTES);

    int rc = 0;
    uint32_t *order = malloc(count * sizeof *order);
    unsigned char *buf = calloc(1, TXT_VOCAB_HEADER + (size_t)payload);
    if (!order || !buf) {
        rc = txt__why(why, n, CTG_ENOMEM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < count; i++) order[i] = (uint32_t)i;
    qsort_r(order, count, sizeof *order, cmp_word, (void *)src);
    for (size_t i = 1; i < count; i++)
        if (!strcmp(src->words[order[i - 1]], src->words[order[i]])) {
            rc = txt__why(why, n, CTG_EINVAL, "duplicate word \"%s\"", src->words[order[i]]);
            goto fail;
        }

    unsigned char *h = buf, *p = buf + TXT_VOCAB_HEADER;
    memcpy(h, TXT_VOCAB_MAGIC, 8);
    wr32(h + 8, TXT_VOCAB_VERSION);
    wr32(h + 12, TXT_VOCAB_HEADER);
    wr32(h + 16, (uint32_t)dim);
    wr32(h + 20, (uint32_t)count);
    wr32(h + 24, VTYPE_I8);
    wr32(h + 28, src->source_vocab);
    wr64(h + 32, payload);
    memcpy(h + 72, source, sl);

    unsigned char *rank = p, *off = p + 4 * count, *scale = p + 8 * count;
    int8_t *q = (int8_t *)(p + 12 * count);
    char *pl = (char *)(q + count * dim);
    size_t at = 0;
    for (size_t i = 0; i < count; i++) {
        uint32_t o = order[i];
        const float *v = src->vec + (size_t)o * dim;
        wr32(rank + 4 * i, src->rank[o]);
        wr32(off + 4 * i, (uint32_t)at);
        size_t wl = strlen(src->words[o]);
        memcpy(pl + at, src->words[o], wl + 1);
        at += wl + 1;
        /* Symmetric int8: the largest component maps to +-127. */
        float m = 0;
        for (size_t d = 0; d < dim; d++) m = fmaxf(m, fabsf(v[d]));
        float s = m / 127.0f;
        uint32_t bits;
        memcpy(&bits, &s, 4);
        wr32(scale + 4 * i, bits);
        for (size_t d = 0; d < dim; d++) {
            long r = s > 0 ? lround((double)v[d] / s) : 0;
            q[i * dim + d] = (int8_t)(r > 127 ? 127 : r < -127 ? -127 : r);
        }
    }
    uint8_t sha[32];
    if ((rc = vocab_sha(h, p, (size_t)payload, sha))) {
        rc = txt__why(why, n, rc, "cannot compute SHA-256");
        goto fail;
    }
    memcpy(h + 40, sha, 32);
    rc = write_durably(path, buf, TXT_VOCAB_HEADER + (size_t)payload, why, n);
fail:
    free(order);
    free(buf);
    return rc;
}
