// The pure planner: plan(inventory, policy, selection) → actions with their reasons. The same
// plan feeds the CLI (`reap`, `gc`), the daemon and the HTTP API; effects carry it out.

import { sessionIdOf } from './sessions.js';
import type { AdapterSession, AdapterTree, AdapterVerdict, JobRef, PidFileStatus, Policy, ProjectInventory, TreeProcess } from './types.js';
import { REAPABLE_VERDICTS, REFUSAL_CODES, SESSION_HOST_VERDICTS, SESSION_KILL_VERDICT, SESSION_STOP_VERDICTS, type RefusalCode } from './vocabulary.js';

export interface Selection {
  /** Every leaked tree past the terminal grace. */
  allLeaked: boolean;
  /** Every orphaned tree past the spawn grace. */
  orphans: boolean;
  /**
   * Every leaked session (its jobs all terminal, past the terminal grace) inside a live adapter
   * that is not itself reaped: its CLI and that CLI's descendants, never the adapter.
   */
  sessions: boolean;
  /** Trees these jobs reference (refused while a job is not terminal, unless force). */
  jobs: string[];
  /** Trees by top pid (refused unless reapable, unless force). */
  pids: number[];
  /** Overrides the "job not terminal" and "not reapable" refusals only. */
  force: boolean;
  /** Stale pid files (stale-dead, stale-reused). */
  gc: boolean;
}

export interface PlanContext {
  /** The watchdog's pid and every ancestor of it: never signalled. */
  selfPid: number;
  selfAncestors: number[];
  /** The watchdog's uid; trees with processes of another (or unknown) uid are refused unless allowed. */
  selfUid: number | null;
  allowOtherUids: boolean;
}

/** Short, bounded codes (metric label values). */
export { REFUSAL_CODES, SESSION_KILL_VERDICT, type RefusalCode };

export interface KillTreeAction {
  kind: 'kill-tree';
  project: string;
  tree: AdapterTree;
  verdict: AdapterVerdict;
  reason: string;
  /** How it was selected: by policy (all-leaked/orphans) or explicitly (--job/--pid). */
  selectedBy: 'all-leaked' | 'orphans' | 'job' | 'pid';
  forced: boolean;
}

/** The verdict label a session kill is counted and audited under (reaped_total{verdict}). */

/** Which adapter verdicts a leaked session may be stopped inside (the tree itself stays). */

export interface KillSessionAction {
  kind: 'kill-session';
  project: string;
  /** The adapter tree the session lives in (never signalled as a whole). */
  tree: AdapterTree;
  session: AdapterSession;
  reason: string;
  selectedBy: 'sessions';
}

export interface RemovePidFileAction {
  kind: 'remove-pid-file';
  project: string;
  pidsDir: string;
  file: PidFileStatus;
  reason: string;
}

export interface Refusal {
  kind: 'refusal';
  project: string;
  /** What was asked for or considered: "tree 1234", "job job-1", "pid 99". */
  target: string;
  code: RefusalCode;
  reason: string;
  /** true when the user asked for it by name (--job/--pid): refusals of explicit requests are audited. */
  explicit: boolean;
  tree?: AdapterTree;
  /** A refused session stop: which CLI, by identity (re-verification finds its refusal by this, never by the target text). */
  session?: { sessionId: string; pid: number; startTicks: number };
}

export type PlannedAction = KillTreeAction | KillSessionAction | RemovePidFileAction;

/** The memory an action would free: a whole tree's, or one session's (rss + swap). */
export function actionBytes(a: PlannedAction): number {
  if (a.kind === 'kill-tree') return a.tree.rssBytes + a.tree.swapBytes;
  if (a.kind === 'kill-session') return a.session.rssBytes + a.session.swapBytes;
  return 0;
}

export interface Plan {
  project: string;
  actions: PlannedAction[];
  refusals: Refusal[];
}


export function plan(inv: ProjectInventory, policy: Policy, selection: Selection, ctx: PlanContext): Plan {
  const out: Plan = { project: inv.root, actions: [], refusals: [] };
  const refuse: RefuseFn = (target, code, reason, explicit, tree, session) =>
    out.refusals.push({
      kind: 'refusal',
      project: inv.root,
      target,
      code,
      reason,
      explicit,
      ...(tree ? { tree } : {}),
      ...(session ? { session: { sessionId: session.sessionId, pid: session.pid, startTicks: session.startTicks } } : {}),
    });

  const wantsKills = selection.allLeaked || selection.orphans || selection.sessions || selection.jobs.length > 0 || selection.pids.length > 0;
  const down = Object.entries(inv.sources).filter(([name, h]) => !h.ok && (name === 'store' || name === 'processes'));
  if (wantsKills && down.length > 0) {
    // No kill at all when the store or the process table could not be read: the evidence is missing.
    const why = down.map(([, h]) => h.error ?? 'unreadable').join('; ');
    refuse('all trees', 'source_down', `nothing reaped: ${why}`, selection.jobs.length > 0 || selection.pids.length > 0);
  } else if (wantsKills) {
    planKills(inv, policy, selection, ctx, out, refuse);
    if (selection.sessions) planSessionKills(inv, policy, ctx, out, refuse);
  }

  if (selection.gc) {
    const gcDown = Object.entries(inv.sources).filter(([name, h]) => !h.ok && (name === 'processes' || name === 'pidfiles'));
    if (gcDown.length > 0) {
      refuse('pid files', 'source_down', `no pid file removed: ${gcDown.map(([, h]) => h.error).join('; ')}`, false);
    } else {
      for (const f of inv.pidFiles) {
        if (f.verdict === 'stale-dead' || f.verdict === 'stale-reused') {
          out.actions.push({ kind: 'remove-pid-file', project: inv.root, pidsDir: inv.pidsDir, file: f, reason: `${f.verdict}: ${f.reason}` });
        }
      }
    }
  }
  return out;
}

type RefuseFn = (target: string, code: RefusalCode, reason: string, explicit: boolean, tree?: AdapterTree, session?: AdapterSession) => void;

function planKills(inv: ProjectInventory, policy: Policy, selection: Selection, ctx: PlanContext, out: Plan, refuse: RefuseFn): void {
  const chosen = new Map<number, KillTreeAction>();
  const hostTrees = inv.adapters.filter((a) => a.verdict !== 'in-vm');

  const consider = (tree: AdapterTree, selectedBy: KillTreeAction['selectedBy'], explicit: boolean, forced: boolean, why: string) => {
    if (chosen.has(tree.topPid)) return;
    const target = `tree ${tree.topPid}`;
    const guard = protectedReason(tree, inv, ctx);
    if (guard) return refuse(target, guard.code, guard.reason, explicit, tree);
    const race = adoptionRace(tree, inv);
    if (race) return refuse(target, 'adoption_race', race, explicit, tree);
    chosen.set(tree.topPid, { kind: 'kill-tree', project: inv.root, tree, verdict: tree.verdict, reason: why, selectedBy, forced });
  };

  // By policy: leaked past the terminal grace, orphaned past the spawn grace.
  if (selection.allLeaked) {
    for (const tree of hostTrees.filter((t) => t.verdict === 'leaked')) {
      const since = tree.lastTerminalEpoch;
      if (since === null) {
        refuse(`tree ${tree.topPid}`, 'grace', `${tree.reason}; when its jobs ended is unknown, so the terminal grace cannot be checked`, false, tree);
      } else if (inv.now - since < policy.terminalGraceSeconds) {
        const left = Math.ceil(policy.terminalGraceSeconds - (inv.now - since));
        refuse(`tree ${tree.topPid}`, 'grace', `${tree.reason}; within the terminal grace (${left}s left: the engine's own teardown may still run)`, false, tree);
      } else consider(tree, 'all-leaked', false, false, tree.reason);
    }
  }
  if (selection.orphans) {
    for (const tree of hostTrees.filter((t) => t.verdict === 'orphaned')) {
      if (tree.ageSeconds < policy.spawnGraceSeconds) {
        refuse(`tree ${tree.topPid}`, 'grace', `${tree.reason}; younger than the spawn grace`, false, tree);
      } else consider(tree, 'orphans', false, false, tree.reason);
    }
  }

  // Explicit requests: the terminal grace does not apply, the refusals below do.
  for (const jobId of selection.jobs) {
    const trees = hostTrees.filter((t) => t.jobs.some((j) => j.id === jobId));
    if (trees.length === 0) {
      refuse(`job ${jobId}`, 'not_found', `job ${jobId} references no live adapter tree`, true);
      continue;
    }
    const job = trees[0]!.jobs.find((j) => j.id === jobId) as JobRef;
    if (!job.terminal && !selection.force) {
      refuse(`job ${jobId}`, 'job_not_terminal', `job ${jobId} is ${job.status}, not terminal (use --force to override)`, true);
      continue;
    }
    for (const tree of trees) {
      if (!REAPABLE_VERDICTS.has(tree.verdict) && !selection.force) {
        refuse(`tree ${tree.topPid}`, 'not_reapable', `tree ${tree.topPid} is ${tree.verdict}: ${tree.reason} (use --force to override)`, true, tree);
        continue;
      }
      consider(tree, 'job', true, selection.force && (!job.terminal || !REAPABLE_VERDICTS.has(tree.verdict)), `requested for job ${jobId}: ${tree.reason}`);
    }
  }
  for (const pid of selection.pids) {
    const tree = hostTrees.find((t) => t.topPid === pid);
    if (!tree) {
      const inside = hostTrees.find((t) => t.processes.some((p) => p.pid === pid));
      refuse(`pid ${pid}`, 'not_found', inside ? `pid ${pid} is inside tree ${inside.topPid}; select the tree by its top pid` : `no adapter tree has top pid ${pid}`, true);
      continue;
    }
    if (!REAPABLE_VERDICTS.has(tree.verdict) && !selection.force) {
      refuse(`pid ${pid}`, 'not_reapable', `tree ${pid} is ${tree.verdict}: ${tree.reason} (use --force to override)`, true, tree);
      continue;
    }
    consider(tree, 'pid', true, selection.force && !REAPABLE_VERDICTS.has(tree.verdict), `requested by pid: ${tree.reason}`);
  }
  out.actions.push(...chosen.values());
}

/** Hard limits no flag overrides: foreign trees, the server, pid 1, the watchdog and its ancestors, other uids. */
function protectedReason(tree: AdapterTree, inv: ProjectInventory, ctx: PlanContext): { code: RefusalCode; reason: string } | null {
  if (tree.verdict === 'foreign') return { code: 'protected', reason: `tree ${tree.topPid} is foreign (${tree.reason}): never touched` };
  if (tree.verdict === 'in-vm') return { code: 'protected', reason: `tree ${tree.topPid} runs in a microVM: never touched` };
  return processesProblem(`tree ${tree.topPid}`, tree.processes, inv, ctx);
}

/** pid 1, the server, the watchdog and its ancestors, other (or unknown) uids, nothing live. */
function processesProblem(what: string, processes: readonly TreeProcess[], inv: ProjectInventory, ctx: PlanContext): { code: RefusalCode; reason: string } | null {
  const serverPid = inv.server.identity?.pid ?? inv.server.pidFile?.pid ?? null;
  const self = new Set([ctx.selfPid, ...ctx.selfAncestors]);
  for (const p of processes) {
    if (p.pid <= 1) return { code: 'protected', reason: `${what} contains pid ${p.pid}` };
    if (p.pid === serverPid) return { code: 'protected', reason: `${what} contains the stepwise server ${p.pid}` };
    if (self.has(p.pid)) return { code: 'protected', reason: `${what} contains the watchdog or one of its ancestors (${p.pid})` };
    if (!ctx.allowOtherUids && (p.uid === null || ctx.selfUid === null || p.uid !== ctx.selfUid)) {
      const uid = p.uid === null ? 'an unknown uid' : `uid ${p.uid}`;
      return { code: 'other_uid', reason: `${what}: process ${p.pid} runs as ${uid}, not the watchdog's${ctx.selfUid === null ? '' : ` (${ctx.selfUid})`}` };
    }
  }
  if (processes.length === 0) return { code: 'not_found', reason: `${what} has no live process` };
  return null;
}

/**
 * Leaked sessions inside adapters that live on for other jobs (active trees): the session's CLI
 * and its descendants only. In a paused job's adapter they wait (refused as 'paused', not counted). A tree that is reaped whole takes its sessions with
 * it; an unattributed session (no run names it yet) and the sessions of live or paused jobs are
 * never selected. The terminal grace applies as for trees; the adoption race holds them too (a
 * starting step may load or fork a session of the same agent).
 */
function planSessionKills(inv: ProjectInventory, policy: Policy, ctx: PlanContext, out: Plan, refuse: RefuseFn): void {
  const killedTrees = new Set(out.actions.flatMap((a) => (a.kind === 'kill-tree' ? [a.tree.topPid] : [])));
  for (const tree of inv.adapters) {
    if (!SESSION_HOST_VERDICTS.has(tree.verdict) || killedTrees.has(tree.topPid)) continue;
    for (const session of tree.sessions) {
      if (session.verdict !== 'leaked') continue;
      const target = `session ${session.sessionId} (pid ${session.pid}) in tree ${tree.topPid}`;
      if (!SESSION_STOP_VERDICTS.has(tree.verdict)) {
        const paused = tree.jobs.filter((j) => j.status === 'paused').map((j) => j.id);
        refuse(target, 'paused', `${session.reason}; held: the adapter serves paused job ${paused.join(', ') || '(unknown)'} and is never touched: the session goes when that job resumes or ends`, false, tree, session);
        continue;
      }
      const since = session.lastTerminalEpoch;
      if (since === null) {
        refuse(target, 'grace', `${session.reason}; when its jobs ended is unknown, so the terminal grace cannot be checked`, false, tree, session);
        continue;
      }
      if (inv.now - since < policy.terminalGraceSeconds) {
        const left = Math.ceil(policy.terminalGraceSeconds - (inv.now - since));
        refuse(target, 'grace', `${session.reason}; within the terminal grace (${left}s left)`, false, tree, session);
        continue;
      }
      if (session.pid === tree.topPid || session.processes.some((p) => p.pid === tree.topPid)) {
        refuse(target, 'protected', `${target}: the session's process is the adapter's top: only the whole tree could go`, false, tree, session);
        continue;
      }
      // A process inside it that carries another session id would go with it: only a session that
      // holds no other session is ever stopped (an agent whose adapter itself carries an id).
      const nested = session.processes.find((p) => p.pid !== session.pid && (sessionIdOf(p.argv) ?? session.sessionId) !== session.sessionId);
      if (nested) {
        refuse(target, 'protected', `${target} holds process ${nested.pid} of another session: never stopped alone`, false, tree, session);
        continue;
      }
      const guard = processesProblem(target, session.processes, inv, ctx);
      if (guard) {
        refuse(target, guard.code, guard.reason, false, tree, session);
        continue;
      }
      const race = adoptionRace(tree, inv);
      if (race) {
        refuse(target, 'adoption_race', race, false, tree, session);
        continue;
      }
      out.actions.push({ kind: 'kill-session', project: inv.root, tree, session, reason: `leaked session ${session.sessionId}: ${session.reason}`, selectedBy: 'sessions' });
    }
  }
}

/**
 * Do not race the engine: while a step run of a running job is starting an agent (running, no
 * pid recorded yet), an adapter of the same agent could be adopted by it.
 */
function adoptionRace(tree: AdapterTree, inv: ProjectInventory): string | null {
  const starting = inv.startingRuns.find((r) => r.agent === null || tree.agent === null || r.agent === tree.agent);
  if (!starting) return null;
  const agent = starting.agent ?? tree.agent ?? 'an';
  return `${tree.reason}; held: run ${starting.runId} of job ${starting.jobId} is starting ${agent === 'an' ? 'an' : `a '${agent}'`} agent and could adopt this adapter`;
}

/** Seconds until a held-by-grace tree becomes reapable (for the daemon's next wake-up); null if none. */
export function nextGraceExpiry(inv: ProjectInventory, policy: Policy, selection: Pick<Selection, 'allLeaked' | 'orphans' | 'sessions'>): number | null {
  let soonest: number | null = null;
  const note = (s: number) => {
    if (s > 0 && (soonest === null || s < soonest)) soonest = s;
  };
  for (const t of inv.adapters) {
    if (selection.allLeaked && t.verdict === 'leaked' && t.lastTerminalEpoch !== null) note(t.lastTerminalEpoch + policy.terminalGraceSeconds - inv.now);
    if (selection.orphans && t.verdict === 'orphaned') note(policy.spawnGraceSeconds - t.ageSeconds);
    if (selection.sessions && SESSION_STOP_VERDICTS.has(t.verdict)) {
      for (const s of t.sessions) if (s.verdict === 'leaked' && s.lastTerminalEpoch !== null) note(s.lastTerminalEpoch + policy.terminalGraceSeconds - inv.now);
    }
    // A spawning tree turns unreferenced (a metric change, not a reap) when the spawn grace ends.
  }
  return soonest;
}
