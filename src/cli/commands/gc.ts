// `gc`: plan, and with --yes carry out, the removal of stale pid files
// (`.stepwise/pids/acp-<pid>.json` whose process is gone, or whose pid now names a process that
// started after the file was written). Invalid files (bad JSON, symlinks, huge files, odd names)
// are reported and never deleted. Each removal re-checks the file (same inode, regular file,
// directly inside the pids folder) and that it is still stale right before the unlink.
//
//   gc [--project DIR]… [--yes] [--json]
//
// Exit codes: as `reap` (see reap.ts): 0 done or nothing to do; 1 an unlink failed; 2 usage;
// 3 the process table or the pids folder could not be read, or the audit log is unwritable
// (nothing removed). The --json document is reap's, with "command": "gc".

import type { CliIO } from '../io.js';
import { runPlanCommand, selectionFrom } from './reap.js';

export default async function gc(opts: Record<string, unknown>, io: CliIO): Promise<number> {
  return runPlanCommand('gc', selectionFrom(opts, 'gc'), opts, io);
}
