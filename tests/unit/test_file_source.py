"""FileSource and iter_file_sources on real files written to tmp_path."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from agent.audio.file_source import FileSource, iter_file_sources, parse_filename_utc
from agent.audio.resample import resample
from agent.errors import AudioSourceError

RATE = 22050


def _tone(rate: int, seconds: float, f_hz: float = 1000.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * f_hz * t)).astype(np.float32)


def _read_all(src: FileSource) -> list:
    chunks = []
    while True:
        chunk = src.read(1.0)
        if chunk is None:
            assert src.finished
            return chunks
        chunks.append(chunk)


def _joined(chunks: list) -> np.ndarray:
    expected = 0
    for c in chunks:  # continuous sample index, no discontinuities inside a file
        assert c.first_sample_index == expected
        assert not c.discontinuity
        assert c.samples.dtype == np.float32
        expected = c.end_sample_index
    return np.concatenate([c.samples for c in chunks])


def test_wav16_at_model_rate_round_trips(tmp_path: Path) -> None:
    x = _tone(RATE, 2.3)
    path = tmp_path / "a.wav"
    sf.write(path, x, RATE, subtype="PCM_16")
    src = FileSource(path, RATE, block_s=0.25)
    info = src.open()
    assert info.sample_rate_hz == RATE
    assert info.duration_s == pytest.approx(2.3, abs=1e-4)
    assert info.name == "file:a.wav"
    chunks = _read_all(src)
    src.close()
    y = _joined(chunks)
    assert len(chunks) >= 9  # read in blocks, not in one piece
    np.testing.assert_allclose(y, x, atol=1.0 / 32768)  # 16-bit quantisation only
    assert src.stats()["samples_out"] == x.shape[0]


def test_stereo_44k_flac_is_mixed_and_resampled(tmp_path: Path) -> None:
    rate = 44100
    left, right = _tone(rate, 1.5, 1000.0, 0.4), _tone(rate, 1.5, 3000.0, 0.2)
    path = tmp_path / "b.flac"
    sf.write(path, np.stack([left, right], axis=1), rate, subtype="PCM_24")
    src = FileSource(path, RATE, block_s=0.1)
    src.open()
    y = _joined(_read_all(src))
    mono = sf.read(path, dtype="float32")[0].mean(axis=1)
    expected = resample(mono, rate, RATE)
    assert y.shape == expected.shape == (-(-left.shape[0] // 2),)
    np.testing.assert_allclose(y, expected, atol=1e-6)  # the streaming result, exactly
    spectrum = np.abs(np.fft.rfft(y))
    top_two = sorted(np.argsort(spectrum)[-2:] * RATE / y.shape[0])
    assert top_two == pytest.approx([1000.0, 3000.0], abs=1.0)


def test_48k_wav_resampled_length(tmp_path: Path) -> None:
    path = tmp_path / "c.wav"
    sf.write(path, _tone(48000, 1.0), 48000)
    src = FileSource(path, RATE, block_s=0.33)
    src.open()
    assert _joined(_read_all(src)).shape[0] == RATE


def test_start_utc_argument_wins(tmp_path: Path) -> None:
    path = tmp_path / "20240501_053000.wav"
    sf.write(path, _tone(RATE, 0.1), RATE)
    given = datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert FileSource(path, RATE, start_utc=given).open().start_utc == given


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("20240501_053000.WAV", datetime(2024, 5, 1, 5, 30, 0, tzinfo=UTC)),
        ("SM4_20231231T235959.flac", datetime(2023, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("site3_20240501_053000_extra.wav", datetime(2024, 5, 1, 5, 30, 0, tzinfo=UTC)),
        ("20241399_053000.wav", None),  # not a date
        ("120240501_053000.wav", None),  # longer digit run: not a timestamp
        ("dawn.wav", None),
    ],
)
def test_parse_filename_utc(name: str, expected: datetime | None) -> None:
    assert parse_filename_utc(name) == expected


def test_start_from_filename(tmp_path: Path) -> None:
    path = tmp_path / "AM01_20240501_053000.wav"
    sf.write(path, _tone(RATE, 0.1), RATE)
    assert FileSource(path, RATE).open().start_utc == datetime(2024, 5, 1, 5, 30, tzinfo=UTC)


def test_start_from_mtime_minus_duration(tmp_path: Path) -> None:
    path = tmp_path / "dawn.wav"
    sf.write(path, _tone(RATE, 2.0), RATE)
    mtime = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
    os.utime(path, (mtime.timestamp(), mtime.timestamp()))
    assert FileSource(path, RATE).open().start_utc == mtime - timedelta(seconds=2)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "file not found"),
        (b"this is not audio at all" * 40, "cannot read audio: format not recognised"),
        (b"RIFF\x00\x01\x00\x00WAVEfmt " + bytes(range(200)), "cannot read audio"),
        (b"", "empty file"),
    ],
)
def test_bad_files_raise_one_line(tmp_path: Path, content: bytes | None, reason: str) -> None:
    path = tmp_path / "bad.wav"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AudioSourceError) as err:
        FileSource(path, RATE).open()
    message = str(err.value)
    assert str(path) in message and reason in message
    assert "\n" not in message


def test_zero_length_wav(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), RATE)
    with pytest.raises(AudioSourceError, match="contains no audio"):
        FileSource(path, RATE).open()


def test_truncated_wav_reads_what_is_there(tmp_path: Path) -> None:
    path = tmp_path / "cut.wav"
    sf.write(path, _tone(RATE, 1.0), RATE, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header still claims 1 s
    src = FileSource(path, RATE)
    src.open()
    n = _joined(_read_all(src)).shape[0]
    assert 0.4 * RATE < n < 0.6 * RATE


def test_multiple_files_are_separate_streams(tmp_path: Path) -> None:
    paths = []
    for i, secs in enumerate([0.5, 0.7]):
        p = tmp_path / f"{i}.wav"
        sf.write(p, _tone(RATE, secs), RATE)
        paths.append(p)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    sources = list(iter_file_sources(paths, RATE, start_utc=start))
    assert [s.path for s in sources] == paths
    starts, lengths = [], []
    for s in sources:
        info = s.open()
        starts.append(info.start_utc)
        lengths.append(_joined(_read_all(s)).shape[0])  # each starts at index 0
        s.close()
    assert lengths == [round(0.5 * RATE), round(0.7 * RATE)]
    assert starts == [start, start + timedelta(seconds=0.5)]  # consecutive parts of one recording


def test_loop_repeats_the_list(tmp_path: Path) -> None:
    p = tmp_path / "x.wav"
    sf.write(p, _tone(RATE, 0.1), RATE)
    it = iter_file_sources([p], RATE, loop=True)
    assert [next(it).path for _ in range(3)] == [p, p, p]


def test_iter_checks_every_file_up_front(tmp_path: Path) -> None:
    good = tmp_path / "good.wav"
    sf.write(good, _tone(RATE, 0.1), RATE)
    with pytest.raises(AudioSourceError, match=r"missing\.wav: file not found"):
        iter_file_sources([good, tmp_path / "missing.wav"], RATE)


def test_realtime_paces_at_the_sample_clock(tmp_path: Path) -> None:
    path = tmp_path / "rt.wav"
    sf.write(path, _tone(RATE, 0.3), RATE)
    src = FileSource(path, RATE, realtime=True, block_s=0.1)
    src.open()
    t0 = time.monotonic()
    assert src.read(0.0) is None  # the first 0.1 s block is not due yet
    assert not src.finished
    chunk = src.read(5.0)
    assert chunk is not None
    # never delivered before its last sample is due
    assert time.monotonic() - t0 >= chunk.end_sample_index / RATE - 0.01
    chunks = [chunk, *_read_all(src)]
    assert _joined(chunks).shape[0] == round(0.3 * RATE)


def test_factory_file_sources(tmp_path: Path) -> None:
    from agent.audio.factory import make_source, make_sources
    from agent.config import AudioConfig

    paths = []
    for i in range(2):
        p = tmp_path / f"{i}.wav"
        sf.write(p, _tone(RATE, 0.2), RATE)
        paths.append(str(p))
    audio = AudioConfig(source="file", files=paths, realtime=True)
    sources = list(make_sources(audio, RATE, realtime_override=False))
    assert [str(s.path) for s in sources] == paths
    assert all(isinstance(s, FileSource) and not s.realtime for s in sources)
    with pytest.raises(AudioSourceError, match="several audio streams"):
        make_source(audio, RATE)
    one = make_source(AudioConfig(source="synthetic"), RATE, files_override=paths[:1])
    assert isinstance(one, FileSource) and one.realtime  # the override forces file input
    with pytest.raises(AudioSourceError, match="file not found"):
        make_sources(audio, RATE, files_override=[str(tmp_path / "nope.flac")])
