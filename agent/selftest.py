"""``chorus-agent selftest``: check every part a field recorder needs, print a pass/fail table.

Checks, in order (each one independent; a failure never stops the others):

| check      | passes when                                                                    |
| ---------- | ------------------------------------------------------------------------------ |
| config     | the YAML is valid (else nothing else can run: the table stops there)           |
| models     | the bundle (and BirdNET files, if configured) load with matching shapes        |
| golden     | the bundle's golden input reproduces its expected outputs                       |
| microphone | the configured input delivers audio at the expected rate and above a level floor |
| broker     | MQTT is disabled, or the broker accepts our connection (TLS and password too)  |
| disk       | the state directory has at least ``storage.clips.min_free_mb`` (and 100 MB) free |

Exit code 0 when every check passes, 1 otherwise (2 for an unusable config, as everywhere).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.config import AgentConfig
from agent.errors import ChorusError

MIC_SECONDS = 3.0
# Rate within 10 %: catches a wrong-rate device (16 kHz is 27 % off, 44.1 kHz 100 %) while
# tolerating bursty delivery on a loaded machine.
MIC_RATE_TOLERANCE = 0.10
WARMUP_S = 0.5
MIC_FLOOR_DBFS = -90.0  # below this the input is digital silence (muted or unplugged)
MIN_FREE_MB = 100.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _run(name: str, fn: Callable[[], str]) -> Check:
    try:
        return Check(name, True, fn())
    except ChorusError as exc:
        return Check(name, False, str(exc).splitlines()[0])
    except Exception as exc:  # a self-test reports, it does not crash
        return Check(name, False, f"{type(exc).__name__}: {exc}")


def check_models(config: AgentConfig) -> tuple[Check, Check]:
    from agent.app import build_models
    from agent.models.golden import smoke_test

    holder: dict[str, object] = {}

    def load() -> str:
        models = build_models(config)
        holder["models"] = models
        m = models.bundle.manifest
        sep = (
            f"separator {m.separator.num_sources} ch"
            if models.separator and m.separator
            else "no separator"
        )
        names = ", ".join(f"{c.name} ({len(c.labels)} labels)" for c in models.classifiers)
        return f"{m.name} {m.version}: {sep}; {names}"

    loaded = _run("models", load)
    if "models" not in holder:
        return loaded, Check("golden", False, "models did not load")
    return loaded, _run("golden", lambda: smoke_test(holder["models"]))  # type: ignore[arg-type]


def check_microphone(
    config: AgentConfig, seconds: float = MIC_SECONDS, sd_module: object = None
) -> Check:
    def run() -> str:
        from agent.audio.mic_source import MicSource

        a = config.audio
        rate = 22050
        src = MicSource(
            a.device,
            rate,
            a.capture_rate_hz,
            a.input_channels,
            a.block_s,
            a.queue_s,
            a.reopen_backoff,
            sd_module,
        )
        info = src.open()
        try:
            # Warm-up: drop what queued before we started reading (PulseAudio and ALSA deliver
            # an initial burst), then time the steady stream between chunk arrivals.
            warm_end = time.monotonic() + WARMUP_S
            while time.monotonic() < warm_end:
                src.read(0.05)
            chunks: list[np.ndarray] = []
            arrivals: list[float] = []
            t0 = time.monotonic()
            while time.monotonic() - t0 < seconds:
                c = src.read(0.25)
                if c is not None:
                    arrivals.append(time.monotonic())
                    chunks.append(c.samples)
            stats = src.stats()
        finally:
            src.close()
        if len(chunks) < 5:
            raise ChorusError(f"{info.name}: almost no audio in {seconds:.0f} s")
        x = np.concatenate(chunks)
        # Delivery is bursty (blocks arrive late and in pairs): the least-squares slope of
        # samples received against arrival time is far steadier than first/last timing.
        received = np.cumsum([c.size for c in chunks])
        measured = float(np.polyfit(np.asarray(arrivals) - arrivals[0], received, 1)[0])
        if abs(measured - rate) > MIC_RATE_TOLERANCE * rate:
            raise ChorusError(
                f"{info.name}: {measured:.0f} samples/s, expected {rate} "
                f"(±{MIC_RATE_TOLERANCE:.0%})"
            )
        rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
        level = 20 * math.log10(rms) if rms > 0 else -math.inf
        if level < MIC_FLOOR_DBFS:
            raise ChorusError(
                f"{info.name}: input is silent ({level:.0f} dBFS): muted or unplugged?"
            )
        return (
            f"{info.name}: {measured:.0f} samples/s at {stats.get('capture_rate_hz')} Hz "
            f"capture, level {level:.1f} dBFS, {stats.get('input_overflows', 0)} overflows"
        )

    return _run("microphone", run)


def check_broker(config: AgentConfig, timeout_s: float = 5.0) -> Check:
    def run() -> str:
        m = config.mqtt
        if not m.enabled:
            return "MQTT disabled (mqtt.enabled: false)"
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from agent.sinks.mqtt import configure_client, connect_error_message

        done, result = threading.Event(), {}

        def on_connect(
            client: object, userdata: object, flags: object, rc: object, props: object = None
        ) -> None:
            result["rc"] = rc
            done.set()

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"chorus-selftest-{config.device_id}",
            protocol=mqtt.MQTTv311,
        )
        configure_client(client, m)
        client.on_connect = on_connect
        try:
            client.connect(m.host, m.port, keepalive=10)
        except OSError as exc:
            ca_file = m.tls.ca_file if m.tls.enabled else None
            message = connect_error_message(exc, f"{m.host}:{m.port}", ca_file)
            raise ChorusError(message) from None
        client.loop_start()
        try:
            if not done.wait(timeout_s):
                raise ChorusError(f"{m.host}:{m.port}: no CONNACK within {timeout_s:.0f} s")
            rc = result["rc"]
            if getattr(rc, "is_failure", False):
                raise ChorusError(f"{m.host}:{m.port}: broker refused the connection: {rc}")
        finally:
            client.disconnect()
            client.loop_stop()
        tls = " over TLS" if m.tls.enabled else ""
        return f"{m.host}:{m.port}{tls}: connected"

    return _run("broker", run)


def check_disk(config: AgentConfig) -> Check:
    def run() -> str:
        import shutil

        from agent.state import default_state_dir

        path = Path(config.storage.clips.dir) if config.storage.clips.dir else default_state_dir()
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free_mb = shutil.disk_usage(probe).free / 1e6
        need = max(
            MIN_FREE_MB, config.storage.clips.min_free_mb if config.storage.clips.enabled else 0.0
        )
        if free_mb < need:
            raise ChorusError(f"{path}: {free_mb:.0f} MB free, need at least {need:.0f} MB")
        return f"{path}: {free_mb:,.0f} MB free"

    return _run("disk", run)


def run_selftest(config: AgentConfig, mic_seconds: float = MIC_SECONDS) -> list[Check]:
    checks = [Check("config", True, f"device {config.device_id}, source {config.audio.source}")]
    checks += check_models(config)
    checks.append(check_microphone(config, mic_seconds))
    checks.append(check_broker(config))
    checks.append(check_disk(config))
    return checks


def format_table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  result  detail", f"{'-' * width}  ------  ------"]
    lines += [f"{c.name:<{width}}  {'PASS' if c.ok else 'FAIL':<6}  {c.detail}" for c in checks]
    failed = sum(not c.ok for c in checks)
    lines.append(f"{len(checks) - failed}/{len(checks)} checks passed")
    return "\n".join(lines)
