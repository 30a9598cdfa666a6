/**
 * What a connection attempt carries at the handshake besides the token, and what a refused one
 * says about when to come back (docs/protocol.md §8 "Resuming without the connect proxy", §10.5).
 */

/** A `Retry-After` is a hint, not an order to wait for hours: at most ten minutes. */
export const RETRY_AFTER_CAP_MS = 600_000;

/**
 * `url` with `resume=<token>` added to its query (other parameters kept as they are): a WebSocket
 * in a browser cannot set the `Herald-Resume` header.
 */
export function withResumeParam(url: string, resumeToken: string): string {
  const u = new URL(url);
  const param = `resume=${encodeURIComponent(resumeToken)}`;
  u.search = u.search.length > 1 ? `${u.search}&${param}` : `?${param}`;
  return u.toString();
}

/**
 * The delay a refusal asks for, in ms: a `Retry-After` in whole seconds on a 503 (a busy node) or
 * a 429 (a rate limit), capped at {@link RETRY_AFTER_CAP_MS}. Herald sends seconds; an HTTP date
 * (or anything else) is ignored, as is the header on other statuses.
 */
export function retryAfterMs(status: number, value: string | null | undefined): number | undefined {
  if (status !== 503 && status !== 429) return undefined;
  const v = value?.trim();
  if (!v || !/^\d+$/.test(v)) return undefined;
  return Math.min(Number(v) * 1_000, RETRY_AFTER_CAP_MS);
}

/** The parts of npm `ws` used to see a refused upgrade (an EventEmitter; browsers have none). */
interface RefusalEmitter {
  on(event: 'unexpected-response', fn: (req: unknown, res: { statusCode?: number; headers?: Record<string, unknown> }) => void): unknown;
  terminate(): void;
}

/**
 * With npm `ws` (Node), watch the answer of a refused upgrade and report its `Retry-After`.
 * Browsers and Node's built-in WebSocket do not expose the refused answer: there a busy node
 * closes with 1013 and a `disconnect` advisory instead (its `reconnect_after_ms`).
 */
export function watchRefusal(ws: unknown, report: (ms: number) => void): void {
  const w = ws as Partial<RefusalEmitter>;
  if (typeof w.on !== 'function' || typeof w.terminate !== 'function') return;
  w.on.call(ws, 'unexpected-response', (_req, res) => {
    const h = res.headers?.['retry-after'];
    const ms = retryAfterMs(res.statusCode ?? 0, typeof h === 'string' ? h : undefined);
    if (ms !== undefined) report(ms);
    // With a listener `ws` leaves the handshake to us: end it as it would (a 1006 close follows).
    w.terminate?.call(ws);
  });
}
