"""Two workers share the partitions (one is SIGKILLed halfway, the other takes over its partitions
and their RocksDB state from the changelog); the result equals one worker's over the same topic."""

import urllib.request
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from spoor.cli.collector_client import CollectorClient
from spoor.cli.simulate import simulate
from spoor.storage.migrate import upgrade
from spoor.topics import create_topics
from tests.support.event_clock import clock_messages
from tests.support.local_stack import free_port, wait_until

pytestmark = pytest.mark.integration

START = datetime(2026, 2, 2, 8, 0, tzinfo=timezone.utc)
WORKER = {"win_back_after_days": 1, "worker_stall_restart_s": 20, "cart_abandonment_delay_s": 1800, "browse_abandonment_views": 2,
          "worker_batch_max": 50}
TABLES = {  # table -> (key columns, columns left out: when the row was written)
    "user_profiles": ("user_key", "updated_at"),
    "sessions": ("user_key, session_id", "updated_at"),
    "user_activity": ("user_key", "updated_at"),
    "behaviour_triggers": ("trigger_id", "recorded_at"),
}


def snapshot(engine) -> dict:
    out = {}
    with engine.connect() as conn:
        for table, (keys, skip) in TABLES.items():
            rows = conn.execute(text(f"SELECT * FROM {table} ORDER BY {keys}"))
            out[table] = [{k: v for k, v in r._mapping.items() if k != skip} for r in rows]
    return out


def events_applied(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith('spoor_worker_events_total{outcome="applied"'))


def test_two_workers_then_one_give_the_same_results_as_one(collector, write_key, engine, start_process,
                                                           test_settings, tmp_path_factory):
    messages = simulate(users=400, seed=11, start=START)
    # Some shoppers look at a product twice (browse abandonment needs repeated views).
    again = [{**m, "messageId": m["messageId"] + "-again", "timestamp": (
        datetime.fromisoformat(m["timestamp"]) + timedelta(seconds=1)).isoformat()}
        for m in messages if m.get("event") == "Product Viewed" and m["messageId"] < "3"]
    messages = sorted(messages + again, key=lambda m: m["timestamp"])
    half = len(messages) // 2
    client = CollectorClient(collector, write_key)

    def send(batch: list[dict]) -> None:
        for i in range(0, len(batch), 100):
            assert client.send_batch(batch[i:i + 100])[0] == 200

    def persisted(eng) -> int:
        with eng.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM events")).scalar()

    first = start_process("worker", **WORKER)
    second = start_process("worker", **WORKER, worker_web_port=free_port(),
                           worker_data_dir=str(tmp_path_factory.mktemp("faust-second")))
    send(messages[:half])
    wait_until(lambda: persisted(engine) == half, 120, "two workers to store the first half")
    shares = [events_applied(first.settings.worker_web_port), events_applied(second.settings.worker_web_port)]
    assert all(shares) and sum(shares) == half, f"both workers should have had partitions: {shares}"

    second.kill()  # its partitions move to the first worker, which restores their state from the changelog
    clock = clock_messages(test_settings.topic_partitions, START + timedelta(days=3))
    send(messages[half:])
    send(messages[half - 300:half])  # client retries across the kill: counted once
    send(clock)
    client.close()
    total = len(messages) + len(clock)
    wait_until(lambda: persisted(engine) == total, 180, "the remaining worker to store everything")

    # One worker, its own consumer group and database, over the same events topic.
    admin_url = make_url(test_settings.database_url)
    single_db = admin_url.database + "_single"
    admin = create_engine(admin_url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{single_db}"'))
    single_url = admin_url.set(database=single_db).render_as_string(hide_password=False)
    upgrade(single_url)
    create_topics(test_settings.model_copy(update={"triggers_topic": test_settings.triggers_topic + "-single"}))
    single_engine = create_engine(single_url)
    try:
        single = start_process("worker", **WORKER, database_url=single_url,
                               worker_app_id=test_settings.worker_app_id + "-single",
                               triggers_topic=test_settings.triggers_topic + "-single",
                               worker_web_port=free_port(), worker_data_dir=str(tmp_path_factory.mktemp("faust-one")))
        wait_until(lambda: persisted(single_engine) == total, 180, "the single worker to store everything")
        # The last batch's triggers and timers settle with it; compare once both are stable.
        want = wait_until(lambda: (a := snapshot(single_engine)) == snapshot(single_engine) and a, 30, "stable")
        got = snapshot(engine)
        single.stop()
    finally:
        single_engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{single_db}" WITH (FORCE)'))
        admin.dispose()

    assert len(got["behaviour_triggers"]) > 50 and len(got["sessions"]) >= 400
    assert {t["kind"] for t in got["behaviour_triggers"]} == {"cart_abandonment", "browse_abandonment", "win_back"}
    for table in TABLES:
        assert got[table] == want[table], f"{table} differs between two workers and one"
