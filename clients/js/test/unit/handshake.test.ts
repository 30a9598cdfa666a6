/**
 * What a connection attempt carries at the handshake (the resume token of a client without a
 * token of its own, protocol §8) and how a refused one delays the next (`Retry-After`, §10.5;
 * 1013 advisories, §7). The test plays the server over a FakeSocket or a fake `fetch`, with fake
 * timers.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { HeraldClient, type ClientOptions } from '../../src/client.js';
import { RETRY_AFTER_CAP_MS, retryAfterMs, withResumeParam } from '../../src/handshake.js';
import type { Envelope } from '../../src/protocol.js';
import { FakeSocket } from './fake-socket.js';

function client(opts: Partial<ClientOptions> = {}): HeraldClient {
  return new HeraldClient({
    url: 'ws://herald.test/ws',
    WebSocket: FakeSocket,
    random: () => 0.5,
    browserEvents: false,
    backoff: { minDelayMs: 1_000, maxDelayMs: 1_000 },
    ...opts,
  });
}

async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) await Promise.resolve();
}

const realImmediate = globalThis.setImmediate;

/**
 * Let a fake `fetch` answer be read (a `Response` body is read on the real event loop) and the
 * close event that follows fire (a 0 ms timer set while the fake clock advances is due 1 ms later).
 */
async function answered(): Promise<void> {
  for (let i = 0; i < 3; i++) {
    await new Promise((r) => realImmediate(r));
    await vi.advanceTimersByTimeAsync(1);
  }
}

function resumeParam(url: string): string | null {
  return new URL(url).searchParams.get('resume');
}

beforeEach(() => {
  FakeSocket.all = [];
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
  vi.unstubAllGlobals();
});

describe('resume token at the handshake (WebSocket)', () => {
  it('without a token: the reconnect URL carries resume=<token> (other parameters kept), and resume is the first frame', async () => {
    const c = client({ url: 'ws://herald.test/ws?room=a%20b&x=1' });
    c.connect();
    await settle();
    const s1 = FakeSocket.last();
    expect(s1.url).toBe('ws://herald.test/ws?room=a%20b&x=1'); // nothing to resume yet
    s1.accept({ resume_token: 'rt-A' });
    await settle();
    s1.drop(1006);
    await vi.advanceTimersByTimeAsync(1_000);
    const s2 = FakeSocket.last();
    expect(s2).not.toBe(s1);
    expect(s2.url).toBe('ws://herald.test/ws?room=a%20b&x=1&resume=rt-A');
    expect(s2.protocols).toEqual(['herald.v1.json']);
    s2.accept({ resume_token: 'rt-B' });
    await settle();
    expect(s2.sent[0]).toMatchObject({ type: 'resume', payload: { token: 'rt-A' } });
    s2.reply('resume', { session_id: 's1', client_id: 'c1', resume_token: 'rt-C', channels: [], buffered: 0 });
    await settle();
    expect(c.state).toBe('connected');
    // The next attempt presents the token the resume reply gave.
    s2.drop(1006);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(resumeParam(FakeSocket.last().url)).toBe('rt-C');
  });

  it('with a token of its own: no resume parameter (the token is checked locally)', async () => {
    const c = client({ token: async () => 'tok' });
    c.connect();
    await settle();
    FakeSocket.last().accept({ resume_token: 'rt-A' });
    await settle();
    FakeSocket.last().drop(1006);
    await vi.advanceTimersByTimeAsync(1_000);
    const s2 = FakeSocket.last();
    expect(FakeSocket.all.length).toBe(2);
    expect(s2.url).toBe('ws://herald.test/ws');
    expect(s2.protocols).toEqual(['herald.v1.json', 'herald.auth.tok']);
    s2.accept();
    await settle();
    expect(s2.sent[0]).toMatchObject({ type: 'resume', payload: { token: 'rt-A' } });
  });

  it('only attempts that will send resume carry it', async () => {
    const c = client();
    c.connect();
    await settle();
    FakeSocket.last().accept({ resume_token: 'rt-A' });
    await settle();
    // A slow-consumer close ends the session: nothing to resume, no token at the handshake.
    FakeSocket.last().drop(4001);
    await vi.advanceTimersByTimeAsync(1_000);
    const s2 = FakeSocket.last();
    expect(FakeSocket.all.length).toBe(2);
    expect(resumeParam(s2.url)).toBeNull();
    s2.accept();
    await settle();
    expect(s2.sentOf('resume')).toEqual([]);
  });

  it('a 1013 refusal waits for its reconnect_after_ms and keeps presenting the token', async () => {
    const c = client();
    c.connect();
    await settle();
    FakeSocket.last().accept({ resume_token: 'rt-A' });
    await settle();
    FakeSocket.last().drop(1006);
    await vi.advanceTimersByTimeAsync(1_000);
    const refused = FakeSocket.last();
    expect(resumeParam(refused.url)).toBe('rt-A');
    const delays: number[] = [];
    c.on('reconnecting', (r) => delays.push(r.delayMs));
    // Refused right after the upgrade, before `connected`.
    refused.readyState = 1;
    refused.push({ type: 'disconnect', payload: { code: 1013, reason: 'busy', reconnect: true, reconnect_after_ms: 4_321 } });
    refused.drop(1013);
    expect(delays).toEqual([4_321]);
    await vi.advanceTimersByTimeAsync(4_320);
    expect(FakeSocket.last()).toBe(refused);
    await vi.advanceTimersByTimeAsync(1);
    const s3 = FakeSocket.last();
    expect(s3).not.toBe(refused);
    expect(resumeParam(s3.url)).toBe('rt-A');
    s3.accept();
    await settle();
    expect(s3.sent[0]).toMatchObject({ type: 'resume', payload: { token: 'rt-A' } });
  });
});

/** A WebSocket like npm `ws`: an EventEmitter that reports a refused upgrade's answer. */
class RefusableSocket extends FakeSocket {
  private listeners = new Map<string, ((...a: any[]) => void)[]>();
  on(event: string, fn: (...a: any[]) => void): this {
    this.listeners.set(event, [...(this.listeners.get(event) ?? []), fn]);
    return this;
  }
  terminate(): void {
    this.drop(1006, 'WebSocket was closed before the connection was established');
  }
  refuse(statusCode: number, headers: Record<string, string>): void {
    const fns = this.listeners.get('unexpected-response') ?? [];
    expect(fns.length).toBe(1);
    for (const fn of fns) fn({}, { statusCode, headers });
  }
}

describe('Retry-After on a refused WebSocket upgrade (npm ws)', () => {
  it('delays the next attempt by the Retry-After of a 503', async () => {
    const c = client({ WebSocket: RefusableSocket });
    const delays: number[] = [];
    c.on('reconnecting', (r) => delays.push(r.delayMs));
    c.connect();
    await settle();
    (FakeSocket.last() as RefusableSocket).refuse(503, { 'retry-after': '7' });
    expect(delays).toEqual([7_000]);
    await vi.advanceTimersByTimeAsync(6_999);
    expect(FakeSocket.all.length).toBe(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(FakeSocket.all.length).toBe(2);
    // Without the header: the backoff alone.
    (FakeSocket.last() as RefusableSocket).refuse(503, {});
    expect(delays).toEqual([7_000, 1_000]);
  });
});

// ---- HTTP transports over a fake fetch ----------------------------------------------------------

interface Call {
  url: string;
  init: RequestInit;
  headers: Record<string, string>;
}

/** The server's side of `fetch`: opening requests are answered by `answer`, sends with 204. */
class FakeFetch {
  calls: Call[] = [];
  streams: ReadableStreamDefaultController<Uint8Array>[] = [];
  constructor(private answer: (call: Call) => Response) {}

  readonly fetch = async (url: string, init: RequestInit = {}): Promise<Response> => {
    const call = { url: String(url), init, headers: { ...(init.headers as Record<string, string>) } };
    this.calls.push(call);
    if (call.url.endsWith('/send') || call.url.endsWith('/close')) return new Response(null, { status: 204 });
    return this.answer(call);
  };

  opening(): Call[] {
    return this.calls.filter((c) => /\/http\/(stream|poll)(\?|$)/.test(c.url));
  }

  /** The commands posted on `/http/send`, in order. */
  sent(): Envelope[] {
    return this.calls.filter((c) => c.url.endsWith('/send')).flatMap((c) => JSON.parse(String(c.init.body)) as Envelope[]);
  }

  /** A streamed answer the test writes to (one JSON message per line). */
  stream(session: string): Response {
    const body = new ReadableStream<Uint8Array>({ start: (c) => void this.streams.push(c) });
    return new Response(body, { status: 200, headers: { 'herald-session': session } });
  }

  write(m: Envelope): void {
    this.streams.at(-1)!.enqueue(new TextEncoder().encode(JSON.stringify(m) + '\n'));
  }
}

function connectedPush(resumeToken: string): Envelope {
  return {
    type: 'connected',
    payload: {
      client_id: 'c1',
      session_id: 's1',
      user_id: 'u',
      resume_token: resumeToken,
      resume_grace_ms: 30_000,
      ping_interval_ms: 25_000,
      pong_timeout_ms: 10_000,
      server: 'fake',
      protocol: 'herald.v1.json',
    },
  };
}

describe('HTTP transports', () => {
  it('the opening request carries Herald-Resume when resuming without a token, and resume comes first', async () => {
    let n = 0;
    const f: FakeFetch = new FakeFetch(() => f.stream(`sess-${++n}`));
    vi.stubGlobal('fetch', f.fetch);
    const c = client({ transports: ['http-stream'], WebSocket: undefined });
    c.connect();
    await settle();
    expect(f.opening().length).toBe(1);
    expect(f.opening()[0]!.headers['herald-resume']).toBeUndefined();
    f.write(connectedPush('rt-A'));
    await vi.advanceTimersByTimeAsync(0);
    expect(c.state).toBe('connected');
    f.streams.at(-1)!.close(); // the stream ends without an advisory: resumable
    await vi.advanceTimersByTimeAsync(0);
    expect(c.state).toBe('reconnecting');
    await vi.advanceTimersByTimeAsync(1_000);
    const open2 = f.opening()[1]!;
    expect(open2.url).toBe('http://herald.test/http/stream'); // not in the URL
    expect(open2.headers['herald-resume']).toBe('rt-A');
    f.write(connectedPush('rt-B'));
    await vi.advanceTimersByTimeAsync(0);
    expect(f.sent()[0]).toMatchObject({ type: 'resume', payload: { token: 'rt-A' } });
    const send = f.calls.find((x: Call) => x.url.endsWith('/send'))!;
    expect(send.headers['herald-resume']).toBeUndefined(); // the opening request only
    c.close();
  });

  it('in a page of another origin: the resume parameter on the opening URL instead of the header', async () => {
    vi.stubGlobal('location', { origin: 'https://app.example' });
    let n = 0;
    const f: FakeFetch = new FakeFetch(() => f.stream(`sess-${++n}`));
    vi.stubGlobal('fetch', f.fetch);
    const c = client({ transports: ['http-stream'], WebSocket: undefined });
    c.connect();
    await settle();
    f.write(connectedPush('rt-A'));
    await vi.advanceTimersByTimeAsync(0);
    f.streams.at(-1)!.close();
    await vi.advanceTimersByTimeAsync(1_000);
    const open2 = f.opening()[1]!;
    expect(open2.url).toBe('http://herald.test/http/stream?resume=rt-A');
    expect(open2.headers['herald-resume']).toBeUndefined();
    c.close();
  });

  it('with a token: Authorization only, no Herald-Resume', async () => {
    let polls = 0;
    // Long-polling: every answer is a batch; the first one of a session holds `connected`, the
    // second is lost (404), which is a reconnect.
    const f = new FakeFetch(() =>
      ++polls % 2 === 1
        ? new Response(JSON.stringify([connectedPush(`rt-${polls}`)]), { status: 200, headers: { 'herald-session': 'sess' } })
        : new Response('{}', { status: 404 }),
    );
    vi.stubGlobal('fetch', f.fetch);
    const c = client({ transports: ['http-poll'], WebSocket: undefined, token: 'tok' });
    c.connect();
    await vi.advanceTimersByTimeAsync(1_000);
    const opens = f.calls.filter((x) => x.url.endsWith('/poll') && x.headers['herald-session'] === undefined);
    expect(opens.length).toBe(2);
    for (const o of opens) {
      expect(o.headers.authorization).toBe('Bearer tok');
      expect(o.headers['herald-resume']).toBeUndefined();
    }
    expect(f.sent()[0]).toMatchObject({ type: 'resume', payload: { token: 'rt-1' } });
    c.close();
  });

  it('long-polling: the first poll of a resuming client carries Herald-Resume, the next ones do not', async () => {
    let polls = 0;
    const f = new FakeFetch(() => {
      polls++;
      // Session 1: connected, then its client is lost (404). Session 2: connected, then quiet.
      if (polls === 1) return new Response(JSON.stringify([connectedPush('rt-A')]), { status: 200, headers: { 'herald-session': 's1' } });
      if (polls === 2) return new Response('{"code":"session_not_found"}', { status: 404 });
      if (polls === 3) return new Response(JSON.stringify([connectedPush('rt-B')]), { status: 200, headers: { 'herald-session': 's2' } });
      return new Promise<Response>(() => undefined) as unknown as Response; // a poll left open
    });
    vi.stubGlobal('fetch', f.fetch);
    const c = client({ transports: ['http-poll'], WebSocket: undefined });
    c.connect();
    await vi.advanceTimersByTimeAsync(1_000);
    const polled = f.calls.filter((x) => x.url.endsWith('/poll'));
    expect(polled.length).toBe(4);
    expect(polled[0]!.headers['herald-resume']).toBeUndefined();
    expect(polled[1]!.headers['herald-resume']).toBeUndefined();
    expect(polled[2]!.headers['herald-resume']).toBe('rt-A');
    expect(polled[2]!.headers['herald-session']).toBeUndefined();
    expect(polled[3]!.headers['herald-resume']).toBeUndefined();
    expect(polled[3]!.headers['herald-session']).toBe('s2');
    expect(f.sent()[0]).toMatchObject({ type: 'resume', payload: { token: 'rt-A' } });
    c.close();
  });

  it('a 503 with Retry-After: 7 delays the next opening request by 7 s, on the same transport', async () => {
    const f = new FakeFetch(() =>
      new Response('{"code":"unavailable","message":"busy"}', { status: 503, headers: { 'retry-after': '7', 'content-type': 'application/json' } }),
    );
    vi.stubGlobal('fetch', f.fetch);
    const c = client({ transports: ['http-stream', 'http-poll'], WebSocket: undefined });
    const delays: number[] = [];
    c.on('reconnecting', (r) => delays.push(r.delayMs));
    c.connect();
    await vi.advanceTimersByTimeAsync(0);
    expect(f.opening().length).toBe(1);
    expect(delays).toEqual([7_000]); // max(backoff 1 000, Retry-After 7 000)
    await vi.advanceTimersByTimeAsync(6_999);
    expect(f.opening().length).toBe(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(f.opening().length).toBe(2);
    // A busy node is no sign of a blocked transport: the same one again.
    expect(f.opening()[1]!.url).toBe('http://herald.test/http/stream');
    c.close();
  });

  it('a 429 with Retry-After delays too; other statuses and a larger backoff keep the backoff', async () => {
    let status = 429;
    let retry = '2';
    const f = new FakeFetch(() => new Response('{}', { status, headers: { 'retry-after': retry } }));
    vi.stubGlobal('fetch', f.fetch);
    const c = client({ transports: ['http-stream'], WebSocket: undefined, backoff: { minDelayMs: 3_000, maxDelayMs: 3_000 } });
    const delays: number[] = [];
    c.on('reconnecting', (r) => delays.push(r.delayMs));
    c.connect();
    await vi.advanceTimersByTimeAsync(0);
    expect(delays).toEqual([3_000]); // the backoff is longer than Retry-After: 2
    retry = '5';
    await vi.advanceTimersByTimeAsync(3_000);
    await answered();
    expect(delays).toEqual([3_000, 5_000]);
    status = 500; // not a refusal that says when to come back
    await vi.advanceTimersByTimeAsync(5_000);
    await answered();
    expect(delays).toEqual([3_000, 5_000, 3_000]);
    c.close();
  });
});

describe('helpers', () => {
  it('retryAfterMs reads seconds on 503/429 only, capped at 600 s', () => {
    expect(retryAfterMs(503, '7')).toBe(7_000);
    expect(retryAfterMs(429, ' 1 ')).toBe(1_000);
    expect(retryAfterMs(503, '100000')).toBe(RETRY_AFTER_CAP_MS);
    expect(RETRY_AFTER_CAP_MS).toBe(600_000);
    expect(retryAfterMs(503, 'Wed, 21 Oct 2015 07:28:00 GMT')).toBeUndefined();
    expect(retryAfterMs(503, '-3')).toBeUndefined();
    expect(retryAfterMs(503, null)).toBeUndefined();
    expect(retryAfterMs(500, '7')).toBeUndefined();
  });

  it('withResumeParam keeps the URL and its parameters', () => {
    expect(withResumeParam('ws://h/ws', 'abc')).toBe('ws://h/ws?resume=abc');
    expect(withResumeParam('wss://h:8443/p/ws?a=1&b=x%2By', 'abc')).toBe('wss://h:8443/p/ws?a=1&b=x%2By&resume=abc');
  });
});
