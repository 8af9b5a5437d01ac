/* Multi-threaded stress tests for the resilience state shared by worker threads (breaker, retry
 * budget, outlier detector): many threads at once on one object, then invariants that hold only
 * if every transition is won by exactly one thread. Time is simulated (a shared counter). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include "bh_breaker.h"
#include "bh_budget.h"
#include "bh_outlier.h"
#include "bh_rng.h"

#define THREADS 8

typedef struct shared {
    pthread_barrier_t start;
    bh_breaker_t breaker;
    bh_budget_t budget;
    bh_outlier_t *outlier;
    _Atomic uint64_t clock;
    _Atomic uint64_t granted, refused, admitted, rejected;
    _Atomic int ready;
} shared_t;

/* After the barrier, spin until every thread is running, so that they really start together. */
static void start_together(shared_t *sh)
{
    pthread_barrier_wait(&sh->start);
    atomic_fetch_add(&sh->ready, 1);
    while (atomic_load(&sh->ready) < THREADS)
        ;
}

typedef struct worker {
    shared_t *sh;
    int id;
    pthread_t th;
    uint64_t *eras; /* per probe ticket: its era, low bit set when it was cancelled */
    size_t n, cap;
    int errors; /* cmocka asserts must not run off the main thread: count instead */
} worker_t;

static void note(worker_t *w, uint64_t v)
{
    if (w->n == w->cap) {
        uint64_t *p;
        w->cap = w->cap ? w->cap * 2 : 1024;
        p = realloc(w->eras, w->cap * sizeof *w->eras);
        if (p == NULL) {
            w->errors++;
            return;
        }
        w->eras = p;
    }
    w->eras[w->n++] = v;
}

static void run_all(worker_t *w, shared_t *sh, void *(*fn)(void *))
{
    pthread_barrier_init(&sh->start, NULL, THREADS);
    for (int i = 0; i < THREADS; i++) {
        w[i].sh = sh;
        w[i].id = i;
        assert_int_equal(pthread_create(&w[i].th, NULL, fn, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(w[i].th, NULL);
    pthread_barrier_destroy(&sh->start);
}

/* ---- budget: the limit holds exactly under contention ----------------------------------- */

#define BUDGET_REQUESTS 5000 /* per thread */
#define BUDGET_TRIES 2000    /* per thread */

static void *budget_worker(void *arg)
{
    worker_t *w = arg;
    shared_t *sh = w->sh;

    pthread_barrier_wait(&sh->start);
    for (int i = 0; i < BUDGET_REQUESTS; i++)
        bh_budget_on_request(&sh->budget, 1000 + (uint64_t)i % 1000);
    pthread_barrier_wait(&sh->start);
    start_together(sh);
    for (int i = 0; i < BUDGET_TRIES; i++) {
        if (bh_budget_try_acquire_retry(&sh->budget, 1999))
            atomic_fetch_add(&sh->granted, 1);
        else
            atomic_fetch_add(&sh->refused, 1);
    }
    return NULL;
}

static void test_budget_threads(void **state)
{
    static shared_t sh;
    worker_t w[THREADS] = {0};
    bh_conf_budget_t conf = {0.2, 10};
    bh_budget_stats_t s;
    uint64_t limit = (uint64_t)(0.2 * THREADS * BUDGET_REQUESTS) + 100;

    memset(&sh, 0, sizeof sh);
    bh_budget_init(&sh.budget, &conf);
    run_all(w, &sh, budget_worker);
    bh_budget_stats(&sh.budget, 1999, &s);
    /* no request was lost, the limit was never exceeded, every try was accounted for */
    assert_int_equal(s.requests, THREADS * BUDGET_REQUESTS);
    assert_int_equal(s.limit, limit);
    assert_true(sh.granted <= limit);
    assert_int_equal(sh.granted + sh.refused, THREADS * BUDGET_TRIES);
    assert_int_equal(s.retries, sh.granted);
    assert_int_equal(s.exhausted, sh.refused);
    assert_int_equal(s.retries_total, sh.granted);
    /* refusals under contention are only spurious at the very edge: alone, a thread gets the
     * rest, and then exactly the limit is in use */
    while (bh_budget_try_acquire_retry(&sh.budget, 1999))
        sh.granted++;
    assert_int_equal(sh.granted, limit);
    bh_budget_stats(&sh.budget, 1999, &s);
    assert_int_equal(s.retries, limit);
    assert_int_equal(s.remaining, 0);
}

/* ---- breaker: one trip for a storm of failures ----------------------------------------- */

static void *trip_worker(void *arg)
{
    worker_t *w = arg;
    shared_t *sh = w->sh;
    bh_rng_t rng;

    bh_rng_seed(&rng, (uint64_t)w->id);
    start_together(sh);
    for (int i = 0; i < 20000; i++) {
        bh_breaker_ticket_t t;
        uint64_t ra;
        if (bh_breaker_allow(&sh->breaker, 100, &rng, &t, &ra) == 0) {
            atomic_fetch_add(&sh->admitted, 1);
            bh_breaker_record(&sh->breaker, &t, true, 100, &rng);
        } else {
            atomic_fetch_add(&sh->rejected, 1);
        }
    }
    return NULL;
}

static void test_breaker_single_trip(void **state)
{
    static shared_t sh;
    worker_t w[THREADS] = {0};
    bh_conf_breaker_t conf = {5, 0.5, 10000, 20, 3600000, 3600000, 3, 0};
    bh_breaker_stats_t s;

    memset(&sh, 0, sizeof sh);
    bh_breaker_init(&sh.breaker, &conf, 0, 0);
    run_all(w, &sh, trip_worker);
    bh_breaker_stats(&sh.breaker, 100, &s);
    /* every thread saw failures, but the breaker opened exactly once, and outcomes of requests
     * admitted before the trip did not reopen or extend it */
    assert_int_equal(s.state, BH_BREAKER_OPEN);
    assert_int_equal(s.opens, 1);
    assert_int_equal(s.rejections, sh.rejected);
    assert_int_equal(sh.admitted + sh.rejected, THREADS * 20000);
    assert_true(sh.admitted >= 5 && sh.admitted < THREADS * 20000);
    assert_true(s.open_remaining_ms > 3600000 * 9 / 10 - 100);
}

/* ---- breaker: exactly half_open_probes admitted when all threads ask at once ------------ */

static void *probe_worker(void *arg)
{
    worker_t *w = arg;
    shared_t *sh = w->sh;

    start_together(sh);
    for (int i = 0; i < 2000; i++) {
        bh_breaker_ticket_t t;
        uint64_t ra;
        if (bh_breaker_allow(&sh->breaker, 5000 + (uint64_t)i % 7, NULL, &t, &ra) == 0) {
            atomic_fetch_add(&sh->admitted, 1);
            w->errors += t.kind != BH_TICKET_PROBE;
        } else {
            atomic_fetch_add(&sh->rejected, 1);
        }
    }
    return NULL;
}

static void test_breaker_probe_admission(void **state)
{
    static shared_t sh;
    bh_conf_breaker_t conf = {5, 0, 10000, 20, 5000, 60000, BH_BREAKER_MAX_PROBES, 0};

    for (int round = 0; round < 30; round++) {
        worker_t w[THREADS] = {0};
        bh_breaker_stats_t s;

        memset(&sh, 0, sizeof sh);
        bh_breaker_init(&sh.breaker, &conf, 60000, 0);
        for (int i = 0; i < 5; i++) {
            bh_breaker_ticket_t t;
            uint64_t ra;
            assert_int_equal(bh_breaker_allow(&sh.breaker, 0, NULL, &t, &ra), 0);
            bh_breaker_record(&sh.breaker, &t, true, 0, NULL);
        }
        run_all(w, &sh, probe_worker);
        for (int i = 0; i < THREADS; i++)
            assert_int_equal(w[i].errors, 0);
        bh_breaker_stats(&sh.breaker, 5000, &s);
        /* one thread moved it to HALF_OPEN, then exactly 100 probes between all of them */
        assert_int_equal(sh.admitted, BH_BREAKER_MAX_PROBES);
        assert_int_equal(s.state, BH_BREAKER_HALF_OPEN);
        assert_int_equal(s.probes_admitted, BH_BREAKER_MAX_PROBES);
        assert_int_equal(s.rejections, sh.rejected);
    }
}

/* ---- breaker: probes per half-open period under contention ----------------------------- */

#define CYCLE_OPS 200000 /* per thread */

static void *cycle_worker(void *arg)
{
    worker_t *w = arg;
    shared_t *sh = w->sh;
    bh_rng_t rng;

    bh_rng_seed(&rng, 1000 + (uint64_t)w->id);
    start_together(sh);
    for (int i = 0; i < CYCLE_OPS; i++) {
        uint64_t now = atomic_fetch_add(&sh->clock, 1) / THREADS; /* ~1 ms per round */
        bh_breaker_ticket_t t;
        uint64_t ra;
        /* the upstream fails 70% of the time in the first half, never in the last quarter */
        bool late = i > CYCLE_OPS * 3 / 4, early = i < CYCLE_OPS / 2;
        bool fail = !late && (early ? bh_rng_below(&rng, 10) < 7 : bh_rng_below(&rng, 10) < 2);

        bool probe;

        if (bh_breaker_allow(&sh->breaker, now, &rng, &t, &ra) != 0) {
            w->errors += ra == 0 || t.kind != BH_TICKET_NONE;
            continue;
        }
        probe = t.kind == BH_TICKET_PROBE;
        if (probe)
            note(w, t.era << 1);
        switch (bh_rng_below(&rng, 50)) {
        case 0: /* a stuck probe/request: never recorded */
            break;
        case 1:
            if (probe)
                note(w, t.era << 1 | 1);
            bh_breaker_cancel(&sh->breaker, &t);
            break;
        default:
            bh_breaker_record(&sh->breaker, &t, fail, now, &rng);
        }
    }
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void test_breaker_probe_limit(void **state)
{
    static shared_t sh;
    worker_t w[THREADS] = {0};
    bh_conf_breaker_t conf = {5, 0.5, 2000, 20, 50, 800, 3, 0};
    bh_breaker_stats_t s;
    uint64_t *all, end;
    size_t n = 0, periods = 0, probes = 0, cancels = 0, most = 0;

    memset(&sh, 0, sizeof sh);
    bh_breaker_init(&sh.breaker, &conf, 100, 0);
    run_all(w, &sh, cycle_worker);
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(w[i].errors, 0);
        n += w[i].n;
    }
    all = malloc((n ? n : 1) * sizeof *all);
    assert_non_null(all);
    n = 0;
    for (int i = 0; i < THREADS; i++) {
        memcpy(all + n, w[i].eras, w[i].n * sizeof *all);
        n += w[i].n;
        free(w[i].eras);
    }
    qsort(all, n, sizeof *all, cmp_u64);
    /* per half-open period, the probes handed out never exceed half_open_probes plus the ones
     * given back: no two threads ever took the same slot */
    for (size_t i = 0; i < n; i++) {
        if (all[i] & 1)
            cancels++;
        else
            probes++;
        if (i + 1 == n || all[i + 1] >> 1 != all[i] >> 1) { /* the last entry of a period */
            if (probes > 3 + cancels)
                fail_msg("period %llx: %zu probes, %zu cancelled",
                         (unsigned long long)(all[i] >> 1), probes, cancels);
            most = probes > most ? probes : most;
            periods++;
            probes = cancels = 0;
        }
    }
    free(all);
    assert_true(most >= 3); /* some periods really filled up */
    bh_breaker_stats(&sh.breaker, atomic_load(&sh.clock) / THREADS, &s);
    assert_true(s.opens > 10); /* it cycled many times */
    assert_true(periods > 10);
    assert_true(s.opens >= periods); /* each half-open period followed an open one */
    /* with a healthy upstream at the end it settles CLOSED (or closes on the next probes) */
    end = atomic_load(&sh.clock) / THREADS + 1000;
    for (int i = 0; i < 100 && bh_breaker_state(&sh.breaker) != BH_BREAKER_CLOSED; i++) {
        bh_breaker_ticket_t t;
        uint64_t ra;
        if (bh_breaker_allow(&sh.breaker, end, NULL, &t, &ra) == 0)
            bh_breaker_record(&sh.breaker, &t, false, end, NULL);
        else
            end += ra;
    }
    assert_int_equal(bh_breaker_state(&sh.breaker), BH_BREAKER_CLOSED);
}

/* ---- outlier: max_ejected is exact under contention ------------------------------------ */

static void *outlier_worker(void *arg)
{
    worker_t *w = arg;
    shared_t *sh = w->sh;

    start_together(sh);
    for (int i = 0; i < 100000; i++) {
        size_t ep = (size_t)(w->id + i) % 16;
        bh_outlier_record(sh->outlier, ep, true, 5000);
    }
    return NULL;
}

static void test_outlier_threads(void **state)
{
    static shared_t sh;
    worker_t w[THREADS] = {0};
    bh_conf_outlier_t conf = {5, 30000, 0.25};
    bh_outlier_stats_t s;

    memset(&sh, 0, sizeof sh);
    sh.outlier = bh_outlier_new(&conf, 16);
    assert_non_null(sh.outlier);
    run_all(w, &sh, outlier_worker);
    bh_outlier_stats(sh.outlier, 5000, &s);
    /* all 16 endpoints fail constantly, but never more than 25% (4) are ejected: each ejection
     * beyond the first 4 released one */
    assert_int_equal(s.ejected, 4);
    assert_true(s.ejections_released > 0);
    assert_int_equal(s.ejections, 4 + s.ejections_released);
    assert_int_equal(s.ejections_skipped, 0);
    bh_outlier_free(sh.outlier);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_budget_threads),          cmocka_unit_test(test_breaker_single_trip),
        cmocka_unit_test(test_breaker_probe_admission), cmocka_unit_test(test_breaker_probe_limit),
        cmocka_unit_test(test_outlier_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
