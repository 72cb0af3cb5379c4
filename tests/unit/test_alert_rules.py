"""The rules file: validation errors name the problem; edits are reloaded without a restart."""

import os
from datetime import datetime, timezone

import pytest

from spoor.alerts.alert_rules import RulesError, RulesFile, parse_rules
from spoor.alerts.notifiers import alertmanager_payload, sign, slack_payload, verify

GOOD = """
version: 1
rules:
  - id: orders-drop
    metric: orders
    resolution: 5m
    detector: {kind: seasonal, direction: drop, sensitivity: 4}
    severity: critical
    runbook: https://runbooks.example/orders
"""


def test_valid_rules_parse_with_defaults():
    rule = parse_rules(GOOD).rule("orders-drop")
    assert rule.resolution_s == 300 and rule.dimension == "global" and rule.fire_after == 3
    assert rule.detector.build(300).config.sensitivity == 4


@pytest.mark.parametrize("text, problem", [
    ("version: 2\nrules: []", "version 2 is not supported"),
    ("version: 1\nrules:\n  - {id: a, metric: nope, detector: {kind: threshold, above: 1}}", "unknown metric 'nope'"),
    ("version: 1\nrules:\n  - {id: a, metric: orders, detector: {kind: threshold}}", "needs 'above' or 'below'"),
    ("version: 1\nrules:\n  - {id: a, metric: orders, detector: {kind: magic}}", "rules.0.detector"),
    ("version: 1\nrules:\n  - {id: a, metric: orders, dimension: 'shop:x', detector: {kind: threshold, above: 1}}",
     "dimension is 'global'"),
    ("version: 1\nrules:\n  - {id: a, metric: orders, detector: {kind: threshold, above: 1}}\n"
     "  - {id: a, metric: events, detector: {kind: threshold, above: 1}}", "duplicate rule ids: a"),
    ("version: 1\nrules:\n  - {id: a, metric: orders, typo: 1, detector: {kind: threshold, above: 1}}", "typo"),
    ("version: [1", "not valid YAML"),
])
def test_invalid_rules_are_refused_with_the_reason(text, problem):
    with pytest.raises(RulesError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        parse_rules(text)


def test_rules_file_reloads_on_change_and_keeps_old_rules_on_a_broken_edit(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD)
    rules = RulesFile(path)
    assert not rules.reload_if_changed()
    path.write_text(GOOD.replace("sensitivity: 4", "sensitivity: 6"))
    os.utime(path, ns=(rules.mtime_ns + 10 ** 9, rules.mtime_ns + 10 ** 9))
    assert rules.reload_if_changed()
    assert rules.rules.rule("orders-drop").detector.sensitivity == 6
    path.write_text("version: 1\nrules: [")
    os.utime(path, ns=(rules.mtime_ns + 10 ** 9, rules.mtime_ns + 10 ** 9))
    assert not rules.reload_if_changed() and "not valid YAML" in rules.last_error
    assert rules.rules.rule("orders-drop").detector.sensitivity == 6


def test_shipped_rules_file_is_valid():
    from spoor.alerts.alert_rules import DEFAULT_RULES
    assert RulesFile(DEFAULT_RULES).rules.rules


ALERT = {"fingerprint": "abc", "rule_id": "orders-drop", "metric": "orders", "dimension": "global",
         "resolution": "5m", "severity": "critical", "status": "firing",
         "started_at": datetime(2024, 1, 1, 10, tzinfo=timezone.utc),
         "fired_at": datetime(2024, 1, 1, 10, 10, tzinfo=timezone.utc), "resolved_at": None,
         "evidence": {"observed": 0, "expected": 20.5, "score": -4.5, "reason": "drop"},
         "summary": "Orders dropped", "runbook": "https://runbooks.example/orders"}


def test_alertmanager_payload_and_slack_text():
    now = datetime(2024, 1, 2, tzinfo=timezone.utc)
    [alert] = alertmanager_payload(ALERT, now)
    assert alert["labels"]["alertname"] == "orders-drop" and alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["runbook_url"] == ALERT["runbook"]
    assert alert["startsAt"] == "2024-01-01T10:10:00+00:00" and alert["endsAt"] > now.isoformat()
    resolved = {**ALERT, "status": "resolved", "resolved_at": datetime(2024, 1, 1, 11, tzinfo=timezone.utc)}
    assert alertmanager_payload(resolved, now)[0]["endsAt"] == "2024-01-01T11:00:00+00:00"
    assert "FIRING" in slack_payload(ALERT)["text"] and "expected 20.5" in slack_payload(ALERT)["text"]


def test_webhook_signature_verifies_and_detects_tampering():
    import time
    stamp = str(int(time.time()))
    signature = sign(b"secret", stamp, b'{"a":1}')
    assert verify(b"secret", stamp, b'{"a":1}', signature)
    assert not verify(b"secret", stamp, b'{"a":2}', signature)
    assert not verify(b"other", stamp, b'{"a":1}', signature)
    assert not verify(b"secret", str(int(time.time()) - 3600), b'{"a":1}', sign(b"secret", str(int(time.time()) - 3600), b'{"a":1}'))
