"""Detection: what the agent reports. One payload definition shared by every sink."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DETECTION_SCHEMA = "chorus.detection/1"


def _iso(t: datetime) -> str:
    """RFC 3339 UTC with milliseconds and a trailing Z."""
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Detection:
    """One detection event: a species heard from ``start_utc`` to ``end_utc``.

    ``channel`` names the channel whose score won the max over channels: ``"mix"`` for the
    original audio, ``"sep0"`` … ``"sep{M-1}"`` for the separated channels. ``id`` is unique and
    stable: it is assigned once, so a re-delivered message carries the same id.
    """

    species_code: str
    scientific_name: str
    common_name: str
    confidence: float  # sigmoid of the combined logit, 0..1
    logit: float
    start_utc: datetime
    end_utc: datetime
    start_s: float  # offset from the start of the stream / file
    end_s: float
    channel: str
    classifier: str
    bundle_name: str
    bundle_version: str
    device_id: str
    source: str  # e.g. "file:dawn.wav" or "mic:default"
    windows: int = 1  # how many analysis windows were merged into this event
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_payload(self) -> dict[str, Any]:
        """The JSON object every sink writes (JSONL line, MQTT message)."""
        return {
            "schema": DETECTION_SCHEMA,
            "id": self.id,
            "device": self.device_id,
            "species": {
                "code": self.species_code,
                "scientific_name": self.scientific_name,
                "common_name": self.common_name,
            },
            "confidence": round(self.confidence, 6),
            "logit": round(self.logit, 6),
            "start_utc": _iso(self.start_utc),
            "end_utc": _iso(self.end_utc),
            "start_s": round(self.start_s, 6),
            "end_s": round(self.end_s, 6),
            "channel": self.channel,
            "windows": self.windows,
            "model": {
                "bundle": self.bundle_name,
                "version": self.bundle_version,
                "classifier": self.classifier,
            },
            "source": self.source,
        }
