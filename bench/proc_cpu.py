"""CPU time of the stack's processes, read from /proc, grouped by kind (Linux only).

A kind is a set of process trees, each found from a root pid (a pid file `deploy/stack.sh`, `kafka.sh` or
`postgres.sh` writes). The CPU of a tree at an instant is, over every live process in it,
``utime + stime + cutime + cstime`` of ``/proc/<pid>/stat``: a process's own time, plus the time of its
children that exited and were waited for. So a PostgreSQL backend that exits during a phase keeps
counting (the postmaster waits for it, and its time moves into the postmaster's ``cutime``), and one
that starts during it counts from zero. The same holds for the worker, whose supervisor (`spoor worker`)
runs the Faust worker as its child. A phase's CPU is the difference of two samples. What escapes: a
descendant re-parented away from the tree (to init) when its parent exits first; none of the stack's
processes does that.

    sample = cpu_sample(stack_roots("/var/tmp/spoor"))   # kind -> seconds
    ...
    spent = cpu_delta(sample, cpu_sample(stack_roots("/var/tmp/spoor")))
"""

import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Kinds in the order they are printed; `other` is a pid file in the run dir this module does not know.
KINDS = ("kafka", "postgres", "collector", "workers", "segments", "campaigns", "admin_api", "other")


def read_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, utime + stime + cutime + cstime in seconds) of a live process; None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw.rpartition(")")[2].split()  # the command name (field 2) may hold spaces and parentheses
    # fields[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14-17.
    if fields[0] in ("Z", "X"):  # a zombie's times are already in its parent's, or will be when reaped
        return int(fields[1]), 0.0
    return int(fields[1]), sum(int(v) for v in fields[11:15]) / CLOCK_TICKS


def process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds) of every process readable now."""
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None:
                table[int(entry.name)] = stat
    return table


def tree_cpu(roots: Iterable[int], table: Mapping[int, tuple[int, float]]) -> float:
    """CPU seconds of the live processes under ``roots`` (roots included), with their reaped children's."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    seen, todo, total = set(), [pid for pid in roots if pid in table], 0.0
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += table[pid][1]
        todo.extend(children.get(pid, ()))
    return total


def _pid_from(path: Path, cmdline_part: str | None = None) -> int | None:
    """The pid on the first line of a pid file, if that process is alive (and its command line holds
    ``cmdline_part``: a pid file left by a dead process may name a recycled pid)."""
    try:
        pid = int(path.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, IndexError, ValueError, ProcessLookupError):
        return None
    return pid if cmdline_part is None or cmdline_part in cmdline else None


def kind_of(name: str) -> str:
    """The kind of a Spoor process from its pid file's name in the run dir (`worker-2.pid` -> workers)."""
    base = name.split("-")[0] if name.startswith(("worker", "collector")) else name
    return {"worker": "workers", "collector": "collector", "segments": "segments", "campaigns": "campaigns",
            "admin-api": "admin_api"}.get(base, "other")


def stack_roots(run_dir: str | Path) -> dict[str, list[int]]:
    """kind -> root pids of a stack started by `deploy/stack.sh up` with this ``SPOOR_RUN_DIR``.

    Kafka: ``kafka/kafka.pid`` (a `kafka.Kafka` JVM); PostgreSQL: the postmaster, first line of
    ``pgdata/postmaster.pid``; Spoor's processes: ``<name>.pid`` (collector, worker, worker-2, ...,
    segments, campaigns, admin-api; any other pid file there is `other`)."""
    run_dir = Path(run_dir)
    roots: dict[str, list[int]] = {kind: [] for kind in KINDS}
    for kind, path, part in (("kafka", run_dir / "kafka" / "kafka.pid", "kafka.Kafka"),
                             ("postgres", run_dir / "pgdata" / "postmaster.pid", "postgres")):
        pid = _pid_from(path, part)
        if pid is not None:
            roots[kind].append(pid)
    for path in sorted(run_dir.glob("*.pid")):
        pid = _pid_from(path, "spoor")
        if pid is not None:
            roots[kind_of(path.stem)].append(pid)
    return roots


def cpu_sample(roots: Mapping[str, Iterable[int]]) -> dict[str, float]:
    """kind -> CPU seconds of its process trees now (see the module's docstring)."""
    table = process_table()
    return {kind: tree_cpu(pids, table) for kind, pids in roots.items()}


def cpu_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """kind -> CPU seconds between two samples (a kind missing from one counts zero there)."""
    return {kind: after.get(kind, 0.0) - before.get(kind, 0.0) for kind in dict.fromkeys([*before, *after])}


def cpu_rates(stack: "StackCpu", seconds: float) -> dict[str, float]:
    """kind -> cores (CPU seconds per second) of a stack over the next ``seconds``."""
    before, started = stack.sample(), time.monotonic()
    time.sleep(seconds)
    spent = cpu_delta(before, stack.sample())
    wall = time.monotonic() - started
    return {kind: cpu / wall for kind, cpu in spent.items()}


class StackCpu:
    """Samples of one stack's CPU; the roots are looked up at each sample, so a process restarted
    between two samples (a worker's supervisor restarting it is inside its tree anyway) is found.
    A root that is replaced loses what its old process spent: the sum is then a lower bound."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)

    def roots(self) -> dict[str, list[int]]:
        return stack_roots(self.run_dir)

    def sample(self) -> dict[str, float]:
        return cpu_sample(stack_roots(self.run_dir))
