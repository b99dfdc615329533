// The process-table port: everything the watchdog reads about processes goes through one
// object, built once from the config and handed to the sources (the table, the server's cwd,
// watched processes), the effects (identity and group re-checks right before a signal or an
// unlink, self-protection) and the commands (guard, demo). Only its implementations touch the
// OS: `processes.ts` reads Linux's /proc (the root injectable, as procfs's NewFS(mountPoint)),
// `ps-port.ts` one `ps` snapshot (macOS); `default-port.ts` picks one (--process-source).
//
// The rule every reader keeps: unreadable is "unknown", never "dead". identity() says `gone`
// only when the process provably does not exist; anything else it cannot read is `unknown`.

import { isDead } from '../core/process-tree.js';
import type { ClockInfo, LiveIdentity, ProcessIdentity, ProcessInfo, ProcessTable, SourceHealth } from '../core/types.js';
import type { ArgvCache } from './argv-cache.js';

export type { LiveIdentity };

/** The live children of one process: their pids, the process gone, or unknown (unreadable or unsupported). */
export type ChildrenRead = { kind: 'ok'; pids: number[] } | { kind: 'gone' } | { kind: 'unknown'; error: string };

/** One pid, read now: live (zombies included: see `state`), provably gone, or unknown. */
export type IdentityRead = { kind: 'live'; id: LiveIdentity } | { kind: 'gone' } | { kind: 'unknown'; error: string };

export interface TableOptions {
  /** Bytes per page, for the rss field of stat. Default: detectPageSize() (read once). */
  pageSize?: number;
  ticksPerSecond?: number;
  /**
   * Which processes need /proc/<pid>/status (uid, VmSwap, VmRSS). Called once per process
   * after the stat + cmdline pass, with argv filled. Default: none.
   */
  detailFor?: (p: ProcessInfo) => boolean;
  /**
   * Also read status for every descendant (by ppid) of a selected process and, when the
   * selected process leads its group, for its group members. Default true.
   */
  detailDescendants?: boolean;
  /** Wall clock in epoch milliseconds (Date.now). */
  now?: () => number;
  /**
   * Reuse argv across reads (a daemon keeps one for its lifetime). Reading cmdline is ~40%
   * of a pass; most processes are the same from one cycle to the next.
   */
  argvCache?: ArgvCache;
  /**
   * Read only these pids, their descendants (through /proc/<pid>/task/<tid>/children) and the
   * members of the groups they lead that are among those, instead of every pid. Ignored (a full
   * scan, `mode: 'full'`) where the source cannot read children (no CONFIG_PROC_CHILDREN; ps).
   */
  targeted?: {
    pids: Iterable<number>;
    /** Also read these, without walking down to their children (e.g. the server during a re-verification). */
    context?: Iterable<number>;
  };
}

export interface ProcessTableResult {
  table: ProcessTable;
  health: SourceHealth;
  /**
   * Pids listed in /proc whose files could not be read or parsed (not counting processes
   * that vanished mid-read). Absent from the table or with partial data (argv [] / uid null):
   * treat them as "unknown", never as "dead".
   */
  unreadablePids: number[];
  /** 'targeted' when only the asked pids and their descendants were read (see `probed`). */
  mode: 'full' | 'targeted';
  /**
   * Targeted reads: every pid whose stat was tried. A probed pid absent from the table (and not
   * in unreadablePids) provably does not exist; a pid not probed is simply not known.
   */
  probed?: ReadonlySet<number>;
}


export interface ProcessPort {
  /** Which implementation: shown by `doctor` and in errors. */
  readonly kind: 'proc' | 'ps';
  /** What it reads (the proc root, or the ps binary). */
  readonly root: string;
  /** One pass over every process (stat; argv; details for the selected ones). Never throws. */
  table(opts?: TableOptions): ProcessTableResult;
  identity(pid: number): IdentityRead;
  /**
   * Every live (non-zombie) member of a process group, listed now over the whole table; null
   * when that cannot be told.
   */
  groupMembers(pgid: number): LiveIdentity[] | null;
  /** The live children of one process (task/<tid>/children); `gone`, or `unknown` when unreadable or unsupported. */
  children(pid: number): ChildrenRead;
  /** Whether the kernel provides children files: targeted reads need them (else full scans). */
  childrenSupported(): boolean;
  /** argv of one process; null when gone or unreadable. */
  argv(pid: number): string[] | null;
  /** Working directory of one process; null when gone or unreadable. */
  cwd(pid: number): string | null;
  /** RSS and swap of one live process; null when gone or unreadable. */
  memory(pid: number): { rssBytes: number; swapBytes: number } | null;
  /** Boot time and tick rate; `error` when neither boot-time source could be read. */
  clock(): { clock: ClockInfo; error?: string };
  /** The host's available memory (MemAvailable), for the demo's before/after; null when unknown. */
  memAvailableBytes(): number | null;
}

/** The identity when the pid is provably that same live process; else null (gone, reused, a zombie, or unknown). */
export function liveSame(read: IdentityRead, want: ProcessIdentity): LiveIdentity | null {
  if (read.kind !== 'live' || read.id.startTicks !== want.startTicks) return null;
  return isDead(read.id) ? null : read.id;
}
