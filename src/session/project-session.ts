// One project's read side: sources (each reporting its own health; one failing source never
// aborts the cycle) → the pure classifier → an inventory. Long-lived in the daemon (the store
// reader keeps its incremental index), short-lived in one-shot commands.

import type { Config } from '../config/schema.js';
import { classify } from '../core/classify.js';
import { isDead, matchesMarker } from '../core/process-tree.js';
import { resolveServer } from '../core/server.js';
import { startEpoch } from '../core/time.js';
import type { Policy, ProjectInventory, RememberedMember, SourceHealth } from '../core/types.js';
import { readPidFiles } from '../sources/pid-files.js';
import type { ProcessPort } from '../sources/process-port.js';
import type { Runtime } from './runtime.js';
import { defaultProcessPort } from '../sources/default-port.js';
import { ArgvCache } from '../sources/processes.js';
import { projectPaths, readServerPidFile, resolvePidsDir, type ProjectPaths } from '../sources/project.js';
import { StoreReader, type StoreReaderOptions } from '../sources/store.js';

export interface ProjectSessionOptions {
  root: string;
  db?: string | null;
  pidsDir?: string | null;
  /** The process-table port (one per run, shared with the effects). Default: /proc. */
  processes?: ProcessPort;
  env?: NodeJS.ProcessEnv;
  storeBusyMs?: number;
  policy: Policy;
  /**
   * Seconds between full sweeps of the process table (every pid); cycles in between read only
   * the processes that can matter (targeted). 0: every cycle is a full sweep. Default 60.
   */
  fullSweepSeconds?: number;
  /** Store reader tuning (tests, benchmarks): how long finished runs stay tracked, resync period. */
  storeOptions?: Partial<Pick<StoreReaderOptions, 'retainFinishedMs' | 'resyncIntervalMs'>>;
}

export const DEFAULT_FULL_SWEEP_SECONDS = 60;

export interface CollectOptions {
  /**
   * 'recheck': the re-verification right before a kill — targeted whenever a full sweep was done
   * before (never a sweep for its own sake: it reads the processes that can matter, not the host).
   * Default 'cycle': a full sweep when one is due (period, first read, an inconsistent view).
   */
  purpose?: 'cycle' | 'recheck';
  /**
   * With 'recheck': the pids of the one tree about to be signalled. The read is then that tree's
   * processes (and the ones remembered in it), their descendants and parents, and the server —
   * not the other trees: the inventory speaks for that tree only, and the session's memory of
   * trees, runs and pid files is left as it was.
   */
  focus?: readonly number[];
}

/** Why the last read swept the whole table (null: it was targeted). */
export type SweepReason = 'first read' | 'period' | 'inconsistent' | 'no children files' | 'always' | null;

export class ProjectSession {
  readonly paths: ProjectPaths;
  readonly store: StoreReader;
  readonly processes: ProcessPort;
  /**
   * argv of processes already seen (same pid, start time and comm), pruned every read: keeps
   * a daemon's cycle near the cost of reading stat alone. A marker is only a hint, so the rare
   * exec to the same comm with new arguments can at worst hide a hint, never invent evidence.
   */
  private readonly argvCache = new ArgvCache();

  constructor(readonly options: ProjectSessionOptions) {
    this.paths = projectPaths(options.root, { db: options.db ?? null, pidsDir: options.pidsDir ?? null, env: options.env ?? {} });
    this.processes = options.processes ?? defaultProcessPort();
    this.store = new StoreReader({ ...options.storeOptions, dbPath: this.paths.dbPath, busyTimeoutMs: options.storeBusyMs ?? 2000 });
  }

  get root(): string {
    return this.paths.root;
  }

  /**
   * Read every source and classify. Never throws for a source failure.
   *
   * The process table is read in full (every pid) on the first call, every fullSweepSeconds and
   * after an inconsistent targeted view; otherwise targeted: the server, the pids the store's
   * runs and the pid files named last time, every tree member remembered by (pid, start time),
   * their descendants (task/<tid>/children) and parents. A pid named now but not read (a new
   * pid file, a run naming a process outside that set) makes the cycle read again with it.
   */
  collect(nowEpochSeconds: number = Date.now() / 1000, opts: CollectOptions = {}): ProjectInventory {
    const { policy } = this.options;
    const sources: Record<string, SourceHealth> = {};

    const serverFile = readServerPidFile(this.paths.serverPidPath);
    const serverPid = serverFile.pidFile?.pid ?? null;

    const sweep = this.sweepReason(opts.purpose ?? 'cycle');
    const focus = sweep === null && opts.purpose === 'recheck' && opts.focus ? this.focusSeeds(opts.focus) : null;
    const seeds = sweep === null && !focus ? this.seeds(serverPid) : focus;
    // Pid files can only be located once the server's cwd is known, but the process table read
    // wants their pids to decide which processes need details: read the default folder's names
    // first only when an override is given; otherwise details are chosen by marker and server.
    const procs = this.processes.table({
      argvCache: this.argvCache,
      detailFor: (p) => p.pid === serverPid || p.ppid === serverPid || matchesMarker(p.argv, policy.markers) || this.interesting.has(p.pid) || this.interesting.has(p.pgid) || this.members.has(p.pid),
      ...(seeds ? { targeted: { pids: seeds, ...(focus && serverPid !== null ? { context: [serverPid] } : {}) } } : {}),
    });
    sources.processes = procs.health;
    const table = procs.health.ok || procs.table.processes.length > 0 ? { ...procs.table, remembered: [...this.members.values()] } : null;
    const probed = procs.mode === 'targeted' ? (procs.probed ?? new Set<number>()) : null;
    const sweepReason = procs.mode === 'full' ? (sweep ?? 'no children files') : null;
    this.lastRead = { mode: procs.mode, sweepReason, processes: procs.table.processes.length, ...(sweepReason === 'inconsistent' && this.inconsistency ? { inconsistency: this.inconsistency } : {}) };
    // A sweep that listed the host counts, also when some entries were unreadable (said in its health).
    if (procs.mode === 'full' && procs.table.processes.length > 0) this.lastSweepAt = nowMs();
    if (probed && table && !focus) this.noteInconsistency(table.processes, probed);

    const serverT0 = performance.now();
    if (table && serverPid !== null) {
      const p = table.processes.find((x) => x.pid === serverPid);
      if (p) p.cwd = this.processes.cwd(serverPid);
    }
    const server = resolveServer(serverFile.pidFile, serverFile.problem, table, policy.clockToleranceSeconds);
    // A missing server.pid is a stopped server, not a fault. An unreadable one, or a live
    // server whose cwd cannot be read (the pids folder is relative to it), is said, not guessed.
    let serverError: string | null = null;
    if (serverFile.pidFile === null && !/no server\.pid/.test(serverFile.problem ?? '')) serverError = `server down: ${serverFile.problem}`;
    else if (server.alive && server.cwd === null && !this.paths.pidsDirOverride) {
      serverError = `server ${server.identity?.pid} cwd unreadable: pid files looked for in ${this.paths.stepwiseDir}/pids (use --pids-dir)`;
    }
    sources.server = {
      ok: serverError === null,
      ...(serverError ? { error: serverError } : {}),
      durationSeconds: (performance.now() - serverT0) / 1000,
    };

    const pidsDir = resolvePidsDir(this.paths, server.alive ? server.cwd : null);
    const pidFiles = readPidFiles(pidsDir);
    sources.pidfiles = pidFiles.health;

    // The store is asked about pids that are alive now (a run naming a dead pid can never be
    // evidence again: any later process with that pid started after the run finished); a
    // focused re-verification adds the last cycle's (below).
    // Their start times let the store drop finished runs that ended before the process started
    // (a reused pid): bounded tracking on hosts that cycle through pids.
    // Live group ids count too: when an adapter's top died, its group lives on under the dead
    // leader's pid (not reusable while it is a live group id) and the run still names it. Such a
    // group's start is its earliest live member's (the leader started no later).
    const live = new Set<number>();
    const starts = new Map<number, number>();
    const alive = (table?.processes ?? []).filter((p) => !isDead(p));
    for (const p of alive) {
      live.add(p.pid);
      if (table) starts.set(p.pid, startEpoch(table.clock, p.startTicks));
    }
    const leaders = new Set(live);
    for (const p of alive) {
      if (p.pgid <= 1 || leaders.has(p.pgid) || !table) continue;
      live.add(p.pgid);
      const s = startEpoch(table.clock, p.startTicks);
      const known = starts.get(p.pgid);
      if (known === undefined || s < known) starts.set(p.pgid, s);
    }
    // A focused re-verification read only one tree, but the store's index is shared with the
    // cycles: asked about that tree alone it would let go of every other tree's finished runs
    // (and a resync due now would never bring them back). It asks about what the last cycle
    // did as well; the focused tree's pids, read now, have their start times from now.
    if (focus) {
      for (const pid of this.storeInterest.live) live.add(pid);
      for (const [pid, start] of this.storeInterest.starts) if (!starts.has(pid)) starts.set(pid, start);
    } else this.storeInterest = { live, starts };
    const storeRead = this.store.read({ pidsOfInterest: live, pidStartEpochs: starts });
    sources.store = storeRead.health;

    // Remember which pids the store ties to runs, so the process read details them too (uid,
    // swap). On a first read a run may name a process without a marker or pid file: read the
    // table once more then, rather than judge a tree whose uid is unknown. A targeted read that
    // did not look at a pid named now (a new pid file, a run) reads again with it.
    const runPids = new Set((storeRead.snapshot?.runs ?? []).flatMap((r) => [r.pid, r.pgid]).filter((p): p is number => p !== null));
    const filePids = new Set(pidFiles.entries.map((f) => f.pid).filter((p): p is number => p !== null));
    if (!focus) {
      this.interesting = runPids;
      this.filePids = filePids;
    }
    const undetailed = (table?.processes ?? []).some((p) => (runPids.has(p.pid) || runPids.has(p.pgid)) && !p.detailed && !isDead(p));
    const unread = probed !== null && !focus && [...runPids, ...filePids, ...(serverPid !== null ? [serverPid] : [])].some((p) => p > 0 && !probed.has(p));
    if ((undetailed || unread) && !this.rereading) {
      this.rereading = true;
      try {
        return this.collect(nowEpochSeconds, opts);
      } finally {
        this.rereading = false;
      }
    }

    const inv = classify({
      root: this.paths.root,
      pidsDir,
      dbPath: this.paths.dbPath,
      processes: table,
      server,
      pidFiles: pidFiles.entries,
      store: storeRead.health.ok ? storeRead.snapshot : null,
      sources,
      policy,
      now: nowEpochSeconds,
    });
    if (table && !focus) this.remember(inv);
    return inv;
  }

  /** What the last collect read: a full sweep (and why) or a targeted read; how many processes. */
  lastRead: { mode: 'full' | 'targeted'; sweepReason: SweepReason; processes: number; inconsistency?: string } | null = null;

  /** Every process of every tree, by pid: the next targeted read starts from them (pruned every read). */
  private members = new Map<number, RememberedMember & { pgid: number }>();
  private filePids = new Set<number>();
  private lastSweepAt: number | null = null;
  private sweepDue = false;
  /** What made the targeted view inconsistent (said in the next sweep's lastRead). */
  private inconsistency: string | null = null;

  private sweepReason(purpose: 'cycle' | 'recheck'): SweepReason {
    const period = this.options.fullSweepSeconds ?? DEFAULT_FULL_SWEEP_SECONDS;
    if (period <= 0) return 'always';
    if (this.lastSweepAt === null) return 'first read';
    if (purpose === 'recheck') return null;
    if (this.sweepDue) return 'inconsistent';
    if (nowMs() - this.lastSweepAt >= period * 1000) return 'period';
    return null;
  }

  /** A focused re-verification: the tree's pids and every process remembered in a tree they top. */
  private focusSeeds(pids: readonly number[]): Set<number> {
    const out = new Set<number>(pids);
    for (const m of this.members.values()) if (out.has(m.topPid)) out.add(m.pid);
    return out;
  }

  private seeds(serverPid: number | null): Set<number> {
    const out = new Set<number>([...this.interesting, ...this.filePids, ...this.members.keys()]);
    if (serverPid !== null) out.add(serverPid);
    return out;
  }

  /**
   * A targeted view that may miss something the full sweep would see: a remembered member gone
   * (its children, if any, were reparented out of reach) or in another group or session than
   * before. The next cycle sweeps.
   */
  private noteInconsistency(processes: readonly { pid: number; startTicks: number; pgid: number }[], probed: ReadonlySet<number>): void {
    const byPid = new Map(processes.map((p) => [p.pid, p] as const));
    for (const m of this.members.values()) {
      const p = byPid.get(m.pid);
      if (!probed.has(m.pid)) continue;
      if (!p || p.startTicks !== m.startTicks || p.pgid !== m.pgid) {
        this.sweepDue = true;
        this.inconsistency = !p || p.startTicks !== m.startTicks ? `member ${m.pid} of tree ${m.topPid} gone` : `member ${m.pid} of tree ${m.topPid} left group ${m.pgid} for ${p.pgid}`;
        return;
      }
    }
  }

  private remember(inv: ProjectInventory): void {
    const next = new Map<number, RememberedMember & { pgid: number }>();
    for (const t of inv.adapters) {
      if (t.verdict === 'in-vm' || !t.top) continue;
      for (const p of t.processes) next.set(p.pid, { pid: p.pid, startTicks: p.startTicks, pgid: p.pgid, topPid: t.topPid, topStartTicks: t.top.startTicks });
    }
    this.members = next;
    if (this.lastRead?.mode === 'full') {
      this.sweepDue = false;
      this.inconsistency = null;
    }
  }

  private interesting = new Set<number>();
  /** The last cycle's question to the store (pids of interest and their starts), replaced each cycle. */
  private storeInterest: { live: ReadonlySet<number>; starts: ReadonlyMap<number, number> } = { live: new Set(), starts: new Map() };
  private rereading = false;

  close(): void {
    this.store.close();
  }
}

function nowMs(): number {
  return performance.now();
}

/** One session per project root, from the validated config (CLI commands and the daemon). */
export function sessionsFromConfig(
  config: Config,
  roots: string[],
  env: NodeJS.ProcessEnv,
  runtime: Pick<Runtime, 'policy' | 'processes'>,
  storeOptions?: ProjectSessionOptions['storeOptions'],
): ProjectSession[] {
  const { policy, processes } = runtime;
  return roots.map(
    (root) =>
      new ProjectSession({
        root,
        db: config.db,
        pidsDir: config.pidsDir,
        processes,
        env,
        storeBusyMs: config.storeBusyMs,
        fullSweepSeconds: config.fullSweepSeconds,
        policy,
        ...(storeOptions ? { storeOptions } : {}),
      }),
  );
}
