/* Buffered access log writer. */
#include <errno.h>
#include <fcntl.h>
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
        bh_counter_add(al->dropped, bh_logwriter_lines(al->buf, al->n));
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
