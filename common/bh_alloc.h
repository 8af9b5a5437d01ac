/* Allocation through one wrapper, with a test hook that fails the Nth allocation. */
#ifndef BH_ALLOC_H
#define BH_ALLOC_H

#include <stddef.h>

/* Like malloc/calloc/realloc/strdup/free. May return NULL: callers on the request path fail that
 * request, never the process. */
void *bh_malloc(size_t n);
void *bh_calloc(size_t count, size_t size);
void *bh_realloc(void *p, size_t n);
char *bh_strdup(const char *s);
char *bh_strndup(const char *s, size_t n);
void bh_free(void *p);

/* Test hook: the nth allocation from now (1 = the next one) returns NULL; 0 disables.
 * Thread-local, so a unit test affects only its own thread. */
void bh_alloc_fail_after(unsigned long nth);

#endif
