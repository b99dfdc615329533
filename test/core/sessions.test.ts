// Sessions (one agent CLI each) and leaderless groups in the pure core: table-driven, no mocks.
import { describe, expect, it } from 'vitest';
import { classify } from '../../src/core/classify.js';
import { DEFAULT_POLICY } from '../../src/core/types.js';
import { plan } from '../../src/core/plan.js';
import { sessionIdOf } from '../../src/core/sessions.js';
import { NOW, SERVER, input, job, pidFile, proc, run, serverProc } from '../helpers/synthetic.js';

const U1 = '87bdf780-132f-46b3-82f1-83f4adf92209';
const U2 = '2d2df97f-514c-4a09-b2f1-06456112203d';

describe('sessionIdOf', () => {
  const cases: [string[], string | null][] = [
    [['claude', '--output-format', 'stream-json', `--session-id=${U1}`], U1],
    [['claude', '--session-id', U1], U1],
    [['claude', '--resume', U2.toUpperCase()], U2],
    [['claude', `--resume=${U2}`], U2],
    [['claude', '--resume', 'last'], null], // not a session id
    [['claude', '--session-id'], null],
    [[`--session-id=${U1}`], null], // argv[0] is the program, never a flag
    [['node', '/x/.bin/claude-agent-acp', '--model', 'opus'], null],
    [['claude', `--session-id=${U1}x`], null],
  ];
  for (const [argv, want] of cases) it(`${argv.join(' ')} → ${want}`, () => expect(sessionIdOf(argv)).toBe(want));
});

/** The real shape: npm exec → sh → node adapter → one claude CLI per session. */
function realTree(top: number, parent: number, start: number, sessions: string[]) {
  const g = { pgid: top, sid: top };
  const out = [
    proc(top, parent, start, { argv: ['npm exec @agentclientprotocol/claude-agent-acp --model opus'] }),
    proc(top + 1, top, start + 0.1, { ...g, argv: ['sh', '-c', "'claude-agent-acp' --model opus"] }),
    proc(top + 2, top + 1, start + 0.2, { ...g, argv: ['node', '/h/.npm/_npx/x/node_modules/.bin/claude-agent-acp', '--model', 'opus'] }),
  ];
  sessions.forEach((id, i) => out.push(proc(top + 3 + i, top + 2, start + 1 + i, { ...g, argv: ['/h/claude', '--output-format', 'stream-json', `--session-id=${id}`], rssBytes: 170 * 2 ** 20 })));
  return out;
}

describe('sessions inside a tree', () => {
  it('a shared adapter: the abandoned job’s session is leaked, the running job’s active; the tree is active', () => {
    const inv = classify(
      input({
        processes: [serverProc, ...realTree(200, SERVER, 3_000, [U1, U2])],
        runs: [run('r1', 'running-job', 200, 3_000, null, { sessionId: U1 }), run('r2', 'failed-job', 200, 3_100, 3_200, { sessionId: U2 })],
        jobs: [job('running-job', 'running'), job('failed-job', 'failed', 3_200, 'abandoned')],
        pidFiles: [pidFile(200, 3_001)],
      }),
    );
    const tree = inv.adapters.find((t) => t.topPid === 200)!;
    expect(tree.verdict).toBe('active');
    expect(tree.sessions.map((s) => [s.sessionId, s.pid, s.verdict])).toEqual([
      [U1, 203, 'active'],
      [U2, 204, 'leaked'],
    ]);
    expect(tree.sessions[1]!.lastTerminalEpoch).toBe(3_200);
    expect(tree.sessions[1]!.reason).toMatch(/job failed-job failed .*\(abandoned\); the adapter stays for running-job \(running\)/);
  });

  it('a session no run names is unattributed; several runs of one session: active while any job is live', () => {
    const inv = classify(
      input({
        processes: [serverProc, ...realTree(200, SERVER, 3_000, [U1, U2])],
        runs: [run('r1', 'j1', 200, 3_000, 3_100, { sessionId: U1 }), run('r2', 'j2', 200, 3_100, null, { sessionId: U1 })],
        jobs: [job('j1', 'completed', 3_100), job('j2', 'running')],
      }),
    );
    const s = inv.adapters.find((t) => t.topPid === 200)!.sessions;
    expect(s.map((x) => [x.sessionId, x.verdict, x.jobs.map((j) => j.id).sort()])).toEqual([
      [U1, 'active', ['j1', 'j2']],
      [U2, 'unattributed', []],
    ]);
  });

  it("a CLI's own children belong to its session; a child re-executing with the same session id is not a second session", () => {
    const tree = realTree(200, SERVER, 3_000, [U1]);
    tree.push(proc(300, 203, 3_500, { pgid: 200, sid: 200, argv: ['bash', '-c', 'ls'] }));
    tree.push(proc(301, 203, 3_600, { pgid: 200, sid: 200, argv: ['/h/claude', `--session-id=${U1}`, 'rg'] }));
    const inv = classify(input({ processes: [serverProc, ...tree], runs: [run('r1', 'j1', 200, 3_000, null, { sessionId: U1 })], jobs: [job('j1', 'running')] }));
    const s = inv.adapters.find((t) => t.topPid === 200)!.sessions;
    expect(s).toHaveLength(1);
    expect(s[0]!.processes.map((p) => p.pid)).toEqual([203, 300, 301]);
  });
});

describe('stopping sessions', () => {
  it('a leaked session that holds another session (an adapter carrying an id itself) is never planned', () => {
    const tree = realTree(200, SERVER, 3_000, [U2]);
    // The adapter node itself carries U1 (a custom agent resumed by id); the running job's CLI (U2) is under it.
    tree[2] = { ...tree[2]!, argv: [...tree[2]!.argv, '--resume', U1] };
    const inv = classify(
      input({
        processes: [serverProc, ...tree],
        runs: [run('r1', 'failed-job', 200, 3_000, 3_100, { sessionId: U1 }), run('r2', 'running-job', 200, 3_100, null, { sessionId: U2 })],
        jobs: [job('failed-job', 'failed', 3_100), job('running-job', 'running')],
      }),
    );
    const t = inv.adapters.find((x) => x.topPid === 200)!;
    expect(t.verdict).toBe('active');
    expect(t.sessions.map((x) => [x.sessionId, x.verdict])).toEqual([[U1, 'leaked']]);
    const p = plan(inv, DEFAULT_POLICY, { allLeaked: true, orphans: true, sessions: true, jobs: [], pids: [], force: false, gc: false }, { selfPid: 1, selfAncestors: [], selfUid: 1000, allowOtherUids: false });
    expect(p.actions).toEqual([]);
    expect(p.refusals.map((r) => [r.code, r.reason])).toEqual([['protected', expect.stringMatching(/holds process 203 of another session: never stopped alone/)]]);    // The refusal names the session by identity (re-verification finds it by this, not by its text).
    const s1 = t.sessions[0]!;
    expect(p.refusals[0]!.session).toEqual({ sessionId: U1, pid: s1.pid, startTicks: s1.startTicks });
  });
});

describe('leaderless groups (the top died, node + CLI live on under its pgid)', () => {
  /** The real top-killed shape: top gone (or a zombie child of the server), node reparented to 1. */
  function topKilled(zombieTop: boolean) {
    const tree = realTree(200, SERVER, 3_000, [U1]).filter((p) => p.pid !== 201);
    tree[0] = { ...tree[0]!, state: 'Z', argv: [] };
    tree[1] = { ...tree[1]!, ppid: 1 };
    return zombieTop ? tree : tree.slice(1);
  }

  it('paused job, pid file kept, top a zombie: paused (never orphaned), the reason says the leader is gone', () => {
    const inv = classify(
      input({
        processes: [serverProc, ...topKilled(true)],
        runs: [run('r1', 'j1', 200, 3_000, 3_050, { sessionId: U1 })],
        jobs: [job('j1', 'paused')],
        pidFiles: [pidFile(200, 3_001)],
      }),
    );
    const tree = inv.adapters.find((t) => t.topPid === 200)!;
    expect(tree.verdict).toBe('paused');
    expect(tree.reason).toMatch(/group leader 200 gone; members alive/);
    expect(tree.processes.map((p) => p.pid)).toEqual([202, 203]);
    expect(tree.sessions[0]!.verdict).toBe('paused');
  });

  it('failed job, no pid file, top reaped, only the run’s pgid names the group: leaked', () => {
    const inv = classify(
      input({
        processes: [serverProc, ...topKilled(false)],
        // executor_state.pid is another (dead) pid; pgid names the group.
        runs: [run('r1', 'j1', 999, 3_000, 3_100, { pgid: 200, sessionId: U1 })],
        jobs: [job('j1', 'failed', 3_100)],
      }),
    );
    const tree = inv.adapters.find((t) => t.topPid === 200)!;
    expect(tree.verdict).toBe('leaked');
    expect(tree.evidence.map((e) => e.kind)).toEqual(['run']);
    expect(tree.sessions[0]!.verdict).toBe('leaked');
  });

  it('a run names one tree: its pgid is followed only when its pid names nothing live', () => {
    // pid 200 is a live adapter; the run's pgid 500 is some other live group (a bad or stale
    // record): only the adapter is the run's, the other group is never tied to the job.
    const other = proc(500, 1, 3_000, { argv: ['node', '/x/.bin/claude-agent-acp'] });
    const inv = classify(
      input({
        processes: [serverProc, ...realTree(200, SERVER, 3_000, []), other],
        runs: [run('r1', 'j1', 200, 3_000, 3_100, { pgid: 500 })],
        jobs: [job('j1', 'failed', 3_100)],
      }),
    );
    expect(inv.adapters.find((t) => t.topPid === 200)?.verdict).toBe('leaked');
    const t500 = inv.adapters.find((t) => t.processes.some((p) => p.pid === 500));
    expect(t500?.verdict).toBe('foreign');
    expect(t500?.jobs).toEqual([]);
  });

  it('a live group that started after the run finished is not that run’s (a reused pid)', () => {
    const processes = [serverProc, ...topKilled(false).map((p) => ({ ...p, startTicks: p.startTicks + 100_00 }))];
    const inv = classify(input({ processes, runs: [run('r1', 'j1', 200, 3_000, 3_010, { sessionId: U1 })], jobs: [job('j1', 'failed', 3_010)], now: NOW }));
    // Not the run's: the marker still shows it, as foreign (never reaped).
    const tree = inv.adapters.find((t) => t.processes.some((p) => p.pid === 202));
    expect(tree?.verdict).toBe('foreign');
    expect(tree?.reason).toMatch(/no run, pid file or server names it/);
  });
});
