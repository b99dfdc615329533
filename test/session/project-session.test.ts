// The read side with real processes and real SQLite files: a server started from another cwd,
// a stopped server, pid reuse (pid file and run), zombies, an old schema.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DEFAULT_POLICY } from '../../src/core/types.js';
import { ProjectSession } from '../../src/session/project-session.js';
import { spawnFakeTree, spawnOrphanTree, spawnZombie, type FakeTree } from '../../src/demo/kit/fake-adapter.js';
import { readIdentity } from '../../src/sources/processes.js';
import { agentExecutorState, insertJob, insertRun, pyIsoformat } from '../../src/demo/kit/stepwise-schema.js';
import { createTempProject, waitUntil, type TempProject } from '../helpers/temp-project.js';

let project: TempProject | null = null;
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
  await project?.cleanup();
  project = null;
});

function collect(p: TempProject, over: Partial<ConstructorParameters<typeof ProjectSession>[0]> = {}) {
  const session = new ProjectSession({ root: p.root, policy: DEFAULT_POLICY, env: {}, ...over });
  try {
    return session.collect();
  } finally {
    session.close();
  }
}

describe('collect with real processes', () => {
  it('follows a server started from another cwd: its pid files live under that cwd', async () => {
    project = await createTempProject({ server: false });
    const elsewhere = fs.mkdtempSync(path.join(os.tmpdir(), 'sw-cwd-'));
    cleanups.push(() => fs.rmSync(elsewhere, { recursive: true, force: true }));
    const server = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1 << 30)'], { cwd: elsewhere, stdio: 'ignore' });
    cleanups.push(() => void server.kill('SIGKILL'));
    await waitUntil(() => readIdentity(server.pid!) !== null);
    project.setServer(server.pid!);
    // The engine wrote the pid file relative to its cwd.
    const tree = await spawnOrphanTree({ holdMb: 0 });
    cleanups.push(() => tree.stop());
    const pids = path.join(elsewhere, '.stepwise', 'pids');
    fs.mkdirSync(pids, { recursive: true });
    fs.writeFileSync(path.join(pids, `acp-${tree.topPid}.json`), JSON.stringify({ pid: tree.topPid, agent: 'claude' }));

    const inv = collect(project);
    expect(inv.server).toMatchObject({ alive: true, cwd: elsewhere });
    expect(inv.pidsDir).toBe(pids);
    expect(inv.adapters.find((a) => a.topPid === tree.topPid)?.verdict).toBe('orphaned');
  });

  it('a stopped server: server.pid is stale, its orphans are still found in the project folder', async () => {
    project = await createTempProject({ server: false });
    const dead = spawn(process.execPath, ['-e', '0'], { stdio: 'ignore' });
    await new Promise((r) => dead.once('exit', r));
    project.setServer(dead.pid!);
    const tree = await spawnOrphanTree({ holdMb: 0 });
    cleanups.push(() => tree.stop());
    project.writePidFile(tree.topPid);
    const inv = collect(project);
    expect(inv.server).toMatchObject({ alive: false, stale: true });
    expect(inv.server.reason).toMatch(/not running \(stale\)/);
    expect(inv.pidsDir).toBe(project.pidsDir);
    expect(inv.adapters.find((a) => a.topPid === tree.topPid)?.verdict).toBe('orphaned');
  });

  it('a pid file written before its process started is stale-reused, and gives no evidence', async () => {
    project = await createTempProject();
    const tree = await spawnOrphanTree({ holdMb: 0 });
    cleanups.push(() => tree.stop());
    project.writePidFile(tree.topPid, { mtimeMs: Date.now() - 3600_000 });
    const inv = collect(project);
    expect(inv.pidFiles[0]!.verdict).toBe('stale-reused');
    expect(inv.adapters.find((a) => a.topPid === tree.topPid)?.verdict).toBe('foreign');
  });

  it('a run that finished before the process started is a reused pid: not the job\'s adapter', async () => {
    project = await createTempProject();
    const tree = await spawnOrphanTree({ holdMb: 0 });
    cleanups.push(() => tree.stop());
    const job = insertJob(project.db, { status: 'failed', updatedAt: pyIsoformat(Date.now() - 7200_000) });
    insertRun(project.db, {
      jobId: job,
      status: 'completed',
      startedAt: pyIsoformat(Date.now() - 7300_000),
      completedAt: pyIsoformat(Date.now() - 7200_000),
      executorState: agentExecutorState({ pid: tree.topPid }),
    });
    const inv = collect(project);
    const t = inv.adapters.find((a) => a.topPid === tree.topPid)!;
    expect(t.verdict).toBe('foreign');
    expect(t.jobs).toEqual([]);
  });

  it('a pid file naming a zombie is stale-dead; the zombie is in no tree', async () => {
    project = await createTempProject();
    const z = await spawnZombie();
    cleanups.push(() => z.stop());
    expect(readIdentity(z.zombiePid)?.state).toBe('Z');
    project.writePidFile(z.zombiePid);
    const inv = collect(project);
    expect(inv.pidFiles[0]).toMatchObject({ verdict: 'stale-dead' });
    expect(inv.pidFiles[0]!.reason).toMatch(/zombie/);
    expect(inv.adapters.some((a) => a.processes.some((p) => p.pid === z.zombiePid))).toBe(false);
  });

  it('reads an old schema (no migrated columns) and still ties runs to trees', async () => {
    project = await createTempProject({ old: true });
    const a = await project.spawnAdapter({ job: { status: 'failed', endedSecondsAgo: 120 }, tree: { holdMb: 0 } });
    const inv = collect(project);
    expect(inv.sources.store!.ok).toBe(true);
    expect(inv.storeSchema?.stepRunsPidColumn).toBe(false);
    expect(inv.adapters.find((x) => x.topPid === a.tree.topPid)?.verdict).toBe('leaked');
  });

  it('a locked store: the store source is down with one line, the rest is still read', async () => {
    project = await createTempProject();
    const a = await project.spawnAdapter({ job: { status: 'failed', endedSecondsAgo: 120 }, tree: { holdMb: 0 } });
    // Our own read-write connection plays the engine in the middle of a write (rollback journal).
    project.db.exec('BEGIN EXCLUSIVE');
    try {
      const inv = collect(project, { storeBusyMs: 200 });
      expect(inv.sources.store).toMatchObject({ ok: false, error: 'store down: database locked for more than 200 ms' });
      expect(inv.sources.processes!.ok).toBe(true);
      // The tree is still listed, with the reason saying jobs are unknown.
      expect(inv.adapters.find((x) => x.topPid === a.tree.topPid)!.reason).toMatch(/^store unreadable, jobs unknown/);
    } finally {
      project.db.exec('ROLLBACK');
    }
  });

  it('an adapter-like tree with no run, no pid file and another parent than the server is foreign', async () => {
    project = await createTempProject();
    const t: FakeTree = await spawnFakeTree({ holdMb: 0 });
    cleanups.push(() => t.stop());
    const inv = collect(project);
    expect(inv.adapters.find((a) => a.topPid === t.topPid)?.verdict).toBe('foreign');
  });
});
