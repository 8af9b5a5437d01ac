/* TLS contexts (see bh_tls_ctx.h). */
#include <string.h>
#include <strings.h>
#include <time.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <openssl/core_names.h>
#include <uv.h>
#include "bh_alloc.h"
#include "bh_log.h"
#include "bh_tls_ctx.h"

/* TLS 1.2 without a forward-secret AEAD is not offered (TLS 1.3 suites are all AEAD). */
#define DEFAULT_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20"
static const unsigned char alpn_http11[] = "\x08http/1.1";

static void openssl_error(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[160] = "";
    if (e != 0)
        ERR_error_string_n(e, buf, sizeof(buf));
    snprintf(err, errlen, "%s%s%s", what, e != 0 ? ": " : "", buf);
    ERR_clear_error();
}

/* ---- session ticket keys: one set for the process ------------------------------------------- */

typedef struct ticket_key {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char hmac[32];
    int64_t born_s;
} ticket_key_t;

static struct {
    uv_once_t once;
    uv_mutex_t lock;
    ticket_key_t keys[BH_TLS_TICKET_KEYS]; /* keys[0] encrypts; all of them decrypt */
    size_t n;
} tickets = {.once = UV_ONCE_INIT};

static void tickets_init(void)
{
    if (uv_mutex_init(&tickets.lock) != 0)
        abort();
}

static int64_t wall_s(void)
{
    return (int64_t)time(NULL);
}

/* Rotates when keys[0] is due (under the lock). */
static bool tickets_rotate(int64_t now)
{
    if (tickets.n > 0 && now - tickets.keys[0].born_s < BH_TLS_TICKET_ROTATE_S)
        return true;
    ticket_key_t k = {.born_s = now};
    if (RAND_bytes(k.name, sizeof(k.name)) != 1 || RAND_bytes(k.aes, sizeof(k.aes)) != 1 ||
        RAND_bytes(k.hmac, sizeof(k.hmac)) != 1)
        return tickets.n > 0; /* keep the old key rather than none */
    memmove(&tickets.keys[1], &tickets.keys[0], sizeof(ticket_key_t) * (BH_TLS_TICKET_KEYS - 1));
    tickets.keys[0] = k;
    if (tickets.n < BH_TLS_TICKET_KEYS)
        tickets.n++;
    return true;
}

/* The key to encrypt with (name == NULL) or the one called name at now_s: its index (0: the
 * current one), or -1. */
static int tickets_get(const unsigned char *name, int64_t now_s, ticket_key_t *out)
{
    uv_once(&tickets.once, tickets_init);
    uv_mutex_lock(&tickets.lock);
    int found = -1;
    if (tickets_rotate(now_s)) {
        for (size_t i = 0; i < tickets.n && found < 0; i++)
            if (name == NULL || memcmp(tickets.keys[i].name, name, 16) == 0)
                found = (int)i;
        if (found >= 0)
            *out = tickets.keys[found];
    }
    uv_mutex_unlock(&tickets.lock);
    return found;
}

int bh__tls_ticket_key(const unsigned char *name, int64_t now_s, unsigned char name_out[16])
{
    ticket_key_t k;
    int i = tickets_get(name, now_s, &k);
    if (i >= 0)
        memcpy(name_out, k.name, 16);
    OPENSSL_cleanse(&k, sizeof(k));
    return i;
}

static int ticket_cb(SSL *s, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *ectx,
                     EVP_MAC_CTX *hctx, int enc)
{
    (void)s;
    ticket_key_t k;
    int i = tickets_get(enc ? NULL : name, wall_s(), &k);
    if (i < 0)
        return enc ? -1 : 0; /* an unknown key: a full handshake */
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, k.hmac, sizeof(k.hmac)),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    int ok;
    if (enc) {
        memcpy(name, k.name, 16);
        ok = RAND_bytes(iv, 16) == 1 &&
             EVP_EncryptInit_ex(ectx, EVP_aes_256_cbc(), NULL, k.aes, iv) == 1;
    } else {
        ok = EVP_DecryptInit_ex(ectx, EVP_aes_256_cbc(), NULL, k.aes, iv) == 1;
    }
    OPENSSL_cleanse(&k, sizeof(k));
    if (!ok || EVP_MAC_CTX_set_params(hctx, params) != 1)
        return -1;
    return enc || i == 0 ? 1 : 2; /* 2: a ticket under an older key is renewed */
}

/* ---- listeners ---------------------------------------------------------------------------------- */

/* What a listener's context knows about its certificates, for SNI (owned by the context). */
typedef struct sni_table {
    size_t n;
    struct sni_cert {
        X509 *x509;
        EVP_PKEY *pkey;
        STACK_OF(X509) *chain;
        char **names;
        size_t n_names;
    } certs[];
} sni_table_t;

static int sni_index = -1;
static uv_once_t sni_once = UV_ONCE_INIT;

static void sni_table_free(sni_table_t *t)
{
    for (size_t i = 0; t != NULL && i < t->n; i++) {
        X509_free(t->certs[i].x509);
        EVP_PKEY_free(t->certs[i].pkey);
        sk_X509_pop_free(t->certs[i].chain, X509_free);
        for (size_t j = 0; j < t->certs[i].n_names; j++)
            bh_free(t->certs[i].names[j]);
        bh_free(t->certs[i].names);
    }
    bh_free(t);
}

static void sni_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    sni_table_free(ptr);
}

static void sni_once_init(void)
{
    sni_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, sni_ex_free);
}

static bool name_matches(const char *pattern, const char *host)
{
    if (strcasecmp(pattern, host) == 0)
        return true;
    if (pattern[0] != '*' || pattern[1] != '.')
        return false;
    const char *dot = strchr(host, '.'); /* a wildcard stands for one whole label */
    return dot != NULL && dot != host && strcasecmp(pattern + 1, dot) == 0;
}

static int sni_cb(SSL *ssl, int *alert, void *arg)
{
    (void)alert;
    const sni_table_t *t = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), sni_index);
    const char *host = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    (void)arg;
    if (t == NULL || host == NULL)
        return SSL_TLSEXT_ERR_NOACK;
    for (size_t i = 1; i < t->n; i++) { /* certs[0] is the context's own: the default */
        const struct sni_cert *c = &t->certs[i];
        for (size_t j = 0; j < c->n_names; j++) {
            if (!name_matches(c->names[j], host))
                continue;
            if (SSL_use_cert_and_key(ssl, c->x509, c->pkey, c->chain, 1) != 1)
                return SSL_TLSEXT_ERR_ALERT_FATAL;
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_OK; /* the default certificate */
}

static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl, (void)arg;
    unsigned char *sel = NULL;
    if (SSL_select_next_proto(&sel, outlen, alpn_http11, sizeof(alpn_http11) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK; /* no protocol we speak offered: carry on without ALPN */
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

static bool sni_copy(struct sni_cert *dst, const bh_conf_tls_cert_t *src)
{
    dst->x509 = src->x509;
    X509_up_ref(src->x509);
    dst->pkey = src->pkey;
    EVP_PKEY_up_ref(src->pkey);
    dst->chain = src->chain != NULL ? X509_chain_up_ref(src->chain) : NULL;
    if (src->chain != NULL && dst->chain == NULL)
        return false;
    dst->names = bh_calloc(src->n_names + 1, sizeof(char *));
    if (dst->names == NULL)
        return false;
    for (size_t j = 0; j < src->n_names; j++) {
        if ((dst->names[j] = bh_strdup(src->names[j])) == NULL)
            return false;
        dst->n_names++;
    }
    return true;
}

static bool sni_attach(SSL_CTX *ctx, const bh_conf_listener_tls_t *conf)
{
    uv_once(&sni_once, sni_once_init);
    sni_table_t *t = bh_calloc(1, sizeof(*t) + conf->n_certs * sizeof(t->certs[0]));
    if (t == NULL || sni_index < 0) {
        bh_free(t);
        return false;
    }
    for (size_t i = 0; i < conf->n_certs; i++) {
        t->n = i + 1;
        if (!sni_copy(&t->certs[i], &conf->certs[i])) {
            sni_table_free(t);
            return false;
        }
    }
    if (SSL_CTX_set_ex_data(ctx, sni_index, t) != 1) {
        sni_table_free(t);
        return false;
    }
    SSL_CTX_set_tlsext_servername_callback(ctx, sni_cb);
    return true;
}

static bool server_client_auth(SSL_CTX *ctx, const bh_conf_listener_tls_t *conf)
{
    if (conf->verify_client == BH_VERIFY_CLIENT_OFF)
        return true;
    if (conf->client_store == NULL || SSL_CTX_set1_verify_cert_store(ctx, conf->client_store) != 1)
        return false;
    if (conf->client_names != NULL) {
        STACK_OF(X509_NAME) *names = SSL_dup_CA_list(conf->client_names);
        if (names == NULL)
            return false;
        SSL_CTX_set_client_CA_list(ctx, names);
    }
    int mode = SSL_VERIFY_PEER;
    if (conf->verify_client == BH_VERIFY_CLIENT_REQUIRE)
        mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
    SSL_CTX_set_verify(ctx, mode, NULL);
    return true;
}

/* What both sides set the same way. */
static bool common_setup(SSL_CTX *ctx, int min_version, const char *ciphers)
{
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    return SSL_CTX_set_min_proto_version(ctx, min_version ? min_version : TLS1_2_VERSION) == 1 &&
           SSL_CTX_set_cipher_list(ctx, ciphers != NULL ? ciphers : DEFAULT_CIPHERS) == 1;
}

static bool use_cert(SSL_CTX *ctx, const bh_conf_tls_cert_t *c)
{
    return SSL_CTX_use_cert_and_key(ctx, c->x509, c->pkey, c->chain, 1) == 1;
}

/* The session id context: what a session resumed here must have been made under. Ticket keys
 * are the process's, so without it a session from a listener that asks for no client
 * certificate would resume on one that requires them (or after a reload that started to), and
 * skip the check. It digests the listener's address, verify_client and its client CAs. */
static bool session_context(SSL_CTX *ctx, const bh_conf_listener_tls_t *conf, const char *id)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *h = EVP_MD_CTX_new();
    int mode = (int)conf->verify_client;
    bool ok = h != NULL && EVP_DigestInit_ex(h, EVP_sha256(), NULL) == 1 &&
              EVP_DigestUpdate(h, id, strlen(id) + 1) == 1 &&
              EVP_DigestUpdate(h, &mode, sizeof(mode)) == 1;
    for (int i = 0; ok && conf->client_names != NULL && i < sk_X509_NAME_num(conf->client_names);
         i++) {
        unsigned char *der = NULL;
        int n = i2d_X509_NAME(sk_X509_NAME_value(conf->client_names, i), &der);
        ok = n > 0 && EVP_DigestUpdate(h, der, (size_t)n) == 1;
        OPENSSL_free(der);
    }
    ok = ok && EVP_DigestFinal_ex(h, md, &mdlen) == 1 && mdlen <= SSL_MAX_SID_CTX_LENGTH &&
         SSL_CTX_set_session_id_context(ctx, md, mdlen) == 1;
    EVP_MD_CTX_free(h);
    return ok;
}

SSL_CTX *bh_tls_server_ctx(const bh_conf_listener_tls_t *conf, const char *id, char *err,
                           size_t errlen)
{
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        openssl_error(err, errlen, "cannot create a TLS context");
        return NULL;
    }
    const char *what = NULL;
    if (!common_setup(ctx, conf->min_version, conf->ciphers))
        what = "TLS version or cipher list refused";
    else if (conf->n_certs == 0 || !use_cert(ctx, &conf->certs[0]) || !sni_attach(ctx, conf))
        what = "certificate refused";
    else if (!server_client_auth(ctx, conf))
        what = "client CA refused";
    else if (!session_context(ctx, conf, id))
        what = "cannot set the session id context";
    if (what != NULL) {
        openssl_error(err, errlen, what);
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* Resumption by tickets only: no per-process session cache to share or to bound. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb);
    SSL_CTX_set_timeout(ctx, (long)BH_TLS_TICKET_ROTATE_S * (BH_TLS_TICKET_KEYS - 1));
    SSL_CTX_set_num_tickets(ctx, 1);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, NULL);
    return ctx;
}

/* ---- upstreams ----------------------------------------------------------------------------- */

static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    bh_tls_t *t = SSL_get_app_data(ssl);
    if (t == NULL || t->session_slot == NULL || !SSL_SESSION_is_resumable(sess))
        return 0;
    SSL_SESSION_free(*t->session_slot);
    *t->session_slot = sess; /* the reference OpenSSL gave us */
    return 1;
}

SSL_CTX *bh_tls_client_ctx(const bh_conf_upstream_tls_t *conf, char *err, size_t errlen)
{
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        openssl_error(err, errlen, "cannot create a TLS context");
        return NULL;
    }
    const char *what = NULL;
    if (!common_setup(ctx, conf->min_version, NULL))
        what = "TLS version refused";
    else if (conf->ca_store != NULL ? SSL_CTX_set1_verify_cert_store(ctx, conf->ca_store) != 1
                                    : SSL_CTX_set_default_verify_paths(ctx) != 1)
        what = "CA certificates refused";
    else if (conf->client.cert != NULL && !use_cert(ctx, &conf->client))
        what = "client certificate refused";
    else if (SSL_CTX_set_alpn_protos(ctx, alpn_http11, sizeof(alpn_http11) - 1) != 0)
        what = "ALPN refused";
    if (what != NULL) {
        openssl_error(err, errlen, what);
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_verify(ctx, conf->verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, new_session_cb);
    return ctx;
}

void bh_tls_ctx_free(SSL_CTX *ctx)
{
    SSL_CTX_free(ctx);
}
