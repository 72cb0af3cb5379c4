"""``spoor retention run|status``: the retention job once, or what each store holds (docs/privacy.md#retention)."""

import json
import sys
from dataclasses import asdict
from datetime import datetime, timezone

from sqlalchemy import create_engine

from spoor.settings import Settings
from spoor.storage.retention import observe, run_retention, stores


def add_commands(commands) -> None:
    retention = commands.add_parser("retention", help="drop data past its retention (time partitions), "
                                                      "make partitions ahead, show what each store holds")
    actions = retention.add_subparsers(dest="action", required=True)
    actions.add_parser("run", help="run the retention job once (the segments runner runs it every "
                                   "SPOOR_RETENTION_INTERVAL_S); exit 1 if a store could not be finished")
    actions.add_parser("status", help="rows, bytes, partitions and oldest data of each store, as JSON")


def run(settings: Settings, args) -> None:
    engine = create_engine(settings.database_url)
    try:
        if args.action == "run":
            reports = run_retention(engine, settings)
            if reports is None:
                sys.exit("spoor retention run: another run is in progress; nothing done")
            print(json.dumps([asdict(report) for report in reports], indent=2))
            if any(report.error for report in reports):
                sys.exit(1)
        else:
            now = datetime.now(timezone.utc)
            print(json.dumps([observe(engine, store, now) for store in stores(settings)], indent=2))
    finally:
        engine.dispose()
