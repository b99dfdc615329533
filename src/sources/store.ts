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
import Database from 'better-sqlite3';
import type { JobRow, RunRow, SourceHealth, StoreSnapshot } from '../core/types.js';
import { OPEN_RUN_STATUSES, OPEN_RUN_STATUSES_SQL } from '../core/vocabulary.js';

// better-sqlite3 only understands `file:` URIs when SQLITE_USE_URI=1 is in the environment when
// its addon initialises (first `new Database`). We need `?immutable=1` (see openMode below).
// Set it at import time, before any connection exists; openDb detects the case where it came
// too late and reports it instead of falling back to something that writes.
process.env.SQLITE_USE_URI ??= '1';

type Db = Database.Database;

export { OPEN_RUN_STATUSES };
const OPEN_SQL = OPEN_RUN_STATUSES_SQL;

const REQUIRED_COLUMNS = {
  step_runs: ['id', 'job_id', 'status', 'executor_state', 'started_at', 'completed_at'],
  jobs: ['id', 'status', 'updated_at'],
} as const;

/** Last (rowid, id) pairs kept to notice deleted or renumbered rows at the top of step_runs. */
const TAIL_SIZE = 32;

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

/** The SQL statements a steady-state (incremental) read runs; exported for query-plan tests. */
export interface StoreStatements {
  schemaVersion: string;
  tailCheck: string;
  newRows: string;
  runsById: string;
  jobsById: string;
  failReason: string | null;
  /** Full-pass only (not steady state). */
  fullChunk: string;
  nextRowid: string;
  maxRowid: string;
  tail: string;
}

export interface StoreFeatures {
  stepRunsPid: boolean;
  stepName: boolean;
  attempt: boolean;
  jobsName: boolean;
  events: boolean;
}

/** Build the statements for a store with these optional columns. */
export function storeStatements(f: StoreFeatures): StoreStatements {
  const guard = (expr: string): string => `CASE WHEN json_valid(executor_state) THEN ${expr} END`;
  const cols = [
    'id',
    'job_id',
    `${f.stepName ? 'step_name' : 'NULL'} AS step_name`,
    `${f.attempt ? 'attempt' : 'NULL'} AS attempt`,
    'status',
    'started_at',
    'completed_at',
    'json_valid(executor_state) AS es_ok',
    `${guard("json_extract(executor_state, '$.pid')")} AS es_pid`,
    `${guard("json_extract(executor_state, '$.pgid')")} AS es_pgid`,
    `${guard("json_extract(executor_state, '$.agent')")} AS es_agent`,
    `${guard("json_extract(executor_state, '$._interpolated_config.agent')")} AS es_iagent`,
    `${guard("json_type(executor_state, '$.in_vm')")} AS es_invm`,
    `${guard("json_extract(executor_state, '$.session_id')")} AS es_session`,
    `${f.stepRunsPid ? 'pid' : 'NULL'} AS col_pid`,
  ].join(', ');
  const pidMatch =
    `(${guard("json_extract(executor_state, '$.pid')")}) IN (SELECT value FROM json_each(:pids))` +
    ` OR (${guard("json_extract(executor_state, '$.pgid')")}) IN (SELECT value FROM json_each(:pids))` +
    (f.stepRunsPid ? ' OR pid IN (SELECT value FROM json_each(:pids))' : '');
  return {
    schemaVersion: 'PRAGMA schema_version',
    tailCheck: 'SELECT rowid AS rid, id FROM step_runs WHERE rowid IN (SELECT value FROM json_each(:rowids))',
    newRows: `SELECT rowid AS rid, ${cols} FROM step_runs WHERE rowid > :after ORDER BY rowid`,
    runsById: `SELECT ${cols} FROM step_runs WHERE id IN (SELECT value FROM json_each(:ids))`,
    jobsById: `SELECT id, status, updated_at${f.jobsName ? ', name' : ''} FROM jobs WHERE id IN (SELECT value FROM json_each(:ids))`,
    failReason: f.events
      ? "SELECT data FROM events WHERE job_id = :jobId AND type = 'job.failed' ORDER BY timestamp DESC LIMIT 1"
      : null,
    // Only open runs, runs naming a pid of interest, and unparseable rows (to count them) leave
    // SQLite: JSON is parsed in C and only a few rows cross into JS.
    // Recently cancelled runs too: a cancelled job's step may still retry and record a new
    // adapter on its run (ISO-8601 UTC text compares in time order).
    fullChunk:
      `SELECT rowid AS rid, ${cols} FROM step_runs WHERE rowid > :lo AND rowid <= :hi AND ` +
      `(status IN ${OPEN_SQL} OR json_valid(executor_state) = 0 OR ${pidMatch} OR (status = 'cancelled' AND completed_at >= :cancelledSince))`,
    nextRowid: 'SELECT min(rowid) AS r FROM step_runs WHERE rowid > :after',
    maxRowid: 'SELECT max(rowid) AS r FROM step_runs',
    tail: 'SELECT rowid AS rid, id FROM step_runs WHERE rowid <= :hi ORDER BY rowid DESC LIMIT :n',
  };
}

interface RawRun {
  rid?: number;
  id: unknown;
  job_id: unknown;
  step_name: unknown;
  attempt: unknown;
  status: unknown;
  started_at: unknown;
  completed_at: unknown;
  es_ok: number | null;
  es_pid: unknown;
  es_pgid: unknown;
  es_agent: unknown;
  es_iagent: unknown;
  es_invm: unknown;
  es_session: unknown;
  col_pid: unknown;
}

interface Parsed {
  id: string;
  open: boolean;
  /** null when executor_state is not valid JSON. */
  run: RunRow | null;
  agentStep: boolean;
}

interface Tracked {
  run: RunRow | null;
  open: boolean;
  agentStep: boolean;
}

interface Retained {
  run: RunRow;
  since: number;
}

class StoreDown extends Error {}

interface Interest {
  pids: ReadonlySet<number>;
  starts: ReadonlyMap<number, number> | undefined;
  toleranceSeconds: number;
}

/** ISO-8601 → epoch seconds; a timestamp without offset is UTC (stepwise writes +00:00). */
function isoEpochSeconds(iso: string): number {
  const hasZone = /(?:[zZ]|[+-]\d\d:?\d\d)$/.test(iso);
  return Date.parse(hasZone ? iso : `${iso}Z`) / 1000;
}

/** Does this finished run name the live process a pid of interest stands for? */
/** A finished run whose pid was written after it finished (see RunRow.pidColumn). */
export function writtenAfterFinish(run: RunRow): boolean {
  return run.completedAt !== null && run.pidColumn !== null && run.pidColumn === run.pid;
}

/**
 * The pid of interest a run names: its adapter's pid, else its recorded group id (a live group
 * whose leader died: on Linux a pid is not reused while it is a live group id). null if neither.
 */
function interestPid(run: RunRow, interest: Interest): number | null {
  if (run.pid !== null && interest.pids.has(run.pid)) return run.pid;
  if (run.pgid !== null && interest.pids.has(run.pgid)) return run.pgid;
  return null;
}

function namesLiveProcess(run: RunRow, interest: Interest): boolean {
  const pid = interestPid(run, interest);
  if (pid === null) return false;
  const start = interest.starts?.get(pid);
  // A cancelled job's step that retried records its new adapter after the run ended: the
  // process starting after completion is expected there (the classifier still asks for a pid file).
  if (start === undefined || run.completedAt === null || writtenAfterFinish(run)) return true;
  const done = isoEpochSeconds(run.completedAt);
  return !(done < start - interest.toleranceSeconds); // unparseable → keep (NaN)
}

const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);
const posInt = (v: unknown): number | null =>
  typeof v === 'number' && Number.isSafeInteger(v) && v > 0 ? v : typeof v === 'bigint' && v > 0n ? Number(v) : null;

/** stepwise records 0 when getpgid failed; only a real group id (> 1) means anything. */
const groupId = (v: unknown): number | null => {
  const g = posInt(v);
  return g !== null && g > 1 ? g : null;
};

function parseRun(r: RawRun): Parsed {
  const id = String(r.id);
  const status = String(r.status ?? '');
  const open = OPEN_RUN_STATUSES.has(status);
  // es_ok: 1 valid, 0 invalid, null when executor_state is NULL (a run not started yet).
  if (r.es_ok === 0) return { id, open, run: null, agentStep: false };
  const agent = str(r.es_agent) ?? str(r.es_iagent);
  const run: RunRow = {
    id,
    jobId: String(r.job_id ?? ''),
    stepName: String(r.step_name ?? ''),
    attempt: typeof r.attempt === 'number' ? r.attempt : null,
    status,
    startedAt: str(r.started_at),
    completedAt: str(r.completed_at),
    pid: posInt(r.es_pid) ?? posInt(r.col_pid),
    pgid: groupId(r.es_pgid),
    sessionId: str(r.es_session),
    pidColumn: posInt(r.col_pid),
    agent,
    inVm: r.es_invm === 'true',
    agentStep: false,
  };
  // Script steps record a pid too, but are not adapters: an agent step names its agent or session.
  const agentStep = agent !== null || (r.es_session !== null && r.es_session !== undefined);
  run.agentStep = agentStep;
  return { id, open, run, agentStep };
}

function oneLine(s: string): string {
  return s.replace(/\s+/g, ' ').trim();
}

function errorLine(e: unknown, dbPath: string, busyMs: number): { line: string; busy: boolean } {
  if (e instanceof StoreDown) return { line: `store down: ${e.message}`, busy: false };
  if (e instanceof Database.SqliteError) {
    const code = e.code ?? '';
    const msg = oneLine(e.message);
    if (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED')) {
      return { line: `store down: database locked for more than ${busyMs} ms`, busy: true };
    }
    if (code === 'SQLITE_NOTADB') return { line: `store down: not a SQLite database (${msg})`, busy: false };
    if (code.startsWith('SQLITE_CORRUPT')) return { line: `store down: corrupt database (${msg})`, busy: false };
    if (code.startsWith('SQLITE_CANTOPEN')) return { line: `store down: cannot open ${dbPath} (${msg})`, busy: false };
    return { line: `store down: ${code || 'SQLite error'} (${msg})`, busy: false };
  }
  const err = e as NodeJS.ErrnoException;
  if (err?.code === 'ENOENT') return { line: `store down: no such file ${dbPath}`, busy: false };
  if (err?.code === 'EACCES' || err?.code === 'EPERM') return { line: `store down: permission denied ${dbPath}`, busy: false };
  return { line: `store down: ${oneLine(String(err?.message ?? e))}`, busy: false };
}

const SQLITE_MAGIC = Buffer.from('SQLite format 3\0', 'latin1');

/**
 * How to open the file without creating anything next to it.
 *
 * Measured (better-sqlite3 12 / SQLite 3.53): opening a WAL-mode database read-only when its
 * `-wal`/`-shm` are absent (the engine stopped cleanly) CREATES both files on the first read,
 * and a read-only connection cannot checkpoint, so they stay after close. So when the header
 * says WAL (bytes 18/19 = 2) and either file is missing, the read uses
 * `file:…?immutable=1`: SQLite then takes no locks and touches only the main file, which holds
 * every committed transaction once the WAL was checkpointed away. Otherwise (files present: the
 * engine runs or crashed; or a rollback-journal store) a normal read-only open creates nothing.
 * Remaining races, accepted: the engine starting during an immutable read (a checkpoint in those
 * few ms could make that one read fail or be stale; the next read sees -wal and opens
 * normally), and the engine's clean shutdown deleting -wal/-shm between our check and SQLite's
 * open (SQLite would then recreate an empty -wal/-shm: harmless to the engine, never data).
 * The header is read through a short-lived fd; this is safe only because no connection of
 * this process holds a lock on the file at that moment (connections live for one call).
 */
function openMode(dbPath: string): 'normal' | 'immutable' {
  const header = Buffer.alloc(100);
  let n = 0;
  const fd = fs.openSync(dbPath, 'r');
  try {
    n = fs.readSync(fd, header, 0, 100, 0);
  } finally {
    fs.closeSync(fd);
  }
  const isWal = n >= 20 && header.subarray(0, 16).equals(SQLITE_MAGIC) && (header[18] === 2 || header[19] === 2);
  if (!isWal) return 'normal';
  return fs.existsSync(`${dbPath}-wal`) && fs.existsSync(`${dbPath}-shm`) ? 'normal' : 'immutable';
}

function fileUri(p: string): string {
  const encoded = p
    .split('/')
    .map((seg) => encodeURIComponent(seg))
    .join('/');
  return `file:${encoded}?immutable=1`;
}

function openDb(dbPath: string, mode: 'normal' | 'immutable', busyMs: number): Db {
  if (mode === 'normal') return new Database(dbPath, { readonly: true, fileMustExist: true, timeout: busyMs });
  try {
    return new Database(fileUri(dbPath), { readonly: true, fileMustExist: true, timeout: busyMs });
  } catch (e) {
    if (e instanceof Database.SqliteError && e.code === 'SQLITE_CANTOPEN' && fs.existsSync(dbPath)) {
      // URIs disabled: better-sqlite3 was initialised before this module set SQLITE_USE_URI.
      throw new StoreDown(
        'WAL-mode store without -wal/-shm (engine stopped) and SQLite URI filenames are disabled ' +
          '(a plain read-only open would create -wal/-shm; set SQLITE_USE_URI=1)',
      );
    }
    throw e;
  }
}

function tableColumns(db: Db, table: string): Set<string> {
  const rows = db.prepare(`PRAGMA table_info(${table})`).all() as { name: string }[];
  return new Set(rows.map((r) => r.name));
}

function detectStoreFeatures(db: Db): StoreFeatures {
  const stepRuns = tableColumns(db, 'step_runs');
  if (stepRuns.size === 0) throw new StoreDown('not a stepwise store: missing table step_runs');
  const jobs = tableColumns(db, 'jobs');
  if (jobs.size === 0) throw new StoreDown('not a stepwise store: missing table jobs');
  for (const [table, have] of [
    ['step_runs', stepRuns],
    ['jobs', jobs],
  ] as const) {
    for (const col of REQUIRED_COLUMNS[table]) {
      if (!have.has(col)) throw new StoreDown(`not a stepwise store: missing column ${table}.${col}`);
    }
  }
  const events = tableColumns(db, 'events');
  return {
    stepRunsPid: stepRuns.has('pid'),
    stepName: stepRuns.has('step_name'),
    attempt: stepRuns.has('attempt'),
    jobsName: jobs.has('name'),
    events: ['job_id', 'timestamp', 'type', 'data'].every((c) => events.has(c)),
  };
}

function fileKeyOf(dbPath: string): string {
  const st = fs.statSync(dbPath);
  if (!st.isFile()) throw new StoreDown(`not a regular file ${dbPath}`);
  return `${st.dev}:${st.ino}`;
}

function readFailReason(db: Db, sql: string, jobId: string): string | null {
  const row = db.prepare(sql).get({ jobId }) as { data: unknown } | undefined;
  if (!row || typeof row.data !== 'string') return null;
  try {
    const data = JSON.parse(row.data) as unknown;
    const reason = data && typeof data === 'object' ? (data as Record<string, unknown>).reason : undefined;
    return typeof reason === 'string' ? reason : null;
  } catch {
    return null;
  }
}

/**
 * Long-lived reader of one project's store (the daemon keeps one; the CLI makes one per
 * command). Each call opens its own read-only connection and closes it before returning, so no
 * lock or read transaction outlives a call (a long-lived read transaction would starve the
 * engine's WAL checkpoints, and a long-lived connection would keep the engine from removing
 * its WAL on clean shutdown); opening costs ~0.3 ms. The index survives between calls.
 */
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
  private retained = new Map<string, Retained>();
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
          retainedRuns: this.retained.size,
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
      if (cancelled || (source !== 'scan' && this.retainMs > 0)) this.retained.set(p.id, { run: p.run!, since: this.now() });
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

      // 3. Recently finished runs: re-read by primary key (the engine may still write to them:
      // a cancelled job's step retries and records its new adapter on the cancelled run), and
      // they come back when their pid became of interest. Cancelled runs are kept for the
      // engine's retry window (5 retries, 30 s doubling backoff: ~16 min), others briefly.
      const nowMs = this.now();
      if (this.retained.size > 0) {
        const rows = db.prepare(sql.runsById).all({ ids: JSON.stringify([...this.retained.keys()]) }) as RawRun[];
        const back = new Map(rows.map((r) => [String(r.id), r] as const));
        for (const [id, r] of this.retained) {
          const raw = back.get(id);
          const p = raw ? parseRun(raw) : null;
          if (!p || !p.run) {
            this.retained.delete(id); // deleted by the engine, or no longer parses
            continue;
          }
          if (p.open || (p.agentStep && namesLiveProcess(p.run, interest))) {
            this.retained.delete(id);
            this.tracked.set(id, { run: p.run, open: p.open, agentStep: p.agentStep });
            continue;
          }
          r.run = p.run;
          const keep = p.run.status === 'cancelled' ? Math.max(this.retainMs, this.retainCancelledMs) : this.retainMs;
          if (nowMs - r.since >= keep) this.retained.delete(id);
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
