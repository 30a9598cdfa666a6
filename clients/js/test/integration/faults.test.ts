/**
 * The TypeScript client under simulated network faults (a Node fault proxy, ./faultproxy.ts)
 * against the real `herald` binary: a reset mid-stream under 200 ms RTT with jitter, a blackholed
 * path (the server's heartbeat closes its side with 4000, the client's watchdog reconnects once
 * the path is back), and a connection cut in the middle of a frame. See docs/fault-harness.md.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { ClientOptions, HeraldClient, Message } from '../../src/index.js';
import { faultProxy, type FaultProxy } from './faultproxy.js';
import { client as heraldClient, cleanup, connected, runCleanup, server, startHerald, token, until, type Herald } from './herald.js';

afterEach(runCleanup);

/** Faster backoff than the other integration tests: reconnects are what these tests time. */
function client(url: string, opts: Partial<ClientOptions> = {}): HeraldClient {
  return heraldClient(url, opts, { minDelayMs: 20, maxDelayMs: 200 });
}


async function proxy(target: number): Promise<FaultProxy> {
  const p = await faultProxy(target);
  cleanup.push(() => p.close());
  return p;
}

/** A sample of the server's `/metrics` (summed over label sets matching `labels`). */
async function metric(h: Herald, name: string, labels = ''): Promise<number> {
  const text = await (await fetch(`${h.httpUrl}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!(line.startsWith(`${name} `) || line.startsWith(`${name}{`))) continue;
    if (labels && !line.includes(labels)) continue;
    sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

/** Resolve when the async `cond()` holds, polling every 20 ms; reject after `timeoutMs`. */
async function eventually(what: string, cond: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

describe('under network faults (through a fault proxy)', () => {
  it('a reset mid-stream under 200 ms RTT with jitter: reconnects, resumes, every message once, in order', async () => {
    const h = await server();
    const p = await proxy(h.port);
    p.setLatency('up', 100, 20);
    p.setLatency('down', 100, 20);
    const reader = client(p.url, { token: () => token('reader') });
    await connected(reader);
    const sub = reader.subscribe<number>('feed:faults');
    await sub.ready();
    const got: number[] = [];
    const gaps: unknown[] = [];
    sub.on('message', (m: Message<number>) => got.push(m.data));
    sub.on('gap', (g) => gaps.push(g));
    const downs: { at: number; code: number }[] = [];
    const ups: { at: number; resumed: boolean }[] = [];
    reader.on('disconnected', (d) => downs.push({ at: Date.now(), code: d.code }));
    reader.on('connected', (i) => ups.push({ at: Date.now(), resumed: i.resumed }));
    const writer = client(h.wsUrl);
    await connected(writer);
    const publisher = (async () => {
      for (let i = 1; i <= 100; i++) {
        await writer.publish('feed:faults', i);
        // Pacing (a stream over time), not synchronization.
        await new Promise((r) => setTimeout(r, 15));
      }
    })();
    await until('20 messages', () => got.length >= 20);
    expect(p.reset()).toBe(1);
    await until('60 messages', () => got.length >= 60);
    expect(p.reset()).toBe(1);
    await publisher;
    await until('100 messages', () => got.length >= 100);
    await writer.publish('feed:faults', 101);
    await until('message 101', () => got.length >= 101);
    expect(got).toEqual(range(1, 101));
    expect(gaps).toEqual([]);
    expect(downs.map((d) => d.code)).toEqual([1006, 1006]);
    expect(ups.map((u) => u.resumed)).toEqual([true, true]);
    const times = downs.map((d, i) => (ups[i]?.at ?? NaN) - d.at);
    console.log(`TS reset under 200 ms RTT: reconnected and resumed in ${times.join(' ms, ')} ms`);
  });

  it('a blackholed path: the server closes with 4000, the watchdog reconnects once it lifts and recovers', async () => {
    const h = await startHerald({
      env: { HERALD_CONNECTION__PING_INTERVAL: '500ms', HERALD_CONNECTION__PONG_TIMEOUT: '1s' },
    });
    cleanup.push(() => h.kill());
    const p = await proxy(h.port);
    const reader = client(p.url, { token: () => token('watcher') });
    await connected(reader);
    expect(reader.info?.ping_interval_ms).toBe(500);
    const sub = reader.subscribe<number>('bh:faults');
    await sub.ready();
    const got: number[] = [];
    const gaps: unknown[] = [];
    sub.on('message', (m: Message<number>) => got.push(m.data));
    sub.on('gap', (g) => gaps.push(g));
    const writer = client(h.wsUrl);
    await connected(writer);
    for (let i = 1; i <= 5; i++) await writer.publish('bh:faults', i);
    await until('5 messages', () => got.length === 5);
    await eventually('two server connections', async () => (await metric(h, 'herald_connections')) === 2);
    const timeoutsBefore = await metric(h, 'herald_close_codes_total', 'code="4000"');

    const down = new Promise<{ code: number; reason: string; at: number }>((res) =>
      reader.once('disconnected', (d) => res({ ...d, at: Date.now() })),
    );
    const t0 = Date.now();
    p.blackhole();
    for (let i = 6; i <= 15; i++) await writer.publish('bh:faults', i);
    await eventually('the server to close the blackholed connection', async () => (await metric(h, 'herald_connections')) === 1);
    const serverDetected = Date.now() - t0;
    expect(await metric(h, 'herald_close_codes_total', 'code="4000"')).toBeGreaterThan(timeoutsBefore);
    const d = await down;
    const clientDetected = d.at - t0;
    expect(d).toMatchObject({ code: 4000, reason: 'heartbeat timeout' });
    for (let i = 16; i <= 20; i++) await writer.publish('bh:faults', i);
    await until('a reconnect attempt (held by the blackhole)', () => p.accepted() >= 2);
    expect(got).toEqual(range(1, 5));
    const up = new Promise<boolean>((res) => reader.once('connected', (i) => res(i.resumed)));
    const lifted = Date.now();
    p.lift();
    expect(await up).toBe(true);
    const reconnected = Date.now() - lifted;
    await until('20 messages', () => got.length >= 20);
    await writer.publish('bh:faults', 21);
    await until('message 21', () => got.length >= 21);
    expect(got).toEqual(range(1, 21));
    expect(gaps).toEqual([]);
    console.log(
      `TS blackhole (ping 500 ms, pong 1 s): server closed it after ${serverDetected} ms, client watchdog after ${clientDetected} ms, reconnected ${reconnected} ms after the blackhole lifted`,
    );
  });

  it('a cut in the middle of a frame: the client sees 1006, reconnects, resumes and gets the message whole', async () => {
    const h = await server();
    const p = await proxy(h.port);
    const reader = client(p.url, { token: () => token('cutter') });
    await connected(reader);
    const sub = reader.subscribe<{ n: number; pad: string }>('cut:faults');
    await sub.ready();
    const got: { n: number; pad: string }[] = [];
    sub.on('message', (m) => got.push(m.data));
    const writer = client(h.wsUrl);
    await connected(writer);
    await writer.publish('cut:faults', { n: 1, pad: '' });
    await until('message 1', () => got.length === 1);
    const down = new Promise<number>((res) => reader.once('disconnected', (d) => res(d.code)));
    const up = new Promise<boolean>((res) => reader.once('connected', (i) => res(i.resumed)));
    expect(p.cutAfter(100)).toBe(1);
    await writer.publish('cut:faults', { n: 2, pad: 'x'.repeat(20_000) });
    expect(await down).toBe(1006);
    expect(await up).toBe(true);
    await writer.publish('cut:faults', { n: 3, pad: '' });
    await until('3 messages', () => got.length >= 3);
    expect(got.map((m) => m.n)).toEqual([1, 2, 3]);
    expect(got[1]?.pad.length).toBe(20_000);
  });
});
