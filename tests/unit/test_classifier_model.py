"""AutoPool, heads/shapes, losses, ensembles, presets and the params/MACs counter."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from modeltools.classifier.ensemble import ensemble_logits  # noqa: E402
from modeltools.classifier.losses import classifier_loss, masked_bce  # noqa: E402
from modeltools.classifier.model import (  # noqa: E402
    B0_STAGES,
    autopool,
    build_classifier,
    count_macs,
    count_params,
)
from modeltools.classifier.presets import (  # noqa: E402
    PRESET_DIR,
    ClassifierError,
    config_from_dict,
    load_preset,
)

pytestmark = pytest.mark.needs_tf
CLASSES = {"species": 7, "genus": 5, "family": 4, "order": 3}


def test_autopool_limits_and_general_value() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 30, size=(3, 16, 5)).astype(np.float32)
    np.testing.assert_allclose(autopool(x, np.zeros(5)), x.mean(axis=1), rtol=1e-5, atol=1e-4)
    big = np.asarray(autopool(x, np.full(5, 1e4)))  # alpha*x ~ 1e6: exp would overflow
    assert np.all(np.isfinite(big))
    np.testing.assert_allclose(big, x.max(axis=1), rtol=1e-5)
    np.testing.assert_allclose(autopool(x, np.full(5, -1e4)), x.min(axis=1), rtol=1e-5)
    alpha = np.array([0.0, 0.05, -0.02, 0.3, 1.0])
    z = alpha * x.astype(np.float64)
    w = np.exp(z - z.max(axis=1, keepdims=True))
    ref = (x * w).sum(axis=1) / w.sum(axis=1)
    np.testing.assert_allclose(autopool(x, alpha), ref, rtol=1e-4, atol=1e-4)
    # Gradients stay finite for large alpha too.
    a = tf.Variable(np.full(5, 1e3, np.float32))
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(autopool(x, a))
    assert np.all(np.isfinite(tape.gradient(y, a).numpy()))


def test_tiny_classifier_heads_shapes_and_no_imagenet_preprocessing() -> None:
    cfg = load_preset("tiny")
    model = build_classifier(cfg, CLASSES)
    audio = np.random.default_rng(1).normal(0, 0.1, (2, 110250)).astype(np.float32)
    out = model({"audio": audio, "lowpass": np.ones((2, 160), np.float32)})
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "species": (2, 7),
        "genus": (2, 5),
        "family": (2, 4),
        "order": (2, 3),
        "bird": (2, 1),
        "embedding": (2, cfg.embedding_dim),
    }
    names = {type(layer).__name__ for layer in model.layers}
    assert not names & {"Rescaling", "Normalization"}
    assert model.get_layer("top_act").output.shape[1:3] == (16, 5)  # stride 32, SAME
    assert model.get_layer("autopool").alpha.shape == (cfg.embedding_dim,)
    # Output biases start at the 1-in-C prior's log-odds (-log(C - 1)), autopool alphas at 0.
    np.testing.assert_allclose(model.get_layer("species_logits").bias.numpy(), -np.log(6), 1e-6)
    np.testing.assert_allclose(model.get_layer("autopool").alpha.numpy(), 0.0)
    # The export variant (static batch, no low-pass input) takes the same weights.
    export = build_classifier(cfg, CLASSES, batch_size=1, training_inputs=False)
    export.set_weights(model.get_weights())
    a = export({"audio": audio[:1]})["species"].numpy()
    b = model({"audio": audio[:1], "lowpass": np.ones((1, 160), np.float32)})["species"].numpy()
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_b0_backbone_matches_the_standard_table() -> None:
    model = build_classifier(load_preset("paper"), CLASSES)
    assert model.get_layer("top_act").output.shape[1:] == (16, 5, 1280)
    assert sum(r for *_, r in B0_STAGES) == 16
    blocks = {layer.name[:7] for layer in model.layers if layer.name.startswith("block")}
    assert len(blocks) == 16
    # keras.applications.EfficientNetB0(include_top=False, weights=None) has 4,049,571
    # parameters: 7 are its input Normalization's statistics (3 means, 3 variances, a count)
    # and its stem sees 3 channels (our 1-channel stem has 2*3*3*32 fewer weights); we add
    # the heads and AutoPool's alphas.
    heads = 1280 * (sum(CLASSES.values()) + 1) + sum(CLASSES.values()) + 1 + 1280
    assert count_params(model) == 4_049_571 - 7 - 2 * 3 * 3 * 32 + heads
    macs = count_macs(model)
    assert 5.5e8 < macs["network"] < 7e8 and macs["total"] > macs["network"]


def _bce_numpy(y: np.ndarray, z: np.ndarray, m: np.ndarray, ls: float = 0.1) -> np.ndarray:
    ys = y * (1 - ls) + ls / 2
    p = 1 / (1 + np.exp(-z))
    ce = -(ys * np.log(p) + (1 - ys) * np.log(1 - p))
    return (ce * m).sum(axis=-1) / y.shape[-1]


def test_masked_smoothed_bce_matches_numpy_and_keras() -> None:
    rng = np.random.default_rng(2)
    z = rng.normal(0, 2, (4, 6))
    y = (rng.random((4, 6)) < 0.3).astype(np.float32)
    m = (rng.random((4, 6)) < 0.7).astype(np.float32)
    np.testing.assert_allclose(masked_bce(y, z, m), _bce_numpy(y, z, m), rtol=1e-5)
    keras_bce = tf.keras.losses.BinaryCrossentropy(
        from_logits=True, label_smoothing=0.1, reduction=None
    )
    np.testing.assert_allclose(masked_bce(y, z), keras_bce(y, z).numpy(), rtol=1e-5)
    # A masked class contributes nothing, whatever its logit.
    z2 = z.copy()
    z2[m == 0] += 50.0
    np.testing.assert_allclose(masked_bce(y, z2, m), masked_bce(y, z, m), rtol=1e-6)


def test_total_loss_weights_the_taxonomic_heads() -> None:
    rng = np.random.default_rng(3)
    outs, batch = {}, {}
    for h, n in CLASSES.items():
        outs[h] = rng.normal(0, 1, (2, n)).astype(np.float32)
        batch[h] = (rng.random((2, n)) < 0.3).astype(np.float32)
        batch[f"{h}_mask"] = np.ones((2, n), np.float32)
    outs["bird"] = rng.normal(0, 1, (2, 1)).astype(np.float32)
    batch["noise_only"] = np.array([0.0, 1.0], np.float32)
    part = {h: _bce_numpy(batch[h], outs[h], batch[f"{h}_mask"]) for h in CLASSES}
    total, _ = classifier_loss(outs, batch, bird_weight=0.0)
    paper = part["species"] + 0.1 * (part["genus"] + part["family"] + part["order"])
    np.testing.assert_allclose(total, paper, rtol=1e-5)
    total_b, _ = classifier_loss(outs, batch, bird_weight=0.1)
    bird = _bce_numpy(np.array([[1.0], [0.0]]), outs["bird"], np.ones((2, 1)))
    np.testing.assert_allclose(total_b, paper + 0.1 * bird, rtol=1e-5)
    species_only, _ = classifier_loss(outs, batch, taxonomy_weight=0.0, bird_weight=0.0)
    np.testing.assert_allclose(species_only, part["species"], rtol=1e-5)


def test_ensemble_is_the_mean_of_logits() -> None:
    a, b, c = (np.full((2, 3), v, np.float32) for v in (1.0, 2.0, 6.0))
    np.testing.assert_allclose(ensemble_logits([a, b, c]), np.full((2, 3), 3.0))
    with pytest.raises(ValueError):
        ensemble_logits([])


def test_presets_load_and_reject_unknown_keys() -> None:
    names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    assert {"paper", "edge", "tiny", "b1", "b2"} <= set(names)
    for n in names:
        load_preset(n)
    assert load_preset("paper").scaling == (1.0, 1.0) and load_preset("b2").scaling == (1.1, 1.2)
    assert load_preset("paper").adam_epsilon == 0.01
    with pytest.raises(ClassifierError):
        config_from_dict({"widht": 2})
    with pytest.raises(ClassifierError):
        load_preset("no-such-preset")
