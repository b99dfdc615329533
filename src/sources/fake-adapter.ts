// Real fake adapter trees for tests, the demo and benchmarks. Each process is a node running
// fake-adapter-child, holding real touched memory, with the argv shape of stepwise's adapter:
//   level 0  node fake-adapter-child.js npm-exec @agentclientprotocol/claude-agent-acp --fake
//            (detached: leads its own session and group, like start_new_session=True)
//   level 1  node fake-adapter-child.js @agentclientprotocol/claude-agent-acp --fake
//   level 2+ node fake-adapter-child.js claude --fake            (no marker, like the claude CLI)
// The top reports every pid of the tree as one JSON line on its stdout once all levels are up.
// Processes do NOT exit when their parent dies (leaked adapters don't); each one exits after
// `maxLifetimeMs` whatever happens, and live trees are SIGKILLed when this process exits.

import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FakeChildConfig } from './fake-adapter-child.js';
import { readIdentity, sameProcess, type LiveIdentity } from './processes.js';

/** Keep in sync with fake-adapter-child.ts. */
const FAKE_ADAPTER_ENV = 'STEPWISE_FAKE_ADAPTER_CONFIG';
const HOLD_ENV = 'STEPWISE_FAKE_HOLD_CONFIG';
const NODE_ENV = 'STEPWISE_FAKE_NODE';
const SCRIPT_ENV = 'STEPWISE_FAKE_SCRIPT';

export const DEFAULT_FAKE_MARKER = '@agentclientprotocol/claude-agent-acp';
const DEFAULT_MAX_LIFETIME_MS = 10 * 60 * 1000;
const DEFAULT_READY_TIMEOUT_MS = 20_000;

/**
 * Who the top's parent is:
 * - 'self': this process (like the live server; node reaps the top when it dies).
 * - 'orphan': an intermediate process that exits at once, so the top is reparented to pid 1
 *   or the nearest subreaper (like adapters after a server crash).
 * - 'non-reaping': a fake "server" node process that never reaps it, so a killed top stays a
 *   zombie (state Z) like an adapter the watchdog killed under a live server.
 */
export type FakeParent = 'self' | 'orphan' | 'non-reaping';

export interface FakeTreeOptions {
  /** Text put in the argv of levels 0 and 1. Default '@agentclientprotocol/claude-agent-acp'. */
  marker?: string;
  /** MiB of touched memory each process holds (its RSS is at least this). Default 8. */
  holdMb?: number;
  /** Number of levels. Default 3. */
  depth?: number;
  /** Argv after the script path, per level (its length overrides depth). */
  argvByLevel?: string[][];
  /** The grandchild (level 2) calls setsid: own session and group, ppid chain intact. */
  setsidGrandchild?: boolean;
  /** Levels > 0 spawned detached (setsid). Level 0 always is. */
  setsidLevels?: number[];
  /** Levels that ignore SIGTERM (true: every level), to test SIGKILL escalation. */
  ignoreSigterm?: boolean | number[];
  parent?: FakeParent;
  /** Shorthand for parent: 'orphan'. */
  parentless?: boolean;
  /** Every process exits after this long, whatever happens. Default 10 minutes. */
  maxLifetimeMs?: number;
  /** Reject when the tree has not reported all its pids after this long. Default 20 s. */
  readyTimeoutMs?: number;
  cwd?: string;
}

export interface FakeTree {
  /** One pid per level, top first. */
  pids: number[];
  topPid: number;
  /** = topPid: the top leads its group and session. */
  pgid: number;
  /** Identities read right after the tree reported (for re-checks). */
  identities: LiveIdentity[];
  parent: FakeParent;
  /** The top's parent at spawn: this process, the exited launcher, or the fake server. */
  parentPid: number;
  marker: string;
  /** SIGKILL the whole tree (and the fake server, if any); resolves when every pid is reaped (after 5 s: gone or a zombie). Idempotent. */
  stop(): Promise<void>;
}

export interface FakeZombie {
  /** The node process that never waits for its child. */
  parentPid: number;
  /** Its exited child, state Z until the parent dies. */
  zombiePid: number;
  stop(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// The child script: dist/sources/fake-adapter-child.js after a build; under vitest (running
// src/*.ts) it is transpiled once with typescript into a temp dir (Node 20 cannot run .ts).

let scriptPromise: Promise<string> | null = null;

export function fakeAdapterChildScript(): Promise<string> {
  scriptPromise ??= resolveScript();
  return scriptPromise;
}

async function resolveScript(): Promise<string> {
  const js = fileURLToPath(new URL('./fake-adapter-child.js', import.meta.url));
  if (existsSync(js)) return js;
  const tsPath = fileURLToPath(new URL('./fake-adapter-child.ts', import.meta.url));
  const source = readFileSync(tsPath, 'utf8');
  const ts = (await import('typescript')).default;
  const out = ts.transpileModule(source, {
    compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
  }).outputText;
  const hash = createHash('sha256').update(out).digest('hex').slice(0, 16);
  const dir = join(tmpdir(), `stepwise-watchdog-fake-${process.getuid?.() ?? 'u'}-${hash}`);
  const file = join(dir, 'fake-adapter-child.mjs');
  if (!existsSync(file)) {
    mkdirSync(dir, { recursive: true });
    // Atomic: concurrent test workers may race here.
    const tmp = `${file}.${process.pid}.tmp`;
    writeFileSync(tmp, out);
    renameSync(tmp, file);
  }
  return file;
}

// ---------------------------------------------------------------------------------------------
// Cleanup registry: whatever a crashed or forgetful test leaves is SIGKILLed at exit.

const live = new Set<() => void>();
let exitHookInstalled = false;

function register(killSync: () => void): () => void {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', () => {
      for (const k of [...live]) k();
    });
  }
  live.add(killSync);
  return () => live.delete(killSync);
}

function trySignal(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // gone already (ESRCH) or not ours (EPERM)
  }
}

function stillSame(id: LiveIdentity): LiveIdentity | null {
  const now = readIdentity(id.pid);
  return now && sameProcess(now, id) ? now : null;
}

/** SIGKILL each process still the same (pid, start time), and the groups they lead. */
function killIdentities(ids: readonly LiveIdentity[]): void {
  for (const id of ids) {
    const now = stillSame(id);
    // A group id cannot be reused while its leader lives: checking the leader is enough.
    if (now && now.pgid === id.pid) trySignal(-id.pid, 'SIGKILL');
  }
  for (const id of ids) if (stillSame(id)) trySignal(id.pid, 'SIGKILL');
}

function goneOrZombie(id: LiveIdentity): boolean {
  const now = stillSame(id);
  return now === null || now.state === 'Z' || now.state === 'X';
}

async function waitFor(cond: () => boolean, timeoutMs: number, intervalMs = 20): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (cond()) return true;
    if (Date.now() >= deadline) return false;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

// ---------------------------------------------------------------------------------------------

function defaultArgv(marker: string, depth: number): string[][] {
  const out: string[][] = [];
  for (let level = 0; level < depth; level++) {
    if (level === 0) out.push(['npm-exec', marker, '--fake']);
    else if (level === 1) out.push([marker, '--fake']);
    else out.push(['claude', '--fake']);
  }
  return out;
}

function checkPositiveInt(name: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 1) throw new RangeError(`${name} must be a positive integer, got ${value}`);
}

/** A line-reader on a child's stdout: resolves the first JSON line; collects stderr for errors. */
function firstJsonLine(child: ChildProcess, timeoutMs: number): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    const timer = setTimeout(() => finish(new Error(`fake adapter: no report after ${timeoutMs} ms; stderr: ${err.slice(-2000)}`)), timeoutMs);
    const finish = (e: Error | null, value?: Record<string, unknown>): void => {
      clearTimeout(timer);
      child.stdout?.removeAllListeners('data');
      if (e) reject(e);
      else resolve(value!);
    };
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (c: string) => {
      if (err.length < 8000) err += c;
    });
    child.stdout?.setEncoding('utf8');
    child.stdout?.on('data', (c: string) => {
      out += c;
      const nl = out.indexOf('\n');
      if (nl < 0) return;
      try {
        finish(null, JSON.parse(out.slice(0, nl)) as Record<string, unknown>);
      } catch {
        finish(new Error(`fake adapter: unexpected output ${JSON.stringify(out.slice(0, 200))}`));
      }
    });
    child.on('error', (e) => finish(e));
  });
}

function releaseStdio(child: ChildProcess): void {
  child.stdout?.destroy();
  child.stderr?.destroy();
  child.unref();
}

/** Start a real fake adapter tree; resolves once every level is up and has reported its pid. */
export async function spawnFakeTree(opts: FakeTreeOptions = {}): Promise<FakeTree> {
  const marker = opts.marker ?? DEFAULT_FAKE_MARKER;
  const depth = opts.argvByLevel?.length ?? opts.depth ?? 3;
  checkPositiveInt('depth', depth);
  const holdMb = opts.holdMb ?? 8;
  if (!(holdMb >= 0)) throw new RangeError(`holdMb must be >= 0, got ${holdMb}`);
  const parent: FakeParent = opts.parentless ? 'orphan' : (opts.parent ?? 'self');
  const maxLifetimeMs = opts.maxLifetimeMs ?? DEFAULT_MAX_LIFETIME_MS;
  const readyTimeoutMs = opts.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS;
  const levels = [...Array(depth).keys()];
  const ignore = opts.ignoreSigterm;
  const setsidLevels = [0, ...(opts.setsidLevels ?? []), ...(opts.setsidGrandchild ? [2] : [])];
  const cfg: FakeChildConfig = {
    role: 'level',
    level: 0,
    argvByLevel: opts.argvByLevel ?? defaultArgv(marker, depth),
    holdMb,
    setsidLevels,
    ignoreSigtermLevels: ignore === true ? levels : Array.isArray(ignore) ? ignore : [],
    maxLifetimeMs,
  };
  const script = await fakeAdapterChildScript();
  const env = { ...process.env, [FAKE_ADAPTER_ENV]: JSON.stringify(cfg) };
  const stdio: ['ignore', 'pipe', 'pipe'] = ['ignore', 'pipe', 'pipe'];
  const cwd = opts.cwd ?? process.cwd();

  let child: ChildProcess;
  if (parent === 'self') {
    child = spawn(process.execPath, [script, ...(cfg.argvByLevel[0] ?? [])], { detached: true, stdio, env, cwd });
  } else if (parent === 'orphan') {
    const launcher: FakeChildConfig = { ...cfg, role: 'launcher' };
    child = spawn(process.execPath, [script, 'launcher'], {
      stdio,
      cwd,
      env: { ...process.env, [FAKE_ADAPTER_ENV]: JSON.stringify(launcher) },
    });
  } else {
    // sh starts the top in the background under setsid(1), then execs a node that never
    // waits for it: libuv only reaps the children it spawned itself.
    const hold: FakeChildConfig = { ...cfg, role: 'hold', holdMb: 0 };
    child = spawn(
      '/bin/sh',
      ['-c', `setsid "$@" & export ${FAKE_ADAPTER_ENV}="$${HOLD_ENV}"; exec "$${NODE_ENV}" "$${SCRIPT_ENV}" fake-server`, 'sh', process.execPath, script, ...(cfg.argvByLevel[0] ?? [])],
      { stdio, cwd, env: { ...env, [HOLD_ENV]: JSON.stringify(hold), [NODE_ENV]: process.execPath, [SCRIPT_ENV]: script } },
    );
  }
  const helperPid = child.pid;
  const helperId = helperPid !== undefined ? readIdentity(helperPid) : null;

  let msg: Record<string, unknown>;
  try {
    const exited = parent === 'orphan' ? new Promise<void>((r) => child.once('exit', () => r())) : Promise.resolve();
    msg = await firstJsonLine(child, readyTimeoutMs);
    await exited;
  } catch (e) {
    if (helperPid !== undefined) {
      if (parent === 'self') trySignal(-helperPid, 'SIGKILL');
      trySignal(helperPid, 'SIGKILL');
    }
    releaseStdio(child);
    throw e;
  }
  releaseStdio(child);
  const pids = Array.isArray(msg.pids) ? (msg.pids as unknown[]).filter((p): p is number => typeof p === 'number') : [];
  const identities = pids.map((pid) => readIdentity(pid));
  const extra = parent === 'non-reaping' && helperId ? [helperId] : [];
  const known = identities.filter((i): i is LiveIdentity => i !== null);
  if (typeof msg.error === 'string' || pids.length !== depth || known.length !== depth) {
    killIdentities([...known, ...extra]);
    throw new Error(`fake adapter tree failed: ${typeof msg.error === 'string' ? msg.error : JSON.stringify(msg)}`);
  }
  const top = known[0]!;
  const parentPid = parent === 'self' ? process.pid : (helperPid ?? top.ppid);

  const killSync = (): void => killIdentities([...known, ...extra]);
  const unregister = register(killSync);
  let stopping: Promise<void> | null = null;
  return {
    pids,
    topPid: top.pid,
    pgid: top.pid,
    identities: known,
    parent,
    parentPid,
    marker,
    stop() {
      stopping ??= (async () => {
        killSync();
        // Wait until reaped (by us, by a killed parent's adopter, or by pid 1 / the subreaper
        // once the fake server is dead); accept zombies only when nobody reaps them.
        const all = [...known, ...extra];
        if (!(await waitFor(() => all.every((id) => stillSame(id) === null), 5000))) {
          await waitFor(() => all.every(goneOrZombie), 1000);
        }
        unregister();
      })();
      return stopping;
    },
  };
}

/** A fake adapter tree whose top has been reparented to pid 1 or the nearest subreaper. */
export function spawnOrphanTree(opts: Omit<FakeTreeOptions, 'parent' | 'parentless'> = {}): Promise<FakeTree> {
  return spawnFakeTree({ ...opts, parent: 'orphan' });
}

export interface FakeZombieOptions {
  /** The short-lived child's command. Default ['sleep', '0.05']. */
  argv?: string[];
  maxLifetimeMs?: number;
  readyTimeoutMs?: number;
}

/**
 * A node process that started a short-lived child and never waits for it, so the child stays
 * a zombie (state Z). stop() kills the parent (the zombie is then reaped by its new parent).
 */
export async function spawnZombie(opts: FakeZombieOptions = {}): Promise<FakeZombie> {
  const argv = opts.argv ?? ['sleep', '0.05'];
  if (argv.length === 0) throw new RangeError('argv must not be empty');
  const script = await fakeAdapterChildScript();
  const hold: FakeChildConfig = {
    role: 'hold',
    level: 0,
    argvByLevel: [],
    holdMb: 0,
    setsidLevels: [],
    ignoreSigtermLevels: [],
    maxLifetimeMs: opts.maxLifetimeMs ?? DEFAULT_MAX_LIFETIME_MS,
  };
  const child = spawn(
    '/bin/sh',
    ['-c', `"$@" & echo "{\\"pids\\":[$!]}"; export ${FAKE_ADAPTER_ENV}="$${HOLD_ENV}"; exec "$${NODE_ENV}" "$${SCRIPT_ENV}" zombie-parent`, 'sh', ...argv],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, [HOLD_ENV]: JSON.stringify(hold), [NODE_ENV]: process.execPath, [SCRIPT_ENV]: script },
    },
  );
  const parentPid = child.pid;
  if (parentPid === undefined) throw new Error('spawnZombie: spawn failed');
  const readyTimeoutMs = opts.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS;
  let zombiePid: number;
  try {
    const msg = await firstJsonLine(child, readyTimeoutMs);
    const pid = Array.isArray(msg.pids) ? msg.pids[0] : undefined;
    if (typeof pid !== 'number') throw new Error(`spawnZombie: unexpected report ${JSON.stringify(msg)}`);
    zombiePid = pid;
    // The parent must have become node (exec) and the child must have exited.
    const ok = await waitFor(() => {
      const z = readIdentity(pid);
      const p = readIdentity(parentPid);
      return z !== null && z.state === 'Z' && z.ppid === parentPid && p !== null && readArgv(parentPid).includes('zombie-parent');
    }, readyTimeoutMs);
    if (!ok) throw new Error(`spawnZombie: pid ${pid} did not become a zombie of ${parentPid}`);
  } catch (e) {
    trySignal(parentPid, 'SIGKILL');
    releaseStdio(child);
    throw e;
  }
  releaseStdio(child);
  const parentId = readIdentity(parentPid);
  const zombieId = readIdentity(zombiePid);
  const ids = [parentId, zombieId].filter((i): i is LiveIdentity => i !== null);
  const killSync = (): void => {
    if (parentId && stillSame(parentId)) trySignal(parentPid, 'SIGKILL');
  };
  const unregister = register(killSync);
  let stopping: Promise<void> | null = null;
  return {
    parentPid,
    zombiePid,
    stop() {
      stopping ??= (async () => {
        killSync();
        // Our own child: node reaps the parent; the zombie goes to pid 1 / a subreaper.
        await waitFor(() => ids.every((id) => stillSame(id) === null), 5000);
        unregister();
      })();
      return stopping;
    },
  };
}

function readArgv(pid: number): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return [];
  }
}
