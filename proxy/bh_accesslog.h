/* The access log: one JSON object per finished request, buffered per worker in pieces of at most
 * 4 KiB that end on a line. Full pieces go to the process's one writer thread (bh_logwriter_t),
 * which writes them in order, so lines never interleave and a slow or stalled destination (a pipe
 * nobody reads: a container's stdout whose reader is stuck) never blocks a worker: at most
 * log.access_buffer bytes wait for it, and the lines beyond are dropped and counted. `log.access:
 * off` creates no writer at all. */
#ifndef BH_ACCESSLOG_H
#define BH_ACCESSLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include "bh_logwriter.h"
#include "bh_stat.h"

#define BH_ACCESSLOG_BUF 4096
/* How long the exit waits for a stalled log destination to take the last lines. */
#define BH_ACCESSLOG_EXIT_MS 2000
/* Error-log bytes that may wait for a stalled stderr (lines beyond are dropped and counted). */
#define BH_ERRLOG_BUFFER (256 * 1024)

typedef struct bh_accesslog {
    bh_logwriter_t *writer;  /* shared by the workers; owned by the caller */
    size_t n;
    uv_timer_t timer;        /* flushes a partly filled buffer after a short while */
    bh_counter_t *dropped;   /* lines the writer's full queue refused; may be NULL */
    char buf[BH_ACCESSLOG_BUF];
} bh_accesslog_t;

/* Opens the destination of log.access: "stdout" -> 1, a path -> opened for appending. Returns
 * the fd, -1 for "off", or a negative errno on failure (below -1). */
int bh_accesslog_open(const char *access);

void bh_accesslog_init(bh_accesslog_t *al, uv_loop_t *loop, bh_logwriter_t *writer);
/* Appends one line (without its newline; one is added). Lines longer than the buffer are cut. */
void bh_accesslog_line(bh_accesslog_t *al, const char *line, size_t n);
void bh_accesslog_flush(bh_accesslog_t *al);

/* One request's line. NULL strings are written as null; -1 times mean "did not happen". */
typedef struct bh_accesslog_rec {
    unsigned worker;
    const char *client;
    const char *request;     /* "METHOD target" */
    const char *route;
    int status;
    uint64_t bytes;
    const char *upstream;
    const char *endpoint;
    unsigned attempts;
    int64_t queue_ms, first_byte_ms;
    uint64_t total_ms;
    const char *error;       /* the Proxy-Status error type of bulkhead's own reply */
    bool aborted;
    const char *request_id;  /* request_id.header's value (NULL: off) */
    const char *application_name; /* an SQL client's (from its connection string); the key is
                                     written only when it is not NULL */
} bh_accesslog_rec_t;

void bh_accesslog_write(bh_accesslog_t *al, const bh_accesslog_rec_t *r);
/* Flushes and closes the timer (cb NULL: the handle is closed with the loop's others). */
void bh_accesslog_close(bh_accesslog_t *al);

#endif
