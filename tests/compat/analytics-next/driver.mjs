// Drives Debian's headless Chromium for tests/e2e/test_segment_browser_lib.py.
// Protocol (as sdk/js/test/e2e/driver.mjs): one JSON command per line on stdin, one answer per line:
//   {"cmd": "context"}                      -> context id (a fresh visitor: own storage and cache)
//   {"cmd": "open", "context", "url"}       -> page id
//   {"cmd": "eval", "page", "js"}           -> the value of the expression (awaited)
//   {"cmd": "close", "page"}                -> null (closes the tab: visibilitychange, pagehide)
//   {"cmd": "hold", "context", "path", "ms"} -> null: requests to that path reach the server, but the
//                                             page hears the answer only after ms (a slow answer)
//   {"cmd": "requests", "context"}          -> [{method, url, headers, body (base64)}] to other origins
//   {"cmd": "quit"}
// Nothing leaves the machine: the resolver knows no name but loopback's, so a request to any other
// host fails, and is recorded with "blocked": true.
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync',
         '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1'],
});
const contexts = new Map();
const pages = new Map();
let next = 0;
const loopback = (url) => ['127.0.0.1', 'localhost', '[::1]'].includes(new URL(url).hostname);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function run(command) {
  switch (command.cmd) {
    case 'context': {
      const id = `c${next++}`;
      const context = await browser.newContext();
      context.requests = [];
      context.on('request', (r) => {
        const url = new URL(r.url());
        if (r.resourceType() === 'document' || url.pathname.startsWith('/page/')) return;
        const body = r.postDataBuffer();
        context.requests.push({ method: r.method(), url: r.url(), headers: r.headers(),
                                body: body ? body.toString('base64') : null, blocked: !loopback(r.url()) });
      });
      contexts.set(id, context);
      return id;
    }
    case 'open': {
      const page = await contexts.get(command.context).newPage();
      page.on('console', (m) => process.stderr.write(`[page ${m.type()}] ${m.text()}\n`));
      page.on('pageerror', (e) => process.stderr.write(`[page error] ${e.message}\n`));
      await page.goto(command.url);
      const id = `p${next++}`;
      pages.set(id, page);
      return id;
    }
    case 'eval':
      return await pages.get(command.page).evaluate(command.js);
    case 'close':
      await pages.get(command.page).close();
      pages.delete(command.page);
      return null;
    case 'hold': {
      // Only where asked: an intercepted request would not outlive its page as a keepalive one does.
      const matches = (url) => new URL(url).pathname === command.path;
      await contexts.get(command.context).route(matches, async (route) => {
        if (route.request().method() === 'OPTIONS') return route.fallback();
        const response = await route.fetch();
        await sleep(command.ms);
        await route.fulfill({ response }).catch(() => {});  // the page may be gone by then
      });
      return null;
    }
    case 'requests':
      return contexts.get(command.context).requests;
    case 'quit':
      await browser.close();
      process.exit(0);
    default:
      throw new Error(`unknown command ${command.cmd}`);
  }
}

process.stdout.write(`${JSON.stringify({ ok: true, result: browser.version() })}\n`);
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  let answer;
  try {
    answer = { ok: true, result: (await run(JSON.parse(line))) ?? null };
  } catch (error) {
    answer = { ok: false, error: String(error && error.stack ? error.stack : error) };
  }
  process.stdout.write(`${JSON.stringify(answer)}\n`);
}
await browser.close();
