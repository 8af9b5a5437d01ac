/* Postgres error codes: bh_pg's own messages, what may be retried, and connect error parsing. */
#include "bh_pg.h"

#include <string.h>

bool bh_pg_error_retriable(int err)
{
    return err == BH_ECONNECT_REFUSED || err == BH_ECONNECT_TIMEOUT || err == BH_ECONNECT_FAILED;
}

static bool is_sqlstate(const char *s)
{
    for (int i = 0; i < 5; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'A' && s[i] <= 'Z')))
            return false;
    return s[5] == ':';
}

/* Connect-time refusals that only mean "not now": overload, startup, shutdown, crash. */
static bool sqlstate_retriable(const char *st)
{
    return strncmp(st, "53", 2) == 0 || strncmp(st, "08", 2) == 0 || strcmp(st, "57P01") == 0 ||
           strcmp(st, "57P02") == 0 || strcmp(st, "57P03") == 0;
}

void bh_pg_error_parse(bh_pg_error_t *e, const char *msg)
{
    static const char *const sevs[] = {"FATAL:  ", "PANIC:  ", "ERROR:  "};
    *e = (bh_pg_error_t){.code = BH_ECONNECT_FAILED, .message = msg != NULL ? msg : ""};
    msg = e->message;
    const char *best = NULL;
    size_t best_sev = 0;
    for (size_t i = 0; i < sizeof(sevs) / sizeof(sevs[0]); i++) {
        const char *at = strstr(msg, sevs[i]);
        if (at != NULL && (best == NULL || at < best)) {
            best = at;
            best_sev = i;
        }
    }
    if (best != NULL) {
        size_t sl = strlen(sevs[best_sev]) - 3; /* "FATAL" */
        memcpy(e->severity, sevs[best_sev], sl);
        e->severity[sl] = '\0';
        const char *p = best + sl + 3;
        if (is_sqlstate(p)) {
            memcpy(e->sqlstate, p, 5);
            e->sqlstate[5] = '\0';
            p += 6;
            while (*p == ' ')
                p++;
        }
        e->detail = p;
        e->detail_len = strcspn(p, "\n");
        e->code = e->sqlstate[0] != '\0' && sqlstate_retriable(e->sqlstate) ? BH_ECONNECT_FAILED
                                                                            : BH_EPG_REJECTED;
        return;
    }
    if (strstr(msg, "fe_sendauth:") != NULL) /* libpq itself: no password for the method */
        e->code = BH_EPG_REJECTED;
    else if (strstr(msg, "Connection refused") != NULL)
        e->code = BH_ECONNECT_REFUSED;
    else if (strstr(msg, "timeout expired") != NULL || strstr(msg, "timed out") != NULL)
        e->code = BH_ECONNECT_TIMEOUT;
}
