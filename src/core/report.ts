// Pure projections of inventories: the `status --json` document (also served at
// /api/inventory) and the human table.

import { tableRank } from './vocabulary.js';
import { ADAPTER_VERDICTS, SESSION_VERDICTS, type AdapterSession, type AdapterTree, type ProjectInventory } from './types.js';

export interface StatusOptions {
  /** Include `foreign` trees (an editor's own adapters): hidden by default. */
  all: boolean;
}

export const STATUS_SCHEMA_VERSION = 1;

export function statusDocument(inventories: ProjectInventory[], opts: StatusOptions) {
  return {
    schemaVersion: STATUS_SCHEMA_VERSION,
    generatedAt: inventories[0] ? new Date(inventories[0].now * 1000).toISOString() : null,
    projects: inventories.map((inv) => projectDocument(inv, opts)),
  };
}

export function projectDocument(inv: ProjectInventory, opts: StatusOptions) {
  const adapters = inv.adapters.filter((a) => opts.all || a.verdict !== 'foreign');
  return {
    root: inv.root,
    pidsDir: inv.pidsDir,
    db: inv.dbPath,
    server: {
      pid: inv.server.pidFile?.pid ?? null,
      alive: inv.server.alive,
      startTicks: inv.server.identity?.startTicks ?? null,
      cwd: inv.server.cwd,
      stale: inv.server.stale,
      reason: inv.server.reason,
    },
    sources: Object.fromEntries(
      Object.entries(inv.sources).map(([name, h]) => [name, { ok: h.ok, error: h.error ?? null, durationSeconds: round(h.durationSeconds, 6) }]),
    ),
    totals: totals(inv),
    adapters: adapters.map(adapterDocument),
    pidFiles: inv.pidFiles.map((f) => ({ path: f.path, pid: f.pid, agent: f.agent, verdict: f.verdict, reason: f.reason })),
    staleRunningRuns: inv.staleRunningRuns,
  };
}

export function adapterDocument(a: AdapterTree) {
  return {
    topPid: a.topPid,
    startTicks: a.top?.startTicks ?? null,
    pids: a.processes.map((p) => p.pid),
    verdict: a.verdict,
    reason: a.reason,
    jobs: a.jobs.map((j) => ({ id: j.id, status: j.status })),
    rssBytes: a.rssBytes,
    swapBytes: a.swapBytes,
    ageSeconds: Math.round(a.ageSeconds),
    pidFile: a.pidFile,
    agent: a.agent,
    evidence: a.evidence.map((e) => e.kind),
    processes: a.processes.map((p) => ({ pid: p.pid, ppid: p.ppid, pgid: p.pgid, startTicks: p.startTicks, state: p.state, rssBytes: p.rssBytes, swapBytes: p.swapBytes, argv: p.argv })),
    sessions: a.sessions.map(sessionDocument),
  };
}

export function sessionDocument(s: AdapterSession) {
  return {
    sessionId: s.sessionId,
    pid: s.pid,
    startTicks: s.startTicks,
    verdict: s.verdict,
    reason: s.reason,
    jobs: s.jobs.map((j) => ({ id: j.id, status: j.status })),
    rssBytes: s.rssBytes,
    swapBytes: s.swapBytes,
    pids: s.processes.map((p) => p.pid),
  };
}

/** Sessions of every tree by verdict (every verdict present, 0 when none). */
export function sessionCounts(inv: ProjectInventory): Record<string, { count: number; rssBytes: number; swapBytes: number }> {
  const out = Object.fromEntries(SESSION_VERDICTS.map((v) => [v, { count: 0, rssBytes: 0, swapBytes: 0 }]));
  for (const a of inv.adapters) {
    for (const s of a.sessions) {
      const c = out[s.verdict]!;
      c.count += 1;
      c.rssBytes += s.rssBytes;
      c.swapBytes += s.swapBytes;
    }
  }
  return out;
}

export function totals(inv: ProjectInventory) {
  const byVerdict = Object.fromEntries(ADAPTER_VERDICTS.map((v) => [v, 0])) as Record<string, number>;
  for (const a of inv.adapters) byVerdict[a.verdict] = (byVerdict[a.verdict] ?? 0) + 1;
  const leaked = inv.adapters.filter((a) => a.verdict === 'leaked');
  const sessions = sessionCounts(inv);
  // Sessions inside a leaked tree go with the tree (already in leakedBytes); these are the ones
  // inside adapters that live on for other jobs.
  const leakedSessions = inv.adapters.filter((a) => a.verdict !== 'leaked').flatMap((a) => a.sessions.filter((s) => s.verdict === 'leaked'));
  return {
    adapters: byVerdict,
    leakedTrees: leaked.length,
    leakedBytes: leaked.reduce((s, a) => s + a.rssBytes + a.swapBytes, 0),
    sessions: Object.fromEntries(Object.entries(sessions).map(([v, c]) => [v, c.count])),
    leakedSessions: leakedSessions.length,
    leakedSessionBytes: leakedSessions.reduce((s, x) => s + x.rssBytes + x.swapBytes, 0),
    orphanedTrees: byVerdict.orphaned ?? 0,
    stalePidFiles: inv.pidFiles.filter((f) => f.verdict === 'stale-dead' || f.verdict === 'stale-reused').length,
    staleRunningRuns: inv.staleRunningRuns.length,
  };
}

function round(n: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

export function mib(bytes: number): string {
  return (bytes / 1048576).toFixed(1);
}

function age(seconds: number): string {
  const s = Math.round(seconds);
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86400)}d`;
}

function table(rows: string[][]): string[] {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd());
}

/** "2 (1 leaked)", "1", "-". */
function sessionsCell(a: AdapterTree): string {
  if (a.sessions.length === 0) return '-';
  const leaked = a.sessions.filter((s) => s.verdict === 'leaked').length;
  return leaked > 0 ? `${a.sessions.length} (${leaked} leaked)` : String(a.sessions.length);
}

export function renderStatus(inventories: ProjectInventory[], opts: StatusOptions): string {
  const out: string[] = [];
  for (const inv of inventories) {
    out.push(`project ${inv.root}`);
    const server = inv.server.alive ? `up (pid ${inv.server.identity?.pid}, cwd ${inv.server.cwd ?? '?'})` : `down: ${inv.server.reason}`;
    out.push(`  server  ${server}`);
    out.push(`  pids    ${inv.pidsDir}`);
    out.push(`  store   ${inv.dbPath}`);
    const bad = Object.entries(inv.sources).filter(([, h]) => !h.ok);
    for (const [name, h] of bad) out.push(`  ! source ${name}: ${h.error ?? 'failed'}`);
    // What needs attention first: leaked, orphaned, then the rest; oldest first within a verdict.
    const adapters = inv.adapters
      .filter((a) => opts.all || a.verdict !== 'foreign')
      .sort((a, b) => tableRank(a.verdict) - tableRank(b.verdict) || b.ageSeconds - a.ageSeconds);
    if (adapters.length === 0) out.push('  no adapter trees');
    else {
      const rows = [['VERDICT', 'TOP PID', 'JOBS', 'SESSIONS', 'RSS MiB', 'SWAP MiB', 'AGE', 'PID FILE', 'REASON']];
      // A line per leaked session under its tree (inside a leaked tree they go with it, so only the count shows).
      const under = new Map<number, string[]>();
      for (const a of adapters) {
        rows.push([
          a.verdict,
          String(a.topPid),
          a.jobs.length ? a.jobs.map((j) => `${j.id}:${j.status}`).join(',') : '-',
          sessionsCell(a),
          mib(a.rssBytes),
          mib(a.swapBytes),
          age(a.ageSeconds),
          a.pidFile ? a.pidFile.split('/').pop()! : '-',
          a.reason,
        ]);
        if (a.verdict !== 'leaked') {
          const lines = a.sessions
            .filter((s) => s.verdict === 'leaked')
            .map((s) => `  └ leaked session ${s.sessionId} (CLI pid ${s.pid}, ${mib(s.rssBytes)} MiB RSS, ${mib(s.swapBytes)} MiB swap): ${s.reason}`);
          if (lines.length) under.set(rows.length - 1, lines);
        }
      }
      table(rows).forEach((l, i) => {
        out.push(`  ${l}`);
        for (const x of under.get(i) ?? []) out.push(`  ${x}`);
      });
    }
    const files = inv.pidFiles.filter((f) => f.verdict !== 'live');
    if (files.length) {
      out.push('  pid files not live:');
      for (const f of files) out.push(`    ${f.verdict.padEnd(12)} ${f.name}  ${f.reason}`);
    }
    for (const r of inv.staleRunningRuns) {
      out.push(`  stale running run ${r.runId} (${r.stepName}) under ${r.jobStatus} job ${r.jobId}`);
    }
    const t = totals(inv);
    const hidden = opts.all ? '' : inv.adapters.some((a) => a.verdict === 'foreign') ? `, ${t.adapters.foreign} foreign hidden (--all)` : '';
    out.push(
      `  total: ${t.leakedTrees} leaked tree(s), ${mib(t.leakedBytes)} MiB leaked; ${t.leakedSessions} leaked session(s) in live adapters, ${mib(t.leakedSessionBytes)} MiB; ${t.orphanedTrees} orphaned; ${t.stalePidFiles} stale pid file(s); ${t.staleRunningRuns} stale running run(s)${hidden}`,
    );
    out.push('');
  }
  return out.join('\n');
}
