"""Read queries for people and tools (the demo summary, the benchmark, tests)."""

from sqlalchemy import Engine, text

SUMMARY_COUNTS = text("""
    SELECT (SELECT count(*) FROM events)        AS events_accepted,
           (SELECT count(*) FROM dead_letters)  AS events_rejected,
           (SELECT count(*) FROM user_profiles) AS users_profiled,
           (SELECT count(*) FROM user_profiles WHERE product_views > 0) AS viewers,
           (SELECT count(*) FROM user_profiles WHERE product_views > 0 AND cart_adds > 0) AS carted,
           (SELECT count(*) FROM user_profiles
             WHERE product_views > 0 AND cart_adds > 0 AND orders > 0) AS purchased,
           (SELECT coalesce(sum(revenue), 0) FROM user_profiles) AS revenue
""")

TOP_PRODUCTS = text("""
    SELECT product_id,
           count(*) FILTER (WHERE kind = 'product_view') AS views,
           count(*) FILTER (WHERE kind = 'cart_add')     AS cart_adds
      FROM events
     WHERE product_id IS NOT NULL
     GROUP BY product_id
     ORDER BY views DESC, cart_adds DESC, product_id
     LIMIT :limit
""")

REJECTION_REASONS = text("""
    SELECT coalesce(field, '-') AS field, reason, count(*) AS n
      FROM dead_letters GROUP BY 1, 2 ORDER BY n DESC LIMIT :limit
""")


def summary(engine: Engine, top: int = 5) -> dict:
    with engine.connect() as conn:
        counts = dict(conn.execute(SUMMARY_COUNTS).one()._mapping)
        counts["top_products"] = [dict(r._mapping) for r in conn.execute(TOP_PRODUCTS, {"limit": top})]
        counts["rejections"] = [dict(r._mapping) for r in conn.execute(REJECTION_REASONS, {"limit": top})]
    return counts


def count_events(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM events")).scalar_one()


def count_dead_letters(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM dead_letters")).scalar_one()
