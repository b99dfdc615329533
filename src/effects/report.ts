// JSON projections of plans and execution results: the `reap`/`gc --json` document's `plan`
// and `results`, and the HTTP API's POST /api/reap body. Plain data in, plain data out; no
// pid, path or reason is dropped (the full AdapterTree is, in favour of what identifies it).

import { actionBytes, type Plan, type PlannedAction, type Refusal } from '../core/plan.js';
import type { ActionResult } from './results.js';

/**
 * { project, actions: [kill-tree: {kind, topPid, startTicks, verdict, reason, selectedBy, forced,
 *   pids, jobs: [{id, status}], rssBytes, swapBytes, pidFile} | remove-pid-file: {kind, path, pid,
 *   verdict, reason}], refusals: [{target, code, reason, explicit, topPid}], wouldFreeBytes }
 */
export function planDocument(p: Plan) {
  return {
    project: p.project,
    actions: p.actions.map(actionDocument),
    refusals: p.refusals.map(refusalDocument),
    wouldFreeBytes: p.actions.reduce((sum, a) => sum + actionBytes(a), 0),
  };
}

export function resultsDocument(results: readonly ActionResult[]) {
  return results.map(resultDocument);
}

export function actionDocument(a: PlannedAction) {
  if (a.kind === 'kill-tree') {
    return {
      kind: a.kind,
      topPid: a.tree.topPid,
      startTicks: a.tree.top?.startTicks ?? null,
      verdict: a.verdict,
      reason: a.reason,
      selectedBy: a.selectedBy,
      forced: a.forced,
      pids: a.tree.processes.map((p) => p.pid),
      jobs: a.tree.jobs.map((j) => ({ id: j.id, status: j.status })),
      rssBytes: a.tree.rssBytes,
      swapBytes: a.tree.swapBytes,
      pidFile: a.tree.pidFile,
    };
  }
  if (a.kind === 'kill-session') {
    return {
      kind: a.kind,
      sessionId: a.session.sessionId,
      pid: a.session.pid,
      startTicks: a.session.startTicks,
      topPid: a.tree.topPid,
      verdict: a.session.verdict,
      reason: a.reason,
      selectedBy: a.selectedBy,
      pids: a.session.processes.map((p) => p.pid),
      jobs: a.session.jobs.map((j) => ({ id: j.id, status: j.status })),
      rssBytes: a.session.rssBytes,
      swapBytes: a.session.swapBytes,
    };
  }
  return { kind: a.kind, path: a.file.path, pid: a.file.pid, verdict: a.file.verdict, reason: a.reason };
}

export function refusalDocument(r: Refusal) {
  return { target: r.target, code: r.code, reason: r.reason, explicit: r.explicit, topPid: r.tree?.topPid ?? null };
}

export function resultDocument(r: ActionResult) {
  if (r.kind === 'kill-tree') {
    return {
      kind: r.kind,
      topPid: r.topPid,
      startTicks: r.startTicks,
      verdict: r.verdict,
      freshVerdict: r.freshVerdict,
      selectedBy: r.selectedBy,
      forced: r.forced,
      outcome: r.outcome,
      code: r.code ?? null,
      detail: r.detail,
      jobs: r.jobs,
      bytesFreed: r.bytesFreed,
      durationMs: r.durationMs,
      groupSignals: r.groupSignals,
      processes: r.processes.map((p) => ({ ...p, signals: p.signals.map((s) => `${s.signal}/${s.via}`) })),
      pidFile: r.pidFile ? pidFileDocument(r.pidFile) : null,
    };
  }
  if (r.kind === 'kill-session') {
    return {
      kind: r.kind,
      sessionId: r.sessionId,
      pid: r.pid,
      startTicks: r.startTicks,
      topPid: r.topPid,
      verdict: r.verdict,
      freshVerdict: r.freshVerdict,
      selectedBy: r.selectedBy,
      outcome: r.outcome,
      code: r.code ?? null,
      detail: r.detail,
      jobs: r.jobs,
      bytesFreed: r.bytesFreed,
      durationMs: r.durationMs,
      processes: r.processes.map((p) => ({ ...p, signals: p.signals.map((s) => `${s.signal}/${s.via}`) })),
    };
  }
  if (r.kind === 'remove-pid-file') return pidFileDocument(r);
  return { kind: r.kind, target: r.target, code: r.code, reason: r.reason, explicit: r.explicit, topPid: r.tree?.topPid ?? null };
}

export function pidFileDocument(f: Extract<ActionResult, { kind: 'remove-pid-file' }>) {
  return { kind: f.kind, path: f.path, pid: f.pid, verdict: f.verdict, trigger: f.trigger, outcome: f.outcome, detail: f.detail };
}

