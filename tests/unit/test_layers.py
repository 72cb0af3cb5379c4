"""The house's floors: every import between Spoor's top-level folders runs down, never up or across
a floor. The contracts (``spoor/``) import no stage; the command line (``cli/``) is the only folder
that may import every stage. docs/architecture.md draws the same floors."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
# Floor of each folder, from the ground up. A folder may import only folders on lower floors.
FLOORS = {
    "spoor": 1,              # contracts: settings, the event, bad rows, topics, signing, metric columns
    "storage": 2,            # PostgreSQL tables, migrations, writers and queries
    "ingest": 3,             # the HTTP collector
    "alerts": 3,             # detectors, rules, the alert lifecycle and notifiers
    "segments": 3,           # the segment language and membership
    "privacy": 3,            # consent and erasure
    "stream_processors": 4,  # the Faust worker (it evaluates alert rules in the stream)
    "campaigns": 4,          # campaigns on segments and triggers
    "cli": 5,                # the spoor command, the admin API, demo, replay, simulators
}


def _folder(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "spoor":
        return parts[0] if parts[0] in FLOORS else None  # a bare stage name: the old, clashing layout
    return parts[1] if len(parts) > 1 and parts[1] in FLOORS and parts[1] != "spoor" else "spoor"


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []


def _edges():
    for folder in FLOORS:
        for path in sorted((REPO / folder).rglob("*.py")):
            for line, module, names in _imports(path):
                # ``from spoor import webhooks`` names a module of the contracts; ``from spoor.cli import x`` one of cli
                targets = [f"{module}.{name}" for name in names] if module in ("spoor",) else [module]
                for target in targets:
                    to = _folder(target)
                    if to is not None and to != folder:
                        yield f"{path.relative_to(REPO)}:{line}", folder, to, target


def test_every_import_between_folders_runs_down():
    up = [f"{where} ({frm}, floor {FLOORS[frm]}) imports {target} ({to}, floor {FLOORS[to]})"
          for where, frm, to, target in _edges() if FLOORS[to] >= FLOORS[frm]]
    assert not up, "imports that run up or across a floor:\n" + "\n".join(up)


def test_stages_are_imported_under_the_spoor_namespace():
    bare = [f"{where} imports {target}" for where, _frm, _to, target in _edges() if not target.startswith("spoor")]
    assert not bare, "a bare stage name can clash with another package; import spoor.<stage>:\n" + "\n".join(bare)


@pytest.mark.parametrize("folder", sorted(FLOORS))
def test_every_folder_is_installed_under_spoor(folder):
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    name = "spoor" if folder == "spoor" else f"spoor.{folder}"
    assert f'"{name}" = "{folder}"' in pyproject, f"pyproject.toml does not map {name} to {folder}/"


def test_the_checks_see_the_imports_they_judge():
    """A guard on the guard: the walk finds the house's real imports (the worker writes through storage)."""
    edges = {(frm, to) for _where, frm, to, _target in _edges()}
    assert ("stream_processors", "storage") in edges and ("cli", "ingest") in edges and ("ingest", "spoor") in edges
