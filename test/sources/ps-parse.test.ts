// The ps parser on darwin-format text (fixed strings as macOS's ps prints them with LC_ALL=C and
// TZ=UTC), and the ps port on fed text: identity, gone vs unknown, a refused ps.
import { describe, expect, it } from 'vitest';
import { startEpoch } from '../../src/core/time.js';
import { PS_TICKS_PER_SECOND, argsDigest20, parseLsofCwd, parseLstart, parsePsOutput, psArgv, psStartTicks } from '../../src/sources/ps-parse.js';
import { PS_FIELDS, psPort, type CommandResult, type CommandRunner } from '../../src/sources/ps-port.js';

// `ps -axww -o pid=,ppid=,pgid=,uid=,rss=,state=,lstart=,args=` on macOS 15 (shape as adv_cmds prints it).
const DARWIN = [
  '    1     0     1     0  14560 Ss   Mon Nov 30 08:01:12 2026 /sbin/launchd',
  '  412     1   412   501  52844 S    Wed Dec  2 02:50:49 2026 /usr/local/bin/node /Users/me/.npm/_npx/1a2b/node_modules/.bin/stepwise-watchdog run --listen=127.0.0.1:9477 --project /Users/me/My Project',
  ' 5120     1  5120   501  61200 S    Wed Dec  2 09:14:03 2026 npm exec @agentclientprotocol/claude-agent-acp --model=claude-sonnet-4',
  ' 5131  5120  5120   501   1712 S    Wed Dec  2 09:14:03 2026 sh -c claude-agent-acp',
  ' 5140  5131  5120   501      0 Z    Wed Dec  2 09:14:04 2026 (claude)',
  ' 5150  5131  5120   501 198004 S+   Wed Dec  2 09:14:05 2026 /Users/me/.local/bin/claude --output-format stream-json --session-id=0b9f6f8e-5d1c-4c47-9a57-3f3e0a1d2c4b --append-system-prompt line one',
  'line two of the same argv',
  '    0     0     0     0      0 Rs   Mon Nov 30 08:01:10 2026 kernel_task',
].join('\n');

describe('parsePsOutput (darwin text)', () => {
  const { rows, malformed } = parsePsOutput(DARWIN);

  it('reads every row; lstart in the C locale, the day padded, as UTC', () => {
    expect(malformed).toBe(0);
    expect(parsePsOutput(DARWIN).ambiguous).toEqual([]);
    expect(rows.map((r) => r.pid)).toEqual([1, 412, 5120, 5131, 5140, 5150, 0]);
    expect(rows[1]!.startEpoch).toBe(Date.UTC(2026, 11, 2, 2, 50, 49) / 1000);
    expect(parseLstart('Wed Dec  2 02:50:49 2026')).toBe(rows[1]!.startEpoch);
    expect(parseLstart('Wed Dez  2 02:50:49 2026')).toBeNull();
    expect(rows[1]).toMatchObject({ ppid: 1, pgid: 412, uid: 501, rssKib: 52844, state: 'S' });
  });

  it('keeps args whole: spaces and `=` inside them; the state flags after the letter dropped', () => {
    expect(rows[1]!.args).toBe('/usr/local/bin/node /Users/me/.npm/_npx/1a2b/node_modules/.bin/stepwise-watchdog run --listen=127.0.0.1:9477 --project /Users/me/My Project');
    expect(rows[5]!.state).toBe('S');
    expect(psArgv(rows[2]!)).toEqual(['npm', 'exec', '@agentclientprotocol/claude-agent-acp', '--model=claude-sonnet-4']);
  });

  it('an argv holding a newline continues its row (the next line is not a process)', () => {
    expect(rows[5]!.args.endsWith('--append-system-prompt line one\nline two of the same argv')).toBe(true);
    expect(psArgv(rows[5]!)).toContain('--session-id=0b9f6f8e-5d1c-4c47-9a57-3f3e0a1d2c4b');
  });

  it('a row forged inside another process’s args makes its pid ambiguous: both rows dropped, never judged', () => {
    const forged = `${DARWIN}\n 9000     1  9000   501   1000 S    Wed Dec  2 09:20:00 2026 sh -c echo\n 5150  5120  5120   501 198004 S    Wed Dec  2 09:14:05 2026 /Users/me/.local/bin/claude --fake`;
    const r = parsePsOutput(forged);
    expect(r.ambiguous).toEqual([5150]);
    expect(r.rows.map((x) => x.pid)).not.toContain(5150);
    const port = psPort({ run: () => ({ status: 0, stdout: forged, stderr: '' }) });
    expect(port.identity(5150)).toEqual({ kind: 'unknown', error: 'ps printed pid 5150 twice' });
    const t = port.table();
    expect(t.unreadablePids).toEqual([5150]);
    expect(t.health.error).toMatch(/1 pid\(s\) printed twice/);
    // A group listed from such a table may lack a member: unknown (no group signal on it).
    expect(port.groupMembers(5120)).toBeNull();
    expect(psPort({ run: () => ({ status: 0, stdout: DARWIN, stderr: '' }) }).groupMembers(5120)?.map((x) => x.pid)).toContain(5120);
  });

  it('a line it does not understand degrades the table and is counted as unreadable', () => {
    const odd = `  PID  PPID\n${DARWIN}`; // a header (a ps that ignores the "=" in -o), before any row
    const t = psPort({ run: () => ({ status: 0, stdout: odd, stderr: '' }) }).table();
    expect(t.table.processes.map((p) => p.pid)).toContain(412);
    expect(t.health).toMatchObject({ ok: false, unreadable: 1 });
    expect(t.health.error).toMatch(/1 ps line\(s\) not understood/);
    expect(psPort({ run: () => ({ status: 0, stdout: DARWIN, stderr: '' }) }).table().health.ok).toBe(true);
  });

  it('a line that starts like a row but does not parse is a process it cannot read: counted, never glued to an argv, never "gone"', () => {
    const odd = ' 7777  5120  5120   501   1000 S    Wed Dec  2 9:14:03 2026 node x.js'; // a one-digit hour
    const withOdd = `${DARWIN}\n${odd}`;
    const r = parsePsOutput(withOdd);
    expect(r.malformed).toBe(1);
    expect(r.rows.some((x) => x.args.includes('7777'))).toBe(false);
    expect(parsePsOutput(`${DARWIN}\n 7778     1  7778   501   1000 S    Wed Dec  2 25:14:03 2026 node y.js`).malformed).toBe(1); // hour 25
    const port = psPort({ run: () => ({ status: 0, stdout: withOdd, stderr: '' }) });
    expect(port.table().health).toMatchObject({ ok: false, unreadable: 1 });
    const one = psPort({ run: (_f, args) => ({ status: 0, stdout: args.includes('-p') ? `${DARWIN.split('\n')[0]}\n${odd}` : withOdd, stderr: '' }) });
    expect(one.identity(7777)).toEqual({ kind: 'unknown', error: 'ps line for pid 7777 not understood' });
    expect(port.children(5120)).toMatchObject({ kind: 'unknown' });
  });

  it('`Zl` (procps: a multi-threaded process whose main thread exited) lives: read as S, its args kept', () => {
    const [row] = parsePsOutput(' 6000     1  6000   501   1000 Zl   Wed Dec  2 09:20:00 2026 ./zl --serve').rows;
    expect(row).toMatchObject({ pid: 6000, state: 'S' });
    expect(psArgv(row!)).toEqual(['./zl', '--serve']);
    expect(parsePsOutput(' 6001     1  6001   501      0 Z    Wed Dec  2 09:20:00 2026 (zl)').rows[0]!.state).toBe('Z');
  });

  it('a zombie has no argv (macOS prints "(name)"), and kernel_task is no process of ours', () => {
    expect(rows[4]!.state).toBe('Z');
    expect(psArgv(rows[4]!)).toEqual([]);
    expect(psArgv(rows[6]!)).toEqual([]);
  });

  it('never asks for `sess` (a kernel pointer on macOS, not a session id)', () => {
    expect(PS_FIELDS).toBe('pid=,ppid=,pgid=,uid=,rss=,state=,lstart=,args=');
    expect(PS_FIELDS).not.toMatch(/sess|sid/);
  });
});

describe('identity through ps: (pid, start second, args digest)', () => {
  const base = Date.UTC(2026, 10, 30, 8, 1, 12) / 1000;
  const row = { startEpoch: base + 100, args: 'node a.js', state: 'S' };

  it('a pid reused within the same second with another argv is a different process', () => {
    expect(psStartTicks(row, base)).not.toBe(psStartTicks({ ...row, args: 'node b.js' }, base));
    expect(psStartTicks(row, base)).toBe(psStartTicks({ ...row }, base));
  });

  it('the start read back lies inside the start second', () => {
    const clock = { bootTimeEpoch: base, ticksPerSecond: PS_TICKS_PER_SECOND, bootTimeErrorSeconds: 2 };
    const s = startEpoch(clock, psStartTicks(row, base));
    expect(s).toBeGreaterThanOrEqual(base + 100);
    expect(s).toBeLessThan(base + 101);
    expect(argsDigest20('x')).toBeLessThan(PS_TICKS_PER_SECOND);
  });
});

describe('psPort on fed text', () => {
  const fed = (answers: Record<string, CommandResult>): CommandRunner => (file, args) => {
    const key = `${file} ${args.join(' ')}`;
    for (const [k, v] of Object.entries(answers)) if (key.startsWith(k)) return v;
    return { status: null, stdout: '', stderr: '', error: 'ENOENT' };
  };
  const ok = (stdout: string): CommandResult => ({ status: 0, stdout, stderr: '' });

  it('a table from one snapshot: trees from ppid and pgid, uid and rss known, no swap, no sid', () => {
    const port = psPort({ run: fed({ 'ps -ax': ok(DARWIN) }) });
    const t = port.table();
    expect(t.health.ok).toBe(true);
    expect(t.table.processes.map((p) => p.pid)).toEqual([1, 412, 5120, 5131, 5140, 5150]);
    const cli = t.table.processes.find((p) => p.pid === 5150)!;
    expect(cli).toMatchObject({ ppid: 5131, pgid: 5120, uid: 501, rssBytes: 198004 * 1024, swapBytes: 0, sid: 0, comm: 'claude', detailed: true });
    expect(t.table.clock.bootTimeEpoch).toBe(Date.UTC(2026, 10, 30, 8, 1, 12) / 1000);
  });

  it('a refused ps (a sandbox) is the source down with ps’s own message, never an empty host', () => {
    const port = psPort({ run: fed({ 'ps ': { status: 1, stdout: '', stderr: 'ps: sysctl: Operation not permitted\n' } }) });
    const t = port.table();
    expect(t.health.ok).toBe(false);
    expect(t.health.error).toBe('processes down: ps: exit 1: ps: sysctl: Operation not permitted');
    expect(port.identity(5150)).toEqual({ kind: 'unknown', error: 'ps: exit 1: ps: sysctl: Operation not permitted' });
  });

  it('ps missing is down too; a pid ps does not list is gone', () => {
    expect(psPort({ run: fed({}) }).table().health.error).toBe('processes down: ps: cannot run (ENOENT)');
    const port = psPort({ run: fed({ 'ps -p 1,77': ok(DARWIN.split('\n')[0]!), 'ps -p 77': { status: 1, stdout: '', stderr: '' } }) });
    expect(port.identity(77)).toEqual({ kind: 'gone' });
    expect(port.identity(77)).toEqual({ kind: 'gone' });
  });

  it('cwd from lsof -Fn; none when lsof fails', () => {
    const port = psPort({ run: fed({ 'lsof -a -d cwd -p 412 -Fn': ok('p412\nfcwd\nn/Users/me/My Project\n') }) });
    expect(port.cwd(412)).toBe('/Users/me/My Project');
    expect(port.cwd(413)).toBeNull();
    expect(parseLsofCwd('p1\nfcwd\n')).toBeNull();
  });
});
