// Re-verification rules: is the tree read right before a signal still the one that was planned,
// still reapable, still ours? Pure (plain trees in, a reason or null out), shared by the kill
// effect's stages and table-tested in test/core/recheck.test.ts.

import type { KillTreeAction } from './plan.js';
import { sameIdentity } from './process-tree.js';
import type { AdapterTree } from './types.js';
import { NEVER_TOUCH_VERDICTS, REAPABLE_VERDICTS } from './vocabulary.js';

const same = sameIdentity;

/**
 * Is `fresh` the same tree as `planned`? Same top identity (pid + start ticks); or, when the
 * fresh tree's leader is dead (its identity is then derived from its members), a shared member
 * identity that still carries the top pid as its group id: a live group id cannot be reused, and
 * the shared member proves it is the same group.
 */
export function sameTree(planned: AdapterTree, fresh: AdapterTree): boolean {
  if (!planned.top || !fresh.top || planned.topPid !== fresh.topPid) return false;
  if (same(planned.top, fresh.top)) return true;
  const freshLeaderAlive = fresh.processes.some((p) => p.pid === fresh.topPid);
  if (freshLeaderAlive) return false;
  return fresh.processes.some((p) => p.pgid === fresh.topPid && planned.processes.some((q) => same(p, q)));
}

export function sameJobSet(a: AdapterTree, b: AdapterTree): boolean {
  const x = new Set(a.jobs.map((j) => j.id));
  const y = new Set(b.jobs.map((j) => j.id));
  return x.size === y.size && [...x].every((id) => y.has(id));
}

/** Why the fresh tree's verdict no longer allows this action, or null. */
export function verdictProblem(action: KillTreeAction, fresh: AdapterTree): string | null {
  const planned = action.verdict;
  if (NEVER_TOUCH_VERDICTS.has(fresh.verdict)) return `tree ${fresh.topPid} is now ${fresh.verdict}: ${fresh.reason}`;
  if (action.forced) {
    // A forced action may target a non-reapable verdict, but only the one that was planned.
    if (fresh.verdict !== planned && !REAPABLE_VERDICTS.has(fresh.verdict)) {
      return `tree ${fresh.topPid} was ${planned} when planned, now ${fresh.verdict}: ${fresh.reason}`;
    }
  } else {
    if (!REAPABLE_VERDICTS.has(fresh.verdict)) return `tree ${fresh.topPid} was ${planned} when planned, now ${fresh.verdict}: ${fresh.reason}`;
    // A policy selection holds only for the verdict it selects.
    if (action.selectedBy === 'all-leaked' && fresh.verdict !== 'leaked') return `tree ${fresh.topPid} is now ${fresh.verdict}, not leaked: ${fresh.reason}`;
    if (action.selectedBy === 'orphans' && fresh.verdict !== 'orphaned') return `tree ${fresh.topPid} is now ${fresh.verdict}, not orphaned: ${fresh.reason}`;
  }
  if (!sameJobSet(action.tree, fresh)) {
    const ids = (t: AdapterTree) => (t.jobs.length ? t.jobs.map((j) => `${j.id}:${j.status}`).join(',') : 'none');
    return `jobs of tree ${fresh.topPid} changed since the plan (${ids(action.tree)} → ${ids(fresh)})`;
  }
  if (fresh.verdict === 'leaked' && !fresh.jobs.every((j) => j.terminal)) {
    return `a job of tree ${fresh.topPid} is no longer terminal: ${fresh.reason}`;
  }
  return null;
}

/** Why a fresh member must not be signalled at all (the whole action is then skipped), or null. */
export function ownershipProblem(planned: AdapterTree, fresh: AdapterTree, protectedPids: ReadonlySet<number>): string | null {
  const uids = new Set(planned.processes.map((p) => p.uid));
  for (const p of fresh.processes) {
    if (p.pid <= 1 || protectedPids.has(p.pid)) return `tree ${fresh.topPid} now contains protected pid ${p.pid}`;
    // The planner checked every planned uid; a member that appeared since must run as one of them.
    if (!uids.has(p.uid)) return `tree ${fresh.topPid}: process ${p.pid} runs as uid ${p.uid ?? 'unknown'}, not as the planned tree`;
  }
  return null;
}

