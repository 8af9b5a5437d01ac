/* TLS contexts built from a config snapshot: one per TLS listener (certificates chosen by SNI,
 * ALPN http/1.1, optional client certificates, session tickets whose keys every context of the
 * process shares and rotates) and one per TLS upstream (verification on by default, client
 * certificate, sessions kept per endpoint for resumption).
 *
 * A context is immutable once built and may be used by every worker at once; it lives as long as
 * the snapshot (listeners) or the upstream's shared state (upstreams) that built it, and OpenSSL's
 * reference counting keeps it for connections still using it after a reload. */
#ifndef BH_TLS_CTX_H
#define BH_TLS_CTX_H

#include <stddef.h>
#include "bh_conf.h"
#include "bh_tls.h"

/* A listener's context, or NULL (err says why) when OpenSSL refuses something the config load
 * accepted. id: the listener's address; sessions resume only on a listener with the same id,
 * verify_client and client CAs. */
SSL_CTX *bh_tls_server_ctx(const bh_conf_listener_tls_t *conf, const char *id, char *err,
                           size_t errlen);
/* An upstream's context, or NULL (err says why). */
SSL_CTX *bh_tls_client_ctx(const bh_conf_upstream_tls_t *conf, char *err, size_t errlen);
void bh_tls_ctx_free(SSL_CTX *ctx);

/* Ticket keys: a new one every BH_TLS_TICKET_ROTATE_S, the previous ones still accepted for
 * BH_TLS_TICKET_KEYS - 1 more periods (tickets live that long at most). */
#define BH_TLS_TICKET_ROTATE_S 3600
#define BH_TLS_TICKET_KEYS 3

/* For tests: the process's ticket key to encrypt with (name NULL) or the one called name, as
 * at now_s (rotating first when due). Returns its index (0: the current key; a ticket under a
 * key > 0 is renewed) and copies its name to name_out, or -1 when no key has that name. */
int bh__tls_ticket_key(const unsigned char *name, int64_t now_s, unsigned char name_out[16]);

#endif
