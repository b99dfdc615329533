// Carry out a plan for one project: explicit refusals are audited, each kill is re-verified
// against a fresh collection right before it (killTree), a reaped tree's own pid file is removed
// when gc is on, then the planned stale pid files. Every result is audited (fsync'd) as soon as
// it is known; no action is started without a writable audit log.

import { plan as planFn, type KillSessionAction, type KillTreeAction, type Plan, type PlanContext, type Refusal } from '../core/plan.js';
import type { AdapterTree, Policy, ProjectInventory } from '../core/types.js';
import { AuditLogError, auditRecord, currentUser, type AuditLog } from './audit-log.js';
import {
  killSession,
  killTree,
  sameTree,
  type KillSessionResult,
  type KillSkipCode,
  type KillTreeDeps,
  type KillTreeResult,
  type RecheckResult,
  type SessionRecheckResult,
} from './kill-tree.js';
import type { ProcessPort } from '../sources/process-port.js';
import { selfPlanContext } from './self.js';
import { removePidFile, removePidFileOfReapedTree, type PidFileResult, type RemovePidFileDeps } from './remove-pid-file.js';
import type { ActionResult, Actor, ExecutionReport, RefusalResult } from './results.js';

export type { ActionResult, Actor, ExecutionReport, RefusalResult } from './results.js';
export { summarise } from './results.js';

/** What executePlan needs of a project session (ProjectSession satisfies it). */
export interface CollectingSession {
  /** `purpose: 'recheck'`: the re-verification right before a kill (reads what can matter, not the host). */
  collect(nowEpochSeconds?: number, opts?: { purpose?: 'cycle' | 'recheck'; focus?: readonly number[] }): ProjectInventory;
  readonly options: { policy: Policy };
  /** The process port the session reads: re-checks before a signal or an unlink read the same one. */
  readonly processes: ProcessPort;
}

export interface ExecuteOptions {
  session: CollectingSession;
  actor: Actor;
  audit: AuditLog;
  killWaitMs: number;
  signal?: AbortSignal;
  /** Remove a reaped tree's own pid file after an ok kill. */
  gc: boolean;
  /** For re-planning at re-verification (protections, uids, adoption race). Default: selfPlanContext(false). */
  planContext?: PlanContext;
  /** Test seams, passed to killTree / killSession (the process port is the session's). */
  killDeps?: Partial<Omit<KillTreeDeps, 'recheck' | 'killWaitMs' | 'signal' | 'processes'>>;
}

/**
 * Re-collect and find the planned tree (same top identity), then re-plan it as an explicit
 * request so every rule the planner applies (protected pids, other uids, adoption race, not
 * reapable) holds again now; the policy graces are re-checked for policy selections.
 */
export function recheckTree(session: CollectingSession, action: KillTreeAction, ctx: PlanContext, seen?: (inv: ProjectInventory) => void): RecheckResult {
  const focus = [action.tree.topPid, ...action.tree.processes.map((p) => p.pid)];
  const inv = session.collect(undefined, { purpose: 'recheck', focus });
  seen?.(inv);
  const down = Object.entries(inv.sources).filter(([name, h]) => !h.ok && (name === 'store' || name === 'processes'));
  if (down.length > 0) {
    return { refused: `re-verification: ${down.map(([, h]) => h.error ?? 'unreadable').join('; ')}: nothing signalled`, code: 'source_down' };
  }
  const fresh = inv.adapters.find((t) => t.verdict !== 'in-vm' && sameTree(action.tree, t));
  if (!fresh) {
    return { refused: `tree ${action.tree.topPid} (start ticks ${action.tree.top?.startTicks ?? '?'}) is no longer in the inventory`, code: 'identity_changed' };
  }
  const policy = session.options.policy;
  const again = planFn(inv, policy, { allLeaked: false, orphans: false, sessions: false, jobs: [], pids: [fresh.topPid], force: action.forced, gc: false }, ctx);
  if (!again.actions.some((a) => a.kind === 'kill-tree' && a.tree.topPid === fresh.topPid)) {
    const r = again.refusals[0];
    const code: KillSkipCode = !r ? 'identity_changed' : r.code === 'not_reapable' ? 'verdict_changed' : r.code;
    return { refused: `re-verification: ${r?.reason ?? 'no longer planned'}`, code };
  }
  if (action.selectedBy === 'all-leaked') {
    const since = fresh.lastTerminalEpoch;
    if (since === null || inv.now - since < policy.terminalGraceSeconds) {
      return { refused: `re-verification: tree ${fresh.topPid} is within the terminal grace again (${fresh.reason})`, code: 'grace' };
    }
  }
  if (action.selectedBy === 'orphans' && fresh.ageSeconds < policy.spawnGraceSeconds) {
    return { refused: `re-verification: tree ${fresh.topPid} is younger than the spawn grace`, code: 'grace' };
  }
  return fresh;
}

/**
 * Re-collect and re-plan the sessions: the same session (CLI pid, start ticks, id) in the same
 * tree must still be planned to stop now — still leaked, past the grace, its tree still one that
 * lives on (not reaped whole, not foreign), no protection or adoption race in the way.
 */
export function recheckSession(session: CollectingSession, action: KillSessionAction, ctx: PlanContext): SessionRecheckResult {
  const inv = session.collect(undefined, { purpose: 'recheck' });
  const down = Object.entries(inv.sources).filter(([name, h]) => !h.ok && (name === 'store' || name === 'processes'));
  if (down.length > 0) {
    return { refused: `re-verification: ${down.map(([, h]) => h.error ?? 'unreadable').join('; ')}: nothing signalled`, code: 'source_down' };
  }
  const tree = inv.adapters.find((t) => t.verdict !== 'in-vm' && sameTree(action.tree, t));
  if (!tree) return { refused: `tree ${action.tree.topPid} of session ${action.session.sessionId} is no longer in the inventory`, code: 'identity_changed' };
  const planned = action.session;
  const fresh = tree.sessions.find((x) => x.pid === planned.pid && x.startTicks === planned.startTicks);
  if (!fresh || fresh.sessionId !== planned.sessionId) {
    return { refused: `session ${planned.sessionId}: CLI ${planned.pid} (start ticks ${planned.startTicks}) is no longer in tree ${tree.topPid}`, code: 'identity_changed' };
  }
  const again = planFn(inv, session.options.policy, { allLeaked: false, orphans: false, sessions: true, jobs: [], pids: [], force: false, gc: false }, ctx);
  const still = again.actions.some((a) => a.kind === 'kill-session' && a.session.pid === fresh.pid && a.session.startTicks === fresh.startTicks);
  if (!still) {
    if (fresh.verdict !== 'leaked') return { refused: `re-verification: session ${fresh.sessionId} is now ${fresh.verdict}: ${fresh.reason}`, code: 'verdict_changed' };
    const r = again.refusals.find((x) => x.session?.pid === fresh.pid && x.session.startTicks === fresh.startTicks);
    return { refused: `re-verification: ${r?.reason ?? `session ${fresh.sessionId} is no longer planned (tree ${tree.topPid} is ${tree.verdict})`}`, code: r?.code ?? 'verdict_changed' };
  }
  return { tree, session: fresh };
}

export async function executePlan(p: Plan, opts: ExecuteOptions): Promise<ExecutionReport> {
  const report: ExecutionReport = { project: p.project, results: [], auditError: null, notCarriedOut: 0 };
  const user = currentUser();
  const ctx = opts.planContext ?? selfPlanContext(false);

  // No action without an audit trail.
  try {
    opts.audit.probe();
  } catch (err) {
    report.auditError = err instanceof AuditLogError ? err.message : String(err);
    report.notCarriedOut = p.actions.length;
    return report;
  }
  const audit = (r: ActionResult): boolean => {
    try {
      opts.audit.append(auditRecord(r, { actor: opts.actor, user }));
      return true;
    } catch (err) {
      report.auditError = err instanceof AuditLogError ? err.message : String(err);
      return false;
    }
  };

  // Explicit requests that were refused are audited (the user asked by name).
  for (const r of p.refusals) {
    if (!r.explicit) continue;
    const res: RefusalResult = {
      kind: 'refusal',
      project: r.project,
      target: r.target,
      code: r.code,
      reason: r.reason,
      explicit: true,
      forced: false,
      ...(r.tree ? { tree: r.tree } : {}),
    };
    report.results.push(res);
    if (!audit(res)) {
      report.notCarriedOut = p.actions.length;
      return report;
    }
  }

  // The unlink re-check reads the session's processes and applies the configured tolerance, as the classifier did.
  const pidFileDeps: RemovePidFileDeps = { processes: opts.session.processes, toleranceSeconds: opts.session.options.policy.clockToleranceSeconds };
  const kills = p.actions.filter((a) => a.kind === 'kill-tree');
  const sessionKills = p.actions.filter((a) => a.kind === 'kill-session');
  const files = p.actions.filter((a) => a.kind === 'remove-pid-file');
  const removedByKill = new Set<string>();
  let index = 0;
  for (const action of kills) {
    index += 1;
    const seen: { pidsDir: string | null } = { pidsDir: null };
    const result: KillTreeResult & { pidFile?: PidFileResult } = await killTree(action, {
      // Never signalled, not even through a group: the watchdog and its ancestors.
      protectedPids: [ctx.selfPid, ...ctx.selfAncestors],
      ...opts.killDeps,
      processes: opts.session.processes,
      recheck: () => recheckTree(opts.session, action, ctx, (inv) => (seen.pidsDir = inv.pidsDir)),
      killWaitMs: opts.killWaitMs,
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    // The tree's own pid file, once its top is gone or a zombie (stepwise's teardown would have removed it).
    if (opts.gc && result.outcome === 'ok' && action.tree.pidFile) {
      // The pids folder the fresh inventory used: removePidFile checks the file is directly inside it.
      const pf = seen.pidsDir !== null ? removePidFileOfReapedTree(action.tree, seen.pidsDir, { ...pidFileDeps, project: p.project }) : null;
      if (pf) {
        result.pidFile = pf;
        removedByKill.add(pf.path);
      }
    }
    report.results.push(result);
    if (!audit(result)) {
      report.notCarriedOut = kills.length - index + sessionKills.length + files.length;
      return report;
    }
  }
  index = 0;
  for (const action of sessionKills) {
    index += 1;
    const result = await killSession(action, {
      protectedPids: [ctx.selfPid, ...ctx.selfAncestors],
      ...opts.killDeps,
      processes: opts.session.processes,
      recheck: () => recheckSession(opts.session, action, ctx),
      killWaitMs: opts.killWaitMs,
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    report.results.push(result);
    if (!audit(result)) {
      report.notCarriedOut = sessionKills.length - index + files.length;
      return report;
    }
  }
  index = 0;
  for (const action of files) {
    index += 1;
    if (removedByKill.has(action.file.path)) continue; // handled (and audited) with its tree
    if (opts.signal?.aborted) {
      // Asked to stop: what is left is not started.
      report.notCarriedOut = files.length - index + 1;
      break;
    }
    const result = removePidFile(action, pidFileDeps, 'gc');
    report.results.push(result);
    if (!audit(result)) {
      report.notCarriedOut = files.length - index;
      return report;
    }
  }
  return report;
}
