// The sidecar assembled: sessions, metrics, executor, watchdog loop, file watcher and the HTTP
// app (not listening: `run` listens). Built from one validated Config.

import type { Logger } from 'pino';
import type { Config } from '../config/schema.js';
import { runtimeFromConfig } from '../session/runtime.js';
import { buildServer, type WatchdogHttp } from '../http/app.js';
import { WatchdogMetrics } from '../metrics/registry.js';
import { watchedProcess } from '../sources/watched-process.js';
import { sessionsFromConfig, type ProjectSessionOptions } from '../session/project-session.js';
import { createExecutor, explicitReap } from './executor.js';
import { ChangeWatcher } from './watch.js';
import { Watchdog } from './watchdog.js';

export interface Daemon {
  watchdog: Watchdog;
  app: WatchdogHttp;
  metrics: WatchdogMetrics;
  auditLogPath: string;
  /** First cycle now, then on schedule; file watching on. */
  start(): void;
  /** Finish the cycle (and kill) in flight, stop watching, close the app and the sessions. */
  stop(): Promise<void>;
}

export class DaemonConfigError extends Error {}

export async function createDaemon(
  config: Config,
  deps: {
    roots: string[];
    logger: Logger;
    env: NodeJS.ProcessEnv;
    token: string | null;
    defaultMetrics?: boolean;
    debounceMs?: number;
    storeOptions?: ProjectSessionOptions['storeOptions'];
  },
): Promise<Daemon> {
  const runtime = runtimeFromConfig(config);
  const { policy, planContext } = runtime;
  const sessions = sessionsFromConfig(config, deps.roots, deps.env, runtime, deps.storeOptions);
  const executor = createExecutor({ auditLog: config.auditLog, killWaitSeconds: config.killWait, logger: deps.logger, planContext, gc: config.gc && !config.observeOnly });
  if (!config.observeOnly) {
    // No action without an audit trail: an unwritable log is refused at start, not at the first reap.
    try {
      executor.audit.probe();
    } catch (err) {
      for (const s of sessions) s.close();
      throw new DaemonConfigError(`--audit-log ${executor.audit.path}: ${(err as Error).message}`);
    }
  }
  // eslint-disable-next-line prefer-const
  let watchdog: Watchdog;
  const metrics = new WatchdogMetrics(
    { inventories: () => watchdog.inventories(), processMemory: () => watchdog.processMemory() },
    { projects: sessions.map((s) => s.root), defaultMetrics: deps.defaultMetrics ?? true },
  );
  watchdog = new Watchdog({
    sessions,
    policy,
    intervalSeconds: config.interval,
    observeOnly: config.observeOnly,
    reapOrphans: config.orphans,
    reapSessions: config.reapSessions,
    gc: config.gc,
    growthWindowSeconds: config.growthWindow,
    planContext,
    executor,
    metrics,
    logger: deps.logger,
    watched: config.watchProcess.map((spec) => watchedProcess(spec, runtime.processes)),
    ...(deps.debounceMs !== undefined ? { debounceMs: deps.debounceMs } : {}),
  });
  const watcher = new ChangeWatcher((reason) => watchdog.poke(reason), deps.logger);
  watchdog.onCycle = (inventories) => watcher.update(ChangeWatcher.pathsFor(inventories));

  const app = buildServer({
    metrics,
    inventories: () => watchdog.inventories(),
    cycleStatus: () => watchdog.status,
    poke: (reason) => watchdog.poke(reason),
    reap: (req) => explicitReap(req, { watchdog, sessions, policy, planContext, executor, observeOnly: config.observeOnly }),
    token: deps.token,
    readyMaxAgeSeconds: config.interval * 3 + 30,
    logError: (err, msg) => deps.logger.error({ err }, msg),
  });

  let stopped: Promise<void> | null = null;
  return {
    watchdog,
    app,
    metrics,
    auditLogPath: executor.audit.path,
    start: () => watchdog.start(),
    stop() {
      stopped ??= (async () => {
        await watchdog.stop(); // the kill in flight finishes and is audited (appends are fsynced)
        await watcher.close();
        await app.close();
        for (const s of sessions) s.close();
      })();
      return stopped;
    },
  };
}
