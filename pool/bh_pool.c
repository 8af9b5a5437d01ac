/* The generic bounded pool: which connection serves which waiter, when to open, when to close.
 *
 * A connection is on exactly one list, the one of its state, and only set_state() moves it:
 *   NONE -> CONNECTING -> IDLE <-> BUSY, and CONNECTING | IDLE | BUSY -> CLOSING -> NONE (gone).
 * It takes its permit just before ops->open and gives it back when it enters CLOSING, so
 * connecting + idle + busy always equals the permits this pool holds.
 * Waiters are queued FIFO and carry w->pool while queued. Whenever something changes, dispatch()
 * hands idle connections to waiters, then opens what waiters and min_idle still need. Every
 * callback, ops->close included, may re-enter the pool: a waiter is detached before its
 * callback runs, a connection is not touched after ops->close, and loops re-read the lists. */
#include "bh_pool.h"

#include <assert.h>

static uint64_t add_ms(uint64_t t, uint64_t d)
{
    return t > BH_TIME_NEVER - d ? BH_TIME_NEVER : t + d;
}

static uint64_t min_ms(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

static bh_list_t *state_list(bh_pool_t *p, enum bh_pool_conn_state s, uint32_t **count)
{
    switch (s) {
    case BH_PCONN_CONNECTING:
        *count = &p->n_connecting;
        return &p->connecting;
    case BH_PCONN_IDLE:
        *count = &p->n_idle;
        return &p->idle;
    case BH_PCONN_BUSY:
        *count = &p->n_busy;
        return &p->busy;
    case BH_PCONN_CLOSING:
        *count = &p->n_closing;
        return &p->closing;
    case BH_PCONN_NONE:
        break;
    }
    *count = NULL;
    return NULL;
}

#define BIT(s) (1u << (s))
static const unsigned legal_moves[] = {
    [BH_PCONN_NONE] = BIT(BH_PCONN_CONNECTING),
    [BH_PCONN_CONNECTING] = BIT(BH_PCONN_BUSY) | BIT(BH_PCONN_IDLE) | BIT(BH_PCONN_CLOSING),
    [BH_PCONN_IDLE] = BIT(BH_PCONN_BUSY) | BIT(BH_PCONN_CLOSING),
    [BH_PCONN_BUSY] = BIT(BH_PCONN_IDLE) | BIT(BH_PCONN_CLOSING),
    [BH_PCONN_CLOSING] = BIT(BH_PCONN_NONE),
};

static void set_state(bh_pool_conn_t *c, enum bh_pool_conn_state to)
{
    bh_pool_t *p = c->pool;
    uint32_t *n;
    bh_list_t *l;

    assert(legal_moves[c->state] & BIT(to));
    if (p->gauges != NULL) {
        bh_gauge_add(&p->gauges->conns[c->state], -1);
        bh_gauge_add(&p->gauges->conns[to], 1);
    }
    if ((l = state_list(p, c->state, &n)) != NULL) {
        bh_list_remove(&c->link);
        --*n;
    }
    c->state = to;
    if ((l = state_list(p, to, &n)) != NULL) {
        /* The idle list is a stack: the front is the warmest, the tail the next to time out. */
        if (to == BH_PCONN_IDLE)
            bh_list_push_front(l, &c->link);
        else
            bh_list_push_back(l, &c->link);
        ++*n;
    }
}

/* A connection is not handed out at or after this time. max_lifetime is also checked here in
 * case the concrete layer overwrote expires_ms with a later limit. */
static uint64_t conn_expiry(const bh_pool_t *p, const bh_pool_conn_t *c)
{
    uint64_t t = c->expires_ms;
    if (p->limits.max_lifetime_ms)
        t = min_ms(t, add_ms(c->created_ms, p->limits.max_lifetime_ms));
    return t;
}

/* An idle connection is closed at this time (idle_timeout or expiry). */
static uint64_t idle_deadline(const bh_pool_t *p, const bh_pool_conn_t *c)
{
    uint64_t t = conn_expiry(p, c);
    if (p->limits.idle_timeout_ms)
        t = min_ms(t, add_ms(c->idle_since_ms, p->limits.idle_timeout_ms));
    return t;
}

/* The only way into CLOSING, entered once per connection: its permit comes back exactly once,
 * and only after ops->close has closed the socket, so that a pool on another thread cannot
 * open a connection in its place while this one is still open (the cap counts sockets). */
static void close_conn(bh_pool_conn_t *c)
{
    bh_pool_t *p = c->pool;
    set_state(c, BH_PCONN_CLOSING);
    p->closed++;
    p->ops->close(c); /* may finish synchronously and free c */
    bh_sem_release(p->sem);
}

static void dequeue(bh_pool_t *p, bh_pool_waiter_t *w)
{
    bh_list_remove(&w->link);
    w->pool = NULL;
    p->n_waiters--;
    atomic_fetch_sub_explicit(&p->sem->waiting, 1, memory_order_relaxed);
    if (p->gauges != NULL)
        bh_gauge_add(&p->gauges->waiters, -1);
}

/* Other pools sharing the semaphore may be able to act (shed idle, or use a freed permit). */
static void kick_sharers(bh_pool_t *p)
{
    if (bh_sem_sharers(p->sem) > 1 && p->sem->kick != NULL)
        p->sem->kick(p->sem);
}

/* Waiters of other pools need a permit this pool's idle connections hold. */
static bool others_waiting(bh_pool_t *p)
{
    return p->n_waiters == 0 && bh_sem_sharers(p->sem) > 1 && bh_sem_waiting(p->sem) > 0 &&
           bh_sem_in_use(p->sem) >= p->sem->max;
}

/* Detach first: the callback may free w or call back into the pool. */
static void notify(bh_pool_t *p, bh_pool_waiter_t *w, bh_pool_conn_t *c, int status)
{
    dequeue(p, w);
    w->cb(w, c, status);
}

static bh_pool_waiter_t *head_waiter(bh_pool_t *p)
{
    return bh_container_of(bh_list_first(&p->waiters), bh_pool_waiter_t, link);
}

/* c is IDLE, CONNECTING, or BUSY when a user hands it straight over. */
static void serve_head(bh_pool_t *p, bh_pool_conn_t *c)
{
    if (c->state != BH_PCONN_BUSY)
        set_state(c, BH_PCONN_BUSY);
    c->uses++;
    notify(p, head_waiter(p), c, 0);
}

/* The warmest idle connection that can still be used; the others met on the way are closed. */
static bh_pool_conn_t *take_idle(bh_pool_t *p, uint64_t now_ms)
{
    bh_list_t *n;
    while ((n = bh_list_first(&p->idle)) != NULL) {
        bh_pool_conn_t *c = bh_container_of(n, bh_pool_conn_t, link);
        if (now_ms < idle_deadline(p, c) && p->ops->alive(c))
            return c;
        close_conn(c);
    }
    return NULL;
}

/* Pre-warming never keeps more than max_idle, or connected() would close what it just opened. */
static bool wants_conn(const bh_pool_t *p)
{
    uint32_t keep = p->limits.min_idle < p->limits.max_idle ? p->limits.min_idle
                                                            : p->limits.max_idle;
    return !p->shut && (p->n_waiters > p->n_connecting || p->n_idle + p->n_connecting < keep);
}

/* 1: a connection is opening; 0: no permit (or shut); < 0: open() failed at once. */
static int open_one(bh_pool_t *p)
{
    if (p->shut || !bh_sem_try_acquire(p->sem))
        return 0;
    int err = BH_ECONNECT_FAILED;
    bh_pool_conn_t *c = p->ops->open(p, &err);
    if (c == NULL) {
        bh_sem_release(p->sem);
        return err < 0 ? err : BH_ECONNECT_FAILED;
    }
    assert(c->pool == p && c->state == BH_PCONN_NONE);
    set_state(c, BH_PCONN_CONNECTING);
    p->opened++;
    return 1;
}

/* dispatch() without callbacks, for acquire: a failed open is retried on a later event. */
static void open_wanted(bh_pool_t *p)
{
    while (wants_conn(p) && open_one(p) > 0)
        ;
}

static void dispatch(bh_pool_t *p, uint64_t now_ms)
{
    if (p->dispatching)
        return; /* the outer loop re-reads the lists after the callback that got us here */
    p->dispatching = true;
    for (;;) {
        bh_pool_conn_t *c;
        /* release() and connected() serve waiters directly, so no idle connection normally
         * sits beside a waiter; should a future path leave one, it is served here. */
        if (p->n_waiters > 0 && (c = take_idle(p, now_ms)) != NULL) {
            p->reused++;
            serve_head(p, c);
        } else if (wants_conn(p)) {
            int r = open_one(p);
            if (r == 0)
                break;
            if (r < 0) {
                /* Like a connect failure: one waiter learns why. A failed pre-warm waits for
                 * the next event rather than spinning here. */
                if (p->n_waiters <= p->n_connecting)
                    break;
                notify(p, head_waiter(p), NULL, r);
            }
        } else {
            break;
        }
    }
    p->dispatching = false;
}

static void rearm(bh_pool_t *p)
{
    if (p->dispatching)
        return; /* the outer operation re-arms once it is done */
    uint64_t at = bh_pool_next_deadline(p);
    if (at != p->armed_ms) {
        p->armed_ms = at;
        p->ops->arm(p, at);
    }
}

static void settle(bh_pool_t *p, uint64_t now_ms)
{
    dispatch(p, now_ms);
    rearm(p);
}

void bh_pool_init(bh_pool_t *p, const bh_pool_ops_t *ops, bh_sem_t *sem,
                  const bh_pool_limits_t *limits, void *data)
{
    atomic_fetch_add_explicit(&sem->sharers, 1, memory_order_relaxed);
    assert(ops->open && ops->alive && ops->close && ops->arm);
    *p = (bh_pool_t){.ops = ops, .sem = sem, .limits = *limits, .data = data,
                     .armed_ms = BH_TIME_NEVER};
    bh_list_init(&p->connecting);
    bh_list_init(&p->idle);
    bh_list_init(&p->busy);
    bh_list_init(&p->closing);
    bh_list_init(&p->waiters);
}

void bh_pool_conn_init(bh_pool_conn_t *c, bh_pool_t *p, uint64_t now_ms)
{
    uint64_t lifetime = p->limits.max_lifetime_ms;
    *c = (bh_pool_conn_t){.pool = p, .state = BH_PCONN_NONE, .created_ms = now_ms,
                          .idle_since_ms = now_ms,
                          .expires_ms = lifetime ? add_ms(now_ms, lifetime) : BH_TIME_NEVER};
    bh_list_init(&c->link);
}

int bh_pool_acquire(bh_pool_t *p, bh_pool_waiter_t *w, uint64_t now_ms, uint64_t deadline_ms,
                    bh_pool_conn_t **out)
{
    *out = NULL;
    bh_list_init(&w->link);
    w->pool = NULL;
    if (p->shut)
        return BH_EPOOL_CLOSED;

    /* Only when nobody is queued: a newcomer must not overtake the waiters. */
    bh_pool_conn_t *c = p->n_waiters == 0 ? take_idle(p, now_ms) : NULL;
    if (c != NULL) {
        set_state(c, BH_PCONN_BUSY);
        c->uses++;
        p->reused++;
        *out = c;
        open_wanted(p);
        rearm(p);
        return 0;
    }
    if (p->n_waiters >= p->limits.max_pending) {
        p->overflows++;
        rearm(p); /* take_idle may have closed idle connections */
        return BH_EPOOL_FULL;
    }

    w->pool = p;
    w->queued_ms = now_ms;
    w->deadline_ms = min_ms(add_ms(now_ms, p->limits.acquire_timeout_ms), deadline_ms);
    bh_list_push_back(&p->waiters, &w->link);
    p->n_waiters++;
    atomic_fetch_add_explicit(&p->sem->waiting, 1, memory_order_relaxed);
    if (p->gauges != NULL)
        bh_gauge_add(&p->gauges->waiters, 1);

    /* No dispatch() here: it could run callbacks, and none may run inside acquire. */
    if (p->n_waiters > p->n_connecting) {
        int r = open_one(p);
        if (r < 0) {
            /* w's arrival asked for this connection: it hears why, now, and is not queued. */
            dequeue(p, w);
            rearm(p);
            return r;
        }
    }
    open_wanted(p);
    if (p->n_waiters > p->n_connecting)
        kick_sharers(p); /* no permit here: another pool may be sitting on idle ones */
    rearm(p);
    return BH_POOL_QUEUED;
}

void bh_pool_cancel(bh_pool_waiter_t *w)
{
    bh_pool_t *p = w->pool;
    if (p == NULL)
        return;
    dequeue(p, w);
    rearm(p);
}

void bh_pool_release(bh_pool_conn_t *c, bool reusable, uint64_t now_ms)
{
    bh_pool_t *p = c->pool;
    assert(c->state == BH_PCONN_BUSY);
    if (!reusable || p->shut || now_ms >= conn_expiry(p, c)) {
        close_conn(c);
    } else if (p->n_waiters > 0) {
        p->reused++;
        serve_head(p, c); /* straight to the next user: it was just in use, no need to check */
    } else if (p->n_idle >= p->limits.max_idle) {
        close_conn(c);
    } else if (others_waiting(p)) {
        close_conn(c); /* its permit serves a waiter of another pool sooner than idling here */
        kick_sharers(p);
    } else {
        c->idle_since_ms = now_ms;
        set_state(c, BH_PCONN_IDLE);
    }
    settle(p, now_ms); /* a closed connection freed a permit a waiter may use */
}

void bh_pool_connected(bh_pool_conn_t *c, uint64_t now_ms)
{
    bh_pool_t *p = c->pool;
    assert(c->state == BH_PCONN_CONNECTING);
    if (p->shut) {
        close_conn(c);
    } else if (p->n_waiters > 0) {
        serve_head(p, c);
    } else if (p->n_idle >= p->limits.max_idle) {
        close_conn(c); /* its waiter went away and idle is full */
    } else {
        c->idle_since_ms = now_ms;
        set_state(c, BH_PCONN_IDLE);
    }
    settle(p, now_ms);
}

void bh_pool_connect_failed(bh_pool_conn_t *c, int err, uint64_t now_ms)
{
    bh_pool_t *p = c->pool;
    assert(c->state == BH_PCONN_CONNECTING && err < 0);
    close_conn(c);
    if (p->n_waiters > 0)
        notify(p, head_waiter(p), NULL, err);
    settle(p, now_ms); /* the waiters behind it get a fresh attempt */
}

void bh_pool_idle_lost(bh_pool_conn_t *c, uint64_t now_ms)
{
    bh_pool_t *p = c->pool;
    assert(c->state == BH_PCONN_IDLE);
    close_conn(c);
    settle(p, now_ms);
}

void bh_pool_conn_closed(bh_pool_conn_t *c)
{
    assert(c->state == BH_PCONN_CLOSING);
    set_state(c, BH_PCONN_NONE);
}

void bh_pool_expire(bh_pool_t *p, uint64_t now_ms)
{
    bh_list_t *n, *tmp;

    /* Restart from the head after each callback: it may have cancelled or freed any waiter.
     * Expired waiters sit near the head, so this stays short. */
    for (bool again = true; again;) {
        again = false;
        bh_list_foreach(n, &p->waiters) {
            bh_pool_waiter_t *w = bh_container_of(n, bh_pool_waiter_t, link);
            if (w->deadline_ms <= now_ms) {
                p->timeouts++;
                notify(p, w, NULL, BH_EPOOL_TIMEOUT);
                again = true;
                break;
            }
        }
    }
    bh_list_foreach_safe(n, tmp, &p->idle) {
        bh_pool_conn_t *c = bh_container_of(n, bh_pool_conn_t, link);
        if (idle_deadline(p, c) <= now_ms)
            close_conn(c);
    }
    /* Also the place where min_idle is first met, and where a permit freed by another worker's
     * pool (shared semaphore) is noticed: dispatch unconditionally. */
    settle(p, now_ms);
}

uint64_t bh_pool_next_deadline(const bh_pool_t *p)
{
    uint64_t at = BH_TIME_NEVER;
    const bh_list_t *n;

    /* Waiters: a scan, since a caller's own deadline_ms breaks FIFO order; the queue is short
     * whenever it is not empty for long. Idle connections: only the coldest one (the tail of the
     * LIFO list) is looked at, so a pool of hundreds of idle connections costs O(1) per
     * operation. Another idle connection whose own expiry (lifetime, learned keep-alive) comes
     * sooner is still never reused past it (take_idle checks) and is closed by a later expire. */
    bh_list_foreach(n, &p->waiters)
        at = min_ms(at, bh_container_of(n, bh_pool_waiter_t, link)->deadline_ms);
    if ((n = bh_list_last(&p->idle)) != NULL)
        at = min_ms(at, idle_deadline(p, bh_container_of(n, bh_pool_conn_t, link)));
    return at;
}

void bh_pool_shutdown(bh_pool_t *p, uint64_t now_ms)
{
    bh_list_t *n;
    p->shut = true;
    while ((n = bh_list_first(&p->waiters)) != NULL)
        notify(p, bh_container_of(n, bh_pool_waiter_t, link), NULL, BH_EPOOL_CLOSED);
    while ((n = bh_list_first(&p->idle)) != NULL)
        close_conn(bh_container_of(n, bh_pool_conn_t, link));
    settle(p, now_ms);
}

void bh_pool_kick(bh_pool_t *p, uint64_t now_ms)
{
    bh_list_t *n;
    int64_t shed = bh_sem_waiting(p->sem);
    while (shed-- > 0 && p->n_waiters == 0 && (n = bh_list_last(&p->idle)) != NULL) {
        close_conn(bh_container_of(n, bh_pool_conn_t, link)); /* the coldest first */
        kick_sharers(p);
    }
    settle(p, now_ms); /* and use a permit another pool freed */
}

void bh_pool_retire(bh_pool_t *p, uint64_t now_ms)
{
    p->limits.max_idle = 0;
    p->limits.min_idle = 0;
    bh_list_t *n;
    while ((n = bh_list_first(&p->idle)) != NULL) {
        close_conn(bh_container_of(n, bh_pool_conn_t, link));
        kick_sharers(p);
    }
    settle(p, now_ms);
}

bool bh_pool_empty(const bh_pool_t *p)
{
    return p->n_connecting + p->n_idle + p->n_busy + p->n_closing + p->n_waiters == 0;
}
