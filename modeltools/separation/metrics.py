"""Separation metrics (ALGORITHMS.md §1.8): SI-SNR, SI-SNRi, MoMi.

MoMi uses the assignment chosen by the MixIT *loss* (thresholded SNR, §1.7), as upstream
summaries do; the paper does not say. SI-SNR has no mean removal. Shapes as in
:mod:`modeltools.separation.losses`; results are numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from modeltools.separation.losses import mixit, si_snr

__all__ = ["LEVEL_GAP_BINS_DB", "momi", "momi_breakdown", "momi_per_example", "si_snr", "si_snri"]

# Level gap between the two mixtures of a MoM (energy, dB) for the per-range MoMi breakdown.
LEVEL_GAP_BINS_DB = (6.0, 12.0)


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
    return momi_breakdown(reference_mixtures, estimates, mom, max_snr_db)["momi_db"]


def momi_breakdown(
    reference_mixtures: Any,
    estimates: Any,
    mom: Any = None,
    max_snr_db: float = 30.0,
    mixing: Any = None,
) -> dict[str, np.ndarray]:
    """Per-example MoMi ``(batch,)`` with what explains it: ``collapsed`` (the MixIT
    assignment gives one mixture no estimate at all, so its remix is silent and scores about
    -80 dB SI-SNR), ``level_gap_db`` (energy of the louder mixture over the quieter) and
    ``mixing`` (the assignment used, ``(batch, 2, M)``).

    ``mixing`` given: score that assignment instead of searching one (e.g. a quantised model's
    outputs remixed the way the float model's were, :mod:`modeltools.export.parity`).
    """
    refs = tf.convert_to_tensor(reference_mixtures, tf.float32)
    x = tf.reduce_sum(refs, axis=1) if mom is None else tf.convert_to_tensor(mom, tf.float32)
    if mixing is None:
        _, mat = mixit(refs, estimates, max_snr_db)
    else:
        mat = tf.convert_to_tensor(mixing, tf.float32)
    remixed = tf.einsum("bim,bmt->bit", mat, tf.convert_to_tensor(estimates, tf.float32))
    gain = si_snr(remixed, refs) - si_snr(tf.expand_dims(x, 1), refs)
    power = np.sum(np.square(refs.numpy().astype(np.float64)), axis=-1) + 1e-12  # (B, 2)
    return {
        "momi_db": tf.reduce_mean(gain, axis=1).numpy(),
        "collapsed": np.any(mat.numpy().sum(axis=2) == 0, axis=1),
        "level_gap_db": np.abs(10 * np.log10(power[:, 0] / power[:, 1])),
        "mixing": mat.numpy(),
    }


def momi(reference_mixtures: Any, estimates: Any, mom: Any = None) -> float:
    """Mean MoMi over examples in dB (see :func:`momi_per_example`)."""
    return float(np.mean(momi_per_example(reference_mixtures, estimates, mom)))
