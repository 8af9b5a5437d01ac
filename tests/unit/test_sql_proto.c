/* The Neon SQL-over-HTTP protocol, pure half (proxy/sql/bh_sql_proto.h): every example response of
 * the spec byte for byte, from PGresults built with libpq's PQmakeEmptyPGresult/PQsetResultAttrs/
 * PQsetvalue; parameter conversion; connection strings; bodies; error bodies; the 507 bound. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "bh_alloc.h"
#include "bh_sql_proto.h"

/* ---- helpers ---- */

typedef struct col {
    const char *name;
    Oid type;
    Oid table;
    int column;
    int size;
    int mod;
} col_t;

/* A PGRES_TUPLES_OK result with ncols columns and nrows rows of vals (row-major, NULL = SQL
 * NULL). */
static PGresult *mkres(int ncols, const col_t *cols, int nrows, const char *const *vals)
{
    PGresult *r = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    assert_non_null(r);
    PGresAttDesc att[16];
    assert_true(ncols <= 16);
    for (int i = 0; i < ncols; i++) {
        att[i] = (PGresAttDesc){.name = (char *)cols[i].name,
                                .tableid = cols[i].table,
                                .columnid = cols[i].column,
                                .format = 0,
                                .typid = cols[i].type,
                                .typlen = cols[i].size,
                                .atttypmod = cols[i].mod};
    }
    if (ncols > 0)
        assert_int_equal(PQsetResultAttrs(r, ncols, att), 1);
    for (int t = 0; t < nrows; t++)
        for (int c = 0; c < ncols; c++) {
            const char *v = vals[t * ncols + c];
            assert_int_equal(PQsetvalue(r, t, c, (char *)v, v ? (int)strlen(v) : -1), 1);
        }
    return r;
}

#define INT4(name)                                                                                 \
    {                                                                                              \
        name, 23, 0, 0, 4, -1                                                                      \
    }
#define TEXT(name)                                                                                 \
    {                                                                                              \
        name, 25, 0, 0, -1, -1                                                                     \
    }

static char *body_str(const bh_sql_out_t *o)
{
    static char buf[65536];
    assert_true(o->n < sizeof(buf));
    memcpy(buf, o->p ? o->p : "", o->n);
    buf[o->n] = '\0';
    return buf;
}

/* Encodes one complete result (tag given explicitly) and compares the body. */
static void check_result(PGresult *r, bool raw, bool array, const char *tag, const char *want)
{
    bh_sql_out_t o;
    bh_sql_out_init(&o, 1 << 20);
    assert_int_equal(bh_sql_result_begin(&o, r, raw, array), 0);
    if (r != NULL)
        assert_int_equal(bh_sql_result_rows(&o, r), 0);
    assert_int_equal(bh_sql_result_end(&o, tag), 0);
    assert_string_equal(body_str(&o), want);
    bh_sql_out_free(&o);
}

/* ---- section 5.1, 8 and 10 examples ---- */

static const char SELECT1[] =
    "{\"fields\":[{\"name\":\"x\",\"dataTypeID\":23,\"tableID\":0,\"columnID\":0,\"dataTypeSize\":"
    "4,"
    "\"dataTypeModifier\":-1,\"format\":\"text\"}],\"rows\":[[\"1\"]],\"command\":\"SELECT\","
    "\"rowCount\":1,\"rowAsArray\":true}";

static void test_example_select1(void **state)
{
    col_t cols[] = {INT4("x")};
    const char *vals[] = {"1"};
    PGresult *r = mkres(1, cols, 1, vals);
    assert_int_equal(strlen(SELECT1), 186); /* the spec counts 186 bytes */
    check_result(r, true, true, "SELECT 1", SELECT1);
    /* non-raw, object mode (5.2 example) */
    check_result(
        r, false, false, "SELECT 1",
        "{\"fields\":[{\"name\":\"x\",\"dataTypeID\":23,\"tableID\":0,\"columnID\":0,"
        "\"dataTypeSize\":4,\"dataTypeModifier\":-1,\"format\":\"text\"}],\"rows\":[{\"x\":1}"
        "],\"command\":\"SELECT\",\"rowCount\":1,\"rowAsArray\":false}");
    PQclear(r);
}

static void test_example_no_rows(void **state)
{
    check_result(NULL, true, true, "CREATE TABLE",
                 "{\"fields\":[],\"rows\":[],\"command\":\"CREATE\",\"rowCount\":null,"
                 "\"rowAsArray\":true}");
    PGresult *cmd = PQmakeEmptyPGresult(NULL, PGRES_COMMAND_OK);
    check_result(cmd, true, true, "INSERT 0 2",
                 "{\"fields\":[],\"rows\":[],\"command\":\"INSERT\",\"rowCount\":2,"
                 "\"rowAsArray\":true}");
    PQclear(cmd);
    /* empty query: no tag */
    check_result(NULL, true, true, NULL,
                 "{\"fields\":[],\"rows\":[],\"command\":\"\",\"rowCount\":null,"
                 "\"rowAsArray\":true}");
    /* bh_sql_encode_result takes the tag from PQcmdStatus ("" for a built result) */
    bh_sql_out_t o;
    bh_sql_out_init(&o, 4096);
    PGresult *empty = PQmakeEmptyPGresult(NULL, PGRES_EMPTY_QUERY);
    assert_int_equal(bh_sql_encode_result(&o, empty, true, false), 0);
    assert_string_equal(body_str(&o),
                        "{\"fields\":[],\"rows\":[],\"command\":\"\",\"rowCount\":null,"
                        "\"rowAsArray\":false}");
    PQclear(empty);
    bh_sql_out_free(&o);
}

static void test_example_table_column(void **state)
{
    col_t cols[] = {{"id", 23, 16397, 1, 4, -1}};
    const char *vals[] = {"1", "2"};
    PGresult *r = mkres(1, cols, 2, vals);
    check_result(
        r, true, true, "UPDATE 2",
        "{\"fields\":[{\"name\":\"id\",\"dataTypeID\":23,\"tableID\":16397,\"columnID\":1,"
        "\"dataTypeSize\":4,\"dataTypeModifier\":-1,\"format\":\"text\"}],\"rows\":[[\"1\"],"
        "[\"2\"]],\"command\":\"UPDATE\",\"rowCount\":2,\"rowAsArray\":true}");
    PQclear(r);
}

static void test_example_params_and_null(void **state)
{
    col_t cols[] = {INT4("n"), TEXT("t"), TEXT("missing")};
    const char *vals[] = {"42", "hello", NULL};
    PGresult *r = mkres(3, cols, 1, vals);
    const char *fields =
        "{\"fields\":[{\"name\":\"n\",\"dataTypeID\":23,\"tableID\":0,\"columnID\":0,"
        "\"dataTypeSize\":4,\"dataTypeModifier\":-1,\"format\":\"text\"},{\"name\":\"t\","
        "\"dataTypeID\":25,\"tableID\":0,\"columnID\":0,\"dataTypeSize\":-1,\"dataTypeModifier\":-"
        "1,"
        "\"format\":\"text\"},{\"name\":\"missing\",\"dataTypeID\":25,\"tableID\":0,\"columnID\":0,"
        "\"dataTypeSize\":-1,\"dataTypeModifier\":-1,\"format\":\"text\"}],";
    char want[2048];
    snprintf(want, sizeof(want),
             "%s\"rows\":[[\"42\",\"hello\",null]],\"command\":\"SELECT\",\"rowCount\":1,"
             "\"rowAsArray\":true}",
             fields);
    check_result(r, true, true, "SELECT 1", want);
    /* without the two headers (section 10) */
    snprintf(want, sizeof(want),
             "%s\"rows\":[{\"n\":42,\"t\":\"hello\",\"missing\":null}],\"command\":\"SELECT\","
             "\"rowCount\":1,\"rowAsArray\":false}",
             fields);
    check_result(r, false, false, "SELECT 1", want);
    PQclear(r);
}

static void test_example_batch(void **state)
{
    col_t c1[] = {TEXT("l")}, c2[] = {TEXT("r")};
    const char *v1[] = {"serializable"}, *v2[] = {"on"};
    PGresult *r1 = mkres(1, c1, 1, v1), *r2 = mkres(1, c2, 1, v2);
    bh_sql_out_t o;
    bh_sql_out_init(&o, 1 << 20);
    assert_int_equal(bh_sql_batch_begin(&o), 0);
    assert_int_equal(bh_sql_result_begin(&o, r1, true, true), 0);
    assert_int_equal(bh_sql_result_rows(&o, r1), 0);
    assert_int_equal(bh_sql_result_end(&o, "SELECT 1"), 0);
    assert_int_equal(bh_sql_result_begin(&o, r2, true, true), 0);
    assert_int_equal(bh_sql_result_rows(&o, r2), 0);
    assert_int_equal(bh_sql_result_end(&o, "SELECT 1"), 0);
    assert_int_equal(bh_sql_batch_end(&o), 0);
    assert_string_equal(
        body_str(&o),
        "{\"results\":[{\"fields\":[{\"name\":\"l\",\"dataTypeID\":25,\"tableID\":0,\"columnID\":0,"
        "\"dataTypeSize\":-1,\"dataTypeModifier\":-1,\"format\":\"text\"}],\"rows\":[["
        "\"serializable\"]],\"command\":\"SELECT\",\"rowCount\":1,\"rowAsArray\":true},{\"fields\":"
        "[{\"name\":\"r\",\"dataTypeID\":25,\"tableID\":0,\"columnID\":0,\"dataTypeSize\":-1,"
        "\"dataTypeModifier\":-1,\"format\":\"text\"}],\"rows\":[[\"on\"]],\"command\":\"SELECT\","
        "\"rowCount\":1,\"rowAsArray\":true}]}");
    /* an empty batch */
    bh_sql_out_reset(&o);
    assert_int_equal(bh_sql_batch_begin(&o), 0);
    assert_int_equal(bh_sql_batch_end(&o), 0);
    assert_string_equal(body_str(&o), "{\"results\":[]}");
    bh_sql_out_free(&o);
    PQclear(r1);
    PQclear(r2);
}

/* ---- command tags ---- */

static void test_command_tags(void **state)
{
    static const struct {
        const char *tag, *command, *count;
    } cases[] = {
        {"SELECT 3", "SELECT", "3"},
        {"INSERT 0 5", "INSERT", "5"},
        {"INSERT 0", "INSERT", "null"},
        {"UPDATE 0", "UPDATE", "0"},
        {"DELETE 12", "DELETE", "12"},
        {"MERGE 2", "MERGE", "2"},
        {"COPY 10", "COPY", "10"},
        {"FETCH 3", "FETCH", "3"},
        {"MOVE 1", "MOVE", "1"},
        {"CREATE TABLE", "CREATE", "null"},
        {"DROP INDEX", "DROP", "null"},
        {"BEGIN", "BEGIN", "null"},
        {"SELECT 9223372036854775807", "SELECT", "9223372036854775807"},
        {"SELECT 9223372036854775808", "SELECT", "null"},
        {"SELECT 99999999999999999999", "SELECT", "null"},
        {"", "", "null"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char want[256];
        snprintf(want, sizeof(want),
                 "{\"fields\":[],\"rows\":[],\"command\":\"%s\",\"rowCount\":%s,"
                 "\"rowAsArray\":true}",
                 cases[i].command, cases[i].count);
        check_result(NULL, true, true, cases[i].tag, want);
    }
}

/* ---- values: escaping and UTF-8 ---- */

static void test_escaping(void **state)
{
    col_t cols[] = {TEXT("a\"b\\c\n"), TEXT("v")};
    const char *vals[] = {"\x01\x1f\b\f\n\r\t\"\\/\x7f", "é日本😀"};
    PGresult *r = mkres(2, cols, 1, vals);
    bh_sql_out_t o;
    bh_sql_out_init(&o, 1 << 20);
    assert_int_equal(bh_sql_result_begin(&o, r, true, false), 0);
    assert_int_equal(bh_sql_result_rows(&o, r), 0);
    assert_int_equal(bh_sql_result_end(&o, "SELECT 1"), 0);
    const char *b = body_str(&o);
    assert_non_null(strstr(b, "{\"name\":\"a\\\"b\\\\c\\n\",\"dataTypeID\":25"));
    assert_non_null(strstr(b,
                           "\"rows\":[{\"a\\\"b\\\\c\\n\":\"\\u0001\\u001f\\b\\f\\n\\r\\t\\\"\\\\/"
                           "\x7f\",\"v\":\"é日本😀\"}]"));
    bh_sql_out_free(&o);
    PQclear(r);

    /* a NUL inside a value (only possible with a length) and invalid UTF-8 */
    static const struct {
        const char *v;
        int len;
        int rc;
    } bad[] = {
        {"a\0b", 3, 0},                            /* \u0000 */
        {"\xc0\x80", 2, BH_ESQL_BAD_UTF8},         /* overlong */
        {"\xed\xa0\x80", 3, BH_ESQL_BAD_UTF8},     /* surrogate */
        {"\xe6\x97", 2, BH_ESQL_BAD_UTF8},         /* truncated */
        {"\xf4\x90\x80\x80", 4, BH_ESQL_BAD_UTF8}, /* above U+10FFFF */
        {"\xff", 1, BH_ESQL_BAD_UTF8},
        {"\xf0\x9f\x98\x80", 4, 0},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        col_t c1[] = {TEXT("v")};
        PGresult *rr = mkres(1, c1, 0, NULL);
        assert_int_equal(PQsetvalue(rr, 0, 0, (char *)bad[i].v, bad[i].len), 1);
        bh_sql_out_init(&o, 1 << 20);
        assert_int_equal(bh_sql_result_begin(&o, rr, true, true), 0);
        assert_int_equal(bh_sql_result_rows(&o, rr), bad[i].rc);
        if (bad[i].rc == 0 && i == 0)
            assert_non_null(strstr(body_str(&o), "[[\"a\\u0000b\"]"));
        if (bad[i].rc != 0) {
            assert_int_equal(bh_sql_result_end(&o, "SELECT 1"), bad[i].rc); /* sticky */
            assert_int_equal(bh_err_status(bad[i].rc), 500);
        }
        bh_sql_out_free(&o);
        PQclear(rr);
    }
}

/* ---- non-raw conversions (5.2) ---- */

static void nonraw(Oid type, const char *text, const char *want_json)
{
    col_t cols[] = {{"v", type, 0, 0, -1, -1}};
    const char *vals[] = {text};
    PGresult *r = mkres(1, cols, 1, vals);
    bh_sql_out_t o;
    bh_sql_out_init(&o, 1 << 20);
    assert_int_equal(bh_sql_result_begin(&o, r, false, true), 0);
    size_t start = o.n;
    assert_int_equal(bh_sql_result_rows(&o, r), 0);
    char got[1024];
    size_t n = o.n - start - 2;
    memcpy(got, o.p + start + 1, n); /* strip the row's [ ] */
    got[n] = '\0';
    if (strcmp(got, want_json) != 0)
        fail_msg("type %u text %s: got %s want %s", type, text, got, want_json);
    bh_sql_out_free(&o);
    PQclear(r);
}

static void test_nonraw(void **state)
{
    nonraw(16, "t", "true");
    nonraw(16, "f", "false");
    nonraw(16, "true", "false"); /* only "t" is true */
    nonraw(21, "-32768", "-32768");
    nonraw(23, "2147483647", "2147483647");
    nonraw(20, "9007199254740993", "\"9007199254740993\""); /* int8 stays a string */
    nonraw(1700, "123.4500", "\"123.4500\"");
    nonraw(701, "1", "1.0");
    nonraw(701, "2.5", "2.5");
    nonraw(701, "-0", "-0.0");
    nonraw(701, "0", "0.0");
    nonraw(701, "1000", "1000.0");
    nonraw(701, "0.001", "0.001");
    nonraw(701, "0.0001", "0.0001");
    nonraw(701, "1e-05", "0.00001");
    nonraw(701, "1e-06", "1e-6");
    nonraw(701, "1e+15", "1000000000000000.0");
    nonraw(701, "1e+16", "1e16");
    nonraw(701, "1.5e-07", "1.5e-7");
    nonraw(701, "1e+100", "1e100");
    nonraw(701, "1.2345678901234567e+16", "1.2345678901234568e16");
    nonraw(701, "1234567890123456", "1234567890123456.0");
    nonraw(701, "0.1", "0.1");
    nonraw(701, "3.141592653589793", "3.141592653589793");
    nonraw(701, "1.7976931348623157e+308", "1.7976931348623157e308");
    nonraw(701, "5e-324", "5e-324");
    nonraw(700, "1.1", "1.1");
    nonraw(701, "NaN", "\"NaN\"");
    nonraw(701, "Infinity", "\"Infinity\"");
    nonraw(700, "-Infinity", "\"-Infinity\"");
    nonraw(114, "{\"k\": [1, \"x\"]}", "{\"k\": [1, \"x\"]}"); /* verbatim */
    nonraw(3802, "[1, 2]", "[1, 2]");
    nonraw(25, "plain \"text\"", "\"plain \\\"text\\\"\"");
    nonraw(1184, "2024-01-02 03:04:05.678+00", "\"2024-01-02 03:04:05.678+00\"");
    nonraw(17, "\\xdeadbeef", "\"\\\\xdeadbeef\"");
    /* arrays */
    nonraw(1007, "{1,NULL,3}", "[1,null,3]");
    nonraw(1007, "{}", "[]");
    nonraw(1007, "{{1,2},{3,4}}", "[[1,2],[3,4]]");
    nonraw(1007, "[0:1]={5,6}", "[5,6]");
    nonraw(1000, "{t,f}", "[true,false]");
    nonraw(1022, "{1,2.5,NaN}", "[1.0,2.5,\"NaN\"]");
    nonraw(1016, "{1,9007199254740993}", "[\"1\",\"9007199254740993\"]");
    nonraw(1009, "{\"a\\\"b\",\"c,d\",NULL,\"NULL\",\"\",x\\\\y,\"back\\\\slash\"}",
           "[\"a\\\"b\",\"c,d\",null,\"NULL\",\"\",\"x\\\\y\",\"back\\\\slash\"]");
    nonraw(1009, "{{\"{}\",b},{c,\"}\"}}", "[[\"{}\",\"b\"],[\"c\",\"}\"]]");
    nonraw(3807, "{\"{\\\"a\\\": 1}\",NULL}", "[{\"a\": 1},null]");
    nonraw(1182, "{2024-01-02,infinity}", "[\"2024-01-02\",\"infinity\"]");
    nonraw(99999, "{1,2}", "\"{1,2}\""); /* unknown type: a string */
}

/* ---- incremental rows, single-row mode, the 507 bound ---- */

static void test_incremental_rows(void **state)
{
    col_t cols[] = {INT4("a"), TEXT("b")};
    const char *all[] = {"1", "x", "2", NULL, "3", "z"};
    PGresult *whole = mkres(2, cols, 3, all);
    bh_sql_out_t one, inc;
    bh_sql_out_init(&one, 1 << 20);
    bh_sql_out_init(&inc, 1 << 20);
    assert_int_equal(bh_sql_encode_result(&one, whole, true, false), 0);
    /* single-row mode: a result per row, then a zero-row result with the tag */
    assert_int_equal(bh_sql_result_begin(&inc, whole, true, false), 0);
    for (int i = 0; i < 3; i++) {
        PGresult *row = mkres(2, cols, 1, all + 2 * i);
        assert_int_equal(bh_sql_result_rows(&inc, row), 0);
        PQclear(row);
    }
    PGresult *none = mkres(2, cols, 0, NULL);
    assert_int_equal(bh_sql_result_rows(&inc, none), 0);
    assert_int_equal(bh_sql_result_end(&inc, NULL), 0);
    /* same bytes but for the tag, which PQcmdStatus cannot give for a built result */
    assert_int_equal(one.n, inc.n);
    assert_memory_equal(one.p, inc.p, one.n);
    assert_non_null(strstr(body_str(&inc), "\"rows\":[{\"a\":\"1\",\"b\":\"x\"},{\"a\":\"2\","
                                           "\"b\":null},{\"a\":\"3\",\"b\":\"z\"}]"));
    /* out of order calls */
    bh_sql_out_t bad;
    bh_sql_out_init(&bad, 1024);
    assert_int_equal(bh_sql_result_rows(&bad, none), BH_ESQL_STATE);
    assert_int_equal(bh_sql_result_end(&bad, "SELECT 0"), BH_ESQL_STATE);
    bh_sql_out_reset(&bad);
    assert_int_equal(bh_sql_encode_result(&bad, none, true, true), 0);
    assert_int_equal(bh_sql_result_begin(&bad, none, true, true), BH_ESQL_STATE); /* not a batch */
    bh_sql_out_reset(&bad);
    assert_int_equal(bh_sql_batch_end(&bad), BH_ESQL_STATE);
    bh_sql_out_free(&bad);
    PQclear(none);
    PQclear(whole);
    bh_sql_out_free(&one);
    bh_sql_out_free(&inc);
}

static void test_bound_507(void **state)
{
    col_t cols[] = {INT4("x")};
    const char *vals[] = {"1"};
    PGresult *r = mkres(1, cols, 1, vals);
    /* exactly the body size fits; one byte less is 507 */
    bh_sql_out_t o;
    bh_sql_out_init(&o, 186);
    assert_int_equal(bh_sql_encode_result(&o, r, true, true), 0); /* tag "" -> differs */
    size_t need = o.n;
    bh_sql_out_free(&o);
    bh_sql_out_init(&o, need);
    assert_int_equal(bh_sql_encode_result(&o, r, true, true), 0);
    assert_int_equal(o.n, need);
    bh_sql_out_free(&o);
    bh_sql_out_init(&o, need - 1);
    assert_int_equal(bh_sql_encode_result(&o, r, true, true), BH_ESQL_TOO_LARGE);
    assert_true(o.n <= need - 1);
    assert_int_equal(bh_err_status(BH_ESQL_TOO_LARGE), 507);
    /* sticky across calls, and the bound is cumulative across a batch */
    assert_int_equal(bh_sql_batch_end(&o), BH_ESQL_TOO_LARGE);
    bh_sql_out_free(&o);
    bh_sql_out_init(&o, 2 * need);
    assert_int_equal(bh_sql_batch_begin(&o), 0);
    assert_int_equal(bh_sql_encode_result(&o, r, true, true), 0);
    assert_int_equal(bh_sql_encode_result(&o, r, true, true), BH_ESQL_TOO_LARGE);
    /* the 507 body replaces the partial one and is not bounded */
    assert_int_equal(bh_sql_encode_too_large(&o, true, 10485760), 0);
    assert_string_equal(
        body_str(&o), "{\"message\":\"response is too large (max is 10485760 bytes)\",\"code\":"
                      "\"\",\"detail\":null,\"hint\":null,\"position\":null,\"internalPosition\":"
                      "null,\"internalQuery\":null,\"severity\":\"\",\"where\":null,\"table\":null,"
                      "\"column\":null,\"schema\":null,\"dataType\":null,\"constraint\":null,"
                      "\"file\":null,\"line\":null,\"routine\":null}");
    assert_int_equal(o.err, 0);
    bh_sql_out_free(&o);

    /* many rows: growth never passes the bound, the error arrives mid-rows */
    enum { N = 5000 };
    PGresult *big = mkres(1, cols, 0, NULL);
    for (int i = 0; i < N; i++)
        assert_int_equal(PQsetvalue(big, i, 0, "12345", 5), 1);
    bh_sql_out_init(&o, 20000);
    assert_int_equal(bh_sql_result_begin(&o, big, true, true), 0);
    assert_int_equal(bh_sql_result_rows(&o, big), BH_ESQL_TOO_LARGE);
    assert_true(o.n <= 20000 && o.cap <= 20000);
    bh_sql_out_free(&o);
    bh_sql_out_init(&o, 10 << 20);
    assert_int_equal(bh_sql_encode_result(&o, big, true, true), 0);
    size_t len;
    char *taken = bh_sql_out_take(&o, &len);
    assert_int_equal(len, need + (size_t)(N - 1) * 10 + 4); /* "12345" vs "1", and commas */
    assert_int_equal(o.n, 0);
    bh_free(taken);
    bh_sql_out_free(&o);
    PQclear(big);
    PQclear(r);
}

/* ---- error bodies (6.2) ---- */

/* libpq offers no public way to put ErrorResponse fields into a PGresult; this mirrors the
 * layout of libpq 15's struct pg_result (libpq-int.h) up to errFields. mirror_ok() checks the
 * layout against the real accessors first, so a different libpq skips instead of corrupting. */
typedef struct mirror_field {
    struct mirror_field *next;
    char code;
    char contents[];
} mirror_field_t;

typedef struct mirror_result {
    int ntups, numAttributes;
    void *attDescs, **tuples;
    int tupArrSize, numParameters;
    void *paramDescs;
    ExecStatusType resultStatus;
    char cmdStatus[64];
    int binary;
    void *noticeHooks[4];
    void *events;
    int nEvents, client_encoding;
    char *errMsg;
    mirror_field_t *errFields;
} mirror_result_t;

static void add_field(PGresult *r, char code, const char *value)
{
    mirror_field_t *f = PQresultAlloc(r, sizeof(*f) + strlen(value) + 1);
    assert_non_null(f);
    f->code = code;
    strcpy(f->contents, value);
    f->next = ((mirror_result_t *)r)->errFields;
    ((mirror_result_t *)r)->errFields = f;
}

static bool mirror_ok(void)
{
    PGresult *r = PQmakeEmptyPGresult(NULL, PGRES_FATAL_ERROR);
    mirror_result_t *m = (mirror_result_t *)r;
    bool ok = m->resultStatus == PGRES_FATAL_ERROR && m->errFields == NULL;
    if (ok) {
        snprintf(m->cmdStatus, sizeof(m->cmdStatus), "INSERT 0 7");
        add_field(r, 'C', "22012");
        ok = strcmp(PQcmdStatus(r), "INSERT 0 7") == 0 &&
             PQresultErrorField(r, PG_DIAG_SQLSTATE) != NULL &&
             strcmp(PQresultErrorField(r, PG_DIAG_SQLSTATE), "22012") == 0;
    }
    PQclear(r);
    return ok;
}

static PGresult *mkerr(const char *const *fields)
{
    PGresult *r = PQmakeEmptyPGresult(NULL, PGRES_FATAL_ERROR);
    for (; *fields != NULL; fields++)
        add_field(r, fields[0][0], *fields + 1);
    return r;
}

static void check_pg_error(const char *const *fields, const char *want)
{
    PGresult *r = mkerr(fields);
    bh_sql_out_t o;
    bh_sql_out_init(&o, 10);
    assert_int_equal(bh_sql_encode_result(&o, NULL, true, true), BH_ESQL_TOO_LARGE);
    assert_int_equal(bh_sql_encode_pg_error(&o, r), 0); /* replaces, unbounded */
    assert_string_equal(body_str(&o), want);
    bh_sql_out_free(&o);
    PQclear(r);
}

static void test_pg_error(void **state)
{
    if (!mirror_ok())
        skip();
    /* SELECT 1/0 on PostgreSQL 15 (the fields libpq reported, V included) */
    const char *div0[] = {"SERROR", "VERROR", "C22012",   "Mdivision by zero",
                          "Fint.c", "L869",   "Rint4div", NULL};
    check_pg_error(div0, "{\"message\":\"division by zero\",\"code\":\"22012\",\"detail\":null,"
                         "\"hint\":null,\"position\":null,\"internalPosition\":null,"
                         "\"internalQuery\":null,\"severity\":\"ERROR\",\"where\":null,\"table\":"
                         "null,\"column\":null,\"schema\":null,\"dataType\":null,\"constraint\":"
                         "null,\"file\":\"int.c\",\"line\":\"869\",\"routine\":\"int4div\"}");
    const char *uniq[] = {"SERROR",
                          "C23505",
                          "Mduplicate key value violates unique constraint "
                          "\"neon_compat_10519_pkey\"",
                          "DKey (id)=(1) already exists.",
                          "spublic",
                          "tneon_compat_10519",
                          "nneon_compat_10519_pkey",
                          "Fnbtinsert.c",
                          "L664",
                          "R_bt_check_unique",
                          NULL};
    check_pg_error(
        uniq,
        "{\"message\":\"duplicate key value violates unique constraint "
        "\\\"neon_compat_10519_pkey\\\"\",\"code\":\"23505\",\"detail\":\"Key (id)=(1) already "
        "exists.\",\"hint\":null,\"position\":null,\"internalPosition\":null,\"internalQuery\":"
        "null,"
        "\"severity\":\"ERROR\",\"where\":null,\"table\":\"neon_compat_10519\",\"column\":null,"
        "\"schema\":\"public\",\"dataType\":null,\"constraint\":\"neon_compat_10519_pkey\","
        "\"file\":\"nbtinsert.c\",\"line\":\"664\",\"routine\":\"_bt_check_unique\"}");
    /* every field; P present hides p and q */
    const char *all[] = {"SERROR", "VERROR", "C42703",  "Mm\n\"x\"", "Dd", "Hh", "P8",
                         "p3",     "qq",     "Ww\tctx", "ss",        "tt", "cc", "dd",
                         "nn",     "Ff.c",   "L1",      "Rr",        NULL};
    check_pg_error(all,
                   "{\"message\":\"m\\n\\\"x\\\"\",\"code\":\"42703\",\"detail\":\"d\",\"hint\":"
                   "\"h\",\"position\":\"8\",\"internalPosition\":null,\"internalQuery\":null,"
                   "\"severity\":\"ERROR\",\"where\":\"w\\tctx\",\"table\":\"t\",\"column\":"
                   "\"c\",\"schema\":\"s\",\"dataType\":\"d\",\"constraint\":\"n\",\"file\":"
                   "\"f.c\",\"line\":\"1\",\"routine\":\"r\"}");
    /* without P: internalPosition and internalQuery */
    const char *internal[] = {"SERROR", "C42601", "Msyntax error", "p15", "qSELECT oops", NULL};
    check_pg_error(
        internal, "{\"message\":\"syntax error\",\"code\":\"42601\",\"detail\":null,\"hint\":null,"
                  "\"position\":null,\"internalPosition\":\"15\",\"internalQuery\":\"SELECT oops\","
                  "\"severity\":\"ERROR\",\"where\":null,\"table\":null,\"column\":null,\"schema\":"
                  "null,\"dataType\":null,\"constraint\":null,\"file\":null,\"line\":null,"
                  "\"routine\":null}");
    /* a lone q (no p) is dropped too */
    const char *lone_q[] = {"SERROR", "C1", "Mx", "qSELECT", NULL};
    check_pg_error(lone_q, "{\"message\":\"x\",\"code\":\"1\",\"detail\":null,\"hint\":null,"
                           "\"position\":null,\"internalPosition\":null,\"internalQuery\":null,"
                           "\"severity\":\"ERROR\",\"where\":null,\"table\":null,\"column\":null,"
                           "\"schema\":null,\"dataType\":null,\"constraint\":null,\"file\":null,"
                           "\"line\":null,\"routine\":null}");
}

static void test_pg_error_no_fields(void **state)
{
    /* a libpq-generated error (e.g. a lost connection): no fields, code and severity "" */
    PGresult *r = PQmakeEmptyPGresult(NULL, PGRES_FATAL_ERROR);
    bh_sql_out_t o;
    bh_sql_out_init(&o, 1 << 20);
    assert_int_equal(bh_sql_encode_pg_error(&o, r), 0);
    assert_string_equal(
        body_str(&o), "{\"message\":\"unknown error\",\"code\":\"\",\"detail\":null,\"hint\":null,"
                      "\"position\":null,\"internalPosition\":null,\"internalQuery\":null,"
                      "\"severity\":\"\",\"where\":null,\"table\":null,\"column\":null,\"schema\":"
                      "null,\"dataType\":null,\"constraint\":null,\"file\":null,\"line\":null,"
                      "\"routine\":null}");
    if (mirror_ok()) {
        char *msg = PQresultAlloc(r, 128);
        strcpy(msg, "server closed the connection unexpectedly\n\tThis probably means...\n");
        ((mirror_result_t *)r)->errMsg = msg;
        assert_int_equal(bh_sql_encode_pg_error(&o, r), 0);
        assert_non_null(strstr(body_str(&o), "{\"message\":\"server closed the connection "
                                             "unexpectedly\\n\\tThis probably means...\","
                                             "\"code\":\"\","));
    }
    bh_sql_out_free(&o);
    PQclear(r);
}

static void test_local_errors(void **state)
{
    bh_sql_out_t o;
    bh_sql_out_init(&o, 1); /* error bodies ignore the bound */
    assert_int_equal(bh_sql_encode_local_error(&o, "invalid isolation level"), 0);
    assert_string_equal(
        body_str(&o),
        "{\"message\":\"invalid isolation level\",\"code\":\"\",\"detail\":null,\"hint\":null,"
        "\"position\":null,\"internalPosition\":null,\"internalQuery\":null,\"severity\":\"\","
        "\"where\":null,\"table\":null,\"column\":null,\"schema\":null,\"dataType\":null,"
        "\"constraint\":null,\"file\":null,\"line\":null,\"routine\":null}");
    assert_int_equal(bh_sql_encode_too_large(&o, false, 10485760), 0);
    assert_non_null(strstr(body_str(&o), "{\"message\":\"request is too large (max is 10485760 "
                                         "bytes)\",\"code\":\"\","));
    assert_int_equal(bh_sql_encode_not_supported(&o), 0);
    assert_string_equal(body_str(&o), "\"query is not supported\"");
    /* then a success body still works on the same buffer after a reset (and respects max) */
    bh_sql_out_reset(&o);
    assert_int_equal(bh_sql_encode_result(&o, NULL, true, true), BH_ESQL_TOO_LARGE);
    bh_sql_out_free(&o);
    assert_int_equal(bh_err_status(BH_ESQL_BODY), 400);
    assert_int_equal(bh_err_status(BH_ENOMEM), 500);
    assert_string_equal(bh_strerror(BH_ESQL_ISOLATION), "invalid isolation level");
}

/* ---- connect errors (section 12), real libpq 15 VERBOSE messages ---- */

static const char CONN_28P01[] =
    "connection to server at \"127.0.0.1\", port 55871 failed: FATAL:  28P01: password "
    "authentication failed for user \"alice\"\nLOCATION:  auth_failed, auth.c:334\n";
static const char CONN_3D000[] =
    "connection to server at \"127.0.0.1\", port 55871 failed: FATAL:  3D000: database "
    "\"nosuchdb\" does not exist\nLOCATION:  InitPostgres, postinit.c:948\n";
static const char CONN_53300[] =
    "connection to server at \"127.0.0.1\", port 55871 failed: FATAL:  53300: sorry, too many "
    "clients already\nLOCATION:  InitProcess, proc.c:357\n";
static const char CONN_TWO[] =
    "connection to server at \"127.0.0.1\", port 1 failed: Connection refused\n\tIs the server "
    "running on that host and accepting TCP/IP connections?\nconnection to server at "
    "\"127.0.0.1\", port 55871 failed: FATAL:  28P01: password authentication failed for user "
    "\"alice\"\nLOCATION:  auth_failed, auth.c:334\n";
static const char CONN_REFUSED[] =
    "connection to server at \"127.0.0.1\", port 1 failed: Connection refused\n\tIs the server "
    "running on that host and accepting TCP/IP connections?\n";

static bool span_is(bh_span_t s, const char *want)
{
    if (want == NULL)
        return s.p == NULL;
    return s.p != NULL && s.n == strlen(want) && memcmp(s.p, want, s.n) == 0;
}

static void test_conn_error(void **state)
{
    bh_sql_conn_error_t ce;
    assert_true(bh_sql_conn_error_parse(CONN_28P01, &ce));
    assert_true(span_is(ce.severity, "FATAL") && span_is(ce.code, "28P01"));
    assert_true(span_is(ce.message, "password authentication failed for user \"alice\""));
    assert_true(span_is(ce.routine, "auth_failed") && span_is(ce.file, "auth.c") &&
                span_is(ce.line, "334"));
    assert_true(span_is(ce.detail, NULL) && span_is(ce.hint, NULL));

    assert_true(bh_sql_conn_error_parse(CONN_3D000, &ce));
    assert_true(span_is(ce.code, "3D000"));
    assert_true(span_is(ce.message, "database \"nosuchdb\" does not exist"));
    assert_true(bh_sql_conn_error_parse(CONN_53300, &ce));
    assert_true(span_is(ce.code, "53300") && span_is(ce.routine, "InitProcess"));
    assert_true(span_is(ce.message, "sorry, too many clients already"));
    assert_true(bh_sql_conn_error_parse(CONN_TWO, &ce));
    assert_true(span_is(ce.code, "28P01") && span_is(ce.file, "auth.c"));

    /* transport failure: no SQLSTATE */
    assert_false(bh_sql_conn_error_parse(CONN_REFUSED, &ce));
    assert_true(span_is(ce.code, NULL) && ce.message.n == strlen(CONN_REFUSED) - 1);
    assert_false(bh_sql_conn_error_parse("", &ce));
    assert_false(bh_sql_conn_error_parse(NULL, &ce));

    /* user-controlled text after the SQLSTATE cannot pose as another error */
    assert_true(bh_sql_conn_error_parse(
        "connection to server at \"h\", port 1 failed: FATAL:  28P01: password authentication "
        "failed for user \"x FATAL:  99999: y\"\nDETAIL:  some detail\nHINT:  a hint\n",
        &ce));
    assert_true(span_is(ce.code, "28P01") && span_is(ce.detail, "some detail") &&
                span_is(ce.hint, "a hint") && span_is(ce.routine, NULL));

    bh_sql_out_t o;
    bh_sql_out_init(&o, 1 << 20);
    assert_int_equal(bh_sql_encode_conn_error(&o, CONN_28P01), 0);
    assert_string_equal(
        body_str(&o),
        "{\"message\":\"password authentication failed for user \\\"alice\\\"\",\"code\":\"28P01\","
        "\"detail\":null,\"hint\":null,\"position\":null,\"internalPosition\":null,"
        "\"internalQuery\":"
        "null,\"severity\":\"FATAL\",\"where\":null,\"table\":null,\"column\":null,\"schema\":null,"
        "\"dataType\":null,\"constraint\":null,\"file\":\"auth.c\",\"line\":\"334\",\"routine\":"
        "\"auth_failed\"}");
    assert_int_equal(bh_sql_encode_conn_error(&o, CONN_REFUSED), 0);
    assert_non_null(strstr(body_str(&o),
                           "{\"message\":\"connection to server at \\\"127.0.0.1\\\", "
                           "port 1 failed: Connection refused\\n\\tIs the server "
                           "running on that host and accepting TCP/IP "
                           "connections?\",\"code\":\"\","));
    assert_non_null(strstr(body_str(&o), "\"severity\":\"\","));
    bh_sql_out_free(&o);
}

/* ---- request bodies and parameters (3) ---- */

static bh_sql_request_t *parse_ok(const char *json)
{
    bh_sql_request_t *r = NULL;
    char err[256] = "";
    int rc = bh_sql_parse_body(json, strlen(json), &r, err, sizeof(err));
    if (rc != 0)
        fail_msg("%s: %d %s", json, rc, err);
    return r;
}

static void parse_fails(const char *json, const char *want_err)
{
    bh_sql_request_t *r = (void *)1;
    char err[256] = "";
    assert_int_equal(bh_sql_parse_body(json, strlen(json), &r, err, sizeof(err)), BH_ESQL_BODY);
    assert_null(r);
    if (strncmp(err, want_err, strlen(want_err)) != 0)
        fail_msg("%s: got error %s, want %s", json, err, want_err);
}

static void assert_param(const bh_sql_query_t *q, int i, const char *want)
{
    assert_true(i < q->nparams);
    if (want == NULL) {
        assert_null(q->params[i]);
        return;
    }
    assert_non_null(q->params[i]);
    if (strcmp(q->params[i], want) != 0)
        fail_msg("param %d: got [%s] want [%s]", i, q->params[i], want);
}

static void test_body_params(void **state)
{
    /* section 8.3 on the wire: the driver sends strings and null only */
    bh_sql_request_t *r = parse_ok("{\"query\":\"SELECT $1::int AS a, $2 AS b, $3 AS c, $4 AS d, "
                                   "$5 AS e, $6 AS f, $7 AS g, $8 "
                                   "AS h\",\"params\":[\"42\",null,\"he said "
                                   "\\\"hi\\\"\\n\",\"true\",\"12345678901234567890\","
                                   "\"2024-01-02T03:04:05.006+00:00\",\"{\\\"1\\\",NULL,"
                                   "\\\"a\\\\\\\"b\\\",{\\\"2\\\",\\\"3\\\""
                                   "}}\",\"{\\\"k\\\":[1,\\\"two\\\"]}\"]}");
    assert_false(r->batch);
    assert_int_equal(r->nqueries, 1);
    const bh_sql_query_t *q = &r->queries[0];
    assert_string_equal(q->text, "SELECT $1::int AS a, $2 AS b, $3 AS c, $4 AS d, $5 AS e, $6 AS "
                                 "f, $7 AS g, $8 AS h");
    assert_int_equal(q->nparams, 8);
    assert_int_equal(q->array_mode, -1);
    assert_param(q, 0, "42");
    assert_param(q, 1, NULL);
    assert_param(q, 2, "he said \"hi\"\n");
    assert_param(q, 3, "true");
    assert_param(q, 4, "12345678901234567890");
    assert_param(q, 5, "2024-01-02T03:04:05.006+00:00");
    assert_param(q, 6, "{\"1\",NULL,\"a\\\"b\",{\"2\",\"3\"}}");
    assert_param(q, 7, "{\"k\":[1,\"two\"]}");
    bh_sql_request_free(r);

    r = parse_ok("{\"query\":\"SELECT $1::bytea AS buf, $2::bytea AS u8, $3 AS undef, $4 AS fl\","
                 "\"params\":[\"\\\\xdeadbeef\",\"\\\\x0102\",null,\"1.5\"]}");
    assert_param(&r->queries[0], 0, "\\xdeadbeef");
    assert_param(&r->queries[0], 1, "\\x0102");
    assert_param(&r->queries[0], 2, NULL);
    assert_param(&r->queries[0], 3, "1.5");
    bh_sql_request_free(r);

    /* server-side rules of 3.4 for non-string JSON */
    r = parse_ok("{\"params\":[true,false,42,-7,0,1.5,1e3,0.1,1e100,-0.0,2.5e-7,"
                 "9223372036854775807,-9223372036854775808,"
                 "{\"b\":1,\"a\":[1,\"two\",{\"z\":null,\"y\":1.0}],\"é\":\"\\u00e9/\\u0001\"},"
                 "{},[],[1,null,\"a\\\"b\",[2,3]],[[1,2],[3,[4]]],[{\"k\":\"v\",\"a\":\"q\\\"\"}],"
                 "[true,1.5,\"x\\ny\",\"back\\\\slash\"],[null],\"\",\"日本\"],"
                 "\"query\":\"SELECT 1\"}");
    q = &r->queries[0];
    const char *want[] = {"true",
                          "false",
                          "42",
                          "-7",
                          "0",
                          "1.5",
                          "1000.0",
                          "0.1",
                          "1e100",
                          "-0.0",
                          "2.5e-7",
                          "9223372036854775807",
                          "-9223372036854775808",
                          "{\"a\":[1,\"two\",{\"y\":1.0,\"z\":null}],\"b\":1,\"é\":\"é/\\u0001\"}",
                          "{}",
                          "{}",
                          "{1,NULL,\"a\\\"b\",{2,3}}",
                          "{{1,2},{3,{4}}}",
                          "{\"{\\\"a\\\":\\\"q\\\\\\\"\\\",\\\"k\\\":\\\"v\\\"}\"}",
                          "{true,1.5,\"x\\ny\",\"back\\\\slash\"}",
                          "{NULL}",
                          "",
                          "日本"};
    assert_int_equal(q->nparams, (int)(sizeof(want) / sizeof(want[0])));
    for (int i = 0; i < q->nparams; i++)
        assert_param(q, i, want[i]);
    bh_sql_request_free(r);
}

/* Floats in ryu's pretty format (serde_json), through non-raw float8/float4 columns and through
 * non-string JSON params; texts that are not a finite float stay strings. */
static void test_float_format(void **state)
{
    nonraw(701, "-2.5", "-2.5");
    nonraw(701, "-1e-07", "-1e-7");
    nonraw(701, "-0.0001", "-0.0001");
    nonraw(701, "100", "100.0");
    nonraw(701, "12.5", "12.5");
    nonraw(701, "123456.789", "123456.789");
    nonraw(701, "0.30000000000000004", "0.30000000000000004");
    nonraw(701, "1.234e-05", "0.00001234");                /* down to 10^-5: positional */
    nonraw(701, "1.234e-06", "1.234e-6");                  /* below: exponent */
    nonraw(701, "9999999999999998", "9999999999999998.0"); /* 16 integer digits: positional */
    nonraw(701, "12345678901234567", "1.2345678901234568e16");
    nonraw(701, "1.2345678901234568e+20", "1.2345678901234568e20");
    nonraw(701, "1e+21", "1e21");
    nonraw(701, "2.2250738585072014e-308", "2.2250738585072014e-308");
    nonraw(700, "3.4028235e+38", "3.4028235e38");
    nonraw(701, "abc", "\"abc\"");
    nonraw(701, "", "\"\"");
    nonraw(701, "1.5 ", "\"1.5 \"");
    nonraw(701, "0.1000000000000000000000000000000000000001",
           "\"0.1000000000000000000000000000000000000001\""); /* too long to convert */
    /* int2/int4 that are not plain integers of at most 10 digits stay strings */
    nonraw(23, "12345678901", "\"12345678901\"");
    nonraw(23, "-", "\"-\"");
    nonraw(23, "+5", "\"+5\"");
    nonraw(21, "1.0", "\"1.0\"");

    bh_sql_request_t *r = NULL;
    char err[256];
    const char *body = "{\"query\":\"x\",\"params\":[1.5e300,-2.5,1e-7,123456789.0,1e16,0.5,"
                       "1e15,-0.001]}";
    assert_int_equal(bh_sql_parse_body(body, strlen(body), &r, err, sizeof(err)), 0);
    const char *want[] = {
        "1.5e300", "-2.5", "1e-7", "123456789.0", "1e16", "0.5", "1000000000000000.0", "-0.001"};
    assert_int_equal(r->queries[0].nparams, 8);
    for (int i = 0; i < 8; i++)
        assert_param(&r->queries[0], i, want[i]);
    bh_sql_request_free(r);
}

/* Integers beyond int64 (jansson refuses them) are passed through as their digits; outside strings
 * only: a string that holds digits is copied as it is. */
static void test_body_big_integers(void **state)
{
    bh_sql_request_t *r = parse_ok(
        "{\"query\":\"SELECT \\\"12345678901234567890\\\"\",\"params\":[12345678901234567890,"
        "-9223372036854775809,{\"a\":12345678901234567890},[99999999999999999999],"
        "\"12345678901234567890\",1000000000000000000,1.5,7]}");
    const bh_sql_query_t *q = &r->queries[0];
    assert_string_equal(q->text, "SELECT \"12345678901234567890\"");
    assert_int_equal(q->nparams, 8);
    assert_param(q, 0, "12345678901234567890");
    assert_param(q, 1, "-9223372036854775809");
    assert_param(q, 2, "{\"a\":\"12345678901234567890\"}"); /* quoted inside an object */
    assert_param(q, 3, "{\"99999999999999999999\"}");       /* same element for Postgres */
    assert_param(q, 4, "12345678901234567890");
    assert_param(q, 5, "1000000000000000000");
    assert_param(q, 6, "1.5");
    assert_param(q, 7, "7");
    bh_sql_request_free(r);
    /* a float overflow is still a syntax error */
    parse_fails("{\"query\":\"x\",\"params\":[1e400]}", "could not parse the HTTP request body: ");
    parse_fails("{\"query\":\"x\",\"params\":[12345678901234567890", /* truncated */
                "could not parse the HTTP request body: ");
}

static void test_body_shapes(void **state)
{
    bh_sql_request_t *r = parse_ok("{\"query\":\"SELECT 1\"}"); /* params optional */
    assert_int_equal(r->queries[0].nparams, 0);
    assert_non_null(r->queries[0].params);
    bh_sql_request_free(r);

    bh_sql_headers_t h;
    bh_sql_headers_init(&h);
    h.array_mode = true;
    r = parse_ok("{\"query\":\"\",\"params\":[],\"arrayMode\":false,\"extra\":{\"x\":1}}");
    assert_string_equal(r->queries[0].text, "");
    assert_int_equal(r->queries[0].array_mode, 0);
    assert_false(bh_sql_array_mode(&h, &r->queries[0]));
    bh_sql_request_free(r);
    r = parse_ok("{\"query\":\"x\",\"arrayMode\":null}");
    assert_int_equal(r->queries[0].array_mode, -1);
    assert_true(bh_sql_array_mode(&h, &r->queries[0]));
    h.array_mode = false;
    assert_false(bh_sql_array_mode(&h, &r->queries[0]));
    bh_sql_request_free(r);

    r = parse_ok("{\"queries\":[{\"query\":\"SELECT 1 AS x\",\"params\":[]},{\"query\":\"SELECT "
                 "current_setting($1) AS iso\",\"params\":[\"transaction_isolation\"],"
                 "\"arrayMode\":true}]}");
    assert_true(r->batch);
    assert_int_equal(r->nqueries, 2);
    assert_int_equal(r->queries[1].nparams, 1);
    assert_param(&r->queries[1], 0, "transaction_isolation");
    assert_int_equal(r->queries[0].array_mode, -1);
    assert_int_equal(r->queries[1].array_mode, 1);
    bh_sql_request_free(r);

    r = parse_ok("{\"queries\":[]}"); /* legal: START TRANSACTION; COMMIT */
    assert_true(r->batch);
    assert_int_equal(r->nqueries, 0);
    bh_sql_request_free(r);

    /* Single is tried first */
    r = parse_ok("{\"query\":\"a\",\"queries\":[{\"query\":\"b\"}]}");
    assert_false(r->batch);
    assert_string_equal(r->queries[0].text, "a");
    bh_sql_request_free(r);
    /* a bad single falls back to Batch */
    r = parse_ok("{\"query\":1,\"queries\":[{\"query\":\"b\"}]}");
    assert_true(r->batch);
    bh_sql_request_free(r);

    const char *shape = "could not parse the HTTP request body: data did not match any variant of "
                        "untagged enum Payload";
    parse_fails("{\"query\":1}", shape);
    parse_fails("{\"query\":\"x\",\"params\":null}", shape);
    parse_fails("{\"query\":\"x\",\"params\":{}}", shape);
    parse_fails("{\"query\":\"x\",\"params\":\"1\"}", shape);
    parse_fails("{\"query\":\"x\",\"arrayMode\":\"true\"}", shape);
    parse_fails("{\"queries\":{}}", shape);
    parse_fails("{\"queries\":[{\"query\":\"a\"},{\"params\":[]}]}", shape);
    parse_fails("{\"queries\":[1]}", shape);
    parse_fails("[{\"query\":\"x\"}]", shape);
    parse_fails("\"SELECT 1\"", shape);
    parse_fails("{}", shape);
    const char *syntax = "could not parse the HTTP request body: ";
    parse_fails("", syntax);
    parse_fails("{\"query\":\"x\"", syntax);
    parse_fails("{\"query\":\"x\"} trailing", syntax);
    parse_fails("{\"query\":\"a\\u0000b\"}", syntax); /* NUL cannot reach libpq */
    parse_fails("{\"query\":\"\xff\"}", syntax);      /* not UTF-8 */

    /* 65535 params is the protocol's limit */
    size_t cap = 16 + 65536 * 4 + 32;
    char *big = malloc(cap);
    size_t n = (size_t)snprintf(big, cap, "{\"query\":\"x\",\"params\":[");
    for (int i = 0; i < 65536; i++)
        n += (size_t)snprintf(big + n, cap - n, "%s\"\"", i ? "," : "");
    n += (size_t)snprintf(big + n, cap - n, "]}");
    char err[256];
    assert_int_equal(bh_sql_parse_body(big, n, &r, err, sizeof(err)), BH_ESQL_BODY);
    assert_string_equal(err, "could not parse the HTTP request body: too many parameters (65536, "
                             "max 65535)");
    /* drop one: accepted */
    memmove(big + n - 5, big + n - 2, 2);
    assert_int_equal(bh_sql_parse_body(big, n - 3, &r, err, sizeof(err)), 0);
    assert_int_equal(r->queries[0].nparams, 65535);
    bh_sql_request_free(r);
    free(big);
    bh_sql_request_free(NULL);
}

static void test_out_of_memory(void **state)
{
    const char *body = "{\"queries\":[{\"query\":\"SELECT $1\",\"params\":[{\"b\":1,\"a\":2},[1,{"
                       "\"x\":[1]}]]},{\"query\":\"SELECT 2\"}]}";
    /* every allocation failing in turn gives BH_ENOMEM and no leak (ASan checks) */
    int failures = 0;
    for (unsigned long nth = 1; nth < 200; nth++) {
        bh_sql_request_t *r = NULL;
        bh_alloc_fail_after(nth);
        int rc = bh_sql_parse_body(body, strlen(body), &r, NULL, 0);
        bh_alloc_fail_after(0);
        if (rc == 0) {
            bh_sql_request_free(r);
            break;
        }
        assert_int_equal(rc, BH_ENOMEM);
        failures++;
    }
    assert_true(failures > 0);
    col_t cols[] = {INT4("x")};
    const char *vals[] = {"1"};
    PGresult *res = mkres(1, cols, 1, vals);
    bh_sql_out_t o;
    bh_sql_out_init(&o, 1 << 20);
    bh_alloc_fail_after(1);
    assert_int_equal(bh_sql_encode_result(&o, res, true, true), BH_ENOMEM);
    bh_alloc_fail_after(0);
    assert_int_equal(bh_err_status(o.err), 500);
    bh_sql_out_free(&o);
    PQclear(res);
}

/* ---- connection strings (2.1) ---- */

static void test_connstr(void **state)
{
    bh_sql_connstr_t c;
    char err[128];
    const char *s =
        "postgresql://alice:s3cr%40t@ep-cool-name-123456.us-east-2.aws.neon.tech/neondb?"
        "sslmode=require&application_name=pkg%3Anpm%2F%2540neondatabase%2Fserverless%"
        "401.2.0";
    assert_int_equal(bh_sql_parse_connstr(s, strlen(s), &c, err, sizeof(err)), 0);
    assert_string_equal(c.user, "alice");
    assert_string_equal(c.password, "s3cr@t");
    assert_int_equal(c.password_len, 6);
    assert_string_equal(c.dbname, "neondb");
    assert_string_equal(c.host, "ep-cool-name-123456.us-east-2.aws.neon.tech");
    assert_int_equal(c.port, 5432);
    assert_false(c.has_port);
    assert_false(c.host_ip);
    assert_string_equal(c.application_name, "pkg:npm/%40neondatabase/serverless@1.2.0");
    bh_sql_connstr_free(&c);

    s = "postgres://bob:pw@EP-X.LocalTest.me:5433/db2";
    assert_int_equal(bh_sql_parse_connstr(s, strlen(s), &c, err, sizeof(err)), 0);
    assert_string_equal(c.host, "ep-x.localtest.me");
    assert_int_equal(c.port, 5433);
    assert_true(c.has_port);
    assert_null(c.application_name);
    bh_sql_connstr_free(&c);

    /* IP literals are accepted (unlike Neon); no password; empty password; odd bytes */
    s = "POSTGRES://u%20x@[::1]:6543/my%2Fdb/ignored?x=1#frag";
    assert_int_equal(bh_sql_parse_connstr(s, strlen(s), &c, err, sizeof(err)), 0);
    assert_string_equal(c.user, "u x");
    assert_null(c.password);
    assert_string_equal(c.host, "::1");
    assert_true(c.host_ip);
    assert_int_equal(c.port, 6543);
    assert_string_equal(c.dbname, "my/db");
    bh_sql_connstr_free(&c);
    s = "postgres://u:@127.0.0.1/d";
    assert_int_equal(bh_sql_parse_connstr(s, strlen(s), &c, err, sizeof(err)), 0);
    assert_string_equal(c.password, "");
    assert_true(c.host_ip);
    bh_sql_connstr_free(&c);
    s = "postgres://u:p@ss:w@rd@localhost:/d%zz%4"; /* last '@'; empty port; bad escapes kept */
    assert_int_equal(bh_sql_parse_connstr(s, strlen(s), &c, err, sizeof(err)), 0);
    assert_string_equal(c.password, "p@ss:w@rd");
    assert_string_equal(c.host, "localhost");
    assert_false(c.has_port);
    assert_string_equal(c.dbname, "d%zz%4");
    bh_sql_connstr_free(&c);
    s = "postgresql://u:%E6%97%A5+@h/d?application_name=a+b%21";
    assert_int_equal(bh_sql_parse_connstr(s, strlen(s), &c, err, sizeof(err)), 0);
    assert_string_equal(c.password, "日+");
    assert_string_equal(c.application_name, "a b!");
    bh_sql_connstr_free(&c);

    static const struct {
        const char *s, *err;
    } bad[] = {
        {"mysql://u:p@h/d", "incorrect scheme"},
        {"http://u:p@h/d", "incorrect scheme"},
        {"postgresx://u:p@h/d", "incorrect scheme"},
        {"no scheme at all", "invalid connection string: relative URL without a base"},
        {"postgres:d", "missing database name"},
        {"postgres://u:p@h", "missing database name"},
        {"postgres://u:p@h/", "missing database name"},
        {"postgres://u:p@h?x=/d", "missing database name"},
        {"postgres://:p@h/d", "missing username"},
        {"postgres://h/d", "missing username"},
        {"postgres://u:p@/d", "missing hostname"},
        {"postgres://u:p@:5432/d", "missing hostname"},
        {"postgres://u:p@h:70000/d", "invalid connection string: invalid port number"},
        {"postgres://u:p@h:54x/d", "invalid connection string: invalid port number"},
        {"postgres://u:p@h o/d", "invalid connection string: invalid domain character"},
        {"postgres://u:p@h%41/d", "invalid connection string: invalid domain character"},
        {"postgres://u:p@[::1/d", "invalid connection string: invalid IPv6 address"},
        {"postgres://u:p@[::g]/d", "invalid connection string: invalid IPv6 address"},
        {"postgres://u:p@[::1]x/d", "invalid connection string: invalid IPv6 address"},
        {"postgres://u:p%00@h/d", "invalid connection string: NUL byte in password"},
        {"postgres://u%00:p@h/d", "invalid connection string: NUL byte in user name"},
        {"postgres://u:p@h/d%00", "invalid connection string: NUL byte in database name"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        int rc = bh_sql_parse_connstr(bad[i].s, strlen(bad[i].s), &c, err, sizeof(err));
        if (rc != BH_ESQL_CONNSTR || strcmp(err, bad[i].err) != 0)
            fail_msg("%s: rc %d err [%s], want [%s]", bad[i].s, rc, err, bad[i].err);
        assert_null(c.mem_);
    }
}

static void connstr_ok(const char *s, bh_sql_connstr_t *c)
{
    char err[128] = "";
    int rc = bh_sql_parse_connstr(s, strlen(s), c, err, sizeof(err));
    if (rc != 0)
        fail_msg("%s: rc %d err [%s]", s, rc, err);
}

static void connstr_fails(const char *s, const char *want_err)
{
    bh_sql_connstr_t c;
    char err[128] = "";
    int rc = bh_sql_parse_connstr(s, strlen(s), &c, err, sizeof(err));
    if (rc != BH_ESQL_CONNSTR || strcmp(err, want_err) != 0)
        fail_msg("%s: rc %d err [%s], want [%s]", s, rc, err, want_err);
    assert_null(c.mem_);
    assert_null(c.user);
}

/* Ports, IPv6 and IPv4 literals, userinfo, percent-decoding, application_name, and which error
 * wins when several apply. */
static void test_connstr_edges(void **state)
{
    bh_sql_connstr_t c;
    connstr_ok("postgres://u@h:0/d", &c);
    assert_int_equal(c.port, 0);
    assert_true(c.has_port);
    bh_sql_connstr_free(&c);
    assert_null(c.mem_);
    connstr_ok("postgres://u@h:65535/d", &c);
    assert_int_equal(c.port, 65535);
    bh_sql_connstr_free(&c);
    connstr_fails("postgres://u@h:65536/d", "invalid connection string: invalid port number");
    connstr_fails("postgres://u@h:1:2/d", "invalid connection string: invalid port number");
    connstr_fails("postgres://u@h:-1/d", "invalid connection string: invalid port number");

    /* IPv6: brackets dropped, lowercased, optional (possibly empty) port */
    connstr_ok("postgres://u@[::1]/d", &c);
    assert_string_equal(c.host, "::1");
    assert_int_equal(c.port, 5432);
    assert_false(c.has_port);
    assert_true(c.host_ip);
    bh_sql_connstr_free(&c);
    connstr_ok("postgres://u@[::1]:/d", &c);
    assert_false(c.has_port);
    bh_sql_connstr_free(&c);
    connstr_ok("postgres://u@[FE80::A:1.2.3.4]:7/d", &c);
    assert_string_equal(c.host, "fe80::a:1.2.3.4");
    assert_int_equal(c.port, 7);
    assert_true(c.has_port);
    bh_sql_connstr_free(&c);
    connstr_fails("postgres://u@[]/d", "invalid connection string: invalid IPv6 address");
    /* hex digits and colons alone are not an address (found by fuzz_connstr) */
    connstr_fails("postgres://u@[0]/d", "invalid connection string: invalid IPv6 address");
    connstr_fails("postgres://u@[:::]/d", "invalid connection string: invalid IPv6 address");
    {
        /* a raw NUL in the password would cut libpq's C string short, as %00 would */
        static const char raw[] = "postgres://u:pa\0ss@h/d";
        char err[128] = "";
        assert_int_equal(bh_sql_parse_connstr(raw, sizeof(raw) - 1, &c, err, sizeof(err)),
                         BH_ESQL_CONNSTR);
        assert_null(c.mem_);
    }
    connstr_fails("postgres://u@[::1]:x/d", "invalid connection string: invalid port number");

    /* IPv4: four dot-separated groups of 1-3 digits */
    static const struct {
        const char *host;
        bool ip;
    } v4[] = {
        {"1.2.3.4", true},     {"127.0.0.1", true}, {"1.2.3", false},  {"1.2.3.4.5", false},
        {"1234.1.1.1", false}, {"1..2.3", false},   {"1.2.3.", false}, {"a.b.c.d", false},
        {"localhost", false},  {"1.2.3.4a", false},
    };
    for (size_t i = 0; i < sizeof(v4) / sizeof(v4[0]); i++) {
        char s[128];
        snprintf(s, sizeof(s), "postgres://u@%s/d", v4[i].host);
        connstr_ok(s, &c);
        if (c.host_ip != v4[i].ip)
            fail_msg("%s: host_ip %d", v4[i].host, c.host_ip);
        bh_sql_connstr_free(&c);
    }
    connstr_ok("postgres://u@a_b~c-d.E/d", &c); /* unreserved characters */
    assert_string_equal(c.host, "a_b~c-d.e");
    bh_sql_connstr_free(&c);

    /* userinfo: the first ':' splits user and password; '+' is literal outside the query */
    connstr_ok("postgres://u:p:q@h/d", &c);
    assert_string_equal(c.user, "u");
    assert_string_equal(c.password, "p:q");
    assert_int_equal(c.password_len, 3);
    bh_sql_connstr_free(&c);
    connstr_ok("postgres://%41l%69ce+%4a@h/%", &c);
    assert_string_equal(c.user, "Alice+J");
    assert_null(c.password);
    assert_string_equal(c.dbname, "%");
    bh_sql_connstr_free(&c);
    connstr_ok("postgres://u:%E6%97%A5@h/d#frag", &c);
    assert_int_equal(c.password_len, 3);
    assert_string_equal(c.dbname, "d");
    bh_sql_connstr_free(&c);
    connstr_ok("postgres://u@h/d?x", &c);
    assert_string_equal(c.dbname, "d");
    assert_null(c.application_name);
    bh_sql_connstr_free(&c);

    /* application_name: exact key, first usable occurrence, '+' is a space, up to '#' */
    static const struct {
        const char *query;
        const char *want; /* NULL: absent */
    } app[] = {
        {"?application_name=a&application_name=b", "a"},
        {"?Application_Name=x", NULL},
        {"?application_name", NULL},
        {"?application_name=", ""},
        {"?application_name=x#y&application_name=z", "x"},
        {"?x=1&&application_name=%41+b", "A b"},
        {"?application_name=%00&application_name=b", "b"}, /* a NUL cannot reach libpq */
        {"?application_namex=a", NULL},
        {"#?application_name=a", "a"}, /* quirk: the query is searched past the fragment */
    };
    for (size_t i = 0; i < sizeof(app) / sizeof(app[0]); i++) {
        char s[128];
        snprintf(s, sizeof(s), "postgres://u@h/d%s", app[i].query);
        connstr_ok(s, &c);
        if (app[i].want == NULL
                ? c.application_name != NULL
                : (c.application_name == NULL || strcmp(c.application_name, app[i].want) != 0))
            fail_msg("%s: application_name [%s]", s,
                     c.application_name ? c.application_name : "(null)");
        bh_sql_connstr_free(&c);
    }

    /* which error wins: scheme, then host and port, then decoding, then database/user/host */
    connstr_fails(":x", "invalid connection string: relative URL without a base");
    connstr_fails("postgresql:", "missing database name");
    connstr_fails("postgresql:/d", "missing database name");
    connstr_fails("mysql:/d", "incorrect scheme");
    connstr_fails("postgres://u@h o/", "invalid connection string: invalid domain character");
    connstr_fails("postgres://u@h:x/", "invalid connection string: invalid port number");
    connstr_fails("postgres://%00@h/", "invalid connection string: NUL byte in user name");
    connstr_fails("postgres://u%00:p%00@h/d%00",
                  "invalid connection string: NUL byte in user name");
    connstr_fails("postgres://u:p%00@h/d%00", "invalid connection string: NUL byte in password");
    connstr_fails("postgres://@/", "missing database name");
    connstr_fails("postgres://@/d", "missing username");
    connstr_fails("postgres://u@/d", "missing hostname");
    connstr_fails("postgres://u@[/d", "invalid connection string: invalid IPv6 address");

    /* the message is truncated to errlen; err may be NULL */
    char small[8];
    const char *s = "mysql://u@h/d";
    assert_int_equal(bh_sql_parse_connstr(s, strlen(s), &c, small, sizeof(small)), BH_ESQL_CONNSTR);
    assert_string_equal(small, "incorre");
    assert_int_equal(bh_sql_parse_connstr(s, strlen(s), &c, NULL, 0), BH_ESQL_CONNSTR);
    /* not NUL-terminated input: only n bytes are read */
    s = "postgres://u@h/dXYZ";
    assert_int_equal(bh_sql_parse_connstr(s, strlen(s) - 3, &c, NULL, 0), 0);
    assert_string_equal(c.dbname, "d");
    bh_sql_connstr_free(&c);
    /* out of memory */
    s = "postgres://u@h/d";
    bh_alloc_fail_after(1);
    assert_int_equal(bh_sql_parse_connstr(s, strlen(s), &c, NULL, 0), BH_ENOMEM);
    bh_alloc_fail_after(0);
    assert_null(c.mem_);
    assert_null(c.user);
}

/* ---- headers, BEGIN, response heads, routing ---- */

static bh_span_t sp(const char *s)
{
    return (bh_span_t){s, strlen(s)};
}

static void test_headers(void **state)
{
    bh_sql_headers_t h;
    char err[128];
    bh_sql_headers_init(&h);
    assert_int_equal(bh_sql_headers_check(&h, err, sizeof(err)), BH_ESQL_HEADER);
    assert_string_equal(err, "invalid header: neon-connection-string");
    bh_sql_header(&h, sp("NEON-CONNECTION-STRING"), sp("postgresql://a:b@h/d"));
    bh_sql_header(&h, sp("neon-connection-string"), sp("postgresql://second@h/d"));
    bh_sql_header(&h, sp("Neon-Raw-Text-Output"), sp("true"));
    bh_sql_header(&h, sp("neon-array-mode"), sp("True"));
    bh_sql_header(&h, sp("Neon-Batch-Read-Only"), sp("1"));
    bh_sql_header(&h, sp("Neon-Batch-Deferrable"), sp("true"));
    bh_sql_header(&h, sp("Neon-Pool-Opt-In"), sp("true"));
    bh_sql_header(&h, sp("X-Neon-Query-ID"), sp("q1"));
    bh_sql_header(&h, sp("Content-Type"), sp("text/plain;charset=UTF-8"));
    assert_int_equal(bh_sql_headers_check(&h, err, sizeof(err)), 0);
    assert_true(span_is(h.connstr, "postgresql://a:b@h/d")); /* first occurrence */
    assert_true(h.raw_text);
    assert_false(h.array_mode);
    assert_false(h.read_only);
    assert_true(h.deferrable);
    assert_true(span_is(h.query_id, "q1"));
    assert_int_equal(h.isolation, BH_SQL_ISO_DEFAULT);

    static const struct {
        const char *v;
        bh_sql_isolation_t iso;
    } iso[] = {
        {"Serializable", BH_SQL_ISO_SERIALIZABLE},
        {"ReadUncommitted", BH_SQL_ISO_READ_UNCOMMITTED},
        {"ReadCommitted", BH_SQL_ISO_READ_COMMITTED},
        {"RepeatableRead", BH_SQL_ISO_REPEATABLE_READ},
        {"serializable", BH_SQL_ISO_INVALID},
        {"READ COMMITTED", BH_SQL_ISO_INVALID},
        {"", BH_SQL_ISO_INVALID},
    };
    for (size_t i = 0; i < sizeof(iso) / sizeof(iso[0]); i++) {
        bh_sql_headers_t h2;
        bh_sql_headers_init(&h2);
        bh_sql_header(&h2, sp("neon-connection-string"), sp("postgres://u@h/d"));
        bh_sql_header(&h2, sp("Neon-Batch-Isolation-Level"), sp(iso[i].v));
        assert_int_equal(h2.isolation, iso[i].iso);
        int rc = bh_sql_headers_check(&h2, err, sizeof(err));
        if (iso[i].iso == BH_SQL_ISO_INVALID) {
            assert_int_equal(rc, BH_ESQL_ISOLATION);
            assert_string_equal(err, "invalid isolation level");
        } else {
            assert_int_equal(rc, 0);
        }
    }
    /* non-ASCII or empty connection string */
    bh_sql_headers_init(&h);
    bh_sql_header(&h, sp("neon-connection-string"), sp("postgres://ü@h/d"));
    assert_int_equal(bh_sql_headers_check(&h, err, sizeof(err)), BH_ESQL_HEADER);
    bh_sql_headers_init(&h);
    bh_sql_header(&h, sp("neon-connection-string"), sp(""));
    assert_int_equal(bh_sql_headers_check(&h, err, sizeof(err)), BH_ESQL_HEADER);

    /* bearer tokens */
    bh_span_t tok;
    assert_false(bh_sql_bearer(&h, &tok));
    bh_sql_header(&h, sp("authorization"), sp("Basic abc"));
    assert_false(bh_sql_bearer(&h, &tok));
    bh_sql_headers_init(&h);
    bh_sql_header(&h, sp("Authorization"), sp("Bearer tok123"));
    assert_true(bh_sql_bearer(&h, &tok));
    assert_true(span_is(tok, "tok123"));
    assert_true(bh_sql_token_eq(tok, "tok123"));
    assert_false(bh_sql_token_eq(tok, "tok124"));
    assert_false(bh_sql_token_eq(tok, "tok12"));
    assert_false(bh_sql_token_eq(tok, "tok1234"));
    assert_false(bh_sql_token_eq(tok, ""));
    bh_sql_headers_init(&h);
    bh_sql_header(&h, sp("Authorization"), sp("bearer tok123"));
    assert_false(bh_sql_bearer(&h, &tok));
}

static void test_begin_statement(void **state)
{
    static const struct {
        const char *iso;
        bool ro, def;
        const char *want;
    } cases[] = {
        {NULL, false, false, "START TRANSACTION"},
        {"Serializable", false, false, "START TRANSACTION ISOLATION LEVEL SERIALIZABLE"},
        {"ReadUncommitted", true, false,
         "START TRANSACTION ISOLATION LEVEL READ UNCOMMITTED, READ ONLY"},
        {"ReadCommitted", false, true,
         "START TRANSACTION ISOLATION LEVEL READ COMMITTED, DEFERRABLE"},
        {"RepeatableRead", true, true,
         "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY, DEFERRABLE"},
        {NULL, true, false, "START TRANSACTION READ ONLY"},
        {NULL, true, true, "START TRANSACTION READ ONLY, DEFERRABLE"},
        {NULL, false, true, "START TRANSACTION DEFERRABLE"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        bh_sql_headers_t h;
        bh_sql_headers_init(&h);
        if (cases[i].iso)
            bh_sql_header(&h, sp("neon-batch-isolation-level"), sp(cases[i].iso));
        bh_sql_header(&h, sp("neon-batch-read-only"), sp(cases[i].ro ? "true" : "false"));
        bh_sql_header(&h, sp("neon-batch-deferrable"), sp(cases[i].def ? "true" : "false"));
        char buf[BH_SQL_BEGIN_MAX];
        size_t n = bh_sql_begin_statement(&h, buf);
        assert_string_equal(buf, cases[i].want);
        assert_int_equal(n, strlen(cases[i].want));
    }
}

static void test_response_heads(void **state)
{
    char id[BH_SQL_REQUEST_ID_LEN + 1];
    uint8_t rnd[16];
    memset(rnd, 0xff, sizeof(rnd));
    bh_sql_request_id(rnd, id);
    assert_string_equal(id, "ffffffff-ffff-4fff-bfff-ffffffffffff");
    memset(rnd, 0, sizeof(rnd));
    bh_sql_request_id(rnd, id);
    assert_string_equal(id, "00000000-0000-4000-8000-000000000000");

    char buf[1024];
    bh_wbuf_t w = {buf, 0, sizeof(buf) - 1, false};
    bh_sql_write_headers(&w, BH_SQL_REPLY_OK, NULL, id);
    buf[w.n] = '\0';
    assert_string_equal(buf, "content-type: application/json\r\n"
                             "access-control-allow-origin: *\r\n"
                             "neon-request-id: 00000000-0000-4000-8000-000000000000\r\n");

    bh_sql_headers_t h;
    bh_sql_headers_init(&h);
    bh_sql_header(&h, sp("Neon-Batch-Isolation-Level"), sp("RepeatableRead"));
    bh_sql_header(&h, sp("Neon-Batch-Read-Only"), sp("true"));
    bh_sql_header(&h, sp("Neon-Batch-Deferrable"), sp("false"));
    w = (bh_wbuf_t){buf, 0, sizeof(buf) - 1, false};
    bh_sql_write_headers(&w, BH_SQL_REPLY_BATCH_OK, &h, NULL);
    buf[w.n] = '\0';
    assert_string_equal(buf, "content-type: application/json\r\n"
                             "access-control-allow-origin: *\r\n"
                             "neon-batch-read-only: true\r\n"
                             "neon-batch-isolation-level: RepeatableRead\r\n");
    /* the same request failing: no echo */
    w = (bh_wbuf_t){buf, 0, sizeof(buf) - 1, false};
    bh_sql_write_headers(&w, BH_SQL_REPLY_OK, &h, NULL);
    assert_int_equal(w.n, strlen("content-type: application/json\r\n"
                                 "access-control-allow-origin: *\r\n"));

    w = (bh_wbuf_t){buf, 0, sizeof(buf) - 1, false};
    bh_sql_write_headers(&w, BH_SQL_REPLY_PREFLIGHT, NULL, id);
    buf[w.n] = '\0';
    assert_string_equal(buf, "allow: OPTIONS, POST\r\n"
                             "access-control-allow-origin: *\r\n"
                             "access-control-allow-headers: Authorization, Neon-Connection-String, "
                             "Neon-Raw-Text-Output, Neon-Array-Mode, Neon-Pool-Opt-In, "
                             "Neon-Batch-Read-Only, Neon-Batch-Isolation-Level, "
                             "Neon-Batch-Deferrable\r\n"
                             "access-control-max-age: 86400\r\n"
                             "neon-request-id: 00000000-0000-4000-8000-000000000000\r\n");
    /* too small a buffer is reported */
    w = (bh_wbuf_t){buf, 0, 10, false};
    bh_sql_write_headers(&w, BH_SQL_REPLY_OK, NULL, NULL);
    assert_true(w.overflow);
}

static void test_route(void **state)
{
    assert_int_equal(bh_sql_route(sp("POST"), sp("/sql")), BH_SQL_ROUTE_QUERY);
    assert_int_equal(bh_sql_route(sp("POST"), sp("/sql?x=1")), BH_SQL_ROUTE_QUERY);
    assert_int_equal(bh_sql_route(sp("OPTIONS"), sp("/sql")), BH_SQL_ROUTE_PREFLIGHT);
    assert_int_equal(bh_sql_route(sp("GET"), sp("/sql")), BH_SQL_ROUTE_UNSUPPORTED);
    assert_int_equal(bh_sql_route(sp("post"), sp("/sql")), BH_SQL_ROUTE_UNSUPPORTED);
    assert_int_equal(bh_sql_route(sp("POST"), sp("/sql/")), BH_SQL_ROUTE_UNSUPPORTED);
    assert_int_equal(bh_sql_route(sp("POST"), sp("/SQL")), BH_SQL_ROUTE_UNSUPPORTED);
    assert_int_equal(bh_sql_route(sp("POST"), sp("/")), BH_SQL_ROUTE_UNSUPPORTED);
}

/* Smaller edges of the heads: absent values, control bytes, routing suffixes, an invalid isolation
 * level in BEGIN, extreme field metadata, a non-UTF-8 error message. */
static void test_heads_edges(void **state)
{
    bh_sql_headers_t h;
    char err[128];
    bh_sql_headers_init(&h);
    bh_sql_header(&h, sp("neon-connection-string"), (bh_span_t){NULL, 0});
    bh_sql_header(&h, sp("neon-raw-text-output"), (bh_span_t){NULL, 0});
    assert_non_null(h.connstr.p);
    assert_int_equal(h.connstr.n, 0);
    assert_false(h.raw_text);
    assert_int_equal(bh_sql_headers_check(&h, err, sizeof(err)), BH_ESQL_HEADER);
    bh_sql_headers_init(&h);
    bh_sql_header(&h, sp("neon-connection-string"), sp("postgres://u@h/d\t"));
    assert_int_equal(bh_sql_headers_check(&h, err, sizeof(err)), BH_ESQL_HEADER);
    bh_sql_headers_init(&h);
    bh_sql_header(&h, sp("neon-connection-string"), sp("postgres://u@h/d\x7f"));
    assert_int_equal(bh_sql_headers_check(&h, err, sizeof(err)), BH_ESQL_HEADER);
    bh_sql_headers_init(&h);
    bh_sql_header(&h, sp("neon-connection-string"), sp("postgres://u@h/d"));
    bh_sql_header(&h, sp("neon-batch-isolation-level"), sp("Serializable"));
    bh_sql_header(&h, sp("neon-batch-isolation-level"), sp("bogus")); /* first wins */
    bh_sql_header(&h, sp("neon"), sp("true"));
    assert_int_equal(h.isolation, BH_SQL_ISO_SERIALIZABLE);
    assert_int_equal(bh_sql_headers_check(&h, NULL, 0), 0);
    bh_span_t tok;
    bh_sql_header(&h, sp("authorization"), sp("Bearer "));
    assert_true(bh_sql_bearer(&h, &tok));
    assert_int_equal(tok.n, 0);
    assert_true(bh_sql_token_eq(tok, ""));

    bh_sql_headers_init(&h);
    bh_sql_header(&h, sp("neon-batch-isolation-level"), sp("bogus"));
    bh_sql_header(&h, sp("neon-batch-read-only"), sp("true"));
    char buf[BH_SQL_BEGIN_MAX];
    assert_int_equal(bh_sql_begin_statement(&h, buf), strlen("START TRANSACTION READ ONLY"));
    assert_string_equal(buf, "START TRANSACTION READ ONLY");
    char hb[256];
    bh_wbuf_t w = {hb, 0, sizeof(hb) - 1, false};
    bh_sql_write_headers(&w, BH_SQL_REPLY_BATCH_OK, &h, NULL); /* no isolation echo */
    hb[w.n] = '\0';
    assert_string_equal(hb, "content-type: application/json\r\n"
                            "access-control-allow-origin: *\r\n"
                            "neon-batch-read-only: true\r\n");

    assert_int_equal(bh_sql_route(sp("POST"), sp("/sql#x")), BH_SQL_ROUTE_QUERY);
    assert_int_equal(bh_sql_route(sp("POST"), sp("/sql?")), BH_SQL_ROUTE_QUERY);
    assert_int_equal(bh_sql_route(sp("OPTIONS"), sp("/sql?a=b")), BH_SQL_ROUTE_PREFLIGHT);
    assert_int_equal(bh_sql_route(sp("POST"), sp("")), BH_SQL_ROUTE_UNSUPPORTED);
    assert_int_equal(bh_sql_route((bh_span_t){NULL, 0}, sp("/sql")), BH_SQL_ROUTE_UNSUPPORTED);

    col_t cols[] = {{"m", 4294967295u, 4294967295u, 32767, -1, 2147483647}};
    PGresult *r = mkres(1, cols, 0, NULL);
    check_result(r, true, true, "SELECT 0",
                 "{\"fields\":[{\"name\":\"m\",\"dataTypeID\":4294967295,\"tableID\":4294967295,"
                 "\"columnID\":32767,\"dataTypeSize\":-1,\"dataTypeModifier\":2147483647,"
                 "\"format\":\"text\"}],\"rows\":[],\"command\":\"SELECT\",\"rowCount\":0,"
                 "\"rowAsArray\":true}");
    PQclear(r);

    bh_sql_out_t o;
    bh_sql_out_init(&o, 1 << 20);
    assert_int_equal(bh_sql_encode_local_error(&o, "bad \xff byte"), 0);
    assert_non_null(strstr(body_str(&o), "{\"message\":\"could not parse postgres response\","
                                         "\"code\":\"\","));
    assert_int_equal(bh_sql_encode_conn_error(&o, ""), 0);
    assert_non_null(strstr(body_str(&o), "{\"message\":\"could not connect to the database\","));
    bh_sql_out_free(&o);

    bh_sql_conn_error_t ce;
    assert_true(bh_sql_conn_error_parse("x failed: FATAL:  28000: no entry\n\tcontinued\n"
                                        "LOCATION:  routine_only\nLOCATION:  r, file.c\n",
                                        &ce));
    assert_true(span_is(ce.routine, "r") && span_is(ce.file, "file.c") && span_is(ce.line, NULL));
    assert_true(bh_sql_conn_error_parse("x failed: FATAL:  28000: m\nother line\nHINT:  h\n", &ce));
    assert_true(span_is(ce.hint, NULL)); /* an unknown line ends the scan */
    assert_string_equal(bh_strerror(-999999), "unknown error");
    assert_int_equal(bh_err_status(-999999), 502); /* outside the table: the upstream's doing */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_example_select1),
        cmocka_unit_test(test_example_no_rows),
        cmocka_unit_test(test_example_table_column),
        cmocka_unit_test(test_example_params_and_null),
        cmocka_unit_test(test_example_batch),
        cmocka_unit_test(test_command_tags),
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_nonraw),
        cmocka_unit_test(test_incremental_rows),
        cmocka_unit_test(test_bound_507),
        cmocka_unit_test(test_pg_error),
        cmocka_unit_test(test_pg_error_no_fields),
        cmocka_unit_test(test_local_errors),
        cmocka_unit_test(test_conn_error),
        cmocka_unit_test(test_body_params),
        cmocka_unit_test(test_float_format),
        cmocka_unit_test(test_body_big_integers),
        cmocka_unit_test(test_body_shapes),
        cmocka_unit_test(test_out_of_memory),
        cmocka_unit_test(test_connstr),
        cmocka_unit_test(test_connstr_edges),
        cmocka_unit_test(test_headers),
        cmocka_unit_test(test_begin_statement),
        cmocka_unit_test(test_response_heads),
        cmocka_unit_test(test_route),
        cmocka_unit_test(test_heads_edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
