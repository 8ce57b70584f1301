"""The paper's classification metrics (Denton et al., ICASSP 2022): CMAP, lwlrap, AUC, d′, top-1.

Every function takes ``scores`` and ``labels`` as ``(examples, classes)`` arrays. Scores may be
logits or probabilities: every metric here depends only on the *order* of scores (within a class
column or within an example row), so any strictly increasing transform (sigmoid, affine with a
positive slope) gives the same value. Labels are multi-hot 0/1 (or bool).

Tie conventions are scikit-learn's throughout, and top-1 uses the matching "expected value under
random tie-breaking" rule; see ``docs/metrics.md`` for the definitions, the conventions chosen and
why. Quantised (int8) logits create many ties, so compute metrics on dequantised float logits.

Undefined aggregates (no class qualifies for CMAP, no labelled example for lwlrap, no class with
both positives and negatives for AUC) are returned as NaN with a logged warning rather than raised,
so one sparse dataset cannot abort a multi-dataset report. Bad *inputs* raise
:class:`MetricInputError` (a ``ValueError``).
"""

from __future__ import annotations

import logging
import math
from typing import TypedDict, overload

import numpy as np
from scipy.special import ndtri
from scipy.stats import rankdata
from sklearn.metrics import (
    average_precision_score,
    label_ranking_average_precision_score,
    roc_auc_score,
)

from agent.errors import ChorusError

logger = logging.getLogger(__name__)

__all__ = [
    "DprimeSummary",
    "MetricInputError",
    "check_inputs",
    "cmap",
    "dprime",
    "dprime_summary",
    "lwlrap",
    "per_class_lwlrap",
    "roc_auc",
    "top1_precision",
]


class MetricInputError(ChorusError, ValueError):
    """Scores or labels cannot be evaluated (wrong shape, empty, non-finite, non-binary labels)."""


def check_inputs(scores: object, labels: object) -> tuple[np.ndarray, np.ndarray]:
    """Validate a ``(examples, classes)`` score matrix and its multi-hot labels.

    Returns ``(scores as float64, labels as bool)``. Raises :class:`MetricInputError` for:
    non-numeric or boolean scores, arrays that are not 2-D, empty arrays, mismatched shapes,
    NaN or infinite scores, and labels outside {0, 1}.
    """
    s = _as_array(scores, "scores")
    y = _as_array(labels, "labels")
    for name, arr in (("scores", s), ("labels", y)):
        if arr.ndim != 2:
            raise MetricInputError(
                f"{name} must be a 2-D (examples, classes) array; got shape {arr.shape}"
            )
    if s.shape != y.shape:
        raise MetricInputError(
            f"scores and labels must have the same shape; got {s.shape} and {y.shape}"
        )
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise MetricInputError(f"scores and labels are empty (shape {s.shape})")
    if s.dtype.kind == "b" or s.dtype.kind not in "iuf":
        raise MetricInputError(
            f"scores must be real numbers (logits or probabilities); got {s.dtype}"
        )
    s = s.astype(np.float64)
    if not np.all(np.isfinite(s)):
        bad = np.argwhere(~np.isfinite(s))[0]
        raise MetricInputError(
            f"scores contain NaN or infinite values ({int((~np.isfinite(s)).sum())} of them; "
            f"first at example {bad[0]}, class {bad[1]})"
        )
    if y.dtype.kind == "b":
        return s, y
    if y.dtype.kind not in "iuf":
        raise MetricInputError(f"labels must be 0/1 or bool; got dtype {y.dtype}")
    not_binary = (y != 0) & (y != 1)  # NaN compares unequal to both, so it is caught here too
    if np.any(not_binary):
        bad = np.argwhere(not_binary)[0]
        raise MetricInputError(
            f"labels must be 0 or 1; got {y[bad[0], bad[1]]!r} at example {bad[0]}, class {bad[1]}"
        )
    return s, y.astype(bool)


def _as_array(value: object, name: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except ValueError as exc:  # ragged nested lists
        raise MetricInputError(f"{name} is not a rectangular array: {exc}") from exc


def cmap(scores: object, labels: object, min_positives: int = 5) -> tuple[float, np.ndarray]:
    """Class-wise mean average precision over classes with ``>= min_positives`` positives.

    Per-class AP is scikit-learn's ``average_precision_score`` (non-interpolated; tied scores form
    one threshold). The paper's "classes with at least 5 positives" is ``min_positives=5``
    (Perch's ``sample_threshold=4``, a strict ``>`` test).

    Returns ``(macro, per_class)``: ``per_class`` has one AP per class, NaN for excluded classes;
    ``macro`` is the mean of the kept classes' AP, or NaN (with a warning) if no class qualifies.
    """
    if isinstance(min_positives, bool) or not isinstance(min_positives, int | np.integer):
        raise MetricInputError(f"min_positives must be an integer; got {min_positives!r}")
    if min_positives < 1:
        # AP is undefined for a class with no positives, so at least one is required.
        raise MetricInputError(f"min_positives must be >= 1; got {min_positives}")
    s, y = check_inputs(scores, labels)
    positives = y.sum(axis=0)
    per_class = np.full(y.shape[1], np.nan)
    for c in np.flatnonzero(positives >= min_positives):
        per_class[c] = average_precision_score(y[:, c], s[:, c])
    kept = ~np.isnan(per_class)
    if not kept.any():
        logger.warning(
            "cmap: no class has >= %d positives (most: %d); CMAP is undefined (NaN)",
            min_positives,
            int(positives.max()),
        )
        return math.nan, per_class
    return float(per_class[kept].mean()), per_class


def lwlrap(scores: object, labels: object) -> float:
    """Label-weighted label-ranking average precision (DCASE 2019 task 2).

    The mean, over every (example, positive label) pair, of the fraction of the example's positive
    labels ranked at or above that label. Examples with no labels are skipped. Computed with
    scikit-learn's ``label_ranking_average_precision_score`` weighted by the number of labels per
    example (a tied group of classes is ranked at its worst position). NaN (with a warning) if no
    example has a label.
    """
    s, y = check_inputs(scores, labels)
    n_labels = y.sum(axis=1)
    labelled = n_labels > 0
    if not labelled.any():
        logger.warning("lwlrap: no example has a positive label; lwlrap is undefined (NaN)")
        return math.nan
    return float(
        label_ranking_average_precision_score(
            y[labelled], s[labelled], sample_weight=n_labels[labelled]
        )
    )


def per_class_lwlrap(scores: object, labels: object) -> tuple[np.ndarray, np.ndarray]:
    """Per-class lwlrap and class weights; ``lwlrap == sum(per_class * weights)``.

    ``per_class[c]`` is the mean label-ranking precision over the positives of class ``c`` (0 for a
    class with no positives); ``weights[c]`` is class ``c``'s share of all positive labels (0 for a
    class with no positives; all zeros if there are no positives at all). Ties as :func:`lwlrap`.
    """
    s, y = check_inputs(scores, labels)
    # rank_c = #{j : s_j >= s_c} (a tied group takes its worst position): 'max' rank of -s.
    rank = rankdata(-s, method="max", axis=1)
    # hits_c = #{positive j : s_j >= s_c}: hide the negatives at -inf (scores are finite here)
    # so they never count as ranked at or above a positive.
    hits = rankdata(-np.where(y, s, -np.inf), method="max", axis=1)
    precision = np.where(y, hits / rank, 0.0)
    positives = y.sum(axis=0)
    per_class = precision.sum(axis=0) / np.maximum(1, positives)
    total = positives.sum()
    weights = positives / total if total > 0 else np.zeros(y.shape[1])
    return per_class, weights


def roc_auc(scores: object, labels: object) -> np.ndarray:
    """Per-class ROC-AUC (scikit-learn's ``roc_auc_score``: a tied pair counts 1/2).

    AUC is the fraction of (positive, negative) example pairs of a class that the scores order
    correctly. Classes with no positives or no negatives get NaN.
    """
    s, y = check_inputs(scores, labels)
    positives = y.sum(axis=0)
    defined = (positives > 0) & (positives < y.shape[0])
    auc = np.full(y.shape[1], np.nan)
    for c in np.flatnonzero(defined):
        auc[c] = roc_auc_score(y[:, c], s[:, c])
    return auc


@overload
def dprime(auc: float) -> float: ...
@overload
def dprime(auc: np.ndarray) -> np.ndarray: ...
def dprime(auc: float | np.ndarray) -> float | np.ndarray:
    """Sensitivity index d′ = √2 · Φ⁻¹(AUC), Φ⁻¹ the inverse standard-normal CDF (probit).

    Under the equal-variance Gaussian model AUC = Φ(d′/√2). AUC 0.5 → 0, AUC 1 → +inf,
    AUC 0 → -inf; NaN stays NaN (an undefined per-class AUC). Vectorised: a scalar gives a float,
    an array an array of the same shape. AUC outside [0, 1] raises :class:`MetricInputError`.
    """
    a = np.asarray(auc, dtype=np.float64)
    if np.any((a < 0) | (a > 1)):  # NaN fails both comparisons and passes through
        raise MetricInputError(f"AUC must lie in [0, 1]; got {a[(a < 0) | (a > 1)].ravel()[0]}")
    d = math.sqrt(2.0) * ndtri(a)
    return float(d) if d.ndim == 0 else d


class DprimeSummary(TypedDict):
    """Result of :func:`dprime_summary`."""

    auc_per_class: np.ndarray  # NaN where undefined
    dprime_per_class: np.ndarray  # NaN where undefined, ±inf for AUC 1 / 0
    n_classes_scored: int  # classes with both positives and negatives
    mean_auc: float  # over scored classes
    dprime_of_mean_auc: float  # headline: d′ of the class-mean AUC
    mean_dprime: float  # mean of per-class d′ (unbounded: +inf if any class has AUC 1)


def dprime_summary(scores: object, labels: object) -> DprimeSummary:
    """Per-class AUC and d′ plus both class aggregates.

    The paper does not say how d′ is aggregated over classes. The headline is d′ of the class-mean
    AUC (bounded unless every class is perfect); the mean of per-class d′ is given beside it. A
    single class with AUC 1 makes the latter +inf, which is reported as is, not clipped.
    All aggregates are NaN (with a warning) if no class has both positives and negatives.
    """
    auc = roc_auc(scores, labels)
    d = dprime(auc)
    scored = ~np.isnan(auc)
    n = int(scored.sum())
    if n == 0:
        logger.warning("dprime_summary: no class has both positives and negatives; d' is NaN")
        mean_auc = mean_d = d_of_mean = math.nan
    else:
        mean_auc = float(auc[scored].mean())
        d_of_mean = dprime(mean_auc)
        with np.errstate(invalid="ignore"):  # +inf and -inf together give NaN, which is right
            mean_d = float(d[scored].mean())
    return DprimeSummary(
        auc_per_class=auc,
        dprime_per_class=d,
        n_classes_scored=n,
        mean_auc=mean_auc,
        dprime_of_mean_auc=d_of_mean,
        mean_dprime=mean_d,
    )


def top1_precision(scores: object, labels: object, labeled_only: bool = False) -> float:
    """Fraction of examples whose top-scoring class is a true label.

    ``labeled_only=False`` counts every example, an example with no labels being a miss (Keras
    ``Precision(top_k=1)``); ``labeled_only=True`` counts only examples with >= 1 label (NaN, with
    a warning, if there are none). If several classes tie for the top score the example scores the
    fraction of them that are true labels — the expected hit under random tie-breaking, so the
    result does not depend on class order.
    """
    s, y = check_inputs(scores, labels)
    top = s == s.max(axis=1, keepdims=True)
    credit = (top & y).sum(axis=1) / top.sum(axis=1)
    if labeled_only:
        labelled = y.any(axis=1)
        if not labelled.any():
            logger.warning("top1_precision: no example has a positive label; result is NaN")
            return math.nan
        credit = credit[labelled]
    return float(credit.mean())
