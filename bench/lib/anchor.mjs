// The anchor: Debian's prometheus-process-exporter grouping the same processes (adapter-like by
// cmdline, everything else by comm), scraped over loopback; the scrape time is its whole cycle
// (it reads /proc when scraped).

import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { track, waitFor } from './util.mjs';

export const EXPORTER = '/usr/bin/prometheus-process-exporter';

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export function exporterVersion() {
  try {
    return execFileSync(EXPORTER, ['-version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).split('\n')[0].trim();
  } catch (err) {
    return String(err.stdout ?? '').split('\n')[0].trim() || null;
  }
}

export class ProcessExporter {
  static available() {
    return fs.existsSync(EXPORTER);
  }

  static async start(dir, markers) {
    const port = await freePort();
    const config = path.join(dir, 'process-exporter.yml');
    const re = markers.map((m) => m.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|');
    fs.writeFileSync(
      config,
      [
        'process_names:',
        '  - name: "adapter"',
        `    cmdline: ['${re}']`,
        '  - name: "{{.Comm}}"',
        "    cmdline: ['.*']",
        '',
      ].join('\n'),
    );
    const args = ['-config.path', config, '-web.listen-address', `127.0.0.1:${port}`, '-threads=false', '-gather-smaps=true'];
    const child = spawn('setpriv', ['--pdeathsig', 'KILL', EXPORTER, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c) => (stderr += c));
    const untrack = track(child.pid, { label: 'process-exporter' });
    const url = `http://127.0.0.1:${port}/metrics`;
    const up = await waitFor(async () => {
      try {
        return (await fetch(url)).ok;
      } catch {
        return false;
      }
    }, 10_000, 50);
    if (!up) {
      child.kill('SIGKILL');
      throw new Error(`process-exporter did not come up: ${stderr.slice(-300)}`);
    }
    return new ProcessExporter(child, url, untrack, args);
  }

  constructor(child, url, untrack, args) {
    this.child = child;
    this.url = url;
    this.untrack = untrack;
    this.args = args;
  }

  /** One scrape: ms, and how many processes it grouped. */
  async scrape() {
    const t0 = performance.now();
    const res = await fetch(this.url);
    const text = await res.text();
    const ms = performance.now() - t0;
    let procs = 0;
    for (const m of text.matchAll(/^namedprocess_namegroup_num_procs\{[^}]*\} (\d+)/gm)) procs += Number(m[1]);
    return { ms, procs, bytes: text.length };
  }

  async stop() {
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(t);
    this.untrack();
  }
}
