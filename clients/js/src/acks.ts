/**
 * At-least-once delivery on the client side (docs/protocol.md §4 `ack`, §5 `gap`, §8a): the
 * cumulative, batched acks of one subscription, and the serial queue that hands its messages to
 * asynchronous handlers one at a time.
 */
import type { Message, StreamPosition } from './protocol.js';

/** How an at-least-once subscription acknowledges. */
export type AckMode =
  /** (default) A message is acknowledged once its `message` handlers returned (promises resolved). */
  | 'auto'
  /** The application calls `subscription.ack(offset)` once it processed everything up to `offset`. */
  | 'manual';

/** The delivery guarantee of a subscription, as the subscribe reply (or `subscribed` push) says. */
export interface DeliveryInfo {
  delivery: 'at_least_once';
  /** Publications the server keeps in flight (sent, not yet acknowledged) per subscription. */
  ackWindow: number;
  /** Wait before the server sends unacknowledged publications again, ms. */
  ackTimeoutMs: number;
}

/** The server's default `ack_window` (docs/protocol.md §8a). */
export const DEFAULT_ACK_WINDOW = 128;
/** At most one ack per channel this often (unless half the window is unacknowledged). */
export const ACK_DELAY_MS = 100;

/** The delivery fields of a subscribe reply or `subscribed` push, if at-least-once. */
export function deliveryOf(r: Record<string, unknown>): DeliveryInfo | undefined {
  if (r.delivery !== 'at_least_once') return undefined;
  const window = Number(r.ack_window);
  const timeout = Number(r.ack_timeout_ms);
  return {
    delivery: 'at_least_once',
    ackWindow: Number.isFinite(window) && window > 0 ? window : DEFAULT_ACK_WINDOW,
    ackTimeoutMs: Number.isFinite(timeout) && timeout > 0 ? timeout : 5_000,
  };
}

/**
 * The acks of one channel. `sent` is the highest offset the server holds as acknowledged (by an
 * `ack` on this connection, a `resume`/`recover` position, a subscribe reply or a `gap`); `done`
 * the highest offset the application processed. An ack of `done` goes out at once when
 * `done − sent ≥ max(1, ⌊ack_window/2⌋)`, else 100 ms after the first unsent processed offset.
 * Never above `limit`, the last offset the server sent on its subscription (above it the server
 * answers with a violation, §4 `ack`): after a resubscription the server sends again what the
 * application may already have processed.
 */
export class AckTracker {
  private epoch: string | undefined;
  private sent = 0;
  private done = 0;
  private limit = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    /** Sends `{"type":"ack"}` for `offset`; false when it could not be sent (not connected). */
    private readonly send: (offset: number) => boolean,
    public window: number,
  ) {}

  /** The server holds everything up to `p` as acknowledged: no ack is needed for it. */
  covered(p: StreamPosition): void {
    if (this.epoch !== p.epoch) {
      this.epoch = p.epoch;
      this.sent = p.offset;
      this.done = p.offset;
      this.limit = p.offset;
    } else {
      this.sent = Math.max(this.sent, p.offset);
      this.done = Math.max(this.done, this.sent);
      this.limit = Math.max(this.limit, this.sent);
    }
    if (this.done <= this.sent) this.cancel();
  }

  /** A new subscription on the server (a subscribe reply): it has sent nothing above `sent` yet. */
  subscribed(): void {
    this.limit = this.sent;
  }

  /** The server sent `p` (also a duplicate): acks up to it are allowed. */
  received(p: StreamPosition): void {
    if (this.epoch !== p.epoch || p.offset <= this.limit) return;
    this.limit = p.offset;
    if (this.done > this.sent) this.schedule();
  }

  /** Whether the server holds `p` as acknowledged (it will not send it again). */
  isCovered(p: StreamPosition): boolean {
    return this.epoch === p.epoch && p.offset <= this.sent;
  }

  /** The application processed everything up to `p`. */
  processed(p: StreamPosition): void {
    if (this.epoch === undefined) this.covered({ offset: 0, epoch: p.epoch });
    if (this.epoch !== p.epoch || p.offset <= this.done) return;
    this.done = p.offset;
    if (this.done - this.sent >= Math.max(1, Math.floor(this.window / 2))) this.flush();
    else this.schedule();
  }

  /** Back on a connection: send what is still owed (processed while no ack could go out). */
  reconnected(): void {
    if (this.done > this.sent) this.schedule();
  }

  /** The connection ended: unsent acks are dropped (the resume positions carry them). */
  cancel(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private schedule(): void {
    if (this.timer === undefined) this.timer = setTimeout(() => this.flush(), ACK_DELAY_MS);
  }

  private flush(): void {
    this.cancel();
    const upTo = Math.min(this.done, this.limit);
    if (upTo > this.sent && this.send(upTo)) this.sent = upTo;
  }
}

/** One item of a subscription's delivery queue: a message, or an event that must keep its place. */
export type Delivery<T> = { message: Message<T> } | { event: () => void };

/** What the serial queue needs from its subscription. */
export interface SerialHost<T> {
  /** Call the `message` handlers with the message; their results (values or promises). */
  handle(m: Message<T>): { results: unknown[]; thrown: unknown[] };
  /** Every handler of `m` returned (their promises resolved). */
  done(m: Message<T>): void;
  /** A handler of `m` threw or its promise rejected. */
  failed(m: Message<T>, error: unknown): void;
}

/**
 * Hands one channel's messages to the `message` handlers one at a time, in order: the next one
 * only after every handler of the previous one returned and its promise (if any) settled.
 * Synchronous handlers run synchronously. Bounded by its owner (see {@link SerialQueue.length}).
 */
export class SerialQueue<T> {
  private readonly items: Delivery<T>[] = [];
  /** The message whose handlers are running (a promise is pending). */
  private running: Message<T> | undefined;
  /** Bumped by `clear()`: a handler that settles afterwards is ignored. */
  private generation = 0;
  private draining = false;

  constructor(private readonly host: SerialHost<T>) {}

  get length(): number {
    return this.items.length + (this.running ? 1 : 0);
  }

  /** The offset of the first message not processed yet (running or queued), if any. */
  firstUnprocessed(): Message<T> | undefined {
    if (this.running) return this.running;
    for (const d of this.items) if ('message' in d) return d.message;
    return undefined;
  }

  push(d: Delivery<T>): void {
    this.items.push(d);
    this.drain();
  }

  /** Drop everything queued; a running handler's outcome is then ignored. */
  clear(): void {
    this.items.length = 0;
    this.running = undefined;
    this.generation++;
  }

  private drain(): void {
    if (this.draining) return; // a handler pushed: the loop below takes it in turn
    this.draining = true;
    try {
      this.drainLoop();
    } finally {
      this.draining = false;
    }
  }

  private drainLoop(): void {
    while (!this.running) {
      const d = this.items.shift();
      if (!d) return;
      if ('event' in d) {
        d.event();
        continue;
      }
      const m = d.message;
      const { results, thrown } = this.host.handle(m);
      if (thrown.length > 0) {
        this.host.failed(m, thrown[0]);
        continue;
      }
      const promises = results.filter(isThenable);
      if (promises.length === 0) {
        this.host.done(m);
        continue;
      }
      this.running = m;
      const gen = this.generation;
      void Promise.allSettled(promises).then((outcomes) => {
        if (gen !== this.generation) return;
        this.running = undefined;
        const rejected = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
        if (rejected) this.host.failed(m, rejected.reason);
        else this.host.done(m);
        this.drain();
      });
    }
  }
}

function isThenable(v: unknown): v is PromiseLike<unknown> {
  return (typeof v === 'object' || typeof v === 'function') && v !== null && typeof (v as PromiseLike<unknown>).then === 'function';
}
