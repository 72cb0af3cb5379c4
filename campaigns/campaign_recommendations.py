"""Recommendations in campaign messages, and whether the recommended products were bought.

A campaign with ``recommendations: {k: N}`` gives each episode ``recommendations_k = N`` when it is
enqueued. The user's top ``N`` (``spoor.storage.recommendations.for_user``) are computed once per
episode and kept on its ``campaign_deliveries`` row (migration 0018):

- treated: at the first send attempt; every retry sends the same list, so the body behind one
  ``Idempotency-Key`` does not change and the row holds what the receiver got;
- holdout: when the message would have been sent (the same delay, expiry, cap and quiet hours), never
  sent. This is the counterfactual: what the user would have been offered.

The report counts, per arm, the episodes whose user bought at least one of their recommended products
within the window after the send (treated) or the would-be send (holdout). A purchase's products are its
top-level ``product_id`` and its order lines (``events.products``).
"""

from datetime import datetime

from sqlalchemy import Connection, text

from spoor.campaigns.lift import lift
from spoor.storage.recommendations import for_user


def _item(item: dict) -> dict:
    return {"product_id": item["product_id"], "score": item["score"], "reason": item["reason"]}


def recommend(conn: Connection, delivery, now: datetime) -> tuple[list[dict] | None, dict]:
    """The list the delivery's message carries (None: no recommendations), and the columns to set on
    its row when the list was computed now (empty when it was kept from an earlier attempt)."""
    if not delivery.recommendations_k:
        return None, {}
    if delivery.recommended_at is not None:  # jsonb reorders keys: put them back, so the body is the same
        return [_item(item) for item in delivery.recommendations], {}
    items = [_item(item) for item in for_user(conn, delivery.user_key, delivery.recommendations_k)["items"]]
    return items, {"recommended_at": now, "recommendations": items,
                   "recommended_products": [item["product_id"] for item in items]}


BOUGHT_RECOMMENDED = text("""
    SELECT d.status AS arm, count(*) AS episodes,
           count(*) FILTER (WHERE EXISTS (
               SELECT 1 FROM events e
                WHERE e.user_key = d.user_key AND e.kind = 'purchase'
                  AND e.event_time > d.since AND e.event_time <= d.since + make_interval(days => :days)
                  AND (e.product_id = ANY(d.recommended_products)
                       OR EXISTS (SELECT 1 FROM jsonb_array_elements(
                                      CASE jsonb_typeof(e.products) WHEN 'array' THEN e.products END) line
                                   WHERE line ->> 'product_id' = ANY(d.recommended_products))))) AS bought
      FROM (SELECT status, user_key, recommended_products,
                   CASE status WHEN 'sent' THEN sent_at ELSE recommended_at END AS since
              FROM campaign_deliveries
             WHERE campaign = :campaign AND status IN ('sent', 'holdout') AND recommended_at IS NOT NULL) d
     GROUP BY d.status
""")


def bought_recommended(conn: Connection, campaign: str, days: int) -> dict:
    """Share of treated and holdout episodes whose user bought a recommended product within ``days``
    of the send (or would-be send), and its lift, with the conversion report's intervals (``lift``)."""
    arms = {r.arm: r for r in conn.execute(BOUGHT_RECOMMENDED, {"campaign": campaign, "days": days})}
    sent, hold = arms.get("sent"), arms.get("holdout")
    out = lift(sent.episodes if sent else 0, sent.bought if sent else 0,
               hold.episodes if hold else 0, hold.bought if hold else 0)
    names = {"treated_converted": "treated_bought", "holdout_converted": "holdout_bought",
             "treated_rate": "treated_share", "holdout_rate": "holdout_share"}
    return {"window_days": days, **{names.get(key, key): value for key, value in out.items()}}
