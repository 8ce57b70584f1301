"""The synthetic bird world: taxonomy shape, related species really related, recordings.

Everything here runs without TensorFlow (checked in a subprocess) and without ../shared/data
(real noise beds are replaced by files written to a temporary "shared" folder).
"""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from modeltools.data.annotations import (
    read_csv_annotations,
    read_raven,
    segment_labels,
    write_csv_annotations,
    write_raven,
)
from modeltools.data.noise import (
    REAL_NOISE,
    SYNTHETIC_KINDS,
    NoiseBank,
    synthetic_noise,
)
from modeltools.data.recordings import make_focal, make_soundscape
from modeltools.data.scene import MIN_LABEL_SNR_DB
from modeltools.data.species import make_world
from modeltools.data.splits import item_rng, noise_pool, seed_words

SR = 22050


@pytest.fixture(scope="module")
def world():
    return make_world(24, 6, seed=0)


def test_data_modules_do_not_import_tensorflow() -> None:
    code = (
        "import sys\n"
        "import modeltools.data.species, modeltools.data.recordings, modeltools.data.corpus\n"
        "import modeltools.data.taxonomy, modeltools.data.activity, modeltools.data.ingest\n"
        "import modeltools.data.examples, modeltools.data.pipeline, modeltools.augment\n"
        "import modeltools.data.xeno_canto, modeltools.cli\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_default_world_has_24_targets_and_out_of_set_relatives(world) -> None:
    tax = world.taxonomy
    assert len(tax.targets) == 24 and len(tax.others) == 6
    genera = defaultdict(list)
    for s in tax.species:
        genera[s.genus].append(s)
        assert s.common_name.endswith("(synthetic)")
        assert s.scientific_name.split()[0] == s.genus
    assert all(len(v) >= 2 for v in genera.values())  # every genus has confusable siblings
    target_families = {s.family for s in tax.targets}
    assert all(o.family in target_families for o in tax.others)
    assert len(tax.label_spaces["order"]) - 1 >= 2  # several orders ("unknown" excluded)


def test_world_is_deterministic_by_seed(world) -> None:
    again = make_world(24, 6, seed=0)
    assert again.taxonomy.version == world.taxonomy.version
    code = world.codes[0]
    a = world.song(code, np.random.default_rng(5))
    b = again.song(code, np.random.default_rng(5))
    assert np.array_equal(a, b)
    assert make_world(24, 6, seed=1).taxonomy.version != world.taxonomy.version


def _centroid_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(x.shape[0], 1 / SR)
    return float(np.sum(f * spec) / np.sum(spec))


def test_siblings_share_syllable_types_and_register_but_differ(world) -> None:
    tax = world.taxonomy
    cents = {
        c: np.mean([_centroid_hz(world.song(c, np.random.default_rng(i))) for i in range(3)])
        for c in world.codes
    }
    same_genus, other_order = [], []
    for a in tax.species:
        for b in tax.species:
            if a.code >= b.code:
                continue
            d = abs(np.log(cents[a.code] / cents[b.code]))
            if a.genus == b.genus:
                same_genus.append(d)
                kinds_a = {p.syllable.kind for p in world.voices[a.code].song}
                kinds_b = {p.syllable.kind for p in world.voices[b.code].song}
                assert kinds_a & kinds_b, (a.code, b.code)  # shared syllable types
                assert world.voices[a.code] != world.voices[b.code]  # ... but not identical
            elif a.order != b.order:
                other_order.append(d)
    # Related species sit close in frequency; unrelated ones spread much further apart.
    assert np.median(same_genus) < 0.5 * np.median(other_order)
    assert np.median(same_genus) > 0.02  # but they are not at the same pitch


def test_songs_are_clean_bounded_and_inside_their_band(world) -> None:
    r = np.random.default_rng(3)
    for code in world.codes:
        for _ in range(2):
            voc = world.vocalization(code, r)
            x = voc.samples
            assert np.all(np.isfinite(x)) and np.max(np.abs(x)) == pytest.approx(1.0)
            assert 0.02 < x.shape[0] / SR < 12.0
            lo, hi = voc.band_hz
            spec = np.abs(np.fft.rfft(x)) ** 2
            f = np.fft.rfftfreq(x.shape[0], 1 / SR)
            inside = spec[(f >= lo * 0.8) & (f <= hi * 1.2)].sum() / spec.sum()
            assert inside > 0.9, (code, voc.kind, inside)


def _fake_shared(tmp: Path) -> Path:
    """Stand-ins for the real noise files at their expected paths (short noise MP3/WAVs)."""
    r = np.random.default_rng(0)
    for rel, _pool in REAL_NOISE:
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        x = (0.05 * r.standard_normal(SR * 2)).astype(np.float32)
        fmt = {"mp3": "MP3", "wav": "WAV"}[p.suffix[1:]]
        sf.write(p, x, SR, format=fmt)
    return tmp


def test_noise_pools_are_disjoint_and_test_pool_is_held_out(tmp_path: Path) -> None:
    shared = _fake_shared(tmp_path)
    train, test = NoiseBank("train", shared), NoiseBank("test", shared)
    assert train.real_names and test.real_names
    assert not set(train.real_names) & set(test.real_names)
    assert noise_pool("train") == noise_pool("val") == "train" and noise_pool("test") == "test"
    world = make_world(6, 2, seed=0)
    for i in range(2):
        rec = make_soundscape(world, item_rng(0, "test", "soundscape", i), test)
        assert all(n.startswith("synthetic:") or n in test.real_names for n in rec.noise)


def test_split_streams_are_disjoint() -> None:
    words = {seed_words(0, s, "soundscape", i) for s in ("train", "val", "test") for i in range(50)}
    assert len(words) == 150
    draws = {s: item_rng(0, s, "soundscape", 0).random() for s in ("train", "val", "test")}
    assert len(set(draws.values())) == 3


def test_focal_recordings_have_a_primary_gaps_and_quiet_sometimes_listed_background(
    world,
) -> None:
    bank = NoiseBank("train", None)
    listed = filled = gaps = 0
    bg_snr, primary_snr = [], []
    n = 24
    for i in range(n):
        code = world.taxonomy.targets[i % 24].code
        rec = make_focal(world, code, item_rng(0, "train", "focal", i), bank)
        dur = rec.audio.shape[0] / SR
        assert rec.primary == (code,) and 12 <= dur <= 40
        assert rec.audio.dtype == np.float32 and 0.29 <= np.max(np.abs(rec.audio)) <= 0.91
        prim = sorted((e.start_s, e.end_s) for e in rec.events if e.role == "primary")
        assert prim and all(e.code == code for e in rec.events if e.role == "primary")
        edges = [0.0] + [t for p in prim for t in p] + [dur]
        silences = [edges[k + 1] - edges[k] for k in range(0, len(edges), 2)]
        gaps += max(silences) >= 3.0  # a long stretch without the primary
        assert set(rec.background) <= set(rec.background_present)
        assert code not in rec.background_present
        listed += bool(rec.background)
        filled += bool(rec.background_present)
        bg_snr += [e.snr_db for e in rec.events if e.role == "background"]
        primary_snr += [e.snr_db for e in rec.events if e.role == "primary"]
    assert gaps >= 0.75 * n
    assert 0 < listed < filled  # the list is sometimes filled, sometimes not
    assert min(bg_snr) >= MIN_LABEL_SNR_DB
    assert np.median(bg_snr) < np.median(primary_snr) - 6  # background is quieter


def test_soundscapes_are_dense_choruses_with_low_snr_calls(world) -> None:
    bank = NoiseBank("test", None)
    per_segment, snrs = [], []
    for i in range(3):
        rec = make_soundscape(world, item_rng(0, "test", "soundscape", i), bank)
        assert rec.audio.shape == (60 * SR,)
        anns = [a for a in _as_annotations(rec.events)]
        segs = segment_labels(anns, 60.0)
        assert len(segs) == 12
        per_segment += [len(labels) for _, _, labels in segs]
        snrs += [e.snr_db for e in rec.events]
        targets = {s.code for s in world.taxonomy.targets}
        assert len({e.code for e in rec.events} & targets) >= 3
    assert np.mean(per_segment) >= 2.5  # several species at once
    assert min(snrs) >= MIN_LABEL_SNR_DB and np.mean(np.array(snrs) < 5) > 0.05


def _as_annotations(events):
    from modeltools.data.annotations import Annotation

    return [Annotation(e.start_s, e.end_s, e.code, e.low_hz, e.high_hz) for e in events]


def test_annotations_round_trip_through_raven_and_csv(world, tmp_path: Path) -> None:
    rec = make_soundscape(world, item_rng(0, "val", "soundscape", 0), NoiseBank("train", None))
    anns = _as_annotations(rec.events)
    write_raven(tmp_path / "a.selections.txt", anns)
    write_csv_annotations(tmp_path / "a.csv", anns)
    for back in (
        read_raven(tmp_path / "a.selections.txt"),
        read_csv_annotations(tmp_path / "a.csv"),
    ):
        assert len(back) == len(anns)
        got = sorted((a.start_s, a.end_s, a.label) for a in back)
        want = sorted((a.start_s, a.end_s, a.label) for a in anns)
        assert [g[2] for g in got] == [w[2] for w in want]
        np.testing.assert_allclose([g[:2] for g in got], [w[:2] for w in want], atol=1e-4)
        assert segment_labels(back, 60.0) == segment_labels(anns, 60.0)


@pytest.mark.parametrize("kind", SYNTHETIC_KINDS)
def test_synthetic_noise_is_unit_rms_and_deterministic(kind: str) -> None:
    a = synthetic_noise(kind, SR * 3, np.random.default_rng(1))
    b = synthetic_noise(kind, SR * 3, np.random.default_rng(1))
    assert np.array_equal(a, b) and np.sqrt(np.mean(a**2)) == pytest.approx(1.0, rel=1e-6)


def test_pink_and_brown_noise_slopes() -> None:
    def band(x, lo, hi):
        f = np.fft.rfftfreq(x.shape[0], 1 / SR)
        p = np.abs(np.fft.rfft(x)) ** 2
        return p[(f >= lo) & (f < hi)].mean()

    for kind, exponent in (("pink", 1.0), ("brown", 2.0)):
        x = synthetic_noise(kind, SR * 4, np.random.default_rng(2))
        ratio = band(x, 200, 400) / band(x, 3200, 6400)  # 16x apart in frequency
        assert np.log(ratio) / np.log(16) == pytest.approx(exponent, abs=0.15)


def test_species_plots_are_small_pngs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from modeltools.data.plots import plot_species

    world = make_world(2, 1, seed=0)
    paths = plot_species(world, tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"{c}.png" for c in world.codes)
    for p in paths:
        head = p.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        assert int.from_bytes(head[16:20], "big") == 600  # width
        assert int.from_bytes(head[20:24], "big") == 250  # height
        assert p.stat().st_size < 150_000
