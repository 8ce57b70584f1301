"""Getting an announced archive onto the device: MQTT chunks or an HTTP(S) download.

Chunks are written to ``<job>/parts/<index>`` (temp file + fsync + rename) as they arrive, in
any order; a chunk already on disk is skipped, so repeated chunks are harmless and a restarted
agent resumes where it stopped (the broker re-delivers the retained chunks on subscribe). Each
chunk is checked against its sha256 from the signed announcement on arrival; a chunk of the
wrong size or content (truncated, altered) or a second, different copy of a chunk refuses the
transfer. Once all are there they are joined into ``<job>/archive.tar.gz`` and the whole
archive's size and sha256 are checked.

Downloads resume with an HTTP ``Range`` request from the bytes already in ``archive.part``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

from agent.errors import ChorusError
from agent.ota.announce import Announcement
from agent.ota.archive import sha256_of

log = logging.getLogger(__name__)

ARCHIVE_NAME = "archive.tar.gz"


class TransferError(ChorusError):
    """The transfer cannot complete as announced (bad chunk, wrong size or hash, HTTP error)."""


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a power cut leaves either nothing or all of it."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ChunkAssembler:
    """The chunks of one announced archive, kept on disk under ``job_dir``."""

    def __init__(self, job_dir: Path, ann: Announcement) -> None:
        self.ann = ann
        self.job_dir = job_dir
        self.parts = job_dir / "parts"
        self.parts.mkdir(parents=True, exist_ok=True)
        self._have = {
            int(p.name) for p in self.parts.iterdir() if p.name.isdigit() and self._intact(p)
        }

    def _intact(self, part: Path) -> bool:
        index = int(part.name)
        if index >= self.ann.chunks:
            return False
        return sha256_of(part) == self.ann.chunk_sha256[index]

    @property
    def received(self) -> int:
        return len(self._have)

    @property
    def complete(self) -> bool:
        return len(self._have) == self.ann.chunks

    def missing(self) -> list[int]:
        return [i for i in range(self.ann.chunks) if i not in self._have]

    def add(self, index: int, data: bytes) -> bool:
        """Store chunk ``index``; True if it was new. TransferError for a bad chunk."""
        ann = self.ann
        if not 0 <= index < ann.chunks:
            raise TransferError(f"chunk {index} is out of range (the archive has {ann.chunks})")
        digest = hashlib.sha256(data).hexdigest()
        if digest != ann.chunk_sha256[index]:
            expected = min(ann.chunk_bytes, ann.size_bytes - index * ann.chunk_bytes)
            what = (
                f"is {len(data)} bytes, {expected} announced (truncated?)"
                if len(data) != expected
                else "does not match its sha256 (altered?)"
            )
            if index in self._have:
                what += "; a different copy of a chunk already received"
            raise TransferError(f"chunk {index} {what}")
        if index in self._have:
            return False  # a repeat (retained re-delivery, publisher retry): nothing to do
        write_atomic(self.parts / str(index), data)
        self._have.add(index)
        return True

    def assemble(self) -> Path:
        """Join the chunks into the archive and check its size and sha256."""
        if not self.complete:
            raise TransferError(f"missing chunks {self.missing()[:10]}")
        out = self.job_dir / ARCHIVE_NAME
        tmp = out.with_name(out.name + ".tmp")
        h = hashlib.sha256()
        size = 0
        with tmp.open("wb") as f:
            for i in range(self.ann.chunks):
                data = (self.parts / str(i)).read_bytes()
                h.update(data)
                size += len(data)
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        check_archive(size, h.hexdigest(), self.ann)
        os.replace(tmp, out)
        fsync_dir(self.job_dir)
        return out


def check_archive(size: int, sha256: str, ann: Announcement) -> None:
    if size != ann.size_bytes:
        raise TransferError(f"archive is {size} bytes, {ann.size_bytes} announced (truncated?)")
    if sha256 != ann.sha256:
        raise TransferError("archive does not match the announced sha256")


def download(
    ann: Announcement, job_dir: Path, stop: threading.Event, timeout_s: float = 30.0
) -> Path:
    """Fetch ``ann.url`` into ``job_dir/archive.tar.gz``, resuming a partial download."""
    assert ann.url is not None
    job_dir.mkdir(parents=True, exist_ok=True)
    out = job_dir / ARCHIVE_NAME
    part = job_dir / (ARCHIVE_NAME + ".part")
    have = part.stat().st_size if part.exists() else 0
    if have > ann.size_bytes:
        part.unlink()
        have = 0
    if have < ann.size_bytes:
        _fetch(ann, part, have, stop, timeout_s)
    try:
        check_archive(part.stat().st_size, sha256_of(part), ann)
    except TransferError:
        part.unlink()  # never resume onto bytes that proved wrong
        raise
    os.replace(part, out)
    fsync_dir(job_dir)
    return out


def _fetch(
    ann: Announcement, part: Path, have: int, stop: threading.Event, timeout_s: float
) -> None:
    assert ann.url is not None
    request = urllib.request.Request(ann.url, headers={"User-Agent": "chorus-agent"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        with urllib.request.urlopen(
            request, timeout=timeout_s
        ) as resp:  # http(s) only (announce.py)
            if have and resp.status != 206:  # the server ignored the range: start over
                have = 0
            with part.open("ab" if have else "wb") as f:
                while not stop.is_set():
                    block = resp.read(1 << 16)
                    if not block:
                        break
                    have += len(block)
                    if have > ann.size_bytes:
                        raise TransferError(
                            f"{ann.url}: more than the announced {ann.size_bytes} bytes"
                        )
                    f.write(block)
                f.flush()
                os.fsync(f.fileno())
    except (urllib.error.URLError, OSError) as exc:
        raise TransferError(f"{ann.url}: download failed: {exc}") from None
    if stop.is_set():
        raise TransferError("download interrupted (agent stopping)")
