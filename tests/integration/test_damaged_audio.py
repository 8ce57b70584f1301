"""``chorus-agent analyze`` on damaged audio (issue 24, items 4 and 8).

NaN/Inf never becomes a bird: non-finite input samples are a gap (counted in summary.json,
never classified), and a stage whose output is non-finite (a bundle whose separator emits NaN)
is a failed window (``window_errors``), which an OTA probation rolls back. A truncated file is
reported with the audio it really held.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from ota_harness import make_bundle, nan_separator

from agent.demo import DEMO_SAMPLE_RATE_HZ, make_demo_soundscape

ROOT = Path(__file__).resolve().parents[2]
DEMO_BUNDLE = ROOT / "agent" / "bundles" / "demo"
RATE = DEMO_SAMPLE_RATE_HZ  # both shipped bundles run at 22.05 kHz: no resampling here
START = "2026-05-01T04:30:00Z"


def analyze(wav: Path, out: Path, *extra: str) -> tuple[dict, list[dict], str]:
    cmd = [sys.executable, "-m", "agent", "analyze", str(wav), "--out", str(out)]
    proc = subprocess.run(
        [*cmd, "--start-utc", START, "--no-progress", *extra],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    lines = (out / "detections.jsonl").read_text().splitlines()
    return summary, [json.loads(x) for x in lines], proc.stderr


def write_float_wav(path: Path, audio: np.ndarray) -> Path:
    sf.write(str(path), audio.astype(np.float32), RATE, subtype="FLOAT", format="WAV")
    assert not np.all(np.isfinite(sf.read(str(path), dtype="float32")[0]))  # survived the file
    return path


def test_all_nan_wav_is_one_gap_and_no_detection(tmp_path: Path) -> None:
    wav = write_float_wav(tmp_path / "nan.wav", np.full(10 * RATE, np.nan))
    summary, detections, stderr = analyze(wav, tmp_path / "out")  # the default bundle
    stats = summary["stats"]
    assert detections == []
    assert stats["windows"] == 0 and stats["window_errors"] == 0
    assert stats["nonfinite_samples"] == 10 * RATE and stats["nonfinite_gaps"] == 1
    assert summary["files"][0]["nonfinite_s"] == 10.0
    assert "non-finite samples (NaN/Inf)" in stderr


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_nonfinite_stretch_is_skipped_and_the_rest_is_analysed(
    tmp_path: Path, value: float
) -> None:
    scape = make_demo_soundscape(40.0, RATE, seed=3)
    audio = scape.audio.astype(np.float32).copy()
    audio[20 * RATE : 25 * RATE] = value
    wav = write_float_wav(tmp_path / "stretch.wav", audio)
    summary, detections, _ = analyze(wav, tmp_path / "out")
    stats = summary["stats"]
    # 5-s windows every 2.5 s: 0..15 s before the stretch (7), 25..35 s after it (5).
    assert stats["windows"] == 12 and stats["window_errors"] == 0
    assert stats["nonfinite_samples"] == 5 * RATE and stats["nonfinite_gaps"] == 1
    for d in detections:  # nothing was heard inside the stretch
        assert d["end_s"] <= 20.0 or d["start_s"] >= 25.0, d


def test_separator_that_emits_nan_fails_every_window(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, "0.9.0", None, nan_separator)
    scape = make_demo_soundscape(30.0, RATE, seed=3)
    wav = tmp_path / "dawn.wav"
    sf.write(str(wav), scape.audio, RATE, subtype="PCM_16")
    summary, detections, stderr = analyze(wav, tmp_path / "out", "--bundle", str(bundle))
    stats = summary["stats"]
    assert detections == []  # no sep0 (nor any) detection from NaN channels
    assert stats["windows"] == 0 and stats["window_errors"] == 11
    assert "separator outputs NaN/Inf" in stderr


def test_nan_channels_are_refused_by_the_classifier_frontend() -> None:
    """The default bundle's int8 classifier answers NaN features with a constant logit; the
    frontend check turns them into an error before the classifier sees them."""
    from agent.models.manifest import load_bundle
    from agent.models.stages import RuntimeOptions, load_models

    models = load_models(load_bundle(ROOT / "agent" / "bundles" / "default"), RuntimeOptions())
    clf = models.classifiers[0]
    channels = np.full((1, models.window_samples), np.nan, np.float32)
    with pytest.raises(FloatingPointError, match=r"frontend outputs NaN/Inf \(\d+ of \d+ values\)"):
        clf.classify(channels)


def test_truncated_mp3_reports_the_decoded_duration(tmp_path: Path) -> None:
    if "MP3" not in sf.available_formats():
        pytest.skip(f"libsndfile {sf.__libsndfile_version__} cannot write MP3")
    scape = make_demo_soundscape(17.0, RATE, seed=3)
    full = tmp_path / "full.mp3"
    sf.write(str(full), scape.audio, RATE, format="MP3")
    data = full.read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: len(data) // 2])  # the recorder died mid-file
    header_s = sf.info(str(cut)).duration
    assert header_s > 16.0  # the header still promises the whole file
    summary, _, stderr = analyze(cut, tmp_path / "out")
    report = summary["files"][0]
    assert report["truncated"] is True
    assert 7.0 < report["duration_s"] < 10.0  # what was decoded, not the header's 17 s
    assert summary["audio_s"] == report["duration_s"]
    assert report["windows"] == summary["stats"]["windows"] > 0
    assert "truncated or damaged" in stderr and "17.0 s" in stderr
    full_summary, _, full_err = analyze(full, tmp_path / "out_full")
    assert full_summary["files"][0]["truncated"] is False, full_err


def test_heartbeat_reports_nonfinite_audio(tmp_path: Path) -> None:
    """The live status carries the NaN/Inf counters (audio.stats) and stays schema-valid."""
    from datetime import UTC, datetime

    from conftest import free_port

    from agent.app import build_engine
    from agent.audio.chunk import AudioChunk, StreamInfo
    from agent.audio.synthetic import SyntheticSource
    from agent.config import parse_config
    from agent.schemas import validator
    from agent.sinks.mqtt_output import MqttOutput

    config = parse_config(
        {
            "audio": {"source": "synthetic"},
            "inference": {"bundle": str(DEMO_BUNDLE)},
            "mqtt": {"enabled": True, "port": free_port(), "outbox_path": str(tmp_path / "o")},
        }
    )
    engine = build_engine(config)
    info = StreamInfo("mic:test", RATE, datetime(2026, 5, 1, tzinfo=UTC))
    processor = engine.processor(info, [])
    audio = np.zeros(8 * RATE, np.float32)
    audio[RATE : 2 * RATE] = np.nan
    processor.push(AudioChunk(audio, 0))
    out = MqttOutput(config, drain_timeout_s=0.1, close_timeout_s=0.5)  # broker absent
    try:
        out.on_tick(processor, SyntheticSource(config.audio.synthetic, RATE))
        status = out.status_payload()
    finally:
        out.close()
    assert status["audio"]["stats"]["nonfinite_samples"] == RATE
    assert status["audio"]["stats"]["nonfinite_gaps"] == 1
    validator("status").validate(status)
