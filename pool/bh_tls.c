/* TLS on a libuv stream (see bh_tls.h). */
#include <string.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include "bh_alloc.h"
#include "bh_error.h"
#include "bh_log.h"
#include "bh_tls.h"

/* ---- the BIO: ciphertext from t->cin, to t->out ------------------------------------------- */

static BIO_METHOD *bio_method;
static uv_once_t bio_once = UV_ONCE_INIT;

static int bio_write(BIO *b, const char *p, int n)
{
    bh_tls_t *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    return bh_outq_raw(t->out, p, (size_t)n) < 0 ? -1 : n;
}

static int bio_read(BIO *b, char *p, int n)
{
    bh_tls_t *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    uint32_t avail = t->clen - t->cpos;
    if (avail == 0) {
        if (t->eof)
            return 0;
        BIO_set_retry_read(b);
        return -1;
    }
    uint32_t k = (uint32_t)n < avail ? (uint32_t)n : avail;
    memcpy(p, t->cin->data + t->cpos, k);
    t->cpos += k;
    return (int)k;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b;
    (void)num;
    (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0; /* writes are queued: a flush is the owner's */
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static void bio_method_init(void)
{
    bio_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "bulkhead");
    if (bio_method == NULL)
        return;
    BIO_meth_set_write(bio_method, bio_write);
    BIO_meth_set_read(bio_method, bio_read);
    BIO_meth_set_ctrl(bio_method, bio_ctrl);
    BIO_meth_set_create(bio_method, bio_create);
}

/* ---- sealing: the out queue's plaintext into records ----------------------------------------- */

/* Small pieces (framing, heads) are gathered into one record; large ones are written as they
 * are, so a body slice is encrypted straight from the buffer it was read into. */
#define SEAL_DIRECT 2048
#define SEAL_STAGE 16384

static int seal_write(bh_tls_t *t, const char *p, size_t n)
{
    size_t done;
    ERR_clear_error();
    if (SSL_write_ex(t->ssl, p, n, &done) != 1 || done != n)
        return BH_ETLS_PROTOCOL;
    return 0;
}

static int seal(bh_outq_t *q, bh_wreq_t *w)
{
    bh_tls_t *t = q->seal_arg;
    char stage[SEAL_STAGE];
    size_t staged = 0;
    int err = 0;
    for (uint32_t i = 0; i < w->nbufs && err == 0; i++) {
        const char *p = w->bufs[i].base;
        size_t n = w->bufs[i].len;
        if (n >= SEAL_DIRECT || staged + n > sizeof(stage)) {
            if (staged > 0 && (err = seal_write(t, stage, staged)) < 0)
                break;
            staged = 0;
        }
        if (n >= SEAL_DIRECT) {
            err = seal_write(t, p, n);
        } else {
            memcpy(stage + staged, p, n);
            staged += n;
        }
    }
    if (err == 0 && staged > 0)
        err = seal_write(t, stage, staged);
    bh_outq_put(q, w);
    return err;
}

/* ---- connections ------------------------------------------------------------------------------ */

static int tls_init(bh_tls_t *t, bh_tls_env_t *env, SSL_CTX *ctx, const bh_tls_owner_t *o)
{
    memset(t, 0, sizeof(*t));
    t->env = env;
    t->stream = o->stream;
    t->out = o->out;
    bh_list_init(&t->ready_link);
    uv_once(&bio_once, bio_method_init);
    if (bio_method == NULL)
        return BH_ENOMEM;
    t->alloc_cb = o->alloc_cb;
    t->read_cb = o->read_cb;
    t->handshake_cb = o->handshake_cb;
    t->data = o->data;
    t->handshaking = true;
    t->ssl = SSL_new(ctx);
    BIO *bio = BIO_new(bio_method);
    if (t->ssl == NULL || bio == NULL) {
        BIO_free(bio);
        SSL_free(t->ssl);
        t->ssl = NULL;
        return BH_ENOMEM;
    }
    BIO_set_data(bio, t);
    SSL_set_bio(t->ssl, bio, bio);
    SSL_set_app_data(t->ssl, t);
    t->out->seal = seal;
    t->out->seal_arg = t;
    return 0;
}

int bh_tls_server(bh_tls_t *t, bh_tls_env_t *env, SSL_CTX *ctx, const bh_tls_owner_t *owner)
{
    int rc = tls_init(t, env, ctx, owner);
    if (rc < 0)
        return rc;
    t->side = BH_TLS_SERVER;
    SSL_set_accept_state(t->ssl);
    return 0;
}

static void pump(bh_tls_t *t);

int bh_tls_client(bh_tls_t *t, bh_tls_env_t *env, SSL_CTX *ctx, const bh_tls_owner_t *owner,
                  const char *sni, const char *verify_name, SSL_SESSION **session_slot)
{
    int rc = tls_init(t, env, ctx, owner);
    if (rc < 0)
        return rc;
    t->side = BH_TLS_CLIENT;
    t->session_slot = session_slot;
    SSL_set_connect_state(t->ssl);
    if (sni != NULL && SSL_set_tlsext_host_name(t->ssl, sni) != 1)
        return BH_ETLS_PROTOCOL;
    if (verify_name != NULL) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(t->ssl);
        int ok = X509_VERIFY_PARAM_set1_ip_asc(vp, verify_name);
        if (ok != 1) {
            ERR_clear_error(); /* not an IP address: a host name */
            X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            ok = X509_VERIFY_PARAM_set1_host(vp, verify_name, 0);
        }
        if (ok != 1)
            return BH_ETLS_PROTOCOL;
    }
    if (session_slot != NULL && *session_slot != NULL)
        SSL_set_session(t->ssl, *session_slot);
    pump(t); /* the ClientHello goes out */
    return 0;
}

/* ---- the handshake ---------------------------------------------------------------------------- */

/* Sends what OpenSSL wrote. A failed write ends reading as the stream's error would. */
static void flush_out(bh_tls_t *t)
{
    int err = bh_outq_flush(t->out);
    if (err < 0 && !t->eof) {
        t->eof = true;
        t->read_err = err;
    }
}

static void count(bh_tls_t *t, enum bh_tls_result r)
{
    bh_counter_t *c = t->env->handshakes[t->side];
    if (c != NULL)
        bh_counter_add(&c[r], 1);
}

/* Why the handshake failed, as a cause and OpenSSL's words for it. */
static int classify(bh_tls_t *t, int ssl_err, char *detail, size_t size)
{
    long vr = SSL_get_verify_result(t->ssl);
    unsigned long e = ERR_peek_error();
    if (t->side == BH_TLS_CLIENT && vr != X509_V_OK) {
        snprintf(detail, size, "%s", X509_verify_cert_error_string(vr));
        return BH_ETLS_CERTIFICATE;
    }
    if (e != 0 && ERR_GET_LIB(e) == ERR_LIB_SSL) {
        int reason = ERR_GET_REASON(e);
        const char *s = ERR_reason_error_string(e);
        snprintf(detail, size, "%s", s != NULL ? s : "TLS error");
        if (reason >= SSL_AD_REASON_OFFSET && reason < SSL_AD_REASON_OFFSET + 256)
            return BH_ETLS_ALERT;
        if (reason == SSL_R_CERTIFICATE_VERIFY_FAILED)
            return BH_ETLS_CERTIFICATE;
        return BH_ETLS_PROTOCOL;
    }
    snprintf(detail, size, "%s", t->eof ? "connection closed during the TLS handshake"
                                        : (ssl_err == SSL_ERROR_SYSCALL ? "TLS I/O error"
                                                                        : "TLS handshake failed"));
    return BH_ETLS_PROTOCOL;
}

/* One step of the handshake: true once it is done (and the owner told), false while it waits
 * for the peer or after it failed (the owner told as well). */
static bool handshake(bh_tls_t *t)
{
    ERR_clear_error();
    int r = SSL_do_handshake(t->ssl);
    if (r == 1) {
        t->handshaking = false;
        count(t, SSL_session_reused(t->ssl) ? BH_TLS_RESUMED : BH_TLS_OK);
        flush_out(t); /* the last flight (a server's tickets) */
        t->handshake_cb(t, 0, NULL);
        return !t->dead;
    }
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ && !t->eof) {
        flush_out(t);
        return false;
    }
    char detail[160];
    int status = classify(t, e, detail, sizeof(detail));
    ERR_clear_error();
    flush_out(t); /* our alert, if any */
    t->handshaking = false;
    t->dead = true;
    if (t->heard || t->side == BH_TLS_CLIENT)
        count(t, BH_TLS_FAILED); /* a TCP probe that connects and closes is no handshake */
    t->handshake_cb(t, status, detail);
    return false;
}

/* ---- reading ---------------------------------------------------------------------------------- */

static void release_input(bh_tls_t *t)
{
    if (t->cin != NULL && t->cpos == t->clen) {
        bh_buf_unref(t->cin);
        t->cin = NULL;
        t->cpos = t->clen = 0;
    }
}

/* Plaintext to the owner while it reads: one SSL_read per buffer its alloc gives. */
static void deliver(bh_tls_t *t)
{
    while (t->want_read && !t->dead) {
        if (!t->eof && t->cpos == t->clen && !SSL_has_pending(t->ssl))
            return; /* nothing to decrypt: ask the owner for no buffer */
        uv_buf_t b = uv_buf_init(NULL, 0);
        t->alloc_cb((uv_handle_t *)t->stream, 65536, &b);
        if (b.base == NULL || b.len == 0) {
            t->read_cb(t->stream, UV_ENOBUFS, &b);
            return;
        }
        size_t got = 0;
        ERR_clear_error();
        int r = SSL_read_ex(t->ssl, b.base, b.len, &got);
        if (r == 1) {
            t->read_cb(t->stream, (ssize_t)got, &b);
            continue;
        }
        int e = SSL_get_error(t->ssl, r);
        ERR_clear_error();
        if (e == SSL_ERROR_WANT_READ && !t->eof) {
            t->read_cb(t->stream, 0, &b); /* gives the buffer back, as libuv does */
            return;
        }
        /* The peer's close_notify is the end (UV_EOF). A TCP end without one is a truncation
         * (RFC 9112 9.8: anyone on the path can cut TCP), reported as a reset: a body delimited
         * by the close is then incomplete, never completed with a last chunk. */
        ssize_t status = t->read_err != 0                ? t->read_err
                         : e == SSL_ERROR_ZERO_RETURN ? UV_EOF
                         : t->eof                     ? UV_ECONNRESET
                                                      : UV_EPROTO;
        t->want_read = false;
        t->read_cb(t->stream, status, &b);
        return;
    }
}

static void pump(bh_tls_t *t)
{
    if (t->in_pump || t->dead)
        return;
    t->in_pump = true;
    if (!t->handshaking || handshake(t))
        deliver(t);
    if (!t->dead) {
        release_input(t);
        flush_out(t); /* what reading wrote (TLS 1.3 key updates) */
        /* Nothing left to read: OpenSSL's record buffers go too (RELEASE_BUFFERS frees them
         * only after application data, not after a handshake). */
        if (t->cin == NULL && !SSL_has_pending(t->ssl))
            SSL_free_buffers(t->ssl);
    }
    t->in_pump = false;
}

void bh_tls_alloc(bh_tls_t *t, uv_buf_t *buf)
{
    if (t->cin != NULL && t->clen == t->cin->cap && t->cpos == t->clen)
        release_input(t);
    if (t->cin == NULL) {
        t->cin = bh_buf_get(t->env->bufs);
        t->cpos = t->clen = 0;
        if (t->cin == NULL) {
            *buf = uv_buf_init(NULL, 0);
            return;
        }
    }
    if (t->clen == t->cin->cap) { /* full, partly consumed: move the rest to the front */
        memmove(t->cin->data, t->cin->data + t->cpos, t->clen - t->cpos);
        t->clen -= t->cpos;
        t->cpos = 0;
    }
    *buf = uv_buf_init(t->cin->data + t->clen, t->cin->cap - t->clen);
}

void bh_tls_input(bh_tls_t *t, ssize_t nread)
{
    if (t->dead)
        return;
    if (nread == 0) {
        release_input(t);
        return;
    }
    if (nread < 0) {
        t->eof = true;
        if (nread != UV_EOF)
            t->read_err = (int)nread;
        uv_read_stop(t->stream);
    } else {
        t->clen += (uint32_t)nread;
        t->heard = true;
    }
    pump(t);
}

/* ---- deferred delivery ----------------------------------------------------------------------- */

static void on_idle(uv_idle_t *h)
{
    bh_tls_env_t *env = h->data;
    bh_list_t *n;
    while ((n = bh_list_first(&env->ready)) != NULL) { /* a pump adds nothing for itself */
        bh_list_remove(n);
        pump(bh_container_of(n, bh_tls_t, ready_link));
    }
    uv_idle_stop(h);
}

void bh_tls_env_init(bh_tls_env_t *env, uv_loop_t *loop, bh_bufpool_t *bufs)
{
    memset(env, 0, sizeof(*env));
    env->loop = loop;
    env->bufs = bufs;
    bh_list_init(&env->ready);
    uv_idle_init(loop, &env->idle);
    env->idle.data = env;
    uv_unref((uv_handle_t *)&env->idle);
}

bool bh_tls_has_input(const bh_tls_t *t)
{
    return t->cpos < t->clen || SSL_has_pending(t->ssl);
}

void bh_tls_reading(bh_tls_t *t, bool on)
{
    t->want_read = on;
    if (!on || t->dead || t->in_pump || bh_list_linked(&t->ready_link) ||
        !(bh_tls_has_input(t) || t->eof)) /* (an end that came while paused is news too) */
        return;
    bh_list_push_back(&t->env->ready, &t->ready_link);
    uv_idle_start(&t->env->idle, on_idle);
}

/* ---- closing ---------------------------------------------------------------------------------- */

void bh_tls_shutdown(bh_tls_t *t)
{
    if (t->ssl == NULL || t->dead || t->handshaking)
        return;
    ERR_clear_error();
    if (SSL_shutdown(t->ssl) < 0)
        ERR_clear_error();
    flush_out(t);
}

void bh_tls_close(bh_tls_t *t)
{
    /* SSL_free without a shutdown marks the session not resumable: a connection that merely
     * ends (idle, retired, the response done) keeps its session good for the next one. */
    if (t->ssl != NULL && !t->dead && !t->handshaking)
        SSL_set_shutdown(t->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    t->dead = true;
    t->want_read = false;
    bh_list_remove(&t->ready_link);
    if (t->ssl != NULL) {
        SSL_free(t->ssl); /* frees the BIO */
        t->ssl = NULL;
    }
    t->out->seal = NULL;
    bh_buf_unref(t->cin);
    t->cin = NULL;
    t->cpos = t->clen = 0;
}

bool bh_tls_peer_subject(const bh_tls_t *t, char *buf, size_t size)
{
    X509 *peer = SSL_get0_peer_certificate(t->ssl);
    if (peer == NULL || SSL_get_verify_result(t->ssl) != X509_V_OK || size == 0)
        return false;
    BIO *m = BIO_new(BIO_s_mem());
    if (m == NULL)
        return false;
    int n = X509_NAME_print_ex(m, X509_get_subject_name(peer), 0, XN_FLAG_RFC2253 /* escapes controls: a safe header */);
    char *p = NULL;
    long len = BIO_get_mem_data(m, &p);
    bool ok = n >= 0 && len >= 0 && (size_t)len < size;
    if (ok) {
        memcpy(buf, p, (size_t)len);
        buf[len] = 0;
    }
    BIO_free(m);
    return ok;
}
