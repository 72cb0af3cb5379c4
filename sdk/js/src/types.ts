/** Shapes of Segment-spec messages as Spoor's collector reads them (ingest/normalize.py). */

export type Properties = Record<string, unknown>;

export type MessageType = 'track' | 'page' | 'identify';

export interface Message {
  type: MessageType;
  messageId: string;
  timestamp: string;
  anonymousId: string;
  userId?: string;
  event?: string;
  name?: string;
  properties?: Properties;
  traits?: Properties;
  context: Properties;
}

/** A Segment E-commerce spec product (v2 names). */
export interface Product {
  product_id?: string;
  sku?: string;
  category?: string;
  name?: string;
  brand?: string;
  variant?: string;
  price?: number;
  quantity?: number;
  currency?: string;
  coupon?: string;
  position?: number;
  url?: string;
  image_url?: string;
  [key: string]: unknown;
}

/** A Segment E-commerce spec order / checkout. */
export interface Order {
  order_id?: string;
  checkout_id?: string;
  affiliation?: string;
  total?: number;
  revenue?: number;
  subtotal?: number;
  shipping?: number;
  tax?: number;
  discount?: number;
  coupon?: string;
  currency?: string;
  products?: Product[];
  [key: string]: unknown;
}

export interface SpoorOptions {
  /** The write key of a web source (`spoor keys create --source web --origin https://your.shop`). */
  writeKey: string;
  /** The collector's base URL, e.g. `https://collect.your.shop` (or a path such as `/collect` on the page's own origin). */
  host: string;
  /** Send when this many events are queued (default 20). */
  flushAt?: number;
  /** ...or when the oldest queued event is this old (default 3000 ms). */
  flushIntervalMs?: number;
  /** At most this many events per request (default 100). */
  maxBatchEvents?: number;
  /** Queue bound; the oldest events are dropped beyond it (default 1000). */
  maxQueueEvents?: number;
  /** First retry delay; doubles each attempt, with jitter (default 1000 ms). */
  retryBaseMs?: number;
  /** Longest retry delay (default 30000 ms). */
  retryMaxMs?: number;
  /** A new session starts after this much inactivity (default 30 minutes). */
  sessionTimeoutMs?: number;
  /** Track a page view on init and on history navigation (default false). */
  autoPage?: boolean;
  /** Send a `Page Engagement` event with the page's visible time when it is hidden or left (default: `autoPage`). */
  engagement?: boolean;
  /** Track clicks on elements carrying this attribute, e.g. `data-spoor-click` (default: off). */
  clickAttribute?: string | null;
  /** Cookie domain for the anonymous id, e.g. `.your.shop` to share it across subdomains. */
  cookieDomain?: string;
  /** Prefix of localStorage keys and cookie names (default `spoor`). */
  storagePrefix?: string;
  /** Called with every delivery problem worth knowing about (default: console.warn). */
  onError?: (error: SpoorError) => void;
}

export interface SpoorError {
  kind: 'rejected' | 'unauthorized' | 'dropped' | 'queue_full' | 'storage';
  message: string;
  status?: number;
  detail?: unknown;
}
