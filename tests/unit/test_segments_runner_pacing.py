"""The segments runner's pacing: long passes are followed by proportionally long pauses."""

from segments.runner import idle_after


def test_a_long_pass_is_followed_by_a_pause_that_keeps_the_runner_to_its_share():
    assert idle_after(2.0, poll_s=5.0, busy_share=0.25) == 6.0  # 2 s busy in 8 s
    assert idle_after(4.0, poll_s=5.0, busy_share=0.5) == 5.0


def test_a_short_pass_waits_the_poll_interval_and_share_1_is_the_old_behaviour():
    assert idle_after(0.1, poll_s=5.0, busy_share=0.25) == 5.0
    assert idle_after(30.0, poll_s=5.0, busy_share=1.0) == 5.0
