// Real fake adapter trees for tests, the demo and benchmarks, in two shapes.
//
// 'acp' (the default): the shape of claude-agent-acp 0.101.0 started by stepwise through npx
// (observed with the real adapter), every level in the session and group the top leads:
//   1  npm exec @agentclientprotocol/claude-agent-acp --model … --allowedPaths <ws>
//      (node running fake-adapter-child with its argv overwritten by process.title: ONE argv
//      element, comm "npm exec @agent"; exits when its child does; SIGTERM kills it and sh only)
//   2  sh -c "'claude-agent-acp' --model … --allowedPaths <ws>"   (a real /bin/sh, stays a parent)
//   3  node <tmp>/…/_npx/<hash>/node_modules/.bin/claude-agent-acp --model … --allowedPaths <ws>
//      (the adapter: exits when its stdin closes; speaks a small JSON-RPC on stdin/stdout)
//   4  node <tmp>/…/@anthropic-ai/claude-agent-sdk-linux-x64/claude --output-format stream-json …
//      --session-id=<uuid> --replay-user-messages   (comm "claude", no marker in its argv; one per
//      session, started by openSession(), not at spawn; the heavy level)
// Killing the top alone (killTop()) leaves the adapter and its CLIs alive with ppid 1 (or the
// nearest subreaper) in the dead leader's group, like the real one; killpg ends every level.
//
// 'generic' (when `depth` or `argvByLevel` is given): every level is node running
// fake-adapter-child with the argv asked for (by default `npm-exec <marker> --fake`,
// `<marker> --fake`, then `claude --fake`).
//
// The tree reports its pids once all levels are up. Processes do NOT exit when their parent
// dies (the acp adapter exits when its stdin closes: the spawner holds the other end, so a
// tree lives as long as the spawner unless closeStdin() is called); each one exits after
// `maxLifetimeMs` whatever happens, and live trees are SIGKILLed when this process exits.

import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type { Writable } from 'node:stream';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { FakeAcpConfig, FakeChildConfig } from './fake-adapter-child.js';
import { defaultProcessPort } from '../../sources/default-port.js';
import { sameIdentity as sameProcess } from '../../core/process-tree.js';
import type { LiveIdentity } from '../../core/types.js';

/** One pid's identity now, through the default process port (/proc on Linux, ps elsewhere); null when gone or unknown. */
function identityNow(pid: number): LiveIdentity | null {
  const r = defaultProcessPort().identity(pid);
  return r.kind === 'live' ? r.id : null;
}

/** Keep in sync with fake-adapter-child.ts. */
const FAKE_ADAPTER_ENV = 'STEPWISE_FAKE_ADAPTER_CONFIG';
const HOLD_ENV = 'STEPWISE_FAKE_HOLD_CONFIG';
const NODE_ENV = 'STEPWISE_FAKE_NODE';
const SCRIPT_ENV = 'STEPWISE_FAKE_SCRIPT';

export const DEFAULT_FAKE_MARKER = '@agentclientprotocol/claude-agent-acp';
export const DEFAULT_FAKE_MODEL = 'claude-sonnet-4-5';
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

/** 'acp': the real four-level npx shape (default); 'generic': N node levels with any argv. */
export type FakeShape = 'acp' | 'generic';

export interface FakeTreeOptions {
  /** Default 'acp', or 'generic' when depth or argvByLevel is given. */
  shape?: FakeShape;
  /**
   * generic: text put in the argv of levels 0 and 1. acp: the npm package (its last path
   * segment is the bin sh runs). Default '@agentclientprotocol/claude-agent-acp'.
   */
  marker?: string;
  /** MiB of touched memory each node process holds (acp: npm and the adapter; sh holds none). Default 8. */
  holdMb?: number;
  /** acp: MiB each session CLI holds. Default 2 × holdMb: the CLI is the heavy level, like the real one. */
  sessionHoldMb?: number;
  /** acp: the --model argument. */
  model?: string;
  /** acp: the --allowedPaths argument (default: cwd). */
  allowedPaths?: string;
  /** acp: sessions (uuids) opened with session/new before the tree is returned. */
  sessions?: string[];
  /** generic: number of levels. Default 3. */
  depth?: number;
  /** generic: argv after the script path, per level (its length overrides depth). */
  argvByLevel?: string[][];
  /**
   * The grandchild of the top leaves the top's session and group (setsid), its ppid chain
   * intact. generic: level 2. acp: the adapter (level 3), started through `setsid` (its argv
   * then names …/claude-agent-acp/dist/index.js instead of the .bin link).
   */
  setsidGrandchild?: boolean;
  /** Levels > 0 (0-based: acp 1 = sh, 2 = adapter, 3 = session CLIs) in their own session. Level 0 always is. */
  setsidLevels?: number[];
  /** Levels (0-based, as setsidLevels) that ignore SIGTERM (true: every level), to test SIGKILL escalation. */
  ignoreSigterm?: boolean | number[];
  parent?: FakeParent;
  /** Shorthand for parent: 'orphan'. */
  parentless?: boolean;
  /** Every process exits after this long, whatever happens. Default 10 minutes. */
  maxLifetimeMs?: number;
  /** Reject when the tree (or a session) has not reported after this long. Default 20 s. */
  readyTimeoutMs?: number;
  cwd?: string;
}

/** One ACP session of an acp tree: its claude CLI process (level 4). */
export interface FakeSession {
  sessionId: string;
  pid: number;
  identity: LiveIdentity;
  /** The CLI's cwd (the session's working dir). */
  cwd: string;
}

export interface FakeTree {
  shape: FakeShape;
  /**
   * The processes the tree has now, top first: generic, one per level; acp, the levels still
   * expected alive (all three, or the adapter alone after killTop()) then the CLI of every open
   * session in opening order. stop() does not change it (to check that they are gone).
   */
  readonly pids: number[];
  /** Identities of `pids` (read when each process reported, for re-checks). */
  readonly identities: LiveIdentity[];
  /** One pid per level as spawned, top first (acp: npm, sh, adapter). */
  levelPids: number[];
  topPid: number;
  /** = topPid: the top leads its group and session (and stays the group id after it died). */
  pgid: number;
  /** acp: the adapter (level 3); generic: null. */
  adapterPid: number | null;
  /** acp: the open sessions, in opening order. */
  readonly sessions: FakeSession[];
  parent: FakeParent;
  /** The top's parent at spawn: this process, the exited launcher, or the fake server. */
  parentPid: number;
  marker: string;
  /** acp: session/new (or session/load: the CLI gets --resume); resolves once the CLI runs. Default id: a random uuid. */
  openSession(sessionId?: string, opts?: { cwd?: string; load?: boolean }): Promise<FakeSession>;
  /** acp: session/close; resolves once the session's CLI has exited and been reaped by the adapter. */
  closeSession(sessionId: string): Promise<void>;
  /**
   * acp: signal the top pid alone (default SIGTERM); resolves once it is gone (or a zombie)
   * and, for SIGTERM, sh too; the adapter and the CLIs live on (ppid 1 or a subreaper).
   */
  killTop(signal?: NodeJS.Signals): Promise<void>;
  /** acp: close the adapter's stdin (the server went away); resolves once every process is gone (or a zombie). */
  closeStdin(): Promise<void>;
  /** acp: what the tree wrote on stderr so far (the last 64 KiB). */
  stderr(): string;
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
// The child script: dist/demo/kit/fake-adapter-child.js after a build; under vitest (running
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
  const now = identityNow(id.pid);
  return now && sameProcess(now, id) ? now : null;
}

/**
 * SIGKILL each process still the same (pid, start time), the groups they lead, and the group
 * `pgid` while one of them is still in it (a group id cannot be reused while the group has a
 * member: a live member that is ours proves the group is the tree's, leader dead or not).
 */
function killIdentities(ids: readonly LiveIdentity[], pgid?: number): void {
  const groups = new Set<number>();
  for (const id of ids) {
    const now = stillSame(id);
    if (!now) continue;
    if (now.pgid === id.pid) groups.add(id.pid);
    if (pgid !== undefined && now.pgid === pgid && now.state !== 'Z') groups.add(pgid);
  }
  for (const g of groups) trySignal(-g, 'SIGKILL');
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

// ---------------------------------------------------------------------------------------------
// The acp shape's files: a fake npx cache with the adapter's .bin link and the CLI, both tiny
// CommonJS stubs that import the child script (made once per script, in a temp dir).

interface AcpFiles {
  /** <cache>/_npx/<hash>/node_modules/.bin: `<bin>` → ../<pkg>/dist/index.js. */
  binDir: string;
  /** A dir whose `<bin>` runs the adapter under setsid(1) (setsidGrandchild). */
  setsidBinDir: string;
  /** <cache>/_npx/<hash>/node_modules/@anthropic-ai/claude-agent-sdk-linux-x64/claude */
  cliPath: string;
}

const STUB_VERSION = 2;
const acpFilesCache = new Map<string, AcpFiles>();

function acpFiles(script: string, pkg: string, bin: string): AcpFiles {
  const key = `${STUB_VERSION}\0${script}\0${pkg}\0${bin}\0${process.execPath}`;
  const cached = acpFilesCache.get(key);
  // Checked every time (one stat): a temp cleaner may have removed them since.
  if (cached && existsSync(cached.cliPath)) return cached;
  const hash = createHash('sha256').update(key).digest('hex').slice(0, 16);
  const base = join(tmpdir(), `stepwise-watchdog-fake-${process.getuid?.() ?? 'u'}-npx-${hash}`);
  const rel = (root: string) => {
    const nm = join(root, 'npm-cache', '_npx', hash, 'node_modules');
    return {
      nm,
      binDir: join(nm, '.bin'),
      setsidBinDir: join(root, 'setsid-bin'),
      pkgDir: join(nm, ...pkg.split('/')),
      cliDir: join(nm, '@anthropic-ai', 'claude-agent-sdk-linux-x64'),
    };
  };
  const final = rel(base);
  const files: AcpFiles = { binDir: final.binDir, setsidBinDir: final.setsidBinDir, cliPath: join(final.cliDir, 'claude') };
  if (!existsSync(join(base, '.complete'))) {
    // Built aside, then renamed into place: concurrent test workers may race here.
    const tmp = `${base}.${process.pid}.${randomUUID().slice(0, 8)}.tmp`;
    const t = rel(tmp);
    const stub = `#!/usr/bin/env node\nimport(${JSON.stringify(pathToFileURL(script).href)}).catch((e) => { process.stderr.write(String(e) + '\\n'); process.exit(1); });\n`;
    for (const dir of [t.binDir, t.setsidBinDir, join(t.pkgDir, 'dist'), t.cliDir]) mkdirSync(dir, { recursive: true });
    writeFileSync(join(t.pkgDir, 'package.json'), JSON.stringify({ name: pkg, version: '0.101.0', type: 'commonjs', bin: { [bin]: 'dist/index.js' } }));
    writeFileSync(join(t.pkgDir, 'dist', 'index.js'), stub, { mode: 0o755 });
    symlinkSync(`../${pkg}/dist/index.js`, join(t.binDir, bin));
    writeFileSync(join(t.cliDir, 'package.json'), JSON.stringify({ name: '@anthropic-ai/claude-agent-sdk-linux-x64', version: '0.2.0', type: 'commonjs' }));
    // The CLI stub names this node directly: exec of a `#!` script sets comm to the script's
    // name ("claude", as the native CLI has) while argv reads `<node> <…>/claude …` (one exec,
    // where `#!/usr/bin/env node` would exec again and leave comm "node").
    const direct = /^[^\s]+$/.test(process.execPath) && process.execPath.length < 120;
    writeFileSync(join(t.cliDir, 'claude'), direct ? stub.replace('#!/usr/bin/env node', `#!${process.execPath}`) : stub, { mode: 0o755 });
    writeFileSync(join(t.setsidBinDir, bin), `#!/bin/sh\nexec setsid node ${JSON.stringify(join(final.pkgDir, 'dist', 'index.js'))} "$@"\n`, { mode: 0o755 });
    chmodSync(join(t.setsidBinDir, bin), 0o755);
    writeFileSync(join(tmp, '.complete'), '');
    try {
      renameSync(tmp, base);
    } catch {
      rmSync(tmp, { recursive: true, force: true }); // another worker won
      if (!existsSync(join(base, '.complete'))) throw new Error(`fake adapter: could not create ${base}`);
    }
  }
  acpFilesCache.set(key, files);
  return files;
}

/** Same as acpTopArgv in fake-adapter-child.ts: every word of the title, so the title fits in the argv area. */
function acpTopArgv(acp: FakeAcpConfig): string[] {
  return ['npm-exec', acp.pkg, ...acp.args];
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


function unrefStream(s: unknown): void {
  (s as { unref?: () => void } | null)?.unref?.();
}

/** JSON lines on a tree's stdout: the first report, then answers to requests; stderr kept (tail). */
class Channel {
  private out = '';
  private err = '';
  private first: ((msg: Record<string, unknown> | Error) => void) | null = null;
  private firstMsg: Record<string, unknown> | null = null;
  private closed = false;
  private nextId = 1;
  private pending = new Map<number, { resolve: (v: Record<string, unknown>) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();

  /**
   * The tree's stdin (acp: the adapter reads it and exits when it closes). Taken from the
   * ChildProcess, which would destroy it when its own process exits (the top, or the orphan's
   * launcher): the pipe must live as long as this spawner, like the server's end.
   */
  private readonly stdin: Writable | null;

  constructor(private readonly child: ChildProcess) {
    this.stdin = child.stdin;
    child.stdin = null;
    this.stdin?.on('error', () => undefined);
    child.stdout?.setEncoding('utf8');
    child.stdout?.on('data', (c: string) => this.onData(c));
    child.stdout?.on('close', () => this.onClose());
    child.stdout?.on('error', () => this.onClose());
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (c: string) => {
      this.err += c;
      if (this.err.length > 128 * 1024) this.err = this.err.slice(-64 * 1024);
    });
    child.stderr?.on('error', () => undefined);
    child.on('error', (e) => this.first?.(e));
  }

  stderr(): string {
    return this.err.slice(-64 * 1024);
  }

  firstLine(timeoutMs: number): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => done(new Error(`fake adapter: no report after ${timeoutMs} ms; stderr: ${this.err.slice(-2000)}`)), timeoutMs);
      const done = (m: Record<string, unknown> | Error): void => {
        clearTimeout(timer);
        this.first = null;
        if (m instanceof Error) reject(m);
        else resolve(m);
      };
      if (this.firstMsg) done(this.firstMsg);
      else if (this.closed) done(new Error(`fake adapter: exited before reporting; stderr: ${this.err.slice(-2000)}`));
      else this.first = done;
    });
  }

  request(method: string, params: Record<string, unknown>, timeoutMs: number): Promise<Record<string, unknown>> {
    if (this.closed || !this.stdin || this.stdin.destroyed || this.stdin.writableEnded) {
      return Promise.reject(new Error(`fake adapter: ${method}: the adapter's stdin or stdout is closed`));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`fake adapter: ${method}: no answer after ${timeoutMs} ms; stderr: ${this.err.slice(-2000)}`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.stdin!.write(`${JSON.stringify({ jsonrpc: '2.0', id, method, params })}\n`);
    });
  }

  /** Stop keeping this process alive (answers still arrive while something else does). */
  unref(): void {
    for (const s of [this.stdin, this.child.stdout, this.child.stderr]) unrefStream(s);
    this.child.unref();
  }

  endStdin(): void {
    this.stdin?.end();
  }

  destroy(): void {
    this.stdin?.destroy();
    this.child.stdout?.destroy();
    this.child.stderr?.destroy();
    this.child.unref();
  }

  private onData(chunk: string): void {
    this.out += chunk;
    for (let nl = this.out.indexOf('\n'); nl >= 0; nl = this.out.indexOf('\n')) {
      const line = this.out.slice(0, nl);
      this.out = this.out.slice(nl + 1);
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        msg = { error: `unexpected output ${JSON.stringify(line.slice(0, 200))}` };
      }
      if (!this.firstMsg) {
        this.firstMsg = msg;
        this.first?.(msg);
        continue;
      }
      const id = typeof msg.id === 'number' ? msg.id : null;
      const p = id !== null ? this.pending.get(id) : undefined;
      if (!p) continue;
      this.pending.delete(id!);
      clearTimeout(p.timer);
      const error = msg.error as { message?: unknown } | undefined;
      if (error) p.reject(new Error(`fake adapter: ${String(error.message ?? JSON.stringify(error))}`));
      else p.resolve((msg.result ?? {}) as Record<string, unknown>);
    }
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    this.first?.(new Error(`fake adapter: exited before reporting; stderr: ${this.err.slice(-2000)}`));
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      clearTimeout(p.timer);
      p.reject(new Error('fake adapter: the tree closed its stdout (gone)'));
    }
  }
}

interface Launched {
  child: ChildProcess;
  helperPid: number | undefined;
  helperId: LiveIdentity | null;
}

/** Start the top under the parent asked for; its stdio are pipes to this process. */
function launch(cfg: FakeChildConfig, script: string, topArgv: string[], parent: FakeParent, cwd: string, stdin: 'pipe' | 'ignore'): Launched {
  const env = { ...process.env, [FAKE_ADAPTER_ENV]: JSON.stringify(cfg) };
  const stdio: ['pipe' | 'ignore', 'pipe', 'pipe'] = [stdin, 'pipe', 'pipe'];
  let child: ChildProcess;
  if (parent === 'self') {
    child = spawn(process.execPath, [script, ...topArgv], { detached: true, stdio, env, cwd });
  } else if (parent === 'orphan') {
    const launcher: FakeChildConfig = { ...cfg, role: 'launcher' };
    child = spawn(process.execPath, [script, 'launcher'], {
      stdio,
      cwd,
      env: { ...process.env, [FAKE_ADAPTER_ENV]: JSON.stringify(launcher) },
    });
  } else {
    // sh starts the top in the background under setsid(1) (its stdin: ours, through fd 3, since
    // a background job's stdin is /dev/null), then execs a node that never waits for it: libuv
    // only reaps the children it spawned itself.
    const hold: FakeChildConfig = { ...cfg, role: 'hold', holdMb: 0 };
    child = spawn(
      '/bin/sh',
      ['-c', `exec 3<&0; setsid "$@" <&3 3<&- & exec 3<&-; export ${FAKE_ADAPTER_ENV}="$${HOLD_ENV}"; exec "$${NODE_ENV}" "$${SCRIPT_ENV}" fake-server`, 'sh', process.execPath, script, ...topArgv],
      { stdio, cwd, env: { ...env, [HOLD_ENV]: JSON.stringify(hold), [NODE_ENV]: process.execPath, [SCRIPT_ENV]: script } },
    );
  }
  const helperPid = child.pid;
  return { child, helperPid, helperId: helperPid !== undefined ? identityNow(helperPid) : null };
}

function resolveCommon(opts: FakeTreeOptions) {
  const holdMb = opts.holdMb ?? 8;
  if (!(holdMb >= 0)) throw new RangeError(`holdMb must be >= 0, got ${holdMb}`);
  return {
    marker: opts.marker ?? DEFAULT_FAKE_MARKER,
    holdMb,
    parent: (opts.parentless ? 'orphan' : (opts.parent ?? 'self')) as FakeParent,
    maxLifetimeMs: opts.maxLifetimeMs ?? DEFAULT_MAX_LIFETIME_MS,
    readyTimeoutMs: opts.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS,
    cwd: opts.cwd ?? process.cwd(),
  };
}

function reportedPids(msg: Record<string, unknown>): number[] {
  return Array.isArray(msg.pids) ? (msg.pids as unknown[]).filter((p): p is number => typeof p === 'number') : [];
}

/**
 * The tree's first line (its pids, or an error), once an orphan's launcher has exited; on a
 * timeout or a broken channel the launcher (and, under us, its group) is killed and the error
 * rethrown.
 */
async function readyMessage(channel: Channel, child: ChildProcess, parent: string, helperPid: number | undefined, readyTimeoutMs: number): Promise<Record<string, unknown>> {
  try {
    const exited = parent === 'orphan' ? new Promise<void>((r) => child.once('exit', () => r())) : Promise.resolve();
    const msg = await channel.firstLine(readyTimeoutMs);
    await exited;
    return msg;
  } catch (e) {
    if (helperPid !== undefined) {
      if (parent === 'self') trySignal(-helperPid, 'SIGKILL');
      trySignal(helperPid, 'SIGKILL');
    }
    channel.destroy();
    throw e;
  }
}

/** Start a real fake adapter tree; resolves once every level is up and has reported its pid (acp: and the sessions asked for run). */
export async function spawnFakeTree(opts: FakeTreeOptions = {}): Promise<FakeTree> {
  const shape = opts.shape ?? (opts.depth !== undefined || opts.argvByLevel !== undefined ? 'generic' : 'acp');
  return shape === 'acp' ? spawnAcpTree(opts) : spawnGenericTree(opts);
}

function noSessions(what: string): Promise<never> {
  return Promise.reject(new Error(`fake adapter: ${what} needs the acp shape`));
}

async function spawnGenericTree(opts: FakeTreeOptions): Promise<FakeTree> {
  const { marker, holdMb, parent, maxLifetimeMs, readyTimeoutMs, cwd } = resolveCommon(opts);
  if (opts.sessions?.length) throw new RangeError('sessions need the acp shape');
  const depth = opts.argvByLevel?.length ?? opts.depth ?? 3;
  checkPositiveInt('depth', depth);
  const levels = [...Array(depth).keys()];
  const ignore = opts.ignoreSigterm;
  const setsidLevels = [0, ...(opts.setsidLevels ?? []), ...(opts.setsidGrandchild ? [2] : [])];
  const script = await fakeAdapterChildScript();
  const cfg: FakeChildConfig = {
    role: 'level',
    level: 0,
    argvByLevel: opts.argvByLevel ?? defaultArgv(marker, depth),
    holdMb,
    setsidLevels,
    ignoreSigtermLevels: ignore === true ? levels : Array.isArray(ignore) ? ignore : [],
    maxLifetimeMs,
    script,
  };
  const { child, helperPid, helperId } = launch(cfg, script, cfg.argvByLevel[0] ?? [], parent, cwd, 'ignore');
  const channel = new Channel(child);

  const msg = await readyMessage(channel, child, parent, helperPid, readyTimeoutMs);
  channel.destroy();
  const pids = reportedPids(msg);
  const identities = pids.map((pid) => identityNow(pid));
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
    shape: 'generic',
    pids,
    identities: known,
    levelPids: [...pids],
    topPid: top.pid,
    pgid: top.pid,
    adapterPid: null,
    sessions: [],
    parent,
    parentPid,
    marker,
    openSession: () => noSessions('openSession'),
    closeSession: () => noSessions('closeSession'),
    killTop: () => noSessions('killTop'),
    closeStdin: () => noSessions('closeStdin'),
    stderr: () => '',
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

async function spawnAcpTree(opts: FakeTreeOptions): Promise<FakeTree> {
  const { marker, holdMb, parent, maxLifetimeMs, readyTimeoutMs, cwd } = resolveCommon(opts);
  const sessionHoldMb = opts.sessionHoldMb ?? 2 * holdMb;
  if (!(sessionHoldMb >= 0)) throw new RangeError(`sessionHoldMb must be >= 0, got ${sessionHoldMb}`);
  const pkg = marker;
  const bin = marker.split('/').pop() || marker;
  const model = opts.model ?? DEFAULT_FAKE_MODEL;
  const allowedPaths = opts.allowedPaths ?? cwd;
  const ignore = opts.ignoreSigterm;
  const setsidLevels = [0, ...(opts.setsidLevels ?? []), ...(opts.setsidGrandchild ? [2] : [])];
  const script = await fakeAdapterChildScript();
  const files = acpFiles(script, pkg, bin);
  const acp: FakeAcpConfig = {
    pkg,
    bin,
    args: ['--model', model, '--allowedPaths', allowedPaths],
    binDir: setsidLevels.includes(2) ? files.setsidBinDir : files.binDir,
    cliPath: files.cliPath,
    model,
    cliHoldMb: sessionHoldMb,
    nodeDir: dirname(process.execPath),
  };
  const cfg: FakeChildConfig = {
    role: 'npm',
    level: 0,
    argvByLevel: [],
    holdMb,
    setsidLevels,
    ignoreSigtermLevels: ignore === true ? [0, 1, 2, 3] : Array.isArray(ignore) ? ignore : [],
    maxLifetimeMs,
    acp,
    script,
  };
  const { child, helperPid, helperId } = launch(cfg, script, acpTopArgv(acp), parent, cwd, 'pipe');
  const channel = new Channel(child);
  const extra = parent === 'non-reaping' && helperId ? [helperId] : [];

  const msg = await readyMessage(channel, child, parent, helperPid, readyTimeoutMs);
  const levelPids = reportedPids(msg);
  const levelIds = levelPids.map((pid) => identityNow(pid)).filter((i): i is LiveIdentity => i !== null);
  if (typeof msg.error === 'string' || msg.fake !== 'ready' || levelPids.length !== 3 || levelIds.length !== 3) {
    killIdentities([...levelIds, ...extra], levelPids[0]);
    channel.destroy();
    throw new Error(`fake adapter tree failed: ${typeof msg.error === 'string' ? msg.error : JSON.stringify(msg)}; stderr: ${channel.stderr().slice(-2000)}`);
  }
  channel.unref();
  const [top, sh, adapter] = levelIds as [LiveIdentity, LiveIdentity, LiveIdentity];
  const parentPid = parent === 'self' ? process.pid : (helperPid ?? top.ppid);

  /** Every process this tree ever had (what stop() and the exit hook kill). */
  const all: LiveIdentity[] = [...levelIds, ...extra];
  /** The levels still expected alive. */
  let levels: LiveIdentity[] = [...levelIds];
  const sessions: FakeSession[] = [];
  const killSync = (): void => killIdentities(all, top.pid);
  const unregister = register(killSync);
  let stopping: Promise<void> | null = null;

  const tree: FakeTree = {
    shape: 'acp',
    get pids() {
      return [...levels.map((i) => i.pid), ...sessions.map((s) => s.pid)];
    },
    get identities() {
      return [...levels, ...sessions.map((s) => s.identity)];
    },
    levelPids,
    topPid: top.pid,
    pgid: top.pid,
    adapterPid: adapter.pid,
    get sessions() {
      return [...sessions];
    },
    parent,
    parentPid,
    marker,
    async openSession(sessionId = randomUUID(), o = {}) {
      const sessionCwd = o.cwd ?? allowedPaths;
      const params = o.load ? { sessionId, cwd: sessionCwd, mcpServers: [] } : { cwd: sessionCwd, mcpServers: [], _meta: { sessionId } };
      const res = await channel.request(o.load ? 'session/load' : 'session/new', params, readyTimeoutMs);
      const pid = (res._meta as { pid?: unknown } | undefined)?.pid;
      const identity = typeof pid === 'number' ? identityNow(pid) : null;
      if (typeof pid !== 'number' || !identity) throw new Error(`fake adapter: session ${sessionId}: no CLI process (${JSON.stringify(res)})`);
      all.push(identity);
      const s: FakeSession = { sessionId: String(res.sessionId ?? sessionId), pid, identity, cwd: sessionCwd };
      sessions.push(s);
      return s;
    },
    async closeSession(sessionId) {
      const i = sessions.findIndex((s) => s.sessionId === sessionId);
      await channel.request('session/close', { sessionId }, readyTimeoutMs);
      if (i >= 0) {
        const [s] = sessions.splice(i, 1);
        await waitFor(() => goneOrZombie(s!.identity), 2000);
      }
    },
    async killTop(signal = 'SIGTERM') {
      if (!stillSame(top)) throw new Error(`fake adapter: the top ${top.pid} is already gone`);
      trySignal(top.pid, signal);
      if (!(await waitFor(() => goneOrZombie(top), 5000))) throw new Error(`fake adapter: the top ${top.pid} survived ${signal}`);
      // npm takes its shell with it on SIGTERM; the adapter is then reparented.
      if (signal === 'SIGTERM') await waitFor(() => goneOrZombie(sh) && identityNow(adapter.pid)?.ppid !== sh.pid, 2000);
      levels = levels.filter((i) => !goneOrZombie(i));
    },
    async closeStdin() {
      channel.endStdin();
      const members = tree.identities;
      if (!(await waitFor(() => members.every(goneOrZombie), 5000))) throw new Error('fake adapter: the tree outlived its stdin');
      levels = [];
      sessions.length = 0;
    },
    stderr: () => channel.stderr(),
    stop() {
      stopping ??= (async () => {
        killSync();
        // Wait until reaped (by us, by the adapter, by pid 1 / the subreaper once a parent is
        // dead); accept zombies only when nobody reaps them.
        if (!(await waitFor(() => all.every((id) => stillSame(id) === null), 5000))) {
          await waitFor(() => all.every(goneOrZombie), 1000);
        }
        channel.destroy();
        unregister();
      })();
      return stopping;
    },
  };

  try {
    for (const id of opts.sessions ?? []) await tree.openSession(id);
  } catch (e) {
    await tree.stop();
    throw e;
  }
  return tree;
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
  const channel = new Channel(child);
  let zombiePid: number;
  try {
    const msg = await channel.firstLine(readyTimeoutMs);
    const pid = Array.isArray(msg.pids) ? msg.pids[0] : undefined;
    if (typeof pid !== 'number') throw new Error(`spawnZombie: unexpected report ${JSON.stringify(msg)}`);
    zombiePid = pid;
    // The parent must have become node (exec) and the child must have exited.
    const ok = await waitFor(() => {
      const z = identityNow(pid);
      const p = identityNow(parentPid);
      return z !== null && z.state === 'Z' && z.ppid === parentPid && p !== null && readArgv(parentPid).includes('zombie-parent');
    }, readyTimeoutMs);
    if (!ok) throw new Error(`spawnZombie: pid ${pid} did not become a zombie of ${parentPid}`);
  } catch (e) {
    trySignal(parentPid, 'SIGKILL');
    channel.destroy();
    throw e;
  }
  channel.destroy();
  const parentId = identityNow(parentPid);
  const zombieId = identityNow(zombiePid);
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
  return defaultProcessPort().argv(pid) ?? [];
}
