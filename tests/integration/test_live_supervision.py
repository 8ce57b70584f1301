"""The agent as systemd runs it: notify socket + watchdog, selftest, clock jumps, metrics, clips."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from pulse_helpers import SINK_RATE_HZ, PulseServer, skip_without_pulseaudio

from agent.app import build_engine
from agent.audio.chunk import AudioChunk, StreamInfo
from agent.config import parse_config
from agent.demo import make_demo_soundscape, write_demo_wav

ROOT = Path(__file__).resolve().parents[2]

DEMO_BUNDLE = Path(__file__).resolve().parents[2] / "agent" / "bundles" / "demo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NotifyListener:
    """A real sd_notify socket, as systemd provides: records (monotonic time, message)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.path = path
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def pings(self, since: float = 0.0, until: float = float("inf")) -> int:
        return sum(m == "WATCHDOG=1" and since <= t < until for t, m in self.messages)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_watchdog_pings_stop_when_the_audio_stream_stalls(tmp_path: Path) -> None:
    """Real notify socket, real microphone path: freezing the sound server stops the pings."""
    skip_without_pulseaudio()
    (tmp_path / "pulse").mkdir()
    scape = make_demo_soundscape(duration_s=90.0, sample_rate_hz=SINK_RATE_HZ, seed=6)
    server = PulseServer(tmp_path / "pulse", playback=scape.audio)
    reason = server.start()
    if reason:
        server.stop()
        pytest.skip(reason)
    listener = NotifyListener(tmp_path / "notify.sock")
    config = tmp_path / "agent.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "audio": {
                    "source": "microphone",
                    "device": "pulse",
                    "reopen_backoff": {"initial_s": 30.0, "max_s": 60.0},
                }
            }
        )
    )
    env = {**server.env, "NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "3000000"}
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 45
        while listener.pings() < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert any(m == "READY=1" or m.startswith("READY=1\n") for _, m in listener.messages)
        assert listener.pings() >= 3, "no watchdog pings while windows are processed"
        assert server.server is not None
        os.kill(server.server.pid, signal.SIGSTOP)  # the audio stream stalls
        stalled = time.monotonic()
        time.sleep(9.0)
        # Audio already queued may finish one more window just after the stall; after that,
        # with no windows processed, no ping may follow (systemd would restart the agent).
        assert listener.pings(since=stalled + 3.0) == 0
        os.kill(server.server.pid, signal.SIGCONT)
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
        listener.close()
        server.stop()
    assert any(m.startswith("STOPPING=1") for _, m in listener.messages)


def _selftest(config: dict, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"selftest-{os.getpid()}-{id(config)}.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "agent",
                "selftest",
                "--config",
                str(path),
                "--mic-seconds",
                "2",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env=env,
        )
    finally:
        path.unlink()


def _rows(out: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in out.splitlines()[2:-1]:
        name, result, detail = line.split(None, 2)
        rows[name] = (result, detail)
    return rows


def test_selftest_reports_a_missing_microphone_and_passes_the_rest(mosquitto_broker) -> None:
    proc = _selftest(
        {
            "audio": {"device": "no-such-microphone-xyz"},
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": mosquitto_broker.port},
        }
    )
    rows = _rows(proc.stdout)
    assert proc.returncode == 1
    assert list(rows) == ["config", "models", "golden", "microphone", "broker", "disk"]
    assert rows["microphone"][0] == "FAIL"
    assert "no-such-microphone-xyz" in rows["microphone"][1]
    assert all(rows[k][0] == "PASS" for k in ("config", "models", "golden", "broker", "disk"))
    assert proc.stdout.strip().endswith("5/6 checks passed")


def test_selftest_fails_an_unreachable_broker() -> None:
    port = _free_port()  # nothing listens there
    proc = _selftest(
        {
            "audio": {"device": "no-such-microphone-xyz"},
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": port},
        }
    )
    result, detail = _rows(proc.stdout)["broker"]
    assert result == "FAIL" and f"127.0.0.1:{port}" in detail


def test_selftest_passes_a_working_microphone(tmp_path: Path) -> None:
    skip_without_pulseaudio()
    (tmp_path / "pulse").mkdir()
    server = PulseServer(tmp_path / "pulse")  # plays a 1 kHz tone
    reason = server.start()
    try:
        if reason:
            pytest.skip(reason)
        proc = _selftest({"audio": {"device": "pulse"}}, env=server.env)
    finally:
        server.stop()
    result, detail = _rows(proc.stdout)["microphone"]
    assert result == "PASS", proc.stdout
    assert "samples/s" in detail and "dBFS" in detail


def test_clock_jump_closes_events_and_reanchors_timestamps() -> None:
    engine = build_engine(
        parse_config({"detection": {"threshold": 0.5}, "inference": {"bundle": str(DEMO_BUNDLE)}})
    )
    scape = make_demo_soundscape(40.0, 22050, seed=8)
    t0 = datetime(2026, 5, 1, 4, 0, tzinfo=UTC)
    proc = engine.processor(StreamInfo("mic:test", 22050, t0, None), [])
    hop = int(2.5 * 22050)
    before: list = []
    closed_at_jump: list = []
    after: list = []
    for start in range(0, scape.audio.size, hop):
        out = proc.push(AudioChunk(scape.audio[start : start + hop], start))
        (after if closed_at_jump else before).extend(out)
        open_now = any(d.open_windows() for d in proc.detectors)
        if not closed_at_jump and start >= 10 * 22050 and open_now:
            closed_at_jump = proc.reanchor(3600.0)  # NTP stepped the clock forward one hour
    after += proc.finish()
    assert closed_at_jump, "an event open at the jump is closed there"
    for d in before + closed_at_jump:
        assert d.start_utc == t0 + timedelta(seconds=d.start_s)
    assert after
    for d in after:  # stamped on the corrected clock, offsets unchanged
        assert d.start_utc == t0 + timedelta(hours=1, seconds=d.start_s)


def test_prometheus_metrics_while_running(tmp_path: Path) -> None:
    port = _free_port()
    config = tmp_path / "agent.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "audio": {
                    "source": "synthetic",
                    "realtime": True,
                    "synthetic": {"duration_s": 30.0},
                },
                "health": {"prometheus_port": port},
            }
        )
    )
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    body = ""
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    body = r.read().decode()
                if (
                    'chorus_windows_total{device="chorus-dev"} 2' in body
                    or 'chorus_windows_total{device="chorus-dev"} 3' in body
                ):
                    break
            except OSError:
                pass
            time.sleep(0.5)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=30)
    assert "# TYPE chorus_windows_total counter" in body
    windows = [
        float(x.split()[-1]) for x in body.splitlines() if x.startswith("chorus_windows_total")
    ]
    assert windows and windows[0] >= 2
    assert "chorus_real_time_factor" in body and "chorus_resident_memory_bytes" in body


def test_run_saves_clips_within_the_disk_bound(tmp_path: Path) -> None:
    wav = tmp_path / "dawn.wav"
    write_demo_wav(wav, duration_s=60.0, seed=9)
    clips = tmp_path / "clips"
    config = tmp_path / "agent.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "audio": {"source": "file", "files": [str(wav)], "realtime": False},
                "detection": {"merge": False},  # one detection per window: many clips
                "outputs": {"jsonl": str(tmp_path / "d.jsonl")},
                "inference": {"bundle": str(DEMO_BUNDLE)},  # its species are the demo audio's
                "storage": {
                    "clips": {
                        "enabled": True,
                        "dir": str(clips),
                        "format": "wav",
                        "max_total_mb": 2.0,
                        "min_free_mb": 0.0,
                    }
                },
            }
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    detections = [json.loads(x) for x in (tmp_path / "d.jsonl").read_text().splitlines()]
    files = sorted(clips.rglob("*.wav"))
    assert len(detections) > 10 and files
    assert sum(f.stat().st_size for f in files) <= 2_000_000
    newest = detections[-1]
    mine = [f.name for f in files if newest["id"][:8] in f.name]
    expected = {"mix"} | ({newest["channel"]} if newest["channel"] != "mix" else set())
    assert {name.rsplit("_", 1)[1].removesuffix(".wav") for name in mine} == expected
    import soundfile as sf

    x, sr = sf.read(clips.rglob(f"*{newest['id'][:8]}_mix.wav").__next__())
    assert sr == 22050 and x.shape == (110250,) and np.abs(x).max() > 0
