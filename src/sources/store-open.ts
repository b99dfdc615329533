// Opening the job store safely: read-only, never creating a file beside it (WAL stores opened
// immutable when their -wal/-shm are absent), and turning SQLite's errors into one line.

import fs from 'node:fs';
import Database from 'better-sqlite3';

type Db = Database.Database;


// better-sqlite3 only understands `file:` URIs when SQLITE_USE_URI=1 is in the environment when
// its addon initialises (first `new Database`). We need `?immutable=1` (see openMode below).
// Set it at import time, before any connection exists; openDb detects the case where it came
// too late and reports it instead of falling back to something that writes.
process.env.SQLITE_USE_URI ??= '1';

export class StoreDown extends Error {}

export function oneLine(s: string): string {
  return s.replace(/\s+/g, ' ').trim();
}

export function errorLine(e: unknown, dbPath: string, busyMs: number): { line: string; busy: boolean } {
  if (e instanceof StoreDown) return { line: `store down: ${e.message}`, busy: false };
  if (e instanceof Database.SqliteError) {
    const code = e.code ?? '';
    const msg = oneLine(e.message);
    if (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED')) {
      return { line: `store down: database locked for more than ${busyMs} ms`, busy: true };
    }
    if (code === 'SQLITE_NOTADB') return { line: `store down: not a SQLite database (${msg})`, busy: false };
    if (code.startsWith('SQLITE_CORRUPT')) return { line: `store down: corrupt database (${msg})`, busy: false };
    if (code.startsWith('SQLITE_CANTOPEN')) return { line: `store down: cannot open ${dbPath} (${msg})`, busy: false };
    return { line: `store down: ${code || 'SQLite error'} (${msg})`, busy: false };
  }
  const err = e as NodeJS.ErrnoException;
  if (err?.code === 'ENOENT') return { line: `store down: no such file ${dbPath}`, busy: false };
  if (err?.code === 'EACCES' || err?.code === 'EPERM') return { line: `store down: permission denied ${dbPath}`, busy: false };
  return { line: `store down: ${oneLine(String(err?.message ?? e))}`, busy: false };
}

export const SQLITE_MAGIC = Buffer.from('SQLite format 3\0', 'latin1');

/**
 * How to open the file without creating anything next to it.
 *
 * Measured (better-sqlite3 12 / SQLite 3.53): opening a WAL-mode database read-only when its
 * `-wal`/`-shm` are absent (the engine stopped cleanly) CREATES both files on the first read,
 * and a read-only connection cannot checkpoint, so they stay after close. So when the header
 * says WAL (bytes 18/19 = 2) and either file is missing, the read uses
 * `file:…?immutable=1`: SQLite then takes no locks and touches only the main file, which holds
 * every committed transaction once the WAL was checkpointed away. Otherwise (files present: the
 * engine runs or crashed; or a rollback-journal store) a normal read-only open creates nothing.
 * Remaining races, accepted: the engine starting during an immutable read (a checkpoint in those
 * few ms could make that one read fail or be stale; the next read sees -wal and opens
 * normally), and the engine's clean shutdown deleting -wal/-shm between our check and SQLite's
 * open (SQLite would then recreate an empty -wal/-shm: harmless to the engine, never data).
 * The header is read through a short-lived fd; this is safe only because no connection of
 * this process holds a lock on the file at that moment (connections live for one call).
 */
export function openMode(dbPath: string): 'normal' | 'immutable' {
  const header = Buffer.alloc(100);
  let n = 0;
  const fd = fs.openSync(dbPath, 'r');
  try {
    n = fs.readSync(fd, header, 0, 100, 0);
  } finally {
    fs.closeSync(fd);
  }
  const isWal = n >= 20 && header.subarray(0, 16).equals(SQLITE_MAGIC) && (header[18] === 2 || header[19] === 2);
  if (!isWal) return 'normal';
  return fs.existsSync(`${dbPath}-wal`) && fs.existsSync(`${dbPath}-shm`) ? 'normal' : 'immutable';
}

export function fileUri(p: string): string {
  const encoded = p
    .split('/')
    .map((seg) => encodeURIComponent(seg))
    .join('/');
  return `file:${encoded}?immutable=1`;
}

export function openDb(dbPath: string, mode: 'normal' | 'immutable', busyMs: number): Db {
  if (mode === 'normal') return new Database(dbPath, { readonly: true, fileMustExist: true, timeout: busyMs });
  try {
    return new Database(fileUri(dbPath), { readonly: true, fileMustExist: true, timeout: busyMs });
  } catch (e) {
    if (e instanceof Database.SqliteError && e.code === 'SQLITE_CANTOPEN' && fs.existsSync(dbPath)) {
      // URIs disabled: better-sqlite3 was initialised before this module set SQLITE_USE_URI.
      throw new StoreDown(
        'WAL-mode store without -wal/-shm (engine stopped) and SQLite URI filenames are disabled ' +
          '(a plain read-only open would create -wal/-shm; set SQLITE_USE_URI=1)',
      );
    }
    throw e;
  }
}

export function fileKeyOf(dbPath: string): string {
  const st = fs.statSync(dbPath);
  if (!st.isFile()) throw new StoreDown(`not a regular file ${dbPath}`);
  return `${st.dev}:${st.ino}`;
}

