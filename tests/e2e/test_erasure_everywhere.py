"""Proof that erasure reaches every copy (issue 24, items 2 and 5), on the real stack: collector, worker,
segments and campaigns runners, Kafka and PostgreSQL.

A shopper browses anonymously, logs in (traits: e-mail, name), views a product three times without
buying it (a browse-abandonment trigger, which a campaign sends to a webhook), sends one message the
collector refuses (a dead letter carrying her ids and e-mail), buys something else (a segment of buyers).
Another shopper does much the same and must keep everything. Then `spoor users erase` is given the
shopper's *anonymous* id, and the test looks for her ids, e-mail, name and the plain SHA-256 of each:

- PostgreSQL, at once: every column of a text or JSON type of every table, partition, view and
  materialized view in the catalogue (none named here, so tables added later are searched too).
- Kafka: every topic of this test's run, read from the beginning (keys, values, headers). What the
  test proves there is a *deadline*, not an instant: the events, dead-letter, triggers, segments and
  campaign dead-letter topics cannot be compacted, so their guarantee is their retention
  (SPOOR_PERSONAL_TOPIC_RETENTION_HOURS); the worker's changelogs are compacted after the erasure's
  tombstones, within the same bound. To see it within a test, the topics are made with a retention of
  20 seconds (segments as short) instead of the default 72 hours, and the test waits for the deadline
  the erasure reported (retention + one segment + the broker's retention check: 340 s at most, about
  100 s on the local stack, which checks every minute), while other shoppers keep shopping, as in a
  live shop: compaction only cleans segments the broker has rolled, and it rolls them on writes.
  Records of everyone are gone from the retention-bound topics then; in the changelogs, the other
  shopper's latest state is still there while the erased shopper's is gone.

- The worker's local RocksDB files (SST, write-ahead logs, MANIFEST, LOG, every file under
  SPOOR_WORKER_DATA_DIR, read as raw bytes, keys in hex too as RocksDB's LOG prints them), at once:
  the worker compacts the databases of the erased keys before it acknowledges the erasure record.
  Before the erasure her ids are there (the write-ahead log holds every value written).

Not searched: the webhook receiver (a recipient outside Spoor: the erasure reports it).
"""

import hashlib
import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient
from sqlalchemy import text

from spoor.cli.collector_client import CollectorClient
from spoor.privacy.erasure import audit_hash
from spoor.topics import create_segment_topics, create_topics, erasure_deadline_s, partition_for
from tests.support.local_stack import REPO, SpoorProcess, free_port, run_id, wait_until
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
RETENTION_S = 20
SECRET = "erasure-e2e-webhook-secret"

# Every relation of the public schema and its columns of a text or JSON type (arrays of them too).
TEXT_COLUMNS = text("""
    SELECT c.relname::text, array_agg(a.attname::text ORDER BY a.attnum)
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      JOIN pg_type t ON t.oid = a.atttypid
      LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = 'A'
     WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm')
       AND (t.typcategory = 'S' OR t.typname IN ('json', 'jsonb') OR e.typcategory = 'S'
            OR e.typname IN ('json', 'jsonb'))
     GROUP BY c.relname ORDER BY c.relname""")


@pytest.fixture(scope="module")
def settings(test_settings):
    """Topics of this run with a 20 s retention (the erasure deadline made short enough to wait for)."""
    run = run_id()
    settings = test_settings.model_copy(update={
        **{name: f"spoor.erasure-{run}.{suffix}" for name, suffix in (
            ("events_topic", "events"), ("dead_letter_topic", "events.dlq"), ("triggers_topic", "triggers"),
            ("alerts_topic", "alerts"), ("segments_topic", "segments"), ("campaigns_dead_letter_topic", "cdlq"))},
        "worker_app_id": f"spoor-erasure-{run}", "personal_topic_retention_hours": RETENTION_S / 3600,
        "collector_port": free_port(), "worker_web_port": free_port(), "segments_web_port": free_port(),
        "campaigns_web_port": free_port(), "campaign_webhook_secret": SECRET, "webhook_allow_private_addresses": True,
        "segments_poll_s": 0.5, "campaigns_poll_s": 0.5, "browse_abandonment_views": 3,
        "browse_abandonment_delay_s": 1.0, "trigger_lateness_s": 0.0, "cart_abandonment_delay_s": 86400.0,
        "erase_worker_wait_s": 90.0})
    create_topics(settings)
    create_segment_topics(settings)
    return settings


@pytest.fixture(scope="module")
def stack(settings, engine, write_key, tmp_path_factory):
    """The collector reads the write keys at start (then every SPOOR_WRITE_KEY_REFRESH_S): the test's is made first."""
    log_dir = tmp_path_factory.mktemp("erasure-logs")
    processes = []
    try:
        for command, port, argv in (("collector", settings.collector_port, ()),
                                    ("worker", settings.worker_web_port, ()),
                                    ("segments", settings.segments_web_port, ("run",)),
                                    ("campaigns", settings.campaigns_web_port, ("run",))):
            process = SpoorProcess(command, settings, log_dir)
            if argv:  # `spoor segments run`: SpoorProcess starts `spoor <command>`
                log = open(process.log_path, "ab")
                process.process = subprocess.Popen([sys.executable, "-m", "spoor.cli", command, *argv], cwd=REPO,
                                                   env=process.env(), stdout=log, stderr=subprocess.STDOUT)
                wait_until(lambda p=process, u=f"http://127.0.0.1:{port}/healthz": p._healthy(u), 90, command)
            else:
                process.start(f"http://127.0.0.1:{port}/healthz")
            processes.append(process)
        yield processes
    finally:
        for process in reversed(processes):
            process.stop()


def spoor(settings, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run([sys.executable, "-m", "spoor.cli", *args], cwd=REPO, input=stdin, text=True,
                            capture_output=True, env=SpoorProcess("cli", settings, REPO).env(), timeout=180)
    assert result.returncode == 0, result.stderr
    return result.stdout


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def journey(user: str, anon: str, email: str, name: str, t0: datetime) -> list[dict]:
    """Anonymous browsing, a login with traits, three views of a product not bought, an order of another."""
    n = iter(range(100))

    def msg(seconds: float, kind: str, event: str | None = None, logged_in: bool = True, **props) -> dict:
        message = {"type": kind, "anonymousId": anon, "messageId": f"{anon}-{next(n)}",
                   "timestamp": iso(t0 + timedelta(seconds=seconds)), "properties": props}
        if logged_in:
            message["userId"] = user
        if event:
            message["event"] = event
        return message

    login = msg(2, "identify")
    login["traits"] = {"email": email, "name": name}
    return [msg(0, "page", logged_in=False),
            msg(1, "track", "Product Viewed", logged_in=False, product_id="sku-anon", price=12),
            login,
            *[msg(3 + i, "track", "Product Viewed", product_id="sku-browse", price=30) for i in range(3)],
            msg(7, "page"),  # past the browse deadline (the last view + 1 s): the trigger fires
            msg(8, "track", "Order Completed", order_id=f"order-{user}", revenue=25,
                products=[{"product_id": "sku-bought", "price": 25, "quantity": 1}])]


def pg_hits(engine, needles: list[str]) -> dict[str, list[str]]:
    """{relation: [needles found in it]} over every text and JSON column in the catalogue."""
    hits: dict[str, list[str]] = {}
    with engine.connect() as conn:
        for relation, columns in conn.execute(TEXT_COLUMNS).all():
            row_text = " || ' ' || ".join(f'COALESCE("{c}"::text, \'\')' for c in columns)
            for needle in needles:
                found = conn.execute(text(f'SELECT EXISTS (SELECT 1 FROM "{relation}" WHERE strpos({row_text}, :n) > 0)'),
                                     {"n": needle}).scalar_one()
                if found:
                    hits.setdefault(relation, []).append(needle)
    return hits


def describe(engine, hits: dict[str, list[str]]) -> str:
    """The rows behind pg_hits' answer, for a failure's message."""
    lines = []
    with engine.connect() as conn:
        for relation, found in hits.items():
            for needle in found:
                rows = conn.execute(text(f'SELECT * FROM "{relation}" AS r WHERE strpos(r::text, :n) > 0 LIMIT 3'),
                                    {"n": needle}).all()
                lines += [f"{relation}: {tuple(row)}"[:600] for row in rows]
    return "\n".join(lines)


def run_topics(settings) -> list[str]:
    run = settings.worker_app_id.removeprefix("spoor-erasure-")
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="erasure-test")
    try:
        return sorted(t for t in admin.list_topics() if run in t)
    finally:
        admin.close()


def every_record(consumer: KafkaConsumer, topic: str, timeout_s: float = 30):
    """The topic's records from its start up to its end offsets read first. No idle timeout to wait out: a scan of
    every topic takes well under a second, so records written meanwhile are seen before their 20 s retention ends
    (with a 3 s idle timeout per topic a scan took 25 s, and a record written just after the scan passed its topic
    could be deleted before the next scan reached it). A record deleted meanwhile moves the position to the end."""
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    ends = consumer.end_offsets(partitions)
    deadline = time.monotonic() + timeout_s
    while any(consumer.position(tp) < ends[tp] for tp in partitions):
        assert time.monotonic() < deadline, f"{topic} not read to its end offsets {ends} in {timeout_s} s"
        for batch in consumer.poll(timeout_ms=500).values():
            yield from batch


def topic_hits(settings, needles: list[str]) -> dict[str, set[str]]:
    """{topic: needles found in a key, value or header of any record}, every topic of the run from the start."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    hits: dict[str, set[str]] = {}
    try:
        for topic in run_topics(settings):
            for record in every_record(consumer, topic):
                blob = (record.key or b"") + b"\0" + (record.value or b"") + b"\0" + b"\0".join(
                    v or b"" for _, v in record.headers or ())
                for needle in needles:
                    if needle.encode() in blob:
                        hits.setdefault(topic, set()).add(needle)
    finally:
        consumer.close()
    return hits


def changelog_keys(settings, topic_suffix: str) -> set[bytes]:
    """Keys whose latest record on a changelog is a value (not a tombstone)."""
    topic = f"{settings.worker_app_id}-{topic_suffix}"
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    latest: dict[bytes, bytes | None] = {}
    try:
        for record in every_record(consumer, topic):
            latest[record.key] = record.value
    finally:
        consumer.close()
    return {key for key, value in latest.items() if value is not None}


def rocksdb_hits(settings, needles: list[str]) -> dict[str, list[str]]:
    """{file: needles in its raw bytes or, as RocksDB's LOG prints keys, in upper-case hex} under the worker's
    data directory (its RocksDB databases: SST files, write-ahead logs, MANIFEST, LOG, OPTIONS)."""
    hits: dict[str, list[str]] = {}
    root = Path(settings.worker_data_dir)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # a file RocksDB deleted meanwhile (a compaction's input, an old log)
            continue
        found = [n for n in needles if n.encode() in data or n.encode().hex().upper().encode() in data]
        if found:
            hits[str(path.relative_to(root))] = found
    return hits


def ticker_messages(partitions: set[int], tick: int, total: int) -> list[dict]:
    """Another shopper logging in on each of the given partitions (user and anonymous id both on it): the
    writes go to the changelog partitions of the erased shopper's keys, so the broker rolls and cleans them."""
    def on(p: int, kind: str) -> str:
        return next(key for key in (f"ticker-{tick}-{p}-{kind}{i}" for i in range(1000)) if partition_for(key, total) == p)

    now = iso(datetime.now(timezone.utc))
    messages = []
    for p in sorted(partitions):
        user, anon = on(p, "u"), on(p, "a")
        messages += [{"type": "identify", "userId": user, "anonymousId": anon, "messageId": f"{user}-i", "timestamp": now},
                     {"type": "page", "userId": user, "anonymousId": anon, "messageId": f"{user}-p", "timestamp": now}]
    return messages


def test_an_erased_shopper_leaves_no_trace_in_postgresql_at_once_nor_on_kafka_after_the_deadline(
        settings, stack, engine, write_key):
    run = settings.worker_app_id.removeprefix("spoor-erasure-")
    user, anon = f"zelda-{run}", f"zdevice-{run}"  # no id of the other shoppers contains one of hers
    email, name = f"zelda.{run}@example.com", f"Zelda Quarrington {run}"
    other, other_anon = f"bob-{run}", f"bob-device-{run}"
    needles = [user, anon, email, name]
    hashes = [hashlib.sha256(n.encode()).hexdigest() for n in needles]  # what the audit kept before 0026
    receiver = WebhookReceiver()
    try:
        spoor(settings, "segments", "define", "-", stdin='name: buyers\nwhere: \'did "Order Completed" in last 1d\'\n')
        spoor(settings, "segments", "launch", "buyers")
        spoor(settings, "campaigns", "define", "-", stdin=f"""
name: browse_rescue
audience: {{trigger: browse_abandonment}}
action: {{webhook: "{receiver.url}"}}
holdout_percent: 0
""")
        spoor(settings, "campaigns", "launch", "browse_rescue")

        client = CollectorClient(f"http://127.0.0.1:{settings.collector_port}", write_key)
        # Event times from now on: a campaign acts on triggers fired (in event time) after its launch.
        t0 = datetime.now(timezone.utc) + timedelta(seconds=1)
        for who, device, mail, full in ((user, anon, email, name),
                                        (other, other_anon, f"bystander.{run}@example.com", f"Bystander {run}")):
            status, body = client.post("/v1/batch", {"batch": journey(who, device, mail, full, t0)})
            assert status == 200, body
        # One message the collector refuses (a time a day ahead): a dead letter with her ids and traits (the
        # collector keeps no traits in the events it accepts: the dead letter keeps the whole message).
        status, _ = client.post("/v1/track", {
            "type": "track", "event": "Product Viewed", "userId": user, "anonymousId": anon,
            "messageId": f"{anon}-refused", "timestamp": iso(datetime.now(timezone.utc) + timedelta(days=1)),
            "context": {"traits": {"email": email, "name": name}}, "properties": {"product_id": "sku-browse"}})
        assert status == 400

        # Before: the search sees her on Kafka (so its empty answer below means something). Read while the
        # 20 s retention still keeps the records: what a read saw is added up.
        expected = {settings.events_topic, settings.dead_letter_topic, settings.triggers_topic, settings.segments_topic,
                    f"{settings.worker_app_id}-user-profiles-changelog", f"{settings.worker_app_id}-identities-changelog"}
        before_kafka: dict[str, set[str]] = {}

        def seen_on_kafka() -> bool:
            for topic, found in topic_hits(settings, needles).items():
                before_kafka.setdefault(topic, set()).update(found)
            return expected <= set(before_kafka) and {email, name} <= before_kafka[settings.dead_letter_topic]

        try:
            wait_until(seen_on_kafka, 90, "", interval=1)
        except AssertionError:
            raise AssertionError(f"not seen on Kafka: {before_kafka}") from None

        def stored(key: str, anonymous_id: str) -> dict[str, bool]:
            with engine.connect() as conn:
                return dict(conn.execute(text("""
                    SELECT EXISTS (SELECT 1 FROM user_profiles WHERE user_key = :u AND orders = 1) AS profile,
                           EXISTS (SELECT 1 FROM user_identities WHERE id = :a AND user_key = :u
                                                                   AND status = 'merged') AS identity,
                           EXISTS (SELECT 1 FROM segment_members WHERE user_key = :u AND segment = 'buyers') AS segment,
                           EXISTS (SELECT 1 FROM campaign_deliveries WHERE user_key = :u AND status = 'sent') AS sent"""),
                    {"u": key, "a": anonymous_id}).one()._mapping)

        def everything_stored(key: str, anonymous_id: str) -> bool:
            return all(stored(key, anonymous_id).values())

        try:
            wait_until(lambda: everything_stored(user, anon) and everything_stored(other, other_anon), 120, "")
        except AssertionError:
            with engine.connect() as conn:
                triggers = conn.execute(text("SELECT user_key, trigger_id FROM behaviour_triggers")).all()
                deliveries = conn.execute(text("SELECT user_key, status, last_response FROM campaign_deliveries")).all()
            raise AssertionError(f"not stored in time: {stored(user, anon)}, {stored(other, other_anon)}; triggers "
                                 f"{triggers}, deliveries {deliveries}") from None
        wait_until(lambda: "dead_letters" in pg_hits(engine, [user]), 60, "the dead letter in PostgreSQL")
        assert len(receiver.calls_for(user)) == 1

        # Before: the search sees her in PostgreSQL and on Kafka (so its empty answers below mean something).
        before_pg = pg_hits(engine, needles)
        for table in ("events", "user_profiles", "user_identities", "sessions", "dead_letters", "behaviour_triggers",
                      "segment_members", "campaign_deliveries"):
            assert table in before_pg, (table, before_pg)
        assert email in before_pg["dead_letters"]
        # Before: the worker's local files hold her ids (the write-ahead log keeps every value written).
        before_rocksdb = rocksdb_hits(settings, needles)
        assert any({user, anon} <= set(found) for found in before_rocksdb.values()), before_rocksdb
        # The erasure, given the anonymous id.
        report = json.loads(spoor(settings, "users", "erase", anon, "--actor", "dpo"))
        assert report["worker_state_erased"] is True and report["ids_erased"] == 2
        assert report["recipients"] == [{"campaign": "browse_rescue", "action": receiver.url}]
        erased_by = datetime.fromisoformat(report["kafka_erased_by"])
        assert erased_by <= datetime.now(timezone.utc) + timedelta(seconds=erasure_deadline_s(settings))

        # PostgreSQL: nothing left at once, anywhere, not even an unkeyed hash; the bystander keeps everything.
        left = pg_hits(engine, needles + hashes)
        assert left == {}, describe(engine, left)
        assert everything_stored(other, other_anon)
        # The worker's RocksDB files: nothing of her at once (compacted before the record was acknowledged).
        left_local = rocksdb_hits(settings, needles)
        assert left_local == {}, f"in the worker's RocksDB files (before: {before_rocksdb}): {left_local}"
        with engine.connect() as conn:
            audit = conn.execute(text("SELECT action, user_key_hmac FROM privacy_audit_log WHERE actor = 'dpo'"
                                      " ORDER BY id")).all()
        assert [tuple(a) for a in audit] == [("erase_rows", audit_hash(settings.audit_hmac_key.encode(), anon)),
                                             ("erase_state", audit_hash(settings.audit_hmac_key.encode(), anon))]

        # Kafka: other shoppers keep shopping on her partitions until every copy of her is gone.
        total = settings.topic_partitions
        partitions = {partition_for(user, total), partition_for(anon, total)}
        tick, remaining = 0, None
        while datetime.now(timezone.utc) < erased_by + timedelta(seconds=30):
            tick += 1
            status, body = client.post("/v1/batch", {"batch": ticker_messages(partitions, tick, total)})
            assert status == 200, body
            if tick % 3 == 0:
                remaining = topic_hits(settings, needles)
                if not remaining:
                    break
            time.sleep(4)
        remaining = topic_hits(settings, needles)
        assert remaining == {}, f"still on Kafka {time.strftime('%X')}, deadline {erased_by:%X}: {remaining}"
        # The changelogs were compacted, not emptied: the bystander's latest state is still there.
        assert other.encode() in changelog_keys(settings, "user-profiles-changelog")
        assert {other.encode(), other_anon.encode()} <= changelog_keys(settings, "identities-changelog")
        print(f"erased from Kafka after {tick} ticks; deadline {erased_by:%X}, now {time.strftime('%X')}")
    finally:
        receiver.close()
