"""Segment definitions in PostgreSQL and their membership, kept current two ways that agree.

``refresh(name, now, user_keys)`` runs the segment's compiled SELECT (for everyone, or only for the
given users), diffs it against ``segment_members`` and records each entry and exit in
``segment_transitions`` -- all in one statement, under a per-segment advisory lock:

- full recompute = ``refresh`` without ``user_keys`` (scheduled by the runner, or on demand);
- incremental = ``refresh`` restricted to the users whose profile or activity row changed since
  the last pass (``updated_at``). Segments using RFM scores are recomputed in full whenever anyone
  changed, because one user's purchase moves everyone's quintiles.

Because both run the same SQL, a user's membership after an incremental pass is exactly what a full
recompute at the same evaluation time gives. Conditions on time ("in the last 24h", "days since")
can change without any new event; the scheduled full recompute picks those up.

One segment cannot stop the others: a failure caused by the segment itself -- a stored definition that
does not parse or passes a limit, a reference to such a segment, an error of its own statement that
PostgreSQL raises because of what the statement says (``segment_fault``) -- is recorded in
``segments.error`` and the pass goes on. A failing segment is tried again by each pass, and refreshed
in full once it works again. Failures of the database itself (connection, resources, deadlocks) are
raised as before, for the runner to retry the turn.
"""

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sqlalchemy import Engine, Text, delete, exists, func, literal, select, text, union_all, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import ArgumentError, CompileError, DBAPIError, StatementError

from spoor.segments import SegmentsError
from spoor.segments.builtin_segments import BUILTIN_SEGMENTS
from spoor.segments.segment_compiler import compile_segment
from spoor.segments.segment_language import SegmentDefinitionError, SegmentSpec, check_limits, parse_stored
from spoor.storage.recommendation_reads import make_lists
from spoor.storage.segment_tables import SegmentCursor, SegmentDefinition, SegmentMember, SegmentTransition
from spoor.storage.tables import UserActivity, UserProfile

DEFINITIONS = SegmentDefinition.__table__
MEMBERS = SegmentMember.__table__
TRANSITIONS = SegmentTransition.__table__
CURSORS = SegmentCursor.__table__
KEY_CHUNK = 1000  # bounds the incremental diff even under a nested-loop plan
# Told how long each statement of a pass took; the runner idles in proportion, so a pass loads
# PostgreSQL evenly instead of taking a whole core in bursts (segments/segment_runner.py).
Pace = Callable[[float], None]
STATUSES = ("draft", "active", "paused")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UnknownSegment(SegmentDefinitionError):
    pass


class SegmentFailed(SegmentsError):
    """A segment's refresh failed because of the segment itself (recorded in ``segments.error``)."""


# SQLSTATE classes of the errors a statement causes by what it says: feature not supported, cardinality,
# data exception (e.g. a value out of numeric range), integrity, syntax or access rule, program limit
# exceeded (e.g. too complex). Others -- connection (08), resources (53), operator intervention and
# query cancelled (57), system (58), transaction rollback (40), internal (XX)... -- are the database's.
STATEMENT_FAULTS = ("0A", "21", "22", "23", "42", "54")


def segment_fault(err: BaseException) -> bool:
    """Whether ``err``, raised while compiling or running one segment's statement, is that segment's
    own doing (to be recorded, the others going on) rather than the world's (to be retried)."""
    if isinstance(err, DBAPIError):
        code = getattr(err.orig, "pgcode", None) or getattr(err.orig, "sqlstate", None)
        return not err.connection_invalidated and isinstance(code, str) and code[:2] in STATEMENT_FAULTS
    # Raised in Python before the statement reaches the database: its definition, its SQL, a value the
    # driver cannot send (psycopg2 raises ValueError for a NUL character).
    return isinstance(err, (SegmentsError, CompileError, ArgumentError, StatementError, RecursionError,
                            ValueError, TypeError, ArithmeticError))


def failure_reason(err: BaseException) -> str:
    if isinstance(err, DBAPIError):
        orig = err.orig
        first = (str(orig).strip().splitlines() or [""])[0]
        code = getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)
        reason = f"the statement failed: {type(orig).__name__}: {first}" + (f" (SQLSTATE {code})" if code else "")
    elif isinstance(err, SegmentsError):
        reason = str(err)
    else:
        reason = f"the statement could not be built: {type(err).__name__}: {err}"
    return reason[:2000]


@dataclass
class Catalogue:
    """Every stored segment as the runner sees it: valid definitions, the reason each invalid one is
    invalid, the active ones, and those whose last refresh failed."""
    specs: dict[str, SegmentSpec] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)
    active: list[str] = field(default_factory=list)
    failing: set[str] = field(default_factory=set)


class SegmentStore:
    """Definitions: saved only after validation and a compile check (unknown fields, references, cycles,
    limits -- its own, and those of the segments that use it)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def load(self) -> Catalogue:
        """Every definition, read as text and parsed one by one: a stored definition that is invalid
        (written by hand, or before a change of the language) is reported in ``broken``, not raised."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(DEFINITIONS.c.name, DEFINITIONS.c.definition.cast(Text),
                                       DEFINITIONS.c.status, DEFINITIONS.c.error).order_by(DEFINITIONS.c.name)).all()
        catalogue = Catalogue()
        for name, document, status, error in rows:
            try:
                spec = parse_stored(document)
                if spec.name != name:
                    raise SegmentDefinitionError(f"the stored definition is named {spec.name[:80]!r}")
                catalogue.specs[name] = spec
            except SegmentDefinitionError as err:
                catalogue.broken[name] = f"its stored definition is invalid: {err}"
            if status == "active":
                catalogue.active.append(name)
            if error is not None:
                catalogue.failing.add(name)
        return catalogue

    def specs(self) -> dict[str, SegmentSpec]:
        """The valid definitions (see ``load``)."""
        return self.load().specs

    def get(self, name: str) -> SegmentSpec:
        catalogue = self.load()
        if name in catalogue.broken:
            raise SegmentDefinitionError(f"segment {name!r}: {catalogue.broken[name]}")
        spec = catalogue.specs.get(name)
        if spec is None:
            raise UnknownSegment(f"no segment named {name[:80]!r}")
        return spec

    def rows(self) -> list[dict]:
        with self.engine.connect() as conn:
            count = (select(func.count()).where(MEMBERS.c.segment == DEFINITIONS.c.name).scalar_subquery())
            return [dict(r._mapping) for r in conn.execute(
                select(DEFINITIONS.c.name, DEFINITIONS.c.description, DEFINITIONS.c.status, DEFINITIONS.c.builtin,
                       DEFINITIONS.c.updated_at, DEFINITIONS.c.last_full_recompute_at, count.label("members"),
                       DEFINITIONS.c.error, DEFINITIONS.c.failed_since)
                .order_by(DEFINITIONS.c.name))]

    def row(self, name: str) -> dict:
        for row in self.rows():
            if row["name"] == name:
                return row
        raise UnknownSegment(f"no segment named {name[:80]!r}")

    def save(self, spec: SegmentSpec, *, builtin: bool = False, status: str | None = None) -> None:
        before = self.specs()
        known = {**before, spec.name: spec}
        compile_segment(spec, known.get, utcnow())  # unknown references, cycles and limits fail here
        # A segment using this one (directly or not) may pass a limit now: refuse the change, rather than
        # leave that segment failing. Only a segment whose expansion includes this one can change here.
        for other in known.values():
            if other.name != spec.name:
                try:
                    check_limits(other, known.get)
                except SegmentDefinitionError as err:
                    try:
                        check_limits(other, before.get)
                    except SegmentDefinitionError:
                        continue  # it was invalid already
                    raise SegmentDefinitionError(f"segment {other.name!r} uses {spec.name!r} and would be "
                                                 f"invalid with this definition: {err}") from None
        values = {"name": spec.name, "description": spec.description,
                  "definition": spec.model_dump(mode="json", by_alias=True), "builtin": builtin}
        stmt = insert(DEFINITIONS).values(**values, status=status or "draft")
        updates = {**values, "updated_at": func.now()}
        if status:
            updates["status"] = status
        with self.engine.begin() as conn:
            conn.execute(stmt.on_conflict_do_update(index_elements=["name"], set_=updates))

    def set_status(self, name: str, status: str) -> None:
        if status not in STATUSES:
            raise SegmentDefinitionError(f"status must be one of {STATUSES}")
        with self.engine.begin() as conn:
            if not conn.execute(update(DEFINITIONS).where(DEFINITIONS.c.name == name)
                                .values(status=status, updated_at=func.now())).rowcount:
                raise UnknownSegment(f"no segment named {name[:80]!r}")

    def install_builtins(self) -> list[str]:
        """Add the built-in segments that are missing (as active); existing ones are left as they are."""
        with self.engine.connect() as conn:
            present = set(conn.execute(select(DEFINITIONS.c.name)).scalars())
        added = [name for name in BUILTIN_SEGMENTS if name not in present]
        for name in added:
            self.save(BUILTIN_SEGMENTS[name], builtin=True, status="active")
        return added

    def active(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(DEFINITIONS.c.name).where(DEFINITIONS.c.status == "active")
                                     .order_by(DEFINITIONS.c.name)).scalars())


def compute_members(engine: Engine, spec: SegmentSpec, specs: dict[str, SegmentSpec], now: datetime) -> set[str]:
    """Who is in the segment at ``now`` (read-only)."""
    compiled = compile_segment(spec, {**specs, spec.name: spec}.get, now)
    with engine.connect() as conn:
        return set(conn.execute(compiled.query).scalars())


def preview(engine: Engine, spec: SegmentSpec, specs: dict[str, SegmentSpec], now: datetime,
            sample: int = 10) -> dict:
    compiled = compile_segment(spec, {**specs, spec.name: spec}.get, now)
    members = compiled.query.subquery()
    with engine.connect() as conn:
        size = conn.execute(select(func.count()).select_from(members)).scalar_one()
        keys = conn.execute(select(members.c.user_key).order_by(members.c.user_key).limit(sample)).scalars().all()
    return {"segment": spec.name, "size": size, "sample": list(keys), "evaluated_at": now.isoformat()}


def refresh(engine: Engine, spec: SegmentSpec, specs: dict[str, SegmentSpec], now: datetime,
            user_keys: Iterable[str] | None = None, pace: Pace | None = None) -> tuple[int, int]:
    """Bring the segment's members up to date (for everyone, or for ``user_keys``); (entered, left).
    ``pace`` is told how long each statement took (see ``Pace``)."""
    if user_keys is None:
        return _paced(pace, _refresh, engine, spec, specs, now, None)
    keys = sorted(set(user_keys))
    totals = [0, 0]
    for start in range(0, len(keys), KEY_CHUNK):
        entered, left = _paced(pace, _refresh, engine, spec, specs, now, keys[start:start + KEY_CHUNK])
        totals[0] += entered
        totals[1] += left
    return totals[0], totals[1]


def _paced(pace: Pace | None, step: Callable, *args):
    started = time.monotonic()
    result = step(*args)
    if pace is not None:
        pace(time.monotonic() - started)
    return result


def refresh_statement(spec: SegmentSpec, specs: dict[str, SegmentSpec], now: datetime, keys: list[str] | None):
    """INSERT new members, DELETE leavers, and record both as transitions: one statement."""
    compiled = compile_segment(spec, {**specs, spec.name: spec}.get, now, keys)
    computed = compiled.query.cte("computed")
    name = literal(spec.name)
    at = literal(now, TRANSITIONS.c.at.type)
    entered = (insert(MEMBERS).from_select(["segment", "user_key", "entered_at"],
                                           select(name, computed.c.user_key, at))
               .on_conflict_do_nothing().returning(MEMBERS.c.user_key).cte("entered"))
    leaving = delete(MEMBERS).where(MEMBERS.c.segment == spec.name,
                                    ~exists().where(computed.c.user_key == MEMBERS.c.user_key))
    if keys is not None:
        leaving = leaving.where(MEMBERS.c.user_key.in_(keys))
    left = leaving.returning(MEMBERS.c.user_key).cte("left")
    changes = union_all(select(name, entered.c.user_key, literal("enter"), at),
                        select(name, left.c.user_key, literal("exit"), at))
    return (insert(TRANSITIONS).from_select(["segment", "user_key", "change", "at"], changes)
            .returning(TRANSITIONS.c.change))


def _refresh(engine, spec, specs, now, keys: list[str] | None) -> tuple[int, int]:
    record = refresh_statement(spec, specs, now, keys)
    with engine.begin() as conn:
        conn.execute(select(func.pg_advisory_xact_lock(func.hashtext("spoor.segment:" + spec.name))))
        if keys is None:
            # A full pass reads everyone, so hash joins are right; and with stale statistics on
            # segment_members (e.g. a segment that just filled) the planner picks a nested-loop
            # anti-join against the computed set: quadratic, 16 s instead of 0.3 s for 11k members.
            conn.execute(text("SET LOCAL enable_nestloop = off"))
        changed = conn.execute(record).scalars().all()
        if keys is None:
            conn.execute(update(DEFINITIONS).where(DEFINITIONS.c.name == spec.name)
                         .values(last_full_recompute_at=now))
    return changed.count("enter"), changed.count("exit")


def full_recompute(engine: Engine, now: datetime, names: Iterable[str] | None = None,
                   pace: Pace | None = None, failed: dict[str, str] | None = None) -> dict[str, tuple[int, int]]:
    """Refresh ``names`` (every active segment by default) for everyone. A segment that fails because
    of itself is recorded in ``segments.error``; then, with ``failed`` given, its reason goes there and
    the others are refreshed, and without, SegmentFailed is raised."""
    catalogue = SegmentStore(engine).load()
    wanted = list(names) if names is not None else catalogue.active
    for name in wanted:
        if name not in catalogue.specs and name not in catalogue.broken:
            raise UnknownSegment(f"no segment named {name[:80]!r}")
    result = {}
    for name in wanted:
        outcome = _guarded(engine, catalogue, name,
                           lambda: refresh(engine, catalogue.specs[name], catalogue.specs, now, pace=pace))
        if isinstance(outcome, str):
            if failed is None:
                raise SegmentFailed(f"segment {name!r} could not be refreshed: {outcome}")
            failed[name] = outcome
        else:
            result[name] = outcome
    return result


SKIPPED = object()  # a segment an incremental pass leaves for a later one


def _guarded(engine: Engine, catalogue: Catalogue, name: str, step: Callable):
    """``step()`` for one segment, or the reason it failed because of the segment (then recorded in
    ``segments.error``); a refresh that succeeds clears a recorded failure. Other errors are raised."""
    try:
        if name in catalogue.broken:
            raise SegmentDefinitionError(catalogue.broken[name])
        result = step()
    except Exception as err:
        if not segment_fault(err):
            raise
        reason = failure_reason(err)
        with engine.begin() as conn:
            conn.execute(update(DEFINITIONS).where(DEFINITIONS.c.name == name,
                                                   DEFINITIONS.c.error.is_distinct_from(reason))
                         .values(error=reason, failed_since=func.coalesce(DEFINITIONS.c.failed_since, func.now())))
        return reason
    if name in catalogue.failing and result is not SKIPPED:
        with engine.begin() as conn:
            conn.execute(update(DEFINITIONS).where(DEFINITIONS.c.name == name).values(error=None, failed_since=None))
        catalogue.failing.discard(name)
    return result


OLDEST_OPEN_TRANSACTION = text(
    "SELECT min(xact_start) FROM pg_stat_activity WHERE datname = current_database() "
    "AND backend_type = 'client backend' AND pid <> pg_backend_pid()")


def changed_users(engine: Engine, since: datetime) -> list[str]:
    profiles, activity = UserProfile.__table__, UserActivity.__table__
    query = union_all(select(profiles.c.user_key).where(profiles.c.updated_at >= since),
                      select(activity.c.user_key).where(activity.c.updated_at >= since))
    with engine.connect() as conn:
        return sorted(set(conn.execute(query).scalars()))


def pass_window(conn, cursor: str, overlap_s: float) -> tuple[datetime, datetime]:
    """(since, next_since) of a pass on ``cursor``: the changes it reads start at ``since``; the next pass's
    at ``next_since``, the database's clock now or the start of the oldest transaction open now, if older
    (``updated_at`` is its transaction's start: a transaction still open may commit rows stamped before)."""
    started = conn.execute(select(func.clock_timestamp())).scalar_one()  # the database's clock, like updated_at
    oldest_open = conn.execute(OLDEST_OPEN_TRANSACTION).scalar()
    since = conn.execute(select(CURSORS.c.changed_since).where(CURSORS.c.name == cursor)).scalar()
    next_since = min(started, oldest_open) if oldest_open is not None else started
    return (since or datetime(1970, 1, 1, tzinfo=timezone.utc)) - timedelta(seconds=overlap_s), next_since


class Changes:
    """The users changed since each of several passes' cursors, found with one scan of the profiles and the
    activity (the segments runner's membership and attribution passes both need theirs each turn; every
    scan reads both tables whole, as ``updated_at`` has no index: one scan a turn instead of two). Every
    window is taken before the scan, so a change the scan misses is after each pass's ``next_since``."""

    def __init__(self, engine: Engine, cursors: Iterable[str], overlap_s: float):
        with engine.connect() as conn:
            self.windows = {cursor: pass_window(conn, cursor, overlap_s) for cursor in cursors}
        oldest = min(since for since, _next in self.windows.values())
        profiles, activity = UserProfile.__table__, UserActivity.__table__
        query = union_all(select(profiles.c.user_key, profiles.c.updated_at).where(profiles.c.updated_at >= oldest),
                          select(activity.c.user_key, activity.c.updated_at).where(activity.c.updated_at >= oldest))
        self.latest: dict[str, datetime] = {}
        with engine.connect() as conn:
            for key, updated_at in conn.execute(query):
                if key not in self.latest or updated_at > self.latest[key]:
                    self.latest[key] = updated_at

    def window(self, cursor: str) -> tuple[list[str], datetime, datetime]:
        """The users changed since ``cursor``'s ``since`` (as ``changed_users``), ``since`` and ``next_since``."""
        since, next_since = self.windows[cursor]
        return sorted(key for key, updated_at in self.latest.items() if updated_at >= since), since, next_since


def users_changed_since(engine: Engine, cursor: str, overlap_s: float,
                        changes: Changes | None) -> tuple[list[str], datetime, datetime]:
    """(the users changed since ``cursor``'s pass, ``since``, ``next_since``): from ``changes`` when another
    pass's scan found them, else with a scan of its own."""
    if changes is not None:
        return changes.window(cursor)
    with engine.connect() as conn:
        since, next_since = pass_window(conn, cursor, overlap_s)
    return changed_users(engine, since), since, next_since


REFRESH_INTEREST_PROFILES = text("SELECT spoor_refresh_interest_profiles(CAST(:keys AS text[]))")
INTEREST_PROFILE_CHUNK = 5000


def refresh_interest_profiles(engine: Engine, keys: list[str]) -> None:
    """Rewrite the interest profiles (top category, device, hour, price; migration 0020) of ``keys``:
    the incremental pass does it for the users changed since the last, before judging them. A user's
    interests change only with their profile (the worker writes both in one transaction)."""
    for start in range(0, len(keys), INTEREST_PROFILE_CHUNK):
        with engine.begin() as conn:
            conn.execute(REFRESH_INTEREST_PROFILES, {"keys": keys[start:start + INTEREST_PROFILE_CHUNK]})


def incremental_pass(engine: Engine, now: datetime, overlap_s: float, cursor: str = "incremental",
                     refresh_population: bool = True, pace: Pace | None = None,
                     changes: Changes | None = None) -> dict:
    """Refresh every active segment for the users changed since the last pass; returns what changed
    (``segments``: entered and left by segment) and what failed (``failed``: the reason by segment).
    Segments that depend on the whole population (RFM scores) can only be refreshed for everyone:
    with ``refresh_population`` False they wait for a later pass (the caller paces them). A segment whose
    last refresh failed is refreshed for everyone, since the passes that failed did not see its changes.
    ``changes``: the users changed since ``cursor``, found with another pass's (``Changes``)."""
    keys, since, next_since = users_changed_since(engine, cursor, overlap_s, changes)
    refresh_interest_profiles(engine, keys)
    make_lists(engine, keys, since)  # recommendations made ahead of requests, paced (recommendation_reads.py)
    catalogue = SegmentStore(engine).load()
    specs = catalogue.specs
    result, failed = {}, {}

    def step(name: str):
        compiled = compile_segment(specs[name], specs.get, now)
        if compiled.depends_on_population and not refresh_population:
            return SKIPPED
        everyone = compiled.depends_on_population or name in catalogue.failing
        return refresh(engine, specs[name], specs, now, None if everyone else keys, pace)

    if keys:
        for name in catalogue.active:
            outcome = _guarded(engine, catalogue, name, lambda: step(name))
            if isinstance(outcome, str):
                failed[name] = outcome
            elif outcome is not SKIPPED:
                result[name] = outcome
    with engine.begin() as conn:
        conn.execute(insert(CURSORS).values(name=cursor, changed_since=next_since)
                     .on_conflict_do_update(index_elements=["name"], set_={"changed_since": next_since}))
    return {"changed_users": len(keys), "segments": result, "failed": failed}


def members(engine: Engine, name: str, limit: int = 100, after: str | None = None) -> list[dict]:
    query = select(MEMBERS.c.user_key, MEMBERS.c.entered_at).where(MEMBERS.c.segment == name)
    if after is not None:
        query = query.where(MEMBERS.c.user_key > after)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query.order_by(MEMBERS.c.user_key).limit(limit))]


def user_segments(engine: Engine, user_key: str) -> list[dict]:
    with engine.connect() as conn:
        current = [dict(r._mapping) for r in conn.execute(
            select(MEMBERS.c.segment, MEMBERS.c.entered_at).where(MEMBERS.c.user_key == user_key)
            .order_by(MEMBERS.c.segment))]
        history = [dict(r._mapping) for r in conn.execute(
            select(TRANSITIONS.c.segment, TRANSITIONS.c.change, TRANSITIONS.c.at)
            .where(TRANSITIONS.c.user_key == user_key).order_by(TRANSITIONS.c.id))]
    return {"current": current, "history": history}


def history(engine: Engine, name: str, limit: int = 100) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(
            select(TRANSITIONS.c.user_key, TRANSITIONS.c.change, TRANSITIONS.c.at)
            .where(TRANSITIONS.c.segment == name).order_by(TRANSITIONS.c.id.desc()).limit(limit))]


SIZES = text("""
    SELECT point AS at,
           (SELECT count(*) FILTER (WHERE change = 'enter') - count(*) FILTER (WHERE change = 'exit')
              FROM segment_transitions t WHERE t.segment = :segment AND t.at <= point) AS size
      FROM generate_series(CAST(:start AS timestamptz), CAST(:end AS timestamptz), CAST(:step AS interval)) AS point
""")
MAX_POINTS = 1000


def sizes(engine: Engine, name: str, start: datetime, end: datetime, step: timedelta) -> list[dict]:
    """The segment's size at each point from start to end (from the transition history)."""
    if step.total_seconds() <= 0 or end < start:
        raise SegmentDefinitionError("sizes need start <= end and a positive step")
    if (end - start) / step > MAX_POINTS:
        raise SegmentDefinitionError(f"at most {MAX_POINTS} points per query")
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(SIZES, {"segment": name, "start": start, "end": end,
                                                              "step": step})]


def publish_backlog(engine: Engine, producer, topic: str, budget_s: float, chunk: int = 1000,
                    pace: Pace | None = None) -> int:
    """Publish chunks of unpublished transitions until none are left or ``budget_s`` has passed.

    One chunk per pass drained at most 200 transitions a second at the default 5-s poll: less than
    a busy shop's traffic or a full recompute makes, so the outbox (and segment campaigns) fell behind."""
    published, deadline = 0, time.monotonic() + budget_s
    while True:
        sent = _paced(pace, publish_transitions, engine, producer, topic, chunk)
        published += sent
        if sent < chunk or time.monotonic() >= deadline:
            return published


def publish_transitions(engine: Engine, producer, topic: str, limit: int = 1000) -> int:
    """Send unpublished enter/exit records to Kafka (keyed by user key), then mark them published.

    At least once: a crash after the send and before the commit sends them again with the same
    ``transition_id``, which consumers use to drop the duplicate."""
    import orjson

    with engine.begin() as conn:
        rows = conn.execute(select(TRANSITIONS).where(TRANSITIONS.c.published_at.is_(None))
                            .order_by(TRANSITIONS.c.id).limit(limit).with_for_update(skip_locked=True)).all()
        if not rows:
            return 0
        futures = [producer.send(topic, key=row.user_key.encode(), value=orjson.dumps({
            "transition_id": row.id, "segment": row.segment, "user_key": row.user_key, "change": row.change,
            "at": row.at.isoformat()})) for row in rows]
        producer.flush(30)
        for future in futures:
            future.get(timeout=30)  # raises if Kafka did not acknowledge: nothing is marked published
        conn.execute(update(TRANSITIONS).where(TRANSITIONS.c.id.in_([r.id for r in rows]))
                     .values(published_at=func.now()))
    return len(rows)
