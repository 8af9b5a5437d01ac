/* Unit tests of the upstream layer (bh_upstream) on a real loop: bh_upstream_init fails safely
 * when out of memory. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bh_alloc.h"
#include "bh_upstream.h"

#define NEVER BH_TIME_NEVER

/* ---- a loop, an upstream ----------------------------------------------------------------- */

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
        (bh_upstream_env_t){.loop = &x->loop, .bufs = &x->bufs, .wreqs = &x->wreqs, .rng = &x->rng};
    x->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(x->listen_fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sin);
    assert_int_equal(bind(x->listen_fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(x->listen_fd, 64), 0);
    assert_int_equal(getsockname(x->listen_fd, (struct sockaddr *)&sin, &len), 0);
    x->port = ntohs(sin.sin_port);
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
    assert_int_equal(bh_upstream_shared_init(&x->shared, &x->conf->upstreams[0], mono_ms()), 0);
    x->shared_ok = true;
}

static int init_up(ctx_t *x)
{
    int rc = bh_upstream_init(&x->up, &x->conf->upstreams[0], &x->env, &x->shared, NULL);
    x->up.data = x;
    x->up_open = true;
    return rc;
}

/* ---- the tests --------------------------------------------------------------------------- */

/* Every allocation of bh_upstream_init fails in turn; each failure returns BH_ENOMEM and is
 * closed like a success: only initialised handles are closed (ASan and libuv's asserts catch
 * the others), nothing leaks (LeakSanitizer), and the loop ends empty (teardown). */
static void test_init_out_of_memory(void **state)
{
    ctx_t *x = *state;
    load(x, "\"127.0.0.1:P\", \"localhost:P\"", NULL);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_init_out_of_memory, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
