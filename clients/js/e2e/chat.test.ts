/**
 * The demo chat in Debian's Chromium, driven by Playwright, against the real `herald serve --dev`.
 * Each scenario saves screenshots to e2e/artifacts/.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { createServer, request as httpRequest } from 'node:http';
import { connect as tcpConnect } from 'node:net';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { HeraldClient, type WebSocketCtor } from '../src/index.js';
import { cleanup, freePort, runCleanup, server, startHerald, type Herald } from '../test/integration/herald.js';

/** `$HERALD_TEST_REDIS_URL`, else the local Redis, when it answers PING (under CI it must). */
async function redisUrl(): Promise<string | undefined> {
  const url = process.env.HERALD_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
  const u = new URL(url);
  const ok = await new Promise<boolean>((resolve) => {
    const s = tcpConnect(Number(u.port || 6379), u.hostname);
    s.setTimeout(2_000, () => {
      s.destroy();
      resolve(false);
    });
    s.once('error', () => resolve(false));
    s.once('connect', () => s.write('PING\r\n'));
    s.once('data', (d) => {
      s.destroy();
      resolve(d.toString().startsWith('+PONG'));
    });
  });
  if (ok) return url;
  if (process.env.CI === 'true') throw new Error(`Redis is not reachable at ${url} (CI needs it)`);
  console.log(`skipping: Redis is not reachable at ${url}`);
  return undefined;
}



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

async function context(opts: { noWebSocket?: boolean } = {}): Promise<BrowserContext> {
  const c = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  cleanup.push(() => c.close());
  if (opts.noWebSocket) {
    // A browser (or extension, or policy) without WebSockets.
    await c.addInitScript(() => {
      delete (window as { WebSocket?: unknown }).WebSocket;
    });
  }
  return c;
}

/**
 * An HTTP proxy in front of Herald that forwards plain requests (streaming answers through) and
 * refuses every WebSocket upgrade, like a corporate proxy. Its URL.
 */
async function httpProxy(
  target: number | number[],
  opts: { buffer?: boolean } = {},
): Promise<{ url: string; upgrades: () => number }> {
  let upgrades = 0;
  const targets = ([] as number[]).concat(target);
  let next = 0;
  const proxy = createServer((req, res) => {
    // Several targets: each request goes to the next one (a round-robin HTTP balancer).
    const port = targets[next++ % targets.length];
    const up = httpRequest(
      { host: '127.0.0.1', port, method: req.method, path: req.url, headers: req.headers },
      (answer) => {
        if (!opts.buffer) {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
          return;
        }
        // A buffering proxy: nothing goes out before the whole answer is in.
        const parts: Buffer[] = [];
        answer.on('data', (d: Buffer) => parts.push(d));
        answer.on('end', () => {
          const body = Buffer.concat(parts);
          const headers = { ...answer.headers, 'content-length': String(body.length) };
          delete headers['transfer-encoding'];
          res.writeHead(answer.statusCode ?? 502, headers);
          res.end(body);
        });
      },
    );
    up.on('error', () => res.destroy());
    req.pipe(up);
    res.on('close', () => up.destroy());
  });
  proxy.on('upgrade', (_req, socket) => {
    upgrades++;
    socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
  });
  const port = await freePort();
  await new Promise<void>((r) => proxy.listen(port, '127.0.0.1', r));
  cleanup.push(() => new Promise<void>((r) => { proxy.closeAllConnections(); proxy.close(() => r()); }));
  return { url: `http://127.0.0.1:${port}`, upgrades: () => upgrades };
}

async function transport(page: Page): Promise<string> {
  await page.waitForFunction(() => !(document.getElementById('transport') as HTMLElement | null)?.hidden);
  return (await page.textContent('#transport')) ?? '';
}

/** Open the chat as `user` and wait until it is connected. */
async function open(ctx: BrowserContext, h: Herald | string, user: string, room = 'lobby'): Promise<Page> {
  const page = await ctx.newPage();
  const base = typeof h === 'string' ? h : h.httpUrl;
  await page.goto(`${base}/?user=${user}&room=${room}`);
  await waitState(page, /^connected$/);
  return page;
}

async function waitState(page: Page, re: RegExp): Promise<string> {
  const src = re.source;
  await page.waitForFunction((s) => new RegExp(s).test(document.getElementById('state')?.textContent ?? ''), src, {
    timeout: 30_000,
  });
  return (await page.textContent('#state')) ?? '';
}

/** Confirmed messages on the page, in display order. */
function messages(page: Page): Promise<string[]> {
  return page.$$eval('#messages li.msg:not(.pending) .text', (els) => els.map((e) => e.textContent ?? ''));
}

async function waitMessages(page: Page, expected: string[]): Promise<void> {
  await page
    .waitForFunction(
      (n) => document.querySelectorAll('#messages li.msg:not(.pending)').length >= n,
      expected.length,
      { timeout: 30_000 },
    )
    .catch(() => undefined);
  expect(await messages(page)).toEqual(expected);
}

async function presence(page: Page, users: string[]): Promise<void> {
  await page.waitForFunction(
    (want) => {
      const got = [...document.querySelectorAll('#presence li')].map((li) => (li as HTMLElement).dataset.user);
      return want.every((u) => got.includes(u)) && got.length === want.length;
    },
    users,
    { timeout: 30_000 },
  );
}

async function say(page: Page, text: string): Promise<void> {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

function shot(page: Page, name: string): Promise<Buffer> {
  return page.screenshot({ path: `${ARTIFACTS}${name}.png` });
}

describe('demo chat in Chromium', () => {
  it('two pages chat in a room and see each other in presence and typing', async () => {
    const h = await server();
    const alice = await open(await context(), h, 'alice');
    const bob = await open(await context(), h, 'bob');
    await presence(alice, ['alice', 'bob']);
    await presence(bob, ['alice', 'bob']);
    await say(alice, 'hi bob');
    await waitMessages(bob, ['hi bob']);
    await bob.type('#text', 'hel');
    await alice.waitForFunction(() => document.getElementById('typing')?.textContent === 'bob is typing…');
    await shot(alice, 'chat-typing');
    await bob.fill('#text', 'hello alice');
    await bob.press('#text', 'Enter');
    await waitMessages(alice, ['hi bob', 'hello alice']);
    await waitMessages(bob, ['hi bob', 'hello alice']);
    // History on join: a third page sees the conversation.
    const carol = await open(await context(), h, 'carol');
    await waitMessages(carol, ['hi bob', 'hello alice']);
    await presence(alice, ['alice', 'bob', 'carol']);
    await shot(alice, 'chat-presence');
  });

  it('shows reconnecting while the server is down, then recovers what was published meanwhile', async () => {
    const port = await freePort();
    let h = await server(port);
    const alice = await open(await context(), h, 'alice');
    await say(alice, 'before the restart');
    await waitMessages(alice, ['before the restart']);
    await h.kill();
    const state = await waitState(alice, /^reconnecting in \d+ s$/);
    expect(state).toMatch(/reconnecting in \d+ s/);
    await shot(alice, 'restart-reconnecting');
    h = await server(port);
    const bot = new HeraldClient({ url: h.wsUrl, WebSocket: WebSocket as unknown as WebSocketCtor });
    cleanup.push(() => bot.close());
    bot.connect();
    const sent = ['one', 'two', 'three', 'four', 'five'];
    for (const text of sent) await bot.publish('chat:lobby', { user: 'bot', text, local: `bot-${text}` });
    await waitState(alice, /^connected$/);
    await waitMessages(alice, ['before the restart', ...sent]);
    // Nothing twice, even after more live traffic.
    await bot.publish('chat:lobby', { user: 'bot', text: 'six', local: 'bot-six' });
    await waitMessages(alice, ['before the restart', ...sent, 'six']);
    await shot(alice, 'restart-recovered');
  });

  it('delivers messages written while offline after the network is back', async () => {
    const h = await server();
    const aliceCtx = await context();
    const alice = await open(aliceCtx, h, 'alice');
    const bob = await open(await context(), h, 'bob');
    await presence(bob, ['alice', 'bob']);
    await aliceCtx.setOffline(true);
    await waitState(alice, /^offline$/);
    await say(alice, 'written offline 1');
    await say(alice, 'written offline 2');
    expect(await alice.locator('#messages li.msg.pending').count()).toBe(2);
    await shot(alice, 'offline-pending');
    await aliceCtx.setOffline(false);
    await waitState(alice, /^connected$/);
    await waitMessages(bob, ['written offline 1', 'written offline 2']);
    await waitMessages(alice, ['written offline 1', 'written offline 2']);
    expect(await alice.locator('#messages li.msg.pending').count()).toBe(0);
    await presence(bob, ['alice', 'bob']);
    await shot(alice, 'offline-delivered');
  });

  it('works without WebSockets: a page that has none chats over HTTP streaming, recovers a restart', async () => {
    const port = await freePort();
    let h = await server(port);
    const alice = await open(await context({ noWebSocket: true }), h, 'alice');
    const bob = await open(await context(), h, 'bob');
    expect(await transport(alice)).toBe('HTTP streaming');
    expect(await transport(bob)).toBe('WebSocket');
    await presence(alice, ['alice', 'bob']);
    await presence(bob, ['alice', 'bob']);
    await say(alice, 'hi over http');
    await waitMessages(bob, ['hi over http']);
    await say(bob, 'hi over ws');
    await waitMessages(alice, ['hi over http', 'hi over ws']);
    await shot(alice, 'http-chat');
    // History on join over HTTP.
    const carol = await open(await context({ noWebSocket: true }), h, 'carol');
    await waitMessages(carol, ['hi over http', 'hi over ws']);
    // A restart: reconnecting, then what was published meanwhile, once.
    await h.kill();
    await waitState(alice, /^reconnecting in \d+ s$/);
    h = await server(port);
    const bot = new HeraldClient({ url: h.wsUrl, WebSocket: WebSocket as unknown as WebSocketCtor });
    cleanup.push(() => bot.close());
    bot.connect();
    for (const text of ['one', 'two']) await bot.publish('chat:lobby', { user: 'bot', text, local: `bot-${text}` });
    await waitState(alice, /^connected$/);
    await waitMessages(alice, ['hi over http', 'hi over ws', 'one', 'two']);
    await shot(alice, 'http-restart-recovered');
  });

  it('falls back to HTTP streaming behind a proxy that refuses the WebSocket upgrade', async () => {
    const h = await server();
    const proxy = await httpProxy(h.port);
    const base = proxy.url;
    const alice = await open(await context(), base, 'alice');
    expect(await transport(alice)).toBe('HTTP streaming');
    const bob = await open(await context(), h, 'bob');
    await presence(alice, ['alice', 'bob']);
    await say(bob, 'through the proxy');
    await waitMessages(alice, ['through the proxy']);
    await say(alice, 'and back');
    await waitMessages(bob, ['through the proxy', 'and back']);
    // What worked is remembered for the page session: the next page load goes straight to HTTP.
    const refused = proxy.upgrades();
    expect(refused).toBeGreaterThanOrEqual(1);
    await alice.goto(`${base}/?user=alice&room=lobby`);
    await waitState(alice, /^connected$/);
    expect(proxy.upgrades()).toBe(refused);
    expect(await transport(alice)).toBe('HTTP streaming');
    expect(await alice.evaluate(() => sessionStorage.getItem('herald.transport'))).toBe('http-stream');
    await shot(alice, 'proxy-fallback');
  });

  it('over HTTP streaming too, messages written offline are delivered once the network is back', async () => {
    const h = await server();
    const aliceCtx = await context({ noWebSocket: true });
    const alice = await open(aliceCtx, h, 'alice');
    expect(await transport(alice)).toBe('HTTP streaming');
    const bob = await open(await context(), h, 'bob');
    await presence(bob, ['alice', 'bob']);
    await aliceCtx.setOffline(true);
    await waitState(alice, /^offline$/);
    await say(alice, 'offline over http');
    await aliceCtx.setOffline(false);
    await waitState(alice, /^connected$/);
    await waitMessages(bob, ['offline over http']);
    await waitMessages(alice, ['offline over http']);
    await presence(bob, ['alice', 'bob']);
    await shot(alice, 'http-offline-delivered');
  });

  it('long-polls behind a proxy that refuses upgrades and buffers streamed answers', async () => {
    const h = await server();
    const proxy = await httpProxy(h.port, { buffer: true });
    const alice = await open(await context(), proxy.url, 'alice');
    expect(await transport(alice)).toBe('long-polling');
    const bob = await open(await context(), h, 'bob');
    await presence(alice, ['alice', 'bob']);
    await say(bob, 'to a long-poller');
    await waitMessages(alice, ['to a long-poller']);
    await say(alice, 'from a long-poller');
    await waitMessages(bob, ['to a long-poller', 'from a long-poller']);
    await shot(alice, 'long-polling');
  });

  it('two nodes on Redis behind a round-robin balancer, no stickiness: a page without WebSockets chats', async () => {
    const redis = await redisUrl();
    if (!redis) return;
    const env = {
      HERALD_ENGINE__TYPE: 'redis',
      HERALD_REDIS__URL: redis,
      HERALD_REDIS__PREFIX: `herald-e2e-${Math.random().toString(16).slice(2, 10)}`,
    };
    const nodes = [await startHerald({ env }), await startHerald({ env })];
    for (const n of nodes) cleanup.push(() => n.kill());
    // Each node is subscribed to the control bus once it is ready.
    for (const n of nodes) {
      for (let i = 0; ; i++) {
        const r = await fetch(`${n.httpUrl}/readyz`).catch(() => undefined);
        if (r?.status === 200) break;
        if (i > 100) throw new Error('a node did not become ready');
        await new Promise((res) => setTimeout(res, 50));
      }
    }
    // A round-robin HTTP balancer: every request (each command POST) goes to the next node.
    const lb = (await httpProxy(nodes.map((n) => n.port))).url;
    const alice = await open(await context({ noWebSocket: true }), lb, 'alice');
    expect(await transport(alice)).toBe('HTTP streaming');
    const bob = await open(await context(), nodes[1] as Herald, 'bob');
    await presence(alice, ['alice', 'bob']);
    await presence(bob, ['alice', 'bob']);
    // Alice's commands (one connection per POST here) reach both nodes.
    for (const text of ['one', 'two', 'three', 'four']) await say(alice, text);
    await waitMessages(bob, ['one', 'two', 'three', 'four']);
    await say(bob, 'across nodes');
    await waitMessages(alice, ['one', 'two', 'three', 'four', 'across nodes']);
    let relayed = 0;
    for (const n of nodes) {
      const text = await (await fetch(`${n.httpUrl}/metrics`)).text();
      relayed += Number(/^herald_http_relayed_total (\d+)/m.exec(text)?.[1] ?? 0);
    }
    expect(relayed).toBeGreaterThan(0);
    await shot(alice, 'http-two-nodes');
  });
});
