"""Free space on the outbox's file system, and a reserve file that keeps its deletes possible.

A SQLite write needs disk space even when it only deletes: the WAL grows by the pages it
changes, and after a restart the WAL and its shared-memory index must be created again. On a
disk that something else has filled, the agent could then neither delete the rows the broker
acknowledged (so they are sent again at every start) nor make room for new ones. The
:class:`DiskReserve` is a small file of zeros written while there is room; when a write fails
for want of space the outbox releases it, and that space is what the delete (or the prune that
makes room) is written with. It is written again once the disk has room.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

_BLOCK = 64 * 1024


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on the file system of ``path`` (statvfs
    ``f_bavail``: what ext4 keeps for root is not counted), None if it cannot be read."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return int(st.f_bavail) * int(st.f_frsize)


def create_private(path: Path) -> None:
    """Create ``path`` (empty) readable by its owner only, whatever the umask; an existing
    file is narrowed to 0600 (it may come from an agent that created it 0644)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


class DiskReserve:
    """``size_bytes`` of zeros in ``path``, released when the disk is full (see module doc)."""

    def __init__(self, path: Path, size_bytes: int) -> None:
        self.path = path
        self.size_bytes = size_bytes
        self.releases = 0  # how often the reserve had to be given up

    @property
    def held(self) -> bool:
        try:
            return self.path.stat().st_size >= self.size_bytes
        except OSError:
            return False

    def restore(self) -> bool:
        """Write the reserve if it is missing and the disk has room for it and more; True if
        it is held afterwards. A partial file (the disk filled meanwhile) is removed."""
        if self.size_bytes <= 0 or self.held:
            return self.size_bytes > 0
        free = free_bytes(self.path.parent)
        if free is None or free < 2 * self.size_bytes:
            return False
        try:
            create_private(self.path)
            with open(self.path, "r+b") as f:
                zeros = bytes(_BLOCK)
                for offset in range(0, self.size_bytes, _BLOCK):
                    f.write(zeros[: min(_BLOCK, self.size_bytes - offset)])
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.path.unlink()
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                log.warning("cannot write the outbox's disk reserve %s: %s", self.path, exc)
            return False
        return True

    def release(self) -> bool:
        """Delete the reserve to free its space; True if there was one to give up."""
        held = self.held
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if held:
            self.releases += 1
        return held
