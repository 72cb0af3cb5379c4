"""RFM for segments: the scores and named groups of the view ``user_rfm``, the one RFM definition.

The view (migration 0009) scores customers, i.e. identified users (``user_id`` set) with at least
one order: 1 + floor(5 * (customers with a lower value) / customers) over ``last_purchase_at`` (R),
``orders`` (F) and ``revenue`` (M), so 5 is the best fifth, equal values always get equal scores,
and a tie takes the lowest score of the fifths it spans (one-time buyers are F = 1). Anonymous
buyers and non-buyers have no scores (null): an RFM condition never matches them.

Named groups (first match wins, over R = recency score and F = frequency score):

| group | rule | meaning |
| --- | --- | --- |
| champions | R >= 4 and F >= 4 | bought recently and often |
| loyal | R >= 3 and F >= 3 | regular buyers |
| potential_loyalists | R >= 3 | recent buyers with few orders yet |
| at_risk | F >= 3 (R <= 2) | used to buy often, not lately |
| hibernating | R = 2 | few orders, a while ago |
| lost | R = 1 | few orders, long ago |

The scores rank purchases against each other, not against the evaluation time, so they need no
``now``; time-relative conditions use ``days_since_last_purchase``.
"""

from sqlalchemy import Integer, String, column, table

GROUPS = ("champions", "loyal", "potential_loyalists", "at_risk", "hibernating", "lost")

USER_RFM = table("user_rfm", column("user_key", String), column("r_score", Integer), column("f_score", Integer),
                 column("m_score", Integer), column("rfm_group", String))

# Segment field name -> user_rfm column.
FIELD_COLUMNS = {"recency_score": "r_score", "frequency_score": "f_score", "monetary_score": "m_score",
                 "rfm_group": "rfm_group"}
