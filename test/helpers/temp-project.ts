// A throw-away stepwise project for tests (and the demo): a temp folder with `.stepwise/`, a
// store built with the real schema (stepwise-schema.ts), pid files written the way the engine
// writes them, a stand-in server (a node process that stays alive, with `server.pid`), and
// real fake adapter trees wired to jobs/runs/pid files in one call.
//
//   const project = await createTempProject();                  // server up by default
//   const a = await project.spawnAdapter({ job: 'failed' });      // leaked (job ended 2 min ago)
//   const b = await project.spawnAdapter({ job: 'running' });     // active
//   const o = await project.spawnAdapter({ tree: { parent: 'orphan' } }); // orphaned (pid file only)
//   const f = await project.spawnAdapter({ pidFile: false });     // foreign (no evidence)
//   const s = await project.spawnAdapter({ jobs: ['running', 'failed'], sessions: true });
//        // one adapter, one claude CLI per job; each run's executor_state.session_id = its uuid
//   await s.tree.killTop();                                       // npm + sh die, node + CLIs live on
//   ...
//   await project.cleanup();                                      // every process stopped, folder removed
//
// Tree tops are children of the test process (parent 'self'), so run and pid-file evidence
// make them ours. For a tree that is a child of the live server (a killed top then stays a
// zombie), spawn it with `tree: { parent: 'non-reaping' }` and `serverIsParent: true`: the
// tree's non-reaping parent becomes the project's server (server.pid is rewritten).

import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type Database from 'better-sqlite3';
import { spawnFakeTree, type FakeSession, type FakeTree, type FakeTreeOptions } from '../../src/demo/kit/fake-adapter.js';
import { readIdentity } from '../../src/sources/processes.js';
import {
  agentExecutorState,
  createStepwiseDb,
  insertEvent,
  insertJob,
  insertRun,
  pyIsoformat,
  updateJob,
  type CreateStepwiseDbOptions,
} from '../../src/demo/kit/stepwise-schema.js';

export interface TempProjectOptions extends CreateStepwiseDbOptions {
  /** Start a stand-in server (node process, cwd = project root) and write server.pid. Default true. */
  server?: boolean;
  /** Folder to create the project in (default os.tmpdir()). */
  parentDir?: string;
}

export interface JobSpec {
  status: string;
  /** For a terminal job: how long ago it ended (updated_at). Default 120 s. */
  endedSecondsAgo?: number;
  /** Step run status. Default: 'running' for a running/paused job... , 'completed' for completed, else 'failed'. */
  runStatus?: string;
  /** A `job.failed` event with this reason (e.g. 'abandoned'), for failed jobs. */
  failReason?: string;
  /** Record the adapter pid in this run's executor_state (default true). */
  recordPid?: boolean;
  /** executor_state.session_id (default: a random uuid no process carries). */
  sessionId?: string;
}

export interface AdapterSpec {
  /** Options for spawnFakeTree (cwd defaults to the project root). */
  tree?: FakeTreeOptions;
  /** A job (and one agent step run naming the tree's top) — a status, or a spec. */
  job?: string | JobSpec;
  /** Several jobs sharing the adapter. */
  jobs?: (string | JobSpec)[];
  /** Write `.stepwise/pids/acp-<top>.json` (default true when there is a job or the tree is an orphan; false otherwise). */
  pidFile?: boolean;
  agent?: string;
  /** Make the tree's non-reaping parent the project's live server (needs tree.parent 'non-reaping'). */
  serverIsParent?: boolean;
  /**
   * Open one ACP session (a claude CLI, level 4) per job, recorded in that job's run as
   * executor_state.session_id, like the engine. Default false: levels 1-3 only.
   */
  sessions?: boolean;
  /** Sessions no run names (opened after the jobs' ones). Default 0. */
  extraSessions?: number;
}

export interface TempAdapter {
  tree: FakeTree;
  jobIds: string[];
  runIds: string[];
  /** With `sessions`: the session of each job (same order as jobIds). */
  sessions: FakeSession[];
  /** With `extraSessions`: sessions no run names. */
  extraSessions: FakeSession[];
  pidFile: string | null;
}

export interface StandInServer {
  pid: number;
  stop(): Promise<void>;
}

export interface TempProject {
  root: string;
  stepwiseDir: string;
  pidsDir: string;
  dbPath: string;
  serverPidPath: string;
  /** Our own read-write connection (the "engine"). */
  db: Database.Database;
  server: StandInServer | null;
  adapters: TempAdapter[];
  startServer(): Promise<StandInServer>;
  /** Point server.pid at an existing process (started_at: now, after it started). */
  setServer(pid: number, startedAt?: string): void;
  spawnAdapter(spec?: AdapterSpec): Promise<TempAdapter>;
  /** Insert a job with one agent run naming `pid` (no process is started). */
  addJob(pid: number | null, spec: string | JobSpec, agent?: string): { jobId: string; runId: string };
  setJobStatus(jobId: string, status: string, endedSecondsAgo?: number): void;
  /** Write a pid file like the engine ({"pid": N, "agent": "..."}), or raw content. Returns its path. */
  writePidFile(pid: number, opts?: { agent?: string; content?: string | Buffer; name?: string; mtimeMs?: number }): string;
  /** sha256 of the store and its -wal/-journal files (what "byte-identical" means). */
  hashDb(): string;
  /** Stop every process started here, close the store, remove the folder. Idempotent. */
  cleanup(): Promise<void>;
}

const TERMINAL = new Set(['completed', 'failed', 'cancelled', 'archived']);

function jobSpec(s: string | JobSpec): JobSpec {
  return typeof s === 'string' ? { status: s } : s;
}

async function waitFor(cond: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}

/** A node process that stays alive doing nothing (cwd = the project root, like `stepwise server`). */
async function startStandIn(cwd: string): Promise<{ pid: number; child: ChildProcess }> {
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1 << 30); process.title = "stepwise-server-standin"', 'stepwise-server-standin'], {
    cwd,
    stdio: 'ignore',
  });
  const pid = child.pid;
  if (pid === undefined) throw new Error('stand-in server: spawn failed');
  if (!(await waitFor(() => readIdentity(pid) !== null, 5000))) throw new Error('stand-in server did not start');
  return { pid, child };
}

export async function createTempProject(opts: TempProjectOptions = {}): Promise<TempProject> {
  const root = fs.realpathSync(fs.mkdtempSync(path.join(opts.parentDir ?? os.tmpdir(), 'sw-project-')));
  const stepwiseDir = path.join(root, '.stepwise');
  const pidsDir = path.join(stepwiseDir, 'pids');
  fs.mkdirSync(pidsDir, { recursive: true });
  const dbPath = path.join(stepwiseDir, 'stepwise.db');
  const db = createStepwiseDb(dbPath, opts);
  const serverPidPath = path.join(stepwiseDir, 'server.pid');
  const stops: (() => Promise<void>)[] = [];
  let cleaned = false;

  const project: TempProject = {
    root,
    stepwiseDir,
    pidsDir,
    dbPath,
    serverPidPath,
    db,
    server: null,
    adapters: [],

    async startServer() {
      const { pid, child } = await startStandIn(root);
      const stop = async () => {
        if (child.exitCode === null && child.signalCode === null) {
          const exited = new Promise<void>((r) => child.once('exit', () => r()));
          child.kill('SIGKILL');
          await exited;
        }
      };
      stops.push(stop);
      project.setServer(pid);
      project.server = { pid, stop };
      return project.server;
    },

    setServer(pid, startedAt) {
      const content = { pid, port: 8340, url: 'http://127.0.0.1:8340', started_at: startedAt ?? pyIsoformat(Date.now()) };
      fs.writeFileSync(serverPidPath, JSON.stringify(content));
    },

    addJob(pid, s, agent = 'claude') {
      const spec = jobSpec(s);
      const terminal = TERMINAL.has(spec.status);
      const ended = pyIsoformat(Date.now() - (spec.endedSecondsAgo ?? 120) * 1000);
      const now = pyIsoformat(Date.now());
      const jobId = insertJob(db, { status: spec.status, agent, ...(terminal ? { updatedAt: ended } : {}) });
      const runStatus = spec.runStatus ?? (terminal ? (spec.status === 'completed' ? 'completed' : 'failed') : 'running');
      const open = runStatus === 'running' || runStatus === 'suspended' || runStatus === 'delegated';
      const record = spec.recordPid !== false && pid !== null;
      const runId = insertRun(db, {
        jobId,
        status: runStatus,
        executorState: record
          ? agentExecutorState({ pid, agent, workingDir: root, ...(spec.sessionId !== undefined ? { sessionId: spec.sessionId } : {}) })
          : { agent, working_dir: root, ...(spec.sessionId !== undefined ? { session_id: spec.sessionId } : {}) },
        // Started just now (after the process), finished just now: the run is evidence for it.
        startedAt: now,
        completedAt: open ? null : now,
        pidColumn: open && record ? pid : null,
      });
      if (spec.status === 'failed' && spec.failReason) {
        insertEvent(db, { jobId, type: 'job.failed', data: { reason: spec.failReason, step: 'work', rule: 'give-up' }, timestamp: ended });
      }
      return { jobId, runId };
    },

    setJobStatus(jobId, status, endedSecondsAgo = 120) {
      const terminal = TERMINAL.has(status);
      updateJob(db, jobId, { status, updatedAt: pyIsoformat(Date.now() - (terminal ? endedSecondsAgo * 1000 : 0)) });
    },

    writePidFile(pid, o = {}) {
      const file = path.join(pidsDir, o.name ?? `acp-${pid}.json`);
      // The engine: json.dumps({"pid": ..., "agent": ...}) written in place.
      fs.writeFileSync(file, o.content ?? JSON.stringify({ pid, agent: o.agent ?? 'claude' }));
      if (o.mtimeMs !== undefined) fs.utimesSync(file, o.mtimeMs / 1000, o.mtimeMs / 1000);
      return file;
    },

    async spawnAdapter(spec = {}) {
      const tree = await spawnFakeTree({ cwd: root, ...spec.tree });
      stops.push(() => tree.stop());
      if (spec.serverIsParent) {
        if (tree.parent !== 'non-reaping') throw new Error('serverIsParent needs tree.parent = non-reaping');
        project.setServer(tree.parentPid);
      }
      const agent = spec.agent ?? 'claude';
      const jobs = [...(spec.job !== undefined ? [spec.job] : []), ...(spec.jobs ?? [])];
      const jobIds: string[] = [];
      const runIds: string[] = [];
      const sessions: FakeSession[] = [];
      const extraSessions: FakeSession[] = [];
      for (const j of jobs) {
        let job = jobSpec(j);
        if (spec.sessions) {
          // The engine opens the step's session after the handshake, then records it.
          const s = await tree.openSession(job.sessionId ?? randomUUID());
          sessions.push(s);
          job = { ...job, sessionId: s.sessionId };
        }
        const { jobId, runId } = project.addJob(tree.topPid, job, agent);
        jobIds.push(jobId);
        runIds.push(runId);
      }
      for (let i = 0; i < (spec.extraSessions ?? 0); i++) extraSessions.push(await tree.openSession());
      const wantPidFile = spec.pidFile ?? (jobs.length > 0 || tree.parent === 'orphan');
      const pidFile = wantPidFile ? project.writePidFile(tree.topPid, { agent }) : null;
      const adapter = { tree, jobIds, runIds, sessions, extraSessions, pidFile };
      project.adapters.push(adapter);
      return adapter;
    },

    hashDb() {
      const h = createHash('sha256');
      for (const suffix of ['', '-wal', '-journal']) {
        const f = dbPath + suffix;
        h.update(`${suffix}:`);
        if (fs.existsSync(f)) h.update(fs.readFileSync(f));
      }
      return h.digest('hex');
    },

    async cleanup() {
      if (cleaned) return;
      cleaned = true;
      await Promise.all(stops.map((s) => s().catch(() => undefined)));
      try {
        db.close();
      } catch {
        // already closed by the test
      }
      fs.rmSync(root, { recursive: true, force: true });
    },
  };
  if (opts.server ?? true) await project.startServer();
  return project;
}

/** The process (pid + start ticks) is gone, or a zombie (its memory freed). */
export function goneOrZombie(id: { pid: number; startTicks: number }): boolean {
  const now = readIdentity(id.pid);
  return now === null || now.startTicks !== id.startTicks || now.state === 'Z' || now.state === 'X';
}

/** The very same process is alive (not a zombie). */
export function aliveSame(id: { pid: number; startTicks: number }): boolean {
  return !goneOrZombie(id);
}

export async function waitUntil(cond: () => boolean, timeoutMs = 5000): Promise<boolean> {
  return waitFor(cond, timeoutMs);
}
