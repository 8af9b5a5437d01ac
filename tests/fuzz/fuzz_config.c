/* libFuzzer target: the YAML config loader from a buffer (bh_conf_load_string).
 * Invariants: a failure fills err with "NAME:LINE:COL: what" (or is BH_ENOMEM); a config that
 * loads loads again from the same bytes to an equal snapshot (every upstream and database equal
 * by bh_conf_*_equal, the same counts); LeakSanitizer checks that both paths free everything. */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    int rc2;
    bh_conf_error_t err2;
    bh_conf_t *b = load(data, size, &rc2, &err2);
    if (rc2 != 0)
        fail("second load of the same bytes failed", err2.msg);
    if (a->n_upstreams != b->n_upstreams || a->n_databases != b->n_databases ||
        a->n_routes != b->n_routes || a->n_listeners != b->n_listeners ||
        a->n_warnings != b->n_warnings)
        fail("second load has other counts", NULL);
    for (size_t i = 0; i < a->n_upstreams; i++)
        if (!bh_conf_upstream_equal(&a->upstreams[i], &b->upstreams[i]))
            fail("upstream differs on reload", NULL);
    for (size_t i = 0; i < a->n_databases; i++)
        if (!bh_conf_database_equal(&a->databases[i], &b->databases[i]))
            fail("database differs on reload", NULL);
    for (size_t i = 0; i < a->n_routes; i++)
        if (a->routes[i].upstream_index != b->routes[i].upstream_index ||
            a->routes[i].database_index != b->routes[i].database_index)
            fail("route resolves elsewhere on reload", NULL);
    for (size_t i = 0; i < a->n_warnings; i++)
        if (strcmp(a->warnings[i], b->warnings[i]) != 0)
            fail("warning differs on reload", a->warnings[i]);
    bh_conf_free(a);
    bh_conf_free(b);
    return 0;
}
