/* The error log. The level is the only process-wide setting: an atomic written at startup/reload. */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include "bh_log.h"
#include "bh_logwriter.h"

static atomic_int log_level = BH_LOG_INFO;
static _Atomic(bh_logwriter_t *) log_writer;
static _Atomic uint64_t log_dropped;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void bh_log_set_level(enum bh_log_level level)
{
    atomic_store_explicit(&log_level, level, memory_order_relaxed);
}

enum bh_log_level bh_log_get_level(void)
{
    return atomic_load_explicit(&log_level, memory_order_relaxed);
}

void bh_log_set_writer(bh_logwriter_t *w)
{
    atomic_store_explicit(&log_writer, w, memory_order_release);
}

uint64_t bh_log_dropped(void)
{
    return atomic_load_explicit(&log_dropped, memory_order_relaxed);
}

void bh_json_escape(char *out, size_t cap, size_t *len, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = *len;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char tmp[7];
        size_t k = 0;
        if (c == '"' || c == '\\') {
            tmp[k++] = '\\';
            tmp[k++] = (char)c;
        } else if (c == '\n') {
            tmp[k++] = '\\';
            tmp[k++] = 'n';
        } else if (c < 0x20 || c == 0x7f) {
            memcpy(tmp, "\\u00", 4);
            tmp[4] = hex[c >> 4];
            tmp[5] = hex[c & 15];
            k = 6;
        } else {
            tmp[k++] = (char)c;
        }
        if (o + k + 1 > cap)
            break;
        memcpy(out + o, tmp, k);
        o += k;
    }
    if (cap > 0)
        out[o < cap ? o : cap - 1] = '\0';
    *len = o;
}

void bh_log(enum bh_log_level level, const char *fmt, ...)
{
    if ((int)level > (int)bh_log_get_level())
        return;
    char msg[1024], line[2300];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(msg))
        n = sizeof(msg) - 1;

    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t len = (size_t)snprintf(line, sizeof(line),
                                  "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\","
                                  "\"level\":\"%s\",\"msg\":\"",
                                  tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                                  tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, level_names[level]);
    bh_json_escape(line, sizeof(line) - 4, &len, msg, (size_t)n);
    memcpy(line + len, "\"}\n", 4);
    bh_logwriter_t *w = atomic_load_explicit(&log_writer, memory_order_acquire);
    if (w == NULL)
        fputs(line, stderr);
    else if (!bh_logwriter_put(w, line, len + 3))
        atomic_fetch_add_explicit(&log_dropped, 1, memory_order_relaxed);
}
