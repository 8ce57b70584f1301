"""Detect wall-clock jumps under a running audio stream.

Detections are stamped from the audio sample clock, anchored once to the wall clock when the
stream opens (``StreamInfo.start_utc``). A Raspberry Pi has no real-time clock: it often boots
with the time it was shut down (fake-hwclock) and NTP steps the clock minutes or months later.
Sample time then disagrees with the corrected wall clock by the size of the step.

Behaviour (documented in README "Deploy on a Raspberry Pi"): every few seconds the agent compares
``anchor_wall + (monotonic now - anchor_monotonic)`` with the wall clock. When they differ by more
than ``tolerance_s`` (default 2 s, far above drift between the two clocks over a day), the jump
is logged, open detection events are closed with the timestamps they had, and the stream is
re-anchored: later windows are stamped on the corrected clock. Nothing is dropped and no audio
is re-windowed; only timestamps after the jump move.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class ClockMonitor:
    """Reports the size of a wall-clock step relative to the monotonic clock."""

    def __init__(
        self,
        tolerance_s: float = 2.0,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tolerance_s = tolerance_s
        self._wall, self._mono = wall, monotonic
        self._anchor_wall = wall()
        self._anchor_mono = monotonic()
        self.jumps = 0

    def check(self) -> float | None:
        """Seconds the wall clock jumped since the last anchor (+ forward), or None.

        A detected jump re-anchors the monitor, so each step is reported once.
        """
        expected = self._anchor_wall + (self._mono() - self._anchor_mono)
        now = self._wall()
        jump = now - expected
        if abs(jump) <= self.tolerance_s:
            return None
        self._anchor_wall, self._anchor_mono = now, self._mono()
        self.jumps += 1
        return jump
