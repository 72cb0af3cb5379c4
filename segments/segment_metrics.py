"""Every Prometheus metric of ``spoor segments run`` (its loop's are in ``spoor.turn_loop``)."""

from prometheus_client import Counter, Gauge, Histogram

TRANSITIONS = Counter("spoor_segments_transitions_total", "Segment entries and exits recorded.", ["change"])
PASSES = Counter("spoor_segments_passes_total", "Membership passes, by kind: incremental or full.", ["kind"])
CHANGED_USERS = Counter("spoor_segments_changed_users_total", "Changed users re-evaluated by incremental passes.")
PUBLISHED = Counter("spoor_segments_published_total", "Enter/exit records acknowledged by Kafka.")
SEGMENT_FAILURES = Counter("spoor_segments_refresh_failures_total",
                           "Segment refreshes skipped because of the segment itself (its definition or its "
                           "statement), the others going on; the reason is in segments.error.")
FAILING_SEGMENTS = Gauge("spoor_segments_failing", "Segments whose last refresh failed because of the segment itself.")
DELTAS_WAITING = Gauge("spoor_segments_product_deltas_waiting",
                       "Product popularity and affinity rows the workers appended that the turn's fold took in "
                       "(what was waiting for it), by table.", ["table"])
DELTAS_FOLDED = Counter("spoor_segments_product_deltas_folded_total",
                        "Product popularity and affinity rows the workers appended, folded into the product "
                        "tables, by table.", ["table"])
FOLD_SECONDS = Histogram("spoor_segments_product_fold_seconds",
                         "Duration of a turn's fold of the product deltas (one transaction).",
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
