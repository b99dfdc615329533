// Evidence: which processes a project's runs, pid files and server name, read off the inventory's
// sources without judging them. classify.ts turns this into verdicts. Pure: no I/O, no clock.

import { judgePidFileFacts } from './pid-file-rule.js';
import { isDead, matchesMarker, pushTo, type ProcessIndex } from './process-tree.js';
import { parseIsoEpoch, startEpoch } from './time.js';
import type { ClockInfo, Evidence, PidFileEntry, PidFileStatus, ProcessInfo, RunRow } from './types.js';

/**
 * The pid a run's tree hangs from: its adapter's pid while a process or a live group carries it;
 * only then its recorded pgid (the top died and was reaped: the group lives on under that id).
 * Never both: one run names one tree.
 */
export function namedRoot(run: RunRow, index: ProcessIndex): number | null {
  const carried = (pid: number | null): pid is number => pid !== null && pid > 1 && (index.byPid.has(pid) || index.groups.has(pid));
  if (carried(run.pid)) return run.pid;
  if (run.pgid !== run.pid && carried(run.pgid)) return run.pgid;
  return null;
}

export interface RootCandidate {
  pid: number;
  /** Start ticks used to judge identity: the top's, or the earliest live group member's when the top is gone. */
  startTicks: number;
  topAlive: boolean;
  includeGroup: boolean;
}

/** Where a tree hangs: a live top, a zombie top with live group members, or live members of its group. */
export function rootAt(index: ProcessIndex, pid: number): RootCandidate | null {
  const top = index.byPid.get(pid);
  const members = index.groups.get(pid) ?? [];
  if (top && !isDead(top)) return { pid, startTicks: top.startTicks, topAlive: true, includeGroup: top.pgid === pid };
  if (members.length === 0) return null;
  // The leader is dead (a zombie, or gone) but its group lives on. A pid that is still a live
  // group id cannot have been reused, and every member started after the leader did.
  const startTicks = top ? top.startTicks : Math.min(...members.map((m) => m.startTicks));
  return { pid, startTicks, topAlive: false, includeGroup: true };
}

/**
 * null when the run is evidence for a process that started at `start`; else why it is not.
 *
 * A process that started after the run finished is normally a reused pid. One engine path
 * writes a pid after the run finished: a cancelled job's step retries (the cancel's "Transport
 * closed" counts as transient) and records its fresh adapter on the cancelled run — the
 * engine clears `step_runs.pid` when a run finishes, so a set `pid` column equal to the pid
 * says so. That is accepted only when it is corroborated by the project's pid file for the
 * same process (written by the engine after the handshake) and the process started after the run.
 */
export function judgeRunEvidence(run: RunRow, start: number, clock: ClockInfo, slack: number, pidFileNamesIt: boolean): string | null {
  const started = parseIsoEpoch(run.startedAt);
  if (started !== null && started < clock.bootTimeEpoch - slack) {
    return `run ${run.id} started before this boot: its pid ${run.pid} means nothing now`;
  }
  const completed = parseIsoEpoch(run.completedAt);
  if (completed !== null && start > completed + slack) {
    const retry = run.pidColumn !== null && run.pidColumn === run.pid && started !== null && start >= started - slack;
    if (retry && pidFileNamesIt) return null;
    if (retry) return `pid ${run.pid} was recorded on run ${run.id} after it finished, but no pid file confirms the process`;
    return `pid ${run.pid} started after run ${run.id} finished: reused pid`;
  }
  return null;
}

/** A pid file's verdict against the table read now (the staleness rule is core/pid-file-rule.ts). */
export function judgePidFile(f: PidFileEntry, index: ProcessIndex, clock: ClockInfo, slack: number): PidFileStatus {
  const base = { path: f.path, name: f.name, pid: f.pid, agent: f.agent, ino: f.ino, dev: f.dev };
  if (f.pid === null) return { ...base, verdict: 'invalid', reason: f.invalidReason ?? 'invalid', process: null };
  const p = index.byPid.get(f.pid);
  const j = judgePidFileFacts({
    pid: f.pid,
    mtimeEpoch: f.mtimeEpoch,
    process: p ? { state: p.state, startTicks: p.startTicks, what: p.argv.length ? p.argv.join(' ').slice(0, 60) : p.comm } : null,
    liveGroupMembers: (index.groups.get(f.pid) ?? []).length,
    clock,
    slack,
  });
  // The table was read: 'unknown' only comes from an unknown boot time, which leaves the file as it is.
  const verdict = j.verdict === 'unknown' ? 'live' : j.verdict;
  const live = verdict === 'live' && p && !isDead(p) ? { pid: p.pid, startTicks: p.startTicks } : null;
  return { ...base, verdict, reason: j.verdict === 'unknown' ? `${j.reason}: not judged (kept)` : j.reason, process: live };
}

/** What a cycle's evidence is indexed by: the process table, the clock and the project's names for pids. */
export interface EvidenceContext {
  index: ProcessIndex;
  clock: ClockInfo;
  /** Seconds of slack in start-time comparisons (clock error + tolerance). */
  slack: number;
  serverPid: number | null;
  /** Valid pid files by the pid they name. */
  filesByPid: Map<number, PidFileEntry[]>;
  /** Agent runs by the pid that names their tree (namedRoot). */
  runsByPid: Map<number, RunRow[]>;
}

/** Agent runs on the host (in-vm guest pids are never matched) by the pid that names their tree, and by session. */
export function indexRuns(runs: readonly RunRow[], index: ProcessIndex, withSessions: boolean): { runsByPid: Map<number, RunRow[]>; runsBySession: Map<string, RunRow[]> | null } {
  const runsByPid = new Map<number, RunRow[]>();
  const runsBySession = withSessions ? new Map<string, RunRow[]>() : null;
  for (const run of runs) {
    if (!run.agentStep || run.inVm) continue;
    if (run.sessionId !== null && runsBySession) pushTo(runsBySession, run.sessionId.toLowerCase(), run);
    const named = namedRoot(run, index);
    if (named !== null) pushTo(runsByPid, named, run);
  }
  return { runsByPid, runsBySession };
}

/** Valid pid files by pid. */
export function indexPidFiles(files: readonly PidFileEntry[]): Map<number, PidFileEntry[]> {
  const out = new Map<number, PidFileEntry[]>();
  for (const f of files) if (f.pid !== null) pushTo(out, f.pid, f);
  return out;
}

/** Every pid named by a run or a pid file, and the server's adapter-like children: oldest first. */
export function candidateRoots(ctx: EvidenceContext, markers: readonly string[]): RootCandidate[] {
  const rootPids = new Set<number>([...ctx.runsByPid.keys(), ...ctx.filesByPid.keys()]);
  if (ctx.serverPid !== null) {
    for (const child of ctx.index.children.get(ctx.serverPid) ?? []) {
      if (matchesMarker(child.argv, [...markers])) rootPids.add(child.pid);
    }
  }
  return [...rootPids]
    .map((pid) => rootAt(ctx.index, pid))
    .filter((r): r is RootCandidate => r !== null && r.pid > 1 && r.pid !== ctx.serverPid)
    .sort((a, b) => a.startTicks - b.startTicks || a.pid - b.pid);
}

/** What names one candidate root, and what was rejected (a reused pid, a run from before this boot). */
export interface RootEvidence {
  rootStart: number;
  evidence: Evidence[];
  rejected: string[];
  runIds: string[];
  jobIds: string[];
  agent: string | null;
  pidFile: string | null;
  /** A run whose retry spawned this tree after the run had ended (the cancel-then-retry leak). */
  retried: string | null;
  serverChild: boolean;
}

export function gatherEvidence(root: RootCandidate, ctx: EvidenceContext): RootEvidence {
  const rootStart = startEpoch(ctx.clock, root.startTicks);
  const out: RootEvidence = { rootStart, evidence: [], rejected: [], runIds: [], jobIds: [], agent: null, pidFile: null, retried: null, serverChild: false };
  let fileAgent: string | null = null;
  for (const f of ctx.filesByPid.get(root.pid) ?? []) {
    if (f.mtimeEpoch !== null && rootStart <= f.mtimeEpoch + ctx.slack) {
      out.pidFile = f.path;
      fileAgent = f.agent;
    }
  }
  const jobIds = new Set<string>();
  for (const run of ctx.runsByPid.get(root.pid) ?? []) {
    const why = judgeRunEvidence(run, rootStart, ctx.clock, ctx.slack, out.pidFile !== null);
    if (why !== null) {
      out.rejected.push(why);
      continue;
    }
    const finished = parseIsoEpoch(run.completedAt);
    if (finished !== null && rootStart > finished + ctx.slack) out.retried = run.id;
    out.evidence.push({ kind: 'run', runId: run.id, jobId: run.jobId });
    out.runIds.push(run.id);
    jobIds.add(run.jobId);
    out.agent ??= run.agent;
  }
  out.jobIds = [...jobIds];
  if (out.pidFile !== null) {
    out.evidence.push({ kind: 'pid-file', path: out.pidFile });
    out.agent ??= fileAgent;
  }
  const top = ctx.index.byPid.get(root.pid);
  out.serverChild = root.topAlive && ctx.serverPid !== null && top?.ppid === ctx.serverPid;
  if (out.serverChild && ctx.serverPid !== null) out.evidence.push({ kind: 'server-child', serverPid: ctx.serverPid });
  return out;
}

/** Parents outside the tree (pid 1, a subreaper, a foreign process), with their comm. */
export function externalParents(members: readonly ProcessInfo[], index: ProcessIndex): { pid: number; comm: string }[] {
  const inTree = new Set(members.map((m) => m.pid));
  const out = new Map<number, string>();
  for (const m of members) {
    if (inTree.has(m.ppid)) continue;
    const parent = index.byPid.get(m.ppid);
    out.set(m.ppid, parent?.comm || parent?.argv[0] || '');
  }
  return [...out].map(([pid, comm]) => ({ pid, comm }));
}
