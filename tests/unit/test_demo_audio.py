"""The synthetic demo species and soundscapes (agent.demo)."""

from __future__ import annotations

import csv
import itertools

import numpy as np
import pytest
import soundfile as sf

from agent.demo import (
    CALL_DURATION_RANGE_S,
    CALL_LEVEL_RANGE_DBFS,
    DEMO_SAMPLE_RATE_HZ,
    DEMO_SEPARATOR_EDGES_HZ,
    DEMO_SPECIES,
    NOISE_LEVEL_DBFS,
    demo_labels,
    make_demo_soundscape,
    synthesize_call,
    truth_csv_path,
    write_demo_wav,
)
from agent.errors import ChorusError

SEEDS = (0, 1, 2, 3, 4)


def _rms_dbfs(x: np.ndarray) -> float:
    return 20.0 * np.log10(np.sqrt(np.mean(np.asarray(x, np.float64) ** 2)))


def _band_fraction(x: np.ndarray, lo_hz: float, hi_hz: float) -> float:
    power = np.abs(np.fft.rfft(np.asarray(x, np.float64))) ** 2
    f_hz = np.fft.rfftfreq(x.shape[0], 1.0 / DEMO_SAMPLE_RATE_HZ)
    return float(power[(f_hz >= lo_hz) & (f_hz <= hi_hz)].sum() / power.sum())


def _noise_only_gaps(
    events: list[tuple[str, float, float]],
    duration_s: float,
) -> list[tuple[float, float]]:
    gaps, t = [], 0.0
    for _, start, end in sorted(events, key=lambda e: e[1]):
        if start > t:
            gaps.append((t, start))
        t = max(t, end)
    if duration_s > t:
        gaps.append((t, duration_s))
    return gaps


def test_labels_are_unique_and_marked_synthetic() -> None:
    labels = demo_labels()
    assert len(labels) == 6
    assert len({lab.species_code for lab in labels}) == 6
    for lab in labels:
        assert "synthetic" in lab.common_name.lower()
        assert lab.genus and lab.family and lab.order
        assert lab.scientific_name.split()[0] == lab.genus


def test_species_bands_do_not_overlap_and_match_separator_channels() -> None:
    bands = sorted(s.band_hz for s in DEMO_SPECIES)
    for (_, hi), (lo, _) in itertools.pairwise(bands):
        assert hi < lo
    edges = (0.0, *DEMO_SEPARATOR_EDGES_HZ, DEMO_SAMPLE_RATE_HZ / 2)
    for sp in DEMO_SPECIES:
        lo_edge, hi_edge = edges[sp.separator_channel], edges[sp.separator_channel + 1]
        assert lo_edge < sp.band_hz[0] and sp.band_hz[1] < hi_edge


@pytest.mark.parametrize("code", [s.code for s in DEMO_SPECIES])
@pytest.mark.parametrize("duration_s", [0.5, 2.0])
def test_call_energy_stays_in_its_band(code: str, duration_s: float) -> None:
    sp = next(s for s in DEMO_SPECIES if s.code == code)
    call = synthesize_call(code, duration_s, DEMO_SAMPLE_RATE_HZ, np.random.default_rng(3))
    assert call.dtype == np.float32
    assert call.shape == (round(duration_s * DEMO_SAMPLE_RATE_HZ),)
    assert 0.95 <= np.max(np.abs(call)) <= 1.0  # peak envelope 1.0 by convention
    assert _band_fraction(call, *sp.band_hz) > 0.995
    # Smooth onsets: a click would spread energy over every band.
    assert abs(call[0]) < 1e-3 and abs(call[-1]) < 0.05


def test_synthesize_call_rejects_bad_input() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ChorusError, match="unknown demo species"):
        synthesize_call("nope", 1.0, DEMO_SAMPLE_RATE_HZ, rng)
    with pytest.raises(ChorusError, match="duration"):
        synthesize_call(DEMO_SPECIES[0].code, 0.0, DEMO_SAMPLE_RATE_HZ, rng)


def test_soundscape_is_deterministic_for_a_seed() -> None:
    a, b = make_demo_soundscape(seed=7), make_demo_soundscape(seed=7)
    assert np.array_equal(a.audio, b.audio)
    assert a.events == b.events
    c = make_demo_soundscape(seed=8)
    assert c.events != a.events


@pytest.mark.parametrize("seed", SEEDS)
def test_soundscape_shape_levels_and_events(seed: int) -> None:
    scape = make_demo_soundscape(60.0, DEMO_SAMPLE_RATE_HZ, seed=seed)
    assert scape.audio.dtype == np.float32
    assert scape.audio.shape == (60 * DEMO_SAMPLE_RATE_HZ,)
    assert scape.sample_rate_hz == DEMO_SAMPLE_RATE_HZ
    assert 0.1 < np.max(np.abs(scape.audio)) <= 0.9
    assert len(scape.events) >= 8
    assert len(scape.event_levels_dbfs) == len(scape.events)
    codes = {s.code for s in DEMO_SPECIES}
    for (code, start, end), level in zip(scape.events, scape.event_levels_dbfs, strict=True):
        assert code in codes
        assert 0.0 <= start < end <= scape.duration_s
        assert CALL_DURATION_RANGE_S[0] - 1e-3 <= end - start <= CALL_DURATION_RANGE_S[1] + 1e-3
        assert CALL_LEVEL_RANGE_DBFS[0] - 0.01 <= level <= CALL_LEVEL_RANGE_DBFS[1] + 0.01
    assert [e[1] for e in scape.events] == sorted(e[1] for e in scape.events)


@pytest.mark.parametrize("seed", SEEDS)
def test_soundscape_has_overlaps_of_different_species(seed: int) -> None:
    events = make_demo_soundscape(seed=seed).events
    overlapping = [
        (a, b)
        for a, b in itertools.combinations(events, 2)
        if a[0] != b[0] and min(a[2], b[2]) - max(a[1], b[1]) > 0.1
    ]
    assert len(overlapping) >= 2
    # A species never overlaps itself (the ground truth stays unambiguous).
    for a, b in itertools.combinations(events, 2):
        if a[0] == b[0]:
            assert min(a[2], b[2]) <= max(a[1], b[1])


@pytest.mark.parametrize("seed", SEEDS)
def test_soundscape_has_noise_only_gaps_at_the_noise_level(seed: int) -> None:
    scape = make_demo_soundscape(seed=seed)
    long_gaps = [g for g in _noise_only_gaps(scape.events, scape.duration_s) if g[1] - g[0] > 6.0]
    assert long_gaps
    sr = scape.sample_rate_hz
    for start, end in long_gaps:
        gap = scape.audio[round((start + 0.1) * sr) : round((end - 0.1) * sr)]
        assert _rms_dbfs(gap) == pytest.approx(NOISE_LEVEL_DBFS, abs=2.0)


def test_calls_reach_their_stated_level() -> None:
    scape = make_demo_soundscape(seed=0)
    sr, checked = scape.sample_rate_hz, 0
    for (code, start, end), level in zip(scape.events, scape.event_levels_dbfs, strict=True):
        others = [
            e for e in scape.events if e != (code, start, end) and min(e[2], end) > max(e[1], start)
        ]
        if others or code not in ("dmwhis", "dmdesc", "dmasce"):  # lone steady-amplitude calls
            continue
        seg = scape.audio[round((start + 0.1) * sr) : round((end - 0.1) * sr)]
        assert _rms_dbfs(seg) == pytest.approx(level, abs=1.0)
        checked += 1
    assert checked >= 2


def test_window_truth_marks_present_absent_and_ambiguous() -> None:
    scape = make_demo_soundscape(seed=0)
    code, start, _ = scape.events[0]
    assert scape.window_truth(start, start + 5.0)[code] is True
    assert scape.window_truth(start - 5.0, start + 0.1)[code] is None  # only 0.1 s of the call
    assert scape.window_truth(start - 5.0, start + 0.1, min_overlap_s=0.05)[code] is True
    quiet = max(_noise_only_gaps(scape.events, scape.duration_s), key=lambda g: g[1] - g[0])
    assert set(scape.window_truth(quiet[0], quiet[0] + 5.0).values()) == {False}


def test_wav_round_trip(tmp_path) -> None:
    path = tmp_path / "demo" / "dawn.wav"
    scape = write_demo_wav(path, duration_s=20.0, seed=5)
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (DEMO_SAMPLE_RATE_HZ, 1, "PCM_16")
    audio, sr = sf.read(str(path), dtype="float32")
    assert sr == DEMO_SAMPLE_RATE_HZ
    assert audio.shape == scape.audio.shape
    assert np.max(np.abs(audio - scape.audio)) <= 1.0 / 32768 + 1e-7
    with truth_csv_path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert truth_csv_path(path).name == "dawn.truth.csv"
    assert [(r["species_code"], float(r["start_s"]), float(r["end_s"])) for r in rows] == [
        (c, pytest.approx(a, abs=1e-4), pytest.approx(b, abs=1e-4)) for c, a, b in scape.events
    ]
    assert [float(r["level_dbfs"]) for r in rows] == pytest.approx(scape.event_levels_dbfs)


def test_write_demo_wav_reports_unwritable_path(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ChorusError, match="cannot write demo audio"):
        write_demo_wav(blocker / "sub" / "x.wav", duration_s=2.0)
