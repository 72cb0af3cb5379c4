import { describe, expect, it } from 'vitest';

import { byteLength, EventQueue, type QueueOptions } from '../../src/queue';
import { CountingStore, message, names } from './helpers';

function queue(overrides: Partial<QueueOptions> = {}) {
  const store = (overrides.store as CountingStore) ?? new CountingStore();
  const q = new EventQueue({ store, prefix: 'spoor', tabId: 'tab-a', maxEvents: 5, schedule: (t) => t(),
                             ...overrides });
  return { q, store };
}

describe('EventQueue', () => {
  it('hands out the oldest events first, bounded by count and bytes', () => {
    const { q } = queue();
    const events = ['a', 'b', 'c', 'd'].map((n) => message(n));
    events.forEach((m) => q.push(m));
    expect(names(q.head(2, 1e6))).toEqual(['a', 'b']);
    const oneAndAHalf = Math.floor(byteLength(events[0]) * 1.5);
    expect(names(q.head(10, oneAndAHalf))).toEqual(['a']);
    expect(names(q.head(10, 1))).toEqual(['a']); // never empty while events wait
  });

  it('drops the oldest events beyond its bound and counts them', () => {
    const { q } = queue({ maxEvents: 3 });
    ['a', 'b', 'c', 'd', 'e'].forEach((n) => q.push(message(n)));
    expect(names(q.all())).toEqual(['c', 'd', 'e']);
    expect(q.dropped).toBe(2);
  });

  it('removes only acknowledged events, and acks are idempotent', () => {
    const { q } = queue();
    const [a, b, c] = ['a', 'b', 'c'].map((n) => message(n));
    [a, b, c].forEach((m) => q.push(m));
    q.ack([b.messageId, 'unknown']);
    q.ack([b.messageId]);
    expect(names(q.all())).toEqual(['a', 'c']);
  });

  it('persists under its own tab key and removes the key when empty', () => {
    const { q, store } = queue();
    const a = message('a');
    q.push(a);
    expect(JSON.parse(store.get('spoor:queue:tab-a') as string).events[0].messageId).toBe(a.messageId);
    q.ack([a.messageId]);
    expect(store.get('spoor:queue:tab-a')).toBeNull();
  });

  it('coalesces a burst of changes into one write', () => {
    const tasks: Array<() => void> = [];
    const { q, store } = queue({ schedule: (t) => tasks.push(t), maxEvents: 100 });
    for (let i = 0; i < 50; i++) q.push(message(`e${i}`));
    expect(store.writes).toBe(0);
    tasks.forEach((t) => t());
    expect(store.writes).toBe(1);
    expect(JSON.parse(store.get(q.key) as string).events).toHaveLength(50);
  });

  it('adopts the queue of a closed tab and of a silent one, never of a live one', () => {
    const store = new CountingStore();
    let now = 1_000_000;
    const tab = (id: string) => new EventQueue({ store, prefix: 'spoor', tabId: id, maxEvents: 10,
                                                 schedule: (t) => t(), now: () => now });
    const closed = tab('closed');
    closed.push(message('closed-1', 10));
    closed.setClosed(true);
    const silent = tab('silent');
    silent.push(message('silent-1', 20));
    now += 6 * 60_000; // silent has not written for 6 minutes
    const live = tab('live');
    live.push(message('live-1', 30));

    const fresh = tab('fresh');
    fresh.push(message('fresh-1', 40));
    expect(fresh.adoptOrphans(5 * 60_000)).toBe(2);
    expect(names(fresh.all())).toEqual(['closed-1', 'silent-1', 'fresh-1']);
    expect(store.get('spoor:queue:closed')).toBeNull();
    expect(store.get('spoor:queue:silent')).toBeNull();
    expect(store.get('spoor:queue:live')).not.toBeNull();
  });

  it('merges adopted events in time order, once each, within its bound', () => {
    const store = new CountingStore();
    const old = new EventQueue({ store, prefix: 'spoor', tabId: 'old', maxEvents: 10, schedule: (t) => t() });
    const shared = message('shared', 15);
    [message('o1', 10), shared, message('o3', 30)].forEach((m) => old.push(m));
    old.setClosed(true);
    const q = new EventQueue({ store, prefix: 'spoor', tabId: 'new', maxEvents: 3, schedule: (t) => t() });
    q.push(message('n1', 20));
    q.push(shared);
    q.adoptOrphans(60_000);
    expect(names(q.all())).toEqual(['shared', 'n1', 'o3']);
    expect(q.dropped).toBe(1); // o1, the oldest, did not fit
  });

  it('discards unreadable stored queues instead of failing', () => {
    const store = new CountingStore();
    store.set('spoor:queue:broken', '{not json');
    const { q } = queue({ store });
    expect(q.adoptOrphans(60_000)).toBe(0);
    expect(store.get('spoor:queue:broken')).toBeNull();
  });

  it('reports a storage failure and keeps the events in memory', () => {
    let failures = 0;
    const store = new CountingStore();
    store.full = true;
    const { q } = queue({ store, onStorageError: () => failures++ });
    q.push(message('a'));
    expect(failures).toBe(1);
    expect(names(q.all())).toEqual(['a']);
  });

  it('clear deletes the queue and its stored copy', () => {
    const { q, store } = queue();
    q.push(message('a'));
    q.clear();
    expect(q.length).toBe(0);
    expect(store.get(q.key)).toBeNull();
  });
});
