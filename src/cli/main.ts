// The CLI. `main()` is the only place in the code base that exits the process; every command
// returns an exit code. Errors meant for the user are one line, never a stack trace.

import { Command, CommanderError, Option } from 'commander';
import { ConfigError, optionText } from '../config/schema.js';
import { ProjectError } from '../sources/project.js';
import { EXIT, UserError, type CliIO } from './io.js';
import { VERSION } from './version.js';

export type CommandRunner = (opts: Record<string, unknown>, io: CliIO, args: string[]) => Promise<number>;

const collect = (value: string, previous: string[] = []) => [...previous, value];
const collectInt = (name: string) => (value: string, previous: number[] = []) => {
  if (!/^\d+$/.test(value) || Number(value) < 1 || !Number.isSafeInteger(Number(value))) {
    throw new UserError(`${name} ${JSON.stringify(value)}: must be a positive integer`);
  }
  return [...previous, Number(value)];
};

/**
 * Only the options the user gave: commander fills defaults (e.g. `--no-gc` implies gc=true),
 * which must not override env vars or the config file.
 */
function givenOptions(cmd: Command): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(cmd.opts())) {
    if (cmd.getOptionValueSource(key) !== 'default') out[key] = value;
  }
  return out;
}

/** Options every project-reading command shares. */
function projectOptions(cmd: Command): Command {
  return cmd
    .option(...optionText('project'), collect)
    .option(...optionText('db'))
    .option(...optionText('pidsDir'))
    .option('--config <file>', 'JSON config file (same keys as the flags, camelCase)')
    .option(...optionText('markers'), collect)
    .option(...optionText('processSource'))
    .option(...optionText('spawnGrace'))
    .option(...optionText('terminalGrace'))
    .addOption(new Option('--proc-root <dir>', 'the /proc to read (for tests)').hideHelp());
}

export function buildProgram(io: CliIO, setCode: (code: number) => void): Command {
  const program = new Command('stepwise-watchdog')
    .description('Finds, reports and safely reaps leaked ACP adapter process trees of a stepwise server')
    .version(VERSION, '-V, --version')
    .option('--manifest', 'print the stepwise extension manifest (JSON) and exit')
    .showHelpAfterError(false)
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.stdout(s), writeErr: (s) => io.stderr(s), outputError: () => {} });

  const lazy = (load: () => Promise<{ default: CommandRunner }>) =>
    async function (this: Command, ...rest: unknown[]) {
      const cmd = rest[rest.length - 1] as Command;
      // args[0] is the (sub)command's name ("install" of `hook install`), then positionals.
      const args = [cmd.name(), ...rest.slice(0, -2).filter((a): a is string => typeof a === 'string')];
      const { default: run } = await load();
      setCode(await run({ ...givenOptions(program), ...givenOptions(cmd) }, io, args));
    };

  projectOptions(program.command('status'))
    .description('list every adapter tree, the jobs that own it and its verdict (read-only)')
    .option('--json', 'print the JSON document instead of the table')
    .option('--all', 'also list foreign adapter-like trees (an editor’s own adapters)')
    .action(lazy(() => import('./commands/status.js')));

  projectOptions(program.command('demo'))
    .description('build a throw-away stepwise-shaped project with fake adapter trees, show status, reap, clean up')
    .option('--keep', 'leave the demo project folder in place (processes are always stopped)')
    .option('--hold-mb <n>', 'memory each fake adapter process holds (MiB)', '24')
    .option('--no-top-killed', 'leave out the two trees whose top died (a paused job’s, kept; a failed job’s without pid file, leaked)')
    .action(lazy(() => import('./commands/demo.js')));

  projectOptions(program.command('reap'))
    .description('plan (and with --yes, carry out) the reaping of leaked and orphaned adapter trees')
    .option('--all-leaked', 'every leaked tree past the terminal grace')
    .option('--orphans', 'every orphaned tree past the spawn grace')
    .option('--sessions', "every leaked session's CLI inside an adapter other jobs keep alive (never the adapter, never by group)")
    .option('--job <id>', 'the trees this job references (refused while the job is not terminal)', collect)
    .option('--pid <pid>', 'the tree with this top pid (refused unless its verdict is reapable)', collectInt('--pid'))
    .option('--force', 'override the "job not terminal" and "not reapable" refusals (never for foreign trees, the server, pid 1, itself)')
    .option('--yes', 'carry out the plan (without it nothing changes)')
    .option('--json', 'print the plan and the outcome as JSON')
    .option(...optionText('killWait'))
    .option(...optionText('auditLog'))
    .option(...optionText('allowOtherUids'))
    .action(lazy(() => import('./commands/reap.js')));

  projectOptions(program.command('gc'))
    .description('plan (and with --yes, carry out) the removal of stale pid files')
    .option('--yes', 'remove them (without it nothing changes)')
    .option('--json', 'print the plan and the outcome as JSON')
    .option(...optionText('auditLog'))
    .action(lazy(() => import('./commands/gc.js')));

  projectOptions(program.command('run'))
    .description('the sidecar: continuous reaping, Prometheus metrics and an HTTP API')
    .option(...optionText('interval'))
    .option(...optionText('listen'))
    .option(...optionText('observeOnly'))
    .option(...optionText('orphans'))
    .option(...optionText('reapSessions'))
    .option(...optionText('gc'))
    .option(...optionText('tokenFile'))
    .option(...optionText('auditLog'))
    .option(...optionText('logLevel'))
    .option(...optionText('watchProcess'), collect)
    .option(...optionText('killWait'))
    .option(...optionText('growthWindow'))
    .option(...optionText('fullSweepSeconds'))
    .option(...optionText('allowOtherUids'))
    .action(lazy(() => import('./commands/run.js')));

  const hook = program.command('hook').description('stepwise hooks that poke the daemon when a job ends');
  for (const sub of ['install', 'uninstall'] as const) {
    projectOptions(hook.command(sub))
      .description(sub === 'install' ? 'write .stepwise/hooks/on-fail and on-complete (an existing hook is chained, never overwritten without --force)' : 'restore the hooks that were there before')
      .option('--force', 'overwrite an existing hook instead of chaining it')
      .option(...optionText('listen', 'the daemon address the hook pokes'))
      .action(lazy(() => import(`./commands/hook.js`)));
  }

  const guard = program.command('guard').description('the in-process release guard for the stepwise engine');
  for (const sub of ['install', 'uninstall', 'status'] as const) {
    projectOptions(guard.command(sub))
      .description(
        sub === 'install'
          ? "drop the guard module and its .pth into the site-packages of stepwise's Python"
          : sub === 'uninstall'
            ? 'remove the guard module and .pth'
            : 'is the guard installed, and loaded in the running server?',
      )
      .option('--python <path>', "the Python interpreter stepwise runs with (default: the `stepwise` launcher's, or the live server's)")
      .option('--json', 'print JSON')
      .action(lazy(() => import('./commands/guard.js')));
  }

  projectOptions(program.command('doctor'))
    .description('one screen to run first: server, store, pids folder, guard, hook, markers, what the daemon would do')
    .option(...optionText('listen', 'where to look for a running daemon'))
    .option('--python <path>', "the Python interpreter stepwise runs with (for the guard check)")
    .option('--json', 'print JSON')
    .action(lazy(() => import('./commands/doctor.js')));

  return program;
}

export async function runCli(argv: string[], io: CliIO): Promise<number> {
  let code: number = EXIT.ok;
  const program = buildProgram(io, (c) => (code = c));
  if (argv.includes('--manifest')) {
    const { manifest } = await import('./manifest.js');
    io.stdout(`${JSON.stringify(manifest())}\n`);
    return EXIT.ok;
  }
  try {
    await program.parseAsync(argv, { from: 'user' });
    return code;
  } catch (err) {
    return reportError(err, io);
  }
}

export function reportError(err: unknown, io: CliIO): number {
  if (err instanceof CommanderError) {
    if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return EXIT.ok;
    io.stderr(`stepwise-watchdog: ${err.message.replace(/^error: /, '')}\n`);
    return EXIT.usage;
  }
  if (err instanceof UserError) {
    io.stderr(`stepwise-watchdog: ${err.message}\n`);
    return err.exitCode;
  }
  if (err instanceof ConfigError || err instanceof ProjectError) {
    io.stderr(`stepwise-watchdog: ${err.message}\n`);
    return EXIT.usage;
  }
  const e = err as Error;
  io.stderr(`stepwise-watchdog: internal error: ${e?.message ?? String(err)} (set STEPWISE_WATCHDOG_DEBUG=1 for details)\n`);
  if (io.env.STEPWISE_WATCHDOG_DEBUG) io.stderr(`${e?.stack ?? ''}\n`);
  return EXIT.internal;
}

/** The process entry point: the only place that exits. */
export async function main(): Promise<void> {
  const controller = new AbortController();
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    signals += 1;
    if (signals > 1) {
      // A second Ctrl-C: the user insists. Exit now; commands clean up what they can on the first.
      process.stderr.write(`stepwise-watchdog: ${sig} again, exiting\n`);
      process.exit(130);
    }
    controller.abort(sig);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const io: CliIO = {
    stdout: (t) => process.stdout.write(t),
    stderr: (t) => process.stderr.write(t),
    env: process.env,
    cwd: process.cwd(),
    stopSignal: controller.signal,
  };
  let code: number;
  try {
    code = await runCli(process.argv.slice(2), io);
  } catch (err) {
    code = reportError(err, io);
  }
  // Let stdout drain (a pipe may be slow) before exiting.
  process.stdout.write('', () => process.exit(code));
}
