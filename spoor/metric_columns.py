"""The columns of ``metric_windows``: what the worker counts per window, the table stores and the
alerts evaluate. Distinct counts (``active_users``, ``sessions``, ``viewers``...) add up across
partitions because events are partitioned by user."""

RESOLUTIONS = {"1m": 60, "5m": 300, "60m": 3600}

# Columns of metric_windows holding additive counts, in the order of the table.
COUNTS = ("events", "page_views", "product_views", "clicks", "cart_adds", "cart_removes", "checkouts",
          "orders", "identifies", "custom_events", "active_users", "sessions", "viewers", "carters",
          "buyers", "dead_letters", "collector_rejects", "refunds")
AMOUNTS = ("revenue",)
