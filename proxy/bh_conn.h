/* A downstream (client) connection as an exchange and its handler see it: where responses go,
 * what the request parser decided, and a few calls back into the connection. The client module
 * (bh_client.c) implements it; the exchange code never names that module, so calls go one way:
 * client -> exchange -> handler, and back only through these operations (like libuv callbacks).
 *
 * Every operation may end the exchange or close the connection before it returns: after one,
 * check conn->closing (the connection is going away; the exchange was aborted) before touching
 * the exchange again. */
#ifndef BH_CONN_H
#define BH_CONN_H

#include <stdbool.h>
#include <llhttp.h>
#include "bh_buf.h"
#include "bh_outq.h"

typedef struct bh_conn bh_conn_t;
typedef struct bh_worker bh_worker_t;

typedef struct bh_conn_ops {
    /* Cuts the connection now (a response already started cannot be completed). */
    void (*close)(bh_conn_t *conn);
    /* Parses on: the current request's body once the handler can take it, or, after the
     * exchange ended, the next request. Harmless when nothing is paused. */
    void (*resume)(bh_conn_t *conn);
    /* The exchange's next_timeout() changed. */
    void (*rearm_timer)(bh_conn_t *conn);
    /* A write queue crossed its high-water mark either way: reading may stop or go on. */
    void (*update_reading)(bh_conn_t *conn);
    /* The exchange ended (counted and logged): the connection carries on with the next request,
     * or closes once its output is written when close_after is set. */
    void (*exchange_done)(bh_conn_t *conn);
    /* After a 101: no more HTTP on this connection; client bytes go to the handler's
     * tunnel_data() and the connection closes when the exchange ends. */
    void (*tunnel)(bh_conn_t *conn);
} bh_conn_ops_t;

struct bh_conn {
    const bh_conn_ops_t *ops;
    bh_worker_t *w;
    bh_outq_t out;       /* bytes to the client */
    llhttp_t *parser;    /* the request parser: version, framing, keep-alive (during a request) */
    bh_buf_t *rbuf;      /* the read buffer that body bytes point into (NULL when none) */
    uint32_t rpos, rlen; /* parsed up to; bytes in rbuf (tunnel_data forwards the rest) */
    bool closing;        /* the connection is closing: the exchange was aborted */
    bool close_after;    /* close once the current response is written */
    char ip[46];         /* the client's address, for X-Forwarded-For and the log */
    bool https;          /* arrived over TLS (X-Forwarded-Proto) */
    char *cert_subject;  /* the verified client certificate's subject (RFC 2253), or NULL */
};

static inline bool bh_conn_http11(const bh_conn_t *conn)
{
    return conn->parser->http_major == 1 && conn->parser->http_minor >= 1;
}

#endif
