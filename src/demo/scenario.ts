// A throw-away stepwise-shaped project with REAL fake adapter trees in every state the
// watchdog knows: a store with the stepwise schema, engine-shaped pid files, a stand-in server
// process whose children are the adapters, an orphan of an "earlier server", an editor-like
// foreign adapter, stale pid files, a stale running run and an in-VM run. Everything started
// here is stopped by stop(), whatever happened before.

import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { spawnFakeTree, spawnOrphanTree, type FakeTree } from '../sources/fake-adapter.js';
import { agentExecutorState, createStepwiseDb, insertEvent, insertJob, insertRun, pyIsoformat } from '../sources/stepwise-schema.js';

export interface DemoTree {
  name: string;
  expected: string;
  pids: number[];
  topPid: number;
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
    const replies = createInterface({ input: server.stdout! });
    const pending: ((msg: { pids?: number[]; error?: string }) => void)[] = [];
    replies.on('line', (line) => pending.shift()?.(JSON.parse(line) as { pids?: number[]; error?: string }));
    const serverTree = (name: string) =>
      new Promise<number[]>((resolve, reject) => {
        pending.push((m) => (m.pids ? resolve(m.pids) : reject(new Error(`stand-in server: ${m.error ?? 'no pids'}`))));
        server.stdin!.write(`${JSON.stringify({ name, holdMb: opts.holdMb })}\n`);
      });

    const trees: DemoTree[] = [];
    const add = (name: string, expected: string, pids: number[]) => {
      trees.push({ name, expected, pids, topPid: pids[0]! });
      log(`  started ${name.padEnd(13)} tree ${pids.join(' → ')}`);
      return pids[0]!;
    };

    // Unreferenced first: it must be older than the spawn grace when status runs.
    const unrefStart = Date.now();
    writePidFile(pidsDir, add('unreferenced', 'unreferenced', await serverTree('unreferenced')));

    // Like the engine: a run starts, its adapter is spawned, the pid file is written after the
    // handshake, the run records the pid; a finished run completes after its adapter started.
    const step = async (name: string, expected: string) => {
      const startedAt = pyIsoformat();
      const top = add(name, expected, await serverTree(name));
      writePidFile(pidsDir, top);
      return { top, startedAt };
    };

    // Two jobs abandoned by an exit rule: their adapters leaked (the engine's bug).
    for (const name of ['leaked-1', 'leaked-2']) {
      const { top, startedAt } = await step(name, 'leaked');
      const job = insertJob(db, { status: 'failed', name: `demo-${name}`, createdAt: startedAt });
      insertRun(db, { jobId: job, status: 'completed', startedAt, completedAt: pyIsoformat(), executorState: agentExecutorState({ pid: top }) });
      insertEvent(db, { jobId: job, type: 'job.failed', data: { reason: 'abandoned', step: 'work', rule: 'abandon-always' } });
      if (name === 'leaked-2') {
        // Abandoned while another step ran: that run stays `running` under a failed job.
        insertRun(db, { jobId: job, stepName: 'side', status: 'running', startedAt, executorState: { _interpolated_config: { prompt: 'side', agent: 'claude' } } });
      }
    }
    const active = await step('active', 'active');
    const runningJob = insertJob(db, { status: 'running', name: 'demo-active' });
    insertRun(db, { jobId: runningJob, status: 'running', startedAt: active.startedAt, executorState: agentExecutorState({ pid: active.top, interpolatedAgent: 'claude' }), pidColumn: active.top });

    // Paused by an escalate rule: its adapter stays for when the job resumes.
    const paused = await step('paused', 'paused');
    const pausedJob = insertJob(db, { status: 'paused', name: 'demo-paused' });
    insertRun(db, { jobId: pausedJob, status: 'completed', startedAt: paused.startedAt, completedAt: pyIsoformat(), executorState: agentExecutorState({ pid: paused.top }) });

    // Shared: one job abandoned, one still running on the same adapter → must stay.
    const shared = await step('shared', 'active');
    const sharedRunning = insertJob(db, { status: 'running', name: 'demo-shared-running' });
    insertRun(db, { jobId: sharedRunning, status: 'running', startedAt: shared.startedAt, executorState: agentExecutorState({ pid: shared.top, interpolatedAgent: 'claude' }), pidColumn: shared.top });
    const sharedFailed = insertJob(db, { status: 'failed', name: 'demo-shared-abandoned' });
    insertRun(db, { jobId: sharedFailed, status: 'completed', startedAt: pyIsoformat(), completedAt: pyIsoformat(), executorState: agentExecutorState({ pid: shared.top }) });

    // A job in a microVM: a guest pid, counted, never matched against host processes.
    const vmJob = insertJob(db, { status: 'running', name: 'demo-in-vm' });
    insertRun(db, { jobId: vmJob, status: 'running', executorState: agentExecutorState({ pid: 4242, inVm: true }) });

    // An orphan of an earlier server: reparented to pid 1 or a subreaper, pid file present.
    const orphan = await spawnOrphanTree({ holdMb: opts.holdMb, maxLifetimeMs: 15 * 60_000 });
    started.trees.push(orphan);
    writePidFile(pidsDir, add('orphan', 'orphaned', orphan.pids));

    // An editor's own adapter: same marker, no pid file, no job, not the server's child.
    const foreign = await spawnFakeTree({ parent: 'self', holdMb: Math.min(opts.holdMb, 8), maxLifetimeMs: 15 * 60_000 });
    started.trees.push(foreign);
    add('foreign', 'foreign', foreign.pids);

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
