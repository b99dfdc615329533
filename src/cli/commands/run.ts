// `run`: the sidecar. Cycles on an interval, on file changes and on pokes; serves /metrics,
// /healthz, /readyz and the API; SIGTERM/SIGINT finish the kill in flight, write the audit,
// close the server and exit 0.

import fs from 'node:fs';
import pino from 'pino';
import { DaemonConfigError, createDaemon } from '../../daemon/daemon.js';
import { configFrom, projectRoots } from '../context.js';
import { EXIT, UserError, type CliIO } from '../io.js';

export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h);
}

export function readToken(file: string): string {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new UserError(`--token-file ${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  const token = text.trim();
  if (token.length < 16) throw new UserError(`--token-file ${file}: the token must be at least 16 characters`);
  return token;
}

export default async function run(opts: Record<string, unknown>, io: CliIO): Promise<number> {
  const config = configFrom(opts, io);
  const token = config.tokenFile ? readToken(config.tokenFile) : null;
  const roots = projectRoots(config, io);
  if (roots.length > 1 && (config.db || config.pidsDir)) throw new UserError('--db and --pids-dir apply to a single --project');
  const logger = pino({ level: config.logLevel, base: { name: 'stepwise-watchdog' } });

  let daemon;
  try {
    daemon = await createDaemon(config, { roots, logger, env: io.env, token });
  } catch (err) {
    if (err instanceof DaemonConfigError) throw new UserError(err.message);
    throw err;
  }

  const sep = config.listen.lastIndexOf(':');
  const host = config.listen.slice(0, sep).replace(/^\[|\]$/g, '');
  const port = Number(config.listen.slice(sep + 1));
  if (!isLoopback(host)) {
    logger.warn({ listen: config.listen }, 'listening beyond loopback: /metrics and /api/inventory are readable by anyone who can reach this address');
    io.stderr(`stepwise-watchdog: warning: listening on ${config.listen}, beyond loopback\n`);
  }
  let address;
  try {
    address = await daemon.app.listen({ host, port });
  } catch (err) {
    await daemon.stop();
    throw new UserError(`--listen ${config.listen}: cannot listen (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  logger.info(
    {
      listen: `${address.address}:${address.port}`,
      projects: roots,
      observeOnly: config.observeOnly,
      reapOrphans: config.orphans,
      gc: config.gc,
      interval: config.interval,
      terminalGrace: config.terminalGrace,
      spawnGrace: config.spawnGrace,
      auditLog: daemon.auditLogPath,
    },
    'watchdog started',
  );
  daemon.start();

  await new Promise<void>((resolve) => {
    if (io.stopSignal.aborted) resolve();
    else io.stopSignal.addEventListener('abort', () => resolve(), { once: true });
  });
  logger.info({ signal: String(io.stopSignal.reason ?? 'stop') }, 'stopping: finishing the cycle in flight');
  await daemon.stop();
  logger.info('stopped');
  return EXIT.ok;
}
