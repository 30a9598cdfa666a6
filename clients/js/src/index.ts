export { HeraldClient } from './client.js';
export type { ClientEvents, ClientOptions, State, Transport, WebSocketCtor, WebSocketLike } from './client.js';
export { httpBase } from './http-socket.js';
export { Subscription } from './subscription.js';
export type { Gap, GapReason, SubscribeOptions, SubscriptionEvents } from './subscription.js';
export type { AckMode, DeliveryInfo } from './acks.js';
export type { DeltaFormat } from './delta.js';
export { HeraldError, CloseCodes, shouldReconnect } from './errors.js';
export type { ErrorCode } from './errors.js';
export { backoffDelay } from './backoff.js';
export type { BackoffOptions } from './backoff.js';
export { jsonCodec, msgpackCodec } from './protocol.js';
export type {
  ClientInfo,
  Codec,
  ConnectedInfo,
  Envelope,
  HistoryResult,
  Message,
  MsgpackLib,
  PresenceStats,
  PublishResult,
  StreamPosition,
} from './protocol.js';
export { Emitter } from './emitter.js';
