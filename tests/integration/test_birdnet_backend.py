"""BirdNET-format backend, with stand-in models that have BirdNET V2.4's exact I/O signatures.

The real model is never shipped; ``test_real_birdnet_file`` runs it when the user points
CHORUS_BIRDNET_MODEL (and CHORUS_BIRDNET_LABELS) at their own copy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import yaml

from agent.audio.resample import resample
from agent.config import parse_config
from agent.demo import DEMO_SPECIES, demo_labels, make_demo_soundscape, write_demo_wav
from agent.errors import ConfigError
from agent.models.birdnet import (
    BirdNetClassifier,
    BirdNetLabel,
    map_labels,
    parse_birdnet_labels,
    shift_logits,
    subwindow_offsets,
)
from agent.models.location import LocationFilter, week_48

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "tests" / "data" / "models"
BN_MODEL, BN_LABELS = MODELS / "birdnet_like.tflite", MODELS / "birdnet_like_labels.txt"
META = MODELS / "mdata_like.tflite"
DEMO_CODES = [sp.code for sp in DEMO_SPECIES]


def birdnet_flat_sigmoid(x: np.ndarray, sensitivity: float) -> np.ndarray:
    """BirdNET-Analyzer >= 2.0, written from its documentation: sensitivity shifts the logit."""
    return 1 / (1.0 + np.exp(-np.clip(x + (sensitivity - 1.0) * 10.0, -20, 20)))


def test_sensitivity_shift_reproduces_birdnet_confidence() -> None:
    from agent.detection.combine import sigmoid

    x = np.linspace(-30, 30, 61, dtype=np.float32)
    for s in (0.5, 0.75, 1.0, 1.25, 1.5):
        np.testing.assert_allclose(
            sigmoid(shift_logits(x, s)), birdnet_flat_sigmoid(x, s), rtol=1e-6, atol=1e-9
        )
    # Higher sensitivity -> higher confidence, at every logit.
    assert np.all(shift_logits(x, 1.25) >= shift_logits(x, 1.0))


def test_label_parsing_splits_at_the_first_underscore(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("Turdus migratorius_American Robin\n\nFoo bar_Baz_Qux, the Second\nDog_Dog\n")
    assert parse_birdnet_labels(path) == [
        BirdNetLabel("Turdus migratorius", "American Robin"),
        BirdNetLabel("Foo bar", "Baz_Qux, the Second"),
        BirdNetLabel("Dog", "Dog"),
    ]
    path.write_text("Turdus migratorius American Robin\n")
    with pytest.raises(ConfigError, match=r"labels.txt:1: expected 'Scientific name_Common name'"):
        parse_birdnet_labels(path)
    with pytest.raises(ConfigError, match="file not found"):
        parse_birdnet_labels(tmp_path / "none.txt")


def test_species_identity_maps_by_scientific_name() -> None:
    backend = parse_birdnet_labels(BN_LABELS)
    mapped = map_labels(backend, demo_labels())
    assert [lab.species_code for lab in mapped[:6]] == DEMO_CODES  # our codes and taxonomy
    assert mapped[0] == demo_labels()[0]
    assert [lab.species_code for lab in mapped[6:]] == ["canis-familiaris", "engine", "foo-bar"]
    assert mapped[8].common_name == "Baz_Qux, the Second"
    upper = [BirdNetLabel(b.scientific_name.upper(), b.common_name) for b in backend[:1]]
    assert map_labels(upper, demo_labels())[0].species_code == DEMO_CODES[0]


def test_window_arithmetic() -> None:
    # A 5-s window at 22.05 kHz is exactly 240,000 samples at 48 kHz.
    assert resample(np.zeros(110250, np.float32), 22050, 48000).shape == (240000,)
    assert subwindow_offsets(240000, 144000, 48000) == [0, 96000]  # 1 s overlap: 0 s, 2 s
    assert subwindow_offsets(240000, 144000, 96000) == [0, 48000, 96000]  # 2 s: 0, 1, 2 s
    assert subwindow_offsets(240000, 144000, 0) == [0, 96000]  # always covers the window end
    assert subwindow_offsets(144000, 144000, 48000) == [0]


def _classifier(overlap_s: float = 1.0, sensitivity: float = 1.0) -> BirdNetClassifier:
    return BirdNetClassifier(
        BN_MODEL, BN_LABELS, sensitivity, overlap_s, 22050, 110250, demo_labels()
    )


def test_classifier_scores_channels_and_max_over_subwindows() -> None:
    clf = _classifier()
    assert clf.offsets == [0, 96000] and len(clf.labels) == 9
    scape = make_demo_soundscape(60.0, 22050, seed=11)
    correct = total = 0
    for start_s in np.arange(0.0, 55.0, 2.5):
        i = int(start_s * 22050)
        logits = clf.classify(scape.audio[np.newaxis, i : i + 110250])[0]
        truth = scape.window_truth(start_s, start_s + 5.0)
        for c, code in enumerate(DEMO_CODES):
            if truth[code] is None:
                continue
            total += 1
            correct += (logits[c] > 0) == truth[code]
        assert np.all(logits[6:] == -10.0)  # the extra classes never fire
    assert total > 60 and correct / total >= 0.9
    # Max over sub-windows: a call only in the last 3 s still counts.
    x = np.zeros(110250, np.float32)
    from agent.demo import level_to_amplitude, synthesize_call

    call = synthesize_call(DEMO_CODES[3], 1.0, 22050, np.random.default_rng(0))
    x[int(3.5 * 22050) : int(3.5 * 22050) + call.size] = call * level_to_amplitude(-20)
    assert clf.classify(x[np.newaxis])[0, 3] > 2.0
    # Sensitivity shifts every raw logit by (s - 1) * 10, then clips to +/-20.
    shifted = _classifier(sensitivity=1.2).classify(x[np.newaxis])[0]
    raw = clf.channel_logits(x)
    np.testing.assert_allclose(shifted, np.clip(raw + 2.0, -20, 20), atol=1e-4)


def test_wrong_files_are_refused_with_the_config_key(tmp_path: Path) -> None:
    demo_clf = ROOT / "agent" / "bundles" / "demo" / "classifier_a.tflite"
    with pytest.raises(
        ConfigError,
        match=r"classifier.birdnet.model: .*input is float32 "
        r"\[1, 110250\], BirdNET V2.4 takes float32 \[1, 144000\]",
    ):
        BirdNetClassifier(demo_clf, BN_LABELS, 1.0, 1.0, 22050, 110250)
    short = tmp_path / "short_labels.txt"
    short.write_text("\n".join(BN_LABELS.read_text().splitlines()[:5]) + "\n")
    with pytest.raises(ConfigError, match=r"output is \[1, 9\], expected \[1, 5\]"):
        BirdNetClassifier(BN_MODEL, short, 1.0, 1.0, 22050, 110250)
    with pytest.raises(ConfigError, match=r"classifier\.location_filter\.meta_model: .*input is"):
        LocationFilter(BN_MODEL, BN_LABELS, 45.0, 0.0, None, 0.03)


def test_week_48_is_four_weeks_per_month() -> None:
    assert week_48(datetime(2026, 1, 1)) == 1
    assert week_48(datetime(2026, 1, 8)) == 2
    assert week_48(datetime(2026, 1, 31)) == 4
    assert week_48(datetime(2026, 6, 15)) == 23
    assert week_48(datetime(2026, 12, 31)) == 48


def test_location_filter_masks_by_place_and_week() -> None:
    labels = map_labels(parse_birdnet_labels(BN_LABELS), demo_labels())
    north = LocationFilter(META, BN_LABELS, 45.0, 7.0, None, 0.03)
    summer, spring = datetime(2026, 7, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)
    assert north.mask(labels, summer).tolist() == [True] * 3 + [False] * 3 + [True] * 3
    assert north.mask(labels, spring).tolist() == [True, False, True] + [False] * 3 + [True] * 3
    south = LocationFilter(META, BN_LABELS, -45.0, 7.0, 24, 0.03)  # fixed week
    assert south.mask(labels, spring).tolist() == [False] * 3 + [True] * 3 + [True] * 3
    # A species the meta-model does not know is kept.
    from agent.models.manifest import Label

    assert north.mask((Label("x", "Nonexistent bird", "?"),), summer).tolist() == [True]


def _config(tmp_path: Path, **classifier: object) -> Path:
    cfg = {
        "classifier": {
            "backend": "birdnet",
            "birdnet": {"model": str(BN_MODEL), "labels": str(BN_LABELS)},
            **classifier,
        },
        "location": {"latitude_deg": 45.0, "longitude_deg": 7.0},
        # The demo bundle's separator and label table (its species are the demo audio's).
        "inference": {"bundle": str(ROOT / "agent" / "bundles" / "demo")},
    }
    path = tmp_path / "birdnet.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _analyze(tmp_path: Path, config: Path, wav: Path) -> list[dict]:
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "analyze",
            str(wav),
            "--config",
            str(config),
            "--out",
            str(out),
            "--start-utc",
            "2026-07-01T05:00:00Z",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(x) for x in (out / "detections.jsonl").read_text().splitlines()]


def test_analyze_with_birdnet_behind_the_separator(tmp_path: Path) -> None:
    wav = tmp_path / "dawn.wav"
    scape = write_demo_wav(wav, duration_s=30.0, seed=5)
    detections = _analyze(tmp_path, _config(tmp_path), wav)
    assert detections
    for d in detections:
        assert d["model"]["classifier"] == "birdnet"
        assert d["channel"] in {"mix", "sep0", "sep1", "sep2", "sep3"}
        assert d["species"]["code"] in DEMO_CODES  # our identity, not BirdNET's label text
    found = {d["species"]["code"] for d in detections}
    assert found <= {c for c, _, _ in scape.events}

    filtered = _analyze(
        tmp_path, _config(tmp_path, location_filter={"enabled": True, "meta_model": str(META)}), wav
    )
    assert {d["species"]["code"] for d in filtered} == found & set(DEMO_CODES[:3])


def test_check_config_of_the_shipped_example_names_missing_files() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "check-config",
            str(ROOT / "config" / "birdnet-separated.example.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "classifier.birdnet.labels: file not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_requires_paths_for_the_backend() -> None:
    with pytest.raises(ConfigError, match=r"backend .birdnet. needs birdnet\.model"):
        parse_config({"classifier": {"backend": "birdnet"}})
    with pytest.raises(ConfigError, match=r"needs location\.latitude_deg"):
        parse_config(
            {
                "classifier": {
                    "location_filter": {
                        "enabled": True,
                        "meta_model": "m.tflite",
                        "labels": "l.txt",
                    }
                }
            }
        )
    with pytest.raises(ConfigError, match=r"week: must be 1..48 or -1"):
        parse_config({"classifier": {"location_filter": {"week": 49}}})


@pytest.mark.peer
def test_real_birdnet_file(tmp_path: Path) -> None:
    model, labels = os.environ.get("CHORUS_BIRDNET_MODEL"), os.environ.get("CHORUS_BIRDNET_LABELS")
    if not (model and labels):
        pytest.skip(
            "set CHORUS_BIRDNET_MODEL and CHORUS_BIRDNET_LABELS to your BirdNET V2.4 "
            "model and labels file to run this test"
        )
    clf = BirdNetClassifier(model, labels, 1.0, 1.0, 22050, 110250, demo_labels())
    logits = clf.classify(np.zeros((5, 110250), np.float32))
    assert logits.shape == (5, len(clf.labels)) and np.isfinite(logits).all()
