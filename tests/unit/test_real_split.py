"""The real-audio split (shared/docs/REAL-AUDIO.md) in every training entry point, on a fake
shared-data root: a MANIFEST.csv plus a few generated WAVs in folders named like the real ones
(so these tests run in CI, where ../shared/data is absent)."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from modeltools.cli import main
from modeltools.data.dataset import Dataset, Recording, read_dataset
from modeltools.data.ingest import IngestError, IngestOptions, ingest
from modeltools.data.noise import REAL_NOISE, NoiseBank
from modeltools.data.real_split import (
    RealAudioSplitError,
    check_datasets,
    check_training_files,
    identify,
    training_span,
)
from modeltools.data.taxonomy import Taxonomy

SR = 22050
FILES = {  # rel -> seconds
    "xeno-canto/XC1_soundscape.wav": 2.0,
    "freesound-cc0-ambience/rain.wav": 4.0,
    "scikit-maad/indices/night.wav": 2.0,
    "birdvox-tests/flight.wav": 1.5,
}


@pytest.fixture
def shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake shared-data root, made the default one (``$CHORUS_SHARED_DATA``)."""
    root = tmp_path / "shared-data"
    rng = np.random.default_rng(0)
    rows = []
    for rel, seconds in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, 0.1 * rng.standard_normal(int(seconds * SR)), SR, subtype="PCM_16")
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        rows.append({"path": rel, "duration_s": f"{seconds:.2f}", "sha256": sha})
    with (root / "MANIFEST.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["path", "duration_s", "sha256"])
        w.writeheader()
        w.writerows(rows)
    monkeypatch.setenv("CHORUS_SHARED_DATA", str(root))
    return root


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def test_files_are_known_by_location_and_by_content(shared: Path, tmp_path: Path) -> None:
    assert identify(shared / "xeno-canto/XC1_soundscape.wav").role == "evaluation"
    copy = _copy(shared / "xeno-canto/XC1_soundscape.wav", tmp_path / "elsewhere" / "bird.wav")
    assert identify(copy) is None  # no root to look the content up in
    assert identify(copy, [shared]).rel == "xeno-canto/XC1_soundscape.wav"
    assert training_span(shared / "freesound-cc0-ambience/rain.wav", 4.0) == (0.0, 2.0)
    assert training_span(shared / "scikit-maad/indices/night.wav", 2.0) == (0.0, 2.0)
    with pytest.raises(RealAudioSplitError, match=r"evaluation-only.*REAL-AUDIO\.md"):
        check_training_files([shared / "birdvox-tests/flight.wav", copy], [shared])


def test_ingest_refuses_evaluation_audio_with_one_line_and_exit_2(
    shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(IngestError, match=r"xeno-canto/XC1_soundscape\.wav is evaluation-only"):
        ingest(shared / "xeno-canto", tmp_path / "a")
    # A renamed byte-identical copy in a folder of its own is found by its sha256.
    _copy(shared / "xeno-canto/XC1_soundscape.wav", tmp_path / "mine" / "renamed.wav")
    assert main(["ingest", str(tmp_path / "mine"), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "renamed.wav" in err[0] and "REAL-AUDIO.md" in err[0]
    assert not (tmp_path / "b" / "manifest.json").exists()
    # Into the test split (an evaluation dataset) it may go.
    res = ingest(tmp_path / "mine", tmp_path / "c", IngestOptions(split="test"))
    assert res.recordings[0].meta["shared"] == "xeno-canto/XC1_soundscape.wav"


def test_ingest_keeps_the_first_half_of_noise_files(shared: Path, tmp_path: Path) -> None:
    res = ingest(
        [shared / "freesound-cc0-ambience", shared / "scikit-maad"],
        tmp_path / "real",
        IngestOptions(layout="unlabelled"),
    )
    recs = {r.id: r for r in res.recordings}
    rain = recs["freesound-cc0-ambience/rain.wav"]
    assert rain.duration_s == pytest.approx(2.0, abs=1e-3)
    assert rain.meta["span_s"] == [0.0, 2.0] and rain.meta["shared_role"] == "noise"
    night = recs["scikit-maad/indices/night.wav"]
    assert night.duration_s == pytest.approx(2.0) and night.meta["span_s"] == [0.0, 2.0]
    test = ingest(shared / "freesound-cc0-ambience", tmp_path / "t", IngestOptions(split="test"))
    assert test.recordings[0].meta["span_s"] == [2.0, 4.0]  # the evaluation half

    real = check_datasets([read_dataset(tmp_path / "real")])
    assert [(e["file"], e["span_s"]) for e in real] == [
        ("freesound-cc0-ambience/rain.wav", [0.0, 2.0]),
        ("scikit-maad/indices/night.wav", [0.0, 2.0]),
    ]
    assert check_datasets([read_dataset(tmp_path / "t")]) == []  # test split: not read


def _dataset(root: Path, recs: list[Recording], info: dict) -> Dataset:
    return Dataset(root, "x", SR, Taxonomy([], allow_empty=True), recs, [], info)


def _rec(meta: dict, split: str = "train", kind: str = "unlabelled") -> Recording:
    return Recording("r", "audio/r.wav", split, kind, SR, "0" * 64, meta=meta)


def test_training_refuses_evaluation_audio_and_whole_noise_files(
    shared: Path, tmp_path: Path
) -> None:
    ingest(shared / "xeno-canto", tmp_path / "xc", IngestOptions(split="test"))
    ds = read_dataset(tmp_path / "xc")
    moved = _dataset(ds.root, [replace(r, split="train") for r in ds.recordings], ds.info)
    with pytest.raises(RealAudioSplitError, match=r"recording XC1_soundscape\.wav: .*evaluation"):
        check_datasets([moved], "separator training")
    # An old ingest (no span recorded) of a noise file held it whole.
    sha = hashlib.sha256((shared / "freesound-cc0-ambience/rain.wav").read_bytes()).hexdigest()
    old = _dataset(tmp_path, [_rec({"source": "rain.wav", "source_sha256": sha})], {})
    with pytest.raises(RealAudioSplitError, match=r"holds freesound-cc0-ambience/rain\.wav whole"):
        check_datasets([old])
    # A corpus made before the split used whole noise files in its beds; a new one says so.
    bed = {"noise": ["freesound-cc0-ambience/rain.wav", "synthetic:pink"]}
    corpus = _dataset(tmp_path, [_rec(bed, kind="soundscape")], {"generator": {"seed": 0}})
    with pytest.raises(RealAudioSplitError, match=r"synth --overwrite"):
        check_datasets([corpus])
    corpus.info["generator"]["real_noise_span"] = "training"
    assert check_datasets([corpus])[0]["span_s"] == [0.0, 2.0]  # half the MANIFEST duration


def test_noise_beds_use_only_the_training_span(tmp_path: Path) -> None:
    for rel, _pool in REAL_NOISE:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(
            p,
            np.random.default_rng(0).standard_normal(4 * SR) * 0.05,
            SR,
            format=p.suffix[1:].upper(),
        )
    for pool in ("train", "test"):
        for noise in NoiseBank(pool, tmp_path, SR).real:
            n = noise.samples.shape[0]
            whole = noise.name.startswith("scikit-maad/")
            assert n == pytest.approx(4 * SR if whole else 2 * SR, abs=SR // 20), noise.name
            assert noise.span_s == pytest.approx((0.0, 4.0 if whole else 2.0), abs=0.05)


def test_run_config_records_the_real_files(shared: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    from modeltools.separation.presets import get_preset
    from modeltools.separation.train import train

    ingest(shared / "freesound-cc0-ambience", tmp_path / "real", IngestOptions(layout="unlabelled"))
    cfg = get_preset("tiny", example_s=0.5, windows=("unlabelled",))
    train(cfg, [tmp_path / "real"], tmp_path / "run", steps=1, val_examples=0, progress=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert [(e["file"], e["span_s"]) for e in config["real_audio"]] == [
        ("freesound-cc0-ambience/rain.wav", [0.0, 2.0])
    ]
