import { describe, expect, it } from 'vitest';
import { niceMax, point, polyline, quantileMs, Window, type Sample, type Stats } from '../../admin/series.js';

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
});
