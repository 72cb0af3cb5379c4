"""Notices a worker that stopped reading partitions it owns. Pure: no Kafka, no clock.

faust-streaming can come out of a rebalance with assigned partitions it never
fetches again, without an error (faust-streaming issue 629): records wait,
lag grows, nothing is processed. Restarting the process is the cure (a new
consumer reads from the last commit). A partition is stalled when it has had
records to read for ``after_s`` and its committed offset did not move.
"""

from dataclasses import dataclass, field


@dataclass
class StallWatch:
    after_s: float
    # partition -> (committed offset when first seen behind, when that was)
    behind_since: dict = field(default_factory=dict)

    def check(self, now: float, positions: dict) -> list:
        """``positions``: partition -> (committed offset or None, end offset). Returns the stalled ones."""
        stalled = []
        for tp, (committed, end) in positions.items():
            if end is None or (committed or 0) >= end:
                self.behind_since.pop(tp, None)  # caught up
                continue
            seen = self.behind_since.get(tp)
            if seen is None or seen[0] != committed:
                self.behind_since[tp] = (committed, now)  # behind, but moving
            elif now - seen[1] >= self.after_s:
                stalled.append(tp)
        for tp in set(self.behind_since) - set(positions):
            del self.behind_since[tp]  # no longer assigned
        return stalled

    def reset(self) -> None:
        self.behind_since.clear()
