"""The segment language and its compiler (no database: the SQL is compiled, not run)."""

from datetime import datetime, timezone

import pytest
from sqlalchemy.dialects import postgresql

from spoor.segments.builtin_segments import BUILTIN_SEGMENTS
from spoor.segments.segment_compiler import compile_segment
from spoor.segments.segment_language import SegmentDefinitionError, parse_segment

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)


def sql_and_params(spec, resolve=lambda _n: None):
    compiled = compile_segment(spec, resolve, NOW).query.compile(dialect=postgresql.dialect())
    return str(compiled), compiled.params


def test_shorthands_expand_to_conditions():
    spec = parse_segment("""
name: shoes
where:
  all:
    - purchases_30d >= 2
    - days_since_last_purchase > 60
    - favourite_category == "shoes"
    - did "Product Added" in last 24h and not "Order Completed"
""")
    field, days, category, events = spec.where.all
    assert (field.field, field.op, field.value) == ("purchases_30d", ">=", 2)
    assert (days.field, days.op, days.value) == ("days_since_last_purchase", ">", 60)
    assert category.value == "shoes"
    added, not_ordered = events.all
    assert (added.did, added.within) == ("Product Added", 86400)
    assert (not_ordered.not_.did, not_ordered.not_.within) == ("Order Completed", 86400)


@pytest.mark.parametrize("where, message", [
    ("purchases_30d >= \"2\"", "type mismatch: purchases_30d is a number"),
    ("favourite_category == 3", "type mismatch: favourite_category is a string"),
    ("favourite_category > \"a\"", "is a string: use ==, !=, in or not in"),
    ("favourite_category == shoes", "must be a JSON number"),
    ("no_such_field == 1", "unknown field 'no_such_field'"),
    ("recency >= 4", "unknown field 'recency'; did you mean frequency or recency_score"),
    ({"field": "orders", "op": "in", "value": 1}, "needs a list"),
    ({"field": "orders", "op": "~", "value": 1}, "op"),
    ({"did": "Order Completed", "within": "1y"}, "not a duration"),
    ({"did": "Order Completed", "within": "400d"}, "between 1 second and 366 days"),
    ({"sql": "SELECT 1"}, "a condition has one of the keys"),
    ({"all": []}, "at least 1"),
    ("orders >= 1; DROP TABLE events", "must be a JSON number"),
])
def test_clear_errors(where, message):
    with pytest.raises(SegmentDefinitionError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_segment({"name": "bad", "where": where})


@pytest.mark.parametrize("name", ["orders; DROP TABLE events", "user_profiles.orders", "orders--",
                                  "pg_sleep(10)", 'orders" OR "1"="1'])
def test_field_names_cannot_inject(name):
    with pytest.raises(SegmentDefinitionError, match="unknown field|cannot read condition|must be a JSON"):
        parse_segment({"name": "x", "where": {"field": name, "op": "==", "value": 1}})
    with pytest.raises(SegmentDefinitionError):
        parse_segment({"name": "x", "where": f"{name} == 1"})


def test_values_are_bound_parameters_never_sql_text():
    hostile = "shoes'; DROP TABLE user_profiles; --"
    spec = parse_segment({"name": "x", "where": {"any": [
        {"field": "favourite_category", "op": "==", "value": hostile},
        {"field": "lifecycle_stage", "op": "in", "value": [hostile, "b"]},
        {"did": "x'); DELETE FROM events; --", "within": "1d"}]}})
    sql, params = sql_and_params(spec)
    assert "DROP" not in sql and "DELETE" not in sql and "shoes" not in sql
    assert hostile in params.values() and "x'); DELETE FROM events; --" in params.values()


def test_segment_names_are_restricted():
    with pytest.raises(SegmentDefinitionError, match="name"):
        parse_segment({"name": "x; drop", "where": "orders >= 1"})
    with pytest.raises(SegmentDefinitionError, match="segment"):
        parse_segment({"name": "x", "where": {"segment": "Robert'); DROP TABLE segments;--"}})


def test_references_are_expanded_and_cycles_detected():
    a = parse_segment({"name": "a", "where": {"segment": "b"}})
    b = parse_segment({"name": "b", "where": {"all": ["orders >= 1", {"segment": "c"}]}})
    c = parse_segment({"name": "c", "where": {"not": {"segment": "a"}}})
    specs = {"a": a, "b": b, "c": c}
    with pytest.raises(SegmentDefinitionError, match="cycle: a -> b -> c -> a"):
        compile_segment(a, specs.get, NOW)
    c_ok = parse_segment({"name": "c", "where": "revenue > 10.5"})
    compiled = compile_segment(a, {**specs, "c": c_ok}.get, NOW)
    assert compiled.references == {"b", "c"}
    with pytest.raises(SegmentDefinitionError, match="unknown segment 'zzz'"):
        compile_segment(parse_segment({"name": "y", "where": {"segment": "zzz"}}), specs.get, NOW)


def test_decimal_values_keep_their_precision():
    _sql, params = sql_and_params(parse_segment({"name": "x", "where": "purchases_30d >= 2.5"}))
    assert any(str(v) == "2.5" for v in params.values())


def test_dependencies_are_classified():
    rfm = compile_segment(BUILTIN_SEGMENTS["rfm_champions"], BUILTIN_SEGMENTS.get, NOW)
    assert rfm.depends_on_population
    plain = compile_segment(parse_segment({"name": "x", "where": "orders >= 2"}), BUILTIN_SEGMENTS.get, NOW)
    assert not plain.depends_on_population and not plain.depends_on_time
    timed = compile_segment(BUILTIN_SEGMENTS["cart_abandoners"], BUILTIN_SEGMENTS.get, NOW)
    assert timed.depends_on_time and not timed.depends_on_population
