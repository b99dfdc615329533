// Carry out a plan for one project: explicit refusals are audited, each kill is re-verified
// against a fresh collection right before it (killTree), a reaped tree's own pid file is removed
// when gc is on, then the planned stale pid files. Every result is audited (fsync'd) as soon as
// it is known; no action is started without a writable audit log.

import { plan as planFn, type Plan, type PlanContext, type RefusalCode, type KillTreeAction, type Refusal } from '../core/plan.js';
import type { AdapterTree, Policy, ProjectInventory } from '../core/types.js';
import { AuditLogError, auditRecord, currentUser, type AuditLog } from './audit-log.js';
import { killTree, sameTree, type KillSkipCode, type KillTreeDeps, type KillTreeResult, type RecheckResult } from './kill-tree.js';
import { selfPlanContext } from './self.js';
import { removePidFile, removePidFileOfReapedTree, type PidFileResult, type RemovePidFileDeps } from './remove-pid-file.js';

export type Actor = 'cli' | 'daemon' | 'api';

/** A refusal of the plan that is reported (and audited) with the results: those of explicit requests. */
export interface RefusalResult extends Refusal {
  forced: boolean;
}

export type ActionResult = (KillTreeResult & { pidFile?: PidFileResult }) | PidFileResult | RefusalResult;

/** What executePlan needs of a project session (ProjectSession satisfies it). */
export interface CollectingSession {
  collect(nowEpochSeconds?: number): ProjectInventory;
  readonly options: { policy: Policy };
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
  /** Test seams, passed to killTree / removePidFile. */
  killDeps?: Partial<Omit<KillTreeDeps, 'recheck' | 'killWaitMs' | 'signal'>>;
  pidFileDeps?: RemovePidFileDeps;
}

export interface ExecutionReport {
  project: string;
  results: ActionResult[];
  /** Set when the audit log could not be written: nothing (more) was carried out. */
  auditError: string | null;
  /** Planned actions not carried out because the audit log failed. */
  notCarriedOut: number;
}

/**
 * Re-collect and find the planned tree (same top identity), then re-plan it as an explicit
 * request so every rule the planner applies (protected pids, other uids, adoption race, not
 * reapable) holds again now; the policy graces are re-checked for policy selections.
 */
export function recheckTree(session: CollectingSession, action: KillTreeAction, ctx: PlanContext, seen?: (inv: ProjectInventory) => void): RecheckResult {
  const inv = session.collect();
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
  const again = planFn(inv, policy, { allLeaked: false, orphans: false, jobs: [], pids: [fresh.topPid], force: action.forced, gc: false }, ctx);
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

  const kills = p.actions.filter((a) => a.kind === 'kill-tree');
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
      recheck: () => recheckTree(opts.session, action, ctx, (inv) => (seen.pidsDir = inv.pidsDir)),
      killWaitMs: opts.killWaitMs,
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    // The tree's own pid file, once its top is gone or a zombie (stepwise's teardown would have removed it).
    if (opts.gc && result.outcome === 'ok' && action.tree.pidFile) {
      // The pids folder the fresh inventory used: removePidFile checks the file is directly inside it.
      const pf = seen.pidsDir !== null ? removePidFileOfReapedTree(action.tree, seen.pidsDir, { ...opts.pidFileDeps, project: p.project }) : null;
      if (pf) {
        result.pidFile = pf;
        removedByKill.add(pf.path);
      }
    }
    report.results.push(result);
    if (!audit(result)) {
      report.notCarriedOut = kills.length - index + files.length;
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
    const result = removePidFile(action, opts.pidFileDeps ?? {}, 'gc');
    report.results.push(result);
    if (!audit(result)) {
      report.notCarriedOut = files.length - index;
      return report;
    }
  }
  return report;
}

// ── summaries (CLI totals, daemon metrics, HTTP API) ──────────────────────────────────────────

export interface ReapSummaryEntry {
  verdict: string;
  result: 'ok' | 'failed' | 'skipped';
  bytes: number;
  topPid: number;
  reason: string;
  detail: string;
  /** Why skipped/failed (bounded: a metric label value). */
  code?: string;
}

export interface ExecutionSummaryData {
  /** One per kill: feeds reaped_total{verdict,result} and reaped_bytes_total. */
  reaped: ReapSummaryEntry[];
  /** One per pid file handled: removed ones feed pidfiles_removed_total. */
  pidFilesRemoved: { path: string; result: 'removed' | 'already-gone' | 'skipped' | 'failed'; reason: string }[];
  /** refusals_total{code}: explicit refusals and kills skipped at re-verification. */
  refusals: Record<string, number>;
  counts: { ok: number; failed: number; skipped: number; pidFilesRemoved: number; pidFilesFailed: number; refused: number };
  bytesFreed: number;
  /** True when some action failed (a kill or an unlink): CLI exit code 1. */
  anyFailed: boolean;
}

export function summarise(results: readonly ActionResult[]): ExecutionSummaryData {
  const out: ExecutionSummaryData = {
    reaped: [],
    pidFilesRemoved: [],
    refusals: {},
    counts: { ok: 0, failed: 0, skipped: 0, pidFilesRemoved: 0, pidFilesFailed: 0, refused: 0 },
    bytesFreed: 0,
    anyFailed: false,
  };
  const pidFile = (f: PidFileResult) => {
    out.pidFilesRemoved.push({ path: f.path, result: f.outcome, reason: f.outcome === 'removed' ? f.reason : f.detail });
    if (f.outcome === 'removed') out.counts.pidFilesRemoved += 1;
    if (f.outcome === 'failed') {
      out.counts.pidFilesFailed += 1;
      out.anyFailed = true;
    }
  };
  for (const r of results) {
    if (r.kind === 'kill-tree') {
      out.reaped.push({
        verdict: r.verdict,
        result: r.outcome,
        bytes: r.bytesFreed,
        topPid: r.topPid,
        reason: r.reason,
        detail: r.detail,
        ...(r.code ? { code: r.code } : {}),
      });
      out.counts[r.outcome] += 1;
      out.bytesFreed += r.bytesFreed;
      if (r.outcome === 'failed') out.anyFailed = true;
      if (r.outcome === 'skipped') out.refusals[r.code ?? 'identity_changed'] = (out.refusals[r.code ?? 'identity_changed'] ?? 0) + 1;
      if (r.pidFile) pidFile(r.pidFile);
    } else if (r.kind === 'remove-pid-file') {
      pidFile(r);
    } else {
      out.counts.refused += 1;
      out.refusals[r.code] = (out.refusals[r.code] ?? 0) + 1;
    }
  }
  return out;
}
