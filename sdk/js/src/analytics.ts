/**
 * The Spoor browser client. Every public method returns at once and never throws:
 * events are queued (localStorage) and sent in the background by `Delivery`.
 */

import { campaignFromQuery, pageProperties, watchClicks, watchHistory } from './autocapture';
import { checkedPreferences, ConsentRecord, type ConsentPreferences } from './consent';
import { Delivery } from './delivery';
import { type Engagement, engagement } from './engagement';
import { Identity } from './identity';
import { uuid } from './ids';
import { EventQueue } from './queue';
import { type KeyValueStore, LocalStore, readCookie, writeCookie } from './storage';
import { httpSender } from './transport';
import type { Message, Order, Product, Properties, SpoorError, SpoorOptions } from './types';

export const VERSION = '0.1.0';
const MAX_CALLS_BEFORE_INIT = 100;
/** A queue whose tab has not written for this long is adopted by another tab. */
const ORPHAN_AFTER_MS = 5 * 60_000;
const HEARTBEAT_MS = 60_000;

interface Ready {
  options: SpoorOptions;
  store: KeyValueStore;
  identity: Identity;
  queue: EventQueue;
  delivery: Delivery;
  prefix: string;
  sessionTimeoutMs: number;
  consent: ConsentRecord;
}

export class Spoor {
  private ready: Ready | null = null;
  private early: Array<() => void> = [];
  private optedOut = false;
  private lastTimestamp = 0;
  private engagement: Engagement | null = null;

  init(options: SpoorOptions): void {
    if (this.ready) return warn('spoor.init was called twice; the second call is ignored');
    if (!options || typeof options.writeKey !== 'string' || !/^[\x21-\x7e]+$/.test(options.writeKey)
        || typeof options.host !== 'string') {
      return warn('spoor.init needs {writeKey, host}: a write key (printable ASCII) and the collector\'s URL');
    }
    const prefix = options.storagePrefix ?? 'spoor';
    const store = LocalStore.open();
    const onError = options.onError ?? ((e: SpoorError) => warn(e.message, e.detail ?? ''));
    let storageFull = false; // reported once per page, not per event
    const queue = new EventQueue({
      store, prefix, tabId: uuid(), maxEvents: options.maxQueueEvents ?? 1000,
      onStorageError: () => {
        if (!storageFull) onError({ kind: 'storage', message: 'localStorage is full: events are kept in memory' });
        storageFull = true;
      },
    });
    const delivery = new Delivery(queue, httpSender(options.host, options.writeKey), {
      flushAt: options.flushAt ?? 20,
      flushIntervalMs: options.flushIntervalMs ?? 3000,
      maxBatchEvents: options.maxBatchEvents ?? 100,
      maxBatchBytes: 450 * 1024,
      unloadMaxBytes: 60 * 1024,
      retryBaseMs: options.retryBaseMs ?? 1000,
      retryMaxMs: options.retryMaxMs ?? 30_000,
      onError,
    });
    this.optedOut = store.get(`${prefix}:opt_out`) === '1' || readCookie(`${prefix}_opt_out`) === '1';
    this.ready = { options, store, identity: new Identity(store, prefix, options.cookieDomain), queue, delivery,
                   prefix, sessionTimeoutMs: options.sessionTimeoutMs ?? 30 * 60_000,
                   consent: new ConsentRecord(store, prefix) };
    queue.persistNow();
    if (this.optedOut) {
      // Events stored by a tab whose write landed after the opt-out's deletion (it closed before it heard).
      queue.clearOtherTabs();
    } else if (queue.adoptOrphans(ORPHAN_AFTER_MS, Number(store.get(`${prefix}:opt_in_at`)) || 0) > 0) {
      void delivery.flush();
    }
    if (options.engagement ?? options.autoPage) {
      this.engagement = engagement((visible_ms, url) =>
        this.enqueue({ type: 'track', event: 'Page Engagement', properties: { visible_ms } }, undefined, url));
    }
    this.watchPageLifecycle(this.ready);

    for (const call of this.early.splice(0)) call();
    if (options.autoPage) {
      this.page();
      watchHistory(() => this.page());
    }
    if (options.clickAttribute) watchClicks(options.clickAttribute, (name, props) => this.track(name, props));
  }

  track(event: string, properties?: Properties): void {
    if (typeof event !== 'string' || !event) return warn('spoor.track needs an event name');
    this.enqueue({ type: 'track', event, properties: { ...properties } });
  }

  /** A page view of the current location; `name` and `properties` are optional. */
  page(name?: string | Properties, properties?: Properties): void {
    const props = typeof name === 'object' ? name : properties;
    this.engagement?.start(typeof props?.url === 'string' ? props.url : location.href);
    this.enqueue({ type: 'page', ...(typeof name === 'string' ? { name } : {}),
                   properties: { ...pageProperties(), ...props } });
  }

  /** Attach the following events to `userId` (kept across page loads) and remember traits. */
  identify(userId: string, traits?: Properties): void {
    if (!this.ready) return this.later(() => this.identify(userId, traits));
    if (this.optedOut) return;
    this.ready.identity.setUser(userId ? String(userId) : undefined, traits);
    this.enqueue({ type: 'identify', traits: { ...this.ready.identity.traits() } });
  }

  /** Forget the user (logout): new anonymous id, no user id, no traits, new session. */
  reset(): void {
    if (!this.ready) return this.later(() => this.reset());
    this.ready.identity.reset();
  }

  // Segment E-commerce spec v2 events.
  productViewed(product: Product): void {
    this.track('Product Viewed', product);
  }

  productAdded(product: Product): void {
    this.track('Product Added', product);
  }

  productRemoved(product: Product): void {
    this.track('Product Removed', product);
  }

  checkoutStarted(order: Order): void {
    this.track('Checkout Started', order);
  }

  orderCompleted(order: Order): void {
    this.track('Order Completed', order);
  }

  /** Consent withdrawn: stop collecting, delete the queue and every stored identifier. Kept across visits. */
  optOut(): void {
    if (!this.ready) return this.later(() => this.optOut());
    const { store, prefix, queue, delivery, identity, options } = this.ready;
    this.optedOut = true;
    store.set(`${prefix}:opt_out`, '1');
    writeCookie(`${prefix}_opt_out`, '1', options.cookieDomain);
    delivery.stop();
    queue.clear();
    queue.clearOtherTabs();
    identity.forget();
  }

  /**
   * Consent given again: collection resumes (with a new anonymous id). Events stored before this
   * moment are never adopted by a later page load (see EventQueue.adoptOrphans).
   */
  optIn(): void {
    if (!this.ready) return this.later(() => this.optIn());
    const { store, prefix, delivery, options } = this.ready;
    this.optedOut = false;
    // Only when the stored choice is an opt-out: a tab that loaded while opted out and opts in
    // after another tab did must not disown the events that tab has queued since.
    if (store.get(`${prefix}:opt_out`) === '1' || readCookie(`${prefix}_opt_out`) === '1') {
      store.set(`${prefix}:opt_in_at`, String(Date.now())); // written before the flag is removed, for other tabs
    }
    store.remove(`${prefix}:opt_out`);
    writeCookie(`${prefix}_opt_out`, null, options.cookieDomain);
    delivery.start();
  }

  isOptedOut(): boolean {
    return this.optedOut;
  }

  /**
   * What the visitor consents to, per purpose, as the consent banner asks it: e.g. `{analytics: true,
   * marketing: false, personalisation: true}`. Kept across visits and sent on every event
   * (`context.consent.categoryPreferences`); a change is sent at once as a `Segment Consent Preference
   * Updated` event, so a withdrawal reaches the shop even if the visitor leaves. Call it before `init` or
   * right after: events sent before any statement carry none. Collection itself goes on (without analytics
   * consent an event counts only in anonymous totals); `optOut()` stops it.
   */
  consent(preferences: ConsentPreferences): void {
    const checked = checkedPreferences(preferences);
    if (typeof checked === 'string') return warn(checked);
    if (!this.ready) return this.later(() => this.consent(checked));
    if (this.ready.consent.set(checked)) {
      this.enqueue({ type: 'track', event: 'Segment Consent Preference Updated', properties: {} });
      void this.ready.delivery.flush();
    }
  }

  /** The consent last stated on this browser (a copy), or null. */
  consentPreferences(): ConsentPreferences | null {
    const current = this.ready?.consent.get();
    return current ? { ...current } : null;
  }

  /** The async snippet's `spoor.push([method, ...args])`, which keeps working once the bundle is loaded. */
  push(call: [string, ...unknown[]]): void {
    const [method, ...args] = Array.isArray(call) ? call : [''];
    const fn = (this as unknown as Record<string, unknown>)[method];
    if (typeof fn === 'function' && method !== 'push' && method !== 'constructor') fn.apply(this, args);
    else warn(`spoor.push: unknown method ${String(method)}`);
  }

  /** Send what is queued now; resolves when the queue is empty or a send failed (it will be retried). */
  flush(): Promise<void> {
    return this.ready ? this.ready.delivery.flush() : Promise.resolve();
  }

  /** Queue length, events dropped because the queue was full, and retry state. */
  stats(): { queued: number; dropped: number; retrying: boolean } {
    const r = this.ready;
    return { queued: r ? r.queue.length : 0, dropped: r ? r.queue.dropped : 0,
             retrying: r ? r.delivery.isBackingOff : false };
  }

  /** `url`: the page the event is about, when it is not the current location (an engagement report). */
  private enqueue(fields: Pick<Message, 'type'> & Partial<Message>, at = Date.now(), url?: string): void {
    if (!this.ready) return this.later(() => this.enqueue(fields, at, url));
    if (this.optedOut) return;
    const { identity, queue, delivery, sessionTimeoutMs } = this.ready;
    // Strictly increasing timestamps keep a burst of events in order downstream.
    const now = Math.max(at, this.lastTimestamp + 1);
    this.lastTimestamp = now;
    const sessionId = identity.sessionId(now, sessionTimeoutMs);
    const message: Message = {
      ...fields,
      messageId: uuid(),
      timestamp: new Date(now).toISOString(),
      anonymousId: identity.anonymousId(),
      properties: { ...fields.properties, session_id: sessionId },
      context: {
        library: { name: 'spoor-js', version: VERSION },
        page: url ? { ...pageProperties(), url } : pageProperties(),
        userAgent: navigator.userAgent,
        locale: navigator.language,
        screen: { width: screen.width, height: screen.height },
        sessionId,
      },
    };
    const campaign = campaignFromQuery(location.search);
    if (campaign) message.context.campaign = campaign;
    const preferences = this.ready.consent.get();
    if (preferences) message.context.consent = { categoryPreferences: preferences };
    const userId = identity.userId();
    if (userId) message.userId = userId;
    let json: string;
    try {
      json = JSON.stringify(message); // a cycle or a BigInt would otherwise stall the queue later
    } catch (error) {
      return warn(`spoor: ${fields.type} ${fields.event ?? ''} dropped: its properties are not JSON`, error);
    }
    queue.push(message, json);
    delivery.queued();
  }

  private later(call: () => void): void {
    if (this.early.length < MAX_CALLS_BEFORE_INIT) this.early.push(call);
  }

  private watchPageLifecycle({ queue, delivery, prefix, consent }: Ready): void {
    const hide = () => {
      this.engagement?.report(); // before the flush, so the report leaves with it
      delivery.flushOnUnload();
      queue.persistNow();
    };
    addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'hidden') hide();
      else this.engagement?.shown();
    });
    addEventListener('pagehide', () => {
      hide();
      queue.setClosed(true);
    });
    addEventListener('pageshow', (event) => {
      if (event.persisted) queue.setClosed(false);
    });
    addEventListener('online', () => delivery.online());
    // An opt-out in another tab applies here too.
    addEventListener('storage', (event) => {
      if (event.key === `${prefix}:opt_out` && event.newValue === '1' && !this.optedOut) this.optOut();
      if (event.key === consent.key) consent.reload(); // a banner answered in another tab
    });
    setInterval(() => queue.persistNow(), HEARTBEAT_MS);
  }
}

function warn(...args: unknown[]): void {
  if (typeof console !== 'undefined') console.warn('[spoor]', ...args);
}
