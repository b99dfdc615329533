import { describe, expect, it } from 'vitest';
import { groupId, posInt } from '../../src/sources/store-rows.js';

describe('row values: a pid is a positive safe integer or nothing', () => {
  it('takes numbers and bigints in range, refuses the rest', () => {
    expect([posInt(42), posInt(42n), posInt(BigInt(Number.MAX_SAFE_INTEGER))]).toEqual([42, 42, Number.MAX_SAFE_INTEGER]);
    // Beyond 2^53 a bigint would round to another pid: refused.
    expect([posInt(2n ** 60n), posInt(0), posInt(-3), posInt(1.5), posInt('42'), posInt(null)]).toEqual([null, null, null, null, null, null]);
    expect([groupId(0), groupId(1), groupId(2)]).toEqual([null, null, 2]); // stepwise writes 0 when getpgid failed
  });
});
