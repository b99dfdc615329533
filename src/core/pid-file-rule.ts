// The pid-file staleness rule, in one place: the classifier judges every file with it, and the
// unlink re-checks a file with it right before removing it (with the same configured tolerance).
//
// A pid file (`{"pid", "agent"}`, written by the engine after the ACP handshake) is stale when
// no live process has its pid and no live group carries it as group id (the leader died but its
// adapter lives on: the file still names that tree), or when the live process with its pid
// started after the file was written (the pid was reused). Unreadable facts are "unknown",
// never "dead": such a file is kept.

import { isDead } from './process-tree.js';
import { startEpoch } from './time.js';
import type { ClockInfo, ProcState } from './types.js';

export type PidFileJudgement =
  | { verdict: 'live' | 'stale-dead' | 'stale-reused'; reason: string }
  | { verdict: 'unknown'; reason: string };

export interface PidFileFacts {
  pid: number;
  /** The file's mtime (epoch seconds); null when unknown. */
  mtimeEpoch: number | null;
  /** The process with that pid now: null when there is none, 'unknown' when it could not be read. */
  process: { state: ProcState; startTicks: number; what: string } | null | 'unknown';
  /** How many live processes carry the pid as their group id; null when unknown. */
  liveGroupMembers: number | null;
  clock: ClockInfo;
  /** comparisonSlack(clock, configured clockTolerance). */
  slack: number;
}

export function judgePidFileFacts(f: PidFileFacts): PidFileJudgement {
  if (f.process === 'unknown') return { verdict: 'unknown', reason: `process ${f.pid} could not be read` };
  if (f.process === null || isDead(f.process)) {
    if (f.liveGroupMembers === null) return { verdict: 'unknown', reason: `process ${f.pid} is gone but its group could not be listed` };
    if (f.liveGroupMembers > 0) return { verdict: 'live', reason: `leader ${f.pid} is gone but ${f.liveGroupMembers} member(s) of its group live` };
    return { verdict: 'stale-dead', reason: f.process ? `process ${f.pid} is a zombie (its memory is freed)` : `no process ${f.pid}` };
  }
  if (!Number.isFinite(f.clock.bootTimeErrorSeconds)) return { verdict: 'unknown', reason: `boot time unknown: cannot tell whether ${f.pid} started after the file was written` };
  const start = startEpoch(f.clock, f.process.startTicks);
  if (f.mtimeEpoch === null || start > f.mtimeEpoch + f.slack) {
    const after = f.mtimeEpoch === null ? '' : `, started ${Math.round(start - f.mtimeEpoch)}s after the file was written`;
    return { verdict: 'stale-reused', reason: `pid ${f.pid} now belongs to \`${f.process.what}\`${after}` };
  }
  return { verdict: 'live', reason: `process ${f.pid} started before the file was written` };
}
