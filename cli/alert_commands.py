"""``spoor alerts list|ack|silence|notifications|replay``: operator commands over the alerts tables."""

import argparse
import getpass
import re
import sys
from datetime import datetime, timedelta, timezone

from sqlalchemy import create_engine

from spoor.alerts import outbox, store
from spoor.alerts.alert_rules import RulesError, load_rules
from spoor.alerts.engine import RuleEngine
from spoor.alerts.evaluator import window_ends
from spoor.metric_columns import RESOLUTIONS
from spoor.settings import Settings
from spoor.storage.metric_store import window_totals

DURATION = re.compile(r"^(\d+)([smhd])$")


def add_commands(commands) -> None:
    alerts = commands.add_parser("alerts", help="metric alerts").add_subparsers(dest="action", required=True)
    listing = alerts.add_parser("list", help="recent alerts, newest first")
    listing.add_argument("--status", choices=["pending", "firing", "resolved", "cancelled"])
    listing.add_argument("--limit", type=int, default=30)
    ack = alerts.add_parser("ack", help="acknowledge an alert (someone is on it)")
    ack.add_argument("id", type=int)
    ack.add_argument("--by", default=None, help="who (default: the login name)")
    silence = alerts.add_parser("silence", help="no notifications for a rule id or alert fingerprint for a while")
    silence.add_argument("matcher", help="a rule id or an alert fingerprint")
    silence.add_argument("--for", dest="duration", default="2h", help="30m, 2h, 1d ...")
    silence.add_argument("--comment")
    unsent = alerts.add_parser("notifications", help="notifications not sent yet, or given up, newest first")
    unsent.add_argument("--limit", type=int, default=30)
    replay = alerts.add_parser("replay", help="run a stored metric series through a rule (to tune it)")
    replay.add_argument("rule_id")
    replay.add_argument("--rules", help="rules file (default: the worker's)")
    replay.add_argument("--since", help="ISO time (default: 7 days before --until)")
    replay.add_argument("--until", help="ISO time (default: now)")
    replay.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a detector field, e.g. --set sensitivity=4")
    replay.add_argument("--show", choices=["transitions", "anomalies", "all"], default="transitions")


def parse_duration(text: str) -> timedelta:
    match = DURATION.match(text)
    if not match:
        raise SystemExit(f"duration {text!r}: use a number and s, m, h or d (e.g. 30m)")
    number, unit = int(match[1]), match[2]
    return timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[unit]: number})


def run(settings: Settings, args: argparse.Namespace) -> None:
    engine = create_engine(settings.database_url)
    if args.action == "list":
        rows = store.list_alerts(engine, args.status, args.limit)
        print(f"{'id':>5} {'status':<9} {'severity':<8} {'rule':<28} {'series':<24} {'started (event time)':<25} "
              f"{'observed':>9} {'expected':>9} acked")
        for a in rows:
            evidence = a["evidence"].get("worst") or a["evidence"]
            print(f"{a['id']:>5} {a['status']:<9} {a['severity']:<8} {a['rule_id']:<28} {a['dimension']:<24} "
                  f"{a['started_at']:%Y-%m-%d %H:%M} {'':<8} {_num(evidence.get('observed')):>9} "
                  f"{_num(evidence.get('expected')):>9} {a['acked_by'] or ''}")
    elif args.action == "ack":
        if not store.acknowledge(engine, args.id, args.by or getpass.getuser()):
            sys.exit(f"no alert with id {args.id}")
        print(f"alert {args.id} acknowledged")
    elif args.action == "silence":
        until = datetime.now(timezone.utc) + parse_duration(args.duration)
        number = store.silence(engine, args.matcher, until, args.comment)
        print(f"silence {number}: no notifications for {args.matcher} until {until:%Y-%m-%d %H:%M} UTC")
    elif args.action == "notifications":
        print(f"{'id':>5} {'notifier':<13} {'status':<9} {'alert':>6} {'rule':<28} {'series':<24} {'state':<8} "
              f"{'attempts':>8} {'since (UTC)':<17} last error")
        for n in outbox.unsent(engine, args.limit):
            state, since = ("failed", n["failed_at"]) if n["failed_at"] else ("pending", n["created_at"])
            print(f"{n['id']:>5} {n['notifier']:<13} {n['status']:<9} {n['alert_id']:>6} {n['rule_id']:<28} "
                  f"{n['dimension']:<24} {state:<8} {n['attempts']:>8} {since.astimezone(timezone.utc):%Y-%m-%d %H:%M} "
                  f" {n['last_error'] or ''}")
    else:
        replay(settings, engine, args)


def _utc(text: str) -> datetime:
    """An ISO time; without an offset it is UTC."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"{text!r} is not an ISO time (e.g. 2024-05-01T10:00:00+00:00)") from None
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def _num(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def replay(settings: Settings, engine, args) -> None:
    from spoor.alerts.alert_rules import DEFAULT_RULES
    try:
        rules = load_rules(args.rules or settings.alert_rules_path or DEFAULT_RULES)
        rule = rules.rule(args.rule_id)
        if args.set:
            overrides = dict(item.split("=", 1) for item in args.set)
            rule = rule.model_copy(update={"detector": type(rule.detector).model_validate(
                {**rule.detector.model_dump(), **overrides})})
    except (RulesError, ValueError) as err:
        sys.exit(str(err))
    until = _utc(args.until) if args.until else datetime.now(timezone.utc)
    since = _utc(args.since) if args.since else until - timedelta(days=7)
    size_s = RESOLUTIONS[rule.resolution]
    ends = window_ends(since, until, size_s, 10 ** 6)
    totals = window_totals(engine, rule.resolution, since, until)
    if not totals:
        sys.exit(f"no {rule.resolution} metric windows between {since} and {until}")
    ends = [e for e in ends if e >= min(totals)]  # from the first stored window on
    rule_engine = RuleEngine(rules.model_copy(update={"rules": [rule]}))
    counts = {"windows": 0, "anomalous": 0, "fired": 0}
    print(f"replaying {rule.id} ({rule.metric}, {rule.resolution}, {rule.dimension}) over {len(ends)} windows")
    for end in ends:
        for evaluation in rule_engine.evaluate(rule.resolution, end, totals.get(end, {})):
            verdict, transition = evaluation.verdict, evaluation.transition
            counts["windows"] += 1
            counts["anomalous"] += verdict.anomalous
            if transition and transition.status == "firing":
                counts["fired"] += 1
            if args.show == "all" or (args.show == "anomalies" and verdict.anomalous) or transition:
                label = transition.status.upper() if transition else verdict.reason
                print(f"  {end:%Y-%m-%d %H:%M} {evaluation.dimension:<22} {label:<10} observed {_num(verdict.observed)} "
                      f"expected {_num(verdict.expected)} score {verdict.score:+.2f}")
    print(f"{counts['windows']} windows judged, {counts['anomalous']} anomalous, fired {counts['fired']} times")
