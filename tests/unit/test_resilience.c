/* Unit tests for resilience/: every primitive driven through simulated time (milliseconds passed
 * in, no sleeps) and a fixed-seed random source. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "bh_backoff.h"
#include "bh_balance.h"
#include "bh_breaker.h"
#include "bh_budget.h"
#include "bh_deadline.h"
#include "bh_error.h"
#include "bh_outlier.h"
#include "bh_retry.h"
#include "bh_rng.h"
#include "bh_window.h"

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))
#define SEC 1000ull
#define MIN (60 * SEC)

/* Pearson's chi-square of observed counts against a uniform expectation. */
static double chi_square(const uint64_t *obs, size_t k, double expected)
{
    double x = 0;

    for (size_t i = 0; i < k; i++)
        x += ((double)obs[i] - expected) * ((double)obs[i] - expected) / expected;
    return x;
}

/* The chi-square value a uniform sample exceeds with probability 0.001 (Wilson-Hilferty). */
static double chi_limit(size_t dof)
{
    double k = (double)dof, t = 2.0 / (9.0 * k), c = 1.0 - t + 3.09 * sqrt(t);
    return k * c * c * c;
}

/* ---- rng ------------------------------------------------------------------------------- */

static void test_rng(void **state)
{
    bh_rng_t a, b, z;
    uint64_t hist[10] = {0};

    bh_rng_seed(&a, 42);
    bh_rng_seed(&b, 42);
    for (int i = 0; i < 100; i++)
        assert_int_equal(bh_rng_next(&a), bh_rng_next(&b));
    bh_rng_seed(&z, 0); /* a zero seed still gives a working generator */
    assert_int_not_equal(bh_rng_next(&z), 0);
    assert_int_not_equal(bh_rng_next(&z), bh_rng_next(&z));
    assert_int_equal(bh_rng_below(&a, 0), 0);
    assert_int_equal(bh_rng_below(&a, 1), 0);
    for (int i = 0; i < 100000; i++) {
        uint64_t v = bh_rng_below(&a, 10);
        double u = bh_rng_unit(&a);
        assert_true(v < 10);
        assert_true(u >= 0.0 && u < 1.0);
        hist[v]++;
    }
    assert_true(chi_limit(9) > 27.5 && chi_limit(9) < 28.3); /* table: 27.88 */
    assert_true(chi_square(hist, 10, 10000.0) < chi_limit(9));
    assert_true(bh_rng_below(&a, UINT64_MAX) < UINT64_MAX);
}

/* ---- backoff --------------------------------------------------------------------------- */

static bh_conf_retry_t retry_conf(void)
{
    bh_conf_retry_t r = {
        .attempts = 3,
        .on = BH_RETRY_ON_CONNECT_FAILURE | BH_RETRY_ON_RESET_BEFORE_RESPONSE |
              BH_RETRY_ON_GATEWAY_ERROR,
        .retriable_status = {503},
        .n_retriable_status = 1,
        .methods_all = false,
        .max_replay_bytes = 64 * 1024,
        .backoff = {25, 250},
        .honor_retry_after = true,
        .budget = {0.2, 10},
    };
    return r;
}

static void test_backoff_ceiling(void **state)
{
    bh_conf_backoff_t b = {25, 250}, big = {1ull << 62, UINT64_MAX}, zero = {0, 100};

    assert_int_equal(bh_backoff_ceiling(&b, 0), 0);
    assert_int_equal(bh_backoff_ceiling(&b, 1), 25);  /* 25 * 1 */
    assert_int_equal(bh_backoff_ceiling(&b, 2), 75);  /* 25 * 3 */
    assert_int_equal(bh_backoff_ceiling(&b, 3), 175); /* 25 * 7 */
    assert_int_equal(bh_backoff_ceiling(&b, 4), 250); /* 25 * 15 = 375, capped */
    assert_int_equal(bh_backoff_ceiling(&b, 63), 250);
    assert_int_equal(bh_backoff_ceiling(&b, 64), 250);
    assert_int_equal(bh_backoff_ceiling(&b, 1000), 250);
    /* overflow-safe: 2^62 * 7 does not fit */
    assert_int_equal(bh_backoff_ceiling(&big, 1), 1ull << 62);
    assert_int_equal(bh_backoff_ceiling(&big, 3), UINT64_MAX);
    assert_int_equal(bh_backoff_ceiling(&big, 200), UINT64_MAX);
    assert_int_equal(bh_backoff_ceiling(&zero, 5), 0);
}

static void test_backoff_distribution(void **state)
{
    bh_conf_retry_t c = retry_conf();
    bh_rng_t rng;
    const int draws = 20000;

    c.honor_retry_after = false;
    bh_rng_seed(&rng, 7);
    for (unsigned n = 1; n <= 6; n++) {
        uint64_t ceil = bh_backoff_ceiling(&c.backoff, n), hist[250] = {0}, max = 0;
        double sum = 0;

        for (int i = 0; i < draws; i++) {
            uint64_t d = bh_backoff_delay(&c, n, 0, UINT64_MAX, &rng);
            assert_true(d < ceil); /* [0, ceiling) */
            sum += (double)d;
            max = d > max ? d : max;
            hist[d]++; /* one bucket per possible value (ceil <= 250) */
        }
        /* uniform: mean ceiling/2 (+-3%), spread over the whole range, no bucket favoured */
        assert_true(fabs(sum / draws - (double)(ceil - 1) / 2) < 0.03 * (double)ceil);
        assert_true(max >= ceil * 95 / 100);
        assert_true(chi_square(hist, ceil, (double)draws / (double)ceil) < chi_limit(ceil - 1));
    }
}

static void test_backoff_limits(void **state)
{
    bh_conf_retry_t c = retry_conf();
    bh_rng_t rng;

    bh_rng_seed(&rng, 1);
    /* the jitter is clamped to what the caller allows */
    for (int i = 0; i < 1000; i++)
        assert_true(bh_backoff_delay(&c, 4, 0, 10, &rng) <= 10);
    /* Retry-After is honoured: the delay is at least the server's */
    for (int i = 0; i < 1000; i++)
        assert_int_equal(bh_backoff_delay(&c, 1, 1000, UINT64_MAX, &rng), 1000);
    /* ... and a short one does not shorten the jitter */
    for (int i = 0; i < 1000; i++) {
        uint64_t d = bh_backoff_delay(&c, 3, 100, UINT64_MAX, &rng);
        assert_true(d >= 100 && d < 175);
    }
    /* a Retry-After beyond the limit: give up rather than come back early */
    assert_int_equal(bh_backoff_delay(&c, 1, 1000, 999, &rng), BH_BACKOFF_GIVE_UP);
    assert_int_equal(bh_backoff_delay(&c, 1, 1000, 1000, &rng), 1000);
    /* not honoured: ignored */
    c.honor_retry_after = false;
    for (int i = 0; i < 1000; i++)
        assert_true(bh_backoff_delay(&c, 1, 5000, 100, &rng) < 25);
}

static void test_backoff_fits(void **state)
{
    assert_true(bh_backoff_fits(100, 1000, 1101));
    assert_false(bh_backoff_fits(100, 1000, 1100)); /* would start exactly at the deadline */
    assert_false(bh_backoff_fits(0, 1000, 1000));
    assert_false(bh_backoff_fits(0, 2000, 1000));
    assert_true(bh_backoff_fits(0, 999, 1000));
    assert_true(bh_backoff_fits(UINT64_MAX - 1, 5, BH_DEADLINE_NONE));
    assert_false(bh_backoff_fits(BH_BACKOFF_GIVE_UP, 0, BH_DEADLINE_NONE));
}

static void test_retry_after_parse(void **state)
{
    uint64_t ms = 7;

    assert_int_equal(bh_backoff_parse_retry_after("120", 3, &ms), 0);
    assert_int_equal(ms, 120000);
    assert_int_equal(bh_backoff_parse_retry_after(" 0\t", 3, &ms), 0);
    assert_int_equal(ms, 0);
    assert_int_equal(bh_backoff_parse_retry_after("99999999999999999999999", 23, &ms), 0);
    assert_int_equal(ms, UINT64_MAX / 2);
    ms = 7;
    assert_int_equal(bh_backoff_parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 29, &ms), -1);
    assert_int_equal(bh_backoff_parse_retry_after("", 0, &ms), -1);
    assert_int_equal(bh_backoff_parse_retry_after("-1", 2, &ms), -1);
    assert_int_equal(bh_backoff_parse_retry_after("1.5", 3, &ms), -1);
    assert_int_equal(bh_backoff_parse_retry_after("12", 1, &ms), 0); /* length-bounded */
    assert_int_equal(ms, 1000);
}

/* ---- window (shared by budget and breaker) ------------------------------------------------ */

static void test_window(void **state)
{
    bh_window_t w;
    const uint64_t wrap = 1ull << 32; /* 1 ms buckets: the 32-bit bucket tag wraps here */

    bh_window_init(&w, 10); /* 10 buckets of 1 ms */
    for (uint64_t t = wrap - 5; t < wrap + 5; t++)
        bh_window_add(&w, 0, t, 1);
    assert_int_equal(bh_window_sum(&w, 0, wrap + 4), 10);
    assert_int_equal(bh_window_sum(&w, 1, wrap + 4), 0);
    /* an event of a bucket that already left the window is dropped, not mixed in */
    bh_window_add(&w, 0, wrap - 6, 1);
    assert_int_equal(bh_window_sum(&w, 0, wrap + 4), 10);
    assert_int_equal(bh_window_sum(&w, 0, wrap + 5), 9);
    assert_int_equal(bh_window_sum(&w, 0, wrap + 14), 0);
    bh_window_sub(&w, 0, wrap + 4, 1);
    bh_window_sub(&w, 0, wrap + 4, 1); /* never below zero */
    assert_int_equal(bh_window_sum(&w, 0, wrap + 4), 9);
    bh_window_add(&w, 1, 0, UINT32_MAX);
    bh_window_add(&w, 1, 0, 5); /* saturates */
    assert_int_equal(bh_window_sum(&w, 1, 0), UINT32_MAX);
    bh_window_clear(&w);
    assert_int_equal(bh_window_sum(&w, 0, wrap + 4), 0);
    bh_window_init(&w, 3); /* shorter than the bucket count: 1 ms buckets */
    assert_int_equal(w.bucket_ms, 1);
}

/* ---- budget ---------------------------------------------------------------------------- */

static void test_budget_reserve(void **state)
{
    bh_conf_budget_t conf = {0.2, 10};
    bh_budget_t b;
    bh_budget_stats_t s;

    bh_budget_init(&b, &conf);
    /* no traffic: min_per_second x 10 s of retries */
    bh_budget_stats(&b, 0, &s);
    assert_int_equal(s.limit, 100);
    assert_int_equal(s.remaining, 100);
    for (int i = 0; i < 100; i++)
        assert_true(bh_budget_try_acquire_retry(&b, 0));
    assert_false(bh_budget_try_acquire_retry(&b, 0));
    assert_false(bh_budget_try_acquire_retry(&b, 500));
    bh_budget_stats(&b, 500, &s);
    assert_int_equal(s.retries, 100);
    assert_int_equal(s.remaining, 0);
    assert_int_equal(s.exhausted, 2);
    assert_int_equal(s.retries_total, 100);
    /* the window slides: 10 s later the retries of second 0 are forgotten */
    assert_false(bh_budget_try_acquire_retry(&b, 9999));
    assert_true(bh_budget_try_acquire_retry(&b, 10000));
    bh_budget_stats(&b, 10000, &s);
    assert_int_equal(s.retries, 1);
    assert_int_equal(s.exhausted, 3);
}

static void test_budget_ratio(void **state)
{
    bh_conf_budget_t conf = {0.2, 10};
    bh_budget_t b;
    bh_budget_stats_t s;
    int granted = 0;

    bh_budget_init(&b, &conf);
    /* 100 requests per second for 10 s: 1000 requests -> 0.2 x 1000 + 100 = 300 retries */
    for (uint64_t t = 0; t < 10 * SEC; t += 10)
        bh_budget_on_request(&b, t);
    bh_budget_stats(&b, 10 * SEC - 1, &s);
    assert_int_equal(s.requests, 1000);
    assert_int_equal(s.limit, 300);
    /* all 1000 fail at once and want a retry: the retries are counted when SCHEDULED, before any
     * of them starts, so exactly the budget is handed out and the rest is refused */
    for (int i = 0; i < 1000; i++)
        granted += bh_budget_try_acquire_retry(&b, 10 * SEC - 1);
    assert_int_equal(granted, 300);
    bh_budget_stats(&b, 10 * SEC - 1, &s);
    assert_int_equal(s.retries, 300);
    assert_int_equal(s.remaining, 0);
    assert_int_equal(s.exhausted, 700);
    /* one second later the requests of second 0 (100) have left the window: limit 280, in use 300
     */
    bh_budget_stats(&b, 10 * SEC, &s);
    assert_int_equal(s.requests, 900);
    assert_int_equal(s.limit, 280);
    assert_int_equal(s.remaining, 0);
    assert_false(bh_budget_try_acquire_retry(&b, 10 * SEC));
    /* after a quiet window everything is free again */
    bh_budget_stats(&b, 20 * SEC, &s);
    assert_int_equal(s.requests, 0);
    assert_int_equal(s.retries, 0);
    assert_int_equal(s.remaining, 100);
}

static void test_budget_zero(void **state)
{
    bh_conf_budget_t conf = {0, 0};
    bh_budget_t b;

    bh_budget_init(&b, &conf);
    for (int i = 0; i < 100; i++)
        bh_budget_on_request(&b, 0);
    assert_false(bh_budget_try_acquire_retry(&b, 0));
    /* ratio only: 1 retry per 2 requests */
    conf.ratio = 0.5;
    bh_budget_init(&b, &conf);
    for (int i = 0; i < 10; i++)
        bh_budget_on_request(&b, 0);
    for (int i = 0; i < 5; i++)
        assert_true(bh_budget_try_acquire_retry(&b, 1));
    assert_false(bh_budget_try_acquire_retry(&b, 1));
}

/* ---- breaker --------------------------------------------------------------------------- */

static bh_conf_breaker_t breaker_conf(void)
{
    bh_conf_breaker_t c = {
        .consecutive_failures = 5,
        .failure_rate = 0.5,
        .window_ms = 10 * SEC,
        .min_requests = 20,
        .open_for_ms = 5 * SEC,
        .max_open_for_ms = 60 * SEC,
        .half_open_probes = 3,
        .count = BH_COUNT_CONNECT_FAILURE | BH_COUNT_TIMEOUT | BH_COUNT_5XX,
    };
    return c;
}

/* One request through the breaker at now: allowed? then its outcome. */
static int request(bh_breaker_t *b, uint64_t now, bool failed)
{
    bh_breaker_ticket_t t;
    int rc = bh_breaker_allow(b, now, NULL, &t, NULL);

    if (rc == 0)
        bh_breaker_record(b, &t, failed, now, NULL);
    return rc;
}

static void test_breaker_consecutive(void **state)
{
    bh_conf_breaker_t conf = breaker_conf();
    bh_breaker_t b;
    bh_breaker_stats_t s;
    bh_breaker_ticket_t t;
    uint64_t ra = 0;

    bh_breaker_init(&b, &conf, 0, 0);
    assert_int_equal(bh_breaker_state(&b), BH_BREAKER_CLOSED);
    for (int i = 0; i < 4; i++)
        assert_int_equal(request(&b, 100, true), 0);
    assert_int_equal(request(&b, 100, false), 0); /* a success breaks the run */
    for (int i = 0; i < 4; i++)
        assert_int_equal(request(&b, 200, true), 0);
    bh_breaker_stats(&b, 200, &s);
    assert_int_equal(s.state, BH_BREAKER_CLOSED);
    assert_int_equal(s.consecutive_failures, 4);
    assert_int_equal(s.window_requests, 9);
    assert_int_equal(s.window_failures, 8);
    assert_int_equal(request(&b, 300, true), 0); /* the 5th in a row trips it */
    assert_int_equal(bh_breaker_state(&b), BH_BREAKER_OPEN);

    /* OPEN fails fast and says how long is left */
    assert_int_equal(bh_breaker_allow(&b, 300, NULL, &t, &ra), BH_EBREAKER_OPEN);
    assert_int_equal(t.kind, BH_TICKET_NONE);
    assert_int_equal(ra, 5000);
    assert_int_equal(bh_breaker_allow(&b, 5299, NULL, &t, &ra), BH_EBREAKER_OPEN);
    assert_int_equal(ra, 1);
    bh_breaker_stats(&b, 1300, &s);
    assert_int_equal(s.state, BH_BREAKER_OPEN);
    assert_int_equal(s.open_remaining_ms, 4000);
    assert_int_equal(s.opens, 1);
    assert_int_equal(s.rejections, 2);
    assert_int_equal(s.probes_remaining, 3);
    assert_string_equal(bh_breaker_state_name(s.state), "open");
    assert_string_equal(bh_err_proxy_status(BH_EBREAKER_OPEN), "destination_unavailable");
    assert_string_equal(bh_errname(BH_EBREAKER_OPEN), "BREAKER_OPEN");
}

static void test_breaker_half_open(void **state)
{
    bh_conf_breaker_t conf = breaker_conf();
    bh_breaker_t b;
    bh_breaker_stats_t s;
    bh_breaker_ticket_t p[4];
    uint64_t ra;

    bh_breaker_init(&b, &conf, 0, 0);
    for (int i = 0; i < 5; i++)
        assert_int_equal(request(&b, 0, true), 0);
    /* exactly half_open_probes requests are admitted once the open period ends */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(bh_breaker_allow(&b, 5000 + i, NULL, &p[i], &ra), 0);
        assert_int_equal(p[i].kind, BH_TICKET_PROBE);
    }
    assert_int_equal(bh_breaker_state(&b), BH_BREAKER_HALF_OPEN);
    assert_int_equal(bh_breaker_allow(&b, 5003, NULL, &p[3], &ra), BH_EBREAKER_OPEN);
    assert_true(ra > 0 && ra <= 5000);
    bh_breaker_stats(&b, 5003, &s);
    assert_int_equal(s.probes_admitted, 3);
    assert_int_equal(s.probes_remaining, 0);
    /* a cancelled probe (never reached the upstream) frees its slot */
    bh_breaker_cancel(&b, &p[2]);
    assert_int_equal(bh_breaker_allow(&b, 5004, NULL, &p[2], &ra), 0);
    /* all succeed -> CLOSED, with fresh counts */
    bh_breaker_record(&b, &p[0], false, 5100, NULL);
    bh_breaker_record(&b, &p[1], false, 5100, NULL);
    bh_breaker_stats(&b, 5100, &s);
    assert_int_equal(s.state, BH_BREAKER_HALF_OPEN);
    assert_int_equal(s.probes_succeeded, 2);
    bh_breaker_record(&b, &p[1], true, 5100, NULL); /* a consumed ticket: no-op */
    bh_breaker_record(&b, &p[2], false, 5100, NULL);
    bh_breaker_stats(&b, 5100, &s);
    assert_int_equal(s.state, BH_BREAKER_CLOSED);
    assert_int_equal(s.window_requests, 0);
    assert_int_equal(s.consecutive_failures, 0);
    assert_int_equal(s.reopens, 0);
    /* and the next trip opens for open_for again */
    for (int i = 0; i < 5; i++)
        assert_int_equal(request(&b, 6000, true), 0);
    assert_int_equal(bh_breaker_allow(&b, 6000, NULL, &p[0], &ra), BH_EBREAKER_OPEN);
    assert_int_equal(ra, 5000);
}

static void test_breaker_reopen_doubles(void **state)
{
    bh_conf_breaker_t conf = breaker_conf();
    bh_breaker_t b;
    bh_breaker_ticket_t t;
    uint64_t ra, now = 0;
    static const uint64_t periods[] = {5000, 10000, 20000, 40000, 60000, 60000, 60000};

    bh_breaker_init(&b, &conf, 0, now);
    for (int i = 0; i < 5; i++)
        assert_int_equal(request(&b, now, true), 0);
    for (size_t k = 0; k < COUNT(periods); k++) {
        /* open for exactly periods[k] (no rng: no jitter) */
        assert_int_equal(bh_breaker_allow(&b, now, NULL, &t, &ra), BH_EBREAKER_OPEN);
        assert_int_equal(ra, periods[k]);
        assert_int_equal(bh_breaker_allow(&b, now + periods[k] - 1, NULL, &t, &ra),
                         BH_EBREAKER_OPEN);
        now += periods[k];
        /* the first probe fails: open again, for longer */
        assert_int_equal(bh_breaker_allow(&b, now, NULL, &t, &ra), 0);
        assert_int_equal(t.kind, BH_TICKET_PROBE);
        bh_breaker_record(&b, &t, true, now, NULL);
        assert_int_equal(bh_breaker_state(&b), BH_BREAKER_OPEN);
    }
    /* recovery: a full round of successful probes closes it and resets the doubling */
    now += 60000;
    for (int i = 0; i < 3; i++)
        assert_int_equal(request(&b, now, false), 0);
    assert_int_equal(bh_breaker_state(&b), BH_BREAKER_CLOSED);
    for (int i = 0; i < 5; i++)
        assert_int_equal(request(&b, now, true), 0);
    assert_int_equal(bh_breaker_allow(&b, now, NULL, &t, &ra), BH_EBREAKER_OPEN);
    assert_int_equal(ra, 5000);
}

static void test_breaker_failure_rate(void **state)
{
    bh_conf_breaker_t conf = breaker_conf();
    bh_breaker_t b;
    bh_breaker_stats_t s;

    conf.consecutive_failures = 0; /* only the rate trigger */
    bh_breaker_init(&b, &conf, 0, 0);
    /* alternating failure/success: 50%, but below min_requests for 19 outcomes */
    for (int i = 0; i < 19; i++)
        assert_int_equal(request(&b, (uint64_t)i * 100, i % 2 == 0), 0);
    bh_breaker_stats(&b, 1900, &s);
    assert_int_equal(s.state, BH_BREAKER_CLOSED);
    assert_int_equal(s.window_requests, 19);
    assert_int_equal(s.window_failures, 10);
    /* a success as the 20th: 10/20 = 50% but a success never trips */
    assert_int_equal(request(&b, 1900, false), 0);
    assert_int_equal(bh_breaker_state(&b), BH_BREAKER_CLOSED);
    /* the next failure: 11/21 >= 50% -> OPEN */
    assert_int_equal(request(&b, 2000, true), 0);
    assert_int_equal(bh_breaker_state(&b), BH_BREAKER_OPEN);

    /* failures older than the window do not count */
    bh_breaker_init(&b, &conf, 0, 0);
    for (int i = 0; i < 15; i++)
        assert_int_equal(request(&b, 0, true), 0);
    for (int i = 0; i < 20; i++)
        assert_int_equal(request(&b, 10 * SEC + (uint64_t)i, i < 5), 0);
    bh_breaker_stats(&b, 10 * SEC + 20, &s);
    assert_int_equal(s.window_requests, 20); /* second 0 left the window */
    assert_int_equal(s.state, BH_BREAKER_CLOSED);
    /* 10% failure rate over many minutes never trips */
    bh_breaker_init(&b, &conf, 0, 0);
    for (uint64_t t = 0; t < 10 * MIN; t += 10)
        assert_int_equal(request(&b, t, t % 100 == 0), 0);
    assert_int_equal(bh_breaker_state(&b), BH_BREAKER_CLOSED);
    /* rate trigger off too: only consecutive, which is off: never opens */
    conf.failure_rate = 0;
    bh_breaker_init(&b, &conf, 0, 0);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(request(&b, (uint64_t)i, true), 0);
    assert_int_equal(bh_breaker_state(&b), BH_BREAKER_CLOSED);
}

static void test_breaker_stuck_probes(void **state)
{
    bh_conf_breaker_t conf = breaker_conf();
    bh_breaker_t b;
    bh_breaker_stats_t s;
    bh_breaker_ticket_t p[3], late, t;
    uint64_t ra;

    bh_breaker_init(&b, &conf, 30 * SEC, 0); /* probes may take up to 30 s */
    for (int i = 0; i < 5; i++)
        assert_int_equal(request(&b, 0, true), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(bh_breaker_allow(&b, 5000, NULL, &p[i], &ra), 0);
    /* two probes succeed, one never finishes: still half-open (full) during the probe timeout */
    bh_breaker_record(&b, &p[0], false, 6000, NULL);
    bh_breaker_record(&b, &p[1], false, 7000, NULL);
    assert_int_equal(bh_breaker_allow(&b, 34999, NULL, &t, &ra), BH_EBREAKER_OPEN);
    assert_int_equal(bh_breaker_state(&b), BH_BREAKER_HALF_OPEN);
    /* at the probe timeout the stuck probe counts as failed: OPEN again, for twice as long */
    assert_int_equal(bh_breaker_allow(&b, 35000, NULL, &t, &ra), BH_EBREAKER_OPEN);
    assert_int_equal(ra, 10000);
    bh_breaker_stats(&b, 35000, &s);
    assert_int_equal(s.state, BH_BREAKER_OPEN);
    assert_int_equal(s.probe_timeouts, 1);
    assert_int_equal(s.opens, 2);
    /* its late success is ignored (an earlier period) */
    bh_breaker_record(&b, &p[2], false, 36000, NULL);
    assert_int_equal(bh_breaker_state(&b), BH_BREAKER_OPEN);
    /* next half-open: a probe of the new period; the stale one can neither close nor reopen */
    assert_int_equal(bh_breaker_allow(&b, 45000, NULL, &late, &ra), 0);
    p[2].kind = BH_TICKET_PROBE; /* replay the stale ticket */
    bh_breaker_record(&b, &p[2], true, 45001, NULL);
    assert_int_equal(bh_breaker_state(&b), BH_BREAKER_HALF_OPEN);
    /* a probe recorded after its period's end counts as failed */
    bh_breaker_record(&b, &late, false, 45000 + 30 * SEC, NULL);
    assert_int_equal(bh_breaker_state(&b), BH_BREAKER_OPEN);

    /* default probe timeout = open_for */
    bh_breaker_init(&b, &conf, 0, 0);
    for (int i = 0; i < 5; i++)
        assert_int_equal(request(&b, 0, true), 0);
    assert_int_equal(bh_breaker_allow(&b, 5000, NULL, &p[0], &ra), 0);
    assert_int_equal(bh_breaker_allow(&b, 9999, NULL, &p[1], &ra), 0);
    assert_int_equal(bh_breaker_allow(&b, 10000, NULL, &t, &ra), BH_EBREAKER_OPEN);
    assert_int_equal(ra, 10000);
}

static void test_breaker_stale_normal(void **state)
{
    bh_conf_breaker_t conf = breaker_conf();
    bh_breaker_t b;
    bh_breaker_stats_t s;
    bh_breaker_ticket_t old[5];
    uint64_t ra;

    bh_breaker_init(&b, &conf, 0, 0);
    /* five requests admitted while CLOSED, then the breaker trips on others */
    for (int i = 0; i < 5; i++)
        assert_int_equal(bh_breaker_allow(&b, 0, NULL, &old[i], &ra), 0);
    for (int i = 0; i < 5; i++)
        assert_int_equal(request(&b, 1, true), 0);
    /* their outcomes during OPEN and after re-closing are ignored */
    bh_breaker_record(&b, &old[0], true, 2, NULL);
    for (int i = 0; i < 3; i++)
        assert_int_equal(request(&b, 5001, false), 0);
    assert_int_equal(bh_breaker_state(&b), BH_BREAKER_CLOSED);
    for (int i = 1; i < 5; i++)
        bh_breaker_record(&b, &old[i], true, 5002, NULL);
    bh_breaker_stats(&b, 5002, &s);
    assert_int_equal(s.state, BH_BREAKER_CLOSED);
    assert_int_equal(s.consecutive_failures, 0);
    assert_int_equal(s.window_requests, 0);
    /* non-probe outcomes in half-open do not count either: only probes decide */
}

static void test_breaker_jitter(void **state)
{
    bh_conf_breaker_t conf = breaker_conf();
    bh_breaker_t b;
    bh_breaker_ticket_t t;
    bh_rng_t rng;
    uint64_t ra, lo = UINT64_MAX, hi = 0, now = 0;

    bh_rng_seed(&rng, 99);
    bh_breaker_init(&b, &conf, 0, 0);
    for (int round = 0; round < 200; round++) {
        for (int i = 0; i < 5; i++) {
            assert_int_equal(bh_breaker_allow(&b, now, &rng, &t, &ra), 0);
            bh_breaker_record(&b, &t, true, now, &rng);
        }
        assert_int_equal(bh_breaker_allow(&b, now, &rng, &t, &ra), BH_EBREAKER_OPEN);
        assert_true(ra >= 4500 && ra <= 5500); /* open_for +-10% */
        lo = ra < lo ? ra : lo;
        hi = ra > hi ? ra : hi;
        now += ra;
        for (int i = 0; i < 3; i++) { /* recover */
            assert_int_equal(bh_breaker_allow(&b, now, &rng, &t, &ra), 0);
            bh_breaker_record(&b, &t, false, now, &rng);
        }
        assert_int_equal(bh_breaker_state(&b), BH_BREAKER_CLOSED);
    }
    assert_true(lo < 4700 && hi > 5300); /* really spread */
}

static void test_breaker_minutes(void **state)
{
    /* 10 minutes of simulated traffic, one request every 10 ms, with the upstream down from
     * minute 2 to minute 5: the breaker opens quickly, fails fast most requests while down,
     * and closes again soon after the upstream is back. */
    bh_conf_breaker_t conf = breaker_conf();
    bh_breaker_t b;
    bh_breaker_stats_t s;
    bh_rng_t rng;
    uint64_t sent_down = 0, rejected_up = 0, closed_at = 0;

    bh_rng_seed(&rng, 5);
    bh_breaker_init(&b, &conf, 1 * SEC, 0);
    for (uint64_t now = 0; now < 10 * MIN; now += 10) {
        bool down = now >= 2 * MIN && now < 5 * MIN;
        bh_breaker_ticket_t t;
        uint64_t ra;
        int rc = bh_breaker_allow(&b, now, &rng, &t, &ra);

        if (rc == 0) {
            sent_down += down;
            bh_breaker_record(&b, &t, down, now, &rng);
        } else if (!down) {
            rejected_up++;
        }
        if (!down && now > 5 * MIN && closed_at == 0 && bh_breaker_state(&b) == BH_BREAKER_CLOSED)
            closed_at = now;
    }
    bh_breaker_stats(&b, 10 * MIN, &s);
    assert_int_equal(s.state, BH_BREAKER_CLOSED);
    /* while down (18000 requests), only the 5 that tripped it and a few probes got through */
    assert_true(sent_down < 40);
    assert_true(s.opens >= 5 && s.opens < 20);
    /* back within one max_open_for (60 s) plus jitter */
    assert_true(closed_at > 5 * MIN && closed_at <= 5 * MIN + 66 * SEC);
    assert_true(rejected_up < 6600);
}

/* ---- outlier --------------------------------------------------------------------------- */

static bh_conf_outlier_t outlier_conf(void)
{
    bh_conf_outlier_t c = {.consecutive_failures = 5, .eject_for_ms = 30 * SEC, .max_ejected = 0.5};
    return c;
}

static void fail_n(bh_outlier_t *o, size_t i, int n, uint64_t now)
{
    for (int k = 0; k < n; k++)
        bh_outlier_record(o, i, true, now);
}

static void test_outlier_timing(void **state)
{
    bh_conf_outlier_t conf = outlier_conf();
    bh_outlier_t *o = bh_outlier_new(&conf, 4);
    bh_outlier_stats_t s;
    uint64_t until, now = 1000;
    bool el[4], panic;

    assert_non_null(o);
    fail_n(o, 0, 4, now);
    bh_outlier_record(o, 0, false, now); /* a success resets the run */
    fail_n(o, 0, 4, now);
    assert_false(bh_outlier_is_ejected(o, 0, now, NULL));
    bh_outlier_record(o, 0, true, now);
    assert_true(bh_outlier_is_ejected(o, 0, now, &until));
    assert_int_equal(until, now + 30 * SEC);
    assert_int_equal(bh_outlier_eligible(o, now, el, &panic), 3);
    assert_false(el[0]);
    assert_true(el[1] && el[2] && el[3]);
    assert_false(panic);
    /* failures of requests still in flight while it is ejected do not extend or re-arm it */
    fail_n(o, 0, 10, now + 1);
    assert_int_equal(bh_outlier_ejections(o, 0), 1);
    /* ejection n lasts 30 s x n, capped at 300 s */
    for (uint32_t n = 1; n <= 12; n++) {
        uint64_t expect = 30 * SEC * n < 300 * SEC ? 30 * SEC * n : 300 * SEC;
        assert_true(bh_outlier_is_ejected(o, 0, now, &until));
        assert_int_equal(until - now, expect);
        assert_true(bh_outlier_is_ejected(o, 0, until - 1, NULL));
        assert_false(bh_outlier_is_ejected(o, 0, until, NULL));
        now = until;
        fail_n(o, 0, 5, now);
        assert_int_equal(bh_outlier_ejections(o, 0), n + 1);
    }
    bh_outlier_stats(o, now, &s);
    assert_int_equal(s.ejections, 13);
    assert_int_equal(s.ejected, 1);
    assert_int_equal(s.max_ejectable, 2);
    assert_int_equal(s.eligible, 3);
    /* back for 300 s and healthy: the multiplier starts over */
    bh_outlier_is_ejected(o, 0, now, &until);
    bh_outlier_record(o, 0, false, until + 299 * SEC);
    assert_int_equal(bh_outlier_ejections(o, 0), 13);
    bh_outlier_record(o, 0, false, until + 300 * SEC);
    assert_int_equal(bh_outlier_ejections(o, 0), 0);
    now = until + 300 * SEC;
    fail_n(o, 0, 5, now);
    assert_true(bh_outlier_is_ejected(o, 0, now, &until));
    assert_int_equal(until - now, 30 * SEC);
    bh_outlier_free(o);

    /* consecutive_failures 0: passive ejection off */
    conf.consecutive_failures = 0;
    o = bh_outlier_new(&conf, 2);
    fail_n(o, 0, 1000, 0);
    assert_false(bh_outlier_is_ejected(o, 0, 0, NULL));
    bh_outlier_record(o, 7, true, 0); /* out of range: ignored */
    bh_outlier_free(o);
}

static void test_outlier_max_ejected(void **state)
{
    bh_conf_outlier_t conf = outlier_conf();
    bh_outlier_t *o = bh_outlier_new(&conf, 4);
    bh_outlier_stats_t s;
    uint64_t until;
    bool el[4];

    fail_n(o, 0, 5, 0);
    fail_n(o, 1, 5, 10 * SEC);
    /* a third would be 3 of 4 > 50%: endpoint 0, ejected first, comes back early to make room */
    fail_n(o, 2, 5, 20 * SEC);
    assert_true(bh_outlier_is_ejected(o, 2, 20 * SEC, NULL));
    assert_true(bh_outlier_is_ejected(o, 1, 20 * SEC, NULL));
    assert_false(bh_outlier_is_ejected(o, 0, 20 * SEC, NULL));
    bh_outlier_stats(o, 20 * SEC, &s);
    assert_int_equal(s.ejected, 2);
    assert_int_equal(s.ejections, 3);
    assert_int_equal(s.ejections_released, 1);
    assert_int_equal(s.ejections_skipped, 0);
    assert_int_equal(bh_outlier_eligible(o, 20 * SEC, el, NULL), 2);
    assert_true(el[0] && !el[1] && !el[2] && el[3]);
    /* endpoint 0 still fails: out again, for 2 x 30 s, and now endpoint 1 (ejected at 10 s) makes
     * room; its multiplier is kept */
    fail_n(o, 0, 5, 21 * SEC);
    assert_true(bh_outlier_is_ejected(o, 0, 21 * SEC, &until));
    assert_int_equal(until, 21 * SEC + 60 * SEC);
    assert_false(bh_outlier_is_ejected(o, 1, 21 * SEC, NULL));
    assert_int_equal(bh_outlier_ejections(o, 1), 1);
    /* an ejection that ends by itself makes room without a release */
    fail_n(o, 1, 5, 50 * SEC); /* endpoint 2's ended at 50 s */
    bh_outlier_stats(o, 50 * SEC, &s);
    assert_int_equal(s.ejected, 2);
    assert_int_equal(s.ejections_released, 2);
    assert_true(bh_outlier_is_ejected(o, 1, 50 * SEC, &until));
    assert_int_equal(until, 50 * SEC + 60 * SEC);
    bh_outlier_free(o);

    /* an ejected endpoint that also fails its health checks is not released: it would get no
     * traffic, and the one failing now would be ejected for nothing (panic, with 2 endpoints) */
    o = bh_outlier_new(&conf, 2);
    fail_n(o, 0, 5, 0);
    bh_outlier_set_healthy(o, 0, false);
    fail_n(o, 1, 5, SEC);
    assert_true(bh_outlier_is_ejected(o, 0, SEC, NULL));
    assert_false(bh_outlier_is_ejected(o, 1, SEC, NULL));
    bh_outlier_stats(o, SEC, &s);
    assert_int_equal(s.ejections_skipped, 1);
    assert_int_equal(s.ejections_released, 0);
    bh_outlier_set_healthy(o, 0, true); /* healthy again: the next failure releases it */
    bh_outlier_record(o, 1, true, 2 * SEC);
    assert_false(bh_outlier_is_ejected(o, 0, 2 * SEC, NULL));
    assert_true(bh_outlier_is_ejected(o, 1, 2 * SEC, NULL));
    bh_outlier_free(o);

    /* one endpoint at 50%: floor(0.5) = 0, never ejected, nothing to release */
    o = bh_outlier_new(&conf, 1);
    fail_n(o, 0, 50, 0);
    assert_false(bh_outlier_is_ejected(o, 0, 0, NULL));
    bh_outlier_stats(o, 0, &s);
    assert_int_equal(s.ejections_skipped, 46);
    assert_int_equal(s.ejections_released, 0);
    bh_outlier_free(o);
}

static void test_outlier_panic(void **state)
{
    bh_conf_outlier_t conf = outlier_conf();
    bh_outlier_t *o;
    bh_outlier_stats_t s;
    bool el[3], panic;

    conf.max_ejected = 1.0;
    o = bh_outlier_new(&conf, 3);
    fail_n(o, 0, 5, 0);
    fail_n(o, 1, 5, 0);
    assert_int_equal(bh_outlier_eligible(o, 0, el, &panic), 1);
    assert_true(!el[0] && !el[1] && el[2]);
    assert_false(panic);
    /* the last one unhealthy (active check): nothing eligible -> all of them (panic) */
    bh_outlier_set_healthy(o, 2, false);
    assert_int_equal(bh_outlier_eligible(o, 0, el, &panic), 3);
    assert_true(el[0] && el[1] && el[2]);
    assert_true(panic);
    bh_outlier_stats(o, 0, &s);
    assert_int_equal(s.eligible, 0);
    assert_int_equal(s.unhealthy, 1);
    /* healthy again */
    bh_outlier_set_healthy(o, 2, true);
    assert_int_equal(bh_outlier_eligible(o, 0, el, &panic), 1);
    assert_false(panic);
    /* every endpoint ejected */
    fail_n(o, 2, 5, 0);
    assert_int_equal(bh_outlier_eligible(o, 0, el, &panic), 3);
    assert_true(panic);
    assert_int_equal(bh_outlier_eligible(o, 30 * SEC, el, &panic), 3);
    assert_false(panic);
    bh_outlier_free(o);
}

/* ---- balance --------------------------------------------------------------------------- */

static void test_balance_round_robin(void **state)
{
    bh_balance_t b;
    bh_rng_t rng;
    bool el[4] = {true, false, true, true};
    static const size_t all[] = {0, 1, 2, 3, 0, 1}, some[] = {0, 2, 3, 0, 2, 3};

    bh_rng_seed(&rng, 3);
    bh_balance_init(&b, BH_BALANCE_ROUND_ROBIN);
    for (size_t i = 0; i < COUNT(all); i++)
        assert_int_equal(bh_balance_pick(&b, 4, NULL, NULL, BH_BALANCE_NONE, &rng), all[i]);
    bh_balance_init(&b, BH_BALANCE_ROUND_ROBIN);
    for (size_t i = 0; i < COUNT(some); i++)
        assert_int_equal(bh_balance_pick(&b, 4, el, NULL, BH_BALANCE_NONE, &rng), some[i]);
    assert_int_equal(bh_balance_pick(&b, 0, NULL, NULL, BH_BALANCE_NONE, &rng), BH_BALANCE_NONE);
    assert_int_equal(bh_balance_pick(&b, 1, NULL, NULL, BH_BALANCE_NONE, &rng), 0);
    assert_string_equal(bh_balance_name(BH_BALANCE_ROUND_ROBIN), "round_robin");
}

static void test_balance_random(void **state)
{
    bh_balance_t b;
    bh_rng_t rng;
    uint64_t hist[5] = {0};
    bool el[5] = {true, true, true, true, false};

    bh_rng_seed(&rng, 11);
    bh_balance_init(&b, BH_BALANCE_RANDOM);
    for (int i = 0; i < 40000; i++)
        hist[bh_balance_pick(&b, 5, el, NULL, BH_BALANCE_NONE, &rng)]++;
    assert_int_equal(hist[4], 0);
    assert_true(chi_square(hist, 4, 10000.0) < 16.3); /* 3 d.o.f., p = 0.001 */
}

static void test_balance_least_request(void **state)
{
    bh_balance_t b;
    bh_rng_t rng;
    uint64_t hist[4] = {0};
    uint32_t one_idle[4] = {10, 0, 10, 10}, ramp[4] = {0, 1, 2, 3};

    bh_rng_seed(&rng, 13);
    bh_balance_init(&b, BH_BALANCE_LEAST_REQUEST);
    /* P2C: the idle endpoint wins whenever it is one of the two drawn: 3 pairs of 6 -> 50% */
    for (int i = 0; i < 60000; i++)
        hist[bh_balance_pick(&b, 4, NULL, one_idle, BH_BALANCE_NONE, &rng)]++;
    assert_true(hist[1] > 29000 && hist[1] < 31000);
    for (int i = 0; i < 4; i++)
        if (i != 1)
            assert_true(hist[i] > 9000 && hist[i] < 11000);
    /* the most loaded is never picked when another is drawn with it (always), the least loaded
     * half of the time */
    memset(hist, 0, sizeof hist);
    for (int i = 0; i < 60000; i++)
        hist[bh_balance_pick(&b, 4, NULL, ramp, BH_BALANCE_NONE, &rng)]++;
    assert_int_equal(hist[3], 0);
    assert_true(hist[0] > 29000 && hist[0] < 31000);
    assert_true(hist[0] > hist[1] && hist[1] > hist[2]);
    /* equal loads: uniform */
    memset(hist, 0, sizeof hist);
    for (int i = 0; i < 40000; i++)
        hist[bh_balance_pick(&b, 4, NULL, NULL, BH_BALANCE_NONE, &rng)]++;
    assert_true(chi_square(hist, 4, 10000.0) < 16.3);
}

static void test_balance_prefer_not(void **state)
{
    static const enum bh_balance_policy pols[] = {BH_BALANCE_ROUND_ROBIN, BH_BALANCE_RANDOM,
                                                  BH_BALANCE_LEAST_REQUEST};
    bh_rng_t rng;
    uint32_t load[3] = {5, 0, 5};
    bool only1[3] = {false, true, false}, two[3] = {false, true, true}, none[3] = {0};

    bh_rng_seed(&rng, 17);
    for (size_t p = 0; p < COUNT(pols); p++) {
        bh_balance_t b;
        bh_balance_init(&b, pols[p]);
        for (int i = 0; i < 1000; i++) {
            /* the failed endpoint is avoided, even when it is the least loaded */
            assert_int_not_equal(bh_balance_pick(&b, 3, NULL, load, 1, &rng), 1);
            /* unless it is the only eligible one */
            assert_int_equal(bh_balance_pick(&b, 3, only1, load, 1, &rng), 1);
            assert_int_equal(bh_balance_pick(&b, 3, two, load, 1, &rng), 2);
            /* nothing eligible: panic over all, still avoiding the failed one */
            assert_int_not_equal(bh_balance_pick(&b, 3, none, load, 0, &rng), 0);
            assert_int_equal(bh_balance_pick(&b, 1, none, NULL, 0, &rng), 0);
        }
    }
}

/* ---- retry ----------------------------------------------------------------------------- */

static void test_retry_decide_table(void **state)
{
    enum { NS = BH_SAFETY_NOT_SENT, SN = BH_SAFETY_SENT_NO_RESPONSE, PA = BH_SAFETY_PARTIAL };
    enum { KEY = 1, GONE = 2, ALL = 4, FIVEXX = 8, STATUS = 16, FBT = 32 };
    static const struct {
        bh_outcome_t outcome;
        int status, safety;
        uint32_t method;
        unsigned flags, made;
        bh_retry_verdict_t want;
    } cases[] = {
        /* connect failures never reached the upstream: any method */
        {BH_OUTCOME_CONNECT_FAILED, 0, NS, BH_M_POST, 0, 1, BH_RETRY_YES},
        {BH_OUTCOME_CONNECT_TIMEOUT, 0, NS, BH_M_PATCH, 0, 2, BH_RETRY_YES},
        {BH_OUTCOME_CONNECT_FAILED, 0, NS, BH_M_POST, 0, 3, BH_RETRY_NO_ATTEMPTS},
        {BH_OUTCOME_CONNECT_FAILED, 0, NS, BH_M_POST, GONE, 1, BH_RETRY_NO_BODY},
        /* a pooled connection found closed before writing: NOT_SENT, POST retried */
        {BH_OUTCOME_RESET_BEFORE_RESPONSE, 0, NS, BH_M_POST, 0, 1, BH_RETRY_YES},
        /* reset after sending: only idempotent, keyed, or methods: all */
        {BH_OUTCOME_RESET_BEFORE_RESPONSE, 0, SN, BH_M_GET, 0, 1, BH_RETRY_YES},
        {BH_OUTCOME_RESET_BEFORE_RESPONSE, 0, SN, BH_M_PUT, 0, 1, BH_RETRY_YES},
        {BH_OUTCOME_RESET_BEFORE_RESPONSE, 0, SN, BH_M_DELETE, 0, 1, BH_RETRY_YES},
        {BH_OUTCOME_RESET_BEFORE_RESPONSE, 0, SN, BH_M_HEAD, 0, 1, BH_RETRY_YES},
        {BH_OUTCOME_RESET_BEFORE_RESPONSE, 0, SN, BH_M_OPTIONS, 0, 1, BH_RETRY_YES},
        {BH_OUTCOME_RESET_BEFORE_RESPONSE, 0, SN, BH_M_TRACE, 0, 1, BH_RETRY_YES},
        {BH_OUTCOME_RESET_BEFORE_RESPONSE, 0, SN, BH_M_POST, 0, 1, BH_RETRY_NO_UNSAFE_METHOD},
        {BH_OUTCOME_RESET_BEFORE_RESPONSE, 0, SN, BH_M_PATCH, 0, 1, BH_RETRY_NO_UNSAFE_METHOD},
        {BH_OUTCOME_RESET_BEFORE_RESPONSE, 0, SN, BH_M_OTHER, 0, 1, BH_RETRY_NO_UNSAFE_METHOD},
        {BH_OUTCOME_RESET_BEFORE_RESPONSE, 0, SN, BH_M_POST, KEY, 1, BH_RETRY_YES},
        {BH_OUTCOME_RESET_BEFORE_RESPONSE, 0, SN, BH_M_POST, ALL, 1, BH_RETRY_YES},
        {BH_OUTCOME_RESET_BEFORE_RESPONSE, 0, SN, BH_M_PUT, GONE, 1, BH_RETRY_NO_BODY},
        {BH_OUTCOME_RESET_BEFORE_RESPONSE, 0, SN, BH_M_POST, KEY | GONE, 1, BH_RETRY_NO_BODY},
        /* PARTIAL never, whatever the method or setting */
        {BH_OUTCOME_RESET_BEFORE_RESPONSE, 0, PA, BH_M_GET, ALL, 1, BH_RETRY_NO_PARTIAL},
        {BH_OUTCOME_PARTIAL, 0, PA, BH_M_GET, 0, 1, BH_RETRY_NO_PARTIAL},
        {BH_OUTCOME_HTTP_5XX, 503, PA, BH_M_GET, 0, 1, BH_RETRY_NO_PARTIAL},
        /* the deadline is never retried */
        {BH_OUTCOME_TOTAL_TIMEOUT, 0, NS, BH_M_GET, 0, 1, BH_RETRY_NO_DEADLINE},
        /* first-byte timeout: only when listed in on */
        {BH_OUTCOME_FIRST_BYTE_TIMEOUT, 0, SN, BH_M_GET, 0, 1, BH_RETRY_NO_NOT_IN_ON},
        {BH_OUTCOME_FIRST_BYTE_TIMEOUT, 0, SN, BH_M_GET, FBT, 1, BH_RETRY_YES},
        {BH_OUTCOME_FIRST_BYTE_TIMEOUT, 0, SN, BH_M_POST, FBT, 1, BH_RETRY_NO_UNSAFE_METHOD},
        {BH_OUTCOME_IDLE_TIMEOUT, 0, SN, BH_M_GET, FBT, 1, BH_RETRY_NO_NOT_IN_ON},
        {BH_OUTCOME_PROTOCOL_ERROR, 0, SN, BH_M_GET, 0, 1, BH_RETRY_NO_NOT_IN_ON},
        {BH_OUTCOME_LOCAL, 0, NS, BH_M_GET, 0, 1, BH_RETRY_NO_NOT_IN_ON},
        /* statuses: gateway-error is 502/503/504 */
        {BH_OUTCOME_HTTP_5XX, 502, SN, BH_M_GET, 0, 1, BH_RETRY_YES},
        {BH_OUTCOME_HTTP_5XX, 503, SN, BH_M_GET, 0, 2, BH_RETRY_YES},
        {BH_OUTCOME_HTTP_5XX, 504, SN, BH_M_GET, 0, 1, BH_RETRY_YES},
        {BH_OUTCOME_HTTP_5XX, 503, SN, BH_M_GET, 0, 3, BH_RETRY_NO_ATTEMPTS},
        {BH_OUTCOME_HTTP_5XX, 500, SN, BH_M_GET, 0, 1, BH_RETRY_NO_NOT_IN_ON},
        {BH_OUTCOME_HTTP_5XX, 500, SN, BH_M_GET, FIVEXX, 1, BH_RETRY_YES},
        {BH_OUTCOME_HTTP_5XX, 599, SN, BH_M_GET, FIVEXX, 1, BH_RETRY_YES},
        {BH_OUTCOME_HTTP_5XX, 503, SN, BH_M_POST, 0, 1, BH_RETRY_NO_UNSAFE_METHOD},
        {BH_OUTCOME_HTTP_5XX, 503, SN, BH_M_POST, KEY, 1, BH_RETRY_YES},
        /* retriable-status: the list (503 by default) */
        {BH_OUTCOME_OK, 429, SN, BH_M_GET, STATUS, 1, BH_RETRY_NO_SUCCESS},
        {BH_OUTCOME_HTTP_5XX, 503, SN, BH_M_GET, STATUS, 1, BH_RETRY_YES},
        {BH_OUTCOME_OK, 200, SN, BH_M_GET, FIVEXX | STATUS, 1, BH_RETRY_NO_SUCCESS},
        {BH_OUTCOME_OK, 404, SN, BH_M_GET, 0, 1, BH_RETRY_NO_SUCCESS},
    };

    for (size_t i = 0; i < COUNT(cases); i++) {
        bh_conf_retry_t c = retry_conf();
        bh_attempt_t a = {cases[i].outcome, cases[i].status, (bh_safety_t)cases[i].safety};
        bh_retry_request_t r = {cases[i].method, cases[i].flags & KEY, !(cases[i].flags & GONE)};
        bh_retry_verdict_t got;

        if (cases[i].flags & ALL)
            c.methods_all = true;
        if (cases[i].flags & FIVEXX)
            c.on |= BH_RETRY_ON_5XX;
        if (cases[i].flags & FBT)
            c.on |= BH_RETRY_ON_FIRST_BYTE_TIMEOUT;
        if (cases[i].flags & STATUS)
            c.on = BH_RETRY_ON_RETRIABLE_STATUS;
        got = bh_retry_decide(&c, cases[i].made, &a, &r);
        if (got != cases[i].want)
            fail_msg("case %zu: got %s, want %s", i, bh_retry_verdict_name(got),
                     bh_retry_verdict_name(cases[i].want));
    }
}

static void test_retry_status_list(void **state)
{
    bh_conf_retry_t c = retry_conf();
    bh_retry_request_t r = {BH_M_GET, false, true};
    bh_attempt_t a = {BH_OUTCOME_OK, 429, BH_SAFETY_SENT_NO_RESPONSE};

    c.on = BH_RETRY_ON_RETRIABLE_STATUS;
    c.retriable_status[0] = 429;
    c.retriable_status[1] = 503;
    c.n_retriable_status = 2;
    assert_int_equal(bh_outcome_for_status(429), BH_OUTCOME_OK);
    assert_int_equal(bh_outcome_for_status(500), BH_OUTCOME_HTTP_5XX);
    assert_int_equal(bh_outcome_for_status(599), BH_OUTCOME_HTTP_5XX);
    assert_int_equal(bh_outcome_for_status(600), BH_OUTCOME_OK);
    assert_int_equal(bh_retry_decide(&c, 1, &a, &r), BH_RETRY_YES);
    a.status = 502;
    a.outcome = bh_outcome_for_status(502);
    assert_int_equal(bh_retry_decide(&c, 1, &a, &r), BH_RETRY_NO_NOT_IN_ON);
    /* attempts 1 = no retry at all */
    c.attempts = 1;
    a.status = 503;
    assert_int_equal(bh_retry_decide(&c, 1, &a, &r), BH_RETRY_NO_ATTEMPTS);
    assert_true(bh_method_idempotent(BH_M_GET));
    assert_false(bh_method_idempotent(BH_M_GET | BH_M_POST));
    assert_false(bh_method_idempotent(0));
    assert_string_equal(bh_retry_verdict_name(BH_RETRY_NO_UNSAFE_METHOD), "unsafe-method");
    assert_string_equal(bh_retry_verdict_name((bh_retry_verdict_t)99), "unknown");
}

static void test_retry_counts(void **state)
{
    const uint32_t def = BH_COUNT_CONNECT_FAILURE | BH_COUNT_TIMEOUT | BH_COUNT_5XX;
    static const struct {
        bh_outcome_t outcome;
        int status;
        uint32_t count;
        bool want;
    } cases[] = {
        {BH_OUTCOME_OK, 200, 0xff, false},
        {BH_OUTCOME_OK, 429, 0xff, false},
        {BH_OUTCOME_HTTP_5XX, 500, def, true},
        {BH_OUTCOME_HTTP_5XX, 503, BH_COUNT_TIMEOUT, false},
        {BH_OUTCOME_CONNECT_FAILED, 0, def, true},
        {BH_OUTCOME_CONNECT_FAILED, 0, BH_COUNT_TIMEOUT, false},
        {BH_OUTCOME_CONNECT_TIMEOUT, 0, BH_COUNT_CONNECT_FAILURE, true},
        {BH_OUTCOME_CONNECT_TIMEOUT, 0, BH_COUNT_TIMEOUT, true},
        {BH_OUTCOME_CONNECT_TIMEOUT, 0, BH_COUNT_5XX, false},
        {BH_OUTCOME_FIRST_BYTE_TIMEOUT, 0, def, true},
        {BH_OUTCOME_IDLE_TIMEOUT, 0, def, true},
        {BH_OUTCOME_FIRST_BYTE_TIMEOUT, 0, BH_COUNT_5XX | BH_COUNT_CONNECT_FAILURE, false},
        {BH_OUTCOME_RESET_BEFORE_RESPONSE, 0, def, false}, /* reset is not in the default */
        {BH_OUTCOME_RESET_BEFORE_RESPONSE, 0, BH_COUNT_RESET, true},
        {BH_OUTCOME_PROTOCOL_ERROR, 0, BH_COUNT_RESET, true},
        {BH_OUTCOME_PARTIAL, 0, BH_COUNT_RESET, true},
        {BH_OUTCOME_TOTAL_TIMEOUT, 0, 0xff, false},
        {BH_OUTCOME_LOCAL, 0, 0xff, false},
    };

    for (size_t i = 0; i < COUNT(cases); i++) {
        bh_attempt_t a = {cases[i].outcome, cases[i].status, BH_SAFETY_SENT_NO_RESPONSE};
        if (bh_retry_counts_as_failure(cases[i].count, &a) != cases[i].want)
            fail_msg("case %zu: expected %d", i, cases[i].want);
    }
}

/* ---- deadline -------------------------------------------------------------------------- */

static void test_deadline(void **state)
{
    uint64_t ms = 0;
    bool total;

    assert_int_equal(bh_deadline_after(1000, 500), 1500);
    assert_int_equal(bh_deadline_after(1000, 0), BH_DEADLINE_NONE);
    assert_int_equal(bh_deadline_after(UINT64_MAX - 10, 20), BH_DEADLINE_NONE);
    assert_int_equal(bh_deadline_remaining(1500, 1200), 300);
    assert_int_equal(bh_deadline_remaining(1500, 1600), 0);
    assert_int_equal(bh_deadline_remaining(BH_DEADLINE_NONE, 5), UINT64_MAX);
    assert_int_equal(bh_deadline_min(3, 4), 3);
    assert_true(bh_deadline_expired(1500, 1500));
    assert_false(bh_deadline_expired(1500, 1499));
    assert_false(bh_deadline_expired(BH_DEADLINE_NONE, UINT64_MAX - 1));

    /* Bulkhead-Timeout: a shorter budget is taken, a longer one never */
    assert_int_equal(bh_deadline_for_request(1000, 30000, 0), 31000);
    assert_int_equal(bh_deadline_for_request(1000, 30000, 250), 1250);
    assert_int_equal(bh_deadline_for_request(1000, 30000, 60000), 31000);
    assert_int_equal(bh_deadline_for_request(1000, 0, 250), 1250);

    assert_int_equal(bh_deadline_parse_ms("250", 3, &ms), 0);
    assert_int_equal(ms, 250);
    assert_int_equal(bh_deadline_parse_ms(" 42\t", 4, &ms), 0);
    assert_int_equal(ms, 42);
    assert_int_equal(bh_deadline_parse_ms("99999999999999999999999999", 26, &ms), 0);
    assert_int_equal(ms, 365ull * 86400 * 1000);
    ms = 7;
    assert_int_equal(bh_deadline_parse_ms("0", 1, &ms), -1);
    assert_int_equal(bh_deadline_parse_ms("", 0, &ms), -1);
    assert_int_equal(bh_deadline_parse_ms("-5", 2, &ms), -1);
    assert_int_equal(bh_deadline_parse_ms("5s", 2, &ms), -1);
    assert_int_equal(bh_deadline_parse_ms("1 2", 3, &ms), -1);
    assert_int_equal(ms, 7);
    assert_int_equal(bh_deadline_parse_ms("123456", 2, &ms), 0); /* length-bounded */
    assert_int_equal(ms, 12);

    /* phase timers: the earlier of the phase and the request deadline, and which one it is */
    assert_int_equal(bh_deadline_phase(1000, 31000, 1000, &total), 2000);
    assert_false(total);
    assert_int_equal(bh_deadline_phase(30500, 31000, 1000, &total), 31000);
    assert_true(total);
    assert_int_equal(bh_deadline_phase(30000, 31000, 1000, &total), 31000);
    assert_true(total); /* a tie is the deadline: 504, not retried */
    assert_int_equal(bh_deadline_phase(1000, BH_DEADLINE_NONE, 1000, &total), 2000);
    assert_false(total);
    assert_int_equal(bh_deadline_phase(1000, BH_DEADLINE_NONE, 0, &total), BH_DEADLINE_NONE);
    assert_false(total);
    assert_int_equal(bh_deadline_phase(1000, 5000, 0, NULL), 5000);
}

/* ---- the pipeline's arithmetic together ------------------------------------------------ */

static void test_pipeline_walkthrough(void **state)
{
    /* A GET whose first two attempts hit refused connections on endpoint 0 and a 503 on
     * endpoint 1: every retry goes elsewhere, waits a jittered backoff that fits the deadline,
     * and takes one unit of budget when scheduled. */
    bh_conf_retry_t rc = retry_conf();
    bh_budget_t budget;
    bh_balance_t bal;
    bh_rng_t rng;
    uint64_t now = 10 * SEC, deadline = bh_deadline_for_request(now, 30 * SEC, 1000);
    bh_retry_request_t req = {BH_M_GET, false, true};
    bh_attempt_t attempts[] = {
        {BH_OUTCOME_CONNECT_FAILED, 0, BH_SAFETY_NOT_SENT},
        {BH_OUTCOME_HTTP_5XX, 503, BH_SAFETY_SENT_NO_RESPONSE},
    };
    size_t ep = BH_BALANCE_NONE;
    bh_budget_stats_t bs;

    bh_rng_seed(&rng, 21);
    bh_budget_init(&budget, &rc.budget);
    bh_balance_init(&bal, BH_BALANCE_ROUND_ROBIN);
    bh_budget_on_request(&budget, now);
    for (unsigned n = 1; n <= 2; n++) {
        size_t next;
        uint64_t d;

        ep = bh_balance_pick(&bal, 3, NULL, NULL, ep, &rng);
        assert_int_equal(bh_retry_decide(&rc, n, &attempts[n - 1], &req), BH_RETRY_YES);
        d = bh_backoff_delay(&rc, n, 0, bh_deadline_remaining(deadline, now), &rng);
        assert_true(bh_backoff_fits(d, now, deadline));
        assert_true(bh_budget_try_acquire_retry(&budget, now));
        now += d;
        next = bh_balance_pick(&bal, 3, NULL, NULL, ep, &rng);
        assert_int_not_equal(next, ep);
    }
    bh_budget_stats(&budget, now, &bs);
    assert_int_equal(bs.retries, 2);
    assert_int_equal(bs.requests, 1);
    /* the third attempt's failure: attempts used up */
    assert_int_equal(bh_retry_decide(&rc, 3, &attempts[1], &req), BH_RETRY_NO_ATTEMPTS);
    /* a retry whose Retry-After does not fit the client's 1 s budget is not attempted */
    assert_int_equal(bh_backoff_delay(&rc, 1, 5000, bh_deadline_remaining(deadline, now), &rng),
                     BH_BACKOFF_GIVE_UP);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rng),
        cmocka_unit_test(test_backoff_ceiling),
        cmocka_unit_test(test_backoff_distribution),
        cmocka_unit_test(test_backoff_limits),
        cmocka_unit_test(test_backoff_fits),
        cmocka_unit_test(test_retry_after_parse),
        cmocka_unit_test(test_window),
        cmocka_unit_test(test_budget_reserve),
        cmocka_unit_test(test_budget_ratio),
        cmocka_unit_test(test_budget_zero),
        cmocka_unit_test(test_breaker_consecutive),
        cmocka_unit_test(test_breaker_half_open),
        cmocka_unit_test(test_breaker_reopen_doubles),
        cmocka_unit_test(test_breaker_failure_rate),
        cmocka_unit_test(test_breaker_stuck_probes),
        cmocka_unit_test(test_breaker_stale_normal),
        cmocka_unit_test(test_breaker_jitter),
        cmocka_unit_test(test_breaker_minutes),
        cmocka_unit_test(test_outlier_timing),
        cmocka_unit_test(test_outlier_max_ejected),
        cmocka_unit_test(test_outlier_panic),
        cmocka_unit_test(test_balance_round_robin),
        cmocka_unit_test(test_balance_random),
        cmocka_unit_test(test_balance_least_request),
        cmocka_unit_test(test_balance_prefer_not),
        cmocka_unit_test(test_retry_decide_table),
        cmocka_unit_test(test_retry_status_list),
        cmocka_unit_test(test_retry_counts),
        cmocka_unit_test(test_deadline),
        cmocka_unit_test(test_pipeline_walkthrough),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
