import { describe, expect, it } from 'vitest';
import { classify } from '../../src/core/classify.js';
import { nextGraceExpiry, plan, type PlanContext, type Selection } from '../../src/core/plan.js';
import { DEFAULT_POLICY, type ProjectInventory } from '../../src/core/types.js';
import { NOW, SERVER, adapter, input, job, pidFile, proc, run, serverProc } from '../helpers/synthetic.js';

const CTX: PlanContext = { selfPid: 9_000, selfAncestors: [8_000, 1], selfUid: 1000, allowOtherUids: false };
const NONE: Selection = { allLeaked: false, orphans: false, sessions: false, jobs: [], pids: [], force: false, gc: false };
const DEFAULTS: Selection = { ...NONE, allLeaked: true, orphans: true, gc: true };

/** A host with one tree of every kind: leaked (200), active (300), paused (400), orphan (500), unreferenced (600), foreign (700). */
function host(over: { leakedEndedAgo?: number; starting?: boolean; uid?: number | null; storeDown?: boolean } = {}): ProjectInventory {
  const ended = NOW - (over.leakedEndedAgo ?? 120);
  const leaked = adapter(200, SERVER, 2_000).map((p) => ({ ...p, uid: over.uid === undefined ? 1000 : over.uid }));
  const editor = proc(699, 1, 1_100, { comm: 'zed', argv: ['zed'] });
  const runs = [
    run('r-leak', 'j-leak', 200, 1_999.9, ended - 1),
    run('r-active', 'j-active', 300, 2_999.9, null),
    run('r-paused', 'j-paused', 400, 3_999.9, 4_100),
    ...(over.starting ? [run('r-new', 'j-new', null, NOW - 1, null)] : []),
  ];
  return classify(
    input({
      processes: [
        serverProc,
        editor,
        ...leaked,
        ...adapter(300, SERVER, 3_000),
        ...adapter(400, SERVER, 4_000),
        ...adapter(500, 1, 1_200),
        ...adapter(600, SERVER, 3_500),
        ...adapter(700, 699, 1_101).map((p) => ({ ...p, pgid: 699, sid: 699 })),
      ],
      runs,
      jobs: [job('j-leak', 'failed', ended, 'abandoned'), job('j-active', 'running'), job('j-paused', 'paused'), job('j-new', 'running')],
      pidFiles: [pidFile(200, 2_000.3), pidFile(500, 1_200.3), pidFile(600, 3_500.3), pidFile(999, 1_300)],
      storeDown: over.storeDown ?? false,
    }),
  );
}

const killed = (p: ReturnType<typeof plan>) => p.actions.flatMap((a) => (a.kind === 'kill-tree' ? [a.tree.topPid] : [])).sort();
const refusal = (p: ReturnType<typeof plan>, target: string) => p.refusals.find((r) => r.target === target);

describe('plan: what is reapable by default', () => {
  it('leaked past the terminal grace and orphaned past the spawn grace; never active, paused, unreferenced, foreign', () => {
    const inv = host();
    expect(inv.adapters.map((a) => [a.topPid, a.verdict])).toEqual(
      expect.arrayContaining([
        [200, 'leaked'],
        [300, 'active'],
        [400, 'paused'],
        [500, 'orphaned'],
        [600, 'unreferenced'],
        [700, 'foreign'],
      ]),
    );
    const p = plan(inv, DEFAULT_POLICY, DEFAULTS, CTX);
    expect(killed(p)).toEqual([200, 500]);
    expect(p.actions.filter((a) => a.kind === 'remove-pid-file').map((a) => (a.kind === 'remove-pid-file' ? a.file.pid : 0))).toEqual([999]);
  });

  it('holds a leaked tree within the terminal grace, and says when it expires', () => {
    const inv = host({ leakedEndedAgo: 10 });
    const p = plan(inv, DEFAULT_POLICY, DEFAULTS, CTX);
    expect(killed(p)).toEqual([500]);
    expect(refusal(p, 'tree 200')).toMatchObject({ code: 'grace' });
    expect(refusal(p, 'tree 200')!.reason).toMatch(/20s left/);
    expect(nextGraceExpiry(inv, DEFAULT_POLICY, DEFAULTS)).toBeCloseTo(20, 0);
  });

  it('--no-orphans and observe-only selections reap nothing they were not asked for', () => {
    expect(killed(plan(host(), DEFAULT_POLICY, { ...DEFAULTS, orphans: false }, CTX))).toEqual([200]);
    expect(plan(host(), DEFAULT_POLICY, NONE, CTX).actions).toEqual([]);
  });

  it('does not race the engine: a run starting an agent holds trees it could adopt', () => {
    const p = plan(host({ starting: true }), DEFAULT_POLICY, DEFAULTS, CTX);
    expect(killed(p)).toEqual([]);
    expect(refusal(p, 'tree 200')).toMatchObject({ code: 'adoption_race' });
    expect(refusal(p, 'tree 200')!.reason).toMatch(/run r-new of job j-new is starting a 'claude' agent/);
  });

  it('refuses every kill when the store is down, and says why in one line', () => {
    const inv = host({ storeDown: true });
    inv.sources.store = { ok: false, error: 'store down: database locked for more than 2000 ms', durationSeconds: 2 };
    const p = plan(inv, DEFAULT_POLICY, DEFAULTS, CTX);
    expect(killed(p)).toEqual([]);
    expect(p.refusals).toContainEqual(expect.objectContaining({ code: 'source_down', reason: 'nothing reaped: store down: database locked for more than 2000 ms' }));
    // Pid-file GC does not depend on the store.
    expect(p.actions.some((a) => a.kind === 'remove-pid-file')).toBe(true);
  });

  it('never signals processes of another or unknown uid unless allowed', () => {
    expect(refusal(plan(host({ uid: 0 }), DEFAULT_POLICY, DEFAULTS, CTX), 'tree 200')).toMatchObject({ code: 'other_uid' });
    expect(refusal(plan(host({ uid: null }), DEFAULT_POLICY, DEFAULTS, CTX), 'tree 200')).toMatchObject({ code: 'other_uid' });
    expect(killed(plan(host({ uid: 0 }), DEFAULT_POLICY, DEFAULTS, { ...CTX, allowOtherUids: true }))).toEqual([200, 500]);
  });

  it('never signals the watchdog or its ancestors', () => {
    const p = plan(host(), DEFAULT_POLICY, DEFAULTS, { ...CTX, selfAncestors: [201] });
    expect(refusal(p, 'tree 200')).toMatchObject({ code: 'protected' });
  });
});

describe('plan: explicit requests', () => {
  const sel = (s: Partial<Selection>) => ({ ...NONE, ...s });

  it('--job selects the trees of a terminal job, even within the grace', () => {
    expect(killed(plan(host({ leakedEndedAgo: 5 }), DEFAULT_POLICY, sel({ jobs: ['j-leak'] }), CTX))).toEqual([200]);
  });

  it('--job is refused while the job is not terminal; --force overrides', () => {
    const p = plan(host(), DEFAULT_POLICY, sel({ jobs: ['j-active'] }), CTX);
    expect(killed(p)).toEqual([]);
    expect(refusal(p, 'job j-active')).toMatchObject({ code: 'job_not_terminal', explicit: true });
    const forced = plan(host(), DEFAULT_POLICY, sel({ jobs: ['j-active'], force: true }), CTX);
    expect(killed(forced)).toEqual([300]);
    expect(forced.actions[0]).toMatchObject({ forced: true });
  });

  it('--pid is refused unless the tree is reapable; --force overrides, never for foreign', () => {
    expect(refusal(plan(host(), DEFAULT_POLICY, sel({ pids: [600] }), CTX), 'pid 600')).toMatchObject({ code: 'not_reapable' });
    expect(killed(plan(host(), DEFAULT_POLICY, sel({ pids: [600], force: true }), CTX))).toEqual([600]);
    const foreign = plan(host(), DEFAULT_POLICY, sel({ pids: [700], force: true }), CTX);
    expect(killed(foreign)).toEqual([]);
    expect(refusal(foreign, 'tree 700')).toMatchObject({ code: 'protected' });
  });

  it('--pid of the server, or of a process inside a tree, selects nothing', () => {
    expect(refusal(plan(host(), DEFAULT_POLICY, sel({ pids: [SERVER], force: true }), CTX), `pid ${SERVER}`)).toMatchObject({ code: 'not_found' });
    expect(refusal(plan(host(), DEFAULT_POLICY, sel({ pids: [201] }), CTX), 'pid 201')!.reason).toMatch(/inside tree 200/);
  });

  it('an unknown job is refused by name', () => {
    expect(refusal(plan(host(), DEFAULT_POLICY, sel({ jobs: ['nope'] }), CTX), 'job nope')).toMatchObject({ code: 'not_found', explicit: true });
  });
});
