/*
 * test_sr.c - the TID 1500 SR writer (dicom/sr.cc), end to end: a phantom
 * CT study becomes a volume, a SEG of four of its organs and a findings
 * report; the report is read back with DCMTK (dsrdump, which reads it
 * through DSRDocument, and dcmdump), and checked by the two validators
 * PACS vendors use, dicom3tools' dciodvfy and PixelMed's
 * DicomSRValidator.  Bad inputs must come back as CTG_EINVAL with a
 * reason.
 *
 * The SEG comes from dcm_write_seg when this build has it; otherwise (or
 * when it fails) a SEG-like file is made from a CT slice with dcmodify:
 * the SR writer reads only the SEG's identity and segment list.
 */
#include <ctype.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/core.h"
#include "core/organs.h"
#include "core/vol.h"
#include "dicom/dicom.h"
#include "tests.h"

/* Resolved at link time when dicom/seg.cc provides it. */
#pragma weak dcm_write_seg

/* ---- helpers ---------------------------------------------------------------- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The regular files of a folder (hidden ones skipped), sorted; returns
 * the count (<= cap). */
static size_t list_dir(const char *dir, char **out, size_t cap)
{
    DIR *d = opendir(dir);
    size_t n = 0;
    if (!d) return 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < cap) {
        if (e->d_name[0] == '.') continue;
        char p[2048];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        out[n++] = strdup(p);
    }
    closedir(d);
    qsort(out, n, sizeof *out, cmp_str);
    return n;
}

/* Runs a shell command and returns everything it printed (stdout and
 * stderr), NUL-terminated; *status gets its exit status. */
static char *run(const char *cmd, int *status)
{
    char full[4096];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    if (!p) return NULL;
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    if (!buf) abort();
    size_t got;
    while ((got = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += got;
        if (cap - len < 4096) {
            cap *= 2;
            if (!(buf = realloc(buf, cap))) abort();
        }
    }
    buf[len] = 0;
    int st = pclose(p);
    if (status) *status = st;
    return buf;
}

/* Lines of out that start with prefix, printed; returns their count. */
static int lines_starting(const char *out, const char *prefix, const char *label)
{
    int count = 0;
    size_t pl = strlen(prefix);
    for (const char *l = out; l && *l;) {
        const char *e = strchr(l, '\n');
        size_t len = e ? (size_t)(e - l) : strlen(l);
        if (len >= pl && !strncmp(l, prefix, pl)) {
            fprintf(stderr, "%s: %.*s\n", label, (int)len, l);
            count++;
        }
        l = e ? e + 1 : NULL;
    }
    return count;
}

static int count_of(const char *hay, const char *needle)
{
    int k = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle)) k++;
    return k;
}

/* One phantom study: its files, the volume and info dcm_series_volume
 * built from them, and the phantom's own label map on that grid. */
typedef struct study {
    char *files[256];
    int nfiles;
    ctg_vol *ct, *labels;
    dcm_vol_info info;
    ctg_instance first; /* header of the first source file */
} study;

static int make_study(study *s, const char *out, const char *seed, int enhanced)
{
    memset(s, 0, sizeof *s);
    char dir[512], path[600], why[512] = "";
    CHECK_EQ_INT(tu_phantom("--seed", seed, "--count", "1", "--matrix", "64", "--thickness", "6",
                            "--fov", "abdomen", "--abnormal-rate", "0", "--out", out,
                            enhanced ? "--enhanced" : NULL, NULL),
                 0);
    snprintf(dir, sizeof dir, "%s/case_0000/dicom", out);
    s->nfiles = (int)list_dir(dir, s->files, 256);
    CHECK(s->nfiles == 1 || (!enhanced && s->nfiles > 10));
    /* DCMTK's warnings stay on: the writer should cause none. */
    dcm_global_init();
    dcm_vol_opts opts = {0};
    int rc = dcm_series_volume((const char *const *)s->files, (size_t)s->nfiles, &opts, &s->ct,
                               &s->info, why, sizeof why);
    if (rc < 0) fprintf(stderr, "%s: %s\n", dir, why);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(dcm_read_instance(s->files[0], &s->first, why, sizeof why), 0);
    snprintf(path, sizeof path, "%s/case_0000/labels.nii.gz", out);
    CHECK_EQ_INT(ctg_nifti_read(path, CTG_U8, &s->labels, why, sizeof why), 0);
    CHECK_EQ_INT(ctg_vol_canonical(s->labels), 0);
    CHECK(ctg_vol_same_grid(s->labels, s->ct, 1e-3));
    return 0;
}

/* The organs the reports describe: four TotalSegmentator organs of the
 * phantom, one with laterality, one failing the zero-shot organ check,
 * each with 2-3 findings from etc/findings.conf (SNOMED CT codes where
 * the list has one, the private scheme's finding keys where it has
 * not; "aortic_calcification" is longer than a short code value). */
enum { NORG = 4 };
typedef struct fixture {
    dcm_sr_organ organs[NORG];
    dcm_sr_finding findings[NORG][3];
    char tuid[NORG][65];
    int ids[NORG];
    dcm_equipment eq;
    dcm_sr_input in;
    dcm_source src;
} fixture;

static const struct {
    const char *name;
    int nf;
    struct {
        const char *value, *scheme, *meaning;
        int present;
        double prob, thr;
    } f[3];
} kOrgans[NORG] = {
    {"liver", 3,
     {{"85057007", "SCT", "Cyst of liver", 1, 0.91, 0.5},
      {"197321007", "SCT", "Steatosis of liver", 0, 0.12, 0.5},
      {"hepatic_mass", "99CTGLIP", "Hepatic mass", 0, 0.30, 0.45}}},
    {"spleen", 2,
     {{"16294009", "SCT", "Splenomegaly", 0, 0.05, 0.5},
      {"splenic_lesion", "99CTGLIP", "Splenic lesion", 1, 0.77, 0.6}}},
    {"kidney_left", 3,
     {{"36171008", "SCT", "Cyst of kidney", 1, 0.66, 0.5},
      {"95570007", "SCT", "Kidney stone", 0, 0.20, 0.5},
      {"43064006", "SCT", "Hydronephrosis", 0, 0.10, 0.5}}},
    {"aorta", 2,
     {{"67362008", "SCT", "Aortic aneurysm", 0, 0.02, 0.5},
      {"aortic_calcification", "99CTGLIP", "Aortic calcification", 0, 0.40, 0.5}}},
};
#define LOW_CONF_ORGAN 3
#define NEAREST "inferior_vena_cava"
#define DEVICE_UID "2.25.299617155617329829393315596785616217432"
#define MODEL_HASH "dfb1c1a1a7e5b2f3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b"

/* Volume (ml) and mean HU of label id in the study. */
static void measure(const study *s, int id, double *ml, double *hu)
{
    const uint8_t *lab = s->labels->data;
    const float *ct = s->ct->data;
    size_t n = ctg_vol_count(s->ct), cnt = 0;
    double sum = 0, sp[3];
    for (size_t i = 0; i < n; i++)
        if (lab[i] == id) {
            cnt++;
            sum += ct[i];
        }
    ctg_vol_spacing(s->ct, sp);
    *ml = (double)cnt * sp[0] * sp[1] * sp[2] / 1000.0;
    *hu = cnt ? sum / (double)cnt : NAN;
}

static int make_fixture(fixture *x, const study *s, const char *seg_path)
{
    memset(x, 0, sizeof *x);
    for (int i = 0; i < NORG; i++) {
        const ctg_organ *g = ctg_organ_get(ctg_organ_id(kOrgans[i].name));
        CHECK(g != NULL);
        x->ids[i] = g->id;
        CHECK_EQ_INT(ctg_uid_random(x->tuid[i]), 0);
        dcm_sr_organ *o = &x->organs[i];
        o->segment_number = i + 1;
        o->tracking_id = g->name;
        o->tracking_uid = x->tuid[i];
        o->site = (dcm_code){g->type_code, "SCT", g->type_meaning};
        if (g->modifier_code[0])
            o->laterality = (dcm_code){g->modifier_code, "SCT", g->modifier_meaning};
        measure(s, g->id, &o->volume_ml, &o->mean_hu);
        CHECK(o->volume_ml > 1);
        o->low_confidence = i == LOW_CONF_ORGAN;
        o->nearest = i == LOW_CONF_ORGAN ? NEAREST : NULL;
        o->nfindings = kOrgans[i].nf;
        o->findings = x->findings[i];
        for (int j = 0; j < kOrgans[i].nf; j++) {
            dcm_sr_finding *f = &x->findings[i][j];
            f->finding = (dcm_code){kOrgans[i].f[j].value, kOrgans[i].f[j].scheme,
                                    kOrgans[i].f[j].meaning};
            f->present = kOrgans[i].f[j].present;
            f->probability = kOrgans[i].f[j].prob;
            f->threshold = kOrgans[i].f[j].thr;
        }
    }
    CHECK(x->organs[2].laterality.value != NULL); /* kidney_left: Left */
    x->eq = (dcm_equipment){
        .manufacturer = "ctglip",
        .software_version = "0.5.0",
        .model_name = "ctglip CT-GLIP test model",
        .model_version = MODEL_HASH,
        .device_uid = DEVICE_UID,
        .institution = "Test Hospital",
        .creation_date = "20240102",
        .creation_time = "030405",
    };
    x->src = (dcm_source){(const char *const *)s->files, s->nfiles, &s->info};
    x->in = (dcm_sr_input){
        .src = &x->src,
        .seg_path = seg_path,
        .norgans = NORG,
        .organs = x->organs,
        .eq = &x->eq,
        .predecessor_path = NULL,
        .series_uid = NULL,
        .series_number = 9902,
        .series_desc = "ctglip findings",
    };
    return 0;
}

/* A SEG-like file: the first CT slice relabelled as a Segmentation of the
 * same study with the fixture's segments (number, tracking ID and UID). */
static int make_seg_like(const study *s, const fixture *x, const char *path)
{
    char cmd[8192], uid1[65], uid2[65];
    CHECK_EQ_INT(ctg_uid_random(uid1), 0);
    CHECK_EQ_INT(ctg_uid_random(uid2), 0);
    int len = snprintf(cmd, sizeof cmd,
                       "cp '%s' '%s' && dcmodify -nb -q "
                       "-m '(0008,0016)=1.2.840.10008.5.1.4.1.1.66.4' "
                       "-m '(0008,0018)=%s' -m '(0020,000e)=%s' -m '(0008,0060)=SEG'",
                       s->files[0], path, uid1, uid2);
    for (int i = 0; i < NORG; i++)
        len += snprintf(cmd + len, sizeof cmd - (size_t)len,
                        " -i '(0062,0002)[%d].(0062,0004)=%d' -i '(0062,0002)[%d].(0062,0020)=%s'"
                        " -i '(0062,0002)[%d].(0062,0021)=%s'",
                        i, x->organs[i].segment_number, i, x->organs[i].tracking_id, i,
                        x->organs[i].tracking_uid);
    snprintf(cmd + len, sizeof cmd - (size_t)len, " '%s'", path);
    int st;
    char *out = run(cmd, &st);
    if (st != 0) fprintf(stderr, "%s\n%s\n", cmd, out ? out : "");
    free(out);
    CHECK_EQ_INT(st, 0);
    return 0;
}

/* The SEG of the fixture's organs: dcm_write_seg's when it works, the
 * SEG-like stand-in otherwise. */
static int make_seg(const study *s, const fixture *x, const char *path)
{
    if (dcm_write_seg) {
        dcm_seg_segment seg[NORG];
        memset(seg, 0, sizeof seg);
        for (int i = 0; i < NORG; i++) {
            const ctg_organ *g = ctg_organ_get(x->ids[i]);
            seg[i].label = g->id;
            seg[i].label_name = g->name;
            seg[i].category = (dcm_code){g->category_code, "SCT", g->category_meaning};
            seg[i].type = (dcm_code){g->type_code, "SCT", g->type_meaning};
            if (g->modifier_code[0])
                seg[i].type_modifier = (dcm_code){g->modifier_code, "SCT", g->modifier_meaning};
            memcpy(seg[i].rgb, g->rgb, 3);
            seg[i].tracking_id = x->organs[i].tracking_id;
            seg[i].tracking_uid = x->organs[i].tracking_uid;
        }
        dcm_source src = {(const char *const *)s->files, s->nfiles, &s->info};
        dcm_seg_input si = {
            .src = &src,
            .labels = s->labels,
            .nsegments = NORG,
            .segments = seg,
            .eq = &x->eq,
            .series_uid = NULL,
            .series_number = 9901,
            .series_desc = NULL,
        };
        char why[512] = "", uid[65];
        int rc = dcm_write_seg(&si, path, uid, why, sizeof why);
        if (rc == 0) {
            printf("SEG: written by dcm_write_seg\n");
            return 0;
        }
        printf("SEG: dcm_write_seg failed (%s); using a SEG-like stand-in\n", why);
    } else {
        printf("SEG: no dcm_write_seg in this build; using a SEG-like stand-in\n");
    }
    return make_seg_like(s, x, path);
}

/* Study, fixture and SEG in the scratch folder. */
static int setup(study *s, fixture *x, const char *seed, int enhanced)
{
    if (make_study(s, "p", seed, enhanced)) return 1;
    if (make_fixture(x, s, "seg.dcm")) return 1;
    if (make_seg(s, x, "seg.dcm")) return 1;
    return 0;
}

static int write_ok(const dcm_sr_input *in, const char *path, char uid[65])
{
    char why[512] = "";
    int rc = dcm_write_sr(in, path, uid, why, sizeof why);
    if (rc != 0) fprintf(stderr, "dcm_write_sr %s: %d %s\n", path, rc, why);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(why[0], 0);
    return 0;
}

/* The value of the first element with tag ("gggg,eeee") at or after dump
 * in a dcmdump listing, copied into out; -1 when there is none. */
static int dump_value(const char *dump, const char *tag, char *out, size_t n)
{
    char key[16];
    snprintf(key, sizeof key, "(%s)", tag);
    const char *l = strstr(dump, key);
    out[0] = 0;
    if (!l) return -1;
    const char *b = strchr(l, '['), *e = b ? strchr(b, ']') : NULL;
    const char *eol = strchr(l, '\n');
    if (!b || !e || (eol && b > eol)) return -1;
    snprintf(out, n, "%.*s", (int)(e - b - 1), b + 1);
    return 0;
}

/* ---- (a) content ------------------------------------------------------------- */

/* One measurement group of a dsrdump +Pc listing: from its CONTAINER line
 * to the next group's. */
#define GROUP_LINE "CONTAINER:(125007,DCM,\"Measurement Group\")"
static const char *group_end(const char *g)
{
    const char *next = strstr(g + strlen(GROUP_LINE), GROUP_LINE);
    return next ? next : g + strlen(g);
}

static int in_range(const char *b, const char *e, const char *needle)
{
    const char *p = strstr(b, needle);
    return p && p < e;
}

static int test_report_content(void)
{
    study s;
    fixture x;
    if (setup(&s, &x, "7", 0)) return 1;
    char uid[65] = "", why[512];
    if (write_ok(&x.in, "sr.dcm", uid)) return 1;

    ctg_instance seg;
    CHECK_EQ_INT(dcm_read_instance("seg.dcm", &seg, why, sizeof why), 0);

    /* Header: a Comprehensive 3D SR of the source's patient and study. */
    ctg_instance sr;
    CHECK_EQ_INT(dcm_read_instance("sr.dcm", &sr, why, sizeof why), 0);
    CHECK(strcmp(sr.sop_class, "1.2.840.10008.5.1.4.1.1.88.34") == 0);
    CHECK(strcmp(sr.sop_uid, uid) == 0);
    CHECK(strcmp(sr.study_uid, s.info.study_uid) == 0);
    CHECK(strcmp(sr.series_uid, s.info.series_uid) != 0);
    CHECK(strcmp(sr.patient_id, s.first.patient_id) == 0);
    CHECK(strcmp(sr.patient_name, s.first.patient_name) == 0);
    CHECK(strcmp(sr.patient_birth_date, s.first.patient_birth_date) == 0);
    CHECK(strcmp(sr.accession, s.first.accession) == 0);
    CHECK(strcmp(sr.modality, "SR") == 0);
    CHECK(strcmp(sr.series_desc, "ctglip findings") == 0);
    CHECK_EQ_INT(sr.series_number, 9902);
    CHECK(strcmp(sr.transfer_syntax, "1.2.840.10008.1.2.1") == 0);

    /* The document as DCMTK's DSRDocument reads it (dsrdump), shown in
     * the log for a human to read. */
    int st;
    char *dump = run("dsrdump +Pc +Pt +Pl +Pu sr.dcm", &st);
    CHECK(dump != NULL);
    printf("---- dsrdump sr.dcm ----\n%s---- end ----\n", dump);
    CHECK_EQ_INT(st, 0);
    /* DSRDocument read it without a warning or error of its own. */
    CHECK_EQ_INT(lines_starting(dump, "W: ", "dsrdump") + lines_starting(dump, "E: ", "dsrdump"), 0);
    CHECK(strstr(dump, "Comprehensive 3D SR") != NULL);
    CHECK(strstr(dump, "CONTAINER:(126000,DCM,\"Imaging Measurement Report\")") != NULL);
    CHECK(strstr(dump, "Report\")=SEPARATE>  # TID 1500 (DCMR") != NULL);
    CHECK(strstr(dump, "Completion Flag     : COMPLETE") != NULL);
    CHECK(strstr(dump, "Verification Flag   : UNVERIFIED") != NULL);
    CHECK(strstr(dump, "(121012,DCM,\"Device Observer UID\")=\"" DEVICE_UID "\"") != NULL);
    CHECK(strstr(dump, "(121058,DCM,\"Procedure reported\")=(25045-6,LN,") != NULL);
    /* Every source slice is in the image library, once. */
    CHECK_EQ_INT(count_of(dump, "<contains IMAGE:=(CT image,"), s.nfiles);
    for (int i = 0; i < s.nfiles; i++) {
        ctg_instance in;
        char need[128];
        CHECK_EQ_INT(dcm_read_instance(s.files[i], &in, why, sizeof why), 0);
        snprintf(need, sizeof need, "<contains IMAGE:=(CT image,\"%s\")>", in.sop_uid);
        CHECK_EQ_INT(count_of(dump, need), 1);
    }
    CHECK_EQ_INT(count_of(dump, GROUP_LINE), NORG);

    const char *g = strstr(dump, GROUP_LINE);
    for (int i = 0; i < NORG; i++, g = group_end(g)) {
        CHECK(g && *g);
        const char *e = group_end(g);
        const dcm_sr_organ *o = &x.organs[i];
        char need[512];
        printf("group %d: %s\n", i + 1, o->tracking_id);
        snprintf(need, sizeof need, "(112039,DCM,\"Tracking Identifier\")=\"%s\"", o->tracking_id);
        CHECK(in_range(g, e, need));
        snprintf(need, sizeof need, "(112040,DCM,\"Tracking Unique Identifier\")=\"%s\"",
                 o->tracking_uid);
        CHECK(in_range(g, e, need));
        snprintf(need, sizeof need, "(363698007,SCT,\"Finding Site\")=(%s,SCT,\"%s\")",
                 o->site.value, o->site.meaning);
        CHECK(in_range(g, e, need));
        if (o->laterality.value) {
            snprintf(need, sizeof need, "(272741003,SCT,\"Laterality\")=(%s,SCT,\"%s\")",
                     o->laterality.value, o->laterality.meaning);
            CHECK(in_range(g, e, need));
        } else {
            CHECK(!in_range(g, e, "\"Laterality\""));
        }
        snprintf(need, sizeof need, "(121191,DCM,\"Referenced Segment\")=(SG image,\"%s\",%d)>",
                 seg.sop_uid, o->segment_number);
        CHECK(in_range(g, e, need));
        snprintf(need, sizeof need, "(121232,DCM,\"Source series for segmentation\")=\"%s\"",
                 s.info.series_uid);
        CHECK(in_range(g, e, need));
        /* Volume in ml, as measured. */
        const char *v = strstr(g, "NUM:(118565006,SCT,\"Volume\")=\"");
        CHECK(v && v < e);
        double ml = atof(v + strlen("NUM:(118565006,SCT,\"Volume\")=\""));
        if (fabs(ml - o->volume_ml) > 0.006) {
            fprintf(stderr, "%s: volume %.3f in the SR, %.3f measured\n", o->tracking_id, ml,
                    o->volume_ml);
            return 1;
        }
        CHECK(in_range(v, e, "(ml,UCUM,\"milliliter\")"));
        /* Mean HU, as measured. */
        const char *a = strstr(g, "NUM:(112031,DCM,\"Attenuation Coefficient\")=\"");
        CHECK(a && a < e);
        double hu = atof(a + strlen("NUM:(112031,DCM,\"Attenuation Coefficient\")=\""));
        if (fabs(hu - o->mean_hu) > 0.051) {
            fprintf(stderr, "%s: mean %.2f HU in the SR, %.2f measured\n", o->tracking_id, hu,
                    o->mean_hu);
            return 1;
        }
        CHECK(in_range(g, e, "([hnsf'U],UCUM,\"Hounsfield Unit\")"));
        CHECK(in_range(g, e, "(121401,DCM,\"Derivation\")=(373098007,SCT,\"Mean\")"));
        snprintf(need, sizeof need, "(111001,DCM,\"Algorithm Name\")=\"%s\"", x.eq.model_name);
        CHECK(in_range(g, e, need));
        CHECK(in_range(g, e, "(111003,DCM,\"Algorithm Version\")=\"" MODEL_HASH "\""));
        /* Each finding: its certainty and its present/absent evaluation. */
        for (int j = 0; j < o->nfindings; j++) {
            const dcm_sr_finding *f = &o->findings[j];
            snprintf(need, sizeof need, "(121071,DCM,\"Finding\")=(%s,%s,\"%s\")", f->finding.value,
                     f->finding.scheme, f->finding.meaning);
            CHECK(in_range(g, e, need));
            snprintf(need, sizeof need,
                     "NUM:(111012,DCM,\"Certainty of Finding\")=\"%.1f\" (%%,UCUM,",
                     f->probability * 100);
            CHECK(in_range(g, e, need));
            snprintf(need, sizeof need, "CODE:(%s,%s,\"%s\")=%s", f->finding.value,
                     f->finding.scheme, f->finding.meaning,
                     f->present ? "(52101004,SCT,\"Present\")" : "(2667000,SCT,\"Absent\")");
            if (!in_range(g, e, need)) {
                fprintf(stderr, "%s: no evaluation %s\n", o->tracking_id, need);
                return 1;
            }
            snprintf(need, sizeof need, "decision threshold %.1f %%", f->threshold * 100);
            CHECK(in_range(g, e, need));
        }
        /* The organ that failed the zero-shot check says so, and what it
         * looked like; the others say nothing of the kind. */
        if (o->low_confidence) {
            CHECK(in_range(g, e, "(121106,DCM,\"Comment\")=\"Zero-shot organ check failed"));
            CHECK(in_range(g, e, NEAREST));
        } else {
            CHECK(!in_range(g, e, "Zero-shot organ check"));
        }
    }
    /* Readable: the organ names and finding meanings are in the dump. */
    for (int i = 0; i < NORG; i++) {
        CHECK(strstr(dump, x.organs[i].tracking_id) != NULL);
        CHECK(strstr(dump, x.organs[i].site.meaning) != NULL);
    }
    CHECK(strstr(dump, "Cyst of kidney") != NULL);
    free(dump);

    /* Document-level attributes (dcmdump). */
    char *hdr = run("dcmdump -q -Un +L sr.dcm", &st);
    CHECK(hdr && st == 0);
    char val[256];
    const char *ce = strstr(hdr, "(0018,a001)");
    CHECK(ce != NULL);
    CHECK_EQ_INT(dump_value(ce, "0018,1002", val, sizeof val), 0);
    CHECK(strcmp(val, DEVICE_UID) == 0);
    CHECK_EQ_INT(dump_value(ce, "0008,1090", val, sizeof val), 0);
    CHECK(strcmp(val, x.eq.model_name) == 0);
    CHECK_EQ_INT(dump_value(ce, "0018,1020", val, sizeof val), 0);
    CHECK(strcmp(val, MODEL_HASH "\\0.5.0") == 0);
    CHECK_EQ_INT(dump_value(ce, "0018,1000", val, sizeof val), 0);
    CHECK(strcmp(val, MODEL_HASH) == 0);
    CHECK(strstr(ce, "Processing Equipment") != NULL);
    CHECK_EQ_INT(dump_value(hdr, "0040,a491", val, sizeof val), 0);
    CHECK(strcmp(val, "COMPLETE") == 0);
    CHECK_EQ_INT(dump_value(hdr, "0040,a493", val, sizeof val), 0);
    CHECK(strcmp(val, "UNVERIFIED") == 0);
    CHECK_EQ_INT(dump_value(hdr, "0008,0023", val, sizeof val), 0);
    CHECK(strcmp(val, "20240102") == 0);
    CHECK_EQ_INT(dump_value(hdr, "0008,0033", val, sizeof val), 0);
    CHECK(strcmp(val, "030405") == 0);
    CHECK(strstr(hdr, "(0040,a360)") == NULL); /* no predecessor */
    /* The private scheme is identified. */
    CHECK(strstr(hdr, "[99CTGLIP]") != NULL && strstr(hdr, "(0008,0110)") != NULL);
    /* Evidence lists every source instance and the SEG. */
    const char *evid = strstr(hdr, "(0040,a375)");
    CHECK(evid != NULL);
    for (int i = 0; i < s.nfiles; i++) {
        ctg_instance in;
        CHECK_EQ_INT(dcm_read_instance(s.files[i], &in, why, sizeof why), 0);
        char need[100];
        snprintf(need, sizeof need, "[%s]", in.sop_uid);
        CHECK(strstr(evid, need) != NULL);
    }
    char need[100];
    snprintf(need, sizeof need, "[%s]", seg.sop_uid);
    CHECK(strstr(evid, need) != NULL);
    free(hdr);

    /* No temp file is left beside it. */
    DIR *d = opendir(".");
    struct dirent *de;
    while (d && (de = readdir(d)))
        CHECK(strstr(de->d_name, ".tmp") == NULL);
    if (d) closedir(d);
    return 0;
}

/* An Enhanced CT source (one multi-frame object) is one library entry,
 * and the report is as valid. */
static int test_enhanced_source(void)
{
    study s;
    fixture x;
    if (setup(&s, &x, "11", 1)) return 1;
    CHECK_EQ_INT(s.nfiles, 1);
    CHECK(s.info.enhanced);
    char uid[65];
    if (write_ok(&x.in, "sr.dcm", uid)) return 1;
    int st;
    char *dump = run("dsrdump +Pc sr.dcm", &st);
    CHECK(dump && st == 0);
    printf("%s", dump);
    CHECK_EQ_INT(count_of(dump, "<contains IMAGE:=(CTe image,"), 1);
    CHECK_EQ_INT(count_of(dump, GROUP_LINE), NORG);
    free(dump);
    char *out = run("dciodvfy sr.dcm", &st);
    CHECK(out != NULL);
    printf("---- dciodvfy sr.dcm ----\n%s---- end ----\n", out);
    CHECK(strncmp(out, "Comprehensive3DSR", 17) == 0);
    CHECK_EQ_INT(lines_starting(out, "Error", "dciodvfy"), 0);
    free(out);
    return 0;
}

/* ---- predecessor ------------------------------------------------------------- */

static int test_predecessor(void)
{
    study s;
    fixture x;
    if (setup(&s, &x, "8", 0)) return 1;
    char uid1[65], uid2[65], why[512];
    if (write_ok(&x.in, "first.dcm", uid1)) return 1;
    x.in.predecessor_path = "first.dcm";
    x.findings[0][0].present = 0; /* the new report says something else */
    if (write_ok(&x.in, "second.dcm", uid2)) return 1;
    CHECK(strcmp(uid1, uid2) != 0);
    ctg_instance a, b;
    CHECK_EQ_INT(dcm_read_instance("first.dcm", &a, why, sizeof why), 0);
    CHECK_EQ_INT(dcm_read_instance("second.dcm", &b, why, sizeof why), 0);
    CHECK(strcmp(a.study_uid, b.study_uid) == 0);

    int st;
    char *hdr = run("dcmdump -q -Un +L second.dcm", &st);
    CHECK(hdr && st == 0);
    const char *pre = strstr(hdr, "(0040,a360)");
    CHECK(pre != NULL);
    char val[100];
    CHECK_EQ_INT(dump_value(pre, "0020,000d", val, sizeof val), 0);
    CHECK(strcmp(val, a.study_uid) == 0);
    CHECK_EQ_INT(dump_value(pre, "0020,000e", val, sizeof val), 0);
    CHECK(strcmp(val, a.series_uid) == 0);
    CHECK_EQ_INT(dump_value(pre, "0008,1150", val, sizeof val), 0);
    CHECK(strcmp(val, "1.2.840.10008.5.1.4.1.1.88.34") == 0);
    CHECK_EQ_INT(dump_value(pre, "0008,1155", val, sizeof val), 0);
    CHECK(strcmp(val, uid1) == 0);
    free(hdr);

    /* The same series UID may be given for both (a report series). */
    x.in.series_uid = a.series_uid;
    if (write_ok(&x.in, "third.dcm", uid2)) return 1;
    ctg_instance t;
    CHECK_EQ_INT(dcm_read_instance("third.dcm", &t, why, sizeof why), 0);
    CHECK(strcmp(t.series_uid, a.series_uid) == 0);

    /* A predecessor that is no SR, or of another study, is refused. */
    x.in.series_uid = NULL;
    x.in.predecessor_path = s.files[0];
    CHECK_EQ_INT(dcm_write_sr(&x.in, "bad.dcm", uid2, why, sizeof why), CTG_EINVAL);
    printf("CT as predecessor: %s\n", why);
    CHECK(strstr(why, "not a structured report") != NULL);
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "cp first.dcm other.dcm && dcmodify -nb -q -m '(0020,000d)=2.25.1234' other.dcm");
    free(run(cmd, &st));
    CHECK_EQ_INT(st, 0);
    x.in.predecessor_path = "other.dcm";
    CHECK_EQ_INT(dcm_write_sr(&x.in, "bad.dcm", uid2, why, sizeof why), CTG_EINVAL);
    printf("other study's SR as predecessor: %s\n", why);
    CHECK(strstr(why, "study") != NULL);
    struct stat sb;
    CHECK(stat("bad.dcm", &sb) != 0);
    return 0;
}

/* ---- (b, c) validators ------------------------------------------------------- */

static int validate(const char *file, int pixelmed)
{
    int st, bad = 0;
    char cmd[1024];
    /* dicom3tools: the IOD, its modules and attributes. */
    snprintf(cmd, sizeof cmd, "dciodvfy '%s'", file);
    char *out = run(cmd, &st);
    CHECK(out != NULL);
    printf("---- dciodvfy %s ----\n%s---- end ----\n", file, out);
    /* It names the IOD it checked against first; a missing tool does not. */
    CHECK(strncmp(out, "Comprehensive3DSR", 17) == 0);
    bad += lines_starting(out, "Error", "dciodvfy");
    free(out);
    if (!pixelmed) {
        CHECK_EQ_INT(bad, 0);
        return 0;
    }

    /* PixelMed: the SR content tree against the templates (TID 1500 and
     * what it includes).  It exits 0 whatever it finds; its findings are
     * lines starting "Error:". */
    struct stat sb;
    if (stat("/usr/share/java/pixelmed.jar", &sb) != 0) {
        fprintf(stderr, "PixelMed is not installed (/usr/share/java/pixelmed.jar; Debian package "
                        "pixelmed-apps, see scripts/deps.sh)\n");
        return 1;
    }
    /* The command of DESIGN.md, plus two JVM flags (client JIT only,
     * serial GC) that about halve this short run, most of which is spent
     * compiling PixelMed's XSLT; they change nothing it checks. */
    snprintf(cmd, sizeof cmd,
             "java -XX:TieredStopAtLevel=1 -XX:+UseSerialGC "
             "-Djdk.xml.xpathExprOpLimit=0 -Djdk.xml.xpathExprGrpLimit=0 "
             "-Djdk.xml.xpathTotalOpLimit=0 -cp /usr/share/java/pixelmed.jar "
             "com.pixelmed.validate.DicomSRValidator '%s'", file);
    out = run(cmd, &st);
    CHECK(out != NULL);
    printf("---- DicomSRValidator %s ----\n%s---- end ----\n", file, out);
    /* A missing Java runtime or class must fail, not pass quietly. */
    CHECK_EQ_INT(st, 0);
    CHECK(strstr(out, "Exception") == NULL);
    CHECK(strstr(out, "Found Comprehensive3DSR IOD") != NULL);
    CHECK(strstr(out, "Found Root Template TID_1500") != NULL);
    CHECK(strstr(out, "Root Template Validation Complete") != NULL);
    bad += lines_starting(out, "Error:", "DicomSRValidator");
    free(out);
    CHECK_EQ_INT(bad, 0);
    return 0;
}

static int test_validators(void)
{
    study s;
    fixture x;
    if (setup(&s, &x, "9", 0)) return 1;
    char uid[65];
    if (write_ok(&x.in, "sr.dcm", uid)) return 1;
    x.in.predecessor_path = "sr.dcm";
    if (write_ok(&x.in, "sr2.dcm", uid)) return 1;
    /* dciodvfy on both; PixelMed (some 15-25 s a file, most of it
     * compiling its XSLT) on the second, which has everything the first
     * has and a predecessor. */
    if (validate("sr.dcm", 0)) return 1;
    if (validate("sr2.dcm", 1)) return 1;
    return 0;
}

/* ---- (d) bad inputs ---------------------------------------------------------- */

/* Each broken copy of the good input is refused with CTG_EINVAL, a one-line
 * reason, and no file. */
static int refused(const dcm_sr_input *in, const char *path, const char *what, const char *expect)
{
    char why[512] = "", uid[65] = "x";
    int rc = dcm_write_sr(in, path, uid, why, sizeof why);
    printf("%-34s -> %d %s\n", what, rc, why);
    if (rc != CTG_EINVAL) {
        fprintf(stderr, "%s: got %d (%s), wanted CTG_EINVAL\n", what, rc, why);
        return 1;
    }
    CHECK(why[0] != 0);
    CHECK(strchr(why, '\n') == NULL);
    CHECK_EQ_INT(uid[0], 0);
    if (expect && !strstr(why, expect)) {
        fprintf(stderr, "%s: reason '%s' does not mention '%s'\n", what, why, expect);
        return 1;
    }
    struct stat sb;
    CHECK(!path || stat(path, &sb) != 0);
    return 0;
}

static int test_bad_inputs(void)
{
    study s;
    fixture x;
    if (setup(&s, &x, "10", 0)) return 1;
    char why[512], uid[65];

    CHECK_EQ_INT(dcm_write_sr(NULL, "o.dcm", uid, why, sizeof why), CTG_EINVAL);
    CHECK(why[0] != 0);
    if (refused(&x.in, NULL, "no path", "path")) return 1;

    dcm_sr_input in = x.in;
    in.src = NULL;
    if (refused(&in, "o.dcm", "no source", "source")) return 1;
    dcm_source src = x.src;
    in = x.in;
    in.src = &src;
    src.nfiles = 0;
    if (refused(&in, "o.dcm", "no source files", "source")) return 1;
    src = x.src;
    src.info = NULL;
    if (refused(&in, "o.dcm", "no volume info", "source")) return 1;

    in = x.in;
    in.seg_path = NULL;
    if (refused(&in, "o.dcm", "no SEG", "SEG")) return 1;
    in.seg_path = s.files[1]; /* a CT slice is no SEG */
    if (refused(&in, "o.dcm", "CT as SEG", "Segmentation")) return 1;

    in = x.in;
    in.eq = NULL;
    if (refused(&in, "o.dcm", "no equipment", "equipment")) return 1;
    dcm_equipment eq = x.eq;
    in.eq = &eq;
    eq.device_uid = "1.2.03";
    if (refused(&in, "o.dcm", "bad device UID", "device UID")) return 1;
    eq = x.eq;
    eq.model_name = NULL;
    if (refused(&in, "o.dcm", "no model name", "model name")) return 1;
    eq = x.eq;
    eq.model_version = "";
    if (refused(&in, "o.dcm", "no model version", "model version")) return 1;
    eq = x.eq;
    eq.creation_date = "2024-01-02";
    if (refused(&in, "o.dcm", "bad creation date", "date")) return 1;

    in = x.in;
    in.norgans = 0;
    if (refused(&in, "o.dcm", "no organs", "organs")) return 1;
    in.norgans = NORG;
    in.series_uid = "1.2.x";
    if (refused(&in, "o.dcm", "bad series UID", "series UID")) return 1;

    /* Organ-level mistakes, one at a time on a copy. */
    dcm_sr_organ org[NORG];
    in = x.in;
    in.organs = org;
#define ORGAN_CASE(what, expect, ...)                                                              \
    do {                                                                                           \
        memcpy(org, x.organs, sizeof org);                                                         \
        __VA_ARGS__;                                                                               \
        if (refused(&in, "o.dcm", what, expect)) return 1;                                         \
    } while (0)
    ORGAN_CASE("no tracking id", "tracking identifier", org[1].tracking_id = NULL);
    ORGAN_CASE("bad tracking UID", "tracking UID", org[1].tracking_uid = "abc");
    ORGAN_CASE("repeated tracking UID", "repeats", org[2].tracking_uid = org[0].tracking_uid);
    ORGAN_CASE("repeated segment", "repeats", org[2].segment_number = org[1].segment_number);
    ORGAN_CASE("segment 0", "segment number", org[0].segment_number = 0);
    ORGAN_CASE("segment not in SEG", "no segment", org[0].segment_number = 77);
    ORGAN_CASE("no site code", "finding site", org[0].site = (dcm_code){NULL, NULL, NULL});
    ORGAN_CASE("half a site code", "finding site", org[0].site.meaning = "");
    ORGAN_CASE("half a laterality", "laterality", org[2].laterality.scheme = NULL);
    ORGAN_CASE("negative volume", "volume", org[0].volume_ml = -1);
    ORGAN_CASE("NaN volume", "volume", org[0].volume_ml = NAN);
    ORGAN_CASE("infinite HU", "HU", org[0].mean_hu = INFINITY);
    ORGAN_CASE("findings without array", "findings", org[0].findings = NULL);
    ORGAN_CASE("non-ASCII tracking id", "tracking identifier",
               org[0].tracking_id = "leber\xc3\xa4");

    /* Finding-level mistakes. */
    dcm_sr_finding f[3];
    ORGAN_CASE("probability > 1", "probability",
               (memcpy(f, x.findings[0], sizeof f), f[1].probability = 1.5, org[0].findings = f));
    ORGAN_CASE("NaN probability", "probability",
               (memcpy(f, x.findings[0], sizeof f), f[1].probability = NAN, org[0].findings = f));
    ORGAN_CASE("threshold < 0", "threshold",
               (memcpy(f, x.findings[0], sizeof f), f[2].threshold = -0.1, org[0].findings = f));
    ORGAN_CASE("finding without scheme", "finding",
               (memcpy(f, x.findings[0], sizeof f), f[0].finding.scheme = NULL,
                org[0].findings = f));
    ORGAN_CASE("finding twice", "twice",
               (memcpy(f, x.findings[0], sizeof f), f[2].finding = f[0].finding,
                org[0].findings = f));
#undef ORGAN_CASE

    /* A SEG whose segment carries another tracking UID contradicts the
     * organ (only checkable when the SEG has tracking UIDs). */
    memcpy(org, x.organs, sizeof org);
    char other[65];
    CHECK_EQ_INT(ctg_uid_random(other), 0);
    org[0].tracking_uid = other;
    char seg_why[512] = "";
    int rc = dcm_write_sr(&in, "o.dcm", uid, seg_why, sizeof seg_why);
    printf("%-34s -> %d %s\n", "tracking UID differs from SEG", rc, seg_why);
    CHECK(rc == CTG_EINVAL && strstr(seg_why, "tracking UID"));

    /* A missing output folder is the file system's error, with a reason. */
    rc = dcm_write_sr(&x.in, "no/such/dir/o.dcm", uid, why, sizeof why);
    printf("%-34s -> %d %s\n", "missing folder", rc, why);
    CHECK_EQ_INT(rc, CTG_ENOENT);
    CHECK(why[0] != 0);
    /* A missing SEG file likewise. */
    in = x.in;
    in.seg_path = "nope.dcm";
    rc = dcm_write_sr(&in, "o.dcm", uid, why, sizeof why);
    printf("%-34s -> %d %s\n", "missing SEG file", rc, why);
    CHECK_EQ_INT(rc, CTG_ENOENT);
    CHECK(strstr(why, "nope.dcm") != NULL);

    /* And after all that, the good input still works; an organ without
     * a mean (NaN) is written with the "Not a number" qualifier. */
    memcpy(org, x.organs, sizeof org);
    org[1].mean_hu = NAN;
    in = x.in;
    in.organs = org;
    if (write_ok(&in, "o.dcm", uid)) return 1;
    int st;
    char *dump = run("dsrdump +Pc o.dcm", &st);
    CHECK(dump && st == 0);
    CHECK_EQ_INT(count_of(dump, "NUM:(112031,DCM,\"Attenuation Coefficient\")=empty "
                                "(114000,DCM,\"Not a number\")"), 1);
    free(dump);
    char *out = run("dciodvfy o.dcm", &st);
    CHECK(out != NULL);
    CHECK_EQ_INT(lines_starting(out, "Error", "dciodvfy"), 0);
    free(out);
    return 0;
}

const test_case sr_tests[] = {
    {"sr_report_content", test_report_content},
    {"sr_enhanced_source", test_enhanced_source},
    {"sr_predecessor", test_predecessor},
    {"sr_validators", test_validators},
    {"sr_bad_inputs", test_bad_inputs},
    {NULL, NULL},
};
