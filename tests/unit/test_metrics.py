"""Metrics against hand-computed cases, scikit-learn, and brute force written from the definitions.

The brute-force references below are deliberately naive loops over examples, classes and pairs,
written from ALGORITHMS.md §3, so they share no code (and no ranking trick) with the module.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.stats import norm
from sklearn.metrics import average_precision_score, label_ranking_average_precision_score

from agent.errors import ChorusError
from modeltools.evaluation.metrics import (
    MetricInputError,
    check_inputs,
    cmap,
    dprime,
    dprime_summary,
    lwlrap,
    per_class_lwlrap,
    roc_auc,
    top1_precision,
)

SQRT2 = math.sqrt(2.0)

# --------------------------------------------------------------------------- brute force


def brute_ap(y: np.ndarray, s: np.ndarray) -> float:
    """AP with scikit-learn's tie rule: each distinct score is one threshold.

    AP = Σ_t ΔR(t)·P(t), over distinct scores t descending, where P(t) is the precision of
    "score >= t" and ΔR(t) the share of positives whose score is exactly t.
    """
    n_pos = sum(1 for v in y if v)
    ap = 0.0
    for t in sorted(set(s.tolist()), reverse=True):
        above = [i for i in range(len(s)) if s[i] >= t]
        tp = sum(1 for i in above if y[i])
        new_pos = sum(1 for i in range(len(s)) if s[i] == t and y[i])
        ap += (new_pos / n_pos) * (tp / len(above))
    return ap


def textbook_ap(y: np.ndarray, s: np.ndarray) -> float:
    """ALGORITHMS.md §3.1 for distinct scores: (1/P)·Σ_k prec@k·rel_k, sorted by score."""
    order = sorted(range(len(s)), key=lambda i: -s[i])
    hits, total = 0, 0.0
    for k, i in enumerate(order, start=1):
        if y[i]:
            hits += 1
            total += hits / k
    return total / hits


def brute_cmap(s: np.ndarray, y: np.ndarray, min_positives: int) -> tuple[float, list[float]]:
    per = []
    for c in range(y.shape[1]):
        per.append(brute_ap(y[:, c], s[:, c]) if y[:, c].sum() >= min_positives else math.nan)
    kept = [v for v in per if not math.isnan(v)]
    return (sum(kept) / len(kept) if kept else math.nan), per


def brute_lwlrap(s: np.ndarray, y: np.ndarray) -> tuple[float, list[float], list[float]]:
    """DCASE 2019 task 2, ALGORITHMS.md §3.2; a tied group ranks at its worst position."""
    n, c_count = y.shape
    sums = [0.0] * c_count
    counts = [0] * c_count
    for i in range(n):
        for c in range(c_count):
            if not y[i, c]:
                continue
            rank = sum(1 for j in range(c_count) if s[i, j] >= s[i, c])
            hits = sum(1 for j in range(c_count) if y[i, j] and s[i, j] >= s[i, c])
            sums[c] += hits / rank
            counts[c] += 1
    total = sum(counts)
    per = [sums[c] / max(1, counts[c]) for c in range(c_count)]
    weights = [counts[c] / total if total else 0.0 for c in range(c_count)]
    overall = sum(sums) / total if total else math.nan
    return overall, per, weights


def brute_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos = [s[i] for i in range(len(s)) if y[i]]
    neg = [s[i] for i in range(len(s)) if not y[i]]
    if not pos or not neg:
        return math.nan
    won = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return won / (len(pos) * len(neg))


def brute_top1(s: np.ndarray, y: np.ndarray, labeled_only: bool) -> float:
    credits = []
    for i in range(s.shape[0]):
        if labeled_only and not y[i].any():
            continue
        best = max(s[i])
        tied = [c for c in range(s.shape[1]) if s[i, c] == best]
        credits.append(sum(1 for c in tied if y[i, c]) / len(tied))
    return sum(credits) / len(credits) if credits else math.nan


# --------------------------------------------------------------------------- strategies


@st.composite
def score_label_matrices(draw: st.DrawFn, max_examples: int = 9, max_classes: int = 6):
    """Small matrices; scores on a coarse grid so ties are frequent."""
    n = draw(st.integers(1, max_examples))
    c = draw(st.integers(1, max_classes))
    grid = draw(st.sampled_from([3, 6, 1000]))  # few levels → many ties; 1000 → mostly distinct
    scores = draw(hnp.arrays(np.int64, (n, c), elements=st.integers(-grid, grid))) / 4.0
    labels = draw(hnp.arrays(np.bool_, (n, c)))
    return scores, labels


FAST = settings(max_examples=150, deadline=None)


# --------------------------------------------------------------------------- CMAP


def test_cmap_hand_computed() -> None:
    s = np.array([[0.9], [0.8], [0.7], [0.1]])
    y = np.array([[1], [0], [1], [0]])
    macro, per = cmap(s, y, min_positives=1)
    # Positives at ranks 1 and 3: (1/1 + 2/3) / 2.
    assert macro == pytest.approx(5 / 6)
    np.testing.assert_allclose(per, [5 / 6])


def test_cmap_ties_use_sklearn_grouped_threshold_not_index_order() -> None:
    # Scores [0.5, 0.5, 0.1], positives at indexes 1 and 2. As one tied threshold:
    # 0.5 → precision 1/2 for recall 1/2; 0.1 → precision 2/3 for the other 1/2 → 7/12.
    # Perch's index-ordered sort would put index 1 first and give (1 + 2/3)/2 = 5/6.
    s = np.array([[0.5], [0.5], [0.1]])
    y = np.array([[0], [1], [1]])
    macro, _ = cmap(s, y, min_positives=1)
    assert macro == pytest.approx(7 / 12)
    # Swapping the tied examples changes nothing: order-independent.
    assert cmap(s, y[[1, 0, 2]], min_positives=1)[0] == pytest.approx(7 / 12)


def test_cmap_perfect_and_inverted_rankings() -> None:
    y = np.array([[1], [1], [0], [0]])
    assert cmap(np.array([[4.0], [3.0], [2.0], [1.0]]), y, 1)[0] == 1.0
    # Inverted: positives at ranks 3 and 4 → (1/3 + 2/4)/2 = 5/12.
    assert cmap(np.array([[1.0], [2.0], [3.0], [4.0]]), y, 1)[0] == pytest.approx(5 / 12)


@pytest.mark.parametrize(
    ("min_positives", "kept"),
    [(4, [0, 1, 2]), (5, [1, 2]), (6, [2]), (1, [0, 1, 2])],
)
def test_cmap_min_positives_rule_at_4_5_6(min_positives: int, kept: list[int]) -> None:
    rng = np.random.default_rng(0)
    y = np.zeros((20, 4), dtype=int)
    y[:4, 0] = 1  # 4 positives
    y[4:9, 1] = 1  # 5 positives
    y[9:15, 2] = 1  # 6 positives; class 3 has none
    s = rng.normal(size=y.shape)
    macro, per = cmap(s, y, min_positives=min_positives)
    assert np.flatnonzero(~np.isnan(per)).tolist() == kept
    expected = [average_precision_score(y[:, c], s[:, c]) for c in kept]
    np.testing.assert_allclose(per[kept], expected)
    assert macro == pytest.approx(np.mean(expected))


def test_cmap_default_is_five_positives() -> None:
    y = np.zeros((10, 2), dtype=int)
    y[:4, 0] = 1
    y[:5, 1] = 1
    _, per = cmap(np.arange(20.0).reshape(10, 2), y)
    assert math.isnan(per[0]) and not math.isnan(per[1])


def test_cmap_no_class_qualifies_is_nan_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    y = np.zeros((6, 2), dtype=int)
    y[:3, 0] = 1
    with caplog.at_level(logging.WARNING):
        macro, per = cmap(np.arange(12.0).reshape(6, 2), y, min_positives=5)
    assert math.isnan(macro)
    assert np.isnan(per).all() and per.shape == (2,)
    assert "no class has >= 5 positives" in caplog.text


def test_cmap_class_without_positives_is_excluded_even_at_min_one() -> None:
    y = np.array([[1, 0], [0, 0], [1, 0]])
    macro, per = cmap(np.array([[0.9, 0.1], [0.2, 0.3], [0.8, 0.5]]), y, min_positives=1)
    assert math.isnan(per[1])
    assert macro == 1.0


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "5"])
def test_cmap_rejects_bad_min_positives(bad: object) -> None:
    with pytest.raises(MetricInputError, match="min_positives"):
        cmap(np.ones((3, 2)), np.ones((3, 2)), min_positives=bad)  # type: ignore[arg-type]


def test_textbook_ap_matches_grouped_ap_without_ties() -> None:
    # Guards the brute-force reference itself: with distinct scores both readings agree.
    rng = np.random.default_rng(1)
    for _ in range(50):
        s = rng.permutation(12).astype(float)
        y = rng.random(12) < 0.4
        if y.any():
            assert brute_ap(y, s) == pytest.approx(textbook_ap(y, s))


@FAST
@given(score_label_matrices(), st.integers(1, 4))
def test_cmap_matches_brute_force_and_sklearn(data, min_positives: int) -> None:
    s, y = data
    macro, per = cmap(s, y, min_positives)
    ref_macro, ref_per = brute_cmap(s, y, min_positives)
    np.testing.assert_allclose(per, ref_per, rtol=1e-12, equal_nan=True)
    if math.isnan(ref_macro):
        assert math.isnan(macro)
    else:
        assert macro == pytest.approx(ref_macro, rel=1e-12)
        kept = y.sum(axis=0) >= min_positives
        sk = np.mean([average_precision_score(y[:, c], s[:, c]) for c in np.flatnonzero(kept)])
        assert macro == pytest.approx(sk, rel=1e-12)


# --------------------------------------------------------------------------- lwlrap


def dcase_example() -> tuple[np.ndarray, np.ndarray]:
    s = np.array([[0.9, 0.5, 0.2, 0.1], [0.1, 0.8, 0.3, 0.6], [0.3, 0.2, 0.1, 0.0]])
    y = np.array([[1, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
    return s, y


def test_lwlrap_hand_computed() -> None:
    s, y = dcase_example()
    # Example 0: class 0 at rank 1 → 1; class 2 at rank 3 with 2 positives at or above → 2/3.
    # Example 1: class 3 at rank 2 → 1/2. Example 2 has no labels. Mean over 3 pairs.
    assert lwlrap(s, y) == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    per, w = per_class_lwlrap(s, y)
    np.testing.assert_allclose(per, [1, 0, 2 / 3, 1 / 2])
    np.testing.assert_allclose(w, [1 / 3, 0, 1 / 3, 1 / 3])


def test_lwlrap_ties_rank_at_worst_position() -> None:
    # One positive tied with one negative at the top: rank 2, 1 positive at or above → 1/2.
    s = np.array([[0.5, 0.5, 0.1]])
    assert lwlrap(s, np.array([[1, 0, 0]])) == pytest.approx(0.5)
    assert lwlrap(s, np.array([[0, 1, 0]])) == pytest.approx(0.5)
    # Two positives tied at the top: each at rank 2 with 2 positives → 1.
    assert lwlrap(s, np.array([[1, 1, 0]])) == 1.0


def test_lwlrap_perfect_and_inverted() -> None:
    y = np.array([[1, 1, 0, 0], [0, 0, 0, 1]])
    assert lwlrap(np.array([[4.0, 3, 2, 1], [1, 2, 3, 4]]), y) == 1.0
    # Inverted: example 0 positives at ranks 3, 4 → 1/3, 2/4; example 1 positive at rank 4 → 1/4.
    inv = np.array([[1.0, 2, 3, 4], [4, 3, 2, 1]])
    assert lwlrap(inv, y) == pytest.approx((1 / 3 + 1 / 2 + 1 / 4) / 3)


def test_lwlrap_ignores_examples_without_labels() -> None:
    s, y = dcase_example()
    value = lwlrap(s, y)
    extra_s = np.vstack([s, np.random.default_rng(2).normal(size=(5, 4))])
    extra_y = np.vstack([y, np.zeros((5, 4), dtype=int)])
    assert lwlrap(extra_s, extra_y) == pytest.approx(value)


def test_lwlrap_without_any_label_is_nan(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert math.isnan(lwlrap(np.ones((3, 2)), np.zeros((3, 2))))
    assert "no example has a positive label" in caplog.text
    per, w = per_class_lwlrap(np.ones((3, 2)), np.zeros((3, 2)))
    np.testing.assert_array_equal(per, [0, 0])
    np.testing.assert_array_equal(w, [0, 0])


@FAST
@given(score_label_matrices())
def test_lwlrap_matches_brute_force(data) -> None:
    s, y = data
    ref, ref_per, ref_w = brute_lwlrap(s, y)
    per, w = per_class_lwlrap(s, y)
    np.testing.assert_allclose(per, ref_per, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(w, ref_w, rtol=1e-12, atol=1e-15)
    value = lwlrap(s, y)
    if math.isnan(ref):
        assert math.isnan(value)
    else:
        assert value == pytest.approx(ref, rel=1e-12)
        assert float(np.sum(per * w)) == pytest.approx(ref, rel=1e-12)


@FAST
@given(score_label_matrices())
def test_lwlrap_equals_label_weighted_sklearn_lrap(data) -> None:
    s, y = data
    labelled = y.any(axis=1)
    if not labelled.any():
        return
    sk = label_ranking_average_precision_score(
        y[labelled], s[labelled], sample_weight=y[labelled].sum(axis=1)
    )
    assert lwlrap(s, y) == pytest.approx(sk, rel=1e-12)


# --------------------------------------------------------------------------- ROC-AUC, d′


def test_roc_auc_hand_computed_with_ties_and_undefined_classes() -> None:
    s = np.array(
        [[0.9, 0.5, 0.3, 0.2], [0.8, 0.5, 0.3, 0.2], [0.7, 0.1, 0.3, 0.2], [0.1, 0.2, 0.3, 0.2]]
    )
    y = np.array([[1, 1, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    auc = roc_auc(s, y)
    # Class 0: pairs (0.9>0.8, 0.9>0.1, 0.7<0.8, 0.7>0.1) → 3/4.
    assert auc[0] == pytest.approx(3 / 4)
    # Class 1: positive 0.5 vs negatives 0.5 (tie → 1/2), 0.1, 0.2 → (0.5 + 1 + 1)/3.
    assert auc[1] == pytest.approx(2.5 / 3)
    # Class 2: every score tied → 1/2. Class 3: no positives → NaN.
    assert auc[2] == pytest.approx(0.5)
    assert math.isnan(auc[3])


def test_roc_auc_all_positive_class_is_nan_and_perfect_inverted() -> None:
    s = np.array([[4.0, 1.0, 1.0], [3.0, 2.0, 2.0], [2.0, 3.0, 3.0], [1.0, 4.0, 4.0]])
    y = np.array([[1, 1, 1], [1, 1, 1], [0, 0, 1], [0, 0, 1]])
    auc = roc_auc(s, y)
    assert auc[0] == 1.0 and auc[1] == 0.0 and math.isnan(auc[2])


@FAST
@given(score_label_matrices())
def test_roc_auc_matches_pairwise_brute_force(data) -> None:
    s, y = data
    ref = [brute_auc(y[:, c], s[:, c]) for c in range(y.shape[1])]
    np.testing.assert_allclose(roc_auc(s, y), ref, rtol=1e-12, equal_nan=True)


def test_dprime_is_inverse_cdf() -> None:
    # At chance d' is 0 (the CDF reading of the paper's text would give √2·Φ(0.5) ≈ 0.98).
    assert dprime(0.5) == 0.0
    for d in (-3.0, -0.5, 0.25, 1.0, 2.5, 5.0):
        assert dprime(float(norm.cdf(d / SQRT2))) == pytest.approx(d, rel=1e-9, abs=1e-12)
    assert dprime(0.75) == pytest.approx(SQRT2 * norm.ppf(0.75))


def test_dprime_near_and_at_the_ends() -> None:
    near = dprime(1 - 1e-9)
    assert math.isfinite(near) and near == pytest.approx(SQRT2 * 5.997807, rel=1e-6)
    assert dprime(1 - 1e-12) > near
    assert dprime(1.0) == math.inf
    assert dprime(0.0) == -math.inf
    assert math.isnan(dprime(math.nan))


def test_dprime_is_vectorised_and_monotone() -> None:
    auc = np.array([[0.1, 0.5], [0.9, np.nan]])
    d = dprime(auc)
    assert isinstance(d, np.ndarray) and d.shape == (2, 2)
    np.testing.assert_allclose(d[0, 0], -d[1, 0])
    assert d[0, 1] == 0.0 and np.isnan(d[1, 1])
    grid = np.linspace(0.001, 0.999, 200)
    assert np.all(np.diff(dprime(grid)) > 0)
    assert isinstance(dprime(0.7), float)


@pytest.mark.parametrize("bad", [-0.01, 1.01, [0.5, 2.0]])
def test_dprime_rejects_auc_outside_unit_interval(bad: object) -> None:
    with pytest.raises(MetricInputError, match=r"AUC must lie in \[0, 1\]"):
        dprime(bad)  # type: ignore[arg-type]


def test_dprime_summary_reports_both_aggregates() -> None:
    s = np.array([[0.9, 0.9], [0.8, 0.8], [0.7, 0.7], [0.1, 0.1]])
    y = np.array([[1, 1], [0, 0], [1, 0], [0, 1]])  # AUC 3/4 and 1/2
    out = dprime_summary(s, y)
    np.testing.assert_allclose(out["auc_per_class"], [0.75, 0.5])
    assert out["n_classes_scored"] == 2
    assert out["mean_auc"] == pytest.approx(0.625)
    assert out["dprime_of_mean_auc"] == pytest.approx(SQRT2 * norm.ppf(0.625))
    assert out["mean_dprime"] == pytest.approx((SQRT2 * norm.ppf(0.75) + 0.0) / 2)


def test_dprime_summary_one_perfect_class_makes_mean_dprime_infinite() -> None:
    s, y = dcase_example()  # AUCs 1, NaN, 1/2, 1
    out = dprime_summary(s, y)
    assert out["n_classes_scored"] == 3
    assert out["mean_auc"] == pytest.approx(5 / 6)
    assert out["dprime_of_mean_auc"] == pytest.approx(SQRT2 * norm.ppf(5 / 6))
    assert out["mean_dprime"] == math.inf
    assert math.isnan(out["dprime_per_class"][1])


def test_dprime_summary_without_scorable_class_is_nan(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        out = dprime_summary(np.ones((3, 2)), np.zeros((3, 2)))
    assert out["n_classes_scored"] == 0
    assert all(math.isnan(out[k]) for k in ("mean_auc", "dprime_of_mean_auc", "mean_dprime"))
    assert "no class has both positives and negatives" in caplog.text


# --------------------------------------------------------------------------- top-1


def test_top1_hand_computed_and_labeled_only() -> None:
    s, y = dcase_example()
    # Example 0: top class 0 is positive (hit); example 1: top class 1 is negative (miss);
    # example 2: no labels (miss when counted).
    assert top1_precision(s, y) == pytest.approx(1 / 3)
    assert top1_precision(s, y, labeled_only=True) == pytest.approx(1 / 2)


def test_top1_ties_score_the_expected_hit() -> None:
    s = np.array([[0.7, 0.7, 0.7, 0.1], [0.2, 0.9, 0.9, 0.0]])
    y = np.array([[1, 0, 0, 0], [0, 1, 1, 0]])
    # Example 0: 1 of 3 tied top classes is positive → 1/3; example 1: both tied are → 1.
    assert top1_precision(s, y) == pytest.approx((1 / 3 + 1) / 2)
    # Independent of class order (np.argmax would take the first tied class).
    perm = [2, 3, 0, 1]
    assert top1_precision(s[:, perm], y[:, perm]) == pytest.approx((1 / 3 + 1) / 2)


def test_top1_without_labels(caplog: pytest.LogCaptureFixture) -> None:
    s, y = np.ones((2, 3)), np.zeros((2, 3))
    assert top1_precision(s, y) == 0.0
    with caplog.at_level(logging.WARNING):
        assert math.isnan(top1_precision(s, y, labeled_only=True))
    assert "no example has a positive label" in caplog.text


@FAST
@given(score_label_matrices(), st.booleans())
def test_top1_matches_brute_force(data, labeled_only: bool) -> None:
    s, y = data
    ref = brute_top1(s, y, labeled_only)
    value = top1_precision(s, y, labeled_only=labeled_only)
    if math.isnan(ref):
        assert math.isnan(value)
    else:
        assert value == pytest.approx(ref, rel=1e-12)


# --------------------------------------------------------------------------- invariances


def all_metrics(s: np.ndarray, y: np.ndarray) -> list[float]:
    out: list[float] = []
    macro, per = cmap(s, y, min_positives=1)
    out += [macro, *per]
    out.append(lwlrap(s, y))
    per_l, w = per_class_lwlrap(s, y)
    out += [*per_l, *w]
    out += list(roc_auc(s, y))
    out += [top1_precision(s, y), top1_precision(s, y, labeled_only=True)]
    return out


@FAST
@given(score_label_matrices())
def test_metrics_are_invariant_to_sigmoid_and_affine_transforms(data) -> None:
    logits, y = data
    # Clipping keeps the sigmoid strictly increasing in float64 (it saturates to 1.0 past ~37),
    # so the transform neither creates nor removes ties; the ties clipping adds are kept by both.
    logits = np.clip(logits, -9.0, 9.0)
    reference = all_metrics(logits, y)
    probabilities = 1.0 / (1.0 + np.exp(-logits))
    np.testing.assert_allclose(all_metrics(probabilities, y), reference, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(
        all_metrics(3.0 * logits - 7.0, y), reference, rtol=1e-12, equal_nan=True
    )


def test_accepts_float32_int8_and_bool_inputs() -> None:
    s, y = dcase_example()
    reference = lwlrap(s, y)
    assert lwlrap(s.astype(np.float32), y.astype(bool)) == pytest.approx(reference)
    q = np.round(s * 100).astype(np.int8)  # quantised logits keep this example's order
    assert lwlrap(q, y.astype(np.float32)) == pytest.approx(reference)
    assert lwlrap(s.tolist(), y.tolist()) == pytest.approx(reference)


# --------------------------------------------------------------------------- bad inputs


METRICS: list[Callable[[object, object], object]] = [
    check_inputs,
    cmap,
    lwlrap,
    per_class_lwlrap,
    roc_auc,
    dprime_summary,
    top1_precision,
]

GOOD = np.array([[0.1, 0.9], [0.4, 0.2], [0.3, 0.3]])
GOOD_Y = np.array([[0, 1], [1, 0], [1, 1]])


def _with(arr: np.ndarray, index: tuple[int, int], value: float) -> np.ndarray:
    out = arr.astype(float)
    out[index] = value
    return out


BAD_INPUTS = {
    "empty examples": (np.zeros((0, 3)), np.zeros((0, 3)), "empty"),
    "empty classes": (np.zeros((3, 0)), np.zeros((3, 0)), "empty"),
    "shape mismatch": (GOOD, GOOD_Y[:2], "same shape"),
    "1-D scores": (GOOD[:, 0], GOOD_Y[:, 0], "2-D"),
    "3-D scores": (GOOD[None], GOOD_Y[None], "2-D"),
    "NaN score": (_with(GOOD, (1, 1), np.nan), GOOD_Y, "NaN or infinite"),
    "inf score": (_with(GOOD, (0, 0), np.inf), GOOD_Y, "NaN or infinite"),
    "-inf score": (_with(GOOD, (2, 1), -np.inf), GOOD_Y, "NaN or infinite"),
    "label 2": (GOOD, _with(GOOD_Y, (0, 0), 2), "labels must be 0 or 1"),
    "soft label": (GOOD, _with(GOOD_Y, (0, 0), 0.5), "labels must be 0 or 1"),
    "NaN label": (GOOD, _with(GOOD_Y, (2, 0), np.nan), "labels must be 0 or 1"),
    "string labels": (GOOD, GOOD_Y.astype(str), "labels must be 0/1 or bool"),
    "bool scores": (GOOD_Y.astype(bool), GOOD_Y, "real numbers"),
    "string scores": (GOOD.astype(str), GOOD_Y, "real numbers"),
    "ragged scores": ([[0.1, 0.2], [0.3]], GOOD_Y[:2], "rectangular"),
}


@pytest.mark.parametrize("metric", METRICS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=str)
def test_bad_inputs_raise_one_clear_value_error(metric: Callable, case: str) -> None:
    scores, labels, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message) as info:
        metric(scores, labels)
    assert isinstance(info.value, MetricInputError)
    assert isinstance(info.value, ChorusError)  # the CLI reports it as one line


def test_nan_score_error_names_the_position() -> None:
    with pytest.raises(MetricInputError, match="example 1, class 1"):
        lwlrap(_with(GOOD, (1, 1), np.nan), GOOD_Y)


def test_import_does_not_pull_tensorflow() -> None:
    code = (
        "import sys, modeltools.evaluation.metrics; "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
