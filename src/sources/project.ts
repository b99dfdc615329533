// Finding a stepwise project and its files, like stepwise does: walk up from the cwd to the
// first folder holding `.stepwise/`.

import fs from 'node:fs';
import path from 'node:path';
import type { ServerPidFile } from '../core/types.js';
import { errText, isCode } from './pid-files.js';

export class ProjectError extends Error {}

export function findProjectRoot(start: string): string {
  let dir = path.resolve(start);
  for (;;) {
    if (isDir(path.join(dir, '.stepwise'))) return dir;
    const parent = path.dirname(dir);
    if (parent === dir) {
      throw new ProjectError(`no stepwise project found: no .stepwise/ folder in ${path.resolve(start)} or any parent (use --project DIR)`);
    }
    dir = parent;
  }
}

/** A --project value: the folder holding `.stepwise/` (or the `.stepwise` folder itself). */
export function checkProjectDir(dir: string): string {
  const abs = path.resolve(dir);
  if (path.basename(abs) === '.stepwise' && isDir(abs)) return path.dirname(abs);
  if (!fs.existsSync(abs)) throw new ProjectError(`--project ${dir}: no such folder`);
  if (!isDir(path.join(abs, '.stepwise'))) throw new ProjectError(`--project ${dir}: not a stepwise project (no .stepwise/ folder)`);
  return abs;
}

function isDir(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

export interface ProjectPaths {
  root: string;
  stepwiseDir: string;
  serverPidPath: string;
  dbPath: string;
  /** Explicit --pids-dir, if any; otherwise resolved per cycle from the live server's cwd. */
  pidsDirOverride: string | null;
}

export function projectPaths(root: string, opts: { db?: string | null; pidsDir?: string | null; env?: NodeJS.ProcessEnv }): ProjectPaths {
  const stepwiseDir = path.join(root, '.stepwise');
  const envDb = opts.env?.STEPWISE_DB;
  return {
    root,
    stepwiseDir,
    serverPidPath: path.join(stepwiseDir, 'server.pid'),
    dbPath: path.resolve(root, opts.db ?? (envDb && envDb.length > 0 ? envDb : path.join(stepwiseDir, 'stepwise.db'))),
    pidsDirOverride: opts.pidsDir ? path.resolve(opts.pidsDir) : null,
  };
}

/**
 * The engine writes pid files relative to its cwd: `<server cwd>/.stepwise/pids` while the
 * server lives, else `<project>/.stepwise/pids`.
 */
export function resolvePidsDir(paths: ProjectPaths, serverCwd: string | null): string {
  if (paths.pidsDirOverride) return paths.pidsDirOverride;
  if (serverCwd) return path.join(serverCwd, '.stepwise', 'pids');
  return path.join(paths.stepwiseDir, 'pids');
}

/** Pure: `server.pid` content. */
export function parseServerPidFile(text: string): ServerPidFile | { error: string } {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    return { error: 'server.pid is not JSON' };
  }
  if (typeof data !== 'object' || data === null || Array.isArray(data)) return { error: 'server.pid is not a JSON object' };
  const d = data as Record<string, unknown>;
  if (typeof d.pid !== 'number' || !Number.isSafeInteger(d.pid) || d.pid <= 1) {
    return { error: `server.pid has no valid "pid": ${JSON.stringify(d.pid)?.slice(0, 40)}` };
  }
  return {
    pid: d.pid,
    ...(typeof d.port === 'number' ? { port: d.port } : {}),
    ...(typeof d.url === 'string' ? { url: d.url } : {}),
    ...(typeof d.started_at === 'string' ? { startedAt: d.started_at } : {}),
  };
}

export function readServerPidFile(file: string): { pidFile: ServerPidFile | null; problem?: string } {
  let text: string;
  try {
    const st = fs.lstatSync(file);
    if (!st.isFile()) return { pidFile: null, problem: `${file} is not a regular file` };
    if (st.size > 65536) return { pidFile: null, problem: `${file} is too large (${st.size} bytes)` };
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if (isCode(err, 'ENOENT')) return { pidFile: null, problem: 'no server.pid (server not running)' };
    return { pidFile: null, problem: `cannot read ${file}: ${errText(err)}` };
  }
  const parsed = parseServerPidFile(text);
  if ('error' in parsed) return { pidFile: null, problem: parsed.error };
  return { pidFile: parsed };
}
