import { VERSION } from './version.js';

/**
 * stepwise's extension protocol: any `stepwise-<name>` on PATH becomes `stepwise <name>`;
 * stepwise calls `stepwise-<name> --manifest` (5 s timeout) and expects this JSON.
 */
export function manifest() {
  return {
    name: 'watchdog',
    version: VERSION,
    description: 'Find, report and safely reap leaked ACP adapter process trees; Prometheus metrics',
    capabilities: ['status', 'reap', 'gc', 'run', 'doctor', 'hook', 'guard', 'demo'],
    config_keys: [],
  };
}
