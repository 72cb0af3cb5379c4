"""The worker writer's statements, prepared once per connection (storage/writers.py).

A batch runs about ten statements; at the hundreds of events a batch holds while the worker keeps up, planning
them again every batch cost PostgreSQL more than the rows did (bench/worker_writes.py --batch-events 200).
A statement is prepared on its connection's first use, under the name given; ``%s`` placeholders become
``$1``, ``$2``... and their types come from the statement's casts (``%s::json``). PREPARE is not undone by a
rolled-back transaction, and a connection the pool replaces is a new key here, so a name is never missing.
"""

import re
import weakref

_prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # DB-API connection -> names prepared on it


def _numbered(statement: str) -> str:
    count = iter(range(1, statement.count("%s") + 1))
    return re.sub(r"%s", lambda _match: f"${next(count)}", statement)


def execute(cursor, name: str, statement: str, *params) -> None:
    """``cursor.execute(statement, params)``, through the prepared statement ``name``."""
    names = _prepared.setdefault(cursor.connection, set())
    if name not in names:
        cursor.execute(f"PREPARE {name} AS {_numbered(statement)}")
        names.add(name)
    cursor.execute(f"EXECUTE {name} ({', '.join(['%s'] * len(params))})", params)
