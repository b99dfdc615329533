// Remove a stale pid file — the only thing of the engine's the watchdog ever writes to. Only a
// regular file named acp-<digits>.json directly inside the pids folder (never through a
// symlink, never a folder that is itself a symlink), the same inode as planned, and STILL stale
// when re-checked right before the unlink: no live process with its pid, or a live one that
// started after the file was written. Anything else is skipped with the reason; invalid files
// are reported by the planner and never reach this code.

import fs from 'node:fs';
import path from 'node:path';
import type { RemovePidFileAction } from '../core/plan.js';
import { judgePidFileFacts, type PidFileFacts } from '../core/pid-file-rule.js';
import { isDead } from '../core/process-tree.js';
import { comparisonSlack } from '../core/time.js';
import { DEFAULT_POLICY, type AdapterTree, type PidFileStatus, type PidFileVerdict } from '../core/types.js';
import { errText, isCode, PID_FILE_NAME, readPidFile } from '../sources/pid-files.js';
import type { ProcessPort } from '../sources/process-port.js';
import { defaultProcessPort } from '../sources/default-port.js';

export type PidFileOutcome = 'removed' | 'already-gone' | 'skipped' | 'failed';

export interface PidFileResult {
  kind: 'remove-pid-file';
  project: string;
  path: string;
  pid: number | null;
  agent: string | null;
  /** The verdict it was planned with. */
  verdict: PidFileVerdict;
  /** Why it was planned. */
  reason: string;
  /** 'gc': a stale file found by the planner; 'reaped-tree': the file of a tree just reaped. */
  trigger: 'gc' | 'reaped-tree';
  outcome: PidFileOutcome;
  /** One line: why skipped / failed, or what made it stale at removal time. */
  detail: string;
}

export interface RemovePidFileDeps {
  /** The process port the plan was made from (identity, group members, clock). Default /proc. */
  processes?: ProcessPort;
  /** The configured clockTolerance, as the classifier's (policy.clockToleranceSeconds). */
  toleranceSeconds?: number;
}

/** Why `dir` cannot be the pids folder we unlink in, or null. */
function pidsDirProblem(dir: string): string | null {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(dir);
  } catch (err) {
    return `pids folder ${dir} unreadable (${errText(err)})`;
  }
  if (st.isSymbolicLink()) return `pids folder ${dir} is a symlink (not followed)`;
  if (!st.isDirectory()) return `pids folder ${dir} is not a directory`;
  return null;
}

/** Is the file named `filePath` directly inside `pidsDir`, also once symlinks in the path are resolved? */
function insidePidsDir(filePath: string, pidsDir: string): string | null {
  const dir = path.resolve(pidsDir);
  if (path.dirname(path.resolve(filePath)) !== dir) return `${filePath} is not directly inside ${dir}`;
  try {
    if (fs.realpathSync(path.dirname(filePath)) !== fs.realpathSync(dir)) return `${filePath}: its folder resolves elsewhere than ${dir}`;
  } catch (err) {
    return `cannot resolve the folder of ${filePath} (${errText(err)})`;
  }
  return null;
}

/**
 * Is the pid file still stale? The classifier's own rule (core/pid-file-rule.ts), on facts read
 * now through the same process port, with the configured tolerance. Unreadable facts keep it.
 */
function stillStale(pid: number, mtimeEpoch: number, deps: RemovePidFileDeps): { stale: true; why: string; verdict: PidFileVerdict } | { stale: false; why: string } {
  const processes = deps.processes ?? defaultProcessPort();
  const read = processes.identity(pid);
  let process: PidFileFacts['process'];
  if (read.kind === 'unknown') process = 'unknown';
  else if (read.kind === 'gone') process = null;
  else process = { state: read.id.state, startTicks: read.id.startTicks, what: (processes.argv(pid) ?? []).join(' ').slice(0, 60) || `pid ${pid}` };
  // Only asked when the leader is gone: a full pass over the table.
  const members = process === null || (process !== 'unknown' && isDead(process)) ? processes.groupMembers(pid) : [];
  const { clock, error } = processes.clock();
  const tolerance = deps.toleranceSeconds ?? DEFAULT_POLICY.clockToleranceSeconds;
  const j = judgePidFileFacts({
    pid,
    mtimeEpoch,
    process,
    liveGroupMembers: members === null ? null : members.filter((m) => m.pid !== pid).length,
    clock: error ? { ...clock, bootTimeErrorSeconds: Number.POSITIVE_INFINITY } : clock,
    slack: comparisonSlack(clock, tolerance),
  });
  if (j.verdict === 'stale-dead' || j.verdict === 'stale-reused') return { stale: true, verdict: j.verdict, why: j.reason };
  return { stale: false, why: `${j.reason}: ${j.verdict === 'unknown' ? 'kept (unknown is never dead)' : 'not stale'}` };
}

export function removePidFile(action: RemovePidFileAction, deps: RemovePidFileDeps = {}, trigger: PidFileResult['trigger'] = 'gc'): PidFileResult {
  const f = action.file;
  const result = (outcome: PidFileOutcome, detail: string): PidFileResult => ({
    kind: 'remove-pid-file',
    project: action.project,
    path: f.path,
    pid: f.pid,
    agent: f.agent,
    verdict: f.verdict,
    reason: action.reason,
    trigger,
    outcome,
    detail,
  });

  // Only the planner's stale verdicts ever reach an unlink: an invalid file is never deleted.
  if (f.verdict !== 'stale-dead' && f.verdict !== 'stale-reused') return result('skipped', `verdict ${f.verdict}: only stale files are removed`);
  const name = path.basename(f.path);
  const m = PID_FILE_NAME.exec(name);
  if (!m || name !== f.name) return result('skipped', `${name} is not acp-<digits>.json`);
  if (f.pid === null || Number(m[1]) !== f.pid) return result('skipped', `${name} does not name pid ${f.pid}`);
  const dirProblem = pidsDirProblem(action.pidsDir) ?? insidePidsDir(f.path, action.pidsDir);
  if (dirProblem) return result('skipped', dirProblem);
  if (f.ino === null || f.dev === null) return result('skipped', 'no inode recorded when planned: cannot re-check it is the same file');

  // lstat: never follow a symlink; must be the same regular file as planned.
  const check = (): PidFileResult | fs.Stats => {
    let st: fs.Stats;
    try {
      st = fs.lstatSync(f.path);
    } catch (err) {
      if (isCode(err, 'ENOENT')) return result('already-gone', 'removed by someone else meanwhile');
      return result('failed', `cannot lstat: ${errText(err)}`);
    }
    if (st.isSymbolicLink()) return result('skipped', 'now a symlink (never followed, never removed)');
    if (!st.isFile()) return result('skipped', 'not a regular file');
    if (st.ino !== f.ino || st.dev !== f.dev) return result('skipped', 'a different file than the one planned (inode changed): re-plan');
    return st;
  };
  const st = check();
  if (!(st instanceof fs.Stats)) return st;

  // Re-read the content the way the source does (O_NOFOLLOW, size-capped).
  const entry = readPidFile(f.path);
  if (entry === null) return result('already-gone', 'removed by someone else meanwhile');
  if (entry.pid === null) return result('skipped', `now invalid (${entry.invalidReason ?? 'invalid'}): never removed`);
  if (entry.pid !== f.pid) return result('skipped', `now names pid ${entry.pid}, planned ${f.pid}`);
  if (entry.ino !== f.ino || entry.dev !== f.dev || entry.mtimeEpoch === null) return result('skipped', 'changed while being re-read: re-plan');

  const stale = stillStale(entry.pid, entry.mtimeEpoch, deps);
  if (!stale.stale) return result('skipped', stale.why);

  // Last look right before the unlink (the same inode, still a regular file).
  const last = check();
  if (!(last instanceof fs.Stats)) return last;
  if (last.mtimeMs !== st.mtimeMs) return result('skipped', 'rewritten while being checked: re-plan');
  try {
    fs.unlinkSync(f.path);
  } catch (err) {
    // ENOENT: someone else (the engine, another watchdog) removed it first — not a failure.
    if (isCode(err, 'ENOENT')) return result('already-gone', 'removed by someone else meanwhile');
    return result('failed', `unlink: ${errText(err)}`);
  }
  return result('removed', stale.why);
}

/**
 * After a successful kill: the reaped tree's own pid file, once its top is gone or a zombie.
 * null when the tree had no pid file. The same checks as removePidFile (the file is re-read
 * now: it must name the top pid and still be stale).
 */
export function removePidFileOfReapedTree(tree: AdapterTree, pidsDir: string, opts: RemovePidFileDeps & { project?: string } = {}): PidFileResult | null {
  const { project = '', ...deps } = opts;
  if (!tree.pidFile) return null;
  const entry = readPidFile(tree.pidFile);
  const status: PidFileStatus = {
    path: tree.pidFile,
    name: path.basename(tree.pidFile),
    pid: entry?.pid ?? tree.topPid,
    agent: entry?.agent ?? tree.agent,
    verdict: 'stale-dead',
    reason: `tree ${tree.topPid} was reaped`,
    ino: entry?.ino ?? null,
    dev: entry?.dev ?? null,
    process: null,
  };
  const action: RemovePidFileAction = { kind: 'remove-pid-file', project, pidsDir, file: status, reason: `its tree ${tree.topPid} was reaped` };
  if (entry === null) {
    return { ...removeResultBase(action, 'reaped-tree'), outcome: 'already-gone', detail: 'removed by someone else meanwhile' };
  }
  if (entry.pid === null) return { ...removeResultBase(action, 'reaped-tree'), outcome: 'skipped', detail: `invalid (${entry.invalidReason ?? 'invalid'}): never removed` };
  if (entry.pid !== tree.topPid) return { ...removeResultBase(action, 'reaped-tree'), outcome: 'skipped', detail: `names pid ${entry.pid}, not the reaped top ${tree.topPid}` };
  // The group is listed over the whole table, not among the tree's processes: a member the kill
  // did not reach (an unseen one, a child forked after SIGTERM) keeps the file, the evidence.
  return removePidFile(action, deps, 'reaped-tree');
}

function removeResultBase(action: RemovePidFileAction, trigger: PidFileResult['trigger']): Omit<PidFileResult, 'outcome' | 'detail'> {
  return {
    kind: 'remove-pid-file',
    project: action.project,
    path: action.file.path,
    pid: action.file.pid,
    agent: action.file.agent,
    verdict: action.file.verdict,
    reason: action.reason,
    trigger,
  };
}
