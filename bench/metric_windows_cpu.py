"""Cost of the metric-windows agent's pure part per event (decode + fold into 1/5/60-minute windows of
3 dimensions + closing), against decoding alone. No broker, no database.

    .venv/bin/python bench/metric_windows_cpu.py [--events 100000]
"""

import argparse
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spoor.events import Event, decode_record, encode_events  # noqa: E402
from spoor.stream_processors.metric_windows import MetricWindows  # noqa: E402

KINDS = ["page_view", "product_view", "click", "cart_add", "purchase"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    start = datetime(2024, 5, 1, tzinfo=timezone.utc)
    events = [Event(event_id=f"e{i}", kind=KINDS[i % 5], name="x", user_key=f"u{i % 5000}",
                    event_time=start + timedelta(milliseconds=10 * i), received_at=start, source="web",
                    category=f"c{i % 8}", revenue=Decimal("19.99") if i % 5 == 4 else None)
              for i in range(args.events)]
    records = [encode_events(events[i:i + 50]) for i in range(0, len(events), 50)]  # collector-like records
    fold, decode = [], []
    for _ in range(args.runs):
        windows = MetricWindows()
        began = time.perf_counter()
        for record in records:
            for event in decode_record(record):
                windows.add_event(0, event)
            windows.close_due()
        fold.append((time.perf_counter() - began) / len(events) * 1e6)
        began = time.perf_counter()
        for record in records:
            decode_record(record)
        decode.append((time.perf_counter() - began) / len(events) * 1e6)
    print(f"{args.events} events, 8 categories, 5000 users, {args.runs} runs")
    print(f"decode_and_fold_us_per_event: {statistics.median(fold):.1f}")
    print(f"decode_only_us_per_event: {statistics.median(decode):.1f}")
    print(f"fold_share_of_one_core_at_10k_events_per_s: {statistics.median(fold) * 1e4 / 1e6:.2f}")


if __name__ == "__main__":
    main()
