"""When the segments and campaigns runners have caught up with a phase of bench/pipeline.py.

After a phase's last event is stored, the runners still have work for it (under a flood the segments runner is
minutes behind); the bench counts the stack's CPU until they are done. A runner has caught up when:
- segments: every live cursor of ``segment_cursors`` (one moved in the last 10 minutes) is past the newest
  ``persisted_at`` of the phase's events (a pass reads the changes up to its start, or to the start of the
  oldest transaction open then), and no transition waits to be published (``published_at IS NULL``);
- campaigns: its consumer group on the triggers topic has no lag, and a turn that started after that (and
  after the segments runner caught up) has completed (``spoor_segments_last_successful_turn_timestamp_seconds``
  on its web port: the second completion seen after that moment);
- a runner whose state cannot be read (a commit without the table, the metric or the consumer group, or
  ``--catch-up-by cpu``): the CPU of those runners and PostgreSQL, from /proc, stays under a threshold over a
  window of ``window_s`` seconds (30 s by default: the segments runner idles 3 s per second of SQL, so a
  shorter quiet window can fall between two statements of one pass). It caught up at the window's start.
The wait is bounded; on a timeout the CPU is counted until then.
"""

import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import text

from bench.proc_cpu import StackCpu, cpu_rates

LIVE_CURSOR_S = 600
TURN_METRIC = "spoor_segments_last_successful_turn_timestamp_seconds"


def quiet_start(samples: Sequence[tuple[float, float]], max_cores: float, window_s: float,
                start: int = 0) -> int | None:
    """Index of the first sample, from ``start`` on, after which the CPU grew by at most ``max_cores``
    seconds per second over the next ``window_s`` seconds (or more: up to the first sample that far).

    ``samples``: (time in seconds, cumulative CPU seconds), in time order. None: no such window yet."""
    end = start
    for i in range(start, len(samples)):
        t, cpu = samples[i]
        end = max(end, i)
        while end < len(samples) and samples[end][0] - t < window_s:
            end += 1
        if end == len(samples):
            return None  # the window from i is not over yet, nor from any later sample
        t_end, cpu_end = samples[end]
        if cpu_end - cpu <= max_cores * (t_end - t):
            return i
    return None


def turn_after(completions: Sequence[float], since: float) -> bool:
    """A turn that started after ``since`` has completed: two completions (unix times, as read from the
    runner's gauge, in the order read) at or after ``since``; the later one's turn started after the first."""
    return len({c for c in completions if c >= since}) >= 2


def turn_completed_at(url: str, process: str) -> float | None:
    """The runner's gauge of its last completed turn; None when it has none or does not answer."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
            lines = response.read().decode().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(f'{TURN_METRIC}{{process="{process}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


class TriggerLag:
    """The campaigns runner's lag on the triggers topic (its committed offsets against the topic's end)."""

    def __init__(self, bootstrap: str, group: str, topic: str):
        from kafka import KafkaAdminClient, KafkaConsumer
        self.group, self.topic = group, topic
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap)

    def lag(self) -> int | None:
        """Records the group has not committed yet (it starts at the earliest: a partition it never committed
        counts whole); None when the topic does not exist."""
        from kafka import TopicPartition
        partitions = [TopicPartition(self.topic, p) for p in self.consumer.partitions_for_topic(self.topic) or ()]
        if not partitions:
            return None
        if hasattr(self.admin, "list_group_offsets"):  # kafka-python 3
            offsets = self.admin.list_group_offsets(self.group).get(self.group, {})
        else:
            offsets = self.admin.list_consumer_group_offsets(self.group)
        committed = {tp: meta.offset for tp, meta in offsets.items() if tp.topic == self.topic and meta.offset >= 0}
        ends = self.consumer.end_offsets(partitions)
        return sum(max(0, end - committed.get(tp, 0)) for tp, end in ends.items())

    def close(self) -> None:
        self.admin.close()
        self.consumer.close()


@dataclass
class CaughtUp:
    seconds: float  # from the phase's last event stored to the runners caught up (or to the timeout)
    cpu: dict[str, float]  # the stack's CPU sample at that moment
    timed_out: bool
    how: list[str] = field(default_factory=list)  # how each runner was judged


@dataclass
class Runners:
    """What the bench needs to know about the stack's runners (see the module's docstring)."""
    engine: object
    stack_cpu: StackCpu
    campaigns_url: str
    trigger_lag: Callable[[], TriggerLag | None]
    by: str = "state"  # "state": cursors, lag and turns where they can be read; "cpu": CPU only
    window_s: float = 30.0
    max_cores: float | None = None  # None: from the idle rate measured by ``measure_idle``
    idle_cores: float | None = None

    def measure_idle(self, seconds: float) -> dict[str, float]:
        """The stack's CPU rate (cores) per kind over ``seconds`` of no traffic."""
        rate = cpu_rates(self.stack_cpu, seconds)
        self.idle_cores = rate.get("postgres", 0) + rate.get("segments", 0) + rate.get("campaigns", 0)
        return rate

    def threshold(self) -> float:
        """Cores of PostgreSQL and the runners under which they are taken as idle (``max_cores`` when given):
        twice their rate measured before the flood plus 0.05, and at least 0.15 (after a flood their idle
        rate is higher than on the fresh stack: ~0.1 core after 160,000 events; catching up, the segments
        runner keeps them at ~0.25-0.3 core, paced at 25 % busy)."""
        if self.max_cores is not None:
            return self.max_cores
        return max(0.15, 2 * (self.idle_cores or 0.0) + 0.05)

    def _segments_state(self, since_db) -> tuple[bool | None, str]:
        """(caught up?, how); None when the commit has no cursor table or no cursor moved lately."""
        with self.engine.connect() as conn:
            if conn.execute(text("SELECT to_regclass('segment_cursors')")).scalar() is None:
                return None, "no segment_cursors table"
            cursors = conn.execute(text(
                "SELECT name, changed_since > :t FROM segment_cursors"
                " WHERE changed_since > clock_timestamp() - make_interval(secs => :live)"),
                {"t": since_db, "live": LIVE_CURSOR_S}).all()
            if not cursors:
                return None, f"no segment cursor moved in the last {LIVE_CURSOR_S} s"
            unpublished = conn.execute(text(
                "SELECT EXISTS (SELECT 1 FROM segment_transitions WHERE published_at IS NULL)")).scalar()
        names = ", ".join(sorted(name for name, _ in cursors))
        return all(past for _, past in cursors) and not unpublished, \
            f"cursors ({names}) past the phase's last persisted_at, no transition left to publish"

    def _campaigns_state(self, lag_reader: TriggerLag | None, since: float | None,
                         completions: list[float]) -> tuple[bool | None, str, float | None]:
        """(caught up?, how, since): ``since`` is when its lag was first seen at zero (unix time), after the
        segments runner had caught up; None as the first item when its state cannot be read."""
        lag = lag_reader.lag() if lag_reader else None
        completed = turn_completed_at(self.campaigns_url, "campaigns") if lag_reader else None
        if lag is None or completed is None:
            return None, "no triggers topic or no turn gauge", since
        if since is None and lag == 0:
            since = time.time()
        if since is not None:
            completions.append(completed)
        return since is not None and turn_after(completions, since), \
            "no lag on the triggers topic, then a turn", since

    def wait(self, phase_ids: tuple[str, str], stored_at: float, timeout: float,
             progress: Callable[[str], None] = print) -> CaughtUp:
        """Wait until the runners caught up with the events whose ids are in the range ``phase_ids``, all
        stored at ``stored_at`` (perf_counter); the CPU sample is the one taken when they had."""
        roots = self.stack_cpu.roots()
        pending = [kind for kind in ("segments", "campaigns") if roots.get(kind)]
        with self.engine.connect() as conn:
            last_stored = conn.execute(text("SELECT max(persisted_at) FROM events WHERE event_id BETWEEN :l AND :h"),
                                       {"l": phase_ids[0], "h": phase_ids[1]}).scalar()
        samples: list[tuple[float, dict[str, float]]] = []
        how: dict[str, str] = {}
        by_cpu: list[str] = []  # runners judged by their CPU (and PostgreSQL's), once the others caught up
        if self.by == "cpu":
            by_cpu, pending = pending, []
            how.update({kind: "CPU (--catch-up-by cpu)" for kind in by_cpu})
        lag_reader = self.trigger_lag() if "campaigns" in pending else None
        campaigns_since: float | None = None
        completions: list[float] = []
        state_done: int | None = None  # the first sample at which the runners judged by their state had caught up
        last_report = time.perf_counter()
        try:
            while True:
                now = time.perf_counter()
                samples.append((now, self.stack_cpu.sample()))
                for kind in list(pending):
                    if kind == "segments":
                        done, detail = self._segments_state(last_stored)
                    elif "segments" in pending:
                        continue  # the campaigns runner acts on the segments runner's transitions: after it
                    else:
                        done, detail, campaigns_since = self._campaigns_state(lag_reader, campaigns_since,
                                                                              completions)
                    if done is None:
                        pending.remove(kind)
                        by_cpu.append(kind)
                        how[kind] = f"CPU ({detail})"
                    elif done:
                        pending.remove(kind)
                        how[kind] = detail
                if not pending and state_done is None:
                    state_done = len(samples) - 1
                if state_done is not None:
                    if not by_cpu:
                        return self._result(stored_at, samples[-1], False, how)
                    kinds = ("postgres", *by_cpu)
                    summed = [(t, sum(cpu.get(k, 0.0) for k in kinds)) for t, cpu in samples]
                    quiet = quiet_start(summed, self.threshold(), self.window_s, state_done)
                    if quiet is not None:
                        for kind in by_cpu:
                            how[kind] += f": {'+'.join(kinds)} under {self.threshold():.2f} cores for " \
                                         f"{self.window_s:.0f} s, from then"
                        return self._result(stored_at, samples[quiet], False, how)
                if now > stored_at + timeout:
                    return self._result(stored_at, samples[-1], True, how)
                if now - last_report >= 30:
                    progress(f"  ... runners catching up for {now - stored_at:.0f} s (waiting for "
                             f"{', '.join(pending) or 'quiet CPU: ' + '+'.join(('postgres', *by_cpu))})")
                    last_report = now
                time.sleep(max(0.0, now + 1 - time.perf_counter()))
        finally:
            if lag_reader:
                lag_reader.close()

    @staticmethod
    def _result(stored_at: float, sample: tuple[float, dict[str, float]], timed_out: bool,
                how: dict[str, str]) -> CaughtUp:
        return CaughtUp(max(0.0, sample[0] - stored_at), sample[1], timed_out,
                        [f"{kind}: {detail}" for kind, detail in how.items()])
