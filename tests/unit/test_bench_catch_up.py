"""bench/catch_up.py's pure parts: the quiet window on CPU samples and the turn that started after a moment."""

from bench.catch_up import quiet_start, turn_after


def cumulative(rates: list[float], step: float = 1.0) -> list[tuple[float, float]]:
    """Samples every ``step`` seconds of a CPU spending ``rates[i]`` cores between sample i and i + 1."""
    samples, cpu = [(0.0, 0.0)], 0.0
    for i, rate in enumerate(rates, 1):
        cpu += rate * step
        samples.append((i * step, cpu))
    return samples


def test_the_quiet_window_starts_after_the_last_busy_second():
    samples = cumulative([0.9, 0.8, 1.0, 0.05, 0.05, 0.05, 0.05, 0.05])
    assert quiet_start(samples, 0.1, 4) == 3  # 0.05 cores from t = 3 on, over 4 s (the samples 3 to 7)


def test_no_window_while_the_last_one_is_not_over():
    samples = cumulative([0.9, 0.05, 0.05, 0.05])
    assert quiet_start(samples, 0.1, 4) is None  # quiet from t = 1, but only 3 s of it so far
    assert quiet_start(cumulative([0.9, 0.05, 0.05, 0.05, 0.05]), 0.1, 4) == 1


def test_a_statement_between_idle_stretches_is_not_quiet():
    # A paced runner: 2 s of SQL (a whole core), then 6 s idle, again and again; a window of 10 s always
    # holds a statement, a window of 5 s can fall between two.
    rates = ([1.0] * 2 + [0.02] * 6) * 4
    samples = cumulative(rates)
    assert quiet_start(samples, 0.15, 10) is None
    assert quiet_start(samples, 0.15, 5) == 2


def test_the_window_is_averaged_and_searched_from_start():
    samples = cumulative([0.0, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert quiet_start(samples, 0.1, 4) == 0  # 0.3 s over 4 s: under 0.1 cores on average
    assert quiet_start(samples, 0.05, 4) == 2
    assert quiet_start(samples, 0.1, 4, start=1) == 1


def test_uneven_samples_take_the_first_sample_a_window_away():
    samples = [(0.0, 0.0), (0.5, 0.01), (3.0, 0.02), (7.5, 0.5), (8.0, 0.51)]
    # From t = 0 the window ends at the first sample 4 s or more away (7.5 s): 0.5 s of CPU, 0.067 cores.
    assert quiet_start(samples, 0.1, 4) == 0
    assert quiet_start(samples, 0.05, 4) is None


def test_a_turn_after_a_moment_needs_two_completions_from_then():
    assert not turn_after([], 100.0)
    assert not turn_after([90.0, 90.0, 99.0], 100.0)  # completions before the moment
    assert not turn_after([99.0, 101.0, 101.0], 100.0)  # the turn that ended at 101 may have begun before 100
    assert turn_after([99.0, 101.0, 101.0, 104.5], 100.0)  # the one ending at 104.5 began after 101
