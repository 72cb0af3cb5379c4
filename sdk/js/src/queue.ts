/**
 * The offline queue: events waiting for the collector's acknowledgement, in order.
 *
 * Contract:
 * - FIFO; an event leaves only when acknowledged (`ack`) or when the bound is
 *   exceeded (the oldest is dropped and counted in `dropped`).
 * - Persisted in localStorage under one key per tab, so tabs never overwrite each
 *   other. A tab marks its queue closed on pagehide; a later page load adopts
 *   queues that are closed or whose heartbeat is stale, merged in time order.
 * - Writes are coalesced (one per burst of changes); `persistNow` forces one.
 */

import type { KeyValueStore } from './storage';
import type { Message } from './types';

interface StoredQueue {
  heartbeat: number;
  closed: boolean;
  events: Message[];
}

export interface QueueOptions {
  store: KeyValueStore;
  prefix: string;
  tabId: string;
  maxEvents: number;
  now?: () => number;
  /** Runs a persistence task later; default: a microtask (before any unload handler can run). */
  schedule?: (task: () => void) => void;
  onStorageError?: () => void;
}

const encoder = new TextEncoder();

export function byteLength(message: Message): number {
  return encoder.encode(JSON.stringify(message)).length;
}

export class EventQueue {
  readonly key: string;
  /** Events dropped because the queue was full (oldest first). */
  dropped = 0;
  private events: Message[] = [];
  private closed = false;
  private persistPending = false;
  private readonly keyPrefix: string;
  private readonly now: () => number;
  private readonly schedule: (task: () => void) => void;

  constructor(private readonly options: QueueOptions) {
    this.keyPrefix = `${options.prefix}:queue:`;
    this.key = this.keyPrefix + options.tabId;
    this.now = options.now ?? Date.now;
    this.schedule = options.schedule ?? ((task) => queueMicrotask(task));
  }

  get length(): number {
    return this.events.length;
  }

  /** Every queued event, oldest first (a copy). */
  all(): Message[] {
    return this.events.slice();
  }

  push(message: Message): void {
    this.events.push(message);
    this.enforceBound();
    this.changed();
  }

  /** The oldest events that fit in one request of at most maxEvents and maxBytes (at least one). */
  head(maxEvents: number, maxBytes: number): Message[] {
    const batch: Message[] = [];
    let bytes = 0;
    for (const message of this.events) {
      if (batch.length >= maxEvents) break;
      bytes += byteLength(message) + 1;
      if (batch.length > 0 && bytes > maxBytes) break;
      batch.push(message);
    }
    return batch;
  }

  /** Remove acknowledged events (unknown ids are ignored: acks are idempotent). */
  ack(messageIds: Iterable<string>): void {
    const done = new Set(messageIds);
    const before = this.events.length;
    this.events = this.events.filter((m) => !done.has(m.messageId));
    if (this.events.length !== before) this.changed();
  }

  clear(): void {
    this.events = [];
    this.persistPending = false;
    this.options.store.remove(this.key);
  }

  /** Mark this tab's queue closed (pagehide) or live again (pageshow from the back/forward cache). */
  setClosed(closed: boolean): void {
    this.closed = closed;
    this.persistNow();
  }

  /**
   * Take over the queues of tabs that closed, or stopped beating for staleMs,
   * and of this tab's previous life. Returns how many events were adopted.
   */
  adoptOrphans(staleMs: number): number {
    const { store } = this.options;
    const adopted: Message[] = [];
    for (const key of store.keys()) {
      if (!key.startsWith(this.keyPrefix) || key === this.key) continue;
      const other = parseStored(store.get(key));
      if (other !== null && !other.closed && this.now() - other.heartbeat < staleMs) continue;
      if (other !== null) adopted.push(...other.events);
      store.remove(key);
    }
    if (adopted.length === 0) return 0;
    const seen = new Set<string>();
    this.events = [...adopted, ...this.events]
      .filter((m) => !seen.has(m.messageId) && seen.add(m.messageId))
      .sort((a, b) => (a.timestamp < b.timestamp ? -1 : a.timestamp > b.timestamp ? 1 : 0));
    this.enforceBound();
    this.persistNow();
    return adopted.length;
  }

  /** Write now (pagehide, heartbeat). */
  persistNow(): void {
    this.persistPending = false;
    const stored: StoredQueue = { heartbeat: this.now(), closed: this.closed, events: this.events };
    if (this.events.length === 0) {
      this.options.store.remove(this.key);
    } else if (!this.options.store.set(this.key, JSON.stringify(stored))) {
      this.options.onStorageError?.();
    }
  }

  private changed(): void {
    if (this.persistPending) return;
    this.persistPending = true;
    this.schedule(() => {
      if (this.persistPending) this.persistNow();
    });
  }

  private enforceBound(): void {
    const excess = this.events.length - this.options.maxEvents;
    if (excess > 0) {
      this.events.splice(0, excess);
      this.dropped += excess;
    }
  }
}

function parseStored(raw: string | null): StoredQueue | null {
  if (raw === null) return null;
  try {
    const value = JSON.parse(raw) as StoredQueue;
    return Array.isArray(value.events) && typeof value.heartbeat === 'number' ? value : null;
  } catch {
    return null;
  }
}
