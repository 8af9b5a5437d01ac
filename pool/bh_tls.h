/* TLS on a libuv stream: OpenSSL driven through a BIO of our own, handshakes on the loop.
 *
 * The transport sits between a stream and its owner, who keeps reading and writing the way it
 * does on plain TCP: bh_tls_read_start() takes the owner's uv_alloc_cb/uv_read_cb and hands them
 * plaintext (the owner's alloc says where it goes, as with uv_read_start), and the owner's
 * bh_outq_t seals what it queues at each flush (bh_outq_t.seal). Nothing is copied that plain
 * TCP would not copy, apart from OpenSSL's own record buffers:
 *   - ciphertext is read into a buffer of the worker's pool, which OpenSSL reads through the BIO
 *     and which goes back as soon as it is consumed;
 *   - OpenSSL writes records through the BIO straight into the out queue's wire buffers.
 * An idle TLS connection therefore holds no buffer of ours, and with SSL_MODE_RELEASE_BUFFERS none
 * of OpenSSL's either.
 *
 * Reading stays under the owner's control: bh_tls_read_stop() leaves unread ciphertext where it
 * is; bh_tls_read_start() on a connection with ciphertext or plaintext left over delivers it from
 * the worker's idle handle, never from inside the call (like uv_read_start). */
#ifndef BH_TLS_H
#define BH_TLS_H

#include <stdbool.h>
#include <uv.h>
#include "bh_buf.h"
#include "bh_list.h"
#include "bh_outq.h"
#include "bh_stat.h"

typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_session_st SSL_SESSION;

enum bh_tls_side {
    BH_TLS_SERVER,   /* a client connection: we accept (metrics side "client") */
    BH_TLS_CLIENT,   /* an upstream connection: we connect (metrics side "upstream") */
};
enum bh_tls_result { BH_TLS_OK, BH_TLS_FAILED, BH_TLS_RESUMED, BH_TLS_NRESULTS };

/* Per worker. */
typedef struct bh_tls_env {
    uv_loop_t *loop;
    bh_bufpool_t *bufs;
    uv_idle_t idle;                       /* delivers what reading left over */
    bh_list_t ready;
    bh_counter_t *handshakes[2];          /* [side]: BH_TLS_NRESULTS counters each; may be NULL */
} bh_tls_env_t;

void bh_tls_env_init(bh_tls_env_t *env, uv_loop_t *loop, bh_bufpool_t *bufs);

typedef struct bh_tls bh_tls_t;

/* The handshake ended: status 0, or BH_ETLS_CERTIFICATE / BH_ETLS_ALERT / BH_ETLS_PROTOCOL
 * with OpenSSL's reason in detail (valid during the call). The callback may close the owner. */
typedef void (*bh_tls_handshake_cb)(bh_tls_t *t, int status, const char *detail);

struct bh_tls {
    SSL *ssl;
    bh_tls_env_t *env;
    uv_stream_t *stream;
    bh_outq_t *out;
    bh_buf_t *cin;                        /* ciphertext read and not yet consumed by OpenSSL */
    uint32_t cpos, clen;
    uv_alloc_cb alloc_cb;                 /* the owner's, for plaintext (called with the stream) */
    uv_read_cb read_cb;
    bh_tls_handshake_cb handshake_cb;
    SSL_SESSION **session_slot;           /* client side: where new sessions are kept */
    void *data;                           /* the owner's */
    bh_list_t ready_link;
    uint8_t side;                         /* enum bh_tls_side */
    bool handshaking;
    bool want_read;                       /* the owner reads (bh_tls_read_start) */
    bool in_pump;
    bool eof;                             /* the peer closed or the read failed (read_err) */
    bool heard;                           /* any byte came from the peer */
    bool dead;                            /* bh_tls_close: deliver nothing more */
    int read_err;
};

/* Sets t up on the owner's stream for ctx. Client side: sni (NULL: none) and the host name or IP address to verify (NULL: the
 * context's verify mode decides), and a session to resume (may be NULL). The handshake starts:
 * the client's first flight is queued and flushed; the server waits for the client's. Returns 0
 * or BH_ENOMEM / BH_ETLS_PROTOCOL. */
typedef struct bh_tls_owner {
    uv_stream_t *stream;
    bh_outq_t *out;                       /* the owner's queue on stream: t seals it from now on */
    uv_alloc_cb alloc_cb;                 /* plaintext: where it goes, what arrived */
    uv_read_cb read_cb;
    bh_tls_handshake_cb handshake_cb;
    void *data;                           /* t->data */
} bh_tls_owner_t;

BH_MUST_CHECK int bh_tls_server(bh_tls_t *t, bh_tls_env_t *env, SSL_CTX *ctx,
                                const bh_tls_owner_t *owner);
BH_MUST_CHECK int bh_tls_client(bh_tls_t *t, bh_tls_env_t *env, SSL_CTX *ctx,
                                const bh_tls_owner_t *owner, const char *sni,
                                const char *verify_name, SSL_SESSION **session_slot);

/* The owner's uv callbacks on the stream hand TLS connections here: where ciphertext goes, and
 * what arrived (nread as libuv gives it). Plaintext then reaches the owner's plaintext
 * callbacks given at setup, while it reads; the end as UV_EOF only after the peer's close_notify
 * (a TCP end without one is UV_ECONNRESET: a truncation). */
void bh_tls_alloc(bh_tls_t *t, uv_buf_t *buf);
void bh_tls_input(bh_tls_t *t, ssize_t nread);
/* The owner started or stopped reading (bh_stream_read_start/stop): on, with input left over,
 * delivers it from the worker's idle handle. */
void bh_tls_reading(bh_tls_t *t, bool on);

/* Queues a close_notify and flushes (best effort, before closing the stream). */
void bh_tls_shutdown(bh_tls_t *t);
/* The stream is closing: delivers nothing more and frees OpenSSL's state and the buffers. */
void bh_tls_close(bh_tls_t *t);

/* The verified peer certificate's subject in RFC 2253 form into buf (false when there is none). */
bool bh_tls_peer_subject(const bh_tls_t *t, char *buf, size_t size);
/* Whether unread plaintext or ciphertext is buffered (an idle connection with any is unusable). */
bool bh_tls_has_input(const bh_tls_t *t);

/* Reading, for both kinds of stream: a and r are the owner's uv callbacks, which pass a TLS
 * connection's bytes to bh_tls_alloc/bh_tls_input. */
static inline int bh_stream_read_start(uv_stream_t *s, bh_tls_t *t, uv_alloc_cb a, uv_read_cb r)
{
    int rc = t == NULL || !t->eof ? uv_read_start(s, a, r) : 0;
    if (rc == 0 && t != NULL)
        bh_tls_reading(t, true);
    return rc;
}

static inline void bh_stream_read_stop(uv_stream_t *s, bh_tls_t *t)
{
    uv_read_stop(s);
    if (t != NULL)
        bh_tls_reading(t, false);
}

#endif
