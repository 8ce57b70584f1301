"""Audio files as sources: one :class:`FileSource` per file, :func:`iter_file_sources` for a list.

Design for several files: **each file is its own stream** (its own ``StreamInfo.start_utc`` and a
sample index starting at 0), so the pipeline runs ``open / read... / close`` once per file and
needs no "file changed" signal inside the stream: ``for source in iter_file_sources(paths, ...)``.
All paths are checked (exist, readable, non-empty, a format libsndfile knows) before the first
source is yielded, so a typo in the 30th file fails at start-up, not hours later.

Start time of a file (``StreamInfo.start_utc``), first match wins:

1. the ``start_utc`` argument;
2. a recorder timestamp in the file name, ``YYYYMMDD_HHMMSS`` or ``YYYYMMDDTHHMMSS`` (AudioMoth,
   Song Meter, ...), **taken as UTC**. AudioMoth writes UTC by default; Song Meters usually write
   local time, so pass ``start_utc`` (or configure the recorder for UTC) when that matters;
3. the file's modification time minus its duration (recorders close a file when it ends).

Files are read in blocks of ``block_s`` (never whole into memory), mixed to mono (channel mean)
and resampled to the model rate with :class:`~agent.audio.resample.StreamResampler`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import soundfile as sf

from agent.audio.chunk import AudioChunk, StreamInfo
from agent.audio.resample import StreamResampler
from agent.errors import AudioSourceError

log = logging.getLogger(__name__)

# Eight digits, "_" or "T", six digits, not inside a longer run of digits.
_STAMP = re.compile(r"(?<!\d)(\d{8})[_T](\d{6})(?!\d)")


def parse_filename_utc(name: str) -> datetime | None:
    """UTC time from a recorder-style name (``20240501_053000.WAV``), or None if there is none."""
    for match in _STAMP.finditer(name):
        try:
            stamp = datetime.strptime(match.group(1) + match.group(2), "%Y%m%d%H%M%S")
        except ValueError:  # eight digits that are not a date, e.g. a serial number
            continue
        return stamp.replace(tzinfo=UTC)
    return None


class Pacer:
    """Releases sample-clock deadlines no earlier than real time (monotonic clock)."""

    def __init__(self, sample_rate_hz: int) -> None:
        self.sample_rate_hz = sample_rate_hz
        self._t0: float | None = None

    def start(self) -> None:
        self._t0 = time.monotonic()

    def wait_until(self, sample_index: int, timeout_s: float) -> bool:
        """Sleep until ``sample_index`` is due, at most ``timeout_s``; True if it is due now."""
        if self._t0 is None:
            self.start()
        assert self._t0 is not None
        due = self._t0 + sample_index / self.sample_rate_hz
        wait_s = due - time.monotonic()
        if wait_s <= 0:
            return True
        if wait_s > timeout_s:
            time.sleep(max(0.0, timeout_s))
            return False
        time.sleep(wait_s)
        return True


def _describe(path: Path) -> tuple[int, int, int]:
    """(sample rate, channels, frames) from the header; AudioSourceError with a one-line reason."""
    if not path.exists():
        raise AudioSourceError(f"{path}: file not found")
    if not path.is_file():
        raise AudioSourceError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise AudioSourceError(f"{path}: empty file (0 bytes)")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioSourceError(f"{path}: cannot read audio: {_reason(exc)}") from None
    if info.frames <= 0:
        raise AudioSourceError(f"{path}: contains no audio (0 samples)")
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioSourceError(f"{path}: invalid header ({info.samplerate} Hz, {info.channels} ch)")
    return int(info.samplerate), int(info.channels), int(info.frames)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(getattr(exc, "error_string", None) or exc).split()).rstrip(".")
    if "format not recognised" in text.lower():
        return "format not recognised (corrupt, or not a format libsndfile reads: WAV, FLAC...)"
    return text or type(exc).__name__


class FileSource:
    """One audio file as a finite :class:`~agent.audio.chunk.AudioSource`.

    ``realtime=True`` paces chunks at the sample clock (what ``chorus-agent run`` does with a
    file); otherwise it reads as fast as the consumer pulls. Chunks hold about ``block_s`` of
    audio at ``target_rate_hz``; sample indices run from 0 without gaps.
    """

    def __init__(
        self,
        path: str | Path,
        target_rate_hz: int,
        realtime: bool = False,
        start_utc: datetime | None = None,
        block_s: float = 0.5,
    ) -> None:
        if block_s <= 0:
            raise ValueError("block_s must be > 0")
        if start_utc is not None and start_utc.tzinfo is None:
            raise ValueError("start_utc must be timezone-aware")
        self.path = Path(path)
        self.target_rate_hz = int(target_rate_hz)
        self.realtime = realtime
        self.block_s = block_s
        self._start_utc_arg = start_utc
        self._file: sf.SoundFile | None = None
        self._resampler: StreamResampler | None = None
        self._pacer = Pacer(self.target_rate_hz)
        self._pending: AudioChunk | None = None
        self._next_index = 0
        self._eof = False
        self._finished = False
        self._frames_read = 0
        self._header_frames = 0
        self._rate_hz = 0
        self._chunks = 0
        self.truncated = False  # the file held less audio than its header promised
        self.info: StreamInfo | None = None

    def open(self) -> StreamInfo:
        """Open the file; AudioSourceError (naming the file and the reason) if it is unusable."""
        rate, channels, frames = _describe(self.path)
        try:
            self._file = sf.SoundFile(str(self.path))
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise AudioSourceError(f"{self.path}: cannot read audio: {_reason(exc)}") from None
        self._resampler = StreamResampler(rate, self.target_rate_hz)
        self._rate_hz, self._header_frames = rate, frames
        duration_s = frames / rate
        start = self._start_utc_arg or parse_filename_utc(self.path.name)
        if start is None:
            mtime = datetime.fromtimestamp(self.path.stat().st_mtime, tz=UTC)
            start = mtime - timedelta(seconds=duration_s)
        self.info = StreamInfo(
            name=f"file:{self.path.name}",
            sample_rate_hz=self.target_rate_hz,
            start_utc=start,
            duration_s=duration_s,
        )
        log.info(
            "opened %s: %d Hz, %d ch, %.1f s, start %s",
            self.path,
            rate,
            channels,
            duration_s,
            start.isoformat(),
        )
        self._pacer.start()
        return self.info

    @property
    def finished(self) -> bool:
        return self._finished

    def read(self, timeout_s: float) -> AudioChunk | None:
        """Next chunk; None when finished, or (realtime) when the next one is not due yet."""
        if self._finished:
            return None
        if self._file is None:
            raise AudioSourceError(f"{self.path}: read() before open()")
        if self._pending is None:
            self._pending = self._next_chunk()
            if self._pending is None:
                self._finished = True
                return None
        if self.realtime and not self._pacer.wait_until(self._pending.end_sample_index, timeout_s):
            return None
        chunk, self._pending = self._pending, None
        self._chunks += 1
        if self._eof:
            self._finished = True  # _next_chunk only sets _eof with the final chunk
        return chunk

    def _next_chunk(self) -> AudioChunk | None:
        assert self._file is not None and self._resampler is not None
        block_frames = max(1, round(self.block_s * self._file.samplerate))
        while not self._eof:
            try:
                data = self._file.read(block_frames, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError, OSError) as exc:
                raise AudioSourceError(f"{self.path}: read failed: {_reason(exc)}") from None
            self._frames_read += data.shape[0]
            if data.shape[0] < block_frames:
                self._eof = True
                self._check_length()
            mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
            out = self._resampler.process(mono)
            if self._eof:
                out = np.concatenate([out, self._resampler.flush()])
            if out.shape[0]:
                chunk = AudioChunk(out, self._next_index)
                self._next_index += out.shape[0]
                return chunk
        return None

    @property
    def decoded_s(self) -> float:
        """Seconds of audio actually decoded so far (the whole file once finished)."""
        return self._frames_read / self._rate_hz if self._rate_hz else 0.0

    def _check_length(self) -> None:
        """At the end of the file: warn if it ended before the length its header gives (a
        truncated MP3 or WAV). Compressed headers estimate their length, so 1% (at least 0.1 s)
        is tolerated."""
        missing = self._header_frames - self._frames_read
        if missing > max(0.01 * self._header_frames, 0.1 * self._rate_hz):
            self.truncated = True
            log.warning(
                "%s: truncated or damaged: its header gives %.1f s but only %.1f s could be "
                "decoded; analysed what was there",
                self.path,
                self._header_frames / self._rate_hz,
                self.decoded_s,
            )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._finished = True

    def stats(self) -> dict[str, int | float]:
        return {
            "frames_read": self._frames_read,
            "samples_out": self._next_index,
            "chunks": self._chunks,
        }


def check_files(paths: Sequence[str | Path]) -> None:
    """Raise AudioSourceError for the first path that is missing, empty or not readable audio."""
    if not paths:
        raise AudioSourceError("no audio files given")
    for p in paths:
        _describe(Path(p))


def iter_file_sources(
    paths: Sequence[str | Path],
    target_rate_hz: int,
    realtime: bool = False,
    loop: bool = False,
    start_utc: datetime | None = None,
    block_s: float = 0.5,
) -> Iterator[FileSource]:
    """One :class:`FileSource` per path, in order (forever if ``loop``); checks all paths first.

    With ``start_utc`` the files are taken as one recording split into consecutive parts: file k
    starts at ``start_utc`` plus the durations of the files yielded before it (loops included, so
    time keeps moving forward). Without it each file's own start time is used (see module doc).
    """
    check_files(paths)
    return _iterate([Path(p) for p in paths], target_rate_hz, realtime, loop, start_utc, block_s)


def _iterate(
    paths: list[Path],
    target_rate_hz: int,
    realtime: bool,
    loop: bool,
    start_utc: datetime | None,
    block_s: float,
) -> Iterator[FileSource]:
    offset_s = 0.0
    while True:
        for path in paths:
            start = None if start_utc is None else start_utc + timedelta(seconds=offset_s)
            yield FileSource(
                path, target_rate_hz, realtime=realtime, start_utc=start, block_s=block_s
            )
            if start_utc is not None:
                rate, _, frames = _describe(path)
                offset_s += frames / rate
        if not loop:
            return
