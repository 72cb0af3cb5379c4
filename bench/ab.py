"""Two commits' pipelines, alternated on this machine: `bench/ab.sh OLD NEW [N] [ROUNDS]` (see ab.sh).

Each run: a worktree of the commit (cached under ``AB_CACHE``/<sha>, with its own venv installed from that
commit's pyproject), a fresh stack started by that tree's `deploy/stack.sh up` in a run dir of its own
(its own PostgreSQL, Kafka and data directories, on ports from ``AB_PORT_BASE``), so it runs beside the
shared stack; then this checkout's drivers on it: `bench/row_digest.py` (the rows a fixed input makes)
and `bench/pipeline.py --events N` (CPU per event, throughput, freshness), over HTTP and SQL only, so a
commit without the CPU lines is measured the same way; then `stack.sh down` and its data deleted. Every
stack is stopped at the end, on failure and on SIGINT/SIGTERM too.

The caller's own SPOOR_* variables are not passed on (both commits run with their defaults); `--env`,
`--old-env` and `--new-env SPOOR_X=VALUE` set them, so OLD and NEW may also be one commit with two settings.
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.proc_cpu import KINDS  # noqa: E402
from bench.row_digest import compare_dumps  # noqa: E402

# cpu_us_per_event counts until the runners caught up with each phase; _until_stored, until its last event was
# stored (the figure before bench/catch_up.py, which a commit's runner doing more after the flood flatters).
FIGURES = ["cpu_us_per_event", *(f"cpu_us_per_event_{kind}" for kind in KINDS), "cpu_us_per_event_until_stored",
           *(f"cpu_us_per_event_until_stored_{kind}" for kind in KINDS), "runners_caught_up_s",
           "paced_runners_caught_up_s", "runners_caught_up_timed_out", "end_to_end_events_per_s",
           "collector_events_per_s", "freshness_p50_s", "freshness_p99_s", "end_to_end_vs_kafka_consumer",
           "collector_vs_kafka_producer"]
# The columns of the table of runs (the per-kind figures until stored are in the medians only).
SHOWN = [name for name in FIGURES if not name.startswith("cpu_us_per_event_until_stored_")]
# Offsets from AB_PORT_BASE; the shared stack's defaults are 5433, 9092-9093, 8080, 6066-, 6070-6071, 8090.
PORTS = {"pg": 5433, "kafka": 9092, "kafka_controller": 9093, "collector": 8080, "worker": 6066, "segments": 6070,
         "campaigns": 6071, "admin_api": 8090}


def log(message: str) -> None:
    print(f"ab: {message}", flush=True)


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.strip()


def prepare_tree(sha: str, cache: Path) -> Path:
    """A worktree of ``sha`` with a venv of its own (made once, then reused)."""
    tree = cache / sha
    if not (tree / ".git").exists():
        log(f"worktree of {sha[:10]} in {tree}")
        git("worktree", "prune")
        git("worktree", "add", "--detach", str(tree), sha)
    marker = tree / ".venv" / ".ab-installed"
    if not marker.exists():
        log(f"installing {sha[:10]}'s Python packages into {tree}/.venv (pip's cache is reused)")
        subprocess.run([sys.executable, "-m", "venv", str(tree / ".venv")], check=True)
        subprocess.run([str(tree / ".venv/bin/pip"), "install", "-q", "-e", str(tree)], check=True)
        marker.touch()
    return tree


def stack_env(run_dir: Path, base: int, tree: Path, workers: int) -> dict[str, str]:
    """The settings of a stack of its own; both the old and the new `stack.sh` read these."""
    port = {name: base + default % 1000 + (1000 if name.startswith("kafka") else 0) for name, default in PORTS.items()}
    database_url = f"postgresql+psycopg2://spoor:spoor@127.0.0.1:{port['pg']}/spoor"
    env = {key: value for key, value in os.environ.items() if not key.startswith("SPOOR_")}
    env.update({
        "SPOOR_RUN_DIR": str(run_dir), "VENV": str(tree / ".venv"), "SPOOR_WORKERS": str(workers),
        "SPOOR_DATABASE_URL": database_url, "SPOOR_PG_PORT": str(port["pg"]),
        "SPOOR_KAFKA_BOOTSTRAP": f"127.0.0.1:{port['kafka']}", "SPOOR_KAFKA_PORT": str(port["kafka"]),
        "SPOOR_KAFKA_CONTROLLER_PORT": str(port["kafka_controller"]),
        "SPOOR_COLLECTOR_PORT": str(port["collector"]), "SPOOR_WORKER_WEB_PORT": str(port["worker"]),
        "SPOOR_SEGMENTS_WEB_PORT": str(port["segments"]), "SPOOR_CAMPAIGNS_WEB_PORT": str(port["campaigns"]),
        "SPOOR_ADMIN_API_PORT": str(port["admin_api"]), "SPOOR_WORKER_DATA_DIR": str(run_dir / "faust"),
    })
    return env


def ports_in_use(env: dict[str, str], workers: int) -> list[int]:
    wanted = [int(env[k]) for k in ("SPOOR_PG_PORT", "SPOOR_KAFKA_PORT", "SPOOR_KAFKA_CONTROLLER_PORT",
                                    "SPOOR_COLLECTOR_PORT", "SPOOR_SEGMENTS_WEB_PORT", "SPOOR_CAMPAIGNS_WEB_PORT",
                                    "SPOOR_ADMIN_API_PORT")]
    wanted += [int(env["SPOOR_WORKER_WEB_PORT"]) + i for i in range(workers)]
    listening = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True).stdout
    used = {int(m) for m in re.findall(r":(\d+)\s", listening)}
    return [p for p in wanted if p in used]


def figures(output: str) -> dict[str, float]:
    """The `name: value` lines a driver ends with."""
    return {m[1]: float(m[2]) for m in re.finditer(r"^([a-z0-9_]+): (-?[\d.]+(?:e-?\d+)?)$", output, re.M)}


def run_logged(cmd: list[str], env: dict[str, str], log_path: Path, echo: bool, cwd: Path = REPO) -> str:
    """Runs ``cmd`` in ``cwd``, its output into ``log_path`` (and onto stdout with ``echo``); fails loudly."""
    with open(log_path, "w") as out:
        process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   cwd=cwd)
        lines = []
        try:
            for line in process.stdout:
                lines.append(line)
                out.write(line)
                out.flush()
                if echo:
                    print(f"    {line}", end="", flush=True)
        except BaseException:  # SIGTERM, Ctrl-C: the driver stops with us, before its stack does
            process.terminate()
            process.wait(60)
            raise
        if process.wait() != 0:
            tail = "".join(lines[-30:])
            raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({process.returncode}); see {log_path}:\n{tail}")
    return "".join(lines)


class Stacks:
    """The stack being run; `stop` is safe to call more than once. ``state`` names it for ab.sh's trap."""

    def __init__(self, state: Path):
        self.state = state
        self.current: tuple[Path, dict[str, str]] | None = None

    def start(self, tree: Path, env: dict[str, str], run_dir: Path) -> None:
        self.current = (tree, env)
        self.state.write_text(json.dumps({"tree": str(tree), "env": {k: v for k, v in env.items()
                                                                      if k.startswith("SPOOR_") or k == "VENV"}}))
        # In the tree: `python -m spoor.cli` (the worker's child) imports from its working directory first.
        run_logged([str(tree / "deploy/stack.sh"), "up"], env, run_dir / "stack-up.log", echo=False, cwd=tree)

    def stop(self) -> None:
        if self.current is None:
            return
        tree, env = self.current
        run_dir = Path(env["SPOOR_RUN_DIR"])
        subprocess.run([str(tree / "deploy/stack.sh"), "down"], env=env, cwd=tree, stdout=open(run_dir / "stack-down.log", "w"),
                       stderr=subprocess.STDOUT)
        for data in ("pgdata", "kafka", "faust", *(p.name for p in run_dir.glob("faust-*"))):
            shutil.rmtree(run_dir / data, ignore_errors=True)  # the data: gigabytes after a large run
        self.current = None
        self.state.unlink(missing_ok=True)


def one_run(stacks: Stacks, label: str, sha: str, tree: Path, run_dir: Path, args) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    env = stack_env(run_dir, args.port_base, tree, args.workers)
    env.update(dict(pair.split("=", 1) for pair in [*args.env, *(args.old_env if label == "old" else args.new_env)]))
    busy = ports_in_use(env, args.workers)
    if busy:
        raise RuntimeError(f"ports {busy} are in use: another A/B run? (AB_PORT_BASE moves them)")
    python = str(REPO / ".venv/bin/python")
    result: dict = {"label": label, "sha": sha, "run_dir": str(run_dir)}
    try:
        started = time.monotonic()
        stacks.start(tree, env, run_dir)
        log(f"{label} {sha[:10]}: stack up in {time.monotonic() - started:.0f} s ({run_dir})")
        if args.digest_events:
            output = run_logged([python, str(REPO / "bench/row_digest.py"), "--events", str(args.digest_events),
                                 "--dump", str(run_dir / "digest")], env, run_dir / "row_digest.log", echo=False)
            result["digest"] = re.search(r"^rows_digest: (\S+)", output, re.M)[1]
            result["digest_dump"] = str(run_dir / "digest")
            log(f"{label} {sha[:10]}: rows digest {result['digest']}")
        output = run_logged([python, str(REPO / "bench/pipeline.py"), "--events", str(args.events),
                             "--paced-seconds", str(args.paced_seconds), "--workers", str(args.workers),
                             "--run-dir", str(run_dir)], env, run_dir / "pipeline.log", echo=args.verbose)
        result.update(figures(output))
    finally:
        stacks.stop()
    return result


SHORT = {"cpu_us_per_event": "cpu_us", **{f"cpu_us_per_event_{kind}": kind[:8] for kind in KINDS},
         "cpu_us_per_event_until_stored": "stored_us", "runners_caught_up_s": "catchup_s",
         "paced_runners_caught_up_s": "paced_cu_s", "runners_caught_up_timed_out": "timed_out",
         "end_to_end_events_per_s": "e2e_ev/s", "collector_events_per_s": "coll_ev/s", "freshness_p50_s": "p50_s",
         "freshness_p99_s": "p99_s", "end_to_end_vs_kafka_consumer": "e2e/kcons",
         "collector_vs_kafka_producer": "coll/kprod"}


PRECISE = {"freshness_p50_s", "freshness_p99_s", "end_to_end_vs_kafka_consumer", "collector_vs_kafka_producer"}


def show(runs: list[dict]) -> None:
    """One line per run; CPU in microseconds per event, by kind after the sum."""
    print()
    print("run commit       " + " ".join(f"{SHORT[name]:>10}" for name in SHOWN))
    for number, run in enumerate(runs, 1):
        print(f"{number:3} {run['label']} {run['sha'][:8]} "
              + " ".join(f"{run.get(name, float('nan')):10.{3 if name in PRECISE else 0}f}"
                         for name in SHOWN))


def summary(runs: list[dict], old: str, new: str) -> list[tuple[str, object]]:
    """Medians per commit, then old/new for CPU and new/old for the rates."""
    lines: list[tuple[str, object]] = []
    medians = {}
    for label in ("old", "new"):
        mine = [r for r in runs if r["label"] == label]
        medians[label] = {name: statistics.median(r[name] for r in mine) for name in FIGURES
                          if all(name in r for r in mine) and mine}
        lines += [(f"{label}_{name}", round(value, 3)) for name, value in medians[label].items()]
    o, n = medians["old"], medians["new"]
    for figure, ratio in (("cpu_us_per_event", "cpu_old_vs_new"),
                          ("cpu_us_per_event_until_stored", "cpu_old_vs_new_until_stored")):
        if o.get(figure) and n.get(figure):
            lines.append((ratio, round(o[figure] / n[figure], 3)))
            for kind in KINDS:
                name = f"{figure}_{kind}"
                if o.get(name) and n.get(name):
                    lines.append((f"{ratio}_{kind}", round(o[name] / n[name], 3)))
    for name in ("end_to_end_events_per_s", "collector_events_per_s", "end_to_end_vs_kafka_consumer",
                 "collector_vs_kafka_producer", "freshness_p99_s"):
        if o.get(name) and n.get(name):
            lines.append((f"{name}_new_vs_old", round(n[name] / o[name], 3)))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("events", nargs="?", type=int, default=200_000)
    parser.add_argument("rounds", nargs="?", type=int, default=2)
    parser.add_argument("--paced-seconds", type=float, default=float(os.environ.get("AB_PACED_SECONDS", 30)))
    parser.add_argument("--workers", type=int, default=int(os.environ.get("SPOOR_WORKERS", 2)))
    parser.add_argument("--digest-events", type=int, default=int(os.environ.get("AB_DIGEST_EVENTS", 2000)),
                        help="events of bench/row_digest.py's fixed input on each fresh stack (0: no digest)")
    parser.add_argument("--port-base", type=int, default=int(os.environ.get("AB_PORT_BASE", 20000)))
    parser.add_argument("--run-root", type=Path, default=Path(os.environ.get("AB_RUN_DIR", "/var/tmp/spoor-ab")))
    parser.add_argument("--cache", type=Path,
                        default=Path(os.environ.get("AB_CACHE", Path.home() / ".cache/spoor-ab")))
    parser.add_argument("--verbose", action="store_true", help="echo the drivers' output")
    for flag, whose in (("--env", "both stacks"), ("--old-env", "OLD's stacks"), ("--new-env", "NEW's stacks")):
        parser.add_argument(flag, action="append", default=[], metavar="SPOOR_X=VALUE",
                            help=f"a setting for {whose} (repeatable)")
    args = parser.parse_args()
    shas = {"old": git("rev-parse", "--verify", f"{args.old}^{{commit}}"),
            "new": git("rev-parse", "--verify", f"{args.new}^{{commit}}")}
    args.run_root.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    trees = {label: prepare_tree(sha, args.cache) for label, sha in shas.items()}

    def terminate(signum, _frame):
        raise SystemExit(128 + signum)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, terminate)

    stacks = Stacks(args.run_root / "current.json")
    runs: list[dict] = []
    log(f"old {shas['old'][:10]}, new {shas['new'][:10]}: {args.rounds} round(s) of old then new, "
        f"{args.events} events each (+{args.paced_seconds:.0f} s paced)")
    try:
        for round_ in range(1, args.rounds + 1):
            for label in ("old", "new"):
                run_dir = args.run_root / f"{round_}-{label}"
                result = one_run(stacks, label, shas[label], trees[label], run_dir, args)
                runs.append(result)
                log(f"{label} {shas[label][:10]} round {round_}: " + ", ".join(
                    f"{name} {result[name]:g}" for name in SHOWN if name in result))
    finally:
        stacks.stop()
    show(runs)
    print()
    for name, value in summary(runs, shas["old"], shas["new"]):
        print(f"{name}: {value}")
    digested = [r for r in runs if "digest" in r]
    if digested:
        print()
        for run in digested:
            print(f"rows_digest {run['label']} {run['sha'][:10]} ({Path(run['run_dir']).name}): {run['digest']}")
        first_old = next((r for r in digested if r["label"] == "old"), digested[0])
        differences = {}
        for run in digested:
            if run["digest"] != first_old["digest"]:
                differences[Path(run["run_dir"]).name] = compare_dumps(
                    Path(first_old["digest_dump"]), Path(run["digest_dump"]),
                    (Path(first_old["run_dir"]).name, Path(run["run_dir"]).name))
        print(f"rows_digest_match: {'no' if any(differences.values()) else 'yes'}")
        for name, lines in differences.items():
            print(f"differences, {Path(first_old['run_dir']).name} -> {name}:")
            for line in lines or ["same rows over the same columns (the digests differ: taken by another "
                                  "version of row_digest.py?)"]:
                print(f"  {line}")


if __name__ == "__main__":
    main()
