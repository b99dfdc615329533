// Rows of the job store → RunRow: parsing a step run's executor_state (whatever the engine
// wrote), and the rules that decide whether a run names a process the watchdog cares about.

import type { RunRow } from '../core/types.js';
import { OPEN_RUN_STATUSES } from '../core/vocabulary.js';

export interface RawRun {
  rid?: number;
  id: unknown;
  job_id: unknown;
  step_name: unknown;
  attempt: unknown;
  status: unknown;
  started_at: unknown;
  completed_at: unknown;
  es_ok: number | null;
  es_pid: unknown;
  es_pgid: unknown;
  es_agent: unknown;
  es_iagent: unknown;
  es_invm: unknown;
  es_session: unknown;
  col_pid: unknown;
}

export interface Parsed {
  id: string;
  open: boolean;
  /** null when executor_state is not valid JSON. */
  run: RunRow | null;
  agentStep: boolean;
}

export interface Interest {
  pids: ReadonlySet<number>;
  starts: ReadonlyMap<number, number> | undefined;
  toleranceSeconds: number;
}

/** ISO-8601 → epoch seconds; a timestamp without offset is UTC (stepwise writes +00:00). */
export function isoEpochSeconds(iso: string): number {
  const hasZone = /(?:[zZ]|[+-]\d\d:?\d\d)$/.test(iso);
  return Date.parse(hasZone ? iso : `${iso}Z`) / 1000;
}

/** Does this finished run name the live process a pid of interest stands for? */
/** A finished run whose pid was written after it finished (see RunRow.pidColumn). */
export function writtenAfterFinish(run: RunRow): boolean {
  return run.completedAt !== null && run.pidColumn !== null && run.pidColumn === run.pid;
}

/**
 * The pid of interest a run names: its adapter's pid, else its recorded group id (a live group
 * whose leader died: on Linux a pid is not reused while it is a live group id). null if neither.
 */
export function interestPid(run: RunRow, interest: Interest): number | null {
  if (run.pid !== null && interest.pids.has(run.pid)) return run.pid;
  if (run.pgid !== null && interest.pids.has(run.pgid)) return run.pgid;
  return null;
}

export function namesLiveProcess(run: RunRow, interest: Interest): boolean {
  const pid = interestPid(run, interest);
  if (pid === null) return false;
  const start = interest.starts?.get(pid);
  // A cancelled job's step that retried records its new adapter after the run ended: the
  // process starting after completion is expected there (the classifier still asks for a pid file).
  if (start === undefined || run.completedAt === null || writtenAfterFinish(run)) return true;
  const done = isoEpochSeconds(run.completedAt);
  return !(done < start - interest.toleranceSeconds); // unparseable → keep (NaN)
}

export const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);
export const posInt = (v: unknown): number | null =>
  typeof v === 'number' && Number.isSafeInteger(v) && v > 0 ? v : typeof v === 'bigint' && v > 0n && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : null;

/** stepwise records 0 when getpgid failed; only a real group id (> 1) means anything. */
export const groupId = (v: unknown): number | null => {
  const g = posInt(v);
  return g !== null && g > 1 ? g : null;
};

export function parseRun(r: RawRun): Parsed {
  const id = String(r.id);
  const status = String(r.status ?? '');
  const open = OPEN_RUN_STATUSES.has(status);
  // es_ok: 1 valid, 0 invalid, null when executor_state is NULL (a run not started yet).
  if (r.es_ok === 0) return { id, open, run: null, agentStep: false };
  const agent = str(r.es_agent) ?? str(r.es_iagent);
  const run: RunRow = {
    id,
    jobId: String(r.job_id ?? ''),
    stepName: String(r.step_name ?? ''),
    attempt: typeof r.attempt === 'number' ? r.attempt : null,
    status,
    startedAt: str(r.started_at),
    completedAt: str(r.completed_at),
    pid: posInt(r.es_pid) ?? posInt(r.col_pid),
    pgid: groupId(r.es_pgid),
    sessionId: str(r.es_session),
    pidColumn: posInt(r.col_pid),
    agent,
    inVm: r.es_invm === 'true',
    agentStep: false,
  };
  // Script steps record a pid too, but are not adapters: an agent step names its agent or session.
  const agentStep = agent !== null || (r.es_session !== null && r.es_session !== undefined);
  run.agentStep = agentStep;
  return { id, open, run, agentStep };
}

