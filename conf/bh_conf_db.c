/* Converters of databases.<name> (SQL over HTTP): hosts, tokens, the server conninfo and the
 * session settings. Tokens and the conninfo may hold secrets: messages never quote them. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include "bh_alloc.h"
#include "bh_conf_int.h"

/* Validates (and may rewrite in place) one item of a string list; n is the item's node. */
typedef int (*str_check_fn)(ctx_t *c, yaml_node_t *n, char *s);

/* A non-empty list of non-empty strings -> *arr, *count (count grows as items are stored, so
 * bh_conf_free copes with a list cut short by an error). */
static int read_strings(ctx_t *c, yaml_node_t *n, const char *what, const char *expect, char ***arr,
                        size_t *count, str_check_fn check)
{
    size_t len = bh__conf_seq_len(n);

    if (n->type != YAML_SEQUENCE_NODE && !bh__conf_is_null(n))
        return bh__conf_type_fail(c, n, expect);
    if (len == 0)
        return bh__conf_fail(c, n, "no %s given in %s, expected %s", what, c->path, expect);
    if ((*arr = bh_calloc(len, sizeof **arr)) == NULL)
        return bh__conf_oom(c);
    for (size_t i = 0; i < len; i++) {
        yaml_node_t *item = bh__conf_item(c, n, i);
        size_t old = bh__conf_path_index(c, i);
        char *s;
        int rc = bh__conf_scalar_text(c, item, "a single value", 0, &s);

        if (rc == 0) {
            (*arr)[(*count)++] = s;
            rc = check(c, item, s);
        }
        bh__conf_path_pop(c, old);
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
        return bh__conf_fail(c, n, "invalid host '%.64s' for %s, expected " DB_HOST_EXPECT, s,
                             c->path);
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
            return bh__conf_fail(c, n,
                                 "invalid token for %s (it contains a space or control character), "
                                 "expected the bearer token as clients send it",
                                 c->path);
    return 0;
}

int bh__conf_conv_db_hosts(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    bh_conf_database_t *d = base;
    return read_strings(c, n, "hosts", k->type->expect, &d->hosts, &d->n_hosts, db_host_check);
}

int bh__conf_conv_db_tokens(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    bh_conf_database_t *d = base;

    if (n == NULL)
        return 0;
    return read_strings(c, n, "tokens", k->type->expect, &d->tokens, &d->n_tokens, db_token_check);
}

static int is_space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n' || ch == '\f' || ch == '\v';
}

/* The TLS settings libpq reads from files or checks by name: a file that cannot be read, or an
 * sslmode libpq does not know, would only show when the first connection fails. */
static int check_ssl_value(ctx_t *c, yaml_node_t *n, const char *kw, size_t kwlen, const char *v,
                           size_t vlen)
{
    static const char *const files[] = {"sslrootcert", "sslcert", "sslkey", "sslcrl"};
    static const char *const modes[] = {"disable", "allow",     "prefer",
                                        "require", "verify-ca", "verify-full"};
    char val[512];
    if (vlen >= sizeof(val))
        return 0;
    memcpy(val, v, vlen);
    val[vlen] = '\0';
    if (kwlen == 7 && memcmp(kw, "sslmode", 7) == 0) {
        for (size_t i = 0; i < COUNT(modes); i++)
            if (strcmp(val, modes[i]) == 0)
                return 0;
        return bh__conf_fail(c, n, "unknown sslmode '%s' in %s, expected disable, allow, prefer, "
                             "require, verify-ca or verify-full", val, c->path);
    }
    for (size_t i = 0; i < COUNT(files); i++) {
        if (strlen(files[i]) != kwlen || memcmp(kw, files[i], kwlen) != 0)
            continue;
        FILE *f = strcmp(val, "system") == 0 ? NULL : fopen(val, "r");
        if (f == NULL && strcmp(val, "system") != 0)
            return bh__conf_fail(c, n, "cannot read %s '%s' in %s: %s, expected a readable PEM file",
                                 files[i], val, c->path, strerror(errno));
        if (f != NULL)
            fclose(f);
    }
    return 0;
}

/* server: a libpq keyword=value conninfo (values may be 'quoted' with \ escapes) that carries
 * no credentials: they come from the request (passthrough) or from user/password/dbname. The
 * text may hold secrets, so it is never quoted in messages. */
int bh__conf_conv_server(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    static const char *const banned[] = {"user", "password", "dbname", "passfile", "service"};
    const char *p = text;

    if (strncmp(text, "postgres://", 11) == 0 || strncmp(text, "postgresql://", 13) == 0)
        return bh__conf_fail(c, n, "%s is a connection URI, expected %s", c->path, k->type->expect);
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
            return bh__conf_fail(c, n, "invalid conninfo for %s near '%.*s', expected %s", c->path,
                                 (int)(kwlen < 32 ? kwlen : 32), kw, k->type->expect);
        for (size_t i = 0; i < COUNT(banned); i++)
            if (strlen(banned[i]) == kwlen && memcmp(kw, banned[i], kwlen) == 0)
                return bh__conf_fail(
                    c, n,
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
                return bh__conf_fail(c, n, "unterminated quote in the conninfo for %s, expected %s",
                                     c->path, k->type->expect);
            p++;
        } else {
            const char *v = p;
            for (; *p != '\0' && !is_space(*p); p++)
                if (*p == '\\' && p[1] != '\0')
                    p++;
            if (check_ssl_value(c, n, kw, kwlen, v, (size_t)(p - v)) < 0)
                return -1;
        }
    }
    return bh__conf_conv_str(c, k, n, text, base);
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
        return bh__conf_oom(c);
    }
    d->session_keys[d->n_session] = kc;
    d->session_values[d->n_session++] = value;
    return 0;
}

/* The name of the setting of pair p: a Postgres identifier bulkhead does not set itself, given
 * once (compared case-insensitively, as Postgres does). */
static int setting_name(ctx_t *c, yaml_node_t *map, yaml_node_pair_t *p, const char *key)
{
    yaml_node_t *kn = bh__conf_node(c, p->key);
    char buf[300];

    if (!valid_ident(key))
        return bh__conf_fail(c, kn,
                             "invalid setting name '%.64s' %s, expected a Postgres setting name "
                             "(letters, digits, '_' and '.', not starting with a digit)",
                             key, bh__conf_where(c, buf, sizeof buf));
    for (size_t j = 0; j < COUNT(SESSION_FIXED); j++)
        if (strcasecmp(key, SESSION_FIXED[j]) == 0)
            return bh__conf_fail(c, kn,
                                 "setting '%s' %s is set by bulkhead (the SQL over HTTP output "
                                 "depends on it), expected it removed",
                                 key, bh__conf_where(c, buf, sizeof buf));
    for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < p; q++) {
        yaml_node_t *prev = bh__conf_node(c, q->key);
        if (strcasecmp((const char *)prev->data.scalar.value, key) == 0)
            return bh__conf_fail(c, kn,
                                 "duplicate setting '%s' %s (first given at %zu:%zu as '%s'), "
                                 "expected each setting once (names are case-insensitive)",
                                 key, bh__conf_where(c, buf, sizeof buf), prev->start_mark.line + 1,
                                 prev->start_mark.column + 1,
                                 (const char *)prev->data.scalar.value);
    }
    return 0;
}

/* session: a mapping of setting names to single values, in file order; TimeZone takes the row's
 * default when not given. */
int bh__conf_conv_session(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    bh_conf_database_t *d = base;
    size_t len = 0;
    bool tz = false;
    char *value;
    int rc;

    if (n != NULL && n->type != YAML_MAPPING_NODE && !bh__conf_is_null(n))
        return bh__conf_type_fail(c, n, k->type->expect);
    if (n != NULL && n->type == YAML_MAPPING_NODE)
        len = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
    if ((d->session_keys = bh_calloc(len + 1, sizeof *d->session_keys)) == NULL ||
        (d->session_values = bh_calloc(len + 1, sizeof *d->session_values)) == NULL)
        return bh__conf_oom(c);
    for (size_t i = 0; i < len; i++) {
        yaml_node_pair_t *p = &n->data.mapping.pairs.start[i];
        yaml_node_t *kn = bh__conf_node(c, p->key);
        const char *key = kn->type == YAML_SCALAR_NODE ? (const char *)kn->data.scalar.value : "";
        size_t old;

        if ((rc = setting_name(c, n, p, key)) != 0)
            return rc;
        old = bh__conf_path_key(c, key);
        rc = bh__conf_scalar_text(c, bh__conf_node(c, p->value), "a single value", 1, &value);
        bh__conf_path_pop(c, old);
        if (rc != 0 || (rc = session_put(c, d, key, value)) != 0)
            return rc;
        tz = tz || strcasecmp(key, "TimeZone") == 0;
    }
    if (tz)
        return 0;
    if ((rc = bh__conf_subst(c, NULL, k->def, strlen(k->def), &value)) != 0)
        return rc;
    return session_put(c, d, "TimeZone", value);
}
