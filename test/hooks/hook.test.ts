import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BACKUP_SUFFIX, HookError, hooksInstalled, installHooks, uninstallHooks } from '../../src/hooks/install.js';

let dir: string;
let hooksDir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sw-hooks-'));
  hooksDir = path.join(dir, '.stepwise', 'hooks');
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

/** Run a hook the way the engine does: stdin, stdout and stderr are pipes, and it waits for them to close. */
function runLikeEngine(file: string, payload: string, env: NodeJS.ProcessEnv = {}) {
  const t0 = performance.now();
  const r = spawnSync(file, [], { input: payload, stdio: ['pipe', 'pipe', 'pipe'], cwd: dir, env: { ...process.env, ...env }, timeout: 30_000 });
  return { status: r.status, ms: performance.now() - t0, stderr: String(r.stderr) };
}

async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

describe('hook install / uninstall', () => {
  it('installs both hooks, executable, and uninstall removes them when there was nothing before', () => {
    const changes = installHooks(hooksDir, { pokeUrl: 'http://127.0.0.1:9/api/poke', force: false });
    expect(changes.map((c) => c.action)).toEqual(['installed', 'installed']);
    for (const h of ['on-fail', 'on-complete']) expect(fs.statSync(path.join(hooksDir, h)).mode & 0o111).not.toBe(0);
    expect(hooksInstalled(hooksDir)).toEqual({ 'on-fail': true, 'on-complete': true });
    expect(uninstallHooks(hooksDir).map((c) => c.action)).toEqual(['removed', 'removed']);
    expect(fs.existsSync(path.join(hooksDir, 'on-fail'))).toBe(false);
  });

  it('chains an existing hook (same stdin, still runs) and uninstall restores it byte for byte', async () => {
    fs.mkdirSync(hooksDir, { recursive: true });
    const original = `#!/bin/sh\ncat > "${dir}/seen-stdin"\necho "$STEPWISE_EVENT" > "${dir}/seen-env"\n`;
    fs.writeFileSync(path.join(hooksDir, 'on-fail'), original, { mode: 0o755 });
    const changes = installHooks(hooksDir, { pokeUrl: `http://127.0.0.1:${await closedPort()}/api/poke`, force: false });
    expect(changes.find((c) => c.hook === 'on-fail')!.action).toBe('chained');
    const r = runLikeEngine(path.join(hooksDir, 'on-fail'), '{"event":"job.failed","job_id":"job-1"}', { STEPWISE_EVENT: 'job.failed' });
    expect(r.status).toBe(0);
    expect(fs.readFileSync(path.join(dir, 'seen-stdin'), 'utf8')).toBe('{"event":"job.failed","job_id":"job-1"}');
    expect(fs.readFileSync(path.join(dir, 'seen-env'), 'utf8').trim()).toBe('job.failed');
    // Installing again keeps the chain (idempotent).
    expect(installHooks(hooksDir, { pokeUrl: 'http://127.0.0.1:9/api/poke', force: false }).find((c) => c.hook === 'on-fail')!.action).toBe('updated');
    expect(fs.readFileSync(path.join(hooksDir, 'on-fail'), 'utf8')).toContain(`on-fail${BACKUP_SUFFIX}`);
    uninstallHooks(hooksDir);
    expect(fs.readFileSync(path.join(hooksDir, 'on-fail'), 'utf8')).toBe(original);
    expect(fs.existsSync(path.join(hooksDir, `on-fail${BACKUP_SUFFIX}`))).toBe(false);
  });

  it('never overwrites without --force: an existing hook plus an earlier backup is refused, nothing changes', () => {
    fs.mkdirSync(hooksDir, { recursive: true });
    fs.writeFileSync(path.join(hooksDir, 'on-complete'), '#!/bin/sh\necho mine\n', { mode: 0o755 });
    fs.writeFileSync(path.join(hooksDir, `on-complete${BACKUP_SUFFIX}`), '#!/bin/sh\necho older\n', { mode: 0o755 });
    expect(() => installHooks(hooksDir, { pokeUrl: 'http://127.0.0.1:9/api/poke', force: false })).toThrow(HookError);
    expect(fs.existsSync(path.join(hooksDir, 'on-fail'))).toBe(false);
    expect(fs.readFileSync(path.join(hooksDir, 'on-complete'), 'utf8')).toBe('#!/bin/sh\necho mine\n');
    // --force replaces (the earlier hook no longer runs) but keeps it for uninstall.
    const changes = installHooks(hooksDir, { pokeUrl: 'http://127.0.0.1:9/api/poke', force: true });
    expect(changes.find((c) => c.hook === 'on-complete')!.action).toBe('replaced');
    uninstallHooks(hooksDir);
    expect(fs.readFileSync(path.join(hooksDir, 'on-complete'), 'utf8')).toBe('#!/bin/sh\necho mine\n');
  });

  it('leaves a hook that is not ours alone on uninstall', () => {
    fs.mkdirSync(hooksDir, { recursive: true });
    fs.writeFileSync(path.join(hooksDir, 'on-fail'), '#!/bin/sh\n', { mode: 0o755 });
    expect(uninstallHooks(hooksDir).find((c) => c.hook === 'on-fail')!.action).toBe('kept');
    expect(fs.existsSync(path.join(hooksDir, 'on-fail'))).toBe(true);
  });
});

describe('the hook on the engine path', () => {
  it('returns at once with the daemon down (connection refused)', async () => {
    installHooks(hooksDir, { pokeUrl: `http://127.0.0.1:${await closedPort()}/api/poke`, force: false });
    const r = runLikeEngine(path.join(hooksDir, 'on-fail'), '{}');
    expect(r.status).toBe(0);
    expect(r.ms).toBeLessThan(900); // generous: the script itself takes milliseconds
  });

  it('returns at once even when the daemon accepts but never answers (the poke is not waited for)', async () => {
    const sockets: net.Socket[] = [];
    const blackhole = net.createServer((s) => sockets.push(s));
    await new Promise<void>((r) => blackhole.listen(0, '127.0.0.1', r));
    try {
      installHooks(hooksDir, { pokeUrl: `http://127.0.0.1:${(blackhole.address() as net.AddressInfo).port}/api/poke`, force: false });
      const r = runLikeEngine(path.join(hooksDir, 'on-complete'), '{}');
      expect(r.status).toBe(0);
      // curl's cap is 1 s: a hook that waited for the poke would take at least that.
      expect(r.ms).toBeLessThan(900);
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => blackhole.close(() => r()));
    }
  });

  it('pokes a live daemon', async () => {
    let pokes = 0;
    const server = http.createServer((req, res) => {
      if (req.method === 'POST' && req.url === '/api/poke') pokes += 1;
      res.writeHead(202).end();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      installHooks(hooksDir, { pokeUrl: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/api/poke`, force: false });
      expect(runLikeEngine(path.join(hooksDir, 'on-fail'), '{}').status).toBe(0);
      const deadline = Date.now() + 5_000;
      while (pokes === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      expect(pokes).toBe(1);
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  });
});
