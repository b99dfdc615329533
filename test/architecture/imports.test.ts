// The shape of src/, checked over its imports: no import circle between files, no import from a
// lower layer up into a higher one, and /proc named only by the Linux process source. The README's
// "Layout" section is the map this test keeps honest.

import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const SRC = resolve(dirname(fileURLToPath(import.meta.url)), '../../src');

/** Layer of each top-level folder of src/: a file may import its own folder or a lower layer only. */
const LAYERS: Record<string, number> = {
  core: 0, // pure rules and types
  sources: 1, // read, never write
  guard: 1, // the Python guard's install facts
  hooks: 1, // the engine hook's install facts
  effects: 2, // signals, unlinks, the audit log
  config: 2, // the one schema (flags, env, file → config; the sources' defaults)
  demo: 2, // the demo scenario and its kit (fake adapters, a store writer)
  metrics: 3, // publish: built at scrape time
  session: 3, // sources → inventory → plan, one project
  http: 4, // publish: the API (serves the metrics)
  daemon: 5, // the loop
  cli: 6, // the commands; main is the only place that exits
};

/** The files allowed to name /proc: the Linux implementation of the process port. */
const PROC_FILES = new Set(['sources/processes.ts', 'sources/proc-stat.ts']);

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(p);
    return e.name.endsWith('.ts') ? [p] : [];
  });
}

/** Relative imports (static, `export … from` and dynamic), as src-relative .ts paths. */
function importsOf(file: string, text: string): string[] {
  const out: string[] = [];
  const re = /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)['"](\.{1,2}\/[^'"]+)['"]/g;
  for (const m of text.matchAll(re)) {
    const target = resolve(dirname(file), m[1]!).replace(/\.js$/, '.ts');
    out.push(relative(SRC, target));
  }
  return out;
}

/** Text without comments (line and block), so that a comment naming /proc or an import is not counted. */
function code(text: string): string {
  return text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"`\\])\/\/.*$/gm, '$1');
}

const files = sourceFiles(SRC).map((abs) => {
  const text = code(readFileSync(abs, 'utf8'));
  return { path: relative(SRC, abs), text, imports: importsOf(abs, text) };
});
const layerOf = (path: string): number | undefined => LAYERS[path.split('/')[0]!];

describe('the shape of src/', () => {
  it('reads every file, and each top-level folder has a layer', () => {
    expect(files.length).toBeGreaterThan(40);
    const folders = new Set(files.map((f) => f.path.split('/')[0]!).filter((f) => !f.endsWith('.ts')));
    expect([...folders].filter((f) => LAYERS[f] === undefined)).toEqual([]);
  });

  it('every relative import names a file that exists', () => {
    const known = new Set(files.map((f) => f.path));
    const missing = files.flatMap((f) => f.imports.filter((i) => !known.has(i)).map((i) => `${f.path} → ${i}`));
    expect(missing).toEqual([]);
  });

  it('no import runs from a lower layer up into a higher one (core ← sources ← effects ← session/daemon/publish ← cli)', () => {
    const upward = files.flatMap((f) => {
      const from = layerOf(f.path);
      return f.imports
        .filter((i) => {
          const to = layerOf(i);
          return from !== undefined && to !== undefined && i.split('/')[0] !== f.path.split('/')[0] && to >= from;
        })
        .map((i) => `${f.path} (layer ${from}) → ${i} (layer ${layerOf(i)})`);
    });
    expect(upward).toEqual([]);
  });

  it('the import graph has no circle', () => {
    const graph = new Map(files.map((f) => [f.path, f.imports]));
    const state = new Map<string, 'open' | 'done'>();
    const circles: string[] = [];
    const visit = (node: string, trail: string[]): void => {
      if (state.get(node) === 'done') return;
      if (state.get(node) === 'open') {
        circles.push([...trail.slice(trail.indexOf(node)), node].join(' → '));
        return;
      }
      state.set(node, 'open');
      for (const next of graph.get(node) ?? []) visit(next, [...trail, node]);
      state.set(node, 'done');
    };
    for (const f of files) visit(f.path, []);
    expect(circles).toEqual([]);
  });

  it('/proc is named only by the Linux process source', () => {
    const naming = files.filter((f) => !PROC_FILES.has(f.path) && /['"`]\/proc(\/|['"`])/.test(f.text)).map((f) => f.path);
    expect(naming).toEqual([]);
  });

  it('the checks can fail: a planted upward import and a planted circle are found', () => {
    const planted = importsOf(join(SRC, 'core', 'x.ts'), "import { a } from '../cli/main.js';\nexport * from './y.js';");
    expect(planted).toEqual(['cli/main.ts', 'core/y.ts']);
    expect(layerOf(planted[0]!)! >= layerOf('core/x.ts')!).toBe(true);
    expect(/['"`]\/proc(\/|['"`])/.test(code("const p = `/proc/${pid}/stat`;"))).toBe(true);
    expect(/['"`]\/proc(\/|['"`])/.test(code('// reads /proc/<pid>/stat'))).toBe(false);
  });
});

describe('macOS', () => {
  it('the in-process guard (Python) has no Linux-only path: it never reads /proc', () => {
    const guard = readFileSync(join(SRC, '..', 'deploy', 'stepwise', 'stepwise_release_guard.py'), 'utf8');
    expect(guard.length).toBeGreaterThan(1000);
    expect(guard).not.toMatch(/\/proc\b/);
  });

  it('the launchd user agent is a valid plist that runs the sidecar through ps at login', () => {
    const file = join(SRC, '..', 'deploy', 'launchd', 'dev.stepwise.watchdog.plist');
    const out = execFileSync('python3', ['-c', 'import json,plistlib,sys; print(json.dumps(plistlib.load(open(sys.argv[1], "rb"))))', file], { encoding: 'utf8' });
    const plist = JSON.parse(out) as { Label: string; ProgramArguments: string[]; RunAtLoad: boolean; KeepAlive: { SuccessfulExit: boolean } };
    expect(plist.Label).toBe('dev.stepwise.watchdog');
    expect(plist.ProgramArguments.slice(2, 3)).toEqual(['run']);
    expect(plist.ProgramArguments.join(' ')).toContain('--process-source ps');
    expect(plist.RunAtLoad).toBe(true);
    expect(plist.KeepAlive.SuccessfulExit).toBe(false);
  });
});
