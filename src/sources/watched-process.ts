// `--watch-process NAME=PIDFILE`: any long-lived process (a chat gateway, say) whose memory and
// growth are exported beside the server's. The pid file holds a pid, as a bare number or as
// JSON with a "pid" key (stepwise's server.pid shape).

import { readFileSync } from 'node:fs';
import { isDead } from '../core/process-tree.js';
import type { ProcessPort } from './process-port.js';
import { defaultProcessPort } from './default-port.js';

export interface WatchedProcess {
  name: string;
  /** Returns the current memory of the process named by its pid file, or why not. */
  read(): { up: boolean; identity: string | null; rssBytes: number; swapBytes: number };
}

export function parseWatchSpec(spec: string): { name: string; pidFile: string } {
  const i = spec.indexOf('=');
  return { name: spec.slice(0, i), pidFile: spec.slice(i + 1) };
}

export function parsePidText(text: string): number | null {
  const t = text.trim();
  if (/^\d+$/.test(t)) return Number(t);
  try {
    const d = JSON.parse(t) as { pid?: unknown };
    return typeof d.pid === 'number' && Number.isSafeInteger(d.pid) && d.pid > 1 ? d.pid : null;
  } catch {
    return null;
  }
}

export function watchedProcess(spec: string, processes: ProcessPort = defaultProcessPort()): WatchedProcess {
  const { name, pidFile } = parseWatchSpec(spec);
  return {
    name,
    read() {
      const down = { up: false, identity: null, rssBytes: 0, swapBytes: 0 };
      let pid: number | null;
      try {
        pid = parsePidText(readFileSync(pidFile, 'utf8').slice(0, 4096));
      } catch {
        return down;
      }
      if (pid === null) return down;
      const id = processes.identity(pid);
      if (id.kind !== 'live' || isDead(id.id)) return down;
      const mem = processes.memory(pid);
      if (!mem) return down;
      return { up: true, identity: `${pid}:${id.id.startTicks}`, rssBytes: mem.rssBytes, swapBytes: mem.swapBytes };
    },
  };
}
