/* Private to conf/: the load context, the shape of the key table, and the bh__conf_* functions
 * the conf/ files share. Not part of the API (that is bh_conf.h); unit tests include it to walk
 * the key table.
 *
 * The files:
 *   bh_conf.c        entry points: read the file, build the snapshot, the section walker, free
 *   bh_conf_yaml.c   libyaml: the one document, node helpers, dotted paths, FILE:LINE:COL errors
 *   bh_conf_env.c    ${VAR} / ${VAR:-default} / $$ substitution of every scalar
 *   bh_conf_keys.c   the schema: every key of every section, its type and its default
 *   bh_conf_conv.c   scalar converters (numbers, durations, sizes, words, flag lists, strings)
 *   bh_conf_nodes.c  node converters (sections, lists, the upstreams/databases name maps)
 *   bh_conf_db.c     converters of databases.<name> (hosts, tokens, server, session)
 *   bh_conf_check.c  cross-field checks run after a section's keys are set; route resolution
 *   bh_conf_hint.c   typo suggestions ("did you mean") and unknown-key/word messages
 *   bh_conf_tls.c    OpenSSL side of the tls sections: certificates, keys, CA files, cipher lists
 *   bh_conf_tls_keys.c converters and checks of the tls sections, https:// endpoints
 *   bh_conf_equal.c  snapshot comparison for reload, derived from the key table
 *   bh_conf_parse.c  the public value parsers (bh_parse_*) the converters build on */
#ifndef BH_CONF_INT_H
#define BH_CONF_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <yaml.h>
#include "bh_conf.h"

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))
/* The field of row k inside the struct at base (the section's struct). */
#define FIELD(base, k, T) ((T *)((char *)(base) + (k)->off))
#define CFIELD(base, k, T) ((const T *)((const char *)(base) + (k)->off))
/* A route timeout not given: its upstream's (database's) applies, filled in by check_root. */
#define INHERIT UINT64_MAX

/* Sections of the file; each is one mapping parsed against the table rows that name it. */
enum sec {
    S_ROOT,
    S_LISTENER,
    S_LIMITS,
    S_ADMIN,
    S_LOG,
    S_REQUEST_ID,
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
    S_LISTENER_TLS, /* listeners[].tls */
    S_TLS_CERT,     /* listeners[].tls.certificates[]: {cert, key} */
    S_UPSTREAM_TLS, /* upstreams.<name>.tls */
    S_COUNT
};

typedef struct ctx {
    const char *name; /* file name used in messages */
    yaml_document_t *doc;
    bh_conf_error_t *err;
    char path[256];  /* dotted path of the node being read: "upstreams.api.pool" */
    bh_conf_t *conf; /* the snapshot being built: bh__conf_warn appends to its warnings */
    /* The first endpoint written "https://..." of the upstream being parsed (NULL: none), set
     * by its endpoints' converter and read by its check (check_upstream), which both run
     * within that upstream's section. */
    yaml_node_t *https_endpoint;
} ctx_t;

typedef struct spec spec_t;
/* Converts node n (or, for scalar types, its substituted text) into the field k->off of base.
 * n is NULL when the key is absent and its default applies (text is then the default).
 * Returns 0, BH_ECONFIG (c->err filled) or BH_ENOMEM. */
typedef int (*conv_fn)(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);

/* How a type stores its value, which is how bh_conf_equal.c compares two snapshots. The kinds
 * from K_HEALTH on belong to node converters that fill more than the one field at k->off (a
 * list and its length, or fields of the whole section struct): each has its own code there. */
enum kind {
    K_NONE,      /* not compared (top-level lists, route-only keys): counts as changed */
    K_U32,       /* uint32_t: whole numbers, flag sets (retry.on, breaker.count), methods */
    K_U64,       /* uint64_t: durations (ms), sizes (bytes) */
    K_BOOL,      /* bool */
    K_DOUBLE,    /* double: percentages */
    K_ENUM,      /* an int-sized enum (log level, balance, auth) */
    K_STR,       /* char *, NULL when not given or empty */
    K_ADDR,      /* bh_conf_addr_t, compared as written */
    K_SECTION,   /* a nested section: the rows of k->sub, at k->off */
    K_HEALTH,    /* bh_conf_health_t: enabled, then the rows of k->sub */
    K_STATUSES,  /* bh_conf_retry_t at k->off: retriable_status[n_retriable_status] */
    K_ENDPOINTS, /* the upstream's endpoints[n_endpoints], compared as written */
    K_DB_HOSTS,  /* the database's hosts[n_hosts] */
    K_DB_TOKENS, /* the database's tokens[n_tokens] */
    K_SESSION,   /* the database's session_keys/values[n_session] */
    K_TLS_CA,    /* bh_conf_upstream_tls_t: ca (the path) and ca_store (its certificates) */
    K_TLS_CERT,  /* a bh_conf_tls_cert_t at k->off (its first field, cert, is the row's):
                    the paths, then the leaf and chain loaded (a file replaced counts) */
};

enum { T_NODE = 1, T_EMPTY_OK = 2 };
typedef struct type {
    conv_fn conv;
    const char *expect; /* what a valid value looks like, for messages */
    unsigned flags;     /* T_NODE: conv reads the node itself (mappings, lists) */
    enum kind kind;
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
    enum sec sub;    /* nested section (K_SECTION, K_HEALTH); S_COUNT otherwise */
    const char *why; /* F_NA: why the section does not take the key, for the message */
};

/* bh_conf_keys.c: the table, rows of one section in file-documentation order. */
extern const spec_t bh__conf_specs[];
extern const size_t bh__conf_n_specs;

/* bh_conf.c: parses a mapping (or NULL / an empty value: nothing given) against the rows of sec
 * into base; with defaults, missing keys take their default. c->path names the mapping. */
int bh__conf_parse_section(ctx_t *c, enum sec sec, yaml_node_t *map, void *base, int defaults);

/* bh_conf_yaml.c: messages. bh__conf_fail formats "FILE:LINE:COL: ..." at node n (1:1 when n is
 * NULL) into c->err and returns BH_ECONFIG; bh__conf_oom returns BH_ENOMEM. */
__attribute__((format(printf, 3, 4))) int bh__conf_fail(ctx_t *c, const yaml_node_t *n,
                                                        const char *fmt, ...);
int bh__conf_oom(ctx_t *c);
/* A warning "FILE:LINE:COL: ..." at node n appended to c->conf->warnings: the file is valid
 * but something deserves a look. Returns 0 or BH_ENOMEM. */
__attribute__((format(printf, 3, 4))) int bh__conf_warn(ctx_t *c, const yaml_node_t *n,
                                                        const char *fmt, ...);
/* "<path> is a list, expected <expect>". */
int bh__conf_type_fail(ctx_t *c, const yaml_node_t *n, const char *expect);
/* "a mapping", "a list" or "a single value". */
const char *bh__conf_kind_name(const yaml_node_t *n);
/* "in <path>" (written into buf) or "at top level". */
const char *bh__conf_where(const ctx_t *c, char *buf, size_t n);

/* bh_conf_yaml.c: the dotted path in c->path. Each push returns the old length for pop. */
size_t bh__conf_path_key(ctx_t *c, const char *key);
size_t bh__conf_path_index(ctx_t *c, size_t i);
void bh__conf_path_pop(ctx_t *c, size_t old);

/* bh_conf_yaml.c: nodes of c->doc. */
yaml_node_t *bh__conf_node(ctx_t *c, int index);
/* An empty value ("key:" with nothing after it, "~", "null"). */
bool bh__conf_is_null(const yaml_node_t *n);
/* The value (bh__conf_lookup) or key node (bh__conf_key_node) of key in a mapping; NULL when
 * absent or when map is NULL or not a mapping. Messages about a key point at the key node. */
yaml_node_t *bh__conf_lookup(ctx_t *c, yaml_node_t *map, const char *key);
yaml_node_t *bh__conf_key_node(ctx_t *c, yaml_node_t *map, const char *key);
/* The number of items of a list node; 0 for any other node. */
size_t bh__conf_seq_len(const yaml_node_t *n);
/* The item i of a list node. */
yaml_node_t *bh__conf_item(ctx_t *c, const yaml_node_t *seq, size_t i);
/* Fails when the key of pair p was already given earlier in the mapping. */
int bh__conf_check_dup_key(ctx_t *c, yaml_node_t *map, yaml_node_pair_t *p);
/* The substituted text of a scalar node (bh_malloc'd into *out), never empty unless empty_ok. */
int bh__conf_scalar_text(ctx_t *c, yaml_node_t *n, const char *expect, int empty_ok, char **out);
/* Parses yaml[0..len) into *doc, which must be the only document. On success the caller deletes
 * *doc with yaml_document_delete. */
int bh__conf_yaml_load(ctx_t *c, const char *yaml, size_t len, yaml_document_t *doc);

/* bh_conf_env.c: expands ${VAR}, ${VAR:-default} and $$ in s[0..len) into a new bh_malloc'd
 * string; n gives the position for errors (NULL for defaults). */
int bh__conf_subst(ctx_t *c, const yaml_node_t *n, const char *s, size_t len, char **out);

/* bh_conf_hint.c: the closest candidate to word, when close enough to be a likely typo. */
typedef struct hint {
    const char *word;
    const char
        *match; /* NULL until a candidate is close enough; start with {word, NULL, SIZE_MAX} */
    size_t dist;
} hint_t;
void bh__conf_hint_consider(hint_t *h, const char *cand);

/* A word of a closed set (balance, retry.on, auth ...) and its value. */
typedef struct name_bit {
    const char *name;
    uint32_t bit;
} name_bit_t;
/* The words of a closed set. The loader reads them and bh_conf_emit.c writes them from these same
 * tables, so what is written is always what is read. */
typedef struct word_set {
    const name_bit_t *names;
    size_t n;
} word_set_t;
extern const word_set_t bh__conf_balances, bh__conf_retry_on, bh__conf_counts, bh__conf_auths,
    bh__conf_resets, bh__conf_levels;                                   /* bh_conf_conv.c */
extern const word_set_t bh__conf_verify_clients, bh__conf_tls_versions; /* bh_conf_tls_keys.c */
extern const word_set_t bh__conf_methods;                               /* bh_conf_parse.c */

/* bh_conf_hint.c: an unknown word among names[]: a suggestion when one is close, else the whole
 * list. what names the kind of word ("balance policy"). */
int bh__conf_word_fail(ctx_t *c, const yaml_node_t *n, const char *what, const char *text,
                       const name_bit_t *names, size_t n_names);
/* bh_conf_hint.c: an unknown key kn of section sec: a suggestion, else the keys it takes. */
int bh__conf_unknown_key(ctx_t *c, enum sec sec, yaml_node_t *kn, const char *key);

/* bh_conf_conv.c: scalar converters (text -> field). */
int bh__conf_conv_u32(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);
int bh__conf_conv_workers(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);
int bh__conf_conv_duration(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);
int bh__conf_conv_size(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);
int bh__conf_conv_bool(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);
int bh__conf_conv_level(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);
int bh__conf_conv_str(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);
int bh__conf_conv_prefix(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);
int bh__conf_conv_host(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);
int bh__conf_conv_addr(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);
int bh__conf_conv_percent(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);
int bh__conf_conv_path(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);
int bh__conf_conv_header_name(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text,
                              void *base);
int bh__conf_conv_balance(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);
int bh__conf_conv_retry_methods(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text,
                                void *base);
int bh__conf_conv_retry_on(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);
int bh__conf_conv_count(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);
int bh__conf_conv_auth(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);
int bh__conf_conv_reset(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);
int bh__conf_conv_statuses(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);
/* "5s", "250ms", "1h" ... : a duration as a user would write it (for messages). */
void bh__conf_show_duration(uint64_t v, char *buf, size_t n);
/* Frees an address's strings and zeroes it. */
void bh__conf_addr_clear(bh_conf_addr_t *a);

/* bh_conf_nodes.c: node converters (mappings and lists). */
int bh__conf_conv_section(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);
int bh__conf_conv_override(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);
int bh__conf_conv_listeners(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text,
                            void *base);
int bh__conf_conv_routes(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);
int bh__conf_conv_endpoints(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text,
                            void *base);
int bh__conf_conv_upstreams(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text,
                            void *base);
int bh__conf_conv_databases(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text,
                            void *base);
int bh__conf_conv_methods(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);
int bh__conf_conv_health(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);
int bh__conf_conv_route_retry(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text,
                              void *base);

/* bh_conf_db.c: converters of databases.<name>. */
int bh__conf_conv_db_hosts(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);
int bh__conf_conv_db_tokens(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text,
                            void *base);
int bh__conf_conv_server(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);
int bh__conf_conv_session(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);

/* bh_conf_tls_keys.c: converters of the tls sections. */
int bh__conf_conv_listener_tls(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text,
                               void *base);
int bh__conf_conv_certs(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);
int bh__conf_conv_tls_version(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text,
                              void *base);
int bh__conf_conv_verify_client(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text,
                                void *base);
int bh__conf_conv_ciphers(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text, void *base);
int bh__conf_conv_client_ca(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text,
                            void *base);
int bh__conf_conv_upstream_ca(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text,
                              void *base);
int bh__conf_conv_server_name(ctx_t *c, const spec_t *k, yaml_node_t *n, const char *text,
                              void *base);
/* bh_conf_tls_keys.c: an endpoint as written -> addr: "host:port", "[v6]:port", or
 * "https://host[:port]" (port 443 by default; *https set), addr->text without the scheme.
 * Returns 0, -1 (malformed: *why says how, for the message) or BH_ENOMEM. */
int bh__conf_parse_endpoint(const char *s, bh_conf_addr_t *addr, bool *https, const char **why);
/* bh_conf_tls_keys.c: the checks of the tls sections (bh__conf_check_section's hooks). */
int bh__conf_check_listener_tls(ctx_t *c, yaml_node_t *map, void *base);
int bh__conf_check_tls_cert(ctx_t *c, yaml_node_t *map, void *base);
int bh__conf_check_upstream_tls(ctx_t *c, yaml_node_t *map, void *base);
int bh__conf_check_upstream(ctx_t *c, yaml_node_t *map, void *base);

/* bh_conf_tls.c: OpenSSL loading. Each fails with "FILE:LINE:COL: ..." at the node given.
 * Loads the cert file (leaf, then chain) and key file named by tc->cert and tc->key, checks
 * that they match and that the leaf is valid now (a warning when it expires within 14 days),
 * and fills tc's x509, chain, pkey, not_after and names. */
int bh__conf_tls_load_cert(ctx_t *c, yaml_node_t *cert_n, yaml_node_t *key_n,
                           bh_conf_tls_cert_t *tc);
/* A PEM file of CA certificates (what names the key, for messages) into a new store; with
 * names, also their subjects (for a CertificateRequest). */
int bh__conf_tls_load_ca(ctx_t *c, yaml_node_t *n, const char *what, const char *path,
                         struct x509_store_st **store, struct stack_st_X509_NAME **names);
/* Whether the cipher list selects any TLS 1.2 cipher (on a scratch SSL_CTX). */
int bh__conf_tls_check_ciphers(ctx_t *c, yaml_node_t *n, const char *list);
/* Frees what a cert holds (paths, OpenSSL objects, names) and zeroes it. */
void bh__conf_tls_cert_clear(bh_conf_tls_cert_t *tc);
void bh__conf_tls_listener_clear(bh_conf_listener_tls_t *t);
void bh__conf_tls_upstream_clear(bh_conf_upstream_tls_t *t);
/* Same paths, same leaf and chain (X509_cmp): a file replaced under the same path differs. */
bool bh__conf_tls_cert_equal(const bh_conf_tls_cert_t *a, const bh_conf_tls_cert_t *b);
/* Same certificates in both stores (NULL: none, the system store). */
bool bh__conf_tls_store_equal(struct x509_store_st *a, struct x509_store_st *b);

/* bh_conf_check.c: the cross-field check of section sec, run by bh__conf_parse_section once
 * the section's keys are all set (0 when sec has none). */
int bh__conf_check_section(ctx_t *c, enum sec sec, yaml_node_t *map, void *base);
/* bh_conf_check.c: checks of one list item (or name map element) i, with those before it
 * already parsed: unique names and addresses, a route's target, hosts mapped once. */
int bh__conf_check_listener(ctx_t *c, yaml_node_t *item, void *array, size_t i);
int bh__conf_check_route(ctx_t *c, yaml_node_t *item, void *array, size_t i);
int bh__conf_check_database_hosts(ctx_t *c, yaml_node_t *item, void *array, size_t i);

#endif
