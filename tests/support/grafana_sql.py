"""The SQL of Grafana dashboard panels, with Grafana's macros and variables expanded as its PostgreSQL
data source expands them, so tests can run it against the real schema."""

import json
import re
from datetime import datetime, timezone
from pathlib import Path

from tests.support.local_stack import REPO

DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"


def panels(path: Path) -> list[dict]:
    """Every panel of a dashboard, rows' nested panels included (a row panel has no query)."""
    out = []
    for panel in json.loads(path.read_text())["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def variables(path: Path) -> dict[str, list[str]]:
    """Each dashboard variable's values (custom variables: their options)."""
    listed = json.loads(path.read_text()).get("templating", {}).get("list", [])
    return {v["name"]: [o["value"] for o in v["options"]] for v in listed}


def _literal(at: datetime) -> str:
    return "'" + at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") + "'"


def expand(sql: str, start: datetime, end: datetime, values: dict[str, str] | None = None) -> str:
    """``$__timeFilter(col)`` -> ``col BETWEEN 'start' AND 'end'``, ``$__timeFrom()``/``$__timeTo()`` -> the
    bounds, ``$name``/``${name}`` -> the variable's value. A macro or variable left over is an error: the
    panel would not run in Grafana as tested."""
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)",
                 lambda m: f"{m.group(1).strip()} BETWEEN {_literal(start)} AND {_literal(end)}", sql)
    sql = sql.replace("$__timeFrom()", _literal(start)).replace("$__timeTo()", _literal(end))
    for name, value in (values or {}).items():
        sql = re.sub(r"\$\{" + name + r"\}|\$" + name + r"\b", value, sql)
    left = re.findall(r"\$\{?\w+", sql)
    if left:
        raise ValueError(f"unexpanded macro or variable {left} in: {sql}")
    return sql
