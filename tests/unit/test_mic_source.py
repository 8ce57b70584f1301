"""MicSource against a fake sounddevice module (the only fake: it stands in for hardware).

The fake keeps PortAudio's habits that matter here: devices are enumerated only at initialise
(``_initialize``), an unplugged device makes ``InputStream`` raise ``PortAudioError``, and the
callback runs on another thread, paced by the sample clock (or pumped by the test: "manual").
"""

from __future__ import annotations

import builtins
import itertools
import random
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from agent.audio.devices import list_input_devices, resolve_device
from agent.audio.mic_source import MicSource
from agent.audio.resample import resample
from agent.backoff import Backoff
from agent.config import BackoffConfig
from agent.errors import AudioSourceError


class FakePortAudioError(Exception):
    pass


def sine_signal(frame_pos: int, n: int, channels: int, rate: int) -> np.ndarray:
    """Channel c holds a (1000 * (c + 1)) Hz sine of amplitude 0.4 / (c + 1)."""
    t = (frame_pos + np.arange(n)) / rate
    cols = [0.4 / (c + 1) * np.sin(2 * np.pi * 1000.0 * (c + 1) * t) for c in range(channels)]
    return np.stack(cols, axis=1).astype(np.float32)


class FakeStream:
    def __init__(
        self,
        world: FakeSoundDevice,
        device_name: str,
        samplerate: float,
        channels: int,
        blocksize: int,
        callback: Any,
        finished_callback: Any,
        **_: Any,
    ) -> None:
        self.world, self.device_name = world, device_name
        self.samplerate, self.channels, self.blocksize = int(samplerate), channels, blocksize
        self.callback, self.finished_callback = callback, finished_callback
        self.active = False
        self.closed = False
        self.frame_pos = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.active = True
        if self.world.mode == "thread":
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        elif self.world.mode == "manual":
            self.pump(self.world.autopump)

    def pump(self, blocks: int, input_overflow: bool = False) -> None:
        """Deliver ``blocks`` callbacks right now, on the calling thread."""
        status = SimpleNamespace(input_overflow=input_overflow)
        for _ in range(blocks):
            data = self.world.signal(self.frame_pos, self.blocksize, self.channels, self.samplerate)
            self.callback(data, self.blocksize, None, status)
            self.frame_pos += self.blocksize

    def _run(self) -> None:
        period_s = self.blocksize / self.samplerate / self.world.speed
        due = time.monotonic() + period_s
        while not self._stop.is_set():
            if not self.world.present(self.device_name):
                if self.world.unplug_mode == "error":
                    self.active = False
                    self.finished_callback()
                    return
                self._stop.wait(0.01)  # "stall": the callback just stops coming
                continue
            self._stop.wait(max(0.0, due - time.monotonic()))
            if self._stop.is_set():
                return
            self.pump(1)
            due += period_s

    def abort(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        self.active = False

    def close(self) -> None:
        self.abort()
        self.closed = True


class FakeSoundDevice:
    """Module-like stand-in for ``sounddevice``."""

    PortAudioError = FakePortAudioError

    def __init__(
        self,
        devices: list[dict[str, Any]],
        default_input: int = 0,
        mode: str = "thread",
        speed: float = 1.0,
        autopump: int = 1,
    ) -> None:
        self.all_devices = devices  # the physical world: {"name", "in", "out", "rate"}
        self.unplugged: set[str] = set()
        self.default_name = devices[default_input]["name"] if default_input >= 0 else None
        self.mode, self.speed, self.autopump = mode, speed, autopump
        self.unplug_mode = "stall"
        self.signal = sine_signal
        self.streams: list[FakeStream] = []
        self.open_failures = 0
        self.initialize_calls = 0
        self._initialize()

    # PortAudio enumerates devices at initialisation only
    def _initialize(self) -> None:
        self.initialize_calls += 1
        self._enumerated = [d for d in self.all_devices if d["name"] not in self.unplugged]
        names = [d["name"] for d in self._enumerated]
        index = names.index(self.default_name) if self.default_name in names else -1
        self.default = SimpleNamespace(device=[index, -1])

    def _terminate(self) -> None:
        pass

    def present(self, name: str) -> bool:
        return name not in self.unplugged

    def unplug(self, name: str) -> None:
        self.unplugged.add(name)

    def plug(self, name: str) -> None:
        self.unplugged.discard(name)

    def query_hostapis(self) -> list[dict[str, Any]]:
        return [{"name": "ALSA"}]

    def query_devices(self) -> list[dict[str, Any]]:
        return [
            {
                "name": d["name"],
                "index": i,
                "hostapi": 0,
                "max_input_channels": d["in"],
                "max_output_channels": d.get("out", 0),
                "default_samplerate": float(d["rate"]),
            }
            for i, d in enumerate(self._enumerated)
        ]

    def InputStream(self, device: int, **kw: Any) -> FakeStream:
        name = self._enumerated[device]["name"] if 0 <= device < len(self._enumerated) else "?"
        if not self.present(name):
            self.open_failures += 1
            raise FakePortAudioError(
                "Error opening InputStream: Device unavailable [PaErrorCode -9985]"
            )
        stream = FakeStream(self, name, **kw)
        self.streams.append(stream)
        return stream


DEVICES = [
    {"name": "HDA Intel PCH: ALC3246 Analog (hw:0,0)", "in": 2, "out": 2, "rate": 44100},
    {"name": "HDMI 0 (hw:0,3)", "in": 0, "out": 8, "rate": 48000},
    {"name": "USB Audio Device: - (hw:1,0)", "in": 1, "rate": 48000},
    {"name": "USB Audio Device: - (hw:2,0)", "in": 2, "rate": 48000},
    {"name": "pulse", "in": 32, "out": 32, "rate": 44100},
]


def _mic(sd: FakeSoundDevice, device: str | int | None = "pulse", **kw: Any) -> MicSource:
    kw.setdefault("target_rate_hz", 22050)
    kw.setdefault("block_s", 0.02)
    kw.setdefault("first_data_timeout_s", 5.0)
    return MicSource(device, sd_module=sd, **kw)


def _read_for(src: MicSource, n_samples: int, deadline_s: float = 10.0) -> list:
    chunks, got = [], 0
    end = time.monotonic() + deadline_s
    while got < n_samples and time.monotonic() < end:
        c = src.read(0.2)
        if c is not None:
            chunks.append(c)
            got += c.samples.shape[0]
    assert got >= n_samples, f"only {got} samples before the deadline"
    return chunks


# -- devices ------------------------------------------------------------------------------------


def test_list_input_devices_only_inputs() -> None:
    devices = list_input_devices(FakeSoundDevice(DEVICES))
    assert [d["index"] for d in devices] == [0, 2, 3, 4]  # HDMI (output only) left out
    assert devices[0] == {
        "index": 0,
        "name": DEVICES[0]["name"],
        "hostapi": "ALSA",
        "max_input_channels": 2,
        "default_samplerate": 44100.0,
        "is_default": True,
    }
    assert [d["is_default"] for d in devices] == [True, False, False, False]


@pytest.mark.parametrize(
    ("wanted", "index"),
    [
        (None, 0),
        (2, 2),
        ("PULSE", 4),
        ("alc3246", 0),
        ("usb audio device: - (hw:2,0)", 3),
        ("hw:1", 2),
    ],
)
def test_resolve_device(wanted: str | int | None, index: int) -> None:
    assert resolve_device(wanted, FakeSoundDevice(DEVICES))["index"] == index


@pytest.mark.parametrize(
    ("wanted", "message"),
    [
        ("usb audio", "ambiguous (2 matches)"),
        ("nonexistent", "no input device matches 'nonexistent'; available inputs: 0 'HDA"),
        (1, "no input device with index 1"),  # HDMI has no input
        (99, "no input device with index 99"),
    ],
)
def test_resolve_device_errors(wanted: str | int, message: str) -> None:
    with pytest.raises(AudioSourceError) as err:
        resolve_device(wanted, FakeSoundDevice(DEVICES))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_no_default_falls_back_to_first_input_and_empty_list_errors() -> None:
    assert resolve_device(None, FakeSoundDevice(DEVICES, default_input=-1))["index"] == 0
    with pytest.raises(AudioSourceError, match="no input devices found"):
        resolve_device(None, FakeSoundDevice([DEVICES[1]], default_input=-1))


def test_portaudio_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def failing_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(builtins, "__import__", failing_import)
    with pytest.raises(AudioSourceError, match="install libportaudio2"):
        list_input_devices()
    with pytest.raises(AudioSourceError, match="install libportaudio2"):
        MicSource(None, 22050).open()


def test_too_many_channels_requested() -> None:
    with pytest.raises(AudioSourceError, match="has 1 input channel"):
        _mic(FakeSoundDevice(DEVICES), "hw:1", input_channels=2).open()


def test_no_first_callback_is_an_error_at_open() -> None:
    sd = FakeSoundDevice(DEVICES, mode="silent")
    with pytest.raises(AudioSourceError, match=r"delivered no audio within 0\.2 s"):
        _mic(sd, first_data_timeout_s=0.2).open()
    assert sd.streams[0].closed


def test_stream_open_failure_at_open_is_a_clear_error() -> None:
    sd = FakeSoundDevice(DEVICES)
    sd.unplug("pulse")  # enumerated at initialise, gone when opened
    with pytest.raises(AudioSourceError, match=r"cannot open input device 'pulse': .*-9985"):
        _mic(sd, "pulse").open()
    assert sd.open_failures == 1


# -- data path ----------------------------------------------------------------------------------


def test_mono_mixdown_is_the_channel_mean() -> None:
    sd = FakeSoundDevice(DEVICES, speed=10.0)
    src = _mic(sd, 0, input_channels=2, target_rate_hz=44100)  # native rate: no resampling
    src.open()
    chunks = _read_for(src, 44100 // 2)
    src.close()
    y = np.concatenate([c.samples for c in chunks])
    expected = sine_signal(0, y.shape[0], 2, 44100).mean(axis=1)
    np.testing.assert_allclose(y, expected, atol=1e-7)
    assert src.finished


def test_48k_resampled_in_read_equals_one_shot() -> None:
    sd = FakeSoundDevice(DEVICES, speed=20.0)
    src = _mic(sd, "hw:1,0", target_rate_hz=22050, block_s=0.05)
    info = src.open()
    assert info.sample_rate_hz == 22050 and info.duration_s is None
    assert info.name == "mic:USB Audio Device: - (hw:1,0)"
    assert sd.streams[0].samplerate == 48000 and sd.streams[0].blocksize == 2400
    chunks = _read_for(src, 22050)
    src.close()
    expected_index = 0
    for c in chunks:
        assert c.first_sample_index == expected_index and not c.discontinuity
        expected_index = c.end_sample_index
    y = np.concatenate([c.samples for c in chunks])
    whole = resample(sine_signal(0, 96000, 1, 48000)[:, 0], 48000, 22050)
    np.testing.assert_allclose(y, whole[: y.shape[0]], atol=1e-6)  # streaming == one-shot
    assert src.stats()["reconnects"] == 0


def test_capture_rate_override() -> None:
    sd = FakeSoundDevice(DEVICES, speed=10.0)
    src = _mic(sd, "pulse", capture_rate_hz=16000)
    src.open()
    src.close()
    assert sd.streams[0].samplerate == 16000


def test_start_utc_is_first_callback_minus_one_block() -> None:
    sd = FakeSoundDevice(DEVICES, mode="manual", autopump=1)
    src = _mic(sd, "pulse", block_s=0.5, stall_s=60)
    before = datetime.now(UTC)
    info = src.open()  # the manual stream calls back inside start(): "now" is the first callback
    after = datetime.now(UTC)
    src.close()
    assert before - timedelta(seconds=0.5) <= info.start_utc <= after - timedelta(seconds=0.5)


def test_queue_overflow_is_counted_and_flagged() -> None:
    # queue of 2 blocks; the stream delivers 6 blocks before anyone reads: 4 are dropped
    sd = FakeSoundDevice(DEVICES, mode="manual", autopump=6)
    src = _mic(sd, "pulse", target_rate_hz=44100, block_s=0.01, queue_s=0.02, stall_s=60)
    src.open()
    stream = sd.streams[0]
    block = stream.blocksize
    assert src.stats()["queue_overflows"] == 4
    first = [src.read(0.0), src.read(0.0)]
    assert [c.first_sample_index for c in first if c] == [0, block]
    assert src.read(0.0) is None
    stream.pump(2, input_overflow=True)
    after = src.read(0.0)
    assert after is not None and after.discontinuity
    assert after.first_sample_index == 6 * block  # advanced by the dropped audio
    nxt = src.read(0.0)
    assert nxt is not None and not nxt.discontinuity and nxt.first_sample_index == 7 * block
    stats = src.stats()
    assert stats["input_overflows"] == 2
    assert stats["dropped_s"] == pytest.approx(4 * block / 44100, abs=1e-3)
    assert stats["reconnects"] == 0
    src.close()


# -- device loss --------------------------------------------------------------------------------


@pytest.mark.parametrize("unplug_mode", ["stall", "error"])
def test_device_lost_then_back_reconnects_with_aligned_index(unplug_mode: str) -> None:
    rate = 22050
    sd = FakeSoundDevice(DEVICES)
    sd.unplug_mode = unplug_mode
    src = _mic(
        sd,
        "hw:1",
        target_rate_hz=rate,
        block_s=0.02,
        stall_s=0.2,
        backoff=BackoffConfig(initial_s=0.05, max_s=0.1),
    )
    t_open = time.monotonic()
    src.open()
    before = _read_for(src, rate // 5)
    t_unplug = time.monotonic()
    sd.unplug("USB Audio Device: - (hw:1,0)")
    while time.monotonic() - t_unplug < 0.6:  # meanwhile read() keeps returning, never raises
        c = src.read(0.05)
        if c is not None:
            before.append(c)
    assert src.stats()["connected"] == 0
    assert sd.initialize_calls >= 3  # several reopen attempts (each re-enumerates) while gone
    t_plug = time.monotonic()
    sd.plug("USB Audio Device: - (hw:1,0)")
    gap_chunk = None
    end = time.monotonic() + 10
    while gap_chunk is None and time.monotonic() < end:
        c = src.read(0.1)
        if c is not None and c.discontinuity:
            gap_chunk = c
        elif c is not None:
            before.append(c)
    t_seen = time.monotonic()
    assert gap_chunk is not None
    for a, b in itertools.pairwise(before):  # continuous up to the gap
        assert b.first_sample_index == a.end_sample_index and not b.discontinuity
    prev_end = before[-1].end_sample_index
    # the index jumped by at least the time the device was away, and not past real time
    assert gap_chunk.first_sample_index - prev_end >= (t_plug - t_unplug - 0.1) * rate
    assert gap_chunk.first_sample_index <= (t_seen - t_open) * rate
    stats = src.stats()
    assert stats["reconnects"] == 1 and stats["connected"] == 1
    assert stats["gap_s"] == pytest.approx(
        (gap_chunk.first_sample_index - prev_end) / rate, abs=1e-3
    )
    assert len(sd.streams) == 2 and sd.streams[0].closed
    nxt = src.read(2.0)  # and audio flows on, contiguous again
    assert nxt is not None and not nxt.discontinuity
    assert nxt.first_sample_index == gap_chunk.end_sample_index
    src.close()
    assert sd.streams[1].closed


# -- back-off -----------------------------------------------------------------------------------


def test_backoff_grows_and_is_capped() -> None:
    b = Backoff(BackoffConfig(initial_s=1.0, max_s=10.0), jitter=0.0)
    assert [b.next_delay() for _ in range(7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    b.reset()
    assert b.next_delay() == 1.0


def test_backoff_jitter_stays_below_the_cap() -> None:
    b = Backoff(BackoffConfig(initial_s=0.5, max_s=4.0), rng=random.Random(3))
    delays = [b.next_delay() for _ in range(200)]
    bases = [min(4.0, 0.5 * 2**k) for k in range(200)]
    assert all(0.75 * base <= d <= base for d, base in zip(delays, bases, strict=True))
    assert len(set(delays)) > 150  # jittered, not constant


def test_factory_builds_a_mic_source_without_touching_portaudio() -> None:
    from agent.audio.factory import make_sources
    from agent.config import AudioConfig

    audio = AudioConfig(
        source="microphone",
        device="USB",
        capture_rate_hz=48000,
        input_channels=2,
        block_s=0.05,
        queue_s=5.0,
        reopen_backoff=BackoffConfig(initial_s=2.0, max_s=8.0),
    )
    (src,) = list(make_sources(audio, 22050))
    assert isinstance(src, MicSource)
    assert (
        src.device,
        src.target_rate_hz,
        src.capture_rate_hz,
        src.input_channels,
        src.block_s,
    ) == ("USB", 22050, 48000, 2, 0.05)
    assert src._backoff.initial_s == 2.0 and src._backoff.max_s == 8.0
    assert src._queue.maxsize == 100
