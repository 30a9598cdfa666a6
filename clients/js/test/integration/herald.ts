/** Starts the real `herald` binary for integration and browser tests. */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { HeraldClient, type ClientOptions, type WebSocketCtor } from '../../src/index.js';

/** The binary under test: `$HERALD_BIN`, else the workspace's debug build. */
export const BIN = process.env.HERALD_BIN ?? fileURLToPath(new URL('../../../../target/debug/herald', import.meta.url));

export const SECRET = 'js-client-test-secret-js-client-test-secret';

function binary(): string {
  if (!existsSync(BIN)) {
    throw new Error(`${BIN} does not exist: build it first with \`cargo build -p herald\` (./scripts/test.sh does)`);
  }
  return BIN;
}

/** A free TCP port on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

/** A connection token for `user` (all channels, publish everywhere). */
export function token(user: string, ttl = '1h', info?: unknown): string {
  const args = ['token', '--user', user, '--channels', '*', '--publish', '*', '--ttl', ttl];
  if (info !== undefined) args.push('--info', JSON.stringify(info));
  return execFileSync(binary(), args, { env: { ...process.env, HERALD_AUTH__HMAC_SECRET: SECRET } })
    .toString()
    .trim();
}

/** A running `herald serve --dev`. */
export interface Herald {
  port: number;
  /** `ws://127.0.0.1:PORT/ws` */
  wsUrl: string;
  /** `http://127.0.0.1:PORT` */
  httpUrl: string;
  process: ChildProcess;
  /** Kill it (SIGKILL by default) and wait for the exit. */
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/** Start `herald serve --dev` on `port` (a free one by default) and wait until it listens. */
export async function startHerald(opts: { port?: number; env?: Record<string, string> } = {}): Promise<Herald> {
  const port = opts.port ?? (await freePort());
  const child = spawn(binary(), ['serve', '--dev', '--listen', `127.0.0.1:${port}`], {
    env: { ...process.env, HERALD_AUTH__HMAC_SECRET: SECRET, RUST_LOG: 'warn', ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4_000);
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    let out = '';
    const onData = (d: Buffer) => {
      out += d.toString();
      if (out.includes('herald listening on')) {
        child.stdout?.off('data', onData);
        child.stdout?.resume(); // keep draining: the server must never write to a full pipe
        resolve();
      }
    };
    child.stdout?.on('data', onData);
    child.once('exit', (code) => reject(new Error(`herald exited with ${code} before listening:\n${stderr}`)));
  });
  return {
    port,
    wsUrl: `ws://127.0.0.1:${port}/ws`,
    httpUrl: `http://127.0.0.1:${port}`,
    process: child,
    async kill(signal: NodeJS.Signals = 'SIGKILL') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    },
  };
}

/** Resolve when `cond()` holds, polling every 10 ms; reject after `timeoutMs` with `what`. */
export async function until(what: string, cond: () => boolean, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Things to undo after each test, newest first: call `runCleanup` from `afterEach`. */
export const cleanup: (() => Promise<void> | void)[] = [];

/** Undo what the test registered in {@link cleanup}. */
export async function runCleanup(): Promise<void> {
  for (const f of cleanup.splice(0).reverse()) await f();
}

/** {@link startHerald}, killed after the test. */
export async function server(port?: number): Promise<Herald> {
  const h = await startHerald(port === undefined ? {} : { port });
  cleanup.push(() => h.kill());
  return h;
}

/** A client of the real server (node `ws`), closed after the test; fast backoff unless given. */
export function client(url: string, opts: Partial<ClientOptions> = {}, backoff = { minDelayMs: 50, maxDelayMs: 300 }): HeraldClient {
  const c = new HeraldClient({
    url,
    WebSocket: WebSocket as unknown as WebSocketCtor,
    backoff,
    ...opts,
  });
  cleanup.push(() => c.close());
  return c;
}

/** Connect `c` and wait for `connected`. */
export async function connected(c: HeraldClient): Promise<void> {
  const done = new Promise<void>((resolve) => c.once('connected', () => resolve()));
  c.connect();
  await done;
}
