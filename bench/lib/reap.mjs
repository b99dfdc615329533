// Reap throughput: N leaked trees (their jobs abandoned) reaped at once, the way `reap
// --all-leaked --yes` does it (the real ProjectSession, plan and executePlan, in this process),
// on a host filled to the bench's process count. Wall time of the whole execution, and this
// process's CPU (process.cpuUsage: the watchdog's own work; the trees' exits are theirs) per tree.

import path from 'node:path';
import { plan } from '../../dist/core/plan.js';
import { DEFAULT_POLICY } from '../../dist/core/types.js';
import { AuditLog } from '../../dist/effects/audit-log.js';
import { executePlan } from '../../dist/effects/execute.js';
import { selfPlanContext } from '../../dist/effects/self.js';
import { ProjectSession } from '../../dist/session/project-session.js';
import { treeGone } from './host.mjs';
import { abandonJobs, makeProject, startJobs } from './project.mjs';
import { round, waitFor } from './util.mjs';

export async function reapThroughput({ trees, workDir, historyFile, lifetimeSeconds, log }) {
  const root = path.join(workDir, 'reap');
  const project = await makeProject(root, { historyFile, lifetimeSeconds });
  try {
    const batch = await project.server.spawnTrees(trees, { kind: 'plain' });
    abandonJobs(project, batch.flatMap((t) => startJobs(project, t, 1)));
    const policy = { ...DEFAULT_POLICY, terminalGraceSeconds: 0 };
    const session = new ProjectSession({ root, policy, env: {} });
    try {
      const ctx = selfPlanContext(false);
      const p = plan(session.collect(), policy, { allLeaked: true, orphans: false, sessions: false, jobs: [], pids: [], force: false, gc: true }, ctx);
      const planned = p.actions.filter((a) => a.kind === 'kill-tree').length;
      log(`reap: ${planned} of ${trees} trees planned; executing…`);
      const cpu0 = process.cpuUsage();
      const t0 = performance.now();
      const report = await executePlan(p, { session, actor: 'cli', audit: new AuditLog(path.join(workDir, 'audit-reap.jsonl')), killWaitMs: 5000, gc: true, planContext: ctx });
      const wallMs = performance.now() - t0;
      const cpu = process.cpuUsage(cpu0);
      const ok = report.results.filter((r) => r.kind === 'kill-tree' && r.outcome === 'ok').length;
      await waitFor(() => batch.every(treeGone), 10_000, 20);
      for (const t of batch) project.server.forget(t);
      const cpuMs = (cpu.user + cpu.system) / 1000;
      return { trees, planned, ok, allGone: batch.every(treeGone), wallMs: round(wallMs, 1), cpuMs: round(cpuMs, 1), cpuMsPerTree: round(cpuMs / Math.max(1, planned), 2), treesPerSecond: round(planned / (wallMs / 1000), 1) };
    } finally {
      session.close();
    }
  } finally {
    await project.stop();
  }
}
