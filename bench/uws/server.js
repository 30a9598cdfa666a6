// Baseline broadcast server for `herald bench` on uWebSockets.js 20.30 (C++ core, from npm as
// @trufflesuite/uws-js-unofficial), written the way its docs show: ws.subscribe(channel) and
// app.publish(channel, data), which fans out inside uWS (one serialization per broadcast).
// It speaks the subset of Herald's protocol v1 the benchmark uses (connected, subscribe,
// publish, message) so the same load generator drives every server.
import uWS from 'uWebSockets.js';

const port = Number(process.env.PORT || 8300);
const offsets = new Map(); // channel -> last offset
let nextClient = 1;
const decoder = new TextDecoder();

const app = uWS.App();
const send = (ws, obj) => ws.send(JSON.stringify(obj), false);

app.ws('/ws', {
  compression: uWS.DISABLED,
  maxPayloadLength: 64 * 1024,
  maxBackpressure: 4 * 1024 * 1024,
  // uWS's own heartbeat: pings idle sockets (like Herald's 25 s ping interval).
  idleTimeout: 32,
  sendPingsAutomatically: true,
  open: (ws) => {
    send(ws, { type: 'connected', payload: { client_id: `uws-${nextClient++}`, ping_interval_ms: 25000, pong_timeout_ms: 10000 } });
  },
  message: (ws, raw) => {
    let msg;
    try { msg = JSON.parse(decoder.decode(raw)); } catch { return send(ws, { type: 'error', payload: { code: 'malformed', message: 'bad json' } }); }
    const { type, id, payload = {} } = msg;
    const channel = payload.channel;
    if (typeof channel !== 'string') return send(ws, { type: 'error', id, payload: { code: 'bad_request', message: 'channel' } });
    if (type === 'subscribe') {
      ws.subscribe(channel);
      send(ws, { type: 'reply', id, payload: { channel, offset: offsets.get(channel) || 0, epoch: 'uws' } });
    } else if (type === 'publish') {
      const offset = (offsets.get(channel) || 0) + 1;
      offsets.set(channel, offset);
      app.publish(channel, JSON.stringify({ type: 'message', payload: { channel, offset, epoch: 'uws', time: Date.now(), data: payload.data } }), false);
      send(ws, { type: 'reply', id, payload: { offset, epoch: 'uws' } });
    } else {
      send(ws, { type: 'error', id, payload: { code: 'unknown_type', message: type } });
    }
  },
});

app.listen('127.0.0.1', port, (ok) => {
  if (!ok) {
    console.error(`cannot listen on ${port}`);
    process.exit(1);
  }
  console.log(`uWebSockets.js baseline listening on ws://127.0.0.1:${port}/ws`);
});
