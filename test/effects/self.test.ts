import { describe, expect, it } from 'vitest';
import { selfAncestors } from '../../src/effects/self.js';
import type { ProcessPort } from '../../src/sources/process-port.js';
import { procPort } from '../../src/sources/processes.js';

describe('selfAncestors: what the watchdog never signals', () => {
  it('walks up from this process to pid 1', () => {
    const chain = selfAncestors(procPort());
    expect(chain[0]).toBe(process.ppid);
    expect(chain.at(-1)).toBe(1);
  });

  it('keeps our own parent when the walk cannot read anything (fails closed)', () => {
    const blind: ProcessPort = { ...procPort(), identity: () => ({ kind: 'unknown', error: 'EACCES' }) };
    expect(selfAncestors(blind)).toEqual([process.ppid]);
  });
});
