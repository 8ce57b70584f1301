"""``chorus-models benchmark-separation`` end to end, on a small stand-in of the shared real audio.

The stand-in has the real layout (evaluation-only folders with a BirdNET CSV, the noise files of
the protocol, MANIFEST.csv) filled with demo-species calls in pink noise; the BirdNET-signature
test model plays both the reference classifier and the classifier under test, and the demo
bundle's separator separates. So every part of the command runs for real (decoding, the split,
the agent's config/bundle/stages, scoring, Markdown/JSON/PNG) in CI, where the shared data is
absent.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from agent.demo import DEMO_SPECIES, level_to_amplitude, pink_noise, synthesize_call
from modeltools.cli import main

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "tests" / "data" / "models"
DEMO_BUNDLE = ROOT / "agent" / "bundles" / "demo"
RATE = 48000


def _write(root: Path, rel: str, x: np.ndarray, rows: list[dict]) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x.astype(np.float32), RATE, subtype="FLOAT", format="WAV")
    rows.append(
        {
            "path": rel,
            "duration_s": f"{x.shape[0] / RATE:.2f}",
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
    )


def fake_shared(root: Path) -> list[tuple[str, float, str, str]]:
    """Recordings with one demo call each at 3 s (the chunk 3-6 s), noise files, MANIFEST."""
    from modeltools.evaluation.real_benchmark import NOISE_FILES

    rng = np.random.default_rng(7)
    manifest: list[dict] = []
    chunks = []
    for k, sp in enumerate(DEMO_SPECIES[:3]):
        folder = ("xeno-canto", "birdnet-soundscape", "opensoundscape-tests")[k % 3]
        x = pink_noise(10 * RATE, -50.0, rng)
        call = synthesize_call(sp.code, 1.5, RATE, rng) * level_to_amplitude(-12.0)
        x[3 * RATE + RATE // 2 : 3 * RATE + RATE // 2 + call.shape[0]] += call
        rel = f"{folder}/rec{k}.wav"
        _write(root, rel, x, manifest)
        chunks.append((rel, 3.0, sp.label.scientific_name, sp.label.common_name))
    for _, rel in NOISE_FILES:
        # named like the real files (.mp3/.flac); libsndfile reads the WAV by its header
        _write(root, rel, pink_noise(12 * RATE, -30.0, rng), manifest)
    by_folder: dict[str, list[tuple[str, float, str, str]]] = {}
    for chunk in chunks:
        by_folder.setdefault(chunk[0].split("/")[0], []).append(chunk)
    for folder, rows in by_folder.items():
        with (root / folder / "birdnet-v2.4_detections.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "start_s", "end_s", "scientific_name", "common_name", "confidence"])
            for rel, start, sci, common in rows:
                name = rel.split("/", 1)[1]
                w.writerow([name, start, start + 3, sci, common, 0.95])
                w.writerow([name, 0.0, 3.0, sci, common, 0.5])  # below 0.8: no clip
                w.writerow([name, 6.0, 9.0, "Engine", "Engine", 0.99])  # not a bird: no clip
    with (root / "MANIFEST.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["path", "duration_s", "sha256"])
        w.writeheader()
        w.writerows(manifest)
    return chunks


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list]:
    tmp = tmp_path_factory.mktemp("bench")
    shared = tmp / "shared"
    chunks = fake_shared(shared)
    bn = tmp / "birdnet"
    bn.mkdir()
    shutil.copy(MODELS / "birdnet_like.tflite", bn / "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite")
    shutil.copy(MODELS / "birdnet_like_labels.txt", bn / "BirdNET_GLOBAL_6K_V2.4_Labels.txt")
    out = tmp / "out"
    argv = ["benchmark-separation", "--shared-data", str(shared), "--birdnet-dir", str(bn)]
    argv += ["--bundle", str(DEMO_BUNDLE), "--out", str(out), "--markdown", str(tmp / "r.md")]
    assert main(argv) == 0
    return tmp, json.loads((out / "benchmark.json").read_text()), chunks


def test_examples_follow_the_protocol(benchmark: tuple[Path, dict, list]) -> None:
    _, report, chunks = benchmark
    n = len(chunks)
    assert report["examples"] == {
        "snr+10": n,
        "snr+0": n,
        "snr-5": n,
        "snr-10": n,
        "pair": n,
        "noise": 14,
    }
    # each clip: 5 s starting 1 s before its >= 0.8 chunk; the 0.5 rows make no clip
    assert [(c["rel"], c["start_s"]) for c in report["clips"]] == [(c[0], 2.0) for c in chunks]
    assert report["labelled_total"] == 4 * n + 2 * n  # one species per noisy clip, two per pair


def test_every_mode_and_the_oracle_are_scored_within_their_budget(
    benchmark: tuple[Path, dict, list],
) -> None:
    tmp, report, _ = benchmark
    assert set(report["modes"]) == {"mix_only", "separated_only", "mix_and_separated", "oracle"}
    budget = report["modes"]["mix_only"]["conditions"]["all"]["default"]["fp_per_example"]
    for mode, res in report["modes"].items():
        matched = res["conditions"]["all"]["matched"]
        assert matched["fp_budget"] == pytest.approx(budget)
        assert matched["fp_per_example"] <= budget + 1e-9, mode
        recalls = [p[1] for p in res["curve"]]  # thresholds descending: recall never falls
        assert recalls == sorted(recalls)
    mix = report["modes"]["mix_only"]["conditions"]["all"]
    # These clean demo calls at +10 dB are found on the mix by the stand-in classifier.
    assert report["modes"]["mix_only"]["conditions"]["snr+10"]["default"]["recall"] == 1.0
    assert mix["default"]["precision"] is not None
    md = (tmp / "r.md").read_text()
    assert "| mix only |" in md and "oracle" in md and "recall_vs_fp.png" in md
    assert (tmp / "out" / "recall_vs_fp.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "policy",
    [
        {},  # the paper's max
        {
            "channels": "remixes",
            "weight": 0.5,
            "offset": -0.5,
            "gate_rms_ratio": 0.2,
            "min_mix_logit": -3,
        },
    ],
)
def test_scores_are_the_agents_own_on_the_same_window(
    benchmark: tuple[Path, dict, list], policy: dict
) -> None:
    """The benchmark's mix + separation score of an example is what the agent's Inference
    computes on that window (same config, bundle, stages, combination policy and gate)."""
    from agent.app import build_models
    from agent.detection.combine import CombinationPolicy, sigmoid
    from agent.pipeline import Inference, PipelineStats
    from agent.windowing import Window
    from modeltools.evaluation import real_benchmark as rb
    from modeltools.evaluation import real_run as rr

    tmp, _, _ = benchmark
    bn = tmp / "birdnet"
    model = bn / "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
    labels = bn / "BirdNET_GLOBAL_6K_V2.4_Labels.txt"
    _, examples = rb.build_examples(tmp / "shared")
    examples = examples[:3] + examples[-3:]  # noisy clips and noise alone
    config = rr.agent_config("birdnet", DEMO_BUNDLE, model, labels)
    models = build_models(config)
    models.combination = CombinationPolicy(**policy)
    bank = rr.channel_bank(models, examples, progress=False)
    table = rr.mode_table(bank, "mix_and_separated", models.combination)
    inference = Inference(models, "mix_and_separated", PipelineStats())
    start = datetime(2026, 5, 1, tzinfo=UTC)
    for e, ex in enumerate(examples):
        x = rr.to_pipeline_rate(ex.audio, models.sample_rate_hz, models.window_samples)
        result = inference.run(Window(0, x, 0, x.shape[0], models.sample_rate_hz, start))
        _, combined = result.scores[0]
        np.testing.assert_allclose(table.scores[e], sigmoid(combined.logits), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(table.winners[e], combined.winner)
    if policy:
        assert inference.channel_names[1] == "mix-sep0"


def test_missing_birdnet_files_and_shared_data_are_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["benchmark-separation", "--shared-data", str(tmp_path), "--birdnet-dir", str(tmp_path)]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert "no MANIFEST.csv" in capsys.readouterr().err
    (tmp_path / "MANIFEST.csv").write_text("path,duration_s,sha256\n")
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert "missing BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite" in capsys.readouterr().err
