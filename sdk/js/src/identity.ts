/** Who the events are about: anonymous id (cookie + localStorage), user id, traits, session. */

import { uuid } from './ids';
import { parseSession, touchSession } from './session';
import { type KeyValueStore, readCookie, writeCookie } from './storage';
import type { Properties } from './types';

export class Identity {
  private readonly aidKey: string;
  private readonly cookieName: string;

  constructor(private readonly store: KeyValueStore, private readonly prefix: string,
              private readonly cookieDomain?: string) {
    this.aidKey = `${prefix}:aid`;
    this.cookieName = `${prefix}_aid`;
  }

  /** Kept in both places so either surviving (cookie cleared, storage cleared) keeps the id. */
  anonymousId(): string {
    let id = readCookie(this.cookieName) || this.store.get(this.aidKey);
    if (!id) id = uuid();
    this.saveAnonymousId(id);
    return id;
  }

  private saveAnonymousId(id: string): void {
    if (readCookie(this.cookieName) !== id) writeCookie(this.cookieName, id, this.cookieDomain);
    if (this.store.get(this.aidKey) !== id) this.store.set(this.aidKey, id);
  }

  userId(): string | undefined {
    return this.store.get(`${this.prefix}:uid`) || undefined;
  }

  setUser(userId: string | undefined, traits: Properties | undefined): void {
    if (userId) this.store.set(`${this.prefix}:uid`, userId);
    if (traits) this.store.set(`${this.prefix}:traits`, JSON.stringify({ ...this.traits(), ...traits }));
  }

  traits(): Properties {
    try {
      return JSON.parse(this.store.get(`${this.prefix}:traits`) || '{}') as Properties;
    } catch {
      return {};
    }
  }

  /** The session of an event happening now, extending it. */
  sessionId(now: number, timeoutMs: number): string {
    const key = `${this.prefix}:session`;
    const session = touchSession(parseSession(this.store.get(key)), now, timeoutMs, uuid);
    this.store.set(key, JSON.stringify(session));
    return session.id;
  }

  /** Forget the user (logout): new anonymous id and session. */
  reset(): void {
    this.forget();
    this.saveAnonymousId(uuid());
  }

  /** Remove every identifier this SDK stored (opt-out). */
  forget(): void {
    for (const name of ['aid', 'uid', 'traits', 'session']) this.store.remove(`${this.prefix}:${name}`);
    writeCookie(this.cookieName, null, this.cookieDomain);
  }
}
