/** A small typed event emitter: `Events` maps each event name to its payload type. */
export class Emitter<Events extends { [K in keyof Events]: unknown }> {
  private readonly handlers: { [K in keyof Events]?: Set<(payload: Events[K]) => void> } = {};

  /** Listen to `event`; returns a function that stops listening. */
  on<K extends keyof Events>(event: K, handler: (payload: Events[K]) => void): () => void {
    let set = this.handlers[event];
    if (!set) {
      set = new Set();
      this.handlers[event] = set;
    }
    set.add(handler);
    return () => this.off(event, handler);
  }

  /** Listen to the next `event` only. */
  once<K extends keyof Events>(event: K, handler: (payload: Events[K]) => void): () => void {
    const off = this.on(event, (p) => {
      off();
      handler(p);
    });
    return off;
  }

  /** Stop listening. */
  off<K extends keyof Events>(event: K, handler: (payload: Events[K]) => void): void {
    this.handlers[event]?.delete(handler);
  }

  /** The handlers of `event` now, in the order they were added. */
  protected listeners<K extends keyof Events>(event: K): ((payload: Events[K]) => void)[] {
    return [...(this.handlers[event] ?? [])];
  }

  /** Call the handlers of `event`; a throwing handler does not stop the others. */
  protected emit<K extends keyof Events>(event: K, payload: Events[K]): void {
    const set = this.handlers[event];
    if (!set) return;
    for (const h of [...set]) {
      try {
        h(payload);
      } catch (e) {
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }
}
