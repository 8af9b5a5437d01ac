/* The metrics registry (see bh_metrics.h). */
#include <string.h>
#include <time.h>
#include "bh_alloc.h"
#include "bh_metrics.h"

#define LINE 64

static size_t cells_size(enum bh_mkind kind)
{
    switch (kind) {
    case BH_M_ROUTE:
        return sizeof(bh_route_cells_t);
    case BH_M_UPSTREAM:
    case BH_M_DATABASE:
        return sizeof(bh_backend_cells_t);
    case BH_M_ENDPOINT:
        return sizeof(bh_endpoint_cells_t);
    }
    return 0;
}

/* n blocks of size bytes, each starting on its own cache line, zeroed. */
static char *aligned_blocks(size_t size, uint32_t n, size_t *stride, void **mem)
{
    *stride = (size + LINE - 1) / LINE * LINE;
    *mem = bh_calloc(1, *stride * n + LINE);
    if (*mem == NULL)
        return NULL;
    uintptr_t p = ((uintptr_t)*mem + LINE - 1) / LINE * LINE;
    return (char *)p;
}

int bh_metrics_init(bh_metrics_t *m, uint32_t n_workers)
{
    memset(m, 0, sizeof(*m));
    m->n_workers = n_workers;
    bh_list_init(&m->entries);
    m->start_unix_s = m->last_load_ok_unix_s = (uint64_t)time(NULL);
    m->workers = (bh_worker_cells_t *)(void *)aligned_blocks(
        sizeof(bh_worker_cells_t), n_workers, &m->worker_stride, (void **)&m->worker_mem);
    if (m->workers == NULL)
        return BH_ENOMEM;
    m->no_route = bh_metrics_entry(m, BH_M_ROUTE, "", NULL);
    return m->no_route != NULL ? 0 : BH_ENOMEM;
}

void bh_metrics_destroy(bh_metrics_t *m)
{
    bh_list_t *n, *t;
    bh_list_foreach_safe(n, t, &m->entries)
    {
        bh_mentry_t *e = bh_container_of(n, bh_mentry_t, link);
        bh_free(e->name);
        bh_free(e->mem);
        bh_free(e);
    }
    bh_list_init(&m->entries);
    bh_free(m->worker_mem);
    m->worker_mem = NULL;
    m->workers = NULL;
}

bh_mentry_t *bh_metrics_entry(bh_metrics_t *m, enum bh_mkind kind, const char *name,
                              bh_mentry_t *parent)
{
    bh_list_t *n;
    bh_list_foreach(n, &m->entries)
    {
        bh_mentry_t *e = bh_container_of(n, bh_mentry_t, link);
        if (e->kind == kind && e->parent == parent && strcmp(e->name, name) == 0)
            return e;
    }
    bh_mentry_t *e = bh_calloc(1, sizeof(*e));
    if (e == NULL)
        return NULL;
    e->kind = kind;
    e->parent = parent;
    e->name = bh_strdup(name);
    e->cells = aligned_blocks(cells_size(kind), m->n_workers, &e->stride, &e->mem);
    if (e->name == NULL || e->cells == NULL) {
        bh_free(e->name);
        bh_free(e->mem);
        bh_free(e);
        return NULL;
    }
    bh_list_push_back(&m->entries, &e->link);
    return e;
}

uint64_t bh_metrics_sum(const bh_mentry_t *e, uint32_t n_workers, size_t offset)
{
    uint64_t s = 0;
    for (uint32_t w = 0; w < n_workers; w++)
        s +=
            bh_counter_get((const bh_counter_t *)(const void *)(e->cells + w * e->stride + offset));
    return s;
}

int64_t bh_metrics_gsum(const bh_mentry_t *e, uint32_t n_workers, size_t offset)
{
    int64_t s = 0;
    for (uint32_t w = 0; w < n_workers; w++)
        s += bh_gauge_get((const bh_gauge_t *)(const void *)(e->cells + w * e->stride + offset));
    return s;
}

const char *bh_outcome_label(enum bh_outcome o)
{
    static const char *const names[BH_OUTCOME_N] = {
        [BH_OUTCOME_OK] = "success",
        [BH_OUTCOME_HTTP_5XX] = "http_5xx",
        [BH_OUTCOME_CONNECT_FAILED] = "connect_failed",
        [BH_OUTCOME_CONNECT_TIMEOUT] = "connect_timeout",
        [BH_OUTCOME_RESET_BEFORE_RESPONSE] = "reset",
        [BH_OUTCOME_FIRST_BYTE_TIMEOUT] = "first_byte_timeout",
        [BH_OUTCOME_IDLE_TIMEOUT] = "idle_timeout",
        [BH_OUTCOME_PROTOCOL_ERROR] = "protocol_error",
        [BH_OUTCOME_PARTIAL] = "partial",
        [BH_OUTCOME_TOTAL_TIMEOUT] = "total_timeout",
        [BH_OUTCOME_LOCAL] = "local",
    };
    return (unsigned)o < BH_OUTCOME_N && names[o] != NULL ? names[o] : "unknown";
}
