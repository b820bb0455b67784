/*
 * runner.c - the one test runner.
 *
 * Runs every unit test (compiled in, see tests/tests.h) and every
 * integration script in tests/it (*.sh), each in its own process group with a
 * timeout, and prints "N passed, N failed" as its last line.  A failing
 * test's output is shown; a passing one's is kept in the test's folder.
 * A test that cannot run here (the GPU tests on a machine without a GPU)
 * exits with TEST_SKIP (77) after printing "skipped: REASON"; it is listed
 * as "skip" with that reason, counted in neither number, and the line
 * before the last counts the skipped ones.
 *
 *   runner [PATTERN...]   run only matching tests: "it/" or "unit/x" match as
 *                         a prefix, a plain word anywhere in the name
 *
 * Environment given to scripts: CTG_ROOT (repository), CTG_BUILD (build
 * folder, absolute), CTG_TMP (an empty folder of their own).
 */
#include "tests.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define UNIT_TIMEOUT 60
#define SCRIPT_TIMEOUT 300

static const test_case *const unit_tables[] = {
    store_tests,  queue_tests,      config_tests, fuzz_tests,     vol_tests,    volume_tests,
    phantom_tests, ctvol_tests,     ops_tests,    text_tests,     model_tests,  data_tests,
    eval_tests,   train_tests,      seg_tests,    sr_tests,       outbox_tests, analysis_tests,
    reports_in_tests, report_tests, cuops_tests,  cuconv_tests,   cunet_tests,  gpu_tests,
    rx_tests};

typedef struct entry {
    char name[128];
    const test_case *unit; /* NULL for a script */
    char script[1400];
} entry;

static int wanted(const char *name, int argc, char **argv)
{
    if (argc <= 1) return 1;
    /* "it/" selects a family by prefix; a word without '/' matches anywhere. */
    for (int i = 1; i < argc; i++) {
        if (strchr(argv[i], '/') ? !strncmp(name, argv[i], strlen(argv[i]))
                                 : strstr(name, argv[i]) != NULL)
            return 1;
    }
    return 0;
}

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const entry *)a)->name, ((const entry *)b)->name);
}

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void show_tail(const char *log, int lines)
{
    char cmd[PATH_MAX + 64];
    snprintf(cmd, sizeof cmd, "tail -n %d '%s' | sed 's/^/    | /'", lines, log);
    fflush(stdout);
    if (system(cmd) != 0) printf("    (no output)\n");
}

/* Runs one test in a child; returns 1 on pass. */
static int run_one(const entry *e, const char *root, const char *build, const char *tmpbase,
                   double *secs)
{
    char dir[2400], log[2500];
    snprintf(dir, sizeof dir, "%s/%s", tmpbase, e->name);
    for (char *c = dir + strlen(tmpbase) + 1; *c; c++)
        if (*c == '/') *c = '-';
    snprintf(log, sizeof log, "%s/output.log", dir);
    char rm[PATH_MAX + 16];
    snprintf(rm, sizeof rm, "rm -rf '%s'", dir);
    if (system(rm) != 0 || mkdir(dir, 0700) != 0) {
        printf("FAIL %s: cannot create %s\n", e->name, dir);
        return 0;
    }
    double t0 = mono();
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) return 0;
    if (pid == 0) {
        setpgid(0, 0);
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0) dup2(devnull, 0);
        setenv("CTG_ROOT", root, 1);
        setenv("CTG_BUILD", build, 1);
        setenv("CTG_TMP", dir, 1);
        if (chdir(dir) != 0) _exit(99);
        if (e->unit) {
            alarm(e->unit->timeout > 0 ? (unsigned)e->unit->timeout : UNIT_TIMEOUT);
            int r = e->unit->fn();
            fflush(stdout);
            fflush(stderr);
            _exit(r == 0 ? 0 : r == TEST_SKIP ? TEST_SKIP : 1);
        }
        execlp("bash", "bash", e->script, (char *)NULL);
        _exit(127);
    }
    setpgid(pid, pid);
    int limit = e->unit ? (e->unit->timeout > 0 ? e->unit->timeout : UNIT_TIMEOUT) + 5
                        : SCRIPT_TIMEOUT;
    int status = 0, timed_out = 0;
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid) break;
        if (mono() - t0 > limit) {
            kill(-pid, SIGKILL);
            waitpid(pid, &status, 0);
            timed_out = 1;
            break;
        }
        usleep(20000);
    }
    /* Nothing a test started may outlive it. */
    kill(-pid, SIGKILL);
    *secs = mono() - t0;
    int ok = !timed_out && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!timed_out && WIFEXITED(status) && WEXITSTATUS(status) == TEST_SKIP) {
        char why[200] = "no reason given";
        FILE *f = fopen(log, "r");
        char line[512];
        while (f && fgets(line, sizeof line, f)) {
            char *k = strstr(line, "skipped: ");
            if (k) {
                snprintf(why, sizeof why, "%s", k + 9);
                why[strcspn(why, "\n")] = 0;
            }
        }
        if (f) fclose(f);
        printf("skip %-40s %s\n", e->name, why);
        fflush(stdout);
        return 2;
    }
    if (ok) {
        printf("ok   %-40s %6.1f s\n", e->name, *secs);
    } else {
        if (timed_out)
            printf("FAIL %-40s timed out after %d s\n", e->name, limit);
        else if (WIFSIGNALED(status))
            printf("FAIL %-40s killed by signal %d\n", e->name, WTERMSIG(status));
        else
            printf("FAIL %-40s exit status %d\n", e->name, WEXITSTATUS(status));
        show_tail(log, 80);
    }
    fflush(stdout);
    return ok;
}

int main(int argc, char **argv)
{
    char root[1024], build[2048], tmpbase[2100];
    if (!getcwd(root, sizeof root)) return 2;
    const char *b = getenv("CTG_BUILD");
    if (!b) b = "build";
    if (b[0] == '/')
        snprintf(build, sizeof build, "%s", b);
    else
        snprintf(build, sizeof build, "%s/%s", root, b);
    snprintf(tmpbase, sizeof tmpbase, "%s/test-out", build);
    mkdir(tmpbase, 0700);

    entry *list = NULL;
    int n = 0, cap = 0;
    for (size_t t = 0; t < sizeof unit_tables / sizeof unit_tables[0]; t++) {
        if (!unit_tables[t]) continue; /* a weak table not linked in */
        for (const test_case *tc = unit_tables[t]; tc->name; tc++) {
            if (n == cap) list = realloc(list, (size_t)(cap = cap ? 2 * cap : 64) * sizeof *list);
            snprintf(list[n].name, sizeof list[n].name, "unit/%s", tc->name);
            list[n].unit = tc;
            n++;
        }
    }
    char itdir[1100];
    snprintf(itdir, sizeof itdir, "%s/tests/it", root);
    DIR *d = opendir(itdir);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            size_t l = strlen(de->d_name);
            if (l < 4 || strcmp(de->d_name + l - 3, ".sh") != 0) continue;
            if (n == cap) list = realloc(list, (size_t)(cap = cap ? 2 * cap : 64) * sizeof *list);
            snprintf(list[n].name, sizeof list[n].name, "it/%.*s", (int)(l - 3), de->d_name);
            list[n].unit = NULL;
            snprintf(list[n].script, sizeof list[n].script, "%s/%s", itdir, de->d_name);
            n++;
        }
        closedir(d);
    }
    qsort(list, (size_t)n, sizeof *list, cmp_entry);

    int passed = 0, failed = 0, skipped = 0;
    double total = 0;
    for (int i = 0; i < n; i++) {
        if (!wanted(list[i].name, argc, argv)) continue;
        double s = 0;
        int r = run_one(&list[i], root, build, tmpbase, &s);
        if (r == 2)
            skipped++;
        else if (r)
            passed++;
        else
            failed++;
        total += s;
    }
    free(list);
    printf("(%.1f s in all; outputs in %s; %d skipped)\n", total, tmpbase, skipped);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
