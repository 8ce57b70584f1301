from __future__ import annotations

from agent.clock import ClockMonitor


class Clocks:
    def __init__(self) -> None:
        self.wall, self.mono = 1_000_000.0, 50.0

    def tick(self, s: float) -> None:
        self.wall += s
        self.mono += s


def test_no_jump_while_clocks_advance_together() -> None:
    c = Clocks()
    m = ClockMonitor(2.0, wall=lambda: c.wall, monotonic=lambda: c.mono)
    for _ in range(100):
        c.tick(5.0)
        c.wall += 0.001  # NTP slewing: small drift is not a jump
        assert m.check() is None


def test_forward_and_backward_steps_are_reported_once() -> None:
    c = Clocks()
    m = ClockMonitor(2.0, wall=lambda: c.wall, monotonic=lambda: c.mono)
    c.tick(10.0)
    c.wall += 3600.0 * 24 * 30  # NTP sync after a month-old boot time
    assert m.check() == 3600.0 * 24 * 30
    c.tick(5.0)
    assert m.check() is None  # re-anchored
    c.wall -= 7.5
    assert m.check() == -7.5 and m.jumps == 2
