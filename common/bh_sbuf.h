/* A growing string, for text built in pieces off the request path (the config emitter, ${VAR}
 * substitution, /metrics and /stats). NUL-terminated once anything is put. A failed allocation
 * sticks (oom): later puts do nothing, and bh_sbuf_take frees and returns NULL. */
#ifndef BH_SBUF_H
#define BH_SBUF_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct bh_sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} bh_sbuf_t;

void bh_sbuf_put(bh_sbuf_t *b, const char *s, size_t n);
void bh_sbuf_puts(bh_sbuf_t *b, const char *s);
void bh_sbuf_vprintf(bh_sbuf_t *b, const char *fmt, va_list ap);
void bh_sbuf_printf(bh_sbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The string ("" when nothing was put), now the caller's, and its length (len may be NULL); NULL
 * after a failed allocation, with everything freed. */
char *bh_sbuf_take(bh_sbuf_t *b, size_t *len);

#endif
