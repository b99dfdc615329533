// `demo`: works on a fresh machine with no stepwise. Builds a throw-away stepwise-shaped project
// with real fake adapter trees in every state, prints `status`, shows the reap plan, reaps the
// leaked and orphaned trees and the stale pid files, shows the memory coming back, and stops
// every process it started whatever happens (Ctrl-C included).

import fs from 'node:fs';
import path from 'node:path';
import { actionBytes, nextGraceExpiry, plan } from '../../core/plan.js';
import { mib, renderStatus, totals } from '../../core/report.js';
import { DEFAULT_POLICY, type Policy } from '../../core/types.js';
import { ProjectSession } from '../../session/project-session.js';
import { buildDemoProject, type DemoProject } from '../../demo/scenario.js';
import { AuditLog } from '../../effects/audit-log.js';
import { executePlan, summarise } from '../../effects/execute.js';
import { selfPlanContext } from '../../effects/self.js';
import { processPortFor, processSourceOf } from '../../sources/default-port.js';
import { EXIT, UserError, type CliIO } from '../io.js';

/** Sleep, cut short by the stop signal; false when interrupted. */
async function pause(ms: number, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted) return false;
  return new Promise((resolve) => {
    const done = (ok: boolean) => {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      resolve(ok);
    };
    const onAbort = () => done(false);
    const timer = setTimeout(() => done(true), ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}


export default async function demo(opts: Record<string, unknown>, io: CliIO): Promise<number> {
  const holdMb = Number(opts.holdMb ?? 24);
  if (!Number.isFinite(holdMb) || holdMb < 0 || holdMb > 512) throw new UserError(`--hold-mb ${JSON.stringify(opts.holdMb)}: must be a number of MiB from 0 to 512`);
  const keep = opts.keep === true;
  // Two trees whose top died (node + CLI live on in the dead leader's group): on unless --no-top-killed.
  const topKilled = opts.topKilled !== false;
  // Short graces so the demo can show `unreferenced` and reap without waiting a minute.
  const policy: Policy = { ...DEFAULT_POLICY, spawnGraceSeconds: 3, terminalGraceSeconds: 3 };
  // One process port for the demo's reads, its plan and its kills.
  const source = processSourceOf(opts.processSource);
  if (typeof source === 'object') throw new UserError(source.error);
  const processes = processPortFor(source).port;
  const say = (line = '') => io.stdout(`${line}\n`);
  const interrupted = () => {
    say('Interrupted: stopping every demo process.');
    return 130;
  };

  say(`Building a throw-away stepwise project with fake adapter trees (${holdMb} MiB per node level, ${2 * holdMb} MiB per claude CLI)…`);
  let project: DemoProject | null = null;
  try {
    project = await buildDemoProject({ holdMb, spawnGraceSeconds: policy.spawnGraceSeconds, terminalGraceSeconds: policy.terminalGraceSeconds, topKilled, log: (l) => say(l) });
    if (io.stopSignal.aborted) return interrupted();
    say(`Project: ${project.root} (stand-in server pid ${project.serverPid})`);
    say();

    const session = new ProjectSession({ root: project.root, policy, env: {}, processes });
    try {
      const before = session.collect();
      say('$ stepwise-watchdog status --all');
      io.stdout(renderStatus([before], { all: true }));

      const ctx = selfPlanContext(false, processes);
      const selection = { allLeaked: true, orphans: true, sessions: true, jobs: [], pids: [], force: false, gc: true };
      // Leaked trees are reaped only once their jobs ended a terminal grace ago (the engine's own
      // teardown may still run), orphans once older than the spawn grace: wait for both.
      let current = before;
      for (let i = 0; i < 10; i++) {
        const wait = nextGraceExpiry(current, policy, selection); // the soonest: loop until none is pending
        if (wait === null) break;
        say(`(waiting ${wait.toFixed(1)} s for the demo's ${policy.terminalGraceSeconds} s terminal / ${policy.spawnGraceSeconds} s spawn grace)`);
        if (!(await pause(wait * 1000 + 100, io.stopSignal))) return interrupted();
        current = session.collect();
      }
      const p = plan(current, policy, selection, ctx);
      say('$ stepwise-watchdog reap --all-leaked --orphans --sessions   (dry run: the plan)');
      for (const a of p.actions) {
        if (a.kind === 'kill-tree') say(`  kill tree ${a.tree.topPid} (${a.verdict}, ${a.tree.processes.length} processes, ${mib(actionBytes(a))} MiB): ${a.reason}`);
        else if (a.kind === 'kill-session') say(`  stop session ${a.session.sessionId.slice(0, 8)} (CLI ${a.session.pid} in tree ${a.tree.topPid}, ${mib(actionBytes(a))} MiB): ${a.session.reason}`);
        else say(`  remove ${a.file.name}: ${a.reason}`);
      }
      for (const r of p.refusals) say(`  hold ${r.target}: ${r.reason}`);
      say();

      if (io.stopSignal.aborted) return interrupted();
      const memBefore = processes.memAvailableBytes();
      say('$ stepwise-watchdog reap --all-leaked --orphans --sessions --yes   (and gc --yes)');
      const audit = new AuditLog(path.join(project.root, 'watchdog-audit.jsonl'));
      const report = await executePlan(p, { session, actor: 'cli', audit, killWaitMs: 5_000, gc: true, planContext: ctx, signal: io.stopSignal });
      const s = summarise(report.results);
      for (const r of s.reaped) say(`  ${r.verdict === 'leaked-session' ? 'session in tree' : 'tree'} ${r.topPid} (${r.verdict}): ${r.result}${r.result === 'ok' ? `, ${mib(r.bytes)} MiB freed` : `: ${r.detail}`}`);
      for (const f of s.pidFilesRemoved) say(`  ${path.basename(f.path)}: ${f.result}`);
      if (report.auditError) say(`  ! ${report.auditError}`);
      // Give the kernel a moment to account the freed pages.
      await pause(300, io.stopSignal);
      const memAfter = processes.memAvailableBytes();
      say();

      const after = session.collect();
      say('$ stepwise-watchdog status --all   (after)');
      io.stdout(renderStatus([after], { all: true }));
      const t0 = totals(before);
      const t1 = totals(after);
      say(`Leaked before: ${t0.leakedTrees} tree(s), ${mib(t0.leakedBytes)} MiB; after: ${t1.leakedTrees}, ${mib(t1.leakedBytes)} MiB.`);
      say(`Reaped ${s.counts.ok} tree(s) and stopped ${s.counts.sessionsOk} leaked session(s), freed ${mib(s.bytesFreed)} MiB of adapter memory; removed ${s.counts.pidFilesRemoved} stale pid file(s).`);
      if (memBefore !== null && memAfter !== null) say(`System MemAvailable: ${mib(memBefore)} MiB → ${mib(memAfter)} MiB (${memAfter >= memBefore ? '+' : ''}${mib(memAfter - memBefore)} MiB).`);
      say(`Audit trail: ${audit.path}${keep ? '' : ' (removed with the demo project; use --keep to look at it)'}`);
      say(`The active, paused${topKilled ? ' (one with its top dead)' : ''}, shared, spawning, unreferenced and foreign trees were left alone.`);
      return s.anyFailed ? EXIT.failed : EXIT.ok;
    } finally {
      session.close();
    }
  } finally {
    if (project) {
      await project.stop({ keep });
      say(keep ? `Stopped every demo process; kept ${project.root}.` : 'Stopped every demo process and removed the demo project.');
    }
  }
}
