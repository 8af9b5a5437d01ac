/* libFuzzer target: the /sql JSON body and its params (bh_sql_parse_body, bh_sql_body.c), and
 * the JSON string writer of the response (bh__sql_put_jstr, bh_sql_json.c).
 * Invariants: a failure is BH_ESQL_BODY with "could not parse the HTTP request body" in err (or
 * BH_ENOMEM) and no request; a success has one query (single) or any number (batch), each with
 * NUL-terminated text, 0..65535 params that are NULL or NUL-terminated, arrayMode -1/0/1; parsing
 * the same bytes again gives the same plan. Each query text, written as a JSON string, reads back
 * with jansson to the same bytes, and so do the raw input bytes when they are valid UTF-8. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "bh_sql_proto.h"
#include "bh_sql_proto_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz_sql_body invariant: %s %s\n", what, detail ? detail : "");
    abort();
}

static bool same_str(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static void check_jstr(const char *text, size_t n)
{
    bh_sql_out_t o;
    bh_sql_out_init(&o, SIZE_MAX);
    bh__sql_put_jstr(&o, text, n);
    if (o.err == BH_ESQL_BAD_UTF8 || o.err == BH_ENOMEM) {
        bh_sql_out_free(&o);
        return;
    }
    if (o.err != 0)
        fail("JSON string writer failed", bh_strerror(o.err));
    json_error_t je;
    json_t *j = json_loadb(o.p, o.n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (j == NULL || !json_is_string(j)) {
        fprintf(stderr, "written: %.*s\n", (int)o.n, o.p);
        fail("written JSON string does not parse", je.text);
    }
    if (json_string_length(j) != n || memcmp(json_string_value(j), text, n) != 0)
        fail("JSON string does not read back to the same bytes", NULL);
    json_decref(j);
    bh_sql_out_free(&o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 64 * 1024)
        return -1;
    char *buf = malloc(size ? size : 1); /* exact size, not NUL-terminated */
    memcpy(buf, data, size);
    bh_sql_request_t *r = NULL, *r2 = NULL;
    char err[512];
    err[0] = '\0';
    check_jstr(buf, size); /* any bytes: invalid UTF-8 is refused, the rest reads back */
    int rc = bh_sql_parse_body(buf, size, &r, err, sizeof(err));
    if (rc != 0) {
        if (r != NULL)
            fail("failed parse returned a request", NULL);
        if (rc != BH_ENOMEM &&
            (rc != BH_ESQL_BODY || strstr(err, "could not parse the HTTP request body") == NULL))
            fail("unexpected error", err);
        free(buf);
        return 0;
    }
    if (r == NULL)
        fail("successful parse returned no request", NULL);
    if (!r->batch && r->nqueries != 1)
        fail("single request without exactly one query", NULL);
    if (r->nqueries > 0 && r->queries == NULL)
        fail("queries NULL", NULL);
    for (size_t i = 0; i < r->nqueries; i++) {
        const bh_sql_query_t *q = &r->queries[i];
        if (q->text == NULL)
            fail("query text NULL", NULL);
        if (q->nparams < 0 || q->nparams > 65535)
            fail("nparams out of range", NULL);
        if (q->nparams > 0 && q->params == NULL)
            fail("params NULL", NULL);
        for (int k = 0; k < q->nparams; k++)
            if (q->params[k] != NULL)
                (void)strlen(q->params[k]);
        if (q->array_mode < -1 || q->array_mode > 1)
            fail("arrayMode out of range", NULL);
        check_jstr(q->text, strlen(q->text));
    }
    rc = bh_sql_parse_body(buf, size, &r2, err, sizeof(err));
    if (rc != 0 && rc != BH_ENOMEM)
        fail("second parse of the same bytes failed", err);
    if (rc == 0) {
        if (r2->batch != r->batch || r2->nqueries != r->nqueries)
            fail("second parse differs", NULL);
        for (size_t i = 0; i < r->nqueries; i++) {
            const bh_sql_query_t *a = &r->queries[i], *b = &r2->queries[i];
            if (strcmp(a->text, b->text) != 0 || a->nparams != b->nparams ||
                a->array_mode != b->array_mode)
                fail("second parse differs in a query", NULL);
            for (int k = 0; k < a->nparams; k++)
                if (!same_str(a->params[k], b->params[k]))
                    fail("second parse differs in a param", NULL);
        }
    }
    bh_sql_request_free(r);
    bh_sql_request_free(r2);
    free(buf);
    return 0;
}
