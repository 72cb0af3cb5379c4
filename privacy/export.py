"""A subject's export (right of access): everything PostgreSQL holds about one person, as one JSON document.

The person is found from any of their ids as erasure finds them (storage/identities.py): the user the id
belongs to, every id merged into them, and every id linked to them that no one else has claimed (erasure
takes a linked id also linked to another user, to be sure it goes; an export leaves it out, to be sure
it shows no one else's rows). The document::

    {"subject": {"looked_up_by", "user_key", "ids", "generated_at"},
     "tables": {name: [rows]},      # every table searched, empty ones too, by name
     "derived": {view: [rows]},     # views computed from those tables (RFM scores, interest profile)
     "not_included": [...]}         # copies outside PostgreSQL, in words

``tables`` holds the rows of those ids from every base table with a ``user_key`` column (found in the
catalogue, so a table added later is exported too), except ``user_identities`` rows that name an id
another user holds; the rows of tables whose foreign key points at those rows (``campaign_attempts`` of
the deliveries); and ``dead_letters`` whose payload's ``userId``, ``anonymousId``, ``previousId`` or
``user_key`` is one of the ids. Rows come in primary-key order; values are JSON-safe (``json_safe``):
decimals as strings, times as ISO-8601 in UTC. A JSON field named like a secret (``writeKey``, ``apiKey``,
``password``, ``token``...) is replaced by ``"[redacted]"``; the tables of keys have no ``user_key``.

Everything is read in one read-only REPEATABLE READ transaction: one consistent snapshot. ``stream_export``
yields the document in pieces, reading rows in batches through a server-side cursor, so an export of a
million events holds one batch in memory; ``export_subject`` returns the same document as a dict.

Refused: an empty id, one over 256 characters (no column holds it), one with NUL or not encodable as
UTF-8 (``InvalidSubjectId``); a placeholder id of ``identity_denylist`` such as ``null``, whose rows are
many shoppers' (``SharedId``). An id of whom nothing is held raises ``UnknownSubject``.
"""

import base64
import math
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import orjson
from sqlalchemy import Connection, Engine, bindparam, text

from spoor.privacy import PrivacyError
from spoor.settings import Settings
from spoor.storage.identities import LINKED, MERGED, TABLES_WITH_USER_KEY, erasable_ids, ids_of

MAX_ID_CHARS = 256  # the width of every user_key and id column
BATCH_ROWS = 1000
REDACTED = "[redacted]"
# JSON fields (and columns) never exported, compared lower-case without "_" and "-".
SECRET_FIELDS = frozenset({"writekey", "apikey", "apisecret", "secret", "password", "passwd", "token",
                           "accesstoken", "refreshtoken", "authorization", "keyhash", "signingsecret"})
DEAD_LETTER_ID_FIELDS = ("userId", "anonymousId", "previousId", "user_key")
DEFAULT_DENYLIST = tuple(Settings.model_fields["identity_denylist"].default)
NOT_INCLUDED = [
    ("Kafka topics: the raw events topic holds the events in 'events' for its retention (7 days by default); "
     "the dead-letter and triggers topics hold the rows of 'dead_letters' and 'behaviour_triggers'."),
    ("The stream worker's state (profiles, sessions, windows) is what 'user_profiles', 'sessions' and "
     "'user_activity' show."),
    "Dead letters of a whole request (a batch refused at once) name no single user and are not searched.",
]

VIEWS_WITH_USER_KEY = text("""
    SELECT c.table_name FROM information_schema.columns c
      JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
     WHERE c.table_schema = current_schema() AND c.column_name = 'user_key' AND t.table_type = 'VIEW'
     ORDER BY c.table_name
""")
PRIMARY_KEYS = text("""
    SELECT c.relname::text, array_agg(a.attname::text ORDER BY k.ord)
      FROM pg_index i
      JOIN pg_class c ON c.oid = i.indrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
     CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
      JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
     WHERE n.nspname = current_schema() AND i.indisprimary
     GROUP BY c.relname
""")
# Foreign keys from a table without user_key to a table with one: (child, column, parent, column), by their first
# column (the id; campaign_attempts' (delivery_id, triggered_at) holds the partition key too, migration 0030).
CHILD_TABLES = text("""
    SELECT child.relname::text, ca.attname::text, parent.relname::text, pa.attname::text
      FROM pg_constraint f
      JOIN pg_class child ON child.oid = f.conrelid
      JOIN pg_class parent ON parent.oid = f.confrelid
      JOIN pg_namespace n ON n.oid = child.relnamespace
      JOIN pg_attribute ca ON ca.attrelid = f.conrelid AND ca.attnum = f.conkey[1]
      JOIN pg_attribute pa ON pa.attrelid = f.confrelid AND pa.attnum = f.confkey[1]
     WHERE f.contype = 'f' AND n.nspname = current_schema() AND f.conparentid = 0 AND NOT child.relispartition
       AND parent.relname = ANY(:parents) AND NOT child.relname = ANY(:parents)
     ORDER BY 1, 2
""")
CLAIMED_ELSEWHERE = text("SELECT EXISTS (SELECT 1 FROM user_identities WHERE id = :id AND status <> 'refused' "
                         "AND NOT user_key = ANY(:mine))")


class InvalidSubjectId(PrivacyError):
    """The id cannot name anyone: empty, too long, NUL, not UTF-8."""


class SharedId(PrivacyError):
    """A placeholder id (``identity_denylist``): its rows are many shoppers', not one person's."""


class UnknownSubject(PrivacyError):
    """Nothing is held about the id."""


@dataclass(frozen=True)
class Subject:
    looked_up_by: str
    user_key: str
    ids: tuple[str, ...]


def check_id(any_id: str, denylist: Iterable[str] = DEFAULT_DENYLIST) -> None:
    if not any_id:
        raise InvalidSubjectId("the id is empty")
    if len(any_id) > MAX_ID_CHARS:
        raise InvalidSubjectId(f"the id is over {MAX_ID_CHARS} characters: no id is that long")
    if "\x00" in any_id:
        raise InvalidSubjectId("the id contains NUL: no id does")
    try:
        any_id.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidSubjectId("the id is not valid Unicode text") from err
    if any_id.strip().casefold() in {d.casefold() for d in denylist}:
        raise SharedId(f"{any_id!r} is a placeholder id (identity_denylist): its rows are many shoppers', "
                       "so they are not exported as one person's")


def resolve_subject(conn: Connection, any_id: str, denylist: Iterable[str] = DEFAULT_DENYLIST) -> Subject:
    """The person ``any_id`` names: erasure's ids (``erasable_ids``) less a linked id someone else claims
    too, and less placeholder ids."""
    denylist = tuple(denylist)
    check_id(any_id, denylist)
    user_key, candidates = erasable_ids(conn, any_id)
    status = {row["id"]: row["status"] for row in ids_of(conn, user_key)}
    sure = [user_key] + [i for i in candidates if status.get(i) == MERGED]
    ids = list(sure)
    for linked in (i for i in candidates if status.get(i) == LINKED):
        if not conn.execute(CLAIMED_ELSEWHERE, {"id": linked, "mine": sure}).scalar_one():
            ids.append(linked)
    placeholders = {d.casefold() for d in denylist}
    ids = [i for i in dict.fromkeys(ids) if i.strip().casefold() not in placeholders]
    return Subject(looked_up_by=any_id, user_key=user_key, ids=tuple(ids))


# -- JSON-safe values ----------------------------------------------------------------------------------

def _secret(name: str) -> bool:
    return name.lower().replace("_", "").replace("-", "") in SECRET_FIELDS


def json_safe(value):
    """``value`` as JSON can hold it, the same every time: Decimal as its exact text, datetimes in UTC
    (ISO-8601 with ``Z``; a naive one is taken as UTC), dates and times ISO-8601, intervals as seconds,
    NaN and infinities as text, bytes as base64, UUIDs as text; secret-named fields of objects redacted.
    Any other type raises TypeError: a new column type is noticed, not exported as ``repr``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value).replace("inf", "Infinity").replace("nan", "NaN")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return utc.isoformat().replace("+00:00", "Z")
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {str(k): REDACTED if _secret(str(k)) else json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"no JSON form for a {type(value).__name__} value")


# -- what is read --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Section:
    group: str  # "tables" or "derived"
    name: str
    select: str  # selects the rows, with :ids (expanding)
    order: str

    @property
    def sql(self) -> str:
        return f"{self.select} ORDER BY {self.order}"


def _quote(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote_identifier(name)


def sections(conn: Connection) -> list[Section]:
    """What an export reads, from the catalogue: each table with user_key, the tables pointing at them,
    dead_letters, and the views with user_key."""
    keys = {table: columns for table, columns in conn.execute(PRIMARY_KEYS)}

    def order(table: str, alias: str) -> str:
        columns = keys.get(table)
        return ", ".join(f"{alias}.{_quote(conn, c)}" for c in columns) if columns else f"{alias}::text COLLATE \"C\""

    found: list[Section] = []
    parents = conn.execute(TABLES_WITH_USER_KEY).scalars().all()
    for table in parents:
        where = "t.user_key IN :ids"
        if table == "user_identities":  # not an id another user holds (a refusal naming someone else's id)
            where += (" AND (t.id IN :ids OR NOT EXISTS (SELECT 1 FROM user_identities o WHERE o.id = t.id"
                      " AND o.status <> 'refused' AND o.user_key NOT IN :ids))")
        found.append(Section("tables", table, f"SELECT * FROM {_quote(conn, table)} t WHERE {where}",
                             order(table, "t")))
    for child, column, parent, parent_column in conn.execute(CHILD_TABLES, {"parents": list(parents)}):
        found.append(Section("tables", child, (
            f"SELECT * FROM {_quote(conn, child)} t WHERE t.{_quote(conn, column)} IN "
            f"(SELECT p.{_quote(conn, parent_column)} FROM {_quote(conn, parent)} p WHERE p.user_key IN :ids)"),
            order(child, "t")))
    named = " OR ".join(f"t.payload ->> '{field}' IN :ids" for field in DEAD_LETTER_ID_FIELDS)
    found.append(Section("tables", "dead_letters", f"SELECT * FROM dead_letters t WHERE {named}",
                         order("dead_letters", "t")))
    for view in conn.execute(VIEWS_WITH_USER_KEY).scalars():
        found.append(Section("derived", view, f"SELECT * FROM {_quote(conn, view)} t WHERE t.user_key IN :ids",
                             't::text COLLATE "C"'))
    return sorted(found, key=lambda s: (s.group != "tables", s.name))


def section_rows(conn: Connection, section: Section, ids: Iterable[str]) -> Iterator[dict]:
    """The section's rows, JSON-safe, read ``BATCH_ROWS`` at a time through a server-side cursor."""
    query = text(section.sql).bindparams(bindparam("ids", expanding=True))
    result = conn.execution_options(stream_results=True, max_row_buffer=BATCH_ROWS).execute(
        query, {"ids": list(ids)})
    for row in result:
        yield {column: REDACTED if _secret(column) else json_safe(value)
               for column, value in row._mapping.items()}


# -- the document --------------------------------------------------------------------------------------

Progress = Callable[[str, int], None]  # (section name, rows of it so far), every BATCH_ROWS rows and at its end


def _snapshot(engine: Engine) -> Connection:
    return engine.connect().execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)


def _held(conn: Connection, subject: Subject, found: list[Section]) -> bool:
    return any(conn.execute(text(f"SELECT EXISTS ({s.select})")
                            .bindparams(bindparam("ids", expanding=True)), {"ids": list(subject.ids)}).scalar_one()
               for s in found if s.group == "tables")


def stream_export(engine: Engine, any_id: str, *, denylist: Iterable[str] = DEFAULT_DENYLIST,
                  progress: Progress | None = None, clock=lambda: datetime.now(UTC)) -> Iterator[bytes]:
    """The export document of the person ``any_id`` names, in pieces of UTF-8 JSON. The checks run
    before the first piece, so a refusal (``PrivacyError``) comes before any output."""
    conn = _snapshot(engine)
    try:
        subject = resolve_subject(conn, any_id, denylist)
        found = sections(conn)
        if not _held(conn, subject, found):
            raise UnknownSubject(f"nothing is held about {any_id[:64]!r}")
    except BaseException:
        conn.close()
        raise
    return _pieces(conn, subject, found, progress, clock())


def _pieces(conn: Connection, subject: Subject, found: list[Section], progress: Progress | None,
            generated_at: datetime) -> Iterator[bytes]:
    try:
        head = {"looked_up_by": subject.looked_up_by, "user_key": subject.user_key, "ids": list(subject.ids),
                "generated_at": json_safe(generated_at)}
        yield b'{"subject":' + orjson.dumps(head)
        group = None
        for section in found:
            if section.group != group:
                yield (b"}," if group else b",") + orjson.dumps(section.group) + b":{"
                first_section = True
                group = section.group
            yield (b"" if first_section else b",") + orjson.dumps(section.name) + b":["
            first_section = False
            count = 0
            for row in section_rows(conn, section, subject.ids):
                yield (b"," if count else b"") + orjson.dumps(row)
                count += 1
                if progress and count % BATCH_ROWS == 0:
                    progress(section.name, count)
            if progress:
                progress(section.name, count)
            yield b"]"
        yield b"}," + b'"not_included":' + orjson.dumps(NOT_INCLUDED) + b"}"
    finally:
        conn.close()


def export_subject(engine: Engine, any_id: str, *, denylist: Iterable[str] = DEFAULT_DENYLIST,
                   clock=lambda: datetime.now(UTC)) -> dict:
    """The document of ``stream_export`` as a dict (the whole of it in memory)."""
    return orjson.loads(b"".join(stream_export(engine, any_id, denylist=denylist, clock=clock)))

