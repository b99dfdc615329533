import type { ClockInfo, ProcessIdentity } from './types.js';

const ISO_RE =
  /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:?\d{2})?$/;

/**
 * Parse an ISO-8601 timestamp as Python's `datetime.isoformat()` writes it
 * ("2026-11-23T01:37:00.579353+00:00") into epoch seconds, keeping microseconds
 * (Date.parse drops them). A missing offset is read as UTC, as stepwise writes UTC.
 */
export function parseIsoEpoch(text: string | null | undefined): number | null {
  if (typeof text !== 'string') return null;
  const m = ISO_RE.exec(text.trim());
  if (!m) return null;
  const [, y, mo, d, h, mi, s, frac, tz] = m;
  const base = Date.UTC(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s)) / 1000;
  if (!Number.isFinite(base)) return null;
  const fraction = frac ? Number(`0.${frac}`) : 0;
  let offset = 0;
  if (tz && tz !== 'Z') {
    const sign = tz.startsWith('-') ? -1 : 1;
    const digits = tz.slice(1).replace(':', '');
    offset = sign * (Number(digits.slice(0, 2)) * 3600 + Number(digits.slice(2, 4)) * 60);
  }
  return base + fraction - offset;
}

/** Wall-clock epoch seconds at which a process started. */
export function startEpoch(clock: ClockInfo, startTicks: number): number {
  return clock.bootTimeEpoch + startTicks / clock.ticksPerSecond;
}

/**
 * Slack for comparing a process start time with a wall-clock timestamp: one clock tick
 * (start times have tick granularity), the uncertainty of the boot time estimate, and the
 * configured tolerance for everything else (file system and SQLite timestamps).
 */
export function comparisonSlack(clock: ClockInfo, toleranceSeconds: number): number {
  return 1 / clock.ticksPerSecond + clock.bootTimeErrorSeconds + toleranceSeconds;
}

export function sameIdentity(a: ProcessIdentity, b: ProcessIdentity): boolean {
  return a.pid === b.pid && a.startTicks === b.startTicks;
}

/** "2m ago", "3h ago", for human reasons. */
export function ago(seconds: number): string {
  if (!Number.isFinite(seconds)) return 'at an unknown time';
  const s = Math.max(0, Math.round(seconds));
  if (s < 90) return `${s}s ago`;
  if (s < 90 * 60) return `${Math.round(s / 60)}m ago`;
  if (s < 36 * 3600) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}
