/* libFuzzer target: the YAML config loader from a buffer (bh_conf_load_string) and its writer
 * (bh_conf_emit). Invariants: a failure fills err with "NAME:LINE:COL: what" (or is BH_ENOMEM);
 * a config that loads round-trips: emit(c) loads again, to a snapshot with the same counts, every
 * upstream and database equal by bh_conf_*_equal, routes resolving to the same targets and the
 * same number of warnings, and emitting that snapshot gives the same text byte for byte (which
 * covers what the equal functions do not: listeners, limits, admin, log, routes, shutdown); the
 * redacted text loads too (bulkhead --check --print). LeakSanitizer checks that every path frees
 * everything. */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "bh_alloc.h"
#include "bh_conf.h"
#include "bh_error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NAME "fuzz.yaml"

static void fail(const char *what, const char *msg)
{
    fprintf(stderr, "fuzz_config invariant: %s: %s\n", what, msg ? msg : "");
    abort();
}

/* "NAME:LINE:COL: " then a message. */
static bool error_shape(const char *m)
{
    size_t k = strlen(NAME);
    if (strncmp(m, NAME ":", k + 1) != 0)
        return false;
    m += k + 1;
    for (int field = 0; field < 2; field++) {
        if (!isdigit((unsigned char)*m))
            return false;
        while (isdigit((unsigned char)*m))
            m++;
        if (*m++ != ':')
            return false;
    }
    return *m == ' ' && m[1] != '\0';
}

static bh_conf_t *load(const uint8_t *data, size_t size, int *rc, bh_conf_error_t *err)
{
    /* An exact-size copy: ASan sees any read past len (the input is not NUL-terminated). */
    char *buf = malloc(size ? size : 1);
    if (buf == NULL)
        abort();
    memcpy(buf, data, size);
    bh_conf_t *c = NULL;
    memset(err, 0, sizeof(*err));
    *rc = bh_conf_load_string(NAME, buf, size, &c, err);
    free(buf);
    return c;
}

/* A round-trip failure: what, the input, the first emission, and the second text (the
 * emission of the reloaded snapshot, or the load error). */
static void fail_trip(const char *what, const uint8_t *data, size_t size, const char *t1,
                      const char *t2)
{
    fprintf(stderr,
            "fuzz_config invariant: %s\n--- input (%zu bytes) ---\n%.*s\n--- emit(load(input)) "
            "---\n%s\n--- second ---\n%s\n--- end ---\n",
            what, size, (int)size, (const char *)data, t1 ? t1 : "", t2 ? t2 : "");
    abort();
}

static char *emit(const bh_conf_t *c, unsigned flags, size_t *len)
{
    char *t = NULL;
    int rc = bh_conf_emit(c, flags, &t, len);

    if (rc == BH_ENOMEM)
        return NULL;
    if (rc != 0 || t == NULL || strlen(t) != *len)
        fail("bh_conf_emit failed on a loaded snapshot", NULL);
    return t;
}

/* load(emit(a)) equals a, and emit(load(emit(a))) == emit(a). */
static void round_trip(const bh_conf_t *a, const uint8_t *data, size_t size)
{
    size_t len, len2;
    char *t1 = emit(a, 0, &len), *t2 = NULL;
    bh_conf_error_t err;
    int rc;

    if (t1 == NULL)
        return;
    bh_conf_t *b = load((const uint8_t *)t1, len, &rc, &err);
    if (rc == BH_ENOMEM)
        goto out;
    if (rc != 0)
        fail_trip("the emitted config does not load", data, size, t1, err.msg);
    if (a->n_upstreams != b->n_upstreams || a->n_databases != b->n_databases ||
        a->n_routes != b->n_routes || a->n_listeners != b->n_listeners ||
        a->n_warnings != b->n_warnings)
        fail_trip("the emitted config loads with other counts", data, size, t1, NULL);
    for (size_t i = 0; i < a->n_upstreams; i++)
        if (!bh_conf_upstream_equal(&a->upstreams[i], &b->upstreams[i]))
            fail_trip("an upstream differs after the round trip", data, size, t1,
                      a->upstreams[i].name);
    for (size_t i = 0; i < a->n_databases; i++)
        if (!bh_conf_database_equal(&a->databases[i], &b->databases[i]))
            fail_trip("a database differs after the round trip", data, size, t1,
                      a->databases[i].name);
    for (size_t i = 0; i < a->n_routes; i++)
        if (a->routes[i].upstream_index != b->routes[i].upstream_index ||
            a->routes[i].database_index != b->routes[i].database_index)
            fail_trip("a route resolves elsewhere after the round trip", data, size, t1, NULL);
    if ((t2 = emit(b, 0, &len2)) != NULL && (len2 != len || memcmp(t1, t2, len) != 0))
        fail_trip("emit(load(emit(c))) differs from emit(c)", data, size, t1, t2);
    bh_free(t2);
    bh_conf_free(b);
    b = NULL;
    if ((t2 = emit(a, BH_CONF_EMIT_REDACT, &len2)) != NULL) {
        b = load((const uint8_t *)t2, len2, &rc, &err);
        if (rc != 0 && rc != BH_ENOMEM)
            fail_trip("the redacted config does not load", data, size, t2, err.msg);
    }
out:
    bh_free(t1);
    bh_free(t2);
    bh_conf_free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 64 * 1024)
        return -1;
    int rc;
    bh_conf_error_t err;
    bh_conf_t *a = load(data, size, &rc, &err);
    if (rc != 0) {
        if (a != NULL)
            fail("failed load returned a snapshot", err.msg);
        if (rc != BH_ENOMEM && !error_shape(err.msg))
            fail("error without NAME:LINE:COL: shape", err.msg);
        return 0;
    }
    if (a == NULL)
        fail("successful load returned no snapshot", NULL);
    round_trip(a, data, size);
    bh_conf_free(a);
    return 0;
}
