// The process-table source: reads /proc directly (root injectable), never writes, never throws.
//
// Why not a library (figures from /work/shared/measurements.md, 2,067 processes, 2 cores):
// - ps-list 9 spawns two `ps` and readlinks every /proc/<pid>/exe: 144 ms per pass, and it
//   gives no pgid, no session and no RSS in bytes, which the tree and kill logic need.
// - pidusage 4 reads the same /proc/<pid>/stat (36 ms) but returns no pgid, sid or start
//   time (the process identity), and keeps per-pid history for 60 s unless cleared.
// - A plain `fs.readFileSync` loop over stat costs 37 ms against a 22 ms C floor, while
//   `Promise.all` of `fs.promises.readFile` costs 282 ms (libuv thread-pool overhead per tiny
//   file): this reader is synchronous on purpose.
// What is read: stat for every pid; cmdline for every non-kernel-thread, non-zombie process
// (markers are in argv, and any command can be an adapter); status (uid, swap) only for the
// processes the caller selects plus their descendants and group members, decided after the
// whole stat pass so that an adapter's unmarked `claude` grandchild gets its details too.
// A daemon can pass an ArgvCache to skip re-reading unchanged argvs.

import { readFileSync, readdirSync, readlinkSync, openSync, readSync, closeSync } from 'node:fs';
import { isDead, sameIdentity } from '../core/process-tree.js';
import type { ClockInfo, LiveIdentity, ProcessInfo, ProcessTable, SourceHealth } from '../core/types.js';
import { ArgvCache } from './argv-cache.js';
import type { ChildrenRead, IdentityRead, ProcessPort, ProcessTableResult, TableOptions } from './process-port.js';

export type { ChildrenRead };
import { isKernelThread, parseBtime, parseChildren, parseCmdline, parseStat, parseStatusUidAndSwap, parseUptime } from './proc-stat.js';

export const DEFAULT_PROC_ROOT = '/proc';
/** USER_HZ: the unit of start times in /proc/<pid>/stat. Fixed at 100 by the Linux ABI on every architecture. */
export const DEFAULT_TICKS_PER_SECOND = 100;
/** Uncertainty of a boot time estimated from /proc/uptime (two decimals) and Date.now() (ms). */
export const UPTIME_BOOT_ERROR_SECONDS = 0.02;
/** Uncertainty of the integer `btime` of /proc/stat. */
export const BTIME_BOOT_ERROR_SECONDS = 1;

/** The port's table options, plus the /proc root (procPort fixes it). */
export type ReadProcessTableOptions = TableOptions & { procRoot?: string };

export { ArgvCache };
export type { ProcessTableResult };

export type { LiveIdentity };

/** The process went away between listing and reading: normal, never counted as an error. */
function vanished(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  return code === 'ENOENT' || code === 'ESRCH';
}

function errorCode(err: unknown): string {
  const e = err as NodeJS.ErrnoException | null;
  return e?.code ?? (e instanceof Error ? e.message : String(err));
}

let cachedPageSize: number | null = null;

/**
 * The kernel page size, read once per process from the first mapping of /proc/self/smaps
 * ("KernelPageSize: 4 kB"; reading 4 KiB of it costs microseconds, no `getconf` spawn).
 * 4096 when unreadable.
 */
export function detectPageSize(): number {
  if (cachedPageSize !== null) return cachedPageSize;
  let size = 4096;
  try {
    const fd = openSync('/proc/self/smaps', 'r');
    try {
      const buf = Buffer.alloc(4096);
      const n = readSync(fd, buf, 0, buf.length, 0);
      const m = /KernelPageSize:\s+(\d+)\s+kB/.exec(buf.subarray(0, n).toString('latin1'));
      const kb = m && m[1] !== undefined ? Number(m[1]) : NaN;
      if (Number.isSafeInteger(kb) && kb > 0) size = kb * 1024;
    } finally {
      closeSync(fd);
    }
  } catch {
    // not Linux, or /proc not mounted: keep the common default
  }
  cachedPageSize = size;
  return size;
}

/**
 * Boot time as wall-clock epoch seconds. From /proc/uptime when readable (fractional,
 * ±0.02 s); else from the integer btime of /proc/stat (±1 s). Both follow CLOCK_BOOTTIME,
 * the clock stat's starttime counts in (also inside time namespaces).
 */
export function readClock(opts: { procRoot?: string; ticksPerSecond?: number; now?: () => number } = {}): {
  clock: ClockInfo;
  error?: string;
} {
  const procRoot = opts.procRoot ?? DEFAULT_PROC_ROOT;
  const ticksPerSecond = opts.ticksPerSecond ?? DEFAULT_TICKS_PER_SECOND;
  const now = opts.now ?? Date.now;
  try {
    const uptime = parseUptime(readFileSync(`${procRoot}/uptime`, 'latin1'));
    const wall = now() / 1000;
    // uptime is printed truncated to 1/100 s: the true value is on average 0.005 s more.
    if (uptime !== null) return { clock: { bootTimeEpoch: wall - (uptime + 0.005), ticksPerSecond, bootTimeErrorSeconds: UPTIME_BOOT_ERROR_SECONDS } };
  } catch {
    // fall back to btime
  }
  try {
    const btime = parseBtime(readFileSync(`${procRoot}/stat`, 'latin1'));
    if (btime !== null) return { clock: { bootTimeEpoch: btime, ticksPerSecond, bootTimeErrorSeconds: BTIME_BOOT_ERROR_SECONDS } };
  } catch {
    // reported below
  }
  // Unknown boot time: an infinite error makes every start-time comparison inconclusive.
  return {
    clock: { bootTimeEpoch: 0, ticksPerSecond, bootTimeErrorSeconds: Number.POSITIVE_INFINITY },
    error: `boot time unknown (${procRoot}/uptime and btime in ${procRoot}/stat unreadable)`,
  };
}

type ReadOutcome<T> = { ok: true; value: T } | { ok: false; gone: true } | { ok: false; gone: false; error: string };

/**
 * One reusable buffer for the small /proc files read by the thousand (stat, cmdline, status):
 * `readFileSync` allocates a Buffer per file (procfs reports size 0, so it reads in chunks and
 * concatenates), which a daemon's sweep turns into megabytes of garbage per cycle. Grown for a
 * long cmdline, shrunk back after it.
 */
const SCRATCH_BYTES = 64 * 1024;
let scratch = Buffer.allocUnsafe(SCRATCH_BYTES);

/** The file's bytes as a view of the shared buffer: valid until the next read. */
function readProcFile(path: string): Buffer {
  const fd = openSync(path, 'r');
  try {
    let n = 0;
    for (;;) {
      if (n === scratch.length) {
        const bigger = Buffer.allocUnsafe(scratch.length * 2);
        scratch.copy(bigger, 0, 0, n);
        scratch = bigger;
      }
      const got = readSync(fd, scratch, n, scratch.length - n, null);
      if (got === 0) break;
      n += got;
    }
    const view = scratch.subarray(0, n);
    if (scratch.length > SCRATCH_BYTES) scratch = Buffer.allocUnsafe(SCRATCH_BYTES); // the view keeps the big one alive
    return view;
  } finally {
    closeSync(fd);
  }
}

function readText(path: string): ReadOutcome<string> {
  try {
    return { ok: true, value: readProcFile(path).toString('utf8') };
  } catch (err) {
    return vanished(err) ? { ok: false, gone: true } : { ok: false, gone: false, error: `${errorCode(err)} ${path}` };
  }
}

/** Bytes valid until the next read (parse them at once). */
function readBytes(path: string): ReadOutcome<Buffer> {
  try {
    return { ok: true, value: readProcFile(path) };
  } catch (err) {
    return vanished(err) ? { ok: false, gone: true } : { ok: false, gone: false, error: `${errorCode(err)} ${path}` };
  }
}

/**
 * Read the process table. Never throws: a missing /proc yields an empty table and
 * `ok: false`; unreadable entries are counted ("processes degraded: N unreadable").
 */
export function readProcessTable(opts: ReadProcessTableOptions = {}): ProcessTableResult {
  const started = performance.now();
  const procRoot = opts.procRoot ?? DEFAULT_PROC_ROOT;
  const pageSize = opts.pageSize ?? detectPageSize();
  const ticksPerSecond = opts.ticksPerSecond ?? DEFAULT_TICKS_PER_SECOND;
  const { clock, error: clockError } = readClock({ procRoot, ticksPerSecond, now: opts.now ?? Date.now });

  const processes: ProcessInfo[] = [];
  const unreadable: number[] = [];
  let firstError: string | null = null;
  const fail = (pid: number, error: string): void => {
    unreadable.push(pid);
    firstError ??= error;
  };

  const targeted = opts.targeted && childrenFilesSupported(procRoot) ? opts.targeted : null;
  let names: string[] = [];
  if (!targeted) {
    try {
      names = readdirSync(procRoot);
    } catch (err) {
      return {
        table: { processes, clock },
        health: { ok: false, error: `processes down: cannot list ${procRoot} (${errorCode(err)})`, durationSeconds: (performance.now() - started) / 1000 },
        unreadablePids: [],
        mode: 'full',
      };
    }
  }

  // Pass 1: stat (and cmdline for user processes) for every pid, or for the targeted ones.
  const cache = opts.argvCache;
  cache?.beginPass();
  const readOne = (pid: number): ProcessInfo | null => {
    const statRead = readText(`${procRoot}/${pid}/stat`);
    if (!statRead.ok) {
      if (!statRead.gone) fail(pid, statRead.error);
      return null;
    }
    const s = parseStat(statRead.value);
    if (s === null || s.pid !== pid) {
      fail(pid, `malformed ${procRoot}/${pid}/stat`);
      return null;
    }
    let argv: string[] = [];
    // Kernel threads and zombies have an empty cmdline: skip the read.
    if (!isKernelThread(s) && s.state !== 'Z' && s.state !== 'X') {
      const cached = cache?.get(pid, s.starttime, s.comm);
      if (cached) argv = cached;
      else {
        const cmd = readBytes(`${procRoot}/${pid}/cmdline`);
        if (cmd.ok) {
          argv = parseCmdline(cmd.value);
          cache?.set(pid, s.starttime, s.comm, argv);
        } else if (cmd.gone) return null;
        else fail(pid, cmd.error); // keep the process: its stat is good, its argv unknown
      }
    }
    const p: ProcessInfo = {
      pid,
      startTicks: s.starttime,
      ppid: s.ppid,
      pgid: s.pgrp,
      sid: s.session,
      uid: null,
      state: s.state,
      comm: s.comm,
      argv,
      rssBytes: s.rssPages * pageSize,
      swapBytes: 0,
    };
    processes.push(p);
    if (targeted) threads.set(pid, s.numThreads);
    return p;
  };
  const threads = new Map<number, number>();
  let probed: Set<number> | undefined;
  if (targeted) {
    probed = new Set();
    const stack = [...targeted.pids];
    while (stack.length > 0) {
      const pid = stack.pop()!;
      if (!Number.isSafeInteger(pid) || pid <= 0 || probed.has(pid)) continue;
      probed.add(pid);
      const p = readOne(pid);
      // Never walk down from pid 1 or kthreadd (that would be the whole host), nor a zombie.
      if (p === null || pid <= 2 || isDead(p) || p.ppid === 2) continue;
      const kids = readChildren(pid, procRoot, threads.get(pid));
      if (kids.kind === 'unknown') fail(pid, kids.error);
      else if (kids.kind === 'ok') for (const c of kids.pids) stack.push(c);
    }
    // The parent of every process read is read too (not its other children): who adopted an
    // orphan (pid 1, a subreaper) and what a foreign tree's parent is are judged from it.
    for (const pid of targeted.context ?? []) {
      if (Number.isSafeInteger(pid) && pid > 0 && !probed.has(pid)) {
        probed.add(pid);
        readOne(pid);
      }
    }
    for (const p of [...processes]) {
      if (p.ppid > 0 && !probed.has(p.ppid)) {
        probed.add(p.ppid);
        readOne(p.ppid);
      }
    }
  } else {
    for (const name of names) {
      const c = name.charCodeAt(0);
      if (c < 48 || c > 57 || !/^\d+$/.test(name)) continue;
      readOne(Number(name));
    }
  }

  cache?.endPass();

  // Pass 2: status for the selected processes (and their descendants / group members).
  const selected = opts.detailFor ? selectForDetails(processes, opts.detailFor, opts.detailDescendants ?? true) : null;
  let kept = processes;
  if (selected && selected.size > 0) {
    const gone = new Set<number>();
    for (const p of processes) {
      if (!selected.has(p.pid)) continue;
      const st = readText(`${procRoot}/${p.pid}/status`);
      if (!st.ok) {
        if (st.gone) gone.add(p.pid);
        else fail(p.pid, st.error);
        continue;
      }
      const f = parseStatusUidAndSwap(st.value);
      p.uid = f.uid;
      p.swapBytes = f.swapBytes ?? 0;
      if (f.rssBytes !== null) p.rssBytes = f.rssBytes;
      p.detailed = true;
    }
    if (gone.size > 0) kept = processes.filter((p) => !gone.has(p.pid));
  }

  const problems: string[] = [];
  if (unreadable.length > 0) problems.push(`${unreadable.length} unreadable (first: ${firstError})`);
  if (clockError) problems.push(clockError);
  const health: SourceHealth = { ok: problems.length === 0, durationSeconds: (performance.now() - started) / 1000, unreadable: unreadable.length };
  if (problems.length > 0) health.error = `processes degraded: ${problems.join('; ')}`;
  return { table: { processes: kept, clock }, health, unreadablePids: unreadable, mode: targeted ? 'targeted' : 'full', ...(probed ? { probed } : {}) };
}

function selectForDetails(
  processes: readonly ProcessInfo[],
  detailFor: (p: ProcessInfo) => boolean,
  withDescendants: boolean,
): Set<number> {
  const selected = new Set<number>();
  const roots: ProcessInfo[] = [];
  for (const p of processes) {
    if (detailFor(p)) {
      selected.add(p.pid);
      roots.push(p);
    }
  }
  if (!withDescendants || roots.length === 0) return selected;
  const children = new Map<number, ProcessInfo[]>();
  const groups = new Map<number, ProcessInfo[]>();
  for (const p of processes) {
    if (p.pid === p.ppid) continue;
    let list = children.get(p.ppid);
    if (!list) children.set(p.ppid, (list = []));
    list.push(p);
    let group = groups.get(p.pgid);
    if (!group) groups.set(p.pgid, (group = []));
    group.push(p);
  }
  const seen = new Set<number>();
  const stack = [...roots];
  while (stack.length > 0) {
    const p = stack.pop()!;
    if (seen.has(p.pid)) continue;
    seen.add(p.pid);
    selected.add(p.pid);
    // Never walk down from pid 1 or kthreadd: that would select everything.
    if (p.pid <= 2) continue;
    for (const c of children.get(p.pid) ?? []) stack.push(c);
    if (p.pgid === p.pid) for (const m of groups.get(p.pid) ?? []) stack.push(m);
  }
  return selected;
}

const childrenSupport = new Map<string, boolean>();

/**
 * Does the kernel provide /proc/<pid>/task/<tid>/children (CONFIG_PROC_CHILDREN, Linux ≥ 3.5
 * with that option; every mainstream distribution kernel)? Probed once per root on our own main
 * thread. Without it targeted reads fall back to a full scan.
 */
export function childrenFilesSupported(procRoot: string = DEFAULT_PROC_ROOT): boolean {
  let known = childrenSupport.get(procRoot);
  if (known === undefined) {
    try {
      readFileSync(`${procRoot}/${process.pid}/task/${process.pid}/children`, 'latin1');
      known = true;
    } catch {
      known = false;
    }
    childrenSupport.set(procRoot, known);
  }
  return known;
}


/**
 * The live children of one process: the union of its threads' children files (a child belongs to
 * the thread that forked it). `gone` when the process does not exist; a thread that exits
 * meanwhile is skipped (its children are reparented to another thread of the same process).
 */
export function readChildren(pid: number, procRoot: string = DEFAULT_PROC_ROOT, numThreads?: number): ChildrenRead {
  let tids: string[];
  if (numThreads === 1) {
    // Single-threaded (stat's num_threads): its one thread is the process itself; no listing.
    try {
      const pids = parseChildren(readProcFile(`${procRoot}/${pid}/task/${pid}/children`).toString('latin1'));
      if (pids !== null) return { kind: 'ok', pids };
      // malformed: the listing below reads it again and says so (unknown, never "no children")
    } catch {
      // exited, or a thread appeared meanwhile: list the threads
    }
  }
  try {
    tids = readdirSync(`${procRoot}/${pid}/task`);
  } catch (err) {
    return vanished(err) ? { kind: 'gone' } : { kind: 'unknown', error: `${errorCode(err)} ${procRoot}/${pid}/task` };
  }
  const pids: number[] = [];
  for (const tid of tids) {
    let text: string;
    try {
      text = readProcFile(`${procRoot}/${pid}/task/${tid}/children`).toString('latin1');
    } catch (err) {
      if (vanished(err)) continue;
      return { kind: 'unknown', error: `${errorCode(err)} ${procRoot}/${pid}/task/${tid}/children` };
    }
    const kids = parseChildren(text);
    if (kids === null) return { kind: 'unknown', error: `malformed ${procRoot}/${pid}/task/${tid}/children` };
    pids.push(...kids);
  }
  return { kind: 'ok', pids };
}

/** One stat read of one pid: live (zombies included), provably gone (ENOENT/ESRCH), or unknown. */
export function readIdentityOf(pid: number, procRoot: string = DEFAULT_PROC_ROOT): IdentityRead {
  if (!Number.isSafeInteger(pid) || pid <= 0) return { kind: 'gone' };
  let text: string;
  try {
    text = readProcFile(`${procRoot}/${pid}/stat`).toString('utf8');
  } catch (err) {
    return vanished(err) ? { kind: 'gone' } : { kind: 'unknown', error: `${errorCode(err)} ${procRoot}/${pid}/stat` };
  }
  const s = parseStat(text);
  if (s === null || s.pid !== pid) return { kind: 'unknown', error: `malformed ${procRoot}/${pid}/stat` };
  return { kind: 'live', id: { pid, startTicks: s.starttime, state: s.state, ppid: s.ppid, pgid: s.pgrp, sid: s.session } };
}

/** The identity when readable and present, else null (gone OR unknown: callers that must tell them apart use readIdentityOf). */
export function readIdentity(pid: number, procRoot: string = DEFAULT_PROC_ROOT): LiveIdentity | null {
  const r = readIdentityOf(pid, procRoot);
  return r.kind === 'live' ? r.id : null;
}

/** Same process: same pid and same start time (core's one rule, re-exported for readers of this module). */
export const sameProcess = sameIdentity;

/** The process's working directory (readlink of /proc/<pid>/cwd), or null when unreadable or gone. */
export function readCwd(pid: number, procRoot: string = DEFAULT_PROC_ROOT): string | null {
  if (!Number.isSafeInteger(pid) || pid <= 0) return null;
  try {
    return readlinkSync(`${procRoot}/${pid}/cwd`);
  } catch {
    return null;
  }
}

/**
 * Live (non-zombie) members of a process group, from one stat pass over every pid (a member may
 * have been reparented away from every process we know: only the whole table can tell); null
 * when that cannot be told (a pid whose stat cannot be read might be a member).
 */
function groupMembersOf(pgid: number, procRoot: string): LiveIdentity[] | null {
  let names: string[];
  try {
    names = readdirSync(procRoot);
  } catch {
    return null;
  }
  const out: LiveIdentity[] = [];
  for (const name of names) {
    const c = name.charCodeAt(0);
    if (c < 48 || c > 57) continue;
    const r = readIdentityOf(Number(name), procRoot);
    // A process that vanished meanwhile is not a member; one whose stat cannot be read might be:
    // the caller cannot tell, so the answer is "unknown" as a whole.
    if (r.kind === 'unknown') return null;
    if (r.kind === 'live' && r.id.pgid === pgid && !isDead(r.id)) out.push(r.id);
  }
  return out;
}

function readMemory(pid: number, procRoot: string): { rssBytes: number; swapBytes: number } | null {
  const id = readIdentity(pid, procRoot);
  if (!id || isDead(id)) return null;
  try {
    const status = parseStatusUidAndSwap(readProcFile(`${procRoot}/${pid}/status`).toString('utf8'));
    return { rssBytes: status.rssBytes ?? 0, swapBytes: status.swapBytes ?? 0 };
  } catch {
    return null;
  }
}

function readArgv(pid: number, procRoot: string): string[] | null {
  try {
    return parseCmdline(readProcFile(`${procRoot}/${pid}/cmdline`));
  } catch {
    return null;
  }
}

function readMemAvailable(procRoot: string): number | null {
  try {
    const m = /^MemAvailable:\s+(\d+) kB/m.exec(readFileSync(`${procRoot}/meminfo`, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

/** A proc filesystem at `procRoot`: it lists at least one process directory (or `self`). */
export function procAvailable(procRoot: string = DEFAULT_PROC_ROOT): boolean {
  try {
    return readdirSync(procRoot).some((n) => n === 'self' || /^\d+$/.test(n));
  } catch {
    return false;
  }
}

/** The Linux implementation of the process-table port: /proc under `procRoot`. */
export function procPort(procRoot: string = DEFAULT_PROC_ROOT): ProcessPort {
  return {
    kind: 'proc',
    root: procRoot,
    table: (opts: TableOptions = {}) => readProcessTable({ ...opts, procRoot }),
    identity: (pid) => readIdentityOf(pid, procRoot),
    groupMembers: (pgid) => groupMembersOf(pgid, procRoot),
    children: (pid) => (childrenFilesSupported(procRoot) ? readChildren(pid, procRoot) : { kind: 'unknown', error: `no children files under ${procRoot} (CONFIG_PROC_CHILDREN)` }),
    childrenSupported: () => childrenFilesSupported(procRoot),
    argv: (pid) => readArgv(pid, procRoot),
    cwd: (pid) => readCwd(pid, procRoot),
    memory: (pid) => readMemory(pid, procRoot),
    clock: () => readClock({ procRoot }),
    memAvailableBytes: () => readMemAvailable(procRoot),
  };
}
