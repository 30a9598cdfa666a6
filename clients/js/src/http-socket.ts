/**
 * A WebSocket-shaped connection over the HTTP transports (docs/protocol.md §10), for networks that
 * block WebSockets: messages come down a streamed `fetch` answer (`POST /http/stream`, one JSON
 * message per line), commands go up as `POST /http/send` batches (one POST at a time, in order),
 * and the socket sends a `ping` when it has sent nothing for the server's ping interval (the
 * server ends silent sessions). The client drives it exactly like a WebSocket.
 */
import type { WebSocketLike } from './client.js';
import { retryAfterMs, withResumeParam } from './handshake.js';

const CONNECTING = 0;
const OPEN = 1;
const CLOSED = 3;

/** `ws://h/p/ws` → `http://h/p/http/` (and `wss` → `https`). */
export function httpBase(wsUrl: string): string {
  const u = new URL(wsUrl);
  u.protocol = u.protocol === 'wss:' ? 'https:' : u.protocol === 'ws:' ? 'http:' : u.protocol;
  u.pathname = u.pathname.replace(/\/?ws\/?$/, '') + '/http/';
  u.search = '';
  u.hash = '';
  return u.toString();
}

/** Whether this runtime can stream `fetch` answers. */
export function canStreamHttp(): boolean {
  return typeof fetch === 'function' && typeof ReadableStream === 'function' && typeof TextDecoder === 'function';
}

/** What an HTTP socket takes besides a WebSocket's arguments. */
export interface HttpSocketOptions {
  /**
   * A resume token to present on the opening request (`Herald-Resume`), for a client without a
   * token of its own resuming its session (protocol §8).
   */
  resume?: string;
}

/** An HTTP transport's constructor: a WebSocket constructor with {@link HttpSocketOptions}. */
export type HttpSocketCtor = new (url: string, protocols?: string | string[], opts?: HttpSocketOptions) => WebSocketLike;

/** The `close` event of an HTTP socket: a refused opening request may say when to come back. */
export interface HttpCloseEvent {
  code: number;
  reason: string;
  /** The refusal's `Retry-After` (503/429), ms, capped. */
  retryAfterMs?: number;
}

/**
 * In a page of another origin than the server, a `Herald-Resume` header would need the server's
 * CORS preflight to allow it; there the resume token goes in the opening URL's `resume`
 * parameter, the carrier for clients that cannot set the header.
 */
function crossOrigin(base: string): boolean {
  const here = (globalThis as { location?: { origin?: string } }).location?.origin;
  return typeof here === 'string' && here !== 'null' && here !== new URL(base).origin;
}

abstract class HttpSocket implements WebSocketLike {
  readyState = CONNECTING;
  binaryType = 'arraybuffer';
  onopen: ((ev: any) => void) | null = null;
  onmessage: ((ev: any) => void) | null = null;
  onclose: ((ev: any) => void) | null = null;
  onerror: ((ev: any) => void) | null = null;

  protected readonly base: string;
  protected readonly headers: Record<string, string> = { 'content-type': 'application/json' };
  /** Headers of the opening request only. */
  protected readonly openHeaders: Record<string, string> = {};
  /** Query of the opening request (`?resume=…` where the header cannot be used). */
  protected openQuery = '';
  protected readonly abort = new AbortController();
  protected session = '';
  private outbox: string[] = [];
  private posting = false;
  protected sentAt = Date.now();
  protected pingIntervalMs = 25_000;
  /** The code of the `disconnect` advisory, which stands for the close frame. */
  protected advised: { code: number; reason: string } | undefined;

  constructor(url: string, protocols?: string | string[], opts: HttpSocketOptions = {}) {
    this.base = httpBase(url);
    for (const p of ([] as string[]).concat(protocols ?? [])) {
      if (p.startsWith('herald.auth.')) this.headers.authorization = `Bearer ${p.slice('herald.auth.'.length)}`;
      else if (p !== 'herald.v1.json') throw new Error(`the HTTP transport carries JSON only, not ${p}`);
    }
    if (opts.resume) {
      if (crossOrigin(this.base)) this.openQuery = new URL(withResumeParam(this.base, opts.resume)).search;
      else this.openHeaders['herald-resume'] = opts.resume;
    }
    // After the subclass's fields are set.
    queueMicrotask(() => void this.run());
  }

  protected abstract run(): Promise<void>;

  protected opened(session: string): void {
    this.session = session;
    this.readyState = OPEN;
    this.onopen?.({});
  }

  protected deliver(line: string): void {
    if (line.includes('"connected"') || line.includes('"disconnect"')) {
      try {
        const m = JSON.parse(line) as { type?: string; payload?: Record<string, unknown> };
        if (m.type === 'connected' && typeof m.payload?.ping_interval_ms === 'number') {
          this.pingIntervalMs = Math.max(1_000, m.payload.ping_interval_ms);
        } else if (m.type === 'disconnect') {
          this.advised = { code: Number(m.payload?.code ?? 1006), reason: String(m.payload?.reason ?? '') };
        }
      } catch {
        // the client reports undecodable messages
      }
    }
    this.onmessage?.({ data: line });
  }

  send(data: string | Uint8Array): void {
    if (this.readyState !== OPEN) return;
    this.outbox.push(typeof data === 'string' ? data : new TextDecoder().decode(data));
    void this.flush();
  }

  /** One POST at a time keeps the order; what queued meanwhile goes in the next one. */
  private async flush(): Promise<void> {
    if (this.posting || this.outbox.length === 0) return;
    this.posting = true;
    const batch = this.outbox;
    this.outbox = [];
    this.sentAt = Date.now();
    try {
      const r = await fetch(this.base + 'send', {
        method: 'POST',
        headers: { ...this.headers, 'herald-session': this.session },
        body: `[${batch.join(',')}]`,
        credentials: 'include',
        cache: 'no-store',
      });
      if (r.status !== 204) throw new Error(`send answered ${r.status}`);
    } catch {
      // The session is gone or unreachable: end the stream; the client reconnects and resumes.
      this.posting = false;
      this.close(4000, 'send failed');
      return;
    }
    this.posting = false;
    void this.flush();
  }

  close(code?: number, reason?: string): void {
    if (this.readyState === CLOSED) return;
    if (this.readyState === OPEN && (code === 1000 || code === 1001) && this.session) {
      // A clean close ends the session on the server (no resume, others see `leave`).
      void fetch(this.base + 'close', {
        method: 'POST',
        headers: { ...this.headers, 'herald-session': this.session },
        credentials: 'include',
        keepalive: true,
      }).catch(() => undefined);
    }
    this.abort.abort();
    this.finish(code ?? 1000, reason ?? '');
  }

  protected finish(code: number, reason: string, retryAfter?: number): void {
    if (this.readyState === CLOSED) return;
    this.readyState = CLOSED;
    this.stopped();
    this.abort.abort();
    const ev: HttpCloseEvent = { code, reason };
    if (retryAfter !== undefined) ev.retryAfterMs = retryAfter;
    // Later, as a WebSocket's `close` event comes (the caller of `close()` may handle the end
    // itself first).
    setTimeout(() => this.onclose?.(ev), 0);
  }

  /** End after a refused opening request, with its `Retry-After`. */
  protected async refused(r: Response): Promise<void> {
    await r.text().catch(() => '');
    this.finish(this.advised?.code ?? 1006, `HTTP ${r.status}`, retryAfterMs(r.status, r.headers.get('retry-after')));
  }

  /** Stop the subclass's timers. */
  protected stopped(): void {}
}

/** HTTP streaming: `POST /http/stream`, one JSON message per line. */
class HttpStreamSocket extends HttpSocket {
  private pingTimer: ReturnType<typeof setInterval> | undefined;

  protected override stopped(): void {
    clearInterval(this.pingTimer);
  }

  protected async run(): Promise<void> {
    let reader: ReadableStreamDefaultReader<Uint8Array>;
    try {
      const r = await fetch(this.base + 'stream' + this.openQuery, {
        method: 'POST',
        headers: { ...this.headers, ...this.openHeaders },
        body: '[]',
        credentials: 'include',
        cache: 'no-store',
        signal: this.abort.signal,
      });
      if (r.status !== 200 || !r.body) {
        await this.refused(r);
        return;
      }
      reader = r.body.getReader();
      this.opened(r.headers.get('herald-session') ?? '');
    } catch {
      this.finish(1006, 'HTTP transport unreachable');
      return;
    }
    this.pingTimer = setInterval(() => {
      if (Date.now() - this.sentAt >= this.pingIntervalMs) this.send('{"type":"ping"}');
    }, 1_000);
    const decoder = new TextDecoder();
    let buf = '';
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          // Empty lines are keepalives (for proxies); the client's watchdog pings when it needs to.
          if (line !== '') this.deliver(line);
        }
      }
    } catch {
      // aborted or cut
    }
    const a = this.advised;
    this.finish(a?.code ?? 1006, a?.reason ?? 'the stream ended');
  }

}

/**
 * Long-polling: `POST /http/poll` answers one batch (a JSON array) at a time, acknowledged by the
 * next poll's `Herald-Ack`; for proxies that buffer streamed answers. Polls keep the session
 * alive on the server; the client's watchdog pings when nothing comes.
 */
class HttpPollSocket extends HttpSocket {
  protected async run(): Promise<void> {
    let ack = 0;
    let first = true;
    for (;;) {
      let r: Response;
      try {
        const headers: Record<string, string> = { ...this.headers, ...(first ? this.openHeaders : {}) };
        if (!first) {
          headers['herald-session'] = this.session;
          headers['herald-ack'] = String(ack);
        }
        r = await fetch(this.base + 'poll' + (first ? this.openQuery : ''), {
          method: 'POST',
          headers,
          body: first ? '[]' : '',
          credentials: 'include',
          cache: 'no-store',
          signal: this.abort.signal,
        });
      } catch {
        this.finish(this.advised?.code ?? 1006, this.advised?.reason ?? 'poll failed');
        return;
      }
      if (r.status !== 200) {
        if (first) await this.refused(r);
        else {
          await r.text().catch(() => '');
          this.finish(this.advised?.code ?? 1006, `HTTP ${r.status}`);
        }
        return;
      }
      let batch: unknown[];
      try {
        batch = (await r.json()) as unknown[];
      } catch {
        this.finish(1006, 'bad poll answer');
        return;
      }
      if (first) {
        first = false;
        this.opened(r.headers.get('herald-session') ?? '');
      }
      const seq = r.headers.get('herald-seq');
      if (seq !== null) ack = Number(seq);
      for (const m of batch) {
        if (this.readyState === CLOSED) return;
        this.deliver(JSON.stringify(m));
      }
      if (this.advised) {
        // The session ended with this batch.
        this.finish(this.advised.code, this.advised.reason);
        return;
      }
      if (this.readyState === CLOSED) return;
    }
  }
}

/** The HTTP streaming transport, as a WebSocket constructor. */
export const HttpStreamSocketCtor: HttpSocketCtor = HttpStreamSocket;
/** The long-polling transport, as a WebSocket constructor. */
export const HttpPollSocketCtor: HttpSocketCtor = HttpPollSocket;
