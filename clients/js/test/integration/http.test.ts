/**
 * The client over the HTTP transport (docs/protocol.md §10) against the real server: forced
 * `http-stream`, and the fallback from a WebSocket that cannot connect.
 */
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import type { Transport, WebSocketCtor } from '../../src/index.js';
import { client, connected, runCleanup, server, token, until } from './herald.js';

afterEach(runCleanup);

/** A WebSocket whose upgrade a proxy refuses: it closes (1006) without ever opening. */
class RefusedWebSocket {
  readyState = 0;
  binaryType = 'arraybuffer';
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: unknown) => void) | null = null;
  onclose: ((ev: unknown) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  static attempts = 0;
  constructor() {
    RefusedWebSocket.attempts++;
    setTimeout(() => {
      this.readyState = 3;
      this.onclose?.({ code: 1006, reason: '' });
    }, 5);
  }
  send(): void {}
  close(): void {}
}

describe('the HTTP transport', () => {
  it('subscribes, publishes, receives and closes over http-stream, beside a WebSocket client', async () => {
    const h = await server();
    const viaHttp = client(h.wsUrl, { token: () => token('alice'), transports: ['http-stream'] });
    const viaWs = client(h.wsUrl, { token: () => token('bob'), WebSocket: WebSocket as unknown as WebSocketCtor });
    await Promise.all([connected(viaHttp), connected(viaWs)]);
    expect(viaHttp.transport).toBe('http-stream');
    expect(viaHttp.info?.user_id).toBe('alice');
    const got: string[] = [];
    const sub = viaHttp.subscribe<{ text: string }>('chat:lobby');
    await sub.ready();
    sub.on('message', (m) => got.push(m.data.text));
    await viaWs.subscribe('chat:lobby').ready();
    await viaWs.publish('chat:lobby', { text: 'from ws' });
    const ack = await viaHttp.publish('chat:lobby', { text: 'from http' });
    expect(ack.offset).toBe(2);
    await until('both messages', () => got.length === 2);
    expect(got).toEqual(['from ws', 'from http']);
    expect((await sub.history()).publications.length).toBe(2);
    const who = await viaWs.subscribe('chat:lobby').presence();
    expect(who.map((c) => c.user_id).sort()).toEqual(['alice', 'bob']);
    viaHttp.close();
    viaWs.close();
  });

  it('falls back to http-stream when the WebSocket cannot connect, and says so', async () => {
    const h = await server();
    const seen: Transport[] = [];
    const c = client(h.wsUrl, {
      token: () => token('carol'),
      WebSocket: RefusedWebSocket as unknown as WebSocketCtor,
      transports: ['websocket', 'http-stream'],
    });
    c.on('transport', (t) => seen.push(t));
    await connected(c);
    expect(RefusedWebSocket.attempts).toBeGreaterThanOrEqual(1);
    expect(c.transport).toBe('http-stream');
    expect(seen).toEqual(['http-stream']);
    const sub = c.subscribe('news');
    await sub.ready();
    const got: unknown[] = [];
    sub.on('message', (m) => got.push(m.data));
    await c.publish('news', 1);
    await until('the message', () => got.length === 1);
    c.close();
  });

  it('long-polls when forced: subscribe, publish, receive, a server-side close ends it', async () => {
    const h = await server();
    const c = client(h.wsUrl, { token: () => token('dave'), transports: ['http-poll'] });
    await connected(c);
    expect(c.transport).toBe('http-poll');
    const sub = c.subscribe<number>('feed');
    await sub.ready();
    const got: number[] = [];
    sub.on('message', (m) => got.push(m.data));
    for (let i = 1; i <= 5; i++) await c.publish('feed', i);
    await until('five messages', () => got.length === 5);
    expect(got).toEqual([1, 2, 3, 4, 5]);
    expect((await sub.history()).publications.length).toBe(5);
    c.close();
  });

  it('moves back to a WebSocket once upgrades go through again, resuming without loss', async () => {
    const h = await server();
    let allow = false;
    class Switchable {
      constructor(url: string, protocols?: string | string[]) {
        return allow ? new WebSocket(url, protocols) : new RefusedWebSocket();
      }
    }
    const c = client(h.wsUrl, {
      token: () => token('erin'),
      WebSocket: Switchable as unknown as WebSocketCtor,
      transports: ['websocket', 'http-stream'],
      upgradeProbeMs: 200,
    });
    const resumed: boolean[] = [];
    c.on('connected', (e) => resumed.push(e.resumed));
    await connected(c);
    expect(c.transport).toBe('http-stream');
    const sub = c.subscribe<number>('moving');
    await sub.ready();
    const got: number[] = [];
    sub.on('message', (m) => got.push(m.data));
    const pub = client(h.wsUrl, { token: () => token('pub') });
    await connected(pub);
    for (let i = 1; i <= 40; i++) {
      await pub.publish('moving', i);
      if (i === 10) allow = true;
      await new Promise((r) => setTimeout(r, 10));
    }
    await until('the move and every message', () => c.transport === 'websocket' && got.length >= 40);
    expect(got).toEqual(Array.from({ length: 40 }, (_, i) => i + 1));
    expect(resumed).toEqual([false, true]);
  });
});
