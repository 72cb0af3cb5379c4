"""``spoor replay FILE``: a data set file through a running collector, with progress and a summary.

The mapping is in ``spoor.replay`` (pure); this module reads the file, sends
batches, shows progress on stderr and summarises on stdout.
"""

import csv
import gzip
import io
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TextIO

import orjson

from spoor.cli import CliError
from spoor.cli.collector_client import CollectorClient
from spoor.cli.replay import Format, Row, Tally, detect_format, online_retail_messages, rees46_messages

BATCH_EVENTS = 500
BATCH_BYTES = 400 * 1024  # under the collector's 512 KiB body limit


class ReplayFailed(CliError, RuntimeError):
    """The collector refused a batch for a reason a retry cannot fix (or kept refusing it)."""


@dataclass
class ReplayResult:
    path: Path
    format: Format
    rows: int = 0
    tally: Tally = field(default_factory=Tally)
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)  # "field: reason" -> events the collector refused
    batches: int = 0
    seconds: float = 0.0
    past_retention: int = 0  # events sent that are older than the events' retention (deleted at its next run)
    retention_days: int | None = None

    @property
    def sent(self) -> int:
        return self.accepted + sum(self.rejected.values())


def replay_file(path: Path, client: CollectorClient, progress: TextIO = sys.stderr,
                retention_days: int | None = None) -> ReplayResult:
    """Send the file's events through the collector; with ``retention_days``, count those older than the
    events' retention, which the retention job would delete (docs/privacy.md#retention)."""
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        binary = gzip.GzipFile(fileobj=raw) if gzipped else raw
        text = io.TextIOWrapper(binary, encoding="utf-8", errors="replace", newline="")
        reader = csv.reader(text)
        header = next(reader, None)
        if header is None:
            raise ReplayFailed(f"{path} is empty")
        result = ReplayResult(path, detect_format(header), retention_days=retention_days)
        rows = _rows(reader, header, result)
        started = time.monotonic()
        if result.format == Format.ONLINE_RETAIL:
            messages = online_retail_messages(rows, result.tally)  # grouped by invoice: the whole file first
            total = len(messages)

            def done_fraction() -> float:
                return result.sent / max(1, total)
        else:
            messages = rees46_messages(rows, result.tally)  # streamed: progress is the share of the file read
            size = path.stat().st_size

            def done_fraction() -> float:
                return raw.tell() / max(1, size)
        bar = ProgressBar(progress, done_fraction)
        if retention_days is not None:
            messages = _counting_past_retention(messages, result, retention_days)
        for batch in _batches(messages):
            _send(client, batch, result)
            bar.show(result.sent)
        result.seconds = time.monotonic() - started
        bar.done(result.sent)
    return result


def _rows(reader, header: list[str], result: ReplayResult) -> Iterator[Row]:
    columns = [name.strip().lstrip("\ufeff") for name in header]
    for line, values in enumerate(reader, start=2):
        result.rows += 1
        if len(values) != len(columns):
            result.tally.skip(line, f"{len(values)} fields instead of {len(columns)}")
            continue
        yield line, dict(zip(columns, values))


def _counting_past_retention(messages, result: ReplayResult, days: int) -> Iterator[dict]:
    cutoff = datetime.now(timezone.utc) - timedelta(days=days)
    for message in messages:
        if datetime.fromisoformat(message["timestamp"]) < cutoff:
            result.past_retention += 1
        yield message


def _batches(messages) -> Iterator[list[bytes]]:
    batch, size = [], 0
    for message in messages:
        encoded = orjson.dumps(message)
        if batch and (len(batch) == BATCH_EVENTS or size + len(encoded) > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(encoded)
        size += len(encoded) + 1
    if batch:
        yield batch


def _send(client: CollectorClient, batch: list[bytes], result: ReplayResult) -> None:
    status, body = client.send_batch_json(b'{"batch":[' + b",".join(batch) + b"]}")
    result.batches += 1
    if status == 200:
        result.accepted += len(batch)
    elif status == 400 and "rejected" in body:
        # The collector dead-lettered these (with their payload) and accepted the rest.
        result.accepted += body["accepted"]
        for rejection in body["rejected"]:
            result.rejected[f"{rejection['field']}: {rejection['reason']}"] += 1
    else:
        raise ReplayFailed(f"the collector answered {status} {body.get('error', body)} "
                           f"after {result.accepted} events were accepted")


class ProgressBar:
    """A bar redrawn in place on a terminal; a line per 10 % elsewhere (logs, CI)."""

    WIDTH = 30

    def __init__(self, stream: TextIO, fraction: Callable[[], float]):
        self.stream = stream
        self.fraction = fraction
        self.started = time.monotonic()
        self.tty = stream.isatty()
        self.last_decile = -1

    def show(self, events: int, final: bool = False) -> None:
        fraction = min(1.0, self.fraction()) if not final else 1.0
        rate = events / max(1e-6, time.monotonic() - self.started)
        filled = int(fraction * self.WIDTH)
        line = (f"replay [{'#' * filled}{'.' * (self.WIDTH - filled)}] {fraction:4.0%}  "
                f"{events:,} events sent  {rate:,.0f}/s")
        if self.tty:
            print("\r" + line, end="\n" if final else "", file=self.stream, flush=True)
        elif int(fraction * 10) > self.last_decile or final:
            self.last_decile = int(fraction * 10)
            print(line, file=self.stream, flush=True)

    def done(self, events: int) -> None:
        self.show(events, final=True)


def summary_lines(result: ReplayResult, collector_url: str) -> list[str]:
    tally = result.tally
    mapped = sum(tally.events.values())
    lines = [f"replayed {result.path} ({result.format}, {result.rows:,} rows) to {collector_url}",
             f"sent {mapped:,} events in {result.batches:,} batches in {result.seconds:.1f}s: "
             f"{result.accepted:,} accepted, {result.sent - result.accepted:,} rejected"]
    lines += [f"  {name:<16} {count:>9,}" for name, count in sorted(tally.events.items())]
    if result.format == Format.ONLINE_RETAIL:
        lines.append(f"guest invoices (no CustomerID; anonymousId guest-<InvoiceNo>): {tally.guests:,}")
    if tally.truncated_products:
        lines.append(f"orders whose product list was cut to fit 32 KiB (amount kept exact): "
                     f"{tally.truncated_products:,}")
    lines.append(f"skipped rows: {sum(tally.skipped.values()):,}")
    for reason, count in tally.skipped.most_common():
        examples = ", ".join(str(n) for n in tally.skipped_lines[reason])
        lines.append(f"  {count:>9,}  {reason} (lines {examples}{', ...' if count > len(tally.skipped_lines[reason]) else ''})")
    if result.past_retention:
        lines.append(f"WARNING: {result.past_retention:,} events are older than the events' retention "
                     f"(SPOOR_RETENTION_EVENTS_DAYS={result.retention_days}): the retention job deletes them, "
                     "with their sessions, at its next run (the segments runner runs it hourly). To keep a "
                     "replayed data set, set SPOOR_RETENTION_EVENTS_DAYS and SPOOR_RETENTION_SESSIONS_DAYS "
                     "(at most 36500) for the stack before replaying (docs/privacy.md#retention).")
    if result.rejected:
        lines.append("rejected by the collector (in its dead-letter topic):")
        lines += [f"  {count:>9,}  {reason}" for reason, count in result.rejected.most_common()]
    return lines
