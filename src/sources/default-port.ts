// Which process-table port to read: `--process-source auto|proc|ps` (config `processSource`).
// `auto` reads /proc where a proc filesystem is mounted at the configured root (Linux), else ps
// (macOS). Every default in the code base (tests' and the demo kit's included) comes from here.

import { DEFAULT_PROC_ROOT, procAvailable, procPort } from './processes.js';
import type { ProcessPort } from './process-port.js';
import { psPort } from './ps-port.js';

export const PROCESS_SOURCES = ['auto', 'proc', 'ps'] as const;
export type ProcessSource = (typeof PROCESS_SOURCES)[number];

/** The port for a source, and why it was chosen (doctor shows it). */
export function processPortFor(source: ProcessSource, procRoot: string = DEFAULT_PROC_ROOT): { port: ProcessPort; why: string } {
  if (source === 'proc') return { port: procPort(procRoot), why: `--process-source proc: ${procRoot}` };
  if (source === 'ps') return { port: psPort(), why: '--process-source ps' };
  return procAvailable(procRoot)
    ? { port: procPort(procRoot), why: `auto: ${procRoot} is a proc filesystem` }
    : { port: psPort(), why: `auto: no proc filesystem at ${procRoot}, reading ps` };
}

/** A `--process-source` value given to a command that reads no config (demo, guard): checked here, as the schema does. */
export function processSourceOf(value: unknown): ProcessSource | { error: string } {
  const v = value ?? 'auto';
  return (PROCESS_SOURCES as readonly unknown[]).includes(v) ? (v as ProcessSource) : { error: `--process-source ${JSON.stringify(v)}: must be one of ${PROCESS_SOURCES.join(', ')}` };
}

let fallback: ProcessPort | null = null;

/** The port used when none is injected: auto on the real root, built once. */
export function defaultProcessPort(): ProcessPort {
  fallback ??= processPortFor('auto').port;
  return fallback;
}
