// Sessions inside an adapter tree (pure). The real claude-agent-acp starts one agent CLI per
// ACP session (`session/new`, `session/load`, `session/fork`), and stepwise never closes a
// session: a reused adapter keeps a CLI for every session it ever opened. A session is the
// outermost tree member whose argv carries a session id, plus that process's own descendants
// (tool shells, MCP servers it starts). It is attributed through the step runs whose
// executor_state.session_id is that id (a loaded or forked session keeps its id; several runs,
// of one or several jobs, can name one session).

import type { ProcessIndex } from './process-tree.js';
import { isDead, toTreeProcess } from './process-tree.js';
import type { AdapterSession, JobRef, ProcessInfo, RunRow, SessionVerdict } from './types.js';

/**
 * How an agent CLI carries its session id, per CLI. Agents are user-definable in stepwise, so
 * every pattern is tried on every tree; a value must look like a UUID (what ACP adapters use) so
 * that an unrelated `--resume` flag is never taken for one.
 */
export const SESSION_ARG_PATTERNS: readonly { cli: string; flags: readonly string[] }[] = [
  // claude-agent-acp 0.101.0 → claude 2.1.x: `--session-id=<uuid>` at session/new; `--resume <uuid>` on session/load.
  { cli: 'claude', flags: ['--session-id', '--resume'] },
];

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** The session id a process's argv carries (`--flag=<uuid>` or `--flag <uuid>`), or null. */
export function sessionIdOf(argv: readonly string[]): string | null {
  for (let i = 1; i < argv.length; i++) {
    const arg = argv[i]!;
    for (const { flags } of SESSION_ARG_PATTERNS) {
      for (const flag of flags) {
        let value: string | undefined;
        if (arg === flag) value = argv[i + 1];
        else if (arg.startsWith(`${flag}=`)) value = arg.slice(flag.length + 1);
        if (value !== undefined && UUID_RE.test(value)) return value.toLowerCase();
      }
    }
  }
  return null;
}

export interface SessionJudgeInput {
  /** The tree's live members (top first). */
  members: readonly ProcessInfo[];
  index: ProcessIndex;
  /** Every run of the store snapshot with a session id (null when the store is unreadable). */
  runsBySession: ReadonlyMap<string, RunRow[]> | null;
  jobRef: (jobId: string) => JobRef;
  describeJob: (j: JobRef) => string;
  /** Jobs of the whole tree (to say who keeps the adapter alive). */
  treeJobs: readonly JobRef[];
}

/** The sessions of one adapter tree, each judged on its own jobs. */
export function findSessions(i: SessionJudgeInput): AdapterSession[] {
  const inTree = new Map(i.members.map((m) => [m.pid, m] as const));
  const ids = new Map<number, string>();
  for (const m of i.members) {
    const id = sessionIdOf(m.argv);
    if (id !== null) ids.set(m.pid, id);
  }
  const out: AdapterSession[] = [];
  for (const [pid, sessionId] of ids) {
    // Outermost only: a CLI re-executing itself with the same arguments stays one session.
    if (hasSessionAncestor(pid, inTree, ids)) continue;
    const cli = inTree.get(pid)!;
    const processes = descendantsWithin(cli, i.index, inTree).map(toTreeProcess);
    const runs = i.runsBySession?.get(sessionId) ?? [];
    const jobIds = [...new Set(runs.map((r) => r.jobId))];
    const jobs = jobIds.map(i.jobRef);
    const { verdict, reason } = judgeSession(sessionId, jobs, i);
    out.push({
      sessionId,
      pid: cli.pid,
      startTicks: cli.startTicks,
      verdict,
      reason,
      jobs,
      runIds: runs.map((r) => r.id),
      processes,
      rssBytes: processes.reduce((s, p) => s + p.rssBytes, 0),
      swapBytes: processes.reduce((s, p) => s + p.swapBytes, 0),
      lastTerminalEpoch: lastTerminal(jobs),
    });
  }
  out.sort((a, b) => a.startTicks - b.startTicks || a.pid - b.pid);
  return out;
}

function hasSessionAncestor(pid: number, inTree: ReadonlyMap<number, ProcessInfo>, ids: ReadonlyMap<number, string>): boolean {
  const seen = new Set<number>([pid]);
  let p = inTree.get(pid);
  while (p && inTree.has(p.ppid) && !seen.has(p.ppid)) {
    if (ids.has(p.ppid)) return true;
    seen.add(p.ppid);
    p = inTree.get(p.ppid);
  }
  return false;
}

/** The CLI and its live descendants that belong to the tree. */
function descendantsWithin(cli: ProcessInfo, index: ProcessIndex, inTree: ReadonlyMap<number, ProcessInfo>): ProcessInfo[] {
  const out: ProcessInfo[] = [];
  const seen = new Set<number>();
  const stack = [cli];
  while (stack.length > 0) {
    const p = stack.pop()!;
    if (seen.has(p.pid) || isDead(p) || !inTree.has(p.pid)) continue;
    seen.add(p.pid);
    out.push(p);
    for (const c of index.children.get(p.pid) ?? []) stack.push(c);
  }
  out.sort((a, b) => (a.pid === cli.pid ? -1 : b.pid === cli.pid ? 1 : a.startTicks - b.startTicks || a.pid - b.pid));
  return out;
}

const shortSession = (id: string) => id.slice(0, 8);

function judgeSession(sessionId: string, jobs: JobRef[], i: SessionJudgeInput): { verdict: SessionVerdict; reason: string } {
  if (i.runsBySession === null) return { verdict: 'unattributed', reason: `store unreadable: session ${shortSession(sessionId)} not judged (kept)` };
  if (jobs.length === 0) {
    return { verdict: 'unattributed', reason: `no step run names session ${shortSession(sessionId)} (being created, or not this store's): never reaped` };
  }
  const live = jobs.filter((j) => !j.terminal && j.status !== 'paused');
  const paused = jobs.filter((j) => j.status === 'paused');
  if (live.length > 0) return { verdict: 'active', reason: live.map(i.describeJob).join(', ') };
  if (paused.length > 0) return { verdict: 'paused', reason: paused.map(i.describeJob).join(', ') };
  const mine = new Set(jobs.map((j) => j.id));
  const keepers = i.treeJobs.filter((j) => !mine.has(j.id) && !j.terminal);
  const kept = keepers.length ? `; the adapter stays for ${keepers.map((j) => `${j.id} (${j.status})`).join(', ')}` : '';
  return { verdict: 'leaked', reason: `${jobs.map(i.describeJob).join(', ')}${kept}` };
}

function lastTerminal(jobs: readonly JobRef[]): number | null {
  if (jobs.length === 0 || !jobs.every((j) => j.terminal && j.terminalSinceEpoch !== null)) return null;
  return Math.max(...jobs.map((j) => j.terminalSinceEpoch as number));
}
