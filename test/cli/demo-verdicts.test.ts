// Every verdict with REAL processes and a real store: the demo's project (a stand-in server
// whose children are adapter trees, an orphan reparented to pid 1, an editor-like foreign tree,
// stale pid files, a stale running run, an in-VM run), classified by the real sources. Uses the
// private build: the stand-in server runs as plain JS.
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ProjectSession as Session } from '../../src/daemon/collect.js';
import type { buildDemoProject as Build, DemoProject } from '../../src/demo/scenario.js';
import type { ProjectInventory } from '../../src/core/types.js';
import { DEFAULT_POLICY } from '../../src/core/types.js';
import { buildCli, type BuiltCli } from '../helpers/built-cli.js';

let built: BuiltCli;
let project: DemoProject | null = null;
let inv: ProjectInventory;

beforeAll(async () => {
  built = buildCli(['demo/scenario.js', 'demo/stand-in-server.js', 'daemon/collect.js']);
  const { buildDemoProject } = (await import(`${built.outDir}/demo/scenario.js`)) as { buildDemoProject: typeof Build };
  const { ProjectSession } = (await import(`${built.outDir}/daemon/collect.js`)) as { ProjectSession: typeof Session };
  const policy = { ...DEFAULT_POLICY, spawnGraceSeconds: 2, terminalGraceSeconds: 2 };
  project = await buildDemoProject({ holdMb: 1, spawnGraceSeconds: 2, terminalGraceSeconds: 2, topKilled: true });
  const session = new ProjectSession({ root: project.root, policy, env: {} });
  try {
    inv = session.collect();
  } finally {
    session.close();
  }
}, 180_000);
afterAll(async () => {
  await project?.stop();
  built?.cleanup();
});

describe('every verdict, real processes', () => {
  it('reads every source', () => {
    for (const [name, h] of Object.entries(inv.sources)) expect(h.ok, `${name}: ${h.error}`).toBe(true);
    expect(inv.server).toMatchObject({ alive: true, cwd: project!.root });
  });

  it('gives each demo tree its expected verdict and every process of the tree', () => {
    for (const t of project!.trees) {
      if (t.topKilled) continue; // below
      const tree = inv.adapters.find((a) => a.topPid === t.topPid && a.verdict !== 'in-vm');
      expect(tree, `${t.name}: tree ${t.topPid}`).toBeDefined();
      expect({ name: t.name, verdict: tree!.verdict }).toEqual({ name: t.name, verdict: t.expected });
      expect([...tree!.processes.map((p) => p.pid)].sort()).toEqual([...t.pids].sort());
      expect(tree!.rssBytes).toBeGreaterThan(1048576);
    }
  });

  it('has the real tree shape: npm exec, sh, node, then one claude CLI per session named by its run', () => {
    const byPid = new Map(inv.adapters.flatMap((a) => a.processes.map((p) => [p.pid, p] as const)));
    const db = new Database(path.join(project!.root, '.stepwise', 'stepwise.db'), { readonly: true });
    let states: { pid: number; session_id: string }[];
    try {
      states = (db.prepare('SELECT executor_state FROM step_runs').all() as { executor_state: string | null }[])
        .map((r) => JSON.parse(r.executor_state ?? 'null') as { pid?: number; session_id?: string } | null)
        .filter((e): e is { pid: number; session_id: string } => typeof e?.pid === 'number' && typeof e.session_id === 'string');
    } finally {
      db.close();
    }
    for (const t of project!.trees) {
      if (t.topKilled) continue;
      const [npm, sh, node, ...clis] = t.pids;
      expect(byPid.get(npm!)!.argv, t.name).toHaveLength(1);
      expect(byPid.get(npm!)!.argv[0]).toMatch(/^npm exec @agentclientprotocol\/claude-agent-acp /);
      expect(byPid.get(sh!)!.argv.slice(0, 2)).toEqual(['sh', '-c']);
      expect(byPid.get(node!)!.argv[1]).toMatch(/\.bin\/claude-agent-acp$/);
      expect(clis).toEqual(t.sessions.map((s) => s.pid));
      for (const s of t.sessions) {
        expect(byPid.get(s.pid)).toMatchObject({ ppid: node, pgid: t.topPid });
        expect(byPid.get(s.pid)!.argv).toContain(`--session-id=${s.sessionId}`);
        // Every attributed session is the session_id of a run naming this adapter; no other is.
        const runs = states.filter((e) => e.session_id === s.sessionId);
        if (s.expected === 'unattributed') expect(runs, `${t.name} ${s.sessionId}`).toEqual([]);
        else expect(runs.map((e) => e.pid), `${t.name} ${s.sessionId}`).toEqual([t.topPid]);
      }
    }
    // The shared adapter: a running job's session and an abandoned job's (the leaked one).
    const shared = project!.trees.find((t) => t.name === 'shared')!;
    expect(shared.sessions.map((s) => s.expected)).toEqual(['active', 'leaked']);
    expect(states.filter((e) => e.pid === shared.topPid).map((e) => e.session_id).sort()).toEqual(shared.sessions.map((s) => s.sessionId).sort());
  });

  it('top-killed trees: npm and sh gone, node and its CLI alive with ppid 1 in the dead leader’s group', () => {
    const killed = project!.trees.filter((t) => t.topKilled);
    expect(killed.map((t) => [t.name, t.expected])).toEqual([['paused-top-killed', 'paused'], ['failed-top-killed', 'leaked']]);
    const procs = new Map(inv.adapters.flatMap((a) => a.processes.map((p) => [p.pid, p] as const)));
    for (const t of killed) {
      const [node, cli] = t.pids as [number, number];
      expect(t.pids).toHaveLength(2);
      expect(t.sessions.map((s) => s.pid)).toEqual([cli]);
      expect(procs.get(t.topPid)).toBeUndefined();
      expect(procs.get(node)).toMatchObject({ pgid: t.topPid, sid: t.topPid });
      expect(procs.get(node)!.argv[1]).toMatch(/\.bin\/claude-agent-acp$/);
      expect(procs.get(cli)).toMatchObject({ ppid: node, pgid: t.topPid });
    }
    const pidFile = (t: { topPid: number }) => fs.existsSync(path.join(project!.pidsDir, `acp-${t.topPid}.json`));
    expect(killed.map(pidFile)).toEqual([true, false]);
  });

  // Needs the classifier that judges leaderless groups (issue 11, lead): remove `.skip` then.
  it.skip('top-killed trees: the paused one stays paused, the failed one without pid file is leaked', () => {
    for (const t of project!.trees.filter((x) => x.topKilled)) {
      const tree = inv.adapters.find((a) => a.topPid === t.topPid && a.verdict !== 'in-vm');
      expect(tree, `${t.name}: tree ${t.topPid}`).toBeDefined();
      expect({ name: t.name, verdict: tree!.verdict }).toEqual({ name: t.name, verdict: t.expected });
      expect([...tree!.processes.map((p) => p.pid)].sort()).toEqual([...t.pids].sort());
      expect(tree!.reason).toMatch(/group leader \d+ gone; members alive/);
    }
  });

  it('counts the in-VM run without matching it to a host process', () => {
    expect(inv.adapters.filter((a) => a.verdict === 'in-vm')).toHaveLength(1);
  });

  it('judges the stale pid files and the stale running run', () => {
    const verdicts = Object.fromEntries(inv.pidFiles.map((f) => [f.path, f.verdict]));
    expect(project!.stalePidFiles.map((f) => verdicts[f])).toEqual(['stale-dead', 'stale-reused']);
    expect(inv.staleRunningRuns).toHaveLength(1);
    expect(inv.staleRunningRuns[0]!.jobStatus).toBe('failed');
  });
});
