// The fake adapter tree has the shape of the real claude-agent-acp 0.101.0 under npx (see the
// header of src/demo/kit/fake-adapter.ts), checked on real processes through /proc.
import { mkdtempSync, readFileSync, readlinkSync, realpathSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { spawnFakeTree, spawnOrphanTree, type FakeTree } from '../../src/demo/kit/fake-adapter.js';
import { readIdentity, readProcessTable } from '../../src/sources/processes.js';
import { createTempProject, type TempProject } from '../helpers/temp-project.js';

const trees: FakeTree[] = [];
async function track(p: Promise<FakeTree>): Promise<FakeTree> {
  const t = await p;
  trees.push(t);
  return t;
}
const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(trees.splice(0).map((t) => t.stop()));
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** /proc/<pid>/cmdline split on NUL, the NUL padding of a rewritten argv area dropped. */
function cmdline(pid: number): string[] {
  const parts = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  while (parts.length > 0 && parts[parts.length - 1] === '') parts.pop();
  return parts;
}

function comm(pid: number): string {
  return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
}

function rssBytes(pid: number): number {
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) * 1024;
}

/** Alive and not a zombie. */
function alive(pid: number): boolean {
  const id = readIdentity(pid);
  return id !== null && id.state !== 'Z' && id.state !== 'X';
}

function childrenOf(pid: number): number[] {
  return readProcessTable().table.processes.filter((p) => p.ppid === pid && p.state !== 'Z').map((p) => p.pid);
}

/** pid 1, or a subreaper among our ancestors (where orphans of this process land). */
function orphanParents(): Set<number> {
  const out = new Set<number>([1]);
  for (let pid = process.pid; pid > 1; ) {
    const id = readIdentity(pid);
    if (!id) break;
    out.add(id.ppid);
    pid = id.ppid;
  }
  return out;
}

async function waitFor(cond: () => boolean, timeoutMs = 5000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}

const UUID_A = '0b6f2a3c-1d4e-4f5a-8b6c-7d8e9f0a1b2c';
const UUID_B = 'c2b1a0f9-e8d7-4c6b-9a5f-4e3d2c1b0a6f';

describe('the acp fake tree: the real npx shape', () => {
  it('four levels in the group and session the top leads; only three right after spawn', async () => {
    const ws = realpathSync(mkdtempSync(join(tmpdir(), 'ws one-')));
    dirs.push(ws);
    const tree = await track(spawnFakeTree({ holdMb: 1, allowedPaths: ws }));
    expect(tree.shape).toBe('acp');
    const [npm, sh, node] = tree.levelPids as [number, number, number];
    expect(tree.pids).toEqual([npm, sh, node]);
    expect(tree.adapterPid).toBe(node);
    for (const pid of [npm, sh, node]) expect(readIdentity(pid)).toMatchObject({ pgid: npm, sid: npm });
    expect(readIdentity(npm)!.ppid).toBe(process.pid);
    expect(readIdentity(sh)!.ppid).toBe(npm);
    expect(readIdentity(node)!.ppid).toBe(sh);
    expect(childrenOf(node)).toEqual([]); // no CLI before a session

    // Level 1: npm's process.title over its argv area: ONE element in /proc/<pid>/cmdline.
    expect(cmdline(npm)).toEqual([`npm exec @agentclientprotocol/claude-agent-acp --model claude-sonnet-4-5 --allowedPaths ${ws}`]);
    expect(comm(npm)).toBe('npm exec @agent');
    // Level 2: a real sh that stays a parent.
    expect(cmdline(sh)).toEqual(['sh', '-c', `'claude-agent-acp' --model claude-sonnet-4-5 --allowedPaths '${ws}'`]);
    expect(comm(sh)).toBe('sh');
    expect(readlinkSync(`/proc/${sh}/exe`)).toMatch(/\/(dash|bash|sh|busybox)$/);
    // Level 3: node running the npx cache's .bin link.
    const adapterArgv = cmdline(node);
    expect(adapterArgv[0]).toBe('node');
    expect(adapterArgv[1]).toMatch(/\/_npx\/[0-9a-f]+\/node_modules\/\.bin\/claude-agent-acp$/);
    expect(adapterArgv.slice(2)).toEqual(['--model', 'claude-sonnet-4-5', '--allowedPaths', ws]);
    expect(comm(node)).toBe('node');

    // Level 4: one claude CLI per session, started by session/new.
    const a = await tree.openSession(UUID_A);
    const b = await tree.openSession(UUID_B, { cwd: '/tmp' });
    expect([a.sessionId, b.sessionId]).toEqual([UUID_A, UUID_B]);
    expect(tree.pids).toEqual([npm, sh, node, a.pid, b.pid]);
    expect(childrenOf(node).sort()).toEqual([a.pid, b.pid].sort());
    for (const s of [a, b]) {
      expect(readIdentity(s.pid)).toMatchObject({ ppid: node, pgid: npm, sid: npm });
      const argv = cmdline(s.pid);
      expect(argv[1]).toMatch(/\/@anthropic-ai\/claude-agent-sdk-linux-x64\/claude$/);
      expect(argv.slice(2, 4)).toEqual(['--output-format', 'stream-json']);
      expect(argv.filter((x) => x.startsWith('--session-id'))).toEqual([`--session-id=${s.sessionId}`]);
      expect(argv[argv.length - 1]).toBe('--replay-user-messages');
      expect(argv.join(' ')).not.toContain('claude-agent-acp');
      expect(comm(s.pid)).toBe('claude');
    }
    // The CLI's cwd is the session's working dir (default: the allowed path).
    expect(readlinkSync(`/proc/${a.pid}/cwd`)).toBe(ws);
    expect(readlinkSync(`/proc/${b.pid}/cwd`)).toBe('/tmp');
  });

  it('the CLI is the heavy level: it holds sessionHoldMb (default 2 × holdMb)', async () => {
    const tree = await track(spawnFakeTree({ holdMb: 16, sessions: [UUID_A] }));
    const [npm, sh, node] = tree.levelPids as [number, number, number];
    const cli = tree.sessions[0]!.pid;
    expect(rssBytes(npm)).toBeGreaterThanOrEqual(16 * 1024 * 1024);
    expect(rssBytes(node)).toBeGreaterThanOrEqual(16 * 1024 * 1024);
    expect(rssBytes(cli)).toBeGreaterThanOrEqual(32 * 1024 * 1024);
    expect(rssBytes(cli)).toBeGreaterThan(rssBytes(node));
    expect(rssBytes(sh)).toBeLessThan(16 * 1024 * 1024);
    const heavy = await track(spawnFakeTree({ holdMb: 0, sessionHoldMb: 64, sessions: [UUID_B] }));
    expect(rssBytes(heavy.sessions[0]!.pid)).toBeGreaterThanOrEqual(64 * 1024 * 1024);
  });

  it('closeSession ends that CLI only; session/load starts one with --resume', async () => {
    const tree = await track(spawnFakeTree({ holdMb: 0, sessions: [UUID_A, UUID_B] }));
    const [a, b] = tree.sessions as [typeof tree.sessions[0], typeof tree.sessions[0]];
    await tree.closeSession(UUID_A);
    expect(readIdentity(a.pid)).toBeNull(); // exited and reaped by the adapter
    expect(alive(b.pid)).toBe(true);
    expect(tree.levelPids.every(alive)).toBe(true);
    expect(tree.sessions.map((s) => s.sessionId)).toEqual([UUID_B]);
    expect(tree.pids).toEqual([...tree.levelPids, b.pid]);
    const loaded = await tree.openSession(UUID_A, { load: true });
    const argv = cmdline(loaded.pid);
    expect(argv.slice(argv.indexOf('--resume'), argv.indexOf('--resume') + 2)).toEqual(['--resume', UUID_A]);
    expect(argv.some((x) => x.startsWith('--session-id'))).toBe(false);
    expect(tree.stderr()).toBe(''); // a closed session is not a death
  });

  it('a killed CLI: the adapter and the other session stay, one stderr line', async () => {
    const tree = await track(spawnFakeTree({ holdMb: 0, sessions: [UUID_A, UUID_B] }));
    const [a, b] = tree.sessions as [typeof tree.sessions[0], typeof tree.sessions[0]];
    process.kill(a.pid, 'SIGTERM');
    expect(await waitFor(() => readIdentity(a.pid) === null)).toBe(true);
    expect(await waitFor(() => tree.stderr().includes('\n'))).toBe(true);
    expect(tree.stderr()).toBe(`Session ${UUID_A}: Claude Agent process died: Claude Code process exited with code 143\n`);
    expect(alive(b.pid)).toBe(true);
    expect(tree.levelPids.every(alive)).toBe(true);
    // The adapter still answers.
    const c = await tree.openSession();
    expect(alive(c.pid)).toBe(true);
  });

  it('killing the top alone: npm and sh die, node and its CLI live on with ppid 1 in the dead leader’s group; killpg ends them', async () => {
    const tree = await track(spawnFakeTree({ holdMb: 0, sessions: [UUID_A] }));
    const [npm, sh, node] = tree.levelPids as [number, number, number];
    const cli = tree.sessions[0]!.pid;
    await tree.killTop();
    expect(alive(npm)).toBe(false);
    expect(alive(sh)).toBe(false);
    expect(tree.pids).toEqual([node, cli]);
    expect(await waitFor(() => alive(node) && alive(cli))).toBe(true);
    await new Promise((r) => setTimeout(r, 300)); // and they stay
    const n = readIdentity(node)!;
    expect(n.state).toMatch(/^[RS]$/);
    expect(orphanParents().has(n.ppid)).toBe(true);
    expect(n.ppid).not.toBe(sh);
    expect(n).toMatchObject({ pgid: npm, sid: npm });
    expect(readIdentity(cli)).toMatchObject({ ppid: node, pgid: npm, sid: npm });
    // The group outlives its leader: killpg(SIGTERM) ends every member within about a second.
    const t0 = Date.now();
    process.kill(-npm, 'SIGTERM');
    expect(await waitFor(() => !alive(node) && !alive(cli), 1500)).toBe(true);
    expect(Date.now() - t0).toBeLessThan(1500);
  });

  it('killpg(SIGTERM) ends all four levels within about a second', async () => {
    const tree = await track(spawnFakeTree({ holdMb: 1, sessions: [UUID_A, UUID_B] }));
    expect(tree.pids).toHaveLength(5);
    const t0 = Date.now();
    process.kill(-tree.pgid, 'SIGTERM');
    expect(await waitFor(() => tree.pids.every((p) => !alive(p)), 1500)).toBe(true);
    expect(Date.now() - t0).toBeLessThan(1500);
  });

  it('the adapter exits when its stdin closes, and the whole tree with it', async () => {
    const tree = await track(spawnFakeTree({ holdMb: 0, sessions: [UUID_A] }));
    const all = [...tree.pids];
    await tree.closeStdin();
    for (const pid of all) expect(alive(pid)).toBe(false);
  });

  it('an orphan keeps running after its launcher exited: this process still holds its pipes', async () => {
    const tree = await track(spawnOrphanTree({ holdMb: 0 }));
    expect(readIdentity(tree.parentPid)).toBeNull();
    expect(orphanParents().has(readIdentity(tree.topPid)!.ppid)).toBe(true);
    await new Promise((r) => setTimeout(r, 300));
    expect(tree.levelPids.every(alive)).toBe(true);
    const s = await tree.openSession(UUID_A);
    expect(readIdentity(s.pid)).toMatchObject({ ppid: tree.adapterPid, pgid: tree.topPid });
  });

  it('ignoreSigterm holds for every level, sh included; setsidGrandchild puts the adapter in its own session', async () => {
    const stubborn = await track(spawnFakeTree({ holdMb: 0, ignoreSigterm: true, sessions: [UUID_A] }));
    process.kill(-stubborn.pgid, 'SIGTERM');
    await new Promise((r) => setTimeout(r, 300));
    expect(stubborn.pids.every(alive)).toBe(true);
    expect(cmdline(stubborn.levelPids[1]!)).toEqual(['sh', '-c', "'claude-agent-acp' --model claude-sonnet-4-5 --allowedPaths " + process.cwd()]);

    const apart = await track(spawnFakeTree({ holdMb: 0, setsidGrandchild: true, sessions: [UUID_B] }));
    const [npm, sh, node] = apart.levelPids as [number, number, number];
    expect(readIdentity(sh)).toMatchObject({ ppid: npm, pgid: npm, sid: npm });
    expect(readIdentity(node)).toMatchObject({ ppid: sh, pgid: node, sid: node });
    expect(cmdline(node)[1]).toMatch(/claude-agent-acp\/dist\/index\.js$/);
    expect(readIdentity(apart.sessions[0]!.pid)).toMatchObject({ ppid: node, pgid: node });
  });

  it('the generic shape is what depth or argvByLevel ask for, without sessions', async () => {
    const tree = await track(spawnFakeTree({ holdMb: 0, depth: 2 }));
    expect(tree.shape).toBe('generic');
    expect(tree.pids).toHaveLength(2);
    await expect(tree.openSession()).rejects.toThrow(/acp shape/);
  });
});

describe('temp-project sessions', () => {
  let project: TempProject | null = null;
  afterEach(async () => {
    await project?.cleanup();
    project = null;
  });

  it('one CLI per job, its uuid in that job’s run (executor_state.session_id); extra sessions named by no run', async () => {
    project = await createTempProject({ server: false });
    const a = await project.spawnAdapter({ jobs: ['running', { status: 'failed', failReason: 'abandoned' }], sessions: true, extraSessions: 1, tree: { holdMb: 0 } });
    expect(a.sessions).toHaveLength(2);
    expect(a.extraSessions).toHaveLength(1);
    expect(a.tree.pids).toEqual([...a.tree.levelPids, ...a.sessions.map((s) => s.pid), a.extraSessions[0]!.pid]);
    const rows = project.db.prepare('SELECT job_id, executor_state FROM step_runs').all() as { job_id: string; executor_state: string }[];
    const byJob = new Map(rows.map((r) => [r.job_id, JSON.parse(r.executor_state) as { pid: number; pgid: number; session_id: string }]));
    a.jobIds.forEach((jobId, i) => {
      expect(byJob.get(jobId)).toMatchObject({ pid: a.tree.topPid, pgid: a.tree.topPid, session_id: a.sessions[i]!.sessionId });
      expect(cmdline(a.sessions[i]!.pid)).toContain(`--session-id=${a.sessions[i]!.sessionId}`);
    });
    expect(rows.map((r) => JSON.parse(r.executor_state).session_id)).not.toContain(a.extraSessions[0]!.sessionId);
    // Without `sessions`: levels 1-3 only.
    const b = await project.spawnAdapter({ job: 'running', tree: { holdMb: 0 } });
    expect(b.tree.pids).toEqual(b.tree.levelPids);
    expect(b.sessions).toEqual([]);
  });
});
