/**
 * Delta updates (docs/protocol.md §5 "message on a delta subscription"): on a subscription whose
 * subscribe reply (or `subscribed` push) says `"delta":"fossil"`, every `message` carries its data
 * as JSON text in a string, either whole or (`"delta": true`) as a Fossil delta against the data
 * text of the channel's previous message.
 */
import { applyDelta } from 'fossil-delta';

/** The delta formats this client applies. */
export type DeltaFormat = 'fossil';

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

/** The delta format of a subscribe reply or `subscribed` push (`undefined`: plain messages). */
export function deltaOf(r: Record<string, unknown>): DeltaFormat | undefined {
  return r.delta === 'fossil' ? 'fossil' : undefined;
}

/**
 * Apply a Fossil delta (as the JSON string carries it: its bytes are the string's UTF-8) to
 * `base`, the previous data text exactly as held. Throws when it does not apply: malformed, out
 * of the base's bounds, a bad checksum (another base), or a result that is not UTF-8.
 */
export function applyFossil(base: string, delta: string): string {
  const out = applyDelta(encoder.encode(base), encoder.encode(delta));
  return decoder.decode(out);
}
