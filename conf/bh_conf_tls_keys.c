/* The tls sections as keys: converters of listeners[].tls and upstreams.<name>.tls, their checks,
 * and endpoints written "https://host[:port]".
 *
 * A listener without a tls section speaks plain HTTP; with one, it needs certificates. An
 * upstream's tls section always takes its defaults (verify on, the system CAs), and TLS is on
 * when tls.enabled is true or when its endpoints are written https://; check_upstream, run once
 * the upstream's keys are all set, reconciles the two whatever order the file gives them in.
 * The files (certificates, keys, CAs) are read by bh_conf_tls.c. */
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <openssl/ssl.h>
#include "bh_alloc.h"
#include "bh_conf_int.h"

/* ---- listeners[].tls ------------------------------------------------------------------- */

/* tls: absent = plain HTTP; present (even empty) = HTTPS, with the keys of S_LISTENER_TLS. */
int bh__conf_conv_listener_tls(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text,
                               void *base)
{
    bh_conf_listener_tls_t *t = FIELD(base, k, bh_conf_listener_tls_t);

    if (n == NULL)
        return 0;
    if (n->type != YAML_MAPPING_NODE && !bh__conf_is_null(n))
        return bh__conf_type_fail(c, n, k->type->expect);
    t->enabled = true;
    return bh__conf_parse_section(c, k->sub, n, t, 1);
}

/* certificates: a list of {cert, key}, each loaded by its section's check (check_tls_cert). */
int bh__conf_conv_certs(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    bh_conf_listener_tls_t *t = base;
    size_t len = bh__conf_seq_len(n);

    if (n->type != YAML_SEQUENCE_NODE && !bh__conf_is_null(n))
        return bh__conf_type_fail(c, n, k->type->expect);
    if (len == 0)
        return bh__conf_fail(c, n, "no certificates given in %s, expected %s", c->path,
                             k->type->expect);
    if ((t->certs = bh_calloc(len, sizeof *t->certs)) == NULL)
        return bh__conf_oom(c);
    t->n_certs = len; /* before parsing: bh_conf_free clears every element */
    for (size_t i = 0; i < len; i++) {
        yaml_node_t *item = bh__conf_item(c, n, i);
        size_t old = bh__conf_path_index(c, i);
        int rc = item->type != YAML_MAPPING_NODE
                     ? bh__conf_type_fail(c, item, "a mapping of cert and key")
                     : bh__conf_parse_section(c, S_TLS_CERT, item, &t->certs[i], 1);
        bh__conf_path_pop(c, old);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int bh__conf_check_tls_cert(ctx_t *c, yaml_node_t *map, void *base)
{
    return bh__conf_tls_load_cert(c, bh__conf_lookup(c, map, "cert"),
                                  bh__conf_lookup(c, map, "key"), base);
}

static const name_bit_t VERIFY_CLIENT_NAMES[] = {
    {"off", BH_VERIFY_CLIENT_OFF},
    {"optional", BH_VERIFY_CLIENT_OPTIONAL},
    {"require", BH_VERIFY_CLIENT_REQUIRE},
};

const word_set_t bh__conf_verify_clients = {VERIFY_CLIENT_NAMES, COUNT(VERIFY_CLIENT_NAMES)};

/* off | optional | require: plain words (YAML 1.1 would read off as a boolean; libyaml keeps
 * the text, and only these three are taken). */
int bh__conf_conv_verify_client(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text,
                                void *base)
{
    for (size_t i = 0; i < COUNT(VERIFY_CLIENT_NAMES); i++)
        if (strcmp(text, VERIFY_CLIENT_NAMES[i].name) == 0) {
            *FIELD(base, k, enum bh_tls_verify_client) =
                (enum bh_tls_verify_client)VERIFY_CLIENT_NAMES[i].bit;
            return 0;
        }
    return bh__conf_word_fail(c, n, "client verification", text, VERIFY_CLIENT_NAMES,
                              COUNT(VERIFY_CLIENT_NAMES));
}

int bh__conf_conv_ciphers(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    int rc = bh__conf_tls_check_ciphers(c, n, text);
    return rc != 0 ? rc : bh__conf_conv_str(c, k, n, text, base);
}

/* client_ca: the path, the store of its certificates and their subjects. */
int bh__conf_conv_client_ca(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base)
{
    bh_conf_listener_tls_t *t = base;
    int rc = bh__conf_conv_str(c, k, n, text, base);

    if (rc != 0)
        return rc;
    return bh__conf_tls_load_ca(c, n, "client_ca", t->client_ca, &t->client_store,
                                &t->client_names);
}

/* verify_client optional/require needs client_ca; client_ca without it, or ciphers with TLS 1.3
 * only, do nothing: a warning. */
int bh__conf_check_listener_tls(ctx_t *c, yaml_node_t *map, void *base)
{
    bh_conf_listener_tls_t *t = base;
    int rc = 0;

    if (t->verify_client != BH_VERIFY_CLIENT_OFF && t->client_ca == NULL)
        return bh__conf_fail(c, bh__conf_lookup(c, map, "verify_client"),
                             "verify_client: %s in %s needs client_ca (the CA certificates that "
                             "issue client certificates), expected client_ca given or "
                             "verify_client: off",
                             VERIFY_CLIENT_NAMES[t->verify_client].name, c->path);
    if (t->verify_client == BH_VERIFY_CLIENT_OFF && t->client_ca != NULL)
        rc = bh__conf_warn(c, bh__conf_key_node(c, map, "client_ca"),
                           "client_ca in %s has no effect with verify_client: off (client "
                           "certificates are not asked for)",
                           c->path);
    if (rc == 0 && t->min_version == TLS1_3_VERSION && t->ciphers != NULL)
        rc = bh__conf_warn(c, bh__conf_key_node(c, map, "ciphers"),
                           "ciphers in %s has no effect with min_version: 1.3 (it sets the "
                           "TLS 1.2 ciphers)",
                           c->path);
    return rc;
}

/* ---- both sides ------------------------------------------------------------------------ */

static const name_bit_t TLS_VERSION_NAMES[] = {{"1.2", TLS1_2_VERSION}, {"1.3", TLS1_3_VERSION}};
const word_set_t bh__conf_tls_versions = {TLS_VERSION_NAMES, COUNT(TLS_VERSION_NAMES)};

int bh__conf_conv_tls_version(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text,
                              void *base)
{
    for (size_t i = 0; i < COUNT(TLS_VERSION_NAMES); i++)
        if (strcmp(text, TLS_VERSION_NAMES[i].name) == 0) {
            *FIELD(base, k, int) = (int)TLS_VERSION_NAMES[i].bit;
            return 0;
        }
    return bh__conf_fail(
        c, n, "invalid TLS version '%.64s' for %s, expected 1.2 or 1.3%s", text, c->path,
        strcmp(text, "1.0") == 0 || strcmp(text, "1.1") == 0 ? " (older versions are not secure)"
                                                             : "");
}

/* ---- upstreams.<name>.tls -------------------------------------------------------------- */

/* ca: "system" (NULL: the runtime's default paths) or a PEM file loaded into ca_store. */
int bh__conf_conv_upstream_ca(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text,
                              void *base)
{
    bh_conf_upstream_tls_t *t = base;
    int rc;

    X509_STORE_free(t->ca_store);
    t->ca_store = NULL;
    if (strcmp(text, "system") == 0) {
        bh_free(t->ca);
        t->ca = NULL;
        return 0;
    }
    if ((rc = bh__conf_conv_str(c, k, n, text, base)) != 0)
        return rc;
    return bh__conf_tls_load_ca(c, n, "ca", t->ca, &t->ca_store, NULL);
}

/* server_name: a DNS name or an IP address, stored lower case. */
int bh__conf_conv_server_name(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text,
                              void *base)
{
    static const char OK[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.:";
    char **field;

    if (strspn(text, OK) != strlen(text) || text[0] == '.' || text[0] == '-')
        return bh__conf_fail(c, n, "invalid server name '%.64s' for %s, expected %s", text, c->path,
                             k->type->expect);
    if (bh__conf_conv_str(c, k, n, text, base) != 0)
        return BH_ENOMEM;
    field = FIELD(base, k, char *);
    for (char *p = *field; *p != '\0'; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    return 0;
}

/* cert and key: both or neither; both are loaded. */
int bh__conf_check_upstream_tls(ctx_t *c, yaml_node_t *map, void *base)
{
    bh_conf_upstream_tls_t *t = base;

    if ((t->client.cert == NULL) != (t->client.key == NULL)) {
        const char *given = t->client.cert != NULL ? "cert" : "key";
        const char *missing = t->client.cert != NULL ? "key" : "cert";
        return bh__conf_fail(c, bh__conf_key_node(c, map, given),
                             "'%s' in %s needs '%s' too (a client certificate and its private "
                             "key), expected both or neither",
                             given, c->path, missing);
    }
    if (t->client.cert == NULL)
        return 0;
    return bh__conf_tls_load_cert(c, bh__conf_lookup(c, map, "cert"),
                                  bh__conf_lookup(c, map, "key"), &t->client);
}

/* A tls section that sets keys while TLS is off (no enabled, no https:// endpoint): likely a
 * forgotten enabled: true, which would send plain HTTP to a TLS port. */
static int check_tls_off(ctx_t *c, yaml_node_t *map, yaml_node_t *tls)
{
    char buf[300];

    if (tls == NULL || tls->type != YAML_MAPPING_NODE ||
        tls->data.mapping.pairs.top == tls->data.mapping.pairs.start)
        return 0;
    return bh__conf_fail(c, bh__conf_key_node(c, map, "tls"),
                         "tls settings %s apply to no endpoint: TLS is off, expected "
                         "tls.enabled: true or endpoints written https://host[:port]",
                         bh__conf_where(c, buf, sizeof buf));
}

/* https:// endpoints turn TLS on (tls.enabled: false with them is an error); verify: false with
 * TLS on is a warning. */
int bh__conf_check_upstream(ctx_t *c, yaml_node_t *map, void *base)
{
    bh_conf_upstream_t *u = base;
    yaml_node_t *tls = bh__conf_lookup(c, map, "tls");
    yaml_node_t *enabled = bh__conf_lookup(c, tls, "enabled");

    if (c->https_endpoint != NULL) {
        if (enabled != NULL && !u->tls.enabled)
            return bh__conf_fail(c, enabled,
                                 "tls.enabled: false in %s contradicts its https:// endpoint "
                                 "at %zu:%zu, expected true (or the endpoints without https://)",
                                 c->path, c->https_endpoint->start_mark.line + 1,
                                 c->https_endpoint->start_mark.column + 1);
        u->tls.enabled = true;
    } else if (!u->tls.enabled && enabled == NULL) {
        return check_tls_off(c, map, tls);
    }
    if (u->tls.enabled && !u->tls.verify)
        return bh__conf_warn(c, bh__conf_lookup(c, tls, "verify"),
                             "TLS verification of upstream %s is off (tls.verify: false): its "
                             "certificate and host name are not checked",
                             u->name);
    return 0;
}

/* ---- endpoints ------------------------------------------------------------------------- */

int bh__conf_parse_endpoint(const char *s, bh_conf_addr_t *addr, bool *https, const char **why)
{
    char buf[300];
    size_t len;
    bool has_port;

    *https = false;
    *why = "";
    memset(addr, 0, sizeof *addr);
    if (strncasecmp(s, "https://", 8) != 0) {
        if (strstr(s, "://") != NULL)
            *why = " (https:// is the only scheme; plain HTTP endpoints have none)";
        return *why[0] != '\0' ? -1 : bh_parse_addr(s, addr);
    }
    s += 8;
    len = strlen(s);
    if (len > 0 && s[len - 1] == '/')
        len--;
    if (memchr(s, '/', len) != NULL || len + sizeof ":443" > sizeof buf) {
        *why = " (an endpoint has no path)";
        return -1;
    }
    memcpy(buf, s, len);
    buf[len] = '\0';
    has_port = buf[0] == '[' ? strstr(buf, "]:") != NULL : strchr(buf, ':') != NULL;
    if (!has_port)
        memcpy(buf + len, ":443", sizeof ":443");
    *https = true;
    return bh_parse_addr(buf, addr);
}
