// The effects' re-checks read the same process port the plan was made from, with the configured
// clock tolerance, and treat an unreadable process as unknown (never as dead). Each of these
// failed before the port: the unlink re-check used a fixed 0.05 s tolerance and the real /proc,
// and took "unreadable" for "gone".
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { KillTreeAction, Plan, RemovePidFileAction } from '../../src/core/plan.js';
import { DEFAULT_POLICY, type AdapterTree, type Policy, type ProjectInventory } from '../../src/core/types.js';
import { AuditLog } from '../../src/effects/audit-log.js';
import { executePlan, type CollectingSession } from '../../src/effects/execute.js';
import { killTree, type SignalName } from '../../src/effects/kill-tree.js';
import type { ProcessPort } from '../../src/sources/process-port.js';
import { procPort } from '../../src/sources/processes.js';

let dir: string;
let child: ChildProcess | null = null;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sw-port-'));
  fs.mkdirSync(path.join(dir, 'pids'));
});
afterEach(() => {
  child?.kill('SIGKILL');
  child = null;
  fs.rmSync(dir, { recursive: true, force: true });
});

async function liveProcess(): Promise<number> {
  child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1 << 30)'], { stdio: 'ignore' });
  const pid = child.pid!;
  for (let i = 0; i < 200 && procPort().identity(pid).kind !== 'live'; i++) await new Promise((r) => setTimeout(r, 10));
  return pid;
}

function pidFileAction(pid: number, verdict: 'stale-dead' | 'stale-reused'): RemovePidFileAction {
  const file = path.join(dir, 'pids', `acp-${pid}.json`);
  if (!fs.existsSync(file)) fs.writeFileSync(file, JSON.stringify({ pid, agent: 'claude' }));
  const st = fs.lstatSync(file);
  return {
    kind: 'remove-pid-file',
    project: dir,
    pidsDir: path.join(dir, 'pids'),
    reason: verdict,
    file: { path: file, name: path.basename(file), pid, agent: 'claude', verdict, reason: verdict, ino: st.ino, dev: st.dev, process: null },
  };
}

/** A session whose plan is already made: executePlan only needs its policy and its process port for pid files. */
function session(processes: ProcessPort, policy: Policy = DEFAULT_POLICY): CollectingSession {
  return {
    options: { policy },
    processes,
    collect: (): ProjectInventory => {
      throw new Error('not collected in this test');
    },
  };
}

const run = (p: Plan, s: CollectingSession) =>
  executePlan(p, { session: s, actor: 'cli', audit: new AuditLog(path.join(dir, 'audit.jsonl')), killWaitMs: 500, gc: true });

describe('re-checks read the plan’s own process port', () => {
  it('the unlink re-check applies the configured clock tolerance, not a fixed one', async () => {
    const pid = await liveProcess();
    const real = procPort();
    const id = real.identity(pid);
    if (id.kind !== 'live') throw new Error('no process');
    // A fixed, exact clock: the process started at B + ticks/100; the file was written 55 ms before that.
    const clock = { bootTimeEpoch: 1_700_000_000, ticksPerSecond: 100, bootTimeErrorSeconds: 0 };
    const start = clock.bootTimeEpoch + id.id.startTicks / 100;
    const port: ProcessPort = { ...real, clock: () => ({ clock }) };
    const action = pidFileAction(pid, 'stale-reused');
    fs.utimesSync(action.file.path, start - 0.055, start - 0.055);
    // With 0.05 s of tolerance the process "started before" the file (within the slack): kept.
    let r = (await run({ project: dir, actions: [action], refusals: [] }, session(port, { ...DEFAULT_POLICY, clockToleranceSeconds: 0.05 }))).results[0]!;
    expect(r.kind === 'remove-pid-file' && r.outcome).toBe('skipped');
    // Configured 0: it started 55 ms after the file was written — a reused pid: removed.
    r = (await run({ project: dir, actions: [action], refusals: [] }, session(port, { ...DEFAULT_POLICY, clockToleranceSeconds: 0 }))).results[0]!;
    expect(r.kind === 'remove-pid-file' && r.outcome).toBe('removed');
    expect(fs.existsSync(action.file.path)).toBe(false);
  });

  it('the unlink re-check reads the injected process table, not the host’s /proc', async () => {
    const pid = await liveProcess(); // alive on the host
    const real = procPort();
    const gone: ProcessPort = { ...real, identity: (p) => (p === pid ? { kind: 'gone' } : real.identity(p)), groupMembers: () => [] };
    const action = pidFileAction(pid, 'stale-dead');
    const r = (await run({ project: dir, actions: [action], refusals: [] }, session(gone))).results[0]!;
    expect(r.kind === 'remove-pid-file' && [r.outcome, r.detail]).toEqual(['removed', `no process ${pid}`]);
  });

  it('an unreadable process keeps its pid file (unknown is never dead)', async () => {
    const pid = 3_999_999; // no such process on the host either
    const unknown: ProcessPort = { ...procPort(), identity: () => ({ kind: 'unknown', error: 'EACCES' }), groupMembers: () => null };
    const action = pidFileAction(pid, 'stale-dead');
    const r = (await run({ project: dir, actions: [action], refusals: [] }, session(unknown))).results[0]!;
    expect(r.kind === 'remove-pid-file' && r.outcome).toBe('skipped');
    expect(r.kind === 'remove-pid-file' && r.detail).toMatch(/could not be read: kept \(unknown is never dead\)/);
    expect(fs.existsSync(action.file.path)).toBe(true);
  });

  it('a tree member whose identity cannot be read is never signalled, and the kill is not called done', async () => {
    const pid = await liveProcess();
    const real = procPort();
    const id = real.identity(pid);
    if (id.kind !== 'live') throw new Error('no process');
    const proc = { ...id.id, uid: 0, argv: ['x'], rssBytes: 1, swapBytes: 0 };
    const tree = { topPid: pid, top: { pid, startTicks: id.id.startTicks }, processes: [proc], verdict: 'leaked', jobs: [], sessions: [] } as unknown as AdapterTree;
    const action: KillTreeAction = { kind: 'kill-tree', project: dir, tree, verdict: 'leaked', reason: 't', selectedBy: 'pid', forced: false };
    const calls: { pid: number; sig: SignalName }[] = [];
    const unknown: ProcessPort = { ...real, identity: () => ({ kind: 'unknown', error: 'EACCES' }) };
    const r = await killTree(action, { recheck: () => tree, processes: unknown, kill: (p, sig) => void calls.push({ pid: p, sig }), killWaitMs: 100, confirmWaitMs: 100 });
    expect(calls).toEqual([]);
    expect(r.outcome).toBe('failed');
    expect(r.processes[0]!.note).toMatch(/identity unreadable \(EACCES\): not signalled/);
    expect(real.identity(pid).kind).toBe('live');
  });
});
