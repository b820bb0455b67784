/*
 * test_reports_in.c - radiology reports coming in: the text of a report SR
 * (dicom/srtext.cc, on Basic Text SRs that DCMTK's xml2dsr makes from XML
 * written here), storing SR reports without re-queueing their study
 * (store/ingest.c, daemon/reports_in.c), the schema step 2 -> 3, the
 * drop-folder format, linking by UID and accession (study known, study
 * arriving later, ambiguous, given up), and a crash between storing a
 * file's report and moving the file.
 */
#include <dirent.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/daemon.h"
#include "dicom/dicom.h"
#include "store/store.h"
#include "tests.h"

#define CT_CLASS "1.2.840.10008.5.1.4.1.1.2"
#define BASIC_TEXT_SR "1.2.840.10008.5.1.4.1.1.88.11"

/* ---- helpers ------------------------------------------------------------------ */

static st_store *open_store(void)
{
    st_config c = {.spool_dir = "spool", .db_path = "index.db", .owner = 1};
    st_store *st = NULL;
    if (st_open(&c, &st) < 0) return NULL;
    return st;
}

static void make_inst(ctg_instance *in, const char *cls, const char *study, const char *acc,
                      const char *series, const char *sop)
{
    memset(in, 0, sizeof *in);
    snprintf(in->sop_class, sizeof in->sop_class, "%s", cls);
    snprintf(in->sop_uid, sizeof in->sop_uid, "%s", sop);
    snprintf(in->study_uid, sizeof in->study_uid, "%s", study);
    snprintf(in->series_uid, sizeof in->series_uid, "%s", series);
    snprintf(in->accession, sizeof in->accession, "%s", acc);
    snprintf(in->patient_id, sizeof in->patient_id, "P1");
    snprintf(in->patient_name, sizeof in->patient_name, "Doe^Jane");
    snprintf(in->modality, sizeof in->modality, strcmp(cls, CT_CLASS) ? "SR" : "CT");
    snprintf(in->transfer_syntax, sizeof in->transfer_syntax, "1.2.840.10008.1.2.1");
}

/* Ingests `content` (or the bytes of file `from`) as instance `in`. */
static int ingest(st_store *st, const ctg_instance *in, const char *content, const char *from,
                  double now, st_ingest_result *res)
{
    char path[PATH_MAX];
    int fd;
    int r = st_tmp_create(st, path, &fd);
    if (r < 0) return r;
    size_t n = 0;
    char *buf = from ? tu_slurp(from, &n) : strdup(content);
    if (!buf) return -1;
    if (!from) n = strlen(buf);
    if (write(fd, buf, n) != (ssize_t)n) return -1;
    free(buf);
    st_ingest_req q = {.inst = in, .tmp_path = path, .fd = fd, .data_offset = 0, .size = n,
                       .calling_ae = "UNIT", .now = now, .stable_seconds = 30};
    return st_ingest(st, &q, res);
}

/* One CT instance of a study: its own series and SOP UIDs under the study. */
static int ingest_ct(st_store *st, const char *study, const char *acc, int k, double now)
{
    ctg_instance in;
    char series[80], sop[80], content[64];
    snprintf(series, sizeof series, "%s.1", study);
    snprintf(sop, sizeof sop, "%s.1.%d", study, k);
    snprintf(content, sizeof content, "ct slice %d of %s", k, study);
    make_inst(&in, CT_CLASS, study, acc, series, sop);
    st_ingest_result res;
    return ingest(st, &in, content, NULL, now, &res);
}

static int write_file(const char *path, const char *text, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(text, 1, len, f);
    return fclose(f) == 0 && w == len ? 0 : -1;
}

static int file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* The integer a query prints, from the sqlite3 shell; -1 on failure. */
static long long sql_int(const char *sql)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "sqlite3 index.db \"%s\"", sql);
    FILE *p = popen(cmd, "r");
    long long v = -1;
    if (p) {
        if (fscanf(p, "%lld", &v) != 1) v = -1;
        pclose(p);
    }
    return v;
}

/* A Basic Text SR (TID 2000 shape) made by xml2dsr from XML.  manufacturer,
 * completion and verification vary between tests. */
static int make_sr(const char *path, const char *sop, const char *study, const char *acc,
                   const char *manufacturer, const char *completion, const char *verification)
{
    char xml[8192], xpath[PATH_MAX + 8], cmd[3 * PATH_MAX];
    snprintf(xml, sizeof xml,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        "<report type=\"Basic Text SR\">\n"
        "<sopclass uid=\"" BASIC_TEXT_SR "\">BasicTextSRStorage</sopclass>\n"
        "<charset>ISO_IR 192</charset>\n<modality>SR</modality>\n"
        "<manufacturer>%s</manufacturer>\n"
        "<patient><id>P1</id><name><last>Doe</last><first>Jane</first></name></patient>\n"
        "<study uid=\"%s\"><accession><number>%s</number></accession></study>\n"
        "<series uid=\"%s.77\"><number>77</number></series>\n"
        "<instance uid=\"%s\"><number>1</number></instance>\n"
        "<document>\n<completion flag=\"%s\"></completion>\n"
        "<verification flag=\"%s\">%s</verification>\n"
        "<content><date>2024-01-02</date><time>10:30:00</time>\n"
        "<container flag=\"SEPARATE\">\n"
        "<concept><value>11528-7</value><scheme><designator>LN</designator></scheme>"
        "<meaning>Radiology Report</meaning></concept>\n"
        "<text><relationship>CONTAINS</relationship>"
        "<concept><value>121060</value><scheme><designator>DCM</designator></scheme>"
        "<meaning>History</meaning></concept><value>Abdominal pain.</value></text>\n"
        "<container flag=\"SEPARATE\"><relationship>CONTAINS</relationship>"
        "<concept><value>121070</value><scheme><designator>DCM</designator></scheme>"
        "<meaning>Findings</meaning></concept>\n"
        "<text><relationship>CONTAINS</relationship>"
        "<concept><value>121071</value><scheme><designator>DCM</designator></scheme>"
        "<meaning>Finding</meaning></concept>"
        "<value>Liver: hypodense lesion in segment VII. Caf\xc3\xa9 au lait spots.</value></text>\n"
        "<code><relationship>CONTAINS</relationship>"
        "<concept><value>121071</value><scheme><designator>DCM</designator></scheme>"
        "<meaning>Finding</meaning></concept>"
        "<value>197321007</value><scheme><designator>SCT</designator></scheme>"
        "<meaning>Steatosis of liver</meaning></code>\n"
        "<num><relationship>CONTAINS</relationship>"
        "<concept><value>G-A22A</value><scheme><designator>SRT</designator></scheme>"
        "<meaning>Diameter</meaning></concept>"
        "<value>12</value><unit><value>mm</value><scheme><designator>UCUM</designator></scheme>"
        "<meaning>millimeter</meaning></unit></num>\n"
        "</container>\n"
        "<container flag=\"SEPARATE\"><relationship>CONTAINS</relationship>"
        "<concept><value>121072</value><scheme><designator>DCM</designator></scheme>"
        "<meaning>Impressions</meaning></concept>\n"
        "<text><relationship>CONTAINS</relationship>"
        "<concept><value>121073</value><scheme><designator>DCM</designator></scheme>"
        "<meaning>Impression</meaning></concept>"
        "<value>Hepatic lesion, likely a cyst.\nFollow-up in 6 months.</value></text>\n"
        "</container>\n</container>\n</content>\n</document>\n</report>\n",
        manufacturer, study, acc, study, sop, completion, verification,
        strcmp(verification, "VERIFIED") ? ""
            : "<observer pos=\"1\"><datetime>2024-01-02T11:00:00</datetime>"
              "<name><last>House</last><first>Greg</first></name>"
              "<organization>PPTH</organization></observer>");
    snprintf(xpath, sizeof xpath, "%s.xml", path);
    if (write_file(xpath, xml, strlen(xml)) < 0) return -1;
    snprintf(cmd, sizeof cmd, "xml2dsr '%s' '%s' 2>&1", xpath, path);
    int rc = system(cmd);
    return rc == 0 && file_exists(path) ? 0 : -1;
}

/* ---- SR text ----------------------------------------------------------------- */

static int test_sr_text(void)
{
    CHECK_EQ_INT(make_sr("r.dcm", "1.2.3.4.9", "1.2.3.4", "ACC42", "ACME RIS", "COMPLETE",
                         "VERIFIED"), 0);
    char *text = NULL, why[256];
    dcm_sr_info info;
    CHECK_EQ_INT(dcm_sr_text("r.dcm", &text, &info, why, sizeof why), 0);
    const char *want =
        "Radiology Report\n"
        "History: Abdominal pain.\n"
        "\n"
        "Findings:\n"
        "Liver: hypodense lesion in segment VII. Caf\xc3\xa9 au lait spots.\n"
        "Steatosis of liver\n"
        "Diameter: 12 mm\n"
        "\n"
        "Impressions:\n"
        "Hepatic lesion, likely a cyst.\n"
        "Follow-up in 6 months.\n";
    if (strcmp(text, want) != 0) fprintf(stderr, "got:\n%s\nwanted:\n%s\n", text, want);
    CHECK(!strcmp(text, want));
    free(text);
    CHECK(!strcmp(info.sop_class, BASIC_TEXT_SR));
    CHECK(!strcmp(info.sop_uid, "1.2.3.4.9"));
    CHECK(!strcmp(info.study_uid, "1.2.3.4"));
    CHECK(!strcmp(info.accession, "ACC42"));
    CHECK(!strcmp(info.manufacturer, "ACME RIS"));
    CHECK(!strcmp(info.title, "Radiology Report"));
    CHECK(!strcmp(info.completion, "COMPLETE"));
    CHECK(!strcmp(info.verification, "VERIFIED"));
    CHECK(!strcmp(info.author, "House^Greg"));
    CHECK(!strcmp(info.content_dt, "20240102103000"));
    CHECK(!strcmp(info.observed, "20240102103000"));
    CHECK_EQ_INT(info.nitems, 5);
    CHECK_EQ_INT(info.truncated, 0);

    /* Not an SR at all: a reason, no text. */
    CHECK_EQ_INT(write_file("junk.dcm", "not dicom", 9), 0);
    CHECK(dcm_sr_text("junk.dcm", &text, &info, why, sizeof why) == CTG_EDICOM);
    CHECK(text == NULL && why[0]);
    CHECK(dcm_sr_text("missing.dcm", &text, NULL, why, sizeof why) == CTG_ENOENT);
    return 0;
}

/* SRs through the ingest path: stored as instances, their text as
 * reports, and the study never pending because of them. */
static int test_sr_ingest(void)
{
    st_store *st = open_store();
    CHECK(st != NULL);
    const char *study = "1.2.5";
    for (int k = 1; k <= 3; k++) CHECK_EQ_INT(ingest_ct(st, study, "ACC5", k, 1000.0), 0);
    CHECK_EQ_INT(st_complete_due(st, 2000.0), 1);

    CHECK_EQ_INT(make_sr("final.dcm", "1.2.5.9.1", study, "ACC5", "ACME RIS", "COMPLETE",
                         "VERIFIED"), 0);
    CHECK_EQ_INT(make_sr("prelim.dcm", "1.2.5.9.2", study, "ACC5", "ACME RIS", "PARTIAL",
                         "UNVERIFIED"), 0);
    CHECK_EQ_INT(make_sr("ours.dcm", "1.2.5.9.3", study, "ACC5", "ctglip", "COMPLETE",
                         "UNVERIFIED"), 0);
    const char *files[] = {"final.dcm", "prelim.dcm", "ours.dcm"};
    int outcomes[3];
    for (int i = 0; i < 3; i++) {
        ctg_instance in;
        char why[320];
        CHECK_EQ_INT(dcm_read_instance(files[i], &in, why, sizeof why), 0);
        st_ingest_result res;
        CHECK_EQ_INT(ingest(st, &in, NULL, files[i], 3000.0 + i, &res), 0);
        CHECK_EQ_INT(res.outcome, ST_NEW);
        CHECK_EQ_INT(ctg_sr_report_ingest(st, &in, res.path, res.instance_id, 3000.0 + i,
                                          &outcomes[i], why, sizeof why), 0);
        /* The same SR again (a sender retrying after a lost response):
         * a duplicate instance and a known report. */
        CHECK_EQ_INT(ingest(st, &in, NULL, files[i], 3100.0, &res), 0);
        CHECK_EQ_INT(res.outcome, ST_DUPLICATE);
        int again;
        CHECK_EQ_INT(ctg_sr_report_ingest(st, &in, res.path, res.instance_id, 3100.0, &again,
                                          why, sizeof why), 0);
        CHECK_EQ_INT(again, i == 2 ? -1 : ST_DUPLICATE);
        if (i == 2) CHECK(strstr(why, "own output") != NULL);
    }
    CHECK_EQ_INT(outcomes[0], ST_NEW);
    CHECK_EQ_INT(outcomes[1], ST_NEW);
    CHECK_EQ_INT(outcomes[2], -1);

    st_counts c;
    CHECK_EQ_INT(st_counts_get(st, &c), 0);
    CHECK_EQ_INT(c.instances, 6);
    CHECK_EQ_INT(c.studies_pending, 0);
    CHECK_EQ_INT(c.reports, 2);
    CHECK_EQ_INT(c.reports_final, 1);
    CHECK_EQ_INT(c.reports_unlinked, 0);
    CHECK_EQ_INT(st_complete_due(st, 1e9), 0);
    st_close(st);
    CHECK_EQ_INT(sql_int("SELECT count(*) FROM jobs"), 1);
    CHECK_EQ_INT(sql_int("SELECT rx_gen FROM studies"), 3);
    CHECK_EQ_INT(sql_int("SELECT count(*) FROM reports WHERE source='sr' AND study_uid='1.2.5'"
                         " AND accession='ACC5' AND final=1 AND completion_flag='COMPLETE'"
                         " AND verification_flag='VERIFIED' AND author='House^Greg'"
                         " AND source_ref='1.2.5.9.1'"),
                 1);
    CHECK_EQ_INT(sql_int("SELECT count(*) FROM reports WHERE final=0 AND"
                         " verification_flag='UNVERIFIED' AND completion_flag='PARTIAL'"),
                 1);
    return 0;
}

/* The store alone: an SR never moves a study's deadline or generation,
 * before or after the images. */
static int test_sr_no_requeue(void)
{
    st_store *st = open_store();
    CHECK(st != NULL);
    ctg_instance sr;
    st_ingest_result res;
    double d;

    /* Report first: the study row exists, with nothing to process. */
    make_inst(&sr, BASIC_TEXT_SR, "1.2.6", "A6", "1.2.6.9", "1.2.6.9.1");
    CHECK_EQ_INT(ingest(st, &sr, "report", NULL, 100.0, &res), 0);
    CHECK_EQ_INT(st_next_deadline(st, &d), 0);
    st_counts c;
    CHECK_EQ_INT(st_counts_get(st, &c), 0);
    CHECK_EQ_INT(c.studies, 1);
    CHECK_EQ_INT(c.studies_pending, 0);
    /* Then the images: pending, one job. */
    CHECK_EQ_INT(ingest_ct(st, "1.2.6", "A6", 1, 200.0), 0);
    CHECK_EQ_INT(st_next_deadline(st, &d), 1);
    CHECK(d == 230.0);
    CHECK_EQ_INT(st_complete_due(st, 231.0), 1);
    /* A report after the job: nothing pending, no second job. */
    make_inst(&sr, BASIC_TEXT_SR, "1.2.6", "A6", "1.2.6.9", "1.2.6.9.2");
    CHECK_EQ_INT(ingest(st, &sr, "another report", NULL, 300.0, &res), 0);
    CHECK_EQ_INT(res.outcome, ST_NEW);
    CHECK_EQ_INT(st_next_deadline(st, &d), 0);
    CHECK_EQ_INT(st_complete_due(st, 1e9), 0);
    /* A report while images are still coming: the deadline stays the
     * images' own. */
    CHECK_EQ_INT(ingest_ct(st, "1.2.6", "A6", 2, 400.0), 0);
    make_inst(&sr, BASIC_TEXT_SR, "1.2.6", "A6", "1.2.6.9", "1.2.6.9.3");
    CHECK_EQ_INT(ingest(st, &sr, "third report", NULL, 420.0, &res), 0);
    CHECK_EQ_INT(st_next_deadline(st, &d), 1);
    CHECK(d == 430.0);
    CHECK_EQ_INT(st_complete_due(st, 431.0), 1);
    st_close(st);
    CHECK_EQ_INT(sql_int("SELECT rx_gen || queued_gen FROM studies"), 22);
    CHECK_EQ_INT(sql_int("SELECT last_received FROM studies"), 400);
    CHECK_EQ_INT(sql_int("SELECT count(*) FROM instances"), 5);
    CHECK_EQ_INT(st_sop_class_is_sr("1.2.840.10008.5.1.4.1.1.88.34"), 1);
    CHECK_EQ_INT(st_sop_class_is_sr(CT_CLASS), 0);
    CHECK_EQ_INT(st_sop_class_is_sr(NULL), 0);
    return 0;
}

/* ---- schema ---------------------------------------------------------------- */

static int test_migration_2_to_3(void)
{
    st_store *st = open_store();
    CHECK(st != NULL);
    CHECK_EQ_INT(st_schema_version(st), 3);
    CHECK_EQ_INT(ingest_ct(st, "1.2.7", "A7", 1, 10.0), 0);
    CHECK_EQ_INT(st_complete_due(st, 100.0), 1);
    st_close(st);
    /* Back to what a version-2 program left: no reports table, no
     * accession index, user_version 2. */
    sqlite3 *db;
    CHECK(sqlite3_open("index.db", &db) == SQLITE_OK);
    CHECK(sqlite3_exec(db,
                       "DROP TABLE reports; DROP INDEX studies_accession;"
                       " PRAGMA user_version=2",
                       NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    /* A read-only opener (the CLI) refuses the old schema rather than
     * reading it wrong. */
    st_config ro = {.spool_dir = "spool", .db_path = "index.db", .readonly = 1};
    CHECK_EQ_INT(st_open(&ro, &st), CTG_ESCHEMA);
    st = open_store();
    CHECK(st != NULL);
    CHECK_EQ_INT(st_schema_version(st), 3);
    st_counts c;
    CHECK_EQ_INT(st_counts_get(st, &c), 0);
    CHECK_EQ_INT(c.studies, 1);
    CHECK_EQ_INT(c.instances, 1);
    CHECK_EQ_INT(c.jobs[JOB_QUEUED], 1);
    CHECK_EQ_INT(c.reports, 0);
    st_report_in in = {.source = ST_REPORT_FILE, .source_ref = "A7.txt", .source_key = "k7",
                       .accession = "A7", .text = "Normal.", .final = 1, .now = 50.0};
    st_report_added added;
    CHECK_EQ_INT(st_report_add(st, &in, &added), 0);
    CHECK_EQ_INT(added.outcome, ST_NEW);
    CHECK_EQ_INT(added.linked, 1);
    CHECK(!strcmp(added.study_uid, "1.2.7"));
    st_close(st);
    /* Running step 2 -> 3 again (the version set back by hand) is harmless. */
    CHECK(sqlite3_open("index.db", &db) == SQLITE_OK);
    CHECK(sqlite3_exec(db, "PRAGMA user_version=2", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    st = open_store();
    CHECK(st != NULL);
    CHECK_EQ_INT(st_schema_version(st), 3);
    st_close(st);
    CHECK_EQ_INT(sql_int("SELECT count(*) FROM reports"), 1);
    CHECK_EQ_INT(sql_int("SELECT count(*) FROM jobs"), 1);
    return 0;
}

/* ---- the drop-folder format ------------------------------------------------- */

static int test_drop_parse(void)
{
    ctg_drop_report r;
    char why[256];
    const char *t;

    t = "Findings: normal liver.\n";
    CHECK_EQ_INT(ctg_drop_parse("1.2.840.99.1.txt", t, strlen(t), &r, why, sizeof why), 0);
    CHECK(!strcmp(r.study_uid, "1.2.840.99.1") && !r.accession[0]);
    /* "Findings:" is text, not a header. */
    CHECK(!strcmp(r.text, "Findings: normal liver."));
    free(r.text);

    CHECK_EQ_INT(ctg_drop_parse("ACC-7.txt", t, strlen(t), &r, why, sizeof why), 0);
    CHECK(!r.study_uid[0] && !strcmp(r.accession, "ACC-7"));
    free(r.text);
    /* Digits only: an accession number (a UID here needs a dot). */
    CHECK_EQ_INT(ctg_drop_parse("12345.txt", t, strlen(t), &r, why, sizeof why), 0);
    CHECK(!r.study_uid[0] && !strcmp(r.accession, "12345"));
    free(r.text);

    t = "StudyInstanceUID: 1.2.3\naccession number:  A1 \n\n\nFINDINGS:\n  Normal.\n\n";
    CHECK_EQ_INT(ctg_drop_parse("any name.txt", t, strlen(t), &r, why, sizeof why), 0);
    CHECK(!strcmp(r.study_uid, "1.2.3") && !strcmp(r.accession, "A1"));
    CHECK(!strcmp(r.text, "FINDINGS:\n  Normal."));
    free(r.text);

    /* Byte order mark, CR LF, Latin-1. */
    t = "\xef\xbb\xbf" "Accession: B2\r\nCaf\xe9 noir.\r\nLine two\r\n";
    CHECK_EQ_INT(ctg_drop_parse("x.txt", t, strlen(t), &r, why, sizeof why), 0);
    CHECK(!strcmp(r.accession, "B2"));
    CHECK(!strcmp(r.text, "Caf\xc3\xa9 noir.\nLine two"));
    CHECK_EQ_INT(r.latin1, 1);
    free(r.text);
    t = "Accession: B2\nCaf\xc3\xa9\n";
    CHECK_EQ_INT(ctg_drop_parse("x.txt", t, strlen(t), &r, why, sizeof why), 0);
    CHECK(!strcmp(r.text, "Caf\xc3\xa9") && r.latin1 == 0);
    free(r.text);

    /* Refusals, each with a reason. */
    t = "Accession: B2\n\n  \n";
    CHECK_EQ_INT(ctg_drop_parse("x.txt", t, strlen(t), &r, why, sizeof why), CTG_EFORMAT);
    CHECK(strstr(why, "no report text") != NULL && r.text == NULL);
    CHECK_EQ_INT(ctg_drop_parse("x.txt", "a\0b", 3, &r, why, sizeof why), CTG_EFORMAT);
    CHECK(strstr(why, "NUL") != NULL);
    t = "Normal.\n";
    CHECK_EQ_INT(ctg_drop_parse("far too long for an accession.txt", t, strlen(t), &r, why,
                                sizeof why), CTG_EFORMAT);
    CHECK(strstr(why, "neither") != NULL);
    t = "StudyInstanceUID: 1..2\nNormal.\n";
    CHECK_EQ_INT(ctg_drop_parse("x.txt", t, strlen(t), &r, why, sizeof why), CTG_EFORMAT);
    CHECK(strstr(why, "not a valid UID") != NULL);
    t = "Accession: 12345678901234567\nNormal.\n";
    CHECK_EQ_INT(ctg_drop_parse("x.txt", t, strlen(t), &r, why, sizeof why), CTG_EFORMAT);
    CHECK_EQ_INT(ctg_drop_parse("x.doc", t, strlen(t), &r, why, sizeof why), CTG_EFORMAT);
    return 0;
}

/* ---- the drop folder against the store ---------------------------------------- */

typedef struct listed {
    int n;
    char uid[8][65], acc[8][65];
    int linked[8], final[8];
    char text[8][64];
} listed;

static int collect(void *ud, const st_report *r)
{
    listed *l = ud;
    if (l->n < 8) {
        snprintf(l->uid[l->n], 65, "%s", r->study_uid);
        snprintf(l->acc[l->n], 65, "%s", r->accession);
        snprintf(l->text[l->n], 64, "%s", r->text);
        l->linked[l->n] = r->linked;
        l->final[l->n] = r->final;
    }
    l->n++;
    return 0;
}

static int drop(const char *name, const char *text)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "in/%s", name);
    return write_file(p, text, strlen(text));
}

static int test_drop_link(void)
{
    st_store *st = open_store();
    CHECK(st != NULL);
    CHECK(mkdir("in", 0750) == 0);
    const double t0 = 1e6, day = 86400;
    CHECK_EQ_INT(ingest_ct(st, "1.2.10", "ACC1", 1, t0), 0);

    CHECK_EQ_INT(drop("1.2.10.txt", "Report by UID.\n"), 0);   /* known study */
    CHECK_EQ_INT(drop("ACC1.txt", "Report by accession.\n"), 0); /* known by accession */
    CHECK_EQ_INT(drop("ACC2.txt", "Early report.\n"), 0);        /* study not here yet */
    CHECK_EQ_INT(drop("ACC3.txt", "Never comes.\n"), 0);         /* study never comes */
    CHECK_EQ_INT(write_file("in/bin.txt", "a\0b", 3), 0);        /* not text */
    CHECK_EQ_INT(drop("notes.md", "ignored: not .txt\n"), 0);
    /* A file that is still being written is left for the next pass. */
    ctg_drop_stats s;
    CHECK_EQ_INT(ctg_drop_scan(st, "in", 30, ctg_now(), &s), 0);
    CHECK_EQ_INT(s.stored + s.done + s.failed + s.waiting, 0);

    double now = ctg_now() + 10;
    CHECK_EQ_INT(ctg_drop_scan(st, "in", 30, now, &s), 0);
    CHECK_EQ_INT(s.stored, 4);
    CHECK_EQ_INT(s.done, 2);
    CHECK_EQ_INT(s.waiting, 2);
    CHECK_EQ_INT(s.failed, 1);
    CHECK(file_exists("in/done/1.2.10.txt") && file_exists("in/done/ACC1.txt"));
    CHECK(file_exists("in/ACC2.txt") && file_exists("in/ACC3.txt"));
    CHECK(file_exists("in/failed/bin.txt") && file_exists("in/failed/bin.txt.why"));
    CHECK(file_exists("in/notes.md"));
    char *why = tu_slurp("in/failed/bin.txt.why", NULL);
    CHECK(why && strstr(why, "NUL"));
    free(why);

    listed l = {0};
    CHECK_EQ_INT(st_reports_list(st, NULL, collect, &l), 0);
    CHECK_EQ_INT(l.n, 4);
    CHECK(!strcmp(l.uid[0], "1.2.10") && !strcmp(l.acc[0], "ACC1") && l.linked[0]);
    CHECK(!strcmp(l.uid[1], "1.2.10") && !strcmp(l.acc[1], "ACC1") && l.linked[1]);
    CHECK(!l.uid[2][0] && !strcmp(l.acc[2], "ACC2") && !l.linked[2] && l.final[2]);
    st_counts c;
    CHECK_EQ_INT(st_counts_get(st, &c), 0);
    CHECK_EQ_INT(c.reports, 4);
    CHECK_EQ_INT(c.reports_unlinked, 2);

    /* Nothing changes on a second pass; the study of ACC2 then arrives and
     * the next pass links its report and moves the file. */
    CHECK_EQ_INT(ctg_drop_scan(st, "in", 30, now + 1, &s), 0);
    CHECK_EQ_INT(s.stored + s.done + s.failed, 0);
    CHECK_EQ_INT(s.waiting, 2);
    CHECK_EQ_INT(ingest_ct(st, "1.2.11", "ACC2", 1, now + 2), 0);
    CHECK_EQ_INT(ctg_drop_scan(st, "in", 30, now + 3, &s), 0);
    CHECK_EQ_INT(s.linked, 1);
    CHECK_EQ_INT(s.done, 1);
    CHECK(file_exists("in/done/ACC2.txt") && !file_exists("in/ACC2.txt"));
    st_report_query q = {.study = "1.2.11"};
    memset(&l, 0, sizeof l);
    CHECK_EQ_INT(st_reports_list(st, &q, collect, &l), 0);
    CHECK_EQ_INT(l.n, 1);
    CHECK(!strcmp(l.text[0], "Early report.") && l.linked[0]);

    /* The retrain's question: final, linked, changed since a time.  A
     * time after everything so far: nothing; new images of a study bring
     * its report back. */
    st_report_query since = {.since = now + 100, .final_only = 1, .linked_only = 1};
    memset(&l, 0, sizeof l);
    CHECK_EQ_INT(st_reports_list(st, &since, collect, &l), 0);
    CHECK_EQ_INT(l.n, 0);
    CHECK_EQ_INT(ingest_ct(st, "1.2.11", "ACC2", 2, now + 200), 0);
    memset(&l, 0, sizeof l);
    CHECK_EQ_INT(st_reports_list(st, &since, collect, &l), 0);
    CHECK_EQ_INT(l.n, 1);
    CHECK(!strcmp(l.uid[0], "1.2.11"));
    /* Newest per study: one of the two reports of 1.2.10. */
    st_report_query latest = {.linked_only = 1, .latest_per_study = 1};
    memset(&l, 0, sizeof l);
    CHECK_EQ_INT(st_reports_list(st, &latest, collect, &l), 0);
    CHECK_EQ_INT(l.n, 2);
    CHECK(!strcmp(l.text[0], "Report by accession.") && !strcmp(l.text[1], "Early report."));

    /* An accession two studies share stays unlinked (ambiguous). */
    CHECK_EQ_INT(ingest_ct(st, "1.2.12", "ACC9", 1, now), 0);
    CHECK_EQ_INT(ingest_ct(st, "1.2.13", "ACC9", 1, now), 0);
    CHECK_EQ_INT(drop("ACC9.txt", "Which one?\n"), 0);
    CHECK_EQ_INT(ctg_drop_scan(st, "in", 30, now + 10, &s), 0);
    CHECK_EQ_INT(s.stored, 1);
    CHECK_EQ_INT(s.waiting, 2);
    CHECK(file_exists("in/ACC9.txt"));

    /* After give_up_days a report whose study never came goes to failed/
     * with its reason, and its row is removed. */
    CHECK_EQ_INT(ctg_drop_scan(st, "in", 30, now + 31 * day, &s), 0);
    CHECK_EQ_INT(s.failed, 2);
    CHECK(file_exists("in/failed/ACC3.txt") && file_exists("in/failed/ACC3.txt.why"));
    CHECK(file_exists("in/failed/ACC9.txt"));
    why = tu_slurp("in/failed/ACC3.txt.why", NULL);
    CHECK(why && strstr(why, "accession ACC3") && strstr(why, "30 day"));
    free(why);
    CHECK_EQ_INT(st_counts_get(st, &c), 0);
    CHECK_EQ_INT(c.reports, 3);
    CHECK_EQ_INT(c.reports_unlinked, 0);
    st_close(st);
    return 0;
}

/* A crash after a file's report was stored and before the file moved: the
 * file is still in the folder.  The next pass must find the report by its
 * key, add nothing, and finish the move.  A different report under the
 * same name is a new report. */
static int test_drop_crash_idempotent(void)
{
    st_store *st = open_store();
    CHECK(st != NULL);
    CHECK(mkdir("in", 0750) == 0);
    CHECK_EQ_INT(ingest_ct(st, "1.2.20", "ACC20", 1, 1000.0), 0);
    CHECK_EQ_INT(drop("ACC20.txt", "Final report.\n"), 0);
    double now = ctg_now() + 10;
    ctg_drop_stats s;
    CHECK_EQ_INT(ctg_drop_scan(st, "in", 30, now, &s), 0);
    CHECK_EQ_INT(s.stored, 1);
    CHECK_EQ_INT(s.done, 1);
    /* Put the file back where it was before the move. */
    CHECK(rename("in/done/ACC20.txt", "in/ACC20.txt") == 0);
    CHECK_EQ_INT(ctg_drop_scan(st, "in", 30, now + 1, &s), 0);
    CHECK_EQ_INT(s.stored, 0);
    CHECK_EQ_INT(s.done, 1);
    CHECK(file_exists("in/done/ACC20.txt") && !file_exists("in/ACC20.txt"));
    /* The daemon restarted in between: a new handle, the same answer. */
    st_close(st);
    st = open_store();
    CHECK(st != NULL);
    CHECK_EQ_INT(drop("ACC20.txt", "Final report.\n"), 0);
    CHECK_EQ_INT(ctg_drop_scan(st, "in", 30, now + 2, &s), 0);
    CHECK_EQ_INT(s.stored, 0);
    CHECK_EQ_INT(s.done, 1);
    CHECK(file_exists("in/done/ACC20.1.txt"));
    /* An amended report under the same name. */
    CHECK_EQ_INT(drop("ACC20.txt", "Amended final report.\n"), 0);
    CHECK_EQ_INT(ctg_drop_scan(st, "in", 30, now + 3, &s), 0);
    CHECK_EQ_INT(s.stored, 1);
    CHECK(file_exists("in/done/ACC20.2.txt"));
    st_close(st);
    CHECK_EQ_INT(sql_int("SELECT count(*) FROM reports"), 2);
    CHECK_EQ_INT(sql_int("SELECT count(DISTINCT source_key) FROM reports"), 2);
    /* Nothing half-written is left behind. */
    CHECK_EQ_INT(sql_int("SELECT count(*) FROM reports WHERE study_uid='1.2.20'"), 2);
    DIR *d = opendir("in/done");
    CHECK(d != NULL);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d)) != NULL) n += e->d_name[0] != '.';
    closedir(d);
    CHECK_EQ_INT(n, 3);
    return 0;
}

/* ---- [reports] in the config -------------------------------------------------- */

static int load_conf(const char *text, ctg_config *c, char *err, size_t n)
{
    if (write_file("t.conf", text, strlen(text)) < 0) return -1;
    ctg_config_defaults(c);
    return ctg_config_load("t.conf", c, err, n);
}

static int test_config_keys(void)
{
    ctg_config c, d;
    char err[512];
    ctg_config_defaults(&d);
    CHECK(!strcmp(d.reports_drop, "var/reports-in"));
    CHECK_EQ_INT(d.reports_poll_seconds, 10);
    CHECK_EQ_INT(d.reports_give_up_days, 30);
    CHECK_EQ_INT(load_conf("[reports]\ndrop_folder = /srv/ris-out\npoll_seconds = 3\n"
                           "give_up_days = 7\n", &c, err, sizeof err), 0);
    CHECK(!strcmp(c.reports_drop, "/srv/ris-out"));
    CHECK_EQ_INT(c.reports_poll_seconds, 3);
    CHECK_EQ_INT(c.reports_give_up_days, 7);
    /* Empty: off. */
    CHECK_EQ_INT(load_conf("[reports]\ndrop_folder =\n", &c, err, sizeof err), 0);
    CHECK(c.reports_drop[0] == 0);
    CHECK_EQ_INT(load_conf("[reports]\npoll_seconds = 0\n", &c, err, sizeof err), CTG_ECONFIG);
    CHECK(strstr(err, "t.conf:2:") && strstr(err, "poll_seconds"));
    CHECK_EQ_INT(load_conf("[reports]\nfolder = x\n", &c, err, sizeof err), CTG_ECONFIG);
    CHECK(strstr(err, "unknown key 'folder' in [reports]"));
    CHECK_EQ_INT(load_conf("[store]\nspool = s\n[reports]\ndrop_folder = s\n", &c, err,
                           sizeof err), CTG_ECONFIG);
    CHECK(strstr(err, "drop_folder"));
    /* Reload: the interval and patience apply at once, the folder needs a
     * restart. */
    ctg_config a = d, b = d;
    b.reports_poll_seconds = 2;
    b.reports_give_up_days = 1;
    CHECK_EQ_INT(ctg_config_apply_reloadable(&a, &b), 0);
    CHECK_EQ_INT(a.reports_poll_seconds, 2);
    CHECK_EQ_INT(a.reports_give_up_days, 1);
    snprintf(b.reports_drop, sizeof b.reports_drop, "elsewhere");
    CHECK_EQ_INT(ctg_config_apply_reloadable(&a, &b), 1);
    return 0;
}

const test_case reports_in_tests[] = {
    {"reports_in_sr_text", test_sr_text},
    {"reports_in_sr_ingest", test_sr_ingest},
    {"reports_in_sr_no_requeue", test_sr_no_requeue},
    {"reports_in_migration_2_to_3", test_migration_2_to_3},
    {"reports_in_drop_parse", test_drop_parse},
    {"reports_in_drop_link", test_drop_link},
    {"reports_in_drop_crash_idempotent", test_drop_crash_idempotent},
    {"reports_in_config", test_config_keys},
    {NULL, NULL},
};
