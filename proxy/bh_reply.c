/* Local error responses with Proxy-Status (RFC 9209). */
#include <stdio.h>
#include "bh_error.h"
#include "bh_http.h"
#include "bh_reply.h"

int bh_reply_status(int err)
{
    return bh_err_status(err);
}

/* A Proxy-Status details value: a quoted-string without quotes, backslashes or controls. */
static void quotable(char *dst, size_t size, const char *src)
{
    size_t n = 0;
    for (; *src != '\0' && n + 1 < size; src++)
        dst[n++] = (*src == '"' || *src == '\\' || (unsigned char)*src < 0x20 || *src == 0x7f)
                       ? '\''
                       : *src;
    dst[n] = '\0';
}

int bh_reply_write(bh_outq_t *q, int status, int err, bool close, uint64_t retry_after_s)
{
    return bh_reply_write_detail(q, status, err, NULL, NULL, close, retry_after_s);
}

int bh_reply_format(char *buf, size_t size, int status, int err, const char *detail,
                    const char *extra, bool close, uint64_t retry_after_s)
{
    char details[192];
    if (status == 0)
        status = bh_reply_status(err);
    const char *type = bh_err_proxy_status(err);
    const char *msg = bh_strerror(err);
    quotable(details, sizeof(details), detail != NULL && *detail != '\0' ? detail : msg);
    char body[256];
    int blen = snprintf(body, sizeof(body), "%d %s: %s\n", status, bh_http_reason(status), msg);
    char retry[48] = "";
    if (status == 503)
        snprintf(retry, sizeof(retry), "Retry-After: %llu\r\n",
                 (unsigned long long)(retry_after_s > 0 ? retry_after_s : 1));
    int n = snprintf(buf, size,
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: text/plain; charset=utf-8\r\n"
                     "Content-Length: %d\r\n"
                     "Proxy-Status: bulkhead; error=%s; details=\"%s\"\r\n"
                     "%s%s%s\r\n%s",
                     status, bh_http_reason(status), blen,
                     type != NULL ? type : "proxy_internal_error", details, retry,
                     extra != NULL ? extra : "", close ? "Connection: close\r\n" : "", body);
    return n < 0 || (size_t)n >= size ? BH_ENOMEM : n;
}

int bh_reply_write_detail(bh_outq_t *q, int status, int err, const char *detail, const char *extra,
                          bool close, uint64_t retry_after_s)
{
    char buf[BH_REPLY_MAX];
    int n = bh_reply_format(buf, sizeof(buf), status, err, detail, extra, close, retry_after_s);
    if (n < 0)
        return n;
    int rc = bh_outq_copy(q, buf, (size_t)n);
    return rc < 0 ? rc : bh_outq_flush(q);
}
