/* Comparing upstreams and databases of two snapshots (a reload keeps the state of those that did
 * not change), derived from the key table: no field is listed here by hand.
 *
 * A section compares equal when every row of the key table for that section compares equal,
 * by the storage kind of the row's type (bh_conf_int.h, enum kind); nested sections recurse
 * into their own rows. Rows a section rejects (F_NA) are compared too: their defaults fill the
 * fields. What is not a row, the name of an upstream or database (the key of its name map), is
 * compared by bh_conf_upstream_equal and bh_conf_database_equal themselves. */
#include <stddef.h>
#include <string.h>
#include "bh_conf_int.h"

_Static_assert(sizeof(enum bh_log_level) == sizeof(int) &&
                   sizeof(enum bh_balance_policy) == sizeof(int) &&
                   sizeof(enum bh_db_auth) == sizeof(int) &&
                   sizeof(enum bh_db_reset) == sizeof(int) &&
                   sizeof(enum bh_tls_verify_client) == sizeof(int),
               "K_ENUM fields are compared as int");
_Static_assert(offsetof(bh_conf_tls_cert_t, cert) == 0,
               "K_TLS_CERT: the cert row's field is the whole bh_conf_tls_cert_t");

static bool rows_equal(enum sec sec, const void *a, const void *b);

static bool str_eq(const char *a, const char *b)
{
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static bool strs_eq(char *const *a, size_t na, char *const *b, size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++)
        if (!str_eq(a[i], b[i]))
            return false;
    return true;
}

/* retriable_status: the row's field is the whole bh_conf_retry_t (the list and its length). */
static bool statuses_eq(const bh_conf_retry_t *a, const bh_conf_retry_t *b)
{
    if (a->n_retriable_status != b->n_retriable_status)
        return false;
    for (size_t i = 0; i < a->n_retriable_status; i++)
        if (a->retriable_status[i] != b->retriable_status[i])
            return false;
    return true;
}

/* Endpoints as written, in order. */
static bool endpoints_eq(const bh_conf_upstream_t *a, const bh_conf_upstream_t *b)
{
    if (a->n_endpoints != b->n_endpoints)
        return false;
    for (size_t i = 0; i < a->n_endpoints; i++)
        if (!str_eq(a->endpoints[i].text, b->endpoints[i].text))
            return false;
    return true;
}

/* Session settings in file order (TimeZone appended when not given is part of both). */
static bool session_eq(const bh_conf_database_t *a, const bh_conf_database_t *b)
{
    return strs_eq(a->session_keys, a->n_session, b->session_keys, b->n_session) &&
           strs_eq(a->session_values, a->n_session, b->session_values, b->n_session);
}

/* Kinds up to K_SECTION compare the one field at k->off; the later ones are the node
 * converters that fill a list and its length, or fields of the whole section struct (base). */
static bool field_equal(const spec_t *k, const void *a, const void *b)
{
    switch (k->type->kind) {
    case K_U32:
        return *CFIELD(a, k, uint32_t) == *CFIELD(b, k, uint32_t);
    case K_U64:
        return *CFIELD(a, k, uint64_t) == *CFIELD(b, k, uint64_t);
    case K_BOOL:
        return *CFIELD(a, k, bool) == *CFIELD(b, k, bool);
    case K_DOUBLE:
        return *CFIELD(a, k, double) == *CFIELD(b, k, double);
    case K_ENUM:
        return *CFIELD(a, k, int) == *CFIELD(b, k, int);
    case K_STR:
        return str_eq(*CFIELD(a, k, char *), *CFIELD(b, k, char *));
    case K_ADDR:
        return str_eq(CFIELD(a, k, bh_conf_addr_t)->text, CFIELD(b, k, bh_conf_addr_t)->text);
    case K_SECTION:
        return rows_equal(k->sub, CFIELD(a, k, char), CFIELD(b, k, char));
    case K_HEALTH: /* enabled is set by the section's presence, not by a row */
        return CFIELD(a, k, bh_conf_health_t)->enabled == CFIELD(b, k, bh_conf_health_t)->enabled &&
               rows_equal(k->sub, CFIELD(a, k, char), CFIELD(b, k, char));
    case K_STATUSES:
        return statuses_eq(CFIELD(a, k, bh_conf_retry_t), CFIELD(b, k, bh_conf_retry_t));
    case K_ENDPOINTS:
        return endpoints_eq(a, b);
    case K_DB_HOSTS: {
        const bh_conf_database_t *x = a, *y = b;
        return strs_eq(x->hosts, x->n_hosts, y->hosts, y->n_hosts);
    }
    case K_DB_TOKENS: {
        const bh_conf_database_t *x = a, *y = b;
        return strs_eq(x->tokens, x->n_tokens, y->tokens, y->n_tokens);
    }
    case K_SESSION:
        return session_eq(a, b);
    case K_TLS_CA: {
        const bh_conf_upstream_tls_t *x = a, *y = b;
        return str_eq(x->ca, y->ca) && bh__conf_tls_store_equal(x->ca_store, y->ca_store);
    }
    case K_TLS_CERT:
        return bh__conf_tls_cert_equal(CFIELD(a, k, bh_conf_tls_cert_t),
                                       CFIELD(b, k, bh_conf_tls_cert_t));
    case K_NONE: /* not comparable (never in an upstream or database): treat as changed */
        break;
    }
    return false;
}

/* Every row of sec, a and b being that section's structs. Rows without a type (keys not
 * supported yet) fill nothing. */
static bool rows_equal(enum sec sec, const void *a, const void *b)
{
    for (const spec_t *k = bh__conf_specs; k < bh__conf_specs + bh__conf_n_specs; k++)
        if (k->sec == sec && k->type != NULL && !field_equal(k, a, b))
            return false;
    return true;
}

bool bh_conf_upstream_equal(const bh_conf_upstream_t *a, const bh_conf_upstream_t *b)
{
    return str_eq(a->name, b->name) && rows_equal(S_UPSTREAM, a, b);
}

bool bh_conf_database_equal(const bh_conf_database_t *a, const bh_conf_database_t *b)
{
    return str_eq(a->name, b->name) && rows_equal(S_DATABASE, a, b);
}
