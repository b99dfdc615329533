// The text of one `ps` snapshot → rows. Pure: the ps process source (ps-port.ts) runs
//   ps -axww -o pid=,ppid=,pgid=,uid=,rss=,state=,lstart=,args=
// with LC_ALL=C and TZ=UTC, which macOS (adv_cmds) and Linux (procps-ng) both print as
//   <pid> <ppid> <pgid> <uid> <rss KiB> <state> <Www Mmm dd hh:mm:ss yyyy> <args…>
// right-aligned numbers, `lstart` five fixed tokens (the day padded: "Dec  2"), args last
// (they may hold spaces, `=` and anything else). `sess` is never asked for: on macOS it prints a
// kernel pointer, not a session id.
//
// Identity. lstart has one-second resolution, so (pid, start second) alone lets a pid reused
// within the same second pass. A row's identity is (pid, start second, a digest of its args),
// folded into one number so every identity comparison in the code base keeps it without knowing:
// startTicks = (start second − base) × 2^20 + digest20(args), at 2^20 ticks per second. The start
// time read back from it lies inside the start second ([s, s+1)), where the process truly started.

import { createHash } from 'node:crypto';

/** Ticks per second of a ps start time: the low 20 bits carry the args digest. */
export const PS_TICKS_PER_SECOND = 2 ** 20;

export interface PsRow {
  pid: number;
  ppid: number;
  pgid: number;
  uid: number;
  rssKib: number;
  /** The first letter of ps's state (R S D T Z U I …); the flags after it (s + < N L …) dropped; `Zl` is 'S' (it lives). */
  state: string;
  /** Start, epoch seconds (whole: lstart's resolution). */
  startEpoch: number;
  /** The args column as printed (one string; ps cannot give argv boundaries). */
  args: string;
}

const MONTHS: Record<string, number> = { Jan: 0, Feb: 1, Mar: 2, Apr: 3, May: 4, Jun: 5, Jul: 6, Aug: 7, Sep: 8, Oct: 9, Nov: 10, Dec: 11 };

const ROW = /^\s*(\d+)\s+(\d+)\s+(\d+)\s+(-?\d+)\s+(\d+)\s+(\S+)\s+[A-Z][a-z]{2}\s+([A-Z][a-z]{2})\s+(\d{1,2})\s+(\d{2}):(\d{2}):(\d{2})\s+(\d{4})(?: (.*))?$/;

/** lstart in the C locale, UTC ("Wed Dec  2 02:50:49 2026") → epoch seconds; null when malformed. */
export function parseLstart(text: string): number | null {
  const m = /^[A-Z][a-z]{2}\s+([A-Z][a-z]{2})\s+(\d{1,2})\s+(\d{2}):(\d{2}):(\d{2})\s+(\d{4})$/.exec(text.trim());
  if (!m) return null;
  const month = MONTHS[m[1]!];
  if (month === undefined) return null;
  return Date.UTC(Number(m[6]), month, Number(m[2]), Number(m[3]), Number(m[4]), Number(m[5])) / 1000;
}

/**
 * Parse a whole snapshot. A line that is not a row continues the previous row's args: an argv
 * holding a newline is printed across lines by some ps versions. Lines before the first row, and
 * lines that start like a row but do not parse, are dropped and counted (`malformed`). Pids printed on two rows are `ambiguous`: dropped (unknown, never judged).
 */
/** The start of a row: three numbers (pid, ppid, pgid) and more. */
const LOOKS_LIKE_ROW = /^\s*\d+\s+\d+\s+\d+\s+\d+\s/;

export function parsePsOutput(text: string): { rows: PsRow[]; malformed: number; ambiguous: number[] } {
  const rows: PsRow[] = [];
  let malformed = 0;
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const m = ROW.exec(line);
    if (!m) {
      const last = rows[rows.length - 1];
      // A line that starts like a row (pid ppid pgid …) but does not parse is a process we cannot
      // read, not the previous argv's next line: counted (the table is then degraded).
      if (last && !LOOKS_LIKE_ROW.test(line)) last.args += `\n${line}`;
      else malformed++;
      continue;
    }
    const month = MONTHS[m[7]!];
    const ints = [m[1], m[2], m[3], m[4], m[5]].map(Number);
    const [day, hour, minute, second] = [m[8], m[9], m[10], m[11]].map(Number) as [number, number, number, number];
    if (month === undefined || !ints.every(Number.isSafeInteger) || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 60) {
      malformed++;
      continue;
    }
    rows.push({
      pid: Number(m[1]),
      ppid: Number(m[2]),
      pgid: Number(m[3]),
      uid: Number(m[4]),
      rssKib: Number(m[5]),
      // `Zl` (procps: a multi-threaded process whose main thread exited) lives: read as 'S'.
      state: /^Z.*l/.test(m[6]!) ? 'S' : m[6]!.charAt(0),
      startEpoch: Date.UTC(Number(m[12]), month, Number(m[8]), Number(m[9]), Number(m[10]), Number(m[11])) / 1000,
      args: m[13] ?? '',
    });
  }
  // A pid printed twice means one of its rows is text inside another process's args (an argv
  // with a newline can hold anything, a forged row too): neither can be trusted, both are dropped.
  const seen = new Map<number, number>();
  for (const r of rows) seen.set(r.pid, (seen.get(r.pid) ?? 0) + 1);
  const ambiguous = [...seen].filter(([, n]) => n > 1).map(([pid]) => pid);
  if (ambiguous.length === 0) return { rows, malformed, ambiguous };
  const drop = new Set(ambiguous);
  return { rows: rows.filter((r) => !drop.has(r.pid)), malformed, ambiguous };
}

/** 20 bits of a digest of the args: what tells two processes started in the same second apart. */
export function argsDigest20(args: string): number {
  const h = createHash('sha256').update(args).digest();
  return ((h[0]! << 12) | (h[1]! << 4) | (h[2]! >> 4)) >>> 0;
}

/** The identity ticks of a row, counted from `baseEpoch` (whole seconds; see the header). */
export function psStartTicks(row: Pick<PsRow, 'startEpoch' | 'args' | 'state'>, baseEpoch: number): number {
  // A zombie's args are no longer its argv (procps prints "[name] <defunct>", macOS "(name)"):
  // it is dead either way, and no identity comparison lets a dead process through.
  return (row.startEpoch - baseEpoch) * PS_TICKS_PER_SECOND + argsDigest20(row.state === 'Z' ? '' : row.args);
}

/** argv as far as ps can tell: the args split at spaces (empty for zombies and kernel threads). */
export function psArgv(row: Pick<PsRow, 'args' | 'state' | 'ppid' | 'pid'>): string[] {
  if (row.state === 'Z' || isPsKernelThread(row)) return [];
  return row.args.split(' ').filter((w) => w.length > 0);
}

/** Linux kernel threads (kthreadd, pid 2, and its children, printed as "[name]"); macOS's kernel_task (pid 0). */
export function isPsKernelThread(row: Pick<PsRow, 'pid' | 'ppid' | 'args'>): boolean {
  if (row.pid === 0) return true;
  return (row.pid === 2 || row.ppid === 2) && /^\[.*\]$/.test(row.args);
}

/** comm as Linux keeps it: the first 15 bytes of the program's name (ps cannot print both comm and args). */
export function psComm(argv: readonly string[]): string {
  const first = argv[0] ?? '';
  return first.slice(first.lastIndexOf('/') + 1).slice(0, 15);
}

/** lsof -Fn output for one process's cwd ("p123\nfcwd\nn/path") → the path; null when absent. */
export function parseLsofCwd(text: string): string | null {
  for (const line of text.split('\n')) if (line.startsWith('n') && line.length > 1) return line.slice(1);
  return null;
}
