"""Writes and reads of business-metric windows. Every write is idempotent.

A closed window is inserted once (``ON CONFLICT DO NOTHING`` on its natural
key), so a replay after a crash cannot overwrite a complete window with a
partial recount. Windows and the partitions' watermarks are written in one
transaction: a reader that sees a watermark sees every window it covers.
"""

from collections.abc import Sequence
from datetime import datetime

import orjson
from sqlalchemy import Engine, func, select, text
from sqlalchemy.dialects.postgresql import insert

from spoor.metric_columns import COUNTS
from spoor.storage.metric_tables import MetricWatermark, MetricWindow

WINDOW_COLUMNS = [c.name for c in MetricWindow.__table__.columns if c.server_default is None]
# One JSON document per batch, expanded by PostgreSQL (like storage/writers.py): binding each
# row's ~25 parameters in Python cost more than folding the windows.
INSERT_WINDOWS = (
    f"INSERT INTO metric_windows ({', '.join(WINDOW_COLUMNS)}) "
    f"SELECT {', '.join(WINDOW_COLUMNS)} FROM json_populate_recordset(NULL::metric_windows, %s::json) "
    "ON CONFLICT (resolution, window_start, dimension, partition) DO NOTHING")
_watermark = insert(MetricWatermark.__table__)
UPSERT_WATERMARK = _watermark.on_conflict_do_update(
    index_elements=["partition"],
    set_={"closed_until": func.greatest(MetricWatermark.__table__.c.closed_until, _watermark.excluded.closed_until),
          "updated_at": func.now()})

_sums = ", ".join(f"sum({name})::bigint AS {name}" for name in COUNTS)
WINDOW_TOTALS = text(f"""
    SELECT window_end, dimension, {_sums}, sum(revenue) AS revenue, bool_or(partial) AS partial
      FROM metric_windows
     WHERE resolution = :resolution AND window_end > :after AND window_end <= :until
     GROUP BY window_end, dimension
     ORDER BY window_end, dimension
""")
SERIES = text(f"""
    SELECT window_end, {_sums}, sum(revenue) AS revenue, bool_or(partial) AS partial
      FROM metric_windows
     WHERE resolution = :resolution AND dimension = :dimension
       AND window_end > :after AND window_end <= :until
     GROUP BY window_end ORDER BY window_end
""")


class MetricWindowWriter:
    """Blocking: call from a thread."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def write(self, rows: Sequence[dict], watermarks: dict[int, datetime]) -> None:
        with self.engine.begin() as conn:
            if rows:
                cursor = conn.connection.dbapi_connection.cursor()
                cursor.execute(INSERT_WINDOWS, (orjson.dumps(list(rows), default=str).decode(),))
                cursor.close()
            if watermarks:
                conn.execute(UPSERT_WATERMARK, [{"partition": p, "closed_until": at} for p, at in watermarks.items()])


def complete_until(engine: Engine, partitions: int) -> datetime | None:
    """Every window ending at or before this is written for all ``partitions`` (None: not yet)."""
    with engine.connect() as conn:
        rows = conn.execute(select(MetricWatermark.partition, MetricWatermark.closed_until)
                            .where(MetricWatermark.partition < partitions)).all()
    if len(rows) < partitions:
        return None
    return min(row.closed_until for row in rows)


def window_totals(engine: Engine, resolution: str, after: datetime, until: datetime) -> dict[datetime, dict]:
    """window_end -> dimension -> totals over partitions, for windows ending in (after, until]."""
    windows: dict[datetime, dict] = {}
    with engine.connect() as conn:
        for row in conn.execute(WINDOW_TOTALS, {"resolution": resolution, "after": after, "until": until}):
            values = dict(row._mapping)
            windows.setdefault(values.pop("window_end"), {})[values.pop("dimension")] = values
    return windows


def series(engine: Engine, resolution: str, dimension: str, after: datetime, until: datetime) -> list[dict]:
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(
            SERIES, {"resolution": resolution, "dimension": dimension, "after": after, "until": until})]
