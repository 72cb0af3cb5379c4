import { describe, expect, it } from 'vitest';

import { checkedPreferences, ConsentRecord, MAX_CATEGORIES } from '../../src/consent';
import { CountingStore } from './helpers';

describe('checkedPreferences', () => {
  it('takes an object of booleans, copied', () => {
    const given = { analytics: true, marketing: false, personalisation: true };
    const checked = checkedPreferences(given);
    expect(checked).toEqual(given);
    expect(checked).not.toBe(given);
    expect(checkedPreferences({})).toEqual({}); // consent to nothing
  });

  it.each([
    [null], [undefined], ['analytics'], [['analytics']], [{ analytics: 'yes' }], [{ analytics: 1 }],
    [{ '': true }], [{ ['x'.repeat(65)]: true }],
    [Object.fromEntries(Array.from({ length: MAX_CATEGORIES + 1 }, (_, i) => [`c${i}`, true]))],
  ])('refuses %j with a reason', (value) => {
    expect(typeof checkedPreferences(value)).toBe('string');
  });
});

describe('ConsentRecord', () => {
  it('is kept in storage, read back by a later page, and says when a statement changes', () => {
    const store = new CountingStore();
    const record = new ConsentRecord(store, 'spoor');
    expect(record.get()).toBeNull();
    expect(record.set({ analytics: true, marketing: false })).toBe(true);
    expect(record.set({ analytics: true, marketing: false })).toBe(false);
    expect(record.set({ analytics: true, marketing: true })).toBe(true);
    expect(new ConsentRecord(store, 'spoor').get()).toEqual({ analytics: true, marketing: true });
  });

  it('follows another tab after a reload, and ignores what it cannot read', () => {
    const store = new CountingStore();
    const record = new ConsentRecord(store, 'spoor');
    store.set('spoor:consent', JSON.stringify({ analytics: false }));
    expect(record.get()).toBeNull();
    record.reload();
    expect(record.get()).toEqual({ analytics: false });
    store.set('spoor:consent', '{broken');
    record.reload();
    expect(record.get()).toBeNull();
    store.set('spoor:consent', JSON.stringify({ analytics: 'yes' }));
    expect(new ConsentRecord(store, 'spoor').get()).toBeNull();
  });
});
