// argv reused across table reads by a long-lived reader (the daemon): pure bookkeeping, no OS access.

/**
 * argv by process, reused while (pid, start ticks, comm) is unchanged. exec keeps the pid and
 * the start time but sets a new comm (the new program's name), and so does a title change
 * (node's process.title, setproctitle): those are read again. An exec into a program with
 * the same 15-byte name and a new argv would be missed, so this is opt-in. Empty argvs
 * (exiting processes) are never cached; entries of processes not seen in a pass are dropped.
 */
export class ArgvCache {
  private entries = new Map<number, { startTicks: number; comm: string; argv: string[]; pass: number }>();
  private pass = 0;
  hits = 0;
  misses = 0;

  get size(): number {
    return this.entries.size;
  }

  /** @internal */ beginPass(): void {
    this.pass++;
  }

  /** @internal */ get(pid: number, startTicks: number, comm: string): string[] | undefined {
    const e = this.entries.get(pid);
    if (e && e.startTicks === startTicks && e.comm === comm) {
      e.pass = this.pass;
      this.hits++;
      return e.argv;
    }
    this.misses++;
    return undefined;
  }

  /** @internal */ set(pid: number, startTicks: number, comm: string, argv: string[]): void {
    if (argv.length === 0) this.entries.delete(pid);
    else this.entries.set(pid, { startTicks, comm, argv, pass: this.pass });
  }

  /** @internal */ endPass(): void {
    for (const [pid, e] of this.entries) if (e.pass !== this.pass) this.entries.delete(pid);
  }
}

