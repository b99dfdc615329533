// killTree against REAL fake adapter trees in a REAL temp stepwise project. Each test would fail
// if the rule it names were removed from kill-tree.ts.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { plan, type KillTreeAction, type PlanContext } from '../../src/core/plan.js';
import { DEFAULT_POLICY, type AdapterTree, type Policy } from '../../src/core/types.js';
import { ProjectSession } from '../../src/session/project-session.js';
import { recheckTree } from '../../src/effects/execute.js';
import { killTree, sameTree, type SignalName } from '../../src/effects/kill-tree.js';
import { selfPlanContext } from '../../src/effects/self.js';
import type { ProcessPort } from '../../src/sources/process-port.js';
import { procPort, readIdentity } from '../../src/sources/processes.js';
import { aliveSame, createTempProject, goneOrZombie, waitUntil, type TempProject } from '../helpers/temp-project.js';

const policy: Policy = { ...DEFAULT_POLICY, spawnGraceSeconds: 0, terminalGraceSeconds: 30 };
let project: TempProject;
let session: ProjectSession;
let ctx: PlanContext;

beforeEach(async () => {
  project = await createTempProject();
  session = new ProjectSession({ root: project.root, policy });
  ctx = selfPlanContext(false);
});

afterEach(async () => {
  session.close();
  await project.cleanup();
});

/** The kill action the planner makes for the tree with this top (by pid, as `reap --pid`). */
function actionFor(topPid: number, force = false): KillTreeAction {
  const inv = session.collect();
  const p = plan(inv, policy, { allLeaked: false, orphans: false, sessions: false, jobs: [], pids: [topPid], force, gc: false }, ctx);
  const a = p.actions.find((x): x is KillTreeAction => x.kind === 'kill-tree' && x.tree.topPid === topPid);
  if (!a) throw new Error(`no action for ${topPid}: ${JSON.stringify(p.refusals.map((r) => r.reason))}`);
  return a;
}

/** process.kill, recorded. */
function recordingKill(calls: { pid: number; sig: SignalName }[], inner?: (pid: number, sig: SignalName) => void) {
  return (pid: number, sig: SignalName) => {
    calls.push({ pid, sig });
    (inner ?? ((p: number, s: SignalName) => void process.kill(p, s)))(pid, sig);
  };
}

const recheck = (action: KillTreeAction) => () => recheckTree(session, action, ctx);

describe('the group signal never reaches a protected process', () => {
  // A group signal reaches every member, listed or not: the protected processes' own groups are
  // read right before it (not the whole host), and a protected process that cannot be read counts
  // as reached. The tree is then signalled process by process, each re-identified.
  const portWith = (protectedPid: number, read: 'in-group' | 'unknown', pgid: number): ProcessPort => {
    const real = procPort();
    return {
      ...real,
      identity: (pid) =>
        pid !== protectedPid
          ? real.identity(pid)
          : read === 'unknown'
            ? { kind: 'unknown', error: 'EACCES' }
            : { kind: 'live', id: { pid, startTicks: 1, state: 'S', ppid: 1, pgid, sid: pgid } },
    };
  };

  for (const read of ['in-group', 'unknown'] as const) {
    it(`a protected process ${read === 'in-group' ? 'in the group' : 'that cannot be read'}: no group signal, every process signalled alone`, async () => {
      const a = await project.spawnAdapter({ job: { status: 'failed', failReason: 'abandoned' } });
      const action = actionFor(a.tree.topPid);
      const calls: { pid: number; sig: SignalName }[] = [];
      const fakeProtected = 4_000_000; // not a real pid: only the port says where it is
      const r = await killTree(action, {
        recheck: recheck(action),
        kill: recordingKill(calls),
        killWaitMs: 3000,
        processes: portWith(fakeProtected, read, a.tree.topPid),
        protectedPids: [process.pid, process.ppid, fakeProtected],
      });
      expect(r.outcome).toBe('ok');
      expect(calls.some((c) => c.pid < 0)).toBe(false);
      // Each signal went to one process of the tree (one that died with its parent first is gone, not signalled).
      expect(calls.every((c) => a.tree.pids.includes(c.pid))).toBe(true);
      expect(calls.map((c) => c.pid)).toContain(a.tree.topPid);
      expect(r.processes.every((p) => p.note?.includes(`group ${a.tree.topPid} not signalled`))).toBe(true);
      for (const id of a.tree.identities) expect(goneOrZombie(id)).toBe(true);
    });
  }
});

describe('the group signal never reaches a process the re-verification did not see', () => {
  // The re-verification reads the tree, not the host: a group member born since the last cycle
  // whose parent exited sits under init, unseen. The group is listed right before its signal; a
  // member that is not a verified target (or a group that cannot be listed) means each target alone.
  const portListing = (extra: 'stranger' | 'unlistable'): ProcessPort => {
    const real = procPort();
    return {
      ...real,
      groupMembers: (pgid) => {
        if (extra === 'unlistable') return null;
        const members = real.groupMembers(pgid);
        return members && [...members, { pid: 4_000_001, startTicks: 7, state: 'S', ppid: 1, pgid, sid: pgid }];
      },
    };
  };

  for (const extra of ['stranger', 'unlistable'] as const) {
    it(`a group ${extra === 'stranger' ? 'holding an unseen member' : 'that cannot be listed'}: no group signal, each verified process alone`, async () => {
      const a = await project.spawnAdapter({ job: { status: 'failed', failReason: 'abandoned' } });
      const action = actionFor(a.tree.topPid);
      const calls: { pid: number; sig: SignalName }[] = [];
      const r = await killTree(action, { recheck: recheck(action), kill: recordingKill(calls), killWaitMs: 3000, processes: portListing(extra) });
      expect(r.outcome).toBe('ok');
      expect(calls.some((c) => c.pid < 0)).toBe(false);
      expect(calls.every((c) => a.tree.pids.includes(c.pid))).toBe(true);
      expect(r.processes.map((p) => p.pid).sort()).toEqual([...a.tree.pids].sort()); // every process accounted for
      expect(calls.length).toBeGreaterThan(0);
      const why = extra === 'stranger' ? 'it holds process 4000001, which the re-verification did not see' : 'its members could not be listed';
      expect(r.processes.every((p) => p.note === `group ${a.tree.topPid} not signalled (${why}): signalled individually`)).toBe(true);
      for (const id of a.tree.identities) expect(goneOrZombie(id)).toBe(true);
    });
  }
});

describe('killTree', () => {
  it('reaps a leaked tree: group SIGTERM, every process gone, memory counted', async () => {
    const a = await project.spawnAdapter({ job: { status: 'failed', failReason: 'abandoned' }, tree: { holdMb: 8 } });
    const action = actionFor(a.tree.topPid);
    expect(action.verdict).toBe('leaked');
    const calls: { pid: number; sig: SignalName }[] = [];
    const r = await killTree(action, { recheck: recheck(action), kill: recordingKill(calls), killWaitMs: 3000 });
    expect(r.outcome).toBe('ok');
    expect(r.processes.map((p) => p.result)).toEqual(['gone', 'gone', 'gone']);
    for (const id of a.tree.identities) expect(goneOrZombie(id)).toBe(true);
    // One group signal reached all three; no SIGKILL was needed.
    expect(calls).toEqual([{ pid: -a.tree.topPid, sig: 'SIGTERM' }]);
    expect(r.groupSignals).toEqual([{ pgid: a.tree.topPid, signal: 'SIGTERM', result: 'sent' }]);
    expect(r.bytesFreed).toBeGreaterThanOrEqual(3 * 8 * 1024 * 1024);
    expect(r.bytesFreed).toBe(r.processes.reduce((s, p) => s + p.bytesFreed, 0));
  });

  it('escalates to SIGKILL after the wait when SIGTERM is ignored', async () => {
    const a = await project.spawnAdapter({ job: 'failed', tree: { ignoreSigterm: true } });
    const action = actionFor(a.tree.topPid);
    const t0 = Date.now();
    const r = await killTree(action, { recheck: recheck(action), killWaitMs: 600 });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(550);
    expect(r.outcome).toBe('ok');
    for (const p of r.processes) expect(p.signals.map((s) => s.signal)).toEqual(['SIGTERM', 'SIGKILL']);
    for (const id of a.tree.identities) expect(goneOrZombie(id)).toBe(true);
  });

  it("signals a setsid'd descendant individually (group kills do not reach it)", async () => {
    const a = await project.spawnAdapter({ job: 'failed', tree: { setsidGrandchild: true } });
    const grandchild = a.tree.identities[2]!;
    expect(grandchild.pgid).toBe(grandchild.pid); // its own group
    const action = actionFor(a.tree.topPid);
    expect(action.tree.processes.map((p) => p.pid)).toContain(grandchild.pid);
    const calls: { pid: number; sig: SignalName }[] = [];
    const r = await killTree(action, { recheck: recheck(action), kill: recordingKill(calls), killWaitMs: 3000 });
    expect(r.outcome).toBe('ok');
    expect(calls).toContainEqual({ pid: grandchild.pid, sig: 'SIGTERM' });
    expect(r.processes.find((p) => p.pid === grandchild.pid)?.signals).toEqual([{ signal: 'SIGTERM', via: 'process' }]);
    expect(goneOrZombie(grandchild)).toBe(true);
  });

  it('reaps a group whose leader is already dead, members alive', async () => {
    const a = await project.spawnAdapter({ job: 'failed' });
    const [top, ...members] = a.tree.identities;
    process.kill(top!.pid, 'SIGKILL');
    expect(await waitUntil(() => readIdentity(top!.pid) === null)).toBe(true); // reaped by us (its parent)
    expect(members.every(aliveSame)).toBe(true);
    const action = actionFor(a.tree.topPid);
    expect(action.tree.processes.map((p) => p.pid).sort()).toEqual(members.map((m) => m.pid).sort());
    const calls: { pid: number; sig: SignalName }[] = [];
    const r = await killTree(action, { recheck: recheck(action), kill: recordingKill(calls), killWaitMs: 3000 });
    expect(r.outcome).toBe('ok');
    // The group id outlives its leader: one group signal reached both members.
    expect(calls).toEqual([{ pid: -top!.pid, sig: 'SIGTERM' }]);
    expect(members.every(goneOrZombie)).toBe(true);
  });

  it('a process that exits during the kill is a success (ESRCH = gone), not a failure', async () => {
    const a = await project.spawnAdapter({ job: 'failed', tree: { setsidGrandchild: true } });
    const grandchild = a.tree.identities[2]!;
    const action = actionFor(a.tree.topPid);
    // Between our identity read and our signal the grandchild exits: kill() then says ESRCH.
    const kill = (pid: number, sig: SignalName) => {
      if (pid === grandchild.pid) {
        process.kill(pid, 'SIGKILL');
        const e = new Error('kill ESRCH') as NodeJS.ErrnoException;
        e.code = 'ESRCH';
        throw e;
      }
      process.kill(pid, sig);
    };
    const r = await killTree(action, { recheck: recheck(action), kill, killWaitMs: 3000 });
    expect(r.outcome).toBe('ok');
    expect(r.processes.find((p) => p.pid === grandchild.pid)?.result).toBe('gone');
    // The test's own SIGKILL of the grandchild is delivered asynchronously: wait for it.
    expect(await waitUntil(() => a.tree.identities.every(goneOrZombie), 5_000)).toBe(true);
  });

  it('refuses when the top identity changed between plan and act (pid reused): nothing signalled', async () => {
    const a = await project.spawnAdapter({ job: 'failed' });
    const action = actionFor(a.tree.topPid);
    const calls: { pid: number; sig: SignalName }[] = [];
    // The re-collection finds a process with the same pid but another start time.
    const reused: AdapterTree = { ...action.tree, top: { pid: a.tree.topPid, startTicks: action.tree.top!.startTicks + 1 } };
    const r = await killTree(action, { recheck: () => reused, kill: recordingKill(calls), killWaitMs: 100 });
    expect(r.outcome).toBe('skipped');
    expect(r.code).toBe('identity_changed');
    expect(calls).toEqual([]);
    expect(a.tree.identities.every(aliveSame)).toBe(true);
  });

  it('never signals a member whose pid now names another process', async () => {
    const a = await project.spawnAdapter({ job: 'failed', tree: { setsidGrandchild: true } });
    const grandchild = a.tree.identities[2]!;
    const action = actionFor(a.tree.topPid);
    const calls: { pid: number; sig: SignalName }[] = [];
    // Simulated reuse: the grandchild's pid reads with a new start time (as if it had exited and
    // its pid been given to an unrelated process).
    const real = procPort();
    const processes: ProcessPort = {
      ...real,
      identity: (pid) => {
        const r = real.identity(pid);
        return r.kind === 'live' && pid === grandchild.pid ? { kind: 'live', id: { ...r.id, startTicks: r.id.startTicks + 7 } } : r;
      },
    };
    const r = await killTree(action, { recheck: recheck(action), processes, kill: recordingKill(calls), killWaitMs: 2000 });
    expect(calls.some((c) => c.pid === grandchild.pid)).toBe(false);
    expect(r.processes.find((p) => p.pid === grandchild.pid)?.result).toBe('skipped-identity-changed');
    expect(aliveSame(grandchild)).toBe(true);
    expect(r.outcome).toBe('ok'); // the planned process is gone as far as its identity tells; the other is not ours
  });

  it('when the tree is already gone (another executor reaped it) it reports ok, signals nothing', async () => {
    const a = await project.spawnAdapter({ job: 'failed' });
    const action = actionFor(a.tree.topPid);
    await a.tree.stop();
    const calls: { pid: number; sig: SignalName }[] = [];
    const r = await killTree(action, { recheck: recheck(action), kill: recordingKill(calls) });
    expect(r.outcome).toBe('ok');
    expect(r.bytesFreed).toBe(0); // not freed by us
    expect(calls).toEqual([]);
  });

  it('refuses when the verdict changed (job resumed) or the set of jobs changed', async () => {
    const a = await project.spawnAdapter({ job: 'failed' });
    const action = actionFor(a.tree.topPid);
    project.setJobStatus(a.jobIds[0]!, 'running');
    const calls: { pid: number; sig: SignalName }[] = [];
    const r = await killTree(action, { recheck: recheck(action), kill: recordingKill(calls) });
    expect(r.outcome).toBe('skipped');
    expect(r.code).toBe('verdict_changed');
    expect(calls).toEqual([]);
    expect(a.tree.identities.every(aliveSame)).toBe(true);

    // Back to terminal, but now a second (terminal) job names the adapter too: the set changed.
    project.setJobStatus(a.jobIds[0]!, 'failed');
    project.addJob(a.tree.topPid, 'completed');
    const fresh = session.collect().adapters.find((t) => t.topPid === a.tree.topPid)!;
    expect(fresh.verdict).toBe('leaked');
    const r2 = await killTree(action, { recheck: () => fresh, kill: recordingKill(calls) });
    expect(r2.outcome).toBe('skipped');
    expect(r2.code).toBe('verdict_changed');
    expect(r2.detail).toMatch(/jobs of tree .* changed/);
    expect(calls).toEqual([]);
  });

  it('EPERM is reported once per process and never retried', async () => {
    const a = await project.spawnAdapter({ job: 'failed' });
    const action = actionFor(a.tree.topPid);
    const calls: { pid: number; sig: SignalName }[] = [];
    const eperm = () => {
      const e = new Error('kill EPERM') as NodeJS.ErrnoException;
      e.code = 'EPERM';
      throw e;
    };
    const t0 = Date.now();
    const r = await killTree(action, { recheck: recheck(action), kill: recordingKill(calls, eperm), killWaitMs: 5000 });
    expect(r.outcome).toBe('failed');
    expect(r.code).toBe('eperm');
    expect(r.processes.map((p) => p.result)).toEqual(['eperm', 'eperm', 'eperm']);
    // One group attempt, then one individual attempt per process: no SIGKILL, no loop, no wait.
    expect(calls).toEqual([{ pid: -a.tree.topPid, sig: 'SIGTERM' }, ...a.tree.pids.map((pid) => ({ pid, sig: 'SIGTERM' as const }))]);
    expect(Date.now() - t0).toBeLessThan(4000);
    expect(a.tree.identities.every(aliveSame)).toBe(true);
  });

  it('an abort during the wait cancels the SIGKILL escalation', async () => {
    const a = await project.spawnAdapter({ job: 'failed', tree: { ignoreSigterm: true } });
    const action = actionFor(a.tree.topPid);
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 200);
    const calls: { pid: number; sig: SignalName }[] = [];
    const r = await killTree(action, { recheck: recheck(action), kill: recordingKill(calls), killWaitMs: 10_000, signal: ac.signal });
    expect(r.outcome).toBe('failed');
    expect(r.code).toBe('aborted');
    expect(calls.every((c) => c.sig === 'SIGTERM')).toBe(true);
    expect(a.tree.identities.every(aliveSame)).toBe(true);
  });

  it('the top of a tree under the live server stays a zombie: that counts as gone', async () => {
    const a = await project.spawnAdapter({ job: 'cancelled', tree: { parent: 'non-reaping' }, serverIsParent: true });
    const action = actionFor(a.tree.topPid);
    expect(action.tree.evidence.map((e) => e.kind)).toContain('server-child');
    const r = await killTree(action, { recheck: recheck(action), killWaitMs: 3000 });
    expect(r.outcome).toBe('ok');
    expect(readIdentity(a.tree.topPid)?.state).toBe('Z');
    expect(r.processes.find((p) => p.pid === a.tree.topPid)?.result).toBe('gone');
  });

  it('sameTree: a leaderless group is recognised by a shared member that still carries the group id', () => {
    const proc = (pid: number, startTicks: number, pgid: number) => ({ pid, startTicks, pgid, ppid: 1, sid: pgid, uid: 0, state: 'S', argv: [], rssBytes: 0, swapBytes: 0 });
    const base = { topPid: 100, top: { pid: 100, startTicks: 10 }, processes: [proc(100, 10, 100), proc(101, 11, 100)] } as unknown as AdapterTree;
    const leaderless = { ...base, top: { pid: 100, startTicks: 11 }, processes: [proc(101, 11, 100)] } as unknown as AdapterTree;
    const other = { ...base, top: { pid: 100, startTicks: 50 }, processes: [proc(100, 50, 100)] } as unknown as AdapterTree;
    expect(sameTree(base, base)).toBe(true);
    expect(sameTree(base, leaderless)).toBe(true);
    expect(sameTree(base, other)).toBe(false);
    expect(sameTree(base, { ...leaderless, processes: [proc(101, 12, 100)] } as unknown as AdapterTree)).toBe(false);
  });
});
