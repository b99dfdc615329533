// `--watch-process NAME=PIDFILE`: any long-lived process (a chat gateway, say) whose memory and
// growth are exported beside the server's. The pid file holds a pid, as a bare number or as
// JSON with a "pid" key (stepwise's server.pid shape).

import { readFileSync } from 'node:fs';
import type { WatchedProcess } from '../daemon/watchdog.js';
import { parseStat, parseStatusUidAndSwap } from './proc-stat.js';

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

export function watchedProcess(spec: string, procRoot = '/proc'): WatchedProcess {
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
      try {
        const stat = parseStat(readFileSync(`${procRoot}/${pid}/stat`, 'utf8'));
        if (!stat || stat.state === 'Z' || stat.state === 'X') return down;
        const status = parseStatusUidAndSwap(readFileSync(`${procRoot}/${pid}/status`, 'utf8'));
        return { up: true, identity: `${pid}:${stat.starttime}`, rssBytes: status.rssBytes ?? 0, swapBytes: status.swapBytes ?? 0 };
      } catch {
        return down;
      }
    },
  };
}
