// Real HTTP requests to a WatchdogHttp listening on 127.0.0.1:0 (no in-process injection).
import type { WatchdogHttp } from '../../src/http/app.js';

export interface HttpResponse {
  statusCode: number;
  headers: Record<string, string>;
  body: string;
  json: () => any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

export type HttpRequest = string | { method?: string; url: string; headers?: Record<string, string>; payload?: string };

/** Listen on an ephemeral loopback port (once) and send one request. */
export async function request(app: WatchdogHttp, req: HttpRequest): Promise<HttpResponse> {
  if (!app.server.listening) await app.listen({ host: '127.0.0.1', port: 0 });
  const address = app.server.address();
  if (!address || typeof address !== 'object') throw new Error('not listening');
  const r = typeof req === 'string' ? { url: req } : req;
  const res = await fetch(`http://127.0.0.1:${address.port}${r.url}`, {
    method: r.method ?? 'GET',
    headers: r.headers ?? {},
    ...(r.payload !== undefined ? { body: r.payload } : {}),
  });
  const body = await res.text();
  return { statusCode: res.status, headers: Object.fromEntries(res.headers), body, json: () => JSON.parse(body) };
}
