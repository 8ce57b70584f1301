"""Exponential back-off with jitter, for reopening lost devices and reconnecting to brokers."""

from __future__ import annotations

import random

from agent.config import BackoffConfig


class Backoff:
    """Exponential back-off: ``initial_s * 2**k`` capped at ``max_s``, minus up to 25 % jitter."""

    def __init__(
        self, config: BackoffConfig, rng: random.Random | None = None, jitter: float = 0.25
    ) -> None:
        self.initial_s = config.initial_s
        self.max_s = config.max_s
        self.jitter = jitter
        self._rng = rng or random.Random()
        self.attempts = 0

    def next_delay(self) -> float:
        """The wait before the next attempt; grows with each call until :meth:`reset`."""
        base = min(self.max_s, self.initial_s * 2.0 ** min(self.attempts, 60))
        self.attempts += 1
        # Jitter only shortens, so max_s stays a hard cap; it spreads retries of many devices.
        return base * (1.0 - self.jitter * self._rng.random())

    def reset(self) -> None:
        self.attempts = 0
