/* SQL over HTTP (the Neon protocol, POST /sql): one exchange runs the request's query or batch on
 * a pooled libpq connection and answers with the whole JSON body.
 *
 * Phases: head (Neon headers checked) -> body (buffered, max_request_bytes) -> connection string
 * and database entry -> breaker -> pool (keyed by server, database, user, password digest) ->
 * statements (a batch inside START TRANSACTION ... COMMIT) -> reply. The request deadline cancels
 * a running statement on the server and answers 504; a client that goes away has its statement
 * cancelled (bh_pg_release does that for a connection released mid-statement). Only failures that
 * never reached Postgres are retried; a batch may be re-run on 40001/40P01 when configured. */
#include <string.h>
#include <strings.h>
#include "bh_alloc.h"
#include "bh_call.h"
#include "bh_deadline.h"
#include "bh_log.h"
#include "bh_exchange.h"
#include "bh_proxy.h"
#include "bh_reply.h"
#include "bh_sql.h"
#include "bh_sql_proto.h"
#include "bh_sql_scan.h"

enum sql_phase {
    SQL_BODY,    /* reading the request body */
    SQL_WAITING, /* for a pooled connection */
    SQL_RUNNING, /* statements in flight */
    SQL_BACKOFF, /* before retrying a connect that never reached Postgres */
    SQL_DONE,    /* the reply is queued */
};

enum sql_stage {
    SQL_ST_RESET, /* the session reset alone, before a statement that changes the session */
    SQL_ST_MAIN,  /* a single statement (and the reset in front) */
    SQL_ST_BATCH, /* BEGIN, the reset, the batch's statements */
    SQL_ST_END,   /* the batch's COMMIT or ROLLBACK */
};

struct bh_sql {
    bh_exchange_t *ex;
    const bh_conf_database_t *db;
    bh_sql_db_t *shared;       /* the database's process-wide state (breaker, server) */
    bh_backend_cells_t *cells; /* this worker's metrics of the database */
    uint64_t wait_start_ms;
    char *head; /* a copy of the request head: the header spans point here */
    bh_sql_headers_t h;
    char *body;
    size_t body_len, body_cap, body_alloc;
    bh_sql_connstr_t cs;
    bool cs_parsed;
    const char *user, *password, *dbname;
    bh_sql_request_t *req;
    bh_sql_out_t out;
    bh_pg_pool_t *pool;
    bh_pg_waiter_t waiter;
    bool waiting;
    bh_pg_conn_t *conn;
    bh_call_t call;    /* the request's passage through breaker and budget */
    bh_attempt_t last; /* how the last attempt ended */
    enum sql_phase phase;
    uint64_t deadline_ms, retry_at_ms;
    uint64_t client_timeout_ms; /* Bulkhead-Timeout, 0 when none */
    unsigned attempts;
    enum sql_stage stage; /* which pipeline of the request is in flight */
    bool reset_alone;     /* the reset ran in a round trip of its own */
    bool in_tx;           /* START TRANSACTION succeeded, COMMIT not yet */
    PGresult *error;      /* the statement error that ends the request */
    bool conn_lost;
    bool rows_begun;
    char request_id[BH_SQL_REQUEST_ID_LEN + 1];
};

static uint64_t now_of(bh_sql_t *s)
{
    return uv_now(&s->ex->conn->w->loop);
}

static void close_conn(bh_sql_t *s)
{
    s->ex->conn->ops->close(s->ex->conn);
}

static void rearm(bh_sql_t *s)
{
    s->ex->conn->ops->rearm_timer(s->ex->conn);
}

static bh_rng_t *rng_of(bh_sql_t *s)
{
    return s->ex->conn->w->env.rng;
}

/* ---- the resilience pipeline (bh_call.h), the same as an upstream's ------------------------- */

static bh_guard_t guard_of(const bh_sql_t *s)
{
    return (bh_guard_t){&s->shared->breaker, &s->shared->budget, s->db->breaker.count};
}

/* An attempt ended: counted by outcome, remembered for the request's outcome. */
static void attempt_ended(bh_sql_t *s, bh_outcome_t outcome, bh_safety_t safety)
{
    s->last = (bh_attempt_t){.outcome = outcome, .safety = safety};
    bh_counter_add(&s->cells->attempts[outcome], 1);
}

/* The request's outcome for the breaker, once (as breaker.count says). */
static void end_call(bh_sql_t *s, const bh_attempt_t *a)
{
    bh_guard_t g = guard_of(s);
    bh_call_end(&g, &s->call, a, now_of(s), rng_of(s));
}

/* Another attempt after a backoff, when the pipeline allows it. a NULL: a batch rolled back by
 * a serialization failure (retry.serialization_failures), which nothing of it survived. */
static bool schedule_retry(bh_sql_t *s, const bh_attempt_t *a)
{
    bh_guard_t g = guard_of(s);
    bh_retry_request_t req = {.method = BH_M_POST, .body_replayable = true};
    uint64_t now = now_of(s), delay = 0;
    bh_call_verdict_t v = bh_call_retry(&g, &s->db->retry, s->attempts, a, &req, 0, now,
                                        s->deadline_ms, rng_of(s), &delay);
    if (v == BH_CALL_BUDGET_EXHAUSTED)
        bh_counter_add(&s->cells->budget_exhausted, 1);
    if (v != BH_CALL_RETRY)
        return false;
    bh_counter_add(&s->cells->retries, 1);
    s->phase = SQL_BACKOFF;
    s->retry_at_ms = now + delay;
    rearm(s);
    return true;
}

/* Whether a statement error is the server failing rather than the statement (counted as `5xx`
 * by breaker.count): insufficient resources (53), operator intervention such as a shutdown (57P),
 * system errors (58) and internal errors (XX). */
static bool server_side_error(const PGresult *res)
{
    const char *c = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (c == NULL)
        return false;
    return strncmp(c, "53", 2) == 0 || strncmp(c, "57P", 3) == 0 || strncmp(c, "58", 2) == 0 ||
           strncmp(c, "XX", 2) == 0;
}

/* ---- shared per database ------------------------------------------------------------------ */

int bh_sql_db_init(bh_sql_db_t *d, const bh_conf_database_t *conf, uint64_t now_ms)
{
    static _Atomic uint64_t next_tag = 1;
    memset(d, 0, sizeof(*d));
    bh_breaker_init(&d->breaker, &conf->breaker, conf->timeouts.total_ms, now_ms);
    bh_budget_init(&d->budget, &conf->retry.budget);
    d->settings = bh_calloc(conf->n_session ? conf->n_session : 1, sizeof(*d->settings));
    if (d->settings == NULL)
        return BH_ENOMEM;
    for (size_t i = 0; i < conf->n_session; i++)
        d->settings[i] = (bh_pg_setting_t){conf->session_keys[i], conf->session_values[i]};
    d->server = (bh_pg_server_t){
        .name = conf->name,
        .conninfo = conf->server,
        .session = d->settings,
        .n_session = conf->n_session,
        .pool = conf->pool,
        .connect_timeout_ms = conf->timeouts.connect_ms,
        .statement_cache = conf->statement_cache,
        .reset_auto = conf->reset == BH_DB_RESET_AUTO,
        .tag = atomic_fetch_add(&next_tag, 1),
    };
    return 0;
}

void bh_sql_db_destroy(bh_sql_db_t *d)
{
    bh_free(d->settings);
    d->settings = NULL;
}

/* ---- replies ------------------------------------------------------------------------------ */

/* Queues the reply in s->out with its head. err != 0: bulkhead's own error (Proxy-Status). */
static void reply(bh_sql_t *s, int status, bh_sql_reply_t kind, int err, uint64_t retry_after_s)
{
    bh_exchange_t *ex = s->ex;
    bh_conn_t *c = ex->conn;
    size_t len = 0;
    char *body = bh_sql_out_take(&s->out, &len);
    char head[1024];
    bh_wbuf_t w = {head, 0, sizeof(head), false};
    bh_wbuf_str(&w, "HTTP/1.1 ");
    bh_wbuf_u64(&w, (uint64_t)status);
    bh_wbuf_put(&w, " ", 1);
    bh_wbuf_str(&w, bh_http_reason(status));
    bh_wbuf_put(&w, "\r\n", 2);
    bh_sql_write_headers(&w, kind, kind == BH_SQL_REPLY_BATCH_OK ? &s->h : NULL, s->request_id);
    if (ex->request_id[0] != '\0') /* the access log's id; neon-request-id is the protocol's */
        bh_wbuf_field(&w, ex->gen->conf->request_id.header, ex->request_id);
    if (kind != BH_SQL_REPLY_PREFLIGHT || len > 0) {
        bh_wbuf_str(&w, "Content-Length: ");
        bh_wbuf_u64(&w, len);
        bh_wbuf_put(&w, "\r\n", 2);
    } else {
        bh_wbuf_str(&w, "Content-Length: 0\r\n");
    }
    if (err != 0) {
        bh_wbuf_str(&w, "Proxy-Status: bulkhead; error=");
        const char *type = bh_err_proxy_status(err);
        bh_wbuf_str(&w, type != NULL ? type : "proxy_internal_error");
        bh_wbuf_str(&w, "; details=\"");
        bh_wbuf_str(&w, bh_strerror(err));
        bh_wbuf_str(&w, "\"\r\n");
    }
    if (status == 401)
        bh_wbuf_str(&w, "WWW-Authenticate: Bearer realm=\"bulkhead\"\r\n");
    if (status == 503) {
        bh_wbuf_str(&w, "Retry-After: ");
        bh_wbuf_u64(&w, retry_after_s > 0 ? retry_after_s : 1);
        bh_wbuf_put(&w, "\r\n", 2);
    }
    if (!ex->req_done && ((c->parser->flags & F_CHUNKED) || c->parser->content_length > 0))
        c->close_after = true; /* the rest of a body will not be read */
    if (c->close_after || c->w->draining)
        bh_wbuf_str(&w, "Connection: close\r\n");
    bh_wbuf_put(&w, "\r\n", 2);
    int rc = w.overflow ? BH_ENOMEM : bh_outq_copy(&c->out, head, w.n);
    if (rc == 0 && len > 0)
        rc = bh_outq_copy(&c->out, body, len);
    if (rc == 0)
        rc = bh_outq_flush(&c->out);
    bh_free(body);
    s->phase = SQL_DONE;
    ex->status = status;
    ex->resp_started = ex->resp_done = true;
    ex->local = true;
    if (rc < 0) {
        c->ops->close(c);
        return;
    }
    bh_exchange_finish(ex, false);
}

/* A bulkhead-made error with the 17-key body, with a status other than the table's. */
static void reply_local(bh_sql_t *s, int status, int err, const char *message)
{
    if (bh_sql_encode_cause(&s->out, err, message) < 0) {
        close_conn(s);
        return;
    }
    reply(s, status, BH_SQL_REPLY_OK, err, 1);
}

/* A bulkhead-made error for cause err: status, Proxy-Status and body code from the table. */
static void reply_error(bh_sql_t *s, int err, const char *message)
{
    reply_local(s, bh_err_status(err), err, message);
}

/* ---- statements --------------------------------------------------------------------------- */

static void run_next(bh_sql_t *s);
static void start_attempt(bh_sql_t *s);

static void release_conn(bh_sql_t *s, bool reusable)
{
    if (s->conn != NULL) {
        bh_pg_release(s->conn, reusable);
        s->conn = NULL;
    }
}

/* retry.serialization_failures: a batch that failed with 40001 or 40P01 (already rolled back)
 * runs again, whole, after a backoff, while attempts and the deadline allow. */
static bool rerun_batch(bh_sql_t *s)
{
    if (!s->req->batch || !s->db->retry_serialization_failures || s->conn_lost || s->error == NULL)
        return false;
    const char *code = PQresultErrorField(s->error, PG_DIAG_SQLSTATE);
    if (code == NULL || (strcmp(code, "40001") != 0 && strcmp(code, "40P01") != 0))
        return false;
    if (PQtransactionStatus(bh_pg_conn_pq(s->conn)) != PQTRANS_IDLE)
        return false; /* the rollback did not complete */
    if (!schedule_retry(s, NULL))
        return false;
    PQclear(s->error);
    s->error = NULL;
    release_conn(s, true);
    bh_sql_out_reset(&s->out);
    return true;
}

/* The session reset in front of the statements failed, so Postgres skipped them (or rolled them
 * back with the batch's transaction): like a connect failure (the caller counted it so), nothing
 * ran, and another connection may try (the failed one is discarded). */
static bool retry_unreset(bh_sql_t *s)
{
    if (!schedule_retry(s, &s->last))
        return false;
    release_conn(s, false);
    s->conn_lost = false;
    if (s->error != NULL) {
        PQclear(s->error);
        s->error = NULL;
    }
    bh_sql_out_reset(&s->out);
    return true;
}

/* Every statement ended; s->error holds the first statement error, if any. */
static void finish_statements(bh_sql_t *s)
{
    bool failed = s->error != NULL || s->conn_lost;
    if (s->conn_lost && s->conn != NULL && bh_pg_reset_failed(s->conn)) {
        attempt_ended(s, BH_OUTCOME_CONNECT_FAILED, BH_SAFETY_NOT_SENT);
        if (retry_unreset(s))
            return;
    } else if (s->conn_lost) {
        attempt_ended(s, BH_OUTCOME_RESET_BEFORE_RESPONSE, BH_SAFETY_SENT_NO_RESPONSE);
    } else {
        attempt_ended(s, server_side_error(s->error) ? BH_OUTCOME_HTTP_5XX : BH_OUTCOME_OK,
                      BH_SAFETY_SENT_NO_RESPONSE);
    }
    if (s->conn_lost) {
        end_call(s, &s->last);
        release_conn(s, false);
        if (s->error != NULL) {
            PQclear(s->error);
            s->error = NULL;
        }
        reply_error(s, BH_EPG_CONN_LOST, "connection to the database was lost");
        return;
    }
    if (failed && rerun_batch(s))
        return; /* the request's outcome is its last run's */
    end_call(s, &s->last);
    if (failed) {
        int rc = bh_sql_encode_pg_error(&s->out, s->error);
        PQclear(s->error);
        s->error = NULL;
        /* An ordinary SQL error keeps the connection: autocommit (or the batch's ROLLBACK) left
         * the session idle, and bh_pg_release still discards one that was cancelled, lost or
         * left inside a transaction. A new connection costs far more than the query. */
        release_conn(s, true);
        if (rc < 0) {
            close_conn(s);
            return;
        }
        reply(s, 400, BH_SQL_REPLY_OK, 0, 0);
        return;
    }
    if (s->out.err < 0) { /* 507 or out of memory while encoding */
        int err = s->out.err;
        release_conn(s, true);
        if (err == BH_ESQL_TOO_LARGE) {
            if (bh_sql_encode_too_large(&s->out, true, s->db->max_response_bytes) < 0) {
                close_conn(s);
                return;
            }
            reply(s, 507, BH_SQL_REPLY_OK, BH_ESQL_TOO_LARGE, 0);
        } else {
            reply_error(s, err, bh_strerror(err));
        }
        return;
    }
    release_conn(s, true);
    reply(s, 200, s->req->batch ? BH_SQL_REPLY_BATCH_OK : BH_SQL_REPLY_OK, 0, 0);
}

/* The response outgrew max_response_bytes while rows were arriving: stop here instead of reading
 * the rest into memory. Releasing the connection mid-statement cancels the query on the server
 * and discards the session (a batch's transaction is rolled back with it: nothing is committed
 * that the client cannot see). The 507 is the client's doing, not the database's failure. */
static void stop_too_large(bh_sql_t *s)
{
    attempt_ended(s, BH_OUTCOME_OK, BH_SAFETY_SENT_NO_RESPONSE);
    end_call(s, &s->last);
    if (s->error != NULL) {
        PQclear(s->error);
        s->error = NULL;
    }
    release_conn(s, false);
    if (bh_sql_encode_too_large(&s->out, true, s->db->max_response_bytes) < 0) {
        close_conn(s);
        return;
    }
    reply(s, 507, BH_SQL_REPLY_OK, BH_ESQL_TOO_LARGE, 0);
}

/* One result of a user statement, streamed: single-row mode hands every row over as its own
 * PGRES_SINGLE_TUPLE, then a final PGRES_TUPLES_OK without rows carries the command tag. The
 * fields come from the first result of the statement (rows_begun says whether they were
 * written). Returns false when the statement must stop (the reply outgrew its bound). */
static bool encode_streamed(bh_sql_t *s, const bh_sql_query_t *q, const PGresult *res)
{
    ExecStatusType st = PQresultStatus(res);
    if (!s->rows_begun) {
        bh_sql_result_begin(&s->out, res, s->h.raw_text, bh_sql_array_mode(&s->h, q));
        s->rows_begun = true;
    }
    if (st == PGRES_SINGLE_TUPLE || st == PGRES_TUPLES_OK)
        bh_sql_result_rows(&s->out, res);
    if (st != PGRES_SINGLE_TUPLE) {
        bh_sql_result_end(&s->out, PQcmdStatus((PGresult *)res));
        s->rows_begun = false;
    }
    if (s->out.err == BH_ESQL_TOO_LARGE)
        return false;
    if (s->out.err < 0)
        bh_log_debug("sql: result not encoded: %s", bh_strerror(s->out.err));
    return true;
}

/* Tags of the pipeline items (a user statement's tag is its index in the request). */
#define TAG_BEGIN 0xfffffff0u
#define TAG_END 0xfffffff1u /* COMMIT or ROLLBACK */
#define TAG_SYNC 0xfffffff2u

/* A statement that may leave session state on its server connection (reset: auto). */
static bool leaves_state(const char *sql)
{
    return bh_sql_leaves_state(sql, strlen(sql));
}

static void on_result(bh_pg_conn_t *conn, uint32_t tag, PGresult *res, void *data)
{
    bh_sql_t *s = data;
    if (s->ex->first_byte_ms == 0) /* the access log's first_byte_ms: Postgres answered */
        s->ex->first_byte_ms = now_of(s);
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_FATAL_ERROR) {
        if (s->error == NULL) {
            s->error = res; /* the first error ends the request (BEGIN's and COMMIT's too) */
            return;
        }
        PQclear(res);
        return;
    }
    bool go_on = true;
    if (tag < s->req->nqueries && s->error == NULL &&
        (st == PGRES_SINGLE_TUPLE || st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK ||
         st == PGRES_EMPTY_QUERY))
        go_on = encode_streamed(s, &s->req->queries[tag], res);
    PQclear(res);
    if (!go_on)
        stop_too_large(s); /* may free s */
}

static void on_done(bh_pg_conn_t *conn, int status, void *data);
static const bh_pg_pipe_cbs_t pipe_cbs = {.result = on_result, .done = on_done};

/* Queues the session reset when the connection needs one, and counts it; then the client's
 * application_name, when the session has another (the pools are not split by it). */
static int push_reset(bh_sql_t *s)
{
    int rc = bh_pg_push_reset(s->conn);
    if (rc > 0)
        bh_counter_add(&s->cells->sql_resets, 1);
    if (rc >= 0)
        rc = bh_pg_push_app_name(s->conn, s->cs.application_name);
    return rc < 0 ? rc : 0;
}

/* Queues one user statement: rows one by one; the cache for plain data statements outside a
 * batch (inside one, a stale plan would abort the whole transaction). */
static int push_query(bh_sql_t *s, uint32_t i, bool cacheable, bool leaves)
{
    const bh_sql_query_t *q = &s->req->queries[i];
    unsigned flags = BH_PG_SINGLE_ROW;
    if (leaves)
        flags |= BH_PG_LEAVES_STATE;
    /* A session advisory lock must not stay held by an idle pooled session while other clients
     * wait for it, and a listening one would take notifications while idle; UNLISTEN also takes
     * effect only when the transaction it runs in commits, so a reset in front of the next
     * statement would not hide the channel from it. Texts naming either (conservatively:
     * "advisory", "listen" anywhere) reset at release. */
    if ((flags & BH_PG_LEAVES_STATE) &&
        (strcasestr(q->text, "advisory") != NULL || strcasestr(q->text, "listen") != NULL))
        flags |= BH_PG_RESET_NOW;
    else if (cacheable)
        flags |= BH_PG_CACHE;
    int rc = bh_pg_push(s->conn, i, q->text, q->nparams, q->params, flags);
    if (rc == BH_PG_CACHE_HIT || rc == BH_PG_CACHE_MISS)
        bh_counter_add(&s->cells->sql_cache[rc == BH_PG_CACHE_HIT ? 0 : 1], 1);
    return rc < 0 ? rc : 0;
}

/* A single statement: (reset +) statement + sync, one round trip. A statement that may change
 * the session might also be one that cannot run inside a transaction block (VACUUM, CREATE
 * DATABASE, ...): a reset or application_name it needs then goes first, in a round trip of its
 * own. */
static int push_single(bh_sql_t *s)
{
    bool leaves = leaves_state(s->req->queries[0].text); /* scanned once per statement */
    if (!s->reset_alone && leaves &&
        (bh_pg_needs_reset(s->conn) || bh_pg_app_name_differs(s->conn, s->cs.application_name))) {
        s->reset_alone = true;
        s->stage = SQL_ST_RESET;
        int rc = push_reset(s);
        return rc < 0 ? rc : bh_pg_push_sync(s->conn, TAG_SYNC);
    }
    s->stage = SQL_ST_MAIN;
    int rc = push_reset(s);
    if (rc == 0)
        rc = push_query(s, 0, true, leaves);
    return rc < 0 ? rc : bh_pg_push_sync(s->conn, TAG_SYNC);
}

/* A batch's first round trip: BEGIN, the reset (inside the transaction, so that a failed reset
 * stops the statements), every statement, one sync. COMMIT follows in a second one, only once
 * every result fitted in the reply. */
static int push_batch(bh_sql_t *s)
{
    char begin[BH_SQL_BEGIN_MAX];
    bh_sql_begin_statement(&s->h, begin);
    s->stage = SQL_ST_BATCH;
    int rc = bh_pg_push(s->conn, TAG_BEGIN, begin, 0, NULL, 0);
    if (rc == 0)
        rc = push_reset(s);
    for (uint32_t i = 0; rc == 0 && i < s->req->nqueries; i++)
        rc = push_query(s, i, false, leaves_state(s->req->queries[i].text));
    return rc < 0 ? rc : bh_pg_push_sync(s->conn, TAG_SYNC);
}

/* COMMIT (or ROLLBACK, after an error or a reply that outgrew its bound) and a sync. */
static void end_batch(bh_sql_t *s, bool commit)
{
    s->stage = SQL_ST_END;
    s->in_tx = false;
    if (bh_pg_push(s->conn, TAG_END, commit ? "COMMIT" : "ROLLBACK", 0, NULL, 0) < 0 ||
        bh_pg_push_sync(s->conn, TAG_SYNC) < 0 || bh_pg_send(s->conn, &pipe_cbs, s) < 0) {
        s->conn_lost = true;
        finish_statements(s); /* may free s */
    }
}

/* The pipeline states: SQL_ST_RESET (the reset alone) -> SQL_ST_MAIN (a single statement), or
 * SQL_ST_BATCH (BEGIN and the statements) -> SQL_ST_END (COMMIT or ROLLBACK). */
static void on_done(bh_pg_conn_t *conn, int status, void *data)
{
    bh_sql_t *s = data;
    if (status < 0) {
        s->conn_lost = true;
        finish_statements(s);
        return;
    }
    switch (s->stage) {
    case SQL_ST_RESET:
        s->stage = SQL_ST_MAIN;
        run_next(s);
        return;
    case SQL_ST_BATCH:
        /* The transaction is open, or failed: an error (or a 507 pending) rolls it back. */
        end_batch(s, s->error == NULL && bh_sql_batch_end(&s->out) == 0);
        return;
    default:
        finish_statements(s);
        return;
    }
}

/* Builds and sends the request's next pipeline. */
static void run_next(bh_sql_t *s)
{
    int rc;
    if (s->req->batch) {
        if (bh_sql_batch_begin(&s->out) < 0) {
            finish_statements(s);
            return;
        }
        s->in_tx = true;
        rc = push_batch(s);
    } else {
        rc = push_single(s);
    }
    if (rc == 0)
        rc = bh_pg_send(s->conn, &pipe_cbs, s);
    if (rc < 0) {
        s->conn_lost = true;
        finish_statements(s); /* may answer, end the exchange and free s: touch nothing after */
    }
}

/* ---- connections -------------------------------------------------------------------------- */

static void connected(bh_sql_t *s, bh_pg_conn_t *conn)
{
    bh_hist_observe(&s->cells->wait, (now_of(s) - s->wait_start_ms) * 1000);
    if (s->ex->attached_ms == 0) /* the access log's queue_ms */
        s->ex->attached_ms = now_of(s);
    s->conn = conn;
    s->phase = SQL_RUNNING;
    s->stage = SQL_ST_MAIN;
    s->reset_alone = false;
    s->conn_lost = false;
    s->rows_begun = false;
    s->in_tx = false;
    rearm(s);
    run_next(s);
}

/* A connect failure that Postgres answered (e.g. 53300 too many connections, 28P01): 400 with its
 * error, so that the driver's err.code carries the SQLSTATE. */
static void reply_conn_error(bh_sql_t *s, const bh_pg_error_t *err)
{
    if (bh_sql_encode_conn_error(&s->out, err->message) < 0) {
        close_conn(s);
        return;
    }
    reply(s, 400, BH_SQL_REPLY_OK, 0, 0);
}

static void connect_failed(bh_sql_t *s, int status, const bh_pg_error_t *err)
{
    if (status == BH_EPG_REJECTED && err != NULL) {
        /* the server answered: the client's credentials or database, not a failure of it */
        attempt_ended(s, BH_OUTCOME_OK, BH_SAFETY_NOT_SENT);
        end_call(s, &s->last);
        reply_conn_error(s, err);
        return;
    }
    attempt_ended(
        s, status == BH_ECONNECT_TIMEOUT ? BH_OUTCOME_CONNECT_TIMEOUT : BH_OUTCOME_CONNECT_FAILED,
        BH_SAFETY_NOT_SENT);
    if (bh_pg_error_retriable(status) && schedule_retry(s, &s->last))
        return;
    end_call(s, &s->last);
    if (err != NULL && err->sqlstate[0] != '\0') {
        reply_conn_error(s, err);
        return;
    }
    /* 503, not the table's 502/504: for /sql these never reached Postgres, try again later */
    reply_local(s, 503, status,
                err != NULL && err->message != NULL ? err->message
                                                    : "could not connect to the database");
}

static void on_acquired(bh_pg_waiter_t *w, bh_pg_conn_t *conn, int status, const bh_pg_error_t *err)
{
    bh_sql_t *s = w->data;
    s->waiting = false;
    if (status == 0) {
        connected(s, conn);
        return;
    }
    if (status == BH_EPOOL_TIMEOUT || status == BH_EPOOL_CLOSED) {
        attempt_ended(s, BH_OUTCOME_LOCAL, BH_SAFETY_NOT_SENT); /* not the database's doing */
        end_call(s, &s->last);
        if (status == BH_EPOOL_TIMEOUT && now_of(s) >= s->deadline_ms)
            reply_error(s, BH_ETOTAL_TIMEOUT, "the request deadline passed");
        else
            reply_error(s, status, "timed out waiting for a database connection");
        return;
    }
    connect_failed(s, status, err);
}

/* One attempt: a pooled connection (the breaker was asked once, when the request began). */
static void start_attempt(bh_sql_t *s)
{
    s->attempts++;
    s->ex->attempts = s->attempts; /* for the access log */
    s->phase = SQL_WAITING;
    /* The client's application_name (from its connection string) is not a setting of the
     * server connection: it would split the entry's pools by client version. It goes on the
     * access-log line instead; the server sees the configured one. */
    bh_pg_server_t server = s->shared->server;
    server.gauges = &s->cells->pool;
    s->wait_start_ms = now_of(s);
    int rc = bh_pg_pool_get(s->ex->conn->w->pg_pools, &server, s->dbname, s->user, s->password,
                            &s->pool);
    if (rc < 0) {
        attempt_ended(s, BH_OUTCOME_LOCAL, BH_SAFETY_NOT_SENT);
        end_call(s, &s->last);
        reply_local(s, 500, rc, "cannot open a database pool");
        return;
    }
    s->waiter.cb = on_acquired;
    s->waiter.data = s;
    bh_pg_conn_t *conn = NULL;
    rc = bh_pg_acquire(s->pool, &s->waiter, s->deadline_ms, &conn);
    if (rc == BH_POOL_QUEUED) {
        s->waiting = true;
        rearm(s);
        return;
    }
    if (rc < 0) {
        attempt_ended(s, BH_OUTCOME_LOCAL, BH_SAFETY_NOT_SENT);
        end_call(s, &s->last);
        reply_error(s, rc, "too many requests waiting for a database connection");
        return;
    }
    connected(s, conn);
}

/* The request begins its passage: the breaker is asked once, and it counts for the budget. */
static void start_call(bh_sql_t *s)
{
    bh_guard_t g = guard_of(s);
    uint64_t retry_after_ms = 0;
    if (bh_call_begin(&g, &s->call, now_of(s), rng_of(s), &retry_after_ms) < 0) {
        if (bh_sql_encode_local_error(&s->out, "the database is unavailable (circuit open)") < 0) {
            close_conn(s);
            return;
        }
        reply(s, 503, BH_SQL_REPLY_OK, BH_EBREAKER_OPEN, (retry_after_ms + 999) / 1000);
        return;
    }
    start_attempt(s);
}

/* ---- the request -------------------------------------------------------------------------- */

/* The database entry for a connection-string host: an entry naming the host exactly wins over
 * a catch-all "*" (the route's own catch-all first). */
static const bh_conf_database_t *find_database(const bh_conf_t *conf, size_t route_db,
                                               const char *host, size_t *index)
{
    for (size_t i = 0; i < conf->n_databases; i++)
        for (size_t k = 0; k < conf->databases[i].n_hosts; k++)
            if (strcasecmp(conf->databases[i].hosts[k], host) == 0) {
                *index = i;
                return &conf->databases[i];
            }
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < conf->n_databases; i++) {
            if ((pass == 0) != (i == route_db))
                continue;
            for (size_t k = 0; k < conf->databases[i].n_hosts; k++)
                if (strcmp(conf->databases[i].hosts[k], "*") == 0) {
                    *index = i;
                    return &conf->databases[i];
                }
        }
    return NULL;
}

static void run_request(bh_sql_t *s)
{
    bh_exchange_t *ex = s->ex;
    char err[256];
    const bh_conf_t *conf = ex->gen->conf;
    if (bh_sql_parse_connstr(s->h.connstr.p, s->h.connstr.n, &s->cs, err, sizeof(err)) < 0) {
        reply_error(s, BH_ESQL_CONNSTR, err);
        return;
    }
    s->cs_parsed = true;
    if (s->cs.application_name != NULL && ex->app_name == NULL)
        ex->app_name = bh_strdup(s->cs.application_name); /* NULL when out of memory: not logged */
    size_t idx = 0;
    s->db = find_database(conf, ex->route->database_index, s->cs.host, &idx);
    if (s->db == NULL) {
        snprintf(err, sizeof(err), "no database is configured for host \"%s\"", s->cs.host);
        reply_error(s, BH_ESQL_CONNSTR, err);
        return;
    }
    s->shared = ex->gen->snap->databases[idx];
    s->cells = bh_mentry_cells(ex->gen->snap->db_m[idx], ex->conn->w->id);
    ex->up_cells = s->cells;
    bh_sql_out_init(&s->out, s->db->max_response_bytes);
    if (s->body_len > s->db->max_request_bytes) {
        if (bh_sql_encode_too_large(&s->out, false, s->db->max_request_bytes) < 0) {
            close_conn(s);
            return;
        }
        reply(s, 413, BH_SQL_REPLY_OK, BH_EBODY_TOO_LARGE, 0);
        return;
    }
    if (idx != ex->route->database_index) /* the entry's own deadline, not the route's */
        s->deadline_ms = ex->deadline_ms =
            bh_deadline_for_request(ex->start_ms, s->db->timeouts.total_ms, s->client_timeout_ms);
    if (s->db->auth == BH_DB_AUTH_FIXED) {
        bh_span_t token;
        bool ok = false;
        if (bh_sql_bearer(&s->h, &token))
            for (size_t i = 0; i < s->db->n_tokens && !ok; i++)
                ok = bh_sql_token_eq(token, s->db->tokens[i]);
        if (!ok) {
            reply_error(s, BH_ESQL_AUTH, "authentication required: a valid bearer token");
            return;
        }
        s->user = s->db->user;
        s->password = s->db->password;
        s->dbname = s->db->dbname;
    } else {
        if (s->cs.password == NULL) {
            reply_error(s, BH_ESQL_HEADER, BH_SQL_MSG_MISSING_PASSWORD);
            return;
        }
        s->user = s->cs.user;
        s->password = s->cs.password;
        s->dbname = s->cs.dbname;
    }
    if (bh_sql_parse_body(s->body != NULL ? s->body : "", s->body_len, &s->req, err, sizeof(err)) <
        0) {
        reply_error(s, BH_ESQL_BODY, err);
        return;
    }
    start_call(s);
}

static void sql_start(bh_exchange_t *ex, const bh_request_t *req)
{
    bh_conn_t *c = ex->conn;
    ex->body_limit = UINT64_MAX; /* enforced here: max_request_bytes of the database entry */
    ex->backend = ex->route->database;
    bh_sql_t *s = bh_calloc(1, sizeof(*s));
    if (s == NULL || (s->head = bh_strndup(req->head, req->head_len)) == NULL) {
        bh_free(s);
        bh_exchange_reply(ex, BH_ENOMEM, true, 1);
        return;
    }
    ex->state = s;
    s->ex = ex;
    s->phase = SQL_BODY;
    uint8_t rnd[16];
    for (int i = 0; i < 16; i += 8) {
        uint64_t r = bh_rng_next(c->w->env.rng);
        memcpy(rnd + i, &r, 8);
    }
    bh_sql_request_id(rnd, s->request_id);
    bh_sql_out_init(&s->out, SIZE_MAX);
    bh_sql_headers_init(&s->h);
    bh_span_t start;
    int n = bh_http_split(s->head, req->head_len, &start, c->w->hdrs, c->w->max_hdrs);
    for (int i = 0; i < n; i++)
        bh_sql_header(&s->h, c->w->hdrs[i].name, c->w->hdrs[i].value);
    s->client_timeout_ms = req->client_timeout_ms;
    s->deadline_ms =
        bh_deadline_for_request(ex->start_ms, ex->route->timeouts.total_ms, req->client_timeout_ms);
    ex->deadline_ms = s->deadline_ms;
    switch (bh_sql_route(req->method, req->path)) {
    case BH_SQL_ROUTE_PREFLIGHT:
        reply(s, 200, BH_SQL_REPLY_PREFLIGHT, 0, 0);
        return;
    case BH_SQL_ROUTE_UNSUPPORTED:
        if (bh_sql_encode_not_supported(&s->out) < 0) {
            close_conn(s);
            return;
        }
        reply(s, 400, BH_SQL_REPLY_OK, 0, 0);
        return;
    default:
        break;
    }
    char err[256];
    if (bh_sql_headers_check(&s->h, err, sizeof(err)) < 0) {
        reply_error(s, BH_ESQL_HEADER, err);
        return;
    }
    /* the whole body is needed; its size is bounded by the database's max_request_bytes (the
     * entry is only known from the connection string, so the largest of all entries here) */
    uint64_t max = 0;
    const bh_conf_t *conf = ex->gen->conf;
    for (size_t i = 0; i < conf->n_databases; i++)
        if (conf->databases[i].max_request_bytes > max)
            max = conf->databases[i].max_request_bytes;
    if ((c->parser->flags & F_CONTENT_LENGTH) && c->parser->content_length > max) {
        if (bh_sql_encode_too_large(&s->out, false, max) < 0) {
            close_conn(s);
            return;
        }
        reply(s, 413, BH_SQL_REPLY_OK, BH_EBODY_TOO_LARGE, 0);
        return;
    }
    s->body_cap = max;
    rearm(s);
    c->ops->resume(c); /* the body may flow now */
}

static int sql_body(bh_exchange_t *ex, const char *at, size_t len)
{
    bh_sql_t *s = ex->state;
    if (s->phase != SQL_BODY)
        return 0;
    if (s->body_len + len > s->body_cap) {
        if (bh_sql_encode_too_large(&s->out, false, s->body_cap) < 0)
            return BH_ENOMEM;
        reply(s, 413, BH_SQL_REPLY_OK, BH_EBODY_TOO_LARGE, 0);
        return 0;
    }
    if (s->body_len + len + 1 > s->body_alloc) {
        size_t want = s->body_alloc ? s->body_alloc * 2 : 4096;
        while (want < s->body_len + len + 1)
            want *= 2;
        char *nb = bh_realloc(s->body, want);
        if (nb == NULL)
            return BH_ENOMEM;
        s->body = nb;
        s->body_alloc = want;
    }
    memcpy(s->body + s->body_len, at, len);
    s->body_len += len;
    return 0;
}

static int sql_request_done(bh_exchange_t *ex)
{
    bh_sql_t *s = ex->state;
    if (s->phase != SQL_BODY)
        return 0;
    /* The deadline is the query's: it runs from the complete request (reading the body is
     * bounded by limits.body_timeout between reads). */
    ex->start_ms = now_of(s);
    s->deadline_ms = ex->deadline_ms =
        bh_deadline_for_request(ex->start_ms, ex->route->timeouts.total_ms, s->client_timeout_ms);
    run_request(s);
    return 0;
}

static void sql_release(bh_exchange_t *ex, bool reusable)
{
    bh_sql_t *s = ex->state;
    (void)reusable; /* a statement still running is cancelled; connections judge themselves */
    if (s->waiting)
        bh_pg_acquire_cancel(&s->waiter);
    release_conn(s, false); /* mid-statement: bh_pg cancels it on the server */
    if (s->shared != NULL) {
        bh_guard_t g = guard_of(s);
        bh_call_abandon(&g, &s->call); /* the client left before an outcome: nothing counted */
    }
    if (s->error != NULL)
        PQclear(s->error);
    bh_sql_request_free(s->req);
    if (s->cs_parsed)
        bh_sql_connstr_free(&s->cs);
    bh_sql_out_free(&s->out);
    bh_free(s->body);
    bh_free(s->head);
    bh_free(s);
}

static uint64_t sql_next_timeout(const bh_exchange_t *ex)
{
    const bh_sql_t *s = ex->state;
    if (s->phase == SQL_DONE || s->phase == SQL_BODY)
        return BH_TIME_NEVER;
    if (s->phase == SQL_BACKOFF && s->retry_at_ms < s->deadline_ms)
        return s->retry_at_ms;
    return s->deadline_ms;
}

/* The request's deadline passed. Its outcome for the breaker: a statement still running past the
 * database's own timeouts.total is the database not answering in time (counted as `timeout`, like
 * an upstream's first-byte timeout); one cut by the client's tighter Bulkhead-Timeout is the
 * client's budget (not counted, as an upstream's total timeout); a wait for a pooled connection
 * is local congestion (not counted); during a backoff, the failure that caused it stands. */
static void deadline_passed(bh_sql_t *s)
{
    const char *msg = "the request deadline passed";
    if (s->waiting) {
        bh_pg_acquire_cancel(&s->waiter);
        s->waiting = false;
        attempt_ended(s, BH_OUTCOME_LOCAL, BH_SAFETY_NOT_SENT);
    } else if (s->phase == SQL_RUNNING) {
        bool clients = s->client_timeout_ms != 0 && s->client_timeout_ms < s->db->timeouts.total_ms;
        attempt_ended(s, clients ? BH_OUTCOME_TOTAL_TIMEOUT : BH_OUTCOME_FIRST_BYTE_TIMEOUT,
                      BH_SAFETY_SENT_NO_RESPONSE);
        msg = "the request deadline passed: the query was cancelled";
    }
    end_call(s, &s->last);
    release_conn(s, false); /* cancels the statement on the server */
    reply_error(s, BH_ETOTAL_TIMEOUT, msg);
}

static void sql_timeout(bh_exchange_t *ex, uint64_t now)
{
    bh_sql_t *s = ex->state;
    if (s->phase == SQL_DONE || s->phase == SQL_BODY)
        return;
    if (now >= s->deadline_ms) {
        deadline_passed(s);
        return;
    }
    if (s->phase == SQL_BACKOFF && now >= s->retry_at_ms)
        start_attempt(s);
}

const bh_handler_t bh_sql_handler = {
    .name = "database",
    .start = sql_start,
    .body = sql_body,
    .request_done = sql_request_done,
    .next_timeout = sql_next_timeout,
    .timeout = sql_timeout,
    .release = sql_release,
    .abort_on_half_close = true,
};
