"""Labelled quality benchmark of the anomaly detector (pure; no broker, no database).

Synthetic 1-minute count series with a daily cycle (night at ~10% of the
evening peak), a weekend uplift, Poisson noise with overdispersion, and one
injected anomaly per series: a level drop, a spike, a slow drift down, or a
broken-tracking zero. Clean series get none. Each series runs through the
same rule path as production (rule spec -> detector -> lifecycle) and the
benchmark prints, per anomaly type, recall (fired within ``--within``
windows of the start), precision, median detection delay, and false alerts
per simulated day and week on clean series.

    .venv/bin/python bench/alerts_quality.py [--series 30] [--days 10] [--seed 1]
"""

import argparse
import math
import random
import statistics
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spoor.alerts.alert_rules import load_rules  # noqa: E402
from spoor.alerts.engine import RuleEngine  # noqa: E402
from spoor.alerts.lifecycle import AlertStatus  # noqa: E402

START = datetime(2024, 1, 1, tzinfo=timezone.utc)  # a Monday
RULES = Path(__file__).resolve().parent.parent / "alerts" / "rules.yaml"
RULE_ID = "events-anomaly"  # the production rule whose detector settings are measured


@dataclass
class Anomaly:
    kind: str
    start: int  # window index
    end: int  # exclusive


def daily_shape(minute_of_day: float) -> float:
    """Traffic relative to the peak: 0.1 at 03:00, 1.0 at 15:00."""
    return 0.55 - 0.45 * math.cos(2 * math.pi * (minute_of_day / 60 - 3) / 24)


def rate(index: int, peak: float) -> float:
    at = START + timedelta(minutes=index)
    weekend = 1.15 if at.weekday() >= 5 else 1.0
    return peak * weekend * daily_shape(at.hour * 60 + at.minute)


def inject(rng: random.Random, kind: str, days: int) -> Anomaly | None:
    if kind == "clean":
        return None
    day = rng.randint(3, days - 1)
    start = day * 1440 + rng.randint(7 * 60, 21 * 60)  # daytime: a 3 a.m. blip at 4 events/min is noise
    length = {"drop": rng.randint(30, 90), "spike": rng.randint(10, 30), "drift": 300,
              "zero": rng.randint(20, 60)}[kind]
    return Anomaly(kind, start, start + length)


def multiplier(anomaly: Anomaly | None, index: int, rng_factor: float) -> float:
    if anomaly is None or not anomaly.start <= index < anomaly.end:
        return 1.0
    if anomaly.kind == "drop":
        return rng_factor  # 0.4 .. 0.6 of normal
    if anomaly.kind == "spike":
        return 1 + 4 * rng_factor  # x2.6 .. x3.4
    if anomaly.kind == "zero":
        return 0.0
    progress = min(1.0, (index - anomaly.start) / 180)  # drift: down to 50% over 3 hours, then held
    return 1 - 0.5 * progress


def series(rng: random.Random, days: int, peak: float, anomaly: Anomaly | None) -> list[int]:
    factor = rng.uniform(0.4, 0.6)
    values = []
    for index in range(days * 1440):
        mean = rate(index, peak) * multiplier(anomaly, index, factor)
        mean *= rng.gammavariate(400, 1 / 400)  # ~5% overdispersion
        values.append(poisson(rng, mean))
    return values


def poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 50:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def firings(engine: RuleEngine, values: list[int], minutes: int) -> list[int]:
    """Window indexes (of ``minutes``-minute windows summing the 1-minute values) where the rule fired."""
    fired = []
    resolution = f"{minutes}m"
    for index in range(len(values) // minutes):
        value = sum(values[index * minutes:(index + 1) * minutes])
        window_end = START + timedelta(minutes=(index + 1) * minutes)
        for evaluation in engine.evaluate(resolution, window_end, {"global": {"events": value}}):
            if evaluation.transition and evaluation.transition.status == AlertStatus.FIRING:
                fired.append(index)
    return fired


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=30, help="series per anomaly type (and clean)")
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--within", type=int, default=5, help="windows from the start to count as detected")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--minutes", type=int, choices=[1, 5], default=1,
                        help="window size: 5 judges 5-minute sums (warm-up and volume guard scaled to match)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a detector field to tune it, e.g. --set sensitivity=4.5")
    parser.add_argument("--fire-after", type=int, help="override the rule's fire_after to tune it")
    args = parser.parse_args()

    rules = load_rules(RULES)
    rule = rules.rule(RULE_ID)
    overrides = dict(item.split("=", 1) for item in args.set)
    if overrides:
        detector = type(rule.detector).model_validate({**rule.detector.model_dump(), **overrides})
        rule = rule.model_copy(update={"detector": detector})
    if args.fire_after:
        rule = rule.model_copy(update={"fire_after": args.fire_after})
    if args.minutes == 5:
        detector = type(rule.detector).model_validate({
            **rule.detector.model_dump(), "warmup_windows": rule.detector.warmup_windows // 5,
            "min_expected": rule.detector.min_expected * 5})
        rule = rule.model_copy(update={"resolution": "5m", "detector": detector})
    single = rules.model_copy(update={"rules": [rule.model_copy(update={"dimension": "global"})]})
    print(f"rule {rule.id}: {rule.detector.model_dump()} fire_after={rule.fire_after} "
          f"resolve_after={rule.resolve_after}")
    print(f"{args.series} series per type, {args.days} days of {args.minutes}-minute windows each; "
          f"peaks 40-400 events/min\n")

    rng = random.Random(args.seed)
    results, eligible = {}, {}
    guard = getattr(rule.detector, "min_expected", 0)
    for kind in ("drop", "zero", "spike", "drift", "clean"):
        detected, delays, true_alerts, false_alerts = 0, [], 0, 0
        eligible[kind] = [0, 0]  # anomalies whose usual volume passes the minimum-volume guard; detected
        for _ in range(args.series):
            peak = math.exp(rng.uniform(math.log(40), math.log(400)))
            anomaly = inject(rng, kind, args.days)
            above_guard = anomaly is not None and rate(anomaly.start, peak) * args.minutes >= guard
            fired = firings(RuleEngine(single), series(rng, args.days, peak, anomaly), args.minutes)
            if anomaly:  # in windows of the judged size
                anomaly = Anomaly(kind, anomaly.start // args.minutes, -(-anomaly.end // args.minutes))
            hit = None
            for index in fired:
                # An alert for this anomaly fires during it (or while it resolves); anything else is false.
                if anomaly and anomaly.start <= index < anomaly.end + rule.resolve_after:
                    true_alerts += 1
                    hit = index if hit is None else hit
                else:
                    false_alerts += 1
            if anomaly and hit is not None:
                delay = hit - anomaly.start + 1  # windows of the anomaly closed when it fired
                delays.append(delay)
                detected += delay <= args.within or kind == "drift"
                eligible[kind][1] += above_guard and (delay <= args.within or kind == "drift")
            eligible[kind][0] += above_guard
        results[kind] = (detected, delays, true_alerts, false_alerts)

    print(f"{'type':<7} {'recall':>7} {'recall above guard':>19} {'precision':>9} {'median delay (windows)':>23} "
          f"{'false alerts':>13}")
    for kind, (detected, delays, true_alerts, false_alerts) in results.items():
        if kind == "clean":
            continue
        fired = true_alerts + false_alerts
        recall = detected / args.series
        precision = true_alerts / fired if fired else float("nan")
        median = statistics.median(delays) if delays else float("nan")
        total, hits = eligible[kind]
        guarded = f"{hits / total:.2f} ({hits}/{total})" if total else "-"
        print(f"{kind:<7} {recall:>7.2f} {guarded:>19} {precision:>9.2f} {median:>23.1f} {false_alerts:>13}")
    clean_false = results["clean"][3]
    days = args.series * (args.days - 1)  # the first simulated day is warm-up
    print(f"\nclean series: {clean_false} false alerts in {days} simulated days = "
          f"{clean_false / days:.3f} per day, {7 * clean_false / days:.3f} per week")
    print("(drift recall counts a detection at any delay; drop, zero and spike within "
          f"{args.within} windows; 'above guard': anomalies starting where the usual volume is at least "
          f"min_expected={guard}, the only ones the rule may judge)")
    for kind in ("drop", "zero", "spike", "drift"):
        detected, delays, *_ = results[kind]
        print(f"recall_{kind}: {detected / args.series:.3f}")
        if eligible[kind][0]:
            print(f"recall_{kind}_above_guard: {eligible[kind][1] / eligible[kind][0]:.3f}")
        print(f"median_delay_{kind}_windows: {statistics.median(delays) if delays else float('nan')}")
    print(f"false_alerts_per_week_clean: {7 * clean_false / days:.3f}")


if __name__ == "__main__":
    main()
