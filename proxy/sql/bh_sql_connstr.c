/* Parsing of the Neon-Connection-String header, a postgres:// URL (section 2.1).
 *
 * User, password and database are percent-decoded as Neon's proxy does (invalid escapes stay
 * literal); the host is lowercased, never decoded; of the query only application_name is read.
 * Errors are the 400 messages of section 6.1, in Neon's order (see bh_sql_parse_connstr). */
#include <arpa/inet.h>
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
        } else if (form && c == '+') {
            c = ' ';
        }
        if (c == '\0') /* "%00" or a raw NUL byte: either would cut the C string short */
            return -1;
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

/* Where the parts of the URL lie in the input, before decoding. The ranges are disjoint and
 * inside s[0..n): that bounds the decoded copies (see bh_sql_parse_connstr). */
typedef struct url_parts {
    const char *end;                     /* s + n */
    const char *auth_end;                /* end of the authority: at '/', '?', '#' or end */
    const char *userinfo, *userinfo_end; /* before the authority's last '@'; empty without one */
    const char *host, *host_end;         /* without an IPv6 literal's brackets */
    const char *db, *db_end;             /* the first path segment, possibly empty */
    const char *query, *query_end;       /* after the first '?' up to '#'; NULL without '?' */
    uint32_t port;                       /* 5432 unless has_port */
    bool has_port, v6;
} url_parts_t;

/* "postgres://" or "postgresql://", the scheme case-insensitive. *rest: just after the "//".
 * Returns NULL or the 400 message. */
static const char *parse_scheme(const char *s, const char *end, const char **rest)
{
    const char *colon = memchr(s, ':', (size_t)(end - s));
    if (colon == NULL || colon == s)
        return "invalid connection string: relative URL without a base";
    size_t slen = (size_t)(colon - s);
    if (!((slen == 8 && strncasecmp(s, "postgres", 8) == 0) ||
          (slen == 10 && strncasecmp(s, "postgresql", 10) == 0)))
        return "incorrect scheme";
    const char *p = colon + 1;
    if (end - p < 2 || p[0] != '/' || p[1] != '/')
        return "missing database name"; /* "postgres:db": no authority, no hierarchical path */
    *rest = p + 2;
    return NULL;
}

/* "[v6]" or "[v6]:port" from hp to the end of the authority; *port: where the port starts. */
static const char *parse_ipv6_host(const char *hp, url_parts_t *u, const char **port)
{
    static const char bad[] = "invalid connection string: invalid IPv6 address";
    const char *rb = memchr(hp, ']', (size_t)(u->auth_end - hp));
    if (rb == NULL)
        return bad;
    u->host = hp + 1;
    u->host_end = rb;
    for (const char *q = u->host; q < u->host_end; q++)
        if (!(hexval(*q) >= 0 || *q == ':' || *q == '.'))
            return bad;
    /* The characters alone admit "[0]" or "[:::]": only a real IPv6 address is host_ip. */
    char v6[INET6_ADDRSTRLEN];
    struct in6_addr a;
    size_t n = (size_t)(u->host_end - u->host);
    if (n == 0 || n >= sizeof(v6))
        return bad;
    memcpy(v6, u->host, n);
    v6[n] = '\0';
    if (inet_pton(AF_INET6, v6, &a) != 1)
        return bad;
    u->v6 = true;
    if (rb + 1 < u->auth_end) {
        if (rb[1] != ':')
            return bad;
        *port = rb + 2;
    }
    return NULL;
}

/* A name or IPv4 literal, then an optional ":port" (everything after the first ':'). */
static const char *parse_reg_host(const char *hp, url_parts_t *u, const char **port)
{
    const char *e = hp;
    while (e < u->auth_end && *e != ':')
        e++;
    if (e < u->auth_end)
        *port = e + 1;
    u->host = hp;
    u->host_end = e;
    for (const char *q = hp; q < e; q++)
        if (!host_char(*q))
            return "invalid connection string: invalid domain character";
    return NULL;
}

/* Decimal digits from p (NULL: no ':') to the end of the authority, at most 65535. Empty counts
 * as absent, as in the WHATWG parser. */
static const char *parse_port(const char *p, url_parts_t *u)
{
    u->port = 5432;
    if (p == NULL || p >= u->auth_end)
        return NULL;
    uint32_t port = 0;
    for (const char *q = p; q < u->auth_end; q++)
        if (*q < '0' || *q > '9' || (port = port * 10 + (uint32_t)(*q - '0')) > 65535)
            return "invalid connection string: invalid port number";
    u->port = port;
    u->has_port = true;
    return NULL;
}

/* "[userinfo@]host[:port]" from p up to '/', '?', '#' or the end. The userinfo ends at the LAST
 * '@', so a password may contain '@'. Host errors come before port errors. */
static const char *parse_authority(const char *p, url_parts_t *u)
{
    const char *e = p;
    while (e < u->end && *e != '/' && *e != '?' && *e != '#')
        e++;
    u->auth_end = e;
    const char *at = NULL;
    for (const char *q = p; q < e; q++)
        if (*q == '@')
            at = q;
    u->userinfo = p;
    u->userinfo_end = at ? at : p;
    const char *hp = at ? at + 1 : p, *port = NULL;
    const char *msg =
        (hp < e && *hp == '[') ? parse_ipv6_host(hp, u, &port) : parse_reg_host(hp, u, &port);
    return msg != NULL ? msg : parse_port(port, u);
}

/* The database is the first path segment after the authority; the query runs from the first '?'
 * after the authority to the next '#' (so a '?' inside the fragment starts one too). */
static void find_path_and_query(url_parts_t *u)
{
    const char *path = u->auth_end, *path_end = u->auth_end;
    if (path < u->end && *path == '/') {
        path++;
        path_end = path;
        while (path_end < u->end && *path_end != '/' && *path_end != '?' && *path_end != '#')
            path_end++;
    }
    u->db = path;
    u->db_end = path_end;
    const char *qm = memchr(u->auth_end, '?', (size_t)(u->end - u->auth_end));
    if (qm != NULL) {
        u->query = qm + 1;
        u->query_end = memchr(u->query, '#', (size_t)(u->end - u->query));
        if (u->query_end == NULL)
            u->query_end = u->end;
    }
}

/* Decodes [p, e) at *w as the next NUL-terminated part and moves *w past it. Returns the part, or
 * NULL (*w unchanged) when it would hold a NUL byte. len: the decoded length, may be NULL. */
static const char *take_decoded(const char *p, const char *e, bool form, char **w, size_t *len)
{
    long k = pct_decode(p, (size_t)(e - p), *w, form);
    if (k < 0)
        return NULL;
    const char *part = *w;
    *w += k + 1;
    if (len != NULL)
        *len = (size_t)k;
    return part;
}

/* User (up to the userinfo's first ':'), password (after it; absent without ':') and database,
 * in that order. Returns NULL or why a part is unusable. */
static const char *decode_credentials(const url_parts_t *u, char **w, bh_sql_connstr_t *out)
{
    const char *sep = memchr(u->userinfo, ':', (size_t)(u->userinfo_end - u->userinfo));
    out->user = take_decoded(u->userinfo, sep ? sep : u->userinfo_end, false, w, NULL);
    if (out->user == NULL)
        return "NUL byte in user name";
    if (sep != NULL) {
        out->password = take_decoded(sep + 1, u->userinfo_end, false, w, &out->password_len);
        if (out->password == NULL)
            return "NUL byte in password";
    }
    out->dbname = take_decoded(u->db, u->db_end, false, w, NULL);
    if (out->dbname == NULL)
        return "NUL byte in database name";
    return NULL;
}

/* The host is not percent-decoded (host_char admits no '%'), only lowercased. */
static void copy_host(const url_parts_t *u, char **w, bh_sql_connstr_t *out)
{
    size_t n = (size_t)(u->host_end - u->host);
    for (size_t i = 0; i < n; i++) {
        char c = u->host[i];
        (*w)[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
    }
    (*w)[n] = '\0';
    out->host = *w;
    *w += n + 1;
}

/* The first "application_name=" of the query (exact key) whose value decodes without a NUL byte,
 * '+' meaning space; every other parameter is ignored. */
static void find_application_name(const url_parts_t *u, char **w, bh_sql_connstr_t *out)
{
    for (const char *q = u->query; q != NULL && q < u->query_end;) {
        const char *amp = memchr(q, '&', (size_t)(u->query_end - q));
        const char *pe = amp ? amp : u->query_end;
        const char *eq = memchr(q, '=', (size_t)(pe - q));
        if (eq != NULL && eq - q == 16 && memcmp(q, "application_name", 16) == 0) {
            out->application_name = take_decoded(eq + 1, pe, true, w, NULL);
            if (out->application_name != NULL)
                return;
        }
        q = amp ? amp + 1 : u->query_end;
    }
}

/* Neon's order of checks: database, user, host. */
static const char *missing_part(const bh_sql_connstr_t *c)
{
    if (c->dbname[0] == '\0')
        return "missing database name";
    if (c->user[0] == '\0')
        return "missing username";
    if (c->host[0] == '\0')
        return "missing hostname";
    return NULL;
}

/* Syntax first (scheme, host, port: nothing allocated), then decoding, then the missing parts. */
int bh_sql_parse_connstr(const char *s, size_t n, bh_sql_connstr_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    url_parts_t u = {.end = s + n};
    const char *rest = NULL;
    const char *msg = parse_scheme(s, u.end, &rest);
    if (msg == NULL)
        msg = parse_authority(rest, &u);
    if (msg != NULL) {
        bh__sql_set_err(err, errlen, "%s", msg);
        return BH_ESQL_CONNSTR;
    }
    find_path_and_query(&u);

    /* Every part is decoded from its own range of s and decoding never lengthens, so the parts
     * and their five NULs (user, password, database, host, application_name) fit in n + 8. */
    char *mem = bh_malloc(n + 8);
    if (mem == NULL)
        return BH_ENOMEM;
    char *w = mem;
    const char *bad = decode_credentials(&u, &w, out);
    if (bad != NULL) {
        bh_free(mem);
        memset(out, 0, sizeof(*out));
        bh__sql_set_err(err, errlen, "invalid connection string: %s", bad);
        return BH_ESQL_CONNSTR;
    }
    copy_host(&u, &w, out);
    find_application_name(&u, &w, out);
    out->port = (uint16_t)u.port;
    out->has_port = u.has_port;
    out->host_ip = u.v6 || is_ipv4(out->host);
    out->mem_ = mem;
    const char *missing = missing_part(out);
    if (missing != NULL) {
        bh_sql_connstr_free(out);
        bh__sql_set_err(err, errlen, "%s", missing);
        return BH_ESQL_CONNSTR;
    }
    return 0;
}

void bh_sql_connstr_free(bh_sql_connstr_t *c)
{
    bh_free(c->mem_);
    memset(c, 0, sizeof(*c));
}
