// The real, unmodified @neondatabase/serverless (pinned in package.json / package-lock.json) against bulkhead's
// POST /sql and a throwaway PostgreSQL 15. What each test expects comes from the spec
// (../shared/protocol/neon-sql-over-http.md: 1.2 endpoint, 3.3 params, 5 results and the driver's type
// parsing in 5.3, 6.3 errors, 4.2 batches, 8 captured traffic) and from what Postgres itself reports.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { neon, neonConfig, NeonDbError } from '@neondatabase/serverless';
import { startStack, connString, sanitizerReport, PG_USER } from './setup.mjs';

let stack;
let sql; // neon() with default options: rows as objects, just the rows

before(async () => {
  stack = await startStack();
  sql = neon(stack.connectionString);
});

after(async () => {
  if (stack) await stack.stop();
});

/** Asserts that p rejects with a NeonDbError decoded from a 400 body, checks `fields`, returns the error. */
async function rejectsWithDbError(p, fields) {
  let err;
  await assert.rejects(p, (e) => { err = e; return true; });
  assert.ok(err instanceof NeonDbError, `expected a NeonDbError, got ${err && err.name}: ${err && err.message}`);
  assert.equal(err.name, 'NeonDbError');
  // a 400 with the 17-key body: code and severity are strings; a non-400 would leave them undefined
  assert.equal(typeof err.code, 'string', `no .code: not a decoded 400 body? (${err.message})`);
  assert.equal(typeof err.severity, 'string', `no .severity (${err.message})`);
  for (const [k, v] of Object.entries(fields)) {
    if (v instanceof RegExp) assert.match(String(err[k]), v, `err.${k}`);
    else assert.deepEqual(err[k], v, `err.${k}`);
  }
  return err;
}

/** Unique table names per test run, so a failed cleanup never breaks the next test. */
let seq = 0;
const uniq = (prefix) => `${prefix}_${process.pid}_${++seq}`;

// ------------------------------------------------------------------------------------------------------
describe('simple and parameterised queries', () => {
  test('tagged template without parameters (spec 8.1)', async () => {
    assert.deepEqual(await sql`SELECT 1 AS x`, [{ x: 1 }]);
  });

  test('sql.query() without parameters', async () => {
    assert.deepEqual(await sql.query('SELECT 1 AS x, \'two\' AS y'), [{ x: 1, y: 'two' }]);
  });

  test('tagged template with parameters becomes $1, $2 (spec 3.3)', async () => {
    const h = 'hello', w = 'world', n = 41;
    const rows = await sql`SELECT ${h} || ' ' || ${w} AS greeting, ${n}::int + 1 AS n`;
    assert.deepEqual(rows, [{ greeting: 'hello world', n: 42 }]);
  });

  test('sql.query() with $n placeholders', async () => {
    const rows = await sql.query('SELECT $1::int AS n, $2::text AS t, $3::text AS missing', [42, 'hello', null]);
    assert.deepEqual(rows, [{ n: 42, t: 'hello', missing: null }]);
  });

  test('composed templates and sql.unsafe are inlined and renumbered', async () => {
    const inner = sql`${'a'} || ${'b'}`;
    const col = 'joined';
    const rows = await sql`SELECT ${inner} AS ${sql.unsafe(col)}, ${'c'}::text AS c`;
    assert.deepEqual(rows, [{ joined: 'ab', c: 'c' }]);
  });

  test('strings round-trip exactly: quotes, backslashes, control characters, non-ASCII, emoji', async () => {
    const s = 'he said "hi"\n\ttab \\ back\\slash \r\u0001\u0008\u000c\u001f\u007f / é ü 日本 ☃ 🐘 \u2028\u2029 \'single\'';
    const rows = await sql`SELECT ${s}::text AS s, length(${s}::text) AS len`;
    assert.equal(rows[0].s, s);
    assert.equal(rows[0].len, [...s].length); // Postgres counts code points
  });

  test('column names are escaped and kept exactly (quotes, spaces, non-ASCII)', async () => {
    const rows = await sql`SELECT 1 AS "a ""quoted"" name", 2 AS "Ünïcødé ☃", 3 AS "back\\slash"`;
    assert.deepEqual(rows, [{ 'a "quoted" name': 1, 'Ünïcødé ☃': 2, 'back\\slash': 3 }]);
  });

  test('empty result', async () => {
    assert.deepEqual(await sql`SELECT 1 AS x WHERE false`, []);
  });

  test('many rows (20,000) in one response', async () => {
    const rows = await sql`SELECT g AS n, repeat('x', 10) AS s FROM generate_series(1, 20000) g`;
    assert.equal(rows.length, 20000);
    assert.deepEqual(rows[0], { n: 1, s: 'xxxxxxxxxx' });
    assert.deepEqual(rows[19999], { n: 20000, s: 'xxxxxxxxxx' });
  });

  test('a 1.75 MB parameter (sent twice) and value round-trip', async () => {
    const big = 'ab☃'.repeat(350_000); // ~1.75 MB of UTF-8
    const [{ s, len }] = await sql`SELECT ${big}::text AS s, length(${big}::text) AS len`;
    assert.equal(len, big.length);
    assert.ok(s === big, 'the value came back changed');
  });

  test('1,000 parameters in one query', async () => {
    const params = Array.from({ length: 1000 }, (_, i) => i + 1);
    const text = `SELECT ${params.map((_, i) => `$${i + 1}::int`).join(' + ')} AS total`;
    assert.deepEqual(await sql.query(text, params), [{ total: 500500 }]);
  });

  test('50 concurrent queries through one neon() function (undici keep-alive)', async () => {
    const all = await Promise.all(Array.from({ length: 50 }, (_, i) => sql`SELECT ${i}::int AS i, pg_backend_pid() AS pid`));
    all.forEach((rows, i) => assert.equal(rows[0].i, i));
  });

  test('DDL and DML through the driver', async () => {
    const t = uniq('dml');
    assert.deepEqual(await sql.query(`CREATE TABLE ${t} (id int PRIMARY KEY, name text NOT NULL)`), []);
    assert.deepEqual(await sql.query(`INSERT INTO ${t} VALUES (1, 'a'), (2, 'b')`), []);
    assert.deepEqual(await sql.query(`UPDATE ${t} SET name = upper(name) RETURNING id, name`),
      [{ id: 1, name: 'A' }, { id: 2, name: 'B' }]);
    assert.deepEqual(await sql.query(`SELECT * FROM ${t} WHERE id = $1`, [2]), [{ id: 2, name: 'B' }]);
    await sql.query(`DROP TABLE ${t}`);
  });
});

// ------------------------------------------------------------------------------------------------------
describe('types: what the driver parses from the raw text values (spec 5, 5.3)', () => {
  test('NULLs of every kind stay null', async () => {
    const rows = await sql`SELECT NULL AS a, NULL::int AS b, NULL::int8 AS c, NULL::bool AS d, NULL::jsonb AS e,
      NULL::timestamptz AS f, NULL::bytea AS g, NULL::int[] AS h, ${null}::text AS i, ${undefined}::int AS j,
      '' AS empty`;
    assert.deepEqual(rows, [{ a: null, b: null, c: null, d: null, e: null, f: null, g: null, h: null, i: null, j: null, empty: '' }]);
  });

  test('the string "null" and NULL are different', async () => {
    const rows = await sql`SELECT 'null'::text AS s, 'null'::jsonb AS j, NULL::jsonb AS n`;
    assert.deepEqual(rows, [{ s: 'null', j: null, n: null }]);
    const full = await sql.query(`SELECT 'null'::text AS s, NULL::text AS n`, [], { fullResults: true, arrayMode: true });
    assert.deepEqual(full.rows, [['null', null]]);
  });

  test('int2, int4, oid are numbers; int8 is an exact string', async () => {
    const rows = await sql`SELECT 32767::int2 AS i2, (-2147483648)::int4 AS i4, 26::oid AS o,
      9007199254740993::int8 AS big, (-9223372036854775808)::int8 AS min8, 9223372036854775807::int8 AS max8`;
    assert.deepEqual(rows, [{ i2: 32767, i4: -2147483648, o: 26, big: '9007199254740993',
      min8: '-9223372036854775808', max8: '9223372036854775807' }]);
    const [{ c }] = await sql`SELECT count(*) AS c FROM generate_series(1, 3)`;
    assert.equal(c, '3'); // count() is int8
  });

  test('float4 and float8 are numbers, NaN and Infinity included', async () => {
    const rows = await sql`SELECT 1.5::float4 AS f4, 0.1::float8 AS f8, 'NaN'::float8 AS nan,
      'Infinity'::float8 AS inf, '-Infinity'::float8 AS ninf, 1e300::float8 AS huge`;
    assert.equal(rows[0].f4, 1.5);
    assert.equal(rows[0].f8, 0.1);
    assert.ok(Number.isNaN(rows[0].nan));
    assert.equal(rows[0].inf, Infinity);
    assert.equal(rows[0].ninf, -Infinity);
    assert.equal(rows[0].huge, 1e300);
  });

  test('numeric is an exact string with the scale Postgres prints', async () => {
    const rows = await sql`SELECT 123.4500::numeric AS n, ${'0.1'}::numeric + ${'0.2'}::numeric AS s,
      12345678901234567890.123456789::numeric AS big, (-0.5)::numeric(10,3) AS scaled, 'NaN'::numeric AS nan`;
    assert.deepEqual(rows, [{ n: '123.4500', s: '0.3', big: '12345678901234567890.123456789', scaled: '-0.500', nan: 'NaN' }]);
  });

  test('bool is true/false (the raw text t/f must arrive as strings)', async () => {
    const rows = await sql`SELECT true AS t, false AS f, ${true}::bool AS pt, ${false}::bool AS pf, (1 < 2) AS cmp`;
    assert.deepEqual(rows, [{ t: true, f: false, pt: true, pf: false, cmp: true }]);
  });

  test('json and jsonb are parsed with JSON.parse', async () => {
    const rows = await sql`SELECT '{"a":1,"b":[true,null,"x"],"c":{"d":"é\\n"}}'::json AS j,
      '{"b": 2, "a": 1, "nested": {"k": [1.5, "two"]}}'::jsonb AS jb, '"str"'::json AS js, '42'::jsonb AS jn,
      '[1,2,3]'::jsonb AS ja, 'true'::json AS jt`;
    assert.deepEqual(rows, [{ j: { a: 1, b: [true, null, 'x'], c: { d: 'é\n' } }, jb: { a: 1, b: 2, nested: { k: [1.5, 'two'] } },
      js: 'str', jn: 42, ja: [1, 2, 3], jt: true }]);
  });

  test('json keeps the text as written; jsonb normalises it (raw text from Postgres, unmodified)', async () => {
    const [{ j, jb }] = await sql.query(`SELECT '{"b":1,  "a":2}'::json::text AS j, '{"b":1,  "a":2}'::jsonb::text AS jb`);
    assert.equal(j, '{"b":1,  "a":2}');
    assert.equal(jb, '{"a": 2, "b": 1}');
  });

  test('timestamptz is a Date at the right instant', async () => {
    const rows = await sql`SELECT '2024-01-02 03:04:05.678+00'::timestamptz AS ts,
      '2024-07-01 12:00:00+05:30'::timestamptz AS ts2, '1999-12-31 23:59:59.999999-08'::timestamptz AS ts3`;
    assert.ok(rows[0].ts instanceof Date);
    assert.equal(rows[0].ts.getTime(), Date.UTC(2024, 0, 2, 3, 4, 5, 678));
    assert.equal(rows[0].ts2.toISOString(), '2024-07-01T06:30:00.000Z');
    assert.equal(rows[0].ts3.toISOString(), '2000-01-01T07:59:59.999Z');
  });

  test('timestamptz raw text is ISO in UTC (bulkhead sets DateStyle=ISO and TimeZone=UTC)', async () => {
    const [{ s }] = await sql`SELECT '2024-01-02 03:04:05.678+00'::timestamptz::text AS s`;
    assert.equal(s, '2024-01-02 03:04:05.678+00');
  });

  test('date and timestamp are Dates in local time', async () => {
    const [{ d, ts }] = await sql`SELECT '2024-02-29'::date AS d, '2024-01-02 03:04:05.5'::timestamp AS ts`;
    assert.ok(d instanceof Date && ts instanceof Date);
    assert.equal(d.getTime(), new Date(2024, 1, 29).getTime());
    assert.equal(ts.getTime(), new Date(2024, 0, 2, 3, 4, 5, 500).getTime());
  });

  test('interval is parsed (bulkhead sets IntervalStyle=postgres)', async () => {
    const [{ i }] = await sql`SELECT '1 year 2 mons 3 days 04:05:06.5'::interval AS i`;
    assert.equal(i.years, 1);
    assert.equal(i.months, 2);
    assert.equal(i.days, 3);
    assert.equal(i.hours, 4);
    assert.equal(i.minutes, 5);
    assert.equal(i.seconds, 6);
    assert.equal(i.milliseconds, 500);
  });

  test('bytea is a Buffer (bulkhead sets bytea_output=hex)', async () => {
    const [{ b, e, raw }] = await sql`SELECT '\\xdeadbeef'::bytea AS b, ''::bytea AS e, '\\x00ff'::bytea::text AS raw`;
    assert.ok(Buffer.isBuffer(b));
    assert.deepEqual(b, Buffer.from([0xde, 0xad, 0xbe, 0xef]));
    assert.deepEqual(e, Buffer.alloc(0));
    assert.equal(raw, '\\x00ff');
  });

  test('arrays: int[], text[] with quoting, int8[], numeric[], bool[], 2-D, NULL elements', async () => {
    const rows = await sql`SELECT ARRAY[1, 2, NULL]::int[] AS ia, ARRAY['a', 'b"c', NULL, 'd,e', '', 'NULL', 'x\\y', '{}']::text[] AS ta,
      ARRAY[9007199254740993]::int8[] AS i8a, ARRAY[1.5, 2]::numeric[] AS na, ARRAY[true, false]::bool[] AS ba,
      ARRAY[[1, 2], [3, 4]]::int[] AS two_d, '{}'::int[] AS empty, ARRAY[1.25]::float8[] AS fa`;
    assert.deepEqual(rows, [{
      ia: [1, 2, null], ta: ['a', 'b"c', null, 'd,e', '', 'NULL', 'x\\y', '{}'], i8a: ['9007199254740993'],
      na: [1.5, 2], ba: [true, false], two_d: [[1, 2], [3, 4]], empty: [], fa: [1.25],
    }]);
  });

  test('arrays of json, timestamptz and uuid', async () => {
    const [{ ja, ta, ua }] = await sql`SELECT ARRAY['{"a":1}'::json, '[2]'::json] AS ja,
      ARRAY['2024-01-02 03:04:05+00'::timestamptz] AS ta, ARRAY['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid] AS ua`;
    assert.deepEqual(ja, [{ a: 1 }, [2]]);
    assert.equal(ta[0].getTime(), Date.UTC(2024, 0, 2, 3, 4, 5));
    assert.deepEqual(ua, ['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11']);
  });

  test('types without a parser are the raw text: text, varchar, uuid, time, inet, money-free numerics', async () => {
    const rows = await sql`SELECT 'x'::varchar(5) AS v, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u,
      '04:05:06.789'::time AS t, '192.168.0.1/24'::inet AS ip, 'abc'::char(5) AS c, '(1,2)'::point AS p`;
    assert.deepEqual(rows, [{ v: 'x', u: 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', t: '04:05:06.789',
      ip: '192.168.0.1/24', c: 'abc  ', p: { x: 1, y: 2 } }]);
  });

  test('the session settings bulkhead promises (the server defaults here are deliberately different)', async () => {
    const [r] = await sql`SELECT current_setting('DateStyle') AS datestyle, current_setting('IntervalStyle') AS intervalstyle,
      current_setting('bytea_output') AS bytea_output, current_setting('client_encoding') AS client_encoding,
      current_setting('TimeZone') AS tz, current_user AS usr, current_database() AS db`;
    assert.equal(r.datestyle, 'ISO, MDY');
    assert.equal(r.intervalstyle, 'postgres');
    assert.equal(r.bytea_output, 'hex');
    assert.equal(r.client_encoding, 'UTF8');
    assert.match(r.tz, /^(UTC|Etc\/UTC)$/);
    assert.equal(r.usr, PG_USER);
    assert.equal(r.db, 'app');
  });
});

// ------------------------------------------------------------------------------------------------------
describe('parameters: Date, Buffer, array, BigInt, object (spec 3.3, 8.3)', () => {
  test('Date parameter round-trips to the millisecond', async () => {
    const d = new Date(Date.UTC(2024, 0, 2, 3, 4, 5, 6));
    const [{ ts, txt, same }] = await sql`SELECT ${d}::timestamptz AS ts, ${d}::timestamptz::text AS txt,
      ${d}::timestamptz = '2024-01-02 03:04:05.006+00'::timestamptz AS same`;
    assert.equal(ts.getTime(), d.getTime());
    assert.equal(txt, '2024-01-02 03:04:05.006+00');
    assert.equal(same, true);
  });

  test('Buffer and Uint8Array parameters become bytea (templates add ::bytea)', async () => {
    const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const [{ buf, u8, len, hex }] = await sql`SELECT ${all} AS buf, ${new Uint8Array([1, 2])} AS u8,
      octet_length(${all}) AS len, encode(${Buffer.from([0xde, 0xad, 0xbe, 0xef])}, 'hex') AS hex`;
    assert.deepEqual(buf, all);
    assert.deepEqual(u8, Buffer.from([1, 2]));
    assert.equal(len, 256);
    assert.equal(hex, 'deadbeef');
  });

  test('Buffer parameter through sql.query() needs its own cast', async () => {
    const [{ b }] = await sql.query('SELECT $1::bytea AS b', [Buffer.from('hi\u0000there')]);
    assert.deepEqual(b, Buffer.from('hi\u0000there'));
  });

  test('JS arrays become Postgres array literals: numbers, NULLs, quoting, nesting', async () => {
    const texts = ['a"b', 'c\\d', null, 'x,y', '', 'NULL', ' sp ', '{braces}', 'é☃'];
    const [r] = await sql`SELECT ${[1, null, 3]}::int[] AS ia, ${texts}::text[] AS ta, ${[[1, 2], [3, 4]]}::int[] AS nested,
      array_length(${[1, 2, 3, 4, 5]}::int[], 1) AS len, ${[]}::int[] AS empty, ${[true, false]}::bool[] AS ba`;
    assert.deepEqual(r, { ia: [1, null, 3], ta: texts, nested: [[1, 2], [3, 4]], len: 5, empty: [], ba: [true, false] });
  });

  test('array literal text as Postgres receives it (spec 8.3)', async () => {
    const [{ g }] = await sql.query('SELECT $1::text AS g', [[1, null, 'a"b', [2, 3]]]);
    assert.equal(g, '{"1",NULL,"a\\"b",{"2","3"}}');
  });

  test('arrays of Dates, BigInts and Buffers', async () => {
    const d1 = new Date(Date.UTC(2020, 5, 15, 12, 0, 0, 123));
    const d2 = new Date(Date.UTC(1970, 0, 1));
    const [r] = await sql`SELECT ${[d1, d2]}::timestamptz[] AS ds, ${[1n, 9007199254740993n]}::int8[] AS bs,
      encode((${[Buffer.from([0xca, 0xfe])]}::bytea[])[1], 'hex') AS b0`;
    assert.deepEqual(r.ds.map((d) => d.getTime()), [d1.getTime(), d2.getTime()]);
    assert.deepEqual(r.bs, ['1', '9007199254740993']);
    assert.equal(r.b0, 'cafe');
  });

  test('BigInt parameters keep every digit', async () => {
    const [r] = await sql`SELECT ${12345678901234567890n}::numeric AS n, ${9007199254740993n}::int8 AS i8,
      ${-9223372036854775808n}::int8 AS min8, ${9007199254740993n}::int8 + 1 AS plus1`;
    assert.deepEqual(r, { n: '12345678901234567890', i8: '9007199254740993', min8: '-9223372036854775808', plus1: '9007199254740994' });
  });

  test('numbers and booleans are sent as their String() text', async () => {
    const [r] = await sql`SELECT ${1.5}::float8 AS f, ${-0.000001}::float8 AS small, ${1e21}::float8 AS e21,
      ${true}::text AS bt, ${0}::int AS zero, ${-7}::int AS neg, ${42}::text AS nt`;
    assert.deepEqual(r, { f: 1.5, small: -0.000001, e21: 1e21, bt: 'true', zero: 0, neg: -7, nt: '42' });
  });

  test('object parameters are JSON.stringify()ed (json keeps it byte for byte)', async () => {
    const obj = { k: [1, 'two'], z: null, s: 'é "q" \\ \n', nested: { b: 2, a: 1 } };
    const [r] = await sql`SELECT ${obj}::jsonb AS jb, ${obj}::json AS j, ${obj}::text AS t`;
    assert.deepEqual(r.jb, obj);
    assert.deepEqual(r.j, obj);
    assert.equal(r.t, JSON.stringify(obj));
  });

  test('a JSON array for a json column must be stringified by the caller (JS arrays are Postgres arrays)', async () => {
    const [r] = await sql`SELECT ${JSON.stringify([1, 'a', null])}::jsonb AS ja`;
    assert.deepEqual(r.ja, [1, 'a', null]);
  });

  test('objects with toPostgres() send its result', async () => {
    const money = { toPostgres: () => '12.50' };
    const [r] = await sql`SELECT ${money}::numeric AS n`;
    assert.equal(r.n, '12.50');
  });

  test('all kinds in one sql.query() call (spec 8.3)', async () => {
    const d = new Date(Date.UTC(2024, 0, 2, 3, 4, 5, 6));
    const rows = await sql.query(
      'SELECT $1::int AS a, $2 AS b, $3 AS c, $4::bool AS d, $5::numeric AS e, $6::timestamptz AS f, $7::text AS g, $8::jsonb AS h',
      [42, null, 'he said "hi"\n', true, 12345678901234567890n, d, [1, null, 'a"b', [2, 3]], { k: [1, 'two'] }]);
    assert.equal(rows.length, 1);
    const r = rows[0];
    assert.equal(r.a, 42);
    assert.equal(r.b, null);
    assert.equal(r.c, 'he said "hi"\n');
    assert.equal(r.d, true);
    assert.equal(r.e, '12345678901234567890');
    assert.equal(r.f.getTime(), d.getTime());
    assert.equal(r.g, '{"1",NULL,"a\\"b",{"2","3"}}');
    assert.deepEqual(r.h, { k: [1, 'two'] });
  });
});

// ------------------------------------------------------------------------------------------------------
describe('fullResults and arrayMode', () => {
  const DRIVER_KEYS = new Set(['viaNeonFetch', '_parsers', '_types']);

  test('fullResults: the server object in its key order, fields verbatim (spec 5, 8.1)', async () => {
    const r = await sql.query('SELECT 1 AS x', [], { fullResults: true });
    assert.deepEqual(Object.keys(r).filter((k) => !DRIVER_KEYS.has(k)), ['fields', 'rows', 'command', 'rowCount', 'rowAsArray']);
    assert.deepEqual(r.fields, [{ name: 'x', dataTypeID: 23, tableID: 0, columnID: 0, dataTypeSize: 4, dataTypeModifier: -1, format: 'text' }]);
    assert.deepEqual(Object.keys(r.fields[0]), ['name', 'dataTypeID', 'tableID', 'columnID', 'dataTypeSize', 'dataTypeModifier', 'format']);
    assert.deepEqual(r.rows, [{ x: 1 }]);
    assert.equal(r.command, 'SELECT');
    assert.equal(r.rowCount, 1);
    assert.equal(r.rowAsArray, false); // the driver overwrites it with its own arrayMode
    assert.equal(r.viaNeonFetch, true);
  });

  test('fullResults via neon() options and the tagged template', async () => {
    const sqlFull = neon(stack.connectionString, { fullResults: true });
    const r = await sqlFull`SELECT ${'a'}::text AS t, 2::int8 AS n`;
    assert.deepEqual(r.rows, [{ t: 'a', n: '2' }]);
    assert.deepEqual(r.fields.map((f) => [f.name, f.dataTypeID, f.dataTypeSize]), [['t', 25, -1], ['n', 20, 8]]);
  });

  test('fullResults: command and rowCount from the command tag (CREATE, INSERT, UPDATE, DELETE, SELECT 0)', async () => {
    const t = uniq('cmd');
    const opts = { fullResults: true };
    let r = await sql.query(`CREATE TABLE ${t} (id int PRIMARY KEY, name varchar(20), amount numeric(10,2))`, [], opts);
    assert.deepEqual([r.command, r.rowCount, r.fields, r.rows], ['CREATE', null, [], []]);
    r = await sql.query(`INSERT INTO ${t} VALUES (1, 'a', 1.5), (2, 'b', 2), (3, 'c', NULL)`, [], opts);
    assert.deepEqual([r.command, r.rowCount, r.fields, r.rows], ['INSERT', 3, [], []]);
    r = await sql.query(`UPDATE ${t} SET name = name || '!' WHERE id >= $1`, [2], opts);
    assert.deepEqual([r.command, r.rowCount], ['UPDATE', 2]);
    r = await sql.query(`DELETE FROM ${t} WHERE id = 3`, [], opts);
    assert.deepEqual([r.command, r.rowCount], ['DELETE', 1]);
    r = await sql.query(`SELECT * FROM ${t} WHERE false`, [], opts);
    assert.deepEqual([r.command, r.rowCount, r.rows], ['SELECT', 0, []]);
    assert.equal(r.fields.length, 3);
    r = await sql.query(`DROP TABLE ${t}`, [], opts);
    assert.deepEqual([r.command, r.rowCount], ['DROP', null]);
  });

  test('fullResults: table columns carry the table OID, attnum, size and typmod (spec 5.1)', async () => {
    const t = uniq('meta');
    await sql.query(`CREATE TABLE ${t} (id int PRIMARY KEY, name varchar(20), amount numeric(10,2))`);
    await sql.query(`INSERT INTO ${t} VALUES (1, 'a', 1.5), (2, 'b', 2)`);
    const [{ oid }] = await sql.query(`SELECT '${t}'::regclass::oid AS oid`);
    const r = await sql.query(`UPDATE ${t} SET name = name RETURNING id, name, amount, id + 1 AS computed`, [], { fullResults: true });
    assert.deepEqual(r.fields, [
      { name: 'id', dataTypeID: 23, tableID: oid, columnID: 1, dataTypeSize: 4, dataTypeModifier: -1, format: 'text' },
      { name: 'name', dataTypeID: 1043, tableID: oid, columnID: 2, dataTypeSize: -1, dataTypeModifier: 24, format: 'text' },
      { name: 'amount', dataTypeID: 1700, tableID: oid, columnID: 3, dataTypeSize: -1, dataTypeModifier: (10 << 16 | 2) + 4, format: 'text' },
      { name: 'computed', dataTypeID: 23, tableID: 0, columnID: 0, dataTypeSize: 4, dataTypeModifier: -1, format: 'text' },
    ]);
    assert.deepEqual([r.command, r.rowCount], ['UPDATE', 2]);
    assert.deepEqual(r.rows.map((x) => x.amount).sort(), ['1.50', '2.00']);
    await sql.query(`DROP TABLE ${t}`);
  });

  test('arrayMode: rows as arrays, per neon() and per query', async () => {
    const sqlArr = neon(stack.connectionString, { arrayMode: true });
    assert.deepEqual(await sqlArr`SELECT 1 AS a, ${'b'}::text AS b, NULL AS c`, [[1, 'b', null]]);
    assert.deepEqual(await sql.query('SELECT 1 AS a, 2 AS b', [], { arrayMode: true }), [[1, 2]]);
    assert.deepEqual(await sqlArr.query('SELECT 1 AS a', [], { arrayMode: false }), [{ a: 1 }]);
  });

  test('duplicate column names: arrayMode keeps all, object mode keeps the last', async () => {
    assert.deepEqual(await sql.query('SELECT 1 AS a, 2 AS a', [], { arrayMode: true }), [[1, 2]]);
    assert.deepEqual(await sql.query('SELECT 1 AS a, 2 AS a'), [{ a: 2 }]);
  });

  test('arrayMode with fullResults', async () => {
    const r = await sql.query('SELECT 1 AS a, \'x\' AS b FROM generate_series(1, 2)', [], { arrayMode: true, fullResults: true });
    assert.deepEqual(r.rows, [[1, 'x'], [1, 'x']]);
    assert.equal(r.rowAsArray, true);
    assert.equal(r.rowCount, 2);
    assert.deepEqual(r.fields.map((f) => f.name), ['a', 'b']);
  });

  test('custom types option (what Drizzle and Prisma pass) gets the raw text', async () => {
    const types = { getTypeParser: (oid) => (oid === 20 ? (v) => BigInt(v) : (v) => `raw:${v}`) };
    const [r] = await sql.query('SELECT 9007199254740993::int8 AS n, true AS b, \'{"a":1}\'::jsonb AS j', [], { types });
    assert.deepEqual(r, { n: 9007199254740993n, b: 'raw:t', j: 'raw:{"a": 1}' });
  });
});

// ------------------------------------------------------------------------------------------------------
describe('transactions (batches, spec 3.2, 4.2, 8.2)', () => {
  const setting = (name) => sql`SELECT current_setting(${name}) AS v`;

  test('transaction([...]) returns one result per query, in order', async () => {
    const res = await sql.transaction([sql`SELECT 1 AS a`, sql`SELECT ${'two'}::text AS b`, sql.query('SELECT $1::int * 2 AS c', [21])]);
    assert.deepEqual(res, [[{ a: 1 }], [{ b: 'two' }], [{ c: 42 }]]);
  });

  test('transaction(fn) form', async () => {
    const res = await sql.transaction((txn) => [txn`SELECT 1 AS one`, txn`SELECT ${2}::int AS two`]);
    assert.deepEqual(res, [[{ one: 1 }], [{ two: 2 }]]);
  });

  test('all queries run in one transaction', async () => {
    const [[a], [b]] = await sql.transaction([
      sql`SELECT pg_current_xact_id()::text AS x, now() AS t`,
      sql`SELECT pg_current_xact_id()::text AS x, now() AS t`,
    ]);
    assert.equal(a.x, b.x);
    assert.equal(a.t.getTime(), b.t.getTime());
  });

  test('defaults: no options give the server defaults (read committed, read write, not deferrable)', async () => {
    const res = await sql.transaction([setting('transaction_isolation'), setting('transaction_read_only'), setting('transaction_deferrable')]);
    assert.deepEqual(res.map((r) => r[0].v), ['read committed', 'off', 'off']);
  });

  for (const [level, expected] of [['ReadUncommitted', 'read uncommitted'], ['ReadCommitted', 'read committed'],
    ['RepeatableRead', 'repeatable read'], ['Serializable', 'serializable']]) {
    test(`isolationLevel: '${level}'`, async () => {
      const [[r]] = await sql.transaction([setting('transaction_isolation')], { isolationLevel: level });
      assert.equal(r.v, expected);
    });
  }

  test('readOnly: true makes a READ ONLY transaction; false leaves the default', async () => {
    let [[r]] = await sql.transaction([setting('transaction_read_only')], { readOnly: true });
    assert.equal(r.v, 'on');
    [[r]] = await sql.transaction([setting('transaction_read_only')], { readOnly: false });
    assert.equal(r.v, 'off');
  });

  test('Serializable + readOnly + deferrable (spec 8.2)', async () => {
    const res = await sql.transaction([setting('transaction_isolation'), setting('transaction_read_only'), setting('transaction_deferrable')],
      { isolationLevel: 'Serializable', readOnly: true, deferrable: true });
    assert.deepEqual(res.map((r) => r[0].v), ['serializable', 'on', 'on']);
    const res2 = await sql.transaction([setting('transaction_deferrable')], { isolationLevel: 'Serializable', readOnly: true, deferrable: false });
    assert.equal(res2[0][0].v, 'off');
  });

  test('options given to neon() apply to its transactions', async () => {
    const sqlRR = neon(stack.connectionString, { isolationLevel: 'RepeatableRead', readOnly: true });
    const res = await sqlRR.transaction([setting('transaction_isolation'), setting('transaction_read_only')]);
    assert.deepEqual(res.map((r) => r[0].v), ['repeatable read', 'on']);
  });

  test('a write in a readOnly transaction fails with 25006 and commits nothing', async () => {
    const t = uniq('ro');
    await sql.query(`CREATE TABLE ${t} (id int)`);
    await rejectsWithDbError(sql.transaction([sql.query(`INSERT INTO ${t} VALUES (1)`)], { readOnly: true }),
      { code: '25006', severity: 'ERROR', message: 'cannot execute INSERT in a read-only transaction' });
    assert.deepEqual(await sql.query(`SELECT count(*) AS n FROM ${t}`), [{ n: '0' }]);
    await sql.query(`DROP TABLE ${t}`);
  });

  test('per-query arrayMode/fullResults inside a transaction, and transaction-level fullResults', async () => {
    const res = await sql.transaction([sql.query('SELECT 1 AS a', [], { arrayMode: true }), sql`SELECT 2 AS b`], { fullResults: true });
    assert.equal(res.length, 2);
    assert.deepEqual(res[0].rows, [[1]]);
    assert.equal(res[0].command, 'SELECT');
    assert.deepEqual(res[1].rows, [{ b: 2 }]);
    assert.equal(res[1].rowCount, 1);
    const arr = await sql.transaction([sql`SELECT 1 AS a`, sql`SELECT 2 AS b`], { arrayMode: true });
    assert.deepEqual(arr, [[[1]], [[2]]]);
  });

  test('writes in a transaction are committed together', async () => {
    const t = uniq('tx');
    await sql.query(`CREATE TABLE ${t} (id int PRIMARY KEY, v text)`);
    const res = await sql.transaction([
      sql.query(`INSERT INTO ${t} VALUES (1, 'a'), (2, 'b')`, [], { fullResults: true }),
      sql.query(`UPDATE ${t} SET v = v || '!' RETURNING id, v`),
      sql.query(`SELECT count(*) AS n FROM ${t}`),
    ]);
    assert.equal(res[0].command, 'INSERT');
    assert.equal(res[0].rowCount, 2);
    assert.deepEqual(res[1], [{ id: 1, v: 'a!' }, { id: 2, v: 'b!' }]);
    assert.deepEqual(res[2], [{ n: '2' }]);
    assert.deepEqual(await sql.query(`SELECT id, v FROM ${t} ORDER BY id`), [{ id: 1, v: 'a!' }, { id: 2, v: 'b!' }]);
    await sql.query(`DROP TABLE ${t}`);
  });

  test('an empty transaction returns []', async () => {
    assert.deepEqual(await sql.transaction([]), []);
  });
});

// ------------------------------------------------------------------------------------------------------
describe('errors: NeonDbError with the Postgres fields (spec 6.2, 6.3)', () => {
  test('division by zero: code, severity, message, file/line/routine as strings, no position', async () => {
    const err = await rejectsWithDbError(sql`SELECT 1/0 AS x`, {
      message: 'division by zero', code: '22012', severity: 'ERROR', routine: 'int4div', file: 'int.c',
      line: /^\d+$/, position: undefined, detail: undefined, hint: undefined, internalPosition: undefined,
      internalQuery: undefined, where: undefined, schema: undefined, table: undefined, column: undefined,
      dataType: undefined, constraint: undefined,
    });
    assert.equal(typeof err.line, 'string');
    assert.equal(err.sourceError, undefined);
  });

  test('undefined table: 42P01 with .position as a string', async () => {
    await rejectsWithDbError(sql`SELECT * FROM no_such_table_here`, {
      code: '42P01', severity: 'ERROR', position: '15', message: 'relation "no_such_table_here" does not exist',
    });
  });

  test('syntax error: 42601 with .position', async () => {
    await rejectsWithDbError(sql.query('SELECT 1 +'), { code: '42601', severity: 'ERROR', position: '11',
      message: 'syntax error at end of input' });
    await rejectsWithDbError(sql.query('SELEC 1'), { code: '42601', position: '1', message: 'syntax error at or near "SELEC"' });
  });

  test('position counts characters, not bytes', async () => {
    await rejectsWithDbError(sql.query("SELECT 'ééé', nosuchcolumn"), { code: '42703', position: '15' });
  });

  test('undefined function: .hint and .position', async () => {
    await rejectsWithDbError(sql`SELECT no_such_function(${1}::int)`, {
      code: '42883', position: '8', message: 'function no_such_function(integer) does not exist',
      hint: 'No function matches the given name and argument types. You might need to add explicit type casts.',
    });
  });

  test('invalid input for a parameter: 22P02', async () => {
    await rejectsWithDbError(sql`SELECT ${'abc'}::int AS n`, { code: '22P02', message: 'invalid input syntax for type integer: "abc"' });
  });

  test('unique violation: .detail, .schema, .table, .constraint', async () => {
    const t = uniq('uq');
    await sql.query(`CREATE TABLE ${t} (id int PRIMARY KEY)`);
    await sql.query(`INSERT INTO ${t} VALUES (1)`);
    await rejectsWithDbError(sql.query(`INSERT INTO ${t} VALUES ($1)`, [1]), {
      code: '23505', severity: 'ERROR', message: `duplicate key value violates unique constraint "${t}_pkey"`,
      detail: 'Key (id)=(1) already exists.', schema: 'public', table: t, constraint: `${t}_pkey`,
      routine: '_bt_check_unique', file: 'nbtinsert.c', column: undefined,
    });
    await sql.query(`DROP TABLE ${t}`);
  });

  test('not-null violation: .column', async () => {
    const t = uniq('nn');
    await sql.query(`CREATE TABLE ${t} (id int, name text NOT NULL)`);
    await rejectsWithDbError(sql.query(`INSERT INTO ${t} (id) VALUES (1)`), {
      code: '23502', column: 'name', table: t, schema: 'public',
      message: `null value in column "name" of relation "${t}" violates not-null constraint`,
    });
    await sql.query(`DROP TABLE ${t}`);
  });

  test('domain check violation: .dataType and .constraint', async () => {
    const d = uniq('posint');
    await sql.query(`CREATE DOMAIN ${d} AS int CHECK (VALUE > 0)`);
    await rejectsWithDbError(sql.query(`SELECT (-1)::${d}`), {
      code: '23514', dataType: d, constraint: `${d}_check`, schema: 'public',
    });
    await sql.query(`DROP DOMAIN ${d}`);
  });

  test('RAISE with DETAIL and HINT: .detail, .hint, .where', async () => {
    await rejectsWithDbError(sql.query(
      "DO $$BEGIN RAISE EXCEPTION 'boom %', 42 USING DETAIL = 'the detail', HINT = 'the hint', ERRCODE = 'P0001'; END$$"), {
      code: 'P0001', severity: 'ERROR', message: 'boom 42', detail: 'the detail', hint: 'the hint',
      where: 'PL/pgSQL function inline_code_block line 1 at RAISE',
    });
  });

  test('error inside a dynamic query: .internalQuery and .internalPosition, no .position', async () => {
    await rejectsWithDbError(sql.query("DO $$BEGIN EXECUTE 'SELECT 1 +'; END$$"), {
      code: '42601', internalQuery: 'SELECT 1 +', internalPosition: '11', position: undefined,
      where: 'PL/pgSQL function inline_code_block line 1 at EXECUTE',
    });
  });

  test('two statements in one query: 42601 (extended protocol, spec 4.1)', async () => {
    await rejectsWithDbError(sql.query('SELECT 1; SELECT 2'), {
      code: '42601', message: 'cannot insert multiple commands into a prepared statement',
    });
  });

  test('parameter count mismatch: 08P01', async () => {
    await rejectsWithDbError(sql.query('SELECT $1::int AS n', []), {
      code: '08P01', message: 'bind message supplies 0 parameters, but prepared statement "" requires 1',
    });
  });

  test('a user-raised NOTICE/WARNING is not an error', async () => {
    assert.deepEqual(await sql.query("DO $$BEGIN RAISE WARNING 'just a warning'; END$$"), []);
  });

  test('wrong password: 28P01, FATAL (bulkhead: 400 with the full body, unlike Neon)', async () => {
    const bad = neon(connString({ password: 'wrong-password' }));
    await rejectsWithDbError(bad`SELECT 1`, {
      code: '28P01', severity: 'FATAL', message: `password authentication failed for user "${PG_USER}"`,
    });
  });

  test('unknown database: 3D000, FATAL', async () => {
    const bad = neon(connString({ database: 'no_such_db' }));
    await rejectsWithDbError(bad`SELECT 1`, { code: '3D000', severity: 'FATAL', message: 'database "no_such_db" does not exist' });
  });

  test('a bulkhead-level error (bad isolation level): code and severity are "" (spec 6.2)', async () => {
    await rejectsWithDbError(sql.transaction([sql`SELECT 1`], { isolationLevel: 'Chaos' }), {
      message: 'invalid isolation level', code: '', severity: '',
    });
  });

  test('queries still work after errors (connections recovered or replaced)', async () => {
    const results = await Promise.allSettled(Array.from({ length: 10 }, (_, i) => (i % 2 ? sql`SELECT 1/0` : sql`SELECT ${i}::int AS i`)));
    results.forEach((r, i) => assert.equal(r.status, i % 2 ? 'rejected' : 'fulfilled'));
    assert.deepEqual(await sql`SELECT 'alive' AS s`, [{ s: 'alive' }]);
  });
});

// ------------------------------------------------------------------------------------------------------
describe('rollback on a mid-transaction error', () => {
  test('duplicate key in the third of four statements: the error is returned, nothing is committed', async () => {
    const t = uniq('rb');
    await sql.query(`CREATE TABLE ${t} (id int PRIMARY KEY)`);
    await rejectsWithDbError(sql.transaction([
      sql.query(`INSERT INTO ${t} VALUES (1)`),
      sql.query(`INSERT INTO ${t} VALUES (2)`),
      sql.query(`INSERT INTO ${t} VALUES (1)`),
      sql.query(`INSERT INTO ${t} VALUES (3)`),
    ]), { code: '23505', detail: 'Key (id)=(1) already exists.', table: t });
    assert.deepEqual(await sql.query(`SELECT count(*) AS n FROM ${t}`), [{ n: '0' }]);
    // and the table is usable: the same rows insert fine afterwards
    await sql.transaction([sql.query(`INSERT INTO ${t} VALUES (1)`), sql.query(`INSERT INTO ${t} VALUES (2)`)]);
    assert.deepEqual(await sql.query(`SELECT array_agg(id ORDER BY id) AS ids FROM ${t}`), [{ ids: [1, 2] }]);
    await sql.query(`DROP TABLE ${t}`);
  });

  test('an error with .position inside a transaction; DDL before it is rolled back too', async () => {
    const t = uniq('ddl');
    await rejectsWithDbError(sql.transaction([
      sql.query(`CREATE TABLE ${t} (id int)`),
      sql.query(`INSERT INTO ${t} VALUES (1)`),
      sql.query(`SELECT nosuchcol FROM ${t}`),
    ]), { code: '42703', position: '8', message: 'column "nosuchcol" does not exist' });
    assert.deepEqual(await sql`SELECT to_regclass(${t})::text AS r`, [{ r: null }]);
  });

  test('a failure at COMMIT (deferred foreign key) is an error and nothing is committed', async () => {
    const p = uniq('parent'), c = uniq('child');
    await sql.query(`CREATE TABLE ${p} (id int PRIMARY KEY)`);
    await sql.query(`CREATE TABLE ${c} (pid int REFERENCES ${p} DEFERRABLE INITIALLY DEFERRED)`);
    await rejectsWithDbError(sql.transaction([
      sql.query(`INSERT INTO ${p} VALUES (1)`),
      sql.query(`INSERT INTO ${c} VALUES (1), (99)`),
    ]), { code: '23503', table: c });
    assert.deepEqual(await sql.query(`SELECT (SELECT count(*) FROM ${p}) AS np, (SELECT count(*) FROM ${c}) AS nc`), [{ np: '0', nc: '0' }]);
    await sql.query(`DROP TABLE ${c}, ${p}`);
  });

  test('serialization: a Serializable batch sees a consistent snapshot and commits', async () => {
    const t = uniq('ser');
    await sql.query(`CREATE TABLE ${t} (id int)`);
    const res = await sql.transaction([
      sql.query(`INSERT INTO ${t} SELECT g FROM generate_series(1, 5) g`),
      sql.query(`SELECT sum(id) AS s FROM ${t}`),
    ], { isolationLevel: 'Serializable' });
    assert.deepEqual(res[1], [{ s: '15' }]);
    await sql.query(`DROP TABLE ${t}`);
  });
});

// ------------------------------------------------------------------------------------------------------
describe('endpoint and connection string (spec 1.2, 2.1)', () => {
  test('fetchEndpoint as a function gets (hostname, port as a string, { jwtAuth })', async () => {
    const calls = [];
    const saved = neonConfig.fetchEndpoint;
    neonConfig.fetchEndpoint = (host, port, opts) => { calls.push([host, port, opts]); return stack.endpoint; };
    try {
      const withPort = neon(`postgres://${PG_USER}:${encodeURIComponent('s3cr@t')}@EP-Mixed.LocalTest.me:5433/app`);
      assert.deepEqual(await withPort`SELECT 1 AS x`, [{ x: 1 }]);
      assert.deepEqual(await sql`SELECT 2 AS x`, [{ x: 2 }]);
    } finally {
      neonConfig.fetchEndpoint = saved;
    }
    assert.deepEqual(calls, [['ep-mixed.localtest.me', '5433', { jwtAuth: false }], ['db.localtest.me', '', { jwtAuth: false }]]);
  });

  test('a Neon-style connection string (sslmode, channel_binding, postgres: scheme) works', async () => {
    const s = neon(`postgres://${PG_USER}:s3cr%40t@ep-cool-name-123456.us-east-2.aws.neon.tech/app?sslmode=require&channel_binding=require`);
    assert.deepEqual(await s`SELECT current_user AS u, current_database() AS d`, [{ u: PG_USER, d: 'app' }]);
  });

  test('an IP literal host is accepted (bulkhead differs from Neon here)', async () => {
    const s = neon(connString({ host: '127.0.0.1' }));
    assert.deepEqual(await s`SELECT 1 AS x`, [{ x: 1 }]);
  });

  test('user, password and database as neon() options (driver 1.2.0 overrides)', async () => {
    const s = neon('postgresql://nobody@db.localtest.me/nodb', { user: PG_USER, password: () => 's3cr@t', database: 'app' });
    assert.deepEqual(await s`SELECT current_user AS u, current_database() AS d`, [{ u: PG_USER, d: 'app' }]);
  });
});

// ------------------------------------------------------------------------------------------------------
// Last: a graceful stop. node:test runs a file's tests one after another in the order they are declared.
test('bulkhead exits 0 on SIGTERM, with no sanitizer report', async () => {
  const res = await stack.stopBulkhead();
  assert.ok(!res.timedOut, `bulkhead did not exit after SIGTERM; stderr:\n${res.stderr.slice(-4000)}`);
  const report = sanitizerReport(res.stderr);
  assert.equal(report, null, `sanitizer report in bulkhead's stderr:\n${res.stderr.slice(-8000)}`);
  assert.equal(res.code, 0, `bulkhead exited with ${JSON.stringify({ code: res.code, signal: res.signal })}; stderr:\n${res.stderr.slice(-4000)}`);
});
