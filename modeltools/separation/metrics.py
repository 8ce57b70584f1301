"""Separation metrics (ALGORITHMS.md §1.8): SI-SNR, SI-SNRi, MoMi.

MoMi uses the assignment chosen by the MixIT *loss* (thresholded SNR, §1.7), as upstream
summaries do; the paper does not say. SI-SNR has no mean removal. Shapes as in
:mod:`modeltools.separation.losses`; results are numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from modeltools.separation.losses import mixit_remix, si_snr

__all__ = ["momi", "momi_per_example", "si_snr", "si_snri"]


def si_snri(estimate: Any, reference: Any, mixture: Any) -> np.ndarray:
    """SI-SNR(estimate, reference) - SI-SNR(mixture, reference), over the last axis."""
    return (si_snr(estimate, reference) - si_snr(mixture, reference)).numpy()


def momi_per_example(
    reference_mixtures: Any, estimates: Any, mom: Any = None, max_snr_db: float = 30.0
) -> np.ndarray:
    """MoMi of each example ``(batch,)`` in dB.

    ``reference_mixtures`` ``(batch, 2, time)``, ``estimates`` ``(batch, M, time)``; ``mom``
    ``(batch, time)`` defaults to the sum of the two references. Mean over the 2 mixtures of
    SI-SNR(remixed_i, x_i) - SI-SNR(mom, x_i), with the remix chosen by the MixIT loss.
    """
    refs = tf.convert_to_tensor(reference_mixtures, tf.float32)
    x = tf.reduce_sum(refs, axis=1) if mom is None else tf.convert_to_tensor(mom, tf.float32)
    remixed = mixit_remix(refs, estimates, max_snr_db)
    gain = si_snr(remixed, refs) - si_snr(tf.expand_dims(x, 1), refs)
    return tf.reduce_mean(gain, axis=1).numpy()


def momi(reference_mixtures: Any, estimates: Any, mom: Any = None) -> float:
    """Mean MoMi over examples in dB (see :func:`momi_per_example`)."""
    return float(np.mean(momi_per_example(reference_mixtures, estimates, mom)))
