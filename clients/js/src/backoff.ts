/** Reconnect delays: exponential growth, capped, with full jitter. */
export interface BackoffOptions {
  /** Delay floor before the first reconnect attempt, ms (default 500). */
  minDelayMs?: number;
  /** Cap, ms (default 30 000). */
  maxDelayMs?: number;
  /** Growth per attempt (default 2). */
  factor?: number;
}

/**
 * Delay before reconnect attempt `attempt` (0-based): a random value in
 * `[min, min(max, min * factor^attempt)]` ("full jitter" above the floor), so clients that lost
 * the same server spread out instead of returning together.
 */
export function backoffDelay(attempt: number, opts: BackoffOptions = {}, random = Math.random): number {
  const min = opts.minDelayMs ?? 500;
  const max = Math.max(min, opts.maxDelayMs ?? 30_000);
  const factor = opts.factor ?? 2;
  const ceiling = Math.min(max, min * Math.pow(factor, Math.max(0, attempt)));
  return Math.round(min + random() * (ceiling - min));
}
