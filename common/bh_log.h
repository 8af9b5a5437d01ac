/* Leveled error log: one JSON object per line on stderr. */
#ifndef BH_LOG_H
#define BH_LOG_H

#include <stdint.h>

enum bh_log_level { BH_LOG_ERROR, BH_LOG_WARN, BH_LOG_INFO, BH_LOG_DEBUG };

/* Set once at startup (and on reload) from the config snapshot; read by every thread. */
void bh_log_set_level(enum bh_log_level level);
enum bh_log_level bh_log_get_level(void);

void bh_log(enum bh_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

typedef struct bh_logwriter bh_logwriter_t;
/* From now on lines go to w (a bh_logwriter on stderr) instead of being written by the thread
 * that logs, so that no event loop waits on a stalled stderr; NULL: written directly again. The
 * caller sets NULL before stopping w, once no other thread logs. */
void bh_log_set_writer(bh_logwriter_t *w);
/* Lines w refused while its queue was full. */
uint64_t bh_log_dropped(void);

#define bh_log_error(...) bh_log(BH_LOG_ERROR, __VA_ARGS__)
#define bh_log_warn(...) bh_log(BH_LOG_WARN, __VA_ARGS__)
#define bh_log_info(...) bh_log(BH_LOG_INFO, __VA_ARGS__)
#define bh_log_debug(...)                                                                          \
    do {                                                                                           \
        if (bh_log_get_level() >= BH_LOG_DEBUG)                                                    \
            bh_log(BH_LOG_DEBUG, __VA_ARGS__);                                                     \
    } while (0)

/* Appends s to out (of size cap, at *len) escaped as the inside of a JSON string; truncates
 * safely and keeps out NUL-terminated. */
void bh_json_escape(char *out, size_t cap, size_t *len, const char *s, size_t n);

#endif
