from stream_processors.continuity import OffsetContinuity


def test_contiguous_records_are_admitted():
    guard = OffsetContinuity()
    assert [guard.admit("p0", o, committed=10, now=0) for o in (10, 11, 12)] == [True, True, True]


def test_a_hole_after_the_committed_offset_asks_for_a_seek_and_holds_later_records():
    guard = OffsetContinuity()
    assert guard.admit("p0", 15, committed=13, now=0) == 13
    assert guard.admit("p0", 16, committed=13, now=1) is False
    # After the seek the missing records arrive; processing continues in order.
    assert [guard.admit("p0", o, committed=13, now=2) for o in (13, 14, 15, 16)] == [True] * 4


def test_a_hole_between_delivered_records_is_detected():
    guard = OffsetContinuity()
    assert guard.admit("p0", 5, committed=None, now=0) is True
    assert guard.admit("p0", 8, committed=None, now=0) == 6
    assert guard.admit("p1", 3, committed=None, now=0) is True  # other partitions are not held


def test_redeliveries_below_the_expected_offset_pass():
    guard = OffsetContinuity()
    guard.admit("p0", 7, committed=7, now=0)
    assert guard.admit("p0", 6, committed=7, now=0) is True
    assert guard.admit("p0", 8, committed=7, now=0) is True


def test_a_genuine_gap_is_accepted_after_the_grace_period():
    guard = OffsetContinuity(give_up_s=30)
    assert guard.admit("p0", 20, committed=18, now=0) == 18
    assert guard.admit("p0", 20, committed=18, now=31) is True
    assert guard.admit("p0", 21, committed=18, now=31) is True


def test_reset_forgets_positions():
    guard = OffsetContinuity()
    guard.admit("p0", 5, committed=5, now=0)
    guard.reset()
    assert guard.admit("p0", 2, committed=2, now=0) is True
