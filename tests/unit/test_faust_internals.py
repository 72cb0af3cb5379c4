"""stream_processors/faust_internals.py against the installed faust-streaming and aiokafka (no broker).

1. Every private name the module relies on still exists, with the kind it expects (a method with
   these parameter names, an instance attribute Faust declares and sets), and the hooks built on
   them still run: a Faust upgrade that drops or reshapes one fails here, with the name, instead of
   crashing a worker.
2. No other file in stream_processors/ reaches a private part of a Faust or aiokafka object. The
   check reads each file's syntax tree (``private_reaches``) and reports:
   P1 ``x._name`` where ``x`` is neither ``self``/``cls`` nor a name imported from outside
      faust/aiokafka/mode (``os._exit`` is fine; ``app.consumer._committed_offset`` is not);
   P2 ``super()._name``: a call into a base's private method;
   P3 in a class deriving from a faust/aiokafka/mode class (directly, or through classes of
      stream_processors): ``def _name``, ``self._name``/``cls._name`` and class-level ``_name = ...``
      (Faust's private methods and attributes, overridden or used; a private name of our own there
      would share Faust's namespace and could clash with one a later Faust adds);
   P4 ``getattr``/``setattr``/``hasattr``/``delattr`` with a literal ``"_name"``;
   P5 an import of a private module or name from faust/aiokafka/mode (``from faust.x import _y``).
   ``_name`` is any name with a leading underscore except dunders (``__init__``).
"""

import ast
import asyncio
import inspect
import re
from pathlib import Path

import faust
import faust.transport.consumer as faust_consumer
import pytest
from aiokafka import AIOKafkaConsumer
from faust.stores import rocksdb
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from spoor.stream_processors import faust_internals
from spoor.stream_processors.faust_internals import (
    ConsumerHookApp,
    PlacedRocksDBStore,
    StoreChoosingTable,
    committed_offset,
    set_fetch_limits,
    track_batches,
)

REPO = Path(__file__).resolve().parent.parent.parent
FOLDER = REPO / "stream_processors"
BROKER = "kafka://127.0.0.1:9092"  # never connected to

# -- 1. the private names faust_internals relies on ------------------------------------------------------------------

# (class, private method, its parameter names): the methods faust_internals overrides, and one whose behaviour
# continuity.py works around.
METHODS = [
    (faust_aiokafka.AIOKafkaConsumerThread, "_create_worker_consumer", ["self", "transport"]),
    (faust_aiokafka.Consumer, "_new_consumer_thread", ["self"]),
    (faust.App, "_new_transport", ["self"]),
    (faust.Table, "_new_store_by_url", ["self", "url"]),
    (rocksdb.Store, "_set", ["self", "key", "value"]),
    (rocksdb.Store, "_get", ["self", "key"]),
    (rocksdb.Store, "_del", ["self", "key"]),
    (rocksdb.Store, "_contains", ["self", "key"]),
    (rocksdb.Store, "_db_for_partition", ["self", "partition"]),
    (faust_consumer.Consumer, "_drain_messages", ["self", "fetcher"]),  # continuity.py: behaviour relied on
    (faust_aiokafka.Producer, "_ensure_producer", ["self"]),
    (faust.Stream, "_enable_passive", ["self", "channel", "declare"]),  # take_batches
]
# (class, private instance attribute): declared on the class (but UNDECLARED) and set in its __init__.
ATTRIBUTES = [
    (faust_consumer.Consumer, "_committed_offset"),
    (rocksdb.Store, "_dbs"),
    (rocksdb.Store, "_key_index"),
    (AIOKafkaConsumer, "_fetch_max_wait_ms"),  # aiokafka annotates nothing: only set in __init__
    (AIOKafkaConsumer, "_fetch_min_bytes"),
    (faust.Stream, "_processors"),  # take_batches
    (faust.Stream, "_active_agens"),  # track_batches; annotated where __init__ sets it
]

UNDECLARED = {(AIOKafkaConsumer, "_fetch_max_wait_ms"), (AIOKafkaConsumer, "_fetch_min_bytes"),
              (faust.Stream, "_active_agens")}


def _upgrade_hint(cls: type, name: str) -> str:
    return (f"{cls.__module__}.{cls.__qualname__}.{name}, which stream_processors/faust_internals.py relies on, "
            f"{{}} in the installed faust-streaming {faust.__version__}: re-read that Faust code and adapt "
            "faust_internals.py (and its version notes)")


@pytest.mark.parametrize("cls, name, params", METHODS, ids=[f"{c.__name__}.{n}" for c, n, _p in METHODS])
def test_a_private_method_relied_on_is_still_there_with_its_parameters(cls, name, params):
    hint = _upgrade_hint(cls, name)
    assert hasattr(cls, name), hint.format("is gone")
    method = inspect.getattr_static(cls, name)
    assert inspect.isfunction(method), hint.format(f"is no plain method any more ({type(method).__name__})")
    have = list(inspect.signature(method).parameters)
    assert have == params, hint.format(f"takes ({', '.join(have)}), not ({', '.join(params)})")


@pytest.mark.parametrize("cls, name", ATTRIBUTES, ids=[f"{c.__name__}.{n}" for c, n in ATTRIBUTES])
def test_a_private_attribute_relied_on_is_still_set_by_its_class(cls, name):
    hint = _upgrade_hint(cls, name)
    declared = any(name in getattr(klass, "__annotations__", {}) for klass in cls.__mro__)
    assert declared or (cls, name) in UNDECLARED, hint.format("is no longer declared")
    assigned = re.search(rf"self\.{name}(: [^=\n]+)? = ", inspect.getsource(cls.__init__))
    assert assigned, hint.format("is no longer set in __init__")


def test_aiokafka_still_builds_its_fetcher_from_the_fetch_wait_attribute():
    hint = _upgrade_hint(AIOKafkaConsumer, "_fetch_max_wait_ms")
    assert "fetch_max_wait_ms" in inspect.signature(AIOKafkaConsumer.__init__).parameters, \
        hint.format("lost its constructor argument")
    for name in ("fetch_max_wait_ms", "fetch_min_bytes"):
        assert f"{name}=self._{name}" in inspect.getsource(AIOKafkaConsumer.start), \
            _upgrade_hint(AIOKafkaConsumer, f"_{name}").format("is no longer what start() builds the fetcher from")

    async def build() -> tuple[int, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9092", fetch_max_wait_ms=1500)  # never started
        try:
            set_fetch_limits(consumer, 37, 65536)
            return consumer._fetch_max_wait_ms, consumer._fetch_min_bytes
        finally:
            await consumer.stop()
    assert asyncio.run(build()) == (37, 65536)


def test_committed_offset_reads_what_the_faust_consumer_keeps():
    app = faust.App("internals-committed", broker=BROKER)
    tp = TP("events", 0)
    assert committed_offset(app, tp) is None  # nothing committed or read yet
    assert tp not in app.consumer._committed_offset  # reading does not add the partition (a defaultdict)
    app.consumer._committed_offset[tp] = 41  # as Consumer.commit / perform_seek set it
    assert committed_offset(app, tp) == 41


def test_the_hook_app_hands_over_each_worker_consumer_before_it_starts():
    seen = []

    class Recording(ConsumerHookApp):
        def worker_consumer_built(self, consumer):
            seen.append(consumer)

    app = Recording("internals-hook", broker=BROKER)

    async def build():
        consumer = app.consumer._thread._create_worker_consumer(app.transport)  # built, never started
        await consumer.stop()
        return consumer
    built = asyncio.run(build())
    assert seen == [built] and isinstance(built, AIOKafkaConsumer)


def test_the_table_and_store_hooks_run_on_a_real_rocksdb_store(tmp_path):
    """A real table and RocksDB store (rocksdict, in tmp_path): the table builds its store through
    ``store_for_url``, and Faust's public mapping calls reach ``PlacedRocksDBStore``'s overrides."""

    class InPartitionTwo(PlacedRocksDBStore):
        def partition_for_key(self, key: bytes) -> int:
            return 2

    class Table(StoreChoosingTable):
        def store_for_url(self, url):
            return InPartitionTwo(url, self.app, self, table_name=self.name, key_type=self.key_type,
                                  key_serializer=self.key_serializer, value_serializer=self.value_serializer,
                                  value_type=self.value_type, loop=self.loop, options=self.options)

    app = faust.App("internals-store", broker=BROKER, store="rocksdb://", datadir=str(tmp_path),
                    key_serializer="raw", value_serializer="raw")
    store = Table(app, name="t", partitions=4, key_type=bytes, value_type=bytes,
                  options={"driver": "rocksdict"}).data
    assert isinstance(store, InPartitionTwo)
    store[b"user"] = b"state"
    assert (store[b"user"], b"user" in store, b"other" in store) == (b"state", True, False)
    assert list(store._dbs) == [2] and store._key_index[b"user"] == 2
    del store[b"user"]
    assert b"user" not in store

    class Plain(StoreChoosingTable):
        pass
    assert type(Plain(app, name="p", partitions=4, key_type=bytes, value_type=bytes,
                      options={"driver": "rocksdict"}).data) is rocksdb.Store  # None: Faust's own store


async def _batches_from_a_channel(take, sends: list, within: float, max_: int = 10) -> tuple[list, int]:
    """The batches ``take(stream, max_, within)`` yields for ``sends`` (values, or pauses as floats in seconds) on
    an in-memory channel, and how often the stream waited meanwhile (each wait is one wake-up when idle)."""
    app = faust.App("internals-take", broker=BROKER)
    app.flow_control.resume()  # a channel's queue waits on it; a worker resumes it when it starts consuming
    channel = app.channel()
    stream = app.stream(channel)
    waited = 0
    wait_for_stopped = stream.wait_for_stopped

    async def counted(*args, **kwargs):
        nonlocal waited
        waited += 1
        return await wait_for_stopped(*args, **kwargs)
    stream.wait_for_stopped = counted
    got = []

    async def consume():
        async for batch in take(stream, max_, within):
            got.append([event.value for event in batch])
    task = asyncio.ensure_future(consume())
    for send in sends:
        if isinstance(send, float):
            await asyncio.sleep(send)
        else:
            await channel.send(value=send)
    await asyncio.sleep(within * 3)
    task.cancel()
    return got, waited


def test_take_batches_cuts_at_max_and_within_the_wait_after_the_first_event():
    got, _waited = asyncio.run(_batches_from_a_channel(track_batches, [*range(25), 1.0, 99], within=0.5))
    assert got == [list(range(10)), list(range(10, 20)), list(range(20, 25)), [99]]


def test_take_batches_does_not_wake_while_nothing_arrives():
    """Faust's take_events waits ``within`` at a time whatever the buffer holds: 0.5 s of nothing at 0.01 s is
    ~50 wake-ups. take_batches waits for the first event without a timeout."""
    def faust_take(stream, max_, within):
        return stream.take_events(max_, within=within)
    sends = [1, 0.5, 2]
    faust_got, faust_waited = asyncio.run(_batches_from_a_channel(faust_take, sends, within=0.01))
    got, waited = asyncio.run(_batches_from_a_channel(track_batches, sends, within=0.01))
    assert got == faust_got == [[1], [2]]
    assert faust_waited > 15  # the check can fail: Faust's own loop is counted the same way
    assert waited <= 6  # per batch: one wait for its first event, one for the rest


def test_the_module_names_its_versions():
    assert "0.15.1" in faust_internals.__doc__ and "0.15.3" in faust_internals.__doc__
    assert faust.__version__.startswith("0.15."), \
        f"faust-streaming {faust.__version__}: faust_internals.py was checked against 0.15.1-0.15.3"


# -- 2. nobody else reaches Faust's private parts --------------------------------------------------------------------

FAUST_PACKAGES = {"faust", "aiokafka", "mode"}
HERE = "spoor.stream_processors"
INTERNALS = f"{HERE}.faust_internals"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _imports(tree: ast.Module) -> dict[str, str]:
    """Local name -> what it is bound to, dotted (``faust_aiokafka`` -> ``faust.transport.drivers.aiokafka``)."""
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else \
                    alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return bound


def _dotted(node: ast.expr, bound: dict[str, str]) -> str | None:
    if isinstance(node, ast.Name):
        return bound.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        owner = _dotted(node.value, bound)
        return None if owner is None else f"{owner}.{node.attr}"
    return None


def _root(node: ast.expr) -> ast.expr:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node


def _faust_classes(modules: dict[str, ast.Module]) -> set[str]:
    """Dotted names of the classes in ``modules`` that derive from a faust/aiokafka/mode class."""
    bases = {}
    for module, tree in modules.items():
        bound = _imports(tree)
        local = {c.name: f"{module}.{c.name}" for c in ast.walk(tree) if isinstance(c, ast.ClassDef)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases[f"{module}.{node.name}"] = [local.get(b.id) if isinstance(b, ast.Name) and b.id in local
                                                  else _dotted(b, bound) for b in node.bases]
    derived: set[str] = set()
    while True:
        new = {cls for cls, of in bases.items() if cls not in derived and any(
            base and (base.split(".")[0] in FAUST_PACKAGES or base in derived) for base in of)}
        if not new:
            return derived
        derived |= new


def private_reaches(modules: dict[str, ast.Module], exempt: tuple[str, ...] = ()) -> list[tuple[str, int, str]]:
    """(module, line, what) for every reach P1-P5 (module docstring) in ``modules`` (dotted name -> tree),
    but those in ``exempt`` (read only to know which of their classes derive from Faust's)."""
    faust_classes = _faust_classes(modules)
    found = []
    for module, tree in modules.items():
        if module in exempt:
            continue
        bound = _imports(tree)

        def report(node, what, module=module):
            found.append((module, node.lineno, what))

        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                    and node.module.split(".")[0] in FAUST_PACKAGES:
                parts = node.module.split(".") + [alias.name for alias in node.names]
                if any(_private(part) for part in parts):
                    report(node, f"P5 private import from {node.module}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] in FAUST_PACKAGES and any(_private(part) for part in parts):
                        report(node, f"P5 private import {alias.name}")
            elif isinstance(node, ast.Attribute) and _private(node.attr):
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                    continue  # P3 below, in Faust subclasses only
                if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                    report(node, f"P2 super().{node.attr}")
                    continue
                root = _root(owner)
                if isinstance(root, ast.Name) and owner is root and root.id in bound \
                        and bound[root.id].split(".")[0] not in FAUST_PACKAGES:
                    continue  # a private name of a module (or class) from outside Faust: os._exit
                report(node, f"P1 {ast.unparse(node)}")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) > 1 \
                    and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str) \
                    and _private(node.args[1].value):
                report(node, f"P4 {node.func.id}(..., {node.args[1].value!r})")
            elif isinstance(node, ast.ClassDef) and f"{module}.{node.name}" in faust_classes:
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and _private(item.name):
                        report(item, f"P3 def {item.name} in {node.name}, a Faust subclass")
                    targets = item.targets if isinstance(item, ast.Assign) else \
                        [item.target] if isinstance(item, ast.AnnAssign) else []
                    for target in targets:
                        if isinstance(target, ast.Name) and _private(target.id):
                            report(item, f"P3 {target.id} = ... in {node.name}, a Faust subclass")
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Attribute) and _private(inner.attr) \
                            and isinstance(inner.value, ast.Name) and inner.value.id in ("self", "cls"):
                        report(inner, f"P3 {inner.value.id}.{inner.attr} in {node.name}, a Faust subclass")
    return sorted(set(found))


def _folder_modules(folder: Path) -> dict[str, ast.Module]:
    modules = {}
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(folder).with_suffix("").parts
        name = ".".join((HERE, *parts)).removesuffix(".__init__")
        modules[name] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return modules


def test_no_file_but_faust_internals_reaches_a_private_part_of_faust():
    reaches = private_reaches(_folder_modules(FOLDER), exempt=(INTERNALS,))
    assert not reaches, "private parts of faust/aiokafka reached outside stream_processors/faust_internals.py " \
        "(move each behind a named function or base class there, with its version note):\n" + \
        "\n".join(f"{module}:{line}: {what}" for module, line, what in reaches)


OLD_CODE = {  # what the worker did before faust_internals.py (abridged), and a few more shapes of the same
    f"{HERE}.app": """
import os
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
def expected_start(app, tp):
    committed = app.consumer._committed_offset.get(tp)
    os._exit(3)
class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.app.fetch_max_wait_ms
        return consumer
class FetchWaitApp(faust.App):
    def _new_transport(self):
        return None
""",
    f"{HERE}.rocksdb_store": """
from faust.stores import rocksdb
from faust.transport._private import thing
class KeyPartitionedStore(rocksdb.Store):
    _cache = {}
    def _set(self, key, value):
        self._key_index[key] = 0
""",
    f"{HERE}.durable_table": """
from spoor.stream_processors.rocksdb_store import KeyPartitionedStore
class Deeper(KeyPartitionedStore):
    def size(self):
        return len(self._dbs) + getattr(self, "_key_index_size")
""",
}


def test_the_check_catches_the_reaches_of_the_old_code():
    reaches = {(module.rsplit(".", 1)[1], line, what)
               for module, line, what in private_reaches({m: ast.parse(s) for m, s in OLD_CODE.items()})}
    assert reaches == {
        ("app", 6, "P1 app.consumer._committed_offset"),
        ("app", 9, "P3 def _create_worker_consumer in _ConsumerThread, a Faust subclass"),
        ("app", 10, "P2 super()._create_worker_consumer"),
        ("app", 11, "P1 consumer._fetch_max_wait_ms"),
        ("app", 14, "P3 def _new_transport in FetchWaitApp, a Faust subclass"),
        ("rocksdb_store", 3, "P5 private import from faust.transport._private"),
        ("rocksdb_store", 5, "P3 _cache = ... in KeyPartitionedStore, a Faust subclass"),
        ("rocksdb_store", 6, "P3 def _set in KeyPartitionedStore, a Faust subclass"),
        ("rocksdb_store", 7, "P3 self._key_index in KeyPartitionedStore, a Faust subclass"),
        ("durable_table", 5, "P3 self._dbs in Deeper, a Faust subclass"),
        ("durable_table", 5, "P4 getattr(..., '_key_index_size')"),
    }  # and not os._exit (line 7): a private name of the standard library


def test_faust_internals_itself_is_where_the_reaches_are():
    """The check is not vacuous on the real folder: the reaches it allows are all in faust_internals.py."""
    modules = _folder_modules(FOLDER)
    reaches = private_reaches(modules, exempt=tuple(name for name in modules if name != INTERNALS))
    reached = {name for _m, _l, what in reaches for name in re.findall(r"_[a-z][a-z_]*", what)}
    assert {"_committed_offset", "_fetch_max_wait_ms", "_fetch_min_bytes", "_create_worker_consumer",
            "_new_consumer_thread", "_new_transport", "_new_store_by_url", "_set", "_get", "_del", "_contains", "_key_index", "_dbs",
            "_db_for_partition", "_enable_passive", "_processors", "_active_agens"} <= reached
    relied_on = {name for _cls, name, _params in METHODS} | {name for _cls, name in ATTRIBUTES}
    assert reached <= relied_on, \
        f"faust_internals.py reaches {sorted(reached - relied_on)}: list them in METHODS or ATTRIBUTES above"

