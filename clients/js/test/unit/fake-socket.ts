import type { Envelope } from '../../src/protocol.js';

/** A WebSocket double: the test plays the server. */
export class FakeSocket {
  static all: FakeSocket[] = [];
  static last(): FakeSocket {
    const s = FakeSocket.all.at(-1);
    if (!s) throw new Error('no socket opened');
    return s;
  }

  readyState = 0;
  binaryType = 'blob';
  sent: Envelope[] = [];
  closedWith: { code?: number; reason?: string } | undefined;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;

  constructor(
    readonly url: string,
    readonly protocols?: string | string[],
  ) {
    FakeSocket.all.push(this);
  }

  send(data: string | Uint8Array): void {
    this.sent.push(JSON.parse(String(data)) as Envelope);
  }

  close(code?: number, reason?: string): void {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }

  // ---- the server's side ----
  accept(connected: Record<string, unknown> = {}): void {
    this.readyState = 1;
    this.onopen?.({});
    this.push({
      type: 'connected',
      payload: {
        client_id: 'c1',
        session_id: 's1',
        user_id: '',
        resume_token: `rt-${FakeSocket.all.length}`,
        resume_grace_ms: 30_000,
        ping_interval_ms: 25_000,
        pong_timeout_ms: 10_000,
        server: 'fake',
        protocol: 'herald.v1.json',
        ...connected,
      },
    });
  }

  push(m: Envelope): void {
    this.onmessage?.({ data: JSON.stringify(m) });
  }

  /** Reply to the last sent command of `type`. */
  reply(type: string, payload: Record<string, unknown> = {}): void {
    const cmd = this.lastSent(type);
    this.push({ type: 'reply', id: cmd.id, payload });
  }

  fail(type: string, code: string, retryable = false): void {
    const cmd = this.lastSent(type);
    this.push({ type: 'error', id: cmd.id, payload: { code, message: `${code}!`, retryable } });
  }

  lastSent(type: string): Envelope {
    const cmd = [...this.sent].reverse().find((m) => m.type === type);
    if (!cmd) throw new Error(`no ${type} sent; sent: ${JSON.stringify(this.sent)}`);
    return cmd;
  }

  sentOf(type: string): Envelope[] {
    return this.sent.filter((m) => m.type === type);
  }

  drop(code = 1006, reason = ''): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}
