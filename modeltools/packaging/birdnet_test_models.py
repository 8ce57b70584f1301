"""Stand-in models with BirdNET-Analyzer V2.4's exact I/O signatures, for tests only.

The real BirdNET model is CC BY-NC-SA and is never shipped or downloaded by Chorus, yet the
BirdNET backend must be tested with real TFLite files. These are hand-set:

* ``birdnet_like.tflite``: float32 [1, 144000] (3 s at 48 kHz) -> [1, C] logits. The six demo
  species (agent.demo) are detected by band energy, like the demo bundle's classifier; the
  extra labels (non-bird classes, awkward names) always score -10.
* ``birdnet_like_labels.txt``: BirdNET's "Scientific name_Common name" lines, including a name
  with an underscore and a comma in its common part.
* ``mdata_like.tflite``: float32 [1, 3] (lat, lon, week) -> [1, C] occurrence = sigmoid of a
  fixed linear function: demo species 0-2 live north of the equator, 3-5 south; species 1 only
  from week 24 on; extra classes everywhere.

Rebuild: ``chorus-models build-test-models``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from agent.demo import (
    DEMO_SPECIES,
    NOISE_LEVEL_DBFS,
    level_to_amplitude,
    pink_noise,
    synthesize_call,
)

RATE_HZ = 48000
WINDOW = 144000
KERNEL = 1024
HOP = 512
THRESHOLD_DBFS = -37.5  # a call at this level gets logit 0
LOGIT_PER_DB = 0.5
EXTRA_LABELS = ("Canis familiaris_Dog", "Engine_Engine", "Foo bar_Baz_Qux, the Second")


def labels_lines() -> list[str]:
    return [f"{sp.label.scientific_name}_{sp.label.common_name}" for sp in DEMO_SPECIES] + list(
        EXTRA_LABELS
    )


def _call_window(code: str, level_dbfs: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = pink_noise(WINDOW, NOISE_LEVEL_DBFS, rng)
    call = synthesize_call(code, 1.0, RATE_HZ, rng) * level_to_amplitude(level_dbfs)
    x[RATE_HZ : RATE_HZ + call.shape[0]] += call
    return x.astype(np.float32)


def build_birdnet_like(scale: np.ndarray | None = None, bias: np.ndarray | None = None) -> Any:
    """Keras model; without scale/bias it outputs the raw log band features (calibration)."""
    from modeltools.packaging.demo_bundle import _tf, classifier_filterbank

    keras = _tf().keras
    ops = keras.ops
    n_sp, n_all = len(DEMO_SPECIES), len(labels_lines())
    wave = keras.Input((WINDOW,), batch_size=1, name="INPUT")
    x = ops.expand_dims(wave, -1)
    fb = keras.layers.Conv1D(2 * n_sp, KERNEL, strides=HOP, use_bias=False)
    x = ops.abs(fb(x))
    pairs = keras.layers.Conv1D(n_sp, 1, use_bias=False)
    x = keras.layers.AveragePooling1D(3, strides=1)(pairs(x))
    x = ops.log(ops.max(x, axis=1) + 1e-4)  # (1, n_sp)
    head = keras.layers.Dense(n_all)
    model = keras.Model(wave, head(x), name="birdnet_like")
    fb.set_weights([classifier_filterbank(KERNEL, RATE_HZ)[:, None, :].astype(np.float32)])
    pair_w = np.zeros((1, 2 * n_sp, n_sp), np.float32)
    for c in range(n_sp):
        pair_w[0, 2 * c : 2 * c + 2, c] = 1.0
    pairs.set_weights([pair_w])
    w = np.zeros((n_sp, n_all), np.float32)
    b = np.full(n_all, -10.0, np.float32)
    w[:, :n_sp] = np.diag(np.ones(n_sp) if scale is None else scale)
    b[:n_sp] = 0.0 if bias is None else bias
    head.set_weights([w, b])
    return model


def calibrated_birdnet_like() -> Any:
    features = build_birdnet_like()
    feats = np.array(
        [
            np.median(
                [
                    float(
                        features(_call_window(sp.code, THRESHOLD_DBFS, 7 + k)[None]).numpy()[0, c]
                    )
                    for k in range(3)
                ]
            )
            for c, sp in enumerate(DEMO_SPECIES)
        ]
    )
    scale = np.full(len(DEMO_SPECIES), LOGIT_PER_DB * 20.0 / np.log(10.0))
    return build_birdnet_like(scale, -scale * feats)


def build_mdata_like() -> Any:
    from modeltools.packaging.demo_bundle import _tf

    keras = _tf().keras
    n_sp, n_all = len(DEMO_SPECIES), len(labels_lines())
    inp = keras.Input((3,), batch_size=1, name="INPUT")
    dense = keras.layers.Dense(n_all, activation="sigmoid")
    model = keras.Model(inp, dense(inp), name="mdata_like")
    w = np.zeros((3, n_all), np.float32)  # rows: lat, lon, week
    b = np.full(n_all, 5.0, np.float32)  # extra classes: everywhere
    for c in range(n_sp):
        w[0, c] = 0.2 if c < 3 else -0.2
        b[c] = 0.0
    w[2, 1], b[1] = 1.0, -24.0  # species 1: north and week >= ~24
    dense.set_weights([w, b])
    return model


def build_birdnet_test_models(out_dir: str | Path) -> list[Path]:
    """Write the two float32 models and the labels file into ``out_dir``."""
    from modeltools.packaging.demo_bundle import _convert

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in (
        ("birdnet_like", calibrated_birdnet_like()),
        ("mdata_like", build_mdata_like()),
    ):
        path = out / f"{name}.tflite"
        path.write_bytes(_convert(model))
        written.append(path)
    labels = out / "birdnet_like_labels.txt"
    labels.write_text("\n".join(labels_lines()) + "\n", encoding="utf-8")
    written.append(labels)
    return written
