/**
 * A small fault-injecting TCP proxy for the integration tests (the Node counterpart of
 * herald-testkit's `FaultProxy`, see docs/fault-harness.md): per-direction latency as a timed
 * queue (chunks keep their order and the proxy keeps reading meanwhile), a blackhole (nothing
 * forwarded either way, sockets kept open, reading paused once a bound is held, new connections
 * accepted but held), a reset (RST on both sides), and a cut after N more bytes towards the client.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';
import { freePort } from './herald.js';

/** `up` = client → server, `down` = server → client. */
export type Direction = 'up' | 'down';

/** While blackholed, one direction reads until it holds this many bytes, then pauses. */
const STALL_LIMIT = 64 * 1024;

interface Pipe {
  from: Socket;
  to: Socket;
  dir: Direction;
  queue: { data: Buffer; due: number }[];
  queued: number;
  timer: ReturnType<typeof setTimeout> | undefined;
  lastDue: number;
  /** Bytes still allowed through before the connection is closed (undefined = no limit). */
  budget: number | undefined;
  /** The sender's FIN was read (passed on once the queue is delivered). */
  ended: boolean;
  /** The sender's socket failed (a RST is passed on once the queue is delivered). */
  failed: boolean;
}

interface Conn {
  client: Socket;
  server: Socket | undefined;
  pipes: Pipe[];
  /** Runs once the blackhole lifts (a held connection connects upstream). */
  onLift: (() => void) | undefined;
  dead: boolean;
}

export interface FaultProxy {
  /** `ws://127.0.0.1:PORT/ws` through the proxy. */
  url: string;
  port: number;
  /** One-way latency (plus `0..jitterMs` per chunk, order kept) of `dir`. */
  setLatency(dir: Direction, ms: number, jitterMs?: number): void;
  /** Stall both directions of every connection (FINs and RSTs are held too) and hold new connections. */
  blackhole(): void;
  /** Deliver what was held and forward again. */
  lift(): void;
  /** RST both sockets of every connection; returns how many. */
  reset(): number;
  /** Forward `n` more bytes towards the client on every connection, then close both sockets. */
  cutAfter(n: number): number;
  /** Connections accepted so far. */
  accepted(): number;
  /** Connections still open (held ones included). */
  open(): number;
  /** Stop listening and destroy every connection. */
  close(): Promise<void>;
}

/** Start a proxy on a free port forwarding to `127.0.0.1:target`. */
export async function faultProxy(target: number): Promise<FaultProxy> {
  const conns = new Set<Conn>();
  const latency: Record<Direction, { ms: number; jitter: number }> = {
    up: { ms: 0, jitter: 0 },
    down: { ms: 0, jitter: 0 },
  };
  let blackholed = false;
  let accepted = 0;

  const kill = (c: Conn, how: 'reset' | 'close') => {
    if (c.dead) return;
    c.dead = true;
    conns.delete(c);
    for (const p of c.pipes) clearTimeout(p.timer);
    for (const s of [c.client, c.server]) {
      if (!s || s.destroyed) continue;
      if (how === 'reset') {
        s.resetAndDestroy();
      } else {
        s.end();
        // Drain what the peer still sends, then let go (a close with unread data would be a RST).
        s.resume();
        setTimeout(() => s.destroy(), 1_000).unref();
      }
    }
  };

  const pump = (c: Conn, p: Pipe) => {
    clearTimeout(p.timer);
    p.timer = undefined;
    if (c.dead || blackholed) return;
    const now = Date.now();
    while (p.queue.length > 0) {
      const head = p.queue[0]!;
      if (head.due > now) {
        p.timer = setTimeout(() => pump(c, p), head.due - now);
        return;
      }
      p.queue.shift();
      p.queued -= head.data.length;
      let data = head.data;
      let cut = false;
      if (p.budget !== undefined && data.length >= p.budget) {
        data = data.subarray(0, p.budget);
        cut = true;
      }
      if (p.budget !== undefined) p.budget -= data.length;
      if (data.length > 0 && !p.to.destroyed) p.to.write(data);
      if (cut) {
        kill(c, 'close');
        return;
      }
    }
    if (p.failed) {
      kill(c, 'reset');
      return;
    }
    if (p.from.isPaused() && !p.ended) p.from.resume();
    if (p.ended && !p.to.destroyed) p.to.end();
  };

  const pipe = (c: Conn, from: Socket, to: Socket, dir: Direction): Pipe => {
    const p: Pipe = { from, to, dir, queue: [], queued: 0, timer: undefined, lastDue: 0, budget: undefined, ended: false, failed: false };
    from.on('data', (data: Buffer) => {
      const l = latency[dir];
      const due = Math.max(Date.now() + l.ms + Math.random() * l.jitter, p.lastDue);
      p.lastDue = due;
      p.queue.push({ data, due });
      p.queued += data.length;
      if (blackholed && p.queued >= STALL_LIMIT) from.pause();
      if (p.timer === undefined) pump(c, p);
    });
    from.on('end', () => {
      p.ended = true;
      if (p.timer === undefined) pump(c, p);
    });
    from.on('error', () => {
      p.failed = true;
      if (p.timer === undefined) pump(c, p);
    });
    return p;
  };

  const start = (c: Conn) => {
    const server = connect({ port: target, host: '127.0.0.1', allowHalfOpen: true });
    c.server = server;
    server.setNoDelay(true);
    c.pipes = [pipe(c, c.client, server, 'up'), pipe(c, server, c.client, 'down')];
    const done = () => {
      if (c.client.destroyed && server.destroyed) kill(c, 'close');
    };
    c.client.on('close', done);
    server.on('close', done);
    c.client.resume();
  };

  const srv: Server = createServer({ pauseOnConnect: true, allowHalfOpen: true }, (client) => {
    accepted++;
    client.setNoDelay(true);
    const c: Conn = { client, server: undefined, pipes: [], onLift: undefined, dead: false };
    conns.add(c);
    if (blackholed) {
      client.on('error', () => kill(c, 'reset'));
      c.onLift = () => start(c);
    } else {
      start(c);
    }
  });
  const port = await freePort();
  await new Promise<void>((r) => srv.listen(port, '127.0.0.1', r));

  return {
    url: `ws://127.0.0.1:${port}/ws`,
    port,
    setLatency(dir, ms, jitterMs = 0) {
      latency[dir] = { ms, jitter: jitterMs };
    },
    blackhole() {
      blackholed = true;
    },
    lift() {
      blackholed = false;
      for (const c of [...conns]) {
        const held = c.onLift;
        c.onLift = undefined;
        if (held) held();
        else for (const p of c.pipes) pump(c, p);
      }
    },
    reset() {
      const all = [...conns];
      for (const c of all) kill(c, 'reset');
      return all.length;
    },
    cutAfter(n) {
      const all = [...conns];
      for (const c of all) {
        const down = c.pipes.find((p) => p.dir === 'down');
        if (down) down.budget = n;
      }
      return all.length;
    },
    accepted: () => accepted,
    open: () => conns.size,
    close: () =>
      new Promise<void>((res) => {
        for (const c of [...conns]) kill(c, 'reset');
        srv.close(() => res());
      }),
  };
}
