/**
 * Script-tag entry: defines `window.spoor`. Calls made before the script loaded,
 * recorded by the snippet as `window.spoor = [[method, ...args], ...]`, are replayed in order.
 */

import { spoor } from './index';

type Recorded = [string, ...unknown[]];
const w = window as unknown as { spoor?: unknown };
const recorded = Array.isArray(w.spoor) ? (w.spoor as Recorded[]) : [];
w.spoor = spoor;
for (const [method, ...args] of recorded) {
  const fn = (spoor as unknown as Record<string, unknown>)[method];
  if (typeof fn === 'function') fn.apply(spoor, args);
}
