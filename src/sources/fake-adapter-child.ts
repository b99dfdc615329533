// One process of a fake ACP adapter tree (see fake-adapter.ts). Self-contained: only node:*
// imports, so it runs as compiled JS from dist/ or transpiled on the fly from src/.
//
// Configuration comes in an environment variable (never in argv, so argv is exactly what the
// caller asked for). Every level reports the pids of its subtree as one JSON line on stdout
// once its child has reported: {"pids":[self, child, grandchild, …]}. The top's line reaches
// the spawner. Failures are reported as {"error":"…"}.

import { spawn } from 'node:child_process';

// Keep in sync with fake-adapter.ts (which must not import this file: importing runs it).
const FAKE_ADAPTER_ENV = 'STEPWISE_FAKE_ADAPTER_CONFIG';

export interface FakeChildConfig {
  /** 'level': one process of the tree; 'launcher': start level 0 detached, then exit at once; 'hold': hold memory and wait. */
  role: 'level' | 'launcher' | 'hold';
  /** 0 = top. */
  level: number;
  /** Argv (after the script path) per level. Its length is the depth. */
  argvByLevel: string[][];
  holdMb: number;
  /** Levels spawned with detached: true (setsid: own session and group). */
  setsidLevels: number[];
  ignoreSigtermLevels: number[];
  maxLifetimeMs: number;
}

// Hold references so the touched memory stays resident.
const held: Buffer[] = [];

function report(line: object): void {
  try {
    process.stdout.write(`${JSON.stringify(line)}\n`);
  } catch {
    // the reader is gone: nothing to tell
  }
}

function childEnv(cfg: FakeChildConfig, next: Partial<FakeChildConfig>): NodeJS.ProcessEnv {
  return { ...process.env, [FAKE_ADAPTER_ENV]: JSON.stringify({ ...cfg, ...next }) };
}

function spawnLevel(cfg: FakeChildConfig, level: number, stdout: 'pipe' | 'inherit') {
  const script = process.argv[1] ?? '';
  return spawn(process.execPath, [script, ...(cfg.argvByLevel[level] ?? [])], {
    detached: cfg.setsidLevels.includes(level),
    stdio: ['ignore', stdout, 'inherit'],
    env: childEnv(cfg, { role: 'level', level }),
  });
}

function main(): void {
  // A leaked adapter outlives its reader: writing to a closed pipe must not kill it.
  process.stdout.on('error', () => undefined);
  process.stderr.on('error', () => undefined);
  const raw = process.env[FAKE_ADAPTER_ENV];
  if (!raw) {
    process.stderr.write(`fake-adapter-child: ${FAKE_ADAPTER_ENV} is not set\n`);
    process.exit(2);
  }
  const cfg = JSON.parse(raw) as FakeChildConfig;
  // The hard safety net: a crashed test never leaves these processes forever.
  setTimeout(() => process.exit(0), cfg.maxLifetimeMs);

  if (cfg.role === 'launcher') {
    // Level 0 inherits our stdout (the spawner's pipe) and reports there itself; we exit at
    // once so that it is reparented to pid 1 or the nearest subreaper.
    const top = spawnLevel(cfg, 0, 'inherit');
    top.on('error', (err) => {
      report({ error: `launcher: ${err.message}` });
      process.exit(1);
    });
    top.unref();
    if (top.pid !== undefined) process.exit(0);
    return;
  }

  if (cfg.role === 'level' && cfg.ignoreSigtermLevels.includes(cfg.level)) process.on('SIGTERM', () => undefined);
  if (cfg.holdMb > 0) held.push(Buffer.alloc(Math.round(cfg.holdMb * 1024 * 1024), 1)); // filled: every page touched
  if (cfg.role === 'hold') return;

  const next = cfg.level + 1;
  if (next >= cfg.argvByLevel.length) {
    report({ pids: [process.pid] });
    return;
  }
  const child = spawnLevel(cfg, next, 'pipe');
  let buffered = '';
  let done = false;
  const fail = (message: string): void => {
    if (done) return;
    done = true;
    report({ error: `level ${cfg.level} (pid ${process.pid}): ${message}` });
  };
  child.on('error', (err) => fail(`spawn of level ${next} failed: ${err.message}`));
  child.on('exit', (code, signal) => fail(`level ${next} exited (${signal ?? code}) before reporting`));
  child.stdout?.setEncoding('utf8');
  child.stdout?.on('data', (chunk: string) => {
    if (done) return;
    buffered += chunk;
    const nl = buffered.indexOf('\n');
    if (nl < 0) return;
    done = true;
    let msg: { pids?: number[]; error?: string };
    try {
      msg = JSON.parse(buffered.slice(0, nl)) as typeof msg;
    } catch {
      msg = { error: `level ${next} wrote ${JSON.stringify(buffered.slice(0, 200))}` };
    }
    if (Array.isArray(msg.pids)) report({ pids: [process.pid, ...msg.pids] });
    else report({ error: msg.error ?? 'unknown error' });
  });
}

main();
