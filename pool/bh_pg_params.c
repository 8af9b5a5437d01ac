/* What a pool connects with: libpq keyword/value arrays, startup options, the pool key digest. */
#include "bh_pg_int.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <openssl/evp.h>
#include "bh_alloc.h"
#include "bh_log.h"

#define DNS_MAX_ADDRS 4

/* RESET ALL returns settings to their values at session start, which include these (sent in the
 * startup packet's options): so they survive the reset, SET statements after connect would not. */
static const bh_pg_setting_t default_session[] = {
    {"client_encoding", "UTF8"}, {"DateStyle", "ISO,MDY"}, {"IntervalStyle", "postgres"},
    {"bytea_output", "hex"},     {"TimeZone", "UTC"},
};

/* ---- startup options --------------------------------------------------------------------- */

/* Options for the startup packet: "-c name=value ..." with spaces and backslashes escaped. */
static bool valid_name(const char *s)
{
    if (s == NULL || *s == '\0')
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '.'))
            return false;
    return true;
}

static int append(char **buf, size_t *len, size_t *cap, const char *s, bool escape)
{
    for (; *s; s++) {
        if (*len + 3 > *cap) {
            size_t ncap = *cap ? *cap * 2 : 256;
            char *n = bh_realloc(*buf, ncap);
            if (n == NULL)
                return BH_ENOMEM;
            *buf = n;
            *cap = ncap;
        }
        if (escape && (*s == ' ' || *s == '\\' || *s == '\t' || *s == '\n' || *s == '\r'))
            (*buf)[(*len)++] = '\\';
        (*buf)[(*len)++] = *s;
    }
    (*buf)[*len] = '\0';
    return 0;
}

int bh__pg_options_build(const bh_pg_server_t *srv, char **out)
{
    char *buf = NULL;
    size_t len = 0, cap = 0;
    size_t nd = sizeof(default_session) / sizeof(default_session[0]);
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < nd + srv->n_session; i++) {
        const bh_pg_setting_t *s = i < nd ? &default_session[i] : &srv->session[i - nd];
        if (!valid_name(s->name) || s->value == NULL) {
            rc = BH_EINVAL;
            break;
        }
        rc = append(&buf, &len, &cap, len ? " -c " : "-c ", false);
        if (rc == 0)
            rc = append(&buf, &len, &cap, s->name, false);
        if (rc == 0)
            rc = append(&buf, &len, &cap, "=", false);
        if (rc == 0)
            rc = append(&buf, &len, &cap, s->value, true);
    }
    if (rc < 0) {
        bh_free(buf);
        return rc;
    }
    *out = buf;
    return 0;
}

/* ---- the key ----------------------------------------------------------------------------- */

/* The pool key: where and as whom it connects, and the pool's own settings (so that a reload
 * that changes a database's pool gets a new pool and permit counter, not the old ones). */
int bh__pg_key_digest(uint8_t out[BH__PG_KEY_LEN], const bh_pg_server_t *srv, const char *options,
                      const char *dbname, const char *user, const char *password)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL)
        return BH_ENOMEM;
    const char *parts[] = {"bulkhead-pg-key-3", srv->name != NULL ? srv->name : "",
                           srv->conninfo != NULL ? srv->conninfo : "", options, dbname, user};
    const bh_conf_pool_t *pc = &srv->pool;
    const uint64_t limits[] = {pc->max_connections, pc->max_pending,         pc->max_idle,
                               pc->max_per_user,
                               pc->min_idle,        pc->acquire_timeout_ms,  pc->idle_timeout_ms,
                               pc->max_lifetime_ms, srv->connect_timeout_ms, srv->reset_timeout_ms};
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
        EVP_DigestUpdate(ctx, parts[i], strlen(parts[i]) + 1); /* with the NUL: unambiguous */
    EVP_DigestUpdate(ctx, limits, sizeof(limits));
    EVP_DigestUpdate(ctx, password != NULL ? "P" : "N", 1);
    if (password != NULL)
        EVP_DigestUpdate(ctx, password, strlen(password));
    unsigned int n = BH__PG_KEY_LEN;
    int ok = EVP_DigestFinal_ex(ctx, out, &n);
    EVP_MD_CTX_free(ctx);
    return ok == 1 && n == BH__PG_KEY_LEN ? 0 : BH_ENOMEM;
}

int bh__pg_db_digest(uint8_t out[BH__PG_KEY_LEN], const bh_pg_server_t *srv)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL)
        return BH_ENOMEM;
    const char *parts[] = {"bulkhead-pg-db-1", srv->name != NULL ? srv->name : "",
                           srv->conninfo != NULL ? srv->conninfo : ""};
    const uint64_t max = srv->pool.max_connections;
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
        EVP_DigestUpdate(ctx, parts[i], strlen(parts[i]) + 1);
    EVP_DigestUpdate(ctx, &max, sizeof(max));
    unsigned int n = BH__PG_KEY_LEN;
    int ok = EVP_DigestFinal_ex(ctx, out, &n);
    EVP_MD_CTX_free(ctx);
    return ok == 1 && n == BH__PG_KEY_LEN ? 0 : BH_ENOMEM;
}

/* ---- keyword/value arrays ---------------------------------------------------------------- */

/* Slots after the server's own settings: hostaddr, user, dbname, password, passfile,
 * application_name, options, and the terminating NULL. */
#define OUR_SLOTS 8

typedef struct builder {
    bh__pg_params_t *pp;
    size_t k; /* the next slot */
    int rc;   /* the first failure; later puts do nothing */
} builder_t;

static void put(builder_t *b, const char *key, const char *val)
{
    if (b->rc != 0)
        return;
    b->pp->kw[b->k] = bh_strdup(key);
    b->pp->vals[b->k] = bh_strdup(val);
    if (b->pp->kw[b->k] == NULL || b->pp->vals[b->k] == NULL)
        b->rc = BH_ENOMEM;
    b->k++;
}

/* The server's conninfo, parsed here so that nothing taken from a request is ever expanded as
 * a conninfo. NULL (logged) when libpq cannot parse it. */
static PQconninfoOption *parse_conninfo(const char *conninfo)
{
    char *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo != NULL ? conninfo : "", &errmsg);
    if (opts == NULL && errmsg != NULL) {
        bh_log_warn("postgres server conninfo: %.*s", (int)strcspn(errmsg, "\n"), errmsg);
        PQfreemem(errmsg);
    }
    return opts;
}

/* A single host name, not an IP literal, a socket path or a list, with no hostaddr: resolved
 * by the connection layer rather than by libpq's blocking getaddrinfo. */
static bool resolve_here(const char *host, const char *hostaddr, const char *port)
{
    unsigned char ip[sizeof(struct in6_addr)];
    return host != NULL && *host != '\0' && *host != '/' && *host != '@' &&
           strchr(host, ',') == NULL && (hostaddr == NULL || *hostaddr == '\0') &&
           (port == NULL || strchr(port, ',') == NULL) && inet_pton(AF_INET, host, ip) != 1 &&
           inet_pton(AF_INET6, host, ip) != 1;
}

/* *n: the keywords libpq knows (set or not). Returns the host name to resolve here, or NULL. */
static const char *scan_conninfo(const PQconninfoOption *opts, size_t *n)
{
    const char *host = NULL, *hostaddr = NULL, *port = NULL;
    *n = 0;
    for (const PQconninfoOption *o = opts; o->keyword != NULL; o++) {
        (*n)++;
        if (strcmp(o->keyword, "host") == 0)
            host = o->val;
        else if (strcmp(o->keyword, "hostaddr") == 0)
            hostaddr = o->val;
        else if (strcmp(o->keyword, "port") == 0)
            port = o->val;
    }
    return resolve_here(host, hostaddr, port) ? host : NULL;
}

/* The server's settings that are set, except those bh_pg sets itself (and hostaddr when the
 * host name is resolved here). Returns whether a passfile was among them. */
static bool put_conninfo(builder_t *b, const PQconninfoOption *opts, const char *dns_host)
{
    static const char *const ours[] = {"user", "password", "dbname", "options", "application_name"};
    bool has_passfile = false;
    for (const PQconninfoOption *o = opts; b->rc == 0 && o->keyword != NULL; o++) {
        if (o->val == NULL)
            continue;
        bool skip = false;
        for (size_t i = 0; i < sizeof(ours) / sizeof(ours[0]); i++)
            skip |= strcmp(o->keyword, ours[i]) == 0;
        has_passfile |= strcmp(o->keyword, "passfile") == 0;
        if (dns_host != NULL && strcmp(o->keyword, "hostaddr") == 0)
            skip = true;
        if (dns_host != NULL && strcmp(o->keyword, "host") == 0)
            b->pp->host_at = b->k;
        if (!skip)
            put(b, o->keyword, o->val);
    }
    return has_passfile;
}

/* An empty hostaddr slot for the addresses resolved later, and the name to resolve. */
static void put_dns_slot(builder_t *b, const char *dns_host)
{
    b->pp->hostaddr_at = b->k;
    put(b, "hostaddr", "");
    b->pp->dns_name = bh_strdup(dns_host);
    if (b->pp->dns_name == NULL)
        b->rc = BH_ENOMEM;
}

/* The credentials and the session, which override the server's conninfo. */
static void put_ours(builder_t *b, const bh_pg_server_t *srv, const char *options,
                     const char *dbname, const char *user, const char *password, bool has_passfile)
{
    b->pp->user_at = b->k;
    put(b, "user", user);
    b->pp->dbname_at = b->k;
    put(b, "dbname", dbname);
    if (password != NULL) {
        b->pp->password_at = b->k;
        put(b, "password", password);
    }
    /* Never fall back to this process's ~/.pgpass for someone else's credentials. */
    if (!has_passfile)
        put(b, "passfile", "/dev/null/bulkhead"); /* cannot exist; silent */
    /* A configured or client-given application_name is the startup parameter itself: as an
     * options -c setting it would lose to this keyword. */
    const char *app = "bulkhead";
    for (size_t i = 0; i < srv->n_session; i++)
        if (strcasecmp(srv->session[i].name, "application_name") == 0)
            app = srv->session[i].value;
    b->pp->app_at = b->k;
    put(b, "application_name", app);
    put(b, "options", options);
}

/* Keyword/value arrays: the server's conninfo, then the credentials and the session. */
int bh__pg_params_build(bh__pg_params_t *pp, const bh_pg_server_t *srv, const char *options,
                        const char *dbname, const char *user, const char *password)
{
    PQconninfoOption *opts = parse_conninfo(srv->conninfo);
    if (opts == NULL)
        return BH_EINVAL;
    size_t n;
    const char *dns_host = scan_conninfo(opts, &n); /* points into opts */
    pp->kw = bh_calloc(n + OUR_SLOTS, sizeof(char *));
    pp->vals = bh_calloc(n + OUR_SLOTS, sizeof(char *));
    pp->password_at = SIZE_MAX;
    builder_t b = {.pp = pp, .rc = pp->kw != NULL && pp->vals != NULL ? 0 : BH_ENOMEM};
    bool has_passfile = put_conninfo(&b, opts, dns_host);
    if (dns_host != NULL && b.rc == 0)
        put_dns_slot(&b, dns_host);
    PQconninfoFree(opts);
    put_ours(&b, srv, options, dbname, user, password, has_passfile);
    return b.rc;
}

/* ---- a host name resolved by the connection layer ---------------------------------------- */

/* host=name,name hostaddr=a,b for up to DNS_MAX_ADDRS addresses (libpq tries them in order). */
int bh__pg_params_set_addresses(bh__pg_params_t *pp, const struct addrinfo *res)
{
    char addrs[DNS_MAX_ADDRS * (INET6_ADDRSTRLEN + 1)] = "";
    size_t nl = strlen(pp->dns_name), n = 0;
    for (const struct addrinfo *ai = res; ai != NULL && n < DNS_MAX_ADDRS; ai = ai->ai_next) {
        char a[INET6_ADDRSTRLEN];
        const void *src =
            ai->ai_family == AF_INET
                ? (const void *)&((const struct sockaddr_in *)ai->ai_addr)->sin_addr
                : (const void *)&((const struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
        if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
            inet_ntop(ai->ai_family, src, a, sizeof(a)) == NULL || strstr(addrs, a) != NULL)
            continue;
        if (n > 0)
            strcat(addrs, ",");
        strcat(addrs, a);
        n++;
    }
    if (n == 0)
        return BH_ECONNECT_FAILED;
    char *hosts = bh_malloc(n * (nl + 1));
    char *hostaddr = bh_strdup(addrs);
    if (hosts == NULL || hostaddr == NULL) {
        bh_free(hosts);
        bh_free(hostaddr);
        return BH_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        memcpy(hosts + i * (nl + 1), pp->dns_name, nl);
        hosts[i * (nl + 1) + nl] = i + 1 < n ? ',' : '\0';
    }
    bh_free(pp->vals[pp->host_at]);
    bh_free(pp->vals[pp->hostaddr_at]);
    pp->vals[pp->host_at] = hosts;
    pp->vals[pp->hostaddr_at] = hostaddr;
    return 0;
}

/* ---- freeing ----------------------------------------------------------------------------- */

static void free_strings(char **v, size_t wipe_at)
{
    if (v == NULL)
        return;
    for (size_t i = 0; v[i] != NULL; i++) {
        if (i == wipe_at)
            explicit_bzero(v[i], strlen(v[i]));
        bh_free(v[i]);
    }
    bh_free(v);
}

void bh__pg_params_free(bh__pg_params_t *pp)
{
    free_strings(pp->kw, SIZE_MAX);
    free_strings(pp->vals, pp->password_at);
    bh_free(pp->dns_name);
}
