"""Scoring of the real-audio benchmark: operating points and matched false alarms."""

from __future__ import annotations

import numpy as np
import pytest

from modeltools.evaluation.real_benchmark import matched_threshold, operating_point

# 3 examples x 3 species. Truth: ex0 {0}, ex1 {1}, ex2 {} (noise alone). Labelled = truth.
TRUTH = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]], bool)
SCORES = np.array(
    [
        [0.9, 0.6, 0.05],  # true 0.9, a false 0.6
        [0.2, 0.4, 0.0],  # the true species only at 0.4, a false 0.2
        [0.7, 0.0, 0.3],  # false 0.7 and 0.3
    ],
    np.float32,
)


def test_operating_point_counts_recall_false_positives_and_precision() -> None:
    op = operating_point(SCORES, TRUTH, TRUTH, 0.5)
    assert op.recall == pytest.approx(0.5)  # ex0's species found, ex1's (0.4) not
    assert op.fp_per_example == pytest.approx(2 / 3)  # 0.6 on ex0 and 0.7 on ex2
    assert op.precision == pytest.approx(1 / 3)
    assert op.detections == 3
    nothing = operating_point(SCORES, TRUTH, TRUTH, 0.95)
    assert nothing.recall == 0 and nothing.precision is None


def test_matched_threshold_is_the_lowest_within_the_false_alarm_budget() -> None:
    # The false scores are 0.7, 0.6, 0.3, 0.2, 0.05. A budget of 1/3 FP per example allows one:
    # the lowest threshold is the next distinct score above 0.6, i.e. 0.7.
    op = matched_threshold(SCORES, TRUTH, TRUTH, 1 / 3, floor=0.01)
    assert op.threshold == pytest.approx(0.7)
    assert op.fp_per_example == pytest.approx(1 / 3)
    assert op.recall == pytest.approx(0.5)
    # Three FPs allowed: down to 0.3, which also keeps the true 0.4.
    op = matched_threshold(SCORES, TRUTH, TRUTH, 1.0, floor=0.01)
    assert op.threshold == pytest.approx(0.3)
    assert op.recall == 1.0 and op.fp_per_example == pytest.approx(1.0)
    # No false positive allowed: above the highest false score 0.7 -> only the 0.9.
    op = matched_threshold(SCORES, TRUTH, TRUTH, 0.0, floor=0.01)
    assert op.fp_per_example == 0 and op.threshold == pytest.approx(0.9)
    assert op.recall == pytest.approx(0.5)


def test_matched_threshold_never_goes_below_the_floor() -> None:
    op = matched_threshold(SCORES, TRUTH, TRUTH, 10.0, floor=0.25)
    assert op.threshold == pytest.approx(0.3)


def test_calibration_picks_recall_at_matched_false_alarms_then_precision() -> None:
    from agent.detection.combine import PAPER_MAX
    from modeltools.evaluation.calibrate import choose, grid

    policies = grid()
    assert policies[0] == PAPER_MAX and len(set(policies)) == len(policies)
    row = lambda r, fp, name: {"policy": name, "recall_matched": r, "fp_default": fp}  # noqa: E731
    mix = row(0.30, 0.20, "mix_only")
    rows = [
        mix,
        row(0.40, 0.31, "too many false positives"),  # > 1.5 x 0.20
        row(0.35, 0.28, "more false positives"),
        row(0.35, 0.22, "fewer false positives"),
        row(0.33, 0.10, "lower recall"),
    ]
    assert choose(rows) == (mix, rows[3])
