/* Loads the YAML config into one frozen bh_conf_t, driven by one table of every key and default.
 *
 * How it works: SPECS[] lists, per section, each key with its type (a converter plus the phrase
 * used in "expected ..." messages), the field it fills and its default written as a user would
 * write it. parse_section() walks one YAML mapping against the rows of its section: it rejects
 * unknown, duplicate and not-yet-supported keys, converts the given ones, then converts the
 * defaults of the missing ones with the same converters, then runs the section's check hook
 * (cross-field rules). Every scalar passes through ${VAR} substitution before conversion.
 * Converters return 0, BH_ECONFIG (err filled) or BH_ENOMEM; on any failure the half-built
 * snapshot is freed by bh_conf_free, which copes with every partially filled state. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <yaml.h>
#include "bh_alloc.h"
#include "bh_conf.h"

#define DUR_MAX (365ull * 86400 * 1000) /* longest duration accepted anywhere: 365d */
#define INHERIT UINT64_MAX              /* a route timeout not given: the upstream's applies */
#define MAX_FILE (16u << 20)            /* largest config file read */
#define NAME_CHARS "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* Sections of the file; each is one mapping parsed against the SPECS rows that name it. */
enum sec {
    S_ROOT,
    S_LISTENER,
    S_LIMITS,
    S_ADMIN,
    S_LOG,
    S_UPSTREAM,
    S_POOL,
    S_TIMEOUTS,
    S_ROUTE,
    S_MATCH,
    S_SHUTDOWN,
    S_RETRY,
    S_BACKOFF,
    S_BUDGET,
    S_BREAKER,
    S_OUTLIER,
    S_HEALTH,
    S_DATABASE,
    S_DB_POOL,
    S_DB_TIMEOUTS,
    S_DB_RETRY,
    S_DB_BREAKER,
    S_COUNT
};

typedef struct ctx {
    const char *name; /* file name used in messages */
    yaml_document_t *doc;
    bh_conf_error_t *err;
    char path[256]; /* dotted path of the node being read: "upstreams.api.pool" */
} ctx_t;

typedef struct spec spec_t;
/* Converts node n (or, for scalar types, its substituted text) into the field k->off of base.
 * n is NULL when the key is absent and its default applies (text is then the default). */
typedef int (*conv_fn)(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);

enum { T_NODE = 1, T_EMPTY_OK = 2 };
typedef struct type {
    conv_fn conv;
    const char *expect; /* what a valid value looks like, for messages */
    unsigned flags;     /* T_NODE: conv reads the node itself (mappings, lists) */
} type_t;

/* F_NA: a key of the shared shape that this section does not take (databases): giving it is an
 * error, but its default still fills the field. */
enum { F_REQUIRED = 1, F_NA = 2 };
struct spec {
    enum sec sec;
    const char *key;
    const type_t *type; /* NULL: recognised but not supported by this version yet */
    size_t off;         /* field offset in the section's struct */
    const char *def;    /* default, in config syntax; NULL: none (or derived, see hooks) */
    uint64_t min, max;  /* bounds for numbers, sizes and durations */
    unsigned flags;
    enum sec sub; /* nested section for T_SECTION */
};

static int parse_section(ctx_t *c, enum sec sec, yaml_node_t *map, void *base, int defaults);

/* ---- messages and paths ---------------------------------------------------------------- */

__attribute__((format(printf, 3, 4))) static int fail(ctx_t *c, const yaml_node_t *n,
                                                      const char *fmt, ...)
{
    size_t line = n ? n->start_mark.line + 1 : 1, col = n ? n->start_mark.column + 1 : 1;
    int len = snprintf(c->err->msg, sizeof c->err->msg, "%s:%zu:%zu: ", c->name, line, col);
    va_list ap;

    va_start(ap, fmt);
    if (len > 0 && (size_t)len < sizeof c->err->msg)
        vsnprintf(c->err->msg + len, sizeof c->err->msg - (size_t)len, fmt, ap);
    va_end(ap);
    return BH_ECONFIG;
}

static int oom(ctx_t *c)
{
    snprintf(c->err->msg, sizeof c->err->msg, "%s: out of memory", c->name);
    return BH_ENOMEM;
}

/* Appends ".key" (or "key" at the top) to the path; returns the old length for path_pop. */
static size_t path_key(ctx_t *c, const char *key)
{
    size_t old = strlen(c->path);
    snprintf(c->path + old, sizeof c->path - old, "%s%s", old ? "." : "", key);
    return old;
}

static size_t path_index(ctx_t *c, size_t i)
{
    size_t old = strlen(c->path);
    snprintf(c->path + old, sizeof c->path - old, "[%zu]", i);
    return old;
}

static void path_pop(ctx_t *c, size_t old)
{
    c->path[old] = '\0';
}

/* "in limits" or "at top level". */
static const char *where(const ctx_t *c, char *buf, size_t n)
{
    if (c->path[0] == '\0')
        return "at top level";
    snprintf(buf, n, "in %s", c->path);
    return buf;
}

/* ---- YAML node helpers ----------------------------------------------------------------- */

static yaml_node_t *node_at(ctx_t *c, int index)
{
    return yaml_document_get_node(c->doc, index);
}

/* An empty value ("key:" with nothing after it, "~", "null"). */
static int is_null(const yaml_node_t *n)
{
    const char *s;

    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return 0;
    s = (const char *)n->data.scalar.value;
    return s[0] == '\0' || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 ||
           strcmp(s, "Null") == 0 || strcmp(s, "NULL") == 0;
}

static const char *kind_name(const yaml_node_t *n)
{
    return n->type == YAML_MAPPING_NODE    ? "a mapping"
           : n->type == YAML_SEQUENCE_NODE ? "a list"
                                           : "a single value";
}

static int type_fail(ctx_t *c, const yaml_node_t *n, const char *expect)
{
    return fail(c, n, "%s is %s, expected %s", c->path, kind_name(n), expect);
}

/* The value of key in a mapping node, or NULL (also when map is NULL or not a mapping). */
static yaml_node_t *lookup(ctx_t *c, yaml_node_t *map, const char *key)
{
    if (map == NULL || map->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *kn = node_at(c, p->key);
        if (kn->type == YAML_SCALAR_NODE && strcmp((const char *)kn->data.scalar.value, key) == 0)
            return node_at(c, p->value);
    }
    return NULL;
}

/* The key node of key in a mapping (messages about a key point at the key, not its value). */
static yaml_node_t *key_node(ctx_t *c, yaml_node_t *map, const char *key)
{
    if (map == NULL || map->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *kn = node_at(c, p->key);
        if (kn->type == YAML_SCALAR_NODE && strcmp((const char *)kn->data.scalar.value, key) == 0)
            return kn;
    }
    return NULL;
}

static size_t seq_len(const yaml_node_t *n)
{
    return n->type == YAML_SEQUENCE_NODE
               ? (size_t)(n->data.sequence.items.top - n->data.sequence.items.start)
               : 0;
}

/* Fails when the key of pair p was already given earlier in the mapping. */
static int check_dup_key(ctx_t *c, yaml_node_t *map, yaml_node_pair_t *p)
{
    yaml_node_t *kn = node_at(c, p->key);
    char buf[300];

    for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < p; q++) {
        yaml_node_t *prev = node_at(c, q->key);
        if (prev->type == YAML_SCALAR_NODE &&
            strcmp((const char *)prev->data.scalar.value, (const char *)kn->data.scalar.value) == 0)
            return fail(c, kn,
                        "duplicate key '%s' %s (first given at %zu:%zu), expected each key once",
                        (const char *)kn->data.scalar.value, where(c, buf, sizeof buf),
                        prev->start_mark.line + 1, prev->start_mark.column + 1);
    }
    return 0;
}

/* ---- did you mean ---------------------------------------------------------------------- */

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), row[64];

    if (la >= COUNT(row) || lb >= COUNT(row))
        return SIZE_MAX;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j], best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

typedef struct best {
    const char *word;
    const char *match;
    size_t dist;
} best_t;

/* Keeps cand when it is the closest so far and close enough to be a likely typo. */
static void consider(best_t *b, const char *cand)
{
    size_t d = edit_distance(b->word, cand), limit = strlen(b->word) <= 4 ? 1 : 2;
    if (d <= limit && d < b->dist) {
        b->dist = d;
        b->match = cand;
    }
}

/* ---- ${VAR} substitution --------------------------------------------------------------- */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    int oom;
} sbuf_t;

static void sb_put(sbuf_t *b, const char *s, size_t n)
{
    if (b->oom || n == 0)
        return;
    if (b->len + n > b->cap) {
        size_t cap = (b->len + n) * 2;
        char *p = bh_realloc(b->p, cap);
        if (p == NULL) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static int valid_env_name(const char *s, size_t n)
{
    if (n == 0 || (s[0] >= '0' && s[0] <= '9'))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!(s[i] == '_' || (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9')))
            return 0;
    return 1;
}

/* Expands ${VAR}, ${VAR:-default} (default when unset or empty) and $$ in s[0..len) into a new
 * string; any other '$' stays as it is. n gives the position for errors (NULL for defaults). */
static int subst(ctx_t *c, const yaml_node_t *n, const char *s, size_t len, char **out)
{
    sbuf_t b = {0};
    size_t i = 0;
    int rc = 0;

    while (i < len && rc == 0) {
        if (s[i] != '$' || i + 1 == len || (s[i + 1] != '$' && s[i + 1] != '{')) {
            const char *next = memchr(s + i + 1, '$', len - i - 1);
            size_t j = next ? (size_t)(next - s) : len;
            sb_put(&b, s + i, j - i);
            i = j;
        } else if (s[i + 1] == '$') {
            sb_put(&b, "$", 1);
            i += 2;
        } else {
            const char *name = s + i + 2;
            const char *close = memchr(name, '}', len - i - 2), *dash, *val;
            char var[128];
            size_t nlen;

            if (close == NULL) {
                rc = fail(c, n,
                          "unterminated '${' in the value of %s, expected ${NAME} or "
                          "${NAME:-default}",
                          c->path);
                break;
            }
            dash = memmem(name, (size_t)(close - name), ":-", 2);
            nlen = (size_t)((dash ? dash : close) - name);
            if (!valid_env_name(name, nlen) || nlen >= sizeof var) {
                rc = fail(c, n,
                          "invalid variable name '%.*s' in the value of %s, expected "
                          "letters, digits and '_' as in ${NAME} or ${NAME:-default}",
                          (int)(nlen < 64 ? nlen : 64), name, c->path);
                break;
            }
            memcpy(var, name, nlen);
            var[nlen] = '\0';
            val = getenv(var);
            if (val != NULL && (val[0] != '\0' || dash == NULL)) {
                sb_put(&b, val, strlen(val));
            } else if (dash != NULL) {
                sb_put(&b, dash + 2, (size_t)(close - dash - 2));
            } else {
                rc = fail(c, n,
                          "environment variable '%s' is not set (used by %s), expected it "
                          "to be set or a default as in ${%s:-default}",
                          var, c->path, var);
                break;
            }
            i = (size_t)(close - s) + 1;
        }
    }
    sb_put(&b, "", 1);
    if (rc == 0 && b.oom)
        rc = oom(c);
    if (rc != 0) {
        bh_free(b.p);
        return rc;
    }
    *out = b.p;
    return 0;
}

/* The substituted text of a scalar node, never empty unless empty_ok. */
static int scalar_text(ctx_t *c, yaml_node_t *n, const char *expect, int empty_ok, char **out)
{
    size_t len;
    int rc;

    if (n->type != YAML_SCALAR_NODE)
        return type_fail(c, n, expect);
    len = n->data.scalar.length;
    if (memchr(n->data.scalar.value, '\0', len) != NULL)
        return fail(c, n, "value of %s contains a NUL character, expected %s", c->path, expect);
    rc = subst(c, n, (const char *)n->data.scalar.value, len, out);
    if (rc == 0 && (*out)[0] == '\0' && !empty_ok) {
        bh_free(*out);
        return fail(c, n, "empty value for %s, expected %s", c->path, expect);
    }
    return rc;
}

/* ---- scalar converters ----------------------------------------------------------------- */

#define FIELD(base, k, T) ((T *)((char *)(base) + (k)->off))

static void show_plain(uint64_t v, char *buf, size_t n)
{
    snprintf(buf, n, "%" PRIu64, v);
}

static void show_duration(uint64_t v, char *buf, size_t n)
{
    static const struct {
        const char *unit;
        uint64_t ms;
    } units[] = {{"d", 86400000}, {"h", 3600000}, {"m", 60000}, {"s", 1000}};
    for (size_t i = 0; i < COUNT(units); i++)
        if (v != 0 && v % units[i].ms == 0) {
            snprintf(buf, n, "%" PRIu64 "%s", v / units[i].ms, units[i].unit);
            return;
        }
    snprintf(buf, n, v ? "%" PRIu64 "ms" : "%" PRIu64, v);
}

static void show_size(uint64_t v, char *buf, size_t n)
{
    static const struct {
        const char *unit;
        uint64_t b;
    } units[] = {{"GiB", 1u << 30}, {"MiB", 1u << 20}, {"KiB", 1u << 10}};
    for (size_t i = 0; i < COUNT(units); i++)
        if (v != 0 && v % units[i].b == 0) {
            snprintf(buf, n, "%" PRIu64 "%s", v / units[i].b, units[i].unit);
            return;
        }
    snprintf(buf, n, "%" PRIu64, v);
}

static int range_check(ctx_t *c, const spec_t *k, const yaml_node_t *n, const char *text,
                       uint64_t v, void (*show)(uint64_t, char *, size_t))
{
    char lo[32], hi[32];

    if (v >= k->min && v <= k->max)
        return 0;
    show(k->min, lo, sizeof lo);
    show(k->max, hi, sizeof hi);
    return fail(c, n, "%.64s for %s is out of range, expected %s to %s", text, c->path, lo, hi);
}

static int conv_u32(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    size_t digits = strspn(text, "0123456789");
    uint64_t v = 0;
    char lo[32], hi[32];

    if (digits == 0 || text[digits] != '\0') {
        show_plain(k->min, lo, sizeof lo);
        show_plain(k->max, hi, sizeof hi);
        return fail(c, n, "invalid number '%.64s' for %s, expected a whole number from %s to %s",
                    text, c->path, lo, hi);
    }
    for (size_t i = 0; i < digits && v <= UINT32_MAX; i++) /* stops early: no overflow */
        v = v * 10 + (uint64_t)(text[i] - '0');
    if (range_check(c, k, n, text, v, show_plain) != 0)
        return BH_ECONFIG;
    *FIELD(base, k, uint32_t) = (uint32_t)v;
    return 0;
}

static int conv_workers(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    if (strcmp(text, "auto") == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        *FIELD(base, k, uint32_t) = (uint32_t)(cpus < 1              ? 1
                                               : cpus > (long)k->max ? (long)k->max
                                                                     : cpus);
        return 0;
    }
    if (strspn(text, "0123456789") != strlen(text))
        return fail(c, n, "invalid worker count '%.64s' for %s, expected %s", text, c->path,
                    k->type->expect);
    return conv_u32(c, k, n, text, base);
}

static int conv_duration(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    uint64_t v;

    if (bh_parse_duration_ms(text, &v) != 0)
        return fail(c, n, "invalid duration '%.64s' for %s, expected %s", text, c->path,
                    k->type->expect);
    if (range_check(c, k, n, text, v, show_duration) != 0)
        return BH_ECONFIG;
    *FIELD(base, k, uint64_t) = v;
    return 0;
}

static int conv_size(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    uint64_t v;

    if (bh_parse_size(text, &v) != 0)
        return fail(c, n, "invalid size '%.64s' for %s, expected %s", text, c->path,
                    k->type->expect);
    if (range_check(c, k, n, text, v, show_size) != 0)
        return BH_ECONFIG;
    *FIELD(base, k, uint64_t) = v;
    return 0;
}

static int conv_bool(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    if (strcmp(text, "true") != 0 && strcmp(text, "false") != 0)
        return fail(c, n, "invalid boolean '%.64s' for %s, expected true or false", text, c->path);
    *FIELD(base, k, bool) = text[0] == 't';
    return 0;
}

static int conv_level(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    static const char *const names[] = {[BH_LOG_ERROR] = "error",
                                        [BH_LOG_WARN] = "warn",
                                        [BH_LOG_INFO] = "info",
                                        [BH_LOG_DEBUG] = "debug"};
    for (size_t i = 0; i < COUNT(names); i++)
        if (strcmp(text, names[i]) == 0) {
            *FIELD(base, k, enum bh_log_level) = (enum bh_log_level)i;
            return 0;
        }
    return fail(c, n, "invalid log level '%.64s' for %s, expected %s", text, c->path,
                k->type->expect);
}

/* Strings; an empty optional string is stored as NULL. */
static int conv_str(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    char **field = FIELD(base, k, char *);

    bh_free(*field);
    *field = NULL;
    if (text[0] != '\0' && (*field = bh_strdup(text)) == NULL)
        return oom(c);
    return 0;
}

static int conv_prefix(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    if (text[0] != '/')
        return fail(c, n, "invalid path prefix '%.64s' for %s, expected %s", text, c->path,
                    k->type->expect);
    return conv_str(c, k, n, text, base);
}

static int conv_host(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    char **field;

    if (strpbrk(text, " \t\r\n/") != NULL)
        return fail(c, n, "invalid host '%.64s' for %s, expected %s", text, c->path,
                    k->type->expect);
    if (conv_str(c, k, n, text, base) != 0)
        return BH_ENOMEM;
    field = FIELD(base, k, char *);
    for (char *p = *field; *p != '\0'; p++) /* matched case-insensitively: store lower case */
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    return 0;
}

static void addr_clear(bh_conf_addr_t *a)
{
    bh_free(a->text);
    bh_free(a->host);
    memset(a, 0, sizeof *a);
}

/* Addresses bulkhead listens on: the host must be a numeric IP. */
static int conv_addr(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    bh_conf_addr_t *a = FIELD(base, k, bh_conf_addr_t), tmp;
    int rc = bh_parse_addr(text, &tmp);

    if (rc == BH_ENOMEM)
        return oom(c);
    if (rc != 0)
        return fail(c, n, "invalid address '%.64s' for %s, expected %s", text, c->path,
                    k->type->expect);
    if (tmp.salen == 0) {
        addr_clear(&tmp);
        return fail(c, n, "address '%.64s' for %s is not a numeric IP address, expected %s", text,
                    c->path, k->type->expect);
    }
    addr_clear(a);
    *a = tmp;
    return 0;
}

/* ---- node converters: sections and lists ----------------------------------------------- */

static int conv_section(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    if (n != NULL && n->type != YAML_MAPPING_NODE && !is_null(n))
        return type_fail(c, n, k->type->expect);
    return parse_section(c, k->sub, n, (char *)base + k->off, 1);
}

/* A route's timeouts: only the keys given; the rest stay INHERIT until check_root. */
static int conv_override(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    bh_conf_timeouts_t *t = FIELD(base, k, bh_conf_timeouts_t);

    t->connect_ms = t->first_byte_ms = t->idle_ms = t->total_ms = INHERIT;
    if (n != NULL && n->type != YAML_MAPPING_NODE && !is_null(n))
        return type_fail(c, n, k->type->expect);
    return n == NULL ? 0 : parse_section(c, S_TIMEOUTS, n, t, 0);
}

typedef int (*item_check_fn)(ctx_t *c, yaml_node_t *item, void *array, size_t i);

/* A list of mappings of one section -> a zeroed array of structs, parsed item by item. */
static int parse_list(ctx_t *c, yaml_node_t *n, enum sec sec, size_t size, void *array,
                      item_check_fn check)
{
    size_t len = seq_len(n);

    for (size_t i = 0; i < len; i++) {
        yaml_node_t *item = node_at(c, n->data.sequence.items.start[i]);
        size_t old = path_index(c, i);
        void *elem = (char *)array + i * size;
        int rc = item->type != YAML_MAPPING_NODE ? type_fail(c, item, "a mapping")
                                                 : parse_section(c, sec, item, elem, 1);
        if (rc == 0 && check != NULL)
            rc = check(c, item, array, i);
        path_pop(c, old);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* Names a listener without one and rejects a name or address used twice. */
static int check_listener(ctx_t *c, yaml_node_t *item, void *array, size_t i)
{
    bh_conf_listener_t *all = array, *l = &all[i];
    char buf[32];

    if (l->name == NULL) {
        snprintf(buf, sizeof buf, "listener%zu", i);
        if ((l->name = bh_strdup(buf)) == NULL)
            return oom(c);
    }
    for (size_t j = 0; j < i; j++) {
        if (strcmp(all[j].name, l->name) == 0) {
            yaml_node_t *vn = lookup(c, item, "name");
            return fail(c, vn ? vn : item,
                        "duplicate listener name '%s' in %s (also listeners[%zu]), "
                        "expected a unique name",
                        l->name, c->path, j);
        }
        if (all[j].addr.salen == l->addr.salen &&
            memcmp(&all[j].addr.sa, &l->addr.sa, l->addr.salen) == 0)
            return fail(c, lookup(c, item, "address"),
                        "duplicate listener address '%s' in %s "
                        "(also listeners[%zu]), expected each address once",
                        l->addr.text, c->path, j);
    }
    return 0;
}

static int conv_listeners(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    bh_conf_t *conf = base;
    size_t len = seq_len(n);

    if (n->type != YAML_SEQUENCE_NODE && !is_null(n))
        return type_fail(c, n, k->type->expect);
    if (len == 0)
        return fail(c, n, "no listeners given in %s, expected at least one {name, address}",
                    c->path);
    if ((conf->listeners = bh_calloc(len, sizeof *conf->listeners)) == NULL)
        return oom(c);
    conf->n_listeners = len;
    return parse_list(c, n, S_LISTENER, sizeof *conf->listeners, conf->listeners, check_listener);
}

/* A route has exactly one target; a database route takes none of the HTTP forwarding keys and
 * of the timeouts only total. Names are resolved later, in check_root. */
static int check_route(ctx_t *c, yaml_node_t *item, void *array, size_t i)
{
    static const struct {
        const char *key, *why;
    } http_only[] = {
        {"strip_prefix", "the path is not forwarded"},
        {"retry", "a database's retries are set under databases.<name>.retry"},
    };
    bh_conf_route_t *r = &((bh_conf_route_t *)array)[i];
    yaml_node_t *up = key_node(c, item, "upstream"), *db = key_node(c, item, "database"), *t;

    if (up == NULL && db == NULL)
        return fail(c, item,
                    "missing key 'upstream' or 'database' in %s, expected exactly one: an "
                    "upstream name (HTTP) or a database name (SQL over HTTP)",
                    c->path);
    if (up != NULL && db != NULL)
        return fail(c, up->start_mark.index > db->start_mark.index ? up : db,
                    "%s has both 'upstream' and 'database', expected exactly one of them",
                    c->path);
    bh_conf_route_t *all = array;
    bool named = r->name != NULL;
    if (!named) { /* "<host or *><path_prefix>", made unique with "#<index>" */
        const char *host = r->host != NULL ? r->host : "*";
        const char *prefix = r->path_prefix != NULL ? r->path_prefix : "/";
        size_t n = strlen(host) + strlen(prefix) + 24;
        if ((r->name = bh_malloc(n)) == NULL)
            return oom(c);
        snprintf(r->name, n, "%s%s", host, prefix);
        for (size_t j = 0; j < i; j++)
            if (strcmp(all[j].name, r->name) == 0) {
                snprintf(r->name, n, "%s%s#%zu", host, prefix, i);
                break;
            }
    }
    for (size_t j = 0; named && j < i; j++)
        if (strcmp(all[j].name, r->name) == 0)
            return fail(c, lookup(c, item, "name"),
                        "duplicate route name '%s' in %s (also routes[%zu]), expected a unique "
                        "name",
                        r->name, c->path, j);
    if (r->database == NULL)
        return 0;
    for (size_t j = 0; j < COUNT(http_only); j++)
        if ((t = key_node(c, item, http_only[j].key)) != NULL)
            return fail(c, t,
                        "key '%s' in %s is not applicable to database routes (%s), expected it "
                        "removed",
                        http_only[j].key, c->path, http_only[j].why);
    t = lookup(c, item, "timeouts");
    if (t != NULL && t->type == YAML_MAPPING_NODE)
        for (yaml_node_pair_t *p = t->data.mapping.pairs.start; p < t->data.mapping.pairs.top;
             p++) {
            yaml_node_t *kn = node_at(c, p->key);
            if (strcmp((const char *)kn->data.scalar.value, "total") != 0)
                return fail(c, kn,
                            "key '%s' in %s.timeouts is not applicable to database routes, "
                            "expected only total (the others are set under "
                            "databases.<name>.timeouts)",
                            (const char *)kn->data.scalar.value, c->path);
        }
    return 0;
}

static int conv_routes(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    bh_conf_t *conf = base;
    size_t len;

    if (n == NULL || is_null(n))
        return 0;
    if (n->type != YAML_SEQUENCE_NODE)
        return type_fail(c, n, k->type->expect);
    if ((len = seq_len(n)) == 0)
        return 0;
    if ((conf->routes = bh_calloc(len, sizeof *conf->routes)) == NULL)
        return oom(c);
    conf->n_routes = len;
    return parse_list(c, n, S_ROUTE, sizeof *conf->routes, conf->routes, check_route);
}

static int conv_endpoints(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    bh_conf_upstream_t *u = base;
    size_t len = seq_len(n);

    if (n->type != YAML_SEQUENCE_NODE && !is_null(n))
        return type_fail(c, n, k->type->expect);
    if (len == 0)
        return fail(c, n, "no endpoints given in %s, expected at least one host:port", c->path);
    if ((u->endpoints = bh_calloc(len, sizeof *u->endpoints)) == NULL)
        return oom(c);
    u->n_endpoints = len;
    for (size_t i = 0; i < len; i++) {
        yaml_node_t *item = node_at(c, n->data.sequence.items.start[i]);
        size_t old = path_index(c, i);
        char *s;
        int rc = scalar_text(c, item, "host:port", 0, &s);

        if (rc == 0) {
            rc = bh_parse_addr(s, &u->endpoints[i]);
            if (rc == BH_ENOMEM)
                rc = oom(c);
            else if (rc != 0)
                rc = fail(c, item,
                          "invalid endpoint '%.64s' for %s, expected host:port or "
                          "[v6]:port, e.g. 10.0.0.5:8080 or api.internal:8080",
                          s, c->path);
            bh_free(s);
        }
        path_pop(c, old);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* A mapping from names to sections of one kind (upstreams, databases): one element per name, the
 * name checked and copied into the element's name slot, the section parsed into it, then check
 * (may be NULL) run on element i with the others before it already parsed. null_ok: an empty
 * section means all defaults. */
typedef int (*named_check_t)(ctx_t *c, yaml_node_t *section, void *elems, size_t i);

static int conv_named_map(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *kind,
                          enum sec sec, const char *expect, bool null_ok, size_t size,
                          size_t name_off, void **elems, size_t *count, named_check_t check)
{
    if (n == NULL || is_null(n))
        return 0;
    if (n->type != YAML_MAPPING_NODE)
        return type_fail(c, n, k->type->expect);
    size_t len = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
    char *arr = bh_calloc(len, size);
    if (arr == NULL)
        return oom(c);
    *elems = arr;
    *count = len; /* set before parsing: bh_conf_free walks every element on failure */
    for (size_t i = 0; i < len; i++) {
        yaml_node_pair_t *p = &n->data.mapping.pairs.start[i];
        yaml_node_t *kn = node_at(c, p->key), *vn = node_at(c, p->value);
        char *elem = arr + i * size;
        const char *name = kn->type == YAML_SCALAR_NODE ? (const char *)kn->data.scalar.value : "";
        size_t old;
        int rc;

        if (name[0] == '\0' || strspn(name, NAME_CHARS) != strlen(name))
            return fail(c, kn,
                        "invalid %s name '%.64s' in %s, expected letters, digits, "
                        "'-', '_' or '.'",
                        kind, name, c->path);
        if ((rc = check_dup_key(c, n, p)) != 0)
            return rc;
        if ((*(char **)(elem + name_off) = bh_strdup(name)) == NULL)
            return oom(c);
        old = path_key(c, name);
        rc = vn->type != YAML_MAPPING_NODE && !(null_ok && is_null(vn))
                 ? type_fail(c, vn, expect)
                 : parse_section(c, sec, vn, elem, 1);
        if (rc == 0 && check != NULL)
            rc = check(c, vn, arr, i);
        path_pop(c, old);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* upstreams: a mapping from upstream name to its settings. */
static int conv_upstreams(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    bh_conf_t *conf = base;
    return conv_named_map(c, k, n, "upstream", S_UPSTREAM,
                          "a mapping with endpoints, pool and timeouts", true,
                          sizeof(bh_conf_upstream_t), offsetof(bh_conf_upstream_t, name),
                          (void **)&conf->upstreams, &conf->n_upstreams, NULL);
}

static int method_item(ctx_t *c, yaml_node_t *n, const char *text, uint32_t *bits)
{
    uint32_t bit = strcmp(text, "*") == 0 ? BH_M_ALL : bh_method_bit(text, strlen(text));
    char upper[16];
    size_t i;

    if (bit != 0 && bit != BH_M_OTHER) {
        *bits |= bit;
        return 0;
    }
    for (i = 0; text[i] != '\0' && i + 1 < sizeof upper; i++)
        upper[i] = (text[i] >= 'a' && text[i] <= 'z') ? (char)(text[i] - 'a' + 'A') : text[i];
    upper[i] = '\0';
    bit = bh_method_bit(upper, i);
    if (text[i] == '\0' && bit != 0 && bit != BH_M_OTHER)
        return fail(c, n,
                    "unknown method '%s' in %s, did you mean '%s'? (methods are case-sensitive)",
                    text, c->path, upper);
    return fail(c, n,
                "unknown method '%.64s' in %s, expected GET, HEAD, POST, PUT, DELETE, CONNECT, "
                "OPTIONS, TRACE, PATCH or * (any)",
                text, c->path);
}

/* methods: a list of method names, or one name; "*" = any method (the default). */
static int conv_methods(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    uint32_t *bits = FIELD(base, k, uint32_t);
    size_t len;

    *bits = 0;
    if (n == NULL)
        return method_item(c, NULL, k->def, bits);
    if (n->type != YAML_SEQUENCE_NODE) {
        char *s;
        int rc = scalar_text(c, n, k->type->expect, 0, &s);
        if (rc == 0) {
            rc = method_item(c, n, s, bits);
            bh_free(s);
        }
        return rc;
    }
    if ((len = seq_len(n)) == 0)
        return fail(c, n, "no methods given in %s, expected %s", c->path, k->type->expect);
    for (size_t i = 0; i < len; i++) {
        yaml_node_t *item = node_at(c, n->data.sequence.items.start[i]);
        char *s;
        int rc = scalar_text(c, item, "a method name", 0, &s);
        if (rc == 0) {
            rc = method_item(c, item, s, bits);
            bh_free(s);
        }
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* ---- resilience settings: enums, flag lists, status lists, percentages ------------------ */

typedef struct name_bit {
    const char *name;
    uint32_t bit;
} name_bit_t;

/* An unknown word among names[]: a suggestion when one is close, else the whole list. */
static int word_fail(ctx_t *c, const yaml_node_t *n, const char *what, const char *text,
                     const name_bit_t *names, size_t n_names)
{
    best_t best = {text, NULL, SIZE_MAX};
    char list[300] = "";
    size_t len = 0;

    for (size_t i = 0; i < n_names; i++) {
        consider(&best, names[i].name);
        if (len < sizeof list)
            len += (size_t)snprintf(list + len, sizeof list - len, "%s%s",
                                    i == 0 ? "" : i + 1 == n_names ? " or " : ", ", names[i].name);
    }
    if (best.match != NULL)
        return fail(c, n, "unknown %s '%.64s' in %s, did you mean '%s'?", what, text, c->path,
                    best.match);
    return fail(c, n, "unknown %s '%.64s' in %s, expected %s", what, text, c->path, list);
}

static int lookup_word(const char *text, const name_bit_t *names, size_t n_names, uint32_t *out)
{
    for (size_t i = 0; i < n_names; i++)
        if (strcmp(text, names[i].name) == 0) {
            *out = names[i].bit;
            return 0;
        }
    return -1;
}

static const name_bit_t BALANCE_NAMES[] = {
    {"round_robin", BH_BALANCE_ROUND_ROBIN},
    {"least_request", BH_BALANCE_LEAST_REQUEST},
    {"random", BH_BALANCE_RANDOM},
};

static const name_bit_t RETRY_ON_NAMES[] = {
    {"connect-failure", BH_RETRY_ON_CONNECT_FAILURE},
    {"reset-before-response", BH_RETRY_ON_RESET_BEFORE_RESPONSE},
    {"first-byte-timeout", BH_RETRY_ON_FIRST_BYTE_TIMEOUT},
    {"gateway-error", BH_RETRY_ON_GATEWAY_ERROR},
    {"5xx", BH_RETRY_ON_5XX},
    {"retriable-status", BH_RETRY_ON_RETRIABLE_STATUS},
};

static const name_bit_t COUNT_NAMES[] = {
    {"connect-failure", BH_COUNT_CONNECT_FAILURE},
    {"timeout", BH_COUNT_TIMEOUT},
    {"5xx", BH_COUNT_5XX},
    {"reset", BH_COUNT_RESET},
};

static const name_bit_t RETRY_METHOD_NAMES[] = {{"idempotent", 0}, {"all", 1}};

static int conv_balance(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    uint32_t v;

    if (lookup_word(text, BALANCE_NAMES, COUNT(BALANCE_NAMES), &v) != 0)
        return word_fail(c, n, "balance policy", text, BALANCE_NAMES, COUNT(BALANCE_NAMES));
    *FIELD(base, k, enum bh_balance_policy) = (enum bh_balance_policy)v;
    return 0;
}

static int conv_retry_methods(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text,
                              void *base)
{
    uint32_t v;

    if (lookup_word(text, RETRY_METHOD_NAMES, COUNT(RETRY_METHOD_NAMES), &v) != 0)
        return word_fail(c, n, "retry methods", text, RETRY_METHOD_NAMES,
                         COUNT(RETRY_METHOD_NAMES));
    *FIELD(base, k, bool) = v != 0;
    return 0;
}

static int conv_percent(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    double v;

    if (bh_parse_percent(text, &v) != 0)
        return fail(c, n, "invalid percentage '%.64s' for %s, expected %s", text, c->path,
                    k->type->expect);
    *FIELD(base, k, double) = v;
    return 0;
}

static int conv_path(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    if (text[0] != '/' || strpbrk(text, " \t\r\n") != NULL)
        return fail(c, n, "invalid path '%.64s' for %s, expected %s", text, c->path,
                    k->type->expect);
    return conv_str(c, k, n, text, base);
}

/* Calls item(text, node) for each element of a list node, for a single scalar, or (n NULL) for
 * each ", "-separated word of the key's default. */
typedef int (*item_fn)(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);

static int each_item(ctx_t *c, const spec_t *k, yaml_node_t *n, void *base, item_fn item)
{
    int rc = 0;

    if (n == NULL) {
        char buf[256];
        snprintf(buf, sizeof buf, "%s", k->def);
        for (char *save = NULL, *w = strtok_r(buf, ", ", &save); w != NULL && rc == 0;
             w = strtok_r(NULL, ", ", &save))
            rc = item(c, k, NULL, w, base);
        return rc;
    }
    if (n->type == YAML_MAPPING_NODE)
        return type_fail(c, n, k->type->expect);
    if (n->type == YAML_SCALAR_NODE && !is_null(n)) {
        char *s;
        if ((rc = scalar_text(c, n, k->type->expect, 0, &s)) != 0)
            return rc;
        rc = item(c, k, n, s, base);
        bh_free(s);
        return rc;
    }
    for (size_t i = 0; i < seq_len(n) && rc == 0; i++) {
        yaml_node_t *it = node_at(c, n->data.sequence.items.start[i]);
        char *s;
        if ((rc = scalar_text(c, it, "a single value", 0, &s)) != 0)
            return rc;
        rc = item(c, k, it, s, base);
        bh_free(s);
    }
    return rc;
}

static int retry_on_item(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    uint32_t bit;

    if (lookup_word(text, RETRY_ON_NAMES, COUNT(RETRY_ON_NAMES), &bit) != 0)
        return word_fail(c, n, "retry condition", text, RETRY_ON_NAMES, COUNT(RETRY_ON_NAMES));
    *FIELD(base, k, uint32_t) |= bit;
    return 0;
}

static int count_item(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    uint32_t bit;

    if (lookup_word(text, COUNT_NAMES, COUNT(COUNT_NAMES), &bit) != 0)
        return word_fail(c, n, "breaker outcome", text, COUNT_NAMES, COUNT(COUNT_NAMES));
    *FIELD(base, k, uint32_t) |= bit;
    return 0;
}

static int status_item(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    bh_conf_retry_t *r = base;
    uint32_t v;
    spec_t one = *k;

    one.off = 0;
    if (conv_u32(c, &one, n, text, &v) != 0)
        return BH_ECONFIG;
    for (size_t i = 0; i < r->n_retriable_status; i++)
        if (r->retriable_status[i] == v)
            return 0;
    if (r->n_retriable_status == BH_CONF_MAX_STATUSES)
        return fail(c, n, "too many statuses in %s, expected at most %d", c->path,
                    BH_CONF_MAX_STATUSES);
    r->retriable_status[r->n_retriable_status++] = (uint16_t)v;
    return 0;
}

static int conv_retry_on(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    *FIELD(base, k, uint32_t) = 0;
    return each_item(c, k, n, base, retry_on_item);
}

static int conv_count(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    *FIELD(base, k, uint32_t) = 0;
    return each_item(c, k, n, base, count_item);
}

/* retriable_status: the row's field is the whole bh_conf_retry_t (the list and its length). */
static int conv_statuses(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    bh_conf_retry_t *r = FIELD(base, k, bh_conf_retry_t);
    spec_t at = *k;

    at.off = 0;
    r->n_retriable_status = 0;
    return each_item(c, &at, n, r, status_item);
}

/* health_check: absent = disabled; present (even empty) = enabled with defaults. */
static int conv_health(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    bh_conf_health_t *h = FIELD(base, k, bh_conf_health_t);

    if (n == NULL)
        return 0;
    if (n->type != YAML_MAPPING_NODE && !is_null(n))
        return type_fail(c, n, k->type->expect);
    h->enabled = true;
    return parse_section(c, S_HEALTH, n, h, 1);
}

/* A route's retry: the whole section replaces the upstream's (keys not given take the
 * defaults, not the upstream's values); the budget stays the upstream's (check_root). */
static int conv_route_retry(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text,
                            void *base)
{
    bh_conf_route_t *r = base;
    yaml_node_t *budget;
    char buf[300];
    size_t old;
    int rc;

    if (n == NULL)
        return 0;
    if (n->type != YAML_MAPPING_NODE && !is_null(n))
        return type_fail(c, n, k->type->expect);
    if ((budget = lookup(c, n, "budget")) != NULL) {
        for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top;
             p++)
            if (node_at(c, p->value) == budget)
                budget = node_at(c, p->key);
        return fail(c, budget,
                    "key 'budget' %s is per upstream, expected it under "
                    "upstreams.<name>.retry.budget",
                    where(c, buf, sizeof buf));
    }
    r->has_retry = true;
    old = strlen(c->path);
    rc = parse_section(c, S_RETRY, n, &r->retry, 1);
    path_pop(c, old);
    return rc;
}

/* ---- databases (SQL over HTTP) --------------------------------------------------------- */

static const name_bit_t AUTH_NAMES[] = {
    {"passthrough", BH_DB_AUTH_PASSTHROUGH},
    {"fixed", BH_DB_AUTH_FIXED},
};

static int conv_auth(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    uint32_t v;

    if (lookup_word(text, AUTH_NAMES, COUNT(AUTH_NAMES), &v) != 0)
        return word_fail(c, n, "auth mode", text, AUTH_NAMES, COUNT(AUTH_NAMES));
    *FIELD(base, k, enum bh_db_auth) = (enum bh_db_auth)v;
    return 0;
}

/* Validates (and may rewrite in place) one item of a string list; n is the item's node. */
typedef int (*str_check_fn)(ctx_t *c, yaml_node_t *n, char *s);

/* A non-empty list of non-empty strings -> *arr, *count (count grows as items are stored, so
 * bh_conf_free copes with a list cut short by an error). */
static int read_strings(ctx_t *c, yaml_node_t *n, const char *what, const char *expect,
                        char ***arr, size_t *count, str_check_fn check)
{
    size_t len = seq_len(n);

    if (n->type != YAML_SEQUENCE_NODE && !is_null(n))
        return type_fail(c, n, expect);
    if (len == 0)
        return fail(c, n, "no %s given in %s, expected %s", what, c->path, expect);
    if ((*arr = bh_calloc(len, sizeof **arr)) == NULL)
        return oom(c);
    for (size_t i = 0; i < len; i++) {
        yaml_node_t *item = node_at(c, n->data.sequence.items.start[i]);
        size_t old = path_index(c, i);
        char *s;
        int rc = scalar_text(c, item, "a single value", 0, &s);

        if (rc == 0) {
            (*arr)[(*count)++] = s;
            rc = check(c, item, s);
        }
        path_pop(c, old);
        if (rc != 0)
            return rc;
    }
    return 0;
}

#define DB_HOST_EXPECT                                                                             \
    "the host of the connection string without its port, e.g. db.example.com, or \"*\" for any"

/* A connection-string host: "*" or a name/address without port; stored in lower case. */
static int db_host_check(ctx_t *c, yaml_node_t *n, char *s)
{
    if (strcmp(s, "*") != 0 &&
        (strpbrk(s, " \t\r\n/@,?#*") != NULL || (strchr(s, ':') != NULL && s[0] != '[')))
        return fail(c, n, "invalid host '%.64s' for %s, expected " DB_HOST_EXPECT, s, c->path);
    for (char *p = s; *p != '\0'; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    return 0;
}

/* A bearer token: compared with the Authorization header, so no spaces or control characters.
 * Tokens are secrets: never quoted in messages. */
static int db_token_check(ctx_t *c, yaml_node_t *n, char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++)
        if (*p <= 0x20 || *p == 0x7f)
            return fail(c, n,
                        "invalid token for %s (it contains a space or control character), "
                        "expected the bearer token as clients send it",
                        c->path);
    return 0;
}

static int conv_db_hosts(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    bh_conf_database_t *d = base;
    return read_strings(c, n, "hosts", k->type->expect, &d->hosts, &d->n_hosts, db_host_check);
}

static int conv_db_tokens(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    bh_conf_database_t *d = base;

    if (n == NULL)
        return 0;
    return read_strings(c, n, "tokens", k->type->expect, &d->tokens, &d->n_tokens,
                        db_token_check);
}

static int is_space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n' || ch == '\f' || ch == '\v';
}

/* server: a libpq keyword=value conninfo (values may be 'quoted' with \ escapes) that carries
 * no credentials: they come from the request (passthrough) or from user/password/dbname. The
 * text may hold secrets, so it is never quoted in messages. */
static int conv_server(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    static const char *const banned[] = {"user", "password", "dbname", "passfile", "service"};
    const char *p = text;

    if (strncmp(text, "postgres://", 11) == 0 || strncmp(text, "postgresql://", 13) == 0)
        return fail(c, n, "%s is a connection URI, expected %s", c->path, k->type->expect);
    for (;;) {
        const char *kw;
        size_t kwlen;

        while (is_space(*p))
            p++;
        if (*p == '\0')
            break;
        kw = p;
        while (*p != '\0' && *p != '=' && !is_space(*p))
            p++;
        kwlen = (size_t)(p - kw);
        while (is_space(*p))
            p++;
        if (*p != '=' || kwlen == 0)
            return fail(c, n, "invalid conninfo for %s near '%.*s', expected %s", c->path,
                        (int)(kwlen < 32 ? kwlen : 32), kw, k->type->expect);
        for (size_t i = 0; i < COUNT(banned); i++)
            if (strlen(banned[i]) == kwlen && memcmp(kw, banned[i], kwlen) == 0)
                return fail(c, n,
                            "%s sets '%s', expected a conninfo without credentials (with auth: "
                            "fixed give user, password and dbname as keys of the database)",
                            c->path, banned[i]);
        for (p++; is_space(*p); p++)
            ;
        if (*p == '\'') {
            for (p++; *p != '\'' && *p != '\0'; p++)
                if (*p == '\\' && p[1] != '\0')
                    p++;
            if (*p == '\0')
                return fail(c, n, "unterminated quote in the conninfo for %s, expected %s",
                            c->path, k->type->expect);
            p++;
        } else {
            for (; *p != '\0' && !is_space(*p); p++)
                if (*p == '\\' && p[1] != '\0')
                    p++;
        }
    }
    return conv_str(c, k, n, text, base);
}

/* Session settings the SQL over HTTP output depends on: bulkhead sets them itself. */
static const char *const SESSION_FIXED[] = {"client_encoding", "DateStyle", "IntervalStyle",
                                            "bytea_output"};

static int valid_ident(const char *s)
{
    if (!((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z') || s[0] == '_'))
        return 0;
    for (size_t i = 1; s[i] != '\0'; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || s[i] == '_' ||
              s[i] == '.' || (s[i] >= '0' && s[i] <= '9')))
            return 0;
    return 1;
}

/* Adds one setting (takes value; key is copied). */
static int session_put(ctx_t *c, bh_conf_database_t *d, const char *key, char *value)
{
    char *kc = bh_strdup(key);

    if (kc == NULL) {
        bh_free(value);
        return oom(c);
    }
    d->session_keys[d->n_session] = kc;
    d->session_values[d->n_session++] = value;
    return 0;
}

/* session: a mapping of setting names to single values, in file order; TimeZone takes the row's
 * default when not given. Names are compared case-insensitively, as Postgres does. */
static int conv_session(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    bh_conf_database_t *d = base;
    size_t len = 0;
    bool tz = false;
    char buf[300], *value;
    int rc;

    if (n != NULL && n->type != YAML_MAPPING_NODE && !is_null(n))
        return type_fail(c, n, k->type->expect);
    if (n != NULL && n->type == YAML_MAPPING_NODE)
        len = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
    if ((d->session_keys = bh_calloc(len + 1, sizeof *d->session_keys)) == NULL ||
        (d->session_values = bh_calloc(len + 1, sizeof *d->session_values)) == NULL)
        return oom(c);
    for (size_t i = 0; i < len; i++) {
        yaml_node_pair_t *p = &n->data.mapping.pairs.start[i];
        yaml_node_t *kn = node_at(c, p->key);
        const char *key = kn->type == YAML_SCALAR_NODE ? (const char *)kn->data.scalar.value : "";
        size_t old;

        if (!valid_ident(key))
            return fail(c, kn,
                        "invalid setting name '%.64s' %s, expected a Postgres setting name "
                        "(letters, digits, '_' and '.', not starting with a digit)",
                        key, where(c, buf, sizeof buf));
        for (size_t j = 0; j < COUNT(SESSION_FIXED); j++)
            if (strcasecmp(key, SESSION_FIXED[j]) == 0)
                return fail(c, kn,
                            "setting '%s' %s is set by bulkhead (the SQL over HTTP output "
                            "depends on it), expected it removed",
                            key, where(c, buf, sizeof buf));
        for (yaml_node_pair_t *q = n->data.mapping.pairs.start; q < p; q++) {
            yaml_node_t *prev = node_at(c, q->key);
            if (strcasecmp((const char *)prev->data.scalar.value, key) == 0)
                return fail(c, kn,
                            "duplicate setting '%s' %s (first given at %zu:%zu as '%s'), "
                            "expected each setting once (names are case-insensitive)",
                            key, where(c, buf, sizeof buf), prev->start_mark.line + 1,
                            prev->start_mark.column + 1, (const char *)prev->data.scalar.value);
        }
        old = path_key(c, key);
        rc = scalar_text(c, node_at(c, p->value), "a single value", 1, &value);
        path_pop(c, old);
        if (rc != 0 || (rc = session_put(c, d, key, value)) != 0)
            return rc;
        tz = tz || strcasecmp(key, "TimeZone") == 0;
    }
    if (tz)
        return 0;
    if ((rc = subst(c, NULL, k->def, strlen(k->def), &value)) != 0)
        return rc;
    return session_put(c, d, "TimeZone", value);
}

/* auth: fixed needs its credentials and tokens; passthrough takes none of them. */
static int check_database(ctx_t *c, yaml_node_t *map, void *base)
{
    static const char *const fixed_only[] = {"user", "password", "dbname", "tokens"};
    bh_conf_database_t *d = base;
    yaml_node_t *auth = lookup(c, map, "auth");
    const char *missing = NULL;

    if (d->auth == BH_DB_AUTH_PASSTHROUGH) {
        for (size_t i = 0; i < COUNT(fixed_only); i++) {
            yaml_node_t *kn = key_node(c, map, fixed_only[i]);
            if (kn != NULL)
                return fail(c, kn,
                            "key '%s' in %s applies only with auth: fixed, expected it removed "
                            "(auth: passthrough takes the user, password and database from "
                            "Neon-Connection-String)",
                            fixed_only[i], c->path);
        }
        return 0;
    }
    if (d->user == NULL)
        missing = "'user' (the Postgres role to connect as)";
    else if (d->dbname == NULL)
        missing = "'dbname' (the database to connect to)";
    else if (d->n_tokens == 0)
        missing = "'tokens' (the bearer tokens clients must send)";
    if (missing != NULL)
        return fail(c, auth, "auth: fixed in %s needs the key %s, expected it given", c->path,
                    missing);
    return 0;
}

/* A host is mapped by one database at most, and listed once in it. */
static int check_database_hosts(ctx_t *c, yaml_node_t *vn, void *elems, size_t i)
{
    bh_conf_database_t *dbs = elems, *d = &dbs[i];
    for (size_t h = 0; h < d->n_hosts; h++)
        for (size_t j = 0; j <= i; j++)
            for (size_t g = 0; g < (j < i ? dbs[j].n_hosts : h); g++) {
                yaml_node_t *hosts = lookup(c, vn, "hosts");
                if (strcmp(dbs[j].hosts[g], d->hosts[h]) != 0)
                    continue;
                path_key(c, "hosts");
                path_index(c, h);
                if (j == i)
                    return fail(c, node_at(c, hosts->data.sequence.items.start[h]),
                                "host '%s' in %s is also hosts[%zu], expected each host once",
                                d->hosts[h], c->path, g);
                return fail(c, node_at(c, hosts->data.sequence.items.start[h]),
                            "host '%s' in %s is already mapped by databases.%s, expected each "
                            "host in one database only",
                            d->hosts[h], c->path, dbs[j].name);
            }
    return 0;
}

/* databases: a mapping from database name to its settings. */
static int conv_databases(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    bh_conf_t *conf = base;
    return conv_named_map(c, k, n, "database", S_DATABASE, "a mapping with hosts and server", false,
                          sizeof(bh_conf_database_t), offsetof(bh_conf_database_t, name),
                          (void **)&conf->databases, &conf->n_databases, check_database_hosts);
}

/* ---- the schema: every key, its type and its default ----------------------------------- */

/* clang-format off */
static const type_t T_WORKERS = {conv_workers, "auto or a whole number from 1 to 1024", 0};
static const type_t T_U32 = {conv_u32, "a whole number", 0};
static const type_t T_SIZE = {conv_size, "a size in bytes or with a unit (KiB, MiB, GiB, KB, MB, "
                                         "GB), e.g. 16KiB or 10MiB", 0};
static const type_t T_DUR = {conv_duration, "a number with a unit (ms, s, m, h, d), "
                                                 "e.g. 250ms or 5s", 0};
static const type_t T_BOOL = {conv_bool, "true or false", 0};
static const type_t T_STR = {conv_str, "a non-empty string", 0};
static const type_t T_OPT_STR = {conv_str, "a string", T_EMPTY_OK};
static const type_t T_LEVEL = {conv_level, "error, warn, info or debug", 0};
static const type_t T_ADDR = {conv_addr, "a numeric address as host:port or [v6]:port, "
                                         "e.g. 0.0.0.0:8080 or [::1]:8080", 0};
static const type_t T_PREFIX = {conv_prefix, "a path starting with '/', e.g. /api/", 0};
static const type_t T_HOST = {conv_host, "a host name such as api.example.com or *.example.com", 0};
static const type_t T_SECTION = {conv_section, "a mapping", T_NODE};
static const type_t T_OVERRIDE = {conv_override, "a mapping of connect, first_byte, idle, total",
                                  T_NODE};
static const type_t T_LISTENERS = {conv_listeners, "a list of {name, address}", T_NODE};
static const type_t T_UPSTREAMS = {conv_upstreams, "a mapping from upstream name to "
                                                    "{endpoints, pool, timeouts}", T_NODE};
static const type_t T_ENDPOINTS = {conv_endpoints, "a list of host:port", T_NODE};
static const type_t T_ROUTES = {conv_routes, "a list of {match, upstream or database, "
                                "strip_prefix, timeouts, retry}", T_NODE};
static const type_t T_METHODS = {conv_methods, "a list of methods, e.g. [GET, POST]", T_NODE};
static const type_t T_PERCENT = {conv_percent, "a percentage such as 50% or a fraction from 0 to "
                                               "1 such as 0.5", 0};
static const type_t T_BALANCE = {conv_balance, "round_robin, least_request or random", 0};
static const type_t T_RETRY_METHODS = {conv_retry_methods, "idempotent or all", 0};
static const type_t T_RETRY_ON = {conv_retry_on, "a list of connect-failure, "
                                  "reset-before-response, first-byte-timeout, gateway-error, "
                                  "5xx, retriable-status", T_NODE};
static const type_t T_COUNT = {conv_count, "a list of connect-failure, timeout, 5xx, reset",
                               T_NODE};
static const type_t T_STATUSES = {conv_statuses, "a list of HTTP statuses, e.g. [503]", T_NODE};
static const type_t T_PATH = {conv_path, "a path starting with '/', e.g. /healthz", 0};
static const type_t T_HEALTH = {conv_health, "a mapping of path, interval, timeout, healthy, "
                                             "unhealthy", T_NODE};
static const type_t T_ROUTE_RETRY = {conv_route_retry, "a mapping of retry settings (attempts, "
                                     "on, retriable_status, methods, max_replay_bytes, backoff, "
                                     "honor_retry_after)", T_NODE};

static const type_t T_DATABASES = {conv_databases, "a mapping from database name to "
                                   "{hosts, server, auth, pool, timeouts}", T_NODE};
static const type_t T_DB_HOSTS = {conv_db_hosts, "a list of connection-string hosts, e.g. "
                                                 "[ \"db.example.com\" ] or [ \"*\" ]", T_NODE};
static const type_t T_DB_TOKENS = {conv_db_tokens, "a list of bearer tokens, e.g. "
                                                   "[ \"${BULKHEAD_SQL_TOKEN}\" ]", T_NODE};
static const type_t T_SERVER = {conv_server, "a libpq conninfo of keyword=value pairs without "
                                             "credentials, e.g. \"host=127.0.0.1 port=5432\"", 0};
static const type_t T_AUTH = {conv_auth, "passthrough or fixed", 0};
static const type_t T_SESSION = {conv_session, "a mapping of setting names to values, e.g. "
                                               "{ TimeZone: UTC }", T_NODE};

/* KEY(section, key, type, struct, field, default, min, max); REQ: a required key, no default;
 * NA: a key of the shared shape this section rejects, whose default still fills the field. */
#define KEY(sec, key, type, T, field, def, lo, hi)                                                 \
    {sec, key, &type, offsetof(T, field), def, lo, hi, 0, S_COUNT}
#define REQ(sec, key, type, T, field)                                                             \
    {sec, key, &type, offsetof(T, field), NULL, 0, 0, F_REQUIRED, S_COUNT}
#define SECTION(sec, key, T, field, sub)                                                          \
    {sec, key, &T_SECTION, offsetof(T, field), NULL, 0, 0, 0, sub}
#define NA(sec, key, type, T, field, def, lo, hi)                                                  \
    {sec, key, &type, offsetof(T, field), def, lo, hi, F_NA, S_COUNT}
#define LATER(sec, key) {sec, key, NULL, 0, NULL, 0, 0, 0, S_COUNT}
#define U32MAX UINT32_MAX
#define U64MAX UINT64_MAX
#define MiB (1u << 20)
#define GiB (1ull << 30)
#define DUR DUR_MAX

/* The one table of keys and defaults (defaults are those of docs/configuration.md). */
static const spec_t SPECS[] = {
    KEY(S_ROOT, "workers", T_WORKERS, bh_conf_t, workers, "auto", 1, 1024),
    REQ(S_ROOT, "listeners", T_LISTENERS, bh_conf_t, listeners),
    SECTION(S_ROOT, "limits", bh_conf_t, limits, S_LIMITS),
    SECTION(S_ROOT, "admin", bh_conf_t, admin, S_ADMIN),
    SECTION(S_ROOT, "log", bh_conf_t, log, S_LOG),
    KEY(S_ROOT, "upstreams", T_UPSTREAMS, bh_conf_t, upstreams, NULL, 0, 0),
    KEY(S_ROOT, "databases", T_DATABASES, bh_conf_t, databases, NULL, 0, 0),
    KEY(S_ROOT, "routes", T_ROUTES, bh_conf_t, routes, NULL, 0, 0),
    SECTION(S_ROOT, "shutdown", bh_conf_t, shutdown, S_SHUTDOWN),

    KEY(S_LISTENER, "name", T_STR, bh_conf_listener_t, name, NULL, 0, 0), /* "listener<N>" */
    REQ(S_LISTENER, "address", T_ADDR, bh_conf_listener_t, addr),
    LATER(S_LISTENER, "tls"),

    KEY(S_LIMITS, "max_connections", T_U32, bh_conf_limits_t, max_connections, "10000", 1, U32MAX),
    KEY(S_LIMITS, "max_header_bytes", T_SIZE, bh_conf_limits_t, max_header_bytes, "16KiB", 1, MiB),
    KEY(S_LIMITS, "max_headers", T_U32, bh_conf_limits_t, max_headers, "100", 1, 10000),
    KEY(S_LIMITS, "max_body_bytes", T_SIZE, bh_conf_limits_t, max_body_bytes, "10MiB", 0, U64MAX),
    KEY(S_LIMITS, "header_timeout", T_DUR, bh_conf_limits_t, header_timeout_ms, "10s", 1, DUR),
    KEY(S_LIMITS, "body_timeout", T_DUR, bh_conf_limits_t, body_timeout_ms, "30s", 1, DUR),
    KEY(S_LIMITS, "keepalive_timeout", T_DUR, bh_conf_limits_t, keepalive_timeout_ms,
        "60s", 1, DUR),

    KEY(S_ADMIN, "address", T_ADDR, bh_conf_admin_t, addr, "127.0.0.1:9901", 0, 0),
    KEY(S_ADMIN, "token", T_OPT_STR, bh_conf_admin_t, token, "${BULKHEAD_ADMIN_TOKEN:-}", 0, 0),

    KEY(S_LOG, "level", T_LEVEL, bh_conf_log_t, level, "info", 0, 0),
    KEY(S_LOG, "access", T_STR, bh_conf_log_t, access, "stdout", 0, 0),

    REQ(S_UPSTREAM, "endpoints", T_ENDPOINTS, bh_conf_upstream_t, endpoints),
    SECTION(S_UPSTREAM, "pool", bh_conf_upstream_t, pool, S_POOL),
    SECTION(S_UPSTREAM, "timeouts", bh_conf_upstream_t, timeouts, S_TIMEOUTS),
    KEY(S_UPSTREAM, "dns_refresh", T_DUR, bh_conf_upstream_t, dns_refresh_ms, "30s", 0, DUR),
    KEY(S_UPSTREAM, "balance", T_BALANCE, bh_conf_upstream_t, balance, "least_request", 0, 0),
    SECTION(S_UPSTREAM, "retry", bh_conf_upstream_t, retry, S_RETRY),
    SECTION(S_UPSTREAM, "breaker", bh_conf_upstream_t, breaker, S_BREAKER),
    SECTION(S_UPSTREAM, "outlier", bh_conf_upstream_t, outlier, S_OUTLIER),
    KEY(S_UPSTREAM, "health_check", T_HEALTH, bh_conf_upstream_t, health_check, NULL, 0, 0),

    KEY(S_RETRY, "attempts", T_U32, bh_conf_retry_t, attempts, "3", 1, 10),
    KEY(S_RETRY, "on", T_RETRY_ON, bh_conf_retry_t, on,
        "connect-failure, reset-before-response, gateway-error", 0, 0),
    {S_RETRY, "retriable_status", &T_STATUSES, 0, "503", 100, 599, 0, S_COUNT},
    KEY(S_RETRY, "methods", T_RETRY_METHODS, bh_conf_retry_t, methods_all, "idempotent", 0, 0),
    KEY(S_RETRY, "max_replay_bytes", T_SIZE, bh_conf_retry_t, max_replay_bytes, "64KiB", 0, GiB),
    SECTION(S_RETRY, "backoff", bh_conf_retry_t, backoff, S_BACKOFF),
    KEY(S_RETRY, "honor_retry_after", T_BOOL, bh_conf_retry_t, honor_retry_after, "true", 0, 0),
    SECTION(S_RETRY, "budget", bh_conf_retry_t, budget, S_BUDGET),

    KEY(S_BACKOFF, "base", T_DUR, bh_conf_backoff_t, base_ms, "25ms", 1, DUR),
    KEY(S_BACKOFF, "max", T_DUR, bh_conf_backoff_t, max_ms, "250ms", 1, DUR),

    KEY(S_BUDGET, "ratio", T_PERCENT, bh_conf_budget_t, ratio, "0.2", 0, 0),
    KEY(S_BUDGET, "min_per_second", T_U32, bh_conf_budget_t, min_per_second, "10", 0, 1000000),

    KEY(S_BREAKER, "consecutive_failures", T_U32, bh_conf_breaker_t, consecutive_failures,
        "5", 0, 1000000),
    KEY(S_BREAKER, "failure_rate", T_PERCENT, bh_conf_breaker_t, failure_rate, "50%", 0, 0),
    KEY(S_BREAKER, "window", T_DUR, bh_conf_breaker_t, window_ms, "10s", 10, 86400000),
    KEY(S_BREAKER, "min_requests", T_U32, bh_conf_breaker_t, min_requests, "20", 1, 1000000),
    KEY(S_BREAKER, "open_for", T_DUR, bh_conf_breaker_t, open_for_ms, "5s", 1, DUR),
    KEY(S_BREAKER, "max_open_for", T_DUR, bh_conf_breaker_t, max_open_for_ms, "60s", 1, DUR),
    KEY(S_BREAKER, "half_open_probes", T_U32, bh_conf_breaker_t, half_open_probes, "3", 1, 100),
    KEY(S_BREAKER, "count", T_COUNT, bh_conf_breaker_t, count, "connect-failure, timeout, 5xx",
        0, 0),

    KEY(S_OUTLIER, "consecutive_failures", T_U32, bh_conf_outlier_t, consecutive_failures,
        "5", 0, 1000000),
    KEY(S_OUTLIER, "eject_for", T_DUR, bh_conf_outlier_t, eject_for_ms, "30s", 1, 300000),
    KEY(S_OUTLIER, "max_ejected", T_PERCENT, bh_conf_outlier_t, max_ejected, "50%", 0, 0),

    KEY(S_HEALTH, "path", T_PATH, bh_conf_health_t, path, "/healthz", 0, 0),
    KEY(S_HEALTH, "interval", T_DUR, bh_conf_health_t, interval_ms, "5s", 1, DUR),
    KEY(S_HEALTH, "timeout", T_DUR, bh_conf_health_t, timeout_ms, "1s", 1, DUR),
    KEY(S_HEALTH, "healthy", T_U32, bh_conf_health_t, healthy, "2", 1, 1000),
    KEY(S_HEALTH, "unhealthy", T_U32, bh_conf_health_t, unhealthy, "3", 1, 1000),

    KEY(S_POOL, "max_connections", T_U32, bh_conf_pool_t, max_connections, "64", 1, 1000000),
    KEY(S_POOL, "max_pending", T_U32, bh_conf_pool_t, max_pending, "256", 0, U32MAX),
    KEY(S_POOL, "max_idle", T_U32, bh_conf_pool_t, max_idle, NULL, 0, 1000000), /* check_pool */
    KEY(S_POOL, "min_idle", T_U32, bh_conf_pool_t, min_idle, "0", 0, 1000000),
    KEY(S_POOL, "acquire_timeout", T_DUR, bh_conf_pool_t, acquire_timeout_ms, "1s", 0, DUR),
    KEY(S_POOL, "idle_timeout", T_DUR, bh_conf_pool_t, idle_timeout_ms, "4s", 1, DUR),
    KEY(S_POOL, "max_lifetime", T_DUR, bh_conf_pool_t, max_lifetime_ms, "10m", 0, DUR),

    KEY(S_TIMEOUTS, "connect", T_DUR, bh_conf_timeouts_t, connect_ms, "1s", 1, DUR),
    KEY(S_TIMEOUTS, "first_byte", T_DUR, bh_conf_timeouts_t, first_byte_ms, "15s", 1, DUR),
    KEY(S_TIMEOUTS, "idle", T_DUR, bh_conf_timeouts_t, idle_ms, "60s", 1, DUR),
    KEY(S_TIMEOUTS, "total", T_DUR, bh_conf_timeouts_t, total_ms, "30s", 1, DUR),

    KEY(S_ROUTE, "name", T_STR, bh_conf_route_t, name, NULL, 0, 0), /* "<host or *><prefix>" */
    {S_ROUTE, "match", &T_SECTION, 0, NULL, 0, 0, 0, S_MATCH}, /* its fields live in the route */
    KEY(S_ROUTE, "upstream", T_STR, bh_conf_route_t, upstream, NULL, 0, 0),  /* or database: */
    KEY(S_ROUTE, "database", T_STR, bh_conf_route_t, database, NULL, 0, 0),  /* check_route */
    KEY(S_ROUTE, "strip_prefix", T_BOOL, bh_conf_route_t, strip_prefix, "false", 0, 0),
    KEY(S_ROUTE, "timeouts", T_OVERRIDE, bh_conf_route_t, timeouts, NULL, 0, 0), /* inherit */
    KEY(S_ROUTE, "retry", T_ROUTE_RETRY, bh_conf_route_t, retry, NULL, 0, 0), /* check_root */

    KEY(S_MATCH, "host", T_HOST, bh_conf_route_t, host, NULL, 0, 0), /* NULL: any host */
    KEY(S_MATCH, "path_prefix", T_PREFIX, bh_conf_route_t, path_prefix, "/", 0, 0),
    KEY(S_MATCH, "methods", T_METHODS, bh_conf_route_t, methods, "*", 0, 0),

    KEY(S_SHUTDOWN, "drain_timeout", T_DUR, bh_conf_shutdown_t, drain_timeout_ms, "30s", 0, DUR),

    /* databases.<name> (SQL over HTTP); user, password, dbname, tokens: check_database */
    REQ(S_DATABASE, "hosts", T_DB_HOSTS, bh_conf_database_t, hosts),
    REQ(S_DATABASE, "server", T_SERVER, bh_conf_database_t, server),
    KEY(S_DATABASE, "auth", T_AUTH, bh_conf_database_t, auth, "passthrough", 0, 0),
    KEY(S_DATABASE, "user", T_STR, bh_conf_database_t, user, NULL, 0, 0),
    KEY(S_DATABASE, "password", T_OPT_STR, bh_conf_database_t, password, NULL, 0, 0),
    KEY(S_DATABASE, "dbname", T_STR, bh_conf_database_t, dbname, NULL, 0, 0),
    KEY(S_DATABASE, "tokens", T_DB_TOKENS, bh_conf_database_t, tokens, NULL, 0, 0),
    SECTION(S_DATABASE, "pool", bh_conf_database_t, pool, S_DB_POOL),
    SECTION(S_DATABASE, "timeouts", bh_conf_database_t, timeouts, S_DB_TIMEOUTS),
    KEY(S_DATABASE, "max_response_bytes", T_SIZE, bh_conf_database_t, max_response_bytes,
        "10MiB", 1, U64MAX),
    KEY(S_DATABASE, "max_request_bytes", T_SIZE, bh_conf_database_t, max_request_bytes,
        "10MiB", 1, U64MAX),
    /* session: the default is TimeZone's (conv_session) */
    KEY(S_DATABASE, "session", T_SESSION, bh_conf_database_t, session_keys, "UTC", 0, 0),
    {S_DATABASE, "retry", &T_SECTION, 0, NULL, 0, 0, 0, S_DB_RETRY}, /* fields in the database */
    SECTION(S_DATABASE, "breaker", bh_conf_database_t, breaker, S_DB_BREAKER),

    KEY(S_DB_POOL, "max_connections", T_U32, bh_conf_pool_t, max_connections, "20", 1, 1000000),
    KEY(S_DB_POOL, "max_pending", T_U32, bh_conf_pool_t, max_pending, "1000", 0, U32MAX),
    KEY(S_DB_POOL, "max_idle", T_U32, bh_conf_pool_t, max_idle, NULL, 0, 1000000), /* check_pool */
    KEY(S_DB_POOL, "min_idle", T_U32, bh_conf_pool_t, min_idle, "0", 0, 1000000),
    KEY(S_DB_POOL, "acquire_timeout", T_DUR, bh_conf_pool_t, acquire_timeout_ms, "5s", 0, DUR),
    KEY(S_DB_POOL, "idle_timeout", T_DUR, bh_conf_pool_t, idle_timeout_ms, "5m", 1, DUR),
    KEY(S_DB_POOL, "max_lifetime", T_DUR, bh_conf_pool_t, max_lifetime_ms, "1h", 0, DUR),

    KEY(S_DB_TIMEOUTS, "connect", T_DUR, bh_conf_timeouts_t, connect_ms, "2s", 1, DUR),
    NA(S_DB_TIMEOUTS, "first_byte", T_DUR, bh_conf_timeouts_t, first_byte_ms, "15s", 1, DUR),
    NA(S_DB_TIMEOUTS, "idle", T_DUR, bh_conf_timeouts_t, idle_ms, "60s", 1, DUR),
    KEY(S_DB_TIMEOUTS, "total", T_DUR, bh_conf_timeouts_t, total_ms, "30s", 1, DUR),

    /* only failures that never reached Postgres are retried: the rest of the shape is fixed */
    KEY(S_DB_RETRY, "attempts", T_U32, bh_conf_database_t, retry.attempts, "3", 1, 10),
    SECTION(S_DB_RETRY, "backoff", bh_conf_database_t, retry.backoff, S_BACKOFF),
    KEY(S_DB_RETRY, "serialization_failures", T_BOOL, bh_conf_database_t,
        retry_serialization_failures, "false", 0, 0),
    NA(S_DB_RETRY, "on", T_RETRY_ON, bh_conf_database_t, retry.on, "connect-failure", 0, 0),
    NA(S_DB_RETRY, "retriable_status", T_STATUSES, bh_conf_database_t, retry, "", 100, 599),
    NA(S_DB_RETRY, "methods", T_RETRY_METHODS, bh_conf_database_t, retry.methods_all, "all",
       0, 0),
    NA(S_DB_RETRY, "max_replay_bytes", T_SIZE, bh_conf_database_t, retry.max_replay_bytes,
       "0", 0, GiB),
    NA(S_DB_RETRY, "honor_retry_after", T_BOOL, bh_conf_database_t, retry.honor_retry_after,
       "false", 0, 0),
    {S_DB_RETRY, "budget", &T_SECTION, offsetof(bh_conf_database_t, retry.budget), NULL, 0, 0,
     F_NA, S_BUDGET},

    KEY(S_DB_BREAKER, "consecutive_failures", T_U32, bh_conf_breaker_t, consecutive_failures,
        "5", 0, 1000000),
    KEY(S_DB_BREAKER, "failure_rate", T_PERCENT, bh_conf_breaker_t, failure_rate, "50%", 0, 0),
    KEY(S_DB_BREAKER, "window", T_DUR, bh_conf_breaker_t, window_ms, "10s", 10, 86400000),
    KEY(S_DB_BREAKER, "min_requests", T_U32, bh_conf_breaker_t, min_requests, "20", 1, 1000000),
    KEY(S_DB_BREAKER, "open_for", T_DUR, bh_conf_breaker_t, open_for_ms, "2s", 1, DUR),
    KEY(S_DB_BREAKER, "max_open_for", T_DUR, bh_conf_breaker_t, max_open_for_ms, "30s", 1, DUR),
    KEY(S_DB_BREAKER, "half_open_probes", T_U32, bh_conf_breaker_t, half_open_probes, "1", 1, 100),
    KEY(S_DB_BREAKER, "count", T_COUNT, bh_conf_breaker_t, count, "connect-failure, timeout, 5xx",
        0, 0),
};
/* clang-format on */

/* ---- cross-field checks, run after a section's keys are all set ------------------------ */

typedef int (*hook_fn)(ctx_t *c, yaml_node_t *map, void *base);

static int check_pool(ctx_t *c, yaml_node_t *map, void *base)
{
    bh_conf_pool_t *p = base;
    yaml_node_t *max_idle = lookup(c, map, "max_idle");
    char buf[300];

    if (max_idle == NULL)
        p->max_idle = p->max_connections;
    else if (p->max_idle > p->max_connections)
        return fail(c, max_idle,
                    "max_idle %" PRIu32 " %s is larger than max_connections %" PRIu32
                    ", expected at most max_connections",
                    p->max_idle, where(c, buf, sizeof buf), p->max_connections);
    if (p->min_idle > p->max_idle)
        return fail(c, lookup(c, map, "min_idle"),
                    "min_idle %" PRIu32 " %s is larger than "
                    "max_idle %" PRIu32 ", expected at most max_idle",
                    p->min_idle, where(c, buf, sizeof buf), p->max_idle);
    return 0;
}

/* max >= base for a backoff, max_open_for >= open_for, timeout <= interval: lo must not be above
 * hi. The message names the key the user most likely has to change (hi when at_least). */
static int check_order(ctx_t *c, yaml_node_t *map, const char *lo_key, uint64_t lo,
                       const char *hi_key, uint64_t hi, bool at_least)
{
    char a[32], b[32], buf[300];
    yaml_node_t *at;

    if (lo <= hi)
        return 0;
    show_duration(lo, a, sizeof a);
    show_duration(hi, b, sizeof b);
    at = lookup(c, map, at_least ? hi_key : lo_key);
    if (at == NULL)
        at = lookup(c, map, at_least ? lo_key : hi_key);
    if (at_least)
        return fail(c, at ? at : map, "%s %s %s is smaller than %s %s, expected at least %s",
                    hi_key, b, where(c, buf, sizeof buf), lo_key, a, lo_key);
    return fail(c, at ? at : map, "%s %s %s is larger than %s %s, expected at most %s", lo_key,
                a, where(c, buf, sizeof buf), hi_key, b, hi_key);
}

static int check_backoff(ctx_t *c, yaml_node_t *map, void *base)
{
    bh_conf_backoff_t *b = base;
    return check_order(c, map, "base", b->base_ms, "max", b->max_ms, true);
}

static int check_breaker(ctx_t *c, yaml_node_t *map, void *base)
{
    bh_conf_breaker_t *b = base;
    return check_order(c, map, "open_for", b->open_for_ms, "max_open_for", b->max_open_for_ms,
                       true);
}

static int check_health(ctx_t *c, yaml_node_t *map, void *base)
{
    bh_conf_health_t *h = base;
    return check_order(c, map, "timeout", h->timeout_ms, "interval", h->interval_ms, false);
}

/* Fills a route's timeouts not given (INHERIT) from its target's. */
static void inherit_timeouts(bh_conf_timeouts_t *mine, const bh_conf_timeouts_t *from)
{
    for (const spec_t *k = SPECS; k < SPECS + COUNT(SPECS); k++)
        if (k->sec == S_TIMEOUTS && *FIELD(mine, k, uint64_t) == INHERIT)
            *FIELD(mine, k, uint64_t) = *FIELD(from, k, uint64_t);
}

/* A database route: resolves its database; its timeouts are the database's (with its own total
 * when given) and its retry is a copy of the database's. */
static int resolve_database(ctx_t *c, yaml_node_t *routes, bh_conf_t *conf, size_t i)
{
    bh_conf_route_t *r = &conf->routes[i];
    best_t best = {r->database, NULL, SIZE_MAX};
    size_t d;

    for (d = 0; d < conf->n_databases; d++) {
        if (strcmp(conf->databases[d].name, r->database) == 0)
            break;
        consider(&best, conf->databases[d].name);
    }
    if (d == conf->n_databases) {
        yaml_node_t *vn = lookup(c, node_at(c, routes->data.sequence.items.start[i]), "database");
        snprintf(c->path, sizeof c->path, "routes[%zu].database", i);
        if (best.match != NULL)
            return fail(c, vn, "unknown database '%s' for %s, did you mean '%s'?", r->database,
                        c->path, best.match);
        return fail(c, vn,
                    "unknown database '%s' for %s, expected a name defined under databases",
                    r->database, c->path);
    }
    r->database_index = d;
    r->upstream_index = SIZE_MAX;
    inherit_timeouts(&r->timeouts, &conf->databases[d].timeouts);
    r->retry = conf->databases[d].retry;
    return 0;
}

/* Resolves each route's upstream (or database) and fills its timeouts not given from the
 * upstream's; a route without its own retry takes the upstream's, one with its own keeps the
 * upstream's budget. */
static int check_root(ctx_t *c, yaml_node_t *map, void *base)
{
    bh_conf_t *conf = base;
    yaml_node_t *routes = lookup(c, map, "routes");

    for (size_t i = 0; i < conf->n_routes; i++) {
        bh_conf_route_t *r = &conf->routes[i];
        best_t best = {r->upstream, NULL, SIZE_MAX};
        size_t u;
        int rc;

        if (r->database != NULL) {
            if ((rc = resolve_database(c, routes, conf, i)) != 0)
                return rc;
            continue;
        }
        r->database_index = SIZE_MAX;
        for (u = 0; u < conf->n_upstreams; u++) {
            if (strcmp(conf->upstreams[u].name, r->upstream) == 0)
                break;
            consider(&best, conf->upstreams[u].name);
        }
        if (u == conf->n_upstreams) {
            yaml_node_t *vn =
                lookup(c, node_at(c, routes->data.sequence.items.start[i]), "upstream");
            snprintf(c->path, sizeof c->path, "routes[%zu].upstream", i);
            if (best.match != NULL)
                return fail(c, vn, "unknown upstream '%s' for %s, did you mean '%s'?", r->upstream,
                            c->path, best.match);
            return fail(c, vn,
                        "unknown upstream '%s' for %s, expected a name defined under upstreams",
                        r->upstream, c->path);
        }
        r->upstream_index = u;
        inherit_timeouts(&r->timeouts, &conf->upstreams[u].timeouts);
        if (!r->has_retry)
            r->retry = conf->upstreams[u].retry;
        r->retry.budget = conf->upstreams[u].retry.budget;
    }
    return 0;
}

static const hook_fn HOOKS[S_COUNT] = {
    [S_ROOT] = check_root,         [S_POOL] = check_pool,         [S_BACKOFF] = check_backoff,
    [S_BREAKER] = check_breaker,   [S_HEALTH] = check_health,     [S_DATABASE] = check_database,
    [S_DB_POOL] = check_pool,      [S_DB_BREAKER] = check_breaker,
};

/* ---- the section walker ---------------------------------------------------------------- */

static int unknown_key(ctx_t *c, enum sec sec, yaml_node_t *kn, const char *key)
{
    best_t best = {key, NULL, SIZE_MAX};
    char list[300] = "", buf[300];
    size_t len = 0;

    for (const spec_t *k = SPECS; k < SPECS + COUNT(SPECS); k++) {
        if (k->sec != sec || (k->flags & F_NA))
            continue;
        consider(&best, k->key);
        if (k->type != NULL && len < sizeof list)
            len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", len ? ", " : "", k->key);
    }
    if (best.match != NULL)
        return fail(c, kn, "unknown key '%.64s' %s, did you mean '%s'?", key,
                    where(c, buf, sizeof buf), best.match);
    return fail(c, kn, "unknown key '%.64s' %s, expected one of: %s", key,
                where(c, buf, sizeof buf), list);
}

/* A key of the shared shape (upstreams) that a database section does not take. */
static int not_applicable(ctx_t *c, enum sec sec, yaml_node_t *kn, const char *key)
{
    char list[300] = "", buf[300];
    size_t len = 0;

    for (const spec_t *k = SPECS; k < SPECS + COUNT(SPECS); k++)
        if (k->sec == sec && k->type != NULL && !(k->flags & F_NA) && len < sizeof list)
            len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", len ? ", " : "", k->key);
    return fail(c, kn, "key '%s' %s is not applicable to databases, expected only: %s", key,
                where(c, buf, sizeof buf), list);
}

/* Converts one key: scalar types get their substituted text (or their default's). */
static int convert(ctx_t *c, const spec_t *k, yaml_node_t *n, void *base)
{
    const type_t *t = k->type;
    char *text;
    int rc;

    if (t->flags & T_NODE)
        return t->conv(c, k, n, NULL, base);
    rc = n != NULL ? scalar_text(c, n, t->expect, t->flags & T_EMPTY_OK, &text)
                   : subst(c, NULL, k->def, strlen(k->def), &text);
    if (rc != 0)
        return rc;
    rc = t->conv(c, k, n, text, base);
    bh_free(text);
    return rc;
}

/* Parses a mapping (or NULL / an empty value: nothing given) against the rows of sec into base;
 * with defaults, missing keys take their default. c->path names the mapping. */
static int parse_section(ctx_t *c, enum sec sec, yaml_node_t *map, void *base, int defaults)
{
    bool given[COUNT(SPECS)] = {0};
    char buf[300];
    int rc;

    if (map != NULL && map->type == YAML_MAPPING_NODE) {
        for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
             p++) {
            yaml_node_t *kn = node_at(c, p->key);
            const char *key;
            const spec_t *k;
            size_t old;

            if (kn->type != YAML_SCALAR_NODE)
                return fail(c, kn, "a key %s is %s, expected a plain name",
                            where(c, buf, sizeof buf), kind_name(kn));
            key = (const char *)kn->data.scalar.value;
            if ((rc = check_dup_key(c, map, p)) != 0)
                return rc;
            for (k = SPECS; k < SPECS + COUNT(SPECS); k++)
                if (k->sec == sec && strcmp(k->key, key) == 0)
                    break;
            if (k == SPECS + COUNT(SPECS))
                return unknown_key(c, sec, kn, key);
            if (k->type == NULL)
                return fail(c, kn,
                            "key '%s' %s is recognised but not supported yet by this version "
                            "(bulkhead %s), expected it removed",
                            key, where(c, buf, sizeof buf), BH_VERSION);
            if (k->flags & F_NA)
                return not_applicable(c, sec, kn, key);
            given[k - SPECS] = true;
            old = path_key(c, key);
            rc = convert(c, k, node_at(c, p->value), base);
            path_pop(c, old);
            if (rc != 0)
                return rc;
        }
    }
    for (const spec_t *k = SPECS; k < SPECS + COUNT(SPECS); k++) {
        size_t old;

        if (k->sec != sec || given[k - SPECS] || k->type == NULL)
            continue;
        if (k->flags & F_REQUIRED)
            return fail(c, map, "missing required key '%s' %s, expected %s", k->key,
                        where(c, buf, sizeof buf), k->type->expect);
        if (!defaults || (k->def == NULL && !(k->type->flags & T_NODE)))
            continue;
        old = path_key(c, k->key);
        rc = convert(c, k, NULL, base);
        path_pop(c, old);
        if (rc != 0)
            return rc;
    }
    return HOOKS[sec] != NULL ? HOOKS[sec](c, map, base) : 0;
}

/* ---- loading --------------------------------------------------------------------------- */

/* yaml[0..len) is the input: reader errors (bad encoding) only give a byte offset. */
static int syntax_error(ctx_t *c, const yaml_parser_t *p, const char *yaml, size_t len)
{
    if (p->error == YAML_MEMORY_ERROR)
        return oom(c);
    if (p->error == YAML_READER_ERROR) {
        size_t line = 1, col = 1;
        for (size_t i = 0; i < p->problem_offset && i < len; i++, col++)
            if (yaml[i] == '\n') {
                line++;
                col = 0;
            }
        snprintf(c->err->msg, sizeof c->err->msg, "%s:%zu:%zu: invalid text (%s), expected UTF-8",
                 c->name, line, col, p->problem ? p->problem : "unreadable");
        return BH_ECONFIG;
    }
    if (p->context != NULL)
        snprintf(c->err->msg, sizeof c->err->msg, "%s:%zu:%zu: invalid YAML: %s (%s at %zu:%zu)",
                 c->name, p->problem_mark.line + 1, p->problem_mark.column + 1,
                 p->problem ? p->problem : "syntax error", p->context, p->context_mark.line + 1,
                 p->context_mark.column + 1);
    else
        snprintf(c->err->msg, sizeof c->err->msg, "%s:%zu:%zu: invalid YAML: %s", c->name,
                 p->problem_mark.line + 1, p->problem_mark.column + 1,
                 p->problem ? p->problem : "syntax error");
    return BH_ECONFIG;
}

/* Builds the snapshot from the parsed document. */
static int build(ctx_t *c, bh_conf_t *conf)
{
    yaml_node_t *root = yaml_document_get_root_node(c->doc);

    if (root != NULL && root->type != YAML_MAPPING_NODE && !is_null(root))
        return fail(c, root,
                    "the top level is %s, expected a mapping of settings (listeners, "
                    "upstreams, routes, ...)",
                    kind_name(root));
    return parse_section(c, S_ROOT, root, conf, 1);
}

int bh_conf_load_string(const char *name, const char *yaml, size_t len, bh_conf_t **out,
                        bh_conf_error_t *err)
{
    yaml_parser_t parser;
    yaml_document_t doc, extra;
    ctx_t c = {.name = name, .doc = &doc, .err = err};
    bh_conf_t *conf = NULL;
    int rc;

    *out = NULL;
    err->msg[0] = '\0';
    if (!yaml_parser_initialize(&parser))
        return oom(&c);
    yaml_parser_set_input_string(&parser, (const unsigned char *)yaml, len);
    if (!yaml_parser_load(&parser, &doc)) {
        rc = syntax_error(&c, &parser, yaml, len);
        yaml_parser_delete(&parser);
        return rc;
    }
    if (!yaml_parser_load(&parser, &extra)) {
        rc = syntax_error(&c, &parser, yaml, len);
    } else {
        yaml_node_t *second = yaml_document_get_root_node(&extra);
        rc = second != NULL
                 ? fail(&c, second, "a second YAML document, expected one document per file")
                 : 0;
        yaml_document_delete(&extra);
    }
    if (rc == 0) {
        conf = bh_calloc(1, sizeof *conf);
        if (conf == NULL || (conf->path = bh_strdup(name)) == NULL)
            rc = oom(&c);
        else
            rc = build(&c, conf);
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    if (rc != 0) {
        bh_conf_free(conf);
        return rc;
    }
    *out = conf;
    return 0;
}

int bh_conf_load(const char *path, bh_conf_t **out, bh_conf_error_t *err)
{
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int fd, rc;

    *out = NULL;
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
        snprintf(err->msg, sizeof err->msg, "%s: cannot open: %s", path, strerror(errno));
        return BH_ECONFIG;
    }
    for (;;) {
        ssize_t n;
        if (len == cap) {
            char *p;
            if (cap >= MAX_FILE) {
                snprintf(err->msg, sizeof err->msg, "%s: file too large, expected at most 16MiB",
                         path);
                rc = BH_ECONFIG;
                break;
            }
            cap = cap ? cap * 2 : 4096;
            if ((p = bh_realloc(buf, cap)) == NULL) {
                snprintf(err->msg, sizeof err->msg, "%s: out of memory", path);
                rc = BH_ENOMEM;
                break;
            }
            buf = p;
        }
        n = read(fd, buf + len, cap - len);
        if (n == 0) {
            rc = 0;
            break;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err->msg, sizeof err->msg, "%s: cannot read: %s", path, strerror(errno));
            rc = BH_ECONFIG;
            break;
        }
        len += (size_t)n;
    }
    close(fd);
    if (rc == 0)
        rc = bh_conf_load_string(path, buf, len, out, err);
    bh_free(buf);
    return rc;
}

void bh_conf_free(bh_conf_t *conf)
{
    if (conf == NULL)
        return;
    for (size_t i = 0; i < conf->n_listeners; i++) {
        bh_free(conf->listeners[i].name);
        addr_clear(&conf->listeners[i].addr);
    }
    bh_free(conf->listeners);
    addr_clear(&conf->admin.addr);
    bh_free(conf->admin.token);
    bh_free(conf->log.access);
    for (size_t i = 0; i < conf->n_upstreams; i++) {
        bh_conf_upstream_t *u = &conf->upstreams[i];
        bh_free(u->name);
        for (size_t j = 0; j < u->n_endpoints; j++)
            addr_clear(&u->endpoints[j]);
        bh_free(u->endpoints);
        bh_free(u->health_check.path);
    }
    bh_free(conf->upstreams);
    for (size_t i = 0; i < conf->n_databases; i++) {
        bh_conf_database_t *d = &conf->databases[i];
        bh_free(d->name);
        for (size_t j = 0; j < d->n_hosts; j++)
            bh_free(d->hosts[j]);
        bh_free(d->hosts);
        bh_free(d->server);
        bh_free(d->user);
        bh_free(d->password);
        bh_free(d->dbname);
        for (size_t j = 0; j < d->n_tokens; j++)
            bh_free(d->tokens[j]);
        bh_free(d->tokens);
        for (size_t j = 0; j < d->n_session; j++) {
            bh_free(d->session_keys[j]);
            bh_free(d->session_values[j]);
        }
        bh_free(d->session_keys);
        bh_free(d->session_values);
    }
    bh_free(conf->databases);
    for (size_t i = 0; i < conf->n_routes; i++) {
        bh_free(conf->routes[i].name);
        bh_free(conf->routes[i].host);
        bh_free(conf->routes[i].path_prefix);
        bh_free(conf->routes[i].upstream);
        bh_free(conf->routes[i].database);
    }
    bh_free(conf->routes);
    bh_free(conf->path);
    bh_free(conf);
}

/* ---- comparing sections (reload keeps the state of what did not change) ------------------ */

#define EQ(f) (a->f == b->f)

static bool str_eq(const char *a, const char *b)
{
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static bool pool_eq(const bh_conf_pool_t *a, const bh_conf_pool_t *b)
{
    return EQ(max_connections) && EQ(max_pending) && EQ(max_idle) && EQ(min_idle) &&
           EQ(acquire_timeout_ms) && EQ(idle_timeout_ms) && EQ(max_lifetime_ms);
}

static bool timeouts_eq(const bh_conf_timeouts_t *a, const bh_conf_timeouts_t *b)
{
    return EQ(connect_ms) && EQ(first_byte_ms) && EQ(idle_ms) && EQ(total_ms);
}

static bool retry_eq(const bh_conf_retry_t *a, const bh_conf_retry_t *b)
{
    if (!(EQ(attempts) && EQ(on) && EQ(n_retriable_status) && EQ(methods_all) &&
          EQ(max_replay_bytes) && EQ(backoff.base_ms) && EQ(backoff.max_ms) &&
          EQ(honor_retry_after) && EQ(budget.ratio) && EQ(budget.min_per_second)))
        return false;
    for (size_t i = 0; i < a->n_retriable_status; i++)
        if (a->retriable_status[i] != b->retriable_status[i])
            return false;
    return true;
}

static bool breaker_eq(const bh_conf_breaker_t *a, const bh_conf_breaker_t *b)
{
    return EQ(consecutive_failures) && EQ(failure_rate) && EQ(window_ms) && EQ(min_requests) &&
           EQ(open_for_ms) && EQ(max_open_for_ms) && EQ(half_open_probes) && EQ(count);
}

bool bh_conf_upstream_equal(const bh_conf_upstream_t *a, const bh_conf_upstream_t *b)
{
    if (!(str_eq(a->name, b->name) && EQ(n_endpoints) && pool_eq(&a->pool, &b->pool) &&
          timeouts_eq(&a->timeouts, &b->timeouts) && EQ(dns_refresh_ms) && EQ(balance) &&
          retry_eq(&a->retry, &b->retry) && breaker_eq(&a->breaker, &b->breaker) &&
          EQ(outlier.consecutive_failures) && EQ(outlier.eject_for_ms) &&
          EQ(outlier.max_ejected) && EQ(health_check.enabled) &&
          str_eq(a->health_check.path, b->health_check.path) &&
          EQ(health_check.interval_ms) && EQ(health_check.timeout_ms) &&
          EQ(health_check.healthy) && EQ(health_check.unhealthy)))
        return false;
    for (size_t i = 0; i < a->n_endpoints; i++)
        if (!str_eq(a->endpoints[i].text, b->endpoints[i].text))
            return false;
    return true;
}

bool bh_conf_database_equal(const bh_conf_database_t *a, const bh_conf_database_t *b)
{
    if (!(str_eq(a->name, b->name) && EQ(n_hosts) && str_eq(a->server, b->server) &&
          EQ(auth) && str_eq(a->user, b->user) && str_eq(a->password, b->password) &&
          str_eq(a->dbname, b->dbname) && EQ(n_tokens) && pool_eq(&a->pool, &b->pool) &&
          timeouts_eq(&a->timeouts, &b->timeouts) && EQ(max_response_bytes) &&
          EQ(max_request_bytes) && EQ(n_session) && retry_eq(&a->retry, &b->retry) &&
          EQ(retry_serialization_failures) && breaker_eq(&a->breaker, &b->breaker)))
        return false;
    for (size_t i = 0; i < a->n_hosts; i++)
        if (!str_eq(a->hosts[i], b->hosts[i]))
            return false;
    for (size_t i = 0; i < a->n_tokens; i++)
        if (!str_eq(a->tokens[i], b->tokens[i]))
            return false;
    for (size_t i = 0; i < a->n_session; i++)
        if (!str_eq(a->session_keys[i], b->session_keys[i]) ||
            !str_eq(a->session_values[i], b->session_values[i]))
            return false;
    return true;
}

#undef EQ
