from spoor.stream_processors.continuity import OffsetContinuity


def test_contiguous_records_are_admitted():
    guard = OffsetContinuity()
    assert [guard.admit("p0", o, start=10) for o in (10, 11, 12)] == [None, None, None]


def test_a_hole_after_the_start_offset_is_reported():
    guard = OffsetContinuity()
    assert guard.admit("p0", 15, start=13) == 13


def test_a_hole_between_delivered_records_is_reported_per_partition():
    guard = OffsetContinuity()
    assert guard.admit("p0", 5, start=None) is None
    assert guard.admit("p0", 8, start=None) == 6
    assert guard.admit("p1", 3, start=None) is None


def test_redeliveries_below_the_expected_offset_pass():
    guard = OffsetContinuity()
    guard.admit("p0", 7, start=7)
    assert guard.admit("p0", 6, start=7) is None
    assert guard.admit("p0", 8, start=7) is None


def test_reset_forgets_positions():
    guard = OffsetContinuity()
    guard.admit("p0", 5, start=5)
    guard.reset()
    assert guard.admit("p0", 2, start=2) is None
