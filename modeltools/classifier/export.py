"""TFLite export of a trained classifier (float; the frontend inside the graph).

The export graph is the training graph built with a static batch of 1 and without the
low-pass input (DEPENDENCIES.md §7): the STFT becomes RFFT2D + COMPLEX_ABS, the PCEN smoother
the FIR depthwise convolution of :func:`~modeltools.classifier.frontend.ema_fir`, whitening and
AutoPool plain arithmetic -- only builtin ops, no WHILE/Flex. Inputs: ``audio`` (1, 110250);
outputs: the heads' logits and the embedding. int8 quantisation is a later step (the frontend
wants float, ALGORITHMS.md §5).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modeltools.classifier.model import build_classifier
from modeltools.classifier.presets import ClassifierConfig


def export_model(model: Any, cfg: ClassifierConfig, num_classes: dict[str, int]) -> Any:
    """The batch-1, audio-only twin of a training model, with its weights."""
    export = build_classifier(cfg, num_classes, batch_size=1, training_inputs=False)
    export.set_weights(model.get_weights())
    return export


def to_tflite(
    model: Any, cfg: ClassifierConfig, num_classes: dict[str, int], path: str | Path
) -> Path:
    """Convert a (training) classifier to a float .tflite file at ``path``."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(export_model(model, cfg, num_classes))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    path = Path(path)
    path.write_bytes(converter.convert())
    return path
