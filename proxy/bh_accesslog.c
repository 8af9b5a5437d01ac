/* Buffered access log writer. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include "bh_accesslog.h"

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

static void on_timer(uv_timer_t *t)
{
    bh_accesslog_flush(t->data);
}

void bh_accesslog_init(bh_accesslog_t *al, uv_loop_t *loop, int fd)
{
    al->fd = fd;
    al->n = 0;
    uv_timer_init(loop, &al->timer);
    al->timer.data = al;
    uv_unref((uv_handle_t *)&al->timer);
}

void bh_accesslog_flush(bh_accesslog_t *al)
{
    size_t off = 0;
    while (off < al->n) {
        ssize_t w = write(al->fd, al->buf + off, al->n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break; /* a full or broken log loses lines; requests never wait on it */
        off += (size_t)w;
    }
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
