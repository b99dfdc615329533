// The floor: a plain read of /proc/<pid>/stat for every pid, from Node (readFileSync loop) and
// from C (compiled at bench time), in the same run as the cycles.

import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CACHE_DIR } from './stores.mjs';

const SOURCE = fileURLToPath(new URL('../floor.c', import.meta.url));

/** Node: readdir + readFileSync of every stat. Returns ms. */
export function nodeFloorPass() {
  const t0 = performance.now();
  let n = 0;
  for (const name of fs.readdirSync('/proc')) {
    const c = name.charCodeAt(0);
    if (c < 48 || c > 57) continue;
    try {
      fs.readFileSync(`/proc/${name}/stat`, 'latin1');
      n++;
    } catch {}
  }
  return { ms: performance.now() - t0, pids: n };
}

/** The C floor binary, or null (with the reason) when it cannot be built. */
export function buildCFloor() {
  const bin = path.join(CACHE_DIR, 'floor');
  fs.mkdirSync(CACHE_DIR, { recursive: true });
  try {
    const fresh = fs.existsSync(bin) && fs.statSync(bin).mtimeMs >= fs.statSync(SOURCE).mtimeMs;
    if (!fresh) execFileSync('cc', ['-O2', '-o', bin, SOURCE], { stdio: ['ignore', 'ignore', 'pipe'] });
    return { bin, error: null };
  } catch (err) {
    return { bin: null, error: `cc failed: ${String(err.stderr ?? err.message).trim().slice(0, 200)}` };
  }
}

/** C: `passes` passes in one process (per-pass ms), and the wall time of the whole process. */
export function cFloor(bin, passes) {
  const t0 = performance.now();
  const r = spawnSync(bin, [String(passes)], { encoding: 'utf8' });
  const wallMs = performance.now() - t0;
  if (r.status !== 0) throw new Error(`floor exited ${r.status}: ${r.stderr}`);
  const out = JSON.parse(r.stdout);
  return { passMs: out.passMs, pids: out.pids, wallMs };
}
