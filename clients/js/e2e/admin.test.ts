/**
 * The admin UI (`/admin`, `[admin]`) in Debian's Chromium, driven by Playwright, against the real
 * `herald serve --dev` with `HERALD_ADMIN__SECRET` set. Each scenario saves screenshots to
 * e2e/artifacts/ (admin-*.png).
 */
import { existsSync, mkdirSync } from 'node:fs';
import { connect as tcpConnect } from 'node:net';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { HeraldClient } from '../src/index.js';
import { cleanup, client, connected, runCleanup, startHerald, token, until, type Herald } from '../test/integration/herald.js';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'];
const ARTIFACTS = fileURLToPath(new URL('./artifacts/', import.meta.url));
const ADMIN_SECRET = 'e2e-admin-secret-0123456789';

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

/** `herald serve --dev` with the admin UI on (it is off under `--dev` alone). */
async function adminServer(env: Record<string, string> = {}): Promise<Herald> {
  const h = await startHerald({ env: { HERALD_ADMIN__SECRET: ADMIN_SECRET, ...env } });
  cleanup.push(() => h.kill());
  return h;
}

async function page(h: Herald, width = 1200, height = 900): Promise<Page> {
  const ctx = await browser.newContext({ viewport: { width, height } });
  cleanup.push(() => ctx.close());
  const p = await ctx.newPage();
  await p.goto(`${h.httpUrl}/admin`);
  return p;
}

function shot(p: Page, name: string): Promise<Buffer> {
  return p.screenshot({ path: `${ARTIFACTS}admin-${name}.png`, fullPage: true });
}

async function login(p: Page, secret = ADMIN_SECRET): Promise<void> {
  await p.fill('#secret', secret);
  await p.press('#secret', 'Enter');
}

async function loggedIn(p: Page): Promise<void> {
  await login(p);
  await p.waitForSelector('#app:not([hidden])');
}

/** A status from the admin API, as the page's own fetch sees it (with its cookie, if any). */
function status(p: Page, path: string): Promise<number> {
  return p.evaluate(async (u) => (await fetch(u)).status, path);
}

/** A client authenticated as `user`, connected. */
async function user(h: Herald, name: string): Promise<HeraldClient> {
  const c = client(h.wsUrl, { token: () => token(name) });
  await connected(c);
  return c;
}

describe('admin UI in Chromium', () => {
  it('refuses a wrong secret, logs in, charts move while a client publishes, logs out', async () => {
    const h = await adminServer();
    const p = await page(h);
    expect(await status(p, '/admin/api/overview')).toBe(401);
    await login(p, 'wrong-secret-0123456789');
    await p.waitForFunction(() => document.getElementById('login-status')?.textContent === 'Wrong secret.');
    expect(await p.isHidden('#app')).toBe(true);
    await shot(p, 'wrong-secret');

    await loggedIn(p);
    const publisher = await user(h, 'pub');
    const sub = publisher.subscribe<number>('load:1');
    await sub.ready();
    await p.waitForFunction(() => document.getElementById('stat-connections')?.textContent === '1');
    const before = await p.getAttribute('#chart-messages polyline.s0', 'points');
    const pointsBefore = Number(await p.getAttribute('#chart-messages', 'data-points'));
    // Publish until the messages chart shows a rate above zero (and its line changed).
    let n = 0;
    let stop = false;
    const loop = (async () => {
      while (!stop) {
        await publisher.publish('load:1', n++);
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    try {
      await p.waitForFunction(
        () => Number(document.querySelector('#chart-messages [data-series="inPerSec"]')?.getAttribute('data-value') ?? 0) > 1,
        undefined,
        { timeout: 30_000 },
      );
      await p.waitForFunction(
        () => Number(document.querySelector('#chart-messages [data-series="outPerSec"]')?.getAttribute('data-value') ?? 0) > 1,
        undefined,
        { timeout: 30_000 },
      );
      // At least two more polls drawn while publishing.
      await p.waitForFunction(
        (n) => Number(document.getElementById('chart-messages')?.dataset.points ?? 0) >= n + 2,
        pointsBefore,
        { timeout: 30_000 },
      );
    } finally {
      stop = true;
      await loop;
    }
    expect(await p.getAttribute('#chart-messages polyline.s0', 'points')).not.toBe(before);
    expect(Number(await p.getAttribute('#chart-connections', 'data-points'))).toBeGreaterThan(1);
    await shot(p, 'overview');

    await p.click('#logout');
    await p.waitForSelector('#login:not([hidden])');
    expect(await status(p, '/admin/api/overview')).toBe(401);
    await shot(p, 'logged-out');
  });

  it('finds a channel and its subscriber, disconnects it (4501), publishes from the tester', async () => {
    const h = await adminServer();
    const carol = await user(h, 'carol');
    const carolSub = carol.subscribe('room:ops');
    await carolSub.ready();
    const dave = await user(h, 'dave');
    const daveSub = dave.subscribe<{ text: string }>('room:news');
    await daveSub.ready();
    const got: unknown[] = [];
    daveSub.on('message', (m) => got.push(m.data));
    const closes: number[] = [];
    carol.on('disconnected', (d) => closes.push(d.code));
    const daveCloses: number[] = [];
    dave.on('disconnected', (d) => daveCloses.push(d.code));

    const p = await page(h);
    await loggedIn(p);

    // Channels: search by prefix, open the channel, see carol in presence.
    await p.click('nav a[href="#channels"]');
    await p.fill('#channel-prefix', 'room:o');
    await p.press('#channel-prefix', 'Enter');
    await p.waitForFunction(() => {
      const names = [...document.querySelectorAll('#channels-body a')].map((a) => a.textContent);
      return names.length === 1 && names[0] === 'room:ops';
    });
    await p.click('#channels-body a:text-is("room:ops")');
    await p.waitForSelector('#presence-body td:text-is("carol")');
    // Live tail: a publication shows up in the history table without a click.
    await carol.publish('room:ops', { n: 1 });
    await p.waitForSelector('#history-body code:text-is(\'{"n":1}\')', { timeout: 10_000 });
    await shot(p, 'channel');

    // Connections: from the presence row to carol's session, then disconnect with confirmation.
    await p.click('#presence-body button.link');
    await p.waitForSelector('#conn-body td:text-is("carol")');
    expect(await p.textContent('#conn-body')).toContain('room:ops');
    await p.click('#conn-body button:text-is("Disconnect")');
    await p.waitForSelector('#confirm[open]');
    await shot(p, 'confirm-disconnect');
    await p.click('#confirm-yes');
    await p.waitForFunction(() => document.getElementById('conn-status')?.textContent === 'Disconnected 1 session.');
    await until('carol sees the close code', () => closes.length > 0);
    expect(closes[0]).toBe(4501);

    // Publish tester: invalid JSON cannot be sent; valid JSON reaches the subscriber.
    await p.click('nav a[href="#publish"]');
    await p.fill('#pub-channel', 'room:news');
    await p.fill('#pub-data', '{"text": ');
    await p.waitForFunction(() => (document.getElementById('pub-send') as HTMLButtonElement).disabled);
    expect(await p.textContent('#pub-json')).toContain('not JSON');
    await p.fill('#pub-data', '{"text": "from the admin"}');
    await p.click('#pub-send');
    await p.waitForFunction(() => /^Published to room:news at offset \d+\.$/.test(document.getElementById('pub-status')?.textContent ?? ''));
    await until('dave gets the message', () => got.length > 0);
    expect(got[0]).toEqual({ text: 'from the admin' });
    await shot(p, 'publish');

    // Revoke dave (with confirmation): his client sees 4503.
    await p.click('nav a[href="#connections"]');
    await p.fill('#conn-client', '');
    await p.fill('#conn-user', 'dave');
    await p.press('#conn-user', 'Enter');
    await p.waitForSelector('#conn-body td:text-is("dave")');
    await p.click('#conn-body button:text-is("Revoke user")');
    await p.waitForSelector('#confirm[open]');
    await p.click('#confirm-yes');
    await p.waitForFunction(() => document.getElementById('conn-status')?.textContent === 'Revoked dave: closed 1 session.');
    await until('dave sees the close code', () => daveCloses.length > 0);
    expect(daveCloses[0]).toBe(4503);

    // Events and dead letters render.
    await p.click('nav a[href="#events"]');
    await p.waitForSelector('#events-body td:text-is("disconnect")');
    await p.click('nav a[href="#dead-letters"]');
    await p.waitForFunction(() => /shown/.test(document.getElementById('dl-status')?.textContent ?? ''));
  });

  it('works at phone width and by keyboard', async () => {
    const h = await adminServer();
    const p = await page(h, 390, 844);
    await p.focus('#secret');
    await p.keyboard.type(ADMIN_SECRET);
    await p.keyboard.press('Enter');
    await p.waitForSelector('#app:not([hidden])');
    await p.waitForFunction(() => Number(document.getElementById('chart-connections')?.dataset.points ?? 0) >= 1);
    // Nothing overflows sideways.
    const overflow = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    expect(overflow).toBeLessThanOrEqual(0);
    // Every input has a label.
    const unlabeled = await p.evaluate(() =>
      [...document.querySelectorAll('input, textarea')].filter((i) => !(i as HTMLInputElement).labels?.length).map((i) => i.id),
    );
    expect(unlabeled).toEqual([]);
    await shot(p, 'phone');
  });

  it('single node: no cluster section', async () => {
    const h = await adminServer();
    const p = await page(h);
    await loggedIn(p);
    await p.waitForFunction(() => Number(document.getElementById('chart-connections')?.dataset.points ?? 0) >= 1);
    expect(await p.isHidden('#cluster')).toBe(true);
  });

  it('on Redis, the overview lists every node of the cluster and charts each node', async () => {
    const redis = await redisUrl();
    if (!redis) return;
    const env = {
      HERALD_ENGINE__TYPE: 'redis',
      HERALD_REDIS__URL: redis,
      HERALD_REDIS__PREFIX: `herald-admin-e2e-${Math.random().toString(16).slice(2, 10)}`,
    };
    const a = await adminServer(env);
    const b = await adminServer(env);
    const p = await page(a);
    await loggedIn(p);
    await p.waitForFunction(() => document.querySelectorAll('#cluster-body tr').length === 2, undefined, {
      timeout: 30_000,
    });
    expect(await p.isVisible('#cluster')).toBe(true);
    expect(await p.textContent('#cluster-body')).toContain('(this node)');
    // Node b's id, as node a lists it.
    const other = await p.evaluate(async () => {
      const o = (await (await fetch('/admin/api/overview')).json()) as { info: { node: string; cluster: { id: string }[] } };
      return o.info.cluster.find((n) => n.id !== o.info.node)!.id;
    });
    // Load on node b only: its lines move in node a's per-node charts.
    const publisher = await user(b, 'pub');
    const sub = publisher.subscribe<number>('load:b');
    await sub.ready();
    let n = 0;
    let stop = false;
    const loop = (async () => {
      while (!stop) {
        await publisher.publish('load:b', n++);
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const value = (chart: string, node: string) =>
      p.evaluate(
        ([c, id]) => Number(document.querySelector(`#${c} .legend [data-node="${id}"]`)?.getAttribute('data-value') || 0),
        [chart, node] as const,
      );
    try {
      for (const chart of ['node-chart-connections', 'node-chart-subscriptions', 'node-chart-in', 'node-chart-out']) {
        await p.waitForFunction(
          ([c, id]) => Number(document.querySelector(`#${c} .legend [data-node="${id}"]`)?.getAttribute('data-value') || 0) > 0,
          [chart, other] as const,
          { timeout: 30_000 },
        );
      }
      // A few announcements drawn (for the screenshot).
      await p.waitForFunction(() => Number(document.getElementById('node-chart-in')?.dataset.points ?? 0) >= 4, undefined, {
        timeout: 30_000,
      });
    } finally {
      stop = true;
      await loop;
    }
    // Node a carried none of it; every chart has a line per node.
    const self = await p.evaluate(async () => ((await (await fetch('/admin/api/overview')).json()) as { info: { node: string } }).info.node);
    expect(await value('node-chart-connections', self)).toBe(0);
    expect(await value('node-chart-in', self)).toBe(0);
    for (const chart of ['connections', 'subscriptions', 'in', 'out', 'p99', 'drops', 'errors']) {
      expect(await p.getAttribute(`#node-chart-${chart}`, 'data-nodes')).toBe('2');
      expect(await p.locator(`#node-chart-${chart} polyline`).count()).toBe(2);
    }
    expect(await p.textContent(`#node-chart-connections .legend [data-node="${other}"]`)).toContain(`${other}: 1`);
    await shot(p, 'cluster');

    // At phone width the cluster section fits the screen too.
    const phone = await page(a, 390, 844);
    await loggedIn(phone);
    await phone.waitForFunction(() => Number(document.getElementById('node-chart-connections')?.dataset.points ?? 0) >= 1, undefined, {
      timeout: 30_000,
    });
    const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    expect(overflow).toBeLessThanOrEqual(0);
    await shot(phone, 'cluster-phone');
  });
});
