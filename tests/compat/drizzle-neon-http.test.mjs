// Drizzle ORM's neon-http driver (pinned in package.json) on top of the real @neondatabase/serverless, against
// bulkhead's POST /sql. A separate file (so a separate process) on purpose: drizzle-orm/neon-http replaces the
// driver's global type parsers for dates, timestamps and intervals (spec 5.3, last paragraph) and parses
// the ISO text itself, which only works because bulkhead sets DateStyle=ISO and IntervalStyle=postgres.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { neon, NeonDbError } from '@neondatabase/serverless';
import { drizzle } from 'drizzle-orm/neon-http';
import { sql as dsql, eq, gt, asc } from 'drizzle-orm';
import { pgTable, serial, text, integer, boolean, jsonb, timestamp, numeric, bigint, date, interval, customType } from 'drizzle-orm/pg-core';
import { startStack, sanitizerReport } from './setup.mjs';

const bytea = customType({ dataType: () => 'bytea' });

const TABLE = `drizzle_items_${process.pid}`;
const items = pgTable(TABLE, {
  id: serial('id').primaryKey(),
  name: text('name').notNull().unique(),
  qty: integer('qty').notNull().default(0),
  active: boolean('active').notNull().default(true),
  meta: jsonb('meta').$type(),
  createdAt: timestamp('created_at', { withTimezone: true, mode: 'date' }).notNull().defaultNow(),
  price: numeric('price', { precision: 12, scale: 2 }),
  big: bigint('big', { mode: 'bigint' }),
  day: date('day'),
  span: interval('span'),
  blob: bytea('blob'),
});

let stack;
let db;

before(async () => {
  stack = await startStack();
  db = drizzle({ client: neon(stack.connectionString) });
  await db.execute(dsql.raw(`CREATE TABLE ${TABLE} (id serial PRIMARY KEY, name text NOT NULL UNIQUE,
    qty integer NOT NULL DEFAULT 0, active boolean NOT NULL DEFAULT true, meta jsonb,
    created_at timestamptz NOT NULL DEFAULT now(), price numeric(12,2), big bigint, day date, span interval, blob bytea)`));
});

after(async () => {
  if (stack) await stack.stop();
});

/** The NeonDbError under Drizzle's DrizzleQueryError wrapper (drizzle-orm >= 0.44 wraps query errors). */
function neonCause(e) {
  let cur = e;
  while (cur && !(cur instanceof NeonDbError)) cur = cur.cause;
  return cur;
}

describe('drizzle-orm neon-http', () => {
  test('insert ... returning maps every column type', async () => {
    const when = new Date(Date.UTC(2024, 0, 2, 3, 4, 5, 678));
    const [row] = await db.insert(items).values({
      name: 'widget', qty: 3, meta: { tags: ['a', 'b'], n: 1.5, nested: { ok: true } }, createdAt: when,
      price: '19.90', big: 9007199254740993n, day: '2024-02-29', span: '1 day 02:03:04', blob: Buffer.from([0xde, 0xad]),
    }).returning();
    assert.equal(typeof row.id, 'number');
    assert.equal(row.name, 'widget');
    assert.equal(row.qty, 3);
    assert.equal(row.active, true);
    assert.deepEqual(row.meta, { tags: ['a', 'b'], n: 1.5, nested: { ok: true } });
    assert.ok(row.createdAt instanceof Date);
    assert.equal(row.createdAt.getTime(), when.getTime());
    assert.equal(row.price, '19.90');
    assert.equal(row.big, 9007199254740993n);
    assert.equal(row.day, '2024-02-29'); // Drizzle keeps the ISO date string (DateStyle=ISO)
    assert.equal(row.span, '1 day 02:03:04'); // IntervalStyle=postgres
    assert.deepEqual(Buffer.from(row.blob), Buffer.from([0xde, 0xad]));
  });

  test('select with where, order by; defaults filled in by Postgres', async () => {
    await db.insert(items).values([{ name: 'a1', qty: 1 }, { name: 'a2', qty: 2 }, { name: 'a3', qty: 30, active: false }]);
    const rows = await db.select({ name: items.name, qty: items.qty, active: items.active, meta: items.meta })
      .from(items).where(gt(items.qty, 1)).orderBy(asc(items.qty));
    assert.deepEqual(rows.filter((r) => r.name.startsWith('a')), [
      { name: 'a2', qty: 2, active: true, meta: null },
      { name: 'a3', qty: 30, active: false, meta: null },
    ]);
    const [one] = await db.select().from(items).where(eq(items.name, 'a1'));
    assert.ok(one.createdAt instanceof Date && Math.abs(one.createdAt.getTime() - Date.now()) < 60 * 60 * 1000,
      `createdAt ${one.createdAt} should be about now (timestamptz parsed in the right zone)`);
  });

  test('update and delete report rowCount (from the command tag)', async () => {
    await db.insert(items).values([{ name: 'u1' }, { name: 'u2' }]);
    const upd = await db.update(items).set({ qty: 7 }).where(dsql`${items.name} like 'u%'`);
    assert.equal(upd.rowCount, 2);
    assert.equal(upd.command, 'UPDATE');
    const del = await db.delete(items).where(eq(items.name, 'u1'));
    assert.equal(del.rowCount, 1);
  });

  test('db.execute(sql`...`) with parameters returns the full result', async () => {
    const res = await db.execute(dsql`SELECT ${42}::int AS n, ${'x'}::text AS t, ${null}::text AS z`);
    assert.deepEqual(res.rows, [{ n: 42, t: 'x', z: null }]);
    assert.equal(res.rowCount, 1);
    assert.deepEqual(res.fields.map((f) => f.name), ['n', 't', 'z']);
  });

  test('db.batch runs in one transaction', async () => {
    const [ins, sel] = await db.batch([
      db.insert(items).values({ name: 'b1', qty: 5 }).returning({ id: items.id }),
      db.select({ n: dsql`count(*)::int` }).from(items).where(eq(items.name, 'b1')),
    ]);
    assert.equal(ins.length, 1);
    assert.deepEqual(sel, [{ n: 1 }]);
  });

  test('db.batch with a failing statement rolls back the whole batch', async () => {
    let err;
    await assert.rejects(db.batch([
      db.insert(items).values({ name: 'rollback-me' }),
      db.insert(items).values({ name: 'widget' }), // unique violation
    ]), (e) => { err = e; return true; });
    const cause = neonCause(err);
    assert.ok(cause, `expected a NeonDbError under ${err && err.name}: ${err && err.message}`);
    assert.equal(cause.code, '23505');
    assert.equal(cause.constraint, `${TABLE}_name_key`); // named by Postgres (CREATE TABLE above)
    assert.equal(cause.table, TABLE);
    const rows = await db.select().from(items).where(eq(items.name, 'rollback-me'));
    assert.deepEqual(rows, []);
  });

  test('a query error carries the Postgres fields through Drizzle', async () => {
    let err;
    await assert.rejects(db.execute(dsql`SELECT * FROM no_such_drizzle_table`), (e) => { err = e; return true; });
    const cause = neonCause(err);
    assert.ok(cause, `expected a NeonDbError under ${err && err.name}: ${err && err.message}`);
    assert.equal(cause.code, '42P01');
    assert.equal(cause.severity, 'ERROR');
    assert.equal(cause.position, '15');
  });
});

test('bulkhead exits 0 on SIGTERM, with no sanitizer report', async () => {
  const res = await stack.stopBulkhead();
  assert.ok(!res.timedOut, `bulkhead did not exit after SIGTERM; stderr:\n${res.stderr.slice(-4000)}`);
  assert.equal(sanitizerReport(res.stderr), null, `sanitizer report in bulkhead's stderr:\n${res.stderr.slice(-8000)}`);
  assert.equal(res.code, 0, `bulkhead exited with ${JSON.stringify({ code: res.code, signal: res.signal })}; stderr:\n${res.stderr.slice(-4000)}`);
});
