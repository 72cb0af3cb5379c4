import { describe, expect, it } from 'vitest';

import { backoffMs, nextDelayMs, outcomeFor, retryAfterMs } from '../../src/retry';

describe('outcomeFor', () => {
  it.each([
    [200, 'ok'], [204, 'ok'], [400, 'ok'],
    [0, 'retry'], [401, 'retry'], [403, 'retry'], [408, 'retry'], [429, 'retry'], [500, 'retry'], [503, 'retry'],
    [413, 'split'],
    [404, 'drop'], [405, 'drop'], [415, 'drop'],
  ])('status %i -> %s', (status, outcome) => {
    expect(outcomeFor(status)).toBe(outcome);
  });
});

describe('backoffMs', () => {
  it('doubles each attempt, between half and all of the ceiling', () => {
    expect([1, 2, 3, 4].map((n) => backoffMs(n, 1000, 60_000, () => 0))).toEqual([500, 1000, 2000, 4000]);
    expect([1, 2, 3, 4].map((n) => backoffMs(n, 1000, 60_000, () => 1))).toEqual([1000, 2000, 4000, 8000]);
  });

  it('never exceeds the maximum', () => {
    expect(backoffMs(40, 1000, 30_000, () => 1)).toBe(30_000);
    expect(backoffMs(40, 1000, 30_000, () => 0)).toBe(15_000);
  });

  it('spreads clients that failed together', () => {
    let x = 0.1;
    const delays = new Set(Array.from({ length: 20 }, () => backoffMs(3, 1000, 30_000, () => (x = (x * 7.3) % 1))));
    expect(delays.size).toBeGreaterThan(10);
  });
});

describe('retryAfterMs', () => {
  const now = Date.parse('2026-11-23T20:00:00Z');
  it('reads delta-seconds and HTTP dates', () => {
    expect(retryAfterMs('7', now)).toBe(7000);
    expect(retryAfterMs(' 0 ', now)).toBe(0);
    expect(retryAfterMs('Mon, 23 Nov 2026 20:00:30 GMT', now)).toBe(30_000);
    expect(retryAfterMs('Mon, 23 Nov 2026 19:00:00 GMT', now)).toBe(0);
  });

  it('ignores what it cannot read', () => {
    expect(retryAfterMs(null, now)).toBeNull();
    expect(retryAfterMs('', now)).toBeNull();
    expect(retryAfterMs('soon', now)).toBeNull();
    expect(retryAfterMs('-5', now)).toBeNull();
  });
});

describe('nextDelayMs', () => {
  it("follows the server's Retry-After over the backoff, within a cap", () => {
    expect(nextDelayMs(5, 2000, 1000, 30_000, () => 1)).toBe(2000);
    expect(nextDelayMs(1, 3_600_000, 1000, 30_000, () => 1)).toBe(600_000);
    expect(nextDelayMs(3, null, 1000, 30_000, () => 1)).toBe(4000);
  });
});
