// The re-verification rules (core/recheck.ts), table by table: what the tree read right before a
// signal must still be for the signal to go out.
import { describe, expect, it } from 'vitest';
import type { KillTreeAction } from '../../src/core/plan.js';
import { ownershipProblem, sameJobSet, sameTree, verdictProblem } from '../../src/core/recheck.js';
import type { AdapterTree, AdapterVerdict, TreeProcess } from '../../src/core/types.js';

const proc = (pid: number, o: Partial<TreeProcess> = {}): TreeProcess => ({ pid, startTicks: pid * 10, ppid: 1, pgid: 100, sid: 100, uid: 1000, state: 'S', argv: ['x'], rssBytes: 0, swapBytes: 0, ...o });

function tree(verdict: AdapterVerdict, processes: TreeProcess[] = [proc(100), proc(101, { ppid: 100 })], jobs: string[] = ['j1']): AdapterTree {
  const top = processes.find((p) => p.pid === 100);
  return {
    topPid: 100,
    top: top ? { pid: 100, startTicks: top.startTicks } : { pid: 100, startTicks: 1000 },
    processes,
    verdict,
    reason: `${verdict} because`,
    jobs: jobs.map((id) => ({ id, status: 'failed', terminal: true, terminalSinceEpoch: 0 })),
    evidence: [],
    rssBytes: 0,
    swapBytes: 0,
    ageSeconds: 60,
    startEpoch: 0,
    pidFile: null,
    agent: null,
    lastTerminalEpoch: 0,
    runIds: [],
    sessions: [],
  };
}

const action = (verdict: AdapterVerdict, selectedBy: KillTreeAction['selectedBy'], forced = false): KillTreeAction => ({ kind: 'kill-tree', project: '/p', tree: tree(verdict), verdict, reason: '', selectedBy, forced });

describe('verdictProblem: is the fresh verdict still one this action may signal?', () => {
  const cases: [string, KillTreeAction, AdapterVerdict, boolean][] = [
    ['all-leaked, still leaked', action('leaked', 'all-leaked'), 'leaked', true],
    ['all-leaked, now orphaned (another policy selection)', action('leaked', 'all-leaked'), 'orphaned', false],
    ['all-leaked, job resumed: active', action('leaked', 'all-leaked'), 'active', false],
    ['orphans, still orphaned', action('orphaned', 'orphans'), 'orphaned', true],
    ['orphans, now leaked', action('orphaned', 'orphans'), 'leaked', false],
    ['--pid, leaked then orphaned (both reapable)', action('leaked', 'pid'), 'orphaned', true],
    ['--pid, now paused', action('leaked', 'pid'), 'paused', false],
    ['--force on an active tree, still active', action('active', 'pid', true), 'active', true],
    ['--force on an active tree, now paused', action('active', 'pid', true), 'paused', false],
    ['--force, now foreign (never touched)', action('active', 'pid', true), 'foreign', false],
    ['--force, now in a VM (never touched)', action('leaked', 'job', true), 'in-vm', false],
  ];
  for (const [name, a, fresh, allowed] of cases) {
    it(`${name}: ${allowed ? 'signalled' : 'refused'}`, () => {
      const why = verdictProblem(a, tree(fresh));
      if (allowed) expect(why).toBeNull();
      else expect(why).toMatch(new RegExp(`tree 100 .*${fresh}`));
    });
  }
});

describe('ownershipProblem: only the planned uids, never pid 1 or a protected process', () => {
  const planned = tree('leaked');
  it('the same tree passes', () => expect(ownershipProblem(planned, tree('leaked'), new Set([5]))).toBeNull());
  it('a member that appeared as another uid is refused', () =>
    expect(ownershipProblem(planned, tree('leaked', [proc(100), proc(102, { uid: 0 })]), new Set())).toMatch(/process 102 runs as uid 0/));
  it('a member of unknown uid is refused', () => expect(ownershipProblem(planned, tree('leaked', [proc(100), proc(102, { uid: null })]), new Set())).toMatch(/uid unknown/));
  it('pid 1 or a protected pid in the tree is refused', () => {
    expect(ownershipProblem(planned, tree('leaked', [proc(100), proc(1)]), new Set())).toMatch(/protected pid 1/);
    expect(ownershipProblem(planned, tree('leaked', [proc(100), proc(4242)]), new Set([4242]))).toMatch(/protected pid 4242/);
  });
});

describe('sameTree: the planned tree, by identity', () => {
  it('same top (pid and start ticks)', () => expect(sameTree(tree('leaked'), tree('leaked'))).toBe(true));
  it('a live top with another start time is another process (pid reused)', () =>
    expect(sameTree(tree('leaked'), tree('leaked', [proc(100, { startTicks: 7 }), proc(101)]))).toBe(false));
  it('a dead leader: a shared member carrying its pgid proves the same group', () => {
    const planned = tree('leaked');
    const leaderless = { ...tree('leaked', [proc(101, { ppid: 1 })]), top: { pid: 100, startTicks: 1010 } };
    expect(sameTree(planned, leaderless)).toBe(true);
    expect(sameTree(planned, { ...leaderless, processes: [proc(101, { startTicks: 5 })] })).toBe(false);
  });
  it('the job set, whatever the order', () => {
    expect(sameJobSet(tree('leaked', undefined, ['a', 'b']), tree('leaked', undefined, ['b', 'a']))).toBe(true);
    expect(sameJobSet(tree('leaked', undefined, ['a']), tree('leaked', undefined, ['a', 'b']))).toBe(false);
  });
});
