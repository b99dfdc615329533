// The pure classifier: plain data and `now` in, an inventory out. No I/O, no clock reads.
//
// Evidence that a process tree is this project's, strongest first:
//  1. a step run's executor_state.pid names its top, and the process is the same one
//     (it started no later than the run finished: a later start is a reused pid);
//  2. a pid file in this project's pids folder names it, and it started no later than the
//     file was written (the engine writes the file after the ACP handshake);
//  3. it is a child of this project's live server.
// Marker patterns only recognise adapter-like processes; a marker alone is never evidence.
// Gathering the evidence is evidence.ts; this file judges it.

import {
  candidateRoots,
  externalParents,
  gatherEvidence,
  indexPidFiles,
  indexRuns,
  judgePidFile,
  type EvidenceContext,
  type RootCandidate,
} from './evidence.js';
import { collectTree, indexProcesses, isDead, matchesMarker, toTreeProcess } from './process-tree.js';
import { findSessions } from './sessions.js';
import { ago, comparisonSlack, parseIsoEpoch, startEpoch } from './time.js';
import { OPEN_RUN_STATUSES } from './vocabulary.js';
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


export function classify(input: ClassifyInput): ProjectInventory {
  const { now } = input;
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
  const runs = input.store?.runs ?? [];
  const jobs = input.store?.jobs ?? {};
  Object.assign(inventory, runFacts(runs, jobs));
  inventory.adapters.push(...inVmAdapters(runs, jobs, now));

  if (!input.processes) {
    // Without a process table nothing can be judged; pid files are kept, and say why.
    inventory.pidFiles = input.pidFiles.map(unjudgedPidFile);
    return inventory;
  }
  const { clock } = input.processes;
  const index = indexProcesses(input.processes.processes, input.processes.remembered);
  const slack = comparisonSlack(clock, input.policy.clockToleranceSeconds);
  inventory.pidFiles = input.pidFiles.map((f) => judgePidFile(f, index, clock, slack));
  const { runsByPid, runsBySession } = indexRuns(runs, index, input.store !== null);
  const ctx: JudgeContext = {
    index,
    clock,
    slack,
    serverPid: input.server.alive && input.server.identity ? input.server.identity.pid : null,
    filesByPid: indexPidFiles(input.pidFiles),
    runsByPid,
    runsBySession,
    claimed: new Set<number>(),
    jobs,
    policy: input.policy,
    now,
    storeNote: input.store ? '' : 'store unreadable, jobs unknown: ',
  };
  for (const root of candidateRoots(ctx, input.policy.markers)) {
    const tree = evidencedTree(root, ctx);
    if (tree) inventory.adapters.push(tree);
  }
  inventory.adapters.push(...foreignTrees(input.processes.processes, ctx));
  return inventory;
}

/** One cycle's evidence plus what judging needs: jobs, policy, time, and the pids already in a tree. */
interface JudgeContext extends EvidenceContext {
  runsBySession: Map<string, RunRow[]> | null;
  /** Pids already placed in a tree: a process belongs to one tree, the oldest root's. */
  claimed: Set<number>;
  jobs: Record<string, JobRow>;
  policy: Policy;
  now: number;
  /** Prefix of every reason while the store is unreadable. */
  storeNote: string;
}

/** Never part of a tree: pid 1, the live server, a process another tree holds. */
function excluded(ctx: JudgeContext, pid: number): boolean {
  return pid <= 1 || pid === ctx.serverPid || ctx.claimed.has(pid);
}

function claimTree(ctx: JudgeContext, pid: number, includeGroup: boolean): ProcessInfo[] {
  const members = collectTree(ctx.index, pid, { includeGroup, exclude: (p) => excluded(ctx, p) });
  for (const m of members) ctx.claimed.add(m.pid);
  return members;
}

function sessionsOf(members: ProcessInfo[], ctx: JudgeContext, treeJobs: JobRef[]): AdapterSession[] {
  return findSessions({
    members,
    index: ctx.index,
    runsBySession: ctx.runsBySession,
    jobRef: (id) => jobRef(id, ctx.jobs[id]),
    describeJob: (j) => describeJob(j, ctx.now),
    treeJobs,
  });
}

/** The tree a named root hangs, judged; null when nothing names it (judged later, as foreign) or it has no live member. */
function evidencedTree(root: RootCandidate, ctx: JudgeContext): AdapterTree | null {
  if (ctx.claimed.has(root.pid)) return null;
  const ev = gatherEvidence(root, ctx);
  if (ev.evidence.length === 0) return null;
  const members = claimTree(ctx, root.pid, root.includeGroup);
  if (members.length === 0) return null;
  const jobRefs = ev.jobIds.map((id) => jobRef(id, ctx.jobs[id]));
  const { verdict, reason } = judgeTree({
    pid: root.pid,
    jobRefs,
    serverChild: ev.serverChild,
    hasPidFile: ev.pidFile !== null,
    externalParents: externalParents(members, ctx.index),
    ageSeconds: ctx.now - ev.rootStart,
    policy: ctx.policy,
    now: ctx.now,
    topAlive: root.topAlive,
    rejected: ev.rejected,
  });
  const retryNote = ev.retried ? ` (spawned by a retry of run ${ev.retried} after it ended: the cancel-then-retry leak)` : '';
  return makeTree({
    topPid: root.pid,
    startTicks: root.startTicks,
    members,
    verdict,
    reason: ctx.storeNote + reason + retryNote,
    jobs: jobRefs,
    evidence: ev.evidence,
    rootStart: ev.rootStart,
    now: ctx.now,
    pidFile: ev.pidFile,
    agent: ev.agent,
    runIds: ev.runIds,
    sessions: sessionsOf(members, ctx, jobRefs),
  });
}

/** Adapter-like processes with no evidence at all: foreign (e.g. an editor's own adapter). */
function foreignTrees(processes: readonly ProcessInfo[], ctx: JudgeContext): AdapterTree[] {
  const out: AdapterTree[] = [];
  const markers = ctx.policy.markers;
  for (const p of processes) {
    if (isDead(p) || excluded(ctx, p.pid) || !matchesMarker(p.argv, markers)) continue;
    let top = p;
    for (;;) {
      const parent = ctx.index.byPid.get(top.ppid);
      if (!parent || isDead(parent) || excluded(ctx, parent.pid) || !matchesMarker(parent.argv, markers)) break;
      top = parent;
    }
    const members = claimTree(ctx, top.pid, top.pgid === top.pid);
    if (members.length === 0) continue;
    const parent = ctx.index.byPid.get(top.ppid);
    const parentText = parent ? `${top.ppid} (${parent.comm || parent.argv[0] || '?'})` : String(top.ppid);
    out.push(
      makeTree({
        topPid: top.pid,
        startTicks: top.startTicks,
        members,
        verdict: 'foreign',
        reason: `adapter-like, but no run, pid file or server names it (parent ${parentText})`,
        jobs: [],
        evidence: [],
        rootStart: startEpoch(ctx.clock, top.startTicks),
        now: ctx.now,
        pidFile: null,
        agent: null,
        runIds: [],
        sessions: sessionsOf(members, ctx, []),
      }),
    );
  }
  return out;
}

/** Store facts that need no process table: running runs of terminal jobs, agent runs not started yet. */
function runFacts(runs: readonly RunRow[], jobs: Record<string, JobRow>): Pick<ProjectInventory, 'staleRunningRuns' | 'startingRuns'> {
  const staleRunningRuns: StaleRunningRun[] = [];
  const startingRuns: ProjectInventory['startingRuns'] = [];
  for (const run of runs) {
    const job = jobs[run.jobId];
    if (run.status === 'running' && job && isTerminalJobStatus(job.status)) staleRunningRuns.push(staleRun(run, job));
    if (run.agentStep && run.status === 'running' && run.pid === null && !run.inVm && job && !isTerminalJobStatus(job.status) && job.status !== 'paused') {
      startingRuns.push({ runId: run.id, jobId: run.jobId, agent: run.agent });
    }
  }
  return { staleRunningRuns, startingRuns };
}

function unjudgedPidFile(f: PidFileEntry): PidFileStatus {
  return {
    path: f.path,
    name: f.name,
    pid: f.pid,
    agent: f.agent,
    verdict: f.pid === null ? 'invalid' : 'live',
    reason: f.invalidReason ?? 'process table unreadable: not judged (kept)',
    ino: f.ino,
    dev: f.dev,
    process: null,
  };
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

interface TreeFacts {
  topPid: number;
  startTicks: number;
  members: ProcessInfo[];
  verdict: AdapterVerdict;
  reason: string;
  jobs: JobRef[];
  evidence: Evidence[];
  rootStart: number;
  now: number;
  pidFile: string | null;
  agent: string | null;
  runIds: string[];
  sessions: AdapterSession[];
}

function makeTree(t: TreeFacts): AdapterTree {
  const { topPid, startTicks, members, verdict, reason, jobs, evidence } = t;
  const extra = t;
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
