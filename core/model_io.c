/*
 * model_io.c - the model file (layout in model.h): writing it durably,
 * reading it in one go with every check a file from disk deserves, and the
 * model's identity, the SHA-256 of the file's contents (OpenSSL EVP).
 *
 * The header is small and built in memory; the parameters are written and
 * read as one block straight from and into the model's parameter
 * allocation.  Numbers are little-endian, which is the host order on every
 * machine this builds for (checked at compile time).
 *
 * Threading: functions here touch only the model they are given; saving
 * reads the model, loading makes a new one.
 */
#include "core/model.h"

#include "core/core.h"
#include "core/organs.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "model_io.c writes host-order floats and assumes a little-endian host"
#endif

#define MDL__NCFG 16 /* version 3; versions 1 and 2 have 15 (no pool) */
/* A model file larger than this is refused before it is read: even a
 * width-64 depth-6 network is far below it. */
#define MDL__MAX_FILE ((size_t)4 << 30)

#define WHY(...)                                                                                  \
    do {                                                                                          \
        if (why && n) snprintf(why, n, __VA_ARGS__);                                              \
    } while (0)

/* ---- header serialisation --------------------------------------------------------- */

typedef struct wbuf {
    uint8_t *p;
    size_t len, cap;
    int oom;
} wbuf;

static void put(wbuf *b, const void *src, size_t len)
{
    if (b->oom) return;
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + len) cap *= 2;
        uint8_t *q = realloc(b->p, cap);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, src, len);
    b->len += len;
}

static void put_u32(wbuf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(wbuf *b, uint64_t v) { put(b, &v, 8); }
static void put_f32(wbuf *b, float v) { put(b, &v, 4); }
static void put_str(wbuf *b, const char *s)
{
    size_t len = strlen(s);
    put_u32(b, (uint32_t)len);
    put(b, s, len);
}

/* Everything before the parameters, up to and including n_params. */
static int header_build(const mdl_model *m, wbuf *b)
{
    const mdl_config *c = &m->cfg;
    memset(b, 0, sizeof *b);
    put(b, MDL_MAGIC, 8);
    put_u32(b, MDL_VERSION);
    put_u32(b, MDL__NCFG);
    int ints[12] = {c->in_ch,     c->n_classes,  c->width,    c->depth,
                    c->mult,      c->max_width,  c->embed_dim, c->mlp_hidden,
                    c->text_dim,  c->patch[0],   c->patch[1], c->patch[2]};
    for (int i = 0; i < 12; i++) put_u32(b, (uint32_t)ints[i]);
    put_f32(b, c->hu_lo);
    put_f32(b, c->hu_hi);
    put_f32(b, c->slope);
    put_u32(b, (uint32_t)c->pool);
    put_u32(b, (uint32_t)c->n_classes);
    for (int i = 0; i < c->n_classes; i++) {
        const ctg_organ *o = ctg_organ_get(m->class_ids[i]);
        put_u32(b, (uint32_t)m->class_ids[i]);
        put_str(b, o ? o->name : "");
    }
    put_str(b, m->text_id);
    for (int a = 0; a < 3; a++) put_f32(b, m->spacing[a]);
    put_u32(b, (uint32_t)m->n_meta);
    for (int i = 0; i < m->n_meta; i++) {
        put_str(b, m->meta[i].key);
        put_str(b, m->meta[i].val);
    }
    put_u32(b, (uint32_t)m->n_tensors);
    for (int i = 0; i < m->n_tensors; i++) {
        put_str(b, m->tensors[i].name);
        put_u64(b, m->tensors[i].count);
    }
    put_u64(b, m->n_params);
    return b->oom ? CTG_ENOMEM : 0;
}

static int sha256(const void *a, size_t alen, const void *b2, size_t blen, uint8_t out[32])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int len = 0;
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) &&
             EVP_DigestUpdate(ctx, a, alen) && (!blen || EVP_DigestUpdate(ctx, b2, blen)) &&
             EVP_DigestFinal_ex(ctx, out, &len) && len == 32;
    EVP_MD_CTX_free(ctx);
    return ok ? 0 : CTG_ENOMEM;
}

static void hex(const uint8_t h[32], char out[65])
{
    static const char dig[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = dig[h[i] >> 4];
        out[2 * i + 1] = dig[h[i] & 15];
    }
    out[64] = 0;
}

const char *mdl_identity(mdl_model *m)
{
    if (m->identity[0]) return m->identity;
    wbuf b;
    uint8_t h[32];
    if (header_build(m, &b) == 0 &&
        sha256(b.p, b.len, m->params, m->n_params * sizeof(float), h) == 0)
        hex(h, m->identity);
    free(b.p);
    return m->identity;
}

/* ---- save ------------------------------------------------------------------------------ */

int mdl_save(mdl_model *m, const char *path, char *why, size_t n)
{
    wbuf b = {0};
    uint8_t h[32];
    char tmp[4096], dir[4096];
    int fd = -1, err;
    size_t plen = m->n_params * sizeof(float);
    tmp[0] = 0;
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp) {
        WHY("path too long");
        tmp[0] = 0;
        return CTG_EINVAL;
    }
    if ((err = header_build(m, &b)) || (err = sha256(b.p, b.len, m->params, plen, h))) {
        WHY("out of memory");
        goto fail;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        err = ctg_errno(errno);
        WHY("open %s: %s", tmp, ctg_strerror(err));
        tmp[0] = 0; /* nothing to remove */
        goto fail;
    }
    if ((err = ctg_write_all(fd, b.p, b.len)) || (err = ctg_write_all(fd, m->params, plen)) ||
        (err = ctg_write_all(fd, h, 32))) {
        WHY("write %s: %s", tmp, ctg_strerror(err));
        goto fail;
    }
    if (fsync(fd) != 0) {
        err = ctg_errno(errno);
        WHY("fsync %s: %s", tmp, ctg_strerror(err));
        goto fail;
    }
    if (close(fd) != 0) {
        fd = -1;
        err = ctg_errno(errno);
        WHY("close %s: %s", tmp, ctg_strerror(err));
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        err = ctg_errno(errno);
        WHY("rename %s: %s", path, ctg_strerror(err));
        goto fail;
    }
    tmp[0] = 0;
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        dir[1] = 0;
    else
        *slash = 0;
    if ((err = ctg_fsync_dir(dir))) {
        WHY("fsync directory %s: %s", dir, ctg_strerror(err));
        goto fail;
    }
    hex(h, m->identity);
    free(b.p);
    return 0;
fail:
    if (fd >= 0) close(fd);
    if (tmp[0]) unlink(tmp);
    free(b.p);
    return err;
}

/* ---- load ------------------------------------------------------------------------------ */

typedef struct rbuf {
    const uint8_t *p;
    size_t len, off;
    int short_;
} rbuf;

static const void *take(rbuf *r, size_t len)
{
    if (r->short_ || len > r->len - r->off) {
        r->short_ = 1;
        return NULL;
    }
    const void *q = r->p + r->off;
    r->off += len;
    return q;
}

static uint32_t get_u32(rbuf *r)
{
    uint32_t v = 0;
    const void *q = take(r, 4);
    if (q) memcpy(&v, q, 4);
    return v;
}

static uint64_t get_u64(rbuf *r)
{
    uint64_t v = 0;
    const void *q = take(r, 8);
    if (q) memcpy(&v, q, 8);
    return v;
}

static float get_f32(rbuf *r)
{
    float v = 0;
    const void *q = take(r, 4);
    if (q) memcpy(&v, q, 4);
    return v;
}

/* A length-prefixed string of at most cap-1 bytes into out; -1 when too
 * long (r is marked short when the bytes run out). */
static int get_str(rbuf *r, char *out, size_t cap)
{
    uint32_t len = get_u32(r);
    if (r->short_) return 0;
    if (len >= cap) return -1;
    const void *q = take(r, len);
    if (!q) return 0;
    memcpy(out, q, len);
    out[len] = 0;
    return 0;
}

static int read_file(const char *path, uint8_t **out, size_t *len, char *why, size_t n)
{
    struct stat st;
    uint8_t *buf = NULL;
    int err, fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        err = ctg_errno(errno);
        WHY("open %s: %s", path, ctg_strerror(err));
        return err;
    }
    if (fstat(fd, &st) != 0) {
        err = ctg_errno(errno);
        WHY("stat %s: %s", path, ctg_strerror(err));
        goto fail;
    }
    if ((size_t)st.st_size > MDL__MAX_FILE) {
        err = CTG_EFORMAT;
        WHY("%s: %lld bytes, more than any model file", path, (long long)st.st_size);
        goto fail;
    }
    size_t size = (size_t)st.st_size, got = 0;
    err = CTG_ENOMEM;
    if (!(buf = malloc(size ? size : 1))) {
        WHY("out of memory");
        goto fail;
    }
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            err = ctg_errno(errno);
            WHY("read %s: %s", path, ctg_strerror(err));
            goto fail;
        }
        if (r == 0) break; /* shrank under us: judged as truncated below */
        got += (size_t)r;
    }
    close(fd);
    *out = buf;
    *len = got;
    return 0;
fail:
    close(fd);
    free(buf);
    return err;
}

int mdl_load(const char *path, mdl_model **out, char *why, size_t n)
{
    uint8_t *buf = NULL;
    size_t size = 0;
    mdl_model *m = NULL;
    char sub[256];
    int err;
    *out = NULL;
    if ((err = read_file(path, &buf, &size, why, n))) return err;
    err = CTG_EFORMAT;
    if (size < 8 || memcmp(buf, MDL_MAGIC, 8) != 0) {
        WHY("%s: not a ctglip model (bad magic)", path);
        goto fail;
    }
    rbuf r = {buf, size, 8, 0};
    uint32_t version = get_u32(&r);
    if (r.short_) {
        WHY("%s: truncated header", path);
        goto fail;
    }
    if (version < 1 || version > MDL_VERSION) {
        WHY("%s: model format version %u, this build reads 1..%d", path, version, MDL_VERSION);
        goto fail;
    }

    mdl_config c;
    int ids[MDL_MAX_CLASSES];
    uint32_t ncfg = get_u32(&r);
    uint32_t want_cfg = version >= 3 ? MDL__NCFG : 15;
    if (!r.short_ && ncfg != want_cfg) {
        WHY("%s: %u config fields, version %u has %u", path, ncfg, version, want_cfg);
        goto fail;
    }
    int *ints[12] = {&c.in_ch,     &c.n_classes, &c.width,    &c.depth,
                     &c.mult,      &c.max_width, &c.embed_dim, &c.mlp_hidden,
                     &c.text_dim,  &c.patch[0],  &c.patch[1], &c.patch[2]};
    for (int i = 0; i < 12; i++) *ints[i] = (int)get_u32(&r);
    c.hu_lo = get_f32(&r);
    c.hu_hi = get_f32(&r);
    c.slope = get_f32(&r);
    c.pool = version >= 3 ? (int)get_u32(&r) : MDL_POOL_MEAN;
    uint32_t k = get_u32(&r);
    if (!r.short_ && (k > MDL_MAX_CLASSES || (int)k != c.n_classes)) {
        WHY("%s: class list of %u entries for %d classes", path, k, c.n_classes);
        goto fail;
    }
    for (uint32_t i = 0; i < k && !r.short_; i++) {
        ids[i] = (int)get_u32(&r);
        if (get_str(&r, sub, 64) < 0) {
            WHY("%s: class name %u too long", path, i + 1);
            goto fail;
        }
        const ctg_organ *o = ctg_organ_get(ids[i]);
        /* The ids are the contract; a name that disagrees means the file
         * was made against another class table. */
        if (!r.short_ && (!o || ids[i] < 1 || strcmp(o->name, sub) != 0)) {
            WHY("%s: class %u is id %d \"%s\", which this build's v2 table does not have", path,
                i + 1, ids[i], sub);
            goto fail;
        }
    }
    char *text_id = malloc(MDL_TEXT_ID_MAX);
    if (!text_id) {
        err = CTG_ENOMEM;
        goto fail;
    }
    int tl = get_str(&r, text_id, MDL_TEXT_ID_MAX);
    if (tl < 0) {
        free(text_id);
        WHY("%s: text encoder identity too long", path);
        goto fail;
    }
    if (r.short_) {
        free(text_id);
        WHY("%s: truncated header", path);
        goto fail;
    }
    err = mdl__model_alloc(&c, ids, text_id, &m, sub, sizeof sub);
    free(text_id);
    if (err) {
        if (err == CTG_EINVAL) err = CTG_EFORMAT;
        WHY("%s: %s", path, sub);
        goto fail;
    }
    err = CTG_EFORMAT;
    if (version >= 2) {
        float sp[3];
        for (int a = 0; a < 3; a++) sp[a] = get_f32(&r);
        for (int a = 0; a < 3 && !r.short_; a++)
            if (!(sp[a] == 0 || (sp[a] > 0 && sp[a] < 100))) {
                WHY("%s: training spacing %g mm is not a spacing", path, (double)sp[a]);
                goto fail;
            }
        mdl_set_spacing(m, sp);
        uint32_t nm = get_u32(&r);
        if (!r.short_ && nm > MDL_MAX_META) {
            WHY("%s: %u metadata entries, at most %d", path, nm, MDL_MAX_META);
            goto fail;
        }
        char key[MDL_META_KEY], val[MDL_META_VAL];
        for (uint32_t i = 0; i < nm && !r.short_; i++) {
            int bad = get_str(&r, key, sizeof key) < 0;
            bad |= get_str(&r, val, sizeof val) < 0;
            if (r.short_) break;
            if (bad || mdl_meta_get(m, key)) {
                WHY("%s: metadata entry %u is too long or repeated", path, i);
                goto fail;
            }
            int mr = mdl_meta_set(m, key, val);
            if (mr == CTG_ENOMEM) {
                err = mr;
                goto fail;
            }
            if (mr) {
                WHY("%s: metadata entry %u has a bad key", path, i);
                goto fail;
            }
        }
    }
    uint32_t nt = get_u32(&r);
    if (!r.short_ && nt != (uint32_t)m->n_tensors) {
        WHY("%s: %u tensors, the config makes %d", path, nt, m->n_tensors);
        goto fail;
    }
    for (uint32_t i = 0; i < nt && !r.short_; i++) {
        int bad = get_str(&r, sub, sizeof m->tensors[i].name) < 0;
        uint64_t cnt = get_u64(&r);
        if (!r.short_ && (bad || strcmp(sub, m->tensors[i].name) != 0 ||
                          cnt != m->tensors[i].count)) {
            WHY("%s: tensor %u is not %s of %zu elements", path, i, m->tensors[i].name,
                m->tensors[i].count);
            goto fail;
        }
    }
    uint64_t np = get_u64(&r);
    if (r.short_) {
        WHY("%s: truncated header", path);
        goto fail;
    }
    if (np != m->n_params) {
        WHY("%s: %llu parameters, the config makes %zu", path, (unsigned long long)np,
            m->n_params);
        goto fail;
    }
    size_t want = r.off + m->n_params * sizeof(float) + 32;
    if (size != want) {
        WHY("%s: %zu bytes, a model of this config has %zu (%s)", path, size, want,
            size < want ? "truncated" : "trailing bytes");
        goto fail;
    }
    uint8_t h[32];
    if ((err = sha256(buf, size - 32, NULL, 0, h))) {
        WHY("out of memory");
        goto fail;
    }
    err = CTG_EFORMAT;
    if (memcmp(h, buf + size - 32, 32) != 0) {
        WHY("%s: checksum mismatch (the file is corrupted)", path);
        goto fail;
    }
    memcpy(m->params, buf + r.off, m->n_params * sizeof(float));
    hex(h, m->identity);
    free(buf);
    *out = m;
    return 0;
fail:
    mdl_free(m);
    free(buf);
    return err;
}
