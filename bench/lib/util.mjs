// Shared helpers: statistics, /proc reads, and the cleanup registry that kills every process
// the bench started (by pid AND start time, never a bare pid), on normal exit, on Ctrl-C and on
// failure.

import { readFileSync, readdirSync } from 'node:fs';

// ── statistics ──────────────────────────────────────────────────────────────────────────────

/** Linear-interpolated quantile (type 7, like numpy's default) of a numeric array. */
export function quantile(values, q) {
  const xs = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (xs.length === 0) return NaN;
  const pos = (xs.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo);
}

export function summary(values) {
  const xs = values.filter((v) => Number.isFinite(v));
  return {
    n: xs.length,
    p50: quantile(xs, 0.5),
    p95: quantile(xs, 0.95),
    min: xs.length ? Math.min(...xs) : NaN,
    max: xs.length ? Math.max(...xs) : NaN,
    mean: xs.length ? xs.reduce((s, v) => s + v, 0) / xs.length : NaN,
  };
}

export const round = (v, digits = 2) => (Number.isFinite(v) ? Number(v.toFixed(digits)) : null);

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function waitFor(cond, timeoutMs, intervalMs = 5) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() >= deadline) return null;
    await sleep(intervalMs);
  }
}

// ── /proc ───────────────────────────────────────────────────────────────────────────────────

/** pid, state, ppid, pgid, start ticks of one process, or null when gone. */
export function statOf(pid) {
  let text;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch {
    return null;
  }
  const close = text.lastIndexOf(')');
  const f = text.slice(close + 2).split(' ');
  return { pid, state: f[0], ppid: Number(f[1]), pgid: Number(f[2]), sid: Number(f[3]), startTicks: Number(f[19]) };
}

export function countProcesses() {
  let n = 0;
  for (const name of readdirSync('/proc')) {
    const c = name.charCodeAt(0);
    if (c >= 48 && c <= 57) n++;
  }
  return n;
}

export function childrenOf(pid) {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'latin1').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** VmRSS of a process in bytes, or null. */
/** RSS split (bytes): anonymous (heap, malloc), file-backed (the node executable, addons), shmem. */
export function rssSplit(pid) {
  try {
    const text = readFileSync(`/proc/${pid}/status`, 'latin1');
    const kb = (k) => Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(text)?.[1] ?? NaN) * 1024;
    return { anonBytes: kb('RssAnon'), fileBytes: kb('RssFile'), shmemBytes: kb('RssShmem') };
  } catch {
    return null;
  }
}

export function vmRss(pid) {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'latin1'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

/** utime + stime of a process in seconds (USER_HZ = 100). */
export function cpuSeconds(pid) {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'latin1');
    const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return null;
  }
}

// ── cleanup registry ────────────────────────────────────────────────────────────────────────

const registry = new Map(); // key `${pid}:${startTicks}` → { pid, startTicks, group, label }

/**
 * Remember a process to kill at the end. `group`: it leads its own process group and the whole
 * group goes with it. Returns a function that forgets it (after the bench stopped it itself).
 */
export function track(pid, { group = false, label = '' } = {}) {
  const s = statOf(pid);
  if (!s) return () => {};
  const key = `${pid}:${s.startTicks}`;
  registry.set(key, { pid, startTicks: s.startTicks, group: group && s.pgid === pid, label });
  return () => registry.delete(key);
}

export function trackIdentity(pid, startTicks, { group = false, label = '' } = {}) {
  const key = `${pid}:${startTicks}`;
  registry.set(key, { pid, startTicks, group, label });
  return () => registry.delete(key);
}

export function untrackIdentity(pid, startTicks) {
  registry.delete(`${pid}:${startTicks}`);
}

/** Forget entries whose process is gone (long soaks start many trees). */
export function pruneRegistry() {
  for (const [key, e] of registry) {
    const s = statOf(e.pid);
    if (!s || s.startTicks !== e.startTicks || s.state === 'Z') registry.delete(key);
  }
}

export function trackedCount() {
  return registry.size;
}

/** SIGKILL everything tracked that is still the same process (and the groups they lead). Sync. */
export function killAllTracked(signal = 'SIGKILL') {
  for (const e of [...registry.values()].reverse()) {
    const s = statOf(e.pid);
    if (s && s.startTicks === e.startTicks && s.state !== 'Z') {
      if (e.group && s.pgid === e.pid) {
        try {
          process.kill(-e.pid, signal);
        } catch {}
      }
      try {
        process.kill(e.pid, signal);
      } catch {}
    }
  }
  registry.clear();
}

let handlersInstalled = false;
const extraCleanups = [];

/** Run `fn` (sync) at exit too, before the tracked processes are killed. */
export function onCleanup(fn) {
  extraCleanups.push(fn);
}

export function installCleanupHandlers() {
  if (handlersInstalled) return;
  handlersInstalled = true;
  const cleanup = () => {
    for (const fn of extraCleanups.splice(0)) {
      try {
        fn();
      } catch {}
    }
    killAllTracked();
  };
  process.on('exit', cleanup);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(sig, () => {
      process.stderr.write(`\nbench: ${sig}: stopping every process it started\n`);
      cleanup();
      process.exit(130);
    });
  }
  process.on('uncaughtException', (err) => {
    process.stderr.write(`bench: ${err?.stack ?? err}\n`);
    cleanup();
    process.exit(1);
  });
  process.on('unhandledRejection', (err) => {
    process.stderr.write(`bench: ${err?.stack ?? err}\n`);
    cleanup();
    process.exit(1);
  });
}
