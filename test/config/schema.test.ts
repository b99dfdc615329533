import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config/schema.js';

const file = (data: unknown) => {
  const p = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'sw-cfg-')), 'c.json');
  fs.writeFileSync(p, typeof data === 'string' ? data : JSON.stringify(data));
  return p;
};

describe('config: one schema for flags, env and file', () => {
  it('has the documented defaults', () => {
    expect(loadConfig({ flags: {}, env: {} })).toMatchObject({
      interval: 15,
      terminalGrace: 30,
      spawnGrace: 60,
      listen: '127.0.0.1:9477',
      observeOnly: false,
      orphans: true,
      gc: true,
      killWait: 5,
      markers: ['claude-agent-acp', 'codex-acp', 'aloop serve'],
    });
  });

  it('flags win over env, env over the file', () => {
    const f = file({ interval: 30, terminalGrace: 10, listen: '127.0.0.1:1' });
    const c = loadConfig({ flags: { interval: '20' }, env: { STEPWISE_WATCHDOG_INTERVAL: '25', STEPWISE_WATCHDOG_TERMINAL_GRACE: '12' }, file: f });
    expect(c).toMatchObject({ interval: 20, terminalGrace: 12, listen: '127.0.0.1:1' });
  });

  it('reads lists and booleans from env', () => {
    const c = loadConfig({ flags: {}, env: { STEPWISE_WATCHDOG_MARKERS: 'a, b', STEPWISE_WATCHDOG_OBSERVE_ONLY: 'true', STEPWISE_DB: '/x.db' } });
    expect(c).toMatchObject({ markers: ['a', 'b'], observeOnly: true, db: '/x.db' });
  });

  const bad: [string, Parameters<typeof loadConfig>[0], RegExp][] = [
    ['a flag', { flags: { interval: '0.1' }, env: {} }, /^--interval "0\.1": interval must be at least 0\.2 s$/],
    ['a flag that is not a number', { flags: { terminalGrace: 'soon' }, env: {} }, /^--terminal-grace "soon": terminal grace must be a number of seconds$/],
    ['an env var', { flags: {}, env: { STEPWISE_WATCHDOG_LISTEN: 'nope' } }, /^env STEPWISE_WATCHDOG_LISTEN "nope": must be HOST:PORT/],
    ['an env boolean', { flags: {}, env: { STEPWISE_WATCHDOG_GC: 'maybe' } }, /^env STEPWISE_WATCHDOG_GC="maybe": must be true or false$/],
    ['a watch spec', { flags: { watchProcess: ['gateway'] }, env: {} }, /^--watch-process "gateway": must be NAME=PIDFILE/],
    ['an empty marker', { flags: { markers: [''] }, env: {} }, /^--marker "": a marker cannot be empty$/],
    // Seconds are decimal numbers: empty text is not 0, hex is not a number of seconds.
    ['an empty number of seconds', { flags: { fullSweepSeconds: '' }, env: {} }, /^--full-sweep-seconds "": full sweep must be a number of seconds$/],
    ['a hex number of seconds', { flags: { fullSweepSeconds: '0x10' }, env: {} }, /^--full-sweep-seconds "0x10": full sweep must be a number of seconds$/],
    ['a negative number of seconds', { flags: { killWait: '-1' }, env: {} }, /^--kill-wait "-1": kill wait must be ≥ 0$/],
  ];
  for (const [name, input, re] of bad) {
    it(`names the bad value of ${name} and where it came from`, () => {
      expect(() => loadConfig(input)).toThrow(ConfigError);
      expect(() => loadConfig(input)).toThrow(re);
    });
  }

  it('names the key of a bad value in a config file, and unknown keys', () => {
    expect(() => loadConfig({ flags: {}, env: {}, file: file({ interval: 0.01 }) })).toThrow(/config file .*c\.json: "interval" 0\.01: interval must be at least 0\.2 s$/);
    expect(() => loadConfig({ flags: {}, env: {}, file: file({ bogus: 1 }) })).toThrow(/unknown option "bogus" in config file/);
    expect(() => loadConfig({ flags: {}, env: {}, file: file({ interval: true }) })).toThrow(/"interval" true: interval must be a number of seconds$/);
    expect(() => loadConfig({ flags: {}, env: {}, file: file('{not json') })).toThrow(/not a JSON object/);
  });
});

describe('help texts come from the schema', () => {
  it('a scalar default is printed from the schema, once', async () => {
    const { optionText, configSchema } = await import('../../src/config/schema.js');
    const defaults = configSchema.parse({});
    expect(optionText('killWait')).toEqual(['--kill-wait <seconds>', `wait between SIGTERM and SIGKILL (default ${defaults.killWait})`]);
    expect(optionText('interval')[1]).toContain(`(default ${defaults.interval})`);
    expect(optionText('listen', 'where to look')[1]).toBe(`where to look (default ${defaults.listen})`);
    // switches say what they do, without "(default true)"
    expect(optionText('gc')[1]).not.toMatch(/default/);
  });
});

describe('--process-source for commands that read no config (demo, guard)', () => {
  it('takes auto, proc, ps (auto when absent) and names a bad value', async () => {
    const { processSourceOf } = await import('../../src/sources/default-port.js');
    expect(processSourceOf(undefined)).toBe('auto');
    expect(processSourceOf('ps')).toBe('ps');
    expect(processSourceOf('sysctl')).toEqual({ error: '--process-source "sysctl": must be one of auto, proc, ps' });
  });
});
