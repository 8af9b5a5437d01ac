/* Rendering of the admin /metrics and /stats bodies (main thread). */
#ifndef BH_STATS_H
#define BH_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include "bh_proxy.h"

/* Each returns a bh_malloc'd body and its length in *len, or NULL when out of memory. */
char *bh_stats_prometheus(bh_server_t *srv, size_t *len);
char *bh_stats_json(bh_server_t *srv, bool draining, size_t *len);

/* Internal, for tests/fuzz/fuzz_labels.c only: s (NUL-terminated) escaped as a label value is,
 * as a bh_malloc'd NUL-terminated string of length *len; NULL when out of memory. */
char *bh__stats_escape_label(const char *s, size_t *len);

#endif
