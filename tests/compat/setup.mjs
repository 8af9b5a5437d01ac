// Shared fixture of the compat suite: a throwaway PostgreSQL 15 and bulkhead in front of it, serving the Neon
// "SQL over HTTP" protocol on POST /sql (spec: ../shared/protocol/neon-sql-over-http.md, issue 4).
//
//   const stack = await startStack();   // in before(): Postgres (scram-sha-256 role + database), then bulkhead
//   stack.connectionString              // postgresql://alice:s3cr%40t@db.localtest.me/app
//   stack.endpoint                      // http://127.0.0.1:PORT/sql, already set as neonConfig.fetchEndpoint
//   await stack.stopBulkhead()          // SIGTERM, bounded wait: { code, signal, stderr }
//   await stack.stop()                  // in after(): whatever is still running, then the temp dirs
//
// Every wait is a bounded poll of a condition, never a fixed sleep. Ports are picked free on 127.0.0.1 and
// re-picked when a bind races with another process (both builds of scripts/test.sh run at the same time).
// Env: BULKHEAD_BIN (default <repo>/build/proxy/bulkhead), BULKHEAD_TEST_TMP (where bulkhead's config and
// logs go; kept for post-mortems), BULKHEAD_SANITIZED=1 (longer bounds), PG_BIN (default Debian's PG 15),
// COMPAT_KEEP_TMP=1 (keep the Postgres data dir too).
import { spawn, execFile } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { neonConfig } from '@neondatabase/serverless';

const execFileP = promisify(execFile);
const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, '..', '..');
export const PG_BIN = process.env.PG_BIN || '/usr/lib/postgresql/15/bin';
const SLOW = process.env.BULKHEAD_SANITIZED === '1' ? 3 : 1;
export const START_TIMEOUT_MS = 30_000 * SLOW;
export const STOP_TIMEOUT_MS = 30_000 * SLOW;

// The role and database the tests use. The password has an '@' so the driver's percent-encoding of the
// userinfo (s3cr%40t on the wire) and the server's decoding are exercised on every request.
export const PG_USER = 'alice';
export const PG_PASSWORD = 's3cr@t';
export const PG_DATABASE = 'app';
// Any host: the config maps every connection-string host ("*") to the one Postgres. It never resolves.
export const PG_HOST = 'db.localtest.me';

export function connString({ user = PG_USER, password = PG_PASSWORD, database = PG_DATABASE, host = PG_HOST } = {}) {
  const userinfo = password === null ? encodeURIComponent(user)
    : `${encodeURIComponent(user)}:${encodeURIComponent(password)}`;
  return `postgresql://${userinfo}@${host}/${encodeURIComponent(database)}`;
}

const SANITIZER_MARKERS = ['ERROR: AddressSanitizer', 'ERROR: LeakSanitizer', 'runtime error:',
  'WARNING: ThreadSanitizer', 'ERROR: ThreadSanitizer', 'ERROR: MemorySanitizer'];

// ------------------------------------------------------------------------------------------------------
// small utilities

/** A port that was free a moment ago on 127.0.0.1 (bind to port 0 and give it back). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Polls pred() (sync or async) until it returns a truthy value, which is returned; throws after timeoutMs. */
export async function waitUntil(pred, { timeoutMs = START_TIMEOUT_MS, intervalMs = 10, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let lastErr;
  for (;;) {
    try {
      const v = await pred();
      if (v) return v;
    } catch (e) {
      if (e && e.fatal) throw e; // the thing being waited for is gone for good
      lastErr = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}` + (lastErr ? ` (last error: ${lastErr})` : ''));
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

export function canConnect(port, host = '127.0.0.1') {
  return new Promise((resolve) => {
    const s = net.connect({ port, host });
    s.setTimeout(1000);
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
    s.once('timeout', () => { s.destroy(); resolve(false); });
  });
}

function fatal(msg) {
  const e = new Error(msg);
  e.fatal = true;
  return e;
}

function readText(p) {
  try { return fs.readFileSync(p, 'utf8'); } catch { return ''; }
}

const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;

/** Runs a PostgreSQL tool, as the `postgres` OS user when we are root (initdb refuses to run as root). */
async function runPgTool(tool, args, opts = {}) {
  const bin = path.join(PG_BIN, tool);
  const [cmd, argv] = isRoot ? ['runuser', ['-u', 'postgres', '--', bin, ...args]] : [bin, args];
  try {
    return await execFileP(cmd, argv, { timeout: START_TIMEOUT_MS, maxBuffer: 16 << 20, ...opts });
  } catch (e) {
    throw new Error(`${tool} ${args.join(' ')} failed: ${e.message}\n${e.stdout || ''}${e.stderr || ''}`);
  }
}

function sqlLiteral(s) {
  return `'${String(s).replace(/'/g, "''")}'`;
}

// ------------------------------------------------------------------------------------------------------
// PostgreSQL

// Server defaults the tests deliberately make "hostile": bulkhead promises (spec, "bulkhead's decisions")
// to set client_encoding=UTF8, DateStyle=ISO, MDY, IntervalStyle=postgres, bytea_output=hex and
// TimeZone=UTC on every upstream connection, so the driver must never see these.
export const HOSTILE_SERVER_DEFAULTS = {
  DateStyle: 'SQL, DMY',
  TimeZone: 'Asia/Kolkata',
  IntervalStyle: 'iso_8601',
  bytea_output: 'escape',
};

export class Postgres {
  constructor() {
    this.dir = null;
    this.port = null;
    this.running = false;
  }

  get dataDir() { return path.join(this.dir, 'data'); }
  get logPath() { return path.join(this.dir, 'postgres.log'); }

  async start() {
    // Under /tmp, not under BULKHEAD_TEST_TMP: the postgres user must be able to reach it (and a unix
    // socket path is limited to ~107 bytes).
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bulkhead-compat-pg-'));
    if (isRoot) {
      const { stdout } = await execFileP('id', ['-u', 'postgres']);
      const { stdout: g } = await execFileP('id', ['-g', 'postgres']);
      fs.chownSync(this.dir, Number(stdout.trim()), Number(g.trim()));
    }
    await runPgTool('initdb', ['-D', this.dataDir, '-U', 'postgres', '--auth-local=trust',
      '--auth-host=scram-sha-256', '-E', 'UTF8', '--no-locale', '--no-sync', '--no-instructions']);
    const conf = path.join(this.dataDir, 'postgresql.conf');
    const hostile = Object.entries(HOSTILE_SERVER_DEFAULTS).map(([k, v]) => `${k} = ${sqlLiteral(v)}`);
    fs.appendFileSync(conf, ['', '# bulkhead compat suite', "listen_addresses = '127.0.0.1'",
      `unix_socket_directories = ${sqlLiteral(this.dir)}`, 'fsync = off', 'synchronous_commit = off',
      'full_page_writes = off', "password_encryption = 'scram-sha-256'", 'max_connections = 50',
      ...hostile, ''].join('\n'));
    // pg_hba.conf from initdb: local trust (setup below), host scram-sha-256 (what bulkhead uses)
    let lastErr;
    for (let attempt = 0; attempt < 5; attempt++) {
      this.port = await freePort();
      fs.appendFileSync(conf, `port = ${this.port}\n`); // the last setting in the file wins
      try {
        await runPgTool('pg_ctl', ['-D', this.dataDir, '-l', this.logPath, '-w', '-t',
          String(Math.ceil(START_TIMEOUT_MS / 1000)), 'start']);
        this.running = true;
        break;
      } catch (e) {
        lastErr = e;
        const log = readText(this.logPath);
        if (!/could not bind|Address already in use|could not create any TCP\/IP sockets/.test(log)) {
          throw new Error(`${e.message}\npostgres.log:\n${log.slice(-4000)}`);
        }
      }
    }
    if (!this.running) throw lastErr;
    // readiness: pg_ctl -w has polled for us; confirm over TCP too, then create the role and database
    await waitUntil(() => canConnect(this.port), { what: `postgres to accept on ${this.port}` });
    await this.psql(`CREATE ROLE ${PG_USER} LOGIN PASSWORD ${sqlLiteral(PG_PASSWORD)}`);
    await this.psql(`CREATE DATABASE ${PG_DATABASE} OWNER ${PG_USER}`);
    // scram-sha-256 for the role (password_encryption above), checked rather than assumed
    const verifier = await this.psql(`SELECT rolpassword FROM pg_authid WHERE rolname = ${sqlLiteral(PG_USER)}`);
    if (!verifier.startsWith('SCRAM-SHA-256$')) throw new Error(`role ${PG_USER} has no SCRAM verifier: ${verifier}`);
    return this;
  }

  /** Runs SQL as the superuser over the unix socket (trust), returns psql's unaligned output. */
  async psql(sql, database = 'postgres') {
    const { stdout } = await runPgTool('psql', ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-h', this.dir,
      '-p', String(this.port), '-U', 'postgres', '-d', database, '-c', sql]);
    return stdout.trim();
  }

  async stop() {
    if (this.running) {
      this.running = false;
      await runPgTool('pg_ctl', ['-D', this.dataDir, '-m', 'fast', '-w', '-t',
        String(Math.ceil(STOP_TIMEOUT_MS / 1000)), 'stop']);
    }
    if (this.dir && process.env.COMPAT_KEEP_TMP !== '1') {
      fs.rmSync(this.dir, { recursive: true, force: true });
      this.dir = null;
    }
  }
}

// ------------------------------------------------------------------------------------------------------
// bulkhead

export function bulkheadBin() {
  const bin = process.env.BULKHEAD_BIN || path.join(REPO, 'build', 'proxy', 'bulkhead');
  return path.isAbsolute(bin) ? bin : path.resolve(REPO, bin);
}

/** The YAML config (issue 4 keys: databases.<name>, routes with database:). */
export function bulkheadConfig({ port, adminPort, pgPort }) {
  return [
    'workers: 1',
    `listeners: [{name: pub, address: "127.0.0.1:${port}"}]`,
    `admin: {address: "127.0.0.1:${adminPort}"}`,
    'log: {level: info, access: off}',
    'shutdown: {drain_timeout: 5s}',
    `databases: { main: { hosts: ["*"], server: "host=127.0.0.1 port=${pgPort}" } }`,
    'routes: [{ match: { path_prefix: /sql, methods: [POST, OPTIONS] }, database: main }]',
    '',
  ].join('\n');
}

export class Bulkhead {
  constructor({ pgPort }) {
    this.pgPort = pgPort;
    this.bin = bulkheadBin();
    this.proc = null;
    this.exit = null; // { code, signal } once exited
  }

  get url() { return `http://127.0.0.1:${this.port}`; }
  stderr() { return readText(this.stderrPath); }

  async start() {
    if (!fs.existsSync(this.bin)) throw new Error(`bulkhead binary not found at ${this.bin} (set BULKHEAD_BIN)`);
    const base = process.env.BULKHEAD_TEST_TMP || os.tmpdir();
    fs.mkdirSync(base, { recursive: true });
    this.dir = fs.mkdtempSync(path.join(base, 'compat-bulkhead-'));
    let lastErr;
    for (let attempt = 0; attempt < 5; attempt++) {
      this.port = await freePort();
      this.adminPort = await freePort();
      this.configPath = path.join(this.dir, `bulkhead-${this.port}.yaml`);
      this.stderrPath = path.join(this.dir, `bulkhead-${this.port}.stderr`);
      this.stdoutPath = path.join(this.dir, `bulkhead-${this.port}.stdout`);
      fs.writeFileSync(this.configPath, bulkheadConfig({ port: this.port, adminPort: this.adminPort, pgPort: this.pgPort }));
      try {
        await this._spawnAndWait();
        return this;
      } catch (e) {
        lastErr = e;
        if (!/in use|EADDRINUSE/i.test(this.stderr())) break; // only a lost port race is worth retrying
      }
    }
    throw lastErr;
  }

  async _spawnAndWait() {
    const out = fs.openSync(this.stdoutPath, 'w');
    const err = fs.openSync(this.stderrPath, 'w');
    this.exit = null;
    this.proc = spawn(this.bin, ['-c', this.configPath], { stdio: ['ignore', out, err] });
    fs.closeSync(out);
    fs.closeSync(err);
    this.exited = new Promise((resolve) => {
      this.proc.once('exit', (code, signal) => { this.exit = { code, signal }; resolve(this.exit); });
      this.proc.once('error', (e) => { this.exit = { code: null, signal: null, error: e }; resolve(this.exit); });
    });
    await waitUntil(async () => {
      if (this.exit) {
        throw fatal(`bulkhead exited (${JSON.stringify(this.exit)}) before accepting; config ${this.configPath}:\n`
          + `${readText(this.configPath)}stderr:\n${this.stderr().slice(-4000)}`);
      }
      return canConnect(this.port);
    }, { what: `bulkhead to accept on ${this.port}` });
  }

  /** SIGTERM and a bounded wait. Returns { code, signal, stderr }; kills it if it does not exit in time. */
  async stop() {
    if (!this.proc) return null;
    if (!this.exit) this.proc.kill('SIGTERM');
    let timer;
    const timeout = new Promise((resolve) => { timer = setTimeout(() => resolve(null), STOP_TIMEOUT_MS); });
    const res = await Promise.race([this.exited, timeout]);
    clearTimeout(timer);
    if (!res) {
      this.proc.kill('SIGKILL');
      await this.exited;
      return { code: null, signal: 'SIGKILL', timedOut: true, stderr: this.stderr() };
    }
    return { ...res, stderr: this.stderr() };
  }
}

export function sanitizerReport(stderr) {
  return SANITIZER_MARKERS.find((m) => stderr.includes(m)) || null;
}

// ------------------------------------------------------------------------------------------------------
// the whole stack

export async function startStack() {
  const pg = new Postgres();
  const stack = { pg, bh: null };
  stack.stop = async () => {
    const errors = [];
    if (stack.bh) {
      try { await stack.bh.stop(); } catch (e) { errors.push(e); }
    }
    try { await pg.stop(); } catch (e) { errors.push(e); }
    if (errors.length) throw errors[0];
  };
  stack.stopBulkhead = () => stack.bh.stop();
  try {
    await pg.start();
    stack.bh = await new Bulkhead({ pgPort: pg.port }).start();
  } catch (e) {
    await stack.stop().catch(() => {});
    throw e;
  }
  stack.endpoint = `${stack.bh.url}/sql`;
  stack.connectionString = connString();
  neonConfig.fetchEndpoint = stack.endpoint;
  return stack;
}
