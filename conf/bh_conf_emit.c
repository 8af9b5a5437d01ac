/* Writes a loaded snapshot back as YAML that bh_conf_load_string reads to an equal snapshot.
 *
 * Driven by the key table (bh_conf_keys.c): every row of a section is written, the value's form
 * chosen by the row's converter (WRITERS below), so a key added to the table is written without
 * code here unless it brings a new converter (then bh_conf_emit fails with BH_EINVAL, which the
 * round-trip tests catch). Values are the effective ones: defaults filled in, ${VAR} resolved,
 * derived names (listeners, routes) and derived limits (max_idle, max_connections_per_user)
 * written out, so that nothing is re-derived from the environment on the next load. Strings are
 * double-quoted with every byte a loader accepted escaped ("$" becomes "$$").
 *
 * What a loaded snapshot cannot say again as it was written (and what is written instead):
 *   workers: auto           -> the number of CPUs it resolved to on this machine
 *   "https://host" endpoint -> "host:443" with tls.enabled: true (the same snapshot)
 *   tls.ca: system          -> "system" (stored as NULL)
 *   a method as one word    -> a list; "*" stays "*"
 *   a value with bytes that are not UTF-8 (only an environment variable can bring them) -> each
 *                              such byte as \xNN, which YAML reads as the code point U+00NN. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/ssl.h>
#include "bh_alloc.h"
#include "bh_conf_int.h"
#include "bh_sbuf.h"

#define REDACTED "<redacted>"

/* The output being built; bad sticks once set (and s.oom, as bh_sbuf's does). */
typedef struct emit {
    bh_sbuf_t s;
    unsigned flags;
    int bad; /* a row whose converter has no writer, or a value outside its word set */
} emit_t;

static void put(emit_t *e, const char *s, size_t n)
{
    bh_sbuf_put(&e->s, s, n);
}

static void puts_(emit_t *e, const char *s)
{
    bh_sbuf_puts(&e->s, s);
}

__attribute__((format(printf, 2, 3))) static void putf(emit_t *e, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    bh_sbuf_vprintf(&e->s, fmt, ap);
    va_end(ap);
}

/* "<ind spaces>key:" */
static void put_key(emit_t *e, int ind, const char *key)
{
    putf(e, "%*s%s:", ind, "", key);
}

/* ---- strings ----------------------------------------------------------------------------- */

/* The code point of the UTF-8 sequence at s (n bytes left) and its length, or 0 when the bytes
 * are not well-formed UTF-8 (overlong, surrogate, beyond U+10FFFF, cut short). */
static size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
    size_t len = s[0] >= 0xF0 ? 4 : s[0] >= 0xE0 ? 3 : s[0] >= 0xC0 ? 2 : 0;
    static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
    uint32_t v;

    if (len == 0 || len > n || s[0] > 0xF4)
        return 0;
    v = s[0] & (0x7Fu >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min[len] || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
        return 0;
    *cp = v;
    return len;
}

/* s as a YAML double-quoted scalar that loads back to s after ${VAR} substitution: '"' and '\'
 * escaped, '$' doubled; escaped too: control characters, C1 controls, the characters YAML reads
 * as line breaks or a byte order mark (U+0085, U+2028, U+2029, U+FEFF) and the two it refuses
 * raw (U+FFFE, U+FFFF); bytes that are not UTF-8 are written \xNN (lossy, see the top). */
static void put_str(emit_t *e, const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t n = strlen(str);

    puts_(e, "\"");
    for (size_t i = 0; i < n;) {
        unsigned char ch = s[i];
        uint32_t cp = 0;
        size_t len;

        if (ch == '"' || ch == '\\') {
            putf(e, "\\%c", ch);
            i++;
        } else if (ch == '$') {
            puts_(e, "$$");
            i++;
        } else if (ch == '\t' || ch == '\n' || ch == '\r') {
            puts_(e, ch == '\t' ? "\\t" : ch == '\n' ? "\\n" : "\\r");
            i++;
        } else if (ch < 0x20 || ch == 0x7F) {
            putf(e, "\\x%02X", ch);
            i++;
        } else if (ch < 0x80) {
            put(e, (const char *)s + i, 1);
            i++;
        } else if ((len = utf8_next(s + i, n - i, &cp)) == 0) {
            putf(e, "\\x%02X", ch); /* not UTF-8: only an environment variable brings it */
            i++;
        } else if (cp <= 0x9F) {
            putf(e, "\\x%02X", (unsigned)cp);
            i += len;
        } else if (cp == 0x2028 || cp == 0x2029 || cp == 0xFEFF || cp == 0xFFFE || cp == 0xFFFF) {
            putf(e, "\\u%04X", (unsigned)cp);
            i += len;
        } else {
            put(e, (const char *)s + i, len);
            i += len;
        }
    }
    puts_(e, "\"");
}

/* A libpq conninfo with the value of every keyword naming a password (sslpassword: the loader
 * refuses password itself) replaced, tokenised as bh__conf_conv_server reads it. */
static void put_server(emit_t *e, const char *s)
{
    emit_t r = {0};
    const char *p = s;

    if (!(e->flags & BH_CONF_EMIT_REDACT)) {
        put_str(e, s);
        return;
    }
    while (*p != '\0') {
        const char *kw = p, *v;
        size_t kwlen;

        p += strcspn(p, "= \t\r\n\f\v");
        kwlen = (size_t)(p - kw);
        p += strspn(p, " \t\r\n\f\v");
        if (*p == '=')
            for (p++; strchr(" \t\r\n\f\v", *p) != NULL && *p != '\0'; p++)
                ;
        put(&r, kw, (size_t)(p - kw));
        v = p;
        if (*p == '\'') {
            for (p++; *p != '\'' && *p != '\0'; p++)
                if (*p == '\\' && p[1] != '\0')
                    p++;
            p += *p == '\'';
        } else {
            for (; *p != '\0' && strchr(" \t\r\n\f\v", *p) == NULL; p++)
                if (*p == '\\' && p[1] != '\0')
                    p++;
        }
        if (memmem(kw, kwlen, "password", 8) != NULL && p > v)
            puts_(&r, REDACTED);
        else
            put(&r, v, (size_t)(p - v));
        v = p;
        p += strspn(p, " \t\r\n\f\v");
        put(&r, v, (size_t)(p - v));
    }
    e->s.oom |= r.s.oom;
    put_str(e, r.s.p != NULL ? r.s.p : "");
    bh_free(r.s.p);
}

/* A mapping key that is data (an upstream or database name, a session setting), quoted, then ':'.
 * YAML caps an implicit key at 1024 characters: a longer one is written as an explicit key
 * ("? key" then ':' on the next line), which the loader took it as. */
static void put_data_key(emit_t *e, int ind, const char *key)
{
    emit_t q = {0};

    put_str(&q, key);
    e->s.oom |= q.s.oom;
    putf(e, "%*s%s", ind, "", q.s.len < 1000 ? "" : "? ");
    put(e, q.s.p, q.s.len);
    if (q.s.len < 1000)
        puts_(e, ":");
    else
        putf(e, "\n%*s:", ind, "");
    bh_free(q.s.p);
}

/* ---- scalar writers: one per converter ----------------------------------------------------- */

typedef void (*put_fn)(emit_t *e, const spec_t *k, const void *base, int ind);

static void emit_rows(emit_t *e, enum sec sec, const void *base, int ind);

static void w_u32(emit_t *e, const spec_t *k, const void *base, int ind)
{
    put_key(e, ind, k->key);
    putf(e, " %" PRIu32 "\n", *CFIELD(base, k, uint32_t));
}

static void w_duration(emit_t *e, const spec_t *k, const void *base, int ind)
{
    char buf[32];

    bh__conf_show_duration(*CFIELD(base, k, uint64_t), buf, sizeof buf);
    put_key(e, ind, k->key);
    putf(e, " %s\n", buf);
}

static void w_size(emit_t *e, const spec_t *k, const void *base, int ind)
{
    static const struct {
        const char *unit;
        uint64_t b;
    } units[] = {{"TiB", 1ull << 40}, {"GiB", 1u << 30}, {"MiB", 1u << 20}, {"KiB", 1u << 10}};
    uint64_t v = *CFIELD(base, k, uint64_t);

    put_key(e, ind, k->key);
    for (size_t i = 0; i < COUNT(units); i++)
        if (v != 0 && v % units[i].b == 0) {
            putf(e, " %" PRIu64 "%s\n", v / units[i].b, units[i].unit);
            return;
        }
    putf(e, " %" PRIu64 "\n", v);
}

static void w_bool(emit_t *e, const spec_t *k, const void *base, int ind)
{
    put_key(e, ind, k->key);
    puts_(e, *CFIELD(base, k, bool) ? " true\n" : " false\n");
}

/* A fraction from 0 to 1 in fixed notation, with the fewest digits that strtod (which
 * bh_parse_percent uses) reads back to the same double. */
static void w_percent(emit_t *e, const spec_t *k, const void *base, int ind)
{
    double v = *CFIELD(base, k, double);
    char buf[1200];

    snprintf(buf, sizeof buf, "%.0f", v);
    for (int prec = 1; strtod(buf, NULL) != v && prec <= 1100; prec++)
        snprintf(buf, sizeof buf, "%.*f", prec, v);
    put_key(e, ind, k->key);
    puts_(e, " ");
    puts_(e, buf);
    puts_(e, "\n");
}

/* A string; NULL is omitted, except where the row's default would give a value the snapshot
 * does not hold (admin.token's ${BULKHEAD_ADMIN_TOKEN:-}): then "" is written. */
static void w_str(emit_t *e, const spec_t *k, const void *base, int ind)
{
    const char *s = *CFIELD(base, k, char *);

    if (s == NULL && !(k->def != NULL && (k->type->flags & T_EMPTY_OK)))
        return;
    put_key(e, ind, k->key);
    puts_(e, " ");
    put_str(e, s != NULL ? s : "");
    puts_(e, "\n");
}

/* Secrets: admin.token, databases' password. */
static void w_secret(emit_t *e, const spec_t *k, const void *base, int ind)
{
    const char *s = *CFIELD(base, k, char *);

    if (s != NULL && (e->flags & BH_CONF_EMIT_REDACT)) {
        put_key(e, ind, k->key);
        puts_(e, " \"" REDACTED "\"\n");
        return;
    }
    w_str(e, k, base, ind);
}

static void w_server(emit_t *e, const spec_t *k, const void *base, int ind)
{
    put_key(e, ind, k->key);
    puts_(e, " ");
    put_server(e, *CFIELD(base, k, char *));
    puts_(e, "\n");
}

static void w_upstream_ca(emit_t *e, const spec_t *k, const void *base, int ind)
{
    const char *s = *CFIELD(base, k, char *);

    put_key(e, ind, k->key);
    puts_(e, " ");
    put_str(e, s != NULL ? s : "system");
    puts_(e, "\n");
}

static void w_addr(emit_t *e, const spec_t *k, const void *base, int ind)
{
    put_key(e, ind, k->key);
    puts_(e, " ");
    put_str(e, CFIELD(base, k, bh_conf_addr_t)->text);
    puts_(e, "\n");
}

/* ---- words of a closed set ----------------------------------------------------------------- */

static void put_word(emit_t *e, const spec_t *k, int ind, uint32_t v, const word_set_t *set)
{
    for (size_t i = 0; i < set->n; i++)
        if (set->names[i].bit == v) {
            put_key(e, ind, k->key);
            putf(e, " %s\n", set->names[i].name);
            return;
        }
    e->bad = 1;
}

#define WORD(fn, set)                                                                              \
    static void fn(emit_t *e, const spec_t *k, const void *base, int ind)                          \
    {                                                                                              \
        put_word(e, k, ind, (uint32_t)*CFIELD(base, k, int), &(set));                              \
    }
WORD(w_level, bh__conf_levels)
WORD(w_balance, bh__conf_balances)
WORD(w_auth, bh__conf_auths)
WORD(w_reset, bh__conf_resets)
WORD(w_verify_client, bh__conf_verify_clients)
WORD(w_tls_version, bh__conf_tls_versions)

static void w_retry_methods(emit_t *e, const spec_t *k, const void *base, int ind)
{
    put_key(e, ind, k->key);
    puts_(e, *CFIELD(base, k, bool) ? " all\n" : " idempotent\n");
}

/* A set of bits as a flow list of their words ("[]" for none). */
static void put_bits(emit_t *e, const spec_t *k, int ind, uint32_t v, const word_set_t *set)
{
    const name_bit_t *names = set->names;
    size_t n = set->n;
    uint32_t known = 0;
    int first = 1;

    put_key(e, ind, k->key);
    puts_(e, " [");
    for (size_t i = 0; i < n; i++) {
        known |= names[i].bit;
        if (v & names[i].bit) {
            putf(e, "%s%s", first ? " " : ", ", names[i].name);
            first = 0;
        }
    }
    puts_(e, first ? "]\n" : " ]\n");
    if (v & ~known)
        e->bad = 1;
}

static void w_retry_on(emit_t *e, const spec_t *k, const void *base, int ind)
{
    put_bits(e, k, ind, *CFIELD(base, k, uint32_t), &bh__conf_retry_on);
}

static void w_count(emit_t *e, const spec_t *k, const void *base, int ind)
{
    put_bits(e, k, ind, *CFIELD(base, k, uint32_t), &bh__conf_counts);
}

/* methods: "*" for every method (BH_M_ALL takes in the other tokens too), else the names. */
static void w_methods(emit_t *e, const spec_t *k, const void *base, int ind)
{
    uint32_t v = *CFIELD(base, k, uint32_t);

    if (v == BH_M_ALL) {
        put_key(e, ind, k->key);
        puts_(e, " \"*\"\n");
        return;
    }
    put_bits(e, k, ind, v, &bh__conf_methods);
}

/* retriable_status: the row's field is the whole retry struct. */
static void w_statuses(emit_t *e, const spec_t *k, const void *base, int ind)
{
    const bh_conf_retry_t *r = CFIELD(base, k, bh_conf_retry_t);

    put_key(e, ind, k->key);
    puts_(e, " [");
    for (size_t i = 0; i < r->n_retriable_status; i++)
        putf(e, "%s%u", i ? ", " : " ", (unsigned)r->retriable_status[i]);
    puts_(e, r->n_retriable_status ? " ]\n" : "]\n");
}

/* ---- lists of strings ---------------------------------------------------------------------- */

static void put_strings(emit_t *e, const char *key, int ind, char *const *s, size_t n, int secret)
{
    put_key(e, ind, key);
    puts_(e, " [");
    for (size_t i = 0; i < n; i++) {
        puts_(e, i ? ", " : " ");
        put_str(e, secret && (e->flags & BH_CONF_EMIT_REDACT) ? REDACTED : s[i]);
    }
    puts_(e, n ? " ]\n" : "]\n");
}

static void w_endpoints(emit_t *e, const spec_t *k, const void *base, int ind)
{
    const bh_conf_upstream_t *u = base;

    put_key(e, ind, k->key);
    puts_(e, " [");
    for (size_t i = 0; i < u->n_endpoints; i++) {
        puts_(e, i ? ", " : " ");
        put_str(e, u->endpoints[i].text);
    }
    puts_(e, " ]\n");
}

static void w_db_hosts(emit_t *e, const spec_t *k, const void *base, int ind)
{
    const bh_conf_database_t *d = base;
    put_strings(e, k->key, ind, d->hosts, d->n_hosts, 0);
}

/* tokens: given with auth: fixed only (a passthrough database holds none). */
static void w_db_tokens(emit_t *e, const spec_t *k, const void *base, int ind)
{
    const bh_conf_database_t *d = base;

    if (d->n_tokens > 0)
        put_strings(e, k->key, ind, d->tokens, d->n_tokens, 1);
}

/* session: every setting in order, TimeZone included (the loader appends it when not given). */
static void w_session(emit_t *e, const spec_t *k, const void *base, int ind)
{
    const bh_conf_database_t *d = base;

    put_key(e, ind, k->key);
    puts_(e, d->n_session ? "\n" : " {}\n");
    for (size_t i = 0; i < d->n_session; i++) {
        put_data_key(e, ind + 2, d->session_keys[i]);
        puts_(e, " ");
        put_str(e, d->session_values[i]);
        puts_(e, "\n");
    }
}

/* ---- sections and lists of sections -------------------------------------------------------- */

static void w_section(emit_t *e, const spec_t *k, const void *base, int ind)
{
    put_key(e, ind, k->key);
    puts_(e, "\n");
    emit_rows(e, k->sub, CFIELD(base, k, char), ind + 2);
}

/* health_check: present only when enabled. */
static void w_health(emit_t *e, const spec_t *k, const void *base, int ind)
{
    if (CFIELD(base, k, bh_conf_health_t)->enabled)
        w_section(e, k, base, ind);
}

static void w_listener_tls(emit_t *e, const spec_t *k, const void *base, int ind)
{
    if (CFIELD(base, k, bh_conf_listener_tls_t)->enabled)
        w_section(e, k, base, ind);
}

/* A block list of n sections of sec, each of size bytes from arr: "- " before the first key. */
static void put_section_list(emit_t *e, const char *key, int ind, enum sec sec, const void *arr,
                             size_t n, size_t size)
{
    put_key(e, ind, key);
    puts_(e, n ? "\n" : " []\n");
    for (size_t i = 0; i < n; i++) {
        size_t at = e->s.len;
        emit_rows(e, sec, (const char *)arr + i * size, ind + 4);
        if (!e->s.oom && e->s.len > at + (size_t)ind + 2)
            e->s.p[at + (size_t)ind + 2] = '-';
    }
}

static void w_listeners(emit_t *e, const spec_t *k, const void *base, int ind)
{
    const bh_conf_t *c = base;
    put_section_list(e, k->key, ind, S_LISTENER, c->listeners, c->n_listeners,
                     sizeof *c->listeners);
}

static void w_certs(emit_t *e, const spec_t *k, const void *base, int ind)
{
    const bh_conf_listener_tls_t *t = base;
    put_section_list(e, k->key, ind, S_TLS_CERT, t->certs, t->n_certs, sizeof *t->certs);
}

static void w_routes(emit_t *e, const spec_t *k, const void *base, int ind)
{
    const bh_conf_t *c = base;

    if (c->n_routes > 0)
        put_section_list(e, k->key, ind, S_ROUTE, c->routes, c->n_routes, sizeof *c->routes);
}

/* A name map (upstreams, databases): the quoted name, then its section. */
static void put_named(emit_t *e, const char *key, int ind, enum sec sec, const void *arr, size_t n,
                      size_t size, size_t name_off)
{
    if (n == 0)
        return;
    put_key(e, ind, key);
    puts_(e, "\n");
    for (size_t i = 0; i < n; i++) {
        const char *elem = (const char *)arr + i * size;
        put_data_key(e, ind + 2, *(char *const *)(elem + name_off));
        puts_(e, "\n");
        emit_rows(e, sec, elem, ind + 4);
    }
}

static void w_upstreams(emit_t *e, const spec_t *k, const void *base, int ind)
{
    const bh_conf_t *c = base;
    put_named(e, k->key, ind, S_UPSTREAM, c->upstreams, c->n_upstreams, sizeof *c->upstreams,
              offsetof(bh_conf_upstream_t, name));
}

static void w_databases(emit_t *e, const spec_t *k, const void *base, int ind)
{
    const bh_conf_t *c = base;
    put_named(e, k->key, ind, S_DATABASE, c->databases, c->n_databases, sizeof *c->databases,
              offsetof(bh_conf_database_t, name));
}

/* ---- routes -------------------------------------------------------------------------------- */

/* A route's timeouts, all four effective values; a database route takes only total (the others
 * are its database's). */
static void w_override(emit_t *e, const spec_t *k, const void *base, int ind)
{
    const bh_conf_route_t *r = base;
    const bh_conf_timeouts_t *t = CFIELD(base, k, bh_conf_timeouts_t);
    spec_t total = {.key = "total", .off = offsetof(bh_conf_timeouts_t, total_ms)};

    put_key(e, ind, k->key);
    puts_(e, "\n");
    if (r->database != NULL)
        w_duration(e, &total, t, ind + 2);
    else
        emit_rows(e, S_TIMEOUTS, t, ind + 2);
}

/* A route's own retry section (its budget is the upstream's: not a key here). */
static void w_route_retry(emit_t *e, const spec_t *k, const void *base, int ind)
{
    const bh_conf_route_t *r = base;

    if (!r->has_retry)
        return;
    put_key(e, ind, k->key);
    puts_(e, "\n");
    emit_rows(e, S_COUNT, &r->retry, ind + 2); /* S_COUNT: S_RETRY but budget, see emit_rows */
}

/* ---- dispatch ------------------------------------------------------------------------------ */

#define C(name) bh__conf_conv_##name
static const struct {
    conv_fn conv;
    put_fn put;
} WRITERS[] = {
    {C(u32), w_u32},
    {C(workers), w_u32},
    {C(duration), w_duration},
    {C(size), w_size},
    {C(bool), w_bool},
    {C(level), w_level},
    {C(str), w_str},
    {C(prefix), w_str},
    {C(host), w_str},
    {C(path), w_str},
    {C(header_name), w_str},
    {C(server_name), w_str},
    {C(ciphers), w_str},
    {C(client_ca), w_str},
    {C(addr), w_addr},
    {C(percent), w_percent},
    {C(balance), w_balance},
    {C(retry_methods), w_retry_methods},
    {C(retry_on), w_retry_on},
    {C(count), w_count},
    {C(auth), w_auth},
    {C(reset), w_reset},
    {C(statuses), w_statuses},
    {C(section), w_section},
    {C(override), w_override},
    {C(listeners), w_listeners},
    {C(routes), w_routes},
    {C(endpoints), w_endpoints},
    {C(upstreams), w_upstreams},
    {C(databases), w_databases},
    {C(methods), w_methods},
    {C(health), w_health},
    {C(route_retry), w_route_retry},
    {C(db_hosts), w_db_hosts},
    {C(db_tokens), w_db_tokens},
    {C(server), w_server},
    {C(session), w_session},
    {C(listener_tls), w_listener_tls},
    {C(certs), w_certs},
    {C(tls_version), w_tls_version},
    {C(verify_client), w_verify_client},
    {C(upstream_ca), w_upstream_ca},
};
#undef C

/* Keys whose value is a secret, by section: written "<redacted>" with BH_CONF_EMIT_REDACT. */
static bool is_secret(const spec_t *k)
{
    return (k->sec == S_ADMIN && strcmp(k->key, "token") == 0) ||
           (k->sec == S_DATABASE && strcmp(k->key, "password") == 0);
}

/* Keys a database route must not give (bh_conf_check.c, database_route_keys). */
static bool skip_row(const spec_t *k, const void *base)
{
    return k->sec == S_ROUTE && ((const bh_conf_route_t *)base)->database != NULL &&
           (strcmp(k->key, "strip_prefix") == 0 || strcmp(k->key, "retry") == 0);
}

static void emit_row(emit_t *e, const spec_t *k, const void *base, int ind)
{
    if (is_secret(k)) {
        w_secret(e, k, base, ind);
        return;
    }
    for (size_t i = 0; i < COUNT(WRITERS); i++)
        if (WRITERS[i].conv == k->type->conv) {
            WRITERS[i].put(e, k, base, ind);
            return;
        }
    e->bad = 1;
}

/* Every row of sec, in table order, from the section struct at base. Rows a section rejects
 * (F_NA) and rows not supported yet (no type) are not keys of the file. sec S_COUNT stands for
 * a route's retry: the rows of S_RETRY but budget. */
static void emit_rows(emit_t *e, enum sec sec, const void *base, int ind)
{
    bool route_retry = sec == S_COUNT;

    if (route_retry)
        sec = S_RETRY;
    for (const spec_t *k = bh__conf_specs; k < bh__conf_specs + bh__conf_n_specs; k++) {
        if (k->sec != sec || k->type == NULL || (k->flags & F_NA) || skip_row(k, base))
            continue;
        if (route_retry && strcmp(k->key, "budget") == 0)
            continue;
        emit_row(e, k, base, ind);
    }
}

int bh_conf_emit(const bh_conf_t *conf, unsigned flags, char **out, size_t *len)
{
    emit_t e = {.flags = flags};

    *out = NULL;
    *len = 0;
    puts_(&e, "# bulkhead: the effective configuration (every key with its value in force)\n");
    emit_rows(&e, S_ROOT, conf, 0);
    if (e.s.oom || e.bad) {
        bh_free(e.s.p);
        return e.s.oom ? BH_ENOMEM : BH_EINVAL;
    }
    *out = bh_sbuf_take(&e.s, len);
    return 0;
}
