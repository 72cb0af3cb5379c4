"""``spoor``: one command per process and per operator task."""

import argparse
import logging
import sys

from spoor.settings import Settings, env_value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="spoor", description="Spoor: e-commerce behaviour tracking.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("collector", help="run the HTTP collector (Segment HTTP Tracking API)")
    worker = commands.add_parser("worker", help="run the Faust stream worker (restarted after a fail-stop)")
    worker.add_argument("--no-supervise", action="store_true", help="run the worker in this process")
    commands.add_parser("migrate", help="apply database migrations")
    topics = commands.add_parser("topics", help="Kafka topics").add_subparsers(dest="action", required=True)
    topics.add_parser("create", help="create Spoor's topics if missing")
    keys = commands.add_parser("keys", help="write keys, and API keys that may only read recommendations"
                               ).add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="create a write key and print it (shown once)")
    create.add_argument("--name", required=True)
    create.add_argument("--source", required=True, help="web, ios, android, backend...")
    create.add_argument("--key", help="use this value instead of a random one")
    create.add_argument("--origin", action="append", default=[],
                        help="browser origin allowed to send with this key, e.g. https://shop.example (repeatable; * for any)")
    origins = keys.add_parser("origins", help="show or replace the browser origins of a write key (CORS)")
    origins.add_argument("name")
    origins.add_argument("--origin", action="append", help="the new list (repeatable); none: show the current list")
    reader = keys.add_parser("create-reader", help="create an admin API key that may only read recommendations "
                                                   "(a shop backend's) and print it (shown once)")
    reader.add_argument("name")
    reader.add_argument("--scope", default="recommendations", choices=["recommendations"],
                        help="what the key may call: recommendations (GET /v1/recommendations/...)")
    reader.add_argument("--key", help="use this value instead of a random one (16+ printable ASCII characters)")
    keys.add_parser("list", help="list write keys and reader keys (names, sources, scopes, never values)")
    revoke = keys.add_parser("revoke", help="revoke a write key (--reader: a reader key)")
    revoke.add_argument("name")
    revoke.add_argument("--reader", action="store_true", help="revoke the reader key NAME (refused within seconds)")
    demo = commands.add_parser("demo", help="send simulated shoppers through the collector and summarise")
    demo.add_argument("--users", type=int, default=300)
    demo.add_argument("--collector-url", default=None)
    demo.add_argument("--write-key", required=True)
    commands.add_parser("summary", help="print the summary of what is in PostgreSQL")
    _add_config_parser(commands)
    _add_replay_parser(commands)
    from spoor.cli.segment_commands import add_commands as add_segments_commands  # segments, campaigns, users
    add_segments_commands(commands)
    _add_dead_letter_commands(commands)
    from spoor.cli.retention_commands import add_commands as add_retention_commands
    add_retention_commands(commands)
    from spoor.cli.alert_commands import add_commands as add_alerts_commands
    add_alerts_commands(commands)

    args = parser.parse_args(argv)
    long_running = args.command in ("collector", "worker")
    logging.basicConfig(level=logging.INFO if long_running else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python logs every connection at INFO
    settings = Settings()
    handler = globals()["_" + args.command.replace("-", "_")]
    handler(settings, args)


def _collector(settings: Settings, _args) -> None:
    import uvicorn

    from spoor.ingest.collector import create_app
    uvicorn.run(create_app(settings), host=settings.collector_host, port=settings.collector_port,
                log_level="warning", access_log=False)


def _worker(settings: Settings, args) -> None:
    if settings.alerts_enabled:
        from spoor.alerts.notifiers import check_settings
        try:
            check_settings(settings)
        except ValueError as err:
            sys.exit(f"error: {err}")
    from spoor.topics import ensure_topic_configs, missing_topics
    missing = missing_topics(settings)
    if missing:
        sys.exit(f"Kafka topics {missing} do not exist: run `spoor topics create` first")
    try:  # the retention that is the erasure deadline of the copies on Kafka (docs/privacy.md)
        changed = ensure_topic_configs(settings)
    except Exception as err:  # a refusal (ACLs, an old broker): the stated erasure deadline would not hold
        sys.exit(f"error: cannot set the retention of Spoor's topics (SPOOR_PERSONAL_TOPIC_RETENTION_HOURS): {err}")
    if changed:
        print(f"topic configs applied (erasure deadline): {', '.join(changed)}", file=sys.stderr)
    if not args.no_supervise:
        from spoor.cli.supervise import supervise
        sys.exit(supervise([sys.executable, "-m", "spoor.cli", "worker", "--no-supervise"]))

    import faust

    from spoor.stream_processors.app import create_app
    from spoor.stream_processors.gc_control import watch_gc_pauses
    watch_gc_pauses()
    faust.Worker(create_app(settings), loglevel="INFO").execute_from_commandline()


def _migrate(settings: Settings, _args) -> None:
    from spoor.storage.migrate import upgrade
    upgrade(settings.database_url)
    print("database schema is up to date")


def _topics(settings: Settings, _args) -> None:
    from spoor.topics import create_topics
    created = create_topics(settings)
    print(f"created topics: {', '.join(created)}" if created else "topics already exist")


def _keys(settings: Settings, args) -> None:
    from sqlalchemy import create_engine

    from spoor.storage import api_keys, write_keys
    engine = create_engine(settings.database_url)
    if args.action == "create-reader":
        try:
            print(api_keys.create_key(engine, args.name, args.scope, args.key))
        except ValueError as err:
            sys.exit(f"spoor keys create-reader: {err}")
    elif args.action == "create":
        from spoor.storage.write_key_origins import normalize_origin
        try:
            [normalize_origin(origin) for origin in args.origin]  # before the key exists
        except ValueError as err:
            sys.exit(f"--origin: {err}")
        key = write_keys.create_key(engine, args.name, args.source, args.key)
        if args.origin:
            _key_origins(engine, args.name, args.origin)
        print(key)
    elif args.action == "origins":
        _key_origins(engine, args.name, args.origin)
    elif args.action == "list":
        for key in write_keys.list_keys(engine):
            state = f"revoked {key['revoked_at']:%Y-%m-%d}" if key["revoked_at"] else "active"
            print(f"{key['name']:<24} {key['source']:<12} {state}")
        for key in api_keys.list_keys(engine):
            state = f"revoked {key['revoked_at']:%Y-%m-%d}" if key["revoked_at"] else "active"
            print(f"{key['name']:<24} {'reader':<12} {state:<18} scope {key['scope']}")
    elif args.reader:
        if not api_keys.revoke_key(engine, args.name):
            sys.exit(f"no active reader key named {args.name!r}")
    elif not write_keys.revoke_key(engine, args.name):
        hint = " (a reader key has that name: --reader)" if any(
            k["name"] == args.name and not k["revoked_at"] for k in api_keys.list_keys(engine)) else ""
        sys.exit(f"no active write key named {args.name!r}{hint}")


def _key_origins(engine, name: str, origins: list[str] | None) -> None:
    from spoor.storage.write_key_origins import origins_of, set_origins
    try:
        current = set_origins(engine, name, origins) if origins is not None else origins_of(engine, name)
    except ValueError as err:
        sys.exit(f"cannot set origins of {name!r}: {err}")
    except KeyError:
        current = None
    if current is None:
        sys.exit(f"no active write key named {name!r}")
    print(f"{name}: browser origins {', '.join(current) or '(none: browsers are refused)'}", file=sys.stderr)


def _demo(settings: Settings, args) -> None:
    from sqlalchemy import create_engine

    from spoor.cli.demo import print_summary, run_demo
    url = args.collector_url or f"http://{settings.collector_host}:{settings.collector_port}"
    print_summary(run_demo(create_engine(settings.database_url), url, args.write_key, args.users, settings=settings))


def _summary(settings: Settings, _args) -> None:
    from sqlalchemy import create_engine

    from spoor.cli.demo import print_summary
    from spoor.storage.queries import summary
    print_summary(summary(create_engine(settings.database_url)))


# ---- config: the settings as the processes read them (deploy/stack.sh reads its ports from here) ---

def _add_config_parser(commands) -> None:
    config = commands.add_parser(
        "config", help="print every setting as shell-safe SPOOR_NAME=value lines (defaults and environment)")
    actions = config.add_subparsers(dest="action")
    get = actions.add_parser("get", help="print the values of the named settings alone, one per line")
    get.add_argument("names", nargs="+", metavar="NAME", help="a setting, e.g. collector_port or SPOOR_COLLECTOR_PORT")


def _config(settings: Settings, args) -> None:
    import shlex

    from spoor.cli.config_doc import env_name
    values = settings.model_dump()
    if args.action != "get":
        # Secrets (admin_token, the webhook secrets) too: the local stack needs them, and an unset one is ''.
        for name, value in values.items():
            print(f"{env_name(name)}={shlex.quote(env_value(value))}")
        return
    prefix = env_name("").lower()
    fields = [name.lower().removeprefix(prefix) for name in args.names]
    unknown = [name for name, field in zip(args.names, fields) if field not in values]
    if unknown:
        print(f"spoor config get: unknown setting {', '.join(map(repr, unknown))} "
              "(`spoor config` lists every setting)", file=sys.stderr)
        sys.exit(2)
    lines = [env_value(values[field]) for field in fields]
    multiline = [name for name, line in zip(args.names, lines) if "\n" in line or "\r" in line]
    if multiline:  # one value per line is the contract the shell scripts read by
        sys.exit(f"spoor config get: {', '.join(multiline)} spans lines; read it from `spoor config` instead")
    print("\n".join(lines))


# ---- replay: a public data set file through a running collector -----------------------------------

def _add_replay_parser(commands) -> None:
    replay = commands.add_parser(
        "replay", help="send a UCI Online Retail or REES46 CSV file (plain or gzipped) through the collector")
    replay.add_argument("file", help="the CSV file; its format is known by its header")
    replay.add_argument("--collector-url", default=None, help="default: the local stack's collector")
    replay.add_argument("--write-key", default=None, help="default: the demo write key `make up` creates")


def _replay(settings: Settings, args) -> None:
    from pathlib import Path

    from spoor.cli.collector_client import CollectorClient
    from spoor.cli.replay import ReplayError
    from spoor.cli.replay_sender import ReplayFailed, replay_file, summary_lines
    url = args.collector_url or f"http://{settings.collector_host}:{settings.collector_port}"
    client = CollectorClient(url, args.write_key or settings.demo_write_key)
    try:
        result = replay_file(Path(args.file), client, retention_days=settings.retention_events_days)
    except ConnectionError as err:
        sys.exit(f"spoor replay: cannot reach the collector at {url}: {err}")
    except (OSError, ReplayError, ReplayFailed) as err:
        sys.exit(f"spoor replay: {err}")
    finally:
        client.close()
    print("\n".join(summary_lines(result, url)))
    if result.rejected:
        sys.exit(1)


def _segments(settings: Settings, args) -> None:
    from spoor.cli.segment_commands import run
    run(settings, args)


_campaigns = _segments
_attribution = _segments  # spoor attribution report / refresh (cli/segment_commands.py)


def _retention(settings: Settings, args) -> None:
    from spoor.cli.retention_commands import run
    run(settings, args)


def _users(settings: Settings, args) -> None:
    if args.action == "export":
        _users_export(settings, args)
    else:
        _segments(settings, args)


# --- users export: a subject's export, right of access (issue 24, docs/privacy.md) ---

# Exit codes of `spoor users export`, from sysexits.h as spoor/exit_codes.py's are.
EX_DATAERR, EX_NOUSER, EX_CANTCREAT = 65, 67, 73
EXPORT_PROGRESS_ROWS = 10_000


def _users_export(settings: Settings, args) -> None:
    """Exit 0 with the document; 65 for an id that cannot be exported (malformed, or a placeholder that
    is many shoppers'), 67 when nothing is held about the id, 73 when the file cannot be written."""
    import os
    import tempfile
    from pathlib import Path

    from sqlalchemy import create_engine

    from spoor.privacy import PrivacyError
    from spoor.privacy.export import UnknownSubject, stream_export

    totals: dict[str, int] = {}

    def progress(section: str, rows: int) -> None:
        if rows and rows % EXPORT_PROGRESS_ROWS == 0 and totals.get(section) != rows:
            print(f"spoor users export: {section}: {rows} rows", file=sys.stderr)
        totals[section] = rows

    engine = create_engine(settings.database_url)
    try:
        pieces = stream_export(engine, args.user_key, denylist=settings.identity_denylist, progress=progress)
    except UnknownSubject as err:
        sys.stderr.write(f"spoor users export: {err}\n")
        sys.exit(EX_NOUSER)
    except PrivacyError as err:
        sys.stderr.write(f"spoor users export: {err}\n")
        sys.exit(EX_DATAERR)
    if not args.output:
        for piece in pieces:
            sys.stdout.buffer.write(piece)
        sys.stdout.buffer.write(b"\n")
        sys.stdout.flush()
        return
    target = Path(args.output)
    try:
        handle, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    except OSError as err:
        pieces.close()
        sys.stderr.write(f"spoor users export: cannot write {target}: {err}\n")
        sys.exit(EX_CANTCREAT)
    try:
        with os.fdopen(handle, "wb") as out:  # mkstemp's file is the owner's only (0600)
            for piece in pieces:
                out.write(piece)
            out.write(b"\n")
        os.replace(partial, target)
    except OSError as err:
        Path(partial).unlink(missing_ok=True)
        sys.stderr.write(f"spoor users export: cannot write {target}: {err}\n")
        sys.exit(EX_CANTCREAT)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    held = {name: rows for name, rows in totals.items() if rows}
    print(f"spoor users export: wrote {sum(held.values())} rows of {len(held)} tables to {target}", file=sys.stderr)


# --- dead letters: list and replay (issue 3) ---

def _add_dead_letter_commands(commands) -> None:
    dead = commands.add_parser("dead-letters", help="rejected events: list them, replay them after a fix")
    actions = dead.add_subparsers(dest="action", required=True)
    for name, help_text in (("list", "list dead letters, oldest first"),
                            ("replay", "re-submit original payloads through the collector's normalisation")):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("--since", help="ISO time, or an age such as 30m, 12h, 7d")
        action.add_argument("--reason", help="part of the failure reason or field (case-insensitive)")
        action.add_argument("--type", dest="failure_type", help="schema_violation, size_violation, parse_error...")
        action.add_argument("--processor", help="collector or worker")
        action.add_argument("--id", dest="ids", action="append", help="only this dead letter (repeatable)")
        action.add_argument("--limit", type=int, default=100 if name == "list" else None)
    actions.choices["list"].add_argument("--pending", action="store_true", help="only those not replayed yet")
    actions.choices["list"].add_argument("--json", action="store_true", help="one JSON object per line")
    actions.choices["replay"].add_argument("--dry-run", action="store_true",
                                           help="judge the payloads, send nothing, mark nothing")


def _dead_letters(settings: Settings, args) -> None:
    from datetime import datetime, timezone

    from sqlalchemy import create_engine

    from spoor.storage.dead_letters import find_dead_letters, mark_replayed
    engine = create_engine(settings.database_url)
    rows = find_dead_letters(engine, since=_since(args.since), reason=args.reason, failure_type=args.failure_type,
                             processor=args.processor, ids=args.ids, limit=args.limit,
                             include_replayed=args.action == "list" and not args.pending)
    if args.action == "list":
        _print_dead_letters(rows, args.json)
        if args.limit and len(rows) == args.limit and not args.json:
            print(f"(the oldest {args.limit}: narrow with --since / --reason, or raise --limit)")
        return
    from spoor.ingest.dead_letter_replay import replay
    from spoor.ingest.producer import KafkaUnavailable
    started = datetime.now(timezone.utc)
    try:
        report = replay(settings, rows, dry_run=args.dry_run)
    except KafkaUnavailable as err:
        sys.exit(f"Kafka did not acknowledge the replay ({err}); nothing was marked replayed. "
                 "Run it again: events already sent are counted once.")
    if not args.dry_run and report.replayed_ids:
        mark_replayed(engine, report.replayed_ids, started)
    verb = "would replay" if args.dry_run else "replayed"
    print(f"{verb} {report.replayed} dead letters: {report.accepted} accepted, "
          f"{report.invalid_again} still invalid (new dead letters), {report.skipped} skipped (not replayable)")
    for item in report.still_invalid[:20]:
        print(f"  still invalid: {item['id']}  {item['field']}: {item['reason']}")


def _since(value: str | None):
    from datetime import datetime, timedelta, timezone
    if not value:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[-1:] in units and value[:-1].isdigit():
        return datetime.now(timezone.utc) - timedelta(seconds=int(value[:-1]) * units[value[-1]])
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        sys.exit(f"--since: expected an ISO time or an age such as 30m, 12h, 7d; got {value!r}")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _print_dead_letters(rows: list[dict], as_json: bool) -> None:
    import orjson
    for row in rows:
        if as_json:
            print(orjson.dumps(row, default=str).decode())
            continue
        state = f"replayed {row['replayed_at']:%Y-%m-%d %H:%M}" if row["replayed_at"] else "pending"
        print(f"{row['received_at']:%Y-%m-%d %H:%M:%S}  {row['id']:<36} {row['processor']:<9} "
              f"{row['failure_type'] or '-':<16} {row['field'] or '-'}: {row['reason'][:80]}  [{state}]")
    if not as_json:
        print(f"{len(rows)} dead letters")


def _alerts(settings: Settings, args) -> None:
    from spoor.cli.alert_commands import run
    run(settings, args)


if __name__ == "__main__":
    main()
