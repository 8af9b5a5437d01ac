/* First-match routing on host, path prefix and method. */
#include <string.h>
#include <strings.h>
#include "bh_router.h"

static bh_span_t host_without_port(bh_span_t host)
{
    if (host.n > 0 && host.p[0] == '[') { /* [v6]:port */
        const char *close = memchr(host.p, ']', host.n);
        if (close != NULL)
            return (bh_span_t){host.p, (size_t)(close - host.p) + 1};
        return host;
    }
    const char *colon = memchr(host.p, ':', host.n);
    return colon != NULL ? (bh_span_t){host.p, (size_t)(colon - host.p)} : host;
}

static bool host_matches(const char *pattern, bh_span_t host)
{
    if (pattern == NULL)
        return true;
    size_t n = strlen(pattern);
    if (n > 1 && pattern[0] == '*' && pattern[1] == '.') {
        /* "*.example.com" matches any subdomain, not example.com itself */
        size_t suffix = n - 1;
        return host.n > suffix && strncasecmp(host.p + host.n - suffix, pattern + 1, suffix) == 0;
    }
    return host.n == n && strncasecmp(host.p, pattern, n) == 0;
}

const bh_conf_route_t *bh_route_match(const bh_conf_t *conf, bh_span_t host, bh_span_t path,
                                      uint32_t method_bit)
{
    host = host_without_port(host);
    for (size_t i = 0; i < conf->n_routes; i++) {
        const bh_conf_route_t *r = &conf->routes[i];
        size_t plen = strlen(r->path_prefix);
        if ((r->methods & method_bit) == 0 || !host_matches(r->host, host))
            continue;
        if (path.n >= plen && memcmp(path.p, r->path_prefix, plen) == 0)
            return r;
    }
    return NULL;
}
