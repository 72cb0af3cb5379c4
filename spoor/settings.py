"""All of Spoor's settings, read once at a process's entry point and passed down.

Every field can be set from the environment with the prefix ``SPOOR_``
(``SPOOR_KAFKA_BOOTSTRAP``, ``SPOOR_DATABASE_URL``, ...). The defaults match the
local stack that ``make up`` starts.

Each field's ``description`` is its documentation for users: docs/configuration.md is generated
from it (``python -m spoor.cli.config_doc > docs/configuration.md``), grouped by ``SETTINGS_GROUPS``
below; tests/unit/test_configuration_doc.py fails when the page and this file disagree.
"""

import json

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPOOR_", frozen=True)

    # Connections.
    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, `host:port`, comma-separated.")
    database_url: str = Field(
        "postgresql+psycopg2://spoor:spoor@127.0.0.1:5433/spoor",
        description="PostgreSQL database, as an SQLAlchemy URL (psycopg2 driver).")

    # Topics. Events are keyed by user key, so one user's events share a partition.
    events_topic: str = Field(
        "spoor.events",
        description="Canonical events, from the collector and from backend services producing directly; "
                    "keyed by user key, so one user's events share a partition.")
    dead_letter_topic: str = Field(
        "spoor.events.dlq",
        description="Bad rows (`spoor.bad_row/2`): events the collector or the worker rejected, with their "
                    "original payload; the worker copies them into the `dead_letters` table.")
    triggers_topic: str = Field(
        "spoor.triggers",
        description="Behavioural triggers (cart and browse abandonment, win-back), keyed by user key, "
                    "for campaigns to act on.")
    topic_partitions: int = Field(
        4, ge=1, description="Partitions of the events and triggers topics, when `spoor topics create` makes them.")
    topic_retention_ms: int = Field(
        7 * 24 * 3600 * 1000,
        description="Retention in milliseconds (7 days) of the alerts topic's base (it keeps 4 times as long); "
                    "the topics that carry shoppers' data keep `SPOOR_PERSONAL_TOPIC_RETENTION_HOURS`.")
    # The erasure deadline of the copies on Kafka (docs/privacy.md#erasure-reaches-every-copy).
    personal_topic_retention_hours: float = Field(
        72.0, gt=0, le=720,
        description="Retention of the topics that carry shoppers' data and are not compacted (events, dead "
                    "letters, triggers, segments, campaign dead letters), and the compaction bound of the "
                    "worker's changelogs: the erasure deadline of the copies on Kafka is this, plus one "
                    "segment (`segment.ms`: this or 1 hour, the smaller) and the broker's retention check "
                    "(5 min by default). `spoor topics create`, the worker and the runners apply it to "
                    "existing topics too. A stopped worker or runner loses records older than this.")

    # Collector (HTTP -> Kafka).
    collector_host: str = Field("127.0.0.1", description="Address the collector listens on.")
    collector_port: int = Field(
        8080, description="Port of the collector: the Segment HTTP Tracking API, `/healthz` and `/metrics`.")
    max_body_bytes: int = Field(
        512 * 1024, ge=1024,
        description="Largest request body, before and after gunzip (512 KiB; Segment's own batch limit is "
                    "500 KB); a larger one is answered 413.")
    max_batch_events: int = Field(
        2500, ge=1, description="Most messages in one batch request; more is answered 413.")
    max_event_bytes: int = Field(
        32 * 1024, ge=256,
        description="Largest single message as JSON (32 KiB, Segment's own per-event limit); a larger one is "
                    "a 400 for that message only, dead-lettered as a `size_violation`.")
    rate_limit_events_per_s: float = Field(
        50_000, gt=0,
        description="Events per second accepted per write key; beyond that (and the burst) the collector "
                    "answers 429 with `Retry-After`.")
    rate_limit_burst_events: int = Field(
        100_000, ge=1,
        description="Events a write key may send at once above its rate (the size of its token bucket).")
    kafka_delivery_timeout_ms: int = Field(
        15_000, ge=1000,
        description="How long the collector's producer tries to have a request's records acknowledged by "
                    "Kafka before the request is answered 503 with `Retry-After`.")
    write_key_refresh_s: float = Field(
        10.0, gt=0,
        description="How often the collector re-reads the write keys and their allowed origins: created, "
                    "revoked or changed keys take effect within this time.")
    # The worker holds direct records to the same bound, so no claimed time can move a watermark ahead.
    max_future_event_s: float = Field(
        300.0, ge=0,
        description="How far after its receipt an event's time may be, after Segment's `sentAt` clock "
                    "correction; later ones are rejected at the edge (400), and the worker holds records "
                    "produced to Kafka directly to the same bound against the broker's append time.")
    max_nesting_depth: int = Field(
        32, ge=2, le=250,
        description="How deep JSON may nest inside one message; deeper is a `size_violation`.")
    collector_public_url: str = Field(
        "",
        description="Public base URL of the collector (e.g. `https://collect.your.shop`), for the `apiHost` "
                    "of the settings document Segment's libraries fetch; empty: the request's own `Host` "
                    "header. Set it when a proxy or CDN might pass on another host.")

    # Worker (Kafka -> Faust tables -> PostgreSQL).
    worker_app_id: str = Field(
        "spoor-worker",
        description="Faust app id of the worker: its consumer group, and the prefix of its changelog "
                    "topics (`<app id>-*-changelog`).")
    worker_web_port: int = Field(
        6066,
        description="Port of the worker's `/healthz` and `/metrics`; the i-th worker that `make up` "
                    "starts uses this + i - 1.")
    worker_data_dir: str = Field(
        "/var/tmp/spoor/faust",
        description="Directory of the worker's table state with the RocksDB store; `make up` gives the "
                    "second and later workers this path + `-i`.")
    worker_batch_max: int = Field(
        2000, ge=1,
        description="Most records in one batch of the worker (a collector record holds one request's "
                    "events for one partition).")
    # The wait runs even when records are already queued: idle time in every batch cycle under load
    # (0.1 s before; measured in bench/README.md).
    worker_batch_within_s: float = Field(
        0.02, gt=0, description="How long the worker waits for a batch to fill once its first record arrived.")
    worker_session_timeout_s: float = Field(
        30.0, ge=6,
        description="A worker that died is noticed by its consumer group after this long; its partitions "
                    "then move to the others.")
    worker_stall_restart_s: float = Field(
        60.0, ge=0,
        description="A worker whose assigned partitions have records but whose commits stand still this "
                    "long restarts itself (`stream_processors/stall.py`, against faust-streaming issue "
                    "629); 0 turns the watchdog off.")
    worker_standby_replicas: int = Field(
        0, ge=0,
        description="Faust standby replicas: each worker also follows the others' changelogs, so a "
                    "failover needs no changelog replay, at the price of applying every table change "
                    "twice. 0 while the workers share one machine (two workers on one machine drained at 0.7 x "
                    "the rate with them, bench/README.md); 1 when workers run on several machines.")
    # A batch of table updates sends one ~1 KB changelog record per user, awaited before the batch's
    # ack. Without a linger each produce request carried ~2.8 records (measured), so the wait was
    # hundreds of sequential round trips.
    worker_producer_linger_ms: float = Field(
        5.0, ge=0, le=1000,
        description="How long the worker's producer (table changelogs, dead letters) waits to fill a "
                    "batch of records.")
    worker_producer_batch_bytes: int = Field(
        262144, ge=16384, le=1_000_000, description="Size limit of one batch of the worker's producer.")
    # Why Faust's 1,500 ms delayed every batch: stream_processors/kafka_transport.py.
    worker_fetch_max_wait_ms: int = Field(
        100, ge=1, le=1500,
        description="Longest a worker's fetch waits at the broker for data (Faust fixes 1,500 ms, which "
                    "idled the worker up to 1.5 s between batches).")
    worker_fetch_min_bytes: int = Field(
        1, ge=1, le=16 * 2**20,
        description="Data a worker's fetch waits for at the broker (up to `worker_fetch_max_wait_ms`) before it "
                    "is answered: more records per fetch under load, the wait's latency when traffic is light.")
    dedupe_window: int = Field(
        2500, ge=1,
        description="Recent event ids remembered per user, to count a redelivered event once (and order "
                    "ids, to count an order once); at least `max_batch_events`, so a retried request of "
                    "one user's events is recognised whole.")
    # The state's own bounds (stream_processors/profile.py, behaviour_triggers.py) keep real users far below.
    worker_max_state_bytes: int = Field(
        900_000, ge=16 * 1024, le=900_000,
        description="Largest packed state of one user (profile and behaviour): an event that would grow "
                    "it past this is dead-lettered as a `size_violation` (Faust's producer refuses "
                    "records over 1,000,000 bytes, which stopped the worker).")
    worker_max_consecutive_processing_errors: int = Field(
        200, ge=1,
        description="Records in a row that raised unexpectedly (processing errors, not schema "
                    "violations) after which the worker fail-stops instead of dead-lettering them: a bad "
                    "deploy turns every record into one.")
    identity_max_ids_per_user: int = Field(
        25, ge=1, le=1000,
        description="Most ids (anonymous ids of devices, aliases) joined to one user: a link past it is "
                    "refused and counted, so a shared or hostile id cannot merge thousands of shoppers "
                    "into one profile (docs/identity.md).")
    identity_denylist: list[str] = Field(
        ["null", "undefined", "none", "nil", "nan", "0", "-1", "anonymous", "unknown", "guest",
         "[object object]", "true", "false", "00000000-0000-0000-0000-000000000000"],
        description="Ids never joined to a user, compared case-insensitively: placeholders a broken client "
                    "sends for everyone. Events keyed by them still count, on a profile of their own.")

    # Consent per purpose (issue 24, docs/privacy.md#consent).
    consent_categories: dict[str, list[str]] = Field(
        {"analytics": ["analytics", "performance", "statistics"],
         "marketing": ["marketing", "advertising", "targeting"],
         "personalisation": ["personalisation", "personalization"]},
        description="The consent manager's category ids (keys of a message's context.consent.categoryPreferences) "
                    "that state each purpose: analytics, marketing, personalisation; compared case-insensitively. "
                    "A purpose none of whose categories a message names is not granted by it.")
    consent_refresh_s: float = Field(
        2.0, gt=0, le=300,
        description="How often the worker reads the consent recorded in user_consent since its last read: a "
                    "withdrawal by `spoor users consent` or the API holds for the person's events within this.")
    consent_book_max_users: int = Field(
        500_000, ge=1000, le=50_000_000,
        description="Users with a withdrawn purpose the worker holds in memory (~200 bytes each); past it, it "
                    "asks PostgreSQL once per batch for the batch's other users.")

    # Interests and recommendations (issue 22, docs/recommendations.md).
    interest_half_life_days: float = Field(
        30.0, ge=1, le=3650,
        description="Half-life of interests and product affinities: an event this many days old weighs half "
                    "as much as one now. Changing it applies to events from then on.")
    trending_half_life_days: float = Field(
        3.0, ge=0.05, le=365,
        description="Half-life of trending products (the fallback list of a category and of new users).")

    # The local demo (deploy/stack.sh reads it with `spoor config get`).
    demo_write_key: str = Field(
        "spoor-demo-write-key",
        description="The write key `make up` creates for the local demo and benchmarks: `make demo`, "
                    "`make bench` and `spoor replay` without `--write-key` send with it. Never for "
                    "production: the default is public; create production keys with `spoor keys create`.")

    # Segments and campaigns (segments/, campaigns/).
    segments_topic: str = Field(
        "spoor.segments", description="Segment entries and exits, keyed by user key.")
    campaigns_dead_letter_topic: str = Field(
        "spoor.campaigns.dlq",
        description="Bad rows of campaigns: deliveries that failed their last try, invalid trigger messages.")
    segments_poll_s: float = Field(
        5.0, gt=0,
        description="How often the incremental pass of `spoor segments run` looks for changed profiles.")
    segments_full_recompute_s: float = Field(
        900.0, gt=0,
        description="How often every active segment is recomputed in full; a segment with conditions on "
                    "time can lag by up to this.")
    segments_change_overlap_s: float = Field(
        10.0, ge=0,
        description="An incremental pass reads the changes since the previous pass's start or the oldest "
                    "transaction open then, whichever is older (`segments/membership.py`), minus this "
                    "margin.")
    attribution_window_days: int = Field(
        30, ge=1, le=365,
        description="Channel attribution (docs/attribution.md): an order is attributed to the person's sessions "
                    "that started this many days before it at most; the segments runner's pass keeps it.")
    segments_population_refresh_s: float = Field(
        300.0, ge=0,
        description="Segments on RFM scores depend on every user's values, so an incremental pass "
                    "recomputes them for everyone, at most this often (RFM moves over days; a full "
                    "population query every poll took ~0.7 of a core of PostgreSQL).")
    # Under heavy traffic a pass is long and its SQL competes with the worker for the same cores
    # (measured: bench/README.md).
    segments_max_busy_share: float = Field(
        0.25, gt=0, le=1,
        description="At most this share of the segments runner's time in SQL: after each statement of a "
                    "pass (one segment for up to 1,000 changed users, or one chunk of published "
                    "transitions) it idles (1 - share) / share times as long as the statement took (3 "
                    "times at 0.25), so PostgreSQL is loaded evenly instead of taking a whole core in "
                    "bursts while the worker needs it; 1 turns the pacing off.")
    campaigns_poll_s: float = Field(
        2.0, gt=0,
        description="How long `spoor campaigns run` waits for trigger messages in each turn of copying, "
                    "enqueueing and dispatching.")
    campaign_webhook_secret: str = Field(
        "",
        description="HMAC-SHA256 key of campaign webhook signatures (`X-Spoor-Signature`); required to send "
                    "webhooks: campaigns with one refuse to launch without it.")
    campaign_webhook_timeout_s: float = Field(5.0, gt=0, description="Timeout of one campaign webhook call.")
    campaign_default_time_zone: str = Field(
        "UTC", description="Time zone of quiet hours for users without one in `user_consent`.")
    audit_hmac_key: str = Field(
        "",
        description="Secret key (at least 32 characters: `openssl rand -hex 32`) of the HMAC-SHA256 that "
                    "`privacy_audit_log` keeps of an erased id instead of the id. Required: `spoor users erase` "
                    "fails and the admin API does not start without it. Keep it out of the database; changing "
                    "it makes earlier audit rows unmatchable by id.")
    erase_worker_wait_s: float = Field(
        60.0, ge=0,
        description="How long `spoor users erase` waits for the worker to read the user's erasure record; "
                    "it erases PostgreSQL and the changelogs either way, and a worker that was not "
                    "running reads the record when it runs.")
    admin_token: str = Field(
        "",
        description="Bearer token of the segments and campaigns HTTP API (`spoor segments api`); the API "
                    "refuses to start without it.")
    admin_api_host: str = Field("127.0.0.1", description="Address the admin HTTP API listens on.")
    admin_api_port: int = Field(8090, description="Port of the admin HTTP API.")
    admin_api_workers: int = Field(
        2, ge=1, le=64,
        description="Processes serving the admin API (each with its own recommendation caches). One answers "
                    "~300-400 recommendation requests per second on one core (docs/recommendations.md#serving).")
    admin_max_body_bytes: int = Field(
        1024 * 1024, ge=1024,
        description="Largest request body to the admin API, chunked or not (larger: 413).")
    webhook_allow_private_addresses: bool = Field(
        False,
        description="Allow campaign webhooks and Slack or generic alert webhooks to loopback, private, "
                    "link-local or other internal addresses (a test or an on-premises receiver); refused "
                    "otherwise. Redirects are never followed.")
    segments_web_port: int = Field(
        6070, description="Port of `/healthz` and `/metrics` of `spoor segments run` (0 = none).")
    campaigns_web_port: int = Field(
        6071, description="Port of `/healthz` and `/metrics` of `spoor campaigns run` (0 = none).")

    # Metric windows and alerts (stream_processors/metric_agent.py, alerts/).
    metric_lateness_s: float = Field(
        120.0, ge=0,
        description="A metric window closes this long (event time) after its end: a partition's watermark "
                    "is its newest event time minus this; later events are not in the metrics.")
    metric_idle_partition_s: float = Field(
        10.0, ge=0,
        description="A partition with nothing to read for this long follows the newest partition, so it "
                    "stops holding windows open.")
    alerts_enabled: bool = Field(
        True,
        description="Judge the alert rules and send notifications, in the worker that owns partition 0 of "
                    "the events topic.")
    alerts_topic: str = Field(
        "spoor.alerts", description="Alert transitions (`spoor.alert/1` JSON), keyed by fingerprint.")
    alert_rules_path: str = Field(
        "",
        description="Alert rules file, re-read when its modification time changes; empty: "
                    "`alerts/rules.yaml` in the package.")
    alert_eval_interval_s: float = Field(1.0, gt=0, description="Interval of the alert evaluator's timer.")
    alertmanager_url: str = Field(
        "", description="Prometheus Alertmanager to notify, e.g. `http://127.0.0.1:9093`; empty: no such notifier.")
    alert_slack_webhook_url: str = Field(
        "", description="Slack-compatible incoming webhook to notify; empty: no such notifier.")
    alert_webhook_url: str = Field(
        "",
        description="Generic JSON webhook to notify, with the `spoor.alert/1` document, signed; empty: no "
                    "such notifier.")
    alert_webhook_secret: str = Field(
        "",
        description="HMAC-SHA256 key of the generic alert webhook's signature; required with its URL (a "
                    "worker with the URL and no secret does not start).")
    alert_notify_attempts: int = Field(
        5, ge=1, le=20,
        description="Attempts to send one alert notification (exponential backoff from 0.5 s) before it is "
                    "given up.")
    alert_drain_s: float = Field(
        5.0, ge=0,
        description="On SIGTERM, the worker waits this long to send pending notifications; the rest stay in "
                    "`alert_notifications` for the next worker.")
    worker_web_host: str = Field(
        "127.0.0.1",
        description="Address of the worker's `/healthz` and `/metrics`: `0.0.0.0` in a container, so "
                    "Prometheus can scrape them.")

    # Behaviour analytics: sessions, rolling windows, funnels, triggers (docs/analytics.md).
    worker_store: str = Field(
        "rocksdb://",
        description="Faust table store: `rocksdb://` (RocksDB through rocksdict, under `worker_data_dir`, "
                    "kept across restarts) or `memory://` (state in memory only, restored from the "
                    "changelog at each start).")
    analytics_enabled: bool = Field(
        True, description="Sessions, rolling windows and behavioural triggers, folded by the worker.")
    session_inactivity_s: float = Field(
        1800.0, gt=0,
        description="A gap between a user's events longer than this starts a new session (events without "
                    "a client session id).")
    session_lateness_s: float = Field(
        6 * 3600.0, ge=0,
        description="How far behind the user's latest event an event may be and still be placed in a "
                    "session.")
    trigger_lateness_s: float = Field(
        300.0, ge=0,
        description="A partition's watermark is its latest event time minus this; a trigger or lifecycle "
                    "deadline is due when the watermark passes it.")
    trigger_idle_advance_s: float = Field(
        0.0, ge=0,
        description="When above 0, a partition without events for this long moves its watermark on with "
                    "the wall clock (quiet hours in production); 0: off, no clock is read.")
    cart_abandonment_delay_s: float = Field(
        3600.0, gt=0, description="A cart abandonment fires this long after the last cart add without an order.")
    browse_abandonment_views: int = Field(
        3, ge=1,
        description="Views of one product, with no cart add of it, that open a browse-abandonment episode.")
    browse_abandonment_delay_s: float = Field(
        3600.0, gt=0, description="A browse abandonment fires this long after the last view of the product.")
    win_back_after_days: float = Field(
        30.0, gt=0, description="A win-back fires this many days after the user's latest event.")

    # Retention (docs/privacy.md#retention): enforced by `spoor retention run` and the segments runner.
    retention_events_days: int = Field(
        395, ge=31, le=36500,
        description="Days an event is kept in `events` (13 months: a year to compare with, and a month to "
                    "spare). Whole months are dropped: an event goes between this and this plus one month after "
                    "its time. At least 31 (the 30-day windows read events).")
    retention_dead_letters_days: int = Field(
        28, ge=1, le=36500,
        description="Days a dead letter (the rejected payload, personal data included) is kept in "
                    "`dead_letters`; whole days are dropped, so one goes between this and one day more after "
                    "its receipt.")
    retention_sessions_days: int = Field(
        395, ge=31, le=36500,
        description="Days a session (and its journey) is kept in `sessions` after it started. Whole months are "
                    "dropped, once the sessions of a month can no longer be updated (the inactivity and lateness "
                    "windows): a session goes between this and this plus a month and a few hours after its start.")
    retention_deliveries_days: int = Field(
        730, ge=31, le=36500,
        description="Days a campaign delivery (and its attempts) is kept in `campaign_deliveries` after its "
                    "episode was triggered; whole months are dropped. Two years: the frequency caps and lift "
                    "reports read them. The campaigns runner enqueues no episode older than this (its delivery "
                    "may have gone: it would be sent again).")
    retention_order_attribution_days: int = Field(
        395, ge=31, le=36500,
        description="Days the channel attribution of an order or refund is kept in `order_attribution` after "
                    "the conversion's time; whole months are dropped. As the events it is computed from: "
                    "the segments runner attributes a person's orders again from `events`.")
    retention_interval_s: float = Field(
        3600.0, ge=60, le=86400,
        description="How often the segments runner runs the retention job (partitions made ahead, expired "
                    "ones dropped).")

    @model_validator(mode="after")
    def _retries_are_recognised(self) -> "Settings":
        # A client's retry of a full request must fall inside the worker's dedupe window.
        if self.dedupe_window < self.max_batch_events:
            raise ValueError(f"SPOOR_DEDUPE_WINDOW ({self.dedupe_window}) must be at least SPOOR_MAX_BATCH_EVENTS "
                             f"({self.max_batch_events}), or a retried request of one user is counted twice")
        return self

    @model_validator(mode="after")
    def _consent_purposes_are_known(self) -> "Settings":
        unknown = set(self.consent_categories) - {"analytics", "marketing", "personalisation"}
        if unknown:
            raise ValueError(f"SPOOR_CONSENT_CATEGORIES: unknown purposes {sorted(unknown)} "
                             "(analytics, marketing, personalisation)")
        return self


def env_value(value) -> str:
    """A setting's value as its environment variable spells it (pydantic-settings reads it back the same)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):  # complex values are read as JSON
        return json.dumps(value)
    return str(value)


def environment(settings: Settings) -> dict[str, str]:
    """Every setting as the ``SPOOR_`` variable that reads back to it: the environment of a child process."""
    return {f"SPOOR_{name.upper()}": env_value(value) for name, value in settings.model_dump().items()}


# How docs/configuration.md groups the settings: (first field, title, what the group is), in the
# order of the fields above; a group runs to the next group's first field.
SETTINGS_GROUPS: tuple[tuple[str, str, str], ...] = (
    ("kafka_bootstrap", "Connections", "Where Kafka and PostgreSQL are."),
    ("events_topic", "Topics", "Created by `spoor topics create` (run by `make up`); the broker never "
                               "auto-creates them."),
    ("collector_host", "Collector", "The HTTP collector (`spoor collector`): Segment's Tracking API to Kafka."),
    ("worker_app_id", "Worker", "The Faust worker (`spoor worker`): Kafka to its tables to PostgreSQL."),
    ("demo_write_key", "Local demo", "The local stack of `make up`: its demo, `spoor replay` and the benchmarks."),
    ("segments_topic", "Segments and campaigns", "`spoor segments run`, `spoor campaigns run`, "
                                                 "`spoor segments api` and `spoor users erase`."),
    ("metric_lateness_s", "Metric windows and alerts", "Windowed business metrics and alerts, in the worker."),
    ("worker_store", "Behaviour analytics", "Sessions, rolling windows, funnels and triggers, in the worker."),
    ("retention_events_days", "Retention", "How long each store keeps rows (`spoor retention run`, and the "
                                           "segments runner every `SPOOR_RETENTION_INTERVAL_S`)."),
)
