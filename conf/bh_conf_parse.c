/* Value parsers for the config: durations, sizes, percentages, addresses, HTTP method names. */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdlib.h>
#include <netinet/in.h>
#include <string.h>
#include "bh_alloc.h"
#include "bh_conf.h"
#include "bh_conf_int.h"

typedef struct unit {
    const char *name;
    uint64_t mul;
} unit_t;

static const unit_t DURATION_UNITS[] = {
    {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000},
};

static const unit_t SIZE_UNITS[] = {
    {"", 1},
    {"B", 1},
    {"k", 1024},
    {"K", 1024},
    {"KiB", 1024},
    {"MiB", 1024 * 1024},
    {"GiB", 1024ull * 1024 * 1024},
    {"TiB", 1024ull * 1024 * 1024 * 1024},
    {"KB", 1000},
    {"MB", 1000 * 1000},
    {"GB", 1000ull * 1000 * 1000},
    {"TB", 1000ull * 1000 * 1000 * 1000},
};

/* Reads leading decimal digits into *v. Returns how many were read; 0 when there are none or
 * the number does not fit in 64 bits. */
static size_t parse_digits(const char *s, uint64_t *v)
{
    uint64_t x = 0;
    size_t i;

    for (i = 0; s[i] >= '0' && s[i] <= '9'; i++) {
        unsigned d = (unsigned)(s[i] - '0');
        if (x > (UINT64_MAX - d) / 10)
            return 0;
        x = x * 10 + d;
    }
    *v = x;
    return i;
}

/* "<digits><unit>" with the unit looked up in units[]; overflow-safe. */
static int parse_with_unit(const char *s, const unit_t *units, size_t n_units, uint64_t *out)
{
    uint64_t v;
    size_t i = parse_digits(s, &v);

    if (i == 0)
        return -1;
    for (size_t u = 0; u < n_units; u++) {
        if (strcmp(s + i, units[u].name) == 0) {
            if (v > UINT64_MAX / units[u].mul)
                return -1;
            *out = v * units[u].mul;
            return 0;
        }
    }
    return -1;
}

int bh_parse_duration_ms(const char *s, uint64_t *out_ms)
{
    if (strcmp(s, "0") == 0) {
        *out_ms = 0;
        return 0;
    }
    return parse_with_unit(s, DURATION_UNITS, sizeof DURATION_UNITS / sizeof DURATION_UNITS[0],
                           out_ms);
}

int bh_parse_size(const char *s, uint64_t *out_bytes)
{
    return parse_with_unit(s, SIZE_UNITS, sizeof SIZE_UNITS / sizeof SIZE_UNITS[0], out_bytes);
}

/* The form is checked by hand (digits, optionally '.' and digits, optionally '%'); the value is
 * strtod's, the double nearest the decimal written, so "0.3" is 0.3 and a value written back with
 * enough digits reads back to the same double. */
int bh_parse_percent(const char *s, double *out_fraction)
{
    size_t i = strspn(s, "0123456789");
    double v;

    if (i == 0)
        return -1;
    if (s[i] == '.') {
        if (!isdigit((unsigned char)s[++i]))
            return -1;
        i += strspn(s + i, "0123456789");
    }
    if (s[i] != '\0' && !(s[i] == '%' && s[i + 1] == '\0'))
        return -1;
    v = strtod(s, NULL); /* stops at '%'; the C locale: '.' is the decimal point */
    if (s[i] == '%')
        v /= 100;
    if (!(v <= 1.0))
        return -1;
    *out_fraction = v;
    return 0;
}

/* Letters, digits, '-', '.', '_', starting with a letter or digit. */
static int valid_hostname(const char *h)
{
    if (!isalnum((unsigned char)h[0]))
        return 0;
    for (; *h != '\0'; h++)
        if (!isalnum((unsigned char)*h) && strchr("-._", *h) == NULL)
            return 0;
    return 1;
}

int bh_parse_addr(const char *s, bh_conf_addr_t *addr)
{
    const char *host, *colon;
    size_t hlen;
    uint64_t port;
    size_t n;
    int bracketed = s[0] == '[';
    char h[256];

    memset(addr, 0, sizeof *addr);
    if (bracketed) {
        const char *rb = strchr(s, ']');
        if (rb == NULL || rb[1] != ':')
            return -1;
        host = s + 1;
        hlen = (size_t)(rb - host);
        colon = rb + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL)
            return -1;
        host = s;
        hlen = (size_t)(colon - s);
        if (memchr(host, ':', hlen) != NULL) /* an IPv6 address needs brackets */
            return -1;
    }
    n = parse_digits(colon + 1, &port);
    if (n == 0 || colon[1 + n] != '\0' || port < 1 || port > 65535)
        return -1;
    if (hlen == 0 || hlen >= sizeof h)
        return -1;
    memcpy(h, host, hlen);
    h[hlen] = '\0';

    if (bracketed) {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&addr->sa;
        if (inet_pton(AF_INET6, h, &a6->sin6_addr) != 1)
            return -1;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        addr->salen = sizeof *a6;
    } else {
        struct sockaddr_in *a4 = (struct sockaddr_in *)&addr->sa;
        if (inet_pton(AF_INET, h, &a4->sin_addr) == 1) {
            a4->sin_family = AF_INET;
            a4->sin_port = htons((uint16_t)port);
            addr->salen = sizeof *a4;
        } else if (!valid_hostname(h)) {
            return -1;
        }
    }
    addr->port = (uint16_t)port;
    addr->text = bh_strdup(s);
    addr->host = bh_strdup(h);
    if (addr->text == NULL || addr->host == NULL) {
        bh_free(addr->text);
        bh_free(addr->host);
        memset(addr, 0, sizeof *addr);
        return BH_ENOMEM;
    }
    return 0;
}

static const name_bit_t METHODS[] = {
    {"GET", BH_M_GET},         {"HEAD", BH_M_HEAD},     {"POST", BH_M_POST},
    {"PUT", BH_M_PUT},         {"DELETE", BH_M_DELETE}, {"CONNECT", BH_M_CONNECT},
    {"OPTIONS", BH_M_OPTIONS}, {"TRACE", BH_M_TRACE},   {"PATCH", BH_M_PATCH},
};
const word_set_t bh__conf_methods = {METHODS, sizeof METHODS / sizeof METHODS[0]};

/* RFC 9110 tchar. */
static int is_tchar(unsigned char ch)
{
    return isalnum(ch) || (ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

uint32_t bh_method_bit(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof METHODS / sizeof METHODS[0]; i++)
        if (strlen(METHODS[i].name) == len && memcmp(METHODS[i].name, name, len) == 0)
            return METHODS[i].bit;
    if (len == 0)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!is_tchar((unsigned char)name[i]))
            return 0;
    return BH_M_OTHER;
}
