/* Parsing of the request body and its parameters (section 3).
 *
 * {"query","params","arrayMode"} or {"queries":[...]} is read with jansson, and every JSON param
 * becomes the text Neon would bind (3.4). A request and everything it points to (query texts,
 * param arrays, param texts) live in one arena of chunks, freed at once by bh_sql_request_free;
 * nothing allocated survives a failed parse. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "bh_alloc.h"
#include "bh_sql_proto_int.h"

/* An arena of chunks holding everything a bh_sql_request_t points to. */
typedef struct chunk {
    struct chunk *next;
    size_t used, size;
    _Alignas(max_align_t) char data[];
} chunk_t;

static void *arena_alloc(chunk_t **arena, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    chunk_t *c = *arena;
    if (c == NULL || c->size - c->used < n) {
        size_t size = n > 8192 ? n : 8192;
        c = bh_malloc(sizeof(*c) + size);
        if (c == NULL)
            return NULL;
        c->used = 0;
        c->size = size;
        c->next = *arena;
        *arena = c;
    }
    void *p = c->data + c->used;
    c->used += n;
    return p;
}

static void arena_free(chunk_t *c)
{
    while (c != NULL) {
        chunk_t *next = c->next;
        bh_free(c);
        c = next;
    }
}

/* Compact serde_json rendering of a value: objects with keys sorted bytewise. */
static void put_json_value(bh_sql_out_t *o, json_t *v);

static int cmp_keys(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void put_json_object(bh_sql_out_t *o, json_t *v)
{
    size_t n = json_object_size(v);
    const char **keys = bh_malloc((n ? n : 1) * sizeof(*keys));
    if (keys == NULL) {
        if (o->err == 0)
            o->err = BH_ENOMEM;
        return;
    }
    size_t i = 0;
    const char *key;
    json_t *val;
    json_object_foreach(v, key, val) keys[i++] = key;
    qsort(keys, n, sizeof(*keys), cmp_keys);
    bh__sql_putc(o, '{');
    for (i = 0; i < n; i++) {
        if (i > 0)
            bh__sql_putc(o, ',');
        bh__sql_put_jstrz(o, keys[i]);
        bh__sql_putc(o, ':');
        put_json_value(o, json_object_get(v, keys[i]));
    }
    bh__sql_putc(o, '}');
    bh_free(keys);
}

static void put_json_value(bh_sql_out_t *o, json_t *v)
{
    char buf[BH__SQL_DOUBLE_MAX];
    switch (json_typeof(v)) {
    case JSON_NULL:
        BH__SQL_PUTLIT(o, "null");
        break;
    case JSON_TRUE:
        BH__SQL_PUTLIT(o, "true");
        break;
    case JSON_FALSE:
        BH__SQL_PUTLIT(o, "false");
        break;
    case JSON_INTEGER:
        bh__sql_put_i64(o, (int64_t)json_integer_value(v));
        break;
    case JSON_REAL:
        bh__sql_put(o, buf, bh__sql_fmt_double(json_real_value(v), buf));
        break;
    case JSON_STRING:
        bh__sql_put_jstr(o, json_string_value(v), json_string_length(v));
        break;
    case JSON_ARRAY: {
        bh__sql_putc(o, '[');
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i > 0)
                bh__sql_putc(o, ',');
            put_json_value(o, json_array_get(v, i));
        }
        bh__sql_putc(o, ']');
        break;
    }
    case JSON_OBJECT:
        put_json_object(o, v);
        break;
    }
}

/* An element of a Postgres array literal built from a JSON array (Neon json_array_to_pg_array):
 * null -> NULL, scalars as JSON (strings quoted and JSON-escaped), objects as their JSON text
 * in a JSON string, arrays nested. */
static void put_pg_array(bh_sql_out_t *o, json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_NULL:
        BH__SQL_PUTLIT(o, "NULL");
        break;
    case JSON_OBJECT: {
        bh_sql_out_t tmp;
        bh_sql_out_init(&tmp, SIZE_MAX);
        put_json_object(&tmp, v);
        if (tmp.err != 0 && o->err == 0)
            o->err = tmp.err;
        bh__sql_put_jstr(o, tmp.p ? tmp.p : "", tmp.n);
        bh_sql_out_free(&tmp);
        break;
    }
    case JSON_ARRAY:
        bh__sql_putc(o, '{');
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i > 0)
                bh__sql_putc(o, ',');
            put_pg_array(o, json_array_get(v, i));
        }
        bh__sql_putc(o, '}');
        break;
    default:
        put_json_value(o, v);
        break;
    }
}

/* Converts one JSON param to its text (section 3.4). Returns 0, or a negative code; *text is
 * NULL for SQL NULL, else allocated in the arena. */
static int param_text(chunk_t **arena, bh_sql_out_t *tmp, json_t *v, const char **text)
{
    *text = NULL;
    if (json_is_null(v))
        return 0;
    const char *src;
    size_t n;
    if (json_is_string(v)) {
        src = json_string_value(v);
        n = json_string_length(v);
    } else {
        bh_sql_out_reset(tmp);
        if (json_is_array(v))
            put_pg_array(tmp, v);
        else
            put_json_value(tmp, v);
        if (tmp->err != 0)
            return tmp->err;
        src = tmp->p ? tmp->p : "";
        n = tmp->n;
    }
    char *dst = arena_alloc(arena, n + 1);
    if (dst == NULL)
        return BH_ENOMEM;
    memcpy(dst, src, n);
    dst[n] = '\0';
    *text = dst;
    return 0;
}

/* True when v has the shape of a single query (Neon's QueryData). */
static bool is_single(json_t *v)
{
    if (!json_is_object(v) || !json_is_string(json_object_get(v, "query")))
        return false;
    json_t *p = json_object_get(v, "params");
    if (p != NULL && !json_is_array(p))
        return false;
    json_t *a = json_object_get(v, "arrayMode");
    if (a != NULL && !json_is_null(a) && !json_is_boolean(a))
        return false;
    return true;
}

static int fill_query(chunk_t **arena, bh_sql_out_t *tmp, json_t *v, bh_sql_query_t *q, char *err,
                      size_t errlen)
{
    json_t *qt = json_object_get(v, "query");
    size_t n = json_string_length(qt);
    char *text = arena_alloc(arena, n + 1);
    if (text == NULL)
        return BH_ENOMEM;
    memcpy(text, json_string_value(qt), n);
    text[n] = '\0';
    q->text = text;

    json_t *a = json_object_get(v, "arrayMode");
    q->array_mode = json_is_boolean(a) ? (signed char)json_is_true(a) : -1;

    json_t *params = json_object_get(v, "params");
    size_t np = params ? json_array_size(params) : 0;
    if (np > 65535) {
        bh__sql_set_err(
            err, errlen,
            "could not parse the HTTP request body: too many parameters (%zu, max 65535)", np);
        return BH_ESQL_BODY;
    }
    const char **vals = arena_alloc(arena, (np ? np : 1) * sizeof(*vals));
    if (vals == NULL)
        return BH_ENOMEM;
    for (size_t i = 0; i < np; i++) {
        int rc = param_text(arena, tmp, json_array_get(params, i), &vals[i]);
        if (rc != 0)
            return rc;
    }
    q->nparams = (int)np;
    q->params = vals;
    return 0;
}

/* jansson refuses integers beyond int64. Neon passes a parameter's number text through as-is, so
 * every integer of 19 or more digits outside a string is turned into a string holding the same
 * digits, which converts to the same parameter text. Inside an array param it then renders
 * quoted, which Postgres reads as the same element; only inside an object param does the text
 * differ. Quoting adds 2 bytes per number of at least 19, so n * 3 + 1 bytes are plenty. Returns a
 * new buffer (bh_free) or NULL. */
static char *quote_big_integers(const char *json, size_t n, size_t *out_n)
{
    char *o = bh_malloc(n * 3 + 1);
    size_t k = 0;
    if (o == NULL)
        return NULL;
    for (size_t i = 0; i < n;) {
        char ch = json[i];
        if (ch == '"') { /* copy a string verbatim */
            o[k++] = json[i++];
            while (i < n && json[i] != '"') {
                if (json[i] == '\\' && i + 1 < n)
                    o[k++] = json[i++];
                o[k++] = json[i++];
            }
            if (i < n)
                o[k++] = json[i++];
            continue;
        }
        if (ch == '-' || (ch >= '0' && ch <= '9')) {
            size_t j = i + (ch == '-');
            while (j < n && json[j] >= '0' && json[j] <= '9')
                j++;
            bool integer = j == n || (json[j] != '.' && json[j] != 'e' && json[j] != 'E');
            size_t digits = j - i - (ch == '-');
            if (integer && digits >= 19) {
                o[k++] = '"';
                memcpy(o + k, json + i, j - i);
                k += j - i;
                o[k++] = '"';
            } else {
                memcpy(o + k, json + i, j - i);
                k += j - i;
            }
            i = j;
            continue;
        }
        o[k++] = json[i++];
    }
    *out_n = k;
    return o;
}

int bh_sql_parse_body(const char *json, size_t n, bh_sql_request_t **out, char *err, size_t errlen)
{
    *out = NULL;
    json_error_t jerr;
    json_t *root = json_loadb(json, n, JSON_DECODE_ANY, &jerr);
    if (root == NULL && json_error_code(&jerr) == json_error_numeric_overflow) {
        size_t qn = 0;
        char *quoted = quote_big_integers(json, n, &qn);
        if (quoted == NULL)
            return BH_ENOMEM;
        root = json_loadb(quoted, qn, JSON_DECODE_ANY, &jerr);
        bh_free(quoted);
    }
    if (root == NULL) {
        if (json_error_code(&jerr) == json_error_out_of_memory)
            return BH_ENOMEM;
        bh__sql_set_err(err, errlen,
                        "could not parse the HTTP request body: %s at line %d column %d", jerr.text,
                        jerr.line, jerr.column);
        return BH_ESQL_BODY;
    }
    json_t *queries = NULL;
    bool single = is_single(root);
    if (!single) {
        queries = json_object_get(root, "queries");
        bool ok = json_is_array(queries);
        for (size_t i = 0; ok && i < json_array_size(queries); i++)
            ok = is_single(json_array_get(queries, i));
        if (!ok) {
            json_decref(root);
            bh__sql_set_err(err, errlen,
                            "could not parse the HTTP request body: data did not match any "
                            "variant of untagged enum Payload");
            return BH_ESQL_BODY;
        }
    }
    size_t nq = single ? 1 : json_array_size(queries);
    chunk_t *arena = NULL;
    bh_sql_request_t *r = arena_alloc(&arena, sizeof(*r));
    bh_sql_query_t *qs = r ? arena_alloc(&arena, (nq ? nq : 1) * sizeof(*qs)) : NULL;
    int rc = qs == NULL ? BH_ENOMEM : 0;
    bh_sql_out_t tmp;
    bh_sql_out_init(&tmp, SIZE_MAX);
    for (size_t i = 0; rc == 0 && i < nq; i++)
        rc = fill_query(&arena, &tmp, single ? root : json_array_get(queries, i), &qs[i], err,
                        errlen);
    bh_sql_out_free(&tmp);
    json_decref(root);
    if (rc != 0) {
        arena_free(arena);
        return rc;
    }
    r->batch = !single;
    r->nqueries = nq;
    r->queries = qs;
    r->arena_ = arena;
    *out = r;
    return 0;
}

void bh_sql_request_free(bh_sql_request_t *r)
{
    if (r != NULL)
        arena_free(r->arena_);
}
