// `doctor`: one screen to run first. Read-only: server, store, pids folder, guard, hook,
// marker patterns, and what the daemon would do now.

import path from 'node:path';
import { plan } from '../../core/plan.js';
import { totals } from '../../core/report.js';
import type { ProjectInventory } from '../../core/types.js';
import { hooksInstalled } from '../../hooks/install.js';
import { runtimeFromConfig } from '../../session/runtime.js';
import { lsofAvailable } from '../../sources/ps-port.js';
import { configFrom, openSessions } from '../context.js';
import { EXIT, type CliIO } from '../io.js';
import { guardStatus, resolveEnv, sessionClosingText } from './guard.js';

type Level = 'ok' | 'warn' | 'fail' | 'info';
interface Check {
  name: string;
  level: Level;
  detail: string;
}

const ICON: Record<Level, string> = { ok: '✓', warn: '!', fail: '✗', info: '·' };

async function daemonReachable(listen: string): Promise<string | null> {
  const url = `http://${listen.replace(/^0\.0\.0\.0:/, '127.0.0.1:')}/readyz`;
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(500) });
    const body = (await res.json()) as { ready?: boolean; reason?: string };
    return res.ok ? `running at ${listen}, ready` : `running at ${listen}, not ready: ${body.reason ?? res.status}`;
  } catch {
    return null;
  }
}

export default async function doctor(opts: Record<string, unknown>, io: CliIO): Promise<number> {
  const config = configFrom(opts, io);
  const runtime = runtimeFromConfig(config);
  const { policy } = runtime;
  const sessions = openSessions(config, runtime, io);
  const report: { root: string; checks: Check[] }[] = [];
  let sourceDown = false;
  try {
    for (const session of sessions) {
      const inv: ProjectInventory = session.collect();
      const checks: Check[] = [];
      const s = inv.server;
      checks.push(
        s.alive
          ? { name: 'server', level: 'ok', detail: `pid ${s.identity?.pid} alive (verified against server.pid started_at), cwd ${s.cwd ?? '?'}` }
          : { name: 'server', level: s.stale ? 'warn' : 'info', detail: s.reason },
      );
      const store = inv.sources.store;
      const schema = inv.storeSchema;
      checks.push(
        store?.ok
          ? {
              name: 'store',
              level: 'ok',
              detail: `${inv.dbPath} readable${schema ? ` (schema_version ${schema.schemaVersion}, step_runs.pid column ${schema.stepRunsPidColumn ? 'present' : 'absent: an older stepwise'})` : ''}`,
            }
          : { name: 'store', level: 'fail', detail: `${store?.error ?? 'not read'}: no reaping until it is readable` },
      );
      const pf = inv.sources.pidfiles;
      const t = totals(inv);
      checks.push(
        pf?.ok
          ? { name: 'pids folder', level: t.stalePidFiles > 0 ? 'warn' : 'ok', detail: `${inv.pidsDir}: ${inv.pidFiles.length} pid file(s), ${t.stalePidFiles} stale, ${inv.pidFiles.filter((f) => f.verdict === 'invalid').length} invalid` }
          : { name: 'pids folder', level: 'fail', detail: pf?.error ?? 'not read' },
      );
      const procs = inv.sources.processes;
      if (procs && !procs.ok) checks.push({ name: 'processes', level: 'fail', detail: `${runtime.processes.kind}: ${procs.error ?? 'process table unreadable'}` });
      else {
        // Reading ps (macOS): identity is weaker (start second + args digest), no swap, cwd via lsof.
        const ps = runtime.processes.kind === 'ps';
        const lsof = ps ? (lsofAvailable() ? '; lsof found (server cwd)' : '; lsof not found: the server cwd is unknown, give --pids-dir') : '';
        checks.push({ name: 'processes', level: ps && !lsof.includes('found (') ? 'warn' : 'ok', detail: `${runtime.processes.kind} (${runtime.processSourceWhy})${lsof}` });
      }
      checks.push(
        session.processes.childrenSupported()
          ? { name: 'targeted', level: 'ok', detail: `the kernel provides /proc/<pid>/task/<tid>/children: cycles read only the processes that can matter, with a full sweep every ${config.fullSweepSeconds} s` }
          : { name: 'targeted', level: 'info', detail: 'no /proc/<pid>/task/<tid>/children (CONFIG_PROC_CHILDREN): every cycle reads every process (full scan)' },
      );
      const hooks = hooksInstalled(path.join(inv.root, '.stepwise', 'hooks'));
      const hooked = Object.entries(hooks).filter(([, v]) => v).map(([k]) => k);
      checks.push({
        name: 'hook',
        level: hooked.length === 2 ? 'ok' : 'info',
        detail: hooked.length === 2 ? 'on-fail and on-complete poke the daemon' : `not installed${hooked.length ? ` (only ${hooked.join(', ')})` : ''}: \`stepwise-watchdog hook install\` makes reaping prompt`,
      });
      try {
        const { env, server } = resolveEnv({ ...opts, project: [inv.root] }, io);
        const g = guardStatus(env, server);
        const loaded = g.loadedInServer;
        checks.push({
          name: 'guard',
          level: loaded?.active ? (loaded.sessionClosing === true ? 'ok' : 'warn') : g.installed ? 'warn' : 'info',
          detail: loaded?.active
            ? `loaded in server ${loaded.serverPid} (stepwise ${loaded.stepwiseVersion ?? '?'}); ${sessionClosingText(loaded)}`
            : g.installed
              ? `installed in ${g.sitePackages} but not active in the running server${loaded?.reason ? `: ${loaded.reason}` : ''}`
              : `not installed in ${g.sitePackages} (\`stepwise-watchdog guard install\`)`,
        });
      } catch (err) {
        checks.push({ name: 'guard', level: 'info', detail: `unknown: ${(err as Error).message}` });
      }
      const markerTrees = inv.adapters.filter((a) => a.verdict !== 'in-vm').length;
      checks.push({ name: 'markers', level: 'info', detail: `${policy.markers.map((m) => JSON.stringify(m)).join(', ')}: ${markerTrees} adapter tree(s) now (${t.adapters.foreign ?? 0} foreign)` });
      const p = plan(
        inv,
        policy,
        {
          allLeaked: !config.observeOnly,
          orphans: !config.observeOnly && config.orphans,
          sessions: !config.observeOnly && config.reapSessions,
          jobs: [],
          pids: [],
          force: false,
          gc: !config.observeOnly && config.gc,
        },
        runtime.planContext,
      );
      const kills = p.actions.filter((a) => a.kind === 'kill-tree');
      const files = p.actions.filter((a) => a.kind === 'remove-pid-file');
      const held = p.refusals.filter((r) => r.code !== 'source_down');
      const down = p.refusals.find((r) => r.code === 'source_down');
      if (down) sourceDown = true;
      checks.push({
        name: 'daemon would',
        level: down ? 'fail' : kills.length ? 'warn' : 'ok',
        detail: down
          ? down.reason
          : `reap ${kills.length} tree(s) (${kills.map((k) => (k.kind === 'kill-tree' ? `${k.tree.topPid} ${k.verdict}` : '')).join(', ') || 'none'}), remove ${files.length} stale pid file(s), hold ${held.length}${held.length ? ` (${[...new Set(held.map((r) => r.code))].join(', ')})` : ''}`,
      });
      const daemon = await daemonReachable(config.listen);
      checks.push({ name: 'daemon', level: daemon ? 'ok' : 'info', detail: daemon ?? `not reachable at ${config.listen} (\`stepwise-watchdog run\`)` });
      report.push({ root: inv.root, checks });
    }
  } finally {
    for (const s of sessions) s.close();
  }
  if (opts.json) io.stdout(`${JSON.stringify({ projects: report }, null, 2)}\n`);
  else {
    for (const r of report) {
      io.stdout(`stepwise-watchdog doctor: ${r.root}\n`);
      for (const c of r.checks) io.stdout(`  ${ICON[c.level]} ${c.name.padEnd(13)} ${c.detail}\n`);
    }
  }
  return sourceDown ? EXIT.sourceDown : EXIT.ok;
}
