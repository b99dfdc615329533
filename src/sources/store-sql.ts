// The job store's SQL: the columns a store must have, the features of this store's schema, and
// the statements (built from the features) every read uses. No state, no connection handling.

import type Database from 'better-sqlite3';
import { OPEN_RUN_STATUSES_SQL } from '../core/vocabulary.js';
import { StoreDown } from './store-open.js';

type Db = Database.Database;
const OPEN_SQL = OPEN_RUN_STATUSES_SQL;

export const REQUIRED_COLUMNS = {
  step_runs: ['id', 'job_id', 'status', 'executor_state', 'started_at', 'completed_at'],
  jobs: ['id', 'status', 'updated_at'],
} as const;

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


export function tableColumns(db: Db, table: string): Set<string> {
  const rows = db.prepare(`PRAGMA table_info(${table})`).all() as { name: string }[];
  return new Set(rows.map((r) => r.name));
}

export function detectStoreFeatures(db: Db): StoreFeatures {
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

export function readFailReason(db: Db, sql: string, jobId: string): string | null {
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
