import { describe, expect, it } from 'vitest';
import { ADAPTER_VERDICTS } from '../../src/core/types.js';
import {
  NEVER_TOUCH_VERDICTS,
  OPEN_RUN_STATUSES_SQL,
  REAPABLE_VERDICTS,
  REAP_COUNTER_VERDICTS,
  REFUSAL_COUNTED,
  SESSION_HOST_VERDICTS,
  SESSION_STOP_VERDICTS,
  tableRank,
} from '../../src/core/vocabulary.js';

describe('the verdict table', () => {
  it('reapable and never-touch are disjoint, and only leaked and orphaned trees are reapable', () => {
    expect([...REAPABLE_VERDICTS].sort()).toEqual(['leaked', 'orphaned']);
    expect([...NEVER_TOUCH_VERDICTS].sort()).toEqual(['foreign', 'in-vm']);
    expect([...REAPABLE_VERDICTS].filter((v) => NEVER_TOUCH_VERDICTS.has(v))).toEqual([]);
    expect([...SESSION_HOST_VERDICTS].sort()).toEqual(['active', 'paused']);
    expect([...SESSION_STOP_VERDICTS]).toEqual(['active']); // a paused job's adapter: its sessions wait
  });

  it('ranks every verdict once, what needs attention first, and an unknown word last (not first)', () => {
    const ranks = ADAPTER_VERDICTS.map(tableRank);
    expect(new Set(ranks).size).toBe(ADAPTER_VERDICTS.length);
    const sorted = [...ADAPTER_VERDICTS].sort((a, b) => tableRank(a) - tableRank(b));
    expect(sorted.slice(0, 2)).toEqual(['leaked', 'orphaned']);
    expect(tableRank('no-such-verdict')).toBeGreaterThan(Math.max(...ranks));
  });

  it('seeded counters and SQL come from the same lists', () => {
    expect(REAP_COUNTER_VERDICTS).toEqual(['leaked', 'orphaned', 'leaked-session']);
    expect(REFUSAL_COUNTED).toContain('identity_changed');
    expect(REFUSAL_COUNTED).not.toContain('grace');
    expect(OPEN_RUN_STATUSES_SQL).toBe("('running', 'suspended', 'delegated')");
  });
});
