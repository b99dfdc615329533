// Memory growth of a long-lived process: least-squares slope of (time, bytes) samples over a
// sliding window. Pure and bounded: samples older than the window are dropped, and at most
// `maxSamples` are kept (the oldest go first), whatever the sampling rate.

export interface Sample {
  t: number; // epoch seconds
  bytes: number;
}

export class SlidingTrend {
  private samples: Sample[] = [];

  constructor(
    readonly windowSeconds: number,
    readonly maxSamples = 720,
  ) {}

  add(sample: Sample): void {
    const last = this.samples[this.samples.length - 1];
    if (last && sample.t < last.t) this.samples = []; // the clock went back: start over
    this.samples.push(sample);
    const from = sample.t - this.windowSeconds;
    let drop = 0;
    while (drop < this.samples.length && this.samples[drop]!.t < from) drop++;
    if (this.samples.length - drop > this.maxSamples) drop = this.samples.length - this.maxSamples;
    if (drop > 0) this.samples.splice(0, drop);
  }

  reset(): void {
    this.samples = [];
  }

  get size(): number {
    return this.samples.length;
  }

  /** Bytes per hour; 0 until there are two samples at least a minute apart. */
  slopePerHour(): number {
    return slopePerHour(this.samples);
  }
}

export function slopePerHour(samples: readonly Sample[]): number {
  const n = samples.length;
  if (n < 2) return 0;
  const t0 = samples[0]!.t;
  if (samples[n - 1]!.t - t0 < 60) return 0;
  let sx = 0;
  let sy = 0;
  for (const s of samples) {
    sx += s.t - t0;
    sy += s.bytes;
  }
  const mx = sx / n;
  const my = sy / n;
  let num = 0;
  let den = 0;
  for (const s of samples) {
    const dx = s.t - t0 - mx;
    num += dx * (s.bytes - my);
    den += dx * dx;
  }
  return den === 0 ? 0 : (num / den) * 3600;
}
