// A throw-away stepwise-shaped project with REAL fake adapter trees in every state the
// watchdog knows: a store with the stepwise schema, engine-shaped pid files, a stand-in server
// process whose children are the adapters, an orphan of an "earlier server", an editor-like
// foreign adapter, stale pid files, a stale running run and an in-VM run. The trees have the
// real npx shape (npm exec → sh → node adapter → one claude CLI per session); every agent run
// records its session's uuid (executor_state.session_id), and one adapter is shared by a
// running job and an abandoned one (two CLIs: the abandoned job's session is the leaked one).
// With topKilled, two trees whose top died (npm and sh gone, the adapter and its
// CLI alive with ppid 1 in the dead leader's group): a paused job's (pid file kept) and a failed
// job's (pid file removed, as the engine does when the top dies under a running step).
// Everything started here is stopped by stop(), whatever happened before.

import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { spawnFakeTree, spawnOrphanTree, type FakeTree } from './kit/fake-adapter.js';
import { randomUUID } from 'node:crypto';
import { agentExecutorState, createStepwiseDb, insertEvent, insertJob, insertRun, pyIsoformat } from './kit/stepwise-schema.js';

export interface DemoSession {
  sessionId: string;
  /** The claude CLI's pid. */
  pid: number;
  /** The session verdict the watchdog should give it. */
  expected: 'active' | 'paused' | 'leaked' | 'unattributed';
}

export interface DemoTree {
  name: string;
  expected: string;
  /** The tree's live processes (after a top kill: the adapter and its CLIs only). */
  pids: number[];
  /** The top as spawned (the pid runs and pid files name; dead when topKilled). */
  topPid: number;
  sessions: DemoSession[];
  /** The top was killed alone: its group lives on without its leader. */
  topKilled: boolean;
}

export interface DemoProject {
  root: string;
  dbPath: string;
  pidsDir: string;
  serverPid: number;
  trees: DemoTree[];
  stalePidFiles: string[];
  /** Stop every process started for the demo; remove the folder unless kept. Idempotent. */
  stop(opts?: { keep?: boolean }): Promise<void>;
}

export interface DemoOptions {
  holdMb: number;
  /** Seconds the "unreferenced" tree must be older than (the demo's spawn grace); also waited for the terminal grace. */
  spawnGraceSeconds: number;
  terminalGraceSeconds: number;
  /** Add the two trees whose top died (paused: kept; failed, pid file removed: leaked). Default false. */
  topKilled?: boolean;
  log?: (line: string) => void;
}

function standInScript(): string {
  const js = fileURLToPath(new URL('./stand-in-server.js', import.meta.url));
  if (!fs.existsSync(js)) throw new Error(`the demo needs the built package (${js} is missing): run \`npm run build\` first`);
  return js;
}

function writePidFile(pidsDir: string, pid: number, agent = 'claude'): string {
  const file = path.join(pidsDir, `acp-${pid}.json`);
  fs.writeFileSync(file, JSON.stringify({ pid, agent }));
  return file;
}

export async function buildDemoProject(opts: DemoOptions): Promise<DemoProject> {
  const log = opts.log ?? (() => {});
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'stepwise-demo-'));
  const stepwiseDir = path.join(root, '.stepwise');
  const pidsDir = path.join(stepwiseDir, 'pids');
  fs.mkdirSync(pidsDir, { recursive: true });
  const dbPath = path.join(stepwiseDir, 'stepwise.db');

  const started: { server: ChildProcess | null; trees: FakeTree[]; sleeper: ChildProcess | null } = { server: null, trees: [], sleeper: null };
  // Even on an abrupt exit (a second Ctrl-C): kill what we started directly. The fake trees have
  // their own exit hook; the stand-in server also stops its trees when its stdin closes.
  const onExit = () => {
    for (const c of [started.server, started.sleeper]) if (c && c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  };
  process.once('exit', onExit);
  let stopped: Promise<void> | null = null;
  const stop = (o: { keep?: boolean } = {}) => {
    stopped ??= (async () => {
      const server = started.server;
      if (server && server.exitCode === null && server.signalCode === null) {
        const exited = new Promise<void>((r) => server.once('exit', () => r()));
        server.stdin?.end(); // the stand-in stops its trees and exits
        const timer = setTimeout(() => server.kill('SIGKILL'), 5_000);
        await exited;
        clearTimeout(timer);
      }
      await Promise.allSettled(started.trees.map((t) => t.stop()));
      if (started.sleeper && started.sleeper.exitCode === null) started.sleeper.kill('SIGKILL');
      process.removeListener('exit', onExit);
      if (!o.keep) fs.rmSync(root, { recursive: true, force: true });
    })();
    return stopped;
  };

  try {
    const db = createStepwiseDb(dbPath, { wal: true });

    // The stand-in server: cwd = project root, so pid files belong in <cwd>/.stepwise/pids.
    const server = spawn(process.execPath, [standInScript()], { cwd: root, stdio: ['pipe', 'pipe', 'inherit'] });
    started.server = server;
    if (server.pid === undefined) throw new Error('could not start the stand-in server');
    fs.writeFileSync(
      path.join(stepwiseDir, 'server.pid'),
      JSON.stringify({ pid: server.pid, port: 0, url: 'http://localhost:0', started_at: pyIsoformat() }),
    );
    type Reply = { topPid?: number; pids?: number[]; sessions?: { sessionId: string; pid: number }[]; error?: string };
    const replies = createInterface({ input: server.stdout! });
    const pending: ((msg: Reply) => void)[] = [];
    replies.on('line', (line) => pending.shift()?.(JSON.parse(line) as Reply));
    const serverTree = (name: string, sessions: string[] = [], killTop = false) =>
      new Promise<Required<Omit<Reply, 'error'>>>((resolve, reject) => {
        pending.push((m) =>
          m.pids && m.topPid !== undefined ? resolve({ topPid: m.topPid, pids: m.pids, sessions: m.sessions ?? [] }) : reject(new Error(`stand-in server: ${m.error ?? 'no pids'}`)),
        );
        server.stdin!.write(`${JSON.stringify({ name, holdMb: opts.holdMb, sessions, killTop })}\n`);
      });

    const trees: DemoTree[] = [];
    type Started = { topPid: number; pids: number[]; sessions: { sessionId: string; pid: number }[] };
    const add = (name: string, expected: string, t: Started, sessionVerdicts: DemoSession['expected'][] = [], topKilled = false) => {
      const sessions: DemoSession[] = t.sessions.map((s, i) => ({ sessionId: s.sessionId, pid: s.pid, expected: sessionVerdicts[i] ?? 'unattributed' }));
      trees.push({ name, expected, pids: t.pids, topPid: t.topPid, sessions, topKilled });
      const shape = topKilled ? `(top ${t.topPid} killed) ${t.pids.join(' → ')}` : t.pids.join(' → ');
      log(`  started ${name.padEnd(17)} tree ${shape}${sessions.length ? `; sessions ${sessions.map((s) => `${s.sessionId.slice(0, 8)}… (${s.expected})`).join(', ')}` : ''}`);
      return t.topPid;
    };

    // Unreferenced first: it must be older than the spawn grace when status runs.
    const unrefStart = Date.now();
    writePidFile(pidsDir, add('unreferenced', 'unreferenced', await serverTree('unreferenced')));

    // Like the engine: a run starts, its adapter is spawned, the pid file is written after the
    // handshake, the step's session is opened (session/new: one claude CLI), the run records the
    // pid and the session's uuid; a finished run completes after its adapter started.
    const step = async (name: string, expected: string, sessionVerdicts: DemoSession['expected'][]) => {
      const startedAt = pyIsoformat();
      const ids = sessionVerdicts.map(() => randomUUID());
      const top = add(name, expected, await serverTree(name, ids), sessionVerdicts);
      writePidFile(pidsDir, top);
      return { top, startedAt, sessionIds: ids };
    };

    // Two jobs abandoned by an exit rule: their adapters leaked (the engine's bug).
    for (const name of ['leaked-1', 'leaked-2']) {
      const { top, startedAt, sessionIds } = await step(name, 'leaked', ['leaked']);
      const job = insertJob(db, { status: 'failed', name: `demo-${name}`, createdAt: startedAt });
      insertRun(db, { jobId: job, status: 'completed', startedAt, completedAt: pyIsoformat(), executorState: agentExecutorState({ pid: top, sessionId: sessionIds[0]! }) });
      insertEvent(db, { jobId: job, type: 'job.failed', data: { reason: 'abandoned', step: 'work', rule: 'abandon-always' } });
      if (name === 'leaked-2') {
        // Abandoned while another step ran: that run stays `running` under a failed job.
        insertRun(db, { jobId: job, stepName: 'side', status: 'running', startedAt, executorState: { _interpolated_config: { prompt: 'side', agent: 'claude' } } });
      }
    }
    const active = await step('active', 'active', ['active']);
    const runningJob = insertJob(db, { status: 'running', name: 'demo-active' });
    insertRun(db, { jobId: runningJob, status: 'running', startedAt: active.startedAt, executorState: agentExecutorState({ pid: active.top, interpolatedAgent: 'claude', sessionId: active.sessionIds[0]! }), pidColumn: active.top });

    // Paused by an escalate rule: its adapter stays for when the job resumes.
    const paused = await step('paused', 'paused', ['paused']);
    const pausedJob = insertJob(db, { status: 'paused', name: 'demo-paused' });
    insertRun(db, { jobId: pausedJob, status: 'completed', startedAt: paused.startedAt, completedAt: pyIsoformat(), executorState: agentExecutorState({ pid: paused.top, sessionId: paused.sessionIds[0]! }) });

    // Shared: one adapter, one job still running on it and one abandoned by an exit rule → the
    // tree must stay; it holds two CLIs, and the abandoned job's session is the leaked one
    // (stepwise never closes a session: it lives as long as the running job keeps the adapter).
    const shared = await step('shared', 'active', ['active', 'leaked']);
    const sharedRunning = insertJob(db, { status: 'running', name: 'demo-shared-running' });
    insertRun(db, { jobId: sharedRunning, status: 'running', startedAt: shared.startedAt, executorState: agentExecutorState({ pid: shared.top, interpolatedAgent: 'claude', sessionId: shared.sessionIds[0]! }), pidColumn: shared.top });
    const sharedFailed = insertJob(db, { status: 'failed', name: 'demo-shared-abandoned' });
    insertRun(db, { jobId: sharedFailed, status: 'completed', startedAt: pyIsoformat(), completedAt: pyIsoformat(), executorState: agentExecutorState({ pid: shared.top, sessionId: shared.sessionIds[1]! }) });
    insertEvent(db, { jobId: sharedFailed, type: 'job.failed', data: { reason: 'abandoned', step: 'work', rule: 'abandon-always' } });

    if (opts.topKilled === true) {
      // Paused, then its top died (npm and sh gone): the adapter and its CLI live on in the dead
      // leader's group with ppid 1. Paused means "resume later": never reaped.
      const pausedDeadStart = pyIsoformat();
      const pdIds = [randomUUID()];
      const pd = add('paused-top-killed', 'paused', await serverTree('paused-top-killed', pdIds, true), ['paused'], true);
      writePidFile(pidsDir, pd);
      const pdJob = insertJob(db, { status: 'paused', name: 'demo-paused-top-killed' });
      insertRun(db, { jobId: pdJob, status: 'completed', startedAt: pausedDeadStart, completedAt: pyIsoformat(), executorState: agentExecutorState({ pid: pd, sessionId: pdIds[0]! }) });

      // The top died under a running step: the engine failed the step and the job, removed the
      // pid file and its killpg(getpgid(top)) failed (the top was reaped). Only the run's
      // executor_state.pgid still names the adapter and its CLI: leaked.
      const failedDeadStart = pyIsoformat();
      const fdIds = [randomUUID()];
      const fd = add('failed-top-killed', 'leaked', await serverTree('failed-top-killed', fdIds, true), ['leaked'], true);
      const fdJob = insertJob(db, { status: 'failed', name: 'demo-failed-top-killed', createdAt: failedDeadStart });
      insertRun(db, { jobId: fdJob, status: 'failed', startedAt: failedDeadStart, completedAt: pyIsoformat(), executorState: agentExecutorState({ pid: fd, sessionId: fdIds[0]! }), error: 'Transport closed' });
    }

    // A job in a microVM: a guest pid, counted, never matched against host processes.
    const vmJob = insertJob(db, { status: 'running', name: 'demo-in-vm' });
    insertRun(db, { jobId: vmJob, status: 'running', executorState: agentExecutorState({ pid: 4242, inVm: true }) });

    // An orphan of an earlier server: reparented to pid 1 or a subreaper, pid file present, its
    // session named by no run of this store.
    const orphan = await spawnOrphanTree({ holdMb: opts.holdMb, maxLifetimeMs: 15 * 60_000, sessions: [randomUUID()] });
    started.trees.push(orphan);
    writePidFile(pidsDir, add('orphan', 'orphaned', orphan, ['unattributed']));

    // An editor's own adapter: same marker, no pid file, no job, not the server's child.
    const foreign = await spawnFakeTree({ parent: 'self', holdMb: Math.min(opts.holdMb, 8), maxLifetimeMs: 15 * 60_000, sessions: [randomUUID()] });
    started.trees.push(foreign);
    add('foreign', 'foreign', foreign, ['unattributed']);

    // Stale pid files: one names a dead process, one a pid now used by an unrelated `sleep`.
    const dead = spawn('/bin/sh', ['-c', 'exit 0'], { stdio: 'ignore' });
    await new Promise<void>((r) => dead.once('exit', () => r()));
    const stale: string[] = [writePidFile(pidsDir, dead.pid!)];
    const sleeper = spawn('sleep', ['900'], { stdio: 'ignore' });
    started.sleeper = sleeper;
    const reused = writePidFile(pidsDir, sleeper.pid!);
    const hourAgo = new Date(Date.now() - 3600_000);
    fs.utimesSync(reused, hourAgo, hourAgo); // written an hour before this process started
    stale.push(reused);
    log(`  wrote stale pid files ${stale.map((f) => path.basename(f)).join(', ')}`);

    // Spawning last: a brand-new server child with no run yet.
    const waitMs = Math.max(opts.spawnGraceSeconds, opts.terminalGraceSeconds) * 1000 + 500 - (Date.now() - unrefStart);
    if (waitMs > 0) await new Promise((r) => setTimeout(r, waitMs));
    writePidFile(pidsDir, add('spawning', 'spawning', await serverTree('spawning')));
    db.close();

    return { root, dbPath, pidsDir, serverPid: server.pid, trees, stalePidFiles: stale, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
