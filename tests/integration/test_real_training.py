"""Separator training on real recordings mixed with the synthetic world: an unlabelled ingested
WAV folder (no taxonomy) beside a tiny synthetic corpus, weighted by ``--real-fraction``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from modeltools.cli import main
from modeltools.data.dataset import DatasetError, read_dataset
from modeltools.data.examples import ClassifierExamples, SeparatorExamples

SR = 22050
TINY_CORPUS = [
    *("--species", "2", "--other-species", "0"),
    *("--focal-per-species", "1", "1", "--focal-per-other", "0", "0"),
    *("--soundscapes", "1", "1", "0", "--soundscape-s", "10"),
    *("--noise-clips", "1", "0", "--noise-clip-s", "5"),
    *("--no-real-noise", "--workers", "1"),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a tiny synthetic corpus, an unlabelled dataset ingested from two field WAVs)."""
    tmp = tmp_path_factory.mktemp("real-training")
    assert main(["synth", "--out", str(tmp / "corpus"), *TINY_CORPUS]) == 0
    rng = np.random.default_rng(0)
    t = np.arange(8 * SR) / SR
    (tmp / "field").mkdir()
    for k, f0 in enumerate((2500.0, 4000.0)):
        chirps = np.sin(2 * np.pi * f0 * t) * (np.sin(2 * np.pi * 0.7 * t) > 0.6)
        x = 0.2 * chirps + 0.02 * rng.standard_normal(t.shape[0])
        sf.write(tmp / "field" / f"site{k}.wav", x, SR)
    real = tmp / "real"
    assert main(["ingest", str(tmp / "field"), "--out", str(real), "--layout", "unlabelled"]) == 0
    return tmp / "corpus", real


def test_unlabelled_real_data_mixes_with_a_corpus_for_the_separator_only(
    data: tuple[Path, Path],
) -> None:
    corpus, real = (read_dataset(p) for p in data)
    assert corpus.taxonomy.version != real.taxonomy.version and len(real.taxonomy) == 0
    both = [corpus, real]
    real_paths = {real.path(r) for r in real.recordings}

    def real_share(fraction: float | None) -> float:
        src = SeparatorExamples(both, "train", seed=3, real_fraction=fraction)
        drawn = [src._refs(i, np.random.default_rng(i)) for i in range(200)]
        assert all((a.path in real_paths) == (b.path in real_paths) for a, b in drawn)
        return float(np.mean([a.path in real_paths for a, _ in drawn]))

    assert real_share(1.0) == 1.0 and real_share(0.0) == 0.0
    assert 0.15 < real_share(0.25) < 0.35
    assert SeparatorExamples(both, "train", seed=3).example(0)["mom"].shape == (5 * SR,)
    with pytest.raises(DatasetError, match="different taxonomies"):
        ClassifierExamples(both, "train")  # labels still need one taxonomy
    with pytest.raises(DatasetError, match=r"no train windows .* real datasets"):
        SeparatorExamples([corpus], "train", real_fraction=0.5)


def test_train_separator_on_corpus_plus_real_records_the_mix(
    data: tuple[Path, Path], tmp_path: Path
) -> None:
    pytest.importorskip("tensorflow")
    corpus, real = data
    run = tmp_path / "run"
    args = ["train-separator", "--preset", "tiny", "--data", str(corpus), "--data", str(real)]
    args += ["--out", str(run), "--steps", "2", "--example-s", "1", "--val-examples", "2"]
    assert main([*args, "--real-fraction", "0.5", "--checkpoint-every", "2"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["real_fraction"] == 0.5 and config["real_audio"] == []  # no shared files
    assert main([*args, "--real-fraction", "1.5", "--out", str(tmp_path / "bad")]) == 2
