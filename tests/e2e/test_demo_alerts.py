"""`make demo`'s path on private processes: the demo traffic's checkout outage fires the checkout
alert, which resolves when orders come back, and the summary read from PostgreSQL shows it."""

import pytest

from spoor.cli.demo import print_summary, run_demo

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def test_demo_shows_the_checkout_alert_firing_and_resolving(collector, start_process, engine, write_key, capsys):
    start_process("worker")
    result = run_demo(engine, collector, write_key, users=100, timeout_s=120)
    checkout = [a for a in result["alerts"] if a["rule_id"] == "checkout-conversion-collapse"]
    assert [a["status"] for a in checkout] == ["resolved"], result["alerts"]
    story = result["story"]
    [alert] = checkout
    assert story.outage_start < alert["fired_at"] <= story.outage_end
    assert story.outage_end < alert["resolved_at"] <= story.outage_end + (alert["fired_at"] - alert["started_at"]) * 4
    assert alert["evidence"]["worst"]["observed"] == 0.0  # no shopper who carted could order

    print_summary(result)
    out = capsys.readouterr().out
    assert "checkout-conversion-collapse (global): fired" in out and "resolved" in out
    # The shoppers' interests reached PostgreSQL: the summary shows lists made of them, not only fallbacks.
    samples = result["recommendations"]
    assert samples["user"]["personal"] and any(" with " in item["reason"] or item["reason"] == "buy again"
                                              for item in samples["user"]["items"]), samples
    assert any(item["reason"].startswith(("bought with", "viewed with")) for item in samples["product"]["items"])
    assert "recommended for" in out and "also bought with" in out
