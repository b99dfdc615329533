// The process-table port read from `ps` (macOS, where there is no /proc; it runs on Linux too,
// where the suite cross-checks it against the /proc source). One `ps` call is one atomic-enough
// snapshot: every field of a row comes from the same read (two calls, as ps-list makes, are not:
// a pid can change between them). ps-list and pidusage are not used: on darwin neither gives a
// pgid or a start time, the tree and the identity.
//
// What differs from /proc (README "On macOS"): identity is (pid, start second, args digest)
// (ps-parse.ts); no session id (`sess` is a kernel pointer on macOS): sid is reported as 0; rss
// only, no swap (macOS compresses idle memory; it has no per-process swap figure); the server's
// cwd comes from `lsof`. A `ps` that cannot run or is refused (a sandbox) makes the source down
// with ps's own message: never guessed, never "dead".

import { spawnSync } from 'node:child_process';
import { isDead } from '../core/process-tree.js';
import type { ClockInfo, LiveIdentity, ProcessInfo, SourceHealth } from '../core/types.js';
import type { IdentityRead, ProcessPort, ProcessTableResult, TableOptions } from './process-port.js';
import { PS_TICKS_PER_SECOND, isPsKernelThread, parseLsofCwd, parsePsOutput, psArgv, psComm, psStartTicks, type PsRow } from './ps-parse.js';

export const PS_FIELDS = 'pid=,ppid=,pgid=,uid=,rss=,state=,lstart=,args=';

export interface CommandResult {
  /** Exit status; null when the command could not be started (then `error` says why). */
  status: number | null;
  stdout: string;
  stderr: string;
  error?: string;
}

/** Runs one command (never a shell). Injected in tests to feed fixed text. */
export type CommandRunner = (file: string, args: readonly string[]) => CommandResult;

export const runCommand: CommandRunner = (file, args) => {
  const r = spawnSync(file, [...args], {
    encoding: 'utf8',
    // Only what the format needs: no PS_PERSONALITY, PS_FORMAT or locale of the caller's shaping it.
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin:/usr/sbin:/sbin', LC_ALL: 'C', TZ: 'UTC' },
    timeout: 10_000,
    maxBuffer: 64 * 1024 * 1024,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const error = r.error ? ((r.error as NodeJS.ErrnoException).code ?? r.error.message) : undefined;
  return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '', ...(error ? { error } : {}) };
};

export interface PsPortOptions {
  /** The ps binary. Default /bin/ps on macOS (the system's, never one earlier on PATH), else `ps` on PATH. */
  ps?: string;
  /** The lsof binary, for a process's cwd. Default /usr/sbin/lsof on macOS, else `lsof` on PATH. */
  lsof?: string;
  run?: CommandRunner;
}

function firstLine(s: string): string {
  return s.trim().split('\n')[0]?.trim() ?? '';
}

function failure(what: string, r: CommandResult): string {
  if (r.status === null) return `${what}: cannot run (${r.error ?? 'unknown error'})`;
  return `${what}: exit ${r.status}${firstLine(r.stderr) ? `: ${firstLine(r.stderr)}` : ''}`;
}

/** The `ps` implementation of the process-table port. */
export function psPort(opts: PsPortOptions = {}): ProcessPort {
  const darwin = process.platform === 'darwin';
  const ps = opts.ps ?? (darwin ? '/bin/ps' : 'ps');
  const lsof = opts.lsof ?? (darwin ? '/usr/sbin/lsof' : 'lsof');
  const run = opts.run ?? runCommand;
  // Start ticks count from pid 1's start (launchd, init: the boot, or the container's start),
  // read once: identities stay comparable for the life of the port.
  let base: { epoch: number } | null = null;

  const snapshot = (selector: readonly string[]): { rows: PsRow[]; ambiguous: number[]; malformed: number } | { error: string; gone?: boolean } => {
    const r = run(ps, [...selector, '-ww', '-o', PS_FIELDS]);
    if (r.status === null) return { error: failure('ps', r) };
    const parsed = parsePsOutput(r.stdout);
    // `ps -p N` exits 1 with nothing printed when N does not exist; anything else non-zero is a refusal.
    if (r.status !== 0 && !(r.status === 1 && parsed.rows.length === 0 && firstLine(r.stderr) === '')) return { error: failure('ps', r) };
    if (r.status === 1 && parsed.rows.length === 0 && parsed.ambiguous.length === 0) return { error: 'no such process', gone: true };
    return { rows: parsed.rows, ambiguous: parsed.ambiguous, malformed: parsed.malformed };
  };

  const clockFrom = (rows: readonly PsRow[] | null): { clock: ClockInfo; error?: string } => {
    if (base === null && rows) {
      const init = rows.find((r) => r.pid === 1);
      if (init) base = { epoch: init.startEpoch };
    }
    if (base === null) {
      const s = snapshot(['-p', '1']);
      const init = 'rows' in s ? s.rows.find((r) => r.pid === 1) : undefined;
      if (init) base = { epoch: init.startEpoch };
    }
    if (base === null) {
      return {
        clock: { bootTimeEpoch: 0, ticksPerSecond: PS_TICKS_PER_SECOND, bootTimeErrorSeconds: Number.POSITIVE_INFINITY },
        error: 'boot time unknown (ps lists no pid 1)',
      };
    }
    // lstart is whole seconds, and procps derives it from the whole-second boot time: a start
    // time is known to two seconds (measured against /proc: up to 1.05 s early).
    return { clock: { bootTimeEpoch: base.epoch, ticksPerSecond: PS_TICKS_PER_SECOND, bootTimeErrorSeconds: 2 } };
  };

  const toInfo = (row: PsRow, baseEpoch: number): ProcessInfo => {
    const argv = psArgv(row);
    return {
      pid: row.pid,
      ppid: row.ppid,
      pgid: row.pgid,
      sid: 0,
      uid: row.uid,
      state: row.state,
      comm: psComm(argv),
      argv,
      startTicks: psStartTicks(row, baseEpoch),
      rssBytes: row.rssKib * 1024,
      swapBytes: 0,
      detailed: true,
    };
  };

  const identityOf = (row: PsRow, baseEpoch: number): LiveIdentity => ({
    pid: row.pid,
    startTicks: psStartTicks(row, baseEpoch),
    state: row.state,
    ppid: row.ppid,
    pgid: row.pgid,
    sid: 0,
  });

  const table = (_opts: TableOptions = {}): ProcessTableResult => {
    const started = performance.now();
    const s = snapshot(['-ax']);
    const rows = 'rows' in s ? s.rows : null;
    const { clock, error: clockError } = clockFrom(rows);
    const duration = () => (performance.now() - started) / 1000;
    if (!rows) {
      const health: SourceHealth = { ok: false, error: `processes down: ${'error' in s ? s.error : 'ps failed'}`, durationSeconds: duration() };
      return { table: { processes: [], clock }, health, unreadablePids: [], mode: 'full' };
    }
    const processes = rows.filter((r) => !isPsKernelThread(r)).map((r) => toInfo(r, clock.bootTimeEpoch));
    const ambiguous = 'ambiguous' in s ? s.ambiguous : [];
    const malformed = 'malformed' in s ? s.malformed : 0;
    const problems = [
      ...(ambiguous.length ? [`${ambiguous.length} pid(s) printed twice, not judged (first: ${ambiguous[0]})`] : []),
      // A line that does not parse may be a process this table then lacks: said, counted as unreadable.
      ...(malformed ? [`${malformed} ps line(s) not understood`] : []),
      ...(clockError ? [clockError] : []),
    ];
    const health: SourceHealth = { ok: problems.length === 0, durationSeconds: duration(), unreadable: ambiguous.length + malformed };
    if (problems.length) health.error = `processes degraded: ${problems.join('; ')}`;
    return { table: { processes, clock }, health, unreadablePids: ambiguous, mode: 'full' };
  };

  /** One process now: live, provably gone (ps says no such pid), or unknown (ps failed). */
  const one = (pid: number): { kind: 'row'; row: PsRow; base: number } | { kind: 'gone' } | { kind: 'unknown'; error: string } => {
    if (!Number.isSafeInteger(pid) || pid <= 0) return { kind: 'gone' };
    const s = snapshot(['-p', base === null ? `1,${pid}` : String(pid)]);
    if ('error' in s) return s.gone ? { kind: 'gone' } : { kind: 'unknown', error: s.error };
    const { clock, error } = clockFrom(s.rows);
    if (error) return { kind: 'unknown', error };
    if (s.ambiguous.includes(pid)) return { kind: 'unknown', error: `ps printed pid ${pid} twice` };
    const row = s.rows.find((r) => r.pid === pid);
    if (row) return { kind: 'row', row, base: clock.bootTimeEpoch };
    // ps printed something for it that did not parse: unknown, never gone (gone removes pid files).
    return s.malformed > 0 ? { kind: 'unknown', error: `ps line for pid ${pid} not understood` } : { kind: 'gone' };
  };

  return {
    kind: 'ps',
    root: ps,
    table,
    identity: (pid): IdentityRead => {
      const r = one(pid);
      return r.kind === 'row' ? { kind: 'live', id: identityOf(r.row, r.base) } : r;
    },
    groupMembers: (pgid) => {
      const t = table();
      // A degraded table (a line not understood, a pid printed twice) may lack a member: unknown.
      if (!t.health.ok) return null;
      return t.table.processes.filter((p) => p.pgid === pgid && !isDead(p)).map((p) => ({ pid: p.pid, startTicks: p.startTicks, state: p.state, ppid: p.ppid, pgid: p.pgid, sid: p.sid }));
    },
    // ps reads the whole table in one call anyway: no targeted reads (every table is `full`).
    children: (pid) => {
      const t = table();
      // A degraded table may lack the process or a child: unknown, as for groupMembers.
      if (!t.health.ok) return { kind: 'unknown', error: t.health.error ?? 'ps failed' };
      if (!t.table.processes.some((p) => p.pid === pid && !isDead(p))) return { kind: 'gone' };
      return { kind: 'ok', pids: t.table.processes.filter((p) => p.ppid === pid && !isDead(p)).map((p) => p.pid) };
    },
    childrenSupported: () => false,
    argv: (pid) => {
      const r = one(pid);
      return r.kind === 'row' ? psArgv(r.row) : null;
    },
    cwd: (pid) => {
      if (!Number.isSafeInteger(pid) || pid <= 0) return null;
      const r = run(lsof, ['-a', '-d', 'cwd', '-p', String(pid), '-Fn']);
      return r.status === 0 ? parseLsofCwd(r.stdout) : null;
    },
    memory: (pid) => {
      const r = one(pid);
      return r.kind === 'row' && r.row.state !== 'Z' ? { rssBytes: r.row.rssKib * 1024, swapBytes: 0 } : null;
    },
    clock: () => clockFrom(null),
    // macOS has no MemAvailable; vm_stat's pages are not the same figure. Unknown, said so by the demo.
    memAvailableBytes: () => null,
  };
}

/** Whether `lsof` runs here (doctor: without it the server's cwd, so its pids folder, is unknown). */
export function lsofAvailable(run: CommandRunner = runCommand, lsof = 'lsof'): boolean {
  const r = run(lsof, ['-v']);
  return r.status !== null;
}
