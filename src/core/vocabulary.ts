// Each vocabulary in one place, with every rule that depends on a word beside it. The tables are
// typed `Record<Word, …>` over the word lists in types.ts: a new verdict is a compile error until
// each table says what it means for it. Everything else (planner, kill re-checks, report order,
// seeded counters, the store's SQL) derives its lists from here.

import type { AdapterVerdict } from './types.js';

/** The engine's run statuses that mean "the step may still be using its adapter". */
export const OPEN_RUN_STATUS_LIST = ['running', 'suspended', 'delegated'] as const;
export const OPEN_RUN_STATUSES: ReadonlySet<string> = new Set(OPEN_RUN_STATUS_LIST);
/** The same list as an SQL tuple literal, e.g. `('running', 'suspended', 'delegated')`. */
export const OPEN_RUN_STATUSES_SQL = `(${OPEN_RUN_STATUS_LIST.map((s) => `'${s}'`).join(', ')})`;

interface AdapterVerdictRules {
  /** The planner may select it by policy, and a kill re-check lets it through. */
  reapable: boolean;
  /** Never signalled, not even by --force (not provably ours). */
  neverTouch: boolean;
  /**
   * Its leaked sessions: 'stop' (stopped while the tree lives on for other jobs), 'hold' (never
   * touched while the verdict lasts: said as a wait, not counted as a refusal), 'none'.
   */
  sessions: 'stop' | 'hold' | 'none';
  /** Position in the status table: what needs attention first. */
  tableRank: number;
}

const ADAPTER_VERDICT_RULES: Record<AdapterVerdict, AdapterVerdictRules> = {
  leaked: { reapable: true, neverTouch: false, sessions: 'none', tableRank: 0 },
  orphaned: { reapable: true, neverTouch: false, sessions: 'none', tableRank: 1 },
  unreferenced: { reapable: false, neverTouch: false, sessions: 'none', tableRank: 2 },
  spawning: { reapable: false, neverTouch: false, sessions: 'none', tableRank: 3 },
  active: { reapable: false, neverTouch: false, sessions: 'stop', tableRank: 4 },
  // A paused job's adapter is never touched: not reaped, and no session inside it is stopped
  // (the job resumes on that adapter); its leaked sessions wait for the job to resume or end.
  paused: { reapable: false, neverTouch: false, sessions: 'hold', tableRank: 5 },
  'in-vm': { reapable: false, neverTouch: true, sessions: 'none', tableRank: 6 },
  foreign: { reapable: false, neverTouch: true, sessions: 'none', tableRank: 7 },
};

const verdictsWhere = (rule: (r: AdapterVerdictRules) => boolean): ReadonlySet<AdapterVerdict> =>
  new Set((Object.keys(ADAPTER_VERDICT_RULES) as AdapterVerdict[]).filter((v) => rule(ADAPTER_VERDICT_RULES[v])));

export const REAPABLE_VERDICTS = verdictsWhere((r) => r.reapable);
export const NEVER_TOUCH_VERDICTS = verdictsWhere((r) => r.neverTouch);
/** Trees whose leaked sessions the planner looks at (to stop them, or to say why it waits). */
export const SESSION_HOST_VERDICTS = verdictsWhere((r) => r.sessions !== 'none');
/** Trees whose leaked sessions may be stopped. */
export const SESSION_STOP_VERDICTS = verdictsWhere((r) => r.sessions === 'stop');

/** Sort key of the status table; an unknown word sorts last, never first. */
export function tableRank(verdict: string): number {
  return (ADAPTER_VERDICT_RULES as Record<string, AdapterVerdictRules | undefined>)[verdict]?.tableRank ?? Number.MAX_SAFE_INTEGER;
}

/** The `verdict` label of a session CLI stopped inside a live adapter (reaped_total). */
export const SESSION_KILL_VERDICT = 'leaked-session';

/** reaped_total{verdict} series that exist from the start (rate() and alerts see a 0). */
export const REAP_COUNTER_VERDICTS: readonly string[] = [...REAPABLE_VERDICTS, SESSION_KILL_VERDICT];

/** Why the planner refuses an action (refusals_total{reason}, JSON `code`). */
export const REFUSAL_CODES = [
  'source_down',
  'not_found',
  'not_reapable',
  'job_not_terminal',
  'protected',
  'other_uid',
  'adoption_race',
  'grace',
  'paused',
] as const;
export type RefusalCode = (typeof REFUSAL_CODES)[number];

/** Refusals that are waits (a grace, a paused job): logged at debug as "held", never counted. */
export const WAIT_CODES: ReadonlySet<RefusalCode> = new Set<RefusalCode>(['grace', 'paused']);

/** Why a planned kill was held back at re-verification, right before its signal. */
export const RECHECK_SKIP_CODES = ['identity_changed', 'verdict_changed', 'ownership_changed', 'aborted'] as const;
export type KillSkipCode = (typeof RECHECK_SKIP_CODES)[number] | RefusalCode;

/** Why a kill failed after its signals. */
export const KILL_FAILURE_CODES = ['eperm', 'still_alive'] as const;
export type KillFailureCode = (typeof KILL_FAILURE_CODES)[number];

/** refusals_total{reason} series seeded at 0: every refusal that is counted (a wait is not). */
export const REFUSAL_COUNTED: readonly string[] = [
  ...REFUSAL_CODES.filter((c) => !WAIT_CODES.has(c)),
  ...RECHECK_SKIP_CODES.filter((c) => c !== 'aborted'),
];
