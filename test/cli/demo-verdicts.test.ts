// Every verdict with REAL processes and a real store: the demo's project (a stand-in server
// whose children are adapter trees, an orphan reparented to pid 1, an editor-like foreign tree,
// stale pid files, a stale running run, an in-VM run), classified by the real sources. Uses the
// private build: the stand-in server runs as plain JS.
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
  project = await buildDemoProject({ holdMb: 1, spawnGraceSeconds: 2, terminalGraceSeconds: 2 });
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
      const tree = inv.adapters.find((a) => a.topPid === t.topPid && a.verdict !== 'in-vm');
      expect(tree, `${t.name}: tree ${t.topPid}`).toBeDefined();
      expect({ name: t.name, verdict: tree!.verdict }).toEqual({ name: t.name, verdict: t.expected });
      expect([...tree!.processes.map((p) => p.pid)].sort()).toEqual([...t.pids].sort());
      expect(tree!.rssBytes).toBeGreaterThan(1048576);
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
