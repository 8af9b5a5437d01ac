/* libFuzzer target: the Neon-Connection-String parser (bh_sql_parse_connstr).
 * Invariants (bh_sql_proto.h): on success user, dbname and host are non-empty NUL-terminated
 * strings no longer than the input (decoding only shrinks), the host is lowercase, the password
 * length matches, the port is 5432 unless the URL named one; re-serialising the parsed parts
 * (percent-encoded) parses again to the same parts. On failure err holds a message and nothing
 * is allocated (LeakSanitizer). */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "bh_sql_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, const uint8_t *data, size_t size)
{
    fprintf(stderr, "fuzz_connstr invariant: %s (input %zu bytes: %.*s)\n", what, size, (int)size,
            (const char *)data);
    abort();
}

static void enc(char **w, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
            *(*w)++ = (char)c;
        } else {
            *(*w)++ = '%';
            *(*w)++ = hex[c >> 4];
            *(*w)++ = hex[c & 15];
        }
    }
}

static bool same(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 8192)
        return -1;
    char *s = malloc(size ? size : 1); /* exact size: reads past n are caught */
    memcpy(s, data, size);
    bh_sql_connstr_t c;
    char err[256];
    err[0] = '\0';
    int rc = bh_sql_parse_connstr(s, size, &c, err, sizeof(err));
    free(s);
    if (rc != 0) {
        if (rc != BH_ESQL_CONNSTR && rc != BH_ENOMEM)
            fail("unexpected error code", data, size);
        if (rc == BH_ESQL_CONNSTR && err[0] == '\0')
            fail("error without a message", data, size);
        return 0;
    }
    if (c.user == NULL || c.dbname == NULL || c.host == NULL)
        fail("NULL part", data, size);
    if (c.user[0] == '\0' || c.dbname[0] == '\0' || c.host[0] == '\0')
        fail("empty user/dbname/host", data, size);
    if (strlen(c.user) > size || strlen(c.dbname) > size || strlen(c.host) > size)
        fail("a part longer than the input", data, size);
    for (const char *h = c.host; *h; h++)
        if (isupper((unsigned char)*h))
            fail("host not lowercased", data, size);
    if (c.password != NULL && strlen(c.password) != c.password_len)
        fail("password_len differs from strlen(password)", data, size);
    if (c.password == NULL && c.password_len != 0)
        fail("password_len without password", data, size);
    if (!c.has_port && c.port != 5432)
        fail("port without has_port", data, size);
    if (c.application_name != NULL && strlen(c.application_name) > size)
        fail("application_name longer than the input", data, size);

    /* Round trip: postgresql://USER[:PW]@HOST[:PORT]/DB[?application_name=APP] */
    size_t cap = 64 + 3 * (strlen(c.user) + c.password_len + strlen(c.dbname) + strlen(c.host) +
                           (c.application_name ? strlen(c.application_name) : 0));
    char *u = malloc(cap), *w = u;
    w += sprintf(w, "postgresql://");
    enc(&w, c.user, strlen(c.user));
    if (c.password != NULL) {
        *w++ = ':';
        enc(&w, c.password, c.password_len);
    }
    *w++ = '@';
    bool v6 = strchr(c.host, ':') != NULL || (c.host_ip && strspn(c.host, "0123456789.") !=
                                                               strlen(c.host));
    w += sprintf(w, v6 ? "[%s]" : "%s", c.host);
    if (c.has_port)
        w += sprintf(w, ":%u", (unsigned)c.port);
    *w++ = '/';
    enc(&w, c.dbname, strlen(c.dbname));
    if (c.application_name != NULL) {
        w += sprintf(w, "?application_name=");
        enc(&w, c.application_name, strlen(c.application_name));
    }
    bh_sql_connstr_t d;
    rc = bh_sql_parse_connstr(u, (size_t)(w - u), &d, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "re-serialised: %.*s -> %s\n", (int)(w - u), u, err);
        fail("re-serialised connection string does not parse", data, size);
    }
    if (!same(c.user, d.user) || !same(c.password, d.password) || !same(c.dbname, d.dbname) ||
        !same(c.host, d.host) || !same(c.application_name, d.application_name) ||
        c.port != d.port || c.has_port != d.has_port || c.host_ip != d.host_ip ||
        c.password_len != d.password_len) {
        fprintf(stderr, "re-serialised: %.*s\n", (int)(w - u), u);
        fail("re-serialised connection string parses differently", data, size);
    }
    free(u);
    bh_sql_connstr_free(&c);
    bh_sql_connstr_free(&d);
    return 0;
}
