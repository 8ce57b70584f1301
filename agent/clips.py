"""Detection audio clips on disk, with retention that never fills the SD card.

For each detection the agent can keep the audio that produced it: the original mix and the
separated channel that won, as FLAC (lossless, about half of WAV) or WAV, named
``<YYYY-MM-DD>/<start-utc>_<species>_<id8>_{mix,<channel>}.<ext>``.

Retention runs after every save and on demand:
* clips older than ``max_age_days`` are deleted;
* while the clips take more than ``max_total_mb``, the oldest are deleted;
* a hard floor: while the file system has less than ``min_free_mb`` free, the oldest clips are
  deleted, and if that is not enough the new clip is not written (counted, logged once).
Deletion order is by the clip's recorded start time (its file name), oldest first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from agent.detection.types import Detection

log = logging.getLogger(__name__)

MB = 1_000_000


@dataclass
class ClipStats:
    saved: int = 0
    skipped_low_disk: int = 0
    deleted_age: int = 0
    deleted_size: int = 0
    deleted_floor: int = 0


@dataclass
class ClipStore:
    root: Path
    max_age_days: float = 30.0
    max_total_mb: float = 1000.0
    min_free_mb: float = 500.0
    fmt: str = "flac"  # flac | wav
    stats: ClipStats = field(default_factory=ClipStats)
    disk_free: Callable[[], int] | None = field(default=None, repr=False)  # default: statvfs

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        if self.fmt not in ("flac", "wav"):
            raise ValueError(f"clip format must be flac or wav, got {self.fmt!r}")

    # -- writing -------------------------------------------------------------------------------

    def save(
        self, detection: Detection, audio: dict[str, np.ndarray], sample_rate_hz: int
    ) -> list[Path]:
        """Write one file per channel in ``audio`` (e.g. {"mix": x, "sep2": y}); apply retention.

        Returns the files written (empty when the disk floor does not allow it).
        """
        size_estimate = sum(a.size for a in audio.values()) * 2  # 16-bit PCM upper bound
        self.enforce(extra_bytes=size_estimate)
        if self._free_bytes() - size_estimate < self.min_free_mb * MB:
            if self.stats.skipped_low_disk == 0:
                log.warning(
                    "clip not saved: less than %.0f MB free under %s", self.min_free_mb, self.root
                )
            self.stats.skipped_low_disk += 1
            return []
        day = detection.start_utc.strftime("%Y-%m-%d")
        stamp = detection.start_utc.strftime("%Y%m%dT%H%M%S%fZ")
        folder = self.root / day
        folder.mkdir(exist_ok=True)
        written = []
        for channel, x in audio.items():
            name = f"{stamp}_{detection.species_code}_{detection.id[:8]}_{channel}.{self.fmt}"
            tmp = folder / f".{name}.part"
            sf.write(
                tmp,
                np.clip(x, -1.0, 1.0),
                sample_rate_hz,
                subtype="PCM_16",
                format=self.fmt.upper(),
            )
            os.replace(tmp, folder / name)  # never a half-written clip under its real name
            written.append(folder / name)
        self.stats.saved += 1
        return written

    # -- retention -----------------------------------------------------------------------------

    def clips(self) -> list[Path]:
        """All clip files, oldest (by recorded start time) first."""
        return sorted(
            (p for p in self.root.glob("*/*") if p.suffix in (".flac", ".wav")),
            key=lambda p: p.name,
        )

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.clips())

    def enforce(self, now: float | None = None, extra_bytes: int = 0) -> None:
        """Apply age, size and free-space rules (``extra_bytes``: about to be written)."""
        now = time.time() if now is None else now
        files = self.clips()
        keep = []
        for p in files:
            if now - p.stat().st_mtime > self.max_age_days * 86400:
                self._delete(p)
                self.stats.deleted_age += 1
            else:
                keep.append(p)
        total = sum(p.stat().st_size for p in keep)
        while keep and total + extra_bytes > self.max_total_mb * MB:
            p = keep.pop(0)
            total -= p.stat().st_size
            self._delete(p)
            self.stats.deleted_size += 1
        while keep and self._free_bytes() - extra_bytes < self.min_free_mb * MB:
            self._delete(keep.pop(0))
            self.stats.deleted_floor += 1

    def _free_bytes(self) -> int:
        if self.disk_free is not None:
            return int(self.disk_free())
        return shutil.disk_usage(self.root).free

    def _delete(self, p: Path) -> None:
        p.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            p.parent.rmdir()  # drop a day folder once it is empty
