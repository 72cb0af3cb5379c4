/** Optional automatic page views (initial load and history navigation) and marked-element clicks. */

import type { Properties } from './types';

/** Calls `onNavigate` when pushState or back/forward changes the path or query (not just the #fragment). */
export function watchHistory(onNavigate: () => void): void {
  const where = () => location.pathname + location.search;
  let last = where();
  const check = () => {
    if (where() !== last) {
      last = where();
      onNavigate();
    }
  };
  const push = history.pushState;
  history.pushState = function (this: History, ...args: Parameters<History['pushState']>) {
    push.apply(this, args);
    check();
  };
  addEventListener('popstate', check);
}

/**
 * Clicks on (or inside) an element carrying `attribute` become a track event named
 * by the attribute's value. Its other `data-spoor-*` attributes become properties:
 * `data-spoor-product-id="P1"` -> `product_id: "P1"`.
 */
export function watchClicks(attribute: string, onClick: (name: string, properties: Properties) => void): void {
  document.addEventListener('click', (event) => {
    const target = event.target instanceof Element ? event.target.closest(`[${attribute}]`) : null;
    if (target === null) return;
    const properties: Properties = {};
    for (const { name, value } of Array.from(target.attributes)) {
      if (name.startsWith('data-spoor-') && name !== attribute) properties[name.slice(11).replace(/-/g, '_')] = value;
    }
    onClick(target.getAttribute(attribute) || 'Element Clicked', properties);
  }, { capture: true, passive: true });
}

export function pageProperties(): Properties {
  return {
    path: location.pathname,
    referrer: document.referrer,
    search: location.search,
    title: document.title,
    url: location.href,
  };
}

const UTM_FIELDS = new Map([
  ['utm_source', 'source'], ['utm_medium', 'medium'], ['utm_campaign', 'name'], ['utm_term', 'term'],
  ['utm_content', 'content'],
]);

/**
 * The page's UTM parameters as Segment's `context.campaign` (`utm_campaign` becomes `name`), as
 * analytics.js reads them: the channel a visit came by, for sessions and attribution. Undefined when
 * the query has none; each value is cut at 256 characters.
 */
export function campaignFromQuery(search: string): Properties | undefined {
  let params: URLSearchParams;
  try {
    params = new URLSearchParams(search);
  } catch {
    return undefined;
  }
  const campaign: Properties = {};
  for (const [key, value] of params) {
    const field = UTM_FIELDS.get(key.toLowerCase());
    if (field && value && !(field in campaign)) campaign[field] = value.slice(0, 256);
  }
  return Object.keys(campaign).length ? campaign : undefined;
}
