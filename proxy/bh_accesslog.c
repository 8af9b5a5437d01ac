/* Buffered access log writer. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "bh_accesslog.h"
#include "bh_alloc.h"
#include "bh_log.h"

#define FLUSH_AFTER_MS 200

int bh_accesslog_open(const char *access)
{
    if (access == NULL || strcmp(access, "off") == 0)
        return -1;
    if (strcmp(access, "stdout") == 0)
        return STDOUT_FILENO;
    int fd = open(access, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    return fd >= 0 ? fd : -errno - 1;
}

/* ---- the writer thread ------------------------------------------------------------------- */

typedef struct chunk {
    struct chunk *next;
    size_t n;
    char data[];
} chunk_t;

struct bh_logwriter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    chunk_t *head, *tail; /* queued, oldest first */
    size_t queued, cap;   /* bytes queued or being written, and their bound */
    bool stopping;
    int fd;
    _Atomic uint64_t lost;
    pthread_t thread;
};

static uint64_t lines_in(const char *p, size_t n)
{
    uint64_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += p[i] == '\n';
    return k;
}

static void write_chunk(bh_logwriter_t *lw, const chunk_t *c)
{
    size_t off = 0;
    while (off < c->n) {
        ssize_t w = write(lw->fd, c->data + off, c->n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) { /* a full disk or a closed pipe loses lines, counted */
            atomic_fetch_add(&lw->lost, lines_in(c->data + off, c->n - off));
            return;
        }
        off += (size_t)w;
    }
}

static void *writer_main(void *arg)
{
    bh_logwriter_t *lw = arg;
    pthread_mutex_lock(&lw->mu);
    for (;;) {
        while (lw->head == NULL && !lw->stopping)
            pthread_cond_wait(&lw->cv, &lw->mu);
        chunk_t *c = lw->head;
        if (c == NULL)
            break; /* stopping, and everything is written */
        lw->head = c->next;
        if (lw->head == NULL)
            lw->tail = NULL;
        pthread_mutex_unlock(&lw->mu);
        write_chunk(lw, c);
        size_t n = c->n;
        bh_free(c);
        pthread_mutex_lock(&lw->mu);
        lw->queued -= n;
        pthread_cond_broadcast(&lw->cv); /* bh_logwriter_stop waits for the queue to empty */
    }
    pthread_mutex_unlock(&lw->mu);
    return NULL;
}

bh_logwriter_t *bh_logwriter_start(int fd, size_t cap)
{
    bh_logwriter_t *lw = bh_calloc(1, sizeof(*lw));
    if (lw == NULL)
        return NULL;
    lw->fd = fd;
    lw->cap = cap;
    atomic_init(&lw->lost, 0);
    pthread_mutex_init(&lw->mu, NULL);
    pthread_cond_init(&lw->cv, NULL);
    if (pthread_create(&lw->thread, NULL, writer_main, lw) != 0) {
        pthread_cond_destroy(&lw->cv);
        pthread_mutex_destroy(&lw->mu);
        bh_free(lw);
        return NULL;
    }
    return lw;
}

bool bh_logwriter_put(bh_logwriter_t *lw, const char *data, size_t n)
{
    chunk_t *c = bh_malloc(sizeof(*c) + n);
    if (c == NULL)
        return false;
    memcpy(c->data, data, n);
    c->n = n;
    c->next = NULL;
    pthread_mutex_lock(&lw->mu);
    bool fits = lw->queued + n <= lw->cap;
    if (fits) {
        lw->queued += n;
        if (lw->tail != NULL)
            lw->tail->next = c;
        else
            lw->head = c;
        lw->tail = c;
        pthread_cond_broadcast(&lw->cv);
    }
    pthread_mutex_unlock(&lw->mu);
    if (!fits)
        bh_free(c);
    return fits;
}

uint64_t bh_logwriter_lost(const bh_logwriter_t *lw)
{
    return atomic_load(&((bh_logwriter_t *)lw)->lost);
}

void bh_logwriter_stop(bh_logwriter_t *lw, uint64_t timeout_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)(timeout_ms / 1000);
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&lw->mu);
    lw->stopping = true;
    pthread_cond_broadcast(&lw->cv);
    int rc = 0;
    while (lw->queued > 0 && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&lw->cv, &lw->mu, &until);
    bool stuck = lw->queued > 0;
    pthread_mutex_unlock(&lw->mu);
    if (stuck) { /* still in write(2) on a stalled destination: the exit ends it */
        bh_log_warn("access log: %zu bytes not written within %llu ms at exit", lw->queued,
                    (unsigned long long)timeout_ms);
        pthread_detach(lw->thread);
        return;
    }
    pthread_join(lw->thread, NULL);
    pthread_cond_destroy(&lw->cv);
    pthread_mutex_destroy(&lw->mu);
    bh_free(lw);
}

/* ---- per worker ---------------------------------------------------------------------------- */

static void on_timer(uv_timer_t *t)
{
    bh_accesslog_flush(t->data);
}

void bh_accesslog_init(bh_accesslog_t *al, uv_loop_t *loop, bh_logwriter_t *writer)
{
    al->writer = writer;
    al->n = 0;
    al->dropped = NULL;
    uv_timer_init(loop, &al->timer);
    al->timer.data = al;
    uv_unref((uv_handle_t *)&al->timer);
}

void bh_accesslog_flush(bh_accesslog_t *al)
{
    if (al->n > 0 && !bh_logwriter_put(al->writer, al->buf, al->n) && al->dropped != NULL)
        bh_counter_add(al->dropped, lines_in(al->buf, al->n));
    al->n = 0;
    uv_timer_stop(&al->timer);
}

void bh_accesslog_line(bh_accesslog_t *al, const char *line, size_t n)
{
    if (n + 1 > sizeof(al->buf))
        n = sizeof(al->buf) - 1;
    if (al->n + n + 1 > sizeof(al->buf))
        bh_accesslog_flush(al);
    memcpy(al->buf + al->n, line, n);
    al->buf[al->n + n] = '\n';
    al->n += n + 1;
    if (!uv_is_active((uv_handle_t *)&al->timer))
        uv_timer_start(&al->timer, on_timer, FLUSH_AFTER_MS, 0);
}

void bh_accesslog_close(bh_accesslog_t *al)
{
    bh_accesslog_flush(al);
    if (!uv_is_closing((uv_handle_t *)&al->timer))
        uv_close((uv_handle_t *)&al->timer, NULL);
}

/* ,"key":"escaped" or ,"key":null */
static void put_str(char *line, size_t cap, size_t *n, const char *key, const char *v)
{
    if (*n + 32 >= cap)
        return; /* only a route name of kilobytes gets here */
    *n += (size_t)snprintf(line + *n, cap - *n, ",\"%s\":", key);
    if (*n + 2 >= cap)
        return;
    if (v == NULL) {
        *n += (size_t)snprintf(line + *n, cap - *n, "null");
        return;
    }
    line[(*n)++] = '"';
    bh_json_escape(line, cap - 2, n, v, strlen(v));
    line[(*n)++] = '"';
}

void bh_accesslog_write(bh_accesslog_t *al, const bh_accesslog_rec_t *r)
{
    char line[2048], ts[64];
    size_t n = 0, cap = sizeof(line) - 256; /* room for the numbers at the end */
    struct timespec tv;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &tv);
    gmtime_r(&tv.tv_sec, &tm);
    snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, tv.tv_nsec / 1000000);
    n += (size_t)snprintf(line, cap, "{\"time\":\"%s\",\"worker\":%u", ts, r->worker);
    put_str(line, cap, &n, "client", r->client);
    put_str(line, cap, &n, "request", r->request);
    if (r->request_id != NULL)
        put_str(line, cap, &n, "request_id", r->request_id);
    put_str(line, cap, &n, "route", r->route);
    n += (size_t)snprintf(line + n, sizeof(line) - n, ",\"status\":%d,\"bytes\":%llu", r->status,
                          (unsigned long long)r->bytes);
    put_str(line, cap, &n, "upstream", r->upstream);
    put_str(line, cap, &n, "endpoint", r->endpoint);
    n += (size_t)snprintf(line + n, sizeof(line) - n,
                          ",\"attempts\":%u,\"queue_ms\":%lld,\"first_byte_ms\":%lld,"
                          "\"total_ms\":%llu",
                          r->attempts, (long long)r->queue_ms, (long long)r->first_byte_ms,
                          (unsigned long long)r->total_ms);
    put_str(line, sizeof(line) - 32, &n, "error", r->error);
    if (r->application_name != NULL)
        put_str(line, sizeof(line) - 32, &n, "application_name", r->application_name);
    n += (size_t)snprintf(line + n, sizeof(line) - n, "%s}", r->aborted ? ",\"aborted\":true" : "");
    if (n >= sizeof(line))
        n = sizeof(line) - 1;
    bh_accesslog_line(al, line, n);
}
