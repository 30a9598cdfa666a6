import { deliveryOf } from './acks.js';
import { backoffDelay } from './backoff.js';
import { deltaOf } from './delta.js';
import { Emitter } from './emitter.js';
import { CloseCodes, HeraldError, errorOf, shouldReconnect } from './errors.js';
import {
  jsonCodec,
  type ClientInfo,
  type Codec,
  type ConnectedInfo,
  type Envelope,
  type HistoryResult,
  type Message,
  type PresenceStats,
  type PublishResult,
  type StreamPosition,
} from './protocol.js';
import { OfflineQueue, randomKey, type QueuedPublish } from './queue.js';
import { Subscription, type GapReason, type SubscribeOptions, type SubscriptionOwner } from './subscription.js';
import { HttpPollSocketCtor, HttpStreamSocketCtor, canStreamHttp } from './http-socket.js';
import { watchRefusal, withResumeParam } from './handshake.js';
import type { ClientEvents, ClientOptions, State, Transport, WebSocketCtor, WebSocketLike } from './options.js';
import { ConnectionWaiters, Requests } from './requests.js';
import { rememberTransport, rememberedTransport } from './transport-memory.js';

export type { ClientEvents, ClientOptions, State, Transport, WebSocketCtor, WebSocketLike } from './options.js';

const OPEN = 1;

/** Apply a subscribe reply or a `subscribed` push to its subscription. */
function confirm(sub: Subscription<any>, r: Record<string, unknown>, resubscribed: boolean): void {
  const position = { offset: Number(r.offset), epoch: String(r.epoch) };
  const recovered = r.recovered as boolean | undefined;
  const lossy = r.slow_consumer !== undefined;
  sub._confirmed(position, recovered, resubscribed, Number(r.missed ?? 0), lossy, deliveryOf(r), deltaOf(r));
}

/**
 * A Herald connection: reconnects with backoff, resumes its session or resubscribes with
 * recovery, and delivers each message once, in order. Events: {@link ClientEvents}.
 */
export class HeraldClient extends Emitter<ClientEvents> implements SubscriptionOwner {
  /** The current state. */
  state: State = 'idle';
  /** What the server said at the last `connected`. */
  info: ConnectedInfo | undefined;
  /** The transport of the current (or last) connection attempt. */
  transport: Transport | undefined;

  private readonly opts: ClientOptions;
  private readonly codec: Codec;
  private readonly Ws: WebSocketCtor | undefined;
  private readonly transports: Transport[];
  private transportIndex = 0;
  /** The current attempt reached `connected`. */
  private reached = false;
  private ws: WebSocketLike | null = null;
  /** Bumped per socket, so late events of an old socket are ignored. */
  private generation = 0;
  private attempt = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private connectTimer: ReturnType<typeof setTimeout> | undefined;
  private watchdog: ReturnType<typeof setTimeout> | undefined;
  private lastReceived = 0;
  private resumeToken: string | undefined;
  private advisory: { reconnect: boolean; afterMs: number } | undefined;
  /** The `Retry-After` of this attempt's refused handshake (503/429), ms. */
  private retryAfterMs: number | undefined;
  private readonly requests = new Requests();
  private readonly queue: OfflineQueue;
  private readonly subs = new Map<string, Subscription<any>>();
  private readonly waitingForConnection = new ConnectionWaiters();
  private readonly detach: (() => void)[] = [];
  private probeTimer: ReturnType<typeof setTimeout> | undefined;
  /** The browser said `offline` (and not `online` since). */
  private offline = false;
  /** Channels left while disconnected: a resumed session still has them. */
  private readonly leftWhileAway = new Set<string>();

  constructor(opts: ClientOptions) {
    super();
    this.opts = opts;
    this.queue = new OfflineQueue(opts.offlineQueue?.maxSize ?? 100, opts.offlineQueue?.maxAgeMs ?? 60_000);
    this.codec = opts.codec ?? jsonCodec;
    const ctor = opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketCtor }).WebSocket;
    this.Ws = ctor;
    const json = this.codec.subprotocol === 'herald.v1.json';
    const available = (t: Transport) =>
      t === 'websocket'
        ? ctor !== undefined
        : json && (t === 'http-poll' ? typeof fetch === 'function' : canStreamHttp());
    const browser = typeof window !== 'undefined' && typeof window.addEventListener === 'function';
    const defaults: Transport[] = browser ? ['websocket', 'http-stream', 'http-poll'] : ['websocket'];
    this.transports = (opts.transports ?? defaults).filter(available);
    if (this.transports.length === 0) {
      throw new HeraldError(
        'bad_request',
        'no usable transport: pass `WebSocket` (e.g. npm `ws`), or allow `http-stream` (JSON, fetch streams)',
      );
    }
    const remembered = rememberedTransport();
    if (remembered && this.transports.includes(remembered)) this.transportIndex = this.transports.indexOf(remembered);
    if (opts.browserEvents ?? browser) this.followBrowser();
  }

  /** Start connecting (and keep reconnecting until `close()`). */
  connect(): void {
    if (this.state === 'connected' || this.state === 'connecting') return;
    clearTimeout(this.reconnectTimer);
    if (this.browserOffline()) {
      this.goOffline();
      return;
    }
    void this.open();
  }

  /** Close for good (code 1000: the server ends the session). Pending work fails with `closed`. */
  close(): void {
    this.terminate(CloseCodes.normal, 'closed by the client');
    for (const d of this.detach.splice(0)) d();
  }

  /** Subscribe to `channel` (or return the existing subscription). */
  subscribe<T = unknown>(channel: string, options: SubscribeOptions<T> = {}): Subscription<T> {
    const existing = this.subs.get(channel);
    if (existing && existing.state !== 'unsubscribed') return existing as Subscription<T>;
    const sub = new Subscription<T>(channel, this, options);
    this.subs.set(channel, sub);
    if (this.state === 'connected') void this.sendSubscribe(sub, false);
    return sub;
  }

  /** The live subscription of `channel`, if any. */
  subscription<T = unknown>(channel: string): Subscription<T> | undefined {
    return this.subs.get(channel) as Subscription<T> | undefined;
  }

  /** Leave `channel`. */
  unsubscribe(channel: string): void {
    const sub = this.subs.get(channel);
    if (!sub) return;
    this.subs.delete(channel);
    sub._ended(false);
    if (this.state === 'connected') {
      // If the connection dies before the reply, a resumed session may still have the channel.
      this.request('unsubscribe', { channel }).catch((e: HeraldError) => e.code === 'disconnected' && this.leftWhileAway.add(channel));
    } else {
      this.leftWhileAway.add(channel);
    }
  }

  /**
   * Publish `data` to `channel`. Resolves with the stream position once the server acknowledged
   * it. While disconnected the publish waits in a bounded queue; a publish whose reply was lost is
   * sent again with the same idempotency key, so it is applied once.
   */
  publish(channel: string, data: unknown, opts: { idempotencyKey?: string } = {}): Promise<PublishResult> {
    return new Promise((resolve, reject) => {
      if (this.state === 'closed') {
        reject(new HeraldError('closed', 'the client is closed'));
        return;
      }
      const p: QueuedPublish = { channel, data, key: opts.idempotencyKey ?? randomKey(), resolve, reject, expiry: undefined };
      if (this.state === 'connected') this.sendPublish(p);
      else this.queue.add(p);
    });
  }

  /** Publications of `channel` from history. */
  async history<T = unknown>(
    channel: string,
    opts: { since?: StreamPosition; limit?: number; reverse?: boolean } = {},
  ): Promise<HistoryResult<T>> {
    const r = await this.request('history', { channel, ...opts });
    return r as unknown as HistoryResult<T>;
  }

  /** Clients subscribed to `channel`. */
  async presence(channel: string): Promise<ClientInfo[]> {
    const r = await this.request('presence', { channel });
    return (r.clients as ClientInfo[] | undefined) ?? [];
  }

  /** Client and user counts of `channel`. */
  async presenceStats(channel: string): Promise<PresenceStats> {
    return (await this.request('presence_stats', { channel })) as unknown as PresenceStats;
  }

  /** Call `method` on the application backend; resolves with its result. */
  async rpc<R = unknown>(method: string, data?: unknown): Promise<R> {
    const r = await this.request('rpc', data === undefined ? { method } : { method, data });
    return r.data as R;
  }

  /** @internal An at-least-once `ack` (no id, no reply); false when not connected. */
  sendAck(channel: string, offset: number): boolean {
    return this.sendRaw({ type: 'ack', payload: { channel, offset } });
  }

  /**
   * @internal A delta of `channel` could not be applied (docs/protocol.md §5): `unsubscribe`, then
   * at once `subscribe` with `recover` from the last position delivered. Internal: the
   * subscription object stays, the application sees no `unsubscribed`.
   */
  resyncDeltas(channel: string): void {
    const sub = this.subs.get(channel);
    if (!sub) return;
    const timeout = this.opts.requestTimeoutMs ?? 10_000;
    // Its reply (or a `not_subscribed` error) matters to nobody.
    this.send('unsubscribe', { channel }, timeout).catch(() => undefined);
    void this.sendSubscribe(sub, true);
  }

  /**
   * Send a command and wait for its reply (waits for the connection first, within the request
   * timeout). Rejects with a {@link HeraldError}.
   */
  async request(type: string, payload: Record<string, unknown>): Promise<Record<string, unknown>> {
    const timeout = this.opts.requestTimeoutMs ?? 10_000;
    const deadline = Date.now() + timeout;
    if (this.state !== 'connected') {
      await this.waitingForConnection.wait(timeout, this.state === 'closed', () => this.state === 'connected');
    }
    return this.send(type, payload, Math.max(1, deadline - Date.now()));
  }

  // ---- connection lifecycle -------------------------------------------------------------

  private setState(s: State): void {
    if (this.state === s) return;
    this.state = s;
    this.emit('state', s);
  }

  private async open(): Promise<void> {
    const gen = ++this.generation;
    this.setState('connecting');
    this.emit('connecting', { attempt: this.attempt });
    let token: string | undefined;
    try {
      token = typeof this.opts.token === 'function' ? await this.opts.token() : this.opts.token;
    } catch (e) {
      if (gen !== this.generation) return;
      this.emit('error', new HeraldError('unauthorized', `token callback failed: ${String(e)}`, true));
      this.scheduleReconnect();
      return;
    }
    if (gen !== this.generation) return;
    const transport = this.transports[this.transportIndex % this.transports.length] ?? 'websocket';
    this.transport = transport;
    this.reached = false;
    const http = transport !== 'websocket';
    // Over HTTP the token must come with the opening request (an `Authorization` header).
    const carrier = http ? 'subprotocol' : (this.opts.tokenCarrier ?? 'subprotocol');
    const protocols = [this.codec.subprotocol];
    if (token && carrier === 'subprotocol') protocols.push(`herald.auth.${token}`);
    // Without a token of its own (a connect proxy reads its cookies) a resuming client presents
    // its resume token at the handshake: the server admits it without asking the proxy (§8).
    const resume = token ? undefined : this.resumeToken;
    let ws: WebSocketLike;
    try {
      if (http) {
        ws = new (transport === 'http-stream' ? HttpStreamSocketCtor : HttpPollSocketCtor)(this.opts.url, protocols, { resume });
      } else {
        if (!this.Ws) throw new Error('no WebSocket implementation');
        ws = new this.Ws(resume ? withResumeParam(this.opts.url, resume) : this.opts.url, protocols);
        watchRefusal(ws, (ms) => {
          if (gen === this.generation) this.retryAfterMs = ms;
        });
      }
    } catch (e) {
      this.emit('error', new HeraldError('bad_request', `cannot open ${this.opts.url}: ${String(e)}`));
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.binaryType = 'arraybuffer';
    this.connectTimer = setTimeout(() => {
      if (gen === this.generation) this.dropSocket(CloseCodes.heartbeatTimeout, 'connect timeout');
    }, this.opts.connectTimeoutMs ?? 10_000);
    ws.onopen = () => {
      if (gen !== this.generation) return;
      if (token && carrier === 'message') {
        this.sendRaw({ type: 'auth', id: `auth`, payload: { token } });
      }
    };
    ws.onmessage = (ev: { data: unknown }) => {
      if (gen === this.generation) this.onFrame(ev.data);
    };
    ws.onclose = (ev: { code?: number; reason?: string; retryAfterMs?: number }) => {
      if (gen !== this.generation) return;
      if (ev.retryAfterMs !== undefined) this.retryAfterMs = ev.retryAfterMs;
      this.onClose(ev.code ?? CloseCodes.abnormal, ev.reason ?? '');
    };
    ws.onerror = () => undefined; // `close` follows
  }

  private onFrame(frame: unknown): void {
    this.lastReceived = Date.now();
    let m: Envelope;
    try {
      m = this.codec.decode(frame);
    } catch (e) {
      this.emit('error', new HeraldError('malformed', `undecodable frame from the server: ${String(e)}`));
      return;
    }
    const p = m.payload ?? {};
    if (m.id !== undefined && (m.type === 'reply' || m.type === 'pong' || m.type === 'error')) {
      if (m.id === 'auth') {
        if (m.type === 'error') this.emit('error', errorOf(p));
        return;
      }
      this.requests.settle(Number(m.id), p, m.type === 'error' ? errorOf(p) : undefined);
      return;
    }
    switch (m.type) {
      case 'connected':
        void this.onConnected(p as unknown as ConnectedInfo);
        break;
      case 'message': {
        const msg = p as unknown as Message;
        this.subs.get(msg.channel)?._message(msg, (e) => new HeraldError('malformed', `message data rejected by parse: ${String(e)}`));
        break;
      }
      case 'join':
      case 'leave': {
        const who = p as unknown as ClientInfo & { channel: string };
        this.subs.get(who.channel)?._presence(m.type, who);
        break;
      }
      case 'subscribed': {
        const channel = String(p.channel);
        let sub = this.subs.get(channel);
        if (!sub) {
          sub = new Subscription(channel, this, {}, true);
          this.subs.set(channel, sub);
          this.emit('subscription', sub);
        }
        confirm(sub, p, false);
        break;
      }
      case 'gap': {
        const reason = (typeof p.reason === 'string' ? p.reason : 'unacknowledged') as GapReason;
        this.subs.get(String(p.channel))?._gapPush(String(p.epoch), Number(p.to), reason);
        break;
      }
      case 'unsubscribed': {
        const channel = String(p.channel);
        const sub = this.subs.get(channel);
        this.subs.delete(channel);
        sub?._ended(true);
        break;
      }
      case 'refresh':
        void this.refreshToken();
        break;
      case 'disconnect':
        this.advisory = {
          reconnect: p.reconnect !== false,
          afterMs: typeof p.reconnect_after_ms === 'number' ? p.reconnect_after_ms : 0,
        };
        break;
      case 'error':
        this.emit('error', errorOf(p));
        break;
      default:
        break; // unknown pushes are ignored (forward compatibility)
    }
  }

  private async onConnected(info: ConnectedInfo): Promise<void> {
    const gen = this.generation;
    clearTimeout(this.connectTimer);
    this.reached = true;
    if (this.transport) {
      rememberTransport(this.transport);
      this.emit('transport', this.transport);
    }
    this.info = info;
    this.advisory = undefined;
    let resumed = false;
    if (this.resumeToken) {
      const r = await this.resume(this.resumeToken);
      if (gen !== this.generation) return;
      if (r === 'no_reply') {
        // The server may have resumed the session on this socket: subscribing anew here could
        // double it. Give the socket up (4000 keeps the session) and resume on the next one.
        this.dropSocket(CloseCodes.heartbeatTimeout, 'resume timed out');
        return;
      }
      resumed = r === 'resumed';
    }
    this.resumeToken = this.info.resume_token;
    this.leftWhileAway.clear();
    this.attempt = 0;
    this.setState('connected');
    this.startWatchdog();
    for (const sub of this.subs.values()) {
      // A delta resynchronization sent while the resume was applied has its subscribe in flight.
      if (sub.state === 'pending' && !sub._resyncing) void this.sendSubscribe(sub, sub.position !== undefined);
    }
    this.flushQueue();
    this.waitingForConnection.notify();
    this.emit('connected', { ...info, resumed });
    this.scheduleProbe();
  }

  /** Resume the previous session: `gone` when the server no longer has it. */
  private async resume(token: string): Promise<'resumed' | 'gone' | 'no_reply'> {
    const positions: Record<string, StreamPosition> = {};
    for (const [channel, sub] of this.subs) {
      const p = sub._recoveryPosition();
      if (p) positions[channel] = p;
    }
    let resumed = false;
    try {
      // Applied synchronously: the buffered messages follow the reply.
      await this.send('resume', { token, positions }, this.opts.requestTimeoutMs ?? 10_000, undefined, (r) => {
        this.applyResume(r);
        resumed = true;
      });
    } catch (e) {
      return e instanceof HeraldError && e.code === 'request_timeout' ? 'no_reply' : 'gone';
    }
    return resumed ? 'resumed' : 'gone';
  }

  private applyResume(r: Record<string, unknown>): void {
    if (this.info) {
      this.info = {
        ...this.info,
        client_id: String(r.client_id),
        session_id: String(r.session_id),
        resume_token: String(r.resume_token),
      };
    }
    const kept = new Set<string>();
    for (const c of (r.channels as { channel: string; recovered?: boolean }[] | undefined) ?? []) {
      kept.add(c.channel);
      let sub = this.subs.get(c.channel);
      if (!sub && this.leftWhileAway.has(c.channel)) {
        this.sendRaw({ type: 'unsubscribe', payload: { channel: c.channel } });
        continue;
      }
      if (!sub) {
        // A server-side subscription made while this client was away.
        sub = new Subscription(c.channel, this, {}, true);
        this.subs.set(c.channel, sub);
        this.emit('subscription', sub);
      }
      sub._resumed(c.recovered);
    }
    for (const sub of this.subs.values()) {
      if (!kept.has(sub.channel)) sub.state = 'pending';
    }
    this.leftWhileAway.clear();
  }

  private async sendSubscribe(sub: Subscription<any>, resubscribed: boolean): Promise<void> {
    const payload: Record<string, unknown> = { channel: sub.channel };
    const recover = sub._recoveryPosition();
    if (recover) payload.recover = recover;
    try {
      const t = sub.options.token;
      if (t !== undefined) payload.token = typeof t === 'function' ? await t() : t;
      // Confirmed synchronously: recovered and live messages may follow in the same chunk.
      await this.send('subscribe', payload, this.opts.requestTimeoutMs ?? 10_000, undefined, (r) => {
        if (this.subs.get(sub.channel) !== sub) return;
        confirm(sub, r, resubscribed);
      });
    } catch (e) {
      const err = e instanceof HeraldError ? e : new HeraldError('internal', String(e));
      if (this.subs.get(sub.channel) !== sub) return;
      if (err.code === 'disconnected') return; // retried after the reconnect
      if (err.code === 'already_subscribed') {
        sub._resumed(undefined); // the server holds it already: it stands as it is
        return;
      }
      sub._failed(err);
      if (err.retryable) {
        const delay = backoffDelay(sub._failures++, this.opts.backoff, this.opts.random); // grows per failure
        const gen = this.generation; // a reconnect meanwhile subscribes anew: no stale retry
        setTimeout(() => {
          if (gen === this.generation && this.subs.get(sub.channel) === sub && sub.state === 'pending') {
            void this.sendSubscribe(sub, resubscribed);
          }
        }, delay);
      } else {
        this.subs.delete(sub.channel);
        sub._ended(false, err);
      }
    }
  }

  private async refreshToken(): Promise<void> {
    if (typeof this.opts.token !== 'function') return;
    try {
      const token = await this.opts.token();
      if (token) await this.request('refresh', { token });
    } catch (e) {
      this.emit('error', e instanceof HeraldError ? e : new HeraldError('unauthorized', `token refresh failed: ${String(e)}`, true));
    }
  }

  private onClose(code: number, reason: string): void {
    this.ws = null;
    this.generation++;
    // An attempt that failed before `connected` (a refused upgrade, a proxy, a timeout): the
    // next one tries the next transport.
    // A 1013 refusal (the node is busy: reconnect storm control) is no sign of a blocked
    // transport: the same one is tried again after the hint.
    // So is a 503/429 with `Retry-After`.
    const retryAfter = this.retryAfterMs;
    this.retryAfterMs = undefined;
    if (!this.reached && this.transports.length > 1 && code !== CloseCodes.tryAgainLater && retryAfter === undefined) {
      this.transportIndex = (this.transportIndex + 1) % this.transports.length;
    }
    clearTimeout(this.connectTimer);
    clearTimeout(this.watchdog);
    clearTimeout(this.probeTimer);
    this.failPending();
    if (this.state === 'closed') return;
    const advisory = this.advisory;
    this.advisory = undefined;
    // Only a dropped socket or a 1011/4000/4003/4005 close leaves the session resumable, and a
    // 1013 refusal does not touch it (§8).
    if (![1005, 1006, 1011, CloseCodes.tryAgainLater, 4000, 4003, CloseCodes.rotated].includes(code)) this.resumeToken = undefined;
    const reconnect = advisory ? advisory.reconnect : shouldReconnect(code);
    this.emit('disconnected', { code, reason, reconnect });
    for (const sub of this.subs.values()) {
      sub._connectionLost();
      if (sub.state === 'subscribed') sub.state = 'pending';
    }
    if (!reconnect) {
      this.terminate(code, reason || 'closed by the server');
    } else if (this.browserOffline()) {
      this.goOffline();
    } else if (code === CloseCodes.rotated) {
      // Rotation (connection.max_lifetime): a new connection now, which resumes the session.
      this.attempt = 0;
      this.scheduleReconnect(0, true);
    } else {
      // Not before the server's hint: a 1013 advisory or a refusal's `Retry-After`.
      this.scheduleReconnect(Math.max(advisory?.afterMs ?? 0, retryAfter ?? 0));
    }
  }

  private scheduleReconnect(minDelayMs = 0, now = false): void {
    this.attempt++;
    const max = this.opts.maxAttempts;
    if (max !== undefined && this.attempt > max) {
      this.terminate(CloseCodes.abnormal, `gave up after ${max} attempts`);
      return;
    }
    const delayMs = now ? 0 : Math.max(minDelayMs, backoffDelay(this.attempt - 1, this.opts.backoff, this.opts.random));
    // The timer first: a handler of these events may `close()` the client, which clears it.
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => void this.open(), delayMs);
    this.setState('reconnecting');
    this.emit('reconnecting', { attempt: this.attempt, delayMs, at: Date.now() + delayMs });
  }

  /** Close the socket without ending the session (it stays resumable on the server). */
  private dropSocket(code: number, reason: string): void {
    const ws = this.ws;
    if (!ws) return;
    try {
      ws.close(code, reason);
    } catch {
      // already closing
    }
    this.onClose(code, reason);
  }

  private terminate(code: number, reason: string): void {
    if (this.state === 'closed') return;
    clearTimeout(this.reconnectTimer);
    const ws = this.ws;
    this.setState('closed');
    this.ws = null;
    this.generation++;
    clearTimeout(this.connectTimer);
    clearTimeout(this.watchdog);
    clearTimeout(this.probeTimer);
    if (ws) {
      try {
        ws.close(CloseCodes.normal, reason.slice(0, 100));
      } catch {
        // already closing
      }
    }
    const error = new HeraldError('closed', reason);
    for (const sub of this.subs.values()) sub._connectionLost();
    this.failPending();
    for (const p of this.queue.takeAll()) {
      clearTimeout(p.expiry);
      p.reject(error);
    }
    this.waitingForConnection.notify();
    this.resumeToken = undefined;
    this.emit('closed', { code, reason, error });
  }

  // ---- back to a WebSocket ---------------------------------------------------------------------

  /** Connected over HTTP with WebSockets allowed: try one again later. */
  private scheduleProbe(): void {
    clearTimeout(this.probeTimer);
    const every = this.opts.upgradeProbeMs ?? 60_000;
    const ws = this.transports.indexOf('websocket');
    if (every <= 0 || ws < 0 || !this.Ws || this.transport === 'websocket') return;
    this.probeTimer = setTimeout(() => this.probe(ws), every);
  }

  /**
   * Open a WebSocket upgrade only (no session is made: the probe closes as soon as it opens).
   * When it goes through, give the HTTP connection up with 4000 — its session stays resumable —
   * and reconnect over the WebSocket, which resumes it.
   */
  private probe(index: number): void {
    const gen = this.generation;
    const Ctor = this.Ws;
    if (!Ctor || this.state !== 'connected') return;
    let probe: WebSocketLike;
    try {
      probe = new Ctor(this.opts.url, [this.codec.subprotocol]);
    } catch {
      this.scheduleProbe();
      return;
    }
    probe.onopen = () => {
      try {
        probe.close(CloseCodes.normal, 'probe');
      } catch {
        // already closing
      }
      if (gen !== this.generation || this.state !== 'connected') return;
      this.transportIndex = index;
      rememberTransport('websocket');
      this.dropSocket(CloseCodes.heartbeatTimeout, 'moving to a WebSocket');
    };
    probe.onclose = () => {
      if (gen === this.generation && this.state === 'connected') this.scheduleProbe();
    };
    probe.onmessage = () => undefined;
    probe.onerror = () => undefined;
  }

  // ---- heartbeats and browser events ---------------------------------------------------------

  /** Ping when the server was silent for `ping_interval_ms`; no frame within `pong_timeout_ms` → reconnect. */
  private startWatchdog(): void {
    const info = this.info;
    if (!info) return;
    const interval = info.ping_interval_ms > 0 ? info.ping_interval_ms : 25_000;
    const timeout = info.pong_timeout_ms > 0 ? info.pong_timeout_ms : 10_000;
    clearTimeout(this.watchdog);
    const tick = () => {
      const silent = Date.now() - this.lastReceived;
      if (silent >= interval) {
        this.checkAlive(timeout);
      } else {
        this.watchdog = setTimeout(tick, interval - silent);
      }
    };
    this.watchdog = setTimeout(tick, interval);
  }

  /** Send a `ping`; without any frame within `timeoutMs` the connection is treated as dead. */
  private checkAlive(timeoutMs: number): void {
    if (this.state !== 'connected') return;
    const sent = Date.now();
    this.sendRaw({ type: 'ping' });
    clearTimeout(this.watchdog);
    this.watchdog = setTimeout(() => {
      if (this.lastReceived < sent) this.dropSocket(CloseCodes.heartbeatTimeout, 'heartbeat timeout');
      else this.startWatchdog();
    }, timeoutMs);
  }

  private browserOffline(): boolean {
    if (this.offline) return true;
    if (!(this.opts.browserEvents ?? typeof window !== 'undefined')) return false;
    const nav = (globalThis as { navigator?: { onLine?: boolean } }).navigator;
    return nav?.onLine === false;
  }

  /**
   * No network: stop attempts until `online`. An open socket is closed with 4000 (not 1000), so
   * the server keeps the session for a resume.
   */
  private goOffline(): void {
    this.offline = true;
    clearTimeout(this.reconnectTimer);
    if (this.ws) {
      this.dropSocket(CloseCodes.heartbeatTimeout, 'offline'); // comes back here via onClose
      return;
    }
    if (this.state === 'closed' || this.state === 'offline') return;
    this.generation++; // abandons an attempt still waiting for its token
    this.setState('offline');
    this.emit('offline', { since: Date.now() });
  }

  private followBrowser(): void {
    const w = globalThis as unknown as Window;
    const listen = (target: EventTarget, name: string, fn: (e: Event) => void) => {
      target.addEventListener(name, fn);
      this.detach.push(() => target.removeEventListener(name, fn));
    };
    listen(w, 'offline', () => {
      if (this.state !== 'closed' && this.state !== 'idle') this.goOffline();
    });
    listen(w, 'online', () => {
      this.offline = false;
      if (this.state === 'offline') {
        this.attempt = 0;
        void this.open();
      }
    });
    if (typeof document !== 'undefined') {
      listen(document, 'visibilitychange', () => {
        if (document.visibilityState !== 'visible') return;
        if (this.state === 'connected') {
          this.checkAlive(Math.min(this.info?.pong_timeout_ms ?? 5_000, 5_000));
        } else if (this.state === 'reconnecting') {
          clearTimeout(this.reconnectTimer);
          void this.open();
        }
      });
    }
    listen(w, 'pagehide', (e) => {
      if ((e as PageTransitionEvent).persisted) {
        // Kept in the back/forward cache: leave without ending the session; `pageshow` resumes.
        this.dropSocket(CloseCodes.goingAway, 'page hidden');
        clearTimeout(this.reconnectTimer);
        this.setState('idle');
      } else {
        this.close();
      }
    });
    listen(w, 'pageshow', (e) => {
      if ((e as PageTransitionEvent).persisted && this.state === 'idle') this.connect();
    });
  }

  // ---- sending -------------------------------------------------------------------------------

  private sendRaw(m: Envelope): boolean {
    const ws = this.ws;
    if (!ws || ws.readyState !== OPEN) return false;
    ws.send(this.codec.encode(m));
    return true;
  }

  private send(
    type: string,
    payload: Record<string, unknown>,
    timeoutMs: number,
    publish?: QueuedPublish,
    onReply?: (payload: Record<string, unknown>) => void,
  ): Promise<Record<string, unknown>> {
    return this.requests.start(type, timeoutMs, (id) => this.sendRaw({ type, id, payload }), publish, onReply);
  }

  private sendPublish(p: QueuedPublish): void {
    clearTimeout(p.expiry);
    p.expiry = undefined;
    const payload = { channel: p.channel, data: p.data, idempotency_key: p.key };
    this.send('publish', payload, this.opts.requestTimeoutMs ?? 10_000, p).then(
      (r) => p.resolve(r as unknown as PublishResult),
      (e: HeraldError) => {
        // Lost with the connection: sent again (same key) after the reconnect.
        if (e.code === 'disconnected' && this.state !== 'closed') this.queue.add(p, true);
        else p.reject(e);
      },
    );
  }

  private flushQueue(): void {
    for (const p of this.queue.takeAll()) this.sendPublish(p);
  }

  private failPending(): void {
    const lost = this.requests.drop();
    if (this.state === 'closed') {
      for (const p of lost) p.reject(new HeraldError('closed', 'the client is closed'));
      return;
    }
    // Publishes in flight go back to the front of the queue, in their original order.
    for (const p of lost.reverse()) this.queue.add(p, true);
  }
}
