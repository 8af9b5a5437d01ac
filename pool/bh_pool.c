/* The generic bounded pool: which connection serves which waiter, when to open, when to close.
 *
 * A connection is on exactly one list, the one of its state, and only set_state() moves it:
 *   NONE -> CONNECTING -> IDLE <-> BUSY, and CONNECTING | IDLE | BUSY -> CLOSING -> NONE (gone).
 * It takes its permit just before ops->open and gives it up once ops->close has closed it (while
 * it is CLOSING), so connecting + idle + busy always equals the permits this pool holds.
 * Waiters are queued FIFO and carry w->pool while queued. Whenever something changes, dispatch()
 * hands idle connections to waiters, then opens what waiters and min_idle still need. Every
 * callback, ops->close included, may re-enter the pool: a waiter is detached before its
 * callback runs, a connection is not touched after ops->close, and loops re-read the lists.
 *
 * Across pools (bh_sem.h): the pools of one thread sharing a semaphore form its lane. A waiter is
 * "needy" while no connection is on the way for it: a pool's connecting connections serve its
 * head first, so its needy waiters are those behind the first n_connecting. Each top-level
 * operation ends in finish(), which publishes the lane's needy tickets and idle count and does
 * the needy side of the handshake (ask lanes with idle connections, notice a free permit). A
 * permit without a connection (one closed, an open that failed, a grant nobody here can use)
 * goes through give(): to the lane with the oldest needy waiter, this one included (then it is
 * held as lane->spare until a pool here opens with it), or back to the free count. A pool with
 * a single lane and no sibling skips all of it ("solo"): the path of one worker is unchanged. */
#include "bh_pool.h"

#include <assert.h>
#include "bh_alloc.h"

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
#ifndef NDEBUG /* only set_state's assert reads it: a release build (-DNDEBUG) would warn it       \
                  unused */
static const unsigned legal_moves[] = {
    [BH_PCONN_NONE] = BIT(BH_PCONN_CONNECTING),
    [BH_PCONN_CONNECTING] = BIT(BH_PCONN_BUSY) | BIT(BH_PCONN_IDLE) | BIT(BH_PCONN_CLOSING),
    [BH_PCONN_IDLE] = BIT(BH_PCONN_BUSY) | BIT(BH_PCONN_CLOSING),
    [BH_PCONN_BUSY] = BIT(BH_PCONN_IDLE) | BIT(BH_PCONN_CLOSING),
    [BH_PCONN_CLOSING] = BIT(BH_PCONN_NONE),
};
#endif

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

/* ---- waiter deadlines ------------------------------------------------------------------------
 * Waiters are served in FIFO order, but a caller's own deadline can make a later waiter expire
 * first, so the earliest deadline is not the head's. A min-heap of the queued waiters by deadline
 * keeps bh_pool_next_deadline O(1) and queueing or leaving O(log n): it runs at the end of every
 * operation, and a scan of hundreds of waiters there was a fifth of the proxy's CPU under load. */

static void heap_set(bh_pool_t *p, uint32_t i, bh_pool_waiter_t *w)
{
    p->heap[i] = w;
    w->heap_at = i;
}

static void heap_up(bh_pool_t *p, uint32_t i)
{
    bh_pool_waiter_t *w = p->heap[i];
    while (i > 0 && p->heap[(i - 1) / 2]->deadline_ms > w->deadline_ms) {
        heap_set(p, i, p->heap[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    heap_set(p, i, w);
}

/* n: the heap's size */
static void heap_down(bh_pool_t *p, uint32_t i, uint32_t n)
{
    bh_pool_waiter_t *w = p->heap[i];
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && p->heap[c + 1]->deadline_ms < p->heap[c]->deadline_ms)
            c++;
        if (p->heap[c]->deadline_ms >= w->deadline_ms)
            break;
        heap_set(p, i, p->heap[c]);
        i = c;
    }
    heap_set(p, i, w);
}

/* Room for one more waiter in the heap. 0 or BH_ENOMEM. */
static int heap_reserve(bh_pool_t *p)
{
    if (p->n_waiters < p->heap_cap)
        return 0;
    uint32_t cap = p->heap_cap ? p->heap_cap * 2 : 16;
    bh_pool_waiter_t **h = bh_realloc(p->heap, (size_t)cap * sizeof(*h));
    if (h == NULL)
        return BH_ENOMEM;
    p->heap = h;
    p->heap_cap = cap;
    return 0;
}

/* w was just counted in n_waiters (room reserved). */
static void heap_push(bh_pool_t *p, bh_pool_waiter_t *w)
{
    heap_set(p, p->n_waiters - 1, w);
    heap_up(p, p->n_waiters - 1);
}

/* w leaves; n_waiters still counts it. The last waiter of the heap takes its place. */
static void heap_remove(bh_pool_t *p, bh_pool_waiter_t *w)
{
    uint32_t i = w->heap_at, last = p->n_waiters - 1;
    assert(i <= last && p->heap[i] == w);
    if (i == last)
        return;
    bh_pool_waiter_t *m = p->heap[last];
    heap_set(p, i, m);
    heap_up(p, i);
    if (m->heap_at == i)
        heap_down(p, i, last);
}

/* ---- lanes: this thread's pools on one semaphore ---------------------------------------- */

/* One worker and one pool on the semaphore: nobody else to be fair to. */
static bool solo(const bh_pool_t *p)
{
    return p->sem->n_lanes == 1 && p->lane->n_pools == 1;
}

static bh_pool_t *pool_of_lane_link(bh_list_t *n)
{
    return bh_container_of(n, bh_pool_t, lane_link);
}

/* ---- the pool's own cap (bh_pool_cap_t) ---------------------------------------------------- */

/* The key's cap binds only below the semaphore's (else the semaphore caps first). */
static bool cap_binds(const bh_pool_t *p)
{
    return p->cap != NULL && p->cap->max < p->sem->max;
}

static bool capped(const bh_pool_t *p)
{
    return cap_binds(p) && atomic_load_explicit(&p->cap->used, memory_order_relaxed) >= p->cap->max;
}

/* Tells the other threads to settle their pools again (their view of the cap changed). */
static void cap_wake_others(bh_pool_t *p)
{
    for (uint32_t i = 0; i < p->sem->n_lanes; i++) {
        bh_sem_lane_t *l = bh_sem_lane(p->sem, i);
        if (l != p->lane && atomic_load_explicit(&l->inbox, memory_order_acquire) != NULL) {
            atomic_store_explicit(&l->asked, 1, memory_order_relaxed);
            bh_sem_post(l);
        }
    }
}

/* The key's waiters on other threads that p's idle connections could serve (closed, their unit
 * lets those threads open): only while the cap is full. */
static uint32_t cap_waiting_elsewhere(const bh_pool_t *p)
{
    if (!capped(p))
        return 0;
    uint32_t all = atomic_load_explicit(&p->cap->waiting, memory_order_relaxed);
    return all > p->n_waiters ? all - p->n_waiters : 0;
}

static bool cap_take(bh_pool_t *p)
{
    if (p->cap == NULL)
        return true;
    int64_t used = atomic_load_explicit(&p->cap->used, memory_order_relaxed);
    while (used < p->cap->max)
        if (atomic_compare_exchange_weak_explicit(&p->cap->used, &used, used + 1,
                                                  memory_order_acq_rel, memory_order_relaxed))
            return true;
    return false;
}

/* A unit goes back. When the cap was full, the pools of this key on other threads did not
 * publish their waiters as needy, and nothing else would tell them that they may open now: wake
 * every other lane of the semaphore (rare: only at the cap) to settle its pools again. */
static void cap_put(bh_pool_t *p)
{
    if (p->cap == NULL)
        return;
    int64_t prev = atomic_fetch_sub_explicit(&p->cap->used, 1, memory_order_acq_rel);
    assert(prev > 0);
    if (prev >= p->cap->max && cap_binds(p) && p->sem->n_lanes > 1 &&
        atomic_load_explicit(&p->cap->waiting, memory_order_relaxed) > p->n_waiters)
        cap_wake_others(p);
}

/* The ticket of p's first waiter with no connection on the way, or NONE. */
static uint64_t first_unserved_ticket(const bh_pool_t *p)
{
    if (p->n_waiters <= p->n_connecting)
        return BH_SEM_NONE;
    const bh_list_t *n = p->waiters.next;
    for (uint32_t i = 0; i < p->n_connecting; i++)
        n = n->next;
    return bh_container_of(n, bh_pool_waiter_t, link)->ticket;
}

/* Waiters of p with no connection on the way that a permit would help: none while p's own cap
 * is full (they wait for one of p's connections). */
static uint32_t needy(const bh_pool_t *p)
{
    if (p->n_waiters <= p->n_connecting || capped(p))
        return 0;
    return p->n_waiters - p->n_connecting;
}

/* The ticket of p's first needy waiter, or NONE. */
static uint64_t needy_ticket(const bh_pool_t *p)
{
    return needy(p) == 0 ? BH_SEM_NONE : first_unserved_ticket(p);
}

static uint32_t lane_needy(const bh_sem_lane_t *l)
{
    uint32_t n = 0;
    const bh_list_t *it;
    bh_list_foreach(it, &l->pools) n += needy(pool_of_lane_link((bh_list_t *)it));
    return n;
}

static uint32_t lane_idle(const bh_sem_lane_t *l)
{
    uint32_t n = 0;
    const bh_list_t *it;
    bh_list_foreach(it, &l->pools) n += pool_of_lane_link((bh_list_t *)it)->n_idle;
    return n;
}

/* The pool of the lane whose first needy waiter is the oldest (NULL: none is needy), and its
 * ticket. */
static bh_pool_t *lane_oldest(const bh_sem_lane_t *l, uint64_t *ticket)
{
    bh_pool_t *best = NULL;
    uint64_t bt = BH_SEM_NONE;
    const bh_list_t *it;
    bh_list_foreach(it, &l->pools)
    {
        bh_pool_t *q = pool_of_lane_link((bh_list_t *)it);
        uint64_t t = needy_ticket(q);
        if (t < bt) {
            best = q;
            bt = t;
        }
    }
    if (ticket != NULL)
        *ticket = bt;
    return best;
}

#define MERGE_MAX 32

/* The tickets of the lane's needy waiters in queue order, from the skip-th on: out[0..k). */
static void lane_tickets(const bh_sem_lane_t *l, uint32_t skip, uint64_t *out, uint32_t k)
{
    uint64_t buf[MERGE_MAX];
    uint32_t want = skip + k < MERGE_MAX ? skip + k : MERGE_MAX, have = 0;
    const bh_list_t *it;
    bh_list_foreach(it, &l->pools)
    {
        const bh_pool_t *q = pool_of_lane_link((bh_list_t *)it);
        if (needy(q) == 0)
            continue;
        const bh_list_t *n = q->waiters.next;
        for (uint32_t i = 0; i < q->n_connecting; i++)
            n = n->next;
        /* Each pool's waiters are in ticket order: insert them into the sorted buffer, which
         * keeps the `want` smallest. */
        for (uint32_t i = 0; i < want && n != &q->waiters; i++, n = n->next) {
            uint64_t t = bh_container_of(n, bh_pool_waiter_t, link)->ticket;
            if (have == want) {
                if (t >= buf[want - 1])
                    break; /* later than all we keep, and so are the rest of this pool's */
                have--;    /* the latest one kept makes room */
            }
            uint32_t j = have++;
            while (j > 0 && buf[j - 1] > t) {
                buf[j] = buf[j - 1];
                j--;
            }
            buf[j] = t;
        }
    }
    for (uint32_t i = 0; i < k; i++)
        out[i] = skip + i < have ? buf[skip + i] : BH_SEM_NONE;
}

/* What other threads read about this lane: its needy waiters beyond those a spare permit here
 * already covers, and its idle connections. Only stores what changed. */
static void lane_publish(bh_sem_lane_t *l, uint32_t need, uint32_t idle)
{
    uint64_t t[BH_SEM_SHOWN];
    uint32_t skip = l->spare < need ? l->spare : need;
    if (need > skip || l->shown[0] != BH_SEM_NONE) { /* the common case: none to show, none shown */
        lane_tickets(l, skip, t, BH_SEM_SHOWN);
        for (int k = 0; k < BH_SEM_SHOWN; k++)
            if (t[k] != l->shown[k])
                atomic_store_explicit(&l->tickets[k], l->shown[k] = t[k], memory_order_relaxed);
    }
    if (need - skip != l->shown_need)
        atomic_store_explicit(&l->need, l->shown_need = need - skip, memory_order_relaxed);
    if (idle != l->shown_idle)
        atomic_store_explicit(&l->idle, l->shown_idle = idle, memory_order_relaxed);
}

/* A permit lane l holds and no connection uses: to the oldest needy waiter, on another lane
 * (handed over) or here (kept as spare), else back to the free count. */
static void give(bh_sem_lane_t *l)
{
    bh_sem_t *s = l->sem;
    if (s->n_lanes == 1) {
        if (l->n_pools > 1 && lane_needy(l) > l->spare)
            l->spare++; /* a sibling pool's waiter: finish() has it served */
        else
            bh_sem_release(s);
        return;
    }
    uint64_t own = BH_SEM_NONE;
    if (lane_needy(l) > l->spare)
        lane_tickets(l, l->spare, &own, 1);
    /* Only look when other lanes have waiters: the common case reads two counters. */
    bool look = bh_sem_waiting(s) > l->n_waiters;
    for (;;) {
        if (look && bh_sem_claim(s, l, own) != NULL)
            return;
        if (own != BH_SEM_NONE) {
            l->spare++;
            return;
        }
        bh_sem_release(s);
        /* Free now. A lane that published its need before this fence is seen below; one that
         * publishes after it sees the free permit (lane_sync). */
        atomic_thread_fence(memory_order_seq_cst);
        if (bh_sem_oldest(s, l, BH_SEM_NONE, NULL) == NULL || !bh_sem_try_acquire(s))
            return;
        look = true; /* we hold it again: hand it to the lane just seen */
    }
}

/* The oldest needy waiter that p's own waiters would overtake if p kept a connection: on a
 * sibling pool of the lane, or on another lane (NONE: nobody). */
static uint64_t oldest_elsewhere(const bh_pool_t *p)
{
    bh_sem_lane_t *l = p->lane;
    uint64_t best = BH_SEM_NONE;
    if (l->n_pools > 1) {
        const bh_list_t *it;
        bh_list_foreach(it, &l->pools)
        {
            bh_pool_t *q = pool_of_lane_link((bh_list_t *)it);
            uint64_t t = q != p ? needy_ticket(q) : BH_SEM_NONE;
            best = t < best ? t : best;
        }
    }
    if (p->sem->n_lanes > 1 && bh_sem_waiting(p->sem) > l->n_waiters)
        bh_sem_oldest(p->sem, l, best, &best);
    return best;
}

/* A connection was given back to p, which has waiters: true when its head should have it, i.e.
 * p's first needy waiter queued before every needy waiter elsewhere. When all of p's waiters have
 * a connection on the way, a needy waiter elsewhere comes first. */
static bool keep_for_own(const bh_pool_t *p)
{
    if (solo(p))
        return true;
    uint64_t other = oldest_elsewhere(p);
    /* p's waiters count even while its cap is full: this connection is what they wait for */
    return other == BH_SEM_NONE || first_unserved_ticket(p) < other;
}

/* A connection of p would go idle: true when a needy waiter elsewhere should have its permit. */
static bool wanted_elsewhere(const bh_pool_t *p)
{
    return !solo(p) && (oldest_elsewhere(p) != BH_SEM_NONE || cap_waiting_elsewhere(p) > 0);
}

/* p's dispatch may open with a spare permit of the lane if p has its oldest needy waiter. */
static bool may_take_spare(const bh_pool_t *p)
{
    const bh_sem_lane_t *l = p->lane;
    return l->spare > 0 && (l->n_pools == 1 || lane_oldest(l, NULL) == p);
}

/* The end of every top-level operation on a pool of lane l (not solo). */
static void lane_sync(bh_sem_lane_t *l)
{
    bh_sem_t *s = l->sem;
    uint32_t need = lane_needy(l), idle = lane_idle(l), was_idle = l->shown_idle;
    if (l->spare > 0 && need == 0) {
        uint32_t n = l->spare; /* nobody here needs them any more */
        l->spare = 0;
        while (n-- > 0)
            give(l);
    }
    /* Left over: a sibling pool has the oldest waiter; it is served from the inbox. */
    bool run_here = l->spare > 0;
    if (l->n_pools > 1 && need > l->spare && idle > 0)
        run_here = true; /* idle connections here, a needy waiter on a sibling pool */
    if (s->n_lanes > 1) {
        lane_publish(l, need, idle);
        if (need > l->spare) {
            atomic_thread_fence(memory_order_seq_cst);
            uint32_t coming = atomic_load_explicit(&l->granted, memory_order_relaxed);
            coming &= ~BH_SEM_GONE; /* granted, not taken yet */
            if (bh_sem_in_use(s) < s->max)
                run_here = true; /* freed after our pools last tried: take it from the inbox */
            else if (need > l->spare + coming)
                bh_sem_ask_idle(s, l, need - l->spare - coming);
        }
        if (idle > was_idle && bh_sem_waiting(s) > l->n_waiters) {
            atomic_thread_fence(memory_order_seq_cst);
            if (bh_sem_oldest(s, l, BH_SEM_NONE, NULL) != NULL)
                run_here = true; /* became idle while a waiter elsewhere needed a permit */
        }
    }
    if (run_here) {
        atomic_store_explicit(&l->asked, 1, memory_order_relaxed);
        bh_sem_post(l);
    }
}

/* ---- connections and waiters ---------------------------------------------------------------- */

/* The only way into CLOSING, entered once per connection: its permit moves on exactly once, and
 * only after ops->close has closed the socket, so that a pool on another thread cannot open a
 * connection in its place while this one is still open (the cap counts sockets). */
static void close_conn(bh_pool_conn_t *c)
{
    bh_pool_t *p = c->pool;
    bh_sem_lane_t *l = p->lane;
    set_state(c, BH_PCONN_CLOSING);
    p->closed++;
    p->ops->close(c); /* may finish synchronously and free c */
    cap_put(p);       /* first: the permit may go to a waiter of this very key */
    give(l);
}

static void dequeue(bh_pool_t *p, bh_pool_waiter_t *w)
{
    heap_remove(p, w);
    bh_list_remove(&w->link);
    w->pool = NULL;
    p->n_waiters--;
    p->lane->n_waiters--;
    bh_sem_left(p->sem);
    if (p->cap != NULL)
        atomic_fetch_sub_explicit(&p->cap->waiting, 1, memory_order_relaxed);
    if (p->gauges != NULL)
        bh_gauge_add(&p->gauges->waiters, -1);
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
    uint32_t keep =
        p->limits.min_idle < p->limits.max_idle ? p->limits.min_idle : p->limits.max_idle;
    return !p->shut && (p->n_waiters > p->n_connecting || p->n_idle + p->n_connecting < keep);
}

/* 1: a connection is opening; 0: no permit (or shut); < 0: open() failed at once. */
static int open_one(bh_pool_t *p)
{
    if (p->shut)
        return 0;
    /* Before cap_take: taking the key's last unit makes p's waiters look not needy, and the
     * spare is kept for needy waiters. */
    bool spare = may_take_spare(p);
    if (!cap_take(p))
        return 0;
    if (spare) {
        p->lane->spare--;
    } else if (!bh_sem_try_acquire(p->sem)) {
        cap_put(p);
        return 0;
    }
    int err = BH_ECONNECT_FAILED;
    bh_pool_conn_t *c = p->ops->open(p, &err);
    if (c == NULL) {
        cap_put(p);
        give(p->lane);
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

/* The end of every top-level operation: the timer, and what other pools must learn. */
static void finish(bh_pool_t *p)
{
    if (p->dispatching)
        return; /* the outer operation finishes once it is done */
    uint64_t at = bh_pool_next_deadline(p);
    if (at != p->armed_ms) {
        p->armed_ms = at;
        p->ops->arm(p, at);
    }
    if (!solo(p))
        lane_sync(p->lane);
}

static void settle(bh_pool_t *p, uint64_t now_ms)
{
    dispatch(p, now_ms);
    finish(p);
}

void bh_pool_init(bh_pool_t *p, const bh_pool_ops_t *ops, bh_sem_t *sem, bh_sem_inbox_t *inbox,
                  const bh_pool_limits_t *limits, void *data)
{
    assert(ops->open && ops->alive && ops->close && ops->arm);
    *p = (bh_pool_t){.ops = ops,
                     .sem = bh_sem_ref(sem),
                     .lane = bh_sem_lane(sem, inbox->lane),
                     .limits = *limits,
                     .data = data,
                     .armed_ms = BH_TIME_NEVER};
    bh_list_init(&p->connecting);
    bh_list_init(&p->idle);
    bh_list_init(&p->busy);
    bh_list_init(&p->closing);
    bh_list_init(&p->waiters);
    if (p->lane->n_pools++ == 0)
        bh_sem_lane_open(p->lane, inbox);
    bh_list_push_back(&p->lane->pools, &p->lane_link);
}

void bh_pool_detach(bh_pool_t *p)
{
    bh_sem_lane_t *l = p->lane;
    bh_sem_t *s = p->sem;
    assert(bh_pool_empty(p));
    bh_list_remove(&p->lane_link);
    if (--l->n_pools == 0) {
        /* Nothing can be granted to the lane from here on; what was, goes on. */
        uint32_t n = l->spare + bh_sem_lane_close(l);
        l->spare = 0;
        if (s->n_lanes > 1)
            lane_publish(l, 0, 0);
        while (n-- > 0)
            give(l);
    } else {
        lane_sync(l);
    }
    p->sem = NULL;
    p->lane = NULL;
    bh_free(p->heap);
    p->heap = NULL;
    p->heap_cap = 0;
    bh_sem_unref(s);
}

void bh_pool_conn_init(bh_pool_conn_t *c, bh_pool_t *p, uint64_t now_ms)
{
    uint64_t lifetime = p->limits.max_lifetime_ms;
    *c = (bh_pool_conn_t){.pool = p,
                          .state = BH_PCONN_NONE,
                          .created_ms = now_ms,
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
        finish(p);
        return 0;
    }
    if (p->n_waiters >= p->limits.max_pending) {
        p->overflows++;
        finish(p); /* take_idle may have closed idle connections */
        return BH_EPOOL_FULL;
    }
    if (heap_reserve(p) < 0) {
        finish(p);
        return BH_ENOMEM;
    }

    w->pool = p;
    w->queued_ms = now_ms;
    w->deadline_ms = min_ms(add_ms(now_ms, p->limits.acquire_timeout_ms), deadline_ms);
    w->ticket = bh_sem_ticket(p->sem);
    bh_list_push_back(&p->waiters, &w->link);
    p->n_waiters++;
    heap_push(p, w);
    p->lane->n_waiters++;
    if (p->cap != NULL) {
        atomic_fetch_add_explicit(&p->cap->waiting, 1, memory_order_relaxed);
        if (capped(p) && p->sem->n_lanes > 1)
            cap_wake_others(p); /* the key's idle connections elsewhere can make room */
    }
    if (p->gauges != NULL)
        bh_gauge_add(&p->gauges->waiters, 1);

    /* No dispatch() here: it could run callbacks, and none may run inside acquire. */
    if (p->n_waiters > p->n_connecting) {
        int r = open_one(p);
        if (r < 0) {
            /* w's arrival asked for this connection: it hears why, now, and is not queued. */
            dequeue(p, w);
            finish(p);
            return r;
        }
    }
    open_wanted(p);
    finish(p); /* no permit here: ask the pools that sit on idle ones */
    return BH_POOL_QUEUED;
}

void bh_pool_cancel(bh_pool_waiter_t *w)
{
    bh_pool_t *p = w->pool;
    if (p == NULL)
        return;
    dequeue(p, w);
    finish(p);
}

void bh_pool_release(bh_pool_conn_t *c, bool reusable, uint64_t now_ms)
{
    bh_pool_t *p = c->pool;
    assert(c->state == BH_PCONN_BUSY);
    if (!reusable || p->shut || now_ms >= conn_expiry(p, c)) {
        close_conn(c);
    } else if (p->n_waiters > 0) {
        if (keep_for_own(p)) {
            p->reused++;
            serve_head(p, c); /* straight to the next user: just in use, no need to check */
        } else {
            close_conn(c); /* its permit goes to an older waiter elsewhere, who opens one */
        }
    } else if (p->n_idle >= p->limits.max_idle || wanted_elsewhere(p)) {
        close_conn(c);
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
        serve_head(p, c); /* the waiter it was opened for (connections serve the head first) */
    } else if (p->n_idle >= p->limits.max_idle || wanted_elsewhere(p)) {
        close_conn(c); /* its waiter went away, and idle is full or a waiter elsewhere needs it */
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

    /* The heap's top after each callback: it may have cancelled or freed any waiter. */
    while (p->n_waiters > 0 && p->heap[0]->deadline_ms <= now_ms) {
        p->timeouts++;
        notify(p, p->heap[0], NULL, BH_EPOOL_TIMEOUT);
    }
    bh_list_foreach_safe(n, tmp, &p->idle)
    {
        bh_pool_conn_t *c = bh_container_of(n, bh_pool_conn_t, link);
        if (idle_deadline(p, c) <= now_ms)
            close_conn(c);
    }
    /* Also the place where min_idle is first met: dispatch unconditionally. */
    settle(p, now_ms);
}

uint64_t bh_pool_next_deadline(const bh_pool_t *p)
{
    uint64_t at = BH_TIME_NEVER;
    const bh_list_t *n;

    /* Waiters: the heap's top. Idle connections: only the coldest one (the tail of the LIFO
     * list) is looked at, so a pool of hundreds of idle connections costs O(1) per operation.
     * Another idle connection whose own expiry (lifetime, learned keep-alive) comes sooner is
     * still never reused past it (take_idle checks) and is closed by a later expire. */
    if (p->n_waiters > 0)
        at = p->heap[0]->deadline_ms;
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

void bh_pool_retire(bh_pool_t *p, uint64_t now_ms)
{
    p->limits.max_idle = 0;
    p->limits.min_idle = 0;
    bh_list_t *n;
    while ((n = bh_list_first(&p->idle)) != NULL)
        close_conn(bh_container_of(n, bh_pool_conn_t, link)); /* each permit to a waiter */
    settle(p, now_ms);
}

bool bh_pool_empty(const bh_pool_t *p)
{
    return p->n_connecting + p->n_idle + p->n_busy + p->n_closing + p->n_waiters == 0;
}

/* ---- the inbox: what other threads asked of this one -------------------------------------- */

/* A needy waiter anywhere (beyond those a spare permit here covers)? */
static bool permit_wanted(bh_sem_lane_t *l)
{
    return lane_needy(l) > l->spare ||
           (l->sem->n_lanes > 1 && bh_sem_oldest(l->sem, l, BH_SEM_NONE, NULL) != NULL);
}

/* The lane's coldest idle connection (the tail with the earliest idle_since), or NULL. */
static bh_pool_conn_t *lane_coldest_idle(bh_sem_lane_t *l)
{
    bh_pool_conn_t *best = NULL;
    bh_list_t *it, *n;
    bh_list_foreach(it, &l->pools)
    {
        bh_pool_t *q = pool_of_lane_link(it);
        if ((n = bh_list_last(&q->idle)) == NULL)
            continue;
        bh_pool_conn_t *c = bh_container_of(n, bh_pool_conn_t, link);
        if (best == NULL || c->idle_since_ms < best->idle_since_ms)
            best = c;
    }
    return best;
}

static void lane_run(bh_sem_lane_t *l, uint64_t now_ms)
{
    if (l->n_pools == 0)
        return; /* the lane's pools are gone; nothing was granted to it since (GONE) */
    uint32_t got = bh_sem_lane_take(l);
    atomic_store_explicit(&l->asked, 0, memory_order_relaxed);
    if (got > 0) {
        l->spare += got;
        /* What others read now skips the waiters these permits are for. */
        lane_publish(l, lane_needy(l), lane_idle(l));
    }
    for (;;) {
        /* Permits held here open connections for the oldest needy waiters here, in order. */
        bh_pool_t *q;
        while (l->spare > 0 && (q = lane_oldest(l, NULL)) != NULL) {
            uint32_t before = l->spare;
            dispatch(q, now_ms);
            if (l->spare == before)
                break;
        }
        /* Then yield: one idle connection per needy waiter (here or elsewhere) that has no
         * permit on the way. Its permit goes to the oldest of them (close_conn -> give). */
        bh_pool_conn_t *c = lane_coldest_idle(l);
        if (c == NULL || !permit_wanted(l))
            break;
        close_conn(c);
    }
    bh_list_t *it, *tmp;
    /* A key at its own cap: idle connections here for its waiters on other threads. */
    bh_list_foreach_safe(it, tmp, &l->pools)
    {
        bh_pool_t *q = pool_of_lane_link(it);
        for (uint32_t n = cap_waiting_elsewhere(q); n > 0 && q->n_idle > 0; n--)
            close_conn(bh_container_of(bh_list_last(&q->idle), bh_pool_conn_t, link));
    }
    bh_list_foreach_safe(it, tmp, &l->pools) settle(pool_of_lane_link(it), now_ms);
}

void bh_pool_inbox_run(bh_sem_inbox_t *in, uint64_t now_ms)
{
    bh_sem_lane_t *l = bh_sem_inbox_take(in);
    while (l != NULL) {
        bh_sem_lane_t *next = l->next; /* before it can be queued again */
        bh_sem_t *s = l->sem;
        /* An exchange, so that what a poster wrote before it found the lane queued is seen. */
        atomic_exchange_explicit(&l->queued, 0, memory_order_acq_rel);
        lane_run(l, now_ms);
        bh_sem_unref(s); /* the inbox's reference */
        l = next;
    }
}
