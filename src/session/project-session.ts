// One project's read side: sources (each reporting its own health; one failing source never
// aborts the cycle) → the pure classifier → an inventory. Long-lived in the daemon (the store
// reader keeps its incremental index), short-lived in one-shot commands.

import type { Config } from '../config/schema.js';
import { classify } from '../core/classify.js';
import { isDead, matchesMarker } from '../core/process-tree.js';
import { resolveServer } from '../core/server.js';
import { startEpoch } from '../core/time.js';
import type { Policy, ProjectInventory, SourceHealth } from '../core/types.js';
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
  /** Store reader tuning (tests, benchmarks): how long finished runs stay tracked, resync period. */
  storeOptions?: Partial<Pick<StoreReaderOptions, 'retainFinishedMs' | 'resyncIntervalMs'>>;
}

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

  /** Read every source and classify. Never throws for a source failure. */
  collect(nowEpochSeconds: number = Date.now() / 1000): ProjectInventory {
    const { policy } = this.options;
    const sources: Record<string, SourceHealth> = {};

    const serverFile = readServerPidFile(this.paths.serverPidPath);
    const serverPid = serverFile.pidFile?.pid ?? null;

    // Pid files can only be located once the server's cwd is known, but the process table read
    // wants their pids to decide which processes need details: read the default folder's names
    // first only when an override is given; otherwise details are chosen by marker and server.
    const procs = this.processes.table({
      argvCache: this.argvCache,
      detailFor: (p) => p.pid === serverPid || p.ppid === serverPid || matchesMarker(p.argv, policy.markers) || this.interesting.has(p.pid) || this.interesting.has(p.pgid),
    });
    sources.processes = procs.health;
    const table = procs.health.ok || procs.table.processes.length > 0 ? procs.table : null;

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

    // The store is asked only about pids that are alive now (a run naming a dead pid can never
    // be evidence again: any later process with that pid started after the run finished).
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
    const storeRead = this.store.read({ pidsOfInterest: live, pidStartEpochs: starts });
    sources.store = storeRead.health;

    // Remember which pids the store ties to runs, so the process read details them too (uid,
    // swap). On a first read a run may name a process without a marker or pid file: read the
    // table once more then, rather than judge a tree whose uid is unknown.
    const runPids = new Set((storeRead.snapshot?.runs ?? []).flatMap((r) => [r.pid, r.pgid]).filter((p): p is number => p !== null));
    this.interesting = runPids;
    const undetailed = (table?.processes ?? []).some((p) => (runPids.has(p.pid) || runPids.has(p.pgid)) && !p.detailed && !isDead(p));
    if (undetailed && !this.rereading) {
      this.rereading = true;
      try {
        return this.collect(nowEpochSeconds);
      } finally {
        this.rereading = false;
      }
    }

    return classify({
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
  }

  private interesting = new Set<number>();
  private rereading = false;

  close(): void {
    this.store.close();
  }
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
        policy,
        ...(storeOptions ? { storeOptions } : {}),
      }),
  );
}
