// The daemon's and the API's way to carry out plans: effects/execute.ts with the daemon's audit
// log, and the API's explicit reap under the same lock as cycles.

import type { Logger } from 'pino';
import { plan, type PlanContext, type Selection } from '../core/plan.js';
import type { Policy } from '../core/types.js';
import { AuditLog, defaultAuditLogPath } from '../effects/audit-log.js';
import { executePlan, summarise, type Actor } from '../effects/execute.js';
import type { ApiReapRequest } from '../http/app.js';
import { planDocument, resultsDocument } from '../effects/report.js';
import type { ProjectSession } from '../session/project-session.js';
import type { PlanExecutor, Watchdog } from './watchdog.js';

export function createExecutor(opts: { auditLog: string | null; killWaitSeconds: number; logger: Logger; planContext: PlanContext; gc: boolean }): PlanExecutor & { audit: AuditLog } {
  const audit = new AuditLog(opts.auditLog ?? defaultAuditLogPath());
  return {
    audit,
    async execute(p, session, { actor, signal }) {
      const report = await executePlan(p, {
        session,
        actor: actor as Actor,
        audit,
        killWaitMs: opts.killWaitSeconds * 1000,
        gc: opts.gc,
        planContext: opts.planContext,
        ...(signal ? { signal } : {}),
      });
      if (report.auditError) {
        // No action without an audit trail: nothing (more) was done; say so every time.
        opts.logger.error({ project: p.project, auditLog: audit.path, error: report.auditError, notCarriedOut: report.notCarriedOut }, 'audit log unwritable: not reaping');
      }
      return summarise(report.results, report.auditError);
    },
  };
}

/** POST /api/reap: the CLI's selection and refusals, carried out by the daemon (actor "api"). */
export async function explicitReap(
  req: ApiReapRequest,
  deps: { watchdog: Watchdog; sessions: ProjectSession[]; policy: Policy; planContext: PlanContext; executor: PlanExecutor; observeOnly: boolean },
): Promise<{ status: number; body: unknown }> {
  // --observe-only turns every effect off, the API's too (a dry run still answers).
  if (deps.observeOnly && !req.dryRun) return { status: 409, body: { error: 'this daemon runs --observe-only: it reaps nothing (send "dryRun": true for the plan)' } };
  let session: ProjectSession | undefined;
  if (req.project === null) {
    if (deps.sessions.length !== 1) {
      return { status: 400, body: { error: `project: required when watching several projects (${deps.sessions.map((s) => s.root).join(', ')})` } };
    }
    session = deps.sessions[0];
  } else {
    session = deps.sessions.find((s) => s.root === req.project);
    if (!session) return { status: 404, body: { error: `project: not watched by this daemon: ${req.project}` } };
  }
  const s = session!;
  const selection: Selection = { allLeaked: req.allLeaked, orphans: req.orphans, sessions: req.sessions, jobs: req.jobs, pids: req.pids, force: req.force, gc: false };
  return deps.watchdog.exclusive(async () => {
    const inv = s.collect();
    const p = plan(inv, deps.policy, selection, deps.planContext);
    if (req.dryRun) return { status: 200, body: { dryRun: true, plan: planDocument(p) } };
    const summary = await deps.executor.execute(p, s, { actor: 'api' });
    deps.watchdog.publish(s.root, summary);
    if (summary.auditError) return { status: 503, body: { error: `not carried out: ${summary.auditError}`, plan: planDocument(p) } };
    deps.watchdog.poke('api-reap');
    return { status: 200, body: { dryRun: false, plan: planDocument(p), results: resultsDocument(summary.results) } };
  });
}
