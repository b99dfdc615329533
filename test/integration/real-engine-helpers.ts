// Helpers for real-engine.test.ts: the test's own view of the process table (read straight from
// /proc, independent of the watchdog's sources, so the checks do not trust the code under test),
// the real-engine harness as a child process, the built CLI and daemon as child processes,
// Prometheus text parsing and a read-only snapshot of the engine's database.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const HARNESS = path.join(HERE, 'real_engine_server.py');
export const FAKE_TREE = path.join(HERE, 'fake_tree_adapter.py');

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Poll `cond` every `intervalMs` until it returns a truthy value or `timeoutMs` passes (then the last value). */
export async function waitFor<T>(cond: () => T | Promise<T>, timeoutMs: number, intervalMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v || Date.now() >= deadline) return v;
    await sleep(intervalMs);
  }
}

// ---------------------------------------------------------------------------------------------
// /proc

export interface Stat {
  pid: number;
  state: string;
  ppid: number;
  pgid: number;
  sid: number;
  /** Field 22: start time in clock ticks after boot. */
  startTicks: number;
}

export function readStat(pid: number): Stat | null {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  const close = text.lastIndexOf(')');
  if (close < 0) return null;
  const f = text.slice(close + 2).trim().split(/\s+/); // f[0] is field 3 (state)
  const num = (field: number) => Number(f[field - 3]);
  return { pid, state: f[0] ?? '?', ppid: num(4), pgid: num(5), sid: num(6), startTicks: num(22) };
}

export function readArgv(pid: number): string[] {
  try {
    const parts = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    if (parts[parts.length - 1] === '') parts.pop();
    return parts;
  } catch {
    return [];
  }
}

export interface Identity {
  pid: number;
  startTicks: number;
}

export function identity(pid: number): Identity | null {
  const s = readStat(pid);
  return s ? { pid, startTicks: s.startTicks } : null;
}

/** The same process (pid and start time), not a zombie. */
export function isAlive(id: Identity): boolean {
  const s = readStat(id.pid);
  return s !== null && s.startTicks === id.startTicks && s.state !== 'Z' && s.state !== 'X';
}

/** Gone, reused by another process, or a zombie (its memory is freed). */
export function isGoneOrZombie(id: Identity): boolean {
  const s = readStat(id.pid);
  return s === null || s.startTicks !== id.startTicks || s.state === 'Z' || s.state === 'X';
}

export function describeProc(pid: number): string {
  const s = readStat(pid);
  if (!s) return `${pid}: gone`;
  return `${pid}: state ${s.state} ppid ${s.ppid} pgid ${s.pgid} start ${s.startTicks} argv ${JSON.stringify(readArgv(pid))}`;
}

function allPids(): number[] {
  return fs
    .readdirSync('/proc')
    .filter((n) => /^\d+$/.test(n))
    .map(Number);
}

/** The top and all its live descendants (by ppid), top first, each with its identity. */
export function treeOf(top: number): Identity[] {
  const stats = allPids()
    .map(readStat)
    .filter((s): s is Stat => s !== null && s.state !== 'Z' && s.state !== 'X');
  const children = new Map<number, Stat[]>();
  for (const s of stats) children.set(s.ppid, [...(children.get(s.ppid) ?? []), s]);
  const topStat = stats.find((s) => s.pid === top);
  if (!topStat) return [];
  const out: Identity[] = [];
  const queue = [topStat];
  while (queue.length) {
    const s = queue.shift()!;
    out.push({ pid: s.pid, startTicks: s.startTicks });
    queue.push(...(children.get(s.pid) ?? []));
  }
  return out;
}

/** SIGKILL a process group, only if `leader` still leads it and its argv contains `mustContain`. */
export function killGroupIf(leader: number, mustContain: string): void {
  const s = readStat(leader);
  if (!s || s.pgid !== leader || !readArgv(leader).join(' ').includes(mustContain)) return;
  try {
    process.kill(-leader, 'SIGKILL');
  } catch {
    // gone
  }
}

export function killIf(pid: number, mustContain: string, signal: NodeJS.Signals = 'SIGKILL'): void {
  if (!readArgv(pid).join(' ').includes(mustContain)) return;
  try {
    process.kill(pid, signal);
  } catch {
    // gone
  }
}

/** Every tree top fake_tree_adapter.py recorded (FAKE_TREE_RECORD_DIR). */
export function recordedTops(recordDir: string): { pid: number; pgid: number; ppid: number; argv: string[]; started: number }[] {
  let names: string[];
  try {
    names = fs.readdirSync(recordDir);
  } catch {
    return [];
  }
  const out = [];
  for (const n of names) {
    if (!n.endsWith('.json')) continue;
    try {
      out.push(JSON.parse(fs.readFileSync(path.join(recordDir, n), 'utf8')));
    } catch {
      // being written
    }
  }
  return out;
}

/** SIGKILL every recorded tree (its group, when its top leads one and still runs our script). */
export function killRecorded(recordDir: string): void {
  for (const r of recordedTops(recordDir)) {
    if (r.pgid === r.pid) killGroupIf(r.pid, 'fake_tree_adapter.py');
    else killIf(r.pid, 'fake_tree_adapter.py');
  }
}

// ---------------------------------------------------------------------------------------------
// The real-engine harness (real_engine_server.py)

export interface ScenarioInfo {
  jobId: string;
  status: string;
  adapterPid: number | null;
  firstAdapterPid?: number;
  firstAdapterAlive?: boolean;
}

export interface HarnessReady {
  event: 'ready';
  serverPid: number;
  scenarios: Record<string, ScenarioInfo>;
  setupSeconds: number;
}

export class EngineHarness {
  readonly child: ChildProcess;
  private lines: Record<string, unknown>[] = [];
  private buf = '';
  stderr = '';
  exited: Promise<number | null>;
  exitCode: number | null | undefined = undefined;

  constructor(opts: { python: string; src: string; project: string; recordDir: string; env: NodeJS.ProcessEnv }) {
    this.child = spawn(opts.python, [HARNESS, '--src', opts.src, '--project', opts.project, '--record-dir', opts.recordDir], {
      cwd: opts.project,
      env: opts.env,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.child.stdout!.setEncoding('utf8');
    this.child.stdout!.on('data', (d: string) => {
      this.buf += d;
      let nl: number;
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        try {
          this.lines.push(JSON.parse(line) as Record<string, unknown>);
        } catch {
          this.stderr += `[stdout] ${line}\n`;
        }
      }
    });
    this.child.stderr!.setEncoding('utf8');
    this.child.stderr!.on('data', (d: string) => {
      this.stderr = (this.stderr + d).slice(-200_000);
    });
    this.child.stdin!.on('error', () => {});
    this.exited = new Promise((resolve) =>
      this.child.on('close', (code) => {
        this.exitCode = code;
        resolve(code);
      }),
    );
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** The next protocol line (oldest first) for which `pred` holds; rejects on timeout, an error line or exit. */
  async next(pred: (l: Record<string, unknown>) => boolean, timeoutMs: number): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.lines.findIndex((l) => pred(l) || l.event === 'error');
      if (i >= 0) {
        const [line] = this.lines.splice(i, 1);
        if (line!.event === 'error' && !pred(line!)) {
          throw new Error(`engine harness: ${String(line!.error)}\n${String(line!.traceback ?? '')}\nstderr:\n${this.stderr.slice(-6000)}`);
        }
        return line!;
      }
      if (this.exitCode !== undefined) throw new Error(`engine harness exited (${this.exitCode}) before answering; stderr:\n${this.stderr.slice(-6000)}`);
      if (Date.now() >= deadline) throw new Error(`engine harness: no answer after ${timeoutMs} ms; stderr:\n${this.stderr.slice(-6000)}`);
      await sleep(50);
    }
  }

  send(cmd: Record<string, unknown>): void {
    this.child.stdin!.write(`${JSON.stringify(cmd)}\n`);
  }

  async command(cmd: Record<string, unknown>, event: string, timeoutMs = 60_000): Promise<Record<string, unknown>> {
    this.send(cmd);
    return this.next((l) => l.event === event, timeoutMs);
  }

  freeze(): void {
    process.kill(this.pid, 'SIGSTOP');
  }

  thaw(): void {
    try {
      process.kill(this.pid, 'SIGCONT');
    } catch {
      // gone
    }
  }

  /** Ask it to exit (it kills every tree it spawned), SIGKILL after `timeoutMs`. */
  async stop(timeoutMs = 20_000): Promise<void> {
    if (this.exitCode !== undefined) return;
    this.thaw();
    try {
      this.send({ cmd: 'exit' });
      this.child.stdin!.end();
    } catch {
      // stdin gone
    }
    const done = await Promise.race([this.exited.then(() => true), sleep(timeoutMs).then(() => false)]);
    if (!done) {
      this.child.kill('SIGKILL');
      await Promise.race([this.exited, sleep(5000)]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// A guard for when this test process dies without its afterAll (SIGKILL, OOM): the engine may be
// frozen (SIGSTOP) then, and would stay so with its adapters. A detached python process watches
// this process; when it is gone, it SIGCONTs the engine (which then sees stdin EOF and kills its
// adapters itself), SIGKILLs it 20 s later if still there, and SIGKILLs the other processes the
// test started. Every target is checked by pid + start time first. It exits on its own when the
// engine is gone, and after an hour in any case.

const GUARD = String.raw`
import json, os, signal, sys, time
watch, targets = int(sys.argv[1]), json.loads(sys.argv[2])
def ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None
def same(t):
    return ticks(t["pid"]) == t["startTicks"]
engine = targets["engine"]
deadline = time.time() + 3600
while time.time() < deadline:
    if not same(engine):
        sys.exit(0)
    if not os.path.exists(f"/proc/{watch}"):
        break
    time.sleep(0.5)
else:
    sys.exit(0)
if same(engine):
    os.kill(engine["pid"], signal.SIGCONT)
    end = time.time() + 20
    while same(engine) and time.time() < end:
        time.sleep(0.2)
    if same(engine):
        os.kill(engine["pid"], signal.SIGKILL)
for t in targets.get("others", []):
    if same(t):
        try:
            os.killpg(t["pid"], signal.SIGKILL) if t.get("group") else os.kill(t["pid"], signal.SIGKILL)
        except OSError:
            pass
`;

export function startGuard(python: string, targets: { engine: Identity; others: (Identity & { group?: boolean })[] }): ChildProcess {
  const child = spawn(python, ['-c', GUARD, String(process.pid), JSON.stringify(targets)], { detached: true, stdio: 'ignore' });
  child.unref();
  return child;
}

// ---------------------------------------------------------------------------------------------
// The built CLI and daemon

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function runCli(bin: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs = 90_000): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [bin, ...args], { env, cwd: '/', stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      stderr += `\n[test] killed after ${timeoutMs} ms\n`;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

export class Daemon {
  readonly child: ChildProcess;
  out = '';
  err = '';
  listen = '';
  private exited: Promise<number | null>;

  constructor(bin: string, args: string[], env: NodeJS.ProcessEnv) {
    this.child = spawn(process.execPath, [bin, 'run', ...args], { env, cwd: '/', stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout!.setEncoding('utf8').on('data', (d: string) => (this.out = (this.out + d).slice(-500_000)));
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.err = (this.err + d).slice(-100_000)));
    this.exited = new Promise((r) => this.child.on('close', (code) => r(code)));
  }

  async started(timeoutMs = 30_000): Promise<string> {
    await waitFor(() => /"msg":"watchdog started"/.test(this.out) || this.child.exitCode !== null, timeoutMs);
    const line = this.out.split('\n').find((l) => l.includes('"watchdog started"'));
    if (!line) throw new Error(`daemon did not start:\nstdout ${this.out.slice(-4000)}\nstderr ${this.err.slice(-4000)}`);
    this.listen = (JSON.parse(line) as { listen: string }).listen;
    if (!/^127\.0\.0\.1:\d+$/.test(this.listen)) throw new Error(`daemon listens on ${this.listen}, not loopback`);
    return this.listen;
  }

  async metrics(): Promise<string> {
    const res = await fetch(`http://${this.listen}/metrics`, { signal: AbortSignal.timeout(5000) });
    return res.text();
  }

  /** SIGTERM, then its exit code (SIGKILL after `timeoutMs`: then null). */
  async stop(timeoutMs = 15_000): Promise<number | null> {
    if (this.child.exitCode !== null) return this.child.exitCode;
    this.child.kill('SIGTERM');
    const code = await Promise.race([this.exited, sleep(timeoutMs).then(() => 'timeout' as const)]);
    if (code === 'timeout') {
      this.child.kill('SIGKILL');
      await Promise.race([this.exited, sleep(5000)]);
      return null;
    }
    return code;
  }
}

/** The value of one sample of a Prometheus text exposition, or null when absent. */
export function metric(text: string, name: string, labels: Record<string, string>): number | null {
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const ls: Record<string, string> = {};
    for (const x of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) ls[x[1]!] = x[2]!.replace(/\\(.)/g, '$1');
    if (Object.entries(labels).every(([k, v]) => ls[k] === v)) return Number(m[3]);
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// The engine's database

export function sha256File(file: string): string | null {
  try {
    return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
  } catch {
    return null; // absent
  }
}

/** sha256 of stepwise.db, -wal, -shm (null when absent) and the names of every file next to them. */
export function dbFiles(db: string): { hashes: Record<string, string | null>; siblings: string[] } {
  const dir = path.dirname(db);
  const base = path.basename(db);
  return {
    hashes: Object.fromEntries(['', '-wal', '-shm'].map((s) => [base + s, sha256File(db + s)])),
    siblings: fs
      .readdirSync(dir)
      .filter((n) => n.startsWith(base))
      .sort(),
  };
}

/** Every row of every table, through a read-only connection (content, not bytes). */
export function dbContent(db: string): Record<string, unknown[]> {
  const conn = new Database(db, { readonly: true, fileMustExist: true });
  try {
    const tables = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as { name: string }[];
    const out: Record<string, unknown[]> = {};
    for (const { name } of tables) out[name] = conn.prepare(`SELECT * FROM "${name.replace(/"/g, '""')}"`).all();
    return out;
  } finally {
    conn.close();
  }
}

/** The rows the report needs: every job and step run, as the engine wrote them. */
export function engineRows(db: string): { jobs: unknown[]; runs: unknown[] } {
  const conn = new Database(db, { readonly: true, fileMustExist: true });
  try {
    return {
      jobs: conn.prepare('SELECT id, name, status, created_at, updated_at FROM jobs ORDER BY created_at').all(),
      runs: conn
        .prepare(
          "SELECT r.job_id, j.name AS job, r.status, r.attempt, r.pid, json_extract(r.executor_state, '$.pid') AS es_pid, r.started_at, r.completed_at, r.error FROM step_runs r JOIN jobs j ON j.id = r.job_id ORDER BY r.started_at",
        )
        .all(),
    };
  } finally {
    conn.close();
  }
}

/** A process that exited: spawn `true`, let it be reaped, make sure nothing took its pid. */
export function deadPid(): number {
  for (let i = 0; i < 20; i++) {
    const r = spawnSync('true');
    if (r.pid && !fs.existsSync(`/proc/${r.pid}`)) return r.pid;
  }
  throw new Error('could not find a dead pid');
}
