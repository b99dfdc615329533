// The watchdog never signals itself or any of its ancestors (the shell, the supervisor, the
// container's init): they are walked once from /proc at start.

import type { PlanContext } from '../core/plan.js';
import { readIdentity } from '../sources/processes.js';

export function selfAncestors(procRoot = '/proc', selfPid = process.pid): number[] {
  const out: number[] = [];
  let pid = selfPid;
  for (let i = 0; i < 1024; i++) {
    const id = readIdentity(pid, procRoot);
    if (!id || id.ppid <= 0 || out.includes(id.ppid)) break;
    out.push(id.ppid);
    if (id.ppid === 1) break;
    pid = id.ppid;
  }
  return out;
}

export function selfPlanContext(allowOtherUids: boolean, procRoot = '/proc'): PlanContext {
  return {
    selfPid: process.pid,
    selfAncestors: selfAncestors(procRoot),
    selfUid: typeof process.getuid === 'function' ? process.getuid() : null,
    allowOtherUids,
  };
}
