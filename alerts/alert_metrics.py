"""Every Prometheus metric the alerts package exports, in one place."""

from prometheus_client import Counter, Gauge

NOTIFICATIONS = Counter("spoor_alert_notifications_total",
                        "Alert notifications by notifier and outcome: sent, retried, failed (gave up after "
                        "retries), overflow (queue full).", ["notifier", "outcome"])
TRANSITIONS = Counter("spoor_alert_transitions_total", "Alert lifecycle transitions, by rule and new status.",
                      ["rule_id", "status"])
WINDOWS_EVALUATED = Counter("spoor_alert_windows_evaluated_total",
                            "Complete metric windows judged by the alert rules, by resolution.", ["resolution"])
EVALUATION_FAILURES = Counter("spoor_alert_evaluation_failures_total",
                              "Evaluation rounds that failed (retried from the stored cursor).")
FIRING = Gauge("spoor_alerts_firing", "Alerts currently firing, by severity.", ["severity"])
RULES_RELOADS = Counter("spoor_alert_rules_reloads_total", "Rules file reloads, by outcome (loaded, invalid).",
                        ["outcome"])
EVALUATED_UNTIL = Gauge("spoor_alert_evaluated_until_timestamp_seconds",
                        "End (event time) of the newest metric window judged, by resolution.", ["resolution"])
BUSINESS_METRIC = Gauge("spoor_business_metric",
                        "Value of a business metric in the latest complete event-time window (all partitions), "
                        "by metric, dimension (global, source:<s>, category:<c>) and resolution (1m, 5m, 60m). "
                        "Counts are per window; revenue in the shop's currency; rates are 0..1.",
                        ["metric", "dimension", "resolution"])
