/**
 * The shared client scenario suite (`clients/scenarios/`, format in its README) run against this
 * client: the test plays the server over a FakeSocket and the application over the public API,
 * with fake timers. The Rust client runs the same files against its protocol state.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { HeraldClient, shouldReconnect } from '../../src/index.js';
import type { HeraldError } from '../../src/errors.js';
import type { Envelope } from '../../src/protocol.js';
import type { Subscription } from '../../src/subscription.js';
import { FakeSocket } from './fake-socket.js';

const dir = join(dirname(fileURLToPath(import.meta.url)), '../../../scenarios');

type Json = any;

async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) await Promise.resolve();
}

class Runner {
  readonly client: HeraldClient;
  events: Json[] = [];
  results: Json[] = [];
  private allSent: Envelope[] = [];
  private unmatched: Envelope[] = [];
  private cursors = new Map<FakeSocket, number>();
  private watched = new Set<Subscription<unknown>>();
  private tokens: string[];

  constructor(readonly name: string, header: Json) {
    this.tokens = Array.isArray(header.tokens) ? [...header.tokens] : [];
    const hasTokens = this.tokens.length > 0;
    this.client = new HeraldClient({
      url: 'ws://herald.test/ws',
      WebSocket: FakeSocket,
      random: () => 0.5,
      browserEvents: false,
      token: hasTokens ? async () => this.tokens.shift() : undefined,
    });
    this.client.on('connected', (c) => this.events.push({ connected: { resumed: c.resumed } }));
    this.client.on('disconnected', (d) => this.events.push({ disconnected: { code: d.code, reconnect: d.reconnect } }));
    this.client.on('closed', () => this.events.push({ closed: true }));
    this.client.on('subscription', (s) => {
      this.watch(s);
      this.events.push({ server_subscribed: s.channel });
    });
  }

  private watch(s: Subscription<unknown>): void {
    if (this.watched.has(s)) return;
    this.watched.add(s);
    const channel = s.channel;
    // `data` is compared only when the expectation gives it (see `comparable`).
    s.on('message', (m) => this.events.push({ message: { channel, offset: m.offset, epoch: m.epoch, data: m.data } }));
    s.on('gap', (g) => this.events.push({ gap: { channel, reason: g.reason, after: g.after.offset, now: g.now.offset } }));
    s.on('error', (e) => this.events.push({ subscribe_failed: { channel, code: e.code, retry: e.retryable } }));
    s.on('join', (w) => this.events.push({ join: { channel, client_id: w.client_id } }));
    s.on('leave', (w) => this.events.push({ leave: { channel, client_id: w.client_id } }));
    s.on('unsubscribed', (u) => {
      if (u.byServer) this.events.push({ server_unsubscribed: channel });
    });
  }

  private sync(): void {
    for (const s of FakeSocket.all) {
      const from = this.cursors.get(s) ?? 0;
      const fresh = s.sent.slice(from);
      this.cursors.set(s, s.sent.length);
      this.allSent.push(...fresh);
      this.unmatched.push(...fresh);
    }
  }

  private fail(step: Json, why: string): never {
    throw new Error(`scenario ${this.name}: step ${JSON.stringify(step)}: ${why}`);
  }

  private lastSentId(step: Json, type: string): unknown {
    this.sync();
    const f = [...this.allSent].reverse().find((m) => m.type === type);
    if (!f) this.fail(step, `no ${type} was sent; sent: ${JSON.stringify(this.allSent)}`);
    return f.id;
  }

  async step(step: Json): Promise<void> {
    if ('connect' in step) {
      const before = FakeSocket.all.length;
      if (this.client.state === 'idle') this.client.connect();
      await settle();
      for (let waited = 0; FakeSocket.all.length === before; waited += 100) {
        if (waited > 120_000) this.fail(step, 'the client did not reconnect');
        await vi.advanceTimersByTimeAsync(100);
      }
      FakeSocket.last().accept(step.connect ?? {});
    } else if ('app' in step) {
      const a = step.app;
      if (typeof a.subscribe === 'string') {
        // The runner plays the application: at-least-once acks are its `processed` steps.
        const sub = this.client.subscribe(a.subscribe, { ack: 'manual' });
        this.watch(sub);
        sub.ready().then(
          () => this.results.push({ subscribe: a.subscribe, ok: true }),
          (e: HeraldError) => this.results.push({ subscribe: a.subscribe, error: e.code }),
        );
      } else if (typeof a.unsubscribe === 'string') {
        this.client.unsubscribe(a.unsubscribe);
      } else if (a.publish) {
        const p = a.publish;
        this.client.publish(p.channel, p.data, { idempotencyKey: p.key }).then(
          () => this.results.push({ publish: p.key, ok: true }),
          (e: HeraldError) => this.results.push({ publish: p.key, error: e.code }),
        );
      } else if (a.processed) {
        const sub = this.client.subscription(a.processed.channel);
        if (!sub) this.fail(step, 'no such subscription');
        sub.ack(a.processed.offset);
      } else {
        this.fail(step, 'unknown app action');
      }
    } else if ('server' in step) {
      const s = step.server;
      const socket = FakeSocket.last();
      if (typeof s.reply === 'string') {
        socket.push({ type: 'reply', id: this.lastSentId(step, s.reply) as string, payload: s.payload });
      } else if (typeof s.error === 'string') {
        const payload = { code: s.code, message: 'scenario', retryable: s.retryable };
        socket.push({ type: 'error', id: this.lastSentId(step, s.error) as string, payload });
      } else if (s.message) {
        socket.push({ type: 'message', payload: { ...s.message, time: 1, data: { n: s.message.offset } } });
      } else if (typeof s.push === 'string') {
        socket.push({ type: s.push, payload: s.payload });
      } else if (typeof s.close === 'number') {
        socket.drop(s.close, '');
      } else if (s.drop) {
        socket.drop(1006, '');
      } else {
        this.fail(step, 'unknown server action');
      }
    } else if ('advance_ms' in step) {
      await vi.advanceTimersByTimeAsync(step.advance_ms);
    } else if ('sent' in step) {
      this.sync();
      const want = step.sent;
      const i = this.unmatched.findIndex(
        (f) => f.type === want.type && (want.payload === undefined || JSON.stringify(sorted(f.payload)) === JSON.stringify(sorted(want.payload))),
      );
      if (i < 0) this.fail(step, `not sent; unmatched: ${JSON.stringify(this.unmatched)}`);
      this.unmatched.splice(i, 1);
    } else if ('sent_nothing' in step) {
      this.sync();
      if (this.unmatched.length > 0) this.fail(step, `also sent: ${JSON.stringify(this.unmatched)}`);
    } else if ('events' in step) {
      const got = this.events.splice(0);
      if (JSON.stringify(comparable(got, step.events).map(sorted)) !== JSON.stringify(step.events.map(sorted))) {
        this.fail(step, `events were ${JSON.stringify(got)}`);
      }
    } else if ('results' in step) {
      const got = this.results.splice(0);
      if (JSON.stringify(got.map(sorted)) !== JSON.stringify(step.results.map(sorted))) {
        this.fail(step, `results were ${JSON.stringify(got)}`);
      }
    } else {
      this.fail(step, 'unknown step');
    }
    await settle();
  }
}

/**
 * The events as an `events` step compares them: a `message` event's `data` only where the
 * expectation at the same place gives `data` (the README: then the application's data must equal it).
 */
function comparable(got: Json[], want: Json[]): Json[] {
  return got.map((e, i) => {
    if (!e.message) return e;
    const w = want[i];
    if (w?.message && 'data' in w.message) return e;
    const { data: _data, ...rest } = e.message;
    return { message: rest };
  });
}

/** Keys sorted at every level, so equal objects print equal. */
function sorted(v: Json): Json {
  if (Array.isArray(v)) return v.map(sorted);
  if (v && typeof v === 'object') {
    return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sorted(v[k])]));
  }
  return v;
}

function steps(file: string): Json[] {
  return readFileSync(join(dir, file), 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '' && !l.startsWith('#'))
    .map((l) => JSON.parse(l));
}

beforeEach(() => {
  FakeSocket.all = [];
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

const files = readdirSync(dir).filter((f) => f.endsWith('.jsonl')).sort();

describe('shared client scenarios', () => {
  it('finds the suite', () => {
    expect(files.length).toBeGreaterThanOrEqual(15);
  });
  for (const file of files) {
    const [header, ...rest] = steps(file);
    it(`${file}: ${header.scenario}`, async () => {
      const r = new Runner(header.scenario, header);
      for (const s of rest) await r.step(s);
      // Every event a scenario causes is one it expects.
      expect(r.events, `scenario ${header.scenario}: events no step checked`).toEqual([]);
      r.client.close();
    });
  }
});

describe('close codes', () => {
  const table = JSON.parse(readFileSync(join(dir, 'close-codes.json'), 'utf8')) as {
    codes: { code: number; reconnect: boolean }[];
  };
  for (const row of table.codes) {
    it(`${row.code} → reconnect ${row.reconnect}`, async () => {
      expect(shouldReconnect(row.code)).toBe(row.reconnect);
      const r = new Runner(`close ${row.code}`, {});
      await r.step({ connect: {} });
      await r.step({ server: { close: row.code } });
      expect(r.events).toContainEqual({ disconnected: { code: row.code, reconnect: row.reconnect } });
      r.client.close();
    });
  }
});
