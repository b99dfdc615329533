// The process-table port: everything the watchdog reads about processes goes through one
// object, built once from the config and handed to the sources (the table, the server's cwd,
// watched processes), the effects (identity and group re-checks right before a signal or an
// unlink, self-protection) and the commands (guard, demo). Only its implementations touch the
// OS: `processes.ts` reads Linux's /proc (the root injectable, as procfs's NewFS(mountPoint)).
//
// The rule every reader keeps: unreadable is "unknown", never "dead". identity() says `gone`
// only when the process provably does not exist; anything else it cannot read is `unknown`.

import { isDead } from '../core/process-tree.js';
import type { ClockInfo, LiveIdentity, ProcessIdentity } from '../core/types.js';
import type { ChildrenRead, ProcessTableResult, ReadProcessTableOptions } from './processes.js';

export type { LiveIdentity };

/** One pid, read now: live (zombies included: see `state`), provably gone, or unknown. */
export type IdentityRead = { kind: 'live'; id: LiveIdentity } | { kind: 'gone' } | { kind: 'unknown'; error: string };

export type TableOptions = Omit<ReadProcessTableOptions, 'procRoot'>;

export interface ProcessPort {
  /** Which implementation: shown by `doctor` and in errors. */
  readonly kind: 'proc';
  /** What it reads (the /proc root). */
  readonly root: string;
  /** One pass over every process (stat; argv; details for the selected ones). Never throws. */
  table(opts?: TableOptions): ProcessTableResult;
  identity(pid: number): IdentityRead;
  /**
   * Live (non-zombie) members of a process group; null when that cannot be told. With `known`
   * (pids that are or were members), only those, the group id and their descendants are read
   * when the kernel provides children files (else every pid): see processes.ts.
   */
  groupMembers(pgid: number, known?: readonly number[]): LiveIdentity[] | null;
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
