/*
 * http.c - ctglipd's read-only HTTP status endpoint, for monitoring.
 *
 *   GET /status   JSON: version, uptime, associations in progress, index
 *                 counts, jobs by state, exports by state (in all and per
 *                 destination), radiology reports received (total, final,
 *                 not yet linked to a study), spool bytes and free space
 *   GET /health   "ok" while the store answers, 503 otherwise
 *
 * It serves one short request per connection on the loop thread (libuv),
 * reads at most 8 KiB of request, answers within the same loop iteration
 * in which the request line is complete, and drops a client that sends
 * nothing for 5 s.  It binds to loopback by default ([http] bind).
 *
 * Threading: loop thread only; the status numbers come from the store
 * (thread-safe) and from the callbacks the server registered.
 */
#include "daemon.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <uv.h>

#define REQ_CAP 8192
#define CLIENT_TIMEOUT_MS 5000

struct ctg_http {
    uv_loop_t *loop;
    uv_tcp_t server;
    st_store *st;
    int (*active)(void *);
    void *ud;
    double started;
    int closing;
    /* The server handle and every open client hold a reference; the struct
     * is freed when the last one closes. */
    int refs;
    struct client *clients; /* open clients, to close them at shutdown */
};

typedef struct client {
    struct client *next, *prev;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wr;
    ctg_http *h;
    char buf[REQ_CAP];
    size_t len;
    char *reply;
    int handles; /* open handles; freed when 0 */
    int answered;
} client;

static void http_unref(ctg_http *h)
{
    if (--h->refs == 0) free(h);
}

static void client_handle_closed(uv_handle_t *hd)
{
    client *c = hd->data;
    if (--c->handles == 0) {
        ctg_http *h = c->h;
        if (c->prev)
            c->prev->next = c->next;
        else
            h->clients = c->next;
        if (c->next) c->next->prev = c->prev;
        free(c->reply);
        free(c);
        http_unref(h);
    }
}

static void client_close(client *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->tcp)) uv_close((uv_handle_t *)&c->tcp, client_handle_closed);
    if (!uv_is_closing((uv_handle_t *)&c->timer))
        uv_close((uv_handle_t *)&c->timer, client_handle_closed);
}

static void on_written(uv_write_t *w, int status)
{
    (void)status;
    client_close(w->data);
}

static void respond(client *c, int code, const char *type, const char *body)
{
    const char *text = code == 200 ? "OK" : code == 404 ? "Not Found"
                     : code == 405 ? "Method Not Allowed" : code == 400 ? "Bad Request"
                                                                       : "Service Unavailable";
    size_t blen = strlen(body);
    size_t cap = blen + 256;
    c->reply = malloc(cap);
    if (!c->reply) {
        client_close(c);
        return;
    }
    int n = snprintf(c->reply, cap,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Cache-Control: no-store\r\nConnection: close\r\n\r\n%s",
                     code, text, type, blen, body);
    uv_buf_t b = uv_buf_init(c->reply, (unsigned)n);
    c->wr.data = c;
    c->answered = 1;
    if (uv_write(&c->wr, (uv_stream_t *)&c->tcp, &b, 1, on_written) != 0) client_close(c);
}

/* Adds {"DEST": {"queued": n, ...}} rows from "destination, state, count". */
static int dest_count_row(void *ud, int ncol, const char **names, const char **v)
{
    cJSON *dests = ud;
    (void)names;
    if (ncol < 3 || !v[0] || !v[1] || !v[2]) return 0;
    cJSON *d = cJSON_GetObjectItemCaseSensitive(dests, v[0]);
    if (!d) {
        d = cJSON_AddObjectToObject(dests, v[0]);
        if (!d) return 0;
        for (int i = 0; i < EXP_NSTATES; i++) cJSON_AddNumberToObject(d, st_export_state_name(i), 0);
    }
    cJSON *n = cJSON_GetObjectItemCaseSensitive(d, st_export_state_name(atoi(v[1])));
    if (n) cJSON_SetNumberValue(n, atof(v[2]));
    return 0;
}

static char *status_json(ctg_http *h, int *ok)
{
    st_counts cnt;
    uint64_t avail = 0;
    *ok = st_counts_get(h->st, &cnt) == 0;
    st_free_bytes(h->st, &avail);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "service", "ctglipd");
    cJSON_AddNumberToObject(o, "uptime_seconds", ctg_now() - h->started);
    cJSON_AddNumberToObject(o, "associations", h->active ? h->active(h->ud) : 0);
    cJSON_AddBoolToObject(o, "index_ok", *ok);
    cJSON *idx = cJSON_AddObjectToObject(o, "index");
    cJSON_AddNumberToObject(idx, "patients", cnt.patients);
    cJSON_AddNumberToObject(idx, "studies", cnt.studies);
    cJSON_AddNumberToObject(idx, "studies_pending", cnt.studies_pending);
    cJSON_AddNumberToObject(idx, "series", cnt.series);
    cJSON_AddNumberToObject(idx, "instances", cnt.instances);
    cJSON *jobs = cJSON_AddObjectToObject(o, "jobs");
    for (int i = 0; i < 5; i++) cJSON_AddNumberToObject(jobs, st_job_state_name(i), cnt.jobs[i]);
    cJSON *exps = cJSON_AddObjectToObject(o, "exports");
    for (int i = 0; i < EXP_NSTATES; i++)
        cJSON_AddNumberToObject(exps, st_export_state_name(i), cnt.exports[i]);
    cJSON *dests = cJSON_AddObjectToObject(exps, "destinations");
    if (dests)
        st_query(h->st,
                 "SELECT destination, state, count(*) FROM exports GROUP BY destination, state"
                 " ORDER BY destination",
                 dest_count_row, dests);
    /* Radiology reports received for the retrain (SR and drop folder). */
    cJSON *reps = cJSON_AddObjectToObject(o, "reports");
    cJSON_AddNumberToObject(reps, "total", cnt.reports);
    cJSON_AddNumberToObject(reps, "final", cnt.reports_final);
    cJSON_AddNumberToObject(reps, "unlinked", cnt.reports_unlinked);
    cJSON *sp = cJSON_AddObjectToObject(o, "spool");
    cJSON_AddNumberToObject(sp, "bytes_stored", (double)cnt.bytes);
    cJSON_AddNumberToObject(sp, "bytes_free", (double)avail);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* Handles the request once its first line is complete. */
static void handle(client *c)
{
    char method[8], path[256];
    char *eol = memchr(c->buf, '\n', c->len);
    if (!eol) return;
    *eol = 0;
    if (sscanf(c->buf, "%7s %255s", method, path) != 2) {
        respond(c, 400, "text/plain", "bad request\n");
        return;
    }
    if (strcmp(method, "GET") != 0) {
        respond(c, 405, "text/plain", "only GET\n");
        return;
    }
    if (!strcmp(path, "/status")) {
        int ok;
        char *j = status_json(c->h, &ok);
        if (!j) {
            respond(c, 503, "text/plain", "out of memory\n");
            return;
        }
        size_t n = strlen(j);
        char *body = malloc(n + 2);
        if (body) {
            memcpy(body, j, n);
            body[n] = '\n';
            body[n + 1] = 0;
            respond(c, ok ? 200 : 503, "application/json", body);
            free(body);
        } else {
            client_close(c);
        }
        cJSON_free(j);
        return;
    }
    if (!strcmp(path, "/health")) {
        st_counts cnt;
        int ok = st_counts_get(c->h->st, &cnt) == 0;
        respond(c, ok ? 200 : 503, "text/plain", ok ? "ok\n" : "index unavailable\n");
        return;
    }
    respond(c, 404, "text/plain", "not found: try /status or /health\n");
}

static void on_alloc(uv_handle_t *hd, size_t suggested, uv_buf_t *b)
{
    client *c = hd->data;
    (void)suggested;
    b->base = c->buf + c->len;
    b->len = REQ_CAP - 1 - c->len;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    client *c = s->data;
    (void)b;
    if (c->answered) return;
    if (n < 0) {
        client_close(c);
        return;
    }
    c->len += (size_t)n;
    c->buf[c->len] = 0;
    if (memchr(c->buf, '\n', c->len)) {
        uv_read_stop(s);
        handle(c);
    } else if (c->len >= REQ_CAP - 1) {
        uv_read_stop(s);
        respond(c, 400, "text/plain", "request line too long\n");
    }
}

static void on_timeout(uv_timer_t *t)
{
    client *c = t->data;
    if (!c->answered) client_close(c);
}

static void on_connection(uv_stream_t *srv, int status)
{
    ctg_http *h = srv->data;
    if (status < 0 || h->closing) return;
    client *c = calloc(1, sizeof *c);
    if (!c) return;
    c->h = h;
    uv_tcp_init(h->loop, &c->tcp);
    uv_timer_init(h->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles = 2;
    h->refs++;
    c->next = h->clients;
    if (h->clients) h->clients->prev = c;
    h->clients = c;
    if (uv_accept(srv, (uv_stream_t *)&c->tcp) != 0) {
        client_close(c);
        return;
    }
    uv_timer_start(&c->timer, on_timeout, CLIENT_TIMEOUT_MS, 0);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static void server_closed(uv_handle_t *hd) { http_unref(hd->data); }

int ctg_http_start(uv_loop_t *loop, const char *bind_addr, int port, st_store *st,
                   int (*active)(void *), void *ud, ctg_http **out)
{
    struct sockaddr_storage sa;
    if (uv_ip4_addr(bind_addr, port, (struct sockaddr_in *)&sa) != 0 &&
        uv_ip6_addr(bind_addr, port, (struct sockaddr_in6 *)&sa) != 0) {
        log_error("http: bad bind address '%s'", bind_addr);
        return CTG_ECONFIG;
    }
    ctg_http *h = calloc(1, sizeof *h);
    if (!h) return CTG_ENOMEM;
    h->loop = loop;
    h->st = st;
    h->active = active;
    h->ud = ud;
    h->started = ctg_now();
    h->refs = 1;
    uv_tcp_init(loop, &h->server);
    h->server.data = h;
    int r = uv_tcp_bind(&h->server, (struct sockaddr *)&sa, 0);
    if (r == 0) r = uv_listen((uv_stream_t *)&h->server, 64, on_connection);
    if (r != 0) {
        log_error("http: cannot listen on %s:%d: %s", bind_addr, port, uv_strerror(r));
        h->closing = 1;
        uv_close((uv_handle_t *)&h->server, server_closed); /* frees h */
        return CTG_EIO;
    }
    log_info("http: status on http://%s:%d/status", bind_addr, port);
    *out = h;
    return 0;
}

void ctg_http_close(ctg_http *h)
{
    if (!h) return;
    h->closing = 1;
    for (client *c = h->clients; c; c = c->next) client_close(c);
    uv_close((uv_handle_t *)&h->server, server_closed);
}
