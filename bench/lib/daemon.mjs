// `stepwise-watchdog run` as a child process: start, wait until it has cycled, read its metrics,
// RSS and CPU from /proc, stop it (SIGTERM, then SIGKILL). PDEATHSIG kills it if the bench dies.

import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { freePort } from './anchor.mjs';
import { cpuSeconds, rssSplit, track, vmRss, waitFor } from './util.mjs';

export const BIN = fileURLToPath(new URL('../../dist/cli/bin.js', import.meta.url));

export class Daemon {
  /**
   * opts: project, auditLog, logFile, interval, terminalGrace, observeOnly, logLevel, extra[] (CLI
   * flags), nodeFlags[] (node's own flags, before the script)
   */
  static async start(opts) {
    const port = await freePort();
    const listen = `127.0.0.1:${port}`;
    const args = [
      BIN,
      'run',
      '--project',
      opts.project,
      '--listen',
      listen,
      '--audit-log',
      opts.auditLog,
      '--interval',
      String(opts.interval ?? 15),
      '--terminal-grace',
      String(opts.terminalGrace ?? 30),
      '--log-level',
      opts.logLevel ?? 'warn',
      ...(opts.observeOnly ? ['--observe-only'] : []),
      ...(opts.extra ?? []),
    ];
    const out = fs.openSync(opts.logFile, 'a');
    const child = spawn('setpriv', ['--pdeathsig', 'KILL', process.execPath, ...(opts.nodeFlags ?? []), ...args], { stdio: ['ignore', out, out] });
    fs.closeSync(out);
    const untrack = track(child.pid, { label: 'watchdog daemon' });
    const base = `http://${listen}`;
    const d = new Daemon(child, base, listen, untrack, opts);
    const ready = await waitFor(async () => {
      if (child.exitCode !== null) throw new Error(`the daemon exited (${child.exitCode}); see ${opts.logFile}:\n${fs.readFileSync(opts.logFile, 'utf8').slice(-1500)}`);
      try {
        return (await fetch(`${base}/readyz`)).ok;
      } catch {
        return false;
      }
    }, 60_000, 50);
    if (!ready) throw new Error(`the daemon did not become ready; see ${opts.logFile}`);
    return d;
  }

  constructor(child, base, listen, untrack, opts) {
    this.child = child;
    this.pid = child.pid;
    this.base = base;
    this.listen = listen;
    this.untrack = untrack;
    this.opts = opts;
  }

  async poke() {
    await fetch(`${this.base}/api/poke`, { method: 'POST' });
  }

  async metricsText() {
    return (await fetch(`${this.base}/metrics`)).text();
  }

  /** Cycle count and mean duration from its own histogram. */
  async cycleStats() {
    const text = await this.metricsText();
    const num = (re) => {
      const m = re.exec(text);
      return m ? Number(m[1]) : NaN;
    };
    const sum = num(/^stepwise_watchdog_cycle_duration_seconds_sum(?:\{[^}]*\})? (\S+)/m);
    const count = num(/^stepwise_watchdog_cycle_duration_seconds_count(?:\{[^}]*\})? (\S+)/m);
    return { count, sum, meanMs: (sum / count) * 1000 };
  }

  /** V8 heap used/total and external memory, from its own default metrics (prom-client). */
  async heap() {
    const text = await this.metricsText();
    const num = (name) => {
      const m = new RegExp(`^stepwise_watchdog_${name}(?:\\{[^}]*\\})? (\\S+)`, 'm').exec(text);
      return m ? Number(m[1]) : NaN;
    };
    return { used: num('nodejs_heap_size_used_bytes'), total: num('nodejs_heap_size_total_bytes'), external: num('nodejs_external_memory_bytes') };
  }

  rss() {
    return vmRss(this.pid);
  }

  rssSplit() {
    return rssSplit(this.pid);
  }

  cpu() {
    return cpuSeconds(this.pid);
  }

  async stop() {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return this.untrack();
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.kill('SIGTERM'); // setpriv exec'd node: this is the daemon itself
    const t = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(t);
    this.untrack();
  }
}

/** `stepwise-watchdog hook install` for a project, poking this address. */
export function installHook(project, listen) {
  return execFileSync(process.execPath, [BIN, 'hook', 'install', '--project', project, '--listen', listen], { encoding: 'utf8' });
}

/** Lines of the daemon's JSON log (pino). */
export function readLog(file) {
  try {
    return fs
      .readFileSync(file, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => {
        try {
          return JSON.parse(l);
        } catch {
          return { msg: l };
        }
      });
  } catch {
    return [];
  }
}
