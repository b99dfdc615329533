// One project's read side, timed. `InstrumentedSession` calls the sources in the same order and
// with the same arguments as ProjectSession.collect() (src/daemon/collect.ts) and times each
// part; ProjectSession itself is timed as a whole next to it (its own caches), so the split and
// the real thing are measured in the same run, interleaved.

import { classify } from '../../dist/core/classify.js';
import { plan } from '../../dist/core/plan.js';
import { matchesMarker } from '../../dist/core/process-tree.js';
import { resolveServer } from '../../dist/core/server.js';
import { startEpoch } from '../../dist/core/time.js';
import { readPidFiles } from '../../dist/sources/pid-files.js';
import { ArgvCache, readCwd, readProcessTable } from '../../dist/sources/processes.js';
import { projectPaths, readServerPidFile, resolvePidsDir } from '../../dist/sources/project.js';
import { StoreReader } from '../../dist/sources/store.js';

export const PARTS = ['serverFile', 'processes', 'server', 'pidfiles', 'store', 'classify', 'plan'];

export class InstrumentedSession {
  constructor({ root, db = null, policy, planContext }) {
    this.policy = policy;
    this.planContext = planContext;
    this.paths = projectPaths(root, { db, pidsDir: null, env: {} });
    this.store = new StoreReader({ dbPath: this.paths.dbPath, busyTimeoutMs: 2000 });
    this.argvCache = new ArgvCache();
    this.interesting = new Set();
    this.rereads = 0;
  }

  /** One cycle; returns { inventory, t: {part: ms}, total, processCount, storeStats }. */
  collect(now = Date.now() / 1000, rereading = false) {
    const { policy } = this;
    const t = {};
    const sources = {};
    let t0 = performance.now();
    const cycleStart = t0;
    const lap = (name) => {
      const t1 = performance.now();
      t[name] = (t[name] ?? 0) + (t1 - t0);
      t0 = t1;
    };

    const serverFile = readServerPidFile(this.paths.serverPidPath);
    const serverPid = serverFile.pidFile?.pid ?? null;
    lap('serverFile');

    const procs = readProcessTable({
      argvCache: this.argvCache,
      detailFor: (p) => p.pid === serverPid || p.ppid === serverPid || matchesMarker(p.argv, policy.markers) || this.interesting.has(p.pid),
    });
    sources.processes = procs.health;
    const table = procs.health.ok || procs.table.processes.length > 0 ? procs.table : null;
    lap('processes');

    if (table && serverPid !== null) {
      const p = table.processes.find((x) => x.pid === serverPid);
      if (p) p.cwd = readCwd(serverPid);
    }
    const server = resolveServer(serverFile.pidFile, serverFile.problem, table, policy.clockToleranceSeconds);
    sources.server = { ok: serverFile.pidFile !== null, durationSeconds: 0 };
    lap('server');

    const pidsDir = resolvePidsDir(this.paths, server.alive ? server.cwd : null);
    const pidFiles = readPidFiles(pidsDir);
    sources.pidfiles = pidFiles.health;
    lap('pidfiles');

    const live = new Set();
    const starts = new Map();
    for (const p of table?.processes ?? []) {
      if (p.state === 'Z' || p.state === 'X') continue;
      live.add(p.pid);
      if (table) starts.set(p.pid, startEpoch(table.clock, p.startTicks));
    }
    const storeRead = this.store.read({ pidsOfInterest: live, pidStartEpochs: starts });
    sources.store = storeRead.health;
    const runPids = new Set((storeRead.snapshot?.runs ?? []).map((r) => r.pid).filter((p) => p !== null));
    this.interesting = runPids;
    lap('store');

    const undetailed = (table?.processes ?? []).some((p) => runPids.has(p.pid) && !p.detailed && p.state !== 'Z');
    if (undetailed && !rereading) {
      // Same as collect(): read everything once more (first read only, in practice).
      this.rereads++;
      const again = this.collect(now, true);
      for (const k of PARTS) again.t[k] = (again.t[k] ?? 0) + (t[k] ?? 0);
      again.total = performance.now() - cycleStart;
      return again;
    }

    const inventory = classify({
      root: this.paths.root,
      pidsDir,
      dbPath: this.paths.dbPath,
      processes: table,
      server,
      pidFiles: pidFiles.entries,
      store: storeRead.health.ok ? storeRead.snapshot : null,
      sources,
      policy,
      now,
    });
    lap('classify');
    plan(inventory, policy, { allLeaked: true, orphans: true, jobs: [], pids: [], force: false, gc: true }, this.planContext);
    lap('plan');
    return {
      inventory,
      t,
      total: performance.now() - cycleStart,
      processCount: table?.processes.length ?? 0,
      detailedCount: (table?.processes ?? []).filter((p) => p.detailed).length,
      storeStats: this.store.lastReadStats,
    };
  }

  close() {
    this.store.close();
  }
}

export function verdictCounts(inventory) {
  const out = {};
  for (const a of inventory.adapters) out[a.verdict] = (out[a.verdict] ?? 0) + 1;
  return out;
}
