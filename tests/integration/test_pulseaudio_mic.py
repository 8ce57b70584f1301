"""The real PortAudio path: MicSource records a known tone through a PulseAudio null sink.

No sound card is needed (DEPENDENCIES.md §5): a private PulseAudio server with a null sink at
22050 Hz mono; its monitor is the default source and ``pacat`` plays a 1 kHz tone into the sink.
PortAudio reaches it through ALSA's ``pulse``/``default`` PCMs (libasound2-plugins). PortAudio reads
the device list when sounddevice is imported, so the capture runs in a subprocess that starts with
the server's environment. Runs in CI when pulseaudio, pulseaudio-utils, libasound2-plugins and
libportaudio2 are installed; skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pulse_helpers import SINK_RATE_HZ, TONE_HZ, PulseServer, skip_without_pulseaudio

CAPTURE = r"""
import json, sys, time
import numpy as np
from agent.audio.devices import list_input_devices
from agent.audio.mic_source import MicSource

device, target_rate, capture_rate = json.loads(sys.argv[1])
src = MicSource(device, target_rate, capture_rate_hz=capture_rate, block_s=0.1,
                first_data_timeout_s=20.0)
t_open = time.monotonic()
info = src.open()
t_first = time.monotonic()
chunks = []
got = 0
deadline = time.monotonic() + 20.0
while got < 2 * target_rate and time.monotonic() < deadline:
    c = src.read(0.5)
    if c is not None:
        chunks.append(c)
        got += c.samples.shape[0]
t_end = time.monotonic()
stats = src.stats()
src.close()
x = np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.float32)
contiguous = all(b.first_sample_index == a.end_sample_index and not b.discontinuity
                 for a, b in zip(chunks, chunks[1:]))
np.save(sys.argv[2], x)
print(json.dumps({
    "name": info.name, "rate": info.sample_rate_hz, "start_utc": info.start_utc.isoformat(),
    "open_s": t_first - t_open, "samples": int(x.shape[0]), "read_s": t_end - t_first,
    "contiguous": contiguous, "stats": stats,
    "devices": [d["name"] for d in list_input_devices()],
}))
"""


@pytest.fixture(scope="module")
def pulse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PulseServer]:
    """A running private PulseAudio server playing a 1 kHz tone into the default source."""
    skip_without_pulseaudio()
    server = PulseServer(tmp_path_factory.mktemp("pulse"))
    try:
        reason = server.start()
        if reason:
            pytest.skip(reason)
        yield server
    finally:
        server.stop()


def _capture(
    env: dict[str, str],
    tmp_path: Path,
    device: str | None,
    target_rate: int,
    capture_rate: int | None,
) -> tuple[dict, np.ndarray]:
    out = tmp_path / "captured.npy"
    proc = subprocess.run(
        [sys.executable, "-c", CAPTURE, json.dumps([device, target_rate, capture_rate]), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print("pulseaudio capture:", json.dumps(report))  # figures for the log (-s)
    return report, np.load(out)


@pytest.mark.parametrize(
    ("device", "capture_rate"),
    [("pulse", None), (None, 48000)],
    ids=["pulse-native-rate", "default-device-48k"],
)
def test_mic_records_the_tone(
    pulse: PulseServer, tmp_path: Path, device: str | None, capture_rate: int | None
) -> None:
    target = 22050
    report, x = _capture(pulse.env, tmp_path, device, target, capture_rate)
    assert "pulse" in report["devices"]
    assert report["rate"] == target
    assert report["samples"] >= 2 * target
    assert report["contiguous"]
    assert report["stats"]["reconnects"] == 0
    # skip the start (stream settling, resampler edge), analyse 1 s
    seg = x[target // 4 : target // 4 + target].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(seg * np.hanning(seg.shape[0])))
    peak_hz = float(np.argmax(spectrum)) * target / seg.shape[0]
    rms = float(np.sqrt(np.mean(seg**2)))
    capture_hz = report["stats"]["capture_rate_hz"]
    print(f"peak {peak_hz:.2f} Hz, RMS {rms:.4f}, capture rate {capture_hz}")
    assert peak_hz == pytest.approx(TONE_HZ, abs=5.0)
    # the level came through (0.5 peak -> RMS 0.354; PulseAudio may apply its own volume)
    assert rms > 0.05


RECONNECT = r"""
import json, sys, time
import numpy as np
from agent.audio.mic_source import MicSource
from agent.config import BackoffConfig

rate = 22050
src = MicSource("pulse", rate, block_s=0.1, backoff=BackoffConfig(initial_s=0.2, max_s=1.0),
                first_data_timeout_s=20.0)
src.open()
got, prev_end, contiguous = 0, 0, True
while got < rate:
    c = src.read(0.5)
    if c is not None:
        contiguous &= c.first_sample_index == prev_end and not c.discontinuity
        got, prev_end = got + c.samples.shape[0], c.end_sample_index
print("READY", flush=True)
gap, after = None, []
deadline = time.monotonic() + 40.0
while time.monotonic() < deadline and sum(a.samples.shape[0] for a in after) < rate:
    c = src.read(0.5)
    if c is None:
        continue
    if gap is None and not c.discontinuity:
        contiguous &= c.first_sample_index == prev_end
        prev_end = c.end_sample_index
        continue
    if gap is None:
        gap = c
    after.append(c)
stats = src.stats()
src.close()
x = np.concatenate([a.samples for a in after]) if after else np.zeros(0, np.float32)
np.save(sys.argv[1], x)
print(json.dumps({"contiguous": contiguous, "prev_end": prev_end, "stats": stats,
                  "gap_index": None if gap is None else gap.first_sample_index}))
"""


def test_mic_reconnects_when_the_server_restarts(pulse: PulseServer, tmp_path: Path) -> None:
    """The device vanishes with the server and comes back: a real PortAudio reopen."""
    out = tmp_path / "after.npy"
    proc = subprocess.Popen(
        [sys.executable, "-c", RECONNECT, str(out)],
        env=pulse.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY", proc.stderr.read()[-2000:]
        pulse.stop()
        time.sleep(1.0)
        reason = pulse.start()
        assert reason is None, reason
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr[-2000:]
    report = json.loads(stdout.strip().splitlines()[-1])
    print("pulseaudio reconnect:", json.dumps(report))
    assert report["contiguous"]
    assert report["gap_index"] is not None, "no discontinuity after the server restart"
    stats = report["stats"]
    assert stats["reconnects"] == 1
    # the server was down for at least 1 s: the index skipped at least that much audio
    assert report["gap_index"] - report["prev_end"] >= 0.9 * 22050
    assert stats["gap_s"] >= 0.9
    x = np.load(out).astype(np.float64)
    seg = x[2205:]  # past the reopened stream's first moments
    spectrum = np.abs(np.fft.rfft(seg * np.hanning(seg.shape[0])))
    assert float(np.argmax(spectrum)) * 22050 / seg.shape[0] == pytest.approx(TONE_HZ, abs=5.0)


def test_agent_run_detects_birds_played_into_a_real_microphone(tmp_path: Path) -> None:
    """chorus-agent run, microphone source, end to end: what is played is what is reported."""
    from datetime import UTC, datetime

    import yaml

    from agent.demo import make_demo_soundscape

    skip_without_pulseaudio()
    scape = make_demo_soundscape(duration_s=40.0, sample_rate_hz=SINK_RATE_HZ, seed=4)
    (tmp_path / "pulse").mkdir()
    server = PulseServer(tmp_path / "pulse", playback=scape.audio)
    reason = server.start()
    try:
        if reason:
            pytest.skip(reason)
        config = {
            "device_id": "mic-test",
            "audio": {"source": "microphone", "device": "pulse"},
            "outputs": {"jsonl": str(tmp_path / "live.jsonl")},
            # The plumbing bundle: its species are the demo sources played into the "mic".
            "inference": {"bundle": str(Path(__file__).parents[2] / "agent" / "bundles" / "demo")},
        }
        (tmp_path / "agent.yaml").write_text(yaml.safe_dump(config))
        before = datetime.now(UTC)
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "--log-level",
                "INFO",
                "run",
                "--config",
                str(tmp_path / "agent.yaml"),
            ],
            env=server.env,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(20.0)
        agent.send_signal(2)  # SIGINT, as Ctrl-C
        _, err = agent.communicate(timeout=30)
    finally:
        server.stop()
    assert agent.returncode == 0, err[-2000:]
    detections = [json.loads(x) for x in (tmp_path / "live.jsonl").read_text().splitlines()]
    assert detections, err[-2000:]
    played = {code for code, _, _ in scape.events}
    assert {d["species"]["code"] for d in detections} <= played
    for d in detections:  # stamped from the capture clock, close to real time
        start = datetime.fromisoformat(d["start_utc"].replace("Z", "+00:00"))
        assert 0 <= (start - before).total_seconds() < 40
        assert d["source"].startswith("mic:")
