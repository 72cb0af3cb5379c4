"""Every Prometheus metric the worker exports, in one place."""

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("spoor_worker_events_total",
                 "Events read from the events topic, by outcome: applied, duplicate (same event id "
                 "seen before for that user), invalid (dead-lettered), erased (read in the same batch "
                 "as, and before, the user's erasure record), forwarded (an id joined to a user: sent on "
                 "to the user's partition, counted there), withheld (no analytics consent: in the metric windows "
                 "only, consent_gate.py).", ["outcome"])
BATCH_EVENTS = Histogram("spoor_worker_batch_events", "Events per processed batch.",
                         buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000))
WRITE_SECONDS = Histogram("spoor_worker_write_seconds", "Time to write one batch to PostgreSQL.",
                          buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
WRITE_FAILURES = Counter("spoor_worker_write_failures_total", "Batch writes to PostgreSQL that failed.")
FRESHNESS_SECONDS = Histogram("spoor_worker_freshness_seconds",
                              "Collector receipt to the aggregate being committed in PostgreSQL.",
                              buckets=(.05, .1, .25, .5, 1, 2, 5, 10, 30, 60, 300))
DEAD_LETTERS = Counter("spoor_worker_dead_letters_total", "Bad rows stored in PostgreSQL.")
ERASURES = Counter("spoor_worker_erasures_total", "Erasure records applied (a user's state and rows removed).")
IDENTITY_LINKS = Counter("spoor_worker_identity_links_total",
                         "Ids joined to a user (docs/identity.md), by outcome: linked (seen on the user's event), "
                         "claimed (on the id's partition), refused (denylist, cap, claimed by another user).",
                         ["outcome"])
IDENTITY_MERGES = Counter("spoor_worker_identity_merges_total",
                          "Merge records read: merged (an id's state folded into its user's) or duplicate.",
                          ["outcome"])
BAD_RECORDS = Counter("spoor_worker_bad_records_total",
                      "Records or events the worker dead-lettered instead of processing, by failure type: "
                      "schema_violation, size_violation, parse_error, processing_error (a step raised), "
                      "future_time (later than the record's arrival in Kafka allows).", ["failure_type"])
SKIPPED_RECORD_REPAIRS = Counter("spoor_worker_skipped_record_repairs_total",
                                 "Holes in a partition's offsets left by the consumer; each restarts the worker process.")
# Behaviour analytics.
SESSION_TOO_LATE = Counter("spoor_worker_session_too_late_events_total",
                           "Events later than SPOOR_SESSION_LATENESS_S behind their user's latest event: "
                           "counted in profiles and windows, not placed in a session.")
TRIGGERS = Counter("spoor_worker_triggers_total", "Behavioural trigger messages delivered (Kafka and PostgreSQL).")
ADVANCE_SECONDS = Histogram("spoor_worker_trigger_advance_seconds",
                            "Time per batch to fire the triggers due at the watermarks (and to rebuild the "
                            "timer index after an assignment).", buckets=(.001, .005, .01, .05, .1, .5, 1, 5, 30))
TIMER_INDEX_REBUILDS = Counter("spoor_worker_timer_index_rebuilds_total",
                               "Rebuilds of the trigger timer index from the table after an assignment.")

# Business-metric windows (stream_processors/metric_agent.py).
METRIC_WINDOW_END = Gauge("spoor_metric_window_end_timestamp_seconds",
                          "Event-time end of the latest closed metric window, by resolution.", ["resolution"])
METRIC_WINDOWS_WRITTEN = Counter("spoor_metric_window_rows_total",
                                 "Metric window rows written to PostgreSQL (one per window, dimension, partition).")
METRIC_LATE_EVENTS = Gauge("spoor_metric_late_events",
                           "Events that arrived after their 1-minute window had closed (not in the metrics), "
                           "since the worker started.")
CONSUMER_LAG = Gauge("spoor_worker_consumer_lag_records",
                     "Records of an assigned partition not yet committed by the worker's consumer group "
                     "(high watermark minus committed offset).", ["topic", "partition"])
EVENT_TIME_LAG = Gauge("spoor_metric_event_time_lag_seconds",
                       "Wall clock minus the newest event time folded into metric windows (stream freshness).")

# Python's garbage collector stops the event loop; a full collection walks every live object.
GC_PAUSE_SECONDS = Histogram("spoor_worker_gc_pause_seconds", "Pauses of Python's garbage collector, by generation.",
                             ["generation"], buckets=(.001, .005, .01, .05, .1, .25, .5, 1, 2.5))
