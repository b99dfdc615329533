import { renderStatus, statusDocument } from '../../core/report.js';
import type { ProjectInventory } from '../../core/types.js';
import { runtimeFromConfig } from '../../session/runtime.js';
import { configFrom, openSessions } from '../context.js';
import { EXIT, type CliIO } from '../io.js';

/** `status`: read-only. Exit 0 when every source was read, 3 with a one-line reason otherwise. */
export default async function status(opts: Record<string, unknown>, io: CliIO): Promise<number> {
  const config = configFrom(opts, io);
  const sessions = openSessions(config, runtimeFromConfig(config), io);
  const inventories: ProjectInventory[] = [];
  try {
    for (const s of sessions) inventories.push(s.collect());
  } finally {
    for (const s of sessions) s.close();
  }
  const all = opts.all === true;
  if (opts.json) io.stdout(`${JSON.stringify(statusDocument(inventories, { all }), null, 2)}\n`);
  else io.stdout(renderStatus(inventories, { all }));
  const failures = inventories.flatMap((inv) =>
    Object.entries(inv.sources)
      .filter(([, h]) => !h.ok)
      .map(([name, h]) => `${inv.root}: ${h.error ?? `${name} failed`}`),
  );
  if (failures.length > 0) {
    io.stderr(`stepwise-watchdog: ${failures[0]}${failures.length > 1 ? ` (and ${failures.length - 1} more)` : ''}\n`);
    return EXIT.sourceDown;
  }
  return EXIT.ok;
}
