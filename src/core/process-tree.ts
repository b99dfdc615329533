import type { ProcessInfo, TreeProcess } from './types.js';

/** A zombie (or a dead task still listed) has freed its memory: it counts as dead. */
export function isDead(p: Pick<ProcessInfo, 'state'>): boolean {
  return p.state === 'Z' || p.state === 'X' || p.state === 'x';
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
}

export function indexProcesses(processes: readonly ProcessInfo[]): ProcessIndex {
  const byPid = new Map<number, ProcessInfo>();
  const children = new Map<number, ProcessInfo[]>();
  const groups = new Map<number, ProcessInfo[]>();
  for (const p of processes) {
    byPid.set(p.pid, p);
    if (isDead(p)) continue;
    push(children, p.ppid, p);
    push(groups, p.pgid, p);
  }
  return { byPid, children, groups };
}

function push<K, V>(map: Map<K, V[]>, key: K, value: V): void {
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
 * the group). Zombies are not members: their memory is already freed.
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
