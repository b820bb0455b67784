/*
 * ctglip.c - the admin command line.
 *
 *   ctglip [-c CONF] status            index summary, free space, C-ECHO to the daemon
 *   ctglip [-c CONF] studies           one line per study
 *   ctglip [-c CONF] jobs [STATE]      one line per job (optionally one state)
 *   ctglip [-c CONF] requeue JOB       a done or failed job back to the queue
 *   ctglip [-c CONF] exports [STATE]   one line per export (file x destination)
 *   ctglip [-c CONF] requeue export ID         a dead export back to the queue
 *   ctglip [-c CONF] requeue dead [DESTINATION] every dead export back to the queue
 *   ctglip [-c CONF] reports [STUDY]   radiology reports received; with a Study
 *                                      Instance UID or accession: their text
 *   ctglip echo HOST PORT AET          C-ECHO a peer
 *   ctglip send HOST PORT AET FILE...  C-STORE files exactly as stored
 *   ctglip infer PATH                  one study through the model (tools/infer.c)
 *
 * It reads the daemon's config for the index path and opens the index
 * read-only (requeue excepted), so it works while ctglipd runs.
 * TLS for echo/send: --tls CERT KEY CA (CA may be '-': no verification).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/core.h"
#include "daemon/daemon.h"
#include "dicom/dicom.h"
#include "store/store.h"
#include "tools/tools.h"

static const char *conf_path = "etc/ctglipd.conf";
static const char *calling_ae = "CTGLIP_CLI";
static dcm_tls_config tls;
static int use_tls;
static int timeout_s = 30;

static int usage(void)
{
    fprintf(stderr,
            "usage: ctglip [-c CONF] status | studies | jobs [STATE] | requeue JOB\n"
            "       ctglip [-c CONF] exports [STATE] | requeue export ID | requeue dead [DEST]\n"
            "       ctglip [-c CONF] reports [STUDY-UID|ACCESSION]\n"
            "       ctglip [--aet AE] [--tls CERT KEY CA] [--timeout S] echo HOST PORT AET\n"
            "       ctglip [--aet AE] [--tls CERT KEY CA] [--timeout S] send HOST PORT AET FILE...\n"
            "       ctglip phantom --seed S --count N --out DIR [options]   (--help for options)\n"
            "       ctglip volume [options] --out FILE.nii.gz DICOM-FILE-OR-DIR...\n"
            "       ctglip view [options] --out FILE.png CT [LABELS]\n"
            "       ctglip infer [options] DICOM-FOLDER|CT.nii.gz   (--help for options)\n"
            "       ctglip [-c CONF] model [status|rollback]\n");
    return 2;
}

static int load_conf(ctg_config *cfg)
{
    char err[1024];
    ctg_config_defaults(cfg);
    if (ctg_config_load(conf_path, cfg, err, sizeof err) < 0) {
        fprintf(stderr, "ctglip: %s\n", err);
        return -1;
    }
    return 0;
}

static st_store *open_index(const ctg_config *cfg, int readonly)
{
    st_config sc = {.spool_dir = cfg->spool, .db_path = cfg->index, .readonly = readonly};
    st_store *st = NULL;
    int r = st_open(&sc, &st);
    if (r < 0) {
        fprintf(stderr, "ctglip: cannot open index %s: %s\n", cfg->index, ctg_strerror(r));
        return NULL;
    }
    return st;
}

static void fmt_time(const char *epoch, char *out, size_t n)
{
    if (!epoch) {
        snprintf(out, n, "-");
        return;
    }
    time_t t = (time_t)atof(epoch);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(out, n, "%Y-%m-%d %H:%M:%S", &tm);
}

static int cmd_status(void)
{
    ctg_config cfg;
    if (load_conf(&cfg) < 0) return 1;
    st_store *st = open_index(&cfg, 1);
    if (!st) return 1;
    st_counts c;
    int r = st_counts_get(st, &c);
    uint64_t avail = 0;
    st_free_bytes(st, &avail);
    if (r < 0) {
        st_close(st);
        return 1;
    }
    printf("index         %s (schema %d)\n", cfg.index, st_schema_version(st));
    printf("spool         %s (%.1f MiB stored, %.1f GiB free, reserve %.1f GiB)\n",
           cfg.spool, c.bytes / 1048576.0, avail / 1073741824.0,
           cfg.reserve_bytes / 1073741824.0);
    printf("patients      %d\nstudies       %d (%d pending completion)\nseries        %d\n"
           "instances     %d\n",
           c.patients, c.studies, c.studies_pending, c.series, c.instances);
    printf("jobs          queued %d, running %d, done %d, failed %d, superseded %d\n",
           c.jobs[JOB_QUEUED], c.jobs[JOB_RUNNING], c.jobs[JOB_DONE], c.jobs[JOB_FAILED],
           c.jobs[JOB_SUPERSEDED]);
    printf("exports       queued %d, sending %d, done %d, dead %d (%d destination(s) "
           "configured)\n",
           c.exports[EXP_QUEUED], c.exports[EXP_SENDING], c.exports[EXP_DONE],
           c.exports[EXP_DEAD], cfg.n_destinations);
    st_close(st);
    if (cfg.port) {
        char why[256];
        dcm_peer p = {.host = "127.0.0.1", .port = cfg.port, .called_ae = cfg.ae_title,
                      .calling_ae = calling_ae, .timeout = 5};
        int e = dcm_echo(&p, why, sizeof why);
        printf("daemon        %s on port %d%s%s\n", e == 0 ? "answering C-ECHO" : "not answering",
               cfg.port, e == 0 ? "" : ": ", e == 0 ? "" : why);
    }
    return 0;
}

typedef struct table {
    int rows;
    int kind; /* 0 studies, 1 jobs, 2 exports, 3 reports */
} table;

static int study_row(void *ud, int ncol, const char **names, const char **v)
{
    table *t = ud;
    (void)names;
    (void)ncol;
    if (t->rows++ == 0)
        printf("%-64s  %-16s  %-24s  %-8s  %6s  %9s  %-10s  %s\n", "STUDY UID", "PATIENT ID",
               "PATIENT NAME", "DATE", "SERIES", "INSTANCES", "STATE", "LAST RECEIVED");
    char last[32];
    fmt_time(v[6], last, sizeof last);
    printf("%-64s  %-16.16s  %-24.24s  %-8s  %6s  %9s  %-10s  %s\n", v[0], v[1] ? v[1] : "",
           v[2] ? v[2] : "", v[3] ? v[3] : "", v[4], v[5], v[7], last);
    return 0;
}

static int cmd_studies(void)
{
    ctg_config cfg;
    if (load_conf(&cfg) < 0) return 1;
    st_store *st = open_index(&cfg, 1);
    if (!st) return 1;
    table t = {0, 0};
    int r = st_query(st,
                     "SELECT t.study_uid, p.patient_id, p.patient_name, t.study_date,"
                     " (SELECT count(*) FROM series s WHERE s.study_ref=t.id),"
                     " (SELECT count(*) FROM instances i JOIN series s ON i.series_ref=s.id"
                     "   WHERE s.study_ref=t.id AND i.current=1),"
                     " t.last_received,"
                     " CASE WHEN t.rx_gen > t.queued_gen THEN 'receiving' ELSE"
                     "  coalesce((SELECT CASE j.state WHEN 0 THEN 'queued' WHEN 1 THEN 'running'"
                     "   WHEN 2 THEN 'done' WHEN 3 THEN 'failed' ELSE 'superseded' END"
                     "   FROM jobs j WHERE j.study_ref=t.id ORDER BY j.id DESC LIMIT 1), '-') END"
                     " FROM studies t JOIN patients p ON t.patient_ref=p.id ORDER BY t.id",
                     study_row, &t);
    if (r == 0 && t.rows == 0) printf("no studies\n");
    st_close(st);
    return r < 0 ? 1 : 0;
}

static int job_row(void *ud, int ncol, const char **names, const char **v)
{
    table *t = ud;
    (void)names;
    (void)ncol;
    if (t->rows++ == 0)
        printf("%6s  %-10s  %-64s  %4s  %8s  %-19s  %s\n", "JOB", "STATE", "STUDY UID", "GEN",
               "ATTEMPTS", "UPDATED", "REASON");
    char upd[32];
    fmt_time(v[5], upd, sizeof upd);
    printf("%6s  %-10s  %-64s  %4s  %8s  %-19s  %s\n", v[0], st_job_state_name(atoi(v[1])),
           v[2], v[3], v[4], upd, v[6] ? v[6] : "");
    return 0;
}

static int cmd_jobs(const char *state)
{
    ctg_config cfg;
    if (load_conf(&cfg) < 0) return 1;
    int want = -1;
    if (state) {
        for (int i = 0; i < 5; i++)
            if (!strcmp(state, st_job_state_name(i))) want = i;
        if (want < 0) {
            fprintf(stderr, "ctglip: unknown job state '%s'\n", state);
            return 2;
        }
    }
    st_store *st = open_index(&cfg, 1);
    if (!st) return 1;
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT id, state, study_uid, generation, attempts, updated, reason FROM jobs"
             " %s ORDER BY id",
             want >= 0 ? (const char *[]){"WHERE state=0", "WHERE state=1", "WHERE state=2",
                                          "WHERE state=3", "WHERE state=4"}[want]
                       : "");
    table t = {0, 1};
    int r = st_query(st, sql, job_row, &t);
    if (r == 0 && t.rows == 0) printf("no jobs\n");
    st_close(st);
    return r < 0 ? 1 : 0;
}

static int cmd_requeue(const char *id)
{
    ctg_config cfg;
    if (load_conf(&cfg) < 0) return 1;
    st_store *st = open_index(&cfg, 0);
    if (!st) return 1;
    int r = st_job_requeue(st, atoll(id), ctg_now());
    st_close(st);
    if (r < 0) {
        fprintf(stderr, "ctglip: requeue job %s: %s\n", id,
                r == CTG_ENOTFOUND ? "no such done or failed job" : ctg_strerror(r));
        return 1;
    }
    printf("job %s queued again\n", id);
    return 0;
}

/* ---- exports ---------------------------------------------------------------- */

static int export_row(void *ud, int ncol, const char **names, const char **v)
{
    table *t = ud;
    (void)names;
    if (ncol < 8) return 0;
    if (t->rows++ == 0)
        printf("%6s  %-16s  %-7s  %8s  %-19s  %-48s  %s\n", "EXPORT", "DESTINATION", "STATE",
               "ATTEMPTS", "NEXT TRY", "LAST ERROR", "FILE");
    /* The next try means something only for a queued row. */
    char next[32];
    if (v[2] && !strcmp(v[2], "queued"))
        fmt_time(v[4], next, sizeof next);
    else
        snprintf(next, sizeof next, "-");
    printf("%6s  %-16s  %-7s  %8s  %-19s  %-48.48s  %s\n", v[0], v[1], v[2], v[3], next,
           v[6] ? v[6] : "", v[7]);
    return 0;
}

static int cmd_exports(const char *state)
{
    ctg_config cfg;
    if (load_conf(&cfg) < 0) return 1;
    int want = -1;
    if (state && (want = st_export_state_parse(state)) < 0) {
        fprintf(stderr, "ctglip: unknown export state '%s' (queued, sending, done, dead)\n",
                state);
        return 2;
    }
    st_store *st = open_index(&cfg, 1);
    if (!st) return 1;
    table t = {0, 2};
    int r = st_export_list(st, want, NULL, export_row, &t);
    if (r == 0 && t.rows == 0) printf("no exports\n");
    st_close(st);
    return r < 0 ? 1 : 0;
}

static int cmd_requeue_export(const char *id)
{
    ctg_config cfg;
    char *end;
    long long n = strtoll(id, &end, 10);
    if (*end || end == id || n <= 0) {
        fprintf(stderr, "ctglip: '%s' is not an export id\n", id);
        return 2;
    }
    if (load_conf(&cfg) < 0) return 1;
    st_store *st = open_index(&cfg, 0);
    if (!st) return 1;
    int r = st_export_requeue(st, n, ctg_now());
    st_close(st);
    if (r < 0) {
        fprintf(stderr, "ctglip: requeue export %s: %s\n", id,
                r == CTG_ENOTFOUND ? "no such export"
                : r == CTG_ESTATE  ? "it is done or being sent"
                                   : ctg_strerror(r));
        return 1;
    }
    printf("export %s queued again\n", id);
    return 0;
}

static int cmd_requeue_dead(const char *dest)
{
    ctg_config cfg;
    if (load_conf(&cfg) < 0) return 1;
    st_store *st = open_index(&cfg, 0);
    if (!st) return 1;
    int r = st_export_requeue_dead(st, dest, ctg_now());
    st_close(st);
    if (r < 0) {
        fprintf(stderr, "ctglip: requeue dead exports: %s\n", ctg_strerror(r));
        return 1;
    }
    printf("%d dead export(s)%s%s queued again\n", r, dest ? " of " : "", dest ? dest : "");
    if (dest && !ctg_destination_find(&cfg, dest))
        fprintf(stderr, "ctglip: note: destination %s is not in %s\n", dest, conf_path);
    return 0;
}

/* ---- reports received (reports) ------------------------------------------------ */

static int report_line(void *ud, const st_report *r)
{
    table *t = ud;
    if (t->rows++ == 0)
        printf("%6s  %-6s  %-5s  %-19s  %-64s  %-16s  %s\n", "REPORT", "SOURCE", "FINAL",
               "RECEIVED", "STUDY UID", "ACCESSION", "FROM");
    char rx[32], epoch[32];
    snprintf(epoch, sizeof epoch, "%.3f", r->received);
    fmt_time(epoch, rx, sizeof rx);
    /* A report known by accession only has no study yet; one named by UID
     * may wait for its images too. */
    char study[80];
    if (!r->study_uid[0])
        snprintf(study, sizeof study, "(not linked)");
    else
        snprintf(study, sizeof study, "%s%s", r->study_uid, r->linked ? "" : " (not here)");
    printf("%6lld  %-6s  %-5s  %-19s  %-64s  %-16s  %s\n", (long long)r->id,
           r->source == ST_REPORT_SR ? "sr" : "file", r->final ? "yes" : "no", rx, study,
           r->accession[0] ? r->accession : "-", r->source_ref);
    return 0;
}

static int report_full(void *ud, const st_report *r)
{
    table *t = ud;
    char rx[32], epoch[32];
    snprintf(epoch, sizeof epoch, "%.3f", r->received);
    fmt_time(epoch, rx, sizeof rx);
    if (t->rows++) printf("\n");
    printf("report %lld: %s %s, received %s, %s\n", (long long)r->id,
           r->source == ST_REPORT_SR ? "SR" : "file", r->source_ref, rx,
           r->final ? "final" : "not final");
    printf("study %s, accession %s%s\n", r->study_uid[0] ? r->study_uid : "(not linked)",
           r->accession[0] ? r->accession : "-", r->linked ? "" : " (study not in the index)");
    if (r->source == ST_REPORT_SR)
        printf("completion %s, verification %s, observed %s, author %s\n",
               r->completion[0] ? r->completion : "-", r->verification[0] ? r->verification : "-",
               r->observed[0] ? r->observed : "-", r->author[0] ? r->author : "-");
    printf("---\n%s\n---\n", r->text);
    return 0;
}

static int cmd_reports(const char *study)
{
    ctg_config cfg;
    if (load_conf(&cfg) < 0) return 1;
    st_store *st = open_index(&cfg, 1);
    if (!st) return 1;
    table t = {0, 3};
    st_report_query q = {.study = study};
    int r = st_reports_list(st, &q, study ? report_full : report_line, &t);
    if (r == 0 && t.rows == 0) printf("no reports%s%s\n", study ? " for " : "", study ? study : "");
    st_close(st);
    return r < 0 ? 1 : 0;
}

static int peer_from(char **argv, dcm_peer *p)
{
    memset(p, 0, sizeof *p);
    p->host = argv[0];
    p->port = atoi(argv[1]);
    p->called_ae = argv[2];
    p->calling_ae = calling_ae;
    p->tls = use_tls ? &tls : NULL;
    p->timeout = timeout_s;
    if (p->port <= 0 || p->port > 65535) {
        fprintf(stderr, "ctglip: bad port '%s'\n", argv[1]);
        return -1;
    }
    return 0;
}

static int cmd_echo(char **argv)
{
    dcm_peer p;
    char why[512];
    if (peer_from(argv, &p) < 0) return 2;
    if (dcm_echo(&p, why, sizeof why) < 0) {
        fprintf(stderr, "ctglip: echo %s:%d %s: %s\n", p.host, p.port, p.called_ae, why);
        return 1;
    }
    printf("C-ECHO %s:%d %s: success\n", p.host, p.port, p.called_ae);
    return 0;
}

static int cmd_send(char **argv, int nfiles)
{
    dcm_peer p;
    char why[512];
    if (peer_from(argv, &p) < 0) return 2;
    const char *const *files = (const char *const *)argv + 3;
    int *status = calloc((size_t)nfiles, sizeof *status);
    if (!status) return 1;
    int r = dcm_send_files(&p, files, nfiles, status, why, sizeof why);
    int bad = 0;
    for (int i = 0; i < nfiles; i++) {
        if (status[i] < 0)
            printf("%s: not sent\n", files[i]);
        else
            printf("%s: status 0x%04x\n", files[i], (unsigned)status[i]);
        if (status[i] != 0) bad++;
    }
    if (r < 0) fprintf(stderr, "ctglip: send: %s\n", why);
    free(status);
    return r < 0 ? 1 : bad ? 3 : 0;
}

int main(int argc, char **argv)
{
    /* Offline tools take their own options. */
    if (argc > 1 && !strcmp(argv[1], "phantom")) return ctg_phantom_main(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "view")) return ctg_view_main(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "volume")) return ctg_volume_main(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "infer")) return ctg_infer_main(argc - 1, argv + 1);
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "-c") && i + 1 < argc) {
            conf_path = argv[++i];
        } else if (!strcmp(argv[i], "--aet") && i + 1 < argc) {
            calling_ae = argv[++i];
        } else if (!strcmp(argv[i], "--timeout") && i + 1 < argc) {
            timeout_s = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--tls") && i + 3 < argc) {
            use_tls = 1;
            tls.certificate = argv[++i];
            tls.private_key = argv[++i];
            tls.ca_file = argv[++i];
            tls.verify_peer = strcmp(tls.ca_file, "-") != 0;
            if (!tls.verify_peer) tls.ca_file = NULL;
            tls.profile = "bcp195";
        } else if (!strcmp(argv[i], "-v")) {
            ctg_log_set_level(CTG_LOG_DEBUG);
        } else {
            return usage();
        }
    }
    if (i >= argc) return usage();
    const char *cmd = argv[i++];
    int rest = argc - i;
    if (!strcmp(cmd, "status") && rest == 0) return cmd_status();
    if (!strcmp(cmd, "studies") && rest == 0) return cmd_studies();
    if (!strcmp(cmd, "jobs") && rest <= 1) return cmd_jobs(rest ? argv[i] : NULL);
    if (!strcmp(cmd, "exports") && rest <= 1) return cmd_exports(rest ? argv[i] : NULL);
    if (!strcmp(cmd, "reports") && rest <= 1) return cmd_reports(rest ? argv[i] : NULL);
    if (!strcmp(cmd, "requeue") && rest == 2 && !strcmp(argv[i], "export"))
        return cmd_requeue_export(argv[i + 1]);
    if (!strcmp(cmd, "requeue") && rest >= 1 && rest <= 2 && !strcmp(argv[i], "dead"))
        return cmd_requeue_dead(rest == 2 ? argv[i + 1] : NULL);
    if (!strcmp(cmd, "requeue") && rest == 1) return cmd_requeue(argv[i]);
    if (!strcmp(cmd, "model")) {
        ctg_config cfg;
        if (load_conf(&cfg) < 0) return 1;
        return ctg_model_cmd(cfg.model_path, rest, argv + i);
    }
    if (!strcmp(cmd, "echo") && rest == 3) return cmd_echo(argv + i);
    if (!strcmp(cmd, "send") && rest >= 4) return cmd_send(argv + i, rest - 3);
    return usage();
}
