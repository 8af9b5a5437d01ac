/* Unit tests of the generic pool, driven through a fake concrete layer and a fake clock. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bh_pool.h"

#define NEVER BH_TIME_NEVER
#define MAX_CONNS 512

/* ---- fake concrete layer ---- */

struct fconn {
    bh_pool_conn_t base;
    bool alive;
    bool close_called;
};

struct fake {
    bh_pool_t pool;
    struct fconn *conns[MAX_CONNS]; /* every connection ever opened, freed at teardown */
    int n_conns;
    int open_calls, close_calls, alive_calls, arm_calls;
    int fail_open;      /* open() fails at once with this error when set */
    bool async_close;   /* close() leaves the conn CLOSING until the test calls conn_closed */
    uint64_t last_arm;
};

static uint64_t now;

static bh_pool_conn_t *fake_open(bh_pool_t *p, int *err)
{
    struct fake *f = p->data;
    f->open_calls++;
    if (f->fail_open) {
        *err = f->fail_open;
        return NULL;
    }
    assert_true(f->n_conns < MAX_CONNS);
    struct fconn *fc = calloc(1, sizeof(*fc));
    assert_non_null(fc);
    bh_pool_conn_init(&fc->base, p, now);
    fc->alive = true;
    f->conns[f->n_conns++] = fc;
    return &fc->base;
}

static bool fake_alive(bh_pool_conn_t *c)
{
    struct fake *f = c->pool->data;
    f->alive_calls++;
    return ((struct fconn *)c)->alive;
}

static void fake_close(bh_pool_conn_t *c)
{
    struct fake *f = c->pool->data;
    struct fconn *fc = (struct fconn *)c;
    assert_int_equal(c->state, BH_PCONN_CLOSING);
    assert_false(fc->close_called);
    fc->close_called = true;
    f->close_calls++;
    if (!f->async_close)
        bh_pool_conn_closed(c);
}

static void fake_arm(bh_pool_t *p, uint64_t at)
{
    struct fake *f = p->data;
    f->arm_calls++;
    f->last_arm = at;
}

static const bh_pool_ops_t fake_ops = {fake_open, fake_alive, fake_close, fake_arm};

static bh_pool_limits_t default_limits(void)
{
    return (bh_pool_limits_t){.max_pending = 16, .max_idle = 16, .acquire_timeout_ms = 1000};
}

/* The test thread's inbox (lane 0): wakes are counted, the test drains it by hand. */
static int wakes;

static void count_wake(bh_sem_inbox_t *in)
{
    (void)in;
    wakes++;
}

static bh_sem_inbox_t inbox0 = {.lane = 0, .wake = count_wake};

/* Semaphores made by a test, unreferenced by the teardown (fake_finish detached the pools). */
static bh_sem_t *sems[8];
static int n_sems;

static bh_sem_t *new_sem(int64_t max)
{
    assert_true(n_sems < 8);
    bh_sem_t *s = bh_sem_new(max, 1);
    assert_non_null(s);
    return sems[n_sems++] = s;
}

static void fake_init(struct fake *f, bh_sem_t *sem, const bh_pool_limits_t *limits)
{
    *f = (struct fake){.last_arm = NEVER};
    bh_pool_init(&f->pool, &fake_ops, sem, &inbox0, limits, f);
}

static bh_pool_conn_t *C(struct fake *f, int i)
{
    assert_true(i < f->n_conns);
    return &f->conns[i]->base;
}

/* Every list holds only conns of its state, counters match lists, no waiter waits beside an
 * idle connection. */
static void check(struct fake *f)
{
    bh_pool_t *p = &f->pool;
    struct {
        bh_list_t *list;
        uint32_t n;
        enum bh_pool_conn_state state;
    } lists[] = {
        {&p->connecting, p->n_connecting, BH_PCONN_CONNECTING},
        {&p->idle, p->n_idle, BH_PCONN_IDLE},
        {&p->busy, p->n_busy, BH_PCONN_BUSY},
        {&p->closing, p->n_closing, BH_PCONN_CLOSING},
    };
    bh_list_t *n;
    for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++) {
        uint32_t count = 0;
        bh_list_foreach(n, lists[i].list) {
            bh_pool_conn_t *c = bh_container_of(n, bh_pool_conn_t, link);
            assert_int_equal(c->state, lists[i].state);
            assert_ptr_equal(c->pool, p);
            count++;
        }
        assert_int_equal(count, lists[i].n);
    }
    uint32_t waiters = 0;
    bh_list_foreach(n, &p->waiters) {
        assert_ptr_equal(bh_container_of(n, bh_pool_waiter_t, link)->pool, p);
        waiters++;
    }
    assert_int_equal(waiters, p->n_waiters);
    if (p->n_waiters > 0)
        assert_int_equal(p->n_idle, 0);
    assert_int_equal(p->armed_ms, bh_pool_next_deadline(p));
}

static uint32_t held(struct fake *f)
{
    return f->pool.n_connecting + f->pool.n_idle + f->pool.n_busy;
}

/* Shuts the pool down, finishes what is still open and frees the fake conns. */
static void fake_finish(struct fake *f)
{
    bh_pool_shutdown(&f->pool, now);
    for (int i = 0; i < f->n_conns; i++) {
        bh_pool_conn_t *c = C(f, i);
        if (c->state == BH_PCONN_CONNECTING)
            bh_pool_connected(c, now);
        else if (c->state == BH_PCONN_BUSY)
            bh_pool_release(c, true, now);
        if (c->state == BH_PCONN_CLOSING)
            bh_pool_conn_closed(c);
    }
    check(f);
    assert_true(bh_pool_empty(&f->pool));
    assert_int_equal(f->last_arm, NEVER);
    bh_pool_detach(&f->pool);
    for (int i = 0; i < f->n_conns; i++)
        free(f->conns[i]);
}

/* ---- waiters that record their callback ---- */

struct rec {
    bh_pool_waiter_t w;
    int calls;
    int status;
    int seq;
    bh_pool_conn_t *conn;
    void (*then)(struct rec *r);
    void *arg;
};

static int seq;

static void on_acquired(bh_pool_waiter_t *w, bh_pool_conn_t *c, int status)
{
    struct rec *r = bh_container_of(w, struct rec, w);
    assert_null(w->pool); /* detached before the call */
    assert_true(status == 0 ? c != NULL && c->state == BH_PCONN_BUSY : c == NULL);
    r->calls++;
    r->status = status;
    r->conn = c;
    r->seq = ++seq;
    if (r->then)
        r->then(r);
}

static int acquire(struct fake *f, struct rec *r, uint64_t deadline)
{
    bh_pool_conn_t *c = NULL;
    r->w.cb = on_acquired;
    int rc = bh_pool_acquire(&f->pool, &r->w, now, deadline, &c);
    if (rc == 0)
        r->conn = c;
    else
        assert_null(c);
    return rc;
}

/* Gets n connections through the queue (opened, connected, handed to waiters). */
static void get_conns(struct fake *f, struct rec *r, int n)
{
    int first = f->n_conns;
    for (int i = 0; i < n; i++)
        assert_int_equal(acquire(f, &r[i], NEVER), BH_POOL_QUEUED);
    assert_int_equal(f->n_conns, first + n);
    for (int i = 0; i < n; i++) {
        bh_pool_connected(C(f, first + i), now);
        assert_int_equal(r[i].calls, 1);
        assert_ptr_equal(r[i].conn, C(f, first + i));
    }
}

static int setup(void **state)
{
    (void)state;
    now = 0;
    seq = 0;
    wakes = 0;
    n_sems = 0;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    bh_pool_inbox_run(&inbox0, now); /* drops what is still queued (pools are detached) */
    for (int i = 0; i < n_sems; i++)
        bh_sem_unref(sems[i]);
    n_sems = 0;
    return 0;
}

/* ---- tests ---- */

static void test_waiters_fifo_and_direct_handoff(void **state)
{
    bh_sem_t *sem = new_sem(1);
    struct fake f;
    bh_pool_limits_t lim = default_limits();
    fake_init(&f, sem, &lim);
    struct rec a = {0}, b = {0}, c = {0};

    assert_int_equal(acquire(&f, &a, NEVER), BH_POOL_QUEUED);
    assert_int_equal(acquire(&f, &b, NEVER), BH_POOL_QUEUED);
    assert_int_equal(acquire(&f, &c, NEVER), BH_POOL_QUEUED);
    assert_int_equal(f.open_calls, 1); /* the cap holds the others back */
    assert_int_equal(a.calls + b.calls + c.calls, 0);

    bh_pool_connected(C(&f, 0), now);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.status, 0);
    assert_int_equal(b.calls + c.calls, 0);

    /* Released to a queued waiter: straight through, never idle, never checked. */
    now = 10;
    bh_pool_release(a.conn, true, now);
    assert_int_equal(b.calls, 1);
    assert_ptr_equal(b.conn, C(&f, 0));
    assert_int_equal(f.pool.n_idle, 0);
    assert_int_equal(f.alive_calls, 0);
    assert_int_equal(C(&f, 0)->idle_since_ms, 0);
    check(&f);

    bh_pool_release(b.conn, true, now);
    assert_int_equal(c.calls, 1);
    assert_true(a.seq < b.seq && b.seq < c.seq);
    assert_int_equal(C(&f, 0)->uses, 3);

    bh_pool_release(c.conn, true, now);
    assert_int_equal(f.pool.n_idle, 1);
    assert_int_equal(f.pool.opened, 1);
    assert_int_equal(f.pool.reused, 2);
    check(&f);
    fake_finish(&f);
    assert_int_equal(bh_sem_in_use(sem), 0);
}

static void test_idle_reuse_is_lifo(void **state)
{
    bh_sem_t *sem = new_sem(3);
    struct fake f;
    bh_pool_limits_t lim = default_limits();
    fake_init(&f, sem, &lim);
    struct rec r[3] = {0}, x = {0}, y = {0};

    get_conns(&f, r, 3);
    for (int i = 0; i < 3; i++) {
        now++;
        bh_pool_release(r[i].conn, true, now);
    }
    assert_int_equal(f.pool.n_idle, 3);
    check(&f);

    assert_int_equal(acquire(&f, &x, NEVER), 0);
    assert_ptr_equal(x.conn, C(&f, 2));
    assert_int_equal(x.calls, 0); /* returned, not called back */
    assert_int_equal(acquire(&f, &y, NEVER), 0);
    assert_ptr_equal(y.conn, C(&f, 1));
    assert_int_equal(f.pool.reused, 2);
    assert_int_equal(f.open_calls, 3);
    check(&f);
    fake_finish(&f);
    assert_int_equal(bh_sem_in_use(sem), 0);
}

static void test_cap_is_exact(void **state)
{
    bh_sem_t *sem = new_sem(2);
    struct fake f;
    bh_pool_limits_t lim = default_limits();
    fake_init(&f, sem, &lim);
    struct rec r[5] = {0};

    for (int i = 0; i < 5; i++)
        assert_int_equal(acquire(&f, &r[i], NEVER), BH_POOL_QUEUED);
    assert_int_equal(f.open_calls, 2);
    assert_int_equal(bh_sem_in_use(sem), 2);
    bh_pool_connected(C(&f, 0), now);
    bh_pool_connect_failed(C(&f, 1), BH_ECONNECT_FAILED, now); /* frees a permit, reused at once */
    assert_int_equal(held(&f), 2);
    assert_int_equal(bh_sem_in_use(sem), 2);
    check(&f);
    fake_finish(&f);
    assert_int_equal(bh_sem_in_use(sem), 0);
}

static void test_cap_shared_by_two_pools(void **state)
{
    bh_sem_t *sem = new_sem(3);
    struct fake fa, fb;
    bh_pool_limits_t lim = default_limits();
    fake_init(&fa, sem, &lim);
    fake_init(&fb, sem, &lim);
    struct rec a[4] = {0}, b = {0};

    get_conns(&fa, a, 3);
    assert_int_equal(acquire(&fa, &a[3], NEVER), BH_POOL_QUEUED);
    assert_int_equal(acquire(&fb, &b, NEVER), BH_POOL_QUEUED);
    assert_int_equal(fa.open_calls + fb.open_calls, 3);
    assert_int_equal(bh_sem_in_use(sem), 3);

    bh_pool_release(a[0].conn, true, now); /* to a[3], its own waiter */
    assert_int_equal(a[3].calls, 1);
    bh_pool_release(a[1].conn, false, now); /* a permit frees up, held for b's waiter */
    assert_int_equal(held(&fa) + held(&fb), 2);
    assert_int_equal(fb.open_calls, 0);
    assert_int_equal(wakes, 1);                /* the thread is told to serve b */
    bh_pool_inbox_run(&inbox0, now);           /* what the worker does when woken */
    assert_int_equal(fb.open_calls, 1);
    assert_int_equal(held(&fa) + held(&fb), 3);
    assert_int_equal(bh_sem_in_use(sem), 3);
    check(&fa);
    check(&fb);
    fake_finish(&fa);
    fake_finish(&fb);
    assert_int_equal(bh_sem_in_use(sem), 0);
}

/* Random events on two pools sharing one semaphore; the invariants hold after each of them. */
#define STRESS_RECS 8
struct stress {
    struct fake f[2];
    struct rec r[2][STRESS_RECS];
    bh_sem_t *sem;
    uint32_t rng;
};

static uint32_t rnd(struct stress *s, uint32_t n)
{
    s->rng = s->rng * 1103515245u + 12345u;
    return (s->rng >> 16) % n;
}

static bh_pool_conn_t *pick_conn(struct stress *s, struct fake *f, enum bh_pool_conn_state st)
{
    int start = f->n_conns ? (int)rnd(s, (uint32_t)f->n_conns) : 0;
    for (int i = 0; i < f->n_conns; i++) {
        bh_pool_conn_t *c = C(f, (start + i) % f->n_conns);
        if (c->state == st)
            return c;
    }
    return NULL;
}

static struct stress s;

/* Some users give their connection back from inside the callback. */
static void then_maybe_release(struct rec *r)
{
    if (r->status == 0 && rnd(&s, 3) == 0) {
        bh_pool_release(r->conn, rnd(&s, 4) != 0, now);
        r->conn = NULL;
    }
}

static void stress_run(uint32_t seed)
{
    s = (struct stress){.rng = seed};
    s.sem = bh_sem_new(4, 1);
    assert_non_null(s.sem);
    bh_pool_limits_t lim = {.max_pending = 5, .max_idle = 2, .min_idle = 1,
                            .acquire_timeout_ms = 30, .idle_timeout_ms = 50,
                            .max_lifetime_ms = 200};
    for (int i = 0; i < 2; i++)
        fake_init(&s.f[i], s.sem, &lim);

    for (int step = 0; step < 3000; step++) {
        int i = (int)rnd(&s, 2);
        struct fake *f = &s.f[i];
        struct rec *r = &s.r[i][rnd(&s, STRESS_RECS)];
        bh_pool_conn_t *c;
        switch (rnd(&s, 7)) {
        case 0: /* acquire, with a free record */
            if (r->w.pool == NULL && (r->conn == NULL || r->status != 0)) {
                *r = (struct rec){.then = then_maybe_release};
                int rc = acquire(f, r, rnd(&s, 2) ? NEVER : now + rnd(&s, 40));
                assert_true(rc == 0 || rc == BH_POOL_QUEUED || rc == BH_EPOOL_FULL);
            }
            break;
        case 1:
            if ((c = pick_conn(&s, f, BH_PCONN_CONNECTING)) != NULL) {
                if (rnd(&s, 4))
                    bh_pool_connected(c, now);
                else
                    bh_pool_connect_failed(c, BH_ECONNECT_REFUSED, now);
            }
            break;
        case 2:
            if (r->conn != NULL && r->status == 0) {
                bh_pool_release(r->conn, rnd(&s, 4) != 0, now);
                r->conn = NULL;
            }
            break;
        case 3:
            if ((c = pick_conn(&s, f, BH_PCONN_IDLE)) != NULL) {
                if (rnd(&s, 2))
                    ((struct fconn *)c)->alive = false;
                else
                    bh_pool_idle_lost(c, now);
            }
            break;
        case 4:
            now += rnd(&s, 12);
            bh_pool_inbox_run(&inbox0, now); /* what the worker does when woken */
            bh_pool_expire(&s.f[0].pool, now);
            bh_pool_expire(&s.f[1].pool, now);
            /* No waiter waits while a permit is free and nothing is opening for it. */
            if (s.f[1].pool.n_waiters > s.f[1].pool.n_connecting)
                assert_int_equal(bh_sem_in_use(s.sem), 4);
            bh_pool_expire(&s.f[0].pool, now);
            if (s.f[0].pool.n_waiters > s.f[0].pool.n_connecting)
                assert_int_equal(bh_sem_in_use(s.sem), 4);
            break;
        case 5:
            bh_pool_cancel(&r->w);
            break;
        case 6:
            bh_pool_inbox_run(&inbox0, now);
            break;
        default:
            break;
        }
        check(&s.f[0]);
        check(&s.f[1]);
        /* every permit is a connection's, or held by the lane for a waiter of one of them */
        assert_int_equal(held(&s.f[0]) + held(&s.f[1]) + bh_sem_lane(s.sem, 0)->spare,
                         bh_sem_in_use(s.sem));
        assert_true(bh_sem_in_use(s.sem) <= 4);
        for (int k = 0; k < 2; k++)
            for (int j = 0; j < STRESS_RECS; j++)
                assert_true(s.r[k][j].calls <= 1);
    }
    assert_true(s.f[0].pool.opened > 10 && s.f[0].pool.reused > 10 && s.f[0].pool.timeouts > 0);
    bh_pool_inbox_run(&inbox0, now);
    for (int i = 0; i < 2; i++) {
        fake_finish(&s.f[i]);
        for (int j = 0; j < STRESS_RECS; j++)
            assert_null(s.r[i][j].w.pool);
    }
    assert_int_equal(bh_sem_in_use(s.sem), 0);
    bh_pool_inbox_run(&inbox0, now);
    bh_sem_unref(s.sem);
}

static void test_stress_shared_semaphore(void **state)
{
    for (uint32_t seed = 1; seed <= 20; seed++)
        stress_run(seed);
}

static void test_max_pending_overflow(void **state)
{
    bh_sem_t *sem = new_sem(1);
    struct fake f;
    bh_pool_limits_t lim = default_limits();
    lim.max_pending = 2;
    fake_init(&f, sem, &lim);
    struct rec a = {0}, b = {0}, c = {0};

    assert_int_equal(acquire(&f, &a, NEVER), BH_POOL_QUEUED);
    assert_int_equal(acquire(&f, &b, NEVER), BH_POOL_QUEUED);
    assert_int_equal(acquire(&f, &c, NEVER), BH_EPOOL_FULL);
    assert_int_equal(f.pool.overflows, 1);
    assert_null(c.w.pool);
    bh_pool_cancel(&c.w); /* not queued: no-op */
    assert_int_equal(f.pool.n_waiters, 2);
    check(&f);
    fake_finish(&f);
    assert_int_equal(c.calls, 0);
    assert_int_equal(a.status, BH_EPOOL_CLOSED);
}

static void test_acquire_timeout_and_deadline(void **state)
{
    bh_sem_t *sem = new_sem(1);
    struct fake f;
    bh_pool_limits_t lim = default_limits();
    lim.acquire_timeout_ms = 100;
    fake_init(&f, sem, &lim);
    struct rec a = {0}, b = {0}, c = {0};

    assert_int_equal(acquire(&f, &a, NEVER), BH_POOL_QUEUED);
    assert_int_equal(a.w.deadline_ms, 100);
    assert_int_equal(f.last_arm, 100);
    now = 50;
    assert_int_equal(acquire(&f, &b, 80), BH_POOL_QUEUED); /* the request's own deadline */
    assert_int_equal(b.w.deadline_ms, 80);
    assert_int_equal(b.w.queued_ms, 50);
    assert_int_equal(f.last_arm, 80);
    assert_int_equal(acquire(&f, &c, 500), BH_POOL_QUEUED); /* later than acquire_timeout */
    assert_int_equal(c.w.deadline_ms, 150);
    assert_int_equal(f.last_arm, 80);

    bh_pool_expire(&f.pool, 79);
    assert_int_equal(a.calls + b.calls + c.calls, 0);
    bh_pool_expire(&f.pool, 80);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.status, BH_EPOOL_TIMEOUT);
    assert_int_equal(a.calls, 0);
    assert_int_equal(f.last_arm, 100);
    now = 100;
    bh_pool_expire(&f.pool, now);
    assert_int_equal(a.status, BH_EPOOL_TIMEOUT);
    assert_int_equal(f.pool.timeouts, 2);
    assert_int_equal(f.last_arm, 150);
    check(&f);
    now = 150;
    bh_pool_expire(&f.pool, now);
    assert_int_equal(c.status, BH_EPOOL_TIMEOUT);
    assert_int_equal(f.pool.timeouts, 3);
    assert_int_equal(f.last_arm, NEVER);

    /* The connection opened for them arrives late: it waits idle for the next user. */
    bh_pool_connected(C(&f, 0), now);
    assert_int_equal(f.pool.n_idle, 1);
    check(&f);
    fake_finish(&f);
}

static void test_cancel(void **state)
{
    bh_sem_t *sem = new_sem(1);
    struct fake f;
    bh_pool_limits_t lim = default_limits();
    fake_init(&f, sem, &lim);
    struct rec a = {0}, b = {0}, never_used = {0};

    bh_pool_cancel(&never_used.w);
    assert_int_equal(acquire(&f, &a, NEVER), BH_POOL_QUEUED);
    assert_int_equal(acquire(&f, &b, NEVER), BH_POOL_QUEUED);
    bh_pool_cancel(&a.w);
    bh_pool_cancel(&a.w);
    assert_null(a.w.pool);
    assert_int_equal(f.pool.n_waiters, 1);
    check(&f);
    bh_pool_connected(C(&f, 0), now);
    assert_int_equal(a.calls, 0);
    assert_int_equal(b.calls, 1);
    bh_pool_cancel(&b.w); /* after its callback: no-op */

    bh_pool_release(b.conn, true, now);
    struct rec x = {0}, c = {0};
    assert_int_equal(acquire(&f, &x, NEVER), 0);
    assert_int_equal(acquire(&f, &c, NEVER), BH_POOL_QUEUED); /* no permit left */
    assert_int_equal(f.last_arm, 1000);
    bh_pool_cancel(&c.w);
    assert_int_equal(f.last_arm, NEVER);
    assert_int_equal(f.pool.n_waiters, 0);
    check(&f);
    fake_finish(&f);
    assert_int_equal(c.calls, 0);
    assert_int_equal(bh_sem_in_use(sem), 0);
}

static void test_connect_failure_goes_to_head_waiter(void **state)
{
    bh_sem_t *sem = new_sem(1);
    struct fake f;
    bh_pool_limits_t lim = default_limits();
    fake_init(&f, sem, &lim);
    struct rec a = {0}, b = {0};

    assert_int_equal(acquire(&f, &a, NEVER), BH_POOL_QUEUED);
    assert_int_equal(acquire(&f, &b, NEVER), BH_POOL_QUEUED);
    bh_pool_connect_failed(C(&f, 0), BH_ECONNECT_REFUSED, now);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.status, BH_ECONNECT_REFUSED);
    assert_int_equal(b.calls, 0);
    assert_int_equal(f.open_calls, 2); /* a fresh attempt for b */
    assert_int_equal(f.pool.closed, 1);
    check(&f);
    bh_pool_connected(C(&f, 1), now);
    assert_int_equal(b.status, 0);
    assert_ptr_equal(b.conn, C(&f, 1));
    check(&f);
    fake_finish(&f);
    assert_int_equal(bh_sem_in_use(sem), 0);
}

static void test_open_failing_at_once(void **state)
{
    bh_sem_t *sem = new_sem(1);
    struct fake f;
    bh_pool_limits_t lim = default_limits();
    fake_init(&f, sem, &lim);
    struct rec a = {0}, b = {0}, c = {0};

    /* In acquire: the caller hears it at once, nothing is queued, the permit is back. */
    f.fail_open = BH_ECONNECT_FAILED;
    assert_int_equal(acquire(&f, &a, NEVER), BH_ECONNECT_FAILED);
    assert_int_equal(a.calls, 0);
    assert_null(a.w.pool);
    assert_int_equal(f.pool.n_waiters, 0);
    assert_int_equal(bh_sem_in_use(sem), 0);
    assert_int_equal(f.last_arm, NEVER);

    /* In dispatch, after a connect failure: one waiter per failed attempt. */
    f.fail_open = 0;
    assert_int_equal(acquire(&f, &b, NEVER), BH_POOL_QUEUED);
    assert_int_equal(acquire(&f, &c, NEVER), BH_POOL_QUEUED);
    f.fail_open = BH_ECONNECT_FAILED;
    bh_pool_connect_failed(C(&f, 0), BH_ECONNECT_TIMEOUT, now);
    assert_int_equal(b.status, BH_ECONNECT_TIMEOUT);
    assert_int_equal(c.status, BH_ECONNECT_FAILED);
    assert_int_equal(f.pool.n_waiters, 0);
    assert_int_equal(bh_sem_in_use(sem), 0);
    check(&f);
    fake_finish(&f);
}

static void test_dead_idle_is_skipped(void **state)
{
    bh_sem_t *sem = new_sem(2);
    struct fake f;
    bh_pool_limits_t lim = default_limits();
    fake_init(&f, sem, &lim);
    struct rec r[2] = {0}, x = {0}, y = {0}, z = {0};

    get_conns(&f, r, 2);
    bh_pool_release(r[0].conn, true, now);
    bh_pool_release(r[1].conn, true, now);
    ((struct fconn *)C(&f, 1))->alive = false; /* the warmest one */
    assert_int_equal(acquire(&f, &x, NEVER), 0);
    assert_ptr_equal(x.conn, C(&f, 0));
    assert_true(f.conns[1]->close_called);
    assert_int_equal(f.pool.n_idle, 0);
    check(&f);

    /* Only a dead one left: the waiter is queued for a new connection, not failed. */
    bh_pool_release(x.conn, true, now);
    ((struct fconn *)C(&f, 0))->alive = false;
    assert_int_equal(acquire(&f, &y, NEVER), BH_POOL_QUEUED);
    assert_true(f.conns[0]->close_called);
    assert_int_equal(f.open_calls, 3);
    bh_pool_connected(C(&f, 2), now);
    assert_int_equal(y.status, 0);
    assert_ptr_equal(y.conn, C(&f, 2));

    /* The concrete layer notices a peer close on an idle connection. */
    bh_pool_release(y.conn, true, now);
    bh_pool_idle_lost(C(&f, 2), now);
    assert_true(f.conns[2]->close_called);
    assert_int_equal(f.pool.n_idle, 0);
    assert_int_equal(acquire(&f, &z, NEVER), BH_POOL_QUEUED);
    check(&f);
    fake_finish(&f);
    assert_int_equal(f.pool.closed, 4);
    assert_int_equal(bh_sem_in_use(sem), 0);
}

static void test_idle_timeout(void **state)
{
    bh_sem_t *sem = new_sem(2);
    struct fake f;
    bh_pool_limits_t lim = default_limits();
    lim.idle_timeout_ms = 1000;
    fake_init(&f, sem, &lim);
    struct rec r[2] = {0}, x = {0};

    get_conns(&f, r, 2);
    bh_pool_release(r[0].conn, true, now);
    assert_int_equal(f.last_arm, 1000);
    now = 500;
    bh_pool_release(r[1].conn, true, now);
    assert_int_equal(f.last_arm, 1000);
    bh_pool_expire(&f.pool, 999);
    assert_int_equal(f.pool.n_idle, 2);
    bh_pool_expire(&f.pool, 1000);
    assert_true(f.conns[0]->close_called);
    assert_int_equal(f.pool.n_idle, 1);
    assert_int_equal(f.last_arm, 1500);
    check(&f);

    /* Past its idle_timeout but before the timer ran: not handed out either. */
    now = 1600;
    assert_int_equal(acquire(&f, &x, NEVER), BH_POOL_QUEUED);
    assert_true(f.conns[1]->close_called);
    assert_int_equal(f.last_arm, 2600);
    check(&f);
    fake_finish(&f);
    assert_int_equal(bh_sem_in_use(sem), 0);
}

static void test_lifetime_prevents_reuse(void **state)
{
    bh_sem_t *sem = new_sem(1);
    struct fake f;
    bh_pool_limits_t lim = default_limits();
    lim.max_lifetime_ms = 1000;
    fake_init(&f, sem, &lim);
    struct rec r = {0}, x = {0}, y = {0}, z = {0};

    get_conns(&f, &r, 1);
    assert_int_equal(C(&f, 0)->expires_ms, 1000);
    now = 500;
    bh_pool_release(r.conn, true, now);
    assert_int_equal(f.last_arm, 1000);
    now = 999;
    assert_int_equal(acquire(&f, &x, NEVER), 0);
    now = 1000;
    bh_pool_release(x.conn, true, now); /* too old to keep */
    assert_true(f.conns[0]->close_called);
    assert_int_equal(f.pool.n_idle, 0);

    /* A limit the concrete layer learned (Keep-Alive: timeout=N) counts the same. */
    get_conns(&f, &y, 1);
    C(&f, 1)->expires_ms = 1300;
    now = 1100;
    bh_pool_release(y.conn, true, now);
    assert_int_equal(f.last_arm, 1300);
    now = 1300;
    assert_int_equal(acquire(&f, &z, NEVER), BH_POOL_QUEUED);
    assert_true(f.conns[1]->close_called);
    assert_int_equal(f.open_calls, 3);
    check(&f);
    fake_finish(&f);
    assert_int_equal(bh_sem_in_use(sem), 0);
}

static void test_max_idle(void **state)
{
    bh_sem_t *sem = new_sem(3);
    struct fake f;
    bh_pool_limits_t lim = default_limits();
    lim.max_idle = 1;
    fake_init(&f, sem, &lim);
    struct rec r[2] = {0}, a = {0};

    get_conns(&f, r, 2);
    bh_pool_release(r[0].conn, true, now);
    bh_pool_release(r[1].conn, true, now);
    assert_int_equal(f.pool.n_idle, 1);
    assert_true(f.conns[1]->close_called);

    /* A connection whose waiter left arrives while idle is full. */
    assert_int_equal(acquire(&f, &a, NEVER), 0);
    struct rec b = {0};
    assert_int_equal(acquire(&f, &b, NEVER), BH_POOL_QUEUED);
    bh_pool_release(a.conn, true, now); /* goes to b, the new one is left without a waiter */
    assert_int_equal(b.status, 0);
    bh_pool_release(b.conn, true, now);
    bh_pool_connected(C(&f, 2), now);
    assert_true(f.conns[2]->close_called);
    assert_int_equal(f.pool.n_idle, 1);
    assert_int_equal(f.pool.closed, 2);
    check(&f);
    fake_finish(&f);
    assert_int_equal(bh_sem_in_use(sem), 0);
}

static void test_min_idle_prewarms(void **state)
{
    bh_sem_t *sem = new_sem(5);
    struct fake f;
    bh_pool_limits_t lim = default_limits();
    lim.min_idle = 2;
    lim.max_idle = 4;
    fake_init(&f, sem, &lim);
    struct rec x = {0};

    assert_int_equal(f.open_calls, 0); /* init never calls ops */
    bh_pool_expire(&f.pool, now);
    assert_int_equal(f.open_calls, 2);
    bh_pool_connected(C(&f, 0), now);
    bh_pool_connected(C(&f, 1), now);
    assert_int_equal(f.pool.n_idle, 2);
    assert_int_equal(acquire(&f, &x, NEVER), 0);
    assert_int_equal(f.open_calls, 3); /* topped up again */
    bh_pool_connected(C(&f, 2), now);
    assert_int_equal(f.pool.n_idle, 2);
    check(&f);

    /* A failing pre-warm is retried on the next event, not in a loop. */
    f.fail_open = BH_ECONNECT_FAILED;
    bh_pool_idle_lost(C(&f, 2), now);
    assert_int_equal(f.open_calls, 4);
    bh_pool_expire(&f.pool, now);
    assert_int_equal(f.open_calls, 5);
    assert_int_equal(bh_sem_in_use(sem), 2);
    f.fail_open = 0;
    check(&f);
    fake_finish(&f);
    assert_int_equal(bh_sem_in_use(sem), 0);

    /* min_idle above max_idle keeps max_idle: otherwise each connected() would close one. */
    struct fake g;
    lim.min_idle = 3;
    lim.max_idle = 1;
    fake_init(&g, sem, &lim);
    bh_pool_expire(&g.pool, now);
    assert_int_equal(g.open_calls, 1);
    fake_finish(&g);
}

static void test_shutdown(void **state)
{
    bh_sem_t *sem = new_sem(3);
    struct fake f;
    bh_pool_limits_t lim = default_limits();
    fake_init(&f, sem, &lim);
    f.async_close = true;
    struct rec r[2] = {0}, b = {0}, c = {0}, after = {0};

    get_conns(&f, r, 2);                                      /* conns 0 and 1 busy */
    assert_int_equal(acquire(&f, &b, NEVER), BH_POOL_QUEUED); /* conn 2 connecting */
    assert_int_equal(acquire(&f, &c, NEVER), BH_POOL_QUEUED); /* no permit left */
    bh_pool_shutdown(&f.pool, now);
    assert_int_equal(b.status, BH_EPOOL_CLOSED);
    assert_int_equal(c.status, BH_EPOOL_CLOSED);
    assert_int_equal(f.pool.n_waiters, 0);
    assert_int_equal(f.last_arm, NEVER);
    assert_int_equal(acquire(&f, &after, NEVER), BH_EPOOL_CLOSED);

    bh_pool_connected(C(&f, 2), now); /* closed when it reports */
    bh_pool_release(r[0].conn, true, now); /* closed when released */
    bh_pool_release(r[1].conn, true, now);
    assert_int_equal(held(&f), 0);
    assert_int_equal(bh_sem_in_use(sem), 0);
    assert_int_equal(f.open_calls, 3);
    assert_false(bh_pool_empty(&f.pool)); /* until the concrete closes finish */
    for (int i = 0; i < 3; i++)
        bh_pool_conn_closed(C(&f, i));
    assert_true(bh_pool_empty(&f.pool));
    check(&f);
    fake_finish(&f);

    /* Idle connections are closed at once. */
    struct fake g;
    struct rec q[2] = {0};
    fake_init(&g, sem, &lim);
    get_conns(&g, q, 2);
    bh_pool_release(q[0].conn, true, now);
    bh_pool_release(q[1].conn, true, now);
    bh_pool_shutdown(&g.pool, now);
    assert_int_equal(g.close_calls, 2);
    assert_true(bh_pool_empty(&g.pool));
    fake_finish(&g);
    assert_int_equal(bh_sem_in_use(sem), 0);
}

/* Callbacks that call back into the pool. */
static struct rec *re_b, *re_a2;
static struct fake *re_f;
static bh_pool_conn_t *re_freed_got;

static void then_cancel_release_acquire(struct rec *r)
{
    bh_pool_cancel(&re_b->w);
    bh_pool_release(r->conn, true, now); /* to the next waiter, from inside a callback */
    r->conn = NULL;
    assert_int_equal(acquire(re_f, re_a2, NEVER), BH_POOL_QUEUED); /* behind those queued */
}

static void then_free(struct rec *r)
{
    re_freed_got = r->conn;
    free(r);
}

static void then_shutdown(struct rec *r)
{
    bh_pool_shutdown(&re_f->pool, now);
}

static void test_reentrant_callbacks(void **state)
{
    bh_sem_t *sem = new_sem(1);
    struct fake f;
    bh_pool_limits_t lim = default_limits();
    fake_init(&f, sem, &lim);
    struct rec a = {.then = then_cancel_release_acquire}, b = {0}, d = {0}, a2 = {0};
    struct rec *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->then = then_free;
    re_b = &b;
    re_a2 = &a2;
    re_f = &f;

    assert_int_equal(acquire(&f, &a, NEVER), BH_POOL_QUEUED);
    assert_int_equal(acquire(&f, &b, NEVER), BH_POOL_QUEUED);
    assert_int_equal(acquire(&f, c, NEVER), BH_POOL_QUEUED);
    assert_int_equal(acquire(&f, &d, NEVER), BH_POOL_QUEUED);
    bh_pool_connected(C(&f, 0), now);
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 0);
    assert_ptr_equal(re_freed_got, C(&f, 0)); /* c got it, and freed itself */
    assert_int_equal(d.calls, 0);
    assert_int_equal(f.pool.n_waiters, 2); /* d, a2 */
    check(&f);

    bh_pool_release(re_freed_got, true, now);
    assert_int_equal(d.calls, 1);
    bh_pool_release(d.conn, true, now);
    assert_int_equal(a2.calls, 1);
    assert_true(a.seq < d.seq && d.seq < a2.seq);
    check(&f);

    /* A callback that shuts the pool down: the others hear CLOSED, its conn stays its own. */
    struct rec x = {.then = then_shutdown}, y = {0};
    assert_int_equal(acquire(&f, &x, NEVER), BH_POOL_QUEUED);
    assert_int_equal(acquire(&f, &y, NEVER), BH_POOL_QUEUED);
    bh_pool_release(a2.conn, true, now);
    assert_int_equal(x.status, 0);
    assert_int_equal(y.status, BH_EPOOL_CLOSED);
    assert_int_equal(f.pool.n_busy, 1);
    bh_pool_release(x.conn, true, now);
    assert_int_equal(f.pool.n_busy + f.pool.n_idle, 0);
    fake_finish(&f);
    assert_int_equal(bh_sem_in_use(sem), 0);
}

/* A callback run by the dispatch loop itself (an open failing at once) that re-enters. */
static struct rec *rd_x, *rd_d;

static void then_release_and_acquire(struct rec *r)
{
    bh_pool_release(rd_x->conn, false, now); /* frees a permit while the loop runs */
    rd_x->conn = NULL;
    re_f->fail_open = 0;
    assert_int_equal(acquire(re_f, rd_d, NEVER), BH_POOL_QUEUED);
}

static void test_reentry_during_dispatch(void **state)
{
    bh_sem_t *sem = new_sem(2);
    struct fake f;
    bh_pool_limits_t lim = default_limits();
    fake_init(&f, sem, &lim);
    struct rec x = {0}, b = {0}, c = {.then = then_release_and_acquire}, d = {0};
    rd_x = &x;
    rd_d = &d;
    re_f = &f;

    get_conns(&f, &x, 1);
    assert_int_equal(acquire(&f, &b, NEVER), BH_POOL_QUEUED);
    assert_int_equal(acquire(&f, &c, NEVER), BH_POOL_QUEUED); /* no permit left */
    f.fail_open = BH_ECONNECT_FAILED;
    bh_pool_connect_failed(C(&f, 1), BH_ECONNECT_REFUSED, now);
    assert_int_equal(b.status, BH_ECONNECT_REFUSED);
    assert_int_equal(c.status, BH_ECONNECT_FAILED); /* the retry for c failed at once */
    assert_int_equal(f.open_calls, 4);              /* x, b, c's retry, d */
    assert_int_equal(f.pool.n_connecting, 1);
    assert_int_equal(f.pool.n_waiters, 1);
    check(&f);
    bh_pool_connected(C(&f, 2), now);
    assert_ptr_equal(d.conn, C(&f, 2));
    fake_finish(&f);
    assert_int_equal(bh_sem_in_use(sem), 0);
}

static void test_counters_and_arm(void **state)
{
    bh_sem_t *sem = new_sem(1);
    struct fake f;
    bh_pool_limits_t lim = default_limits();
    lim.max_pending = 1;
    lim.acquire_timeout_ms = 100;
    lim.idle_timeout_ms = 300;
    fake_init(&f, sem, &lim);
    struct rec a = {0}, b = {0}, c = {0}, d = {0};

    assert_int_equal(acquire(&f, &a, NEVER), BH_POOL_QUEUED);
    assert_int_equal(f.arm_calls, 1);
    assert_int_equal(acquire(&f, &b, NEVER), BH_EPOOL_FULL);
    assert_int_equal(f.arm_calls, 1); /* unchanged deadline: no call */
    bh_pool_connected(C(&f, 0), now);
    assert_int_equal(f.last_arm, NEVER);
    now = 10;
    bh_pool_release(a.conn, true, now);
    assert_int_equal(f.last_arm, 310);
    assert_int_equal(acquire(&f, &c, NEVER), 0);
    assert_int_equal(f.last_arm, NEVER);
    assert_int_equal(acquire(&f, &d, 50), BH_POOL_QUEUED);
    assert_int_equal(f.last_arm, 50);
    bh_pool_expire(&f.pool, 50);
    assert_int_equal(d.status, BH_EPOOL_TIMEOUT);
    bh_pool_release(c.conn, false, now);
    assert_int_equal(f.pool.opened, 1);
    assert_int_equal(f.pool.reused, 1);
    assert_int_equal(f.pool.overflows, 1);
    assert_int_equal(f.pool.timeouts, 1);
    assert_int_equal(f.pool.closed, 1);
    assert_int_equal(f.arm_calls, 6);
    assert_int_equal(bh_pool_next_deadline(&f.pool), NEVER);
    check(&f);
    fake_finish(&f);
    assert_int_equal(bh_sem_in_use(sem), 0);
}

/* ---- several lanes (workers) on one semaphore, driven from this one thread ---------------- */

/* A simulated worker: its inbox (lane i) and how often it was woken. */
struct worker {
    bh_sem_inbox_t in;
    int wakes;
};

static void worker_wake(bh_sem_inbox_t *in)
{
    ((struct worker *)in->data)->wakes++;
}

static void workers_init(struct worker *w, int n)
{
    for (int i = 0; i < n; i++)
        w[i] = (struct worker){.in = {.lane = (uint32_t)i, .wake = worker_wake, .data = &w[i]}};
}

static bh_sem_t *new_sem_lanes(int64_t max, uint32_t lanes)
{
    assert_true(n_sems < 8);
    bh_sem_t *sm = bh_sem_new(max, lanes);
    assert_non_null(sm);
    return sems[n_sems++] = sm;
}

static void fake_init_on(struct fake *f, bh_sem_t *sem, struct worker *w,
                         const bh_pool_limits_t *limits)
{
    *f = (struct fake){.last_arm = NEVER};
    bh_pool_init(&f->pool, &fake_ops, sem, &w->in, limits, f);
}

/* The last connection f opened, reported connected. */
static void connect_last(struct fake *f)
{
    bh_pool_connected(C(f, f->n_conns - 1), now);
}

/* Permits held by connections and by lanes (spare, or granted and not yet taken). */
static int64_t accounted(bh_sem_t *sem, struct fake **f, int n)
{
    int64_t sum = 0;
    for (int i = 0; i < n; i++)
        sum += held(f[i]);
    for (uint32_t i = 0; i < sem->n_lanes; i++) {
        bh_sem_lane_t *l = bh_sem_lane(sem, i);
        sum += l->spare + (atomic_load(&l->granted) & ~BH_SEM_GONE);
    }
    return sum;
}

/* Worker B keeps every permit busy; a waiter on worker A queued between B's waiters is served
 * in turn: B keeps a connection for its own head only while that head queued first, then hands
 * the permit over (close, A's lane is granted it, only A is woken), and A opens. */
static void test_fifo_across_workers(void **state)
{
    bh_sem_t *sem = new_sem_lanes(1, 3);
    struct worker w[3];
    workers_init(w, 3);
    struct fake fa, fb, fc;
    bh_pool_limits_t lim = default_limits();
    fake_init_on(&fa, sem, &w[0], &lim);
    fake_init_on(&fb, sem, &w[1], &lim);
    fake_init_on(&fc, sem, &w[2], &lim); /* a third worker with nothing to do: never woken */
    struct fake *all[] = {&fa, &fb, &fc};
    struct rec b1 = {0}, b2 = {0}, b3 = {0}, a1 = {0};

    get_conns(&fb, &b1, 1);
    assert_int_equal(acquire(&fb, &b2, NEVER), BH_POOL_QUEUED);
    assert_int_equal(acquire(&fa, &a1, NEVER), BH_POOL_QUEUED);
    assert_int_equal(acquire(&fb, &b3, NEVER), BH_POOL_QUEUED);
    assert_true(b2.w.ticket < a1.w.ticket && a1.w.ticket < b3.w.ticket);
    assert_int_equal(w[0].wakes + w[1].wakes + w[2].wakes, 0); /* no idle anywhere to ask for */

    bh_pool_release(b1.conn, true, now); /* b2 queued before a1: B keeps it */
    assert_ptr_equal(b2.conn, b1.conn);
    assert_int_equal(fb.close_calls, 0);

    bh_pool_release(b2.conn, true, now); /* a1 queued before b3: the permit goes to A */
    assert_int_equal(b3.calls, 0);
    assert_int_equal(fb.close_calls, 1);
    assert_int_equal(w[0].wakes, 1);
    assert_int_equal(w[1].wakes + w[2].wakes, 0);
    assert_int_equal(bh_sem_in_use(sem), 1); /* never free on the way */
    assert_int_equal(accounted(sem, all, 3), 1);
    assert_int_equal(fa.open_calls, 0);
    bh_pool_inbox_run(&w[0].in, now);
    assert_int_equal(fa.open_calls, 1);
    connect_last(&fa);
    assert_int_equal(a1.calls, 1);
    assert_int_equal(a1.status, 0);

    bh_pool_release(a1.conn, true, now); /* A has nobody waiting; b3 needs it */
    assert_int_equal(fa.close_calls, 1);
    assert_int_equal(fa.pool.n_idle, 0);
    assert_int_equal(w[1].wakes, 1);
    bh_pool_inbox_run(&w[1].in, now);
    connect_last(&fb);
    assert_int_equal(b3.status, 0);
    assert_true(b2.seq < a1.seq && a1.seq < b3.seq);
    assert_int_equal(w[2].wakes, 0);
    bh_pool_release(b3.conn, true, now);
    assert_int_equal(fb.pool.n_idle, 1);
    for (int i = 0; i < 3; i++) {
        check(all[i]);
        fake_finish(all[i]);
    }
    assert_int_equal(bh_sem_in_use(sem), 0);
}

/* Idle connections are yielded only by the worker holding them, only when asked, and one per
 * waiter that has no connection on the way: waiters with a connection opening do not count. */
static void test_yield_only_for_needy_waiters(void **state)
{
    bh_sem_t *sem = new_sem_lanes(4, 3);
    struct worker w[3];
    workers_init(w, 3);
    struct fake fa, fb, fc;
    bh_pool_limits_t lim = default_limits();
    fake_init_on(&fa, sem, &w[0], &lim);
    fake_init_on(&fb, sem, &w[1], &lim);
    fake_init_on(&fc, sem, &w[2], &lim);
    struct fake *all[] = {&fa, &fb, &fc};
    struct rec b[4] = {0}, a[4] = {0};

    get_conns(&fb, b, 4);
    for (int i = 0; i < 4; i++)
        bh_pool_release(b[i].conn, true, now);
    assert_int_equal(fb.pool.n_idle, 4);
    w[1].wakes = 0;

    for (int i = 0; i < 3; i++)
        assert_int_equal(acquire(&fa, &a[i], NEVER), BH_POOL_QUEUED);
    assert_int_equal(w[1].wakes, 1); /* B, which holds idle connections, is asked once */
    assert_int_equal(w[0].wakes + w[2].wakes, 0);
    bh_pool_inbox_run(&w[1].in, now);
    assert_int_equal(fb.close_calls, 3); /* three waiters without a connection: three permits */
    assert_int_equal(fb.pool.n_idle, 1);
    assert_int_equal(accounted(sem, all, 3), 4);
    assert_int_equal(w[0].wakes, 1);
    bh_pool_inbox_run(&w[0].in, now);
    assert_int_equal(fa.pool.n_connecting, 3);

    /* Each of A's waiters has a connection on the way: asked again, B closes nothing. */
    atomic_store(&bh_sem_lane(sem, 1)->asked, 1);
    bh_sem_post(bh_sem_lane(sem, 1));
    bh_pool_inbox_run(&w[1].in, now);
    assert_int_equal(fb.close_calls, 3);

    /* A fourth waiter: one more. */
    assert_int_equal(acquire(&fa, &a[3], NEVER), BH_POOL_QUEUED);
    bh_pool_inbox_run(&w[1].in, now);
    assert_int_equal(fb.close_calls, 4);
    assert_int_equal(fb.pool.n_idle, 0);
    bh_pool_inbox_run(&w[0].in, now);
    assert_int_equal(fa.pool.n_connecting, 4);
    assert_int_equal(w[2].wakes, 0);
    for (int i = 0; i < fa.n_conns; i++)
        bh_pool_connected(C(&fa, i), now);
    for (int i = 0; i < 4; i++)
        assert_int_equal(a[i].status, 0);
    for (int i = 0; i < 3; i++) {
        check(all[i]);
        fake_finish(all[i]);
    }
    assert_int_equal(bh_sem_in_use(sem), 0);
}

/* A permit handed to a worker whose waiter left meanwhile goes on to the next oldest waiter;
 * one handed to a worker whose last pool is gone too. Nothing is lost or counted twice. */
static void test_handover_to_a_waiter_that_left(void **state)
{
    bh_sem_t *sem = new_sem_lanes(1, 3);
    struct worker w[3];
    workers_init(w, 3);
    struct fake fa, fb, fc;
    bh_pool_limits_t lim = default_limits();
    fake_init_on(&fa, sem, &w[0], &lim);
    fake_init_on(&fb, sem, &w[1], &lim);
    fake_init_on(&fc, sem, &w[2], &lim);
    struct fake *all[] = {&fa, &fb, &fc};
    struct rec b1 = {0}, a1 = {0}, c1 = {0};

    get_conns(&fb, &b1, 1);
    assert_int_equal(acquire(&fa, &a1, NEVER), BH_POOL_QUEUED);
    assert_int_equal(acquire(&fc, &c1, NEVER), BH_POOL_QUEUED);
    bh_pool_release(b1.conn, true, now); /* to A (oldest), B closes its connection */
    assert_int_equal(w[0].wakes, 1);
    bh_pool_cancel(&a1.w); /* A's waiter leaves before A's thread runs */
    assert_int_equal(accounted(sem, all, 3), 1);
    bh_pool_inbox_run(&w[0].in, now);
    assert_int_equal(fa.open_calls, 0);
    assert_int_equal(w[2].wakes, 1); /* passed on to C */
    assert_int_equal(bh_sem_in_use(sem), 1);
    bh_pool_inbox_run(&w[2].in, now);
    connect_last(&fc);
    assert_int_equal(c1.status, 0);

    /* Granted to a lane whose last pool detaches before it runs: passed on as well. */
    struct rec b2 = {0};
    assert_int_equal(acquire(&fb, &b2, NEVER), BH_POOL_QUEUED);
    struct rec a2 = {0};
    assert_int_equal(acquire(&fa, &a2, NEVER), BH_POOL_QUEUED);
    bh_pool_release(c1.conn, true, now); /* to B (oldest) */
    assert_int_equal(bh_sem_lane(sem, 1)->granted, 1);
    bh_pool_cancel(&b2.w);
    bh_pool_detach(&fb.pool); /* B's pool is gone (a reload replaced it) */
    assert_int_equal(bh_sem_lane(sem, 1)->granted, BH_SEM_GONE);
    assert_int_equal(bh_sem_lane(sem, 0)->granted, 1); /* to A's a2 */
    bh_pool_inbox_run(&w[1].in, now);                  /* B's message is only dropped */
    bh_pool_inbox_run(&w[0].in, now);
    connect_last(&fa);
    assert_int_equal(a2.status, 0);
    bh_pool_release(a2.conn, false, now);
    assert_int_equal(bh_sem_in_use(sem), 0);
    for (int i = 0; i < 3; i++) {
        if (all[i] == &fb) {
            for (int j = 0; j < fb.n_conns; j++)
                free(fb.conns[j]);
            continue;
        }
        fake_finish(all[i]);
    }
    assert_int_equal(bh_sem_in_use(sem), 0);
}


/* A key's own cap inside a shared semaphore (a Postgres user inside its database's cap): the
 * capped pool opens no more than its cap, its extra waiters wait for its own connections without
 * taking permits, and the other pool still gets the rest of the semaphore. */
static void test_pool_cap_inside_shared_semaphore(void **state)
{
    bh_sem_t *sem = new_sem(4);
    struct fake fa, fb;
    bh_pool_limits_t lim = default_limits();
    bh_pool_cap_t cap = {.max = 2};
    fake_init(&fa, sem, &lim);
    fa.pool.cap = &cap;
    fake_init(&fb, sem, &lim);
    struct rec a[3] = {0}, b[2] = {0};

    get_conns(&fa, a, 2);
    assert_int_equal(atomic_load(&cap.used), 2);
    assert_int_equal(acquire(&fa, &a[2], NEVER), BH_POOL_QUEUED);
    assert_int_equal(fa.open_calls, 2); /* capped: queued without opening */
    get_conns(&fb, b, 2);               /* the rest of the semaphore is B's */
    assert_int_equal(bh_sem_in_use(sem), 4);

    bh_pool_release(a[0].conn, true, now); /* to A's own waiter */
    assert_int_equal(a[2].calls, 1);
    assert_int_equal(a[2].status, 0);
    bh_pool_release(a[1].conn, false, now); /* closed: the cap and a permit come back */
    assert_int_equal(atomic_load(&cap.used), 1);
    assert_int_equal(bh_sem_in_use(sem), 3);
    check(&fa);
    check(&fb);
    fake_finish(&fa);
    fake_finish(&fb);
    assert_int_equal(atomic_load(&cap.used), 0);
    assert_int_equal(bh_sem_in_use(sem), 0);
}

/* The cap is shared by the key's pools on two workers: the second worker's waiter does not open
 * while the first holds the cap, and is woken when a unit comes back. */
static void test_pool_cap_across_workers(void **state)
{
    bh_sem_t *sem = new_sem_lanes(4, 2);
    struct worker w[2];
    workers_init(w, 2);
    struct fake f0, f1;
    bh_pool_limits_t lim = default_limits();
    bh_pool_cap_t cap = {.max = 1};
    fake_init_on(&f0, sem, &w[0], &lim);
    fake_init_on(&f1, sem, &w[1], &lim);
    f0.pool.cap = f1.pool.cap = &cap;
    struct rec r0 = {0}, r1 = {0};

    get_conns(&f0, &r0, 1);
    assert_int_equal(acquire(&f1, &r1, NEVER), BH_POOL_QUEUED);
    assert_int_equal(f1.open_calls, 0);
    assert_int_equal(atomic_load(&sem->lanes[1].need), 0); /* not needy: a permit won't help */
    int before = w[1].wakes;
    bh_pool_release(r0.conn, false, now);
    assert_int_equal(w[1].wakes, before + 1);
    bh_pool_inbox_run(&w[1].in, now);
    assert_int_equal(f1.open_calls, 1);
    connect_last(&f1);
    assert_int_equal(r1.status, 0);
    assert_int_equal(atomic_load(&cap.used), 1);

    /* The key's connection sits idle on worker 1 when worker 0 needs one: worker 1 is asked to
     * close it, and worker 0 is woken to open. */
    bh_pool_release(r1.conn, true, now);
    assert_int_equal(f1.pool.n_idle, 1);
    struct rec r2 = {0};
    before = w[1].wakes;
    assert_int_equal(acquire(&f0, &r2, NEVER), BH_POOL_QUEUED);
    assert_int_equal(f0.open_calls, 1);
    assert_int_equal(w[1].wakes, before + 1);
    bh_pool_inbox_run(&w[0].in, now); /* nothing to do yet */
    assert_int_equal(f0.open_calls, 1);
    before = w[0].wakes;
    bh_pool_inbox_run(&w[1].in, now);
    assert_int_equal(f1.pool.n_idle, 0);
    assert_int_equal(w[0].wakes, before + 1);
    bh_pool_inbox_run(&w[0].in, now);
    assert_int_equal(f0.open_calls, 2);
    connect_last(&f0);
    assert_int_equal(r2.status, 0);
    assert_int_equal(atomic_load(&cap.used), 1);
    fake_finish(&f0);
    fake_finish(&f1);
    assert_int_equal(atomic_load(&cap.used), 0);
    assert_int_equal(bh_sem_in_use(sem), 0);
}

/* Two pools of one worker on one semaphore (two endpoints): a connection given back on one while
 * the other has an older waiter is closed for it, and the other opens from the inbox. */
static void test_fifo_across_pools_of_one_worker(void **state)
{
    bh_sem_t *sem = new_sem(1);
    struct fake fa, fb;
    bh_pool_limits_t lim = default_limits();
    fake_init(&fa, sem, &lim);
    fake_init(&fb, sem, &lim);
    struct rec a1 = {0}, b1 = {0}, a2 = {0};

    get_conns(&fa, &a1, 1);
    assert_int_equal(acquire(&fb, &b1, NEVER), BH_POOL_QUEUED);
    assert_int_equal(acquire(&fa, &a2, NEVER), BH_POOL_QUEUED);
    bh_pool_release(a1.conn, true, now); /* b1 queued before a2 */
    assert_int_equal(a2.calls, 0);
    assert_int_equal(fa.close_calls, 1);
    assert_int_equal(wakes, 1);
    bh_pool_inbox_run(&inbox0, now);
    connect_last(&fb);
    assert_int_equal(b1.status, 0);
    bh_pool_release(b1.conn, true, now);
    bh_pool_inbox_run(&inbox0, now);
    connect_last(&fa);
    assert_int_equal(a2.status, 0);
    assert_true(b1.seq < a2.seq);
    fake_finish(&fa);
    fake_finish(&fb);
    assert_int_equal(bh_sem_in_use(sem), 0);
}

static void test_sem_over_release_aborts(void **state)
{
#ifdef NDEBUG
    skip();
#else
    bh_sem_t *sem = new_sem(2);
    assert_true(bh_sem_try_acquire(sem));
    bh_sem_release(sem);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (freopen("/dev/null", "w", stderr) == NULL) /* hide the expected assertion message */
            _exit(1);
        bh_sem_release(sem); /* one more than was acquired */
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGABRT);
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_waiters_fifo_and_direct_handoff, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_reuse_is_lifo, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cap_is_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cap_shared_by_two_pools, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stress_shared_semaphore, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_pending_overflow, setup, teardown),
        cmocka_unit_test_setup_teardown(test_acquire_timeout_and_deadline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_failure_goes_to_head_waiter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_failing_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dead_idle_is_skipped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lifetime_prevents_reuse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_idle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_min_idle_prewarms, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shutdown, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reentrant_callbacks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reentry_during_dispatch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_counters_and_arm, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fifo_across_workers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_yield_only_for_needy_waiters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_handover_to_a_waiter_that_left, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fifo_across_pools_of_one_worker, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_cap_inside_shared_semaphore, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_cap_across_workers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sem_over_release_aborts, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
