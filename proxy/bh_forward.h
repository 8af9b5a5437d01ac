/* The upstream handler: forwards a request to an HTTP upstream over a pooled connection and
 * streams the response back, under the resilience pipeline (see bh_forward.c). */
#ifndef BH_FORWARD_H
#define BH_FORWARD_H

#include "bh_exchange.h"

extern const bh_handler_t bh_forward_handler;

#endif
