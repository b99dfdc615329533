// Carry out one kill-tree action: re-verify, SIGTERM, wait, SIGKILL, confirm. The first rule:
// never signal what is not provably ours. A process is (pid, start ticks), never a bare pid;
// every signal is preceded by a fresh read of the target's identity, and every fallback below
// says why it is safe.
//
// Procedure (see killTree):
//  1. recheck(): the caller re-collects the project and hands back the fresh tree with the same
//     top identity (or why not). Its verdict must still be reapable for this action, its set of
//     jobs unchanged; then each member's identity is re-read and only exact matches are kept.
//  2. SIGTERM: the process group (`kill(-pgid)`) when it is the tree's own group, no protected
//     process is in it and every live member (listed right before) is a verified target; plus
//     every verified member outside that group individually
//     (setsid'd descendants escape group kills), each re-read right before its signal.
//  3. Wait up to killWaitMs (polling, cancellable), SIGKILL what remains (same re-checks),
//     confirm. A zombie counts as gone: its memory is freed (the top of an adapter the live
//     server spawned stays a zombie child of the server until the server reaps it).
//  4. Report per process. ESRCH = gone (success); EPERM = failure, reported once, never retried.

import type { KillSessionAction, KillTreeAction } from '../core/plan.js';
import { ownershipProblem, sameJobSet, sameTree, verdictProblem } from '../core/recheck.js';
import { SESSION_KILL_VERDICT, type KillFailureCode, type KillSkipCode } from '../core/vocabulary.js';

export { sameTree };
import { isDead, sameIdentity } from '../core/process-tree.js';
import type { AdapterSession, AdapterTree, AdapterVerdict, LiveIdentity, SessionVerdict, TreeProcess } from '../core/types.js';
import type { IdentityRead, ProcessPort } from '../sources/process-port.js';
import { defaultProcessPort } from '../sources/default-port.js';

export type SignalName = 'SIGTERM' | 'SIGKILL';

export interface SentSignal {
  signal: SignalName;
  /** 'group': kill(-pgid) reached it; 'process': kill(pid). */
  via: 'group' | 'process';
}

export type ProcessResult = 'gone' | 'still-alive' | 'eperm' | 'skipped-identity-changed';

export interface ProcessOutcome {
  pid: number;
  startTicks: number;
  argv: string[];
  signals: SentSignal[];
  result: ProcessResult;
  /** rss + swap from the inventory, counted only when it is gone after we signalled it. */
  bytesFreed: number;
  /** Why, when not simply "gone after our signal". */
  note?: string;
}

/** Why a kill was not carried out (bounded: metric label values). */
export type { KillSkipCode };

export interface KillTreeResult {
  kind: 'kill-tree';
  project: string;
  topPid: number;
  startTicks: number | null;
  /** The verdict the plan acted on, and the one re-verification found (null when it found none). */
  verdict: AdapterVerdict;
  freshVerdict: AdapterVerdict | null;
  /** Why it was planned. */
  reason: string;
  selectedBy: KillTreeAction['selectedBy'];
  forced: boolean;
  /** 'ok': every process is gone; 'failed': some still alive or EPERM; 'skipped': re-verification refused. */
  outcome: 'ok' | 'failed' | 'skipped';
  /** Set when skipped (why) or failed ('eperm' | 'still_alive' | 'aborted'). */
  code?: KillSkipCode | KillFailureCode;
  /** One line for humans. */
  detail: string;
  /** The tree as planned (pids, start ticks, argv, jobs) — what the audit trail records. */
  tree: AdapterTree;
  /** Jobs and their statuses as re-verified (the planned ones when re-verification found no tree). */
  jobs: { id: string; status: string }[];
  groupSignals: { pgid: number; signal: SignalName; result: 'sent' | 'esrch' | 'eperm' }[];
  processes: ProcessOutcome[];
  bytesFreed: number;
  durationMs: number;
}

export type RecheckResult = AdapterTree | { refused: string; code?: KillSkipCode };

/** What every kill's stages need (trees and sessions alike). */
export interface KillStageDeps {
  /** Where identities and group members are re-read: the same port the plan was made from. Default /proc. */
  processes?: ProcessPort;
  /** Default process.kill. Must throw an error with `code` ESRCH / EPERM like process.kill. */
  kill?: (pid: number, signal: SignalName) => void;
  sleep?: (ms: number) => Promise<void>;
  /** Wait between SIGTERM and SIGKILL. Default 5000 (stepwise's own teardown waits 5 s). */
  killWaitMs?: number;
  pollMs?: number;
  /** How long to wait for processes to vanish after SIGKILL. Default 3000. */
  confirmWaitMs?: number;
  /** Aborting cancels the wait and the SIGKILL escalation (nothing more is signalled). */
  signal?: AbortSignal;
  /** Never signalled, not even through a group: the watchdog and its ancestors. Default [own pid, parent pid]. */
  protectedPids?: number[];
}

export interface KillTreeDeps extends KillStageDeps {
  /** Re-collect the project and return the fresh tree with the same top identity, or why not. */
  recheck: () => RecheckResult;
}


function errCode(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | null)?.code;
}

const defaultSleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function jobsOf(tree: AdapterTree): { id: string; status: string }[] {
  return tree.jobs.map((j) => ({ id: j.id, status: j.status }));
}


interface Target {
  proc: TreeProcess;
  outcome: ProcessOutcome;
  /** Still to watch: verified, signalled (or to be), not finished. */
  open: boolean;
}

/** What the stages need: how to read an identity, signal, wait; what is never signalled. */
interface Stage {
  identity: (pid: number) => IdentityRead;
  kill: (pid: number, signal: SignalName) => void;
  sleep: (ms: number) => Promise<void>;
  pollMs: number;
  signal: AbortSignal | undefined;
  protectedPids: ReadonlySet<number>;
  /** Every live member of a group, listed now (null: cannot be told). */
  groupMembers: (pgid: number) => LiveIdentity[] | null;
}

function stageOf(deps: KillStageDeps): Stage {
  const processes = deps.processes ?? defaultProcessPort();
  return {
    identity: (pid: number) => processes.identity(pid),
    kill: deps.kill ?? ((pid: number, sig: SignalName) => void process.kill(pid, sig)),
    sleep: deps.sleep ?? defaultSleep,
    pollMs: deps.pollMs ?? 50,
    signal: deps.signal,
    protectedPids: new Set(deps.protectedPids ?? [process.pid, process.ppid]),
    groupMembers: (pgid: number) => processes.groupMembers(pgid),
  };
}

function newOutcome(p: TreeProcess, result: ProcessResult, note?: string): ProcessOutcome {
  return { pid: p.pid, startTicks: p.startTicks, argv: p.argv, signals: [], result, bytesFreed: 0, ...(note ? { note } : {}) };
}

/**
 * Stage 1: each fresh process's identity re-read; only exact (pid, start ticks) matches become
 * targets. Planned processes the fresh view no longer holds are reported, never signalled (gone
 * is fine; alive means it left the tree and is no longer provably ours).
 */
function verifyTargets(stage: Stage, planned: readonly TreeProcess[], fresh: readonly TreeProcess[], leftNote: string): { targets: Target[]; outcomes: ProcessOutcome[] } {
  const targets: Target[] = [];
  const outcomes: ProcessOutcome[] = [];
  for (const p of fresh) {
    const read = stage.identity(p.pid);
    const now = read.kind === 'live' ? read.id : null;
    if (read.kind === 'unknown') {
      // Unreadable is unknown, never dead: not signalled, and the kill cannot be called done.
      outcomes.push(newOutcome(p, 'still-alive', `identity unreadable (${read.error}): not signalled`));
    } else if (now === null || isDead(now)) {
      outcomes.push(newOutcome(p, 'gone', 'exited before any signal'));
    } else if (now.startTicks !== p.startTicks) {
      // Its pid now names another process: the original is gone and the new one is not ours.
      outcomes.push(newOutcome(p, 'skipped-identity-changed', `pid ${p.pid} now names another process (start ticks ${now.startTicks}): not signalled`));
    } else {
      const o = newOutcome(p, 'still-alive');
      outcomes.push(o);
      targets.push({ proc: p, outcome: o, open: true });
    }
  }
  for (const p of planned) {
    if (fresh.some((q) => q.pid === p.pid)) continue;
    const read = stage.identity(p.pid);
    if (read.kind === 'gone' || (read.kind === 'live' && (read.id.startTicks !== p.startTicks || isDead(read.id)))) outcomes.push(newOutcome(p, 'gone', 'exited since the plan'));
    else outcomes.push(newOutcome(p, 'still-alive', read.kind === 'unknown' ? `identity unreadable (${read.error}): not signalled` : leftNote));
  }
  return { targets, outcomes };
}

/**
 * Re-read a target; close it when gone (or reused). Its live identity while it is the same
 * process; null when it must not be signalled now (closed, or unreadable: then it stays open,
 * unconfirmed, and ends as still alive unless a later read says otherwise).
 */
function current(stage: Stage, t: Target): LiveIdentity | null {
  if (!t.open) return null;
  const read = stage.identity(t.proc.pid);
  if (read.kind === 'unknown') {
    t.outcome.note = `identity unreadable (${read.error}): not signalled`;
    return null;
  }
  const now = read.kind === 'live' ? read.id : null;
  if (now === null || isDead(now)) {
    t.open = false;
    t.outcome.result = 'gone';
    return null;
  }
  if (now.startTicks !== t.proc.startTicks) {
    // The original exited and its pid was reused: the original is gone; the new one is not ours.
    t.open = false;
    t.outcome.result = t.outcome.signals.length > 0 ? 'gone' : 'skipped-identity-changed';
    if (t.outcome.signals.length === 0) t.outcome.note = `pid ${t.proc.pid} now names another process: not signalled`;
    return null;
  }
  return now;
}

type GroupSignals = KillTreeResult['groupSignals'];

/**
 * Would a signal to group `pgid` reach pid 1 or a protected process (the watchdog, its parent)?
 * Asked of those few processes directly — their group ids, read now — before the group is
 * listed (below), so the refusal names them. null: it would not; else why the group is not
 * signalled (a protected process that cannot be read counts as reached).
 */
function groupReachesProtected(stage: Stage, pgid: number): string | null {
  for (const pid of new Set([1, ...stage.protectedPids])) {
    const r = stage.identity(pid);
    if (r.kind === 'unknown') return `protected pid ${pid} could not be read (${r.error})`;
    if (r.kind === 'live' && !isDead(r.id) && r.id.pgid === pgid) return `it holds protected pid ${pid}`;
  }
  return null;
}

/**
 * Would a signal to group `pgid` reach a process that is not one of the verified targets? The
 * re-verification reads the tree (its pids, remembered members, their descendants), not the
 * host: a member born since the last cycle whose parent then exited (a backgrounded tool
 * command) sits under init or a subreaper, in this group, unseen — its uid never checked. So the
 * group's members are listed now (one stat pass: the cost of a group signal) and the group is
 * signalled only when every live member is a target; else each target alone. null: none.
 */
function groupHoldsStrangers(stage: Stage, pgid: number, targets: readonly Target[]): string | null {
  const members = stage.groupMembers(pgid);
  if (members === null) return 'its members could not be listed';
  const verified = new Set(targets.filter((t) => t.open).map((t) => `${t.proc.pid}:${t.proc.startTicks}`));
  const stranger = members.find((m) => !verified.has(`${m.pid}:${m.startTicks}`));
  return stranger ? `it holds process ${stranger.pid}, which the re-verification did not see` : null;
}

/**
 * Stage 2: one signal to the tree's own group (when `pgid` is given: the top pid, carried by a
 * verified member, so not reusable) and to every verified target outside it, each re-read right
 * before its signal. `pgid` null: every target individually (a session inside a live adapter).
 */
function signalTargets(stage: Stage, targets: readonly Target[], sig: SignalName, pgid: number | null, groupSignals: GroupSignals): void {
  const covered = new Set<Target>();
  if (pgid !== null) {
    const inGroup: Target[] = [];
    for (const t of targets) if (current(stage, t)?.pgid === pgid) inGroup.push(t);
    if (inGroup.length > 0) {
      // Its members are all descendants of our session leader. Still, never send a group signal
      // that would reach a protected process.
      const blocked = groupReachesProtected(stage, pgid) ?? groupHoldsStrangers(stage, pgid, targets);
      if (blocked === null) {
        try {
          stage.kill(-pgid, sig);
          groupSignals.push({ pgid, signal: sig, result: 'sent' });
          for (const t of inGroup) {
            t.outcome.signals.push({ signal: sig, via: 'group' });
            covered.add(t);
          }
        } catch (err) {
          const code = errCode(err);
          // ESRCH: the group emptied meanwhile (its members are gone: the checks below see it).
          // EPERM (or anything else): fall back to individual signals, each judged on its own.
          groupSignals.push({ pgid, signal: sig, result: code === 'ESRCH' ? 'esrch' : 'eperm' });
          if (code === 'ESRCH') for (const t of inGroup) covered.add(t);
        }
      } else {
        for (const t of inGroup) t.outcome.note ??= `group ${pgid} not signalled (${blocked}): signalled individually`;
      }
    }
  }
  // Individually: members outside the group (setsid'd descendants escape group kills), and all
  // members when no group signal was sent. Each identity re-read right before its signal.
  for (const t of targets) {
    if (covered.has(t) || current(stage, t) === null) continue;
    try {
      stage.kill(t.proc.pid, sig);
      t.outcome.signals.push({ signal: sig, via: 'process' });
    } catch (err) {
      const code = errCode(err);
      t.open = false;
      if (code === 'ESRCH') t.outcome.result = 'gone'; // gone between the read and the signal: success
      else {
        // EPERM: reported once, never retried (not even with SIGKILL).
        t.outcome.result = 'eperm';
        t.outcome.note = `${sig}: ${code ?? (err as Error).message}`;
      }
    }
  }
}

/** Poll until every open target is gone, the time is up, or the signal aborts. True when all gone. */
async function waitGone(stage: Stage, targets: readonly Target[], ms: number, abortable: boolean): Promise<boolean> {
  const deadline = performance.now() + ms;
  for (;;) {
    for (const t of targets) current(stage, t);
    if (!targets.some((t) => t.open)) return true;
    if (abortable && stage.signal?.aborted) return false;
    if (performance.now() >= deadline) return false;
    await stage.sleep(Math.min(stage.pollMs, Math.max(1, deadline - performance.now())));
  }
}

/** Stages 2–3: SIGTERM, wait (cancellable), SIGKILL what remains, confirm. True when aborted before SIGKILL. */
async function terminate(stage: Stage, targets: readonly Target[], o: { pgid: number | null; killWaitMs: number; confirmWaitMs: number; groupSignals: GroupSignals }): Promise<boolean> {
  let aborted = false;
  if (targets.length > 0) {
    signalTargets(stage, targets, 'SIGTERM', o.pgid, o.groupSignals);
    const allGone = await waitGone(stage, targets, o.killWaitMs, true);
    if (!allGone && stage.signal?.aborted) {
      // Cancelled: the escalation is dropped, nothing more is signalled.
      aborted = true;
      for (const t of targets) if (t.open) t.outcome.note = 'aborted before SIGKILL';
    } else if (!allGone) {
      signalTargets(stage, targets, 'SIGKILL', o.pgid, o.groupSignals);
      await waitGone(stage, targets, o.confirmWaitMs, false);
    }
  }
  for (const t of targets) {
    if (t.open) t.outcome.result = 'still-alive';
    // Memory is freed when a process we signalled is gone (a zombie has freed it too).
    if (t.outcome.result === 'gone' && t.outcome.signals.length > 0) t.outcome.bytesFreed = t.proc.rssBytes + t.proc.swapBytes;
  }
  return aborted;
}

/** Stage 4: the outcome, its code and one line for humans. */
function verdictOf(outcomes: readonly ProcessOutcome[], targets: readonly Target[], aborted: boolean): { outcome: 'ok' | 'failed'; code?: 'aborted' | 'eperm' | 'still_alive'; detail: string } {
  const alive = outcomes.filter((o) => o.result === 'still-alive');
  const eperm = outcomes.filter((o) => o.result === 'eperm');
  const gone = outcomes.filter((o) => o.result === 'gone');
  const signalled = outcomes.some((o) => o.signals.some((x) => x.signal === 'SIGKILL')) ? 'SIGTERM, then SIGKILL' : 'SIGTERM';
  if (alive.length === 0 && eperm.length === 0) {
    return { outcome: 'ok', detail: targets.length === 0 ? `all ${outcomes.length} process(es) already gone` : `${gone.length} process(es) gone (${signalled})` };
  }
  const parts: string[] = [];
  if (alive.length) parts.push(`${alive.length} still alive (pid ${alive.map((o) => o.pid).join(', ')})`);
  if (eperm.length) parts.push(`${eperm.length} not permitted (pid ${eperm.map((o) => o.pid).join(', ')})`);
  return { outcome: 'failed', code: aborted ? 'aborted' : eperm.length > 0 ? 'eperm' : 'still_alive', detail: `${parts.join('; ')}${aborted ? ': aborted before SIGKILL' : ''}` };
}

type Early = { outcome: 'skipped'; code: KillSkipCode; detail: string } | { outcome: 'ok'; detail: string; processes: ProcessOutcome[] };

/**
 * Stage 1a: the caller's re-collection. A refusal whose planned processes are all gone already
 * (reaped by another executor, or exited on its own) is success, not a failure; nothing is
 * signalled here in any case. A throwing re-collection is a bug there: no evidence, no signal.
 */
function recheckStage<T extends object>(stage: Stage, recheck: () => T | { refused: string; code?: KillSkipCode }, planned: readonly TreeProcess[]): { fresh: T } | { early: Early } {
  if (stage.signal?.aborted) return { early: { outcome: 'skipped', code: 'aborted', detail: 'aborted before re-verification: nothing signalled' } };
  let fresh: T | { refused: string; code?: KillSkipCode };
  try {
    fresh = recheck();
  } catch (err) {
    return { early: { outcome: 'skipped', code: 'source_down', detail: `re-verification failed (${(err as Error).message}): nothing signalled` } };
  }
  if (!('refused' in fresh)) return { fresh };
  if (allPlannedGone(stage, planned)) {
    return { early: { outcome: 'ok', detail: `already gone before re-verification (${fresh.refused})`, processes: planned.map((p) => newOutcome(p, 'gone', 'already gone')) } };
  }
  return { early: { outcome: 'skipped', code: fresh.code ?? 'identity_changed', detail: fresh.refused } };
}

/** Every planned process gone (or a zombie, or its pid now another process): nothing left to do. */
function allPlannedGone(stage: Stage, planned: readonly TreeProcess[]): boolean {
  return planned.length > 0 && planned.every((p) => {
    const read = stage.identity(p.pid);
    return read.kind === 'gone' || (read.kind === 'live' && (read.id.startTicks !== p.startTicks || isDead(read.id)));
  });
}

export async function killTree(action: KillTreeAction, deps: KillTreeDeps): Promise<KillTreeResult> {
  const t0 = performance.now();
  const stage = stageOf(deps);
  const planned = action.tree;

  const base = {
    kind: 'kill-tree' as const,
    project: action.project,
    topPid: planned.topPid,
    startTicks: planned.top?.startTicks ?? null,
    verdict: action.verdict,
    reason: action.reason,
    selectedBy: action.selectedBy,
    forced: action.forced,
    tree: planned,
  };
  const finish = (r: Omit<KillTreeResult, keyof typeof base | 'durationMs' | 'bytesFreed'>): KillTreeResult => ({
    ...base,
    ...r,
    bytesFreed: r.processes.reduce((sum, p) => sum + p.bytesFreed, 0),
    durationMs: Math.round(performance.now() - t0),
  });
  const skipped = (code: KillSkipCode, detail: string, freshVerdict: AdapterVerdict | null, jobs = jobsOf(planned)): KillTreeResult =>
    finish({ outcome: 'skipped', code, detail, freshVerdict, jobs, groupSignals: [], processes: [] });

  // ── 1. re-verification ────────────────────────────────────────────────────────────────────
  const checked = recheckStage(stage, deps.recheck, planned.processes);
  if ('early' in checked) {
    const e = checked.early;
    if (e.outcome === 'skipped') return skipped(e.code, e.detail, null);
    return finish({ outcome: 'ok', detail: e.detail, freshVerdict: null, jobs: jobsOf(planned), groupSignals: [], processes: e.processes });
  }
  const fresh = checked.fresh;
  if (!sameTree(planned, fresh)) {
    return skipped('identity_changed', `tree ${planned.topPid}: top identity changed (start ticks ${planned.top?.startTicks ?? '?'} → ${fresh.top?.startTicks ?? '?'}): not the planned process`, fresh.verdict, jobsOf(fresh));
  }
  const vp = verdictProblem(action, fresh);
  if (vp) return skipped('verdict_changed', vp, fresh.verdict, jobsOf(fresh));
  const op = ownershipProblem(planned, fresh, stage.protectedPids);
  if (op) return skipped('ownership_changed', op, fresh.verdict, jobsOf(fresh));

  const { targets, outcomes } = verifyTargets(stage, planned.processes, fresh.processes, 'no longer part of the tree at re-verification: not signalled');
  // ── 2–3. SIGTERM to the group and every verified member, wait, SIGKILL, confirm ────────────
  const groupSignals: GroupSignals = [];
  const aborted = await terminate(stage, targets, { pgid: fresh.topPid, killWaitMs: deps.killWaitMs ?? 5000, confirmWaitMs: deps.confirmWaitMs ?? 3000, groupSignals });
  // ── 4. report ─────────────────────────────────────────────────────────────────────────────
  const v = verdictOf(outcomes, targets, aborted);
  return finish({ ...v, freshVerdict: fresh.verdict, jobs: jobsOf(fresh), groupSignals, processes: outcomes });
}

// ── one session inside a live adapter ─────────────────────────────────────────────────────────

export type SessionRecheckResult = { tree: AdapterTree; session: AdapterSession } | { refused: string; code?: KillSkipCode };

export interface KillSessionDeps extends KillStageDeps {
  /** Re-collect and re-plan: the fresh session with the same CLI identity, still to be stopped, or why not. */
  recheck: () => SessionRecheckResult;
}

export interface KillSessionResult {
  kind: 'kill-session';
  project: string;
  sessionId: string;
  /** The CLI process as planned. */
  pid: number;
  startTicks: number;
  /** The adapter tree it lives in (never signalled as a whole). */
  topPid: number;
  verdict: typeof SESSION_KILL_VERDICT;
  freshVerdict: SessionVerdict | null;
  reason: string;
  selectedBy: 'sessions';
  outcome: 'ok' | 'failed' | 'skipped';
  code?: KillSkipCode | KillFailureCode;
  detail: string;
  session: AdapterSession;
  tree: AdapterTree;
  jobs: { id: string; status: string }[];
  processes: ProcessOutcome[];
  bytesFreed: number;
  durationMs: number;
}

/**
 * Stop one leaked session: its CLI and that CLI's descendants, each by pid (never by group: the
 * group is the adapter's, shared with the other sessions). The real adapter survives a session
 * CLI's death and keeps its other sessions (claude-agent-acp 0.101.0, measured).
 */
export async function killSession(action: KillSessionAction, deps: KillSessionDeps): Promise<KillSessionResult> {
  const t0 = performance.now();
  const stage = stageOf(deps);
  const planned = action.session;
  const base = {
    kind: 'kill-session' as const,
    project: action.project,
    sessionId: planned.sessionId,
    pid: planned.pid,
    startTicks: planned.startTicks,
    topPid: action.tree.topPid,
    verdict: SESSION_KILL_VERDICT as typeof SESSION_KILL_VERDICT,
    reason: action.reason,
    selectedBy: action.selectedBy,
    session: planned,
    tree: action.tree,
  };
  const jobs = (x: AdapterSession) => x.jobs.map((j) => ({ id: j.id, status: j.status }));
  const finish = (r: Omit<KillSessionResult, keyof typeof base | 'durationMs' | 'bytesFreed'>): KillSessionResult => ({
    ...base,
    ...r,
    bytesFreed: r.processes.reduce((sum, p) => sum + p.bytesFreed, 0),
    durationMs: Math.round(performance.now() - t0),
  });
  const skipped = (code: KillSkipCode, detail: string, freshVerdict: SessionVerdict | null): KillSessionResult =>
    finish({ outcome: 'skipped', code, detail, freshVerdict, jobs: jobs(planned), processes: [] });

  const checked = recheckStage(stage, deps.recheck, planned.processes);
  if ('early' in checked) {
    const e = checked.early;
    if (e.outcome === 'skipped') return skipped(e.code, e.detail, null);
    return finish({ outcome: 'ok', detail: e.detail, freshVerdict: null, jobs: jobs(planned), processes: e.processes });
  }
  const fresh = checked.fresh;
  const s = fresh.session;
  if (s.pid !== planned.pid || s.startTicks !== planned.startTicks || s.sessionId !== planned.sessionId) {
    return skipped('identity_changed', `session ${planned.sessionId}: its CLI is no longer pid ${planned.pid} (start ticks ${planned.startTicks})`, s.verdict);
  }
  if (s.verdict !== 'leaked') return skipped('verdict_changed', `session ${planned.sessionId} is now ${s.verdict}: ${s.reason}`, s.verdict);
  const uids = new Set(planned.processes.map((p) => p.uid));
  const foreign = s.processes.find((p) => p.pid <= 1 || stage.protectedPids.has(p.pid) || p.pid === fresh.tree.topPid || !uids.has(p.uid));
  if (foreign) return skipped('ownership_changed', `session ${planned.sessionId} now holds pid ${foreign.pid}, which is not provably the session's`, s.verdict);

  const { targets, outcomes } = verifyTargets(stage, planned.processes, s.processes, 'no longer part of the session at re-verification: not signalled');
  const aborted = await terminate(stage, targets, { pgid: null, killWaitMs: deps.killWaitMs ?? 5000, confirmWaitMs: deps.confirmWaitMs ?? 3000, groupSignals: [] });
  const v = verdictOf(outcomes, targets, aborted);
  return finish({ ...v, freshVerdict: s.verdict, jobs: jobs(s), processes: outcomes });
}
