/* Unit tests for conf/: YAML -> bh_conf_t, value parsers, error messages, env substitution, OOM. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include "bh_alloc.h"
#include "bh_conf.h"
#include "bh_conf_int.h" /* the key table: every key of a section is covered */

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))
#define MIN_HEAD "listeners:\n  - address: 127.0.0.1:8080\n"

static bh_conf_t *load_ok(const char *yaml)
{
    bh_conf_t *conf = NULL;
    bh_conf_error_t err;
    int rc = bh_conf_load_string("t.yaml", yaml, strlen(yaml), &conf, &err);

    if (rc != 0)
        fail_msg("unexpected error %d: %s", rc, err.msg);
    assert_non_null(conf);
    return conf;
}

/* Loading yaml fails with BH_ECONFIG and exactly msg; label names the case when it does not. */
static void expect_error_at(const char *label, const char *yaml, const char *msg)
{
    bh_conf_t *conf = (bh_conf_t *)1;
    bh_conf_error_t err;
    int rc = bh_conf_load_string("t.yaml", yaml, strlen(yaml), &conf, &err);

    if (rc == 0) {
        bh_conf_free(conf);
        fail_msg("%s: loaded, expected \"%s\"", label, msg);
    }
    assert_null(conf);
    if (rc != BH_ECONFIG || strcmp(err.msg, msg) != 0)
        fail_msg("%s: got %d \"%s\", expected \"%s\"", label, rc, err.msg, msg);
}

#define expect_error(yaml, msg) expect_error_at("line " BH_STR(__LINE__), yaml, msg)
#define BH_STR(x) BH_STR2(x)
#define BH_STR2(x) #x

static const char FULL[] =
    "workers: 4\n"
    "listeners:\n"
    "  - name: public\n"
    "    address: 0.0.0.0:8080\n"
    "  - address: \"[::1]:8443\"\n"
    "limits:\n"
    "  max_connections: 5000\n"
    "  max_header_bytes: 32KiB\n"
    "  max_headers: 50\n"
    "  max_body_bytes: 1MB\n"
    "  header_timeout: 5s\n"
    "  body_timeout: 15s\n"
    "  keepalive_timeout: 2m\n"
    "admin:\n"
    "  address: 127.0.0.1:9902\n"
    "  token: s3cret\n"
    "log:\n"
    "  level: debug\n"
    "  access: /var/log/bulkhead/access.log\n"
    "upstreams:\n"
    "  api:\n"
    "    endpoints: [ \"127.0.0.1:9000\", \"api-2.internal:9001\", \"[::1]:9002\" ]\n"
    "    pool:\n"
    "      max_connections: 32\n"
    "      max_pending: 100\n"
    "      max_idle: 8\n"
    "      min_idle: 2\n"
    "      acquire_timeout: 500ms\n"
    "      idle_timeout: 3s\n"
    "      max_lifetime: 1h\n"
    "    timeouts:\n"
    "      connect: 2s\n"
    "      first_byte: 10s\n"
    "      idle: 20s\n"
    "      total: 40s\n"
    "    dns_refresh: 10s\n"
    "    balance: round_robin\n"
    "    retry:\n"
    "      attempts: 4\n"
    "      on: [ connect-failure, 5xx, retriable-status, first-byte-timeout ]\n"
    "      retriable_status: [ 503, 429 ]\n"
    "      methods: all\n"
    "      max_replay_bytes: 1MiB\n"
    "      backoff: { base: 10ms, max: 1s }\n"
    "      honor_retry_after: false\n"
    "      budget: { ratio: 25%, min_per_second: 5 }\n"
    "    breaker:\n"
    "      consecutive_failures: 7\n"
    "      failure_rate: 0.6\n"
    "      window: 30s\n"
    "      min_requests: 50\n"
    "      open_for: 2s\n"
    "      max_open_for: 2m\n"
    "      half_open_probes: 1\n"
    "      count: [ connect-failure, reset ]\n"
    "    outlier: { consecutive_failures: 3, eject_for: 10s, max_ejected: 34% }\n"
    "    health_check:\n"
    "      path: /ready\n"
    "      interval: 2s\n"
    "      timeout: 500ms\n"
    "      healthy: 1\n"
    "      unhealthy: 2\n"
    "  static:\n"
    "    endpoints: [ \"10.0.0.7:80\" ]\n"
    "routes:\n"
    "  - match: { host: API.Example.com, path_prefix: /v1/, methods: [ GET, POST ] }\n"
    "    upstream: api\n"
    "    strip_prefix: true\n"
    "    timeouts: { total: 10s, connect: 500ms }\n"
    "    retry: { attempts: 2, on: [ gateway-error ] }\n"
    "  - match: { path_prefix: /static/, methods: GET }\n"
    "    upstream: static\n"
    "  - upstream: api\n"
    "shutdown:\n"
    "  drain_timeout: 1m\n";

static void test_full_config(void **state)
{
    bh_conf_t *c = load_ok(FULL);
    const struct sockaddr_in *sin = (const struct sockaddr_in *)&c->listeners[0].addr.sa;
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&c->listeners[1].addr.sa;
    const bh_conf_upstream_t *api, *st;
    const bh_conf_route_t *r;

    assert_string_equal(c->path, "t.yaml");
    assert_int_equal(c->workers, 4);

    assert_int_equal(c->n_listeners, 2);
    assert_string_equal(c->listeners[0].name, "public");
    assert_string_equal(c->listeners[0].addr.text, "0.0.0.0:8080");
    assert_string_equal(c->listeners[0].addr.host, "0.0.0.0");
    assert_int_equal(c->listeners[0].addr.port, 8080);
    assert_int_equal(sin->sin_family, AF_INET);
    assert_int_equal(ntohs(sin->sin_port), 8080);
    assert_int_equal(c->listeners[0].addr.salen, sizeof(struct sockaddr_in));
    assert_string_equal(c->listeners[1].name, "listener1");
    assert_string_equal(c->listeners[1].addr.host, "::1");
    assert_int_equal(sin6->sin6_family, AF_INET6);
    assert_int_equal(ntohs(sin6->sin6_port), 8443);
    assert_int_equal(c->listeners[1].addr.salen, sizeof(struct sockaddr_in6));

    assert_int_equal(c->limits.max_connections, 5000);
    assert_int_equal(c->limits.max_header_bytes, 32 * 1024);
    assert_int_equal(c->limits.max_headers, 50);
    assert_int_equal(c->limits.max_body_bytes, 1000000);
    assert_int_equal(c->limits.header_timeout_ms, 5000);
    assert_int_equal(c->limits.body_timeout_ms, 15000);
    assert_int_equal(c->limits.keepalive_timeout_ms, 120000);

    assert_string_equal(c->admin.addr.text, "127.0.0.1:9902");
    assert_int_equal(c->admin.addr.port, 9902);
    assert_string_equal(c->admin.token, "s3cret");
    assert_int_equal(c->log.level, BH_LOG_DEBUG);
    assert_string_equal(c->log.access, "/var/log/bulkhead/access.log");

    assert_int_equal(c->n_upstreams, 2);
    api = &c->upstreams[0];
    assert_string_equal(api->name, "api");
    assert_int_equal(api->n_endpoints, 3);
    assert_string_equal(api->endpoints[0].host, "127.0.0.1");
    assert_int_equal(api->endpoints[0].salen, sizeof(struct sockaddr_in));
    assert_string_equal(api->endpoints[1].host, "api-2.internal");
    assert_int_equal(api->endpoints[1].port, 9001);
    assert_int_equal(api->endpoints[1].salen, 0);
    assert_string_equal(api->endpoints[2].host, "::1");
    assert_int_equal(api->endpoints[2].salen, sizeof(struct sockaddr_in6));
    assert_int_equal(api->pool.max_connections, 32);
    assert_int_equal(api->pool.max_pending, 100);
    assert_int_equal(api->pool.max_idle, 8);
    assert_int_equal(api->pool.min_idle, 2);
    assert_int_equal(api->pool.acquire_timeout_ms, 500);
    assert_int_equal(api->pool.idle_timeout_ms, 3000);
    assert_int_equal(api->pool.max_lifetime_ms, 3600000);
    assert_int_equal(api->timeouts.connect_ms, 2000);
    assert_int_equal(api->timeouts.first_byte_ms, 10000);
    assert_int_equal(api->timeouts.idle_ms, 20000);
    assert_int_equal(api->timeouts.total_ms, 40000);
    assert_int_equal(api->dns_refresh_ms, 10000);
    assert_int_equal(api->balance, BH_BALANCE_ROUND_ROBIN);
    assert_int_equal(api->retry.attempts, 4);
    assert_int_equal(api->retry.on, BH_RETRY_ON_CONNECT_FAILURE | BH_RETRY_ON_5XX |
                                        BH_RETRY_ON_RETRIABLE_STATUS |
                                        BH_RETRY_ON_FIRST_BYTE_TIMEOUT);
    assert_int_equal(api->retry.n_retriable_status, 2);
    assert_int_equal(api->retry.retriable_status[0], 503);
    assert_int_equal(api->retry.retriable_status[1], 429);
    assert_true(api->retry.methods_all);
    assert_int_equal(api->retry.max_replay_bytes, 1024 * 1024);
    assert_int_equal(api->retry.backoff.base_ms, 10);
    assert_int_equal(api->retry.backoff.max_ms, 1000);
    assert_false(api->retry.honor_retry_after);
    assert_true(api->retry.budget.ratio == 0.25);
    assert_int_equal(api->retry.budget.min_per_second, 5);
    assert_int_equal(api->breaker.consecutive_failures, 7);
    assert_true(fabs(api->breaker.failure_rate - 0.6) < 1e-9);
    assert_int_equal(api->breaker.window_ms, 30000);
    assert_int_equal(api->breaker.min_requests, 50);
    assert_int_equal(api->breaker.open_for_ms, 2000);
    assert_int_equal(api->breaker.max_open_for_ms, 120000);
    assert_int_equal(api->breaker.half_open_probes, 1);
    assert_int_equal(api->breaker.count, BH_COUNT_CONNECT_FAILURE | BH_COUNT_RESET);
    assert_int_equal(api->outlier.consecutive_failures, 3);
    assert_int_equal(api->outlier.eject_for_ms, 10000);
    assert_true(fabs(api->outlier.max_ejected - 0.34) < 1e-9);
    assert_true(api->health_check.enabled);
    assert_string_equal(api->health_check.path, "/ready");
    assert_int_equal(api->health_check.interval_ms, 2000);
    assert_int_equal(api->health_check.timeout_ms, 500);
    assert_int_equal(api->health_check.healthy, 1);
    assert_int_equal(api->health_check.unhealthy, 2);
    st = &c->upstreams[1];
    assert_string_equal(st->name, "static");
    assert_int_equal(st->pool.max_connections, 64);
    assert_int_equal(st->pool.max_idle, 64);

    assert_int_equal(c->n_routes, 3);
    r = &c->routes[0];
    assert_string_equal(r->host, "api.example.com");
    assert_string_equal(r->path_prefix, "/v1/");
    assert_int_equal(r->methods, BH_M_GET | BH_M_POST);
    assert_string_equal(r->upstream, "api");
    assert_int_equal(r->upstream_index, 0);
    assert_true(r->strip_prefix);
    /* the route's retry replaces the upstream's as a whole: keys not given take the defaults,
     * the budget is the upstream's */
    assert_true(r->has_retry);
    assert_int_equal(r->retry.attempts, 2);
    assert_int_equal(r->retry.on, BH_RETRY_ON_GATEWAY_ERROR);
    assert_int_equal(r->retry.n_retriable_status, 1);
    assert_int_equal(r->retry.retriable_status[0], 503);
    assert_false(r->retry.methods_all);
    assert_int_equal(r->retry.backoff.base_ms, 25);
    assert_true(r->retry.honor_retry_after);
    assert_true(r->retry.budget.ratio == 0.25);
    assert_int_equal(r->retry.budget.min_per_second, 5);
    r = &c->routes[1];
    assert_null(r->host);
    assert_string_equal(r->path_prefix, "/static/");
    assert_int_equal(r->methods, BH_M_GET);
    assert_int_equal(r->upstream_index, 1);
    assert_false(r->strip_prefix);
    assert_false(r->has_retry);
    assert_memory_equal(&r->retry, &st->retry, sizeof r->retry);
    assert_false(st->health_check.enabled);
    r = &c->routes[2];
    assert_string_equal(r->path_prefix, "/");
    assert_int_equal(r->methods, BH_M_ALL);
    assert_int_equal(r->upstream_index, 0);
    assert_false(r->has_retry);
    assert_memory_equal(&r->retry, &api->retry, sizeof r->retry);

    assert_int_equal(c->shutdown.drain_timeout_ms, 60000);
    bh_conf_free(c);
}

static void test_route_timeouts_inherit(void **state)
{
    bh_conf_t *c = load_ok(FULL);
    const bh_conf_timeouts_t *t = &c->routes[0].timeouts, *s = &c->routes[1].timeouts;

    /* route 0 overrides total and connect, inherits first_byte and idle from upstream api */
    assert_int_equal(t->connect_ms, 500);
    assert_int_equal(t->first_byte_ms, 10000);
    assert_int_equal(t->idle_ms, 20000);
    assert_int_equal(t->total_ms, 10000);
    /* route 1 overrides nothing: upstream static's timeouts are the defaults */
    assert_int_equal(s->connect_ms, 1000);
    assert_int_equal(s->first_byte_ms, 15000);
    assert_int_equal(s->idle_ms, 60000);
    assert_int_equal(s->total_ms, 30000);
    /* route 2 inherits every timeout of upstream api */
    assert_memory_equal(&c->routes[2].timeouts, &c->upstreams[0].timeouts, sizeof *t);
    bh_conf_free(c);

    /* the upstream may be defined after the routes that use it */
    c = load_ok(MIN_HEAD "routes:\n  - upstream: b\n    timeouts: { idle: 1s }\n"
                         "upstreams:\n  a:\n    endpoints: [a:1]\n"
                         "  b:\n    endpoints: [b:1]\n    timeouts: { total: 7s }\n");
    assert_int_equal(c->routes[0].upstream_index, 1);
    assert_int_equal(c->routes[0].timeouts.idle_ms, 1000);
    assert_int_equal(c->routes[0].timeouts.total_ms, 7000);
    assert_int_equal(c->routes[0].timeouts.connect_ms, 1000);
    bh_conf_free(c);
}

static void check_resilience_defaults(const bh_conf_upstream_t *u)
{
    assert_int_equal(u->dns_refresh_ms, 30000);
    assert_int_equal(u->balance, BH_BALANCE_LEAST_REQUEST);
    assert_int_equal(u->retry.attempts, 3);
    assert_int_equal(u->retry.on, BH_RETRY_ON_CONNECT_FAILURE |
                                      BH_RETRY_ON_RESET_BEFORE_RESPONSE |
                                      BH_RETRY_ON_GATEWAY_ERROR);
    assert_int_equal(u->retry.n_retriable_status, 1);
    assert_int_equal(u->retry.retriable_status[0], 503);
    assert_false(u->retry.methods_all);
    assert_int_equal(u->retry.max_replay_bytes, 64 * 1024);
    assert_int_equal(u->retry.backoff.base_ms, 25);
    assert_int_equal(u->retry.backoff.max_ms, 250);
    assert_true(u->retry.honor_retry_after);
    assert_true(fabs(u->retry.budget.ratio - 0.2) < 1e-12);
    assert_int_equal(u->retry.budget.min_per_second, 10);
    assert_int_equal(u->breaker.consecutive_failures, 5);
    assert_true(u->breaker.failure_rate == 0.5);
    assert_int_equal(u->breaker.window_ms, 10000);
    assert_int_equal(u->breaker.min_requests, 20);
    assert_int_equal(u->breaker.open_for_ms, 5000);
    assert_int_equal(u->breaker.max_open_for_ms, 60000);
    assert_int_equal(u->breaker.half_open_probes, 3);
    assert_int_equal(u->breaker.count, BH_COUNT_CONNECT_FAILURE | BH_COUNT_TIMEOUT | BH_COUNT_5XX);
    assert_int_equal(u->outlier.consecutive_failures, 5);
    assert_int_equal(u->outlier.eject_for_ms, 30000);
    assert_true(u->outlier.max_ejected == 0.5);
    assert_false(u->health_check.enabled); /* absent: disabled */
    assert_null(u->health_check.path);
}

static void test_defaults(void **state)
{
    bh_conf_t *c;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);

    unsetenv("BULKHEAD_ADMIN_TOKEN");
    c = load_ok(MIN_HEAD);
    assert_int_equal(c->workers, cpus < 1 ? 1 : cpus > 1024 ? 1024 : cpus);
    assert_int_equal(c->n_listeners, 1);
    assert_string_equal(c->listeners[0].name, "listener0");
    assert_int_equal(c->limits.max_connections, 10000);
    assert_int_equal(c->limits.max_header_bytes, 16 * 1024);
    assert_int_equal(c->limits.max_headers, 100);
    assert_int_equal(c->limits.max_body_bytes, 10 * 1024 * 1024);
    assert_int_equal(c->limits.header_timeout_ms, 10000);
    assert_int_equal(c->limits.body_timeout_ms, 30000);
    assert_int_equal(c->limits.keepalive_timeout_ms, 60000);
    assert_string_equal(c->admin.addr.text, "127.0.0.1:9901");
    assert_int_equal(c->admin.addr.port, 9901);
    assert_int_equal(c->admin.addr.salen, sizeof(struct sockaddr_in));
    assert_null(c->admin.token);
    assert_int_equal(c->log.level, BH_LOG_INFO);
    assert_string_equal(c->log.access, "stdout");
    assert_int_equal(c->n_upstreams, 0);
    assert_null(c->upstreams);
    assert_int_equal(c->n_routes, 0);
    assert_null(c->routes);
    assert_int_equal(c->shutdown.drain_timeout_ms, 30000);
    bh_conf_free(c);

    /* the admin token's default comes from the environment */
    setenv("BULKHEAD_ADMIN_TOKEN", "from-env", 1);
    c = load_ok(MIN_HEAD);
    assert_string_equal(c->admin.token, "from-env");
    bh_conf_free(c);
    unsetenv("BULKHEAD_ADMIN_TOKEN");

    /* empty sections take every default */
    c = load_ok(MIN_HEAD "limits:\nadmin: {}\nupstreams:\n  a:\n    endpoints: [a:1]\n    pool:\n"
                         "routes:\n  - upstream: a\n    match:\n");
    assert_int_equal(c->limits.max_headers, 100);
    assert_int_equal(c->upstreams[0].pool.max_connections, 64);
    assert_int_equal(c->upstreams[0].pool.max_pending, 256);
    assert_int_equal(c->upstreams[0].pool.max_idle, 64);
    assert_int_equal(c->upstreams[0].pool.min_idle, 0);
    assert_int_equal(c->upstreams[0].pool.acquire_timeout_ms, 1000);
    assert_int_equal(c->upstreams[0].pool.idle_timeout_ms, 4000);
    assert_int_equal(c->upstreams[0].pool.max_lifetime_ms, 600000);
    assert_int_equal(c->upstreams[0].timeouts.connect_ms, 1000);
    assert_int_equal(c->upstreams[0].timeouts.first_byte_ms, 15000);
    assert_int_equal(c->upstreams[0].timeouts.idle_ms, 60000);
    assert_int_equal(c->upstreams[0].timeouts.total_ms, 30000);
    assert_string_equal(c->routes[0].path_prefix, "/");
    assert_int_equal(c->routes[0].methods, BH_M_ALL);
    assert_false(c->routes[0].strip_prefix);
    check_resilience_defaults(&c->upstreams[0]);
    assert_false(c->routes[0].has_retry);
    assert_memory_equal(&c->routes[0].retry, &c->upstreams[0].retry, sizeof(bh_conf_retry_t));
    bh_conf_free(c);

    /* max_idle follows max_connections when not given */
    c = load_ok(MIN_HEAD
                "upstreams:\n  a:\n    endpoints: [a:1]\n    pool: { max_connections: 5 }\n");
    assert_int_equal(c->upstreams[0].pool.max_idle, 5);
    assert_int_equal(c->upstreams[0].pool.max_per_user, 5); /* no such key: unused */
    bh_conf_free(c);

    c = load_ok(MIN_HEAD "workers: auto\n");
    assert_true(c->workers >= 1 && c->workers <= 1024);
    bh_conf_free(c);
}

static void test_durations(void **state)
{
    static const struct {
        const char *s;
        uint64_t ms;
    } good[] = {
        {"0", 0},
        {"0s", 0},
        {"250ms", 250},
        {"5s", 5000},
        {"2m", 120000},
        {"1h", 3600000},
        {"1d", 86400000},
        {"007s", 7000},
        {"18446744073709551615ms", UINT64_MAX},
        {"213503982334d", 213503982334ull * 86400000},
    };
    static const char *const bad[] = {
        "",
        "5",
        "10",
        "s",
        "-1s",
        "1.5s",
        "5 s",
        "5sec",
        "5S",
        " 5s",
        "5s ",
        "1w",
        "213503982335d",
        "18446744073709551616ms",
        "99999999999999999999h",
        "0x10s",
        "+5s",
    };
    uint64_t v;

    for (size_t i = 0; i < COUNT(good); i++) {
        v = 1;
        assert_int_equal(bh_parse_duration_ms(good[i].s, &v), 0);
        assert_true(v == good[i].ms);
    }
    for (size_t i = 0; i < COUNT(bad); i++)
        if (bh_parse_duration_ms(bad[i], &v) != -1)
            fail_msg("duration '%s' was accepted", bad[i]);
}

static void test_sizes(void **state)
{
    static const struct {
        const char *s;
        uint64_t b;
    } good[] = {
        {"0", 0},
        {"512", 512},
        {"512B", 512},
        {"16KiB", 16384},
        {"16k", 16384},
        {"2K", 2048},
        {"10MiB", 10485760},
        {"1GiB", 1073741824},
        {"2TiB", 2ull << 40},
        {"1KB", 1000},
        {"3MB", 3000000},
        {"1GB", 1000000000},
        {"1TB", 1000000000000ull},
        {"18446744073709551615", UINT64_MAX},
        {"17179869183GiB", 17179869183ull << 30},
    };
    static const char *const bad[] = {
        "",
        "KiB",
        "-1",
        "1.5MiB",
        "16 KiB",
        "16kib",
        "16mb",
        "16Kb",
        "1EiB",
        "17179869184GiB",
        "18446744073709551616",
        "1x",
        " 1",
    };
    uint64_t v;

    for (size_t i = 0; i < COUNT(good); i++) {
        v = 1;
        assert_int_equal(bh_parse_size(good[i].s, &v), 0);
        assert_true(v == good[i].b);
    }
    for (size_t i = 0; i < COUNT(bad); i++)
        if (bh_parse_size(bad[i], &v) != -1)
            fail_msg("size '%s' was accepted", bad[i]);
}

static void test_percent(void **state)
{
    static const struct {
        const char *s;
        double f;
    } good[] = {
        {"50%", 0.5}, {"0.5", 0.5}, {"0", 0},         {"0%", 0},      {"100%", 1},
        {"1", 1},     {"1.0", 1},   {"12.5%", 0.125}, {"0.05", 0.05},
    };
    static const char *const bad[] = {
        "",    "%",   "101%", "1.01", "2",
        "-5%", ".5",  "5.%",  "50 %", "50%%",
        "nan", "inf", "1e-1", "0x1",  "99999999999999999999%",
    };
    double v;

    for (size_t i = 0; i < COUNT(good); i++) {
        v = -1;
        assert_int_equal(bh_parse_percent(good[i].s, &v), 0);
        assert_float_equal(v, good[i].f, 1e-12);
    }
    for (size_t i = 0; i < COUNT(bad); i++)
        if (bh_parse_percent(bad[i], &v) != -1)
            fail_msg("percentage '%s' was accepted", bad[i]);
    /* The nearest double to the decimal written, not a sum of scaled digits (which read "0.3" as
     * 0.30000000000000004): a value written back (bh_conf_emit) reads back the same. */
    static const char *const exact[] = {"0.3", "0.1", "0.7", "0.33", "0.123456789", "0.999"};
    for (size_t i = 0; i < COUNT(exact); i++) {
        assert_int_equal(bh_parse_percent(exact[i], &v), 0);
        if (v != strtod(exact[i], NULL))
            fail_msg("percentage '%s' read as %.17g", exact[i], v);
    }
    assert_int_equal(bh_parse_percent("33%", &v), 0);
    assert_true(v == 0.33);
}

static void test_addr(void **state)
{
    static const struct {
        const char *s, *host;
        uint16_t port;
        int family;
    } good[] = {
        {"0.0.0.0:8080", "0.0.0.0", 8080, AF_INET},
        {"127.0.0.1:1", "127.0.0.1", 1, AF_INET},
        {"[::1]:8080", "::1", 8080, AF_INET6},
        {"[2001:db8::7]:65535", "2001:db8::7", 65535, AF_INET6},
        {"api.internal:9000", "api.internal", 9000, 0},
        {"upstream:8081", "upstream", 8081, 0},
        {"my_host-1.example.com:443", "my_host-1.example.com", 443, 0},
    };
    static const char *const bad[] = {
        "",
        "127.0.0.1",
        "127.0.0.1:",
        ":8080",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:80x",
        "::1:8080",
        "[::1]8080",
        "[::1]",
        "[nothost]:80",
        "[]:80",
        "a b:80",
        "-host:80",
        "127.0.0.1:-1",
        "host:99999999999999999999",
    };

    for (size_t i = 0; i < COUNT(good); i++) {
        bh_conf_addr_t a;
        assert_int_equal(bh_parse_addr(good[i].s, &a), 0);
        assert_string_equal(a.text, good[i].s);
        assert_string_equal(a.host, good[i].host);
        assert_int_equal(a.port, good[i].port);
        assert_int_equal(a.sa.ss_family, good[i].family);
        assert_int_equal(a.salen, good[i].family == AF_INET    ? sizeof(struct sockaddr_in)
                                  : good[i].family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                               : 0);
        if (good[i].family == AF_INET)
            assert_int_equal(ntohs(((struct sockaddr_in *)&a.sa)->sin_port), good[i].port);
        if (good[i].family == AF_INET6)
            assert_int_equal(ntohs(((struct sockaddr_in6 *)&a.sa)->sin6_port), good[i].port);
        bh_free(a.text);
        bh_free(a.host);
    }
    for (size_t i = 0; i < COUNT(bad); i++) {
        bh_conf_addr_t a;
        if (bh_parse_addr(bad[i], &a) != -1)
            fail_msg("address '%s' was accepted", bad[i]);
        assert_null(a.text);
        assert_null(a.host);
    }
}

static void test_method_bit(void **state)
{
    assert_int_equal(bh_method_bit("GET", 3), BH_M_GET);
    assert_int_equal(bh_method_bit("GETX", 3), BH_M_GET);
    assert_int_equal(bh_method_bit("HEAD", 4), BH_M_HEAD);
    assert_int_equal(bh_method_bit("POST", 4), BH_M_POST);
    assert_int_equal(bh_method_bit("PUT", 3), BH_M_PUT);
    assert_int_equal(bh_method_bit("DELETE", 6), BH_M_DELETE);
    assert_int_equal(bh_method_bit("CONNECT", 7), BH_M_CONNECT);
    assert_int_equal(bh_method_bit("OPTIONS", 7), BH_M_OPTIONS);
    assert_int_equal(bh_method_bit("TRACE", 5), BH_M_TRACE);
    assert_int_equal(bh_method_bit("PATCH", 5), BH_M_PATCH);
    assert_int_equal(bh_method_bit("PROPFIND", 8), BH_M_OTHER);
    assert_int_equal(bh_method_bit("get", 3), BH_M_OTHER);
    assert_int_equal(bh_method_bit("GE T", 4), 0);
    assert_int_equal(bh_method_bit("", 0), 0);
}

static void test_env(void **state)
{
    bh_conf_t *c;

    setenv("BH_T_HOST", "10.1.2.3", 1);
    setenv("BH_T_PORT", "9100", 1);
    setenv("BH_T_EMPTY", "", 1);
    unsetenv("BH_T_UNSET");
    c = load_ok("workers: ${BH_T_UNSET:-3}\n"
                "listeners:\n  - address: ${BH_T_HOST}:${BH_T_PORT}\n"
                "    name: ${BH_T_UNSET:-l-${}x}\n"
                "admin:\n  token: \"$$ab$c$${BH_T_HOST}${BH_T_EMPTY:-dflt}${BH_T_EMPTY}$\"\n"
                "log:\n  access: ${BH_T_UNSET:-}/tmp/a.log\n");
    assert_int_equal(c->workers, 3);
    assert_string_equal(c->listeners[0].addr.text, "10.1.2.3:9100");
    assert_string_equal(c->listeners[0].name, "l-${x}");
    assert_string_equal(c->admin.token, "$ab$c${BH_T_HOST}dflt$");
    assert_string_equal(c->log.access, "/tmp/a.log");
    bh_conf_free(c);

    /* in list items too, and the default is only used when unset or empty */
    setenv("BH_T_EP", "ep.internal:7000", 1);
    c = load_ok(MIN_HEAD "upstreams:\n  a:\n    endpoints: [ \"${BH_T_EP:-x:1}\", "
                         "\"${BH_T_UNSET:-y:2}\" ]\n");
    assert_string_equal(c->upstreams[0].endpoints[0].text, "ep.internal:7000");
    assert_string_equal(c->upstreams[0].endpoints[1].text, "y:2");
    bh_conf_free(c);

    expect_error(MIN_HEAD "admin:\n  token: ${BH_T_UNSET}\n",
                 "t.yaml:4:10: environment variable 'BH_T_UNSET' is not set (used by admin.token), "
                 "expected it to be set or a default as in ${BH_T_UNSET:-default}");
    expect_error(MIN_HEAD "log:\n  access: /x/${BH_T_HOST\n",
                 "t.yaml:4:11: unterminated '${' in the value of log.access, expected ${NAME} or "
                 "${NAME:-default}");
    expect_error(MIN_HEAD "log:\n  access: ${1X}\n",
                 "t.yaml:4:11: invalid variable name '1X' in the value of log.access, expected "
                 "letters, digits and '_' as in ${NAME} or ${NAME:-default}");
    expect_error(MIN_HEAD "log:\n  access: ${}\n",
                 "t.yaml:4:11: invalid variable name '' in the value of log.access, expected "
                 "letters, digits and '_' as in ${NAME} or ${NAME:-default}");
    /* substitution happens before conversion, so the result is validated */
    expect_error(MIN_HEAD "workers: ${BH_T_PORT}\n",
                 "t.yaml:3:10: 9100 for workers is out of range, expected 1 to 1024");
    expect_error(MIN_HEAD "admin:\n  address: ${BH_T_EMPTY}\n",
                 "t.yaml:4:12: empty value for admin.address, expected a numeric address as "
                 "host:port or [v6]:port, e.g. 0.0.0.0:8080 or [::1]:8080");
    unsetenv("BH_T_HOST");
    unsetenv("BH_T_PORT");
    unsetenv("BH_T_EMPTY");
    unsetenv("BH_T_EP");
}

typedef struct err_case {
    const char *yaml, *msg;
} err_case_t;

static void run_cases(const err_case_t *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char label[32];
        snprintf(label, sizeof label, "case %zu", i);
        expect_error_at(label, cases[i].yaml, cases[i].msg);
    }
}

static void test_did_you_mean(void **state)
{
    static const err_case_t cases[] = {
        {MIN_HEAD "upstreams:\n  api:\n    endpoints: [a:1]\n    pool:\n      max_conections: 3\n",
         "t.yaml:7:7: unknown key 'max_conections' in upstreams.api.pool, did you mean "
         "'max_connections'?"},
        {MIN_HEAD "wrokers: 2\n",
         "t.yaml:3:1: unknown key 'wrokers' at top level, did you mean 'workers'?"},
        {MIN_HEAD "limits:\n  header_timout: 1s\n",
         "t.yaml:4:3: unknown key 'header_timout' in limits, did you mean 'header_timeout'?"},
        {"listeners:\n  - adress: 127.0.0.1:80\n",
         "t.yaml:2:5: unknown key 'adress' in listeners[0], did you mean 'address'?"},
        {MIN_HEAD "routes:\n  - upstream: a\n    match: { path: / }\n",
         "t.yaml:5:14: unknown key 'path' in routes[0].match, expected one of: host, path_prefix, "
         "methods"},
        {MIN_HEAD "upstreams:\n  a:\n    endpoints: [a:1]\n    balanse: random\n",
         "t.yaml:6:5: unknown key 'balanse' in upstreams.a, did you mean 'balance'?"},
        {MIN_HEAD "colour: red\n",
         "t.yaml:3:1: unknown key 'colour' at top level, expected one of: workers, listeners, "
         "limits, admin, log, request_id, upstreams, databases, routes, shutdown"},
        {MIN_HEAD "upstreams:\n  api:\n    endpoints: [a:1]\nroutes:\n  - upstream: apx\n",
         "t.yaml:7:15: unknown upstream 'apx' for routes[0].upstream, did you mean 'api'?"},
        {MIN_HEAD "upstreams:\n  api:\n    endpoints: [a:1]\nroutes:\n  - upstream: web\n",
         "t.yaml:7:15: unknown upstream 'web' for routes[0].upstream, expected a name defined "
         "under upstreams"},
        {MIN_HEAD "routes:\n  - upstream: web\n",
         "t.yaml:4:15: unknown upstream 'web' for routes[0].upstream, expected a name defined "
         "under upstreams"},
        {MIN_HEAD "upstreams:\n  a:\n    endpoints: [a:1]\nroutes:\n  - upstream: a\n"
                  "    match: { methods: [GET, post] }\n",
         "t.yaml:8:29: unknown method 'post' in routes[0].match.methods, did you mean 'POST'? "
         "(methods are case-sensitive)"},
    };
    run_cases(cases, COUNT(cases));
}

static void test_errors(void **state)
{
    static const err_case_t cases[] = {
        /* structure */
        {"", "t.yaml:1:1: missing required key 'listeners' at top level, expected a list of "
             "{name, address}"},
        {"- a\n- b\n", "t.yaml:1:1: the top level is a list, expected a mapping of settings "
                       "(listeners, upstreams, routes, ...)"},
        {"listeners: []\n", "t.yaml:1:12: no listeners given in listeners, expected at least one "
                            "{name, address}"},
        {"listeners:\n", "t.yaml:1:11: no listeners given in listeners, expected at least one "
                         "{name, address}"},
        {"listeners: 0.0.0.0:80\n", "t.yaml:1:12: listeners is a single value, expected a list "
                                    "of {name, address}"},
        {"listeners:\n  - 0.0.0.0:80\n", "t.yaml:2:5: listeners[0] is a single value, expected a "
                                         "mapping"},
        {"listeners:\n  - name: a\n", "t.yaml:2:5: missing required key 'address' in listeners[0], "
                                      "expected a numeric address as host:port or [v6]:port, e.g. "
                                      "0.0.0.0:8080 or [::1]:8080"},
        {MIN_HEAD "limits: [1]\n", "t.yaml:3:9: limits is a list, expected a mapping"},
        {MIN_HEAD "limits:\n  max_headers: [1]\n", "t.yaml:4:16: limits.max_headers is a list, "
                                                   "expected a whole number"},
        {MIN_HEAD "limits:\n  max_headers: 10\n  max_body_bytes: 1\n  max_headers: 20\n",
         "t.yaml:6:3: duplicate key 'max_headers' in limits (first given at 4:3), expected each "
         "key once"},
        {MIN_HEAD "workers: 1\nworkers: 2\n", "t.yaml:4:1: duplicate key 'workers' at top level "
                                              "(first given at 3:1), expected each key once"},
        {MIN_HEAD "upstreams:\n  a:\n    endpoints: [a:1]\n  a:\n    endpoints: [b:1]\n",
         "t.yaml:6:3: duplicate key 'a' in upstreams (first given at 4:3), expected each key once"},
        {MIN_HEAD "? [a]\n: 1\n",
         "t.yaml:3:3: a key at top level is a list, expected a plain name"},
        {MIN_HEAD "---\nworkers: 1\n", "t.yaml:4:1: a second YAML document, expected one document "
                                       "per file"},
        /* YAML syntax (libyaml's problem mark) */
        {MIN_HEAD "log:\n  access: caf\xff\n",
         "t.yaml:4:14: invalid text (invalid leading UTF-8 octet), expected UTF-8"},
        {"listeners:\n  - address: 0.0.0.0:8080\n  foo: [\n",
         "t.yaml:3:3: invalid YAML: did not find expected '-' indicator (while parsing a block "
         "collection at 2:3)"},
        {"a: b: c\n", "t.yaml:1:5: invalid YAML: mapping values are not allowed in this context"},
        {"a: \"x\n", "t.yaml:2:1: invalid YAML: found unexpected end of stream (while scanning a "
                     "quoted scalar at 1:4)"},
        /* numbers */
        {MIN_HEAD "workers: 0\n", "t.yaml:3:10: 0 for workers is out of range, expected 1 to 1024"},
        {MIN_HEAD "workers: 1025\n",
         "t.yaml:3:10: 1025 for workers is out of range, expected 1 to 1024"},
        {MIN_HEAD "workers: many\n", "t.yaml:3:10: invalid worker count 'many' for workers, "
                                     "expected auto or a whole number from 1 to 1024"},
        {MIN_HEAD "workers: -1\n", "t.yaml:3:10: invalid worker count '-1' for workers, "
                                   "expected auto or a whole number from 1 to 1024"},
        {MIN_HEAD "workers:\n", "t.yaml:3:9: empty value for workers, expected auto or a whole "
                                "number from 1 to 1024"},
        {MIN_HEAD "limits:\n  max_headers: 1e3\n", "t.yaml:4:16: invalid number '1e3' for "
                                                   "limits.max_headers, expected a whole number "
                                                   "from 1 to 10000"},
        {MIN_HEAD "limits:\n  max_connections: 99999999999999999999999\n",
         "t.yaml:4:20: 99999999999999999999999 for limits.max_connections is out of range, "
         "expected 1 to 4294967295"},
        {MIN_HEAD "limits:\n  max_connections: 4294967296\n",
         "t.yaml:4:20: 4294967296 for limits.max_connections is out of range, expected 1 to "
         "4294967295"},
        {MIN_HEAD "upstreams:\n  a:\n    endpoints: [a:1]\n    pool: { max_connections: 0 }\n",
         "t.yaml:6:30: 0 for upstreams.a.pool.max_connections is out of range, expected 1 to "
         "1000000"},
        /* durations and sizes */
        {MIN_HEAD "limits:\n  header_timeout: 5 seconds\n",
         "t.yaml:4:19: invalid duration '5 seconds' for limits.header_timeout, expected a number "
         "with a unit (ms, s, m, h, d), e.g. 250ms or 5s"},
        {MIN_HEAD "limits:\n  header_timeout: 5\n",
         "t.yaml:4:19: invalid duration '5' for limits.header_timeout, expected a number with a "
         "unit (ms, s, m, h, d), e.g. 250ms or 5s"},
        {MIN_HEAD "limits:\n  header_timeout: 0\n",
         "t.yaml:4:19: 0 for limits.header_timeout is out of range, expected 1ms to 365d"},
        {MIN_HEAD "shutdown:\n  drain_timeout: 366d\n",
         "t.yaml:4:18: 366d for shutdown.drain_timeout is out of range, expected 0 to 365d"},
        {MIN_HEAD "limits:\n  max_header_bytes: 16 KiB\n",
         "t.yaml:4:21: invalid size '16 KiB' for limits.max_header_bytes, expected a size in bytes "
         "or with a unit (KiB, MiB, GiB, KB, MB, GB), e.g. 16KiB or 10MiB"},
        {MIN_HEAD "limits:\n  max_header_bytes: 2MiB\n",
         "t.yaml:4:21: 2MiB for limits.max_header_bytes is out of range, expected 1 to 1MiB"},
        /* booleans, enums, strings */
        {MIN_HEAD "upstreams:\n  a:\n    endpoints: [a:1]\nroutes:\n  - upstream: a\n"
                  "    strip_prefix: yes\n",
         "t.yaml:8:19: invalid boolean 'yes' for routes[0].strip_prefix, expected true or false"},
        {MIN_HEAD "log:\n  level: verbose\n",
         "t.yaml:4:10: invalid log level 'verbose' for log.level, expected error, warn, info or "
         "debug"},
        {MIN_HEAD "log:\n  access: \"\"\n",
         "t.yaml:4:11: empty value for log.access, expected a non-empty string"},
        {MIN_HEAD "log:\n  access: \"a\\0b\"\n",
         "t.yaml:4:11: value of log.access contains a NUL character, expected a non-empty string"},
        {"listeners:\n  - name:\n    address: 0.0.0.0:80\n",
         "t.yaml:2:10: empty value for listeners[0].name, expected a non-empty string"},
        /* addresses */
        {"listeners:\n  - address: localhost:8080\n",
         "t.yaml:2:14: address 'localhost:8080' for listeners[0].address is not a numeric IP "
         "address, expected a numeric address as host:port or [v6]:port, e.g. 0.0.0.0:8080 or "
         "[::1]:8080"},
        {"listeners:\n  - address: 0.0.0.0:99999\n",
         "t.yaml:2:14: invalid address '0.0.0.0:99999' for listeners[0].address, expected a "
         "numeric address as host:port or [v6]:port, e.g. 0.0.0.0:8080 or [::1]:8080"},
        {"listeners:\n  - address: 0.0.0.0\n",
         "t.yaml:2:14: invalid address '0.0.0.0' for listeners[0].address, expected a numeric "
         "address as host:port or [v6]:port, e.g. 0.0.0.0:8080 or [::1]:8080"},
        {MIN_HEAD "admin:\n  address: ::1:9901\n",
         "t.yaml:4:12: invalid address '::1:9901' for admin.address, expected a numeric address "
         "as host:port or [v6]:port, e.g. 0.0.0.0:8080 or [::1]:8080"},
        {"listeners:\n  - address: 0.0.0.0:80\n  - address: 0.0.0.0:80\n",
         "t.yaml:3:14: duplicate listener address '0.0.0.0:80' in listeners[1] (also "
         "listeners[0]), expected each address once"},
        {"listeners:\n  - { name: a, address: 0.0.0.0:80 }\n  - { name: a, address: 0.0.0.0:81 }\n",
         "t.yaml:3:13: duplicate listener name 'a' in listeners[1] (also listeners[0]), expected "
         "a unique name"},
        /* upstreams */
        {MIN_HEAD "upstreams: [a]\n", "t.yaml:3:12: upstreams is a list, expected a mapping from "
                                      "upstream name to {endpoints, pool, timeouts}"},
        {MIN_HEAD "upstreams:\n  my api:\n    endpoints: [a:1]\n",
         "t.yaml:4:3: invalid upstream name 'my api' in upstreams, expected letters, digits, '-', "
         "'_' or '.'"},
        {MIN_HEAD "upstreams:\n  a:\n", "t.yaml:4:5: missing required key 'endpoints' in "
                                        "upstreams.a, expected a list of host:port"},
        {MIN_HEAD "upstreams:\n  a: 1\n", "t.yaml:4:6: upstreams.a is a single value, expected a "
                                          "mapping with endpoints, pool and timeouts"},
        {MIN_HEAD "upstreams:\n  a:\n    pool: {}\n",
         "t.yaml:5:5: missing required key 'endpoints' in upstreams.a, expected a list of "
         "host:port"},
        {MIN_HEAD "upstreams:\n  a:\n    endpoints: []\n",
         "t.yaml:5:16: no endpoints given in upstreams.a.endpoints, expected at least one "
         "host:port"},
        {MIN_HEAD "upstreams:\n  a:\n    endpoints: a:1\n",
         "t.yaml:5:16: upstreams.a.endpoints is a single value, expected a list of host:port"},
        {MIN_HEAD "upstreams:\n  a:\n    endpoints: [a:1, \"b\"]\n",
         "t.yaml:5:22: invalid endpoint 'b' for upstreams.a.endpoints[1], expected host:port, "
         "[v6]:port or https://host[:port], e.g. 10.0.0.5:8080 or https://api.example.com"},
        {MIN_HEAD "upstreams:\n  a:\n    endpoints: [a:1, [b]]\n",
         "t.yaml:5:22: upstreams.a.endpoints[1] is a list, expected host:port"},
        {MIN_HEAD "upstreams:\n  a:\n    endpoints: [a:1]\n    pool:\n      max_connections: 4\n"
                  "      max_idle: 5\n",
         "t.yaml:8:17: max_idle 5 in upstreams.a.pool is larger than max_connections 4, expected "
         "at most max_connections"},
        {MIN_HEAD "upstreams:\n  a:\n    endpoints: [a:1]\n    pool:\n      max_idle: 2\n"
                  "      min_idle: 3\n",
         "t.yaml:8:17: min_idle 3 in upstreams.a.pool is larger than max_idle 2, expected at most "
         "max_idle"},
        {MIN_HEAD "upstreams:\n  a:\n    endpoints: [a:1]\n    timeouts: { connect: 1 }\n",
         "t.yaml:6:26: invalid duration '1' for upstreams.a.timeouts.connect, expected a number "
         "with a unit (ms, s, m, h, d), e.g. 250ms or 5s"},
        /* routes */
        {MIN_HEAD "routes:\n  - match: { path_prefix: / }\n",
         "t.yaml:4:5: missing key 'upstream' or 'database' in routes[0], expected exactly one: "
         "an upstream name (HTTP) or a database name (SQL over HTTP)"},
        {MIN_HEAD "routes: { a: 1 }\n",
         "t.yaml:3:9: routes is a mapping, expected a list of {match, upstream or database, "
         "strip_prefix, timeouts, retry}"},
        {MIN_HEAD "upstreams:\n  a:\n    endpoints: [a:1]\nroutes:\n  - upstream: a\n"
                  "    match: { path_prefix: api/ }\n",
         "t.yaml:8:27: invalid path prefix 'api/' for routes[0].match.path_prefix, expected a "
         "path starting with '/', e.g. /api/"},
        {MIN_HEAD "upstreams:\n  a:\n    endpoints: [a:1]\nroutes:\n  - upstream: a\n"
                  "    match: { host: a b }\n",
         "t.yaml:8:20: invalid host 'a b' for routes[0].match.host, expected a host name such as "
         "api.example.com or *.example.com"},
        {MIN_HEAD "upstreams:\n  a:\n    endpoints: [a:1]\nroutes:\n  - upstream: a\n"
                  "    match: { methods: [] }\n",
         "t.yaml:8:23: no methods given in routes[0].match.methods, expected a list of methods, "
         "e.g. [GET, POST]"},
        {MIN_HEAD "upstreams:\n  a:\n    endpoints: [a:1]\nroutes:\n  - upstream: a\n"
                  "    match: { methods: [GET, FETCH] }\n",
         "t.yaml:8:29: unknown method 'FETCH' in routes[0].match.methods, expected GET, HEAD, "
         "POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH or * (any)"},
        {MIN_HEAD "upstreams:\n  a:\n    endpoints: [a:1]\nroutes:\n  - upstream: a\n"
                  "    timeouts: { total: 1s, retries: 3 }\n",
         "t.yaml:8:28: unknown key 'retries' in routes[0].timeouts, expected one of: connect, "
         "first_byte, idle, total"},
        {MIN_HEAD "upstreams:\n  a:\n    endpoints: [a:1]\nroutes:\n  - upstream: a\n"
                  "    timeouts: 5s\n",
         "t.yaml:8:15: routes[0].timeouts is a single value, expected a mapping of connect, "
         "first_byte, idle, total"},
    };
    run_cases(cases, COUNT(cases));
}

#define UP_A MIN_HEAD "upstreams:\n  a:\n    endpoints: [a:1]\n"

/* The resilience keys in their other accepted forms. */
static void test_resilience_forms(void **state)
{
    bh_conf_t *c;
    const bh_conf_upstream_t *u;

    c = load_ok(UP_A "    balance: random\n    dns_refresh: 0\n"
                     "    retry:\n      on: 5xx\n      retriable_status: 429\n"
                     "      budget: { ratio: 20% }\n"
                     "    breaker: { failure_rate: 0, count: [] }\n"
                     "    outlier: { max_ejected: 1 }\n"
                     "    health_check:\n");
    u = &c->upstreams[0];
    assert_int_equal(u->balance, BH_BALANCE_RANDOM);
    assert_int_equal(u->dns_refresh_ms, 0);
    assert_int_equal(u->retry.on, BH_RETRY_ON_5XX); /* a single value is a list of one */
    assert_int_equal(u->retry.n_retriable_status, 1);
    assert_int_equal(u->retry.retriable_status[0], 429);
    assert_true(fabs(u->retry.budget.ratio - 0.2) < 1e-12);
    assert_int_equal(u->retry.budget.min_per_second, 10);
    assert_true(u->breaker.failure_rate == 0);
    assert_int_equal(u->breaker.count, 0);
    assert_int_equal(u->breaker.consecutive_failures, 5);
    assert_true(u->outlier.max_ejected == 1.0);
    /* an empty health_check section: enabled with every default */
    assert_true(u->health_check.enabled);
    assert_string_equal(u->health_check.path, "/healthz");
    assert_int_equal(u->health_check.interval_ms, 5000);
    assert_int_equal(u->health_check.timeout_ms, 1000);
    assert_int_equal(u->health_check.healthy, 2);
    assert_int_equal(u->health_check.unhealthy, 3);
    bh_conf_free(c);

    /* on: [] retries nothing; duplicates in lists are harmless; 16 statuses fit */
    c = load_ok(UP_A "    retry:\n      on: []\n      attempts: 1\n"
                     "      retriable_status: [500, 501, 502, 503, 504, 505, 506, 507, 508, 509,"
                     " 510, 511, 429, 408, 425, 503, 599]\n"
                     "    breaker: { count: [5xx, 5xx, timeout] }\n"
                     "routes:\n  - upstream: a\n    retry:\n");
    u = &c->upstreams[0];
    assert_int_equal(u->retry.on, 0);
    assert_int_equal(u->retry.attempts, 1);
    assert_int_equal(u->retry.n_retriable_status, 16);
    assert_int_equal(u->retry.retriable_status[15], 599);
    assert_int_equal(u->breaker.count, BH_COUNT_5XX | BH_COUNT_TIMEOUT);
    /* a route's empty retry section: the defaults, not the upstream's values */
    assert_true(c->routes[0].has_retry);
    assert_int_equal(c->routes[0].retry.attempts, 3);
    assert_int_equal(c->routes[0].retry.n_retriable_status, 1);
    bh_conf_free(c);

    /* retry settings from the environment */
    setenv("BH_T_ATTEMPTS", "5", 1);
    c = load_ok(UP_A "    retry: { attempts: \"${BH_T_ATTEMPTS}\", on: [\"${BH_T_NONE:-5xx}\"] }\n");
    assert_int_equal(c->upstreams[0].retry.attempts, 5);
    assert_int_equal(c->upstreams[0].retry.on, BH_RETRY_ON_5XX);
    bh_conf_free(c);
    unsetenv("BH_T_ATTEMPTS");
}

static void test_resilience_errors(void **state)
{
    static const err_case_t cases[] = {
        {UP_A "    balance: least_requests\n",
         "t.yaml:6:14: unknown balance policy 'least_requests' in upstreams.a.balance, did you "
         "mean 'least_request'?"},
        {UP_A "    balance: fastest\n",
         "t.yaml:6:14: unknown balance policy 'fastest' in upstreams.a.balance, expected "
         "round_robin, least_request or random"},
        {UP_A "    balance: [random]\n",
         "t.yaml:6:14: upstreams.a.balance is a list, expected round_robin, least_request or "
         "random"},
        {UP_A "    dns_refresh: 30\n",
         "t.yaml:6:18: invalid duration '30' for upstreams.a.dns_refresh, expected a number with "
         "a unit (ms, s, m, h, d), e.g. 250ms or 5s"},
        /* retry */
        {UP_A "    retry:\n      on: [connect-failure, 5xx, reset]\n",
         "t.yaml:7:34: unknown retry condition 'reset' in upstreams.a.retry.on, expected "
         "connect-failure, reset-before-response, first-byte-timeout, gateway-error, 5xx or "
         "retriable-status"},
        {UP_A "    retry:\n      on: [ conect-failure ]\n",
         "t.yaml:7:13: unknown retry condition 'conect-failure' in upstreams.a.retry.on, did you "
         "mean 'connect-failure'?"},
        {UP_A "    retry:\n      on: { a: 1 }\n",
         "t.yaml:7:11: upstreams.a.retry.on is a mapping, expected a list of connect-failure, "
         "reset-before-response, first-byte-timeout, gateway-error, 5xx, retriable-status"},
        {UP_A "    retry:\n      on: [ [5xx] ]\n",
         "t.yaml:7:13: upstreams.a.retry.on is a list, expected a single value"},
        {UP_A "    retry: { attempts: 0 }\n",
         "t.yaml:6:24: 0 for upstreams.a.retry.attempts is out of range, expected 1 to 10"},
        {UP_A "    retry: { attempts: 11 }\n",
         "t.yaml:6:24: 11 for upstreams.a.retry.attempts is out of range, expected 1 to 10"},
        {UP_A "    retry: { retriable_status: [503, 99] }\n",
         "t.yaml:6:38: 99 for upstreams.a.retry.retriable_status is out of range, expected 100 "
         "to 599"},
        {UP_A "    retry: { retriable_status: [503, 5xx] }\n",
         "t.yaml:6:38: invalid number '5xx' for upstreams.a.retry.retriable_status, expected a "
         "whole number from 100 to 599"},
        {UP_A "    retry:\n      retriable_status: [500, 501, 502, 503, 504, 505, 506, 507, 508,"
              " 509, 510, 511, 429, 408, 425, 599, 598]\n",
         "t.yaml:7:106: too many statuses in upstreams.a.retry.retriable_status, expected at most "
         "16"},
        {UP_A "    retry: { methods: safe }\n",
         "t.yaml:6:23: unknown retry methods 'safe' in upstreams.a.retry.methods, expected "
         "idempotent or all"},
        {UP_A "    retry: { max_replay_bytes: 2GiB }\n",
         "t.yaml:6:32: 2GiB for upstreams.a.retry.max_replay_bytes is out of range, expected 0 "
         "to 1GiB"},
        {UP_A "    retry:\n      backoff: { base: 1s, max: 100ms }\n",
         "t.yaml:7:33: max 100ms in upstreams.a.retry.backoff is smaller than base 1s, expected "
         "at least base"},
        {UP_A "    retry:\n      backoff: { base: 1s }\n",
         "t.yaml:7:24: max 250ms in upstreams.a.retry.backoff is smaller than base 1s, expected "
         "at least base"},
        {UP_A "    retry:\n      backoff: { base: 0 }\n",
         "t.yaml:7:24: 0 for upstreams.a.retry.backoff.base is out of range, expected 1ms to "
         "365d"},
        {UP_A "    retry:\n      budget: { ratio: 120% }\n",
         "t.yaml:7:24: invalid percentage '120%' for upstreams.a.retry.budget.ratio, expected a "
         "percentage such as 50% or a fraction from 0 to 1 such as 0.5"},
        {UP_A "    retry:\n      budget: { ratio: -1 }\n",
         "t.yaml:7:24: invalid percentage '-1' for upstreams.a.retry.budget.ratio, expected a "
         "percentage such as 50% or a fraction from 0 to 1 such as 0.5"},
        {UP_A "    retry:\n      honour_retry_after: true\n",
         "t.yaml:7:7: unknown key 'honour_retry_after' in upstreams.a.retry, did you mean "
         "'honor_retry_after'?"},
        {UP_A "    retry: 3\n", "t.yaml:6:12: upstreams.a.retry is a single value, expected a "
                                "mapping"},
        /* breaker */
        {UP_A "    breaker: { count: [timeout, 4xx] }\n",
         "t.yaml:6:33: unknown breaker outcome '4xx' in upstreams.a.breaker.count, did you mean "
         "'5xx'?"},
        {UP_A "    breaker: { count: [errors] }\n",
         "t.yaml:6:24: unknown breaker outcome 'errors' in upstreams.a.breaker.count, expected "
         "connect-failure, timeout, 5xx or reset"},
        {UP_A "    breaker: { failure_rate: 50 }\n",
         "t.yaml:6:30: invalid percentage '50' for upstreams.a.breaker.failure_rate, expected a "
         "percentage such as 50% or a fraction from 0 to 1 such as 0.5"},
        {UP_A "    breaker: { half_open_probes: 0 }\n",
         "t.yaml:6:34: 0 for upstreams.a.breaker.half_open_probes is out of range, expected 1 to "
         "100"},
        {UP_A "    breaker: { half_open_probes: 101 }\n",
         "t.yaml:6:34: 101 for upstreams.a.breaker.half_open_probes is out of range, expected 1 "
         "to 100"},
        {UP_A "    breaker: { window: 5ms }\n",
         "t.yaml:6:24: 5ms for upstreams.a.breaker.window is out of range, expected 10ms to 1d"},
        {UP_A "    breaker:\n      max_open_for: 1s\n",
         "t.yaml:7:21: max_open_for 1s in upstreams.a.breaker is smaller than open_for 5s, "
         "expected at least open_for"},
        {UP_A "    breaker: { min_requests: 0 }\n",
         "t.yaml:6:30: 0 for upstreams.a.breaker.min_requests is out of range, expected 1 to "
         "1000000"},
        /* outlier */
        {UP_A "    outlier: { eject_for: 301s }\n",
         "t.yaml:6:27: 301s for upstreams.a.outlier.eject_for is out of range, expected 1ms to "
         "5m"},
        {UP_A "    outlier: { max_ejected: 50 % }\n",
         "t.yaml:6:29: invalid percentage '50 %' for upstreams.a.outlier.max_ejected, expected a "
         "percentage such as 50% or a fraction from 0 to 1 such as 0.5"},
        /* health checks */
        {UP_A "    health_check: { path: healthz }\n",
         "t.yaml:6:27: invalid path 'healthz' for upstreams.a.health_check.path, expected a path "
         "starting with '/', e.g. /healthz"},
        {UP_A "    health_check: { interval: 1s, timeout: 2s }\n",
         "t.yaml:6:44: timeout 2s in upstreams.a.health_check is larger than interval 1s, "
         "expected at most interval"},
        {UP_A "    health_check: { healthy: 0 }\n",
         "t.yaml:6:30: 0 for upstreams.a.health_check.healthy is out of range, expected 1 to "
         "1000"},
        {UP_A "    health_check: true\n",
         "t.yaml:6:19: upstreams.a.health_check is a single value, expected a mapping of path, "
         "interval, timeout, healthy, unhealthy"},
        /* per-route retry */
        {UP_A "routes:\n  - upstream: a\n    retry: { budget: { ratio: 0.5 } }\n",
         "t.yaml:8:14: key 'budget' in routes[0].retry is per upstream, expected it under "
         "upstreams.<name>.retry.budget"},
        {UP_A "routes:\n  - upstream: a\n    retry: { on: [5xx, teapot] }\n",
         "t.yaml:8:24: unknown retry condition 'teapot' in routes[0].retry.on, expected "
         "connect-failure, reset-before-response, first-byte-timeout, gateway-error, 5xx or "
         "retriable-status"},
        {UP_A "routes:\n  - upstream: a\n    retry: [1]\n",
         "t.yaml:8:12: routes[0].retry is a list, expected a mapping of retry settings "
         "(attempts, on, retriable_status, methods, max_replay_bytes, backoff, "
         "honor_retry_after)"},
    };
    run_cases(cases, COUNT(cases));
}

static void test_methods_forms(void **state)
{
    bh_conf_t *c =
        load_ok(MIN_HEAD "upstreams:\n  a:\n    endpoints: [a:1]\nroutes:\n"
                         "  - upstream: a\n    match: { methods: \"*\" }\n"
                         "  - upstream: a\n    match: { methods: DELETE }\n"
                         "  - upstream: a\n    match: { methods: [ PUT, PATCH, \"*\" ] }\n");
    assert_int_equal(c->routes[0].methods, BH_M_ALL);
    assert_int_equal(c->routes[1].methods, BH_M_DELETE);
    assert_int_equal(c->routes[2].methods, BH_M_ALL);
    bh_conf_free(c);
}

static char *write_temp(const char *text)
{
    char tmpl[] = "/tmp/test_conf_XXXXXX";
    int fd = mkstemp(tmpl);
    size_t len = strlen(text);

    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
    return strdup(tmpl);
}

static void test_load_file(void **state)
{
    bh_conf_t *c = (bh_conf_t *)1;
    bh_conf_error_t err;
    char *path = write_temp(FULL), *bad = write_temp(MIN_HEAD "workers: 0\n"), expect[600];

    assert_int_equal(bh_conf_load(path, &c, &err), 0);
    assert_string_equal(c->path, path);
    assert_int_equal(c->n_routes, 3);
    bh_conf_free(c);

    assert_int_equal(bh_conf_load(bad, &c, &err), BH_ECONFIG);
    assert_null(c);
    snprintf(expect, sizeof expect, "%s:3:10: 0 for workers is out of range, expected 1 to 1024",
             bad);
    assert_string_equal(err.msg, expect);

    assert_int_equal(bh_conf_load("/nonexistent/bulkhead.yaml", &c, &err), BH_ECONFIG);
    assert_null(c);
    assert_string_equal(err.msg,
                        "/nonexistent/bulkhead.yaml: cannot open: No such file or directory");

    unlink(path);
    unlink(bad);
    free(path);
    free(bad);
}

/* ---- databases (SQL over HTTP) ---------------------------------------------------------- */

static const char DB_FULL[] =
    MIN_HEAD
    "upstreams:\n"
    "  api:\n"
    "    endpoints: [ \"127.0.0.1:9000\" ]\n"
    "    timeouts: { total: 40s }\n"
    "databases:\n"
    "  main:\n"
    "    hosts: [ \"DB.Example.com\", \"[::1]\", 10.0.0.5 ]\n"
    "    server: \"host=127.0.0.1 port=5433 sslmode='disable' options='-c x=\\\\'1\\\\''\"\n"
    "    auth: fixed\n"
    "    user: app\n"
    "    password: ${BH_T_PGPASSWORD}\n"
    "    dbname: appdb\n"
    "    tokens: [ \"tok-1\", \"${BH_T_SQL_TOKEN}\" ]\n"
    "    pool:\n"
    "      max_connections: 8\n"
    "      min_idle: 2\n"
    "      max_idle: 4\n"
    "      max_pending: 50\n"
    "      acquire_timeout: 250ms\n"
    "      idle_timeout: 1m\n"
    "      max_lifetime: 2h\n"
    "      max_connections_per_user: 3\n"
    "    timeouts: { connect: 500ms, total: 20s }\n"
    "    max_response_bytes: 1MiB\n"
    "    max_request_bytes: 64KiB\n"
    "    reset: always\n"
    "    statement_cache: 0\n"
    "    session: { TimeZone: Europe/Paris, statement_timeout: 5s, search_path: \"\", "
    "myapp.tenant: \"42\" }\n"
    "    retry:\n"
    "      attempts: 2\n"
    "      backoff: { base: 10ms, max: 100ms }\n"
    "      serialization_failures: true\n"
    "      budget: { ratio: 5%, min_per_second: 2 }\n"
    "    breaker:\n"
    "      consecutive_failures: 3\n"
    "      failure_rate: 25%\n"
    "      window: 5s\n"
    "      min_requests: 10\n"
    "      open_for: 1s\n"
    "      max_open_for: 10s\n"
    "      half_open_probes: 2\n"
    "      count: [ connect-failure ]\n"
    "  other:\n"
    "    hosts: [ \"*\" ]\n"
    "    server: host=/var/run/postgresql\n"
    "routes:\n"
    "  - match: { path_prefix: /sql, methods: [ POST, OPTIONS ] }\n"
    "    database: main\n"
    "    timeouts: { total: 5s }\n"
    "  - match: { path_prefix: /sql2 }\n"
    "    database: other\n"
    "  - upstream: api\n";

static void test_database_full(void **state)
{
    bh_conf_t *c;
    const bh_conf_database_t *d;
    const bh_conf_route_t *r;

    setenv("BH_T_PGPASSWORD", "pw from env", 1);
    setenv("BH_T_SQL_TOKEN", "tok-2", 1);
    c = load_ok(DB_FULL);
    assert_int_equal(c->n_databases, 2);
    d = &c->databases[0];
    assert_string_equal(d->name, "main");
    assert_int_equal(d->n_hosts, 3);
    assert_string_equal(d->hosts[0], "db.example.com"); /* lower case */
    assert_string_equal(d->hosts[1], "[::1]");
    assert_string_equal(d->hosts[2], "10.0.0.5");
    assert_string_equal(d->server,
                        "host=127.0.0.1 port=5433 sslmode='disable' options='-c x=\\'1\\''");
    assert_int_equal(d->auth, BH_DB_AUTH_FIXED);
    assert_string_equal(d->user, "app");
    assert_string_equal(d->password, "pw from env");
    assert_string_equal(d->dbname, "appdb");
    assert_int_equal(d->n_tokens, 2);
    assert_string_equal(d->tokens[0], "tok-1");
    assert_string_equal(d->tokens[1], "tok-2");
    assert_int_equal(d->pool.max_connections, 8);
    assert_int_equal(d->pool.min_idle, 2);
    assert_int_equal(d->pool.max_idle, 4);
    assert_int_equal(d->pool.max_pending, 50);
    assert_int_equal(d->pool.acquire_timeout_ms, 250);
    assert_int_equal(d->pool.idle_timeout_ms, 60000);
    assert_int_equal(d->pool.max_lifetime_ms, 7200000);
    assert_int_equal(d->pool.max_per_user, 3);
    assert_int_equal(d->timeouts.connect_ms, 500);
    assert_int_equal(d->timeouts.total_ms, 20000);
    assert_int_equal(d->timeouts.first_byte_ms, 15000);
    assert_int_equal(d->timeouts.idle_ms, 60000);
    assert_int_equal(d->max_response_bytes, 1u << 20);
    assert_int_equal(d->max_request_bytes, 64u << 10);
    assert_int_equal(d->reset, BH_DB_RESET_ALWAYS);
    assert_int_equal(d->statement_cache, 0);
    assert_int_equal(d->n_session, 4); /* TimeZone given: not added again */
    assert_string_equal(d->session_keys[0], "TimeZone");
    assert_string_equal(d->session_values[0], "Europe/Paris");
    assert_string_equal(d->session_keys[1], "statement_timeout");
    assert_string_equal(d->session_values[1], "5s");
    assert_string_equal(d->session_keys[2], "search_path");
    assert_string_equal(d->session_values[2], "");
    assert_string_equal(d->session_keys[3], "myapp.tenant");
    assert_string_equal(d->session_values[3], "42");
    assert_int_equal(d->retry.attempts, 2);
    assert_int_equal(d->retry.backoff.base_ms, 10);
    assert_int_equal(d->retry.backoff.max_ms, 100);
    assert_true(d->retry_serialization_failures);
    assert_int_equal(d->retry.on, BH_RETRY_ON_CONNECT_FAILURE);
    assert_true(fabs(d->retry.budget.ratio - 0.05) < 1e-9);
    assert_int_equal(d->retry.budget.min_per_second, 2);
    assert_int_equal(d->breaker.consecutive_failures, 3);
    assert_true(fabs(d->breaker.failure_rate - 0.25) < 1e-9);
    assert_int_equal(d->breaker.window_ms, 5000);
    assert_int_equal(d->breaker.min_requests, 10);
    assert_int_equal(d->breaker.open_for_ms, 1000);
    assert_int_equal(d->breaker.max_open_for_ms, 10000);
    assert_int_equal(d->breaker.half_open_probes, 2);
    assert_int_equal(d->breaker.count, BH_COUNT_CONNECT_FAILURE);

    assert_string_equal(c->databases[1].name, "other");
    assert_string_equal(c->databases[1].server, "host=/var/run/postgresql");
    assert_int_equal(c->databases[1].reset, BH_DB_RESET_AUTO);
    assert_int_equal(c->databases[1].statement_cache, 256);
    assert_int_equal(c->databases[1].pool.max_per_user, 20);

    assert_int_equal(c->n_routes, 3);
    r = &c->routes[0];
    assert_null(r->upstream);
    assert_int_equal(r->upstream_index, SIZE_MAX);
    assert_string_equal(r->database, "main");
    assert_int_equal(r->database_index, 0);
    assert_false(r->strip_prefix);
    assert_false(r->has_retry);
    assert_int_equal(r->timeouts.total_ms, 5000);  /* the route's own */
    assert_int_equal(r->timeouts.connect_ms, 500); /* the database's */
    assert_int_equal(r->timeouts.first_byte_ms, 15000);
    assert_int_equal(r->retry.attempts, 2);        /* a copy of the database's */
    assert_int_equal(r->retry.backoff.max_ms, 100);
    assert_int_equal(r->retry.budget.min_per_second, 2);
    r = &c->routes[1];
    assert_string_equal(r->database, "other");
    assert_int_equal(r->database_index, 1);
    assert_int_equal(r->timeouts.total_ms, 30000);
    assert_int_equal(r->timeouts.connect_ms, 2000);
    r = &c->routes[2];
    assert_string_equal(r->upstream, "api");
    assert_int_equal(r->upstream_index, 0);
    assert_null(r->database);
    assert_int_equal(r->database_index, SIZE_MAX);
    assert_int_equal(r->timeouts.total_ms, 40000);
    bh_conf_free(c);
    unsetenv("BH_T_PGPASSWORD");
    unsetenv("BH_T_SQL_TOKEN");
}

static void test_database_defaults(void **state)
{
    bh_conf_t *c = load_ok(MIN_HEAD "databases:\n  db:\n    hosts: [\"*\"]\n"
                                    "    server: host=localhost\n");
    const bh_conf_database_t *d = &c->databases[0];

    assert_int_equal(c->n_databases, 1);
    assert_int_equal(c->n_routes, 0);
    assert_int_equal(d->auth, BH_DB_AUTH_PASSTHROUGH);
    assert_null(d->user);
    assert_null(d->password);
    assert_null(d->dbname);
    assert_null(d->tokens);
    assert_int_equal(d->n_tokens, 0);
    assert_int_equal(d->pool.max_connections, 20);
    assert_int_equal(d->pool.min_idle, 0);
    assert_int_equal(d->pool.max_idle, 20);
    assert_int_equal(d->pool.max_pending, 1000);
    assert_int_equal(d->pool.acquire_timeout_ms, 5000);
    assert_int_equal(d->pool.idle_timeout_ms, 300000);
    assert_int_equal(d->pool.max_lifetime_ms, 3600000);
    assert_int_equal(d->pool.max_per_user, 20);
    assert_int_equal(d->timeouts.connect_ms, 2000);
    assert_int_equal(d->timeouts.total_ms, 30000);
    assert_int_equal(d->timeouts.first_byte_ms, 15000);
    assert_int_equal(d->timeouts.idle_ms, 60000);
    assert_int_equal(d->max_response_bytes, 10u << 20);
    assert_int_equal(d->max_request_bytes, 10u << 20);
    assert_int_equal(d->reset, BH_DB_RESET_AUTO);
    assert_int_equal(d->statement_cache, 256);
    assert_int_equal(d->n_session, 1);
    assert_string_equal(d->session_keys[0], "TimeZone");
    assert_string_equal(d->session_values[0], "UTC");
    assert_int_equal(d->retry.attempts, 3);
    assert_int_equal(d->retry.backoff.base_ms, 25);
    assert_int_equal(d->retry.backoff.max_ms, 250);
    assert_false(d->retry_serialization_failures);
    assert_int_equal(d->retry.on, BH_RETRY_ON_CONNECT_FAILURE);
    assert_int_equal(d->retry.n_retriable_status, 0);
    assert_true(d->retry.methods_all);
    assert_int_equal(d->retry.max_replay_bytes, 0);
    assert_false(d->retry.honor_retry_after);
    assert_true(fabs(d->retry.budget.ratio - 0.2) < 1e-9);
    assert_int_equal(d->retry.budget.min_per_second, 10);
    assert_int_equal(d->breaker.consecutive_failures, 5);
    assert_int_equal(d->breaker.open_for_ms, 2000);
    assert_int_equal(d->breaker.max_open_for_ms, 30000);
    assert_int_equal(d->breaker.half_open_probes, 1);
    assert_true(fabs(d->breaker.failure_rate - 0.5) < 1e-9);
    assert_int_equal(d->breaker.window_ms, 10000);
    assert_int_equal(d->breaker.min_requests, 20);
    assert_int_equal(d->breaker.count,
                     BH_COUNT_CONNECT_FAILURE | BH_COUNT_TIMEOUT | BH_COUNT_5XX);
    bh_conf_free(c);

    /* max_connections_per_user follows max_connections when not given */
    c = load_ok(MIN_HEAD "databases:\n  db:\n    hosts: [\"*\"]\n    server: host=localhost\n"
                         "    pool: { max_connections: 7 }\n");
    assert_int_equal(c->databases[0].pool.max_per_user, 7);
    bh_conf_free(c);
    c = load_ok(MIN_HEAD "databases:\n  db:\n    hosts: [\"*\"]\n    server: host=localhost\n"
                         "    pool: { max_connections: 7, max_connections_per_user: 7 }\n");
    assert_int_equal(c->databases[0].pool.max_per_user, 7);
    bh_conf_free(c);

    /* session given without TimeZone: TimeZone UTC is added after the given ones; empty
     * sections are all defaults */
    c = load_ok(MIN_HEAD "databases:\n  db:\n    hosts: [\"*\"]\n    server: host=localhost\n"
                         "    session: { application_name: bulkhead }\n    pool:\n    retry: {}\n"
                         "    breaker: ~\n    timeouts: {}\n");
    d = &c->databases[0];
    assert_int_equal(d->n_session, 2);
    assert_string_equal(d->session_keys[0], "application_name");
    assert_string_equal(d->session_values[0], "bulkhead");
    assert_string_equal(d->session_keys[1], "TimeZone");
    assert_string_equal(d->session_values[1], "UTC");
    assert_int_equal(d->pool.max_connections, 20);
    assert_int_equal(d->retry.attempts, 3);
    assert_int_equal(d->breaker.half_open_probes, 1);
    assert_int_equal(d->timeouts.connect_ms, 2000);
    bh_conf_free(c);

    /* timezone in another case counts as TimeZone */
    c = load_ok(MIN_HEAD "databases:\n  db:\n    hosts: [\"*\"]\n    server: host=localhost\n"
                         "    session: { timezone: Asia/Tokyo }\n");
    assert_int_equal(c->databases[0].n_session, 1);
    assert_string_equal(c->databases[0].session_keys[0], "timezone");
    bh_conf_free(c);

    /* fixed auth without a password; empty databases */
    c = load_ok(MIN_HEAD
                "databases:\n  db:\n    hosts: [a]\n    server: host=h\n    auth: fixed\n"
                "    user: u\n    dbname: d\n    tokens: [t]\n    password: ${BH_T_NOPE:-}\n");
    assert_null(c->databases[0].password);
    bh_conf_free(c);
    c = load_ok(MIN_HEAD "databases:\n");
    assert_int_equal(c->n_databases, 0);
    bh_conf_free(c);
}

#define DB_HEAD MIN_HEAD "databases:\n  main:\n    hosts: [\"*\"]\n    server: host=h\n"
#define DB_FIXED                                                                                   \
    MIN_HEAD "databases:\n  main:\n    hosts: [\"*\"]\n    server: host=h\n    auth: fixed\n"
#define UP_ROUTES MIN_HEAD "upstreams:\n  a:\n    endpoints: [a:1]\n" \
    "databases:\n  main:\n    hosts: [\"*\"]\n    server: host=h\nroutes:\n"

static void test_database_errors(void **state)
{
    static const err_case_t cases[] = {
        /* the section and names */
        {MIN_HEAD "databases: [ main ]\n",
         "t.yaml:3:12: databases is a list, expected a mapping from database name to {hosts, "
         "server, auth, pool, timeouts}"},
        {MIN_HEAD "databases:\n  main:\n",
         "t.yaml:4:8: databases.main is a single value, expected a mapping with hosts and "
         "server"},
        {MIN_HEAD "databases:\n  \"a b\": {}\n",
         "t.yaml:4:3: invalid database name 'a b' in databases, expected letters, digits, '-', "
         "'_' or '.'"},
        {DB_HEAD "  main:\n    hosts: [x]\n    server: host=h\n",
         "t.yaml:7:3: duplicate key 'main' in databases (first given at 4:3), expected each key "
         "once"},
        {MIN_HEAD "databases:\n  main: {}\n",
         "t.yaml:4:9: missing required key 'hosts' in databases.main, expected a list of "
         "connection-string hosts, e.g. [ \"db.example.com\" ] or [ \"*\" ]"},
        {MIN_HEAD "databases:\n  main: { hosts: [a] }\n",
         "t.yaml:4:9: missing required key 'server' in databases.main, expected a libpq conninfo "
         "of keyword=value pairs without credentials, e.g. \"host=127.0.0.1 port=5432\""},
        {DB_HEAD "    colour: red\n",
         "t.yaml:7:5: unknown key 'colour' in databases.main, expected one of: hosts, server, "
         "auth, user, password, dbname, tokens, pool, timeouts, max_response_bytes, "
         "max_request_bytes, reset, statement_cache, session, retry, breaker"},
        {DB_HEAD "    sesion: {}\n",
         "t.yaml:7:5: unknown key 'sesion' in databases.main, did you mean 'session'?"},
        /* hosts */
        {MIN_HEAD "databases:\n  main:\n    hosts: []\n    server: host=h\n",
         "t.yaml:5:12: no hosts given in databases.main.hosts, expected a list of "
         "connection-string hosts, e.g. [ \"db.example.com\" ] or [ \"*\" ]"},
        {MIN_HEAD "databases:\n  main:\n    hosts: \"*\"\n    server: host=h\n",
         "t.yaml:5:12: databases.main.hosts is a single value, expected a list of "
         "connection-string hosts, e.g. [ \"db.example.com\" ] or [ \"*\" ]"},
        {MIN_HEAD "databases:\n  main:\n    hosts: [ \"db:5432\" ]\n    server: host=h\n",
         "t.yaml:5:14: invalid host 'db:5432' for databases.main.hosts[0], expected the host of "
         "the connection string without its port, e.g. db.example.com, or \"*\" for any"},
        {MIN_HEAD "databases:\n  main:\n    hosts: [ a, \"*.example.com\" ]\n    server: host=h\n",
         "t.yaml:5:17: invalid host '*.example.com' for databases.main.hosts[1], expected the "
         "host of the connection string without its port, e.g. db.example.com, or \"*\" for "
         "any"},
        {MIN_HEAD "databases:\n  main:\n    hosts: [ \"\" ]\n    server: host=h\n",
         "t.yaml:5:14: empty value for databases.main.hosts[0], expected a single value"},
        {DB_HEAD "  b:\n    hosts: [ x, \"*\" ]\n    server: host=h\n",
         "t.yaml:8:17: host '*' in databases.b.hosts[1] is already mapped by databases.main, "
         "expected each host in one database only"},
        {MIN_HEAD "databases:\n  a:\n    hosts: [ DB.x ]\n    server: host=h\n"
                  "  b:\n    hosts: [ db.X ]\n    server: host=h\n",
         "t.yaml:8:14: host 'db.x' in databases.b.hosts[0] is already mapped by databases.a, "
         "expected each host in one database only"},
        {MIN_HEAD "databases:\n  a:\n    hosts: [ x, y, X ]\n    server: host=h\n",
         "t.yaml:5:20: host 'x' in databases.a.hosts[2] is also hosts[0], expected each host "
         "once"},
        /* server */
        {MIN_HEAD "databases:\n  main:\n    hosts: [a]\n    server: \"\"\n",
         "t.yaml:6:13: empty value for databases.main.server, expected a libpq conninfo of "
         "keyword=value pairs without credentials, e.g. \"host=127.0.0.1 port=5432\""},
        {MIN_HEAD "databases:\n  main:\n    hosts: [a]\n    server: \"host=h password=s3cret\"\n",
         "t.yaml:6:13: databases.main.server sets 'password', expected a conninfo without "
         "credentials (with auth: fixed give user, password and dbname as keys of the "
         "database)"},
        {MIN_HEAD "databases:\n  main:\n    hosts: [a]\n    server: \"host=h  user = bob\"\n",
         "t.yaml:6:13: databases.main.server sets 'user', expected a conninfo without "
         "credentials (with auth: fixed give user, password and dbname as keys of the "
         "database)"},
        {MIN_HEAD "databases:\n  main:\n    hosts: [a]\n"
                  "    server: \"options='dbname=x' dbname=y\"\n",
         "t.yaml:6:13: databases.main.server sets 'dbname', expected a conninfo without "
         "credentials (with auth: fixed give user, password and dbname as keys of the "
         "database)"},
        {MIN_HEAD "databases:\n  main:\n    hosts: [a]\n    server: \"postgres://u:p@h/db\"\n",
         "t.yaml:6:13: databases.main.server is a connection URI, expected a libpq conninfo of "
         "keyword=value pairs without credentials, e.g. \"host=127.0.0.1 port=5432\""},
        {MIN_HEAD "databases:\n  main:\n    hosts: [a]\n    server: localhost\n",
         "t.yaml:6:13: invalid conninfo for databases.main.server near 'localhost', expected a "
         "libpq conninfo of keyword=value pairs without credentials, e.g. \"host=127.0.0.1 "
         "port=5432\""},
        {MIN_HEAD "databases:\n  main:\n    hosts: [a]\n    server: \"host='h\"\n",
         "t.yaml:6:13: unterminated quote in the conninfo for databases.main.server, expected a "
         "libpq conninfo of keyword=value pairs without credentials, e.g. \"host=127.0.0.1 "
         "port=5432\""},
        {MIN_HEAD "databases:\n  main:\n    hosts: [a]\n    server: ${BH_T_UNSET_PG}\n",
         "t.yaml:6:13: environment variable 'BH_T_UNSET_PG' is not set (used by "
         "databases.main.server), expected it to be set or a default as in "
         "${BH_T_UNSET_PG:-default}"},
        /* auth */
        {DB_HEAD "    auth: trust\n",
         "t.yaml:7:11: unknown auth mode 'trust' in databases.main.auth, expected passthrough or "
         "fixed"},
        {DB_HEAD "    auth: fixd\n",
         "t.yaml:7:11: unknown auth mode 'fixd' in databases.main.auth, did you mean 'fixed'?"},
        {DB_HEAD "    user: app\n",
         "t.yaml:7:5: key 'user' in databases.main applies only with auth: fixed, expected it "
         "removed (auth: passthrough takes the user, password and database from "
         "Neon-Connection-String)"},
        {DB_HEAD "    tokens: [t]\n",
         "t.yaml:7:5: key 'tokens' in databases.main applies only with auth: fixed, expected it "
         "removed (auth: passthrough takes the user, password and database from "
         "Neon-Connection-String)"},
        {DB_HEAD "    auth: passthrough\n    password: \"\"\n",
         "t.yaml:8:5: key 'password' in databases.main applies only with auth: fixed, expected "
         "it removed (auth: passthrough takes the user, password and database from "
         "Neon-Connection-String)"},
        {DB_FIXED "    dbname: d\n    tokens: [t]\n",
         "t.yaml:7:11: auth: fixed in databases.main needs the key 'user' (the Postgres role to "
         "connect as), expected it given"},
        {DB_FIXED "    user: u\n    tokens: [t]\n",
         "t.yaml:7:11: auth: fixed in databases.main needs the key 'dbname' (the database to "
         "connect to), expected it given"},
        {DB_FIXED "    user: u\n    dbname: d\n",
         "t.yaml:7:11: auth: fixed in databases.main needs the key 'tokens' (the bearer tokens "
         "clients must send), expected it given"},
        {DB_FIXED "    user: u\n    dbname: d\n    tokens: []\n",
         "t.yaml:10:13: no tokens given in databases.main.tokens, expected a list of bearer "
         "tokens, e.g. [ \"${BULKHEAD_SQL_TOKEN}\" ]"},
        {DB_FIXED "    user: u\n    dbname: d\n    tokens: [ \"a b\" ]\n",
         "t.yaml:10:15: invalid token for databases.main.tokens[0] (it contains a space or "
         "control character), expected the bearer token as clients send it"},
        {DB_FIXED "    user: u\n    dbname: d\n    tokens: [ \"${BH_T_EMPTY:-}\" ]\n",
         "t.yaml:10:15: empty value for databases.main.tokens[0], expected a single value"},
        {DB_FIXED "    user: \"\"\n",
         "t.yaml:8:11: empty value for databases.main.user, expected a non-empty string"},
        /* pool, timeouts, sizes */
        {DB_HEAD "    pool: { max_connections: 4, max_idle: 5 }\n",
         "t.yaml:7:43: max_idle 5 in databases.main.pool is larger than max_connections 4, "
         "expected at most max_connections"},
        {DB_HEAD "    pool: { max_connections: 0 }\n",
         "t.yaml:7:30: 0 for databases.main.pool.max_connections is out of range, expected 1 "
         "to 1000000"},
        {DB_HEAD "    pool: { min_idle: 21 }\n",
         "t.yaml:7:23: min_idle 21 in databases.main.pool is larger than max_idle 20, expected "
         "at most max_idle"},
        {DB_HEAD "    pool: { max_connections_per_user: 21 }\n",
         "t.yaml:7:39: max_connections_per_user 21 in databases.main.pool is larger than "
         "max_connections 20, expected at most max_connections"},
        {DB_HEAD "    pool:\n      max_connections_per_user: 5\n      max_connections: 4\n",
         "t.yaml:8:33: max_connections_per_user 5 in databases.main.pool is larger than "
         "max_connections 4, expected at most max_connections"},
        {DB_HEAD "    pool: { max_connections_per_user: 2, min_idle: 3 }\n",
         "t.yaml:7:52: min_idle 3 in databases.main.pool is larger than max_connections_per_user "
         "2, expected at most max_connections_per_user"},
        {DB_HEAD "    pool: { max_connections_per_user: 0 }\n",
         "t.yaml:7:39: 0 for databases.main.pool.max_connections_per_user is out of range, "
         "expected 1 to 1000000"},
        {MIN_HEAD "upstreams:\n  a:\n    endpoints: [a:1]\n"
                  "    pool: { max_connections_per_user: 2 }\n",
         "t.yaml:6:13: unknown key 'max_connections_per_user' in upstreams.a.pool, expected one "
         "of: max_connections, max_pending, max_idle, min_idle, acquire_timeout, idle_timeout, "
         "max_lifetime"},
        {DB_HEAD "    reset: sometimes\n",
         "t.yaml:7:12: unknown reset mode 'sometimes' in databases.main.reset, expected auto or "
         "always"},
        {DB_HEAD "    reset: alway\n",
         "t.yaml:7:12: unknown reset mode 'alway' in databases.main.reset, did you mean 'always'?"},
        {DB_HEAD "    statement_cache: 65537\n",
         "t.yaml:7:22: 65537 for databases.main.statement_cache is out of range, expected 0 to "
         "65536"},
        {DB_HEAD "    statement_cache: -1\n",
         "t.yaml:7:22: invalid number '-1' for databases.main.statement_cache, expected a whole "
         "number from 0 to 65536"},
        {DB_HEAD "    pool: { max_conections: 4 }\n",
         "t.yaml:7:13: unknown key 'max_conections' in databases.main.pool, did you mean "
         "'max_connections'?"},
        {DB_HEAD "    timeouts: { first_byte: 1s }\n",
         "t.yaml:7:17: key 'first_byte' in databases.main.timeouts is not applicable to "
         "databases (a query may rightly run long before its first row; total bounds it), "
         "expected only: connect, total"},
        {DB_HEAD "    timeouts: { idle: 1s }\n",
         "t.yaml:7:17: key 'idle' in databases.main.timeouts is not applicable to databases (a "
         "query may rightly be silent between rows; total bounds it), expected only: connect, "
         "total"},
        {DB_HEAD "    timeouts: { total: 0 }\n",
         "t.yaml:7:24: 0 for databases.main.timeouts.total is out of range, expected 1ms to "
         "365d"},
        {DB_HEAD "    max_response_bytes: 0\n",
         "t.yaml:7:25: 0 for databases.main.max_response_bytes is out of range, expected 1 to "
         "18446744073709551615"},
        {DB_HEAD "    max_request_bytes: 10 MiB\n",
         "t.yaml:7:24: invalid size '10 MiB' for databases.main.max_request_bytes, expected a "
         "size in bytes or with a unit (KiB, MiB, GiB, KB, MB, GB), e.g. 16KiB or 10MiB"},
        /* session */
        {DB_HEAD "    session: [ TimeZone ]\n",
         "t.yaml:7:14: databases.main.session is a list, expected a mapping of setting names to "
         "values, e.g. { TimeZone: UTC }"},
        {DB_HEAD "    session: { \"time zone\": UTC }\n",
         "t.yaml:7:16: invalid setting name 'time zone' in databases.main.session, expected a "
         "Postgres setting name (letters, digits, '_' and '.', not starting with a digit)"},
        {DB_HEAD "    session: { 1x: a }\n",
         "t.yaml:7:16: invalid setting name '1x' in databases.main.session, expected a Postgres "
         "setting name (letters, digits, '_' and '.', not starting with a digit)"},
        {DB_HEAD "    session: { TimeZone: [UTC] }\n",
         "t.yaml:7:26: databases.main.session.TimeZone is a list, expected a single value"},
        {DB_HEAD "    session: { TimeZone: UTC, timezone: CET }\n",
         "t.yaml:7:31: duplicate setting 'timezone' in databases.main.session (first given at "
         "7:16 as 'TimeZone'), expected each setting once (names are case-insensitive)"},
        {DB_HEAD "    session: { datestyle: SQL }\n",
         "t.yaml:7:16: setting 'datestyle' in databases.main.session is set by bulkhead (the "
         "SQL over HTTP output depends on it), expected it removed"},
        {DB_HEAD "    session: { client_encoding: LATIN1 }\n",
         "t.yaml:7:16: setting 'client_encoding' in databases.main.session is set by bulkhead "
         "(the SQL over HTTP output depends on it), expected it removed"},
        /* retry and breaker */
        {DB_HEAD "    retry: { on: [5xx] }\n",
         "t.yaml:7:14: key 'on' in databases.main.retry is not applicable to databases (only "
         "failures that never reached Postgres are retried), expected only: attempts, backoff, "
         "serialization_failures, budget"},
        {DB_HEAD "    retry: { methods: all }\n",
         "t.yaml:7:14: key 'methods' in databases.main.retry is not applicable to databases (a "
         "retried query never reached Postgres, whatever it does), expected only: attempts, "
         "backoff, serialization_failures, budget"},
        {DB_HEAD "    retry: { retriable_status: [503] }\n",
         "t.yaml:7:14: key 'retriable_status' in databases.main.retry is not applicable to "
         "databases (Postgres answers have no HTTP status), expected only: attempts, backoff, "
         "serialization_failures, budget"},
        {DB_HEAD "    retry: { max_replay_bytes: 1MiB }\n",
         "t.yaml:7:14: key 'max_replay_bytes' in databases.main.retry is not applicable to "
         "databases (the request body is read whole, up to max_request_bytes), expected only: "
         "attempts, backoff, serialization_failures, budget"},
        {DB_HEAD "    retry: { honor_retry_after: true }\n",
         "t.yaml:7:14: key 'honor_retry_after' in databases.main.retry is not applicable to "
         "databases (Postgres sends no Retry-After), expected only: attempts, backoff, "
         "serialization_failures, budget"},
        {DB_HEAD "    retry:\n      attempts: 2\n      budget: { ratio: 120% }\n",
         "t.yaml:9:24: invalid percentage '120%' for databases.main.retry.budget.ratio, expected "
         "a percentage such as 50% or a fraction from 0 to 1 such as 0.5"},
        {DB_HEAD "    retry: { budget: { min_per_second: 1000001 } }\n",
         "t.yaml:7:40: 1000001 for databases.main.retry.budget.min_per_second is out of range, "
         "expected 0 to 1000000"},
        {DB_HEAD "    retry: { budget: { burst: 1 } }\n",
         "t.yaml:7:24: unknown key 'burst' in databases.main.retry.budget, expected one of: "
         "ratio, min_per_second"},
        {DB_HEAD "    retry: { serialisation_failures: true }\n",
         "t.yaml:7:14: unknown key 'serialisation_failures' in databases.main.retry, did you "
         "mean 'serialization_failures'?"},
        {DB_HEAD "    retry: { serialization_failures: yes }\n",
         "t.yaml:7:38: invalid boolean 'yes' for databases.main.retry.serialization_failures, "
         "expected true or false"},
        {DB_HEAD "    retry: { attempts: 11 }\n",
         "t.yaml:7:24: 11 for databases.main.retry.attempts is out of range, expected 1 to 10"},
        {DB_HEAD "    retry: { backoff: { base: 1s, max: 10ms } }\n",
         "t.yaml:7:40: max 10ms in databases.main.retry.backoff is smaller than base 1s, "
         "expected at least base"},
        {DB_HEAD "    breaker: { open_for: 1m }\n",
         "t.yaml:7:26: max_open_for 30s in databases.main.breaker is smaller than open_for 1m, "
         "expected at least open_for"},
        {DB_HEAD "    breaker: { half_open_probes: 0 }\n",
         "t.yaml:7:34: 0 for databases.main.breaker.half_open_probes is out of range, expected "
         "1 to 100"},
        /* routes */
        {UP_ROUTES "  - upstream: a\n    database: main\n",
         "t.yaml:12:5: routes[0] has both 'upstream' and 'database', expected exactly one of "
         "them"},
        {UP_ROUTES "  - database: main\n    match: { path_prefix: /sql }\n    upstream: a\n",
         "t.yaml:13:5: routes[0] has both 'upstream' and 'database', expected exactly one of "
         "them"},
        {UP_ROUTES "  - upstream: a\n  - match: { path_prefix: /sql }\n",
         "t.yaml:12:5: missing key 'upstream' or 'database' in routes[1], expected exactly one: "
         "an upstream name (HTTP) or a database name (SQL over HTTP)"},
        {UP_ROUTES "  - database: mains\n",
         "t.yaml:11:15: unknown database 'mains' for routes[0].database, did you mean 'main'?"},
        {UP_ROUTES "  - database: a\n",
         "t.yaml:11:15: unknown database 'a' for routes[0].database, expected a name defined "
         "under databases"},
        {MIN_HEAD "routes:\n  - database: main\n",
         "t.yaml:4:15: unknown database 'main' for routes[0].database, expected a name defined "
         "under databases"},
        {UP_ROUTES "  - database: \"\"\n",
         "t.yaml:11:15: empty value for routes[0].database, expected a non-empty string"},
        {UP_ROUTES "  - database: main\n    strip_prefix: true\n",
         "t.yaml:12:5: key 'strip_prefix' in routes[0] is not applicable to database routes (the "
         "path is not forwarded), expected it removed"},
        {UP_ROUTES "  - database: main\n    retry: { attempts: 1 }\n",
         "t.yaml:12:5: key 'retry' in routes[0] is not applicable to database routes (a "
         "database's retries are set under databases.<name>.retry), expected it removed"},
        {UP_ROUTES "  - database: main\n    timeouts: { total: 1s, connect: 1s }\n",
         "t.yaml:12:28: key 'connect' in routes[0].timeouts is not applicable to database "
         "routes, expected only total (the others are set under databases.<name>.timeouts)"},
        {UP_ROUTES "  - database: main\n    timeouts: { total: 1 }\n",
         "t.yaml:12:24: invalid duration '1' for routes[0].timeouts.total, expected a number "
         "with a unit (ms, s, m, h, d), e.g. 250ms or 5s"},
    };
    run_cases(cases, COUNT(cases));
}

/* Every example config loads, with and without its environment variables set. */
static const char *pki(void);

/* demo.yaml's HTTPS listener reads its certificate from the environment (scripts/demo.sh). */
static void demo_tls_env(void)
{
    char path[128];
    snprintf(path, sizeof path, "%s/site.crt", pki());
    setenv("DEMO_TLS_CERT", path, 1);
    snprintf(path, sizeof path, "%s/site.key", pki());
    setenv("DEMO_TLS_KEY", path, 1);
}

static void test_examples(void **state)
{
    const char *dir = getenv("BH_CONF_EXAMPLES");
    struct dirent *de;
    DIR *d;
    int n = 0;

    if (dir == NULL)
        dir = "conf/examples"; /* run from the source root */
    demo_tls_env();
    d = opendir(dir);
    if (d == NULL)
        fail_msg("cannot open %s: set BH_CONF_EXAMPLES or run from the source root", dir);
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        char path[1024];
        bh_conf_t *c;
        bh_conf_error_t err;

        /* tls.yaml names files under /etc/bulkhead/: test_check_tls.py checks it with files */
        if (len < 6 || strcmp(de->d_name + len - 5, ".yaml") != 0 ||
            strcmp(de->d_name, "tls.yaml") == 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        for (int env = 0; env < 2; env++) {
            if (env)
                setenv("UPSTREAM", "10.9.8.7:8081", 1);
            else
                unsetenv("UPSTREAM");
            if (bh_conf_load(path, &c, &err) != 0)
                fail_msg("%s", err.msg);
            assert_true(c->n_listeners >= 1);
            bh_conf_free(c);
        }
        unsetenv("UPSTREAM");
        n++;
    }
    closedir(d);
    assert_true(n >= 2);
}

static void test_example_contents(void **state)
{
    const char *dir = getenv("BH_CONF_EXAMPLES");
    char path[1024];
    bh_conf_t *c;
    bh_conf_error_t err;

    snprintf(path, sizeof path, "%s/demo.yaml", dir ? dir : "conf/examples");
    demo_tls_env();
    unsetenv("PGPORT");
    assert_int_equal(bh_conf_load(path, &c, &err), 0);
    assert_int_equal(c->workers, 1);
    assert_string_equal(c->listeners[0].addr.text, "127.0.0.1:8080");
    assert_string_equal(c->admin.addr.text, "127.0.0.1:9901");
    assert_string_equal(c->upstreams[0].name, "demo");
    assert_string_equal(c->upstreams[0].endpoints[0].text, "127.0.0.1:8081");
    assert_int_equal(c->n_databases, 1);
    assert_string_equal(c->databases[0].name, "main");
    assert_int_equal(c->databases[0].n_hosts, 1);
    assert_string_equal(c->databases[0].hosts[0], "*");
    assert_string_equal(c->databases[0].server, "host=127.0.0.1 port=5432");
    assert_int_equal(c->databases[0].auth, BH_DB_AUTH_PASSTHROUGH);
    assert_int_equal(c->n_routes, 2);
    assert_string_equal(c->routes[0].path_prefix, "/sql");
    assert_int_equal(c->routes[0].methods, BH_M_POST | BH_M_OPTIONS);
    assert_null(c->routes[0].upstream);
    assert_string_equal(c->routes[0].database, "main");
    assert_int_equal(c->routes[0].database_index, 0);
    assert_int_equal(c->routes[0].upstream_index, SIZE_MAX);
    assert_string_equal(c->routes[1].path_prefix, "/");
    assert_int_equal(c->routes[1].upstream_index, 0);
    assert_null(c->routes[1].database);
    assert_int_equal(c->routes[1].database_index, SIZE_MAX);
    bh_conf_free(c);
    setenv("PGPORT", "6543", 1);
    assert_int_equal(bh_conf_load(path, &c, &err), 0);
    assert_string_equal(c->databases[0].server, "host=127.0.0.1 port=6543");
    bh_conf_free(c);
    unsetenv("PGPORT");

    snprintf(path, sizeof path, "%s/docker.yaml", dir ? dir : "conf/examples");
    unsetenv("UPSTREAM");
    assert_int_equal(bh_conf_load(path, &c, &err), 0);
    assert_string_equal(c->listeners[0].addr.text, "0.0.0.0:8080");
    assert_string_equal(c->upstreams[0].endpoints[0].host, "upstream");
    assert_int_equal(c->upstreams[0].endpoints[0].port, 8081);
    bh_conf_free(c);
}

/* ---- reload: which upstreams and databases changed -------------------------------------- */

/* One key given in a test config: its dotted path in the section ("pool.max_idle") and its
 * value as written; value NULL = the key is not given. */
typedef struct kv {
    const char *path, *value;
} kv_t;

#define MAX_KV 12

/* A section under test: the YAML up to its name, the keys of a config that loads (its base),
 * and how two loaded configs compare. */
typedef struct eq_case {
    enum sec sec;
    const char *head;
    kv_t base[MAX_KV];
    bool (*equal)(const bh_conf_t *a, const bh_conf_t *b);
} eq_case_t;

static bool upstream0_equal(const bh_conf_t *a, const bh_conf_t *b)
{
    return bh_conf_upstream_equal(&a->upstreams[0], &b->upstreams[0]);
}

static bool database0_equal(const bh_conf_t *a, const bh_conf_t *b)
{
    return bh_conf_database_equal(&a->databases[0], &b->databases[0]);
}

static const char *kv_get(const kv_t *kv, const char *path)
{
    for (size_t i = 0; i < MAX_KV && kv[i].path != NULL; i++)
        if (strcmp(kv[i].path, path) == 0)
            return kv[i].value;
    return NULL;
}

static bool kv_has_under(const kv_t *kv, const char *path)
{
    size_t n = strlen(path);

    for (size_t i = 0; i < MAX_KV && kv[i].path != NULL; i++)
        if (kv[i].value != NULL && strncmp(kv[i].path, path, n) == 0 && kv[i].path[n] == '.')
            return true;
    return false;
}

/* Writes the keys of kv that are rows of sec as block YAML, walking the key table: a row with a
 * nested section that kv gives keys under becomes a mapping of them. */
static void emit(FILE *f, enum sec sec, const char *prefix, const kv_t *kv, int indent)
{
    for (size_t i = 0; i < bh__conf_n_specs; i++) {
        const spec_t *k = &bh__conf_specs[i];
        char path[128];
        const char *value;

        if (k->sec != sec || k->type == NULL)
            continue;
        snprintf(path, sizeof path, "%s%s%s", prefix, prefix[0] ? "." : "", k->key);
        if (k->sub != S_COUNT && kv_has_under(kv, path)) {
            fprintf(f, "%*s%s:\n", indent, "", k->key);
            emit(f, k->sub, path, kv, indent + 2);
        } else if ((value = kv_get(kv, path)) != NULL) {
            fprintf(f, "%*s%s: %s\n", indent, "", k->key, value);
        }
    }
}

/* Loads the case's config with the keys of kv; NULL when it does not load. */
static bh_conf_t *load_kv(const eq_case_t *ec, const kv_t *kv)
{
    bh_conf_t *conf = NULL;
    bh_conf_error_t err;
    char *yaml = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&yaml, &len);

    assert_non_null(f);
    fputs(ec->head, f);
    emit(f, ec->sec, "", kv, 4);
    fclose(f);
    if (bh_conf_load_string("t.yaml", yaml, len, &conf, &err) != 0)
        conf = NULL;
    free(yaml);
    return conf;
}

/* Values tried for a key, in order, until one loads and makes the configs unequal; ABSENT
 * removes a key the base gives. A new key that none of them can change fails the test: add a
 * value it accepts. */
static const char ABSENT[] = "(absent)";
static const char *const CANDIDATES[] = {
    "1",
    "2",
    "100",
    "1ms",
    "7s",
    "true",
    "false",
    "round_robin",
    "all",
    "always",
    "1.3",
    "[5xx]",
    "[500]",
    "[\"127.0.0.1:9001\"]",
    "/x",
    "host=10.0.0.9",
    "{search_path: x}",
    ABSENT,
};

/* base with path set to value (ABSENT: without it), in out. */
static void kv_with(const kv_t *base, const char *path, const char *value, kv_t *out)
{
    size_t n = 0;
    bool done = false;

    for (size_t i = 0; i < MAX_KV && base[i].path != NULL; i++) {
        bool hit = strcmp(base[i].path, path) == 0;
        out[n++] = (kv_t){base[i].path, hit ? value : base[i].value};
        done = done || hit;
    }
    if (!done)
        out[n++] = (kv_t){path, value};
    assert_true(n < MAX_KV);
    out[n] = (kv_t){NULL, NULL};
    for (size_t i = 0; i < n; i++)
        if (out[i].value == ABSENT)
            out[i].value = NULL;
}

/* Some value of the key at path loads and makes the section compare unequal, both ways. */
static void expect_key_compared(const eq_case_t *ec, const bh_conf_t *base, const char *path)
{
    for (size_t i = 0; i < COUNT(CANDIDATES); i++) {
        kv_t kv[MAX_KV];
        bh_conf_t *other;
        bool a, b;

        if (CANDIDATES[i] == ABSENT && kv_get(ec->base, path) == NULL)
            continue;
        kv_with(ec->base, path, CANDIDATES[i], kv);
        if ((other = load_kv(ec, kv)) == NULL)
            continue;
        a = ec->equal(base, other);
        b = ec->equal(other, base);
        bh_conf_free(other);
        assert_true(a == b);
        if (!a)
            return;
    }
    fail_msg("no config differing only in %s compares unequal", path);
}

static bool listed(const char *const *list, const char *s)
{
    for (; *list != NULL; list++)
        if (strcmp(*list, s) == 0)
            return true;
    return false;
}

/* Every key of sec and of the sections nested in it (rows of the key table, so a key added
 * later is covered too), except the keys this section rejects (F_NA: never given) and those in
 * skip (NULL-terminated), which cannot change alone or need files (tested on their own). */
static size_t expect_keys_compared(const eq_case_t *ec, const bh_conf_t *base, enum sec sec,
                                   const char *prefix, const char *const *skip)
{
    size_t n = 0;

    for (size_t i = 0; i < bh__conf_n_specs; i++) {
        const spec_t *k = &bh__conf_specs[i];
        char path[128];

        if (k->sec != sec || k->type == NULL || (k->flags & F_NA))
            continue;
        snprintf(path, sizeof path, "%s%s%s", prefix, prefix[0] ? "." : "", k->key);
        if (k->sub != S_COUNT)
            n += expect_keys_compared(ec, base, k->sub, path, skip);
        if (k->type->kind != K_SECTION && !listed(skip, path)) {
            expect_key_compared(ec, base, path);
            n++;
        }
    }
    return n;
}

/* Upstream keys whose values are files: compared by test_tls_equal, with files made for it. */
static const char *const NEED_FILES[] = {"tls.ca", "tls.cert", "tls.key", NULL};

static void test_equal_upstream(void **state)
{
    static const eq_case_t ec = {
        S_UPSTREAM,
        MIN_HEAD "upstreams:\n  u:\n",
        {{"endpoints", "[\"127.0.0.1:9000\"]"},
         {"pool.max_idle", "8"},  /* so that max_connections does not change it */
         {"health_check", "{}"},  /* enabled: its keys count */
         {"tls.enabled", "true"}, /* so that the other tls keys may be given */
         {NULL, NULL}},
        upstream0_equal,
    };
    bh_conf_t *a = load_kv(&ec, ec.base), *b = load_kv(&ec, ec.base), *renamed;

    assert_non_null(a);
    assert_non_null(b);
    assert_true(bh_conf_upstream_equal(&a->upstreams[0], &b->upstreams[0]));
    assert_true(expect_keys_compared(&ec, a, S_UPSTREAM, "", NEED_FILES) >= 45);

    /* The name is the key of the upstreams mapping, not a row. */
    renamed = load_ok(MIN_HEAD "upstreams:\n  v:\n    endpoints: [\"127.0.0.1:9000\"]\n"
                               "    pool: { max_idle: 8 }\n    health_check: {}\n"
                               "    tls: { enabled: true }\n");
    assert_false(bh_conf_upstream_equal(&a->upstreams[0], &renamed->upstreams[0]));
    bh_conf_free(renamed);
    bh_conf_free(a);
    bh_conf_free(b);
}

static void test_equal_database(void **state)
{
    static const eq_case_t ec = {
        S_DATABASE,
        MIN_HEAD "databases:\n  d:\n",
        {{"hosts", "[db.example.com]"},
         {"server", "\"host=127.0.0.1 port=5432\""},
         {"auth", "fixed"}, /* so that user, password, dbname and tokens can be given */
         {"user", "u"},
         {"password", "p"},
         {"dbname", "db"},
         {"tokens", "[t1]"},
         {"pool.max_idle", "8"},
         {NULL, NULL}},
        database0_equal,
    };
    bh_conf_t *a = load_kv(&ec, ec.base), *b = load_kv(&ec, ec.base), *other;

    assert_non_null(a);
    assert_non_null(b);
    assert_true(bh_conf_database_equal(&a->databases[0], &b->databases[0]));
    assert_true(expect_keys_compared(&ec, a, S_DATABASE, "", (const char *const[]){"auth", NULL}) >=
                30);

    /* auth cannot change alone: passthrough takes none of the fixed-only keys. */
    other =
        load_ok(MIN_HEAD "databases:\n  d:\n    hosts: [db.example.com]\n"
                         "    server: \"host=127.0.0.1 port=5432\"\n    pool: { max_idle: 8 }\n");
    assert_false(bh_conf_database_equal(&a->databases[0], &other->databases[0]));
    bh_conf_free(other);
    other = load_ok(MIN_HEAD "databases:\n  e:\n    hosts: [db.example.com]\n"
                             "    server: \"host=127.0.0.1 port=5432\"\n    auth: fixed\n"
                             "    user: u\n    password: p\n    dbname: db\n    tokens: [t1]\n"
                             "    pool: { max_idle: 8 }\n");
    assert_false(bh_conf_database_equal(&a->databases[0], &other->databases[0]));
    bh_conf_free(other);
    bh_conf_free(a);
    bh_conf_free(b);
}

/* Failing the nth allocation, for every n, gives BH_ENOMEM and leaks nothing (ASan checks). */
static void check_enomem(const char *yaml)
{
    unsigned long nth;

    for (nth = 1;; nth++) {
        bh_conf_t *c = (bh_conf_t *)1;
        bh_conf_error_t err;
        int rc;

        bh_alloc_fail_after(nth);
        rc = bh_conf_load_string("t.yaml", yaml, strlen(yaml), &c, &err);
        bh_alloc_fail_after(0);
        if (rc == 0) {
            bh_conf_free(c);
            break;
        }
        if (rc != BH_ENOMEM)
            fail_msg("allocation %lu: %d %s", nth, rc, err.msg);
        assert_null(c);
        assert_string_equal(err.msg, "t.yaml: out of memory");
        assert_true(nth < 100000);
    }
    assert_true(nth > 10);
}

static void test_enomem(void **state)
{
    setenv("BH_T_TOKEN", "a-fairly-long-token-value-to-force-buffer-growth-0123456789", 1);
    check_enomem(FULL);
    setenv("BH_T_PGPASSWORD", "pw", 1);
    setenv("BH_T_SQL_TOKEN", "tok-2", 1);
    check_enomem(DB_FULL);
    unsetenv("BH_T_PGPASSWORD");
    unsetenv("BH_T_SQL_TOKEN");
    check_enomem(MIN_HEAD "admin:\n  token: \"x${BH_T_TOKEN}y${BH_T_TOKEN}z\"\n"
                          "upstreams:\n  a:\n    endpoints: [a:1]\nroutes:\n  - upstream: a\n");
    unsetenv("BH_T_TOKEN");
}

/* ---- tls: keys without files ------------------------------------------------------------ */

#define UP_HEAD MIN_HEAD "upstreams:\n  a:\n"

static void test_tls_upstream(void **state)
{
    bh_conf_t *c = load_ok(UP_HEAD "    endpoints: [a:1]\n");
    bh_conf_upstream_tls_t *t = &c->upstreams[0].tls;

    assert_false(c->listeners[0].tls.enabled);
    assert_false(t->enabled);
    assert_true(t->verify);
    assert_int_equal(t->min_version, TLS1_2_VERSION);
    assert_null(t->ca);
    assert_null(t->ca_store);
    assert_null(t->server_name);
    assert_null(t->client.cert);
    assert_null(t->client.x509);
    assert_int_equal(c->n_warnings, 0);
    bh_conf_free(c);

    /* https:// turns TLS on, 443 by default; the address text is host:port without the scheme */
    c = load_ok(UP_HEAD
                "    endpoints: [ \"https://api.example.com\", \"HTTPS://b.example:8443\",\n"
                "                 \"https://[::1]\", \"https://10.0.0.1/\" ]\n");
    t = &c->upstreams[0].tls;
    assert_true(t->enabled);
    assert_true(t->verify);
    assert_string_equal(c->upstreams[0].endpoints[0].text, "api.example.com:443");
    assert_string_equal(c->upstreams[0].endpoints[0].host, "api.example.com");
    assert_int_equal(c->upstreams[0].endpoints[0].port, 443);
    assert_int_equal(c->upstreams[0].endpoints[0].salen, 0);
    assert_string_equal(c->upstreams[0].endpoints[1].text, "b.example:8443");
    assert_string_equal(c->upstreams[0].endpoints[2].text, "[::1]:443");
    assert_int_equal(c->upstreams[0].endpoints[2].salen, sizeof(struct sockaddr_in6));
    assert_string_equal(c->upstreams[0].endpoints[3].text, "10.0.0.1:443");
    assert_int_equal(c->upstreams[0].endpoints[3].salen, sizeof(struct sockaddr_in));
    bh_conf_free(c);

    /* tls before endpoints, enabled: true with https:// endpoints: the order does not matter */
    c = load_ok(UP_HEAD
                "    tls: { enabled: true, server_name: API.Example.COM, min_version: 1.3,\n"
                "           verify: false }\n"
                "    endpoints: [ \"https://10.0.0.1\" ]\n");
    t = &c->upstreams[0].tls;
    assert_true(t->enabled);
    assert_false(t->verify);
    assert_string_equal(t->server_name, "api.example.com");
    assert_int_equal(t->min_version, TLS1_3_VERSION);
    assert_int_equal(c->n_warnings, 1);
    assert_string_equal(c->warnings[0],
                        "t.yaml:6:20: TLS verification of upstream a is off (tls.verify: false): "
                        "its certificate and host name are not checked");
    bh_conf_free(c);

    /* enabled: false written out keeps the settings without TLS (and without a warning) */
    c = load_ok(UP_HEAD "    endpoints: [a:1]\n    tls: { enabled: false, verify: false,\n"
                        "           ca: system, min_version: \"1.2\" }\n");
    assert_false(c->upstreams[0].tls.enabled);
    assert_null(c->upstreams[0].tls.ca);
    assert_int_equal(c->n_warnings, 0);
    bh_conf_free(c);
}

static void test_tls_errors(void **state)
{
    static const err_case_t cases[] = {
        {UP_HEAD "    endpoints: [a:1]\n    tls: { enabled: true, min_version: \"1.1\" }\n",
         "t.yaml:6:40: invalid TLS version '1.1' for upstreams.a.tls.min_version, expected 1.2 or "
         "1.3 (older versions are not secure)"},
        {UP_HEAD "    endpoints: [a:1]\n    tls: { enabled: true, min_version: 1.4 }\n",
         "t.yaml:6:40: invalid TLS version '1.4' for upstreams.a.tls.min_version, expected 1.2 or "
         "1.3"},
        {UP_HEAD "    endpoints: [a:1]\n    tls:\n      enabled: true\n      cert: /x.crt\n",
         "t.yaml:8:7: 'cert' in upstreams.a.tls needs 'key' too (a client certificate and its "
         "private key), expected both or neither"},
        {UP_HEAD "    endpoints: [a:1]\n    tls: { enabled: true, key: /x.key }\n",
         "t.yaml:6:27: 'key' in upstreams.a.tls needs 'cert' too (a client certificate and its "
         "private key), expected both or neither"},
        {UP_HEAD "    endpoints: [ \"https://a\", \"b:80\" ]\n",
         "t.yaml:5:31: endpoint 'b:80' for upstreams.a.endpoints[1] is plain but endpoints[0] is "
         "https://, expected every endpoint of an upstream written https:// or none"},
        {UP_HEAD "    endpoints: [ \"b:80\", \"https://a\" ]\n",
         "t.yaml:5:26: endpoint 'https://a' for upstreams.a.endpoints[1] is https:// but "
         "endpoints[0] is plain, expected every endpoint of an upstream written https:// or none"},
        {UP_HEAD "    endpoints: [ \"https://a\" ]\n    tls: { enabled: false }\n",
         "t.yaml:6:21: tls.enabled: false in upstreams.a contradicts its https:// endpoint at "
         "5:18, expected true (or the endpoints without https://)"},
        {UP_HEAD "    endpoints: [a:443]\n    tls: { server_name: a.example }\n",
         "t.yaml:6:5: tls settings in upstreams.a apply to no endpoint: TLS is off, expected "
         "tls.enabled: true or endpoints written https://host[:port]"},
        {UP_HEAD "    endpoints: [a:1]\n    tls: { enabeld: true }\n",
         "t.yaml:6:12: unknown key 'enabeld' in upstreams.a.tls, did you mean 'enabled'?"},
        {UP_HEAD "    endpoints: [a:1]\n    tls: { verfy: true }\n",
         "t.yaml:6:12: unknown key 'verfy' in upstreams.a.tls, did you mean 'verify'?"},
        {"listeners:\n  - address: 127.0.0.1:443\n    tls: { certificate: [] }\n",
         "t.yaml:3:12: unknown key 'certificate' in listeners[0].tls, did you mean "
         "'certificates'?"},
        {UP_HEAD "    endpoints: [ \"http://a:80\" ]\n",
         "t.yaml:5:18: invalid endpoint 'http://a:80' for upstreams.a.endpoints[0] (https:// is "
         "the only scheme; plain HTTP endpoints have none), expected host:port, [v6]:port or "
         "https://host[:port], e.g. 10.0.0.5:8080 or https://api.example.com"},
        {UP_HEAD "    endpoints: [ \"https://a/v1\" ]\n",
         "t.yaml:5:18: invalid endpoint 'https://a/v1' for upstreams.a.endpoints[0] (an endpoint "
         "has no path), expected host:port, [v6]:port or https://host[:port], e.g. "
         "10.0.0.5:8080 or https://api.example.com"},
        {UP_HEAD "    endpoints: [ \"https://\" ]\n",
         "t.yaml:5:18: invalid endpoint 'https://' for upstreams.a.endpoints[0], expected "
         "host:port, [v6]:port or https://host[:port], e.g. 10.0.0.5:8080 or "
         "https://api.example.com"},
        {UP_HEAD "    endpoints: [a:1]\n    tls: { enabled: true, server_name: \"a b\" }\n",
         "t.yaml:6:40: invalid server name 'a b' for upstreams.a.tls.server_name, expected a "
         "host name such as api.example.com"},
        {UP_HEAD "    endpoints: [a:1]\n    tls: { enabled: yes }\n",
         "t.yaml:6:21: invalid boolean 'yes' for upstreams.a.tls.enabled, expected true or false"},
        {UP_HEAD "    endpoints: [a:1]\n    tls: { enabled: true, ca: /nonexistent/ca.pem }\n",
         "t.yaml:6:31: cannot read ca '/nonexistent/ca.pem': No such file or directory"},
        {UP_HEAD "    endpoints: [a:1]\n    tls: true\n",
         "t.yaml:6:10: upstreams.a.tls is a single value, expected a mapping"},
    };
    run_cases(cases, COUNT(cases));
}

static void test_tls_listener_errors(void **state)
{
    static const err_case_t cases[] = {
        {"listeners:\n  - address: 127.0.0.1:443\n    tls:\n",
         "t.yaml:3:9: missing required key 'certificates' in listeners[0].tls, expected a list of "
         "{cert, key}, e.g. [ { cert: /etc/bulkhead/site.crt, key: /etc/bulkhead/site.key } ]"},
        {"listeners:\n  - address: 127.0.0.1:443\n    tls: { certificates: [] }\n",
         "t.yaml:3:26: no certificates given in listeners[0].tls.certificates, expected a list "
         "of {cert, key}, e.g. [ { cert: /etc/bulkhead/site.crt, key: /etc/bulkhead/site.key } ]"},
        {"listeners:\n  - address: 127.0.0.1:443\n    tls: { certificates: [ { cert: /x.crt } ] "
         "}\n",
         "t.yaml:3:28: missing required key 'key' in listeners[0].tls.certificates[0], expected "
         "a file path"},
        {"listeners:\n  - address: 127.0.0.1:443\n    tls:\n"
         "      certificates: [ { cert: /nonexistent.crt, key: /k } ]\n",
         "t.yaml:4:31: cannot read certificate '/nonexistent.crt': No such file or directory"},
        {"listeners:\n  - address: 127.0.0.1:443\n    tls:\n      verify_client: no\n"
         "      certificates: [ { cert: /nonexistent.crt, key: /k } ]\n",
         "t.yaml:4:22: unknown client verification 'no' in listeners[0].tls.verify_client, "
         "expected off, optional or require"},
        {"listeners:\n  - address: 127.0.0.1:443\n    tls:\n      verify_client: requir\n"
         "      certificates: [ { cert: /nonexistent.crt, key: /k } ]\n",
         "t.yaml:4:22: unknown client verification 'requir' in listeners[0].tls.verify_client, "
         "did you mean 'require'?"},
        {"listeners:\n  - address: 127.0.0.1:443\n    tls:\n      handshake_timeout: 10\n"
         "      certificates: [ { cert: /nonexistent.crt, key: /k } ]\n",
         "t.yaml:4:26: invalid duration '10' for listeners[0].tls.handshake_timeout, expected a "
         "number with a unit (ms, s, m, h, d), e.g. 250ms or 5s"},
    };
    run_cases(cases, COUNT(cases));
}

/* ---- tls: with certificate files --------------------------------------------------------- */

static char pki_dir[64]; /* made on first use by pki(), removed by main */

/* Runs the shell command made from fmt; the test fails when it fails. */
__attribute__((format(printf, 1, 2))) static void sh(const char *fmt, ...)
{
    char cmd[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    if (system(cmd) != 0)
        fail_msg("command failed: %s", cmd);
}

/* A self-signed P-256 certificate <dir>/<stem>.crt with its key <stem>.key. */
static void make_cert(const char *stem, const char *subject, const char *ext, int days)
{
    sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout %s/%s.key "
       "-out %s/%s.crt -days %d -subj '%s' %s%s 2>/dev/null",
       pki_dir, stem, pki_dir, stem, days, subject, ext ? "-addext " : "", ext ? ext : "");
}

/* site: SAN names; cn: a CN only; soon: 3 days left; ca, ca2: CA files; chain: site + ca. */
static const char *pki(void)
{
    if (pki_dir[0] != '\0')
        return pki_dir;
    snprintf(pki_dir, sizeof pki_dir, "/tmp/test_conf_tls_XXXXXX");
    if (mkdtemp(pki_dir) == NULL)
        fail_msg("mkdtemp failed");
    make_cert("site", "/CN=Site.Test", "subjectAltName=DNS:Site.Test,DNS:*.Site.Test,IP:127.0.0.1",
              30);
    make_cert("cn", "/CN=CN.Only.Test", NULL, 30);
    make_cert("soon", "/CN=soon.test", NULL, 3);
    make_cert("ca", "/CN=Test CA", NULL, 30);
    make_cert("ca2", "/CN=Other CA", NULL, 30);
    sh("cat %s/site.crt %s/ca.crt > %s/chain.crt", pki_dir, pki_dir, pki_dir);
    return pki_dir;
}

/* tmpl with each '@' replaced by the PKI directory (malloc'd). */
static char *with_pki(const char *tmpl)
{
    const char *dir = pki();
    char *out = malloc(strlen(tmpl) * (strlen(dir) + 1) + 1), *o = out;

    assert_non_null(out);
    for (const char *p = tmpl; *p != '\0'; p++)
        if (*p == '@')
            o += sprintf(o, "%s", dir);
        else
            *o++ = *p;
    *o = '\0';
    return out;
}

static bh_conf_t *load_pki_ok(const char *tmpl)
{
    char *yaml = with_pki(tmpl);
    bh_conf_t *c = load_ok(yaml);

    free(yaml);
    return c;
}

static void expect_pki_error(const char *tmpl, const char *msg_tmpl)
{
    char *yaml = with_pki(tmpl), *msg = with_pki(msg_tmpl);

    expect_error_at(tmpl, yaml, msg);
    free(yaml);
    free(msg);
}

#define L_HEAD "listeners:\n  - address: 127.0.0.1:8443\n    tls:\n"
#define SITE "{ cert: @/site.crt, key: @/site.key }"

static void test_tls_listener(void **state)
{
    bh_conf_t *c = load_pki_ok(L_HEAD "      certificates: [ " SITE " ]\n");
    bh_conf_listener_tls_t *t = &c->listeners[0].tls;
    int64_t now = (int64_t)time(NULL);
    char *path;

    assert_true(t->enabled);
    assert_int_equal(t->n_certs, 1);
    assert_int_equal(t->min_version, TLS1_2_VERSION);
    assert_null(t->ciphers);
    assert_null(t->client_ca);
    assert_null(t->client_store);
    assert_null(t->client_names);
    assert_int_equal(t->verify_client, BH_VERIFY_CLIENT_OFF);
    assert_int_equal(t->handshake_timeout_ms, 10000);
    assert_non_null(t->certs[0].x509);
    assert_non_null(t->certs[0].pkey);
    assert_int_equal(sk_X509_num(t->certs[0].chain), 0);
    assert_true(t->certs[0].not_after > now + 29 * 86400 &&
                t->certs[0].not_after <= now + 30 * 86400);
    assert_int_equal(t->certs[0].n_names, 2); /* the SAN's DNS names, lower case; not the IP */
    assert_string_equal(t->certs[0].names[0], "site.test");
    assert_string_equal(t->certs[0].names[1], "*.site.test");
    assert_int_equal(c->n_warnings, 0);
    bh_conf_free(c);

    c = load_pki_ok(L_HEAD "      certificates:\n"
                           "        - { cert: @/chain.crt, key: @/site.key }\n"
                           "        - { cert: @/cn.crt, key: @/cn.key }\n"
                           "      min_version: \"1.3\"\n      ciphers: ECDHE+AESGCM\n"
                           "      client_ca: @/ca.crt\n      verify_client: require\n"
                           "      handshake_timeout: 2s\n");
    t = &c->listeners[0].tls;
    assert_int_equal(t->n_certs, 2);
    assert_int_equal(sk_X509_num(t->certs[0].chain), 1); /* the file's CA after the leaf */
    assert_string_equal(t->certs[0].names[0], "site.test");
    assert_int_equal(t->certs[1].n_names, 1); /* no SAN: the CN */
    assert_string_equal(t->certs[1].names[0], "cn.only.test");
    path = with_pki("@/cn.crt");
    assert_string_equal(t->certs[1].cert, path);
    free(path);
    assert_int_equal(t->min_version, TLS1_3_VERSION);
    assert_string_equal(t->ciphers, "ECDHE+AESGCM");
    assert_non_null(t->client_store);
    assert_int_equal(sk_X509_NAME_num(t->client_names), 1);
    assert_int_equal(t->verify_client, BH_VERIFY_CLIENT_REQUIRE);
    assert_int_equal(t->handshake_timeout_ms, 2000);
    assert_int_equal(c->n_warnings, 1); /* ciphers with TLS 1.3 only */
    bh_conf_free(c);
}

/* Block style, so that columns do not depend on the directory's length: cert's value at 5:17,
 * key's at 6:16; the next key is on line 7. */
#define PAIR(cert, key) "      certificates:\n        - cert: " cert "\n          key: " key "\n"

static void test_tls_file_errors(void **state)
{
    bh_conf_t *c;

    expect_pki_error(L_HEAD PAIR("@/site.crt", "@/site.key") "      verify_client: optional\n",
                     "t.yaml:7:22: verify_client: optional in listeners[0].tls needs client_ca "
                     "(the CA certificates that issue client certificates), expected client_ca "
                     "given or verify_client: off");
    expect_pki_error(L_HEAD PAIR("@/site.crt", "@/cn.key"),
                     "t.yaml:6:16: key '@/cn.key' does not match certificate '@/site.crt', "
                     "expected the private key of that certificate");
    expect_pki_error(L_HEAD PAIR("@/site.crt", "@/site.crt"),
                     "t.yaml:6:16: no private key in '@/site.crt' (none found), expected an "
                     "unencrypted PEM private key");
    expect_pki_error(L_HEAD PAIR("@/site.key", "@/site.key"),
                     "t.yaml:5:17: no certificate in '@/site.key' (none found), expected PEM "
                     "text beginning with -----BEGIN CERTIFICATE-----");
    expect_pki_error(L_HEAD PAIR("@/site.crt", "@/nope.key"),
                     "t.yaml:6:16: cannot read key '@/nope.key': No such file or directory");
    expect_pki_error(L_HEAD PAIR("@/site.crt", "@/site.key") "      ciphers: \"NOPE:NADA\"\n",
                     "t.yaml:7:16: cipher list 'NOPE:NADA' for listeners[0].tls.ciphers matches "
                     "no TLS 1.2 cipher, expected an OpenSSL cipher list, e.g. "
                     "ECDHE+AESGCM:ECDHE+CHACHA20");
    expect_pki_error(L_HEAD PAIR("@/site.crt", "@/site.key") "      client_ca: @/site.key\n",
                     "t.yaml:7:18: no CA certificate in client_ca '@/site.key' (no certificate "
                     "or crl found), expected PEM certificates (-----BEGIN CERTIFICATE-----)");
    expect_pki_error(L_HEAD PAIR("@/site.crt", "@/site.key") "      client_ca: @\n",
                     "t.yaml:7:18: cannot read client_ca '@': Is a directory");
    expect_pki_error(UP_HEAD "    endpoints: [ \"https://a\" ]\n"
                             "    tls:\n      cert: @/site.crt\n      key: @/cn.key\n",
                     "t.yaml:8:12: key '@/cn.key' does not match certificate '@/site.crt', "
                     "expected the private key of that certificate");
    expect_pki_error(UP_HEAD "    endpoints: [ \"https://a\" ]\n    tls:\n      ca: @/site.key\n",
                     "t.yaml:7:11: no CA certificate in ca '@/site.key' (no certificate or crl "
                     "found), expected PEM certificates (-----BEGIN CERTIFICATE-----)");

    /* verify_client: off as a plain YAML word; client_ca with it asks for nothing: a warning */
    c = load_pki_ok(L_HEAD PAIR("@/site.crt", "@/site.key") "      verify_client: off\n"
                                                           "      client_ca: @/ca.crt\n");
    assert_int_equal(c->listeners[0].tls.verify_client, BH_VERIFY_CLIENT_OFF);
    assert_non_null(c->listeners[0].tls.client_store);
    assert_int_equal(c->n_warnings, 1);
    assert_string_equal(c->warnings[0], "t.yaml:8:7: client_ca in listeners[0].tls has no effect "
                                        "with verify_client: off (client certificates are not "
                                        "asked for)");
    bh_conf_free(c);

    /* expiring within 14 days: a warning at the cert, the file still loads */
    c = load_pki_ok(L_HEAD PAIR("@/soon.crt", "@/soon.key"));
    assert_int_equal(c->n_warnings, 1);
    assert_non_null(strstr(c->warnings[0], "t.yaml:5:17: certificate '"));
    assert_non_null(strstr(c->warnings[0], "/soon.crt' expires on "));
    if (strstr(c->warnings[0], " UTC, in ") == NULL ||
        strstr(c->warnings[0], " days: renew it") == NULL)
        fail_msg("%s", c->warnings[0]); /* 3 days less the seconds since pki() made it */
    bh_conf_free(c);
}

/* An upstream's TLS files: the same path with other contents is a change (a reload must build
 * new pools with the new certificate), so is another path with the same contents. */
static void test_tls_equal(void **state)
{
    static const char up[] =
        UP_HEAD "    endpoints: [ \"https://a\" ]\n"
                "    tls: { ca: @/live-ca.crt, cert: @/live.crt, key: @/live.key }\n";
    bh_conf_t *a, *b;

    pki();
    sh("cp %s/ca.crt %s/live-ca.crt && cp %s/site.crt %s/live.crt && cp %s/site.key %s/live.key",
       pki_dir, pki_dir, pki_dir, pki_dir, pki_dir, pki_dir);
    a = load_pki_ok(up);
    b = load_pki_ok(up);
    assert_true(bh_conf_upstream_equal(&a->upstreams[0], &b->upstreams[0]));
    bh_conf_free(b);

    sh("cp %s/ca2.crt %s/live-ca.crt", pki_dir, pki_dir);
    b = load_pki_ok(up);
    assert_false(bh_conf_upstream_equal(&a->upstreams[0], &b->upstreams[0]));
    assert_false(bh_conf_upstream_equal(&b->upstreams[0], &a->upstreams[0]));
    bh_conf_free(b);

    sh("cp %s/ca.crt %s/live-ca.crt && cp %s/cn.crt %s/live.crt && cp %s/cn.key %s/live.key",
       pki_dir, pki_dir, pki_dir, pki_dir, pki_dir, pki_dir);
    b = load_pki_ok(up);
    assert_false(bh_conf_upstream_equal(&a->upstreams[0], &b->upstreams[0]));
    bh_conf_free(b);

    b = load_pki_ok(UP_HEAD "    endpoints: [ \"https://a\" ]\n"
                            "    tls: { ca: @/ca.crt, cert: @/site.crt, key: @/site.key }\n");
    assert_false(bh_conf_upstream_equal(&a->upstreams[0], &b->upstreams[0])); /* other paths */
    bh_conf_free(b);

    b = load_pki_ok(UP_HEAD "    endpoints: [ \"https://a\" ]\n"
                            "    tls: { cert: @/site.crt, key: @/site.key }\n");
    assert_false(bh_conf_upstream_equal(&a->upstreams[0], &b->upstreams[0])); /* system CAs */
    bh_conf_free(b);
    bh_conf_free(a);
}

static void test_tls_enomem(void **state)
{
    char *yaml = with_pki(L_HEAD "      certificates:\n"
                                 "        - { cert: @/chain.crt, key: @/site.key }\n"
                                 "        - { cert: @/soon.crt, key: @/soon.key }\n"
                                 "      client_ca: @/ca.crt\n      verify_client: optional\n"
                                 "upstreams:\n  a:\n    endpoints: [ \"https://a\" ]\n"
                                 "    tls: { ca: @/ca.crt, cert: @/cn.crt, key: @/cn.key,\n"
                                 "           verify: false }\n");
    check_enomem(yaml);
    free(yaml);
}

/* ---- bh_conf_emit: the round trip ------------------------------------------------------------ */

/* emit(a) loads to a snapshot equal to a, and emitting that gives the same text. Returns the
 * text (malloc'd by bh_malloc: bh_free it). */
static char *round_trip(const bh_conf_t *a)
{
    char *t1 = NULL, *t2 = NULL;
    size_t len1, len2;
    bh_conf_t *b = NULL;
    bh_conf_error_t err;

    assert_int_equal(bh_conf_emit(a, 0, &t1, &len1), 0);
    assert_int_equal(strlen(t1), len1);
    if (bh_conf_load_string("emitted.yaml", t1, len1, &b, &err) != 0)
        fail_msg("the emitted config does not load: %s\n%s", err.msg, t1);
    assert_int_equal(b->n_listeners, a->n_listeners);
    assert_int_equal(b->n_upstreams, a->n_upstreams);
    assert_int_equal(b->n_databases, a->n_databases);
    assert_int_equal(b->n_routes, a->n_routes);
    assert_int_equal(b->n_warnings, a->n_warnings);
    for (size_t i = 0; i < a->n_upstreams; i++)
        if (!bh_conf_upstream_equal(&a->upstreams[i], &b->upstreams[i]))
            fail_msg("upstream %s differs after the round trip:\n%s", a->upstreams[i].name, t1);
    for (size_t i = 0; i < a->n_databases; i++)
        if (!bh_conf_database_equal(&a->databases[i], &b->databases[i]))
            fail_msg("database %s differs after the round trip:\n%s", a->databases[i].name, t1);
    assert_int_equal(bh_conf_emit(b, 0, &t2, &len2), 0);
    if (len1 != len2 || strcmp(t1, t2) != 0)
        fail_msg("the second emission differs:\n%s\n--- second ---\n%s", t1, t2);
    bh_free(t2);
    bh_conf_free(b);
    return t1;
}

/* The example files' ${VARS}, set for the demo (its HTTPS certificate, PGPORT) and the docker
 * example (every variable, so that no default applies). */
static void examples_env(int set)
{
    demo_tls_env();
    if (set) {
        setenv("PGPORT", "6543", 1);
        setenv("BULKHEAD_WORKERS", "3", 1);
        setenv("BULKHEAD_ADMIN_TOKEN", "admin-$ecret", 1);
        setenv("BULKHEAD_LOG_LEVEL", "debug", 1);
        setenv("UPSTREAM", "10.9.8.7:8081", 1);
    } else {
        unsetenv("PGPORT");
        unsetenv("BULKHEAD_WORKERS");
        unsetenv("BULKHEAD_ADMIN_TOKEN");
        unsetenv("BULKHEAD_LOG_LEVEL");
        unsetenv("UPSTREAM");
    }
}

/* tls.yaml names files under /etc/bulkhead/: the same names made in the PKI directory. */
static char *tls_example_here(const char *path)
{
    static const char *const copies[][2] = {
        {"site", "site"},   {"other", "cn"},       {"client", "cn"},
        {"clients-ca", "ca"}, {"internal-ca", "ca2"}, {"pg-ca", "ca"},
    };
    const char *dir = pki();
    FILE *f = fopen(path, "r");
    char *text, *out, *o;
    long n;

    assert_non_null(f);
    for (size_t i = 0; i < COUNT(copies); i++)
        if (strcmp(copies[i][0], copies[i][1]) != 0)
            sh("cp %s/%s.crt %s/%s.crt && cp %s/%s.key %s/%s.key", dir, copies[i][1], dir,
               copies[i][0], dir, copies[i][1], dir, copies[i][0]);
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    rewind(f);
    text = calloc(1, (size_t)n + 1);
    assert_non_null(text);
    assert_int_equal(fread(text, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    out = o = calloc(1, (size_t)n * 4 + 1);
    assert_non_null(out);
    for (const char *p = text; *p != '\0';)
        if (strncmp(p, "/etc/bulkhead", 13) == 0) {
            o += sprintf(o, "%s", dir);
            p += 13;
        } else {
            *o++ = *p++;
        }
    free(text);
    return out;
}

/* Every example file round-trips, with its variables unset (defaults) and set. */
static void test_emit_examples(void **state)
{
    const char *dir = getenv("BH_CONF_EXAMPLES");
    static const char *const files[] = {"demo.yaml", "docker.yaml", "tls.yaml"};
    char path[1024];

    for (int set = 0; set < 2; set++) {
        examples_env(set);
        for (size_t i = 0; i < COUNT(files); i++) {
            bh_conf_t *c;
            bh_conf_error_t err;
            char *text;
            int rc;

            snprintf(path, sizeof path, "%s/%s", dir ? dir : "conf/examples", files[i]);
            if (strcmp(files[i], "tls.yaml") == 0) {
                char *yaml = tls_example_here(path);
                rc = bh_conf_load_string(path, yaml, strlen(yaml), &c, &err);
                free(yaml);
            } else {
                rc = bh_conf_load(path, &c, &err);
            }
            if (rc != 0)
                fail_msg("%s", err.msg);
            text = round_trip(c);
            if (set && strcmp(files[i], "docker.yaml") == 0) { /* resolved values, not ${VARS} */
                assert_non_null(strstr(text, "token: \"admin-$$ecret\"\n"));
                assert_non_null(strstr(text, "workers: 3\n"));
                assert_non_null(strstr(text, "\"10.9.8.7:8081\""));
            }
            assert_null(strstr(text, "${"));
            bh_free(text);
            bh_conf_free(c);
        }
    }
    examples_env(0);
}

/* Strings with every byte YAML or ${VAR} substitution could read otherwise survive. */
static void test_emit_strings(void **state)
{
    static const char yaml[] =
        MIN_HEAD "admin: { token: \"  lead and trail  \" }\n"
                 "log: { access: \"/tmp/a \\\"q\\\" \\\\ # x: y $$HOME ${NOPE:-d} \\t\\x01\\x7f"
                 "\\x85\\u2028\\u2029\\ufeff\\x9f\\u00e9\\u4e2d\\U0001F600 '\\uFFFE\\uFFFF\" }\n"
                 "upstreams:\n  \"null\":\n    endpoints: [ \"[::1]:80\" ]\n"
                 "databases:\n  \"-\":\n    hosts: [ \"*\" ]\n"
                 "    server: \"host=/tmp application_name='x \\\\' y' options='-c a=b'\"\n"
                 "    session: { search_path: \": #\", \"TimeZone\": \"\" }\n"
                 "routes:\n  - { name: \"- ? : [] {} & * ! | > % @ `\", upstream: \"null\",\n"
                 "      match: { host: \"*.Ex$$ample.com\", path_prefix: \"/a b#c\" } }\n";
    bh_conf_t *c = load_ok(yaml);
    char *text;

    assert_string_equal(c->admin.token, "  lead and trail  ");
    assert_string_equal(c->log.access, "/tmp/a \"q\" \\ # x: y $HOME d \t\x01\x7f\xc2\x85"
                                       "\xe2\x80\xa8\xe2\x80\xa9\xef\xbb\xbf\xc2\x9f\xc3\xa9"
                                       "\xe4\xb8\xad\xf0\x9f\x98\x80 '\xef\xbf\xbe\xef\xbf\xbf");
    text = round_trip(c);
    bh_conf_t *b = load_ok(text);
    assert_string_equal(b->admin.token, c->admin.token);
    assert_string_equal(b->log.access, c->log.access);
    assert_string_equal(b->routes[0].name, c->routes[0].name);
    assert_string_equal(b->routes[0].host, "*.ex$ample.com");
    assert_string_equal(b->routes[0].path_prefix, "/a b#c");
    assert_string_equal(b->databases[0].session_values[0], ": #");
    assert_string_equal(b->databases[0].session_values[1], "");
    bh_conf_free(b);
    bh_free(text);
    bh_conf_free(c);
}

/* Keys that are data (names, session settings) of any length: YAML caps an implicit key at 1024
 * characters, and the writer once cut keys at 127 bytes. */
static void test_emit_long_keys(void **state)
{
    static const size_t lens[] = {1, 126, 127, 128, 300, 998, 999, 1000, 1024, 1100, 5000};

    for (size_t i = 0; i < COUNT(lens); i++) {
        char *name = malloc(lens[i] + 1), *yaml = malloc(3 * lens[i] + 512), *text;
        bh_conf_t *c;

        assert_non_null(name);
        assert_non_null(yaml);
        memset(name, 'k', lens[i]);
        name[lens[i]] = '\0';
        sprintf(yaml,
                MIN_HEAD "upstreams:\n  ? %s\n  : { endpoints: [ \"127.0.0.1:2\" ] }\n"
                         "databases:\n  d:\n    hosts: [ \"*\" ]\n    server: \"host=/tmp\"\n"
                         "    session:\n      ? s%s\n      : v\n",
                name, name);
        c = load_ok(yaml);
        assert_string_equal(c->upstreams[0].name, name);
        text = round_trip(c);
        bh_free(text);
        bh_conf_free(c);
        free(yaml);
        free(name);
    }
}

/* Every key of the table is written: each row of each section appears in the text of a config
 * that gives every section (a row without a writer fails bh_conf_emit with BH_EINVAL). */
static void test_emit_every_key(void **state)
{
    static const char yaml[] =
        "listeners:\n  - address: 127.0.0.1:8080\n"
        "upstreams:\n  a:\n    endpoints: [ \"127.0.0.1:9000\" ]\n    health_check: {}\n"
        "    tls: { enabled: false, server_name: a.test }\n"
        "databases:\n  d:\n    hosts: [ \"*\" ]\n    server: \"host=/tmp\"\n"
        "    auth: fixed\n    user: u\n    password: p\n    dbname: n\n    tokens: [ t ]\n"
        "routes:\n  - { upstream: a, match: { host: a.test }, retry: { attempts: 1 } }\n"
        "  - { database: d }\n";
    bh_conf_t *c = load_ok(yaml);
    char *text = round_trip(c), key[64];

    for (const spec_t *k = bh__conf_specs; k < bh__conf_specs + bh__conf_n_specs; k++) {
        /* not keys of this file: unsupported, rejected (F_NA), TLS certificate files */
        if (k->type == NULL || (k->flags & F_NA) || k->sec == S_LISTENER_TLS ||
            k->sec == S_TLS_CERT || (k->sec == S_LISTENER && strcmp(k->key, "tls") == 0) ||
            (k->sec == S_UPSTREAM_TLS &&
             (strcmp(k->key, "cert") == 0 || strcmp(k->key, "key") == 0)))
            continue;
        snprintf(key, sizeof key, "\n%*s%s:", k->sec == S_ROOT ? 0 : 1, "", k->key);
        if (strstr(text, key) == NULL && strstr(text, key + 1) == NULL) {
            fprintf(stderr, "%s\n", text);
            fail_msg("key '%s' (section %d) is not written", k->key, (int)k->sec);
        }
    }
    bh_free(text);
    bh_conf_free(c);
}

/* BH_CONF_EMIT_REDACT: no secret in the text, which still loads. */
static void test_emit_redact(void **state)
{
    static const char yaml[] =
        MIN_HEAD "admin: { token: adm1n-t0ken }\n"
                 "databases:\n  d:\n    hosts: [ \"*\" ]\n"
                 "    server: \"host=/tmp sslpassword='pa ss' sslmode=disable\"\n"
                 "    auth: fixed\n    user: u\n    password: s3cret-pw\n    dbname: n\n"
                 "    tokens: [ b3arer-1, b3arer-2 ]\n";
    static const char *const secrets[] = {"adm1n-t0ken", "pa ss", "s3cret-pw", "b3arer"};
    bh_conf_t *c = load_ok(yaml), *r;
    char *text;
    size_t len;

    assert_int_equal(bh_conf_emit(c, BH_CONF_EMIT_REDACT, &text, &len), 0);
    for (size_t i = 0; i < COUNT(secrets); i++)
        if (strstr(text, secrets[i]) != NULL)
            fail_msg("'%s' is in the redacted text:\n%s", secrets[i], text);
    assert_non_null(strstr(text, "sslmode=disable"));
    r = load_ok(text);
    assert_string_equal(r->admin.token, "<redacted>");
    assert_string_equal(r->databases[0].password, "<redacted>");
    assert_int_equal(r->databases[0].n_tokens, 2);
    assert_string_equal(r->databases[0].server,
                        "host=/tmp sslpassword=<redacted> sslmode=disable");
    bh_conf_free(r);
    bh_free(text);
    bh_conf_free(c);
}

/* Out of memory at any allocation: BH_ENOMEM and nothing returned (no leak under ASan). */
static void test_emit_enomem(void **state)
{
    bh_conf_t *c = load_ok(FULL);

    for (unsigned flags = 0; flags <= BH_CONF_EMIT_REDACT; flags++) {
        unsigned long nth;
        for (nth = 1;; nth++) {
            char *text = (char *)1;
            size_t len = 1;
            int rc;

            bh_alloc_fail_after(nth);
            rc = bh_conf_emit(c, flags, &text, &len);
            bh_alloc_fail_after(0);
            if (rc == 0) {
                bh_free(text);
                break;
            }
            assert_int_equal(rc, BH_ENOMEM);
            assert_null(text);
            assert_int_equal(len, 0);
        }
        assert_true(nth > 1);
    }
    bh_conf_free(c);
}

/* A route without a name is named "<host><prefix>#<index>" when "<host><prefix>" is taken; when
 * an earlier route was given that name too, the name takes a further ".<n>": two routes never
 * share a name (once they did, and the emitted config did not load). */
static void test_route_name_taken(void **state)
{
    bh_conf_t *c = load_ok(MIN_HEAD "upstreams: { a: { endpoints: [ \"127.0.0.1:2\" ] } }\n"
                                    "routes:\n  - { name: \"*/#2\", upstream: a }\n"
                                    "  - { upstream: a }\n  - { upstream: a }\n");

    assert_string_equal(c->routes[0].name, "*/#2");
    assert_string_equal(c->routes[1].name, "*/");
    assert_string_equal(c->routes[2].name, "*/#2.2");
    bh_free(round_trip(c));
    bh_conf_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_config),
        cmocka_unit_test(test_route_timeouts_inherit),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_percent),
        cmocka_unit_test(test_addr),
        cmocka_unit_test(test_method_bit),
        cmocka_unit_test(test_env),
        cmocka_unit_test(test_did_you_mean),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_resilience_forms),
        cmocka_unit_test(test_resilience_errors),
        cmocka_unit_test(test_methods_forms),
        cmocka_unit_test(test_database_full),
        cmocka_unit_test(test_database_defaults),
        cmocka_unit_test(test_database_errors),
        cmocka_unit_test(test_load_file),
        cmocka_unit_test(test_examples),
        cmocka_unit_test(test_example_contents),
        cmocka_unit_test(test_equal_upstream),
        cmocka_unit_test(test_equal_database),
        cmocka_unit_test(test_enomem),
        cmocka_unit_test(test_tls_upstream),
        cmocka_unit_test(test_tls_errors),
        cmocka_unit_test(test_tls_listener_errors),
        cmocka_unit_test(test_tls_listener),
        cmocka_unit_test(test_tls_file_errors),
        cmocka_unit_test(test_tls_equal),
        cmocka_unit_test(test_tls_enomem),
        cmocka_unit_test(test_emit_examples),
        cmocka_unit_test(test_emit_strings),
        cmocka_unit_test(test_emit_long_keys),
        cmocka_unit_test(test_emit_every_key),
        cmocka_unit_test(test_emit_redact),
        cmocka_unit_test(test_emit_enomem),
        cmocka_unit_test(test_route_name_taken),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);

    if (pki_dir[0] != '\0')
        sh("rm -rf %s", pki_dir);
    return failed;
}
