"""The export's JSON form (privacy/export.py): every column type the exported tables hold gets one
JSON value, the same each time, and secret-named fields never leave."""

import json
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import orjson
import pytest

from spoor.privacy.export import REDACTED, InvalidSubjectId, SharedId, check_id, json_safe

# One value of each column type in the exported tables (format_type), as psycopg2 reads it, and its JSON
# form. tests/integration/test_subject_export.py checks the catalogue holds no other type.
COLUMN_TYPES = {
    "character varying": ("ann", "ann"),
    "text": ("☃ \"quoted\" \\ line\nbreak", "☃ \"quoted\" \\ line\nbreak"),
    "smallint": (7, 7),
    "integer": (-2_147_483_648, -2_147_483_648),
    "bigint": (9_223_372_036_854_775_807, 9_223_372_036_854_775_807),
    "numeric": (Decimal("12345678901234.5678"), "12345678901234.5678"),
    "double precision": (0.1, 0.1),
    "boolean": (True, True),
    "timestamp with time zone": (datetime(2026, 6, 1, 14, 30, 1, 250, tzinfo=timezone(timedelta(hours=2))),
                                 "2026-06-01T12:30:01.000250Z"),
    "date": (date(2026, 2, 28), "2026-02-28"),
    "jsonb": ({"userId": "ann", "n": [1, Decimal("2.50"), None], "writeKey": "wk_live"},
              {"userId": "ann", "n": [1, "2.50", None], "writeKey": REDACTED}),
    "text[]": (["shoes", "bags"], ["shoes", "bags"]),
    "character varying[]": (["P1", None], ["P1", None]),
    "bigint[]": ([0, 9_223_372_036_854_775_807, None], [0, 9_223_372_036_854_775_807, None]),  # session_journeys
    "boolean[]": ([True, False, None], [True, False, None]),
    "double precision[]": ([1.5, float("nan"), float("inf"), None], [1.5, "NaN", "Infinity", None]),
}


def base_type(format_type: str) -> str:
    """``character varying(256)`` -> ``character varying``, ``numeric(18,4)`` -> ``numeric``."""
    name, _, rest = format_type.partition("(")
    return name + ("[]" if format_type.endswith("[]") else "") if rest else format_type


@pytest.mark.parametrize("column_type", sorted(COLUMN_TYPES))
def test_every_column_type_has_one_json_form(column_type):
    value, expected = COLUMN_TYPES[column_type]
    encoded = json_safe(value)
    assert encoded == expected
    assert json.loads(orjson.dumps(encoded)) == expected  # plain JSON, read back the same


def test_special_values():
    assert json_safe(float("nan")) == "NaN"
    assert json_safe(float("inf")) == "Infinity" and json_safe(float("-inf")) == "-Infinity"
    assert json_safe(Decimal("NaN")) == "NaN"
    assert json_safe(datetime(2026, 1, 1, 0, 0)) == "2026-01-01T00:00:00Z"  # naive: taken as UTC
    assert json_safe(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00Z"
    assert json_safe(timedelta(minutes=1, microseconds=500)) == 60.0005
    assert json_safe(b"\x00\xff") == "AP8="
    assert json_safe(None) is None


def test_secrets_are_redacted_at_any_depth_whatever_the_spelling():
    payload = {"WriteKey": "a", "api_key": "b", "context": {"Authorization": "c", "traits": {"password": "d"}},
               "batch": [{"write-key": "e", "userId": "ann"}], "keyword": "shoes"}
    assert json_safe(payload) == {"WriteKey": REDACTED, "api_key": REDACTED,
                                  "context": {"Authorization": REDACTED, "traits": {"password": REDACTED}},
                                  "batch": [{"write-key": REDACTED, "userId": "ann"}], "keyword": "shoes"}


def test_an_unknown_type_is_refused_not_exported_as_its_repr():
    with pytest.raises(TypeError):
        json_safe(object())
    with pytest.raises(TypeError):
        json_safe({"nested": {1, 2}})


@pytest.mark.parametrize("bad", ["", "x" * 257, "a\x00b", "\ud800"])
def test_ids_that_name_no_one_are_refused(bad):
    with pytest.raises(InvalidSubjectId):
        check_id(bad)


@pytest.mark.parametrize("placeholder", ["null", "NULL", " undefined ", "0", "00000000-0000-0000-0000-000000000000"])
def test_placeholder_ids_are_refused_as_many_shoppers(placeholder):
    with pytest.raises(SharedId):
        check_id(placeholder)


def test_ordinary_and_hostile_looking_ids_pass_the_check():
    for fine in ["ann", "x" * 256, "💩", "'; DROP TABLE events; --", "ann' OR '1'='1", "%", "_"]:
        check_id(fine)
