/* A line writer on a thread of its own (see bh_logwriter.h). */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "bh_alloc.h"
#include "bh_logwriter.h"

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

uint64_t bh_logwriter_lines(const char *p, size_t n)
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
            atomic_fetch_add(&lw->lost, bh_logwriter_lines(c->data + off, c->n - off));
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
        pthread_detach(lw->thread);
        return;
    }
    pthread_join(lw->thread, NULL);
    pthread_cond_destroy(&lw->cv);
    pthread_mutex_destroy(&lw->mu);
    bh_free(lw);
}
