"""The collector's YAML config: validated like the agent's, documented key by key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.collector.config import CollectorFileConfig, load_collector_config
from agent.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "collector.example.yaml"


def _model_keys(model: type, prefix: str = "") -> set[str]:
    out = set()
    for name, field in model.model_fields.items():
        out.add(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and hasattr(ann, "model_fields"):
            out |= _model_keys(ann, f"{prefix}{name}.")
    return out


def _yaml_keys(data: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for k, v in data.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= _yaml_keys(v, f"{prefix}{k}.")
    return out


def test_example_documents_every_key_with_its_default() -> None:
    config = load_collector_config(EXAMPLE)
    assert config == CollectorFileConfig()  # every key shown with its default
    assert _yaml_keys(yaml.safe_load(EXAMPLE.read_text())) == _model_keys(CollectorFileConfig)


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "collector.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_collector_config(path)
    assert err.value.source == str(path)
    return err.value.problems


def test_every_problem_is_one_line_with_its_yaml_path(tmp_path: Path) -> None:
    text = (
        "mqtt:\n  hots: broker\n  port: 70000\n  tls: {enabled: yes, cert_file: a.pem}\n"
        "store: {sqlite_path: 5}\nbatch_wait_s: .inf\nstats_interval_s: 0\nlog_level: LOUD\n"
    )
    assert problems(tmp_path, text) == [
        "log_level: must be DEBUG, INFO, WARNING or ERROR, got 'LOUD'",
        "mqtt.port: input should be less than or equal to 65535, got 70000",
        "mqtt.tls: cert_file and key_file must be given together",
        "mqtt.hots: unknown key",
        "store.sqlite_path: input should be a valid string, got 5",
        "batch_wait_s: input should be a finite number, got inf",
        "stats_interval_s: input should be greater than 0, got 0",
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- a list\n", "(top level): expected a mapping of keys, got list"),
        ("mqtt: {topic_prefix: 'a/#'}\n", "mqtt.topic_prefix: must be a non-empty topic"),
        ("mqtt: {share_group: 'a/b'}\n", "mqtt.share_group: must be a non-empty name"),
        ("mqtt: [\n", "line 2, column 1: invalid YAML"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    (line,) = problems(tmp_path, text)
    assert line.startswith(problem), line


def test_command_line_options_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "collector.yaml"
    path.write_text("mqtt: {host: broker.example, port: 1883}\nstore: {sqlite_path: a.sqlite}\n")
    config = load_collector_config(path, {"mqtt.port": 8883, "mqtt.host": None})
    assert (config.mqtt.host, config.mqtt.port) == ("broker.example", 8883)
    with pytest.raises(ConfigError) as err:
        load_collector_config(path, {"mqtt.port": 0})
    assert err.value.problems == ["mqtt.port: input should be greater than or equal to 1, got 0"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.collector", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip


def test_check_config_cli(tmp_path: Path) -> None:
    ok = _cli("check-config", "--config", str(EXAMPLE), "--print")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"{EXAMPLE}: OK\n")
    assert yaml.safe_load(ok.stdout.split("\n", 1)[1]) == CollectorFileConfig().model_dump()
    bad = tmp_path / "collector.yaml"
    bad.write_text("mqtt: {port: x}\nbogus: 1\n")
    for command in ("check-config", "run", "export"):
        extra = ["--out", "-"] if command == "export" else []
        done = _cli(command, "--config", str(bad), *extra)
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines() == [
            f"chorus-collector: error: {bad}: mqtt.port: input should be a valid integer, got 'x'",
            f"chorus-collector: error: {bad}: bogus: unknown key",
        ]
    missing = _cli("run", "--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2
    assert missing.stderr.splitlines() == [
        f"chorus-collector: error: {tmp_path / 'nope.yaml'}: file not found"
    ]


def test_a_key_given_twice_is_an_error_naming_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "collector.yaml"
    path.write_text("mqtt:\n  port: 1883\n  port: 1884\n")
    with pytest.raises(
        ConfigError, match=r"duplicate key 'port' \(first on line 2, again on line 3\)"
    ):
        load_collector_config(path)
