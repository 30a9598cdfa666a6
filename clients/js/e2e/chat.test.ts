/**
 * The demo chat in Debian's Chromium, driven by Playwright, against the real `herald serve --dev`.
 * Each scenario saves screenshots to e2e/artifacts/.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { HeraldClient, type WebSocketCtor } from '../src/index.js';
import { cleanup, freePort, runCleanup, server, type Herald } from '../test/integration/herald.js';

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

/** Open the chat as `user` and wait until it is connected. */
async function open(ctx: BrowserContext, h: Herald, user: string, room = 'lobby'): Promise<Page> {
  const page = await ctx.newPage();
  await page.goto(`${h.httpUrl}/?user=${user}&room=${room}`);
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
});
