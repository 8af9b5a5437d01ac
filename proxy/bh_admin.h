/* The admin listener on the main thread's loop: /healthz, /readyz, /metrics, /stats and the
 * dashboard page at /. */
#ifndef BH_ADMIN_H
#define BH_ADMIN_H

#include <uv.h>
#include "bh_proxy.h"

typedef struct bh_admin bh_admin_t;

/* The dashboard page (proxy/admin/dashboard.html), compiled in by the build (admin/embed.py):
 * bh_admin_dashboard_len bytes, not NUL-terminated. */
extern const char bh_admin_dashboard[];
extern const size_t bh_admin_dashboard_len;

/* Listens on conf->admin.addr. Returns NULL (and logs why) when it cannot. */
bh_admin_t *bh_admin_start(uv_loop_t *loop, bh_server_t *srv);
/* Marks the process as draining: /readyz answers 503 from now on. */
void bh_admin_set_draining(bh_admin_t *a);
/* Closes the listener and every admin connection; frees a once they are closed. */
void bh_admin_stop(bh_admin_t *a);

#endif
