/*
 * train_data.c - the trainer's data layer: manifest parsing, case loading
 * onto the training grid, the case cache and patch sampling with
 * augmentation (see train_data.h).
 *
 * A manifest line is independent of every other, so a bad line costs only
 * that case: its reason is logged with the line number and the rest of the
 * manifest is used.  Loading a case does all the geometry work once
 * (canonical orientation, label grid check, resampling to the training
 * spacing) so that sampling a patch is a cheap crop of in-memory volumes.
 *
 * Threading: no global state; see train_data.h for what may be shared.
 */
#include "tools/train_data.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/core.h"
#include "core/organs.h"
#include "dicom/dicom.h"

/* A DICOM folder of more files than this is not one CT study. */
#define TD_MAX_DICOM_FILES 100000
#define TD_PATH_MAX 4096

/* ---- small helpers ------------------------------------------------------------ */

static char *dup_str(const char *s)
{
    return strdup(s ? s : "");
}

/* A path in the manifest relative to its folder dir; absolute ones stay. */
static char *join_path(const char *dir, const char *p)
{
    if (p[0] == '/' || !dir[0]) return strdup(p);
    size_t a = strlen(dir), b = strlen(p);
    char *s = malloc(a + b + 2);
    if (!s) return NULL;
    memcpy(s, dir, a);
    s[a] = '/';
    memcpy(s + a + 1, p, b + 1);
    return s;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* ---- manifest ----------------------------------------------------------------- */

static void entry_clear(td_entry *e)
{
    free(e->id);
    free(e->ct);
    free(e->labels);
    free(e->lesions);
    free(e->report);
    for (int f = 0; f < e->nfindings; f++) {
        free(e->findings[f].organ);
        free(e->findings[f].abnormality);
        free(e->findings[f].sentence);
    }
    free(e->findings);
    memset(e, 0, sizeof *e);
}

void td_manifest_free(td_manifest *m)
{
    if (!m) return;
    for (int i = 0; i < m->n; i++) entry_clear(&m->cases[i]);
    free(m->cases);
    free(m);
}

int td_manifest_find(const td_manifest *m, const char *id)
{
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->cases[i].id, id)) return i;
    return -1;
}

/* A non-empty string member, or NULL. */
static const char *str_item(const cJSON *o, const char *key)
{
    const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, key));
    return s && s[0] ? s : NULL;
}

/* Parses one line into *e.  Returns 0, CTG_ENOMEM, or CTG_EFORMAT with the
 * reason in why. */
static int parse_line(const char *line, const char *dir, td_entry *e, char *why, size_t n)
{
    int rc = CTG_EFORMAT;
    cJSON *j = cJSON_Parse(line);
    if (!j) {
        const char *at = cJSON_GetErrorPtr();
        snprintf(why, n, "not JSON (near byte %ld)", at ? (long)(at - line) : -1L);
        return CTG_EFORMAT;
    }
    if (!cJSON_IsObject(j)) {
        snprintf(why, n, "not a JSON object");
        goto fail;
    }
    const char *id = str_item(j, "id"), *ct = str_item(j, "ct"), *labels = str_item(j, "labels");
    if (!id || !ct || !labels) {
        snprintf(why, n, "\"%s\" missing or not a non-empty string",
                 !id ? "id" : !ct ? "ct" : "labels");
        goto fail;
    }
    if (strlen(id) >= sizeof ((td_case *)0)->id) {
        snprintf(why, n, "\"id\" longer than %zu bytes", sizeof ((td_case *)0)->id - 1);
        goto fail;
    }
    const cJSON *lv = cJSON_GetObjectItemCaseSensitive(j, "label_version");
    if (lv && !cJSON_IsNull(lv)) {
        if (!cJSON_IsNumber(lv) || (lv->valuedouble != 1 && lv->valuedouble != 2)) {
            snprintf(why, n, "\"label_version\" must be 1 or 2");
            goto fail;
        }
        e->label_version = (int)lv->valuedouble;
    }
    const cJSON *fs = cJSON_GetObjectItemCaseSensitive(j, "findings");
    int nf = 0;
    if (fs && !cJSON_IsNull(fs)) {
        if (!cJSON_IsArray(fs)) {
            snprintf(why, n, "\"findings\" is not an array");
            goto fail;
        }
        nf = cJSON_GetArraySize(fs);
        if (nf > TD_MAX_FINDINGS) {
            snprintf(why, n, "%d findings (at most %d)", nf, TD_MAX_FINDINGS);
            goto fail;
        }
        int k = 0;
        const cJSON *f;
        cJSON_ArrayForEach(f, fs)
        {
            k++;
            const char *organ = str_item(f, "organ"), *abn = str_item(f, "abnormality");
            const cJSON *sen = cJSON_GetObjectItemCaseSensitive(f, "sentence");
            if (!cJSON_IsObject(f) || !organ || !abn) {
                snprintf(why, n, "finding %d: \"%s\" missing or not a non-empty string", k,
                         !cJSON_IsObject(f) || !organ ? "organ" : "abnormality");
                goto fail;
            }
            if (sen && !cJSON_IsNull(sen) && !cJSON_IsString(sen)) {
                snprintf(why, n, "finding %d: \"sentence\" is not a string", k);
                goto fail;
            }
            if (strlen(organ) >= sizeof ((td_finding *)0)->organ ||
                strlen(abn) >= sizeof ((td_finding *)0)->abnormality) {
                snprintf(why, n, "finding %d: organ or abnormality name too long", k);
                goto fail;
            }
        }
    }
    const char *lesions = str_item(j, "lesions"), *report = str_item(j, "report");
    rc = CTG_ENOMEM;
    if (!(e->id = strdup(id)) || !(e->ct = join_path(dir, ct)) ||
        !(e->labels = join_path(dir, labels)) ||
        (lesions && !(e->lesions = join_path(dir, lesions))) ||
        (report && !(e->report = join_path(dir, report))))
        goto fail;
    if (nf > 0) {
        if (!(e->findings = calloc((size_t)nf, sizeof *e->findings))) goto fail;
        const cJSON *f;
        cJSON_ArrayForEach(f, fs)
        {
            td_mfinding *d = &e->findings[e->nfindings++];
            const char *sen = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(f, "sentence"));
            const cJSON *les = cJSON_GetObjectItemCaseSensitive(f, "lesion");
            if (cJSON_IsNumber(les) && les->valuedouble >= 1 && les->valuedouble <= 255)
                d->lesion = (int)les->valuedouble;
            if (!(d->organ = dup_str(str_item(f, "organ"))) ||
                !(d->abnormality = dup_str(str_item(f, "abnormality"))) ||
                !(d->sentence = dup_str(sen)))
                goto fail;
        }
    }
    cJSON_Delete(j);
    return 0;
fail:
    if (rc == CTG_ENOMEM) snprintf(why, n, "out of memory");
    cJSON_Delete(j);
    entry_clear(e);
    return rc;
}

static void note_skip(td_manifest *m, const char *path, int line, const char *why)
{
    m->skipped++;
    log_warn("%s:%d: skipped: %s", path, line, why);
    if (m->nskip_log < TD_MAX_SKIP_LOG) {
        m->skip_log[m->nskip_log].line = line;
        snprintf(m->skip_log[m->nskip_log].why, sizeof m->skip_log[0].why, "%s", why);
        m->nskip_log++;
    }
}

int td_manifest_load(const char *path, td_manifest **out, char *why, size_t n)
{
    *out = NULL;
    int rc = 0;
    char dir[TD_PATH_MAX] = "";
    char *buf = NULL;
    td_manifest *m = NULL;
    FILE *f = fopen(path, "r");
    if (!f) {
        rc = ctg_errno(errno);
        snprintf(why, n, "%s: %s", path, ctg_strerror(rc));
        return rc;
    }
    /* Relative paths are relative to the manifest's folder; make that
     * absolute so that cases stay loadable whatever the working folder. */
    char real[PATH_MAX];
    if (realpath(path, real)) {
        char *slash = strrchr(real, '/');
        if (slash) {
            *slash = 0;
            snprintf(dir, sizeof dir, "%s", slash == real ? "/" : real);
        }
    } else {
        const char *slash = strrchr(path, '/');
        if (slash) snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
        else snprintf(dir, sizeof dir, ".");
    }
    if (!(m = calloc(1, sizeof *m)) || !(buf = malloc(TD_MAX_LINE + 2))) {
        rc = CTG_ENOMEM;
        snprintf(why, n, "out of memory");
        goto fail;
    }
    int cap = 0, lineno = 0;
    while (fgets(buf, TD_MAX_LINE + 2, f)) {
        lineno++;
        size_t len = strlen(buf);
        char reason[200];
        if (len > 0 && buf[len - 1] == '\n') {
            buf[--len] = 0;
        } else if (len == TD_MAX_LINE + 1) {
            /* Longer than the cap: drop the rest of the line. */
            int ch;
            while ((ch = fgetc(f)) != EOF && ch != '\n') {
            }
            m->lines++;
            snprintf(reason, sizeof reason, "line longer than %d bytes", TD_MAX_LINE);
            note_skip(m, path, lineno, reason);
            continue;
        }
        if (len > 0 && buf[len - 1] == '\r') buf[--len] = 0;
        if (strspn(buf, " \t") == len) continue;
        m->lines++;
        if (m->n == TD_MAX_CASES) {
            rc = CTG_ETOOBIG;
            snprintf(why, n, "%s: more than %d cases", path, TD_MAX_CASES);
            goto fail;
        }
        td_entry e;
        memset(&e, 0, sizeof e);
        int r = parse_line(buf, dir, &e, reason, sizeof reason);
        if (r == CTG_ENOMEM) {
            rc = r;
            snprintf(why, n, "out of memory");
            goto fail;
        }
        if (r < 0) {
            note_skip(m, path, lineno, reason);
            continue;
        }
        if (td_manifest_find(m, e.id) >= 0) {
            snprintf(reason, sizeof reason, "duplicate id \"%.120s\"", e.id);
            entry_clear(&e);
            note_skip(m, path, lineno, reason);
            continue;
        }
        e.line = lineno;
        if (m->n == cap) {
            int nc = cap ? 2 * cap : 64;
            td_entry *v = realloc(m->cases, (size_t)nc * sizeof *v);
            if (!v) {
                entry_clear(&e);
                rc = CTG_ENOMEM;
                snprintf(why, n, "out of memory");
                goto fail;
            }
            m->cases = v;
            cap = nc;
        }
        m->cases[m->n++] = e;
    }
    if (ferror(f)) {
        rc = CTG_EIO;
        snprintf(why, n, "%s: read error", path);
        goto fail;
    }
    if (m->n == 0) {
        rc = CTG_EFORMAT;
        snprintf(why, n, "%s: no usable case (%d line(s) skipped)", path, m->skipped);
        goto fail;
    }
    if (m->skipped)
        log_warn("%s: %d case(s), %d line(s) skipped", path, m->n, m->skipped);
    fclose(f);
    free(buf);
    *out = m;
    return 0;
fail:
    fclose(f);
    free(buf);
    td_manifest_free(m);
    return rc;
}

/* ---- options ------------------------------------------------------------------ */

void td_opts_default(td_opts *o)
{
    memset(o, 0, sizeof *o);
    o->label_version = 2;
    o->fg_fraction = 2.0 / 3.0;
    o->lesions = 1;
    o->lesion_fraction = 0.25;
    o->augment = 1;
    o->scale = 0.10;
    o->hu_scale = 0.05;
    o->hu_shift = 20.0;
    o->noise_sd = 10.0;
}

/* ---- loading a case -------------------------------------------------------- */

typedef struct file_list {
    char **v;
    size_t n, cap;
} file_list;

static void files_free(file_list *l)
{
    for (size_t k = 0; k < l->n; k++) free(l->v[k]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Adds every regular file under dir (recursively, hidden names skipped). */
static int collect(file_list *l, const char *dir, int depth, char *why, size_t n)
{
    DIR *d = opendir(dir);
    if (!d) {
        int rc = ctg_errno(errno);
        snprintf(why, n, "%s: %s", dir, ctg_strerror(rc));
        return rc;
    }
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        char sub[TD_PATH_MAX];
        if ((size_t)snprintf(sub, sizeof sub, "%s/%s", dir, de->d_name) >= sizeof sub) continue;
        struct stat st;
        if (stat(sub, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) {
            if (depth < 8) rc = collect(l, sub, depth + 1, why, n);
            continue;
        }
        if (!S_ISREG(st.st_mode)) continue;
        if (l->n == TD_MAX_DICOM_FILES) {
            snprintf(why, n, "%s: more than %d files", dir, TD_MAX_DICOM_FILES);
            rc = CTG_ETOOBIG;
            break;
        }
        if (l->n == l->cap) {
            size_t cap = l->cap ? 2 * l->cap : 256;
            char **v = realloc(l->v, cap * sizeof *v);
            if (!v) {
                rc = CTG_ENOMEM;
                break;
            }
            l->v = v;
            l->cap = cap;
        }
        if (!(l->v[l->n] = strdup(sub))) {
            rc = CTG_ENOMEM;
            break;
        }
        l->n++;
    }
    closedir(d);
    if (rc == CTG_ENOMEM) snprintf(why, n, "out of memory");
    return rc;
}

/* The CT of a case as F32 HU in canonical orientation. */
static int load_ct(const char *path, ctg_vol **out, char *why, size_t n)
{
    *out = NULL;
    struct stat st;
    if (stat(path, &st) != 0) {
        int rc = ctg_errno(errno);
        snprintf(why, n, "ct %s: %s", path, ctg_strerror(rc));
        return rc;
    }
    int rc;
    char sub[1024] = "";
    if (S_ISDIR(st.st_mode)) {
        file_list l = {0};
        if ((rc = collect(&l, path, 0, sub, sizeof sub)) < 0) {
            files_free(&l);
            snprintf(why, n, "ct: %s", sub);
            return rc;
        }
        if (l.n == 0) {
            files_free(&l);
            snprintf(why, n, "ct %s: empty folder", path);
            return CTG_EREJECT;
        }
        /* Sorted so that the same folder always gives the same call. */
        qsort(l.v, l.n, sizeof *l.v, cmp_str);
        dcm_global_init();
        rc = dcm_series_volume((const char *const *)l.v, l.n, NULL, out, NULL, sub, sizeof sub);
        files_free(&l);
        if (rc < 0) {
            snprintf(why, n, "ct %s: %s", path, sub);
            return rc;
        }
        return 0;
    }
    if (!ends_with(path, ".nii") && !ends_with(path, ".nii.gz")) {
        snprintf(why, n, "ct %s: neither a DICOM folder nor .nii/.nii.gz", path);
        return CTG_EFORMAT;
    }
    if ((rc = ctg_nifti_read(path, CTG_F32, out, sub, sizeof sub)) < 0) {
        snprintf(why, n, "ct: %s", sub);
        return rc;
    }
    if ((rc = ctg_vol_canonical(*out)) < 0) {
        snprintf(why, n, "ct %s: %s", path, ctg_strerror(rc));
        ctg_vol_free(*out);
        *out = NULL;
        return rc;
    }
    return 0;
}

/* 1 when the boxes of the two grids (voxel centres +- half a voxel) meet
 * in world space: the corners of b's box, taken into a's index space, are
 * bounded and that bound is checked against a's box.  Exact for grids that
 * share directions and conservative (may say yes) for rotated ones, which
 * is enough to reject a label map that belongs to another scan. */
static int grids_overlap(const ctg_vol *a, const ctg_vol *b)
{
    double lo[3] = {INFINITY, INFINITY, INFINITY}, hi[3] = {-INFINITY, -INFINITY, -INFINITY};
    const int nb[3] = {b->nx, b->ny, b->nz}, na[3] = {a->nx, a->ny, a->nz};
    for (int c = 0; c < 8; c++) {
        double ijk[3], xyz[3], ia[3];
        for (int d = 0; d < 3; d++) ijk[d] = (c >> d & 1) ? nb[d] - 0.5 : -0.5;
        ctg_vol_world(b, ijk, xyz);
        if (ctg_vol_index(a, xyz, ia) < 0) return 0;
        for (int d = 0; d < 3; d++) {
            if (ia[d] < lo[d]) lo[d] = ia[d];
            if (ia[d] > hi[d]) hi[d] = ia[d];
        }
    }
    for (int d = 0; d < 3; d++)
        if (hi[d] <= -0.5 || lo[d] >= na[d] - 0.5) return 0;
    return 1;
}

/* Fills lut[0..255] with the class index of each label value of a map of
 * the given version. */
static void class_lut(const td_opts *o, int version, uint8_t lut[256])
{
    uint8_t v2cls[256] = {0};
    for (int c = 0; c < o->nclasses; c++) {
        int id = o->classes[c];
        if (id > 0 && id <= CTG_NUM_ORGANS) v2cls[id] = (uint8_t)(c + 1);
    }
    memset(lut, 0, 256);
    if (version == 1) {
        uint8_t map[CTG_NUM_ORGANS_V1 + 1];
        ctg_organs_v1_to_v2(map);
        for (int v = 1; v <= CTG_NUM_ORGANS_V1; v++) lut[v] = v2cls[map[v]];
    } else {
        for (int v = 1; v <= CTG_NUM_ORGANS; v++) lut[v] = v2cls[v];
    }
}

/* Groups the labelled voxels of c->lab by class (a counting sort). */
static int index_foreground(td_case *c)
{
    const uint8_t *l = c->lab->data;
    size_t nv = ctg_vol_count(c->lab);
    int K = c->nclasses;
    if (!(c->fg_start = calloc((size_t)K + 2, sizeof *c->fg_start))) return CTG_ENOMEM;
    size_t *cnt = c->fg_start;
    for (size_t v = 0; v < nv; v++)
        if (l[v] && l[v] <= K) cnt[l[v] + 1]++;
    /* cnt[c+1] held the count of class c; make fg_start[c] the start. */
    cnt[0] = cnt[1] = 0;
    for (int k = 1; k <= K; k++) cnt[k + 1] += cnt[k];
    size_t total = cnt[K + 1];
    if (total > 0 && !(c->fg = malloc(total * sizeof *c->fg))) return CTG_ENOMEM;
    size_t *pos = malloc(((size_t)K + 2) * sizeof *pos);
    if (!pos) return CTG_ENOMEM;
    memcpy(pos, cnt, ((size_t)K + 2) * sizeof *pos);
    for (size_t v = 0; v < nv; v++)
        if (l[v] && l[v] <= K) c->fg[pos[l[v]]++] = (uint32_t)v;
    free(pos);
    c->bytes += total * sizeof *c->fg + ((size_t)K + 2) * sizeof *c->fg_start;
    return 0;
}

/* Reads at most TD_MAX_REPORT bytes of a text file. */
static int read_report(const char *path, char **out, char *why, size_t n)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        int rc = ctg_errno(errno);
        snprintf(why, n, "report %s: %s", path, ctg_strerror(rc));
        return rc;
    }
    char *s = malloc(TD_MAX_REPORT + 1);
    if (!s) {
        fclose(f);
        snprintf(why, n, "out of memory");
        return CTG_ENOMEM;
    }
    size_t len = fread(s, 1, TD_MAX_REPORT, f);
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(s);
        snprintf(why, n, "report %s: read error", path);
        return CTG_EIO;
    }
    s[len] = 0;
    *out = s;
    return 0;
}

void td_case_clear(td_case *c)
{
    if (!c) return;
    ctg_vol_free(c->ct);
    ctg_vol_free(c->lab);
    for (int f = 0; f < c->nfindings; f++) free(c->findings[f].sentence);
    free(c->findings);
    free(c->report);
    free(c->fg);
    free(c->fg_start);
    memset(c, 0, sizeof *c);
}

/* Resamples a label or lesion map (nearest neighbour, background 0) to
 * spacing in place; on failure *v is left as it was. */
static int resample_nearest(ctg_vol **v, const double spacing[3])
{
    ctg_vol *tmp = NULL;
    int rc = ctg_vol_resample(*v, spacing, CTG_NEAREST, 0.0, &tmp);
    if (rc < 0) return rc;
    ctg_vol_free(*v);
    *v = tmp;
    return 0;
}

/* Reads e's lesion map (U8 lesion numbers) onto ct's grid, as the labels. */
static int load_lesions(const td_entry *e, const ctg_vol *ct, ctg_vol **out, char *why,
                        size_t n)
{
    ctg_vol *les = NULL, *tmp = NULL;
    char sub[512];
    int rc;
    *out = NULL;
    if ((rc = ctg_nifti_read(e->lesions, CTG_U8, &les, sub, sizeof sub)) < 0) {
        snprintf(why, n, "%s", sub);
        return rc;
    }
    if ((rc = ctg_vol_canonical(les)) < 0) {
        snprintf(why, n, "%s: %s", e->lesions, ctg_strerror(rc));
        ctg_vol_free(les);
        return rc;
    }
    if (!ctg_vol_same_grid(ct, les, 0.01)) {
        if (!grids_overlap(ct, les)) {
            snprintf(why, n, "%s does not overlap the CT", e->lesions);
            ctg_vol_free(les);
            return CTG_EREJECT;
        }
        if ((rc = ctg_vol_resample_to(les, ct, CTG_NEAREST, 0.0, &tmp)) < 0) {
            snprintf(why, n, "resampling onto the CT grid: %s", ctg_strerror(rc));
            ctg_vol_free(les);
            return rc;
        }
        ctg_vol_free(les);
        les = tmp;
    }
    memcpy(les->aff, ct->aff, sizeof les->aff);
    *out = les;
    return 0;
}

/* The bounding box of every lesion number 1..255 of les (box[0] > box[1]:
 * absent). */
static void lesion_boxes(const ctg_vol *les, int box[256][6])
{
    const uint8_t *p = les->data;
    size_t v = 0;
    for (int k = 0; k < les->nz; k++)
        for (int j = 0; j < les->ny; j++)
            for (int i = 0; i < les->nx; i++, v++) {
                int l = p[v];
                if (!l) continue;
                int *b = box[l];
                if (b[0] > b[1]) {
                    b[0] = b[1] = i, b[2] = b[3] = j, b[4] = b[5] = k;
                    continue;
                }
                if (i < b[0]) b[0] = i;
                if (i > b[1]) b[1] = i;
                if (j < b[2]) b[2] = j;
                if (j > b[3]) b[3] = j;
                if (k < b[4]) b[4] = k;
                if (k > b[5]) b[5] = k;
            }
}

int td_finding_in_window(const td_finding *f, const double win[6])
{
    if (!td_finding_located(f)) return 1;
    for (int a = 0; a < 3; a++)
        if (f->box[2 * a + 1] < win[2 * a] || f->box[2 * a] > win[2 * a + 1]) return 0;
    return 1;
}

int td_case_load(const td_manifest *m, int i, const td_opts *o, td_case *out, char *why,
                 size_t n)
{
    memset(out, 0, sizeof *out);
    if (!m || i < 0 || i >= m->n || !o || !o->classes || o->nclasses < 1 || o->nclasses > 255) {
        snprintf(why, n, "invalid arguments");
        return CTG_EINVAL;
    }
    const td_entry *e = &m->cases[i];
    int rc;
    char sub[1024];
    ctg_vol *ct = NULL, *lab = NULL, *tmp = NULL, *les = NULL;
    td_case *c = out;
    c->index = i;
    c->nclasses = o->nclasses;
    snprintf(c->id, sizeof c->id, "%s", e->id);

    if ((rc = load_ct(e->ct, &ct, why, n)) < 0) goto fail;
    {
        /* NaN or infinity would poison every loss they touch. */
        float *p = ct->data;
        size_t nv = ctg_vol_count(ct), bad = 0;
        for (size_t v = 0; v < nv; v++)
            if (!isfinite(p[v])) {
                p[v] = -1024.0f;
                bad++;
            }
        if (bad) log_warn("case %s: %zu non-finite CT value(s) set to -1024", e->id, bad);
    }

    if ((rc = ctg_nifti_read(e->labels, CTG_U8, &lab, sub, sizeof sub)) < 0) {
        snprintf(why, n, "labels: %s", sub);
        goto fail;
    }
    if ((rc = ctg_vol_canonical(lab)) < 0) {
        snprintf(why, n, "labels %s: %s", e->labels, ctg_strerror(rc));
        goto fail;
    }
    if (!ctg_vol_same_grid(ct, lab, 0.01)) {
        if (!grids_overlap(ct, lab)) {
            snprintf(why, n, "labels %s (%dx%dx%d) do not overlap the CT (%dx%dx%d)", e->labels,
                     lab->nx, lab->ny, lab->nz, ct->nx, ct->ny, ct->nz);
            rc = CTG_EREJECT;
            goto fail;
        }
        log_info("case %s: label map grid %dx%dx%d differs from the CT's %dx%dx%d; resampled "
                 "(nearest) onto the CT grid",
                 e->id, lab->nx, lab->ny, lab->nz, ct->nx, ct->ny, ct->nz);
        if ((rc = ctg_vol_resample_to(lab, ct, CTG_NEAREST, 0.0, &tmp)) < 0) {
            snprintf(why, n, "labels: resampling onto the CT grid: %s", ctg_strerror(rc));
            goto fail;
        }
        ctg_vol_free(lab);
        lab = tmp;
        tmp = NULL;
    }
    /* Within the tolerance the grids are one grid: share the CT's affine
     * exactly, so that resampling both below gives identical grids. */
    memcpy(lab->aff, ct->aff, sizeof lab->aff);

    /* Map label values to class indices before resampling: nearest
     * resampling then works on the values the model trains on. */
    int version = e->label_version ? e->label_version : o->label_version == 1 ? 1 : 2;
    uint8_t lut[256];
    class_lut(o, version, lut);
    {
        uint8_t *l = lab->data;
        size_t nv = ctg_vol_count(lab), unknown = 0;
        int maxid = version == 1 ? CTG_NUM_ORGANS_V1 : CTG_NUM_ORGANS;
        for (size_t v = 0; v < nv; v++) {
            if (l[v] > maxid) unknown++;
            l[v] = lut[l[v]];
        }
        if (unknown)
            log_warn("case %s: %zu voxel(s) with label values above %d (v%d) set to background",
                     e->id, unknown, maxid, version);
    }

    /* The lesion map, when a finding points into it: aligned as the labels
     * and resampled like them below, then reduced to one box per lesion. */
    int want_lesions = 0;
    for (int f = 0; f < e->nfindings; f++) want_lesions |= e->findings[f].lesion > 0;
    if (o->lesions && want_lesions && e->lesions) {
        if ((rc = load_lesions(e, ct, &les, sub, sizeof sub)) < 0) {
            /* A broken lesion map costs the localisation, not the case. */
            log_warn("case %s: lesion map not used: %s", e->id, sub);
            les = NULL;
        }
    }

    if (o->spacing[0] > 0) {
        if ((rc = ctg_vol_resample(ct, o->spacing, CTG_LINEAR, -1024.0, &tmp)) < 0) {
            snprintf(why, n, "ct: resampling to %.3gx%.3gx%.3g mm: %s", o->spacing[0],
                     o->spacing[1], o->spacing[2], ctg_strerror(rc));
            goto fail;
        }
        ctg_vol_free(ct);
        ct = tmp;
        if ((rc = resample_nearest(&lab, o->spacing)) < 0) {
            snprintf(why, n, "labels: resampling: %s", ctg_strerror(rc));
            goto fail;
        }
        if (les && (rc = resample_nearest(&les, o->spacing)) < 0) {
            snprintf(why, n, "lesions: resampling: %s", ctg_strerror(rc));
            goto fail;
        }
    }
    int boxes[256][6];
    for (int l = 0; l < 256; l++) boxes[l][0] = 0, boxes[l][1] = -1;
    if (les) {
        lesion_boxes(les, boxes);
        ctg_vol_free(les);
        les = NULL;
    }
    c->ct = ct;
    c->lab = lab;
    ct = lab = NULL;
    c->bytes = ctg_vol_count(c->ct) * sizeof(float) + ctg_vol_count(c->lab) + sizeof *c;

    /* Findings: organ name -> v2 id -> class index. */
    if (e->nfindings > 0 &&
        !(c->findings = calloc((size_t)e->nfindings, sizeof *c->findings))) {
        rc = CTG_ENOMEM;
        goto nomem;
    }
    uint8_t v2lut[256];
    class_lut(o, 2, v2lut);
    for (int f = 0; f < e->nfindings; f++) {
        const td_mfinding *mf = &e->findings[f];
        int id = ctg_organ_id(mf->organ);
        int cls = id > 0 && id < 256 ? v2lut[id] : 0;
        if (cls == 0) {
            c->dropped++;
            log_debug("case %s: finding on %s (%s) dropped: %s", e->id, mf->organ,
                      mf->abnormality, id < 0 ? "unknown organ" : "not a class of the model");
            continue;
        }
        td_finding *d = &c->findings[c->nfindings];
        snprintf(d->organ, sizeof d->organ, "%s", mf->organ);
        snprintf(d->abnormality, sizeof d->abnormality, "%s", mf->abnormality);
        d->organ_id = id;
        d->cls = cls;
        memcpy(d->box, boxes[mf->lesion > 0 && mf->lesion < 256 ? mf->lesion : 0], sizeof d->box);
        if (!(d->sentence = strdup(mf->sentence))) {
            rc = CTG_ENOMEM;
            goto nomem;
        }
        c->nfindings++;
        c->bytes += sizeof *d + strlen(d->sentence) + 1;
    }
    if (c->dropped)
        log_debug("case %s: %d finding(s) on organs outside the model dropped", e->id,
                  c->dropped);

    if ((rc = index_foreground(c)) < 0) goto nomem;
    if (o->load_report && e->report) {
        if ((rc = read_report(e->report, &c->report, why, n)) < 0) goto fail;
        c->bytes += strlen(c->report) + 1;
    }
    return 0;
nomem:
    snprintf(why, n, "out of memory");
fail:
    ctg_vol_free(ct);
    ctg_vol_free(lab);
    ctg_vol_free(tmp);
    ctg_vol_free(les);
    td_case_clear(c);
    return rc;
}

/* ---- cache ------------------------------------------------------------------- */

/* One slot per manifest case.  Loaded, unpinned cases sit on a doubly
 * linked LRU list (head: most recently used). */
typedef struct td_slot {
    td_case cs;
    int loaded;
    int pins;
    int failed_rc;   /* < 0: the load failed with this code */
    char *failed_why;
    int prev, next;  /* LRU links, -1 at the ends; valid when on the list */
    int on_list;
} td_slot;

struct td_cache {
    const td_manifest *m;
    const td_opts *o;
    size_t budget;
    td_slot *s;
    int head, tail;
    td_cache_stats st;
};

int td_cache_open(const td_manifest *m, const td_opts *opts, size_t budget, td_cache **out)
{
    *out = NULL;
    if (!m || !opts || m->n <= 0) return CTG_EINVAL;
    td_cache *c = calloc(1, sizeof *c);
    if (!c) return CTG_ENOMEM;
    if (!(c->s = calloc((size_t)m->n, sizeof *c->s))) {
        free(c);
        return CTG_ENOMEM;
    }
    c->m = m;
    c->o = opts;
    c->budget = budget;
    c->head = c->tail = -1;
    *out = c;
    return 0;
}

void td_cache_close(td_cache *c)
{
    if (!c) return;
    for (int i = 0; i < c->m->n; i++) {
        td_case_clear(&c->s[i].cs);
        free(c->s[i].failed_why);
    }
    free(c->s);
    free(c);
}

static void lru_unlink(td_cache *c, int i)
{
    td_slot *s = &c->s[i];
    if (!s->on_list) return;
    if (s->prev >= 0) c->s[s->prev].next = s->next;
    else c->head = s->next;
    if (s->next >= 0) c->s[s->next].prev = s->prev;
    else c->tail = s->prev;
    s->on_list = 0;
}

static void lru_push_front(td_cache *c, int i)
{
    td_slot *s = &c->s[i];
    s->prev = -1;
    s->next = c->head;
    if (c->head >= 0) c->s[c->head].prev = i;
    c->head = i;
    if (c->tail < 0) c->tail = i;
    s->on_list = 1;
}

/* Drops least recently used unpinned cases while over the budget.  Pinned
 * cases are never on the list, so a budget smaller than the cases in use
 * is exceeded rather than pulling data from under a caller. */
static void evict(td_cache *c)
{
    while (c->st.bytes > c->budget && c->tail >= 0) {
        int i = c->tail;
        lru_unlink(c, i);
        c->st.bytes -= c->s[i].cs.bytes;
        c->st.held--;
        c->st.evictions++;
        td_case_clear(&c->s[i].cs);
        c->s[i].loaded = 0;
    }
}

int td_cache_get(td_cache *c, int i, const td_case **out, char *why, size_t n)
{
    *out = NULL;
    if (i < 0 || i >= c->m->n) {
        snprintf(why, n, "case %d out of range", i);
        return CTG_EINVAL;
    }
    td_slot *s = &c->s[i];
    if (s->failed_rc < 0) {
        snprintf(why, n, "%s", s->failed_why ? s->failed_why : ctg_strerror(s->failed_rc));
        return s->failed_rc;
    }
    if (s->loaded) {
        c->st.hits++;
        lru_unlink(c, i);
    } else {
        c->st.loads++;
        int rc = td_case_load(c->m, i, c->o, &s->cs, why, n);
        if (rc < 0) {
            /* Out of memory may pass; anything else is the case's fault and
             * would fail the same way every epoch. */
            if (rc != CTG_ENOMEM) {
                s->failed_rc = rc;
                s->failed_why = strdup(why);
                c->st.failed++;
            }
            return rc;
        }
        s->loaded = 1;
        c->st.bytes += s->cs.bytes;
        c->st.held++;
    }
    s->pins++;
    evict(c);
    *out = &s->cs;
    return 0;
}

void td_cache_put(td_cache *c, const td_case *cs)
{
    if (!c || !cs) return;
    int i = cs->index;
    if (i < 0 || i >= c->m->n || &c->s[i].cs != cs || c->s[i].pins <= 0) return;
    td_slot *s = &c->s[i];
    if (--s->pins == 0) {
        lru_push_front(c, i);
        evict(c);
    }
}

void td_cache_stats_get(const td_cache *c, td_cache_stats *st)
{
    *st = c->st;
}

/* ---- random numbers ------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void td_rng_seed(td_rng *r, uint64_t seed, uint64_t stream)
{
    uint64_t x = seed ^ (stream * 0xd1342543de82ef95ull + 0x2545f4914f6cdd1dull);
    for (int k = 0; k < 4; k++) r->s[k] = splitmix64(&x);
    if (!(r->s[0] | r->s[1] | r->s[2] | r->s[3])) r->s[0] = 1;
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t td_rng_next(td_rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

double td_rng_unif(td_rng *r)
{
    return (double)(td_rng_next(r) >> 11) * 0x1.0p-53;
}

double td_rng_gauss(td_rng *r)
{
    /* Box-Muller; one of the pair is discarded so that the state is the
     * only state (nothing cached between calls). */
    double u = 1.0 - td_rng_unif(r), v = td_rng_unif(r);
    return sqrt(-2.0 * log(u)) * cos(2.0 * M_PI * v);
}

int td_rng_int(td_rng *r, int n)
{
    return n <= 1 ? 0 : (int)((td_rng_next(r) >> 33) % (uint64_t)n);
}

/* Approximately N(0, 1) from one draw: the sum of four 16-bit uniforms
 * (Irwin-Hall), standardised.  Its tails stop at +-3.5 sd, which is fine
 * for image noise and five times cheaper than Box-Muller per voxel. */
static inline float fast_gauss(td_rng *r)
{
    uint64_t x = td_rng_next(r);
    uint32_t sum = (uint32_t)(x & 0xffff) + (uint32_t)(x >> 16 & 0xffff) +
                   (uint32_t)(x >> 32 & 0xffff) + (uint32_t)(x >> 48);
    /* Mean 4 * 32767.5; sd sqrt(4 * (65536^2 - 1) / 12). */
    return ((float)sum - 131070.0f) * (1.0f / 37837.23f);
}

static double unif_range(td_rng *r, double lo, double hi)
{
    return lo + (hi - lo) * td_rng_unif(r);
}

/* ---- patches -------------------------------------------------------------------- */

/* Per output position along one axis: the two source indices and weight
 * for trilinear sampling, the nearest index, and whether it lies inside
 * the volume (within half a voxel of the outermost centres). */
typedef struct axis_tab {
    int i0, i1, inear;
    float w;
    int inside;
} axis_tab;

static void make_axis(axis_tab *t, int p, int nsrc, double centre, double s)
{
    double half = 0.5 * (p - 1);
    for (int x = 0; x < p; x++) {
        double u = centre + (x - half) * s;
        axis_tab *a = &t[x];
        a->inside = u > -0.5 - 1e-9 && u < nsrc - 0.5 + 1e-9;
        double uc = u < 0 ? 0 : u > nsrc - 1 ? nsrc - 1 : u;
        int f = (int)floor(uc);
        if (f > nsrc - 1) f = nsrc - 1;
        a->i0 = f;
        a->i1 = f + 1 < nsrc ? f + 1 : f;
        a->w = (float)(uc - f);
        int r = (int)floor(u + 0.5);
        a->inear = r < 0 ? 0 : r > nsrc - 1 ? nsrc - 1 : r;
    }
}

/* The crop centre along one axis, as a voxel coordinate.  Chosen so that
 * the unscaled patch starts on a whole voxel and plain crops are exact
 * copies. */
static double pick_centre(td_rng *r, int p, int nsrc, int fg_voxel)
{
    double half = 0.5 * (p - 1);
    int start;
    if (fg_voxel >= 0) {
        /* The voxel lands anywhere in the middle half of the patch. */
        int q = p / 4;
        start = fg_voxel - p / 2 + (q > 0 ? td_rng_int(r, 2 * q + 1) - q : 0);
        /* Keep the patch inside the volume, or the volume inside the patch
         * when it is the smaller: padding teaches nothing.  The voxel stays
         * in the patch either way. */
        int lo = nsrc >= p ? 0 : nsrc - p, hi = nsrc >= p ? nsrc - p : 0;
        start = start < lo ? lo : start > hi ? hi : start;
    } else if (nsrc >= p) {
        start = td_rng_int(r, nsrc - p + 1);
    } else {
        /* A volume smaller than the patch sits somewhere inside it. */
        start = -td_rng_int(r, p - nsrc + 1);
    }
    return start + half;
}

int td_sample_patch(const td_case *c, const td_opts *o, td_rng *rng, float *img, uint8_t *lab,
                    int pd, int ph, int pw)
{
    if (!o) return CTG_EINVAL;
    td_opts plain = *o;
    plain.lesion_fraction = 0.0;
    return td_sample_patch_win(c, &plain, rng, img, lab, pd, ph, pw, NULL);
}

int td_sample_patch_win(const td_case *c, const td_opts *o, td_rng *rng, float *img,
                        uint8_t *lab, int pd, int ph, int pw, double win[6])
{
    if (!c || !c->ct || !c->lab || !o || !rng || !img || !lab || pd <= 0 || ph <= 0 || pw <= 0 ||
        (size_t)pd * ph * pw > ((size_t)1 << 30))
        return CTG_EINVAL;
    const ctg_vol *v = c->ct;
    const int nx = v->nx, ny = v->ny, nz = v->nz;
    const float *src = v->data;
    const uint8_t *lsrc = c->lab->data;

    /* Every draw happens in a fixed order whatever the options, so that a
     * change of one option does not reshuffle the others' randomness. */
    int fg_voxel[3] = {-1, -1, -1};
    double want_fg = td_rng_unif(rng);
    int cls_pick = (int)(td_rng_next(rng) >> 33);
    uint64_t vox_pick = td_rng_next(rng);
    int located[TD_MAX_FINDINGS], nloc = 0;
    for (int f = 0; f < c->nfindings && nloc < TD_MAX_FINDINGS; f++)
        if (td_finding_located(&c->findings[f])) located[nloc++] = f;
    if (nloc > 0 && want_fg < o->lesion_fraction) {
        /* A voxel of a located finding's box (the box of a small lesion
         * is mostly lesion). */
        const int *b = c->findings[located[cls_pick % nloc]].box;
        uint64_t q = vox_pick;
        for (int a = 0; a < 3; a++) {
            int w = b[2 * a + 1] - b[2 * a] + 1;
            fg_voxel[a] = b[2 * a] + (int)(q % (uint64_t)w);
            q /= (uint64_t)w;
        }
    } else if (c->fg_start && want_fg < o->fg_fraction) {
        int present[256], np = 0;
        for (int k = 1; k <= c->nclasses; k++)
            if (c->fg_start[k + 1] > c->fg_start[k]) present[np++] = k;
        if (np > 0) {
            int k = present[cls_pick % np];
            size_t cnt = c->fg_start[k + 1] - c->fg_start[k];
            uint32_t vi = c->fg[c->fg_start[k] + (size_t)(vox_pick % cnt)];
            fg_voxel[0] = (int)(vi % (uint32_t)nx);
            fg_voxel[1] = (int)(vi / (uint32_t)nx % (uint32_t)ny);
            fg_voxel[2] = (int)(vi / ((uint32_t)nx * (uint32_t)ny));
        }
    }
    double cx = pick_centre(rng, pw, nx, fg_voxel[0]);
    double cy = pick_centre(rng, ph, ny, fg_voxel[1]);
    double cz = pick_centre(rng, pd, nz, fg_voxel[2]);
    double s = unif_range(rng, -1, 1), a = unif_range(rng, -1, 1), b = unif_range(rng, -1, 1);
    double sd = td_rng_unif(rng);
    if (o->augment) {
        s = 1.0 + o->scale * s;
        a = 1.0 + o->hu_scale * a;
        b = o->hu_shift * b;
        sd = o->noise_sd * sd;
    } else {
        s = 1.0;
        a = 1.0;
        b = 0.0;
        sd = 0.0;
    }

    axis_tab *tab = malloc(((size_t)pw + ph + pd) * sizeof *tab);
    if (!tab) return CTG_ENOMEM;
    axis_tab *tx = tab, *ty = tab + pw, *tz = tab + pw + ph;
    make_axis(tx, pw, nx, cx, s);
    make_axis(ty, ph, ny, cy, s);
    make_axis(tz, pd, nz, cz, s);
    if (win) {
        win[0] = cx - s * 0.5 * (pw - 1), win[1] = cx + s * 0.5 * (pw - 1);
        win[2] = cy - s * 0.5 * (ph - 1), win[3] = cy + s * 0.5 * (ph - 1);
        win[4] = cz - s * 0.5 * (pd - 1), win[5] = cz + s * 0.5 * (pd - 1);
    }

    const size_t sxy = (size_t)nx * ny;
    for (int z = 0; z < pd; z++) {
        const axis_tab *az = &tz[z];
        for (int y = 0; y < ph; y++) {
            const axis_tab *ay = &ty[y];
            float *orow = img + ((size_t)z * ph + y) * pw;
            uint8_t *lrow = lab + ((size_t)z * ph + y) * pw;
            if (!az->inside || !ay->inside) {
                for (int x = 0; x < pw; x++) orow[x] = -1024.0f;
                memset(lrow, 0, (size_t)pw);
                continue;
            }
            const float *r00 = src + az->i0 * sxy + (size_t)ay->i0 * nx;
            const float *r01 = src + az->i0 * sxy + (size_t)ay->i1 * nx;
            const float *r10 = src + az->i1 * sxy + (size_t)ay->i0 * nx;
            const float *r11 = src + az->i1 * sxy + (size_t)ay->i1 * nx;
            const uint8_t *ln = lsrc + az->inear * sxy + (size_t)ay->inear * nx;
            const float wy = ay->w, wz = az->w;
            for (int x = 0; x < pw; x++) {
                const axis_tab *ax = &tx[x];
                if (!ax->inside) {
                    orow[x] = -1024.0f;
                    lrow[x] = 0;
                    continue;
                }
                const float wx = ax->w;
                float v00 = r00[ax->i0] + wx * (r00[ax->i1] - r00[ax->i0]);
                float v01 = r01[ax->i0] + wx * (r01[ax->i1] - r01[ax->i0]);
                float v10 = r10[ax->i0] + wx * (r10[ax->i1] - r10[ax->i0]);
                float v11 = r11[ax->i0] + wx * (r11[ax->i1] - r11[ax->i0]);
                float v0 = v00 + wy * (v01 - v00), v1 = v10 + wy * (v11 - v10);
                orow[x] = v0 + wz * (v1 - v0);
                lrow[x] = ln[ax->inear];
            }
        }
    }

    /* Intensity changes only inside the scan: padding stays exactly the
     * -1024 HU that marks "outside". */
    if (a != 1.0 || b != 0.0 || sd > 0.0) {
        const float fa = (float)a, fb = (float)b, fsd = (float)sd;
        for (int z = 0; z < pd; z++) {
            if (!tz[z].inside) continue;
            for (int y = 0; y < ph; y++) {
                if (!ty[y].inside) continue;
                float *orow = img + ((size_t)z * ph + y) * pw;
                for (int x = 0; x < pw; x++) {
                    if (!tx[x].inside) continue;
                    float nval = sd > 0.0 ? fsd * fast_gauss(rng) : 0.0f;
                    orow[x] = orow[x] * fa + fb + nval;
                }
            }
        }
    }
    free(tab);
    return 0;
}
