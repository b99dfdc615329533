import path from 'node:path';
import { HookError, installHooks, uninstallHooks } from '../../hooks/install.js';
import { configFrom, projectRoots } from '../context.js';
import { EXIT, UserError, type CliIO } from '../io.js';

/** `hook install|uninstall`: args[0] is the subcommand. */
export default async function hook(opts: Record<string, unknown>, io: CliIO, args: string[]): Promise<number> {
  const config = configFrom(opts, io);
  const roots = projectRoots(config, io);
  const pokeUrl = `http://${config.listen.replace(/^0\.0\.0\.0:/, '127.0.0.1:')}/api/poke`;
  for (const root of roots) {
    const hooksDir = path.join(root, '.stepwise', 'hooks');
    try {
      const changes = args[0] === 'install' ? installHooks(hooksDir, { pokeUrl, force: opts.force === true }) : uninstallHooks(hooksDir);
      for (const c of changes) io.stdout(`${c.action.padEnd(9)} ${c.path}  (${c.detail})\n`);
    } catch (err) {
      if (err instanceof HookError) throw new UserError(err.message, EXIT.refused);
      throw err;
    }
  }
  if (args[0] === 'install') io.stdout(`the hooks poke ${pokeUrl}; they return at once even when the daemon is down\n`);
  return EXIT.ok;
}
