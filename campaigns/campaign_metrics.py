"""Every Prometheus metric of ``spoor campaigns run`` (its loop's are in ``spoor.turn_loop``)."""

from prometheus_client import Counter

TRIGGERS = Counter("spoor_campaigns_triggers_total",
                   "Trigger messages read from Kafka, by outcome: stored, duplicate or rejected (dead-lettered).",
                   ["outcome"])
DELIVERIES = Counter("spoor_campaigns_deliveries_total",
                     "Dispatcher decisions: sent, retry, dead_letter, postpone, opted_out, capped, expired.",
                     ["outcome"])
ENQUEUED = Counter("spoor_campaigns_enqueued_total", "Audience episodes given a delivery row.")
COUNTERFACTUALS = Counter("spoor_campaigns_counterfactuals_total",
                          "Holdout episodes of campaigns with recommendations, by outcome: recorded (the list "
                          "the message would have carried), postpone, opted_out, capped, expired.",
                          ["outcome"])
