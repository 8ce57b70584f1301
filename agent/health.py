"""The status heartbeat: what ``<prefix>/<device>/status`` carries (schema ``chorus.status/1``).

:func:`build_status` is a pure function of counters, so the payload is unit-tested against its
JSON Schema; the MQTT output publishes it retained every ``mqtt.status_interval_s`` and after
each reconnect. Sinks that want the pipeline's counters implement :class:`TickListener`;
:func:`agent.app.run_live` calls them from the pipeline thread (they must be quick).
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from agent import __version__

if TYPE_CHECKING:
    from agent.audio.chunk import AudioSource
    from agent.forwarder import ForwarderStats
    from agent.outbox import OutboxStats
    from agent.pipeline import PipelineStats, StreamProcessor
    from agent.sinks.mqtt import MqttStats

STATUS_SCHEMA = "chorus.status/1"
_OVERFLOW_KEYS = ("input_overflows", "queue_overflows")


@runtime_checkable
class TickListener(Protocol):
    """Called by the live loop on every pipeline tick (a few times per second)."""

    def on_tick(self, processor: StreamProcessor, source: AudioSource) -> None: ...


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def disk_free_bytes(path: Path) -> int | None:
    """Free bytes on the file system holding ``path`` (None if it cannot be read)."""
    try:
        return int(shutil.disk_usage(path).free)
    except OSError:
        return None


def audio_overflows(source_stats: dict[str, int | float] | None) -> int:
    """Audio blocks lost to device or queue overflows, from a source's ``stats()``."""
    stats = source_stats or {}
    return sum(int(stats.get(k, 0)) for k in _OVERFLOW_KEYS)


def cpu_temperature_c(zone: Path = Path("/sys/class/thermal/thermal_zone0/temp")) -> float | None:
    """SoC temperature where the kernel exposes it (Raspberry Pi: thermal_zone0), else None."""
    try:
        return round(int(zone.read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None


def rss_bytes() -> int | None:
    """Resident set size of this process, from /proc (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def system_metrics() -> dict[str, Any]:
    """The ``system`` part of the status payload: temperature, load, memory."""
    try:
        load_1m: float | None = round(os.getloadavg()[0], 2)
    except OSError:
        load_1m = None
    return {"cpu_temp_c": cpu_temperature_c(), "load_1m": load_1m, "rss_bytes": rss_bytes()}


def pipeline_counters(stats: PipelineStats) -> dict[str, Any]:
    """The pipeline part of the status payload."""
    return {
        "windows": stats.windows,
        "detections": stats.detections,
        "real_time_factor": round(stats.real_time_factor, 4),
        "audio_s": round(stats.audio_s, 3),
        "window_errors": stats.window_errors,
        "dropped_samples": stats.dropped_samples,
        "sink_errors": stats.sink_errors,
    }


def build_status(
    *,
    device_id: str,
    uptime_s: float,
    pipeline: dict[str, Any] | None,
    source_name: str | None,
    source_stats: dict[str, int | float] | None,
    bundle: tuple[str, str] | None,
    outbox: OutboxStats,
    forwarder: ForwarderStats,
    mqtt: MqttStats,
    state_dir: Path,
    time_utc: str | None = None,
) -> dict[str, Any]:
    """One ``chorus.status/1`` payload (see ``agent/schemas/status.schema.json``)."""
    audio_stats = {
        k: int(v) if isinstance(v, bool) else v
        for k, v in (source_stats or {}).items()
        if isinstance(v, int | float)
    }
    overflows = audio_overflows(audio_stats)
    return {
        "schema": STATUS_SCHEMA,
        "device": device_id,
        "time_utc": time_utc or utc_now_iso(),
        "agent_version": __version__,
        "uptime_s": round(uptime_s, 1),
        "model": None if bundle is None else {"bundle": bundle[0], "version": bundle[1]},
        "pipeline": pipeline
        or {
            "windows": 0,
            "detections": 0,
            "real_time_factor": 0.0,
            "audio_s": 0.0,
            "window_errors": 0,
            "dropped_samples": 0,
            "sink_errors": 0,
        },
        "audio": {"source": source_name, "overflows": overflows, "stats": audio_stats},
        "outbox": {
            "depth": outbox.depth,
            "oldest_age_s": None if outbox.oldest_age_s is None else round(outbox.oldest_age_s, 1),
            "inflight": forwarder.inflight,
            "pruned_total": outbox.pruned_total,
            "pruned_disk": outbox.pruned_disk,
            "delivered": forwarder.acked,
        },
        "mqtt": {"connects": mqtt.connects, "connect_failures": mqtt.connect_failures},
        "disk": {
            "path": str(state_dir),
            "free_bytes": disk_free_bytes(state_dir),
            "below_floor": outbox.below_floor,
            "reserve_held": outbox.reserve_held,
        },
        "system": system_metrics(),
    }
