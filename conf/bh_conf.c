/* Loads the YAML config into one frozen bh_conf_t, driven by one table of every key and default.
 *
 * How it works: the key table (bh_conf_keys.c) lists, per section, each key with its type (a
 * converter plus the phrase used in "expected ..." messages), the field it fills and its default
 * written as a user would write it. bh__conf_parse_section() walks one YAML mapping against the
 * rows of its section: it rejects unknown, duplicate and not-yet-supported keys, converts the
 * given ones, then converts the defaults of the missing ones with the same converters, then runs
 * the section's cross-field check (bh_conf_check.c). Every scalar passes through ${VAR}
 * substitution before conversion. Converters return 0, BH_ECONFIG (err filled) or BH_ENOMEM; on
 * any failure the half-built snapshot is freed by bh_conf_free, which copes with every partially
 * filled state. bh_conf_int.h lists which file holds what. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "bh_alloc.h"
#include "bh_conf_int.h"

#define MAX_FILE (16u << 20) /* largest config file read */

/* ---- the section walker ---------------------------------------------------------------- */

/* A key of the shared shape (upstreams) that a database section does not take, and why. */
static int not_applicable(ctx_t *c, enum sec sec, yaml_node_t *kn, const spec_t *na)
{
    char list[300] = "", buf[300];
    size_t len = 0;

    for (const spec_t *k = bh__conf_specs; k < bh__conf_specs + bh__conf_n_specs; k++)
        if (k->sec == sec && k->type != NULL && !(k->flags & F_NA) && len < sizeof list)
            len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", len ? ", " : "", k->key);
    return bh__conf_fail(c, kn,
                         "key '%s' %s is not applicable to databases (%s), expected only: %s",
                         na->key, bh__conf_where(c, buf, sizeof buf), na->why, list);
}

/* Converts one key: scalar types get their substituted text (or their default's). */
static int convert(ctx_t *c, const spec_t *k, yaml_node_t *n, void *base)
{
    const type_t *t = k->type;
    char *text;
    int rc;

    if (t->flags & T_NODE)
        return t->conv(c, k, n, NULL, base);
    rc = n != NULL ? bh__conf_scalar_text(c, n, t->expect, t->flags & T_EMPTY_OK, &text)
                   : bh__conf_subst(c, NULL, k->def, strlen(k->def), &text);
    if (rc != 0)
        return rc;
    rc = t->conv(c, k, n, text, base);
    bh_free(text);
    return rc;
}

/* One pair of the mapping: its key must be a row of sec, supported and applicable here. */
static int given_key(ctx_t *c, enum sec sec, yaml_node_t *map, yaml_node_pair_t *p, void *base)
{
    yaml_node_t *kn = bh__conf_node(c, p->key);
    const char *key;
    const spec_t *k;
    char buf[300];
    size_t old;
    int rc;

    if (kn->type != YAML_SCALAR_NODE)
        return bh__conf_fail(c, kn, "a key %s is %s, expected a plain name",
                             bh__conf_where(c, buf, sizeof buf), bh__conf_kind_name(kn));
    key = (const char *)kn->data.scalar.value;
    if ((rc = bh__conf_check_dup_key(c, map, p)) != 0)
        return rc;
    for (k = bh__conf_specs; k < bh__conf_specs + bh__conf_n_specs; k++)
        if (k->sec == sec && strcmp(k->key, key) == 0)
            break;
    if (k == bh__conf_specs + bh__conf_n_specs)
        return bh__conf_unknown_key(c, sec, kn, key);
    if (k->type == NULL)
        return bh__conf_fail(c, kn,
                             "key '%s' %s is recognised but not supported yet by this version "
                             "(bulkhead %s), expected it removed",
                             key, bh__conf_where(c, buf, sizeof buf), BH_VERSION);
    if (k->flags & F_NA)
        return not_applicable(c, sec, kn, k);
    old = bh__conf_path_key(c, key);
    rc = convert(c, k, bh__conf_node(c, p->value), base);
    bh__conf_path_pop(c, old);
    return rc;
}

/* The rows of sec the mapping did not give: a required one fails; with defaults, the others take
 * their default (a node type also runs without one: absent may mean something to it). Every key
 * of the mapping was a row of sec (given_key), so "given" is "present in the mapping". */
static int missing_keys(ctx_t *c, enum sec sec, yaml_node_t *map, void *base, int defaults)
{
    char buf[300];

    for (const spec_t *k = bh__conf_specs; k < bh__conf_specs + bh__conf_n_specs; k++) {
        size_t old;
        int rc;

        if (k->sec != sec || k->type == NULL || bh__conf_key_node(c, map, k->key) != NULL)
            continue;
        if (k->flags & F_REQUIRED)
            return bh__conf_fail(c, map, "missing required key '%s' %s, expected %s", k->key,
                                 bh__conf_where(c, buf, sizeof buf), k->type->expect);
        if (!defaults || (k->def == NULL && !(k->type->flags & T_NODE)))
            continue;
        old = bh__conf_path_key(c, k->key);
        rc = convert(c, k, NULL, base);
        bh__conf_path_pop(c, old);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int bh__conf_parse_section(ctx_t *c, enum sec sec, yaml_node_t *map, void *base, int defaults)
{
    int rc;

    if (map != NULL && map->type == YAML_MAPPING_NODE)
        for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
             p++)
            if ((rc = given_key(c, sec, map, p, base)) != 0)
                return rc;
    if ((rc = missing_keys(c, sec, map, base, defaults)) != 0)
        return rc;
    return bh__conf_check_section(c, sec, map, base);
}

/* ---- loading --------------------------------------------------------------------------- */

/* Builds the snapshot from the parsed document. */
static int build(ctx_t *c, bh_conf_t *conf)
{
    yaml_node_t *root = yaml_document_get_root_node(c->doc);

    if (root != NULL && root->type != YAML_MAPPING_NODE && !bh__conf_is_null(root))
        return bh__conf_fail(c, root,
                             "the top level is %s, expected a mapping of settings (listeners, "
                             "upstreams, routes, ...)",
                             bh__conf_kind_name(root));
    return bh__conf_parse_section(c, S_ROOT, root, conf, 1);
}

int bh_conf_load_string(const char *name, const char *yaml, size_t len, bh_conf_t **out,
                        bh_conf_error_t *err)
{
    yaml_document_t doc;
    ctx_t c = {.name = name, .doc = &doc, .err = err};
    bh_conf_t *conf;
    int rc;

    *out = NULL;
    err->msg[0] = '\0';
    if ((rc = bh__conf_yaml_load(&c, yaml, len, &doc)) != 0)
        return rc;
    conf = bh_calloc(1, sizeof *conf);
    c.conf = conf;
    if (conf == NULL || (conf->path = bh_strdup(name)) == NULL)
        rc = bh__conf_oom(&c);
    else
        rc = build(&c, conf);
    yaml_document_delete(&doc);
    if (rc != 0) {
        bh_conf_free(conf);
        return rc;
    }
    *out = conf;
    return 0;
}

/* Reads the whole file (at most MAX_FILE bytes) into *buf (bh_malloc'd, *buf may be set on
 * failure too), its length into *len. */
static int read_file(const char *path, int fd, char **buf, size_t *len, bh_conf_error_t *err)
{
    size_t cap = 0;

    for (;;) {
        ssize_t n;
        if (*len == cap) {
            char *p;
            if (cap >= MAX_FILE) {
                snprintf(err->msg, sizeof err->msg, "%s: file too large, expected at most 16MiB",
                         path);
                return BH_ECONFIG;
            }
            cap = cap ? cap * 2 : 4096;
            if ((p = bh_realloc(*buf, cap)) == NULL) {
                snprintf(err->msg, sizeof err->msg, "%s: out of memory", path);
                return BH_ENOMEM;
            }
            *buf = p;
        }
        n = read(fd, *buf + *len, cap - *len);
        if (n == 0)
            return 0;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err->msg, sizeof err->msg, "%s: cannot read: %s", path, strerror(errno));
            return BH_ECONFIG;
        }
        *len += (size_t)n;
    }
}

int bh_conf_load(const char *path, bh_conf_t **out, bh_conf_error_t *err)
{
    char *buf = NULL;
    size_t len = 0;
    int fd, rc;

    *out = NULL;
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
        snprintf(err->msg, sizeof err->msg, "%s: cannot open: %s", path, strerror(errno));
        return BH_ECONFIG;
    }
    rc = read_file(path, fd, &buf, &len, err);
    close(fd);
    if (rc == 0)
        rc = bh_conf_load_string(path, buf, len, out, err);
    bh_free(buf);
    return rc;
}

/* ---- freeing --------------------------------------------------------------------------- */

static void free_strings(char **arr, size_t n)
{
    for (size_t i = 0; i < n; i++)
        bh_free(arr[i]);
    bh_free(arr);
}

static void free_upstream(bh_conf_upstream_t *u)
{
    bh_free(u->name);
    bh__conf_tls_upstream_clear(&u->tls);
    for (size_t j = 0; j < u->n_endpoints; j++)
        bh__conf_addr_clear(&u->endpoints[j]);
    bh_free(u->endpoints);
    bh_free(u->health_check.path);
}

static void free_database(bh_conf_database_t *d)
{
    bh_free(d->name);
    free_strings(d->hosts, d->n_hosts);
    bh_free(d->server);
    bh_free(d->user);
    bh_free(d->password);
    bh_free(d->dbname);
    free_strings(d->tokens, d->n_tokens);
    free_strings(d->session_keys, d->n_session);
    free_strings(d->session_values, d->n_session);
}

void bh_conf_free(bh_conf_t *conf)
{
    if (conf == NULL)
        return;
    for (size_t i = 0; i < conf->n_listeners; i++) {
        bh_free(conf->listeners[i].name);
        bh__conf_addr_clear(&conf->listeners[i].addr);
        bh__conf_tls_listener_clear(&conf->listeners[i].tls);
    }
    bh_free(conf->listeners);
    bh__conf_addr_clear(&conf->admin.addr);
    bh_free(conf->admin.token);
    bh_free(conf->log.access);
    bh_free(conf->request_id.header);
    for (size_t i = 0; i < conf->n_upstreams; i++)
        free_upstream(&conf->upstreams[i]);
    bh_free(conf->upstreams);
    for (size_t i = 0; i < conf->n_databases; i++)
        free_database(&conf->databases[i]);
    bh_free(conf->databases);
    for (size_t i = 0; i < conf->n_routes; i++) {
        bh_free(conf->routes[i].name);
        bh_free(conf->routes[i].host);
        bh_free(conf->routes[i].path_prefix);
        bh_free(conf->routes[i].upstream);
        bh_free(conf->routes[i].database);
    }
    bh_free(conf->routes);
    free_strings(conf->warnings, conf->n_warnings);
    bh_free(conf->path);
    bh_free(conf);
}
