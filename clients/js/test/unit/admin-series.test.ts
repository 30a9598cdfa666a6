import { describe, expect, it } from 'vitest';
import {
  ClusterWindows,
  NODE_STYLES,
  niceMax,
  point,
  polyline,
  quantileMs,
  timeline,
  Window,
  type ClusterNode,
  type NodeLoad,
  type Sample,
  type Stats,
} from '../../admin/series.js';

function stats(over: Partial<Stats> = {}): Stats {
  return {
    connections: 0,
    subscriptions: 0,
    channels: 0,
    messages_in: 0,
    messages_out: 0,
    published: 0,
    slow_consumer_disconnects: 0,
    queue_dropped: 0,
    errors: {},
    close_codes: {},
    publish_to_send: [],
    ...over,
  };
}

describe('admin overview series', () => {
  it('turns counter deltas into rates per second', () => {
    const a: Sample = { timeMs: 1_000, connections: 1, stats: stats({ messages_in: 10, errors: { bad_request: 1 } }) };
    const b: Sample = {
      timeMs: 3_000,
      connections: 2,
      stats: stats({ messages_in: 30, messages_out: 8, errors: { bad_request: 3, too_large: 2 } }),
    };
    const p = point(a, b);
    expect(p.inPerSec).toBe(10);
    expect(p.outPerSec).toBe(4);
    expect(p.errorsPerSec).toBe(2);
    expect(p.connections).toBe(2);
  });

  it('takes latency quantiles from the buckets filled in the interval', () => {
    const before: [number | null, number][] = [[0.001, 5], [0.01, 5], [null, 5]];
    const after: [number | null, number][] = [[0.001, 5], [0.01, 104], [null, 105]];
    expect(quantileMs(before, after, 0.5)).toBe(10);
    expect(quantileMs(before, after, 0.99)).toBe(10);
    expect(quantileMs(before, after, 1)).toBe(10);
    expect(quantileMs(after, after, 0.5)).toBeNull();
  });

  it('keeps a bounded window and draws within the box', () => {
    const w = new Window(3);
    expect(w.push({ timeMs: 0, connections: 0, stats: stats() })).toBeUndefined();
    for (let i = 1; i <= 5; i++) w.push({ timeMs: i * 1000, connections: i, stats: stats() });
    expect(w.points.map((p) => p.connections)).toEqual([3, 4, 5]);
    expect(polyline([0, 5, 10], 10, 100, 50, 3)).toBe('0.0,50.0 50.0,25.0 100.0,0.0');
    expect(niceMax(0)).toBe(1);
    expect(niceMax(3.2)).toBe(5);
    expect(niceMax(120)).toBe(200);
  });

  it('turns each node\'s announcements into its own series, one point per new announcement', () => {
    const load = (over: Partial<NodeLoad> = {}): NodeLoad => ({
      subscriptions: 0,
      channels: 0,
      messages_in: 0,
      messages_out: 0,
      published: 0,
      slow_consumer_disconnects: 0,
      queue_dropped: 0,
      errors: 0,
      publish_to_send: [],
      ...over,
    });
    const node = (id: string, t: number, connections: number, l?: NodeLoad): ClusterNode => ({
      id,
      address: '127.0.0.1:1',
      connections,
      uptime_ms: t,
      version: 'test',
      updated_ms: t,
      ...(l ? { load: l } : {}),
    });
    const c = new ClusterWindows(10);
    c.push([node('a', 0, 0, load()), node('old', 0, 4)]);
    // Polled again before a new announcement: nothing is added.
    c.push([node('a', 0, 0, load()), node('old', 0, 4)]);
    c.push([
      node('a', 2_000, 3, load({ subscriptions: 3, messages_in: 40, errors: 2, publish_to_send: [[0.001, 0], [null, 0]] })),
      node('old', 2_000, 5),
    ]);
    c.push([
      node('a', 4_000, 3, load({ subscriptions: 3, messages_in: 40, errors: 2, publish_to_send: [[0.001, 9], [null, 10]] })),
      node('old', 4_000, 5),
    ]);
    const [a, old] = c.list();
    expect(a!.window.points.map((p) => [p.timeMs, p.connections, p.subscriptions, p.inPerSec, p.errorsPerSec])).toEqual([
      [2_000, 3, 3, 20, 1],
      [4_000, 3, 3, 0, 0],
    ]);
    expect([a!.window.points[0]!.p99Ms, a!.window.points[1]!.p99Ms]).toEqual([null, 1]);
    expect(a!.hasLoad).toBe(true);
    expect(old!.hasLoad).toBe(false);
    expect(old!.window.points.map((p) => p.connections)).toEqual([5, 5]);
    expect([a!.style, old!.style]).toEqual([0, 1]);
    // A node that leaves is forgotten and its style goes to the next one.
    c.push([node('b', 6_000, 1, load())]);
    expect(c.list().map((s) => [s.id, s.style])).toEqual([['b', 0]]);
    // More nodes than styles: each style is used as evenly as possible.
    const many = new ClusterWindows(10);
    many.push(Array.from({ length: NODE_STYLES + 2 }, (_, i) => node(`n${i}`, 0, 0)));
    const uses = new Array<number>(NODE_STYLES).fill(0);
    for (const s of many.list()) uses[s.style]!++;
    expect(Math.max(...uses) - Math.min(...uses)).toBeLessThanOrEqual(1);
  });

  it('places per-node points by time and drops those outside the span', () => {
    const pts = [
      { timeMs: 0, value: 5 },
      { timeMs: 50_000, value: 10 },
      { timeMs: 100_000, value: null },
      { timeMs: 101_000, value: 1 },
    ];
    expect(timeline(pts, 100_000, 50_000, 10, 100, 50)).toBe('0.0,0.0 100.0,50.0');
    expect(timeline([], 100_000, 50_000, 10, 100, 50)).toBe('');
  });
});
