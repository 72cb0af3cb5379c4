/** Key-value persistence: localStorage when the browser allows it, else memory; and cookies. */

export interface KeyValueStore {
  get(key: string): string | null;
  /** Returns false when the value could not be stored (quota, storage disabled). */
  set(key: string, value: string): boolean;
  remove(key: string): void;
  keys(): string[];
}

export class MemoryStore implements KeyValueStore {
  private readonly items = new Map<string, string>();
  get(key: string): string | null {
    return this.items.has(key) ? (this.items.get(key) as string) : null;
  }
  set(key: string, value: string): boolean {
    this.items.set(key, value);
    return true;
  }
  remove(key: string): void {
    this.items.delete(key);
  }
  keys(): string[] {
    return [...this.items.keys()];
  }
}

/** localStorage, which can throw (disabled, private mode, quota): every call is guarded. */
export class LocalStore implements KeyValueStore {
  constructor(private readonly storage: Storage) {}
  static open(): KeyValueStore {
    try {
      const storage = window.localStorage;
      const probe = '__spoor_probe__';
      storage.setItem(probe, '1');
      storage.removeItem(probe);
      return new LocalStore(storage);
    } catch {
      return new MemoryStore();
    }
  }
  get(key: string): string | null {
    try {
      return this.storage.getItem(key);
    } catch {
      return null;
    }
  }
  set(key: string, value: string): boolean {
    try {
      this.storage.setItem(key, value);
      return true;
    } catch {
      return false;
    }
  }
  remove(key: string): void {
    try {
      this.storage.removeItem(key);
    } catch {
      /* nothing to clean up */
    }
  }
  keys(): string[] {
    try {
      const out: string[] = [];
      for (let i = 0; i < this.storage.length; i++) {
        const key = this.storage.key(i);
        if (key !== null) out.push(key);
      }
      return out;
    } catch {
      return [];
    }
  }
}

const YEAR_S = 365 * 24 * 3600;

export function readCookie(name: string): string | null {
  try {
    for (const part of document.cookie.split('; ')) {
      const eq = part.indexOf('=');
      if (part.slice(0, eq) === name) return decodeURIComponent(part.slice(eq + 1));
    }
  } catch {
    /* cookies disabled */
  }
  return null;
}

export function writeCookie(name: string, value: string | null, domain?: string): void {
  try {
    const secure = location.protocol === 'https:' ? '; Secure' : '';
    const scope = `; path=/${domain ? `; domain=${domain}` : ''}; SameSite=Lax${secure}`;
    document.cookie = value === null
      ? `${name}=; max-age=0${scope}`
      : `${name}=${encodeURIComponent(value)}; max-age=${YEAR_S}${scope}`;
  } catch {
    /* cookies disabled: localStorage still holds the value */
  }
}
