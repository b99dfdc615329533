// Cheap reaps: N leaked trees (every job failed, terminal grace 0) reaped at once, in process,
// the way the daemon carries out a plan: executePlan re-verifies each tree right before its
// signals (a fresh collect: targeted, not the host), SIGTERM, wait, confirm, audit, pid file.
// Wall time and this process's CPU per tree; every tree's outcome counted.

import path from 'node:path';
import { plan } from '../../dist/core/plan.js';
import { AuditLog } from '../../dist/effects/audit-log.js';
import { executePlan } from '../../dist/effects/execute.js';
import { ProjectSession } from '../../dist/session/project-session.js';
import { makeProject } from './project.mjs';
import { addLiveJobs, writePidFile } from './stores.mjs';
import { countProcesses, round } from './util.mjs';

export async function measureReap({ trees: n, workDir, historyFile, lifetimeSeconds, policy: basePolicy, planContext }) {
  const P = await makeProject(path.join(workDir, 'reap-project'), { historyFile, lifetimeSeconds });
  const policy = { ...basePolicy, terminalGraceSeconds: 0 };
  let session = null;
  try {
    const trees = await P.server.spawnTrees(n, { kind: 'plain' });
    for (const t of trees) writePidFile(P.pidsDir, t.topPid);
    addLiveJobs([P.db], trees, { isLeaked: () => true });
    session = new ProjectSession({ root: P.root, policy });
    // What a daemon has long done before the jobs end: the first read (a full sweep).
    session.collect();
    const processes = countProcesses();
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    const inv = session.collect();
    const p = plan(inv, policy, { allLeaked: true, orphans: false, sessions: false, jobs: [], pids: [], force: false, gc: true }, planContext);
    const report = await executePlan(p, {
      session,
      actor: 'cli',
      audit: new AuditLog(path.join(workDir, 'audit-reap.jsonl')),
      killWaitMs: 5000,
      gc: true,
      planContext,
    });
    const wallSeconds = (performance.now() - t0) / 1000;
    const c = process.cpuUsage(c0);
    const kills = report.results.filter((r) => r.kind === 'kill-tree');
    for (const t of trees) P.server.forget(t);
    return {
      trees: n,
      processesOnHost: processes,
      planned: p.actions.filter((a) => a.kind === 'kill-tree').length,
      ok: kills.filter((r) => r.outcome === 'ok').length,
      failedOrSkipped: kills.filter((r) => r.outcome !== 'ok').map((r) => `${r.topPid}: ${r.outcome} ${r.detail}`).slice(0, 5),
      pidFilesRemoved: kills.filter((r) => r.pidFile?.outcome === 'removed').length,
      wallSeconds: round(wallSeconds, 2),
      cpuMsPerTree: round((c.user + c.system) / 1000 / n, 2),
      auditError: report.auditError,
    };
  } finally {
    session?.close();
    await P.stop();
  }
}
