// The pid-files source: `.stepwise/pids/acp-<pid>.json`, `{"pid": <int>, "agent": "<name>"}`.
// Anything else (bad JSON, wrong types, a huge file, a symlink, not a regular file, a name that
// disagrees with the content) is `invalid`: reported, never fatal, never followed.

import fs from 'node:fs';
import path from 'node:path';
import type { PidFileEntry, SourceHealth } from '../core/types.js';

export const PID_FILE_NAME = /^acp-(\d+)\.json$/;
const CANDIDATE_NAME = /^acp-.*\.json$/;
/** The engine writes ~35 bytes; anything past this is not one of its files. */
export const MAX_PID_FILE_BYTES = 4096;

export interface ParsedPidFile {
  pid: number;
  agent: string | null;
}

/** Pure: the content of a pid file, or why it is not one. */
export function parsePidFile(text: string, expectedPid: number | null): ParsedPidFile | { error: string } {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    return { error: 'not JSON' };
  }
  if (typeof data !== 'object' || data === null || Array.isArray(data)) return { error: 'not a JSON object' };
  const { pid, agent } = data as Record<string, unknown>;
  if (typeof pid !== 'number' || !Number.isSafeInteger(pid) || pid <= 1) {
    return { error: `"pid" is not a process id: ${JSON.stringify(pid)?.slice(0, 40)}` };
  }
  if (agent !== undefined && agent !== null && typeof agent !== 'string') {
    return { error: `"agent" is not a string: ${JSON.stringify(agent).slice(0, 40)}` };
  }
  if (expectedPid !== null && pid !== expectedPid) return { error: `name says ${expectedPid}, content says ${pid}` };
  return { pid, agent: typeof agent === 'string' ? agent : null };
}

export interface PidFilesRead {
  entries: PidFileEntry[];
  health: SourceHealth;
}

/** Read every `acp-*.json` directly inside `dir`. A missing folder is fine (no adapters yet). */
export function readPidFiles(dir: string, clock: () => number = () => performance.now()): PidFilesRead {
  const t0 = clock();
  const done = (entries: PidFileEntry[], error?: string): PidFilesRead => ({
    entries,
    health: { ok: error === undefined, ...(error ? { error } : {}), durationSeconds: (clock() - t0) / 1000 },
  });
  let dirStat: fs.Stats;
  try {
    dirStat = fs.lstatSync(dir);
  } catch (err) {
    if (isCode(err, 'ENOENT')) return done([]);
    return done([], `pidfiles down: cannot read ${dir}: ${errText(err)}`);
  }
  if (dirStat.isSymbolicLink()) return done([], `pidfiles down: ${dir} is a symlink (not followed)`);
  if (!dirStat.isDirectory()) return done([], `pidfiles down: ${dir} is not a directory`);
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (err) {
    return done([], `pidfiles down: cannot list ${dir}: ${errText(err)}`);
  }
  const entries: PidFileEntry[] = [];
  for (const name of names.sort()) {
    if (!CANDIDATE_NAME.test(name)) continue;
    const entry = readPidFile(path.join(dir, name));
    if (entry) entries.push(entry);
  }
  return done(entries);
}

/** One file; null when it vanished meanwhile (normal: the engine unlinks files at teardown). */
export function readPidFile(filePath: string): PidFileEntry | null {
  const name = path.basename(filePath);
  const m = PID_FILE_NAME.exec(name);
  const namePid = m ? Number(m[1]) : null;
  const invalid = (reason: string, st?: fs.Stats): PidFileEntry => ({
    path: filePath,
    name,
    pid: null,
    agent: null,
    mtimeEpoch: st ? st.mtimeMs / 1000 : null,
    ino: st ? st.ino : null,
    dev: st ? st.dev : null,
    invalidReason: reason,
  });
  let lst: fs.Stats;
  try {
    lst = fs.lstatSync(filePath);
  } catch (err) {
    if (isCode(err, 'ENOENT')) return null;
    return invalid(`unreadable: ${errText(err)}`);
  }
  if (lst.isSymbolicLink()) return invalid('a symlink (not followed)', lst);
  if (!lst.isFile()) return invalid('not a regular file', lst);
  if (lst.size > MAX_PID_FILE_BYTES) return invalid(`too large (${lst.size} bytes)`, lst);
  if (namePid === null) return invalid('name is not acp-<digits>.json', lst);

  let fd: number | null = null;
  try {
    // O_NOFOLLOW: a symlink swapped in after lstat is refused; O_NONBLOCK: a FIFO never blocks us.
    fd = fs.openSync(filePath, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
    const st = fs.fstatSync(fd);
    if (!st.isFile()) return invalid('not a regular file', st);
    if (st.size > MAX_PID_FILE_BYTES) return invalid(`too large (${st.size} bytes)`, st);
    const buf = Buffer.alloc(MAX_PID_FILE_BYTES + 1);
    const n = fs.readSync(fd, buf, 0, buf.length, 0);
    if (n > MAX_PID_FILE_BYTES) return invalid(`too large (more than ${MAX_PID_FILE_BYTES} bytes)`, st);
    const parsed = parsePidFile(buf.subarray(0, n).toString('utf8'), namePid);
    if ('error' in parsed) return invalid(parsed.error, st);
    return {
      path: filePath,
      name,
      pid: parsed.pid,
      agent: parsed.agent,
      mtimeEpoch: st.mtimeMs / 1000,
      ino: st.ino,
      dev: st.dev,
    };
  } catch (err) {
    if (isCode(err, 'ENOENT')) return null;
    if (isCode(err, 'ELOOP')) return invalid('a symlink (not followed)', lst);
    return invalid(`unreadable: ${errText(err)}`, lst);
  } finally {
    if (fd !== null) fs.closeSync(fd);
  }
}

export function isCode(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === code;
}

export function errText(err: unknown): string {
  if (typeof err === 'object' && err !== null) {
    const e = err as { code?: unknown; message?: unknown };
    if (typeof e.code === 'string') return e.code;
    if (typeof e.message === 'string') return e.message;
  }
  return String(err);
}
