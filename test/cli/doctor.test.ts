import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { installHooks } from '../../src/hooks/install.js';
import { cli } from '../helpers/cli.js';
import { createTempProject, type TempProject } from '../helpers/temp-project.js';

let project: TempProject | null = null;
afterEach(async () => {
  await project?.cleanup();
  project = null;
});

interface Check {
  name: string;
  level: string;
  detail: string;
}

describe('doctor', () => {
  it('reports server, store, pids folder, hook, guard, markers and what the daemon would do', async () => {
    project = await createTempProject();
    const a = await project.spawnAdapter({ job: { status: 'failed', endedSecondsAgo: 120 }, tree: { holdMb: 0 } });
    project.writePidFile(99_999_01);
    installHooks(path.join(project.root, '.stepwise', 'hooks'), { pokeUrl: 'http://127.0.0.1:9/api/poke', force: false });
    const r = await cli(['doctor', '--json', '--project', project.root, '--listen', '127.0.0.1:9'], { env: { PATH: '/nonexistent' } });
    expect(r.code).toBe(0);
    const checks = JSON.parse(r.stdout).projects[0].checks as Check[];
    const by = Object.fromEntries(checks.map((c) => [c.name, c]));
    expect(by.server).toMatchObject({ level: 'ok' });
    expect(by.store!.detail).toMatch(/readable \(schema_version \d+, step_runs\.pid column present\)/);
    expect(by['pids folder']).toMatchObject({ level: 'warn' });
    expect(by['pids folder']!.detail).toMatch(/1 stale/);
    expect(by.hook).toMatchObject({ level: 'ok' });
    expect(by.guard!.detail).toMatch(/cannot find the Python stepwise runs with/);
    expect(by['daemon would']!.detail).toContain(`reap 1 tree(s) (${a.tree.topPid} leaked)`);
    expect(by['daemon would']!.detail).toMatch(/remove 1 stale pid file/);
    expect(by.daemon!.detail).toMatch(/not reachable/);
  });

  it('exits 3 and says no reaping when the store is unreadable', async () => {
    project = await createTempProject({ server: false });
    const r = await cli(['doctor', '--project', project.root, '--db', path.join(project.root, 'missing.db'), '--listen', '127.0.0.1:9'], { env: { PATH: '/nonexistent' } });
    expect(r.code).toBe(3);
    expect(r.stdout).toMatch(/✗ store +store down: no such file .*missing\.db: no reaping until it is readable/);
  });
});

describe('doctor: the release guard loaded in the server', () => {
  let dir: string;
  let python: string;
  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sw-doctor-guard-'));
    execFileSync('python3', ['-m', 'venv', '--without-pip', path.join(dir, 'venv')]);
    python = path.join(dir, 'venv', 'bin', 'python');
    const install = await cli(['guard', 'install', '--python', python], { cwd: dir });
    expect(install.code).toBe(0);
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  function writeMarker(p: TempProject, extra: Record<string, unknown>) {
    const marker = {
      guard: 'stepwise_release_guard',
      version: '0.2.0',
      pid: p.server!.pid,
      started_at: new Date().toISOString(),
      stepwise_version: '0.46.1',
      active: true,
      reason: null,
      ...extra,
    };
    fs.writeFileSync(path.join(p.root, '.stepwise', 'release-guard.json'), JSON.stringify(marker));
  }

  async function guardCheck(p: TempProject): Promise<Check> {
    const r = await cli(['doctor', '--json', '--project', p.root, '--listen', '127.0.0.1:9', '--python', python], { env: { PATH: '/nonexistent' } });
    expect(r.code).toBe(0);
    const checks = JSON.parse(r.stdout).projects[0].checks as Check[];
    return checks.find((c) => c.name === 'guard')!;
  }

  it('says when session closing is active', async () => {
    project = await createTempProject();
    writeMarker(project, { sessionClosing: true, sessionClosingReason: null });
    const g = await guardCheck(project);
    expect(g.level).toBe('ok');
    expect(g.detail).toMatch(new RegExp(`^loaded in server ${project.server!.pid} \\(stepwise 0\\.46\\.1\\); session closing active`));
    const status = await cli(['guard', 'status', '--json', '--project', project.root, '--python', python], { env: { PATH: '/nonexistent' } });
    expect(JSON.parse(status.stdout).loadedInServer).toMatchObject({ active: true, sessionClosing: true, sessionClosingReason: null });
    const text = await cli(['guard', 'status', '--project', project.root, '--python', python], { env: { PATH: '/nonexistent' } });
    expect(text.stdout).toMatch(/\nsessions +session closing active/);
  });

  it('says why session closing is off, as a warning', async () => {
    project = await createTempProject();
    writeMarker(project, { sessionClosing: false, sessionClosingReason: 'stepwise.acp_client.ACPClient.close_session is missing' });
    const g = await guardCheck(project);
    expect(g.level).toBe('warn');
    expect(g.detail).toMatch(/; session closing off: stepwise\.acp_client\.ACPClient\.close_session is missing$/);
  });

  it('says "unknown" for a guard that predates session closing, and ignores a stale marker', async () => {
    project = await createTempProject();
    writeMarker(project, {});
    const g = await guardCheck(project);
    expect(g.level).toBe('warn');
    expect(g.detail).toMatch(/session closing unknown/);

    writeMarker(project, { pid: project.server!.pid + 100000, sessionClosing: true });
    const stale = await guardCheck(project);
    expect(stale.detail).not.toMatch(/session closing active/);
    expect(stale.detail).toMatch(/not active in the running server/);
  });
});
