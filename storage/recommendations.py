"""Recommendations read from the interests the worker keeps (migration 0016, storage/interests.py).

For a user (``for_user``), candidates come from two sources, each scaled to at most 1 and blended:

- **neighbours** of the user's strongest products (``SEEDS``, weighted by the user's decayed interest):
  ``similarity(p, q) = together(p, q) / sqrt(popularity(p) * popularity(q))``, a cosine over decayed
  co-occurrence that keeps best-sellers from being everyone's neighbour. Reason "bought with P" when p and
  q were bought together, else "viewed with P" (p: the seed that gave q most);
- **buy again**: the user's own decayed purchases of each product, times ``buy_again_weight``.

Every weight is a forward-decayed logarithm with the same half-life, so ``2^(a - b)`` compares two of
them at any common time: no clock is read. When the user has nothing (unknown, erased, new) or opted out,
or has fewer than ``k`` candidates, the list is filled with what is popular in the user's top category
("popular in C"), then what is trending ("trending now"); ``personal`` says whether the user's own data
was used. For a product (``for_product``): its neighbours, then popular products of its category.
"""

from dataclasses import dataclass

from sqlalchemy import Connection, text

from spoor.storage.identities import canonical_key

SEEDS = 20  # the user's strongest products whose neighbours are candidates
NEIGHBOURS_PER_SEED = 50
MAX_K = 100
FLOOR = -1000.0


@dataclass(frozen=True)
class Blend:
    buy_again_weight: float = 1.0  # buy-again scores against neighbour scores (both scaled to at most 1)
    seeds: int = SEEDS


USER_INTERESTS = text("""
    SELECT facet, value, weight FROM user_interests WHERE user_key = :user_key AND facet IN ('product', 'bought')
    UNION ALL  -- a category weighs the user's summed interest in its products (migration 0020)
    SELECT 'category', c.category, spoor_log2_sum(i.weight)
      FROM user_interests i JOIN product_popularity c ON c.product_id = i.value
     WHERE i.user_key = :user_key AND i.facet = 'product' AND c.category IS NOT NULL
     GROUP BY c.category
""")
OPTED_OUT = text("SELECT opted_out FROM user_consent WHERE user_key = :user_key")
NEIGHBOURS = text("""
    SELECT s.product_id AS seed, a.neighbour_id, a.weight - (ps.weight + pn.weight) / 2 AS similarity,
           a.bought IS NOT NULL AS bought
      FROM unnest(CAST(:seeds AS text[])) AS s(product_id)
      JOIN product_popularity ps ON ps.product_id = s.product_id
     CROSS JOIN LATERAL (SELECT neighbour_id, weight, bought FROM product_affinity
                          WHERE product_id = s.product_id ORDER BY weight DESC LIMIT :per_seed) a
      JOIN product_popularity pn ON pn.product_id = a.neighbour_id
""")
POPULAR_IN = text("""
    SELECT product_id FROM product_popularity WHERE category = :category ORDER BY weight DESC LIMIT :k
""")
TRENDING = text("SELECT product_id FROM product_popularity ORDER BY trend DESC LIMIT :k")
PRODUCT_CATEGORY = text("SELECT category FROM product_popularity WHERE product_id = :product_id")


def _scaled(logs: dict[str, float]) -> dict[str, float]:
    """Forward-decayed logarithms as weights relative to the largest (1.0)."""
    if not logs:
        return {}
    top = max(logs.values())
    return {key: 2.0 ** max(FLOOR, value - top) for key, value in logs.items()}


def _fill(conn: Connection, items: list[dict], k: int, category: str | None, exclude: str | None = None) -> list[dict]:
    """``items`` topped up to ``k`` with the popular products of ``category``, then trending ones."""
    have = {item["product_id"] for item in items} | ({exclude} if exclude else set())
    sources = [(POPULAR_IN, {"category": category}, f"popular in {category}")] if category else []
    sources.append((TRENDING, {}, "trending now"))
    for query, params, reason in sources:
        if len(items) >= k:
            break
        ranked = conn.execute(query, {**params, "k": k + len(have)}).scalars().all()
        for place, product_id in enumerate(ranked):
            if len(items) >= k:
                break
            if product_id not in have:
                have.add(product_id)
                # Below every personal score (those are > 0 up to 2), by popularity rank.
                items.append({"product_id": product_id, "score": round(0.5 / (place + 1) * 1e-3, 9),
                              "reason": reason})
    return items


def for_user(conn: Connection, user_key: str, k: int = 10, blend: Blend = Blend()) -> dict:
    """The user's top ``k`` products (any of the user's ids finds them), best first."""
    k = max(1, min(k, MAX_K))
    key = canonical_key(conn, user_key) or user_key
    opted_out = bool(conn.execute(OPTED_OUT, {"user_key": key}).scalar())
    rows = [] if opted_out else conn.execute(USER_INTERESTS, {"user_key": key}).all()
    facets: dict[str, dict[str, float]] = {"product": {}, "bought": {}, "category": {}}
    for facet, value, weight in rows:
        facets[facet][value] = weight
    category = max(facets["category"], key=facets["category"].get) if facets["category"] else None
    seeds = _scaled(dict(sorted(facets["product"].items(), key=lambda kv: -kv[1])[:blend.seeds]))
    similar: dict[str, float] = {}
    via: dict[str, tuple[float, str]] = {}  # product -> (largest gain, its reason)
    if seeds:
        for seed, neighbour, similarity, bought in conn.execute(
                NEIGHBOURS, {"seeds": list(seeds), "per_seed": NEIGHBOURS_PER_SEED}):
            gain = seeds[seed] * 2.0 ** max(FLOOR, similarity)
            similar[neighbour] = similar.get(neighbour, 0.0) + gain
            if gain > via.get(neighbour, (0.0, ""))[0]:
                via[neighbour] = (gain, f"{'bought' if bought else 'viewed'} with {seed}")
    top = max(similar.values(), default=1.0)
    again = {p: blend.buy_again_weight * w for p, w in _scaled(facets["bought"]).items()}
    scores = {p: similar.get(p, 0.0) / top + again.get(p, 0.0) for p in similar.keys() | again.keys()}
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    items = [{"product_id": p, "score": round(s, 9),
              "reason": "buy again" if again.get(p, 0.0) >= similar.get(p, 0.0) / top else via[p][1]}
             for p, s in ranked]
    return {"user_key": user_key, "personal": bool(items), "items": _fill(conn, items, k, category)}


def for_product(conn: Connection, product_id: str, k: int = 10) -> dict:
    """Products seen or bought with ``product_id`` ("customers also bought"), best first."""
    k = max(1, min(k, MAX_K))
    rows = conn.execute(NEIGHBOURS, {"seeds": [product_id], "per_seed": max(k, NEIGHBOURS_PER_SEED)}).all()
    ranked = sorted(rows, key=lambda r: (-r.similarity, r.neighbour_id))[:k]
    top = ranked[0].similarity if ranked else 0.0
    items = [{"product_id": r.neighbour_id, "score": round(2.0 ** max(FLOOR, r.similarity - top), 9),
              "reason": f"{'bought' if r.bought else 'viewed'} with {product_id}"} for r in ranked]
    category = conn.execute(PRODUCT_CATEGORY, {"product_id": product_id}).scalar()
    return {"product_id": product_id, "items": _fill(conn, items, k, category, exclude=product_id)}
