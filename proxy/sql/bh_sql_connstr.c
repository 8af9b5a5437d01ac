/* The Neon-Connection-String header (section 2.1): a postgres:// URL parsed into user, password,
 * database, host and port, percent-decoded as Neon's proxy does. */
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include "bh_alloc.h"
#include "bh_sql_proto_int.h"

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes s[0..n) into dst (NUL-terminated); invalid escapes stay literal, as in the
 * urlencoding crate. form: '+' means space (query strings). Returns the length, or -1 when the
 * result would contain a NUL byte (libpq takes C strings). */
static long pct_decode(const char *s, size_t n, char *dst, bool form)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
            c = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
            if (c == '\0')
                return -1;
        } else if (form && c == '+') {
            c = ' ';
        }
        dst[o++] = c;
    }
    dst[o] = '\0';
    return (long)o;
}

static bool host_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '-' || c == '_' || c == '~';
}

static bool is_ipv4(const char *s)
{
    int dots = 0, digits = 0;
    for (; *s; s++) {
        if (*s == '.') {
            if (digits == 0)
                return false;
            dots++;
            digits = 0;
        } else if (*s >= '0' && *s <= '9') {
            if (++digits > 3)
                return false;
        } else {
            return false;
        }
    }
    return dots == 3 && digits > 0;
}

int bh_sql_parse_connstr(const char *s, size_t n, bh_sql_connstr_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    const char *end = s + n;

    /* scheme */
    const char *colon = memchr(s, ':', n);
    if (colon == NULL || colon == s) {
        bh__sql_set_err(err, errlen, "invalid connection string: relative URL without a base");
        return BH_SQL_ECONNSTR;
    }
    size_t slen = (size_t)(colon - s);
    if (!((slen == 8 && strncasecmp(s, "postgres", 8) == 0) ||
          (slen == 10 && strncasecmp(s, "postgresql", 10) == 0))) {
        bh__sql_set_err(err, errlen, "incorrect scheme");
        return BH_SQL_ECONNSTR;
    }
    const char *p = colon + 1;
    if (end - p < 2 || p[0] != '/' || p[1] != '/') {
        /* "postgres:db" has no authority and no hierarchical path */
        bh__sql_set_err(err, errlen, "missing database name");
        return BH_SQL_ECONNSTR;
    }
    p += 2;

    /* authority ends at '/', '?' or '#'; userinfo ends at its last '@' */
    const char *auth_end = p;
    while (auth_end < end && *auth_end != '/' && *auth_end != '?' && *auth_end != '#')
        auth_end++;
    const char *at = NULL;
    for (const char *q = p; q < auth_end; q++)
        if (*q == '@')
            at = q;
    const char *ui = p, *ui_end = at ? at : p;
    const char *hp = at ? at + 1 : p;

    /* host and port */
    const char *host = hp, *host_end, *port_s = NULL, *port_end = auth_end;
    bool v6 = false;
    if (hp < auth_end && *hp == '[') {
        const char *rb = memchr(hp, ']', (size_t)(auth_end - hp));
        if (rb == NULL) {
            bh__sql_set_err(err, errlen, "invalid connection string: invalid IPv6 address");
            return BH_SQL_ECONNSTR;
        }
        host = hp + 1;
        host_end = rb;
        for (const char *q = host; q < host_end; q++) {
            if (!(hexval(*q) >= 0 || *q == ':' || *q == '.')) {
                bh__sql_set_err(err, errlen, "invalid connection string: invalid IPv6 address");
                return BH_SQL_ECONNSTR;
            }
        }
        if (host == host_end) {
            bh__sql_set_err(err, errlen, "invalid connection string: invalid IPv6 address");
            return BH_SQL_ECONNSTR;
        }
        v6 = true;
        if (rb + 1 < auth_end) {
            if (rb[1] != ':') {
                bh__sql_set_err(err, errlen, "invalid connection string: invalid IPv6 address");
                return BH_SQL_ECONNSTR;
            }
            port_s = rb + 2;
        }
    } else {
        host_end = hp;
        while (host_end < auth_end && *host_end != ':')
            host_end++;
        if (host_end < auth_end)
            port_s = host_end + 1;
        for (const char *q = host; q < host_end; q++) {
            if (!host_char(*q)) {
                bh__sql_set_err(err, errlen, "invalid connection string: invalid domain character");
                return BH_SQL_ECONNSTR;
            }
        }
    }
    uint32_t port = 5432;
    bool has_port = false;
    if (port_s != NULL && port_s < port_end) {
        port = 0;
        for (const char *q = port_s; q < port_end; q++) {
            if (*q < '0' || *q > '9' || (port = port * 10 + (uint32_t)(*q - '0')) > 65535) {
                bh__sql_set_err(err, errlen, "invalid connection string: invalid port number");
                return BH_SQL_ECONNSTR;
            }
        }
        has_port = true;
    }

    /* path: first segment is the database */
    const char *path = auth_end, *path_end = auth_end;
    if (path < end && *path == '/') {
        path++;
        path_end = path;
        while (path_end < end && *path_end != '/' && *path_end != '?' && *path_end != '#')
            path_end++;
    }
    /* query: only application_name */
    const char *query = NULL, *query_end = NULL;
    const char *qm = memchr(auth_end, '?', (size_t)(end - auth_end));
    if (qm != NULL) {
        query = qm + 1;
        query_end = memchr(query, '#', (size_t)(end - query));
        if (query_end == NULL)
            query_end = end;
    }

    /* every decoded part fits in n bytes plus its NUL */
    char *mem = bh_malloc(n + 8);
    if (mem == NULL)
        return BH_ENOMEM;
    char *w = mem;
    const char *bad = NULL;

    const char *pw_sep = memchr(ui, ':', (size_t)(ui_end - ui));
    const char *user_end = pw_sep ? pw_sep : ui_end;
    long len = pct_decode(ui, (size_t)(user_end - ui), w, false);
    if (len < 0)
        bad = "NUL byte in user name";
    out->user = w;
    w += len + 1;
    if (bad == NULL && pw_sep != NULL) {
        len = pct_decode(pw_sep + 1, (size_t)(ui_end - pw_sep - 1), w, false);
        if (len < 0)
            bad = "NUL byte in password";
        out->password = w;
        out->password_len = (size_t)len;
        w += len + 1;
    }
    if (bad == NULL) {
        len = pct_decode(path, (size_t)(path_end - path), w, false);
        if (len < 0)
            bad = "NUL byte in database name";
        out->dbname = w;
        w += len + 1;
    }
    if (bad != NULL) {
        bh_free(mem);
        memset(out, 0, sizeof(*out));
        bh__sql_set_err(err, errlen, "invalid connection string: %s", bad);
        return BH_SQL_ECONNSTR;
    }
    size_t hlen = (size_t)(host_end - host);
    for (size_t i = 0; i < hlen; i++) {
        char c = host[i];
        w[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
    }
    w[hlen] = '\0';
    out->host = w;
    w += hlen + 1;
    for (const char *q = query; q != NULL && q < query_end;) {
        const char *amp = memchr(q, '&', (size_t)(query_end - q));
        const char *pe = amp ? amp : query_end;
        const char *eq = memchr(q, '=', (size_t)(pe - q));
        if (eq != NULL && eq - q == 16 && memcmp(q, "application_name", 16) == 0 &&
            out->application_name == NULL) {
            len = pct_decode(eq + 1, (size_t)(pe - eq - 1), w, true);
            if (len >= 0) {
                out->application_name = w;
                w += len + 1;
            }
        }
        q = amp ? amp + 1 : query_end;
    }
    out->port = (uint16_t)port;
    out->has_port = has_port;
    out->host_ip = v6 || is_ipv4(out->host);
    out->mem_ = mem;

    /* Neon's order of checks: database, user, host. */
    const char *missing = NULL;
    if (out->dbname[0] == '\0')
        missing = "missing database name";
    else if (out->user[0] == '\0')
        missing = "missing username";
    else if (out->host[0] == '\0')
        missing = "missing hostname";
    if (missing != NULL) {
        bh_sql_connstr_free(out);
        bh__sql_set_err(err, errlen, "%s", missing);
        return BH_SQL_ECONNSTR;
    }
    return 0;
}

void bh_sql_connstr_free(bh_sql_connstr_t *c)
{
    bh_free(c->mem_);
    memset(c, 0, sizeof(*c));
}
