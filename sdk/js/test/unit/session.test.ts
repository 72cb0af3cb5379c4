import { describe, expect, it } from 'vitest';

import { parseSession, touchSession } from '../../src/session';

const THIRTY_MIN = 30 * 60_000;
let n = 0;
const newId = () => `s${++n}`;

describe('touchSession', () => {
  it('starts a session for the first event', () => {
    expect(touchSession(null, 1000, THIRTY_MIN, () => 'first')).toEqual({ id: 'first', lastActivity: 1000 });
  });

  it('keeps the session while events come within the timeout, each extending it', () => {
    let session = touchSession(null, 0, THIRTY_MIN, newId);
    const id = session.id;
    for (let t = 29 * 60_000; t < 5 * 3600_000; t += 29 * 60_000) {
      session = touchSession(session, t, THIRTY_MIN, newId);
      expect(session.id).toBe(id);
    }
  });

  it('starts a new session after 30 minutes without activity', () => {
    const first = touchSession(null, 0, THIRTY_MIN, newId);
    expect(touchSession(first, THIRTY_MIN - 1, THIRTY_MIN, newId).id).toBe(first.id);
    expect(touchSession(first, THIRTY_MIN, THIRTY_MIN, newId).id).not.toBe(first.id);
  });

  it('a clock stepping back neither ends the session nor moves its last activity back', () => {
    const first = touchSession(null, 10_000, THIRTY_MIN, newId);
    expect(touchSession(first, 5_000, THIRTY_MIN, newId)).toEqual({ id: first.id, lastActivity: 10_000 });
  });
});

describe('parseSession', () => {
  it('reads what was stored and ignores anything else', () => {
    expect(parseSession(JSON.stringify({ id: 'a', lastActivity: 5 }))).toEqual({ id: 'a', lastActivity: 5 });
    expect(parseSession(null)).toBeNull();
    expect(parseSession('{broken')).toBeNull();
    expect(parseSession(JSON.stringify({ id: 7 }))).toBeNull();
  });
});
