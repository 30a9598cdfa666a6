import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { HeraldClient, type ClientOptions } from '../../src/client.js';
import { HeraldError } from '../../src/errors.js';
import type { Message } from '../../src/protocol.js';
import { FakeSocket } from './fake-socket.js';

function client(opts: Partial<ClientOptions> = {}): HeraldClient {
  return new HeraldClient({
    url: 'ws://herald.test/ws',
    WebSocket: FakeSocket,
    random: () => 0.5,
    browserEvents: false,
    ...opts,
  });
}

/** Let promise callbacks run (the client awaits its token callback and replies). */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await Promise.resolve();
}

async function connected(c: HeraldClient, payload: Record<string, unknown> = {}): Promise<FakeSocket> {
  c.connect();
  await settle();
  const s = FakeSocket.last();
  s.accept(payload);
  await settle();
  return s;
}

function msg(offset: number, data: unknown, epoch = 'e1', channel = 'news'): Record<string, unknown> {
  return { channel, offset, epoch, time: 1, data };
}

beforeEach(() => {
  FakeSocket.all = [];
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe('connecting', () => {
  it('emits connecting and connected, and carries the token in a subprotocol entry', async () => {
    const c = client({ token: 'tok-1' });
    const states: string[] = [];
    c.on('state', (s) => states.push(s));
    const s = await connected(c, { user_id: 'alice' });
    expect(s.protocols).toEqual(['herald.v1.json', 'herald.auth.tok-1']);
    expect(s.url).toBe('ws://herald.test/ws');
    expect(states).toEqual(['connecting', 'connected']);
    expect(c.info?.user_id).toBe('alice');
  });

  it('sends the token as the first message with tokenCarrier "message"', async () => {
    const c = client({ token: async () => 'tok-2', tokenCarrier: 'message' });
    c.connect();
    await settle();
    const s = FakeSocket.last();
    expect(s.protocols).toEqual(['herald.v1.json']);
    s.readyState = 1;
    s.onopen?.({});
    expect(s.sent[0]).toEqual({ type: 'auth', id: 'auth', payload: { token: 'tok-2' } });
  });
});

describe('subscriptions', () => {
  it('delivers messages in order and drops duplicates', async () => {
    const c = client();
    const s = await connected(c);
    const sub = c.subscribe<{ n: number }>('news');
    const got: number[] = [];
    sub.on('message', (m: Message<{ n: number }>) => got.push(m.data.n));
    expect(s.lastSent('subscribe').payload).toEqual({ channel: 'news' });
    s.reply('subscribe', { channel: 'news', offset: 4, epoch: 'e1' });
    await settle();
    expect(sub.state).toBe('subscribed');
    for (const o of [5, 6, 6, 5, 7]) s.push({ type: 'message', payload: msg(o, { n: o }) });
    expect(got).toEqual([5, 6, 7]);
    expect(sub.position).toEqual({ offset: 7, epoch: 'e1' });
  });

  it('validates data with parse and reports rejected messages', async () => {
    const c = client();
    const s = await connected(c);
    const sub = c.subscribe('news', {
      parse: (d) => {
        if (typeof d !== 'string') throw new Error('not a string');
        return d;
      },
    });
    s.reply('subscribe', { channel: 'news', offset: 0, epoch: 'e1' });
    await settle();
    const got: string[] = [];
    const errors: HeraldError[] = [];
    sub.on('message', (m) => got.push(m.data));
    sub.on('error', (e) => errors.push(e));
    s.push({ type: 'message', payload: msg(1, 'ok') });
    s.push({ type: 'message', payload: msg(2, 42) });
    expect(got).toEqual(['ok']);
    expect(errors.map((e) => e.code)).toEqual(['malformed']);
  });

  it('ends a refused subscription with the typed error', async () => {
    const c = client();
    const s = await connected(c);
    const sub = c.subscribe('secret:x');
    const ready = sub.ready();
    s.fail('subscribe', 'permission_denied');
    await expect(ready).rejects.toMatchObject({ code: 'permission_denied', retryable: false });
    expect(sub.state).toBe('unsubscribed');
    expect(c.subscription('secret:x')).toBeUndefined();
  });

  it('tracks subscriptions the server makes and ends', async () => {
    const c = client();
    const s = await connected(c);
    const made: string[] = [];
    c.on('subscription', (sub) => made.push(sub.channel));
    s.push({ type: 'subscribed', payload: { channel: 'inbox', offset: 2, epoch: 'e1' } });
    expect(made).toEqual(['inbox']);
    const sub = c.subscription('inbox');
    expect(sub?.byServer).toBe(true);
    s.push({ type: 'unsubscribed', payload: { channel: 'inbox' } });
    expect(sub?.state).toBe('unsubscribed');
  });
});

describe('reconnecting', () => {
  it('backs off with jitter, asks for a fresh token, resumes the session', async () => {
    let n = 0;
    const c = client({ token: async () => `tok-${++n}`, backoff: { minDelayMs: 1_000, maxDelayMs: 10_000 } });
    const s1 = await connected(c, { resume_token: 'rt-A' });
    const sub = c.subscribe('news');
    s1.reply('subscribe', { channel: 'news', offset: 1, epoch: 'e1' });
    await settle();
    s1.push({ type: 'message', payload: msg(2, 'x') });
    const events: unknown[] = [];
    c.on('disconnected', (d) => events.push(['disconnected', d]));
    c.on('reconnecting', (r) => events.push(['reconnecting', r.attempt, r.delayMs]));
    s1.drop(1006);
    // random() = 0.5 → halfway between 1 000 and the first ceiling (1 000).
    expect(events).toEqual([
      ['disconnected', { code: 1006, reason: '', reconnect: true }],
      ['reconnecting', 1, 1_000],
    ]);
    expect(c.state).toBe('reconnecting');
    await vi.advanceTimersByTimeAsync(999);
    expect(FakeSocket.all.length).toBe(1);
    await vi.advanceTimersByTimeAsync(1);
    const s2 = FakeSocket.last();
    expect(s2.protocols).toEqual(['herald.v1.json', 'herald.auth.tok-2']);
    const resumed = vi.fn();
    c.on('connected', (i) => resumed(i.resumed));
    s2.accept({ resume_token: 'rt-B' });
    await settle();
    expect(s2.lastSent('resume').payload).toEqual({ token: 'rt-A', positions: { news: { offset: 2, epoch: 'e1' } } });
    s2.reply('resume', { session_id: 's1', client_id: 'c1', resume_token: 'rt-C', channels: [{ channel: 'news', recovered: true }], buffered: 0 });
    await settle();
    expect(resumed).toHaveBeenCalledWith(true);
    expect(s2.sentOf('subscribe')).toEqual([]);
    expect(sub.state).toBe('subscribed');
    // The next resume uses the token from the resume reply.
    s2.drop(1006);
    await vi.advanceTimersByTimeAsync(1_000);
    FakeSocket.last().accept();
    await settle();
    expect(FakeSocket.last().lastSent('resume').payload?.token).toBe('rt-C');
  });

  it('grows the delay per failed attempt up to the cap, and resets after a success', async () => {
    const c = client({ random: () => 1, backoff: { minDelayMs: 100, maxDelayMs: 1_000 } });
    await connected(c);
    const delays: number[] = [];
    c.on('reconnecting', (r) => delays.push(r.delayMs));
    FakeSocket.last().drop(1006);
    for (let i = 0; i < 5; i++) {
      await vi.advanceTimersByTimeAsync(delays.at(-1) ?? 0);
      FakeSocket.last().drop(1006);
    }
    expect(delays).toEqual([100, 200, 400, 800, 1_000, 1_000]);
    await vi.advanceTimersByTimeAsync(1_000);
    FakeSocket.last().accept();
    await settle();
    FakeSocket.last().fail('resume', 'session_not_found');
    await settle();
    expect(c.state).toBe('connected');
    FakeSocket.last().drop(1006);
    expect(delays.at(-1)).toBe(100);
  });

  it('resubscribes with recover when the session is gone, and reports a new epoch as a gap', async () => {
    const c = client();
    const s1 = await connected(c);
    const sub = c.subscribe('news');
    s1.reply('subscribe', { channel: 'news', offset: 5, epoch: 'e1' });
    await settle();
    const gaps: unknown[] = [];
    sub.on('gap', (g) => gaps.push(g));
    s1.drop(1011);
    await vi.advanceTimersByTimeAsync(30_000);
    const s2 = FakeSocket.last();
    s2.accept();
    await settle();
    s2.fail('resume', 'session_not_found');
    await settle();
    expect(s2.lastSent('subscribe').payload).toEqual({ channel: 'news', recover: { offset: 5, epoch: 'e1' } });
    s2.reply('subscribe', { channel: 'news', offset: 2, epoch: 'e2', recovered: false, missed: 0 });
    await settle();
    expect(gaps).toEqual([
      { channel: 'news', reason: 'epoch_changed', after: { offset: 5, epoch: 'e1' }, now: { offset: 2, epoch: 'e2' } },
    ]);
    const got: number[] = [];
    sub.on('message', (m) => got.push(m.offset));
    s2.push({ type: 'message', payload: msg(3, 'new', 'e2') });
    expect(got).toEqual([3]);
  });

  // Regression (issue 13): an offset jump inside one epoch (a drop_oldest/latest namespace dropped
  // messages for a slow client) was accepted silently; the Rust client reported it as a gap.
  it('reports an offset skip inside the epoch as a gap, once, then delivers', async () => {
    const c = client();
    const s1 = await connected(c);
    const sub = c.subscribe<string>('news');
    s1.reply('subscribe', { channel: 'news', offset: 5, epoch: 'e1' });
    await settle();
    const gaps: unknown[] = [];
    const got: number[] = [];
    sub.on('gap', (g) => gaps.push(g));
    sub.on('message', (m) => got.push(m.offset));
    s1.push({ type: 'message', payload: msg(6, 'a') });
    s1.push({ type: 'message', payload: msg(9, 'b') });
    s1.push({ type: 'message', payload: msg(10, 'c') });
    expect(got).toEqual([6, 9, 10]);
    expect(gaps).toEqual([
      { channel: 'news', reason: 'skipped', after: { offset: 6, epoch: 'e1' }, now: { offset: 8, epoch: 'e1' } },
    ]);
  });

  it('does not report a trimmed recovery twice', async () => {
    const c = client();
    const s1 = await connected(c);
    const sub = c.subscribe<string>('news');
    s1.reply('subscribe', { channel: 'news', offset: 5, epoch: 'e1' });
    await settle();
    const gaps: string[] = [];
    sub.on('gap', (g) => gaps.push(g.reason));
    s1.drop(1006);
    await vi.advanceTimersByTimeAsync(30_000);
    const s2 = FakeSocket.last();
    s2.accept();
    await settle();
    s2.fail('resume', 'session_not_found');
    await settle();
    s2.reply('subscribe', { channel: 'news', offset: 20, epoch: 'e1', recovered: false, missed: 3 });
    for (const o of [18, 19, 20]) s2.push({ type: 'message', payload: msg(o, 'x') });
    await settle();
    expect(gaps).toEqual(['trimmed']);
    expect(sub.position).toEqual({ offset: 20, epoch: 'e1' });
  });

  // Regression: the subscribe reply was applied in a promise continuation, after messages that
  // arrived in the same chunk, so a new epoch's first message made a false "trimmed" gap.
  it('applies a subscribe reply before the messages that follow it in the same chunk', async () => {
    const c = client();
    const s1 = await connected(c);
    const sub = c.subscribe<string>('news');
    s1.reply('subscribe', { channel: 'news', offset: 5, epoch: 'e1' });
    await settle();
    const gaps: string[] = [];
    const got: string[] = [];
    sub.on('gap', (g) => gaps.push(g.reason));
    sub.on('message', (m) => got.push(`${m.epoch}:${m.offset}`));
    s1.drop(1006);
    await vi.advanceTimersByTimeAsync(30_000);
    const s2 = FakeSocket.last();
    s2.accept();
    await settle();
    s2.fail('resume', 'session_not_found');
    await settle();
    // No settling between the reply and the message: one chunk.
    s2.reply('subscribe', { channel: 'news', offset: 0, epoch: 'e2', recovered: false, missed: 0 });
    s2.push({ type: 'message', payload: msg(1, 'first', 'e2') });
    await settle();
    expect(gaps).toEqual(['epoch_changed']);
    expect(got).toEqual(['e2:1']);
    expect(sub.position).toEqual({ offset: 1, epoch: 'e2' });
  });

  it('stops on terminal close codes and after maxAttempts', async () => {
    const c = client();
    await connected(c);
    const closed = vi.fn();
    c.on('closed', closed);
    FakeSocket.last().drop(4503, 'revoked');
    expect(c.state).toBe('closed');
    expect(closed).toHaveBeenCalledWith(expect.objectContaining({ code: 4503 }));
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeSocket.all.length).toBe(1);

    const d = client({ maxAttempts: 2 });
    d.connect();
    await settle();
    for (let i = 0; i < 3; i++) {
      FakeSocket.last().drop(1006);
      await vi.advanceTimersByTimeAsync(60_000);
    }
    expect(d.state).toBe('closed');
    expect(FakeSocket.all.length).toBe(1 + 3);
  });

  it('stays closed when a reconnecting handler closes the client', async () => {
    const c = client();
    const s = await connected(c);
    c.on('reconnecting', () => c.close());
    s.drop(1006);
    expect(c.state).toBe('closed');
    await vi.advanceTimersByTimeAsync(60_000);
    expect(c.state).toBe('closed');
    expect(FakeSocket.all.length).toBe(1);
  });

  it("honours the server's disconnect advisory", async () => {
    const c = client();
    const s = await connected(c);
    const delays: number[] = [];
    c.on('reconnecting', (r) => delays.push(r.delayMs));
    s.push({ type: 'disconnect', payload: { code: 1001, reason: 'bye', reconnect: true, reconnect_after_ms: 7_000 } });
    s.drop(1001);
    expect(delays).toEqual([7_000]);

    const d = client();
    const t = await connected(d);
    t.push({ type: 'disconnect', payload: { code: 4501, reason: 'kicked', reconnect: false } });
    t.drop(1011);
    expect(d.state).toBe('closed');
  });
});

describe('publishing', () => {
  it('queues publishes while disconnected, bounded, and sends them with idempotency keys on connect', async () => {
    const c = client({ offlineQueue: { maxSize: 2, maxAgeMs: 60_000 } });
    const a = c.publish('news', 1, { idempotencyKey: 'k1' });
    const b = c.publish('news', 2);
    await expect(c.publish('news', 3)).rejects.toMatchObject({ code: 'queue_full', retryable: true });
    const s = await connected(c);
    const sent = s.sentOf('publish');
    expect(sent.map((m) => m.payload?.data)).toEqual([1, 2]);
    expect(sent[0]?.payload?.idempotency_key).toBe('k1');
    expect(typeof sent[1]?.payload?.idempotency_key).toBe('string');
    s.push({ type: 'reply', id: sent[0]?.id, payload: { offset: 1, epoch: 'e1' } });
    s.push({ type: 'reply', id: sent[1]?.id, payload: { offset: 2, epoch: 'e1' } });
    await expect(a).resolves.toEqual({ offset: 1, epoch: 'e1' });
    await expect(b).resolves.toEqual({ offset: 2, epoch: 'e1' });
  });

  it('expires queued publishes', async () => {
    const c = client({ offlineQueue: { maxAgeMs: 5_000 } });
    const p = c.publish('news', 1);
    const check = expect(p).rejects.toMatchObject({ code: 'queue_expired' });
    await vi.advanceTimersByTimeAsync(5_000);
    await check;
  });

  it('sends a publish whose reply was lost again with the same key', async () => {
    const c = client();
    const s1 = await connected(c);
    const p = c.publish('news', 'once');
    const key = s1.lastSent('publish').payload?.idempotency_key;
    s1.drop(1006);
    await vi.advanceTimersByTimeAsync(30_000);
    const s2 = FakeSocket.last();
    s2.accept();
    await settle();
    s2.fail('resume', 'session_not_found');
    await settle();
    expect(s2.lastSent('publish').payload).toEqual({ channel: 'news', data: 'once', idempotency_key: key });
    s2.reply('publish', { offset: 9, epoch: 'e1', duplicate: true });
    await expect(p).resolves.toEqual({ offset: 9, epoch: 'e1', duplicate: true });
  });

  it('rejects with the server error code', async () => {
    const c = client();
    const s = await connected(c);
    const p = c.publish('news', 'x');
    s.fail('publish', 'rate_limited', true);
    await expect(p).rejects.toEqual(new HeraldError('rate_limited', 'rate_limited!', true));
  });
});

describe('requests', () => {
  it('rpc resolves with the data; silence becomes request_timeout', async () => {
    const c = client({ requestTimeoutMs: 2_000 });
    const s = await connected(c);
    const r = c.rpc<{ ok: boolean }>('order.status', { id: 1 });
    expect(s.lastSent('rpc').payload).toEqual({ method: 'order.status', data: { id: 1 } });
    s.reply('rpc', { data: { ok: true } });
    await expect(r).resolves.toEqual({ ok: true });
    const slow = c.rpc('slow');
    const check = expect(slow).rejects.toMatchObject({ code: 'request_timeout', retryable: true });
    await vi.advanceTimersByTimeAsync(2_000);
    await check;
  });

  it('fails requests in flight with a retryable error when the connection drops', async () => {
    const c = client();
    const s = await connected(c);
    const h = c.history('news');
    s.drop(1006);
    await expect(h).rejects.toMatchObject({ code: 'disconnected', retryable: true });
  });

  it('answers the server refresh request with a fresh token', async () => {
    let n = 0;
    const c = client({ token: () => `tok-${++n}` });
    const s = await connected(c);
    s.push({ type: 'refresh', payload: { expires_in_ms: 1_000 } });
    await settle();
    expect(s.lastSent('refresh').payload).toEqual({ token: 'tok-2' });
  });
});

describe('heartbeat watchdog', () => {
  it('pings after silence and reconnects when nothing comes back', async () => {
    const c = client();
    const s = await connected(c, { ping_interval_ms: 1_000, pong_timeout_ms: 500 });
    await vi.advanceTimersByTimeAsync(1_000);
    expect(s.sentOf('ping').length).toBe(1);
    // Any frame counts as an answer.
    s.push({ type: 'pong', payload: {} });
    await vi.advanceTimersByTimeAsync(500);
    expect(c.state).toBe('connected');
    await vi.advanceTimersByTimeAsync(1_000);
    expect(s.sentOf('ping').length).toBe(2);
    await vi.advanceTimersByTimeAsync(500);
    expect(s.closedWith?.code).toBe(4000);
    expect(c.state).toBe('reconnecting');
  });
});

describe('browser events', () => {
  it('goes offline without retrying, reconnects at once when online, closes on pagehide', async () => {
    const win = new EventTarget();
    const doc = Object.assign(new EventTarget(), { visibilityState: 'visible' });
    vi.stubGlobal('window', win);
    vi.stubGlobal('addEventListener', win.addEventListener.bind(win));
    vi.stubGlobal('removeEventListener', win.removeEventListener.bind(win));
    vi.stubGlobal('document', doc);
    try {
      const c = client({ browserEvents: true });
      const s1 = await connected(c, { resume_token: 'rt-1' });
      win.dispatchEvent(new Event('offline'));
      expect(c.state).toBe('offline');
      expect(s1.closedWith?.code).toBe(4000); // not 1000: the session stays resumable
      const p = c.publish('news', 'while offline');
      await vi.advanceTimersByTimeAsync(40_000);
      expect(FakeSocket.all.length).toBe(1);
      win.dispatchEvent(new Event('online'));
      await settle();
      const s2 = FakeSocket.last();
      expect(FakeSocket.all.length).toBe(2);
      s2.accept();
      await settle();
      s2.reply('resume', { session_id: 's1', client_id: 'c1', resume_token: 'rt-2', channels: [] });
      await settle();
      s2.reply('publish', { offset: 1, epoch: 'e1' });
      await expect(p).resolves.toEqual({ offset: 1, epoch: 'e1' });
      // Visible again after sleep: checks the connection at once.
      doc.dispatchEvent(new Event('visibilitychange'));
      expect(s2.sentOf('ping').length).toBe(1);
      win.dispatchEvent(new Event('pagehide'));
      expect(s2.closedWith?.code).toBe(1000);
      expect(c.state).toBe('closed');
    } finally {
      vi.unstubAllGlobals();
    }
  });
});
