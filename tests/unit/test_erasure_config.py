"""What erasure relies on outside PostgreSQL: the topic configs that make retention and compaction the
erasure deadline (spoor/topics.py), and the audit's keyed hash (privacy/erasure.py)."""

import hashlib
import hmac

import pytest

from spoor.privacy import PrivacyError
from spoor.privacy.erasure import AuditKeyMissing, audit_hash, require_audit_key
from spoor.settings import Settings
from spoor.topics import (
    BROKER_RETENTION_CHECK_S,
    changelog_erasure_configs,
    erasure_deadline_s,
    personal_retention,
    spoor_topics,
)

KEY = "k" * 32


def test_topics_with_shoppers_data_keep_them_for_the_stated_retention_in_hour_segments():
    settings = Settings(personal_topic_retention_hours=72)
    configs = {t.name: t.topic_configs for t in spoor_topics(settings)}
    for name in (settings.events_topic, settings.dead_letter_topic, settings.triggers_topic):
        assert configs[name]["retention.ms"] == str(72 * 3_600_000), name
        assert configs[name]["segment.ms"] == str(3_600_000), name
        assert configs[name]["cleanup.policy"] == "delete", name
    assert configs[settings.events_topic]["message.timestamp.type"] == "LogAppendTime"
    # Alerts carry no shopper's data: their retention is the general one.
    assert configs[settings.alerts_topic]["retention.ms"] == str(4 * settings.topic_retention_ms)
    assert erasure_deadline_s(settings) == 73 * 3600 + BROKER_RETENTION_CHECK_S


def test_a_retention_under_an_hour_is_also_the_segment_and_changelogs_are_compacted_within_it():
    settings = Settings(personal_topic_retention_hours=20 / 3600)  # what the erasure proof test uses
    assert personal_retention(settings) == {"cleanup.policy": "delete", "retention.ms": "20000", "segment.ms": "20000"}
    assert changelog_erasure_configs(settings) == {"segment.ms": "20000", "max.compaction.lag.ms": "10000",
                                                   "delete.retention.ms": "10000"}
    assert erasure_deadline_s(settings) == 40 + BROKER_RETENTION_CHECK_S


def test_the_retention_is_bounded():
    for hours in (0, -1, 721):
        with pytest.raises(ValueError):
            Settings(personal_topic_retention_hours=hours)


def test_the_audit_hash_is_an_hmac_under_the_secret_not_a_plain_sha256():
    digest = audit_hash(KEY.encode(), "alice@example.com")
    assert digest == hmac.new(KEY.encode(), b"alice@example.com", hashlib.sha256).hexdigest()
    assert digest != hashlib.sha256(b"alice@example.com").hexdigest()
    assert audit_hash(b"another-secret-of-32-characters!", "alice@example.com") != digest
    assert len(digest) == 64  # the column's width


@pytest.mark.parametrize("key", ["", "short", "x" * 31])
def test_erasure_refuses_to_run_without_a_real_secret(key):
    with pytest.raises(AuditKeyMissing, match="SPOOR_AUDIT_HMAC_KEY") as refused:
        require_audit_key(Settings(audit_hmac_key=key))
    assert isinstance(refused.value, PrivacyError)  # the CLI and the API turn it into a clear error
    assert require_audit_key(Settings(audit_hmac_key=KEY)) == KEY.encode()
