"""Detects records the stream skipped, so the worker can read them again. Pure: no Kafka.

faust-streaming can deliver a partition's records with holes around a
rebalance or recovery: ``Consumer._drain_messages`` advances its read offset
for a record whose delivery was abandoned, and re-fetched records below that
offset are dropped as "already read". Faust then commits the first
consecutive run of acknowledged offsets even if it starts after the hole, so
the skipped records would be committed past. Offsets on Spoor's topics are
contiguous (no transactions, no compaction), so a hole is visible; the agent
stops the process before acknowledging anything of the batch, and the
restarted process reads from the last commit, before the hole.

No Faust internals are touched here (faust_internals.py names the behaviour relied on).

Consequence: producers must not write to these topics with transactions
(their control records leave offset gaps, which would read as holes).
"""

from dataclasses import dataclass, field


@dataclass
class OffsetContinuity:
    next_offset: dict = field(default_factory=dict)  # tp -> next offset expected

    def reset(self) -> None:
        """Forget positions: call when partitions are assigned or revoked."""
        self.next_offset.clear()

    def admit(self, tp, offset: int, start: int | None) -> int | None:
        """None if the record may be processed, else the first offset the consumer skipped.

        ``start`` is where the partition's records should begin (the committed
        offset, else the log start); it is used until a record has been seen.
        """
        expected = self.next_offset.get(tp, start)
        if expected is not None and offset > expected:
            return expected
        if expected is None or offset >= expected:
            self.next_offset[tp] = offset + 1
        return None  # in order, or a redelivery below ``expected`` (deduplicated downstream)
