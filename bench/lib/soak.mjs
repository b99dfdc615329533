// Soak: jobs churned through a running daemon (terminal grace 0): adapters started, jobs
// abandoned (the leak), the daemon reaps the trees and removes their pid files; the daemon's
// RSS (VmRSS from /proc) is sampled after every batch. Adapters may be shared by several jobs
// (stepwise shares an adapter between jobs with the same agent config): `jobsPerTree` jobs name
// each tree, so the store and the classifier see every job while the process churn stays
// affordable on 2 cores.

import path from 'node:path';
import { Daemon } from './daemon.mjs';
import { treeGone } from './host.mjs';
import { abandonJobs, makeProject, startJobs } from './project.mjs';
import { pruneRegistry, quantile, sleep, waitFor } from './util.mjs';

export async function soak({ nodeFlags = [], label = 'default', jobs, jobsPerTree, batchTrees, warmupFraction = 0.1, warmupSeconds = 0, workDir, historyFile, lifetimeSeconds, log, timeBudgetSeconds = Infinity }) {
  const root = path.join(workDir, `soak-${label}`);
  const project = await makeProject(root, { historyFile, lifetimeSeconds });
  const logFile = path.join(workDir, `daemon-soak-${label}.log`);
  let daemon = null;
  const samples = []; // { jobs, rss, t, cpu, heapUsed?, heapTotal? }
  let done = 0;
  let trees = 0;
  const t0 = performance.now();
  let stoppedEarly = null;
  try {
    daemon = await Daemon.start({ project: root, auditLog: path.join(workDir, `audit-soak-${label}.jsonl`), logFile, interval: 15, terminalGrace: 0, logLevel: 'warn', nodeFlags });
    samples.push({ jobs: 0, rss: daemon.rss(), t: 0, cpu: daemon.cpu() });
    let lastLog = performance.now();
    while (done < jobs) {
      const n = Math.min(batchTrees, Math.ceil((jobs - done) / jobsPerTree));
      const batch = await project.server.spawnTrees(n, { kind: 'plain' });
      const rows = batch.map((t) => startJobs(project, t, jobsPerTree));
      abandonJobs(project, rows.flat());
      await daemon.poke();
      const gone = await waitFor(() => batch.every(treeGone), 120_000, 20);
      if (!gone) throw new Error(`soak: ${batch.filter((t) => !treeGone(t)).length} trees not reaped within 120 s`);
      for (const t of batch) project.server.forget(t);
      done += rows.reduce((s, r) => s + r.length, 0);
      trees += batch.length;
      const t = (performance.now() - t0) / 1000;
      const sample = { jobs: done, rss: daemon.rss(), t, cpu: daemon.cpu() };
      {
        const h = await daemon.heap();
        sample.heapUsed = h.used;
        sample.heapTotal = h.total;
      }
      samples.push(sample);
      if (performance.now() - lastLog > 30_000) {
        lastLog = performance.now();
        log(`  soak ${label}: ${done.toLocaleString('en')} jobs, ${trees.toLocaleString('en')} trees reaped, RSS ${(samples.at(-1).rss / 2 ** 20).toFixed(1)} MiB, ${t.toFixed(0)} s`);
        pruneRegistry();
      }
      if (t > timeBudgetSeconds) {
        stoppedEarly = `time budget of ${timeBudgetSeconds} s reached`;
        break;
      }
    }
    await sleep(200);
  } finally {
    await daemon?.stop();
    await project.stop();
  }
  const seconds = (performance.now() - t0) / 1000;
  // Warm-up: the first `warmupFraction` of the jobs, and at least `warmupSeconds`.
  const warmupEnd = Math.max(warmupFraction * seconds, Math.min(warmupSeconds, seconds / 2));
  const warm = samples.filter((s) => s.t >= warmupEnd && s.jobs > 0);
  const k = Math.max(1, Math.floor(warm.length / 10));
  const base = quantile(warm.slice(0, k).map((s) => s.rss), 0.5);
  const end = quantile(warm.slice(-k).map((s) => s.rss), 0.5);
  const rss = warm.map((s) => s.rss);
  const min = Math.min(...rss);
  const max = Math.max(...rss);
  const maxDev = Math.max(...rss.map((r) => Math.abs(r - base) / base));
  // Ten windows after warm-up: the median RSS of each (GC sawtooth smoothed) and the lowest
  // V8 heap-used seen in each (its lower envelope: about the live heap after a major GC).
  const windows = [];
  for (let w = 0; w < 10; w++) {
    const part = warm.slice(Math.floor((w * warm.length) / 10), Math.floor(((w + 1) * warm.length) / 10));
    if (part.length === 0) continue;
    const heaps = part.map((s) => s.heapUsed).filter((v) => Number.isFinite(v));
    windows.push({ jobs: part.at(-1).jobs, rssMedian: quantile(part.map((s) => s.rss), 0.5), heapUsedMin: heaps.length ? Math.min(...heaps) : null });
  }
  const wBase = windows[0]?.rssMedian;
  const windowDev = Math.max(...windows.map((w) => Math.abs(w.rssMedian - wBase) / wBase)) * 100;
  const heapLows = windows.map((w) => w.heapUsedMin).filter((v) => v !== null);
  return {
    jobs: done,
    trees,
    jobsPerTree,
    batchTrees,
    seconds,
    treesPerSecond: trees / seconds,
    stoppedEarly,
    warmupSeconds: warmupEnd,
    warmupJobs: warm[0]?.jobs ?? null,
    samplesAfterWarmup: warm.length,
    rssStartBytes: samples[0].rss,
    rssBaselineBytes: base,
    rssEndBytes: end,
    rssMinBytes: min,
    rssMaxBytes: max,
    driftPct: ((end - base) / base) * 100,
    maxDeviationPct: maxDev * 100,
    windowMedianMaxDeviationPct: windowDev,
    heapUsedLowFirstWindowBytes: heapLows[0] ?? null,
    heapUsedLowLastWindowBytes: heapLows.at(-1) ?? null,
    windows,
    cpuSecondsPerTree: (samples.at(-1).cpu - samples[0].cpu) / trees,
    samples: samples.map((s) => [s.jobs, Math.round(s.t * 10) / 10, s.rss, s.heapUsed ?? null]),
  };
}
