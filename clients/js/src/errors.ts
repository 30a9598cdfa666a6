/** Error codes of the Herald protocol (docs/protocol.md §6), plus client-side codes. */
export type ErrorCode =
  | 'malformed'
  | 'bad_request'
  | 'wrong_frame_type'
  | 'unknown_type'
  | 'invalid_channel'
  | 'unknown_namespace'
  | 'permission_denied'
  | 'already_subscribed'
  | 'not_subscribed'
  | 'too_many_channels'
  | 'channel_full'
  | 'history_disabled'
  | 'presence_disabled'
  | 'epoch_mismatch'
  | 'session_not_found'
  | 'resume_not_allowed'
  | 'too_large'
  | 'unavailable'
  | 'internal'
  | 'unauthorized'
  | 'token_invalid'
  | 'token_expired'
  | 'token_revoked'
  | 'rate_limited'
  | 'timeout'
  | 'rpc_error'
  // Client-side codes.
  /** The request was sent but no reply came within `requestTimeout`. */
  | 'request_timeout'
  /** The client was closed (by `close()`, a terminal close code or `maxAttempts`). */
  | 'closed'
  /** The offline publish queue is full. */
  | 'queue_full'
  /** A queued publish waited longer than `offlineQueue.maxAgeMs`. */
  | 'queue_expired'
  /** The connection dropped before the reply; safe to retry. */
  | 'disconnected'
  /**
   * A `message` handler of an at-least-once subscription threw (or its promise rejected): the
   * message was not acknowledged, the server sends it again.
   */
  | 'handler_failed';

/** An error reported by the server or by the client itself. */
export class HeraldError extends Error {
  override readonly name = 'HeraldError';

  constructor(
    /** Stable code; `message` is for humans. */
    readonly code: ErrorCode | string,
    message: string,
    /** Whether retrying the same request later can succeed. */
    readonly retryable = false,
  ) {
    super(message);
  }
}

/** The error of an `error` frame's payload: its code as sent (also one this client does not know) and the server's `retryable`. */
export function errorOf(payload: Record<string, unknown> | undefined): HeraldError {
  return new HeraldError(
    String(payload?.code ?? 'internal'),
    String(payload?.message ?? 'unknown error'),
    payload?.retryable === true,
  );
}

/** Close codes (docs/protocol.md §7). */
export const CloseCodes = {
  normal: 1000,
  goingAway: 1001,
  protocolError: 1002,
  unsupportedData: 1003,
  abnormal: 1006,
  invalidPayload: 1007,
  policyViolation: 1008,
  messageTooBig: 1009,
  internalError: 1011,
  tryAgainLater: 1013,
  heartbeatTimeout: 4000,
  slowConsumer: 4001,
  connectionLimit: 4002,
  writeTimeout: 4003,
  rateLimited: 4004,
  rotated: 4005,
  tokenExpired: 4010,
  authTimeout: 4011,
  tooManyViolations: 4500,
  disconnectedByServer: 4501,
  authFailed: 4502,
  revoked: 4503,
} as const;

/** Whether a connection closed with `code` should be re-established (docs/protocol.md §7). */
export function shouldReconnect(code: number): boolean {
  if (code >= 4000 && code < 4500) return true;
  if (code >= 4500 && code < 5000) return false;
  return ![1000, 1002, 1003, 1007, 1008, 1009].includes(code);
}
