"""``spoor``: one command per process and per operator task."""

import argparse
import logging
import sys

from spoor.settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="spoor", description="Spoor: e-commerce behaviour tracking.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("collector", help="run the HTTP collector (Segment HTTP Tracking API)")
    worker = commands.add_parser("worker", help="run the Faust stream worker (restarted after a fail-stop)")
    worker.add_argument("--no-supervise", action="store_true", help="run the worker in this process")
    commands.add_parser("migrate", help="apply database migrations")
    topics = commands.add_parser("topics", help="Kafka topics").add_subparsers(dest="action", required=True)
    topics.add_parser("create", help="create Spoor's topics if missing")
    keys = commands.add_parser("keys", help="write keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="create a write key and print it (shown once)")
    create.add_argument("--name", required=True)
    create.add_argument("--source", required=True, help="web, ios, android, backend...")
    create.add_argument("--key", help="use this value instead of a random one")
    keys.add_parser("list", help="list write keys (names and sources, never values)")
    revoke = keys.add_parser("revoke", help="revoke a write key")
    revoke.add_argument("name")
    demo = commands.add_parser("demo", help="send simulated shoppers through the collector and summarise")
    demo.add_argument("--users", type=int, default=300)
    demo.add_argument("--collector-url", default=None)
    demo.add_argument("--write-key", required=True)
    commands.add_parser("summary", help="print the summary of what is in PostgreSQL")
    _add_replay_parser(commands)

    args = parser.parse_args(argv)
    long_running = args.command in ("collector", "worker")
    logging.basicConfig(level=logging.INFO if long_running else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python logs every connection at INFO
    settings = Settings()
    handler = globals()["_" + args.command]
    handler(settings, args)


def _collector(settings: Settings, _args) -> None:
    import uvicorn

    from ingest.collector import create_app
    uvicorn.run(create_app(settings), host=settings.collector_host, port=settings.collector_port,
                log_level="warning", access_log=False)


def _worker(settings: Settings, args) -> None:
    from spoor.topics import missing_topics
    missing = missing_topics(settings)
    if missing:
        sys.exit(f"Kafka topics {missing} do not exist: run `spoor topics create` first")
    if not args.no_supervise:
        from spoor.supervise import supervise
        sys.exit(supervise([sys.executable, "-m", "spoor.cli", "worker", "--no-supervise"]))

    import faust

    from stream_processors.app import create_app
    faust.Worker(create_app(settings), loglevel="INFO").execute_from_commandline()


def _migrate(settings: Settings, _args) -> None:
    from storage.migrate import upgrade
    upgrade(settings.database_url)
    print("database schema is up to date")


def _topics(settings: Settings, _args) -> None:
    from spoor.topics import create_topics
    created = create_topics(settings)
    print(f"created topics: {', '.join(created)}" if created else "topics already exist")


def _keys(settings: Settings, args) -> None:
    from sqlalchemy import create_engine

    from storage import write_keys
    engine = create_engine(settings.database_url)
    if args.action == "create":
        print(write_keys.create_key(engine, args.name, args.source, args.key))
    elif args.action == "list":
        for key in write_keys.list_keys(engine):
            state = f"revoked {key['revoked_at']:%Y-%m-%d}" if key["revoked_at"] else "active"
            print(f"{key['name']:<24} {key['source']:<12} {state}")
    elif not write_keys.revoke_key(engine, args.name):
        sys.exit(f"no active write key named {args.name!r}")


def _demo(settings: Settings, args) -> None:
    from sqlalchemy import create_engine

    from spoor.demo import print_summary, run_demo
    url = args.collector_url or f"http://{settings.collector_host}:{settings.collector_port}"
    print_summary(run_demo(create_engine(settings.database_url), url, args.write_key, args.users))


def _summary(settings: Settings, _args) -> None:
    from sqlalchemy import create_engine

    from spoor.demo import print_summary
    from storage.queries import summary
    print_summary(summary(create_engine(settings.database_url)))


# ---- replay: a public data set file through a running collector -----------------------------------

def _add_replay_parser(commands) -> None:
    replay = commands.add_parser(
        "replay", help="send a UCI Online Retail or REES46 CSV file (plain or gzipped) through the collector")
    replay.add_argument("file", help="the CSV file; its format is known by its header")
    replay.add_argument("--collector-url", default=None, help="default: the local stack's collector")
    replay.add_argument("--write-key", default=None, help="default: the demo write key `make up` creates")


def _replay(settings: Settings, args) -> None:
    from pathlib import Path

    from spoor.collector_client import CollectorClient
    from spoor.replay import ReplayError
    from spoor.replay_sender import ReplayFailed, replay_file, summary_lines
    url = args.collector_url or f"http://{settings.collector_host}:{settings.collector_port}"
    client = CollectorClient(url, args.write_key or settings.demo_write_key)
    try:
        result = replay_file(Path(args.file), client)
    except ConnectionError as err:
        sys.exit(f"spoor replay: cannot reach the collector at {url}: {err}")
    except (OSError, ReplayError, ReplayFailed) as err:
        sys.exit(f"spoor replay: {err}")
    finally:
        client.close()
    print("\n".join(summary_lines(result, url)))
    if result.rejected:
        sys.exit(1)


if __name__ == "__main__":
    main()
