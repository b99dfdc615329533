import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AuditLog, AuditLogError, auditRecord, defaultAuditLogPath } from '../../src/effects/audit-log.js';
import type { RefusalResult } from '../../src/effects/execute.js';

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sw-audit-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const refusal: RefusalResult = {
  kind: 'refusal',
  project: '/p',
  target: 'job job-1',
  code: 'job_not_terminal',
  reason: 'job job-1 is running, not terminal (use --force to override)',
  explicit: true,
  forced: false,
};

describe('audit log', () => {
  it('defaults to $XDG_STATE_HOME, else ~/.local/state (outside the engine files)', () => {
    expect(defaultAuditLogPath({ XDG_STATE_HOME: '/x/state' }, '/home/u')).toBe('/x/state/stepwise-watchdog/audit.jsonl');
    expect(defaultAuditLogPath({}, '/home/u')).toBe('/home/u/.local/state/stepwise-watchdog/audit.jsonl');
    // A relative XDG_STATE_HOME is invalid per the spec: ignored.
    expect(defaultAuditLogPath({ XDG_STATE_HOME: 'rel' }, '/home/u')).toBe('/home/u/.local/state/stepwise-watchdog/audit.jsonl');
  });

  it('creates its folders 0700 and the file 0600, appends one JSON object per line', () => {
    const file = path.join(dir, 'a', 'b', 'audit.jsonl');
    const log = new AuditLog(file);
    log.probe();
    expect(fs.statSync(path.join(dir, 'a')).mode & 0o777).toBe(0o700);
    expect(fs.statSync(path.join(dir, 'a', 'b')).mode & 0o777).toBe(0o700);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    log.append(auditRecord(refusal, { actor: 'cli' }));
    log.append(auditRecord(refusal, { actor: 'daemon' }), auditRecord(refusal, { actor: 'api' }));
    const lines = fs.readFileSync(file, 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l));
    expect(lines.map((l) => l.actor)).toEqual(['cli', 'daemon', 'api']);
    const rec = lines[0];
    expect(rec).toMatchObject({
      schemaVersion: 1,
      action: 'refusal',
      target: 'job job-1',
      outcome: 'refused',
      code: 'job_not_terminal',
      project: '/p',
      forced: false,
      user: { uid: process.getuid!() },
    });
    expect(Date.parse(rec.time)).not.toBeNaN();
  });

  it('an unwritable log is an AuditLogError with one line naming the path', () => {
    const blocker = path.join(dir, 'a-file');
    fs.writeFileSync(blocker, 'x');
    const log = new AuditLog(path.join(blocker, 'audit.jsonl'));
    expect(() => log.probe()).toThrow(AuditLogError);
    expect(() => log.probe()).toThrow(/audit log .*a-file\/audit\.jsonl unwritable/);
    expect(() => log.append(auditRecord(refusal, { actor: 'cli' }))).toThrow(AuditLogError);
    // A folder where the file should be.
    fs.mkdirSync(path.join(dir, 'is-a-dir'));
    expect(() => new AuditLog(path.join(dir, 'is-a-dir')).probe()).toThrow(AuditLogError);
  });
});
