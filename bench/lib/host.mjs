// The synthetic host: filler processes (`sleep`), stand-in servers with fake adapter trees.
// Every process is tracked (pid + start time) and killed at the end, whatever happens; each
// also dies on its own when the bench dies (a closed stdin pipe, or PDEATHSIG), and every
// `sleep` has a finite lifetime.

import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { countProcesses, statOf, track, trackIdentity, untrackIdentity, waitFor, childrenOf } from './util.mjs';

const STAND_IN = fileURLToPath(new URL('./stand-in.mjs', import.meta.url));

// One sh per chunk starts `n` sleeps, then waits on its stdin (a pipe from the bench): when the
// bench goes away (even SIGKILLed) the pipe closes and it kills its whole group.
const FILLER = 'i=0; while [ $i -lt $1 ]; do sleep $2 </dev/null >/dev/null 2>&1 & i=$((i+1)); done; echo up; read _; kill -KILL 0';

export class Fillers {
  constructor(lifetimeSeconds) {
    this.lifetime = lifetimeSeconds;
    this.parents = []; // { child, n, untrack }
  }

  get count() {
    return this.parents.reduce((s, p) => s + p.n + 1, 0);
  }

  /** Start `n` more processes (n-1 sleeps + their parent per chunk of up to 500). */
  async add(n) {
    while (n > 1) {
      const chunk = Math.min(n - 1, 500);
      const child = spawn('/bin/sh', ['-c', FILLER, 'bench-filler', String(chunk), String(this.lifetime)], {
        detached: true,
        stdio: ['pipe', 'pipe', 'ignore'],
      });
      const untrack = track(child.pid, { group: true, label: 'filler' });
      await new Promise((resolve, reject) => {
        child.stdout.once('data', resolve);
        child.once('exit', () => reject(new Error('filler parent exited')));
      });
      child.stdout.destroy();
      this.parents.push({ child, n: chunk, untrack });
      n -= chunk + 1;
    }
  }

  /** Stop fillers until at most `keep` processes of theirs are left (whole chunks). */
  async trimTo(keep) {
    while (this.parents.length > 0 && this.count > keep) {
      const p = this.parents.pop();
      const s = statOf(p.child.pid);
      if (s && s.pgid === p.child.pid) {
        try {
          process.kill(-p.child.pid, 'SIGKILL');
        } catch {}
      }
      p.untrack();
      await waitFor(() => p.child.exitCode !== null || p.child.signalCode !== null, 5000);
    }
  }

  async stop() {
    await this.trimTo(0);
  }
}

/** Fill the host up to `total` processes in /proc (kernel threads and everyone else's count). */
export async function fillTo(fillers, total) {
  const missing = total - countProcesses();
  if (missing > 1) await fillers.add(missing);
}

/** A stand-in server process (cwd = project root) whose children are fake adapter trees. */
export class StandInServer {
  static async start(cwd, { lifetimeSeconds }) {
    const child = spawn('setpriv', ['--pdeathsig', 'KILL', process.execPath, STAND_IN], { cwd, stdio: ['pipe', 'pipe', 'inherit'] });
    const s = new StandInServer(child, lifetimeSeconds);
    await s.request({ op: 'ping' });
    s.untrack = track(child.pid, { label: 'stand-in server' });
    s.startTicks = statOf(child.pid).startTicks;
    return s;
  }

  constructor(child, lifetime) {
    this.child = child;
    this.pid = child.pid;
    this.lifetime = lifetime;
    this.pending = new Map();
    this.seq = 0;
    this.rl = createInterface({ input: child.stdout });
    this.rl.on('line', (line) => {
      const msg = JSON.parse(line);
      const p = this.pending.get(msg.id);
      this.pending.delete(msg.id);
      if (!p) return;
      if (msg.error) p.reject(new Error(`stand-in server: ${msg.error}`));
      else p.resolve(msg);
    });
    child.once('exit', () => {
      for (const p of this.pending.values()) p.reject(new Error('stand-in server exited'));
      this.pending.clear();
    });
  }

  request(req) {
    const id = ++this.seq;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.child.stdin.write(`${JSON.stringify({ ...req, id })}\n`);
    });
  }

  /** Start n trees; each is tracked (its group is killed at the end). */
  async spawnTrees(n, { kind = 'plain', sigtermDir } = {}) {
    const out = [];
    for (let done = 0; done < n; ) {
      const batch = Math.min(100, n - done);
      const r = await this.request({ op: 'spawn', n: batch, kind, lifetime: this.lifetime, sigtermDir });
      for (const t of r.trees) {
        trackIdentity(t.pids[0], t.starts[0], { group: true, label: 'tree' });
        out.push({ ...t, topPid: t.pids[0] });
      }
      done += batch;
    }
    return out;
  }

  /** Stop tracking a tree that is gone (after a reap). */
  forget(tree) {
    untrackIdentity(tree.pids[0], tree.starts[0]);
  }

  async stop() {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.stdin.end(); // it SIGKILLs its trees and exits
    const t = setTimeout(() => this.child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
    this.untrack?.();
  }
}

/** A tree's processes are all gone (or zombies). */
export function treeGone(tree) {
  return tree.pids.every((pid, i) => {
    const s = statOf(pid);
    return !s || s.startTicks !== tree.starts[i] || s.state === 'Z';
  });
}

export { childrenOf };
