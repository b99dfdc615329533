// The job-store source against real SQLite files: the engine's fixture (copied), stores built
// with our schema module, writers and lock holders in child processes (so locks are real).
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { StoreReader, readStoreOnce, storeStatements } from '../../src/sources/store.js';
import {
  agentExecutorState,
  createStepwiseDb,
  fillHistory,
  insertEvent,
  insertJob,
  insertRun,
  pyIsoformat,
  pyJsonDumps,
  updateJob,
  updateRun,
  STEPWISE_SCHEMA_SQL,
} from '../../src/demo/kit/stepwise-schema.js';

// The fixture lives in the repository (test/fixtures), never outside it.
const FIXTURE_DIR = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../fixtures/stepwise-0.46.1-leak');
const require = createRequire(import.meta.url);
const BETTER_SQLITE3 = require.resolve('better-sqlite3');

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'store-test-'));
});
afterEach(async () => {
  for (const c of children.splice(0)) await c.kill();
  fs.rmSync(dir, { recursive: true, force: true });
});

const ls = (d: string = dir): string[] => fs.readdirSync(d).sort();
const sha = (p: string): string => createHash('sha256').update(fs.readFileSync(p)).digest('hex');
const none = new Set<number>();

// ── a SQL writer in a child process ─────────────────────────────────────────────────────────

const CHILD_SCRIPT = `
const Database = require(process.env.BSQ);
const db = new Database(process.argv[1], { fileMustExist: true, timeout: 5000 });
const rl = require('node:readline').createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const m = JSON.parse(line);
  let reply;
  try {
    if (m.op === 'exec') db.exec(m.sql);
    else if (m.op === 'run') db.prepare(m.sql).run(...(m.params || []));
    else if (m.op === 'close') db.close();
    reply = { ok: true };
  } catch (e) { reply = { ok: false, error: String(e) }; }
  process.stdout.write(JSON.stringify(reply) + '\\n');
});
rl.on('close', () => process.exit(0));
process.stdout.write(JSON.stringify({ ok: true, ready: true }) + '\\n');
`;

class SqlChild {
  private readonly waiters: ((v: { ok: boolean; error?: string }) => void)[] = [];
  readonly exited: Promise<void>;
  constructor(readonly proc: ChildProcess) {
    createInterface({ input: proc.stdout! }).on('line', (line) => this.waiters.shift()?.(JSON.parse(line)));
    this.exited = new Promise((resolve) => proc.once('exit', () => resolve()));
  }
  static async start(dbPath: string): Promise<SqlChild> {
    const proc = spawn(process.execPath, ['-e', CHILD_SCRIPT, dbPath], {
      env: { ...process.env, BSQ: BETTER_SQLITE3 },
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    const child = new SqlChild(proc);
    children.push(child);
    await child.next(); // ready
    return child;
  }
  private next(): Promise<{ ok: boolean; error?: string }> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }
  async send(msg: Record<string, unknown>): Promise<void> {
    const reply = this.next();
    this.proc.stdin!.write(`${JSON.stringify(msg)}\n`);
    const r = await reply;
    if (!r.ok) throw new Error(`child: ${r.error}`);
  }
  exec(sql: string): Promise<void> {
    return this.send({ op: 'exec', sql });
  }
  run(sql: string, params: unknown[] = []): Promise<void> {
    return this.send({ op: 'run', sql, params });
  }
  async closeCleanly(): Promise<void> {
    await this.send({ op: 'close' });
    this.proc.stdin!.end();
    await this.exited;
  }
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.kill(signal);
    await this.exited;
  }
}
const children: SqlChild[] = [];

// Rows written by the child, shaped like the engine's.
async function childJob(c: SqlChild, id: string, status: string): Promise<void> {
  const now = pyIsoformat();
  await c.run('INSERT INTO jobs (id, objective, status, created_at, updated_at, name) VALUES (?, ?, ?, ?, ?, ?)', [
    id,
    'child job',
    status,
    now,
    now,
    `name-${id}`,
  ]);
}
async function childRun(c: SqlChild, id: string, jobId: string, pid: number, status = 'running'): Promise<void> {
  const open = status === 'running';
  await c.run(
    'INSERT INTO step_runs (id, job_id, step_name, attempt, status, executor_state, started_at, completed_at, pid) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?)',
    [
      id,
      jobId,
      'work',
      status,
      pyJsonDumps(agentExecutorState({ pid, interpolatedAgent: 'claude' })),
      pyIsoformat(),
      open ? null : pyIsoformat(),
      open ? pid : null,
    ],
  );
}

function newStore(name = 'stepwise.db', opts: { old?: boolean; wal?: boolean } = {}): { p: string; db: Database.Database } {
  const p = path.join(dir, name);
  return { p, db: createStepwiseDb(p, opts) };
}

// ── the engine's own fixture ────────────────────────────────────────────────────────────────

describe('the stepwise 0.46.1 fixture', () => {
  interface Scenario {
    name: string;
    jobs: { job_id: string; status: string }[];
    adapter_top_pid: number;
  }
  const expected = JSON.parse(fs.readFileSync(path.join(FIXTURE_DIR, 'expected.json'), 'utf8')) as {
    scenarios: Scenario[];
  };
  const allPids = new Set(expected.scenarios.map((s) => s.adapter_top_pid));

  it("the stores we build carry the engine's own CREATE statements, byte for byte", () => {
    const db = new Database(path.join(FIXTURE_DIR, 'stepwise.db'), { readonly: true, fileMustExist: true });
    try {
      const rows = db.prepare("SELECT sql FROM sqlite_master WHERE type = 'table' AND name IN ('jobs', 'step_runs', 'events') ORDER BY name").all() as { sql: string }[];
      expect(rows).toHaveLength(3);
      for (const r of rows) expect(STEPWISE_SCHEMA_SQL).toContain(`${r.sql};`);
    } finally {
      db.close();
    }
  });

  it('returns the 9 runs with their pids, agents and job statuses', () => {
    const p = path.join(dir, 'stepwise.db');
    fs.copyFileSync(path.join(FIXTURE_DIR, 'stepwise.db'), p);
    const hash = sha(p);
    const before = ls();
    const reader = new StoreReader({ dbPath: p });
    const { health, snapshot } = reader.read({ pidsOfInterest: allPids });
    expect(health.ok).toBe(true);
    expect(health.error).toBeUndefined();
    expect(snapshot).not.toBeNull();
    const s = snapshot!;
    expect(s.runs).toHaveLength(9);
    expect(s.schema.stepRunsPidColumn).toBe(true);
    expect(s.schema.schemaVersion).toBeGreaterThan(0);
    for (const run of s.runs) {
      expect(run.agent).toBe('claude');
      expect(run.inVm).toBe(false);
      expect(run.stepName).toBe('work');
      expect(run.attempt).toBe(1);
    }
    for (const sc of expected.scenarios) {
      const runs = s.runs.filter((r) => r.pid === sc.adapter_top_pid);
      expect(runs.map((r) => r.jobId).sort(), sc.name).toEqual(sc.jobs.map((j) => j.job_id).sort());
      for (const j of sc.jobs) expect(s.jobs[j.job_id]?.status, `${sc.name} ${j.job_id}`).toBe(j.status);
    }
    // The adapter shared by a running and an abandoned job is named by two runs.
    expect(s.runs.filter((r) => r.pid === 22776).map((r) => r.status).sort()).toEqual(['completed', 'running']);
    // Abandoned jobs carry the reason from their job.failed event; the names come along.
    for (const id of ['job-eb3d1747', 'job-9dedfe85', 'job-6d2b921c', 'job-4e2900ce']) {
      expect(s.jobs[id]?.failReason).toBe('abandoned');
    }
    expect(s.jobs['job-8cbb6fba']?.failReason).toBeUndefined();
    expect(s.jobs['job-eb3d1747']?.name).toBe('acceptance-leak-1-abandoned');
    // Second read: incremental, same answer.
    const again = reader.read({ pidsOfInterest: allPids });
    expect(reader.lastReadStats?.kind).toBe('incremental');
    expect(again.snapshot?.runs).toEqual(s.runs);
    expect(ls()).toEqual(before);
    expect(sha(p)).toBe(hash);
  });

  it('without pids of interest returns only the open runs', () => {
    const p = path.join(dir, 'stepwise.db');
    fs.copyFileSync(path.join(FIXTURE_DIR, 'stepwise.db'), p);
    const { snapshot } = readStoreOnce(p, { pidsOfInterest: none });
    expect(snapshot!.runs.map((r) => [r.id, r.pid, r.status])).toEqual([
      ['run-7fa1969c', 22767, 'running'],
      ['run-65a5d6cd', 22776, 'running'],
    ]);
    expect(Object.keys(snapshot!.jobs).sort()).toEqual(['job-5a5bfdb9', 'job-cff0efb2']);
  });
});

// ── WAL stores and their -wal/-shm files ────────────────────────────────────────────────────

describe('WAL-mode stores', () => {
  it('reads while a writer process holds the store open, and sees its writes incrementally', async () => {
    const { p, db } = newStore('stepwise.db', { wal: true });
    db.close();
    const writer = await SqlChild.start(p);
    await childJob(writer, 'job-a', 'running');
    await childRun(writer, 'run-a', 'job-a', 4242);
    expect(ls()).toEqual(['stepwise.db', 'stepwise.db-shm', 'stepwise.db-wal']);

    const reader = new StoreReader({ dbPath: p });
    let r = reader.read({ pidsOfInterest: none });
    expect(r.health).toMatchObject({ ok: true });
    expect(reader.lastReadStats).toMatchObject({ kind: 'full', openMode: 'normal' });
    expect(r.snapshot!.runs.map((x) => [x.id, x.pid, x.status])).toEqual([['run-a', 4242, 'running']]);

    // The engine abandons job-a (run completes, job fails) and starts job-b.
    await writer.run("UPDATE step_runs SET status = 'completed', completed_at = ?, pid = NULL WHERE id = 'run-a'", [pyIsoformat()]);
    await writer.run("UPDATE jobs SET status = 'failed', updated_at = ? WHERE id = 'job-a'", [pyIsoformat()]);
    await writer.run("INSERT INTO events (id, job_id, timestamp, type, data) VALUES ('evt-1', 'job-a', ?, 'job.failed', ?)", [
      pyIsoformat(),
      pyJsonDumps({ reason: 'abandoned', step: 'work', rule: 'abandon-always' }),
    ]);
    await childJob(writer, 'job-b', 'running');
    await childRun(writer, 'run-b', 'job-b', 4343);

    r = reader.read({ pidsOfInterest: new Set([4242]) });
    expect(reader.lastReadStats).toMatchObject({ kind: 'incremental', newRows: 1 });
    expect(r.snapshot!.runs.map((x) => [x.id, x.pid, x.status])).toEqual([
      ['run-a', 4242, 'completed'],
      ['run-b', 4343, 'running'],
    ]);
    expect(r.snapshot!.jobs['job-a']).toMatchObject({ status: 'failed', failReason: 'abandoned', name: 'name-job-a' });

    // 4242 is gone: its finished run is no longer reported.
    r = reader.read({ pidsOfInterest: none });
    expect(r.snapshot!.runs.map((x) => x.id)).toEqual(['run-b']);
    expect(ls()).toEqual(['stepwise.db', 'stepwise.db-shm', 'stepwise.db-wal']);

    // Clean shutdown of the last writer removes -wal/-shm; reading must not bring them back.
    await writer.closeCleanly();
    expect(ls()).toEqual(['stepwise.db']);
    const hash = sha(p);
    r = reader.read({ pidsOfInterest: new Set([4242]) });
    expect(r.health.ok).toBe(true);
    expect(reader.lastReadStats).toMatchObject({ kind: 'incremental', openMode: 'immutable' });
    expect(r.snapshot!.runs.map((x) => x.id)).toEqual(['run-a', 'run-b']);
    const fresh = readStoreOnce(p, { pidsOfInterest: new Set([4242]) });
    expect(fresh.snapshot!.runs.map((x) => x.id)).toEqual(['run-a', 'run-b']);
    expect(reader.reverify({ runIds: ['run-b'], jobIds: ['job-b'] }).runs).toHaveLength(1);
    expect(ls()).toEqual(['stepwise.db']);
    expect(sha(p)).toBe(hash);
  });

  it('opens a stopped WAL store whose path needs URI escaping, creating nothing', () => {
    const sub = path.join(dir, 'a b#c?d%e');
    fs.mkdirSync(sub);
    const p = path.join(sub, 'stepwise.db');
    const db = createStepwiseDb(p, { wal: true });
    insertRun(db, { jobId: insertJob(db), executorState: agentExecutorState({ pid: 31 }) });
    db.close();
    expect(ls(sub)).toEqual(['stepwise.db']);
    const reader = new StoreReader({ dbPath: p });
    const r = reader.read({ pidsOfInterest: none });
    expect(r.health.ok).toBe(true);
    expect(reader.lastReadStats?.openMode).toBe('immutable');
    expect(r.snapshot!.runs.map((x) => x.pid)).toEqual([31]);
    expect(ls(sub)).toEqual(['stepwise.db']);
  });

  it('reads the WAL content a crashed writer left behind', async () => {
    const { p, db } = newStore('stepwise.db', { wal: true });
    db.close();
    const writer = await SqlChild.start(p);
    await childJob(writer, 'job-c', 'running');
    await childRun(writer, 'run-c', 'job-c', 5151);
    await writer.kill('SIGKILL');
    expect(ls()).toEqual(['stepwise.db', 'stepwise.db-shm', 'stepwise.db-wal']);
    expect(fs.statSync(`${p}-wal`).size).toBeGreaterThan(0);
    const r = readStoreOnce(p, { pidsOfInterest: none });
    expect(r.health.ok).toBe(true);
    expect(r.snapshot!.runs.map((x) => x.id)).toEqual(['run-c']);
    // Through a symlink (STEPWISE_DB may be one): -wal/-shm are looked for next to the target.
    const linkDir = path.join(dir, 'elsewhere');
    fs.mkdirSync(linkDir);
    fs.symlinkSync(p, path.join(linkDir, 'stepwise.db'));
    const viaLink = new StoreReader({ dbPath: path.join(linkDir, 'stepwise.db') });
    expect(viaLink.read({ pidsOfInterest: none }).snapshot!.runs.map((x) => x.id)).toEqual(['run-c']);
    expect(viaLink.lastReadStats?.openMode).toBe('normal');
    expect(ls(linkDir)).toEqual(['stepwise.db']);
    expect(ls()).toEqual(['elsewhere', 'stepwise.db', 'stepwise.db-shm', 'stepwise.db-wal']);
  });
});

// ── schemas ─────────────────────────────────────────────────────────────────────────────────

describe('schemas', () => {
  it('reads an old store (no pid column, no jobs.name) and notices the migration', () => {
    const { p, db } = newStore('stepwise.db', { old: true });
    const job = insertJob(db, { status: 'running' });
    insertRun(db, { jobId: job, executorState: agentExecutorState({ pid: 777, agent: 'codex' }) });
    const reader = new StoreReader({ dbPath: p });
    let r = reader.read({ pidsOfInterest: none });
    expect(r.health.ok).toBe(true);
    expect(r.snapshot!.schema.stepRunsPidColumn).toBe(false);
    expect(r.snapshot!.runs).toMatchObject([{ pid: 777, agent: 'codex', jobId: job }]);
    expect(r.snapshot!.jobs[job]).toEqual({ id: job, status: 'running', updatedAt: expect.any(String) });
    const v1 = r.snapshot!.schema.schemaVersion;

    // The engine's migration adds the column; the next read re-detects and resyncs.
    db.exec('ALTER TABLE step_runs ADD COLUMN pid INTEGER');
    const job2 = insertJob(db);
    insertRun(db, { jobId: job2, executorState: { _interpolated_config: { agent: 'claude' } }, pidColumn: 888 });
    r = reader.read({ pidsOfInterest: none });
    expect(reader.lastReadStats?.resyncReason).toBe('schema changed');
    expect(r.snapshot!.schema.stepRunsPidColumn).toBe(true);
    expect(r.snapshot!.schema.schemaVersion).toBeGreaterThan(v1);
    // No pid in executor_state yet: the pid column is the fallback; the agent comes from the config.
    expect(r.snapshot!.runs.find((x) => x.jobId === job2)).toMatchObject({ pid: 888, agent: 'claude' });
    db.close();
  });

  it('reads executor_state shapes: in_vm, session-only, _interpolated_config, script steps', () => {
    const { p, db } = newStore();
    const job = insertJob(db, { status: 'failed' });
    insertRun(db, { id: 'run-vm', jobId: job, status: 'completed', executorState: agentExecutorState({ pid: 11, inVm: true }) });
    insertRun(db, { id: 'run-sess', jobId: job, status: 'completed', executorState: { pid: 12, session_id: 's' } });
    insertRun(db, { id: 'run-script', jobId: job, status: 'completed', executorState: { pid: 13, stdout_path: '/x' } });
    insertRun(db, { id: 'run-open-script', jobId: job, status: 'running', executorState: { pid: 14 } });
    insertRun(db, { id: 'run-null', jobId: job, status: 'running', executorState: null });
    db.close();
    const r = readStoreOnce(p, { pidsOfInterest: new Set([11, 12, 13, 14]) });
    const byId = [...r.snapshot!.runs].sort((a, b) => a.id.localeCompare(b.id));
    // Finished script steps are not reported; open runs of any step are (they count as stale
    // running runs under a terminal job), flagged as agent steps or not.
    expect(byId.map((x) => [x.id, x.pid, x.agent, x.inVm, x.agentStep])).toEqual([
      ['run-null', null, null, false, false],
      ['run-open-script', 14, null, false, false],
      ['run-sess', 12, null, false, true],
      ['run-vm', 11, 'claude', true, true],
    ]);
  });
});

// ── failures are health, never exceptions ───────────────────────────────────────────────────

describe('store down', () => {
  it('missing file', () => {
    const p = path.join(dir, 'nope', 'stepwise.db');
    const r = new StoreReader({ dbPath: p }).read({ pidsOfInterest: none });
    expect(r.snapshot).toBeNull();
    expect(r.health.ok).toBe(false);
    expect(r.health.error).toBe(`store down: no such file ${p}`);
    expect(r.health.durationSeconds).toBeGreaterThanOrEqual(0);
  });

  it('locked by another process for longer than the busy timeout', async () => {
    const { p, db } = newStore(); // rollback journal: an EXCLUSIVE lock blocks readers
    const job = insertJob(db);
    insertRun(db, { jobId: job, executorState: agentExecutorState({ pid: 99 }) });
    db.close();
    const reader = new StoreReader({ dbPath: p, busyTimeoutMs: 500 });
    expect(reader.read({ pidsOfInterest: none }).health.ok).toBe(true);

    const holder = await SqlChild.start(p);
    await holder.exec('BEGIN EXCLUSIVE');
    const t0 = performance.now();
    const r = reader.read({ pidsOfInterest: none });
    const elapsed = performance.now() - t0;
    expect(r.snapshot).toBeNull();
    expect(r.health).toMatchObject({ ok: false, error: 'store down: database locked for more than 500 ms' });
    expect(elapsed).toBeGreaterThanOrEqual(400);
    expect(elapsed).toBeLessThan(5000);
    expect(reader.reverify({ runIds: [], jobIds: [job] }).health.error).toBe(
      'store down: database locked for more than 500 ms',
    );

    await holder.exec('COMMIT');
    const after = reader.read({ pidsOfInterest: none });
    expect(after.health.ok).toBe(true);
    expect(reader.lastReadStats?.kind).toBe('incremental'); // the index survived the lock
    expect(after.snapshot!.runs).toHaveLength(1);
  });

  it('random bytes', () => {
    const p = path.join(dir, 'stepwise.db');
    const junk = Buffer.alloc(8192);
    for (let i = 0; i < junk.length; i++) junk[i] = (i * 7 + 13) & 0xff;
    fs.writeFileSync(p, junk);
    const r = readStoreOnce(p, { pidsOfInterest: none });
    expect(r.health).toMatchObject({ ok: false, error: 'store down: not a SQLite database (file is not a database)' });
    expect(ls()).toEqual(['stepwise.db']);
  });

  it('a truncated real store', () => {
    const { p, db } = newStore();
    fillHistory(db, { runs: 3000 });
    db.close();
    fs.truncateSync(p, Math.floor(fs.statSync(p).size * 0.4));
    const reader = new StoreReader({ dbPath: p });
    const r = reader.read({ pidsOfInterest: new Set([100_001]) });
    expect(r.health.ok).toBe(false);
    expect(r.health.error).toMatch(/^store down: (corrupt database|not a SQLite database) \(.+\)$/);
    expect(r.health.error).not.toContain('\n');
  });

  it('a SQLite file that is not a stepwise store', () => {
    const p = path.join(dir, 'other.db');
    const db = new Database(p);
    db.exec('CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)');
    db.close();
    expect(readStoreOnce(p, { pidsOfInterest: none }).health.error).toBe(
      'store down: not a stepwise store: missing table step_runs',
    );
    const q = path.join(dir, 'partial.db');
    const db2 = new Database(q);
    db2.exec('CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT, updated_at TEXT)');
    db2.exec('CREATE TABLE step_runs (id TEXT PRIMARY KEY, job_id TEXT, status TEXT, started_at TEXT, completed_at TEXT)');
    db2.close();
    expect(readStoreOnce(q, { pidsOfInterest: none }).health.error).toBe(
      'store down: not a stepwise store: missing column step_runs.executor_state',
    );
  });

  it('a closed reader reports instead of throwing', () => {
    const { p, db } = newStore();
    db.close();
    const reader = new StoreReader({ dbPath: p });
    reader.close();
    expect(reader.read({ pidsOfInterest: none }).health.error).toBe('store down: reader closed');
  });
});

// ── rows ────────────────────────────────────────────────────────────────────────────────────

describe('rows', () => {
  it('skips and counts rows whose executor_state is not JSON', () => {
    const { p, db } = newStore();
    const job = insertJob(db);
    insertRun(db, { id: 'run-bad-open', jobId: job, status: 'running', executorState: '{"pid": 12,' });
    insertRun(db, { id: 'run-bad-done', jobId: job, status: 'completed', executorState: 'not json' });
    insertRun(db, { id: 'run-good', jobId: job, status: 'running', executorState: agentExecutorState({ pid: 13 }) });
    const reader = new StoreReader({ dbPath: p });
    let r = reader.read({ pidsOfInterest: new Set([12, 13]) });
    expect(r.health.ok).toBe(true);
    expect(r.snapshot!.runs.map((x) => x.id)).toEqual(['run-good']);
    expect(reader.lastReadSkippedRows).toBe(2);

    r = reader.read({ pidsOfInterest: new Set([12, 13]) }); // the open bad run is still followed
    expect(reader.lastReadSkippedRows).toBe(1);
    updateRun(db, 'run-bad-open', { executorState: agentExecutorState({ pid: 12 }) });
    r = reader.read({ pidsOfInterest: new Set([12, 13]) });
    expect(reader.lastReadSkippedRows).toBe(0);
    expect(r.snapshot!.runs.map((x) => x.id).sort()).toEqual(['run-bad-open', 'run-good']);
    db.close();
  });

  it('prunes finished runs whose pid stopped being of interest (after the retention)', () => {
    const { p, db } = newStore();
    for (const pid of [101, 102, 103]) {
      const job = insertJob(db, { id: `job-${pid}`, status: 'failed' });
      insertRun(db, { id: `run-${pid}`, jobId: job, status: 'completed', executorState: agentExecutorState({ pid }) });
    }
    let clock = 1_000_000;
    const reader = new StoreReader({ dbPath: p, retainFinishedMs: 60_000, resyncIntervalMs: 0, now: () => clock });
    let r = reader.read({ pidsOfInterest: new Set([101, 102, 103]) });
    expect(r.snapshot!.runs.map((x) => x.id)).toEqual(['run-101', 'run-102', 'run-103']);
    expect(reader.trackedRunCount).toBe(3);

    r = reader.read({ pidsOfInterest: new Set([101]) });
    expect(r.snapshot!.runs.map((x) => x.id)).toEqual(['run-101']);
    expect(Object.keys(r.snapshot!.jobs)).toEqual(['job-101']);
    expect(reader.trackedRunCount).toBe(1);
    expect(reader.lastReadStats?.retainedRuns).toBe(2);

    clock += 1_000; // within the retention: 102 comes back without a resync
    r = reader.read({ pidsOfInterest: new Set([101, 102]) });
    expect(reader.lastReadStats?.kind).toBe('incremental');
    expect(r.snapshot!.runs.map((x) => x.id)).toEqual(['run-101', 'run-102']);

    clock += 61_000; // past it: memory holds only what live pids need
    r = reader.read({ pidsOfInterest: new Set([101]) });
    expect(reader.trackedRunCount).toBe(1);
    expect(reader.lastReadStats?.retainedRuns).toBe(1); // 102, just dropped from tracking
    clock += 61_000;
    r = reader.read({ pidsOfInterest: new Set([101, 103]) });
    expect(reader.lastReadStats?.retainedRuns).toBe(0);
    expect(r.snapshot!.runs.map((x) => x.id)).toEqual(['run-101']); // 103 forgotten …
    r = reader.read({ pidsOfInterest: new Set([101, 103]), forceResync: true });
    expect(r.snapshot!.runs.map((x) => x.id)).toEqual(['run-101', 'run-103']); // … until a resync
    db.close();
  });

  it('keeps at most retainFinishedMax finished runs (the oldest go first), checked in memory, not re-read', () => {
    const { p, db } = newStore();
    let clock = 1_000_000;
    const reader = new StoreReader({ dbPath: p, retainFinishedMs: 60_000, retainFinishedMax: 3, resyncIntervalMs: 0, now: () => clock });
    reader.read({ pidsOfInterest: new Set() }); // history read: nothing yet
    for (const pid of [201, 202, 203, 204, 205]) {
      const job = insertJob(db, { id: `job-${pid}`, status: 'failed' });
      insertRun(db, { id: `run-${pid}`, jobId: job, status: 'failed', executorState: agentExecutorState({ pid }) });
    }
    let r = reader.read({ pidsOfInterest: new Set() }); // five new finished runs, no pid of interest
    expect(r.snapshot!.runs).toEqual([]);
    expect(reader.lastReadStats?.retainedRuns).toBe(3);
    clock += 1_000;
    r = reader.read({ pidsOfInterest: new Set() });
    expect(reader.lastReadStats?.reReadRuns).toBe(0); // finished runs are not read again
    // 201 and 202 were dropped (the oldest); 205 comes back when its pid turns up, re-read by
    // primary key as it does (the copy in memory is not what the snapshot gives).
    updateRun(db, 'run-205', { executorState: agentExecutorState({ pid: 205, sessionId: 'late' }) });
    r = reader.read({ pidsOfInterest: new Set([201, 205]) });
    expect(r.snapshot!.runs.map((x) => `${x.id}:${x.sessionId}`)).toEqual(['run-205:late']);
    expect(reader.lastReadStats?.retainedRuns).toBe(2);
    // Cancelled runs (re-read while retained) are held to the same bound.
    for (const pid of [301, 302, 303, 304]) {
      const job = insertJob(db, { id: `job-${pid}`, status: 'cancelled' });
      insertRun(db, { id: `run-${pid}`, jobId: job, status: 'cancelled', executorState: agentExecutorState({ pid }) });
    }
    r = reader.read({ pidsOfInterest: new Set([205]) });
    expect(reader.lastReadStats?.retainedRuns).toBe(2 + 3);
    db.close();
  });

  it('with process start times, ignores runs that name an earlier process with the same pid', () => {
    const { p, db } = newStore();
    const now = Date.now();
    const ago = (ms: number): string => pyIsoformat(now - ms);
    const day = 86_400_000;
    const finished = (id: string, pid: number, startedMsAgo: number, doneMsAgo: number): void => {
      const job = insertJob(db, { id: `job-${id}`, status: 'failed' });
      insertRun(db, {
        id,
        jobId: job,
        status: 'completed',
        startedAt: ago(startedMsAgo),
        completedAt: ago(doneMsAgo),
        executorState: agentExecutorState({ pid }),
      });
    };
    finished('run-weeks-ago', 4242, 30 * day, 30 * day - 60_000);
    finished('run-days-ago', 4242, 10 * day, 10 * day - 60_000);
    finished('run-leaked', 4242, 30 * 60_000, 20 * 60_000); // used the live adapter, then leaked it
    const running = insertJob(db, { id: 'job-live', status: 'running' });
    insertRun(db, { id: 'run-live', jobId: running, startedAt: ago(5 * 60_000), executorState: agentExecutorState({ pid: 4242 }) });

    const pids = new Set([4242]);
    const startedHourAgo = new Map([[4242, (now - 3_600_000) / 1000]]);
    expect(readStoreOnce(p, { pidsOfInterest: pids }).snapshot!.runs).toHaveLength(4);
    const reader = new StoreReader({ dbPath: p });
    let r = reader.read({ pidsOfInterest: pids, pidStartEpochs: startedHourAgo });
    expect(r.snapshot!.runs.map((x) => x.id)).toEqual(['run-leaked', 'run-live']);
    expect(reader.trackedRunCount).toBe(2);
    expect(Object.keys(r.snapshot!.jobs).sort()).toEqual(['job-live', 'job-run-leaked']);

    // The adapter died and pid 4242 now belongs to a process started a minute ago: the leaked
    // run names the old one. The open run is always reported (the classifier decides).
    const startedMinuteAgo = new Map([[4242, (now - 60_000) / 1000]]);
    r = reader.read({ pidsOfInterest: pids, pidStartEpochs: startedMinuteAgo });
    expect(reader.lastReadStats?.kind).toBe('incremental');
    expect(r.snapshot!.runs.map((x) => x.id)).toEqual(['run-live']);
    expect(reader.trackedRunCount).toBe(1);
    db.close();
  });

  it('reverify returns fresh rows for exactly the ids asked', () => {
    const { p, db } = newStore();
    const job = insertJob(db, { id: 'job-r', status: 'running' });
    insertRun(db, { id: 'run-r', jobId: job, executorState: agentExecutorState({ pid: 321 }) });
    insertRun(db, { id: 'run-other', jobId: job, executorState: agentExecutorState({ pid: 322 }) });
    const reader = new StoreReader({ dbPath: p });
    reader.read({ pidsOfInterest: none });
    updateJob(db, job, { status: 'failed' });
    insertEvent(db, { jobId: job, type: 'job.failed', data: { reason: 'abandoned' } });
    updateRun(db, 'run-r', { status: 'completed', completedAt: pyIsoformat() });
    const v = reader.reverify({ runIds: ['run-r', 'run-gone'], jobIds: ['job-r', 'job-gone'] });
    expect(v.health.ok).toBe(true);
    expect(v.runs).toMatchObject([{ id: 'run-r', status: 'completed', pid: 321 }]);
    expect(v.jobs).toEqual({ 'job-r': expect.objectContaining({ status: 'failed', failReason: 'abandoned' }) });
    expect(v.missingRunIds).toEqual(['run-gone']);
    expect(v.missingJobIds).toEqual(['job-gone']);
    expect(v.schemaVersion).toBe(db.pragma('schema_version', { simple: true }));
    db.close();
    fs.rmSync(p);
    expect(reader.reverify({ runIds: ['run-r'], jobIds: [] }).health.error).toBe(`store down: no such file ${p}`);
  });
});

// ── the incremental index ───────────────────────────────────────────────────────────────────

describe('incremental index', () => {
  const rowidOf = (db: Database.Database, id: string): number =>
    (db.prepare('SELECT rowid AS r FROM step_runs WHERE id = ?').get(id) as { r: number }).r;

  it('steady-state statements seek, never scan (query plans)', () => {
    const { p, db } = newStore();
    fillHistory(db, { runs: 5000 });
    const job = insertJob(db);
    insertRun(db, { jobId: job, executorState: agentExecutorState({ pid: 4000 }) });
    for (const features of [
      { stepRunsPid: true, stepName: true, attempt: true, jobsName: true, events: true },
      { stepRunsPid: false, stepName: true, attempt: true, jobsName: false, events: true },
    ]) {
      const sql = storeStatements(features);
      const steady = [sql.tailCheck, sql.newRows, sql.runsById, sql.jobsById, sql.failReason!];
      for (const stmt of steady) {
        const params = Object.fromEntries([...stmt.matchAll(/:(\w+)/g)].map((m) => [m[1], m[1] === 'jobId' ? 'x' : '[]']));
        if ('after' in params) params.after = '0';
        const plan = (db.prepare(`EXPLAIN QUERY PLAN ${stmt}`).all(params) as { detail: string }[]).map((r) => r.detail);
        expect(plan.join(' | '), stmt).not.toMatch(/\bSCAN (step_runs|jobs|events)\b/);
        expect(plan.join(' | '), stmt).toMatch(/\bSEARCH (step_runs|jobs|events)\b/);
      }
    }
    // And the reader really takes that path: nothing new → only the tracked run is re-read.
    const reader = new StoreReader({ dbPath: p });
    reader.read({ pidsOfInterest: new Set([100_001, 100_002]) });
    const tracked = reader.trackedRunCount;
    expect(tracked).toBeGreaterThan(1);
    reader.read({ pidsOfInterest: new Set([100_001, 100_002]) });
    expect(reader.lastReadStats).toMatchObject({ kind: 'incremental', newRows: 0, reReadRuns: tracked });
    insertRun(db, { jobId: job, executorState: agentExecutorState({ pid: 4001 }) });
    insertRun(db, { jobId: job, status: 'completed', executorState: agentExecutorState({ pid: 4002 }) });
    const r = reader.read({ pidsOfInterest: new Set([100_001, 100_002]) });
    expect(reader.lastReadStats).toMatchObject({ kind: 'incremental', newRows: 2 });
    expect(r.snapshot!.runs.filter((x) => x.pid !== null && x.pid >= 4000 && x.pid < 5000).map((x) => x.pid)).toEqual([
      4000, 4001,
    ]);
    db.close();
  });

  it('sees new rows that reuse the rowids of deleted newest rows', () => {
    const { p, db } = newStore();
    const jobs = [1, 2, 3].map((i) => insertJob(db, { id: `job-${i}` }));
    for (const [i, j] of jobs.entries()) insertRun(db, { id: `run-${i}`, jobId: j, executorState: agentExecutorState({ pid: 600 + i }) });
    const reader = new StoreReader({ dbPath: p });
    expect(reader.read({ pidsOfInterest: none }).snapshot!.runs).toHaveLength(3);
    const lastRowid = rowidOf(db, 'run-2');
    // stepwise's delete_job removes the newest job; the next insert reuses its rowid.
    db.prepare("DELETE FROM step_runs WHERE job_id = 'job-3'").run();
    db.prepare("DELETE FROM jobs WHERE id = 'job-3'").run();
    const j4 = insertJob(db, { id: 'job-4' });
    insertRun(db, { id: 'run-new', jobId: j4, executorState: agentExecutorState({ pid: 700 }) });
    expect(rowidOf(db, 'run-new')).toBe(lastRowid);
    const r = reader.read({ pidsOfInterest: none });
    expect(reader.lastReadStats?.kind).toBe('incremental');
    expect(r.snapshot!.runs.map((x) => x.id).sort()).toEqual(['run-0', 'run-1', 'run-new']);
    db.close();
  });

  it('follows rowid renumbering (VACUUM may do it) and VACUUM', () => {
    const { p, db } = newStore();
    const job = insertJob(db, { id: 'job-v' });
    for (let i = 0; i < 10; i++) {
      insertRun(db, { id: `run-${i}`, jobId: job, status: 'completed', executorState: agentExecutorState({ pid: 800 + i }) });
    }
    const reader = new StoreReader({ dbPath: p });
    const interest = new Set([850, 851, 852, 853]);
    reader.read({ pidsOfInterest: interest });
    expect(reader.lastReadStats?.watermark).toBe(10);
    // What a renumbering VACUUM amounts to, without touching the schema cookie.
    const renumber = (): void => {
      const before = db.pragma('schema_version', { simple: true });
      db.exec(`CREATE TEMP TABLE keep AS SELECT * FROM step_runs ORDER BY rowid;
        DELETE FROM step_runs; INSERT INTO step_runs SELECT * FROM keep; DROP TABLE keep;`);
      expect(db.pragma('schema_version', { simple: true })).toBe(before);
    };

    // Rows in the middle deleted, the rest renumbered 1..5: the lowest rows kept their rowids,
    // so the watermark falls back to the newest row that did; rows above are read again.
    db.exec("DELETE FROM step_runs WHERE id IN ('run-3','run-4','run-5','run-6','run-7')");
    renumber();
    insertRun(db, { id: 'run-late', jobId: job, status: 'completed', executorState: agentExecutorState({ pid: 850 }) });
    expect(rowidOf(db, 'run-late')).toBe(6); // below the old watermark
    let r = reader.read({ pidsOfInterest: interest });
    expect(reader.lastReadStats).toMatchObject({ kind: 'incremental', watermark: 6 });
    expect(r.snapshot!.runs.map((x) => x.id)).toEqual(['run-late']);

    // The oldest rows deleted and everything renumbered: no remembered rowid holds its row any
    // more, so the reader starts over.
    db.exec("DELETE FROM step_runs WHERE id IN ('run-0','run-1')");
    renumber();
    insertRun(db, { id: 'run-later', jobId: job, status: 'completed', executorState: agentExecutorState({ pid: 851 }) });
    expect(rowidOf(db, 'run-later')).toBe(5);
    r = reader.read({ pidsOfInterest: interest });
    expect(reader.lastReadStats?.resyncReason).toBe('rowids renumbered');
    expect(r.snapshot!.runs.map((x) => x.id).sort()).toEqual(['run-late', 'run-later']);

    // A real VACUUM changes the schema cookie: full pass.
    db.exec("DELETE FROM step_runs WHERE id = 'run-2'");
    db.exec('VACUUM');
    insertRun(db, { id: 'run-after-vacuum', jobId: job, status: 'completed', executorState: agentExecutorState({ pid: 852 }) });
    r = reader.read({ pidsOfInterest: interest });
    expect(reader.lastReadStats).toMatchObject({ kind: 'full', resyncReason: 'schema changed' });
    expect(r.snapshot!.runs.map((x) => x.id).sort()).toEqual(['run-after-vacuum', 'run-late', 'run-later']);
    db.close();
  });

  it('starts over when the file is replaced (new inode)', () => {
    const { p, db } = newStore();
    insertRun(db, { id: 'run-old', jobId: insertJob(db), executorState: agentExecutorState({ pid: 901 }) });
    db.close();
    const reader = new StoreReader({ dbPath: p });
    expect(reader.read({ pidsOfInterest: none }).snapshot!.runs.map((x) => x.id)).toEqual(['run-old']);
    const q = path.join(dir, 'replacement.db');
    const db2 = createStepwiseDb(q);
    insertRun(db2, { id: 'run-replacement', jobId: insertJob(db2), executorState: agentExecutorState({ pid: 902 }) });
    db2.close();
    fs.renameSync(q, p);
    const r = reader.read({ pidsOfInterest: none });
    expect(reader.lastReadStats?.resyncReason).toBe('file replaced');
    expect(r.snapshot!.runs.map((x) => x.id)).toEqual(['run-replacement']);
  });
});

// ── the cancel-then-retry leak ──────────────────────────────────────────────────────────────

describe('a cancelled run the engine writes to after it finished', () => {
  it('is re-read while retained, so the retry adapter recorded on it is seen (incremental path)', () => {
    const { p, db } = newStore();
    const job = insertJob(db, { status: 'running' });
    const run = insertRun(db, { jobId: job, status: 'running', executorState: agentExecutorState({ pid: 70_001 }), pidColumn: 70_001 });
    let clock = 1_000_000;
    const reader = new StoreReader({ dbPath: p, now: () => clock });
    expect(reader.read({ pidsOfInterest: new Set([70_001]) }).snapshot!.runs.map((r) => r.id)).toEqual([run]);

    // cancel_job: the run ends, pid column cleared; the engine kills that adapter.
    updateRun(db, run, { status: 'cancelled', completedAt: pyIsoformat(), pidColumn: null });
    db.prepare("UPDATE jobs SET status = 'cancelled' WHERE id = ?").run(job);
    expect(reader.read({ pidsOfInterest: none }).snapshot!.runs).toEqual([]);

    // A daemon started after the cancel: its first (full) read keeps the recently cancelled run.
    const lateClock = { t: Date.now() };
    const late = new StoreReader({ dbPath: p, now: () => lateClock.t });
    expect(late.read({ pidsOfInterest: none }).snapshot!.runs).toEqual([]);

    // 10 minutes later (past the 5 min retention of other finished runs, within the retry
    // window) the step's retry records a new adapter on the cancelled run.
    clock += 10 * 60_000;
    lateClock.t += 10 * 60_000;
    updateRun(db, run, { executorState: agentExecutorState({ pid: 70_002 }), pidColumn: 70_002 });
    const later = reader.read({ pidsOfInterest: new Set([70_002]), pidStartEpochs: new Map([[70_002, Date.now() / 1000]]) });
    expect(later.snapshot!.runs.map((r) => [r.id, r.pid, r.pidColumn, r.status])).toEqual([[run, 70_002, 70_002, 'cancelled']]);
    const lateRead = late.read({ pidsOfInterest: new Set([70_002]), pidStartEpochs: new Map([[70_002, Date.now() / 1000]]) });
    expect(lateRead.snapshot!.runs.map((r) => [r.id, r.pid])).toEqual([[run, 70_002]]);
    late.close();
    // A one-shot full read sees it too.
    const once = readStoreOnce(p, { pidsOfInterest: new Set([70_002]), pidStartEpochs: new Map([[70_002, Date.now() / 1000]]) });
    expect(once.snapshot!.runs.map((r) => r.id)).toEqual([run]);

    // Past the retry window it is forgotten.
    clock += 25 * 60_000;
    expect(reader.read({ pidsOfInterest: none }).snapshot!.runs).toEqual([]);
    expect(reader.trackedRunCount).toBe(0);
    db.close();
  });
});
