"""Classifier loss (ALGORITHMS.md §2.6): masked, label-smoothed sigmoid BCE per head.

Per head: y' = y (1 - ls) + ls / 2 (Keras ``BinaryCrossentropy(label_smoothing=ls)``),
BCE_c = max(z, 0) - z y' + log(1 + exp(-|z|)) (stable form of the sigmoid cross-entropy),
masked classes (mask 0: a listed background species that may or may not be audible; a head
unknown for the primary) contribute zero, and the head loss is the sum over classes divided
by the number of classes (the Keras "mean over classes", with masked terms zeroed -- so masking
never up-weights the remaining classes), then averaged over the batch.

total = BCE_species + taxonomy_weight (BCE_genus + BCE_family + BCE_order) + bird_weight BCE_bird
with the bird target 1 - noise_only (the bird head is our addition; ``bird_weight=0`` gives the
paper's total).
"""

from __future__ import annotations

from typing import Any

from modeltools.classifier.model import BIRD_HEAD, TAXONOMY_HEADS


def masked_bce(labels: Any, logits: Any, mask: Any | None = None, smoothing: float = 0.1) -> Any:
    """Per-example loss (B,): mean over classes of the masked, smoothed sigmoid BCE."""
    import tensorflow as tf

    z = tf.convert_to_tensor(logits, tf.float32)
    y = tf.convert_to_tensor(labels, tf.float32) * (1.0 - smoothing) + 0.5 * smoothing
    ce = tf.maximum(z, 0.0) - z * y + tf.math.log1p(tf.exp(-tf.abs(z)))
    if mask is not None:
        ce = ce * tf.convert_to_tensor(mask, tf.float32)
    return tf.reduce_sum(ce, axis=-1) / float(int(z.shape[-1]))


def classifier_loss(
    outputs: dict[str, Any],
    batch: dict[str, Any],
    smoothing: float = 0.1,
    taxonomy_weight: float = 0.1,
    bird_weight: float = 0.1,
) -> tuple[Any, dict[str, Any]]:
    """(total per example (B,), {head: per-example loss}) for a batch of the data pipeline."""
    import tensorflow as tf

    parts = {
        h: masked_bce(batch[h], outputs[h], batch.get(f"{h}_mask"), smoothing)
        for h in TAXONOMY_HEADS
    }
    total = parts["species"] + taxonomy_weight * (parts["genus"] + parts["family"] + parts["order"])
    if bird_weight and "noise_only" in batch:
        bird = 1.0 - tf.reshape(tf.convert_to_tensor(batch["noise_only"], tf.float32), (-1, 1))
        parts[BIRD_HEAD] = masked_bce(bird, outputs[BIRD_HEAD], None, smoothing)
        total = total + bird_weight * parts[BIRD_HEAD]
    return total, parts
