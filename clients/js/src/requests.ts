import { HeraldError } from './errors.js';
import type { QueuedPublish } from './queue.js';

interface Pending {
  resolve: (payload: Record<string, unknown>) => void;
  reject: (e: HeraldError) => void;
  timer: ReturnType<typeof setTimeout>;
  /** Publishes are re-queued, not failed, when the connection drops. */
  publish?: QueuedPublish;
  /**
   * Runs on the reply before any later frame is handled (promise continuations run only after
   * the whole received chunk was dispatched, which may already hold the next messages).
   */
  onReply?: (payload: Record<string, unknown>) => void;
}

/** Commands waiting for their replies, by id: timeouts, replies, and a dropped connection. */
export class Requests {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();

  /**
   * Send a command under a fresh id with `write` (false: not connected, rejected at once) and
   * wait for its reply, at most `timeoutMs`.
   */
  start(
    type: string,
    timeoutMs: number,
    write: (id: number) => boolean,
    publish?: QueuedPublish,
    onReply?: (payload: Record<string, unknown>) => void,
  ): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const id = this.nextId++;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new HeraldError('request_timeout', `no reply to ${type} within ${timeoutMs} ms`, true));
      }, timeoutMs);
      const entry: Pending = { resolve, reject, timer };
      if (publish) entry.publish = publish;
      if (onReply) entry.onReply = onReply;
      this.pending.set(id, entry);
      if (!write(id)) {
        clearTimeout(timer);
        this.pending.delete(id);
        reject(new HeraldError('disconnected', 'not connected', true));
      }
    });
  }

  /** The reply (or `error`) to command `id`, if it still waits. */
  settle(id: number, payload: Record<string, unknown>, error?: HeraldError): void {
    const pending = this.pending.get(id);
    if (!pending) return;
    this.pending.delete(id);
    clearTimeout(pending.timer);
    if (error) {
      pending.reject(error);
    } else {
      pending.onReply?.(payload);
      pending.resolve(payload);
    }
  }

  /**
   * The connection dropped: every command waiting fails as `disconnected`, except publishes,
   * returned in the order they were sent (to be sent again, or failed by the caller).
   */
  drop(): QueuedPublish[] {
    const lost: QueuedPublish[] = [];
    const entries = [...this.pending.entries()].sort((a, b) => a[0] - b[0]);
    this.pending.clear();
    for (const [, p] of entries) {
      clearTimeout(p.timer);
      if (p.publish) lost.push(p.publish);
      else p.reject(new HeraldError('disconnected', 'the connection dropped before the reply', true));
    }
    return lost;
  }
}

/** Requests made while the client is not connected, waiting for the connection. */
export class ConnectionWaiters {
  private readonly waiting = new Set<() => void>();

  /**
   * Resolves at the next {@link ConnectionWaiters.notify} that finds `connected()`; rejects at
   * one that does not (the client closed), when `closed` already, or after `timeoutMs`.
   */
  wait(timeoutMs: number, closed: boolean, connected: () => boolean): Promise<void> {
    return new Promise((resolve, reject) => {
      if (closed) {
        reject(new HeraldError('closed', 'the client is closed'));
        return;
      }
      const done = () => {
        clearTimeout(timer);
        this.waiting.delete(done);
        if (connected()) resolve();
        else reject(new HeraldError('closed', 'the client is closed'));
      };
      const timer = setTimeout(() => {
        this.waiting.delete(done);
        reject(new HeraldError('request_timeout', `not connected within ${timeoutMs} ms`, true));
      }, timeoutMs);
      this.waiting.add(done);
    });
  }

  /** The client connected or closed: settle every waiter. */
  notify(): void {
    for (const w of [...this.waiting]) w();
  }
}
