"""storage/identities.py without a database: which links one upsert writes, and a rule for every table
with a user_key (a table without one is still re-pointed, but its author should have decided)."""

import importlib

from spoor.storage.identities import RULES, unique_links
from spoor.storage.tables import Base

TABLE_MODULES = ("tables", "analytics_tables", "segment_tables", "metric_tables", "interest_tables", "attribution_tables")


def link(linked_id: str, user_key: str, status: str = "merged", **extra) -> dict:
    return {"id": linked_id, "user_key": user_key, "kind": "anonymous", "status": status, **extra}


def test_one_row_per_pair_and_a_decided_status_is_not_undone():
    rows = unique_links([link("a", "u", "linked"), link("a", "u", "merged"), link("a", "u", "linked"),
                         link("b", "u", "linked"), link("b", "u", "refused", reason="denylisted id")])
    assert [(r["id"], r["status"], r["reason"]) for r in rows] == [("a", "merged", None),
                                                                   ("b", "refused", "denylisted id")]
    assert rows[0]["linked_at"] is None  # now(), in PostgreSQL


def test_an_id_is_merged_into_one_user_of_the_batch_and_self_links_go():
    rows = unique_links([link("a", "u1"), link("a", "u2"), link("u1", "u1"), link("a", "u1")])
    assert [(r["id"], r["user_key"], r["status"]) for r in rows] == [("a", "u1", "merged"), ("a", "u2", "refused")]
    assert rows[1]["reason"] == "the id was merged into another user first"


def test_every_table_with_a_user_key_has_its_rule():
    for module in TABLE_MODULES:
        importlib.import_module(f"spoor.storage.{module}")
    keyed = {table.name for table in Base.metadata.tables.values() if "user_key" in table.c}
    assert keyed - set(RULES) == set(), "decide how move_rows moves these tables' rows (storage/identities.py)"
    assert set(RULES) - keyed == set()
