// `reap`: plan, and with --yes carry out, the reaping of leaked and orphaned adapter trees.
//
//   reap [--project DIR]… [--all-leaked] [--orphans] [--sessions] [--job ID]… [--pid PID]… [--force] [--yes] [--json]
//
// --sessions stops the CLI of every leaked session (its jobs all terminal, past the terminal
// grace) inside an adapter that lives on for other jobs: that process and its descendants, by
// pid, never the adapter, never another session, never by group.
//
// Without --yes nothing changes: the plan is printed (each action with its reason and the
// memory it would free, each refusal with its reason) and nothing is audited. With --yes every
// kill is re-verified against a fresh read right before its signals, audited (JSONL, fsync'd)
// and reported per tree, with the total memory freed. A reaped tree's own pid file is removed
// once its top is gone (what stepwise's teardown would have done); other stale pid files are
// `gc`'s business.
//
// Exit codes (README):
//   0  everything planned was carried out, or there was nothing to do (dry run: nothing refused);
//      a tree selected by policy (--all-leaked/--orphans) that changed before it was reached is
//      skipped and reported, not a failure; trees held by a grace are not refusals
//   1  some action failed (a process still alive after SIGKILL, EPERM, an unlink error)
//   2  usage: no selection, bad flag or value, no project
//   3  refused because a source could not be read (store, process table; for gc the pid files),
//      at planning or at re-verification — or because the audit log is unwritable (no action
//      without an audit trail): nothing was done for that project
//   4  an explicit request (--job/--pid) was refused (job not terminal, not reapable, foreign,
//      not found, or changed by the time it was re-verified)
// When several apply, the first in this order wins: 3, 1, 4.
//
// --json prints one document (schemaVersion 1), see reapDocument() below:
//   { schemaVersion, command, dryRun, auditLog, exitCode, error,
//     totals: { wouldFreeBytes, bytesFreed, treesReaped, treesFailed, treesSkipped, sessionsStopped, sessionsFailed,
//               sessionsSkipped, pidFilesRemoved, pidFilesFailed, refused },
//     projects: [{ root, sources: {name: {ok, error}},
//                  plan: { project, actions: [...], refusals: [...], wouldFreeBytes }   (effects/report.ts planDocument)
//                  invalidPidFiles: [{ path, reason }],
//                  results: null (dry run) | [...] (effects/report.ts resultsDocument), auditError }] }

import path from 'node:path';
import type { Config } from '../../config/schema.js';
import { mib } from '../../core/report.js';
import { WAIT_CODES } from '../../core/vocabulary.js';
import { actionBytes, plan as makePlan, type Plan, type PlannedAction, type Refusal, type Selection } from '../../core/plan.js';
import type { ProjectInventory } from '../../core/types.js';
import type { ProjectSession } from '../../session/project-session.js';
import { AuditLog, AuditLogError, defaultAuditLogPath } from '../../effects/audit-log.js';
import { executePlan, summarise, type ActionResult, type ExecutionReport } from '../../effects/execute.js';
import { planDocument, resultsDocument } from '../../effects/report.js';
import { runtimeFromConfig, type Runtime } from '../../session/runtime.js';
import { configFrom, openSessions } from '../context.js';
import { EXIT, UserError, type CliIO } from '../io.js';

export const REAP_SCHEMA_VERSION = 1;

type Command = 'reap' | 'gc';

interface ProjectRun {
  inv: ProjectInventory;
  plan: Plan;
  report: ExecutionReport | null;
}

export function selectionFrom(opts: Record<string, unknown>, command: Command): Selection {
  if (command === 'gc') return { allLeaked: false, orphans: false, sessions: false, jobs: [], pids: [], force: false, gc: true };
  return {
    allLeaked: opts.allLeaked === true,
    orphans: opts.orphans === true,
    sessions: opts.sessions === true,
    jobs: Array.isArray(opts.job) ? (opts.job as string[]) : [],
    pids: Array.isArray(opts.pid) ? (opts.pid as number[]) : [],
    force: opts.force === true,
    gc: false,
  };
}

export default async function reap(opts: Record<string, unknown>, io: CliIO): Promise<number> {
  const selection = selectionFrom(opts, 'reap');
  if (!selection.allLeaked && !selection.orphans && !selection.sessions && selection.jobs.length === 0 && selection.pids.length === 0) {
    throw new UserError('reap: nothing selected: give --all-leaked, --orphans, --sessions, --job ID or --pid PID (see `stepwise-watchdog status` for the trees)', EXIT.usage);
  }
  return runPlanCommand('reap', selection, opts, io);
}

/** Shared by `reap` and `gc`: collect → plan → (dry run | execute) → print → exit code. */
export async function runPlanCommand(command: Command, selection: Selection, opts: Record<string, unknown>, io: CliIO): Promise<number> {
  const config = configFrom(opts, io);
  const runtime = runtimeFromConfig(config);
  const { policy, planContext: ctx } = runtime;
  const yes = opts.yes === true;
  const json = opts.json === true;
  const auditPath = config.auditLog ?? defaultAuditLogPath(io.env);
  const audit = yes ? new AuditLog(auditPath) : null;

  if (audit) {
    // No action without an audit trail: an unwritable log refuses the whole run, up front.
    try {
      audit.probe();
    } catch (err) {
      const message = `${err instanceof AuditLogError ? err.message : String(err)}: nothing carried out`;
      if (json) io.stdout(`${JSON.stringify(emptyDocument(command, auditPath, message), null, 2)}\n`);
      io.stderr(`stepwise-watchdog: ${message}\n`);
      return EXIT.sourceDown;
    }
  }

  const sessions = openSessions(config, runtime, io);
  const runs: ProjectRun[] = [];
  try {
    for (const session of sessions) {
      const inv = session.collect();
      const p = makePlan(inv, policy, selection, ctx);
      let report: ExecutionReport | null = null;
      if (audit) report = await execute(p, session, audit, config, runtime, io);
      runs.push({ inv, plan: p, report });
    }
  } finally {
    for (const s of sessions) s.close();
  }

  const code = exitCode(runs);
  if (json) io.stdout(`${JSON.stringify(reapDocument(command, runs, { dryRun: !yes, auditLog: yes ? audit!.path : null, exitCode: code }), null, 2)}\n`);
  else io.stdout(render(command, runs, !yes));
  for (const line of problemLines(runs)) io.stderr(`stepwise-watchdog: ${line}\n`);
  return code;
}

function execute(p: Plan, session: ProjectSession, audit: AuditLog, config: Config, runtime: Runtime, io: CliIO): Promise<ExecutionReport> {
  return executePlan(p, {
    session,
    actor: 'cli',
    audit,
    killWaitMs: Math.round(config.killWait * 1000),
    signal: io.stopSignal,
    // A reaped tree's own pid file goes with it; unrelated stale files are left to `gc`.
    gc: true,
    planContext: runtime.planContext,
  });
}

// ── exit code ─────────────────────────────────────────────────────────────────────────────────

function exitCode(runs: ProjectRun[]): number {
  let sourceDown = false;
  let failed = false;
  let refused = false;
  // With several projects, "job X / pid P not found" in one is no refusal when another has it.
  const found = new Set<string>();
  for (const { plan: p } of runs) {
    for (const a of p.actions) {
      if (a.kind !== 'kill-tree') continue;
      found.add(`pid ${a.tree.topPid}`);
      for (const j of a.tree.jobs) found.add(`job ${j.id}`);
    }
  }
  for (const { plan: p, report } of runs) {
    if (p.refusals.some((r) => r.code === 'source_down')) sourceDown = true;
    if (p.refusals.some((r) => r.explicit && !(r.code === 'not_found' && runs.length > 1 && found.has(r.target)))) refused = true;
    if (!report) continue;
    if (report.auditError) {
      if (report.results.some((r) => r.kind !== 'refusal')) failed = true;
      else sourceDown = true;
    }
    const s = summarise(report.results);
    if (s.anyFailed) failed = true;
    for (const r of report.results) {
      if ((r.kind !== 'kill-tree' && r.kind !== 'kill-session') || r.outcome !== 'skipped') continue;
      if (r.code === 'source_down') sourceDown = true;
      else if (r.selectedBy === 'job' || r.selectedBy === 'pid') refused = true;
    }
  }
  if (sourceDown) return EXIT.sourceDown;
  if (failed) return EXIT.failed;
  if (refused) return EXIT.refused;
  return EXIT.ok;
}

/** One clear line per problem, on stderr: sources down, audit failures. */
function problemLines(runs: ProjectRun[]): string[] {
  const out: string[] = [];
  for (const { inv, plan: p, report } of runs) {
    for (const r of p.refusals) if (r.code === 'source_down') out.push(`${inv.root}: ${r.reason}`);
    if (report?.auditError) out.push(`${inv.root}: ${report.auditError}: ${report.notCarriedOut} action(s) not carried out`);
  }
  return out;
}

// ── text output ───────────────────────────────────────────────────────────────────────────────

function describeAction(a: PlannedAction): string {
  if (a.kind === 'kill-tree') {
    const pidFile = a.tree.pidFile ? `, pid file ${path.basename(a.tree.pidFile)}` : '';
    const forced = a.forced ? ' FORCED' : '';
    return `tree ${a.tree.topPid} (${a.verdict}${forced}, ${a.tree.processes.length} process(es), ${mib(actionBytes(a))} MiB${pidFile}): ${a.reason}`;
  }
  if (a.kind === 'kill-session') {
    return `session ${a.session.sessionId} (CLI pid ${a.session.pid} in tree ${a.tree.topPid}, ${a.session.processes.length} process(es), ${mib(actionBytes(a))} MiB): ${a.session.reason}`;
  }
  return `pid file ${a.file.name} (${a.file.verdict}): ${a.file.reason}`;
}

function describeRefusal(r: Refusal): string {
  return `${r.target} (${r.code}): ${r.reason}`;
}

function describeResult(r: ActionResult): string {
  if (r.kind === 'kill-tree') {
    const pf = r.pidFile ? `; pid file ${path.basename(r.pidFile.path)} ${r.pidFile.outcome}${r.pidFile.outcome === 'removed' || r.pidFile.outcome === 'already-gone' ? '' : ` (${r.pidFile.detail})`}` : '';
    if (r.outcome === 'ok') return `reaped tree ${r.topPid} (${r.verdict}): ${r.detail}, ${mib(r.bytesFreed)} MiB freed${pf}`;
    if (r.outcome === 'failed') return `FAILED tree ${r.topPid} (${r.verdict}): ${r.detail}; ${mib(r.bytesFreed)} MiB freed${pf}`;
    return `skipped tree ${r.topPid} (${r.code ?? 'skipped'}): ${r.detail}`;
  }
  if (r.kind === 'kill-session') {
    const what = `session ${r.sessionId} (CLI pid ${r.pid} in tree ${r.topPid})`;
    if (r.outcome === 'ok') return `stopped ${what}: ${r.detail}, ${mib(r.bytesFreed)} MiB freed`;
    if (r.outcome === 'failed') return `FAILED ${what}: ${r.detail}; ${mib(r.bytesFreed)} MiB freed`;
    return `skipped ${what} (${r.code ?? 'skipped'}): ${r.detail}`;
  }
  if (r.kind === 'remove-pid-file') {
    const name = path.basename(r.path);
    if (r.outcome === 'removed') return `removed pid file ${name}: ${r.detail}`;
    if (r.outcome === 'already-gone') return `pid file ${name} already gone (removed by someone else)`;
    if (r.outcome === 'failed') return `FAILED to remove pid file ${name}: ${r.detail}`;
    return `kept pid file ${name}: ${r.detail}`;
  }
  return `refused ${r.target} (${r.code}): ${r.reason}`;
}

function render(command: Command, runs: ProjectRun[], dryRun: boolean): string {
  const out: string[] = [];
  let wouldFree = 0;
  for (const { inv, plan: p, report } of runs) {
    out.push(`project ${inv.root}`);
    const invalid = inv.pidFiles.filter((f) => f.verdict === 'invalid');
    if (dryRun || !report) {
      if (p.actions.length === 0) out.push(`  nothing to ${command === 'gc' ? 'remove' : 'reap'}`);
      for (const a of p.actions) {
        out.push(`  would ${a.kind === 'kill-tree' ? 'reap' : a.kind === 'kill-session' ? 'stop' : 'remove'} ${describeAction(a)}`);
        wouldFree += actionBytes(a);
      }
      for (const r of p.refusals) out.push(`  ${WAIT_CODES.has(r.code) ? 'held' : 'refused'} ${describeRefusal(r)}`);
    } else {
      if (p.actions.length === 0 && report.results.length === 0) out.push(`  nothing to ${command === 'gc' ? 'remove' : 'reap'}`);
      for (const r of report.results) out.push(`  ${describeResult(r)}`);
      // Refusals not in the results (policy ones: graces, protected trees) are still worth a line.
      for (const r of p.refusals) if (!r.explicit) out.push(`  ${WAIT_CODES.has(r.code) ? 'held' : 'refused'} ${describeRefusal(r)}`);
    }
    for (const f of invalid) out.push(`  invalid pid file ${f.name}: ${f.reason} (reported, never deleted)`);
  }
  if (dryRun) {
    const free = command === 'reap' ? ` (would free ${mib(wouldFree)} MiB)` : '';
    out.push(`dry run: nothing changed; add --yes to carry it out${free}`);
  } else {
    const s = summarise(runs.flatMap((r) => r.report?.results ?? []));
    if (command === 'reap') {
      const sessions = s.counts.sessionsOk + s.counts.sessionsFailed + s.counts.sessionsSkipped > 0 ? `, ${s.counts.sessionsOk} session(s) stopped (${s.counts.sessionsFailed} failed, ${s.counts.sessionsSkipped} skipped)` : '';
      out.push(`total: ${s.counts.ok} tree(s) reaped${sessions}, ${mib(s.bytesFreed)} MiB freed, ${s.counts.failed} failed, ${s.counts.skipped} skipped, ${s.counts.refused} refused`);
    } else {
      out.push(`total: ${s.counts.pidFilesRemoved} pid file(s) removed, ${s.counts.pidFilesFailed} failed`);
    }
  }
  return `${out.join('\n')}\n`;
}

// ── JSON document ─────────────────────────────────────────────────────────────────────────────

function emptyDocument(command: Command, auditLog: string, error: string) {
  return {
    schemaVersion: REAP_SCHEMA_VERSION,
    command,
    dryRun: false,
    auditLog,
    exitCode: EXIT.sourceDown,
    error,
    totals: {
      wouldFreeBytes: 0,
      bytesFreed: 0,
      treesReaped: 0,
      treesFailed: 0,
      treesSkipped: 0,
      sessionsStopped: 0,
      sessionsFailed: 0,
      sessionsSkipped: 0,
      pidFilesRemoved: 0,
      pidFilesFailed: 0,
      refused: 0,
    },
    projects: [],
  };
}

export function reapDocument(command: Command, runs: ProjectRun[], meta: { dryRun: boolean; auditLog: string | null; exitCode: number }) {
  const s = summarise(runs.flatMap((r) => r.report?.results ?? []));
  let wouldFree = 0;
  const projects = runs.map(({ inv, plan: p, report }) => {
    wouldFree += p.actions.reduce((sum, a) => sum + actionBytes(a), 0);
    return {
      root: inv.root,
      sources: Object.fromEntries(Object.entries(inv.sources).map(([name, h]) => [name, { ok: h.ok, error: h.error ?? null }])),
      plan: planDocument(p),
      invalidPidFiles: inv.pidFiles.filter((f) => f.verdict === 'invalid').map((f) => ({ path: f.path, reason: f.reason })),
      results: report ? resultsDocument(report.results) : null,
      auditError: report?.auditError ?? null,
    };
  });
  return {
    schemaVersion: REAP_SCHEMA_VERSION,
    command,
    dryRun: meta.dryRun,
    auditLog: meta.auditLog,
    exitCode: meta.exitCode,
    error: null as string | null,
    totals: {
      wouldFreeBytes: wouldFree,
      bytesFreed: s.bytesFreed,
      treesReaped: s.counts.ok,
      treesFailed: s.counts.failed,
      treesSkipped: s.counts.skipped,
      sessionsStopped: s.counts.sessionsOk,
      sessionsFailed: s.counts.sessionsFailed,
      sessionsSkipped: s.counts.sessionsSkipped,
      pidFilesRemoved: s.counts.pidFilesRemoved,
      pidFilesFailed: s.counts.pidFilesFailed,
      refused: s.counts.refused,
    },
    projects,
  };
}
