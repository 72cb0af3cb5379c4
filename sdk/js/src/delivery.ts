/**
 * Delivery: sends the queue to the collector, one request at a time, oldest first,
 * so a user's events are accepted in the order they happened.
 *
 * - A flush starts when `flushAt` events are queued or the first queued event is
 *   `flushIntervalMs` old, and then sends until the queue is empty.
 * - Network errors, 401/403, 408, 429 and 5xx keep the batch at the head of the
 *   queue and retry after the server's Retry-After, else exponential backoff with
 *   jitter. New events wait behind it.
 * - On unload, the head of the queue goes out in a request that outlives the page;
 *   it stays queued until acknowledged, so a page that never hears back resends it
 *   on the next visit (the collector counts an event id once).
 */

import type { EventQueue } from './queue';
import { nextDelayMs, outcomeFor, retryAfterMs } from './retry';
import type { Message, SpoorError } from './types';

export interface Answer {
  /** HTTP status, or 0 when there was no readable answer. */
  status: number;
  retryAfter: string | null;
  body?: unknown;
  /** Sent by navigator.sendBeacon: it went out, but no answer will ever come. */
  beacon?: boolean;
}

export type SendMode = 'normal' | 'unload';
export type Sender = (batch: Message[], mode: SendMode) => Promise<Answer>;

export interface DeliveryOptions {
  flushAt: number;
  flushIntervalMs: number;
  maxBatchEvents: number;
  maxBatchBytes: number;
  /** Browsers allow 64 KiB in flight for requests that outlive the page. */
  unloadMaxBytes: number;
  retryBaseMs: number;
  retryMaxMs: number;
  random?: () => number;
  now?: () => number;
  setTimer?: (task: () => void, ms: number) => unknown;
  clearTimer?: (handle: unknown) => void;
  onError?: (error: SpoorError) => void;
}

export class Delivery {
  /** Consecutive failed attempts of the head batch. */
  attempt = 0;
  private sending: Promise<void> | null = null;
  private timer: unknown = null;
  private backingOff = false;
  private stopped = false;
  private batchLimit: number;
  private unloadInFlight: string | null = null;
  private readonly setTimer: (task: () => void, ms: number) => unknown;
  private readonly clearTimer: (handle: unknown) => void;

  constructor(private readonly queue: EventQueue, private readonly send: Sender,
              private readonly options: DeliveryOptions) {
    this.batchLimit = options.maxBatchEvents;
    this.setTimer = options.setTimer ?? ((task, ms) => setTimeout(task, ms));
    this.clearTimer = options.clearTimer ?? ((handle) => clearTimeout(handle as ReturnType<typeof setTimeout>));
  }

  /** True while waiting out a retry delay. */
  get isBackingOff(): boolean {
    return this.backingOff;
  }

  /** An event was queued: send now if enough are waiting, else within flushIntervalMs. */
  queued(): void {
    if (this.stopped || this.sending || this.backingOff) return;
    if (this.queue.length >= this.options.flushAt) {
      void this.flush();
    } else if (this.timer === null) {
      this.schedule(this.options.flushIntervalMs);
    }
  }

  /** Send everything queued now (also cuts a retry delay short). Resolves when the queue is empty or a send failed. */
  flush(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    if (this.sending) return this.sending;
    this.cancelTimer();
    this.backingOff = false;
    this.sending = this.drain().finally(() => {
      this.sending = null;
    });
    return this.sending;
  }

  /** The browser is back online: a retry delay caused by the network is cut short. */
  online(): void {
    if (this.backingOff) void this.flush();
  }

  /** The page is being hidden or closed: hand the oldest events to a request that outlives it. */
  flushOnUnload(): void {
    if (this.stopped || this.queue.length === 0) return;
    const batch = this.queue.head(this.options.maxBatchEvents, this.options.unloadMaxBytes);
    // visibilitychange and pagehide both fire on close: the same batch goes out once.
    const signature = `${batch[0].messageId}/${batch.length}`;
    if (signature === this.unloadInFlight) return;
    this.unloadInFlight = signature;
    this.send(batch, 'unload').then((answer) => {
      if (outcomeFor(answer.status) === 'ok') this.queue.ack(batch.map((m) => m.messageId));
      // A beacon stays "in flight" for the page's life: the other close event must not send it again.
      if (!answer.beacon && this.unloadInFlight === signature) this.unloadInFlight = null;
    }, () => {
      if (this.unloadInFlight === signature) this.unloadInFlight = null;
    });
  }

  /** Stop sending (opt-out). `start` resumes. */
  stop(): void {
    this.stopped = true;
    this.backingOff = false;
    this.cancelTimer();
  }

  start(): void {
    this.stopped = false;
  }

  private async drain(): Promise<void> {
    while (!this.stopped && this.queue.length > 0) {
      const batch = this.queue.head(this.batchLimit, this.options.maxBatchBytes);
      let answer: Answer;
      try {
        answer = await this.send(batch, 'normal');
      } catch {
        answer = { status: 0, retryAfter: null };
      }
      if (this.stopped) return;
      const ids = batch.map((m) => m.messageId);
      const outcome = outcomeFor(answer.status);
      if (outcome === 'retry') {
        this.retryLater(answer);
        return;
      }
      this.attempt = 0;
      if (outcome === 'split' && batch.length > 1) {
        this.batchLimit = Math.ceil(batch.length / 2);
        continue;
      }
      if (answer.status === 400) {
        this.report({ kind: 'rejected', status: 400, detail: answer.body,
                      message: 'the collector rejected some events (dead-lettered with their payload)' });
      } else if (outcome !== 'ok') {
        this.report({ kind: 'dropped', status: answer.status, detail: ids,
                      message: `the collector answered ${answer.status}: ${batch.length} events dropped` });
      }
      this.batchLimit = this.options.maxBatchEvents;
      this.queue.ack(ids);
    }
  }

  private retryLater(answer: Answer): void {
    this.attempt += 1;
    if (answer.status === 401 || answer.status === 403) {
      this.report({ kind: 'unauthorized', status: answer.status, detail: answer.body,
                    message: 'the collector refused the write key or this origin; retrying' });
    }
    const now = (this.options.now ?? Date.now)();
    const delay = nextDelayMs(this.attempt, retryAfterMs(answer.retryAfter, now), this.options.retryBaseMs,
                              this.options.retryMaxMs, this.options.random ?? Math.random);
    this.backingOff = true;
    this.schedule(delay);
  }

  private schedule(ms: number): void {
    this.cancelTimer();
    this.timer = this.setTimer(() => {
      this.timer = null;
      void this.flush();
    }, ms);
  }

  private cancelTimer(): void {
    if (this.timer !== null) this.clearTimer(this.timer);
    this.timer = null;
  }

  private report(error: SpoorError): void {
    this.options.onError?.(error);
  }
}
