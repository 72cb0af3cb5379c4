"""Every Prometheus metric of ``spoor segments run`` and ``spoor campaigns run``, in one place."""

from prometheus_client import Counter, Gauge

TRANSITIONS = Counter("spoor_segments_transitions_total", "Segment entries and exits recorded.", ["change"])
PASSES = Counter("spoor_segments_passes_total", "Membership passes, by kind: incremental or full.", ["kind"])
CHANGED_USERS = Counter("spoor_segments_changed_users_total", "Changed users re-evaluated by incremental passes.")
PUBLISHED = Counter("spoor_segments_published_total", "Enter/exit records acknowledged by Kafka.")
TRIGGERS = Counter("spoor_campaigns_triggers_total",
                   "Trigger messages read from Kafka, by outcome: stored, duplicate or rejected (dead-lettered).",
                   ["outcome"])
DELIVERIES = Counter("spoor_campaigns_deliveries_total",
                     "Dispatcher decisions: sent, retry, dead_letter, postpone, opted_out, capped, expired.",
                     ["outcome"])
ENQUEUED = Counter("spoor_campaigns_enqueued_total", "Audience episodes given a delivery row.")
SEGMENT_FAILURES = Counter("spoor_segments_refresh_failures_total",
                           "Segment refreshes skipped because of the segment itself (its definition or its "
                           "statement), the others going on; the reason is in segments.error.")
FAILING_SEGMENTS = Gauge("spoor_segments_failing", "Segments whose last refresh failed because of the segment itself.")
TURN_FAILURES = Counter("spoor_segments_turn_failures_total",
                        "Loop turns that failed on PostgreSQL or Kafka and were retried after a pause.", ["process"])
LAST_TURN = Gauge("spoor_segments_last_successful_turn_timestamp_seconds",
                  "Unix time of the last loop turn that completed.", ["process"])
