"""Training: one step lowers the loss; an interrupted + resumed run equals an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from modeltools.classifier.losses import classifier_loss  # noqa: E402
from modeltools.classifier.model import build_classifier  # noqa: E402
from modeltools.classifier.presets import ClassifierError, load_preset  # noqa: E402

pytestmark = pytest.mark.needs_tf
CLASSES = {"species": 6, "genus": 4, "family": 3, "order": 2}


def _batch(rng: np.random.Generator, n: int = 4) -> dict[str, np.ndarray]:
    t = np.arange(110250) / 22050
    audio = np.stack(
        [0.3 * np.sin(2 * np.pi * (800 + 600 * k) * t) for k in range(n)]
    ) + 0.01 * rng.standard_normal((n, 110250))
    b: dict[str, np.ndarray] = {
        "audio": audio.astype(np.float32),
        "lowpass": np.ones((n, 160), np.float32),
        "noise_only": np.zeros(n, np.float32),
    }
    for h, c in CLASSES.items():
        y = np.zeros((n, c), np.float32)
        y[np.arange(n), 1 + np.arange(n) % (c - 1)] = 1.0
        b[h], b[f"{h}_mask"] = y, np.ones((n, c), np.float32)
    return b


def test_one_training_step_on_the_tiny_preset_lowers_the_loss() -> None:
    import keras

    keras.utils.set_random_seed(0)
    cfg = load_preset("tiny")
    model = build_classifier(cfg, CLASSES)
    opt = keras.optimizers.Adam(cfg.learning_rate, epsilon=cfg.adam_epsilon)
    b = _batch(np.random.default_rng(0))

    def loss() -> tf.Tensor:
        out = model({"audio": b["audio"], "lowpass": b["lowpass"]}, training=True)
        return tf.reduce_mean(classifier_loss(out, b)[0])

    before = float(loss())
    with tf.GradientTape() as tape:
        value = loss()
    opt.apply_gradients(
        zip(tape.gradient(value, model.trainable_variables), model.trainable_variables, strict=True)
    )
    after = float(loss())
    assert after < before


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modeltools.cli import main

    out = tmp_path_factory.mktemp("cls") / "corpus"
    args = ["--species", "3", "--other-species", "1", "--focal-per-species", "2", "1"]
    args += ["--focal-per-other", "1", "0", "--soundscapes", "1", "1", "1", "--soundscape-s", "15"]
    args += ["--noise-clips", "1", "1", "--noise-clip-s", "10", "--no-real-noise", "--workers", "1"]
    assert main(["synth", "--out", str(out), *args]) == 0
    return out


@pytest.mark.slow
def test_resumed_run_equals_an_uninterrupted_one_and_evaluates(
    small_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from modeltools.classifier.ensemble import load_member
    from modeltools.classifier.train import RunOptions, train_classifier
    from modeltools.cli import main
    from modeltools.data.dataset import read_dataset

    ds = [read_dataset(small_corpus)]
    cfg = load_preset("tiny", eval_every=0)
    a, b = tmp_path / "a", tmp_path / "b"
    train_classifier(cfg, ds, RunOptions(a, steps=4, progress=False))
    train_classifier(cfg, ds, RunOptions(b, steps=2, progress=False))
    with pytest.raises(ClassifierError, match="--resume"):
        train_classifier(cfg, ds, RunOptions(b, steps=4, progress=False))
    train_classifier(cfg, ds, RunOptions(b, steps=4, resume=True, progress=False))
    wa = load_member(a, "final")[0].get_weights()
    wb = load_member(b, "final")[0].get_weights()
    for x, y in zip(wa, wb, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    steps = [int(line.split(",")[0]) for line in (b / "train.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4]
    assert (
        main(
            [
                "eval-classifier",
                "--checkpoint",
                str(a),
                str(b),
                "--data",
                str(small_corpus),
                "--weights",
                "final",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "ensemble" in printed and "mean_member" in printed


@pytest.mark.slow
def test_tflite_export_uses_builtin_ops_and_matches_keras(tmp_path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from modeltools.classifier.export import export_model, to_tflite

    cfg = load_preset("tiny")
    model = build_classifier(cfg, CLASSES)
    path = to_tflite(model, cfg, CLASSES, tmp_path / "c.tflite")
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    ops = {d["op_name"] for d in it._get_ops_details()}
    assert "WHILE" not in ops and "DEPTHWISE_CONV_2D" in ops
    x = _batch(np.random.default_rng(1), 1)["audio"]
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    ref = export_model(model, cfg, CLASSES)({"audio": x})["species"].numpy()
    got = [it.get_tensor(d["index"]) for d in it.get_output_details()]
    got = [g for g in got if g.shape == ref.shape]
    assert min(np.abs(g - ref).max() for g in got) < 1e-4
