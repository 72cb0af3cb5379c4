import { MemoryStore } from '../../src/storage';
import type { Message } from '../../src/types';

let seq = 0;

/** A track message whose timestamp grows with each call (or is given). */
export function message(name: string, timestampMs?: number): Message {
  seq += 1;
  return {
    type: 'track', event: name, messageId: `m-${name}-${seq}`,
    timestamp: new Date(timestampMs ?? 1_700_000_000_000 + seq).toISOString(),
    anonymousId: 'anon-1', properties: {}, context: {},
  };
}

/** A MemoryStore that counts writes and can be made to refuse them (quota). */
export class CountingStore extends MemoryStore {
  writes = 0;
  full = false;
  override set(key: string, value: string): boolean {
    if (this.full) return false;
    this.writes += 1;
    return super.set(key, value);
  }
}

export const names = (messages: Message[]) => messages.map((m) => m.event);
