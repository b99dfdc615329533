// A synthetic host for pure-core tests: boot at epoch 1000, 100 ticks/s, a live server.
import type { ClassifyInput } from '../../src/core/classify.js';
import { resolveServer } from '../../src/core/server.js';
import { DEFAULT_POLICY, type JobRow, type PidFileEntry, type Policy, type ProcessInfo, type RunRow } from '../../src/core/types.js';

// A process started at epoch E has ticks (E-1000)*100.
export const BOOT = 1_000;
export const ticks = (epoch: number) => Math.round((epoch - BOOT) * 100);
export const iso = (epoch: number) => new Date(epoch * 1000).toISOString().replace('Z', '+00:00');
export const NOW = 5_000;
export const SERVER = 100;

export function proc(pid: number, ppid: number, startEpoch: number, over: Partial<ProcessInfo> = {}): ProcessInfo {
  return {
    pid,
    ppid,
    pgid: over.pgid ?? pid,
    sid: over.sid ?? over.pgid ?? pid,
    uid: 1000,
    state: 'S',
    comm: 'node',
    argv: ['node', 'x'],
    startTicks: ticks(startEpoch),
    rssBytes: 10 * 1048576,
    swapBytes: 1048576,
    ...over,
  };
}

/** npm exec → node claude-agent-acp → claude, the engine's tree, top leads group and session. */
export function adapter(top: number, parent: number, startEpoch: number, marker = 'claude-agent-acp'): ProcessInfo[] {
  return [
    proc(top, parent, startEpoch, { argv: ['npm', 'exec', `@agentclientprotocol/${marker}`] }),
    proc(top + 1, top, startEpoch + 0.1, { pgid: top, sid: top, argv: ['node', `/x/.bin/${marker}`] }),
    proc(top + 2, top + 1, startEpoch + 0.2, { pgid: top, sid: top, argv: ['claude', '--verbose'] }),
  ];
}

export const serverProc = proc(SERVER, 1, 1_500, { argv: ['python3', 'stepwise', 'server', 'start'], comm: 'python3' });

export function run(id: string, jobId: string, pid: number | null, startedEpoch: number, completedEpoch: number | null, over: Partial<RunRow> = {}): RunRow {
  return {
    id,
    jobId,
    stepName: 'work',
    attempt: 1,
    status: completedEpoch === null ? 'running' : 'completed',
    startedAt: iso(startedEpoch),
    completedAt: completedEpoch === null ? null : iso(completedEpoch),
    pid,
    pgid: pid,
    sessionId: null,
    agent: 'claude',
    inVm: false,
    agentStep: true,
    pidColumn: completedEpoch === null ? pid : null,
    ...over,
  };
}

export function job(id: string, status: string, updatedEpoch = 4_000, failReason: string | null = null): JobRow {
  return { id, status, updatedAt: iso(updatedEpoch), failReason };
}

export function pidFile(pid: number, mtimeEpoch: number): PidFileEntry {
  return { path: `/p/.stepwise/pids/acp-${pid}.json`, name: `acp-${pid}.json`, pid, agent: 'claude', mtimeEpoch, ino: pid, dev: 1 };
}

export function input(o: { processes: ProcessInfo[]; runs?: RunRow[]; jobs?: JobRow[]; pidFiles?: PidFileEntry[]; serverUp?: boolean; storeDown?: boolean; policy?: Policy; now?: number }): ClassifyInput {
  const table = { processes: o.processes, clock: { bootTimeEpoch: BOOT, ticksPerSecond: 100, bootTimeErrorSeconds: 0.02 } };
  const server = resolveServer(
    o.serverUp === false ? null : { pid: SERVER, startedAt: iso(1_500.5) },
    o.serverUp === false ? 'no server.pid (server not running)' : undefined,
    table,
    DEFAULT_POLICY.clockToleranceSeconds,
  );
  return {
    root: '/p',
    pidsDir: '/p/.stepwise/pids',
    dbPath: '/p/.stepwise/stepwise.db',
    processes: table,
    server,
    pidFiles: o.pidFiles ?? [],
    store: o.storeDown
      ? null
      : { runs: o.runs ?? [], jobs: Object.fromEntries((o.jobs ?? []).map((j) => [j.id, j])), schema: { stepRunsPidColumn: true, schemaVersion: 1 } },
    sources: {},
    policy: o.policy ?? DEFAULT_POLICY,
    now: o.now ?? NOW,
  };
}

