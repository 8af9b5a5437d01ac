/* Node converters: keys whose value is a mapping or a list (sections, listeners, routes,
 * endpoints, methods) and the name maps of upstreams and databases.
 *
 * Arrays are allocated zeroed and their count set before the items are parsed, so that
 * bh_conf_free copes with an array cut short by an error. */
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include "bh_alloc.h"
#include "bh_conf_int.h"

#define NAME_CHARS "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."

/* ---- sections -------------------------------------------------------------------------- */

int bh__conf_conv_section(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    if (n != NULL && n->type != YAML_MAPPING_NODE && !bh__conf_is_null(n))
        return bh__conf_type_fail(c, n, k->type->expect);
    return bh__conf_parse_section(c, k->sub, n, (char *)base + k->off, 1);
}

/* A route's timeouts: only the keys given; the rest stay INHERIT until check_root. */
int bh__conf_conv_override(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    bh_conf_timeouts_t *t = FIELD(base, k, bh_conf_timeouts_t);

    t->connect_ms = t->first_byte_ms = t->idle_ms = t->total_ms = INHERIT;
    if (n != NULL && n->type != YAML_MAPPING_NODE && !bh__conf_is_null(n))
        return bh__conf_type_fail(c, n, k->type->expect);
    return n == NULL ? 0 : bh__conf_parse_section(c, S_TIMEOUTS, n, t, 0);
}

/* health_check: absent = disabled; present (even empty) = enabled with defaults. */
int bh__conf_conv_health(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    bh_conf_health_t *h = FIELD(base, k, bh_conf_health_t);

    if (n == NULL)
        return 0;
    if (n->type != YAML_MAPPING_NODE && !bh__conf_is_null(n))
        return bh__conf_type_fail(c, n, k->type->expect);
    h->enabled = true;
    return bh__conf_parse_section(c, k->sub, n, h, 1);
}

/* A route's retry: the whole section replaces the upstream's (keys not given take the
 * defaults, not the upstream's values); the budget stays the upstream's (check_root). */
int bh__conf_conv_route_retry(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text,
                              void *base)
{
    bh_conf_route_t *r = base;
    yaml_node_t *budget;
    char buf[300];
    size_t old;
    int rc;

    if (n == NULL)
        return 0;
    if (n->type != YAML_MAPPING_NODE && !bh__conf_is_null(n))
        return bh__conf_type_fail(c, n, k->type->expect);
    if ((budget = bh__conf_lookup(c, n, "budget")) != NULL) {
        for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++)
            if (bh__conf_node(c, p->value) == budget)
                budget = bh__conf_node(c, p->key);
        return bh__conf_fail(c, budget,
                             "key 'budget' %s is per upstream, expected it under "
                             "upstreams.<name>.retry.budget",
                             bh__conf_where(c, buf, sizeof buf));
    }
    r->has_retry = true;
    old = strlen(c->path);
    rc = bh__conf_parse_section(c, S_RETRY, n, &r->retry, 1);
    bh__conf_path_pop(c, old);
    return rc;
}

/* ---- lists and name maps --------------------------------------------------------------- */

/* Checks item i of a list (element i of a name map) once parsed, those before it already
 * parsed too (bh_conf_check.c). */
typedef int (*item_check_fn)(ctx_t *c, yaml_node_t *item, void *array, size_t i);

/* A list of mappings of one section -> a zeroed array of structs, parsed item by item. */
static int parse_list(ctx_t *c, yaml_node_t *n, enum sec sec, size_t size, void *array,
                      item_check_fn check)
{
    size_t len = bh__conf_seq_len(n);

    for (size_t i = 0; i < len; i++) {
        yaml_node_t *item = bh__conf_item(c, n, i);
        size_t old = bh__conf_path_index(c, i);
        void *elem = (char *)array + i * size;
        int rc = item->type != YAML_MAPPING_NODE ? bh__conf_type_fail(c, item, "a mapping")
                                                 : bh__conf_parse_section(c, sec, item, elem, 1);
        if (rc == 0 && check != NULL)
            rc = check(c, item, array, i);
        bh__conf_path_pop(c, old);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int bh__conf_conv_listeners(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    bh_conf_t *conf = base;
    size_t len = bh__conf_seq_len(n);

    if (n->type != YAML_SEQUENCE_NODE && !bh__conf_is_null(n))
        return bh__conf_type_fail(c, n, k->type->expect);
    if (len == 0)
        return bh__conf_fail(
            c, n, "no listeners given in %s, expected at least one {name, address}", c->path);
    if ((conf->listeners = bh_calloc(len, sizeof *conf->listeners)) == NULL)
        return bh__conf_oom(c);
    conf->n_listeners = len;
    return parse_list(c, n, S_LISTENER, sizeof *conf->listeners, conf->listeners,
                      bh__conf_check_listener);
}

int bh__conf_conv_routes(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    bh_conf_t *conf = base;
    size_t len;

    if (n == NULL || bh__conf_is_null(n))
        return 0;
    if (n->type != YAML_SEQUENCE_NODE)
        return bh__conf_type_fail(c, n, k->type->expect);
    if ((len = bh__conf_seq_len(n)) == 0)
        return 0;
    if ((conf->routes = bh_calloc(len, sizeof *conf->routes)) == NULL)
        return bh__conf_oom(c);
    conf->n_routes = len;
    return parse_list(c, n, S_ROUTE, sizeof *conf->routes, conf->routes, bh__conf_check_route);
}

/* One endpoint: host:port, or https://host[:port] (every endpoint of an upstream or none, so
 * the first one decides; check_upstream turns TLS on for them). */
static int endpoint_item(ctx_t *c, yaml_node_t *item, bh_conf_addr_t *addr, size_t i)
{
    const char *why;
    bool https;
    char *s;
    int rc = bh__conf_scalar_text(c, item, "host:port", 0, &s);

    if (rc != 0)
        return rc;
    rc = bh__conf_parse_endpoint(s, addr, &https, &why);
    if (rc == BH_ENOMEM)
        rc = bh__conf_oom(c);
    else if (rc != 0)
        rc = bh__conf_fail(c, item,
                           "invalid endpoint '%.64s' for %s%s, expected host:port, [v6]:port or "
                           "https://host[:port], e.g. 10.0.0.5:8080 or https://api.example.com",
                           s, c->path, why);
    else if (i == 0)
        c->https_endpoint = https ? item : NULL;
    else if (https != (c->https_endpoint != NULL))
        rc = bh__conf_fail(c, item,
                           "endpoint '%.64s' for %s is %s but endpoints[0] is %s, expected "
                           "every endpoint of an upstream written https:// or none",
                           s, c->path, https ? "https://" : "plain", https ? "plain" : "https://");
    bh_free(s);
    return rc;
}

int bh__conf_conv_endpoints(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    bh_conf_upstream_t *u = base;
    size_t len = bh__conf_seq_len(n);

    c->https_endpoint = NULL;
    if (n->type != YAML_SEQUENCE_NODE && !bh__conf_is_null(n))
        return bh__conf_type_fail(c, n, k->type->expect);
    if (len == 0)
        return bh__conf_fail(c, n, "no endpoints given in %s, expected at least one host:port",
                             c->path);
    if ((u->endpoints = bh_calloc(len, sizeof *u->endpoints)) == NULL)
        return bh__conf_oom(c);
    u->n_endpoints = len;
    for (size_t i = 0; i < len; i++) {
        size_t old = bh__conf_path_index(c, i);
        int rc = endpoint_item(c, bh__conf_item(c, n, i), &u->endpoints[i], i);

        bh__conf_path_pop(c, old);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* A mapping from names to sections of one kind (upstreams, databases): one element per name, the
 * name checked and copied into the element's name slot, the section parsed into it, then check
 * run on element i with the others before it already parsed. */
typedef struct named_map {
    const char *kind;      /* "upstream", as in "invalid upstream name" */
    enum sec sec;          /* the section of each element */
    const char *expect;    /* what an element looks like, for messages */
    bool null_ok;          /* an empty element means all defaults */
    size_t size, name_off; /* of an element, and of its char *name */
    item_check_fn check;   /* may be NULL */
} named_map_t;

static int conv_named_map(ctx_t *c, const spec_t *k, yaml_node_t *n, const named_map_t *m,
                          void **elems, size_t *count)
{
    if (n == NULL || bh__conf_is_null(n))
        return 0;
    if (n->type != YAML_MAPPING_NODE)
        return bh__conf_type_fail(c, n, k->type->expect);
    size_t len = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
    char *arr = bh_calloc(len, m->size);
    if (arr == NULL)
        return bh__conf_oom(c);
    *elems = arr;
    *count = len; /* set before parsing: bh_conf_free walks every element on failure */
    for (size_t i = 0; i < len; i++) {
        yaml_node_pair_t *p = &n->data.mapping.pairs.start[i];
        yaml_node_t *kn = bh__conf_node(c, p->key), *vn = bh__conf_node(c, p->value);
        char *elem = arr + i * m->size;
        const char *name = kn->type == YAML_SCALAR_NODE ? (const char *)kn->data.scalar.value : "";
        size_t old;
        int rc;

        if (name[0] == '\0' || strspn(name, NAME_CHARS) != strlen(name))
            return bh__conf_fail(c, kn,
                                 "invalid %s name '%.64s' in %s, expected letters, digits, "
                                 "'-', '_' or '.'",
                                 m->kind, name, c->path);
        if ((rc = bh__conf_check_dup_key(c, n, p)) != 0)
            return rc;
        if ((*(char **)(elem + m->name_off) = bh_strdup(name)) == NULL)
            return bh__conf_oom(c);
        old = bh__conf_path_key(c, name);
        rc = vn->type != YAML_MAPPING_NODE && !(m->null_ok && bh__conf_is_null(vn))
                 ? bh__conf_type_fail(c, vn, m->expect)
                 : bh__conf_parse_section(c, m->sec, vn, elem, 1);
        if (rc == 0 && m->check != NULL)
            rc = m->check(c, vn, arr, i);
        bh__conf_path_pop(c, old);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* upstreams: a mapping from upstream name to its settings. */
int bh__conf_conv_upstreams(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    static const named_map_t m = {"upstream",
                                  S_UPSTREAM,
                                  "a mapping with endpoints, pool and timeouts",
                                  true,
                                  sizeof(bh_conf_upstream_t),
                                  offsetof(bh_conf_upstream_t, name),
                                  NULL};
    bh_conf_t *conf = base;
    return conv_named_map(c, k, n, &m, (void **)&conf->upstreams, &conf->n_upstreams);
}

/* databases: a mapping from database name to its settings; a host is mapped by one only. */
int bh__conf_conv_databases(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    static const named_map_t m = {"database",
                                  S_DATABASE,
                                  "a mapping with hosts and server",
                                  false,
                                  sizeof(bh_conf_database_t),
                                  offsetof(bh_conf_database_t, name),
                                  bh__conf_check_database_hosts};
    bh_conf_t *conf = base;
    return conv_named_map(c, k, n, &m, (void **)&conf->databases, &conf->n_databases);
}

/* ---- methods --------------------------------------------------------------------------- */

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
        return bh__conf_fail(
            c, n, "unknown method '%s' in %s, did you mean '%s'? (methods are case-sensitive)",
            text, c->path, upper);
    return bh__conf_fail(
        c, n,
        "unknown method '%.64s' in %s, expected GET, HEAD, POST, PUT, DELETE, CONNECT, "
        "OPTIONS, TRACE, PATCH or * (any)",
        text, c->path);
}

/* methods: a list of method names, or one name; "*" = any method (the default). */
int bh__conf_conv_methods(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    uint32_t *bits = FIELD(base, k, uint32_t);
    size_t len;

    *bits = 0;
    if (n == NULL)
        return method_item(c, NULL, k->def, bits);
    if (n->type != YAML_SEQUENCE_NODE) {
        char *s;
        int rc = bh__conf_scalar_text(c, n, k->type->expect, 0, &s);
        if (rc == 0) {
            rc = method_item(c, n, s, bits);
            bh_free(s);
        }
        return rc;
    }
    if ((len = bh__conf_seq_len(n)) == 0)
        return bh__conf_fail(c, n, "no methods given in %s, expected %s", c->path, k->type->expect);
    for (size_t i = 0; i < len; i++) {
        yaml_node_t *item = bh__conf_item(c, n, i);
        char *s;
        int rc = bh__conf_scalar_text(c, item, "a method name", 0, &s);
        if (rc == 0) {
            rc = method_item(c, item, s, bits);
            bh_free(s);
        }
        if (rc != 0)
            return rc;
    }
    return 0;
}
