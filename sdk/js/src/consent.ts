/**
 * Consent per purpose, as a consent banner states it: `spoor.consent({analytics: true, marketing: false,
 * personalisation: true})`. Kept in localStorage (every tab, every visit) and sent on every event as
 * Segment's `context.consent.categoryPreferences`; Spoor's server decides with it what an event may be
 * used for (docs/privacy.md#consent). Keys are the banner's category ids: `analytics`, `marketing` and
 * `personalisation` by default, or a consent manager's own ids mapped by SPOOR_CONSENT_CATEGORIES.
 */

import type { KeyValueStore } from './storage';

export type ConsentPreferences = Record<string, boolean>;

/** What the collector accepts (spoor/consent.py): at most this many categories. */
export const MAX_CATEGORIES = 100;
const MAX_CATEGORY_CHARS = 64;

/** `preferences` when it is an object of at most MAX_CATEGORIES booleans with short names, else an error. */
export function checkedPreferences(preferences: unknown): ConsentPreferences | string {
  if (typeof preferences !== 'object' || preferences === null || Array.isArray(preferences)) {
    return 'spoor.consent needs an object of categories, e.g. {analytics: true, marketing: false}';
  }
  const entries = Object.entries(preferences);
  if (entries.length > MAX_CATEGORIES) return `spoor.consent: at most ${MAX_CATEGORIES} categories`;
  for (const [name, value] of entries) {
    if (typeof value !== 'boolean') return `spoor.consent: ${name.slice(0, MAX_CATEGORY_CHARS)} must be true or false`;
    if (!name || name.length > MAX_CATEGORY_CHARS) return `spoor.consent: category names are 1 to ${MAX_CATEGORY_CHARS} characters`;
  }
  return { ...(preferences as ConsentPreferences) };
}

/** The page's statement, read once and kept in memory (it goes on every event); shared across tabs. */
export class ConsentRecord {
  readonly key: string;
  private current: ConsentPreferences | null;

  constructor(private readonly store: KeyValueStore, prefix: string) {
    this.key = `${prefix}:consent`;
    this.current = this.read();
  }

  get(): ConsentPreferences | null {
    return this.current;
  }

  /** Record a new statement; true when it differs from the one held. */
  set(preferences: ConsentPreferences): boolean {
    const json = JSON.stringify(preferences);
    const changed = JSON.stringify(this.current) !== json;
    this.current = preferences;
    this.store.set(this.key, json);
    return changed;
  }

  /** Another tab stated consent: follow it. */
  reload(): void {
    this.current = this.read();
  }

  private read(): ConsentPreferences | null {
    try {
      const checked = checkedPreferences(JSON.parse(this.store.get(this.key) || 'null'));
      return typeof checked === 'string' ? null : checked;
    } catch {
      return null;
    }
  }
}
