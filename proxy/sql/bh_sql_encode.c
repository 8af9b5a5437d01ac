/* Success bodies (section 5): result fields, rows, command tags, and batch framing.
 *
 * One {"fields","rows","command","rowCount","rowAsArray"} object per result and {"results":[...]}
 * around a batch, rows appended as libpq hands them over (single-row mode), values converted to
 * JSON types in non-raw mode (5.2). Byte-exactness comes from Neon's proxy (serde_json and its own
 * writer): compact JSON, fixed key orders.
 *
 * The encoder is a state machine on bh_sql_out_t.state_ (IDLE -> [BATCH] -> ROWS -> [BATCH] ->
 * DONE). A call in the wrong state sets the sticky BH_ESQL_STATE, so like every other buffer error
 * it shows in the last return value. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "bh_sql_proto_int.h"

/* ---- values in non-raw mode (5.2) ---- */

enum {
    OID_BOOL = 16,
    OID_INT2 = 21,
    OID_INT4 = 23,
    OID_JSON = 114,
    OID_FLOAT4 = 700,
    OID_FLOAT8 = 701,
    OID_JSONB = 3802,
};

/* Built-in array types (pg_type.dat, PostgreSQL 15) and their element types. Non-raw mode turns
 * these into JSON arrays; other OIDs (user-defined arrays among them) stay strings. */
static const struct {
    Oid array, elem;
} array_types[] = {
    {143, 142},   {199, 114},   {271, 5069},  {629, 628},   {651, 650},   {719, 718},
    {775, 774},   {791, 790},   {1000, 16},   {1001, 17},   {1002, 18},   {1003, 19},
    {1005, 21},   {1007, 23},   {1008, 24},   {1009, 25},   {1010, 27},   {1011, 28},
    {1012, 29},   {1014, 1042}, {1015, 1043}, {1016, 20},   {1017, 600},  {1018, 601},
    {1019, 602},  {1020, 603},  {1021, 700},  {1022, 701},  {1027, 604},  {1028, 26},
    {1034, 1033}, {1040, 829},  {1041, 869},  {1115, 1114}, {1182, 1082}, {1183, 1083},
    {1185, 1184}, {1187, 1186}, {1231, 1700}, {1263, 2275}, {1270, 1266}, {1561, 1560},
    {1563, 1562}, {2201, 1790}, {2207, 2202}, {2208, 2203}, {2209, 2204}, {2210, 2205},
    {2211, 2206}, {2287, 2249}, {2949, 2970}, {2951, 2950}, {3221, 3220}, {3643, 3614},
    {3644, 3642}, {3645, 3615}, {3735, 3734}, {3770, 3769}, {3807, 3802}, {3905, 3904},
    {3907, 3906}, {3909, 3908}, {3911, 3910}, {3913, 3912}, {3927, 3926}, {4073, 4072},
    {4090, 4089}, {4097, 4096}, {4192, 4191}, {5039, 5038}, {6150, 4451}, {6151, 4532},
    {6152, 4533}, {6153, 4534}, {6155, 4535}, {6157, 4536},
};

static Oid array_elem(Oid t)
{
    size_t lo = 0, hi = sizeof(array_types) / sizeof(array_types[0]);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (array_types[mid].array == t)
            return array_types[mid].elem;
        if (array_types[mid].array < t)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

static bool is_int_text(const char *s, size_t n)
{
    size_t i = (n > 0 && s[0] == '-') ? 1 : 0;
    if (i == n || n - i > 10)
        return false;
    for (; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

static void put_pg_value(bh_sql_out_t *o, const char *s, size_t n, Oid type);

/* A Postgres array literal as a JSON array (Neon pg_array_parse): "[l:u]=" bounds dropped,
 * unquoted NULL -> null, quoted elements unescaped, elements converted with the element type.
 * *pos starts at '{' and ends after the matching '}'.
 * scratch collects the current element's unescaped bytes from scratch->n on entry (start); a
 * nested level uses the space above and gives it back, so scratch->n == start again on return.
 * quote: inside "..."; quoted: the element was quoted, so "NULL" stays a string. */
static void put_pg_array_literal(bh_sql_out_t *o, const char *s, size_t n, size_t *pos, Oid elem,
                                 bh_sql_out_t *scratch)
{
    size_t i = *pos + 1; /* past '{' */
    size_t count = 0;
    bool quote = false, quoted = false;
    size_t start = scratch->n; /* this level's entry occupies scratch[start..) */
    bh__sql_putc(o, '[');
#define PUSH_ENTRY(force)                                                                          \
    do {                                                                                           \
        size_t len_ = scratch->n - start;                                                          \
        if ((force) || len_ > 0) {                                                                 \
            if (count++ > 0)                                                                       \
                bh__sql_putc(o, ',');                                                              \
            if (!quoted && len_ == 4 && memcmp(scratch->p + start, "NULL", 4) == 0)                \
                BH__SQL_PUTLIT(o, "null");                                                         \
            else                                                                                   \
                put_pg_value(o, scratch->p ? scratch->p + start : "", len_, elem);                 \
        }                                                                                          \
        scratch->n = start;                                                                        \
        quoted = false;                                                                            \
    } while (0)
    while (i < n) {
        char c = s[i++];
        bool escaped = false;
        if (c == '\\' && i < n) {
            escaped = true;
            c = s[i++];
        }
        if (!quote && !escaped && c == '{') {
            if (count++ > 0)
                bh__sql_putc(o, ',');
            size_t sub = i - 1;
            put_pg_array_literal(o, s, n, &sub, elem, scratch);
            i = sub;
        } else if (!quote && !escaped && c == '}') {
            PUSH_ENTRY(false);
            break;
        } else if (!escaped && c == '"') {
            if (quote) {
                quoted = true;
                PUSH_ENTRY(true);
            }
            quote = !quote;
        } else if (!quote && !escaped && c == ',') {
            PUSH_ENTRY(false);
        } else {
            bh__sql_putc(scratch, c);
        }
    }
#undef PUSH_ENTRY
    scratch->n = start;
    bh__sql_putc(o, ']');
    *pos = i;
}

/* One non-NULL value in non-raw mode (section 5.2). */
static void put_pg_value(bh_sql_out_t *o, const char *s, size_t n, Oid type)
{
    char buf[BH__SQL_DOUBLE_MAX];
    switch (type) {
    case OID_BOOL:
        if (n == 1 && s[0] == 't')
            BH__SQL_PUTLIT(o, "true");
        else
            BH__SQL_PUTLIT(o, "false");
        return;
    case OID_INT2:
    case OID_INT4:
        if (is_int_text(s, n)) {
            bh__sql_put(o, s, n);
            return;
        }
        break;
    case OID_FLOAT4:
    case OID_FLOAT8: {
        if (n == 0 || n >= sizeof(buf))
            break;
        memcpy(buf, s, n);
        buf[n] = '\0';
        char *end;
        double d = strtod(buf, &end);
        if (*end != '\0' || !isfinite(d))
            break;
        bh__sql_put(o, buf, bh__sql_fmt_double(d, buf));
        return;
    }
    case OID_JSON:
    case OID_JSONB:
        bh__sql_put(o, s, n); /* verbatim, as Neon */
        return;
    default: {
        Oid elem = array_elem(type);
        if (elem != 0) {
            size_t pos = 0;
            if (n > 0 && s[0] == '[') {
                const char *eq = memchr(s, '=', n);
                pos = eq ? (size_t)(eq - s) + 1 : n;
            }
            if (pos < n && s[pos] == '{') {
                bh_sql_out_t scratch;
                bh_sql_out_init(&scratch, SIZE_MAX);
                put_pg_array_literal(o, s, n, &pos, elem, &scratch);
                if (scratch.err != 0 && o->err == 0)
                    o->err = scratch.err;
                bh_sql_out_free(&scratch);
                return;
            }
        }
        break;
    }
    }
    bh__sql_put_jstr(o, s, n);
}

/* ---- results and batches ---- */

static int state_err(bh_sql_out_t *o)
{
    if (o->err == 0)
        o->err = BH_ESQL_STATE;
    return o->err;
}

int bh_sql_batch_begin(bh_sql_out_t *o)
{
    if (o->err != 0)
        return o->err;
    if (o->state_ != BH__SQL_ST_IDLE)
        return state_err(o);
    BH__SQL_PUTLIT(o, "{\"results\":[");
    o->state_ = BH__SQL_ST_BATCH;
    o->batch_ = true;
    o->nresults_ = 0;
    return o->err;
}

int bh_sql_batch_end(bh_sql_out_t *o)
{
    if (o->err != 0)
        return o->err;
    if (o->state_ != BH__SQL_ST_BATCH)
        return state_err(o);
    BH__SQL_PUTLIT(o, "]}");
    o->state_ = BH__SQL_ST_DONE;
    return o->err;
}

int bh_sql_result_begin(bh_sql_out_t *o, const PGresult *res, bool raw_text, bool array_mode)
{
    if (o->err != 0)
        return o->err;
    if (o->state_ != BH__SQL_ST_IDLE && o->state_ != BH__SQL_ST_BATCH)
        return state_err(o);
    if (o->batch_ && o->nresults_ > 0)
        bh__sql_putc(o, ',');
    BH__SQL_PUTLIT(o, "{\"fields\":[");
    int nf = res ? PQnfields(res) : 0;
    for (int i = 0; i < nf; i++) {
        if (i > 0)
            bh__sql_putc(o, ',');
        BH__SQL_PUTLIT(o, "{\"name\":");
        bh__sql_put_jstrz(o, PQfname(res, i));
        BH__SQL_PUTLIT(o, ",\"dataTypeID\":");
        bh__sql_put_i64(o, (int64_t)PQftype(res, i));
        BH__SQL_PUTLIT(o, ",\"tableID\":");
        bh__sql_put_i64(o, (int64_t)PQftable(res, i));
        BH__SQL_PUTLIT(o, ",\"columnID\":");
        bh__sql_put_i64(o, PQftablecol(res, i));
        BH__SQL_PUTLIT(o, ",\"dataTypeSize\":");
        bh__sql_put_i64(o, PQfsize(res, i));
        BH__SQL_PUTLIT(o, ",\"dataTypeModifier\":");
        bh__sql_put_i64(o, PQfmod(res, i));
        BH__SQL_PUTLIT(o, ",\"format\":\"text\"}");
    }
    BH__SQL_PUTLIT(o, "],\"rows\":[");
    o->raw_ = raw_text;
    o->array_ = array_mode;
    o->nrows_ = 0;
    o->state_ = BH__SQL_ST_ROWS;
    return o->err;
}

int bh_sql_result_rows(bh_sql_out_t *o, const PGresult *res)
{
    if (o->err != 0)
        return o->err;
    if (o->state_ != BH__SQL_ST_ROWS)
        return state_err(o);
    int nt = PQntuples(res), nf = PQnfields(res);
    for (int r = 0; r < nt && o->err == 0; r++) {
        if (o->nrows_++ > 0)
            bh__sql_putc(o, ',');
        bh__sql_putc(o, o->array_ ? '[' : '{');
        for (int c = 0; c < nf; c++) {
            if (c > 0)
                bh__sql_putc(o, ',');
            if (!o->array_) {
                bh__sql_put_jstrz(o, PQfname(res, c));
                bh__sql_putc(o, ':');
            }
            if (PQgetisnull(res, r, c)) {
                BH__SQL_PUTLIT(o, "null");
                continue;
            }
            const char *v = PQgetvalue(res, r, c);
            size_t len = (size_t)PQgetlength(res, r, c);
            if (o->raw_)
                bh__sql_put_jstr(o, v, len);
            else
                put_pg_value(o, v, len, PQftype(res, c));
        }
        bh__sql_putc(o, o->array_ ? ']' : '}');
    }
    return o->err;
}

/* "rowCount" of a command tag: the third word for INSERT, else the second, parsed as i64. */
static bool tag_count(const char *w, size_t n, int64_t *out)
{
    size_t i = 0;
    bool neg = false;
    if (i < n && (w[i] == '+' || w[i] == '-'))
        neg = w[i++] == '-';
    if (i == n)
        return false;
    uint64_t v = 0, lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; i < n; i++) {
        if (w[i] < '0' || w[i] > '9')
            return false;
        unsigned d = (unsigned)(w[i] - '0');
        if (v > (lim - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return true;
}

int bh_sql_result_end(bh_sql_out_t *o, const char *tag)
{
    if (o->err != 0)
        return o->err;
    if (o->state_ != BH__SQL_ST_ROWS)
        return state_err(o);
    if (tag == NULL)
        tag = "";
    /* split on single spaces, as Rust's str::split(' ') */
    const char *words[3] = {tag, NULL, NULL};
    size_t lens[3] = {0, 0, 0};
    int nw = 1;
    for (const char *p = tag;; p++) {
        if (*p == ' ' || *p == '\0') {
            lens[nw - 1] = (size_t)(p - words[nw - 1]);
            if (*p == '\0' || nw == 3)
                break;
            words[nw++] = p + 1;
        }
    }
    BH__SQL_PUTLIT(o, "],\"command\":");
    bh__sql_put_jstr(o, words[0], lens[0]);
    BH__SQL_PUTLIT(o, ",\"rowCount\":");
    int idx = (lens[0] == 6 && memcmp(words[0], "INSERT", 6) == 0) ? 2 : 1;
    int64_t count;
    if (idx < nw && tag_count(words[idx], lens[idx], &count))
        bh__sql_put_i64(o, count);
    else
        BH__SQL_PUTLIT(o, "null");
    if (o->array_)
        BH__SQL_PUTLIT(o, ",\"rowAsArray\":true}");
    else
        BH__SQL_PUTLIT(o, ",\"rowAsArray\":false}");
    o->nresults_++;
    o->state_ = o->batch_ ? BH__SQL_ST_BATCH : BH__SQL_ST_DONE;
    return o->err;
}

int bh_sql_encode_result(bh_sql_out_t *o, const PGresult *res, bool raw_text, bool array_mode)
{
    int rc = bh_sql_result_begin(o, res, raw_text, array_mode);
    if (rc == 0 && res != NULL)
        rc = bh_sql_result_rows(o, res);
    if (rc == 0)
        rc = bh_sql_result_end(o, res ? PQcmdStatus((PGresult *)res) : NULL);
    return rc;
}
