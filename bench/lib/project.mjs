// A synthetic stepwise project folder: .stepwise/{server.pid, pids/, stepwise.db}, a stand-in
// server (cwd = root, so the pids folder resolves like the engine's) and the bench as the engine
// writing the store.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import {
  agentExecutorState,
  genId,
  insertEvent,
  insertJob,
  insertRun,
  pyIsoformat,
  updateJob,
  updateRun,
} from '../../dist/demo/kit/stepwise-schema.js';
import { StandInServer } from './host.mjs';
import { openStoreCopy, writePidFile } from './stores.mjs';

export async function makeProject(root, { historyFile, lifetimeSeconds, storeBehindSymlink = false }) {
  const stepwiseDir = path.join(root, '.stepwise');
  const pidsDir = path.join(stepwiseDir, 'pids');
  fs.mkdirSync(pidsDir, { recursive: true });
  const dbLink = path.join(stepwiseDir, 'stepwise.db');
  let dbPath = dbLink;
  if (storeBehindSymlink) {
    // The store in another folder, reached through a symlink (e.g. a store on another disk).
    const real = path.join(root, 'store', 'stepwise.db');
    fs.mkdirSync(path.dirname(real), { recursive: true });
    dbPath = real;
  }
  const db = openStoreCopy(historyFile, dbPath);
  if (storeBehindSymlink) fs.symlinkSync(dbPath, dbLink);
  const server = await StandInServer.start(root, { lifetimeSeconds });
  fs.writeFileSync(
    path.join(stepwiseDir, 'server.pid'),
    JSON.stringify({ pid: server.pid, port: 0, url: 'http://localhost:0', started_at: pyIsoformat() }),
  );
  return {
    root,
    stepwiseDir,
    pidsDir,
    dbPath,
    db,
    server,
    async stop() {
      await server.stop();
      try {
        db.close();
      } catch {}
    },
  };
}

/** Like the engine: a running job whose agent run names the adapter (after its pid file). */
export function startJobs(project, tree, jobsPerTree = 1) {
  writePidFile(project.pidsDir, tree.topPid);
  const rows = [];
  const db = project.db;
  db.transaction(() => {
    for (let k = 0; k < jobsPerTree; k++) {
      const startedAt = pyIsoformat();
      const jobId = insertJob(db, { status: 'running', createdAt: startedAt });
      const runId = insertRun(db, {
        jobId,
        status: 'running',
        startedAt,
        executorState: agentExecutorState({ pid: tree.topPid, interpolatedAgent: 'claude' }),
        pidColumn: tree.topPid,
      });
      rows.push({ jobId, runId });
    }
  })();
  return rows;
}

/** The exit-rule abandon (stepwise's leak): run completed, job failed, job.failed event; no teardown. */
export function abandonJobs(project, rows) {
  const db = project.db;
  db.transaction(() => {
    for (const r of rows) {
      updateRun(db, r.runId, { status: 'completed', completedAt: pyIsoformat(), pidColumn: null });
      updateJob(db, r.jobId, { status: 'failed' });
      insertEvent(db, { jobId: r.jobId, type: 'job.failed', data: { reason: 'abandoned', step: 'work', rule: 'abandon' } });
    }
  })();
}

/** Run an installed hook the way the engine does (stdin envelope, env, cwd = project root). */
export function fireHook(project, name, jobId) {
  const hook = path.join(project.stepwiseDir, 'hooks', name);
  const envelope = { event: 'job.failed', hook: name.replace(/^on-/, ''), job_id: jobId, timestamp: pyIsoformat(), reason: 'abandoned' };
  const child = spawn(hook, [], {
    cwd: project.root,
    stdio: ['pipe', 'ignore', 'ignore'],
    env: { ...process.env, STEPWISE_JOB_ID: jobId, STEPWISE_EVENT: 'job.failed' },
  });
  child.on('error', () => {});
  child.stdin.on('error', () => {});
  child.stdin.end(JSON.stringify(envelope));
  return child;
}

export { genId };
