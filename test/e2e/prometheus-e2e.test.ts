// End to end with a real Prometheus: the watchdog CLI (`stepwise-watchdog run`, built with tsc
// into a private folder, run as child processes) watches throw-away stepwise projects with REAL
// fake adapter trees (src/demo/scenario.ts), a real Prometheus on loopback scrapes it every
// second and evaluates deploy/prometheus/alerts.yml, and then EVERY dashboard panel query and
// EVERY alert expression goes through Prometheus' HTTP query API.
//
// The set-up, all on 127.0.0.1, all under one temp folder whose name holds a `.` (so the
// dashboard's regex-escaped $project is exercised):
//   - project A: a demo project; daemon A watches it with --observe-only, so its leaked and
//     orphaned trees stay and the leak metrics (and the leak alert) stay non-zero;
//   - project B: a demo project; daemon B reaps (not observe-only). Once Prometheus has scraped
//     B's counters at 0, the leaked trees of B are reaped through POST /api/reap, so
//     reaped_total / reaped_bytes_total really move while Prometheus watches;
//   - project C: a `.stepwise/` whose stepwise.db is not a database, also watched by daemon B:
//     its store source is down (source_up{source="store"} 0), so every cycle of B refuses to reap
//     there (refusals_total{reason="source_down"} moves; every reason is seeded at 0 per project,
//     so the panel is checked to show that one reason moving).
//
// What "checked" means for one expression (problemsOf below):
//   1. it parses: the query API answers status "success";
//   2. dashboard panels: the result has at least one series/sample (a 0-valued series counts:
//      Grafana draws it). $project is substituted twice: Grafana's "All" (`.*`) and a multi-value
//      selection of the three roots escaped exactly as Grafana's Prometheus data source escapes
//      them; $__rate_interval/$__interval by 30s (30 scrapes), $__range by 1h;
//   3. every metric selector in the expression (found by the lexer of dashboard-exprs.ts, with
//      its label matchers) selects at least one series on its own. Expressions such as
//      `count(x == 0) or vector(0)` return data whatever x is called, so this is what makes a
//      metric (or label value) renamed in the code break the test.
// Alert expressions are conditions: most return nothing while nothing is wrong (`up == 0`,
// `absent(up{…})`, `> 2 * 1024^3`, `increase(…failed…) > 0`, …). For those 2. does not apply,
// but 1. and 3. do — each metric they read must exist with the labels they match on. The ones
// this set-up makes true must return data: StepwiseLeakedAdaptersPresent (A's leaked and orphaned
// trees; checked without its `for:`, and shown pending in /api/v1/alerts) and
// StepwiseWatchdogStoreDown (C). A last test renames, one at a time, each watchdog metric an
// expression reads and checks that the expression then fails these checks.
//
// Without prometheus on PATH the tests skip (locally) with a note saying how to install it; under
// CI (CI set) they fail: CI installs it (`apt-get install -y --no-install-recommends prometheus`).
// Every process started here (Prometheus, both daemons, the demo projects' trees) is stopped and
// every temp folder removed in afterAll, also when set-up or an assertion failed; every wait is
// bounded.

import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DemoProject } from '../../src/demo/scenario.js';
import {
  ALERTS_PATH,
  PROMETHEUS_SERIES,
  REPO_ROOT,
  alertExpressions,
  knownSeriesNames,
  lexPromQL,
  rawDashboardExpressions,
  substituteGrafanaVariables,
  type PromExpression,
} from './dashboard-exprs.js';

// ─── prerequisites ─────────────────────────────────────────────────────────────────────────

function onPath(cmd: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const full = path.join(dir, cmd);
    try {
      fs.accessSync(full, fs.constants.X_OK);
      return full;
    } catch {
      /* not here */
    }
  }
  return null;
}

const PROMETHEUS = onPath('prometheus');
const NO_PROMETHEUS = 'prometheus is not on PATH: install it with `apt-get install prometheus` (Debian/Ubuntu)';

/** Skips locally, fails under CI, when Prometheus is missing. */
function needPrometheus(ctx: { skip: (condition: boolean, note?: string) => void }): void {
  if (!PROMETHEUS) {
    if (process.env.CI) throw new Error(`${NO_PROMETHEUS}; CI must install it`);
    ctx.skip(true, NO_PROMETHEUS);
  }
}

const WAIT_MS = 60_000; // the longest any single wait may take
const RATE_INTERVAL = '30s';
const JOB = 'stepwise-watchdog';

// ─── bounded waits, processes, HTTP ────────────────────────────────────────────────────────

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls until `probe` returns a truthy value; throws after `timeoutMs` with the last problem and `diag()`. */
async function waitFor<T>(what: string, probe: () => Promise<T | null | undefined | false>, opts: { timeoutMs?: number; diag?: () => string } = {}): Promise<T> {
  const timeoutMs = opts.timeoutMs ?? WAIT_MS;
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    try {
      const v = await probe();
      if (v) return v;
      last = '';
    } catch (err) {
      last = (err as Error).message;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs / 1000}s waiting for ${what}${last ? ` (last error: ${last})` : ''}${opts.diag ? `\n${opts.diag()}` : ''}`);
    }
    await sleep(250);
  }
}

interface Proc {
  name: string;
  child: ChildProcess;
  /** The last 64 KiB of stdout and stderr. */
  output(): string;
  running(): boolean;
  /** SIGTERM, SIGKILL after 10 s; resolves when it exited. Idempotent. */
  stop(): Promise<void>;
}

const procs = new Set<Proc>();
// Last resort if the worker exits without afterAll (it cannot wait: SIGKILL).
process.once('exit', () => {
  for (const p of procs) if (p.running()) p.child.kill('SIGKILL');
});

function startProcess(name: string, cmd: string, args: string[], opts: { cwd: string; env: NodeJS.ProcessEnv }): Proc {
  const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const keep = (c: Buffer) => {
    out += c.toString('utf8');
    if (out.length > 65_536) out = out.slice(-65_536);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  let exitedFlag = false;
  const exited = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exitedFlag = true;
      out += `\n[${name} exited: ${signal ?? `code ${code}`}]\n`;
      resolve();
    });
    child.once('error', (err) => {
      exitedFlag = true;
      out += `\n[${name} could not start: ${err.message}]\n`;
      resolve();
    });
  });
  let stopping: Promise<void> | null = null;
  const p: Proc = {
    name,
    child,
    output: () => out,
    running: () => !exitedFlag,
    stop() {
      stopping ??= (async () => {
        if (!exitedFlag) {
          child.kill('SIGTERM');
          const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
          await exited;
          clearTimeout(timer);
        }
        procs.delete(p);
      })();
      return stopping;
    },
  };
  procs.add(p);
  return p;
}

const tail = (p: Proc | null | undefined, lines = 30) => (p ? `--- ${p.name} (last ${lines} lines) ---\n${p.output().trimEnd().split('\n').slice(-lines).join('\n')}` : '');

/** A port free on 127.0.0.1 right now (Prometheus cannot be told to pick one and say which). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address() as net.AddressInfo;
      s.close(() => resolve(a.port));
    });
  });
}

async function httpGet(url: string): Promise<{ status: number; text: string }> {
  const r = await fetch(url, { signal: AbortSignal.timeout(10_000) });
  return { status: r.status, text: await r.text() };
}

// ─── the Prometheus query API ──────────────────────────────────────────────────────────────

interface Sample {
  metric: Record<string, string>;
  value: [number, string];
}
interface QueryAnswer {
  status: 'success' | 'error';
  errorType?: string;
  error?: string;
  resultType?: string;
  /** Vector samples; a scalar or string result is one sample with no labels. */
  result: Sample[];
}

let promBase = '';

async function query(q: string): Promise<QueryAnswer> {
  const r = await httpGet(`${promBase}/api/v1/query?query=${encodeURIComponent(q)}`);
  let body: { status: 'success' | 'error'; errorType?: string; error?: string; data?: { resultType: string; result: unknown } };
  try {
    body = JSON.parse(r.text) as typeof body;
  } catch {
    throw new Error(`query API answered HTTP ${r.status}: ${r.text.slice(0, 300)}`);
  }
  const data = body.data;
  let result: Sample[] = [];
  if (data?.resultType === 'vector' || data?.resultType === 'matrix') result = data.result as Sample[];
  else if (data && (data.resultType === 'scalar' || data.resultType === 'string')) result = [{ metric: {}, value: data.result as [number, string] }];
  return { status: body.status, ...(body.errorType ? { errorType: body.errorType } : {}), ...(body.error ? { error: body.error } : {}), ...(data ? { resultType: data.resultType } : {}), result };
}

async function apiGet<T>(pathAndQuery: string): Promise<T> {
  const r = await httpGet(`${promBase}${pathAndQuery}`);
  const body = JSON.parse(r.text) as { status: string; data: T; error?: string };
  if (body.status !== 'success') throw new Error(`${pathAndQuery}: ${body.error ?? r.text.slice(0, 300)}`);
  return body.data;
}

/** The selector as a query of its own: `metric{matchers}`, `{matchers}` or `metric`. */
function selectorQuery(s: { metric: string; matchers: string | null }): string {
  return `${s.metric}${s.matchers !== null ? `{${s.matchers}}` : ''}`;
}

/**
 * What is wrong with one expression (empty: nothing). It must parse; unless `mayBeEmpty` it must
 * return data; every selector in it must select at least one series (see the file header).
 */
async function problemsOf(expr: string, opts: { mayBeEmpty: boolean }): Promise<string[]> {
  const problems: string[] = [];
  const a = await query(expr);
  if (a.status !== 'success') problems.push(`does not parse/evaluate: ${a.errorType}: ${a.error}`);
  else if (!opts.mayBeEmpty && a.result.length === 0) problems.push('returns no data');
  const selectors = lexPromQL(expr).selectors;
  if (selectors.length === 0) problems.push('selects no metric at all');
  for (const s of selectors) {
    const q = selectorQuery(s);
    const r = await query(q);
    if (r.status !== 'success') problems.push(`selector ${q} does not parse: ${r.error}`);
    else if (r.result.length === 0) problems.push(`selector ${q} selects no series`);
  }
  return problems;
}

// ─── Grafana's $project ────────────────────────────────────────────────────────────────────

/**
 * Grafana's Prometheus data source for a multi-value / include-all variable
 * (prometheusSpecialRegexEscape, then `(a|b)`): regex metacharacters get a backslash, doubled
 * because the value lands inside a PromQL double-quoted string.
 */
function grafanaProjectValue(roots: string[]): string {
  const esc = (v: string) => v.replace(/\\/g, '\\\\\\\\').replace(/[$^*{}[\]'+?.()|]/g, '\\\\$&');
  const escaped = roots.map(esc);
  return escaped.length === 1 ? escaped[0]! : `(${escaped.join('|')})`;
}

const substitute = (expr: string, project: string) => substituteGrafanaVariables(expr, { project, rateInterval: RATE_INTERVAL, range: '1h' });

// ─── the set-up ────────────────────────────────────────────────────────────────────────────

const buildRoot = path.join(REPO_ROOT, 'node_modules', '.cache', `swtest-prom-e2e-${process.pid}`);
const outDir = path.join(buildRoot, 'dist');

interface Setup {
  base: string;
  demoA: DemoProject;
  demoB: DemoProject;
  rootC: string;
  daemonA: Proc;
  daemonB: Proc;
  prometheus: Proc;
  addrA: string;
  addrB: string;
}

let setup: Setup | null = null;
const demos: DemoProject[] = [];
const tempDirs: string[] = [];
let prometheus: Proc | null = null;
const daemons: Proc[] = [];

async function cleanup(): Promise<void> {
  // Prometheus first (it would only mark the targets down), then the daemons (they finish the
  // kill in flight), then the demo projects' processes, then the folders.
  await prometheus?.stop();
  await Promise.allSettled(daemons.map((d) => d.stop()));
  await Promise.allSettled([...procs].map((p) => p.stop()));
  await Promise.allSettled(demos.map((d) => d.stop()));
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
  fs.rmSync(buildRoot, { recursive: true, force: true });
}

function diag(): string {
  return [tail(prometheus), ...daemons.map((d) => tail(d))].filter(Boolean).join('\n');
}

/** The CLI built into a private folder: a concurrent build of dist/ by someone else cannot interfere. */
function build(): void {
  fs.mkdirSync(buildRoot, { recursive: true });
  fs.copyFileSync(path.join(REPO_ROOT, 'package.json'), path.join(buildRoot, 'package.json')); // dist/cli/version.js reads ../../package.json
  try {
    execFileSync(process.execPath, [path.join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json', '--outDir', outDir], {
      cwd: REPO_ROOT,
      stdio: 'pipe',
      timeout: 120_000,
    });
  } catch {
    // Type errors in files others are still editing do not stop the emit: check what we need.
  }
  for (const f of ['cli/bin.js', 'cli/commands/run.js', 'demo/scenario.js', 'demo/stand-in-server.js', 'demo/kit/fake-adapter-child.js']) {
    if (!fs.existsSync(path.join(outDir, f))) throw new Error(`the build did not emit dist/${f}`);
  }
}

/** Environment of the children: none of the user's STEPWISE_* settings. */
function childEnv(base: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('STEPWISE_')) env[k] = v;
  env.XDG_STATE_HOME = path.join(base, 'state');
  return env;
}

/** `stepwise-watchdog run` on an ephemeral port; resolves with host:port once a cycle has finished. */
async function startDaemon(name: string, base: string, args: string[]): Promise<{ proc: Proc; addr: string }> {
  const bin = path.join(outDir, 'cli', 'bin.js');
  const proc = startProcess(name, process.execPath, [bin, 'run', '--listen', '127.0.0.1:0', '--interval', '1', '--log-level', 'info', ...args], {
    cwd: base,
    env: childEnv(base),
  });
  daemons.push(proc);
  const addr = await waitFor(
    `${name} to listen`,
    async () => {
      if (!proc.running()) throw new Error(`${name} exited`);
      for (const line of proc.output().split('\n')) {
        if (!line.includes('"watchdog started"')) continue;
        const listen = (JSON.parse(line) as { listen?: string }).listen;
        if (listen) return listen;
      }
      return null;
    },
    { timeoutMs: 30_000, diag: () => tail(proc) },
  );
  // A cycle has finished once the last-cycle gauge is set.
  await waitFor(
    `${name}'s first cycle`,
    async () => {
      const m = await httpGet(`http://${addr}/metrics`);
      const v = /^stepwise_watchdog_last_cycle_timestamp_seconds (\S+)$/m.exec(m.text)?.[1];
      return v !== undefined && Number(v) > 0;
    },
    { timeoutMs: 30_000, diag: () => tail(proc) },
  );
  return { proc, addr };
}

async function startPrometheus(dir: string, targets: string[]): Promise<Proc> {
  const rules = path.join(dir, 'alerts.yml');
  fs.copyFileSync(ALERTS_PATH, rules);
  const config = [
    'global:',
    '  scrape_interval: 1s',
    '  scrape_timeout: 1s',
    '  evaluation_interval: 1s',
    'rule_files:',
    `  - ${JSON.stringify(rules)}`,
    'scrape_configs:',
    `  - job_name: ${JOB}`,
    '    static_configs:',
    `      - targets: ${JSON.stringify(targets)}`,
    '',
  ].join('\n');
  const file = path.join(dir, 'prometheus.yml');
  fs.writeFileSync(file, config);
  // The port is chosen free and then handed over: retry the rare race with another process.
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const data = path.join(dir, `data-${attempt}`);
    const proc = startProcess('prometheus', PROMETHEUS!, [
      `--config.file=${file}`,
      `--storage.tsdb.path=${data}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--web.enable-lifecycle',
    ], { cwd: dir, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: dir } });
    prometheus = proc;
    promBase = `http://127.0.0.1:${port}`;
    try {
      await waitFor(
        'Prometheus to be ready',
        async () => {
          if (!proc.running()) throw new Error('prometheus exited');
          return (await httpGet(`${promBase}/-/ready`)).status === 200;
        },
        { timeoutMs: 30_000, diag: () => tail(proc) },
      );
      return proc;
    } catch (err) {
      await proc.stop();
      if (attempt < 3 && /address already in use/.test(proc.output())) continue;
      throw err;
    }
  }
}

beforeAll(async () => {
  if (!PROMETHEUS) {
    if (process.env.CI) throw new Error(`${NO_PROMETHEUS}; CI must install it`);
    return; // every test skips, saying why
  }
  try {
    build();
    // A `.` in every project root: Grafana's escaping of $project is exercised.
    const base = fs.mkdtempSync(path.join(os.tmpdir(), 'sw-prom-e2e.'));
    tempDirs.push(base);
    fs.mkdirSync(path.join(base, 'state'));

    const scenario = (await import(pathToFileURL(path.join(outDir, 'demo', 'scenario.js')).href)) as typeof import('../../src/demo/scenario.js');
    const savedTmp = process.env.TMPDIR;
    process.env.TMPDIR = base; // buildDemoProject makes its folder in os.tmpdir()
    let demoA: DemoProject, demoB: DemoProject;
    try {
      const opts = { holdMb: 4, spawnGraceSeconds: 1, terminalGraceSeconds: 1 };
      const built = await Promise.allSettled([scenario.buildDemoProject(opts), scenario.buildDemoProject(opts)]);
      for (const b of built) if (b.status === 'fulfilled') demos.push(b.value);
      for (const b of built) if (b.status === 'rejected') throw b.reason;
      [demoA, demoB] = demos as [DemoProject, DemoProject];
    } finally {
      if (savedTmp === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = savedTmp;
    }
    expect(path.dirname(demoA.root)).toBe(base);

    // Project C: a job store that is not a database.
    const rootC = fs.mkdtempSync(path.join(base, 'broken-store-'));
    fs.mkdirSync(path.join(rootC, '.stepwise', 'pids'), { recursive: true });
    fs.writeFileSync(path.join(rootC, '.stepwise', 'stepwise.db'), 'this is not a SQLite database\n'.repeat(200));

    const token = 'e2e-token-0123456789abcdef';
    const tokenFile = path.join(base, 'token');
    fs.writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });

    const grace = ['--spawn-grace', '1', '--terminal-grace', '1'];
    // Daemon B's own cycles must not reap B's leaked trees before Prometheus has seen the
    // counters at 0: a terminal grace of an hour; the API reap below is explicit (no grace).
    const [a, b] = await Promise.all([
      startDaemon('daemon A (observe-only)', base, ['--project', demoA.root, '--observe-only', '--audit-log', path.join(base, 'audit-a.jsonl'), ...grace]),
      startDaemon('daemon B (reaping)', base, [
        '--project', demoB.root, '--project', rootC,
        '--audit-log', path.join(base, 'audit-b.jsonl'),
        '--token-file', tokenFile,
        '--spawn-grace', '1', '--terminal-grace', '3600', '--kill-wait', '2',
      ]),
    ]);

    const promDir = path.join(base, 'prometheus');
    fs.mkdirSync(promDir);
    const prom = await startPrometheus(promDir, [a.addr, b.addr]);

    // Both targets up and scraped a few times.
    await waitFor(
      'both targets up with at least 3 scrapes each',
      async () => {
        const t = await apiGet<{ activeTargets: { health: string; scrapeUrl: string; lastError: string }[] }>('/api/v1/targets');
        if (t.activeTargets.length !== 2 || t.activeTargets.some((x) => x.health !== 'up')) return false;
        const r = await query(`count_over_time(up{job="${JOB}"}[1m]) >= 3`);
        return r.result.length === 2;
      },
      { diag },
    );

    // Reap B's leaked trees now that Prometheus has seen B's counters at 0.
    const leakedB = demoB.trees.filter((t) => t.expected === 'leaked').map((t) => t.topPid);
    expect(leakedB.length).toBe(2);
    // Something outside the test killing them would otherwise read as "the reap API refused".
    const gone = [demoB.serverPid, ...leakedB].filter((pid) => !alive(pid));
    if (gone.length > 0) throw new Error(`demo project B lost pid(s) ${gone.join(', ')} (stand-in server ${demoB.serverPid}) before the reap: killed from outside the test?`);
    const reap = await fetch(`http://${b.addr}/api/reap`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ project: demoB.root, pids: leakedB }),
      signal: AbortSignal.timeout(30_000),
    });
    const reapBody = await reap.text();
    expect(reap.status, reapBody).toBe(200);
    const results = (JSON.parse(reapBody) as { results: { kind: string; topPid?: number; outcome?: string }[] }).results;
    expect(results.filter((r) => r.kind === 'kill-tree').map((r) => [r.topPid, r.outcome]).sort(), reapBody).toEqual(leakedB.map((p) => [p, 'ok']).sort());

    const B = JSON.stringify(demoB.root);
    await waitFor(
      'the reaps of B in Prometheus',
      async () =>
        (await query(`increase(stepwise_watchdog_reaped_total{project=${B}, verdict="leaked", result="ok"}[1m]) > 0`)).result.length === 1 &&
        (await query(`stepwise_watchdog_adapters{project=${B}, verdict="leaked"} == 0`)).result.length === 1,
      { diag },
    );

    // The rules evaluated: every one healthy, and the two this set-up makes true pending (their
    // `for:` is minutes long, so pending is as far as they get here) for A and C only.
    await waitFor(
      'the alert rules to be evaluated',
      async () => {
        const d = await apiGet<{ groups: { rules: { health: string; lastEvaluation: string }[] }[] }>('/api/v1/rules');
        const rules = d.groups.flatMap((g) => g.rules);
        if (rules.length === 0 || rules.some((r) => r.health !== 'ok' || r.lastEvaluation.startsWith('0001-'))) return false;
        const { alerts } = await apiGet<{ alerts: { labels: Record<string, string> }[] }>('/api/v1/alerts');
        const projectsOf = (name: string) => [...new Set(alerts.filter((x) => x.labels.alertname === name).map((x) => x.labels.project))];
        // B's leak alert went pending before the reap; it is dropped at the first evaluation after it.
        return projectsOf('StepwiseLeakedAdaptersPresent').join() === demoA.root && projectsOf('StepwiseWatchdogStoreDown').join() === rootC;
      },
      { diag },
    );

    setup = { base, demoA, demoB, rootC, daemonA: a.proc, daemonB: b.proc, prometheus: prom, addrA: a.addr, addrB: b.addr };
  } catch (err) {
    const d = diag();
    await cleanup();
    throw d ? new Error(`${(err as Error).message}\n${d}`, { cause: err }) : err;
  }
}, 240_000);

afterAll(async () => {
  await cleanup();
  setup = null;
}, 60_000);

function s(): Setup {
  if (!setup) throw new Error('the set-up did not complete');
  return setup;
}
const roots = () => [s().demoA.root, s().demoB.root, s().rootC];

// ─── the tests ─────────────────────────────────────────────────────────────────────────────

describe('Prometheus scraping the watchdog (real processes, loopback)', () => {
  it('both daemons are targets of job stepwise-watchdog, up, and every alert rule loaded healthy', async (ctx) => {
    needPrometheus(ctx);
    const t = await apiGet<{ activeTargets: { health: string; labels: Record<string, string> }[] }>('/api/v1/targets');
    expect(t.activeTargets.map((x) => [x.labels.job, x.labels.instance, x.health]).sort()).toEqual(
      [[JOB, s().addrA, 'up'], [JOB, s().addrB, 'up']].sort(),
    );
    const d = await apiGet<{ groups: { name: string; file: string; rules: { name: string; type: string; health: string; lastError?: string }[] }[] }>('/api/v1/rules');
    const rules = d.groups.flatMap((g) => g.rules);
    expect(rules.map((r) => r.name).sort()).toEqual(alertExpressions().map((e) => e.name).sort());
    for (const r of rules) expect([r.name, r.health, r.lastError ?? '']).toEqual([r.name, 'ok', '']);
  });

  it('the $project variable (label_values(stepwise_watchdog_adapters, project)) lists the three projects', async (ctx) => {
    needPrometheus(ctx);
    const values = await apiGet<string[]>(`/api/v1/label/project/values?match[]=stepwise_watchdog_adapters`);
    expect([...values].sort()).toEqual([...roots()].sort());
    // Grafana's escaped multi-value selection matches exactly those roots (each holds a `.`).
    const r = await query(`count by (project) (stepwise_watchdog_adapters{project=~"${grafanaProjectValue(roots())}"})`);
    expect(r.result.map((x) => x.metric.project).sort()).toEqual([...roots()].sort());
    for (const root of roots()) expect(root).toContain('.');
  });
});

describe('every dashboard panel query returns data', () => {
  const exprs = rawDashboardExpressions();

  it('the dashboard has its panel queries', () => {
    expect(exprs.length).toBeGreaterThan(20);
  });

  it.for(exprs)('$name', async (e, ctx) => {
    needPrometheus(ctx);
    for (const [label, project] of [['All', '.*'], ['A|B|C', grafanaProjectValue(roots())]] as const) {
      const expr = substitute(e.expr, project);
      expect(await problemsOf(expr, { mayBeEmpty: false }), `$project=${label}: ${expr}`).toEqual([]);
    }
  });

  it('the panels show the demo: 2 leaked and 1 orphaned in A, B reaped, refusals from C', async (ctx) => {
    needPrometheus(ctx);
    const byName = new Map(exprs.map((e) => [e.name, e.expr]));
    const value = async (name: string, project: string): Promise<number[]> => {
      const raw = byName.get(name);
      expect(raw, `no panel query "${name}"`).toBeDefined();
      const r = await query(substitute(raw!, grafanaProjectValue([project])));
      expect(r.status, name).toBe('success');
      return r.result.map((x) => Number(x.value[1]));
    };
    const { demoA, demoB, rootC } = s();
    expect(await value('Leaked adapters [A]', demoA.root)).toEqual([2]);
    expect(await value('Leaked adapters [B]', demoA.root)).toEqual([1]); // the stat's second query: orphaned
    expect((await value('Leaked memory [A]', demoA.root))[0]).toBeGreaterThan(0);
    expect(await value('Leaked adapters [A]', demoB.root)).toEqual([0]);
    expect(await value('stepwise server [A]', demoA.root)).toEqual([1]);
    expect((await value('Stale pid files [A]', demoA.root))[0]).toBe(2);
    expect((await value('Stale running runs [A]', demoA.root))[0]).toBeGreaterThanOrEqual(1);
    expect(await value('Sources down [A]', rootC)).toEqual([1]);
    expect(await value('Sources down [A]', demoA.root)).toEqual([0]);
    // B's two reaps in the last minute: the reap rate panel is non-zero for leaked/ok.
    const reaps = await query(substitute(byName.get('Reaps per minute by verdict and result [A]')!, grafanaProjectValue([demoB.root])));
    const leakedOk = reaps.result.find((x) => x.metric.verdict === 'leaked' && x.metric.result === 'ok');
    expect(Number(leakedOk?.value[1])).toBeGreaterThan(0);
    expect((await value('Memory freed by reaping (last hour) [A]', demoB.root))[0]).toBeGreaterThan(0);
    const refusals = await query(substitute(byName.get('Refusals per minute by reason [A]')!, grafanaProjectValue([rootC])));
    // Every reason is seeded at 0 per project; only source_down moves in C.
    const moving = refusals.result.filter((x) => Number(x.value[1]) > 0).map((x) => x.metric.reason);
    expect(moving).toEqual(['source_down']);
    expect(refusals.result.map((x) => x.metric.reason)).toContain('not_found');
    // Sessions (issue 11): every verdict is seeded at 0 per project, so the session panels draw
    // for every project, and session kills are counted apart (verdict="leaked-session"), seeded
    // at 0 for both results like the tree verdicts (increase() then sees the first failure).
    for (const root of roots()) {
      const sessions = await query(substitute(byName.get('Sessions by verdict [A]')!, grafanaProjectValue([root])));
      expect(sessions.result.map((x) => x.metric.verdict).sort(), root).toEqual(['active', 'leaked', 'paused', 'unattributed']);
      expect(sessions.result.map((x) => x.metric.project), root).toEqual(Array(4).fill(root));
      const leakedSessionBytes = await query(substitute(byName.get('Leaked session memory (RSS + swap) [A]')!, grafanaProjectValue([root])));
      expect(leakedSessionBytes.result.map((x) => x.metric.project), root).toEqual([root]);
      expect(Number(leakedSessionBytes.result[0]?.value[1]), root).toBeGreaterThanOrEqual(0);
      const sessionReaps = await query(substitute(byName.get('Session reaps per minute by result [A]')!, grafanaProjectValue([root])));
      expect(sessionReaps.result.map((x) => x.metric.result).sort(), root).toEqual(['failed', 'ok']);
    }
  });
});

describe('every alert expression parses and reads metrics the daemon exports', () => {
  const alerts = alertExpressions();
  /** Made true by this set-up: must return data (the rest may legitimately return nothing). */
  const FIRING = new Set(['StepwiseLeakedAdaptersPresent', 'StepwiseWatchdogStoreDown']);

  it('the rule file has its alerts', () => {
    expect(alerts.length).toBeGreaterThanOrEqual(10);
    for (const name of FIRING) expect(alerts.map((a) => a.name)).toContain(name);
  });

  it.for(alerts)('$name', async (e, ctx) => {
    needPrometheus(ctx);
    expect(await problemsOf(e.expr, { mayBeEmpty: !FIRING.has(e.name) }), e.expr).toEqual([]);
  });

  it('with leaked trees present the leak alert fires (its expression without `for:`), and is pending', async (ctx) => {
    needPrometheus(ctx);
    const { demoA, rootC } = s();
    const leak = alerts.find((a) => a.name === 'StepwiseLeakedAdaptersPresent')!;
    const r = await query(leak.expr);
    expect(r.status).toBe('success');
    const seen = r.result.map((x) => [x.metric.project, x.metric.verdict, x.value[1]]).sort();
    expect(seen).toEqual([[demoA.root, 'leaked', '2'], [demoA.root, 'orphaned', '1']]);

    const { alerts: active } = await apiGet<{ alerts: { labels: Record<string, string>; state: string }[] }>('/api/v1/alerts');
    const pending = (name: string) => active.filter((a) => a.labels.alertname === name).map((a) => [a.labels.project, a.labels.verdict ?? '', a.state]).sort();
    expect(pending('StepwiseLeakedAdaptersPresent')).toEqual([[demoA.root, 'leaked', 'pending'], [demoA.root, 'orphaned', 'pending']]);
    expect(pending('StepwiseWatchdogStoreDown')).toEqual([[rootC, '', 'pending']]);
  });
});

describe('a metric renamed in the code breaks these checks', () => {
  // What the daemon exports, not Prometheus' own series (up, scrape_*).
  const watchdogSeries = [...knownSeriesNames()].filter((n) => !PROMETHEUS_SERIES.includes(n));
  const all: PromExpression[] = [...rawDashboardExpressions(), ...alertExpressions()];

  it('renaming any watchdog metric an expression reads makes that expression fail', async (ctx) => {
    needPrometheus(ctx);
    let mutated = 0;
    for (const e of all) {
      const expr = e.source === 'dashboard' ? substitute(e.expr, '.*') : e.expr;
      const read = new Set(lexPromQL(expr).selectors.map((x) => x.metric));
      const names = watchdogSeries.filter((n) => read.has(n));
      // The rest read only Prometheus' own series (`up{job="stepwise-watchdog"}`): nothing to rename in the code.
      if (names.length === 0) expect([...read].filter((n) => !PROMETHEUS_SERIES.includes(n)), `${e.name}: ${expr}`).toEqual([]);
      else mutated++;
      for (const name of names) {
        // The expression still says `name`; the code now exports `name_renamed`.
        const renamed = expr.replace(new RegExp(`\\b${name}\\b`, 'g'), `${name}_renamed`);
        const problems = await problemsOf(renamed, { mayBeEmpty: e.source === 'alert' });
        expect(problems.length, `${e.source}: ${e.name}: renaming ${name} went unnoticed`).toBeGreaterThan(0);
      }
    }
    expect(mutated).toBeGreaterThan(30);
  });
});
