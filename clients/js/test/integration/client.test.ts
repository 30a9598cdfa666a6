import { createServer, connect, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import * as msgpack from '@msgpack/msgpack';
import { HeraldError, msgpackCodec, type HeraldClient, type Message } from '../../src/index.js';
import { cleanup, client, connected, freePort, runCleanup, server, startHerald, token, until } from './herald.js';

afterEach(runCleanup);


/** A TCP relay whose connections the test can cut (no close frame: the server keeps the session). */
async function relay(target: number): Promise<{ url: string; cut(): void; close(): Promise<void> }> {
  const socks = new Set<Socket>();
  const srv: Server = createServer((inbound) => {
    const out = connect(target, '127.0.0.1');
    socks.add(inbound).add(out);
    inbound.pipe(out).pipe(inbound);
    const gone = () => {
      inbound.destroy();
      out.destroy();
    };
    inbound.on('error', gone).on('close', gone);
    out.on('error', gone).on('close', gone);
  });
  const port = await freePort();
  await new Promise<void>((r) => srv.listen(port, '127.0.0.1', r));
  const r = {
    url: `ws://127.0.0.1:${port}/ws`,
    cut: () => {
      for (const s of socks) s.destroy();
      socks.clear();
    },
    close: () => new Promise<void>((res) => {
      r.cut();
      srv.close(() => res());
    }),
  };
  cleanup.push(() => r.close());
  return r;
}

describe('against a real herald server', () => {
  it('authenticates, subscribes, publishes, reads history and presence; errors are typed', async () => {
    const h = await server();
    const alice = client(h.wsUrl, { token: () => token('alice', '1h', { name: 'Alice' }) });
    await connected(alice);
    expect(alice.info?.user_id).toBe('alice');
    const sub = alice.subscribe<{ text: string }>('chat:lobby');
    await sub.ready();
    const got: string[] = [];
    sub.on('message', (m) => got.push(m.data.text));
    const ack = await alice.publish('chat:lobby', { text: 'hello' });
    expect(ack.offset).toBe(1);
    await until('the message', () => got.length === 1);
    expect(got).toEqual(['hello']);
    const hist = await sub.history();
    expect(hist.publications.map((p) => (p.data as { text: string }).text)).toEqual(['hello']);
    const who = await sub.presence();
    expect(who.map((c) => [c.user_id, c.info])).toEqual([['alice', { name: 'Alice' }]]);
    expect(await alice.presenceStats('chat:lobby')).toEqual({ clients: 1, users: 1 });
    const err = await alice.rpc('nothing').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HeraldError);
    expect(err).toMatchObject({ code: 'unavailable', retryable: true });
    const bad = await alice.history('bad channel!').catch((e: unknown) => e);
    expect(bad).toMatchObject({ code: 'invalid_channel' });
  });

  it('speaks MessagePack', async () => {
    const h = await server();
    const c = client(h.wsUrl, { codec: msgpackCodec(msgpack) });
    await connected(c);
    expect(c.info?.protocol).toBe('herald.v1.msgpack');
    const sub = c.subscribe<{ n: number }>('bin:1');
    await sub.ready();
    const got: number[] = [];
    sub.on('message', (m) => got.push(m.data.n));
    await c.publish('bin:1', { n: 7 });
    await until('the message', () => got.length === 1);
    expect(got).toEqual([7]);
  });

  it('resumes after a cut connection and gets what was published meanwhile, once, in order', async () => {
    const h = await server();
    const r = await relay(h.port);
    const reader = client(r.url, { token: () => token('reader') });
    await connected(reader);
    const sub = reader.subscribe<number>('feed:1');
    await sub.ready();
    const got: number[] = [];
    sub.on('message', (m: Message<number>) => got.push(m.data));
    const writer = client(h.wsUrl);
    await connected(writer);
    await writer.publish('feed:1', 1);
    await until('message 1', () => got.length === 1);
    const resumed = new Promise<boolean>((res) => reader.once('connected', (i) => res(i.resumed)));
    r.cut();
    for (let i = 2; i <= 20; i++) await writer.publish('feed:1', i);
    expect(await resumed).toBe(true);
    await until('all messages', () => got.length >= 20);
    await writer.publish('feed:1', 21);
    await until('message 21', () => got.length === 21);
    expect(got).toEqual(Array.from({ length: 21 }, (_, i) => i + 1));
  });

  it('survives a server restart: reconnects, reports the new epoch as a gap, delivers queued publishes', async () => {
    const port = await freePort();
    let h = await server(port);
    const c = client(h.wsUrl, { token: () => token('bob') });
    await connected(c);
    const sub = c.subscribe<string>('room:1');
    await sub.ready();
    const gaps: string[] = [];
    sub.on('gap', (g) => gaps.push(g.reason));
    const got: string[] = [];
    sub.on('message', (m) => got.push(m.data));
    await c.publish('room:1', 'before');
    await until('before', () => got.length === 1);
    const states: string[] = [];
    c.on('state', (s) => states.push(s));
    await h.kill();
    await until('reconnecting', () => c.state === 'reconnecting');
    const queued = c.publish('room:1', 'queued while down');
    h = await server(port);
    const ack = await queued;
    expect(ack.offset).toBeGreaterThanOrEqual(1);
    await until('the queued publish', () => got.length === 2);
    expect(got).toEqual(['before', 'queued while down']);
    expect(gaps).toEqual(['epoch_changed']);
    expect(states).toContain('reconnecting');
    expect(c.state).toBe('connected');
  });

  it('refreshes its token before it expires', async () => {
    const h = await server();
    let asked = 0;
    const c = client(h.wsUrl, {
      token: () => {
        asked++;
        return token('carol', asked === 1 ? '2s' : '1h');
      },
    });
    const connectedAt = Date.now();
    await connected(c);
    expect(c.info?.expires_in_ms).toBeLessThanOrEqual(2_000);
    await until('a refresh', () => asked === 2, 5_000);
    // Past the first token's expiry, the same connection still works.
    await until('the first token expired', () => Date.now() > connectedAt + 2_500, 5_000);
    const sub = c.subscribe('after:refresh');
    await sub.ready();
    expect(c.state).toBe('connected');
    expect(asked).toBe(2);
  });
});

describe('connection rotation (connection.max_lifetime)', () => {
  it('reconnects at once after 4005 and resumes: every message once, in order, no presence flap', async () => {
    const h = await startHerald({
      env: { HERALD_CONNECTION__MAX_LIFETIME: '1s', HERALD_CONNECTION__PING_INTERVAL: '100ms' },
    });
    cleanup.push(() => h.kill());
    const watcher = client(h.wsUrl, { token: () => token('watcher') });
    await connected(watcher);
    const wsub = watcher.subscribe<number>('rot:room');
    await wsub.ready();
    const flaps: [string, unknown][] = [];
    wsub.on('join', (j) => flaps.push(['join', j]));
    wsub.on('leave', (l) => flaps.push(['leave', l]));
    const reader = client(h.wsUrl, { token: () => token('reader') }, { minDelayMs: 2_000, maxDelayMs: 3_000 });
    await connected(reader);
    const sub = reader.subscribe<number>('rot:room');
    await sub.ready();
    await until("the reader's join", () => flaps.length === 1);
    const got: number[] = [];
    const gaps: unknown[] = [];
    sub.on('message', (m: Message<number>) => got.push(m.data));
    sub.on('gap', (g) => gaps.push(g));
    const downs: number[] = [];
    const ups: { resumed: boolean; after: number }[] = [];
    let downAt = 0;
    reader.on('disconnected', (d) => {
      downs.push(d.code);
      downAt = Date.now();
    });
    reader.on('connected', (i) => ups.push({ resumed: i.resumed, after: Date.now() - downAt }));
    const writer = client(h.wsUrl);
    await connected(writer);
    for (let i = 1; i <= 120; i++) {
      await writer.publish('rot:room', i);
      await new Promise((r) => setTimeout(r, 25));
    }
    await until('120 messages', () => got.length >= 120);
    // A rotation may be under way: let it finish before counting.
    await until('the reader connected', () => reader.state === 'connected');
    expect(got).toEqual(Array.from({ length: 120 }, (_, i) => i + 1));
    expect(gaps).toEqual([]);
    expect(downs.length).toBeGreaterThanOrEqual(2);
    expect(new Set(downs)).toEqual(new Set([4005]));
    // Resumed every time, and at once: the reader's backoff (2–3 s) was not waited.
    expect(ups.length).toBe(downs.length);
    for (const u of ups) {
      expect(u.resumed).toBe(true);
      expect(u.after).toBeLessThan(1_500);
    }
    // Only the first join: no leave, no join again, through every rotation of both.
    expect(flaps.map(([kind]) => kind)).toEqual(['join']);
  });
});

describe('reconnect storm control (limits.connect_per_second)', () => {
  it('a client refused with 1013 waits the hint, stays on WebSocket and connects', async () => {
    const h = await startHerald({
      env: {
        HERALD_LIMITS__CONNECT_PER_SECOND: '1',
        HERALD_LIMITS__CONNECT_BURST: '1',
        HERALD_LIMITS__CONNECT_RETRY_JITTER: '2s',
      },
    });
    cleanup.push(() => h.kill());
    const first = client(h.wsUrl, { token: () => token('first') });
    await connected(first);
    // Clients in a row until one is refused (the bucket refills one per second: on a slow
    // machine one may be admitted in between).
    let refused: HeraldClient | undefined;
    const downs: number[] = [];
    const delays: number[] = [];
    for (let i = 0; i < 5 && !refused; i++) {
      const c = client(h.wsUrl, { token: () => token(`c${i}`) });
      const outcome = new Promise<'connected' | 'refused'>((res) => {
        c.once('connected', () => res('connected'));
        c.once('disconnected', (d) => {
          downs.push(d.code);
          res('refused');
        });
      });
      c.once('reconnecting', (r) => delays.push(r.delayMs));
      c.connect();
      if ((await outcome) === 'refused') refused = c;
    }
    expect(refused).toBeDefined();
    const second = refused as HeraldClient;
    await until('the refused client to connect', () => second.state === 'connected');
    expect(downs).toEqual([1013]);
    expect(delays[0]).toBeGreaterThanOrEqual(1_000);
    expect(second.transport).toBe('websocket');
  });
});
