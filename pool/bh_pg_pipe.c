/* Pipelines on a BUSY Postgres connection (libpq pipeline mode): what an owner queues (its
 * statements, the session reset, the prepared-statement cache's Parse and DEALLOCATE, syncs),
 * and the results read back and routed item by item to the owner's callbacks. The connection's
 * invariants are in bh_pg_conn.c's header; the struct is in bh_pg_int.h. */
#include "bh_pg_int.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>
#include "bh_alloc.h"
#include "bh_log.h"

/* The reset of spec 7.5, one statement each: pipeline mode has no simple protocol (several
 * statements in one string). Only sessions outside a transaction are reset (no ROLLBACK), and
 * DISCARD ALL is not among them: it cannot run inside a transaction block. */
static const char *const RESET_STMTS[] = {
    "CLOSE ALL",  "SET SESSION AUTHORIZATION DEFAULT", "RESET ALL",    "DEALLOCATE ALL",
    "UNLISTEN *", "SELECT pg_advisory_unlock_all()",   "DISCARD TEMP", "DISCARD SEQUENCES",
};

/* Settings the server reports (GUC_REPORT, PostgreSQL 15) that a request could change: a
 * different value after the request means the session needs a reset (search_path is not
 * reported before PostgreSQL 18; SET is caught by the statement scan instead). Not
 * application_name: bh_pg sets it itself to the client's (bh_pg_push_app_name). */
static const char *const WATCHED[] = {
    "TimeZone",
    "DateStyle",
    "IntervalStyle",
    "client_encoding",
    "is_superuser",
    "session_authorization",
    "standard_conforming_strings",
    "default_transaction_read_only",
};

uint64_t bh__pg_params_hash(const PGconn *pq)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < sizeof(WATCHED) / sizeof(WATCHED[0]); i++) {
        const char *v = PQparameterStatus(pq, WATCHED[i]);
        for (const char *p = v != NULL ? v : ""; *p != '\0'; p++)
            h = (h ^ (unsigned char)*p) * 1099511628211ull;
        h = (h ^ 0xffu) * 1099511628211ull; /* separator: "a","bc" differs from "ab","c" */
    }
    return h;
}

void bh__pg_pipe_finish(bh_pg_conn_t *c, int status)
{
    void (*cb)(bh_pg_conn_t *, int, void *) = c->cbs.done;
    void *data = c->data;
    c->op = OP_NONE;
    c->n_items = c->head = 0;
    if (c->cap_items > MAX_KEPT_ITEMS) { /* a big batch's queue is not kept while idle */
        bh_free(c->items);
        c->items = NULL;
        c->cap_items = 0;
    }
    c->head_started = false;
    c->group_items = c->group_user = 0;
    c->rd_reset = c->rd_reset_err = c->rd_err = c->rd_commit = false;
    c->rerun = NO_RERUN;
    if (status < 0)
        c->broken = true;
    cb(c, status, data);
}

/* 0: all sent; 1: more to send (watching writability); < 0: lost. */
int bh__pg_flush_out(bh_pg_conn_t *c)
{
    int r = PQflush(c->pq);
    if (r < 0)
        return BH_EPG_CONN_LOST;
    if (bh__pg_poll_watch(c, r ? UV_READABLE | UV_WRITABLE : UV_READABLE) < 0)
        return BH_EPG_CONN_LOST;
    return r;
}

/* A COPY_OUT's data is read and dropped. 1: done; 0: wait for input; < 0: lost. */
static int drain_copy_out(bh_pg_conn_t *c)
{
    for (;;) {
        char *buf = NULL;
        int n = PQgetCopyData(c->pq, &buf, 1);
        if (n > 0) {
            PQfreemem(buf);
            continue;
        }
        return n == 0 ? 0 : n == -1 ? 1 : BH_EPG_CONN_LOST;
    }
}

/* ---- pipelines: building ------------------------------------------------------------------ */

static int push_failed(bh_pg_conn_t *c, int err)
{
    c->broken = true; /* part of the pipeline may be in libpq's buffer: never reuse */
    return err;
}

static struct pg_item *item_add(bh_pg_conn_t *c, enum item_kind kind, uint32_t tag)
{
    if (c->n_items == c->cap_items) {
        size_t cap = c->cap_items ? c->cap_items * 2 : 8;
        struct pg_item *n = bh_realloc(c->items, cap * sizeof(*n));
        if (n == NULL)
            return NULL;
        c->items = n;
        c->cap_items = cap;
    }
    struct pg_item *it = &c->items[c->n_items++];
    memset(it, 0, sizeof(*it));
    it->kind = (uint8_t)kind;
    it->tag = tag;
    c->group_items++;
    return it;
}

static void ps_name(char out[24], uint32_t id)
{
    snprintf(out, 24, "bh_ps_%u", id);
}

int bh__pg_push_sync(bh_pg_conn_t *c, uint32_t tag, bool internal)
{
    struct pg_item *it = item_add(c, IT_SYNC, tag);
    if (it == NULL)
        return push_failed(c, BH_ENOMEM);
    it->internal = internal;
    c->group_items = c->group_user = 0;
    /* PQpipelineSync also flushes what is queued: the server may start on it already. */
    return PQpipelineSync(c->pq) ? 0 : push_failed(c, BH_EPG_CONN_LOST);
}

/* DEALLOCATE in a transaction of its own, so that its failure (the statement is gone already)
 * makes the server skip nothing else. libpq 15 has no Close message call. */
static int push_dealloc(bh_pg_conn_t *c, uint32_t id)
{
    char sql[48];
    snprintf(sql, sizeof(sql), "DEALLOCATE bh_ps_%u", id);
    if (item_add(c, IT_DEALLOC, 0) == NULL)
        return push_failed(c, BH_ENOMEM);
    if (!PQsendQueryParams(c->pq, sql, 0, NULL, NULL, NULL, NULL, 0))
        return push_failed(c, BH_EPG_CONN_LOST);
    return bh__pg_push_sync(c, 0, true);
}

/* A cached statement's prepared id for sql: a hit, or a miss with its Parse queued (after the
 * evictions that make room, each in a transaction of its own in front, which is possible only
 * at the start of one: after a reset the cache is empty anyway). 0: run it unprepared. */
static int cache_use(bh_pg_conn_t *c, uint32_t tag, const char *sql, int nparams, uint32_t *id)
{
    size_t len = strlen(sql);
    if (len > BH__PG_CACHE_MAX_TEXT)
        return 0;
    *id = bh__pg_cache_find(&c->cache, sql, len, nparams);
    if (*id != 0)
        return BH_PG_CACHE_HIT;
    while (bh__pg_cache_full(&c->cache, c->pool->statement_cache, len)) {
        if (c->group_items != 0)
            return 0;
        int rc = push_dealloc(c, bh__pg_cache_evict(&c->cache));
        if (rc < 0)
            return rc;
    }
    *id = bh__pg_cache_add(&c->cache, sql, len, nparams);
    if (*id == 0)
        return 0; /* no memory for the copy: unprepared */
    struct pg_item *it = item_add(c, IT_PREPARE, tag);
    if (it == NULL)
        return push_failed(c, BH_ENOMEM);
    it->ps_id = *id;
    char name[24];
    ps_name(name, *id);
    if (!PQsendPrepare(c->pq, name, sql, nparams, NULL))
        return push_failed(c, BH_EPG_CONN_LOST);
    return BH_PG_CACHE_MISS;
}

static bool pushable(const bh_pg_conn_t *c)
{
    assert(c->pc.state == BH_PCONN_BUSY);
    return !c->broken && c->pq != NULL && PQstatus(c->pq) == CONNECTION_OK;
}

/* Queues the statement itself (after its Parse when cached: id != 0). */
static int push_stmt(bh_pg_conn_t *c, uint32_t tag, const char *sql, int nparams,
                     const char *const *values, unsigned flags, uint32_t id)
{
    struct pg_item *it = item_add(c, IT_STMT, tag);
    if (it == NULL)
        return push_failed(c, BH_ENOMEM);
    it->flags = flags;
    it->ps_id = id;
    it->sql = sql;
    it->nparams = nparams;
    it->values = values;
    c->group_user++;
    int ok;
    if (id != 0) {
        char name[24];
        ps_name(name, id);
        ok = PQsendQueryPrepared(c->pq, name, nparams, values, NULL, NULL, 0);
    } else {
        ok = PQsendQueryParams(c->pq, sql, nparams, NULL, values, NULL, NULL, 0);
    }
    return ok ? 0 : push_failed(c, BH_EPG_CONN_LOST);
}

int bh_pg_push(bh_pg_conn_t *c, uint32_t tag, const char *sql, int nparams,
               const char *const *values, unsigned flags)
{
    assert(c->op == OP_NONE);
    if (!pushable(c))
        return push_failed(c, BH_EPG_CONN_LOST);
    uint32_t id = 0;
    int cached = 0;
    /* Only first in its transaction (or right after the reset): a stale plan can then be
     * retried without undoing anything else, and never inside a user's explicit transaction. */
    if ((flags & BH_PG_CACHE) && c->group_user == 0 && c->pool->statement_cache > 0)
        cached = cache_use(c, tag, sql, nparams, &id);
    if (cached < 0)
        return cached;
    if (flags & (BH_PG_LEAVES_STATE | BH_PG_RESET_NOW))
        c->touched = true;
    if (flags & BH_PG_RESET_NOW)
        c->reset_now = true;
    int rc = push_stmt(c, tag, sql, nparams, values, flags, id);
    return rc < 0 ? rc : cached;
}

int bh_pg_push_sync(bh_pg_conn_t *c, uint32_t tag)
{
    assert(c->op == OP_NONE);
    if (!pushable(c))
        return push_failed(c, BH_EPG_CONN_LOST);
    return bh__pg_push_sync(c, tag, false);
}

bool bh_pg_needs_reset(const bh_pg_conn_t *c)
{
    return c->needs_reset;
}

int bh__pg_push_reset_items(bh_pg_conn_t *c)
{
    for (size_t i = 0; i < sizeof(RESET_STMTS) / sizeof(RESET_STMTS[0]); i++) {
        if (item_add(c, IT_RESET, 0) == NULL)
            return push_failed(c, BH_ENOMEM);
        if (!PQsendQueryParams(c->pq, RESET_STMTS[i], 0, NULL, NULL, NULL, NULL, 0))
            return push_failed(c, BH_EPG_CONN_LOST);
    }
    /* DEALLOCATE ALL runs before anything queued after it: the cache starts empty. Should the
     * reset fail, statements the server still holds are only leaked until the next reset (ids
     * are never reused). */
    bh__pg_cache_clear(&c->cache);
    return 0;
}

/* Whether a reset is queued in the pipeline being built. */
static bool reset_queued(const bh_pg_conn_t *c)
{
    for (size_t i = 0; i < c->n_items; i++)
        if (c->items[i].kind == IT_RESET)
            return true;
    return false;
}

static const char *app_name_wanted(const bh_pg_conn_t *c, const char *name)
{
    const bh__pg_params_t *pp = &c->pool->params;
    return name != NULL ? name : pp->vals[pp->app_at];
}

bool bh_pg_app_name_differs(const bh_pg_conn_t *c, const char *name)
{
    const bh__pg_params_t *pp = &c->pool->params;
    /* What the server reports now; RESET ALL in front brings back the startup one. */
    const char *now = reset_queued(c) || c->needs_reset
                          ? pp->vals[pp->app_at]
                          : PQparameterStatus(c->pq, "application_name");
    return now == NULL || strcmp(now, app_name_wanted(c, name)) != 0;
}

int bh_pg_push_app_name(bh_pg_conn_t *c, const char *name)
{
    assert(c->op == OP_NONE);
    if (!bh_pg_app_name_differs(c, name))
        return 0;
    const char *want = app_name_wanted(c, name);
    if (!pushable(c))
        return push_failed(c, BH_EPG_CONN_LOST);
    if (item_add(c, IT_SESSION, 0) == NULL)
        return push_failed(c, BH_ENOMEM);
    const char *values[1] = {want};
    if (!PQsendQueryParams(c->pq, "SELECT pg_catalog.set_config('application_name', $1, false)", 1,
                           NULL, values, NULL, NULL, 0))
        return push_failed(c, BH_EPG_CONN_LOST);
    return 1;
}

int bh_pg_push_reset(bh_pg_conn_t *c)
{
    assert(c->op == OP_NONE);
    if (!c->needs_reset)
        return 0;
    if (!pushable(c))
        return push_failed(c, BH_EPG_CONN_LOST);
    int rc = bh__pg_push_reset_items(c);
    return rc < 0 ? rc : 1;
}

int bh_pg_send(bh_pg_conn_t *c, const bh_pg_pipe_cbs_t *cbs, void *data)
{
    assert(c->pc.state == BH_PCONN_BUSY && c->op == OP_NONE);
    assert(cbs->result != NULL && cbs->done != NULL);
    assert(c->n_items > 0 && c->items[c->n_items - 1].kind == IT_SYNC);
    if (!pushable(c))
        return push_failed(c, BH_EPG_CONN_LOST);
    c->cbs = *cbs;
    c->data = data;
    c->op = OP_PIPE;
    c->reset_failed = false;
    c->head = 0;
    c->head_started = false;
    if (bh__pg_flush_out(c) < 0) {
        c->op = OP_NONE;
        c->n_items = 0;
        c->broken = true;
        bh__pg_poll_stop(c);
        return BH_EPG_CONN_LOST;
    }
    return 0;
}

/* ---- pipelines: reading ------------------------------------------------------------------- */

/* A cached statement failed in a way it would not have unprepared, and it did not execute: its
 * prepared form no longer fits the table (0A000 "cached plan must not change result type"), is
 * gone (26000), or Bind names it in its error (08P01 "bind message supplies 1 parameters, but
 * prepared statement "bh_ps_3" requires 2": the client must see Postgres' text for the unnamed
 * statement, as without the cache). *exists: the server still holds the statement. */
static bool stale_error(const PGresult *res, bool *exists)
{
    const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    if (code == NULL || msg == NULL)
        return false;
    *exists = strcmp(code, "26000") != 0;
    if (strcmp(code, "0A000") == 0)
        return strstr(msg, "cached plan must not change") != NULL;
    if (strcmp(code, "08P01") == 0)
        return strstr(msg, "prepared statement \"bh_ps_") != NULL;
    return strcmp(code, "26000") == 0;
}

/* A cached statement alone before the last sync, nothing of it delivered yet, can run once
 * more unprepared without the owner noticing. */
static bool stale_retry(bh_pg_conn_t *c, struct pg_item *it, const PGresult *res)
{
    bool exists = false;
    if (it->ps_id == 0 || !stale_error(res, &exists))
        return false;
    bh__pg_cache_drop(&c->cache, it->ps_id);
    if (it->delivered || c->head + 2 != c->n_items)
        return false;
    it->stale = true;
    it->stale_exists = exists;
    c->rerun = c->head;
    return true;
}

/* At the sync after a stale statement: deallocate what is left of it, then queue the statement
 * unprepared and the owner's sync again. */
static int rerun_stale(bh_pg_conn_t *c, uint32_t sync_tag)
{
    struct pg_item st = c->items[c->rerun];
    c->rerun = NO_RERUN;
    c->head = c->n_items = 0; /* everything before was consumed */
    int rc = 0;
    if (st.stale_exists)
        rc = push_dealloc(c, st.ps_id);
    if (rc == 0 && c->needs_reset) /* a reset in front of it was undone with it */
        rc = bh__pg_push_reset_items(c);
    if (rc == 0)
        rc = push_stmt(c, st.tag, st.sql, st.nparams, st.values, st.flags & ~BH_PG_CACHE, 0);
    if (rc == 0)
        rc = bh__pg_push_sync(c, sync_tag, false);
    if (rc == 0 && bh__pg_flush_out(c) < 0)
        rc = BH_EPG_CONN_LOST;
    return rc;
}

/* The reset's bookkeeping at a sync. It is done once its transaction committed: at its own
 * sync when that left the session idle, or later by a COMMIT (a batch's BEGIN came first). A
 * failed reset fails the pipeline: the server skipped the owner's statements after it. */
static int sync_reset(bh_pg_conn_t *c, bool last)
{
    bool idle = last && PQtransactionStatus(c->pq) == PQTRANS_IDLE;
    if (c->rd_reset) {
        if (c->rd_reset_err)
            return BH_EPG_CONN_LOST;
        if (!c->rd_err) {
            c->reset_open = !idle;
            if (idle)
                c->needs_reset = false;
        }
    } else if (c->reset_open) {
        if (!c->rd_err && c->rd_commit)
            c->needs_reset = false;
        if (c->rd_err || c->rd_commit || idle)
            c->reset_open = false;
    }
    c->rd_reset = c->rd_reset_err = c->rd_err = c->rd_commit = false;
    return 0;
}

/* A sync's result. false: the pipeline ended (or the connection is lost). */
static bool on_sync(bh_pg_conn_t *c, PGresult *res)
{
    bool ok = res != NULL && PQresultStatus(res) == PGRES_PIPELINE_SYNC;
    PQclear(res);
    if (!ok) {
        bh__pg_conn_lost(c);
        return false;
    }
    struct pg_item it = c->items[c->head++];
    c->head_started = false;
    if (sync_reset(c, c->head == c->n_items) < 0) {
        snprintf(c->err, sizeof(c->err), "the session reset before the statement failed");
        c->reset_failed = true;
        bh__pg_pipe_finish(c, BH_EPG_CONN_LOST);
        return false;
    }
    if (c->rerun != NO_RERUN) {
        if (rerun_stale(c, it.tag) < 0) {
            bh__pg_conn_lost(c);
            return false;
        }
        return true;
    }
    if (!it.internal && c->cbs.step != NULL)
        c->cbs.step(c, it.tag, 0, c->data); /* may release c: the loop re-reads c->op */
    return true;
}

/* A statement's results ended (PQgetResult gave NULL). */
static void item_end(bh_pg_conn_t *c)
{
    struct pg_item *it = &c->items[c->head++];
    c->head_started = false;
    if (it->kind != IT_STMT || it->stale || c->cbs.step == NULL)
        return;
    c->cbs.step(c, it->tag, it->aborted && !it->errored ? BH_PG_SKIPPED : 0, c->data);
}

/* COPY is not part of the protocol: ended at once, and the session is never reused. false:
 * wait for input or lost. */
static bool refuse_copy(bh_pg_conn_t *c, ExecStatusType st)
{
    c->dirty = true;
    int r = 1;
    /* libpq 15 ends an extended-protocol COPY FROM STDIN with a Sync of its own, which the
     * server answers out of the pipeline's order: only harmless when the statement is the last
     * before the final sync. Otherwise the session is given up on at once. */
    bool last = c->head + 2 == c->n_items;
    if (st == PGRES_COPY_IN && !last)
        r = BH_EPG_CONN_LOST;
    else if (st == PGRES_COPY_IN)
        r = PQputCopyEnd(c->pq, "COPY FROM STDIN is not supported here") < 0 ||
                    bh__pg_flush_out(c) < 0
                ? BH_EPG_CONN_LOST
                : 1;
    else if (st == PGRES_COPY_OUT)
        r = drain_copy_out(c);
    else
        r = BH_EPG_CONN_LOST;
    if (r < 0)
        bh__pg_conn_lost(c);
    return r > 0;
}

/* One result of an item at the head. false: stop reading for now. */
static bool item_result(bh_pg_conn_t *c, struct pg_item *it, PGresult *res)
{
    ExecStatusType st = PQresultStatus(res);
    bool failed = st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_SINGLE_TUPLE &&
                  st != PGRES_EMPTY_QUERY && st != PGRES_NONFATAL_ERROR;
    if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
        PQclear(res);
        return refuse_copy(c, st);
    }
    if (it->kind != IT_DEALLOC)
        c->rd_err |= failed; /* a DEALLOCATE has its own transaction */
    switch (it->kind) {
    case IT_RESET:
    case IT_SESSION:
        c->rd_reset = true;
        c->rd_reset_err |= failed;
        break;
    case IT_PREPARE:
        if (failed) {
            bh__pg_cache_drop(&c->cache, it->ps_id);
            if (st == PGRES_FATAL_ERROR && c->head + 1 < c->n_items) {
                c->items[c->head + 1].errored = true; /* the Parse error is the statement's */
                c->items[c->head + 1].delivered = true;
                c->cbs.result(c, it->tag, res, c->data);
                return true;
            }
        }
        break;
    case IT_STMT:
        if (st == PGRES_PIPELINE_ABORTED) {
            it->aborted = true;
            break;
        }
        if (st == PGRES_FATAL_ERROR && stale_retry(c, it, res))
            break;
        if (c->reset_open && st == PGRES_COMMAND_OK && strcmp(PQcmdStatus(res), "COMMIT") == 0)
            c->rd_commit = true;
        it->errored |= st == PGRES_FATAL_ERROR;
        it->delivered = true;
        c->cbs.result(c, it->tag, res, c->data); /* may release c: the loop re-reads c->op */
        return true;
    default:
        break;
    }
    PQclear(res);
    return true;
}

void bh__pg_pipe_deliver(bh_pg_conn_t *c)
{
    while (c->op == OP_PIPE) {
        if (c->head == c->n_items) {
            bh__pg_pipe_finish(c, 0);
            return;
        }
        struct pg_item *it = &c->items[c->head];
        if (!c->head_started) {
            /* Before anything of this statement is parsed (PQisBusy parses): libpq then hands
             * its rows over one by one. */
            c->head_started = true;
            if (it->kind == IT_STMT && (it->flags & BH_PG_SINGLE_ROW))
                (void)PQsetSingleRowMode(c->pq);
        }
        if (PQisBusy(c->pq))
            return;
        PGresult *res = PQgetResult(c->pq);
        if (it->kind == IT_SYNC) {
            if (!on_sync(c, res))
                return;
        } else if (res == NULL) {
            item_end(c);
        } else if (!item_result(c, it, res)) {
            return;
        }
    }
}
