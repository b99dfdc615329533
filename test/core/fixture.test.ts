// The real stepwise 0.46.1 store, pid files and process table captured mid-leak: every
// verdict in expected.json must come out right, through the real store and pid-file sources.
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { plan } from '../../src/core/plan.js';
import { DEFAULT_POLICY, type ProjectInventory } from '../../src/core/types.js';
import { EXPECTED_TO_OURS, expectedScenarios, fixtureInventory } from '../helpers/leak-fixture.js';

let inv: ProjectInventory;
beforeAll(() => {
  // Two minutes after the snapshot: past the terminal grace of the leaked trees and the spawn
  // grace of the orphan.
  inv = fixtureInventory(120);
});

describe('stepwise 0.46.1 leak fixture', () => {
  it('verifies the live server against server.pid', () => {
    expect(inv.server.alive).toBe(true);
    expect(inv.server.identity?.pid).toBe(22716);
  });

  for (const s of expectedScenarios()) {
    it(`${s.name}: ${s.verdict}`, () => {
      const ours = EXPECTED_TO_OURS[s.verdict];
      expect(ours, `unmapped verdict ${s.verdict}`).toBeDefined();
      const tree = inv.adapters.find((a) => a.topPid === s.adapter_top_pid && a.verdict !== 'in-vm');
      if (ours!.adapter) {
        expect(tree, `a tree with top ${s.adapter_top_pid}`).toBeDefined();
        expect(tree!.verdict).toBe(ours!.adapter);
        expect(tree!.processes.map((p) => p.pid).sort()).toEqual([...s.adapter_pids].sort());
        expect(tree!.jobs.map((j) => ({ job_id: j.id, status: j.status })).sort((a, b) => a.job_id.localeCompare(b.job_id))).toEqual(
          [...s.jobs].sort((a, b) => a.job_id.localeCompare(b.job_id)),
        );
      } else {
        // No tree at all: the adapter is gone, or the pid now belongs to an unrelated process.
        expect(tree).toBeUndefined();
        expect(inv.adapters.some((a) => a.processes.some((p) => s.adapter_pids.includes(p.pid)))).toBe(false);
      }
      const file = s.pid_file ? inv.pidFiles.find((f) => f.name === path.basename(s.pid_file!)) : undefined;
      if (ours!.pidFile && s.pid_file) {
        expect(file?.verdict).toBe(ours!.pidFile);
      } else if (s.pid_file) {
        // released-by-engine: the engine removed its pid file.
        expect(file).toBeUndefined();
      }
    });
  }

  it('plans to reap exactly the trees expected.json marks reap_expected, and none marked must_not_kill', () => {
    const p = plan(
      inv,
      DEFAULT_POLICY,
      { allLeaked: true, orphans: true, sessions: false, jobs: [], pids: [], force: false, gc: true },
      { selfPid: 1, selfAncestors: [], selfUid: null, allowOtherUids: true },
    );
    const killed = p.actions.flatMap((a) => (a.kind === 'kill-tree' ? a.tree.processes.map((x) => x.pid) : []));
    const expectedKilled = expectedScenarios()
      .filter((s) => s.reap_expected)
      .flatMap((s) => s.adapter_pids);
    expect(killed.sort()).toEqual(expectedKilled.sort());
    for (const s of expectedScenarios().filter((x) => x.must_not_kill)) {
      for (const pid of s.adapter_pids) expect(killed).not.toContain(pid);
    }
    const removed = p.actions.flatMap((a) => (a.kind === 'remove-pid-file' ? [a.file.name] : [])).sort();
    expect(removed).toEqual(['acp-22820.json', 'acp-22827.json']);
  });

  it('reports the reasons a tired on-call can read', () => {
    const leak = inv.adapters.find((a) => a.topPid === 22785)!;
    expect(leak.reason).toMatch(/^job job-eb3d1747 failed 2m ago \(abandoned\)$/);
    const shared = inv.adapters.find((a) => a.topPid === 22776)!;
    expect(shared.reason).toMatch(/job job-cff0efb2 is running; also used by job-4e2900ce \(failed\)/);
    expect(inv.pidFiles.find((f) => f.name === 'acp-22827.json')!.reason).toMatch(/now belongs to `sleep 100000`/);
  });
});
