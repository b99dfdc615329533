import { describe, expect, it } from 'vitest';
import { SlidingTrend, slopePerHour } from '../../src/core/trend.js';

describe('memory growth slope', () => {
  it('is the least-squares slope in bytes per hour', () => {
    const samples = Array.from({ length: 61 }, (_, i) => ({ t: 1000 + i * 60, bytes: 100e6 + i * 1e6 })); // 1 MB/min
    expect(slopePerHour(samples)).toBeCloseTo(60e6, 0);
  });
  it('ignores noise around a flat line', () => {
    const samples = Array.from({ length: 100 }, (_, i) => ({ t: i * 30, bytes: 5e8 + (i % 2 ? 1e6 : -1e6) }));
    expect(Math.abs(slopePerHour(samples))).toBeLessThan(1e5);
  });
  it('is 0 with too few or too close samples', () => {
    expect(slopePerHour([])).toBe(0);
    expect(slopePerHour([{ t: 0, bytes: 1 }, { t: 10, bytes: 1e9 }])).toBe(0);
  });
  it('keeps only the window, and never more than maxSamples', () => {
    const trend = new SlidingTrend(3600, 50);
    for (let i = 0; i < 10_000; i++) trend.add({ t: i * 15, bytes: i });
    expect(trend.size).toBe(50);
    const wide = new SlidingTrend(600, 10_000);
    for (let i = 0; i < 1_000; i++) wide.add({ t: i * 15, bytes: i });
    expect(wide.size).toBe(41); // 600 s / 15 s + the newest
  });
  it('starts over when the clock goes back', () => {
    const trend = new SlidingTrend(3600);
    trend.add({ t: 100, bytes: 1 });
    trend.add({ t: 50, bytes: 2 });
    expect(trend.size).toBe(1);
  });
});
