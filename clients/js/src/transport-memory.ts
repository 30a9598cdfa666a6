// The transport that worked last, remembered for the page session (`sessionStorage`).
import type { Transport } from './options.js';

const TRANSPORT_KEY = 'herald.transport';

function storage(): { getItem(k: string): string | null; setItem(k: string, v: string): void } | undefined {
  try {
    return (globalThis as { sessionStorage?: Storage }).sessionStorage;
  } catch {
    return undefined; // storage blocked
  }
}

export function rememberedTransport(): Transport | undefined {
  const t = storage()?.getItem(TRANSPORT_KEY);
  return t === 'websocket' || t === 'http-stream' || t === 'http-poll' ? t : undefined;
}

export function rememberTransport(t: Transport): void {
  try {
    storage()?.setItem(TRANSPORT_KEY, t);
  } catch {
    // storage full or blocked: nothing to remember
  }
}
