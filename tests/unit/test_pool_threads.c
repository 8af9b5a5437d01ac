/* Several threads (workers) share one permit semaphore, each with two pools on it (two endpoints)
 * and its own inbox, driven at random through the pool API: acquire, connect or fail, release,
 * idle loss, timeouts, cancels, the inbox (permits handed over, idle connections asked for), and
 * retire (a reload replaces a pool, which empties and detaches while the others go on).
 * Checked while they run: the fake sockets open (counted between ops->open and ops->close) and the
 * permits in use never exceed the cap and never go negative. Then no new waiter comes, every
 * connection is given back as soon as it is served, the fake clock stands still (so no waiter
 * can time out), and every waiter must be served within a generous wall-clock bound: none waits
 * forever. At the end every permit is back and every socket closed. Time is a per-thread fake
 * clock; only the interleaving is real.
 * Each thread's first pool is one key of a Postgres database: they share a cap of KEY_CAP below
 * the semaphore's (bh_pool_cap_t), checked the same way. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "bh_pool.h"

#define THREADS 4
#define POOLS 2        /* per thread */
#define CAP 3
#define KEY_CAP 2      /* the first pool of every thread: one key across threads */
#define RECS 6         /* waiter records per thread */
#define STEPS 300000   /* random steps per thread */
#define MAX_CONNS 64
#define MAX_RETIRED 64
#define DRAIN_SECONDS 20

typedef struct thr thr_t;

struct tconn {
    bh_pool_conn_t base;
    thr_t *t;
    int at;               /* index in t->live */
    bool alive;
};

struct rec {
    bh_pool_waiter_t w;
    thr_t *t;
    bh_pool_conn_t *conn; /* BUSY, ours */
    bool forever;         /* queued without a deadline of its own (acquire_timeout only) */
};

struct thr {
    int id;
    pthread_t th;
    bh_sem_inbox_t in;
    _Atomic int woken;
    uint64_t now;
    uint32_t rng;
    bh_pool_t *pools[POOLS];           /* current */
    bh_pool_t *retired[MAX_RETIRED];   /* replaced, emptying */
    int n_retired;
    struct tconn *live[MAX_CONNS];     /* open connections (freed when closed) */
    int n_live;
    struct rec recs[RECS];
    /* results */
    int errors;
    char first_error[160];
    long served, timeouts, failed, handovers_seen, wakes_run, retires;
};

static bh_sem_t *sem;
static _Atomic int64_t sockets, sockets_max;
static _Atomic int64_t key_sockets;
static bh_pool_cap_t key_cap = {.max = KEY_CAP};
static _Atomic int draining;    /* phase 2: no new waiter */
static _Atomic int settled;     /* threads whose waiters have all left */
static _Atomic int finished;    /* threads that shut their pools down */
static _Atomic int stepped;     /* threads done with the random steps */
static thr_t thr[THREADS];
static pthread_barrier_t barrier;

static void note_error(thr_t *t, const char *what)
{
    if (t->errors++ == 0)
        snprintf(t->first_error, sizeof(t->first_error), "thread %d: %s", t->id, what);
}

static uint32_t rnd(thr_t *t, uint32_t n)
{
    t->rng = t->rng * 1103515245u + 12345u;
    return (t->rng >> 16) % n;
}

static void check_counts(thr_t *t)
{
    int64_t used = bh_sem_in_use(sem);
    if (used < 0)
        note_error(t, "permits in use went negative");
    if (used > CAP)
        note_error(t, "permits in use above the cap");
    if (atomic_load(&sockets) > CAP)
        note_error(t, "sockets open above the cap");
}

/* ---- the fake concrete layer: connections open at once, connect later, close at once ---- */

static bh_pool_conn_t *t_open(bh_pool_t *p, int *err)
{
    thr_t *t = p->data;
    if (rnd(t, 50) == 0) {
        *err = BH_ECONNECT_REFUSED;
        return NULL;
    }
    if (t->n_live == MAX_CONNS) {
        note_error(t, "too many connections for the test's table");
        *err = BH_ENOMEM;
        return NULL;
    }
    struct tconn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        *err = BH_ENOMEM;
        return NULL;
    }
    bh_pool_conn_init(&c->base, p, t->now);
    c->t = t;
    c->alive = true;
    c->at = t->n_live;
    t->live[t->n_live++] = c;
    int64_t n = atomic_fetch_add(&sockets, 1) + 1;
    int64_t m = atomic_load(&sockets_max);
    while (n > m && !atomic_compare_exchange_weak(&sockets_max, &m, n))
        ;
    if (n > CAP)
        note_error(t, "a socket opened beyond the cap");
    if (p->cap != NULL && atomic_fetch_add(&key_sockets, 1) + 1 > KEY_CAP)
        note_error(t, "a socket opened beyond the key's cap");
    return &c->base;
}

static bool t_alive(bh_pool_conn_t *c)
{
    return ((struct tconn *)c)->alive;
}

static void t_close(bh_pool_conn_t *c)
{
    struct tconn *tc = (struct tconn *)c;
    thr_t *t = tc->t;
    if (atomic_fetch_sub(&sockets, 1) <= 0)
        note_error(t, "a socket closed twice");
    if (c->pool->cap != NULL && atomic_fetch_sub(&key_sockets, 1) <= 0)
        note_error(t, "a key's socket closed twice");
    bh_pool_conn_closed(c);
    t->live[tc->at] = t->live[--t->n_live];
    t->live[tc->at]->at = tc->at;
    free(tc);
}

static void t_arm(bh_pool_t *p, uint64_t at)
{
    (void)p;
    (void)at;
}

static const bh_pool_ops_t t_ops = {t_open, t_alive, t_close, t_arm};

static void on_wake(bh_sem_inbox_t *in)
{
    atomic_store(&((thr_t *)in->data)->woken, 1);
}

static bh_pool_t *new_pool(thr_t *t, bool key)
{
    bh_pool_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    bh_pool_limits_t lim = {.max_pending = RECS, .max_idle = 2, .min_idle = 0,
                            .acquire_timeout_ms = 200, .idle_timeout_ms = 60,
                            .max_lifetime_ms = 500};
    bh_pool_init(p, &t_ops, sem, &t->in, &lim, t);
    p->cap = key ? &key_cap : NULL;
    return p;
}

/* ---- the user side ---------------------------------------------------------------------- */

static void on_acquired(bh_pool_waiter_t *w, bh_pool_conn_t *c, int status)
{
    struct rec *r = bh_container_of(w, struct rec, w);
    thr_t *t = r->t;
    if (status == 0) {
        t->served++;
        r->conn = c;
        if (atomic_load(&draining) || rnd(t, 4) == 0) { /* some give it back from the callback */
            r->conn = NULL;
            bh_pool_release(c, rnd(t, 5) != 0, t->now);
        }
    } else if (status == BH_EPOOL_TIMEOUT) {
        t->timeouts++;
        if (w->deadline_ms > t->now)
            note_error(t, "a waiter timed out before its deadline");
    } else {
        t->failed++;
    }
}

static bh_pool_conn_t *pick(thr_t *t, enum bh_pool_conn_state st)
{
    if (t->n_live == 0)
        return NULL;
    int start = (int)rnd(t, (uint32_t)t->n_live);
    for (int i = 0; i < t->n_live; i++) {
        struct tconn *c = t->live[(start + i) % t->n_live];
        if (c->base.state == st)
            return &c->base;
    }
    return NULL;
}

static void run_inbox(thr_t *t)
{
    if (atomic_exchange(&t->woken, 0)) {
        t->wakes_run++;
        bh_pool_inbox_run(&t->in, t->now);
    }
}

/* A retired pool that has emptied leaves the semaphore. */
static void reap_retired(thr_t *t)
{
    for (int i = 0; i < t->n_retired;) {
        if (bh_pool_empty(t->retired[i])) {
            bh_pool_detach(t->retired[i]);
            free(t->retired[i]);
            t->retired[i] = t->retired[--t->n_retired];
        } else {
            i++;
        }
    }
}

static void step(thr_t *t)
{
    bh_pool_conn_t *c;
    struct rec *r = &t->recs[rnd(t, RECS)];
    bh_pool_t *p = t->pools[rnd(t, POOLS)];
    switch (rnd(t, 10)) {
    case 0:
    case 1:
        if (!atomic_load(&draining) && r->w.pool == NULL && r->conn == NULL) {
            bh_pool_conn_t *got = NULL;
            r->forever = rnd(t, 2) == 0;
            memset(&r->w, 0, sizeof(r->w));
            r->w.cb = on_acquired;
            int rc = bh_pool_acquire(p, &r->w, t->now,
                                     r->forever ? BH_TIME_NEVER : t->now + 1 + rnd(t, 30), &got);
            if (rc == 0) {
                t->served++;
                r->conn = got;
            } else if (rc != BH_POOL_QUEUED && rc != BH_EPOOL_FULL && rc != BH_ECONNECT_REFUSED) {
                note_error(t, "unexpected acquire result");
            }
        }
        break;
    case 2:
        if ((c = pick(t, BH_PCONN_CONNECTING)) != NULL) {
            if (rnd(t, 10))
                bh_pool_connected(c, t->now);
            else
                bh_pool_connect_failed(c, BH_ECONNECT_REFUSED, t->now);
        }
        break;
    case 3:
    case 4:
        if (r->conn != NULL) {
            c = r->conn;
            r->conn = NULL;
            bh_pool_release(c, rnd(t, 5) != 0, t->now);
        }
        break;
    case 5:
        if ((c = pick(t, BH_PCONN_IDLE)) != NULL) {
            if (rnd(t, 2))
                ((struct tconn *)c)->alive = false;
            else
                bh_pool_idle_lost(c, t->now);
        }
        break;
    case 6: /* the pools' timers */
        t->now += rnd(t, 4);
        bh_pool_expire(p, t->now);
        if (t->n_retired > 0)
            bh_pool_expire(t->retired[rnd(t, (uint32_t)t->n_retired)], t->now);
        break;
    case 7:
        if (!r->forever)
            bh_pool_cancel(&r->w);
        break;
    case 8:
        /* A reload: the pool is retired (its idle connections close now, busy ones when given
         * back, its waiters are still served) and a new one takes its place for new waiters. */
        if (rnd(t, 200) == 0 && t->n_retired < MAX_RETIRED) {
            int i = (int)rnd(t, POOLS);
            bh_pool_t *fresh = new_pool(t, i == 0);
            if (fresh == NULL)
                break;
            bh_pool_retire(t->pools[i], t->now);
            t->retired[t->n_retired++] = t->pools[i];
            t->pools[i] = fresh;
            t->retires++;
        }
        reap_retired(t);
        break;
    default:
        break;
    }
    run_inbox(t);
    check_counts(t);
}

static bool all_left(thr_t *t)
{
    for (int i = 0; i < RECS; i++)
        if (t->recs[i].w.pool != NULL)
            return false;
    return true;
}

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Phase 2 round: give everything back, open what was asked, keep answering the inbox. */
static void drain_round(thr_t *t)
{
    bh_pool_conn_t *c;
    for (int i = 0; i < RECS; i++)
        if ((c = t->recs[i].conn) != NULL) {
            t->recs[i].conn = NULL;
            bh_pool_release(c, true, t->now);
        }
    for (bh_pool_conn_t *c2; (c2 = pick(t, BH_PCONN_CONNECTING)) != NULL;)
        bh_pool_connected(c2, t->now);
    /* The clock stands still: a waiter can only leave by being served. */
    for (int i = 0; i < POOLS; i++)
        bh_pool_expire(t->pools[i], t->now);
    for (int i = 0; i < t->n_retired; i++)
        bh_pool_expire(t->retired[i], t->now);
    reap_retired(t);
    run_inbox(t);
    check_counts(t);
}

static void *thread_main(void *arg)
{
    thr_t *t = arg;
    pthread_barrier_wait(&barrier);
    for (int i = 0; i < STEPS; i++) {
        step(t);
        if (i % 32 == 0)
            sched_yield(); /* interleave finely: more races, and handed-over permits get used */
    }
    /* Like a worker, a thread that is done keeps answering its inbox while the others go on. */
    atomic_fetch_add(&stepped, 1);
    while (atomic_load(&stepped) < THREADS) {
        run_inbox(t);
        check_counts(t);
        sched_yield();
    }
    atomic_store(&draining, 1);

    /* Every waiter must leave; this thread keeps serving the others until all have. */
    double limit = mono() + DRAIN_SECONDS;
    bool mine = false;
    while (atomic_load(&settled) < THREADS) {
        drain_round(t);
        sched_yield();
        if (!mine && all_left(t)) {
            mine = true;
            atomic_fetch_add(&settled, 1);
        }
        if (mono() > limit) {
            note_error(t, mine ? "another thread's waiter waited forever" : "a waiter waited forever");
            break;
        }
    }

    /* Shut down: nobody waits any more, so no permit is handed to anyone from here on. */
    for (int i = 0; i < POOLS; i++)
        bh_pool_shutdown(t->pools[i], t->now);
    for (int i = 0; i < t->n_retired; i++)
        bh_pool_shutdown(t->retired[i], t->now);
    for (bh_pool_conn_t *c; (c = pick(t, BH_PCONN_CONNECTING)) != NULL;)
        bh_pool_connected(c, t->now); /* shut: closed */
    for (int i = 0; i < RECS; i++) {
        bh_pool_conn_t *c = t->recs[i].conn;
        t->recs[i].conn = NULL;
        if (c != NULL)
            bh_pool_release(c, true, t->now); /* shut: closed */
    }
    if (t->n_live != 0)
        note_error(t, "a connection is still open after shutdown");
    for (int i = 0; i < POOLS; i++) {
        if (!bh_pool_empty(t->pools[i]))
            note_error(t, "a pool is not empty after shutdown");
        bh_pool_detach(t->pools[i]);
        free(t->pools[i]);
    }
    reap_retired(t);
    if (t->n_retired != 0)
        note_error(t, "a retired pool did not empty");
    atomic_fetch_add(&finished, 1);
    pthread_barrier_wait(&barrier);
    bh_pool_inbox_run(&t->in, t->now); /* messages still queued: only dropped */
    return NULL;
}

static void test_threads_share_one_semaphore(void **state)
{
    (void)state;
    sem = bh_sem_new(CAP, THREADS);
    assert_non_null(sem);
    pthread_barrier_init(&barrier, NULL, THREADS);
    for (int i = 0; i < THREADS; i++) {
        thr_t *t = &thr[i];
        memset(t, 0, sizeof(*t));
        t->id = i;
        t->rng = 0x9e3779b9u * (uint32_t)(i + 1);
        t->in = (bh_sem_inbox_t){.lane = (uint32_t)i, .wake = on_wake, .data = t};
        for (int j = 0; j < RECS; j++)
            t->recs[j].t = t;
        for (int j = 0; j < POOLS; j++)
            assert_non_null(t->pools[j] = new_pool(t, j == 0));
    }
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&thr[i].th, NULL, thread_main, &thr[i]), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(thr[i].th, NULL);
    pthread_barrier_destroy(&barrier);

    long served = 0, timeouts = 0, wakes = 0, retires = 0;
    for (int i = 0; i < THREADS; i++) {
        thr_t *t = &thr[i];
        if (t->errors)
            fail_msg("%s (%d errors)\n", t->first_error, t->errors);
        served += t->served;
        timeouts += t->timeouts;
        wakes += t->wakes_run;
        retires += t->retires;
    }
    print_message("served %ld, timed out %ld, inbox runs %ld, retires %ld, sockets at most %ld\n",
                  served, timeouts, wakes, retires, (long)atomic_load(&sockets_max));
    assert_int_equal(atomic_load(&finished), THREADS);
    assert_int_equal(bh_sem_in_use(sem), 0); /* every permit came back */
    assert_int_equal(atomic_load(&sockets), 0);
    assert_int_equal(atomic_load(&key_cap.used), 0);
    assert_int_equal(atomic_load(&key_cap.waiting), 0);
    assert_true(atomic_load(&sockets_max) <= CAP);
    assert_true(served > 100 && timeouts > 0 && wakes > 100 && retires > 0); /* it did run */
    bh_sem_unref(sem);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_threads_share_one_semaphore),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
