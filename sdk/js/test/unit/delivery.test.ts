import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

import { type Answer, Delivery, type DeliveryOptions, type SendMode } from '../../src/delivery';
import { EventQueue } from '../../src/queue';
import type { Message, SpoorError } from '../../src/types';
import { CountingStore, message, names } from './helpers';

const OK: Answer = { status: 200, retryAfter: null };
const DOWN: Answer = { status: 0, retryAfter: null };

/** A collector stand-in at the transport boundary: answers from a script, records what it was sent. */
class ScriptedCollector {
  sent: Array<{ mode: SendMode; events: string[] }> = [];
  answers: Answer[] = [];
  inFlight = 0;
  maxInFlight = 0;
  latencyMs = 10;
  send = async (batch: Message[], mode: SendMode): Promise<Answer> => {
    this.inFlight += 1;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    this.sent.push({ mode, events: names(batch) as string[] });
    await new Promise((resolve) => setTimeout(resolve, this.latencyMs));
    this.inFlight -= 1;
    return this.answers.shift() ?? OK;
  };
  delivered(): string[] {
    return this.sent.flatMap((s) => s.events);
  }
}

function setup(options: Partial<DeliveryOptions> = {}) {
  const queue = new EventQueue({ store: new CountingStore(), prefix: 'spoor', tabId: 't', maxEvents: 1000 });
  const collector = new ScriptedCollector();
  const errors: SpoorError[] = [];
  const delivery = new Delivery(queue, collector.send, {
    flushAt: 3, flushIntervalMs: 1000, maxBatchEvents: 10, maxBatchBytes: 1e6, unloadMaxBytes: 60_000,
    retryBaseMs: 1000, retryMaxMs: 8000, random: () => 1, onError: (e) => errors.push(e), ...options,
  });
  const track = (...events: string[]) => events.forEach((n) => {
    queue.push(message(n));
    delivery.queued();
  });
  return { queue, collector, delivery, errors, track };
}

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe('Delivery', () => {
  it('sends at once when flushAt events wait, else after flushIntervalMs', async () => {
    const { collector, track } = setup();
    track('a', 'b', 'c');
    await vi.advanceTimersByTimeAsync(10);
    expect(collector.sent).toEqual([{ mode: 'normal', events: ['a', 'b', 'c'] }]);
    track('d');
    await vi.advanceTimersByTimeAsync(999);
    expect(collector.sent).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(20);
    expect(collector.sent[1].events).toEqual(['d']);
  });

  it('keeps one request in flight; events queued meanwhile follow in order', async () => {
    const { collector, queue, track } = setup({ maxBatchEvents: 4 });
    collector.latencyMs = 100;
    track('a', 'b', 'c');
    await vi.advanceTimersByTimeAsync(50);
    track('d', 'e', 'f', 'g', 'h');
    await vi.advanceTimersByTimeAsync(1000);
    expect(collector.maxInFlight).toBe(1);
    expect(collector.sent.map((s) => s.events)).toEqual([['a', 'b', 'c'], ['d', 'e', 'f', 'g'], ['h']]);
    expect(queue.length).toBe(0);
  });

  it('retries a failed batch with growing delays while new events wait behind it', async () => {
    const { collector, delivery, queue, track } = setup();
    collector.answers = [DOWN, DOWN, { status: 503, retryAfter: null }];
    track('a', 'b', 'c');
    await vi.advanceTimersByTimeAsync(10); // attempt 1 fails -> wait 1000 ms
    expect(delivery.isBackingOff).toBe(true);
    track('d', 'e', 'f'); // must not jump the queue or cut the delay short
    await vi.advanceTimersByTimeAsync(999);
    expect(collector.sent).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(20); // attempt 2 fails -> wait 2000 ms
    expect(collector.sent).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(1990);
    expect(collector.sent).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(20); // attempt 3: 503 -> wait 4000 ms
    await vi.advanceTimersByTimeAsync(4020); // attempt 4 succeeds, then the rest follows
    // each retry resends the head of the queue, which by then holds the newer events too
    const all = ['a', 'b', 'c', 'd', 'e', 'f'];
    expect(collector.sent.map((s) => s.events)).toEqual([['a', 'b', 'c'], all, all, all]);
    expect(queue.length).toBe(0);
    expect(delivery.attempt).toBe(0);
  });

  it("waits the server's Retry-After on 429", async () => {
    const { collector, track } = setup();
    collector.answers = [{ status: 429, retryAfter: '7' }];
    track('a', 'b', 'c');
    await vi.advanceTimersByTimeAsync(6990);
    expect(collector.sent).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(30);
    expect(collector.sent).toHaveLength(2);
  });

  it('caps the backoff at retryMaxMs', async () => {
    const { collector, track } = setup();
    collector.answers = Array(8).fill(DOWN);
    track('a', 'b', 'c');
    // 1 + 2 + 4 + 8 + 8 + 8 + 8 + 8 s of delays (plus send latency) before attempt 9
    await vi.advanceTimersByTimeAsync(47_000 + 8 * 10 - 50);
    expect(collector.sent).toHaveLength(8);
    await vi.advanceTimersByTimeAsync(100);
    expect(collector.sent).toHaveLength(9);
  });

  it('a thrown send counts as a network error', async () => {
    const { delivery, queue, track } = setup();
    (delivery as unknown as { send: () => Promise<Answer> }).send = () => Promise.reject(new TypeError('offline'));
    track('a', 'b', 'c');
    await vi.advanceTimersByTimeAsync(10);
    expect(delivery.isBackingOff).toBe(true);
    expect(queue.length).toBe(3);
  });

  it('treats 400 as delivered (the collector dead-letters the invalid events) and reports it', async () => {
    const { collector, errors, queue, track } = setup();
    collector.answers = [{ status: 400, retryAfter: null, body: { rejected: [{ index: 1 }] } }];
    track('a', 'b', 'c');
    await vi.advanceTimersByTimeAsync(20);
    expect(queue.length).toBe(0);
    expect(errors.map((e) => e.kind)).toEqual(['rejected']);
  });

  it('halves a batch the collector finds too large, and drops a single event that is', async () => {
    const { collector, errors, queue, track } = setup({ flushAt: 4 });
    collector.answers = [{ status: 413, retryAfter: null }, OK, { status: 413, retryAfter: null },
                         { status: 413, retryAfter: null }, OK];
    track('a', 'b', 'c', 'd');
    await vi.advanceTimersByTimeAsync(100);
    expect(collector.sent.map((s) => s.events)).toEqual([['a', 'b', 'c', 'd'], ['a', 'b'], ['c', 'd'], ['c'], ['d']]);
    expect(queue.length).toBe(0);
    expect(errors.map((e) => e.kind)).toEqual(['dropped']);
  });

  it('drops a batch on an answer that can never succeed, and reports it', async () => {
    const { collector, errors, queue, track } = setup();
    collector.answers = [{ status: 404, retryAfter: null }];
    track('a', 'b', 'c');
    await vi.advanceTimersByTimeAsync(20);
    expect(queue.length).toBe(0);
    expect(errors[0]).toMatchObject({ kind: 'dropped', status: 404 });
  });

  it('reports 401 and keeps retrying: a key being set up is a configuration fix away', async () => {
    const { collector, errors, queue, track } = setup();
    collector.answers = [{ status: 401, retryAfter: null }];
    track('a', 'b', 'c');
    await vi.advanceTimersByTimeAsync(1100);
    expect(errors[0].kind).toBe('unauthorized');
    expect(collector.sent).toHaveLength(2);
    expect(queue.length).toBe(0);
  });

  it('coming back online cuts a retry delay short', async () => {
    const { collector, delivery, track } = setup({ retryBaseMs: 60_000, retryMaxMs: 60_000 });
    collector.answers = [DOWN];
    track('a', 'b', 'c');
    await vi.advanceTimersByTimeAsync(10);
    delivery.online();
    await vi.advanceTimersByTimeAsync(20);
    expect(collector.sent).toHaveLength(2);
  });

  it('on unload, sends the head in an unload request and acks it only when answered', async () => {
    const { collector, delivery, queue, track } = setup({ flushAt: 100 });
    track('a', 'b');
    collector.answers = [DOWN];
    delivery.flushOnUnload();
    await vi.advanceTimersByTimeAsync(20);
    expect(collector.sent).toEqual([{ mode: 'unload', events: ['a', 'b'] }]);
    expect(queue.length).toBe(2); // unanswered: kept for the next visit
    delivery.flushOnUnload();
    await vi.advanceTimersByTimeAsync(20);
    expect(queue.length).toBe(0);
  });

  it('hands the same batch to one unload request only, until it is answered', async () => {
    const { collector, delivery, track } = setup({ flushAt: 100 });
    track('a', 'b');
    delivery.flushOnUnload(); // visibilitychange: hidden
    delivery.flushOnUnload(); // pagehide
    track('c');
    delivery.flushOnUnload(); // a different head batch goes out
    expect(collector.sent.map((s) => s.events)).toEqual([['a', 'b'], ['a', 'b', 'c']]);
    await vi.advanceTimersByTimeAsync(20);
  });

  it('sends a beacon once for the two close events, since its answer never comes', async () => {
    const { collector, delivery, queue, track } = setup({ flushAt: 100 });
    track('a', 'b');
    collector.answers = [{ status: 0, retryAfter: null, beacon: true }];
    delivery.flushOnUnload(); // visibilitychange: hidden
    await vi.advanceTimersByTimeAsync(20);
    delivery.flushOnUnload(); // pagehide, after the beacon "answered"
    await vi.advanceTimersByTimeAsync(20);
    expect(collector.sent).toEqual([{ mode: 'unload', events: ['a', 'b'] }]);
    expect(queue.length).toBe(2); // kept for the next visit, which sends it again
  });

  it('stop sends nothing more; start resumes', async () => {
    const { collector, delivery, queue, track } = setup();
    delivery.stop();
    track('a', 'b', 'c');
    await delivery.flush();
    await vi.advanceTimersByTimeAsync(5000);
    expect(collector.sent).toHaveLength(0);
    delivery.start();
    queue.clear();
    track('d', 'e', 'f');
    await vi.advanceTimersByTimeAsync(20);
    expect(collector.delivered()).toEqual(['d', 'e', 'f']);
  });
});
