/*
 * test_config.c - unit tests of the config parser: defaults, every kind of
 * error naming file and line, address allowlists and per-AE rules.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "daemon/daemon.h"
#include "tests.h"

static int load_text(const char *text, ctg_config *c, char *err, size_t n)
{
    FILE *f = fopen("t.conf", "w");
    if (!f) return -100;
    fputs(text, f);
    fclose(f);
    ctg_config_defaults(c);
    return ctg_config_load("t.conf", c, err, n);
}

static int test_defaults(void)
{
    ctg_config c;
    char err[512];
    CHECK_EQ_INT(load_text("", &c, err, sizeof err), 0);
    CHECK(!strcmp(c.ae_title, "CTGLIP"));
    CHECK_EQ_INT(c.port, 11112);
    CHECK_EQ_INT(c.study_stable_seconds, 30);
    CHECK(c.any_ae);
    CHECK(ctg_addr_allowed(&c, "127.0.0.1"));
    CHECK(ctg_addr_allowed(&c, "127.1.2.3"));
    CHECK(ctg_addr_allowed(&c, "::1"));
    CHECK(ctg_addr_allowed(&c, "::ffff:127.0.0.1"));
    CHECK(!ctg_addr_allowed(&c, "10.0.0.1"));
    CHECK(!ctg_addr_allowed(&c, "192.168.1.1"));
    CHECK(!ctg_addr_allowed(&c, "not-an-address"));
    return 0;
}

static int test_shipped_config(void)
{
    ctg_config c;
    char err[512], path[1200];
    const char *root = getenv("CTG_ROOT");
    CHECK(root != NULL);
    snprintf(path, sizeof path, "%s/etc/ctglipd.conf", root);
    ctg_config_defaults(&c);
    int r = ctg_config_load(path, &c, err, sizeof err);
    if (r) fprintf(stderr, "%s\n", err);
    CHECK_EQ_INT(r, 0);
    /* The example documents the defaults: loading it changes nothing. */
    ctg_config d;
    ctg_config_defaults(&d);
    CHECK_EQ_INT(c.port, d.port);
    CHECK_EQ_INT(c.study_stable_seconds, d.study_stable_seconds);
    CHECK_EQ_INT(c.max_associations, d.max_associations);
    CHECK_EQ_INT(c.n_allow_hosts, d.n_allow_hosts);
    CHECK_EQ_INT((long long)c.reserve_bytes, (long long)d.reserve_bytes);
    return 0;
}

static int test_values(void)
{
    ctg_config c;
    char err[512];
    int r = load_text("[dicom]\nae_title = NODE1\nport = 4242\nmax_instance_mb = 10\n"
                      "[access]\nallow_hosts = 10.1.0.0/16, 192.168.5.7, fd00::/8\n"
                      "allow_ae = PACS1, PACS2\n"
                      "[queue]\nstudy_stable_seconds = 45\nworkers = 2\n"
                      "[daemon]\nlog_level = debug\n"
                      "[http]\nport = 8081\nbind = ::1\n"
                      "[ae SCANNER1]\nstudy_stable_seconds = 120\nmax_associations = 2\n",
                      &c, err, sizeof err);
    if (r) fprintf(stderr, "%s\n", err);
    CHECK_EQ_INT(r, 0);
    CHECK(!strcmp(c.ae_title, "NODE1"));
    CHECK_EQ_INT(c.port, 4242);
    CHECK_EQ_INT((long long)c.max_instance_bytes, 10ll << 20);
    CHECK_EQ_INT(c.n_allow_hosts, 3);
    CHECK(ctg_addr_allowed(&c, "10.1.200.3"));
    CHECK(!ctg_addr_allowed(&c, "10.2.0.1"));
    CHECK(ctg_addr_allowed(&c, "192.168.5.7"));
    CHECK(!ctg_addr_allowed(&c, "192.168.5.8"));
    CHECK(ctg_addr_allowed(&c, "fd12::1"));
    CHECK(!ctg_addr_allowed(&c, "127.0.0.1")); /* the list replaced the default */
    CHECK(!c.any_ae);
    CHECK_EQ_INT(c.n_allow_ae, 2);
    CHECK(!strcmp(c.allow_ae[1], "PACS2"));
    CHECK_EQ_INT(c.study_stable_seconds, 45);
    CHECK_EQ_INT(c.log_level, CTG_LOG_DEBUG);
    CHECK_EQ_INT(c.http_port, 8081);
    CHECK(!strcmp(c.http_bind, "::1"));
    const ctg_ae_rule *rule = ctg_ae_rule_find(&c, "SCANNER1");
    CHECK(rule != NULL);
    CHECK_EQ_INT(rule->study_stable_seconds, 120);
    CHECK_EQ_INT(rule->max_associations, 2);
    CHECK(ctg_ae_rule_find(&c, "OTHER") == NULL);
    return 0;
}

/* Each bad file must fail with "t.conf:LINE: ..." naming the right line. */
static int test_errors(void)
{
    static const struct {
        const char *text;
        const char *expect;
    } cases[] = {
        {"[dicom]\nport = 99999\n", "t.conf:2: port must be an integer"},
        {"[dicom]\n\nport = abc\n", "t.conf:3: port"},
        {"[dicom]\nae_tilte = X\n", "t.conf:2: unknown key 'ae_tilte' in [dicom]"},
        {"[bogus]\nx = 1\n", "t.conf:2: unknown section [bogus]"},
        {"[dicom]\nae_title = THIS_TITLE_IS_WAY_TOO_LONG\n", "t.conf:2: ae_title"},
        {"[access]\nallow_hosts = 10.0.0.0/33\n", "t.conf:2: allow_hosts"},
        {"[access]\nallow_hosts = example.org\n", "t.conf:2: allow_hosts"},
        {"[daemon]\nlog_level = loud\n", "t.conf:2: log_level"},
        {"[tls]\nverify_peer = maybe\n", "t.conf:2: verify_peer"},
        {"[dicom]\nport = 1\n[ae BAD\\AE]\nmax_associations = 1\n", "t.conf:4: section [ae BAD\\AE]"},
        {"[dicom]\nport = 5\nthis line is not ini\n", "t.conf:3:"},
        {"[dicom]\ntls_port = 2762\n", "tls_port needs [tls] certificate"},
        {"[dicom]\nport = 0\n", "neither [dicom] port nor tls_port"},
        {"[http]\nbind = localhost\n", "t.conf:2: bind must be an IP address"},
        {"[dicom]\nport = 4000\n[http]\nport = 4000\n", "[http] port clashes"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ctg_config c;
        char err[512] = "";
        int r = load_text(cases[i].text, &c, err, sizeof err);
        if (r != CTG_ECONFIG || !strstr(err, cases[i].expect)) {
            fprintf(stderr, "case %zu: r=%d err='%s', expected '%s'\n", i, r, err,
                    cases[i].expect);
            return 1;
        }
    }
    ctg_config c;
    char err[512];
    ctg_config_defaults(&c);
    CHECK_EQ_INT(ctg_config_load("does-not-exist.conf", &c, err, sizeof err), CTG_ECONFIG);
    CHECK(strstr(err, "does-not-exist.conf: cannot read") != NULL);
    return 0;
}

static int test_cidr(void)
{
    ctg_cidr c;
    CHECK_EQ_INT(ctg_cidr_parse("192.168.0.0/24", &c), 0);
    CHECK_EQ_INT(c.family, AF_INET);
    CHECK_EQ_INT(c.prefix, 24);
    CHECK_EQ_INT(ctg_cidr_parse("::1", &c), 0);
    CHECK_EQ_INT(c.prefix, 128);
    CHECK(ctg_cidr_parse("1.2.3.4/", &c) < 0);
    CHECK(ctg_cidr_parse("1.2.3/8", &c) < 0);
    CHECK(ctg_cidr_parse("", &c) < 0);
    ctg_config cfg;
    ctg_config_defaults(&cfg);
    cfg.n_allow_hosts = 0;
    ctg_cidr_parse("172.16.0.0/12", &cfg.allow_hosts[cfg.n_allow_hosts++]);
    CHECK(ctg_addr_allowed(&cfg, "172.31.255.255"));
    CHECK(!ctg_addr_allowed(&cfg, "172.32.0.0"));
    ctg_cidr_parse("0.0.0.0/0", &cfg.allow_hosts[cfg.n_allow_hosts++]);
    CHECK(ctg_addr_allowed(&cfg, "8.8.8.8"));
    return 0;
}

const test_case config_tests[] = {
    {"config_defaults", test_defaults},
    {"config_shipped_example", test_shipped_config},
    {"config_values", test_values},
    {"config_errors_name_line", test_errors},
    {"config_cidr", test_cidr},
    {NULL, NULL},
};
