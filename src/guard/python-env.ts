// Installing the in-process release guard (deploy/stepwise/stepwise_release_guard.py) into the
// Python environment stepwise runs in: the module and a one-line .pth go into that
// environment's site-packages (Python runs *.pth lines at startup).

import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const MODULE_FILE = 'stepwise_release_guard.py';
export const PTH_FILE = 'stepwise_release_guard.pth';
export const GUARD_MARKER = 'release-guard.json';

export class GuardError extends Error {}

/** The guard's files shipped with this package (deploy/stepwise/). */
export function guardSources(): { module: string; pth: string } {
  // dist/guard/python-env.js or src/guard/python-env.ts → <package>/deploy/stepwise
  const dir = fileURLToPath(new URL('../../deploy/stepwise/', import.meta.url));
  const module = path.join(dir, MODULE_FILE);
  const pth = path.join(dir, PTH_FILE);
  if (!fs.existsSync(module) || !fs.existsSync(pth)) throw new GuardError(`the guard files are missing from this package (${dir})`);
  return { module, pth };
}

/** The interpreter named on a script's `#!` line (uv/pip console scripts point at their venv's python). */
export function shebangInterpreter(script: string): string | null {
  try {
    const fd = fs.openSync(script, 'r');
    try {
      const buf = Buffer.alloc(512);
      const n = fs.readSync(fd, buf, 0, buf.length, 0);
      const first = buf.subarray(0, n).toString('utf8').split('\n')[0] ?? '';
      if (!first.startsWith('#!')) return null;
      const parts = first.slice(2).trim().split(/\s+/);
      if (parts[0]?.endsWith('/env')) return parts[1] ?? null;
      return parts[0] ?? null;
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return null;
  }
}

function onPath(name: string, env: NodeJS.ProcessEnv): string | null {
  for (const dir of (env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const file = path.join(dir, name);
    try {
      fs.accessSync(file, fs.constants.X_OK);
      return file;
    } catch {
      // not here
    }
  }
  return null;
}

export interface PythonChoice {
  python: string;
  how: string;
}

/**
 * Which Python runs stepwise: --python, else the `stepwise` launcher's interpreter on PATH,
 * else the live server's (its argv[0] when it is a python, or its script's shebang). The
 * server's /proc/<pid>/exe is not used: it resolves a venv's python to the base interpreter.
 */
export function findPython(opts: { python?: string | null; env: NodeJS.ProcessEnv; serverArgv?: string[] | null }): PythonChoice {
  if (opts.python) return { python: opts.python, how: '--python' };
  const launcher = onPath('stepwise', opts.env);
  if (launcher) {
    const interp = shebangInterpreter(launcher);
    if (interp) return { python: interp, how: `the shebang of ${launcher}` };
  }
  const argv = opts.serverArgv ?? [];
  if (argv[0] && /python[0-9.]*$/.test(path.basename(argv[0])) && path.isAbsolute(argv[0])) {
    return { python: argv[0], how: "the live server's interpreter" };
  }
  if (argv[1]) {
    const interp = shebangInterpreter(argv[1]);
    if (interp) return { python: interp, how: `the shebang of the live server's script ${argv[1]}` };
  }
  throw new GuardError('cannot find the Python stepwise runs with: no `stepwise` on PATH and no live server (use --python PATH)');
}

export interface PythonEnv {
  python: string;
  how: string;
  version: string;
  prefix: string;
  sitePackages: string;
}

export function inspectPython(choice: PythonChoice): PythonEnv {
  let out: string;
  try {
    out = execFileSync(
      choice.python,
      ['-I', '-c', 'import sys, sysconfig, json; print(json.dumps({"version": sys.version.split()[0], "prefix": sys.prefix, "purelib": sysconfig.get_paths()["purelib"]}))'],
      { encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'pipe'] },
    );
  } catch (err) {
    throw new GuardError(`${choice.python} (from ${choice.how}) does not run: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message.split('\n')[0]}`);
  }
  const info = JSON.parse(out) as { version: string; prefix: string; purelib: string };
  return { python: choice.python, how: choice.how, version: info.version, prefix: info.prefix, sitePackages: info.purelib };
}

function sha(file: string): string | null {
  try {
    return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
  } catch {
    return null;
  }
}

export interface GuardFilesState {
  sitePackages: string;
  module: 'absent' | 'current' | 'other-version';
  pth: 'absent' | 'current' | 'other';
}

export function guardFilesState(env: PythonEnv): GuardFilesState {
  const src = guardSources();
  const mod = path.join(env.sitePackages, MODULE_FILE);
  const pth = path.join(env.sitePackages, PTH_FILE);
  const modHash = sha(mod);
  const pthHash = sha(pth);
  return {
    sitePackages: env.sitePackages,
    module: modHash === null ? 'absent' : modHash === sha(src.module) ? 'current' : 'other-version',
    pth: pthHash === null ? 'absent' : pthHash === sha(src.pth) ? 'current' : 'other',
  };
}

export function installGuard(env: PythonEnv): string[] {
  const src = guardSources();
  try {
    if (!fs.statSync(env.sitePackages).isDirectory()) throw new GuardError(`${env.sitePackages} (site-packages of ${env.python}) is not a folder`);
    fs.accessSync(env.sitePackages, fs.constants.W_OK);
  } catch (err) {
    if (err instanceof GuardError) throw err;
    throw new GuardError(`cannot write to ${env.sitePackages} (site-packages of ${env.python}): run as the user who owns it`);
  }
  const done: string[] = [];
  // The module first, the .pth that imports it last: Python never sees a .pth without its module.
  for (const [from, name] of [
    [src.module, MODULE_FILE],
    [src.pth, PTH_FILE],
  ] as const) {
    const to = path.join(env.sitePackages, name);
    const tmp = `${to}.tmp-${process.pid}`;
    try {
      fs.copyFileSync(from, tmp);
      fs.renameSync(tmp, to);
    } catch (err) {
      fs.rmSync(tmp, { force: true });
      throw new GuardError(`cannot write ${to}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    done.push(to);
  }
  return done;
}

/** Remove the guard's files; a .pth that is not ours is left alone. Also drops the bytecode cache. */
export function uninstallGuard(env: PythonEnv): string[] {
  const state = guardFilesState(env);
  const removed: string[] = [];
  const rm = (file: string) => {
    try {
      fs.unlinkSync(file);
      removed.push(file);
    } catch {
      // absent
    }
  };
  if (state.pth !== 'other') rm(path.join(env.sitePackages, PTH_FILE));
  if (state.module !== 'absent') rm(path.join(env.sitePackages, MODULE_FILE));
  const cache = path.join(env.sitePackages, '__pycache__');
  try {
    for (const f of fs.readdirSync(cache)) if (f.startsWith('stepwise_release_guard.')) rm(path.join(cache, f));
  } catch {
    // no cache
  }
  return removed;
}

export interface GuardMarker {
  guard?: string;
  version?: string;
  pid?: number;
  started_at?: string;
  stepwise_version?: string;
  active?: boolean;
  reason?: string;
  /** Guard ≥ 0.2.0: whether it closes ACP sessions nothing can resume (absent in older guards). */
  sessionClosing?: boolean;
  /** Why session closing is off (null while it is on). */
  sessionClosingReason?: string | null;
}

/** The marker the guard writes when it loads in a server (`.stepwise/release-guard.json`). */
export function readGuardMarker(stepwiseDirs: string[]): { file: string; marker: GuardMarker } | null {
  for (const dir of stepwiseDirs) {
    const file = path.join(dir, GUARD_MARKER);
    try {
      const st = fs.lstatSync(file);
      if (!st.isFile() || st.size > 65536) continue;
      const marker = JSON.parse(fs.readFileSync(file, 'utf8')) as GuardMarker;
      if (typeof marker === 'object' && marker !== null) return { file, marker };
    } catch {
      // absent or unreadable
    }
  }
  return null;
}
