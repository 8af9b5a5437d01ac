/* The exchange: one request on a client connection and the response to it, served by the handler
 * its route chooses (an upstream: bh_forward.c; a database: sql/bh_sql.c).
 *
 * The client connection calls the bh_exchange_* functions as the request arrives; they route the
 * request, then pass each event on to the handler through bh_handler_t. A handler answers through
 * bh_exchange_reply (bulkhead's own reply) or writes the upstream's response to conn->out itself,
 * then ends the exchange with bh_exchange_finish. The exchange counts and logs every request once,
 * whatever ends it. Handlers never call each other, and nothing here names the client module. */
#ifndef BH_EXCHANGE_H
#define BH_EXCHANGE_H

#include <stdbool.h>
#include <stdint.h>
#include "bh_conf.h"
#include "bh_conn.h"
#include "bh_http.h"
#include "bh_metrics.h"

typedef struct bh_exchange bh_exchange_t;
typedef struct bh_gen bh_gen_t;

/* What the head says that every handler needs; spans point into the client's read buffer and
 * are valid during start() only. */
typedef struct bh_request {
    bh_span_t method;   /* llhttp's name of the method */
    bh_span_t path;     /* origin-form "/path?query" (for "*": "/") */
    bh_target_t target; /* the target as received, split */
    bh_span_t host;     /* the Host field; p == NULL without one (HTTP/1.0) */
    const char *head;   /* the whole head, as received */
    size_t head_len;
    const bh_hdr_t *hdrs; /* the head's fields (the worker's scratch array) */
    int nhdrs;
    uint32_t method_bit;        /* BH_M_* */
    uint64_t client_timeout_ms; /* Bulkhead-Timeout; 0: none */
    bool expect_continue, idempotency_key;
    bool upgrade; /* a protocol switch bulkhead lets through */
} bh_request_t;

/* A backend kind. Every function but start may be NULL when the handler has nothing to do. */
typedef struct bh_handler {
    const char *name;
    /* The head is complete and routed (ex->route). The handler takes the request on; it calls
     * conn->ops->resume once it can take body bytes (until then the parser stays paused). */
    void (*start)(bh_exchange_t *ex, const bh_request_t *req);
    /* A piece of the request body, in conn->rbuf. Returns 0, or < 0 to fail the request. */
    int (*body)(bh_exchange_t *ex, const char *at, size_t len);
    /* The whole request was received. Returns 0, or < 0 to close the connection. */
    int (*request_done)(bh_exchange_t *ex);
    /* The parser stopped for now: push what the body callbacks queued. */
    void (*flush)(bh_exchange_t *ex);
    /* The client's write queue went below its high-water mark. */
    void (*client_drained)(bh_exchange_t *ex);
    /* True while the handler cannot take more body bytes (its upstream write queue is full). */
    bool (*blocked)(const bh_exchange_t *ex);
    /* The earliest time timeout() must run (the loop clock, ms), or BH_TIME_NEVER. */
    uint64_t (*next_timeout)(const bh_exchange_t *ex);
    void (*timeout)(bh_exchange_t *ex, uint64_t now_ms);
    /* Raw client bytes after a 101 (conn->rbuf from conn->rpos): consume them. */
    void (*tunnel_data)(bh_exchange_t *ex);
    /* The exchange ends, normally or not: give back everything (pooled connections are reused
     * only when reusable is true). Called once, before the exchange is counted. */
    void (*release)(bh_exchange_t *ex, bool reusable);
    /* A client that half-closes after its request gives it up (the SQL gateway: nobody reads
     * a half-close reply, and the query is cancelled); otherwise it is answered, then closed. */
    bool abort_on_half_close;
} bh_handler_t;

/* Room for a handler's per-request state inside the exchange (a handler whose state is larger
 * allocates it). It stays valid until the next exchange on the connection starts, so code that
 * made an upcall can still look at it to find out whether the exchange went on. */
#define BH_EXCHANGE_STATE_BYTES 512

/* The longest request id taken from a client (a longer one is replaced). */
#define BH_REQUEST_ID_MAX 64

struct bh_exchange {
    bh_conn_t *conn;
    const bh_handler_t *handler; /* NULL until routed, and for bulkhead's own replies */
    void *state;                 /* the handler's (in state_area or its own) */
    bh_gen_t *gen;               /* referenced while active */
    const bh_conf_route_t *route;
    bh_route_cells_t *route_cells; /* this worker's metrics of the route (or of "no route") */
    bh_backend_cells_t *up_cells;  /* ... of the upstream or database; NULL before routing */
    const char *backend;           /* the upstream or database name, for the log */
    const char *endpoint;          /* the endpoint of the last attempt, for the log */
    char *app_name;                /* the SQL client's application_name, for the log (owned) */
    uint64_t start_ms, deadline_ms;
    uint64_t start_ns;                   /* for the duration histogram (the loop clock is in ms) */
    uint64_t attached_ms, first_byte_ms; /* for the access log: queue_ms, first_byte_ms */
    uint64_t req_body_bytes;
    uint64_t body_limit;   /* 413 beyond: limits.max_body_bytes (none for /sql) */
    uint64_t out_at_start; /* conn->out.total when the request began */
    char *log_target;      /* method and target for the access log (only when on) */
    char request_id[BH_REQUEST_ID_MAX + 1]; /* request_id.header's value; "" when off */
    unsigned attempts;
    int last_err; /* bulkhead's reply: why */
    const char *reply_detail; /* for bh_exchange_reply's Proxy-Status details (NULL: the
                                 cause's message); the handler's, valid during the call */
    int status;
    bool active;       /* between head received and exchange end */
    bool req_done;     /* the whole request was received */
    bool resp_started; /* response bytes went to the client */
    bool resp_done;
    bool local; /* bulkhead answered itself; the request body is discarded */
    _Alignas(16) unsigned char state_area[BH_EXCHANGE_STATE_BYTES];
};

/* ---- called by the client connection ---- */

/* The head of a request is complete (head: its bytes; target: llhttp's span of the target). */
void bh_exchange_start(bh_exchange_t *ex, bh_conn_t *conn, const char *head, size_t head_len,
                       bh_span_t target);
int bh_exchange_body(bh_exchange_t *ex, const char *at, size_t len);
int bh_exchange_request_done(bh_exchange_t *ex);
void bh_exchange_flush(bh_exchange_t *ex);
void bh_exchange_client_drained(bh_exchange_t *ex);
uint64_t bh_exchange_next_timeout(const bh_exchange_t *ex);
void bh_exchange_timeout(bh_exchange_t *ex, uint64_t now_ms);
void bh_exchange_tunnel_data(bh_exchange_t *ex);
/* True while the handler cannot take more body bytes: the client stops reading. */
bool bh_exchange_blocked(const bh_exchange_t *ex);
bool bh_exchange_abort_on_half_close(const bh_exchange_t *ex);
/* The exchange ends early: the client went away (err 0: counted as 499), or (err < 0, no
 * response byte sent yet) the caller answers with err's status itself. */
void bh_exchange_abort(bh_exchange_t *ex, int err);
/* Counts a reply bulkhead made outside any exchange (a request rejected while its head was
 * read, a connection refused at accept) under route="" in the metrics. */
void bh_exchange_count_unrouted(bh_conn_t *conn, int err, uint64_t since_ms);

/* ---- called by handlers ---- */

/* bulkhead answers the request itself with err's status and Proxy-Status (Retry-After:
 * retry_after_s on a 503). The rest of the request body is read and dropped, unless close is
 * set or the error leaves the request stream in an unknown state; then the connection closes. */
void bh_exchange_reply(bh_exchange_t *ex, int err, bool close, uint64_t retry_after_s);
/* The response is complete (queued on conn->out): the exchange ends now if the request was read,
 * else once its body has been (and dropped). reusable: what release() is told. */
void bh_exchange_finish(bh_exchange_t *ex, bool reusable);
#endif
