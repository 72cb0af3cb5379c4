"""Segment definition -> one parameterised SQLAlchemy Core SELECT of user keys.

Every value from a definition becomes a bound parameter; field names are looked up in the
catalogue and only the catalogue's own column objects reach SQL. References to other segments are
expanded inline (so one query evaluates everything against the same snapshot), with cycle detection.
The evaluation time ``now`` is a parameter, so tests and backfills can evaluate at any instant.

Before any of it, ``check_limits`` walks the expanded definition iteratively: the recursive walk below
and SQLAlchemy's compiler only see trees at most ``MAX_DEPTH`` deep with at most ``MAX_CONDITIONS``
conditions, whatever is stored. (Compiling a reference as EXISTS against ``segment_members`` instead
would bound the SQL too, but the result would be the referenced segment as of its last refresh --
stale, empty for a draft, dependent on the order of refreshes -- not as of the same instant.)
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import (
    DateTime,
    Integer,
    Numeric,
    Float,
    Text,
    and_,
    bindparam,
    column,
    false,
    func,
    literal,
    literal_column,
    not_,
    or_,
    select,
    table,
    true,
)
from sqlalchemy.sql import ColumnElement, Select

from spoor.events import TRACK_KINDS, EventKind
from spoor.segments.rfm import FIELD_COLUMNS, USER_RFM
from spoor.segments.segment_fields import FIELDS, FieldType
from spoor.segments.segment_language import (
    MAX_DEPTH,
    AllOf,
    AnyOf,
    EventCondition,
    FieldCondition,
    NotOf,
    SegmentDefinitionError,
    SegmentRef,
    SegmentSpec,
    check_limits,
)
from spoor.storage.interest_tables import UserInterestProfile
from spoor.storage.tables import Event, UserActivity, UserProfile

PROFILES = UserProfile.__table__
ACTIVITY = UserActivity.__table__
INTERESTS = UserInterestProfile.__table__
# One row: the catalogue's price terciles (migration 0019), joined only by segments using price_band.
PRICE_TERCILES = table("product_price_terciles", column("low_below", Float), column("high_from", Float))
EVENTS = Event.__table__
SECONDS_PER_DAY = 86400.0
EVENT_COUNTS = "event_counts"  # the LATERAL subquery of a definition's event condition counts

Resolver = Callable[[str], SegmentSpec | None]


@dataclass
class CompiledSegment:
    name: str
    query: Select  # SELECT user_key FROM ... WHERE ...; add .where(...) to restrict it
    depends_on_population: bool  # RFM scores, price bands: other users' events move membership
    depends_on_time: bool  # uses now (windows, days since): membership drifts without new events
    references: set[str] = field(default_factory=set)


class _Compiler:
    """One walk of the definition. Each event condition reads its count from one scan of the user's
    events (``event_counts``), built after the walk from the conditions it collected."""

    def __init__(self, resolve: Resolver, now: datetime):
        self.resolve = resolve
        self.now = bindparam("now", now, type_=DateTime(timezone=True))
        self.rfm = None
        self.interests = False  # joins user_interest_profiles
        self.terciles = False  # joins product_price_terciles (price_band)
        self.uses_time = False
        self.references: set[str] = set()
        self.event_conditions: list[EventCondition] = []

    def condition(self, node, stack: tuple[str, ...]) -> ColumnElement:
        if isinstance(node, FieldCondition):
            return self.field_condition(node)
        if isinstance(node, EventCondition):
            return self.event_condition(node)
        if isinstance(node, AllOf):
            return and_(*(self.condition(c, stack) for c in node.all))
        if isinstance(node, AnyOf):
            return or_(*(self.condition(c, stack) for c in node.any))
        if isinstance(node, NotOf):
            # NOT over a NULL comparison would be NULL (= not a member either way): make it false.
            return not_(func.coalesce(self.condition(node.not_, stack), false()))
        if isinstance(node, SegmentRef):
            return self.reference(node.segment, stack)
        raise SegmentDefinitionError(f"unsupported condition {type(node).__name__}")

    def reference(self, name: str, stack: tuple[str, ...]) -> ColumnElement:
        if name in stack:
            raise SegmentDefinitionError(f"segment reference cycle: {' -> '.join((*stack, name))}")
        if len(stack) >= MAX_DEPTH:
            raise SegmentDefinitionError(f"segment references nest deeper than {MAX_DEPTH}")
        spec = self.resolve(name)
        if spec is None:
            raise SegmentDefinitionError(f"unknown segment {name!r} referenced from {stack[-1]!r}")
        self.references.add(name)
        return self.condition(spec.where, (*stack, name))

    def column(self, name: str) -> ColumnElement:
        spec = FIELDS[name]
        if spec.source == "profile":
            return PROFILES.c[name]
        if spec.source == "activity":
            column = ACTIVITY.c[name]
            return column if spec.type is FieldType.STRING else func.coalesce(column, 0)
        if spec.source == "rfm":
            self.rfm = USER_RFM
            return USER_RFM.c[FIELD_COLUMNS[name]]
        if spec.source == "interests":
            self.interests = True
            if name != "price_band":
                return INTERESTS.c[name]
            self.terciles = True  # the same function as the view user_interest_profile
            return func.spoor_price_band(INTERESTS.c.price, PRICE_TERCILES.c.low_below, PRICE_TERCILES.c.high_from,
                                         type_=Text)
        self.uses_time = True
        if name == "average_order_value":
            return PROFILES.c.revenue / func.nullif(PROFILES.c.orders, 0)
        since = {"days_since_last_purchase": PROFILES.c.last_purchase_at,
                 "days_since_first_purchase": PROFILES.c.first_purchase_at,
                 "days_since_last_seen": PROFILES.c.last_seen_at,
                 "days_since_first_seen": PROFILES.c.first_seen_at}[name]
        return func.extract("epoch", self.now - since) / SECONDS_PER_DAY

    def field_condition(self, node: FieldCondition) -> ColumnElement:
        column = self.column(node.field)
        if node.value is None:
            return column.is_(None) if node.op == "==" else column.is_not(None)
        # Bound with the field's own type, so 2.5 stays 2.5 against an integer column.
        value_type = Numeric() if FIELDS[node.field].type is FieldType.NUMBER else Text()
        if node.op in ("in", "not in"):
            values = [literal(v, value_type) for v in node.value if v is not None]
            matched = column.in_(values) if node.op == "in" else column.not_in(values)
            if None in node.value:
                return or_(matched, column.is_(None)) if node.op == "in" else and_(matched, column.is_not(None))
            return matched
        return {"==": column.__eq__, "!=": column.__ne__, ">": column.__gt__, ">=": column.__ge__,
                "<": column.__lt__, "<=": column.__le__}[node.op](literal(node.value, value_type))

    def event_condition(self, node: EventCondition) -> ColumnElement:
        self.uses_time = True
        self.event_conditions.append(node)
        return literal_column(f"{EVENT_COUNTS}.did_{len(self.event_conditions) - 1}", Integer) >= node.at_least

    def event_counts(self):
        """One LATERAL scan of the user's events over the longest window, with a filtered count per
        event condition, instead of a correlated scan of the same rows per condition."""
        window = max(c.within for c in self.event_conditions)
        counts = [func.count().filter(and_(event_name_matches(c.did),
                                           EVENTS.c.event_time > self.now - timedelta(seconds=c.within)))
                  .label(f"did_{i}") for i, c in enumerate(self.event_conditions)]
        return (select(*counts).where(EVENTS.c.user_key == PROFILES.c.user_key,
                                      EVENTS.c.event_time > self.now - timedelta(seconds=window),
                                      EVENTS.c.event_time <= self.now)
                .lateral(EVENT_COUNTS))


def event_name_matches(name: str) -> ColumnElement:
    """E-commerce spec names (and canonical kinds) match the event kind, like the collector maps them;
    any other name matches the event name exactly."""
    canonical = " ".join(name.replace("_", " ").split()).lower()
    kind = TRACK_KINDS.get(canonical)
    if kind is None and canonical.replace(" ", "_") in EventKind.__members__.values():
        kind = EventKind(canonical.replace(" ", "_"))
    if kind is None and canonical in ("page", "screen", "page viewed"):
        kind = EventKind.PAGE_VIEW
    if kind is not None and kind is not EventKind.CUSTOM:
        return EVENTS.c.kind == kind.value
    return EVENTS.c.name == name


def compile_segment(spec: SegmentSpec, resolve: Resolver, now: datetime,
                    user_keys: Iterable[str] | None = None) -> CompiledSegment:
    """The members of ``spec`` at ``now`` (optionally only among ``user_keys``). SegmentDefinitionError if
    a reference is unknown or cyclic, or the definition passes a limit once references are expanded."""
    check_limits(spec, resolve)
    compiler = _Compiler(resolve, now)
    condition = func.coalesce(compiler.condition(spec.where, (spec.name,)), false())
    source = PROFILES.outerjoin(ACTIVITY, ACTIVITY.c.user_key == PROFILES.c.user_key)
    if compiler.event_conditions:
        source = source.join(compiler.event_counts(), true())
    if compiler.rfm is not None:
        source = source.outerjoin(compiler.rfm, compiler.rfm.c.user_key == PROFILES.c.user_key)
    if compiler.interests:
        source = source.outerjoin(INTERESTS, INTERESTS.c.user_key == PROFILES.c.user_key)
    if compiler.terciles:
        source = source.join(PRICE_TERCILES, true())  # always one row (nulls for a catalogue without prices)
    query = select(PROFILES.c.user_key).select_from(source).where(condition)
    if user_keys is not None:
        query = query.where(PROFILES.c.user_key.in_(list(user_keys)))
    population = compiler.rfm is not None or compiler.terciles
    return CompiledSegment(spec.name, query, depends_on_population=population,
                           depends_on_time=compiler.uses_time, references=compiler.references)
