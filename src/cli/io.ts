// What a command may touch of the outside world: injected so tests run the CLI in-process too.

export interface CliIO {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  env: NodeJS.ProcessEnv;
  cwd: string;
  /** Resolves when the user asks to stop (SIGINT/SIGTERM); long-running commands listen to it. */
  stopSignal: AbortSignal;
}

/** An error whose message is meant for the user, with the exit code it maps to. */
export class UserError extends Error {
  constructor(
    message: string,
    readonly exitCode: number = 2,
  ) {
    super(message);
  }
}

/** Exit codes (documented in the README). */
export const EXIT = {
  ok: 0,
  /** Some action failed (a kill or an unlink). */
  failed: 1,
  /** Usage: bad flag, bad value, no project. */
  usage: 2,
  /** Refused: a source could not be read, so nothing was done. */
  sourceDown: 3,
  /** An explicit request was refused (not reapable, job not terminal). */
  refused: 4,
  /** A bug: an unexpected error (reported in one line). */
  internal: 70,
} as const;
