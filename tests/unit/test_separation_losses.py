"""Separation losses and metrics against independent numpy forms (ALGORITHMS.md §1.5-1.8)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

pytestmark = pytest.mark.needs_tf
pytest.importorskip("tensorflow")

from modeltools.separation.losses import (  # noqa: E402
    assignment_matrices,
    mixit,
    mixture_consistency,
    negative_snr,
    si_snr,
    source_mixit,
)
from modeltools.separation.metrics import momi, momi_per_example, si_snri  # noqa: E402


def _np_neg_snr(y: np.ndarray, y_hat: np.ndarray, max_snr_db: float = 30.0) -> float:
    # The paper's formula, written out in float64.
    y, y_hat = y.astype(np.float64), y_hat.astype(np.float64)
    tau = 10 ** (-max_snr_db / 10)
    ref = np.sum(y**2)
    err = np.sum((y - y_hat) ** 2)
    return 10 * np.log10(err + tau * ref + 1e-8) - 10 * np.log10(ref + 1e-8)


def _textbook_si_snr(est: np.ndarray, ref: np.ndarray) -> float:
    est, ref = est.astype(np.float64), ref.astype(np.float64)
    alpha = np.dot(est, ref) / np.dot(ref, ref)
    target = alpha * ref
    return 10 * np.log10(np.sum(target**2) / np.sum((target - est) ** 2))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_negative_snr_matches_the_formula(rng: np.random.Generator) -> None:
    y = rng.normal(size=(3, 5, 400)).astype(np.float32)
    y_hat = y + rng.normal(scale=[[[0.01]], [[0.3]], [[2.0]]], size=y.shape).astype(np.float32)
    got = negative_snr(y, y_hat).numpy()
    want = np.array([[_np_neg_snr(y[b, s], y_hat[b, s]) for s in range(5)] for b in range(3)])
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_negative_snr_perfect_estimate_hits_the_cap(rng: np.random.Generator) -> None:
    y = rng.normal(size=(2, 1000)).astype(np.float32)
    np.testing.assert_allclose(negative_snr(y, y).numpy(), [-30.0, -30.0], atol=1e-3)
    np.testing.assert_allclose(negative_snr(y, y, max_snr_db=20.0).numpy(), -20.0, atol=1e-3)
    # tau multiplies the reference power: scaling both signals leaves the loss unchanged.
    y_hat = y + 0.1 * rng.normal(size=y.shape).astype(np.float32)
    np.testing.assert_allclose(
        negative_snr(10 * y, 10 * y_hat).numpy(), negative_snr(y, y_hat).numpy(), atol=1e-3
    )
    # a 20 dB estimate is close to -20 dB (the cap adds a little: -10 log10(0.01 + 0.001)).
    err = rng.normal(size=1000)
    err *= np.sqrt(0.01 * np.sum(y[0] ** 2) / np.sum(err**2))
    got = negative_snr(y[0], (y[0] + err).astype(np.float32)).numpy()
    assert got == pytest.approx(10 * np.log10(0.011), abs=1e-2)


def test_negative_snr_silent_reference() -> None:
    y = np.zeros(100, np.float32)
    y_hat = np.full(100, 0.1, np.float32)  # energy 1.0
    assert negative_snr(y, y_hat).numpy() == pytest.approx(80.0, abs=1e-3)
    assert negative_snr(y, y).numpy() == pytest.approx(0.0, abs=1e-3)


def test_assignment_matrices_enumerate_all_16_for_m4() -> None:
    mats = assignment_matrices(4)
    assert mats.shape == (16, 2, 4)
    assert np.all(mats.sum(axis=1) == 1)  # one 1 per column (each estimate in one mixture)
    for i, combo in enumerate(itertools.product(range(2), repeat=4)):
        assert [int(np.argmax(mats[i, :, j])) for j in range(4)] == list(combo)


def _brute_mixit(
    refs: np.ndarray, est: np.ndarray, allow_empty: bool = True
) -> tuple[float, np.ndarray]:
    best, best_mat = np.inf, None
    for combo in itertools.product(range(2), repeat=est.shape[0]):
        if not allow_empty and len(set(combo)) < 2:
            continue
        remix = np.zeros_like(refs, dtype=np.float64)
        for j, mix in enumerate(combo):
            remix[mix] += est[j]
        loss = np.mean([_np_neg_snr(refs[i], remix[i]) for i in range(2)])
        if loss < best - 1e-9:  # strict: the first (lowest-index) minimum wins
            best = loss
            best_mat = np.zeros((2, est.shape[0]))
            best_mat[list(combo), range(est.shape[0])] = 1
    return best, best_mat


def test_mixit_picks_the_right_assignment(rng: np.random.Generator) -> None:
    s = rng.normal(size=(4, 800)).astype(np.float32)
    # mixture 1 = s0 + s2, mixture 2 = s1 + s3: estimates are the sources themselves.
    refs = np.stack([s[0] + s[2], s[1] + s[3]])[None]
    loss, mat = mixit(refs, s[None])
    np.testing.assert_array_equal(mat.numpy()[0], [[1, 0, 1, 0], [0, 1, 0, 1]])
    assert loss.numpy()[0] == pytest.approx(-30.0, abs=1e-3)


def test_mixit_matches_brute_force_on_random_estimates(rng: np.random.Generator) -> None:
    refs = rng.normal(size=(5, 2, 300)).astype(np.float32)
    est = rng.normal(size=(5, 4, 300)).astype(np.float32)
    est[:, 0] += refs[:, 1]
    loss, mat = mixit(refs, est)
    for b in range(5):
        want_loss, want_mat = _brute_mixit(refs[b], est[b])
        assert loss.numpy()[b] == pytest.approx(want_loss, abs=1e-3)
        np.testing.assert_array_equal(mat.numpy()[b], want_mat)


def _brute_source_mixit(refs: np.ndarray, est: np.ndarray) -> tuple[float, np.ndarray]:
    # Every estimate to one of K references, K^M ways, in itertools.product order.
    k, m = refs.shape[0], est.shape[0]
    best, best_mat = np.inf, None
    for combo in itertools.product(range(k), repeat=m):
        mat = np.zeros((k, m), np.float32)
        mat[list(combo), range(m)] = 1.0
        loss = np.mean([_np_neg_snr(refs[i], mat[i] @ est) for i in range(k)])
        if loss < best - 1e-9:
            best, best_mat = loss, mat
    return float(best), best_mat


def test_source_mixit_matches_brute_force_and_mixit(rng: np.random.Generator) -> None:
    refs = rng.normal(size=(3, 4, 300)).astype(np.float32)
    refs[0, 2] = 0.0  # a crop without birds: a silent reference
    est = rng.normal(size=(3, 4, 300)).astype(np.float32)
    est[1] = refs[1, [3, 0, 2, 1]] + 0.01 * est[1]
    loss, mat = source_mixit(refs, est)
    assert mat.shape == (3, 4, 4)
    for b in range(3):
        want_loss, want_mat = _brute_source_mixit(refs[b], est[b])
        assert loss.numpy()[b] == pytest.approx(want_loss, abs=1e-3)
        np.testing.assert_array_equal(mat.numpy()[b], want_mat)
    # The same numbers as exhaustive MixIT with four "mixtures" (which remixes all 256).
    loss2, mat2 = mixit(refs, est)
    np.testing.assert_allclose(loss.numpy(), loss2.numpy(), atol=1e-4)
    np.testing.assert_array_equal(mat.numpy(), mat2.numpy())


def test_source_mixit_lets_a_silent_stem_go_without_an_estimate(
    rng: np.random.Generator,
) -> None:
    s = rng.normal(size=(3, 800)).astype(np.float32)
    # References: birds 1 (silent), noise 1, birds 2, noise 2. The estimates hold noise 1 in
    # two halves, birds 2 and noise 2: the best assignment sends both halves to noise 1 and
    # nothing to the silent stem, which then costs 0 dB (not the 80 dB of a forced estimate).
    refs = np.stack([np.zeros(800, np.float32), s[0], s[1], s[2]])[None]
    est = np.stack([0.5 * s[0], 0.5 * s[0], s[1], s[2]])[None]
    loss, mat = source_mixit(refs, est)
    np.testing.assert_array_equal(
        mat.numpy()[0], [[0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    )
    assert loss.numpy()[0] == pytest.approx((0.0 - 30.0 * 3) / 4, abs=1e-3)


def test_bird_breakdown_groups_the_channels_by_the_stems(rng: np.random.Generator) -> None:
    from modeltools.separation.evaluate import bird_breakdown

    birds = 0.3 * rng.normal(size=(3, 1000)).astype(np.float32)
    noise = rng.normal(size=(3, 1000)).astype(np.float32)
    birds[2] = 0.0  # a window without birds
    mixture = birds + noise
    zero = np.zeros_like(noise)
    est = np.stack(
        [
            [noise[0] / 2, birds[0], noise[0] / 2, zero[0]],  # perfect, birds in channel 1
            [mixture[1], zero[1], zero[1], zero[1]],  # no separation: the birds are lost
            [mixture[2] / 2, mixture[2] / 2, zero[2], zero[2]],
        ]
    ).astype(np.float32)
    out = bird_breakdown(mixture, birds, noise, est)
    np.testing.assert_array_equal(out["has_birds"], [True, True, False])
    np.testing.assert_array_equal(out["birds_lost"][:2], [False, True])
    # SI-SNR of the mixture against its birds, 0.3 x the noise's level: about -10.5 dB.
    assert out["input_bird_snr_db"][0] == pytest.approx(-10.5, abs=1.0)
    assert out["bird_sisnri_db"][0] > 60 and out["noise_sisnri_db"][0] > 60
    assert out["bird_sisnri_db"][1] < -50  # silence scores as a loss, not a skip


def test_mixit_ties_go_to_the_lowest_index() -> None:
    # All-zero estimates: every assignment gives the same loss -> index 0 (all to mixture 0).
    refs = np.ones((1, 2, 50), np.float32)
    _, mat = mixit(refs, np.zeros((1, 4, 50), np.float32))
    np.testing.assert_array_equal(mat.numpy()[0], [[1, 1, 1, 1], [0, 0, 0, 0]])


def test_nonempty_assignments_drop_exactly_the_two_empty_ones() -> None:
    full, kept = assignment_matrices(4), assignment_matrices(4, allow_empty=False)
    assert kept.shape == (14, 2, 4)
    assert np.all(kept.sum(axis=2) >= 1)  # both mixtures get an estimate
    # The same order as the full list with "all to 0" (first) and "all to 1" (last) removed.
    np.testing.assert_array_equal(kept, full[1:-1])


def test_nonempty_mixit_matches_brute_force(rng: np.random.Generator) -> None:
    refs = rng.normal(size=(4, 2, 300)).astype(np.float32)
    est = rng.normal(size=(4, 4, 300)).astype(np.float32)
    loss, mat = mixit(refs, est, allow_empty=False)
    for b in range(4):
        want_loss, want_mat = _brute_mixit(refs[b], est[b], allow_empty=False)
        assert loss.numpy()[b] == pytest.approx(want_loss, abs=1e-3)
        np.testing.assert_array_equal(mat.numpy()[b], want_mat)
        assert np.all(mat.numpy()[b].sum(axis=1) >= 1)


def test_a_collapsed_mom_has_a_gradient_only_without_empty_assignments(
    rng: np.random.Generator,
) -> None:
    """Why the training option exists: estimates that sum to the MoM (mixture consistency) and
    all belong to the loud mixture make "everything to the loud one" the MixIT argmin, whose
    remix is the MoM itself, a constant: no gradient reaches the estimates."""
    import tensorflow as tf

    loud = rng.normal(size=(1, 800)).astype(np.float32)
    quiet = 0.05 * rng.normal(size=(1, 800)).astype(np.float32)
    refs = np.stack([loud, quiet], axis=1)  # (1, 2, T)
    mom = loud + quiet
    parts = rng.dirichlet(np.ones(4), size=1).astype(np.float32)[..., None]  # (1, 4, 1)
    raw = tf.Variable(parts * mom[:, None, :])  # the model's sources before the projection

    def grad_norm(allow_empty: bool) -> float:
        with tf.GradientTape() as tape:
            est = mixture_consistency(mom, raw, "uniform")
            loss, mat = mixit(refs, est, allow_empty=allow_empty)
        if allow_empty:
            np.testing.assert_array_equal(mat.numpy()[0], [[1, 1, 1, 1], [0, 0, 0, 0]])
        return float(tf.norm(tape.gradient(loss, raw)))

    assert grad_norm(True) < 1e-6
    assert grad_norm(False) > 1e-3


@pytest.mark.parametrize("weights", [None, "uniform", "magsq", "array"])
def test_mixture_consistency_sums_to_the_mixture(
    rng: np.random.Generator, weights: str | None
) -> None:
    x = rng.normal(size=(3, 500)).astype(np.float32)
    s = rng.normal(size=(3, 4, 500)).astype(np.float32)
    w = weights
    if weights == "array":
        w = rng.dirichlet(np.ones(4), size=3).astype(np.float32)
    out = mixture_consistency(x, s, w).numpy()
    np.testing.assert_allclose(out.sum(axis=1), x, atol=1e-5)
    r = x - s.sum(axis=1)
    if weights in (None, "uniform"):
        np.testing.assert_allclose(out, s + r[:, None] / 4, atol=1e-5)
    elif weights == "magsq":
        p = 1e-8 + np.mean(s.astype(np.float64) ** 2, axis=-1)
        np.testing.assert_allclose(
            out, s + (p / p.sum(1, keepdims=True))[..., None] * r[:, None], atol=1e-5
        )
    else:
        np.testing.assert_allclose(out, s + w[..., None] * r[:, None], atol=1e-5)


def test_si_snr_equals_the_textbook_alpha_form(rng: np.random.Generator) -> None:
    ref = rng.normal(size=(6, 700)).astype(np.float32) + 0.5  # a DC offset: no mean removal
    est = (ref * rng.uniform(0.2, 3, size=(6, 1)) + rng.normal(size=ref.shape) * 0.5).astype(
        np.float32
    )
    got = si_snr(est, ref).numpy()
    want = [_textbook_si_snr(est[i], ref[i]) for i in range(6)]
    np.testing.assert_allclose(got, want, atol=1e-3)
    np.testing.assert_allclose(si_snr(ref, est).numpy(), got, atol=1e-3)  # symmetric
    # a mean-removing SI-SNR would differ here (offset 0.5 is large): pin "no mean removal".
    centred = [_textbook_si_snr(est[i] - est[i].mean(), ref[i] - ref[i].mean()) for i in range(6)]
    assert np.max(np.abs(np.array(centred) - got)) > 0.1


def test_si_snr_precise_branch_near_perfect(rng: np.random.Generator) -> None:
    ref = rng.normal(size=2000).astype(np.float32)
    est = (ref + 1e-3 * rng.normal(size=2000)).astype(np.float32)
    assert si_snr(est, ref).numpy() == pytest.approx(_textbook_si_snr(est, ref), abs=0.05)


def test_si_snri_and_momi_of_a_perfect_separator(rng: np.random.Generator) -> None:
    s = rng.normal(size=(2, 4, 600)).astype(np.float32)
    refs = np.stack([s[:, 0] + s[:, 1], s[:, 2] + s[:, 3]], axis=1)  # (2, 2, T)
    mom = refs.sum(axis=1)
    per = momi_per_example(refs, s, mom)
    # The remix equals each reference: SI-SNR hits its ~80 dB cap (the 1e-8 terms), minus
    # SI-SNR(mom, x_i) of the input.
    want = [
        np.mean([80.0 - _textbook_si_snr(mom[b], refs[b, i]) for i in range(2)]) for b in range(2)
    ]
    np.testing.assert_allclose(per, want, atol=0.5)
    assert momi(refs, s) == pytest.approx(np.mean(want), abs=0.5)
    gain = si_snri(s[:, :1], s[:, :1], mom[:, None])
    assert gain.shape == (2, 1) and np.all(gain > 70)


def test_momi_breakdown_flags_a_collapse_and_measures_the_level_gap(
    rng: np.random.Generator,
) -> None:
    from modeltools.separation.evaluate import summarize
    from modeltools.separation.metrics import momi_breakdown

    s = rng.normal(size=(2, 4, 600)).astype(np.float32)
    s[1, 2:] *= 0.1  # example 1: mixture 2 is 20 dB below mixture 1
    refs = np.stack([s[:, 0] + s[:, 1], s[:, 2] + s[:, 3]], axis=1)
    est = s.copy()
    # Example 1 collapses: three outputs carry the whole MoM, the fourth is silent.
    est[1] = 0.0
    est[1, 0] = refs[1].sum(axis=0)
    per = momi_breakdown(refs, est)
    np.testing.assert_array_equal(per["collapsed"], [False, True])
    powers = np.sum(refs.astype(np.float64) ** 2, axis=-1)
    np.testing.assert_allclose(
        per["level_gap_db"], np.abs(10 * np.log10(powers[:, 0] / powers[:, 1]))
    )
    assert per["level_gap_db"][1] == pytest.approx(20.0, abs=1.5)
    np.testing.assert_allclose(per["momi_db"], momi_per_example(refs, est), atol=1e-4)
    assert per["momi_db"][1] < -30  # the silent remix scores about -80 dB SI-SNR

    summary = summarize(per)
    assert summary["collapsed"] == 1 and summary["examples"] == 2
    assert summary["momi_not_collapsed_db"] == pytest.approx(per["momi_db"][0])
    assert sum(r["examples"] for r in summary["by_level_gap"]) == 2
    assert [r["collapsed"] for r in summary["by_level_gap"]][-1] == 1  # the >= 12 dB range


def test_momi_breakdown_scores_a_given_assignment(rng: np.random.Generator) -> None:
    from modeltools.separation.metrics import momi_breakdown

    s = rng.normal(size=(2, 4, 600)).astype(np.float32)
    refs = np.stack([s[:, 0] + s[:, 1], s[:, 2] + s[:, 3]], axis=1)
    free = momi_breakdown(refs, s)
    again = momi_breakdown(refs, s, mixing=free["mixing"])
    np.testing.assert_allclose(again["momi_db"], free["momi_db"], atol=1e-4)
    swapped = momi_breakdown(refs, s, mixing=free["mixing"][:, ::-1])  # mixtures exchanged
    np.testing.assert_array_equal(swapped["mixing"], free["mixing"][:, ::-1])
    assert np.all(swapped["momi_db"] < free["momi_db"] - 20)


def test_oracle_ratio_masks_bound_separation_by_spectral_overlap(
    rng: np.random.Generator,
) -> None:
    from modeltools.separation.evaluate import oracle_estimates

    sr, n = 22050, 22050
    t = np.arange(n) / sr
    low = np.sin(2 * np.pi * 1000 * t)  # one mixture a 1 kHz tone, the other a 6 kHz tone
    high = 0.5 * np.sin(2 * np.pi * 6000 * t)
    noise = rng.normal(size=(2, n))  # two white noises: the same spectrum, inseparable
    refs = np.stack([np.stack([low, high]), noise]).astype(np.float32)  # (2, 2, T)
    mom = refs.sum(axis=1)
    est = oracle_estimates(mom, refs, 256)
    assert est.shape == refs.shape and est.dtype == np.float32
    # Ratio masks sum to one: the estimates add back up to the MoM (except the STFT edges).
    core = slice(256, n - 256)
    np.testing.assert_allclose(est.sum(axis=1)[:, core], mom[:, core], atol=1e-4)
    per = momi_per_example(refs, est, mom)
    assert per[0] > 20  # disjoint bands: near-perfect separation
    assert per[0] - per[1] > 15  # overlapping spectra leave far less to gain
    # A longer window resolves the tones better than a 16-sample one.
    coarse = momi_per_example(refs[:1], oracle_estimates(mom[:1], refs[:1], 16), mom[:1])
    assert coarse[0] < per[0]
    with pytest.raises(ValueError, match="even number"):
        oracle_estimates(mom, refs, 255)
