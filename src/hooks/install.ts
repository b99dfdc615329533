// stepwise hooks that poke the daemon when a job ends (`on-fail`, `on-complete`).
//
// The engine runs a hook synchronously inside its event emission and waits for its stdout and
// stderr to close (subprocess communicate(), 30 s timeout): a slow hook stalls the engine. So
// the hook fires the poke in a background subshell whose stdio is /dev/null (the engine's pipes
// close as soon as the script exits), with a 1 s cap, no retries, and exits at once. An
// existing hook is kept and still runs: it is renamed `<name>.pre-watchdog` and exec'd by ours
// with the same stdin, arguments and environment.

import fs from 'node:fs';
import path from 'node:path';

export const HOOK_NAMES = ['on-fail', 'on-complete'] as const;
export const MARKER = '# installed by stepwise-watchdog: hook install';
export const BACKUP_SUFFIX = '.pre-watchdog';

export function hookScript(opts: { pokeUrl: string; chained: string | null }): string {
  const chain = opts.chained
    ? `# The hook that was here before, with the same stdin, arguments and environment.
prev="$(dirname "$0")/${opts.chained}"
if [ -x "$prev" ]; then exec "$prev" "$@"; fi
`
    : '';
  return `#!/bin/sh
${MARKER}
# Pokes the watchdog so it re-checks this project at once. Fire and forget: the poke runs in
# the background with its stdio on /dev/null, capped at 1 s, never retried; this script does
# not wait for it. Override the address with STEPWISE_WATCHDOG_URL.
url="\${STEPWISE_WATCHDOG_URL:-${opts.pokeUrl}}"
(
  if command -v curl >/dev/null 2>&1; then
    curl -s -o /dev/null -m 1 -X POST "$url"
  elif command -v bash >/dev/null 2>&1; then
    # No curl: a raw HTTP request through bash's /dev/tcp.
    hostport="\${url#http://}"; hostport="\${hostport%%/*}"
    STEPWISE_WATCHDOG_HOSTPORT="$hostport" timeout 1 bash -c 'exec 3<>"/dev/tcp/\${STEPWISE_WATCHDOG_HOSTPORT%:*}/\${STEPWISE_WATCHDOG_HOSTPORT##*:}" && printf "POST /api/poke HTTP/1.0\\r\\nContent-Length: 0\\r\\n\\r\\n" >&3'
  fi
) </dev/null >/dev/null 2>&1 &
${chain}exit 0
`;
}

export interface HookChange {
  hook: string;
  path: string;
  action: 'installed' | 'updated' | 'chained' | 'replaced' | 'restored' | 'removed' | 'kept' | 'absent';
  detail: string;
}

export class HookError extends Error {}

function isOurs(file: string): boolean {
  try {
    const st = fs.lstatSync(file);
    if (!st.isFile() || st.size > 65536) return false;
    return fs.readFileSync(file, 'utf8').includes(MARKER);
  } catch {
    return false;
  }
}

function exists(file: string): boolean {
  try {
    fs.lstatSync(file);
    return true;
  } catch {
    return false;
  }
}

/** Write atomically (tmp + rename) with mode 0755. */
function writeExecutable(file: string, text: string): void {
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, text, { mode: 0o755 });
  fs.chmodSync(tmp, 0o755);
  fs.renameSync(tmp, file);
}

export function installHooks(hooksDir: string, opts: { pokeUrl: string; force: boolean }): HookChange[] {
  fs.mkdirSync(hooksDir, { recursive: true });
  // Decide everything first, so a refusal changes nothing.
  const plans = HOOK_NAMES.map((hook) => {
    const file = path.join(hooksDir, hook);
    const backup = `${file}${BACKUP_SUFFIX}`;
    if (isOurs(file)) return { hook, file, backup, mode: 'update' as const };
    if (!exists(file)) return { hook, file, backup, mode: 'new' as const };
    if (exists(backup) && !opts.force) {
      throw new HookError(`${file} exists and so does ${backup}: refusing to chain over an earlier backup (move one of them, or use --force)`);
    }
    return { hook, file, backup, mode: opts.force ? ('replace' as const) : ('chain' as const) };
  });
  const changes: HookChange[] = [];
  for (const p of plans) {
    if (p.mode === 'update') {
      const chained = exists(p.backup) && !opts.force ? path.basename(p.backup) : null;
      writeExecutable(p.file, hookScript({ pokeUrl: opts.pokeUrl, chained }));
      changes.push({ hook: p.hook, path: p.file, action: 'updated', detail: chained ? `still chains ${path.basename(p.backup)}` : 'no earlier hook' });
    } else if (p.mode === 'new') {
      writeExecutable(p.file, hookScript({ pokeUrl: opts.pokeUrl, chained: null }));
      changes.push({ hook: p.hook, path: p.file, action: 'installed', detail: 'no earlier hook' });
    } else {
      // Keep the earlier hook (renaming never follows a symlink); with --force it no longer runs,
      // but uninstall still restores it.
      if (exists(p.backup)) fs.rmSync(p.backup, { force: true });
      fs.renameSync(p.file, p.backup);
      const chained = p.mode === 'chain' ? path.basename(p.backup) : null;
      writeExecutable(p.file, hookScript({ pokeUrl: opts.pokeUrl, chained }));
      changes.push({
        hook: p.hook,
        path: p.file,
        action: p.mode === 'chain' ? 'chained' : 'replaced',
        detail: p.mode === 'chain' ? `the earlier hook runs after the poke (kept as ${path.basename(p.backup)})` : `the earlier hook no longer runs (kept as ${path.basename(p.backup)})`,
      });
    }
  }
  return changes;
}

export function uninstallHooks(hooksDir: string): HookChange[] {
  return HOOK_NAMES.map((hook) => {
    const file = path.join(hooksDir, hook);
    const backup = `${file}${BACKUP_SUFFIX}`;
    if (!isOurs(file)) {
      if (exists(file)) return { hook, path: file, action: 'kept', detail: 'not ours: left as it is' };
      return { hook, path: file, action: 'absent', detail: 'no hook' };
    }
    if (exists(backup)) {
      fs.renameSync(backup, file);
      return { hook, path: file, action: 'restored', detail: `the earlier hook is back` };
    }
    fs.rmSync(file);
    return { hook, path: file, action: 'removed', detail: 'there was no earlier hook' };
  });
}

export function hooksInstalled(hooksDir: string): Record<string, boolean> {
  return Object.fromEntries(HOOK_NAMES.map((h) => [h, isOurs(path.join(hooksDir, h))]));
}
