import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { ProjectInventory } from '../../src/core/types.js';
import { BODY_LIMIT_BYTES, buildServer, type ApiReapRequest, type AppDeps, type WatchdogHttp } from '../../src/http/app.js';
import { request, type HttpRequest } from '../helpers/http.js';
import { WatchdogMetrics } from '../../src/metrics/registry.js';
import { fixtureInventory } from '../helpers/leak-fixture.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const GOLDEN = path.join(here, '../fixtures/metrics.golden.prom');
const TOKEN = 'a-long-enough-test-token-0123456789';

let inv: ProjectInventory;
beforeAll(() => {
  inv = fixtureInventory(120);
});

function metricsFor(inventories: ProjectInventory[]) {
  return new WatchdogMetrics(
    {
      inventories: () => inventories,
      processMemory: () => [
        { project: '/tmp/stepwise-project', process: 'stepwise-server', up: true, rssBytes: 200 * 1048576, swapBytes: 0, growthBytesPerHour: 12 * 1048576 },
        { project: '', process: 'gateway', up: true, rssBytes: 50 * 1048576, swapBytes: 1048576, growthBytesPerHour: 0 },
      ],
    },
    { defaultMetrics: false, projects: ['/tmp/stepwise-project'] },
  );
}

let app: WatchdogHttp | null = null;
const inject = (req: HttpRequest) => request(app!, req);
afterEach(async () => {
  await app?.close();
  app = null;
});

async function makeApp(over: Partial<AppDeps> = {}) {
  const calls = { pokes: 0, reaps: [] as ApiReapRequest[] };
  app = buildServer({
    metrics: metricsFor([inv]),
    inventories: () => [inv],
    cycleStatus: () => ({ ok: true, at: inv.now, problems: [] }),
    poke: () => void calls.pokes++,
    reap: async (req) => {
      calls.reaps.push(req);
      return { status: 200, body: { dryRun: req.dryRun, actions: [] } };
    },
    token: TOKEN,
    readyMaxAgeSeconds: 60,
    now: () => inv.now + 1,
    ...over,
  });
  return calls;
}

describe('/metrics', () => {
  it('matches the golden file for the fixture inventory', async () => {
    const text = await metricsFor([inv]).metrics();
    if (process.env.UPDATE_GOLDEN === '1') fs.writeFileSync(GOLDEN, text);
    expect(text).toBe(fs.readFileSync(GOLDEN, 'utf8'));
  });

  it('exports the process table\'s unreadable pids per source (unknown, never dead)', async () => {
    const degraded = { ...inv, sources: { ...inv.sources, processes: { ok: false, error: 'processes degraded: 3 unreadable', durationSeconds: 0.01, unreadable: 3 } } };
    const text = await metricsFor([degraded]).metrics();
    expect(text).toContain(`stepwise_watchdog_source_unreadable_entries{project="${inv.root}",source="processes"} 3`);
    expect(text).toContain(`stepwise_watchdog_source_up{project="${inv.root}",source="processes"} 0`);
  });

  it('is served with the Prometheus content type', async () => {
    await makeApp();
    const res = await inject({ method: 'GET', url: '/metrics' });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(res.body).toContain('stepwise_watchdog_adapters{project="/tmp/stepwise-project",verdict="leaked"} 3');
  });

  it('counts refusals and re-verification skips, never a wait (a grace, a paused job)', async () => {
    const m = metricsFor([inv]);
    m.recordRefusal(inv.root, 'protected');
    m.recordRefusal(inv.root, 'grace');
    m.recordRefusal(inv.root, 'paused', 3);
    m.recordRefusal(inv.root, 'identity_changed', 2);
    const text = await m.metrics();
    const count = (reason: string) => text.match(new RegExp(`^stepwise_watchdog_refusals_total\\{project="${inv.root}",reason="${reason}"\\} (\\d+)$`, 'm'))?.[1];
    expect([count('protected'), count('identity_changed'), count('grace'), count('paused')]).toEqual(['1', '2', undefined, undefined]);
  });

  it('has no pid or job id in any label', async () => {
    const text = await metricsFor([inv]).metrics();
    expect(text).not.toMatch(/job-[0-9a-f]{8}/);
    for (const a of inv.adapters) expect(text).not.toContain(`"${a.topPid}"`);
  });
});

describe('health and inventory', () => {
  it('/healthz is up', async () => {
    await makeApp();
    expect((await inject('/healthz')).json()).toEqual({ status: 'ok' });
  });

  it('/readyz is 200 after a good recent cycle, 503 naming the failing source otherwise', async () => {
    await makeApp();
    expect((await inject('/readyz')).statusCode).toBe(200);
    await app!.close();
    await makeApp({ cycleStatus: () => ({ ok: false, at: inv.now, problems: ['/p: store down: database locked for more than 2000 ms'] }) });
    const down = await inject('/readyz');
    expect(down.statusCode).toBe(503);
    expect(down.json().reason).toBe('/p: store down: database locked for more than 2000 ms');
    await app!.close();
    await makeApp({ cycleStatus: () => ({ ok: true, at: inv.now - 600, problems: [] }) });
    expect((await inject('/readyz')).json().reason).toMatch(/last cycle finished \d+s ago/);
    await app!.close();
    await makeApp({ cycleStatus: () => ({ ok: false, at: null, problems: [] }) });
    expect((await inject('/readyz')).statusCode).toBe(503);
  });

  it('/api/inventory is the status --json document, foreign trees only with ?all=1', async () => {
    await makeApp();
    const doc = (await inject('/api/inventory')).json();
    expect(doc.projects[0].adapters.map((a: { verdict: string }) => a.verdict)).not.toContain('foreign');
    const all = (await inject('/api/inventory?all=1')).json();
    expect(all.projects[0].adapters.map((a: { verdict: string }) => a.verdict)).toContain('foreign');
  });

  it('a known route with the wrong method is a 405 naming the allowed one; HEAD answers as GET without a body', async () => {
    const calls = await makeApp();
    const res = await inject({ method: 'DELETE', url: '/api/reap' });
    expect(res.statusCode).toBe(405);
    expect(res.headers.allow).toBe('POST');
    expect(res.json().error).toBe('DELETE /api/reap: use POST');
    expect((await inject({ method: 'GET', url: '/api/poke' })).statusCode).toBe(405);
    expect(calls.pokes).toBe(0);
    const head = await inject({ method: 'HEAD', url: '/metrics' });
    expect(head.statusCode).toBe(200);
    expect(head.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(head.body).toBe('');
  });

  it('a request target that is not a URL path is a 400 naming it, and the app keeps serving', async () => {
    await makeApp();
    await inject('/healthz'); // listening
    const port = (app!.server.address() as { port: number }).port;
    const raw = await new Promise<string>((resolve, reject) => {
      const sock = net.connect(port, '127.0.0.1', () => sock.end('GET http://[ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'));
      let text = '';
      sock.on('data', (d) => (text += d.toString()));
      sock.on('end', () => resolve(text));
      sock.on('error', reject);
    });
    expect(raw).toMatch(/^HTTP\/1\.1 400 /);
    expect(raw).toContain('{"error":"request target \\"http://[\\" is not a URL path"}');
    expect((await inject('/healthz')).statusCode).toBe(200);
  });

  it('unknown routes get a JSON 404', async () => {
    await makeApp();
    const res = await inject('/nope');
    expect(res.statusCode).toBe(404);
    expect(res.json().error).toMatch(/no route GET \/nope/);
  });
});

describe('POST /api/poke', () => {
  it('schedules a cycle and has no other effect', async () => {
    const calls = await makeApp();
    const res = await inject({ method: 'POST', url: '/api/poke' });
    expect(res.statusCode).toBe(202);
    expect(calls.pokes).toBe(1);
    expect(calls.reaps).toEqual([]);
  });

  it('is rate limited', async () => {
    const calls = await makeApp({ pokeRatePerSecond: 3 });
    const codes: number[] = [];
    for (let i = 0; i < 6; i++) codes.push((await inject({ method: 'POST', url: '/api/poke' })).statusCode);
    expect(codes.filter((c) => c === 202)).toHaveLength(3);
    expect(codes.filter((c) => c === 429)).toHaveLength(3);
    expect(calls.pokes).toBe(3);
  });
});

describe('POST /api/reap', () => {
  const post = (body: unknown, auth: string | null = `Bearer ${TOKEN}`, raw = false) =>
    inject({
      method: 'POST',
      url: '/api/reap',
      headers: { ...(auth ? { authorization: auth } : {}), 'content-type': 'application/json' },
      payload: raw ? (body as string) : JSON.stringify(body),
    });

  it('is disabled without a token', async () => {
    const calls = await makeApp({ token: null });
    const res = await post({ allLeaked: true });
    expect(res.statusCode).toBe(403);
    expect(res.json().error).toMatch(/--token-file/);
    expect(calls.reaps).toEqual([]);
  });

  it('refuses a missing or wrong token', async () => {
    const calls = await makeApp();
    expect((await post({ allLeaked: true }, null)).statusCode).toBe(401);
    expect((await post({ allLeaked: true }, 'Bearer wrong')).statusCode).toBe(403);
    expect((await post({ allLeaked: true }, `Basic ${TOKEN}`)).statusCode).toBe(401);
    expect(calls.reaps).toEqual([]);
  });

  it('names the problem in a bad body', async () => {
    const calls = await makeApp();
    expect((await post({ pids: ['12'] })).json().error).toMatch(/^pids\.0: /);
    expect((await post({ pids: [1] })).json().error).toMatch(/^pids\.0: /);
    expect((await post({ allLeaked: 'yes' })).json().error).toMatch(/^allLeaked: /);
    expect((await post({ rm: '-rf' })).json().error).toBe('body: unknown field(s) rm');
    expect((await post({})).json().error).toMatch(/nothing selected/);
    const broken = await post('{"allLeaked":', `Bearer ${TOKEN}`, true);
    expect(broken.statusCode).toBe(400);
    expect(broken.json().error).toBeTruthy();
    expect(calls.reaps).toEqual([]);
  });

  it('refuses another content type (415), a body over the limit (413), and says why', async () => {
    const calls = await makeApp();
    const text = await inject({ method: 'POST', url: '/api/reap', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'text/plain' }, payload: '{"allLeaked":true}' });
    expect(text.statusCode).toBe(415);
    expect(text.json().error).toBe('content-type text/plain: send application/json');
    const big = await post({ jobs: ['x'.repeat(BODY_LIMIT_BYTES)] });
    expect(big.statusCode).toBe(413);
    expect(big.json().error).toMatch(/over the 65536-byte limit/);
    expect((await post('{"allLeaked":', `Bearer ${TOKEN}`, true)).json().error).toMatch(/^body: not JSON \(/);
    // Streamed (chunked, no content-length): cut off at the limit as it arrives.
    const port = (app!.server.address() as { port: number }).port;
    const streamed = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/api/reap', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' } }, (res) => {
        let body = '';
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode!, body }));
      });
      req.on('error', reject);
      req.write('{"jobs":["');
      for (let i = 0; i < 10; i++) req.write('x'.repeat(8 * 1024)); // 80 KiB: over the limit, within the socket buffers
      req.end('"]}');
    });
    expect(streamed.status).toBe(413);
    expect(JSON.parse(streamed.body).error).toBe(`body over the ${BODY_LIMIT_BYTES}-byte limit`);
    expect(calls.reaps).toEqual([]);
    expect((await inject('/healthz')).statusCode).toBe(200); // still serving
  });

  it('a reply that does not serialise is a 500 (logged), never a hung request; errors close the connection', async () => {
    const logged: string[] = [];
    await makeApp({ reap: async () => ({ status: 200, body: { n: 1n } }), logError: (_e, msg) => void logged.push(msg) });
    const res = await post({ allLeaked: true });
    expect(res.statusCode).toBe(500);
    expect(res.json()).toEqual({ error: 'internal error' });
    expect(res.headers.connection).toBe('close');
    expect(logged).toEqual(['response failed']);
    expect((await inject('/healthz')).statusCode).toBe(200);
  });

  it('passes a valid selection through', async () => {
    const calls = await makeApp();
    const res = await post({ jobs: ['job-eb3d1747'], dryRun: true });
    expect(res.statusCode).toBe(200);
    expect(calls.reaps).toEqual([{ project: null, allLeaked: false, orphans: false, sessions: false, jobs: ['job-eb3d1747'], pids: [], force: false, dryRun: true }]);
  });

  it('a failure inside the reap handler is a 500 with a JSON error, and the app keeps serving', async () => {
    await makeApp({
      reap: async () => {
        throw new Error('boom');
      },
    });
    const res = await post({ allLeaked: true });
    expect(res.statusCode).toBe(500);
    expect(res.json()).toEqual({ error: 'internal error' });
    expect((await inject('/healthz')).statusCode).toBe(200);
  });
});
