/*
 * test_gpu.c - the GPU backend seen from its users: the communicators of
 * data-parallel training (cuda/cucomm.h), the trainer on a GPU and over
 * several ranks, study analysis on a GPU, and the daemon's [model] device
 * settings.
 *
 * CI has no GPU.  What runs there uses the host emulation of the GPU code
 * path (CU_EMULATE contexts; for the programs the test hook
 * CTGLIP_CUDA_EMULATE=1), which checks the plumbing - uploads, downloads,
 * checkpoints, gradients through host memory - against the CPU path.  The
 * tests that need a real device (bf16 inference on a GPU, NCCL between
 * two GPUs) skip with "no GPU" elsewhere.  The daemon's GPU workers are
 * covered end to end by tests/it/gpu_worker.sh.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/analysis.h"
#include "core/core.h"
#include "core/model.h"
#include "core/text.h"
#include "cuda/cu.h"
#include "cuda/cucomm.h"
#include "cuda/cuops.h"
#include "daemon/daemon.h"
#include "tests.h"

/* ---- the host communicator --------------------------------------------------------- */

/* Value i of rank r's array: small integers, so every sum is exact. */
static float val(int r, size_t i) { return (float)((int)(i % 97) - 40 + 3 * r); }

/* One rank of test_comm_host: returns its exit status. */
static int comm_rank(const char *dir, int rank, int world)
{
    char why[256] = "";
    cu_comm *cm = NULL;
    if (cu_comm_open(dir, rank, world, 20, &cm, why, sizeof why) != 0) {
        fprintf(stderr, "rank %d: %s\n", rank, why);
        return 1;
    }
    if (cu_comm_rank(cm) != rank || cu_comm_world(cm) != world ||
        strcmp(cu_comm_backend(cm), "host") != 0)
        return 2;
    /* Sizes below the rank count, odd ones, and one far beyond a socket
     * buffer (each transfer then takes many rounds of poll). */
    static const size_t sizes[] = {1, 2, 3, 7, 1000, 3 * 1000 * 1000 + 1};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        size_t n = sizes[k];
        float *x = malloc(sizeof(float) * n);
        if (!x) return 3;
        for (size_t i = 0; i < n; i++) x[i] = val(rank, i);
        cu_comm_op op = k % 2 ? CU_COMM_MEAN : CU_COMM_SUM;
        if (cu_comm_allreduce(cm, x, n, op) != 0) {
            fprintf(stderr, "rank %d: %s\n", rank, cu_comm_error(cm));
            return 4;
        }
        for (size_t i = 0; i < n; i++) {
            float want = 0;
            for (int r = 0; r < world; r++) want += val(r, i);
            if (op == CU_COMM_MEAN) want *= 1.0f / (float)world;
            if (x[i] != want) {
                fprintf(stderr, "rank %d, n %zu, [%zu]: %g, want %g\n", rank, n, i, x[i], want);
                return 5;
            }
        }
        free(x);
    }
    char msg[64] = "";
    if (rank == 0) snprintf(msg, sizeof msg, "from rank 0");
    if (cu_comm_broadcast(cm, msg, sizeof msg) != 0 || strcmp(msg, "from rank 0") != 0) return 6;
    if (cu_comm_barrier(cm) != 0) return 7;
    /* The last rank leaves; the others' next call fails at once (not
     * after the timeout) and says why. */
    if (rank == world - 1) {
        cu_comm_close(cm);
        return 0;
    }
    float y = 1;
    double t0 = ctg_mono();
    int rc = cu_comm_allreduce(cm, &y, 1, CU_COMM_SUM);
    printf("rank %d after the last one left: %d %s (%.2f s)\n", rank, rc, cu_comm_error(cm),
           ctg_mono() - t0);
    if (rc != CTG_EIO || ctg_mono() - t0 > 10 || !strstr(cu_comm_error(cm), "exit")) return 8;
    cu_comm_close(cm);
    return 0;
}

/* Three processes: sums and means of arrays of every size arrive exactly
 * (and so identically) on every rank, a broadcast and a barrier work, and
 * a rank that exits makes the others fail with a reason. */
static int test_comm_host(void)
{
    const int W = 3;
    char dir[] = "/tmp/ctglip-test-comm.XXXXXX";
    CHECK(mkdtemp(dir));
    pid_t pid[3];
    for (int r = 0; r < W; r++) {
        pid[r] = fork();
        CHECK(pid[r] >= 0);
        if (pid[r] == 0) _exit(comm_rank(dir, r, W));
    }
    int bad = 0;
    for (int r = 0; r < W; r++) {
        int st;
        CHECK(waitpid(pid[r], &st, 0) == pid[r]);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "rank %d: status %d\n", r, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
            bad = 1;
        }
    }
    CHECK(rmdir(dir) == 0); /* every rank removed its socket */
    CHECK(!bad);
    /* Alone: every reduction is the identity, no folder needed. */
    cu_comm *cm = NULL;
    CHECK_EQ_INT(cu_comm_open(NULL, 0, 1, 0, &cm, NULL, 0), 0);
    float x[3] = {1, 2, 3};
    CHECK_EQ_INT(cu_comm_allreduce(cm, x, 3, CU_COMM_MEAN), 0);
    CHECK(x[0] == 1 && x[2] == 3);
    cu_comm_close(cm);
    /* Bad arguments are refused with a reason. */
    char why[256] = "";
    CHECK_EQ_INT(cu_comm_open(NULL, 0, 2, 0, &cm, why, sizeof why), CTG_EINVAL);
    CHECK(why[0] && !cm);
    return 0;
}

/* Device arrays through the host ring on emulated GPUs (the path of GPUs
 * without NCCL): two ranks average an array in "device" memory. */
static int test_comm_dev_emulated(void)
{
    char dir[] = "/tmp/ctglip-test-comm.XXXXXX";
    CHECK(mkdtemp(dir));
    pid_t pid[2];
    for (int r = 0; r < 2; r++) {
        pid[r] = fork();
        CHECK(pid[r] >= 0);
        if (pid[r] == 0) {
            cu_ctx *c = NULL;
            cu_comm *cm = NULL;
            char why[256] = "";
            if (cu_ctx_new(CU_EMULATE, &c, why, sizeof why) != 0 ||
                cu_comm_open(dir, r, 2, 20, &cm, why, sizeof why) != 0) {
                fprintf(stderr, "rank %d: %s\n", r, why);
                _exit(1);
            }
            /* NCCL is refused on every rank alike: it needs a real GPU. */
            if (cu_comm_use_nccl(cm, c, why, sizeof why) != CTG_ENOTFOUND ||
                strcmp(cu_comm_backend(cm), "host") != 0)
                _exit(2);
            printf("rank %d: %s\n", r, why);
            enum { N = 10001 };
            float *h = malloc(sizeof(float) * N), *d = NULL;
            if (!h || cu_malloc(c, (void **)&d, sizeof(float) * N) != 0) _exit(3);
            for (int i = 0; i < N; i++) h[i] = val(r, (size_t)i);
            if (cu_upload(c, d, h, sizeof(float) * N) != 0 ||
                cu_comm_allreduce_dev(cm, c, d, N, CU_COMM_MEAN) != 0 ||
                cu_download(c, h, d, sizeof(float) * N) != 0)
                _exit(4);
            for (int i = 0; i < N; i++)
                if (h[i] != (val(0, (size_t)i) + val(1, (size_t)i)) * 0.5f) _exit(5);
            cu_free(c, d);
            free(h);
            cu_comm_close(cm);
            cu_ctx_free(c);
            _exit(0);
        }
    }
    int bad = 0;
    for (int r = 0; r < 2; r++) {
        int st;
        CHECK(waitpid(pid[r], &st, 0) == pid[r]);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "rank %d: status %d\n", r, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
            bad = 1;
        }
    }
    rmdir(dir);
    CHECK(!bad);
    return 0;
}

/* NCCL between two GPUs: the ranks agree on it and average a device array. */
static int test_comm_nccl(void)
{
    if (cu_device_count() < 2) SKIP("no GPU (NCCL needs two, %d found)", cu_device_count());
    char dir[] = "/tmp/ctglip-test-comm.XXXXXX";
    CHECK(mkdtemp(dir));
    pid_t pid[2];
    for (int r = 0; r < 2; r++) {
        pid[r] = fork();
        CHECK(pid[r] >= 0);
        if (pid[r] == 0) {
            cu_ctx *c = NULL;
            cu_comm *cm = NULL;
            char why[256] = "";
            if (cu_ctx_new(r, &c, why, sizeof why) != 0 ||
                cu_comm_open(dir, r, 2, 60, &cm, why, sizeof why) != 0 ||
                cu_comm_use_nccl(cm, c, why, sizeof why) != 0) {
                fprintf(stderr, "rank %d: %s\n", r, why);
                _exit(1);
            }
            if (strcmp(cu_comm_backend(cm), "nccl") != 0) _exit(2);
            enum { N = 1 << 20 };
            float *h = malloc(sizeof(float) * N), *d = NULL;
            if (!h || cu_malloc(c, (void **)&d, sizeof(float) * N) != 0) _exit(3);
            for (int i = 0; i < N; i++) h[i] = val(r, (size_t)i);
            if (cu_upload(c, d, h, sizeof(float) * N) != 0 ||
                cu_comm_allreduce_dev(cm, c, d, N, CU_COMM_MEAN) != 0 ||
                cu_download(c, h, d, sizeof(float) * N) != 0) {
                fprintf(stderr, "rank %d: %s\n", r, cu_comm_error(cm));
                _exit(4);
            }
            for (int i = 0; i < N; i++)
                if (fabsf(h[i] - (val(0, (size_t)i) + val(1, (size_t)i)) * 0.5f) > 1e-6f) _exit(5);
            cu_free(c, d);
            free(h);
            cu_comm_close(cm);
            cu_ctx_free(c);
            _exit(0);
        }
    }
    int bad = 0;
    for (int r = 0; r < 2; r++) {
        int st;
        CHECK(waitpid(pid[r], &st, 0) == pid[r]);
        bad |= !WIFEXITED(st) || WEXITSTATUS(st) != 0;
    }
    rmdir(dir);
    CHECK(!bad);
    return 0;
}

/* ---- the trainer ------------------------------------------------------------------- */

/* Runs ctglip-train of the build with the common tiny options and more;
 * env: "" or an environment assignment put in front. */
static int train(const char *env, const char *organs, const char *more, const char *log)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "%s %s/ctglip-train pretrain --data ph/manifest.jsonl --batch 2 --patch 32 "
             "--spacing 12 --width 4 --depth 2 --embed 32 --organs %s --lr 1e-2 --warmup 1 "
             "--dict 8 --ckpt-every 0 --threads 1 --vocab %s %s > %s 2>&1",
             env, getenv("CTG_BUILD"), organs, tu_root_path(TXT_GLOVE_DEFAULT), more, log);
    int st = system(cmd);
    if (st != 0) {
        char *t = tu_slurp(log, NULL);
        fprintf(stderr, "%s\n-> %d\n%s\n", cmd, st, t ? t : "");
        free(t);
    }
    return st;
}

/* How far apart the parameters of two runs from the same start are: the
 * norm of their difference over the norm of what training changed (the
 * first model against a new model of its shape from the trainer's seed,
 * 1), or -1.  A single largest difference says little after AdamW: a
 * parameter whose gradient is rounding noise moves by about the learning
 * rate in a direction the noise picks. */
static double param_diff(const char *a, const char *b)
{
    mdl_model *ma = NULL, *mb = NULL, *m0 = NULL;
    char why[256];
    double d = -1;
    if (mdl_load(a, &ma, why, sizeof why) == 0 && mdl_load(b, &mb, why, sizeof why) == 0 &&
        ma->n_params == mb->n_params &&
        mdl_new(&ma->cfg, ma->class_ids, ma->text_id, 1, &m0, why, sizeof why) == 0 &&
        m0->n_params == ma->n_params) {
        double dd = 0, moved = 0, mx = 0;
        for (size_t i = 0; i < ma->n_params; i++) {
            double x = (double)ma->params[i] - mb->params[i], y = (double)ma->params[i] - m0->params[i];
            dd += x * x, moved += y * y;
            if (fabs(x) > mx) mx = fabs(x);
        }
        d = moved > 0 ? sqrt(dd / moved) : -1;
        printf("%s vs %s: |difference| / |training's change| = %.3g (%.3g / %.3g), largest "
               "difference %.3g\n", a, b, d, sqrt(dd), sqrt(moved), mx);
    }
    mdl_free(ma);
    mdl_free(mb);
    mdl_free(m0);
    return d;
}

/* The largest relative difference of the losses two runs logged. */
static double loss_diff(const char *a, const char *b)
{
    FILE *fa = fopen(a, "r"), *fb = fopen(b, "r");
    double worst = fa && fb ? 0 : 1e9;
    char la[1024], lb[1024];
    int rows = 0;
    while (fa && fb && fgets(la, sizeof la, fa) && fgets(lb, sizeof lb, fb)) {
        double x[9], y[9];
        if (sscanf(la, "%*d,%*d,%lf,%lf,%lf,%lf,%lf,%lf,%lf", &x[0], &x[1], &x[2], &x[3], &x[4],
                   &x[5], &x[6]) != 7 ||
            sscanf(lb, "%*d,%*d,%lf,%lf,%lf,%lf,%lf,%lf,%lf", &y[0], &y[1], &y[2], &y[3], &y[4],
                   &y[5], &y[6]) != 7)
            continue;
        rows++;
        for (int i = 0; i < 7; i++) {
            double r = fabs(x[i] - y[i]) / (fabs(x[i]) + 1e-6);
            if (r > worst) worst = r;
        }
    }
    if (rows == 0) worst = 1e9;
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    printf("%s vs %s: %d steps, losses within %.3g\n", a, b, rows, worst);
    return worst;
}

static int phantoms(void)
{
    return tu_phantom("--seed", "5", "--count", "2", "--out", "ph", "--matrix", "48",
                      "--thickness", "8", "--fov", "abdomen", "--abnormal-rate", "0.8",
                      "--no-dicom", NULL);
}

/* Two CPU ranks, each with half of every batch, end with the parameters
 * of one process on the whole batch.  With the liver as the only organ and
 * a patch that holds the whole volume every sample has the same number of
 * labelled voxels and organs, so the mean of the ranks' losses is the
 * batch's loss and the two runs differ only by rounding. */
static int test_train_dp_cpu(void)
{
    CHECK(phantoms() == 0);
    const char *steps = "--steps 4 --stage1-steps 4";
    char more[256];
    snprintf(more, sizeof more, "%s --out one", steps);
    CHECK(train("", "liver", more, "one.log") == 0);
    snprintf(more, sizeof more, "%s --out two --ranks 2", steps);
    CHECK(train("", "liver", more, "two.log") == 0);
    double d = param_diff("one/model.ctglip", "two/model.ctglip");
    CHECK(d >= 0 && d < 1e-3);
    CHECK(loss_diff("one/train.csv", "two/train.csv") < 1e-5);
    char *log = tu_slurp("two.log", NULL);
    CHECK(log && strstr(log, "2 ranks, 1 sample(s) each"));
    free(log);
    /* A batch that does not split evenly is refused. */
    snprintf(more, sizeof more, "%s --out three --ranks 3", steps);
    CHECK(train("", "liver", more, "three.log") != 0);
    log = tu_slurp("three.log", NULL);
    CHECK(log && strstr(log, "must split evenly"));
    free(log);
    return 0;
}

/* The trainer on an emulated GPU in fp32 follows the CPU trainer through
 * both stages (segmentation, then the contrastive losses with the text
 * projection on the device); a run stopped after step 2 (checkpoint from
 * the device) and resumed (uploaded again) ends where the uninterrupted
 * one does. */
static int test_train_emulated(void)
{
    CHECK(phantoms() == 0);
    const char *organs = "liver,spleen,kidney_left,kidney_right";
    const char *emu = "CTGLIP_CUDA_EMULATE=1";
    CHECK(train("", organs, "--steps 4 --stage1-steps 2 --out cpu", "cpu.log") == 0);
    CHECK(train(emu, organs, "--steps 4 --stage1-steps 2 --out gpu --device cuda --precision fp32",
                "gpu.log") == 0);
    /* The losses agree to rounding; the parameters less closely: a
     * convolution followed by instance norm has a weight direction whose
     * gradient is zero but for rounding, and AdamW turns that noise into
     * steps of the learning rate (1e-2 here). */
    double d = param_diff("cpu/model.ctglip", "gpu/model.ctglip");
    CHECK(d >= 0 && d < 0.1);
    CHECK(loss_diff("cpu/train.csv", "gpu/train.csv") < 1e-3);
    char *log = tu_slurp("gpu.log", NULL);
    CHECK(log && strstr(log, "emulated") && strstr(log, "fp32"));
    free(log);
    CHECK(train(emu, organs,
                "--steps 4 --stage1-steps 2 --out res --device cuda --precision fp32 --stop-at 2",
                "res1.log") == 0);
    CHECK(train(emu, organs,
                "--steps 4 --stage1-steps 2 --out res --device cuda --precision fp32 "
                "--resume res/ckpt.bin",
                "res2.log") == 0);
    d = param_diff("gpu/model.ctglip", "res/model.ctglip");
    CHECK(d == 0);
    /* --device cpu with --gpus is a usage error. */
    CHECK(train("", organs, "--steps 1 --out x --gpus 0", "x.log") != 0);
    return 0;
}

/* Two emulated GPUs, data-parallel (gradients through host memory), end
 * with the parameters of one emulated GPU on the whole batch. */
static int test_train_dp_emulated(void)
{
    CHECK(phantoms() == 0);
    const char *emu = "CTGLIP_CUDA_EMULATE=1";
    const char *common = "--steps 3 --stage1-steps 3 --device cuda --precision fp32";
    char more[256];
    snprintf(more, sizeof more, "%s --out one", common);
    CHECK(train(emu, "liver", more, "one.log") == 0);
    snprintf(more, sizeof more, "%s --out two --gpus 0,1", common);
    CHECK(train(emu, "liver", more, "two.log") == 0);
    double d = param_diff("one/model.ctglip", "two/model.ctglip");
    CHECK(d >= 0 && d < 1e-3);
    CHECK(loss_diff("one/train.csv", "two/train.csv") < 1e-5);
    char *log = tu_slurp("two.log", NULL);
    CHECK(log && strstr(log, "gradients over host"));
    free(log);
    return 0;
}

/* ---- analysis on a GPU -------------------------------------------------------------- */

/* The phantom CT and the tiny model of test_analysis.c. */
static int setup_analysis(ctg_vol **ct, an_engine **e)
{
    if (tu_phantom("--seed", "11", "--count", "1", "--out", "p", "--matrix", "48", "--thickness",
                   "6", "--fov", "abdomen", "--no-dicom", "--nifti", NULL) != 0)
        return -1;
    char why[512] = "";
    if (tu_tiny_model_save("m.ctglip") < 0) return -1;
    if (ctg_nifti_read("p/case_0000/ct.nii.gz", CTG_F32, ct, why, sizeof why) < 0 ||
        ctg_vol_canonical(*ct) < 0)
        return -1;
    static char f[4096], v[4096];
    snprintf(f, sizeof f, "%s", tu_root_path("etc/findings.conf"));
    snprintf(v, sizeof v, "%s", tu_root_path(TXT_GLOVE_DEFAULT));
    an_opts o = {.model = "m.ctglip", .vocab = v, .findings = f, .text = -1, .overlap = 0.25f};
    if (an_engine_open(&o, e, why, sizeof why) < 0) {
        fprintf(stderr, "engine: %s\n", why);
        return -1;
    }
    return 0;
}

/* an_run on device dev against the CPU: the share of voxels labelled alike
 * at least agree, the same organs found, their findings' probabilities
 * within tol. */
static int compare_device(int dev, int bf16, double agree, float tol)
{
    ctg_vol *ct = NULL;
    an_engine *e = NULL;
    CHECK(setup_analysis(&ct, &e) == 0);
    char why[512] = "";
    an_result rc_, rg;
    CHECK_EQ_INT(an_run(e, NULL, ct, &rc_, why, sizeof why), 0);
    cu_ctx *gc = NULL;
    CHECK_EQ_INT(cu_ctx_new(dev, &gc, why, sizeof why), 0);
    an_ctx *c = NULL;
    CHECK_EQ_INT(an_ctx_new_gpu(e, gc, bf16, &c, why, sizeof why), 0);
    CHECK(an_ctx_device(c) == gc);
    CHECK_EQ_INT(an_run(e, c, ct, &rg, why, sizeof why), 0);
    CHECK(!an_ctx_device_failed(c));
    size_t nv = ctg_vol_count(ct), same = 0;
    const uint8_t *a = rc_.labels->data, *b = rg.labels->data;
    for (size_t i = 0; i < nv; i++) same += a[i] == b[i];
    printf("device %d %s: %.5f of the voxels alike, %d vs %d organs; model %.2f s vs %.2f s\n",
           dev, bf16 ? "bf16" : "fp32", (double)same / (double)nv, rg.norgans, rc_.norgans,
           rg.t_model, rc_.t_model);
    CHECK((double)same >= agree * (double)nv);
    CHECK_EQ_INT(rg.norgans, rc_.norgans);
    for (int i = 0; i < rc_.norgans; i++) {
        CHECK_EQ_INT(rg.organs[i].id, rc_.organs[i].id);
        CHECK_EQ_INT(rg.organs[i].nfindings, rc_.organs[i].nfindings);
        for (int j = 0; j < rc_.organs[i].nfindings; j++)
            CHECK(fabsf(rg.organs[i].findings[j].prob - rc_.organs[i].findings[j].prob) < tol);
    }
    an_result_free(&rg);
    an_result_free(&rc_);
    an_ctx_free(c);
    cu_ctx_free(gc);
    an_engine_close(e);
    ctg_vol_free(ct);
    return 0;
}

static int test_analysis_emulated(void) { return compare_device(CU_EMULATE, 0, 0.999, 1e-3f); }

static int test_analysis_gpu(void)
{
    if (cu_device_count() < 1) SKIP("no GPU");
    if (compare_device(0, 0, 0.999, 1e-3f) != 0) return 1;
    return compare_device(0, 1, 0.98, 0.05f);
}

/* ---- the daemon's settings ------------------------------------------------------------ */

static int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fputs(text, f);
    return fclose(f);
}

static int test_config_device(void)
{
    ctg_config c;
    char err[512] = "";
    ctg_config_defaults(&c);
    CHECK(strcmp(c.device, "auto") == 0 && c.n_gpus == 0 && c.model_bf16 == 1);
    CHECK(write_file("a.conf", "[model]\ndevice = cuda\ngpus = 1, 0\nprecision = fp32\n") == 0);
    CHECK_EQ_INT(ctg_config_load("a.conf", &c, err, sizeof err), 0);
    CHECK(strcmp(c.device, "cuda") == 0 && c.n_gpus == 2 && c.gpus[0] == 1 && c.gpus[1] == 0);
    CHECK_EQ_INT(c.model_bf16, 0);
    ctg_config d;
    ctg_config_defaults(&d);
    CHECK(write_file("b.conf", "[model]\ngpus = all\n") == 0);
    CHECK_EQ_INT(ctg_config_load("b.conf", &d, err, sizeof err), 0);
    CHECK_EQ_INT(d.n_gpus, 0);
    /* A change of devices needs a restart. */
    CHECK_EQ_INT(ctg_config_apply_reloadable(&d, &c), 1);
    static const char *const bad[] = {"gpus = 0,0\n", "gpus = -1\n", "gpus = x\n", "gpus =\n",
                                      "precision = fp16\n", "device = gpu\n"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char text[128];
        snprintf(text, sizeof text, "[model]\n%s", bad[i]);
        CHECK(write_file("c.conf", text) == 0);
        ctg_config_defaults(&d);
        err[0] = 0;
        CHECK_EQ_INT(ctg_config_load("c.conf", &d, err, sizeof err), CTG_ECONFIG);
        printf("%s", err[0] ? err : "(no reason)\n");
        printf("\n");
        CHECK(strstr(err, "c.conf:2"));
    }
    return 0;
}

const test_case gpu_tests[] = {
    {"gpu_comm_host", test_comm_host},
    {"gpu_comm_dev_emulated", test_comm_dev_emulated},
    {"gpu_comm_nccl", test_comm_nccl, 120},
    {"gpu_train_dp_cpu", test_train_dp_cpu},
    {"gpu_train_emulated", test_train_emulated, 120},
    {"gpu_train_dp_emulated", test_train_dp_emulated, 120},
    {"gpu_analysis_emulated", test_analysis_emulated},
    {"gpu_analysis_gpu", test_analysis_gpu, 120},
    {"gpu_config_device", test_config_device},
    {NULL, NULL},
};
