"""All of Spoor's settings, read once at a process's entry point and passed down.

Every field can be set from the environment with the prefix ``SPOOR_``
(``SPOOR_KAFKA_BOOTSTRAP``, ``SPOOR_DATABASE_URL``, ...). The defaults match the
local stack that ``make up`` starts.
"""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPOOR_", frozen=True)

    kafka_bootstrap: str = "127.0.0.1:9092"
    database_url: str = "postgresql+psycopg2://spoor:spoor@127.0.0.1:5433/spoor"

    # Topics. Events are keyed by user key, so one user's events share a partition.
    events_topic: str = "spoor.events"
    dead_letter_topic: str = "spoor.events.dlq"
    # Behavioural triggers (cart/browse abandonment, win-back) for campaigns to act on.
    triggers_topic: str = "spoor.triggers"
    topic_partitions: int = Field(4, ge=1)
    topic_retention_ms: int = 7 * 24 * 3600 * 1000

    # Collector (HTTP -> Kafka).
    collector_host: str = "127.0.0.1"
    collector_port: int = 8080
    max_body_bytes: int = Field(512 * 1024, ge=1024)  # Segment's own batch limit is 500 KB
    max_batch_events: int = Field(2500, ge=1)
    max_event_bytes: int = Field(32 * 1024, ge=256)  # Segment's own per-event limit
    rate_limit_events_per_s: float = Field(50_000, gt=0)  # per write key
    rate_limit_burst_events: int = Field(100_000, ge=1)
    kafka_delivery_timeout_ms: int = Field(15_000, ge=1000)
    write_key_refresh_s: float = Field(10.0, gt=0)
    # An event may claim a time at most this far after its receipt (after Segment's sentAt clock
    # correction); later ones are rejected at the edge, and the worker holds direct records to the
    # same bound against the broker's append time, so no claimed time can move a watermark ahead.
    max_future_event_s: float = Field(300.0, ge=0)
    max_nesting_depth: int = Field(32, ge=2, le=250)  # JSON nesting inside one message
    # Public base URL of the collector for Segment's settings document (`apiHost`); empty: the
    # request's own Host header.
    collector_public_url: str = ""

    # Worker (Kafka -> Faust tables -> PostgreSQL).
    worker_app_id: str = "spoor-worker"
    worker_web_port: int = 6066
    worker_data_dir: str = "/var/tmp/spoor/faust"
    worker_batch_max: int = Field(2000, ge=1)  # records; a collector record holds a request's events
    # Faust waits this long for a batch to fill even when records are already queued: it is idle
    # time in every batch cycle under load (0.1 s before; see README, Benchmark).
    worker_batch_within_s: float = Field(0.02, gt=0)
    # A worker that died is noticed by the group after this long; its partitions then move.
    worker_session_timeout_s: float = Field(30.0, ge=6)
    # A worker whose assigned partitions have records but whose commits stand still this long
    # restarts itself (stream_processors/stall.py); 0 turns the watchdog off.
    worker_stall_restart_s: float = Field(60.0, ge=0)
    # Faust standby replicas: each worker also follows the others' changelogs, so a failover needs
    # no replay, at the price of applying every table change twice. Off: `make up`'s workers share
    # one machine (measured: README, Benchmark); 1 for workers on several machines.
    worker_standby_replicas: int = Field(0, ge=0)
    # The worker's producer (table changelogs, dead letters): a batch of table updates sends one ~1 KB
    # changelog record per user, awaited before the batch's ack. Without a linger each produce
    # request carried ~2.8 records (measured), so the wait was hundreds of sequential round trips.
    worker_producer_linger_ms: float = Field(5.0, ge=0, le=1000)
    worker_producer_batch_bytes: int = Field(262144, ge=16384, le=1_000_000)
    # Longest a consumer fetch waits at the broker for data (Faust's own is 1500 ms; see
    # stream_processors/kafka_transport.py for why that delayed every batch by up to 1.5 s).
    worker_fetch_max_wait_ms: int = Field(100, ge=1, le=1500)
    # How many recent event ids per user are remembered to count a redelivered event once; at
    # least max_batch_events, so a retried request of one user's events is recognised whole.
    dedupe_window: int = Field(2500, ge=1)
    # An event that would grow a user's packed state (profile + behaviour) past this is dead-lettered
    # (size_violation): Faust's producer refuses records over 1,000,000 bytes, which stopped the worker.
    # The state's own bounds (stream_processors/profile.py, triggers.py) keep real users far below.
    worker_max_state_bytes: int = Field(900_000, ge=16 * 1024, le=900_000)
    # A bad deploy turns every record into a processing error: past this many in a row (records
    # that raised unexpectedly, not schema violations) the worker fail-stops instead.
    worker_max_consecutive_processing_errors: int = Field(200, ge=1)

    # Replay (`spoor replay`): the write key `make up` creates, used when none is given.
    demo_write_key: str = "spoor-demo-write-key"

    # Segments and campaigns (segments/).
    segments_topic: str = "spoor.segments"  # enter/exit messages, keyed by user key
    campaigns_dead_letter_topic: str = "spoor.campaigns.dlq"  # deliveries that failed their last try
    segments_poll_s: float = Field(5.0, gt=0)  # how often the incremental pass looks for changed profiles
    segments_full_recompute_s: float = Field(900.0, gt=0)  # scheduled full recompute of every active segment
    # A pass reads changes from the previous pass's start or the oldest transaction open then,
    # whichever is older (segments/membership.py), minus this margin.
    segments_change_overlap_s: float = Field(10.0, ge=0)
    # Segments on RFM scores depend on every user, so an incremental pass recomputes them for
    # everyone: at most this often (a full population query every poll took ~0.7 core of PostgreSQL).
    segments_population_refresh_s: float = Field(300.0, ge=0)
    # At most this share of wall time in incremental passes: after a pass that took t seconds the
    # runner waits at least t * (1 - share) / share. Under heavy traffic a pass is long and its SQL
    # competes with the worker for the same cores (measured: README, Benchmark); 1 turns this off.
    segments_max_busy_share: float = Field(0.25, gt=0, le=1)
    campaigns_poll_s: float = Field(2.0, gt=0)
    campaign_webhook_secret: str = ""  # HMAC-SHA256 key for webhook signatures; required to send webhooks
    campaign_webhook_timeout_s: float = Field(5.0, gt=0)
    campaign_default_time_zone: str = "UTC"  # for quiet hours of users without a time zone in user_consent
    # `spoor users erase` waits this long for the worker to read the user's erasure record (it still
    # erases PostgreSQL and the changelogs after that; the worker reads the record when it runs).
    erase_worker_wait_s: float = Field(60.0, ge=0)
    admin_token: str = ""  # bearer token of the segments/campaigns HTTP API; the API refuses to start without it
    admin_api_host: str = "127.0.0.1"
    admin_api_port: int = 8090
    admin_max_body_bytes: int = Field(1024 * 1024, ge=1024)  # a request body to the admin API
    # Webhooks (campaigns, alerts) to loopback, private or link-local addresses are refused unless
    # this is set (a test or an on-premises receiver); redirects are never followed.
    webhook_allow_private_addresses: bool = False
    segments_web_port: int = 6070  # /healthz and /metrics of `spoor segments run` (0 = none)
    campaigns_web_port: int = 6071  # the same for `spoor campaigns run`
    # Metric windows and alerts (stream_processors/metric_agent.py, alerts/).
    metric_lateness_s: float = Field(120.0, ge=0)  # a window closes this long (event time) after its end
    metric_idle_partition_s: float = Field(10.0, ge=0)  # then a partition with nothing to read stops holding windows
    alerts_enabled: bool = True
    alerts_topic: str = "spoor.alerts"
    alert_rules_path: str = ""  # empty: alerts/rules.yaml in the package
    alert_eval_interval_s: float = Field(1.0, gt=0)
    alertmanager_url: str = ""  # e.g. http://127.0.0.1:9093; empty: no such notifier
    alert_slack_webhook_url: str = ""
    alert_webhook_url: str = ""
    alert_webhook_secret: str = ""  # HMAC-SHA256 key of the generic webhook's signature; required with its URL
    alert_notify_attempts: int = Field(5, ge=1, le=20)
    alert_drain_s: float = Field(5.0, ge=0)  # on SIGTERM, wait this long for queued notifications
    worker_web_host: str = "127.0.0.1"  # 0.0.0.0 in a container, so Prometheus can scrape /metrics

    # Behaviour analytics: sessions, rolling windows, funnels, triggers (README "Behaviour analytics").
    worker_store: str = "rocksdb://"  # Faust table store; "memory://" keeps state in memory only
    analytics_enabled: bool = True
    session_inactivity_s: float = Field(1800.0, gt=0)
    session_lateness_s: float = Field(6 * 3600.0, ge=0)  # how late an event may be and still be sessionised
    trigger_lateness_s: float = Field(300.0, ge=0)  # watermark = latest event time of a partition minus this
    # > 0: a partition without events for this long moves its watermark on with the wall clock.
    trigger_idle_advance_s: float = Field(0.0, ge=0)
    cart_abandonment_delay_s: float = Field(3600.0, gt=0)
    browse_abandonment_views: int = Field(3, ge=1)
    browse_abandonment_delay_s: float = Field(3600.0, gt=0)
    win_back_after_days: float = Field(30.0, gt=0)
