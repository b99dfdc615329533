// The real stepwise 0.46.1 engine driving the REAL claude-agent-acp 0.101.0 (four-level trees,
// one `claude` CLI per ACP session, top-killed trees), captured mid-leak: every tree verdict and
// every session verdict in expected.json must come out right, through the real store and
// pid-file sources, and the plan must kill exactly what expected.json marks.
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { plan, type Selection } from '../../src/core/plan.js';
import { DEFAULT_POLICY, type ProjectInventory } from '../../src/core/types.js';
import { EXPECTED_TO_OURS, REAL_ADAPTER_FIXTURE_DIR, expectedScenarios, fixtureInventory, fixtureProcesses } from '../helpers/leak-fixture.js';

const DIR = REAL_ADAPTER_FIXTURE_DIR;
const scenarios = expectedScenarios(DIR);
const expected = fixtureProcesses(DIR) as unknown as { server_pid: number };
const expectedJson = JSON.parse(fs.readFileSync(path.join(DIR, 'expected.json'), 'utf8')) as {
  sessions_by_verdict: Record<string, number>;
  reap_candidate_pids: number[];
  never_kill_pids: number[];
  session_reap_candidate_pids: number[];
};
const ctx = { selfPid: 1, selfAncestors: [], selfUid: null, allowOtherUids: true };
const none: Selection = { allLeaked: false, orphans: false, sessions: false, jobs: [], pids: [], force: false, gc: false };

let inv: ProjectInventory;
beforeAll(() => {
  // Two minutes after the last pid file: past the terminal grace and the orphan's spawn grace.
  inv = fixtureInventory(120, DIR);
});

const treeOf = (top: number) => inv.adapters.find((a) => a.topPid === top && a.verdict !== 'in-vm');
const byJob = (a: { id: string }, b: { id: string }) => a.id.localeCompare(b.id);

describe('stepwise 0.46.1 with the real adapter', () => {
  it('verifies the live server against server.pid', () => {
    expect(inv.server.alive).toBe(true);
    expect(inv.server.identity?.pid).toBe(expected.server_pid);
  });

  for (const s of scenarios) {
    it(`${s.name}: tree ${s.verdict}`, () => {
      const ours = EXPECTED_TO_OURS[s.verdict];
      expect(ours, `unmapped verdict ${s.verdict}`).toBeDefined();
      const tree = treeOf(s.adapter_top_pid);
      if (!ours!.adapter) {
        expect(tree).toBeUndefined();
        expect(inv.adapters.some((a) => a.processes.some((p) => s.adapter_pids.includes(p.pid)))).toBe(false);
        return;
      }
      expect(tree, `a tree with top ${s.adapter_top_pid}`).toBeDefined();
      expect(tree!.verdict, tree!.reason).toBe(ours!.adapter);
      expect(tree!.processes.map((p) => p.pid).sort()).toEqual([...s.adapter_pids].sort());
      expect(tree!.jobs.map((j) => ({ job_id: j.id, status: j.status })).sort((a, b) => a.job_id.localeCompare(b.job_id))).toEqual(
        s.jobs.map((j) => ({ job_id: j.job_id, status: j.status })).sort((a, b) => a.job_id.localeCompare(b.job_id)),
      );
      const file = s.pid_file ? inv.pidFiles.find((f) => f.name === path.basename(s.pid_file!)) : undefined;
      if (s.pid_file && (s as { pid_file_exists?: boolean }).pid_file_exists !== false) expect(file?.verdict).toBe('live');
      else expect(file).toBeUndefined();
    });

    for (const sess of s.sessions ?? []) {
      it(`${s.name}: session ${sess.session_id.slice(0, 8)} ${sess.expected_session_verdict}`, () => {
        const tree = treeOf(s.adapter_top_pid)!;
        const found = tree.sessions.find((x) => x.sessionId === sess.session_id);
        expect(found, `session ${sess.session_id} in tree ${tree.topPid}`).toBeDefined();
        expect(found!.pid).toBe(sess.cli_pid);
        expect(found!.startTicks).toBe(sess.cli_starttime_ticks);
        expect(found!.verdict, found!.reason).toBe(sess.expected_session_verdict);
        expect(found!.jobs.map((j) => ({ id: j.id, status: j.status })).sort(byJob)).toEqual([...sess.jobs].sort(byJob));
        expect(found!.rssBytes).toBeGreaterThan(100 * 2 ** 20); // a real idle CLI is ~170 MB
        expect(found!.processes.map((p) => p.pid)).toEqual([sess.cli_pid]);
      });
    }
  }

  it('finds exactly the sessions expected.json lists, by verdict', () => {
    const counts: Record<string, number> = {};
    for (const t of inv.adapters) for (const x of t.sessions) counts[x.verdict] = (counts[x.verdict] ?? 0) + 1;
    expect(counts).toEqual(expectedJson.sessions_by_verdict);
  });

  it('says why a top-killed tree is what it is', () => {
    const paused = treeOf(14854)!;
    expect(paused.reason).toMatch(/job job-ca6fbccb is paused \(group leader 14854 gone; members alive\)/);
    const running = treeOf(13578)!;
    expect(running.reason).toMatch(/job job-6fefc0c1 failed .*\(group leader 13578 gone; members alive\)/);
    expect(running.pidFile).toBeNull(); // stepwise removed it: only the run names the group
    const shared = treeOf(13827)!.sessions.find((x) => x.verdict === 'leaked')!;
    expect(shared.reason).toMatch(/job job-5a165dc9 failed .*\(abandoned\); the adapter stays for job-cc459464 \(running\)/);
  });

  it('plans to kill exactly the reap candidates, never a must-not-kill pid, never the paused top-killed tree', () => {
    const p = plan(inv, DEFAULT_POLICY, { ...none, allLeaked: true, orphans: true }, ctx);
    const killed = p.actions.flatMap((a) => (a.kind === 'kill-tree' ? a.tree.processes.map((x) => x.pid) : [])).sort();
    const want = expectedJson;
    expect(killed).toEqual([...want.reap_candidate_pids].sort());
    for (const pid of want.never_kill_pids) expect(killed).not.toContain(pid);
    expect(killed).not.toContain(14873);
    expect(killed).not.toContain(14892);
  });

  it('plans to stop exactly the leaked session of the shared adapter, by its CLI only', () => {
    const p = plan(inv, DEFAULT_POLICY, { ...none, allLeaked: true, orphans: true, sessions: true }, ctx);
    const sessions = p.actions.filter((a) => a.kind === 'kill-session');
    const want = expectedJson.session_reap_candidate_pids;
    expect(sessions.flatMap((a) => (a.kind === 'kill-session' ? a.session.processes.map((x) => x.pid) : []))).toEqual(want);
    // Sessions of trees that are reaped whole are not planned twice.
    const alone = plan(inv, DEFAULT_POLICY, { ...none, sessions: true }, ctx);
    expect(alone.actions.map((a) => (a.kind === 'kill-session' ? a.session.pid : -1))).toEqual(want);
  });
});
