// The HTTP app on node:http (no framework: six routes, and a daemon that should stay small).
// It never listens by itself (only `run` does; tests listen on 127.0.0.1:0). Bad requests get a
// 4xx with a JSON error naming the problem; nothing here can crash the daemon.

import { timingSafeEqual, createHash } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { z } from 'zod';
import { statusDocument } from '../core/report.js';
import type { ProjectInventory } from '../core/types.js';
import type { WatchdogMetrics } from '../metrics/registry.js';

export interface ApiReapRequest {
  project: string | null;
  allLeaked: boolean;
  orphans: boolean;
  sessions: boolean;
  jobs: string[];
  pids: number[];
  force: boolean;
  dryRun: boolean;
}

export interface AppDeps {
  metrics: WatchdogMetrics;
  inventories: () => ProjectInventory[];
  /** Last cycle's state, for /readyz. */
  cycleStatus: () => { ok: boolean; at: number | null; problems: string[] };
  poke: (reason: string) => void;
  /** Carry out (or with dryRun, plan) an explicit reap; returns the HTTP status and body. */
  reap: (req: ApiReapRequest) => Promise<{ status: number; body: unknown }>;
  /** Bearer token for POST /api/reap; null disables the endpoint. */
  token: string | null;
  /** /readyz fails when the last cycle is older than this. */
  readyMaxAgeSeconds: number;
  now?: () => number;
  /** Pokes allowed per second per client (default 5). */
  pokeRatePerSecond?: number;
  /** Where a failing handler is logged (a 500 says only "internal error"). */
  logError?: (err: unknown, msg: string) => void;
}

/** Largest request body read (the reap selection is small). */
export const BODY_LIMIT_BYTES = 64 * 1024;
/** Clients remembered by the poke rate limit before expired windows are pruned. */
const RATE_CLIENTS_MAX = 1024;

const reapBody = z
  .object({
    project: z.string().min(1).optional(),
    allLeaked: z.boolean().optional(),
    orphans: z.boolean().optional(),
    sessions: z.boolean().optional(),
    jobs: z.array(z.string().min(1).max(200)).max(100).optional(),
    pids: z.array(z.number().int().min(2).max(2 ** 22)).max(100).optional(),
    force: z.boolean().optional(),
    dryRun: z.boolean().optional(),
  })
  .strict();

function sameToken(given: string, expected: string): boolean {
  // Compare digests: constant time, whatever the lengths.
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

/** A response: status, body (JSON unless text is given) and extra headers. */
interface Reply {
  status: number;
  json?: unknown;
  text?: string;
  contentType?: string;
  headers?: Record<string, string>;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

interface Request {
  method: string;
  path: string;
  query: URLSearchParams;
  headers: http.IncomingHttpHeaders;
  client: string;
  body: () => Promise<string>;
}

type Handler = (req: Request) => Promise<Reply> | Reply;

/** Fixed one-second windows per client. */
class RateLimit {
  private windows = new Map<string, { start: number; count: number }>();
  constructor(
    private readonly max: number,
    private readonly windowMs: number,
  ) {}

  /** Milliseconds until the client may try again, or 0 when this request is allowed. */
  take(client: string, nowMs: number): number {
    if (!this.windows.has(client) && this.windows.size >= RATE_CLIENTS_MAX) {
      for (const [k, w] of this.windows) if (nowMs - w.start >= this.windowMs) this.windows.delete(k);
      // Still full (that many clients within one window): the oldest window goes.
      if (this.windows.size >= RATE_CLIENTS_MAX) this.windows.delete(this.windows.keys().next().value!);
    }
    let w = this.windows.get(client);
    if (!w || nowMs - w.start >= this.windowMs) {
      w = { start: nowMs, count: 0 };
      this.windows.set(client, w);
    }
    if (w.count >= this.max) return this.windowMs - (nowMs - w.start);
    w.count++;
    return 0;
  }
}

function routes(deps: AppDeps): Record<string, Partial<Record<'GET' | 'POST', Handler>>> {
  const now = deps.now ?? (() => Date.now() / 1000);
  const pokeLimit = new RateLimit(deps.pokeRatePerSecond ?? 5, 1000);
  return {
    '/healthz': { GET: () => ({ status: 200, json: { status: 'ok' } }) },
    '/readyz': {
      GET: () => {
        const s = deps.cycleStatus();
        if (s.at === null) return { status: 503, json: { ready: false, reason: 'no cycle has finished yet' } };
        const age = now() - s.at;
        if (age > deps.readyMaxAgeSeconds) return { status: 503, json: { ready: false, reason: `last cycle finished ${Math.round(age)}s ago` } };
        if (!s.ok) return { status: 503, json: { ready: false, reason: s.problems[0] ?? 'last cycle failed', problems: s.problems } };
        return { status: 200, json: { ready: true, lastCycleAgeSeconds: Math.round(age * 1000) / 1000 } };
      },
    },
    '/metrics': { GET: async () => ({ status: 200, text: await deps.metrics.metrics(), contentType: deps.metrics.contentType }) },
    '/api/inventory': {
      GET: (req) => {
        const all = req.query.get('all');
        return { status: 200, json: statusDocument(deps.inventories(), { all: all === '1' || all === 'true' }) };
      },
    },
    '/api/poke': {
      POST: (req) => {
        const wait = pokeLimit.take(req.client, now() * 1000);
        if (wait > 0) {
          return { status: 429, json: { error: `rate limited: at most ${deps.pokeRatePerSecond ?? 5} pokes per second` }, headers: { 'retry-after': String(Math.ceil(wait / 1000)) } };
        }
        deps.poke('api');
        return { status: 202, json: { scheduled: true } };
      },
    },
    '/api/reap': { POST: (req) => reap(req, deps) },
  };
}

async function reap(req: Request, deps: AppDeps): Promise<Reply> {
  if (deps.token === null) return { status: 403, json: { error: 'the reap API is disabled: start the daemon with --token-file' } };
  const auth = req.headers.authorization;
  if (typeof auth !== 'string' || !auth.startsWith('Bearer ')) {
    return { status: 401, json: { error: 'missing Authorization: Bearer <token>' }, headers: { 'www-authenticate': 'Bearer' } };
  }
  if (!sameToken(auth.slice('Bearer '.length).trim(), deps.token)) return { status: 403, json: { error: 'wrong token' } };
  const parsed = reapBody.safeParse(await jsonBody(req));
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const where = issue.path.length ? issue.path.join('.') : 'body';
    const detail = issue.code === 'unrecognized_keys' ? `unknown field(s) ${issue.keys.join(', ')}` : issue.message;
    return { status: 400, json: { error: `${where}: ${detail}` } };
  }
  const b = parsed.data;
  const request: ApiReapRequest = {
    project: b.project ?? null,
    allLeaked: b.allLeaked ?? false,
    orphans: b.orphans ?? false,
    sessions: b.sessions ?? false,
    jobs: b.jobs ?? [],
    pids: b.pids ?? [],
    force: b.force ?? false,
    dryRun: b.dryRun ?? false,
  };
  if (!request.allLeaked && !request.orphans && !request.sessions && request.jobs.length === 0 && request.pids.length === 0) {
    return { status: 400, json: { error: 'nothing selected: set allLeaked, orphans, sessions, jobs or pids' } };
  }
  const { status, body } = await deps.reap(request);
  return { status, json: body };
}

/** The body as JSON: empty is `{}`; another content type is 415, text that is not JSON 400. */
async function jsonBody(req: Request): Promise<unknown> {
  const text = await req.body();
  if (text.trim() === '') return {};
  const type = String(req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
  if (type !== 'application/json') throw new HttpError(415, `content-type ${type || '(none)'}: send application/json`);
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new HttpError(400, `body: not JSON (${(err as Error).message})`);
  }
}

/** The request target as a URL; one that does not parse is the client's error (400). */
function parseTarget(target: string | undefined): URL {
  try {
    return new URL(target ?? '/', 'http://localhost');
  } catch {
    throw new HttpError(400, `request target ${JSON.stringify(String(target).slice(0, 200))} is not a URL path`);
  }
}

function readBody(req: http.IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > BODY_LIMIT_BYTES) {
      reject(new HttpError(413, `body of ${declared} bytes is over the ${BODY_LIMIT_BYTES}-byte limit`));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > BODY_LIMIT_BYTES) {
        // The rest is drained and dropped (the request timeout bounds a body that never ends).
        chunks.length = 0;
        reject(new HttpError(413, `body over the ${BODY_LIMIT_BYTES}-byte limit`));
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    // The client went away mid-body: its error, not ours (never logged as an internal one).
    req.on('error', (err) => reject(new HttpError(400, `body not received (${(err as NodeJS.ErrnoException).code ?? err.message})`)));
  });
}

function send(res: http.ServerResponse, reply: Reply, head: boolean): void {
  const body = reply.text ?? JSON.stringify(reply.json ?? null);
  res.writeHead(reply.status, {
    'content-type': reply.contentType ?? (reply.text !== undefined ? 'text/plain; charset=utf-8' : 'application/json; charset=utf-8'),
    'content-length': Buffer.byteLength(body),
    ...reply.headers,
  });
  res.end(head ? undefined : body);
}

/** The app: a request listener over the routes, and a server that listens only when asked. */
export class WatchdogHttp {
  readonly server: http.Server;
  private readonly table: ReturnType<typeof routes>;

  constructor(private readonly deps: AppDeps) {
    this.table = routes(deps);
    this.server = http.createServer({ requestTimeout: 30_000, headersTimeout: 10_000 }, (req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        // Never an unhandled rejection (it would end the daemon): log, drop the connection.
        this.deps.logError?.(err, 'request failed');
        res.destroy();
      });
    });
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const method = req.method ?? 'GET';
    const head = method === 'HEAD';
    let reply: Reply;
    try {
      const url = parseTarget(req.url);
      const route = this.table[url.pathname];
      const handler = route?.[head ? 'GET' : (method as 'GET' | 'POST')];
      if (!route) reply = { status: 404, json: { error: `no route ${method} ${String(req.url).slice(0, 200)}` } };
      else if (!handler) reply = { status: 405, json: { error: `${method} ${url.pathname}: use ${Object.keys(route).join(', ')}` }, headers: { allow: Object.keys(route).join(', ') } };
      else {
        let body: Promise<string> | null = null;
        reply = await handler({
          method,
          path: url.pathname,
          query: url.searchParams,
          headers: req.headers,
          client: req.socket.remoteAddress ?? '',
          body: () => (body ??= readBody(req)),
        });
      }
    } catch (err) {
      if (err instanceof HttpError) reply = { status: err.status, json: { error: err.message } };
      else {
        this.deps.logError?.(err, 'request failed');
        reply = { status: 500, json: { error: 'internal error' } };
      }
    }
    if (res.headersSent || res.destroyed) return;
    // After an error the connection is closed rather than reading a body nobody wants (of any
    // size, until the request timeout); a good request's unread body is drained for keep-alive.
    if (reply.status >= 400) reply.headers = { ...reply.headers, connection: 'close' };
    else req.resume();
    try {
      send(res, reply, head);
    } catch (err) {
      // A body that does not serialise (a bug): say so, never leave the request hanging.
      this.deps.logError?.(err, 'response failed');
      if (!res.headersSent) send(res, { status: 500, json: { error: 'internal error' }, headers: { connection: 'close' } }, head);
      else res.destroy();
    }
  }

  listen(opts: { host: string; port: number }): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      this.server.once('error', onError);
      this.server.listen(opts.port, opts.host, () => {
        this.server.off('error', onError);
        resolve(this.server.address() as AddressInfo);
      });
    });
  }

  /** Stop listening and close every connection (idle keep-alive ones too). */
  close(): Promise<void> {
    if (!this.server.listening) return Promise.resolve();
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }
}

/** The app (`run` listens on it; tests listen on 127.0.0.1:0 and send real requests). */
export function buildServer(deps: AppDeps): WatchdogHttp {
  return new WatchdogHttp(deps);
}
