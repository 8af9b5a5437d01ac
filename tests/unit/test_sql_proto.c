/* The Neon SQL-over-HTTP protocol, pure half (proxy/bh_sql_proto.c): every example response of
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
        {"\xc0\x80", 2, BH_SQL_EBAD_UTF8},         /* overlong */
        {"\xed\xa0\x80", 3, BH_SQL_EBAD_UTF8},     /* surrogate */
        {"\xe6\x97", 2, BH_SQL_EBAD_UTF8},         /* truncated */
        {"\xf4\x90\x80\x80", 4, BH_SQL_EBAD_UTF8}, /* above U+10FFFF */
        {"\xff", 1, BH_SQL_EBAD_UTF8},
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
            assert_int_equal(bh_sql_status(bad[i].rc), 500);
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
    assert_int_equal(bh_sql_result_rows(&bad, none), BH_SQL_ESTATE);
    assert_int_equal(bh_sql_result_end(&bad, "SELECT 0"), BH_SQL_ESTATE);
    bh_sql_out_reset(&bad);
    assert_int_equal(bh_sql_encode_result(&bad, none, true, true), 0);
    assert_int_equal(bh_sql_result_begin(&bad, none, true, true), BH_SQL_ESTATE); /* not a batch */
    bh_sql_out_reset(&bad);
    assert_int_equal(bh_sql_batch_end(&bad), BH_SQL_ESTATE);
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
    assert_int_equal(bh_sql_encode_result(&o, r, true, true), BH_SQL_ETOO_LARGE);
    assert_true(o.n <= need - 1);
    assert_int_equal(bh_sql_status(BH_SQL_ETOO_LARGE), 507);
    /* sticky across calls, and the bound is cumulative across a batch */
    assert_int_equal(bh_sql_batch_end(&o), BH_SQL_ETOO_LARGE);
    bh_sql_out_free(&o);
    bh_sql_out_init(&o, 2 * need);
    assert_int_equal(bh_sql_batch_begin(&o), 0);
    assert_int_equal(bh_sql_encode_result(&o, r, true, true), 0);
    assert_int_equal(bh_sql_encode_result(&o, r, true, true), BH_SQL_ETOO_LARGE);
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
    assert_int_equal(bh_sql_result_rows(&o, big), BH_SQL_ETOO_LARGE);
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
