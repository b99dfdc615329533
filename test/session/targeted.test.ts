// Targeted reads (only the processes that can matter) against full sweeps (every pid), on the same
// live host: fake trees in every state plus filler processes, real SQLite. And the escapee: a
// member that leaves its tree's ppid chain, group and session stays in the tree.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { plan } from '../../src/core/plan.js';
import { DEFAULT_POLICY, type AdapterTree, type ProjectInventory } from '../../src/core/types.js';
import { AuditLog } from '../../src/effects/audit-log.js';
import { executePlan } from '../../src/effects/execute.js';
import type { KillTreeResult } from '../../src/effects/kill-tree.js';
import { selfPlanContext } from '../../src/effects/self.js';
import { ProjectSession } from '../../src/session/project-session.js';
import { childrenFilesSupported, readIdentity } from '../../src/sources/processes.js';
import { createTempProject, waitUntil, type TempProject } from '../helpers/temp-project.js';

const supported = childrenFilesSupported();
const policy = { ...DEFAULT_POLICY, spawnGraceSeconds: 60, terminalGraceSeconds: 30 };

/**
 * The inventory without timings: what a reader of `status` or the planner sees. Only this
 * project's trees (their argv name its folder): adapter-like processes other tests start on this
 * host meanwhile are foreign trees that a targeted read finds at the next sweep only.
 */
function shape(inv: ProjectInventory) {
  const tree = (t: AdapterTree) => ({
    top: `${t.topPid}:${t.top?.startTicks}`,
    verdict: t.verdict,
    reason: t.reason,
    jobs: t.jobs.map((j) => `${j.id}:${j.status}`).sort(),
    processes: t.processes.map((p) => `${p.pid}:${p.startTicks}:${p.ppid}:${p.pgid}:${p.uid}:${p.argv.join(' ')}`).sort(),
    sessions: t.sessions.map((s) => `${s.sessionId}:${s.pid}:${s.verdict}`).sort(),
    pidFile: t.pidFile,
  });
  return {
    adapters: inv.adapters
      // This test's trees only: other test files beside it start adapter-like trees of their own,
      // which a full sweep sees as foreign and a targeted read does not (until its next sweep).
      .filter((t) => t.processes.some((p) => p.argv.join(' ').includes(inv.root)))
      .filter((t) => t.verdict !== 'foreign' || t.processes.some((p) => p.ppid === process.pid))
      .map(tree)
      .sort((a, b) => a.top.localeCompare(b.top)),
    pidFiles: inv.pidFiles.map((f) => `${f.name}:${f.verdict}:${f.reason}`).sort(),
    server: { alive: inv.server.alive, pid: inv.server.identity?.pid, cwd: inv.server.cwd },
    sources: Object.fromEntries(Object.entries(inv.sources).map(([k, h]) => [k, h.ok])),
    staleRuns: JSON.stringify(inv.staleRunningRuns),
    startingRuns: JSON.stringify(inv.startingRuns),
  };
}

/** Every pid of this project's own trees (their argv name its folder). */
function ownPids(inv: ProjectInventory): number[] {
  return inv.adapters.filter((t) => t.processes.some((p) => p.argv.join(' ').includes(inv.root))).flatMap((t) => [t.topPid, ...t.processes.map((p) => p.pid)]);
}

const WHY_SKIPPED = supported ? '' : ' (skipped: this kernel has no /proc/<pid>/task/<tid>/children, so every read is a full sweep)';

describe.skipIf(!supported)(`targeted reads give the same inventory as full sweeps${WHY_SKIPPED}`, () => {
  let project: TempProject;
  const fillers: ChildProcess[] = [];

  beforeAll(async () => {
    project = await createTempProject();
    await project.spawnAdapter({ job: { status: 'failed', endedSecondsAgo: 120, failReason: 'abandoned' }, tree: { holdMb: 0 } }); // leaked
    await project.spawnAdapter({ job: 'running', tree: { holdMb: 0 } }); // active
    await project.spawnAdapter({ job: 'paused', tree: { holdMb: 0 } }); // paused
    await project.spawnAdapter({ tree: { parent: 'orphan', holdMb: 0 } }); // orphaned (pid file only)
    await project.spawnAdapter({ pidFile: false, tree: { holdMb: 0 } }); // foreign (marker only)
    await project.spawnAdapter({ jobs: ['running', { status: 'failed', endedSecondsAgo: 120 }], sessions: true, extraSessions: 1, tree: { holdMb: 0 } });
    const headless = await project.spawnAdapter({ job: 'running', sessions: true, tree: { holdMb: 0 } });
    await headless.tree.killTop(); // a leaderless group: node and its CLI live on in the dead top's group
    project.writePidFile(4_194_000); // a pid file naming no process (beyond the usual pid_max): stale-dead
    project.addJob(4_194_001, 'running'); // a running run naming no process
    for (let i = 0; i < 40; i++) fillers.push(spawn('sleep', ['300'], { stdio: 'ignore' }));
    await waitUntil(() => fillers.every((f) => f.pid !== undefined && readIdentity(f.pid) !== null));
  }, 120_000);
  afterAll(async () => {
    for (const f of fillers) f.kill('SIGKILL');
    await project?.cleanup();
  });

  it('reads fewer processes and sees the same trees, verdicts, sessions, pid files and plan', () => {
    const full = new ProjectSession({ root: project.root, policy, env: {}, fullSweepSeconds: 0 });
    const targeted = new ProjectSession({ root: project.root, policy, env: {} });
    try {
      const now = Date.now() / 1000;
      targeted.collect(now); // the first read is a full sweep: it finds the foreign tree
      expect(targeted.lastRead).toMatchObject({ mode: 'full', sweepReason: 'first read' });
      for (let i = 0; i < 2; i++) {
        const a = full.collect(now);
        expect(full.lastRead?.mode).toBe('full');
        let b = targeted.collect(now);
        // Other test files' adapter-like trees are remembered too (as foreign); one of them
        // exiting makes the next read a sweep. Allowed only for a tree that is not this test's.
        for (let retry = 0; targeted.lastRead?.sweepReason === 'inconsistent' && retry < 3; retry++) {
          const why = targeted.lastRead.inconsistency ?? '';
          expect(ownPids(a), `swept (${why}): not one of this test's trees`).not.toContain(Number(/of tree (\d+)/.exec(why)?.[1]));
          b = targeted.collect(now);
        }
        expect(targeted.lastRead).toMatchObject({ mode: 'targeted' });
        expect(targeted.lastRead!.processes).toBeLessThan(full.lastRead!.processes - 40);
        expect(shape(b)).toEqual(shape(a));
        const ctx = selfPlanContext(false);
        const sel = { allLeaked: true, orphans: true, sessions: true, jobs: [], pids: [], force: false, gc: true };
        // The same actions (boot time is re-estimated each read: ages differ by microseconds).
        const what = (inv: ProjectInventory) =>
          plan(inv, policy, sel, ctx).actions.map((x) => (x.kind === 'remove-pid-file' ? `${x.kind} ${x.file.path}` : `${x.kind} ${x.tree.topPid}:${x.tree.top?.startTicks} ${x.reason}`));
        expect(what(b)).toEqual(what(a));
        expect(what(a).length).toBeGreaterThanOrEqual(3);
      }
      const verdicts = new Set(full.collect(now).adapters.map((t) => t.verdict));
      for (const v of ['leaked', 'active', 'paused', 'orphaned', 'foreign']) expect(verdicts, v).toContain(v);
    } finally {
      full.close();
      targeted.close();
    }
  });

  it('a focused re-verification reads one tree (and the server) and gives that tree as the full sweep does; the memory of the others stays', () => {
    const full = new ProjectSession({ root: project.root, policy, env: {}, fullSweepSeconds: 0 });
    const s = new ProjectSession({ root: project.root, policy, env: {} });
    try {
      const now = Date.now() / 1000;
      s.collect(now);
      const a = full.collect(now);
      const trees = a.adapters.filter((x) => x.verdict !== 'in-vm');
      expect(trees.length).toBeGreaterThanOrEqual(6); // this test's trees at least: the loop is not empty
      for (const t of trees) {
        const b = s.collect(now, { purpose: 'recheck', focus: [t.topPid, ...t.processes.map((p) => p.pid)] });
        expect(s.lastRead?.mode).toBe('targeted');
        expect(s.lastRead!.processes).toBeLessThan(t.processes.length + 6);
        const fresh = b.adapters.find((x) => x.topPid === t.topPid)!;
        const one = (inv: ProjectInventory, x: AdapterTree) => shape({ ...inv, adapters: [x], pidFiles: [] }).adapters;
        expect(one(b, fresh)).toEqual(one(a, t));
      }
      // The next cycle still sees every tree, targeted.
      expect(shape(s.collect(now))).toEqual(shape(full.collect(now)));
      expect(s.lastRead?.mode).toBe('targeted');
    } finally {
      full.close();
      s.close();
    }
  });

  it("a focused re-verification keeps the other trees' ties to their jobs, also when the store resyncs on it", () => {
    const s = new ProjectSession({ root: project.root, policy, env: {} });
    try {
      const now = Date.now() / 1000;
      s.collect(now);
      const before = s.collect(now);
      const own = before.adapters.filter((t) => ownPids(before).includes(t.topPid));
      const active = own.find((t) => t.verdict === 'active' && t.sessions.length === 0)!;
      expect(own.filter((t) => t.verdict === 'leaked').length).toBeGreaterThan(0); // tied by finished runs only
      (s as unknown as { store: { resync(): void } }).store.resync(); // the hourly resync falls on the recheck
      s.collect(now, { purpose: 'recheck', focus: [active.topPid, ...active.processes.map((p) => p.pid)] });
      expect(s.lastRead?.mode).toBe('targeted');
      const after = s.collect(now);
      expect(shape(after)).toEqual(shape(before));
    } finally {
      s.close();
    }
  });

  it('a re-verification right before a kill never sweeps; a cycle sweeps once the period is over', async () => {
    const s = new ProjectSession({ root: project.root, policy, env: {}, fullSweepSeconds: 0.3 });
    try {
      s.collect();
      s.collect();
      expect(s.lastRead?.mode).toBe('targeted');
      await new Promise((r) => setTimeout(r, 350));
      s.collect(undefined, { purpose: 'recheck' });
      expect(s.lastRead?.mode).toBe('targeted');
      s.collect();
      // 'inconsistent' when a remembered process went away meanwhile (other tests share this host).
      expect(s.lastRead?.mode).toBe('full');
      expect(['period', 'inconsistent']).toContain(s.lastRead?.sweepReason);
    } finally {
      s.close();
    }
  });
});

describe.skipIf(!supported)(`a member that double-forks and setsids away${WHY_SKIPPED}`, () => {
  let project: TempProject | null = null;
  const stops: (() => void)[] = [];
  afterEach(async () => {
    for (const s of stops.splice(0)) s();
    await project?.cleanup();
    project = null;
  });

  it('stays in its tree (same pid and start time), in targeted reads and full sweeps alike', async () => {
    project = await createTempProject();
    // top (group and session leader) → intermediate sh → member (python). On SIGUSR1 the member
    // calls setsid(); then the intermediate is killed, so the member is reparented away too.
    const ready = `${project.root}/member-ready`;
    const member = `import os, signal, time
signal.signal(signal.SIGUSR1, lambda *a: os.setsid())
open(${JSON.stringify(ready)}, 'w').close()
while True: time.sleep(1)`;
    const top = spawn('sh', ['-c', `sh -c 'python3 -c "$0" & wait' '${member.replace(/'/g, "'\\''")}' & wait; sleep 300`], { detached: true, stdio: 'ignore' });
    stops.push(() => {
      try {
        process.kill(-top.pid!, 'SIGKILL');
      } catch {
        // gone
      }
    });
    const topPid = top.pid!;
    // Tie it to a failed job (a leaked tree) by its run and pid file.
    project.addJob(topPid, { status: 'failed', endedSecondsAgo: 120 });
    project.writePidFile(topPid);
    const session = new ProjectSession({ root: project.root, policy, env: {} });
    const full = new ProjectSession({ root: project.root, policy, env: {}, fullSweepSeconds: 0 });
    stops.push(() => {
      session.close();
      full.close();
    });
    const treeOf = (inv: ProjectInventory) => inv.adapters.find((t) => t.topPid === topPid);
    const pyOf = (inv: ProjectInventory) => treeOf(inv)?.processes.find((p) => /python3?$/.test(p.argv[0] ?? ''));
    await waitUntil(() => pyOf(session.collect()) !== undefined, 10_000);
    full.collect();
    const inv = session.collect();
    const py = pyOf(inv);
    expect(py).toBeDefined();
    const mid = treeOf(inv)!.processes.find((p) => p.pid === py!.ppid);
    expect(mid && mid.pid !== topPid).toBe(true);
    stops.push(() => {
      try {
        process.kill(py!.pid, 'SIGKILL');
      } catch {
        // gone
      }
    });
    expect(await waitUntil(() => fs.existsSync(ready))).toBe(true);
    process.kill(py!.pid, 'SIGUSR1');
    await waitUntil(() => readIdentity(py!.pid)?.sid === py!.pid);
    process.kill(mid!.pid, 'SIGKILL');
    await waitUntil(() => readIdentity(py!.pid)?.ppid !== mid!.pid);
    const escaped = readIdentity(py!.pid)!;
    expect(escaped).toMatchObject({ startTicks: py!.startTicks, pgid: py!.pid, sid: py!.pid });
    expect(escaped.ppid).not.toBe(mid!.pid);

    // The inconsistent view (a member gone, one in another group) makes the next cycle sweep; the
    // escapee stays in its tree either way, with its identity; the full-sweep session agrees.
    for (let i = 0; i < 3; i++) {
      const t = treeOf(session.collect())!;
      expect(t.processes.map((p) => `${p.pid}:${p.startTicks}`)).toContain(`${py!.pid}:${py!.startTicks}`);
      expect(t.verdict).toBe('leaked');
      expect(treeOf(full.collect())!.processes.map((p) => p.pid)).toContain(py!.pid);
    }
    // A new session has never seen it in its tree: a full sweep alone cannot tie it back.
    const fresh = new ProjectSession({ root: project.root, policy, env: {} });
    try {
      expect(treeOf(fresh.collect())!.processes.map((p) => p.pid)).not.toContain(py!.pid);
    } finally {
      fresh.close();
    }
    // Reaped with its tree: the group signal cannot reach it, its own signal does (re-identified first).
    const inv2 = session.collect();
    const p = plan(inv2, policy, { allLeaked: true, orphans: false, sessions: false, jobs: [], pids: [], force: false, gc: true }, selfPlanContext(false));
    expect(p.actions.map((a) => a.kind === 'kill-tree' && a.tree.topPid)).toContain(topPid);
    const report = await executePlan(p, { session, actor: 'cli', audit: new AuditLog(`${project.root}/audit.jsonl`), killWaitMs: 2000, gc: false });
    const r = report.results.find((x) => x.kind === 'kill-tree' && x.topPid === topPid) as KillTreeResult;
    expect(r.outcome).toBe('ok');
    expect(r.processes.find((o) => o.pid === py!.pid)).toMatchObject({ result: 'gone', signals: [{ signal: 'SIGTERM', via: 'process' }] });
    expect(await waitUntil(() => readIdentity(py!.pid)?.startTicks !== py!.startTicks || readIdentity(py!.pid)?.state === 'Z')).toBe(true);
  });
});
