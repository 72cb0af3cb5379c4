/** HTTP to the collector's POST /v1/batch. Never throws: a failure is an Answer with status 0. */

import type { Answer, Sender } from './delivery';

const TIMEOUT_MS = 30_000;
const GZIP_ABOVE_BYTES = 2048;

export function httpSender(host: string, writeKey: string): Sender {
  const url = `${host.replace(/\/+$/, '')}/v1/batch`;
  const authorization = `Basic ${btoa(`${writeKey}:`)}`;

  return async (batch, mode) => {
    const sentAt = new Date().toISOString();
    if (mode === 'unload') {
      // The write key goes in the body and the type is text/plain: a CORS "simple"
      // request needs no preflight, which a page being closed could not wait for.
      const body = JSON.stringify({ batch, sentAt, writeKey });
      if (supportsKeepalive()) {
        return answerOf(fetch(url, { method: 'POST', body, keepalive: true, credentials: 'omit',
                                     headers: { 'Content-Type': 'text/plain' } }));
      }
      // A beacon's answer is never known: the events stay queued and are sent again next visit.
      const sent = navigator.sendBeacon?.(url, new Blob([body], { type: 'text/plain' })) ?? false;
      return { status: 0, retryAfter: null, beacon: sent };
    }
    const json = JSON.stringify({ batch, sentAt });
    const headers: Record<string, string> = { 'Content-Type': 'application/json', Authorization: authorization };
    let body: BodyInit = json;
    if (json.length > GZIP_ABOVE_BYTES && typeof CompressionStream === 'function') {
      try {
        body = await gzip(json);
        headers['Content-Encoding'] = 'gzip';
      } catch {
        body = json; // send it as it is rather than not at all
      }
    }
    const controller = new AbortController();
    const timeout = setTimeout(() => controller.abort(), TIMEOUT_MS);
    try {
      return await answerOf(fetch(url, { method: 'POST', body, headers, credentials: 'omit',
                                         signal: controller.signal }));
    } finally {
      clearTimeout(timeout);
    }
  };
}

async function answerOf(request: Promise<Response>): Promise<Answer> {
  try {
    const response = await request;
    const body = response.status === 400 ? await response.json().catch(() => null) : undefined;
    return { status: response.status, retryAfter: response.headers.get('Retry-After'), body };
  } catch {
    return { status: 0, retryAfter: null };
  }
}

function supportsKeepalive(): boolean {
  return typeof Request === 'function' && 'keepalive' in Request.prototype;
}

async function gzip(text: string): Promise<ArrayBuffer> {
  const stream = new Blob([text]).stream().pipeThrough(new CompressionStream('gzip'));
  return new Response(stream).arrayBuffer();
}
