"""bench/ab.py's figures and medians, and bench/row_digest.py's comparison of two dumps."""

from pathlib import Path

from bench.ab import figures, summary
from bench.row_digest import compare_dumps


def test_figures_are_the_name_value_lines():
    output = "collector:  1,429 events/s\n\ncpu_us_per_event: 374.7\nend_to_end_events_per_s: 904\nfoo: bar\n"
    assert figures(output) == {"cpu_us_per_event": 374.7, "end_to_end_events_per_s": 904.0}


def test_summary_gives_medians_and_old_over_new():
    runs = [{"label": "old", "cpu_us_per_event": 600.0, "end_to_end_events_per_s": 1000.0},
            {"label": "new", "cpu_us_per_event": 200.0, "end_to_end_events_per_s": 3000.0},
            {"label": "old", "cpu_us_per_event": 700.0, "end_to_end_events_per_s": 900.0},
            {"label": "new", "cpu_us_per_event": 220.0, "end_to_end_events_per_s": 2900.0}]
    lines = dict(summary(runs, "a", "b"))
    assert lines["old_cpu_us_per_event"] == 650.0 and lines["new_cpu_us_per_event"] == 210.0
    assert lines["cpu_old_vs_new"] == round(650 / 210, 3)
    assert lines["end_to_end_events_per_s_new_vs_old"] == round(2950 / 950, 3)


def dump(directory: Path, tables: dict[str, tuple[list[str], list[str]]]) -> Path:
    directory.mkdir()
    for table, (columns, rows) in tables.items():
        (directory / f"{table}.jsonl").write_text("\n".join([str(columns).replace("'", '"'), *rows]) + "\n")
    return directory


def test_dumps_compare_over_the_common_columns(tmp_path: Path):
    old = dump(tmp_path / "old", {"events": (["id", "n"], ['["a", 1]', '["b", 2]']),
                                  "sessions": (["id", "n"], ['["a", 1]'])})
    new = dump(tmp_path / "new", {"events": (["id", "n", "extra"], ['["b", 2, 0]', '["a", 1, 0]']),
                                  "sessions": (["id", "n"], ['["a", 5]']),
                                  "journeys": (["id"], ['["a"]'])})
    lines = compare_dumps(old, new, ("old", "new"))
    assert lines == ["tables only in new: journeys",
                     "events: same rows over the common columns (2); extra only in new",
                     "sessions: rows differ (1 vs 1 rows; 2 distinct rows in one only); columns whose values "
                     "differ: n"]
    assert compare_dumps(old, old) == []


def test_summary_gives_both_cpu_windows():
    runs = [{"label": "old", "cpu_us_per_event": 500.0, "cpu_us_per_event_until_stored": 350.0,
             "cpu_us_per_event_segments": 40.0, "cpu_us_per_event_until_stored_segments": 10.0},
            {"label": "new", "cpu_us_per_event": 400.0, "cpu_us_per_event_until_stored": 200.0,
             "cpu_us_per_event_segments": 50.0, "cpu_us_per_event_until_stored_segments": 10.0}]
    lines = dict(summary(runs, "a", "b"))
    assert lines["cpu_old_vs_new"] == 1.25 and lines["cpu_old_vs_new_until_stored"] == 1.75
    assert lines["cpu_old_vs_new_segments"] == 0.8 and lines["cpu_old_vs_new_until_stored_segments"] == 1.0
