import { describe, expect, it } from 'vitest';
import {
  isKernelThread,
  parseBtime,
  parseCmdline,
  parseStat,
  parseStatusUidAndSwap,
  parseUptime,
  PF_KTHREAD,
} from '../../src/sources/proc-stat.js';

/** A stat line with the given head; fields 7.. are realistic values with starttime 53382 and rss 391. */
function statLine(head: string, opts: { flags?: number; starttime?: number; rss?: number; threads?: number } = {}): string {
  const flags = opts.flags ?? 4194304;
  const threads = opts.threads ?? 1;
  const starttime = opts.starttime ?? 53382;
  const rss = opts.rss ?? 391;
  return `${head} 0 -1 ${flags} 102 0 0 0 0 0 0 0 20 0 ${threads} 0 ${starttime} 3133440 ${rss} 18446744073709551615 94742372175872 94742372195753 140734821941824 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 94742372211760 94742372213376 94743392096256 140734821947935 140734821947955 140734821947955 140734821949419 0\n`;
}

describe('parseStat', () => {
  const cases: { name: string; text: string; want: Partial<ReturnType<typeof parseStat>> | null }[] = [
    {
      name: 'a real line',
      text: statLine('5702 (cat) R 5697 5697 2555'),
      want: { pid: 5702, comm: 'cat', state: 'R', ppid: 5697, pgrp: 5697, session: 2555, starttime: 53382, rssPages: 391 },
    },
    {
      name: 'comm with spaces',
      text: statLine('4242 (npm exec @agen) S 100 4242 4242'),
      want: { pid: 4242, comm: 'npm exec @agen', state: 'S', ppid: 100, pgrp: 4242, session: 4242 },
    },
    {
      name: 'comm with parentheses: ends at the LAST )',
      text: statLine('77 (a) b (c)) Z 1 77 77', { starttime: 9, rss: 0 }),
      want: { pid: 77, comm: 'a) b (c)', state: 'Z', ppid: 1, starttime: 9, rssPages: 0 },
    },
    {
      name: 'a zombie leader whose other threads still run lives (read as S)',
      text: statLine('79 (zl) Z 1 79 79', { threads: 2 }),
      want: { pid: 79, state: 'S', numThreads: 2 },
    },
    {
      name: 'a single-threaded zombie is a zombie',
      text: statLine('80 (z) Z 1 80 80', { threads: 1 }),
      want: { pid: 80, state: 'Z', numThreads: 1 },
    },
    {
      name: 'comm that looks like fields',
      text: statLine('78 () S 1 2 3 4) S 10 78 78'),
      want: { pid: 78, comm: ') S 1 2 3 4', state: 'S', ppid: 10, pgrp: 78 },
    },
    {
      name: 'empty comm',
      text: statLine('79 () S 1 79 79'),
      want: { pid: 79, comm: '', ppid: 1 },
    },
    {
      name: 'kernel thread',
      text: statLine('15 (ksoftirqd/0) S 2 0 0', { flags: 69238880, rss: 0 }),
      want: { pid: 15, comm: 'ksoftirqd/0', state: 'S', ppid: 2, pgrp: 0, session: 0, rssPages: 0 },
    },
    {
      name: 'pid 1 (ppid 0)',
      text: statLine('1 (systemd) S 0 1 1'),
      want: { pid: 1, ppid: 0 },
    },
    { name: 'empty', text: '', want: null },
    { name: 'no parentheses', text: '12 cat R 1 2 3', want: null },
    { name: 'no closing parenthesis', text: '12 (cat R 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23', want: null },
    { name: 'truncated before starttime', text: '12 (cat) R 1 12 12 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0', want: null },
    { name: 'non-numeric pid', text: statLine('abc (cat) R 1 2 3'), want: null },
    { name: 'non-numeric ppid', text: statLine('12 (cat) R x 2 3'), want: null },
    { name: 'state is not a letter', text: statLine('12 (cat) 7 1 2 3'), want: null },
    { name: 'non-numeric starttime', text: statLine('12 (cat) R 1 2 3').replace(' 53382 ', ' 5x382 '), want: null },
  ];
  it.each(cases)('$name', ({ text, want }) => {
    const got = parseStat(text);
    if (want === null) expect(got).toBeNull();
    else expect(got).toMatchObject(want);
  });

  it('reads this process’s real stat line', async () => {
    const { readFileSync } = await import('node:fs');
    const s = parseStat(readFileSync('/proc/self/stat', 'utf8'));
    expect(s).not.toBeNull();
    expect(s!.pid).toBeGreaterThan(0);
    expect(s!.starttime).toBeGreaterThan(0);
    expect(s!.rssPages).toBeGreaterThan(0);
  });
});

describe('isKernelThread', () => {
  it.each([
    { name: 'kthreadd', s: { pid: 2, ppid: 0, flags: 0 }, want: true },
    { name: 'child of kthreadd', s: { pid: 15, ppid: 2, flags: 0 }, want: true },
    { name: 'PF_KTHREAD set', s: { pid: 900, ppid: 1, flags: PF_KTHREAD | 0x40 }, want: true },
    { name: 'user process', s: { pid: 900, ppid: 1, flags: 4194304 }, want: false },
    { name: 'init', s: { pid: 1, ppid: 0, flags: 4194560 }, want: false },
  ])('$name', ({ s, want }) => expect(isKernelThread(s)).toBe(want));
});

describe('parseStatusUidAndSwap', () => {
  const full = [
    'Name:\tnode',
    'Umask:\t0022',
    'State:\tS (sleeping)',
    'Tgid:\t4242',
    'Pid:\t4242',
    'PPid:\t100',
    'Uid:\t1000\t1001\t1002\t1003',
    'Gid:\t1000\t1000\t1000\t1000',
    'VmPeak:\t 1200000 kB',
    'VmRSS:\t  512000 kB',
    'VmSwap:\t    2048 kB',
    'Threads:\t11',
  ].join('\n');
  it.each([
    { name: 'user process', text: full, want: { uid: 1000, rssBytes: 512000 * 1024, swapBytes: 2048 * 1024 } },
    {
      name: 'zombie / kernel thread: no Vm lines',
      text: 'Name:\tsleep\nState:\tZ (zombie)\nUid:\t0\t0\t0\t0\n',
      want: { uid: 0, rssBytes: null, swapBytes: null },
    },
    { name: 'empty', text: '', want: { uid: null, rssBytes: null, swapBytes: null } },
    {
      name: 'VmSwap zero',
      text: 'Uid:\t501\t501\t501\t501\nVmRSS:\t 4 kB\nVmSwap:\t 0 kB\n',
      want: { uid: 501, rssBytes: 4096, swapBytes: 0 },
    },
    {
      name: 'garbled values are unknown',
      text: 'Uid:\tx\nVmRSS:\t lots kB\nVmSwap:\t 3 MB\n',
      want: { uid: null, rssBytes: null, swapBytes: null },
    },
  ])('$name', ({ text, want }) => expect(parseStatusUidAndSwap(text)).toEqual(want));
});

describe('parseCmdline', () => {
  it.each([
    {
      name: 'argv with trailing NUL',
      buf: Buffer.from('node\0/x/fake-adapter-child.js\0npm-exec\0@agentclientprotocol/claude-agent-acp\0'),
      want: ['node', '/x/fake-adapter-child.js', 'npm-exec', '@agentclientprotocol/claude-agent-acp'],
    },
    { name: 'kernel thread / zombie: empty', buf: Buffer.alloc(0), want: [] },
    { name: 'no trailing NUL', buf: Buffer.from('a\0b'), want: ['a', 'b'] },
    { name: 'empty argument kept', buf: Buffer.from('a\0\0b\0'), want: ['a', '', 'b'] },
    { name: 'rewritten argv (setproctitle), NUL-padded', buf: Buffer.from('npm exec foo\0\0\0\0'), want: ['npm exec foo'] },
    { name: 'utf-8', buf: Buffer.from('écho\0ü\0'), want: ['écho', 'ü'] },
    { name: 'a string works too', buf: 'x\0y\0', want: ['x', 'y'] },
    { name: 'a Uint8Array view', buf: new Uint8Array(Buffer.from('zz\0a\0b\0')).subarray(3), want: ['a', 'b'] },
  ])('$name', ({ buf, want }) => expect(parseCmdline(buf)).toEqual(want));
});

describe('parseUptime', () => {
  it.each([
    { text: '533.82 1001.11\n', want: 533.82 },
    { text: '7 3', want: 7 },
    { text: '', want: null },
    { text: 'x 1', want: null },
    { text: '-1 2', want: null },
  ])('$text', ({ text, want }) => expect(parseUptime(text)).toBe(want));
});

describe('parseBtime', () => {
  it.each([
    { name: 'real /proc/stat', text: 'cpu  1 2 3\ncpu0 1 2 3\nintr 1\nctxt 2\nbtime 1795398163\nprocesses 5\n', want: 1795398163 },
    { name: 'missing', text: 'cpu 1 2 3\n', want: null },
    { name: 'garbled', text: 'btime soon\n', want: null },
    { name: 'not a prefix match', text: 'xbtime 12\n', want: null },
  ])('$name', ({ text, want }) => expect(parseBtime(text)).toBe(want));
});

describe('parseChildren and num_threads', () => {
  it('reads the space-separated pids of a children file; malformed is null', async () => {
    const { parseChildren } = await import('../../src/sources/proc-stat.js');
    expect(parseChildren('')).toEqual([]);
    expect(parseChildren('123 456 ')).toEqual([123, 456]);
    expect(parseChildren('12 x ')).toBeNull();
    expect(parseChildren('0 ')).toBeNull();
    expect(parseChildren('0x1f 1e3 ')).toBeNull(); // digits only
  });

  it('parseStat gives field 20, the number of threads', () => {
    expect(parseStat(statLine('1234 (node) S 1 1234 1234'))?.numThreads).toBe(1);
  });
});
