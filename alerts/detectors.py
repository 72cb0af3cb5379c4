"""Anomaly detectors for one metric series. Pure: no Kafka, no database, no clock.

A detector is fed the series' windows in event-time order (``observe``) and
answers with a ``Verdict`` per window: is the value anomalous, what was
expected, and how far off it is (the score). Hysteresis (how many anomalous
windows fire an alert) is the lifecycle's job, not the detector's.

``SeasonalDetector`` is a robust, multiplicative Holt-Winters-like baseline:
- a level: EWMA of ``value / seasonal profile`` (or of the value itself until
  the profile is ready), so "today is 10% busier than usual" is absorbed;
- a seasonal profile per slot (minute of the day or of the week, at the
  series' resolution), an EWMA across days, read smoothed over neighbouring
  slots so one noisy day does not make the profile;
- a scale: EWMA of squared residuals, floored by the Poisson noise of a count
  (``sqrt(expected)``) so quiet series are not judged on a lucky calm stretch.
Values update the baseline clipped to ``expected +- sensitivity * scale``, so
an anomaly does not drag the baseline along and a long outage keeps firing.
No verdict is anomalous during warm-up or when the expected volume is under
``min_expected`` (minimum-volume guard: a drop from 3 to 1 is noise).
A drift check compares the level with the seasonal profile: a slow decline
that a short EWMA follows is still caught once it exceeds ``max_level_change``.
Multi-scale evidence also judges sums of the last 2..k windows; a verdict on
such a sum says how many windows it spans, and while a sum looks suspicious
the level is held so a shallow drop is judged before it is learned away.
"""

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

Direction = Literal["drop", "spike", "both"]


def clip(value: float, expected: float, band: float) -> float:
    return min(max(value, expected - band), expected + band)


@dataclass(frozen=True)
class Verdict:
    at: datetime
    observed: float | None
    expected: float | None
    score: float  # signed: negative below expectation; for thresholds, observed / threshold
    anomalous: bool
    reason: str  # "ok", "drop", "spike", "drift", "above", "below", "warmup", "low_volume", "no_data"
    span: int = 1  # windows the evidence covers: k when the sum of the last k windows is what is off

    def evidence(self) -> dict:
        return {"observed": self.observed, "expected": self.expected, "score": round(self.score, 3),
                "reason": self.reason, "windows": self.span, "window_end": self.at.isoformat()}


@dataclass
class SeasonalConfig:
    direction: Direction = "drop"
    sensitivity: float = 4.0  # robust sigmas
    alpha: float = 0.1  # level EWMA weight per window
    scale_alpha: float = 0.02  # residual variance EWMA weight per window
    season: Literal["none", "day", "week"] = "day"
    season_alpha: float = 0.3  # seasonal profile EWMA weight per season (day/week)
    season_min_periods: int = 2  # seasons of history before the profile is used
    smooth_slots: int = 2  # read the profile averaged over +-this many neighbouring slots
    warmup_windows: int = 60
    min_expected: float = 20.0  # minimum-volume guard, in the metric's unit
    poisson_floor: bool = True  # counts: the scale is at least sqrt(expected)
    min_scale: float = 0.0  # ratios: absolute floor of the scale
    max_level_change: float | None = 0.35  # drift: |level / profile - 1| above this is anomalous
    drift_alpha: float = 0.02
    adapt_after: int = 240  # anomalous windows in a row after which the new level is learned
    # Multi-scale evidence: also judge the SUM of the last k windows (k = 2..evidence_windows)
    # against the sum of their expected values, with the noise of a sum (variances add up). A 40%
    # drop on 30 events/min is lost in one window's noise but clear over 5. Off (1) by default.
    evidence_windows: int = 1
    evidence_sensitivity: float | None = None  # threshold of the summed scores (default: sensitivity)
    learn_band: float = 2.0  # values are learned clipped to expected +- this many scales
    # While the summed evidence is beyond hold_evidence (and this window is off the same way), an
    # anomaly may be building up: the level only creeps (it learns values clipped to +- hold_band
    # scales), so a shallow drop is judged before it is learned away. Off: None.
    hold_evidence: float | None = None
    hold_band: float = 0.5


@dataclass
class SeasonalDetector:
    config: SeasonalConfig
    resolution_s: int
    level: float | None = None
    variance: float | None = None
    seen: int = 0
    profile: dict = field(default_factory=dict)  # slot -> [ewma, periods]
    ratio: float = 1.0  # level relative to the seasonal profile
    drift_observed: float = 0.0
    drift_usual: float = 0.0
    anomalous_run: int = 0
    recent: list = field(default_factory=list)  # (residual, scale) of the last evidence_windows windows
    sum_variance: dict = field(default_factory=dict)  # k -> EWMA of the squared sum of k residuals

    @property
    def season_s(self) -> int:
        return {"day": 86400, "week": 7 * 86400}.get(self.config.season, 0)

    def _slot(self, at: datetime) -> int:
        return int(at.timestamp()) % self.season_s // self.resolution_s if self.season_s else 0

    def _seasonal(self, slot: int) -> float | None:
        """The profile at ``slot``, averaged over its neighbours; None until it has enough history."""
        if not self.season_s:
            return None
        slots = self.season_s // self.resolution_s
        values = []
        for offset in range(-self.config.smooth_slots, self.config.smooth_slots + 1):
            entry = self.profile.get((slot + offset) % slots)
            if entry is None or entry[1] < self.config.season_min_periods:
                return None
            values.append(entry[0])
        return sum(values) / len(values)

    def expected(self, at: datetime) -> float | None:
        seasonal = self._seasonal(self._slot(at))
        if seasonal is not None:
            return self.ratio * seasonal
        return self.level

    def observe(self, at: datetime, value: float | None) -> Verdict:
        """Judge the window ending at ``at`` and learn from it. ``None``: no data (not judged)."""
        cfg = self.config
        if value is None:
            return Verdict(at, None, self.expected(at), 0.0, False, "no_data")
        slot = self._slot(at)
        seasonal = self._seasonal(slot)
        expected = self.ratio * seasonal if seasonal is not None else self.level
        if expected is None:  # the very first value
            self._learn(at, slot, value, value, seasonal)
            return Verdict(at, value, None, 0.0, False, "warmup")

        scale = self._scale(expected)
        score = (value - expected) / scale
        self.recent = (self.recent + [(value - expected, scale)])[-cfg.evidence_windows:]
        combined = self._worst_summed_score()
        # Anomalous: this window alone is far off, or the sum of the last k windows is and this one is
        # off the same way (so one outlier does not keep the summed score anomalous for long).
        combined_limit = cfg.evidence_sensitivity or cfg.sensitivity
        low = score <= -cfg.sensitivity or (combined <= -combined_limit and score <= -1)
        high = score >= cfg.sensitivity or (combined >= combined_limit and score >= 1)
        reason, anomalous = "ok", False
        if self.seen < cfg.warmup_windows:
            reason = "warmup"
        elif expected < cfg.min_expected:
            reason = "low_volume"
        elif low and cfg.direction in ("drop", "both"):
            reason, anomalous = "drop", True
        elif high and cfg.direction in ("spike", "both"):
            reason, anomalous = "spike", True
        elif seasonal is not None and cfg.max_level_change is not None and self.drift_usual > 0:
            change = self.drift_observed / self.drift_usual - 1
            if (change <= -cfg.max_level_change and cfg.direction in ("drop", "both")) or (
                    change >= cfg.max_level_change and cfg.direction in ("spike", "both")):
                reason, anomalous = "drift", True
        span = 1
        if anomalous and reason != "drift":
            span = self._evidence_span(-1 if reason == "drop" else 1, combined_limit)
            score = combined if abs(combined) > abs(score) else score
        # An anomaly does not become the baseline: anomalous windows are not learned (until one
        # lasts adapt_after windows: then it is the new normal), others are learned clipped to
        # +- learn_band scales. During warm-up values are learned as they are.
        self.anomalous_run = self.anomalous_run + 1 if anomalous else 0
        holding = (not anomalous and cfg.hold_evidence is not None and self.seen >= cfg.warmup_windows
                   and abs(combined) >= cfg.hold_evidence and combined * score > 0)
        if not anomalous:
            self._learn_sum_variance()
        if self.seen < cfg.warmup_windows:
            self._learn(at, slot, value, expected, seasonal)
        elif not anomalous or self.anomalous_run > cfg.adapt_after:
            level_band = cfg.hold_band if holding else cfg.learn_band
            self._learn(at, slot, clip(value, expected, cfg.learn_band * scale), expected, seasonal,
                        level_value=clip(value, expected, level_band * scale))
        return Verdict(at, value, expected, score, anomalous, reason, span)

    def _learn_sum_variance(self) -> None:
        """Learn how far sums of k windows stray on normal data: the profile's errors are correlated
        from one window to the next, so a sum strays more than independent windows would."""
        alpha, band = self.config.scale_alpha, self.config.learn_band
        for k in range(2, len(self.recent) + 1):
            window = self.recent[-k:]
            known = self.sum_variance.get(k)
            # Clipped like single values are, so one odd stretch does not widen what sums may do.
            squared = min(sum(r for r, _ in window) ** 2, (band * self._sum_spread(window)) ** 2)
            self.sum_variance[k] = squared if known is None else (1 - alpha) * known + alpha * squared

    def _worst_summed_score(self) -> float:
        """The score farthest from 0 among the sums of the last k windows, k = 2..len(recent), each
        against the larger of the independent-windows spread and the learned spread of such sums."""
        worst = 0.0
        for k in range(2, len(self.recent) + 1):
            window = self.recent[-k:]
            summed_score = sum(r for r, _ in window) / self._sum_spread(window)
            if abs(summed_score) > abs(worst):
                worst = summed_score
        return worst

    def _evidence_span(self, sign: int, limit: float) -> int:
        """The most windows k whose sum is off by ``limit`` in the direction ``sign``, each of them off
        that way by at least one scale: they are one anomaly seen together, not one window's blip."""
        span = 1
        for k in range(2, len(self.recent) + 1):
            window = self.recent[-k:]
            if any(sign * r < s for r, s in window):
                break
            if sign * sum(r for r, _ in window) / self._sum_spread(window) >= limit:
                span = k
        return span

    def _sum_spread(self, window: list) -> float:
        """The spread of the sum of ``window``'s residuals: the larger of the windows' spreads added as
        if independent and the spread learned for sums of that many windows."""
        return math.sqrt(max(sum(s * s for _, s in window), self.sum_variance.get(len(window), 0.0)))

    def _scale(self, expected: float) -> float:
        cfg = self.config
        spread = math.sqrt(self.variance) if self.variance is not None else 0.0
        if cfg.poisson_floor:
            spread = max(spread, math.sqrt(max(expected, 1.0)))
        return max(spread, cfg.min_scale, 1e-9)

    def _learn(self, at: datetime, slot: int, value: float, expected: float, seasonal: float | None,
               level_value: float | None = None) -> None:
        cfg = self.config
        level_value = value if level_value is None else level_value
        self.seen += 1
        residual = value - expected
        self.variance = residual ** 2 if self.variance is None else (
            (1 - cfg.scale_alpha) * self.variance + cfg.scale_alpha * residual ** 2)
        self.level = level_value if self.level is None else (1 - cfg.alpha) * self.level + cfg.alpha * level_value
        if seasonal is not None and seasonal > 0:
            self.ratio = (1 - cfg.alpha) * self.ratio + cfg.alpha * (level_value / seasonal)
            # Drift: a ratio of slow sums (not a mean of ratios), steady on quiet series.
            self.drift_observed = (1 - cfg.drift_alpha) * self.drift_observed + cfg.drift_alpha * value
            self.drift_usual = (1 - cfg.drift_alpha) * self.drift_usual + cfg.drift_alpha * seasonal
        if self.season_s:
            entry = self.profile.get(slot)
            if entry is None:
                self.profile[slot] = [value, 1]
            else:
                entry[0] = (1 - cfg.season_alpha) * entry[0] + cfg.season_alpha * value
                entry[1] += 1


@dataclass
class ThresholdConfig:
    above: float | None = None
    below: float | None = None
    min_volume: float = 0.0  # e.g. events in the window, for a rate


@dataclass
class ThresholdDetector:
    """Static rule: anomalous when the value is above ``above`` or below ``below``."""

    config: ThresholdConfig

    def observe(self, at: datetime, value: float | None, volume: float | None = None) -> Verdict:
        cfg = self.config
        if value is None:
            return Verdict(at, None, None, 0.0, False, "no_data")
        if volume is not None and volume < cfg.min_volume:
            return Verdict(at, value, None, 0.0, False, "low_volume")
        if cfg.above is not None and value > cfg.above:
            return Verdict(at, value, cfg.above, value / cfg.above if cfg.above else math.inf, True, "above")
        if cfg.below is not None and value < cfg.below:
            return Verdict(at, value, cfg.below, value / cfg.below if cfg.below else 0.0, True, "below")
        limit = cfg.above if cfg.above is not None else cfg.below
        return Verdict(at, value, limit, (value / limit) if limit else 0.0, False, "ok")
