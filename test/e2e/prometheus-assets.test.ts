// The operator assets, checked with the real tools where they exist:
//   - promtool (Debian: `apt-get install prometheus`) checks and unit-tests the alert rules,
//     checks the example configs, and parses every dashboard query;
//   - static checks of the Grafana dashboard (provisionable, every query filtered by $project,
//     only metrics the daemon exports);
//   - the Kubernetes manifests and the systemd units, for the properties the watchdog depends on.
// Without promtool the promtool tests skip locally and fail under CI=true (CI installs it).
// YAML structure checks use python3's PyYAML (no YAML library is a dependency); they skip,
// saying so, where it is missing.

import { execFileSync, spawnSync } from 'node:child_process';
import { accessSync, constants, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  ALERTS_PATH,
  DEFAULT_PROCESS_METRICS,
  REPO_ROOT,
  WATCHDOG_METRICS,
  alertExpressions,
  dashboardExpressions,
  dashboardPanels,
  knownSeriesNames,
  lexPromQL,
  metricNames,
  parseRuleFile,
  projectLabelledSeries,
  rawDashboardExpressions,
  readDashboard,
  PROMQL_FUNCTIONS,
} from './dashboard-exprs.js';

const rel = (...p: string[]): string => path.join(REPO_ROOT, ...p);

function onPath(cmd: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const full = path.join(dir, cmd);
    try {
      accessSync(full, constants.X_OK);
      return full;
    } catch {
      /* not here */
    }
  }
  return null;
}

const PROMTOOL = onPath('promtool');
const NO_PROMTOOL = 'promtool is not on PATH: install it with `apt-get install prometheus` (Debian/Ubuntu)';

/** Skips locally, fails in CI, when promtool is missing. */
function needPromtool(ctx: { skip: (condition: boolean, note?: string) => void }): string {
  if (!PROMTOOL) {
    if (process.env.CI) throw new Error(`${NO_PROMTOOL}; CI must install it`);
    ctx.skip(true, NO_PROMTOOL);
  }
  return PROMTOOL!;
}

function promtool(args: string[], cwd: string): { code: number; out: string } {
  const r = spawnSync(PROMTOOL!, args, { cwd, encoding: 'utf8' });
  return { code: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}

// ─── YAML through python3 + PyYAML ─────────────────────────────────────────────────────────
const PY_YAML_OK = spawnSync('python3', ['-c', 'import yaml'], { encoding: 'utf8' }).status === 0;
const NO_PY_YAML = 'python3 with PyYAML is needed to parse YAML here (apt-get install python3-yaml)';

/** Every document of a YAML file, as JSON values. */
function yamlDocs(file: string): unknown[] {
  const out = execFileSync(
    'python3',
    ['-c', 'import sys, json, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1], encoding="utf-8")))))', file],
    { encoding: 'utf8' },
  );
  return JSON.parse(out) as unknown[];
}
type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const tmp = mkdtempSync(path.join(tmpdir(), 'prom-assets-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

// ─── promtool ──────────────────────────────────────────────────────────────────────────────
describe('promtool', () => {
  it('check rules deploy/prometheus/alerts.yml', (ctx) => {
    needPromtool(ctx);
    const r = promtool(['check', 'rules', 'alerts.yml'], rel('deploy/prometheus'));
    expect(r.out).toMatch(/SUCCESS: \d+ rules found/);
    expect(r.code, r.out).toBe(0);
  });

  it('test rules deploy/prometheus/alerts.test.yml (every alert firing and not firing)', (ctx) => {
    needPromtool(ctx);
    const r = promtool(['test', 'rules', 'alerts.test.yml'], rel('deploy/prometheus'));
    expect(r.code, r.out).toBe(0);
    expect(r.out).toContain('SUCCESS');
  });

  it('check config deploy/prometheus/prometheus.yml', (ctx) => {
    needPromtool(ctx);
    const r = promtool(['check', 'config', 'prometheus.yml'], rel('deploy/prometheus'));
    expect(r.code, r.out).toBe(0);
    expect(r.out).toContain('is valid prometheus config file syntax');
  });

  it('check config deploy/kubernetes/prometheus-annotations.yml (kubernetes_sd swapped for static targets)', (ctx) => {
    needPromtool(ctx);
    // Debian's promtool is built without Kubernetes service discovery: check the rest.
    const text = readFileSync(rel('deploy/kubernetes/prometheus-annotations.yml'), 'utf8');
    expect(text).toMatch(/kubernetes_sd_configs:\n\s+- role: pod/);
    const swapped = text
      .replace(/kubernetes_sd_configs:\n(\s+)- role: pod.*/, 'static_configs:\n$1- targets: ["127.0.0.1:9477"]')
      .replace('../prometheus/alerts.yml', ALERTS_PATH);
    const file = path.join(tmp, 'prometheus-annotations.yml');
    writeFileSync(file, swapped);
    const r = promtool(['check', 'config', file], tmp);
    expect(r.code, r.out).toBe(0);
  });

  it('parses every dashboard query (as recording rules)', (ctx) => {
    needPromtool(ctx);
    const exprs = dashboardExpressions();
    const rules = {
      groups: [{ name: 'dashboard', rules: exprs.map((e, i) => ({ record: `dashboard:query_${i}`, expr: e.expr })) }],
    };
    const file = path.join(tmp, 'dashboard-rules.yml');
    writeFileSync(file, JSON.stringify(rules, null, 2)); // JSON is YAML
    const r = promtool(['check', 'rules', file], tmp);
    expect(r.code, `${r.out}\n${exprs.map((e, i) => `${i}: ${e.name}: ${e.expr}`).join('\n')}`).toBe(0);
    expect(r.out).toContain(`SUCCESS: ${exprs.length} rules found`);
  });
});

// ─── the Grafana dashboard ─────────────────────────────────────────────────────────────────
describe('dashboards/stepwise-watchdog.json', () => {
  const d = readDashboard();
  const vars = (d.templating?.list ?? []) as Obj[];

  it('is a provisionable classic dashboard: uid, schemaVersion, no import-time inputs', () => {
    expect(d.uid).toBe('stepwise-watchdog');
    expect(typeof d.schemaVersion).toBe('number');
    expect(d.schemaVersion).toBeGreaterThanOrEqual(36); // datasource refs as {type, uid}
    expect(d).not.toHaveProperty('__inputs');
    expect(d).not.toHaveProperty('__requires');
    const text = readFileSync(rel('dashboards/stepwise-watchdog.json'), 'utf8');
    expect(text).not.toMatch(/\$\{DS_[A-Z_]+\}/); // placeholders of an exported-for-sharing dashboard
    expect((d as Obj).id ?? null).toBeNull();
  });

  it('has a `datasource` variable of type datasource (prometheus)', () => {
    const ds = vars.find((v) => v.name === 'datasource');
    expect(ds).toBeDefined();
    expect(ds!.type).toBe('datasource');
    expect(ds!.query).toBe('prometheus');
  });

  it('has a multi-value `project` variable from label_values(stepwise_watchdog_adapters, project)', () => {
    const p = vars.find((v) => v.name === 'project');
    expect(p).toBeDefined();
    expect(p!.type).toBe('query');
    const q = typeof p!.query === 'string' ? p!.query : p!.query?.query;
    expect(q).toBe('label_values(stepwise_watchdog_adapters, project)');
    expect(p!.multi).toBe(true);
    expect(p!.includeAll).toBe(true);
    expect(p!.datasource?.uid ?? p!.datasource).toBe('${datasource}');
  });

  it('every panel with queries uses the ${datasource} variable, in the panel and each target', () => {
    const usesVar = (ds: unknown): boolean => ds === '${datasource}' || (ds as Obj | undefined)?.uid === '${datasource}';
    const panels = dashboardPanels(d).filter((p) => (p.targets ?? []).length > 0);
    expect(panels.length).toBeGreaterThan(10);
    for (const p of panels) {
      expect(usesVar(p.datasource), `panel "${p.title}" datasource ${JSON.stringify(p.datasource)}`).toBe(true);
      for (const t of p.targets ?? []) {
        if (t.datasource !== undefined) expect(usesVar(t.datasource), `panel "${p.title}" target ${t.refId}`).toBe(true);
      }
    }
  });

  it('has the panels the issue asks for', () => {
    const byTitle = new Map(dashboardPanels(d).map((p) => [p.title, p]));
    const exprsOf = (title: string): string => (byTitle.get(title)?.targets ?? []).map((t) => t.expr).join('\n');
    expect(byTitle.get('Leaked adapters')?.type).toBe('stat');
    expect(exprsOf('Leaked adapters over time')).toContain('verdict=~"leaked|orphaned"');
    expect(exprsOf('Leaked memory by verdict (RSS and swap)')).toMatch(/sum by \(verdict, kind\)/);
    expect(exprsOf('Adapters by verdict')).toMatch(/sum by \(verdict\)/);
    expect(exprsOf('Reaps per minute by verdict and result')).toMatch(/sum by \(verdict, result\) \(rate\(stepwise_watchdog_reaped_total/);
    expect(exprsOf('Stale pid files')).toContain('stale-dead');
    expect(exprsOf('Stale running runs')).toContain('stepwise_watchdog_stale_running_runs');
    expect(exprsOf('Server memory (RSS and swap)')).toContain('stepwise_watchdog_server_memory_bytes');
    expect(exprsOf('Server memory growth (slope over 1 h)')).toContain('stepwise_watchdog_server_memory_growth_bytes_per_hour');
    expect(exprsOf('Cycle duration')).toContain('histogram_quantile(0.99');
    expect(byTitle.get('Source health')?.targets?.[0]?.expr).toContain('stepwise_watchdog_source_up');
    // Sessions (issue 11): by verdict per project, leaked-session bytes per project, session reaps.
    expect(exprsOf('Sessions by verdict')).toMatch(/sum by \(project, verdict\) \(stepwise_watchdog_sessions\{/);
    expect(exprsOf('Leaked session memory (RSS + swap)')).toMatch(/sum by \(project\) \(stepwise_watchdog_session_memory_bytes\{[^}]*verdict="leaked"/);
    expect(exprsOf('Session reaps per minute by result')).toMatch(/rate\(stepwise_watchdog_reaped_total\{[^}]*verdict="leaked-session"/);
    for (const t of ['Sessions by verdict', 'Leaked session memory (RSS + swap)', 'Session reaps per minute by result']) {
      expect(byTitle.get(t)?.type, t).toBe('timeseries');
    }
    const sessionMemory = byTitle.get('Leaked session memory (RSS + swap)') as Obj | undefined;
    expect(sessionMemory?.fieldConfig?.defaults?.unit).toBe('bytes');
    // Its red line is the threshold of StepwiseLeakedSessionMemoryHigh.
    const alert = alertExpressions().find((e) => e.name === 'StepwiseLeakedSessionMemoryHigh');
    expect(alert?.expr).toMatch(/> 300 \* 1024\^2$/);
    expect((sessionMemory?.fieldConfig?.defaults?.thresholds?.steps as Obj[]).map((x) => x.value)).toEqual([null, 300 * 1024 ** 2]);
  });

  it('panels do not overlap and fit the 24-column grid', () => {
    const seen = new Map<string, string>();
    for (const p of d.panels ?? []) {
      const g = (p as Obj).gridPos as { x: number; y: number; w: number; h: number };
      expect(g.x + g.w, p.title).toBeLessThanOrEqual(24);
      for (let x = g.x; x < g.x + g.w; x++) {
        for (let y = g.y; y < g.y + g.h; y++) {
          const k = `${x},${y}`;
          expect(seen.get(k), `"${p.title}" overlaps "${seen.get(k)}"`).toBeUndefined();
          seen.set(k, p.title);
        }
      }
    }
    const ids = (d.panels ?? []).map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('every selector of a metric with a project label filters by $project', () => {
    const withProject = projectLabelledSeries();
    for (const e of rawDashboardExpressions(d)) {
      for (const s of lexPromQL(e.expr).selectors) {
        if (!withProject.has(s.metric)) continue;
        expect(s.matchers ?? '', `${e.name}: ${s.metric} in ${e.expr}`).toMatch(/project=~"\$project/);
      }
    }
  });
});

// ─── metric names in every expression ──────────────────────────────────────────────────────
describe('expressions reference only metrics the daemon exports', () => {
  const known = knownSeriesNames();
  const exprs = [...dashboardExpressions(), ...alertExpressions()];

  it('finds the dashboard and alert expressions', () => {
    expect(exprs.filter((e) => e.source === 'dashboard').length).toBeGreaterThan(20);
    expect(exprs.filter((e) => e.source === 'alert').map((e) => e.name)).toEqual(
      expect.arrayContaining([
        'StepwiseLeakedAdaptersPresent',
        'StepwiseAdapterReapFailed',
        'StepwiseLeakedAdapterMemoryHigh',
        'StepwiseLeakedSessionMemoryHigh',
        'StepwiseStalePidFilesAccumulating',
        'StepwiseWatchdogDown',
        'StepwiseWatchdogAbsent',
        'StepwiseWatchdogStoreDown',
        'StepwiseWatchdogSourceDown',
        'StepwiseServerMemoryGrowing',
        'StepwiseWatchdogCycleStale',
      ]),
    );
  });

  it.each(exprs.map((e) => [`${e.source}: ${e.name}`, e.expr] as const))('%s', (_name, expr) => {
    const names = metricNames(expr);
    expect(names.length, expr).toBeGreaterThan(0);
    for (const n of names) expect(known.has(n), `unknown metric "${n}" in ${expr}`).toBe(true);
    for (const f of lexPromQL(expr).functions) expect(PROMQL_FUNCTIONS.has(f), `unknown function ${f}() in ${expr}`).toBe(true);
  });

  it('the metric-name reader sees through strings, matchers, ranges, grouping and numbers', () => {
    expect(metricNames('sum by (project, verdict) (rate(a_total{x="b_total", y=~"c|d"}[5m])) * 60 > 2 * 1024^3')).toEqual(['a_total']);
    expect(metricNames('histogram_quantile(0.99, sum by (le) (rate(h_bucket[$__rate_interval])))')).toEqual(['h_bucket']);
    expect(metricNames('time() - max(last_ts) > 120 or vector(0)')).toEqual(['last_ts']);
    expect(metricNames('x unless on (a) y offset 15m and bool z')).toEqual(['x', 'y', 'z']);
    expect(metricNames('absent(up{job="stepwise-watchdog"})')).toEqual(['up']);
  });

  it('the metric list matches the daemon\'s registry (names, labels, default metrics)', async () => {
    const { WatchdogMetrics } = await import('../../src/metrics/registry.js');
    const m = new WatchdogMetrics({ inventories: () => [], processMemory: () => [] }, { projects: [] });
    const exported = new Map((await m.registry.getMetricsAsJSON()).map((x) => [x.name, x]));
    for (const [name, labels] of Object.entries(WATCHDOG_METRICS)) {
      expect(exported.has(name), `${name} is not exported by src/metrics/registry.ts`).toBe(true);
      const metric = m.registry.getSingleMetric(name) as unknown as { labelNames?: string[] } | undefined;
      const want = labels.filter((l) => l !== 'le');
      expect([...(metric?.labelNames ?? [])].sort(), name).toEqual([...want].sort());
    }
    const names = new Set<string>();
    for (const [name, x] of exported) {
      if (String(x.type) === 'histogram') for (const s of ['_bucket', '_sum', '_count']) names.add(name + s);
      else names.add(name);
    }
    for (const n of DEFAULT_PROCESS_METRICS) expect(names.has(n), `${n} is not a default metric of prom-client`).toBe(true);
  });
});

// ─── alert rules: read without a YAML library, checked against PyYAML ──────────────────────
describe('deploy/prometheus/alerts.yml', () => {
  it('every alert has for:, a severity and summary/description/runbook annotations naming the CLI', (ctx) => {
    ctx.skip(!PY_YAML_OK, NO_PY_YAML);
    const [doc] = yamlDocs(ALERTS_PATH) as Obj[];
    const rules = (doc!.groups as Obj[]).flatMap((g) => g.rules as Obj[]);
    expect(rules.length).toBeGreaterThanOrEqual(8);
    for (const r of rules) {
      expect(r.alert, JSON.stringify(r)).toBeTruthy();
      expect(r.for, r.alert).toMatch(/^\d+[smh]$/);
      expect(['critical', 'warning', 'info'], r.alert).toContain(r.labels?.severity);
      expect(r.annotations?.summary, r.alert).toBeTruthy();
      expect(r.annotations?.description, r.alert).toBeTruthy();
      expect(r.annotations?.runbook, r.alert).toMatch(/stepwise-watchdog|systemctl|Targets/);
    }
    const runbooks = rules.map((r) => r.annotations.runbook as string).join('\n');
    expect(runbooks).toContain('stepwise-watchdog status');
    expect(runbooks).toContain('stepwise-watchdog reap');
  });

  it('the line reader agrees with PyYAML on every rule and expression', (ctx) => {
    ctx.skip(!PY_YAML_OK, NO_PY_YAML);
    const [doc] = yamlDocs(ALERTS_PATH) as Obj[];
    const fromYaml = (doc!.groups as Obj[]).flatMap((g) => g.rules as Obj[]).map((r) => ({
      kind: r.alert ? 'alert' : 'record',
      name: r.alert ?? r.record,
      expr: String(r.expr).replace(/\n$/, ''),
    }));
    expect(parseRuleFile(readFileSync(ALERTS_PATH, 'utf8'))).toEqual(fromYaml);
  });

  it('the line reader handles block scalars and quoting, and refuses what it cannot account for', () => {
    const text = [
      'groups:',
      '  - name: g',
      '    rules:',
      '      - alert: A',
      '        expr: |',
      '          sum(x)',
      '            > 1',
      '        for: 5m',
      "      - alert: 'B'",
      "        expr: 'up == 0' # comment",
      '      - record: c:x',
      '        expr: "rate(x[5m])"',
      '      - alert: D',
      '        expr: >-',
      '          a',
      '          or b',
    ].join('\n');
    expect(parseRuleFile(text)).toEqual([
      { kind: 'alert', name: 'A', expr: 'sum(x)\n  > 1' },
      { kind: 'alert', name: 'B', expr: 'up == 0' },
      { kind: 'record', name: 'c:x', expr: 'rate(x[5m])' },
      { kind: 'alert', name: 'D', expr: 'a or b' },
    ]);
    expect(() => parseRuleFile('groups:\n  - name: g\n    rules:\n      - alert: A\n        for: 5m\n')).toThrow(/0 expr/);
  });

  it('deploy/kubernetes/prometheusrule.yaml holds exactly the same groups', (ctx) => {
    ctx.skip(!PY_YAML_OK, NO_PY_YAML);
    const [alerts] = yamlDocs(ALERTS_PATH) as Obj[];
    const [rule] = yamlDocs(rel('deploy/kubernetes/prometheusrule.yaml')) as Obj[];
    expect(rule!.apiVersion).toBe('monitoring.coreos.com/v1');
    expect(rule!.kind).toBe('PrometheusRule');
    expect(rule!.spec.groups, 'regenerate prometheusrule.yaml with the command in its header').toEqual(alerts!.groups);
  });
});

// ─── Grafana provisioning ──────────────────────────────────────────────────────────────────
describe('dashboards/provisioning', () => {
  it('a Prometheus data source and a file provider', (ctx) => {
    ctx.skip(!PY_YAML_OK, NO_PY_YAML);
    const [ds] = yamlDocs(rel('dashboards/provisioning/datasources/prometheus.yml')) as Obj[];
    expect(ds!.apiVersion).toBe(1);
    expect(ds!.datasources[0].type).toBe('prometheus');
    const [prov] = yamlDocs(rel('dashboards/provisioning/dashboards/stepwise-watchdog.yml')) as Obj[];
    expect(prov!.apiVersion).toBe(1);
    expect(prov!.providers[0].type).toBe('file');
    expect(prov!.providers[0].options.path).toMatch(/^\//);
  });
});

// ─── Kubernetes ────────────────────────────────────────────────────────────────────────────
describe('deploy/kubernetes', () => {
  it('every manifest parses', (ctx) => {
    ctx.skip(!PY_YAML_OK, NO_PY_YAML);
    const files = readdirSync(rel('deploy/kubernetes')).filter((f) => /\.ya?ml$/.test(f));
    expect(files).toEqual(expect.arrayContaining(['deployment-sidecar.yaml', 'podmonitor.yaml', 'prometheusrule.yaml']));
    for (const f of files) expect(yamlDocs(rel('deploy/kubernetes', f)).length, f).toBeGreaterThan(0);
  });

  it('the sidecar shares the process namespace, the uid and the project path, with no privileges', (ctx) => {
    ctx.skip(!PY_YAML_OK, NO_PY_YAML);
    const [dep] = yamlDocs(rel('deploy/kubernetes/deployment-sidecar.yaml')) as Obj[];
    expect(dep!.kind).toBe('Deployment');
    const pod = dep!.spec.template.spec as Obj;
    expect(pod.shareProcessNamespace).toBe(true);
    const containers = pod.containers as Obj[];
    const watchdog = containers.find((c) => (c.args as string[] | undefined)?.[0] === 'run')!;
    const server = containers.find((c) => c !== watchdog)!;
    expect(watchdog).toBeDefined();
    const uid = (c: Obj): unknown => c.securityContext?.runAsUser ?? pod.securityContext?.runAsUser;
    expect(uid(watchdog)).toBeDefined();
    expect(uid(watchdog)).not.toBe(0);
    expect(uid(watchdog)).toBe(uid(server));
    expect(watchdog.args.join(' ')).toMatch(/^run --project \/work\/project --listen 0\.0\.0\.0:9477/);
    const mountOf = (c: Obj, vol: string): string | undefined => (c.volumeMounts as Obj[]).find((m) => m.name === vol)?.mountPath;
    expect(mountOf(watchdog, 'project')).toBe('/work/project');
    expect(mountOf(server, 'project')).toBe(mountOf(watchdog, 'project'));
    const sc = watchdog.securityContext as Obj;
    expect(sc.runAsNonRoot).toBe(true);
    expect(sc.readOnlyRootFilesystem).toBe(true);
    expect(sc.allowPrivilegeEscalation).toBe(false);
    expect(sc.capabilities.drop).toEqual(['ALL']);
    expect(sc.capabilities.add ?? []).toEqual([]);
    expect(watchdog.livenessProbe.httpGet.path).toBe('/healthz');
    expect(watchdog.readinessProbe.httpGet.path).toBe('/readyz');
    expect(watchdog.resources.requests).toBeDefined();
    expect(watchdog.resources.limits.memory).toBeDefined();
    const port = (watchdog.ports as Obj[]).find((p) => p.containerPort === 9477);
    expect(port?.name).toBe('watchdog-metrics');
    const ann = dep!.spec.template.metadata.annotations as Obj;
    expect(ann['prometheus.io/scrape']).toBe('true');
    expect(ann['prometheus.io/port']).toBe('9477');
    // The PodMonitor selects this pod, scrapes that port, and names the job as the alerts expect.
    const [pm] = yamlDocs(rel('deploy/kubernetes/podmonitor.yaml')) as Obj[];
    expect(pm!.kind).toBe('PodMonitor');
    for (const [k, v] of Object.entries(pm!.spec.selector.matchLabels as Obj)) expect(dep!.spec.template.metadata.labels[k]).toBe(v);
    const ep = pm!.spec.podMetricsEndpoints[0] as Obj;
    expect(ep.port).toBe('watchdog-metrics');
    expect(ep.relabelings).toEqual(expect.arrayContaining([expect.objectContaining({ targetLabel: 'job', replacement: 'stepwise-watchdog' })]));
  });

  it('the Dockerfile: multi-stage, production deps only, non-root, the CLI as entrypoint', () => {
    const text = readFileSync(rel('deploy/kubernetes/Dockerfile'), 'utf8');
    const froms = [...text.matchAll(/^FROM\s+(\S+)/gm)].map((m) => m[1]);
    expect(froms.length).toBeGreaterThanOrEqual(2);
    expect(froms[froms.length - 1]).toMatch(/^node:20(-bookworm)?-slim$/);
    expect(text).toMatch(/npm ci --omit=dev/);
    expect(text).toMatch(/^USER node$/m);
    expect(text).toMatch(/^ENTRYPOINT \["node", ?"dist\/cli\/bin\.js"\]$/m);
    const final = text.slice(text.lastIndexOf('\nFROM '));
    expect(final).not.toMatch(/npm (ci|install)(?! --omit=dev)/); // nothing installed in the runtime stage
  });
});

// ─── systemd ───────────────────────────────────────────────────────────────────────────────
describe('deploy/systemd', () => {
  const directives = (file: string): [string, string][] =>
    readFileSync(file, 'utf8')
      .split('\n')
      .filter((l) => /^[A-Za-z]+=/.test(l))
      .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]);

  it('the user unit: runs the CLI, restarts on failure, and sets nothing that hides or namespaces processes', () => {
    const file = rel('deploy/systemd/stepwise-watchdog.service');
    const d = directives(file);
    const get = (k: string): string[] => d.filter(([key]) => key === k).map(([, v]) => v);
    expect(get('ExecStart')[0]).toMatch(/^%h\/\.local\/bin\/stepwise-watchdog run --project %h\//);
    expect(get('Restart')).toEqual(['on-failure']);
    expect(get('NoNewPrivileges')).toEqual(['yes']);
    expect(get('WantedBy')).toEqual(['default.target']);
    expect(d.map(([k]) => k)).not.toContain('User'); // a user unit runs as its user
    // These hide other processes, or (in a user unit) need a user namespace, in which
    // /proc/<pid>/cwd of the server can no longer be read.
    for (const k of ['ProtectProc', 'ProcSubset', 'PrivateUsers', 'PrivatePIDs', 'PrivateNetwork', 'ProtectSystem', 'ProtectHome', 'PrivateTmp', 'ReadWritePaths', 'ReadOnlyPaths', 'InaccessiblePaths', 'PrivateDevices', 'ProtectKernelTunables', 'ProtectControlGroups', 'MemoryDenyWriteExecute']) {
      expect(get(k), `${k}= must not be in the user unit`).toEqual([]);
    }
  });

  it('the system unit: file-system sandbox with the pid files writable, nothing that hides processes', () => {
    const d = directives(rel('deploy/systemd/stepwise-watchdog@.service'));
    const get = (k: string): string[] => d.filter(([key]) => key === k).map(([, v]) => v);
    expect(get('User')).toEqual(['%I']);
    expect(get('ProtectSystem')).toEqual(['strict']);
    expect(get('ProtectHome')).toEqual(['read-only']);
    expect(get('ReadWritePaths').join(' ')).toMatch(/\.stepwise\/pids/);
    expect(get('ExecStart')[0]).toMatch(/--audit-log \/var\/lib\/stepwise-watchdog\/%I\//);
    expect(get('StateDirectory')).toEqual(['stepwise-watchdog/%I']);
    for (const k of ['ProtectProc', 'ProcSubset', 'PrivateUsers', 'PrivatePIDs', 'PrivateNetwork', 'MemoryDenyWriteExecute']) {
      expect(get(k), `${k}= must not be in the system unit`).toEqual([]);
    }
  });

  it('every directive is explained by a comment above it (or on the lines before its block)', () => {
    for (const f of ['stepwise-watchdog.service', 'stepwise-watchdog@.service']) {
      const lines = readFileSync(rel('deploy/systemd', f), 'utf8').split('\n');
      lines.forEach((l, i) => {
        if (!/^[A-Za-z]+=/.test(l) || /^(Description|Type|WantedBy)=/.test(l)) return;
        // walk up over directives of the same block (e.g. AmbientCapabilities under CapabilityBoundingSet)
        let j = i - 1;
        while (j >= 0 && /^[A-Za-z]+=/.test(lines[j]!)) j--;
        expect(lines[j] ?? '', `${f}:${i + 1} ${l}`).toMatch(/^#/);
      });
    }
  });
});
