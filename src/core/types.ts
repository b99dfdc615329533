// Plain data shared by sources, the pure core, effects and publishers.
// No node:* imports here: everything in src/core is pure (data and `now` in, data out).

/** Job statuses stepwise writes. Unknown values are read by stepwise as `failed`. */
export const JOB_STATUSES = [
  'staged',
  'awaiting_approval',
  'pending',
  'running',
  'paused',
  'completed',
  'failed',
  'cancelled',
  'archived',
] as const;
export type JobStatus = (typeof JOB_STATUSES)[number];
export const TERMINAL_JOB_STATUSES: ReadonlySet<string> = new Set(['completed', 'failed', 'cancelled', 'archived']);

/** Adapter-tree verdicts (exact words used in JSON and metrics). */
export const ADAPTER_VERDICTS = [
  'active',
  'paused',
  'leaked',
  'spawning',
  'unreferenced',
  'orphaned',
  'foreign',
  'in-vm',
] as const;
export type AdapterVerdict = (typeof ADAPTER_VERDICTS)[number];

/** Verdicts of one agent session (one CLI process) inside an adapter tree. */
export const SESSION_VERDICTS = ['active', 'paused', 'leaked', 'unattributed'] as const;
export type SessionVerdict = (typeof SESSION_VERDICTS)[number];

export const PIDFILE_VERDICTS = ['live', 'stale-dead', 'stale-reused', 'invalid'] as const;
export type PidFileVerdict = (typeof PIDFILE_VERDICTS)[number];

/**
 * A process start time: clock ticks after boot (field 22 of /proc/<pid>/stat).
 * Comparable across reads on one boot; (pid, startTicks) is a process's identity.
 */
export interface ProcessIdentity {
  pid: number;
  startTicks: number;
}

export type ProcState = string; // one letter from /proc/<pid>/stat: R S D Z T t X I P W K

/** Identity and placement of one process, from one read (used right before a signal). */
export interface LiveIdentity extends ProcessIdentity {
  state: ProcState;
  ppid: number;
  pgid: number;
  sid: number;
}

export interface ProcessInfo extends ProcessIdentity {
  ppid: number;
  pgid: number;
  sid: number;
  uid: number | null; // null when unknown (fixture without uids)
  state: ProcState;
  comm: string;
  /** argv; empty for kernel threads and zombies. */
  argv: string[];
  rssBytes: number;
  swapBytes: number;
  /** Only filled for the processes that need it (the server). */
  cwd?: string | null;
  /**
   * True when /proc/<pid>/status was read for this process, so `uid` and `swapBytes` are
   * known; otherwise uid is null and swapBytes 0 (unknown, not measured).
   */
  detailed?: boolean;
}

/** Clock facts needed to turn start ticks into wall time. */
export interface ClockInfo {
  /** Wall-clock epoch seconds of boot (fractional when estimated from /proc/uptime). */
  bootTimeEpoch: number;
  ticksPerSecond: number;
  /** Uncertainty of bootTimeEpoch in seconds (1 when it came from integer btime). */
  bootTimeErrorSeconds: number;
}

export interface ProcessTable {
  processes: ProcessInfo[];
  clock: ClockInfo;
  /**
   * Tree members seen in earlier reads, by identity: a process that left its tree's ppid chain
   * and group (double fork, setsid) stays in that tree while it is the same (pid, start ticks)
   * and the tree is (its top the same process, or its group still live). Bounded by the caller.
   */
  remembered?: readonly RememberedMember[];
}

/** One process remembered as a member of the tree whose top is (topPid, topStartTicks). */
export interface RememberedMember extends ProcessIdentity {
  topPid: number;
  topStartTicks: number;
}

export interface SourceHealth {
  ok: boolean;
  /** One short line when not ok ("store down: database is locked for more than 2000 ms"). */
  error?: string;
  durationSeconds: number;
  /** Entries the source listed but could not read (the process table: pids whose files were unreadable). Treated as unknown, never dead. */
  unreadable?: number;
}

export interface ServerPidFile {
  pid: number;
  port?: number;
  url?: string;
  startedAt?: string; // ISO-8601 as written
}

export interface ServerInfo {
  pidFile: ServerPidFile | null;
  /** Why the pid file could not be used, if it could not. */
  pidFileProblem?: string;
  alive: boolean;
  identity: ProcessIdentity | null;
  cwd: string | null;
  /** Set when the pid file exists but names no live matching process. */
  stale: boolean;
  reason: string;
  /** The live server's own memory (for the growth metric); null when down or unknown. */
  memory?: { rssBytes: number; swapBytes: number } | null;
}

export interface PidFileEntry {
  path: string;
  name: string;
  /** null when the file is invalid. */
  pid: number | null;
  agent: string | null;
  /** Epoch seconds (fractional) of the file's mtime. */
  mtimeEpoch: number | null;
  /** inode/dev, to re-check the same file before unlinking. */
  ino: number | null;
  dev: number | null;
  invalidReason?: string;
}

export interface JobRow {
  id: string;
  status: string; // raw value; normalise with normaliseJobStatus()
  updatedAt: string | null;
  /** Epoch seconds when the latest terminal event (job.failed/job.completed) was written, if read. */
  name?: string | null;
  /** Reason from a job.failed event, e.g. "abandoned". */
  failReason?: string | null;
}

export interface RunRow {
  id: string;
  jobId: string;
  stepName: string;
  attempt: number | null;
  status: string;
  startedAt: string | null;
  completedAt: string | null;
  /** executor_state.pid (or the pid column) of an agent step; null when none. */
  pid: number | null;
  /**
   * executor_state.pgid: the adapter's process group (= its top pid: stepwise spawns it with
   * start_new_session). Names the tree when the top is dead and its group lives on; null when
   * absent or 0 (stepwise writes 0 when getpgid failed).
   */
  pgid: number | null;
  /** executor_state.session_id: the ACP session the step ran in (the CLI's --session-id). */
  sessionId: string | null;
  agent: string | null;
  inVm: boolean;
  /**
   * An agent step (executor_state names an agent or a session). Only agent runs are evidence for
   * an adapter or "starting an agent"; script steps record a pid too. Every open run counts for
   * "stale running runs".
   */
  agentStep: boolean;
  /**
   * The migrated `step_runs.pid` column (null on old schemas). Set while a run is open; the
   * engine clears it when the run finishes, so on a finished run it was written afterwards:
   * the retry of a cancelled job's step recording a fresh adapter on the cancelled run.
   */
  pidColumn: number | null;
}

/** What the store source hands to the classifier. */
export interface StoreSnapshot {
  /** Agent runs that name a pid of interest, plus every open run (running, suspended, delegated). */
  runs: RunRow[];
  /** Jobs referenced by those runs, by id. */
  jobs: Record<string, JobRow>;
  /** Columns the store has (old schemas lack migrated ones). */
  schema: { stepRunsPidColumn: boolean; schemaVersion: number };
}

export interface Policy {
  markers: string[];
  spawnGraceSeconds: number;
  terminalGraceSeconds: number;
  /** Seconds of slack when comparing wall times from different clocks. */
  clockToleranceSeconds: number;
  /** comm names of processes that adopt orphans (besides pid 1). */
  subreapers: string[];
}

export const DEFAULT_POLICY: Policy = {
  markers: ['claude-agent-acp', 'codex-acp', 'aloop serve'],
  spawnGraceSeconds: 60,
  terminalGraceSeconds: 30,
  clockToleranceSeconds: 0.05,
  subreapers: ['systemd'],
};

export interface JobRef {
  id: string;
  status: string;
  terminal: boolean;
  /** Epoch seconds the job became terminal (updated_at), when terminal. */
  terminalSinceEpoch: number | null;
  failReason?: string | null;
}

export type Evidence =
  | { kind: 'run'; runId: string; jobId: string }
  | { kind: 'pid-file'; path: string }
  | { kind: 'server-child'; serverPid: number };

export interface TreeProcess extends ProcessIdentity {
  ppid: number;
  pgid: number;
  sid: number;
  uid: number | null;
  state: ProcState;
  argv: string[];
  rssBytes: number;
  swapBytes: number;
}

/** One ACP session inside an adapter tree: its agent CLI process and that process's descendants. */
export interface AdapterSession {
  sessionId: string;
  /** The CLI process (the outermost tree member whose argv carries the session id). */
  pid: number;
  startTicks: number;
  verdict: SessionVerdict;
  reason: string;
  /** Jobs of the step runs whose executor_state.session_id is this session. */
  jobs: JobRef[];
  runIds: string[];
  /** The CLI first, then its descendants. */
  processes: TreeProcess[];
  rssBytes: number;
  swapBytes: number;
  /** Latest terminalSinceEpoch of its jobs, when all are terminal. */
  lastTerminalEpoch: number | null;
}

export interface AdapterTree {
  topPid: number;
  /** The top's identity: (pid, start ticks). null for in-vm entries. */
  top: ProcessIdentity | null;
  processes: TreeProcess[];
  verdict: AdapterVerdict;
  reason: string;
  jobs: JobRef[];
  evidence: Evidence[];
  rssBytes: number;
  swapBytes: number;
  ageSeconds: number;
  startEpoch: number | null;
  pidFile: string | null;
  agent: string | null;
  /** Latest terminalSinceEpoch of the referencing jobs, when all are terminal. */
  lastTerminalEpoch: number | null;
  /** Run ids that referenced the tree (for re-verification). */
  runIds: string[];
  /** Agent sessions inside the tree (one CLI each), oldest first. */
  sessions: AdapterSession[];
}

export interface PidFileStatus {
  path: string;
  name: string;
  pid: number | null;
  agent: string | null;
  verdict: PidFileVerdict;
  reason: string;
  ino: number | null;
  dev: number | null;
  /** Identity of the live process the file names, when live. */
  process: ProcessIdentity | null;
}

export interface StaleRunningRun {
  runId: string;
  jobId: string;
  jobStatus: string;
  stepName: string;
  startedAt: string | null;
  pid: number | null;
}

export interface ProjectInventory {
  root: string;
  pidsDir: string;
  dbPath: string;
  server: ServerInfo;
  sources: Record<string, SourceHealth>;
  adapters: AdapterTree[];
  pidFiles: PidFileStatus[];
  staleRunningRuns: StaleRunningRun[];
  /** Runs of running jobs with no pid recorded yet, per agent (the engine may adopt an adapter). */
  startingRuns: { runId: string; jobId: string; agent: string | null }[];
  /** What the store's schema offers (old stepwise versions lack migrated columns); null when unread. */
  storeSchema: StoreSnapshot['schema'] | null;
  now: number;
}
