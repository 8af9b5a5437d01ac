/* libFuzzer target: the Bulkhead-Timeout (bh_deadline_parse_ms) and Retry-After
 * (bh_backoff_parse_retry_after) header values.
 * Invariants: each parser agrees with an independent reference of its documented grammar
 * (optional spaces/tabs, decimal digits, optional spaces/tabs); Bulkhead-Timeout is in
 * [1 ms, 365 days] and a client value never lengthens a route's deadline; Retry-After is whole
 * seconds in ms, saturating at UINT64_MAX / 2. The input is not NUL-terminated. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "bh_backoff.h"
#include "bh_deadline.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CLIENT_MAX (365ull * 86400 * 1000)
#define RETRY_MAX (UINT64_MAX / 2)

static void fail(const char *what, const uint8_t *data, size_t size)
{
    fprintf(stderr, "fuzz_timeouts invariant: %s (input %zu bytes: %.*s)\n", what, size,
            (int)size, (const char *)data);
    abort();
}

/* Reference: the digits of v with OWS trimmed, or -1. *sat: the number, saturated at cap + 1. */
static int ref_digits(const char *v, size_t n, uint64_t cap, uint64_t *sat)
{
    size_t i = 0, j = n;
    while (i < j && (v[i] == ' ' || v[i] == '\t'))
        i++;
    while (j > i && (v[j - 1] == ' ' || v[j - 1] == '\t'))
        j--;
    if (i == j)
        return -1;
    uint64_t x = 0;
    for (size_t k = i; k < j; k++) {
        if (v[k] < '0' || v[k] > '9')
            return -1;
        x = x > cap ? cap + 1 : x * 10 + (uint64_t)(v[k] - '0');
        if (x > cap)
            x = cap + 1;
    }
    *sat = x;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return -1;
    char *v = malloc(size ? size : 1);
    memcpy(v, data, size);

    /* Bulkhead-Timeout */
    uint64_t ms = 0, want = 0;
    int rc = bh_deadline_parse_ms(v, size, &ms);
    int ref = ref_digits(v, size, CLIENT_MAX, &want);
    if (ref == 0 && want == 0)
        ref = -1; /* 0 is refused */
    if ((rc == 0) != (ref == 0))
        fail(rc == 0 ? "Bulkhead-Timeout accepted what the grammar refuses"
                     : "Bulkhead-Timeout refused a valid value",
             data, size);
    if (rc == 0) {
        if (want > CLIENT_MAX)
            want = CLIENT_MAX;
        if (ms != want)
            fail("Bulkhead-Timeout value differs from the reference", data, size);
        if (ms < 1 || ms > CLIENT_MAX)
            fail("Bulkhead-Timeout out of [1 ms, 365 d]", data, size);
        static const uint64_t totals[] = {0, 1, 2500, CLIENT_MAX, UINT64_MAX - 5};
        static const uint64_t nows[] = {0, 12345, UINT64_MAX - 10};
        for (size_t a = 0; a < sizeof(nows) / sizeof(nows[0]); a++)
            for (size_t b = 0; b < sizeof(totals) / sizeof(totals[0]); b++) {
                uint64_t now = nows[a], total = totals[b];
                uint64_t d = bh_deadline_for_request(now, total, ms);
                if (d <= now)
                    fail("deadline not after now", data, size);
                if (d > bh_deadline_after(now, ms))
                    fail("deadline later than the client asked", data, size);
                if (total != 0 && d > bh_deadline_after(now, total))
                    fail("client lengthened the route's deadline", data, size);
            }
    }

    /* Retry-After (delay-seconds only) */
    uint64_t ra = 0, secs = 0;
    rc = bh_backoff_parse_retry_after(v, size, &ra);
    ref = ref_digits(v, size, UINT64_MAX / 2000 - 1, &secs);
    if ((rc == 0) != (ref == 0))
        fail(rc == 0 ? "Retry-After accepted what the grammar refuses"
                     : "Retry-After refused a valid value",
             data, size);
    if (rc == 0) {
        uint64_t want_ra = secs < UINT64_MAX / 2000 ? secs * 1000 : RETRY_MAX;
        if (ra != want_ra)
            fail("Retry-After value differs from the reference", data, size);
        if (ra > RETRY_MAX || (ra != RETRY_MAX && ra % 1000 != 0))
            fail("Retry-After not whole seconds within bounds", data, size);
    }
    free(v);
    return 0;
}
