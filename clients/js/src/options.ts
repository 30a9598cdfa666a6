// Public types of the client: its options, events, states and the WebSocket it needs.
import type { BackoffOptions } from './backoff.js';
import type { HeraldError } from './errors.js';
import type { Codec, ConnectedInfo } from './protocol.js';
import type { Subscription } from './subscription.js';

/** The subset of the WebSocket API the client uses (browsers, Node ≥ 22, or npm `ws`). */
export interface WebSocketLike {
  readonly readyState: number;
  binaryType: string;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: any) => void) | null;
  onclose: ((ev: any) => void) | null;
  onerror: ((ev: any) => void) | null;
}

/** A WebSocket constructor. */
export type WebSocketCtor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/**
 * How the client reaches the server: a WebSocket, or where WebSockets are blocked HTTP streaming
 * or, behind proxies that buffer streamed answers, long-polling (docs/protocol.md §10).
 */
export type Transport = 'websocket' | 'http-stream' | 'http-poll';

/** Connection states. */
export type State =
  /** Created, `connect()` not called yet. */
  | 'idle'
  /** Opening a socket (first time or after a delay). */
  | 'connecting'
  /** Connected, subscriptions restored. */
  | 'connected'
  /** Waiting for the next attempt (see the `reconnecting` event for the delay). */
  | 'reconnecting'
  /** The browser reports no network; the next attempt starts when it is back. */
  | 'offline'
  /** Closed for good: `close()`, a terminal close code, or `maxAttempts` reached. */
  | 'closed';

/** Client events. */
export interface ClientEvents {
  state: State;
  connecting: { attempt: number };
  connected: ConnectedInfo & { resumed: boolean };
  disconnected: { code: number; reason: string; reconnect: boolean };
  reconnecting: { attempt: number; delayMs: number; at: number };
  offline: { since: number };
  closed: { code: number; reason: string; error?: HeraldError };
  /** Errors not tied to a request (server errors without an id, failed token refresh, ...). */
  error: HeraldError;
  /** The server subscribed this client to a channel (server API or connect proxy). */
  subscription: Subscription<unknown>;
  /** The transport of the connection just established. */
  transport: Transport;
}

/** Client options. */
export interface ClientOptions {
  /** `ws://host:port/ws` or `wss://...`. */
  url: string;
  /**
   * The connection token, or a function returning one (called before every connection attempt
   * and when the server asks for a refresh). `undefined` connects anonymously.
   */
  token?: string | (() => Promise<string | undefined> | string | undefined);
  /**
   * How the token travels: `subprotocol` (default; a `herald.auth.<token>` entry, fine for
   * browsers) or `message` (an `auth` command as the first frame, for servers with
   * `auth.anonymous = false`). The query string is never used.
   */
  tokenCarrier?: 'subprotocol' | 'message';
  /** WebSocket constructor; defaults to `globalThis.WebSocket` (pass npm `ws` on Node 20). */
  WebSocket?: WebSocketCtor;
  /**
   * Transports to try, in order (default in browsers `['websocket', 'http-stream', 'http-poll']`,
   * elsewhere `['websocket']`; those this runtime has). A connection attempt that fails before `connected` moves to the next one; what worked
   * is remembered for the page session (`sessionStorage`) and tried first next time. Pass
   * `['http-stream']` to force HTTP, `['websocket']` to exclude it. HTTP carries JSON only, and
   * the token travels in an `Authorization` header there (or a cookie).
   */
  transports?: Transport[];
  /** Frame codec: {@link jsonCodec} (default) or `msgpackCodec(...)`. */
  codec?: Codec;
  /** Reconnect delays. */
  backoff?: BackoffOptions;
  /** Give up after this many failed attempts in a row (default: never). */
  maxAttempts?: number;
  /** Timeout of a request (subscribe, history, rpc, ...), ms (default 10 000). */
  requestTimeoutMs?: number;
  /** Timeout of opening a socket and getting `connected`, ms (default 10 000). */
  connectTimeoutMs?: number;
  /** Publishes kept while disconnected (default 100 publishes, 60 s each). */
  offlineQueue?: { maxSize?: number; maxAgeMs?: number };
  /**
   * Follow the browser's `online`/`offline`, `visibilitychange` and `pagehide` events (default:
   * true where `window` exists).
   */
  browserEvents?: boolean;
  /** Randomness for backoff jitter (tests). */
  random?: () => number;
  /**
   * Connected over HTTP, try a WebSocket this often (ms; default 60 000, 0 = never): when its
   * upgrade goes through, the client moves to it — the session is resumed there, nothing lost.
   */
  upgradeProbeMs?: number;
}
