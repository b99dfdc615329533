import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/schema.js';
import { createDaemon, type Daemon } from '../../src/daemon/daemon.js';
import { readIdentity } from '../../src/sources/processes.js';
import { pyIsoformat, updateRun } from '../../src/demo/kit/stepwise-schema.js';
import { request } from '../helpers/http.js';
import { createTempProject, goneOrZombie, waitUntil, type TempProject } from '../helpers/temp-project.js';

let project: TempProject | null = null;
let daemon: Daemon | null = null;
let auditDir: string | null = null;

afterEach(async () => {
  await daemon?.stop();
  daemon = null;
  await project?.cleanup();
  project = null;
  if (auditDir) fs.rmSync(auditDir, { recursive: true, force: true });
  auditDir = null;
});

async function start(flags: Record<string, unknown>, retainFinishedMs?: number, token: string | null = null): Promise<Daemon> {
  auditDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sw-audit-'));
  const config = loadConfig({ flags: { project: [project!.root], auditLog: path.join(auditDir, 'audit.jsonl'), ...flags }, env: {} });
  daemon = await createDaemon(config, { roots: [project!.root], logger: pino({ level: 'silent' }), env: {}, token, defaultMetrics: false, debounceMs: 50, ...(retainFinishedMs !== undefined ? { storeOptions: { retainFinishedMs } } : {}) });
  daemon.start();
  await waitUntil(() => daemon!.watchdog.status.count >= 1, 10_000);
  return daemon;
}

const count = () => daemon!.watchdog.status.count;

describe('the daemon loop', () => {
  it('runs a cycle promptly when a pid file appears, without waiting for the interval', async () => {
    project = await createTempProject();
    await start({ interval: 600 });
    const before = count();
    project.writePidFile(99_999_0 + 1, {});
    expect(await waitUntil(() => count() > before && daemon!.watchdog.inventories()[0]!.pidFiles.length === 1, 15_000)).toBe(true);
    expect(daemon!.watchdog.inventories()[0]!.pidFiles[0]!.verdict).toBe('stale-dead');
  });

  it('runs a cycle when poked (POST /api/poke), without waiting for the interval', async () => {
    project = await createTempProject();
    await start({ interval: 600, observeOnly: true });
    const before = count();
    const res = await request(daemon!.app, { method: 'POST', url: '/api/poke' });
    expect(res.statusCode).toBe(202);
    expect(await waitUntil(() => count() > before, 15_000)).toBe(true);
  });

  it('reaps a leaked tree once its terminal grace expires (woken by the grace, not the interval)', async () => {
    project = await createTempProject();
    const adapter = await project.spawnAdapter({ job: 'running', tree: { holdMb: 1 } });
    await start({ interval: 600, terminalGrace: 2 });
    const top = adapter.tree.identities[0]!;
    expect(daemon!.watchdog.inventories()[0]!.adapters.find((a) => a.topPid === top.pid)?.verdict).toBe('active');

    const endedAt = Date.now();
    project.setJobStatus(adapter.jobIds[0]!, 'failed', 0); // the store changes: a cycle sees it leaked, within grace
    expect(await waitUntil(() => daemon!.watchdog.inventories()[0]!.adapters.find((a) => a.topPid === top.pid)?.verdict === 'leaked', 15_000)).toBe(true);
    expect(readIdentity(top.pid)).not.toBeNull(); // held: within the grace

    expect(await waitUntil(() => adapter.tree.identities.every(goneOrZombie), 15_000)).toBe(true);
    // The record is appended (fsync'd) once the kill is confirmed, a moment after the tree is gone.
    const records = () => {
      const text = fs.existsSync(daemon!.auditLogPath) ? fs.readFileSync(daemon!.auditLogPath, 'utf8') : '';
      return text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { time: string; actor: string; outcome: string; action: string });
    };
    expect(await waitUntil(() => records().some((r) => r.action === 'kill-tree'), 15_000)).toBe(true);
    const kill = records().find((r) => r.actor === 'daemon' && r.outcome === 'ok')!;
    expect(Date.parse(kill.time) - endedAt).toBeGreaterThanOrEqual(2_000 - 50);
    expect(await waitUntil(() => daemon!.watchdog.inventories()[0]!.adapters.every((a) => a.topPid !== top.pid), 15_000)).toBe(true);
    const text = await daemon!.metrics.metrics();
    expect(text).toContain(`stepwise_watchdog_reaped_total{project="${project.root}",verdict="leaked",result="ok"} 1`);
    expect(text).toContain(`stepwise_watchdog_adapters{project="${project.root}",verdict="leaked"} 0`);
  });

  it('observe-only never signals anything', async () => {
    project = await createTempProject();
    const adapter = await project.spawnAdapter({ job: { status: 'failed', endedSecondsAgo: 600 }, tree: { holdMb: 1 } });
    await start({ interval: 600, observeOnly: true });
    await daemon!.watchdog.runCycle('test');
    expect(daemon!.watchdog.inventories()[0]!.adapters.find((a) => a.topPid === adapter.tree.topPid)?.verdict).toBe('leaked');
    expect(adapter.tree.identities.every((id) => readIdentity(id.pid) !== null)).toBe(true);
    expect(fs.existsSync(daemon!.auditLogPath)).toBe(false);
  });

  it('POST /api/reap: refusals are counted; an observe-only daemon reaps nothing', async () => {
    project = await createTempProject();
    const token = 'a-test-token-that-is-long-enough';
    const auth = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
    await start({ interval: 600 }, undefined, token);
    const res = await request(daemon!.app, { method: 'POST', url: '/api/reap', headers: auth, payload: JSON.stringify({ jobs: ['job-nope'] }) });
    expect(res.statusCode).toBe(200);
    expect(res.json().results).toEqual([expect.objectContaining({ kind: 'refusal', code: 'not_found', target: 'job job-nope' })]);
    expect(await daemon!.metrics.metrics()).toContain(`stepwise_watchdog_refusals_total{project="${project.root}",reason="not_found"} 1`);
    await daemon!.stop();

    const a = await project.spawnAdapter({ job: { status: 'failed', endedSecondsAgo: 600 }, tree: { holdMb: 0 } });
    await start({ interval: 600, observeOnly: true }, undefined, token);
    const refused = await request(daemon!.app, { method: 'POST', url: '/api/reap', headers: auth, payload: JSON.stringify({ allLeaked: true }) });
    expect(refused.statusCode).toBe(409);
    expect(refused.json().error).toMatch(/--observe-only/);
    const dry = await request(daemon!.app, { method: 'POST', url: '/api/reap', headers: auth, payload: JSON.stringify({ allLeaked: true, dryRun: true }) });
    expect(dry.statusCode).toBe(200);
    expect(dry.json().plan.actions).toEqual([expect.objectContaining({ kind: 'kill-tree', topPid: a.tree.topPid })]);
    expect(a.tree.identities.every((id) => readIdentity(id.pid) !== null)).toBe(true);
  });

  it('never runs two cycles at once; pokes during a cycle run one more after it', async () => {
    project = await createTempProject();
    await start({ interval: 600, observeOnly: true });
    const before = count();
    await Promise.all([daemon!.watchdog.runCycle('a'), daemon!.watchdog.runCycle('b'), daemon!.watchdog.runCycle('c')]);
    // The first ran; b and c asked for one more, which ran right after (coalesced).
    expect(count() - before).toBe(2);
  });

  it('stays bounded over many cycles of churning adapters (soak)', async () => {
    project = await createTempProject();
    // Finished runs are normally kept 5 minutes (a pid may become of interest late): 0 here, to see them go.
    const d = await start({ interval: 600, terminalGrace: 0, killWait: 1 }, 0);
    const session = () => (d.watchdog.opts.sessions[0]!);
    const sizes: { tracked: number; trends: number; heap: number }[] = [];
    for (let i = 0; i < 12; i++) {
      const a = await project.spawnAdapter({ job: 'running', tree: { holdMb: 0, depth: 2 } });
      await d.watchdog.runCycle('soak');
      // The engine's abandon path: the step completes, the job fails, the adapter is left behind.
      updateRun(project.db, a.runIds[0]!, { status: 'completed', completedAt: pyIsoformat() });
      project.setJobStatus(a.jobIds[0]!, 'failed', 0);
      await d.watchdog.runCycle('soak');
      expect(await waitUntil(() => a.tree.identities.every(goneOrZombie), 10_000)).toBe(true);
      for (let k = 0; k < 10; k++) await d.watchdog.runCycle('soak');
      (globalThis as { gc?: () => void }).gc?.();
      sizes.push({ tracked: session().store.trackedRunCount, trends: d.watchdog.processMemory().length, heap: process.memoryUsage().heapUsed });
    }
    if (process.env.SOAK_DEBUG) console.log(JSON.stringify(sizes));
    // Per-pid and per-run state is pruned when the thing is gone: nothing grows with churn.
    expect(Math.max(...sizes.map((s) => s.trends))).toBe(1);
    expect(Math.max(...sizes.map((s) => s.tracked))).toBeLessThanOrEqual(1);
    if ((globalThis as { gc?: () => void }).gc) {
      // After warm-up, the heap after a full GC does not grow with churn (allow allocator noise).
      const warm = sizes.slice(3).map((s) => s.heap);
      expect(warm[warm.length - 1]! - warm[0]!).toBeLessThan(4 * 1048576);
    }
    expect(d.watchdog.inventories()[0]!.adapters.filter((a) => a.verdict === 'leaked')).toEqual([]);
    expect(d.watchdog.status.count).toBeGreaterThan(12 * 12);
  }, 120_000);
});
