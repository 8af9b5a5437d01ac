/* Helpers shared by the HTTP fuzz targets (fuzz_request, fuzz_response): the report of a broken
 * invariant and field counting on a head split by bh_http_split. Header-only: each target is its
 * own executable. */
#ifndef FUZZ_HTTP_H
#define FUZZ_HTTP_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "bh_http.h"

/* Prints "TARGET invariant: WHAT" and the bytes (labelled) the invariant was checked on, then
 * aborts, which libFuzzer reports as a crash with the input. */
static inline void fuzz_fail(const char *target, const char *label, const char *what,
                             const char *out, size_t n)
{
    fprintf(stderr, "%s invariant: %s\n--- %s:\n%.*s\n---\n", target, what, label, (int)n,
            out ? out : "");
    abort();
}

/* How many of the n fields are named name (case-insensitive). */
static inline int fuzz_count_named(const bh_hdr_t *h, int n, const char *name)
{
    int k = 0;
    for (int i = 0; i < n; i++)
        if (bh_span_ieqn(h[i].name, name, strlen(name)))
            k++;
    return k;
}
#endif
