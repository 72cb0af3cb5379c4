"""`spoor config`: the settings as the processes read them, for the local stack's scripts
(deploy/stack.sh reads its ports, URLs and the demo key from `spoor config get` instead of copying
the defaults of spoor/settings.py)."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spoor.cli.main import main
from spoor.settings import Settings

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "deploy" / "stack.sh"
SPOOR = Path(sys.prefix) / "bin" / "spoor"  # the venv's command, which deploy/stack.sh runs


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in list(os.environ):
        if name.startswith("SPOOR_"):
            monkeypatch.delenv(name)


def config_lines(capsys, *argv: str) -> list[str]:
    main(["config", *argv])
    return capsys.readouterr().out.splitlines()


def parse(lines: list[str]) -> dict[str, str]:
    """The lines as a shell would read them: NAME=value, the value unquoted."""
    parsed = {}
    for line in lines:
        [word] = shlex.split(line)
        name, _, value = word.partition("=")
        parsed[name] = value
    return parsed


def test_every_setting_once_in_settings_order(capsys):
    names = [line.split("=", 1)[0] for line in config_lines(capsys)]
    assert names == [f"SPOOR_{name.upper()}" for name in Settings.model_fields]


def test_output_round_trips_through_the_environment(capsys, monkeypatch):
    monkeypatch.setenv("SPOOR_COLLECTOR_PUBLIC_URL", "https://collect.example/it's here; $(true)")
    monkeypatch.setenv("SPOOR_ALERTS_ENABLED", "false")
    settings = Settings()
    values = parse(config_lines(capsys))
    dumped = settings.model_dump()
    for name in ("kafka_bootstrap", "database_url", "collector_port", "worker_batch_within_s", "demo_write_key",
                 "collector_public_url", "admin_token"):
        assert values[f"SPOOR_{name.upper()}"] == str(dumped[name]), name
    assert values["SPOOR_ALERTS_ENABLED"] == "false"
    for name, value in values.items():  # read back, the same settings
        monkeypatch.setenv(name, value)
    assert Settings() == settings


def test_environment_overrides_appear(capsys, monkeypatch):
    monkeypatch.setenv("SPOOR_COLLECTOR_PORT", "18080")
    monkeypatch.setenv("SPOOR_DEMO_WRITE_KEY", "another key")
    monkeypatch.setenv("SPOOR_ADMIN_TOKEN", "s3cret")
    values = parse(config_lines(capsys))
    assert values["SPOOR_COLLECTOR_PORT"] == "18080"
    assert values["SPOOR_DEMO_WRITE_KEY"] == "another key"
    assert values["SPOOR_ADMIN_TOKEN"] == "s3cret"  # a secret set is printed: the stack needs it
    assert values["SPOOR_WORKER_WEB_PORT"] == "6066"


def test_unset_secrets_are_empty_not_invented(capsys):
    values = parse(config_lines(capsys))
    for name in ("SPOOR_ADMIN_TOKEN", "SPOOR_CAMPAIGN_WEBHOOK_SECRET", "SPOOR_ALERT_WEBHOOK_SECRET"):
        assert values[name] == ""


def test_get_prints_values_alone_in_order(capsys, monkeypatch):
    monkeypatch.setenv("SPOOR_ADMIN_API_PORT", "18090")
    lines = config_lines(capsys, "get", "admin_api_port", "demo_write_key", "SPOOR_COLLECTOR_PORT", "alerts_enabled",
                         "collector_public_url")
    assert lines == ["18090", "spoor-demo-write-key", "8080", "true", ""]


def test_get_of_an_unknown_name_exits_2_with_a_message(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["config", "get", "collector_port", "no_such_setting"])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "unknown setting 'no_such_setting'" in captured.err


def test_get_refuses_a_value_on_several_lines(capsys, monkeypatch):
    monkeypatch.setenv("SPOOR_COLLECTOR_PUBLIC_URL", "https://a\nhttps://b")
    with pytest.raises(SystemExit) as exit_:
        main(["config", "get", "collector_port", "collector_public_url"])
    assert exit_.value.code not in (0, None)
    assert capsys.readouterr().out == ""


# ---- deploy/stack.sh takes its values from `spoor config get` ----

def test_stack_script_copies_no_default():
    script = STACK.read_text(encoding="utf-8")
    copied = [value for value in ("8080", "6066", "6070", "6071", "8090", "spoor-demo-write-key", "5433", "9092")
              if value in script]
    assert not copied, f"deploy/stack.sh repeats defaults of spoor/settings.py: {copied}"


def test_stack_script_asks_for_settings_that_exist():
    script = STACK.read_text(encoding="utf-8")
    calls = re.findall(r'"\$spoor" config get ((?:[a-z_ ]|\\\n)+)', script)
    assert len(calls) == 1, "one `spoor config get` call"
    names = calls[0].replace("\\\n", " ").split()
    assert names and set(names) <= set(Settings.model_fields)


def test_stack_script_parses():
    subprocess.run(["bash", "-n", str(STACK)], check=True)


def run_infra(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, str]:
    """deploy/stack.sh infra in a copy of deploy/ whose postgres.sh and kafka.sh only say what they
    were given: which ports the stack would start the servers on, without starting any."""
    if not SPOOR.exists():
        pytest.skip(f"no {SPOOR}")
    deploy = tmp_path / "repo" / "deploy"
    deploy.mkdir(parents=True)
    shutil.copy(STACK, deploy / "stack.sh")
    calls = tmp_path / "calls"
    for name, variables in (("postgres.sh", "$SPOOR_PG_PORT $SPOOR_PG_USER $SPOOR_PG_PASSWORD $SPOOR_PG_DB"),
                            ("kafka.sh", "$SPOOR_KAFKA_PORT")):
        (deploy / name).write_text(f'#!/usr/bin/env bash\necho "{name} $1 {variables}" >>"{calls}"\n')
        (deploy / name).chmod(0o755)
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SPOOR_")}
    environment.update(VENV=sys.prefix, SPOOR_RUN_DIR=str(tmp_path / "run"), **env)
    done = subprocess.run([str(deploy / "stack.sh"), "infra"], env=environment, capture_output=True, text=True,
                          timeout=60)
    return done, calls.read_text() if calls.exists() else ""


def test_stack_infra_starts_the_servers_where_the_settings_say(tmp_path):
    done, calls = run_infra(tmp_path)
    assert done.returncode == 0, done.stderr
    assert calls.splitlines() == ["postgres.sh start 5433 spoor spoor spoor", "kafka.sh start 9092"]

    done, calls = run_infra(tmp_path / "overridden",
                            SPOOR_DATABASE_URL="postgresql+psycopg2://shop:p%40ss@localhost:5444/shopdb",
                            SPOOR_KAFKA_BOOTSTRAP="127.0.0.1:9300,127.0.0.1:9301", SPOOR_KAFKA_PORT="9300")
    assert done.returncode == 0, done.stderr
    assert calls.splitlines() == ["postgres.sh start 5444 shop p@ss shopdb", "kafka.sh start 9300"]


def test_stack_infra_refuses_a_server_port_the_processes_would_not_use(tmp_path):
    done, calls = run_infra(tmp_path, SPOOR_PG_PORT="5999")
    assert done.returncode == 2
    assert "SPOOR_PG_PORT disagrees with SPOOR_DATABASE_URL" in done.stderr
    assert calls == ""
