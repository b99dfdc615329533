#!/usr/bin/env node
// stepwise-watchdog benchmarks: `npm run bench` (full) or `npm run bench -- --quick` (under a
// minute). Builds a synthetic host (filler processes, fake adapter trees under a stand-in server,
// a stepwise-schema store with history, pid files), then measures in one run: the cycle split per
// source, the floor (/proc/<pid>/stat for every pid, Node and C), the anchor (Debian's
// prometheus-process-exporter scrape), scaling in history and in processes, the daemon's RSS,
// detection latency and a soak. Prints a table, writes bench/results/latest.json and latest.md.
// Every process it starts is killed at the end (by pid + start time), also on Ctrl-C or failure.
// See bench/README.md.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
if (!fs.existsSync(path.join(HERE, '../dist/session/project-session.js'))) {
  process.stderr.write('bench: dist/ is missing: run `npm run build` first (or `npm run bench`)\n');
  process.exit(2);
}

const { ProjectSession } = await import('../dist/session/project-session.js');
const { DEFAULT_POLICY } = await import('../dist/core/types.js');
const { selfPlanContext } = await import('../dist/effects/self.js');
const { writePidFile, addLiveJobs, cachedHistory, openStoreCopy, RUNS_PER_JOB, HISTORY_FIRST_PID } = await import('./lib/stores.mjs');
const { Fillers, fillTo } = await import('./lib/host.mjs');
const { makeProject } = await import('./lib/project.mjs');
const { timedCollect, PARTS, verdictCounts } = await import('./lib/cycle.mjs');
const { nodeFloorPass, buildCFloor, cFloor } = await import('./lib/floor.mjs');
const { ProcessExporter, exporterVersion } = await import('./lib/anchor.mjs');
const { Daemon } = await import('./lib/daemon.mjs');
const { measureLatency } = await import('./lib/latency.mjs');
const { soak } = await import('./lib/soak.mjs');
const { measureReap } = await import('./lib/reap.mjs');
const { countProcesses, installCleanupHandlers, onCleanup, quantile, round, rssSplit, sleep, summary, vmRss } = await import('./lib/util.mjs');

// ── options ───────────────────────────────────────────────────────────────────────────────────

const argv = process.argv.slice(2);
const quick = argv.includes('--quick');
const keep = argv.includes('--keep');
const only = (argv.find((a) => a.startsWith('--only=')) ?? '').slice('--only='.length).split(',').filter(Boolean);
const want = (section) => only.length === 0 || only.includes(section);
/** --interval of the interval-only latency mode (the target: p95 ≤ 1 s at --interval 1). */
const INTERVAL_MODE_SECONDS = 1;
const soakVariantsArg = (argv.find((a) => a.startsWith('--soak-variants=')) ?? '').slice('--soak-variants='.length).split(',').filter(Boolean);
const DEFAULT_INTERVAL_SECONDS = 15; // `run --interval` default
const DEFAULT_FULL_SWEEP_SECONDS = 60; // `run --full-sweep-seconds` default
if (argv.includes('--help') || argv.includes('-h')) {
  process.stdout.write(`usage: node bench/run.mjs [--quick] [--only=cycle,daemon,reap,latency,soak] [--keep]
  --quick   scaled down (1,000 processes, 100k-run store, fewer samples): under a minute
  --only    run only these sections (the synthetic host is always built for cycle/daemon)
  --keep    keep the temporary work folder (logs, audit trails)
  --soak-variants=default,tuned   which soak variants to run (default: the mode's)
`);
  process.exit(0);
}

const CFG = quick
  ? {
      mode: 'quick',
      procs: 1000,
      smallProcs: 200,
      targetProcs: 2000,
      targetTrees: 20,
      reapTrees: 50,
      trees: 100,
      smallTrees: 20,
      bigRuns: 100_000,
      smallRuns: 10_000,
      warmup: 2,
      cycles: 12,
      daemonSeconds: 2,
      latencyReps: 5,
      latencyInterval: 1,
      latencyModes: ['hook+watch', 'watch', 'hook', 'interval'],
      latencySettleMs: 300,
      daemonVariants: ['big', 'big-tuned'],
      soakVariants: ['default'],
      soakJobs: 1_000,
      soakJobsPerTree: 10,
      soakBatch: 25,
      soakBudgetSeconds: 20,
      soakWarmupSeconds: 0,
      lifetimeSeconds: 900,
    }
  : {
      mode: 'full',
      procs: 2000,
      smallProcs: 200,
      targetProcs: 2000,
      targetTrees: 20,
      reapTrees: 50,
      trees: 200,
      smallTrees: 20,
      bigRuns: 1_000_000,
      smallRuns: 10_000,
      warmup: 10,
      cycles: 100,
      daemonSeconds: 20,
      latencyReps: 20,
      latencyInterval: 15,
      latencyModes: ['hook+watch', 'watch', 'hook', 'interval'],
      latencySettleMs: 500,
      daemonVariants: ['big', 'small', 'big-tuned'],
      soakVariants: ['default', 'tuned'],
      soakJobs: 100_000,
      soakJobsPerTree: 20,
      soakBatch: 50,
      soakBudgetSeconds: 1200,
      // The store reader keeps finished runs 5 min (retainFinishedMs): at soak churn rates that
      // set fills for 5 min before it is steady.
      soakWarmupSeconds: 360,
      lifetimeSeconds: 4 * 3600,
    };
/**
 * V8 flags that keep the daemon's RSS flat (measured here: the live heap is ~15 MB, but by
 * default V8 lets the heap grow to 60–80 MB between major GCs and the young generation to 16 MB).
 * Proposed for the daemon's launch (NODE_OPTIONS in the systemd unit / container).
 */
const TUNED_NODE_FLAGS = ['--max-semi-space-size=1', '--max-old-space-size=128'];
const LEAKED_EVERY = 4; // every 4th tree belongs to an abandoned job (leaked), the others to running jobs

const tLog0 = performance.now();
const log = (line) => process.stderr.write(`[${((performance.now() - tLog0) / 1000).toFixed(1).padStart(5)} s] ${line}\n`);
installCleanupHandlers();

const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'stepwise-bench-'));
onCleanup(() => {
  if (!keep) fs.rmSync(workDir, { recursive: true, force: true });
});

const results = {
  mode: CFG.mode,
  startedAt: new Date().toISOString(),
  machine: {
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? null,
    memGiB: round(os.totalmem() / 2 ** 30, 1),
    kernel: os.release(),
    node: process.version,
    loadavgAtStart: os.loadavg().map((v) => round(v, 2)),
  },
  config: { ...CFG, leakedFraction: 1 / LEAKED_EVERY, runsPerJob: RUNS_PER_JOB, historyFirstPid: HISTORY_FIRST_PID },
};
try {
  const { execFileSync } = await import('node:child_process');
  const git = (...a) => execFileSync('git', a, { cwd: path.join(HERE, '..'), encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  results.code = { commit: git('rev-parse', '--short', 'HEAD'), uncommittedSrcFiles: git('status', '--porcelain', '--', 'src').split('\n').filter(Boolean).length };
} catch {
  results.code = null;
}
const t0All = performance.now();

// ── the synthetic host ────────────────────────────────────────────────────────────────────────

const policy = DEFAULT_POLICY;
const planContext = selfPlanContext(false);

function ms(v) {
  return round(v, 2);
}

/**
 * Interleaved measurement of one host state: returns the phase's figures. The cycle is the real
 * ProjectSession.collect() (default config: targeted between full sweeps), split per source by
 * the durations the session records; beside it the same with every cycle a full sweep
 * (fullSweepSeconds 0), and with the 10k-run store.
 */
async function measurePhase(name, { P, smallDb, anchor, cBin, iterations, warmup }) {
  const sessions = {
    big: new ProjectSession({ root: P.root, policy }),
    full: new ProjectSession({ root: P.root, policy, fullSweepSeconds: 0 }),
    small: new ProjectSession({ root: P.root, db: smallDb, policy }),
  };
  const rec = {
    cycles: { big: [], full: [], small: [] },
    cpu: { big: [], full: [] },
    parts: Object.fromEntries(Object.keys(sessions).map((k) => [k, Object.fromEntries(PARTS.map((p) => [p, []]))])),
    modes: { big: {}, full: {}, small: {} },
    nodeFloor: [],
    cFloorPass: [],
    cFloorWall: [],
    anchor: [],
    anchorProcs: [],
    processCount: [],
    readCount: { big: [], full: [] },
    storeRatioPairs: [],
  };
  const first = {};
  let verdicts = null;
  let storeStats = null;

  const cycleTask = (key) => (m, it) => {
    const r = timedCollect(sessions[key], { policy, planContext });
    if (!m) {
      first[key] ??= r;
      return;
    }
    rec.cycles[key].push(r.total);
    rec.cpu[key]?.push(r.cpuMs);
    for (const p of PARTS) rec.parts[key][p].push(r.t[p] ?? 0);
    const mode = r.mode === 'full' ? `full (${r.sweepReason})` : r.mode;
    rec.modes[key][mode] = (rec.modes[key][mode] ?? 0) + 1;
    rec.readCount[key]?.push(r.processCount);
    it[key] = r.t.store;
    if (key === 'big') {
      verdicts = verdictCounts(r.inventory);
      storeStats = r.storeStats;
    }
  };
  const tasks = {
    collectBig: cycleTask('big'),
    collectFull: cycleTask('full'),
    collectSmall: cycleTask('small'),
    nodeFloor: (m) => {
      const r = nodeFloorPass();
      if (m) rec.nodeFloor.push(r.ms);
    },
    cFloor: (m) => {
      if (!cBin) return;
      const r = cFloor(cBin, 1);
      if (m) {
        rec.cFloorPass.push(r.passMs[0]);
        rec.cFloorWall.push(r.wallMs);
      }
    },
    anchor: async (m) => {
      if (!anchor) return;
      const r = await anchor.scrape();
      if (m) {
        rec.anchor.push(r.ms);
        rec.anchorProcs.push(r.procs);
      }
    },
  };
  const names = Object.keys(tasks);
  const tStart = performance.now();
  for (let i = 0; i < warmup + iterations; i++) {
    const measured = i >= warmup;
    const it = {};
    // A fresh random order each round: no task always runs right after another.
    const order = [...names].sort(() => Math.random() - 0.5);
    for (const n of order) await tasks[n](measured, it);
    if (measured) rec.processCount.push(countProcesses());
    if (measured && it.big !== undefined && it.small !== undefined) rec.storeRatioPairs.push(it.big / it.small);
  }
  const seconds = (performance.now() - tStart) / 1000;
  for (const s of Object.values(sessions)) s.close();

  const S = (xs) => {
    const s = summary(xs);
    return { p50: ms(s.p50), p95: ms(s.p95), min: ms(s.min), max: ms(s.max), n: s.n };
  };
  const partsOf = (key) => Object.fromEntries(PARTS.map((p) => [p, S(rec.parts[key][p])]));
  return {
    name,
    processes: Math.round(quantile(rec.processCount, 0.5)),
    trees: verdicts ? Object.values(verdicts).reduce((a, b) => a + b, 0) : 0,
    processesRead: { targeted: Math.round(quantile(rec.readCount.big, 0.5)), full: Math.round(quantile(rec.readCount.full, 0.5)) },
    iterations,
    warmup,
    seconds: round(seconds, 1),
    verdicts,
    modes: rec.modes,
    cycle: S(rec.cycles.big),
    cycleFullSweep: S(rec.cycles.full),
    cycleSmallStore: S(rec.cycles.small),
    cpuSecondsPerCycle: round(summary(rec.cpu.big).mean / 1000, 5),
    cpuSecondsPerFullSweep: round(summary(rec.cpu.full).mean / 1000, 5),
    cpuPerWall: round(summary(rec.cpu.big).mean / summary(rec.cycles.big).mean, 2),
    parts: partsOf('big'),
    partsFullSweep: partsOf('full'),
    partsSmallStore: partsOf('small'),
    firstRead: {
      collectBigMs: ms(first.big?.total),
      collectSmallMs: ms(first.small?.total),
      storeBigMs: ms(first.big?.t.store),
      storeSmallMs: ms(first.small?.t.store),
      storeBigKind: first.big?.storeStats?.kind ?? null,
    },
    storeSteadyState: storeStats
      ? { kind: storeStats.kind, trackedRuns: storeStats.trackedRuns, retainedRuns: storeStats.retainedRuns, newRows: storeStats.newRows, reReadRuns: storeStats.reReadRuns }
      : null,
    storeRatio1MOver10k: { ofP50s: round(quantile(rec.parts.big.store, 0.5) / quantile(rec.parts.small.store, 0.5), 2), medianOfPairs: round(quantile(rec.storeRatioPairs, 0.5), 2) },
    floor: { node: S(rec.nodeFloor), cPass: cBin ? S(rec.cFloorPass) : null, cProcessWall: cBin ? S(rec.cFloorWall) : null },
    anchor: anchor ? { ...S(rec.anchor), processesGrouped: Math.round(quantile(rec.anchorProcs, 0.5)) } : null,
    rssBenchProcessBytes: process.memoryUsage().rss,
  };
}

/** The floor under any daemon: an idle `node -e` (no module loaded), its RSS and split. */
async function bareNodeRss() {
  const { spawn } = await import('node:child_process');
  const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60_000)'], { stdio: 'ignore' });
  try {
    await sleep(1000);
    return { rssBytes: vmRss(child.pid), ...rssSplit(child.pid) };
  } finally {
    child.kill('SIGKILL');
  }
}

async function daemonRss(label, P, db, seconds, nodeFlags = []) {
  const d = await Daemon.start({
    nodeFlags,
    project: P.root,
    auditLog: path.join(workDir, `audit-rss-${label}.jsonl`),
    logFile: path.join(workDir, `daemon-rss-${label}.log`),
    interval: 0.5,
    observeOnly: true,
    logLevel: 'warn',
    extra: db ? ['--db', db] : [],
  });
  try {
    const afterFirst = d.rss();
    // Warm-up: a few cycles, then sample once per 250 ms.
    await sleep(Math.min(3000, seconds * 250));
    const s0 = await d.cycleStats();
    const cpu0 = d.cpu();
    const samples = [];
    const splits = [];
    const tEnd = performance.now() + seconds * 1000;
    while (performance.now() < tEnd) {
      samples.push(d.rss());
      splits.push(d.rssSplit());
      await sleep(250);
    }
    const split = (k) => quantile(splits.filter(Boolean).map((x) => x[k]), 0.5);
    const s1 = await d.cycleStats();
    const cpu1 = d.cpu();
    const cycles = s1.count - s0.count;
    return {
      label,
      nodeFlags,
      rssAfterFirstCycleBytes: afterFirst,
      rssMedianBytes: quantile(samples, 0.5),
      rssMinBytes: Math.min(...samples),
      rssMaxBytes: Math.max(...samples),
      // Where it is: anonymous (V8 heap, malloc) vs file-backed (node's executable, addons).
      rssAnonMedianBytes: split('anonBytes'),
      rssFileMedianBytes: split('fileBytes'),
      cycles,
      cycleMeanMs: round(((s1.sum - s0.sum) / cycles) * 1000, 2),
      cpuSecondsPerCycle: round((cpu1 - cpu0) / cycles, 4),
    };
  } finally {
    await d.stop();
  }
}

// ── run ───────────────────────────────────────────────────────────────────────────────────────

log(`stepwise-watchdog bench (${CFG.mode}) — work folder ${workDir}`);
const fillers = new Fillers(CFG.lifetimeSeconds);
const smallHistory = cachedHistory(10_000, log);
let P = null;
try {
  if (want('cycle') || want('daemon')) {
    const big = cachedHistory(CFG.bigRuns, log);
    const small = CFG.smallRuns === 10_000 ? smallHistory : cachedHistory(CFG.smallRuns, log);
    results.stores = {
      bigRuns: CFG.bigRuns,
      bigJobs: CFG.bigRuns / RUNS_PER_JOB,
      smallRuns: CFG.smallRuns,
      bigFileBytes: fs.statSync(big.file).size,
      smallFileBytes: fs.statSync(small.file).size,
      bigBuildSeconds: big.builtSeconds,
    };
    const tCopy = performance.now();
    P = await makeProject(path.join(workDir, 'project'), { historyFile: big.file, lifetimeSeconds: CFG.lifetimeSeconds });
    const smallDbPath = path.join(P.stepwiseDir, 'stepwise-10k.db');
    const smallDb = openStoreCopy(small.file, smallDbPath);
    log(`project ready (store copies ${((performance.now() - tCopy) / 1000).toFixed(1)} s)`);

    const cfloor = buildCFloor();
    results.cFloor = cfloor.error ? { error: cfloor.error } : { built: true };
    let anchor = null;
    if (ProcessExporter.available()) {
      try {
        anchor = await ProcessExporter.start(workDir, policy.markers);
        results.anchorInfo = { version: exporterVersion(), args: anchor.args };
      } catch (err) {
        results.anchorInfo = { error: String(err.message ?? err) };
      }
    } else {
      results.anchorInfo = { error: 'prometheus-process-exporter is not installed (apt-get install -y prometheus-process-exporter)' };
    }
    if (results.anchorInfo.error) log(`anchor skipped: ${results.anchorInfo.error}`);

    const allTrees = [];
    const growTrees = async (n) => {
      const trees = await P.server.spawnTrees(n, { kind: 'plain' });
      const offset = allTrees.length;
      for (const t of trees) writePidFile(P.pidsDir, t.topPid);
      addLiveJobs([P.db, smallDb], trees, { isLeaked: (i) => (offset + i) % LEAKED_EVERY === LEAKED_EVERY - 1 });
      allTrees.push(...trees);
    };

    // Phase A: the small host.
    await growTrees(CFG.smallTrees);
    await fillTo(fillers, CFG.smallProcs);
    log(`phase A: ${countProcesses()} processes, ${allTrees.length} trees — measuring…`);
    results.small = await measurePhase('small host', { P, smallDb: smallDbPath, anchor, cBin: cfloor.bin, iterations: CFG.cycles, warmup: CFG.warmup });

    // Phase T: the issue's host shape — many processes, few adapters (20 trees, 2,000 processes).
    await fillTo(fillers, CFG.targetProcs);
    log(`phase T: ${countProcesses()} processes, ${allTrees.length} trees — measuring…`);
    results.target = await measurePhase('2,000-process host, 20 trees', { P, smallDb: smallDbPath, anchor, cBin: cfloor.bin, iterations: CFG.cycles, warmup: CFG.warmup });
    // CPU at the default interval, from the same run's figures: one full sweep per period, targeted cycles between.
    {
      const t = results.target;
      const perPeriod = DEFAULT_FULL_SWEEP_SECONDS / DEFAULT_INTERVAL_SECONDS;
      const cpu = ((perPeriod - 1) * t.cpuSecondsPerCycle + t.cpuSecondsPerFullSweep) / DEFAULT_FULL_SWEEP_SECONDS;
      results.target.defaultIntervalCpuPercentOfCore = round(cpu * 100, 3);
    }
    const excess = countProcesses() - CFG.procs;
    if (excess > 0) await fillers.trimTo(Math.max(0, fillers.count - excess));

    // Phase B: the full host.
    await growTrees(CFG.trees - CFG.smallTrees);
    await fillTo(fillers, CFG.procs);
    log(`phase B: ${countProcesses()} processes, ${allTrees.length} trees — measuring…`);
    results.big = await measurePhase('full host', { P, smallDb: smallDbPath, anchor, cBin: cfloor.bin, iterations: CFG.cycles, warmup: CFG.warmup });
    await anchor?.stop();

    if (want('daemon')) {
      log('daemon RSS (observe-only, interval 0.5 s)…');
      results.daemon = {};
      results.daemonBareNode = await bareNodeRss();
      for (const v of CFG.daemonVariants) {
        results.daemon[v] = await daemonRss(v, P, v === 'small' ? smallDbPath : null, CFG.daemonSeconds, v.endsWith('-tuned') ? TUNED_NODE_FLAGS : []);
      }
    }
    smallDb.close();
  }

  if (want('reap')) {
    await fillTo(fillers, CFG.procs);
    log(`reap: ${CFG.reapTrees} leaked trees at once (${countProcesses()} processes)…`);
    results.reap = await measureReap({ trees: CFG.reapTrees, workDir, historyFile: smallHistory.file, lifetimeSeconds: CFG.lifetimeSeconds, policy, planContext });
  }

  if (want('latency')) {
    await fillTo(fillers, CFG.procs);
    results.latency = { processesAtStart: countProcesses(), modes: {} };
    for (const mode of CFG.latencyModes) {
      // The event modes run at the mode's default interval (events must not need it); the
      // interval-only mode is the issue's "interval (1 s)": the timer is all there is.
      const interval = mode === 'interval' ? INTERVAL_MODE_SECONDS : CFG.latencyInterval;
      log(`latency: ${mode} × ${CFG.latencyReps} (interval ${interval} s)…`);
      const r = await measureLatency({ mode, reps: CFG.latencyReps, interval, settleMs: CFG.latencySettleMs, workDir, historyFile: smallHistory.file, lifetimeSeconds: CFG.lifetimeSeconds, log });
      results.latency.modes[mode] = { ...r, p50: ms(r.p50), p95: ms(r.p95), min: ms(r.min), max: ms(r.max), mean: ms(r.mean) };
    }
  }

  if (want('soak')) {
    results.soak = {};
    for (const variant of soakVariantsArg.length ? soakVariantsArg : CFG.soakVariants) {
      await fillTo(fillers, CFG.procs);
      const nodeFlags = variant === 'tuned' ? TUNED_NODE_FLAGS : [];
      log(`soak (${variant}${nodeFlags.length ? ` ${nodeFlags.join(' ')}` : ''}): ${CFG.soakJobs.toLocaleString('en')} jobs, ${CFG.soakJobsPerTree} per adapter tree, budget ${CFG.soakBudgetSeconds} s…`);
      results.soak[variant] = {
        nodeFlags,
        processesAtStart: countProcesses(),
        ...(await soak({
          jobs: CFG.soakJobs,
          jobsPerTree: CFG.soakJobsPerTree,
          batchTrees: CFG.soakBatch,
          workDir,
          historyFile: smallHistory.file,
          lifetimeSeconds: CFG.lifetimeSeconds,
          log,
          timeBudgetSeconds: CFG.soakBudgetSeconds,
          warmupFraction: 0.1,
          warmupSeconds: CFG.soakWarmupSeconds,
          nodeFlags,
          label: variant,
        })),
      };
    }
  }
} finally {
  await P?.stop();
  await fillers.stop();
}
results.totalSeconds = round((performance.now() - t0All) / 1000, 1);
results.machine.loadavgAtEnd = os.loadavg().map((v) => round(v, 2));

// ── report ────────────────────────────────────────────────────────────────────────────────────

const { renderTable, renderMarkdown, targets } = await import('./lib/report.mjs');
results.targets = targets(results);
const outDir = path.join(HERE, 'results');
fs.mkdirSync(outDir, { recursive: true });
fs.writeFileSync(path.join(outDir, 'latest.json'), `${JSON.stringify(results, null, 2)}\n`);
fs.writeFileSync(path.join(outDir, 'latest.md'), renderMarkdown(results));
process.stdout.write(renderTable(results));
log(`\nwrote bench/results/latest.json and latest.md (${results.totalSeconds} s)`);
