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
  | 'skipped';

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
  /** A publication, in offset order, never twice. */
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
  /** A subscribe attempt failed (retryable errors are retried after a delay). */
  error: HeraldError;
}

/** What the client needs from a subscription's owner. */
export interface SubscriptionOwner {
  unsubscribe(channel: string): void;
  history<T>(channel: string, opts?: { since?: StreamPosition; limit?: number; reverse?: boolean }): Promise<HistoryResult<T>>;
  presence(channel: string): Promise<ClientInfo[]>;
}

/** Options of one subscription. */
export interface SubscribeOptions<T> {
  /** A channel token (for `private` namespaces), or a function that fetches one per attempt. */
  token?: string | (() => Promise<string>);
  /** Start from this position instead of "now" (publications after it are delivered first). */
  since?: StreamPosition;
  /** Validate or convert each message's data; a throw drops the message and emits `error`. */
  parse?: (data: unknown) => T;
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

  /** @internal The server confirmed (or re-confirmed) the subscription. */
  _confirmed(
    now: StreamPosition,
    recovered: boolean | undefined,
    resubscribed: boolean,
    missed = 0,
    lossy = false,
  ): void {
    const held = this.position;
    this.lossy = lossy;
    this._failures = 0;
    this.gapReported = false;
    // The replayed publications (if any) are offsets now − missed + 1 … now.
    const from = { offset: Math.max(0, now.offset - missed), epoch: now.epoch };
    if (held && held.epoch !== now.epoch) {
      this.emit('gap', { channel: this.channel, reason: 'epoch_changed', after: held, now: from });
      this.position = from;
    } else if (held && recovered === false) {
      this.emit('gap', { channel: this.channel, reason: 'trimmed', after: held, now: from });
      this.position = from;
    } else if (!held) {
      this.position = now;
    }
    this.state = 'subscribed';
    this.emit('subscribed', { position: now, recovered, resubscribed });
    for (const w of this.waiters.splice(0)) w.resolve();
  }

  /** @internal A resume kept the subscription; `recovered: false` means a gap. */
  _resumed(recovered: boolean | undefined): void {
    const held = this.position;
    if (held && recovered === false) {
      this.emit('gap', { channel: this.channel, reason: 'trimmed', after: held, now: held });
      this.gapReported = true;
    }
    this.state = 'subscribed';
    for (const w of this.waiters.splice(0)) w.resolve();
  }

  /** @internal Deliver a message unless it is a duplicate. */
  _message(m: Message<unknown>, onParseError: (e: unknown) => HeraldError): void {
    const held = this.position;
    if (held && held.epoch === m.epoch && m.offset <= held.offset) return;
    const now = { offset: Math.max(0, m.offset - 1), epoch: m.epoch };
    if (held && held.epoch !== m.epoch && !this.gapReported) {
      // The stream was reset under a live subscription (unless a resume just reported it).
      this.emit('gap', { channel: this.channel, reason: 'epoch_changed', after: held, now });
    } else if (held && held.epoch === m.epoch && m.offset > held.offset + 1 && !this.gapReported) {
      // A jump inside the epoch: dropped by the namespace's policy, or lost; either way the
      // application hears about it (unless a resume just reported it as trimmed).
      this.emit('gap', { channel: this.channel, reason: this.lossy ? 'dropped' : 'skipped', after: held, now });
    }
    this.gapReported = false;
    let data: T;
    try {
      data = this.options.parse ? this.options.parse(m.data) : (m.data as T);
    } catch (e) {
      this.position = { offset: m.offset, epoch: m.epoch };
      this.emit('error', onParseError(e));
      return;
    }
    this.position = { offset: m.offset, epoch: m.epoch };
    this.emit('message', { ...m, data });
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
    for (const w of this.waiters.splice(0)) {
      w.reject(error ?? new HeraldError('not_subscribed', 'unsubscribed'));
    }
    this.emit('unsubscribed', error ? { byServer, error } : { byServer });
  }
}
