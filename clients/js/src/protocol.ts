/** Wire types of Herald protocol v1 (docs/protocol.md), and the frame codecs. */

/** A position in a channel's stream. */
export interface StreamPosition {
  offset: number;
  epoch: string;
}

/** A client as shown in presence, `join`/`leave` and on publications. */
export interface ClientInfo {
  client_id: string;
  user_id: string;
  /** The token's `info` claim. */
  info?: unknown;
  /** Channel info granted by the application's subscribe proxy. */
  chan_info?: unknown;
}

/** A publication on a channel. */
export interface Message<T = unknown> {
  channel: string;
  offset: number;
  epoch: string;
  /** Publish time, ms since the Unix epoch. */
  time: number;
  data: T;
  /** The publisher, when it was a client. */
  info?: ClientInfo;
}

/** What the server said when the connection started (the `connected` push). */
export interface ConnectedInfo {
  client_id: string;
  session_id: string;
  user_id: string;
  resume_token: string;
  resume_grace_ms: number;
  ping_interval_ms: number;
  pong_timeout_ms: number;
  server: string;
  protocol: string;
  expires_in_ms?: number;
}

/** Reply to `publish`. */
export interface PublishResult {
  offset: number;
  epoch: string;
  /** The idempotency key was seen before: this is the original publication's position. */
  duplicate?: boolean;
}

/** Reply to `history`. */
export interface HistoryResult<T = unknown> {
  offset: number;
  epoch: string;
  publications: Message<T>[];
}

/** Reply to `presence_stats`. */
export interface PresenceStats {
  clients: number;
  users: number;
}

/** One protocol message. */
export interface Envelope {
  type: string;
  id?: string | number;
  payload?: Record<string, unknown>;
}

/** Encodes and decodes frames for one subprotocol. */
export interface Codec {
  /** `herald.v1.json` or `herald.v1.msgpack`. */
  readonly subprotocol: string;
  /** Frames are binary (MessagePack) rather than text (JSON). */
  readonly binary: boolean;
  encode(message: Envelope): string | Uint8Array;
  decode(frame: unknown): Envelope;
}

function isEnvelope(v: unknown): v is Envelope {
  return typeof v === 'object' && v !== null && typeof (v as Envelope).type === 'string';
}

function checked(v: unknown): Envelope {
  if (!isEnvelope(v)) throw new Error('not a Herald message');
  return v;
}

/** JSON in text frames (the default). */
export const jsonCodec: Codec = {
  subprotocol: 'herald.v1.json',
  binary: false,
  encode: (m) => JSON.stringify(m),
  decode: (frame) => {
    if (typeof frame !== 'string') throw new Error('binary frame on a JSON connection');
    return checked(JSON.parse(frame));
  },
};

/** The part of `@msgpack/msgpack` the MessagePack codec needs. */
export interface MsgpackLib {
  encode(value: unknown): Uint8Array;
  decode(buffer: ArrayLike<number> | ArrayBuffer | Uint8Array): unknown;
}

/**
 * MessagePack in binary frames: `msgpackCodec(await import('@msgpack/msgpack'))`. The library is
 * an optional peer dependency, passed in so that JSON users never load it.
 */
export function msgpackCodec(lib: MsgpackLib): Codec {
  return {
    subprotocol: 'herald.v1.msgpack',
    binary: true,
    encode: (m) => lib.encode(m),
    decode: (frame) => {
      if (typeof frame === 'string') throw new Error('text frame on a MessagePack connection');
      const bytes = frame instanceof Uint8Array ? frame : new Uint8Array(frame as ArrayBuffer);
      return checked(lib.decode(bytes));
    },
  };
}
