"""Every Prometheus metric the collector exports, in one place."""

from prometheus_client import Counter, Histogram

REQUESTS = Counter("spoor_collector_requests_total", "HTTP requests answered, by endpoint and status code.",
                   ["endpoint", "status"])
EVENTS = Counter("spoor_collector_events_total",
                 "Events received, by outcome: accepted (acked by Kafka) or rejected (dead-lettered).",
                 ["outcome"])
REQUEST_SECONDS = Histogram("spoor_collector_request_seconds", "Request latency, receipt to answer.",
                            ["endpoint"], buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
BATCH_EVENTS = Histogram("spoor_collector_batch_events", "Events per request.",
                         buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500))
KAFKA_FAILURES = Counter("spoor_collector_kafka_failures_total",
                         "Requests answered 503 because Kafka did not acknowledge every record.")
