// What carrying out a plan produced: one result per action, and the one summary of them that the
// CLI's totals, the daemon's metrics and logs and the HTTP API all read. Types only and a pure
// fold; the executor (execute.ts) and the audit log both import from here.

import type { Refusal } from '../core/plan.js';
import type { KillSessionResult, KillTreeResult } from './kill-tree.js';
import type { PidFileResult } from './remove-pid-file.js';

export type Actor = 'cli' | 'daemon' | 'api';

/** A refusal of the plan that is reported (and audited) with the results: those of explicit requests. */
export interface RefusalResult extends Refusal {
  forced: boolean;
}

export type ActionResult = (KillTreeResult & { pidFile?: PidFileResult }) | KillSessionResult | PidFileResult | RefusalResult;

export interface ExecutionReport {
  project: string;
  results: ActionResult[];
  /** Set when the audit log could not be written: nothing (more) was carried out. */
  auditError: string | null;
  /** Planned actions not carried out because the audit log failed. */
  notCarriedOut: number;
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
  /** Session kills: the session and its CLI pid (topPid is the adapter it lived in). */
  sessionId?: string;
  pid?: number;
}

export interface ExecutionSummary {
  /** One per kill: feeds reaped_total{verdict,result} and reaped_bytes_total. */
  reaped: ReapSummaryEntry[];
  /** One per pid file handled: removed ones feed pidfiles_removed_total. */
  pidFilesRemoved: { path: string; result: 'removed' | 'already-gone' | 'skipped' | 'failed'; reason: string }[];
  /** refusals_total{code}: explicit refusals and kills skipped at re-verification. */
  refusals: Record<string, number>;
  /** ok/failed/skipped count trees; sessions* count session kills. */
  counts: {
    ok: number;
    failed: number;
    skipped: number;
    sessionsOk: number;
    sessionsFailed: number;
    sessionsSkipped: number;
    pidFilesRemoved: number;
    pidFilesFailed: number;
    refused: number;
  };
  bytesFreed: number;
  /** True when some action failed (a kill or an unlink): CLI exit code 1. */
  anyFailed: boolean;
  /** Every result, in the order carried out (the API's `results`). */
  results: ActionResult[];
  /** Set when the audit log could not be written: nothing (more) was carried out. */
  auditError: string | null;
}

/** Totals of what was carried out: one shape for the CLI's totals, the daemon's metrics and the API. */
export function summarise(results: readonly ActionResult[], auditError: string | null = null): ExecutionSummary {
  const out: ExecutionSummary = {
    results: [...results],
    auditError,
    reaped: [],
    pidFilesRemoved: [],
    refusals: {},
    counts: { ok: 0, failed: 0, skipped: 0, sessionsOk: 0, sessionsFailed: 0, sessionsSkipped: 0, pidFilesRemoved: 0, pidFilesFailed: 0, refused: 0 },
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
    if (r.kind === 'kill-tree' || r.kind === 'kill-session') {
      out.reaped.push({
        verdict: r.verdict,
        result: r.outcome,
        bytes: r.bytesFreed,
        topPid: r.topPid,
        reason: r.reason,
        detail: r.detail,
        ...(r.code ? { code: r.code } : {}),
        ...(r.kind === 'kill-session' ? { sessionId: r.sessionId, pid: r.pid } : {}),
      });
      if (r.kind === 'kill-tree') out.counts[r.outcome] += 1;
      else out.counts[r.outcome === 'ok' ? 'sessionsOk' : r.outcome === 'failed' ? 'sessionsFailed' : 'sessionsSkipped'] += 1;
      out.bytesFreed += r.bytesFreed;
      if (r.outcome === 'failed') out.anyFailed = true;
      if (r.outcome === 'skipped') out.refusals[r.code ?? 'identity_changed'] = (out.refusals[r.code ?? 'identity_changed'] ?? 0) + 1;
      if (r.kind === 'kill-tree' && r.pidFile) pidFile(r.pidFile);
    } else if (r.kind === 'remove-pid-file') {
      pidFile(r);
    } else {
      out.counts.refused += 1;
      out.refusals[r.code] = (out.refusals[r.code] ?? 0) + 1;
    }
  }
  return out;
}
