/**
 * The admin UI served at `/admin` when `[admin]` is configured: login, a live overview with
 * charts, channels, connections (with disconnect), a publish tester, dead letters and lifecycle
 * events. Everything comes from `/admin/api/*` (docs/openapi.json) with the session cookie; every
 * state-changing request carries `X-Herald-Admin: 1`. Built into
 * `crates/herald-server/assets/admin/app.js` by `npm run build:admin`.
 */
import {
  ClusterWindows,
  niceMax,
  polyline,
  timeline,
  total,
  Window,
  type ClusterNode,
  type NodeSeries,
  type Point,
  type Stats,
} from './series.js';

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} missing`);
  return el as T;
};

/** Poll interval of the overview and how many points the charts keep (5 minutes). */
const POLL_MS = 1_000;
const KEEP = 300;

class Unauthorized extends Error {}

interface ApiErrorBody {
  code?: string;
  message?: string;
}

/** Call the admin API; a 401 shows the login form. */
async function api<T>(path: string, body?: unknown): Promise<T> {
  const init: RequestInit = { credentials: 'same-origin', headers: { Accept: 'application/json' } };
  if (body !== undefined) {
    init.method = 'POST';
    init.headers = { 'Content-Type': 'application/json', 'X-Herald-Admin': '1' };
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  if (r.status === 401 && path.startsWith('/admin/api/')) {
    showLogin('Your session ended: log in again.');
    throw new Unauthorized('not logged in');
  }
  const text = await r.text();
  const data = text ? (JSON.parse(text) as unknown) : {};
  if (!r.ok) {
    const e = data as ApiErrorBody;
    throw new Error(`${r.status} ${e.code ?? ''}: ${e.message ?? r.statusText}`);
  }
  return data as T;
}

function el<K extends keyof HTMLElementTagNameMap>(tag: K, text?: string, cls?: string): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

/** Fill `table`'s body with rows of cells (text or elements). */
function rows(tbody: HTMLElement, data: (string | Node)[][], empty: string): void {
  tbody.replaceChildren();
  if (data.length === 0) {
    const tr = el('tr');
    const td = el('td', empty, 'muted');
    td.colSpan = 8;
    tr.append(td);
    tbody.append(tr);
    return;
  }
  for (const cells of data) {
    const tr = el('tr');
    for (const c of cells) {
      const td = el('td');
      td.append(c);
      tr.append(td);
    }
    tbody.append(tr);
  }
}

function say(id: string, text: string, kind: 'ok' | 'bad' | '' = ''): void {
  const s = $(id);
  s.textContent = text;
  s.dataset.kind = kind;
}

function fail(id: string, e: unknown): void {
  if (e instanceof Unauthorized) return;
  say(id, e instanceof Error ? e.message : String(e), 'bad');
}

// ---------------------------------------------------------------- login

function showLogin(message = ''): void {
  stopPolling();
  if (channelTimer) clearInterval(channelTimer);
  channelTimer = undefined;
  $('app').hidden = true;
  $('login').hidden = false;
  say('login-status', message, message ? 'bad' : '');
  $<HTMLInputElement>('secret').focus();
}

async function login(ev: Event): Promise<void> {
  ev.preventDefault();
  const secret = $<HTMLInputElement>('secret');
  say('login-status', 'Logging in…');
  try {
    await api('/admin/login', { secret: secret.value });
    secret.value = '';
    say('login-status', '');
    showApp();
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    say('login-status', msg.startsWith('429') ? 'Too many failed logins: wait a minute.' : 'Wrong secret.', 'bad');
  }
}

async function logout(): Promise<void> {
  try {
    await api('/admin/logout', {});
  } finally {
    showLogin('Logged out.');
    say('login-status', 'Logged out.', 'ok');
  }
}

// ---------------------------------------------------------------- navigation

const VIEWS = ['overview', 'channels', 'channel', 'connections', 'publish', 'dead-letters', 'events'] as const;
type View = (typeof VIEWS)[number];

function showApp(): void {
  $('login').hidden = true;
  $('app').hidden = false;
  route();
}

function route(): void {
  if ($('app').hidden) return;
  const [name, arg] = location.hash.replace(/^#\/?/, '').split('/', 2);
  const view: View = (VIEWS as readonly string[]).includes(name ?? '') ? (name as View) : 'overview';
  for (const v of VIEWS) $(`view-${v}`).hidden = v !== view;
  for (const a of document.querySelectorAll<HTMLAnchorElement>('nav a')) {
    const current = a.getAttribute('href') === `#${view === 'channel' ? 'channels' : view}`;
    if (current) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (view === 'overview') startPolling();
  else stopPolling();
  if (channelTimer) clearInterval(channelTimer);
  channelTimer = undefined;
  if (view === 'channel' && arg) {
    channelTimer = setInterval(() => {
      if ($<HTMLInputElement>('channel-live').checked) void openChannel(decodeURIComponent(arg));
    }, 2_000);
  }
  if (view === 'channels') void searchChannels();
  if (view === 'channel' && arg) void openChannel(decodeURIComponent(arg));
  if (view === 'dead-letters') void loadDeadLetters();
  if (view === 'events') void loadEvents(true);
  $(`view-${view}`).querySelector<HTMLElement>('h2')?.focus();
}

// ---------------------------------------------------------------- overview

interface Overview {
  time_ms: number;
  info: { node: string; version: string; uptime_ms: number; connections: number; channels: number; cluster?: ClusterNode[] };
  stats: Stats | null;
}

const window5m = new Window(KEEP);
/** Per node of the cluster: a point per announcement (every 2 s), the last 5 minutes. */
const nodes5m = new ClusterWindows(KEEP);
let timer: ReturnType<typeof setInterval> | undefined;

function startPolling(): void {
  if (timer) return;
  void poll();
  timer = setInterval(() => void poll(), POLL_MS);
}

function stopPolling(): void {
  if (timer) clearInterval(timer);
  timer = undefined;
}

async function poll(): Promise<void> {
  try {
    const o = await api<Overview>('/admin/api/overview');
    const p = window5m.push({ timeMs: o.time_ms, connections: o.info.connections, stats: o.stats });
    nodes5m.push(o.info.cluster ?? []);
    renderOverview(o, p);
    say('overview-status', '');
  } catch (e) {
    fail('overview-status', e);
  }
}

const fmt = (n: number | null, digits = 0): string => (n === null ? '–' : n.toFixed(digits));

function card(id: string, value: string): void {
  $(id).textContent = value;
}

const CHARTS: { id: string; series: { key: keyof Point; label: string }[]; unit: string }[] = [
  { id: 'chart-connections', series: [{ key: 'connections', label: 'connections' }, { key: 'subscriptions', label: 'subscriptions' }], unit: '' },
  { id: 'chart-messages', series: [{ key: 'inPerSec', label: 'in/s' }, { key: 'outPerSec', label: 'out/s' }], unit: '/s' },
  { id: 'chart-latency', series: [{ key: 'p50Ms', label: 'p50' }, { key: 'p99Ms', label: 'p99' }], unit: ' ms' },
  { id: 'chart-drops', series: [{ key: 'dropsPerSec', label: 'drops/s' }, { key: 'errorsPerSec', label: 'errors/s' }], unit: '/s' },
];

const SVG = 'http://www.w3.org/2000/svg';
const W = 300;
const H = 100;

function drawChart(id: string, series: { key: keyof Point; label: string }[], unit: string): void {
  const svg = $(id).querySelector('svg');
  const legend = $(id).querySelector('.legend');
  if (!svg || !legend) return;
  const pts = window5m.points;
  const values = series.map((s) => pts.map((p) => p[s.key] as number | null));
  const max = niceMax(Math.max(0, ...values.flat().map((v) => v ?? 0)));
  svg.replaceChildren();
  for (const y of [0, H / 2]) {
    const line = document.createElementNS(SVG, 'line');
    line.setAttribute('x1', '0');
    line.setAttribute('x2', String(W));
    line.setAttribute('y1', String(y));
    line.setAttribute('y2', String(y));
    line.setAttribute('class', 'grid');
    svg.append(line);
  }
  values.forEach((v, i) => {
    const pl = document.createElementNS(SVG, 'polyline');
    // Fill the width from the first minute on, then slide over the last 5 minutes.
    pl.setAttribute('points', polyline(v, max, W, H, Math.min(KEEP, Math.max(60, pts.length))));
    pl.setAttribute('class', `s${i}`);
    svg.append(pl);
  });
  legend.replaceChildren();
  series.forEach((s, i) => {
    const last = values[i]?.[values[i]!.length - 1] ?? null;
    const item = el('span', `${s.label} ${fmt(last, s.key.endsWith('Ms') ? 2 : unit ? 1 : 0)}${unit}`, `key s${i}`);
    item.dataset.series = String(s.key);
    item.dataset.value = last === null ? '' : String(last);
    legend.append(item);
  });
  const top = el('span', `max ${max}${unit}`, 'max');
  legend.append(top);
  $(id).dataset.points = String(pts.length);
}

function renderOverview(o: Overview, p: Point | undefined): void {
  card('stat-connections', String(o.info.connections));
  card('stat-channels', String(o.info.channels));
  card('stat-subscriptions', o.stats ? String(o.stats.subscriptions) : '–');
  card('stat-in', p ? fmt(p.inPerSec, 1) : '–');
  card('stat-out', p ? fmt(p.outPerSec, 1) : '–');
  card('stat-p99', p ? fmt(p.p99Ms, 2) : '–');
  card('stat-errors', o.stats ? String(total(o.stats.errors)) : '–');
  card('stat-slow', o.stats ? String(o.stats.slow_consumer_disconnects) : '–');
  $('node-info').textContent = `node ${o.info.node} · v${o.info.version} · up ${Math.round(o.info.uptime_ms / 1000)} s`;
  for (const c of CHARTS) drawChart(c.id, c.series, c.unit);
  const errors = Object.entries(o.stats?.errors ?? {}).sort((a, b) => b[1] - a[1]);
  rows($('errors-body'), errors.map(([code, n]) => [code, String(n)]), 'no errors');
  const cluster = o.info.cluster ?? [];
  $('cluster').hidden = cluster.length === 0;
  if (cluster.length) renderCluster(o);
}

// ---------------------------------------------------------------- overview: per node

/** The per-node charts: one metric each, a line per node (`#node-chart-*` in index.html). */
const NODE_CHARTS: { id: string; key: keyof Point; unit: string; digits: number; needsLoad: boolean }[] = [
  { id: 'node-chart-connections', key: 'connections', unit: '', digits: 0, needsLoad: false },
  { id: 'node-chart-subscriptions', key: 'subscriptions', unit: '', digits: 0, needsLoad: true },
  { id: 'node-chart-in', key: 'inPerSec', unit: '/s', digits: 1, needsLoad: true },
  { id: 'node-chart-out', key: 'outPerSec', unit: '/s', digits: 1, needsLoad: true },
  { id: 'node-chart-p99', key: 'p99Ms', unit: ' ms', digits: 2, needsLoad: true },
  { id: 'node-chart-drops', key: 'dropsPerSec', unit: '/s', digits: 1, needsLoad: true },
  { id: 'node-chart-errors', key: 'errorsPerSec', unit: '/s', digits: 1, needsLoad: true },
];

const nodeName = (id: string, self: string): string => (id === self ? `${id} (this node)` : id);

/** The last point of a node's series (none before its second announcement). */
const lastPoint = (s: NodeSeries): Point | undefined => s.window.points[s.window.points.length - 1];

/** A legend swatch: a short line in the node's colour and dash (the same as its chart line). */
function swatch(style: number): SVGSVGElement {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', '0 0 18 6');
  svg.setAttribute('width', '18');
  svg.setAttribute('height', '6');
  svg.setAttribute('aria-hidden', 'true');
  const line = document.createElementNS(SVG, 'line');
  for (const [k, v] of [['x1', '0'], ['x2', '18'], ['y1', '3'], ['y2', '3']] as const) line.setAttribute(k, v);
  line.setAttribute('class', `n${style}`);
  svg.append(line);
  return svg;
}

function drawNodeChart(c: (typeof NODE_CHARTS)[number], series: NodeSeries[], self: string, end: number, span: number): void {
  const fig = $(c.id);
  const svg = fig.querySelector('svg');
  const legend = fig.querySelector('.legend');
  if (!svg || !legend) return;
  const shown = series.filter((s) => s.hasLoad || !c.needsLoad);
  const lines = shown.map((s) => s.window.points.map((p) => ({ timeMs: p.timeMs, value: p[c.key] as number | null })));
  const max = niceMax(Math.max(0, ...lines.flat().filter((p) => p.timeMs >= end - span).map((p) => p.value ?? 0)));
  svg.replaceChildren();
  for (const y of [0, H / 2]) {
    const line = document.createElementNS(SVG, 'line');
    line.setAttribute('x1', '0');
    line.setAttribute('x2', String(W));
    line.setAttribute('y1', String(y));
    line.setAttribute('y2', String(y));
    line.setAttribute('class', 'grid');
    svg.append(line);
  }
  shown.forEach((s, i) => {
    const pl = document.createElementNS(SVG, 'polyline');
    pl.setAttribute('points', timeline(lines[i]!, end, span, max, W, H));
    pl.setAttribute('class', `n${s.style}`);
    pl.dataset.node = s.id;
    svg.append(pl);
  });
  legend.replaceChildren();
  for (const s of series) {
    const p = lastPoint(s);
    const value = s.hasLoad || !c.needsLoad ? ((p?.[c.key] as number | null | undefined) ?? null) : null;
    const text = !s.hasLoad && c.needsLoad ? 'not announced (older node)' : `${fmt(value, c.digits)}${c.unit}`;
    const item = el('span', undefined, 'key node');
    item.append(swatch(s.style), ` ${nodeName(s.id, self)}: ${text}`);
    item.dataset.node = s.id;
    item.dataset.value = value === null ? '' : String(value);
    legend.append(item);
  }
  legend.append(el('span', `max ${max}${c.unit}`, 'max'));
  fig.dataset.nodes = String(shown.length);
  fig.dataset.points = String(Math.max(0, ...lines.map((l) => l.length)));
}

function renderCluster(o: Overview): void {
  const series = nodes5m.list();
  const self = o.info.node;
  // The right edge is the newest clock among this node's and the announcements (clocks differ a
  // little); the charts fill the width from the first minute on, then slide over 5 minutes.
  const end = Math.max(o.time_ms, ...series.map((s) => s.last.updated_ms));
  const first = Math.min(end, ...series.map((s) => s.window.points[0]?.timeMs ?? end));
  const span = Math.min(KEEP * POLL_MS, Math.max(60_000, end - first));
  for (const c of NODE_CHARTS) drawNodeChart(c, series, self, end, span);
  rows(
    $('cluster-body'),
    series.map((s) => {
      const n = s.last;
      const p = lastPoint(s);
      const v = (f: (p: Point) => string): string => (s.hasLoad && p ? f(p) : '–');
      return [
        nodeName(n.id, self),
        n.address,
        String(n.connections),
        s.hasLoad ? String(n.load?.subscriptions ?? 0) : '–',
        v((p) => fmt(p.inPerSec, 1)),
        v((p) => fmt(p.outPerSec, 1)),
        v((p) => fmt(p.p99Ms, 2)),
        `${Math.round(n.uptime_ms / 1000)} s`,
        n.version,
      ];
    }),
    'single node',
  );
}

// ---------------------------------------------------------------- channels

interface ChannelRow {
  channel: string;
  subscribers: number;
}

function channelLink(name: string): HTMLAnchorElement {
  const a = el('a', name);
  a.href = `#channel/${encodeURIComponent(name)}`;
  return a;
}

let searchSeq = 0;

async function searchChannels(ev?: Event): Promise<void> {
  ev?.preventDefault();
  const prefix = $<HTMLInputElement>('channel-prefix').value;
  const seq = ++searchSeq;
  try {
    const r = await api<{ channels: ChannelRow[]; total: number }>(
      `/admin/api/channels?prefix=${encodeURIComponent(prefix)}&limit=200`,
    );
    // An older search answered late: keep the newer one's results.
    if (seq !== searchSeq) return;
    rows($('channels-body'), r.channels.map((c) => [channelLink(c.channel), String(c.subscribers)]), 'no channels');
    say('channels-status', `${r.total} channel${r.total === 1 ? '' : 's'}${r.total > r.channels.length ? `, first ${r.channels.length} shown` : ''}`);
  } catch (e) {
    fail('channels-status', e);
  }
}

interface ChannelDetail {
  channel: string;
  presence: { clients?: { client_id: string; user_id: string; conn_info?: unknown }[]; error?: ApiErrorBody };
  presence_stats: { clients?: number; users?: number; error?: ApiErrorBody };
  history: { publications?: { offset: number; time?: number; data: unknown }[]; error?: ApiErrorBody };
}

/** Re-reads the open channel every 2 s while "Live" is checked (the live tail). */
let channelTimer: ReturnType<typeof setInterval> | undefined;

async function openChannel(name: string): Promise<void> {
  $('channel-title').textContent = name;
  try {
    const d = await api<ChannelDetail>(`/admin/api/channel?channel=${encodeURIComponent(name)}`);
    const st = d.presence_stats;
    say('channel-status', st.error ? `presence: ${st.error.message}` : `${st.clients} clients, ${st.users} users`);
    rows(
      $('presence-body'),
      (d.presence.clients ?? []).map((c) => [c.user_id || '(anonymous)', lookupLink(c.client_id)]),
      d.presence.error?.message ?? 'nobody here',
    );
    rows(
      $('history-body'),
      (d.history.publications ?? []).map((p) => [
        String(p.offset),
        p.time ? new Date(p.time).toLocaleTimeString() : '',
        el('code', JSON.stringify(p.data)),
      ]),
      d.history.error?.message ?? 'no history',
    );
  } catch (e) {
    fail('channel-status', e);
  }
}

function lookupLink(clientId: string): HTMLButtonElement {
  const b = el('button', clientId, 'link');
  b.type = 'button';
  b.addEventListener('click', () => {
    $<HTMLInputElement>('conn-user').value = '';
    $<HTMLInputElement>('conn-client').value = clientId;
    location.hash = '#connections';
    void findConnections();
  });
  return b;
}

// ---------------------------------------------------------------- connections

interface SessionRow {
  user: string;
  client_id: string;
  live: boolean;
  format?: string;
  /** `websocket`, `sse`, `stream`, `poll` or `feed`; null when waiting or not answered in time. */
  transport: string | null;
  age_ms: number | null;
  address: string | null;
  channels: string[];
}

/** A duration as the largest two units: `45 s`, `3 min 12 s`, `2 h 5 min`, `3 d 4 h`. */
function age(ms: number | null): string {
  if (ms === null) return 'unknown';
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h} h ${m % 60} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

function channelList(names: string[]): HTMLElement {
  const span = el('span');
  names.forEach((n, i) => {
    if (i) span.append(', ');
    span.append(channelLink(n));
  });
  if (!names.length) span.textContent = '–';
  return span;
}

async function findConnections(ev?: Event): Promise<void> {
  ev?.preventDefault();
  const user = $<HTMLInputElement>('conn-user').value.trim();
  const client = $<HTMLInputElement>('conn-client').value.trim();
  if (!user && !client) {
    say('conn-status', 'Give a user or a client id.', 'bad');
    return;
  }
  const q = user ? `user=${encodeURIComponent(user)}` : `client_id=${encodeURIComponent(client)}`;
  try {
    const r = await api<{ node: string; sessions: SessionRow[] }>(`/admin/api/connections?${q}`);
    rows(
      $('conn-body'),
      r.sessions.map((s) => [
        s.user,
        s.client_id,
        s.live ? `connected (${(s.format ?? '').replace('herald.v1.', '')})` : 'waiting for resume',
        s.live ? (s.transport ?? 'unknown') : 'waiting',
        age(s.age_ms),
        s.address ?? 'unknown',
        channelList(s.channels),
        actions(s),
      ]),
      'no session on this node',
    );
    say('conn-status', `${r.sessions.length} session${r.sessions.length === 1 ? '' : 's'} on node ${r.node}`);
  } catch (e) {
    fail('conn-status', e);
  }
}

function actions(s: SessionRow): HTMLElement {
  const box = el('div', undefined, 'row');
  const d = el('button', 'Disconnect', 'danger');
  d.type = 'button';
  d.setAttribute('aria-label', `Disconnect ${s.client_id}`);
  d.addEventListener('click', () =>
    confirmAction(
      'Disconnect',
      `Disconnect client ${s.client_id} of user ${s.user}? It is closed with code 4501 and told not to reconnect.`,
      async () => {
        const r = await api<{ disconnected: number }>('/admin/api/disconnect', { client_id: s.client_id });
        return `Disconnected ${r.disconnected} session${r.disconnected === 1 ? '' : 's'}.`;
      },
    ),
  );
  const v = el('button', 'Revoke user', 'danger secondary-danger');
  v.type = 'button';
  v.setAttribute('aria-label', `Revoke every token of ${s.user}`);
  v.addEventListener('click', () =>
    confirmAction(
      'Revoke',
      `Revoke every token of user ${s.user} issued up to now (for 24 hours)? All their sessions are closed with code 4503 and those tokens are refused.`,
      async () => {
        const r = await api<{ closed: number }>('/admin/api/revoke', { user: s.user });
        return `Revoked ${s.user}: closed ${r.closed} session${r.closed === 1 ? '' : 's'}.`;
      },
    ),
  );
  box.append(d, v);
  return box;
}

/** Ask in a modal dialog; run `act` on confirmation and show what it returns. */
function confirmAction(verb: string, text: string, act: () => Promise<string>): void {
  const dialog = $<HTMLDialogElement>('confirm');
  $('confirm-title').textContent = `${verb}?`;
  $('confirm-text').textContent = text;
  $('confirm-yes').textContent = verb;
  dialog.returnValue = '';
  dialog.onclose = async () => {
    if (dialog.returnValue !== 'yes') return;
    try {
      say('conn-status', await act(), 'ok');
    } catch (e) {
      fail('conn-status', e);
    }
  };
  dialog.showModal();
}

// ---------------------------------------------------------------- publish

function checkJson(): unknown {
  const text = $<HTMLTextAreaElement>('pub-data').value;
  try {
    const v: unknown = JSON.parse(text);
    say('pub-json', 'valid JSON', 'ok');
    $<HTMLButtonElement>('pub-send').disabled = false;
    return v;
  } catch (e) {
    say('pub-json', `not JSON: ${e instanceof Error ? e.message : String(e)}`, 'bad');
    $<HTMLButtonElement>('pub-send').disabled = true;
    return undefined;
  }
}

async function publish(ev: Event): Promise<void> {
  ev.preventDefault();
  const channel = $<HTMLInputElement>('pub-channel').value.trim();
  const data = checkJson();
  if (!channel || data === undefined) {
    say('pub-status', channel ? 'Fix the JSON first.' : 'Give a channel.', 'bad');
    return;
  }
  try {
    const r = await api<{ offset: number; epoch: string }>('/admin/api/publish', { channel, data });
    say('pub-status', `Published to ${channel} at offset ${r.offset}.`, 'ok');
  } catch (e) {
    fail('pub-status', e);
  }
}

// ---------------------------------------------------------------- dead letters and events

function when(ms: unknown): string {
  return typeof ms === 'number' ? new Date(ms).toLocaleTimeString() : '';
}

async function loadDeadLetters(): Promise<void> {
  try {
    const r = await api<{ dead_letters: Record<string, unknown>[] }>('/admin/api/dead_letters?limit=200');
    rows(
      $('dl-body'),
      r.dead_letters.map((d) => [when(d.time), String(d.reason ?? ''), el('code', JSON.stringify(d.context ?? d))]),
      'no dead letters',
    );
    say('dl-status', `${r.dead_letters.length} shown`);
  } catch (e) {
    fail('dl-status', e);
  }
}

let eventsSince = 0;

async function loadEvents(reset = false): Promise<void> {
  if (reset) {
    eventsSince = 0;
    $('events-body').replaceChildren();
  }
  try {
    const r = await api<{ events: Record<string, unknown>[]; last_seq: number; oldest_seq: number }>(
      `/admin/api/events?since=${eventsSince}&limit=500`,
    );
    const body = $('events-body');
    for (const ev of r.events) {
      const tr = el('tr');
      const { seq, time, type, id: _id, node: _node, ...rest } = ev;
      for (const c of [String(seq ?? ''), when(time), String(type ?? ''), JSON.stringify(rest)]) tr.append(el('td', c));
      body.prepend(tr);
      if (typeof ev.seq === 'number') eventsSince = Math.max(eventsSince, ev.seq);
    }
    while (body.children.length > 1000) body.lastElementChild?.remove();
    say('events-status', `${body.children.length} shown, newest first (last seq ${r.last_seq})`);
  } catch (e) {
    fail('events-status', e);
  }
}

// ---------------------------------------------------------------- start

$('login-form').addEventListener('submit', (e) => void login(e));
$('logout').addEventListener('click', () => void logout());
$('channels-form').addEventListener('submit', (e) => void searchChannels(e));
$('channel-refresh').addEventListener('click', () => void openChannel($('channel-title').textContent ?? ''));
$('conn-form').addEventListener('submit', (e) => void findConnections(e));
$('pub-form').addEventListener('submit', (e) => void publish(e));
$('pub-data').addEventListener('input', () => void checkJson());
$('dl-refresh').addEventListener('click', () => void loadDeadLetters());
$('events-refresh').addEventListener('click', () => void loadEvents());
window.addEventListener('hashchange', route);

// Logged in already (the cookie is HttpOnly, so ask the server)?
api('/admin/api/overview').then(showApp, () => undefined);
