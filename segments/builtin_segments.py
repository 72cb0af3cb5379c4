"""Built-in segments, installed (as active) by ``spoor segments install-builtins`` and by the runner.

- ``rfm_<group>`` for each RFM group (definitions in ``segments.rfm``).
- Lifecycle, from the user's own profile: ``lifecycle_prospect`` (never purchased),
  ``lifecycle_new_customer`` (first purchase in the last 30 days), ``lifecycle_active_customer``
  (bought in the last 90 days, first purchase earlier), ``lifecycle_lapsed_customer`` (no purchase
  for more than 90 days).
- ``cart_abandoners``: added a product to the cart in the last 24 h and completed no order in that time.
- ``high_intent_browsers``: 3 or more product views in the last 7 days, with a cart add or a checkout
  started, and no order in those 7 days.
"""

from spoor.segments.rfm import GROUPS
from spoor.segments.segment_language import SegmentSpec, parse_segment

_DEFINITIONS: list[dict] = [
    *[{"name": f"rfm_{group}", "description": f"RFM group {group.replace('_', ' ')}",
       "where": {"field": "rfm_group", "op": "==", "value": group}} for group in GROUPS],
    {"name": "lifecycle_prospect", "description": "seen but never purchased", "where": "orders == 0"},
    {"name": "lifecycle_new_customer", "description": "first purchase in the last 30 days",
     "where": {"all": ["orders >= 1", "days_since_first_purchase <= 30"]}},
    {"name": "lifecycle_active_customer", "description": "purchased in the last 90 days, not new",
     "where": {"all": ["orders >= 1", "days_since_last_purchase <= 90", "days_since_first_purchase > 30"]}},
    {"name": "lifecycle_lapsed_customer", "description": "no purchase for more than 90 days",
     "where": {"all": ["orders >= 1", "days_since_last_purchase > 90"]}},
    {"name": "cart_abandoners", "description": "added to cart in the last 24 h without completing an order",
     "where": 'did "Product Added" in last 24h and not "Order Completed"'},
    {"name": "high_intent_browsers", "description": "3+ product views and a cart add or checkout in 7 days, "
                                                    "no order",
     "where": {"all": [{"did": "Product Viewed", "within": "7d", "at_least": 3},
                       {"any": ['did "Product Added" in last 7d', 'did "Checkout Started" in last 7d']},
                       {"not": 'did "Order Completed" in last 7d'}]}},
]

BUILTIN_SEGMENTS: dict[str, SegmentSpec] = {d["name"]: parse_segment(d) for d in _DEFINITIONS}
