"""chorus-agent as a user runs it: real TFLite, real files, a real Mosquitto, real signals."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from agent.app import build_engine
from agent.config import parse_config
from agent.demo import write_demo_wav
from agent.detection.combine import sigmoid
from agent.windowing import Window

ROOT = Path(__file__).resolve().parents[2]
DEMO_BUNDLE = ROOT / "agent" / "bundles" / "demo"
START = "2026-05-01T04:30:00Z"


def agent_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent", *args]


def run_agent(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        agent_cmd(*args), capture_output=True, text=True, timeout=timeout_s, cwd=ROOT
    )


@pytest.fixture(scope="module")
def wav60(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("audio") / "dawn.wav"
    return path, write_demo_wav(path, duration_s=60.0, seed=3)


def test_analyze_outputs_match_the_pipeline_windows(wav60, tmp_path: Path) -> None:
    wav, scape = wav60
    out = tmp_path / "out"
    proc = run_agent(
        "analyze", str(wav), "--out", str(out), "--start-utc", START, "--bundle", str(DEMO_BUNDLE)
    )
    assert proc.returncode == 0, proc.stderr
    assert "analysed 1 file(s), 60.0 s of audio" in proc.stdout

    jsonl = [json.loads(x) for x in (out / "detections.jsonl").read_text().splitlines()]
    with (out / "detections.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    raven = (out / "dawn.selections.txt").read_text().splitlines()
    assert raven[0].startswith("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)")
    assert len(jsonl) == len(rows) == len(raven) - 1 > 5

    # Recompute every window's combined scores independently of the run above.
    engine = build_engine(parse_config({"inference": {"bundle": str(DEMO_BUNDLE)}}))
    audio, sr = sf.read(wav, dtype="float32")
    assert sr == engine.models.sample_rate_hz
    size, hop = engine.models.window_samples, int(2.5 * sr)
    labels = [lab.species_code for lab in engine.models.classifiers[0].labels]
    t0 = datetime.fromisoformat(START.replace("Z", "+00:00"))
    above: dict[tuple[str, float], float] = {}  # (species, window start) -> logit, if detected
    for i, start in enumerate(range(0, len(audio) - size + 1, hop)):
        result = engine.inference.run(Window(i, audio[start : start + size], start, size, sr, t0))
        scores = result.scores[0][1]
        for c, code in enumerate(labels):
            if sigmoid(scores.logits[c : c + 1])[0] >= 0.5:
                above[(code, start / sr)] = float(scores.logits[c])

    covered = set()
    for det in jsonl:
        code, s, e = det["species"]["code"], det["start_s"], det["end_s"]
        starts = [s + k * 2.5 for k in range(det["windows"])]
        assert s % 2.5 == 0 and e == min(starts[-1] + 5.0, 60.0)
        assert all((code, w) in above for w in starts), det  # every merged window passed
        assert det["logit"] == pytest.approx(max(above[(code, w)] for w in starts), abs=1e-4)
        covered |= {(code, w) for w in starts}
        assert det["start_utc"] == (t0 + timedelta(seconds=s)).isoformat(
            timespec="milliseconds"
        ).replace("+00:00", "Z")
    assert covered == set(above)  # nothing the windows found is missing from the outputs

    by_id = {d["id"]: d for d in jsonl}
    for row in rows:
        d = by_id[row["id"]]
        assert (float(row["start_s"]), float(row["end_s"])) == (d["start_s"], d["end_s"])
        assert row["species_code"] == d["species"]["code"] and row["channel"] == d["channel"]
    raven_ids = {line.split("\t")[-1] for line in raven[1:]}
    assert raven_ids == set(by_id)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"][0]["windows"] == 23 and summary["audio_s"] == 60.0
    # The demo models find the synthetic calls: most ground-truth events are detected.
    found = sum(
        any(d["species"]["code"] == c and d["start_s"] < e and s < d["end_s"] for d in jsonl)
        for c, s, e in scape.events
    )
    assert found / len(scape.events) >= 0.8


BLOCK_TF = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorflow', 'keras', 'tf_keras', 'modeltools'):
            raise ImportError(f'{name} is blocked: the agent must not need it')
sys.meta_path.insert(0, Block())
from agent.cli import main
code = main(sys.argv[1:])
leaked = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'modeltools')]
assert not leaked, leaked
sys.exit(code)
"""


def test_agent_runs_without_tensorflow(wav60, tmp_path: Path) -> None:
    wav, _ = wav60
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            BLOCK_TF,
            "analyze",
            str(wav),
            "--out",
            str(tmp_path),
            "--bundle",
            str(DEMO_BUNDLE),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "detections.jsonl").stat().st_size > 0


def _error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    lines = [x for x in proc.stderr.splitlines() if not x.startswith("INFO: Created TensorFlow")]
    assert "Traceback" not in proc.stderr
    return lines


def test_bad_inputs_give_one_line_and_exit_2(wav60, tmp_path: Path) -> None:
    wav, _ = wav60
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("audio:\n  hop_s: 7.5\n")
    corrupt_bundle = tmp_path / "bundle"
    shutil.copytree(DEMO_BUNDLE, corrupt_bundle)
    (corrupt_bundle / "separator.tflite").write_bytes(b"garbage")
    corrupt_audio = tmp_path / "corrupt.wav"
    corrupt_audio.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    unknown_species = tmp_path / "species.yaml"
    unknown_species.write_text("detection:\n  include: [nosuchbird]\n")
    cases = [
        (["check-config", str(bad_cfg)], "audio.hop_s: must be > 0 and <= window_s (5.0), got 7.5"),
        (["check-config", str(tmp_path / "missing.yaml")], "file not found"),
        (["check-config", str(unknown_species)], "detection.include: unknown species code"),
        (
            [
                "analyze",
                str(wav),
                "--out",
                str(tmp_path / "o1"),
                "--bundle",
                str(tmp_path / "none"),
            ],
            "model bundle folder not found",
        ),
        (
            ["analyze", str(wav), "--out", str(tmp_path / "o2"), "--bundle", str(corrupt_bundle)],
            "separator.tflite does not match its sha256",
        ),
        (["analyze", str(tmp_path / "nope.wav"), "--out", str(tmp_path / "o3")], "nope.wav"),
        (["analyze", str(corrupt_audio), "--out", str(tmp_path / "o4")], "corrupt.wav"),
        (["check-bundle", str(corrupt_bundle)], "does not match its sha256"),
    ]
    for args, needle in cases:
        proc = run_agent(*args)
        lines = _error_lines(proc)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("chorus-agent: error: "), (args, lines)
        assert needle in lines[0], (args, lines)
    assert not (tmp_path / "o3").exists()  # a bad input is refused before any output is written


def test_check_config_and_check_bundle_succeed() -> None:
    proc = run_agent("check-config", str(ROOT / "config" / "agent.example.yaml"))
    assert proc.returncode == 0 and "OK (bundle chorus-edge" in proc.stdout
    proc = run_agent("check-bundle", str(DEMO_BUNDLE))
    assert proc.returncode == 0 and "smoke test passed" in proc.stdout


def _live_config(tmp_path: Path, wav: Path, port: int) -> Path:
    cfg = {
        "device_id": "field-01",
        "audio": {"source": "file", "files": [str(wav)], "realtime": True},
        "outputs": {"jsonl": str(tmp_path / "live.jsonl")},
        "inference": {"bundle": str(DEMO_BUNDLE)},
        "mqtt": {"enabled": True, "host": "127.0.0.1", "port": port},
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _mosquitto_sub(port: int) -> subprocess.Popen[str]:
    exe = shutil.which("mosquitto_sub")
    if exe is None:
        pytest.skip("mosquitto_sub not installed (Debian package mosquitto-clients)")
    sub = subprocess.Popen(
        [exe, "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-v", "-t", "chorus/+/detections"],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # let it subscribe before the agent publishes
    return sub


def _received(sub: subprocess.Popen[str]) -> list[tuple[str, dict]]:
    sub.terminate()
    out, _ = sub.communicate(timeout=10)
    pairs = [line.split(" ", 1) for line in out.splitlines() if line]
    return [(topic, json.loads(payload)) for topic, payload in pairs]


def test_run_paced_file_publishes_detections_to_mosquitto(mosquitto_broker, tmp_path: Path) -> None:
    wav = tmp_path / "short.wav"
    write_demo_wav(wav, duration_s=10.0, seed=1)
    config = _live_config(tmp_path, wav, mosquitto_broker.port)
    sub = _mosquitto_sub(mosquitto_broker.port)
    t0 = time.monotonic()
    proc = subprocess.run(
        agent_cmd("run", "--config", str(config)),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    assert elapsed >= 9.5  # paced at real time, not as fast as possible
    messages = _received(sub)
    local = [json.loads(x) for x in (tmp_path / "live.jsonl").read_text().splitlines()]
    assert messages and {m["id"] for _, m in messages} == {d["id"] for d in local}
    for topic, m in messages:
        assert topic == "chorus/field-01/detections"
        assert m["schema"] == "chorus.detection/1" and m["device"] == "field-01"
        assert 0.0 <= m["confidence"] <= 1.0 and m["end_s"] <= 10.0


def test_sigterm_drains_what_was_captured(mosquitto_broker, tmp_path: Path) -> None:
    wav = tmp_path / "long.wav"
    write_demo_wav(wav, duration_s=40.0, seed=2)
    config = _live_config(tmp_path, wav, mosquitto_broker.port)
    sub = _mosquitto_sub(mosquitto_broker.port)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        agent_cmd("--log-level", "INFO", "run", "--config", str(config)),
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    time.sleep(9.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "SIGTERM received: draining the pipeline" in err
    local = [json.loads(x) for x in (tmp_path / "live.jsonl").read_text().splitlines()]
    messages = _received(sub)
    assert local, "events open at SIGTERM must be closed and emitted"
    assert {m["id"] for _, m in messages} == {d["id"] for d in local}
    # It stopped early (about 9 s of 40 s), and the last partial window was processed.
    assert max(d["end_s"] for d in local) < 20.0
    stopped = [line for line in err.splitlines() if "stopped:" in line]
    assert stopped and " 0 windows" not in stopped[0]


def test_analyze_reads_recorder_timestamp_from_file_name(tmp_path: Path) -> None:
    wav = tmp_path / "S4A03895_20190522_053000.wav"
    sf.write(wav, np.zeros(22050 * 6, dtype=np.float32), 22050)
    proc = run_agent("analyze", str(wav), "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["files"][0]["start_utc"] == datetime(2019, 5, 22, 5, 30, tzinfo=UTC).isoformat()
