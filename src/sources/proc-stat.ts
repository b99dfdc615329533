// Pure parsers for the /proc files the process source reads. No fs here: readers in
// processes.ts hand text (or bytes) in, plain data comes out, null when malformed.

/** PF_KTHREAD in the `flags` field of /proc/<pid>/stat (include/linux/sched.h). */
export const PF_KTHREAD = 0x00200000;

export interface StatFields {
  pid: number;
  /** Field 2 without its parentheses. May contain spaces and parentheses itself. */
  comm: string;
  /** One letter: R S D Z T t X I P W K. */
  state: string;
  ppid: number;
  pgrp: number;
  session: number;
  /** Field 9, the kernel's per-task flags (PF_*). */
  flags: number;
  /** Field 20: number of threads. */
  numThreads: number;
  /** Field 22: start time in clock ticks after boot. */
  starttime: number;
  /** Field 24: resident set size in pages. */
  rssPages: number;
}

const INT_RE = /^-?\d+$/;
const STATE_RE = /^[A-Za-z]$/;

function int(text: string | undefined): number | null {
  if (text === undefined || !INT_RE.test(text)) return null;
  const n = Number(text);
  return Number.isSafeInteger(n) ? n : null;
}

/**
 * Parse `/proc/<pid>/stat`: `pid (comm) state ppid pgrp session tty_nr tpgid flags … starttime
 * vsize rss …`. The comm field ends at the LAST `)`: comm is chosen by the process (up to 15
 * bytes) and may itself contain spaces, `(` and `)`, but nothing after it can contain `)`.
 */
export function parseStat(text: string): StatFields | null {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) return null;
  const pid = int(text.slice(0, open).trim());
  if (pid === null || pid < 0) return null;
  const comm = text.slice(open + 1, close);
  // Fields 3.. follow "comm) ". rest[n - 3] is field n (1-based, as in proc(5)).
  const rest = text.slice(close + 1).trim().split(/\s+/);
  if (rest.length < 22) return null;
  const state = rest[0];
  if (state === undefined || !STATE_RE.test(state)) return null;
  const ppid = int(rest[1]);
  const pgrp = int(rest[2]);
  const session = int(rest[3]);
  const flags = int(rest[6]);
  const numThreads = int(rest[17]);
  const starttime = int(rest[19]);
  const rssPages = int(rest[21]);
  if (ppid === null || pgrp === null || session === null || flags === null || starttime === null || rssPages === null) {
    return null;
  }
  if (starttime < 0) return null;
  // A thread-group leader whose main thread exited while other threads run reads `Z`, yet the
  // process lives: signals reach it and it holds its memory. It is read as alive ('S'), never as
  // a zombie (dead, unsignalled, left out of a group's members).
  const threads = numThreads ?? 0;
  const liveState = state === 'Z' && threads > 1 ? 'S' : state;
  return { pid, comm, state: liveState, ppid, pgrp, session, flags, numThreads: threads, starttime, rssPages: Math.max(0, rssPages) };
}

/** A kernel thread: PF_KTHREAD set, or kthreadd (pid 2) and its children. No argv, no memory of its own. */
export function isKernelThread(s: Pick<StatFields, 'pid' | 'ppid' | 'flags'>): boolean {
  return s.pid === 2 || s.ppid === 2 || (s.flags & PF_KTHREAD) !== 0;
}

export interface StatusFields {
  /** Real uid: the first number of the `Uid:` line. null when the line is missing. */
  uid: number | null;
  /** `VmSwap` in bytes; null when absent (kernel threads, zombies). */
  swapBytes: number | null;
  /** `VmRSS` in bytes; null when absent (kernel threads, zombies). */
  rssBytes: number | null;
}

function kbLine(text: string, key: string): number | null {
  const m = new RegExp(`^${key}:\\s*(\\d+)\\s*kB\\s*$`, 'm').exec(text);
  if (!m || m[1] === undefined) return null;
  const n = Number(m[1]);
  return Number.isSafeInteger(n) ? n * 1024 : null;
}

/** Parse the fields the watchdog needs from `/proc/<pid>/status`. */
export function parseStatusUidAndSwap(text: string): StatusFields {
  const uidMatch = /^Uid:\s*(\d+)/m.exec(text);
  const uid = uidMatch && uidMatch[1] !== undefined ? Number(uidMatch[1]) : null;
  return {
    uid: uid !== null && Number.isSafeInteger(uid) ? uid : null,
    swapBytes: kbLine(text, 'VmSwap'),
    rssBytes: kbLine(text, 'VmRSS'),
  };
}

/**
 * Parse `/proc/<pid>/cmdline`: NUL-separated argv with a trailing NUL; empty for kernel
 * threads and zombies. A process that rewrote its argv area (setproctitle) may leave no
 * trailing NUL, or one long string with spaces: it is returned as is.
 */
export function parseCmdline(buf: Uint8Array | string): string[] {
  const text = typeof buf === 'string' ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength).toString('utf8');
  if (text.length === 0) return [];
  const parts = text.split('\0');
  // Drop the empty strings trailing NULs leave (rewritten argv areas can be NUL-padded).
  while (parts.length > 0 && parts[parts.length - 1] === '') parts.pop();
  return parts;
}

/** Parse `/proc/<pid>/task/<tid>/children` ("123 456 "): pids, or null when malformed. */
export function parseChildren(text: string): number[] | null {
  const out: number[] = [];
  for (const part of text.split(' ')) {
    if (part.length === 0 || part === '\n') continue;
    if (!/^\d+\n?$/.test(part)) return null; // digits only (Number() would take 0x1f, 1e3)
    const n = Number(part);
    if (!Number.isSafeInteger(n) || n <= 0) return null;
    out.push(n);
  }
  return out;
}

/** Parse `/proc/uptime` ("12345.67 54321.00"): seconds since boot, or null. */
export function parseUptime(text: string): number | null {
  const first = text.trim().split(/\s+/)[0];
  if (first === undefined || !/^\d+(\.\d+)?$/.test(first)) return null;
  const n = Number(first);
  return Number.isFinite(n) ? n : null;
}

/** Parse the `btime` line of `/proc/stat`: boot time in whole epoch seconds, or null. */
export function parseBtime(procStatText: string): number | null {
  const m = /^btime\s+(\d+)\s*$/m.exec(procStatText);
  if (!m || m[1] === undefined) return null;
  const n = Number(m[1]);
  return Number.isSafeInteger(n) ? n : null;
}
