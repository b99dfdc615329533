import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
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
