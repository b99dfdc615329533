// The demo's stand-in for a stepwise server: a long-lived process whose children are fake
// adapter trees (like the engine's ACP adapters, spawned with start_new_session). It takes one
// JSON request a line on stdin ({"name","holdMb","sessions":[uuid…],"killTop":bool}): it spawns
// a tree, opens the sessions (one claude CLI each, like session/new), then, with killTop, kills
// the tree's top alone (npm and sh die, the adapter and its CLIs live on, like a top that died
// under the engine). It answers one JSON line
// ({"name","topPid","pids":[live pids],"levelPids","sessions":[{"sessionId","pid"}]}).
// When stdin closes (the demo ended, however it ended) it stops every tree and exits.

import { createInterface } from 'node:readline';
import { spawnFakeTree, type FakeTree } from './kit/fake-adapter.js';

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
    let req: { name?: unknown; holdMb?: unknown; sessions?: unknown; killTop?: unknown };
    try {
      req = JSON.parse(line) as typeof req;
    } catch {
      process.stdout.write(`${JSON.stringify({ error: 'bad request' })}\n`);
      return;
    }
    try {
      const sessions = Array.isArray(req.sessions) ? req.sessions.filter((s): s is string => typeof s === 'string') : [];
      const tree = await spawnFakeTree({ parent: 'self', holdMb: typeof req.holdMb === 'number' ? req.holdMb : 16, maxLifetimeMs: 15 * 60_000, sessions });
      trees.push(tree);
      if (req.killTop === true) await tree.killTop();
      process.stdout.write(
        `${JSON.stringify({
          name: req.name,
          topPid: tree.topPid,
          pids: tree.pids,
          levelPids: tree.levelPids,
          sessions: tree.sessions.map((s) => ({ sessionId: s.sessionId, pid: s.pid })),
        })}\n`,
      );
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
