/* The allocation wrapper and its failure-injection hook. */
#include <stdlib.h>
#include <string.h>
#include "bh_alloc.h"

static _Thread_local unsigned long fail_countdown;

static int should_fail(void)
{
    if (fail_countdown == 0)
        return 0;
    return --fail_countdown == 0;
}

void bh_alloc_fail_after(unsigned long nth)
{
    fail_countdown = nth;
}

void *bh_malloc(size_t n)
{
    return should_fail() ? NULL : malloc(n);
}

void *bh_calloc(size_t count, size_t size)
{
    return should_fail() ? NULL : calloc(count, size);
}

void *bh_realloc(void *p, size_t n)
{
    return should_fail() ? NULL : realloc(p, n);
}

char *bh_strndup(const char *s, size_t n)
{
    char *d = bh_malloc(n + 1);
    if (d != NULL) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

char *bh_strdup(const char *s)
{
    return bh_strndup(s, strlen(s));
}

void bh_free(void *p)
{
    free(p);
}
