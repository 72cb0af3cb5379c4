"""The field catalogue: every name a segment condition may use, its type, and the SQL it reads.

Only names listed here reach SQL, so a field name can never inject anything. Sources:
``profile`` = user_profiles, ``activity`` = user_activity (rolling windows from the stream; a user
without a row counts as 0), ``derived`` = computed against the evaluation time (``now``), ``rfm`` =
scores relative to all customers, from the view ``user_rfm`` (see ``segments.rfm``), ``interests`` =
the interest profile ``user_interest_profiles`` (migration 0019, docs/recommendations.md; a user
without interests has nulls). ``price_band`` compares the user's price with the catalogue's terciles,
which other users' events move, so like RFM it depends on the population.
"""

from dataclasses import dataclass
from enum import StrEnum

from spoor.storage.tables import WINDOWED_COUNTS, WINDOWS


class FieldType(StrEnum):
    NUMBER = "number"
    STRING = "string"


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: FieldType
    source: str  # profile | activity | derived | rfm | interests
    description: str

    @property
    def depends_on_population(self) -> bool:
        """RFM scores move when *other* users buy, and price bands when the catalogue's prices move, so
        membership must be recomputed over everyone."""
        return self.source == "rfm" or self.name == "price_band"


_specs: list[FieldSpec] = [
    *[FieldSpec(n, FieldType.NUMBER, "profile", f"lifetime {n.replace('_', ' ')}") for n in (
        "events", "page_views", "product_views", "distinct_products_viewed", "clicks", "cart_adds",
        "cart_removes", "checkouts", "orders")],
    FieldSpec("cart_value", FieldType.NUMBER, "profile", "value of the current cart"),
    FieldSpec("revenue", FieldType.NUMBER, "profile", "lifetime revenue"),
    FieldSpec("user_id", FieldType.STRING, "profile", "the identified user id (null if anonymous)"),
    FieldSpec("average_order_value", FieldType.NUMBER, "derived", "revenue / orders (null without orders)"),
    FieldSpec("days_since_last_purchase", FieldType.NUMBER, "derived", "null if never purchased"),
    FieldSpec("days_since_first_purchase", FieldType.NUMBER, "derived", "null if never purchased"),
    FieldSpec("days_since_last_seen", FieldType.NUMBER, "derived", "days since the latest event"),
    FieldSpec("days_since_first_seen", FieldType.NUMBER, "derived", "days since the first event"),
    *[FieldSpec(f"{c}_{w}", FieldType.NUMBER, "activity", f"{c.replace('_', ' ')} in the last {w}")
      for c in WINDOWED_COUNTS for w in WINDOWS],
    *[FieldSpec(f"revenue_{w}", FieldType.NUMBER, "activity", f"revenue in the last {w}") for w in WINDOWS],
    FieldSpec("frequency", FieldType.NUMBER, "activity", "RFM frequency from the stream"),
    FieldSpec("monetary", FieldType.NUMBER, "activity", "RFM monetary value from the stream"),
    FieldSpec("favourite_category", FieldType.STRING, "activity", "most engaged category"),
    FieldSpec("lifecycle_stage", FieldType.STRING, "activity", "lifecycle stage from the stream"),
    FieldSpec("recency_score", FieldType.NUMBER, "rfm", "RFM recency score 1-5 (null for non-buyers and anonymous users)"),
    FieldSpec("frequency_score", FieldType.NUMBER, "rfm", "RFM frequency score 1-5"),
    FieldSpec("monetary_score", FieldType.NUMBER, "rfm", "RFM monetary score 1-5"),
    FieldSpec("rfm_group", FieldType.STRING, "rfm", "champions, loyal, potential_loyalists, at_risk, "
                                                    "hibernating or lost"),
    FieldSpec("top_category", FieldType.STRING, "interests",
              "category of the user's largest decayed interest (views, clicks, cart adds, purchases)"),
    FieldSpec("price_band", FieldType.STRING, "interests",
              "low, mid or high: the user's interest-weighted price against the catalogue's price terciles"),
    FieldSpec("preferred_device", FieldType.STRING, "interests", "device of most of the user's recent events"),
    FieldSpec("preferred_hour", FieldType.NUMBER, "interests", "hour of the day (0-23, UTC) of most of the "
                                                                "user's recent events"),
]
FIELDS: dict[str, FieldSpec] = {spec.name: spec for spec in _specs}
