/* Leveled error log: one JSON object per line on stderr. */
#ifndef BH_LOG_H
#define BH_LOG_H

enum bh_log_level { BH_LOG_ERROR, BH_LOG_WARN, BH_LOG_INFO, BH_LOG_DEBUG };

/* Set once at startup (and on reload) from the config snapshot; read by every thread. */
void bh_log_set_level(enum bh_log_level level);
enum bh_log_level bh_log_get_level(void);

void bh_log(enum bh_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

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
