/**
 * The overview's numbers over time: samples of `/admin/api/overview` turned into points for the
 * charts (rates from counter deltas, latency quantiles from histogram bucket deltas). Pure
 * functions, unit-tested in test/unit/admin-series.test.ts.
 */

/** The `stats` object of `/admin/api/overview` (see docs/openapi.json). */
export interface Stats {
  connections: number;
  subscriptions: number;
  channels: number;
  messages_in: number;
  messages_out: number;
  published: number;
  slow_consumer_disconnects: number;
  queue_dropped: number;
  errors: Record<string, number>;
  close_codes: Record<string, number>;
  /** Cumulative buckets: [upper bound in seconds (null = +Inf), count]. */
  publish_to_send: [number | null, number][];
}

/** One poll. */
export interface Sample {
  timeMs: number;
  connections: number;
  stats: Stats | null;
}

/** One chart point set, per poll after the first. */
export interface Point {
  timeMs: number;
  connections: number;
  subscriptions: number;
  inPerSec: number;
  outPerSec: number;
  publishedPerSec: number;
  dropsPerSec: number;
  errorsPerSec: number;
  /** Publish-to-send latency over the interval, milliseconds (null: nothing was sent). */
  p50Ms: number | null;
  p99Ms: number | null;
}

/** Sum of a record's values. */
export function total(r: Record<string, number> | undefined): number {
  return Object.values(r ?? {}).reduce((a, b) => a + b, 0);
}

/**
 * The `q` quantile (0..1) of the observations between two cumulative bucket snapshots, as the
 * upper bound of the bucket it falls in, in milliseconds; null when nothing was observed. The
 * `+Inf` bucket reports the largest finite bound.
 */
export function quantileMs(
  before: [number | null, number][],
  after: [number | null, number][],
  q: number,
): number | null {
  const prev = new Map(before.map(([le, n]) => [le, n]));
  const deltas = after.map(([le, n]) => [le, Math.max(0, n - (prev.get(le) ?? 0))] as const);
  const count = deltas.length ? deltas[deltas.length - 1]![1] : 0;
  if (count <= 0) return null;
  const want = q * count;
  let lastFinite = 0;
  for (const [le, cum] of deltas) {
    if (le !== null) lastFinite = le;
    if (cum >= want) return (le ?? lastFinite) * 1000;
  }
  return lastFinite * 1000;
}

/** The chart point between two polls (rates per second). */
export function point(a: Sample, b: Sample): Point {
  const dt = Math.max(0.001, (b.timeMs - a.timeMs) / 1000);
  const rate = (f: (s: Stats) => number) =>
    a.stats && b.stats ? Math.max(0, (f(b.stats) - f(a.stats)) / dt) : 0;
  return {
    timeMs: b.timeMs,
    connections: b.connections,
    subscriptions: b.stats?.subscriptions ?? 0,
    inPerSec: rate((s) => s.messages_in),
    outPerSec: rate((s) => s.messages_out),
    publishedPerSec: rate((s) => s.published),
    dropsPerSec: rate((s) => s.slow_consumer_disconnects + s.queue_dropped),
    errorsPerSec: rate((s) => total(s.errors)),
    p50Ms: a.stats && b.stats ? quantileMs(a.stats.publish_to_send, b.stats.publish_to_send, 0.5) : null,
    p99Ms: a.stats && b.stats ? quantileMs(a.stats.publish_to_send, b.stats.publish_to_send, 0.99) : null,
  };
}

/** A bounded history of points: the last `max`. */
export class Window {
  readonly points: Point[] = [];
  private last: Sample | undefined;

  constructor(private readonly max: number) {}

  /** Add a poll; returns the new point (none for the first poll). */
  push(s: Sample): Point | undefined {
    const prev = this.last;
    this.last = s;
    if (!prev || s.timeMs <= prev.timeMs) return undefined;
    const p = point(prev, s);
    this.points.push(p);
    if (this.points.length > this.max) this.points.splice(0, this.points.length - this.max);
    return p;
  }
}

/**
 * SVG polyline points for `values` in a `width`×`height` box, scaled to `max` (nulls break
 * nothing: they are drawn as 0).
 */
export function polyline(values: (number | null)[], max: number, width: number, height: number, slots: number): string {
  const step = width / Math.max(1, slots - 1);
  const top = max > 0 ? max : 1;
  const offset = slots - values.length;
  return values
    .map((v, i) => {
      const x = (offset + i) * step;
      const y = height - (Math.min(v ?? 0, top) / top) * height;
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    })
    .join(' ');
}

/** A round axis maximum at or above `v`: 1, 2, 5 × 10^n. */
export function niceMax(v: number): number {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}
