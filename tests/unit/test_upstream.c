/* Unit tests of the upstream layer (bh_upstream) on a real loop: endpoint names are looked up off
 * the loop, a request waits for the first answer, and bh_upstream_init fails safely when out of
 * memory.
 *
 * The system resolver is replaced for this process by getaddrinfo() below (the executable's
 * definition interposes on libc's, also for libuv's threadpool): it records which thread calls
 * it, answers the made-up names *.bh-test after a delay the test sets, and hands any other name
 * to the real resolver. Connections go to a loopback socket that listens and never accepts (the
 * kernel completes the handshake). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bh_alloc.h"
#include "bh_upstream.h"

#define NEVER BH_TIME_NEVER

/* ---- the resolver ------------------------------------------------------------------------ */

static pthread_t loop_thread;      /* the tests' thread, which runs the loop */
static atomic_int lookup_delay_ms; /* how long a *.bh-test lookup takes */
static atomic_int lookups;         /* *.bh-test lookups answered */
static atomic_int lookups_on_loop; /* ... of which on the loop's thread: must stay 0 */

static bool ends_with(const char *s, const char *tail)
{
    size_t n = strlen(s), m = strlen(tail);
    return n >= m && strcmp(s + n - m, tail) == 0;
}

/* After lookup_delay_ms, slow.bh-test is 127.0.0.1 and fails.bh-test does not exist;
 * gone.bh-test does not exist either, and says so at once. */
int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
    static _Atomic(gai_fn) real;
    if (atomic_load(&real) == NULL)
        atomic_store(&real, (gai_fn)dlsym(RTLD_NEXT, "getaddrinfo"));
    if (node == NULL || !ends_with(node, ".bh-test"))
        return atomic_load(&real)(node, service, hints, res);
    if (pthread_equal(pthread_self(), loop_thread))
        atomic_fetch_add(&lookups_on_loop, 1);
    if (strcmp(node, "gone.bh-test") == 0)
        return EAI_NONAME;
    usleep((useconds_t)atomic_load(&lookup_delay_ms) * 1000);
    atomic_fetch_add(&lookups, 1);
    if (strcmp(node, "slow.bh-test") != 0)
        return EAI_NONAME;
    return atomic_load(&real)("127.0.0.1", service, hints, res);
}

/* ---- a loop, an upstream ----------------------------------------------------------------- */

/* A timer that notes when it ran: proof that the loop turned. */
/* The test thread's inbox (lane 0, the only worker): permits never move between workers here. */
static void ignore_wake(bh_sem_inbox_t *in)
{
    (void)in;
}
static bh_sem_inbox_t inbox0 = {.lane = 0, .wake = ignore_wake};

typedef struct tick {
    uv_timer_t t;
    uint64_t at_ms;
} tick_t;

typedef struct ctx {
    uv_loop_t loop;
    bh_bufpool_t bufs;
    bh_wreq_cache_t wreqs;
    bh_rng_t rng;
    bh_upstream_env_t env;
    bh_conf_t *conf;
    bh_upstream_shared_t shared;
    bool shared_ok;
    bh_upstream_t up;
    bool up_open; /* initialised (even if that failed) and not closed yet */
    int closed;   /* close callbacks seen */
    int listen_fd;
    int port;
    tick_t tick;
} ctx_t;

static uint64_t mono_ms(void)
{
    return uv_hrtime() / 1000000;
}

static int setup(void **state)
{
    ctx_t *x = calloc(1, sizeof(*x));
    assert_non_null(x);
    assert_int_equal(uv_loop_init(&x->loop), 0);
    bh_bufpool_init(&x->bufs, 16384, 16);
    bh_wreq_cache_init(&x->wreqs, 16);
    bh_rng_seed(&x->rng, 42);
    x->env =
        (bh_upstream_env_t){.loop = &x->loop, .bufs = &x->bufs, .wreqs = &x->wreqs, .rng = &x->rng,
                            .inbox = &inbox0};
    x->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(x->listen_fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sin);
    assert_int_equal(bind(x->listen_fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(x->listen_fd, 64), 0);
    assert_int_equal(getsockname(x->listen_fd, (struct sockaddr *)&sin, &len), 0);
    x->port = ntohs(sin.sin_port);
    atomic_store(&lookup_delay_ms, 0);
    atomic_store(&lookups, 0);
    atomic_store(&lookups_on_loop, 0);
    *state = x;
    return 0;
}

static void on_closed(bh_upstream_t *up)
{
    ((ctx_t *)up->data)->closed++;
}

#define run_until(x, cond, ms)                                                                     \
    do {                                                                                           \
        uint64_t end_ = mono_ms() + (ms);                                                          \
        while (!(cond) && mono_ms() < end_)                                                        \
            uv_run(&(x)->loop, UV_RUN_ONCE);                                                       \
        assert_true(cond);                                                                         \
    } while (0)

/* Closes the upstream and runs the loop until its callback (bounded: a test that failed holding
 * a connection must not hang here). */
static void close_up(ctx_t *x)
{
    if (!x->up_open)
        return;
    x->up_open = false;
    int before = x->closed;
    bh_upstream_close(&x->up, on_closed);
    run_until(x, x->closed == before + 1, 10000);
    assert_null(x->up.eps);
}

static int teardown(void **state)
{
    ctx_t *x = *state;
    close_up(x);
    assert_int_equal(uv_run(&x->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&x->loop), 0); /* a handle left open fails here */
    if (x->shared_ok)
        bh_upstream_shared_destroy(&x->shared);
    bh_conf_free(x->conf);
    bh_wreq_cache_destroy(&x->wreqs);
    bh_bufpool_destroy(&x->bufs);
    close(x->listen_fd);
    free(x);
    /* the made-up names never reached the loop's thread */
    assert_int_equal(atomic_load(&lookups_on_loop), 0);
    return 0;
}

/* Loads a configuration with one upstream u: endpoints is the inside of its YAML list, in which
 * each P is the listening port; extra is more keys of u. */
static void load(ctx_t *x, const char *endpoints, const char *extra)
{
    char eps[256], yaml[1024];
    size_t n = 0;
    for (const char *p = endpoints; *p != '\0' && n < sizeof(eps) - 8; p++) {
        if (*p == 'P')
            n += (size_t)snprintf(eps + n, sizeof(eps) - n, "%d", x->port);
        else
            eps[n++] = *p;
    }
    eps[n] = '\0';
    snprintf(yaml, sizeof(yaml),
             "listeners:\n  - address: 127.0.0.1:8080\n"
             "upstreams:\n  u:\n    endpoints: [ %s ]\n    balance: round_robin\n%s",
             eps, extra != NULL ? extra : "");
    bh_conf_error_t err;
    int rc = bh_conf_load_string("t.yaml", yaml, strlen(yaml), &x->conf, &err);
    if (rc != 0)
        fail_msg("config: %s", err.msg);
    assert_int_equal(bh_upstream_shared_init(&x->shared, &x->conf->upstreams[0], 1, mono_ms()), 0);
    x->shared_ok = true;
}

static int init_up(ctx_t *x)
{
    int rc = bh_upstream_init(&x->up, &x->conf->upstreams[0], &x->env, &x->shared, NULL);
    x->up.data = x;
    x->up_open = true;
    return rc;
}

/* A waiter for a connection, and what it got. */
typedef struct acq {
    bh_pool_waiter_t w;
    bool done;
    int status;
    bh_upconn_t *uc;
    uint64_t at_ms;
} acq_t;

static void on_acquired(bh_pool_waiter_t *w, bh_pool_conn_t *pc, int status)
{
    acq_t *a = w->data;
    a->done = true;
    a->status = status;
    a->uc = bh_upconn_of(pc);
    a->at_ms = mono_ms();
}

/* Returns what bh_upstream_acquire returned; a->done once the outcome is known. */
static int acquire(ctx_t *x, size_t ep, acq_t *a)
{
    memset(a, 0, sizeof(*a));
    a->w.cb = on_acquired;
    a->w.data = a;
    int rc = bh_upstream_acquire(&x->up, ep, &a->w, NEVER, &a->uc);
    if (rc != BH_POOL_QUEUED) {
        a->done = true;
        a->status = rc;
        a->at_ms = mono_ms();
    }
    return rc;
}

static void on_tick(uv_timer_t *t)
{
    ((tick_t *)t)->at_ms = mono_ms();
    uv_close((uv_handle_t *)t, NULL);
}

/* ---- the tests --------------------------------------------------------------------------- */

/* Every allocation of bh_upstream_init fails in turn; each failure returns BH_ENOMEM and is
 * closed like a success: only initialised handles are closed (ASan and libuv's asserts catch
 * the others), nothing leaks (LeakSanitizer), and the loop ends empty (teardown). */
static void test_init_out_of_memory(void **state)
{
    ctx_t *x = *state;
    load(x, "\"127.0.0.1:P\", \"slow.bh-test:P\", \"fails.bh-test:P\"", NULL);
    unsigned long nth;
    for (nth = 1;; nth++) {
        bh_alloc_fail_after(nth);
        int rc = init_up(x);
        bh_alloc_fail_after(0);
        close_up(x);
        if (rc == 0)
            break;
        assert_int_equal(rc, BH_ENOMEM);
        assert_true(nth < 1000);
    }
    assert_true(nth > 1); /* at least one allocation failed */
}

/* The name is looked up on the threadpool: bh_upstream_init returns at once, the loop keeps
 * turning, and a request for the only endpoint waits for the answer, then connects. On the code
 * that resolved inside bh_upstream_init, the init took the whole lookup and ran it on the loop's
 * thread. */
static void test_lookup_does_not_block_the_loop(void **state)
{
    ctx_t *x = *state;
    load(x, "\"slow.bh-test:P\"", NULL);
    atomic_store(&lookup_delay_ms, 300);
    uint64_t t0 = mono_ms();
    assert_int_equal(init_up(x), 0);
    uint64_t init_ms = mono_ms() - t0;
    assert_int_equal(atomic_load(&lookups_on_loop), 0);
    assert_true(init_ms < 150);
    assert_int_equal(x->up.eps[0].dns_state, BH_EP_DNS_PENDING);

    tick_t *tick = &x->tick;
    uv_timer_init(&x->loop, &tick->t);
    uv_timer_start(&tick->t, on_tick, 20, 0);
    acq_t a;
    size_t ep = bh_upstream_pick(&x->up, BH_BALANCE_NONE);
    assert_int_equal(ep, 0);
    assert_int_equal(acquire(x, ep, &a), BH_POOL_QUEUED); /* waits, does not fail */
    run_until(x, a.done, 5000);
    assert_int_equal(a.status, 0);
    assert_non_null(a.uc);
    assert_true(a.at_ms - t0 >= 250); /* it did wait for the answer */
    assert_true(tick->at_ms != 0 && tick->at_ms < a.at_ms && tick->at_ms - t0 < 200);
    assert_int_equal(x->up.eps[0].dns_state, BH_EP_DNS_RESOLVED);
    assert_int_equal(atomic_load(&lookups), 1);
    bh_upconn_release(a.uc, true);
    bh_upstream_unpick(&x->up, ep);
    /* the next request reuses the connection: it was opened to the current address */
    assert_int_equal(acquire(x, 0, &a), 0);
    bh_upconn_release(a.uc, false);
}

/* A name that does not resolve fails the waiting request as a connect failure (the retry policy
 * may retry it elsewhere), and later requests at once without waiting. */
static void test_pending_name_that_fails(void **state)
{
    ctx_t *x = *state;
    load(x, "\"fails.bh-test:P\"", NULL);
    atomic_store(&lookup_delay_ms, 100);
    assert_int_equal(init_up(x), 0);
    acq_t a, b;
    assert_int_equal(acquire(x, 0, &a), BH_POOL_QUEUED);
    assert_int_equal(acquire(x, 0, &b), BH_POOL_QUEUED);
    run_until(x, a.done && b.done, 5000);
    assert_int_equal(a.status, BH_ECONNECT_FAILED);
    assert_int_equal(b.status, BH_ECONNECT_FAILED);
    assert_int_equal(x->up.eps[0].dns_state, BH_EP_DNS_FAILED);
    assert_int_equal(acquire(x, 0, &a), BH_ECONNECT_FAILED);
}

/* timeouts.connect bounds the wait for the name like the connect it precedes. */
static void test_connect_timeout_covers_the_lookup(void **state)
{
    ctx_t *x = *state;
    load(x, "\"slow.bh-test:P\"", "    timeouts: { connect: 100ms }\n");
    atomic_store(&lookup_delay_ms, 500);
    uint64_t t0 = mono_ms();
    assert_int_equal(init_up(x), 0);
    acq_t a;
    assert_int_equal(acquire(x, 0, &a), BH_POOL_QUEUED);
    run_until(x, a.done, 5000);
    assert_int_equal(a.status, BH_ECONNECT_TIMEOUT);
    assert_true(a.at_ms - t0 < 400);
    /* the answer still comes, and the next request connects at once */
    run_until(x, x->up.eps[0].dns_state == BH_EP_DNS_RESOLVED, 5000);
    assert_int_equal(acquire(x, 0, &a), BH_POOL_QUEUED);
    run_until(x, a.done, 5000);
    assert_int_equal(a.status, 0);
    bh_upconn_release(a.uc, false);
}

/* While a name is pending, the endpoints with an address take the traffic (STRICT_DNS); once it
 * answers it takes its share; when it fails it is drained. With only pending names, a pending
 * one is picked (and the request waits) rather than one known not to resolve. */
static void test_pick_prefers_endpoints_with_an_address(void **state)
{
    ctx_t *x = *state;
    load(x, "\"slow.bh-test:P\", \"127.0.0.1:P\", \"fails.bh-test:P\"", NULL);
    atomic_store(&lookup_delay_ms, 200);
    assert_int_equal(init_up(x), 0);
    for (int i = 0; i < 6; i++) {
        size_t ep = bh_upstream_pick(&x->up, BH_BALANCE_NONE);
        assert_int_equal(ep, 1);
        bh_upstream_unpick(&x->up, ep);
    }
    run_until(x,
              x->up.eps[0].dns_state == BH_EP_DNS_RESOLVED &&
                  x->up.eps[2].dns_state == BH_EP_DNS_FAILED,
              5000);
    int seen[3] = {0};
    for (int i = 0; i < 6; i++) {
        size_t ep = bh_upstream_pick(&x->up, BH_BALANCE_NONE);
        seen[ep]++;
        bh_upstream_unpick(&x->up, ep);
    }
    assert_int_equal(seen[0], 3);
    assert_int_equal(seen[1], 3);
    assert_int_equal(seen[2], 0);
}

static void test_pick_pending_over_failed(void **state)
{
    ctx_t *x = *state;
    load(x, "\"gone.bh-test:P\", \"slow.bh-test:P\"", NULL);
    atomic_store(&lookup_delay_ms, 1000);
    assert_int_equal(init_up(x), 0);
    run_until(x, x->up.eps[0].dns_state == BH_EP_DNS_FAILED, 5000);
    assert_int_equal(x->up.eps[1].dns_state, BH_EP_DNS_PENDING);
    for (int i = 0; i < 4; i++) {
        size_t ep = bh_upstream_pick(&x->up, BH_BALANCE_NONE);
        assert_int_equal(ep, 1);
        bh_upstream_unpick(&x->up, ep);
    }
}

/* Closing while the lookup runs: the waiter is told the pool closed, the connection that
 * waited for the name is closed when the lookup returns, and the loop empties. */
static void test_close_while_pending(void **state)
{
    ctx_t *x = *state;
    load(x, "\"slow.bh-test:P\"", NULL);
    atomic_store(&lookup_delay_ms, 200);
    assert_int_equal(init_up(x), 0);
    acq_t a;
    assert_int_equal(acquire(x, 0, &a), BH_POOL_QUEUED);
    x->up_open = false;
    bh_upstream_close(&x->up, on_closed);
    assert_true(a.done);
    assert_int_equal(a.status, BH_EPOOL_CLOSED);
    uv_run(&x->loop, UV_RUN_DEFAULT);
    assert_int_equal(x->closed, 1);
}

int main(void)
{
    loop_thread = pthread_self();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_init_out_of_memory, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lookup_does_not_block_the_loop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pending_name_that_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_timeout_covers_the_lookup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pick_prefers_endpoints_with_an_address, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_pick_pending_over_failed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_while_pending, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
