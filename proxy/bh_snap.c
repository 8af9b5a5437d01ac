/* Config snapshots: a loaded config with the process-wide state built for it. A reload builds a
 * new snapshot next to the current one; upstreams and databases whose settings did not change
 * carry their shared state (connection cap, breaker, retry budget, outlier state) over, so a
 * reload neither resets a tripped breaker nor lets the old and new pools double the cap. */
#include <string.h>
#include <uv.h>
#include "bh_alloc.h"
#include "bh_log.h"
#include "bh_proxy.h"
#include "bh_tls_ctx.h"

static void cref_unref(bh_cref_t *c)
{
    if (c != NULL && atomic_fetch_sub(&c->refs, 1) == 1) {
        bh_conf_free(c->conf);
        bh_free(c);
    }
}

static bh_cref_t *cref_ref(bh_cref_t *c)
{
    atomic_fetch_add(&c->refs, 1);
    return c;
}

void bh_ushared_unref(bh_ushared_t *u)
{
    if (u != NULL && atomic_fetch_sub(&u->refs, 1) == 1) {
        bh_upstream_shared_destroy(&u->s);
        cref_unref(u->origin);
        bh_free(u);
    }
}

static void db_unref(bh_sql_db_t *d)
{
    if (d != NULL && atomic_fetch_sub(&d->refs, 1) == 1) {
        bh_sql_db_destroy(d);
        cref_unref(d->origin);
        bh_free(d);
    }
}

bh_snap_t *bh_snap_ref(bh_snap_t *s)
{
    atomic_fetch_add(&s->refs, 1);
    return s;
}

void bh_snap_unref(bh_snap_t *s)
{
    if (s == NULL || atomic_fetch_sub(&s->refs, 1) != 1)
        return;
    const bh_conf_t *conf = s->conf;
    for (size_t i = 0; s->upstreams != NULL && i < conf->n_upstreams; i++)
        bh_ushared_unref(s->upstreams[i]);
    for (size_t i = 0; s->databases != NULL && i < conf->n_databases; i++)
        db_unref(s->databases[i]);
    for (size_t i = 0; s->ep_m != NULL && i < conf->n_upstreams; i++)
        bh_free(s->ep_m[i]);
    bh_free(s->upstreams);
    bh_free(s->databases);
    bh_free(s->route_m);
    bh_free(s->up_m);
    bh_free(s->db_m);
    bh_free(s->ep_m);
    for (size_t i = 0; s->listener_tls != NULL && i < conf->n_listeners; i++)
        bh_tls_ctx_free(s->listener_tls[i]);
    bh_free(s->listener_tls);
    cref_unref(s->cref);
    bh_free(s);
}

static bh_ushared_t *upstream_for(bh_server_t *srv, bh_snap_t *s, size_t i, const bh_snap_t *old,
                                  uint64_t now)
{
    const bh_conf_upstream_t *uc = &s->conf->upstreams[i];
    for (size_t j = 0; old != NULL && j < old->conf->n_upstreams; j++) {
        bh_ushared_t *u = old->upstreams[j];
        if (bh_conf_upstream_equal(bh_ushared_conf(u), uc)) {
            atomic_fetch_add(&u->refs, 1);
            return u;
        }
    }
    bh_ushared_t *u = bh_calloc(1, sizeof(*u));
    if (u == NULL)
        return NULL;
    /* conf->workers: a reload keeps the running count (bh_server_reload) */
    if (bh_upstream_shared_init(&u->s, uc, s->conf->workers, now) < 0) {
        bh_upstream_shared_destroy(&u->s);
        bh_free(u);
        return NULL;
    }
    atomic_init(&u->refs, 1);
    u->origin = cref_ref(s->cref);
    u->index = i;
    return u;
}

static bh_sql_db_t *database_for(bh_snap_t *s, size_t i, const bh_snap_t *old, uint64_t now)
{
    const bh_conf_database_t *dc = &s->conf->databases[i];
    for (size_t j = 0; old != NULL && j < old->conf->n_databases; j++) {
        bh_sql_db_t *d = old->databases[j];
        if (bh_conf_database_equal(&d->origin->conf->databases[d->index], dc)) {
            atomic_fetch_add(&d->refs, 1);
            return d;
        }
    }
    bh_sql_db_t *d = bh_calloc(1, sizeof(*d));
    if (d == NULL)
        return NULL;
    if (bh_sql_db_init(d, dc, now) < 0) {
        bh_sql_db_destroy(d);
        bh_free(d);
        return NULL;
    }
    atomic_init(&d->refs, 1);
    d->origin = cref_ref(s->cref);
    d->index = i;
    return d;
}

/* The listeners' TLS contexts: built anew for every snapshot, so a reload serves new connections
 * with the certificates it loaded while open ones keep theirs. */
static int listeners_tls(bh_snap_t *s)
{
    const bh_conf_t *conf = s->conf;
    s->listener_tls = bh_calloc(conf->n_listeners ? conf->n_listeners : 1, sizeof(SSL_CTX *));
    if (s->listener_tls == NULL)
        return BH_ENOMEM;
    for (size_t i = 0; i < conf->n_listeners; i++) {
        const bh_conf_listener_t *l = &conf->listeners[i];
        char err[256];
        if (!l->tls.enabled)
            continue;
        if ((s->listener_tls[i] = bh_tls_server_ctx(&l->tls, l->addr.text, err, sizeof(err))) == NULL) {
            bh_log_error("listener %s: %s", l->name, err);
            return BH_ECONFIG;
        }
    }
    return 0;
}

SSL_CTX *bh_listener_tls(bh_worker_t *w, const bh_listener_t *l, const bh_conf_listener_tls_t **tc)
{
    const bh_conf_t *conf = w->gen->conf;
    for (size_t i = 0; i < conf->n_listeners; i++) {
        if (strcmp(conf->listeners[i].addr.text, l->addr) == 0) {
            *tc = &conf->listeners[i].tls;
            return w->gen->snap->listener_tls[i];
        }
    }
    *tc = NULL;
    return NULL;
}

int bh_snap_new(bh_server_t *srv, bh_conf_t *conf, const bh_snap_t *old, bh_snap_t **out)
{
    *out = NULL;
    bh_snap_t *s = bh_calloc(1, sizeof(*s));
    bh_cref_t *cref = bh_calloc(1, sizeof(*cref));
    if (s == NULL || cref == NULL) {
        bh_free(s);
        bh_free(cref);
        bh_conf_free(conf);
        return BH_ENOMEM;
    }
    atomic_init(&cref->refs, 1);
    cref->conf = conf;
    atomic_init(&s->refs, 1);
    s->cref = cref;
    s->conf = conf;
    size_t nu = conf->n_upstreams ? conf->n_upstreams : 1;
    size_t nd = conf->n_databases ? conf->n_databases : 1;
    s->upstreams = bh_calloc(nu, sizeof(*s->upstreams));
    s->databases = bh_calloc(nd, sizeof(*s->databases));
    s->route_m = bh_calloc(conf->n_routes ? conf->n_routes : 1, sizeof(*s->route_m));
    s->up_m = bh_calloc(nu, sizeof(*s->up_m));
    s->db_m = bh_calloc(nd, sizeof(*s->db_m));
    s->ep_m = bh_calloc(nu, sizeof(*s->ep_m));
    int rc = 0;
    if (s->upstreams == NULL || s->databases == NULL || s->route_m == NULL || s->up_m == NULL ||
        s->db_m == NULL || s->ep_m == NULL)
        rc = BH_ENOMEM;
    uint64_t now = uv_hrtime() / 1000000;
    bh_metrics_t *m = &srv->metrics;
    for (size_t i = 0; rc == 0 && i < conf->n_upstreams; i++) {
        const bh_conf_upstream_t *uc = &conf->upstreams[i];
        if ((s->upstreams[i] = upstream_for(srv, s, i, old, now)) == NULL ||
            (s->up_m[i] = bh_metrics_entry(m, BH_M_UPSTREAM, uc->name, NULL)) == NULL ||
            (s->ep_m[i] = bh_calloc(uc->n_endpoints, sizeof(**s->ep_m))) == NULL) {
            rc = BH_ENOMEM;
            break;
        }
        for (size_t j = 0; j < uc->n_endpoints; j++)
            if ((s->ep_m[i][j] =
                     bh_metrics_entry(m, BH_M_ENDPOINT, uc->endpoints[j].text, s->up_m[i])) == NULL)
                rc = BH_ENOMEM;
    }
    for (size_t i = 0; rc == 0 && i < conf->n_databases; i++)
        if ((s->databases[i] = database_for(s, i, old, now)) == NULL ||
            (s->db_m[i] = bh_metrics_entry(m, BH_M_DATABASE, conf->databases[i].name, NULL)) ==
                NULL)
            rc = BH_ENOMEM;
    for (size_t i = 0; rc == 0 && i < conf->n_routes; i++)
        if ((s->route_m[i] = bh_metrics_entry(m, BH_M_ROUTE, conf->routes[i].name, NULL)) == NULL)
            rc = BH_ENOMEM;
    if (rc == 0)
        rc = listeners_tls(s);
    if (rc < 0) {
        bh_snap_unref(s);
        return rc;
    }
    *out = s;
    return 0;
}
