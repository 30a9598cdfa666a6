/** Delta updates (docs/protocol.md §5 "message on a delta subscription"). */
import { createDelta } from 'fossil-delta';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { HeraldClient } from '../../src/client.js';
import { applyFossil, deltaOf } from '../../src/delta.js';
import type { HeraldError } from '../../src/errors.js';
import type { Message } from '../../src/protocol.js';
import type { Subscription } from '../../src/subscription.js';
import { FakeSocket } from './fake-socket.js';

const encoder = new TextEncoder();

/** A Fossil delta from `from` to `to`, as the server puts it in a JSON string. */
function delta(from: string, to: string): string {
  return new TextDecoder().decode(new Uint8Array(createDelta(encoder.encode(from), encoder.encode(to))));
}

const T1 = '{"a":1,"b":"hello world hello world hello world","c":3}';
const T2 = '{"a":2,"b":"hello world hello world hello world","c":4}';
const T3 = '{"a":3,"b":"hello world hello world hello world","c":5}';
/** The delta T1 → T2 as the server's Rust `fossil-delta` crate made it (the shared scenario). */
const RUST_T1_T2 = 's\n6:{"a":2k@6,2:4}1Re7yw;';

async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await Promise.resolve();
}

interface Setup {
  c: HeraldClient;
  s: FakeSocket;
  sub: Subscription<unknown>;
  got: Message<unknown>[];
  events: string[];
}

/** A client subscribed to `dash` (offset 0, epoch e1) with delta updates. */
async function deltaSub(): Promise<Setup> {
  const c = new HeraldClient({ url: 'ws://herald.test/ws', WebSocket: FakeSocket, random: () => 0.5, browserEvents: false });
  c.connect();
  await settle();
  const s = FakeSocket.last();
  s.accept();
  await settle();
  const sub = c.subscribe('dash');
  const got: Message<unknown>[] = [];
  const events: string[] = [];
  sub.on('message', (m) => got.push(m));
  sub.on('gap', (g) => events.push(`gap ${g.reason}`));
  sub.on('error', (e: HeraldError) => events.push(`error ${e.code}`));
  sub.on('unsubscribed', () => events.push('unsubscribed'));
  sub.on('subscribed', (x) => events.push(`subscribed ${x.position.offset} ${String(x.recovered)}`));
  s.reply('subscribe', { channel: 'dash', offset: 0, epoch: 'e1', delta: 'fossil' });
  await settle();
  events.splice(0);
  return { c, s, sub, got, events };
}

function message(s: FakeSocket, offset: number, data: string, isDelta = false): void {
  const payload: Record<string, unknown> = { channel: 'dash', offset, epoch: 'e1', time: offset, data };
  if (isDelta) payload.delta = true;
  s.push({ type: 'message', payload });
}

beforeEach(() => {
  FakeSocket.all = [];
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe('fossil-delta (npm) and the server (Rust crate) agree', () => {
  it('applies the scenario delta made by the Rust crate to the expected text', () => {
    expect(applyFossil(T1, RUST_T1_T2)).toBe(T2);
  });

  it('makes the same delta as the Rust crate', () => {
    expect(delta(T1, T2)).toBe(RUST_T1_T2);
  });

  it('rejects a delta whose checksum does not match', () => {
    expect(() => applyFossil(T1, 's\n6:{"a":9k@6,2:4}1Re7yw;')).toThrow(/checksum/);
  });

  it('applies deltas over non-ASCII text (byte offsets, UTF-8)', () => {
    const a = '{"name":"Zoë — café ☕","n":1,"pad":"0123456789012345678901234567890123456789"}';
    const b = '{"name":"Zoë — café ☕","n":2,"pad":"0123456789012345678901234567890123456789"}';
    expect(applyFossil(a, delta(a, b))).toBe(b);
  });

  it('reads the delta format of a subscribe reply', () => {
    expect(deltaOf({ delta: 'fossil' })).toBe('fossil');
    expect(deltaOf({})).toBeUndefined();
    expect(deltaOf({ delta: 'other' })).toBeUndefined();
  });
});

describe('delta subscriptions', () => {
  it('hands the application whole parsed data: a whole message, then deltas', async () => {
    const { s, sub, got, events } = await deltaSub();
    expect(sub.delta).toBe('fossil');
    message(s, 1, T1);
    message(s, 2, delta(T1, T2), true);
    message(s, 3, delta(T2, T3), true);
    expect(got.map((m) => m.data)).toEqual([JSON.parse(T1), JSON.parse(T2), JSON.parse(T3)]);
    expect(got.map((m) => m.offset)).toEqual([1, 2, 3]);
    expect(got.every((m) => !('delta' in m))).toBe(true);
    expect(sub.position).toEqual({ offset: 3, epoch: 'e1' });
    expect(events).toEqual([]);
    expect(s.sentOf('unsubscribe')).toEqual([]);
  });

  it('passes the parsed data to the parse option', async () => {
    const { c, s } = await deltaSub();
    const parsed: unknown[] = [];
    const sub2 = c.subscribe('dash2', { parse: (d) => (parsed.push(d), d) });
    s.reply('subscribe', { channel: 'dash2', offset: 0, epoch: 'e1', delta: 'fossil' });
    await settle();
    s.push({ type: 'message', payload: { channel: 'dash2', offset: 1, epoch: 'e1', time: 1, data: T1 } });
    s.push({ type: 'message', payload: { channel: 'dash2', offset: 2, epoch: 'e1', time: 2, data: delta(T1, T2), delta: true } });
    expect(parsed).toEqual([JSON.parse(T1), JSON.parse(T2)]);
    expect(sub2.position?.offset).toBe(2);
  });

  it('resynchronizes on a bad checksum: unsubscribe, subscribe with recover, nothing shown meanwhile', async () => {
    const { s, sub, got, events, c } = await deltaSub();
    message(s, 1, T1);
    message(s, 2, 's\n6:{"a":9k@6,2:4}1Re7yw;', true); // the checksum is T2's: another base
    expect(got.map((m) => m.offset)).toEqual([1]);
    const sent = s.sent.slice(-2);
    expect(sent.map((f) => f.type)).toEqual(['unsubscribe', 'subscribe']);
    expect(sent[0]?.payload).toEqual({ channel: 'dash' });
    expect(sent[1]?.payload).toEqual({ channel: 'dash', recover: { offset: 1, epoch: 'e1' } });
    expect(sub.state).toBe('pending');
    // Messages before the subscribe reply are ignored, whole or not.
    message(s, 2, T2);
    message(s, 3, delta(T2, T3), true);
    expect(got.map((m) => m.offset)).toEqual([1]);
    s.reply('unsubscribe', {});
    s.reply('subscribe', { channel: 'dash', offset: 3, epoch: 'e1', recovered: true, missed: 2, delta: 'fossil' });
    message(s, 2, T2);
    message(s, 3, T3);
    await settle();
    expect(got.map((m) => [m.offset, m.data])).toEqual([
      [1, JSON.parse(T1)],
      [2, JSON.parse(T2)],
      [3, JSON.parse(T3)],
    ]);
    // The same subscription object, never unsubscribed for the application.
    expect(c.subscription('dash')).toBe(sub);
    expect(sub.state).toBe('subscribed');
    expect(events).toEqual(['subscribed 3 true']);
    // And deltas apply again after the recovered (whole) messages.
    message(s, 4, delta(T3, T1), true);
    expect(got.at(-1)?.data).toEqual(JSON.parse(T1));
    expect(s.sentOf('subscribe')).toHaveLength(2);
  });

  it('resynchronizes on an out-of-order delta (its offset is not the base + 1)', async () => {
    const { s, sub, got, events } = await deltaSub();
    message(s, 1, T1);
    message(s, 3, delta(T1, T3), true); // offset 2 never came: this delta is against it
    expect(got.map((m) => m.offset)).toEqual([1]);
    expect(events).toEqual([]); // no gap: the recovery fills it in
    expect(s.lastSent('subscribe').payload).toEqual({ channel: 'dash', recover: { offset: 1, epoch: 'e1' } });
    expect(s.sentOf('unsubscribe')).toHaveLength(1);
    s.reply('subscribe', { channel: 'dash', offset: 3, epoch: 'e1', recovered: true, missed: 2, delta: 'fossil' });
    message(s, 2, T2);
    message(s, 3, T3);
    expect(got.map((m) => m.offset)).toEqual([1, 2, 3]);
    expect(sub.position).toEqual({ offset: 3, epoch: 'e1' });
  });

  it('resynchronizes on a delta without a base (the first message)', async () => {
    const { s, got } = await deltaSub();
    message(s, 1, delta(T1, T2), true);
    expect(got).toEqual([]);
    expect(s.lastSent('subscribe').payload).toEqual({ channel: 'dash', recover: { offset: 0, epoch: 'e1' } });
  });

  it('resynchronizes when the result is not JSON text', async () => {
    const { s, got } = await deltaSub();
    message(s, 1, T1);
    message(s, 2, delta(T1, '{"a":'), true);
    expect(got.map((m) => m.offset)).toEqual([1]);
    expect(s.sentOf('unsubscribe')).toHaveLength(1);
  });

  it('a whole message that is not JSON text is an error, and still the base of the next delta', async () => {
    const { s, got, events } = await deltaSub();
    const bad = '{"a":1,"b":"hello world hello world hello world","c":';
    message(s, 1, bad);
    expect(events).toEqual(['error malformed']);
    message(s, 2, delta(bad, T2), true);
    expect(got.map((m) => [m.offset, m.data])).toEqual([[2, JSON.parse(T2)]]);
    expect(s.sentOf('unsubscribe')).toEqual([]);
  });

  it('reads `delta` from the subscribed push (server-side subscriptions)', async () => {
    const { c, s } = await deltaSub();
    const subs: Subscription<unknown>[] = [];
    c.on('subscription', (x) => subs.push(x));
    s.push({ type: 'subscribed', payload: { channel: 'user:#alice', offset: 4, epoch: 'e1', delta: 'fossil' } });
    const sub = subs[0]!;
    expect(sub.delta).toBe('fossil');
    const got: unknown[] = [];
    sub.on('message', (m) => got.push(m.data));
    s.push({ type: 'message', payload: { channel: 'user:#alice', offset: 5, epoch: 'e1', time: 5, data: T1 } });
    s.push({ type: 'message', payload: { channel: 'user:#alice', offset: 6, epoch: 'e1', time: 6, data: delta(T1, T2), delta: true } });
    expect(got).toEqual([JSON.parse(T1), JSON.parse(T2)]);
  });

  it('keeps plain subscriptions plain (string data stays a string)', async () => {
    const { c, s } = await deltaSub();
    const sub = c.subscribe('news');
    s.reply('subscribe', { channel: 'news', offset: 0, epoch: 'e1' });
    await settle();
    expect(sub.delta).toBeUndefined();
    const got: unknown[] = [];
    sub.on('message', (m) => got.push(m.data));
    s.push({ type: 'message', payload: { channel: 'news', offset: 1, epoch: 'e1', time: 1, data: '{"a":1}' } });
    expect(got).toEqual(['{"a":1}']);
  });

  it('after a reconnect the resubscribe starts a new chain (no delta against the old base)', async () => {
    const { s, got } = await deltaSub();
    message(s, 1, T1);
    s.drop(1006);
    await vi.advanceTimersByTimeAsync(30_000);
    const s2 = FakeSocket.last();
    expect(s2).not.toBe(s);
    s2.accept();
    await settle();
    // The session was not resumed (no resume reply): a resubscribe with recover.
    s2.fail('resume', 'session_not_found');
    await settle();
    expect(s2.lastSent('subscribe').payload).toEqual({ channel: 'dash', recover: { offset: 1, epoch: 'e1' } });
    s2.reply('subscribe', { channel: 'dash', offset: 1, epoch: 'e1', recovered: true, missed: 0, delta: 'fossil' });
    // A delta against the pre-reconnect text is not trusted: the new subscription's first is whole.
    message(s2, 2, delta(T1, T2), true);
    expect(got.map((m) => m.offset)).toEqual([1]);
    expect(s2.sentOf('unsubscribe')).toHaveLength(1);
  });
  it('a resumed session keeps the chain: a delta against the text held applies', async () => {
    const { s, got } = await deltaSub();
    message(s, 1, T1);
    s.drop(1006);
    await vi.advanceTimersByTimeAsync(30_000);
    const s2 = FakeSocket.last();
    s2.accept();
    await settle();
    expect(s2.lastSent('resume').payload?.positions).toEqual({ dash: { offset: 1, epoch: 'e1' } });
    s2.reply('resume', { session_id: 's1', client_id: 'c1', resume_token: 'rt-C', channels: [{ channel: 'dash', recovered: true }], buffered: 0 });
    message(s2, 2, delta(T1, T2), true);
    await settle();
    expect(got.map((m) => [m.offset, m.data])).toEqual([
      [1, JSON.parse(T1)],
      [2, JSON.parse(T2)],
    ]);
    expect(s2.sentOf('subscribe')).toEqual([]);
  });

  it('a delta that fails while a resume is applied resynchronizes once (no second subscribe)', async () => {
    const { s, got, sub } = await deltaSub();
    message(s, 1, T1);
    s.drop(1006);
    await vi.advanceTimersByTimeAsync(30_000);
    const s2 = FakeSocket.last();
    s2.accept();
    await settle();
    s2.reply('resume', { session_id: 's1', client_id: 'c1', resume_token: 'rt-C', channels: [{ channel: 'dash', recovered: true }], buffered: 0 });
    message(s2, 3, delta(T2, T3), true); // in the same chunk as the reply: before `connected`
    await settle();
    expect(s2.sentOf('unsubscribe')).toHaveLength(1);
    expect(s2.sentOf('subscribe').map((f) => f.payload)).toEqual([{ channel: 'dash', recover: { offset: 1, epoch: 'e1' } }]);
    s2.reply('subscribe', { channel: 'dash', offset: 3, epoch: 'e1', recovered: true, missed: 2, delta: 'fossil' });
    message(s2, 2, T2);
    message(s2, 3, T3);
    expect(got.map((m) => m.offset)).toEqual([1, 2, 3]);
    expect(sub.state).toBe('subscribed');
  });
});
