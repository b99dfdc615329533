// The real stepwise 0.46.1 leak fixture (test/fixtures/stepwise-0.46.1-leak, see its README), loaded
// as the pure core's inputs. The fixture folder is read-only: the DB is copied first.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { classify } from '../../src/core/classify.js';
import { resolveServer } from '../../src/core/server.js';
import { DEFAULT_POLICY, type PidFileEntry, type ProcessInfo, type ProcessTable, type ProjectInventory, type ServerPidFile } from '../../src/core/types.js';
import { readPidFiles } from '../../src/sources/pid-files.js';
import { parseServerPidFile } from '../../src/sources/project.js';
import { StoreReader } from '../../src/sources/store.js';

const here = path.dirname(fileURLToPath(import.meta.url));
export const FIXTURE_DIR = path.resolve(here, '../fixtures/stepwise-0.46.1-leak');
/** The same engine with the REAL claude-agent-acp 0.101.0 trees (four levels, one CLI per session, top-killed trees). */
export const REAL_ADAPTER_FIXTURE_DIR = path.resolve(here, '../fixtures/stepwise-0.46.1-real-adapter');

interface FixtureProcess {
  pid: number;
  ppid: number;
  pgid: number;
  /** Only in the real-adapter capture; the leak fixture's processes all have sid = pgid. */
  sid?: number;
  state: string;
  starttime_ticks: number;
  rss_kb?: number;
  swap_kb?: number | null;
  comm?: string;
  role: string;
  cwd?: string;
  argv: string[];
}
interface FixtureProcesses {
  boot_time_epoch: number;
  clock_ticks_per_second: number;
  server_pid: number;
  pid_file_mtimes: Record<string, number>;
  processes: FixtureProcess[];
}
export interface ExpectedScenario {
  name: string;
  kind: string;
  verdict: string;
  reap_expected: boolean;
  must_not_kill: boolean;
  jobs: { job_id: string; status: string }[];
  adapter_top_pid: number;
  adapter_alive: boolean;
  adapter_pids: number[];
  pid_file: string | null;
  sessions?: {
    session_id: string;
    cli_pid: number;
    cli_starttime_ticks: number;
    jobs: { id: string; status: string }[];
    expected_session_verdict: string;
  }[];
}

export function fixtureProcesses(dir = FIXTURE_DIR): FixtureProcesses {
  return JSON.parse(fs.readFileSync(path.join(dir, 'processes.json'), 'utf8')) as FixtureProcesses;
}

export function expectedScenarios(dir = FIXTURE_DIR): ExpectedScenario[] {
  return (JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8')) as { scenarios: ExpectedScenario[] }).scenarios;
}

/** processes.json as a process table: sid = pgid where the capture has no sid (every fixture process leads or joins its session's group), uid unknown. */
export function fixtureProcessTable(dir = FIXTURE_DIR): ProcessTable {
  const fx = fixtureProcesses(dir);
  const processes: ProcessInfo[] = fx.processes.map((p) => ({
    pid: p.pid,
    ppid: p.ppid,
    pgid: p.pgid,
    sid: p.sid ?? p.pgid,
    uid: null,
    state: p.state,
    comm: p.comm ?? path.basename(p.argv[0] ?? '').slice(0, 15),
    argv: p.argv,
    startTicks: p.starttime_ticks,
    rssBytes: (p.rss_kb ?? 0) * 1024,
    swapBytes: (p.swap_kb ?? 0) * 1024,
    cwd: p.cwd ?? null,
  }));
  // The boot time is given to the second; the fixture's times were taken on that clock.
  return { processes, clock: { bootTimeEpoch: fx.boot_time_epoch, ticksPerSecond: fx.clock_ticks_per_second, bootTimeErrorSeconds: 0 } };
}

/** Pid files read by the real source, with the mtimes git could not keep. */
export function fixturePidFiles(dir = FIXTURE_DIR): PidFileEntry[] {
  const fx = fixtureProcesses(dir);
  const { entries, health } = readPidFiles(path.join(dir, 'pids'));
  if (!health.ok) throw new Error(health.error);
  return entries.map((e) => ({ ...e, mtimeEpoch: fx.pid_file_mtimes[e.name] ?? null }));
}

export function fixtureServerPidFile(dir = FIXTURE_DIR): ServerPidFile {
  const parsed = parseServerPidFile(fs.readFileSync(path.join(dir, 'server.pid'), 'utf8'));
  if ('error' in parsed) throw new Error(parsed.error);
  return parsed;
}

/** A private, writable copy of the fixture DB. */
export function copyFixtureDb(fixtureDir = FIXTURE_DIR): { dbPath: string; cleanup: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sw-fixture-'));
  const dbPath = path.join(dir, 'stepwise.db');
  fs.copyFileSync(path.join(fixtureDir, 'stepwise.db'), dbPath);
  fs.chmodSync(dbPath, 0o644);
  return { dbPath, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** Verdict words in expected.json → the watchdog's vocabulary. */
export const EXPECTED_TO_OURS: Record<string, { adapter?: string; pidFile?: string }> = {
  leaked: { adapter: 'leaked', pidFile: 'live' },
  active: { adapter: 'active', pidFile: 'live' },
  paused: { adapter: 'paused', pidFile: 'live' },
  'shared-active': { adapter: 'active', pidFile: 'live' },
  'unowned-orphan': { adapter: 'orphaned', pidFile: 'live' },
  foreign: { adapter: 'foreign' },
  'stale-pidfile-dead': { pidFile: 'stale-dead' },
  'stale-pidfile-reused': { pidFile: 'stale-reused' },
  'released-by-engine': {},
};

/**
 * The fixture classified through the real store and pid-file sources, `secondsAfter` the
 * snapshot (taken right after the last pid file was written).
 */
export function fixtureInventory(secondsAfter: number, dir = FIXTURE_DIR): ProjectInventory {
  const db = copyFixtureDb(dir);
  try {
    const table = fixtureProcessTable(dir);
    const reader = new StoreReader({ dbPath: db.dbPath });
    // What the daemon asks the store about: live pids and live group ids (see ProjectSession.collect).
    const alive = table.processes.filter((p) => p.state !== 'Z');
    const live = new Set([...alive.map((p) => p.pid), ...alive.map((p) => p.pgid).filter((g) => g > 1)]);
    const store = reader.read({ pidsOfInterest: live });
    reader.close();
    if (!store.health.ok) throw new Error(store.health.error);
    const fx = fixtureProcesses(dir);
    const now = Math.max(...Object.values(fx.pid_file_mtimes)) + secondsAfter;
    return classify({
      root: '/tmp/stepwise-project',
      pidsDir: '/tmp/stepwise-project/.stepwise/pids',
      dbPath: '/tmp/stepwise-project/.stepwise/stepwise.db',
      processes: table,
      server: resolveServer(fixtureServerPidFile(dir), undefined, table, DEFAULT_POLICY.clockToleranceSeconds),
      pidFiles: fixturePidFiles(dir),
      store: store.snapshot,
      sources: { store: { ...store.health, durationSeconds: 0 }, processes: { ok: true, durationSeconds: 0 }, pidfiles: { ok: true, durationSeconds: 0 }, server: { ok: true, durationSeconds: 0 } },
      policy: DEFAULT_POLICY,
      now,
    });
  } finally {
    db.cleanup();
  }
}
