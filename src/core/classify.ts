// The pure classifier: plain data and `now` in, an inventory out. No I/O, no clock reads.
//
// Evidence that a process tree is this project's, strongest first:
//  1. a step run's executor_state.pid names its top, and the process is the same one
//     (it started no later than the run finished: a later start is a reused pid);
//  2. a pid file in this project's pids folder names it, and it started no later than the
//     file was written (the engine writes the file after the ACP handshake);
//  3. it is a child of this project's live server.
// Marker patterns only recognise adapter-like processes; a marker alone is never evidence.

import { collectTree, indexProcesses, isDead, matchesMarker, toTreeProcess, type ProcessIndex } from './process-tree.js';
import { judgePidFileFacts } from './pid-file-rule.js';
import { findSessions } from './sessions.js';
import { ago, comparisonSlack, parseIsoEpoch, startEpoch } from './time.js';
import {
  TERMINAL_JOB_STATUSES,
  type AdapterSession,
  type AdapterTree,
  type AdapterVerdict,
  type ClockInfo,
  type Evidence,
  type JobRef,
  type JobRow,
  type PidFileEntry,
  type PidFileStatus,
  type Policy,
  type ProcessInfo,
  type ProcessTable,
  type ProjectInventory,
  type RunRow,
  type ServerInfo,
  type SourceHealth,
  type StaleRunningRun,
  type StoreSnapshot,
} from './types.js';

/**
 * The pid a run's tree hangs from: its adapter's pid while a process or a live group carries it;
 * only then its recorded pgid (the top died and was reaped: the group lives on under that id).
 * Never both: one run names one tree.
 */
function namedRoot(run: RunRow, index: ProcessIndex): number | null {
  const carried = (pid: number | null): pid is number => pid !== null && pid > 1 && (index.byPid.has(pid) || index.groups.has(pid));
  if (carried(run.pid)) return run.pid;
  if (run.pgid !== run.pid && carried(run.pgid)) return run.pgid;
  return null;
}

function push<K, V>(map: Map<K, V[]>, key: K, value: V): void {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}

export interface ClassifyInput {
  root: string;
  pidsDir: string;
  dbPath: string;
  /** null when the process table could not be read. */
  processes: ProcessTable | null;
  server: ServerInfo;
  pidFiles: PidFileEntry[];
  /** null when the store could not be read. */
  store: StoreSnapshot | null;
  sources: Record<string, SourceHealth>;
  policy: Policy;
  /** Epoch seconds. */
  now: number;
}

const OPEN_RUN_STATUSES = new Set(['running', 'suspended', 'delegated']);
const NOT_TERMINAL_NOT_PAUSED = (j: JobRef) => !j.terminal && j.status !== 'paused';

export function isTerminalJobStatus(status: string): boolean {
  return TERMINAL_JOB_STATUSES.has(status);
}

function shortId(id: string): string {
  // "job-eb3d1747" reads fine in full; only trim very long ids.
  return id.length > 24 ? `${id.slice(0, 21)}…` : id;
}

function describeJob(j: JobRef, now: number): string {
  if (!j.terminal) return `job ${shortId(j.id)} is ${j.status}`;
  const when = j.terminalSinceEpoch === null ? '' : ` ${ago(now - j.terminalSinceEpoch)}`;
  const why = j.failReason ? ` (${j.failReason})` : '';
  return `job ${shortId(j.id)} ${j.status}${when}${why}`;
}

function jobRef(id: string, row: JobRow | undefined): JobRef {
  if (!row) return { id, status: 'unknown', terminal: false, terminalSinceEpoch: null };
  const terminal = isTerminalJobStatus(row.status);
  return {
    id,
    status: row.status,
    terminal,
    terminalSinceEpoch: terminal ? parseIsoEpoch(row.updatedAt) : null,
    failReason: row.failReason ?? null,
  };
}

interface RootCandidate {
  pid: number;
  /** Start ticks used to judge identity: the top's, or the earliest live group member's when the top is gone. */
  startTicks: number;
  topAlive: boolean;
  includeGroup: boolean;
}

/** Where a tree hangs: a live top, a zombie top with live group members, or live members of its group. */
function rootAt(index: ProcessIndex, pid: number): RootCandidate | null {
  const top = index.byPid.get(pid);
  const members = index.groups.get(pid) ?? [];
  if (top && !isDead(top)) return { pid, startTicks: top.startTicks, topAlive: true, includeGroup: top.pgid === pid };
  if (members.length === 0) return null;
  // The leader is dead (a zombie, or gone) but its group lives on. A pid that is still a live
  // group id cannot have been reused, and every member started after the leader did.
  const startTicks = top ? top.startTicks : Math.min(...members.map((m) => m.startTicks));
  return { pid, startTicks, topAlive: false, includeGroup: true };
}

export function classify(input: ClassifyInput): ProjectInventory {
  const { policy, now } = input;
  const inventory: ProjectInventory = {
    root: input.root,
    pidsDir: input.pidsDir,
    dbPath: input.dbPath,
    server: input.server,
    sources: input.sources,
    adapters: [],
    pidFiles: [],
    staleRunningRuns: [],
    startingRuns: [],
    storeSchema: input.store?.schema ?? null,
    now,
  };

  const store = input.store;
  const jobs = store?.jobs ?? {};
  const runs = store?.runs ?? [];
  const storeNote = store ? '' : 'store unreadable, jobs unknown: ';

  // Step runs facts that do not need the process table.
  for (const run of runs) {
    const job = jobs[run.jobId];
    if (run.status === 'running' && job && isTerminalJobStatus(job.status)) {
      inventory.staleRunningRuns.push(staleRun(run, job));
    }
    if (run.agentStep && run.status === 'running' && run.pid === null && !run.inVm && job && !isTerminalJobStatus(job.status) && job.status !== 'paused') {
      inventory.startingRuns.push({ runId: run.id, jobId: run.jobId, agent: run.agent });
    }
  }
  inventory.adapters.push(...inVmAdapters(runs, jobs, now));

  if (!input.processes) {
    // Without a process table nothing can be judged; pid files are kept, and say why.
    inventory.pidFiles = input.pidFiles.map((f) => ({
      path: f.path,
      name: f.name,
      pid: f.pid,
      agent: f.agent,
      verdict: f.pid === null ? 'invalid' : 'live',
      reason: f.invalidReason ?? 'process table unreadable: not judged (kept)',
      ino: f.ino,
      dev: f.dev,
      process: null,
    }));
    return inventory;
  }

  const { clock } = input.processes;
  const index = indexProcesses(input.processes.processes, input.processes.remembered);
  const slack = comparisonSlack(clock, policy.clockToleranceSeconds);
  const serverPid = input.server.alive && input.server.identity ? input.server.identity.pid : null;
  const claimed = new Set<number>();
  const exclude = (pid: number) => pid <= 1 || pid === serverPid || claimed.has(pid);
  const startOf = (ticks: number) => startEpoch(clock, ticks);

  // Pid files: validity and verdict per file.
  const validFiles = new Map<number, PidFileEntry[]>();
  for (const f of input.pidFiles) {
    inventory.pidFiles.push(judgePidFile(f, index, clock, slack));
    if (f.pid !== null) {
      const list = validFiles.get(f.pid) ?? [];
      list.push(f);
      validFiles.set(f.pid, list);
    }
  }

  // Runs that name host pids (in-vm guest pids are never matched against host processes): by
  // the adapter's pid and by its recorded group id (which names the tree once its top died).
  const runsByPid = new Map<number, RunRow[]>();
  const runsBySession = store ? new Map<string, RunRow[]>() : null;
  for (const run of runs) {
    if (!run.agentStep || run.inVm) continue;
    if (run.sessionId !== null && runsBySession) push(runsBySession, run.sessionId.toLowerCase(), run);
    const named = namedRoot(run, index);
    if (named !== null) push(runsByPid, named, run);
  }

  // Candidate roots: every pid named by a run or a pid file, and the server's adapter-like children.
  const rootPids = new Set<number>([...runsByPid.keys(), ...validFiles.keys()]);
  if (serverPid !== null) {
    for (const child of index.children.get(serverPid) ?? []) {
      if (matchesMarker(child.argv, policy.markers)) rootPids.add(child.pid);
    }
  }
  const ordered = [...rootPids]
    .map((pid) => rootAt(index, pid))
    .filter((r): r is RootCandidate => r !== null && r.pid > 1 && r.pid !== serverPid)
    .sort((a, b) => a.startTicks - b.startTicks || a.pid - b.pid);

  for (const root of ordered) {
    if (claimed.has(root.pid)) continue;
    const rootStart = startOf(root.startTicks);
    const evidence: Evidence[] = [];
    const rejected: string[] = [];
    const runIds: string[] = [];
    const jobIds = new Set<string>();
    let agent: string | null = null;

    let pidFile: string | null = null;
    let fileAgent: string | null = null;
    let retried: string | null = null;
    for (const f of validFiles.get(root.pid) ?? []) {
      if (f.mtimeEpoch !== null && rootStart <= f.mtimeEpoch + slack) {
        pidFile = f.path;
        fileAgent = f.agent;
      }
    }
    for (const run of runsByPid.get(root.pid) ?? []) {
      const verdict = judgeRunEvidence(run, rootStart, clock, slack, pidFile !== null);
      if (verdict === null) {
        const finished = parseIsoEpoch(run.completedAt);
        if (finished !== null && rootStart > finished + slack) retried = run.id;
        evidence.push({ kind: 'run', runId: run.id, jobId: run.jobId });
        runIds.push(run.id);
        jobIds.add(run.jobId);
        agent ??= run.agent;
      } else rejected.push(verdict);
    }
    if (pidFile !== null) {
      evidence.push({ kind: 'pid-file', path: pidFile });
      agent ??= fileAgent;
    }
    const top = index.byPid.get(root.pid);
    const serverChild = root.topAlive && serverPid !== null && top?.ppid === serverPid;
    if (serverChild && serverPid !== null) evidence.push({ kind: 'server-child', serverPid });

    if (evidence.length === 0) continue; // a marker-like process here is judged below as foreign.

    const members = collectTree(index, root.pid, { includeGroup: root.includeGroup, exclude });
    if (members.length === 0) continue;
    for (const m of members) claimed.add(m.pid);

    const jobRefs = [...jobIds].map((id) => jobRef(id, jobs[id]));
    const sessions = findSessions({
      members,
      index,
      runsBySession,
      jobRef: (id) => jobRef(id, jobs[id]),
      describeJob: (j) => describeJob(j, now),
      treeJobs: jobRefs,
    });
    const { verdict, reason } = judgeTree({
      pid: root.pid,
      jobRefs,
      serverChild,
      hasPidFile: pidFile !== null,
      externalParents: externalParents(members, index),
      ageSeconds: now - rootStart,
      policy,
      now,
      topAlive: root.topAlive,
      rejected,
    });
    const retryNote = retried ? ` (spawned by a retry of run ${retried} after it ended: the cancel-then-retry leak)` : '';
    inventory.adapters.push(
      makeTree(root.pid, root.startTicks, members, verdict, storeNote + reason + retryNote, jobRefs, evidence, {
        rootStart,
        now,
        pidFile,
        agent,
        runIds,
        sessions,
      }),
    );
  }

  // Adapter-like processes with no evidence at all: foreign (e.g. an editor's own adapter).
  for (const p of input.processes.processes) {
    if (isDead(p) || claimed.has(p.pid) || exclude(p.pid) || !matchesMarker(p.argv, policy.markers)) continue;
    let top = p;
    for (;;) {
      const parent = index.byPid.get(top.ppid);
      if (!parent || isDead(parent) || exclude(parent.pid) || !matchesMarker(parent.argv, policy.markers)) break;
      top = parent;
    }
    const members = collectTree(index, top.pid, { includeGroup: top.pgid === top.pid, exclude });
    if (members.length === 0) continue;
    for (const m of members) claimed.add(m.pid);
    const parent = index.byPid.get(top.ppid);
    const parentText = parent ? `${top.ppid} (${parent.comm || parent.argv[0] || '?'})` : String(top.ppid);
    inventory.adapters.push(
      makeTree(top.pid, top.startTicks, members, 'foreign', `adapter-like, but no run, pid file or server names it (parent ${parentText})`, [], [], {
        rootStart: startOf(top.startTicks),
        now,
        pidFile: null,
        agent: null,
        runIds: [],
        sessions: findSessions({ members, index, runsBySession, jobRef: (id) => jobRef(id, jobs[id]), describeJob: (j) => describeJob(j, now), treeJobs: [] }),
      }),
    );
  }

  return inventory;

  function externalParents(members: ProcessInfo[], idx: ProcessIndex): { pid: number; comm: string }[] {
    const inTree = new Set(members.map((m) => m.pid));
    const out = new Map<number, string>();
    for (const m of members) {
      if (inTree.has(m.ppid)) continue;
      const parent = idx.byPid.get(m.ppid);
      out.set(m.ppid, parent?.comm || parent?.argv[0] || '');
    }
    return [...out].map(([pid, comm]) => ({ pid, comm }));
  }
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
function judgeRunEvidence(run: RunRow, start: number, clock: ClockInfo, slack: number, pidFileNamesIt: boolean): string | null {
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

interface JudgeTreeInput {
  /** The tree's top pid (its group id). */
  pid: number;
  jobRefs: JobRef[];
  serverChild: boolean;
  hasPidFile: boolean;
  externalParents: { pid: number; comm: string }[];
  ageSeconds: number;
  policy: Policy;
  now: number;
  topAlive: boolean;
  rejected: string[];
}

function judgeTree(i: JudgeTreeInput): { verdict: AdapterVerdict; reason: string } {
  const leaderNote = i.topAlive ? '' : ` (group leader ${i.pid} gone; members alive)`;
  if (i.jobRefs.length > 0) {
    const live = i.jobRefs.filter(NOT_TERMINAL_NOT_PAUSED);
    const paused = i.jobRefs.filter((j) => j.status === 'paused');
    const others = (shown: JobRef[]) => {
      const rest = i.jobRefs.filter((j) => !shown.includes(j));
      return rest.length ? `; also used by ${rest.map((j) => `${shortId(j.id)} (${j.status})`).join(', ')}` : '';
    };
    if (live.length > 0) {
      return { verdict: 'active', reason: live.map((j) => describeJob(j, i.now)).join(', ') + others(live) + leaderNote };
    }
    if (paused.length > 0) {
      return { verdict: 'paused', reason: paused.map((j) => describeJob(j, i.now)).join(', ') + others(paused) + leaderNote };
    }
    const all = i.jobRefs.map((j) => describeJob(j, i.now)).join(', ');
    const prefix = i.jobRefs.length > 1 ? `all ${i.jobRefs.length} jobs terminal: ` : '';
    return { verdict: 'leaked', reason: prefix + all + leaderNote };
  }
  const reused = i.rejected.length ? ` (${i.rejected.join('; ')})` : '';
  if (i.serverChild) {
    return i.ageSeconds < i.policy.spawnGraceSeconds
      ? { verdict: 'spawning', reason: `child of the live server, not referenced yet (${Math.round(i.ageSeconds)}s old)${reused}` }
      : { verdict: 'unreferenced', reason: `child of the live server, referenced by no step run for ${ago(i.ageSeconds).replace(' ago', '')}${reused}` };
  }
  if (i.hasPidFile) {
    const adopters = i.externalParents.filter((p) => p.pid === 1 || i.policy.subreapers.includes(p.comm));
    if (i.externalParents.length > 0 && adopters.length === i.externalParents.length) {
      const by = adopters.map((p) => (p.pid === 1 ? 'pid 1' : `${p.comm} ${p.pid}`)).join(', ');
      return { verdict: 'orphaned', reason: `pid file present, no job references it, reparented to ${by}${reused}${leaderNote}` };
    }
    const parents = i.externalParents.map((p) => `${p.pid} (${p.comm || '?'})`).join(', ');
    return {
      verdict: 'foreign',
      reason: `pid file names it, but its parent ${parents} is neither this project's live server nor init/a subreaper${reused}`,
    };
  }
  return { verdict: 'foreign', reason: `no evidence it is this project's${reused}` };
}

function makeTree(
  topPid: number,
  startTicks: number,
  members: ProcessInfo[],
  verdict: AdapterVerdict,
  reason: string,
  jobs: JobRef[],
  evidence: Evidence[],
  extra: { rootStart: number; now: number; pidFile: string | null; agent: string | null; runIds: string[]; sessions: AdapterSession[] },
): AdapterTree {
  const terminalTimes = jobs.map((j) => j.terminalSinceEpoch);
  const lastTerminalEpoch =
    jobs.length > 0 && jobs.every((j) => j.terminal) && terminalTimes.every((t) => t !== null)
      ? Math.max(...(terminalTimes as number[]))
      : null;
  return {
    topPid,
    top: { pid: topPid, startTicks },
    processes: members.map(toTreeProcess),
    verdict,
    reason,
    jobs,
    evidence,
    rssBytes: members.reduce((s, m) => s + m.rssBytes, 0),
    swapBytes: members.reduce((s, m) => s + m.swapBytes, 0),
    ageSeconds: Math.max(0, extra.now - extra.rootStart),
    startEpoch: extra.rootStart,
    pidFile: extra.pidFile,
    agent: extra.agent,
    lastTerminalEpoch,
    runIds: extra.runIds,
    sessions: extra.sessions,
  };
}

function judgePidFile(f: PidFileEntry, index: ProcessIndex, clock: ClockInfo, slack: number): PidFileStatus {
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

function staleRun(run: RunRow, job: JobRow): StaleRunningRun {
  return { runId: run.id, jobId: run.jobId, jobStatus: job.status, stepName: run.stepName, startedAt: run.startedAt, pid: run.pid };
}

/** Runs inside a microVM: counted per guest adapter, never matched against host processes. */
function inVmAdapters(runs: RunRow[], jobs: Record<string, JobRow>, now: number): AdapterTree[] {
  const groups = new Map<string, RunRow[]>();
  for (const run of runs) {
    if (!run.agentStep || !run.inVm || !OPEN_RUN_STATUSES.has(run.status)) continue;
    const key = run.pid === null ? `run:${run.id}` : `pid:${run.pid}`;
    const list = groups.get(key) ?? [];
    list.push(run);
    groups.set(key, list);
  }
  return [...groups.values()].map((group) => {
    const first = group[0]!;
    const jobRefs = [...new Set(group.map((r) => r.jobId))].map((id) => jobRef(id, jobs[id]));
    const started = Math.min(...group.map((r) => parseIsoEpoch(r.startedAt) ?? now));
    return {
      topPid: first.pid ?? 0,
      top: null,
      processes: [],
      verdict: 'in-vm' as const,
      reason: `runs inside a microVM (guest pid ${first.pid ?? 'unknown'}): counted, never matched against host processes`,
      jobs: jobRefs,
      evidence: group.map((r) => ({ kind: 'run' as const, runId: r.id, jobId: r.jobId })),
      rssBytes: 0,
      swapBytes: 0,
      ageSeconds: Math.max(0, now - started),
      startEpoch: null,
      pidFile: null,
      agent: first.agent,
      lastTerminalEpoch: null,
      runIds: group.map((r) => r.id),
      sessions: [],
    };
  });
}
