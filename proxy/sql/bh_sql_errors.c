/* The protocol's error bodies (section 6); the error codes are rows of bh_error.h.
 *
 * A body is the 17-key object of 6.2, built from a Postgres ErrorResponse, from a libpq connect
 * error message (parsed here, section 12) or from a local message; or the bare JSON string "query
 * is not supported". An error body replaces whatever the buffer held and is not bounded by
 * max_response_bytes (a 507 must still be sayable). message, code and severity are always strings
 * ("" when unknown), every other key a string or null. A message that is not valid UTF-8
 * (SQL_ASCII database) turns the whole body into the local error "could not parse postgres
 * response". */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "bh_sql_proto_int.h"

void bh__sql_set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- error bodies (6.2) ---- */

/* The 17 keys of section 6.2, in the order they are written. */
enum {
    EK_MESSAGE,
    EK_CODE,
    EK_DETAIL,
    EK_HINT,
    EK_POSITION,
    EK_INTERNAL_POSITION,
    EK_INTERNAL_QUERY,
    EK_SEVERITY,
    EK_WHERE,
    EK_TABLE,
    EK_COLUMN,
    EK_SCHEMA,
    EK_DATA_TYPE,
    EK_CONSTRAINT,
    EK_FILE,
    EK_LINE,
    EK_ROUTINE,
    EK_COUNT
};

/* Each key's name and the ErrorResponse field it comes from. */
static const struct {
    const char *key;
    char field;
} err_keys[EK_COUNT] = {
    [EK_MESSAGE] = {"message", PG_DIAG_MESSAGE_PRIMARY},
    [EK_CODE] = {"code", PG_DIAG_SQLSTATE},
    [EK_DETAIL] = {"detail", PG_DIAG_MESSAGE_DETAIL},
    [EK_HINT] = {"hint", PG_DIAG_MESSAGE_HINT},
    [EK_POSITION] = {"position", PG_DIAG_STATEMENT_POSITION},
    [EK_INTERNAL_POSITION] = {"internalPosition", PG_DIAG_INTERNAL_POSITION},
    [EK_INTERNAL_QUERY] = {"internalQuery", PG_DIAG_INTERNAL_QUERY},
    [EK_SEVERITY] = {"severity", PG_DIAG_SEVERITY},
    [EK_WHERE] = {"where", PG_DIAG_CONTEXT},
    [EK_TABLE] = {"table", PG_DIAG_TABLE_NAME},
    [EK_COLUMN] = {"column", PG_DIAG_COLUMN_NAME},
    [EK_SCHEMA] = {"schema", PG_DIAG_SCHEMA_NAME},
    [EK_DATA_TYPE] = {"dataType", PG_DIAG_DATATYPE_NAME},
    [EK_CONSTRAINT] = {"constraint", PG_DIAG_CONSTRAINT_NAME},
    [EK_FILE] = {"file", PG_DIAG_SOURCE_FILE},
    [EK_LINE] = {"line", PG_DIAG_SOURCE_LINE},
    [EK_ROUTINE] = {"routine", PG_DIAG_SOURCE_FUNCTION},
};

/* The value of each key, indexed by EK_*; p == NULL: absent (written as null, except message,
 * code and severity, which are written as ""). */
typedef struct err_fields {
    bh_span_t v[EK_COUNT];
} err_fields_t;

static int put_error(bh_sql_out_t *o, err_fields_t *f)
{
    bh_sql_out_reset(o);
    size_t max = o->max;
    bh__sql_set_max(o, SIZE_MAX); /* error bodies are not bounded by max_response_bytes */
    /* position wins over internalPosition/internalQuery (tokio-postgres ErrorPosition) */
    if (f->v[EK_POSITION].p != NULL)
        f->v[EK_INTERNAL_POSITION].p = f->v[EK_INTERNAL_QUERY].p = NULL;
    else if (f->v[EK_INTERNAL_POSITION].p == NULL)
        f->v[EK_INTERNAL_QUERY].p = NULL;
    for (size_t i = 0; i < EK_COUNT; i++) {
        bh__sql_putc(o, i == 0 ? '{' : ',');
        bh__sql_putc(o, '"');
        bh__sql_put_str(o, err_keys[i].key);
        BH__SQL_PUTLIT(o, "\":");
        bh_span_t s = f->v[i];
        bool always = i == EK_MESSAGE || i == EK_CODE || i == EK_SEVERITY;
        if (s.p == NULL && always)
            s = (bh_span_t){"", 0};
        if (s.p == NULL)
            BH__SQL_PUTLIT(o, "null");
        else
            bh__sql_put_jstr(o, s.p, s.n);
    }
    bh__sql_putc(o, '}');
    bh__sql_set_max(o, max);
    o->state_ = BH__SQL_ST_DONE;
    if (o->err == BH_ESQL_BAD_UTF8) {
        /* a Postgres message that is not UTF-8 (SQL_ASCII database): say so instead */
        bh_sql_out_reset(o);
        return bh_sql_encode_local_error(o, bh_strerror(BH_ESQL_BAD_UTF8));
    }
    return o->err;
}

static bh_span_t zspan(const char *s)
{
    return (bh_span_t){s, s ? strlen(s) : 0};
}

static size_t trimmed_len(const char *s)
{
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    return n;
}

int bh_sql_encode_pg_error(bh_sql_out_t *o, const PGresult *res)
{
    err_fields_t f;
    for (size_t i = 0; i < EK_COUNT; i++)
        f.v[i] = zspan(res ? PQresultErrorField(res, err_keys[i].field) : NULL);
    if (f.v[EK_MESSAGE].p == NULL) {
        const char *m = res ? PQresultErrorMessage(res) : "";
        f.v[EK_MESSAGE] = (bh_span_t){m, trimmed_len(m)};
        if (f.v[EK_MESSAGE].n == 0)
            f.v[EK_MESSAGE] = zspan("unknown error");
    }
    return put_error(o, &f);
}

int bh_sql_encode_local_error(bh_sql_out_t *o, const char *message)
{
    return bh_sql_encode_cause(o, 0, message);
}

int bh_sql_encode_cause(bh_sql_out_t *o, int err, const char *message)
{
    err_fields_t f;
    memset(&f, 0, sizeof(f));
    f.v[EK_MESSAGE] = zspan(message);
    const char *code = bh_err_sql_code(err);
    if (code[0] != '\0')
        f.v[EK_CODE] = zspan(code);
    return put_error(o, &f);
}

int bh_sql_encode_too_large(bh_sql_out_t *o, bool response, size_t max)
{
    char msg[80];
    snprintf(msg, sizeof(msg), "%s is too large (max is %zu bytes)",
             response ? "response" : "request", max);
    return bh_sql_encode_local_error(o, msg);
}

int bh_sql_encode_not_supported(bh_sql_out_t *o)
{
    bh_sql_out_reset(o);
    size_t max = o->max;
    bh__sql_set_max(o, SIZE_MAX);
    BH__SQL_PUTLIT(o, "\"" BH_SQL_MSG_NOT_SUPPORTED "\"");
    bh__sql_set_max(o, max);
    o->state_ = BH__SQL_ST_DONE;
    return o->err;
}

/* ---- connect errors (section 12) ---- */

static bool is_sqlstate(const char *p)
{
    for (int i = 0; i < 5; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'A' && p[i] <= 'Z')))
            return false;
    return true;
}

static const char *line_end(const char *p)
{
    const char *e = strchr(p, '\n');
    return e ? e : p + strlen(p);
}

/* "WORD:  " at p, WORD uppercase letters: returns the text after it, or NULL. */
static const char *after_label(const char *p, const char *label)
{
    size_t n = strlen(label);
    if (strncmp(p, label, n) == 0 && strncmp(p + n, ":  ", 3) == 0)
        return p + n + 3;
    return NULL;
}

bool bh_sql_conn_error_parse(const char *msg, bh_sql_conn_error_t *ce)
{
    memset(ce, 0, sizeof(*ce));
    if (msg == NULL)
        msg = "";
    /* libpq 15 VERBOSE: '... failed: FATAL:  28P01: password authentication failed for user
     * "alice"\nLOCATION:  auth_failed, auth.c:334\n'. With several hosts tried, each attempt
     * adds its lines; the last Postgres error is the one that counts. Severities may be
     * localized, so any word followed by ":  SQLSTATE: " is accepted. Only the first such
     * pattern of a line counts (what follows it is message text, which may quote user input),
     * and the last line with one wins. */
    const char *found = NULL, *sev = NULL;
    for (const char *l = msg; *l; l = *line_end(l) ? line_end(l) + 1 : line_end(l)) {
        const char *le = line_end(l);
        for (const char *p = l; p + 10 <= le; p++) {
            if (memcmp(p, ":  ", 3) != 0 || !is_sqlstate(p + 3) || memcmp(p + 8, ": ", 2) != 0)
                continue;
            const char *s = p;
            while (s > l && s[-1] != ' ' && s[-1] != '\t')
                s--;
            if (s == p)
                continue;
            found = p;
            sev = s;
            break;
        }
    }
    if (found == NULL) {
        ce->message = (bh_span_t){msg, trimmed_len(msg)};
        return false;
    }
    ce->severity = (bh_span_t){sev, (size_t)(found - sev)};
    ce->code = (bh_span_t){found + 3, 5};
    const char *m = found + 10, *e = line_end(m);
    ce->message = (bh_span_t){m, (size_t)(e - m)};
    /* following lines: DETAIL, HINT, LOCATION (others, e.g. a next attempt, end the scan) */
    for (const char *l = *e ? e + 1 : e; *l; l = *line_end(l) ? line_end(l) + 1 : line_end(l)) {
        const char *v;
        const char *le = line_end(l);
        if ((v = after_label(l, "DETAIL")) != NULL) {
            ce->detail = (bh_span_t){v, (size_t)(le - v)};
        } else if ((v = after_label(l, "HINT")) != NULL) {
            ce->hint = (bh_span_t){v, (size_t)(le - v)};
        } else if ((v = after_label(l, "LOCATION")) != NULL) {
            /* "routine, file:line" */
            const char *comma = memchr(v, ',', (size_t)(le - v));
            if (comma == NULL || comma + 2 > le)
                continue;
            const char *colon = NULL;
            for (const char *q = comma; q < le; q++)
                if (*q == ':')
                    colon = q;
            ce->routine = (bh_span_t){v, (size_t)(comma - v)};
            const char *file = comma + 1;
            while (file < le && *file == ' ')
                file++;
            if (colon != NULL && colon > file) {
                ce->file = (bh_span_t){file, (size_t)(colon - file)};
                ce->line = (bh_span_t){colon + 1, (size_t)(le - colon - 1)};
            } else {
                ce->file = (bh_span_t){file, (size_t)(le - file)};
            }
        } else if (l[0] != '\t') {
            break;
        }
    }
    return true;
}

int bh_sql_encode_conn_error(bh_sql_out_t *o, const char *msg)
{
    bh_sql_conn_error_t ce;
    bool db = bh_sql_conn_error_parse(msg, &ce);
    err_fields_t f;
    memset(&f, 0, sizeof(f));
    f.v[EK_MESSAGE] = ce.message;
    if (f.v[EK_MESSAGE].n == 0)
        f.v[EK_MESSAGE] = zspan("could not connect to the database");
    if (db) {
        f.v[EK_CODE] = ce.code;
        f.v[EK_DETAIL] = ce.detail;
        f.v[EK_HINT] = ce.hint;
        f.v[EK_SEVERITY] = ce.severity;
        f.v[EK_FILE] = ce.file;
        f.v[EK_LINE] = ce.line;
        f.v[EK_ROUTINE] = ce.routine;
    }
    return put_error(o, &f);
}
