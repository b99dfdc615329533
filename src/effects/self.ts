// The watchdog never signals itself or any of its ancestors (the shell, the supervisor, the
// container's init): they are walked once through the process port at start.

import type { PlanContext } from '../core/plan.js';
import type { ProcessPort } from '../sources/process-port.js';
import { defaultProcessPort } from '../sources/default-port.js';

export function selfAncestors(processes: ProcessPort = defaultProcessPort(), selfPid = process.pid): number[] {
  // Our own parent is known without a read: protected even when the walk cannot start.
  const out: number[] = selfPid === process.pid && process.ppid > 1 ? [process.ppid] : [];
  let pid = selfPid;
  for (let i = 0; i < 1024; i++) {
    const r = processes.identity(pid);
    const id = r.kind === 'live' ? r.id : null;
    if (!id || id.ppid <= 0) break;
    if (!out.includes(id.ppid)) out.push(id.ppid);
    else if (pid !== selfPid) break; // a cycle (never on a sane host)
    if (id.ppid === 1) break;
    pid = id.ppid;
  }
  return out;
}

export function selfPlanContext(allowOtherUids: boolean, processes: ProcessPort = defaultProcessPort()): PlanContext {
  return {
    selfPid: process.pid,
    selfAncestors: selfAncestors(processes),
    selfUid: typeof process.getuid === 'function' ? process.getuid() : null,
    allowOtherUids,
  };
}
