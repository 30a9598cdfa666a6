/** At-least-once delivery: automatic acks after the handlers, the serial queue, failures, manual mode. */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { HeraldClient } from '../../src/client.js';
import type { HeraldError } from '../../src/errors.js';
import type { Gap, SubscribeOptions, Subscription } from '../../src/subscription.js';
import { FakeSocket } from './fake-socket.js';

async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) await Promise.resolve();
}

function msg(offset: number, epoch = 'e1'): Record<string, unknown> {
  return { channel: 'orders', offset, epoch, time: 1, data: { n: offset } };
}

/** A connected client with an at-least-once subscription to `orders` (window 8: acks at once from 4 unsent). */
async function setup(
  opts: SubscribeOptions<{ n: number }> = {},
  window = 8,
): Promise<{ c: HeraldClient; s: FakeSocket; sub: Subscription<{ n: number }>; errors: HeraldError[] }> {
  const c = new HeraldClient({ url: 'ws://herald.test/ws', WebSocket: FakeSocket, random: () => 0.5, browserEvents: false });
  c.connect();
  await settle();
  const s = FakeSocket.last();
  s.accept();
  await settle();
  const sub = c.subscribe<{ n: number }>('orders', opts);
  const errors: HeraldError[] = [];
  sub.on('error', (e) => errors.push(e));
  s.reply('subscribe', { channel: 'orders', offset: 0, epoch: 'e1', delivery: 'at_least_once', ack_window: window, ack_timeout_ms: 5000 });
  await settle();
  return { c, s, sub, errors };
}

function acks(s: FakeSocket): unknown[] {
  return s.sentOf('ack').map((m) => {
    expect(m.id).toBeUndefined();
    return m.payload;
  });
}

function push(s: FakeSocket, ...offsets: number[]): void {
  for (const o of offsets) s.push({ type: 'message', payload: msg(o) });
}

beforeEach(() => {
  FakeSocket.all = [];
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe('at-least-once, automatic acks', () => {
  it('reads the delivery fields of the subscribe reply', async () => {
    const { sub } = await setup();
    expect(sub.delivery).toBe('at_least_once');
    expect(sub.ackWindow).toBe(8);
    expect(sub.ackTimeoutMs).toBe(5000);
  });

  it('acks after a synchronous handler returned: batched within 100 ms, at once from half the window', async () => {
    const { s, sub } = await setup();
    const got: number[] = [];
    sub.on('message', (m) => {
      got.push(m.offset);
    });
    push(s, 1, 2);
    expect(got).toEqual([1, 2]);
    expect(acks(s)).toEqual([]);
    await vi.advanceTimersByTimeAsync(99);
    expect(acks(s)).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(acks(s)).toEqual([{ channel: 'orders', offset: 2 }]);
    push(s, 3, 4, 5, 6); // 4 unsent = half of 8: at once
    expect(acks(s)).toEqual([
      { channel: 'orders', offset: 2 },
      { channel: 'orders', offset: 6 },
    ]);
    await vi.advanceTimersByTimeAsync(500);
    expect(acks(s)).toHaveLength(2);
  });

  it('waits for an async handler, one message at a time, and acks only what resolved', async () => {
    const { s, sub } = await setup();
    const started: number[] = [];
    const finish = new Map<number, () => void>();
    sub.on('message', (m) => {
      started.push(m.offset);
      return new Promise<void>((resolve) => finish.set(m.offset, resolve));
    });
    push(s, 1, 2, 3);
    await settle();
    expect(started).toEqual([1]); // 2 waits for 1
    await vi.advanceTimersByTimeAsync(1000);
    expect(acks(s)).toEqual([]);
    finish.get(1)!();
    await settle();
    expect(started).toEqual([1, 2]);
    await vi.advanceTimersByTimeAsync(100);
    expect(acks(s)).toEqual([{ channel: 'orders', offset: 1 }]);
    push(s, 2, 3); // redeliveries of queued messages are dropped
    finish.get(2)!();
    await settle();
    finish.get(3)!();
    await settle();
    expect(started).toEqual([1, 2, 3]);
    await vi.advanceTimersByTimeAsync(100);
    expect(acks(s)).toEqual([
      { channel: 'orders', offset: 1 },
      { channel: 'orders', offset: 3 },
    ]);
  });

  it('a throwing handler: no ack, later messages dropped until the server sends it again, then acked', async () => {
    const { s, sub, errors } = await setup();
    const got: number[] = [];
    let failOn: number | undefined = 2;
    sub.on('message', (m) => {
      got.push(m.offset);
      if (m.offset === failOn) throw new Error('db down');
    });
    push(s, 1, 2, 3, 4);
    expect(got).toEqual([1, 2]);
    expect(errors.map((e) => e.code)).toEqual(['handler_failed']);
    expect(sub.position).toEqual({ offset: 1, epoch: 'e1' });
    await vi.advanceTimersByTimeAsync(100);
    expect(acks(s)).toEqual([{ channel: 'orders', offset: 1 }]);
    push(s, 5); // still waiting for 2
    expect(got).toEqual([1, 2]);
    failOn = undefined;
    push(s, 2, 3, 4, 5); // the redelivery
    expect(got).toEqual([1, 2, 2, 3, 4, 5]);
    expect(acks(s)).toEqual([
      { channel: 'orders', offset: 1 },
      { channel: 'orders', offset: 5 },
    ]);
  });

  it('a rejected promise counts as a failure too and drops what was queued behind it', async () => {
    const { s, sub, errors } = await setup();
    const got: number[] = [];
    let rejectOn: number | undefined = 1;
    sub.on('message', async (m) => {
      got.push(m.offset);
      await Promise.resolve();
      if (m.offset === rejectOn) throw new Error('nope');
    });
    push(s, 1, 2, 3);
    await settle();
    expect(got).toEqual([1]);
    expect(errors.map((e) => e.code)).toEqual(['handler_failed']);
    expect(sub.position).toEqual({ offset: 0, epoch: 'e1' });
    rejectOn = undefined;
    push(s, 1, 2, 3);
    await settle();
    expect(got).toEqual([1, 1, 2, 3]);
    await vi.advanceTimersByTimeAsync(100);
    expect(acks(s)).toEqual([{ channel: 'orders', offset: 3 }]);
  });

  it('a gap push for a failed offset moves on past it', async () => {
    const { s, sub, errors } = await setup();
    const gaps: Gap[] = [];
    sub.on('gap', (g) => gaps.push(g));
    const got: number[] = [];
    sub.on('message', (m) => {
      got.push(m.offset);
      if (m.offset === 1) throw new Error('poison');
    });
    push(s, 1, 2);
    expect(errors).toHaveLength(1);
    s.push({ type: 'gap', payload: { channel: 'orders', epoch: 'e1', from: 1, to: 1, reason: 'unacknowledged' } });
    expect(gaps).toEqual([
      { channel: 'orders', reason: 'unacknowledged', after: { offset: 0, epoch: 'e1' }, now: { offset: 1, epoch: 'e1' } },
    ]);
    push(s, 2);
    expect(got).toEqual([1, 2]);
    await vi.advanceTimersByTimeAsync(100);
    expect(acks(s)).toEqual([{ channel: 'orders', offset: 2 }]);
  });

  it('resumes from the last processed offset, not from messages still waiting for the handler', async () => {
    const { s, sub } = await setup();
    const finish: (() => void)[] = [];
    sub.on('message', () => new Promise<void>((resolve) => finish.push(resolve)));
    push(s, 1, 2, 3);
    await settle();
    finish.shift()!(); // 1 done; 2 running, 3 queued
    await settle();
    s.drop(1006);
    await vi.advanceTimersByTimeAsync(1000);
    const s2 = FakeSocket.last();
    expect(s2).not.toBe(s);
    s2.accept();
    await settle();
    expect(s2.lastSent('resume').payload).toEqual({ token: 'rt-1', positions: { orders: { offset: 1, epoch: 'e1' } } });
    s2.reply('resume', { session_id: 's1', client_id: 'c1', resume_token: 'rt-r1', channels: [{ channel: 'orders', recovered: true }] });
    await settle();
    push(s2, 2, 3); // sent again by the server: already queued here
    finish.shift()!();
    await settle();
    finish.shift()!();
    await settle();
    expect(finish).toEqual([]);
    await vi.advanceTimersByTimeAsync(100);
    expect(acks(s)).toEqual([]); // the ack of 1 was still unsent: the resume position carried it
    expect(acks(s2)).toEqual([{ channel: 'orders', offset: 3 }]);
  });
});

describe('at-least-once, acks never run ahead of the server', () => {
  it('on a new session, what was processed meanwhile is acked only once the server sent it again', async () => {
    const { s, sub } = await setup();
    const finish: (() => void)[] = [];
    sub.on('message', () => new Promise<void>((resolve) => finish.push(resolve)));
    push(s, 1, 2);
    await settle();
    s.drop(1006);
    await vi.advanceTimersByTimeAsync(1000);
    const s2 = FakeSocket.last();
    s2.accept();
    await settle();
    s2.fail('resume', 'session_not_found');
    await settle();
    expect(s2.lastSent('subscribe').payload).toEqual({ channel: 'orders', recover: { offset: 0, epoch: 'e1' } });
    finish.shift()!(); // 1 and 2 finish before the new subscription is confirmed
    await settle();
    finish.shift()!();
    await settle();
    s2.reply('subscribe', { channel: 'orders', offset: 2, epoch: 'e1', recovered: true, missed: 2, delivery: 'at_least_once', ack_window: 8, ack_timeout_ms: 5000 });
    await vi.advanceTimersByTimeAsync(200);
    expect(acks(s2)).toEqual([]); // the new subscription has sent nothing yet
    push(s2, 1); // replayed from history: a duplicate here, but now ackable
    await vi.advanceTimersByTimeAsync(100);
    expect(acks(s2)).toEqual([{ channel: 'orders', offset: 1 }]);
    push(s2, 2);
    await vi.advanceTimersByTimeAsync(100);
    expect(acks(s2)).toEqual([
      { channel: 'orders', offset: 1 },
      { channel: 'orders', offset: 2 },
    ]);
    expect(acks(s)).toEqual([]);
  });

  it('starts over after an epoch change', async () => {
    const { s, sub } = await setup();
    const gaps: Gap[] = [];
    sub.on('gap', (g) => gaps.push(g));
    sub.on('message', () => undefined);
    push(s, 1, 2);
    await vi.advanceTimersByTimeAsync(100);
    s.push({ type: 'message', payload: msg(1, 'e2') });
    expect(gaps.map((g) => g.reason)).toEqual(['epoch_changed']);
    await vi.advanceTimersByTimeAsync(100);
    expect(acks(s)).toEqual([
      { channel: 'orders', offset: 2 },
      { channel: 'orders', offset: 1 },
    ]);
  });
});

describe('at-least-once, manual acks', () => {
  it('acks what the application says, cumulatively, and nothing on its own', async () => {
    const { s, sub } = await setup({ ack: 'manual' }, 4);
    const got: number[] = [];
    sub.on('message', (m) => {
      got.push(m.offset);
      return new Promise(() => undefined); // never resolves: no matter in manual mode
    });
    push(s, 1, 2, 3);
    expect(got).toEqual([1, 2, 3]);
    await vi.advanceTimersByTimeAsync(500);
    expect(acks(s)).toEqual([]);
    sub.ack(9); // above what was delivered: ignored
    sub.ack(1);
    await vi.advanceTimersByTimeAsync(100);
    expect(acks(s)).toEqual([{ channel: 'orders', offset: 1 }]);
    sub.ack(3); // 2 unsent = half of 4: at once
    expect(acks(s)).toEqual([
      { channel: 'orders', offset: 1 },
      { channel: 'orders', offset: 3 },
    ]);
    sub.ack(2); // covered already
    await vi.advanceTimersByTimeAsync(500);
    expect(acks(s)).toHaveLength(2);
  });

  it('sends no acks on an at-most-once subscription', async () => {
    const c = new HeraldClient({ url: 'ws://herald.test/ws', WebSocket: FakeSocket, random: () => 0.5, browserEvents: false });
    c.connect();
    await settle();
    const s = FakeSocket.last();
    s.accept();
    await settle();
    const sub = c.subscribe('news', { ack: 'manual' });
    s.reply('subscribe', { channel: 'news', offset: 0, epoch: 'e1' });
    s.push({ type: 'message', payload: { channel: 'news', offset: 1, epoch: 'e1', time: 1, data: 1 } });
    sub.ack(1);
    await vi.advanceTimersByTimeAsync(500);
    expect(sub.delivery).toBe('at_most_once');
    expect(s.sentOf('ack')).toEqual([]);
  });
});
