/** What to do with a collector answer, and how long to wait before trying again. Pure. */

/** `ok`: acknowledged. `retry`: keep and try later. `split`: too large, halve it. `drop`: will never succeed. */
export type Outcome = 'ok' | 'retry' | 'split' | 'drop';

/**
 * Status 0 stands for a network error (no answer, CORS refusal, offline).
 * 400 is an acknowledgement: the collector accepted the valid events of the batch
 * and dead-lettered the invalid ones with their payload, so resending changes nothing.
 * 401/403 are retried: a key or origin being set up is a configuration fix away,
 * and the queue bound limits what waits meanwhile.
 */
export function outcomeFor(status: number): Outcome {
  if (status >= 200 && status < 300) return 'ok';
  if (status === 400) return 'ok';
  if (status === 413) return 'split';
  if (status === 0 || status === 401 || status === 403 || status === 408 || status === 429 || status >= 500) {
    return 'retry';
  }
  return 'drop';
}

/**
 * Exponential backoff with "equal jitter": attempt n (1-based) waits between half
 * and all of min(maxMs, baseMs * 2^(n-1)), so clients that failed together spread out.
 */
export function backoffMs(attempt: number, baseMs: number, maxMs: number, random: () => number): number {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

/** Retry-After in ms (delta-seconds or an HTTP date), or null when absent or unreadable. */
export function retryAfterMs(header: string | null | undefined, now: number): number | null {
  if (!header) return null;
  const trimmed = header.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  const date = /[a-z]/i.test(trimmed) ? Date.parse(trimmed) : Number.NaN; // an HTTP date names its day
  return Number.isNaN(date) ? null : Math.max(0, date - now);
}

/** The delay before the next attempt: the server's Retry-After when given (capped), else the backoff. */
export function nextDelayMs(attempt: number, retryAfter: number | null, baseMs: number, maxMs: number,
                            random: () => number, maxRetryAfterMs = 10 * 60_000): number {
  if (retryAfter !== null) return Math.min(retryAfter, maxRetryAfterMs);
  return backoffMs(attempt, baseMs, maxMs, random);
}
