"""The OTA test harness of test_ota.py and test_ota_agent.py: bundles made from the demo bundle
(signed, tampered, NaN), the agent's live loop on demo audio released window by window
(RunningAgent), and the baseline detections of that audio without updates. The fixtures that
tie them together (``audio``, ``baseline``, ``running``) are in conftest.py."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from mqtt_helpers import RawPublisher, wait_until

from agent.app import build_engine, run_live
from agent.audio.chunk import AudioChunk, StreamInfo
from agent.config import AgentConfig, parse_config
from agent.demo import make_demo_soundscape
from agent.detection.types import Detection
from agent.models.manifest import MANIFEST_NAME, write_manifest
from agent.ota.announce import build_announcement, chunk_topic
from agent.ota.signing import (
    generate_key,
    load_private_key,
    sign_bundle,
    sign_document,
)
from agent.ota.updater import Updater, prepare_start
from modeltools.ota.publish import publish_update

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "agent" / "bundles" / "demo"
RATE_HZ = 22050
HOP = int(2.5 * RATE_HZ)
DEVICE = "field-01"
STATE_TOPIC = f"chorus/{DEVICE}/models/state"
UPDATE_TOPIC = f"chorus/{DEVICE}/cmd/update"
GROUP_TOPIC = "chorus/_group/north/cmd/update"
T0 = datetime(2026, 5, 1, 4, 0, tzinfo=UTC)
AUDIO_S = 150.0


def target_of(topic: str) -> str:
    """The roll-out target whose command topic ``topic`` is (chorus/<level>/...)."""
    level = topic.split("/")
    if level[1] == "_all":
        return "all"
    return f"group:{level[2]}" if level[1] == "_group" else f"device:{level[1]}"


# ---------------------------------------------------------------------------------------------
# Bundles


def make_bundle(
    tmp_path: Path,
    version: str,
    key: Path | None,
    mutate: Callable[[Path, dict[str, Any]], None] | None = None,
) -> Path:
    """A copy of the demo bundle at ``version``, changed by ``mutate(dir, manifest fields)``
    before the manifest is written, signed with ``key`` (None: unsigned)."""
    out = tmp_path / f"bundle-{version}-{len(list(tmp_path.glob('bundle-*')))}"
    shutil.copytree(DEMO, out)
    fields = json.loads((out / MANIFEST_NAME).read_text())
    fields = {k: v for k, v in fields.items() if k not in ("format", "format_version", "files")}
    fields["version"] = version
    if mutate is not None:
        mutate(out, fields)
    write_manifest(out, fields)
    if key is not None:
        sign_bundle(out, load_private_key(key))
    return out


def nan_separator(bundle: Path, fields: dict[str, Any]) -> None:
    """Overwrite the separator's FIR weights with NaN (found by their bytes in the file)."""
    from ai_edge_litert.interpreter import Interpreter

    path = bundle / "separator.tflite"
    data = bytearray(path.read_bytes())
    interpreter = Interpreter(model_content=bytes(data))
    for detail in interpreter.get_tensor_details():
        try:
            weights = interpreter.get_tensor(detail["index"])
        except ValueError:
            continue
        if weights.dtype == np.float32 and weights.size > 16:
            offset = bytes(data).find(weights.tobytes())
            assert offset > 0
            nan = np.full(weights.shape, np.nan, np.float32).tobytes()
            data[offset : offset + len(nan)] = nan
    path.write_bytes(bytes(data))


def raw_archive(members: list[tuple[str, bytes | None, bytes]]) -> bytes:
    """A tar.gz built by hand: (name, data or None, tar type) — for archives the packer never
    makes (links, absolute paths, unlisted files)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = "/etc/passwd"
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def bundle_members(bundle: Path) -> list[tuple[str, bytes | None, bytes]]:
    return [
        (p.relative_to(bundle).as_posix(), p.read_bytes(), tarfile.REGTYPE)
        for p in sorted(bundle.rglob("*"))
        if p.is_file()
    ]


# ---------------------------------------------------------------------------------------------
# The running agent


class GatedSource:
    """Demo audio as a live stream; the test releases it chunk by chunk (one hop each)."""

    def __init__(self, audio: np.ndarray) -> None:
        self.audio = audio
        self.total = len(audio) // HOP
        self.served = 0
        self.allowed = 0
        self.ended = False
        self._cond = threading.Condition()

    def open(self) -> StreamInfo:
        return StreamInfo("test:gated", RATE_HZ, T0, None)

    def read(self, timeout_s: float) -> AudioChunk | None:
        with self._cond:
            if self.served >= self.allowed and not self.ended:
                self._cond.wait(min(timeout_s, 0.05))
            if self.served >= min(self.allowed, self.total):
                return None
            i = self.served
            self.served += 1
        return AudioChunk(self.audio[i * HOP : (i + 1) * HOP], i * HOP)

    @property
    def finished(self) -> bool:
        return self.ended and self.served >= min(self.allowed, self.total)

    def release(self, n: int = 1) -> None:
        with self._cond:
            self.allowed = min(self.allowed + n, self.total)
            self._cond.notify_all()

    def end(self) -> None:
        with self._cond:
            self.ended = True
            self._cond.notify_all()

    def close(self) -> None:
        pass

    def stats(self) -> dict[str, int | float]:
        return {}


class ListSink:
    def __init__(self) -> None:
        self.detections: list[Detection] = []

    def emit(self, detection: Detection) -> None:
        self.detections.append(detection)

    def close(self) -> None:
        pass


def agent_config(
    broker: Any, tmp_path: Path, public_key: Path, device: str = DEVICE, **updates: Any
) -> AgentConfig:
    u = {
        "enabled": True,
        "trusted_keys": [str(public_key)],
        "store_dir": str(tmp_path / "store"),
        "confirm_windows": 3,
        "smoke_timeout_s": 120.0,
        "transfer_timeout_s": 60.0,
    }
    u.update(updates)
    return parse_config(
        {
            "device_id": device,
            "inference": {"bundle": str(DEMO), "num_threads": 1},
            "detection": {"merge": False},  # one detection per window: exact comparison
            "mqtt": {
                "enabled": True,
                "host": broker.host,
                "port": broker.port,
                "outbox_path": str(tmp_path / "outbox.sqlite"),
                "reconnect_backoff": {"initial_s": 0.2, "max_s": 1.0},
            },
            "updates": u,
        }
    )


def _key(d: Detection) -> tuple[str, float, float]:
    return (d.species_code, round(d.start_s, 3), round(d.end_s, 3))


class RunningAgent:
    """run_live in a thread with an Updater, gated demo audio and a state subscriber."""

    def __init__(
        self,
        broker: Any,
        tmp_path: Path,
        audio: np.ndarray,
        subscribe: Callable[..., Any],
        device: str = DEVICE,
        **updates: Any,
    ) -> None:
        self.broker = broker
        self.key = tmp_path / "keys" / "lab.key"
        _, public = generate_key(self.key)
        self.config = agent_config(broker, tmp_path, public, device, **updates)
        prepare_start(self.config)  # as `chorus-agent run` does before loading models
        self.engine = build_engine(self.config)
        self.sink = ListSink()
        self.source = GatedSource(audio)
        self.states = subscribe(broker, f"chorus/{device}/models/state")
        self.updater = Updater(self.config, self.engine)
        self.updater.start()
        assert wait_until(lambda: self.updater.connected, 10.0), "updater did not connect"
        self.thread = threading.Thread(
            target=run_live,
            args=(self.engine, [self.source], [self.sink], threading.Event()),
            kwargs={"updater": self.updater, "status_interval_s": 3600.0},
            daemon=True,
        )
        self.thread.start()
        self.pump(3)  # the first windows, on the factory bundle

    @property
    def version(self) -> str:
        return self.engine.models.bundle.manifest.version

    def pump(self, chunks: int) -> None:
        """Release ``chunks`` chunks and wait until the pipeline processed them all."""
        self.source.release(chunks)
        assert wait_until(lambda: self.source.served >= self.source.allowed, 30.0)
        # A served chunk is processed before the next read: wait for that read too.
        target = max(0, self.source.served - 1)
        assert wait_until(
            lambda: self.engine.stats.windows + self.engine.stats.window_errors >= target, 30.0
        )

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.states.messages if m.payload]

    def wait_state(
        self,
        state: str,
        request_id: str | None = None,
        contains: str = "",
        timeout_s: float = 90.0,
        reserve: int = 12,
    ) -> dict[str, Any]:
        """Wait for a state message, releasing audio meanwhile (keeping ``reserve`` chunks)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for m in self.messages():
                if (
                    m["state"] == state
                    and request_id in (None, m["request_id"])
                    and contains in (m["reason"] or "")
                ):
                    return m
            if self.source.total - self.source.allowed > reserve:
                self.source.release(1)
            time.sleep(0.05)
        raise AssertionError(f"no {state!r} state within {timeout_s} s; got {self.messages()}")

    def publish(self, bundle: Path, **kw: Any) -> str:
        result = publish_update(
            bundle,
            self.key,
            host=self.broker.host,
            port=self.broker.port,
            target=kw.pop("target", f"device:{DEVICE}"),
            **kw,
        )
        return result.request_id

    def publish_raw(
        self,
        archive: bytes,
        *,
        version: str,
        name: str = "chorus-demo",
        chunk_bytes: int = 256 * 1024,
        order: list[int] | None = None,
        key: Path | None = None,
        issued_utc: datetime | None = None,
        topic: str = UPDATE_TOPIC,
        target: str | None = None,
    ) -> dict[str, Any]:
        """Publish a hand-made archive: chunks in ``order`` (default all, in order), then a
        signed announcement on ``topic`` (for ``target``, default the topic's); returns the
        announcement."""
        chunks = [archive[i : i + chunk_bytes] for i in range(0, len(archive), chunk_bytes)]
        doc = build_announcement(
            name=name,
            version=version,
            sha256=hashlib.sha256(archive).hexdigest(),
            size_bytes=len(archive),
            chunk_sha256=[hashlib.sha256(c).hexdigest() for c in chunks],
            chunk_bytes=chunk_bytes,
            issued_utc=issued_utc,
            target=target or target_of(topic),
        )
        doc = sign_document(doc, load_private_key(key or self.key))
        pub = RawPublisher(self.broker.host, self.broker.port)
        try:
            for i in range(len(chunks)) if order is None else order:
                pub.publish(chunk_topic(topic, doc["request_id"], i), chunks[i], True)
            pub.publish(topic, json.dumps(doc), retain=True)
        finally:
            pub.close()
        return doc

    def check_no_loss(self, baseline: list[Detection]) -> None:
        """Every window released so far was processed without error, with the detections
        the baseline run made for those windows."""
        self.pump(0)
        stats = self.engine.stats
        assert stats.window_errors == 0 and stats.dropped_samples == 0
        assert stats.windows == self.source.served - 1
        end_s = stats.windows * HOP / RATE_HZ
        expected = sorted(_key(d) for d in baseline if d.start_s < end_s - 1e-6)
        assert sorted(_key(d) for d in self.sink.detections) == expected

    def close(self) -> None:
        self.source.end()
        self.thread.join(30.0)
        assert not self.thread.is_alive()


def demo_audio() -> np.ndarray:
    return make_demo_soundscape(AUDIO_S, RATE_HZ, seed=3).audio


def baseline_detections(audio: np.ndarray) -> list[Detection]:
    """The detections of the demo bundle on ``audio``, without any update machinery."""
    config = parse_config({"inference": {"bundle": str(DEMO)}, "detection": {"merge": False}})
    engine = build_engine(config)
    sink = ListSink()
    proc = engine.processor(StreamInfo("test:gated", RATE_HZ, T0, None), [sink])
    for i in range(len(audio) // HOP):
        proc.push(AudioChunk(audio[i * HOP : (i + 1) * HOP], i * HOP))
    assert sink.detections, "the demo audio must produce detections"
    return sink.detections


@contextlib.contextmanager
def agents(
    broker: Any, tmp_path: Path, audio: np.ndarray, subscribe: Callable
) -> Iterator[Callable[..., RunningAgent]]:
    """``start(**updates)`` -> a RunningAgent; every one is stopped at the end."""
    made: list[RunningAgent] = []

    def start(device: str = DEVICE, **updates: Any) -> RunningAgent:
        folder = tmp_path if device == DEVICE else tmp_path / device  # own store and outbox
        folder.mkdir(exist_ok=True)
        made.append(RunningAgent(broker, folder, audio, subscribe, device, **updates))
        return made[-1]

    try:
        yield start
    finally:
        for agent in made:
            if agent.thread.is_alive():
                agent.close()
