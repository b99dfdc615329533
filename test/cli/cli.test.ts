// The CLI as a user runs it: a child process, exit codes, one-line errors (never a stack trace).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { buildCli, type BuiltCli } from '../helpers/built-cli.js';
import { createTempProject, type TempProject } from '../helpers/temp-project.js';

let built: BuiltCli;
beforeAll(() => {
  built = buildCli(['cli/commands/status.js', 'cli/commands/run.js']);
}, 180_000);
afterAll(() => built?.cleanup());

let project: TempProject | null = null;
let tmp: string | null = null;
afterEach(async () => {
  await project?.cleanup();
  project = null;
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  tmp = null;
});

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [built.bin, ...args], { cwd: opts.cwd ?? os.tmpdir(), env: { PATH: process.env.PATH, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const noStack = (r: Run) => expect(r.stderr).not.toMatch(/\n\s+at .*:\d+:\d+/);

describe('status', () => {
  it('finds the project by walking up from the cwd, and prints the JSON document', async () => {
    project = await createTempProject();
    const a = await project.spawnAdapter({ job: { status: 'failed', endedSecondsAgo: 120, failReason: 'abandoned' }, tree: { holdMb: 1 } });
    const sub = path.join(project.root, 'deep', 'er');
    fs.mkdirSync(sub, { recursive: true });
    const r = await run(['status', '--json'], { cwd: sub });
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout);
    expect(doc.projects[0].root).toBe(project.root);
    const tree = doc.projects[0].adapters.find((x: { topPid: number }) => x.topPid === a.tree.topPid);
    expect(tree).toMatchObject({ verdict: 'leaked', jobs: [{ id: a.jobIds[0], status: 'failed' }] });
    expect(tree.reason).toMatch(/failed 2m ago \(abandoned\)/);
    expect(tree.pids).toEqual(a.tree.pids);
    const human = await run(['status', '--project', project.root]);
    expect(human.stdout).toMatch(/leaked\s+\d+\s+job-/);
    expect(human.stdout).toMatch(/total: 1 leaked tree\(s\)/);
  });

  it('says clearly when there is no project', async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sw-noproj-'));
    const r = await run(['status'], { cwd: tmp });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^stepwise-watchdog: no stepwise project found: no \.stepwise\/ folder in .* \(use --project DIR\)\n$/);
    noStack(r);
  });

  it('names a bad value and where it came from', async () => {
    project = await createTempProject({ server: false });
    const bad = await run(['status', '--project', project.root, '--spawn-grace', 'soon']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^stepwise-watchdog: --spawn-grace "soon": spawn grace must be a number of seconds\n$/);
    const env = await run(['status', '--project', project.root], { env: { STEPWISE_WATCHDOG_TERMINAL_GRACE: '-3' } });
    expect(env.code).toBe(2);
    expect(env.stderr).toMatch(/env STEPWISE_WATCHDOG_TERMINAL_GRACE "-3": terminal grace must be ≥ 0/);
    const unknown = await run(['status', '--project', project.root, '--frobnicate']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/unknown option '--frobnicate'/);
    noStack(bad);
  });

  it('a corrupt store: exit 3 with one line, the rest of the report still printed', async () => {
    project = await createTempProject({ server: false });
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sw-corrupt-'));
    const db = path.join(tmp, 'stepwise.db');
    fs.writeFileSync(db, Buffer.alloc(8192, 7));
    const r = await run(['status', '--project', project.root, '--db', db]);
    expect(r.code).toBe(3);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/store down: not a SQLite database/);
    expect(r.stdout).toMatch(/! source store: store down/);
    noStack(r);
  });
});

describe('run', () => {
  it('serves metrics, and exits 0 on SIGTERM after closing', async () => {
    project = await createTempProject();
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sw-run-'));
    const child = spawn(process.execPath, [built.bin, 'run', '--project', project.root, '--listen', '127.0.0.1:0', '--interval', '1', '--audit-log', path.join(tmp, 'a.jsonl')], {
      env: { PATH: process.env.PATH },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    const exit = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
    const deadline = Date.now() + 20_000;
    while (!/"msg":"watchdog started"/.test(out) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const started = JSON.parse(out.split('\n').find((l) => l.includes('"watchdog started"'))!) as { listen: string };
    const res = await fetch(`http://${started.listen}/healthz`);
    expect(res.status).toBe(200);
    child.kill('SIGTERM');
    expect(await exit).toBe(0);
    expect(out).toMatch(/"msg":"stopped"/);
  }, 60_000);

  it('refuses an unwritable audit log at start, naming it', async () => {
    project = await createTempProject({ server: false });
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sw-run-'));
    const notDir = path.join(tmp, 'file');
    fs.writeFileSync(notDir, '');
    const r = await run(['run', '--project', project.root, '--listen', '127.0.0.1:0', '--audit-log', path.join(notDir, 'audit.jsonl')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^stepwise-watchdog: --audit-log .*file\/audit\.jsonl: /);
    noStack(r);
  });
});

describe('--manifest and --version', () => {
  it('prints the stepwise extension manifest', async () => {
    const r = await run(['--manifest']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ name: 'watchdog', capabilities: expect.arrayContaining(['status', 'reap']), config_keys: [] });
    const v = await run(['--version']);
    expect(v.stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
  });
});
