// Prompt cycles: watch each project's pids folder and store files (chokidar) and poke the
// watchdog on any change. The pids folder follows the live server's cwd, so the watched set is
// recomputed after every cycle (paths no longer needed are unwatched: bounded).

import path from 'node:path';
import { watch, type FSWatcher } from 'chokidar';
import type { Logger } from 'pino';
import type { ProjectInventory } from '../core/types.js';

export class ChangeWatcher {
  private watcher: FSWatcher | null = null;
  private watched = new Set<string>();

  constructor(
    private readonly onChange: (reason: string) => void,
    private readonly logger: Logger,
  ) {}

  /** The paths that matter for these inventories: the pids folder, the store and its -wal. */
  static pathsFor(inventories: ProjectInventory[]): string[] {
    const out = new Set<string>();
    for (const inv of inventories) {
      out.add(inv.pidsDir);
      out.add(inv.dbPath);
      out.add(`${inv.dbPath}-wal`);
    }
    return [...out].sort();
  }

  update(paths: string[]): void {
    const wanted = new Set(paths);
    if (!this.watcher) {
      this.watcher = watch([...wanted], { ignoreInitial: true, persistent: true, depth: 1, followSymlinks: false });
      this.watcher.on('all', (event, file) => this.onChange(`${event} ${path.basename(file)}`));
      // A change made while the watcher was still scanning (ignoreInitial) is not reported: one
      // more cycle once it is ready catches it, instead of leaving it to the interval.
      this.watcher.once('ready', () => this.onChange('watch ready'));
      this.watcher.on('error', (err) => this.logger.warn({ err }, 'file watch error (cycles still run on the interval)'));
      this.watched = wanted;
      return;
    }
    const add = [...wanted].filter((p) => !this.watched.has(p));
    const remove = [...this.watched].filter((p) => !wanted.has(p));
    if (add.length) this.watcher.add(add);
    if (remove.length) this.watcher.unwatch(remove);
    this.watched = wanted;
  }

  async close(): Promise<void> {
    await this.watcher?.close();
    this.watcher = null;
    this.watched.clear();
  }
}
