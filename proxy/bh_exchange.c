/* The exchange: reads what the head says, refuses what could be read two ways, routes, hands the
 * request to its route's handler, and ends it once: counted in the metrics, one access-log line,
 * the handler's resources given back, its config generation released.
 *
 * Ending: bh_exchange_finish (the response is complete) ends the exchange at once when the request
 * was read (or the connection closes after the response anyway); otherwise the parser reads the
 * rest of the body, dropping it, and bh_exchange_request_done ends it. An abort (the client went
 * away, or bulkhead answers a protocol error and closes) ends it at once. */
#include <stddef.h>
#include <string.h>
#include "bh_alloc.h"
#include "bh_deadline.h"
#include "bh_exchange.h"
#include "bh_forward.h"
#include "bh_log.h"
#include "bh_proxy.h"
#include "bh_reply.h"
#include "bh_router.h"
#include "bh_sql.h"

static uint64_t now_of(const bh_exchange_t *ex)
{
    return uv_now(&ex->conn->w->loop);
}

/* ---- ending ------------------------------------------------------------------------------- */

/* The handler gives back what it holds (once; it serves nothing more). */
static void release_handler(bh_exchange_t *ex, bool reusable)
{
    const bh_handler_t *h = ex->handler;
    ex->handler = NULL;
    if (h != NULL && h->release != NULL)
        h->release(ex, reusable);
    ex->state = NULL;
}

static void log_exchange(const bh_exchange_t *ex, bool aborted, int status)
{
    bh_worker_t *w = ex->conn->w;
    if (w->alog == NULL || ex->log_target == NULL)
        return;
    bh_accesslog_rec_t r = {
        .worker = w->id,
        .client = ex->conn->ip,
        .request = ex->log_target,
        .route = ex->route != NULL ? ex->route->name : NULL,
        .status = status,
        .bytes = ex->conn->out.total - ex->out_at_start,
        .upstream = ex->backend,
        .endpoint = ex->endpoint,
        .attempts = ex->attempts,
        .queue_ms = ex->attached_ms ? (int64_t)(ex->attached_ms - ex->start_ms) : -1,
        .first_byte_ms = ex->first_byte_ms && ex->attached_ms
                             ? (int64_t)(ex->first_byte_ms - ex->attached_ms)
                             : -1,
        .total_ms = now_of(ex) - ex->start_ms,
        .error = ex->local && ex->last_err < 0 ? bh_err_proxy_status(ex->last_err) : NULL,
        .aborted = aborted,
        .application_name = ex->app_name,
        .request_id = ex->request_id[0] != '\0' ? ex->request_id : NULL,
    };
    bh_accesslog_write(w->alog, &r);
}

static void end(bh_exchange_t *ex, bool aborted, bool reusable)
{
    int status = aborted && !ex->resp_done ? 499 : ex->status;
    release_handler(ex, reusable);
    bh_route_count(ex->route_cells, status, (uv_hrtime() - ex->start_ns) / 1000);
    log_exchange(ex, aborted, status);
    bh_free(ex->log_target);
    ex->log_target = NULL;
    bh_free(ex->app_name);
    ex->app_name = NULL;
    ex->active = false;
    bh_gen_t *g = ex->gen;
    ex->gen = NULL;
    ex->route = NULL;
    bh_gen_release(g);
}

void bh_exchange_finish(bh_exchange_t *ex, bool reusable)
{
    bh_conn_t *conn = ex->conn;
    ex->resp_done = true;
    if (!ex->req_done && !conn->close_after) {
        release_handler(ex, reusable);
        conn->ops->resume(conn); /* drop the rest of the body; request_done ends it */
        return;
    }
    end(ex, false, reusable);
    conn->ops->exchange_done(conn);
}

void bh_exchange_abort(bh_exchange_t *ex, int err)
{
    if (err < 0 && !ex->resp_started) { /* the caller answers with err's status itself */
        ex->local = true;
        ex->last_err = err;
        ex->status = bh_reply_status(err);
        ex->resp_done = true;
        end(ex, false, false);
        return;
    }
    end(ex, true, false);
}

void bh_exchange_count_unrouted(bh_conn_t *conn, int err, uint64_t since_ms)
{
    bh_worker_t *w = conn->w;
    uint64_t now = uv_now(&w->loop);
    bh_route_count(bh_mentry_cells(w->srv->metrics.no_route, w->id), bh_reply_status(err),
                   now > since_ms ? (now - since_ms) * 1000 : 0);
}

void bh_exchange_reply(bh_exchange_t *ex, int err, bool close, uint64_t retry_after_s)
{
    bh_conn_t *conn = ex->conn;
    release_handler(ex, false);
    int status = bh_reply_status(err);
    /* Protocol-level errors leave the request stream in an unknown state: close. */
    if (status == 400 || status == 408 || status == 413 || status == 431 || status == 501)
        close = true;
    if (close)
        conn->close_after = true;
    ex->local = true;
    ex->resp_started = true;
    ex->status = status;
    ex->last_err = err;
    char rid[BH_REQUEST_ID_MAX + 96] = "";
    if (ex->request_id[0] != '\0')
        snprintf(rid, sizeof rid, "%s: %s\r\n", ex->gen->conf->request_id.header, ex->request_id);
    if (bh_reply_write_detail(&conn->out, status, err, ex->reply_detail, rid,
                              conn->close_after || conn->w->draining, retry_after_s) < 0) {
        conn->ops->close(conn);
        return;
    }
    bh_exchange_finish(ex, false);
}

/* ---- the request head --------------------------------------------------------------------- */

/* Reads the fields the exchange acts on (one pass; bh_http_req_fields). */
static void read_fields(const bh_conn_t *conn, bh_request_t *req, bh_req_fields_t *f)
{
    bh_http_req_fields(req->hdrs, req->nhdrs, bh_conn_http11(conn), f);
    req->expect_continue = f->expect_continue;
    req->idempotency_key = f->idempotency_key;
    if (f->timeout.p != NULL &&
        bh_deadline_parse_ms(f->timeout.p, f->timeout.n, &req->client_timeout_ms) < 0)
        req->client_timeout_ms = 0;
}

/* The access log's "METHOD target", at most 1 KiB. */
static char *log_target(bh_span_t method, bh_span_t target)
{
    size_t tn = target.n < 1024 ? target.n : 1024;
    char *s = bh_malloc(method.n + tn + 2);
    if (s != NULL) {
        memcpy(s, method.p, method.n);
        s[method.n] = ' ';
        memcpy(s + method.n + 1, target.p, tn);
        s[method.n + 1 + tn] = '\0';
    }
    return s;
}

static void begin(bh_exchange_t *ex, bh_conn_t *conn)
{
    bh_worker_t *w = conn->w;
    memset(ex, 0, offsetof(bh_exchange_t, state_area)); /* the handler clears its own */
    ex->conn = conn;
    ex->active = true;
    ex->gen = w->gen;
    ex->gen->refs++;
    ex->route_cells = bh_mentry_cells(w->srv->metrics.no_route, w->id);
    ex->start_ms = now_of(ex);
    ex->start_ns = uv_hrtime();
    ex->body_limit = w->conf->limits.max_body_bytes;
    ex->out_at_start = conn->out.total;
    ex->deadline_ms = BH_DEADLINE_NONE;
}

/* A request id a client may choose: 1 to BH_REQUEST_ID_MAX letters, digits and - _ . : / + = (a
 * UUID, a W3C trace id, base64), nothing that could break a log line or a header. */
static bool request_id_ok(bh_span_t v)
{
    static const char ok[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:/+=";
    if (v.n == 0 || v.n > BH_REQUEST_ID_MAX)
        return false;
    for (size_t i = 0; i < v.n; i++)
        if (v.p[i] == '\0' || strchr(ok, v.p[i]) == NULL)
            return false;
    return true;
}

/* The request's id (request_id.header; "" when off): the client's, when it sent exactly one and
 * request_id.from_client allows it and it is well-formed; otherwise the worker's random prefix and
 * its next count, 32 hex digits, unique without a lookup. req NULL: the head was unreadable. */
static void choose_request_id(bh_exchange_t *ex, const bh_request_t *req)
{
    const bh_conf_request_id_t *conf = &ex->gen->conf->request_id;
    if (conf->header == NULL)
        return;
    if (req != NULL && conf->from_client) {
        const bh_hdr_t *found = NULL;
        size_t name_len = strlen(conf->header), seen = 0;
        for (int i = 0; i < req->nhdrs; i++)
            if (bh_span_ieqn(req->hdrs[i].name, conf->header, name_len) && ++seen == 1)
                found = &req->hdrs[i];
        if (seen == 1 && request_id_ok(found->value)) {
            memcpy(ex->request_id, found->value.p, found->value.n);
            ex->request_id[found->value.n] = '\0';
            return;
        }
    }
    static const char hex[] = "0123456789abcdef";
    bh_worker_t *w = ex->conn->w;
    uint64_t parts[2] = {w->rid_prefix, w->rid_next++};
    for (int i = 0; i < 32; i++)
        ex->request_id[i] = hex[(parts[i / 16] >> (60 - 4 * (i % 16))) & 15];
    ex->request_id[32] = '\0';
}

/* Splits the head into req. Returns 0 or the error to answer with. */
static int read_head(bh_exchange_t *ex, const char *head, size_t head_len, bh_span_t target,
                     bh_request_t *req, bh_req_fields_t *f)
{
    bh_conn_t *conn = ex->conn;
    bh_worker_t *w = conn->w;
    bh_span_t start;
    int n = bh_http_split(head, head_len, &start, w->hdrs, w->max_hdrs);
    if (n < 0)
        return n == -2 ? BH_EHEAD_TOO_LARGE : BH_EBAD_REQUEST;
    /* The start line as llhttp read it; never split again here. */
    const char *mname = llhttp_method_name(llhttp_get_method(conn->parser));
    *req = (bh_request_t){.method = {mname, strlen(mname)},
                          .head = head,
                          .head_len = head_len,
                          .hdrs = w->hdrs,
                          .nhdrs = n};
    if (w->alog != NULL)
        ex->log_target = log_target(req->method, target);
    read_fields(conn, req, f);
    if (bh_http_parse_target(target, &req->target) < 0)
        return BH_EBAD_TARGET;
    int err = bh_http_check_request(conn->parser, f, &req->target);
    if (err < 0)
        return err;
    req->path = req->target.asterisk ? (bh_span_t){"/", 1} : req->target.path;
    uint32_t mbit = bh_method_bit(req->method.p, req->method.n);
    req->method_bit = mbit ? mbit : BH_M_OTHER;
    /* An upgrade needs the request's own Connection: upgrade (llhttp also reads
     * Proxy-Connection), and never to h2c: a cleartext HTTP/2 tunnel would let the client send
     * requests that no route of bulkhead's ever sees (h2c smuggling). */
    req->upgrade = llhttp_get_upgrade(conn->parser) != 0 && f->conn_upgrade && !f->h2c;
    return 0;
}

void bh_exchange_start(bh_exchange_t *ex, bh_conn_t *conn, const char *head, size_t head_len,
                       bh_span_t target)
{
    begin(ex, conn);
    bh_request_t req = {0};
    bh_req_fields_t f;
    int err = read_head(ex, head, head_len, target, &req, &f);
    choose_request_id(ex, req.hdrs == NULL ? NULL : &req);
    if (err < 0) {
        bh_exchange_reply(ex, err, true, 1);
        return;
    }
    /* RFC 9112 3.2.2: an absolute-form target's authority wins over Host. */
    bh_span_t host = req.target.authority.n > 0 ? req.target.authority : f.host;
    req.host = f.nhost > 0 ? f.host : (bh_span_t){NULL, 0};
    const bh_gen_t *gen = ex->gen;
    const bh_conf_route_t *route = bh_route_match(gen->conf, host, req.path, req.method_bit);
    if (route == NULL) {
        bh_exchange_reply(ex, BH_ENO_ROUTE, false, 1);
        return;
    }
    ex->route = route;
    ex->route_cells = bh_mentry_cells(gen->snap->route_m[route - gen->conf->routes], conn->w->id);
    ex->handler = route->database != NULL ? &bh_sql_handler : &bh_forward_handler;
    ex->handler->start(ex, &req);
}

/* ---- events, passed on to the handler ----------------------------------------------------- */

int bh_exchange_body(bh_exchange_t *ex, const char *at, size_t len)
{
    ex->req_body_bytes += len;
    if (ex->req_body_bytes > ex->body_limit)
        return BH_EBODY_TOO_LARGE;
    if (ex->handler == NULL || ex->handler->body == NULL)
        return 0; /* bulkhead already answered: the body is read and dropped */
    return ex->handler->body(ex, at, len);
}

int bh_exchange_request_done(bh_exchange_t *ex)
{
    ex->req_done = true;
    if (ex->handler != NULL && ex->handler->request_done != NULL) {
        int rc = ex->handler->request_done(ex);
        if (rc < 0 || !ex->active)
            return rc;
    }
    if (ex->active && ex->resp_done && ex->handler == NULL) {
        end(ex, false, false); /* answered before the body was read; now it has been */
        ex->conn->ops->exchange_done(ex->conn);
        return 0;
    }
    if (ex->active)
        ex->conn->ops->rearm_timer(ex->conn);
    return 0;
}

void bh_exchange_flush(bh_exchange_t *ex)
{
    if (ex->active && ex->handler != NULL && ex->handler->flush != NULL)
        ex->handler->flush(ex);
}

void bh_exchange_client_drained(bh_exchange_t *ex)
{
    if (ex->active && ex->handler != NULL && ex->handler->client_drained != NULL)
        ex->handler->client_drained(ex);
}

uint64_t bh_exchange_next_timeout(const bh_exchange_t *ex)
{
    if (!ex->active || ex->handler == NULL || ex->handler->next_timeout == NULL)
        return BH_TIME_NEVER;
    return ex->handler->next_timeout(ex);
}

void bh_exchange_timeout(bh_exchange_t *ex, uint64_t now_ms)
{
    if (ex->active && ex->handler != NULL && ex->handler->timeout != NULL)
        ex->handler->timeout(ex, now_ms);
}

void bh_exchange_tunnel_data(bh_exchange_t *ex)
{
    if (ex->active && ex->handler != NULL && ex->handler->tunnel_data != NULL)
        ex->handler->tunnel_data(ex);
}

bool bh_exchange_blocked(const bh_exchange_t *ex)
{
    return ex->active && ex->handler != NULL && ex->handler->blocked != NULL &&
           ex->handler->blocked(ex);
}

bool bh_exchange_abort_on_half_close(const bh_exchange_t *ex)
{
    return ex->active && ex->handler != NULL && ex->handler->abort_on_half_close;
}
