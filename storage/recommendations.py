"""Recommendations read from the interests the worker keeps (migration 0016, storage/interests.py).

For a user (``for_user``), candidates come from two sources, blended, then weighed by demand:

- **buy again**: the user's own decayed purchases of each product, relative to the most bought (1.0),
  times ``buy_again_weight``;
- **neighbours** of the user's strongest products (``SEEDS``, weighted by the user's decayed interest):
  ``similarity(p, q) = together(p, q) / sqrt(popularity(p) * popularity(q))``, a cosine over decayed
  co-occurrence that keeps best-sellers from being everyone's neighbour, averaged over the seeds (so at
  most 1, and a product close to several seeds gains from each). Reason "bought with P" when p and q were
  bought together, else "viewed with P" (p: the seed that gave q most);
- **demand**: the blend times ``popularity(q) ^ demand_exponent`` (relative to the most popular candidate):
  of two products the user is as close to, the one that sells now comes first. On Online Retail it is
  what lifts the lists above buy-again alone (bench/recommendations.py, docs/recommendations.md).

Every weight is a forward-decayed logarithm with the same half-life, so ``2^(a - b)`` compares two of
them at any common time: no clock is read. When the user has nothing (unknown, erased, new) or opted out,
or has fewer than ``k`` candidates, the list is filled with what is popular in the user's top category
("popular in C"), then what is trending ("trending now"), below every personal score; ``personal`` says
whether the user's own data was used. For a product (``for_product``): its neighbours, then popular
products of its category.
"""

from dataclasses import dataclass

from sqlalchemy import Connection, text

from spoor.consent import PERSONALISATION, WITHHELD
from spoor.storage.consent_store import withdrawn_sql
from spoor.storage.identities import canonical_key

SEEDS = 20  # the user's strongest products whose neighbours are candidates
NEIGHBOURS_PER_SEED = 50
MAX_K = 100
FLOOR = -1000.0


@dataclass(frozen=True)
class Blend:
    """How ``for_user`` weighs its sources; the defaults were chosen on a validation split of Online Retail
    inside the training period (bench/recommendations.py --validation), not on the reported one."""

    buy_again_weight: float = 4.0  # the user's most bought product against a neighbour of every seed
    seeds: int = SEEDS
    demand_exponent: float = 0.5  # 0: popularity plays no part; 1: in proportion to it


USER_INTERESTS = text("""
    SELECT i.facet, i.value, i.weight, p.weight AS popularity
      FROM user_interests i LEFT JOIN product_popularity p ON p.product_id = i.value
     WHERE i.user_key = :user_key AND i.facet IN ('product', 'bought')
    UNION ALL  -- a category weighs the user's summed interest in its products (migration 0020)
    SELECT 'category', c.category, spoor_log2_sum(i.weight), NULL
      FROM user_interests i JOIN product_popularity c ON c.product_id = i.value
     WHERE i.user_key = :user_key AND i.facet = 'product' AND c.category IS NOT NULL
     GROUP BY c.category
""")
# THE place that decides a user gets no personal list (opted out, or personalisation withdrawn: recorded or
# stated by the page, docs/privacy.md#consent): every list, made ahead by the segments runner or worked out on request, goes through
# DatabaseReads.user, and the admin API serves only what was made.
NO_PERSONAL_LIST = text(f"SELECT {withdrawn_sql(PERSONALISATION)} FROM user_consent WHERE user_key = :user_key")
NEIGHBOURS = text("""
    SELECT s.product_id AS seed, a.neighbour_id,
           power(2::float8, greatest(-1000::float8, a.weight - (ps.weight + pn.weight) / 2)) AS similarity,
           a.bought IS NOT NULL AS bought, pn.weight AS popularity
      FROM unnest(CAST(:seeds AS text[])) AS s(product_id)
      JOIN product_popularity ps ON ps.product_id = s.product_id
     CROSS JOIN LATERAL (SELECT neighbour_id, weight, bought FROM product_affinity
                          WHERE product_id = s.product_id ORDER BY weight DESC LIMIT :per_seed) a
      JOIN product_popularity pn ON pn.product_id = a.neighbour_id
""")
POPULAR_IN = text("""
    SELECT product_id FROM product_popularity WHERE category = :category ORDER BY weight DESC, product_id LIMIT :k
""")
TRENDING = text("SELECT product_id FROM product_popularity ORDER BY trend DESC, product_id LIMIT :k")
PRODUCT_CATEGORY = text("SELECT category FROM product_popularity WHERE product_id = :product_id")


def _scaled(logs: dict[str, float]) -> dict[str, float]:
    """Forward-decayed logarithms as weights relative to the largest (1.0)."""
    if not logs:
        return {}
    top = max(logs.values())
    return {key: 2.0 ** max(FLOOR, value - top) for key, value in logs.items()}


def _rounded(score: float) -> float:
    """Nine decimals, and at least three significant digits for the smallest scores."""
    return round(score, 9) if score >= 1e-6 else float(f"{score:.3g}")


class DatabaseReads:
    """Every read ``for_user`` and ``for_product`` make, from ``conn``. storage/recommendation_reads.py
    serves the product-level ones from memory instead (``neighbours``, ``ranked``, ``category_of``)."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def user(self, user_key: str) -> tuple[str, bool]:
        """(the user ``user_key`` is an id of, whether that user gets no personal list: ``NO_PERSONAL_LIST``)."""
        key = canonical_key(self.conn, user_key) or user_key
        return key, bool(self.conn.execute(NO_PERSONAL_LIST, {"user_key": key}).scalar())

    def interests(self, key: str) -> list[tuple]:
        """(facet, value, weight, the product's popularity) of the user's products, purchases, categories."""
        return self.conn.execute(USER_INTERESTS, {"user_key": key}).all()

    def neighbours(self, seeds: list[str], per_seed: int) -> list[tuple]:
        """(seed, neighbour id, similarity (not its logarithm), bought together, popularity) of each seed's
        strongest neighbours,
        as plain tuples (a request reads up to a thousand: SQLAlchemy rows cost several times more)."""
        return [tuple(row) for row in self.conn.execute(NEIGHBOURS, {"seeds": seeds, "per_seed": per_seed}).all()]

    def ranked(self, category: str | None, n: int) -> list[str]:
        """The ``n`` most popular products of ``category``; with no category, the ``n`` trending now."""
        if category is None:
            return self.conn.execute(TRENDING, {"k": n}).scalars().all()
        return self.conn.execute(POPULAR_IN, {"category": category, "k": n}).scalars().all()

    def category_of(self, product_id: str) -> str | None:
        return self.conn.execute(PRODUCT_CATEGORY, {"product_id": product_id}).scalar()


def _reads(source) -> DatabaseReads:
    return source if hasattr(source, "neighbours") else DatabaseReads(source)


def fill_up(reads, items: list[dict], k: int, category: str | None, exclude: str | None = None) -> list[dict]:
    """``items`` topped up to ``k`` with the popular products of ``category``, then trending ones."""
    have = {item["product_id"] for item in items} | ({exclude} if exclude else set())
    below = min([1.0] + [item["score"] for item in items]) * 1e-3
    sources = [(category, f"popular in {category}")] if category else []
    sources.append((None, "trending now"))
    for source, reason in sources:
        if len(items) >= k:
            break
        for place, product_id in enumerate(reads.ranked(source, k + len(have))):
            if len(items) >= k:
                break
            if product_id not in have:
                have.add(product_id)
                # Below every listed score, by popularity rank.
                items.append({"product_id": product_id, "score": _rounded(below * 0.5 / (place + 1)),
                              "reason": reason})
    return items


def rank_for_user(interests: list[tuple], neighbours_of, blend: Blend, k: int) -> tuple[list[dict], str | None]:
    """The user's personal top ``k`` (no fill) and top category, from their ``interests`` rows; pure but for
    ``neighbours_of(seeds, per_seed)``, which reads the seeds' neighbour rows."""
    facets: dict[str, dict[str, float]] = {"product": {}, "bought": {}, "category": {}}
    popularity: dict[str, float] = {}  # product -> its popularity's forward-decayed logarithm
    for facet, value, weight, product_popularity in interests:
        facets[facet][value] = weight
        if product_popularity is not None:
            popularity[value] = product_popularity
    category = max(facets["category"], key=facets["category"].get) if facets["category"] else None
    seeds = _scaled(dict(sorted(facets["product"].items(), key=lambda kv: -kv[1])[:blend.seeds]))
    similar: dict[str, float] = {}
    via: dict[str, tuple] = {}  # product -> (largest gain, the seed that gave it, bought together)
    if seeds:
        for seed, neighbour, similarity, bought, neighbour_popularity in neighbours_of(list(seeds), NEIGHBOURS_PER_SEED):
            gain = seeds[seed] * similarity
            similar[neighbour] = similar.get(neighbour, 0.0) + gain
            popularity[neighbour] = neighbour_popularity
            if gain > via.get(neighbour, (0.0, None))[0]:
                via[neighbour] = (gain, seed, bought)
    seeds_total = sum(seeds.values()) or 1.0
    near = {p: gain / seeds_total for p, gain in similar.items()}
    again = {p: blend.buy_again_weight * w for p, w in _scaled(facets["bought"]).items()}
    candidates = near.keys() | again.keys()
    known = [popularity[p] for p in candidates if p in popularity]
    top = max(known, default=0.0)
    least = min(known, default=0.0)  # a product not in product_popularity yet counts as the least popular
    scores = {p: (near.get(p, 0.0) + again.get(p, 0.0))
              * 2.0 ** max(FLOOR, blend.demand_exponent * (popularity.get(p, least) - top)) for p in candidates}
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    items = [{"product_id": p, "score": _rounded(s),
              "reason": "buy again" if again.get(p, 0.0) >= near.get(p, 0.0)
              else f"{'bought' if via[p][2] else 'viewed'} with {via[p][1]}"}
             for p, s in ranked]
    return items, category


def for_user(source, user_key: str, k: int = 10, blend: Blend = Blend()) -> dict:
    """The user's top ``k`` products (any of the user's ids finds them), best first. ``source``: a
    connection, or reads like ``DatabaseReads``."""
    reads = _reads(source)
    k = max(1, min(k, MAX_K))
    key, opted_out = reads.user(user_key)
    if opted_out:
        WITHHELD.labels(PERSONALISATION).inc()
    items, category = rank_for_user([] if opted_out else reads.interests(key), reads.neighbours, blend, k)
    return {"user_key": user_key, "personal": bool(items), "items": fill_up(reads, items, k, category)}


def for_product(source, product_id: str, k: int = 10) -> dict:
    """Products seen or bought with ``product_id`` ("customers also bought"), best first."""
    reads = _reads(source)
    k = max(1, min(k, MAX_K))
    rows = reads.neighbours([product_id], max(k, NEIGHBOURS_PER_SEED))
    ranked = sorted(rows, key=lambda r: (-r[2], r[1]))[:k]  # (seed, neighbour, similarity, bought, popularity)
    top = ranked[0][2] if ranked else 1.0
    items = [{"product_id": neighbour, "score": round(similarity / top, 9),
              "reason": f"{'bought' if bought else 'viewed'} with {product_id}"}
             for _seed, neighbour, similarity, bought, _popularity in ranked]
    return {"product_id": product_id, "items": fill_up(reads, items, k, reads.category_of(product_id), exclude=product_id)}
