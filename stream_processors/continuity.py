"""Detects records the stream skipped, so they can be fetched again. Pure: no Kafka.

faust-streaming can deliver a partition's records with holes around a
rebalance or recovery: ``Consumer._drain_messages`` advances its read offset
for a record whose delivery was abandoned, and re-fetched records below that
offset are dropped as "already read". Those records are never acked, so
commits stall behind them and they would only be processed after another
restart. Offsets on the events topic are contiguous (no transactions, no
compaction), so a hole is visible: the agent holds back the partition's later
records and restarts the worker process, which reads from the last commit
(before the hole). A hole that is still there after ``give_up_s`` is genuine
(e.g. transaction markers from a backend producer) and is accepted.
"""

import time
from dataclasses import dataclass, field


@dataclass
class OffsetContinuity:
    give_up_s: float = 30.0
    next_offset: dict = field(default_factory=dict)  # tp -> next offset expected
    awaiting: dict = field(default_factory=dict)  # tp -> (missing offset, since when)

    def reset(self) -> None:
        """Forget everything: call when partitions are assigned or revoked."""
        self.next_offset.clear()
        self.awaiting.clear()

    def admit(self, tp, offset: int, committed: int | None, now: float | None = None) -> int | None | bool:
        """True to process this record, False to hold it back, or the first missing offset of a hole."""
        now = time.monotonic() if now is None else now
        expected = self.next_offset.get(tp, committed)
        if tp in self.awaiting:
            missing, since = self.awaiting[tp]
            if offset > missing and now - since < self.give_up_s:
                return False
            del self.awaiting[tp]
        elif expected is not None and offset > expected:
            self.awaiting[tp] = (expected, now)
            return expected
        if expected is None or offset >= expected:
            self.next_offset[tp] = offset + 1
        return True  # in order, a redelivery below ``expected`` (deduplicated downstream), or a gap given up on
