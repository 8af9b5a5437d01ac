/* The bounded body buffer (bh_sql_out_t) and the JSON writers on it.
 *
 * Strings are escaped as serde_json does (lowercase \u00xx, UTF-8 validated and copied raw, '/'
 * and DEL unescaped), integers are plain decimal, floats ryu's shortest round-trip form.
 *
 * Errors are sticky: the first failure (BH_ENOMEM, BH_ESQL_TOO_LARGE, BH_ESQL_BAD_UTF8) is kept in
 * o->err and every later write is a no-op, so a whole body is written without checks and the
 * caller looks at o->err once. The buffer never grows past max: lim_ = min(cap, max) is the bound
 * of the inline fast path (bh__sql_reserve in bh_sql_proto_int.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "bh_alloc.h"
#include "bh_sql_proto_int.h"

void bh_sql_out_init(bh_sql_out_t *o, size_t max_bytes)
{
    memset(o, 0, sizeof(*o));
    o->max = max_bytes;
}

void bh__sql_set_max(bh_sql_out_t *o, size_t max)
{
    o->max = max;
    o->lim_ = o->cap < max ? o->cap : max;
}

void bh_sql_out_reset(bh_sql_out_t *o)
{
    o->n = 0;
    o->err = 0;
    o->state_ = BH__SQL_ST_IDLE;
    o->batch_ = false;
    o->nresults_ = 0;
    o->nrows_ = 0;
}

void bh_sql_out_free(bh_sql_out_t *o)
{
    bh_free(o->p);
    size_t max = o->max;
    bh_sql_out_init(o, max);
}

char *bh_sql_out_take(bh_sql_out_t *o, size_t *len)
{
    char *p = o->p;
    *len = o->n;
    o->p = NULL;
    o->cap = 0;
    o->lim_ = 0;
    bh_sql_out_reset(o);
    return p;
}

bool bh__sql_grow(bh_sql_out_t *o, size_t k)
{
    if (o->err != 0)
        return false;
    if (k > o->max - o->n || o->n + k < o->n) {
        o->err = BH_ESQL_TOO_LARGE;
        return false;
    }
    size_t want = o->n + k;
    size_t cap = o->cap ? o->cap : 1024;
    while (cap < want)
        cap = cap > SIZE_MAX / 2 ? want : cap * 2;
    if (cap > o->max)
        cap = o->max;
    char *p = bh_realloc(o->p, cap);
    if (p == NULL) {
        o->err = BH_ENOMEM;
        return false;
    }
    o->p = p;
    o->cap = cap;
    o->lim_ = cap < o->max ? cap : o->max;
    return true;
}

void bh__sql_put_str(bh_sql_out_t *o, const char *s)
{
    bh__sql_put(o, s, strlen(s));
}

void bh__sql_put_i64(bh_sql_out_t *o, int64_t v)
{
    char tmp[24];
    size_t i = sizeof(tmp);
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0)
        tmp[--i] = '-';
    bh__sql_put(o, tmp + i, sizeof(tmp) - i);
}

/* 0: copy; 1: non-ASCII (validate); other: the letter after '\'; 'u': \u00xx */
static const unsigned char esc_tab[256] = {
    ['\0'] = 'u', [0x01] = 'u', [0x02] = 'u', [0x03] = 'u',  [0x04] = 'u',        [0x05] = 'u',
    [0x06] = 'u', [0x07] = 'u', ['\b'] = 'b', ['\t'] = 't',  ['\n'] = 'n',        [0x0b] = 'u',
    ['\f'] = 'f', ['\r'] = 'r', [0x0e] = 'u', [0x0f] = 'u',  [0x10] = 'u',        [0x11] = 'u',
    [0x12] = 'u', [0x13] = 'u', [0x14] = 'u', [0x15] = 'u',  [0x16] = 'u',        [0x17] = 'u',
    [0x18] = 'u', [0x19] = 'u', [0x1a] = 'u', [0x1b] = 'u',  [0x1c] = 'u',        [0x1d] = 'u',
    [0x1e] = 'u', [0x1f] = 'u', ['"'] = '"',  ['\\'] = '\\', [0x80 ... 0xff] = 1,
};

/* Length of the valid UTF-8 sequence at s (s[0] >= 0x80), or 0 when invalid (overlong,
 * surrogate, above U+10FFFF, truncated). */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    if (c >= 0xc2 && c <= 0xdf)
        return n >= 2 && (s[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        if (n < 3 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80)
            return 0;
        if ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] >= 0xa0))
            return 0;
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        if (n < 4 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80 || (s[3] & 0xc0) != 0x80)
            return 0;
        if ((c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] >= 0x90))
            return 0;
        return 4;
    }
    return 0;
}

/* The body of a JSON string (no quotes), escaped as serde_json does. Invalid UTF-8 sets
 * BH_ESQL_BAD_UTF8. */
static void put_escaped(bh_sql_out_t *o, const char *str, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)str;
    /* s[run..i) needs no escaping and is copied in one put when an escape or the end comes */
    size_t i = 0, run = 0;
    while (i < n) {
        unsigned char e = esc_tab[s[i]];
        if (e == 0) {
            i++;
            continue;
        }
        if (e == 1) {
            size_t k = utf8_seq(s + i, n - i);
            if (k == 0) {
                if (o->err == 0)
                    o->err = BH_ESQL_BAD_UTF8;
                return;
            }
            i += k;
            continue;
        }
        bh__sql_put(o, s + run, i - run);
        if (e == 'u') {
            char u[6] = {'\\', 'u', '0', '0', hex[s[i] >> 4], hex[s[i] & 15]};
            bh__sql_put(o, u, 6);
        } else {
            char b[2] = {'\\', (char)e};
            bh__sql_put(o, b, 2);
        }
        run = ++i;
    }
    bh__sql_put(o, s + run, n - run);
}

void bh__sql_put_jstr(bh_sql_out_t *o, const char *s, size_t n)
{
    /* one reservation covers the common case of nothing to escape */
    if (!bh__sql_reserve(o, n + 2))
        return;
    o->p[o->n++] = '"';
    put_escaped(o, s, n);
    bh__sql_putc(o, '"');
}

void bh__sql_put_jstrz(bh_sql_out_t *o, const char *s)
{
    bh__sql_put_jstr(o, s, strlen(s));
}

/* ---- floats as serde_json prints them (ryu's "pretty" format) ---- */

/* Shortest round-trip digits of a finite non-zero |d|: writes them to digits (no dot, no
 * trailing zeros) and returns their count; *e10 is the decimal exponent of the first digit. */
static int shortest_digits(double d, char digits[20], int *e10)
{
    char buf[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof(buf), "%.*e", prec - 1, d);
        if (strtod(buf, NULL) == d || prec == 17)
            break;
    }
    int nd = 0;
    const char *q = buf;
    for (; *q && *q != 'e'; q++)
        if (*q >= '0' && *q <= '9')
            digits[nd++] = *q;
    *e10 = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = '\0';
    return nd;
}

/* Positional for 10^-5 <= |d| < 10^16 (integers get ".0"), else d.ddde<exp> with no '+' and no
 * leading zeros in the exponent, as ryu's format64 does. */
size_t bh__sql_fmt_double(double d, char buf[BH__SQL_DOUBLE_MAX])
{
    size_t i = 0;
    if (signbit(d)) {
        buf[i++] = '-';
        d = -d;
    }
    if (d == 0) {
        memcpy(buf + i, "0.0", 4);
        return i + 3;
    }
    char dg[20];
    int e10;
    int len = shortest_digits(d, dg, &e10);
    int kk = e10 + 1; /* 10^(kk-1) <= d < 10^kk */
    int k = kk - len; /* exponent of the last digit */
    if (k >= 0 && kk <= 16) {
        memcpy(buf + i, dg, (size_t)len);
        i += (size_t)len;
        for (int z = len; z < kk; z++)
            buf[i++] = '0';
        buf[i++] = '.';
        buf[i++] = '0';
    } else if (kk > 0 && kk <= 16) {
        memcpy(buf + i, dg, (size_t)kk);
        i += (size_t)kk;
        buf[i++] = '.';
        memcpy(buf + i, dg + kk, (size_t)(len - kk));
        i += (size_t)(len - kk);
    } else if (kk > -5 && kk <= 0) {
        buf[i++] = '0';
        buf[i++] = '.';
        for (int z = kk; z < 0; z++)
            buf[i++] = '0';
        memcpy(buf + i, dg, (size_t)len);
        i += (size_t)len;
    } else {
        buf[i++] = dg[0];
        if (len > 1) {
            buf[i++] = '.';
            memcpy(buf + i, dg + 1, (size_t)(len - 1));
            i += (size_t)(len - 1);
        }
        i += (size_t)snprintf(buf + i, 8, "e%d", kk - 1);
    }
    buf[i] = '\0';
    return i;
}
