/* A write queue on a libuv stream: zero-copy slices of refcounted buffers, batched into one
 * uv_write per flush, with the queued byte count that backpressure decisions read.
 *
 * The queue is embedded in the object that owns the stream and lives as long as the stream's
 * handle: libuv calls the write callbacks of a closing stream (with UV_ECANCELED) before the
 * handle's close callback, and those callbacks touch the queue. */
#ifndef BH_OUTQ_H
#define BH_OUTQ_H

#include <uv.h>
#include "bh_buf.h"
#include "bh_error.h"
#include "bh_list.h"

#define BH_WREQ_BUFS 16
#define BH_WREQ_INLINE 256

typedef struct bh_outq bh_outq_t;

/* One uv_write in flight or being filled. */
typedef struct bh_wreq {
    uv_write_t req;
    bh_list_t link;                  /* on the cache's free list */
    bh_outq_t *q;
    uint32_t nbufs;
    uint32_t inline_used;
    size_t bytes;
    uv_buf_t bufs[BH_WREQ_BUFS];
    bh_buf_t *refs[BH_WREQ_BUFS];    /* NULL for slices of inline[] */
    char inline_bytes[BH_WREQ_INLINE];
} bh_wreq_t;

/* Per-worker free list of write requests. */
typedef struct bh_wreq_cache {
    bh_list_t free;
    uint32_t nfree, max_free;
} bh_wreq_cache_t;

void bh_wreq_cache_init(bh_wreq_cache_t *c, uint32_t max_free);
void bh_wreq_cache_destroy(bh_wreq_cache_t *c);

/* status < 0: a write failed (the queue is then dead: later writes are dropped).
 * status == 0: every queued byte has been written (the queue drained). */
typedef void (*bh_outq_cb)(bh_outq_t *q, int status);

/* A transform between the queued bytes and the socket (TLS): at a flush it consumes the
 * plaintext request `plain` (and gives it back with bh_outq_put) and appends what goes on the
 * wire with bh_outq_raw. Returns 0 or an error (the queue then fails with it). */
typedef int (*bh_outq_seal_cb)(bh_outq_t *q, bh_wreq_t *plain);

struct bh_outq {
    uv_stream_t *stream;
    bh_wreq_cache_t *cache;
    bh_bufpool_t *bufs;
    bh_wreq_t *cur;                  /* being filled, not yet submitted */
    size_t queued;                   /* bytes submitted and not yet written */
    uint64_t total;                  /* bytes submitted since init (for the access log) */
    uint32_t inflight;               /* uv_write requests not yet completed */
    int error;                       /* first write error; sticky */
    bh_outq_cb cb;
    bh_outq_seal_cb seal;            /* NULL: the bytes go out as queued */
    void *seal_arg;
    bh_wreq_t *raw;                  /* with seal: wire bytes being filled, not yet submitted */
};

void bh_outq_init(bh_outq_t *q, uv_stream_t *stream, bh_wreq_cache_t *cache, bh_bufpool_t *bufs,
                  bh_outq_cb cb);

/* Queues n bytes at p inside buffer b (a reference is taken). */
BH_MUST_CHECK int bh_outq_slice(bh_outq_t *q, bh_buf_t *b, const char *p, size_t n);
/* Queues a copy of n bytes (small framing bytes go inline in the request; larger ones into a
 * pooled buffer). */
BH_MUST_CHECK int bh_outq_copy(bh_outq_t *q, const char *p, size_t n);
/* Submits what was queued since the last flush. */
BH_MUST_CHECK int bh_outq_flush(bh_outq_t *q);
/* Drops anything queued but not submitted (the stream is being closed). */
void bh_outq_discard(bh_outq_t *q);

/* For a seal transform: appends a copy of wire bytes (they go out at the next flush, or at once
 * when a request fills up), and gives a plaintext request back. */
BH_MUST_CHECK int bh_outq_raw(bh_outq_t *q, const char *p, size_t n);
void bh_outq_put(bh_outq_t *q, bh_wreq_t *w);

static inline size_t bh_outq_pending(const bh_outq_t *q)
{
    return q->queued + (q->cur != NULL ? q->cur->bytes : 0) + (q->raw != NULL ? q->raw->bytes : 0);
}

#endif
