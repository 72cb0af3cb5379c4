"""Detectors, lifecycle hysteresis and the rule engine: pure logic, no broker."""

import math
import random
from datetime import datetime, timedelta, timezone

from spoor.alerts.alert_rules import parse_rules
from spoor.alerts.detectors import SeasonalConfig, SeasonalDetector, ThresholdConfig, ThresholdDetector, Verdict
from spoor.alerts.engine import RuleEngine
from spoor.alerts.lifecycle import AlertLifecycle, AlertStatus

T0 = datetime(2024, 3, 4, tzinfo=timezone.utc)


def minute(i: int) -> datetime:
    return T0 + timedelta(minutes=i + 1)


def noisy(rng: random.Random, mean: float) -> int:
    return max(0, round(rng.gauss(mean, math.sqrt(mean))))


def test_flat_series_then_drop_is_anomalous_only_after_warmup():
    detector = SeasonalDetector(SeasonalConfig(season="none", warmup_windows=30, sensitivity=4), 60)
    rng = random.Random(3)
    verdicts = [detector.observe(minute(i), noisy(rng, 100)) for i in range(200)]
    assert not any(v.anomalous for v in verdicts)
    assert all(v.reason == "warmup" for v in verdicts[:30])
    drop = detector.observe(minute(200), 40)
    assert drop.anomalous and drop.reason == "drop" and drop.score < -4
    assert 90 < drop.expected < 110


def test_direction_and_minimum_volume_guard():
    drops_only = SeasonalDetector(SeasonalConfig(season="none", warmup_windows=5), 60)
    quiet = SeasonalDetector(SeasonalConfig(season="none", warmup_windows=5, min_expected=20), 60)
    for i in range(50):
        drops_only.observe(minute(i), 100)
        quiet.observe(minute(i), 5)
    assert not drops_only.observe(minute(50), 400).anomalous  # a spike, but the rule watches drops
    verdict = quiet.observe(minute(50), 0)
    assert not verdict.anomalous and verdict.reason == "low_volume"


def test_an_outage_does_not_become_the_baseline():
    detector = SeasonalDetector(SeasonalConfig(season="none", warmup_windows=10), 60)
    for i in range(100):
        detector.observe(minute(i), 100)
    outage = [detector.observe(minute(100 + i), 0) for i in range(60)]
    assert all(v.anomalous for v in outage)
    assert detector.observe(minute(160), 100).reason == "ok"  # recovery is not a "spike"


def test_multi_scale_evidence_catches_a_drop_lost_in_one_windows_noise():
    # 30 events/min dropping by 40%: each window is ~2 sigmas low (under sensitivity 3), but the sum
    # of 5 windows is 150 expected vs 90 observed, ~5 sigmas (Poisson variances add up).
    def run(evidence_windows: int) -> list[Verdict]:
        detector = SeasonalDetector(SeasonalConfig(season="none", warmup_windows=10, sensitivity=3,
                                                   evidence_windows=evidence_windows,
                                                   evidence_sensitivity=3.5), 60)
        for i in range(100):
            detector.observe(minute(i), 30)
        return [detector.observe(minute(100 + i), 18) for i in range(5)]

    single = run(1)
    assert not any(v.anomalous for v in single)
    summed = run(5)
    assert not summed[0].anomalous  # one window: not enough evidence yet
    assert all(v.anomalous and v.reason == "drop" for v in summed[2:])  # 3 windows: ~ -3.8 sigmas
    assert summed[-1].score < -4


def test_multi_scale_evidence_ignores_one_outlier_once_the_series_is_back():
    detector = SeasonalDetector(SeasonalConfig(season="none", warmup_windows=10, sensitivity=6,
                                               evidence_windows=5, evidence_sensitivity=3.5), 60)
    for i in range(100):
        detector.observe(minute(i), 30)
    outlier = detector.observe(minute(100), 3)  # -4.9 sigmas: under sensitivity 6, but summed scores see it
    assert not outlier.anomalous  # a lone window only counts through the 1-window score
    back = [detector.observe(minute(101 + i), 30) for i in range(5)]
    assert not any(v.anomalous for v in back)  # sums still hold the outlier, but this window is not low


def test_daily_profile_follows_the_cycle_and_catches_a_zero_at_the_usual_peak():
    detector = SeasonalDetector(SeasonalConfig(season="day", direction="both", sensitivity=4,
                                               warmup_windows=60), 300)
    rng = random.Random(5)
    day = 288  # 5-minute windows

    def usual(i: int) -> float:
        return 200 + 150 * math.sin(2 * math.pi * (i % day) / day)

    verdicts = [detector.observe(T0 + timedelta(minutes=5 * (i + 1)), noisy(rng, usual(i))) for i in range(4 * day)]
    assert sum(v.anomalous for v in verdicts[2 * day:]) <= 2  # once the profile exists, the cycle is normal
    peak = 4 * day + day // 4
    for i in range(4 * day, peak):
        detector.observe(T0 + timedelta(minutes=5 * (i + 1)), noisy(rng, usual(i)))
    zero = detector.observe(T0 + timedelta(minutes=5 * (peak + 1)), 0)
    assert zero.anomalous and zero.expected > 250


def test_threshold_with_volume_guard():
    detector = ThresholdDetector(ThresholdConfig(above=0.01, min_volume=100))
    assert detector.observe(T0, 0.5, volume=10).reason == "low_volume"
    assert detector.observe(T0, 0.02, volume=500).anomalous
    assert not detector.observe(T0, 0.005, volume=500).anomalous


def verdict(i: int, anomalous: bool) -> Verdict:
    return Verdict(minute(i), 0.0 if anomalous else 100.0, 100.0, -9.0 if anomalous else 0.0, anomalous,
                   "drop" if anomalous else "ok")


def test_lifecycle_hysteresis():
    life = AlertLifecycle("fp", fire_after=3, resolve_after=2)
    steps = [True, False, True, True, True, True, False, True, False, False, False]
    transitions = [(i, t.status) for i, a in enumerate(steps) if (t := life.step(verdict(i, a)))]
    assert transitions == [(0, AlertStatus.PENDING), (1, AlertStatus.CANCELLED), (2, AlertStatus.PENDING),
                           (4, AlertStatus.FIRING), (9, AlertStatus.RESOLVED)]
    # The episode keeps where it started and its worst evidence.
    life2 = AlertLifecycle("fp", fire_after=2, resolve_after=1)
    life2.step(verdict(0, True))
    fired = life2.step(verdict(1, True))
    assert fired.started_at == minute(0) and fired.evidence["worst"]["score"] == -9.0


RULES = """
version: 1
rules:
  - id: by-source
    metric: events
    dimension: "source:*"
    detector: {kind: seasonal, season: none, warmup_windows: 5, min_expected: 5}
    fire_after: 2
    resolve_after: 2
  - id: dlq
    metric: dead_letter_rate
    detector: {kind: threshold, above: 0.1, min_volume: 10}
    fire_after: 1
"""


def test_engine_tracks_each_series_and_sees_a_missing_one_as_zero():
    engine = RuleEngine(parse_rules(RULES))
    fired = []
    for i in range(40):
        dims = {"global": {"events": 200, "dead_letters": 0}, "source:web": {"events": 100}}
        if i < 30:
            dims["source:ios"] = {"events": 100}  # then the iOS tracking breaks: no rows at all
        for evaluation in engine.evaluate("1m", minute(i), dims):
            if evaluation.transition and evaluation.transition.status == AlertStatus.FIRING:
                fired.append((i, evaluation.rule.id, evaluation.dimension))
    assert fired == [(31, "by-source", "source:ios")]


def test_engine_threshold_rule_on_a_rate_and_partial_windows_are_skipped():
    engine = RuleEngine(parse_rules(RULES))
    result = engine.evaluate("1m", minute(0), {"global": {"events": 80, "dead_letters": 20}})
    assert [(e.rule.id, e.transition.status) for e in result if e.transition] == [("dlq", AlertStatus.FIRING)]
    skipped = engine.evaluate("1m", minute(1), {"global": {"events": 0, "dead_letters": 20, "partial": True}})
    assert [e.verdict.reason for e in skipped if e.rule.id == "dlq"] == ["no_data"]


def test_summed_evidence_learns_that_correlated_errors_stray_together():
    # Level wanders slowly around 100 (AR(1) with phi 0.95, like a daily profile that is a few
    # percent off for an hour at a time) on top of Poisson noise: sums of neighbouring windows stray
    # far more than independent windows would, and must not read as a drop.
    def detector() -> SeasonalDetector:
        return SeasonalDetector(SeasonalConfig(season="none", warmup_windows=60, sensitivity=4, alpha=0.02,
                                               evidence_windows=5, evidence_sensitivity=4), 60)

    rng = random.Random(5)
    wandering, offset = detector(), 0.0
    alarms = 0
    for i in range(3000):
        offset = 0.95 * offset + rng.gauss(0, 3)
        alarms += wandering.observe(minute(i), noisy(rng, 100 + offset)).anomalous
    assert wandering.sum_variance[5] > 2 * 5 * 100  # learned: 5-window sums stray > 2x independent
    assert alarms <= 3
    drop = [wandering.observe(minute(3000 + i), noisy(rng, 50)) for i in range(5)]
    assert all(v.anomalous and v.reason == "drop" for v in drop[1:])  # a real 50% drop still is one


def test_lifecycle_counts_evidence_that_spans_several_windows_for_each_of_them():
    life = AlertLifecycle("fp", fire_after=3, resolve_after=2)
    spans_three = Verdict(minute(0), 18.0, 30.0, -3.8, True, "drop", span=3)
    fired = life.step(spans_three)  # three windows that are one anomaly together: no need to wait for two more
    assert fired.status == AlertStatus.FIRING and fired.evidence["windows"] == 3
    life2 = AlertLifecycle("fp", fire_after=3, resolve_after=2)
    assert life2.step(Verdict(minute(0), 18.0, 30.0, -3.6, True, "drop", span=2)).status == AlertStatus.PENDING
    assert life2.step(verdict(1, True)).status == AlertStatus.FIRING  # 2 + 1 windows


def shallow_drop(hold_evidence: float | None, drop_to: float, windows: int) -> list[Verdict]:
    """40 events/min, then ``windows`` windows at ``drop_to``: each alone within the noise (sensitivity 3)."""
    detector = SeasonalDetector(SeasonalConfig(season="none", warmup_windows=10, sensitivity=3,
                                               evidence_windows=5, evidence_sensitivity=4,
                                               hold_evidence=hold_evidence), 60)
    for i in range(100):
        detector.observe(minute(i), 40)
    return [detector.observe(minute(100 + i), drop_to) for i in range(windows)]


def test_a_shallow_drop_fires_as_soon_as_the_summed_windows_show_it():
    # 40 -> 24: -2.5 sigmas a window; the sum of 3 windows is -4.4 sigmas, so the third window's
    # verdict speaks for all three and the alert fires then, not two windows later.
    life = AlertLifecycle("fp", fire_after=3, resolve_after=5)
    transitions = [(i, t.status) for i, v in enumerate(shallow_drop(None, 24, 5)) if (t := life.step(v))]
    assert transitions[0][1] == AlertStatus.FIRING and transitions[0][0] <= 2


def test_an_outlier_then_normal_windows_gives_no_multi_window_span():
    detector = SeasonalDetector(SeasonalConfig(season="none", warmup_windows=10, sensitivity=3,
                                               evidence_windows=5, evidence_sensitivity=3.5), 60)
    for i in range(100):
        detector.observe(minute(i), 40)
    detector.observe(minute(100), 5)  # a lone outlier (anomalous by itself)
    later = [detector.observe(minute(101 + i), v) for i, v in enumerate([39, 38, 33])]
    assert all(v.span == 1 for v in later)  # the sums hold the outlier, but the windows since are not all low


def test_a_drop_building_up_is_not_learned_away_while_its_evidence_holds():
    # 40 -> 27 (-2 sigmas a window): without the hold the baseline follows the values down and the
    # summed evidence never reaches 4; with it the baseline only creeps and the sum of 5 windows fires.
    followed = shallow_drop(None, 27, 8)
    held = shallow_drop(2.0, 27, 8)
    assert not any(v.anomalous for v in followed)
    assert followed[-1].expected < 34
    assert held[-1].expected > 37
    assert held[4].anomalous and held[4].reason == "drop" and held[4].span == 5
