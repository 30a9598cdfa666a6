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

/** The load a cluster node announces every 2 s (`info.cluster[].load`, see docs/openapi.json). */
export interface NodeLoad {
  subscriptions: number;
  channels: number;
  messages_in: number;
  messages_out: number;
  published: number;
  slow_consumer_disconnects: number;
  queue_dropped: number;
  /** Protocol errors, every code together. */
  errors: number;
  publish_to_send: [number | null, number][];
}

/** A live node of the cluster as `info.cluster` lists it (Redis/NATS engines). */
export interface ClusterNode {
  id: string;
  address: string;
  connections: number;
  uptime_ms: number;
  version: string;
  /** When the node made this announcement (its clock, ms since the epoch). */
  updated_ms: number;
  /** Absent from nodes that predate it. */
  load?: NodeLoad;
}

/** A node's announcement as a poll sample, timed by the announcement itself. */
export function nodeSample(n: ClusterNode): Sample {
  const l = n.load;
  return {
    timeMs: n.updated_ms,
    connections: n.connections,
    stats: l
      ? {
          connections: n.connections,
          subscriptions: l.subscriptions,
          channels: l.channels,
          messages_in: l.messages_in,
          messages_out: l.messages_out,
          published: l.published,
          slow_consumer_disconnects: l.slow_consumer_disconnects,
          queue_dropped: l.queue_dropped,
          errors: { all: l.errors },
          close_codes: {},
          publish_to_send: l.publish_to_send ?? [],
        }
      : null,
  };
}

/** How many line styles (colour and dash) the per-node charts cycle through. */
export const NODE_STYLES = 6;

/** One node's series in the per-node charts. */
export interface NodeSeries {
  id: string;
  /** Line style, kept for as long as the node is listed (0..NODE_STYLES-1). */
  style: number;
  window: Window;
  /** Whether its last announcement carried a load (older nodes announce connections only). */
  hasLoad: boolean;
  last: ClusterNode;
}

/**
 * The per-node series of the cluster: one bounded [`Window`] per node, a point per new
 * announcement (the same announcement seen twice adds nothing). Nodes no longer listed are
 * forgotten, and their style is free for the next node.
 */
export class ClusterWindows {
  readonly nodes = new Map<string, NodeSeries>();

  constructor(private readonly max: number) {}

  push(list: ClusterNode[]): void {
    const listed = new Set(list.map((n) => n.id));
    for (const id of [...this.nodes.keys()]) if (!listed.has(id)) this.nodes.delete(id);
    for (const n of list) {
      let s = this.nodes.get(n.id);
      if (!s) {
        // The least used style (the first free one while there are fewer nodes than styles).
        const uses = new Array<number>(NODE_STYLES).fill(0);
        for (const v of this.nodes.values()) uses[v.style]!++;
        const style = uses.indexOf(Math.min(...uses));
        s = { id: n.id, style, window: new Window(this.max), hasLoad: false, last: n };
        this.nodes.set(n.id, s);
      }
      s.window.push(nodeSample(n));
      s.hasLoad = n.load !== undefined;
      s.last = n;
    }
  }

  /** The series by node id. */
  list(): NodeSeries[] {
    return [...this.nodes.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }
}

/**
 * SVG polyline points placed by time: `end - span` at the left edge, `end` at the right (points
 * outside are dropped; nulls are drawn as 0), scaled to `max` in a `width`×`height` box.
 */
export function timeline(
  points: { timeMs: number; value: number | null }[],
  end: number,
  span: number,
  max: number,
  width: number,
  height: number,
): string {
  const top = max > 0 ? max : 1;
  const start = end - Math.max(1, span);
  return points
    .filter((p) => p.timeMs >= start && p.timeMs <= end)
    .map((p) => {
      const x = ((p.timeMs - start) / (end - start)) * width;
      const y = height - (Math.min(Math.max(0, p.value ?? 0), top) / top) * height;
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    })
    .join(' ');
}
