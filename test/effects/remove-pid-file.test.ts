// removePidFile against real files in a real temp project, with real processes.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { plan, type RemovePidFileAction } from '../../src/core/plan.js';
import { DEFAULT_POLICY, type PidFileStatus } from '../../src/core/types.js';
import { ProjectSession } from '../../src/session/project-session.js';
import { removePidFile, removePidFileOfReapedTree } from '../../src/effects/remove-pid-file.js';
import { selfPlanContext } from '../../src/effects/self.js';
import { readIdentity } from '../../src/sources/processes.js';
import { createTempProject, goneOrZombie, waitUntil, type TempProject } from '../helpers/temp-project.js';

let project: TempProject;
let session: ProjectSession;

beforeEach(async () => {
  project = await createTempProject();
  session = new ProjectSession({ root: project.root, policy: DEFAULT_POLICY });
});
afterEach(async () => {
  session.close();
  await project.cleanup();
});

/** A pid that no process has right now. */
function deadPid(): number {
  for (let pid = 4_000_000; pid > 3_000_000; pid -= 7) if (readIdentity(pid) === null && !fs.existsSync(`/proc/${pid}`)) return pid;
  throw new Error('no free pid');
}

function gcPlan() {
  const inv = session.collect();
  return { inv, p: plan(inv, DEFAULT_POLICY, { allLeaked: false, orphans: false, sessions: false, jobs: [], pids: [], force: false, gc: true }, selfPlanContext(false)) };
}

function actionFor(file: string): RemovePidFileAction {
  const a = gcPlan().p.actions.find((x): x is RemovePidFileAction => x.kind === 'remove-pid-file' && x.file.path === file);
  if (!a) throw new Error(`no action for ${file}`);
  return a;
}

/** An action built by hand (as if a buggy planner asked): removePidFile must still refuse. */
function forcedAction(file: string, pid: number, extra: Partial<PidFileStatus> = {}): RemovePidFileAction {
  let st: fs.Stats | null = null;
  try {
    st = fs.lstatSync(file);
  } catch {
    // absent
  }
  return {
    kind: 'remove-pid-file',
    project: project.root,
    pidsDir: project.pidsDir,
    reason: 'test',
    file: { path: file, name: path.basename(file), pid, agent: 'claude', verdict: 'stale-dead', reason: 'test', ino: st?.ino ?? null, dev: st?.dev ?? null, process: null, ...extra },
  };
}

describe('removePidFile', () => {
  it('removes a stale-dead file', () => {
    const pid = deadPid();
    const file = project.writePidFile(pid);
    const a = actionFor(file);
    expect(a.file.verdict).toBe('stale-dead');
    const r = removePidFile(a);
    expect(r.outcome).toBe('removed');
    expect(fs.existsSync(file)).toBe(false);
  });

  it('removes a stale-reused file (its pid names a process that started after it was written)', () => {
    const pid = project.server!.pid;
    const file = project.writePidFile(pid, { mtimeMs: Date.now() - 3600_000 });
    const a = actionFor(file);
    expect(a.file.verdict).toBe('stale-reused');
    expect(removePidFile(a).outcome).toBe('removed');
    expect(fs.existsSync(file)).toBe(false);
  });

  it('keeps a file that is no longer stale when re-checked (its process is alive and older)', async () => {
    const a = await project.spawnAdapter({ job: 'running' });
    // Even if asked (a stale verdict by mistake), the re-check right before unlink refuses.
    const r = removePidFile(forcedAction(a.pidFile!, a.tree.topPid));
    expect(r.outcome).toBe('skipped');
    expect(r.detail).toMatch(/started before the file was written: not stale/);
    expect(fs.existsSync(a.pidFile!)).toBe(true);
  });

  it('keeps the file of a dead leader whose group still lives', async () => {
    const a = await project.spawnAdapter({ job: 'failed' });
    process.kill(a.tree.topPid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 300));
    const r = removePidFile(forcedAction(a.pidFile!, a.tree.topPid));
    expect(r.outcome).toBe('skipped');
    expect(r.detail).toMatch(/member\(s\) of its group live/);
    expect(fs.existsSync(a.pidFile!)).toBe(true);
  });

  it('never deletes garbage, huge or symlinked pid files; a symlink target is untouched', () => {
    const pid = deadPid();
    const garbage = project.writePidFile(pid, { content: 'not json at all' });
    const huge = project.writePidFile(pid + 1, { content: Buffer.alloc(1 << 20, 0x20) });
    const target = path.join(project.root, 'precious.json');
    fs.writeFileSync(target, JSON.stringify({ pid: pid + 2, agent: 'claude' }));
    const link = path.join(project.pidsDir, `acp-${pid + 2}.json`);
    fs.symlinkSync(target, link);
    const { inv, p } = gcPlan();
    expect(inv.pidFiles.filter((f) => f.verdict === 'invalid').map((f) => f.path).sort()).toEqual([garbage, huge, link].sort());
    expect(p.actions).toEqual([]);
    // Asked anyway, with a stale verdict: still refused.
    for (const [file, filePid] of [[garbage, pid], [huge, pid + 1], [link, pid + 2]] as const) {
      const r = removePidFile(forcedAction(file, filePid));
      expect(r.outcome).toBe('skipped');
    }
    expect(fs.existsSync(garbage) && fs.existsSync(huge) && fs.lstatSync(link).isSymbolicLink()).toBe(true);
    expect(JSON.parse(fs.readFileSync(target, 'utf8'))).toEqual({ pid: pid + 2, agent: 'claude' });
  });

  it('refuses a file whose inode changed since the plan', () => {
    const pid = deadPid();
    const file = project.writePidFile(pid);
    const a = actionFor(file);
    fs.unlinkSync(file);
    fs.writeFileSync(path.join(project.pidsDir, 'filler'), 'x'); // keep the old inode from being reused at once
    project.writePidFile(pid);
    const r = removePidFile(a);
    expect(r.outcome).toBe('skipped');
    expect(r.detail).toMatch(/inode changed/);
    expect(fs.existsSync(file)).toBe(true);
  });

  it('a file removed by someone else meanwhile is already-gone, not a failure', () => {
    const file = project.writePidFile(deadPid());
    const a = actionFor(file);
    fs.unlinkSync(file);
    expect(removePidFile(a).outcome).toBe('already-gone');
  });

  it('only acp-<digits>.json directly inside a pids folder that is not a symlink', () => {
    const pid = deadPid();
    // A name that is not the engine's.
    const odd = project.writePidFile(pid, { name: `acp-${pid}.json.bak` });
    expect(removePidFile(forcedAction(odd, pid)).outcome).toBe('skipped');
    // A file in a subfolder.
    fs.mkdirSync(path.join(project.pidsDir, 'sub'));
    const nested = path.join(project.pidsDir, 'sub', `acp-${pid}.json`);
    fs.writeFileSync(nested, JSON.stringify({ pid }));
    expect(removePidFile(forcedAction(nested, pid)).outcome).toBe('skipped');
    // A pids folder that is a symlink to another folder.
    const elsewhere = path.join(project.root, 'elsewhere');
    fs.mkdirSync(elsewhere);
    const real = path.join(elsewhere, `acp-${pid}.json`);
    fs.writeFileSync(real, JSON.stringify({ pid }));
    const linkedDir = path.join(project.stepwiseDir, 'pids-link');
    fs.symlinkSync(elsewhere, linkedDir);
    const viaLink = path.join(linkedDir, `acp-${pid}.json`);
    const a = forcedAction(viaLink, pid);
    const r = removePidFile({ ...a, pidsDir: linkedDir });
    expect(r.outcome).toBe('skipped');
    expect(r.detail).toMatch(/symlink/);
    expect(fs.existsSync(odd) && fs.existsSync(nested) && fs.existsSync(real)).toBe(true);
  });

  it('removePidFileOfReapedTree removes the file once the top is gone, keeps it while alive', async () => {
    const a = await project.spawnAdapter({ job: 'failed' });
    const tree = session.collect().adapters.find((t) => t.topPid === a.tree.topPid)!;
    expect(tree.pidFile).toBe(a.pidFile);
    expect(removePidFileOfReapedTree(tree, project.pidsDir)?.outcome).toBe('skipped');
    expect(fs.existsSync(a.pidFile!)).toBe(true);
    await a.tree.stop();
    expect(removePidFileOfReapedTree(tree, project.pidsDir)?.outcome).toBe('removed');
    expect(fs.existsSync(a.pidFile!)).toBe(false);
    expect(removePidFileOfReapedTree(tree, project.pidsDir)?.outcome).toBe('already-gone');
    expect(removePidFileOfReapedTree({ ...tree, pidFile: null }, project.pidsDir)).toBeNull();
  });

  it('removePidFileOfReapedTree keeps the file while a member of its group lives that the reaped tree did not list', async () => {
    const a = await project.spawnAdapter({ job: 'failed' });
    const tree = session.collect().adapters.find((t) => t.topPid === a.tree.topPid)!;
    // The kill reached the top only; the rest of the group lives on, unknown to the tree passed in.
    const [top, ...rest] = a.tree.identities;
    process.kill(top!.pid, 'SIGKILL');
    await waitUntil(() => goneOrZombie(top!));
    const topOnly = { ...tree, processes: tree.processes.filter((p) => p.pid === top!.pid) };
    const r = removePidFileOfReapedTree(topOnly, project.pidsDir);
    expect(r?.outcome, r?.detail).toBe('skipped');
    expect(fs.existsSync(a.pidFile!)).toBe(true);
    expect(rest.some((m) => !goneOrZombie(m))).toBe(true);
  });
});
