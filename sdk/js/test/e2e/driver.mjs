// Drives Debian's headless Chromium for tests/e2e/test_browser_sdk.py.
// Protocol: one JSON command per line on stdin, one JSON answer per line on stdout:
//   {"cmd": "context"}                       -> {"ok": true, "result": "<context id>"}  (a fresh user)
//   {"cmd": "open", "context", "url"}        -> page id
//   {"cmd": "goto", "page", "url"}           -> null (navigates away: pagehide, then the new page)
//   {"cmd": "eval", "page", "js"}            -> the value of the expression (awaited)
//   {"cmd": "click", "page", "selector"}     -> null (a real mouse click)
//   {"cmd": "close", "page"}                 -> null (closes the tab: visibilitychange, pagehide)
//   {"cmd": "requests", "context"}           -> [{url, headers, body (base64)}] POSTs to /v1/ so far
//   {"cmd": "quit"}
// Page console output goes to stderr.
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  // Playwright gives every launch a fresh --user-data-dir of its own.
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const contexts = new Map();
const pages = new Map();
let next = 0;

async function run(command) {
  switch (command.cmd) {
    case 'context': {
      const id = `c${next++}`;
      const context = await browser.newContext();
      context.requests = [];
      context.on('request', (r) => {
        if (r.method() === 'POST' && new URL(r.url()).pathname.startsWith('/v1/')) {
          const body = r.postDataBuffer();
          context.requests.push({ url: r.url(), headers: r.headers(), body: body ? body.toString('base64') : null });
        }
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
    case 'goto':
      await pages.get(command.page).goto(command.url);
      return null;
    case 'eval':
      return await pages.get(command.page).evaluate(command.js);
    case 'click':
      await pages.get(command.page).click(command.selector);
      return null;
    case 'close':
      await pages.get(command.page).close();
      pages.delete(command.page);
      return null;
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
