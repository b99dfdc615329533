// Prometheus metrics. Gauges are a projection of the last inventory, built at scrape time in
// collect() (never updated on timers); counters count what effects did. Labels have bounded
// values only: project (one per configured project), verdict, kind, source, result, reason code,
// process (one per --watch-process) — never a pid or a job id.

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { REAP_COUNTER_VERDICTS, REFUSAL_COUNTED, SESSION_KILL_VERDICT, WAIT_CODES } from '../core/vocabulary.js';
import { sessionCounts } from '../core/report.js';
import { ADAPTER_VERDICTS, PIDFILE_VERDICTS, SESSION_VERDICTS, type ProjectInventory, type SourceHealth } from '../core/types.js';

export const PREFIX = 'stepwise_watchdog_';
/** Refusal reasons counted (a wait is not a refusal), plus re-verification skips. */
export { REFUSAL_COUNTED };
export const SOURCES = ['store', 'processes', 'pidfiles', 'server'] as const;

export interface ProcessMemory {
  /** Configured project root, or "" for a --watch-process entry. */
  project: string;
  /** "stepwise-server", or the --watch-process NAME. */
  process: string;
  up: boolean;
  rssBytes: number;
  swapBytes: number;
  growthBytesPerHour: number;
}

export interface MetricsSource {
  /** The last inventory of each configured project (missing before the first cycle). */
  inventories(): ProjectInventory[];
  /** Memory of the server of each project and of every --watch-process. */
  processMemory(): ProcessMemory[];
}

export interface ReapCounts {
  project: string;
  verdict: string;
  result: 'ok' | 'failed';
  bytes: number;
}

type Labels = Record<string, string>;
/** One gauge: its rows (labels → value) computed at scrape time from the last inventories. */
interface GaugeSpec {
  name: string;
  help: string;
  labels: string[];
  rows: (inventories: ProjectInventory[], memory: () => ProcessMemory[]) => Iterable<[Labels, number]>;
}

const sum = <T>(xs: readonly T[], f: (x: T) => number) => xs.reduce((s, x) => s + f(x), 0);
function* each<T>(inventories: ProjectInventory[], values: readonly T[], f: (inv: ProjectInventory, v: T) => Iterable<[Labels, number]>) {
  for (const inv of inventories) for (const v of values) yield* f(inv, v);
}
/** One series per project and source, for what each source's health says of its last read. */
const perSource = (value: (h: SourceHealth) => number | undefined) => (inventories: ProjectInventory[]) =>
  each(inventories, SOURCES, function* (inv, s): Iterable<[Labels, number]> {
    const h = inv.sources[s];
    const v = h ? value(h) : undefined;
    if (v !== undefined) yield [{ project: inv.root, source: s }, v];
  });

/** The gauges, in exposition order. */
const GAUGES: GaugeSpec[] = [
  {
    name: 'adapters',
    help: 'Adapter process trees by verdict (0 for verdicts with none).',
    labels: ['project', 'verdict'],
    rows: (invs) => each(invs, ADAPTER_VERDICTS, (inv, v) => [[{ project: inv.root, verdict: v }, inv.adapters.filter((a) => a.verdict === v).length]]),
  },
  {
    name: 'adapter_memory_bytes',
    help: 'Memory of adapter trees by verdict; kind rss or swap (leaked adapters get swapped out: RSS alone hides them).',
    labels: ['project', 'verdict', 'kind'],
    rows: (invs) =>
      each(invs, ADAPTER_VERDICTS, (inv, v) => {
        const trees = inv.adapters.filter((a) => a.verdict === v);
        return [
          [{ project: inv.root, verdict: v, kind: 'rss' }, sum(trees, (a) => a.rssBytes)],
          [{ project: inv.root, verdict: v, kind: 'swap' }, sum(trees, (a) => a.swapBytes)],
        ];
      }),
  },
  {
    name: 'sessions',
    help: 'Agent sessions (one CLI process each) inside adapter trees, by session verdict (0 for verdicts with none).',
    labels: ['project', 'verdict'],
    rows: (invs) => each(invs, SESSION_VERDICTS, (inv, v) => [[{ project: inv.root, verdict: v }, sessionCounts(inv)[v]!.count]]),
  },
  {
    name: 'session_memory_bytes',
    help: "Memory of agent sessions (a session's CLI and its descendants) by session verdict; kind rss or swap. Leaked sessions inside live adapters are what tree metrics cannot show.",
    labels: ['project', 'verdict', 'kind'],
    rows: (invs) =>
      each(invs, SESSION_VERDICTS, (inv, v) => {
        const c = sessionCounts(inv)[v]!;
        return [
          [{ project: inv.root, verdict: v, kind: 'rss' }, c.rssBytes],
          [{ project: inv.root, verdict: v, kind: 'swap' }, c.swapBytes],
        ];
      }),
  },
  {
    name: 'pidfiles',
    help: 'Pid files in the pids folder by verdict.',
    labels: ['project', 'verdict'],
    rows: (invs) => each(invs, PIDFILE_VERDICTS, (inv, v) => [[{ project: inv.root, verdict: v }, inv.pidFiles.filter((f) => f.verdict === v).length]]),
  },
  {
    name: 'stale_running_runs',
    help: 'Step runs still running under a terminal job.',
    labels: ['project'],
    rows: (invs) => invs.map((inv) => [{ project: inv.root }, inv.staleRunningRuns.length]),
  },
  {
    name: 'source_up',
    help: 'Whether a source was read in the last cycle (store down means no reaping).',
    labels: ['project', 'source'],
    rows: (invs) => each(invs, SOURCES, (inv, s) => [[{ project: inv.root, source: s }, inv.sources[s]?.ok === false ? 0 : inv.sources[s] ? 1 : 0]]),
  },
  {
    name: 'source_unreadable_entries',
    help: 'Entries a source listed but could not read in the last cycle (processes: pids whose files were unreadable; judged unknown, never dead, never signalled).',
    labels: ['project', 'source'],
    rows: perSource((h) => h.unreadable),
  },
  {
    name: 'source_duration_seconds',
    help: 'How long reading each source took in the last cycle.',
    labels: ['project', 'source'],
    rows: perSource((h) => h.durationSeconds),
  },
  {
    name: 'server_up',
    help: "Whether the project's stepwise server is alive (verified pid and start time).",
    labels: ['project'],
    rows: (invs) => invs.map((inv) => [{ project: inv.root }, inv.server.alive ? 1 : 0]),
  },
  {
    name: 'server_memory_bytes',
    help: 'Memory of the stepwise server (process="stepwise-server") and of --watch-process processes (project=""); kind rss or swap.',
    labels: ['project', 'process', 'kind'],
    rows: (_, memory) =>
      memory()
        .filter((m) => m.up)
        .flatMap((m): [Labels, number][] => [
          [{ project: m.project, process: m.process, kind: 'rss' }, m.rssBytes],
          [{ project: m.project, process: m.process, kind: 'swap' }, m.swapBytes],
        ]),
  },
  {
    name: 'server_memory_growth_bytes_per_hour',
    help: 'Least-squares slope of RSS+swap over the sliding window: a long-lived server that leaks by itself.',
    labels: ['project', 'process'],
    rows: (_, memory) =>
      memory()
        .filter((m) => m.up)
        .map((m): [Labels, number] => [{ project: m.project, process: m.process }, m.growthBytesPerHour]),
  },
];

export class WatchdogMetrics {
  readonly registry = new Registry();
  private readonly reaped: Counter<'project' | 'verdict' | 'result'>;
  private readonly reapedBytes: Counter<'project'>;
  private readonly pidfilesRemoved: Counter<'project'>;
  private readonly refusals: Counter<'project' | 'reason'>;
  private readonly cycleDuration: Histogram<string>;
  private readonly lastCycle: Gauge<string>;

  constructor(source: MetricsSource, opts: { defaultMetrics?: boolean; projects?: string[] } = {}) {
    const r = this.registry;
    const memory = () => source.processMemory();
    for (const g of GAUGES) {
      new Gauge({
        name: `${PREFIX}${g.name}`,
        help: g.help,
        labelNames: g.labels,
        registers: [r],
        collect() {
          this.reset();
          for (const [labels, value] of g.rows(source.inventories(), memory)) this.set(labels, value);
        },
      });
    }

    this.reaped = new Counter({
      name: `${PREFIX}reaped_total`,
      help: `Adapter trees reaped, by the verdict they had and the result (ok, failed); verdict="${SESSION_KILL_VERDICT}" counts session CLIs stopped inside live adapters.`,
      labelNames: ['project', 'verdict', 'result'],
      registers: [r],
    });
    this.reapedBytes = new Counter({ name: `${PREFIX}reaped_bytes_total`, help: 'Memory (RSS+swap) freed by reaping.', labelNames: ['project'], registers: [r] });
    this.pidfilesRemoved = new Counter({ name: `${PREFIX}pidfiles_removed_total`, help: 'Stale pid files removed.', labelNames: ['project'], registers: [r] });
    this.refusals = new Counter({
      name: `${PREFIX}refusals_total`,
      help: `Reaps refused or held back, by reason code (${REFUSAL_COUNTED.join(', ')}); waits (a grace, a paused job) are not counted.`,
      labelNames: ['project', 'reason'],
      registers: [r],
    });
    this.cycleDuration = new Histogram({
      name: `${PREFIX}cycle_duration_seconds`,
      help: 'Duration of a watchdog cycle (read, classify, plan, act).',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [r],
    });
    this.lastCycle = new Gauge({ name: `${PREFIX}last_cycle_timestamp_seconds`, help: 'When the last cycle finished (epoch seconds).', registers: [r] });

    // Counters start at 0 for every configured project, so rate() and alerts see a series.
    for (const project of opts.projects ?? []) {
      for (const v of REAP_COUNTER_VERDICTS) for (const result of ['ok', 'failed'] as const) this.reaped.inc({ project, verdict: v, result }, 0);
      this.reapedBytes.inc({ project }, 0);
      this.pidfilesRemoved.inc({ project }, 0);
      for (const reason of REFUSAL_COUNTED) this.refusals.inc({ project, reason }, 0);
    }
    if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: r, prefix: PREFIX });
  }

  recordReap(c: ReapCounts): void {
    this.reaped.inc({ project: c.project, verdict: c.verdict, result: c.result });
    if (c.result === 'ok' && c.bytes > 0) this.reapedBytes.inc({ project: c.project }, c.bytes);
  }

  recordPidFileRemoved(project: string): void {
    this.pidfilesRemoved.inc({ project });
  }

  /** A refusal or a re-verification skip; a wait (a grace, a paused job) is never counted. */
  recordRefusal(project: string, reason: string, n = 1): void {
    if ((WAIT_CODES as ReadonlySet<string>).has(reason)) return;
    this.refusals.inc({ project, reason }, n);
  }

  recordCycle(durationSeconds: number, endEpochSeconds: number): void {
    this.cycleDuration.observe(durationSeconds);
    this.lastCycle.set(endEpochSeconds);
  }

  metrics(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
