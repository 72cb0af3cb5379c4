/**
 * Script-tag entry: defines `window.spoor`. Calls the snippet recorded before the
 * bundle loaded (`window.spoor = [[method, ...args], ...]`) are replayed in order.
 */

import { spoor } from './index';

const w = window as unknown as { spoor?: unknown };
const recorded = Array.isArray(w.spoor) ? (w.spoor as Array<[string, ...unknown[]]>) : [];
w.spoor = spoor;
for (const call of recorded) spoor.push(call);
