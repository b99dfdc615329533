// Shared by project-reading commands: options → validated config → project sessions.

import { loadConfig, type Config } from '../config/schema.js';
import { sessionsFromConfig, type ProjectSession } from '../daemon/collect.js';
import { checkProjectDir, findProjectRoot } from '../sources/project.js';
import { UserError, type CliIO } from './io.js';

/** commander option names → config keys (only those the user gave). */
export function flagsFromOptions(opts: Record<string, unknown>): Record<string, unknown> {
  const map: Record<string, string> = { marker: 'markers' };
  const skip = new Set(['config', 'json', 'all', 'yes', 'force', 'keep', 'holdMb', 'manifest', 'job', 'pid', 'allLeaked', 'sessions', 'python', 'actor']);
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(opts)) {
    if (v === undefined || skip.has(k)) continue;
    out[map[k] ?? k] = v;
  }
  return out;
}

export function configFrom(opts: Record<string, unknown>, io: CliIO): Config {
  return loadConfig({ flags: flagsFromOptions(opts), env: io.env, file: (opts.config as string | undefined) ?? io.env.STEPWISE_WATCHDOG_CONFIG ?? null });
}

export function projectRoots(config: Config, io: CliIO): string[] {
  if (config.project.length > 0) return [...new Set(config.project.map((p) => checkProjectDir(p)))];
  return [findProjectRoot(io.cwd)];
}

export function openSessions(config: Config, io: CliIO): ProjectSession[] {
  const roots = projectRoots(config, io);
  if (roots.length > 1 && (config.db || config.pidsDir)) {
    // One --db/--pids-dir cannot belong to several projects.
    throw new UserError('--db and --pids-dir apply to a single --project');
  }
  return sessionsFromConfig(config, roots, io.env);
}
