"""docs/configuration.md is generated from the settings' field descriptions (cli/config_doc.py), so
it cannot drift from spoor/settings.py: this fails when a setting is added, changed or described
differently without regenerating the page."""

from pathlib import Path

from spoor.cli import config_doc
from spoor.settings import SETTINGS_GROUPS, Settings

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
REGENERATE = ".venv/bin/python -m spoor.cli.config_doc > docs/configuration.md"


def test_page_is_the_generators_output():
    assert PAGE.read_text(encoding="utf-8") == config_doc.render(), f"docs/configuration.md is stale: {REGENERATE}"


def test_every_setting_has_a_description():
    empty = [name for name, field in Settings.model_fields.items() if not (field.description or "").strip()]
    assert not empty


def test_every_setting_is_in_one_group_and_once_on_the_page():
    grouped = [name for _, _, names in config_doc.groups() for name in names]
    assert grouped == list(Settings.model_fields)
    assert len({first for first, _, _ in SETTINGS_GROUPS}) == len(SETTINGS_GROUPS)
    page = PAGE.read_text(encoding="utf-8")
    for name in Settings.model_fields:
        assert page.count(f"| `SPOOR_{name.upper()}` |") == 1, name


def test_rows_show_default_and_constraint():
    fields = Settings.model_fields
    assert config_doc.constraint_text(fields["max_nesting_depth"]) == "integer ≥ 2, ≤ 250"
    assert config_doc.constraint_text(fields["segments_max_busy_share"]) == "number > 0, ≤ 1"
    assert config_doc.constraint_text(fields["kafka_bootstrap"]) == "text"
    assert config_doc.default_text(fields["max_body_bytes"]) == "`524288`"
    assert config_doc.default_text(fields["worker_batch_within_s"]) == "`0.02`"
    assert config_doc.default_text(fields["session_lateness_s"]) == "`21600`"
    assert config_doc.default_text(fields["admin_token"]) == "(empty)"
    assert config_doc.default_text(fields["alerts_enabled"]) == "`true`"


def test_settings_still_load(monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith("SPOOR_"):
            monkeypatch.delenv(name)
    settings = Settings()
    assert settings.kafka_bootstrap == "127.0.0.1:9092" and settings.dedupe_window == 2500
    monkeypatch.setenv("SPOOR_TOPIC_PARTITIONS", "8")
    assert Settings().topic_partitions == 8
