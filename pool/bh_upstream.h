/* Upstream HTTP connections: one bounded keep-alive pool per endpoint of an upstream, on one
 * worker's loop. The upstream's semaphore (max_connections) is shared by its endpoints and by the
 * same upstream on every worker, so the cap is global and exact.
 *
 * An upstream connection (bh_upconn_t) is CONNECTING, IDLE, BUSY or CLOSING as its pool says.
 * While BUSY it belongs to one user (the forwarding code), which reads and writes it directly and
 * gives it back with bh_upconn_release(). While IDLE the pool keeps reading it to notice a peer
 * that closed it, and checks it again (MSG_PEEK) before handing it out. */
#ifndef BH_UPSTREAM_H
#define BH_UPSTREAM_H

#include <uv.h>
#include "bh_buf.h"
#include "bh_conf.h"
#include "bh_outq.h"
#include "bh_balance.h"
#include "bh_breaker.h"
#include "bh_budget.h"
#include "bh_outlier.h"
#include "bh_pool.h"
#include "bh_rng.h"
#include "bh_tls.h"

typedef struct bh_upstream bh_upstream_t;

/* What the workers share about one configured upstream: the connection cap, the breaker, the
 * retry budget and the per-endpoint outlier/health state. Lock-free (atomics). */
typedef struct bh_upstream_shared {
    bh_sem_t *sem;                /* one lane per worker */
    bh_breaker_t breaker;
    bh_budget_t budget;
    bh_outlier_t *outlier;
    SSL_CTX *tls;                 /* the upstream's TLS context (NULL: plain HTTP) */
} bh_upstream_shared_t;

/* n_workers: the threads whose pools share it (lanes of the semaphore, one per worker id).
 * now_ms: the monotonic clock in ms (uv_hrtime based, like the loops' clocks). */
BH_MUST_CHECK int bh_upstream_shared_init(bh_upstream_shared_t *s, const bh_conf_upstream_t *conf,
                                          uint32_t n_workers, uint64_t now_ms);
void bh_upstream_shared_destroy(bh_upstream_shared_t *s);

/* Where an endpoint's address stands. Names are resolved on libuv's threadpool (uv_getaddrinfo),
 * never on the loop: first by bh_upstream_init(), then every dns_refresh. */
typedef enum bh_ep_dns {
    BH_EP_DNS_STATIC,   /* a numeric address from the config: never resolved */
    BH_EP_DNS_PENDING,  /* a name not answered yet: no address; its connections wait for it */
    BH_EP_DNS_RESOLVED, /* a name whose last answer is sa */
    BH_EP_DNS_FAILED,   /* a name whose last lookup failed: drained. sa keeps the previous
                           address, if any (salen > 0), for connections still there */
} bh_ep_dns_t;

typedef struct bh_endpoint {
    bh_upstream_t *up;
    const bh_conf_addr_t *addr;
    struct sockaddr_storage sa;
    socklen_t salen;              /* 0: no address yet, or the name never resolved */
    bh_pool_t pool;
    uv_timer_t timer;             /* runs bh_pool_expire */
    uv_getaddrinfo_t dns;         /* the lookup of a name, first and every dns_refresh */
    bool resolving;               /* dns is in flight */
    bh_ep_dns_t dns_state;
    uint32_t generation;          /* bumped when the name resolves to a new address */
    SSL_SESSION *tls_session;     /* the last session the endpoint gave: new connections resume it */
    char tls_error[160];          /* why the last TLS handshake with it failed (Proxy-Status) */
} bh_endpoint_t;

/* What a worker shares with its upstreams. */
typedef struct bh_upstream_env {
    uv_loop_t *loop;
    bh_bufpool_t *bufs;
    bh_wreq_cache_t *wreqs;
    bh_rng_t *rng;                /* the worker's */
    bh_sem_inbox_t *inbox;        /* the worker's: its lane in each semaphore, its wakeup */
    bh_tls_env_t *tls;            /* the worker's, for TLS upstreams */
} bh_upstream_env_t;

struct bh_upstream {
    const bh_conf_upstream_t *conf;
    const bh_upstream_env_t *env;
    bh_upstream_shared_t *shared;
    bh_endpoint_t *eps;
    size_t n_eps;
    bh_balance_t balance;         /* this worker's cursor */
    uint32_t *in_flight;          /* per endpoint: this worker's attempts (bh_upstream_pick) */
    bool *eligible;               /* per endpoint: scratch for picking */
    unsigned pending_closes;      /* what must end before the close completes: endpoint timers,
                                   * the DNS timer, DNS lookups in flight */
    uv_timer_t dns_timer;
    bool has_names;
    bool closing;
    void (*closed_cb)(bh_upstream_t *up);
    void *data;
};

typedef struct bh_upconn bh_upconn_t;

/* The user's read callback while BUSY: nread > 0 bytes arrived at uc->rbuf->data + uc->rlen
 * - nread (already counted in rlen); nread < 0 is an error or UV_EOF. */
typedef void (*bh_upconn_read_cb)(bh_upconn_t *uc, ssize_t nread);

struct bh_upconn {
    bh_pool_conn_t pc;
    uv_tcp_t tcp;
    uv_timer_t timer;             /* connect timeout, then the user's phase timeouts */
    uv_connect_t connect_req;
    bh_endpoint_t *ep;
    bh_outq_t out;
    bh_tls_t *tls;                /* NULL for plain HTTP */
    unsigned open_handles;
    uint64_t lifetime_end_ms;     /* from max_lifetime; BH_TIME_NEVER when unlimited */
    uint64_t keepalive_ms;        /* the upstream's own idle timeout (Keep-Alive: timeout=N); 0 */
    uint32_t generation;          /* the endpoint's address generation it was opened to */
    bool awaiting_dns;            /* CONNECTING, waiting for the endpoint's first address */
    /* while BUSY */
    void *owner;
    bh_upconn_read_cb read_cb;
    bh_buf_t *rbuf;
    uint32_t rlen;                /* bytes in rbuf */
    uint32_t rpos;                /* parsed up to (maintained by the user) */
    char idle_scratch[8];         /* read target while IDLE: any byte means the conn is unusable */
};

/* Sets up the per-worker state of one configured upstream and starts looking up endpoint names
 * (without waiting: a connection to an endpoint whose name is not answered yet waits for the
 * answer, within timeouts.connect). gauges (may be NULL): per endpoint, where its pool reports
 * connection counts. On failure (BH_ENOMEM) as on success, up must be closed with
 * bh_upstream_close() and the loop run until its callback. */
BH_MUST_CHECK int bh_upstream_init(bh_upstream_t *up, const bh_conf_upstream_t *conf,
                                   const bh_upstream_env_t *env, bh_upstream_shared_t *shared,
                                   bh_pool_gauges_t *const *gauges);

/* Picks an endpoint for a new attempt: among those not ejected and healthy (all of them when
 * none is: panic), the ones with a usable address (numeric, or a name that resolves) if any,
 * else the ones whose name has not answered yet (the attempt waits for it), else all of them;
 * by the configured balance policy, avoiding prefer_not (the endpoint whose
 * attempt just failed; BH_BALANCE_NONE for none) when another one is eligible. The attempt counts
 * as in flight on the endpoint (for least_request) from here, while it waits for a connection or
 * connects too, until bh_upstream_unpick(). */
size_t bh_upstream_pick(bh_upstream_t *up, size_t prefer_not);
void bh_upstream_unpick(bh_upstream_t *up, size_t ep);

/* A reload replaced this upstream's configuration: its pools keep serving the requests that
 * started before (and their waiters) but keep no idle connection (bh_pool_retire). */
void bh_upstream_retire(bh_upstream_t *up);

/* TLS upstreams: a client connection for ep into *out (bh_malloc'd, also on failure: free it
 * after bh_tls_close), with the upstream's SNI and verified name, resuming ep's last session.
 * Returns 0 or an error (BH_ENOMEM, BH_ETLS_PROTOCOL). */
BH_MUST_CHECK int bh_endpoint_tls(bh_endpoint_t *ep, const bh_tls_owner_t *o, bh_tls_t **out);

/* Gets a connection to endpoint ep (see bh_pool_acquire). On 0, *out is BUSY. */
BH_MUST_CHECK int bh_upstream_acquire(bh_upstream_t *up, size_t ep, bh_pool_waiter_t *w,
                                      uint64_t deadline_ms, bh_upconn_t **out);

static inline size_t bh_upstream_ep_index(const bh_upstream_t *up, const bh_endpoint_t *ep)
{
    return (size_t)(ep - up->eps);
}

/* The waiter callback's conn -> the upstream connection. */
static inline bh_upconn_t *bh_upconn_of(bh_pool_conn_t *pc)
{
    return pc != NULL ? bh_container_of(pc, bh_upconn_t, pc) : NULL;
}

/* Starts delivering reads of a BUSY connection to cb (into uc->rbuf, taken from the worker's
 * buffer pool as needed). */
BH_MUST_CHECK int bh_upconn_read_start(bh_upconn_t *uc, bh_upconn_read_cb cb, void *owner);
void bh_upconn_read_stop(bh_upconn_t *uc);

/* Gives a BUSY connection back. reusable: a complete response on a connection both sides keep
 * alive, and nothing unread. Any unread buffer is dropped. */
void bh_upconn_release(bh_upconn_t *uc, bool reusable);

/* Begins closing every pool; cb runs once every connection and timer is closed and every name
 * lookup has returned (one already running on the threadpool cannot be cancelled). Connections
 * still BUSY are closed when released. */
void bh_upstream_close(bh_upstream_t *up, void (*cb)(bh_upstream_t *up));

#endif
