/* Responses bulkhead makes itself: status, RFC 9209 Proxy-Status naming the cause, short body. */
#ifndef BH_REPLY_H
#define BH_REPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "bh_outq.h"

/* The status bulkhead answers with for a failure cause (BH_E*): the error table's. */
int bh_reply_status(int err);

/* The longest response bh_reply_format writes. */
#define BH_REPLY_MAX 1024

/* Writes the complete response for cause err into buf (see bh_reply_write_detail); returns its
 * length, or BH_ENOMEM when it does not fit in size. */
int bh_reply_format(char *buf, size_t size, int status, int err, const char *detail,
                    const char *extra, bool close, uint64_t retry_after_s);

/* Queues a complete response for cause err (status from bh_reply_status unless status != 0).
 * close: adds "Connection: close". 503s carry Retry-After: retry_after_s (at least 1). */
/* The same with details for the Proxy-Status header (e.g. OpenSSL's reason; NULL: the
 * cause's message) and extra header lines (each ending in CRLF; NULL: none). */
BH_MUST_CHECK int bh_reply_write_detail(bh_outq_t *q, int status, int err, const char *detail,
                                        const char *extra, bool close, uint64_t retry_after_s);
BH_MUST_CHECK int bh_reply_write(bh_outq_t *q, int status, int err, bool close,
                                 uint64_t retry_after_s);

#endif
