"""``chorus-models synth`` end to end, and the example sources / tf.data pipelines on its output.

One tiny corpus (4 target + 2 out-of-set species, synthetic noise only) is generated once per
module through the CLI; the tests read it, re-run the command and build pipelines from it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from modeltools.cli import main
from modeltools.data.annotations import read_raven
from modeltools.data.dataset import read_dataset
from modeltools.data.examples import ClassifierExamples, SeparatorExamples, WindowRef
from modeltools.data.windows import read_windows_csv

ARGS = [
    "--species",
    "4",
    "--other-species",
    "2",
    "--focal-per-species",
    "3",
    "1",
    "--focal-per-other",
    "1",
    "0",
    "--soundscapes",
    "1",
    "1",
    "1",
    "--soundscape-s",
    "20",
    "--noise-clips",
    "1",
    "1",
    "--noise-clip-s",
    "10",
    "--no-real-noise",
    "--workers",
    "1",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "c"
    assert main(["synth", "--out", str(out), *ARGS]) == 0
    return out


def test_synth_writes_a_complete_dataset(corpus: Path) -> None:
    ds = read_dataset(corpus)
    kinds = {}
    for r in ds.recordings:
        kinds[(r.split, r.kind)] = kinds.get((r.split, r.kind), 0) + 1
        info = sf.info(corpus / r.path)
        assert (info.samplerate, info.channels) == (22050, 1) and info.frames == r.num_samples
    assert kinds == {
        ("train", "focal"): 4 * 3 + 2,
        ("val", "focal"): 4,
        ("train", "soundscape"): 1,
        ("val", "soundscape"): 1,
        ("test", "soundscape"): 1,
        ("train", "noise"): 1,
        ("test", "noise"): 1,
    }
    assert len(ds.taxonomy.targets) == 4 and len(ds.taxonomy.others) == 2
    for r in ds.select(kinds=("soundscape",)):
        raven = read_raven(corpus / r.annotations["raven"])
        assert raven and (corpus / r.annotations["csv"]).is_file()
        segs = [s for s in ds.segments if s.recording_id == r.id]
        assert [(s.start_s, s.end_s) for s in segs] == [(0, 5), (5, 10), (10, 15), (15, 20)]
        assert {c for s in segs for c in s.labels} == {a.label for a in raven}
    for r in ds.select(kinds=("focal",)):
        assert r.primary and set(r.background) <= set(r.meta["truth"]["background_present"])
    windows = read_windows_csv(corpus / "windows.csv")
    assert {w.recording_id for w in windows} == {r.id for r in ds.select(kinds=("focal",))}
    assert all(w.end_sample - w.start_sample <= 6 * 22050 for w in windows)
    assert (corpus / "README.md").is_file() and (corpus / "label_spaces.json").is_file()


def test_rerun_is_a_no_op_and_resumes_deterministically(corpus: Path, tmp_path: Path) -> None:
    copy = tmp_path / "c"
    shutil.copytree(corpus, copy)
    stamps = {p: p.stat().st_mtime_ns for p in copy.rglob("*.wav")}
    assert main(["synth", "--out", str(copy), *ARGS]) == 0
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*.wav")} == stamps
    # An interrupted run: one file lost -> regenerated bit for bit.
    victim = next(iter(sorted(copy.glob("focal/train/*/*.wav"))))
    before = victim.read_bytes()
    victim.unlink()
    assert main(["synth", "--out", str(copy), *ARGS]) == 0
    assert victim.read_bytes() == before
    # Other settings into the same folder: refused (one line, exit 2), unless --overwrite.
    assert main(["synth", "--out", str(copy), *ARGS[:-2], "--seed", "5"]) == 2


def test_worker_count_does_not_change_the_corpus(corpus: Path, tmp_path: Path) -> None:
    small = [
        "--species",
        "2",
        "--other-species",
        "0",
        "--focal-per-species",
        "2",
        "0",
        "--focal-per-other",
        "0",
        "0",
        "--soundscapes",
        "1",
        "0",
        "0",
        "--soundscape-s",
        "10",
        "--noise-clips",
        "0",
        "0",
        "--no-real-noise",
        "--no-activity",
    ]
    assert main(["synth", "--out", str(tmp_path / "a"), *small, "--workers", "1"]) == 0
    assert main(["synth", "--out", str(tmp_path / "b"), *small, "--workers", "2"]) == 0
    sha = [
        {
            r["id"]: r["sha256"]
            for r in json.loads((tmp_path / d / "manifest.json").read_text())["recordings"]
        }
        for d in "ab"
    ]
    assert sha[0] == sha[1]
    # Other settings are refused unless --overwrite, which then regenerates everything.
    assert main(["synth", "--out", str(tmp_path / "a"), *small, "--seed", "1"]) == 2
    assert main(["synth", "--out", str(tmp_path / "a"), *small, "--seed", "1", "--overwrite"]) == 0
    new = json.loads((tmp_path / "a" / "manifest.json").read_text())["recordings"]
    assert {r["sha256"] for r in new}.isdisjoint(sha[0].values())


def test_labels_masks_and_out_of_set_examples(corpus: Path) -> None:
    ds = read_dataset(corpus)
    ex = ClassifierExamples([ds], "train", seed=0)
    tax = ds.taxonomy
    t0, t1 = tax.targets[0], tax.targets[1]
    other = tax.others[0]
    labels, masks = ex.labels([t0.code], [t1.code, other.code])
    sp = tax.label_spaces
    assert labels["species"][sp["species"].index(t0.code)] == 1
    assert labels["species"].sum() == 1
    assert masks["species"][sp["species"].index(t1.code)] == 0  # listed background: masked
    assert masks["species"][0] == 1  # an out-of-set background has no species class
    assert masks["species"][sp["species"].index(t0.code)] == 1
    for head in ("genus", "family", "order"):
        assert labels[head][sp[head].index(t0.taxon(head))] == 1
        if other.taxon(head) != t0.taxon(head):
            assert masks[head][sp[head].index(other.taxon(head))] == 0
        else:
            assert masks[head][sp[head].index(other.taxon(head))] == 1  # positive anyway
    # An out-of-set recording carries only its higher taxa (species head: all negative) ...
    labels, masks = ex.labels([other.code], [])
    assert labels["species"].sum() == 0 and np.all(masks["species"] == 1)
    for head in ("genus", "family", "order"):
        assert np.flatnonzero(labels[head]).tolist() == [sp[head].index(other.taxon(head))]
    # ... unless asked to mark the species head's "unknown" class.
    marked = ClassifierExamples([ds], "train", seed=0, mark_unknown=True)
    labels, masks = marked.labels([other.code], [])
    assert labels["species"].tolist() == [1] + [0] * len(tax.targets)
    _, masks = marked.labels([t0.code], [other.code])
    assert masks["species"][0] == 0  # the out-of-set background would be "unknown": masked


def test_examples_are_pure_functions_of_seed_and_index(corpus: Path) -> None:
    ds = read_dataset(corpus)
    a = ClassifierExamples([ds], "train", seed=3)
    b = ClassifierExamples([ds], "train", seed=3)
    c = ClassifierExamples([ds], "train", seed=4)
    for i in (0, 7, len(a) + 2):
        ea, eb = a.example(i), b.example(i)
        assert set(ea) == set(a.keys()) and all(np.array_equal(ea[k], eb[k]) for k in ea)
    assert not np.array_equal(a.example(1)["audio"], c.example(1)["audio"])
    ex = a.example(5)
    assert ex["audio"].shape == (110250,) and ex["audio"].dtype == np.float32
    assert 0.05 <= np.max(np.abs(ex["audio"])) <= 0.75
    # Each epoch visits every window exactly once, in a new order.
    n = len(a)
    e0 = [a._order.item(i) for i in range(n)]
    e1 = [a._order.item(n + i) for i in range(n)]
    assert sorted(e0) == sorted(e1) == list(range(n)) and e0 != e1
    val = ClassifierExamples([ds], "val", seed=3)
    assert {w.path for w in val.windows}.isdisjoint({w.path for w in a.windows})


def test_separator_examples_are_mixtures_of_mixtures(corpus: Path) -> None:
    ds = read_dataset(corpus)
    src = SeparatorExamples([ds], "train", seed=1)
    paths = {w.path.name for w in src.windows}
    assert any(p.startswith("soundscape-") for p in paths)  # tiled soundscapes included
    ex = src.example(3)
    assert ex["mixtures"].shape == (2, 110250)
    np.testing.assert_allclose(ex["mom"], ex["mixtures"].sum(axis=0), atol=1e-6)
    # Natural levels (SS-mixit: x = x1 + x2, no rescaling): every mixture is a verbatim crop
    # of one of the source windows' audio.
    for mixture in ex["mixtures"]:
        assert any(_is_crop_of(mixture, w) for w in src.windows)


def _is_crop_of(mixture: np.ndarray, ref: WindowRef) -> bool:
    from modeltools.data.audio_io import read_segment

    audio = read_segment(ref.path, ref.start, ref.end)
    long, short = (audio, mixture) if audio.shape[0] >= mixture.shape[0] else (mixture, audio)
    k = int(np.argmax(np.abs(short)))  # windows shorter than the crop are zero-padded
    n = short.shape[0]
    starts = np.flatnonzero(long == short[k]) - k
    return any(
        0 <= s <= long.shape[0] - n and np.array_equal(long[s : s + n], short) for s in starts
    )


def test_separator_windows_by_recording_kind(corpus: Path) -> None:
    from modeltools.data.dataset import DatasetError
    from modeltools.data.examples import unlabelled_windows

    ds = read_dataset(corpus)
    kind = {ds.path(r).name: r.kind for r in ds.recordings}
    every = unlabelled_windows([ds], "train")
    scapes = unlabelled_windows([ds], "train", kinds=["soundscape"])
    focal = unlabelled_windows([ds], "train", kinds=["focal"])
    assert scapes and focal and len(scapes) + len(focal) == len(every)
    assert {kind[w.path.name] for w in scapes} == {"soundscape"}
    assert {kind[w.path.name] for w in focal} == {"focal"}
    src = SeparatorExamples([ds], "train", seed=1, kinds=["soundscape"])
    assert all(any(_is_crop_of(m, w) for w in scapes) for m in src.example(0)["mixtures"])
    with pytest.raises(DatasetError, match="window kinds must be among"):
        unlabelled_windows([ds], "train", kinds=["birdsong"])


def test_separator_examples_random_peak_levels(corpus: Path) -> None:
    from modeltools.data.dataset import DatasetError
    from modeltools.data.examples import SeparatorConfig

    ds = read_dataset(corpus)
    src = SeparatorExamples([ds], "train", cfg=SeparatorConfig(levels="random-peak"), seed=1)
    peaks = np.stack([np.max(np.abs(src.example(i)["mixtures"]), axis=1) for i in range(6)])
    assert np.all((peaks >= 0.05) & (peaks <= 0.75))
    assert np.ptp(peaks) > 0.05  # levels really drawn, not one constant
    with pytest.raises(DatasetError, match="MoM levels must be one of"):
        SeparatorConfig(levels="loud")


def test_stems_sum_to_the_mixtures_and_leave_the_mom_stream_unchanged(
    corpus: Path, tmp_path: Path
) -> None:
    from modeltools.data.audio_io import read_segment
    from modeltools.data.dataset import BIRDS_STEM, DatasetError
    from modeltools.data.examples import SeparatorConfig

    out = tmp_path / "stems"
    assert main(["synth", "--out", str(out), *ARGS, "--stems"]) == 0
    plain, stems = read_dataset(corpus), read_dataset(out)
    # The recordings are the same bit for bit; only the soundscapes gain a bird stem.
    assert {r.id: r.sha256 for r in plain.recordings} == {r.id: r.sha256 for r in stems.recordings}
    assert "stems" not in json.loads((corpus / "corpus.json").read_text())  # old corpora
    assert json.loads((out / "corpus.json").read_text())["stems"] is True
    for r in stems.recordings:
        assert (BIRDS_STEM in r.annotations) == (r.kind == "soundscape")
        if r.kind == "soundscape":
            audio = read_segment(stems.path(r), 0, r.num_samples)
            birds = read_segment(out / r.annotations[BIRDS_STEM], 0, r.num_samples)
            noise = audio - birds
            assert np.sum(birds**2) > 0 and np.sum(noise**2) > 0  # both stems really there
            assert np.max(np.abs(birds)) <= np.max(np.abs(audio)) * 1.5
    for levels in ("natural", "random-peak"):
        cfg = SeparatorConfig(example_s=2.0, levels=levels)
        with_stems = SeparatorExamples(
            [stems], "train", cfg=cfg, seed=1, kinds=["soundscape"], stems=True
        )
        without = SeparatorExamples([plain], "train", cfg=cfg, seed=1, kinds=["soundscape"])
        assert with_stems.keys() == ["mom", "mixtures", "sources"]
        for i in range(4):
            ex, ref = with_stems.example(i), without.example(i)
            np.testing.assert_array_equal(ex["mom"], ref["mom"])  # same MoMs
            src = ex["sources"]
            assert src.shape == (4, 44100)
            # [birds 1, noise 1, birds 2, noise 2]: each pair sums to its mixture.
            np.testing.assert_allclose(src[0] + src[1], ex["mixtures"][0], atol=1e-6)
            np.testing.assert_allclose(src[2] + src[3], ex["mixtures"][1], atol=1e-6)
    # No stems in the corpus, or focal windows (which have none): one clear error.
    for ds, kinds in ((plain, ["soundscape"]), (stems, ["focal", "soundscape"])):
        with pytest.raises(DatasetError, match=r"no bird stem.*synth --stems"):
            SeparatorExamples([ds], "train", seed=1, kinds=kinds, stems=True)


@pytest.mark.needs_tf
def test_tf_pipelines_are_deterministic_parallel_and_resumable(corpus: Path) -> None:
    pytest.importorskip("tensorflow")
    from modeltools.data.pipeline import classifier_dataset, separator_dataset

    ds = read_dataset(corpus)
    src = ClassifierExamples([ds], "train", seed=2)
    par = list(classifier_dataset(src, 4, num_examples=12).as_numpy_iterator())
    seq = list(classifier_dataset(src, 4, num_examples=12, parallel_calls=1).as_numpy_iterator())
    assert len(par) == 3
    for x, y in zip(par, seq, strict=True):
        assert set(x) == set(src.keys())
        assert all(np.array_equal(x[k], y[k]) for k in x)
    b = par[0]
    n_species = len(ds.taxonomy.label_spaces["species"])
    assert b["audio"].shape == (4, 110250) and b["species"].shape == (4, n_species)
    assert b["species_mask"].shape == (4, n_species) and b["lowpass"].shape == (4, 160)
    assert b["noise_only"].shape == (4,)
    # Resuming at example 8 continues the same stream.
    resumed = next(classifier_dataset(src, 4, num_examples=4, start=8).as_numpy_iterator())
    assert np.array_equal(resumed["audio"], par[2]["audio"])
    sep = next(separator_dataset(SeparatorExamples([ds], "train", seed=1), 2).as_numpy_iterator())
    np.testing.assert_allclose(sep["mom"], sep["mixtures"].sum(axis=1), atol=1e-6)


def test_example_sources_refuse_empty_inputs(corpus: Path) -> None:
    from modeltools.data.dataset import DatasetError

    ds = read_dataset(corpus)
    with pytest.raises(DatasetError, match="no labelled windows"):
        ClassifierExamples([ds], "test")
    w = WindowRef(corpus / ds.recordings[0].path, 0, 1000, ds.recordings[0].primary)
    short = ClassifierExamples([ds], "train", windows=[w], seed=0)
    assert short.example(0)["audio"].shape == (110250,)  # a short window is padded
