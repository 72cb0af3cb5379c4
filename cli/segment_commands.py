"""``spoor segments ...``, ``spoor campaigns ...`` and ``spoor users ...``."""

import argparse
import json
import logging
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import create_engine

from spoor.consent import PURPOSES
from spoor.settings import Settings


def add_commands(commands) -> None:
    seg = commands.add_parser("segments", help="segments: define, preview, launch, pause, run").add_subparsers(
        dest="action", required=True)
    define = seg.add_parser("define", help="create or replace a segment from a YAML/JSON file ('-' = stdin)")
    define.add_argument("file")
    seg.add_parser("list", help="segments with status and size")
    seg.add_parser("fields", help="the field catalogue")
    preview = seg.add_parser("preview", help="size and sample members of a saved segment or a file")
    preview.add_argument("name_or_file")
    preview.add_argument("--sample", type=int, default=10)
    for action in ("launch", "pause", "show"):
        seg.add_parser(action).add_argument("name")
    recompute = seg.add_parser("recompute", help="full recompute now (all active segments if no name)")
    recompute.add_argument("names", nargs="*")
    members = seg.add_parser("members")
    members.add_argument("name")
    members.add_argument("--limit", type=int, default=100)
    sizes = seg.add_parser("sizes", help="size over time from the membership history")
    sizes.add_argument("name")
    sizes.add_argument("--days", type=float, default=7)
    sizes.add_argument("--step-hours", type=float, default=24)
    seg.add_parser("install-builtins", help="add the built-in segments (RFM, lifecycle, cart abandoners, ...)")
    seg.add_parser("run", help="keep memberships current (incremental + scheduled full recompute)")
    seg.add_parser("api", help="serve the segments/campaigns/users HTTP API")

    camp = commands.add_parser("campaigns", help="campaigns: define, preview, launch, pause, report, run") \
        .add_subparsers(dest="action", required=True)
    define = camp.add_parser("define", help="create or replace a campaign from a YAML/JSON file ('-' = stdin)")
    define.add_argument("file")
    camp.add_parser("list")
    for action in ("preview", "launch", "pause", "show"):
        camp.add_parser(action).add_argument("name")
    report = camp.add_parser("report", help="conversion of treated vs holdout with lift and 95% CI; per variant "
                                            "conversion, revenue per user, verdicts and ROI")
    report.add_argument("name")
    report.add_argument("--days", type=int, default=None)
    report.add_argument("--text", action="store_true", help="variants against the holdout, lifts and ROI as text")
    camp.add_parser("run", help="ingest triggers, enqueue and dispatch deliveries")

    _add_attribution_commands(commands)

    users = commands.add_parser("users", help="a user's profile, segments and campaigns; consent; erasure") \
        .add_subparsers(dest="action", required=True)
    users.add_parser("show", help="the user an id belongs to (any of their ids): profile, ids, segments, "
                                  "campaigns").add_argument("user_key")
    consent = users.add_parser("consent", help="record consent per purpose, opt-out and time zone "
                                               "(docs/privacy.md#consent)")
    consent.add_argument("user_key")
    group = consent.add_mutually_exclusive_group()
    group.add_argument("--opt-out", action="store_true", help="withdraw every purpose")
    group.add_argument("--opt-in", action="store_true", help="lift --opt-out (purposes withdrawn one by one stay)")
    consent.add_argument("--grant", action="append", default=[], choices=PURPOSES, metavar="PURPOSE",
                         help=f"record consent to a purpose ({', '.join(PURPOSES)}); repeatable")
    consent.add_argument("--withdraw", action="append", default=[], choices=PURPOSES, metavar="PURPOSE",
                         help="record that a purpose is withdrawn; repeatable")
    consent.add_argument("--time-zone", help="IANA name, e.g. Europe/Paris (for quiet hours)")
    erase = users.add_parser("erase", help="remove the user and every id joined to it from PostgreSQL and the "
                                           "Faust tables")
    erase.add_argument("user_key")
    erase.add_argument("--actor", default="cli")
    users.add_parser("erased", help="the erasures that named an id, from privacy_audit_log (by the HMAC of the id "
                                    "under SPOOR_AUDIT_HMAC_KEY)").add_argument("user_key")
    export = users.add_parser("export", help="everything held about the person an id belongs to, as one JSON "
                                             "document (right of access; cli/main.py runs it)")
    export.add_argument("user_key", help="any of the person's ids")
    export.add_argument("--output", "-o", help="write the document to this file (mode 600, written whole or not "
                                               "at all); default: standard output")


def _print(value) -> None:
    print(json.dumps(value, indent=2, default=str))


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        sys.exit(f"error: cannot read {path}: {err}")


def run(settings: Settings, args: argparse.Namespace) -> None:
    from spoor.errors import SpoorError
    if args.action in ("run", "api"):
        logging.getLogger().setLevel(logging.INFO)
    # The runners' statements run serially: a parallel plan (the scans of every profile for changes) took
    # twice the CPU for the same rows (bench/README.md, the runners' share of PostgreSQL's CPU).
    connect_args = {"options": "-c max_parallel_workers_per_gather=0"} if args.action == "run" else {}
    engine = create_engine(settings.database_url, pool_pre_ping=True, connect_args=connect_args)
    try:
        {"segments": _segments, "campaigns": _campaigns, "users": _users,
         "attribution": _attribution}[args.command](settings, engine, args)
    except SpoorError as err:
        sys.exit(f"error: {err}")


def _segments(settings: Settings, engine, args) -> None:
    from spoor.segments import membership
    from spoor.segments.membership import SegmentStore, utcnow
    from spoor.segments.segment_fields import FIELDS
    from spoor.segments.segment_language import parse_segment

    store = SegmentStore(engine)
    if args.action == "define":
        spec = parse_segment(_read(args.file))
        store.save(spec)
        print(f"segment {spec.name} saved ({store.row(spec.name)['status']})")
    elif args.action == "list":
        for row in store.rows():
            print(f"{row['name']:<32} {row['status']:<8} {row['members']:>9} {row['description']}")
    elif args.action == "fields":
        for f in FIELDS.values():
            print(f"{f.name:<28} {f.type:<7} {f.source:<9} {f.description}")
    elif args.action == "preview":
        name_or_file = args.name_or_file
        looks_like_file = name_or_file == "-" or Path(name_or_file).suffix in (".yaml", ".yml", ".json") \
            or "/" in name_or_file
        spec = parse_segment(_read(name_or_file)) if looks_like_file or Path(name_or_file).is_file() \
            else store.get(name_or_file)
        _print(membership.preview(engine, spec, store.specs(), utcnow(), args.sample))
    elif args.action == "show":
        _print({**store.row(args.name), "definition": store.get(args.name).model_dump(mode="json", by_alias=True)})
    elif args.action == "launch":
        store.set_status(args.name, "active")
        entered, left = membership.full_recompute(engine, utcnow(), [args.name])[args.name]
        print(f"segment {args.name} active: {entered} entered, {left} left")
    elif args.action == "pause":
        store.set_status(args.name, "paused")
        print(f"segment {args.name} paused")
    elif args.action == "recompute":
        _print(membership.full_recompute(engine, utcnow(), args.names or None))
    elif args.action == "members":
        store.row(args.name)  # an unknown name is an error, not an empty list
        for member in membership.members(engine, args.name, args.limit):
            print(f"{member['user_key']}\t{member['entered_at']:%Y-%m-%d %H:%M:%S}")
    elif args.action == "sizes":
        store.row(args.name)
        end = datetime.now(timezone.utc)
        for point in membership.sizes(engine, args.name, end - timedelta(days=args.days), end,
                                      timedelta(hours=args.step_hours)):
            print(f"{point['at']:%Y-%m-%d %H:%M}\t{point['size']}")
    elif args.action == "install-builtins":
        added = store.install_builtins()
        print(f"added: {', '.join(added)}" if added else "built-in segments already installed")
    elif args.action == "run":
        from spoor.segments.segment_runner import run_segments
        run_segments(settings, engine)
    elif args.action == "api":
        import uvicorn

        # Each worker process builds the app from the environment's settings (uvicorn needs an import string).
        uvicorn.run("spoor.cli.admin_api:api_from_environment", factory=True, workers=settings.admin_api_workers,
                    host=settings.admin_api_host, port=settings.admin_api_port, log_level="warning",
                    timeout_keep_alive=75)  # a shop's backend keeps its connections: closing idle ones after
        # uvicorn's 5 s default raced its next request on them (IncompleteRead in bench/recommendation_latency.py)


def _campaigns(settings: Settings, engine, args) -> None:
    from spoor.campaigns import campaign_dispatch
    from spoor.campaigns.campaign_dispatch import CampaignStore
    from spoor.campaigns.campaign_spec import parse_campaign
    from spoor.campaigns.webhook_delivery import check_webhook
    from spoor.segments.membership import utcnow

    store = CampaignStore(engine)
    if args.action == "define":
        spec = parse_campaign(_read(args.file))
        check_webhook(spec, settings)
        store.save(spec)
        print(f"campaign {spec.name} saved")
    elif args.action == "list":
        for row in store.rows():
            print(f"{row['name']:<32} {row['status']:<8} launched {row['launched_at'] or '-'}")
    elif args.action == "show":
        _print(store.get(args.name)[1])
    elif args.action == "preview":
        _print(campaign_dispatch.preview(engine, store.get(args.name)[0], utcnow()))
    elif args.action == "launch":
        spec, _ = store.get(args.name)
        if spec.action.webhook and not settings.campaign_webhook_secret:
            sys.exit("error: SPOOR_CAMPAIGN_WEBHOOK_SECRET is not set: webhooks cannot be signed")
        check_webhook(spec, settings)
        store.launch(args.name, utcnow())
        print(f"campaign {args.name} active")
    elif args.action == "pause":
        store.pause(args.name)
        print(f"campaign {args.name} paused")
    elif args.action == "report":
        result = campaign_dispatch.report(engine, args.name, args.days)
        if args.text:
            from spoor.campaigns.experiment_text import experiment_lines
            print("\n".join(experiment_lines(result)))
        else:
            _print(result)
    elif args.action == "run":
        from spoor.campaigns.campaign_runner import run_campaigns
        run_campaigns(settings, engine)


def _users(settings: Settings, engine, args) -> None:
    from spoor.privacy.consent import set_consent
    if args.action == "show":
        from fastapi import HTTPException

        from spoor.cli.admin_api import user_view
        try:
            _print(user_view(engine, args.user_key))
        except HTTPException:
            sys.exit(f"error: no user {args.user_key!r}")
    elif args.action == "consent":
        from spoor.cli.admin_api import resolve_user
        opted_out = True if args.opt_out else False if args.opt_in else None
        both = set(args.grant) & set(args.withdraw)
        if both:
            sys.exit(f"error: {', '.join(sorted(both))} both granted and withdrawn")
        purposes = {p: True for p in args.grant} | {p: False for p in args.withdraw}
        _print(set_consent(engine, resolve_user(engine, args.user_key), opted_out, args.time_zone, purposes))
    elif args.action == "erase":
        from spoor.privacy.erasure import erase_user
        _print(erase_user(settings, engine, args.user_key, actor=args.actor))
    elif args.action == "erased":
        from spoor.privacy.erasure import erased_entries
        _print(erased_entries(settings, engine, args.user_key))


# --- attribution (docs/attribution.md) ---

def _utc_day(value: str):
    from datetime import date
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from None
    if not 1970 <= day.year < 2100:
        raise argparse.ArgumentTypeError("a date between 1970 and 2099")
    return day


def _add_attribution_commands(commands) -> None:
    from spoor.segments.attribution_models import MODELS
    attr = commands.add_parser("attribution", help="channel attribution of orders: report, refresh") \
        .add_subparsers(dest="action", required=True)
    report = attr.add_parser("report", help="revenue by channel under each model (UTC days, both included)")
    report.add_argument("--model", choices=MODELS, help="one model (default: all four)")
    report.add_argument("--since", type=_utc_day, help="first day, YYYY-MM-DD (default: 29 days before --until)")
    report.add_argument("--until", type=_utc_day, help="last day, YYYY-MM-DD (default: today)")
    report.add_argument("--per-day", action="store_true", help="one row per day, model and channel")
    report.add_argument("--limit", type=int, default=1000, help="rows at most (1..10000)")
    report.add_argument("--json", action="store_true", help="print JSON instead of a table")
    attr.add_parser("refresh", help="attribute every order again now (after changing SPOOR_ATTRIBUTION_WINDOW_DAYS)")


def _attribution(settings: Settings, engine, args) -> None:
    from spoor.segments import attribution
    if args.action == "refresh":
        from spoor.segments.membership import changed_users
        everyone = changed_users(engine, datetime(1970, 1, 1, tzinfo=timezone.utc))
        rows = attribution.attribute_people(engine, everyone, timedelta(days=settings.attribution_window_days))
        print(f"orders of {len(everyone)} people attributed: {rows} rows")
        return
    until = args.until or datetime.now(timezone.utc).date()
    since = args.since or until - timedelta(days=29)
    if not 1 <= args.limit <= attribution.MAX_REPORT_ROWS:
        sys.exit(f"error: --limit must be 1..{attribution.MAX_REPORT_ROWS}")
    try:
        result = attribution.report(engine, since, until, [args.model] if args.model else attribution.MODELS,
                                    args.per_day, args.limit)
    except ValueError as err:
        sys.exit(f"error: {err}")
    if args.json:
        _print(result)
        return
    print(f"{'model':<15} {'day':<10} {'channel':<32} {'cur':<4} {'orders':>7} {'revenue':>14} "
          f"{'refunded':>12} {'net':>14}")
    for row in result["rows"]:
        print(f"{row['model']:<15} {row.get('day', '-'):<10} {row['channel'][:32]:<32} {row['currency'] or '-':<4} "
              f"{row['orders']:>7} {row['revenue']:>14} {row['refunded']:>12} {row['net_revenue']:>14}")
    if result["truncated"]:
        print(f"(first {args.limit} rows only: raise --limit or narrow the dates)", file=sys.stderr)
