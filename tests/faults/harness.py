"""The fault suite's machinery: its own Kafka and PostgreSQL, `spoor worker` as an orchestrator runs
it, a client that retries like the SDKs, waiting on progress, and the one-line summaries.

``SPOOR_FAULTS=short`` (the default, what `make test` runs) or ``full`` (`make faults`) picks the
form of every scenario; each test is parametrised over both and the other form is deselected.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

from spoor.settings import Settings, environment
from tests.support.local_stack import wait_until

REPO = Path(__file__).resolve().parents[2]
FORM = os.environ.get("SPOOR_FAULTS", "short")
FORMS = [pytest.param("short", id="short"), pytest.param("full", id="full", marks=pytest.mark.faults_full)]

RUN_DIR = Path(os.environ.get("SPOOR_FAULTS_RUN_DIR", "/var/tmp/spoor-faults"))
KAFKA_PORT = int(os.environ.get("SPOOR_FAULTS_KAFKA_PORT", "9192"))
KAFKA_CONTROLLER_PORT = int(os.environ.get("SPOOR_FAULTS_KAFKA_CONTROLLER_PORT", "9193"))
PG_PORT = int(os.environ.get("SPOOR_FAULTS_PG_PORT", "5533"))

SUMMARIES: list[str] = []  # printed at the end of the run (conftest.py) and appended to RUN_DIR/summary.log
CANARY_DEADLINE_S = 20.0  # "persisted within seconds" after the fault


class Infra:
    """The suite's private single-node Kafka and PostgreSQL (deploy/kafka.sh, deploy/postgres.sh)."""

    def __init__(self):
        self.env = {**os.environ, "SPOOR_RUN_DIR": str(RUN_DIR), "SPOOR_KAFKA_PORT": str(KAFKA_PORT),
                    "SPOOR_KAFKA_CONTROLLER_PORT": str(KAFKA_CONTROLLER_PORT), "SPOOR_PG_PORT": str(PG_PORT),
                    "SPOOR_PG_SHARED_BUFFERS": "128MB", "SPOOR_PG_MAX_WAL_SIZE": "1GB",
                    "SPOOR_KAFKA_HEAP": "512m"}
        self.bootstrap = f"127.0.0.1:{KAFKA_PORT}"
        self.database_url = f"postgresql+psycopg2://spoor:spoor@127.0.0.1:{PG_PORT}/spoor"

    def _run(self, script: str, action: str) -> float:
        started = time.monotonic()
        done = subprocess.run([str(REPO / "deploy" / script), action], env=self.env, capture_output=True,
                              text=True, timeout=240)
        if done.returncode:
            raise RuntimeError(f"deploy/{script} {action} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return time.monotonic() - started

    def kafka(self, action: str) -> float:
        return self._run("kafka.sh", action)

    def postgres(self, action: str) -> float:
        return self._run("postgres.sh", action)

    def kill_kafka(self) -> None:
        """SIGKILL the suite's own broker (its pid file), as a crash would."""
        pid = int((RUN_DIR / "kafka" / "kafka.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 30, "the broker to die")

    def start(self) -> None:
        # Whatever an interrupted run left behind goes first: the state is the suite's own.
        self.kafka("stop")
        self.postgres("stop")
        for name in ("kafka", "pgdata", "pg"):
            subprocess.run(["rm", "-rf", str(RUN_DIR / name)], check=True)
        errors: list[BaseException] = []

        def start(action) -> None:
            try:
                action("start")
            except BaseException as err:  # noqa: BLE001 - reported below
                errors.append(err)

        threads = [threading.Thread(target=start, args=(a,)) for a in (self.kafka, self.postgres)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            self.stop()
            raise errors[0]

    def stop(self) -> None:
        for action in (self.kafka, self.postgres):
            try:
                action("stop")
            except Exception as err:  # noqa: BLE001 - stop what can be stopped
                print(f"faults: {err}", file=sys.stderr)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def wait_with_progress(done, progress, what: str, stall_s: float, limit_s: float, diagnose=None,
                       interval: float = 0.5) -> float:
    """Wait until ``done()``; fail when ``progress()`` (any comparable) has not changed for ``stall_s``
    or after ``limit_s`` in all. Returns the seconds waited."""
    started = last_change = time.monotonic()
    last = progress()
    while not done():
        now = time.monotonic()
        current = progress()
        if current != last:
            last, last_change = current, now
        if now - last_change > stall_s or now - started > limit_s:
            detail = f"\n{diagnose()}" if diagnose else ""
            raise AssertionError(f"{what}: no progress for {now - last_change:.0f}s "
                                 f"({now - started:.0f}s in all), at {current}{detail}")
        time.sleep(interval)
    return time.monotonic() - started


def spoor_env(settings: Settings, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOOR_FAULT_")}
    env.update(environment(settings))
    env.update(extra or {})
    return env


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


class Worker:
    """`spoor worker` (a supervisor and its Faust child) started, watched and restarted by the test,
    as an orchestrator would. One log for all its lives."""

    def __init__(self, settings: Settings, log_dir: Path, name: str = "worker"):
        self.settings = settings
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen | None = None
        self.starts = 0            # by the test (an orchestrator's restarts)
        self.exits: list[int] = []  # exit codes of `spoor worker` that the test saw
        self.child_pids: set[int] = set()
        self._recorded: subprocess.Popen | None = None

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.worker_web_port}/healthz"

    def start(self, crash_after: int | None = None, wait_healthy: bool = True, timeout: float = 120) -> "Worker":
        extra = {}
        if crash_after:
            extra = {"SPOOR_FAULT_CRASH_POINT": "after_persist", "SPOOR_FAULT_CRASH_AFTER": str(crash_after)}
        with open(self.log_path, "ab") as log:
            log.write(f"=== faults: start {self.starts + 1} {extra or ''} at {time.strftime('%H:%M:%S')}\n".encode())
            self.process = subprocess.Popen([sys.executable, "-m", "spoor.cli", "worker"], cwd=REPO,
                                            env=spoor_env(self.settings, extra), stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1
        if wait_healthy:
            wait_until(lambda: self.healthy() or not self.alive(), timeout, f"the worker to be healthy ({self.log_path})")
            if not self.alive():
                raise AssertionError(f"`spoor worker` exited with {self.process.returncode}:\n{self.log_tail()}")
        self.note_child()
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.health_url, timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def alive(self) -> bool:
        if self.process is None:
            return False
        code = self.process.poll()
        if code is not None and self._recorded is not self.process:
            self.exits.append(code)
            self._recorded = self.process
        return code is None

    def note_child(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None
        children = _children(self.process.pid)
        self.child_pids.update(children)
        return children[0] if children else None

    def wait_exit(self, timeout: float) -> int | None:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self.alive()
        return code

    def ensure_running(self) -> int:
        """Start `spoor worker` again if it exited, as an orchestrator would; returns the number of starts."""
        if self.process is not None and not self.alive():
            self.start(wait_healthy=False)
        return self.starts

    def fail_stops(self) -> int:
        """Restarts by the supervisor: the child exited 70 (stream_processors/blocking.py fail_stop)."""
        return self.log().count("worker fail-stopped")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def critical_lines(self, limit: int = 12) -> list[str]:
        """The log's CRITICAL/ERROR lines and exception lines, for a finding's description."""
        keep = [line for line in self.log().splitlines()
                if re.search(r"CRITICAL|ERROR|Error:|Exception|fail-stop|exit", line)]
        return keep[-limit:]

    def kill(self) -> None:
        """SIGKILL the supervisor; its child dies with it (PR_SET_PDEATHSIG)."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.alive()

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(45)
            except subprocess.TimeoutExpired:
                self.kill()
            self.alive()


class Client:
    """The collector's batch endpoint, retried on 429/503 and connection errors until 200 or 400,
    as the SDKs do (Retry-After honoured, capped)."""

    def __init__(self, url: str, write_key: str, retry_cap_s: float = 2.0, give_up_s: float = 240):
        self.http = httpx.Client(base_url=url, auth=(write_key, ""), timeout=30)
        self.retry_cap_s = retry_cap_s
        self.give_up_s = give_up_s
        self.statuses: Counter = Counter()  # every answer, retries included
        self.retries = 0
        self.answers: list[tuple[float, object]] = []  # (monotonic time, status) of every answer
        self.lock = threading.Lock()

    def post_batch(self, messages: list, give_up_s: float | None = None, **body) -> httpx.Response:
        payload = orjson.dumps({"batch": messages, **body})
        give_up_s = give_up_s or self.give_up_s
        deadline = time.monotonic() + give_up_s
        attempt = 0
        while True:
            try:
                response = self.http.post("/v1/batch", content=payload, headers={"Content-Type": "application/json"})
                status = response.status_code
            except httpx.TransportError as err:
                response, status = None, type(err).__name__
            with self.lock:
                self.statuses[status] += 1
                self.answers.append((time.monotonic(), status))
            if status not in (429, 503) and response is not None:
                return response
            if time.monotonic() > deadline:
                raise AssertionError(f"the collector did not take a batch within {give_up_s:.0f}s "
                                     f"(last answer {status})")
            retry_after = response.headers.get("Retry-After", "") if response is not None else ""
            wait = float(retry_after) if retry_after.isdigit() else 0.2 * 2 ** min(attempt, 4)
            with self.lock:
                self.retries += 1
            attempt += 1
            time.sleep(min(self.retry_cap_s, wait))

    def send(self, messages: list, give_up_s: float | None = None, **body) -> None:
        """A batch of valid messages: it must end in 200."""
        response = self.post_batch(messages, give_up_s, **body)
        assert response.status_code == 200, f"{response.status_code}: {response.text[:500]}"

    def first_ok_after(self, moment: float) -> float | None:
        """Seconds from ``moment`` to the first 200 after it."""
        return next((t - moment for t, status in list(self.answers) if t >= moment and status == 200), None)

    def five_xx(self) -> dict:
        return {s: n for s, n in self.statuses.items() if isinstance(s, int) and s >= 500 and s != 503}

    def close(self) -> None:
        self.http.close()


class Sender(threading.Thread):
    """Sends a workload's batches in order in the background (one thread: each user's events keep
    their order) until it runs out or ``stop()``; every ``retry_every``-th batch is sent twice, as
    a client retry. ``sent`` holds the messages the collector answered 200 for."""

    def __init__(self, client: Client, batches: list[list[dict]], pause_s: float = 0.0, retry_every: int = 7):
        super().__init__(daemon=True)
        self.client, self.batches, self.pause_s, self.retry_every = client, batches, pause_s, retry_every
        self.sent: list[dict] = []
        self.batches_sent = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            for i, batch in enumerate(self.batches):
                if self._halt.is_set():
                    return
                self.client.send(batch)
                self.sent.extend(batch)
                if self.retry_every and i % self.retry_every == 0:
                    self.client.send(batch)
                self.batches_sent += 1
                if self.pause_s:
                    self._halt.wait(self.pause_s)
        except BaseException as err:  # noqa: BLE001 - re-raised by finish()
            self.error = err

    def stop(self) -> None:
        self._halt.set()

    def finish(self, timeout: float = 300) -> list[dict]:
        self.stop()
        self.join(timeout)
        assert not self.is_alive(), "the sender did not finish"
        if self.error:
            raise self.error
        return self.sent


@dataclass
class Summary:
    scenario: str
    form: str
    started: float = field(default_factory=time.monotonic)
    facts: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def add(self, **facts) -> None:
        self.facts.update(facts)

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def line(self) -> str:
        facts = "; ".join(f"{k.replace('_', ' ')} {_fmt(v)}" for k, v in self.facts.items())
        verdict = "ok" if not self.problems else f"FAILED ({len(self.problems)} problems)"
        return f"[{self.form}] {self.scenario}: {facts}; {time.monotonic() - self.started:.0f} s; {verdict}"

    def finish(self) -> None:
        """Print and keep the summary line, then fail with every problem found."""
        line = self.line()
        print(line)
        SUMMARIES.append(line)
        try:
            with open(RUN_DIR / "summary.log", "a") as log:
                log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
                for problem in self.problems:
                    log.write(f"    problem: {problem}\n")
        except OSError:
            pass
        assert not self.problems, "\n".join([line, *self.problems])


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
