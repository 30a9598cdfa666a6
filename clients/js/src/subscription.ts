import { AckTracker, DEFAULT_ACK_WINDOW, SerialQueue, type AckMode, type DeliveryInfo } from './acks.js';
import { applyFossil, type DeltaFormat } from './delta.js';
import { Emitter } from './emitter.js';
import { HeraldError } from './errors.js';
import type { ClientInfo, HistoryResult, Message, StreamPosition } from './protocol.js';

/** Why a subscription could not be brought up to date. */
export type GapReason =
  /** The channel's stream was reset (server restart without persistent history, flushed engine). */
  | 'epoch_changed'
  /** Publications after the last one received are no longer in history (trimmed, or no history). */
  | 'trimmed'
  /**
   * Offsets were skipped inside the epoch of a namespace whose slow-consumer policy drops
   * messages (`drop_oldest`, `latest`; the subscribe reply says so): this client read too slowly
   * and the server dropped them, by policy.
   */
  | 'dropped'
  /** Offsets were skipped inside the epoch where nothing should be dropped: a loss. */
  | 'skipped'
  /**
   * At-least-once subscriptions: the server gave up publications that were sent
   * `ack_max_attempts` times and never acknowledged (a `gap` push, docs/protocol.md §5).
   */
  | 'unacknowledged';

/** Publications were lost between `after` and the current stream position. */
export interface Gap {
  channel: string;
  reason: GapReason;
  /** The last position this client held before the gap. */
  after: StreamPosition;
  /** Delivery continues after this position (replayed publications first, then live ones). */
  now: StreamPosition;
}

/** Events of a subscription; `T` is the type of its messages' data. */
export interface SubscriptionEvents<T> {
  /**
   * A publication, in offset order, never twice. On an at-least-once subscription in `auto` ack
   * mode a handler may return a promise: the next message waits for it, and the message is
   * acknowledged once every handler returned (or resolved); a throw or rejection is a failure
   * (see {@link SubscribeOptions.ack}).
   */
  message: Message<T>;
  /** The server confirmed the subscription (also after every reconnect). */
  subscribed: { position: StreamPosition; recovered: boolean | undefined; resubscribed: boolean };
  /** Messages were lost (see {@link Gap}); fetch `history` or reload state. */
  gap: Gap;
  /** A client joined the channel (namespaces with `join_leave`). */
  join: ClientInfo;
  /** A client left the channel. */
  leave: ClientInfo;
  /** The subscription ended: by `unsubscribe()`, by the server, or after a refusal. */
  unsubscribed: { byServer: boolean; error?: HeraldError };
  /**
   * A subscribe attempt failed (retryable errors are retried after a delay), `parse` rejected a
   * message (`malformed`), or a `message` handler of an at-least-once subscription failed
   * (`handler_failed`).
   */
  error: HeraldError;
}

/** What the client needs from a subscription's owner. */
export interface SubscriptionOwner {
  unsubscribe(channel: string): void;
  history<T>(channel: string, opts?: { since?: StreamPosition; limit?: number; reverse?: boolean }): Promise<HistoryResult<T>>;
  presence(channel: string): Promise<ClientInfo[]>;
  /** Send `{"type":"ack"}` (no id) if connected; false if it could not be sent. */
  sendAck(channel: string, offset: number): boolean;
  /**
   * A delta could not be applied: send `unsubscribe` and at once `subscribe` with `recover` from
   * the last position delivered (the subscription stays, for the application).
   */
  resyncDeltas(channel: string): void;
}

/** Options of one subscription. */
export interface SubscribeOptions<T> {
  /** A channel token (for `private` namespaces), or a function that fetches one per attempt. */
  token?: string | (() => Promise<string>);
  /** Start from this position instead of "now" (publications after it are delivered first). */
  since?: StreamPosition;
  /** Validate or convert each message's data; a throw drops the message and emits `error`. */
  parse?: (data: unknown) => T;
  /**
   * How an at-least-once subscription (namespace with `delivery = "at_least_once"`) acknowledges
   * what it processed: `auto` (default) once the `message` handlers returned, their promises
   * resolved; `manual`: the application calls {@link Subscription.ack}. Ignored on other
   * subscriptions.
   */
  ack?: AckMode;
}

/** A channel subscription. Events: {@link SubscriptionEvents}. */
export class Subscription<T = unknown> extends Emitter<SubscriptionEvents<T>> {
  /** `pending` until the server confirms, `subscribed`, or `unsubscribed` (final). */
  state: 'pending' | 'subscribed' | 'unsubscribed' = 'pending';
  /** The last position received (offset of the last message delivered). */
  position: StreamPosition | undefined;
  /** Subscribed by the server (API or connect proxy) rather than by this client. */
  readonly byServer: boolean;
  /** A gap was just reported (trimmed): the skip the next message shows is that same gap. */
  private gapReported = false;
  /** The namespace drops messages for slow readers: a skip is a drop by policy. */
  private lossy = false;
  /** `at_least_once` when the server wants acks (the subscribe reply says so), else `at_most_once`. */
  delivery: 'at_most_once' | 'at_least_once' = 'at_most_once';
  /** At-least-once: the server's `ack_window` (publications in flight, unacknowledged, at most). */
  ackWindow: number | undefined;
  /** At-least-once: the server's `ack_timeout_ms` (wait before it sends a publication again). */
  ackTimeoutMs: number | undefined;
  /**
   * `fossil` when the server sends this channel's messages as delta updates (the subscribe reply
   * says so; docs/protocol.md §5): the client applies them, the application sees whole data.
   */
  delta: DeltaFormat | undefined;
  /** Delta subscriptions: the data text of the last message received, the base of the next delta. */
  private base: { text: string; offset: number; epoch: string } | undefined;
  /** Delta subscriptions: a delta did not apply; messages are ignored until the resubscribe reply. */
  private resyncing = false;
  /** At-least-once: the acks of this channel. */
  private acks: AckTracker | undefined;
  /** At-least-once, `auto` mode: messages handed to the handlers one at a time. */
  private serial: SerialQueue<T> | undefined;
  /**
   * At-least-once: a message that was not processed (its handler failed, or no room): later ones
   * are dropped until the server sends it again.
   */
  private awaiting: number | undefined;
  /** @internal Subscribe attempts that failed in a row (for the retry delay). */
  _failures = 0;
  private waiters: { resolve: () => void; reject: (e: HeraldError) => void }[] = [];

  /** @internal */
  constructor(
    readonly channel: string,
    private readonly owner: SubscriptionOwner,
    /** @internal */
    readonly options: SubscribeOptions<T> = {},
    byServer = false,
  ) {
    super();
    this.byServer = byServer;
    this.position = options.since;
  }

  /** Resolves once the server confirmed the subscription; rejects if it was refused. */
  ready(): Promise<void> {
    if (this.state === 'subscribed') return Promise.resolve();
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** Leave the channel. */
  unsubscribe(): void {
    this.owner.unsubscribe(this.channel);
  }

  /** Publications of this channel from history. */
  history(opts?: { since?: StreamPosition; limit?: number; reverse?: boolean }): Promise<HistoryResult<T>> {
    return this.owner.history<T>(this.channel, opts);
  }

  /** Clients subscribed to this channel now. */
  presence(): Promise<ClientInfo[]> {
    return this.owner.presence(this.channel);
  }

  /**
   * At-least-once, `manual` ack mode: the application processed every message of this channel up
   * to and including `offset` (cumulative). Sent batched: at once when half the `ack_window` is
   * unacknowledged, else within 100 ms. Ignored in `auto` mode, on other subscriptions, and for
   * offsets above the last message delivered.
   */
  ack(offset: number): void {
    const held = this.position;
    if (!this.acks || this.options.ack !== 'manual' || !held || offset > held.offset) return;
    this.acks.processed({ offset, epoch: held.epoch });
  }

  /** @internal The position to resume or recover from (the server takes it as an ack, §8a). */
  _recoveryPosition(): StreamPosition | undefined {
    let p = this.position;
    // Auto mode: messages still queued or running are not processed; the server keeps them.
    const first = this.serial?.firstUnprocessed();
    if (p && first && first.epoch === p.epoch && first.offset <= p.offset) p = { offset: first.offset - 1, epoch: p.epoch };
    if (p && this.acks) {
      this.acks.cancel();
      this.acks.covered(p);
    }
    return p;
  }

  /** @internal The connection ended: acks not sent yet are dropped (resume positions carry them). */
  _connectionLost(): void {
    this.acks?.cancel();
    // A resynchronization in flight is over: the next connection resumes or subscribes anew.
    this.resyncing = false;
  }

  /** @internal A delta resynchronization was sent and its subscribe reply has not come yet. */
  get _resyncing(): boolean {
    return this.resyncing;
  }

  /** @internal A `gap` push (at-least-once): the server gave up offsets up to `to`. */
  _gapPush(epoch: string, to: number, reason: GapReason): void {
    const held = this.position;
    if (!held || held.epoch !== epoch || to <= held.offset) return;
    const now = { offset: to, epoch };
    this.position = now;
    this.gapReported = false;
    if (this.awaiting !== undefined && this.awaiting <= to) this.awaiting = undefined;
    this.acks?.covered(now); // the server moved on as if `to` were acknowledged
    this.inOrder(() => this.emit('gap', { channel: this.channel, reason, after: held, now }));
  }

  /** @internal The server confirmed (or re-confirmed) the subscription. */
  _confirmed(
    now: StreamPosition,
    recovered: boolean | undefined,
    resubscribed: boolean,
    missed = 0,
    lossy = false,
    delivery?: DeliveryInfo,
    delta?: DeltaFormat,
  ): void {
    const held = this.position;
    this.lossy = lossy;
    this.setDelivery(delivery);
    // After a subscribe (or recovery) the first message comes whole.
    this.delta = delta;
    this.base = undefined;
    this.resyncing = false;
    this._failures = 0;
    this.gapReported = false;
    // The replayed publications (if any) are offsets now − missed + 1 … now.
    const from = { offset: Math.max(0, now.offset - missed), epoch: now.epoch };
    if (held && held.epoch !== now.epoch) {
      this.inOrder(() => this.emit('gap', { channel: this.channel, reason: 'epoch_changed', after: held, now: from }));
      this.position = from;
      this.awaiting = undefined;
      this.acks?.covered(from);
    } else if (held && recovered === false) {
      this.inOrder(() => this.emit('gap', { channel: this.channel, reason: 'trimmed', after: held, now: from }));
      this.position = from;
      this.awaiting = undefined;
      this.acks?.covered(from);
    } else if (!held) {
      this.position = now;
      this.acks?.covered(now);
    }
    this.state = 'subscribed';
    this.acks?.subscribed();
    this.acks?.reconnected();
    this.emit('subscribed', { position: now, recovered, resubscribed });
    for (const w of this.waiters.splice(0)) w.resolve();
  }

  /** @internal A resume kept the subscription; `recovered: false` means a gap. */
  _resumed(recovered: boolean | undefined): void {
    const held = this.position;
    // The resumed session keeps its delta base: the last message it sent, which is the one held
    // (what this client missed comes whole, resetting the base on both sides).
    this.resyncing = false;
    if (held && recovered === false) {
      this.inOrder(() => this.emit('gap', { channel: this.channel, reason: 'trimmed', after: held, now: held }));
      this.gapReported = true;
    }
    this.state = 'subscribed';
    this.acks?.reconnected();
    for (const w of this.waiters.splice(0)) w.resolve();
  }

  /** @internal Deliver a message unless it is a duplicate. */
  _message(wire: Message<unknown> & { delta?: unknown }, onParseError: (e: unknown) => HeraldError): void {
    // Waiting for the reply of a delta resynchronization: what comes before it is not applicable.
    if (this.resyncing) return;
    const { delta: isDelta, ...m } = wire;
    const held = this.position;
    const sameEpoch = held !== undefined && held.epoch === m.epoch;
    this.acks?.received(m);
    if (held && sameEpoch && m.offset <= held.offset) return;
    if (this.acks) {
      // Waiting for a message that was not processed: what follows it comes again after it.
      if (held && sameEpoch && this.awaiting !== undefined && m.offset > held.offset + 1) return;
      if (this.serial && this.serial.length >= 2 * (this.ackWindow ?? DEFAULT_ACK_WINDOW)) {
        // More than the server should have in flight: not taken, so not acknowledged; it comes again.
        if (this.awaiting === undefined) {
          this.emit('error', new HeraldError('queue_full', `${this.channel}: too many messages waiting for the handlers`, true));
        }
        this.awaiting = m.offset;
        return;
      }
      this.awaiting = undefined;
    }
    // Delta subscriptions: the data text, whole or the previous text with a delta applied.
    let value: unknown = m.data;
    let malformed: HeraldError | undefined;
    if (isDelta === true) {
      const b = this.base;
      if (this.delta !== 'fossil' || typeof m.data !== 'string' || !b || b.epoch !== m.epoch || m.offset !== b.offset + 1) {
        this.resync();
        return;
      }
      let text: string;
      try {
        text = applyFossil(b.text, m.data);
        value = JSON.parse(text);
      } catch {
        this.resync(); // a bad checksum (another base), a malformed delta, or not JSON text
        return;
      }
      this.base = { text, offset: m.offset, epoch: m.epoch };
    } else if (this.delta !== undefined) {
      if (typeof m.data === 'string') {
        // The next delta applies to this text exactly as it is, whatever it holds.
        this.base = { text: m.data, offset: m.offset, epoch: m.epoch };
        try {
          value = JSON.parse(m.data);
        } catch (e) {
          malformed = new HeraldError('malformed', `${this.channel}: message data is not JSON text: ${String(e)}`);
        }
      } else {
        this.base = undefined; // not text: no base for a delta
      }
    }
    const now = { offset: Math.max(0, m.offset - 1), epoch: m.epoch };
    if (held && !sameEpoch && !this.gapReported) {
      // The stream was reset under a live subscription (unless a resume just reported it).
      this.inOrder(() => this.emit('gap', { channel: this.channel, reason: 'epoch_changed', after: held, now }));
    } else if (held && sameEpoch && m.offset > held.offset + 1 && !this.gapReported) {
      // A jump inside the epoch: dropped by the namespace's policy, or lost; either way the
      // application hears about it (unless a resume just reported it as trimmed).
      const reason = this.lossy ? 'dropped' : 'skipped';
      this.inOrder(() => this.emit('gap', { channel: this.channel, reason, after: held, now }));
    }
    if (held && !sameEpoch) {
      this.acks?.covered(now); // what was in flight in the old epoch is over
      this.acks?.received(m);
    }
    this.gapReported = false;
    const position = { offset: m.offset, epoch: m.epoch };
    let data: T;
    try {
      if (malformed) throw malformed;
      data = this.options.parse ? this.options.parse(value) : (value as T);
    } catch (e) {
      this.position = position;
      const err = malformed ?? onParseError(e);
      // Dropped by the application's own rule: processed, as far as acks go (in auto mode).
      this.inOrder(() => {
        this.emit('error', err);
        if (this.serial) this.acks?.processed(position);
      });
      return;
    }
    this.position = position;
    if (this.serial && this.acks) this.serial.push({ message: { ...m, data } });
    else this.emit('message', { ...m, data });
  }

  /**
   * A delta did not apply: not shown to the application. Leave and subscribe again with `recover`
   * from the last position delivered; the replayed messages come whole. The subscription object
   * stays (no `unsubscribed`); it is `pending` until the reply (then `subscribed` is emitted).
   */
  private resync(): void {
    this.resyncing = true;
    this.base = undefined;
    this.state = 'pending';
    this.owner.resyncDeltas(this.channel);
  }

  /** Emit now, or after the messages still waiting for the handlers (auto-ack queue). */
  private inOrder(emit: () => void): void {
    if (this.serial && this.acks) this.serial.push({ event: emit });
    else emit();
  }

  /** Apply the delivery fields of a subscribe reply or `subscribed` push. */
  private setDelivery(d: DeliveryInfo | undefined): void {
    if (!d) {
      this.delivery = 'at_most_once';
      this.ackWindow = this.ackTimeoutMs = undefined;
      this.acks?.cancel();
      this.acks = undefined;
      this.awaiting = undefined;
      return;
    }
    this.delivery = d.delivery;
    this.ackWindow = d.ackWindow;
    this.ackTimeoutMs = d.ackTimeoutMs;
    if (this.acks) this.acks.window = d.ackWindow;
    else this.acks = new AckTracker((offset) => this.state === 'subscribed' && this.owner.sendAck(this.channel, offset), d.ackWindow);
    if (this.options.ack !== 'manual' && !this.serial) {
      this.serial = new SerialQueue<T>({
        handle: (m) => {
          const results: unknown[] = [];
          const thrown: unknown[] = [];
          for (const h of this.listeners('message')) {
            try {
              results.push((h as (m: Message<T>) => unknown)(m));
            } catch (e) {
              thrown.push(e);
            }
          }
          return { results, thrown };
        },
        done: (m) => this.acks?.processed(m),
        failed: (m, e) => this.handlerFailed(m, e),
      });
    }
  }

  /** A `message` handler threw or rejected: not acknowledged; wait for the server to send it again. */
  private handlerFailed(m: Message<T>, e: unknown): void {
    const held = this.position;
    const pos = { offset: m.offset, epoch: m.epoch };
    // Unless the server already moved past it (a gap, a resume position): it will not come again.
    if (this.acks && !this.acks.isCovered(pos) && held && held.epoch === m.epoch && this.state !== 'unsubscribed') {
      this.position = { offset: m.offset - 1, epoch: m.epoch };
      this.awaiting = m.offset;
      this.serial?.clear(); // everything after it comes again after it
    }
    const err = new HeraldError('handler_failed', `${this.channel}: message handler failed on offset ${m.offset}: ${String(e)}`, true);
    (err as { cause?: unknown }).cause = e;
    this.emit('error', err);
  }

  /** @internal */
  _presence(kind: 'join' | 'leave', who: ClientInfo): void {
    this.emit(kind, who);
  }

  /** @internal A subscribe attempt failed. */
  _failed(e: HeraldError): void {
    this.emit('error', e);
  }

  /** @internal The subscription is over. */
  _ended(byServer: boolean, error?: HeraldError): void {
    if (this.state === 'unsubscribed') return;
    this.state = 'unsubscribed';
    this.resyncing = false;
    this.base = undefined;
    this.acks?.cancel();
    this.serial?.clear();
    for (const w of this.waiters.splice(0)) {
      w.reject(error ?? new HeraldError('not_subscribed', 'unsubscribed'));
    }
    this.emit('unsubscribed', error ? { byServer, error } : { byServer });
  }
}
