// OPT-IN end to end with REAL adapter trees: the real stepwise engine (Python, from STEPWISE_SRC)
// drives the real claude-agent-acp 0.101.0 and its native `claude` CLI (one per ACP session),
// and the BUILT watchdog CLI, as a child process, judges and reaps them.
//
//   REAL_ADAPTER=1 STEPWISE_SRC=/path/to/stepwise npx vitest run test/integration/real-adapter.test.ts
//
// Optional: REAL_ADAPTER_CACHE (the toolchain's folder), REAL_ADAPTER_GUARD_DIR (the release
// guard to load, default deploy/stepwise), REAL_ADAPTER_WATCHDOG_BIN (a built bin.js to test
// instead of building this checkout), STEPWISE_PYTHON, KEEP_REAL_ADAPTER_TMP=1.
//
// Without both variables every test here is skipped. With them:
//
// 1. real-adapter-install.ts installs Node 22, npm and the pinned adapter from the npm registry
//    into a cache OUTSIDE the repository (REAL_ADAPTER_CACHE, default
//    ${XDG_CACHE_HOME:-~/.cache}/stepwise-watchdog/real-adapter), once; later runs skip it.
// 2. messages_api_standin.py serves the Messages API (streaming SSE) on 127.0.0.1; the CLI talks
//    to it through ANTHROPIC_BASE_URL, the DISABLE_* variables stop every other connection, the
//    adapter is resolved offline. A `[hold:<name>]` prompt keeps its turn open until released.
// 3. real_adapter_server.py runs stepwise's engine with its BUILTIN `claude` agent
//    (`npx @agentclientprotocol/claude-agent-acp`, Node 22 first on PATH) in a temp project:
//    abandon (exit rule, adapter leaked), shared (a running job + an abandoned job on one adapter,
//    two CLIs), paused (escalate), top-killed-paused and top-killed-running (SIGTERM to the top
//    `npm exec` only). A second engine, with the release guard loaded (site.addsitedir on
//    REAL_ADAPTER_GUARD_DIR, default deploy/stepwise), runs a shared scenario of its own.
// 4. The process tree is checked straight from /proc (four levels, one CLI per session whose
//    --session-id is the run's executor_state.session_id), then, with the engine FROZEN
//    (SIGSTOP, database hashed before and after), `status --json --all`, `reap --sessions` and
//    `reap --all-leaked` are run and checked against the processes; after the thaw the held turn
//    of the shared adapter's running job is released and the job must complete.
//
// Everything started here is killed in afterAll and on process exit (a detached watcher
// thaws and stops the engines if this process dies without its afterAll).

import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildCli, repo, type BuiltCli } from '../helpers/built-cli.js';
import { ensureRealAdapter, toolchainEnv, type Toolchain } from './real-adapter-install.js';
import {
  HERE,
  dbContent,
  dbFiles,
  describeProc,
  engineRows,
  identity,
  isAlive,
  isGoneOrZombie,
  readArgv,
  readStat,
  runCli,
  sleep,
  startGuard,
  waitFor,
  type Identity,
} from './real-engine-helpers.js';

const SRC = (process.env.STEPWISE_SRC ?? '').trim();
const ENABLED = process.env.REAL_ADAPTER === '1' && SRC !== '';
const SKIP_MESSAGE = 'set REAL_ADAPTER=1 and STEPWISE_SRC=<a stepwise checkout> to run the real-adapter test';
const PYTHON = process.env.STEPWISE_PYTHON || 'python3';
const GUARD_DIR = path.resolve(process.env.REAL_ADAPTER_GUARD_DIR || path.join(repo, 'deploy', 'stepwise'));
const HARNESS = path.join(HERE, 'real_adapter_server.py');
const STANDIN = path.join(HERE, 'messages_api_standin.py');
const GRACES = ['--terminal-grace', '0', '--spawn-grace', '1'];
const SCENARIOS = ['top-killed-running', 'abandon', 'shared', 'paused', 'top-killed-paused'];

// ---------------------------------------------------------------------------------------------
// The status document, as much as this test reads (the sessions part is the issue-11 contract).

interface JobRef {
  id: string;
  status: string;
}
interface Session {
  sessionId: string;
  pid: number;
  startTicks: number;
  verdict: string;
  reason: string;
  jobs: JobRef[];
  rssBytes: number | null;
  swapBytes: number | null;
  pids: number[];
}
interface Adapter {
  topPid: number;
  startTicks: number;
  pids: number[];
  verdict: string;
  reason: string;
  jobs: JobRef[];
  pidFile: string | null;
  sessions?: Session[];
}
interface ProjectDoc {
  root: string;
  adapters: Adapter[];
  totals: Record<string, unknown>;
}

/** One scenario's job and tree, as the harness reported it. */
interface Scenario {
  jobId: string;
  status: string;
  adapterPid: number;
  pgid: number;
  sessionId: string;
  cliPid: number;
  survivors?: number[];
  failedAfter?: number;
}
interface Ready {
  event: 'ready';
  serverPid: number;
  scenarios: Record<string, Scenario>;
  setupSeconds: number;
  timings: Record<string, number>;
  guard: Record<string, unknown> | null;
}

// ---------------------------------------------------------------------------------------------
// Child processes: the stand-in and the engines

class LineChild {
  readonly child: ChildProcess;
  private lines: Record<string, unknown>[] = [];
  private buf = '';
  stderr = '';
  exitCode: number | null | undefined = undefined;
  readonly exited: Promise<number | null>;

  constructor(cmd: string, args: string[], opts: { cwd: string; env: NodeJS.ProcessEnv }) {
    this.child = spawn(cmd, args, { ...opts, stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stdout!.setEncoding('utf8').on('data', (d: string) => {
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
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.stderr = (this.stderr + d).slice(-300_000)));
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

  async next(pred: (l: Record<string, unknown>) => boolean, timeoutMs: number, what: string): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.lines.findIndex((l) => pred(l) || l.event === 'error');
      if (i >= 0) {
        const [line] = this.lines.splice(i, 1);
        if (line!.event === 'error' && !pred(line!)) {
          throw new Error(`${what}: ${String(line!.error)}\n${String(line!.traceback ?? '')}\nstderr:\n${this.stderr.slice(-8000)}`);
        }
        return line!;
      }
      if (this.exitCode !== undefined) throw new Error(`${what}: exited (${this.exitCode}); stderr:\n${this.stderr.slice(-8000)}`);
      if (Date.now() >= deadline) throw new Error(`${what}: no answer after ${timeoutMs} ms; stderr:\n${this.stderr.slice(-8000)}`);
      await sleep(50);
    }
  }

  async command(cmd: Record<string, unknown>, event: string, timeoutMs = 60_000): Promise<Record<string, unknown>> {
    this.child.stdin!.write(`${JSON.stringify(cmd)}\n`);
    return this.next((l) => l.event === event, timeoutMs, `command ${String(cmd.cmd)}`);
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

  /** exit command + stdin EOF, SIGTERM after `timeoutMs`, SIGKILL after twice that. */
  async stop(timeoutMs = 15_000): Promise<void> {
    if (this.exitCode !== undefined) return;
    this.thaw();
    try {
      this.child.stdin!.write('{"cmd":"exit"}\n');
      this.child.stdin!.end();
    } catch {
      // stdin gone
    }
    for (const sig of ['SIGTERM', 'SIGKILL'] as const) {
      if (await Promise.race([this.exited.then(() => true), sleep(timeoutMs).then(() => false)])) return;
      this.child.kill(sig);
    }
    await Promise.race([this.exited, sleep(5000)]);
  }
}

// ---------------------------------------------------------------------------------------------
// /proc helpers for this test

function allStats() {
  return fs
    .readdirSync('/proc')
    .filter((n) => /^\d+$/.test(n))
    .map((n) => readStat(Number(n)))
    .filter((s): s is NonNullable<ReturnType<typeof readStat>> => s !== null);
}

/** Live members of a process group (zombies left out). */
function groupMembers(pgid: number): number[] {
  return allStats()
    .filter((s) => s.pgid === pgid && s.state !== 'Z' && s.state !== 'X')
    .map((s) => s.pid);
}

function liveChildren(pid: number): number[] {
  return allStats()
    .filter((s) => s.ppid === pid && s.state !== 'Z' && s.state !== 'X')
    .map((s) => s.pid);
}

function sessionIdOf(argv: string[]): string | null {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a.startsWith('--session-id=')) return a.slice('--session-id='.length);
    if (a === '--session-id' || a === '--resume') return argv[i + 1] ?? null;
  }
  return null;
}

/** The long-lived shape of one tree (short-lived helpers such as `claude auth status` or `rg` left out). */
interface Shape {
  top: number | null; // npm exec (null when killed)
  sh: number | null;
  node: number | null;
  clis: { pid: number; sessionId: string | null }[];
}

const isHelper = (argv: string[]) => {
  const a0 = path.basename(argv[0] ?? '');
  return a0 === 'rg' || a0 === 'git' || argv.includes('auth');
};

function shapeOf(s: Scenario): Shape {
  const members = groupMembers(s.pgid).filter((p) => !isHelper(readArgv(p)));
  const by = (pred: (argv: string[]) => boolean) => members.filter((p) => pred(readArgv(p)));
  const tops = by((a) => (a[0] ?? '').startsWith('npm exec @agentclientprotocol/claude-agent-acp'));
  const shs = by((a) => a[0] === 'sh' && a[1] === '-c' && (a[2] ?? '').includes('claude-agent-acp'));
  const nodes = by((a) => path.basename(a[0] ?? '') === 'node' && (a[1] ?? '').endsWith('claude-agent-acp'));
  const clis = by((a) => (a[0] ?? '').endsWith('/claude-agent-sdk-linux-x64/claude'));
  return {
    top: tops[0] ?? null,
    sh: shs[0] ?? null,
    node: nodes[0] ?? null,
    clis: clis.map((pid) => ({ pid, sessionId: sessionIdOf(readArgv(pid)) })),
  };
}

function rssBytes(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** SIGKILL a group, but only while one of its members still runs the adapter or its CLI. */
function killAdapterGroup(pgid: number): void {
  const ours = groupMembers(pgid).some((p) => /claude-agent-acp|claude-agent-sdk/.test(readArgv(p).join(' ')));
  if (!ours) return;
  try {
    process.kill(-pgid, 'SIGKILL');
  } catch {
    // gone
  }
}

// ---------------------------------------------------------------------------------------------

if (!ENABLED) {
  describe('real claude-agent-acp trees under the real stepwise engine', () => {
    it.skip(SKIP_MESSAGE, () => {});
  });
  console.info(`real-adapter.test.ts: skipped: ${SKIP_MESSAGE}`);
} else {
  let tool: Toolchain;
  let built: BuiltCli | null = null;
  let tmp = '';
  let standin: LineChild | null = null;
  let standinUrl = '';
  let engine: LineChild | null = null; // project A: the buggy engine as shipped
  let guarded: LineChild | null = null; // project B: the release guard loaded
  let ready: Ready;
  let readyB: Ready | null = null;
  let readyBError: unknown = null;
  let rootA = '';
  let rootB = '';
  let cliEnv: NodeJS.ProcessEnv = {};
  const groups = new Set<number>(); // every adapter group seen, for the cleanup
  const watchers: ChildProcess[] = [];
  const notes: string[] = [];
  const t0 = Date.now();
  const shapes: Record<string, Shape> = {};
  const ids: Record<string, Identity> = {}; // every process the checks follow, by role

  const sc = (name: string) => ready.scenarios[name]!;
  const dbA = () => path.join(rootA, '.stepwise', 'stepwise.db');
  const pidFile = (root: string, pid: number) => path.join(root, '.stepwise', 'pids', `acp-${pid}.json`);
  const cli = (args: string[], timeoutMs?: number) => runCli(built!.bin, args, cliEnv, timeoutMs);
  const engineState = () => JSON.stringify(engineRows(dbA()), null, 1);

  function emergencyKill(): void {
    for (const e of [engine, guarded]) {
      if (e && e.exitCode === undefined) {
        e.thaw();
        e.child.kill('SIGKILL');
      }
    }
    for (const g of groups) killAdapterGroup(g);
    if (standin && standin.exitCode === undefined) standin.child.kill('SIGKILL');
  }
  process.once('exit', emergencyKill);

  async function release(name?: string): Promise<unknown> {
    const res = await fetch(`${standinUrl}/_standin/release`, { method: 'POST', body: JSON.stringify(name ? { name } : {}), signal: AbortSignal.timeout(5000) });
    return res.json();
  }

  async function standinLog(): Promise<{ requests: Record<string, unknown>[]; held: Record<string, number> }> {
    const res = await fetch(`${standinUrl}/_standin/requests`, { signal: AbortSignal.timeout(5000) });
    return (await res.json()) as { requests: Record<string, unknown>[]; held: Record<string, number> };
  }

  async function status(root: string): Promise<{ doc: ProjectDoc; raw: string; code: number | null; stderr: string }> {
    const r = await cli(['status', '--json', '--all', '--project', root, ...GRACES]);
    let doc: ProjectDoc;
    try {
      doc = (JSON.parse(r.stdout) as { projects: ProjectDoc[] }).projects[0]!;
    } catch {
      throw new Error(`status --json printed no JSON (exit ${r.code}):\n${r.stdout.slice(0, 2000)}\n${r.stderr}`);
    }
    return { doc, raw: r.stdout, code: r.code, stderr: r.stderr };
  }

  /** The watchdog's tree for a scenario: by its top, or (top killed) by its surviving node. */
  function adapterOf(doc: ProjectDoc, name: string): Adapter | undefined {
    const s = sc(name);
    const node = shapes[name]?.node;
    return doc.adapters.find((a) => a.topPid === s.adapterPid || a.topPid === s.pgid || (node != null && a.pids.includes(node)));
  }

  function explain(doc: ProjectDoc, name: string): string {
    const a = adapterOf(doc, name);
    return [
      `scenario ${name}: watchdog said ${a ? JSON.stringify(a, null, 1) : 'nothing (no tree)'}`,
      `engine: ${JSON.stringify(ready.scenarios[name])}`,
      `group ${sc(name).pgid}: ${groupMembers(sc(name).pgid).map(describeProc).join(' | ')}`,
      `jobs/step_runs:\n${engineState()}`,
    ].join('\n');
  }

  function startEngine(root: string, scenarios: string[], prefix: string, guardDir: string | null, env: NodeJS.ProcessEnv): LineChild {
    fs.mkdirSync(path.join(root, '.stepwise'), { recursive: true });
    const args = [HARNESS, '--src', SRC, '--project', root, '--standin', standinUrl, '--scenarios', scenarios.join(','), '--prefix', prefix];
    if (guardDir) args.push('--guard-dir', guardDir);
    return new LineChild(PYTHON, args, { cwd: root, env: { ...env, STEPWISE_RELEASE_GUARD: guardDir ? '1' : '0' } });
  }

  function watch(e: LineChild): void {
    const id = identity(e.pid);
    if (!id) return;
    watchers.push(startGuard(PYTHON, { engine: id, others: standin ? [{ ...identity(standin.pid)!, group: false }] : [] }));
  }

  beforeAll(async () => {
    if (!fs.existsSync(path.join(SRC, 'src', 'stepwise', 'engine.py'))) throw new Error(`STEPWISE_SRC=${SRC} has no src/stepwise/engine.py`);
    tool = ensureRealAdapter(undefined, (s) => console.info(`real-adapter.test.ts: ${s}`));
    notes.push(
      `toolchain ${tool.cache}: node ${tool.nodeVersion}, npm ${tool.npmVersion}, adapter ${tool.adapterVersion}, sdk ${tool.sdkVersion}; ${tool.installed ? 'installed' : 'already there'} in ${tool.installSeconds}s`,
    );
    tmp = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'sw-real-adapter-')));
    rootA = path.join(tmp, 'project');
    rootB = path.join(tmp, 'guarded');
    const home = path.join(tmp, 'home'); // the CLI writes its transcripts under $HOME/.claude
    fs.mkdirSync(home);
    cliEnv = { PATH: process.env.PATH, XDG_STATE_HOME: path.join(tmp, 'state') };
    // REAL_ADAPTER_WATCHDOG_BIN: an already built CLI (e.g. dist/cli/bin.js of another checkout).
    const bin = process.env.REAL_ADAPTER_WATCHDOG_BIN;
    built = bin ? { bin: path.resolve(bin), outDir: path.dirname(path.dirname(path.resolve(bin))), cleanup: () => {} } : buildCli(['cli/commands/status.js', 'cli/commands/reap.js']);
    notes.push(`watchdog CLI: ${built.bin}`);

    // The stand-in: 127.0.0.1, any free port.
    standin = new LineChild(PYTHON, [STANDIN, '--max-lifetime', '3600'], { cwd: tmp, env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' } });
    const listening = (await standin.next((l) => l.event === 'listening', 20_000, 'stand-in')) as { port: number };
    standinUrl = `http://127.0.0.1:${listening.port}`;

    const base: NodeJS.ProcessEnv = { ...process.env };
    for (const k of Object.keys(base)) if (/^(ANTHROPIC_|CLAUDE_|STEPWISE_|npm_)/.test(k)) delete base[k];
    const engineEnv: NodeJS.ProcessEnv = {
      ...toolchainEnv(tool, base, true),
      HOME: home,
      ANTHROPIC_BASE_URL: standinUrl,
      ANTHROPIC_API_KEY: 'sk-ant-stand-in-not-a-key',
      CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1',
      DISABLE_AUTOUPDATER: '1',
      DISABLE_TELEMETRY: '1',
      DISABLE_ERROR_REPORTING: '1',
      IS_SANDBOX: '1', // we are root: the CLI refuses --allow-dangerously-skip-permissions otherwise
      PYTHONDONTWRITEBYTECODE: '1',
      PYTHONUNBUFFERED: '1',
    };

    engine = startEngine(rootA, SCENARIOS, '', null, engineEnv);
    watch(engine);
    // The guarded engine starts once the first one has its slow scenario under way (2 cores).
    await sleep(3000);
    guarded = startEngine(rootB, ['shared'], 'guard-', GUARD_DIR, engineEnv);
    watch(guarded);
    const [a, b] = await Promise.allSettled([
      engine.next((l) => l.event === 'ready', 300_000, 'engine'),
      guarded.next((l) => l.event === 'ready', 300_000, 'guarded engine'),
    ]);
    if (b.status === 'fulfilled') readyB = b.value as unknown as Ready;
    else readyBError = b.reason;
    if (a.status === 'rejected') throw a.reason;
    ready = a.value as unknown as Ready;
    for (const r of [ready, readyB]) for (const s of Object.values(r?.scenarios ?? {})) groups.add(s.pgid);
    for (const name of Object.keys(ready.scenarios)) shapes[name] = shapeOf(sc(name));
    notes.push(`engine setup ${ready.setupSeconds}s ${JSON.stringify(ready.timings)}; guarded engine ${readyB ? `${readyB.setupSeconds}s` : `failed: ${String(readyBError)}`}`);
  }, 900_000);

  afterAll(async () => {
    try {
      await release().catch(() => {});
      await Promise.all([engine?.stop(), guarded?.stop()]);
      for (const g of groups) killAdapterGroup(g);
      await waitFor(() => [...groups].every((g) => groupMembers(g).length === 0), 10_000);
      for (const g of groups) killAdapterGroup(g);
      if (standin) {
        standin.child.stdin!.end();
        if (!(await Promise.race([standin.exited.then(() => true), sleep(3000).then(() => false)]))) standin.child.kill('SIGKILL');
      }
      for (const w of watchers) if (w.pid && readArgv(w.pid).includes('-c')) w.kill('SIGKILL');
      const leftovers = [...groups].flatMap(groupMembers).map(describeProc);
      if (leftovers.length) notes.push(`LEFTOVER processes: ${leftovers.join(' | ')}`);
    } finally {
      process.removeListener('exit', emergencyKill);
      notes.push(`suite wall time ${Math.round((Date.now() - t0) / 1000)}s`);
      console.info(`real-adapter.test.ts notes:\n  ${notes.join('\n  ')}`);
      if (tmp && !process.env.KEEP_REAL_ADAPTER_TMP) fs.rmSync(tmp, { recursive: true, force: true });
      built?.cleanup();
    }
  }, 120_000);

  // -------------------------------------------------------------------------------------------
  describe('the real engine and the real adapter (checked from /proc)', () => {
    it('job statuses as stepwise left them', () => {
      const statuses = Object.fromEntries(Object.entries(ready.scenarios).map(([k, v]) => [k, v.status]));
      expect(statuses).toEqual({
        abandon: 'failed',
        'shared-running': 'running',
        'shared-abandoned': 'failed',
        paused: 'paused',
        'top-killed-paused': 'paused',
        'top-killed-running': 'failed',
      });
      expect(sc('shared-abandoned').adapterPid).toBe(sc('shared-running').adapterPid);
      const tkr = engineRows(dbA()).runs as { job_id: string; status: string; error: string | null }[];
      const run = tkr.find((r) => r.job_id === sc('top-killed-running').jobId);
      expect(run?.error ?? '').toMatch(/Script process died/);
      notes.push(`top-killed-running: the engine failed the job ${sc('top-killed-running').failedAfter}s after the SIGTERM (${run?.error})`);
    });

    it('four levels: npm exec (one argv element) → sh -c → node (Node 22 from the cache) → one claude CLI per session', () => {
      for (const name of ['abandon', 'shared-running', 'paused']) {
        const s = sc(name);
        const sh = shapes[name]!;
        const why = `${name}: ${groupMembers(s.pgid).map(describeProc).join(' | ')}`;
        expect(sh.top, why).toBe(s.adapterPid);
        // npm overwrote its argv with process.title: one element, then the old argv's room as NULs.
        const topArgv = readArgv(sh.top!);
        expect(topArgv.filter((x) => x !== ''), why).toHaveLength(1);
        if (name === 'abandon') notes.push(`npm exec's /proc/<pid>/cmdline: 1 element + ${topArgv.length - 1} empty ones (NUL padding)`);
        const st = readStat(sh.top!)!;
        expect({ ppid: st.ppid, pgid: st.pgid, sid: st.sid }, why).toEqual({ ppid: ready.serverPid, pgid: s.adapterPid, sid: s.adapterPid });
        expect(readStat(sh.sh!)?.ppid, why).toBe(sh.top);
        expect(readStat(sh.node!)?.ppid, why).toBe(sh.sh);
        expect(fs.readlinkSync(`/proc/${sh.node}/exe`), why).toBe(fs.realpathSync(path.join(tool.bin, 'node')));
        for (const c of sh.clis) {
          expect(readStat(c.pid)?.ppid, why).toBe(sh.node);
          expect(fs.readlinkSync(`/proc/${c.pid}/cwd`), why).toBe(path.join(rootA, 'ws', name.replace(/-(running|abandoned)$/, '')));
        }
        ids[`${name}:top`] = identity(sh.top!)!;
        ids[`${name}:node`] = identity(sh.node!)!;
      }
      expect(shapes.abandon!.clis.map((c) => c.sessionId)).toEqual([sc('abandon').sessionId]);
      expect(shapes.paused!.clis.map((c) => c.sessionId)).toEqual([sc('paused').sessionId]);
      // shared: one adapter, two CLIs, one per job's session.
      const shared = shapes['shared-running']!;
      expect(shared.clis.map((c) => c.sessionId).sort()).toEqual([sc('shared-running').sessionId, sc('shared-abandoned').sessionId].sort());
      for (const name of ['abandon', 'shared-running', 'shared-abandoned', 'paused']) {
        expect(shapes['shared-running']!.clis.concat(shapes.abandon!.clis, shapes.paused!.clis).find((c) => c.sessionId === sc(name).sessionId)?.pid).toBe(sc(name).cliPid);
        ids[`${name}:cli`] = identity(sc(name).cliPid)!;
      }
      const mb = (pids: number[]) => Math.round(pids.reduce((n, p) => n + rssBytes(p), 0) / 1e6);
      notes.push(
        `RSS: abandon tree ${mb(groupMembers(sc('abandon').pgid))} MB, shared tree ${mb(groupMembers(sc('shared-running').pgid))} MB (abandoned session's CLI ${mb([sc('shared-abandoned').cliPid])} MB)`,
      );
    });

    it('top-killed trees: npm exec and sh gone, node (ppid 1 or a subreaper) + CLI live on in the dead leader group; pid file kept (paused) / removed (running)', () => {
      for (const name of ['top-killed-paused', 'top-killed-running']) {
        const s = sc(name);
        const sh = shapes[name]!;
        const why = `${name}: ${groupMembers(s.pgid).map(describeProc).join(' | ')}; top ${describeProc(s.adapterPid)}`;
        expect(sh.top, why).toBeNull();
        expect(sh.sh, why).toBeNull();
        expect(sh.node, why).not.toBeNull();
        expect(sh.clis.map((c) => c.sessionId), why).toEqual([s.sessionId]);
        const node = readStat(sh.node!)!;
        expect(node.pgid, why).toBe(s.adapterPid);
        expect(node.ppid, why).not.toBe(ready.serverPid);
        const top = readStat(s.adapterPid);
        expect(top === null || top.state === 'Z', why).toBe(true);
        ids[`${name}:node`] = identity(sh.node!)!;
        ids[`${name}:cli`] = identity(sh.clis[0]!.pid)!;
      }
      // paused: the server has not reaped its dead child; running: stepwise's own teardown reaped it.
      expect(readStat(sc('top-killed-paused').adapterPid)?.state).toBe('Z');
      expect(fs.existsSync(pidFile(rootA, sc('top-killed-paused').adapterPid))).toBe(true);
      expect(fs.existsSync(pidFile(rootA, sc('top-killed-running').adapterPid))).toBe(false);
    });

    it('the Messages-API stand-in held the running turns and saw nothing but /v1/messages', async () => {
      const log = await standinLog();
      expect(log.held['shared-running']).toBe(1);
      expect(log.held['top-killed-running']).toBe(1);
      const paths = [...new Set(log.requests.map((r) => `${String(r.method)} ${String(r.path).replace(/\?.*/, '')} ${String(r.status)}`))];
      notes.push(`stand-in requests: ${log.requests.length} (${paths.join(', ')}); ${log.requests.filter((r) => r.tools === false).length} without tools`);
      expect(paths.every((p) => p.startsWith('POST /v1/messages ')), paths.join(', ')).toBe(true);
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('the watchdog against the frozen engine (project A)', () => {
    let doc: ProjectDoc;
    let frozenBefore: { content: Record<string, unknown[]>; files: ReturnType<typeof dbFiles> } | null = null;

    beforeAll(async () => {
      engine!.freeze();
      if (!(await waitFor(() => readStat(engine!.pid)?.state === 'T', 5000))) throw new Error(`engine did not stop: ${describeProc(engine!.pid)}`);
      frozenBefore = { content: dbContent(dbA()), files: dbFiles(dbA()) };
      const r = await status(rootA);
      expect(r.code, r.stderr).toBe(0);
      doc = r.doc;
      notes.push(`status: ${doc.adapters.map((a) => `${a.topPid} ${a.verdict} [${(a.sessions ?? []).map((x) => `${x.sessionId.slice(0, 8)} ${x.verdict}`).join(', ')}]`).join('; ')}`);
    }, 120_000);

    it('abandon → leaked (job failed, abandoned)', () => {
      const a = adapterOf(doc, 'abandon');
      expect(a?.verdict, explain(doc, 'abandon')).toBe('leaked');
      expect(a!.jobs).toEqual([{ id: sc('abandon').jobId, status: 'failed' }]);
      expect([...a!.pids].sort()).toEqual(groupMembers(sc('abandon').pgid).sort());
    });

    it('shared → active, with a leaked session naming the abandoned job and an active one for the running job', () => {
      const a = adapterOf(doc, 'shared-running');
      expect(a?.verdict, explain(doc, 'shared-running')).toBe('active');
      const sessions = a!.sessions ?? [];
      const ab = sessions.find((x) => x.sessionId === sc('shared-abandoned').sessionId);
      const run = sessions.find((x) => x.sessionId === sc('shared-running').sessionId);
      expect(ab, `sessions: ${JSON.stringify(a!.sessions)}`).toBeDefined();
      expect(run, `sessions: ${JSON.stringify(a!.sessions)}`).toBeDefined();
      expect(ab).toMatchObject({ pid: sc('shared-abandoned').cliPid, startTicks: ids['shared-abandoned:cli']!.startTicks, verdict: 'leaked', jobs: [{ id: sc('shared-abandoned').jobId, status: 'failed' }] });
      expect(ab!.pids).toContain(sc('shared-abandoned').cliPid);
      expect(ab!.rssBytes ?? 0).toBeGreaterThan(50e6); // the CLI idles at 166–194 MB
      expect(run).toMatchObject({ pid: sc('shared-running').cliPid, verdict: 'active', jobs: [{ id: sc('shared-running').jobId, status: 'running' }] });
      expect(sessions).toHaveLength(2);
      expect(doc.totals.leakedSessions, JSON.stringify(doc.totals)).toBeGreaterThanOrEqual(1);
      expect(Number(doc.totals.leakedSessionBytes)).toBeGreaterThanOrEqual(ab!.rssBytes ?? 0);
    });

    it('paused → paused, its session paused', () => {
      const a = adapterOf(doc, 'paused');
      expect(a?.verdict, explain(doc, 'paused')).toBe('paused');
      expect(a!.jobs).toEqual([{ id: sc('paused').jobId, status: 'paused' }]);
      expect((a!.sessions ?? []).map((x) => [x.sessionId, x.verdict])).toEqual([[sc('paused').sessionId, 'paused']]);
    });

    it('top-killed-paused → paused (leaderless group of a paused job)', () => {
      const a = adapterOf(doc, 'top-killed-paused');
      expect(a?.verdict, explain(doc, 'top-killed-paused')).toBe('paused');
      expect(a!.pids).toEqual(expect.arrayContaining([ids['top-killed-paused:node']!.pid, ids['top-killed-paused:cli']!.pid]));
    });

    it('top-killed-running → leaked (leaderless group, no pid file, only executor_state.pgid names it)', () => {
      const a = adapterOf(doc, 'top-killed-running');
      expect(a?.verdict, explain(doc, 'top-killed-running')).toBe('leaked');
      expect(a!.pids).toEqual(expect.arrayContaining([ids['top-killed-running:node']!.pid, ids['top-killed-running:cli']!.pid]));
      expect(a!.reason).toMatch(/group leader \d+ gone; members alive/);
    });

    it('reap dry run: --all-leaked plans abandon and top-killed-running, never top-killed-paused; --sessions plans exactly the abandoned session', async () => {
      const r = await cli(['reap', '--all-leaked', '--json', '--project', rootA, ...GRACES]);
      expect(r.code, r.stderr).toBe(0);
      const plan = (JSON.parse(r.stdout) as { projects: { plan: { actions: Record<string, unknown>[] } }[] }).projects[0]!.plan.actions;
      notes.push(`reap --all-leaked plan: ${JSON.stringify(plan.map((x) => [x.kind, x.topPid, x.verdict]))}`);
      const kills = plan.filter((x) => x.kind === 'kill-tree');
      const planned = (name: string) => kills.some((k) => k.topPid === sc(name).adapterPid || (Array.isArray(k.pids) && (k.pids as number[]).includes(shapes[name]!.node!)));
      expect(planned('abandon'), JSON.stringify(plan)).toBe(true);
      expect(planned('top-killed-running'), JSON.stringify(plan)).toBe(true);
      expect(planned('top-killed-paused'), JSON.stringify(plan)).toBe(false);
      expect(kills).toHaveLength(2);
      const s = await cli(['reap', '--sessions', '--json', '--project', rootA, ...GRACES]);
      expect(s.code, s.stderr).toBe(0);
      const splan = (JSON.parse(s.stdout) as { projects: { plan: { actions: Record<string, unknown>[] } }[] }).projects[0]!.plan.actions;
      notes.push(`reap --sessions plan: ${JSON.stringify(splan)}`);
      const sessionKills = splan.filter((x) => String(x.kind).includes('session'));
      expect(sessionKills.map((x) => x.pid ?? x.cliPid), JSON.stringify(splan)).toEqual([sc('shared-abandoned').cliPid]);
      expect(splan.filter((x) => x.kind === 'kill-tree')).toEqual([]);
    }, 90_000);

    it('reap --sessions --yes: the abandoned session CLI is gone within seconds; the adapter and the running session live on', async () => {
      const audit = path.join(tmp, 'audit-sessions.jsonl');
      const r = await cli(['reap', '--sessions', '--yes', '--json', '--project', rootA, ...GRACES, '--audit-log', audit]);
      notes.push(`reap --sessions --yes: exit ${r.code}; totals ${JSON.stringify((JSON.parse(r.stdout || '{}') as { totals?: unknown }).totals)}`);
      expect(r.code, `${r.stderr}\n${r.stdout.slice(0, 3000)}`).toBe(0);
      const gone = await waitFor(() => isGoneOrZombie(ids['shared-abandoned:cli']!), 5000);
      expect(gone, describeProc(sc('shared-abandoned').cliPid)).toBe(true);
      for (const k of ['shared-running:top', 'shared-running:node', 'shared-running:cli']) expect(isAlive(ids[k]!), `${k}: ${describeProc(ids[k]!.pid)}`).toBe(true);
      expect(readStat(shapes['shared-running']!.sh!)?.state).not.toBe('Z');
      // Nothing else was touched.
      for (const k of ['abandon:top', 'abandon:node', 'abandon:cli', 'paused:cli', 'top-killed-paused:cli', 'top-killed-running:cli']) expect(isAlive(ids[k]!), k).toBe(true);
      const records = fs.readFileSync(audit, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
      const sessionRecords = records.filter((x) => x.kind === 'kill-session' || x.action === 'kill-session');
      expect(sessionRecords, JSON.stringify(records)).toHaveLength(1);
      expect(sessionRecords[0]).toMatchObject({ outcome: 'ok', session: { sessionId: sc('shared-abandoned').sessionId, pid: sc('shared-abandoned').cliPid } });
      expect(sessionRecords[0]!.groupSignals ?? [], 'a session is stopped by pid, never by group').toEqual([]);
      expect(records.filter((x) => x.action === 'kill-tree')).toEqual([]);
    }, 90_000);

    it('reap --all-leaked --yes: abandon and top-killed-running are gone; top-killed-paused, paused and shared survive', async () => {
      const audit = path.join(tmp, 'audit-trees.jsonl');
      const r = await cli(['reap', '--all-leaked', '--yes', '--json', '--project', rootA, ...GRACES, '--audit-log', audit]);
      notes.push(`reap --all-leaked --yes: exit ${r.code}; totals ${JSON.stringify((JSON.parse(r.stdout || '{}') as { totals?: unknown }).totals)}`);
      expect(r.code, `${r.stderr}\n${r.stdout.slice(0, 3000)}`).toBe(0);
      const reaped = ['abandon:top', 'abandon:node', 'abandon:cli', 'top-killed-running:node', 'top-killed-running:cli'];
      await waitFor(() => reaped.every((k) => isGoneOrZombie(ids[k]!)), 5000);
      for (const k of reaped) expect(isGoneOrZombie(ids[k]!), `${k}: ${describeProc(ids[k]!.pid)}`).toBe(true);
      for (const k of ['top-killed-paused:node', 'top-killed-paused:cli', 'paused:top', 'paused:node', 'paused:cli', 'shared-running:top', 'shared-running:node', 'shared-running:cli']) {
        expect(isAlive(ids[k]!), `${k}: ${describeProc(ids[k]!.pid)}`).toBe(true);
      }
    }, 90_000);

    it('the engine database is unchanged (engine frozen throughout)', () => {
      expect(frozenBefore).not.toBeNull();
      expect(readStat(engine!.pid)?.state).toBe('T');
      const files = dbFiles(dbA());
      notes.push(`db files before ${JSON.stringify(frozenBefore!.files)} after ${JSON.stringify(files)}`);
      expect(files.siblings).toEqual(frozenBefore!.files.siblings);
      expect(files.hashes['stepwise.db']).toBe(frozenBefore!.files.hashes['stepwise.db']);
      expect(files.hashes['stepwise.db-wal']).toBe(frozenBefore!.files.hashes['stepwise.db-wal']);
      expect(dbContent(dbA())).toEqual(frozenBefore!.content);
    });
  });

  describe('after the thaw', () => {
    it("the shared adapter's running job completes its turn once the stand-in releases it", async () => {
      engine!.thaw();
      await waitFor(() => readStat(engine!.pid)?.state !== 'T', 5000);
      await release('shared-running');
      const w = (await engine!.command({ cmd: 'wait', jobId: sc('shared-running').jobId, statuses: ['completed', 'failed', 'cancelled'], timeout: 60 }, 'waited', 90_000)) as {
        status: string;
        runs: { status: string; error: string | null }[];
      };
      expect(w.status, `${JSON.stringify(w.runs)}\nengine stderr:\n${engine!.stderr.slice(-4000)}`).toBe('completed');
      expect(w.runs.map((x) => x.status)).toEqual(['completed']);
      const died = /Session [0-9a-f-]+: Claude Agent process died[^\n]*/.exec(engine!.stderr);
      notes.push(`adapter stderr after the session kill: ${died ? died[0] : '(no "process died" line)'}`);
    }, 120_000);
  });

  // -------------------------------------------------------------------------------------------
  describe('with the release guard loaded (project B)', () => {
    const scB = (name: string) => readyB!.scenarios[`guard-${name}`]!;

    it('the guarded engine ran the shared scenario (one adapter, two sessions)', () => {
      expect(readyB, `guarded engine failed: ${String(readyBError)}`).not.toBeNull();
      const { hook_points: _hooks, ...guardStatus } = (readyB!.guard ?? {}) as Record<string, unknown>;
      notes.push(`guard: ${JSON.stringify(guardStatus)}`);
      expect(readyB!.guard).toMatchObject({ state: 'active' });
      expect(scB('shared-running').status).toBe('running');
      expect(scB('shared-abandoned').status).toBe('failed');
      expect(scB('shared-abandoned').adapterPid).toBe(scB('shared-running').adapterPid);
    });

    it("the abandoned job's session CLI exits (closed in-engine) while the adapter and the running session carry on", async () => {
      expect(readyB).not.toBeNull();
      const ab = scB('shared-abandoned');
      const pgid = scB('shared-running').pgid;
      const runId = identity(scB('shared-running').cliPid)!;
      const topId = identity(scB('shared-running').adapterPid)!;
      // The harness saw the abandoned session's CLI come up in the shared group (it may be closed
      // already: the guard closes it when the step run finishes, milliseconds after its turn).
      expect(ab.cliPid, 'the abandoned session never had a CLI in the shared adapter').toBeTruthy();
      const liveCli = () => groupMembers(pgid).find((p) => sessionIdOf(readArgv(p)) === ab.sessionId);
      const closed = await waitFor(() => liveCli() === undefined, 15_000);
      const r = await status(rootB);
      const a = r.doc.adapters.find((x) => x.topPid === scB('shared-running').adapterPid);
      const logLine = new RegExp(`[^\\n]*closed ACP session ${ab.sessionId}[^\\n]*`).exec(guarded!.stderr)?.[0] ?? '(no "closed ACP session" line)';
      notes.push(
        `guarded shared adapter: ${a ? `${a.verdict} [${(a.sessions ?? []).map((x) => `${x.sessionId.slice(0, 8)} ${x.verdict}`).join(', ')}]` : 'no tree'}; abandoned CLI ${closed ? 'exited' : 'STILL ALIVE'} (alive when the harness was ready: ${String((ab as { cliAliveAtReady?: boolean }).cliAliveAtReady)}); guard log: ${logLine.trim()}`,
      );
      expect(closed, `the guard did not close session ${ab.sessionId}: ${describeProc(liveCli() ?? ab.cliPid)}`).toBe(true);
      expect(isAlive(topId), describeProc(topId.pid)).toBe(true);
      expect(isAlive(runId), describeProc(runId.pid)).toBe(true);
      expect(a?.verdict).toBe('active');
      expect((a?.sessions ?? []).map((x) => [x.sessionId, x.verdict])).toEqual([[scB('shared-running').sessionId, 'active']]);
    }, 60_000);

    it("the guarded engine's running job completes its turn", async () => {
      expect(readyB).not.toBeNull();
      await release('guard-shared-running');
      const w = (await guarded!.command({ cmd: 'wait', jobId: scB('shared-running').jobId, statuses: ['completed', 'failed', 'cancelled'], timeout: 60 }, 'waited', 90_000)) as {
        status: string;
        runs: unknown[];
      };
      expect(w.status, JSON.stringify(w.runs)).toBe('completed');
    }, 120_000);
  });
}
