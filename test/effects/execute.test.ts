// executePlan: whole projects with real trees, a real store, a real audit log.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { plan, type Selection } from '../../src/core/plan.js';
import { DEFAULT_POLICY, type Policy } from '../../src/core/types.js';
import { ProjectSession } from '../../src/daemon/collect.js';
import { AuditLog, type AuditRecord } from '../../src/effects/audit-log.js';
import { executePlan, summarise, type ActionResult } from '../../src/effects/execute.js';
import { selfPlanContext } from '../../src/effects/self.js';
import { aliveSame, createTempProject, goneOrZombie, type TempProject } from '../helpers/temp-project.js';

const policy: Policy = { ...DEFAULT_POLICY, spawnGraceSeconds: 0, terminalGraceSeconds: 30 };
const NONE: Selection = { allLeaked: false, orphans: false, sessions: false, jobs: [], pids: [], force: false, gc: false };
let project: TempProject;
let sessions: ProjectSession[];
let auditDir: string;
let audit: AuditLog;

beforeEach(async () => {
  project = await createTempProject();
  sessions = [];
  auditDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sw-audit-'));
  audit = new AuditLog(path.join(auditDir, 'state', 'audit.jsonl'));
});
afterEach(async () => {
  for (const s of sessions) s.close();
  await project.cleanup();
  fs.rmSync(auditDir, { recursive: true, force: true });
});

function session(extra: Partial<ConstructorParameters<typeof ProjectSession>[0]> = {}): ProjectSession {
  const s = new ProjectSession({ root: project.root, policy, ...extra });
  sessions.push(s);
  return s;
}

function auditLines(): AuditRecord[] {
  if (!fs.existsSync(audit.path)) return [];
  return fs
    .readFileSync(audit.path, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as AuditRecord);
}

async function run(selection: Partial<Selection>, s = session(), log = audit) {
  const inv = s.collect();
  const p = plan(inv, policy, { ...NONE, ...selection }, selfPlanContext(false));
  const report = await executePlan(p, { session: s, actor: 'cli', audit: log, killWaitMs: 1000, gc: true });
  return { inv, p, report };
}

const kills = (results: ActionResult[]) => results.filter((r) => r.kind === 'kill-tree');

describe('executePlan', () => {
  it('reaps leaked and orphaned trees only; active, paused, foreign and in-grace trees are untouched; the store is byte-identical', async () => {
    const leaked = await project.spawnAdapter({ job: { status: 'failed', failReason: 'abandoned' } });
    const orphan = await project.spawnAdapter({ tree: { parent: 'orphan' } });
    const active = await project.spawnAdapter({ job: 'running' });
    const paused = await project.spawnAdapter({ job: 'paused' });
    const foreign = await project.spawnAdapter({ pidFile: false });
    const fresh = await project.spawnAdapter({ job: { status: 'cancelled', endedSecondsAgo: 2 } });
    const before = project.hashDb();

    const { p, report } = await run({ allLeaked: true, orphans: true });
    expect(p.refusals.map((r) => [r.target, r.code])).toEqual([[`tree ${fresh.tree.topPid}`, 'grace']]);
    expect(report.auditError).toBeNull();
    const ks = kills(report.results);
    expect(ks.map((k) => [k.topPid, k.verdict, k.outcome]).sort()).toEqual(
      [
        [leaked.tree.topPid, 'leaked', 'ok'],
        [orphan.tree.topPid, 'orphaned', 'ok'],
      ].sort(),
    );
    for (const id of [...leaked.tree.identities, ...orphan.tree.identities]) expect(goneOrZombie(id)).toBe(true);
    for (const a of [active, paused, foreign, fresh]) expect(a.tree.identities.every(aliveSame)).toBe(true);
    // The reaped trees' pid files went with them; the others stay.
    expect(fs.existsSync(leaked.pidFile!)).toBe(false);
    expect(fs.existsSync(orphan.pidFile!)).toBe(false);
    for (const a of [active, paused, fresh]) expect(fs.existsSync(a.pidFile!)).toBe(true);
    expect(project.hashDb()).toBe(before);

    // One audit record per action, flushed before executePlan returned.
    const lines = auditLines();
    expect(lines).toHaveLength(2);
    const rec = lines.find((l) => l.tree?.topPid === leaked.tree.topPid)!;
    expect(rec).toMatchObject({ action: 'kill-tree', actor: 'cli', verdict: 'leaked', outcome: 'ok', forced: false, selectedBy: 'all-leaked', project: project.root });
    expect(rec.tree!.processes.map((x) => x.pid)).toEqual(leaked.tree.pids);
    expect(rec.tree!.processes[0]!.argv.join(' ')).toContain('claude-agent-acp');
    expect(rec.jobs).toEqual([{ id: leaked.jobIds[0], status: 'failed' }]);
    expect(rec.processes.every((x) => x.result === 'gone' && x.signals.includes('SIGTERM/group'))).toBe(true);
    expect(rec.bytesFreed).toBeGreaterThan(0);
    expect(rec.pidFile).toEqual({ path: leaked.pidFile, pid: leaked.tree.topPid, outcome: 'removed' });
    expect(rec.reason).toMatch(/abandoned/);

    const s = summarise(report.results);
    expect(s.counts).toMatchObject({ ok: 2, failed: 0, skipped: 0, pidFilesRemoved: 2 });
    expect(s.reaped.map((r) => r.verdict).sort()).toEqual(['leaked', 'orphaned']);
    expect(s.bytesFreed).toBe(ks.reduce((n, k) => n + k.bytesFreed, 0));
  });

  it('store down (corrupt database): no kill at all, the refusal says why', async () => {
    const leaked = await project.spawnAdapter({ job: 'failed' });
    fs.writeFileSync(project.dbPath, Buffer.alloc(8192, 0x41));
    const { p, report } = await run({ allLeaked: true, pids: [leaked.tree.topPid] });
    expect(p.actions).toEqual([]);
    expect(p.refusals).toHaveLength(1);
    expect(p.refusals[0]).toMatchObject({ code: 'source_down', explicit: true });
    expect(p.refusals[0]!.reason).toMatch(/store/);
    expect(kills(report.results)).toEqual([]);
    expect(leaked.tree.identities.every(aliveSame)).toBe(true);
    // The explicit request's refusal is audited.
    expect(auditLines().map((l) => [l.action, l.code])).toEqual([['refusal', 'source_down']]);
  });

  it('store locked at re-verification: the kill is skipped, nothing signalled', async () => {
    const leaked = await project.spawnAdapter({ job: 'failed' });
    const s = session({ storeBusyMs: 200 });
    const inv = s.collect();
    const p = plan(inv, policy, { ...NONE, allLeaked: true }, selfPlanContext(false));
    expect(p.actions).toHaveLength(1);
    // The "engine" holds an exclusive lock while we act.
    project.db.exec('BEGIN EXCLUSIVE');
    try {
      const report = await executePlan(p, { session: s, actor: 'daemon', audit, killWaitMs: 500, gc: true });
      const k = kills(report.results)[0]!;
      expect(k.outcome).toBe('skipped');
      expect(k.code).toBe('source_down');
    } finally {
      project.db.exec('ROLLBACK');
    }
    expect(leaked.tree.identities.every(aliveSame)).toBe(true);
  });

  it('an explicit request for a running job is refused and audited; --force carries it out', async () => {
    const active = await project.spawnAdapter({ job: 'running' });
    const jobId = active.jobIds[0]!;
    const r1 = await run({ jobs: [jobId] });
    expect(r1.report.results).toEqual([expect.objectContaining({ kind: 'refusal', code: 'job_not_terminal', target: `job ${jobId}` })]);
    expect(active.tree.identities.every(aliveSame)).toBe(true);
    const r2 = await run({ jobs: [jobId], force: true });
    const k = kills(r2.report.results)[0]!;
    expect(k).toMatchObject({ outcome: 'ok', forced: true, verdict: 'active', selectedBy: 'job' });
    expect(active.tree.identities.every(goneOrZombie)).toBe(true);
    expect(auditLines().map((l) => [l.action, l.outcome, l.forced])).toEqual([
      ['refusal', 'refused', false],
      ['kill-tree', 'ok', true],
    ]);
  });

  it('a foreign tree is refused even with --force', async () => {
    const foreign = await project.spawnAdapter({ pidFile: false });
    const { report } = await run({ pids: [foreign.tree.topPid], force: true });
    expect(report.results).toEqual([expect.objectContaining({ kind: 'refusal', code: 'protected' })]);
    expect(foreign.tree.identities.every(aliveSame)).toBe(true);
  });

  it('an unwritable audit log: nothing is carried out', async () => {
    const leaked = await project.spawnAdapter({ job: 'failed' });
    const blocker = path.join(auditDir, 'file');
    fs.writeFileSync(blocker, '');
    const { p, report } = await run({ allLeaked: true }, session(), new AuditLog(path.join(blocker, 'audit.jsonl')));
    expect(p.actions).toHaveLength(1);
    expect(report.results).toEqual([]);
    expect(report.notCarriedOut).toBe(1);
    expect(report.auditError).toMatch(/unwritable/);
    expect(leaked.tree.identities.every(aliveSame)).toBe(true);
  });

  it('two executors reaping the same project at once: every tree killed, neither reports a failure', async () => {
    const trees = await Promise.all([
      project.spawnAdapter({ job: 'failed', tree: { ignoreSigterm: true } }),
      project.spawnAdapter({ job: 'cancelled' }),
      project.spawnAdapter({ job: 'completed', tree: { setsidGrandchild: true } }),
    ]);
    const stale = project.writePidFile(3_999_991);
    const [a, b] = await Promise.all([run({ allLeaked: true, gc: true }, session()), run({ allLeaked: true, gc: true }, session())]);
    for (const t of trees) expect(t.tree.identities.every(goneOrZombie)).toBe(true);
    const all = [...a.report.results, ...b.report.results];
    expect(all.filter((r) => r.kind === 'kill-tree' && r.outcome !== 'ok')).toEqual([]);
    const s = summarise(all);
    expect(s.anyFailed).toBe(false);
    // Each pid file removed exactly once; the other executor saw it already gone.
    const files = s.pidFilesRemoved;
    for (const f of [...trees.map((t) => t.pidFile!), stale]) {
      expect(fs.existsSync(f)).toBe(false);
      expect(files.filter((x) => x.path === f && x.result === 'removed')).toHaveLength(1);
    }
    expect(files.every((x) => x.result === 'removed' || x.result === 'already-gone')).toBe(true);
    // Both wrote their records to the same log without tearing a line.
    expect(auditLines().length).toBe(all.length);
  });
});
