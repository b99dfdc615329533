// Stopping one leaked session inside a live, shared adapter, with real processes: an adapter
// (its own session and group, like stepwise spawns it) holding two agent CLIs, one per ACP
// session, the first with a tool child of its own. The failed job's session is stopped — its CLI
// and that CLI's child, by pid — while the adapter and the running job's session live on.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { nextGraceExpiry, plan, type KillSessionAction } from '../../src/core/plan.js';
import { DEFAULT_POLICY } from '../../src/core/types.js';
import { ProjectSession } from '../../src/session/project-session.js';
import { AuditLog } from '../../src/effects/audit-log.js';
import { executePlan } from '../../src/effects/execute.js';
import { selfPlanContext } from '../../src/effects/self.js';
import { readIdentity } from '../../src/sources/processes.js';
import { agentExecutorState, insertEvent, insertJob, insertRun, pyIsoformat, updateJob } from '../../src/demo/kit/stepwise-schema.js';
import { createTempProject, type TempProject } from '../helpers/temp-project.js';

const SESSION_LEAKED = '3fe2b27d-6c8b-42c5-a67c-643e1c4495b0';
const SESSION_ACTIVE = 'f10916c7-ff1e-404b-b20f-71ff21895f2e';

// The adapter: spawns one CLI per session (argv carries --session-id, like the real claude CLI),
// the first CLI with a child of its own; prints their pids; lives until its stdin closes.
const ADAPTER = `
const { spawn } = require('node:child_process');
const idle = 'setInterval(() => {}, 1 << 30)';
const withChild = "require('node:child_process').spawn(process.execPath, ['-e', " + JSON.stringify(idle) + ", 'tool-shell'], { stdio: 'ignore' }); " + idle;
const a = spawn(process.execPath, ['-e', withChild, '--', 'claude', '--output-format', 'stream-json', '--session-id=${SESSION_LEAKED}', '--replay-user-messages'], { stdio: 'ignore' });
const b = spawn(process.execPath, ['-e', idle, '--', 'claude', '--output-format', 'stream-json', '--session-id', '${SESSION_ACTIVE}'], { stdio: 'ignore' });
process.stdout.write(JSON.stringify({ a: a.pid, b: b.pid }) + '\\n');
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
`;

interface Adapter {
  child: ChildProcess;
  top: number;
  cliLeaked: number;
  cliActive: number;
  tool: number;
}

async function waitFor<T>(f: () => T | null | undefined | false, ms = 10_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v) return v;
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 25));
  }
}

function childrenOf(pid: number): number[] {
  try {
    return fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

const alive = (pid: number) => {
  const id = readIdentity(pid);
  return id !== null && id.state !== 'Z';
};

async function spawnAdapter(cwd: string): Promise<Adapter> {
  const child = spawn(process.execPath, ['-e', ADAPTER, '--', 'node_modules/.bin/claude-agent-acp', '--model', 'opus'], { cwd, detached: true, stdio: ['pipe', 'pipe', 'ignore'] });
  const line = await new Promise<string>((resolve, reject) => {
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      if (buf.includes('\n')) resolve(buf.split('\n')[0]!);
    });
    child.once('exit', () => reject(new Error('adapter exited')));
  });
  const { a, b } = JSON.parse(line) as { a: number; b: number };
  const tool = await waitFor(() => childrenOf(a)[0]);
  // Every process has exec'd (its argv is the one we gave).
  await waitFor(() => [a, b, tool].every((p) => fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('-e')));
  return { child, top: child.pid!, cliLeaked: a, cliActive: b, tool };
}

let project: TempProject;
let adapter: Adapter | null = null;
let auditDir: string;

beforeEach(async () => {
  project = await createTempProject();
  auditDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sw-audit-'));
});
afterEach(async () => {
  if (adapter) {
    try {
      process.kill(-adapter.top, 'SIGKILL');
    } catch {}
    adapter = null;
  }
  await project.cleanup();
  fs.rmSync(auditDir, { recursive: true, force: true });
});

/** A running job and an abandoned job sharing one adapter, each with its own session. */
async function sharedAdapter(): Promise<{ runningJob: string; failedJob: string }> {
  adapter = await spawnAdapter(project.root);
  const top = adapter.top;
  const started = pyIsoformat(Date.now());
  const runningJob = insertJob(project.db, { status: 'running' });
  insertRun(project.db, { jobId: runningJob, status: 'running', startedAt: started, executorState: agentExecutorState({ pid: top, sessionId: SESSION_ACTIVE, workingDir: project.root }), pidColumn: top });
  const ended = pyIsoformat(Date.now() - 120_000);
  const failedJob = insertJob(project.db, { status: 'failed', updatedAt: ended });
  insertRun(project.db, {
    jobId: failedJob,
    status: 'completed',
    startedAt: started,
    completedAt: pyIsoformat(Date.now()),
    executorState: agentExecutorState({ pid: top, sessionId: SESSION_LEAKED, workingDir: project.root }),
  });
  insertEvent(project.db, { jobId: failedJob, type: 'job.failed', data: { reason: 'abandoned', step: 'work', rule: 'give-up' }, timestamp: ended });
  project.writePidFile(top);
  return { runningJob, failedJob };
}

const selection = { allLeaked: true, orphans: true, sessions: true, jobs: [], pids: [], force: false, gc: false };

describe('stopping a leaked session inside a live adapter', () => {
  it('stops the CLI of the abandoned job and its child only; the adapter and the running session live on; audited', async () => {
    await sharedAdapter();
    const session = new ProjectSession({ root: project.root, policy: DEFAULT_POLICY, env: {} });
    try {
      const inv = session.collect();
      const tree = inv.adapters.find((t) => t.topPid === adapter!.top)!;
      expect(tree.verdict, tree.reason).toBe('active');
      const byId = Object.fromEntries(tree.sessions.map((s) => [s.sessionId, s]));
      expect(byId[SESSION_LEAKED]?.verdict).toBe('leaked');
      expect(byId[SESSION_LEAKED]?.processes.map((p) => p.pid).sort()).toEqual([adapter!.cliLeaked, adapter!.tool].sort());
      expect(byId[SESSION_ACTIVE]?.verdict).toBe('active');

      const ctx = selfPlanContext(false);
      const p = plan(inv, DEFAULT_POLICY, selection, ctx);
      expect(p.actions.map((a) => a.kind)).toEqual(['kill-session']);
      const action = p.actions[0] as KillSessionAction;
      expect(action.session.pid).toBe(adapter!.cliLeaked);

      const audit = new AuditLog(path.join(auditDir, 'audit.jsonl'));
      const report = await executePlan(p, { session, actor: 'cli', audit, killWaitMs: 3000, gc: true, planContext: ctx });
      expect(report.auditError).toBeNull();
      const r = report.results[0]!;
      expect(r.kind).toBe('kill-session');
      if (r.kind !== 'kill-session') return;
      expect(r.outcome, r.detail).toBe('ok');
      expect(r.processes.every((x) => x.signals.every((s) => s.via === 'process'))).toBe(true);
      expect(r.bytesFreed).toBeGreaterThan(0);

      await waitFor(() => !alive(adapter!.cliLeaked) && !alive(adapter!.tool));
      expect(alive(adapter!.top)).toBe(true);
      expect(alive(adapter!.cliActive)).toBe(true);
      // The pid file of the live adapter stays.
      expect(fs.existsSync(path.join(project.pidsDir, `acp-${adapter!.top}.json`))).toBe(true);

      const records = fs.readFileSync(audit.path, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(records).toHaveLength(1);
      expect(records[0]).toMatchObject({ action: 'kill-session', verdict: 'leaked-session', outcome: 'ok', session: { sessionId: SESSION_LEAKED, pid: adapter!.cliLeaked } });

      // Afterwards the tree holds one (active) session.
      const after = session.collect().adapters.find((t) => t.topPid === adapter!.top)!;
      expect(after.sessions.map((s) => [s.sessionId, s.verdict])).toEqual([[SESSION_ACTIVE, 'active']]);
    } finally {
      session.close();
    }
  });

  it('re-verifies before the signal: a session whose job is no longer terminal is not touched', async () => {
    const { failedJob } = await sharedAdapter();
    const session = new ProjectSession({ root: project.root, policy: DEFAULT_POLICY, env: {} });
    try {
      const ctx = selfPlanContext(false);
      const p = plan(session.collect(), DEFAULT_POLICY, selection, ctx);
      expect(p.actions.map((a) => a.kind)).toEqual(['kill-session']);
      // Between plan and act the job is resumed (e.g. `stepwise rerun`).
      updateJob(project.db, failedJob, { status: 'running', updatedAt: pyIsoformat(Date.now()) });
      const audit = new AuditLog(path.join(auditDir, 'audit.jsonl'));
      const report = await executePlan(p, { session, actor: 'cli', audit, killWaitMs: 3000, gc: false, planContext: ctx });
      const r = report.results[0]!;
      expect(r.kind === 'kill-session' && r.outcome).toBe('skipped');
      expect(r.kind === 'kill-session' && r.code).toBe('verdict_changed');
      expect(r.kind === 'kill-session' && r.processes).toEqual([]);
      expect(alive(adapter!.cliLeaked)).toBe(true);
      expect(alive(adapter!.tool)).toBe(true);
    } finally {
      session.close();
    }
  });

  it('is never planned inside the terminal grace, nor for a paused job, nor when the store is unreadable', async () => {
    const { runningJob, failedJob } = await sharedAdapter();
    const session = new ProjectSession({ root: project.root, policy: DEFAULT_POLICY, env: {} });
    try {
      const ctx = selfPlanContext(false);
      updateJob(project.db, failedJob, { status: 'failed', updatedAt: pyIsoformat(Date.now() - 5_000) });
      let p = plan(session.collect(), DEFAULT_POLICY, selection, ctx);
      expect(p.actions).toEqual([]);
      expect(p.refusals.map((r) => r.code)).toEqual(['grace']);

      // A paused job's adapter is never touched: not even the failed job's session inside it,
      // past the grace; it is held (a wait, said with the paused job), and goes once the job resumes.
      updateJob(project.db, failedJob, { status: 'failed', updatedAt: pyIsoformat(Date.now() - 120_000) });
      updateJob(project.db, runningJob, { status: 'paused' });
      const inv = session.collect();
      const tree = inv.adapters.find((t) => t.topPid === adapter!.top)!;
      expect(tree.verdict).toBe('paused');
      expect(tree.sessions.find((s) => s.sessionId === SESSION_ACTIVE)?.verdict).toBe('paused');
      expect(tree.sessions.find((s) => s.pid === adapter!.cliLeaked)?.verdict).toBe('leaked');
      p = plan(inv, DEFAULT_POLICY, selection, ctx);
      expect(p.actions).toEqual([]);
      expect(p.refusals.map((r) => [r.code, r.session?.pid])).toEqual([['paused', adapter!.cliLeaked]]);
      expect(p.refusals[0]!.reason).toContain(`paused job ${runningJob}`);
      expect(nextGraceExpiry(inv, DEFAULT_POLICY, selection)).toBeNull(); // no wake-up for it
      updateJob(project.db, runningJob, { status: 'running' });
      p = plan(session.collect(), DEFAULT_POLICY, selection, ctx);
      expect(p.actions.map((a) => (a.kind === 'kill-session' ? a.session.pid : a.kind))).toEqual([adapter!.cliLeaked]);

      // Store unreadable: nothing at all.
      project.db.close();
      fs.writeFileSync(project.dbPath, 'not a database');
      const down = new ProjectSession({ root: project.root, policy: DEFAULT_POLICY, env: {} });
      try {
        const invDown = down.collect();
        expect(invDown.sources.store?.ok).toBe(false);
        const t = invDown.adapters.find((x) => x.topPid === adapter!.top);
        expect(t?.sessions.every((s) => s.verdict === 'unattributed')).toBe(true);
        const pd = plan(invDown, DEFAULT_POLICY, selection, ctx);
        expect(pd.actions).toEqual([]);
        expect(pd.refusals.map((r) => r.code)).toEqual(['source_down']);
      } finally {
        down.close();
      }
    } finally {
      session.close();
    }
  });
});
