/* Cross-field checks: rules between keys of one section (run once its keys are all set), between
 * items of a list, and the resolution of each route's target (check_root, run last).
 *
 * Order matters: a section's check runs after its own keys and defaults are converted, and the
 * top level's check_root after every section, so routes see complete upstreams and databases.
 * Until check_root, a route's timeouts not given hold INHERIT. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include "bh_alloc.h"
#include "bh_conf_int.h"

/* ---- one section ----------------------------------------------------------------------- */

/* max_idle and max_connections_per_user (databases only: an upstream pool has no such key, so
 * the lookup finds nothing) default to max_connections and may not exceed it; min_idle is at
 * most either. */
static int check_pool(ctx_t *c, yaml_node_t *map, void *base)
{
    bh_conf_pool_t *p = base;
    yaml_node_t *max_idle = bh__conf_lookup(c, map, "max_idle");
    yaml_node_t *per_user = bh__conf_lookup(c, map, "max_connections_per_user");
    char buf[300];

    if (per_user == NULL)
        p->max_per_user = p->max_connections;
    else if (p->max_per_user > p->max_connections)
        return bh__conf_fail(c, per_user,
                             "max_connections_per_user %" PRIu32 " %s is larger than "
                             "max_connections %" PRIu32 ", expected at most max_connections",
                             p->max_per_user, bh__conf_where(c, buf, sizeof buf),
                             p->max_connections);

    if (max_idle == NULL)
        p->max_idle = p->max_connections;
    else if (p->max_idle > p->max_connections)
        return bh__conf_fail(c, max_idle,
                             "max_idle %" PRIu32 " %s is larger than max_connections %" PRIu32
                             ", expected at most max_connections",
                             p->max_idle, bh__conf_where(c, buf, sizeof buf), p->max_connections);
    if (p->min_idle > p->max_idle)
        return bh__conf_fail(c, bh__conf_lookup(c, map, "min_idle"),
                             "min_idle %" PRIu32 " %s is larger than "
                             "max_idle %" PRIu32 ", expected at most max_idle",
                             p->min_idle, bh__conf_where(c, buf, sizeof buf), p->max_idle);
    /* A database pool warms min_idle connections per key: more than one key may hold. */
    if (p->min_idle > p->max_per_user)
        return bh__conf_fail(c, bh__conf_lookup(c, map, "min_idle"),
                             "min_idle %" PRIu32 " %s is larger than "
                             "max_connections_per_user %" PRIu32
                             ", expected at most max_connections_per_user",
                             p->min_idle, bh__conf_where(c, buf, sizeof buf), p->max_per_user);
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
    bh__conf_show_duration(lo, a, sizeof a);
    bh__conf_show_duration(hi, b, sizeof b);
    at = bh__conf_lookup(c, map, at_least ? hi_key : lo_key);
    if (at == NULL)
        at = bh__conf_lookup(c, map, at_least ? lo_key : hi_key);
    if (at_least)
        return bh__conf_fail(c, at ? at : map,
                             "%s %s %s is smaller than %s %s, expected at least %s", hi_key, b,
                             bh__conf_where(c, buf, sizeof buf), lo_key, a, lo_key);
    return bh__conf_fail(c, at ? at : map, "%s %s %s is larger than %s %s, expected at most %s",
                         lo_key, a, bh__conf_where(c, buf, sizeof buf), hi_key, b, hi_key);
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

/* auth: fixed needs its credentials and tokens; passthrough takes none of them. */
static int check_database(ctx_t *c, yaml_node_t *map, void *base)
{
    static const char *const fixed_only[] = {"user", "password", "dbname", "tokens"};
    bh_conf_database_t *d = base;
    yaml_node_t *auth = bh__conf_lookup(c, map, "auth");
    const char *missing = NULL;

    if (d->auth == BH_DB_AUTH_PASSTHROUGH) {
        for (size_t i = 0; i < COUNT(fixed_only); i++) {
            yaml_node_t *kn = bh__conf_key_node(c, map, fixed_only[i]);
            if (kn != NULL)
                return bh__conf_fail(c, kn,
                                     "key '%s' in %s applies only with auth: fixed, expected it "
                                     "removed (auth: passthrough takes the user, password and "
                                     "database from Neon-Connection-String)",
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
        return bh__conf_fail(c, auth, "auth: fixed in %s needs the key %s, expected it given",
                             c->path, missing);
    return 0;
}

/* ---- items of a list ------------------------------------------------------------------- */

/* Names a listener without one and rejects a name or address used twice. */
int bh__conf_check_listener(ctx_t *c, yaml_node_t *item, void *array, size_t i)
{
    bh_conf_listener_t *all = array, *l = &all[i];
    char buf[32];

    if (l->name == NULL) {
        snprintf(buf, sizeof buf, "listener%zu", i);
        if ((l->name = bh_strdup(buf)) == NULL)
            return bh__conf_oom(c);
    }
    for (size_t j = 0; j < i; j++) {
        if (strcmp(all[j].name, l->name) == 0) {
            yaml_node_t *vn = bh__conf_lookup(c, item, "name");
            return bh__conf_fail(c, vn ? vn : item,
                                 "duplicate listener name '%s' in %s (also listeners[%zu]), "
                                 "expected a unique name",
                                 l->name, c->path, j);
        }
        if (all[j].addr.salen == l->addr.salen &&
            memcmp(&all[j].addr.sa, &l->addr.sa, l->addr.salen) == 0)
            return bh__conf_fail(c, bh__conf_lookup(c, item, "address"),
                                 "duplicate listener address '%s' in %s "
                                 "(also listeners[%zu]), expected each address once",
                                 l->addr.text, c->path, j);
    }
    return 0;
}

/* Whether a route before i is named name. */
static bool route_name_taken(const bh_conf_route_t *all, size_t i, const char *name)
{
    for (size_t j = 0; j < i; j++)
        if (strcmp(all[j].name, name) == 0)
            return true;
    return false;
}

/* A route's name: a given one must be unique; without one it is "<host or *><path_prefix>",
 * made unique with "#<index>" (or "#<index>.<n>" when a route before it was given that name). */
static int route_name(ctx_t *c, yaml_node_t *item, bh_conf_route_t *all, size_t i)
{
    bh_conf_route_t *r = &all[i];

    if (r->name != NULL) {
        for (size_t j = 0; j < i; j++)
            if (strcmp(all[j].name, r->name) == 0)
                return bh__conf_fail(c, bh__conf_lookup(c, item, "name"),
                                     "duplicate route name '%s' in %s (also routes[%zu]), "
                                     "expected a unique name",
                                     r->name, c->path, j);
        return 0;
    }
    const char *host = r->host != NULL ? r->host : "*";
    const char *prefix = r->path_prefix != NULL ? r->path_prefix : "/";
    size_t n = strlen(host) + strlen(prefix) + 48;
    if ((r->name = bh_malloc(n)) == NULL)
        return bh__conf_oom(c);
    snprintf(r->name, n, "%s%s", host, prefix);
    if (route_name_taken(all, i, r->name))
        snprintf(r->name, n, "%s%s#%zu", host, prefix, i);
    for (size_t k = 2; route_name_taken(all, i, r->name); k++)
        snprintf(r->name, n, "%s%s#%zu.%zu", host, prefix, i, k);
    return 0;
}

/* A database route takes none of the HTTP forwarding keys, and of the timeouts only total. */
static int database_route_keys(ctx_t *c, yaml_node_t *item)
{
    static const struct {
        const char *key, *why;
    } http_only[] = {
        {"strip_prefix", "the path is not forwarded"},
        {"retry", "a database's retries are set under databases.<name>.retry"},
    };
    yaml_node_t *t;

    for (size_t j = 0; j < COUNT(http_only); j++)
        if ((t = bh__conf_key_node(c, item, http_only[j].key)) != NULL)
            return bh__conf_fail(c, t,
                                 "key '%s' in %s is not applicable to database routes (%s), "
                                 "expected it removed",
                                 http_only[j].key, c->path, http_only[j].why);
    t = bh__conf_lookup(c, item, "timeouts");
    if (t == NULL || t->type != YAML_MAPPING_NODE)
        return 0;
    for (yaml_node_pair_t *p = t->data.mapping.pairs.start; p < t->data.mapping.pairs.top; p++) {
        yaml_node_t *kn = bh__conf_node(c, p->key);
        if (strcmp((const char *)kn->data.scalar.value, "total") != 0)
            return bh__conf_fail(c, kn,
                                 "key '%s' in %s.timeouts is not applicable to database routes, "
                                 "expected only total (the others are set under "
                                 "databases.<name>.timeouts)",
                                 (const char *)kn->data.scalar.value, c->path);
    }
    return 0;
}

/* A route has exactly one target and a unique name. Targets are resolved later, in check_root. */
int bh__conf_check_route(ctx_t *c, yaml_node_t *item, void *array, size_t i)
{
    bh_conf_route_t *r = &((bh_conf_route_t *)array)[i];
    yaml_node_t *up = bh__conf_key_node(c, item, "upstream");
    yaml_node_t *db = bh__conf_key_node(c, item, "database");
    int rc;

    if (up == NULL && db == NULL)
        return bh__conf_fail(c, item,
                             "missing key 'upstream' or 'database' in %s, expected exactly one: "
                             "an upstream name (HTTP) or a database name (SQL over HTTP)",
                             c->path);
    if (up != NULL && db != NULL)
        return bh__conf_fail(c, up->start_mark.index > db->start_mark.index ? up : db,
                             "%s has both 'upstream' and 'database', expected exactly one of them",
                             c->path);
    if ((rc = route_name(c, item, array, i)) != 0)
        return rc;
    return r->database != NULL ? database_route_keys(c, item) : 0;
}

/* A host is mapped by one database at most, and listed once in it. */
int bh__conf_check_database_hosts(ctx_t *c, yaml_node_t *item, void *array, size_t i)
{
    bh_conf_database_t *dbs = array, *d = &dbs[i];
    for (size_t h = 0; h < d->n_hosts; h++)
        for (size_t j = 0; j <= i; j++)
            for (size_t g = 0; g < (j < i ? dbs[j].n_hosts : h); g++) {
                yaml_node_t *hosts = bh__conf_lookup(c, item, "hosts");
                if (strcmp(dbs[j].hosts[g], d->hosts[h]) != 0)
                    continue;
                bh__conf_path_key(c, "hosts");
                bh__conf_path_index(c, h);
                if (j == i)
                    return bh__conf_fail(
                        c, bh__conf_item(c, hosts, h),
                        "host '%s' in %s is also hosts[%zu], expected each host once", d->hosts[h],
                        c->path, g);
                return bh__conf_fail(c, bh__conf_item(c, hosts, h),
                                     "host '%s' in %s is already mapped by databases.%s, "
                                     "expected each host in one database only",
                                     d->hosts[h], c->path, dbs[j].name);
            }
    return 0;
}

/* ---- routes' targets ------------------------------------------------------------------- */

/* Fills a route's timeouts not given (INHERIT) from its target's. */
static void inherit_timeouts(bh_conf_timeouts_t *mine, const bh_conf_timeouts_t *from)
{
    for (const spec_t *k = bh__conf_specs; k < bh__conf_specs + bh__conf_n_specs; k++)
        if (k->sec == S_TIMEOUTS && *FIELD(mine, k, uint64_t) == INHERIT)
            *FIELD(mine, k, uint64_t) = *CFIELD(from, k, uint64_t);
}

/* "unknown <what> 'name' for routes[i].<what>": a suggestion from hint when there is one. */
static int unknown_target(ctx_t *c, yaml_node_t *routes, size_t i, const char *what,
                          const char *name, const hint_t *hint, const char *under)
{
    yaml_node_t *vn = bh__conf_lookup(c, bh__conf_item(c, routes, i), what);

    snprintf(c->path, sizeof c->path, "routes[%zu].%s", i, what);
    if (hint->match != NULL)
        return bh__conf_fail(c, vn, "unknown %s '%s' for %s, did you mean '%s'?", what, name,
                             c->path, hint->match);
    return bh__conf_fail(c, vn, "unknown %s '%s' for %s, expected a name defined under %s", what,
                         name, c->path, under);
}

/* A database route: resolves its database; its timeouts are the database's (with its own total
 * when given) and its retry is a copy of the database's. */
static int resolve_database(ctx_t *c, yaml_node_t *routes, bh_conf_t *conf, size_t i)
{
    bh_conf_route_t *r = &conf->routes[i];
    hint_t best = {r->database, NULL, SIZE_MAX};
    size_t d;

    for (d = 0; d < conf->n_databases; d++) {
        if (strcmp(conf->databases[d].name, r->database) == 0)
            break;
        bh__conf_hint_consider(&best, conf->databases[d].name);
    }
    if (d == conf->n_databases)
        return unknown_target(c, routes, i, "database", r->database, &best, "databases");
    r->database_index = d;
    r->upstream_index = SIZE_MAX;
    inherit_timeouts(&r->timeouts, &conf->databases[d].timeouts);
    r->retry = conf->databases[d].retry;
    return 0;
}

/* An upstream route: resolves its upstream and fills its timeouts not given from the
 * upstream's; a route without its own retry takes the upstream's, one with its own keeps the
 * upstream's budget. */
static int resolve_upstream(ctx_t *c, yaml_node_t *routes, bh_conf_t *conf, size_t i)
{
    bh_conf_route_t *r = &conf->routes[i];
    hint_t best = {r->upstream, NULL, SIZE_MAX};
    size_t u;

    r->database_index = SIZE_MAX;
    for (u = 0; u < conf->n_upstreams; u++) {
        if (strcmp(conf->upstreams[u].name, r->upstream) == 0)
            break;
        bh__conf_hint_consider(&best, conf->upstreams[u].name);
    }
    if (u == conf->n_upstreams)
        return unknown_target(c, routes, i, "upstream", r->upstream, &best, "upstreams");
    r->upstream_index = u;
    inherit_timeouts(&r->timeouts, &conf->upstreams[u].timeouts);
    if (!r->has_retry)
        r->retry = conf->upstreams[u].retry;
    r->retry.budget = conf->upstreams[u].retry.budget;
    return 0;
}

/* Resolves each route's upstream or database. */
static int check_root(ctx_t *c, yaml_node_t *map, void *base)
{
    bh_conf_t *conf = base;
    yaml_node_t *routes = bh__conf_lookup(c, map, "routes");

    for (size_t i = 0; i < conf->n_routes; i++) {
        int rc = conf->routes[i].database != NULL ? resolve_database(c, routes, conf, i)
                                                  : resolve_upstream(c, routes, conf, i);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* ---- dispatch -------------------------------------------------------------------------- */

typedef int (*hook_fn)(ctx_t *c, yaml_node_t *map, void *base);

static const hook_fn HOOKS[S_COUNT] = {
    [S_ROOT] = check_root,
    [S_POOL] = check_pool,
    [S_BACKOFF] = check_backoff,
    [S_BREAKER] = check_breaker,
    [S_HEALTH] = check_health,
    [S_DATABASE] = check_database,
    [S_DB_POOL] = check_pool,
    [S_DB_BREAKER] = check_breaker,
    [S_UPSTREAM] = bh__conf_check_upstream,
    [S_LISTENER_TLS] = bh__conf_check_listener_tls,
    [S_TLS_CERT] = bh__conf_check_tls_cert,
    [S_UPSTREAM_TLS] = bh__conf_check_upstream_tls,
};

int bh__conf_check_section(ctx_t *c, enum sec sec, yaml_node_t *map, void *base)
{
    return HOOKS[sec] != NULL ? HOOKS[sec](c, map, base) : 0;
}
