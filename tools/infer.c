/*
 * infer.c - `ctglip infer PATH`: one study through the model without the
 * daemon, for an admin checking a model by hand.  PATH is a DICOM folder
 * (or files) or a NIfTI CT volume.  Prints the findings table; for DICOM
 * input writes the SEG and the TID 1500 SR the daemon would send (same
 * code: daemon/report.c); for NIfTI input writes the organ label map.
 *
 * Single-threaded command-line code (the model's ops use OpenMP threads).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/analysis.h"
#include "core/core.h"
#include "core/ops.h"
#include "core/text.h"
#include "daemon/daemon.h"
#include "dicom/dicom.h"
#include "tools/tools.h"
#include "cuda/cu.h"
#include "cuda/cuops.h"

static int usage(void)
{
    fprintf(stderr,
            "usage: ctglip infer [--model M] [--findings F] [--vocab V] [--text train|heldout|all]\n"
            "                    [--overlap F] [--threads N] [--out DIR]\n"
            "                    [--device cpu|cuda|auto] [--gpu N] [--precision bf16|fp32] PATH...\n"
            "  PATH: a DICOM study (folders or files) or one NIfTI CT volume (.nii, .nii.gz).\n"
            "  Prints the findings; DICOM input: writes DIR/seg.dcm and DIR/sr.dcm;\n"
            "  NIfTI input: writes DIR/labels.nii.gz.  DIR defaults to ./infer-out.\n"
            "  --device: where the model runs (auto: the GPU when one is usable; cpu);\n"
            "  --gpu: which one (0); --precision: activations on the GPU (bf16).\n"
            "  Defaults: models/default.ctglip, etc/findings.conf, models/glove100.vocab\n"
            "  (found beside the program or under $CTGLIP_HOME).\n");
    return 2;
}

static int is_nifti(const char *p)
{
    size_t n = strlen(p);
    return (n > 4 && !strcmp(p + n - 4, ".nii")) || (n > 7 && !strcmp(p + n - 7, ".nii.gz"));
}

int ctg_infer_main(int argc, char **argv)
{
    char model[4096], findings[4096], vocab[4096];
    an_opts ao = {
        .model = ctg_data_path("models/default.ctglip", model, sizeof model),
        .findings = ctg_data_path("etc/findings.conf", findings, sizeof findings),
        .vocab = ctg_data_path(TXT_GLOVE_DEFAULT, vocab, sizeof vocab),
        .text = -1,
        .overlap = 0.25f,
    };
    const char *out = "infer-out";
    int threads = 0, first = -1, gpu = 0, bf16 = 1;
    const char *device = "cpu";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-') {
            first = i;
            break;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return usage(), 0;
        if (i + 1 >= argc) return usage();
        const char *v = argv[++i];
        char *end;
        if (!strcmp(a, "--model")) ao.model = v;
        else if (!strcmp(a, "--findings")) ao.findings = v;
        else if (!strcmp(a, "--vocab")) ao.vocab = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--text")) {
            if ((ao.text = zs_text_parse(v)) < 0) return usage();
        } else if (!strcmp(a, "--overlap")) {
            ao.overlap = strtof(v, &end);
            if (end == v || *end || !(ao.overlap >= 0 && ao.overlap < 1)) return usage();
        } else if (!strcmp(a, "--device")) {
            if (strcmp(v, "cpu") && strcmp(v, "cuda") && strcmp(v, "auto")) return usage();
            device = v;
        } else if (!strcmp(a, "--gpu")) {
            gpu = (int)strtol(v, &end, 10);
            if (end == v || *end || gpu < 0) return usage();
        } else if (!strcmp(a, "--precision")) {
            if (strcmp(v, "bf16") && strcmp(v, "fp32")) return usage();
            bf16 = !strcmp(v, "bf16");
        } else if (!strcmp(a, "--threads")) {
            threads = (int)strtol(v, &end, 10);
            if (end == v || *end || threads < 1) return usage();
        } else {
            fprintf(stderr, "ctglip infer: unknown option %s\n", a);
            return usage();
        }
    }
    if (first < 0) return usage();
    if (threads) op_set_threads(threads);
    dcm_global_init();

    char why[1024] = "";
    an_engine *e = NULL;
    int status = 1;
    ctg_file_list files = {0};
    ctg_vol *vol = NULL;
    an_result res;
    memset(&res, 0, sizeof res);
    cu_ctx *gc = NULL;
    an_ctx *ctx = NULL;
    double t0 = ctg_mono();
    if (an_engine_open(&ao, &e, why, sizeof why) < 0) {
        fprintf(stderr, "ctglip infer: %s\n", why);
        return 1;
    }
    char name[256];
    ctg_model_name(ao.model, name, sizeof name);
    fprintf(stderr, "ctglip infer: %s (%.16s) loaded in %.2f s\n", name, an_model_identity(e),
            ctg_mono() - t0);
    /* The GPU: cuda insists, auto takes it when it opens.  (The test hook
     * CTGLIP_CUDA_EMULATE=1 runs the GPU code path on the host.) */
    const char *emu = getenv("CTGLIP_CUDA_EMULATE");
    int dev = emu && !strcmp(emu, "1") ? CU_EMULATE : gpu;
    if (strcmp(device, "cpu") != 0 && (dev == CU_EMULATE || cu_device_count() > gpu)) {
        double tg = ctg_mono();
        if (cu_ctx_new(dev, &gc, why, sizeof why) < 0 ||
            an_ctx_new_gpu(e, gc, bf16, &ctx, why, sizeof why) < 0) {
            if (!strcmp(device, "cuda")) {
                fprintf(stderr, "ctglip infer: GPU %d: %s\n", gpu, why);
                goto done;
            }
            fprintf(stderr, "ctglip infer: GPU %d not usable (%s); on the CPU\n", gpu, why);
            an_ctx_free(ctx);
            ctx = NULL;
            cu_ctx_free(gc);
            gc = NULL;
        } else {
            char dn[200] = "emulated on the host";
            if (dev >= 0 && cu_device_name(dev, dn, (int)sizeof dn) < 0) dn[0] = 0;
            fprintf(stderr, "ctglip infer: on GPU %d %s, %s (ready in %.2f s)\n", gpu, dn,
                    bf16 ? "bf16" : "fp32", ctg_mono() - tg);
        }
    } else if (!strcmp(device, "cuda")) {
        fprintf(stderr, "ctglip infer: --device cuda, but there is no GPU %d (%d found%s)\n", gpu,
                cu_device_count(), cu_built_with_cuda() ? "" : "; built without CUDA");
        goto done;
    }

    if (argc - first == 1 && is_nifti(argv[first])) {
        if (ctg_nifti_read(argv[first], CTG_F32, &vol, why, sizeof why) < 0 ||
            ctg_vol_canonical(vol) < 0) {
            fprintf(stderr, "ctglip infer: %s: %s\n", argv[first], why[0] ? why : "bad volume");
            goto done;
        }
        if (an_run(e, ctx, vol, &res, why, sizeof why) < 0) {
            fprintf(stderr, "ctglip infer: %s\n", why);
            goto done;
        }
        ctg_report_print(stdout, &res);
        char path[4200];
        snprintf(path, sizeof path, "%s/labels.nii.gz", out);
        if (ctg_mkdirs(out) < 0 || ctg_nifti_write(path, res.labels, why, sizeof why) < 0) {
            fprintf(stderr, "ctglip infer: %s: %s\n", path, why[0] ? why : "cannot write");
            goto done;
        }
        fprintf(stderr, "ctglip infer: wrote %s\n", path);
        status = 0;
        goto done;
    }

    for (int i = first; i < argc; i++)
        if (ctg_collect_files(&files, argv[i], 0) < 0) {
            fprintf(stderr, "ctglip infer: cannot read %s\n", argv[i]);
            goto done;
        }
    if (!files.n) {
        fprintf(stderr, "ctglip infer: no files\n");
        goto done;
    }
    ctg_analysis an;
    ctg_analyze_opts o = {.model_name = name, .dir = out, .predecessor_sr = NULL};
    if (ctg_analyze_study(e, ctx, (const char *const *)files.v, (int)files.n, &o, &an, why,
                          sizeof why) < 0) {
        fprintf(stderr, "ctglip infer: %s\n", why);
        goto done;
    }
    printf("series %s (%d slices, %s)\n", an.info.series_uid, an.info.nslices,
           an.info.series_desc[0] ? an.info.series_desc : "no description");
    ctg_report_print(stdout, &an.res);
    fprintf(stderr,
            "ctglip infer: wrote %s and %s; load %.2f s, resample %.2f s, model %.2f s, "
            "measure %.2f s, score %.3f s, SEG %.2f s, SR %.2f s\n",
            an.rep.seg_path, an.rep.sr_path, an.t_load, an.res.t_resample, an.res.t_model,
            an.res.t_measure, an.res.t_score, an.rep.t_seg, an.rep.t_sr);
    ctg_analysis_free(&an);
    status = 0;
done:
    an_ctx_free(ctx);
    cu_ctx_free(gc);
    an_result_free(&res);
    ctg_vol_free(vol);
    ctg_file_list_free(&files);
    an_engine_close(e);
    return status;
}
