// Detection latency: from a job turning terminal in the store (its hook firing) to SIGTERM on its
// adapter tree's top, terminal grace 0, through a real `stepwise-watchdog run`. The top is a bash
// that writes $EPOCHREALTIME when SIGTERM arrives. Four ways the daemon can learn of it:
//   hook+watch  the installed on-fail hook pokes /api/poke, and the file watcher sees the store's
//               -wal change (the default deployment: whichever comes first)
//   watch       only the file watcher (no hook installed)
//   hook        only the hook: the store sits behind a symlink in another folder, so the watcher
//               (which watches <project>/.stepwise/stepwise.db and its -wal by path) never sees
//               the writes — checked in the daemon's debug log
//   interval    neither (store behind the symlink, no hook): only the interval timer wakes it
// Samples are sequential; before each transition the bench waits a random delay (up to one
// interval in "interval" mode) so the phase against the daemon's timer is uniform.

import fs from 'node:fs';
import path from 'node:path';
import { Daemon, installHook, readLog } from './daemon.mjs';
import { treeGone } from './host.mjs';
import { abandonJobs, fireHook, makeProject, startJobs } from './project.mjs';
import { sleep, summary, waitFor } from './util.mjs';

function readSigterm(file) {
  try {
    const v = Number(fs.readFileSync(file, 'utf8').trim());
    return Number.isFinite(v) && v > 0 ? v * 1000 : null; // epoch ms (µs precision)
  } catch {
    return null;
  }
}

export async function measureLatency({ mode, reps, interval, settleMs = 500, workDir, historyFile, lifetimeSeconds, log }) {
  const slug = mode.replace('+', '-');
  const root = path.join(workDir, `latency-${slug}`);
  const sigtermDir = path.join(workDir, `sigterm-${slug}`);
  fs.mkdirSync(sigtermDir, { recursive: true });
  const project = await makeProject(root, { historyFile, lifetimeSeconds, storeBehindSymlink: mode === 'hook' || mode === 'interval' });
  const logFile = path.join(workDir, `daemon-latency-${slug}.log`);
  let daemon = null;
  const latencies = [];
  try {
    daemon = await Daemon.start({
      project: root,
      auditLog: path.join(workDir, `audit-latency-${slug}.jsonl`),
      logFile,
      interval,
      terminalGrace: 0,
      logLevel: 'debug',
    });
    const hooked = mode === 'hook' || mode === 'hook+watch';
    if (hooked) installHook(root, daemon.listen);

    const one = async (tree, rows, delayMs) => {
      await sleep(delayMs);
      abandonJobs(project, rows);
      const t0 = Date.now();
      if (hooked) fireHook(project, 'on-fail', rows[0].jobId);
      const at = await waitFor(() => readSigterm(tree.sigtermFile), (interval + 20) * 1000, 2);
      if (at === null) throw new Error(`latency (${mode}): tree ${tree.topPid} got no SIGTERM within ${interval + 20} s`);
      await waitFor(() => treeGone(tree), 10_000, 10);
      project.server.forget(tree);
      return at - t0;
    };

    for (let i = 0; i < reps; i++) {
      const [tree] = await project.server.spawnTrees(1, { kind: 'trap', sigtermDir });
      const rows = startJobs(project, tree);
      // Let the cycle the start itself triggers (pid file added) pass, then a random phase.
      const phase = mode === 'interval' ? Math.random() * interval * 1000 : Math.random() * 250;
      latencies.push(await one(tree, rows, settleMs + phase));
    }
  } finally {
    await daemon?.stop();
    await project.stop();
  }
  const pokes = {};
  for (const l of readLog(logFile)) {
    if (l.msg !== 'poke') continue;
    const reason = String(l.reason ?? '?').replace(/acp-\d+\.json/, 'acp-*.json');
    pokes[reason] = (pokes[reason] ?? 0) + 1;
  }
  return { mode, interval, ...summary(latencies), samplesMs: latencies.map((v) => Math.round(v * 10) / 10), pokes };
}
