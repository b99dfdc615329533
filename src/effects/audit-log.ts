// The audit trail: append-only JSONL, one record per action carried out (kill, pid file removal)
// and per refusal of an explicit request (--job/--pid, API). Dry runs are never audited.
//
// Durability: every record is written with open(O_APPEND) + write + fsync + close before the
// caller goes on, so a record is on disk before the command returns (and reopening per record
// follows log rotation). One write() per record: concurrent writers (the daemon and a CLI
// reap) never interleave within a line on a local file system.
//
// No action without an audit trail: callers probe() the log before carrying anything out; an
// unwritable log refuses the whole run in one line (AuditLogError). If a write fails midway,
// the executor stops before the next action.
//
// Default location: $XDG_STATE_HOME/stepwise-watchdog/audit.jsonl, else
// ~/.local/state/stepwise-watchdog/audit.jsonl — outside the engine's files. Folders are
// created 0700, the file 0600.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { ActionResult, Actor } from './results.js';
import type { ProcessOutcome } from './kill-tree.js';

export const AUDIT_SCHEMA_VERSION = 1;

export class AuditLogError extends Error {}

export function defaultAuditLogPath(env: NodeJS.ProcessEnv = process.env, home: string = os.homedir()): string {
  const state = env.XDG_STATE_HOME && path.isAbsolute(env.XDG_STATE_HOME) ? env.XDG_STATE_HOME : path.join(home, '.local', 'state');
  return path.join(state, 'stepwise-watchdog', 'audit.jsonl');
}

export interface AuditUser {
  name: string | null;
  uid: number | null;
}

export function currentUser(): AuditUser {
  let name: string | null = null;
  try {
    name = os.userInfo().username;
  } catch {
    // no passwd entry (containers): the uid still says who
  }
  return { name, uid: typeof process.getuid === 'function' ? process.getuid() : null };
}

/** One line of the audit log. */
export interface AuditRecord {
  schemaVersion: number;
  /** ISO-8601, UTC. */
  time: string;
  actor: Actor;
  user: AuditUser;
  host: string;
  /** The watchdog's own pid. */
  watchdogPid: number;
  project: string;
  action: 'kill-tree' | 'kill-session' | 'remove-pid-file' | 'refusal';
  /** "tree 1234", "session <uuid> (pid 5678) in tree 1234", a pid file path, or what the refused request named ("job job-1", "pid 99"). */
  target: string;
  /** Adapter verdict (kill, refusal) or pid-file verdict (removal); null when none applies. */
  verdict: string | null;
  reason: string;
  selectedBy: string | null;
  forced: boolean;
  /** kill: ok|failed|skipped; removal: removed|already-gone|skipped|failed; refusal: refused. */
  outcome: string;
  /** Why skipped/failed/refused (a bounded code), else null. */
  code: string | null;
  detail: string;
  tree: { topPid: number; startTicks: number | null; processes: { pid: number; startTicks: number; argv: string[] }[] } | null;
  jobs: { id: string; status: string }[];
  /** Group signals sent (kill(-pgid)). */
  groupSignals: { pgid: number; signal: string; result: string }[];
  /** Per process: signals sent and what became of it. */
  processes: { pid: number; startTicks: number; argv: string[]; signals: string[]; result: string; bytesFreed: number; note?: string }[];
  bytesFreed: number;
  pidFile: { path: string; pid: number | null; outcome: string | null } | null;
  /** kill-session only: the session stopped inside the (untouched) tree. */
  session?: { sessionId: string; pid: number; startTicks: number; processes: { pid: number; startTicks: number; argv: string[] }[] };
}

function processRecords(processes: readonly ProcessOutcome[]): AuditRecord['processes'] {
  return processes.map((p) => ({
    pid: p.pid,
    startTicks: p.startTicks,
    argv: p.argv,
    signals: p.signals.map((s) => `${s.signal}/${s.via}`),
    result: p.result,
    bytesFreed: p.bytesFreed,
    ...(p.note ? { note: p.note } : {}),
  }));
}

function treeOf(t: { topPid: number; top: { startTicks: number } | null; processes: { pid: number; startTicks: number; argv: string[] }[] }): AuditRecord['tree'] {
  return { topPid: t.topPid, startTicks: t.top?.startTicks ?? null, processes: t.processes.map((p) => ({ pid: p.pid, startTicks: p.startTicks, argv: p.argv })) };
}

export function auditRecord(result: ActionResult, meta: { actor: Actor; user?: AuditUser; time?: Date }): AuditRecord {
  const common = {
    schemaVersion: AUDIT_SCHEMA_VERSION,
    time: (meta.time ?? new Date()).toISOString(),
    actor: meta.actor,
    user: meta.user ?? currentUser(),
    host: os.hostname(),
    watchdogPid: process.pid,
    project: result.project,
  };
  switch (result.kind) {
    case 'kill-tree':
      return {
        ...common,
        action: 'kill-tree',
        target: `tree ${result.topPid}`,
        verdict: result.verdict,
        reason: result.reason,
        selectedBy: result.selectedBy,
        forced: result.forced,
        outcome: result.outcome,
        code: result.code ?? null,
        detail: result.detail,
        tree: treeOf(result.tree),
        jobs: result.jobs,
        groupSignals: result.groupSignals,
        processes: processRecords(result.processes),
        bytesFreed: result.bytesFreed,
        pidFile: result.pidFile ? { path: result.pidFile.path, pid: result.pidFile.pid, outcome: result.pidFile.outcome } : result.tree.pidFile ? { path: result.tree.pidFile, pid: result.topPid, outcome: null } : null,
      };
    case 'kill-session':
      return {
        ...common,
        action: 'kill-session',
        target: `session ${result.sessionId} (pid ${result.pid}) in tree ${result.topPid}`,
        verdict: result.verdict,
        reason: result.reason,
        selectedBy: result.selectedBy,
        forced: false,
        outcome: result.outcome,
        code: result.code ?? null,
        detail: result.detail,
        tree: treeOf(result.tree),
        jobs: result.jobs,
        groupSignals: [],
        processes: processRecords(result.processes),
        bytesFreed: result.bytesFreed,
        pidFile: null,
        session: {
          sessionId: result.sessionId,
          pid: result.pid,
          startTicks: result.startTicks,
          processes: result.session.processes.map((p) => ({ pid: p.pid, startTicks: p.startTicks, argv: p.argv })),
        },
      };
    case 'remove-pid-file':
      return {
        ...common,
        action: 'remove-pid-file',
        target: result.path,
        verdict: result.verdict,
        reason: result.reason,
        selectedBy: result.trigger,
        forced: false,
        outcome: result.outcome,
        code: result.outcome === 'removed' || result.outcome === 'already-gone' ? null : result.outcome,
        detail: result.detail,
        tree: null,
        jobs: [],
        groupSignals: [],
        processes: [],
        bytesFreed: 0,
        pidFile: { path: result.path, pid: result.pid, outcome: result.outcome },
      };
    case 'refusal':
      return {
        ...common,
        action: 'refusal',
        target: result.target,
        verdict: result.tree?.verdict ?? null,
        reason: result.reason,
        selectedBy: result.explicit ? 'explicit' : 'policy',
        forced: result.forced,
        outcome: 'refused',
        code: result.code,
        detail: result.reason,
        tree: result.tree ? treeOf(result.tree) : null,
        jobs: result.tree?.jobs.map((j) => ({ id: j.id, status: j.status })) ?? [],
        groupSignals: [],
        processes: [],
        bytesFreed: 0,
        pidFile: null,
      };
  }
}

/** The append-only JSONL file. Cheap to construct: nothing is touched until probe() or append(). */
export class AuditLog {
  readonly path: string;

  constructor(file: string) {
    this.path = path.resolve(file);
  }

  /** Create the folders (0700) and the file (0600) if needed, and prove it can be appended to. Throws AuditLogError. */
  probe(): void {
    this.withFd(() => undefined);
  }

  /** Append records, each flushed to disk (fsync) before returning. Throws AuditLogError. */
  append(...records: AuditRecord[]): void {
    if (records.length === 0) return;
    this.withFd((fd) => {
      for (const r of records) {
        const line = Buffer.from(`${JSON.stringify(r)}\n`, 'utf8');
        // One write per record (O_APPEND: atomic position); loop only on a short write.
        let off = 0;
        while (off < line.length) off += fs.writeSync(fd, line, off, line.length - off);
      }
      fs.fsyncSync(fd);
    });
  }

  private withFd(fn: (fd: number) => void): void {
    const dir = path.dirname(this.path);
    let createdDir = false;
    try {
      if (!fs.existsSync(dir)) {
        fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
        createdDir = true;
      }
    } catch (err) {
      throw new AuditLogError(`audit log ${this.path} unwritable: cannot create ${dir} (${code(err)})`);
    }
    let fd: number;
    let created = false;
    try {
      created = !fs.existsSync(this.path);
      fd = fs.openSync(this.path, fs.constants.O_WRONLY | fs.constants.O_APPEND | fs.constants.O_CREAT, 0o600);
    } catch (err) {
      throw new AuditLogError(`audit log ${this.path} unwritable (${code(err)})`);
    }
    try {
      const st = fs.fstatSync(fd);
      if (!st.isFile()) throw new AuditLogError(`audit log ${this.path} is not a regular file`);
      fn(fd);
    } catch (err) {
      if (err instanceof AuditLogError) throw err;
      throw new AuditLogError(`audit log ${this.path}: write failed (${code(err)})`);
    } finally {
      fs.closeSync(fd);
    }
    if (created || createdDir) {
      // Make the new directory entry durable too.
      try {
        const dfd = fs.openSync(dir, 'r');
        try {
          fs.fsyncSync(dfd);
        } finally {
          fs.closeSync(dfd);
        }
      } catch {
        // Some file systems refuse fsync on a directory: the file's own fsync still holds.
      }
    }
  }
}

function code(err: unknown): string {
  const e = err as NodeJS.ErrnoException | null;
  return e?.code ?? (e instanceof Error ? e.message : String(err));
}
