"""One root exception per package (issue 20): every exception class a folder defines derives from that
folder's root, defined in its ``__init__.py`` directly under ``spoor.errors.SpoorError`` (the root of
the contracts, ``spoor/``, is SpoorError itself). A folder that defines no exception of its own has no
root. A caller can then catch one stage's refusals (``except IngestError``), or all of Spoor's
(``except SpoorError``), without catching a library's error or a bug.

Exception classes are found by reading each module (no folder is imported whole: ``cli/__main__`` runs
the command, the migrations run Alembic); only the modules that define one are imported, to check the
real class hierarchy."""

import ast
import builtins
import importlib
from pathlib import Path

import pytest

from spoor.errors import SpoorError

REPO = Path(__file__).resolve().parent.parent.parent
# folder -> (module, name) of its root; None: the folder defines no exception of its own.
ROOTS = {
    "spoor": ("spoor.errors", "SpoorError"),
    "ingest": ("spoor.ingest", "IngestError"),
    "storage": ("spoor.storage", "StorageError"),
    "segments": ("spoor.segments", "SegmentsError"),
    "campaigns": ("spoor.campaigns", "CampaignsError"),
    "privacy": ("spoor.privacy", "PrivacyError"),
    "alerts": ("spoor.alerts", "AlertsError"),
    "stream_processors": ("spoor.stream_processors", "WorkerError"),
    "cli": ("spoor.cli", "CliError"),
}
EXCEPTION_SUFFIXES = ("Error", "Exception", "Exit", "Warning", "Interrupt")
BUILTIN_EXCEPTIONS = {name for name, value in vars(builtins).items()
                      if isinstance(value, type) and issubclass(value, BaseException)}


def _module_name(folder: str, path: Path) -> str:
    parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["spoor"] + ([] if folder == "spoor" else [folder]) + parts)


def _base_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _class_defs():
    """(folder, module, ClassDef, at module level) for every class of every folder."""
    for folder in ROOTS:
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            top = {id(node) for node in tree.body}
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    yield folder, _module_name(folder, path), node, id(node) in top


def _exception_classes() -> list[tuple[str, str, str, bool]]:
    """(folder, module, class name, at module level) of every exception class: a class with a base that is
    a builtin exception, is named like one, or is itself such a class (found again until nothing new is)."""
    defs = list(_class_defs())
    names = set(BUILTIN_EXCEPTIONS)
    found: dict[int, tuple[str, str, str, bool]] = {}
    while True:
        new = {id(node): (folder, module, node.name, top) for folder, module, node, top in defs
               if id(node) not in found
               and any((base := _base_name(b)) and (base in names or base.endswith(EXCEPTION_SUFFIXES))
                       for b in node.bases)}
        if not new:
            return sorted(found.values())
        found.update(new)
        names.update(name for _folder, _module, name, _top in new.values())


EXCEPTIONS = _exception_classes()


def _root(folder: str) -> type | None:
    if ROOTS[folder] is None:
        return None
    module, name = ROOTS[folder]
    root = getattr(importlib.import_module(module), name, None)
    assert root is not None, f"{module} defines no {name}, the root of {folder}'s exceptions"
    return root


def _class(module: str, name: str) -> type:
    cls = getattr(importlib.import_module(module), name)
    assert isinstance(cls, type) and issubclass(cls, BaseException), f"{module}.{name} is no exception class"
    return cls


def test_the_walk_finds_the_exceptions_it_must():
    """The module walk itself: a class named like an error, one under a builtin, one under such a class."""
    found = {f"{module}.{name}" for _folder, module, name, _top in EXCEPTIONS}
    assert {"spoor.errors.SpoorError", "spoor.ingest.normalize.InvalidEvent", "spoor.ingest.intake._OverLimit",
            "spoor.ingest.producer.KafkaUnavailable", "spoor.segments.membership.UnknownSegment",
            "spoor.bad_rows.InvalidRecord"} <= found


@pytest.mark.parametrize("folder", [folder for folder, root in ROOTS.items() if root is not None])
def test_every_root_is_in_its_package_and_derives_from_spoor_error(folder):
    module, name = ROOTS[folder]
    root = _root(folder)
    assert root.__module__ == module, f"{name} must be defined in {module}, not {root.__module__}"
    if folder == "spoor":
        assert root is SpoorError
    else:
        assert module == f"spoor.{folder}", f"{folder}'s root belongs in {folder}/__init__.py"
        assert root.__bases__ == (SpoorError,), f"{name} derives from {root.__bases__}, not from SpoorError alone"


@pytest.mark.parametrize("folder", list(ROOTS))
def test_every_exception_derives_from_its_package_root(folder):
    root = _root(folder)
    wrong = []
    for _folder, module, name, top in (entry for entry in EXCEPTIONS if entry[0] == folder):
        qualified = f"{module}.{name}"
        if not top:
            wrong.append(f"{qualified}: define exception classes at module level")
            continue
        cls = _class(module, name)
        if root is None:
            wrong.append(f"{qualified} ({', '.join(b.__name__ for b in cls.__bases__)}): {folder} has no root "
                         f"exception; add one in {folder}/__init__.py and list it in ROOTS")
        elif not issubclass(cls, root):
            wrong.append(f"{qualified} derives from {', '.join(b.__name__ for b in cls.__bases__)}, "
                         f"not from {root.__name__}")
    assert not wrong, "\n".join(wrong)


def test_spoor_error_catches_a_whole_stage():
    """What the roots are for: one ``except`` for a stage's refusals, another for all of Spoor's."""
    from spoor.bad_rows import InvalidRecord
    from spoor.ingest import IngestError
    from spoor.ingest.collector import RequestRejected
    from spoor.ingest.normalize import InvalidEvent
    from spoor.ingest.producer import KafkaUnavailable

    for error in (InvalidEvent("userId", "userId or anonymousId is required"), KafkaUnavailable("timed out"),
                  RequestRejected(429, "rate limited")):
        with pytest.raises(IngestError):
            raise error
        with pytest.raises(SpoorError):
            raise error
    # The collector's invalid message is a bad row's record like any stage's (spoor.bad_rows).
    invalid = InvalidEvent("type", "must be one of [...]")
    assert isinstance(invalid, InvalidRecord)
    assert (invalid.field, invalid.reason, invalid.failure_type, str(invalid)) == \
        ("type", "must be one of [...]", "schema_violation", "type: must be one of [...]")
