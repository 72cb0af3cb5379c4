// Prints the size of each bundle, raw and gzipped (what a browser downloads).
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';

for (const file of ['dist/spoor.mjs', 'dist/spoor.iife.js']) {
  const raw = readFileSync(new URL(`../${file}`, import.meta.url));
  const gzipped = gzipSync(raw, { level: 9 }).length;
  console.log(`${file}: ${raw.length} bytes, ${gzipped} bytes gzipped (${(gzipped / 1024).toFixed(2)} KiB)`);
}
