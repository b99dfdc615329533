// The HTTP app, a fastify plugin: it never listens (only `run` does), so tests use inject().
// Bad requests get a 4xx with a JSON error naming the problem; nothing here can crash the daemon.

import { timingSafeEqual, createHash } from 'node:crypto';
import rateLimit from '@fastify/rate-limit';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyPluginAsync } from 'fastify';
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
}

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

export const watchdogApp: FastifyPluginAsync<AppDeps> = async (app, deps) => {
  const now = deps.now ?? (() => Date.now() / 1000);

  app.setErrorHandler((err: FastifyError, _req, reply) => {
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 600 ? err.statusCode : 500;
    if (status >= 500) app.log.error({ err }, 'request failed');
    void reply.code(status).send({ error: status >= 500 ? 'internal error' : err.message });
  });
  app.setNotFoundHandler((req, reply) => void reply.code(404).send({ error: `no route ${req.method} ${req.url}` }));

  await app.register(rateLimit, { global: false });

  app.get('/healthz', async () => ({ status: 'ok' }));

  app.get('/readyz', async (_req, reply) => {
    const s = deps.cycleStatus();
    if (s.at === null) return reply.code(503).send({ ready: false, reason: 'no cycle has finished yet' });
    const age = now() - s.at;
    if (age > deps.readyMaxAgeSeconds) return reply.code(503).send({ ready: false, reason: `last cycle finished ${Math.round(age)}s ago` });
    if (!s.ok) return reply.code(503).send({ ready: false, reason: s.problems[0] ?? 'last cycle failed', problems: s.problems });
    return { ready: true, lastCycleAgeSeconds: Math.round(age * 1000) / 1000 };
  });

  app.get('/metrics', async (_req, reply) => {
    const text = await deps.metrics.metrics();
    return reply.type(deps.metrics.contentType).send(text);
  });

  app.get<{ Querystring: { all?: string } }>('/api/inventory', async (req) => {
    const all = req.query.all === '1' || req.query.all === 'true';
    return statusDocument(deps.inventories(), { all });
  });

  app.post(
    '/api/poke',
    { config: { rateLimit: { max: deps.pokeRatePerSecond ?? 5, timeWindow: 1000 } } },
    async (_req, reply) => {
      deps.poke('api');
      return reply.code(202).send({ scheduled: true });
    },
  );

  app.post('/api/reap', async (req, reply) => {
    if (deps.token === null) return reply.code(403).send({ error: 'the reap API is disabled: start the daemon with --token-file' });
    const auth = req.headers.authorization;
    if (typeof auth !== 'string' || !auth.startsWith('Bearer ')) {
      return reply.code(401).header('www-authenticate', 'Bearer').send({ error: 'missing Authorization: Bearer <token>' });
    }
    if (!sameToken(auth.slice('Bearer '.length).trim(), deps.token)) return reply.code(403).send({ error: 'wrong token' });
    const parsed = reapBody.safeParse(req.body ?? {});
    if (!parsed.success) {
      const issue = parsed.error.issues[0]!;
      const where = issue.path.length ? issue.path.join('.') : 'body';
      const detail = issue.code === 'unrecognized_keys' ? `unknown field(s) ${issue.keys.join(', ')}` : issue.message;
      return reply.code(400).send({ error: `${where}: ${detail}` });
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
      return reply.code(400).send({ error: 'nothing selected: set allLeaked, orphans, sessions, jobs or pids' });
    }
    const { status, body } = await deps.reap(request);
    return reply.code(status).send(body);
  });
};

/** A fastify instance with the app registered (tests inject into it; `run` listens on it). */
export async function buildServer(deps: AppDeps, opts: { logger?: boolean | object } = {}): Promise<FastifyInstance> {
  const app = Fastify({ logger: opts.logger ?? false, bodyLimit: 64 * 1024 });
  await app.register(watchdogApp, deps);
  return app;
}
