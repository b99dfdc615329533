// The sidecar's heart: one cycle = collect → classify → plan → execute → publish, for every
// project. Cycles never overlap; a poke (file change, hook, API) during a cycle runs one more
// right after. The next cycle is scheduled for the interval, or sooner when a grace expires.

import type { Logger } from 'pino';
import { nextGraceExpiry, plan, type Plan, type PlanContext, type Selection } from '../core/plan.js';
import { SlidingTrend } from '../core/trend.js';
import { WAIT_CODES } from '../core/vocabulary.js';
import type { Policy, ProjectInventory } from '../core/types.js';
import type { MetricsSource, ProcessMemory, WatchdogMetrics } from '../metrics/registry.js';
import type { ProjectSession } from '../session/project-session.js';
import type { WatchedProcess } from '../sources/watched-process.js';
import type { ExecutionSummary } from '../effects/results.js';

/** What carries out a plan (effects). Injected: the daemon itself never signals anything. */
export interface PlanExecutor {
  execute(p: Plan, session: ProjectSession, opts: { actor: 'daemon' | 'api'; signal?: AbortSignal }): Promise<ExecutionSummary>;
}

export type { ExecutionSummary };

export type { WatchedProcess } from '../sources/watched-process.js';

export interface WatchdogOptions {
  sessions: ProjectSession[];
  policy: Policy;
  intervalSeconds: number;
  observeOnly: boolean;
  reapOrphans: boolean;
  /** Stop leaked sessions inside adapters that live on (reap --sessions). */
  reapSessions: boolean;
  gc: boolean;
  growthWindowSeconds: number;
  planContext: PlanContext;
  executor: PlanExecutor;
  metrics?: WatchdogMetrics;
  logger: Logger;
  watched?: WatchedProcess[];
  /** Epoch seconds. */
  now?: () => number;
  /** Debounce of pokes and file changes, ms. */
  debounceMs?: number;
}

export interface CycleStatus {
  ok: boolean;
  at: number | null;
  durationSeconds: number;
  /** The failing sources, named ("store down: database locked for more than 2000 ms"). */
  problems: string[];
  count: number;
}

export class Watchdog implements MetricsSource {
  private readonly last = new Map<string, ProjectInventory>();
  private readonly trends = new Map<string, { identity: string; trend: SlidingTrend; memory: ProcessMemory }>();
  private readonly sourceState = new Map<string, boolean>();
  private running: Promise<void> | null = null;
  private rerun = false;
  private timer: NodeJS.Timeout | null = null;
  private debounce: NodeJS.Timeout | null = null;
  private stopped = false;
  private readonly now: () => number;
  readonly status: CycleStatus = { ok: false, at: null, durationSeconds: 0, problems: ['no cycle yet'], count: 0 };
  /** Called after every cycle with the fresh inventories (the file watcher follows the pids folder). */
  onCycle: ((inventories: ProjectInventory[]) => void) | null = null;

  constructor(readonly opts: WatchdogOptions) {
    this.now = opts.now ?? (() => Date.now() / 1000);
  }

  get selection(): Selection {
    const effects = !this.opts.observeOnly;
    return {
      allLeaked: effects,
      orphans: effects && this.opts.reapOrphans,
      sessions: effects && this.opts.reapSessions,
      jobs: [],
      pids: [],
      force: false,
      gc: effects && this.opts.gc,
    };
  }

  inventories(): ProjectInventory[] {
    return this.opts.sessions.map((s) => this.last.get(s.root)).filter((i): i is ProjectInventory => i !== undefined);
  }

  processMemory(): ProcessMemory[] {
    return [...this.trends.values()].map((t) => t.memory);
  }

  /** Start cycling: one now, then on the schedule. */
  start(): void {
    this.schedule(0);
  }

  /** Ask for a cycle soon (debounced). Safe to call at any rate. */
  poke(reason: string): void {
    if (this.stopped) return;
    this.opts.logger.debug({ reason }, 'poke');
    if (this.debounce) return;
    this.debounce = setTimeout(() => {
      this.debounce = null;
      void this.runCycle(reason);
    }, this.opts.debounceMs ?? 150);
  }

  /** Run one cycle now (or right after the one in flight). Resolves when it is done. */
  async runCycle(reason = 'timer'): Promise<void> {
    if (this.stopped) return;
    if (this.running) {
      this.rerun = true;
      return this.running;
    }
    this.clearTimer();
    this.running = this.cycle(reason).finally(() => {
      this.running = null;
    });
    await this.running;
    if (this.rerun && !this.stopped) {
      this.rerun = false;
      return this.runCycle('rerun');
    }
  }

  /**
   * Carry out an explicit plan (the API's reap) under the same lock as cycles: it waits for the
   * cycle in flight and no cycle starts meanwhile.
   */
  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    while (this.running) await this.running;
    let release!: () => void;
    this.running = new Promise<void>((r) => (release = r));
    try {
      return await fn();
    } finally {
      this.running = null;
      release();
      // A timer or poke that fired meanwhile asked for a cycle: run it now, or the schedule stalls.
      if (this.rerun && !this.stopped) {
        this.rerun = false;
        void this.runCycle('rerun');
      }
    }
  }

  /** Stop scheduling; the cycle in flight (and the kill in it) finishes first. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.clearTimer();
    if (this.debounce) clearTimeout(this.debounce);
    this.debounce = null;
    while (this.running) await this.running;
  }

  private clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private schedule(seconds: number): void {
    if (this.stopped) return;
    this.clearTimer();
    this.timer = setTimeout(() => void this.runCycle('timer'), Math.max(0, seconds * 1000));
  }

  private async cycle(reason: string): Promise<void> {
    const t0 = performance.now();
    const problems: string[] = [];
    let nextWake = this.opts.intervalSeconds;
    const log = this.opts.logger;
    for (const session of this.opts.sessions) {
      let inv: ProjectInventory;
      try {
        inv = session.collect(this.now());
      } catch (err) {
        // A bug, not a source failure (sources never throw): log it and keep the daemon up.
        problems.push(`${session.root}: cycle failed: ${(err as Error).message}`);
        log.error({ project: session.root, err }, 'cycle failed');
        continue;
      }
      this.last.set(session.root, inv);
      this.noteSources(inv, problems);
      this.sampleServer(inv);

      const p = plan(inv, this.opts.policy, this.selection, this.opts.planContext);
      for (const r of p.refusals) {
        // Waits (a grace, a paused job) are not refusals: not counted; a grace sets the next wake-up.
        if (WAIT_CODES.has(r.code)) log.debug({ project: inv.root, target: r.target, reason: r.reason }, 'held');
        else {
          this.opts.metrics?.recordRefusal(inv.root, r.code);
          log.warn({ project: inv.root, target: r.target, code: r.code, reason: r.reason }, 'refused');
        }
      }
      if (p.actions.length > 0) {
        const summary = await this.opts.executor.execute(p, session, { actor: 'daemon' });
        this.publish(inv.root, summary);
        // What was reaped changes the inventory: re-read soon so metrics show it.
        nextWake = Math.min(nextWake, 0.2);
      }
      const grace = nextGraceExpiry(inv, this.opts.policy, this.selection);
      if (grace !== null && !this.opts.observeOnly) nextWake = Math.min(nextWake, grace + 0.05);
    }
    for (const w of this.opts.watched ?? []) this.sampleWatched(w);

    const duration = (performance.now() - t0) / 1000;
    const end = this.now();
    this.opts.metrics?.recordCycle(duration, end);
    Object.assign(this.status, { ok: problems.length === 0, at: end, durationSeconds: duration, problems, count: this.status.count + 1 });
    log.debug({ reason, durationSeconds: duration, next: nextWake }, 'cycle');
    this.onCycle?.(this.inventories());
    this.schedule(nextWake);
  }

  /** Account for what the executor did: metrics and one log line per reap / removal. */
  publish(project: string, summary: ExecutionSummary): void {
    const log = this.opts.logger;
    // Explicit refusals (API, CLI) and kills skipped at re-verification; policy refusals of a
    // cycle's own plan are counted when planned (they never reach the executor).
    for (const [code, n] of Object.entries(summary.refusals)) this.opts.metrics?.recordRefusal(project, code, n);
    for (const r of summary.reaped) {
      if (r.result === 'skipped') {
        log.warn({ project, topPid: r.topPid, ...(r.sessionId ? { sessionId: r.sessionId, pid: r.pid } : {}), verdict: r.verdict, reason: r.reason, detail: r.detail, code: r.code }, 'reap skipped');
        continue;
      }
      this.opts.metrics?.recordReap({ project, verdict: r.verdict, result: r.result, bytes: r.bytes });
      const session = r.sessionId ? { sessionId: r.sessionId, pid: r.pid } : {};
      const line = { project, topPid: r.topPid, ...session, verdict: r.verdict, result: r.result, bytesFreed: r.bytes, reason: r.reason, detail: r.detail };
      if (r.result === 'ok') log.info(line, 'reaped');
      else log.error(line, 'reap failed');
    }
    for (const f of summary.pidFilesRemoved) {
      if (f.result === 'removed') {
        this.opts.metrics?.recordPidFileRemoved(project);
        log.info({ project, path: f.path, reason: f.reason }, 'pid file removed');
      } else if (f.result === 'failed') log.error({ project, path: f.path, reason: f.reason }, 'pid file removal failed');
      else log.debug({ project, path: f.path, result: f.result, reason: f.reason }, 'pid file not removed');
    }
  }

  /** One log line when a source goes down or comes back (not every cycle). */
  private noteSources(inv: ProjectInventory, problems: string[]): void {
    for (const [name, h] of Object.entries(inv.sources)) {
      const key = `${inv.root}\0${name}`;
      const was = this.sourceState.get(key);
      if (!h.ok) problems.push(`${inv.root}: ${h.error ?? `${name} failed`}`);
      if (was !== h.ok) {
        if (!h.ok) this.opts.logger.error({ project: inv.root, source: name, error: h.error }, 'source down: no reaping while it is');
        else if (was === false) this.opts.logger.info({ project: inv.root, source: name }, 'source back up');
        this.sourceState.set(key, h.ok);
      }
    }
  }

  private sampleServer(inv: ProjectInventory): void {
    const id = inv.server.alive && inv.server.identity ? `${inv.server.identity.pid}:${inv.server.identity.startTicks}` : null;
    this.sample(`project:${inv.root}`, inv.root, 'stepwise-server', id, inv.server.memory?.rssBytes ?? 0, inv.server.memory?.swapBytes ?? 0, inv.now);
  }

  private sampleWatched(w: WatchedProcess): void {
    const m = w.read();
    this.sample(`watch:${w.name}`, '', w.name, m.up ? m.identity : null, m.rssBytes, m.swapBytes, this.now());
  }

  /** The trend of a process restarts when its identity (pid, start time) changes; state is bounded by the configured processes. */
  private sample(key: string, project: string, process: string, identity: string | null, rss: number, swap: number, t: number): void {
    let entry = this.trends.get(key);
    if (!entry || entry.identity !== (identity ?? '')) {
      entry = {
        identity: identity ?? '',
        trend: new SlidingTrend(this.opts.growthWindowSeconds),
        memory: { project, process, up: false, rssBytes: 0, swapBytes: 0, growthBytesPerHour: 0 },
      };
      this.trends.set(key, entry);
    }
    if (identity === null) {
      entry.memory = { project, process, up: false, rssBytes: 0, swapBytes: 0, growthBytesPerHour: 0 };
      return;
    }
    entry.trend.add({ t, bytes: rss + swap });
    entry.memory = { project, process, up: true, rssBytes: rss, swapBytes: swap, growthBytesPerHour: entry.trend.slopePerHour() };
  }
}
