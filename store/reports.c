/*
 * reports.c - radiology reports received: the reports table (schema 3).
 *
 * A report row holds the text of a radiologist's report and where it came
 * from (an SR's SOP Instance UID, or a drop-folder file's name), with a
 * unique source_key so that adding it again, e.g. after a crash between
 * storing the row and acknowledging or moving the input, changes nothing.
 *
 * Linking to the study is by Study Instance UID.  A report that names only
 * an accession number gets its study's UID once exactly one study in the
 * index has that accession (st_report_add tries at once, st_reports_link on
 * every call later); linked_at records when a report's study was first seen
 * in the index.  Whether a report is linked is decided when it is read (a
 * join with studies), so a report whose study arrives later needs no
 * update beyond that timestamp.
 *
 * Threading: any thread; each call is one transaction under the handle
 * lock.
 */
#include "store_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int empty(const char *s) { return !s || !*s; }

static void bind_opt(sqlite3_stmt *s, int i, const char *v)
{
    if (empty(v))
        sqlite3_bind_null(s, i);
    else
        sqlite3_bind_text(s, i, v, -1, SQLITE_TRANSIENT);
}

static void copy_col(sqlite3_stmt *s, int col, char *dst, size_t cap)
{
    const char *v = (const char *)sqlite3_column_text(s, col);
    snprintf(dst, cap, "%s", v ? v : "");
}

/* The UID of the one study with this accession: 1 and uid when exactly
 * one has it, 0 when none or several do, <0 on error.  Caller holds the
 * lock. */
static int study_by_accession(st_store *st, const char *acc, char uid[65])
{
    sqlite3_stmt *s;
    if (st__prepare(st, "SELECT study_uid FROM studies WHERE accession=?1 LIMIT 2", &s) < 0)
        return CTG_EDB;
    sqlite3_bind_text(s, 1, acc, -1, SQLITE_TRANSIENT);
    int n = 0, rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (n++ == 0) copy_col(s, 0, uid, 65);
    }
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE) return st__dberr(st, "report accession");
    if (n != 1) uid[0] = 0; /* none, or ambiguous */
    return n == 1;
}

/* 1 and the study's accession when the study is indexed, 0 when not. */
static int study_known(st_store *st, const char *uid, char *acc, size_t cap)
{
    sqlite3_stmt *s;
    if (st__prepare(st, "SELECT coalesce(accession,'') FROM studies WHERE study_uid=?1", &s) < 0)
        return CTG_EDB;
    sqlite3_bind_text(s, 1, uid, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(s), r;
    if (rc == SQLITE_ROW) {
        if (acc) copy_col(s, 0, acc, cap);
        r = 1;
    } else {
        r = rc == SQLITE_DONE ? 0 : st__dberr(st, "report study");
    }
    sqlite3_finalize(s);
    return r;
}

int st_report_add(st_store *st, const st_report_in *r, st_report_added *out)
{
    memset(out, 0, sizeof *out);
    if (st->readonly) return CTG_ESTATE;
    if (empty(r->source_key) || empty(r->source_ref) || !r->text ||
        (r->source != ST_REPORT_SR && r->source != ST_REPORT_FILE))
        return CTG_EINVAL;
    if (!empty(r->study_uid) && !st_uid_valid(r->study_uid)) return CTG_EINVAL;
    if (empty(r->study_uid) && (empty(r->accession) || strlen(r->accession) > 64))
        return CTG_EINVAL;

    sqlite3_stmt *s = NULL;
    int rc, ret;
    pthread_mutex_lock(&st->lock);
    if ((ret = st__exec(st, "BEGIN IMMEDIATE")) < 0) goto out;

    /* Known already: report what is there and change nothing. */
    if ((ret = st__prepare(st,
                           "SELECT id, received, coalesce(study_uid,''), study_uid IS NOT NULL"
                           " AND EXISTS(SELECT 1 FROM studies t WHERE t.study_uid=r.study_uid)"
                           " FROM reports r WHERE source_key=?1",
                           &s)) < 0)
        goto rollback;
    sqlite3_bind_text(s, 1, r->source_key, -1, SQLITE_TRANSIENT);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        out->id = sqlite3_column_int64(s, 0);
        out->received = sqlite3_column_double(s, 1);
        copy_col(s, 2, out->study_uid, sizeof out->study_uid);
        out->linked = sqlite3_column_int(s, 3);
        out->outcome = ST_DUPLICATE;
        sqlite3_finalize(s);
        s = NULL;
        ret = st__exec(st, "ROLLBACK");
        goto out;
    }
    sqlite3_finalize(s);
    s = NULL;
    if (rc != SQLITE_DONE) {
        ret = st__dberr(st, "report lookup");
        goto rollback;
    }

    /* Resolve the study now where the index already can. */
    char uid[65] = "", acc[65] = "";
    snprintf(acc, sizeof acc, "%s", r->accession ? r->accession : "");
    if (!empty(r->study_uid)) {
        snprintf(uid, sizeof uid, "%s", r->study_uid);
        char known_acc[65] = "";
        if ((ret = study_known(st, uid, known_acc, sizeof known_acc)) < 0) goto rollback;
        out->linked = ret;
        if (out->linked && !acc[0]) snprintf(acc, sizeof acc, "%s", known_acc);
    } else {
        if ((ret = study_by_accession(st, acc, uid)) < 0) goto rollback;
        out->linked = ret;
    }

    if ((ret = st__prepare(st,
                           "INSERT INTO reports(study_uid, accession, source, source_ref,"
                           " source_key, text, completion_flag, verification_flag, observed,"
                           " author, final, received, linked_at)"
                           " VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)",
                           &s)) < 0)
        goto rollback;
    bind_opt(s, 1, uid);
    bind_opt(s, 2, acc);
    sqlite3_bind_text(s, 3, r->source == ST_REPORT_SR ? "sr" : "file", -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 4, r->source_ref, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 5, r->source_key, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 6, r->text, -1, SQLITE_TRANSIENT);
    bind_opt(s, 7, r->completion);
    bind_opt(s, 8, r->verification);
    bind_opt(s, 9, r->observed);
    bind_opt(s, 10, r->author);
    sqlite3_bind_int(s, 11, r->final ? 1 : 0);
    sqlite3_bind_double(s, 12, r->now);
    if (out->linked)
        sqlite3_bind_double(s, 13, r->now);
    else
        sqlite3_bind_null(s, 13);
    rc = sqlite3_step(s);
    sqlite3_finalize(s);
    s = NULL;
    if (rc != SQLITE_DONE) {
        ret = st__dberr(st, "insert report");
        goto rollback;
    }
    out->id = sqlite3_last_insert_rowid(st->db);
    if ((ret = st__exec(st, "COMMIT")) < 0) goto rollback;
    out->outcome = ST_NEW;
    out->received = r->now;
    snprintf(out->study_uid, sizeof out->study_uid, "%s", uid);
    goto out;
rollback:
    if (s) sqlite3_finalize(s);
    st__exec(st, "ROLLBACK");
out:
    pthread_mutex_unlock(&st->lock);
    return ret < 0 ? ret : 0;
}

int st_reports_link(st_store *st, double now)
{
    if (st->readonly) return CTG_ESTATE;
    sqlite3_stmt *s;
    int r, n = 0;
    pthread_mutex_lock(&st->lock);
    if ((r = st__exec(st, "BEGIN IMMEDIATE")) < 0) goto out;
    /* An accession resolves when exactly one study has it: a second study
     * with the same accession (another site's numbering, a re-scan) makes
     * the report ambiguous, and it waits for an admin. */
    if ((r = st__exec(st,
                      "UPDATE reports SET study_uid=(SELECT t.study_uid FROM studies t"
                      "  WHERE t.accession=reports.accession)"
                      " WHERE study_uid IS NULL AND accession IS NOT NULL"
                      " AND (SELECT count(*) FROM studies t WHERE t.accession=reports.accession)=1")) < 0)
        goto rollback;
    /* Reports named by UID learn their study's accession. */
    if ((r = st__exec(st,
                      "UPDATE reports SET accession=(SELECT t.accession FROM studies t"
                      "  WHERE t.study_uid=reports.study_uid)"
                      " WHERE linked_at IS NULL AND study_uid IS NOT NULL"
                      " AND (accession IS NULL OR accession='')"
                      " AND EXISTS(SELECT 1 FROM studies t WHERE t.study_uid=reports.study_uid"
                      "  AND coalesce(t.accession,'')<>'')")) < 0)
        goto rollback;
    if ((r = st__prepare(st,
                         "UPDATE reports SET linked_at=?1 WHERE linked_at IS NULL"
                         " AND study_uid IS NOT NULL"
                         " AND EXISTS(SELECT 1 FROM studies t WHERE t.study_uid=reports.study_uid)",
                         &s)) < 0)
        goto rollback;
    sqlite3_bind_double(s, 1, now);
    int rc = sqlite3_step(s);
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE) {
        r = st__dberr(st, "link reports");
        goto rollback;
    }
    n = sqlite3_changes(st->db);
    if ((r = st__exec(st, "COMMIT")) < 0) goto rollback;
    goto out;
rollback:
    st__exec(st, "ROLLBACK");
    n = 0;
out:
    pthread_mutex_unlock(&st->lock);
    return r < 0 ? r : n;
}

int st_report_delete(st_store *st, int64_t id)
{
    if (st->readonly) return CTG_ESTATE;
    sqlite3_stmt *s;
    int r;
    pthread_mutex_lock(&st->lock);
    if ((r = st__prepare(st, "DELETE FROM reports WHERE id=?1", &s)) < 0) goto out;
    sqlite3_bind_int64(s, 1, id);
    int rc = sqlite3_step(s);
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE)
        r = st__dberr(st, "delete report");
    else
        r = sqlite3_changes(st->db) == 1 ? 0 : CTG_ENOTFOUND;
out:
    pthread_mutex_unlock(&st->lock);
    return r;
}

/* The moment a report last changed for a reader: stored, linked, or its
 * study's images arrived.  Shared by the filter and the column. */
#define CHANGED_EXPR \
    "max(r.received, coalesce(r.linked_at, 0), coalesce(t.last_received, 0))"

/* One listed row, copied out so that the callback runs without the lock. */
typedef struct row_copy {
    st_report r;
    char *text;
} row_copy;

/* Rows are read in batches of this many, the lock held only while one is
 * read: memory stays bounded however many reports there are, and the
 * callback may call the store (the retrain reads each study's files). */
#define LIST_BATCH 64

int st_reports_list(st_store *st, const st_report_query *q, st_report_fn fn, void *ud)
{
    static const st_report_query all = {0};
    if (!q) q = &all;
    row_copy *rows = calloc(LIST_BATCH, sizeof *rows);
    if (!rows) return CTG_ENOMEM;
    int64_t after = 0;
    int r = 0, n;
    do {
        sqlite3_stmt *s;
        n = 0;
        pthread_mutex_lock(&st->lock);
        if ((r = st__prepare(st,
                             "SELECT r.id, coalesce(r.study_uid,''), coalesce(r.accession,''),"
                             " r.source, r.source_ref, coalesce(r.completion_flag,''),"
                             " coalesce(r.verification_flag,''), coalesce(r.observed,''),"
                             " coalesce(r.author,''), r.final, t.id IS NOT NULL,"
                             " (SELECT count(*) FROM instances i JOIN series e ON i.series_ref=e.id"
                             "   WHERE e.study_ref=t.id AND i.current=1"
                             "   AND i.sop_class NOT LIKE '1.2.840.10008.5.1.4.1.1.88.%'),"
                             " r.received, " CHANGED_EXPR ", r.text"
                             " FROM reports r LEFT JOIN studies t ON t.study_uid=r.study_uid"
                             " WHERE r.id > ?6"
                             " AND (?1 IS NULL OR r.study_uid=?1 OR r.accession=?1)"
                             " AND " CHANGED_EXPR " >= ?2"
                             " AND (?7 <= 0 OR " CHANGED_EXPR " < ?7)"
                             " AND (?3=0 OR r.final=1)"
                             " AND (?4=0 OR t.id IS NOT NULL)"
                             " AND (?5=0 OR r.study_uid IS NULL OR r.id=(SELECT max(r2.id) FROM"
                             "   reports r2 WHERE r2.study_uid=r.study_uid AND (?3=0 OR r2.final=1)))"
                             " ORDER BY r.id LIMIT ?8",
                             &s)) < 0) {
            pthread_mutex_unlock(&st->lock);
            break;
        }
        bind_opt(s, 1, q->study);
        sqlite3_bind_double(s, 2, q->since);
        sqlite3_bind_int(s, 3, q->final_only ? 1 : 0);
        sqlite3_bind_int(s, 4, q->linked_only ? 1 : 0);
        sqlite3_bind_int(s, 5, q->latest_per_study ? 1 : 0);
        sqlite3_bind_int64(s, 6, after);
        sqlite3_bind_double(s, 7, q->until);
        sqlite3_bind_int(s, 8, LIST_BATCH);
        int rc;
        while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
            st_report *rep = &rows[n].r;
            memset(rep, 0, sizeof *rep);
            rep->id = sqlite3_column_int64(s, 0);
            copy_col(s, 1, rep->study_uid, sizeof rep->study_uid);
            copy_col(s, 2, rep->accession, sizeof rep->accession);
            const char *src = (const char *)sqlite3_column_text(s, 3);
            rep->source = src && !strcmp(src, "sr") ? ST_REPORT_SR : ST_REPORT_FILE;
            copy_col(s, 4, rep->source_ref, sizeof rep->source_ref);
            copy_col(s, 5, rep->completion, sizeof rep->completion);
            copy_col(s, 6, rep->verification, sizeof rep->verification);
            copy_col(s, 7, rep->observed, sizeof rep->observed);
            copy_col(s, 8, rep->author, sizeof rep->author);
            rep->final = sqlite3_column_int(s, 9);
            rep->linked = sqlite3_column_int(s, 10);
            rep->images = sqlite3_column_int(s, 11);
            rep->received = sqlite3_column_double(s, 12);
            rep->changed = sqlite3_column_double(s, 13);
            const char *text = (const char *)sqlite3_column_text(s, 14);
            if (!(rows[n].text = strdup(text ? text : ""))) {
                r = CTG_ENOMEM;
                break;
            }
            n++;
        }
        if (r == 0 && rc != SQLITE_ROW && rc != SQLITE_DONE) r = st__dberr(st, "list reports");
        sqlite3_finalize(s);
        pthread_mutex_unlock(&st->lock);
        for (int i = 0; i < n; i++) {
            rows[i].r.text = rows[i].text;
            if (r == 0) r = fn(ud, &rows[i].r);
            after = rows[i].r.id;
            free(rows[i].text);
            rows[i].text = NULL;
        }
    } while (r == 0 && n == LIST_BATCH);
    free(rows);
    return r;
}

int st_reports_final(st_store *st, double since, double until, st_report_fn fn, void *ud)
{
    st_report_query q = {.since = since, .until = until, .final_only = 1, .linked_only = 1,
                         .latest_per_study = 1};
    return st_reports_list(st, &q, fn, ud);
}
