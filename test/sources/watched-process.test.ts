// --watch-process reads through the process port: up with its identity and memory while the
// process lives, down when its pid file names no live process or cannot be read.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { watchedProcess } from '../../src/sources/watched-process.js';
import { procPort } from '../../src/sources/processes.js';

describe('watchedProcess', () => {
  it('reads the named process through the port, and says down otherwise', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sw-watch-'));
    try {
      const file = path.join(dir, 'gw.pid');
      fs.writeFileSync(file, JSON.stringify({ pid: process.pid }));
      const up = watchedProcess(`gw=${file}`).read();
      const me = procPort().identity(process.pid);
      expect(up.up).toBe(true);
      expect(up.identity).toBe(`${process.pid}:${me.kind === 'live' ? me.id.startTicks : '?'}`);
      expect(up.rssBytes).toBeGreaterThan(1 << 20);
      // The same pid, seen as gone through another port: down.
      const gonePort = { ...procPort(), identity: () => ({ kind: 'gone' as const }) };
      expect(watchedProcess(`gw=${file}`, gonePort).read().up).toBe(false);
      fs.writeFileSync(file, 'not a pid');
      expect(watchedProcess(`gw=${file}`).read()).toEqual({ up: false, identity: null, rssBytes: 0, swapBytes: 0 });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
