// The job-store source: reads stepwise's SQLite store read-only and never writes to it.
//
// How it scales. The adapter pid lives in `step_runs.executor_state`, JSON text with no index,
// so "which runs name pid P" cannot be answered by a seek. The reader keeps an incremental
// index in memory instead. The first read (and a forced or hourly resync, a replaced file, a
// schema change, renumbered rowids) makes one pass over step_runs in short rowid-range
// statements that let SQLite parse the JSON and return only open runs and runs naming a pid of
// interest: O(history), once (about 0.9 s for 1M runs on a 2-core machine). Every later read
// is O(new rows + open runs + runs naming live pids): new rows come from a range seek
// `rowid > watermark` on the table b-tree, tracked runs and their jobs are re-read by primary
// key, a failed job's reason comes from the events(job_id, timestamp) index (once per status
// change). Finished runs whose pid is no longer of interest are dropped after a short
// retention, so memory and steady-state cost are bounded by live adapters and open runs, not by
// history (about 0.3 ms per read at 10k and at 1M runs, given process start times so that old
// runs naming a reused pid are not followed). Steady-state statements never scan a table; the
// tests check their query plans.
import fs from 'node:fs';
import { performance } from 'node:perf_hooks';
import type Database from 'better-sqlite3';
import type { JobRow, RunRow, StoreSnapshot } from '../core/types.js';
import { OPEN_RUN_STATUSES } from '../core/vocabulary.js';
import { StoreDown, errorLine, fileKeyOf, openDb, openMode } from './store-open.js';
import { namesLiveProcess, interestPid, parseRun, str, type Interest, type RawRun } from './store-rows.js';
import { detectStoreFeatures, readFailReason, storeStatements, type StoreFeatures, type StoreStatements } from './store-sql.js';

export { storeStatements, type StoreFeatures, type StoreStatements } from './store-sql.js';
export { writtenAfterFinish } from './store-rows.js';
export type { ResyncReason, StoreReadOptions, StoreReadResult, StoreReadStats, StoreReaderOptions, StoreReverifyResult } from './store-api.js';
import type { ResyncReason, StoreReadOptions, StoreReadResult, StoreReadStats, StoreReaderOptions, StoreReverifyResult } from './store-api.js';


type Db = Database.Database;

export { OPEN_RUN_STATUSES };

/** Last (rowid, id) pairs kept to notice deleted or renumbered rows at the top of step_runs. */
const TAIL_SIZE = 32;

interface Tracked {
  run: RunRow | null;
  open: boolean;
  agentStep: boolean;
}

interface Retained {
  run: RunRow;
  since: number;
}

export class StoreReader {
  readonly dbPath: string;
  private readonly busyMs: number;
  private readonly resyncIntervalMs: number;
  private readonly retainMs: number;
  private readonly retainCancelledMs: number;
  private readonly staleToleranceSeconds: number;
  private readonly chunk: number;
  private readonly now: () => number;

  private fileKey: string | null = null;
  private schemaVersion: number | null = null;
  private features: StoreFeatures | null = null;
  private sql: StoreStatements | null = null;
  private watermark = 0;
  private tail: { rid: number; id: string }[] = [];
  private tracked = new Map<string, Tracked>();
  /** Finished agent runs kept a while, checked in memory against the pids of interest. */
  private retained = new Map<string, Retained>();
  /** Cancelled agent runs kept for the retry window, re-read by primary key (the engine writes to them). */
  private retainedCancelled = new Map<string, Retained>();
  private readonly retainMax: number;
  private failReasons = new Map<string, { updatedAt: string | null; reason: string | null }>();
  private lastFullSyncAt = 0;
  private pendingResync: ResyncReason | null = null;
  private closed = false;
  private skipped = new Set<string>();
  private stats: StoreReadStats | null = null;

  constructor(options: StoreReaderOptions) {
    this.dbPath = options.dbPath;
    this.busyMs = options.busyTimeoutMs ?? 2000;
    this.resyncIntervalMs = options.resyncIntervalMs ?? 3_600_000;
    this.retainMs = options.retainFinishedMs ?? 300_000;
    this.retainCancelledMs = options.retainCancelledMs ?? 20 * 60_000;
    this.retainMax = Math.max(0, options.retainFinishedMax ?? 10_000);
    this.staleToleranceSeconds = options.staleToleranceSeconds ?? 5;
    this.chunk = Math.max(1, options.fullScanChunkRowids ?? 50_000);
    this.now = options.now ?? Date.now;
  }

  /** Rows skipped by the last read because their executor_state was not valid JSON. */
  get lastReadSkippedRows(): number {
    return this.skipped.size;
  }

  /** What the last successful read did (for tests, metrics and benchmarks). */
  get lastReadStats(): StoreReadStats | null {
    return this.stats;
  }

  /** Runs currently followed by primary key (open runs + finished runs of pids of interest). */
  get trackedRunCount(): number {
    return this.tracked.size;
  }

  /** Make the next read a full pass. */
  resync(): void {
    this.pendingResync = 'forced';
  }

  /** Forget the index. Later calls report `store down: reader closed`. */
  close(): void {
    this.closed = true;
    this.reset();
  }

  read(options: StoreReadOptions): StoreReadResult {
    const t0 = performance.now();
    this.skipped = new Set();
    let dirty = false;
    try {
      if (this.closed) throw new StoreDown('reader closed');
      const interest: Interest = {
        pids: options.pidsOfInterest,
        starts: options.pidStartEpochs,
        toleranceSeconds: this.staleToleranceSeconds,
      };
      const key = fileKeyOf(this.dbPath);
      const real = fs.realpathSync(this.dbPath); // -wal/-shm live next to the symlink's target
      let reason: ResyncReason | null = null;
      if (this.fileKey === null) reason = this.pendingResync === 'after error' ? 'after error' : 'first read';
      else if (this.fileKey !== key) reason = 'file replaced';
      else if (options.forceResync) reason = 'forced';
      else if (this.pendingResync) reason = this.pendingResync;
      else if (this.resyncIntervalMs > 0 && this.now() - this.lastFullSyncAt >= this.resyncIntervalMs) reason = 'periodic';

      const mode = openMode(real);
      const db = openDb(real, mode, this.busyMs);
      try {
        const version = Number(db.pragma('schema_version', { simple: true }));
        if (reason === null && version !== this.schemaVersion) reason = 'schema changed';
        if (reason !== null || !this.features) {
          this.features = detectStoreFeatures(db);
          this.sql = storeStatements(this.features);
        }
        dirty = true;
        this.fileKey = key;
        this.schemaVersion = version;
        let scanned = 0;
        if (reason !== null) scanned = this.fullPass(db, interest);
        let step = this.incremental(db, interest);
        if (step === 'renumbered') {
          reason = 'rowids renumbered';
          scanned = this.fullPass(db, interest);
          step = this.incremental(db, interest);
          if (step === 'renumbered') throw new StoreDown('step_runs rowids keep changing; retry');
        }
        this.pendingResync = null;
        this.stats = {
          kind: reason === null ? 'incremental' : 'full',
          resyncReason: reason,
          openMode: mode,
          scannedMatches: scanned,
          newRows: step.newRows,
          reReadRuns: step.reRead,
          trackedRuns: this.tracked.size,
          retainedRuns: this.retained.size + this.retainedCancelled.size,
          skippedRows: this.skipped.size,
          watermark: this.watermark,
        };
        return { health: { ok: true, durationSeconds: (performance.now() - t0) / 1000 }, snapshot: step.snapshot };
      } finally {
        db.close();
      }
    } catch (e) {
      const { line, busy } = errorLine(e, this.dbPath, this.busyMs);
      if (!busy || dirty) {
        // Anything but a lock met before touching the index: start over on the next read.
        this.reset();
        if (!this.closed) this.pendingResync = 'after error';
      }
      return { health: { ok: false, error: line, durationSeconds: (performance.now() - t0) / 1000 }, snapshot: null };
    }
  }

  /** Fresh rows for exactly these ids (primary-key lookups), e.g. right before a kill. */
  reverify(ids: { runIds: readonly string[]; jobIds: readonly string[] }): StoreReverifyResult {
    const t0 = performance.now();
    const fail = (e: unknown): StoreReverifyResult => ({
      health: {
        ok: false,
        error: errorLine(e, this.dbPath, this.busyMs).line,
        durationSeconds: (performance.now() - t0) / 1000,
      },
      runs: [],
      jobs: {},
      missingRunIds: [...ids.runIds],
      missingJobIds: [...ids.jobIds],
      schemaVersion: null,
    });
    try {
      if (this.closed) throw new StoreDown('reader closed');
      const key = fileKeyOf(this.dbPath);
      if (this.fileKey !== null && key !== this.fileKey) this.pendingResync = 'file replaced';
      const real = fs.realpathSync(this.dbPath);
      const db = openDb(real, openMode(real), this.busyMs);
      try {
        return db.transaction(() => {
          const version = Number(db.pragma('schema_version', { simple: true }));
          const features = detectStoreFeatures(db);
          const sql = storeStatements(features);
          const raw = db.prepare(sql.runsById).all({ ids: JSON.stringify(ids.runIds) }) as RawRun[];
          const runs: RunRow[] = [];
          for (const r of raw) {
            const p = parseRun(r);
            if (p.run) runs.push(p.run);
          }
          const found = new Set(runs.map((r) => r.id));
          const jobs = this.readJobs(db, sql, features, ids.jobIds, false);
          return {
            health: { ok: true, durationSeconds: (performance.now() - t0) / 1000 },
            runs,
            jobs,
            missingRunIds: ids.runIds.filter((id) => !found.has(id)),
            missingJobIds: ids.jobIds.filter((id) => !(id in jobs)),
            schemaVersion: version,
          };
        })();
      } finally {
        db.close();
      }
    } catch (e) {
      return fail(e);
    }
  }

  private reset(): void {
    this.fileKey = null;
    this.schemaVersion = null;
    this.features = null;
    this.sql = null;
    this.watermark = 0;
    this.tail = [];
    this.tracked.clear();
    this.retained.clear();
    this.retainedCancelled.clear();
    this.failReasons.clear();
  }

  /**
   * One pass over step_runs in rowid ranges, each its own short statement (and so its own
   * short read transaction). Rows changed by the engine between ranges are caught by the
   * incremental step that follows: everything kept here is re-read there by primary key.
   */
  private fullPass(db: Db, interest: Interest): number {
    const sql = this.sql!;
    this.tracked.clear();
    this.retained.clear();
    this.retainedCancelled.clear();
    this.failReasons.clear();
    this.watermark = 0;
    this.tail = [];
    const pidsJson = JSON.stringify([...interest.pids]);
    const maxRow = db.prepare(sql.maxRowid).get() as { r: number | null };
    const hi = maxRow.r ?? 0;
    const chunkStmt = db.prepare(sql.fullChunk);
    const cancelledSince = new Date(this.now() - this.retainCancelledMs).toISOString().replace('Z', '+00:00');
    const nextStmt = db.prepare(sql.nextRowid);
    let matches = 0;
    let after = Number.MIN_SAFE_INTEGER;
    for (;;) {
      // Jump over rowid gaps with one seek instead of walking empty ranges.
      const next = nextStmt.get({ after }) as { r: number | null };
      if (next.r === null || next.r > hi) break;
      const lo = next.r - 1;
      const top = Math.min(hi, lo + this.chunk);
      for (const r of chunkStmt.all({ lo, hi: top, pids: pidsJson, cancelledSince }) as RawRun[]) {
        matches++;
        this.ingest(r, interest, 'scan');
      }
      after = top;
      if (top >= hi) break;
    }
    const tail = db.prepare(sql.tail).all({ hi, n: TAIL_SIZE }) as { rid: number; id: string }[];
    this.tail = tail.reverse();
    this.watermark = hi;
    this.lastFullSyncAt = this.now();
    return matches;
  }

  /** Record one row in the index. `scan` rows come from history and are never retained. */
  private ingest(r: RawRun, interest: Interest, source: 'scan' | 'new' | 'reread'): void {
    const p = parseRun(r);
    this.retained.delete(p.id);
    this.retainedCancelled.delete(p.id);
    if (!p.run) {
      this.skipped.add(p.id);
      // Keep following an open run even while its state does not parse; drop finished ones.
      if (p.open) this.tracked.set(p.id, { run: null, open: true, agentStep: false });
      else this.tracked.delete(p.id);
      return;
    }
    const entry: Tracked = { run: p.run, open: p.open, agentStep: p.agentStep };
    if (p.open) {
      this.tracked.set(p.id, entry);
      return;
    }
    this.tracked.delete(p.id);
    if (!p.agentStep) return;
    // A run that just finished is kept a while (re-read by primary key); a cancelled one for the
    // engine's retry window, even without a pid yet (its retry may record one).
    const cancelled = p.run.status === 'cancelled' && this.retainCancelledMs > 0;
    // History from a full scan is not retained, except recently cancelled runs (see fullChunk).
    const retain = () => {
      if (cancelled) {
        this.retainedCancelled.set(p.id, { run: p.run!, since: this.now() });
        // Bounded too (a cancel storm): one dropped costs a retry adapter's tie (a missed reap), never a kill.
        if (this.retainedCancelled.size > this.retainMax) this.retainedCancelled.delete(this.retainedCancelled.keys().next().value!);
      }
      else if (source !== 'scan' && this.retainMs > 0 && this.retainMax > 0) {
        this.retained.set(p.id, { run: p.run!, since: this.now() });
        // Insertion order is age order (ingest deletes before it sets): drop the oldest.
        if (this.retained.size > this.retainMax) this.retained.delete(this.retained.keys().next().value!);
      }
    };
    if (p.run.pid === null) {
      if (cancelled) retain();
      return;
    }
    if (namesLiveProcess(p.run, interest)) this.tracked.set(p.id, entry);
    else if (interestPid(p.run, interest) !== null && !cancelled) return; // names an earlier process with the same pid
    else retain();
  }

  private incremental(
    db: Db,
    interest: Interest,
  ): 'renumbered' | { snapshot: StoreSnapshot; newRows: number; reRead: number } {
    const sql = this.sql!;
    const features = this.features!;
    // One read transaction for the whole step: runs and jobs come from the same snapshot.
    return db.transaction(() => {
      // 1. Is the top of the table still what we saw? (deleted jobs, VACUUM renumbering)
      if (this.tail.length > 0) {
        const rows = db.prepare(sql.tailCheck).all({ rowids: JSON.stringify(this.tail.map((t) => t.rid)) }) as {
          rid: number;
          id: string;
        }[];
        const now = new Map(rows.map((r) => [r.rid, r.id]));
        let keep = -1;
        for (let i = this.tail.length - 1; i >= 0; i--) {
          const t = this.tail[i]!;
          if (now.get(t.rid) === t.id) {
            keep = i;
            break;
          }
        }
        if (keep < 0) return 'renumbered' as const;
        if (keep < this.tail.length - 1) {
          // The newest rows were deleted; rows inserted since may reuse their rowids.
          this.tail.length = keep + 1;
          this.watermark = this.tail[keep]!.rid;
        }
      } else if (this.watermark > 0) {
        return 'renumbered' as const;
      }

      // 2. New rows: a range seek on the table b-tree.
      const fresh = db.prepare(sql.newRows).all({ after: this.watermark }) as RawRun[];
      const seen = new Set<string>();
      for (const r of fresh) {
        this.ingest(r, interest, 'new');
        seen.add(String(r.id));
        this.tail.push({ rid: r.rid!, id: String(r.id) });
        this.watermark = r.rid!;
      }
      if (this.tail.length > TAIL_SIZE) this.tail.splice(0, this.tail.length - TAIL_SIZE);

      // 3. Recently finished runs come back when their pid became of interest (the process
      // scan and the store read are not atomic). Cancelled ones are re-read by primary key: the
      // engine may still write to them (a cancelled job's step retries and records its new
      // adapter on the cancelled run) within its retry window (5 retries, 30 s doubling
      // backoff: ~16 min). Other finished runs are never written again: they are checked in
      // memory, and one that comes back is re-read with the tracked runs in step 4.
      const nowMs = this.now();
      for (const [id, r] of this.retained) {
        if (namesLiveProcess(r.run, interest)) {
          this.retained.delete(id);
          this.tracked.set(id, { run: r.run, open: false, agentStep: true });
        } else if (nowMs - r.since >= this.retainMs) this.retained.delete(id);
      }
      if (this.retainedCancelled.size > 0) {
        const rows = db.prepare(sql.runsById).all({ ids: JSON.stringify([...this.retainedCancelled.keys()]) }) as RawRun[];
        const back = new Map(rows.map((r) => [String(r.id), r] as const));
        for (const [id, r] of this.retainedCancelled) {
          const raw = back.get(id);
          const p = raw ? parseRun(raw) : null;
          if (!p || !p.run) {
            this.retainedCancelled.delete(id); // deleted by the engine, or no longer parses
            continue;
          }
          if (p.open || (p.agentStep && namesLiveProcess(p.run, interest))) {
            this.retainedCancelled.delete(id);
            this.tracked.set(id, { run: p.run, open: p.open, agentStep: p.agentStep });
            continue;
          }
          r.run = p.run;
          if (nowMs - r.since >= Math.max(this.retainMs, this.retainCancelledMs)) this.retainedCancelled.delete(id);
        }
      }

      // 4. Re-read every tracked run by primary key; prune as we go (ingest drops finished
      // runs whose pid is no longer of interest).
      const ids = [...this.tracked.keys()].filter((id) => !seen.has(id));
      let reRead = 0;
      if (ids.length > 0) {
        const rows = db.prepare(sql.runsById).all({ ids: JSON.stringify(ids) }) as RawRun[];
        reRead = rows.length;
        const back = new Set<string>();
        for (const r of rows) {
          back.add(String(r.id));
          this.ingest(r, interest, 'reread');
        }
        for (const id of ids) if (!back.has(id)) this.tracked.delete(id); // deleted by the engine
      }

      // 5. The snapshot: every open run (any step: they count as stale running runs under a
      // terminal job), agent runs naming a pid of interest, and their jobs.
      const runs: RunRow[] = [];
      for (const t of this.tracked.values()) {
        if (!t.run) continue;
        if (t.open || (t.agentStep && namesLiveProcess(t.run, interest))) runs.push(t.run);
      }
      runs.sort((a, b) => (a.startedAt ?? '').localeCompare(b.startedAt ?? '') || a.id.localeCompare(b.id));
      const jobIds = [...new Set(runs.map((r) => r.jobId))];
      const jobs = this.readJobs(db, sql, features, jobIds, true);
      const snapshot: StoreSnapshot = {
        runs,
        jobs,
        schema: { stepRunsPidColumn: features.stepRunsPid, schemaVersion: this.schemaVersion ?? 0 },
      };
      return { snapshot, newRows: fresh.length, reRead };
    })();
  }

  /** Jobs by primary key; `failReason` from the newest job.failed event of failed jobs. */
  private readJobs(
    db: Db,
    sql: StoreStatements,
    features: StoreFeatures,
    ids: readonly string[],
    useCache: boolean,
  ): Record<string, JobRow> {
    const jobs: Record<string, JobRow> = {};
    if (ids.length === 0) return jobs;
    const rows = db.prepare(sql.jobsById).all({ ids: JSON.stringify(ids) }) as Record<string, unknown>[];
    const keepReasons = new Map<string, { updatedAt: string | null; reason: string | null }>();
    for (const r of rows) {
      const id = String(r.id);
      const job: JobRow = { id, status: String(r.status ?? ''), updatedAt: str(r.updated_at) };
      if (features.jobsName) job.name = str(r.name);
      if (job.status === 'failed' && sql.failReason) {
        const cached = useCache ? this.failReasons.get(id) : undefined;
        // A job's reason only changes with the job (retry → new updated_at).
        const reason =
          cached && cached.updatedAt === job.updatedAt ? cached.reason : readFailReason(db, sql.failReason, id);
        job.failReason = reason;
        keepReasons.set(id, { updatedAt: job.updatedAt, reason });
      }
      jobs[id] = job;
    }
    if (useCache) this.failReasons = keepReasons;
    return jobs;
  }
}

/** One read with a throwaway reader (CLI): a full pass, then close. */
export function readStoreOnce(
  dbPath: string,
  options: StoreReadOptions & { busyTimeoutMs?: number },
): StoreReadResult {
  const reader = new StoreReader({ dbPath, busyTimeoutMs: options.busyTimeoutMs });
  try {
    return reader.read(options);
  } finally {
    reader.close();
  }
}
