// Every PromQL expression the operator assets ship: the Grafana dashboard's panel queries
// (with Grafana's variables substituted) and the alert rules' expressions. Used by
// prometheus-assets.test.ts (static checks, promtool) and by end-to-end tests that run them
// against a real Prometheus scraping the daemon.
//
// No YAML library is a dependency, so alerts.yml is read by a small line reader that knows the
// shapes rule files use (`expr:` on one line, quoted or not, or a `|`/`>` block). It refuses a
// file it cannot account for (a rule without exactly one expr) instead of guessing.

import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const DASHBOARD_PATH = path.join(REPO_ROOT, 'dashboards/stepwise-watchdog.json');
export const ALERTS_PATH = path.join(REPO_ROOT, 'deploy/prometheus/alerts.yml');

export interface PromExpression {
  source: 'dashboard' | 'alert';
  /** Dashboard: `panel title [refId]`. Alert: the alert (or recording rule) name. */
  name: string;
  expr: string;
}

export interface SubstituteOptions {
  /** Value for $project (a regex: the dashboard matches with =~). Default `.*` (Grafana's "All"). */
  project?: string;
  /** Value for $__rate_interval and $__interval. Default `1m`. */
  rateInterval?: string;
  /** Value for $__range. Default `1h`. */
  range?: string;
}

// ─── metric names ──────────────────────────────────────────────────────────────────────────

/** Metrics the daemon exports, with the labels each carries besides job/instance. */
export const WATCHDOG_METRICS: Readonly<Record<string, readonly string[]>> = {
  stepwise_watchdog_adapters: ['project', 'verdict'],
  stepwise_watchdog_adapter_memory_bytes: ['project', 'verdict', 'kind'],
  stepwise_watchdog_sessions: ['project', 'verdict'],
  stepwise_watchdog_session_memory_bytes: ['project', 'verdict', 'kind'],
  stepwise_watchdog_pidfiles: ['project', 'verdict'],
  stepwise_watchdog_stale_running_runs: ['project'],
  stepwise_watchdog_reaped_total: ['project', 'verdict', 'result'],
  stepwise_watchdog_reaped_bytes_total: ['project'],
  stepwise_watchdog_pidfiles_removed_total: ['project'],
  stepwise_watchdog_refusals_total: ['project', 'reason'],
  stepwise_watchdog_server_up: ['project'],
  stepwise_watchdog_server_memory_bytes: ['project', 'process', 'kind'],
  stepwise_watchdog_server_memory_growth_bytes_per_hour: ['project', 'process'],
  stepwise_watchdog_source_up: ['project', 'source'],
  stepwise_watchdog_cycle_duration_seconds: ['le'],
  stepwise_watchdog_last_cycle_timestamp_seconds: [],
};

/** Histograms: the series Prometheus stores are NAME_bucket, NAME_sum and NAME_count. */
export const WATCHDOG_HISTOGRAMS: readonly string[] = ['stepwise_watchdog_cycle_duration_seconds'];

/** prom-client 15 collectDefaultMetrics({ prefix: 'stepwise_watchdog_' }). */
export const DEFAULT_PROCESS_METRICS: readonly string[] = [
  'process_cpu_user_seconds_total',
  'process_cpu_system_seconds_total',
  'process_cpu_seconds_total',
  'process_start_time_seconds',
  'process_resident_memory_bytes',
  'process_virtual_memory_bytes',
  'process_heap_bytes',
  'process_open_fds',
  'process_max_fds',
  'nodejs_eventloop_lag_seconds',
  'nodejs_eventloop_lag_min_seconds',
  'nodejs_eventloop_lag_max_seconds',
  'nodejs_eventloop_lag_mean_seconds',
  'nodejs_eventloop_lag_stddev_seconds',
  'nodejs_eventloop_lag_p50_seconds',
  'nodejs_eventloop_lag_p90_seconds',
  'nodejs_eventloop_lag_p99_seconds',
  'nodejs_active_resources',
  'nodejs_active_resources_total',
  'nodejs_active_handles',
  'nodejs_active_handles_total',
  'nodejs_active_requests',
  'nodejs_active_requests_total',
  'nodejs_heap_size_total_bytes',
  'nodejs_heap_size_used_bytes',
  'nodejs_external_memory_bytes',
  'nodejs_heap_space_size_total_bytes',
  'nodejs_heap_space_size_used_bytes',
  'nodejs_heap_space_size_available_bytes',
  'nodejs_version_info',
  'nodejs_gc_duration_seconds_bucket',
  'nodejs_gc_duration_seconds_sum',
  'nodejs_gc_duration_seconds_count',
].map((m) => `stepwise_watchdog_${m}`);

/** Series Prometheus itself makes for every target. */
export const PROMETHEUS_SERIES: readonly string[] = ['up', 'scrape_duration_seconds', 'scrape_samples_scraped'];

/** Every series name an expression may select. */
export function knownSeriesNames(): Set<string> {
  const names = new Set<string>(PROMETHEUS_SERIES);
  for (const m of Object.keys(WATCHDOG_METRICS)) {
    if (WATCHDOG_HISTOGRAMS.includes(m)) for (const s of ['_bucket', '_sum', '_count']) names.add(m + s);
    else names.add(m);
  }
  for (const m of DEFAULT_PROCESS_METRICS) names.add(m);
  return names;
}

/** Series that carry a `project` label (histogram series included). */
export function projectLabelledSeries(): Set<string> {
  const names = new Set<string>();
  for (const [m, labels] of Object.entries(WATCHDOG_METRICS)) if (labels.includes('project')) names.add(m);
  return names;
}

// ─── a small PromQL lexer: enough to find selectors, their matchers, and function calls ────

const KEYWORDS = new Set([
  'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'and', 'or', 'unless',
  'offset', 'atan2', 'inf', 'nan', 'start', 'end',
  // aggregation operators (they may be written without parentheses right after them: `sum by (x) (...)`)
  'sum', 'min', 'max', 'avg', 'group', 'stddev', 'stdvar', 'count', 'count_values', 'bottomk', 'topk', 'quantile', 'limitk', 'limit_ratio',
]);
const LABEL_LIST_KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right']);

export interface Selector {
  metric: string;
  /** The text between the braces, or null when the selector has none. */
  matchers: string | null;
}

export interface LexedExpression {
  selectors: Selector[];
  functions: string[];
}

/** Finds the metric selectors and function calls of a PromQL expression (after Grafana substitution). */
export function lexPromQL(expr: string): LexedExpression {
  const selectors: Selector[] = [];
  const functions: string[] = [];
  let i = 0;
  const n = expr.length;
  const skipString = (quote: string): void => {
    i++; // opening quote
    while (i < n && expr[i] !== quote) i += expr[i] === '\\' && quote !== '`' ? 2 : 1;
    i++; // closing quote
  };
  const readBraces = (): string => {
    const start = ++i;
    while (i < n && expr[i] !== '}') {
      if (expr[i] === '"' || expr[i] === "'" || expr[i] === '`') skipString(expr[i]!);
      else i++;
    }
    if (i >= n) throw new Error(`unbalanced { in ${JSON.stringify(expr)}`);
    return expr.slice(start, i++);
  };
  const nextNonSpace = (from: number): number => {
    let j = from;
    while (j < n && /\s/.test(expr[j]!)) j++;
    return j;
  };
  while (i < n) {
    const c = expr[i]!;
    if (c === '"' || c === "'" || c === '`') skipString(c);
    else if (c === '[') {
      while (i < n && expr[i] !== ']') i++;
      i++;
    } else if (c === '{') {
      // A selector with no metric name ({__name__=~"..."}): name it by its matchers.
      const m = readBraces();
      selectors.push({ metric: '', matchers: m });
    } else if (/[0-9]/.test(c) || (c === '.' && /[0-9]/.test(expr[i + 1] ?? ''))) {
      // number or duration: 2, 1024, 0.99, 1e3, 0x1f, 5m, 1h30m
      while (i < n && /[0-9a-zA-Z_.]/.test(expr[i]!)) i++;
    } else if (/[a-zA-Z_:]/.test(c)) {
      const start = i;
      while (i < n && /[a-zA-Z0-9_:]/.test(expr[i]!)) i++;
      const word = expr.slice(start, i);
      const j = nextNonSpace(i);
      const lower = word.toLowerCase();
      if (LABEL_LIST_KEYWORDS.has(lower)) {
        if (expr[j] === '(') {
          i = expr.indexOf(')', j) + 1; // the label list
          if (i === 0) throw new Error(`unbalanced ( in ${JSON.stringify(expr)}`);
        }
      } else if (KEYWORDS.has(lower)) {
        // operator or aggregation keyword
      } else if (expr[j] === '(') {
        functions.push(word);
      } else if (expr[j] === '{') {
        i = j;
        selectors.push({ metric: word, matchers: readBraces() });
      } else {
        selectors.push({ metric: word, matchers: null });
      }
    } else i++;
  }
  return { selectors, functions };
}

/** Metric names an expression selects. */
export function metricNames(expr: string): string[] {
  return [...new Set(lexPromQL(expr).selectors.map((s) => s.metric))];
}

/** PromQL functions (Prometheus 2.x) an expression may call. */
export const PROMQL_FUNCTIONS = new Set([
  'abs', 'absent', 'absent_over_time', 'ceil', 'changes', 'clamp', 'clamp_max', 'clamp_min', 'day_of_month',
  'day_of_week', 'day_of_year', 'days_in_month', 'delta', 'deriv', 'exp', 'floor', 'histogram_quantile',
  'holt_winters', 'hour', 'idelta', 'increase', 'irate', 'label_join', 'label_replace', 'ln', 'log2', 'log10',
  'minute', 'month', 'predict_linear', 'rate', 'resets', 'round', 'scalar', 'sgn', 'sort', 'sort_desc', 'sqrt',
  'time', 'timestamp', 'vector', 'year', 'avg_over_time', 'min_over_time', 'max_over_time', 'sum_over_time',
  'count_over_time', 'quantile_over_time', 'stddev_over_time', 'stdvar_over_time', 'last_over_time',
  'present_over_time', 'acos', 'acosh', 'asin', 'asinh', 'atan', 'atanh', 'cos', 'cosh', 'sin', 'sinh', 'tan',
  'tanh', 'deg', 'rad', 'pi',
]);

// ─── Grafana ───────────────────────────────────────────────────────────────────────────────

/** Replaces the Grafana variables the dashboard uses with concrete values. */
export function substituteGrafanaVariables(expr: string, opts: SubstituteOptions = {}): string {
  const values: Record<string, string> = {
    project: opts.project ?? '.*',
    __rate_interval: opts.rateInterval ?? '1m',
    __interval: opts.rateInterval ?? '1m',
    __range: opts.range ?? '1h',
  };
  return expr.replace(/\$\{(\w+)\}|\$(\w+)/g, (all, braced: string | undefined, bare: string | undefined) => {
    const name = (braced ?? bare)!;
    const v = values[name];
    if (v === undefined) throw new Error(`unknown Grafana variable $${name} in ${JSON.stringify(expr)}`);
    return v;
  });
}

export interface DashboardPanel {
  id?: number;
  type: string;
  title: string;
  datasource?: unknown;
  targets?: { refId?: string; expr?: string; datasource?: unknown }[];
  panels?: DashboardPanel[];
}

export interface Dashboard {
  uid?: string;
  schemaVersion?: number;
  title?: string;
  templating?: { list?: Record<string, unknown>[] };
  panels?: DashboardPanel[];
  [key: string]: unknown;
}

export function readDashboard(file = DASHBOARD_PATH): Dashboard {
  return JSON.parse(readFileSync(file, 'utf8')) as Dashboard;
}

/** Every panel, collapsed rows' panels included. */
export function dashboardPanels(d: Dashboard): DashboardPanel[] {
  const out: DashboardPanel[] = [];
  for (const p of d.panels ?? []) {
    out.push(p);
    for (const q of p.panels ?? []) out.push(q);
  }
  return out;
}

/** Every panel query of the dashboard, raw (Grafana variables left in). */
export function rawDashboardExpressions(d: Dashboard = readDashboard()): PromExpression[] {
  const out: PromExpression[] = [];
  for (const p of dashboardPanels(d)) {
    for (const t of p.targets ?? []) {
      if (typeof t.expr !== 'string' || t.expr.trim() === '') continue;
      out.push({ source: 'dashboard', name: `${p.title} [${t.refId ?? '?'}]`, expr: t.expr });
    }
  }
  return out;
}

/** Every panel query of the dashboard, with $project, $__rate_interval … substituted. */
export function dashboardExpressions(opts: SubstituteOptions = {}, d: Dashboard = readDashboard()): PromExpression[] {
  return rawDashboardExpressions(d).map((e) => ({ ...e, expr: substituteGrafanaVariables(e.expr, opts) }));
}

// ─── alert rules ───────────────────────────────────────────────────────────────────────────

export interface RuleExpression {
  kind: 'alert' | 'record';
  name: string;
  expr: string;
}

function unquoteYamlScalar(v: string): string {
  const s = v.trim();
  const rest = (end: number): void => {
    const tail = s.slice(end).trim();
    if (tail !== '' && !tail.startsWith('#')) throw new Error(`unexpected ${JSON.stringify(tail)} after quoted scalar ${s}`);
  };
  if (s.startsWith('"')) {
    let i = 1;
    while (i < s.length && s[i] !== '"') i += s[i] === '\\' ? 2 : 1;
    if (i >= s.length) throw new Error(`unterminated quoted scalar ${s}`);
    rest(i + 1);
    return JSON.parse(s.slice(0, i + 1)) as string; // YAML's double-quoted escapes, as far as rule files use them
  }
  if (s.startsWith("'")) {
    let i = 1;
    while (i < s.length && !(s[i] === "'" && s[i + 1] !== "'")) i += s[i] === "'" ? 2 : 1;
    if (i >= s.length) throw new Error(`unterminated quoted scalar ${s}`);
    rest(i + 1);
    return s.slice(1, i).replace(/''/g, "'");
  }
  // plain scalar: a trailing ` # comment` is not part of it
  return s.replace(/\s+#.*$/, '');
}

/** Reads the rules of a Prometheus rule file (the shapes rule files use; see the file header). */
export function parseRuleFile(text: string): RuleExpression[] {
  const lines = text.split('\n');
  const rules: RuleExpression[] = [];
  let current: { kind: 'alert' | 'record'; name: string; exprs: string[] } | null = null;
  const flush = (): void => {
    if (!current) return;
    if (current.exprs.length !== 1) throw new Error(`rule ${current.name} has ${current.exprs.length} expr fields`);
    rules.push({ kind: current.kind, name: current.name, expr: current.exprs[0]! });
    current = null;
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    const rule = /^\s*-\s+(alert|record):\s*(.+?)\s*$/.exec(line);
    if (rule) {
      flush();
      current = { kind: rule[1] as 'alert' | 'record', name: unquoteYamlScalar(rule[2]!), exprs: [] };
      continue;
    }
    if (/^\s*-\s+name:/.test(line)) flush(); // a new group
    const ex = /^(\s*)expr:\s*(.*?)\s*$/.exec(line);
    if (!ex) continue;
    if (!current) throw new Error(`line ${i + 1}: expr outside a rule`);
    const indent = ex[1]!.length;
    const value = ex[2]!;
    const block = /^([|>])([+-]?)(\s+#.*)?$/.exec(value);
    if (block) {
      const body: string[] = [];
      while (i + 1 < lines.length) {
        const next = lines[i + 1]!;
        if (next.trim() !== '' && next.length - next.trimStart().length <= indent) break;
        body.push(next);
        i++;
      }
      while (body.length && body[body.length - 1]!.trim() === '') body.pop();
      const bodyIndent = Math.min(...body.filter((l) => l.trim()).map((l) => l.length - l.trimStart().length));
      const stripped = body.map((l) => l.slice(bodyIndent));
      current.exprs.push(block[1] === '|' ? stripped.join('\n') : stripped.map((l) => l.trim()).join(' ').trim());
    } else {
      current.exprs.push(unquoteYamlScalar(value));
    }
  }
  flush();
  const declared = lines.filter((l) => /^\s*-\s+(alert|record):/.test(l)).length;
  if (declared !== rules.length) throw new Error(`read ${rules.length} rules but the file declares ${declared}`);
  return rules;
}

/** Every alert (and recording rule) expression of deploy/prometheus/alerts.yml. */
export function alertExpressions(file = ALERTS_PATH): PromExpression[] {
  return parseRuleFile(readFileSync(file, 'utf8')).map((r) => ({ source: 'alert', name: r.name, expr: r.expr }));
}

/** Every dashboard panel expression (variables substituted) and every alert expression. */
export function allExpressions(opts: SubstituteOptions = {}): PromExpression[] {
  return [...dashboardExpressions(opts), ...alertExpressions()];
}
