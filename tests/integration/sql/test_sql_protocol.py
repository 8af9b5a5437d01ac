"""POST /sql success paths, byte for byte (spec ../shared/protocol/neon-sql-over-http.md, sections 1-5, 7.6,
7.9, 8, 10): every example response of the spec, parameters, raw and non-raw values, array/object mode,
escaping, command/rowCount, batches with their options and echo headers, CORS, request ids.

Expected bodies are either the spec's literal bytes or, for value and metadata checks beyond its
examples, built by the libpq oracle (sqlfix.Oracle): the same statement through PQexecParams against the
same server, serialised by the spec's rules. The only substitutions in spec literals are values that
depend on the server instance and are marked as such (a table OID).
"""
import json
import re

import pytest

from sqlfix import (ALICE, DBNAME, Oracle, RawClient, build_request, describe, encode_body,
                    neon_headers, ok_json, rows_of, rows_segment, run_bulkhead, sql_config, to_yaml,
                    unique)

SELECT1 = (b'{"fields":[{"name":"x","dataTypeID":23,"tableID":0,"columnID":0,"dataTypeSize":4,'
           b'"dataTypeModifier":-1,"format":"text"}],"rows":[["1"]],"command":"SELECT","rowCount":1,'
           b'"rowAsArray":true}')
SPEC_CONN = "postgresql://alice:s3cr%40t@ep-test-123.example.com/neondb"
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def assert_ok(resp, body):
    assert resp is not None and resp.status == 200, describe(resp)
    assert resp.body == body, "\nexpected %r\n     got %r" % (body, resp.body)


def test_config_with_databases_and_sql_route_is_accepted(pg, tmp_path):
    conf = sql_config(pg)
    conf.update({"listeners": [{"name": "main", "address": "127.0.0.1:1"}]})
    path = tmp_path / "sql.yaml"
    path.write_text(to_yaml(conf) + "\n")
    p = run_bulkhead("--check", str(path))
    assert p.returncode == 0, "--check rejected the SQL config:\n%s\n%s\n%s" % (path.read_text(), p.stdout,
                                                                            p.stderr)


# ----------------------------------------------------------------------------------------------
# the spec's examples, byte for byte

def test_spec_5_1_select_1_exact_186_bytes(sql):
    r = sql.query("SELECT 1 AS x")
    assert_ok(r, SELECT1)
    assert len(r.body) == 186
    assert r.header("Content-Type").split(";")[0].strip() == "application/json"
    assert r.header("Access-Control-Allow-Origin") == "*"


def test_spec_8_1_driver_request_verbatim(sql):
    """The captured driver request of section 8.1, byte for byte (header order and case, text/plain,
    application_name in the connection string), against the spec's own database name and password."""
    body = b'{"query":"SELECT 1 AS x","params":[]}'
    assert len(body) == 37
    req = ("POST /sql HTTP/1.1\r\n"
           "host: 127.0.0.1:%d\r\n"
           "connection: keep-alive\r\n"
           "Neon-Connection-String: postgresql://alice:s3cr%%40t@ep-test-123.example.com/neondb?application_name=pkg%%3Anpm%%2F%%2540neondatabase%%2Fserverless%%401.2.0\r\n"
           "Neon-Raw-Text-Output: true\r\n"
           "Neon-Array-Mode: true\r\n"
           "content-type: text/plain;charset=UTF-8\r\n"
           "accept: */*\r\n"
           "accept-language: *\r\n"
           "sec-fetch-mode: cors\r\n"
           "user-agent: node\r\n"
           "accept-encoding: gzip, deflate\r\n"
           "content-length: 37\r\n\r\n" % sql.port).encode() + body
    with RawClient(sql.port) as c:
        c.send(req)
        r = c.read_response()
        assert_ok(r, SELECT1)
        assert r.header("Content-Encoding") is None, r  # spec 8.1: never compressed
        # keep-alive: the same connection serves the next request (undici reuses it)
        c.send(req)
        assert_ok(c.read_response(), SELECT1)


def test_spec_5_1_ddl_and_dml_without_rows(sql):
    t = unique("t51")
    assert_ok(sql.query("CREATE TABLE %s (id int, v text)" % t),
              b'{"fields":[],"rows":[],"command":"CREATE","rowCount":null,"rowAsArray":true}')
    assert_ok(sql.query("INSERT INTO %s VALUES (1, 'a'), (2, 'b')" % t),
              b'{"fields":[],"rows":[],"command":"INSERT","rowCount":2,"rowAsArray":true}')


def test_spec_5_1_table_column_carries_table_oid_and_attnum(sql, pg):
    t = unique("t51r")
    assert ok_json(sql.query("CREATE TABLE %s (id int, v text)" % t))
    assert ok_json(sql.query("INSERT INTO %s VALUES (1, 'a'), (2, 'b')" % t))
    oid = pg.app_sql("SELECT %s::regclass::oid", (t,))[0][0]
    # the spec's example with its table OID (16397, instance-specific) replaced by this table's
    expected = (b'{"fields":[{"name":"id","dataTypeID":23,"tableID":16397,"columnID":1,"dataTypeSize":4,'
                b'"dataTypeModifier":-1,"format":"text"}],"rows":[["1"],["2"]],"command":"UPDATE",'
                b'"rowCount":2,"rowAsArray":true}').replace(b"16397", str(oid).encode())
    assert_ok(sql.query("UPDATE %s SET v = 'x' RETURNING id" % t), expected)


def test_spec_5_2_non_raw_without_headers(sql):
    r = sql.post(b'{"query":"SELECT 1 AS x"}', raw=None, array=None)
    assert_ok(r, b'{"fields":[{"name":"x","dataTypeID":23,"tableID":0,"columnID":0,"dataTypeSize":4,'
                 b'"dataTypeModifier":-1,"format":"text"}],"rows":[{"x":1}],"command":"SELECT","rowCount":1,'
                 b'"rowAsArray":false}')


PARAMS_FIELDS = (b'{"fields":[{"name":"n","dataTypeID":23,"tableID":0,"columnID":0,"dataTypeSize":4,'
                 b'"dataTypeModifier":-1,"format":"text"},{"name":"t","dataTypeID":25,"tableID":0,"columnID":0,'
                 b'"dataTypeSize":-1,"dataTypeModifier":-1,"format":"text"},{"name":"missing","dataTypeID":25,'
                 b'"tableID":0,"columnID":0,"dataTypeSize":-1,"dataTypeModifier":-1,"format":"text"}],')
PARAMS_BODY = b'{"query":"SELECT $1::int AS n, $2::text AS t, $3::text AS missing","params":["42","hello",null]}'


def test_spec_10_parameters_and_null(sql):
    r = sql.post(PARAMS_BODY, conn=SPEC_CONN)
    assert_ok(r, PARAMS_FIELDS + b'"rows":[["42","hello",null]],"command":"SELECT","rowCount":1,"rowAsArray":true}')


def test_spec_10_parameters_without_the_mode_headers(sql):
    r = sql.post(PARAMS_BODY, conn=SPEC_CONN, raw=None, array=None)
    assert_ok(r, PARAMS_FIELDS + b'"rows":[{"n":42,"t":"hello","missing":null}],"command":"SELECT",'
                                 b'"rowCount":1,"rowAsArray":false}')


def test_spec_8_2_transaction_serializable_read_only(sql):
    body = (b'{"queries":[{"query":"SELECT current_setting(\'transaction_isolation\') AS l","params":[]},'
            b'{"query":"SELECT current_setting(\'transaction_read_only\') AS r","params":[]}]}')
    assert len(body) == 167
    r = sql.post(body, conn=SPEC_CONN, headers=[("Neon-Batch-Isolation-Level", "Serializable"),
                                                ("Neon-Batch-Read-Only", "true")])
    assert_ok(r, b'{"results":[{"fields":[{"name":"l","dataTypeID":25,"tableID":0,"columnID":0,'
                 b'"dataTypeSize":-1,"dataTypeModifier":-1,"format":"text"}],"rows":[["serializable"]],'
                 b'"command":"SELECT","rowCount":1,"rowAsArray":true},{"fields":[{"name":"r","dataTypeID":25,'
                 b'"tableID":0,"columnID":0,"dataTypeSize":-1,"dataTypeModifier":-1,"format":"text"}],'
                 b'"rows":[["on"]],"command":"SELECT","rowCount":1,"rowAsArray":true}]}')
    assert r.header("neon-batch-isolation-level") == "Serializable"
    assert r.header("neon-batch-read-only") == "true"
    assert r.header("neon-batch-deferrable") is None


def test_spec_10_batch_repeatable_read(sql):
    body = (b'{"queries":[{"query":"SELECT 1 AS x","params":[]},'
            b'{"query":"SELECT current_setting($1) AS iso","params":["transaction_isolation"]}]}')
    r = sql.post(body, conn=SPEC_CONN, headers=[("Neon-Batch-Isolation-Level", "RepeatableRead"),
                                                ("Neon-Batch-Read-Only", "true")])
    assert_ok(r, b'{"results":[' + SELECT1 + b',{"fields":[{"name":"iso","dataTypeID":25,"tableID":0,'
                 b'"columnID":0,"dataTypeSize":-1,"dataTypeModifier":-1,"format":"text"}],'
                 b'"rows":[["repeatable read"]],"command":"SELECT","rowCount":1,"rowAsArray":true}]}')
    assert r.header("neon-batch-read-only") == "true"
    assert r.header("neon-batch-isolation-level") == "RepeatableRead"


def test_spec_4_1_empty_query(sql):
    assert_ok(sql.query(""), b'{"fields":[],"rows":[],"command":"","rowCount":null,"rowAsArray":true}')


def test_spec_3_2_empty_batch(sql):
    assert_ok(sql.post(b'{"queries":[]}'), b'{"results":[]}')


def test_spec_8_3_driver_parameter_encodings(sql):
    """The two parameter bodies captured from the driver (section 8.3), verbatim; the values come back
    as the same text (untyped $n resolve to text), compared with libpq's answer."""
    oracle = Oracle(sql.pg)
    body1 = (b'{"query":"SELECT $1::int AS a, $2 AS b, $3 AS c, $4 AS d, $5 AS e, $6 AS f, $7 AS g, $8 AS h",'
             b'"params":["42",null,"he said \\"hi\\"\\n","true","12345678901234567890",'
             b'"2024-01-02T03:04:05.006+00:00","{\\"1\\",NULL,\\"a\\\\\\"b\\",{\\"2\\",\\"3\\"}}",'
             b'"{\\"k\\":[1,\\"two\\"]}"]}')
    req = json.loads(body1)
    r = sql.post(body1)
    assert_ok(r, oracle.result_body(req["query"], req["params"]))
    assert json.loads(r.body)["rows"] == [req["params"]]
    body2 = (b'{"query":"SELECT $1::bytea AS buf, $2::bytea AS u8, $3 AS undef, $4 AS fl",'
             b'"params":["\\\\xdeadbeef","\\\\x0102",null,"1.5"]}')
    r = sql.post(body2)
    assert r is not None and r.status == 200, describe(r)
    assert rows_segment(r.body) == b'[["\\\\xdeadbeef","\\\\x0102",null,"1.5"]]'


# ----------------------------------------------------------------------------------------------
# parameters, server side (section 3.4)

def test_params_json_to_text(sql):
    """Strings as-is, null as NULL, booleans as true/false, objects as compact JSON with sorted keys,
    arrays as Postgres array literals (strings JSON-quoted, null -> NULL, nested, objects quoted)."""
    body = (b'{"query":"SELECT $1::text AS s, $2::text AS n, $3::text AS b, $4::text AS f, $5::text AS o,'
            b' $6::text AS a, $7::text AS i","params":["it\'s \\"q\\"",null,true,false,'
            b'{"b":1,"a":[1,"x"]},[1,null,"a\\"b",[2,3],{"k":1},true],-5]}')
    r = sql.post(body)
    assert r is not None and r.status == 200, describe(r)
    rows = json.loads(r.body)["rows"]
    assert rows == [["it's \"q\"", None, "true", "false", '{"a":[1,"x"],"b":1}',
                     '{1,NULL,"a\\"b",{2,3},"{\\"k\\":1}",true}', "-5"]], rows


def test_params_json_floats_as_serde_renders_them(sql):
    """Section 3.4: floats as ryu renders them (1e3 -> 1000.0, 1.5 -> 1.5, 0.1 -> 0.1)."""
    r = sql.post(b'{"query":"SELECT $1::text AS b, $2::text AS c, $3::text AS d, $4::text AS e",'
                 b'"params":[1.5,1e3,0.1,-2.5e-3]}')
    assert r is not None and r.status == 200, describe(r)
    assert json.loads(r.body)["rows"] == [["1.5", "1000.0", "0.1", "-0.0025"]]


def test_params_json_integers_as_is(sql):
    """Section 3.4: integers as-is, over the whole range serde_json keeps as integers (i64 and u64)."""
    r = sql.post(b'{"query":"SELECT $1::text AS a, $2::text AS b, $3::text AS c, $4::text AS d",'
                 b'"params":[-9223372036854775808,9223372036854775807,12345678901234567890,0]}')
    assert r is not None and r.status == 200, describe(r)
    assert json.loads(r.body)["rows"] == [["-9223372036854775808", "9223372036854775807",
                                           "12345678901234567890", "0"]]


def test_params_typed_by_server_inference(sql):
    """Parse without parameter types: the server infers them ($1 + 1 -> int)."""
    r = sql.query("SELECT $1 + 1 AS n, $2::numeric * 2 AS m", ["41", "1.25"])
    assert rows_of(r) == [["42", "2.50"]]


def test_extended_protocol_even_without_params(sql):
    """PQsendQueryParams with zero params: one statement only, $1 without a param is a bind error."""
    r = sql.query("SELECT $1::int AS n", [])
    assert r is not None and r.status == 400, describe(r)
    assert json.loads(r.body)["code"] == "08P01"


# ----------------------------------------------------------------------------------------------
# values, modes, escaping (section 5)

RAW_TYPES_QUERY = (
    "SELECT true AS b, false AS f, 9007199254740993::int8 AS big, 123.4500::numeric AS num,"
    " '\\xdeadbeef'::bytea AS bin, '2024-01-02 03:04:05.678+00'::timestamptz AS ts,"
    " '2024-01-02'::date AS d, '1 day 02:03:04'::interval AS iv, '{\"k\": [1, \"x\"]}'::jsonb AS jb,"
    " '{\"a\":1}'::json AS j, ARRAY[1,NULL,3] AS arr, 'NaN'::float8 AS nan, 1.5::float4 AS f4,"
    " 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, 'héllo ☃ 😀'::text AS t, NULL::text AS nul,"
    " 2::int2 AS s, '12:34:56'::time AS tm, 'x'::char(3) AS c3, 'v'::varchar(10) AS vc")


def test_raw_text_values_of_common_types(sql):
    """Raw mode: every non-NULL value is Postgres's exact text output as a JSON string, under the
    session settings bulkhead sets (ISO dates, postgres intervals, hex bytea, UTC); field metadata is
    the RowDescription (typmods of char(3) and varchar(10) included)."""
    r = sql.query(RAW_TYPES_QUERY)
    assert_ok(r, Oracle(sql.pg).result_body(RAW_TYPES_QUERY))
    row = json.loads(r.body)["rows"][0]
    assert row[:8] == ["t", "f", "9007199254740993", "123.4500", "\\xdeadbeef", "2024-01-02 03:04:05.678+00",
                       "2024-01-02", "1 day 02:03:04"]
    assert row[8] == '{"k": [1, "x"]}' and row[15] is None


def test_raw_object_mode(sql):
    r = sql.query("SELECT 1 AS a, 'x'::text AS b, NULL::int AS c", array=False)
    assert_ok(r, Oracle(sql.pg).result_body("SELECT 1 AS a, 'x'::text AS b, NULL::int AS c", array=False))
    assert rows_segment(r.body) == b'[{"a":"1","b":"x","c":null}]'


def test_object_mode_keeps_duplicate_column_names(sql):
    r = sql.query("SELECT 1 AS a, 2 AS a", array=False)
    assert r is not None and r.status == 200, describe(r)
    assert rows_segment(r.body) == b'[{"a":"1","a":"2"}]'


def test_non_raw_conversions(sql):
    """Section 5.2: bool -> true/false, int2/int4 -> numbers, json/jsonb verbatim, arrays parsed (bounds
    dropped, NULL -> null, quoted elements unescaped, elements converted), everything else a string."""
    q = ("SELECT true AS b, false AS f0, 1::int2 AS s, 2::int4 AS i, '{\"k\": [1, \"x\"]}'::jsonb AS jb,"
         " '{\"a\":1}'::json AS j, ARRAY[1,NULL,3] AS a, 9007199254740993::int8 AS big, 1.50::numeric AS num,"
         " 'hi'::text AS t, '[1:2]={1,2}'::int[] AS bounded, ARRAY['a\"b', NULL, 'c,d'] AS ta,"
         " NULL::int AS nul, ARRAY[true,false] AS ba, ARRAY[ARRAY[1,2],ARRAY[3,4]] AS nested,"
         " '2024-01-02'::date AS d")
    r = sql.query(q, raw=None, array=False)
    assert r is not None and r.status == 200, describe(r)
    assert rows_segment(r.body) == (
        b'[{"b":true,"f0":false,"s":1,"i":2,"jb":{"k": [1, "x"]},"j":{"a":1},"a":[1,null,3],'
        b'"big":"9007199254740993","num":"1.50","t":"hi","bounded":[1,2],"ta":["a\\"b",null,"c,d"],'
        b'"nul":null,"ba":[true,false],"nested":[[1,2],[3,4]],"d":"2024-01-02"}]')
    assert b'"rowAsArray":false}' in r.body


def test_non_raw_floats(sql):
    """Section 5.2: float4/float8 -> JSON numbers as ryu renders them; NaN and infinities -> strings."""
    r = sql.query("SELECT 1.0::float8 AS a, 2.5::float4 AS b, 'NaN'::float8 AS c, 'Infinity'::float8 AS d,"
                  " '-Infinity'::float4 AS e", raw=None, array=False)
    assert r is not None and r.status == 200, describe(r)
    assert rows_segment(r.body) == b'[{"a":1.0,"b":2.5,"c":"NaN","d":"Infinity","e":"-Infinity"}]'


def test_non_raw_array_mode(sql):
    r = sql.query("SELECT 1 AS x, 't'::bool AS y", raw=None, array=True)
    assert r is not None and r.status == 200, describe(r)
    assert rows_segment(r.body) == b'[[1,true]]'
    assert r.body.endswith(b'"rowAsArray":true}')


def test_string_escaping(sql):
    """Section 5: quote, backslash, \\b \\f \\n \\r \\t escaped, other controls as lowercase \\u00xx; '/',
    DEL and non-ASCII raw UTF-8 (column names too)."""
    q = ("SELECT chr(34)||chr(92)||chr(8)||chr(12)||chr(10)||chr(13)||chr(9)||chr(1)||chr(31)||'/'||chr(127)"
         "||'é€😀' AS \"q\"\"\\é\"")
    r = sql.query(q)
    assert r is not None and r.status == 200, describe(r)
    value = b'"\\"\\\\\\b\\f\\n\\r\\t\\u0001\\u001f/\x7f' + "é€😀".encode() + b'"'
    assert rows_segment(r.body) == b"[[" + value + b"]]"
    assert b'"name":"q\\"\\\\' + "é".encode() + b'"' in r.body
    assert_ok(r, Oracle(sql.pg).result_body(q))


def test_command_and_row_count_from_the_tag(sql):
    t = unique("ttag")
    cases = [
        ("CREATE TABLE %s (id int)" % t, "CREATE", None),
        ("INSERT INTO %s SELECT generate_series(1, 5)" % t, "INSERT", 5),
        ("UPDATE %s SET id = id WHERE id > 3" % t, "UPDATE", 2),
        ("UPDATE %s SET id = id WHERE id > 100" % t, "UPDATE", 0),
        ("DELETE FROM %s WHERE id <= 3" % t, "DELETE", 3),
        ("SELECT * FROM %s WHERE id < 0" % t, "SELECT", 0),
        ("CREATE TABLE %s_copy AS SELECT * FROM %s" % (t, t), "SELECT", 2),
        ("SET LOCAL statement_timeout = 0", "SET", None),
        ("DROP TABLE %s_copy" % t, "DROP", None),
        ("DO $$ BEGIN END $$", "DO", None),
        ("MERGE INTO %s USING (SELECT 4 AS id) s ON %s.id = s.id WHEN MATCHED THEN DELETE" % (t, t),
         "MERGE", 1),
    ]
    for q, command, count in cases:
        body = ok_json(sql.query(q))
        assert (body["command"], body["rowCount"]) == (command, count), (q, body)
        assert list(body.keys()) == ["fields", "rows", "command", "rowCount", "rowAsArray"]


def test_body_array_mode_overrides_header(sql):
    r = sql.post(b'{"query":"SELECT 1 AS x","params":[],"arrayMode":false}', array=True)
    assert r is not None and r.status == 200, describe(r)
    assert rows_segment(r.body) == b'[{"x":"1"}]' and r.body.endswith(b'"rowAsArray":false}')
    r = sql.post(b'{"query":"SELECT 1 AS x","params":[],"arrayMode":true}', array=False)
    assert_ok(r, SELECT1)


def test_params_optional_and_unknown_keys_ignored(sql):
    assert_ok(sql.post(b'{"query":"SELECT 1 AS x"}'), SELECT1)
    assert_ok(sql.post(b'{"query":"SELECT 1 AS x","params":[],"foo":{"bar":[1]},"fullResults":true}'), SELECT1)
    assert_ok(sql.post(b' {\n "params" : [ ] ,\t"query" : "SELECT 1 AS x" } '), SELECT1)


# ----------------------------------------------------------------------------------------------
# headers (section 2)

def test_header_names_case_insensitive(sql):
    hdrs = [("NEON-CONNECTION-STRING", sql.url()), ("neon-raw-text-output", "true"),
            ("nEoN-aRrAy-MoDe", "true")]
    assert_ok(sql.post(b'{"query":"SELECT 1 AS x","params":[]}', replace_headers=hdrs), SELECT1)


@pytest.mark.parametrize("value", ["True", "TRUE", "1", "yes", "on", "\"true\""])
def test_boolean_headers_true_only_for_exact_true(sql, value):
    # Neon-Raw-Text-Output not exactly "true": non-raw values (numbers); Neon-Array-Mode likewise: objects
    r = sql.query("SELECT 1 AS x", raw=value, array=True)
    assert r is not None and r.status == 200, describe(r)
    assert rows_segment(r.body) == b'[[1]]', (value, r.body)
    r = sql.query("SELECT 1 AS x", raw=True, array=value)
    assert r is not None and r.status == 200, describe(r)
    assert rows_segment(r.body) == b'[{"x":"1"}]', (value, r.body)


def test_content_type_not_required(sql):
    hdrs = [("Neon-Connection-String", sql.url()), ("Neon-Raw-Text-Output", "true"), ("Neon-Array-Mode", "true")]
    assert_ok(sql.post(b'{"query":"SELECT 1 AS x","params":[]}', replace_headers=hdrs), SELECT1)
    assert_ok(sql.post(b'{"query":"SELECT 1 AS x","params":[]}',
                       replace_headers=hdrs + [("Content-Type", "application/x-www-form-urlencoded")]), SELECT1)


def test_pool_opt_in_and_query_id_headers_ignored(sql):
    assert_ok(sql.query("SELECT 1 AS x", headers=[("Neon-Pool-Opt-In", "true"), ("X-Neon-Query-ID", "abc")]),
              SELECT1)


def test_connection_string_forms(sql):
    """postgres: scheme, percent-encoded password, application_name/sslmode/options in the query string,
    an IP literal host, a port: all accepted (the `*` entry maps every host)."""
    for conn in ["postgres://alice:s3cr%40t@db.example.com/app",
                 "postgresql://alice:s3cr%40t@db.example.com/app?sslmode=require&channel_binding=require",
                 "postgresql://alice:s3cr%40t@127.0.0.1:5432/app?application_name=pkg%3Anpm%2F%2540x",
                 "postgresql://alice:s3cr%40t@localhost/app",
                 "postgresql://%61lice:s3cr%40t@ep-x.localtest.me:5433/%61pp"]:
        r = sql.query("SELECT current_user AS u, current_database() AS d", conn=conn)
        assert rows_of(r) == [[ALICE, DBNAME]], (conn, describe(r))


def test_query_string_of_the_path_is_ignored(sql):
    assert_ok(sql.post(b'{"query":"SELECT 1 AS x","params":[]}', target="/sql?foo=bar&x"), SELECT1)


def test_chunked_request_body_accepted(sql):
    body = b'{"query":"SELECT 1 AS x","params":[]}'
    hdrs = neon_headers(sql.url()) + [("Transfer-Encoding", "chunked")]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7]) for i in range(0, len(body), 7))
    with RawClient(sql.port) as c:
        c.send(build_request("POST", "/sql", hdrs, None) + chunked + b"0\r\n\r\n")
        assert_ok(c.read_response(), SELECT1)


def test_keep_alive_many_requests_one_connection(sql):
    hdrs = neon_headers(sql.url())
    with RawClient(sql.port) as c:
        for i in range(20):
            c.send(build_request("POST", "/sql", hdrs, encode_body({"query": "SELECT $1::int AS n",
                                                                    "params": [str(i)]})))
            r = c.read_response()
            assert r.status == 200, describe(r)
            assert rows_segment(r.body) == b'[["%d"]]' % i


# ----------------------------------------------------------------------------------------------
# batches (section 4.2)

def test_batch_results_in_order_and_one_transaction(sql):
    r = sql.batch(["SELECT txid_current() AS a", "SELECT 2 AS b", "SELECT txid_current() AS c"])
    body = ok_json(r)
    assert list(body.keys()) == ["results"] and len(body["results"]) == 3
    a, b, c = body["results"]
    assert a["rows"][0][0] == c["rows"][0][0], "the batch ran in more than one transaction: %r" % body
    assert b["rows"] == [["2"]]
    assert r.header("neon-batch-isolation-level") is None and r.header("neon-batch-read-only") is None


def test_batch_commits(sql, pg):
    t = unique("tbc")
    assert ok_json(sql.query("CREATE TABLE %s (id int)" % t))
    r = sql.batch([{"query": "INSERT INTO %s VALUES ($1)" % t, "params": ["1"]},
                   {"query": "INSERT INTO %s VALUES ($1), ($2)" % t, "params": ["2", "3"]}])
    res = ok_json(r)["results"]
    assert [(x["command"], x["rowCount"]) for x in res] == [("INSERT", 1), ("INSERT", 2)]
    assert pg.app_sql("SELECT array_agg(id ORDER BY id) FROM %s" % t) == [([1, 2, 3],)]


@pytest.mark.parametrize("level,shown", [("Serializable", "serializable"), ("RepeatableRead", "repeatable read"),
                                         ("ReadCommitted", "read committed"),
                                         ("ReadUncommitted", "read uncommitted")])
def test_batch_isolation_levels(sql, level, shown):
    r = sql.batch(["SELECT current_setting('transaction_isolation') AS l"], isolation=level)
    assert ok_json(r)["results"][0]["rows"] == [[shown]]
    assert r.header("neon-batch-isolation-level") == level


def test_batch_deferrable_and_echo_headers(sql):
    r = sql.batch(["SELECT current_setting('transaction_deferrable') AS d, "
                   "current_setting('transaction_read_only') AS r"],
                  isolation="Serializable", read_only=True, deferrable=True)
    assert ok_json(r)["results"][0]["rows"] == [["on", "on"]]
    assert r.header("neon-batch-deferrable") == "true"
    assert r.header("neon-batch-read-only") == "true"
    assert r.header("neon-batch-isolation-level") == "Serializable"


def test_batch_false_options_add_nothing(sql):
    r = sql.batch(["SELECT current_setting('transaction_read_only') AS r, "
                   "current_setting('transaction_deferrable') AS d, "
                   "current_setting('transaction_isolation') AS i"], read_only=False, deferrable="True")
    assert ok_json(r)["results"][0]["rows"] == [["off", "off", "read committed"]]
    assert r.header("neon-batch-read-only") is None
    assert r.header("neon-batch-deferrable") is None


def test_batch_per_query_array_mode(sql):
    r = sql.post(b'{"queries":[{"query":"SELECT 1 AS x","params":[]},'
                 b'{"query":"SELECT 1 AS x","params":[],"arrayMode":false}]}')
    assert_ok(r, b'{"results":[' + SELECT1 + b',{"fields":[{"name":"x","dataTypeID":23,"tableID":0,"columnID":0,'
                 b'"dataTypeSize":4,"dataTypeModifier":-1,"format":"text"}],"rows":[{"x":"1"}],"command":"SELECT",'
                 b'"rowCount":1,"rowAsArray":false}]}')


def test_batch_options_apply_only_to_batches(sql):
    r = sql.query("SELECT current_setting('transaction_isolation') AS l, current_setting('transaction_read_only') AS r",
                  headers=[("Neon-Batch-Isolation-Level", "Serializable"), ("Neon-Batch-Read-Only", "true")])
    assert rows_of(r) == [["read committed", "off"]]


# ----------------------------------------------------------------------------------------------
# CORS and response headers (sections 5, 7.6, 7.9)

def test_cors_preflight(sql):
    with RawClient(sql.port) as c:
        c.request("OPTIONS", "/sql", headers=[("Origin", "https://app.example"),
                                              ("Access-Control-Request-Method", "POST"),
                                              ("Access-Control-Request-Headers",
                                               "neon-connection-string,neon-raw-text-output")])
        r = c.read_response("OPTIONS")
    assert r.status == 200, describe(r)
    assert r.body == b""
    assert set(r.tokens("allow")) == {"options", "post"}, r.headers
    assert r.header("access-control-allow-origin") == "*"
    assert r.header("access-control-max-age") == "86400"
    allowed = set(r.tokens("access-control-allow-headers"))
    for h in ["Authorization", "Neon-Connection-String", "Neon-Raw-Text-Output", "Neon-Array-Mode",
              "Neon-Pool-Opt-In", "Neon-Batch-Read-Only", "Neon-Batch-Isolation-Level", "Neon-Batch-Deferrable"]:
        assert h.lower() in allowed, (h, r.headers)


def test_response_headers_on_success_and_error(sql):
    ids = set()
    for r in [sql.query("SELECT 1 AS x"), sql.query("SELECT 1/0"), sql.post(b"not json"),
              sql.batch(["SELECT 1 AS x"])]:
        assert r is not None, "no response"
        assert r.header("access-control-allow-origin") == "*", describe(r)
        assert r.header("content-type").split(";")[0].strip() == "application/json", describe(r)
        rid = r.header("neon-request-id")
        assert rid is not None and UUID4.match(rid), describe(r)
        ids.add(rid)
        assert r.header("content-encoding") is None, describe(r)
    assert len(ids) == 4, "request ids are not unique: %r" % ids
