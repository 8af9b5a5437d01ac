/* Routing: the first route whose host, path prefix and method match the request. */
#ifndef BH_ROUTER_H
#define BH_ROUTER_H

#include "bh_conf.h"
#include "bh_http.h"

/* host: the Host header value (port ignored), may be empty. Returns NULL when nothing matches. */
const bh_conf_route_t *bh_route_match(const bh_conf_t *conf, bh_span_t host, bh_span_t path,
                                      uint32_t method_bit);

#endif
