/*
 * report.c - from an analysed study to what the radiologist reads: the
 * DICOM SEG of the organs and the TID 1500 SR of their findings (written by
 * dicom/seg.cc and dicom/sr.cc), plus the findings table that `ctglip
 * infer` prints and the worker logs.  Shared by ctglipd's workers and the
 * `ctglip infer` command, so both write the same objects.
 *
 * Threading: no state of its own; callers run it on their own thread.
 */
#include "daemon.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "core/organs.h"

/* The coding scheme of findings that have no SNOMED CT code in the list. */
#define CTG_PRIVATE_SCHEME "99CTGLIP"

void ctg_model_name(const char *model_path, char *out, size_t n)
{
    const char *b = strrchr(model_path, '/');
    b = b ? b + 1 : model_path;
    size_t len = strlen(b);
    const char *dot = strrchr(b, '.');
    if (dot && dot != b) len = (size_t)(dot - b);
    snprintf(out, n, "ctglip CT-GLIP %.*s", (int)len, b);
}

int ctg_report_write(const ctg_report_req *q, ctg_report_out *out, char *why, size_t n)
{
    const an_result *r = q->res;
    memset(out, 0, sizeof *out);
    int rc = ctg_mkdirs(q->dir);
    if (rc < 0) {
        snprintf(why, n, "cannot create %s: %s", q->dir, ctg_strerror(rc));
        return rc;
    }
    char devuid[65];
    if ((rc = dcm_uid_from_hex(r->identity, devuid)) < 0) {
        snprintf(why, n, "model identity '%s' is not a checksum", r->identity);
        return rc;
    }
    dcm_equipment eq = {
        .manufacturer = "ctglip",
        .software_version = CTG_VERSION,
        .model_name = q->model_name,
        .model_version = r->identity,
        .device_uid = devuid,
        .institution = NULL,
        .creation_date = q->creation_date,
        .creation_time = q->creation_time,
    };

    /* Segments and SR groups, one per organ; tracking UIDs shared. */
    rc = CTG_ENOMEM;
    int no = r->norgans > 0 ? r->norgans : 0, nf = 0;
    for (int i = 0; i < no; i++) nf += r->organs[i].nfindings > 0 ? r->organs[i].nfindings : 0;
    size_t cno = no ? (size_t)no : 1, cnf = nf ? (size_t)nf : 1;
    dcm_seg_segment *seg = calloc(cno, sizeof *seg);
    dcm_sr_organ *org = calloc(cno, sizeof *org);
    dcm_sr_finding *fnd = calloc(cnf, sizeof *fnd);
    char (*tuid)[65] = calloc(cno, sizeof *tuid);
    char (*nearest)[64] = calloc(cno, sizeof *nearest);
    if (!seg || !org || !fnd || !tuid || !nearest) {
        snprintf(why, n, "out of memory");
        goto done;
    }
    int fi = 0;
    for (int i = 0; i < no; i++) {
        const an_organ *o = &r->organs[i];
        const ctg_organ *g = o->organ;
        ctg_uid_random(tuid[i]);
        seg[i].label = o->id;
        seg[i].label_name = g->name;
        seg[i].category = (dcm_code){g->category_code, "SCT", g->category_meaning};
        seg[i].type = (dcm_code){g->type_code, "SCT", g->type_meaning};
        if (g->modifier_code[0])
            seg[i].type_modifier = (dcm_code){g->modifier_code, "SCT", g->modifier_meaning};
        memcpy(seg[i].rgb, g->rgb, 3);
        seg[i].tracking_id = g->name;
        seg[i].tracking_uid = tuid[i];

        org[i].segment_number = i + 1;
        org[i].tracking_id = g->name;
        org[i].tracking_uid = tuid[i];
        org[i].site = seg[i].type;
        org[i].laterality = seg[i].type_modifier;
        org[i].volume_ml = o->volume_ml;
        org[i].mean_hu = o->mean_hu;
        org[i].low_confidence = o->low_confidence;
        if (o->low_confidence) {
            const ctg_organ *t = ctg_organ_get(o->top1_id);
            snprintf(nearest[i], sizeof nearest[i], "%s", t ? t->name : "?");
            org[i].nearest = nearest[i];
        }
        org[i].findings = fnd + fi;
        org[i].nfindings = o->nfindings;
        for (int j = 0; j < o->nfindings; j++, fi++) {
            const an_finding *a = &o->findings[j];
            const zs_finding *z = a->f;
            if (z->code[0])
                fnd[fi].finding = (dcm_code){z->code, "SCT", z->meaning[0] ? z->meaning : z->display};
            else
                fnd[fi].finding = (dcm_code){z->key, CTG_PRIVATE_SCHEME, z->display};
            fnd[fi].present = a->present;
            fnd[fi].probability = a->prob;
            fnd[fi].threshold = a->threshold;
        }
    }

    double t0 = ctg_mono();
    snprintf(out->seg_path, sizeof out->seg_path, "%s/seg.dcm", q->dir);
    dcm_seg_input si = {
        .src = q->src,
        .labels = r->labels,
        .nsegments = no,
        .segments = seg,
        .eq = &eq,
        .series_uid = NULL,
        .series_number = 9901,
        .series_desc = "ctglip organ segmentation",
    };
    if (no == 0) {
        snprintf(why, n, "the model found no organ in the volume");
        rc = CTG_EREJECT;
        goto done;
    }
    char sub[512] = "";
    if ((rc = dcm_write_seg(&si, out->seg_path, out->seg_uid, sub, sizeof sub)) < 0) {
        snprintf(why, n, "SEG: %s", sub);
        goto done;
    }
    double t1 = ctg_mono();
    out->t_seg = t1 - t0;
    snprintf(out->sr_path, sizeof out->sr_path, "%s/sr.dcm", q->dir);
    dcm_sr_input ri = {
        .src = q->src,
        .seg_path = out->seg_path,
        .norgans = no,
        .organs = org,
        .eq = &eq,
        .predecessor_path = q->predecessor_sr,
        .series_uid = NULL,
        .series_number = 9902,
        .series_desc = "ctglip findings",
    };
    if ((rc = dcm_write_sr(&ri, out->sr_path, out->sr_uid, sub, sizeof sub)) < 0) {
        snprintf(why, n, "SR: %s", sub);
        goto done;
    }
    out->t_sr = ctg_mono() - t1;
    rc = 0;
done:
    free(seg);
    free(org);
    free(fnd);
    free(tuid);
    free(nearest);
    return rc;
}

void ctg_report_print(FILE *f, const an_result *r)
{
    fprintf(f, "model %.16s, run at %.3gx%.3gx%.3g mm on %dx%dx%d voxels\n", r->identity,
            r->spacing[0], r->spacing[1], r->spacing[2], r->grid[0], r->grid[1], r->grid[2]);
    fprintf(f, "%-26s %10s %8s  %-8s %s\n", "organ", "volume mL", "mean HU", "check",
            "findings (probability / threshold)");
    for (int i = 0; i < r->norgans; i++) {
        const an_organ *o = &r->organs[i];
        char check[96];
        if (o->low_confidence) {
            const ctg_organ *t = ctg_organ_get(o->top1_id);
            snprintf(check, sizeof check, "LOW (looks like %s)", t ? t->name : "?");
        } else {
            snprintf(check, sizeof check, "ok");
        }
        fprintf(f, "%-26s %10.1f %8.1f  %-8s", o->organ->name, o->volume_ml, o->mean_hu, check);
        int any = 0;
        for (int j = 0; j < o->nfindings; j++) {
            const an_finding *a = &o->findings[j];
            fprintf(f, "%s%s%s %.2f/%.2f", any++ ? ", " : " ", a->present ? "PRESENT " : "",
                    a->f->key, (double)a->prob, (double)a->threshold);
        }
        if (!o->nfindings) fputs(" -", f);
        fputc('\n', f);
    }
    fprintf(f, "%d organ(s), %d finding(s) present\n", r->norgans, an_result_positives(r));
}

int ctg_analyze_study(an_engine *e, an_ctx *c, const char *const *files, int nfiles,
                      const ctg_analyze_opts *o, ctg_analysis *out, char *why, size_t n)
{
    memset(out, 0, sizeof *out);
    double t0 = ctg_mono();
    dcm_vol_opts vo = {0};
    int rc = dcm_series_volume(files, (size_t)nfiles, &vo, &out->vol, &out->info, why, n);
    if (rc < 0) return rc;
    out->t_load = ctg_mono() - t0;
    /* The source series: the files the volume came from. */
    out->src_files = calloc((size_t)nfiles, sizeof *out->src_files);
    if (!out->src_files) {
        snprintf(why, n, "out of memory");
        ctg_analysis_free(out);
        return CTG_ENOMEM;
    }
    for (int i = 0; i < nfiles; i++) {
        ctg_instance inst;
        char sub[256];
        if (dcm_read_instance(files[i], &inst, sub, sizeof sub) == 0 &&
            strcmp(inst.series_uid, out->info.series_uid) == 0)
            out->src_files[out->nsrc++] = files[i];
    }
    double t1 = ctg_mono();
    if ((rc = an_run(e, c, out->vol, &out->res, why, n)) < 0) {
        ctg_analysis_free(out);
        return rc;
    }
    out->t_analyze = ctg_mono() - t1;
    dcm_source src = {out->src_files, out->nsrc, &out->info};
    ctg_report_req q = {
        .res = &out->res,
        .src = &src,
        .model_name = o->model_name,
        .dir = o->dir,
        .predecessor_sr = o->predecessor_sr,
        .creation_date = NULL,
        .creation_time = NULL,
    };
    if ((rc = ctg_report_write(&q, &out->rep, why, n)) < 0) {
        ctg_analysis_free(out);
        return rc;
    }
    return 0;
}

void ctg_analysis_free(ctg_analysis *a)
{
    if (!a) return;
    an_result_free(&a->res);
    ctg_vol_free(a->vol);
    dcm_vol_info_free(&a->info);
    free(a->src_files);
    memset(a, 0, sizeof *a);
}
