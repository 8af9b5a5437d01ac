/* Internals shared by the files of the pure Neon protocol layer (bh_sql_proto.h): the encoder
 * states, the bounded output buffer's fast path and the JSON writers on it, and error texts.
 * Only for proxy/sql/bh_sql_*.c files that implement bh_sql_proto.h; nothing here knows libuv. */
#ifndef BH_SQL_PROTO_INT_H
#define BH_SQL_PROTO_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "bh_sql_proto.h"

/* ---- errors (bh_sql_errors.c) ---- */

/* printf into err, NUL-terminated and truncated to errlen; nothing when err is NULL or errlen 0. */
void bh__sql_set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- the bounded output buffer (bh_sql_json.c) ---- */

/* bh_sql_out_t.state_: IDLE -> [BATCH] -> ROWS -> [BATCH] -> DONE (bh_sql_encode.c moves it; an
 * error body or "query is not supported" ends in DONE; bh_sql_out_reset returns to IDLE). */
enum { BH__SQL_ST_IDLE, BH__SQL_ST_BATCH, BH__SQL_ST_ROWS, BH__SQL_ST_DONE };

/* Sets the bound and lim_ = min(cap, max). Error bodies lift it to SIZE_MAX while they write. */
void bh__sql_set_max(bh_sql_out_t *o, size_t max);
/* Slow path of bh__sql_reserve: grows the buffer (doubling, never past max); false with o->err
 * set (sticky) when the bound or the allocator says no, or when o->err was already set. */
bool bh__sql_grow(bh_sql_out_t *o, size_t k);

/* Room for k more bytes. Invariant whenever a writer runs: n <= lim_ <= cap, so lim_ - n cannot
 * wrap. (An error body may leave n above a smaller max; it ends in DONE, where nothing writes
 * until bh_sql_out_reset or an error body empties the buffer again.) */
static inline bool bh__sql_reserve(bh_sql_out_t *o, size_t k)
{
    if (o->err == 0 && k <= o->lim_ - o->n)
        return true;
    return bh__sql_grow(o, k);
}

/* The writers below append to o, or do nothing once o->err is set. */
static inline void bh__sql_put(bh_sql_out_t *o, const void *p, size_t k)
{
    if (bh__sql_reserve(o, k)) {
        memcpy(o->p + o->n, p, k);
        o->n += k;
    }
}

static inline void bh__sql_putc(bh_sql_out_t *o, char c)
{
    if (bh__sql_reserve(o, 1))
        o->p[o->n++] = c;
}

/* A string literal, its length known at compile time. */
#define BH__SQL_PUTLIT(o, lit) bh__sql_put((o), "" lit, sizeof(lit) - 1)

void bh__sql_put_str(bh_sql_out_t *o, const char *s);
/* Plain decimal. */
void bh__sql_put_i64(bh_sql_out_t *o, int64_t v);
/* A quoted JSON string escaped as serde_json does (section 5); invalid UTF-8 sets
 * BH_ESQL_BAD_UTF8. s need not be NUL-terminated and may contain NUL bytes (\u0000). */
void bh__sql_put_jstr(bh_sql_out_t *o, const char *s, size_t n);
void bh__sql_put_jstrz(bh_sql_out_t *o, const char *s);

/* ---- numbers (bh_sql_json.c) ---- */

#define BH__SQL_DOUBLE_MAX 40
/* Writes d (finite) into buf in ryu's pretty format as serde_json prints it (1.0, 2.5, 1000.0,
 * 0.001, 1e100, 1.5e-7), NUL-terminated; returns its length. */
size_t bh__sql_fmt_double(double d, char buf[BH__SQL_DOUBLE_MAX]);

#endif
