"""Bounds on segment definitions (issue 18): no definition, however built, makes the SQL grow without
bound or raises RecursionError in the process that parses or compiles it. No database: the SQL is
compiled, not run."""

import inspect
import json
import sys
import time
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DataError, OperationalError

from spoor.segments.membership import failure_reason, refresh_statement, segment_fault
from spoor.segments.segment_compiler import compile_segment
from spoor.segments.segment_language import (
    MAX_CONDITIONS,
    MAX_DEFINITION_BYTES,
    MAX_DEPTH,
    SegmentDefinitionError,
    parse_segment,
    parse_stored,
)

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)


def nested_nots(n: int, inner="orders >= 1"):
    where = inner
    for _ in range(n):
        where = {"not": where}
    return where


def doubling(levels: int) -> dict:
    """seg_0 is one condition; seg_k is any of seg_(k-1) twice: it expands to 3 + 2 x seg_(k-1)'s
    conditions (the any and the two references), 2^(k+2) - 3, and nests 2k + 1 levels."""
    specs = {"seg_0": parse_segment({"name": "seg_0", "where": "orders >= 1"})}
    for k in range(1, levels + 1):
        specs[f"seg_{k}"] = parse_segment({"name": f"seg_{k}", "where": {"any": [
            {"segment": f"seg_{k - 1}"}, {"segment": f"seg_{k - 1}"}]}})
    return specs


def test_doubling_references_are_refused_before_the_sql_grows():
    # The review's definition: 18 levels, 10.6 MB of SQL when references were expanded without a bound.
    specs = doubling(18)
    started = time.monotonic()
    with pytest.raises(SegmentDefinitionError, match="once segment references are expanded"):
        compile_segment(specs["seg_18"], specs.get, NOW)  # 37 levels and 2^20 conditions: refused for either
    with pytest.raises(SegmentDefinitionError, match=f"more than {MAX_CONDITIONS:,} conditions once segment "
                                                     "references are expanded"):
        compile_segment(specs["seg_15"], specs.get, NOW)  # 31 levels, 131,069 conditions
    assert time.monotonic() - started < 1.0  # the walk stops at the limit, it does not expand 2^k
    # The largest of the family within the limit compiles, to SQL of bounded size.
    allowed = max(k for k in range(19) if _compiles(specs, f"seg_{k}"))
    assert allowed == 8  # seg_8: 1,021 conditions; seg_9: 2,045
    sql = str(compile_segment(specs["seg_8"], specs.get, NOW).query.compile(dialect=postgresql.dialect()))
    assert len(sql) < 400_000


def _compiles(specs, name) -> bool:
    try:
        compile_segment(specs[name], specs.get, NOW)
        return True
    except SegmentDefinitionError:
        return False


@pytest.mark.parametrize("depth", [MAX_DEPTH, 100, 150, 1000, 100_000])
def test_deeply_nested_nots_are_refused_with_a_clear_error(depth):
    # ~100 nested nots used to raise RecursionError when compiled, which ended the segments runner.
    where = nested_nots(depth)  # depth nots around a condition: depth + 1 levels
    with pytest.raises(SegmentDefinitionError, match=f"conditions nest more than {MAX_DEPTH} levels deep"):
        parse_segment({"name": "deep", "where": where})


@pytest.mark.parametrize("depth", [100, 5000, 200_000])
def test_deeply_nested_text_is_refused_without_recursion_error(depth):
    # As YAML (the CLI), as JSON text, and as a row's JSON read back by the runner (parse_stored).
    nots_json = '{"name": "deep", "where": ' + '{"not": ' * depth + '"orders >= 1"' + "}" * depth + "}"
    lists_json = '{"name": "deep", "where": ' + "[" * depth + "]" * depth + "}"
    for text in ("name: deep\nwhere: " + "{not: " * depth + '"orders >= 1"' + "}" * depth,
                 "name: deep\nwhere: " + "[" * depth + "]" * depth, nots_json, lists_json):
        with pytest.raises(SegmentDefinitionError, match="nest|larger than"):
            parse_segment(text)
    for text in (nots_json, lists_json):
        with pytest.raises(SegmentDefinitionError, match="nest|larger than"):
            parse_stored(text)


def test_the_deepest_definition_allowed_compiles_with_frames_to_spare():
    # MAX_DEPTH levels of NOT, the costliest construct for SQLAlchemy's recursive compiler (~15 frames
    # a level), as the runner's refresh statement; with 700 frames above the caller's it compiles.
    spec = parse_segment({"name": "deepest", "where": nested_nots(MAX_DEPTH - 1, 'did "Order Completed" in last 7d')})
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + 700)
    try:
        for keys in (None, ["u1", "u2"]):
            str(refresh_statement(spec, {}, NOW, keys).compile(dialect=postgresql.dialect()))
    finally:
        sys.setrecursionlimit(limit)


def test_segment_references_count_towards_the_depth():
    # 20 segments, each the negation of the next: 40 levels once expanded, though each has 2.
    specs = {f"link_{i}": parse_segment({"name": f"link_{i}", "where": {"not": {"segment": f"link_{i + 1}"}}})
             for i in range(20)}
    specs["link_20"] = parse_segment({"name": "link_20", "where": "orders >= 1"})
    with pytest.raises(SegmentDefinitionError, match=f"more than {MAX_DEPTH} levels deep once segment references "
                                                     "are expanded"):
        compile_segment(specs["link_0"], specs.get, NOW)
    compile_segment(specs["link_10"], specs.get, NOW)  # 21 levels


def test_conditions_list_values_and_size_have_limits():
    wide = {"any": [{"all": [f"orders >= {i}" for i in range(100)]} for _ in range(21)]}  # 2,122 conditions
    with pytest.raises(SegmentDefinitionError, match="more than 2,000 conditions \\(the limit is 2,000\\)"):
        parse_segment({"name": "wide", "where": wide})
    listed = parse_segment({"name": "listed", "where": {"field": "favourite_category", "op": "in",
                                                       "value": [f"c{i}" for i in range(1000)]}})
    user = parse_segment({"name": "user", "where": {"any": [{"segment": "listed"}] * 11}})
    with pytest.raises(SegmentDefinitionError, match="more than 10,000 list values once segment references"):
        compile_segment(user, {"listed": listed}.get, NOW)
    big = {"name": "big", "description": "", "where": {"any": [
        {"field": "favourite_category", "op": "in", "value": [f"{i:0>250}" for i in range(1000)]}] * 2}}
    for document in (big, json.dumps(big)):
        with pytest.raises(SegmentDefinitionError, match=f"larger than {MAX_DEFINITION_BYTES:,} bytes"):
            parse_segment(document)
    # One list of 1,000 values of the longest string allowed still fits.
    parse_segment({"name": "fits", "where": {"field": "favourite_category", "op": "in", "value": ["x" * 256] * 1000}})


def test_a_yaml_alias_bomb_costs_no_more_than_the_size_limit():
    lines = ["a0: &a0 [orders >= 1, orders >= 2]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 16)]  # 4^15 leaves
    started = time.monotonic()
    with pytest.raises(SegmentDefinitionError, match="larger than"):
        parse_segment("\n".join(["name: bomb", "x:", *("  " + line for line in lines), "where: {any: *a15}"]))
    assert time.monotonic() - started < 2.0


def test_nul_characters_are_refused():
    # PostgreSQL cannot store them: psycopg2 raised ValueError when the segment's statement ran.
    for where in ({"field": "favourite_category", "op": "==", "value": "sho\x00es"}, {"did": "x\x00", "within": "1d"}):
        with pytest.raises(SegmentDefinitionError, match="NUL"):
            parse_segment({"name": "nul", "where": where})


def test_stored_decimal_values_read_back_as_numbers():
    # A definition is stored in pydantic's JSON mode, which writes Decimal("10.5") as "10.5": reading
    # it back failed ("revenue is a number, got str") and, before, stopped the segments runner.
    spec = parse_segment({"name": "spenders", "where": {"all": ["revenue > 10.5", {
        "field": "average_order_value", "op": "in", "value": [Decimal("19.99"), 20]}]}})
    stored = json.dumps(spec.model_dump(mode="json", by_alias=True))
    assert '"10.5"' in stored
    assert parse_stored(stored) == spec
    with pytest.raises(SegmentDefinitionError, match="type mismatch: revenue is a number"):
        parse_segment({"name": "x", "where": {"field": "revenue", "op": ">", "value": "10.5"}})


class PgError(Exception):
    def __init__(self, pgcode, message="boom"):
        super().__init__(message)
        self.pgcode = pgcode


@pytest.mark.parametrize("err, own", [
    (DataError("SELECT", {}, PgError("22003", "value overflows numeric format")), True),
    (DataError("SELECT", {}, PgError("54001", "stack depth limit exceeded")), True),
    (OperationalError("SELECT", {}, PgError("08006", "server closed the connection")), False),
    (OperationalError("SELECT", {}, PgError("57014", "canceling statement due to statement timeout")), False),
    (OperationalError("SELECT", {}, PgError("40P01", "deadlock detected")), False),
    (OperationalError("SELECT", {}, PgError(None, "could not connect")), False),
    (DataError("SELECT", {}, PgError("22003"), connection_invalidated=True), False),
    (SegmentDefinitionError("unknown segment 'x'"), True),
    (ValueError("A string literal cannot contain NUL (0x00) characters."), True),
    (RecursionError("maximum recursion depth exceeded"), True),
    (OSError("connection refused"), False),
])
def test_a_failure_is_the_segments_own_or_the_worlds(err, own):
    assert segment_fault(err) is own
    if own and isinstance(err, DataError):
        assert failure_reason(err).startswith("the statement failed: PgError: ")
