/* The session-state scanner (proxy/sql/bh_sql_scan.h): texts that must count as leaving state,
 * many of them trying to hide a SET or a nextval from a scanner that searches substrings or lexes
 * carelessly; texts that must not count; and reads that stay within the given length. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "bh_sql_scan.h"

/* The scanner on a copy of exactly len bytes at the end of its own allocation, so that ASan
 * reports any read past len. */
static bool leaves(const char *text, size_t len)
{
    char *buf = malloc(len ? len : 1);
    assert_non_null(buf);
    memcpy(buf, text, len);
    bool r = bh_sql_leaves_state(buf, len);
    free(buf);
    return r;
}

static void check_all(const char *const *texts, size_t count, bool want)
{
    int failures = 0;
    for (size_t k = 0; k < count; k++) {
        if (leaves(texts[k], strlen(texts[k])) != want) {
            print_error("expected %s: [%s]\n", want ? "leaves state" : "plain", texts[k]);
            failures++;
        }
    }
    assert_int_equal(failures, 0);
}

#define CHECK_ALL(texts, want) check_all(texts, sizeof(texts) / sizeof(texts[0]), want)

/* ---- statements that are not data statements ---- */

static const char *const not_data[] = {
    "SET search_path = x",
    "set search_path = x",
    "sEt LOCAL x = 1",
    "RESET ALL",
    "PREPARE p AS SELECT 1",
    "DEALLOCATE ALL",
    "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    "LISTEN ch",
    "CREATE TEMP TABLE t (a int)",
    "DO $$ BEGIN PERFORM 1; END $$",
    "CALL p()",
    "BEGIN",
    "DISCARD ALL",
    "EXPLAIN SELECT 1",
    "SHOW search_path",
    "\"SELECT\" 1", /* a quoted word is a name, never a keyword */
    "(SET x = 1)",  /* a syntax error, but unclassifiable: fail safe */
    "( ;",          /* same */
    "42",           /* no keyword at all */
    "SELECTX 1",    /* whole words only */
    "SELECT 1; SET search_path = x",
    "select 1; select 2; Set x = 1",
    "SELECT 1;;; DISCARD ALL",
    "  ;  SET x = 1",
    "/* c */ SET x = 1",
    "/* /* nested */ still comment */ SET x = 1",
    "-- c\nSET x = 1",
    "SELECT 1; -- c\rSET x = 1", /* \r ends a line comment too */
    "SELECT 1 /* c */; /**/SET x = 1",
    "SELECT 1 +--c\n; SET x = 1", /* a comment start inside an operator */
    "SELECT 'a;b'; SET x = 1",
    "SELECT 'it''s'; SET x = 1",
    "SELECT \"a'b\"; SET x = 1",            /* a quote inside a quoted identifier */
    "SELECT \"a;\"\"b\" FROM t; SET x = 1", /* ; and "" inside a quoted identifier */
    "SELECT $$ a $$; SET x = 1",
    "SELECT $a$ $$ ; $a$; SET x = 1",      /* $$ does not close $a$ */
    "SELECT $a$ $ab$ $a$; SET x = 1",      /* nor does $ab$ */
    "SELECT a$$ FROM t; SET x = 1; -- $$", /* a$$ is one identifier, no quote opens */
    "SELECT $1 ; SET x = 1 -- $$",         /* $1 is a parameter */
    "SELECT $1, $2; SET x = 1",
    "SELECT E'\\\\'; SET x = 1",            /* E'\\' ends at its second quote */
    "SELECT E'\\''; SET x = 1; --'",        /* \' then the closing quote */
    "SELECT e'a' \n '\\''; SET x = 1; --'", /* a continuation stays an E string */
    /* Nested: the first star-slash closes only the inner comment. */
    "SELECT 1 /* /* */ ; SELECT '*/ ; SET x = 1; --'",
    "SELECT 'a' -- c\n 'b'; SET x = 1",
};

static void test_not_data_statements(void **state)
{
    CHECK_ALL(not_data, true);
}

/* ---- data statements that leave state ---- */

static const char *const data_with_state[] = {
    "SELECT nextval('s')",
    "SELECT NEXTVAL('s')",
    "select pg_catalog.nextval('s')",
    "SELECT public.nextval('s')",
    "SELECT \"nextval\"('s')",
    "SELECT nextval /* a comment */ ('s')",
    "SELECT pg_catalog . \"nextval\" ('s')",
    "INSERT INTO t VALUES (nextval('s'))",
    "UPDATE t SET id = nextval('s')",
    "SELECT currval('s')",
    "SELECT setval('s', 1)",
    "SELECT lastval()",
    "SELECT set_config('search_path', 'x', false)",
    "SELECT pg_catalog.set_config('search_path', 'x', false)",
    "SELECT \"set_config\"('a', 'b', false)",
    "SELECT \"SET_CONFIG\"('a', 'b', false)", /* another name to Postgres; matching it is safe */
    "SELECT U&\"\\0073et_config\"('a', 'b', false)", /* unescapes to set_config */
    "VALUES (set_config('a', 'b', false))",
    "WITH x AS (SELECT set_config('a', 'b', false)) SELECT * FROM x",
    "SELECT pg_advisory_lock(1)",
    "SELECT pg_advisory_lock_shared(1)",
    "select PG_TRY_ADVISORY_LOCK(1)",
    "SELECT pg_try_advisory_lock_shared(1, 2)",
    "SELECT pg_advisory_unlock_all()",
    "UPDATE pg_settings SET setting = 'x' WHERE name = 'search_path'",
    "SELECT * INTO t2 FROM t",
    "SELECT 1 AS a INTO TEMP t2",
    "sElEcT 1 InTo t2",
    "WITH a AS (SELECT 1) SELECT * INTO t2 FROM a",
    "(SELECT 1 INTO t2)",
    "TABLE t INTO t2",
    "SELECT 1; SELECT nextval('s')",
    "SELECT 'x'; SELECT $$y$$, setval('s', 1)",
};

static void test_data_statements_with_state(void **state)
{
    CHECK_ALL(data_with_state, true);
}

/* ---- texts that cannot be read for sure ---- */

static const char *const unreadable[] = {
    "SELECT 'x",
    "SELECT 'x''",
    "SELECT E'x\\'",
    "SELECT E'x\\",
    "SELECT \"x",
    "SELECT $$ x",
    "SELECT $a$ x $A$", /* tags are case-sensitive */
    "SELECT 1 /* x",
    "SELECT 1 /* /* x */",
    "SELECT U&\"x",
    "SELECT B'01",
    /* Ends elsewhere when standard_conforming_strings is off. */
    "SELECT 'a\\'; SET x = 1; --'",
    "SELECT 'a\\''; SET x = 1; --'",
    "SELECT N'a\\'; SET x = 1; --'",
    /* B'1' then '\' FROM t: the same. */
    "SELECT B'1''\\' FROM t",
    /* \v before the newline: no continuation, so '\'... is a plain string. */
    "SELECT E'a'\v\n'\\'; SET x = 1; --'",
};

static void test_unreadable(void **state)
{
    CHECK_ALL(unreadable, true);
}

/* ---- plain texts ---- */

static const char *const plain[] = {
    "",
    "   \n\t",
    ";",
    " ; ;; ",
    "-- only a comment",
    "/* c */ ; /* d /* e */ */",
    "SELECT 1",
    "select 1;",
    "  \n\t select 1 ;; select 2 ; ",
    "SELECT 'SET x'",
    "SELECT 'x; SET x = 1'",
    "SELECT 'nextval(''s'')'",
    "SELECT $$ DO $$",
    "SELECT $$;$$, $tag$ ; SET x = 1; $tag$",
    "SELECT $a$ x $b$; SET x = 1; $b$ $a$",
    "SELECT $a$ x $A$; SET x = 1; -- $a$", /* $A$ does not close $a$ */
    "SELECT $1$$ ; SET x = 1 $$",          /* $1 then a dollar quote */
    "SELECT $1::int, $$;$$, $2",
    "SELECT 1 -- ; SET x = 1",
    "SELECT 1 -- nextval('s')",
    "SELECT 1 /* ; SET x = 1 */",
    "SELECT 1 /* /* nested */ ; SET x = 1 */",
    "SELECT E'\\'; SET x = 1; --'",
    "SELECT e'it\\'s', E'a''b'",
    "SELECT 'C:\\dir'", /* the same literal with or without backslash escapes */
    "SELECT 'a'\n'b'",
    "SELECT B'01', X'ff', N'x', U&'d\\0061t'",
    "SELECT B'1''; SET x = 1; --'", /* B'1' ends at its second quote, then a string */
    /* A continuation is an E string too, also after a comment. */
    "SELECT E'a'\n'\\'; SET x = 1; --'",
    "SELECT E'a' -- c\n\t'\\'; SET x = 1; --'",
    "SELECT \"a;b\", \"it's\", \"a\"\"b\" FROM t",
    "SELECT \"INTO\" FROM t", /* a quoted name is not the keyword */
    "SELECT \"set_config_x\"()",
    "SELECT setting FROM t",
    "SELECT nextval_x(), my_nextval(1), nextvalue, set_configs FROM t",
    "SELECT pg_advisory_xact_lock(1), pg_try_advisory_xact_lock_shared(2)",
    "SELECT current_setting('search_path')",
    "UPDATE t SET x = 1 WHERE id = $1",
    "update t set setting = 'SET' where id = $1",
    "INSERT INTO t (a) VALUES ($1)",
    "INSERT INTO t SELECT * FROM u",
    "DELETE FROM t WHERE id = 1 RETURNING *",
    "WITH a AS (SELECT 1) SELECT * FROM a",
    "WITH d AS (DELETE FROM t RETURNING *) SELECT count(*) FROM d",
    "(SELECT 1) UNION (SELECT 2)",
    "((SELECT 1))",
    "VALUES (1), (2)",
    "TABLE t",
    "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v",
    "SELECT ae'x', abc$def FROM t",
    "SELECT 1 +-2, 3 */ 4",
};

static void test_plain(void **state)
{
    CHECK_ALL(plain, false);
}

/* ---- lengths ---- */

/* Only len bytes count: what follows them is not part of the text. */
static void test_length_bounds(void **state)
{
    const char *t = "SELECT 1; SET x = 1";
    assert_false(bh_sql_leaves_state(t, 8));
    assert_true(bh_sql_leaves_state(t, strlen(t)));
    assert_false(bh_sql_leaves_state(NULL, 0));
    assert_false(bh_sql_leaves_state("SET x", 0));
    /* A literal closed just past len is unterminated within it. */
    assert_true(bh_sql_leaves_state("SELECT 'x'", 9));
    assert_true(bh_sql_leaves_state("SELECT $$x$$", 11));
    assert_true(bh_sql_leaves_state("SELECT 1 /* */", 13));
}

/* libpq stops at a NUL, so the server would read another text. */
static void test_nul(void **state)
{
    static const char t[] = "SELECT 1 /*\0*/";
    assert_true(leaves(t, sizeof(t) - 1));
    assert_true(leaves("\0", 1));
}

/* Every prefix of every case, each in an allocation of exactly its length: under ASan, a read
 * past len fails here. An unterminated prefix must leave state (fail safe). */
static void prefixes(const char *const *texts, size_t count)
{
    for (size_t k = 0; k < count; k++) {
        size_t n = strlen(texts[k]);
        for (size_t len = 0; len <= n; len++)
            (void)leaves(texts[k], len);
    }
}

static void test_prefixes_stay_in_bounds(void **state)
{
    prefixes(not_data, sizeof(not_data) / sizeof(not_data[0]));
    prefixes(data_with_state, sizeof(data_with_state) / sizeof(data_with_state[0]));
    prefixes(unreadable, sizeof(unreadable) / sizeof(unreadable[0]));
    prefixes(plain, sizeof(plain) / sizeof(plain[0]));
    assert_true(leaves("SELECT $tag$ x $ta", 18));
    assert_true(leaves("SELECT E'\\", 10));
    assert_false(leaves("SELECT 'a'\n  --", 15)); /* no quote to continue with */
}

/* A long dollar tag against a megabyte of near misses: not found, then found at the end. */
static void test_long_tag(void **state)
{
    size_t tag = 4096, body = 1 << 20, n = 2 * tag + body + 16;
    char *t = malloc(n);
    assert_non_null(t);
    size_t i = 0;
    memcpy(t + i, "SELECT ", 7);
    i += 7;
    t[i++] = '$';
    memset(t + i, 'a', tag - 2);
    i += tag - 2;
    t[i++] = '$';
    for (size_t k = 0; k < body; k++)
        t[i++] = k % 64 == 0 ? '$' : 'a';
    assert_true(bh_sql_leaves_state(t, i)); /* unterminated */
    memcpy(t + i, t + 7, tag);
    i += tag;
    assert_false(bh_sql_leaves_state(t, i));
    free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_not_data_statements),
        cmocka_unit_test(test_data_statements_with_state),
        cmocka_unit_test(test_unreadable),
        cmocka_unit_test(test_plain),
        cmocka_unit_test(test_length_bounds),
        cmocka_unit_test(test_nul),
        cmocka_unit_test(test_prefixes_stay_in_bounds),
        cmocka_unit_test(test_long_tag),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
