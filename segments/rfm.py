"""RFM scores and named groups, computed in SQL over user_profiles (buyers only).

Scores are quintiles 1-5 taken as ``ceil(5 * cume_dist())`` over recency (``last_purchase_at``),
frequency (``orders``) and monetary value (``revenue``): the most recent, most frequent, biggest
spenders get 5. Unlike NTILE, users with equal values always get the same score, so the result
does not depend on row order (deterministic ties), and a small population still spreads over 1-5.

Named groups (first match wins, over R = recency score and F = frequency score):

| group | rule | meaning |
| --- | --- | --- |
| champions | R >= 4 and F >= 4 | bought recently and often |
| loyal | R >= 3 and F >= 3 | regular buyers |
| potential_loyalists | R >= 3 | recent buyers with few orders yet |
| at_risk | F >= 3 (R <= 2) | used to buy often, not lately |
| hibernating | R = 2 | few orders, a while ago |
| lost | R = 1 | few orders, long ago |
"""

from sqlalchemy import case, func, select
from sqlalchemy.sql import Subquery

from storage.models import UserProfile

GROUPS = ("champions", "loyal", "potential_loyalists", "at_risk", "hibernating", "lost")


def rfm_scores() -> Subquery:
    p = UserProfile.__table__

    def quintile(order_by):
        return func.ceil(5 * func.cume_dist().over(order_by=order_by)).cast(p.c.orders.type)

    scores = (select(p.c.user_key,
                     quintile(p.c.last_purchase_at).label("recency_score"),
                     quintile(p.c.orders).label("frequency_score"),
                     quintile(p.c.revenue).label("monetary_score"))
              .where(p.c.orders > 0, p.c.last_purchase_at.is_not(None))
              .subquery("rfm_scores"))
    r, f = scores.c.recency_score, scores.c.frequency_score
    group = case(((r >= 4) & (f >= 4), "champions"), ((r >= 3) & (f >= 3), "loyal"), (r >= 3, "potential_loyalists"),
                 (f >= 3, "at_risk"), (r == 2, "hibernating"), else_="lost")
    return select(scores, group.label("rfm_group")).subquery("rfm")
