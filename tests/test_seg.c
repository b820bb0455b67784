/*
 * test_seg.c - DICOM SEG writer (dicom/seg.cc).
 *
 * Phantom studies (axial head-first and feet-first, prone Enhanced CT, and
 * sagittal and coronal series made from a phantom's volume) are read with
 * dcm_series_volume, their label maps written as SEG, and the SEG read back
 * with DCMTK's dcm2json, a reader that shares nothing with the writer: the
 * identity of patient, study and frame of reference, the segments and
 * their codes, and every frame's pixels, mapped through its own Image
 * Position and Orientation back onto the label map, must agree, and each
 * frame must reference the source image whose plane it lies in.  dciodvfy
 * (dicom3tools) then checks the object against the IOD.
 *
 * Each test runs in its own process in a scratch folder.
 */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "core/organs.h"
#include "core/vol.h"
#include "dicom/dicom.h"
#include "tests.h"

#define SEG_SOP_CLASS "1.2.840.10008.5.1.4.1.1.66.4"
#define MAX_FILES 1024
#define MAX_SEGS 128

/* ---- reading DICOM back through dcm2json ------------------------------------ */

/* The data set of a DICOM file as DICOM JSON (PS3.18 F), or NULL. */
static cJSON *dcm_json(const char *path)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "dcm2json -q '%s' dump.json", path);
    if (system(cmd) != 0) {
        fprintf(stderr, "dcm2json failed on %s\n", path);
        return NULL;
    }
    char *s = tu_slurp("dump.json", NULL);
    cJSON *j = s ? cJSON_Parse(s) : NULL;
    free(s);
    unlink("dump.json");
    return j;
}

/* The Value array of a tag ("00080016"), or NULL. */
static cJSON *values(const cJSON *ds, const char *tag)
{
    cJSON *e = ds ? cJSON_GetObjectItemCaseSensitive(ds, tag) : NULL;
    return e ? cJSON_GetObjectItemCaseSensitive(e, "Value") : NULL;
}

static int nvalues(const cJSON *ds, const char *tag)
{
    cJSON *v = values(ds, tag);
    return v ? cJSON_GetArraySize(v) : 0;
}

/* Value idx as a string ("" when absent; PN gives its alphabetic group). */
static const char *str_at(const cJSON *ds, const char *tag, int idx)
{
    cJSON *v = cJSON_GetArrayItem(values(ds, tag), idx);
    if (cJSON_IsString(v)) return v->valuestring;
    if (cJSON_IsObject(v)) {
        cJSON *a = cJSON_GetObjectItemCaseSensitive(v, "Alphabetic");
        if (cJSON_IsString(a)) return a->valuestring;
    }
    return "";
}

static const char *str(const cJSON *ds, const char *tag) { return str_at(ds, tag, 0); }

/* Value idx as a number (DS and IS come as numbers or as strings). */
static double num_at(const cJSON *ds, const char *tag, int idx)
{
    cJSON *v = cJSON_GetArrayItem(values(ds, tag), idx);
    if (cJSON_IsNumber(v)) return v->valuedouble;
    if (cJSON_IsString(v)) return atof(v->valuestring);
    return NAN;
}

/* Item idx of a sequence, or NULL. */
static cJSON *item(const cJSON *ds, const char *tag, int idx)
{
    return cJSON_GetArrayItem(values(ds, tag), idx);
}

/* InlineBinary of a tag, decoded; *len gets its size. */
static unsigned char *binary(const cJSON *ds, const char *tag, size_t *len)
{
    cJSON *e = cJSON_GetObjectItemCaseSensitive(ds, tag);
    cJSON *b = e ? cJSON_GetObjectItemCaseSensitive(e, "InlineBinary") : NULL;
    if (!cJSON_IsString(b)) return NULL;
    const char *s = b->valuestring;
    size_t n = strlen(s);
    unsigned char *out = malloc(n / 4 * 3 + 3);
    if (!out) return NULL;
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        int v = ch >= 'A' && ch <= 'Z' ? ch - 'A'
              : ch >= 'a' && ch <= 'z' ? ch - 'a' + 26
              : ch >= '0' && ch <= '9' ? ch - '0' + 52
              : ch == '+' ? 62 : ch == '/' ? 63 : -1;
        if (v < 0) continue; /* padding, line breaks */
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    *len = o;
    return out;
}

/* ---- studies ----------------------------------------------------------------- */

typedef struct series {
    char *files[MAX_FILES];
    int nfiles;
    ctg_vol *vol;
    dcm_vol_info info;
} series;

static void series_free(series *s)
{
    for (int i = 0; i < s->nfiles; i++) free(s->files[i]);
    ctg_vol_free(s->vol);
    dcm_vol_info_free(&s->info);
    memset(s, 0, sizeof *s);
}

/* Every file of a folder into s, then dcm_series_volume on them. */
static int load_series(const char *dir, const dcm_vol_opts *opts, series *s)
{
    memset(s, 0, sizeof *s);
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "cannot open %s\n", dir);
        return -1;
    }
    struct dirent *e;
    while ((e = readdir(d)) && s->nfiles < MAX_FILES) {
        if (e->d_name[0] == '.') continue;
        char p[2048];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        s->files[s->nfiles++] = strdup(p);
    }
    closedir(d);
    char why[1024] = "";
    dcm_global_init();
    dcm_quiet();
    int rc = dcm_series_volume((const char *const *)s->files, (size_t)s->nfiles, opts, &s->vol,
                               &s->info, why, sizeof why);
    if (rc < 0) fprintf(stderr, "%s: %s\n", dir, why);
    return rc;
}

/* The phantom's label map on the grid of vol (nearest neighbour when the
 * grids differ), with vol's affine, or NULL. */
static ctg_vol *labels_on_grid(const char *nii, const ctg_vol *vol)
{
    ctg_vol *lab = NULL, *res = NULL;
    char why[512];
    if (ctg_nifti_read(nii, CTG_U8, &lab, why, sizeof why) < 0) {
        fprintf(stderr, "%s: %s\n", nii, why);
        return NULL;
    }
    if (ctg_vol_canonical(lab) < 0) return lab;
    if (ctg_vol_same_grid(lab, vol, 1e-3)) {
        /* The file keeps its affine in float32; the label map a worker
         * hands over is on the volume's own grid. */
        memcpy(lab->aff, vol->aff, sizeof lab->aff);
        return lab;
    }
    printf("label map resampled onto the volume grid\n");
    int rc = ctg_vol_resample_to(lab, vol, CTG_NEAREST, 0, &res);
    ctg_vol_free(lab);
    return rc < 0 ? NULL : res;
}

static int phantom(const char *out, const char *matrix, const char *position, int enhanced)
{
    return tu_phantom("--seed", "7", "--count", "1", "--matrix", matrix, "--thickness", "6",
                      "--fov", "abdomen", "--abnormal-rate", "0", "--position", position,
                      enhanced ? "--enhanced" : "--nifti", "--out", out, NULL);
}

/* One segment per organ present in lab (at most max), ids ascending:
 * name, SNOMED codes and colour from the organ table, tracking ID and UID. */
static int organ_segments(const ctg_vol *lab, dcm_seg_segment *segs, int max)
{
    static char uids[MAX_SEGS][65];
    size_t count[256] = {0}, n = ctg_vol_count(lab);
    const uint8_t *d = lab->data;
    for (size_t i = 0; i < n; i++) count[d[i]]++;
    int ns = 0;
    for (int id = 1; id <= CTG_NUM_ORGANS && ns < max && ns < MAX_SEGS; id++) {
        const ctg_organ *o = ctg_organ_get(id);
        if (!count[id] || !o) continue;
        dcm_seg_segment *s = &segs[ns];
        memset(s, 0, sizeof *s);
        s->label = id;
        s->label_name = o->name;
        s->category = (dcm_code){o->category_code, "SCT", o->category_meaning};
        s->type = (dcm_code){o->type_code, "SCT", o->type_meaning};
        if (o->modifier_code[0]) s->type_modifier = (dcm_code){o->modifier_code, "SCT", o->modifier_meaning};
        memcpy(s->rgb, o->rgb, 3);
        snprintf(uids[ns], sizeof uids[ns], "2.25.4242%03d", id);
        s->tracking_id = o->name;
        s->tracking_uid = uids[ns];
        ns++;
    }
    return ns;
}

static const dcm_equipment test_eq = {
    .manufacturer = "ctglip",
    .software_version = "0.1.0",
    .model_name = "ctglip CT-GLIP test",
    .model_version = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    .device_uid = "2.25.212047248112658246449511647784264716309",
    .institution = "Test Hospital",
    .creation_date = "20240102",
    .creation_time = "030405",
};

static int write_seg(const series *s, const ctg_vol *lab, const dcm_seg_segment *segs, int nseg,
                     const char *path, char sop[65])
{
    dcm_source src = {(const char *const *)s->files, s->nfiles, &s->info};
    dcm_seg_input in = {
        .src = &src,
        .labels = lab,
        .nsegments = nseg,
        .segments = segs,
        .eq = &test_eq,
        .series_uid = NULL,
        .series_number = 300,
        .series_desc = NULL,
    };
    char why[1024] = "";
    double t0 = ctg_mono();
    int rc = dcm_write_seg(&in, path, sop, why, sizeof why);
    if (rc < 0) fprintf(stderr, "dcm_write_seg: %s (%s)\n", why, ctg_strerror(rc));
    else printf("%s: %d segments written in %.2f s\n", path, nseg, ctg_mono() - t0);
    return rc;
}

/* ---- checking a SEG ------------------------------------------------------------ */

/* Where a source image (or one frame of an Enhanced CT image) lies. */
typedef struct src_plane {
    char sop[65];
    int frame; /* 0: a single-frame image */
    double pos[3], normal[3];
} src_plane;

static void cross(const double *a, const double *b, double *o)
{
    o[0] = a[1] * b[2] - a[2] * b[1];
    o[1] = a[2] * b[0] - a[0] * b[2];
    o[2] = a[0] * b[1] - a[1] * b[0];
}

/* The planes of the source images, read independently of
 * dcm_series_volume: headers for single-frame images, the per-frame
 * positions of an Enhanced CT object through dcm2json.  Returns the count. */
static int source_planes(const series *s, src_plane *out, int cap)
{
    int n = 0;
    for (int f = 0; f < s->nfiles; f++) {
        ctg_instance inst;
        char why[256];
        if (dcm_read_instance(s->files[f], &inst, why, sizeof why) < 0) continue;
        if (inst.frames <= 1) {
            if (n >= cap || !inst.has_position || !inst.has_orientation) continue;
            snprintf(out[n].sop, sizeof out[n].sop, "%s", inst.sop_uid);
            out[n].frame = 0;
            memcpy(out[n].pos, inst.position, sizeof out[n].pos);
            cross(inst.orientation, inst.orientation + 3, out[n].normal);
            n++;
            continue;
        }
        cJSON *j = dcm_json(s->files[f]);
        cJSON *sh = item(j, "52009229", 0);
        cJSON *po = item(sh, "00209116", 0);
        double iop[6];
        for (int q = 0; q < 6; q++) iop[q] = num_at(po, "00200037", q);
        int nf = nvalues(j, "52009230");
        for (int fr = 0; fr < nf && n < cap; fr++) {
            cJSON *pp = item(item(j, "52009230", fr), "00209113", 0);
            snprintf(out[n].sop, sizeof out[n].sop, "%s", inst.sop_uid);
            out[n].frame = fr + 1;
            for (int q = 0; q < 3; q++) out[n].pos[q] = num_at(pp, "00200032", q);
            cross(iop, iop + 3, out[n].normal);
            n++;
        }
        cJSON_Delete(j);
    }
    return n;
}

/* Frames of the last SEG checked that have no source image. */
static int last_unreferenced;

/* The checks of (a) on the SEG at path, made from series s and label map
 * lab (on the grid of s->vol) with segments segs. */
static int check_seg(const char *path, const series *s, const ctg_vol *lab,
                     const dcm_seg_segment *segs, int nseg, const char *sop_uid)
{
    const dcm_vol_info *info = &s->info;
    cJSON *j = dcm_json(path);
    CHECK(j != NULL);
    CHECK(!strcmp(str(j, "00080016"), SEG_SOP_CLASS));
    CHECK(!strcmp(str(j, "00080018"), sop_uid));
    CHECK(!strcmp(str(j, "00080060"), "SEG"));

    /* Patient, study and frame of reference of the source. */
    ctg_instance src;
    char why[256];
    CHECK_EQ_INT(dcm_read_instance(s->files[0], &src, why, sizeof why), 0);
    CHECK(src.patient_id[0] != 0);
    CHECK(!strcmp(str(j, "00100020"), src.patient_id));
    CHECK(!strcmp(str(j, "00100010"), src.patient_name));
    CHECK(!strcmp(str(j, "0020000D"), src.study_uid));
    CHECK(!strcmp(str(j, "00200052"), src.frame_of_ref_uid));
    CHECK(!strcmp(str(j, "00200052"), info->frame_of_ref_uid));
    CHECK(strcmp(str(j, "0020000E"), src.series_uid) != 0);
    CHECK_EQ_INT(num_at(j, "00200011", 0), 300);

    /* Equipment: ours, not the scanner's; the model in Contributing
     * Equipment. */
    CHECK(!strcmp(str(j, "00080070"), test_eq.manufacturer));
    CHECK(!strcmp(str(j, "00181020"), test_eq.software_version));
    CHECK(!strcmp(str(j, "00181002"), test_eq.device_uid));
    cJSON *ce = item(j, "0018A001", 0);
    CHECK(!strcmp(str(ce, "00181002"), test_eq.device_uid));
    CHECK(!strcmp(str(ce, "00081090"), test_eq.model_name));
    CHECK(!strcmp(str(j, "00080012"), test_eq.creation_date));
    CHECK(!strcmp(str(j, "00080023"), test_eq.creation_date));
    CHECK(!strcmp(str(j, "00700080"), "CTGLIP_ORGANS"));

    /* Referenced Series: the source series and every source instance. */
    cJSON *rs = item(j, "00081115", 0);
    CHECK(!strcmp(str(rs, "0020000E"), info->series_uid));
    int distinct = 0;
    for (int q = 0; q < info->nslices; q++)
        if (info->slice_sop[q][0] && (q == 0 || strcmp(info->slice_sop[q], info->slice_sop[q - 1])))
            distinct++;
    CHECK_EQ_INT(nvalues(rs, "0008114A"), distinct);

    /* Segments. */
    CHECK_EQ_INT(nvalues(j, "00620002"), nseg);
    for (int i = 0; i < nseg; i++) {
        cJSON *sg = item(j, "00620002", i);
        CHECK_EQ_INT(num_at(sg, "00620004", 0), i + 1);
        CHECK(!strcmp(str(sg, "00620005"), segs[i].label_name));
        CHECK(!strcmp(str(sg, "00620008"), "AUTOMATIC"));
        CHECK(!strcmp(str(sg, "00620009"), test_eq.model_name));
        cJSON *ty = item(sg, "0062000F", 0);
        CHECK(!strcmp(str(ty, "00080100"), segs[i].type.value));
        CHECK(!strcmp(str(item(sg, "00620003", 0), "00080100"), segs[i].category.value));
        if (segs[i].type_modifier.value)
            CHECK(!strcmp(str(item(ty, "00620011", 0), "00080100"), segs[i].type_modifier.value));
        CHECK(!strcmp(str(sg, "00620020"), segs[i].tracking_id));
        CHECK(!strcmp(str(sg, "00620021"), segs[i].tracking_uid));
        CHECK_EQ_INT(nvalues(sg, "0062000D"), 3);
        CHECK(!strcmp(str(item(item(sg, "00620007", 0), "0066002F", 0), "00080100"), "123110"));
    }

    /* Geometry of the frames, as the SEG states it. */
    int rows = (int)num_at(j, "00280010", 0), cols = (int)num_at(j, "00280011", 0);
    int nframes = (int)num_at(j, "00280008", 0);
    cJSON *sh = item(j, "52009229", 0);
    double iop[6], ps[2];
    for (int q = 0; q < 6; q++) iop[q] = num_at(item(sh, "00209116", 0), "00200037", q);
    for (int q = 0; q < 2; q++) ps[q] = num_at(item(sh, "00289110", 0), "00280030", q);
    double fnormal[3];
    cross(iop, iop + 3, fnormal);
    printf("SEG: %d segments, %d frames of %d x %d, orientation %.3g %.3g %.3g / %.3g %.3g %.3g, "
           "spacing %.4g %.4g\n", nseg, nframes, rows, cols, iop[0], iop[1], iop[2], iop[3], iop[4],
           iop[5], ps[0], ps[1]);
    CHECK_EQ_INT(nvalues(j, "52009230"), nframes);
    size_t nbytes = 0;
    unsigned char *bits = binary(j, "7FE00010", &nbytes);
    CHECK(bits != NULL);
    CHECK(nbytes >= ((size_t)rows * cols * nframes + 7) / 8);

    /* Expected: voxels per label and (label, slice) pairs with voxels. */
    int a = info->slice_axis, dims[3] = {lab->nx, lab->ny, lab->nz};
    size_t want[256] = {0}, got[256] = {0};
    char *pairs = calloc((size_t)256 * dims[a], 1);
    const uint8_t *ld = lab->data;
    for (int k = 0; k < lab->nz; k++)
        for (int jj = 0; jj < lab->ny; jj++)
            for (int i = 0; i < lab->nx; i++) {
                uint8_t L = ld[i + (size_t)lab->nx * (jj + (size_t)lab->ny * k)];
                int sl = a == 0 ? i : a == 1 ? jj : k;
                want[L]++;
                pairs[(size_t)L * dims[a] + sl] = 1;
            }
    int npairs = 0;
    for (int i = 0; i < nseg; i++)
        for (int q = 0; q < dims[a]; q++) npairs += pairs[(size_t)segs[i].label * dims[a] + q];
    CHECK_EQ_INT(nframes, npairs);

    static src_plane planes[MAX_FILES * 2];
    int nplanes = source_planes(s, planes, MAX_FILES * 2);
    CHECK(nplanes >= 1);

    int prev_seg = 0, prev_slice = -1, unreferenced = 0;
    for (int f = 0; f < nframes; f++) {
        cJSON *pf = item(j, "52009230", f);
        int segno = (int)num_at(item(pf, "0062000A", 0), "0062000B", 0);
        CHECK(segno >= 1 && segno <= nseg);
        int L = segs[segno - 1].label;
        double ipp[3], ijk[3];
        for (int q = 0; q < 3; q++) ipp[q] = num_at(item(pf, "00209113", 0), "00200032", q);
        CHECK_EQ_INT(ctg_vol_index(lab, ipp, ijk), 0);
        int sl = (int)lround(ijk[a]);
        CHECK(fabs(ijk[a] - sl) < 1e-3 && sl >= 0 && sl < dims[a]);
        /* Per segment, then by position. */
        CHECK(segno > prev_seg || (segno == prev_seg && sl > prev_slice));
        prev_seg = segno;
        prev_slice = sl;
        /* Dimension index values: segment, then position. */
        CHECK_EQ_INT(num_at(item(pf, "00209111", 0), "00209157", 0), segno);

        /* Every pixel, through the frame's own geometry. */
        size_t base = (size_t)f * rows * cols;
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) {
                size_t bit = base + (size_t)r * cols + c;
                int on = (bits[bit / 8] >> (bit % 8)) & 1;
                double w[3], v[3];
                for (int q = 0; q < 3; q++) w[q] = ipp[q] + c * ps[1] * iop[q] + r * ps[0] * iop[3 + q];
                ctg_vol_index(lab, w, v);
                int vi = (int)lround(v[0]), vj = (int)lround(v[1]), vk = (int)lround(v[2]);
                if (vi < 0 || vj < 0 || vk < 0 || vi >= lab->nx || vj >= lab->ny || vk >= lab->nz) {
                    CHECK(!on);
                    continue;
                }
                int is = (int)ctg_vol_get(lab, vi, vj, vk) == L;
                if (on != is) {
                    fprintf(stderr, "frame %d (segment %d, slice %d) pixel %d,%d: SEG %d, label map "
                            "%d\n", f + 1, segno, sl, r, c, on, is);
                    return 1;
                }
                got[L] += (size_t)on;
            }

        /* The source image the frame was derived from lies in its plane. */
        cJSON *di = item(item(pf, "00089124", 0), "00082112", 0);
        if (!info->slice_sop[sl][0]) {
            CHECK(di == NULL);
            unreferenced++;
            continue;
        }
        CHECK(di != NULL);
        const char *ref = str(di, "00081155");
        int ref_frame = nvalues(di, "00081160") ? (int)num_at(di, "00081160", 0) : 0;
        CHECK(!strcmp(str(di, "00081150"), info->sop_class));
        CHECK(!strcmp(ref, info->slice_sop[sl]));
        CHECK_EQ_INT(ref_frame, info->enhanced ? info->slice_frame[sl] : 0);
        int found = 0;
        for (int q = 0; q < nplanes; q++) {
            if (strcmp(planes[q].sop, ref) != 0 || planes[q].frame != ref_frame) continue;
            double dd = 0, cosn = 0;
            for (int t = 0; t < 3; t++) {
                dd += (ipp[t] - planes[q].pos[t]) * planes[q].normal[t];
                cosn += fnormal[t] * planes[q].normal[t];
            }
            if (fabs(dd) > 0.01 || fabs(fabs(cosn) - 1) > 1e-4) {
                fprintf(stderr, "frame %d references %s frame %d, %.3f mm off its plane (cos %.5f)\n",
                        f + 1, ref, ref_frame, dd, cosn);
                return 1;
            }
            found = 1;
        }
        CHECK(found);
    }
    for (int i = 0; i < nseg; i++) {
        if (got[segs[i].label] != want[segs[i].label]) {
            fprintf(stderr, "segment %d (%s): %zu voxels in the SEG, %zu in the label map\n", i + 1,
                    segs[i].label_name, got[segs[i].label], want[segs[i].label]);
            return 1;
        }
    }
    printf("all %d frames match the label map; %d without a source slice\n", nframes, unreferenced);
    last_unreferenced = unreferenced;
    free(pairs);
    free(bits);
    cJSON_Delete(j);
    return 0;
}

/* (b) dciodvfy finds no error; warnings are shown. */
static int run_dciodvfy(const char *path)
{
    if (access("/usr/bin/dciodvfy", X_OK) != 0) {
        fprintf(stderr, "dciodvfy not found: install dicom3tools (scripts/deps.sh)\n");
        return 1;
    }
    char cmd[2048], line[4096];
    snprintf(cmd, sizeof cmd, "/usr/bin/dciodvfy '%s' 2>&1", path);
    FILE *p = popen(cmd, "r");
    CHECK(p != NULL);
    int errors = 0, warnings = 0;
    while (fgets(line, sizeof line, p)) {
        if (!strncmp(line, "Error", 5)) {
            errors++;
            fprintf(stderr, "dciodvfy: %s", line);
        } else if (!strncmp(line, "Warning", 7)) {
            warnings++;
            printf("dciodvfy: %s", line);
        }
    }
    pclose(p);
    printf("dciodvfy %s: %d errors, %d warnings\n", path, errors, warnings);
    CHECK_EQ_INT(errors, 0);
    return 0;
}

/* No temp file stays behind in the folder of a written file. */
static int no_temp_files(const char *dir)
{
    DIR *d = opendir(dir);
    CHECK(d != NULL);
    struct dirent *e;
    int tmp = 0;
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".tmp")) tmp++;
    closedir(d);
    CHECK_EQ_INT(tmp, 0);
    return 0;
}

/* A phantom case through the whole chain: series, labels, SEG, checks. */
static int phantom_case(const char *name, const char *matrix, const char *position, int enhanced,
                        int max_segs)
{
    char dir[512], nii[512], seg_path[512], sop[65];
    CHECK_EQ_INT(phantom(name, matrix, position, enhanced), 0);
    snprintf(dir, sizeof dir, "%s/case_0000/dicom", name);
    snprintf(nii, sizeof nii, "%s/case_0000/labels.nii.gz", name);
    series s;
    CHECK_EQ_INT(load_series(dir, NULL, &s), 0);
    CHECK_EQ_INT(s.info.enhanced, enhanced);
    CHECK_EQ_INT(s.info.slice_axis, 2);
    ctg_vol *lab = labels_on_grid(nii, s.vol);
    CHECK(lab != NULL);
    static dcm_seg_segment segs[MAX_SEGS];
    int nseg = organ_segments(lab, segs, max_segs);
    CHECK(nseg >= 3);
    snprintf(seg_path, sizeof seg_path, "%s/seg.dcm", name);
    CHECK_EQ_INT(write_seg(&s, lab, segs, nseg, seg_path, sop), 0);
    CHECK(!strncmp(sop, "2.25.", 5));
    if (check_seg(seg_path, &s, lab, segs, nseg, sop)) return 1;
    if (run_dciodvfy(seg_path)) return 1;
    if (no_temp_files(name)) return 1;
    ctg_vol_free(lab);
    series_free(&s);
    return 0;
}

/* (a) + (b): an axial head-first supine phantom with every organ in it. */
static int test_seg_axial(void)
{
    return phantom_case("hfs", "64", "HFS", 0, MAX_SEGS);
}

/* (c) Feet first (pixels stored mirrored; frames are 61 x 57 pixels, not a
 * whole number of bytes) and a prone Enhanced CT object (frames reference
 * their frame number). */
static int test_seg_ffs_enhanced(void)
{
    if (phantom_case("ffs", "61x57", "FFS", 0, 12)) return 1;
    return phantom_case("hfp-enh", "64", "HFP", 1, 12);
}

/* A copy of v with its voxel axes permuted and flipped: axis d of the
 * result runs along axis perm[d] of v, backwards where flip[d]; the affine
 * keeps every voxel where it was. */
static ctg_vol *reorient(const ctg_vol *v, const int perm[3], const int flip[3])
{
    int n[3] = {v->nx, v->ny, v->nz};
    ctg_vol *o = ctg_vol_new(n[perm[0]], n[perm[1]], n[perm[2]], v->dtype);
    if (!o) return NULL;
    for (int z = 0; z < o->nz; z++)
        for (int y = 0; y < o->ny; y++)
            for (int x = 0; x < o->nx; x++) {
                int q[3] = {x, y, z}, src[3];
                for (int d = 0; d < 3; d++) src[perm[d]] = flip[d] ? n[perm[d]] - 1 - q[d] : q[d];
                ctg_vol_set(o, x, y, z, ctg_vol_get(v, src[0], src[1], src[2]));
            }
    double first[3];
    int zero[3] = {0, 0, 0}, src0[3];
    for (int d = 0; d < 3; d++) src0[perm[d]] = flip[d] ? n[perm[d]] - 1 : zero[d];
    double idx[3] = {src0[0], src0[1], src0[2]};
    ctg_vol_world(v, idx, first);
    for (int r = 0; r < 3; r++) {
        for (int d = 0; d < 3; d++) o->aff[r][d] = (flip[d] ? -1 : 1) * v->aff[r][perm[d]];
        o->aff[r][3] = first[r];
    }
    return o;
}

/* A sagittal or coronal series made from an axial phantom's volume, read
 * back, written as SEG and checked.  opts may ask to fill a missing slice
 * (drop names a file to delete first). */
static int reformatted_case(const series *ax, const ctg_vol *lab_ax, const char *name,
                            const int perm[3], const int flip[3], int want_axis, int drop)
{
    char dir[512], seg_path[512], sop[65], why[512];
    ctg_vol *acq = reorient(ax->vol, perm, flip);
    CHECK(acq != NULL);
    dcm_ct_meta m;
    memset(&m, 0, sizeof m);
    m.patient_name = "REFORMAT^TEST";
    m.patient_id = "SEGREF01";
    m.study_uid = NULL;
    m.creation_date = "20240101";
    m.creation_time = "120000";
    m.study_date = "20240101";
    m.study_time = "120000";
    m.patient_position = "HFS";
    m.image_type = "ORIGINAL\\PRIMARY\\OTHER";
    m.series_number = 5;
    m.pixel_signed = 1;
    snprintf(dir, sizeof dir, "%s/dicom", name);
    CHECK_EQ_INT(dcm_write_ct_series(dir, acq, &m, why, sizeof why), 0);
    ctg_vol_free(acq);
    dcm_vol_opts opts;
    memset(&opts, 0, sizeof opts);
    if (drop) {
        /* A slice lost in transfer: filled by interpolation, so its frames
         * have no source image. */
        char f[600];
        snprintf(f, sizeof f, "%s/CT%04d.dcm", dir, drop);
        CHECK(unlink(f) == 0);
        opts.fill_missing = 1;
    }
    series s;
    CHECK_EQ_INT(load_series(dir, &opts, &s), 0);
    CHECK_EQ_INT(s.info.slice_axis, want_axis);
    CHECK_EQ_INT(s.info.filled, drop ? 1 : 0);
    /* The canonical grid is the axial one again. */
    CHECK(ctg_vol_same_grid(s.vol, ax->vol, 1e-3));
    static dcm_seg_segment segs[MAX_SEGS];
    int nseg = organ_segments(lab_ax, segs, 10);
    CHECK(nseg >= 3);
    snprintf(seg_path, sizeof seg_path, "%s/seg.dcm", name);
    CHECK_EQ_INT(write_seg(&s, lab_ax, segs, nseg, seg_path, sop), 0);
    if (check_seg(seg_path, &s, lab_ax, segs, nseg, sop)) return 1;
    if (drop) CHECK(last_unreferenced > 0);
    if (run_dciodvfy(seg_path)) return 1;
    series_free(&s);
    return 0;
}

/* (c) Sagittal (slices along canonical i) and coronal (along j) source
 * series; the coronal one misses a slice, filled by interpolation. */
static int test_seg_sagittal_coronal(void)
{
    series ax;
    CHECK_EQ_INT(phantom("ph", "48", "HFS", 0), 0);
    CHECK_EQ_INT(load_series("ph/case_0000/dicom", NULL, &ax), 0);
    ctg_vol *lab = labels_on_grid("ph/case_0000/labels.nii.gz", ax.vol);
    CHECK(lab != NULL);
    /* Sagittal: rows run posterior, columns down (head to foot), slices
     * from the right to the left. */
    static const int sag_perm[3] = {1, 2, 0}, sag_flip[3] = {0, 1, 0};
    if (reformatted_case(&ax, lab, "sag", sag_perm, sag_flip, 0, 0)) return 1;
    /* Coronal: rows run to the left, columns down, slices anterior to
     * posterior; slice 24, through the middle of the abdomen, is
     * missing. */
    static const int cor_perm[3] = {0, 2, 1}, cor_flip[3] = {0, 1, 0};
    if (reformatted_case(&ax, lab, "cor", cor_perm, cor_flip, 1, 24)) return 1;
    ctg_vol_free(lab);
    series_free(&ax);
    return 0;
}

/* (d) Bad input: CTG_EINVAL with a reason, and no file. */
static int test_seg_bad_input(void)
{
    series s;
    CHECK_EQ_INT(phantom("ph", "32", "HFS", 0), 0);
    CHECK_EQ_INT(load_series("ph/case_0000/dicom", NULL, &s), 0);
    ctg_vol *lab = labels_on_grid("ph/case_0000/labels.nii.gz", s.vol);
    CHECK(lab != NULL);
    dcm_seg_segment segs[4];
    int nseg = organ_segments(lab, segs, 4);
    CHECK_EQ_INT(nseg, 4);
    dcm_source src = {(const char *const *)s.files, s.nfiles, &s.info};
    dcm_seg_input good = {&src, lab, nseg, segs, &test_eq, NULL, 300, NULL};
    dcm_seg_input in;
    char why[512], sop[65];

#define EXPECT_EINVAL(what)                                                                   \
    do {                                                                                      \
        why[0] = 0;                                                                           \
        int rc_ = dcm_write_seg(&in, "bad.dcm", sop, why, sizeof why);                        \
        printf("%-34s -> %d: %s\n", what, rc_, why);                                          \
        CHECK_EQ_INT(rc_, CTG_EINVAL);                                                        \
        CHECK(why[0] != 0 && strchr(why, '\n') == NULL);                                      \
        CHECK(access("bad.dcm", F_OK) != 0);                                                  \
    } while (0)

    CHECK_EQ_INT(dcm_write_seg(NULL, "bad.dcm", sop, why, sizeof why), CTG_EINVAL);
    CHECK_EQ_INT(dcm_write_seg(&good, NULL, sop, why, sizeof why), CTG_EINVAL);
    in = good;
    in.src = NULL;
    EXPECT_EINVAL("no source");
    in = good;
    in.labels = NULL;
    EXPECT_EINVAL("no labels");
    in = good;
    in.eq = NULL;
    EXPECT_EINVAL("no equipment");
    in = good;
    in.nsegments = 0;
    EXPECT_EINVAL("zero segments");

    ctg_vol *f32 = ctg_vol_convert(lab, CTG_F32);
    in = good;
    in.labels = f32;
    EXPECT_EINVAL("labels not U8");
    ctg_vol_free(f32);

    /* One slice fewer than the source series. */
    ctg_vol *short_lab = ctg_vol_new(lab->nx, lab->ny, lab->nz - 1, CTG_U8);
    memcpy(short_lab->data, lab->data, ctg_vol_count(short_lab));
    memcpy(short_lab->aff, lab->aff, sizeof lab->aff);
    in = good;
    in.labels = short_lab;
    EXPECT_EINVAL("wrong size");
    ctg_vol_free(short_lab);

    dcm_seg_segment bad[4];
    memcpy(bad, segs, sizeof bad);
    bad[1].label = 0;
    in = good;
    in.segments = bad;
    EXPECT_EINVAL("label 0");
    bad[1].label = 256;
    EXPECT_EINVAL("label 256");
    bad[1].label = segs[0].label;
    EXPECT_EINVAL("duplicate label");
    /* In range, but no voxel has it. */
    size_t count[256] = {0};
    for (size_t v = 0; v < ctg_vol_count(lab); v++) count[((const uint8_t *)lab->data)[v]]++;
    int absent = 255;
    while (absent > 0 && count[absent]) absent--;
    CHECK(absent > 0);
    memcpy(bad, segs, sizeof bad);
    bad[2].label = absent;
    EXPECT_EINVAL("label without voxels");
    memcpy(bad, segs, sizeof bad);
    bad[0].type = (dcm_code){NULL, NULL, NULL};
    EXPECT_EINVAL("no type code");
    memcpy(bad, segs, sizeof bad);
    bad[3].tracking_uid = NULL;
    EXPECT_EINVAL("tracking ID without UID");
    memcpy(bad, segs, sizeof bad);
    bad[3].label_name = "a segment label that is far longer than the sixty-four characters LO allows";
    EXPECT_EINVAL("label name too long");

    dcm_vol_info info2 = s.info;
    dcm_source src2 = {(const char *const *)s.files, s.nfiles, &info2};
    in = good;
    in.src = &src2;
    info2.slice_axis = 3;
    EXPECT_EINVAL("slice axis 3");
    info2 = s.info;
    info2.slice_sop = NULL;
    EXPECT_EINVAL("no slice records");

    /* And the same input, whole, works. */
    in = good;
    why[0] = 0;
    CHECK_EQ_INT(dcm_write_seg(&in, "good.dcm", sop, why, sizeof why), 0);
    CHECK(access("good.dcm", F_OK) == 0);
    /* Writing over an existing file replaces it. */
    char sop2[65];
    CHECK_EQ_INT(dcm_write_seg(&in, "good.dcm", sop2, why, sizeof why), 0);
    CHECK(strcmp(sop, sop2) != 0);
    /* A folder that does not exist is an I/O error, not a crash. */
    int rc = dcm_write_seg(&in, "no/such/folder/seg.dcm", sop, why, sizeof why);
    printf("missing folder -> %d: %s\n", rc, why);
    CHECK_EQ_INT(rc, CTG_ENOENT);
    CHECK(no_temp_files(".") == 0);
    ctg_vol_free(lab);
    series_free(&s);
    return 0;
}

/* (d) UIDs from hex digests.  Expected values computed independently
 * with python3: "2.25.%d" % int(h[:32], 16). */
static int test_seg_uid_from_hex(void)
{
    char out[65];
    static const struct {
        const char *hex, *uid;
    } cases[] = {
        {"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
         "2.25.212047248112658246449511647784264716309"},
        {"00000000000000000000000000000000", "2.25.0"},
        {"00000000000000000000000000000001ffff", "2.25.1"},
        {"ffffffffffffffffffffffffffffffff", "2.25.340282366920938463463374607431768211455"},
        {"FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFE", "2.25.340282366920938463463374607431768211454"},
        {"0123456789abcdef0123456789ABCDEF", "2.25.1512366075204170929049582354406559215"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECK_EQ_INT(dcm_uid_from_hex(cases[i].hex, out), 0);
        if (strcmp(out, cases[i].uid) != 0) {
            fprintf(stderr, "%s -> %s, wanted %s\n", cases[i].hex, out, cases[i].uid);
            return 1;
        }
        CHECK(strlen(out) <= 64);
    }
    CHECK_EQ_INT(dcm_uid_from_hex("0123456789abcdef0123456789abcde", out), CTG_EINVAL);
    CHECK_EQ_INT(dcm_uid_from_hex("", out), CTG_EINVAL);
    CHECK_EQ_INT(dcm_uid_from_hex(NULL, out), CTG_EINVAL);
    CHECK_EQ_INT(dcm_uid_from_hex("0123456789abcdef0123456789abcdeg", out), CTG_EINVAL);
    CHECK_EQ_INT(dcm_uid_from_hex("sha256:9f86d081884c7d659a2feaa0c55ad015", out), CTG_EINVAL);
    CHECK_EQ_INT(dcm_uid_from_hex("9f86d081884c7d659a2feaa0c55ad015", NULL), CTG_EINVAL);
    return 0;
}

const test_case seg_tests[] = {
    {"seg_axial", test_seg_axial},
    {"seg_ffs_enhanced", test_seg_ffs_enhanced},
    {"seg_sagittal_coronal", test_seg_sagittal_coronal},
    {"seg_bad_input", test_seg_bad_input},
    {"seg_uid_from_hex", test_seg_uid_from_hex},
    {NULL, NULL},
};
