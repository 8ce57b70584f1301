"""Decoding, resampling and writing audio for the data tools.

Decoder: ``soundfile`` (libsndfile >= 1.1, which bundles mpg123/LAME for MP3 and libvorbis/libopus
for OGG), so WAV, FLAC, MP3 and OGG go through one well-kept C library that the agent already
depends on. Resampling uses :func:`agent.audio.resample.resample` (polyphase, Kaiser sinc), the
same filter the agent applies to live audio. Every problem becomes an :class:`AudioDecodeError`
whose message is one line a user can act on.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from agent.audio.resample import resample
from agent.errors import ChorusError
from agent.models.manifest import sha256_file

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 22050
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus")
MIN_INPUT_RATE_HZ = 8000  # below this a bird band (1-10 kHz) is mostly gone
MAX_INPUT_RATE_HZ = 384000
TRUNCATED_FRACTION = 0.75
_TRUNCATED_DATA = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)

__all__ = [
    "AUDIO_EXTENSIONS",
    "SAMPLE_RATE_HZ",
    "AudioDecodeError",
    "DecodedAudio",
    "decode_audio",
    "is_audio_file",
    "read_segment",
    "sha256_file",
    "write_wav",
]


class AudioDecodeError(ChorusError):
    """An audio file cannot be used: unreadable, truncated, empty or at an unusable rate."""

    exit_code = 2


@dataclass(frozen=True)
class DecodedAudio:
    """Mono float32 audio at ``sample_rate_hz`` plus what the source file was."""

    samples: np.ndarray
    sample_rate_hz: int
    source_rate_hz: int
    source_channels: int
    source_format: str

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / self.sample_rate_hz


def is_audio_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS


def decode_audio(path: str | Path, sample_rate_hz: int = SAMPLE_RATE_HZ) -> DecodedAudio:
    """Read ``path``, mix to mono (channel mean), resample to ``sample_rate_hz``.

    Raises :class:`AudioDecodeError` for unreadable, truncated or empty files and for sample
    rates outside 8-384 kHz.
    """
    path = Path(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioDecodeError(f"{path}: unreadable audio ({_short(exc)})") from None
    rate = int(info.samplerate)
    if not MIN_INPUT_RATE_HZ <= rate <= MAX_INPUT_RATE_HZ:
        raise AudioDecodeError(
            f"{path}: sample rate {rate} Hz is outside the supported "
            f"{MIN_INPUT_RATE_HZ}-{MAX_INPUT_RATE_HZ} Hz"
        )
    m = _TRUNCATED_DATA.search(info.extra_info or "")
    if m and int(m.group(1)) > int(m.group(2)):
        raise AudioDecodeError(
            f"{path}: truncated file (header promises {m.group(1)} data bytes, "
            f"{m.group(2)} present)"
        )
    try:
        data, _ = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        raise AudioDecodeError(f"{path}: cannot decode audio ({_short(exc)})") from None
    n = data.shape[0]
    if n == 0:
        raise AudioDecodeError(f"{path}: no audio samples (empty or truncated file)")
    # Compressed formats state their length in the header (MP3 Xing/LAME, FLAC STREAMINFO).
    # MP3 header lengths are estimates (real XC files decode 3-13 % short), so only a large
    # shortfall means the file was cut off.
    if info.frames > 0 and n < TRUNCATED_FRACTION * info.frames:
        raise AudioDecodeError(f"{path}: truncated file (decoded {n} of {info.frames} frames)")
    if not np.all(np.isfinite(data)):
        raise AudioDecodeError(f"{path}: audio contains NaN/inf samples")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    out = resample(mono, rate, sample_rate_hz)
    return DecodedAudio(
        samples=np.ascontiguousarray(out, dtype=np.float32),
        sample_rate_hz=sample_rate_hz,
        source_rate_hz=rate,
        source_channels=int(info.channels),
        source_format=f"{info.format}/{info.subtype}",
    )


def write_wav(path: str | Path, samples: np.ndarray, sample_rate_hz: int = SAMPLE_RATE_HZ) -> str:
    """Write 16-bit PCM WAV atomically (temp file + rename); return the file's sha256.

    Samples are clipped to [-1, 1) first: 16-bit PCM cannot hold more and a wrapped sample
    would be a loud click.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 32767.0 / 32768.0)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".wav", dir=path.parent)
    os.close(fd)
    try:
        sf.write(tmp, x, sample_rate_hz, subtype="PCM_16", format="WAV")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; datasets are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha256_file(path)


def read_segment(path: str | Path, start: int, stop: int) -> np.ndarray:
    """Samples ``[start, stop)`` of a mono file as float32, zero-padded past its end."""
    n = stop - start
    with sf.SoundFile(str(path)) as f:
        f.seek(max(0, start))
        data = f.read(n, dtype="float32", always_2d=True)
    x = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if x.shape[0] < n:
        x = np.pad(x, (0, n - x.shape[0]))
    return np.ascontiguousarray(x, dtype=np.float32)


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]
