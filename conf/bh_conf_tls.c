/* OpenSSL side of the tls sections: certificate, key and CA files read into the objects the
 * snapshot owns, a key checked against its certificate, validity dates, cipher lists, and the
 * comparisons a reload needs.
 *
 * Loading happens in bh_conf_load, so --check, a start and a reload all read the files. Each
 * function leaves OpenSSL's error queue empty: a load's errors never reach the runtime's. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include "bh_alloc.h"
#include "bh_conf_int.h"

#define EXPIRY_WARN_DAYS 14

/* ---- files and OpenSSL errors ---------------------------------------------------------- */

/* Why the last OpenSSL call failed, in words for a message (dflt when it did not say);
 * empties the queue. Reasons that only mean "nothing of that kind in the file" read so. */
static const char *ssl_reason(const char *dflt)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;

    if (e != 0 && ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_BAD_PASSWORD_READ)
        r = "it is encrypted, and no passphrase is asked for";
    else if (e != 0 &&
             ((ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) ||
              ERR_GET_REASON(e) == ERR_R_UNSUPPORTED))
        r = "none found";
    ERR_clear_error();
    return r != NULL ? r : dflt;
}

/* Whether the last error is the end of the PEM blocks in a file (nothing else went wrong). */
static bool pem_at_end(void)
{
    unsigned long e = ERR_peek_last_error();
    return e == 0 || (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE);
}

/* Never asks for a passphrase (no prompt on a terminal): an encrypted key fails to load. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    return -1;
}

/* Opens path for reading; NULL with *rc set when it cannot be read ("cannot read <what> ..."). */
static FILE *open_file(ctx_t *c, yaml_node_t *n, const char *what, const char *path, int *rc)
{
    FILE *f = fopen(path, "r");
    struct stat st;

    if (f == NULL) {
        *rc = bh__conf_fail(c, n, "cannot read %s '%s': %s", what, path, strerror(errno));
        return NULL;
    }
    if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(f);
        *rc = bh__conf_fail(c, n, "cannot read %s '%s': %s", what, path, strerror(EISDIR));
        return NULL;
    }
    return f;
}

/* Same, as a BIO that closes the file. */
static BIO *open_bio(ctx_t *c, yaml_node_t *n, const char *what, const char *path, int *rc)
{
    FILE *f = open_file(c, n, what, path, rc);
    BIO *b;

    if (f == NULL)
        return NULL;
    if ((b = BIO_new_fp(f, BIO_CLOSE)) == NULL) {
        fclose(f);
        ERR_clear_error();
        *rc = bh__conf_oom(c);
    }
    return b;
}

/* ---- a certificate and its key --------------------------------------------------------- */

/* The leaf (the first certificate of the file) and the chain (the others, in file order). */
static int read_certs(ctx_t *c, yaml_node_t *n, bh_conf_tls_cert_t *tc)
{
    int rc = 0;
    BIO *b = open_bio(c, n, "certificate", tc->cert, &rc);
    X509 *x;

    if (b == NULL)
        return rc;
    if ((tc->x509 = PEM_read_bio_X509(b, NULL, no_passphrase, NULL)) == NULL)
        rc = bh__conf_fail(c, n,
                           "no certificate in '%s' (%s), expected PEM text beginning with "
                           "-----BEGIN CERTIFICATE-----",
                           tc->cert, ssl_reason("unreadable"));
    else if ((tc->chain = sk_X509_new_null()) == NULL)
        rc = bh__conf_oom(c);
    while (rc == 0 && (x = PEM_read_bio_X509(b, NULL, no_passphrase, NULL)) != NULL)
        if (sk_X509_push(tc->chain, x) == 0) {
            X509_free(x);
            rc = bh__conf_oom(c);
        }
    if (rc == 0 && !pem_at_end())
        rc = bh__conf_fail(c, n,
                           "malformed certificate after the first one in '%s' (%s), expected "
                           "the leaf certificate followed by its chain, all PEM",
                           tc->cert, ssl_reason("unreadable"));
    BIO_free(b);
    ERR_clear_error();
    return rc;
}

static int read_key(ctx_t *c, yaml_node_t *n, bh_conf_tls_cert_t *tc)
{
    int rc = 0;
    BIO *b = open_bio(c, n, "key", tc->key, &rc);

    if (b == NULL)
        return rc;
    if ((tc->pkey = PEM_read_bio_PrivateKey(b, NULL, no_passphrase, NULL)) == NULL)
        rc = bh__conf_fail(c, n,
                           "no private key in '%s' (%s), expected an unencrypted PEM private key",
                           tc->key, ssl_reason("unreadable"));
    BIO_free(b);
    ERR_clear_error();
    return rc;
}

static int asn1_to_unix(const ASN1_TIME *t, int64_t *out)
{
    struct tm tm;

    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1)
        return -1;
    *out = (int64_t)timegm(&tm);
    return 0;
}

static void show_time(int64_t t, char *buf, size_t n)
{
    time_t tt = (time_t)t;
    struct tm tm;

    gmtime_r(&tt, &tm);
    strftime(buf, n, "%Y-%m-%d %H:%M:%S UTC", &tm);
}

/* Valid now: not before its start, not after its end; a warning when it ends within 14 days. */
static int check_dates(ctx_t *c, yaml_node_t *n, bh_conf_tls_cert_t *tc)
{
    int64_t now = (int64_t)time(NULL), not_before, left;
    char when[64];

    if (asn1_to_unix(X509_get0_notBefore(tc->x509), &not_before) != 0 ||
        asn1_to_unix(X509_get0_notAfter(tc->x509), &tc->not_after) != 0) {
        ERR_clear_error();
        return bh__conf_fail(c, n,
                             "certificate '%s' has unreadable validity dates, expected a "
                             "valid X.509 certificate",
                             tc->cert);
    }
    if (not_before > now) {
        show_time(not_before, when, sizeof when);
        return bh__conf_fail(c, n,
                             "certificate '%s' is not valid before %s, expected a "
                             "certificate valid now",
                             tc->cert, when);
    }
    show_time(tc->not_after, when, sizeof when);
    if (tc->not_after < now)
        return bh__conf_fail(c, n,
                             "certificate '%s' expired on %s, expected a certificate "
                             "valid now",
                             tc->cert, when);
    left = tc->not_after - now;
    if (left < EXPIRY_WARN_DAYS * 86400)
        return bh__conf_warn(c, n, "certificate '%s' expires on %s, in %lld day%s: renew it",
                             tc->cert, when, (long long)(left / 86400),
                             left / 86400 == 1 ? "" : "s");
    return 0;
}

/* Appends a lower-case copy of name[0..len) (names with a NUL byte are skipped). */
static int add_name(ctx_t *c, bh_conf_tls_cert_t *tc, const unsigned char *name, size_t len)
{
    char *s;

    if (len == 0 || memchr(name, '\0', len) != NULL)
        return 0;
    if ((s = bh_malloc(len + 1)) == NULL)
        return bh__conf_oom(c);
    for (size_t i = 0; i < len; i++)
        s[i] = (name[i] >= 'A' && name[i] <= 'Z') ? (char)(name[i] - 'A' + 'a') : (char)name[i];
    s[len] = '\0';
    tc->names[tc->n_names++] = s;
    return 0;
}

/* The subject's common name when the certificate has no DNS name in its SAN. */
static int add_common_name(ctx_t *c, bh_conf_tls_cert_t *tc)
{
    X509_NAME *subject = X509_get_subject_name(tc->x509);
    int i = subject != NULL ? X509_NAME_get_index_by_NID(subject, NID_commonName, -1) : -1;
    unsigned char *utf8 = NULL;
    int len, rc = 0;

    if (i < 0)
        return 0;
    len = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, i)));
    if (len > 0)
        rc = add_name(c, tc, utf8, (size_t)len);
    OPENSSL_free(utf8);
    ERR_clear_error();
    return rc;
}

/* The names SNI matches: the SAN's DNS names, else the CN. */
static int cert_names(ctx_t *c, bh_conf_tls_cert_t *tc)
{
    GENERAL_NAMES *gens = X509_get_ext_d2i(tc->x509, NID_subject_alt_name, NULL, NULL);
    int count = gens != NULL ? sk_GENERAL_NAME_num(gens) : 0, rc = 0;

    ERR_clear_error();
    if ((tc->names = bh_calloc((size_t)count + 1, sizeof *tc->names)) == NULL)
        rc = bh__conf_oom(c);
    for (int i = 0; i < count && rc == 0; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        if (g->type == GEN_DNS)
            rc = add_name(c, tc, ASN1_STRING_get0_data(g->d.dNSName),
                          (size_t)ASN1_STRING_length(g->d.dNSName));
    }
    GENERAL_NAMES_free(gens);
    if (rc == 0 && tc->n_names == 0)
        rc = add_common_name(c, tc);
    return rc;
}

int bh__conf_tls_load_cert(ctx_t *c, yaml_node_t *cert_n, yaml_node_t *key_n,
                           bh_conf_tls_cert_t *tc)
{
    int rc;

    if ((rc = read_certs(c, cert_n, tc)) != 0 || (rc = read_key(c, key_n, tc)) != 0)
        return rc;
    if (X509_check_private_key(tc->x509, tc->pkey) != 1) {
        ERR_clear_error();
        return bh__conf_fail(c, key_n,
                             "key '%s' does not match certificate '%s', expected the private "
                             "key of that certificate",
                             tc->key, tc->cert);
    }
    if ((rc = check_dates(c, cert_n, tc)) != 0)
        return rc;
    return cert_names(c, tc);
}

/* ---- CA files and cipher lists --------------------------------------------------------- */

int bh__conf_tls_load_ca(ctx_t *c, yaml_node_t *n, const char *what, const char *path,
                         X509_STORE **store, STACK_OF(X509_NAME) * *names)
{
    int rc = 0;
    FILE *f = open_file(c, n, what, path, &rc);

    if (f == NULL)
        return rc;
    fclose(f);
    if ((*store = X509_STORE_new()) == NULL) {
        ERR_clear_error();
        return bh__conf_oom(c);
    }
    if (X509_STORE_load_file(*store, path) != 1 ||
        (names != NULL && (*names = SSL_load_client_CA_file(path)) == NULL))
        return bh__conf_fail(c, n,
                             "no CA certificate in %s '%s' (%s), expected PEM certificates "
                             "(-----BEGIN CERTIFICATE-----)",
                             what, path, ssl_reason("none found"));
    ERR_clear_error();
    return 0;
}

int bh__conf_tls_check_ciphers(ctx_t *c, yaml_node_t *n, const char *list)
{
    SSL_CTX *scratch = SSL_CTX_new(TLS_method());
    int ok;

    if (scratch == NULL) {
        ERR_clear_error();
        return bh__conf_oom(c);
    }
    ok = SSL_CTX_set_cipher_list(scratch, list);
    SSL_CTX_free(scratch);
    ERR_clear_error();
    if (ok != 1)
        return bh__conf_fail(c, n,
                             "cipher list '%.64s' for %s matches no TLS 1.2 cipher, expected an "
                             "OpenSSL cipher list, e.g. ECDHE+AESGCM:ECDHE+CHACHA20",
                             list, c->path);
    return 0;
}

/* ---- freeing and comparing ------------------------------------------------------------- */

void bh__conf_tls_cert_clear(bh_conf_tls_cert_t *tc)
{
    bh_free(tc->cert);
    bh_free(tc->key);
    X509_free(tc->x509);
    sk_X509_pop_free(tc->chain, X509_free);
    EVP_PKEY_free(tc->pkey);
    for (size_t i = 0; i < tc->n_names; i++)
        bh_free(tc->names[i]);
    bh_free(tc->names);
    memset(tc, 0, sizeof *tc);
}

void bh__conf_tls_listener_clear(bh_conf_listener_tls_t *t)
{
    for (size_t i = 0; i < t->n_certs; i++)
        bh__conf_tls_cert_clear(&t->certs[i]);
    bh_free(t->certs);
    bh_free(t->ciphers);
    bh_free(t->client_ca);
    X509_STORE_free(t->client_store);
    sk_X509_NAME_pop_free(t->client_names, X509_NAME_free);
    memset(t, 0, sizeof *t);
}

void bh__conf_tls_upstream_clear(bh_conf_upstream_tls_t *t)
{
    bh_free(t->ca);
    X509_STORE_free(t->ca_store);
    bh_free(t->server_name);
    bh__conf_tls_cert_clear(&t->client);
    memset(t, 0, sizeof *t);
}

static bool str_eq(const char *a, const char *b)
{
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static bool x509_eq(const X509 *a, const X509 *b)
{
    return a == b || (a != NULL && b != NULL && X509_cmp(a, b) == 0);
}

bool bh__conf_tls_cert_equal(const bh_conf_tls_cert_t *a, const bh_conf_tls_cert_t *b)
{
    int n = a->chain != NULL ? sk_X509_num(a->chain) : 0;

    if (!str_eq(a->cert, b->cert) || !str_eq(a->key, b->key) || !x509_eq(a->x509, b->x509) ||
        n != (b->chain != NULL ? sk_X509_num(b->chain) : 0))
        return false;
    for (int i = 0; i < n; i++)
        if (!x509_eq(sk_X509_value(a->chain, i), sk_X509_value(b->chain, i)))
            return false;
    return true;
}

/* Same objects (certificates and CRLs), in the same order. */
static bool objects_eq(STACK_OF(X509_OBJECT) * a, STACK_OF(X509_OBJECT) * b)
{
    int n = sk_X509_OBJECT_num(a);

    if (n != sk_X509_OBJECT_num(b))
        return false;
    for (int i = 0; i < n; i++) {
        X509_OBJECT *x = sk_X509_OBJECT_value(a, i), *y = sk_X509_OBJECT_value(b, i);
        X509_LOOKUP_TYPE t = X509_OBJECT_get_type(x);

        if (t != X509_OBJECT_get_type(y))
            return false;
        if (t == X509_LU_X509 && !x509_eq(X509_OBJECT_get0_X509(x), X509_OBJECT_get0_X509(y)))
            return false;
        if (t == X509_LU_CRL &&
            X509_CRL_match(X509_OBJECT_get0_X509_CRL(x), X509_OBJECT_get0_X509_CRL(y)) != 0)
            return false;
    }
    return true;
}

/* The stores may be in use by workers (verification reads them): each is read under its lock. */
bool bh__conf_tls_store_equal(X509_STORE *a, X509_STORE *b)
{
    bool eq;

    if (a == b)
        return true;
    if (a == NULL || b == NULL)
        return false;
    X509_STORE_lock(a);
    X509_STORE_lock(b);
    eq = objects_eq(X509_STORE_get0_objects(a), X509_STORE_get0_objects(b));
    X509_STORE_unlock(b);
    X509_STORE_unlock(a);
    return eq;
}
