// What the job-store reader takes and gives: its options, results and read statistics.

import type { JobRow, RunRow, SourceHealth, StoreSnapshot } from '../core/types.js';

export interface StoreReaderOptions {
  /** Path of stepwise.db. */
  dbPath: string;
  /** SQLite busy timeout for each statement (default 2000 ms). */
  busyTimeoutMs?: number;
  /** Full resync every this many ms (default 1 h; 0 = only when needed). */
  resyncIntervalMs?: number;
  /**
   * Keep finished agent runs whose pid is not (or no longer) of interest this long (default
   * 5 min), so a pid that becomes of interest just after its run finished is still matched
   * without a resync (the process scan and the store read are not atomic).
   */
  retainFinishedMs?: number;
  /**
   * At most this many such runs (default 10 000; the oldest go first), so a burst of finished
   * jobs cannot grow the reader without bound; the same bound holds for retained cancelled runs. They are checked in memory, never re-read: only a
   * cancelled run is written to by the engine after it finished.
   */
  retainFinishedMax?: number;
  /**
   * Keep (and re-read) cancelled runs this long (default 20 min): a cancelled job's step may
   * retry within the engine's backoff window and record a new adapter on the cancelled run.
   * The larger of this and retainFinishedMs applies to them.
   */
  retainCancelledMs?: number;
  /**
   * Slack when deciding that a finished run names an earlier process with the same pid
   * (run completed more than this before the process started; default 5 s). See pidStartEpochs.
   */
  staleToleranceSeconds?: number;
  /** Width of the rowid ranges of the full pass, one statement each (default 50 000). */
  fullScanChunkRowids?: number;
  /** Clock in epoch ms (for resync interval and retention). */
  now?: () => number;
}

export interface StoreReadOptions {
  /** Pids of processes the caller cares about (live adapter candidates, pid files). */
  pidsOfInterest: ReadonlySet<number>;
  /**
   * Start time (epoch seconds) of the live process behind a pid of interest, when known. A
   * finished run that completed before that process started names an earlier process that had
   * the same pid: it is neither followed nor reported. Pass it on hosts that reuse pids, or the
   * followed set (and the steady-state cost) grows with history: with 1M runs and pids cycling
   * through 30k values, each live pid is named by ~30 stale runs.
   */
  pidStartEpochs?: ReadonlyMap<number, number>;
  /** Do a full pass now. */
  forceResync?: boolean;
}

export interface StoreReadResult {
  health: SourceHealth;
  snapshot: StoreSnapshot | null;
}

export interface StoreReverifyResult {
  health: SourceHealth;
  /** Fresh rows of the requested runs that exist and parse (any step kind). */
  runs: RunRow[];
  jobs: Record<string, JobRow>;
  /** Requested ids that no longer exist (or whose executor_state is not valid JSON). */
  missingRunIds: string[];
  missingJobIds: string[];
  schemaVersion: number | null;
}

export type ResyncReason =
  | 'first read'
  | 'forced'
  | 'periodic'
  | 'file replaced'
  | 'schema changed'
  | 'rowids renumbered'
  | 'after error';

export interface StoreReadStats {
  kind: 'full' | 'incremental';
  resyncReason: ResyncReason | null;
  /** 'immutable' when the WAL-mode store had no -wal/-shm (engine stopped): see openMode(). */
  openMode: 'normal' | 'immutable';
  /** Rows returned by the full pass (0 for incremental reads). */
  scannedMatches: number;
  newRows: number;
  reReadRuns: number;
  trackedRuns: number;
  retainedRuns: number;
  skippedRows: number;
  watermark: number;
}

