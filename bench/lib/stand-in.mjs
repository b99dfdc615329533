// The bench's stand-in for a stepwise server (run as its own process, cwd = the project root):
// its children are cheap fake adapter trees shaped like the engine's
//   level 0  /bin/sh -c … "npm exec @agentclientprotocol/claude-agent-acp" …   (setsid: leads its session and group)
//   level 1  sh -c … "node …/@agentclientprotocol/claude-agent-acp/dist/index.js"
//   level 2  sleep N                                                          (like the `claude` CLI: no marker)
// Three tiny processes (~1.7 MB RSS each) instead of three node processes (~40 MB each): the
// scan cost is per process, RSS is not the point. Kind "trap" makes level 0 a bash that writes
// $EPOCHREALTIME to a file when SIGTERM arrives (detection latency).
//
// Protocol: one JSON request a line on stdin, one JSON reply a line on stdout.
//   {"id", "op":"spawn", "n", "kind":"plain"|"trap", "lifetime", "sigtermDir"?}
//     → {"id", "trees":[{"pids":[top,l1,l2], "starts":[ticks…]}]}
//   {"id", "op":"ping"} → {"id"}
// When stdin closes (the bench ended, however it ended: even SIGKILL closes the pipe) or on
// SIGTERM it SIGKILLs every tree it started that is still the same process, and exits.

import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { join } from 'node:path';

process.title = 'stepwise-bench-server';

const MARKER_TOP = 'npm exec @agentclientprotocol/claude-agent-acp';
const MARKER_L1 = 'node /usr/lib/node_modules/@agentclientprotocol/claude-agent-acp/dist/index.js';
const PLAIN = 'sh -c "sleep $1 </dev/null & wait" "$2" & wait';
// bash: a trapped signal interrupts `wait` at once; $EPOCHREALTIME costs no fork.
const TRAP = `trap 'echo "$EPOCHREALTIME" > "$3.tmp"; mv "$3.tmp" "$3"; exit 0' TERM; ${PLAIN}`;

const trees = new Map(); // top pid → start ticks
let seq = 0;

function stat(pid) {
  try {
    const t = readFileSync(`/proc/${pid}/stat`, 'latin1');
    const f = t.slice(t.lastIndexOf(')') + 2).split(' ');
    return { state: f[0], pgid: Number(f[2]), start: Number(f[19]) };
  } catch {
    return null;
  }
}

function children(pid) {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'latin1').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

function spawnTree(kind, lifetime, sigtermDir) {
  const args =
    kind === 'trap'
      ? ['/bin/bash', ['-c', TRAP, MARKER_TOP, String(lifetime), MARKER_L1, join(sigtermDir, `t${process.pid}-${++seq}`)]]
      : ['/bin/sh', ['-c', PLAIN, MARKER_TOP, String(lifetime), MARKER_L1]];
  const child = spawn(args[0], args[1], { detached: true, stdio: 'ignore' });
  child.on('error', () => {});
  const file = kind === 'trap' ? args[1][5] : null;
  return { child, file };
}

async function spawnMany(n, kind, lifetime, sigtermDir) {
  const pending = [];
  for (let i = 0; i < n; i++) pending.push(spawnTree(kind, lifetime, sigtermDir));
  const out = new Array(n).fill(null);
  const deadline = Date.now() + 30_000;
  for (;;) {
    let left = 0;
    for (let i = 0; i < n; i++) {
      if (out[i]) continue;
      const top = pending[i].child.pid;
      const l1 = top ? children(top)[0] : undefined;
      const l2 = l1 ? children(l1)[0] : undefined;
      // level 2 must have exec'd sleep (its argv no longer the shell's)
      let ok = false;
      if (l2) {
        try {
          ok = readFileSync(`/proc/${l2}/cmdline`, 'latin1').startsWith('sleep');
        } catch {}
      }
      if (!ok) {
        left++;
        continue;
      }
      const pids = [top, l1, l2];
      const st = pids.map(stat);
      if (st.some((s) => !s)) {
        left++;
        continue;
      }
      trees.set(top, st[0].start);
      out[i] = { pids, starts: st.map((s) => s.start), sigtermFile: pending[i].file };
    }
    if (left === 0) return out;
    if (Date.now() > deadline) throw new Error(`${left} of ${n} trees not up after 30 s`);
    await new Promise((r) => setTimeout(r, 3));
  }
}

function killAll() {
  for (const [top, start] of trees) {
    const s = stat(top);
    if (s && s.start === start && s.pgid === top) {
      try {
        process.kill(-top, 'SIGKILL');
      } catch {}
    }
  }
  trees.clear();
}

// Forget trees that are gone (a soak starts tens of thousands).
setInterval(() => {
  for (const [top, start] of trees) {
    const s = stat(top);
    if (!s || s.start !== start || s.state === 'Z') trees.delete(top);
  }
}, 5000).unref();

const rl = createInterface({ input: process.stdin });
rl.on('line', async (line) => {
  let req;
  try {
    req = JSON.parse(line);
  } catch {
    return;
  }
  try {
    if (req.op === 'spawn') {
      const list = await spawnMany(req.n, req.kind ?? 'plain', req.lifetime ?? 3600, req.sigtermDir ?? '/tmp');
      process.stdout.write(`${JSON.stringify({ id: req.id, trees: list })}\n`);
    } else {
      process.stdout.write(`${JSON.stringify({ id: req.id })}\n`);
    }
  } catch (err) {
    process.stdout.write(`${JSON.stringify({ id: req.id, error: String(err?.message ?? err) })}\n`);
  }
});
const stop = () => {
  killAll();
  process.exit(0);
};
rl.on('close', stop);
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
