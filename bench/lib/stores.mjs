// Stores shaped like stepwise 0.46.1's: history built once per size under bench/.cache/ and
// copied into each run's project; the live jobs of the synthetic host written on top by a
// connection the bench keeps open (like the engine, so -wal/-shm exist and the reader opens the
// store the way it does under a live server).

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import {
  agentExecutorState,
  createStepwiseDb,
  fillHistory,
  genId,
  insertEvent,
  insertJob,
  insertRun,
  pyIsoformat,
} from '../../dist/demo/kit/stepwise-schema.js';

export const CACHE_DIR = fileURLToPath(new URL('../.cache/', import.meta.url));
/** Bump when the history shape changes, so stale caches are rebuilt. */
const CACHE_VERSION = 1;
export const RUNS_PER_JOB = 10;
/**
 * History pids cycle through 300..30299: the live pid range of a host with pid_max 32768, so every
 * live pid is named by runs/30000 finished runs of earlier processes (33 at 1M) — the reused-pid
 * case the store reader must drop by start time to stay flat in history.
 */
export const HISTORY_FIRST_PID = 300;

/** Path of a cached store holding `runs` finished step runs (built when missing). */
export function cachedHistory(runs, log = () => {}) {
  fs.mkdirSync(CACHE_DIR, { recursive: true });
  const file = path.join(CACHE_DIR, `history-${runs}-v${CACHE_VERSION}.db`);
  if (fs.existsSync(file)) return { file, builtSeconds: null };
  const tmp = `${file}.building-${process.pid}`;
  for (const f of [tmp, `${tmp}-wal`, `${tmp}-shm`]) fs.rmSync(f, { force: true });
  log(`building ${runs.toLocaleString('en')}-run history store (cached in bench/.cache/)…`);
  const t0 = performance.now();
  const db = createStepwiseDb(tmp, { wal: true });
  try {
    db.pragma('wal_autocheckpoint = 0');
    // Ends a day ago, 10 s between runs (fillHistory's spacing).
    fillHistory(db, { runs, runsPerJob: RUNS_PER_JOB, firstPid: HISTORY_FIRST_PID, startEpochMs: Date.now() - runs * 10_000 - 86_400_000 });
    db.pragma('wal_checkpoint(TRUNCATE)');
  } finally {
    db.close();
  }
  for (const f of [`${tmp}-wal`, `${tmp}-shm`]) fs.rmSync(f, { force: true });
  fs.renameSync(tmp, file);
  const builtSeconds = (performance.now() - t0) / 1000;
  log(`  built in ${builtSeconds.toFixed(1)} s, ${(fs.statSync(file).size / 1e9).toFixed(2)} GB`);
  return { file, builtSeconds };
}

/** Copy a cached history store to `dest` and open it read-write like the engine does. */
export function openStoreCopy(cacheFile, dest) {
  for (const f of [dest, `${dest}-wal`, `${dest}-shm`]) fs.rmSync(f, { force: true });
  fs.copyFileSync(cacheFile, dest);
  const db = new Database(dest);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('wal_autocheckpoint = 200');
  db.pragma('busy_timeout = 5000');
  return db;
}

/** A fresh store with `runs` finished runs of history (small: built in place, not cached). */
export function createStoreWithHistory(dest, runs) {
  for (const f of [dest, `${dest}-wal`, `${dest}-shm`]) fs.rmSync(f, { force: true });
  const db = createStepwiseDb(dest, { wal: true });
  if (runs > 0) fillHistory(db, { runs, runsPerJob: RUNS_PER_JOB, firstPid: HISTORY_FIRST_PID, startEpochMs: Date.now() - runs * 10_000 - 86_400_000 });
  return db;
}

export function writePidFile(pidsDir, pid, agent = 'claude') {
  const file = path.join(pidsDir, `acp-${pid}.json`);
  fs.writeFileSync(file, JSON.stringify({ pid, agent }));
  return file;
}

/**
 * The live jobs of fake trees, identical in every store given (same ids): `leaked` trees belong
 * to a job abandoned by an exit rule (job failed, run completed, job.failed event), the others to
 * a running job whose run is open. Returns the ids per tree.
 */
export function addLiveJobs(dbs, trees, { isLeaked }) {
  const rows = trees.map((t, i) => {
    const leaked = isLeaked(i);
    return {
      tree: t,
      leaked,
      jobId: genId('job'),
      runId: genId('run'),
      startedAt: pyIsoformat(),
      completedAt: leaked ? pyIsoformat() : null,
      state: agentExecutorState({ pid: t.topPid, interpolatedAgent: leaked ? undefined : 'claude' }),
      eventId: genId('evt'),
    };
  });
  for (const db of dbs) {
    db.transaction(() => {
      for (const r of rows) {
        insertJob(db, { id: r.jobId, status: r.leaked ? 'failed' : 'running', createdAt: r.startedAt });
        insertRun(db, {
          id: r.runId,
          jobId: r.jobId,
          status: r.leaked ? 'completed' : 'running',
          startedAt: r.startedAt,
          completedAt: r.completedAt,
          executorState: r.state,
          pidColumn: r.leaked ? null : r.tree.topPid,
        });
        if (r.leaked) insertEvent(db, { id: r.eventId, jobId: r.jobId, type: 'job.failed', data: { reason: 'abandoned', step: 'work', rule: 'abandon' } });
      }
    })();
  }
  return rows;
}
