/* Batched zero-copy writes on libuv streams. */
#include <assert.h>
#include <errno.h>
#include <sys/uio.h>
#include <string.h>
#include "bh_alloc.h"
#include "bh_outq.h"

void bh_wreq_cache_init(bh_wreq_cache_t *c, uint32_t max_free)
{
    bh_list_init(&c->free);
    c->nfree = 0;
    c->max_free = max_free;
}

void bh_wreq_cache_destroy(bh_wreq_cache_t *c)
{
    bh_list_t *n, *t;
    bh_list_foreach_safe(n, t, &c->free)
    {
        bh_list_remove(n);
        bh_free(bh_container_of(n, bh_wreq_t, link));
    }
    c->nfree = 0;
}

static bh_wreq_t *wreq_get(bh_outq_t *q)
{
    bh_wreq_t *w;
    bh_list_t *n = bh_list_first(&q->cache->free);
    if (n != NULL) {
        bh_list_remove(n);
        q->cache->nfree--;
        w = bh_container_of(n, bh_wreq_t, link);
    } else {
        w = bh_malloc(sizeof(*w));
        if (w == NULL)
            return NULL;
        bh_list_init(&w->link);
    }
    w->q = q;
    w->nbufs = 0;
    w->inline_used = 0;
    w->bytes = 0;
    return w;
}

static void wreq_put(bh_wreq_cache_t *c, bh_wreq_t *w)
{
    for (uint32_t i = 0; i < w->nbufs; i++)
        bh_buf_unref(w->refs[i]);
    w->nbufs = 0;
    if (c->nfree < c->max_free) {
        bh_list_push_front(&c->free, &w->link);
        c->nfree++;
    } else {
        bh_free(w);
    }
}

void bh_outq_init(bh_outq_t *q, uv_stream_t *stream, bh_wreq_cache_t *cache, bh_bufpool_t *bufs,
                  bh_outq_cb cb)
{
    memset(q, 0, sizeof(*q));
    q->stream = stream;
    q->cache = cache;
    q->bufs = bufs;
    q->cb = cb;
}

/* The request being filled, with room for one more buffer (flushing a full one first). */
static bh_wreq_t *cur_with_room(bh_outq_t *q, int *err)
{
    if (q->cur != NULL && q->cur->nbufs == BH_WREQ_BUFS) {
        *err = bh_outq_flush(q);
        if (*err < 0)
            return NULL;
    }
    if (q->cur == NULL) {
        q->cur = wreq_get(q);
        if (q->cur == NULL) {
            *err = BH_ENOMEM;
            return NULL;
        }
    }
    return q->cur;
}

int bh_outq_slice(bh_outq_t *q, bh_buf_t *b, const char *p, size_t n)
{
    int err = 0;
    if (q->error < 0)
        return q->error;
    if (n == 0)
        return 0;
    bh_wreq_t *w = cur_with_room(q, &err);
    if (w == NULL)
        return err;
    w->bufs[w->nbufs] = uv_buf_init((char *)p, (unsigned)n);
    w->refs[w->nbufs] = b != NULL ? bh_buf_ref(b) : NULL;
    w->nbufs++;
    w->bytes += n;
    return 0;
}

int bh_outq_copy(bh_outq_t *q, const char *p, size_t n)
{
    int err = 0;
    if (q->error < 0)
        return q->error;
    if (n == 0)
        return 0;
    bh_wreq_t *w = cur_with_room(q, &err);
    if (w == NULL)
        return err;
    if (n <= BH_WREQ_INLINE - w->inline_used) {
        char *dst = w->inline_bytes + w->inline_used;
        memcpy(dst, p, n);
        /* Extend the previous slice when it ends right here: framing bytes stay one iovec. */
        if (w->nbufs > 0 && w->refs[w->nbufs - 1] == NULL &&
            w->bufs[w->nbufs - 1].base + w->bufs[w->nbufs - 1].len == dst) {
            w->bufs[w->nbufs - 1].len += n;
        } else {
            w->bufs[w->nbufs] = uv_buf_init(dst, (unsigned)n);
            w->refs[w->nbufs] = NULL;
            w->nbufs++;
        }
        w->inline_used += (uint32_t)n;
        w->bytes += n;
        return 0;
    }
    while (n > 0) {
        bh_buf_t *b = bh_buf_get(q->bufs);
        if (b == NULL)
            return BH_ENOMEM;
        size_t k = n < b->cap ? n : b->cap;
        memcpy(b->data, p, k);
        err = bh_outq_slice(q, b, b->data, k);
        bh_buf_unref(b);
        if (err < 0)
            return err;
        p += k;
        n -= k;
    }
    return 0;
}

static void on_write(uv_write_t *req, int status)
{
    bh_wreq_t *w = bh_container_of(req, bh_wreq_t, req);
    bh_outq_t *q = w->q;
    q->queued -= w->bytes;
    q->inflight--;
    wreq_put(q->cache, w);
    if (status < 0) {
        if (q->error == 0) {
            q->error = status;
            if (status != UV_ECANCELED && q->cb != NULL)
                q->cb(q, status);
        }
        return;
    }
    if (q->queued == 0 && q->cb != NULL)
        q->cb(q, 0);
}

/* Bytes written at once (0 when the socket is full), or a negative libuv error. */
static ssize_t try_writev(bh_outq_t *q, bh_wreq_t *w)
{
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)q->stream, &fd) < 0)
        return UV_EBADF;
    ssize_t n;
    do
        n = writev(fd, (const struct iovec *)w->bufs, (int)w->nbufs);
    while (n < 0 && errno == EINTR);
    if (n >= 0)
        return n;
    return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : uv_translate_sys_error(errno);
}

/* Drops the first n bytes of w (written already): whole buffers go, the next one is trimmed. */
static void skip_written(bh_wreq_t *w, size_t n)
{
    uint32_t i = 0;
    while (i < w->nbufs && n >= w->bufs[i].len) {
        n -= w->bufs[i].len;
        w->bytes -= w->bufs[i].len;
        bh_buf_unref(w->refs[i]);
        i++;
    }
    if (i < w->nbufs) {
        w->bufs[i].base += n;
        w->bufs[i].len -= n;
        w->bytes -= n;
    }
    memmove(w->bufs, w->bufs + i, (w->nbufs - i) * sizeof(w->bufs[0]));
    memmove(w->refs, w->refs + i, (w->nbufs - i) * sizeof(w->refs[0]));
    w->nbufs -= i;
}

/* Writes w (taking it over): at once when libuv has nothing queued, the rest by uv_write. */
static int submit(bh_outq_t *q, bh_wreq_t *w)
{
    if (q->inflight == 0) {
        /* Nothing queued in libuv: write now, with writev(2) on the socket itself. A write
         * completed here needs no callback; and libuv 1.44 re-registers the socket with epoll
         * after every uv_write and every uv_try_write (an epoll_ctl per response), which this
         * avoids. uv_buf_t is layout-compatible with struct iovec on Unix. */
        ssize_t n = try_writev(q, w);
        if (n < 0) {
            wreq_put(q->cache, w);
            q->error = (int)n;
            return (int)n;
        }
        size_t done = (size_t)n;
        if (done == w->bytes) {
            wreq_put(q->cache, w);
            return 0;
        }
        skip_written(w, done);
    }
    int err = uv_write(&w->req, q->stream, w->bufs, w->nbufs, on_write);
    if (err < 0) {
        wreq_put(q->cache, w);
        q->error = err;
        return err;
    }
    q->queued += w->bytes;
    q->inflight++;
    return 0;
}

static int flush_raw(bh_outq_t *q)
{
    bh_wreq_t *w = q->raw;
    if (w == NULL)
        return q->error;
    q->raw = NULL;
    if (q->error < 0) {
        wreq_put(q->cache, w);
        return q->error;
    }
    return submit(q, w);
}

int bh_outq_flush(bh_outq_t *q)
{
    bh_wreq_t *w = q->cur;
    if (w != NULL && q->error < 0) {
        q->cur = NULL;
        wreq_put(q->cache, w);
        return q->error;
    }
    if (q->seal != NULL) {
        if (w != NULL) {
            q->cur = NULL;
            q->total += w->bytes;
            int err = q->seal(q, w); /* gives w back */
            if (err < 0 && q->error == 0)
                q->error = err;
        }
        return flush_raw(q);
    }
    if (w == NULL)
        return q->error;
    q->cur = NULL;
    q->total += w->bytes;
    return submit(q, w);
}

int bh_outq_raw(bh_outq_t *q, const char *p, size_t n)
{
    if (q->error < 0)
        return q->error;
    while (n > 0) {
        bh_wreq_t *w = q->raw;
        if (w == NULL && (w = q->raw = wreq_get(q)) == NULL)
            return BH_ENOMEM;
        /* Fill the last buffer's room first: it is this request's alone. */
        size_t room = 0;
        if (w->nbufs > 0) {
            bh_buf_t *b = w->refs[w->nbufs - 1];
            room = (size_t)(b->data + b->cap - (w->bufs[w->nbufs - 1].base + w->bufs[w->nbufs - 1].len));
        }
        if (room == 0 && w->nbufs == BH_WREQ_BUFS) {
            int err = flush_raw(q);
            if (err < 0)
                return err;
            continue;
        }
        if (room == 0) {
            bh_buf_t *b = bh_buf_get(q->bufs);
            if (b == NULL)
                return BH_ENOMEM;
            w->bufs[w->nbufs] = uv_buf_init(b->data, 0);
            w->refs[w->nbufs++] = b;
            room = b->cap;
        }
        size_t k = n < room ? n : room;
        uv_buf_t *last = &w->bufs[w->nbufs - 1];
        memcpy(last->base + last->len, p, k);
        last->len += (unsigned)k;
        w->bytes += k;
        p += k;
        n -= k;
    }
    return 0;
}

void bh_outq_put(bh_outq_t *q, bh_wreq_t *w)
{
    wreq_put(q->cache, w);
}

void bh_outq_discard(bh_outq_t *q)
{
    if (q->cur != NULL) {
        wreq_put(q->cache, q->cur);
        q->cur = NULL;
    }
    if (q->raw != NULL) {
        wreq_put(q->cache, q->raw);
        q->raw = NULL;
    }
}
