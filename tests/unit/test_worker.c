/* Unit tests of the server's start-up (bh_worker.c): out of memory at any allocation of
 * bh_server_init, which reaches each worker's upstream objects (wup_new, bh_upstream_init), the
 * server cleans up: only initialised handles are closed and nothing leaks (run it under ASan). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bh_alloc.h"
#include "bh_proxy.h"

/* A loopback port nothing listens on now. */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sin);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    close(fd);
    return ntohs(sin.sin_port);
}

/* Two workers, a listener on a free port, upstream u with these endpoints (and extra lines of its
 * section), one route to it. */
static void server_yaml(char *yaml, size_t cap, const char *endpoints, const char *extra)
{
    snprintf(yaml, cap,
             "workers: 2\n"
             "listeners:\n  - address: 127.0.0.1:%d\n"
             "log: { access: off }\n"
             "upstreams:\n"
             "  u:\n"
             "    endpoints: [ %s ]\n"
             "%s"
             "routes:\n  - { match: { path_prefix: / }, upstream: u }\n",
             free_port(), endpoints, extra);
}

/* Every allocation of bh_server_init fails in turn: two workers, an upstream with a numeric and
 * a named endpoint and health checks. A failed start is destroyed like main() does; the start
 * that succeeds runs its workers, stops and is destroyed. */
static void test_server_init_out_of_memory(void **state)
{
    (void)state;
    char yaml[1024];
    server_yaml(yaml, sizeof(yaml), "\"127.0.0.1:1\", \"localhost:1\"",
                "    health_check: { path: /healthz }\n");
    static bh_server_t srv; /* large */
    unsigned long nth;
    for (nth = 1;; nth++) {
        bh_conf_t *conf;
        bh_conf_error_t err;
        if (bh_conf_load_string("t.yaml", yaml, strlen(yaml), &conf, &err) != 0)
            fail_msg("config: %s", err.msg);
        bh_alloc_fail_after(nth);
        int rc = bh_server_init(&srv, conf); /* owns conf */
        bh_alloc_fail_after(0);
        if (rc == 0) {
            assert_int_equal(bh_server_start(&srv), 0);
            bh_server_stop(&srv);
            bh_server_join(&srv);
        }
        bh_server_destroy(&srv);
        if (rc == 0)
            break;
        assert_int_equal(rc, BH_ENOMEM);
        assert_true(nth < 10000);
    }
    assert_true(nth > 10);
}

/* A server set up but never started (main() when the admin listener cannot open) is destroyed with
 * its listeners closed through their callbacks: under the unit suite's leak check nothing is left. */
static void test_server_destroyed_without_start(void **state)
{
    (void)state;
    char yaml[1024];
    server_yaml(yaml, sizeof(yaml), "\"127.0.0.1:1\"", "");
    static bh_server_t srv;
    bh_conf_t *conf;
    bh_conf_error_t err;
    if (bh_conf_load_string("t.yaml", yaml, strlen(yaml), &conf, &err) != 0)
        fail_msg("config: %s", err.msg);
    assert_int_equal(bh_server_init(&srv, conf), 0);
    bh_server_destroy(&srv);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_server_destroyed_without_start),
        cmocka_unit_test(test_server_init_out_of_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
