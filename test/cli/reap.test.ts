// `reap` and `gc` end to end: the CLI runs as a child process (built with tsc into a private
// folder, so a concurrent build of dist/ by someone else cannot interfere), against a real temp
// project with real fake adapter trees and a real store.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { AuditRecord } from '../../src/effects/audit-log.js';
import { buildCli, type BuiltCli } from '../helpers/built-cli.js';
import { aliveSame, createTempProject, goneOrZombie, type TempProject } from '../helpers/temp-project.js';

let built: BuiltCli;
let bin: string;
beforeAll(() => {
  built = buildCli(['cli/commands/reap.js', 'cli/commands/gc.js', 'effects/execute.js']);
  bin = built.bin;
}, 180_000);
afterAll(() => built?.cleanup());

let project: TempProject;
let stateDir: string;
beforeEach(async () => {
  project = await createTempProject();
  stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sw-state-'));
});
afterEach(async () => {
  await project.cleanup();
  fs.rmSync(stateDir, { recursive: true, force: true });
});

const auditPath = () => path.join(stateDir, 'stepwise-watchdog', 'audit.jsonl');
function auditLines(): AuditRecord[] {
  if (!fs.existsSync(auditPath())) return [];
  return fs
    .readFileSync(auditPath(), 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as AuditRecord);
}

interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[]): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], {
      cwd: project.root,
      env: { ...process.env, XDG_STATE_HOME: stateDir, STEPWISE_DB: '', STEPWISE_WATCHDOG_CONFIG: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c) => (stdout += c));
    child.stderr.on('data', (c) => (stderr += c));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const P = () => ['--project', project.root];

describe('reap (CLI)', () => {
  it('without a selection: usage error (2) with a hint', async () => {
    const r = await cli(['reap', ...P()]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/nothing selected: give --all-leaked, --orphans, --sessions, --job ID or --pid PID/);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
  });

  it('dry run: prints the plan with reasons and memory, changes nothing, audits nothing', async () => {
    const leaked = await project.spawnAdapter({ job: { status: 'failed', failReason: 'abandoned' } });
    const active = await project.spawnAdapter({ job: 'running' });
    const before = project.hashDb();
    const r = await cli(['reap', ...P(), '--all-leaked', '--job', active.jobIds[0]!]);
    expect(r.stdout).toContain(`would reap tree ${leaked.tree.topPid} (leaked`);
    expect(r.stdout).toMatch(/MiB/);
    expect(r.stdout).toMatch(/abandoned/);
    expect(r.stdout).toMatch(new RegExp(`refused job ${active.jobIds[0]} \\(job_not_terminal\\)`));
    expect(r.stdout).toMatch(/dry run: nothing changed; add --yes to carry it out \(would free [\d.]+ MiB\)/);
    expect(r.code).toBe(4); // the explicit --job would be refused
    expect([...leaked.tree.identities, ...active.tree.identities].every(aliveSame)).toBe(true);
    expect(fs.existsSync(leaked.pidFile!)).toBe(true);
    expect(fs.existsSync(auditPath())).toBe(false);
    expect(project.hashDb()).toBe(before);
  });

  it('--yes: reaps leaked and orphaned trees, leaves the rest, removes their pid files, audits, store byte-identical', async () => {
    const leaked = await project.spawnAdapter({ job: { status: 'failed', failReason: 'abandoned' } });
    const orphan = await project.spawnAdapter({ tree: { parent: 'orphan' } });
    const active = await project.spawnAdapter({ job: 'running' });
    const paused = await project.spawnAdapter({ job: 'paused' });
    const foreign = await project.spawnAdapter({ pidFile: false });
    const held = await project.spawnAdapter({ job: { status: 'cancelled', endedSecondsAgo: 1 } });
    const before = project.hashDb();
    const r = await cli(['reap', ...P(), '--all-leaked', '--orphans', '--spawn-grace', '0', '--kill-wait', '1', '--yes']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`reaped tree ${leaked.tree.topPid} (leaked)`);
    expect(r.stdout).toContain(`reaped tree ${orphan.tree.topPid} (orphaned)`);
    expect(r.stdout).toMatch(new RegExp(`held tree ${held.tree.topPid} \\(grace\\)`));
    expect(r.stdout).toMatch(/total: 2 tree\(s\) reaped, [\d.]+ MiB freed, 0 failed/);
    for (const id of [...leaked.tree.identities, ...orphan.tree.identities]) expect(goneOrZombie(id)).toBe(true);
    for (const a of [active, paused, foreign, held]) expect(a.tree.identities.every(aliveSame)).toBe(true);
    expect(fs.existsSync(leaked.pidFile!) || fs.existsSync(orphan.pidFile!)).toBe(false);
    expect(fs.existsSync(active.pidFile!) && fs.existsSync(held.pidFile!)).toBe(true);
    expect(project.hashDb()).toBe(before);
    const lines = auditLines();
    expect(lines.map((l) => [l.action, l.actor, l.outcome, l.tree?.topPid]).sort()).toEqual(
      [
        ['kill-tree', 'cli', 'ok', leaked.tree.topPid],
        ['kill-tree', 'cli', 'ok', orphan.tree.topPid],
      ].sort(),
    );
    expect(fs.statSync(auditPath()).mode & 0o777).toBe(0o600);
  });

  it('--job of a running job is refused (4, audited); with --force it is reaped', async () => {
    const active = await project.spawnAdapter({ job: 'running' });
    const jobId = active.jobIds[0]!;
    const r1 = await cli(['reap', ...P(), '--job', jobId, '--yes']);
    expect(r1.code).toBe(4);
    expect(r1.stdout).toMatch(/refused job .* \(job_not_terminal\): .* is running, not terminal/);
    expect(active.tree.identities.every(aliveSame)).toBe(true);
    expect(auditLines()).toEqual([expect.objectContaining({ action: 'refusal', code: 'job_not_terminal', target: `job ${jobId}` })]);
    const r2 = await cli(['reap', ...P(), '--job', jobId, '--force', '--yes', '--kill-wait', '1']);
    expect(r2.code).toBe(0);
    expect(active.tree.identities.every(goneOrZombie)).toBe(true);
    expect(auditLines()[1]).toMatchObject({ action: 'kill-tree', outcome: 'ok', forced: true, verdict: 'active' });
  });

  it('--pid of a foreign tree is refused even with --force', async () => {
    const foreign = await project.spawnAdapter({ pidFile: false });
    const r = await cli(['reap', ...P(), '--pid', String(foreign.tree.topPid), '--force', '--yes']);
    expect(r.code).toBe(4);
    expect(r.stdout).toMatch(/\(protected\).*foreign/);
    expect(foreign.tree.identities.every(aliveSame)).toBe(true);
  });

  it('store down: no kill at all, exit 3, one clear line', async () => {
    const leaked = await project.spawnAdapter({ job: 'failed' });
    fs.writeFileSync(project.dbPath, Buffer.alloc(8192, 0x41)); // corrupt
    const r = await cli(['reap', ...P(), '--all-leaked', '--yes']);
    expect(r.code).toBe(3);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/nothing reaped: store/);
    expect(leaked.tree.identities.every(aliveSame)).toBe(true);
  });

  it('an unwritable audit log: exit 3, one line, nothing carried out', async () => {
    const leaked = await project.spawnAdapter({ job: 'failed' });
    const blocker = path.join(stateDir, 'file');
    fs.writeFileSync(blocker, '');
    const r = await cli(['reap', ...P(), '--all-leaked', '--yes', '--audit-log', path.join(blocker, 'audit.jsonl')]);
    expect(r.code).toBe(3);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/audit log .* unwritable.*nothing carried out/);
    expect(leaked.tree.identities.every(aliveSame)).toBe(true);
  });

  it('two `reap --yes` at once: every tree killed, both exit 0', async () => {
    const trees = await Promise.all([
      project.spawnAdapter({ job: 'failed', tree: { ignoreSigterm: true } }),
      project.spawnAdapter({ job: 'cancelled', tree: { setsidGrandchild: true } }),
      project.spawnAdapter({ job: 'completed' }),
    ]);
    const args = ['reap', ...P(), '--all-leaked', '--yes', '--kill-wait', '1', '--json'];
    const [a, b] = await Promise.all([cli(args), cli(args)]);
    expect([a.code, b.code, a.stderr, b.stderr]).toEqual([0, 0, '', '']);
    for (const t of trees) {
      expect(t.tree.identities.every(goneOrZombie)).toBe(true);
      expect(fs.existsSync(t.pidFile!)).toBe(false);
    }
    for (const out of [a, b]) {
      const doc = JSON.parse(out.stdout);
      expect(doc.totals.treesFailed).toBe(0);
      expect(doc.totals.pidFilesFailed).toBe(0);
    }
  });

  it('--json: the documented document, dry run and carried out', async () => {
    const leaked = await project.spawnAdapter({ job: 'failed' });
    const dry = await cli(['reap', ...P(), '--all-leaked', '--json']);
    expect(dry.code).toBe(0);
    const d = JSON.parse(dry.stdout);
    expect(d).toMatchObject({ schemaVersion: 1, command: 'reap', dryRun: true, auditLog: null, exitCode: 0, error: null });
    expect(d.projects[0].root).toBe(project.root);
    expect(d.projects[0].results).toBeNull();
    expect(d.projects[0].plan.actions[0]).toMatchObject({ kind: 'kill-tree', topPid: leaked.tree.topPid, verdict: 'leaked', selectedBy: 'all-leaked', pids: leaked.tree.pids });
    expect(d.totals.wouldFreeBytes).toBeGreaterThan(0);

    const wet = await cli(['reap', ...P(), '--all-leaked', '--json', '--yes', '--kill-wait', '1']);
    expect(wet.code).toBe(0);
    const w = JSON.parse(wet.stdout);
    expect(w).toMatchObject({ dryRun: false, auditLog: auditPath(), exitCode: 0 });
    const res = w.projects[0].results[0];
    expect(res).toMatchObject({ kind: 'kill-tree', topPid: leaked.tree.topPid, outcome: 'ok', pidFile: { outcome: 'removed' } });
    expect(res.processes.map((p: { result: string }) => p.result)).toEqual(['gone', 'gone', 'gone']);
    expect(w.totals.bytesFreed).toBe(res.bytesFreed);
  });
});

describe('gc (CLI)', () => {
  it('removes stale pid files; garbage, huge and symlinked files are reported, never deleted', async () => {
    const live = await project.spawnAdapter({ job: 'running' });
    const stale = project.writePidFile(3_999_993);
    const garbage = project.writePidFile(3_999_994, { content: '{"pid": "nope"' });
    const huge = project.writePidFile(3_999_995, { content: Buffer.alloc(100_000, 0x20) });
    const target = path.join(project.root, 'target.json');
    fs.writeFileSync(target, JSON.stringify({ pid: 3_999_996 }));
    const link = path.join(project.pidsDir, 'acp-3999996.json');
    fs.symlinkSync(target, link);
    const before = project.hashDb();

    const dry = await cli(['gc', ...P()]);
    expect(dry.code).toBe(0);
    expect(dry.stdout).toMatch(/would remove pid file acp-3999993\.json \(stale-dead\)/);
    expect(dry.stdout).toMatch(/invalid pid file acp-3999994\.json: .*never deleted/);
    expect(fs.existsSync(stale)).toBe(true);

    const r = await cli(['gc', ...P(), '--yes']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/removed pid file acp-3999993\.json/);
    expect(fs.existsSync(stale)).toBe(false);
    expect(fs.existsSync(garbage) && fs.existsSync(huge) && fs.lstatSync(link).isSymbolicLink()).toBe(true);
    expect(fs.readFileSync(target, 'utf8')).toBe(JSON.stringify({ pid: 3_999_996 }));
    expect(fs.existsSync(live.pidFile!)).toBe(true);
    expect(live.tree.identities.every(aliveSame)).toBe(true);
    expect(project.hashDb()).toBe(before);
    expect(auditLines()).toEqual([expect.objectContaining({ action: 'remove-pid-file', outcome: 'removed', target: stale })]);
  });
});
