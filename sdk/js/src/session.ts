/** Session ids with an inactivity timeout. Pure: the caller persists the state. */

export interface SessionState {
  id: string;
  lastActivity: number;
}

/**
 * The session an event at `now` belongs to: the previous one if it saw activity
 * within `timeoutMs`, else a new one. Shared by every tab (the state lives in localStorage).
 */
export function touchSession(prev: SessionState | null, now: number, timeoutMs: number,
                             newId: () => string): SessionState {
  if (prev === null || now - prev.lastActivity >= timeoutMs) return { id: newId(), lastActivity: now };
  return { id: prev.id, lastActivity: Math.max(prev.lastActivity, now) };
}

export function parseSession(raw: string | null): SessionState | null {
  if (raw === null) return null;
  try {
    const value = JSON.parse(raw) as SessionState;
    return typeof value.id === 'string' && typeof value.lastActivity === 'number' ? value : null;
  } catch {
    return null;
  }
}
