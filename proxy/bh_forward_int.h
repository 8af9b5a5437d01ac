/* The upstream handler's private parts, shared by its three files:
 *   bh_forward.c       the request side: start, head rewrite, attempts (breaker, pick, pool), body,
 *                      timeouts, the handler table;
 *   bh_fwd_response.c  the response side: parsing, re-framing to the client, backpressure, tunnel;
 *   bh_fwd_attempt.c   what every attempt ends with: classify the outcome, record it, retry or
 *                      answer, and the body framing both sides write.
 * Calls go one way: bh_forward.c -> bh_fwd_response.c -> bh_fwd_attempt.c. */
#ifndef BH_FORWARD_INT_H
#define BH_FORWARD_INT_H

#include "bh_call.h"
#include "bh_exchange.h"
#include "bh_proxy.h"

enum { RP_PAUSE_NONE, RP_PAUSE_HEAD, RP_PAUSE_MESSAGE };

/* handle_response_head(): the response was held back and another attempt is scheduled. */
#define BH_RETRY_SCHEDULED 1

enum fwd_framing {
    FRAME_NONE,    /* no body */
    FRAME_LENGTH,  /* Content-Length: bytes pass through */
    FRAME_CHUNKED, /* re-framed: each piece becomes a chunk */
    FRAME_CLOSE,   /* body ends when the connection closes */
};

enum fwd_phase {
    PH_NONE,
    PH_WAITING,    /* for a pooled connection */
    PH_SENDING,    /* request head/body going out */
    PH_FIRST_BYTE, /* request sent, waiting for the response head */
    PH_RECEIVING,  /* response streaming to the client */
    PH_TUNNEL,     /* after a 101 */
    PH_BACKOFF,    /* between a failed attempt and the retry */
};

/* Request body bytes kept so that a retry can send them again (retry.max_replay_bytes). */
#define REPLAY_SLICES 32
typedef struct replay {
    bh_buf_t *buf;
    const char *p;
    size_t n;
} replay_t;

typedef struct bh_fwd {
    bh_exchange_t *ex;
    bh_upstream_t *up;
    bh_pool_waiter_t waiter;
    bool waiting; /* waiter is queued in a pool */
    bh_upconn_t *uc;
    bh_buf_t *head; /* forwarded request head until queued upstream */
    uint32_t head_len;
    llhttp_t rp;                /* response parser */
    uint64_t up_activity_ms;    /* the upstream's last sign of life */
    uint64_t wait_start_ms;     /* the current attempt asked the pool */
    uint64_t retry_at_ms;       /* PH_BACKOFF: when the next attempt starts */
    uint32_t resp_head_start;   /* offset in uc->rbuf */
    uint32_t method_bit;        /* BH_M_* */
    size_t ep;                  /* endpoint of the current attempt */
    size_t failed_ep;           /* endpoint of the last failed attempt, or BH_BALANCE_NONE */
    bh_call_t call;             /* the request's passage through breaker and budget */
    replay_t *replay;           /* allocated once the request has a body */
    uint32_t n_replay;
    uint64_t replay_bytes;
    enum fwd_framing req_framing, resp_framing;
    enum fwd_phase phase;
    bool picked; /* ep counts this attempt in flight (bh_upstream_unpick) */
    bool is_head, expect_continue, upgrade;
    bool replayable;      /* every body byte so far is in replay[] */
    bool idempotency_key; /* the request carries Idempotency-Key */
    bool continue_sent;   /* 100 Continue went to the client */
    bool add_host;        /* an HTTP/1.0 request without Host: name the endpoint */
    bool held;            /* upstream reads stopped: the client is slow to take them */
} bh_fwd_t;

_Static_assert(sizeof(bh_fwd_t) <= BH_EXCHANGE_STATE_BYTES, "bh_fwd_t fits in the exchange");

static inline bh_fwd_t *fwd_of(const bh_exchange_t *ex)
{
    return ex->state;
}

static inline bh_fwd_t *rp_fwd(llhttp_t *p)
{
    return bh_container_of(p, bh_fwd_t, rp);
}

static inline bh_conn_t *conn_of(const bh_fwd_t *f)
{
    return f->ex->conn;
}

/* The upstream's breaker, budget and breaker.count, as the pipeline (bh_call.h) asks them. */
static inline bh_guard_t guard_of(const bh_fwd_t *f)
{
    return (bh_guard_t){&f->up->shared->breaker, &f->up->shared->budget,
                        f->up->conf->breaker.count};
}

static inline uint64_t now_of(const bh_fwd_t *f)
{
    return uv_now(&conn_of(f)->w->loop);
}

static inline void rearm(bh_fwd_t *f)
{
    conn_of(f)->ops->rearm_timer(conn_of(f));
}

static inline void cut(bh_fwd_t *f)
{
    conn_of(f)->ops->close(conn_of(f));
}

/* bh_fwd_attempt.c */
void bh__fwd_drop_attempt(bh_fwd_t *f, bool reusable);
void bh__fwd_drop_replay(bh_fwd_t *f);
void bh__fwd_record_attempt(bh_fwd_t *f, const bh_attempt_t *a, uint64_t now);
void bh__fwd_record_request(bh_fwd_t *f, const bh_attempt_t *a, uint64_t now);
/* Schedules another attempt (PH_BACKOFF) when policy, budget and deadline allow it. */
bool bh__fwd_schedule_retry(bh_fwd_t *f, const bh_attempt_t *a, uint64_t retry_after_ms);
/* The current attempt failed with err: retried, answered with bulkhead's reply, or (a response
 * had started) the client connection is cut. The exchange may be over when it returns. */
void bh__fwd_attempt_failed(bh_fwd_t *f, int err);
/* The framing of a final response's body towards the client (rp: the upstream's parser after
 * the head; http11: the client's version). Pure: the fuzzer calls it too. */
enum fwd_framing bh__fwd_response_framing(const llhttp_t *rp, bool is_head, bool http11);
int bh__fwd_emit_body(bh_outq_t *q, enum fwd_framing fr, bh_buf_t *b, const char *at, size_t len);
int bh__fwd_emit_end(bh_outq_t *q, enum fwd_framing fr);

/* bh_fwd_response.c */
/* The connection is attached and the request sent: read the response. Returns < 0 on failure. */
int bh__fwd_response_begin(bh_fwd_t *f, bh_upconn_t *uc);
void bh__fwd_tunnel_data(bh_exchange_t *ex);
void bh__fwd_client_drained(bh_exchange_t *ex);

#endif
