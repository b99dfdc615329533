// `guard install|uninstall|status [--python PATH]`: the in-process release guard.
import path from 'node:path';
import {
  GuardError,
  findPython,
  guardFilesState,
  inspectPython,
  installGuard,
  readGuardMarker,
  uninstallGuard,
  type PythonEnv,
} from '../../guard/python-env.js';
import type { ProcessPort } from '../../sources/process-port.js';
import { defaultProcessPort, processPortFor, processSourceOf } from '../../sources/default-port.js';
import { findProjectRoot, readServerPidFile } from '../../sources/project.js';
import { EXIT, UserError, type CliIO } from '../io.js';

/** The live server of the project found from the cwd or --project, if any: its argv and cwd. */
export function liveServer(opts: Record<string, unknown>, io: CliIO, processes: ProcessPort = defaultProcessPort()): { pid: number; argv: string[]; cwd: string | null; root: string } | null {
  let root: string;
  try {
    const given = (opts.project as string[] | undefined)?.[0];
    root = given ? path.resolve(given) : findProjectRoot(io.cwd);
  } catch {
    return null;
  }
  const { pidFile } = readServerPidFile(path.join(root, '.stepwise', 'server.pid'));
  if (!pidFile || processes.identity(pidFile.pid).kind !== 'live') return null;
  const argv = (processes.argv(pidFile.pid) ?? []).filter(Boolean); // [] when gone meanwhile
  return { pid: pidFile.pid, argv, cwd: processes.cwd(pidFile.pid), root };
}

export interface GuardStatus {
  python: string;
  how: string;
  pythonVersion: string;
  sitePackages: string;
  module: string;
  pth: string;
  installed: boolean;
  loadedInServer: {
    serverPid: number | null;
    marker: string | null;
    active: boolean | null;
    pid: number | null;
    reason: string | null;
    stepwiseVersion: string | null;
    /** Session closing (guard ≥ 0.2.0): true/false from the live server's marker; null when unknown (older guard, no marker, stale marker). */
    sessionClosing: boolean | null;
    sessionClosingReason: string | null;
  } | null;
}

export function guardStatus(env: PythonEnv, server: ReturnType<typeof liveServer>): GuardStatus {
  const files = guardFilesState(env);
  let loaded: GuardStatus['loadedInServer'] = null;
  if (server) {
    const dirs = [...new Set([server.cwd ? path.join(server.cwd, '.stepwise') : null, path.join(server.root, '.stepwise')].filter((d): d is string => d !== null))];
    const found = readGuardMarker(dirs);
    const m = found?.marker;
    const current = m ? m.pid === server.pid : false;
    loaded = {
      serverPid: server.pid,
      marker: found?.file ?? null,
      // The marker counts only when it was written by the running server.
      active: m ? m.pid === server.pid && m.active === true : false,
      pid: typeof m?.pid === 'number' ? m.pid : null,
      reason: m?.reason ?? (m ? null : 'no marker: the guard has not loaded in this server (restart it after installing)'),
      stepwiseVersion: m?.stepwise_version ?? null,
      sessionClosing: current && typeof m?.sessionClosing === 'boolean' ? m.sessionClosing && m.active === true : null,
      sessionClosingReason: current && typeof m?.sessionClosingReason === 'string' ? m.sessionClosingReason : null,
    };
  }
  return {
    python: env.python,
    how: env.how,
    pythonVersion: env.version,
    sitePackages: env.sitePackages,
    module: files.module,
    pth: files.pth,
    installed: files.module === 'current' && files.pth === 'current',
    loadedInServer: loaded,
  };
}

/** "closes sessions nothing can resume" / "session closing off: …" / "… unknown" for a loaded guard. */
export function sessionClosingText(l: NonNullable<GuardStatus['loadedInServer']>): string {
  if (l.sessionClosing === true) return 'session closing active (closes ACP sessions of released jobs and finished steps nothing can resume)';
  if (l.sessionClosing === false) return `session closing off${l.sessionClosingReason ? `: ${l.sessionClosingReason}` : ''}`;
  return 'session closing unknown: the loaded guard predates it (install the current one and restart the server)';
}

export function resolveEnv(opts: Record<string, unknown>, io: CliIO): { env: PythonEnv; server: ReturnType<typeof liveServer> } {
  // The process source the user asked for (--process-source), as every other command reads it.
  const source = processSourceOf(opts.processSource);
  if (typeof source === 'object') throw new UserError(source.error, EXIT.usage);
  const server = liveServer(opts, io, processPortFor(source, typeof opts.procRoot === 'string' ? opts.procRoot : undefined).port);
  try {
    const choice = findPython({ python: (opts.python as string | undefined) ?? null, env: io.env, serverArgv: server?.argv ?? null });
    return { env: inspectPython(choice), server };
  } catch (err) {
    if (err instanceof GuardError) throw new UserError(err.message, EXIT.usage);
    throw err;
  }
}

export default async function guard(opts: Record<string, unknown>, io: CliIO, args: string[]): Promise<number> {
  const { env, server } = resolveEnv(opts, io);
  const sub = args[0];
  try {
    if (sub === 'install') {
      const files = installGuard(env);
      io.stdout(`installed the release guard for ${env.python} (Python ${env.version}, found from ${env.how}):\n${files.map((f) => `  ${f}\n`).join('')}`);
      io.stdout('restart the stepwise server to load it; `stepwise-watchdog guard status` then shows it active\n');
      return EXIT.ok;
    }
    if (sub === 'uninstall') {
      const removed = uninstallGuard(env);
      io.stdout(removed.length ? `removed:\n${removed.map((f) => `  ${f}\n`).join('')}` : `the guard was not installed in ${env.sitePackages}\n`);
      if (guardFilesState(env).pth === 'other') io.stdout(`left ${path.join(env.sitePackages, 'stepwise_release_guard.pth')} alone: it is not ours\n`);
      return EXIT.ok;
    }
  } catch (err) {
    if (err instanceof GuardError) throw new UserError(err.message, EXIT.failed);
    throw err;
  }
  const status = guardStatus(env, server);
  if (opts.json) io.stdout(`${JSON.stringify(status, null, 2)}\n`);
  else {
    io.stdout(`python        ${status.python} (Python ${status.pythonVersion}, from ${status.how})\n`);
    io.stdout(`site-packages ${status.sitePackages}\n`);
    io.stdout(`installed     ${status.installed ? 'yes' : 'no'} (module ${status.module}, .pth ${status.pth})\n`);
    const l = status.loadedInServer;
    if (!l) io.stdout('server        none running: cannot tell whether the guard is loaded\n');
    else {
      io.stdout(`in server     ${l.active ? `active in pid ${l.serverPid}` : `not active in pid ${l.serverPid}`}${l.reason ? ` (${l.reason})` : ''}\n`);
      if (l.active) io.stdout(`sessions      ${sessionClosingText(l)}\n`);
    }
  }
  return EXIT.ok;
}
