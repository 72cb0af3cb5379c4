/**
 * The offline queue: events waiting for the collector's acknowledgement, in order.
 *
 * Contract:
 * - FIFO; an event leaves only when acknowledged (`ack`) or when the bound is
 *   exceeded (the oldest is dropped and counted in `dropped`).
 * - Persisted in localStorage one key per event (`<prefix>:q:<tab>:<messageId>`),
 *   so queuing an event costs one small write whatever the queue's length.
 *   Each tab has its own keys, so tabs never overwrite each other, plus a record
 *   `<prefix>:tab:<tab>` with a heartbeat and a closed flag (set on pagehide).
 *   A page load adopts the events of tabs that closed or stopped beating,
 *   merged in time order, except events from before the last opt-in.
 */

import type { KeyValueStore } from './storage';
import type { Message } from './types';

interface TabRecord {
  heartbeat: number;
  closed: boolean;
}

export interface QueueOptions {
  store: KeyValueStore;
  prefix: string;
  tabId: string;
  maxEvents: number;
  now?: () => number;
  onStorageError?: () => void;
}

const encoder = new TextEncoder();

export function byteLength(message: Message): number {
  return encoder.encode(JSON.stringify(message)).length;
}

export class EventQueue {
  /** Events dropped because the queue was full (oldest first). */
  dropped = 0;
  private events: Message[] = [];
  private closed = false;
  private readonly store: KeyValueStore;
  private readonly eventPrefix: string;
  private readonly now: () => number;

  constructor(private readonly options: QueueOptions) {
    this.store = options.store;
    this.eventPrefix = `${options.prefix}:q:`;
    this.now = options.now ?? Date.now;
  }

  get length(): number {
    return this.events.length;
  }

  /** Every queued event, oldest first (a copy). */
  all(): Message[] {
    return this.events.slice();
  }

  /** Queue `message`; `json` is its serialisation when the caller already has it. */
  push(message: Message, json = JSON.stringify(message)): void {
    this.events.push(message);
    if (!this.store.set(this.eventKey(this.options.tabId, message.messageId), json)) {
      this.options.onStorageError?.();
    }
    this.enforceBound();
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
    this.events = this.events.filter((m) => !done.has(m.messageId));
    for (const id of done) this.store.remove(this.eventKey(this.options.tabId, id));
  }

  clear(): void {
    for (const m of this.events) this.store.remove(this.eventKey(this.options.tabId, m.messageId));
    this.events = [];
  }

  /** Delete every tab's stored events (opt-out). */
  clearOtherTabs(): void {
    const tabPrefix = `${this.options.prefix}:tab:`;
    for (const key of this.store.keys()) {
      if (key.startsWith(this.eventPrefix) || (key.startsWith(tabPrefix) && key !== this.tabKey(this.options.tabId))) {
        this.store.remove(key);
      }
    }
  }

  /** Mark this tab closed (pagehide) or live again (pageshow from the back/forward cache). */
  setClosed(closed: boolean): void {
    this.closed = closed;
    this.persistNow();
  }

  /** Write this tab's heartbeat (a live tab does so at least every minute). */
  persistNow(): void {
    const record: TabRecord = { heartbeat: this.now(), closed: this.closed };
    this.store.set(this.tabKey(this.options.tabId), JSON.stringify(record));
  }

  /**
   * Take over the events of tabs that closed or whose heartbeat is older than
   * staleMs, oldest first. Events timed before `notBeforeMs` (the last opt-in) are
   * deleted instead: they were queued before an opt-out whose deletion they escaped,
   * e.g. written by a tab that closed before it heard of the opt-out.
   * Returns how many events were adopted.
   */
  adoptOrphans(staleMs: number, notBeforeMs = -Infinity): number {
    const mine = this.options.tabId;
    const byTab = new Map<string, string[]>();
    for (const key of this.store.keys()) {
      if (!key.startsWith(this.eventPrefix)) continue;
      const tab = key.slice(this.eventPrefix.length, key.indexOf(':', this.eventPrefix.length));
      if (tab !== mine) byTab.set(tab, [...(byTab.get(tab) ?? []), key]);
    }
    const adopted: Message[] = [];
    for (const [tab, keys] of byTab) {
      const record = parseRecord(this.store.get(this.tabKey(tab)));
      if (record !== null && !record.closed && this.now() - record.heartbeat < staleMs) continue;
      for (const key of keys) {
        const message = parseMessage(this.store.get(key));
        if (message !== null && !(Date.parse(message.timestamp) < notBeforeMs)) adopted.push(message);
        this.store.remove(key);
      }
      this.store.remove(this.tabKey(tab));
    }
    if (adopted.length === 0) return 0;
    const seen = new Set(this.events.map((m) => m.messageId));
    const fresh = adopted.filter((m) => !seen.has(m.messageId) && seen.add(m.messageId));
    for (const m of fresh) this.store.set(this.eventKey(mine, m.messageId), JSON.stringify(m));
    this.events = [...fresh, ...this.events].sort(
      (a, b) => (a.timestamp < b.timestamp ? -1 : a.timestamp > b.timestamp ? 1 : 0));
    this.enforceBound();
    return adopted.length;
  }

  private enforceBound(): void {
    const excess = this.events.length - this.options.maxEvents;
    if (excess <= 0) return;
    for (const m of this.events.splice(0, excess)) this.store.remove(this.eventKey(this.options.tabId, m.messageId));
    this.dropped += excess;
  }

  private eventKey(tab: string, messageId: string): string {
    return `${this.eventPrefix}${tab}:${messageId}`;
  }

  private tabKey(tab: string): string {
    return `${this.options.prefix}:tab:${tab}`;
  }
}

function parseRecord(raw: string | null): TabRecord | null {
  if (raw === null) return null;
  try {
    const value = JSON.parse(raw) as TabRecord;
    return typeof value.heartbeat === 'number' ? value : null;
  } catch {
    return null;
  }
}

function parseMessage(raw: string | null): Message | null {
  if (raw === null) return null;
  try {
    const value = JSON.parse(raw) as Message;
    return typeof value.messageId === 'string' && typeof value.timestamp === 'string' ? value : null;
  } catch {
    return null;
  }
}
