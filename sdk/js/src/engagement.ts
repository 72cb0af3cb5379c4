/**
 * The visible time of the current page view, reported as a `Page Engagement` track event
 * (`visible_ms`: the page's total visible time so far) when the page is hidden or left, and when
 * the next page view starts. Spoor keeps the largest report per page as its dwell time
 * (docs/analytics.md, Journeys); a report with nothing new since the last one is not sent.
 */
export interface Engagement {
  /** A page view of `url` starts: report the previous one, then count for this one. */
  start(url: string): void;
  /** The page is visible again. */
  shown(): void;
  /** The page is hidden or left: stop the clock and report. */
  report(): void;
}

export function engagement(
  send: (visibleMs: number, url: string) => void,
  hidden: () => boolean = () => document.visibilityState === 'hidden',
  now: () => number = () => performance.now(),
): Engagement {
  let page = '';
  let visible = 0;
  let since: number | null = null;
  let reported = 0;
  const report = () => {
    if (since !== null) visible += Math.max(0, now() - since);
    since = null;
    const ms = Math.round(visible);
    if (page && ms > reported) send(reported = ms, page);
  };
  return {
    start(url) {
      report();
      page = url;
      visible = reported = 0;
      since = hidden() ? null : now();
    },
    shown() {
      if (page && since === null) since = now();
    },
    report,
  };
}
