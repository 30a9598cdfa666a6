/**
 * The demo chat served by `herald serve --dev` at `/`: rooms, presence, a typing indicator on a
 * `latest`-policy channel, history on join, and the connection state. Built into
 * `crates/herald-server/assets/demo/app.js` by `npm run build:demo`.
 */
import { HeraldClient, type Gap, type Message, type State, type Subscription } from '../src/index.js';

interface ChatMessage {
  user: string;
  text: string;
  /** The sender's local id: matches the live message to the pending bubble. */
  local: string;
}

interface Typing {
  user: string;
}

const $ = <T extends HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} missing`);
  return el as T;
};

const ROOMS = ['lobby', 'random', 'dev'];
const params = new URLSearchParams(location.search);
let me = '';
let client: HeraldClient | undefined;
let room = '';
let chat: Subscription<ChatMessage> | undefined;
let typing: Subscription<Typing> | undefined;
/** Messages shown, by `epoch:offset`, in display order. */
let shown: { key: string; epoch: string; offset: number; el: HTMLElement }[] = [];
/** Pending bubbles of my publishes, by local id. */
const pending = new Map<string, HTMLElement>();
/** Who is in the room: client id → user name. */
let present = new Map<string, string>();
const typers = new Map<string, number>();
let countdown: ReturnType<typeof setInterval> | undefined;
let lastTypingSent = 0;
let localSeq = 0;

// ---- connection state ------------------------------------------------------------------------

function showState(state: State | 'reconnecting', text: string): void {
  const el = $('state');
  el.dataset.state = state;
  el.textContent = text;
}

function watch(c: HeraldClient): void {
  c.on('state', (s) => {
    clearInterval(countdown);
    if (s === 'connected') showState(s, 'connected');
    else if (s === 'connecting') showState(s, 'connecting…');
    else if (s === 'offline') showState(s, 'offline');
    else if (s === 'closed') showState(s, 'disconnected');
  });
  c.on('transport', (t) => {
    const el = $('transport');
    el.hidden = false;
    el.textContent = t === 'websocket' ? 'WebSocket' : t === 'http-stream' ? 'HTTP streaming' : 'long-polling';
    el.dataset.transport = t;
  });
  c.on('reconnecting', ({ at }) => {
    clearInterval(countdown);
    const tick = () => {
      const secs = Math.max(0, Math.ceil((at - Date.now()) / 1000));
      showState('reconnecting', `reconnecting in ${secs} s`);
    };
    tick();
    countdown = setInterval(tick, 250);
  });
}

// ---- rooms -----------------------------------------------------------------------------------

function renderRooms(): void {
  const list = $('room-list');
  list.replaceChildren(
    ...ROOMS.map((r) => {
      const li = document.createElement('li');
      const b = document.createElement('button');
      b.type = 'button';
      b.textContent = `# ${r}`;
      b.dataset.room = r;
      b.setAttribute('aria-current', String(r === room));
      b.addEventListener('click', () => join(r));
      li.append(b);
      return li;
    }),
  );
}

function join(next: string): void {
  if (!client || next === room) return;
  chat?.unsubscribe();
  typing?.unsubscribe();
  room = next;
  shown = [];
  present = new Map();
  typers.clear();
  pending.clear();
  $('messages').replaceChildren();
  $('room-title').textContent = `# ${room}`;
  renderRooms();
  renderPresence();
  renderTyping();
  history.replaceState(null, '', `?room=${encodeURIComponent(room)}`);

  const sub = client.subscribe<ChatMessage>(`chat:${room}`);
  chat = sub;
  sub.on('subscribed', () => {
    void loadHistory(sub);
    void loadPresence(sub);
  });
  sub.on('message', (m) => addMessage(m));
  sub.on('gap', (g) => void fillGap(sub, g));
  sub.on('join', (who) => {
    present.set(who.client_id, who.user_id);
    renderPresence();
  });
  sub.on('leave', (who) => {
    present.delete(who.client_id);
    renderPresence();
  });

  typing = client.subscribe<Typing>(`typing:${room}`);
  typing.on('message', (m) => {
    if (m.data.user === me) return;
    typers.set(m.data.user, Date.now());
    renderTyping();
    setTimeout(renderTyping, 3_100);
  });
}

// ---- messages --------------------------------------------------------------------------------

function bubble(user: string, text: string, time: number): HTMLElement {
  const li = document.createElement('li');
  li.className = user === me ? 'msg mine' : 'msg';
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = user;
  const body = document.createElement('span');
  body.className = 'text';
  body.textContent = text;
  const t = document.createElement('time');
  t.textContent = new Date(time).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  li.append(who, body, t);
  return li;
}

function scrollDown(): void {
  const list = $('messages');
  list.scrollTop = list.scrollHeight;
}

/** Show a publication once, in stream order (history and live messages may interleave). */
function addMessage(m: Message<ChatMessage>): void {
  const key = `${m.epoch}:${m.offset}`;
  if (shown.some((s) => s.key === key)) return;
  const mine = pending.get(m.data.local);
  if (mine) {
    mine.remove();
    pending.delete(m.data.local);
  }
  if (typers.delete(m.data.user)) renderTyping(); // they sent what they typed
  const el = bubble(m.data.user, m.data.text, m.time);
  el.dataset.key = key;
  let i = shown.length;
  while (i > 0 && shown[i - 1]!.epoch === m.epoch && shown[i - 1]!.offset > m.offset) i--;
  const list = $('messages');
  const before = shown[i]?.el ?? list.querySelector('.msg.pending');
  list.insertBefore(el, before);
  shown.splice(i, 0, { key, epoch: m.epoch, offset: m.offset, el });
  scrollDown();
}

async function loadHistory(sub: Subscription<ChatMessage>): Promise<void> {
  try {
    const h = await sub.history({ limit: 50, reverse: true });
    for (const m of h.publications.reverse()) addMessage(m);
  } catch (e) {
    notice(`history unavailable: ${(e as Error).message}`);
  }
}

/** Messages were lost (server restart, trimmed history): show what history still has. */
async function fillGap(sub: Subscription<ChatMessage>, g: Gap): Promise<void> {
  try {
    const since = g.reason === 'trimmed' ? g.after : undefined;
    const h = await sub.history(since ? { since, limit: 100 } : { limit: 100 });
    for (const m of h.publications) addMessage(m);
  } catch (e) {
    notice(`some messages could not be recovered: ${(e as Error).message}`);
  }
}

function notice(text: string): void {
  const li = document.createElement('li');
  li.className = 'notice';
  li.textContent = text;
  $('messages').append(li);
}

function send(text: string): void {
  if (!client || !text.trim()) return;
  const local = `${me}-${Date.now()}-${++localSeq}`;
  const el = bubble(me, text, Date.now());
  el.classList.add('pending');
  el.dataset.local = local;
  $('messages').append(el);
  pending.set(local, el);
  scrollDown();
  client.publish(`chat:${room}`, { user: me, text, local } satisfies ChatMessage).catch(() => {
    el.classList.remove('pending');
    el.classList.add('failed');
  });
}

// ---- presence and typing ---------------------------------------------------------------------

async function loadPresence(sub: Subscription<ChatMessage>): Promise<void> {
  try {
    const clients = await sub.presence();
    present = new Map(clients.map((c) => [c.client_id, c.user_id]));
    renderPresence();
  } catch {
    // presence is best effort in the demo
  }
}

function renderPresence(): void {
  const users = [...new Set(present.values())].filter((u) => u !== '').sort();
  $('online-count').textContent = users.length ? `(${users.length})` : '';
  $('presence').replaceChildren(
    ...users.map((u) => {
      const li = document.createElement('li');
      li.textContent = u === me ? `${u} (you)` : u;
      li.dataset.user = u;
      return li;
    }),
  );
}

function renderTyping(): void {
  const now = Date.now();
  const who = [...typers].filter(([, t]) => now - t < 3_000).map(([u]) => u);
  $('typing').textContent =
    who.length === 0 ? '' : who.length === 1 ? `${who[0]} is typing…` : `${who.join(', ')} are typing…`;
}

function typed(): void {
  const now = Date.now();
  if (!client || client.state !== 'connected' || now - lastTypingSent < 1_500) return;
  lastTypingSent = now;
  client.publish(`typing:${room}`, { user: me } satisfies Typing).catch(() => undefined);
}

// ---- start -----------------------------------------------------------------------------------

async function fetchToken(): Promise<string> {
  const r = await fetch(`/demo/token?user=${encodeURIComponent(me)}`);
  if (!r.ok) throw new Error(`token endpoint answered ${r.status}`);
  return ((await r.json()) as { token: string }).token;
}

function start(name: string): void {
  me = name;
  $('login').hidden = true;
  $('chat').hidden = false;
  const meEl = $('me');
  meEl.hidden = false;
  meEl.textContent = me;
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  client = new HeraldClient({
    url: `${scheme}://${location.host}/ws`,
    token: fetchToken,
    backoff: { minDelayMs: 500, maxDelayMs: 5_000 },
  });
  watch(client);
  client.connect();
  const wanted = params.get('room') ?? 'lobby';
  if (/^[a-z0-9-]{1,24}$/.test(wanted) && !ROOMS.includes(wanted)) ROOMS.push(wanted);
  join(ROOMS.includes(wanted) ? wanted : 'lobby');
  $('text').focus();
  // For tests and debugging in the console.
  (window as unknown as { herald: HeraldClient }).herald = client;
}

$<HTMLFormElement>('login-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const name = $<HTMLInputElement>('name').value.trim();
  if (name) start(name);
});
$<HTMLFormElement>('composer').addEventListener('submit', (e) => {
  e.preventDefault();
  const input = $<HTMLInputElement>('text');
  send(input.value);
  input.value = '';
});
$<HTMLInputElement>('text').addEventListener('input', typed);
$<HTMLFormElement>('new-room').addEventListener('submit', (e) => {
  e.preventDefault();
  const input = $<HTMLInputElement>('new-room-name');
  const name = input.value.trim().toLowerCase();
  if (/^[a-z0-9-]{1,24}$/.test(name)) {
    if (!ROOMS.includes(name)) ROOMS.push(name);
    join(name);
  }
  input.value = '';
});
const preset = params.get('user');
if (preset) start(preset);
