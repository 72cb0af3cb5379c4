"""No single segment can stop the segments runner (issue 18), on the real PostgreSQL: definitions past
the limits are refused by the API and the CLI with the limit named, and a real `spoor segments run`
with broken segments stored straight into the database keeps the others current, records each
broken segment's reason, counts the failures, and takes a repaired segment back."""

import json
import subprocess
import sys
import urllib.request
from datetime import datetime, timezone

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from spoor.cli.admin_api import create_api
from spoor.segments.membership import SegmentStore
from spoor.segments.segment_language import parse_segment
from spoor.topics import create_segment_topics
from tests.support.local_stack import REPO, SpoorProcess, free_port, run_id, wait_until
from tests.support.segments_data import profile, put_profiles

pytestmark = pytest.mark.integration
TOKEN = "test-admin-token"


def nested_nots(n: int) -> dict:
    where = "orders >= 1"
    for _ in range(n):
        where = {"not": where}
    return where


@pytest.fixture(scope="module")
def client(test_settings, engine):
    app = create_api(test_settings.model_copy(update={"admin_token": TOKEN}), engine)
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def test_definitions_past_the_limits_are_refused_naming_the_limit(test_settings, client):
    deep = client.put("/segments/deep", json={"where": nested_nots(100)})
    assert deep.status_code == 400, deep.text
    assert "conditions nest more than 32 levels deep" in deep.json()["detail"]

    # Each segment uses the previous one twice: seg_k expands to 2^(k+2) - 3 conditions.
    assert client.put("/segments/dbl_0", json={"where": "orders >= 1"}).status_code == 200
    for k in range(1, 9):
        saved = client.put(f"/segments/dbl_{k}", json={"where": {"any": [{"segment": f"dbl_{k - 1}"}] * 2}})
        assert saved.status_code == 200, saved.text
    refused = client.put("/segments/dbl_9", json={"where": {"any": [{"segment": "dbl_8"}] * 2}})
    assert refused.status_code == 400
    assert "more than 2,000 conditions once segment references are expanded" in refused.json()["detail"]
    # dbl_0 growing to 6 conditions would take dbl_8 (1,021 conditions) past 2,000: the change is refused.
    grown = client.put("/segments/dbl_0", json={"where": {"all": [f"orders >= {i}" for i in range(5)]}})
    assert grown.status_code == 400
    assert "segment 'dbl_8' uses 'dbl_0' and would be invalid" in grown.json()["detail"]
    assert client.put("/segments/dbl_0", json={"where": {"all": ["orders >= 1", "orders >= 2"]}}).status_code == 200

    # The CLI says the same, as an error.
    cli = subprocess.run([sys.executable, "-m", "spoor.cli", "segments", "define", "-"], cwd=REPO, text=True,
                         input="name: deep\nwhere: " + "{not: " * 150 + '"orders >= 1"' + "}" * 150 + "\n",
                         capture_output=True, env=SpoorProcess("cli", test_settings, REPO).env(), timeout=60)
    assert cli.returncode == 1
    assert "error: conditions nest more than 32 levels deep" in cli.stderr and "Traceback" not in cli.stderr


BROKEN = {
    # A field the catalogue does not have (e.g. written before a field was renamed).
    "broken_field": {"name": "broken_field", "where": {"field": "no_such_field", "op": "==", "value": 1}},
    # 200 nested nots: compiling it raised RecursionError, which ended the runner.
    "broken_deep": {"name": "broken_deep", "where": nested_nots(200)},
    # A value PostgreSQL refuses when the statement runs (numeric overflow, SQLSTATE 22003).
    "broken_value": {"name": "broken_value", "where": {"field": "orders", "op": ">=", "value": "1e1000000"}},
    # A reference to a broken segment.
    "uses_broken": {"name": "uses_broken", "where": {"segment": "broken_field"}},
}


def members(engine, segment: str) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(text("SELECT user_key FROM segment_members WHERE segment = :s"),
                                {"s": segment}).scalars())


def errors(engine) -> dict[str, str | None]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT name, error FROM segments WHERE name NOT LIKE 'rfm%' "
                                      "AND name NOT LIKE 'lifecycle%'")).all())


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def test_broken_segments_do_not_stop_the_runner(test_settings, engine, tmp_path):
    now = datetime.now(timezone.utc)
    run = run_id(8)
    put_profiles(engine, [profile(f"fail-{run}-1", now, orders=2, revenue="50", last_purchase_days=3),
                          profile(f"fail-{run}-2", now)])
    store = SegmentStore(engine)
    store.save(parse_segment({"name": "buyers", "where": "orders >= 1"}), status="active")
    store.save(parse_segment({"name": "browsers", "where": "orders == 0"}), status="active")
    with engine.begin() as conn:
        for name, definition in BROKEN.items():
            conn.execute(text("INSERT INTO segments (name, description, definition, builtin, status) "
                              "VALUES (:name, '', CAST(:definition AS jsonb), false, 'active')"),
                         {"name": name, "definition": json.dumps(definition)})

    settings = test_settings.model_copy(update={
        "segments_topic": f"spoor.test-{run}.segments", "segments_poll_s": 0.3, "segments_max_busy_share": 1.0,
        "segments_full_recompute_s": 3600.0, "segments_change_overlap_s": 0.0, "segments_web_port": free_port()})
    create_segment_topics(settings)
    log_path = tmp_path / "segments.log"
    with open(log_path, "ab") as log:
        runner = subprocess.Popen([sys.executable, "-m", "spoor.cli", "segments", "run"], cwd=REPO,
                                  env=SpoorProcess("segments", settings, tmp_path).env(), stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        def alive_and(condition):
            def check():
                assert runner.poll() is None, f"the runner exited with {runner.returncode}:\n{log_path.read_text()}"
                return condition()
            return check

        wait_until(alive_and(lambda: members(engine, "buyers") == {f"fail-{run}-1"}
                             and members(engine, "browsers") == {f"fail-{run}-2"}), 60, "the good segments")
        # A later change reaches the good segments through incremental passes, broken ones beside them.
        put_profiles(engine, [profile(f"fail-{run}-3", now, orders=1, revenue="10", last_purchase_days=1)])
        wait_until(alive_and(lambda: f"fail-{run}-3" in members(engine, "buyers")), 30, "an incremental pass")
        reasons = wait_until(alive_and(lambda: (e := errors(engine)) and all(e[n] for n in BROKEN) and e), 30,
                             "the reasons")
        assert "unknown field 'no_such_field'" in reasons["broken_field"]
        assert "conditions nest more than 32 levels deep" in reasons["broken_deep"]
        assert "SQLSTATE 22003" in reasons["broken_value"]
        assert "unknown segment 'broken_field'" in reasons["uses_broken"]
        assert reasons["buyers"] is None and reasons["browsers"] is None
        exposed = http_get(f"http://127.0.0.1:{settings.segments_web_port}/metrics")
        assert "spoor_segments_failing 4.0" in exposed
        failures = [line for line in exposed.splitlines() if line.startswith("spoor_segments_refresh_failures_total ")]
        assert failures and float(failures[0].split()[1]) >= 4
        assert store.row("broken_deep")["failed_since"] is not None  # GET /segments and `show` carry it

        # Repaired in the database, a broken segment and the one using it are refreshed again, in full: the
        # pass that follows the change of fail-2 alone puts fail-1 in them.
        with engine.begin() as conn:
            conn.execute(text("UPDATE segments SET definition = CAST(:d AS jsonb) WHERE name = 'broken_field'"),
                         {"d": '{"name": "broken_field", "where": {"field": "orders", "op": ">=", "value": 2}}'})
        put_profiles(engine, [profile(f"fail-{run}-2", now, page_views=1)])  # any change: a pass runs
        wait_until(alive_and(lambda: members(engine, "broken_field") == {f"fail-{run}-1"}
                             and members(engine, "uses_broken") == {f"fail-{run}-1"}), 30, "the repaired segments")
        wait_until(alive_and(lambda: errors(engine)["uses_broken"] is None and errors(engine)["broken_field"] is None),
                   10, "the reasons to clear")
        log_text = log_path.read_text()
        assert "segment broken_deep skipped, the others go on" in log_text
        assert log_text.count("segment broken_deep skipped") == 1  # logged when it starts failing, not each pass
        assert runner.poll() is None
    finally:
        runner.terminate()
        runner.wait(30)
