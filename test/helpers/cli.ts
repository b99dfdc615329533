// Run the CLI in-process with an injected CliIO (the bin is exercised by tests that spawn it).
import { runCli } from '../../src/cli/main.js';

export async function cli(argv: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; signal?: AbortSignal } = {}) {
  let stdout = '';
  let stderr = '';
  const code = await runCli(argv, {
    stdout: (t) => void (stdout += t),
    stderr: (t) => void (stderr += t),
    env: opts.env ?? { PATH: process.env.PATH },
    cwd: opts.cwd ?? process.cwd(),
    stopSignal: opts.signal ?? new AbortController().signal,
  });
  return { code, stdout, stderr };
}
