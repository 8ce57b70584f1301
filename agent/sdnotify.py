"""systemd notification protocol (sd_notify) with the standard library only.

The protocol is one datagram of ``KEY=value`` lines to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace). Outside systemd the variable is
unset and every call is a cheap no-op, so the agent runs the same way from a shell.

The watchdog is fed by the *pipeline*, not by a timer: :meth:`Watchdog.alive` is called after each
window is processed, so a stalled audio stream or a hung interpreter stops the pings and systemd
restarts the service (``WatchdogSec=`` in the unit).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return None
    return "\0" + addr[1:] if addr.startswith("@") else addr


def notify(**fields: str | int) -> bool:
    """Send ``KEY=value`` lines (e.g. ``READY=1``, ``STATUS=...``); False when not under systemd."""
    address = _address()
    if address is None:
        return False
    message = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:  # never let health reporting take the agent down
        log.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def watchdog_interval_s() -> float | None:
    """The watchdog period systemd expects for this process, or None if it has none."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


class Watchdog:
    """Pings ``WATCHDOG=1`` at most every ``interval/3``, only when the pipeline progresses."""

    def __init__(
        self,
        interval_s: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = watchdog_interval_s() if interval_s is None else interval_s
        self._monotonic = monotonic
        self._last = float("-inf")
        self.pings = 0

    @property
    def enabled(self) -> bool:
        return self.interval_s is not None and _address() is not None

    def alive(self) -> None:
        """Call after each processed window."""
        if not self.enabled:
            return
        now = self._monotonic()
        assert self.interval_s is not None
        if now - self._last >= self.interval_s / 3 and notify(watchdog=1):
            self._last = now
            self.pings += 1
