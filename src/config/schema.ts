// One schema for every option: flags, env vars (STEPWISE_WATCHDOG_*) and an optional JSON
// config file are merged (flags > env > file > defaults) and validated here, once, at the edge.
// Errors quote the bad value and say where it came from.

import fs from 'node:fs';
import { z } from 'zod';
import { DEFAULT_POLICY, type Policy } from '../core/types.js';
import { PROCESS_SOURCES } from '../sources/default-port.js';
import { DEFAULT_PROC_ROOT } from '../sources/processes.js';

/** A decimal number of seconds as text (flags, env) or a number (config file); anything else stays as it is and fails. */
const secondsValue = (v: unknown): unknown => (typeof v === 'string' && /^\s*-?\d+(\.\d+)?\s*$/.test(v) ? Number(v) : v);

const seconds = (name: string, min?: { value: number; message: string }) =>
  z.preprocess(
    secondsValue,
    z
      .number({ invalid_type_error: `${name} must be a number of seconds`, required_error: `${name} must be a number of seconds` })
      .finite()
      .min(min?.value ?? 0, min?.message ?? `${name} must be ≥ 0`)
      .max(7 * 86400, `${name} must be at most a week`),
  );

const listen = z
  .string()
  .regex(/^(\[[0-9a-fA-F:]+\]|[^:\s]+):(\d{1,5})$/, 'must be HOST:PORT, e.g. 127.0.0.1:9477')
  .refine((v) => {
    const port = Number(v.slice(v.lastIndexOf(':') + 1));
    return port >= 0 && port <= 65535;
  }, 'port must be 0..65535');

const watchProcess = z
  .string()
  .regex(/^[A-Za-z_][A-Za-z0-9_.-]{0,62}=.+$/, 'must be NAME=PIDFILE (NAME: letters, digits, _ . -)');

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

export const configSchema = z
  .object({
    project: z.array(z.string().min(1)).default([]),
    db: z.string().min(1).nullable().default(null),
    pidsDir: z.string().min(1).nullable().default(null),
    procRoot: z.string().min(1).default(DEFAULT_PROC_ROOT),
    processSource: z.enum(PROCESS_SOURCES, { errorMap: () => ({ message: `must be one of ${PROCESS_SOURCES.join(', ')}` }) }).default('auto'),
    markers: z.array(z.string().min(1, 'a marker cannot be empty')).min(1).default(DEFAULT_POLICY.markers),
    subreapers: z.array(z.string().min(1)).default(DEFAULT_POLICY.subreapers),
    spawnGrace: seconds('spawn grace').default(DEFAULT_POLICY.spawnGraceSeconds),
    terminalGrace: seconds('terminal grace').default(DEFAULT_POLICY.terminalGraceSeconds),
    clockTolerance: z.coerce.number().finite().min(0).max(60).default(DEFAULT_POLICY.clockToleranceSeconds),
    killWait: seconds('kill wait').default(5),
    storeBusyMs: z.coerce.number().int().min(0).max(60_000).default(2000),
    interval: seconds('interval', { value: 0.2, message: 'interval must be at least 0.2 s' }).default(15),
    listen: listen.default('127.0.0.1:9477'),
    observeOnly: z.boolean().default(false),
    orphans: z.boolean().default(true),
    /** Stop leaked sessions' CLIs inside adapters that live on for other jobs (the daemon). */
    reapSessions: z.boolean().default(true),
    gc: z.boolean().default(true),
    tokenFile: z.string().min(1).nullable().default(null),
    auditLog: z.string().min(1).nullable().default(null),
    logLevel: z.enum(LOG_LEVELS).default('info'),
    watchProcess: z.array(watchProcess).default([]),
    allowOtherUids: z.boolean().default(false),
    growthWindow: seconds('growth window', { value: 60, message: 'growth window must be at least 60 s' }).default(3600),
    /** Seconds between full sweeps of the process table (cycles in between read only what can matter); 0: every cycle. */
    fullSweepSeconds: seconds('full sweep').default(60),
  })
  .strict();

export type Config = z.infer<typeof configSchema>;

/**
 * The CLI's flag and help text of each option, beside the schema whose defaults they print: the
 * help says `(default …)` from the schema itself, so a default is written once. `defaultText`
 * is for defaults computed at run time (they are null in the schema).
 */
const OPTION_TEXT = {
  project: { flag: '--project <dir>', help: 'stepwise project folder (repeatable)', defaultText: 'walk up from the cwd' },
  db: { flag: '--db <path>', help: 'job store', defaultText: '<project>/.stepwise/stepwise.db, or $STEPWISE_DB' },
  pidsDir: { flag: '--pids-dir <dir>', help: 'pid files folder', defaultText: '<server cwd>/.stepwise/pids' },
  processSource: { flag: '--process-source <source>', help: `where processes are read: ${PROCESS_SOURCES.join('|')} (auto: /proc where mounted, else ps)` },
  markers: { flag: '--marker <text>', help: 'adapter marker pattern (repeatable; replaces the defaults)' },
  spawnGrace: { flag: '--spawn-grace <seconds>', help: 'age before an unreferenced server child is called unreferenced' },
  terminalGrace: { flag: '--terminal-grace <seconds>', help: 'time a leaked tree must have been leaked before it is reaped' },
  killWait: { flag: '--kill-wait <seconds>', help: 'wait between SIGTERM and SIGKILL' },
  auditLog: { flag: '--audit-log <file>', help: 'JSONL audit trail', defaultText: '~/.local/state/stepwise-watchdog/audit.jsonl' },
  allowOtherUids: { flag: '--allow-other-uids', help: 'allow signalling processes of another uid (off by default)' },
  interval: { flag: '--interval <seconds>', help: 'seconds between cycles' },
  listen: { flag: '--listen <host:port>', help: 'HTTP listen address' },
  observeOnly: { flag: '--observe-only', help: 'never reap or remove anything: metrics and API only' },
  orphans: { flag: '--no-orphans', help: 'do not reap orphaned trees' },
  reapSessions: { flag: '--no-reap-sessions', help: "do not stop leaked sessions' CLIs inside live adapters" },
  gc: { flag: '--no-gc', help: 'do not remove stale pid files' },
  tokenFile: { flag: '--token-file <file>', help: 'bearer token for POST /api/reap (disabled without it)' },
  logLevel: { flag: '--log-level <level>', help: LOG_LEVELS.join('|') },
  watchProcess: { flag: '--watch-process <name=pidfile>', help: 'also export memory and growth of another long-lived process (repeatable)' },
  growthWindow: { flag: '--growth-window <seconds>', help: 'window of the server memory growth slope' },
  fullSweepSeconds: { flag: '--full-sweep-seconds <seconds>', help: 'seconds between full process-table sweeps; cycles in between read only the processes that can matter (0: every cycle)' },
} satisfies Partial<Record<keyof Config, { flag: string; help: string; defaultText?: string }>>;

export type OptionKey = keyof typeof OPTION_TEXT;

/** commander's (flags, description) for a config key; `help` replaces the text (same default). */
export function optionText(key: OptionKey, help?: string): [string, string] {
  const t: { flag: string; help: string; defaultText?: string } = OPTION_TEXT[key];
  const field = configSchema.shape[key] as z.ZodTypeAny;
  const value: unknown = field instanceof z.ZodDefault ? (field._def.defaultValue as () => unknown)() : undefined;
  // Negated switches (--no-gc) and on/off flags say what they do; scalars print their default.
  const shown = t.defaultText ?? (typeof value === 'number' || typeof value === 'string' ? String(value) : null);
  return [t.flag, shown === null ? (help ?? t.help) : `${help ?? t.help} (default ${shown})`];
}


export type ConfigInput = z.input<typeof configSchema>;

export class ConfigError extends Error {}

/** Env var names: STEPWISE_WATCHDOG_TERMINAL_GRACE etc. Lists are comma-separated. */
const ENV_KEYS: Record<string, keyof ConfigInput> = {
  STEPWISE_WATCHDOG_PROJECT: 'project',
  STEPWISE_WATCHDOG_PIDS_DIR: 'pidsDir',
  STEPWISE_WATCHDOG_PROC_ROOT: 'procRoot',
  STEPWISE_WATCHDOG_PROCESS_SOURCE: 'processSource',
  STEPWISE_WATCHDOG_MARKERS: 'markers',
  STEPWISE_WATCHDOG_SUBREAPERS: 'subreapers',
  STEPWISE_WATCHDOG_SPAWN_GRACE: 'spawnGrace',
  STEPWISE_WATCHDOG_TERMINAL_GRACE: 'terminalGrace',
  STEPWISE_WATCHDOG_KILL_WAIT: 'killWait',
  STEPWISE_WATCHDOG_INTERVAL: 'interval',
  STEPWISE_WATCHDOG_LISTEN: 'listen',
  STEPWISE_WATCHDOG_OBSERVE_ONLY: 'observeOnly',
  STEPWISE_WATCHDOG_ORPHANS: 'orphans',
  STEPWISE_WATCHDOG_REAP_SESSIONS: 'reapSessions',
  STEPWISE_WATCHDOG_GC: 'gc',
  STEPWISE_WATCHDOG_TOKEN_FILE: 'tokenFile',
  STEPWISE_WATCHDOG_AUDIT_LOG: 'auditLog',
  STEPWISE_WATCHDOG_LOG_LEVEL: 'logLevel',
  STEPWISE_WATCHDOG_WATCH_PROCESS: 'watchProcess',
  STEPWISE_WATCHDOG_ALLOW_OTHER_UIDS: 'allowOtherUids',
  STEPWISE_WATCHDOG_GROWTH_WINDOW: 'growthWindow',
  STEPWISE_WATCHDOG_FULL_SWEEP_SECONDS: 'fullSweepSeconds',
  // stepwise's own variable for the store path.
  STEPWISE_DB: 'db',
};
const LIST_KEYS = new Set<keyof ConfigInput>(['project', 'markers', 'subreapers', 'watchProcess']);
const BOOL_KEYS = new Set<keyof ConfigInput>(['observeOnly', 'orphans', 'reapSessions', 'gc', 'allowOtherUids']);

function fromEnv(env: NodeJS.ProcessEnv): { values: Record<string, unknown>; origin: Record<string, string> } {
  const values: Record<string, unknown> = {};
  const origin: Record<string, string> = {};
  for (const [name, key] of Object.entries(ENV_KEYS)) {
    const raw = env[name];
    if (raw === undefined || raw === '') continue;
    origin[key] = `env ${name}`;
    if (LIST_KEYS.has(key)) values[key] = raw.split(',').map((s) => s.trim()).filter(Boolean);
    else if (BOOL_KEYS.has(key)) {
      if (!/^(1|0|true|false|yes|no)$/i.test(raw)) throw new ConfigError(`env ${name}=${JSON.stringify(raw)}: must be true or false`);
      values[key] = /^(1|true|yes)$/i.test(raw);
    } else values[key] = raw;
  }
  return { values, origin };
}

function fromFile(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`--config ${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  try {
    const data: unknown = JSON.parse(text);
    if (typeof data !== 'object' || data === null || Array.isArray(data)) throw new Error('not an object');
    return data as Record<string, unknown>;
  } catch (err) {
    throw new ConfigError(`--config ${file}: not a JSON object (${(err as Error).message})`);
  }
}

/** Merge and validate. `flags` holds only what the user gave on the command line. */
export function loadConfig(opts: { flags: Record<string, unknown>; env?: NodeJS.ProcessEnv; file?: string | null }): Config {
  const env = fromEnv(opts.env ?? {});
  const file = opts.file ? fromFile(opts.file) : {};
  const origin: Record<string, string> = {};
  for (const k of Object.keys(file)) origin[k] = `config file ${opts.file}`;
  Object.assign(origin, env.origin);
  const flags = Object.fromEntries(Object.entries(opts.flags).filter(([, v]) => v !== undefined));
  // Repeatable flags are singular on the command line (--marker X --marker Y).
  const flagName: Record<string, string> = { markers: '--marker' };
  for (const k of Object.keys(flags)) origin[k] = flagName[k] ?? `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
  const merged = { ...file, ...env.values, ...flags };
  const result = configSchema.safeParse(merged);
  if (result.success) return result.data;
  const issue = result.error.issues[0]!;
  const key = String(issue.path[0] ?? '');
  if (issue.code === 'unrecognized_keys') {
    throw new ConfigError(`unknown option${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => JSON.stringify(k)).join(', ')} in ${opts.file ? `config file ${opts.file}` : 'options'}`);
  }
  let value: unknown = merged[key as keyof typeof merged];
  if (Array.isArray(value) && typeof issue.path[1] === 'number') value = value[issue.path[1]];
  const where = origin[key] ?? key;
  // Flags and env vars name the value themselves; a config file needs the key too.
  const what = where.startsWith('config file') ? `${where}: "${key}" ${JSON.stringify(value)}` : `${where} ${JSON.stringify(value)}`;
  throw new ConfigError(`${what}: ${issue.message}`);
}

export function policyFromConfig(c: Config): Policy {
  return {
    markers: c.markers,
    spawnGraceSeconds: c.spawnGrace,
    terminalGraceSeconds: c.terminalGrace,
    clockToleranceSeconds: c.clockTolerance,
    subreapers: c.subreapers,
  };
}
