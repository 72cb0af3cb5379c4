import { describe, expect, it } from 'vitest';

import { byteLength, EventQueue, type QueueOptions } from '../../src/queue';
import { CountingStore, message, names } from './helpers';

function queue(overrides: Partial<QueueOptions> = {}) {
  const store = (overrides.store as CountingStore) ?? new CountingStore();
  const q = new EventQueue({ store, prefix: 'spoor', tabId: 'tab-a', maxEvents: 5, ...overrides });
  return { q, store };
}

const storedEvents = (store: CountingStore) => store.keys().filter((k) => k.startsWith('spoor:q:')).sort();

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

  it('drops the oldest events beyond its bound, counts them and deletes their stored copies', () => {
    const { q, store } = queue({ maxEvents: 3 });
    const events = ['a', 'b', 'c', 'd', 'e'].map((n) => message(n));
    events.forEach((m) => q.push(m));
    expect(names(q.all())).toEqual(['c', 'd', 'e']);
    expect(q.dropped).toBe(2);
    expect(storedEvents(store)).toEqual(events.slice(2).map((m) => `spoor:q:tab-a:${m.messageId}`).sort());
  });

  it('removes only acknowledged events, and acks are idempotent', () => {
    const { q, store } = queue();
    const [a, b, c] = ['a', 'b', 'c'].map((n) => message(n));
    [a, b, c].forEach((m) => q.push(m));
    q.ack([b.messageId, 'unknown']);
    q.ack([b.messageId]);
    expect(names(q.all())).toEqual(['a', 'c']);
    expect(storedEvents(store)).toEqual([`spoor:q:tab-a:${a.messageId}`, `spoor:q:tab-a:${c.messageId}`].sort());
  });

  it('stores each event once under its own key: queuing costs one small write at any depth', () => {
    const { q, store } = queue({ maxEvents: 1000 });
    for (let i = 0; i < 500; i++) q.push(message(`e${i}`));
    const before = store.writes;
    const last = message('last');
    q.push(last);
    expect(store.writes - before).toBe(1);
    expect(JSON.parse(store.get(`spoor:q:tab-a:${last.messageId}`) as string)).toEqual(last);
  });

  it('adopts the events of a closed tab and of a silent one, never of a live one', () => {
    const store = new CountingStore();
    let now = 1_000_000;
    const tab = (id: string) => {
      const q = new EventQueue({ store, prefix: 'spoor', tabId: id, maxEvents: 10, now: () => now });
      q.persistNow();
      return q;
    };
    const closed = tab('closed');
    closed.push(message('closed-1', 10));
    closed.setClosed(true);
    const silent = tab('silent');
    silent.push(message('silent-1', 20));
    now += 6 * 60_000; // silent has not written its heartbeat for 6 minutes
    const live = tab('live');
    live.push(message('live-1', 30));

    const fresh = tab('fresh');
    fresh.push(message('fresh-1', 40));
    expect(fresh.adoptOrphans(5 * 60_000)).toBe(2);
    expect(names(fresh.all())).toEqual(['closed-1', 'silent-1', 'fresh-1']);
    expect(store.keys().filter((k) => /^spoor:(q|tab):(closed|silent)/.test(k))).toEqual([]);
    expect(storedEvents(store).filter((k) => k.startsWith('spoor:q:fresh:'))).toHaveLength(3);
    expect(storedEvents(store).filter((k) => k.startsWith('spoor:q:live:'))).toHaveLength(1);
  });

  it('adopts events whose tab left no record (a crash before its first heartbeat)', () => {
    const store = new CountingStore();
    new EventQueue({ store, prefix: 'spoor', tabId: 'ghost', maxEvents: 10 }).push(message('ghost-1'));
    const { q } = queue({ store });
    expect(q.adoptOrphans(60_000)).toBe(1);
  });

  it('deletes instead of adopting the events stored before the last opt-in', () => {
    // A tab queued `stranded` as another tab opted out, and closed before it heard: the opt-out's
    // deletion missed it. The shopper opts in again at 2000; a later page load must not send it.
    const store = new CountingStore();
    const closed = new EventQueue({ store, prefix: 'spoor', tabId: 'closed', maxEvents: 10 });
    [message('stranded', 1000), message('consented', 2500)].forEach((m) => closed.push(m));
    closed.setClosed(true);
    const { q } = queue({ store });
    expect(q.adoptOrphans(60_000, 2000)).toBe(1);
    expect(names(q.all())).toEqual(['consented']);
    expect(storedEvents(store)).toEqual([`spoor:q:tab-a:${q.all()[0].messageId}`]);
  });

  it('merges adopted events in time order, once each, within its bound', () => {
    const store = new CountingStore();
    const old = new EventQueue({ store, prefix: 'spoor', tabId: 'old', maxEvents: 10 });
    const shared = message('shared', 15);
    [message('o1', 10), shared, message('o3', 30)].forEach((m) => old.push(m));
    old.setClosed(true);
    const q = new EventQueue({ store, prefix: 'spoor', tabId: 'new', maxEvents: 3 });
    q.push(message('n1', 20));
    q.push(shared);
    q.adoptOrphans(60_000);
    expect(names(q.all())).toEqual(['shared', 'n1', 'o3']);
    expect(q.dropped).toBe(1); // o1, the oldest, did not fit
  });

  it('discards unreadable stored events instead of failing', () => {
    const store = new CountingStore();
    store.set('spoor:q:broken:m1', '{not json');
    store.set('spoor:q:broken:m2', '{"no": "id"}');
    const { q } = queue({ store });
    expect(q.adoptOrphans(60_000)).toBe(0);
    expect(storedEvents(store)).toEqual([]);
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

  it('clear deletes the queue and its stored copies; clearOtherTabs deletes every tab\'s', () => {
    const store = new CountingStore();
    const other = new EventQueue({ store, prefix: 'spoor', tabId: 'other', maxEvents: 10 });
    other.push(message('x'));
    other.persistNow();
    const { q } = queue({ store });
    q.push(message('a'));
    q.persistNow();
    q.clear();
    expect(q.length).toBe(0);
    expect(storedEvents(store)).toHaveLength(1);
    q.clearOtherTabs();
    expect(store.keys()).toEqual(['spoor:tab:tab-a']);
  });
});
