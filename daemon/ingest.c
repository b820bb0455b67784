/*
 * ingest.c - the policy behind the SCP: who may open an association, how
 * many at once, where a received data set goes, and what status it earns.
 *
 * Threading: every hook runs on an association thread.  The reloadable
 * settings are copied into this struct under `lock` (a rwlock: hooks read,
 * reload writes); association counters are under `count_lock`.
 */
#include "daemon.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_TRACKED 1024

struct ctg_ingest {
    pthread_rwlock_t lock;
    ctg_config cfg; /* reloadable fields are refreshed by reconfigure() */
    st_store *st;
    void (*on_arrival)(void *, double);
    void *ud;

    pthread_mutex_t count_lock;
    int total;
    struct {
        char ae[17];
        int n;
    } per_ae[MAX_TRACKED];
};

int ctg_ingest_new(const ctg_config *cfg, st_store *st, void (*on_arrival)(void *, double),
                   void *ud, ctg_ingest **out)
{
    ctg_ingest *ing = calloc(1, sizeof *ing);
    if (!ing) return CTG_ENOMEM;
    pthread_rwlock_init(&ing->lock, NULL);
    pthread_mutex_init(&ing->count_lock, NULL);
    ing->cfg = *cfg;
    ing->st = st;
    ing->on_arrival = on_arrival;
    ing->ud = ud;
    *out = ing;
    return 0;
}

void ctg_ingest_free(ctg_ingest *ing)
{
    if (!ing) return;
    pthread_rwlock_destroy(&ing->lock);
    pthread_mutex_destroy(&ing->count_lock);
    free(ing);
}

void ctg_ingest_reconfigure(ctg_ingest *ing, const ctg_config *cfg)
{
    pthread_rwlock_wrlock(&ing->lock);
    ctg_config_apply_reloadable(&ing->cfg, cfg);
    pthread_rwlock_unlock(&ing->lock);
}

/* ---- admission ------------------------------------------------------------- */

static int *ae_slot(ctg_ingest *ing, const char *ae, int create)
{
    int free_slot = -1;
    for (int i = 0; i < MAX_TRACKED; i++) {
        if (ing->per_ae[i].n > 0 && strcmp(ing->per_ae[i].ae, ae) == 0)
            return &ing->per_ae[i].n;
        if (free_slot < 0 && ing->per_ae[i].n == 0) free_slot = i;
    }
    if (!create || free_slot < 0) return NULL;
    snprintf(ing->per_ae[free_slot].ae, 17, "%s", ae);
    return &ing->per_ae[free_slot].n;
}

static int admit(void *ud, const dcm_assoc_info *a, char *why, size_t n)
{
    ctg_ingest *ing = ud;
    int verdict = DCM_ADMIT;
    pthread_rwlock_rdlock(&ing->lock);
    const ctg_config *c = &ing->cfg;

    if (strcmp(a->called_ae, c->ae_title) != 0) {
        snprintf(why, n, "called AE title '%s' is not ours ('%s')", a->called_ae, c->ae_title);
        verdict = DCM_REJECT_CALLED_AE;
        goto out;
    }
    if (!ctg_addr_allowed(c, a->peer)) {
        snprintf(why, n, "peer address %s is not in [access] allow_hosts", a->peer);
        verdict = DCM_REJECT_NO_REASON;
        goto out;
    }
    if (!c->any_ae) {
        int ok = 0;
        for (int i = 0; i < c->n_allow_ae && !ok; i++) ok = !strcmp(c->allow_ae[i], a->calling_ae);
        if (!ok) {
            snprintf(why, n, "calling AE title '%s' is not in [access] allow_ae", a->calling_ae);
            verdict = DCM_REJECT_CALLING_AE;
            goto out;
        }
    }
    const ctg_ae_rule *rule = ctg_ae_rule_find(c, a->calling_ae);
    int per_ae_max = rule && rule->max_associations > 0 ? rule->max_associations
                                                        : c->max_associations_per_ae;
    pthread_mutex_lock(&ing->count_lock);
    int *slot = ae_slot(ing, a->calling_ae, 1);
    if (ing->total >= c->max_associations) {
        snprintf(why, n, "all %d association slots are busy", c->max_associations);
        verdict = DCM_REJECT_BUSY;
    } else if (!slot || *slot >= per_ae_max) {
        snprintf(why, n, "calling AE '%s' already holds %d association(s), the limit",
                 a->calling_ae, slot ? *slot : 0);
        verdict = DCM_REJECT_BUSY;
    } else {
        ing->total++;
        (*slot)++;
    }
    pthread_mutex_unlock(&ing->count_lock);
out:
    pthread_rwlock_unlock(&ing->lock);
    return verdict;
}

static void closed(void *ud, const dcm_assoc_info *a)
{
    ctg_ingest *ing = ud;
    pthread_mutex_lock(&ing->count_lock);
    int *slot = ae_slot(ing, a->calling_ae, 0);
    if (slot && *slot > 0) (*slot)--;
    if (ing->total > 0) ing->total--;
    pthread_mutex_unlock(&ing->count_lock);
}

/* Copies a peer-supplied string for the log: printable ASCII only, so a
 * hostile UID cannot forge log lines. */
static const char *printable(const char *in, char *out, size_t n)
{
    size_t j = 0;
    for (size_t i = 0; in[i] && j + 1 < n; i++)
        out[j++] = (in[i] >= 0x20 && in[i] < 0x7f) ? in[i] : '?';
    out[j] = 0;
    return out;
}

/* ---- C-STORE ----------------------------------------------------------------- */

static unsigned store_begin(void *ud, const dcm_assoc_info *a, const char *sop_class,
                            const char *sop_uid, char *path, int *fd, char *why, size_t n)
{
    ctg_ingest *ing = ud;
    (void)a;
    (void)sop_class;
    if (!st_uid_valid(sop_uid)) {
        snprintf(why, n, "invalid SOP Instance UID");
        return DCM_STATUS_CANNOT_UNDERSTAND;
    }
    if (!st_space_ok(ing->st, 0)) {
        snprintf(why, n, "free disk space below the configured reserve");
        log_error("ingest: spool free space is below free_space_reserve_mb: refusing %s",
                  sop_uid);
        return DCM_STATUS_OUT_OF_RESOURCES;
    }
    int r = st_tmp_create(ing->st, path, fd);
    if (r < 0) {
        snprintf(why, n, "cannot create spool file: %s", ctg_strerror(r));
        return DCM_STATUS_OUT_OF_RESOURCES;
    }
    return 0;
}

static void store_abort(void *ud, const char *path, int fd)
{
    (void)ud;
    st_discard(path, fd);
}

static unsigned store_end(void *ud, const dcm_assoc_info *a, const ctg_instance *inst,
                          const char *path, int fd, uint64_t data_offset, uint64_t size,
                          char *why, size_t n)
{
    ctg_ingest *ing = ud;

    /* The data set may have eaten into the reserve while it arrived. */
    if (!st_space_ok(ing->st, 0)) {
        st_discard(path, fd);
        snprintf(why, n, "free disk space below the configured reserve");
        log_error("ingest: spool free space fell below free_space_reserve_mb while "
                  "receiving %s from %s; not stored",
                  inst->sop_uid, a->calling_ae);
        return DCM_STATUS_OUT_OF_RESOURCES;
    }

    pthread_rwlock_rdlock(&ing->lock);
    const ctg_ae_rule *rule = ctg_ae_rule_find(&ing->cfg, a->calling_ae);
    int stable = rule && rule->study_stable_seconds >= 0 ? rule->study_stable_seconds
                                                         : ing->cfg.study_stable_seconds;
    pthread_rwlock_unlock(&ing->lock);

    st_ingest_req q = {
        .inst = inst,
        .tmp_path = path,
        .fd = fd,
        .data_offset = data_offset,
        .size = size,
        .calling_ae = a->calling_ae,
        .now = ctg_now(),
        .stable_seconds = stable,
    };
    st_ingest_result res;
    int r = st_ingest(ing->st, &q, &res);
    if (r < 0) {
        snprintf(why, n, "%s", r == CTG_EBADUID ? "invalid Study/Series/SOP Instance UID"
                                                : ctg_strerror(r));
        char s1[72], s2[72], s3[72];
        log_warn("ingest: instance from %s not stored: %s (study '%s', series '%s', "
                 "SOP instance '%s')",
                 a->calling_ae, ctg_strerror(r), printable(inst->study_uid, s1, sizeof s1),
                 printable(inst->series_uid, s2, sizeof s2),
                 printable(inst->sop_uid, s3, sizeof s3));
        if (r == CTG_EBADUID) return DCM_STATUS_CANNOT_UNDERSTAND;
        if (r == CTG_ENOSPC) return DCM_STATUS_OUT_OF_RESOURCES;
        return DCM_STATUS_PROCESSING_FAILURE;
    }
    /* A report SR: its text goes to the reports table (also for a
     * duplicate, since a crash may have come between the instance's commit
     * and the report's; the report's key makes that harmless).  The store
     * already kept it from re-queueing the study. */
    int sr = st_sop_class_is_sr(inst->sop_class);
    if (sr) {
        char rwhy[320];
        int outcome;
        r = ctg_sr_report_ingest(ing->st, inst, res.path, res.instance_id, q.now, &outcome,
                                 rwhy, sizeof rwhy);
        if (r < 0) {
            snprintf(why, n, "report not stored: %s", ctg_strerror(r));
            log_error("ingest: SR %s from %s stored, but its report was not: %s; "
                      "answered with failure so that it is sent again",
                      inst->sop_uid, a->calling_ae, rwhy);
            return DCM_STATUS_PROCESSING_FAILURE;
        }
        if (outcome < 0)
            log_info("ingest: SR %s from %s kept as an instance, not as a report: %s",
                     inst->sop_uid, a->calling_ae, rwhy);
    }
    switch (res.outcome) {
    case ST_DUPLICATE:
        log_info("ingest: %s from %s is an identical duplicate; kept the first copy",
                 inst->sop_uid, a->calling_ae);
        return DCM_STATUS_SUCCESS;
    case ST_NEW_VERSION:
        snprintf(why, n, "duplicate SOP Instance UID, different content: kept as version %d",
                 res.version);
        log_warn("ingest: %s from %s differs from the copy already held; stored as version %d",
                 inst->sop_uid, a->calling_ae, res.version);
        if (ing->on_arrival && !sr) ing->on_arrival(ing->ud, q.now + q.stable_seconds);
        return DCM_STATUS_WARN_COERCION;
    default:
        log_debug("ingest: stored %s (%llu bytes) from %s", res.path,
                  (unsigned long long)size, a->calling_ae);
        /* An SR changed no study's deadline: nothing to re-arm. */
        if (ing->on_arrival && !sr) ing->on_arrival(ing->ud, q.now + q.stable_seconds);
        return DCM_STATUS_SUCCESS;
    }
}

void ctg_ingest_hooks(ctg_ingest *ing, dcm_scp_hooks *h)
{
    memset(h, 0, sizeof *h);
    h->ud = ing;
    h->admit = admit;
    h->closed = closed;
    h->store_begin = store_begin;
    h->store_end = store_end;
    h->store_abort = store_abort;
}
