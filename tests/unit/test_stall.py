from spoor.stream_processors.stall import StallWatch


def test_a_partition_with_records_and_no_commit_for_the_limit_is_stalled():
    watch = StallWatch(after_s=60)
    assert watch.check(0, {"p0": (10, 50), "p1": (5, 5)}) == []
    assert watch.check(59, {"p0": (10, 50), "p1": (5, 9)}) == []  # p1 only just got records
    assert watch.check(60, {"p0": (10, 50), "p1": (5, 9)}) == ["p0"]


def test_progress_or_catching_up_restarts_the_clock():
    watch = StallWatch(after_s=60)
    watch.check(0, {"p0": (10, 50)})
    assert watch.check(50, {"p0": (20, 60)}) == []  # moved: behind since 50 now
    assert watch.check(100, {"p0": (20, 60)}) == []
    assert watch.check(110, {"p0": (20, 60)}) == ["p0"]
    assert watch.check(120, {"p0": (60, 60)}) == []  # caught up
    assert watch.check(200, {"p0": (60, 70)}) == []  # new records: a fresh clock


def test_nothing_committed_yet_counts_from_offset_zero_and_unassigned_partitions_are_forgotten():
    watch = StallWatch(after_s=60)
    assert watch.check(0, {"p0": (None, 0), "p1": (None, 3)}) == []
    assert watch.check(61, {"p0": (None, 0), "p1": (None, 3)}) == ["p1"]
    watch.check(62, {"p0": (None, 0)})
    assert watch.check(200, {"p0": (None, 0), "p1": (None, 3)}) == []  # reassigned: a fresh clock
