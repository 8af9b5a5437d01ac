/* The access log: one JSON object per finished request, buffered per worker and written with
 * write(2) in pieces of at most PIPE_BUF bytes that end on a line, so lines from several workers
 * never interleave on a pipe or an O_APPEND file. `log.access: off` creates no writer at all. */
#ifndef BH_ACCESSLOG_H
#define BH_ACCESSLOG_H

#include <stddef.h>
#include <uv.h>

#define BH_ACCESSLOG_BUF 4096

typedef struct bh_accesslog {
    int fd;                  /* shared by the workers; owned by the caller */
    size_t n;
    uv_timer_t timer;        /* flushes a partly filled buffer after a short while */
    char buf[BH_ACCESSLOG_BUF];
} bh_accesslog_t;

/* Opens the destination of log.access: "stdout" -> 1, a path -> opened for appending. Returns
 * the fd, -1 for "off", or a negative errno on failure (below -1). */
int bh_accesslog_open(const char *access);

void bh_accesslog_init(bh_accesslog_t *al, uv_loop_t *loop, int fd);
/* Appends one line (without its newline; one is added). Lines longer than the buffer are cut. */
void bh_accesslog_line(bh_accesslog_t *al, const char *line, size_t n);
void bh_accesslog_flush(bh_accesslog_t *al);
/* Flushes and closes the timer (cb NULL: the handle is closed with the loop's others). */
void bh_accesslog_close(bh_accesslog_t *al);

#endif
