// The ps process source against the /proc one, on the same live host: the demo's project (real
// fake adapter trees in every state: active, paused, leaked, shared with a leaked session,
// spawning, unreferenced, orphaned, foreign, top-killed paused and failed; stale pid files; an
// in-VM run). procps `ps` accepts the keywords macOS's does, so this runs in the normal suite.
// Both must give the same verdicts, trees and sessions, start times within a second, the same
// plan; and `reap` through ps must kill exactly what the /proc plan names, nothing else.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ProjectSession as Session } from '../../src/session/project-session.js';
import type { buildDemoProject as Build, DemoProject } from '../../src/demo/scenario.js';
import type { AdapterTree, ProjectInventory } from '../../src/core/types.js';
import { DEFAULT_POLICY } from '../../src/core/types.js';
import type * as PlanModule from '../../src/core/plan.js';
import type * as ExecuteModule from '../../src/effects/execute.js';
import type * as AuditModule from '../../src/effects/audit-log.js';
import type * as ProcModule from '../../src/sources/processes.js';
import type * as PsModule from '../../src/sources/ps-port.js';
import type * as TimeModule from '../../src/core/time.js';
import type * as SelfModule from '../../src/effects/self.js';
import { buildCli, type BuiltCli } from '../helpers/built-cli.js';

const policy = { ...DEFAULT_POLICY, spawnGraceSeconds: 2, terminalGraceSeconds: 2 };
const ALL = { allLeaked: true, orphans: true, sessions: true, jobs: [], pids: [], force: false, gc: false };

let built: BuiltCli;
let project: DemoProject | null = null;
let m: {
  ProjectSession: typeof Session;
  plan: typeof PlanModule.plan;
  executePlan: typeof ExecuteModule.executePlan;
  AuditLog: typeof AuditModule.AuditLog;
  procPort: typeof ProcModule.procPort;
  psPort: typeof PsModule.psPort;
  startEpoch: typeof TimeModule.startEpoch;
  selfPlanContext: typeof SelfModule.selfPlanContext;
};

function collect(kind: 'proc' | 'ps'): ProjectInventory {
  const processes = kind === 'proc' ? m.procPort() : m.psPort();
  const session = new m.ProjectSession({ root: project!.root, policy, env: {}, processes });
  try {
    return session.collect();
  } finally {
    session.close();
  }
}

/**
 * Only the demo's own trees (and its in-VM run): other test files running beside this one start
 * fake adapters of their own, which this host shows as foreign trees that come and go between reads.
 */
function ours(inv: ProjectInventory): AdapterTree[] {
  const tops = new Set(project!.trees.map((t) => t.topPid));
  return inv.adapters.filter((a) => a.verdict === 'in-vm' || tops.has(a.topPid));
}

/** A tree as both sources must agree on it: top, verdict, every process's pid, ppid and pgid, its sessions. */
function shape(t: AdapterTree) {
  return {
    top: t.topPid,
    verdict: t.verdict,
    processes: t.processes.map((p) => `${p.pid}/${p.ppid}/${p.pgid}`).sort(),
    sessions: t.sessions.map((s) => `${s.sessionId}:${s.verdict}:${s.pid}`).sort(),
    jobs: t.jobs.map((j) => j.id).sort(),
  };
}

/** Alive and not a zombie (a killed child of the stand-in server stays a zombie until it is waited for). */
const alive = (pid: number) => {
  const r = m.procPort().identity(pid);
  return r.kind !== 'gone' && !(r.kind === 'live' && r.id.state === 'Z');
};

/** Missing tools: the suite then skips and says which; under CI=true (where .ci/run installs them) it fails instead. */
const tools = (['ps', 'lsof'] as const).filter((t) => spawnSync(t, t === 'ps' ? ['-p', '1'] : ['-v'], { stdio: 'ignore' }).error !== undefined);

beforeAll(async () => {
  if (tools.length > 0) return;
  built = buildCli(['demo/scenario.js', 'demo/stand-in-server.js', 'session/project-session.js', 'sources/ps-port.js']);
  const load = async <T,>(f: string) => (await import(`${built.outDir}/${f}`)) as T;
  const { buildDemoProject } = await load<{ buildDemoProject: typeof Build }>('demo/scenario.js');
  m = {
    ProjectSession: (await load<{ ProjectSession: typeof Session }>('session/project-session.js')).ProjectSession,
    plan: (await load<typeof PlanModule>('core/plan.js')).plan,
    executePlan: (await load<typeof ExecuteModule>('effects/execute.js')).executePlan,
    AuditLog: (await load<typeof AuditModule>('effects/audit-log.js')).AuditLog,
    procPort: (await load<typeof ProcModule>('sources/processes.js')).procPort,
    psPort: (await load<typeof PsModule>('sources/ps-port.js')).psPort,
    startEpoch: (await load<typeof TimeModule>('core/time.js')).startEpoch,
    selfPlanContext: (await load<typeof SelfModule>('effects/self.js')).selfPlanContext,
  };
  project = await buildDemoProject({ holdMb: 1, spawnGraceSeconds: 2, terminalGraceSeconds: 2, topKilled: true });
  // Past the graces, so that leaked and orphaned trees are planned — by both clocks: ps's start
  // times carry up to 2 s of error (whole seconds, from a whole-second boot time), and a tree
  // 0.5 s past its spawn grace by /proc was once still spawning by ps (CI, 2026-12-02).
  await new Promise((r) => setTimeout(r, (2 + 2) * 1000 + 500));
}, 180_000);
afterAll(async () => {
  await project?.stop();
  built?.cleanup();
});

it.runIf(tools.length > 0 && process.env.CI === 'true')('CI has ps and lsof (.ci/run installs them; runs only under CI=true with one missing, and fails then)', () => {
  expect(tools).toEqual([]);
});

describe.skipIf(tools.length > 0)(`--process-source ps against /proc, on the same live host${tools.length ? ` (skipped: ${tools.join(' and ')} not installed; .ci/run installs them)` : ''}`, () => {
  it('reads every source, through ps too', () => {
    const inv = collect('ps');
    for (const [name, h] of Object.entries(inv.sources)) expect(h.ok, `${name}: ${h.error}`).toBe(true);
    // The server's cwd (its pids folder) comes from lsof on this source.
    expect(inv.server).toMatchObject({ alive: true, cwd: project!.root });
  });

  it('gives the same verdicts, trees (pids, ppids, pgids), sessions and pid-file verdicts', () => {
    const proc = collect('proc');
    const ps = collect('ps');
    const trees = (inv: ProjectInventory) => ours(inv).map(shape).sort((a, b) => a.top - b.top || a.verdict.localeCompare(b.verdict));
    expect(trees(ps)).toEqual(trees(proc));
    // Every demo verdict is there (the spawning ones are past their grace: unreferenced): the comparison is not between two empty lists.
    expect(new Set(ours(proc).map((a) => a.verdict))).toEqual(new Set(['active', 'paused', 'leaked', 'unreferenced', 'orphaned', 'foreign', 'in-vm']));
    const files = (inv: ProjectInventory) => inv.pidFiles.map((f) => `${f.name}:${f.verdict}`).sort();
    expect(files(ps)).toEqual(files(proc));
    expect(ps.staleRunningRuns).toEqual(proc.staleRunningRuns);
  });

  // Before the reap below: the two commands must see the same host.
  it('status --json through the CLI: the same verdicts with --process-source ps and proc', () => {
    const status = (source: string) => {
      const out = execFileSync(process.execPath, [built.bin, 'status', '--json', '--all', '--project', project!.root, '--process-source', source], { encoding: 'utf8', env: { ...process.env, STEPWISE_DB: '' } });
      const doc = JSON.parse(out) as { projects: { adapters: { topPid: number; verdict: string }[] }[] };
      const tops = new Set(project!.trees.map((t) => t.topPid));
      return doc.projects[0]!.adapters.filter((a) => tops.has(a.topPid)).map((a) => `${a.topPid}:${a.verdict}`).sort();
    };
    expect(status('ps')).toEqual(status('proc'));
  });

  it('start times agree to the resolution of lstart (whole seconds, from a whole-second boot time), and identities differ only in their units', () => {
    const proc = m.procPort().table();
    const ps = m.psPort().table();
    const psByPid = new Map(ps.table.processes.map((p) => [p.pid, p]));
    const pids = project!.trees.flatMap((t) => t.pids);
    expect(pids.length).toBeGreaterThan(20);
    let compared = 0;
    for (const pid of pids) {
      const a = proc.table.processes.find((p) => p.pid === pid);
      const b = psByPid.get(pid);
      if (!a || !b) continue; // a top the scenario killed
      compared++;
      const delta = m.startEpoch(ps.table.clock, b.startTicks) - m.startEpoch(proc.table.clock, a.startTicks);
      // lstart is whole seconds derived from the whole-second boot time: up to ~1 s early, never a second late.
      expect(delta, `pid ${pid}`).toBeGreaterThan(-2.05);
      expect(delta, `pid ${pid}`).toBeLessThan(1.05);
      expect([b.ppid, b.pgid]).toEqual([a.ppid, a.pgid]);
      if (a.uid !== null) expect(b.uid).toBe(a.uid); // /proc reads uids of the processes that matter only
    }
    expect(compared).toBeGreaterThan(20); // the loop compared the trees, not nothing
  });

  it('plans the same kills, and reap through ps kills exactly those processes', async () => {
    const procInv = collect('proc');
    const ctx = m.selfPlanContext(false);
    const procPlan = m.plan(procInv, policy, ALL, ctx);
    const targets = (p: ReturnType<typeof m.plan>) =>
      p.actions.flatMap((a) => (a.kind === 'kill-tree' ? [`tree ${a.tree.topPid}`] : a.kind === 'kill-session' ? [`session ${a.session.pid}`] : [])).sort();
    expect(targets(procPlan).filter((t) => t.startsWith('tree')).length).toBeGreaterThanOrEqual(3);
    expect(targets(procPlan).some((t) => t.startsWith('session'))).toBe(true);

    const session = new m.ProjectSession({ root: project!.root, policy, env: {}, processes: m.psPort() });
    const auditFile = path.join(project!.root, 'ps-audit.jsonl');
    try {
      const psPlan = m.plan(session.collect(), policy, ALL, ctx);
      expect(targets(psPlan)).toEqual(targets(procPlan));
      const doomed = new Set(
        procPlan.actions.flatMap((a) => (a.kind === 'kill-tree' ? a.tree.processes.map((p) => p.pid) : a.kind === 'kill-session' ? a.session.processes.map((p) => p.pid) : [])),
      );
      const spared = ours(procInv).filter((t) => t.verdict !== 'in-vm').flatMap((t) => t.processes.map((p) => p.pid)).filter((pid) => !doomed.has(pid));
      expect(spared.length).toBeGreaterThan(10);

      const report = await m.executePlan(psPlan, { session, actor: 'cli', audit: new m.AuditLog(auditFile), killWaitMs: 3000, gc: false, planContext: ctx });
      const kills = report.results.filter((r) => r.kind === 'kill-tree' || r.kind === 'kill-session');
      expect(kills.map((r) => `${r.kind}:${'outcome' in r ? r.outcome : ''}`).filter((k) => !k.endsWith(':ok'))).toEqual([]);
      await new Promise((r) => setTimeout(r, 300));
      expect([...doomed].filter(alive)).toEqual([]);
      expect(spared.filter((pid) => !alive(pid))).toEqual([]);
      expect(fs.readFileSync(auditFile, 'utf8')).toContain('"kill-session"');
    } finally {
      session.close();
    }
  }, 60_000);

  it('a bad --process-source is one line naming the value', () => {
    let err = '';
    try {
      execFileSync(process.execPath, [built.bin, 'status', '--project', project!.root, '--process-source', 'sysctl'], { encoding: 'utf8', stdio: 'pipe' });
    } catch (e) {
      err = String((e as { stderr: string }).stderr);
    }
    expect(err.trim()).toMatch(/--process-source "sysctl": must be one of auto, proc, ps/);
    expect(err).not.toMatch(/\n\s+at /);
  });
});
