/* The session ticket keys every TLS listener shares: rotation and how long an old key is kept. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>
#include "bh_tls_ctx.h"

#define ROTATE BH_TLS_TICKET_ROTATE_S

/* One key encrypts until it is ROTATE old; the previous ones still decrypt (index > 0: the ticket
 * is renewed under the current key) for BH_TLS_TICKET_KEYS - 1 periods, then are forgotten. */
static void test_ticket_keys_rotate(void **state)
{
    (void)state;
    const int64_t t0 = 1000000;
    unsigned char a[16], b[16], c[16], d[16], x[16];

    assert_int_equal(bh__tls_ticket_key(NULL, t0, a), 0);
    assert_int_equal(bh__tls_ticket_key(NULL, t0 + ROTATE - 1, x), 0);
    assert_memory_equal(a, x, 16); /* no rotation before it is due */
    assert_int_equal(bh__tls_ticket_key(a, t0 + ROTATE - 1, x), 0);

    assert_int_equal(bh__tls_ticket_key(NULL, t0 + ROTATE, b), 0);
    assert_memory_not_equal(a, b, 16);
    assert_int_equal(bh__tls_ticket_key(a, t0 + ROTATE, x), 1); /* still accepted, renewed */
    assert_memory_equal(a, x, 16);

    assert_int_equal(bh__tls_ticket_key(NULL, t0 + 2 * ROTATE, c), 0);
    assert_int_equal(bh__tls_ticket_key(a, t0 + 2 * ROTATE, x), 2);
    assert_int_equal(bh__tls_ticket_key(b, t0 + 2 * ROTATE, x), 1);

    assert_int_equal(bh__tls_ticket_key(NULL, t0 + 3 * ROTATE, d), 0);
    assert_int_equal(bh__tls_ticket_key(a, t0 + 3 * ROTATE, x), -1); /* three periods: gone */
    assert_int_equal(bh__tls_ticket_key(b, t0 + 3 * ROTATE, x), 2);
    assert_int_equal(bh__tls_ticket_key(c, t0 + 3 * ROTATE, x), 1);
    assert_memory_not_equal(c, d, 16);
}

/* A clock that goes back (a wall clock set backwards) never rotates early nor loses keys. */
static void test_ticket_keys_clock_back(void **state)
{
    (void)state;
    const int64_t t0 = 5000000;
    unsigned char a[16], x[16];

    assert_int_equal(bh__tls_ticket_key(NULL, t0, a), 0); /* (later than the test above: rotated) */
    assert_int_equal(bh__tls_ticket_key(NULL, t0 - 10 * ROTATE, x), 0);
    assert_memory_equal(a, x, 16);
    assert_int_equal(bh__tls_ticket_key(a, t0 - 10 * ROTATE, x), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ticket_keys_rotate),
        cmocka_unit_test(test_ticket_keys_clock_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
