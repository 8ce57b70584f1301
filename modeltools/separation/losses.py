"""Separation losses as pure functions (ALGORITHMS.md §1.5-1.8).

Shapes: ``(batch, source, time)`` for sources/estimates, ``(batch, 2, time)`` for MixIT
reference mixtures, ``(batch, time)`` for a mixture. Every function accepts numpy arrays or
TensorFlow tensors and returns TensorFlow tensors (call ``.numpy()`` for numpy).

Choices for the ambiguities listed in ALGORITHMS.md §4:

* :func:`negative_snr` is the **full** thresholded form (P-metrics), including the
  ``-10 log10 ||y||^2`` term, with ``+1e-8`` inside both logs: values are reported in dB of
  negative SNR (-30 dB = perfect under the 30 dB cap). Gradients and the MixIT argmin equal
  SS-mixit's ``log_mse_loss`` (which omits the constant). A silent reference therefore costs
  ``10 log10(||y_hat||^2 + 1e-8) + 80`` dB.
* :func:`mixit` averages (not sums) the two mixtures' losses and allows assignments that
  leave a mixture empty; ties go to the lowest assignment index in
  ``itertools.product(range(2), repeat=M)`` order.
* :func:`si_snr` has **no mean removal** (upstream).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import tensorflow as tf

EPS_LOG = 1e-8


def _t(x: Any) -> tf.Tensor:
    return tf.convert_to_tensor(x, dtype=tf.float32)


def _log10(x: tf.Tensor) -> tf.Tensor:
    return tf.math.log(x) / tf.math.log(tf.constant(10.0, x.dtype))


def negative_snr(reference: Any, estimate: Any, max_snr_db: float = 30.0) -> tf.Tensor:
    """Negative thresholded SNR in dB, reduced over the last (time) axis.

    ``L = 10 log10(||y - y_hat||^2 + tau ||y||^2 + 1e-8) - 10 log10(||y||^2 + 1e-8)`` with
    ``tau = 10^(-max_snr_db / 10)`` multiplying the *reference* power; bounded below by
    ``-max_snr_db`` (for a non-silent reference). Shape: inputs ``(..., time)`` -> ``(...)``.
    """
    y, y_hat = _t(reference), _t(estimate)
    tau = 10.0 ** (-max_snr_db / 10.0)
    ref_pow = tf.reduce_sum(tf.square(y), axis=-1)
    err_pow = tf.reduce_sum(tf.square(y - y_hat), axis=-1)
    return 10.0 * _log10(err_pow + tau * ref_pow + EPS_LOG) - 10.0 * _log10(ref_pow + EPS_LOG)


def assignment_matrices(
    num_sources: int, num_mixtures: int = 2, allow_empty: bool = True
) -> np.ndarray:
    """All mixing matrices, shape ``(num_mixtures**M, num_mixtures, M)``, one 1 per column.

    Order is ``itertools.product(range(num_mixtures), repeat=M)``: entry ``a`` sends estimate
    ``j`` to mixture ``a[j]``. ``allow_empty=False`` drops the assignments that leave a mixture
    without any estimate (2^M - 2 remain for two mixtures), order otherwise unchanged.
    """
    combos = [
        c
        for c in itertools.product(range(num_mixtures), repeat=num_sources)
        if allow_empty or len(set(c)) == num_mixtures
    ]
    mats = np.zeros((len(combos), num_mixtures, num_sources), np.float32)
    for i, combo in enumerate(combos):
        for j, mix in enumerate(combo):
            mats[i, mix, j] = 1.0
    return mats


def mixit(
    reference_mixtures: Any, estimates: Any, max_snr_db: float = 30.0, allow_empty: bool = True
) -> tuple[tf.Tensor, tf.Tensor]:
    """Exhaustive MixIT: per-example loss ``(batch,)`` and best mixing matrix ``(batch, 2, M)``.

    ``reference_mixtures`` ``(batch, 2, time)``; ``estimates`` ``(batch, M, time)``. For each
    of the 2^M assignments the loss is the mean over the two mixtures of :func:`negative_snr`
    of the remixed estimates; the per-example loss is the minimum (ties -> lowest index).

    ``allow_empty=False`` (a training option, not the paper's MixIT and never used for MoMi)
    searches only assignments that give each mixture at least one estimate. Why: with mixture
    consistency, the assignment that sends every estimate to the louder mixture remixes that
    mixture into the whole MoM, whose loss does not depend on the model; a MoM stuck there
    contributes no gradient at all, so the model never learns to pull out quiet content.
    """
    refs, est = _t(reference_mixtures), _t(estimates)
    num_sources = est.shape[1]
    mats = tf.constant(assignment_matrices(num_sources, refs.shape[1], allow_empty))  # (A, 2, M)
    remixed = tf.einsum("aim,bmt->bait", mats, est)  # (B, A, 2, T)
    losses = tf.reduce_mean(
        negative_snr(tf.expand_dims(refs, 1), remixed, max_snr_db), axis=-1
    )  # (B, A)
    best = tf.argmin(losses, axis=1, output_type=tf.int32)  # first minimum on ties
    return tf.reduce_min(losses, axis=1), tf.gather(mats, best)


def source_mixit(
    references: Any, estimates: Any, max_snr_db: float = 30.0
) -> tuple[tf.Tensor, tf.Tensor]:
    """Supervised loss with a free assignment: per-example loss ``(batch,)`` and mixing matrix
    ``(batch, K, M)``.

    ``references`` ``(batch, K, time)`` are known sources (e.g. the bird stem and noise bed of
    each mixture, K = 4); ``estimates`` ``(batch, M, time)``. Every estimate goes to exactly one
    reference (K^M assignments, ``itertools.product(range(K), repeat=M)`` order, ties -> lowest
    index); the loss is the mean over references of :func:`negative_snr` of the estimates sent
    to it. This is :func:`mixit` with K references instead of two mixtures (the same numbers,
    tested), but it scores each of the 2^M estimate subsets once per reference instead of
    remixing all K^M assignments, so K = M = 4 costs 64 remixes rather than 1,024.

    Unlike a one-to-one permutation loss, a silent reference (a crop without a bird) may
    receive no estimate at all (``negative_snr(0, 0) = 0`` dB), and one reference may take
    several estimates.
    """
    refs, est = _t(references), _t(estimates)
    num_refs, num_sources = refs.shape[1], est.shape[1]
    subsets = np.array(list(itertools.product((0, 1), repeat=num_sources)), np.float32)
    weights = 2 ** np.arange(num_sources - 1, -1, -1)  # subset bits -> index in `subsets`
    combos = list(itertools.product(range(num_refs), repeat=num_sources))
    pick = np.zeros((len(combos), num_refs, subsets.shape[0]), np.float32)  # (A, K, S)
    for a, combo in enumerate(combos):
        for k in range(num_refs):
            pick[a, k, int(sum(w for w, c in zip(weights, combo, strict=True) if c == k))] = 1.0
    sums = tf.einsum("sm,bmt->bst", tf.constant(subsets), est)  # (B, S, T)
    table = negative_snr(refs[:, :, None, :], sums[:, None, :, :], max_snr_db)  # (B, K, S)
    losses = tf.einsum("bks,aks->ba", table, tf.constant(pick)) / num_refs  # (B, A)
    best = tf.argmin(losses, axis=1, output_type=tf.int32)
    mats = tf.constant(assignment_matrices(num_sources, num_refs))
    return tf.reduce_min(losses, axis=1), tf.gather(mats, best)


def mixture_consistency(mixture: Any, sources: Any, weights: Any = None) -> tf.Tensor:
    """Project ``sources`` ``(batch, M, time)`` so they sum to ``mixture`` ``(batch, time)``.

    ``weights``: None or ``"uniform"`` (r / M to each source), ``"magsq"`` (by source power,
    ``(1e-8 + mean_t s_j^2)`` normalised, from the unprojected estimates), or an array
    ``(batch, M)`` that sums to 1 over sources (e.g. the model's learned ``pred_source``
    softmax). Uniform uses explicit 1/M weights (the upstream float/int32 division fails in TF2).
    """
    x, s = _t(mixture), _t(sources)
    num_sources = s.shape[1]
    residual = x - tf.reduce_sum(s, axis=1)  # (B, T)
    if weights is None or (isinstance(weights, str) and weights == "uniform"):
        w = tf.fill(tf.shape(s)[:2], 1.0 / num_sources)
    elif isinstance(weights, str) and weights == "magsq":
        power = 1e-8 + tf.reduce_mean(tf.square(s), axis=-1)
        w = power / tf.reduce_sum(power, axis=1, keepdims=True)
    elif isinstance(weights, str):
        raise ValueError(f"unknown consistency weights {weights!r}")
    else:
        w = _t(weights)
    return s + tf.expand_dims(w, -1) * tf.expand_dims(residual, 1)


def si_snr(estimate: Any, target: Any) -> tf.Tensor:
    """Scale-invariant SNR in dB over the last axis, upstream form (no mean removal).

    Both signals are normalised to unit norm, rho = their inner product,
    ``10 log10((rho^2 + 1e-8) / (1 - rho^2 + 1e-8))``; when ``1 - rho^2 < 0.01`` the noise
    power is recomputed as ``||e_hat - rho t_hat||^2`` for precision. Symmetric.
    """
    e, t = _t(estimate), _t(target)
    e_n = e / tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(e), -1, keepdims=True), 1e-16))
    t_n = t / tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(t), -1, keepdims=True), 1e-16))
    rho = tf.reduce_sum(e_n * t_n, axis=-1)
    signal = tf.square(rho)
    noise = 1.0 - signal
    exact = tf.reduce_sum(tf.square(e_n - tf.expand_dims(rho, -1) * t_n), axis=-1)
    noise = tf.where(noise < 0.01, exact, noise)
    return 10.0 * _log10((signal + EPS_LOG) / (noise + EPS_LOG))
