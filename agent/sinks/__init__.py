"""Detection sinks: where detections go (JSONL/CSV logs, Raven tables, MQTT).

Every sink has the same two methods, so the pipeline can fan a detection out to any mix of them.
The MQTT sink lives in :mod:`agent.sinks.mqtt` and is imported only when MQTT is enabled, so the
file sinks work without paho-mqtt installed.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from agent.detection.types import Detection

__all__ = ["Sink"]


@runtime_checkable
class Sink(Protocol):
    """Receives detections. Implementations must not raise for a well-formed detection."""

    def emit(self, detection: Detection) -> None:
        """Record or send one detection."""
        ...

    def close(self) -> None:
        """Flush and release resources. Idempotent; ``emit`` after ``close`` is an error."""
        ...
