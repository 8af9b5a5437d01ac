/* A growing string (see bh_sbuf.h). */
#include <stdio.h>
#include <string.h>
#include "bh_alloc.h"
#include "bh_sbuf.h"

/* Room for n more bytes and the terminating NUL. */
static bool reserve(bh_sbuf_t *b, size_t n)
{
    if (b->oom)
        return false;
    if (b->len + n + 1 <= b->cap)
        return true;
    size_t cap = b->cap > 0 ? b->cap * 2 : 256;
    while (cap < b->len + n + 1)
        cap *= 2;
    char *p = bh_realloc(b->p, cap);
    if (p == NULL) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

void bh_sbuf_put(bh_sbuf_t *b, const char *s, size_t n)
{
    if (n == 0 || !reserve(b, n))
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void bh_sbuf_puts(bh_sbuf_t *b, const char *s)
{
    bh_sbuf_put(b, s, strlen(s));
}

void bh_sbuf_vprintf(bh_sbuf_t *b, const char *fmt, va_list ap)
{
    va_list again;
    va_copy(again, ap);
    size_t room = b->p != NULL ? b->cap - b->len : 0;
    int k = vsnprintf(room > 0 ? b->p + b->len : NULL, room, fmt, ap);
    if (k > 0 && (size_t)k >= room && reserve(b, (size_t)k))
        vsnprintf(b->p + b->len, b->cap - b->len, fmt, again);
    va_end(again);
    if (k > 0 && !b->oom)
        b->len += (size_t)k;
}

void bh_sbuf_printf(bh_sbuf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    bh_sbuf_vprintf(b, fmt, ap);
    va_end(ap);
}

char *bh_sbuf_take(bh_sbuf_t *b, size_t *len)
{
    if (!b->oom)
        reserve(b, 0); /* "" when nothing was put */
    char *p = b->oom ? NULL : b->p;
    if (p == NULL)
        bh_free(b->p);
    else
        p[b->len] = '\0';
    if (len != NULL)
        *len = p != NULL ? b->len : 0;
    *b = (bh_sbuf_t){0};
    return p;
}
