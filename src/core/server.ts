import { isDead } from './process-tree.js';
import { comparisonSlack, parseIsoEpoch, startEpoch } from './time.js';
import type { ProcessTable, ServerInfo, ServerPidFile } from './types.js';

/**
 * Is the server named by `.stepwise/server.pid` alive? It is when a non-zombie process has
 * that pid and started no later than the file's `started_at` (the server writes the file
 * after it starts: a process that started later is a reused pid). Otherwise the server is
 * "down" and the file is stale. Without `started_at` the process cannot be verified: down.
 */
export function resolveServer(
  pidFile: ServerPidFile | null,
  pidFileProblem: string | undefined,
  table: ProcessTable | null,
  toleranceSeconds: number,
): ServerInfo {
  const down = (reason: string, stale: boolean): ServerInfo => ({
    pidFile,
    ...(pidFileProblem ? { pidFileProblem } : {}),
    alive: false,
    identity: null,
    cwd: null,
    stale,
    reason,
  });
  if (!pidFile) return down(pidFileProblem ?? 'no server.pid', false);
  if (!table) return down('process table unreadable: server not verified', false);
  const p = table.processes.find((x) => x.pid === pidFile.pid);
  if (!p) return down(`server.pid names ${pidFile.pid}, which is not running (stale)`, true);
  if (isDead(p)) return down(`server.pid names ${pidFile.pid}, which is a zombie (stale)`, true);
  const startedAt = parseIsoEpoch(pidFile.startedAt);
  if (startedAt === null) return down(`server.pid has no valid started_at: ${pidFile.pid} not verified`, true);
  const start = startEpoch(table.clock, p.startTicks);
  const slack = comparisonSlack(table.clock, toleranceSeconds);
  if (start > startedAt + slack) {
    return down(`pid ${pidFile.pid} started ${Math.round(start - startedAt)}s after server.pid was written: reused pid (stale)`, true);
  }
  return {
    pidFile,
    alive: true,
    identity: { pid: p.pid, startTicks: p.startTicks },
    cwd: p.cwd ?? null,
    stale: false,
    reason: `server ${p.pid} alive`,
    memory: { rssBytes: p.rssBytes, swapBytes: p.swapBytes },
  };
}
