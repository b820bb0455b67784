/*
 * main.c - ctglipd's command line: run the daemon, or check a config (-t).
 * The daemon does not fork; systemd (Type=notify) or the shell supervises it.
 */
#include "daemon.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_CONFIG "/etc/ctglip/ctglipd.conf"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ctglipd [-c FILE] [-t] [-d]\n"
            "  -c FILE  configuration file (default " DEFAULT_CONFIG ")\n"
            "  -t       check the configuration and exit\n"
            "  -d       log at debug level\n");
}

int main(int argc, char **argv)
{
    const char *path = DEFAULT_CONFIG;
    int test_only = 0, debug = 0, opt;
    while ((opt = getopt(argc, argv, "c:tdh")) != -1) {
        switch (opt) {
        case 'c': path = optarg; break;
        case 't': test_only = 1; break;
        case 'd': debug = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }
    static ctg_config cfg;
    char err[1024];
    ctg_config_defaults(&cfg);
    if (ctg_config_load(path, &cfg, err, sizeof err) < 0) {
        fprintf(stderr, "ctglipd: %s\n", err);
        return 1;
    }
    if (test_only) {
        printf("ctglipd: configuration %s is valid\n", path);
        return 0;
    }
    if (debug) cfg.log_level = CTG_LOG_DEBUG;
    return ctg_server_run(&cfg);
}
