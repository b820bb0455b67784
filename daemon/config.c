/*
 * config.c - ctglipd.conf: INI through libinih, checked key by key.
 *
 * Every key has a default (ctg_config_defaults); the file only overrides.
 * Unknown sections and keys are errors, so a typo is not silently ignored.
 * Errors name the file and the line.  Threading: pure functions.
 */
#include "daemon.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void ctg_config_defaults(ctg_config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->ae_title, sizeof c->ae_title, "CTGLIP");
    c->port = 11112;
    c->tls_port = 0;
    c->max_pdu = 131072;
    c->acse_timeout = 10;
    c->dimse_timeout = 60;
    c->idle_timeout = 120;
    c->max_associations = 32;
    c->max_associations_per_ae = 8;
    c->max_instance_bytes = 2048ull << 20;
    c->tls_verify_peer = 1;
    snprintf(c->tls_profile, sizeof c->tls_profile, "bcp195");
    c->any_ae = 1;
    ctg_cidr_parse("127.0.0.0/8", &c->allow_hosts[0]);
    ctg_cidr_parse("::1", &c->allow_hosts[1]);
    c->n_allow_hosts = 2;
    snprintf(c->spool, sizeof c->spool, "var/spool");
    snprintf(c->index, sizeof c->index, "var/index.db");
    c->reserve_bytes = 1024ull << 20;
    c->study_stable_seconds = 30;
    c->workers = 1;
    c->lease_seconds = 600;
    c->max_attempts = 3;
    c->retry_base_seconds = 30;
    c->retry_max_seconds = 3600;
    snprintf(c->model_path, sizeof c->model_path, "models/default.ctglip");
    snprintf(c->findings_path, sizeof c->findings_path, "etc/findings.conf");
    snprintf(c->vocab_path, sizeof c->vocab_path, "models/glove100.vocab");
    c->model_threads = 0;
    c->model_overlap = 0.25;
    snprintf(c->device, sizeof c->device, "auto");
    c->n_gpus = 0;
    c->model_bf16 = 1;
    snprintf(c->reports, sizeof c->reports, "var/reports");
    snprintf(c->outbox, sizeof c->outbox, "var/outbox");
    c->export_max_attempts = 20;
    c->export_retry_base_seconds = 10;
    c->export_retry_max_seconds = 900;
    snprintf(c->reports_drop, sizeof c->reports_drop, "var/reports-in");
    c->reports_poll_seconds = 10;
    c->reports_give_up_days = 30;
    snprintf(c->http_bind, sizeof c->http_bind, "127.0.0.1");
    c->http_port = 0;
    c->log_level = CTG_LOG_INFO;
    c->shutdown_grace_seconds = 30;
}

int ctg_cidr_parse(const char *s, ctg_cidr *out)
{
    char buf[80];
    size_t n = strlen(s);
    if (n == 0 || n >= sizeof buf) return CTG_EINVAL;
    memcpy(buf, s, n + 1);
    memset(out, 0, sizeof *out);
    char *slash = strchr(buf, '/');
    if (slash) *slash = 0;
    if (inet_pton(AF_INET, buf, out->addr) == 1) {
        out->family = AF_INET;
        out->prefix = 32;
    } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
        out->family = AF_INET6;
        out->prefix = 128;
    } else {
        return CTG_EINVAL;
    }
    if (slash) {
        char *end;
        long p = strtol(slash + 1, &end, 10);
        if (*end || end == slash + 1 || p < 0 || p > out->prefix) return CTG_EINVAL;
        out->prefix = (int)p;
    }
    return 0;
}

static int prefix_match(const uint8_t *a, const uint8_t *b, int bits)
{
    int bytes = bits / 8, rest = bits % 8;
    if (memcmp(a, b, (size_t)bytes) != 0) return 0;
    if (rest == 0) return 1;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[bytes] & mask) == (b[bytes] & mask);
}

int ctg_addr_allowed(const ctg_config *cfg, const char *addr)
{
    char buf[80];
    uint8_t a[16];
    int fam;
    snprintf(buf, sizeof buf, "%s", addr);
    /* Accept "[v6]" and strip a zone id. */
    char *p = buf;
    if (*p == '[') {
        p++;
        char *e = strchr(p, ']');
        if (e) *e = 0;
    }
    char *pct = strchr(p, '%');
    if (pct) *pct = 0;
    if (inet_pton(AF_INET, p, a) == 1) {
        fam = AF_INET;
    } else if (inet_pton(AF_INET6, p, a) == 1) {
        fam = AF_INET6;
        /* An IPv4-mapped address is checked as IPv4. */
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(a, mapped, 12) == 0) {
            memmove(a, a + 12, 4);
            fam = AF_INET;
        }
    } else {
        return 0;
    }
    for (int i = 0; i < cfg->n_allow_hosts; i++) {
        const ctg_cidr *c = &cfg->allow_hosts[i];
        if (c->family == fam && prefix_match(a, c->addr, c->prefix)) return 1;
    }
    return 0;
}

const ctg_ae_rule *ctg_ae_rule_find(const ctg_config *cfg, const char *ae)
{
    for (int i = 0; i < cfg->n_ae_rules; i++)
        if (strcmp(cfg->ae_rules[i].ae, ae) == 0) return &cfg->ae_rules[i];
    return NULL;
}

const ctg_destination *ctg_destination_find(const ctg_config *cfg, const char *name)
{
    for (int i = 0; i < cfg->n_destinations; i++)
        if (strcmp(cfg->destinations[i].name, name) == 0) return &cfg->destinations[i];
    return NULL;
}

int ctg_config_destination_names(const ctg_config *cfg, const char **names, int max)
{
    for (int i = 0; i < cfg->n_destinations && i < max; i++)
        names[i] = cfg->destinations[i].name;
    return cfg->n_destinations;
}

int ctg_config_apply_reloadable(ctg_config *dst, const ctg_config *src)
{
    int restart = strcmp(src->ae_title, dst->ae_title) || src->port != dst->port ||
                  src->tls_port != dst->tls_port || strcmp(src->spool, dst->spool) ||
                  strcmp(src->index, dst->index) || src->workers != dst->workers ||
                  strcmp(src->tls_certificate, dst->tls_certificate) ||
                  strcmp(src->tls_private_key, dst->tls_private_key) ||
                  strcmp(src->tls_ca_file, dst->tls_ca_file) ||
                  src->reserve_bytes != dst->reserve_bytes ||
                  src->max_instance_bytes != dst->max_instance_bytes ||
                  src->http_port != dst->http_port || strcmp(src->http_bind, dst->http_bind) ||
                  strcmp(src->model_path, dst->model_path) ||
                  strcmp(src->vocab_path, dst->vocab_path) ||
                  src->model_threads != dst->model_threads || strcmp(src->device, dst->device) ||
                  src->n_gpus != dst->n_gpus ||
                  memcmp(src->gpus, dst->gpus, sizeof src->gpus) != 0 ||
                  src->model_bf16 != dst->model_bf16 ||
                  strcmp(src->reports, dst->reports) || strcmp(src->outbox, dst->outbox) ||
                  strcmp(src->reports_drop, dst->reports_drop);
    /* The findings list, its prompt phrasings and the overlap reload: the
     * workers pick them up before their next job. */
    memcpy(dst->findings_path, src->findings_path, sizeof dst->findings_path);
    memcpy(dst->model_text, src->model_text, sizeof dst->model_text);
    dst->model_overlap = src->model_overlap;
    dst->any_ae = src->any_ae;
    memcpy(dst->allow_ae, src->allow_ae, sizeof dst->allow_ae);
    dst->n_allow_ae = src->n_allow_ae;
    memcpy(dst->allow_hosts, src->allow_hosts, sizeof dst->allow_hosts);
    dst->n_allow_hosts = src->n_allow_hosts;
    memcpy(dst->ae_rules, src->ae_rules, sizeof dst->ae_rules);
    dst->n_ae_rules = src->n_ae_rules;
    dst->acse_timeout = src->acse_timeout;
    dst->dimse_timeout = src->dimse_timeout;
    dst->idle_timeout = src->idle_timeout;
    dst->max_associations = src->max_associations;
    dst->max_associations_per_ae = src->max_associations_per_ae;
    dst->study_stable_seconds = src->study_stable_seconds;
    dst->log_level = src->log_level;
    dst->shutdown_grace_seconds = src->shutdown_grace_seconds;
    /* Destinations reload: the exporter starts, retunes or stops their
     * threads; exports queued for a destination that is gone stay queued. */
    memcpy(dst->destinations, src->destinations, sizeof dst->destinations);
    dst->n_destinations = src->n_destinations;
    dst->export_max_attempts = src->export_max_attempts;
    dst->export_retry_base_seconds = src->export_retry_base_seconds;
    dst->export_retry_max_seconds = src->export_retry_max_seconds;
    /* The drop folder's poll interval and patience reload; the folder
     * itself needs a restart. */
    dst->reports_poll_seconds = src->reports_poll_seconds;
    dst->reports_give_up_days = src->reports_give_up_days;
    return restart;
}

/* ---- parsing ------------------------------------------------------------- */

typedef struct parse_ctx {
    ctg_config *cfg;
    char err[512]; /* first error, without the line */
    int seen_access_hosts, seen_access_ae;
} parse_ctx;

static int fail(parse_ctx *p, const char *fmt, const char *a, const char *b)
{
    if (!p->err[0]) snprintf(p->err, sizeof p->err, fmt, a, b);
    return 0;
}

static int parse_int(const char *v, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    while (*end && isspace((unsigned char)*end)) end++;
    if (errno || end == v || *end || x < lo || x > hi) return -1;
    *out = x;
    return 0;
}

static int parse_bool(const char *v, int *out)
{
    if (!strcasecmp(v, "yes") || !strcasecmp(v, "true") || !strcmp(v, "1") ||
        !strcasecmp(v, "on")) {
        *out = 1;
        return 0;
    }
    if (!strcasecmp(v, "no") || !strcasecmp(v, "false") || !strcmp(v, "0") ||
        !strcasecmp(v, "off")) {
        *out = 0;
        return 0;
    }
    return -1;
}

/* "all" (n = 0) or a comma- or space-separated list of distinct device
 * numbers 0..63 (at most CTG_MAX_GPUS). */
static int parse_gpus(const char *v, int *ids, int *n)
{
    if (!strcasecmp(v, "all")) {
        *n = 0;
        return 0;
    }
    char buf[256];
    if (strlen(v) >= sizeof buf) return -1;
    snprintf(buf, sizeof buf, "%s", v);
    int k = 0;
    for (char *sv = NULL, *t = strtok_r(buf, ", \t", &sv); t; t = strtok_r(NULL, ", \t", &sv)) {
        long x;
        if (k == CTG_MAX_GPUS || parse_int(t, 0, 63, &x) < 0) return -1;
        for (int i = 0; i < k; i++)
            if (ids[i] == x) return -1;
        ids[k++] = (int)x;
    }
    if (k == 0) return -1;
    *n = k;
    return 0;
}

static int valid_ae(const char *v)
{
    size_t n = strlen(v);
    if (n == 0 || n > 16) return 0;
    for (size_t i = 0; i < n; i++)
        if (v[i] == '\\' || (unsigned char)v[i] < 0x20 || (unsigned char)v[i] > 0x7e)
            return 0;
    return 1;
}

/* Splits a list on commas and blanks and calls fn for each item. */
static int each_item(const char *v, int (*fn)(parse_ctx *, const char *), parse_ctx *p)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", v);
    char *save = NULL;
    for (char *t = strtok_r(buf, ", \t", &save); t; t = strtok_r(NULL, ", \t", &save))
        if (!fn(p, t)) return 0;
    return 1;
}

static int add_host(parse_ctx *p, const char *t)
{
    ctg_config *c = p->cfg;
    if (c->n_allow_hosts >= CTG_MAX_LIST) return fail(p, "too many allow_hosts entries%s%s", "", "");
    if (ctg_cidr_parse(t, &c->allow_hosts[c->n_allow_hosts]) < 0)
        return fail(p, "allow_hosts: '%s' is not an address or address/prefix%s", t, "");
    c->n_allow_hosts++;
    return 1;
}

static int add_ae(parse_ctx *p, const char *t)
{
    ctg_config *c = p->cfg;
    if (!strcmp(t, "*")) {
        c->any_ae = 1;
        return 1;
    }
    if (!valid_ae(t)) return fail(p, "allow_ae: '%s' is not a valid AE title%s", t, "");
    if (c->n_allow_ae >= CTG_MAX_LIST) return fail(p, "too many allow_ae entries%s%s", "", "");
    snprintf(c->allow_ae[c->n_allow_ae++], 17, "%s", t);
    return 1;
}

#define INT_KEY(sec, key, field, lo, hi)                                       \
    if (!strcmp(section, sec) && !strcmp(name, key)) {                         \
        long x_;                                                               \
        if (parse_int(value, lo, hi, &x_) < 0)                                 \
            return fail(p, "%s must be an integer in range (" #lo ".." #hi     \
                           "), not '%s'", key, value);                         \
        c->field = (int)x_;                                                    \
        return 1;                                                              \
    }

#define PATH_KEY(sec, key, field)                                              \
    if (!strcmp(section, sec) && !strcmp(name, key)) {                         \
        if (strlen(value) >= sizeof c->field)                                  \
            return fail(p, "%s: path too long%s", key, "");                    \
        snprintf(c->field, sizeof c->field, "%s", value);                      \
        return 1;                                                              \
    }

static int handler(void *user, const char *section, const char *name, const char *value)
{
    parse_ctx *p = user;
    ctg_config *c = p->cfg;
    long x;

    if (!strncmp(section, "ae ", 3)) {
        const char *ae = section + 3;
        while (*ae == ' ') ae++;
        if (!valid_ae(ae)) return fail(p, "section [ae %s]: not a valid AE title%s", ae, "");
        ctg_ae_rule *r = (ctg_ae_rule *)ctg_ae_rule_find(c, ae);
        if (!r) {
            if (c->n_ae_rules >= CTG_MAX_LIST) return fail(p, "too many [ae] sections%s%s", "", "");
            r = &c->ae_rules[c->n_ae_rules++];
            snprintf(r->ae, sizeof r->ae, "%s", ae);
            r->study_stable_seconds = -1;
            r->max_associations = -1;
        }
        if (!strcmp(name, "study_stable_seconds")) {
            if (parse_int(value, 0, 86400, &x) < 0)
                return fail(p, "study_stable_seconds must be 0..86400, not '%s'%s", value, "");
            r->study_stable_seconds = (int)x;
            return 1;
        }
        if (!strcmp(name, "max_associations")) {
            if (parse_int(value, 1, 1024, &x) < 0)
                return fail(p, "max_associations must be 1..1024, not '%s'%s", value, "");
            r->max_associations = (int)x;
            return 1;
        }
        return fail(p, "unknown key '%s' in an [ae] section%s", name, "");
    }

    if (!strncmp(section, "destination ", 12)) {
        const char *dn = section + 12;
        while (*dn == ' ') dn++;
        size_t dl = strlen(dn);
        if (dl == 0 || dl >= sizeof c->destinations[0].name ||
            strspn(dn, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") != dl)
            return fail(p, "section [destination %s]: the name must be 1..63 letters, digits, "
                           "'.', '_' or '-'%s", dn, "");
        ctg_destination *d = (ctg_destination *)ctg_destination_find(c, dn);
        if (!d) {
            if (c->n_destinations >= CTG_MAX_DEST)
                return fail(p, "too many [destination] sections (at most %s)%s", "16", "");
            d = &c->destinations[c->n_destinations++];
            memset(d, 0, sizeof *d);
            snprintf(d->name, sizeof d->name, "%s", dn);
            d->timeout = 30;
        }
        if (!strcmp(name, "ae_title") || !strcmp(name, "calling_ae")) {
            if (!valid_ae(value))
                return fail(p, "%s: '%s' is not a valid AE title", name, value);
            char *dst = !strcmp(name, "ae_title") ? d->ae_title : d->calling_ae;
            snprintf(dst, sizeof d->ae_title, "%s", value);
            return 1;
        }
        if (!strcmp(name, "host")) {
            if (!*value || strlen(value) >= sizeof d->host || strpbrk(value, " \t/"))
                return fail(p, "host: '%s' is not a host name or address%s", value, "");
            snprintf(d->host, sizeof d->host, "%s", value);
            return 1;
        }
        if (!strcmp(name, "port")) {
            if (parse_int(value, 1, 65535, &x) < 0)
                return fail(p, "port must be 1..65535, not '%s'%s", value, "");
            d->port = (int)x;
            return 1;
        }
        if (!strcmp(name, "tls")) {
            if (parse_bool(value, &d->tls) < 0)
                return fail(p, "tls must be yes or no, not '%s'%s", value, "");
            return 1;
        }
        if (!strcmp(name, "timeout")) {
            if (parse_int(value, 1, 3600, &x) < 0)
                return fail(p, "timeout must be 1..3600 seconds, not '%s'%s", value, "");
            d->timeout = (int)x;
            return 1;
        }
        return fail(p, "unknown key '%s' in a [destination] section%s", name, "");
    }

    if (!strcmp(section, "dicom") && !strcmp(name, "ae_title")) {
        if (!valid_ae(value)) return fail(p, "ae_title: '%s' is not a valid AE title%s", value, "");
        snprintf(c->ae_title, sizeof c->ae_title, "%s", value);
        return 1;
    }
    INT_KEY("dicom", "port", port, 0, 65535)
    INT_KEY("dicom", "tls_port", tls_port, 0, 65535)
    INT_KEY("dicom", "max_pdu", max_pdu, 4096, 131072)
    INT_KEY("dicom", "acse_timeout", acse_timeout, 1, 3600)
    INT_KEY("dicom", "dimse_timeout", dimse_timeout, 1, 3600)
    INT_KEY("dicom", "idle_timeout", idle_timeout, 1, 86400)
    INT_KEY("dicom", "max_associations", max_associations, 1, 1024)
    INT_KEY("dicom", "max_associations_per_ae", max_associations_per_ae, 1, 1024)
    if (!strcmp(section, "dicom") && !strcmp(name, "max_instance_mb")) {
        if (parse_int(value, 1, 1 << 20, &x) < 0)
            return fail(p, "max_instance_mb must be 1..1048576, not '%s'%s", value, "");
        c->max_instance_bytes = (uint64_t)x << 20;
        return 1;
    }

    PATH_KEY("tls", "certificate", tls_certificate)
    PATH_KEY("tls", "private_key", tls_private_key)
    PATH_KEY("tls", "ca_file", tls_ca_file)
    if (!strcmp(section, "tls") && !strcmp(name, "verify_peer")) {
        if (parse_bool(value, &c->tls_verify_peer) < 0)
            return fail(p, "verify_peer must be yes or no, not '%s'%s", value, "");
        return 1;
    }
    if (!strcmp(section, "tls") && !strcmp(name, "profile")) {
        if (strcasecmp(value, "bcp195") && strcasecmp(value, "bcp195-nd") &&
            strcasecmp(value, "bcp195-ex"))
            return fail(p, "profile must be bcp195, bcp195-nd or bcp195-ex, not '%s'%s", value, "");
        snprintf(c->tls_profile, sizeof c->tls_profile, "%s", value);
        return 1;
    }

    if (!strcmp(section, "access") && !strcmp(name, "allow_hosts")) {
        if (!p->seen_access_hosts) c->n_allow_hosts = 0; /* replaces the default */
        p->seen_access_hosts = 1;
        return each_item(value, add_host, p);
    }
    if (!strcmp(section, "access") && !strcmp(name, "allow_ae")) {
        if (!p->seen_access_ae) {
            c->any_ae = 0;
            c->n_allow_ae = 0;
        }
        p->seen_access_ae = 1;
        return each_item(value, add_ae, p);
    }

    PATH_KEY("store", "spool", spool)
    PATH_KEY("store", "index", index)
    if (!strcmp(section, "store") && !strcmp(name, "free_space_reserve_mb")) {
        if (parse_int(value, 0, 1L << 40, &x) < 0)
            return fail(p, "free_space_reserve_mb must be a size in MiB, not '%s'%s", value, "");
        c->reserve_bytes = (uint64_t)x << 20;
        return 1;
    }

    INT_KEY("queue", "study_stable_seconds", study_stable_seconds, 0, 86400)
    INT_KEY("queue", "workers", workers, 0, 64)
    INT_KEY("queue", "max_attempts", max_attempts, 1, 100)
    if (!strcmp(section, "queue") && !strcmp(name, "lease_seconds")) {
        if (parse_int(value, 1, 86400, &x) < 0)
            return fail(p, "lease_seconds must be 1..86400, not '%s'%s", value, "");
        c->lease_seconds = (double)x;
        return 1;
    }
    if (!strcmp(section, "queue") && !strcmp(name, "retry_base_seconds")) {
        if (parse_int(value, 0, 86400, &x) < 0)
            return fail(p, "retry_base_seconds must be 0..86400, not '%s'%s", value, "");
        c->retry_base_seconds = (double)x;
        return 1;
    }
    if (!strcmp(section, "queue") && !strcmp(name, "retry_max_seconds")) {
        if (parse_int(value, 0, 7 * 86400, &x) < 0)
            return fail(p, "retry_max_seconds must be 0..604800, not '%s'%s", value, "");
        c->retry_max_seconds = (double)x;
        return 1;
    }

    PATH_KEY("model", "path", model_path)
    PATH_KEY("model", "findings", findings_path)
    PATH_KEY("model", "vocab", vocab_path)
    PATH_KEY("model", "reports", reports)
    INT_KEY("model", "threads", model_threads, 0, 1024)
    if (!strcmp(section, "model") && !strcmp(name, "text")) {
        if (strcmp(value, "train") && strcmp(value, "heldout") && strcmp(value, "all") && *value)
            return fail(p, "text must be train, heldout, all or empty, not '%s'%s", value, "");
        snprintf(c->model_text, sizeof c->model_text, "%s", value);
        return 1;
    }
    if (!strcmp(section, "model") && !strcmp(name, "overlap")) {
        char *end;
        double v = strtod(value, &end);
        if (end == value || *end || !(v >= 0 && v <= 0.9))
            return fail(p, "overlap must be a number in 0..0.9, not '%s'%s", value, "");
        c->model_overlap = v;
        return 1;
    }
    if (!strcmp(section, "model") && !strcmp(name, "device")) {
        if (strcmp(value, "cpu") && strcmp(value, "cuda") && strcmp(value, "auto"))
            return fail(p, "device must be cpu, cuda or auto, not '%s'%s", value, "");
        snprintf(c->device, sizeof c->device, "%s", value);
        return 1;
    }
    if (!strcmp(section, "model") && !strcmp(name, "gpus")) {
        if (parse_gpus(value, c->gpus, &c->n_gpus) < 0)
            return fail(p, "gpus must be all or a list of device numbers such as 0,1 (each "
                        "0..63, once), not '%s'%s", value, "");
        return 1;
    }
    if (!strcmp(section, "model") && !strcmp(name, "precision")) {
        if (strcmp(value, "bf16") && strcmp(value, "fp32"))
            return fail(p, "precision must be bf16 or fp32, not '%s'%s", value, "");
        c->model_bf16 = !strcmp(value, "bf16");
        return 1;
    }

    PATH_KEY("export", "outbox", outbox)
    INT_KEY("export", "max_attempts", export_max_attempts, 1, 1000)
    if (!strcmp(section, "export") && !strcmp(name, "retry_base_seconds")) {
        if (parse_int(value, 0, 86400, &x) < 0)
            return fail(p, "retry_base_seconds must be 0..86400, not '%s'%s", value, "");
        c->export_retry_base_seconds = (double)x;
        return 1;
    }
    if (!strcmp(section, "export") && !strcmp(name, "retry_max_seconds")) {
        if (parse_int(value, 0, 7 * 86400, &x) < 0)
            return fail(p, "retry_max_seconds must be 0..604800, not '%s'%s", value, "");
        c->export_retry_max_seconds = (double)x;
        return 1;
    }

    PATH_KEY("reports", "drop_folder", reports_drop)
    INT_KEY("reports", "poll_seconds", reports_poll_seconds, 1, 3600)
    INT_KEY("reports", "give_up_days", reports_give_up_days, 1, 3650)

    INT_KEY("http", "port", http_port, 0, 65535)
    if (!strcmp(section, "http") && !strcmp(name, "bind")) {
        ctg_cidr tmp;
        if (ctg_cidr_parse(value, &tmp) < 0 || strchr(value, '/') || strlen(value) >= 64)
            return fail(p, "bind must be an IP address, not '%s'%s", value, "");
        snprintf(c->http_bind, sizeof c->http_bind, "%s", value);
        return 1;
    }
    if (!strcmp(section, "daemon") && !strcmp(name, "log_level")) {
        int l = ctg_log_parse_level(value);
        if (l < 0) return fail(p, "log_level must be error, warn, info or debug, not '%s'%s", value, "");
        c->log_level = l;
        return 1;
    }
    INT_KEY("daemon", "shutdown_grace_seconds", shutdown_grace_seconds, 0, 3600)

    if (strcmp(section, "dicom") && strcmp(section, "tls") && strcmp(section, "access") &&
        strcmp(section, "store") && strcmp(section, "queue") && strcmp(section, "daemon") &&
        strcmp(section, "http") && strcmp(section, "model") && strcmp(section, "export") &&
        strcmp(section, "reports"))
        return fail(p, "unknown section [%s]%s", section, "");
    return fail(p, "unknown key '%s' in [%s]", name, section);
}

/* Checks that need the whole file. */
static int check(ctg_config *c, char *err, size_t n)
{
    if (c->port == 0 && c->tls_port == 0) {
        snprintf(err, n, "%s: neither [dicom] port nor tls_port is set", c->path);
        return CTG_ECONFIG;
    }
    if (c->port && c->port == c->tls_port) {
        snprintf(err, n, "%s: [dicom] port and tls_port are the same", c->path);
        return CTG_ECONFIG;
    }
    if (c->tls_port && (!c->tls_certificate[0] || !c->tls_private_key[0])) {
        snprintf(err, n, "%s: [dicom] tls_port needs [tls] certificate and private_key", c->path);
        return CTG_ECONFIG;
    }
    if (c->tls_port && c->tls_verify_peer && !c->tls_ca_file[0]) {
        snprintf(err, n, "%s: [tls] verify_peer = yes needs ca_file", c->path);
        return CTG_ECONFIG;
    }
    if (c->http_port && (c->http_port == c->port || c->http_port == c->tls_port)) {
        snprintf(err, n, "%s: [http] port clashes with a DICOM port", c->path);
        return CTG_ECONFIG;
    }
    if (c->max_associations_per_ae > c->max_associations)
        c->max_associations_per_ae = c->max_associations;
    if (!c->any_ae && c->n_allow_ae == 0) {
        snprintf(err, n, "%s: [access] allow_ae is empty: no peer could connect", c->path);
        return CTG_ECONFIG;
    }
    if (c->n_allow_hosts == 0) {
        snprintf(err, n, "%s: [access] allow_hosts is empty: no peer could connect", c->path);
        return CTG_ECONFIG;
    }
    if (!c->outbox[0]) {
        snprintf(err, n, "%s: [export] outbox is empty", c->path);
        return CTG_ECONFIG;
    }
    /* The drop folder's files are moved away once read: it must not be a
     * folder the daemon writes into itself. */
    if (c->reports_drop[0] &&
        (!strcmp(c->reports_drop, c->spool) || !strcmp(c->reports_drop, c->outbox) ||
         !strcmp(c->reports_drop, c->reports))) {
        snprintf(err, n, "%s: [reports] drop_folder must not be the spool, the outbox or "
                 "[model] reports", c->path);
        return CTG_ECONFIG;
    }
    for (int i = 0; i < c->n_destinations; i++) {
        ctg_destination *d = &c->destinations[i];
        if (!d->ae_title[0] || !d->host[0] || !d->port) {
            snprintf(err, n, "%s: [destination %s] needs ae_title, host and port", c->path,
                     d->name);
            return CTG_ECONFIG;
        }
        /* Our AE title is known only once the whole file is read. */
        if (!d->calling_ae[0]) snprintf(d->calling_ae, sizeof d->calling_ae, "%s", c->ae_title);
        /* The destination's certificate is always checked: TLS without
         * verification would send reports to whoever answers. */
        if (d->tls && !c->tls_ca_file[0]) {
            snprintf(err, n, "%s: [destination %s] tls = yes needs [tls] ca_file to verify "
                     "the destination", c->path, d->name);
            return CTG_ECONFIG;
        }
        if (d->tls && !c->tls_certificate[0] != !c->tls_private_key[0]) {
            snprintf(err, n, "%s: [destination %s] tls = yes: [tls] certificate and "
                     "private_key go together", c->path, d->name);
            return CTG_ECONFIG;
        }
    }
    return 0;
}

int ctg_config_load(const char *path, ctg_config *cfg, char *err, size_t n)
{
    parse_ctx p;
    memset(&p, 0, sizeof p);
    p.cfg = cfg;
    snprintf(cfg->path, sizeof cfg->path, "%s", path);
    int line = ini_parse(path, handler, &p);
    if (line < 0) {
        snprintf(err, n, "%s: cannot read: %s", path,
                 line == -1 ? strerror(errno) : "out of memory");
        return CTG_ECONFIG;
    }
    if (line > 0) {
        snprintf(err, n, "%s:%d: %s", path, line, p.err[0] ? p.err : "syntax error");
        return CTG_ECONFIG;
    }
    return check(cfg, err, n);
}
