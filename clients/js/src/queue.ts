import { HeraldError } from './errors.js';
import type { PublishResult } from './protocol.js';

/** A publish waiting for a connection (or sent and waiting for its reply). */
export interface QueuedPublish {
  channel: string;
  data: unknown;
  key: string;
  resolve: (r: PublishResult) => void;
  reject: (e: HeraldError) => void;
  expiry: ReturnType<typeof setTimeout> | undefined;
}

/**
 * Publishes made while disconnected: at most `maxSize` (more fail with `queue_full`), each for at
 * most `maxAgeMs` (then `queue_expired`). Publishes whose reply was lost with the connection go
 * back to the front, in their original order, and are not refused for lack of room.
 */
export class OfflineQueue {
  private readonly items: QueuedPublish[] = [];

  constructor(
    private readonly maxSize: number,
    private readonly maxAgeMs: number,
  ) {}

  add(p: QueuedPublish, front = false): void {
    if (!front && this.items.length >= this.maxSize) {
      p.reject(new HeraldError('queue_full', `offline queue full (${this.maxSize} publishes)`, true));
      return;
    }
    p.expiry = setTimeout(() => {
      const i = this.items.indexOf(p);
      if (i >= 0) this.items.splice(i, 1);
      p.reject(new HeraldError('queue_expired', `not connected within ${this.maxAgeMs} ms`, true));
    }, this.maxAgeMs);
    if (front) this.items.unshift(p);
    else this.items.push(p);
  }

  /** Everything queued, in order (the caller sends them; their expiry timers are its to clear). */
  takeAll(): QueuedPublish[] {
    return this.items.splice(0);
  }
}

/** A fresh idempotency key for a publish. */
export function randomKey(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (c?.randomUUID) return c.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;
}
