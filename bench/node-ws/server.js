// Baseline broadcast server for `herald bench` (npm `ws`), written the way the seed guides show:
// rooms as Map<room, Set<ws>>, JSON.stringify once per broadcast, then client.send(data) to each.
// It speaks the subset of Herald's protocol v1 the benchmark uses (connected, subscribe,
// publish, message) so the same load generator drives both servers.
import { WebSocketServer, WebSocket } from 'ws';

const port = Number(process.env.PORT || 8100);
const wss = new WebSocketServer({ port, host: '127.0.0.1', maxPayload: 64 * 1024 });
const rooms = new Map(); // channel -> Set<ws>
const offsets = new Map(); // channel -> last offset
let nextClient = 1;

function send(ws, obj) {
  ws.send(JSON.stringify(obj));
}

function broadcastToRoom(channel, message) {
  const clients = rooms.get(channel);
  if (!clients) return;
  const data = JSON.stringify(message);
  for (const client of clients) {
    if (client.readyState === WebSocket.OPEN) client.send(data);
  }
}

wss.on('connection', (ws) => {
  ws.isAlive = true;
  ws.on('pong', () => { ws.isAlive = true; });
  ws.rooms = new Set();
  send(ws, { type: 'connected', payload: { client_id: `node-${nextClient++}`, ping_interval_ms: 25000, pong_timeout_ms: 10000 } });
  ws.on('message', (raw) => {
    let msg;
    try { msg = JSON.parse(raw); } catch { return send(ws, { type: 'error', payload: { code: 'malformed', message: 'bad json' } }); }
    const { type, id, payload = {} } = msg;
    const channel = payload.channel;
    if (typeof channel !== 'string') return send(ws, { type: 'error', id, payload: { code: 'bad_request', message: 'channel' } });
    if (type === 'subscribe') {
      if (!rooms.has(channel)) rooms.set(channel, new Set());
      rooms.get(channel).add(ws);
      ws.rooms.add(channel);
      send(ws, { type: 'reply', id, payload: { channel, offset: offsets.get(channel) || 0, epoch: 'node' } });
    } else if (type === 'publish') {
      const offset = (offsets.get(channel) || 0) + 1;
      offsets.set(channel, offset);
      broadcastToRoom(channel, { type: 'message', payload: { channel, offset, epoch: 'node', time: Date.now(), data: payload.data } });
      send(ws, { type: 'reply', id, payload: { offset, epoch: 'node' } });
    } else {
      send(ws, { type: 'error', id, payload: { code: 'unknown_type', message: type } });
    }
  });
  ws.on('close', () => {
    for (const r of ws.rooms) rooms.get(r)?.delete(ws);
  });
});

setInterval(() => {
  wss.clients.forEach((ws) => {
    if (!ws.isAlive) return ws.terminate();
    ws.isAlive = false;
    ws.ping();
  });
}, 25000);

console.log(`node ws baseline listening on ws://127.0.0.1:${port}/ws`);
