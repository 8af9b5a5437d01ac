/* Scalar converters: one value (its substituted text) -> one field, with its range checked.
 * Word sets (balance, retry.on, breaker.count, auth, reset ...) and lists of words or statuses live
 * here too: a list converter calls an item converter per word. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include "bh_alloc.h"
#include "bh_conf_int.h"

/* ---- numbers, durations, sizes --------------------------------------------------------- */

static void show_plain(uint64_t v, char *buf, size_t n)
{
    snprintf(buf, n, "%" PRIu64, v);
}

void bh__conf_show_duration(uint64_t v, char *buf, size_t n)
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
    return bh__conf_fail(c, n, "%.64s for %s is out of range, expected %s to %s", text, c->path, lo,
                         hi);
}

int bh__conf_conv_u32(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    size_t digits = strspn(text, "0123456789");
    uint64_t v = 0;
    char lo[32], hi[32];

    if (digits == 0 || text[digits] != '\0') {
        show_plain(k->min, lo, sizeof lo);
        show_plain(k->max, hi, sizeof hi);
        return bh__conf_fail(c, n,
                             "invalid number '%.64s' for %s, expected a whole number from %s to %s",
                             text, c->path, lo, hi);
    }
    for (size_t i = 0; i < digits && v <= UINT32_MAX; i++) /* stops early: no overflow */
        v = v * 10 + (uint64_t)(text[i] - '0');
    if (range_check(c, k, n, text, v, show_plain) != 0)
        return BH_ECONFIG;
    *FIELD(base, k, uint32_t) = (uint32_t)v;
    return 0;
}

int bh__conf_conv_workers(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    if (strcmp(text, "auto") == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        *FIELD(base, k, uint32_t) = (uint32_t)(cpus < 1              ? 1
                                               : cpus > (long)k->max ? (long)k->max
                                                                     : cpus);
        return 0;
    }
    if (strspn(text, "0123456789") != strlen(text))
        return bh__conf_fail(c, n, "invalid worker count '%.64s' for %s, expected %s", text,
                             c->path, k->type->expect);
    return bh__conf_conv_u32(c, k, n, text, base);
}

int bh__conf_conv_duration(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    uint64_t v;

    if (bh_parse_duration_ms(text, &v) != 0)
        return bh__conf_fail(c, n, "invalid duration '%.64s' for %s, expected %s", text, c->path,
                             k->type->expect);
    if (range_check(c, k, n, text, v, bh__conf_show_duration) != 0)
        return BH_ECONFIG;
    *FIELD(base, k, uint64_t) = v;
    return 0;
}

int bh__conf_conv_size(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    uint64_t v;

    if (bh_parse_size(text, &v) != 0)
        return bh__conf_fail(c, n, "invalid size '%.64s' for %s, expected %s", text, c->path,
                             k->type->expect);
    if (range_check(c, k, n, text, v, show_size) != 0)
        return BH_ECONFIG;
    *FIELD(base, k, uint64_t) = v;
    return 0;
}

int bh__conf_conv_bool(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    if (strcmp(text, "true") != 0 && strcmp(text, "false") != 0)
        return bh__conf_fail(c, n, "invalid boolean '%.64s' for %s, expected true or false", text,
                             c->path);
    *FIELD(base, k, bool) = text[0] == 't';
    return 0;
}

static const name_bit_t LEVEL_NAMES[] = {
    {"error", BH_LOG_ERROR},
    {"warn", BH_LOG_WARN},
    {"info", BH_LOG_INFO},
    {"debug", BH_LOG_DEBUG},
};
const word_set_t bh__conf_levels = {LEVEL_NAMES, COUNT(LEVEL_NAMES)};

int bh__conf_conv_level(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    for (size_t i = 0; i < COUNT(LEVEL_NAMES); i++)
        if (strcmp(text, LEVEL_NAMES[i].name) == 0) {
            *FIELD(base, k, enum bh_log_level) = (enum bh_log_level)LEVEL_NAMES[i].bit;
            return 0;
        }
    return bh__conf_fail(c, n, "invalid log level '%.64s' for %s, expected %s", text, c->path,
                         k->type->expect);
}

/* ---- strings and addresses ------------------------------------------------------------- */

/* Strings; an empty optional string is stored as NULL. */
int bh__conf_conv_str(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    char **field = FIELD(base, k, char *);

    bh_free(*field);
    *field = NULL;
    if (text[0] != '\0' && (*field = bh_strdup(text)) == NULL)
        return bh__conf_oom(c);
    return 0;
}

int bh__conf_conv_prefix(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    if (text[0] != '/')
        return bh__conf_fail(c, n, "invalid path prefix '%.64s' for %s, expected %s", text, c->path,
                             k->type->expect);
    return bh__conf_conv_str(c, k, n, text, base);
}

int bh__conf_conv_host(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    char **field;

    if (strpbrk(text, " \t\r\n/") != NULL)
        return bh__conf_fail(c, n, "invalid host '%.64s' for %s, expected %s", text, c->path,
                             k->type->expect);
    if (bh__conf_conv_str(c, k, n, text, base) != 0)
        return BH_ENOMEM;
    field = FIELD(base, k, char *);
    for (char *p = *field; *p != '\0'; p++) /* matched case-insensitively: store lower case */
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    return 0;
}

void bh__conf_addr_clear(bh_conf_addr_t *a)
{
    bh_free(a->text);
    bh_free(a->host);
    memset(a, 0, sizeof *a);
}

/* Addresses bulkhead listens on: the host must be a numeric IP. */
int bh__conf_conv_addr(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    bh_conf_addr_t *a = FIELD(base, k, bh_conf_addr_t), tmp;
    int rc = bh_parse_addr(text, &tmp);

    if (rc == BH_ENOMEM)
        return bh__conf_oom(c);
    if (rc != 0)
        return bh__conf_fail(c, n, "invalid address '%.64s' for %s, expected %s", text, c->path,
                             k->type->expect);
    if (tmp.salen == 0) {
        bh__conf_addr_clear(&tmp);
        return bh__conf_fail(c, n,
                             "address '%.64s' for %s is not a numeric IP address, expected %s",
                             text, c->path, k->type->expect);
    }
    bh__conf_addr_clear(a);
    *a = tmp;
    return 0;
}

/* ---- words of a closed set, percentages, paths ----------------------------------------- */

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

const word_set_t bh__conf_balances = {BALANCE_NAMES, COUNT(BALANCE_NAMES)};
const word_set_t bh__conf_retry_on = {RETRY_ON_NAMES, COUNT(RETRY_ON_NAMES)};
const word_set_t bh__conf_counts = {COUNT_NAMES, COUNT(COUNT_NAMES)};

static const name_bit_t RETRY_METHOD_NAMES[] = {{"idempotent", 0}, {"all", 1}};

static const name_bit_t AUTH_NAMES[] = {
    {"passthrough", BH_DB_AUTH_PASSTHROUGH},
    {"fixed", BH_DB_AUTH_FIXED},
};

const word_set_t bh__conf_auths = {AUTH_NAMES, COUNT(AUTH_NAMES)};

int bh__conf_conv_balance(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    uint32_t v;

    if (lookup_word(text, BALANCE_NAMES, COUNT(BALANCE_NAMES), &v) != 0)
        return bh__conf_word_fail(c, n, "balance policy", text, BALANCE_NAMES,
                                  COUNT(BALANCE_NAMES));
    *FIELD(base, k, enum bh_balance_policy) = (enum bh_balance_policy)v;
    return 0;
}

int bh__conf_conv_retry_methods(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text,
                                void *base)
{
    uint32_t v;

    if (lookup_word(text, RETRY_METHOD_NAMES, COUNT(RETRY_METHOD_NAMES), &v) != 0)
        return bh__conf_word_fail(c, n, "retry methods", text, RETRY_METHOD_NAMES,
                                  COUNT(RETRY_METHOD_NAMES));
    *FIELD(base, k, bool) = v != 0;
    return 0;
}

int bh__conf_conv_auth(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    uint32_t v;

    if (lookup_word(text, AUTH_NAMES, COUNT(AUTH_NAMES), &v) != 0)
        return bh__conf_word_fail(c, n, "auth mode", text, AUTH_NAMES, COUNT(AUTH_NAMES));
    *FIELD(base, k, enum bh_db_auth) = (enum bh_db_auth)v;
    return 0;
}

static const name_bit_t RESET_NAMES[] = {
    {"auto", BH_DB_RESET_AUTO},
    {"always", BH_DB_RESET_ALWAYS},
};

const word_set_t bh__conf_resets = {RESET_NAMES, COUNT(RESET_NAMES)};

int bh__conf_conv_reset(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    uint32_t v;

    if (lookup_word(text, RESET_NAMES, COUNT(RESET_NAMES), &v) != 0)
        return bh__conf_word_fail(c, n, "reset mode", text, RESET_NAMES, COUNT(RESET_NAMES));
    *FIELD(base, k, enum bh_db_reset) = (enum bh_db_reset)v;
    return 0;
}

int bh__conf_conv_percent(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    double v;

    if (bh_parse_percent(text, &v) != 0)
        return bh__conf_fail(c, n, "invalid percentage '%.64s' for %s, expected %s", text, c->path,
                             k->type->expect);
    *FIELD(base, k, double) = v;
    return 0;
}

int bh__conf_conv_path(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    if (text[0] != '/' || strpbrk(text, " \t\r\n") != NULL)
        return bh__conf_fail(c, n, "invalid path '%.64s' for %s, expected %s", text, c->path,
                             k->type->expect);
    return bh__conf_conv_str(c, k, n, text, base);
}

/* RFC 9110 5.1: a field name is a token. One that carries the message's framing or routing, is
 * hop-by-hop, or is one bulkhead sets or reads itself cannot be given to bulkhead to set. */
int bh__conf_conv_header_name(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text,
                              void *base)
{
    /* clang-format off */
    static const char *const taken[] = {
        "content-length", "transfer-encoding", "host", "connection", "keep-alive", "te", "trailer",
        "upgrade", "proxy-connection", "expect", "via", "forwarded", "x-forwarded-for",
        "x-forwarded-proto", "x-forwarded-host", "bulkhead-deadline", "bulkhead-timeout",
        "x-client-cert-subject", "idempotency-key", "authorization", "cookie", "proxy-status"};
    /* clang-format on */
    size_t len = strlen(text);

    if (len > 64 || strspn(text, "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                 "abcdefghijklmnopqrstuvwxyz") != len)
        return bh__conf_fail(c, n, "invalid header name '%.64s' for %s, expected %s", text, c->path,
                             k->type->expect);
    for (size_t i = 0; i < sizeof taken / sizeof taken[0]; i++)
        if (strcasecmp(text, taken[i]) == 0)
            return bh__conf_fail(c, n, "header '%s' for %s is one bulkhead cannot set: %s", text,
                                 c->path,
                                 "it frames, routes or authenticates the request, or "
                                 "bulkhead sets it itself");
    return bh__conf_conv_str(c, k, n, text, base);
}

/* ---- lists of words or statuses -------------------------------------------------------- */

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
        return bh__conf_type_fail(c, n, k->type->expect);
    if (n->type == YAML_SCALAR_NODE && !bh__conf_is_null(n)) {
        char *s;
        if ((rc = bh__conf_scalar_text(c, n, k->type->expect, 0, &s)) != 0)
            return rc;
        rc = item(c, k, n, s, base);
        bh_free(s);
        return rc;
    }
    for (size_t i = 0; i < bh__conf_seq_len(n) && rc == 0; i++) {
        yaml_node_t *it = bh__conf_item(c, n, i);
        char *s;
        if ((rc = bh__conf_scalar_text(c, it, "a single value", 0, &s)) != 0)
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
        return bh__conf_word_fail(c, n, "retry condition", text, RETRY_ON_NAMES,
                                  COUNT(RETRY_ON_NAMES));
    *FIELD(base, k, uint32_t) |= bit;
    return 0;
}

static int count_item(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    uint32_t bit;

    if (lookup_word(text, COUNT_NAMES, COUNT(COUNT_NAMES), &bit) != 0)
        return bh__conf_word_fail(c, n, "breaker outcome", text, COUNT_NAMES, COUNT(COUNT_NAMES));
    *FIELD(base, k, uint32_t) |= bit;
    return 0;
}

static int status_item(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    bh_conf_retry_t *r = base;
    uint32_t v;
    spec_t one = *k;

    one.off = 0;
    if (bh__conf_conv_u32(c, &one, n, text, &v) != 0)
        return BH_ECONFIG;
    for (size_t i = 0; i < r->n_retriable_status; i++)
        if (r->retriable_status[i] == v)
            return 0;
    if (r->n_retriable_status == BH_CONF_MAX_STATUSES)
        return bh__conf_fail(c, n, "too many statuses in %s, expected at most %d", c->path,
                             BH_CONF_MAX_STATUSES);
    r->retriable_status[r->n_retriable_status++] = (uint16_t)v;
    return 0;
}

int bh__conf_conv_retry_on(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    *FIELD(base, k, uint32_t) = 0;
    return each_item(c, k, n, base, retry_on_item);
}

int bh__conf_conv_count(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    *FIELD(base, k, uint32_t) = 0;
    return each_item(c, k, n, base, count_item);
}

/* retriable_status: the row's field is the whole bh_conf_retry_t (the list and its length). */
int bh__conf_conv_statuses(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    bh_conf_retry_t *r = FIELD(base, k, bh_conf_retry_t);
    spec_t at = *k;

    at.off = 0;
    r->n_retriable_status = 0;
    return each_item(c, &at, n, r, status_item);
}
