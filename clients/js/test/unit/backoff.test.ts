import { describe, expect, it } from 'vitest';
import { backoffDelay } from '../../src/backoff.js';

describe('backoffDelay', () => {
  const opts = { minDelayMs: 500, maxDelayMs: 30_000, factor: 2 };

  it('grows exponentially: full jitter between the floor and the ceiling', () => {
    expect(backoffDelay(0, opts, () => 1)).toBe(500);
    expect(backoffDelay(1, opts, () => 1)).toBe(1_000);
    expect(backoffDelay(3, opts, () => 1)).toBe(4_000);
    for (const attempt of [0, 1, 3, 8]) expect(backoffDelay(attempt, opts, () => 0)).toBe(500);
    expect(backoffDelay(3, opts, () => 0.5)).toBe(2_250);
  });

  it('is capped', () => {
    expect(backoffDelay(20, opts, () => 1)).toBe(30_000);
    expect(backoffDelay(1_000, opts, () => 1)).toBe(30_000);
  });

  it('spreads clients: many draws cover the range', () => {
    const draws = Array.from({ length: 500 }, () => backoffDelay(4, opts));
    expect(Math.min(...draws)).toBeGreaterThanOrEqual(500);
    expect(Math.max(...draws)).toBeLessThanOrEqual(8_000);
    expect(new Set(draws).size).toBeGreaterThan(100);
  });
});
