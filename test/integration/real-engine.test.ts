// OPT-IN end to end: the REAL stepwise engine (Python, from STEPWISE_SRC) spawns fake adapter
// trees, and the BUILT watchdog CLI and daemon, as child processes, judge and reap them.
//
//   STEPWISE_SRC=/path/to/stepwise npx vitest run test/integration/real-engine.test.ts
//
// Without STEPWISE_SRC every test here is skipped. With it:
//
// 1. real_engine_server.py runs stepwise's own AsyncEngine + SQLiteStore + executor registry in a
//    temp project (cwd = project root, `.stepwise/server.pid` written by stepwise's own
//    write_pidfile) as a long-lived "server". Its agents run fake_tree_adapter.py: a three-level
//    tree npm-exec → adapter → `claude` whose argv carries `@agentclientprotocol/claude-agent-acp`.
//    The engine drives: two exit-rule-abandon leaks, one cancel-then-retry leak (retry backoff
//    2 s), a running job, a paused (escalate) job, a shared adapter (one abandoned + one running
//    job) and a completed job (adapter released by the engine). By hand, the test adds an orphan
//    (tree reparented to pid 1, pid file, no job), a foreign adapter (an editor stand-in's own),
//    a pid file naming a dead pid and one naming a live unrelated `sleep` that started after the
//    file's mtime.
// 2. `status --json --all` must give every tree its verdict.
// 3. The database: the engine is FROZEN (SIGSTOP) for the whole read/reap/gc phase, so nothing but
//    our commands can touch its files. stepwise.db and stepwise.db-wal must keep their exact
//    bytes (sha256) and every table its rows (read-only dump) across status, the observe-only
//    daemon, reap and gc; no new file may appear next to the db (no -journal). -shm is hashed
//    and reported but not required equal: it is SQLite's shared-memory wal-index, not database
//    content, and a read-only WAL reader legitimately updates its read-mark slots there.
//    (Hashing with the engine live would be unsound: it writes on its own, e.g. a retry's
//    executor_state.)
// 4. `reap --all-leaked --orphans --yes` kills exactly the leaked and orphaned trees (every pid
//    gone or a zombie, by pid + start time) and nothing else; one ok audit record per tree.
//    `gc --yes` removes exactly the stale pid files.
// 5. Metrics: an observe-only daemon counts the leaks before the reap; after the thaw the engine
//    makes one more leak and a reaping daemon takes `leaked` back to 0.
// 6. Everything started here is killed in afterAll, whatever happened (and SIGKILLed on exit).
//
// Findings against the real engine are asserted, never weakened: a failing verdict test names
// what the engine wrote (jobs, step_runs) and what the watchdog said.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildCli, type BuiltCli } from '../helpers/built-cli.js';
import {
  Daemon,
  EngineHarness,
  FAKE_TREE,
  dbContent,
  dbFiles,
  deadPid,
  describeProc,
  engineRows,
  identity,
  isAlive,
  isGoneOrZombie,
  killGroupIf,
  killIf,
  killRecorded,
  metric,
  readArgv,
  readStat,
  recordedTops,
  runCli,
  sleep,
  startGuard,
  treeOf,
  waitFor,
  type HarnessReady,
  type Identity,
} from './real-engine-helpers.js';

const SRC = (process.env.STEPWISE_SRC ?? '').trim();
const SKIP_MESSAGE = 'set STEPWISE_SRC to a stepwise source tree to run the real-engine test';
const PYTHON = process.env.STEPWISE_PYTHON || 'python3';
const GRACES = ['--terminal-grace', '0', '--spawn-grace', '1'];

// The status document, as much as the test reads.
interface JobRef {
  id: string;
  status: string;
}
interface Adapter {
  topPid: number;
  startTicks: number;
  pids: number[];
  verdict: string;
  reason: string;
  jobs: JobRef[];
  pidFile: string | null;
  evidence: string[];
}
interface PidFile {
  path: string;
  pid: number | null;
  verdict: string;
  reason: string;
}
interface ProjectDoc {
  root: string;
  pidsDir: string;
  db: string;
  server: { pid: number; alive: boolean; cwd: string | null; reason: string };
  sources: Record<string, { ok: boolean; error: string | null }>;
  adapters: Adapter[];
  pidFiles: PidFile[];
  totals: Record<string, unknown>;
}

if (!SRC) {
  describe('real stepwise engine', () => {
    it.skip(SKIP_MESSAGE, () => {});
  });
  console.info(`real-engine.test.ts: skipped: ${SKIP_MESSAGE}`);
} else {
  // Trees by scenario name. "shared" is the adapter of both shared jobs.
  const REAPED = ['leak-1', 'leak-2', 'cancel-retry', 'orphan'] as const;
  const SURVIVE = ['active', 'shared', 'paused', 'foreign'] as const;
  const EXPECTED_VERDICT: Record<string, string> = {
    'leak-1': 'leaked',
    'leak-2': 'leaked',
    'cancel-retry': 'leaked',
    active: 'active',
    shared: 'active',
    paused: 'paused',
    orphan: 'orphaned',
    foreign: 'foreign',
  };

  let built: BuiltCli | null = null;
  let tmp = '';
  let root = '';
  let pidsDir = '';
  let dbPath = '';
  let recordDir = '';
  let auditLog = '';
  let cliEnv: NodeJS.ProcessEnv = {};
  let engine: EngineHarness | null = null;
  let ready: HarnessReady;
  let serverId: Identity;
  const trees: Record<string, Identity[]> = {};
  let editor: ChildProcess | null = null;
  let editorId: Identity | null = null;
  let sleeper: ChildProcess | null = null;
  let guard: ChildProcess | null = null;
  let sleeperId: Identity;
  let stalePidFiles: { dead: string; reused: string };
  let orphanParent = '';
  const daemons: Daemon[] = [];
  let frozenBefore: { content: Record<string, unknown[]>; files: ReturnType<typeof dbFiles> } | null = null;
  let reapedTops = new Set<number>();
  const notes: string[] = [];

  const top = (name: string) => trees[name]![0]!.pid;
  const pidFileOf = (pid: number) => path.join(pidsDir, `acp-${pid}.json`);
  const cli = (args: string[], timeoutMs?: number) => runCli(built!.bin, args, cliEnv, timeoutMs);
  const projectArgs = () => ['--project', root];
  const engineState = () => JSON.stringify(engineRows(dbPath), null, 1);

  function emergencyKill(): void {
    try {
      if (engine && engine.exitCode === undefined) {
        engine.thaw();
        engine.child.kill('SIGKILL');
      }
    } catch {
      // gone
    }
    if (recordDir) killRecorded(recordDir);
    if (editorId) killGroupIf(editorId.pid, 'fake_tree_adapter.py');
    if (sleeperId) killIf(sleeperId.pid, 'sleep');
    for (const d of daemons) d.child.kill('SIGKILL');
  }
  process.once('exit', emergencyKill);

  async function status(all = true): Promise<{ doc: ProjectDoc; raw: string; code: number | null; stderr: string }> {
    const r = await cli(['status', '--json', ...(all ? ['--all'] : []), ...projectArgs(), ...GRACES]);
    let doc: ProjectDoc;
    try {
      doc = (JSON.parse(r.stdout) as { projects: ProjectDoc[] }).projects[0]!;
    } catch {
      throw new Error(`status --json printed no JSON (exit ${r.code}):\n${r.stdout.slice(0, 2000)}\n${r.stderr}`);
    }
    return { doc, raw: r.stdout, code: r.code, stderr: r.stderr };
  }

  /** `name=topPid verdict` for this test's trees and any non-foreign tree (other programs' foreign ones left out). */
  function ourTrees(doc: ProjectDoc): string {
    const names = new Map(Object.keys(trees).map((n) => [top(n), n]));
    return doc.adapters
      .filter((a) => a.verdict !== 'foreign' || names.has(a.topPid))
      .map((a) => `${names.get(a.topPid) ?? '?'}=${a.topPid} ${a.verdict}`)
      .join(', ');
  }

  function adapterOf(doc: ProjectDoc, name: string): Adapter | undefined {
    return doc.adapters.find((a) => a.topPid === top(name));
  }

  /** What the engine did and what the watchdog said, for a failing verdict. */
  function explain(doc: ProjectDoc, name: string): string {
    const a = adapterOf(doc, name);
    return [
      `scenario ${name}: expected ${EXPECTED_VERDICT[name]}, watchdog said ${a ? `${a.verdict}: ${a.reason} (evidence ${JSON.stringify(a.evidence)}, jobs ${JSON.stringify(a.jobs)})` : 'nothing (no tree)'}`,
      `engine: ${JSON.stringify(ready.scenarios[name] ?? ready.scenarios[`${name}-running`])}`,
      `tree: ${trees[name]!.map((t) => describeProc(t.pid)).join(' | ')}`,
      `jobs/step_runs:\n${engineState()}`,
    ].join('\n');
  }

  beforeAll(async () => {
    if (!fs.existsSync(path.join(SRC, 'src', 'stepwise', 'engine.py'))) {
      throw new Error(`STEPWISE_SRC=${SRC} has no src/stepwise/engine.py`);
    }
    tmp = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'sw-real-engine-')));
    root = path.join(tmp, 'project');
    pidsDir = path.join(root, '.stepwise', 'pids');
    dbPath = path.join(root, '.stepwise', 'stepwise.db');
    recordDir = path.join(tmp, 'adapters');
    auditLog = path.join(tmp, 'audit.jsonl');
    fs.mkdirSync(path.join(root, '.stepwise'), { recursive: true });
    fs.mkdirSync(recordDir);
    cliEnv = { PATH: process.env.PATH, XDG_STATE_HOME: path.join(tmp, 'state') };

    built = buildCli(['cli/commands/status.js', 'cli/commands/reap.js', 'cli/commands/run.js']);

    // 1. The engine and its scenarios.
    const pyEnv: NodeJS.ProcessEnv = { ...process.env, STEPWISE_RELEASE_GUARD: '0', PYTHONDONTWRITEBYTECODE: '1', PYTHONUNBUFFERED: '1' };
    delete pyEnv.STEPWISE_DB;
    engine = new EngineHarness({ python: PYTHON, src: SRC, project: root, recordDir, env: pyEnv });
    ready = (await engine.next((l) => l.event === 'ready', 150_000)) as unknown as HarnessReady;
    serverId = identity(ready.serverPid)!;
    expect(ready.serverPid).toBe(engine.pid);

    const treeEnv = { ...pyEnv, FAKE_TREE_RECORD_DIR: recordDir };
    // 2. An orphan: a tree left by a previous server, reparented to pid 1, pid file, no job.
    const launched = spawnSync(PYTHON, [FAKE_TREE, 'orphan', pidsDir, 'claude'], { env: treeEnv, encoding: 'utf8', timeout: 30_000 });
    if (launched.status !== 0) throw new Error(`orphan launcher failed (${launched.status ?? launched.signal}): ${launched.stderr}`);
    const orphanTop = (JSON.parse(launched.stdout) as { top: number }).top;
    // 3. A foreign adapter: an editor's own (its group, no pid file, no job).
    editor = spawn(PYTHON, [FAKE_TREE, 'editor'], { env: treeEnv, stdio: ['ignore', 'pipe', 'ignore'] });
    const editorLine = await new Promise<string>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error('editor stand-in did not report')), 30_000);
      editor!.stdout!.setEncoding('utf8').on('data', (d: string) => {
        out += d;
        if (out.includes('\n')) {
          clearTimeout(timer);
          resolve(out.split('\n')[0]!);
        }
      });
    });
    const { editor: editorPid, top: foreignTop } = JSON.parse(editorLine) as { editor: number; top: number };
    editorId = identity(editorPid);
    // 4. An unrelated live process whose pid a stale pid file names (written an hour before it started).
    sleeper = spawn('sleep', ['900'], { detached: true, stdio: 'ignore' });
    await waitFor(() => readArgv(sleeper!.pid!)[0] === 'sleep', 10_000);
    sleeperId = identity(sleeper.pid!)!;
    stalePidFiles = { dead: pidFileOf(deadPid()), reused: pidFileOf(sleeperId.pid) };
    fs.writeFileSync(stalePidFiles.reused, JSON.stringify({ pid: sleeperId.pid, agent: 'claude' }));
    const hourAgo = new Date(Date.now() - 3600_000);
    fs.utimesSync(stalePidFiles.reused, hourAgo, hourAgo);
    const dead = Number(/acp-(\d+)\.json$/.exec(stalePidFiles.dead)![1]);
    fs.writeFileSync(stalePidFiles.dead, JSON.stringify({ pid: dead, agent: 'claude' }));

    // Every tree, with all three levels up.
    const tops: Record<string, number> = {
      'leak-1': ready.scenarios['leak-1']!.adapterPid!,
      'leak-2': ready.scenarios['leak-2']!.adapterPid!,
      'cancel-retry': ready.scenarios['cancel-retry']!.adapterPid!,
      active: ready.scenarios.active!.adapterPid!,
      shared: ready.scenarios['shared-running']!.adapterPid!,
      paused: ready.scenarios.paused!.adapterPid!,
      orphan: orphanTop,
      foreign: foreignTop,
    };
    for (const [name, pid] of Object.entries(tops)) {
      trees[name] = (await waitFor(() => (treeOf(pid).length >= 3 ? treeOf(pid) : null), 15_000)) ?? treeOf(pid);
    }
    await waitFor(() => readStat(orphanTop)?.ppid !== launched.pid, 10_000);
    const orphanPpid = readStat(orphanTop)!.ppid;
    orphanParent = orphanPpid === 1 ? 'pid 1' : fs.readFileSync(`/proc/${orphanPpid}/comm`, 'utf8').trim();
    // A user-level subreaper (systemd --user, a container init) adopts orphans instead of pid 1.
    if (orphanPpid !== 1) cliEnv.STEPWISE_WATCHDOG_SUBREAPERS = orphanParent;
    guard = startGuard(PYTHON, {
      engine: serverId,
      others: [
        { ...editorId!, group: true },
        { ...sleeperId, group: false },
        ...['orphan', 'foreign'].map((n) => ({ ...trees[n]![0]!, group: readStat(top(n))?.pgid === top(n) })),
      ],
    });
    // The orphan must be older than the spawn grace (1 s) to be reapable.
    await sleep(1500);
    notes.push(`engine setup ${ready.setupSeconds}s; orphan adopted by ${orphanParent}`);
  }, 300_000);

  afterAll(async () => {
    for (const d of daemons) await d.stop(10_000);
    await engine?.stop();
    if (recordDir) killRecorded(recordDir);
    if (editorId) killGroupIf(editorId.pid, 'fake_tree_adapter.py');
    if (sleeperId) killIf(sleeperId.pid, 'sleep');
    // Bounded: every tree this test started is gone (or a zombie awaiting its reaper).
    const everything = [...Object.values(trees).flat(), ...(editorId ? [editorId] : []), ...(sleeperId ? [sleeperId] : [])];
    await waitFor(() => everything.every(isGoneOrZombie), 10_000);
    if (recordDir) killRecorded(recordDir); // anything the engine spawned while we waited
    // The guard leaves by itself once the engine is gone; make sure.
    if (guard?.pid) {
      await waitFor(() => !readArgv(guard!.pid!).includes('-c'), 3000);
      killIf(guard.pid, 'deadline = time.time() + 3600');
    }
    process.removeListener('exit', emergencyKill);
    if (notes.length) console.info(`real-engine.test.ts notes:\n  ${notes.join('\n  ')}`);
    if (tmp && !process.env.KEEP_REAL_ENGINE_TMP) fs.rmSync(tmp, { recursive: true, force: true });
    built?.cleanup();
  }, 60_000);

  describe('the real engine', () => {
    it('ran every scenario: job statuses, shared adapter, released adapter, three-level trees', () => {
      const s = ready.scenarios;
      const statuses = Object.fromEntries(Object.entries(s).map(([k, v]) => [k, v.status]));
      expect(statuses).toEqual({
        active: 'running',
        'shared-running': 'running',
        'shared-abandoned': 'failed',
        'leak-1': 'failed',
        'leak-2': 'failed',
        paused: 'paused',
        completed: 'completed',
        'cancel-retry': 'cancelled',
      });
      expect(s['shared-abandoned']!.adapterPid).toBe(s['shared-running']!.adapterPid);
      expect(s['cancel-retry']!.firstAdapterAlive).toBe(false);
      expect(s['cancel-retry']!.adapterPid).not.toBe(s['cancel-retry']!.firstAdapterPid);
      const completed = s.completed!.adapterPid!;
      expect(readStat(completed) === null || readStat(completed)!.state === 'Z').toBe(true);
      expect(fs.existsSync(pidFileOf(completed))).toBe(false);
      for (const [name, t] of Object.entries(trees)) {
        expect(t.length, `${name}: ${t.map((x) => describeProc(x.pid)).join(' | ')}`).toBe(3);
        expect(readArgv(t[0]!.pid).join(' '), name).toContain('claude-agent-acp');
      }
      // Engine-spawned tops lead their own session and group, children of the server.
      for (const name of ['leak-1', 'leak-2', 'cancel-retry', 'active', 'shared', 'paused']) {
        const st = readStat(top(name))!;
        expect({ name, ppid: st.ppid, pgid: st.pgid, sid: st.sid }).toEqual({ name, ppid: ready.serverPid, pgid: top(name), sid: top(name) });
      }
      expect(readStat(top('foreign'))!.pgid).toBe(editorId!.pid);
    });
  });

  describe('status --json --all (engine frozen from here to the database check)', () => {
    let doc: ProjectDoc;

    beforeAll(async () => {
      engine!.freeze();
      const stopped = await waitFor(() => readStat(engine!.pid)?.state === 'T', 5000);
      if (!stopped) throw new Error(`engine did not stop: ${describeProc(engine!.pid)}`);
      // Content first (this reader may touch -shm), then the bytes.
      frozenBefore = { content: dbContent(dbPath), files: dbFiles(dbPath) };
      const r = await status(true);
      expect(r.code, r.stderr).toBe(0);
      doc = r.doc;
      notes.push(`status before reap: ${ourTrees(doc)}`);
    }, 120_000);

    it('reads every source; the server is the engine, verified, with the project as cwd', () => {
      for (const [name, h] of Object.entries(doc.sources)) expect(h.ok, `${name}: ${h.error}`).toBe(true);
      expect(doc.server).toMatchObject({ pid: ready.serverPid, alive: true, cwd: root });
      expect(doc.pidsDir).toBe(pidsDir);
      expect(doc.db).toBe(dbPath);
    });

    it('exit-rule-abandon leaks: leaked, job failed (abandoned)', () => {
      for (const name of ['leak-1', 'leak-2']) {
        const a = adapterOf(doc, name);
        expect(a?.verdict, explain(doc, name)).toBe('leaked');
        expect(a!.jobs).toEqual([{ id: ready.scenarios[name]!.jobId, status: 'failed' }]);
        expect(a!.reason).toMatch(/abandoned/);
        expect([...a!.pids].sort()).toEqual(trees[name]!.map((t) => t.pid).sort());
        expect(a!.pidFile).toBe(pidFileOf(top(name)));
      }
    });

    it('cancel-then-retry leak: leaked, job cancelled', () => {
      const a = adapterOf(doc, 'cancel-retry');
      expect(a?.verdict, explain(doc, 'cancel-retry')).toBe('leaked');
      expect(a!.jobs).toEqual([{ id: ready.scenarios['cancel-retry']!.jobId, status: 'cancelled' }]);
      expect([...a!.pids].sort()).toEqual(trees['cancel-retry']!.map((t) => t.pid).sort());
    });

    it('running job: active', () => {
      const a = adapterOf(doc, 'active');
      expect(a?.verdict, explain(doc, 'active')).toBe('active');
      expect(a!.jobs).toEqual([{ id: ready.scenarios.active!.jobId, status: 'running' }]);
    });

    it('shared adapter (one abandoned + one running job): active, naming both jobs', () => {
      const a = adapterOf(doc, 'shared');
      expect(a?.verdict, explain(doc, 'shared')).toBe('active');
      expect([...a!.jobs].sort((x, y) => x.id.localeCompare(y.id))).toEqual(
        [
          { id: ready.scenarios['shared-running']!.jobId, status: 'running' },
          { id: ready.scenarios['shared-abandoned']!.jobId, status: 'failed' },
        ].sort((x, y) => x.id.localeCompare(y.id)),
      );
    });

    it('escalated job: paused', () => {
      const a = adapterOf(doc, 'paused');
      expect(a?.verdict, explain(doc, 'paused')).toBe('paused');
      expect(a!.jobs).toEqual([{ id: ready.scenarios.paused!.jobId, status: 'paused' }]);
    });

    it('tree of a previous server (reparented, pid file, no job): orphaned', () => {
      const a = adapterOf(doc, 'orphan');
      expect(a?.verdict, explain(doc, 'orphan')).toBe('orphaned');
      expect(a!.jobs).toEqual([]);
      expect(a!.pidFile).toBe(pidFileOf(top('orphan')));
      expect([...a!.pids].sort()).toEqual(trees.orphan!.map((t) => t.pid).sort());
    });

    it("editor's own adapter: foreign (its tree without the editor), and only listed with --all", async () => {
      const a = adapterOf(doc, 'foreign');
      expect(a?.verdict, explain(doc, 'foreign')).toBe('foreign');
      expect([...a!.pids].sort()).toEqual(trees.foreign!.map((t) => t.pid).sort());
      expect(a!.pidFile).toBeNull();
      const plain = await status(false);
      expect(plain.doc.adapters.find((x) => x.topPid === top('foreign'))).toBeUndefined();
    });

    it("no other tree of this project; the completed job's adapter is absent", () => {
      // Other programs on this machine may run marker-matching processes: foreign, not ours.
      const ours = doc.adapters.filter((a) => a.verdict !== 'foreign').map((a) => a.topPid);
      const expected = Object.keys(EXPECTED_VERDICT).filter((n) => n !== 'foreign').map(top);
      expect([...ours].sort()).toEqual([...expected].sort());
      const completed = ready.scenarios.completed!.adapterPid!;
      expect(doc.adapters.find((a) => a.topPid === completed || a.pids.includes(completed))).toBeUndefined();
      expect(doc.pidFiles.find((f) => f.pid === completed)).toBeUndefined();
    });

    it('pid files: stale-dead, stale-reused, and live for every live tree', () => {
      const verdicts = Object.fromEntries(doc.pidFiles.map((f) => [f.path, f.verdict]));
      const expected: Record<string, string> = { [stalePidFiles.dead]: 'stale-dead', [stalePidFiles.reused]: 'stale-reused' };
      for (const name of ['leak-1', 'leak-2', 'cancel-retry', 'active', 'shared', 'paused', 'orphan']) expected[pidFileOf(top(name))] = 'live';
      expect(verdicts).toEqual(expected);
    });
  });

  describe('run --observe-only (metrics before the reap)', () => {
    it('counts 3 leaked, 1 orphaned, 2 active, 1 paused, the stale pid files; kills nothing', async () => {
      const d = new Daemon(built!.bin, ['--observe-only', '--listen', '127.0.0.1:0', '--interval', '1', ...GRACES, ...projectArgs(), '--audit-log', path.join(tmp, 'observe-audit.jsonl')], cliEnv);
      daemons.push(d);
      await d.started();
      const p = { project: root };
      const text = await waitFor(async () => {
        const t = await d.metrics();
        return metric(t, 'stepwise_watchdog_adapters', { ...p, verdict: 'leaked' }) !== null ? t : '';
      }, 30_000, 200);
      expect(text, `no adapters metric:\n${d.out.slice(-3000)}`).not.toBe('');
      const got = Object.fromEntries(
        ['leaked', 'orphaned', 'active', 'paused', 'unreferenced', 'spawning'].map((v) => [v, metric(text, 'stepwise_watchdog_adapters', { ...p, verdict: v })]),
      );
      const pidfiles = Object.fromEntries(['stale-dead', 'stale-reused'].map((v) => [v, metric(text, 'stepwise_watchdog_pidfiles', { ...p, verdict: v })]));
      expect(await d.stop()).toBe(0);
      expect(pidfiles).toEqual({ 'stale-dead': 1, 'stale-reused': 1 });
      expect(metric(text, 'stepwise_watchdog_server_up', p)).toBe(1);
      expect(got, `metrics:\n${text.split('\n').filter((l) => l.startsWith('stepwise_watchdog_adapters{')).join('\n')}`).toEqual({
        leaked: 3,
        orphaned: 1,
        active: 2,
        paused: 1,
        unreferenced: 0,
        spawning: 0,
      });
      for (const t of Object.values(trees).flat()) expect(isAlive(t), describeProc(t.pid)).toBe(true);
      expect(fs.existsSync(stalePidFiles.dead)).toBe(true);
    }, 90_000);
  });

  describe('reap --all-leaked --orphans', () => {
    let planned: number[] = [];
    let result: { code: number | null; doc: Record<string, any>; stderr: string };

    it('dry run: plans to kill exactly the leaked and orphaned trees, changes nothing', async () => {
      const r = await cli(['reap', '--all-leaked', '--orphans', '--json', ...projectArgs(), ...GRACES, '--audit-log', auditLog]);
      expect(r.code, r.stderr).toBe(0);
      const doc = JSON.parse(r.stdout) as { dryRun: boolean; projects: { plan: { actions: { kind: string; topPid: number; verdict: string }[]; refusals: unknown[] } }[] };
      expect(doc.dryRun).toBe(true);
      planned = doc.projects[0]!.plan.actions.filter((a) => a.kind === 'kill-tree').map((a) => a.topPid);
      notes.push(`reap plan: ${JSON.stringify(doc.projects[0]!.plan.actions.map((a) => [a.topPid, a.verdict]))}; refusals ${JSON.stringify(doc.projects[0]!.plan.refusals)}`);
      expect([...planned].sort()).toEqual(REAPED.map(top).sort());
      for (const t of Object.values(trees).flat()) expect(isAlive(t)).toBe(true);
      expect(fs.existsSync(auditLog)).toBe(false);
    }, 60_000);

    it('--yes: exit 0, every tree it killed was leaked or orphaned and is gone', async () => {
      const r = await cli(['reap', '--all-leaked', '--orphans', '--yes', '--json', ...projectArgs(), ...GRACES, '--audit-log', auditLog]);
      result = { code: r.code, doc: JSON.parse(r.stdout) as Record<string, any>, stderr: r.stderr };
      notes.push(`reap totals: ${JSON.stringify(result.doc.totals)}`);
      expect(r.code, `${r.stderr}\n${r.stdout.slice(0, 4000)}`).toBe(0);
      const results = result.doc.projects[0].results as { kind: string; topPid: number; verdict: string; outcome: string }[];
      const kills = results.filter((x) => x.kind === 'kill-tree');
      reapedTops = new Set(kills.filter((k) => k.outcome === 'ok').map((k) => k.topPid));
      for (const k of kills) {
        expect(k.outcome, JSON.stringify(k)).toBe('ok');
        expect(['leaked', 'orphaned']).toContain(k.verdict);
      }
      expect(result.doc.totals).toMatchObject({ treesReaped: kills.length, treesFailed: 0, refused: 0 });
      for (const name of Object.keys(trees)) {
        if (!reapedTops.has(top(name))) continue;
        for (const t of trees[name]!) expect(isGoneOrZombie(t), `${name}: ${describeProc(t.pid)}`).toBe(true);
      }
    }, 90_000);

    it('the exit-rule leaks and the orphan are reaped (every pid gone or a zombie)', () => {
      for (const name of ['leak-1', 'leak-2', 'orphan']) {
        expect(reapedTops.has(top(name)), `${name} not reaped; reap results: ${JSON.stringify(result.doc.projects[0].results, null, 1)}`).toBe(true);
        for (const t of trees[name]!) expect(isGoneOrZombie(t), `${name}: ${describeProc(t.pid)}`).toBe(true);
      }
    });

    it('the cancel-then-retry leak is reaped', () => {
      expect(reapedTops.has(top('cancel-retry')), `cancel-retry tree ${top('cancel-retry')} not reaped; engine:\n${engineState()}`).toBe(true);
      for (const t of trees['cancel-retry']!) expect(isGoneOrZombie(t), describeProc(t.pid)).toBe(true);
    });

    it('active, paused, shared and foreign trees, the editor, the unrelated process and the server all survive', () => {
      for (const name of SURVIVE) {
        expect(reapedTops.has(top(name))).toBe(false);
        for (const t of trees[name]!) expect(isAlive(t), `${name}: ${describeProc(t.pid)}`).toBe(true);
      }
      expect(isAlive(editorId!)).toBe(true);
      expect(isAlive(sleeperId)).toBe(true);
      expect(isAlive(serverId)).toBe(true);
    });

    it('the audit log has one ok kill record per reaped tree', () => {
      const records = fs
        .readFileSync(auditLog, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as { action: string; outcome: string; actor: string; tree: { topPid: number } | null; verdict: string; project: string });
      const kills = records.filter((r) => r.action === 'kill-tree');
      expect(kills.map((k) => k.tree!.topPid).sort()).toEqual([...reapedTops].sort());
      for (const k of kills) expect(k).toMatchObject({ outcome: 'ok', actor: 'cli', project: root });
      expect(records.filter((r) => r.action === 'refusal')).toEqual([]);
    });
  });

  describe('gc', () => {
    it('--yes removes exactly the stale pid files and keeps the live ones', async () => {
      const before = fs.readdirSync(pidsDir).sort();
      const alive = Object.entries(trees)
        .filter(([name, t]) => name !== 'foreign' && isAlive(t[0]!))
        .map(([name]) => path.basename(pidFileOf(top(name))));
      const stale = before.filter((n) => !alive.includes(n));
      // The two stale files, and any reaped tree's own file reap did not already remove.
      expect(stale).toEqual(expect.arrayContaining([path.basename(stalePidFiles.dead), path.basename(stalePidFiles.reused)]));
      for (const n of stale) {
        const pid = Number(/acp-(\d+)\.json/.exec(n)![1]);
        expect([deadPidOf(stalePidFiles.dead), sleeperId.pid, ...reapedTops]).toContain(pid);
      }
      const dry = await cli(['gc', '--json', ...projectArgs(), ...GRACES]);
      expect(dry.code, dry.stderr).toBe(0);
      const plan = (JSON.parse(dry.stdout) as { projects: { plan: { actions: { path: string }[] } }[] }).projects[0]!.plan.actions.map((a) => path.basename(a.path));
      expect(plan.sort()).toEqual(stale);
      const r = await cli(['gc', '--yes', '--json', ...projectArgs(), ...GRACES, '--audit-log', auditLog]);
      expect(r.code, r.stderr).toBe(0);
      expect((JSON.parse(r.stdout) as { totals: { pidFilesRemoved: number } }).totals.pidFilesRemoved).toBe(stale.length);
      expect(fs.readdirSync(pidsDir).sort()).toEqual([...alive].sort());
      expect(isAlive(sleeperId)).toBe(true);
      const after = await status(true);
      expect(after.code).toBe(0);
      expect(after.doc.pidFiles.every((f) => f.verdict === 'live')).toBe(true);
      expect(after.doc.adapters.filter((a) => a.verdict === 'leaked' || a.verdict === 'orphaned')).toEqual([]);
      notes.push(`status after reap+gc: ${ourTrees(after.doc)}`);
    }, 90_000);
  });

  describe('the engine database', () => {
    it('was not written by status, the observe-only daemon, reap or gc (engine frozen throughout)', () => {
      expect(frozenBefore).not.toBeNull();
      expect(readStat(engine!.pid)?.state).toBe('T'); // still frozen: nobody else could write
      const files = dbFiles(dbPath);
      const content = dbContent(dbPath);
      notes.push(`db files before ${JSON.stringify(frozenBefore!.files)} after ${JSON.stringify(files)}`);
      expect(files.siblings).toEqual(frozenBefore!.files.siblings);
      expect(files.hashes['stepwise.db']).toBe(frozenBefore!.files.hashes['stepwise.db']);
      expect(files.hashes['stepwise.db-wal']).toBe(frozenBefore!.files.hashes['stepwise.db-wal']);
      expect(content).toEqual(frozenBefore!.content);
    });
  });

  describe('after the thaw: a reaping daemon', () => {
    let reaper: Daemon | null = null;
    let thawedAt = 0;
    const p = () => ({ project: root });

    it('reaps a new exit-rule leak and takes stepwise_watchdog_adapters{verdict="leaked"} back to 0', async () => {
      engine!.thaw();
      thawedAt = Date.now();
      await waitFor(() => readStat(engine!.pid)?.state !== 'T', 5000);
      const late = (await engine!.command({ cmd: 'abandon', name: 'late-leak' }, 'abandoned')) as { jobId: string; status: string; adapterPid: number };
      expect(late.status).toBe('failed');
      const lateTree = (await waitFor(() => (treeOf(late.adapterPid).length >= 3 ? treeOf(late.adapterPid) : null), 15_000))!;
      expect(lateTree).toHaveLength(3);
      trees['late-leak'] = lateTree;
      const audit2 = path.join(tmp, 'daemon-audit.jsonl');
      reaper = new Daemon(built!.bin, ['--listen', '127.0.0.1:0', '--interval', '1', ...GRACES, ...projectArgs(), '--audit-log', audit2], cliEnv);
      daemons.push(reaper);
      await reaper.started();
      const settled = await waitFor(async () => {
        const t = await reaper!.metrics();
        return lateTree.every(isGoneOrZombie) && metric(t, 'stepwise_watchdog_adapters', { ...p(), verdict: 'leaked' }) === 0 ? t : '';
      }, 45_000, 250);
      const text = settled || (await reaper.metrics());
      expect(settled, `daemon did not settle:\n${adapterMetricLines(text)}\n${reaper.out.slice(-4000)}\nengine:\n${engineState()}`).not.toBe('');
      for (const t of lateTree) expect(isGoneOrZombie(t), describeProc(t.pid)).toBe(true);
      expect(metric(text, 'stepwise_watchdog_reaped_total', { ...p(), verdict: 'leaked', result: 'ok' })).toBeGreaterThanOrEqual(1);
      const records = fs
        .readFileSync(audit2, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as { action: string; outcome: string; actor: string; tree: { topPid: number } | null });
      expect(records.filter((r) => r.action === 'kill-tree' && r.tree?.topPid === late.adapterPid)).toMatchObject([{ outcome: 'ok', actor: 'daemon' }]);
      for (const name of SURVIVE) for (const t of trees[name]!) expect(isAlive(t), `${name}: ${describeProc(t.pid)}`).toBe(true);
      expect(isAlive(sleeperId)).toBe(true);
      expect(isAlive(serverId)).toBe(true);
    }, 120_000);

    it('leaves no adapter the engine spawned alive unless a non-terminal job uses it (retries of the cancelled job included)', async () => {
      // Ground truth from the engine's side: every tree it spawned (recorded by the fake adapter)
      // that still runs must be named by a step run of a running or paused job. The cancelled
      // job's step retries on a new adapter each time its adapter dies (the retry decorator runs
      // on in the executor thread after cancel_job): wait, bounded, until its retry budget
      // (1 + cancelMaxRetries adapters) is spent or 12 s after the thaw, with the daemon reaping.
      expect(reaper, 'the reaping daemon did not start').not.toBeNull();
      const budget = 1 + (ready as unknown as { cancelMaxRetries: number }).cancelMaxRetries;
      const cancelAgent = (r: { argv: string[] }) => r.argv[r.argv.length - 1] === 'fake-cancel-retry';
      let last = leftovers();
      await waitFor(() => {
        last = leftovers();
        const spent = recordedTops(recordDir).filter(cancelAgent).length >= budget;
        return last.length === 0 && (spent || Date.now() - thawedAt > 12_000);
      }, 20_000, 250);
      last = leftovers();
      const text = await reaper!.metrics().catch(() => '');
      const cancelTops = recordedTops(recordDir)
        .filter(cancelAgent)
        .map((r) => `${r.pid} (started ${new Date(r.started * 1000).toISOString()}, ${readStat(r.pid) && readStat(r.pid)!.state !== 'Z' ? 'alive' : 'gone'})`);
      notes.push(`cancelled job's adapters over the run: ${cancelTops.join(', ')}`);
      notes.push(`reaping daemon metrics:\n    ${adapterMetricLines(text).split('\n').join('\n    ')}`);
      // For a leftover: what the daemon (its incremental store reader) and a one-shot status (a
      // full read) say about it.
      let views = '';
      if (last.length > 0) {
        const inv = (await fetch(`http://${reaper!.listen}/api/inventory?all=1`, { signal: AbortSignal.timeout(5000) })
          .then((r) => r.json())
          .catch(() => null)) as { projects: ProjectDoc[] } | null;
        const fresh = await status(true).catch(() => null);
        const say = (d: ProjectDoc | undefined | null, pid: number) => {
          const a = d?.adapters.find((x) => x.topPid === pid);
          return a ? `${a.verdict}: ${a.reason} (jobs ${JSON.stringify(a.jobs)})` : 'no tree';
        };
        views = last.map((l) => `${l.pid}: daemon says ${say(inv?.projects[0], l.pid)}; one-shot status says ${say(fresh?.doc, l.pid)}`).join('\n');
        notes.push(`leftovers: ${views}`);
      }
      expect(await reaper!.stop()).toBe(0);
      expect(
        last,
        `adapters of terminal jobs still alive:\n${JSON.stringify(last, null, 1)}\n${views}\ncancelled job's adapters: ${cancelTops.join(', ')}\n${adapterMetricLines(text)}\nengine:\n${engineState()}`,
      ).toEqual([]);
    }, 90_000);

    function leftovers() {
      const rows = engineRows(dbPath);
      const runs = rows.runs as { job: string; job_id: string; es_pid: number | null; status: string }[];
      const jobStatus = Object.fromEntries((rows.jobs as { id: string; status: string }[]).map((j) => [j.id, j.status]));
      const LIVE_JOB = ['running', 'paused', 'pending', 'staged', 'awaiting_approval'];
      return recordedTops(recordDir)
        .filter((r) => r.ppid === ready.serverPid && readStat(r.pid) !== null && readStat(r.pid)!.state !== 'Z' && readArgv(r.pid).join(' ').includes('fake_tree_adapter.py'))
        .map((r) => ({
          pid: r.pid,
          agent: r.argv[r.argv.length - 1],
          usedBy: runs.filter((x) => x.es_pid === r.pid).map((x) => `${x.job} ${x.job_id} (job ${jobStatus[x.job_id]}, run ${x.status})`),
          live: runs.some((x) => x.es_pid === r.pid && LIVE_JOB.includes(jobStatus[x.job_id] ?? '')),
        }))
        .filter((x) => !x.live);
    }
  });

  function adapterMetricLines(text: string): string {
    return text
      .split('\n')
      .filter((l) => /^stepwise_watchdog_(adapters|reaped_total|refusals_total)\{/.test(l) && !/verdict="foreign"/.test(l))
      .join('\n');
  }

  function deadPidOf(file: string): number {
    return Number(/acp-(\d+)\.json$/.exec(file)![1]);
  }
}
