"""The segments runner's pacing: each statement of a pass is followed by proportionally long idle time."""

import threading
import time

from spoor.turn_loop import Heartbeat, paced_by


def test_a_step_is_followed_by_idle_time_that_keeps_the_runner_to_its_share():
    stop, heartbeat = threading.Event(), Heartbeat()
    heartbeat.at -= 100  # as if the last turn finished long ago
    pace = paced_by(0.25, stop, heartbeat)
    started = time.monotonic()
    pace(0.1)  # 0.1 s busy: 0.3 s idle, so 25% of the time
    assert 0.3 <= time.monotonic() - started < 1.0
    assert time.monotonic() - heartbeat.at < 1.0  # a long paced turn still reads as alive on /healthz


def test_a_stop_ends_the_idle_time_at_once_and_share_1_never_idles():
    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    paced_by(0.25, stop, Heartbeat())(30.0)
    paced_by(1.0, threading.Event(), Heartbeat())(30.0)
    assert time.monotonic() - started < 1.0
