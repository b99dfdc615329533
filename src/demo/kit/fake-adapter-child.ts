// One process of a fake ACP adapter tree (see fake-adapter.ts). Self-contained: only node:*
// imports, so it runs as compiled JS from dist/ or transpiled on the fly from src/.
//
// Configuration comes in an environment variable (never in argv, so argv is exactly what the
// caller asked for). Failures are reported as one JSON line {"error":"…"} on stdout.
//
// Two shapes:
// - generic (roles 'level'): every level is this script with the argv asked for; each level
//   reports the pids of its subtree as one JSON line on stdout once its child has reported:
//   {"pids":[self, child, grandchild, …]}. The top's line reaches the spawner.
// - acp (roles 'npm', 'adapter', 'cli'): the shape of claude-agent-acp 0.101.0 started by npx:
//     1 'npm'      this script, its argv overwritten by process.title (one argv element,
//                  `npm exec <pkg> <args>`), like npm; exits when its child exits; on SIGTERM it
//                  SIGTERMs its child (sh) and exits.
//     2 sh         a real /bin/sh -c "'<bin>' <args>" (stays a parent).
//     3 'adapter'  node <cache>/_npx/<hash>/node_modules/.bin/<bin> <args> (sh finds it on PATH;
//                  its `#!/usr/bin/env node` stub imports this script). Reports
//                  {"fake":"ready","pids":[npm, sh, self]} on stdout (shared with the top, so the
//                  spawner reads it), then speaks a small JSON-RPC on stdin/stdout:
//                  session/new, session/load, session/close, initialize. Exits when stdin closes.
//     4 'cli'      node <…>/claude-agent-sdk-linux-x64/claude --output-format stream-json …
//                  --session-id=<uuid> --replay-user-messages (comm 'claude'), one per session,
//                  started by session/new; exits when its stdin (a pipe from the adapter) closes.

import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { constants as osConstants } from 'node:os';
import { createInterface } from 'node:readline';

// Keep in sync with fake-adapter.ts (which must not import this file: importing runs it).
const FAKE_ADAPTER_ENV = 'STEPWISE_FAKE_ADAPTER_CONFIG';

export interface FakeAcpConfig {
  /** The npm package: level 1's title is `npm exec <pkg> <args>`. */
  pkg: string;
  /** Its bin: level 2 runs sh -c "'<bin>' <args>". */
  bin: string;
  /** The adapter's arguments: --model … --allowedPaths <ws>. */
  args: string[];
  /** Put first on sh's PATH: the fake npx cache's node_modules/.bin (holds `<bin>`). */
  binDir: string;
  /** The session CLI stub (…/@anthropic-ai/claude-agent-sdk-linux-x64/claude). */
  cliPath: string;
  model: string;
  /** MiB each session CLI holds. */
  cliHoldMb: number;
  /** dirname(process.execPath): on PATH so the stubs' `#!/usr/bin/env node` finds this node. */
  nodeDir: string;
}

export interface FakeChildConfig {
  /**
   * 'level': one process of a generic tree; 'launcher': start the top detached, then exit at
   * once; 'hold': hold memory and wait; 'npm' / 'adapter' / 'cli': levels 1, 3 and 4 of the acp shape.
   */
  role: 'level' | 'launcher' | 'hold' | 'npm' | 'adapter' | 'cli';
  /** 0 = top. In the acp shape: 0 npm, 1 sh, 2 adapter, 3 session CLIs. */
  level: number;
  /** Argv (after the script path) per level. Its length is the depth (generic shape). */
  argvByLevel: string[][];
  holdMb: number;
  /** Levels spawned with detached: true (setsid: own session and group). */
  setsidLevels: number[];
  ignoreSigtermLevels: number[];
  maxLifetimeMs: number;
  /** Present for the acp shape. */
  acp?: FakeAcpConfig;
  /** The path of this script (the acp levels run through stubs, so argv[1] is not it). */
  script?: string;
  /** role 'cli': its session. */
  sessionId?: string;
  /** role 'adapter': the pid of the acp top (npm exec), its grandparent. */
  topPid?: number;
}

// Hold references so the touched memory stays resident.
const held: Buffer[] = [];

function hold(mb: number): void {
  if (mb > 0) held.push(Buffer.alloc(Math.round(mb * 1024 * 1024), 1)); // filled: every page touched
}

function report(line: object): void {
  try {
    process.stdout.write(`${JSON.stringify(line)}\n`);
  } catch {
    // the reader is gone: nothing to tell
  }
}

function childEnv(cfg: FakeChildConfig, next: Partial<FakeChildConfig>, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return { ...process.env, ...extra, [FAKE_ADAPTER_ENV]: JSON.stringify({ ...cfg, ...next }) };
}

function scriptPath(cfg: FakeChildConfig): string {
  return cfg.script ?? process.argv[1] ?? '';
}

/** Argv (after the script) of the acp top before it sets its title: every word of the title, so the title fits in the argv area. Same in fake-adapter.ts. */
function acpTopArgv(acp: FakeAcpConfig): string[] {
  return ['npm-exec', acp.pkg, ...acp.args];
}

function spawnLevel(cfg: FakeChildConfig, level: number, stdout: 'pipe' | 'inherit') {
  return spawn(process.execPath, [scriptPath(cfg), ...(cfg.argvByLevel[level] ?? [])], {
    detached: cfg.setsidLevels.includes(level),
    stdio: ['ignore', stdout, 'inherit'],
    env: childEnv(cfg, { role: 'level', level }),
  });
}

function ignoresSigterm(cfg: FakeChildConfig): boolean {
  return cfg.ignoreSigtermLevels.includes(cfg.level);
}

// ── acp level 1: npm exec ───────────────────────────────────────────────────────────────────

/** sh quoting as npm writes the command: the bin always quoted, arguments only when needed. */
function shQuote(word: string, always = false): string {
  if (!always && /^[A-Za-z0-9_@%+=:,./-]+$/.test(word)) return word;
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

function runNpm(cfg: FakeChildConfig): void {
  const acp = cfg.acp!;
  // npm sets process.title; on Linux node writes it over the argv area (one NUL-padded string
  // in /proc/<pid>/cmdline) and sets comm to its first 15 bytes ("npm exec @agent").
  process.title = `npm exec ${acp.pkg} ${acp.args.join(' ')}`;
  hold(cfg.holdMb);
  const command = [shQuote(acp.bin, true), ...acp.args.map((a) => shQuote(a))].join(' ');
  // A signal ignored on entry stays ignored in a non-interactive sh (and its exec): the only way
  // to get an sh that ignores SIGTERM while its argv is exactly `sh -c <command>`.
  const shArgs = cfg.ignoreSigtermLevels.includes(1) ? ['-c', 'trap "" TERM; exec sh -c "$1"', 'sh', command] : ['-c', command];
  const sh = spawn('/bin/sh', shArgs, {
    argv0: 'sh',
    stdio: 'inherit',
    detached: cfg.setsidLevels.includes(1),
    env: childEnv(cfg, { role: 'adapter', level: 2, topPid: process.pid }, { PATH: `${acp.binDir}:${acp.nodeDir}:${process.env.PATH ?? '/usr/bin:/bin'}` }),
  });
  sh.on('error', (err) => {
    report({ error: `npm level (pid ${process.pid}): sh failed: ${err.message}` });
    process.exit(1);
  });
  // npm exits when its script shell does.
  sh.on('exit', (code, signal) => process.exit(code ?? (signal ? 128 + (osConstants.signals[signal] ?? 0) : 1)));
  if (ignoresSigterm(cfg)) process.on('SIGTERM', () => undefined);
  else {
    // Like the real npm: the script shell dies with it, the adapter under the shell does not.
    process.on('SIGTERM', () => {
      try {
        sh.kill('SIGTERM');
      } catch {
        // already gone
      }
      process.exit(143);
    });
  }
}

// ── acp level 3: the adapter ────────────────────────────────────────────────────────────────

interface Session {
  id: string;
  child: ChildProcess;
  ready: boolean;
  closing: boolean;
  exited: boolean;
  onExit: (() => void)[];
}

function runAdapter(cfg: FakeChildConfig): void {
  const acp = cfg.acp!;
  if (ignoresSigterm(cfg)) process.on('SIGTERM', () => undefined);
  hold(cfg.holdMb);
  const sessions = new Map<string, Session>();
  const shPid = process.ppid;
  // The top (npm exec) passes its pid down: sh is its child, the adapter sh's.
  report({ fake: 'ready', pids: [cfg.topPid ?? 0, shPid, process.pid] });

  const respond = (id: unknown, result: unknown): void => report({ jsonrpc: '2.0', id, result });
  const fail = (id: unknown, code: number, message: string): void => report({ jsonrpc: '2.0', id, error: { code, message } });

  const startCli = (id: unknown, sessionId: string, cwd: string, load: boolean): void => {
    if (sessions.has(sessionId)) {
      fail(id, -32602, `session ${sessionId} exists`);
      return;
    }
    const args = [
      '--output-format', 'stream-json',
      '--verbose',
      '--input-format', 'stream-json',
      '--model', acp.model,
      '--permission-prompt-tool', 'stdio',
      ...(load ? ['--resume', sessionId] : [`--session-id=${sessionId}`]),
      '--replay-user-messages',
    ];
    let child: ChildProcess;
    try {
      // Exec of the stub itself (see acpFiles in fake-adapter.ts): comm "claude".
      child = spawn(acp.cliPath, args, {
        cwd,
        stdio: ['pipe', 'pipe', 'inherit'],
        detached: cfg.setsidLevels.includes(3),
        env: childEnv(cfg, { role: 'cli', level: 3, holdMb: acp.cliHoldMb, sessionId }),
      });
    } catch (err) {
      fail(id, -32603, `spawn of the session CLI failed: ${(err as Error).message}`);
      return;
    }
    const s: Session = { id: sessionId, child, ready: false, closing: false, exited: false, onExit: [] };
    sessions.set(sessionId, s);
    child.stdin?.on('error', () => undefined);
    child.on('error', (err) => {
      if (!s.ready) fail(id, -32603, `session CLI: ${err.message}`);
    });
    child.stdout?.setEncoding('utf8');
    let buffered = '';
    child.stdout?.on('data', (chunk: string) => {
      if (s.ready) return; // stream-json output: nobody needs it
      buffered += chunk;
      if (!buffered.includes('\n')) return;
      s.ready = true;
      respond(id, { sessionId, _meta: { pid: child.pid } });
    });
    child.on('exit', (code, signal) => {
      s.exited = true;
      sessions.delete(sessionId);
      if (!s.ready) fail(id, -32603, `session CLI exited (${signal ?? code}) before it started`);
      else if (!s.closing) {
        const status = code ?? (signal ? 128 + (osConstants.signals[signal] ?? 0) : 1);
        try {
          process.stderr.write(`Session ${sessionId}: Claude Agent process died: Claude Code process exited with code ${status}\n`);
        } catch {
          // nobody reads our stderr
        }
      }
      for (const f of s.onExit) f();
    });
  };

  const handle = (line: string): void => {
    let req: { id?: unknown; method?: unknown; params?: Record<string, unknown> };
    try {
      req = JSON.parse(line) as typeof req;
    } catch {
      return;
    }
    const params = req.params ?? {};
    const meta = (params._meta ?? {}) as Record<string, unknown>;
    switch (req.method) {
      case 'initialize':
        respond(req.id, { protocolVersion: 1, agentCapabilities: { loadSession: true }, authMethods: [] });
        return;
      case 'session/new':
      case 'session/load': {
        const load = req.method === 'session/load';
        const wanted = load ? params.sessionId : (meta.sessionId ?? params.sessionId);
        const sessionId = typeof wanted === 'string' && wanted.length > 0 ? wanted : randomUUID();
        const cwd = typeof params.cwd === 'string' ? params.cwd : process.cwd();
        startCli(req.id, sessionId, cwd, load);
        return;
      }
      case 'session/close': {
        const s = typeof params.sessionId === 'string' ? sessions.get(params.sessionId) : undefined;
        if (!s) {
          respond(req.id, {});
          return;
        }
        // Tear the session's CLI down; answer once it is gone (reaped).
        s.closing = true;
        s.onExit.push(() => respond(req.id, {}));
        s.child.stdin?.end();
        const timer = setTimeout(() => {
          if (!s.exited) s.child.kill('SIGKILL');
        }, 2000);
        s.onExit.push(() => clearTimeout(timer));
        return;
      }
      default:
        if (req.id !== undefined) fail(req.id, -32601, `method not found: ${String(req.method)}`);
    }
  };

  const rl = createInterface({ input: process.stdin });
  rl.on('line', handle);
  // The real adapter exits when its stdin closes (the server is gone); its CLIs follow when
  // their stdin pipes close.
  rl.on('close', () => process.exit(0));
}

// ── acp level 4: one claude CLI per session ─────────────────────────────────────────────────

function runCli(cfg: FakeChildConfig): void {
  if (ignoresSigterm(cfg)) process.on('SIGTERM', () => undefined);
  hold(cfg.holdMb);
  report({ type: 'system', subtype: 'init', session_id: cfg.sessionId, cwd: process.cwd() });
  process.stdin.on('data', () => undefined);
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
}

// ── generic levels ──────────────────────────────────────────────────────────────────────────

function runLevel(cfg: FakeChildConfig): void {
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
    // The top inherits our stdio (the spawner's pipes) and reports there itself; we exit at
    // once so that it is reparented to pid 1 or the nearest subreaper.
    const top = cfg.acp
      ? spawn(process.execPath, [scriptPath(cfg), ...acpTopArgv(cfg.acp)], { detached: true, stdio: 'inherit', env: childEnv(cfg, { role: 'npm', level: 0 }) })
      : spawnLevel(cfg, 0, 'inherit');
    top.on('error', (err) => {
      report({ error: `launcher: ${err.message}` });
      process.exit(1);
    });
    top.unref();
    if (top.pid !== undefined) process.exit(0);
    return;
  }

  if (cfg.role === 'npm') return runNpm(cfg);
  if (cfg.role === 'adapter') return runAdapter(cfg);
  if (cfg.role === 'cli') return runCli(cfg);

  if (cfg.role === 'level' && ignoresSigterm(cfg)) process.on('SIGTERM', () => undefined);
  hold(cfg.holdMb);
  if (cfg.role === 'hold') return;
  runLevel(cfg);
}

main();
