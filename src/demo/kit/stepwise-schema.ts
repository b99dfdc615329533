// The stepwise 0.46.1 job-store schema and a small writer that produces rows shaped like the
// engine's. Used by tests, the demo and benchmarks to build OUR OWN temporary stores; nothing in
// the watchdog proper writes to a store (the reader in store.ts opens the engine's read-only).
//
// The CREATE statements are, byte for byte, `sqlite_master`'s text in a database written by the
// real engine (fixtures/stepwise-0.46.1-leak/stepwise.db), including the columns its migrations
// appended (`, notify_url TEXT, …` / `, pid INTEGER`); built from one column list per table, so
// OLD_SCHEMA_SQL (the pre-migration shape) is the same list without what the migrations added.
import { randomBytes } from 'node:crypto';
import Database from 'better-sqlite3';

type Db = Database.Database;

// Same as store.ts: let better-sqlite3 accept `file:` URIs (read once, at its first connection),
// in case a program builds a store with this module before it imports store.ts.
process.env.SQLITE_USE_URI ??= '1';

/** The columns as created (indented as sqlite_master keeps them); migrations append more. */
const JOBS_COLUMNS = [
  'id TEXT PRIMARY KEY',
  'objective TEXT',
  'workflow TEXT',
  'status TEXT',
  'inputs TEXT',
  'parent_job_id TEXT',
  'parent_step_run_id TEXT',
  'workspace_path TEXT',
  'config TEXT',
  'created_at TEXT',
  'updated_at TEXT',
  "created_by TEXT DEFAULT 'server'",
  'runner_pid INTEGER',
  'heartbeat_at TEXT',
];
const STEP_RUNS_COLUMNS = [
  'id TEXT PRIMARY KEY',
  'job_id TEXT REFERENCES jobs(id)',
  'step_name TEXT',
  'attempt INTEGER',
  'status TEXT',
  'inputs TEXT',
  'dep_run_ids TEXT',
  'result TEXT',
  'error TEXT',
  'error_category TEXT',
  'traceback TEXT',
  'executor_state TEXT',
  'watch TEXT',
  'sub_job_id TEXT',
  'started_at TEXT',
  'completed_at TEXT',
];
/** Columns a later release added inside the CREATE statement (not by ALTER TABLE). */
const STEP_RUNS_IN_PLACE = new Set(['error_category TEXT', 'traceback TEXT']);

/** A CREATE TABLE as sqlite_master prints it; `altered`: what ALTER TABLE ADD COLUMN appended. */
const createTable = (name: string, columns: readonly string[], altered = '') =>
  `CREATE TABLE ${name} (\n${columns.map((c) => `                ${c}`).join(',\n')}\n            ${altered})`;

const JOBS_SQL = createTable('jobs', JOBS_COLUMNS, ", notify_url TEXT, notify_context TEXT, name TEXT, metadata TEXT DEFAULT '{}', job_group TEXT, loop_frames TEXT DEFAULT '{}'");
const STEP_RUNS_SQL = createTable('step_runs', STEP_RUNS_COLUMNS, ', pid INTEGER');

const EVENTS_SQL = `CREATE TABLE events (
                id TEXT PRIMARY KEY,
                job_id TEXT REFERENCES jobs(id),
                timestamp TEXT,
                type TEXT,
                data TEXT,
                is_effector INTEGER DEFAULT 0
            )`;

const INDEXES_SQL = `CREATE INDEX idx_step_runs_job
                ON step_runs(job_id, step_name, attempt);
CREATE INDEX idx_step_runs_status
                ON step_runs(job_id, status);
CREATE INDEX idx_events_job
                ON events(job_id, timestamp);`;

/** jobs, step_runs, events and their indexes as stepwise 0.46.1 leaves them (migrated). */
export const STEPWISE_SCHEMA_SQL = `${JOBS_SQL};\n${STEP_RUNS_SQL};\n${EVENTS_SQL};\n${INDEXES_SQL}\n`;

/**
 * The same tables before the migrations: step_runs without error_category, traceback, pid;
 * jobs without notify_url, notify_context, name, metadata, job_group, loop_frames.
 */
export const OLD_SCHEMA_SQL = `${createTable('jobs', JOBS_COLUMNS)};
${createTable('step_runs', STEP_RUNS_COLUMNS.filter((c) => !STEP_RUNS_IN_PLACE.has(c)))};
${EVENTS_SQL};
${INDEXES_SQL}
`;

export interface CreateStepwiseDbOptions {
  /** Pre-migration schema (no step_runs.pid, no jobs.name, …). */
  old?: boolean;
  /** journal_mode=WAL with the engine's pragmas (default: rollback journal, journal_mode=DELETE). */
  wal?: boolean;
}

/**
 * Create a new store at `path` (which must not exist yet) and return a read-write connection.
 * The caller closes it.
 */
export function createStepwiseDb(path: string, options: CreateStepwiseDbOptions = {}): Db {
  const db = new Database(path);
  if (options.wal) {
    // The engine's pragmas (stepwise store.apply_pragmas).
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    db.pragma('wal_autocheckpoint = 200');
    db.pragma('journal_size_limit = 16777216');
  }
  db.pragma('busy_timeout = 5000');
  db.exec(options.old ? OLD_SCHEMA_SQL : STEPWISE_SCHEMA_SQL);
  return db;
}

// ── ids and timestamps like the engine's ────────────────────────────────────────────────────

let idCounter = randomBytes(4).readUInt32BE(0);

/** `<prefix>-<8 hex>` like stepwise's `_gen_id`; unique within this process (counter, not random). */
export function genId(prefix: string): string {
  idCounter = (idCounter + 0x9e3779b1) >>> 0; // odd step: visits all 2^32 values before repeating
  return `${prefix}-${idCounter.toString(16).padStart(8, '0')}`;
}

/**
 * Python's `datetime.fromtimestamp(t, timezone.utc).isoformat()`: microseconds (omitted when
 * zero, as Python does) and `+00:00`. `epochMs` may be fractional (sub-millisecond digits).
 */
export function pyIsoformat(epochMs: number = Date.now()): string {
  const totalMicros = Math.round(epochMs * 1000);
  const micros = ((totalMicros % 1_000_000) + 1_000_000) % 1_000_000;
  const seconds = (totalMicros - micros) / 1000;
  const base = new Date(seconds).toISOString().slice(0, 19); // YYYY-MM-DDTHH:MM:SS
  return micros === 0 ? `${base}+00:00` : `${base}.${String(micros).padStart(6, '0')}+00:00`;
}

/**
 * Python's `json.dumps(obj)` as the engine's `_dumps` writes it: separators ", " and ": ",
 * non-ASCII escaped as \uXXXX (ensure_ascii).
 */
export function pyJsonDumps(value: unknown): string {
  if (value === null || typeof value !== 'object') {
    return (JSON.stringify(value ?? null) ?? 'null').replace(
      /[\u0080-\uffff]/g,
      (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
    );
  }
  if (Array.isArray(value)) return `[${value.map(pyJsonDumps).join(', ')}]`;
  const parts = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${pyJsonDumps(k)}: ${pyJsonDumps(v)}`);
  return `{${parts.join(', ')}}`;
}

// ── column detection (old schemas lack the migrated columns) ────────────────────────────────

const columnCache = new WeakMap<Db, { version: number; tables: Map<string, Set<string>> }>();

function columnsOf(db: Db, table: string): Set<string> {
  // Keyed by the schema cookie, so an ALTER TABLE (a migration in a test) is noticed.
  const version = Number(db.pragma('schema_version', { simple: true }));
  let entry = columnCache.get(db);
  if (!entry || entry.version !== version) {
    entry = { version, tables: new Map() };
    columnCache.set(db, entry);
  }
  const perDb = entry.tables;
  let cols = perDb.get(table);
  if (!cols) {
    const rows = db.prepare(`PRAGMA table_info(${table})`).all() as { name: string }[];
    cols = new Set(rows.map((r) => r.name));
    perDb.set(table, cols);
  }
  return cols;
}

function insertRow(db: Db, table: string, row: Record<string, unknown>): void {
  const cols = columnsOf(db, table);
  const names = Object.keys(row).filter((k) => row[k] !== undefined && cols.has(k));
  const sql = `INSERT INTO ${table} (${names.join(', ')}) VALUES (${names.map(() => '?').join(', ')})`;
  db.prepare(sql).run(...names.map((k) => row[k]));
}

function updateRow(db: Db, table: string, id: string, patch: Record<string, unknown>): void {
  const cols = columnsOf(db, table);
  const names = Object.keys(patch).filter((k) => patch[k] !== undefined && cols.has(k));
  if (names.length === 0) return;
  const sql = `UPDATE ${table} SET ${names.map((n) => `${n} = ?`).join(', ')} WHERE id = ?`;
  db.prepare(sql).run(...names.map((k) => patch[k]), id);
}

// ── jobs ────────────────────────────────────────────────────────────────────────────────────

export interface JobInit {
  id?: string;
  status?: string;
  /** Ignored on old schemas (no `name` column). */
  name?: string | null;
  objective?: string;
  agent?: string;
  workspacePath?: string;
  createdAt?: string;
  updatedAt?: string;
}

/** Insert a job shaped like the engine's (one agent step `work`). Returns its id. */
export function insertJob(db: Db, init: JobInit = {}): string {
  const id = init.id ?? genId('job');
  const now = pyIsoformat();
  const agent = init.agent ?? 'claude';
  const workflow = {
    steps: {
      work: {
        name: 'work',
        outputs: [],
        executor: { type: 'agent', config: { prompt: `${init.objective ?? 'work'}`, agent }, decorators: [] },
        inputs: [],
        after: [],
        exit_rules: [],
        idempotency: 'idempotent',
      },
    },
  };
  insertRow(db, 'jobs', {
    id,
    objective: init.objective ?? `job ${id}`,
    workflow: pyJsonDumps(workflow),
    status: init.status ?? 'running',
    inputs: '{}',
    workspace_path: init.workspacePath ?? `/tmp/stepwise-project/workspaces/${id}`,
    config: pyJsonDumps({ max_sub_job_depth: 5, timeout_minutes: null, metadata: {} }),
    created_at: init.createdAt ?? now,
    updated_at: init.updatedAt ?? init.createdAt ?? now,
    created_by: 'server',
    name: init.name === undefined ? `job-name-${id}` : init.name,
    metadata: pyJsonDumps({ sys: { depth: 0, root_job_id: id } }),
    loop_frames: '{}',
  });
  return id;
}

export interface JobPatch {
  status?: string;
  updatedAt?: string;
  name?: string | null;
}

/** Update a job like the engine does (status + updated_at). */
export function updateJob(db: Db, id: string, patch: JobPatch): void {
  updateRow(db, 'jobs', id, {
    status: patch.status,
    updated_at: patch.updatedAt ?? pyIsoformat(),
    name: patch.name,
  });
}

// ── step runs ───────────────────────────────────────────────────────────────────────────────

export interface AgentStateInit {
  pid: number;
  pgid?: number;
  agent?: string;
  sessionId?: string;
  inVm?: boolean;
  workingDir?: string;
  outputPath?: string;
  /** Also write `_interpolated_config` (the engine does while the run is open). */
  interpolatedAgent?: string;
}

/** executor_state of an agent step as ACPBackend/AgentExecutor write it. */
export function agentExecutorState(init: AgentStateInit): Record<string, unknown> {
  const workingDir = init.workingDir ?? '/tmp/stepwise-project/workspaces/w';
  const state: Record<string, unknown> = {};
  if (init.interpolatedAgent !== undefined) {
    state._interpolated_config = { prompt: 'work', agent: init.interpolatedAgent };
  }
  Object.assign(state, {
    pid: init.pid,
    pgid: init.pgid ?? init.pid,
    output_path: init.outputPath ?? `${workingDir}/.stepwise/step-io/job/work-1.output.jsonl`,
    working_dir: workingDir,
    session_id: init.sessionId ?? randomUuid(),
    session_name: null,
    agent: init.agent ?? 'claude',
    in_vm: init.inVm ?? false,
    output_mode: 'effect',
  });
  return state;
}

function randomUuid(): string {
  const h = randomBytes(16).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export interface RunInit {
  id?: string;
  jobId: string;
  stepName?: string;
  attempt?: number;
  status?: string;
  /** An object is serialised like the engine's `_dumps`; a string is stored as is (e.g. bad JSON). */
  executorState?: Record<string, unknown> | string | null;
  startedAt?: string | null;
  completedAt?: string | null;
  /** The migrated `step_runs.pid` column (ignored on old schemas). The engine sets it while open. */
  pidColumn?: number | null;
  result?: string | null;
  error?: string | null;
}

/** Insert a step run. Returns its id. */
export function insertRun(db: Db, init: RunInit): string {
  const id = init.id ?? genId('run');
  const status = init.status ?? 'running';
  const open = status === 'running' || status === 'suspended' || status === 'delegated';
  const es = init.executorState;
  insertRow(db, 'step_runs', {
    id,
    job_id: init.jobId,
    step_name: init.stepName ?? 'work',
    attempt: init.attempt ?? 1,
    status,
    inputs: '{}',
    dep_run_ids: '{}',
    result: init.result ?? null,
    error: init.error ?? null,
    executor_state: es === undefined || es === null ? null : typeof es === 'string' ? es : pyJsonDumps(es),
    started_at: init.startedAt === undefined ? pyIsoformat() : init.startedAt,
    completed_at: init.completedAt === undefined ? (open ? null : pyIsoformat()) : init.completedAt,
    pid: init.pidColumn ?? null,
  });
  return id;
}

export interface RunPatch {
  status?: string;
  completedAt?: string | null;
  executorState?: Record<string, unknown> | string | null;
  pidColumn?: number | null;
}

/** Overwrite columns of a run (the engine's save_run upsert keeps the row, hence its rowid). */
export function updateRun(db: Db, id: string, patch: RunPatch): void {
  const es = patch.executorState;
  updateRow(db, 'step_runs', id, {
    status: patch.status,
    completed_at: patch.completedAt,
    executor_state: es === undefined ? undefined : es === null ? null : typeof es === 'string' ? es : pyJsonDumps(es),
    pid: patch.pidColumn,
  });
  // updateRow skips undefined; explicit nulls must still be written.
  if (patch.completedAt === null) db.prepare('UPDATE step_runs SET completed_at = NULL WHERE id = ?').run(id);
  if (patch.pidColumn === null && columnsOf(db, 'step_runs').has('pid')) {
    db.prepare('UPDATE step_runs SET pid = NULL WHERE id = ?').run(id);
  }
}

/** The engine's `update_run_state`: json_patch merge of executor_state (+ optional pid column). */
export function patchRunState(db: Db, id: string, state: Record<string, unknown>, pid?: number): void {
  if (columnsOf(db, 'step_runs').has('pid')) {
    db.prepare(
      "UPDATE step_runs SET executor_state = json_patch(COALESCE(executor_state, '{}'), ?), pid = COALESCE(?, pid) WHERE id = ?",
    ).run(pyJsonDumps(state), pid ?? null, id);
  } else {
    db.prepare("UPDATE step_runs SET executor_state = json_patch(COALESCE(executor_state, '{}'), ?) WHERE id = ?").run(
      pyJsonDumps(state),
      id,
    );
  }
}

// ── events ──────────────────────────────────────────────────────────────────────────────────

export interface EventInit {
  id?: string;
  jobId: string;
  type: string;
  data?: Record<string, unknown>;
  timestamp?: string;
  isEffector?: boolean;
}

/** Insert an event (e.g. `job.failed` with `{reason: "abandoned", step, rule}`). Returns its id. */
export function insertEvent(db: Db, init: EventInit): string {
  const id = init.id ?? genId('evt');
  insertRow(db, 'events', {
    id,
    job_id: init.jobId,
    timestamp: init.timestamp ?? pyIsoformat(),
    type: init.type,
    data: pyJsonDumps(init.data ?? {}),
    is_effector: init.isEffector ? 1 : 0,
  });
  return id;
}

// ── bulk history (benchmarks, scale tests) ──────────────────────────────────────────────────

export interface FillHistoryOptions {
  /** Number of finished step runs to add. */
  runs: number;
  /** Runs per job (default 4). */
  runsPerJob?: number;
  /** First pid to record (pids then cycle through 30_000 values, as a busy host reuses pids). */
  firstPid?: number;
  /** Epoch ms of the first run (default: 30 days ago); runs are 10 s apart. */
  startEpochMs?: number;
  /** Fraction of runs that are script steps (pid but no agent/session), default 0.2. */
  scriptFraction?: number;
}

/**
 * Append `runs` finished runs (completed jobs, `job.completed` events) with realistic row sizes
 * (executor_state ~400 B, result ~600 B), in one transaction. For benchmarks and scale tests.
 */
export function fillHistory(db: Db, options: FillHistoryOptions): void {
  const perJob = Math.max(1, options.runsPerJob ?? 4);
  const firstPid = options.firstPid ?? 100_000;
  const start = options.startEpochMs ?? Date.now() - 30 * 86_400_000;
  const scriptFraction = options.scriptFraction ?? 0.2;
  const hasPid = columnsOf(db, 'step_runs').has('pid');
  const hasName = columnsOf(db, 'jobs').has('name');
  const insJob = db.prepare(
    hasName
      ? "INSERT INTO jobs (id, objective, workflow, status, inputs, workspace_path, config, created_at, updated_at, created_by, name) VALUES (?, ?, ?, 'completed', '{}', ?, '{}', ?, ?, 'server', ?)"
      : "INSERT INTO jobs (id, objective, workflow, status, inputs, workspace_path, config, created_at, updated_at, created_by) VALUES (?, ?, ?, 'completed', '{}', ?, '{}', ?, ?, 'server')",
  );
  const insRun = db.prepare(
    `INSERT INTO step_runs (id, job_id, step_name, attempt, status, inputs, dep_run_ids, result, executor_state, started_at, completed_at${hasPid ? ', pid' : ''})
     VALUES (?, ?, ?, 1, 'completed', '{}', '{}', ?, ?, ?, ?${hasPid ? ', NULL' : ''})`,
  );
  const insEvent = db.prepare(
    "INSERT INTO events (id, job_id, timestamp, type, data, is_effector) VALUES (?, ?, ?, ?, ?, 0)",
  );
  const workflow = pyJsonDumps({ steps: { work: { name: 'work', executor: { type: 'agent', config: { agent: 'claude' } } } } });
  let jobId = '';
  db.transaction(() => {
    for (let i = 0; i < options.runs; i++) {
      const t = start + i * 10_000;
      const ws = `/srv/project/workspaces/w${i % 97}`;
      if (i % perJob === 0) {
        jobId = genId('job');
        const jobArgs = [jobId, `history job ${i / perJob}`, workflow, ws, pyIsoformat(t), pyIsoformat(t + perJob * 10_000)];
        insJob.run(...(hasName ? [...jobArgs, `history-${i}`] : jobArgs));
        insEvent.run(genId('evt'), jobId, pyIsoformat(t), 'job.started', '{}');
      }
      const pid = firstPid + (i % 30_000);
      const session = randomUuid();
      // A full-avalanche hash of i, so being a script step does not correlate with the pid.
      let h = Math.imul(i ^ (i >>> 16), 0x45d9f3b);
      h = Math.imul(h ^ (h >>> 16), 0x45d9f3b);
      const isScript = ((h ^ (h >>> 16)) >>> 0) % 1000 < scriptFraction * 1000;
      const state = isScript
        ? pyJsonDumps({ pid, stdout_path: `${ws}/.stepwise/step-io/${jobId}/s-1.stdout`, stderr_path: `${ws}/.stepwise/step-io/${jobId}/s-1.stderr` })
        : pyJsonDumps({
            pid,
            pgid: pid,
            output_path: `${ws}/.stepwise/step-io/${jobId}/work-${i}.output.jsonl`,
            working_dir: ws,
            session_id: session,
            session_name: null,
            agent: 'claude',
            output_mode: 'effect',
            output_file: null,
            capture_transcript: false,
          });
      const result = pyJsonDumps({
        artifact: { status: 'completed', session_id: session },
        sidecar: { decisions_made: [], assumptions: [], open_questions: [], constraints_discovered: [] },
        executor_meta: { session_id: session, cost_usd: 0, exit_code: 0, retry: { attempts: 1, reasons: [] } },
        workspace: ws,
        timestamp: pyIsoformat(t + 9_000),
      });
      insRun.run(genId('run'), jobId, isScript ? 'script' : 'work', result, state, pyIsoformat(t), pyIsoformat(t + 9_000));
      if (i % perJob === perJob - 1) insEvent.run(genId('evt'), jobId, pyIsoformat(t + 9_500), 'job.completed', '{}');
    }
  })();
}
