/**
 * A transparent TCP relay in front of Herald that reads the WebSocket frames the server sends:
 * each server-to-client message with its RSV1 bit (permessage-deflate) and, for compressed ones,
 * its inflated text. The bytes are forwarded untouched, so the browser behind it sees the real
 * server; only what crossed the wire is recorded.
 */
import { createConnection, createServer, type Socket } from 'node:net';
import { constants, inflateRawSync } from 'node:zlib';

/** One message the server sent on a WebSocket (fragments reassembled). */
export interface WireMessage {
  /** RSV1 on its first frame: the payload is deflated (RFC 7692). */
  compressed: boolean;
  opcode: number;
  /** Payload bytes as they crossed the wire. */
  wireBytes: number;
  /** The payload as text, inflated when it was compressed. */
  text: string;
}

export interface Relay {
  /** `http://127.0.0.1:PORT` */
  url: string;
  /** Every upgraded connection's server messages, in order, one array per connection. */
  connections: WireMessage[][];
  /** All server messages on all upgraded connections. */
  messages(): WireMessage[];
  close(): Promise<void>;
}

/** Parse server-to-client frames (never masked) out of `buf`; returns the bytes it did not use. */
function frames(
  buf: Buffer,
  onFrame: (f: { fin: boolean; rsv1: boolean; opcode: number; payload: Buffer }) => void,
): Buffer {
  let at = 0;
  for (;;) {
    if (buf.length - at < 2) break;
    const b0 = buf[at] as number;
    const b1 = buf[at + 1] as number;
    let len = b1 & 0x7f;
    let head = 2;
    if (len === 126) {
      if (buf.length - at < 4) break;
      len = buf.readUInt16BE(at + 2);
      head = 4;
    } else if (len === 127) {
      if (buf.length - at < 10) break;
      len = Number(buf.readBigUInt64BE(at + 2));
      head = 10;
    }
    if (b1 & 0x80) head += 4; // a mask key (never from a server, but skip it right)
    if (buf.length - at < head + len) break;
    let payload = buf.subarray(at + head, at + head + len);
    if (b1 & 0x80) {
      const key = buf.subarray(at + head - 4, at + head);
      payload = Buffer.from(payload.map((x, i) => x ^ (key[i % 4] as number)));
    }
    onFrame({ fin: (b0 & 0x80) !== 0, rsv1: (b0 & 0x40) !== 0, opcode: b0 & 0x0f, payload });
    at += head + len;
  }
  return buf.subarray(at);
}

/** Start a relay to `127.0.0.1:targetPort`. */
export async function relay(targetPort: number): Promise<Relay> {
  const connections: WireMessage[][] = [];
  const sockets = new Set<Socket>();
  const srv = createServer((client) => {
    const upstream = createConnection(targetPort, '127.0.0.1');
    sockets.add(client);
    sockets.add(upstream);
    client.on('close', () => sockets.delete(client));
    upstream.on('close', () => sockets.delete(upstream));
    client.pipe(upstream);
    upstream.pipe(client);
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());

    // Tap the server's bytes: the first answer decides whether this is a WebSocket.
    let pending: Buffer = Buffer.alloc(0);
    let state: 'head' | 'ws' | 'http' = 'head';
    let msgs: WireMessage[] | undefined;
    let partial: { compressed: boolean; opcode: number; parts: Buffer[] } | undefined;
    upstream.on('data', (d: Buffer) => {
      if (state === 'http') return;
      pending = Buffer.concat([pending, d]);
      if (state === 'head') {
        const end = pending.indexOf('\r\n\r\n');
        if (end < 0) return;
        const status = pending.subarray(0, pending.indexOf('\r\n')).toString();
        if (!/^HTTP\/1\.1 101 /.test(status)) {
          state = 'http';
          return;
        }
        state = 'ws';
        msgs = [];
        connections.push(msgs);
        pending = pending.subarray(end + 4);
      }
      pending = frames(pending, (f) => {
        if (f.opcode >= 0x8) return; // control frames
        if (f.opcode !== 0) partial = { compressed: f.rsv1, opcode: f.opcode, parts: [] };
        if (!partial) return;
        partial.parts.push(f.payload);
        if (!f.fin) return;
        const payload = Buffer.concat(partial.parts);
        let plain = payload;
        if (partial.compressed) {
          // RFC 7692 §7.2.2: append the empty stored block the sender stripped; the stream has no
          // final block, so inflate with a sync flush.
          try {
            plain = inflateRawSync(Buffer.concat([payload, Buffer.from([0x00, 0x00, 0xff, 0xff])]), {
              finishFlush: constants.Z_SYNC_FLUSH,
            });
          } catch (e) {
            plain = Buffer.from(`<not valid deflate: ${String(e)}>`);
          }
        }
        msgs?.push({
          compressed: partial.compressed,
          opcode: partial.opcode,
          wireBytes: payload.length,
          text: plain.toString('utf8'),
        });
        partial = undefined;
      });
    });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const addr = srv.address();
  const port = typeof addr === 'object' && addr ? addr.port : 0;
  return {
    url: `http://127.0.0.1:${port}`,
    connections,
    messages: () => connections.flat(),
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        srv.close(() => r());
      }),
  };
}
