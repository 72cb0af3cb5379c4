"""Monitoring config against Debian's real Prometheus and Alertmanager (installed by
deploy/prometheus.sh from `make test`): the rules load, Prometheus scrapes a running collector and
worker, and Alertmanager accepts Spoor's alerts through its v2 API."""

import asyncio
import itertools
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from spoor.alerts.notifiers import HttpNotifier, NotifierHub, RetryPolicy
from tests.support import grafana_sql
from tests.support.local_stack import REPO, free_port, wait_until

pytestmark = pytest.mark.integration
RULES = REPO / "deploy" / "prometheus" / "spoor-rules.yml"


def binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.fail(f"{name} is not installed: run deploy/prometheus.sh install (make test does)")
    return path


def test_promtool_accepts_the_rules_and_amtool_the_alertmanager_config():
    rules = subprocess.run([binary("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert rules.returncode == 0 and "SUCCESS" in rules.stdout, rules.stdout + rules.stderr
    config = subprocess.run([binary("amtool"), "check-config", str(REPO / "deploy/alertmanager/alertmanager.yml")],
                            capture_output=True, text=True)
    assert config.returncode == 0, config.stdout + config.stderr


@pytest.fixture
def server(tmp_path):
    started = []

    def start(command: list[str], health: str) -> subprocess.Popen:
        log = open(tmp_path / f"{Path(command[0]).name}.log", "wb")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        started.append(process)
        wait_until(lambda: _ok(health) or process.poll() is not None, 60, health)
        assert process.poll() is None, (tmp_path / f"{Path(command[0]).name}.log").read_text()
        return process

    yield start
    for process in started:
        process.terminate()
        process.wait(20)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_prometheus_scrapes_spoor_and_loads_its_rules(collector, start_process, test_settings, write_key, server, tmp_path):
    start_process("worker")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: ["{RULES}"]
scrape_configs:
  - job_name: spoor-collector
    static_configs: [{{targets: ["127.0.0.1:{test_settings.collector_port}"]}}]
  - job_name: spoor-worker
    static_configs: [{{targets: ["127.0.0.1:{test_settings.worker_web_port}"]}}]
""")
    prometheus = f"http://127.0.0.1:{port}"
    server([binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}"], f"{prometheus}/-/ready")
    response = httpx.post(f"{collector}/v1/track", auth=(write_key, ""),
                          json={"userId": "u1", "event": "Product Viewed", "properties": {"product_id": "P1"}})
    assert response.status_code == 200

    def query(expr: str) -> list:
        return httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}).json()["data"]["result"]

    try:
        up = wait_until(lambda: (r := query("up == 1")) and len(r) == 2 and r, 60, "both targets up")
    except AssertionError:
        targets = httpx.get(f"{prometheus}/api/v1/targets").json()["data"]["activeTargets"]
        raise AssertionError([(t["labels"]["job"], t["health"], t["lastError"]) for t in targets]) from None
    assert {r["metric"]["job"] for r in up} == {"spoor-collector", "spoor-worker"}
    wait_until(lambda: query('spoor_collector_events_total{outcome="accepted"} >= 1'), 30, "the collector's counter")
    wait_until(lambda: query('spoor_worker_events_total{outcome="applied"} >= 1'), 60, "the worker's counter")
    groups = httpx.get(f"{prometheus}/api/v1/rules").json()["data"]["groups"]
    assert [g["name"] for g in groups] == ["spoor-pipeline"]
    assert {"SpoorNoEventsAccepted", "SpoorConsumerLagGrowing", "SpoorWorkerWriteFailing"} <= {
        r["name"] for r in groups[0]["rules"]}
    assert all(r["health"] == "ok" for r in groups[0]["rules"] if r.get("lastEvaluation", "0001")[:4] != "0001")


def test_alertmanager_accepts_spoor_alerts_through_its_v2_api(server, tmp_path):
    port = free_port()
    config = tmp_path / "alertmanager.yml"
    config.write_text((REPO / "deploy/alertmanager/alertmanager.yml").read_text())
    url = f"http://127.0.0.1:{port}"
    server([binary("prometheus-alertmanager"), f"--config.file={config}", f"--storage.path={tmp_path / 'am'}",
            f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="], f"{url}/-/ready")
    alert = {"fingerprint": "f1", "rule_id": "orders-drop", "metric": "orders", "dimension": "global",
             "resolution": "5m", "severity": "critical", "status": "firing",
             "started_at": datetime.now(timezone.utc), "fired_at": datetime.now(timezone.utc), "resolved_at": None,
             "evidence": {"observed": 0, "expected": 21.0, "score": -4.6, "reason": "drop"},
             "summary": "Orders dropped", "runbook": "https://runbooks.example/orders"}

    async def send():
        hub = NotifierHub([HttpNotifier("alertmanager", url, "alertmanager")], retry=RetryPolicy(attempts=2))
        hub.notify(alert)
        await hub.idle()
        await hub.stop()

    asyncio.run(send())
    [received] = wait_until(lambda: httpx.get(f"{url}/api/v2/alerts").json(), 10, "the alert in Alertmanager")
    assert received["labels"]["alertname"] == "orders-drop" and received["status"]["state"] == "active"
    assert received["annotations"]["runbook_url"] == alert["runbook"]


def _panels():
    for path in sorted(grafana_sql.DASHBOARDS.glob("*.json")):
        for panel in grafana_sql.panels(path):
            for target in panel.get("targets", []):  # a row has none
                yield path, panel["title"], target


def test_dashboards_and_rules_only_use_metrics_spoor_exports():
    import re

    from prometheus_client import REGISTRY

    import spoor.alerts.alert_metrics  # noqa: F401 - registers the metrics
    import spoor.ingest.collector_metrics  # noqa: F401
    import spoor.storage.retention  # noqa: F401 - the retention job's, in the segments runner
    import spoor.stream_processors.worker_metrics  # noqa: F401
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    exported = {family.name + suffix for family in REGISTRY.collect() for suffix in suffixes.get(family.type, [""])}
    expressions = [t["expr"] for _, _, t in _panels() if "expr" in t] + re.findall(r"expr: (.+)", RULES.read_text())
    used = {name for expr in expressions for name in re.findall(r"\bspoor_[a-z_]+", expr)}
    assert used and not used - exported, f"not exported by any Spoor process: {sorted(used - exported)}"


def test_dashboard_sql_runs_against_the_schema(engine):
    from sqlalchemy import text
    queries = [(path, title, t["rawSql"]) for path, title, t in _panels() if "rawSql" in t]
    assert queries
    end = datetime.now(timezone.utc)
    with engine.connect() as conn:
        for path, title, sql in queries:
            # every value of the variables (tests/integration/test_business_dashboard.py checks the answers)
            variables = grafana_sql.variables(path)
            for values in itertools.product(*variables.values()):
                expanded = grafana_sql.expand(sql, end - timedelta(hours=6), end, dict(zip(variables, values)))
                conn.execute(text(expanded)).all()  # raises on a wrong table, column or syntax
