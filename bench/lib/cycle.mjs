// One project's read side, timed: the real ProjectSession.collect() (what the daemon does per
// cycle), split per source by the durations the session itself records for each source
// (inv.sources[name].durationSeconds — the same figures the daemon exports as
// stepwise_watchdog_source_duration_seconds); what is left of the wall time is the classifier
// (and the rest of collect). The plan is timed after it. No copy of collect() to drift.

import { plan } from '../../dist/core/plan.js';

export const PARTS = ['processes', 'server', 'pidfiles', 'store', 'classify', 'plan'];

/** One timed cycle: { inventory, total, t: {part: ms}, cpuMs, processCount, detailedCount, mode, sweepReason }. */
export function timedCollect(session, { policy, planContext, now = Date.now() / 1000 }) {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const inventory = session.collect(now);
  const t1 = performance.now();
  plan(inventory, policy, { allLeaked: true, orphans: true, sessions: true, jobs: [], pids: [], force: false, gc: true }, planContext);
  const t2 = performance.now();
  const c = process.cpuUsage(c0);
  const t = {};
  let sources = 0;
  for (const p of ['processes', 'server', 'pidfiles', 'store']) {
    t[p] = (inventory.sources[p]?.durationSeconds ?? 0) * 1000;
    sources += t[p];
  }
  t.classify = Math.max(0, t1 - t0 - sources);
  t.plan = t2 - t1;
  return {
    inventory,
    total: t1 - t0,
    t,
    cpuMs: (c.user + c.system) / 1000,
    processCount: session.lastRead?.processes ?? 0,
    mode: session.lastRead?.mode ?? null,
    sweepReason: session.lastRead?.sweepReason ?? null,
    storeStats: session.store.lastReadStats,
  };
}

export function verdictCounts(inventory) {
  const out = {};
  for (const a of inventory.adapters) out[a.verdict] = (out[a.verdict] ?? 0) + 1;
  return out;
}
