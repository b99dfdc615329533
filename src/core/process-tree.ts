import type { ProcessIdentity, ProcessInfo, RememberedMember, TreeProcess } from './types.js';

/** A zombie (or a dead task still listed) has freed its memory: it counts as dead. */
export function isDead(p: Pick<ProcessInfo, 'state'>): boolean {
  return p.state === 'Z' || p.state === 'X' || p.state === 'x';
}

/** Same process: same pid and same start time (a pid seen with a new start time is a new process). */
export function sameIdentity(a: ProcessIdentity, b: ProcessIdentity): boolean {
  return a.pid === b.pid && a.startTicks === b.startTicks;
}

/** Marker patterns recognise adapter-like processes (a hint, never evidence). */
export function matchesMarker(argv: readonly string[], markers: readonly string[]): boolean {
  if (argv.length === 0 || markers.length === 0) return false;
  const line = argv.join(' ');
  return markers.some((m) => m.length > 0 && line.includes(m));
}

export interface ProcessIndex {
  /** Every listed process, zombies included (their stat still gives identity). */
  byPid: Map<number, ProcessInfo>;
  /** Live (non-zombie) children by parent pid. */
  children: Map<number, ProcessInfo[]>;
  /** Live (non-zombie) members by process group id. */
  groups: Map<number, ProcessInfo[]>;
  /** Live processes remembered as members of the tree of a top pid, with that top's start ticks. */
  remembered: Map<number, { p: ProcessInfo; topStartTicks: number }[]>;
}

export function indexProcesses(processes: readonly ProcessInfo[], remembered: readonly RememberedMember[] = []): ProcessIndex {
  const byPid = new Map<number, ProcessInfo>();
  const children = new Map<number, ProcessInfo[]>();
  const groups = new Map<number, ProcessInfo[]>();
  for (const p of processes) {
    byPid.set(p.pid, p);
    if (isDead(p)) continue;
    pushTo(children, p.ppid, p);
    pushTo(groups, p.pgid, p);
  }
  const byTop = new Map<number, { p: ProcessInfo; topStartTicks: number }[]>();
  for (const m of remembered) {
    const p = byPid.get(m.pid);
    // Only the same live process: a reused pid is someone else.
    if (p && p.startTicks === m.startTicks && !isDead(p) && m.pid !== m.topPid) pushTo(byTop, m.topPid, { p, topStartTicks: m.topStartTicks });
  }
  return { byPid, children, groups, remembered: byTop };
}

/** Append to the list under `key` (a multimap). */
export function pushTo<K, V>(map: Map<K, V[]>, key: K, value: V): void {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}

export interface CollectOptions {
  /** Include the other live members of the top's process group (only when the top leads it). */
  includeGroup: boolean;
  /** Pids never to include (pid 1, the server, the watchdog, processes already in another tree). */
  exclude: (pid: number) => boolean;
}

/**
 * An adapter tree: the top process, all its live descendants by ppid (also those that left
 * the group or session), and, when the top leads its group, the other live members of that
 * group and their descendants (children that were reparented after their parent died stay in
 * the group). Also the processes remembered as its members (index.remembered) while the tree is
 * the same: its top the same live process, or, the top gone, its group (not reusable while live)
 * still live — so a member that double-forked and setsid'd away stays in its tree. Zombies are
 * not members: their memory is already freed.
 */
export function collectTree(index: ProcessIndex, topPid: number, opts: CollectOptions): ProcessInfo[] {
  const out: ProcessInfo[] = [];
  const seen = new Set<number>();
  const stack: ProcessInfo[] = [];
  const top = index.byPid.get(topPid);
  if (top && !isDead(top) && !opts.exclude(topPid)) stack.push(top);
  if (opts.includeGroup) {
    for (const member of index.groups.get(topPid) ?? []) stack.push(member);
  }
  const topLive = top !== undefined && !isDead(top);
  for (const r of index.remembered.get(topPid) ?? []) {
    if (topLive ? r.topStartTicks === top.startTicks : (index.groups.get(topPid)?.length ?? 0) > 0) stack.push(r.p);
  }
  while (stack.length > 0) {
    const p = stack.pop()!;
    if (seen.has(p.pid) || opts.exclude(p.pid) || isDead(p)) continue;
    seen.add(p.pid);
    out.push(p);
    for (const child of index.children.get(p.pid) ?? []) stack.push(child);
  }
  // Top first, then by start time: stable, readable output.
  out.sort((a, b) => (a.pid === topPid ? -1 : b.pid === topPid ? 1 : a.startTicks - b.startTicks || a.pid - b.pid));
  return out;
}

/** The part of a process a tree (and the audit trail) keeps. */
export function toTreeProcess(p: ProcessInfo): TreeProcess {
  return {
    pid: p.pid,
    startTicks: p.startTicks,
    ppid: p.ppid,
    pgid: p.pgid,
    sid: p.sid,
    uid: p.uid,
    state: p.state,
    argv: p.argv,
    rssBytes: p.rssBytes,
    swapBytes: p.swapBytes,
  };
}
