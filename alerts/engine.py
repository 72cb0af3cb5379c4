"""Runs rules over complete windows: one detector and one lifecycle per (rule, series). Pure.

Windows are fed in event-time order, one complete window (all partitions
closed) at a time, with the totals of every dimension that had data. A series
the rule tracks that has no row in a window gets zeros: that is how a
broken-tracking zero is seen at all.
"""

from dataclasses import dataclass
from datetime import datetime

from spoor.alerts.alert_rules import Rule, RuleSet
from spoor.alerts.detectors import SeasonalDetector, Verdict
from spoor.alerts.lifecycle import AlertLifecycle, Transition, fingerprint
from spoor.alerts.series import metric_value


@dataclass
class Series:
    rule: Rule
    dimension: str
    detector: object
    lifecycle: AlertLifecycle

    def observe(self, window_end: datetime, totals: dict) -> tuple[Verdict, Transition | None]:
        value, volume = metric_value(self.rule.metric, totals)
        if totals.get("partial"):
            value = None  # the window was open when the worker (re)started: not all of it was counted
        if isinstance(self.detector, SeasonalDetector):
            verdict = self.detector.observe(window_end, value)
        else:
            verdict = self.detector.observe(window_end, value, volume)
        return verdict, self.lifecycle.step(verdict)


@dataclass(frozen=True)
class Evaluation:
    rule: Rule
    dimension: str
    verdict: Verdict
    transition: Transition | None


class RuleEngine:
    def __init__(self, rules: RuleSet):
        self.rules = rules
        self.series: dict[tuple[str, str], Series] = {}

    def _series_for(self, rule: Rule, dimension: str) -> Series:
        key = (rule.id, dimension)
        series = self.series.get(key)
        if series is None:
            lifecycle = AlertLifecycle(fingerprint(rule.id, rule.metric, dimension), rule.fire_after, rule.resolve_after)
            series = self.series[key] = Series(rule, dimension, rule.detector.build(rule.resolution_s), lifecycle)
        return series

    def evaluate(self, resolution: str, window_end: datetime, by_dimension: dict[str, dict]) -> list[Evaluation]:
        """Judge one complete window of ``resolution`` for every rule at that resolution."""
        results = []
        for rule in self.rules.rules:
            if rule.resolution != resolution:
                continue
            dimensions = {d for d in by_dimension if rule.matches(d)}
            if not rule.dimension.endswith(":*"):
                dimensions.add(rule.dimension)
            dimensions |= {d for (rule_id, d) in self.series if rule_id == rule.id}
            for dimension in sorted(dimensions):
                series = self._series_for(rule, dimension)
                verdict, transition = series.observe(window_end, by_dimension.get(dimension, {}))
                results.append(Evaluation(rule, dimension, verdict, transition))
        return results

    def replace_rules(self, rules: RuleSet) -> set[str]:
        """Use new rules; keep the state of rules that did not change. Returns the ids needing history."""
        old = {rule.id: rule for rule in self.rules.rules}
        changed = {rule.id for rule in rules.rules if old.get(rule.id) != rule}
        kept = {rule.id for rule in rules.rules} - changed
        self.series = {key: series for key, series in self.series.items() if key[0] in kept}
        self.rules = rules
        return changed
