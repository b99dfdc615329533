// The CLI as a child process: built with tsc into a private folder (so a concurrent build of
// dist/ cannot interfere), used by tests that run `node <bin> …` like a user would.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export interface BuiltCli {
  bin: string;
  outDir: string;
  cleanup(): void;
}

/** Build once per test file (call in beforeAll with a long timeout); `need` lists files that must be emitted. */
export function buildCli(need: string[] = []): BuiltCli {
  // <buildRoot>/dist mirrors the repo's dist/ (dist/cli/version.js reads ../../package.json).
  const buildRoot = path.join(repo, 'node_modules', '.cache', `swtest-cli-${process.pid}`);
  const outDir = path.join(buildRoot, 'dist');
  fs.mkdirSync(buildRoot, { recursive: true });
  fs.copyFileSync(path.join(repo, 'package.json'), path.join(buildRoot, 'package.json'));
  // The guard's Python files are found relative to dist/ (../../deploy/stepwise).
  fs.cpSync(path.join(repo, 'deploy', 'stepwise'), path.join(buildRoot, 'deploy', 'stepwise'), { recursive: true });
  try {
    execFileSync(process.execPath, [path.join(repo, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json', '--outDir', outDir], { cwd: repo, stdio: 'pipe' });
  } catch {
    // Type errors are the typecheck step's business; tsc still emits. Checked below.
  }
  for (const f of ['cli/bin.js', ...need]) {
    if (!fs.existsSync(path.join(outDir, f))) throw new Error(`build did not emit ${f}`);
  }
  return { bin: path.join(outDir, 'cli', 'bin.js'), outDir, cleanup: () => fs.rmSync(buildRoot, { recursive: true, force: true }) };
}
