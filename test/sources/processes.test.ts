import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startEpoch } from '../../src/core/time.js';
import type { ProcessInfo } from '../../src/core/types.js';
import { fakeAdapterChildScript, spawnFakeTree, spawnOrphanTree, spawnZombie, type FakeTree, type FakeZombie } from '../../src/demo/kit/fake-adapter.js';
import {
  ArgvCache,
  BTIME_BOOT_ERROR_SECONDS,
  readClock,
  readCwd,
  procPort,
  readIdentity,
  readChildren,
  readProcessTable,
  sameProcess,
  UPTIME_BOOT_ERROR_SECONDS,
} from '../../src/sources/processes.js';
import { waitUntil } from '../helpers/temp-project.js';

// ---------------------------------------------------------------------------------------------
// A fixture /proc tree

interface FixtureProc {
  pid: number;
  comm: string;
  state?: string;
  ppid: number;
  pgid?: number;
  sid?: number;
  flags?: number;
  start: number;
  rssPages?: number;
  argv?: string[];
  uid?: number;
  swapKb?: number;
  rssKb?: number;
}

function stat(p: FixtureProc): string {
  const f = p.flags ?? 4194304;
  return `${p.pid} (${p.comm}) ${p.state ?? 'S'} ${p.ppid} ${p.pgid ?? p.pid} ${p.sid ?? p.pid} 0 -1 ${f} 0 0 0 0 0 0 0 0 20 0 1 0 ${p.start} 1000000 ${p.rssPages ?? 100} 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n`;
}

function writeProc(root: string, p: FixtureProc): void {
  const dir = join(root, String(p.pid));
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'stat'), stat(p));
  writeFileSync(join(dir, 'cmdline'), p.argv && p.argv.length > 0 ? `${p.argv.join('\0')}\0` : '');
  writeFileSync(
    join(dir, 'status'),
    `Name:\t${p.comm}\nState:\t${p.state ?? 'S'}\nPid:\t${p.pid}\nPPid:\t${p.ppid}\nUid:\t${p.uid ?? 1000}\t${p.uid ?? 1000}\t${p.uid ?? 1000}\t${p.uid ?? 1000}\n` +
      (p.rssKb !== undefined ? `VmRSS:\t${p.rssKb} kB\n` : '') +
      (p.swapKb !== undefined ? `VmSwap:\t${p.swapKb} kB\n` : ''),
  );
}

const MARKER = 'claude-agent-acp';
const fixtureProcs: FixtureProc[] = [
  { pid: 1, comm: 'systemd', ppid: 0, start: 1, argv: ['/sbin/init'], uid: 0 },
  { pid: 2, comm: 'kthreadd', ppid: 0, pgid: 0, sid: 0, flags: 0x208040, start: 1, rssPages: 0 },
  // cmdline of a kernel thread must not even be read: make it look like a marker to prove it.
  { pid: 15, comm: 'ksoftirqd/0', ppid: 2, pgid: 0, sid: 0, flags: 0x4208040, start: 2, rssPages: 0, argv: [MARKER] },
  { pid: 100, comm: 'python3', ppid: 1, start: 1000, argv: ['python3', '-m', 'stepwise', 'serve'], rssKb: 80000, swapKb: 0 },
  // An adapter tree: top (marker), child (marker), grandchild (no marker, left the session).
  { pid: 200, comm: 'npm exec @agen', ppid: 100, start: 2000, argv: ['npm', 'exec', `@agentclientprotocol/${MARKER}`], rssKb: 60000, swapKb: 12 },
  { pid: 201, comm: 'node', ppid: 200, pgid: 200, sid: 200, start: 2010, argv: ['node', `/x/${MARKER}/dist/index.js`], rssKb: 90000, swapKb: 0 },
  { pid: 202, comm: 'claude', ppid: 201, start: 2020, argv: ['claude', '--print'], rssPages: 5, rssKb: 300000, swapKb: 4096 },
  // Comm with spaces and parentheses.
  { pid: 300, comm: 'weird) (name', ppid: 1, start: 3000, argv: ['weird'], uid: 1001 },
  // A zombie.
  { pid: 400, comm: 'sleep', state: 'Z', ppid: 100, start: 4000, rssPages: 0 },
];

describe('readProcessTable on a fixture /proc', () => {
  let root: string;
  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'proc-fixture-'));
    for (const p of fixtureProcs) writeProc(root, p);
    writeFileSync(join(root, 'uptime'), '5000.50 9000.00\n');
    writeFileSync(join(root, 'stat'), 'cpu 1 2 3\nbtime 1700000000\nprocesses 10\n');
    // Non-pid entries are ignored.
    mkdirSync(join(root, 'self'));
    mkdirSync(join(root, 'sys'));
    writeFileSync(join(root, 'meminfo'), 'MemTotal: 1 kB\n');
    // A pid dir whose process vanished mid-read (no files left): skipped silently.
    mkdirSync(join(root, '500'));
    // A process whose cmdline vanished after its stat was read: skipped silently.
    writeProc(root, { pid: 501, comm: 'gone', ppid: 1, start: 5010, argv: ['x'] });
    rmSync(join(root, '501', 'cmdline'));
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  const now = () => 1_700_005_000_500; // ms

  it('reads every pid from the injected root, with stat fields and argv', () => {
    const { table, health, unreadablePids } = readProcessTable({ procRoot: root, pageSize: 4096, now });
    expect(health.ok).toBe(true);
    expect(health.error).toBeUndefined();
    expect(unreadablePids).toEqual([]);
    const byPid = new Map(table.processes.map((p) => [p.pid, p]));
    expect([...byPid.keys()].sort((a, b) => a - b)).toEqual([1, 2, 15, 100, 200, 201, 202, 300, 400]);
    expect(byPid.get(201)).toMatchObject({
      pid: 201,
      startTicks: 2010,
      ppid: 200,
      pgid: 200,
      sid: 200,
      state: 'S',
      comm: 'node',
      argv: ['node', `/x/${MARKER}/dist/index.js`],
      rssBytes: 100 * 4096,
      uid: null,
      swapBytes: 0,
    });
    expect(byPid.get(201)!.detailed).toBeFalsy();
    expect(byPid.get(300)!.comm).toBe('weird) (name');
    expect(byPid.get(202)!.rssBytes).toBe(5 * 4096);
  });

  it('reads an argv longer than its reusable buffer whole, and the next files as they are', () => {
    const long = ['node', 'x'.repeat(150_000), 'y'.repeat(70_000), 'end'];
    writeProc(root, { pid: 600, comm: 'node', ppid: 1, start: 6000, argv: long });
    try {
      const byPid = new Map(readProcessTable({ procRoot: root, pageSize: 4096, now }).table.processes.map((p) => [p.pid, p]));
      expect(byPid.get(600)!.argv).toEqual(long);
      // Every other process still reads as before (no bytes left over from the long one).
      expect(byPid.get(201)!.argv).toEqual(['node', `/x/${MARKER}/dist/index.js`]);
      expect(byPid.get(300)!.comm).toBe('weird) (name');
    } finally {
      rmSync(join(root, '600'), { recursive: true, force: true });
    }
  });

  it('children files: a malformed one is unknown, never "no children" (single-threaded or not)', () => {
    const task = join(root, '700', 'task', '700');
    mkdirSync(task, { recursive: true });
    try {
      writeFileSync(join(task, 'children'), '12 13 ');
      expect(readChildren(700, root, 1)).toEqual({ kind: 'ok', pids: [12, 13] });
      writeFileSync(join(task, 'children'), '12 x3 ');
      for (const threads of [1, undefined]) expect(readChildren(700, root, threads)).toMatchObject({ kind: 'unknown', error: expect.stringMatching(/^malformed .*\/700\/task\/700\/children$/) });
    } finally {
      rmSync(join(root, '700'), { recursive: true, force: true });
    }
  });

  it('gives kernel threads and zombies an empty argv without reading cmdline', () => {
    const { table } = readProcessTable({ procRoot: root, pageSize: 4096, now });
    const byPid = new Map(table.processes.map((p) => [p.pid, p]));
    expect(byPid.get(2)!.argv).toEqual([]);
    expect(byPid.get(15)!.argv).toEqual([]); // its fixture cmdline holds a marker: never read
    expect(byPid.get(400)).toMatchObject({ state: 'Z', argv: [] });
  });

  it('estimates the boot time from uptime (±0.02 s)', () => {
    const { table } = readProcessTable({ procRoot: root, pageSize: 4096, now, ticksPerSecond: 250 });
    expect(table.clock.ticksPerSecond).toBe(250);
    expect(table.clock.bootTimeErrorSeconds).toBe(UPTIME_BOOT_ERROR_SECONDS);
    expect(Math.abs(table.clock.bootTimeEpoch - (1_700_005_000.5 - 5000.5))).toBeLessThanOrEqual(0.01);
  });

  it('reads status only for the selected processes, their descendants and group members', () => {
    const asked: number[] = [];
    const { table } = readProcessTable({
      procRoot: root,
      pageSize: 4096,
      now,
      detailFor: (p: ProcessInfo) => {
        asked.push(p.pid);
        return p.argv.some((a) => a.includes(MARKER)) && p.ppid === 100;
      },
    });
    expect(asked).toContain(200);
    const detailed = table.processes.filter((p) => p.detailed).map((p) => p.pid);
    expect(detailed.sort()).toEqual([200, 201, 202]);
    const byPid = new Map(table.processes.map((p) => [p.pid, p]));
    expect(byPid.get(202)).toMatchObject({ uid: 1000, swapBytes: 4096 * 1024, rssBytes: 300000 * 1024, detailed: true });
    expect(byPid.get(100)).toMatchObject({ uid: null, swapBytes: 0 });

    const only = readProcessTable({ procRoot: root, pageSize: 4096, now, detailFor: (p) => p.pid === 200, detailDescendants: false });
    expect(only.table.processes.filter((p) => p.detailed).map((p) => p.pid)).toEqual([200]);
  });

  it('never walks down from pid 1', () => {
    const { table } = readProcessTable({ procRoot: root, pageSize: 4096, now, detailFor: (p) => p.pid === 1 });
    expect(table.processes.filter((p) => p.detailed).map((p) => p.pid)).toEqual([1]);
  });

  it('falls back to btime (±1 s) without /proc/uptime, and reports an unknown boot time', () => {
    const r2 = mkdtempSync(join(tmpdir(), 'proc-fixture-btime-'));
    try {
      writeProc(r2, fixtureProcs[0]!);
      writeFileSync(join(r2, 'stat'), 'cpu 1\nbtime 1700000000\n');
      const a = readProcessTable({ procRoot: r2, pageSize: 4096, now });
      expect(a.health.ok).toBe(true);
      expect(a.table.clock).toEqual({ bootTimeEpoch: 1700000000, ticksPerSecond: 100, bootTimeErrorSeconds: BTIME_BOOT_ERROR_SECONDS });
      rmSync(join(r2, 'stat'));
      const b = readProcessTable({ procRoot: r2, pageSize: 4096, now });
      expect(b.table.clock.bootTimeErrorSeconds).toBe(Number.POSITIVE_INFINITY);
      expect(b.health.ok).toBe(false);
      expect(b.health.error).toMatch(/^processes degraded: boot time unknown/);
      expect(b.table.processes.map((p) => p.pid)).toEqual([1]);
    } finally {
      rmSync(r2, { recursive: true, force: true });
    }
  });

  it('counts unreadable and malformed entries as degraded, keeps the rest', () => {
    const r3 = mkdtempSync(join(tmpdir(), 'proc-fixture-bad-'));
    try {
      for (const p of fixtureProcs.slice(0, 5)) writeProc(r3, p);
      writeFileSync(join(r3, 'uptime'), '10.00 1.00\n');
      // stat is a directory: EISDIR (works as root too, unlike chmod 000).
      mkdirSync(join(r3, '600', 'stat'), { recursive: true });
      // malformed stat
      mkdirSync(join(r3, '601'));
      writeFileSync(join(r3, '601', 'stat'), '601 (broken\n');
      // stat names another pid
      mkdirSync(join(r3, '602'));
      writeFileSync(join(r3, '602', 'stat'), stat({ pid: 9, comm: 'x', ppid: 1, start: 1 }));
      // good stat, unreadable cmdline: kept with argv [] and counted
      writeProc(r3, { pid: 603, comm: 'node', ppid: 1, start: 6030, argv: ['node'] });
      rmSync(join(r3, '603', 'cmdline'));
      mkdirSync(join(r3, '603', 'cmdline'));
      // good stat and cmdline, status is a directory, selected for details
      writeProc(r3, { pid: 604, comm: 'node', ppid: 1, start: 6040, argv: ['node', MARKER] });
      rmSync(join(r3, '604', 'status'));
      mkdirSync(join(r3, '604', 'status'));
      // vanished: an empty dir
      mkdirSync(join(r3, '605'));

      const { table, health, unreadablePids } = readProcessTable({
        procRoot: r3,
        pageSize: 4096,
        now,
        detailFor: (p) => p.argv.includes(MARKER),
      });
      expect(health.ok).toBe(false);
      expect(health.error).toMatch(/^processes degraded: 5 unreadable \(first: EISDIR .*600\/stat\)$/);
      expect(unreadablePids.sort()).toEqual([600, 601, 602, 603, 604]);
      const pids = table.processes.map((p) => p.pid);
      expect(pids).toEqual(expect.arrayContaining([1, 2, 15, 100, 200, 603, 604]));
      expect(pids).not.toContain(600);
      expect(pids).not.toContain(605);
      expect(table.processes.find((p) => p.pid === 603)!.argv).toEqual([]);
      expect(table.processes.find((p) => p.pid === 604)).toMatchObject({ uid: null });
      expect(table.processes.find((p) => p.pid === 604)!.detailed).toBeFalsy();
    } finally {
      rmSync(r3, { recursive: true, force: true });
    }
  });

  it('never throws when the root is missing', () => {
    const { table, health } = readProcessTable({ procRoot: join(tmpdir(), 'no-such-proc-root-xyz'), pageSize: 4096 });
    expect(table.processes).toEqual([]);
    expect(health.ok).toBe(false);
    expect(health.error).toMatch(/^processes down: cannot list .* \(ENOENT\)$/);
  });

  it('readIdentity and readCwd use the injected root', () => {
    expect(readIdentity(201, root)).toEqual({ pid: 201, startTicks: 2010, state: 'S', ppid: 200, pgid: 200, sid: 200 });
    expect(readIdentity(500, root)).toBeNull();
    expect(readIdentity(999, root)).toBeNull();
    expect(readIdentity(-1, root)).toBeNull();
    expect(readCwd(201, root)).toBeNull();
  });
});

describe('ArgvCache', () => {
  it('reuses argv while (pid, start ticks, comm) is unchanged, rereads after exec, drops gone pids', () => {
    const root = mkdtempSync(join(tmpdir(), 'proc-fixture-cache-'));
    try {
      writeFileSync(join(root, 'uptime'), '10.00 1.00\n');
      writeProc(root, { pid: 10, comm: 'node', ppid: 1, start: 100, argv: ['node', 'a.js'] });
      writeProc(root, { pid: 11, comm: 'sh', ppid: 1, start: 110, argv: ['sh', '-c', 'x'] });
      writeProc(root, { pid: 12, comm: 'node', ppid: 1, start: 120, argv: ['node', 'b.js'] });
      const cache = new ArgvCache();
      const argvOf = () =>
        Object.fromEntries(readProcessTable({ procRoot: root, pageSize: 4096, argvCache: cache }).table.processes.map((p) => [p.pid, p.argv]));
      expect(argvOf()).toEqual({ 10: ['node', 'a.js'], 11: ['sh', '-c', 'x'], 12: ['node', 'b.js'] });
      expect(cache.size).toBe(3);
      // Same identity and comm: the cached argv is used (the file is not read again).
      writeProc(root, { pid: 10, comm: 'node', ppid: 1, start: 100, argv: ['node', 'CHANGED.js'] });
      // exec: same pid and start time, new comm -> read again.
      writeProc(root, { pid: 11, comm: 'node', ppid: 1, start: 110, argv: ['node', 'exec-ed.js'] });
      // pid reused: new start time -> read again.
      writeProc(root, { pid: 12, comm: 'node', ppid: 1, start: 999, argv: ['node', 'reused.js'] });
      expect(argvOf()).toEqual({ 10: ['node', 'a.js'], 11: ['node', 'exec-ed.js'], 12: ['node', 'reused.js'] });
      expect(cache.hits).toBe(1);
      rmSync(join(root, '12'), { recursive: true });
      argvOf();
      expect(cache.size).toBe(2);
      // Without a cache, every pass reads cmdline.
      expect(readProcessTable({ procRoot: root, pageSize: 4096 }).table.processes.find((p) => p.pid === 10)!.argv).toEqual(['node', 'CHANGED.js']);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe('sameProcess', () => {
  it.each([
    { a: { pid: 5, startTicks: 10 }, b: { pid: 5, startTicks: 10 }, want: true },
    { a: { pid: 5, startTicks: 10 }, b: { pid: 5, startTicks: 11 }, want: false },
    { a: { pid: 5, startTicks: 10 }, b: { pid: 6, startTicks: 10 }, want: false },
  ])('$a.pid/$a.startTicks vs $b.pid/$b.startTicks', ({ a, b, want }) => expect(sameProcess(a, b)).toBe(want));
});

// ---------------------------------------------------------------------------------------------
// Real processes

describe('readProcessTable on real processes', () => {
  const started: { stop(): Promise<void> }[] = [];
  // Resolve (under vitest: transpile) the child script first, so spawn times below are spawn times.
  beforeAll(async () => {
    await fakeAdapterChildScript();
  });
  afterEach(async () => {
    await Promise.all(started.splice(0).map((t) => t.stop()));
  });
  async function track<T extends { stop(): Promise<void> }>(p: Promise<T>): Promise<T> {
    const t = await p;
    started.push(t);
    return t;
  }
  const byPid = (ps: ProcessInfo[]) => new Map(ps.map((p) => [p.pid, p]));

  // A C program whose main thread exits while another runs: /proc says Z, the process lives.
  const cc = spawnSync('cc', ['--version'], { stdio: 'ignore' }).error === undefined;
  it.skipIf(!cc)(`a process whose main thread exited while another runs is alive, not a zombie${cc ? '' : ' (skipped: no cc to build it)'}`, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'zl-'));
    writeFileSync(join(dir, 'zl.c'), '#include <pthread.h>\n#include <unistd.h>\nstatic void *run(void *a) { (void)a; sleep(30); return 0; }\nint main(void) { pthread_t t; pthread_create(&t, 0, run, 0); pthread_exit(0); }\n');
    expect(spawnSync('cc', ['-pthread', '-o', join(dir, 'zl'), join(dir, 'zl.c')]).status).toBe(0);
    const child = spawn(join(dir, 'zl'), { stdio: 'ignore' });
    try {
      expect(await waitUntil(() => /^Threads:\s+2$/m.test(readFileSync(`/proc/${child.pid}/status`, 'utf8')) && /^State:\s+Z/m.test(readFileSync(`/proc/${child.pid}/status`, 'utf8'))), 'the kernel shows it as Z with 2 threads').toBe(true);
      const id = readIdentity(child.pid!);
      expect(id?.state).toBe('S');
      const row = readProcessTable({}).table.processes.find((p) => p.pid === child.pid);
      expect(row?.state).toBe('S');
      expect(procPort().groupMembers(id!.pgid)?.map((m) => m.pid)).toContain(child.pid);
    } finally {
      child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reads this process with its cwd and identity', () => {
    const { table, health } = readProcessTable({ detailFor: (p) => p.pid === process.pid });
    expect(health.ok).toBe(true);
    const me = table.processes.find((p) => p.pid === process.pid)!;
    expect(me).toBeDefined();
    expect(me.uid).toBe(process.getuid!());
    expect(me.argv.length).toBeGreaterThan(0); // vitest rewrites its title: argv[0] is not execPath
    expect(readCwd(process.pid)).toBe(process.cwd());
    const id = readIdentity(process.pid)!;
    expect(sameProcess(id, me)).toBe(true);
    expect(id.ppid).toBe(process.ppid);
  });

  it('sees a fake adapter tree: ppid chain, group, session, marker argv, RSS and start time', async () => {
    const holdMb = 24;
    const t0 = Date.now() / 1000;
    const tree: FakeTree = await track(spawnFakeTree({ holdMb }));
    // The real shape: npm exec → sh → node adapter, then one claude CLI per session.
    expect(tree.pids).toHaveLength(3);
    const session = await tree.openSession();
    const t1 = Date.now() / 1000;
    expect(tree.pids).toHaveLength(4);
    const [top, sh, adapter, cli] = tree.pids as [number, number, number, number];
    expect(tree.topPid).toBe(top);
    expect(tree.pgid).toBe(top);
    expect(cli).toBe(session.pid);
    const { table, health } = readProcessTable({ detailFor: (p) => p.pid === top });
    expect(health.ok).toBe(true);
    const m = byPid(table.processes);
    const [a, b, c, d] = [m.get(top)!, m.get(sh)!, m.get(adapter)!, m.get(cli)!];
    expect(a).toMatchObject({ ppid: process.pid, pgid: top, sid: top, state: expect.stringMatching(/^[RS]$/) });
    expect(b).toMatchObject({ ppid: top, pgid: top, sid: top });
    expect(c).toMatchObject({ ppid: sh, pgid: top, sid: top });
    expect(d).toMatchObject({ ppid: adapter, pgid: top, sid: top });
    // npm's title: one argv element.
    expect(a.argv).toHaveLength(1);
    expect(a.argv[0]).toMatch(/^npm exec @agentclientprotocol\/claude-agent-acp --model \S+ --allowedPaths /);
    expect(b.argv.slice(0, 2)).toEqual(['sh', '-c']);
    expect(b.argv[2]).toMatch(/^'claude-agent-acp' --model /);
    expect(c.argv[0]).toBe('node');
    expect(c.argv[1]).toMatch(/\/_npx\/[0-9a-f]+\/node_modules\/\.bin\/claude-agent-acp$/);
    expect(d.argv.join(' ')).not.toContain('claude-agent-acp');
    expect(d.argv[1]).toMatch(/claude-agent-sdk-linux-x64\/claude$/);
    expect(d.argv).toContain(`--session-id=${session.sessionId}`);
    // The node levels hold what was asked; the CLI is the heavy one; sh holds nothing.
    for (const p of [a, c]) expect(p.rssBytes).toBeGreaterThanOrEqual(holdMb * 1024 * 1024);
    expect(d.rssBytes).toBeGreaterThanOrEqual(2 * holdMb * 1024 * 1024);
    for (const p of [a, b, c, d]) {
      // Details reached the whole tree from the top alone (descendants).
      expect(p.detailed).toBe(true);
      expect(p.uid).toBe(process.getuid!());
      const wall = startEpoch(table.clock, p.startTicks);
      expect(wall).toBeGreaterThanOrEqual(t0 - 1);
      expect(wall).toBeLessThanOrEqual(t1 + 1);
    }
    expect(Math.abs(startEpoch(table.clock, a.startTicks) - t0)).toBeLessThan(1);
    expect(tree.identities.map((i) => i.pid)).toEqual(tree.pids);
    for (const id of tree.identities) expect(sameProcess(id, m.get(id.pid)!)).toBe(true);
  });

  it('a setsid grandchild has its own session and group, its ppid chain intact', async () => {
    const tree = await track(spawnFakeTree({ holdMb: 1, setsidGrandchild: true }));
    const [top, child, grandchild] = tree.pids as [number, number, number];
    const m = byPid(readProcessTable().table.processes);
    expect(m.get(child)).toMatchObject({ ppid: top, pgid: top, sid: top });
    expect(m.get(grandchild)).toMatchObject({ ppid: child, pgid: grandchild, sid: grandchild });
  });

  it('depth and marker are options; stop() is idempotent and leaves nothing alive', async () => {
    const tree = await spawnFakeTree({ holdMb: 1, depth: 4, marker: 'codex-acp' });
    expect(tree.pids).toHaveLength(4);
    const m = byPid(readProcessTable().table.processes);
    expect(m.get(tree.pids[0]!)!.argv).toContain('codex-acp');
    expect(m.get(tree.pids[3]!)).toMatchObject({ ppid: tree.pids[2], pgid: tree.topPid });
    await Promise.all([tree.stop(), tree.stop()]);
    await tree.stop();
    for (const id of tree.identities) {
      const now = readIdentity(id.pid);
      expect(now === null || !sameProcess(now, id) || now.state === 'Z').toBe(true);
    }
  });

  it('stop() kills levels that ignore SIGTERM and setsid levels', async () => {
    const tree = await spawnFakeTree({ holdMb: 1, ignoreSigterm: true, setsidGrandchild: true });
    process.kill(-tree.topPid, 'SIGTERM');
    await new Promise((r) => setTimeout(r, 200));
    for (const id of tree.identities) expect(readIdentity(id.pid)?.state).toMatch(/^[RS]$/);
    await tree.stop();
    // Gone, or a zombie waiting for pid 1 / the subreaper that adopted it to reap it.
    for (const id of tree.identities) expect([undefined, 'Z', 'X']).toContain(readIdentity(id.pid)?.state);
  });

  it('every process exits by itself after maxLifetimeMs', async () => {
    const tree = await track(spawnFakeTree({ holdMb: 0, maxLifetimeMs: 1500, setsidGrandchild: true, ignoreSigterm: true }));
    const deadline = Date.now() + 10_000;
    const alive = () => tree.identities.filter((id) => {
      const now = readIdentity(id.pid);
      return now !== null && sameProcess(now, id) && now.state !== 'Z';
    });
    while (alive().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(alive()).toEqual([]);
  });

  it('a zombie is listed with state Z and an empty argv', async () => {
    const z: FakeZombie = await track(spawnZombie());
    const m = byPid(readProcessTable().table.processes);
    expect(m.get(z.zombiePid)).toMatchObject({ state: 'Z', ppid: z.parentPid, argv: [] });
    expect(m.get(z.parentPid)!.state).not.toBe('Z');
    expect(readIdentity(z.zombiePid)!.state).toBe('Z');
  });

  it('a non-reaping parent keeps a killed top as a zombie', async () => {
    const tree = await track(spawnFakeTree({ holdMb: 1, parent: 'non-reaping' }));
    const top = readIdentity(tree.topPid)!;
    expect(top).toMatchObject({ ppid: tree.parentPid, pgid: tree.topPid, sid: tree.topPid });
    process.kill(-tree.topPid, 'SIGKILL');
    const deadline = Date.now() + 5000;
    while (readIdentity(tree.topPid)?.state !== 'Z' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(readIdentity(tree.topPid)).toMatchObject({ state: 'Z', ppid: tree.parentPid });
  });

  it('readIdentity returns null once the process is gone', async () => {
    const tree = await spawnFakeTree({ holdMb: 0, depth: 1 });
    const id = readIdentity(tree.topPid)!;
    expect(sameProcess(id, tree.identities[0]!)).toBe(true);
    await tree.stop();
    expect(readIdentity(tree.topPid)).toBeNull();
  });

  it('an orphan tree’s top has ppid 1 or a subreaper among our ancestors', async () => {
    const tree = await track(spawnOrphanTree({ holdMb: 1 }));
    const top = readIdentity(tree.topPid)!;
    expect(top.pid).toBe(tree.topPid);
    expect(top.ppid).not.toBe(process.pid);
    expect(top.ppid).not.toBe(tree.parentPid); // the launcher exited
    expect(readIdentity(tree.parentPid)).toBeNull();
    expect(top).toMatchObject({ pgid: tree.topPid, sid: tree.topPid });
    // A subreaper that adopted it must be an ancestor of the launcher, hence of this process.
    const ancestors = new Set<number>([1]);
    for (let pid = process.pid; pid > 1; ) {
      const id = readIdentity(pid);
      if (!id) break;
      ancestors.add(id.ppid);
      pid = id.ppid;
    }
    expect(ancestors.has(top.ppid)).toBe(true);
    const m = byPid(readProcessTable().table.processes);
    expect(m.get(tree.pids[1]!)).toMatchObject({ ppid: tree.topPid, pgid: tree.topPid });
  });

  it('reads the real /proc/uptime clock close to btime', () => {
    const { clock } = readClock();
    const btime = Number(/^btime (\d+)$/m.exec(readFileSync('/proc/stat', 'utf8'))![1]);
    expect(Math.abs(clock.bootTimeEpoch - btime)).toBeLessThan(1.1);
  });
});
