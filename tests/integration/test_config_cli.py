"""Config holes found by a red-team pass (issue 24, item 6), through a real ``chorus-agent``.

Each mistake gets one line naming the file and the key, and exit code 2, before anything runs;
never a traceback, never a pass that fails later at run time.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def agent(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=ROOT,
    )


def errors(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in proc.stderr, proc.stderr
    return [line for line in proc.stderr.splitlines() if line.startswith("chorus-agent: error:")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "detection:\n  max_event_s: .inf\n",
            "detection.max_event_s: input should be a finite number, got inf",
        ),
        ("audio:\n  queue_s: .inf\n", "audio.queue_s: input should be a finite number, got inf"),
        ("audio:\n  queue_s: .nan\n", "audio.queue_s: input should be a finite number, got nan"),
        (
            'device_id: "x\\n"\n',
            "device_id: must be 1-64 letters, digits, '_', '.', '-', got 'x\\n'",
        ),
        (
            "audio:\n  hop_s: 2.5\nmqtt:\n  port: 1883\naudio:\n  window_s: 5.0\n",
            "line 5, column 1: invalid YAML: duplicate key 'audio' (first on line 1, again on "
            "line 5)",
        ),
        (
            "detection:\n  include: [nosuch]\n",
            "detection.include: unknown species code 'nosuch' (not in bundle chorus-edge)",
        ),
    ],
)
def test_check_config_refuses_with_one_line_naming_file_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(text)
    proc = agent("check-config", str(config))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert errors(proc) == [f"chorus-agent: error: {config}: {message}"]


def test_output_path_that_is_a_folder_exits_2(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"audio:\n  source: synthetic\n  synthetic:\n    duration_s: 1.0\noutputs:\n"
        f"  csv: {folder}\n"
    )
    proc = agent("run", "-c", str(config))
    assert proc.returncode == 2, proc.stderr
    assert errors(proc) == [
        f"chorus-agent: error: {config}: outputs.csv: cannot open output file {folder}: "
        "Is a directory"
    ]
    a_file = tmp_path / "out.txt"
    a_file.write_text("")
    wav = ROOT / "agent" / "demo_data" / "soundscape.wav"
    proc = agent("analyze", str(wav), "--out", str(a_file))
    assert proc.returncode == 2, proc.stderr
    assert errors(proc) == [
        f"chorus-agent: error: cannot create output folder {a_file}: File exists"
    ]


def test_taken_prometheus_port_is_one_error_and_the_agent_keeps_listening(
    tmp_path: Path,
) -> None:
    """Metrics are a side channel: the agent logs one error naming the key and the port and
    goes on detecting (a fatal error would crash-loop under systemd and count as restarts
    against an OTA update on probation)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        jsonl = tmp_path / "detections.jsonl"
        config = tmp_path / "agent.yaml"
        config.write_text(
            "audio:\n  source: synthetic\n  synthetic:\n    duration_s: 6.0\n"
            f"health:\n  prometheus_port: {port}\noutputs:\n  jsonl: {jsonl}\n"
        )
        proc = agent("run", "-c", str(config))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if "health.prometheus_port" in x]
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "ERROR" in lines[0]
    assert "running without the metrics endpoint" in lines[0]
    stopped = re.search(r"stopped: (\d+) windows", proc.stderr)
    assert stopped is not None and int(stopped.group(1)) >= 1, proc.stderr  # it kept working
