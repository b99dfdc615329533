// The demo's stand-in for a stepwise server: a long-lived process whose children are fake
// adapter trees (like the engine's ACP adapters, spawned with start_new_session). It takes one
// JSON request a line on stdin ({"name","holdMb"}) and answers one JSON line ({"name","pids"}).
// When stdin closes (the demo ended, however it ended) it stops every tree and exits.

import { createInterface } from 'node:readline';
import { spawnFakeTree, type FakeTree } from '../sources/fake-adapter.js';

process.title = 'stepwise-demo-server';
const trees: FakeTree[] = [];
let stopping = false;

async function stopAll(code: number): Promise<never> {
  if (!stopping) {
    stopping = true;
    await Promise.allSettled(trees.map((t) => t.stop()));
  }
  process.exit(code);
}

const rl = createInterface({ input: process.stdin });
rl.on('line', (line) => {
  void (async () => {
    let req: { name?: unknown; holdMb?: unknown };
    try {
      req = JSON.parse(line) as typeof req;
    } catch {
      process.stdout.write(`${JSON.stringify({ error: 'bad request' })}\n`);
      return;
    }
    try {
      const tree = await spawnFakeTree({ parent: 'self', holdMb: typeof req.holdMb === 'number' ? req.holdMb : 16, maxLifetimeMs: 15 * 60_000 });
      trees.push(tree);
      process.stdout.write(`${JSON.stringify({ name: req.name, pids: tree.pids })}\n`);
    } catch (err) {
      process.stdout.write(`${JSON.stringify({ name: req.name, error: (err as Error).message })}\n`);
    }
  })();
});
rl.on('close', () => void stopAll(0));
process.on('SIGTERM', () => void stopAll(0));
process.on('SIGINT', () => void stopAll(0));
// A safety net: never outlive a forgotten demo by more than 15 minutes.
setTimeout(() => void stopAll(0), 15 * 60_000).unref();
