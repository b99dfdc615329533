import { describe, expect, it } from 'vitest';
import { classify } from '../../src/core/classify.js';
import { resolveServer } from '../../src/core/server.js';
import type { JobRow, RunRow } from '../../src/core/types.js';
import { BOOT, NOW, SERVER, adapter, input, iso, job, pidFile, proc, run, serverProc } from '../helpers/synthetic.js';

const verdictOf = (inv: ReturnType<typeof classify>, top: number) => inv.adapters.find((a) => a.topPid === top);

describe('classify: verdicts', () => {
  const cases: { name: string; jobs: JobRow[]; expected: string }[] = [
    { name: 'running job → active', jobs: [job('j1', 'running')], expected: 'active' },
    { name: 'pending job → active', jobs: [job('j1', 'pending')], expected: 'active' },
    { name: 'awaiting_approval job → active', jobs: [job('j1', 'awaiting_approval')], expected: 'active' },
    { name: 'staged job → active', jobs: [job('j1', 'staged')], expected: 'active' },
    { name: 'paused job → paused', jobs: [job('j1', 'paused')], expected: 'paused' },
    { name: 'failed job → leaked', jobs: [job('j1', 'failed', 4_000, 'abandoned')], expected: 'leaked' },
    { name: 'completed job → leaked', jobs: [job('j1', 'completed')], expected: 'leaked' },
    { name: 'cancelled job → leaked', jobs: [job('j1', 'cancelled')], expected: 'leaked' },
    { name: 'archived job → leaked', jobs: [job('j1', 'archived')], expected: 'leaked' },
    { name: 'unknown status is never taken as terminal', jobs: [job('j1', 'weird')], expected: 'active' },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const inv = classify(
        input({
          processes: [serverProc, ...adapter(200, SERVER, 2_000)],
          runs: [run('r1', 'j1', 200, 1_999.9, c.expected === 'leaked' ? 3_000 : null)],
          jobs: c.jobs,
          pidFiles: [pidFile(200, 2_000.3)],
        }),
      );
      const tree = verdictOf(inv, 200)!;
      expect(tree.verdict).toBe(c.expected);
      expect(tree.processes.map((p) => p.pid).sort()).toEqual([200, 201, 202]);
    });
  }

  it('a shared adapter stays active while any job using it runs, and paused beats leaked', () => {
    const procs = [serverProc, ...adapter(200, SERVER, 2_000)];
    const runs = [run('r1', 'j1', 200, 1_999.9, null), run('r2', 'j2', 200, 2_500, 2_600)];
    const active = classify(input({ processes: procs, runs, jobs: [job('j1', 'running'), job('j2', 'failed')] }));
    expect(verdictOf(active, 200)!.verdict).toBe('active');
    expect(verdictOf(active, 200)!.jobs.map((j) => j.id).sort()).toEqual(['j1', 'j2']);
    const paused = classify(input({ processes: procs, runs, jobs: [job('j1', 'paused'), job('j2', 'failed')] }));
    expect(verdictOf(paused, 200)!.verdict).toBe('paused');
  });

  it('leaked reason names the job, its status, age and why', () => {
    const inv = classify(
      input({ processes: [serverProc, ...adapter(200, SERVER, 2_000)], runs: [run('r1', 'job-3c93', 200, 1_999.9, 2_100)], jobs: [job('job-3c93', 'failed', NOW - 120, 'abandoned')] }),
    );
    expect(verdictOf(inv, 200)!.reason).toBe('job job-3c93 failed 2m ago (abandoned)');
    expect(verdictOf(inv, 200)!.lastTerminalEpoch).toBe(NOW - 120);
  });

  it('spawning then unreferenced: a server child named by nothing, by age', () => {
    const young = classify(input({ processes: [serverProc, ...adapter(200, SERVER, NOW - 10)] }));
    expect(verdictOf(young, 200)!.verdict).toBe('spawning');
    const old = classify(input({ processes: [serverProc, ...adapter(200, SERVER, NOW - 600)] }));
    expect(verdictOf(old, 200)!.verdict).toBe('unreferenced');
  });

  it('a server child without a marker and without evidence is not an adapter (a script step, a hook)', () => {
    const inv = classify(input({ processes: [serverProc, proc(200, SERVER, 2_000, { argv: ['bash', 'step.sh'] })] }));
    expect(inv.adapters).toEqual([]);
  });

  it('orphaned: pid file, no job, reparented to pid 1 or a subreaper', () => {
    const init = classify(input({ processes: [serverProc, ...adapter(200, 1, 1_200)], pidFiles: [pidFile(200, 1_200.3)] }));
    expect(verdictOf(init, 200)!.verdict).toBe('orphaned');
    const sysd = proc(50, 1, 1_010, { comm: 'systemd', argv: ['/lib/systemd/systemd', '--user'] });
    const sub = classify(input({ processes: [serverProc, sysd, ...adapter(200, 50, 1_200)], pidFiles: [pidFile(200, 1_200.3)] }));
    expect(verdictOf(sub, 200)!.verdict).toBe('orphaned');
  });

  it('a pid-file tree whose parent is some other live process is not called orphaned', () => {
    const other = proc(60, 1, 1_010, { comm: 'bash', argv: ['bash'] });
    const inv = classify(input({ processes: [serverProc, other, ...adapter(200, 60, 1_200)], pidFiles: [pidFile(200, 1_200.3)] }));
    expect(verdictOf(inv, 200)!.verdict).toBe('foreign');
    expect(verdictOf(inv, 200)!.reason).toMatch(/neither this project's live server nor init/);
  });

  it('foreign: marker only; the editor that leads the group is not part of the tree', () => {
    const editor = proc(300, 1, 1_100, { comm: 'zed-editor', argv: ['/usr/share/zed/zed-editor'] });
    const inv = classify(
      input({
        processes: [
          serverProc,
          editor,
          proc(301, 300, 1_101, { pgid: 300, sid: 300, argv: ['npm', 'exec', '@agentclientprotocol/claude-agent-acp'] }),
          proc(302, 301, 1_101.1, { pgid: 300, sid: 300, argv: ['node', '/x/claude-agent-acp'] }),
          proc(303, 302, 1_101.2, { pgid: 300, sid: 300, argv: ['claude'] }),
        ],
      }),
    );
    const tree = verdictOf(inv, 301)!;
    expect(tree.verdict).toBe('foreign');
    expect(tree.processes.map((p) => p.pid).sort()).toEqual([301, 302, 303]);
    expect(inv.adapters.some((a) => a.processes.some((p) => p.pid === 300))).toBe(false);
  });

  it('in-vm runs are counted, never matched against a host process with the same pid', () => {
    const inv = classify(
      input({
        processes: [serverProc, ...adapter(200, 1, 1_200)],
        runs: [run('r1', 'j1', 200, 4_000, null, { inVm: true })],
        jobs: [job('j1', 'running')],
      }),
    );
    expect(inv.adapters.find((a) => a.verdict === 'in-vm')?.jobs.map((j) => j.id)).toEqual(['j1']);
    // The host process 200 is not claimed by the in-vm run: it has no evidence → foreign.
    const host = inv.adapters.find((a) => a.topPid === 200 && a.verdict !== 'in-vm')!;
    expect(host.verdict).toBe('foreign');
    expect(host.jobs).toEqual([]);
  });
});

describe('classify: identity and reuse', () => {
  it('a process that started after its run finished is a reused pid, not the adapter', () => {
    const inv = classify(
      input({
        processes: [serverProc, ...adapter(200, 1, 3_000)],
        runs: [run('r1', 'j1', 200, 2_000, 2_500)],
        jobs: [job('j1', 'failed')],
      }),
    );
    const tree = verdictOf(inv, 200)!;
    expect(tree.verdict).toBe('foreign');
    expect(tree.jobs).toEqual([]);
  });

  it('a later run of another job reusing the adapter does not make it "reused"', () => {
    const inv = classify(
      input({
        processes: [serverProc, ...adapter(200, SERVER, 2_000)],
        runs: [run('r1', 'j1', 200, 1_999.9, 2_100), run('r2', 'j2', 200, 2_200, 2_300)],
        jobs: [job('j1', 'failed'), job('j2', 'completed')],
      }),
    );
    expect(verdictOf(inv, 200)!.verdict).toBe('leaked');
    expect(verdictOf(inv, 200)!.jobs).toHaveLength(2);
  });

  describe('the cancel-then-retry leak: a pid recorded on a run after it finished', () => {
    // The job was cancelled at 3_000; its step retried and spawned an adapter at 3_030, which
    // the engine recorded on the cancelled run (pid column and executor_state).
    const retryRun = (over: Partial<RunRow> = {}) => run('r1', 'j1', 200, 2_000, 3_000, { status: 'cancelled', pidColumn: 200, ...over });
    const procs = () => [serverProc, ...adapter(200, SERVER, 3_030)];

    it('is leaked when the pid file confirms the process', () => {
      const inv = classify(input({ processes: procs(), runs: [retryRun()], jobs: [job('j1', 'cancelled', 3_000)], pidFiles: [pidFile(200, 3_030.3)] }));
      const tree = verdictOf(inv, 200)!;
      expect(tree.verdict).toBe('leaked');
      expect(tree.reason).toMatch(/cancel-then-retry leak/);
    });

    it('is not evidence without a pid file (the pid may have been reused since)', () => {
      const inv = classify(input({ processes: procs(), runs: [retryRun()], jobs: [job('j1', 'cancelled', 3_000)] }));
      expect(verdictOf(inv, 200)!.verdict).toBe('unreferenced');
      expect(verdictOf(inv, 200)!.reason).toMatch(/no pid file confirms the process/);
    });

    it('is not evidence when the pid column was cleared (the engine finished the run after the pid was recorded)', () => {
      const inv = classify(input({ processes: procs(), runs: [retryRun({ pidColumn: null })], jobs: [job('j1', 'cancelled', 3_000)], pidFiles: [pidFile(200, 3_030.3)] }));
      expect(verdictOf(inv, 200)!.verdict).toBe('unreferenced');
    });
  });

  it('a pid file older than its process is stale-reused and gives no evidence', () => {
    const sleeper = proc(200, 1, 3_000, { argv: ['sleep', '100000'], comm: 'sleep' });
    const inv = classify(input({ processes: [serverProc, sleeper], pidFiles: [pidFile(200, 2_000)] }));
    expect(inv.pidFiles[0]!.verdict).toBe('stale-reused');
    expect(inv.adapters).toEqual([]);
  });

  it('a pid file naming no process is stale-dead; naming a zombie too', () => {
    const zombie = proc(201, SERVER, 2_000, { state: 'Z', argv: [] });
    const inv = classify(input({ processes: [serverProc, zombie], pidFiles: [pidFile(200, 2_000), pidFile(201, 2_000.3)] }));
    expect(inv.pidFiles.map((f) => f.verdict)).toEqual(['stale-dead', 'stale-dead']);
    expect(inv.adapters).toEqual([]);
  });

  it('a run from before this boot names nothing alive now', () => {
    const inv = classify(
      input({ processes: [serverProc, ...adapter(200, SERVER, NOW - 600)], runs: [run('r1', 'j1', 200, BOOT - 50, null)], jobs: [job('j1', 'running')] }),
    );
    expect(verdictOf(inv, 200)!.verdict).toBe('unreferenced');
  });

  it('a dead group leader with live members is still the tree (evidence checked on the earliest member)', () => {
    const procs = adapter(200, SERVER, 2_000).slice(1).map((p) => ({ ...p, ppid: p.pid === 201 ? 1 : p.ppid }));
    const inv = classify(input({ processes: [serverProc, ...procs], runs: [run('r1', 'j1', 200, 1_999.9, 2_100)], jobs: [job('j1', 'failed')], pidFiles: [pidFile(200, 2_000.3)] }));
    const tree = verdictOf(inv, 200)!;
    expect(tree.verdict).toBe('leaked');
    expect(tree.processes.map((p) => p.pid).sort()).toEqual([201, 202]);
    expect(inv.pidFiles[0]!.verdict).toBe('live');
  });

  it('a descendant that called setsid (left group and session) stays in the tree by ppid', () => {
    const procs = adapter(200, SERVER, 2_000);
    procs[2] = { ...procs[2]!, pgid: 202, sid: 202 };
    const inv = classify(input({ processes: [serverProc, ...procs], runs: [run('r1', 'j1', 200, 1_999.9, 2_100)], jobs: [job('j1', 'failed')] }));
    expect(verdictOf(inv, 200)!.processes.map((p) => p.pid).sort()).toEqual([200, 201, 202]);
  });

  it('a zombie child is not a tree member', () => {
    const procs = adapter(200, SERVER, 2_000);
    procs[2] = { ...procs[2]!, state: 'Z' };
    const inv = classify(input({ processes: [serverProc, ...procs], runs: [run('r1', 'j1', 200, 1_999.9, 2_100)], jobs: [job('j1', 'failed')] }));
    expect(verdictOf(inv, 200)!.processes.map((p) => p.pid).sort()).toEqual([200, 201]);
  });

  it('the server itself and pid 1 are never tree members', () => {
    const inv = classify(input({ processes: [serverProc, ...adapter(200, SERVER, 2_000)], runs: [run('r1', 'j1', SERVER, 1_999, 2_100)], jobs: [job('j1', 'failed')] }));
    expect(inv.adapters.some((a) => a.processes.some((p) => p.pid === SERVER || p.pid === 1))).toBe(false);
  });
});

describe('classify: server and store facts', () => {
  it('a server.pid naming a process that started after started_at is stale (reused pid)', () => {
    const table = { processes: [proc(SERVER, 1, 3_000)], clock: { bootTimeEpoch: BOOT, ticksPerSecond: 100, bootTimeErrorSeconds: 0.02 } };
    const s = resolveServer({ pid: SERVER, startedAt: iso(1_500) }, undefined, table, 0.05);
    expect(s.alive).toBe(false);
    expect(s.stale).toBe(true);
  });

  it('with the server down, its former children with pid files are orphaned once reparented', () => {
    const inv = classify(input({ processes: [...adapter(200, 1, 2_000)], pidFiles: [pidFile(200, 2_000.3)], serverUp: false }));
    expect(inv.server.alive).toBe(false);
    expect(verdictOf(inv, 200)!.verdict).toBe('orphaned');
  });

  it('lists running runs under terminal jobs, and runs still starting an agent', () => {
    const inv = classify(
      input({
        processes: [serverProc],
        runs: [run('r1', 'j1', null, 2_000, null), run('r2', 'j2', null, 2_000, null)],
        jobs: [job('j1', 'failed'), job('j2', 'running')],
      }),
    );
    expect(inv.staleRunningRuns.map((r) => r.runId)).toEqual(['r1']);
    expect(inv.startingRuns).toEqual([{ runId: 'r2', jobId: 'j2', agent: 'claude' }]);
  });

  it("a script step's pid is never evidence, and a running script step is not an agent starting", () => {
    const inv = classify(
      input({
        processes: [serverProc, ...adapter(200, 1, 2_000)],
        runs: [run('r1', 'j1', 200, 1_999.9, null, { agentStep: false, agent: null }), run('r2', 'j2', null, 2_000, null, { agentStep: false, agent: null })],
        jobs: [job('j1', 'failed'), job('j2', 'running')],
      }),
    );
    expect(verdictOf(inv, 200)!.verdict).toBe('foreign');
    expect(inv.startingRuns).toEqual([]);
    expect(inv.staleRunningRuns.map((r) => r.runId)).toEqual(['r1']);
  });

  it('store down: trees are still listed, their reason says jobs are unknown', () => {
    const inv = classify(input({ processes: [serverProc, ...adapter(200, SERVER, NOW - 600)], pidFiles: [pidFile(200, NOW - 599.7)], storeDown: true }));
    expect(verdictOf(inv, 200)!.reason).toMatch(/^store unreadable, jobs unknown: /);
  });
});
