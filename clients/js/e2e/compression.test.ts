/**
 * permessage-deflate (RFC 7692) in Debian's Chromium, driven by Playwright, against the real
 * `herald serve --dev` (which turns `connection.compression` and the namespaces' `compression` on).
 * The browser is connected through a transparent TCP relay (./wire.ts) that records what crossed
 * the wire, so the tests see both sides: the frame as sent (RSV1, deflated bytes) and what the page
 * got after Chromium inflated it. Screenshots go to e2e/artifacts/.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type BrowserContext, type CDPSession, type Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { cleanup, runCleanup, server, until, type Herald } from '../test/integration/herald.js';
import { relay, type Relay } from './wire.js';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];
const ARTIFACTS = fileURLToPath(new URL('./artifacts/', import.meta.url));

let browser: Browser;

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: run scripts/install-chromium.sh (./scripts/test.sh does)`);
  }
  mkdirSync(ARTIFACTS, { recursive: true });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS });
});
afterAll(async () => {
  await browser?.close();
});
afterEach(runCleanup);

async function context(): Promise<BrowserContext> {
  const c = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  cleanup.push(() => c.close());
  return c;
}

async function wire(h: Herald): Promise<Relay> {
  const r = await relay(h.port);
  cleanup.push(() => r.close());
  return r;
}

/** What CDP reports about a page's WebSockets: handshake answers and received frames. */
interface Sockets {
  urls: Map<string, string>;
  handshakes: Map<string, { status: number; headers: Record<string, string> }>;
  frames: Map<string, string[]>;
}

async function watchSockets(page: Page): Promise<Sockets> {
  const cdp: CDPSession = await page.context().newCDPSession(page);
  const s: Sockets = { urls: new Map(), handshakes: new Map(), frames: new Map() };
  cdp.on('Network.webSocketCreated', (e) => s.urls.set(e.requestId, e.url));
  cdp.on('Network.webSocketHandshakeResponseReceived', (e) =>
    s.handshakes.set(e.requestId, { status: e.response.status, headers: e.response.headers }),
  );
  cdp.on('Network.webSocketFrameReceived', (e) => {
    const list = s.frames.get(e.requestId) ?? [];
    list.push(e.response.payloadData);
    s.frames.set(e.requestId, list);
  });
  await cdp.send('Network.enable');
  return s;
}

/** A header of `headers`, whatever the case of its name. */
function header(headers: Record<string, string>, name: string): string | undefined {
  const k = Object.keys(headers).find((h) => h.toLowerCase() === name.toLowerCase());
  return k === undefined ? undefined : headers[k];
}

/** The handshake answer of the page's (single) WebSocket to `/ws`, once it is in. */
async function wsHandshake(s: Sockets): Promise<{ requestId: string; status: number; headers: Record<string, string> }> {
  let id: string | undefined;
  await until('the /ws handshake answer in CDP', () => {
    id = [...s.urls].find(([rid, url]) => new URL(url).pathname === '/ws' && s.handshakes.has(rid))?.[0];
    return id !== undefined;
  });
  const hs = s.handshakes.get(id as string) as { status: number; headers: Record<string, string> };
  return { requestId: id as string, ...hs };
}

/** A counter from `/metrics`; 0 while absent (the server lists a counter once it was first touched). */
async function metric(h: Herald, name: string): Promise<number> {
  const text = await (await fetch(`${h.httpUrl}/metrics`)).text();
  const m = new RegExp(`^${name} (\\d+(?:\\.\\d+)?)$`, 'm').exec(text);
  return m ? Number(m[1]) : 0;
}

/** Wait until the counter `name` is above `before` (it is updated with the send, not after). */
async function grows(h: Herald, name: string, before: number): Promise<void> {
  const deadline = Date.now() + 10_000;
  let now = await metric(h, name);
  while (now <= before && Date.now() < deadline) {
    await new Promise((res) => setTimeout(res, 20));
    now = await metric(h, name);
  }
  expect(now - before, name).toBeGreaterThanOrEqual(1);
}

/** A JSON WebSocket client in Node that refuses compression; its `send` resolves with the reply. */
async function nodeClient(h: Herald): Promise<{
  ws: WebSocket;
  received: unknown[];
  command(type: string, payload: unknown): Promise<{ type: string; payload: Record<string, unknown> }>;
}> {
  const ws = new WebSocket(h.wsUrl, 'herald.v1.json', { perMessageDeflate: false });
  cleanup.push(() => ws.close());
  const received: { type: string; id?: string; payload: Record<string, unknown> }[] = [];
  const connected = new Promise<void>((resolve, reject) => {
    ws.on('message', (d, isBinary) => {
      expect(isBinary).toBe(false);
      const m = JSON.parse(d.toString()) as { type: string; id?: string; payload: Record<string, unknown> };
      received.push(m);
      if (m.type === 'connected') resolve();
    });
    ws.once('error', reject);
    ws.once('close', (code) => reject(new Error(`node client closed with ${code}`)));
  });
  await connected;
  expect(ws.extensions).toBe(''); // it did not negotiate permessage-deflate
  let next = 0;
  return {
    ws,
    received,
    async command(type, payload) {
      const id = `n${++next}`;
      ws.send(JSON.stringify({ type, id, payload }));
      await until(`the reply to ${type}`, () => received.some((m) => m.id === id));
      const reply = received.find((m) => m.id === id) as { type: string; payload: Record<string, unknown> };
      expect(reply.type, JSON.stringify(reply)).toBe('reply');
      return reply;
    },
  };
}

/** A ~2 KB JSON object with non-ASCII text in it. */
function bigData(): Record<string, unknown> {
  return {
    kind: 'report',
    title: 'Zürich — 東京 — ✓ compressed',
    rows: Array.from({ length: 30 }, (_, i) => ({
      id: i,
      name: `sensor-${i}`,
      status: i % 3 === 0 ? 'ok' : 'degraded',
      reading: Math.round(i * 3.14159 * 1000) / 1000,
    })),
  };
}

describe('permessage-deflate in Chromium', () => {
  it('negotiates compression, and a compressed publication reaches the page intact', async () => {
    const h = await server();
    const r = await wire(h);
    const page = await (await context()).newPage();
    const sockets = await watchSockets(page);
    // A same-origin page (the relay's origin) that speaks the protocol by hand.
    await page.goto(`${r.url}/healthz`);
    const channel = `zip-${Math.random().toString(16).slice(2, 10)}`;
    await page.evaluate(async (channel) => {
      const w = window as unknown as { got: unknown[]; ws: { extensions: string } };
      w.got = [];
      // `globalThis`: the bare name would be rewritten to the test's `ws` import by the bundler.
      const ws = new globalThis.WebSocket(`ws://${location.host}/ws`, 'herald.v1.json');
      w.ws = ws;
      await new Promise<void>((resolve, reject) => {
        ws.onerror = () => reject(new Error('websocket error'));
        ws.onmessage = (ev) => {
          const m = JSON.parse(ev.data as string) as { type: string; id?: string };
          w.got.push(m);
          if (m.type === 'connected') ws.send(JSON.stringify({ type: 'subscribe', id: 's1', payload: { channel } }));
          if (m.type === 'reply' && m.id === 's1') resolve();
        };
      });
    }, channel);

    // 1. The handshake: Chromium offered permessage-deflate and the server accepted it.
    const hs = await wsHandshake(sockets);
    expect(hs.status).toBe(101);
    const ext = header(hs.headers, 'Sec-WebSocket-Extensions') ?? '';
    expect(ext).toContain('permessage-deflate');
    expect(ext).toContain('server_no_context_takeover');
    expect(ext).toContain('client_no_context_takeover');
    expect(await page.evaluate(() => (window as unknown as { ws: { extensions: string } }).ws.extensions)).toContain(
      'permessage-deflate',
    );

    // 2. A large publication from a client that does not compress.
    const before = await metric(h, 'herald_compressed_messages_total');
    const savedBefore = await metric(h, 'herald_compression_saved_bytes_total');
    const pub = await nodeClient(h);
    await pub.command('subscribe', { channel });
    const data = bigData();
    const size = Buffer.byteLength(JSON.stringify(data));
    expect(size).toBeGreaterThan(1_500);
    const reply = await pub.command('publish', { channel, data });
    const offset = reply.payload.offset;

    // The page got it, data identical.
    await page.waitForFunction(
      () => (window as unknown as { got: { type: string }[] }).got.some((m) => m.type === 'message'),
      undefined,
      { timeout: 15_000 },
    );
    const got = (await page.evaluate(() =>
      (window as unknown as { got: { type: string }[] }).got.filter((m) => m.type === 'message'),
    )) as unknown as { payload: { channel: string; offset: number; data: unknown } }[];
    expect(got).toHaveLength(1);
    expect(got[0]?.payload.channel).toBe(channel);
    expect(got[0]?.payload.offset).toBe(offset);
    expect(got[0]?.payload.data).toEqual(data);

    // On the wire it was one compressed text frame, smaller than the JSON, that inflates to it.
    await until('the publication on the wire', () =>
      r.messages().some((m) => m.text.includes('"type":"message"')),
    );
    expect(r.connections).toHaveLength(1);
    const onWire = r.messages().filter((m) => m.text.includes('"type":"message"'));
    expect(onWire).toHaveLength(1);
    const frame = onWire[0] as (typeof onWire)[number];
    expect(frame.compressed).toBe(true);
    expect(frame.opcode).toBe(1);
    expect(frame.wireBytes).toBeLessThan(Buffer.byteLength(frame.text));
    expect((JSON.parse(frame.text) as { payload: { data: unknown } }).payload.data).toEqual(data);
    // Replies and the connected push are not compressed.
    for (const m of r.messages().filter((m) => !m.text.includes('"type":"message"'))) {
      expect(m.compressed, m.text).toBe(false);
    }

    // Chromium's own view (CDP): the inflated JSON, byte for byte what the server deflated.
    await until('the frame in CDP', () =>
      (sockets.frames.get(hs.requestId) ?? []).some((p) => p.includes('"type":"message"')),
    );
    const cdpFrames = (sockets.frames.get(hs.requestId) ?? []).filter((p) => p.includes('"type":"message"'));
    expect(cdpFrames).toEqual([frame.text]);

    // The node client (no compression) got the same publication uncompressed: `ws` would have
    // closed with 1002 on an RSV1 frame it did not negotiate.
    await until('the node client got it', () =>
      pub.received.some((m) => (m as { type: string }).type === 'message'),
    );
    const plain = pub.received.find((m) => (m as { type: string }).type === 'message') as {
      payload: { data: unknown };
    };
    expect(plain.payload.data).toEqual(data);
    expect(pub.ws.readyState).toBe(WebSocket.OPEN);

    // The server counts it: compressed once, and it saved bytes.
    await grows(h, 'herald_compressed_messages_total', before);
    expect(await metric(h, 'herald_compression_saved_bytes_total')).toBeGreaterThan(savedBefore);

    // Below connection.compression_threshold (256 bytes) a publication goes out plain.
    const small = { text: 'tiny' };
    await pub.command('publish', { channel, data: small });
    await until('the small publication on the wire', () =>
      r.messages().filter((m) => m.text.includes('"type":"message"')).length === 2,
    );
    const smallFrame = r.messages().filter((m) => m.text.includes('"type":"message"'))[1] as (typeof onWire)[number];
    expect(smallFrame.compressed).toBe(false);
    expect((JSON.parse(smallFrame.text) as { payload: { data: unknown } }).payload.data).toEqual(small);
    await page.waitForFunction(
      () => (window as unknown as { got: { type: string }[] }).got.filter((m) => m.type === 'message').length === 2,
    );

    await page.setContent(
      `<pre style="font: 12px monospace; white-space: pre-wrap">Sec-WebSocket-Extensions: ${ext}\n\n` +
        `wire: ${frame.wireBytes} bytes (RSV1 set) for ${Buffer.byteLength(frame.text)} bytes of JSON\n\n` +
        `received:\n${JSON.stringify(got[0]?.payload.data, null, 1).replace(/</g, '&lt;')}</pre>`,
    );
    await page.screenshot({ path: `${ARTIFACTS}compression-frame.png` });
  });

  it('the demo chat negotiates compression and carries a long message compressed between two pages', async () => {
    const h = await server();
    const r = await wire(h);
    const open = async (user: string): Promise<{ page: Page; sockets: Sockets }> => {
      const page = await (await context()).newPage();
      const sockets = await watchSockets(page);
      await page.goto(`${r.url}/?user=${user}&room=lobby`);
      await page.waitForFunction(() => document.getElementById('state')?.textContent === 'connected', undefined, {
        timeout: 30_000,
      });
      await page.waitForFunction(() => !(document.getElementById('transport') as HTMLElement | null)?.hidden);
      expect(await page.textContent('#transport')).toBe('WebSocket');
      return { page, sockets };
    };
    const alice = await open('alice');
    const bob = await open('bob');
    for (const p of [alice, bob]) {
      const hs = await wsHandshake(p.sockets);
      expect(header(hs.headers, 'Sec-WebSocket-Extensions') ?? '').toContain('permessage-deflate');
    }
    await bob.page.waitForFunction(
      () => [...document.querySelectorAll('#presence li')].length === 2,
      undefined,
      { timeout: 30_000 },
    );

    const before = await metric(h, 'herald_compressed_messages_total');
    const long = `A long line for compression (${'é'}) ` + 'the quick brown fox jumps over the lazy dog; '.repeat(9);
    expect(long.length).toBeGreaterThan(300);
    expect(long.length).toBeLessThanOrEqual(500); // the input's maxlength
    await alice.page.fill('#text', long);
    await alice.page.press('#text', 'Enter');
    for (const p of [bob.page, alice.page]) {
      await p.waitForFunction(
        () => document.querySelectorAll('#messages li.msg:not(.pending)').length >= 1,
        undefined,
        { timeout: 30_000 },
      );
      expect(
        await p.$$eval('#messages li.msg:not(.pending) .text', (els) => els.map((e) => e.textContent ?? '')),
      ).toEqual([long]);
    }
    // Both pages got the chat message as a compressed frame (shared: compressed once).
    await until('the chat message on both connections', () =>
      r.connections.filter((c) => c.some((m) => m.text.includes(JSON.stringify(long)))).length >= 2,
    );
    for (const c of r.connections) {
      const m = c.find((m) => m.text.includes(JSON.stringify(long)));
      if (!m) continue;
      expect(m.compressed).toBe(true);
      expect(m.wireBytes).toBeLessThan(Buffer.byteLength(m.text));
    }
    await grows(h, 'herald_compressed_messages_total', before);
    await bob.page.screenshot({ path: `${ARTIFACTS}compression-chat.png` });
  });
});
