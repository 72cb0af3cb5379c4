// How long a track() call holds the page's main thread, in Debian's headless Chromium.
// Measures track() plus the localStorage write it schedules, per event, one event per task
// (as user actions arrive), with the collector unreachable so the offline queue fills up to its
// bound: the worst case for the synchronous work. Prints medians and p99 per queue depth.
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const bundle = readFileSync(new URL('../dist/spoor.iife.js', import.meta.url));
const server = createServer((req, res) => {
  if (req.url === '/spoor.iife.js') {
    res.writeHead(200, { 'Content-Type': 'text/javascript' }).end(bundle);
  } else {
    res.writeHead(200, { 'Content-Type': 'text/html' }).end('<!doctype html><title>bench</title><script src="/spoor.iife.js"></script>');
  }
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const page = await browser.newPage();
await page.goto(`http://127.0.0.1:${server.address().port}/`);
const figures = await page.evaluate(async () => {
  // Port 9 (discard) refuses connections: every send fails and the queue only grows.
  spoor.init({ writeKey: 'bench', host: 'http://127.0.0.1:9', flushAt: 20, retryBaseMs: 60_000, retryMaxMs: 60_000,
               onError: () => {} });
  const afterMicrotasks = () => new Promise((resolve) => setTimeout(resolve, 0));
  const product = { product_id: 'P12345', sku: 'SKU-12345', category: 'Shoes', name: 'Trail runner', brand: 'Spoor',
                    price: 89.9, quantity: 1, currency: 'EUR', url: 'https://shop.example/p/12345' };
  const samples = [];
  for (let i = 0; i < 1200; i++) {
    await afterMicrotasks();
    const started = performance.now();
    spoor.productViewed({ ...product, position: i });
    await new Promise((resolve) => queueMicrotask(resolve)); // after the scheduled localStorage write
    samples.push({ depth: spoor.stats().queued, ms: performance.now() - started });
  }
  const stats = (ms) => {
    const sorted = ms.slice().sort((a, b) => a - b);
    return { median: sorted[Math.floor(sorted.length / 2)], p99: sorted[Math.floor(sorted.length * 0.99)] };
  };
  const band = (lo, hi) => stats(samples.filter((s) => s.depth > lo && s.depth <= hi).map((s) => s.ms));
  // The same work in a tight loop: the average without task scheduling (timer resolution is 0.1 ms).
  const loopStarted = performance.now();
  for (let i = 0; i < 1000; i++) spoor.productViewed({ ...product, position: i });
  const loopMs = (performance.now() - loopStarted) / 1000;
  return { shallow: band(0, 100), half: band(400, 600), full: band(999, 1000), loopMs, dropped: spoor.stats().dropped };
});
await browser.close();
server.close();
const fmt = (x) => x.toFixed(3);
console.log(`queue depth 1-100:    track+persist median ${fmt(figures.shallow.median)} ms, p99 ${fmt(figures.shallow.p99)} ms`);
console.log(`queue depth 400-600:  track+persist median ${fmt(figures.half.median)} ms, p99 ${fmt(figures.half.p99)} ms`);
console.log(`queue full (1000):    track+persist median ${fmt(figures.full.median)} ms, p99 ${fmt(figures.full.p99)} ms`);
console.log(`tight loop, queue full:  track mean ${fmt(figures.loopMs)} ms`);
console.log(`dropped_oldest_events: ${figures.dropped}`);
console.log(`sdk_track_ms_median_shallow: ${fmt(figures.shallow.median)}`);
console.log(`sdk_track_ms_median_full_queue: ${fmt(figures.full.median)}`);
console.log(`sdk_track_ms_mean_tight_loop: ${fmt(figures.loopMs)}`);
