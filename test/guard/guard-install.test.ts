import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli } from '../helpers/cli.js';

let dir: string;
let python: string;
let sitePackages: string;

/** Every file under a folder with its hash: "the environment as it was". */
function snapshot(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out[path.relative(root, p)] = e.isFile() ? createHash('sha256').update(fs.readFileSync(p)).digest('hex') : 'link';
    }
  };
  walk(root);
  return out;
}

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sw-guard-'));
  execFileSync('python3', ['-m', 'venv', '--without-pip', path.join(dir, 'venv')]);
  python = path.join(dir, 'venv', 'bin', 'python');
  sitePackages = execFileSync(python, ['-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'], { encoding: 'utf8' }).trim();
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('guard install / status / uninstall into a real virtualenv', () => {
  it('installs the module and .pth, Python still starts and loads it, uninstall leaves the env as it was', async () => {
    const before = snapshot(path.join(dir, 'venv'));
    const install = await cli(['guard', 'install', '--python', python], { cwd: dir });
    expect(install.code).toBe(0);
    expect(install.stdout).toContain(path.join(sitePackages, 'stepwise_release_guard.py'));
    expect(fs.existsSync(path.join(sitePackages, 'stepwise_release_guard.pth'))).toBe(true);

    // The .pth runs at every start of this Python: it must load and stay quiet without stepwise.
    const probe = execFileSync(python, ['-c', 'import sys; print("stepwise_release_guard" in sys.modules)'], { encoding: 'utf8' });
    expect(probe.trim()).toBe('True');

    const status = await cli(['guard', 'status', '--python', python, '--json'], { cwd: dir });
    expect(status.code).toBe(0);
    expect(JSON.parse(status.stdout)).toMatchObject({ installed: true, module: 'current', pth: 'current', sitePackages, loadedInServer: null });

    const uninstall = await cli(['guard', 'uninstall', '--python', python], { cwd: dir });
    expect(uninstall.code).toBe(0);
    expect(snapshot(path.join(dir, 'venv'))).toEqual(before);
    const after = await cli(['guard', 'status', '--python', python, '--json'], { cwd: dir });
    expect(JSON.parse(after.stdout)).toMatchObject({ installed: false, module: 'absent', pth: 'absent' });
  });

  it('refuses with a clear message when the Python cannot be run', async () => {
    const r = await cli(['guard', 'install', '--python', path.join(dir, 'nope', 'python')], { cwd: dir });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^stepwise-watchdog: .*nope\/python \(from --python\) does not run: ENOENT\n$/);
  });

  it('refuses when it cannot find stepwise\'s Python at all', async () => {
    const r = await cli(['guard', 'status'], { cwd: dir, env: { PATH: '/nonexistent' } });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/cannot find the Python stepwise runs with/);
  });

  it('refuses when site-packages is not writable', async () => {
    if (process.getuid?.() === 0) {
      // root writes anywhere: make the folder a file-system level read-only target instead.
      const ro = path.join(dir, 'ro-venv');
      execFileSync('python3', ['-m', 'venv', '--without-pip', ro]);
      const ropy = path.join(ro, 'bin', 'python');
      const sp = execFileSync(ropy, ['-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'], { encoding: 'utf8' }).trim();
      fs.rmSync(sp, { recursive: true });
      fs.writeFileSync(sp, 'not a folder');
      const r = await cli(['guard', 'install', '--python', ropy], { cwd: dir });
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/^stepwise-watchdog: .* is not a folder\n$/);
      expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
      return;
    }
    const sp = sitePackages;
    fs.chmodSync(sp, 0o555);
    try {
      const r = await cli(['guard', 'install', '--python', python], { cwd: dir });
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/cannot write to/);
    } finally {
      fs.chmodSync(sp, 0o755);
    }
  });
});
