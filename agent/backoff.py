"""Exponential back-off with jitter, for reopening lost devices and reconnecting to brokers."""

from __future__ import annotations

import random

from agent.config import BackoffConfig


def backoff_delay_s(
    attempt: int, initial_s: float, max_s: float, rng: random.Random, jitter: float = 0.5
) -> float:
    """Delay before attempt ``attempt`` (0-based): the ceiling doubles from ``initial_s`` up to
    ``max_s``, and the delay is drawn uniformly from its top ``1 - jitter`` .. 1 share.

    Jitter only shortens, so ``max_s`` stays a hard cap, and the delay still grows (no
    hammering) while devices that lost the same broker spread out (no storms). ``jitter=0.5``
    is "equal jitter" (MQTT reconnects, the collector); device reopening uses 0.25.
    """
    ceiling = min(max_s, initial_s * 2.0 ** min(attempt, 62))
    return ceiling * (1.0 - jitter * rng.random())


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
        delay = backoff_delay_s(self.attempts, self.initial_s, self.max_s, self._rng, self.jitter)
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0
