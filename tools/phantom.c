/*
 * phantom.c - `ctglip phantom`: a deterministic generator of synthetic CT
 * studies with known ground truth (organ labels in TotalSegmentator ids,
 * numbered lesions, organ-level findings, a free-text report), for tests,
 * demos, benchmarks and training CT-GLIP.
 *
 * Each case is a pure function of (seed, case index, options): it draws
 * everything from its own random streams, so case 7 is the same whether 8
 * or 800 cases are generated, on one thread or many, and no clock or
 * global random state is read.  DICOM dates, times and UIDs come from the
 * seed as well.
 *
 * The anatomy is painted on the canonical LPS grid (core/vol.h), which is
 * also the grid of labels.nii.gz and lesions.nii.gz; the DICOM series is
 * written in the acquisition orientation of the chosen patient position, so
 * reading it back (dcm_series_volume) gives the same canonical grid.
 *
 * Threading: --threads N builds N cases at a time, each on its own thread
 * with its own ph_case; the manifest is written once all are done.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/core.h"
#include "core/organs.h"
#include "core/vol.h"
#include "dicom/dicom.h"
#include "tools/phantom.h"
#include "tools/tools.h"

void ph_opts_default(ph_opts *o)
{
    memset(o, 0, sizeof *o);
    o->seed = 1;
    o->count = 1;
    o->nx = o->ny = 256;
    o->thickness = 3.0;
    o->position = PH_POS_HFS;
    o->ts = DCM_TS_EXPLICIT_LE;
    o->fov = PH_FOV_RANDOM;
    o->abnormal_rate = 0.5;
    o->text = PH_TEXT_TRAIN;
    o->dicom = 1;
    o->pixel_signed = 1;
    o->threads = 1;
}

/* ---- building a case ----------------------------------------------------------------- */

/* The reconstruction grid: the body's extent over the scanned range plus a
 * margin sets the field of view, unless --spacing fixes it. */
static int make_grid(const ph_opts *o, ph_case *c)
{
    ph_anat *an = &c->an;
    ph_scene *sc = &c->sc;
    ph_rng r;
    ph_rng_init(&r, c->seed, "grid");
    double hw = 0, front = 1e9, back = -1e9;
    for (double z = an->z_lo; z <= an->z_hi + 1e-9; z += 5) {
        double w, d, yc;
        ph_outline(an, z, &w, &d, &yc);
        hw = fmax(hw, w + ph_fat_at(an, z, 1, 0));
        front = fmin(front, yc - d - ph_fat_at(an, z, 0, -1));
        back = fmax(back, yc + d + ph_fat_at(an, z, 0, 1));
    }
    /* Room for the couch under the dependent side. */
    if (an->gravity > 0)
        back += 12;
    else
        front -= 12;
    double fov = fmax(2 * hw, back - front) + 30;
    fov = ceil(fov / 10) * 10;
    fov = ph_clamp(fov, 300, 500);
    double sp = o->spacing > 0 ? o->spacing : fov / o->nx;
    sc->nx = o->nx;
    sc->ny = o->ny;
    sc->nz = (int)floor((an->z_hi - an->z_lo) / o->thickness + 1e-6) + 1;
    if (sc->nz < 2) sc->nz = 2;
    sc->sp[0] = sc->sp[1] = sp;
    sc->sp[2] = o->thickness;
    double gx = ph_range(&r, -8, 8), gy = 0.5 * (front + back) + ph_range(&r, -8, 8);
    sc->org[0] = gx - 0.5 * (sc->nx - 1) * sp;
    sc->org[1] = gy - 0.5 * (sc->ny - 1) * sp;
    sc->org[2] = an->z_lo;
    /* World coordinates: the patient near the scanner's isocentre, z the
     * couch position. */
    c->offset[0] = round((-gx + ph_range(&r, -12, 12)) * 10) / 10;
    c->offset[1] = round((-gy + ph_range(&r, -12, 12)) * 10) / 10;
    c->offset[2] = -round(ph_range(&r, 150, 1300));
    sc->an = an;
    size_t n = (size_t)sc->nx * sc->ny * sc->nz;
    sc->mat = calloc(n, 1);
    sc->lab = calloc(n, 1);
    sc->les = calloc(n, 1);
    sc->scratch = malloc(n * sizeof *sc->scratch);
    return sc->mat && sc->lab && sc->les && sc->scratch ? 0 : CTG_ENOMEM;
}

int ph_case_build(const ph_opts *o, int index, ph_case *c)
{
    memset(c, 0, sizeof *c);
    c->index = index;
    c->run_seed = o->seed;
    c->seed = ph_hash2(o->seed, (uint64_t)index);
    ph_anat_sample(o, c);
    int rc = make_grid(o, c);
    if (rc < 0) return rc;
    ph_scene *sc = &c->sc;
    ph_paint_body(sc);
    ph_paint_lungs(sc);
    ph_paint_abdomen(sc);
    ph_paint_vessels(sc);
    ph_paint_bones(sc);
    ph_lesions_paint(c);
    size_t n = (size_t)sc->nx * sc->ny * sc->nz;
    for (size_t v = 0; v < n; v++) c->count[sc->lab[v]]++;
    if ((rc = ph_synth_hu(c)) < 0) return rc;
    ph_uid(c->study_uid, sizeof c->study_uid, o->seed, index, "study");
    ph_uid(c->series_uid, sizeof c->series_uid, o->seed, index, "series");
    ph_uid(c->frame_uid, sizeof c->frame_uid, o->seed, index, "frame");
    return ph_text_build(o, c);
}

void ph_case_free(ph_case *c)
{
    if (!c) return;
    free(c->sc.mat);
    free(c->sc.lab);
    free(c->sc.les);
    free(c->sc.scratch);
    free(c->hu);
    free(c->report);
    free(c->findings_json);
    free(c->manifest_line);
    memset(c, 0, sizeof *c);
}

/* ---- writing ----------------------------------------------------------------------------- */

static void canonical_aff(const ph_case *c, double aff[3][4])
{
    memset(aff, 0, 12 * sizeof(double));
    for (int a = 0; a < 3; a++) {
        aff[a][a] = c->sc.sp[a];
        aff[a][3] = c->sc.org[a] + c->offset[a];
    }
}

static int write_text(const char *path, const char *text, char *why, size_t n)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        snprintf(why, n, "%s: cannot create", tmp);
        return CTG_EIO;
    }
    size_t l = strlen(text);
    int ok = fwrite(text, 1, l, f) == l;
    ok &= fclose(f) == 0;
    if (!ok || rename(tmp, path) != 0) {
        snprintf(why, n, "%s: write failed", path);
        remove(tmp);
        return CTG_EIO;
    }
    return 0;
}

/* The HU volume in the acquisition orientation of the patient position:
 * rows run along the first ImageOrientation vector, which points to the
 * patient's left (HFS, FFP) or right (FFS, HFP); columns run posterior
 * (supine) or anterior (prone); slices are stored head to foot as scanners
 * usually acquire them. */
static ctg_vol *acquisition_volume(const ph_case *c)
{
    const ph_scene *sc = &c->sc;
    int pos = c->an.position;
    int fi = pos == PH_POS_FFS || pos == PH_POS_HFP;
    int fj = pos == PH_POS_HFP || pos == PH_POS_FFP;
    int fk = 1;
    ctg_vol *v = ctg_vol_new(sc->nx, sc->ny, sc->nz, CTG_F32);
    if (!v) return NULL;
    float *out = v->data;
    for (int k = 0; k < sc->nz; k++) {
        int sk = fk ? sc->nz - 1 - k : k;
        for (int j = 0; j < sc->ny; j++) {
            int sj = fj ? sc->ny - 1 - j : j;
            const float *src = c->hu + ph_idx(sc, 0, sj, sk);
            float *dst = out + ph_idx(sc, 0, j, k);
            if (!fi)
                memcpy(dst, src, (size_t)sc->nx * sizeof *dst);
            else
                for (int i = 0; i < sc->nx; i++) dst[i] = src[sc->nx - 1 - i];
        }
    }
    double aff[3][4];
    canonical_aff(c, aff);
    int fl[3] = {fi, fj, fk}, nn[3] = {sc->nx, sc->ny, sc->nz};
    for (int a = 0; a < 3; a++) {
        if (!fl[a]) continue;
        for (int r = 0; r < 3; r++) {
            aff[r][3] += aff[r][a] * (nn[a] - 1);
            aff[r][a] = -aff[r][a];
        }
    }
    memcpy(v->aff, aff, sizeof aff);
    return v;
}

static const char *const pos_names[] = {"HFS", "FFS", "HFP", "FFP"};

static int write_dicom(const ph_opts *o, const ph_case *c, const char *dir, char *why, size_t n)
{
    const ph_anat *an = &c->an;
    ph_rng r;
    ph_rng_init(&r, c->seed, "dicom");
    char date[16], birth[16], time[16], name[64], pid[32], acc[20], desc[80], sdesc[80];
    int days = ph_int(&r, 4380);
    ph_date(date, sizeof date, days);
    ph_date(birth, sizeof birth, days - an->age * 365 - ph_int(&r, 365));
    int secs = 7 * 3600 + ph_int(&r, 12 * 3600);
    snprintf(time, sizeof time, "%02d%02d%02d", secs / 3600, secs / 60 % 60, secs % 60);
    snprintf(name, sizeof name, "PHANTOM^CASE%04d", c->index);
    snprintf(pid, sizeof pid, "PH%08llX", (unsigned long long)(c->seed >> 32));
    snprintf(acc, sizeof acc, "PH%06d", ph_int(&r, 1000000));
    static const char *const fovtxt[] = {"CT CHEST", "CT ABDOMEN", "CT CHEST ABDOMEN PELVIS"};
    static const char *const body[] = {"CHEST", "ABDOMEN", "CHESTABDPELVIS"};
    static const char *const phtxt[] = {"non-contrast", "arterial", "portal venous"};
    snprintf(desc, sizeof desc, "%s", fovtxt[an->fov]);
    snprintf(sdesc, sizeof sdesc, "Axial %.1f mm %s (phantom)", o->thickness, phtxt[an->phase]);
    dcm_ct_meta m;
    memset(&m, 0, sizeof m);
    m.patient_name = name;
    m.patient_id = pid;
    m.patient_birth_date = birth;
    m.patient_sex = an->male ? "M" : "F";
    m.study_uid = c->study_uid;
    m.series_uid = c->series_uid;
    m.frame_of_ref_uid = c->frame_uid;
    m.study_date = date;
    m.study_time = time;
    m.creation_date = date; /* not the clock: same seed, same bytes */
    m.creation_time = time;
    m.accession = acc;
    m.study_desc = desc;
    m.series_desc = sdesc;
    m.body_part = body[an->fov];
    m.patient_position = pos_names[an->position];
    m.series_number = 2;
    m.slice_thickness = o->thickness;
    m.pixel_signed = o->pixel_signed;
    m.transfer_syntax = o->ts;
    m.enhanced = o->enhanced;
    ctg_vol *v = acquisition_volume(c);
    if (!v) {
        snprintf(why, n, "out of memory");
        return CTG_ENOMEM;
    }
    int rc = dcm_write_ct_series(dir, v, &m, why, n);
    ctg_vol_free(v);
    return rc;
}

int ph_case_write(const ph_opts *o, ph_case *c, char *why, size_t n)
{
    char dir[4096], path[4200];
    snprintf(dir, sizeof dir, "%s/case_%04d", o->out, c->index);
    int rc = ctg_mkdirs(dir);
    if (rc < 0) {
        snprintf(why, n, "%s: %s", dir, ctg_strerror(rc));
        return rc;
    }
    ph_scene *sc = &c->sc;
    ctg_vol v;
    memset(&v, 0, sizeof v);
    v.nx = sc->nx, v.ny = sc->ny, v.nz = sc->nz;
    canonical_aff(c, v.aff);
    v.dtype = CTG_U8;
    v.data = sc->lab;
    snprintf(path, sizeof path, "%s/labels.nii.gz", dir);
    if ((rc = ctg_nifti_write(path, &v, why, n)) < 0) return rc;
    v.data = sc->les;
    snprintf(path, sizeof path, "%s/lesions.nii.gz", dir);
    if ((rc = ctg_nifti_write(path, &v, why, n)) < 0) return rc;
    if (o->nifti || !o->dicom) {
        size_t nv = (size_t)sc->nx * sc->ny * sc->nz;
        int16_t *s16 = malloc(nv * sizeof *s16);
        if (!s16) {
            snprintf(why, n, "out of memory");
            return CTG_ENOMEM;
        }
        for (size_t i = 0; i < nv; i++) s16[i] = (int16_t)lrintf(c->hu[i]);
        v.dtype = CTG_I16;
        v.data = s16;
        snprintf(path, sizeof path, "%s/ct.nii.gz", dir);
        rc = ctg_nifti_write(path, &v, why, n);
        free(s16);
        if (rc < 0) return rc;
    }
    if (o->dicom) {
        snprintf(path, sizeof path, "%s/dicom", dir);
        if ((rc = write_dicom(o, c, path, why, n)) < 0) return rc;
    }
    snprintf(path, sizeof path, "%s/findings.json", dir);
    if ((rc = write_text(path, c->findings_json, why, n)) < 0) return rc;
    snprintf(path, sizeof path, "%s/report.txt", dir);
    return write_text(path, c->report, why, n);
}

/* ---- the command ------------------------------------------------------------------------ */

static int usage(FILE *f)
{
    fprintf(f,
            "usage: ctglip phantom --seed S --count N --out DIR [options]\n"
            "\n"
            "Writes N synthetic CT studies with ground truth to DIR/case_NNNN/ (dicom/,\n"
            "labels.nii.gz in TotalSegmentator v2 ids, lesions.nii.gz, findings.json,\n"
            "report.txt) and DIR/manifest.jsonl.  The same seed and options give the\n"
            "same bytes; case i does not depend on N.\n"
            "\n"
            "  --seed S            run seed (default 1)\n"
            "  --count N           number of cases (default 1)\n"
            "  --start I           index of the first case (default 0)\n"
            "  --out DIR           output folder (required)\n"
            "  --matrix NX[xNY]    in-plane matrix (default 256; 512 works too)\n"
            "  --spacing MM        in-plane pixel spacing (default: field of view / matrix)\n"
            "  --thickness MM      slice spacing and thickness (default 3)\n"
            "  --position P        HFS, FFS, HFP, FFP or random (default HFS)\n"
            "  --ts T              explicit, implicit, jpeg-lossless, jpeg-ls or rle\n"
            "                      (default explicit)\n"
            "  --enhanced          one multi-frame Enhanced CT object instead of slices\n"
            "  --fov F             chest, abdomen, cap (chest-abdomen-pelvis) or random\n"
            "                      (default random)\n"
            "  --abnormal-rate R   probability that a case has findings (default 0.5)\n"
            "  --abnormal LIST     every case gets exactly these findings (comma-separated,\n"
            "                      where the field of view shows the organ): hepatic_cyst,\n"
            "                      hepatic_mass, fatty_liver, hepatomegaly, splenomegaly,\n"
            "                      splenic_lesion, renal_cyst, kidney_stone, hydronephrosis,\n"
            "                      gallstone, lung_nodule, pleural_effusion, emphysema,\n"
            "                      aortic_aneurysm, aortic_calcification, pancreatic_mass,\n"
            "                      adrenal_nodule, cardiomegaly\n"
            "  --text T            phrasings: train, heldout or all (default train)\n"
            "  --nifti             also write ct.nii.gz (HU, int16, canonical grid)\n"
            "  --no-dicom          skip the DICOM series (implies ct.nii.gz)\n"
            "  --unsigned          unsigned pixels with rescale intercept -1024\n"
            "                      (default: signed, intercept 0)\n"
            "  --threads N         cases built in parallel (default 1)\n"
            "  --quiet             no progress lines\n");
    return 2;
}

static int parse_choice(const char *v, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (!strcasecmp(v, names[i])) return i;
    return -1;
}

typedef struct run {
    const ph_opts *o;
    int start, next, failed;
    char **lines;
    pthread_mutex_t mu;
} run;

static void *worker(void *arg)
{
    run *R = arg;
    ph_case *c = calloc(1, sizeof *c);
    if (!c) {
        pthread_mutex_lock(&R->mu);
        R->failed = 1;
        pthread_mutex_unlock(&R->mu);
        return NULL;
    }
    for (;;) {
        pthread_mutex_lock(&R->mu);
        int i = R->failed ? R->o->count : R->next++;
        pthread_mutex_unlock(&R->mu);
        if (i >= R->o->count) break;
        double t0 = ctg_mono();
        char why[1024] = "";
        int idx = R->start + i;
        int rc = ph_case_build(R->o, idx, c);
        if (rc == 0) rc = ph_case_write(R->o, c, why, sizeof why);
        pthread_mutex_lock(&R->mu);
        if (rc < 0) {
            fprintf(stderr, "ctglip phantom: case_%04d: %s\n", idx, why[0] ? why : ctg_strerror(rc));
            R->failed = 1;
        } else {
            R->lines[i] = strdup(c->manifest_line);
            if (!R->o->quiet) {
                static const char *const fov[] = {"chest", "abdomen", "cap"};
                printf("case_%04d  %-7s %s  %dx%dx%d  %d finding%s%s", idx, fov[c->an.fov],
                       pos_names[c->an.position], c->sc.nx, c->sc.ny, c->sc.nz, c->nf,
                       c->nf == 1 ? "" : "s", c->nf ? ":" : "");
                for (int f = 0; f < c->nf; f++)
                    if (f == 0 || c->f[f].group_id != c->f[f - 1].group_id)
                        printf(" %s", ph_abn_name(c->f[f].abn));
                printf("  (%.2f s)\n", ctg_mono() - t0);
                fflush(stdout);
            }
        }
        pthread_mutex_unlock(&R->mu);
        ph_case_free(c);
    }
    free(c);
    return NULL;
}

int ctg_phantom_main(int argc, char **argv)
{
    ph_opts o;
    ph_opts_default(&o);
    int start = 0;
    static const char *const pos[] = {"HFS", "FFS", "HFP", "FFP", "random"};
    static const char *const ts[] = {"explicit", "implicit", "jpeg-lossless", "jpeg-ls", "rle"};
    static const char *const fov[] = {"chest", "abdomen", "cap", "random"};
    static const char *const text[] = {"train", "heldout", "all"};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        int val = 1; /* the option takes a value */
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--enhanced")) {
            o.enhanced = 1, val = 0;
        } else if (!strcmp(a, "--nifti")) {
            o.nifti = 1, val = 0;
        } else if (!strcmp(a, "--no-dicom")) {
            o.dicom = 0, val = 0;
        } else if (!strcmp(a, "--unsigned")) {
            o.pixel_signed = 0, val = 0;
        } else if (!strcmp(a, "--quiet")) {
            o.quiet = 1, val = 0;
        } else if (!v) {
            fprintf(stderr, "ctglip phantom: %s needs a value\n", a);
            return usage(stderr);
        } else if (!strcmp(a, "--seed")) {
            o.seed = strtoull(v, &end, 0);
        } else if (!strcmp(a, "--count")) {
            o.count = (int)strtol(v, &end, 10);
            if (o.count < 1 || o.count > 1000000) end = NULL;
        } else if (!strcmp(a, "--start")) {
            start = (int)strtol(v, &end, 10);
            if (start < 0 || start > 9999999) end = NULL;
        } else if (!strcmp(a, "--out")) {
            o.out = v, end = (char *)"";
        } else if (!strcmp(a, "--matrix")) {
            o.nx = o.ny = (int)strtol(v, &end, 10);
            if (end && (*end == 'x' || *end == 'X')) o.ny = (int)strtol(end + 1, &end, 10);
            if (o.nx < 16 || o.ny < 16 || o.nx > 2048 || o.ny > 2048) end = NULL;
        } else if (!strcmp(a, "--spacing")) {
            o.spacing = strtod(v, &end);
            if (!(o.spacing > 0.05 && o.spacing < 20)) end = NULL;
        } else if (!strcmp(a, "--thickness")) {
            o.thickness = strtod(v, &end);
            if (!(o.thickness >= 0.5 && o.thickness <= 20)) end = NULL;
        } else if (!strcmp(a, "--position")) {
            if ((o.position = parse_choice(v, pos, 5)) >= 0) end = (char *)"";
        } else if (!strcmp(a, "--ts")) {
            if ((o.ts = parse_choice(v, ts, 5)) >= 0) end = (char *)"";
        } else if (!strcmp(a, "--fov")) {
            if ((o.fov = parse_choice(v, fov, 4)) >= 0) end = (char *)"";
        } else if (!strcmp(a, "--text")) {
            if ((o.text = parse_choice(v, text, 3)) >= 0) end = (char *)"";
        } else if (!strcmp(a, "--abnormal-rate")) {
            o.abnormal_rate = strtod(v, &end);
            if (!(o.abnormal_rate >= 0 && o.abnormal_rate <= 1)) end = NULL;
        } else if (!strcmp(a, "--abnormal")) {
            char buf[512];
            snprintf(buf, sizeof buf, "%s", v);
            end = (char *)"";
            char *save = NULL;
            for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                int ab = ph_abn_parse(tok);
                if (ab < 0) end = NULL;
                else o.force |= 1u << ab;
            }
            if (!o.force) end = NULL;
        } else if (!strcmp(a, "--threads")) {
            o.threads = (int)strtol(v, &end, 10);
            if (o.threads < 1 || o.threads > 256) end = NULL;
        } else {
            fprintf(stderr, "ctglip phantom: unknown option %s\n", a);
            return usage(stderr);
        }
        if (val) {
            if (!end || *end) {
                fprintf(stderr, "ctglip phantom: bad value '%s' for %s\n", v, a);
                return usage(stderr);
            }
            i++;
        }
    }
    if (!o.out) {
        fprintf(stderr, "ctglip phantom: --out DIR is required\n");
        return usage(stderr);
    }
    int rc = ctg_mkdirs(o.out);
    if (rc < 0) {
        fprintf(stderr, "ctglip phantom: %s: %s\n", o.out, ctg_strerror(rc));
        return 1;
    }
    if (o.dicom) {
        dcm_global_init();
        dcm_quiet();
    }
    run R;
    memset(&R, 0, sizeof R);
    R.o = &o;
    R.start = start;
    R.lines = calloc((size_t)o.count, sizeof *R.lines);
    pthread_mutex_init(&R.mu, NULL);
    int nt = o.threads < o.count ? o.threads : o.count;
    pthread_t th[256];
    int started = 0;
    for (int t = 1; t < nt; t++)
        if (pthread_create(&th[started], NULL, worker, &R) == 0) started++;
    worker(&R);
    for (int t = 0; t < started; t++) pthread_join(th[t], NULL);
    pthread_mutex_destroy(&R.mu);

    if (!R.failed) {
        char path[4200];
        snprintf(path, sizeof path, "%s/manifest.jsonl", o.out);
        size_t len = 0;
        for (int i = 0; i < o.count; i++) len += strlen(R.lines[i]) + 1;
        char *all = malloc(len + 1), *w = all;
        if (!all) {
            R.failed = 1;
        } else {
            for (int i = 0; i < o.count; i++) w += sprintf(w, "%s\n", R.lines[i]);
            char why[512];
            if (write_text(path, all, why, sizeof why) < 0) {
                fprintf(stderr, "ctglip phantom: %s\n", why);
                R.failed = 1;
            }
            free(all);
        }
    }
    for (int i = 0; i < o.count; i++) free(R.lines[i]);
    free(R.lines);
    return R.failed ? 1 : 0;
}
