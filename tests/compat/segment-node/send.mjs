// Sends a shop session through Segment's own Node library to the host given in SPOOR_URL.
// Usage: SPOOR_URL=http://127.0.0.1:8080 SPOOR_WRITE_KEY=... RUN=abc node send.mjs
import { Analytics } from '@segment/analytics-node'

const run = process.env.RUN
const analytics = new Analytics({
  writeKey: process.env.SPOOR_WRITE_KEY,
  host: process.env.SPOOR_URL,
  flushAt: 3,
  maxRetries: 3,
})
const failures = []
analytics.on('error', (err) => failures.push(String(err?.reason ?? err)))

const user = { userId: `${run}-node-user` }
analytics.identify({ ...user, traits: { plan: 'pro' }, messageId: `${run}-n1` })
analytics.page({ ...user, name: 'Home', properties: { url: 'https://shop.example/' }, messageId: `${run}-n2` })
analytics.track({ ...user, event: 'Product Viewed', properties: { product_id: 'P1', price: 12.5 }, messageId: `${run}-n3` })
analytics.track({ ...user, event: 'Product Added', properties: { product_id: 'P1', price: 12.5, quantity: 2 }, messageId: `${run}-n4` })
analytics.track({
  anonymousId: `${run}-node-anon`, event: 'Order Completed', messageId: `${run}-n5`,
  properties: { order_id: 'o-n', currency: 'usd', products: [{ product_id: 'P1', price: 12.5, quantity: 2 }] },
})
await analytics.closeAndFlush({ timeout: 30000 })
if (failures.length) {
  console.error('delivery failures:', failures)
  process.exit(1)
}
console.log('sent 5 events')
